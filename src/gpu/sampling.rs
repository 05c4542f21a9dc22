//! Turns `(seed, path)` into one draw of every driver's quantity, by inverse
//! transform: each driver's uniform comes from Philox keyed by `(seed, path,
//! driver)`, correlated drivers pass through a Gaussian copula (normal
//! scores times the Cholesky factor), and each marginal's quantile function
//! maps the uniform to a quantity. Inverse transform everywhere keeps the
//! copula exact and lets the CUDA kernel reproduce every draw.

use statrs::function::beta::{beta_reg, ln_beta};
use statrs::function::erf::erfc;

use crate::model::{Distribution, NpvWeights, ValueModel};

use super::philox::{draws, open_unit};

/// Points of a tabulated quantile function (PERT); linear in between.
const QUANTILE_TABLE_POINTS: usize = 4097;

// Wichura's AS 241 (PPND16) coefficients: the published constants, digit
// for digit, so they can be checked against the paper; f64 rounds the last
// digits.
#[allow(clippy::excessive_precision)]
const A: [f64; 8] = [
    3.387_132_872_796_366_608_0,
    1.331_416_678_917_843_774_5e2,
    1.971_590_950_306_551_442_7e3,
    1.373_169_376_550_946_112_5e4,
    4.592_195_393_154_987_145_7e4,
    6.726_577_092_700_870_085_3e4,
    3.343_057_558_358_812_810_5e4,
    2.509_080_928_730_122_672_7e3,
];
#[allow(clippy::excessive_precision)]
const B: [f64; 8] = [
    1.0,
    4.231_333_070_160_091_125_2e1,
    6.871_870_074_920_579_083_0e2,
    5.394_196_021_424_751_107_7e3,
    2.121_379_430_158_659_586_7e4,
    3.930_789_580_009_271_061_0e4,
    2.872_908_573_572_194_267_4e4,
    5.226_495_278_852_854_561_0e3,
];
#[allow(clippy::excessive_precision)]
const C: [f64; 8] = [
    1.423_437_110_749_683_577_34,
    4.630_337_846_156_545_295_90,
    5.769_497_221_460_691_405_50,
    3.647_848_324_763_204_605_04,
    1.270_458_252_452_368_382_58,
    2.417_807_251_774_506_117_70e-1,
    2.272_384_498_926_918_458_33e-2,
    7.745_450_142_783_414_076_40e-4,
];
#[allow(clippy::excessive_precision)]
const D: [f64; 8] = [
    1.0,
    2.053_191_626_637_758_821_87,
    1.676_384_830_183_803_849_40,
    6.897_673_349_851_000_045_50e-1,
    1.481_039_764_274_800_745_90e-1,
    1.519_866_656_361_645_719_66e-2,
    5.475_938_084_995_344_946_00e-4,
    1.050_750_071_644_416_843_24e-9,
];
#[allow(clippy::excessive_precision)]
const E: [f64; 8] = [
    6.657_904_643_501_103_777_20,
    5.463_784_911_164_114_369_90,
    1.784_826_539_917_291_335_80,
    2.965_605_718_285_048_912_30e-1,
    2.653_218_952_657_612_309_30e-2,
    1.242_660_947_388_078_438_60e-3,
    2.711_555_568_743_487_578_15e-5,
    2.010_334_399_292_288_132_65e-7,
];
#[allow(clippy::excessive_precision)]
const F: [f64; 8] = [
    1.0,
    5.998_322_065_558_879_376_90e-1,
    1.369_298_809_227_358_053_10e-1,
    1.487_536_129_085_061_485_25e-2,
    7.868_691_311_456_132_591_00e-4,
    1.846_318_317_510_054_681_80e-5,
    1.421_511_758_316_445_888_70e-7,
    2.044_263_103_389_939_785_64e-15,
];

#[inline(always)]
fn rational(x: f64, numerator: &[f64; 8], denominator: &[f64; 8]) -> f64 {
    let mut top = numerator[7];
    let mut bottom = denominator[7];
    for index in (0..7).rev() {
        top = top * x + numerator[index];
        bottom = bottom * x + denominator[index];
    }
    top / bottom
}

