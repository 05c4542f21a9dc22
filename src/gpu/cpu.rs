//! The CPU Monte Carlo engine: rayon over chunks of paths.
//!
//! Two passes over the same paths (the counter-based generator redraws any
//! path for free, so nothing is stored): the first gathers moments, extremes
//! and the probability of loss, with progress and cancellation between
//! batches of chunks; the second bins every NPV into a fine histogram over
//! the first pass's range, from which percentiles are read.

use std::time::Instant;

use rayon::prelude::*;

use crate::model::{NpvWeights, ValueModel};

use super::sampling::Sampler;

/// Paths per unit of parallel work.
const CHUNK_PATHS: u64 = 16_384;
/// Bins of the histogram the percentiles are read from.
const FINE_BINS: usize = 1 << 16;
/// Paths whose draws feed the rank correlations.
const RANK_SAMPLE: u64 = 20_000;

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSettings {
    pub paths: u64,
    pub seed: u64,
    /// Bins of the reported histogram.
    pub bins: usize,
    /// Stop once the standard error of the mean falls below this fraction
    /// of |mean| (checked between batches).
    pub stop_at_rel_se: Option<f64>,
}

/// Where a run is, reported between batches.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub paths_done: u64,
    pub paths_total: u64,
    pub running_mean: f64,
    pub samples_per_second: f64,
}

/// What the progress callback wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    AllPaths,
    PrecisionReached,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RunError {
    #[error("cancelled after {paths_done} paths")]
    Cancelled { paths_done: u64 },
    #[error("`paths` must be within 1..=1000000000, got {0}")]
    Paths(u64),
    #[error("`bins` must be within 1..=10000, got {0}")]
    Bins(usize),
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub p5: f64,
    pub p10: f64,
    pub p25: f64,
    pub p50: f64,
    pub p75: f64,
    pub p90: f64,
    pub p95: f64,
}