/// AS 241's central region, `|u - 0.5| <= 0.425`: branch-free, so a row of
/// them vectorizes.
#[inline(always)]
fn normal_quantile_central(u: f64) -> f64 {
    let q = u - 0.5;
    q * rational(0.180_625 - q * q, &A, &B)
}

/// AS 241's tails.
#[inline]
fn normal_quantile_tail(u: f64) -> f64 {
    let q = u - 0.5;
    let tail = if q < 0.0 { u } else { 1.0 - u };
    let r = (-tail.ln()).sqrt();
    let magnitude = if r <= 5.0 {
        rational(r - 1.6, &C, &D)
    } else {
        rational(r - 5.0, &E, &F)
    };
    if q < 0.0 { -magnitude } else { magnitude }
}

#[inline(always)]
fn is_central(u: f64) -> bool {
    (u - 0.5).abs() <= 0.425
}

/// Standard normal quantile for u in (0, 1): Wichura's AS 241 (PPND16),
/// about 16 digits, a few multiply-adds (three times faster here than going
/// through `erfc_inv`, and the form the CUDA kernel can carry as is).
#[inline]
pub fn normal_quantile(u: f64) -> f64 {
    if is_central(u) {
        normal_quantile_central(u)
    } else {
        normal_quantile_tail(u)
    }
}

/// [`normal_quantile`] of a row: every lane through the central formula
/// (vectorized), then the 15% of lanes in the tails fixed up one by one.
#[inline(always)]
fn normal_quantile_row(uniforms: &[f64], out: &mut [f64]) {
    for (score, &u) in out.iter_mut().zip(uniforms) {
        *score = normal_quantile_central(u);
    }
    for (score, &u) in out.iter_mut().zip(uniforms) {
        if !is_central(u) {
            *score = normal_quantile_tail(u);
        }
    }
}

/// Standard normal distribution function.
#[inline]
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// A driver's marginal distribution, ready for quantile lookups.
#[derive(Debug, Clone)]
enum Marginal {
    Fixed(f64),
    Normal {
        mean: f64,
        sd: f64,
    },
    Lognormal {
        mu: f64,
        sigma: f64,
    },
    Triangular {
        min: f64,
        mode: f64,
        max: f64,
    },
    /// `min + (max - min) * BetaInv(u)`, the inverse tabulated once.
    Tabulated {
        min: f64,
        span: f64,
        table: Vec<f64>,
    },
    Uniform {
        min: f64,
        max: f64,
    },
    Bernoulli {
        p: f64,
        impact: f64,
    },
}

impl Marginal {
    fn new(distribution: &Distribution) -> Marginal {
        match *distribution {
            Distribution::Fixed { value } => Marginal::Fixed(value),
            Distribution::Normal { mean, sd } => Marginal::Normal { mean, sd },
            Distribution::Lognormal { mean, sd } => {
                // Moments of the quantity itself, as the model states them.
                let sigma_squared = (1.0 + (sd / mean).powi(2)).ln();
                Marginal::Lognormal {
                    mu: mean.ln() - sigma_squared / 2.0,
                    sigma: sigma_squared.sqrt(),
                }
            }
            Distribution::Triangular { min, mode, max } => Marginal::Triangular { min, mode, max },
            Distribution::Pert { min, mode, max } => {
                let span = max - min;
                if span <= 0.0 {
                    return Marginal::Fixed(min);
                }
                let alpha = 1.0 + 4.0 * (mode - min) / span;
                let beta = 1.0 + 4.0 * (max - mode) / span;
                Marginal::Tabulated {
                    min,
                    span,
                    table: beta_quantile_table(alpha, beta),
                }
            }
            Distribution::Uniform { min, max } => Marginal::Uniform { min, max },
            Distribution::Bernoulli { p, impact } => Marginal::Bernoulli { p, impact },
        }
    }

    #[inline]
    fn quantile(&self, u: f64) -> f64 {
        match *self {
            Marginal::Fixed(value) => value,
            Marginal::Normal { mean, sd } => mean + sd * normal_quantile(u),
            Marginal::Lognormal { mu, sigma } => (mu + sigma * normal_quantile(u)).exp(),
            Marginal::Triangular { min, mode, max } => triangular_quantile(min, mode, max, u),
            Marginal::Tabulated {
                min,
                span,
                ref table,
            } => tabulated_quantile(min, span, table, u),
            Marginal::Uniform { min, max } => min + u * (max - min),
            Marginal::Bernoulli { p, impact } => bernoulli_quantile(p, impact, u),
        }
    }

    /// [`Marginal::quantile`] of every lane of `row`, in place, with the
    /// distribution chosen once per row.
    #[inline(always)]
    fn quantile_row(&self, row: &mut [f64], scratch: &mut Vec<f64>) {
        match *self {
            Marginal::Fixed(value) => row.fill(value),
            Marginal::Normal { mean, sd } => {
                scratch.resize(row.len(), 0.0);
                normal_quantile_row(row, scratch);
                for (value, &z) in row.iter_mut().zip(scratch.iter()) {
                    *value = mean + sd * z;
                }
            }
            Marginal::Lognormal { mu, sigma } => {
                scratch.resize(row.len(), 0.0);
                normal_quantile_row(row, scratch);
                for (value, &z) in row.iter_mut().zip(scratch.iter()) {
                    *value = (mu + sigma * z).exp();
                }
            }
            Marginal::Triangular { min, mode, max } => {
                for value in row.iter_mut() {
                    *value = triangular_quantile(min, mode, max, *value);
                }
            }
            Marginal::Tabulated {
                min,
                span,
                ref table,
            } => {
                for value in row.iter_mut() {
                    *value = tabulated_quantile(min, span, table, *value);
                }
            }
            Marginal::Uniform { min, max } => {
                for value in row.iter_mut() {
                    *value = min + *value * (max - min);
                }
            }
            Marginal::Bernoulli { p, impact } => {
                for value in row.iter_mut() {
                    *value = bernoulli_quantile(p, impact, *value);
                }
            }
        }
    }
}

/// Both branches computed and one selected: branch-free, so it vectorizes.
#[inline(always)]
fn triangular_quantile(min: f64, mode: f64, max: f64, u: f64) -> f64 {
    let span = max - min;
    if span <= 0.0 {
        return min;
    }
    let cut = (mode - min) / span;
    let rising = min + (u * span * (mode - min)).sqrt();
    let falling = max - ((1.0 - u) * span * (max - mode)).sqrt();
    if u < cut { rising } else { falling }
}

#[inline(always)]
fn tabulated_quantile(min: f64, span: f64, table: &[f64], u: f64) -> f64 {
    let position = u * (table.len() - 1) as f64;
    let index = (position as usize).min(table.len() - 2);
    let fraction = position - index as f64;
    min + span * (table[index] + fraction * (table[index + 1] - table[index]))
}

/// Nondecreasing in u, as a quantile must be (the copula relies on it).
#[inline(always)]
fn bernoulli_quantile(p: f64, impact: f64, u: f64) -> f64 {
    let is_impact = if impact >= 0.0 { u > 1.0 - p } else { u <= p };
    if is_impact { impact } else { 0.0 }
}