impl Percentiles {
    /// The percentiles of a distribution given its quantile function.
    fn from_quantiles(quantile: impl Fn(f64) -> f64) -> Percentiles {
        Percentiles {
            p5: quantile(0.05),
            p10: quantile(0.10),
            p25: quantile(0.25),
            p50: quantile(0.50),
            p75: quantile(0.75),
            p90: quantile(0.90),
            p95: quantile(0.95),
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    pub percentiles: Percentiles,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Histogram {
    /// `bins + 1` edges.
    pub edges: Vec<f64>,
    pub counts: Vec<u64>,
}

/// One bar of the tornado: NPV with this driver at its P10 and P90, every
/// other driver at its mean; and the driver's rank correlation with NPV.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Sensitivity {
    pub driver: String,
    pub npv_at_p10: f64,
    pub npv_at_p90: f64,
    pub swing: f64,
    pub rank_correlation: f64,
}

/// Payback months over the first paths of the run (payback needs a month
/// loop per path, so it is estimated from a sample).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PaybackSummary {
    pub sampled_paths: u64,
    /// Share of sampled paths that pay back within the horizon.
    pub prob_within_horizon: f64,
    /// Payback month percentiles; `None` where that share never pays back.
    pub p10: Option<u32>,
    pub p50: Option<u32>,
    pub p90: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SimulationResult {
    pub npv: Summary,
    pub prob_loss: f64,
    /// NPV over the cost basis; absent when the model has no costs.
    pub roi: Option<Summary>,
    pub std_error: f64,
    pub histogram: Histogram,
    pub sensitivity: Vec<Sensitivity>,
    pub payback: PaybackSummary,
    pub paths: u64,
    pub seed: u64,
    pub engine: &'static str,
    pub stop_reason: StopReason,
    pub wall_seconds: f64,
    /// Paths times drivers per second of wall time (each sample is drawn
    /// twice, once per pass).
    pub samples_per_second: f64,
}

/// Moments by Chan's parallel update, extremes and losses of some paths.
#[derive(Debug, Clone, Copy)]
struct Moments {
    count: u64,
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
    losses: u64,
}

impl Moments {
    const EMPTY: Moments = Moments {
        count: 0,
        mean: 0.0,
        m2: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        losses: 0,
    };

    fn push(&mut self, value: f64) {
        self.count += 1;
        let delta = value - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (value - self.mean);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.losses += u64::from(value < 0.0);
    }

    fn merge(self, other: Moments) -> Moments {
        if self.count == 0 {
            return other;
        }
        if other.count == 0 {
            return self;
        }
        let count = self.count + other.count;
        let delta = other.mean - self.mean;
        Moments {
            count,
            mean: self.mean + delta * other.count as f64 / count as f64,
            m2: self.m2
                + other.m2
                + delta * delta * self.count as f64 * other.count as f64 / count as f64,
            min: self.min.min(other.min),
            max: self.max.max(other.max),
            losses: self.losses + other.losses,
        }
    }

    fn std(&self) -> f64 {
        if self.count < 2 {
            0.0
        } else {
            (self.m2 / (self.count - 1) as f64).sqrt()
        }
    }

    fn std_error(&self) -> f64 {
        self.std() / (self.count.max(1) as f64).sqrt()
    }
}

/// NPV of each path of a range, through a closure.
fn for_each_npv(
    sampler: &Sampler,
    weights: &NpvWeights,
    seed: u64,
    paths: std::ops::Range<u64>,
    mut visit: impl FnMut(f64),
) {
    let drivers = sampler.num_drivers();
    let (mut quantities, mut scratch) = (vec![0.0; drivers], vec![0.0; drivers]);
    for path in paths {
        sampler.draw(seed, path, &mut quantities, &mut scratch);
        visit(weights.npv(&quantities));
    }
}

fn chunks(start: u64, end: u64) -> Vec<std::ops::Range<u64>> {
    (start..end)
        .step_by(CHUNK_PATHS as usize)
        .map(|from| from..(from + CHUNK_PATHS).min(end))
        .collect()
}

/// Runs the model on all CPU cores. `on_progress` is called between
/// batches on the calling thread; returning [`Control::Cancel`] stops.
pub fn run(
    model: &ValueModel,
    settings: &RunSettings,
    mut on_progress: impl FnMut(&Progress) -> Control,
) -> Result<SimulationResult, RunError> {
    if !(1..=1_000_000_000).contains(&settings.paths) {
        return Err(RunError::Paths(settings.paths));
    }
    if !(1..=10_000).contains(&settings.bins) {
        return Err(RunError::Bins(settings.bins));
    }
    let started = Instant::now();
    let sampler = Sampler::new(model);
    let weights = model.npv_weights();
    let seed = settings.seed;
    let drivers = sampler.num_drivers().max(1) as f64;
    let batch_paths = CHUNK_PATHS * 4 * rayon::current_num_threads() as u64;

    // Pass 1: moments, with progress, cancellation and precision control.
    let mut moments = Moments::EMPTY;
    let mut done = 0u64;
    let mut stop_reason = StopReason::AllPaths;
    while done < settings.paths {
        let end = (done + batch_paths).min(settings.paths);
        let batch = chunks(done, end)
            .into_par_iter()
            .map(|range| {
                let mut partial = Moments::EMPTY;
                for_each_npv(&sampler, &weights, seed, range, |npv| partial.push(npv));
                partial
            })
            .reduce(|| Moments::EMPTY, Moments::merge);
        moments = moments.merge(batch);
        done = end;
        let elapsed = started.elapsed().as_secs_f64().max(1e-9);
        let progress = Progress {
            paths_done: done,
            paths_total: settings.paths,
            running_mean: moments.mean,
            samples_per_second: done as f64 * drivers / elapsed,
        };
        if on_progress(&progress) == Control::Cancel {
            return Err(RunError::Cancelled { paths_done: done });
        }
        if let Some(target) = settings.stop_at_rel_se
            && done < settings.paths
            && moments.count > 1
            && moments.std_error() <= target * moments.mean.abs()
        {
            stop_reason = StopReason::PrecisionReached;
            break;
        }
    }
    let paths = done;

    // Pass 2: the same paths again, binned.
    let (low, high) = (moments.min, moments.max);
    let width = (high - low).max(f64::MIN_POSITIVE);
    let bin_of =
        |value: f64, bins: usize| (((value - low) / width * bins as f64) as usize).min(bins - 1);
    let output_bins = settings.bins;
    let empty = || (vec![0u64; FINE_BINS], vec![0u64; output_bins]);
    let (fine, coarse) = chunks(0, paths)
        .into_par_iter()
        .fold(empty, |(mut fine, mut coarse), range| {
            for_each_npv(&sampler, &weights, seed, range, |npv| {
                fine[bin_of(npv, FINE_BINS)] += 1;
                coarse[bin_of(npv, output_bins)] += 1;
            });
            (fine, coarse)
        })
        .reduce(
            empty,
            |(mut fine, mut coarse), (other_fine, other_coarse)| {
                fine.iter_mut().zip(other_fine).for_each(|(a, b)| *a += b);
                coarse
                    .iter_mut()
                    .zip(other_coarse)
                    .for_each(|(a, b)| *a += b);
                (fine, coarse)
            },
        );
    let npv = Summary {
        mean: moments.mean,
        std: moments.std(),
        min: low,
        max: high,
        percentiles: Percentiles::from_quantiles(|p| fine_percentile(&fine, paths, low, width, p)),
    };
    let roi = weights
        .roi(1.0)
        .map(|per_unit| scale_summary(&npv, per_unit));
    let edges = (0..=output_bins)
        .map(|index| low + width * index as f64 / output_bins as f64)
        .collect();
    let (sensitivity, payback) =
        sample_statistics(model, &sampler, &weights, seed, paths.min(RANK_SAMPLE));
    let wall_seconds = started.elapsed().as_secs_f64();
    Ok(SimulationResult {
        prob_loss: moments.losses as f64 / paths as f64,
        std_error: moments.std_error(),
        npv,
        roi,
        histogram: Histogram {
            edges,
            counts: coarse,
        },
        sensitivity,
        payback,
        paths,
        seed,
        engine: "cpu",
        stop_reason,
        wall_seconds,
        samples_per_second: paths as f64 * drivers / wall_seconds.max(1e-9),
    })
}

/// The `p` quantile from a fine histogram, interpolated inside its bin.
fn fine_percentile(counts: &[u64], total: u64, low: f64, width: f64, p: f64) -> f64 {
    let target = p * total as f64;
    let mut cumulative = 0.0;
    for (index, &count) in counts.iter().enumerate() {
        let next = cumulative + count as f64;
        if next >= target && count > 0 {
            let within = ((target - cumulative) / count as f64).clamp(0.0, 1.0);
            return low + width * (index as f64 + within) / counts.len() as f64;
        }
        cumulative = next;
    }
    low + width
}

fn scale_summary(summary: &Summary, factor: f64) -> Summary {
    let p = &summary.percentiles;
    Summary {
        mean: summary.mean * factor,
        std: summary.std * factor,
        min: summary.min * factor,
        max: summary.max * factor,
        percentiles: Percentiles {
            p5: p.p5 * factor,
            p10: p.p10 * factor,
            p25: p.p25 * factor,
            p50: p.p50 * factor,
            p75: p.p75 * factor,
            p90: p.p90 * factor,
            p95: p.p95 * factor,
        },
    }
}

/// Tornado bars (closed form: NPV is linear in the quantities), and rank
/// correlations and payback months over the first `sample` paths.
fn sample_statistics(
    model: &ValueModel,
    sampler: &Sampler,
    weights: &NpvWeights,
    seed: u64,
    sample: u64,
) -> (Vec<Sensitivity>, PaybackSummary) {
    let curves = model.payback_curves();
    let mut paybacks: Vec<u32> = Vec::with_capacity(sample as usize);
    let means: Vec<f64> = model.drivers.iter().map(|d| d.quantity.mean()).collect();
    let at_means = weights.npv(&means);
    let drivers = means.len();
    let mut columns = vec![Vec::with_capacity(sample as usize); drivers];
    let mut npvs = Vec::with_capacity(sample as usize);
    let (mut quantities, mut scratch) = (vec![0.0; drivers], vec![0.0; drivers]);
    for path in 0..sample {
        sampler.draw(seed, path, &mut quantities, &mut scratch);
        npvs.push(weights.npv(&quantities));
        // Never paying back sorts after every month.
        paybacks.push(curves.payback_month(&quantities).unwrap_or(u32::MAX));
        for (column, &quantity) in columns.iter_mut().zip(&quantities) {
            column.push(quantity);
        }
    }
    let npv_ranks = ranks(&npvs);
    let mut bars: Vec<Sensitivity> = model
        .drivers
        .iter()
        .enumerate()
        .map(|(index, driver)| {
            let at = |u: f64| {
                at_means + weights.weights[index] * (sampler.quantile(index, u) - means[index])
            };
            let (npv_at_p10, npv_at_p90) = (at(0.10), at(0.90));
            Sensitivity {
                driver: driver.name.clone(),
                npv_at_p10,
                npv_at_p90,
                swing: (npv_at_p90 - npv_at_p10).abs(),
                rank_correlation: pearson(&ranks(&columns[index]), &npv_ranks),
            }
        })
        .collect();
    bars.sort_by(|a, b| b.swing.total_cmp(&a.swing));
    paybacks.sort_unstable();
    let at = |p: f64| {
        let index = ((p * paybacks.len() as f64) as usize).min(paybacks.len().saturating_sub(1));
        paybacks
            .get(index)
            .copied()
            .filter(|&month| month != u32::MAX)
    };
    let paid_back = paybacks.iter().filter(|&&month| month != u32::MAX).count();
    let payback = PaybackSummary {
        sampled_paths: sample,
        prob_within_horizon: paid_back as f64 / sample.max(1) as f64,
        p10: at(0.10),
        p50: at(0.50),
        p90: at(0.90),
    };
    (bars, payback)
}

/// Ranks (ties share their mean rank), for Spearman's correlation.
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        while end + 1 < order.len() && values[order[end + 1]] == values[order[start]] {
            end += 1;
        }
        let rank = (start + end) as f64 / 2.0;
        for &index in &order[start..=end] {
            ranks[index] = rank;
        }
        start = end + 1;
    }
    ranks
}

fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mean_x, mean_y) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut covariance, mut var_x, mut var_y) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        covariance += (a - mean_x) * (b - mean_y);
        var_x += (a - mean_x).powi(2);
        var_y += (b - mean_y).powi(2);
    }
    if var_x == 0.0 || var_y == 0.0 {
        0.0
    } else {
        covariance / (var_x * var_y).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(drivers: serde_json::Value, discount_rate: f64) -> ValueModel {
        let model: ValueModel = serde_json::from_value(serde_json::json!({
            "name": "m", "customer": "c", "industry": "saas", "currency": "USD",
            "horizon_months": 24, "discount_rate": discount_rate,
            "costs": { "one_off": 1000, "monthly": 50 },
            "drivers": drivers
        }))
        .unwrap();
        model.validate().unwrap();
        model
    }

    fn settings(paths: u64) -> RunSettings {
        RunSettings {
            paths,
            seed: 42,
            bins: 40,
            stop_at_rel_se: None,
        }
    }

    fn normals() -> ValueModel {
        model(
            serde_json::json!([
                { "name": "a", "category": "revenue", "unit_value": 2.0, "ramp_months": 6,
                  "quantity": { "dist": "normal", "mean": 100.0, "sd": 30.0 } },
                { "name": "b", "category": "cost", "unit_value": 0.5,
                  "quantity": { "dist": "normal", "mean": 400.0, "sd": 200.0 } }
            ]),
            0.08,
        )
    }

    #[test]
    fn sums_of_normal_drivers_match_the_closed_form() {
        let model = normals();
        let weights = model.npv_weights();
        // NPV = base + w_a q_a + w_b q_b with independent normals.
        let mean = weights.base + weights.weights[0] * 100.0 + weights.weights[1] * 400.0;
        let sd =
            ((weights.weights[0] * 30.0).powi(2) + (weights.weights[1] * 200.0).powi(2)).sqrt();
        let result = run(&model, &settings(400_000), |_| Control::Continue).unwrap();
        assert!(
            (result.npv.mean - mean).abs() < 5.0 * result.std_error,
            "{} vs {mean}",
            result.npv.mean
        );
        assert!(
            (result.npv.std - sd).abs() / sd < 0.01,
            "{} vs {sd}",
            result.npv.std
        );
        assert!((result.std_error - sd / 400_000f64.sqrt()).abs() / result.std_error < 0.02);
        // The median of a normal is its mean; P90 is mean + 1.2816 sd.
        let p = &result.npv.percentiles;
        assert!((p.p50 - mean).abs() < 0.01 * sd, "{} vs {mean}", p.p50);
        assert!(
            (p.p90 - (mean + 1.281_551_6 * sd)).abs() < 0.02 * sd,
            "{}",
            p.p90
        );
        let loss = super::super::sampling::normal_cdf(-mean / sd);
        assert!(
            (result.prob_loss - loss).abs() < 0.005,
            "{} vs {loss}",
            result.prob_loss
        );
        assert_eq!(result.histogram.counts.iter().sum::<u64>(), 400_000);
        assert_eq!(result.histogram.edges.len(), 41);
        // Tornado: b swings more (0.5 * 200 * ... vs 2 * 30 * ...), sorted first.
        assert_eq!(result.sensitivity[0].driver, "b");
        assert!(result.sensitivity.iter().all(|s| s.rank_correlation > 0.3));
        let payback = &result.payback;
        assert_eq!(payback.sampled_paths, 20_000);
        let month = |m: Option<u32>| m.unwrap_or(u32::MAX);
        assert!(month(payback.p10) <= month(payback.p50));
        assert!(month(payback.p50) <= month(payback.p90));
        let roi = result.roi.unwrap();
        assert!((roi.mean - result.npv.mean / weights.cost_basis).abs() < 1e-9);
    }

    #[test]
    fn a_seed_gives_the_same_result_whatever_the_thread_count() {
        let model = normals();
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let two = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let a = one
            .install(|| run(&model, &settings(100_000), |_| Control::Continue))
            .unwrap();
        let b = two
            .install(|| run(&model, &settings(100_000), |_| Control::Continue))
            .unwrap();
        assert_eq!(a.npv.percentiles, b.npv.percentiles);
        assert_eq!(a.histogram, b.histogram);
        assert!((a.npv.mean - b.npv.mean).abs() < 1e-9 * a.npv.mean.abs());
        assert_eq!((a.npv.min, a.npv.max), (b.npv.min, b.npv.max));
        let other_seed = run(
            &model,
            &RunSettings {
                seed: 7,
                ..settings(100_000)
            },
            |_| Control::Continue,
        )
        .unwrap();
        assert_ne!(other_seed.npv.min, a.npv.min);
    }

    #[test]
    fn progress_is_reported_and_cancel_stops_the_run() {
        let model = normals();
        let mut reports = Vec::new();
        let result = run(&model, &settings(2_000_000), |progress| {
            reports.push(progress.paths_done);
            if progress.paths_done >= 300_000 {
                Control::Cancel
            } else {
                Control::Continue
            }
        });
        assert!(
            matches!(result, Err(RunError::Cancelled { paths_done }) if paths_done < 2_000_000)
        );
        assert!(reports.len() >= 2, "{reports:?}");
        assert!(reports.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn precision_control_stops_early_and_says_why() {
        let model = normals();
        let result = run(
            &model,
            &RunSettings {
                stop_at_rel_se: Some(0.01),
                ..settings(50_000_000)
            },
            |_| Control::Continue,
        )
        .unwrap();
        assert_eq!(result.stop_reason, StopReason::PrecisionReached);
        assert!(result.paths < 50_000_000);
        assert!(result.std_error <= 0.01 * result.npv.mean.abs());
    }

    #[test]
    fn payback_of_a_certain_model_is_its_deterministic_payback() {
        let model = model(
            serde_json::json!([
                { "name": "a", "category": "revenue", "unit_value": 10.0, "ramp_months": 3,
                  "quantity": { "dist": "fixed", "value": 20.0 } }
            ]),
            0.05,
        );
        let expected = model.analytics().payback_month;
        assert!(expected.is_some());
        let result = run(&model, &settings(1_000), |_| Control::Continue).unwrap();
        let payback = &result.payback;
        assert_eq!(
            (payback.p10, payback.p50, payback.p90),
            (expected, expected, expected)
        );
        assert_eq!(payback.prob_within_horizon, 1.0);
    }

    #[test]
    fn bad_settings_are_refused() {
        let model = normals();
        assert_eq!(
            run(&model, &settings(0), |_| Control::Continue).unwrap_err(),
            RunError::Paths(0)
        );
        let no_bins = RunSettings {
            bins: 0,
            ..settings(10)
        };
        assert_eq!(
            run(&model, &no_bins, |_| Control::Continue).unwrap_err(),
            RunError::Bins(0)
        );
    }
}