/// `BetaInv(i / (n - 1))` for i in 0..n: Newton's method on the regularized
/// incomplete beta function, inside a bisection bracket that every step
/// narrows (monotone, so it cannot miss): a handful of evaluations a point
/// where plain bisection took sixty, which made the table a noticeable part
/// of a short run.
fn beta_quantile_table(alpha: f64, beta: f64) -> Vec<f64> {
    use rayon::prelude::*;
    let last = QUANTILE_TABLE_POINTS - 1;
    let ln_norm = ln_beta(alpha, beta);
    let density = |x: f64| ((alpha - 1.0) * x.ln() + (beta - 1.0) * (1.0 - x).ln() - ln_norm).exp();
    (0..QUANTILE_TABLE_POINTS)
        .into_par_iter()
        .map(|index| {
            if index == 0 {
                return 0.0;
            }
            if index == last {
                return 1.0;
            }
            let target = index as f64 / last as f64;
            let (mut low, mut high) = (0.0f64, 1.0f64);
            let mut x = target;
            for _ in 0..100 {
                let error = beta_reg(alpha, beta, x) - target;
                if error == 0.0 {
                    return x;
                }
                if error < 0.0 {
                    low = x;
                } else {
                    high = x;
                }
                if high - low <= 4.0 * f64::EPSILON * high {
                    break;
                }
                let slope = density(x);
                let newton = x - error / slope;
                if slope.is_finite() && slope > 0.0 && newton > low && newton < high {
                    if (newton - x).abs() <= 2.0 * f64::EPSILON * x {
                        return newton;
                    }
                    x = newton;
                } else {
                    x = 0.5 * (low + high);
                }
            }
            x
        })
        .collect()
}

/// Draws every driver's quantity for a path.
#[derive(Debug, Clone)]
pub struct Sampler {
    marginals: Vec<Marginal>,
    /// Lower Cholesky factor (row-major) when any drivers are correlated.
    cholesky: Option<Vec<f64>>,
}

impl Sampler {
    /// A sampler for a model that passed [`ValueModel::validate`].
    pub fn new(model: &ValueModel) -> Sampler {
        let cholesky = if model.correlations.is_empty() {
            None
        } else {
            // Validation refused any matrix without a factor.
            model.correlation_matrix().cholesky().ok()
        };
        Sampler {
            marginals: model
                .drivers
                .iter()
                .map(|d| Marginal::new(&d.quantity))
                .collect(),
            cholesky,
        }
    }

    /// The marginals and Cholesky factor as flat arrays for the CUDA
    /// kernel (its `KIND_*` codes, four parameters per driver).
    pub(crate) fn device_layout(&self) -> DeviceLayout {
        let mut layout = DeviceLayout {
            kinds: Vec::new(),
            params: Vec::new(),
            table_offsets: Vec::new(),
            // Never empty: a zero-length device buffer is refused.
            tables: vec![0.0],
            cholesky: self.cholesky.clone(),
        };
        for marginal in &self.marginals {
            let (kind, params, table) = match *marginal {
                Marginal::Fixed(value) => (0, [value, 0.0, 0.0], None),
                Marginal::Normal { mean, sd } => (1, [mean, sd, 0.0], None),
                Marginal::Lognormal { mu, sigma } => (2, [mu, sigma, 0.0], None),
                Marginal::Triangular { min, mode, max } => (3, [min, mode, max], None),
                Marginal::Tabulated {
                    min,
                    span,
                    ref table,
                } => (4, [min, span, 0.0], Some(table)),
                Marginal::Uniform { min, max } => (5, [min, max, 0.0], None),
                Marginal::Bernoulli { p, impact } => (6, [p, impact, 0.0], None),
            };
            layout.kinds.push(kind);
            layout.params.extend_from_slice(&params);
            layout.params.push(0.0);
            layout.table_offsets.push(layout.tables.len() as i32);
            if let Some(table) = table {
                layout.tables.extend_from_slice(table);
            }
        }
        layout
    }

    pub fn num_drivers(&self) -> usize {
        self.marginals.len()
    }

    /// The `u` quantile of driver `driver`'s own distribution.
    pub fn quantile(&self, driver: usize, u: f64) -> f64 {
        self.marginals[driver].quantile(u)
    }

    /// Fills `quantities` (one per driver) for `(seed, path)`; `scratch`
    /// holds the normal scores of a correlated draw (same length). The same
    /// arithmetic as [`Sampler::npv_block`], path by path.
    pub fn draw(&self, seed: u64, path: u64, quantities: &mut [f64], scratch: &mut [f64]) {
        let n = self.marginals.len();
        for (driver, slot) in quantities.iter_mut().enumerate().take(n) {
            *slot = uniform(seed, path, driver as u32);
        }
        if let Some(lower) = &self.cholesky {
            for (score, &u) in scratch.iter_mut().zip(quantities.iter()) {
                *score = normal_quantile(u);
            }
            for row in 0..n {
                let mut correlated = 0.0;
                for k in 0..=row {
                    correlated += lower[row * n + k] * scratch[k];
                }
                quantities[row] = copula_uniform(correlated);
            }
        }
        for (slot, marginal) in quantities.iter_mut().zip(&self.marginals) {
            *slot = marginal.quantile(*slot);
        }
    }

    /// The NPVs of paths `first..first + count` (`count <= BLOCK_PATHS`),
    /// driver by driver over the whole block so that each inner loop is one
    /// distribution over contiguous lanes, which the compiler vectorizes.
    #[inline(always)]
    pub fn npv_block<'a>(
        &self,
        weights: &NpvWeights,
        seed: u64,
        first: u64,
        count: usize,
        block: &'a mut Block,
    ) -> &'a [f64] {
        assert!(
            count <= BLOCK_PATHS,
            "a block holds at most {BLOCK_PATHS} paths"
        );
        let n = self.marginals.len();
        block.rows.resize(n * BLOCK_PATHS, 0.0);
        let rows = &mut block.rows;
        // One Philox block feeds a pair of drivers.
        for pair in 0..n.div_ceil(2) {
            let (even, odd) = rows[2 * pair * BLOCK_PATHS..].split_at_mut(BLOCK_PATHS);
            let odd = if 2 * pair + 1 < n {
                Some(&mut odd[..BLOCK_PATHS])
            } else {
                None
            };
            uniform_pair_row(
                seed,
                first,
                pair as u32,
                &mut even[..count],
                odd.map(|row| &mut row[..count]),
            );
        }
        if let Some(lower) = &self.cholesky {
            block.scores.resize(n * BLOCK_PATHS, 0.0);
            for (scores, uniforms) in block
                .scores
                .chunks_mut(BLOCK_PATHS)
                .zip(rows.chunks(BLOCK_PATHS))
            {
                normal_quantile_row(&uniforms[..count], &mut scores[..count]);
            }
            for row in 0..n {
                let target = &mut rows[row * BLOCK_PATHS..][..count];
                target.fill(0.0);
                for k in 0..=row {
                    let factor = lower[row * n + k];
                    let scores = &block.scores[k * BLOCK_PATHS..][..count];
                    for (value, score) in target.iter_mut().zip(scores) {
                        *value += factor * score;
                    }
                }
                for value in target.iter_mut() {
                    *value = copula_uniform(*value);
                }
            }
        }
        block.npv.resize(BLOCK_PATHS, 0.0);
        let npv = &mut block.npv[..count];
        npv.fill(weights.base);
        for (driver, marginal) in self.marginals.iter().enumerate() {
            let row = &mut rows[driver * BLOCK_PATHS..][..count];
            marginal.quantile_row(row, &mut block.scratch);
            let weight = weights.weights[driver];
            for (total, quantity) in npv.iter_mut().zip(row.iter()) {
                *total += weight * quantity;
            }
        }
        &block.npv[..count]
    }
}

/// What the CUDA kernel needs of a [`Sampler`].
#[derive(Debug, Clone)]
pub(crate) struct DeviceLayout {
    pub kinds: Vec<i32>,
    pub params: Vec<f64>,
    pub table_offsets: Vec<i32>,
    pub tables: Vec<f64>,
    pub cholesky: Option<Vec<f64>>,
}

/// Paths per [`Sampler::npv_block`] call.
pub const BLOCK_PATHS: usize = 256;

/// Scratch space of [`Sampler::npv_block`], reused across calls.
#[derive(Debug, Default)]
pub struct Block {
    rows: Vec<f64>,
    scores: Vec<f64>,
    scratch: Vec<f64>,
    npv: Vec<f64>,
}

/// The uniform of `(seed, path, driver)`: drivers `2k` and `2k + 1` take
/// words 0-1 and 2-3 of Philox block `k`, so one generator call feeds two
/// drivers.
#[inline]
pub fn uniform(seed: u64, path: u64, driver: u32) -> f64 {
    let [a, b, c, d] = draws(seed, path, driver / 2, 0);
    if driver.is_multiple_of(2) {
        open_unit(a, b)
    } else {
        open_unit(c, d)
    }
}

#[inline(always)]
fn uniform_pair_row(seed: u64, first: u64, pair: u32, even: &mut [f64], odd: Option<&mut [f64]>) {
    match odd {
        Some(odd) => {
            for (index, (a, b)) in even.iter_mut().zip(odd.iter_mut()).enumerate() {
                let [w0, w1, w2, w3] = draws(seed, first + index as u64, pair, 0);
                *a = open_unit(w0, w1);
                *b = open_unit(w2, w3);
            }
        }
        None => {
            for (index, a) in even.iter_mut().enumerate() {
                let [w0, w1, _, _] = draws(seed, first + index as u64, pair, 0);
                *a = open_unit(w0, w1);
            }
        }
    }
}

/// A correlated normal score back to a uniform, away from 0 and 1 (which
/// the quantile functions cannot take).
#[inline]
fn copula_uniform(score: f64) -> f64 {
    normal_cdf(score).clamp(f64::MIN_POSITIVE, 1.0 - f64::EPSILON)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(distributions: Vec<Distribution>, correlations: &[(usize, usize, f64)]) -> ValueModel {
        let drivers: Vec<serde_json::Value> = distributions
            .iter()
            .enumerate()
            .map(|(index, quantity)| {
                serde_json::json!({ "name": format!("d{index}"), "category": "revenue",
                    "unit_value": 1.0, "quantity": quantity })
            })
            .collect();
        let correlations: Vec<serde_json::Value> = correlations
            .iter()
            .map(|(a, b, rho)| serde_json::json!({ "a": format!("d{a}"), "b": format!("d{b}"), "rho": rho }))
            .collect();
        let model: ValueModel = serde_json::from_value(serde_json::json!({
            "name": "m", "customer": "c", "industry": "saas", "currency": "USD",
            "horizon_months": 12, "discount_rate": 0.0, "costs": { "one_off": 0, "monthly": 0 },
            "drivers": drivers, "correlations": correlations
        }))
        .unwrap();
        model.validate().unwrap();
        model
    }

    /// Mean and standard deviation of each driver over `n` paths.
    fn moments(sampler: &Sampler, n: u64, seed: u64) -> Vec<(f64, f64)> {
        let d = sampler.num_drivers();
        let (mut q, mut scratch) = (vec![0.0; d], vec![0.0; d]);
        let mut sums = vec![(0.0, 0.0); d];
        for path in 0..n {
            sampler.draw(seed, path, &mut q, &mut scratch);
            for (sum, value) in sums.iter_mut().zip(&q) {
                sum.0 += value;
                sum.1 += value * value;
            }
        }
        sums.iter()
            .map(|(s, s2)| {
                let mean = s / n as f64;
                (mean, (s2 / n as f64 - mean * mean).max(0.0).sqrt())
            })
            .collect()
    }

    /// `|observed - expected|` within five standard errors.
    fn assert_mean(observed: f64, expected: f64, sd: f64, n: u64, what: &str) {
        let tolerance = 5.0 * sd / (n as f64).sqrt() + 1e-12;
        assert!(
            (observed - expected).abs() <= tolerance,
            "{what}: {observed} vs {expected} (±{tolerance})"
        );
    }

    /// One driver of every distribution: normal (10, 2), lognormal (5, 3),
    /// triangular and PERT over (a, c, b), uniform (-2, 6), bernoulli (0.3,
    /// 100), fixed 7.
    fn every_kind(a: f64, c: f64, b: f64) -> Vec<Distribution> {
        vec![
            Distribution::Normal {
                mean: 10.0,
                sd: 2.0,
            },
            Distribution::Lognormal { mean: 5.0, sd: 3.0 },
            Distribution::Triangular {
                min: a,
                mode: c,
                max: b,
            },
            Distribution::Pert {
                min: a,
                mode: c,
                max: b,
            },
            Distribution::Uniform {
                min: -2.0,
                max: 6.0,
            },
            Distribution::Bernoulli {
                p: 0.3,
                impact: 100.0,
            },
            Distribution::Fixed { value: 7.0 },
        ]
    }

    #[test]
    fn marginal_moments_match_their_closed_forms() {
        let n = 200_000;
        let (a, c, b) = (1.0, 3.0, 8.0);
        let triangular_sd = ((a * a + b * b + c * c - a * b - a * c - b * c) / 18.0f64).sqrt();
        let pert_mean = (a + 4.0 * c + b) / 6.0;
        let sampler = Sampler::new(&model(every_kind(a, c, b), &[]));
        let m = moments(&sampler, n, 11);
        assert_mean(m[0].0, 10.0, 2.0, n, "normal mean");
        assert!((m[0].1 - 2.0).abs() < 0.03, "normal sd {}", m[0].1);
        assert_mean(m[1].0, 5.0, 3.0, n, "lognormal mean");
        assert!((m[1].1 - 3.0).abs() < 0.1, "lognormal sd {}", m[1].1);
        assert_mean(
            m[2].0,
            (a + b + c) / 3.0,
            triangular_sd,
            n,
            "triangular mean",
        );
        assert!(
            (m[2].1 - triangular_sd).abs() < 0.02,
            "triangular sd {}",
            m[2].1
        );
        // PERT variance with lambda 4: (mean - a)(b - mean) / 7.
        let pert_sd = ((pert_mean - a) * (b - pert_mean) / 7.0f64).sqrt();
        assert_mean(m[3].0, pert_mean, pert_sd, n, "pert mean");
        assert!((m[3].1 - pert_sd).abs() < 0.02, "pert sd {}", m[3].1);
        assert_mean(m[4].0, 2.0, 8.0 / 12f64.sqrt(), n, "uniform mean");
        assert_mean(
            m[5].0,
            30.0,
            (0.3f64 * 0.7).sqrt() * 100.0,
            n,
            "bernoulli frequency",
        );
        assert_eq!(m[6], (7.0, 0.0));
    }

    #[test]
    fn a_requested_correlation_is_recovered() {
        let n = 100_000u64;
        let sampler = Sampler::new(&model(
            vec![
                Distribution::Normal { mean: 0.0, sd: 1.0 },
                Distribution::Normal { mean: 5.0, sd: 2.0 },
                Distribution::Uniform { min: 0.0, max: 1.0 },
            ],
            &[(0, 1, 0.6), (1, 2, -0.3)],
        ));
        let (mut q, mut scratch) = (vec![0.0; 3], vec![0.0; 3]);
        let mut samples = vec![Vec::new(); 3];
        for path in 0..n {
            sampler.draw(3, path, &mut q, &mut scratch);
            for (column, value) in samples.iter_mut().zip(&q) {
                column.push(*value);
            }
        }
        let pearson = |x: &[f64], y: &[f64]| {
            let (mx, my) = (
                x.iter().sum::<f64>() / n as f64,
                y.iter().sum::<f64>() / n as f64,
            );
            let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
            let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
            let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
            cov / (vx * vy).sqrt()
        };
        let between_normals = pearson(&samples[0], &samples[1]);
        assert!((between_normals - 0.6).abs() < 0.01, "{between_normals}");
        // Normal scores of a uniform margin carry the copula's rho.
        let scores: Vec<f64> = samples[2].iter().map(|&u| normal_quantile(u)).collect();
        let with_uniform = pearson(&samples[1], &scores);
        assert!((with_uniform + 0.3).abs() < 0.01, "{with_uniform}");
        assert!(
            pearson(&samples[0], &scores).abs() < 0.3,
            "no rho given between d0 and d2"
        );
    }

    #[test]
    fn a_block_computes_what_path_by_path_draws_give_bit_for_bit() {
        let every_kind = every_kind(1.0, 3.0, 8.0);
        for correlations in [vec![], vec![(0, 1, 0.5), (2, 4, -0.4), (3, 5, 0.2)]] {
            let model = model(every_kind.clone(), &correlations);
            let (sampler, weights) = (Sampler::new(&model), model.npv_weights());
            let mut block = Block::default();
            let (mut q, mut scratch) = (vec![0.0; 7], vec![0.0; 7]);
            for (first, count) in [(0u64, BLOCK_PATHS), (1 << 33, 17)] {
                let npvs = sampler
                    .npv_block(&weights, 5, first, count, &mut block)
                    .to_vec();
                for (offset, npv) in npvs.iter().enumerate() {
                    sampler.draw(5, first + offset as u64, &mut q, &mut scratch);
                    assert_eq!(*npv, weights.npv(&q), "path {}", first + offset as u64);
                }
            }
        }
    }

    #[test]
    fn draws_are_a_function_of_seed_and_path_only() {
        let sampler = Sampler::new(&model(
            vec![
                Distribution::Pert {
                    min: 0.0,
                    mode: 1.0,
                    max: 4.0,
                },
                Distribution::Normal { mean: 0.0, sd: 1.0 },
            ],
            &[(0, 1, 0.5)],
        ));
        let draw = |seed, path| {
            let (mut q, mut s) = (vec![0.0; 2], vec![0.0; 2]);
            sampler.draw(seed, path, &mut q, &mut s);
            q
        };
        assert_eq!(draw(1, 99), draw(1, 99));
        assert_ne!(draw(1, 99), draw(2, 99));
        assert_ne!(draw(1, 99), draw(1, 100));
    }

    #[test]
    fn as241_agrees_with_the_erfc_inverse() {
        let reference =
            |u: f64| -std::f64::consts::SQRT_2 * statrs::function::erf::erfc_inv(2.0 * u);
        let mut u = 1e-15;
        while u < 1.0 {
            for v in [u, 1.0 - u, 0.5 - u / 2.0] {
                let (ours, theirs) = (normal_quantile(v), reference(v));
                assert!(
                    (ours - theirs).abs() <= 1e-12 * theirs.abs().max(1.0),
                    "{v}: {ours} vs {theirs}"
                );
            }
            u *= 1.7;
        }
    }

    #[test]
    fn normal_quantile_and_cdf_invert_each_other() {
        for &u in &[1e-12, 1e-6, 0.01, 0.2, 0.5, 0.8, 0.99, 1.0 - 1e-9] {
            let z = normal_quantile(u);
            assert!((normal_cdf(z) - u).abs() < 1e-12 * u.max(1e-3) * 1e3, "{u}");
        }
        assert!((normal_quantile(0.975) - 1.959_963_984_540_054).abs() < 1e-12);
    }

    #[test]
    fn quantiles_are_nondecreasing_for_every_marginal() {
        let marginals = [
            Marginal::new(&Distribution::Bernoulli {
                p: 0.35,
                impact: 1.0,
            }),
            Marginal::new(&Distribution::Bernoulli {
                p: 0.35,
                impact: -1.0,
            }),
            Marginal::new(&Distribution::Triangular {
                min: 0.0,
                mode: 1.0,
                max: 5.0,
            }),
            Marginal::new(&Distribution::Pert {
                min: 0.0,
                mode: 1.0,
                max: 5.0,
            }),
            Marginal::new(&Distribution::Lognormal { mean: 2.0, sd: 1.0 }),
        ];
        for marginal in &marginals {
            let values: Vec<f64> = (1..1000)
                .map(|i| marginal.quantile(i as f64 / 1000.0))
                .collect();
            assert!(values.windows(2).all(|w| w[0] <= w[1]), "{marginal:?}");
        }
        assert_eq!(marginals[0].quantile(0.1), 0.0);
        assert_eq!(marginals[0].quantile(0.9), 1.0);
    }

    #[test]
    fn the_beta_table_is_monotone_and_pinned_at_both_ends() {
        let table = beta_quantile_table(2.0, 5.0);
        assert_eq!((table[0], table[table.len() - 1]), (0.0, 1.0));
        assert!(table.windows(2).all(|pair| pair[0] <= pair[1]));
        // The median of Beta(2, 5) is about 0.26445.
        assert!((table[table.len() / 2] - 0.26445).abs() < 1e-4);
    }
}
