//! What every Monte Carlo engine shares: settings, progress, the run loop
//! (pilot, batches, precision control, cancellation) and the result. An
//! engine ([`Backend`]) only turns a range of paths into NPV moments and a
//! fine histogram; the CPU ([`super::cpu`]) and CUDA ([`super::cuda`])
//! engines draw the same numbers, so they agree to rounding.
//!
//! One pass: a pilot of the first paths (drawn on the CPU, whatever the
//! engine) fixes the range of a fine histogram, widened on both sides; the
//! run then bins every NPV once. Percentiles are read from that histogram;
//! in the rare case one falls outside its range, a second pass bins every
//! path again over the run's true extremes.

use std::ops::Range;
use std::time::Instant;

use crate::model::{NpvWeights, ValueModel};

use super::sampling::{BLOCK_PATHS, Block, Sampler};

/// Bins of the histogram the percentiles are read from.
pub(crate) const FINE_BINS: usize = 1 << 16;
/// Paths of the pilot that fixes the fine histogram's range.
const PILOT_PATHS: u64 = 1 << 16;
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
    pub running_std: f64,
    pub samples_per_second: f64,
    /// Estimates from the histogram so far (`None` while outside its range).
    pub p50: Option<f64>,
    pub p90: Option<f64>,
}

/// What the progress callback wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    #[error("`stop_at_rel_se` must be within (0, 1), got {0}")]
    RelativeError(f64),
    #[error("no GPU engine: {0}")]
    NoGpu(String),
    #[error("the GPU engine failed: {0}")]
    Gpu(String),
}

/// Where to run: `auto` takes the GPU when one is usable, else the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    #[default]
    Auto,
    Cpu,
    Gpu,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub p5: f64,
    pub p10: f64,
    pub p25: f64,
    pub p50: f64,
    pub p75: f64,
    pub p90: f64,
    pub p95: f64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    pub percentiles: Percentiles,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Histogram {
    /// `bins + 1` edges.
    pub edges: Vec<f64>,
    pub counts: Vec<u64>,
}

/// One bar of the tornado: NPV with this driver at its P10 and P90, every
/// other driver at its mean; and the driver's rank correlation with NPV.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sensitivity {
    pub driver: String,
    pub npv_at_p10: f64,
    pub npv_at_p90: f64,
    pub swing: f64,
    pub rank_correlation: f64,
}

/// Payback months over the first paths of the run (payback needs a month
/// loop per path, so it is estimated from a sample).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PaybackSummary {
    pub sampled_paths: u64,
    /// Share of sampled paths that pay back within the horizon.
    pub prob_within_horizon: f64,
    /// Payback month percentiles; `None` where that share never pays back.
    pub p10: Option<u32>,
    pub p50: Option<u32>,
    pub p90: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SimulationResult {
    pub npv: Summary,
    /// NPV percentiles P1 to P99 (`npv_quantiles[i]` is P(i + 1)).
    pub npv_quantiles: Vec<f64>,
    pub prob_loss: f64,
    /// NPV over the cost basis; absent when the model has no costs.
    pub roi: Option<Summary>,
    pub std_error: f64,
    pub histogram: Histogram,
    pub sensitivity: Vec<Sensitivity>,
    pub payback: PaybackSummary,
    pub paths: u64,
    pub seed: u64,
    /// `cpu` or `cuda`.
    pub engine: String,
    pub stop_reason: StopReason,
    pub wall_seconds: f64,
    /// Paths times drivers per second of wall time, pilot and statistics
    /// included.
    pub samples_per_second: f64,
}

impl SimulationResult {
    /// The NPV that the outcome reaches or exceeds with probability
    /// `confidence` (in [0.01, 0.99]): the `1 - confidence` quantile,
    /// interpolated between whole percentiles.
    pub fn npv_at_confidence(&self, confidence: f64) -> f64 {
        // Rounded so that 0.9 means P10 exactly, not 9.999999999999998.
        let percent = (((1.0 - confidence) * 100.0 * 1e9).round() / 1e9).clamp(1.0, 99.0);
        let below = (percent.floor() as usize).clamp(1, 99);
        let above = (below + 1).min(99);
        let fraction = percent - below as f64;
        let at = |percent: usize| self.npv_quantiles[percent - 1];
        at(below) + fraction * (at(above) - at(below))
    }
}

/// Moments (merged by Chan's parallel update), extremes and losses of some
/// paths.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Moments {
    pub count: u64,
    pub mean: f64,
    pub m2: f64,
    pub min: f64,
    pub max: f64,
    pub losses: u64,
}

impl Moments {
    pub const EMPTY: Moments = Moments {
        count: 0,
        mean: 0.0,
        m2: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        losses: 0,
    };

    /// From sums of `x - shift` and `(x - shift)^2`: with a shift near the
    /// mean (the pilot's), the plain sums lose nothing, and they are what a
    /// vector loop or a GPU block reduces cheaply.
    pub fn from_shifted_sums(count: u64, shift: f64, sum: f64, sum_sq: f64) -> Moments {
        if count == 0 {
            return Moments::EMPTY;
        }
        let n = count as f64;
        Moments {
            count,
            mean: shift + sum / n,
            m2: (sum_sq - sum * sum / n).max(0.0),
            ..Moments::EMPTY
        }
    }

    pub fn merge(self, other: Moments) -> Moments {
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

/// Equal bins (at most [`FINE_BINS`]) over `[low, low + width)`, with
/// what falls below or above counted apart.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FineHistogram {
    pub low: f64,
    pub width: f64,
    pub counts: Vec<u64>,
    pub under: u64,
    pub over: u64,
}

impl FineHistogram {
    pub fn new(low: f64, high: f64, bins: usize) -> FineHistogram {
        FineHistogram {
            low,
            width: (high - low).max(f64::MIN_POSITIVE),
            counts: vec![0; bins.clamp(1, FINE_BINS)],
            under: 0,
            over: 0,
        }
    }

    /// Bins per unit of NPV; the CUDA kernel bins with the same expression.
    pub fn scale(&self) -> f64 {
        self.counts.len() as f64 / self.width
    }

    #[inline(always)]
    pub fn add(&mut self, value: f64, scale: f64) {
        let position = (value - self.low) * scale;
        if position < 0.0 {
            self.under += 1;
        } else if position >= self.counts.len() as f64 {
            self.over += 1;
        } else {
            self.counts[position as usize] += 1;
        }
    }

    pub fn merge(&mut self, other: &FineHistogram) {
        self.counts
            .iter_mut()
            .zip(&other.counts)
            .for_each(|(a, b)| *a += b);
        self.under += other.under;
        self.over += other.over;
    }

    pub fn empty_like(&self) -> FineHistogram {
        FineHistogram {
            counts: vec![0; self.counts.len()],
            under: 0,
            over: 0,
            ..*self
        }
    }

    /// Empties the bins in place (no new allocation).
    pub fn clear(&mut self) {
        self.counts.fill(0);
        self.under = 0;
        self.over = 0;
    }

    fn total(&self) -> u64 {
        self.under + self.over + self.counts.iter().sum::<u64>()
    }

    /// The quantiles at `ps` (ascending), each interpolated inside its bin
    /// and `None` when it lies below or above the range, in one walk over
    /// the bins: a walk per quantile made P1..P99 the dearest part of a
    /// small run.
    fn percentiles(&self, ps: &[f64]) -> Vec<Option<f64>> {
        let total = self.total() as f64;
        let bin_count = self.counts.len() as f64;
        let mut found = Vec::with_capacity(ps.len());
        let mut cumulative = self.under as f64;
        let mut bins = self.counts.iter().enumerate().peekable();
        for &p in ps {
            let target = p * total;
            if self.under > 0 && self.under as f64 >= target {
                found.push(None);
                continue;
            }
            // The bin that holds a quantile may hold the next one too: it
            // stays under the cursor.
            let quantile = loop {
                let Some(&(index, &count)) = bins.peek() else {
                    break None;
                };
                let next = cumulative + count as f64;
                if next >= target && count > 0 {
                    let within = ((target - cumulative) / count as f64).clamp(0.0, 1.0);
                    break Some(self.low + self.width * (index as f64 + within) / bin_count);
                }
                cumulative = next;
                bins.next();
            };
            found.push(quantile);
        }
        found
    }

    /// P1 to P99; `None` when any lies outside the range.
    fn quantiles(&self) -> Option<Vec<f64>> {
        let ps: Vec<f64> = (1..=99).map(|percent| f64::from(percent) / 100.0).collect();
        self.percentiles(&ps).into_iter().collect()
    }

    /// `bins` equal bins over `[min, max]`, each fine bin counted where its
    /// centre falls (and what fell outside the range in the end bins): the
    /// shape is off by at most one fine bin at each coarse edge.
    fn coarsen(&self, min: f64, max: f64, bins: usize) -> Histogram {
        let span = (max - min).max(f64::MIN_POSITIVE);
        let mut counts = vec![0u64; bins];
        counts[0] += self.under;
        counts[bins - 1] += self.over;
        for (index, &count) in self.counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let centre = self.low + self.width * (index as f64 + 0.5) / self.counts.len() as f64;
            let bin = ((centre - min) / span * bins as f64).clamp(0.0, (bins - 1) as f64);
            counts[bin as usize] += count;
        }
        Histogram {
            edges: (0..=bins)
                .map(|index| min + span * index as f64 / bins as f64)
                .collect(),
            counts,
        }
    }
}

/// Paths whose moments are computed in one piece, aligned at path 0: the
/// leaves of [`Reduction`]'s tree, whatever the batches, chunks or threads.
pub(crate) const GRAIN_PATHS: u64 = 16_384;

/// Moments of consecutive grains of paths, merged in a tree that their
/// count alone fixes (a binary counter: two subtrees of equal height merge
/// as soon as both exist). Floating-point merges are not associative, so a
/// fixed tree is what makes a run's result the same to the last bit for a
/// seed, whatever the thread count, batch or chunk size.
#[derive(Debug, Default)]
pub(crate) struct Reduction {
    /// Subtrees, oldest first, each with its height.
    stack: Vec<(u32, Moments)>,
}

impl Reduction {
    /// Adds the next grain's moments.
    pub fn push(&mut self, grain: Moments) {
        let (mut height, mut merged) = (0, grain);
        while let Some(&(top, older)) = self.stack.last() {
            if top != height {
                break;
            }
            self.stack.pop();
            merged = older.merge(merged);
            height += 1;
        }
        self.stack.push((height, merged));
    }

    /// The moments of every grain so far (oldest subtree first).
    pub fn total(&self) -> Moments {
        self.stack
            .iter()
            .fold(Moments::EMPTY, |total, &(_, subtree)| total.merge(subtree))
    }
}

/// An engine: NPV moments of a range of paths, each NPV also binned.
pub(crate) trait Backend {
    /// The name a result reports (`cpu`, `cuda`).
    fn name(&self) -> &'static str;

    /// Paths per batch: the grain of progress, cancellation and precision
    /// control; a whole number of grains. `fixed`: the same on every
    /// machine (a run stopped at a precision stops at the same path).
    fn batch_paths(&self, fixed: bool) -> u64;

    /// `shift` is the pilot's mean (see [`Moments::from_shifted_sums`]).
    /// The moments go into `into` in path order, one per grain of the
    /// backend ([`GRAIN_PATHS`] on the CPU); a batch starts on a grain.
    fn run_batch(
        &mut self,
        paths: Range<u64>,
        shift: f64,
        histogram: &mut FineHistogram,
        into: &mut Reduction,
    ) -> Result<(), RunError>;
}

/// NPV moments of `paths`, each binned into `histogram`, on this thread:
/// the CPU engine's unit of work, and the pilot.
#[inline(always)]
pub(crate) fn npv_moments(
    sampler: &Sampler,
    weights: &NpvWeights,
    seed: u64,
    paths: Range<u64>,
    shift: f64,
    histogram: &mut FineHistogram,
) -> Moments {
    let mut block = Block::default();
    let scale = histogram.scale();
    let mut sums = Sums::new(shift);
    let mut first = paths.start;
    while first < paths.end {
        let count = (paths.end - first).min(BLOCK_PATHS as u64) as usize;
        let npvs = sampler.npv_block(weights, seed, first, count, &mut block);
        for &npv in npvs {
            sums.add(npv);
            histogram.add(npv, scale);
        }
        first += count as u64;
    }
    sums.moments(paths.end - paths.start)
}

/// Running sums of NPVs, shifted by `shift` (see [`Moments::from_shifted_sums`]).
struct Sums {
    shift: f64,
    sum: f64,
    sum_sq: f64,
    min: f64,
    max: f64,
    losses: u64,
}

impl Sums {
    fn new(shift: f64) -> Sums {
        Sums {
            shift,
            sum: 0.0,
            sum_sq: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            losses: 0,
        }
    }

    #[inline]
    fn add(&mut self, npv: f64) {
        let centred = npv - self.shift;
        self.sum += centred;
        self.sum_sq += centred * centred;
        self.min = self.min.min(npv);
        self.max = self.max.max(npv);
        self.losses += u64::from(npv < 0.0);
    }

    fn moments(&self, count: u64) -> Moments {
        Moments {
            min: self.min,
            max: self.max,
            losses: self.losses,
            ..Moments::from_shifted_sums(count, self.shift, self.sum, self.sum_sq)
        }
    }
}

/// Checks settings before any work.
pub fn check_settings(settings: &RunSettings) -> Result<(), RunError> {
    if !(1..=1_000_000_000).contains(&settings.paths) {
        return Err(RunError::Paths(settings.paths));
    }
    if !(1..=10_000).contains(&settings.bins) {
        return Err(RunError::Bins(settings.bins));
    }
    if let Some(target) = settings.stop_at_rel_se
        && !(target > 0.0 && target < 1.0)
    {
        return Err(RunError::RelativeError(target));
    }
    Ok(())
}

/// Runs a model on the engine `device` names (`gpu` is the first GPU).
/// `on_progress` is called between batches on the calling thread; returning
/// [`Control::Cancel`] stops.
pub fn run(
    model: &ValueModel,
    settings: &RunSettings,
    device: Device,
    on_progress: impl FnMut(&Progress) -> Control,
) -> Result<SimulationResult, RunError> {
    let gpu = match device {
        Device::Cpu => None,
        Device::Gpu => Some(0),
        Device::Auto => super::cuda::probe().ok().map(|_| 0),
    };
    run_with(model, settings, gpu, on_progress)
}

/// Runs a model on GPU `ordinal`, or on the CPU when `None`.
pub fn run_with(
    model: &ValueModel,
    settings: &RunSettings,
    gpu: Option<usize>,
    on_progress: impl FnMut(&Progress) -> Control,
) -> Result<SimulationResult, RunError> {
    check_settings(settings)?;
    let sampler = Sampler::new(model);
    let weights = model.npv_weights();
    match gpu {
        Some(ordinal) => {
            let mut backend =
                super::cuda::CudaBackend::new(&sampler, &weights, settings.seed, ordinal)?;
            run_on(
                model,
                settings,
                &sampler,
                &weights,
                &mut backend,
                PILOT_PATHS,
                on_progress,
            )
        }
        None => {
            let mut backend = super::cpu::CpuBackend::new(&sampler, &weights, settings.seed);
            run_on(
                model,
                settings,
                &sampler,
                &weights,
                &mut backend,
                PILOT_PATHS,
                on_progress,
            )
        }
    }
}

/// Fine bins for a run of `paths`: four per path up to [`FINE_BINS`]. A
/// bin's width stays well under the spacing of the run's own order
/// statistics, and a small run does not pay for 65,536 bins it cannot fill.
fn fine_bins(paths: u64) -> usize {
    (paths.saturating_mul(4).min(FINE_BINS as u64) as usize)
        .next_power_of_two()
        .clamp(1024, FINE_BINS)
}

fn run_on(
    model: &ValueModel,
    settings: &RunSettings,
    sampler: &Sampler,
    weights: &NpvWeights,
    backend: &mut dyn Backend,
    pilot_paths: u64,
    mut on_progress: impl FnMut(&Progress) -> Control,
) -> Result<SimulationResult, RunError> {
    let started = Instant::now();
    let seed = settings.seed;
    let drivers = sampler.num_drivers().max(1) as f64;

    // The pilot fixes the fine histogram's range: its extremes, widened by
    // half their span on each side.
    let pilot_paths = settings.paths.min(pilot_paths);
    // A small run's statistics sample holds the pilot's paths: drawn once,
    // they serve both (a saga's run of 1,000 paths drew them three times).
    let sample = (settings.paths.min(RANK_SAMPLE) >= pilot_paths).then(|| {
        Sample::draw(
            model,
            sampler,
            weights,
            seed,
            settings.paths.min(RANK_SAMPLE),
        )
    });
    let pilot = match &sample {
        Some(sample) => sample.pilot(pilot_paths),
        None => {
            // The pilot's own binning is thrown away.
            let mut unbounded = FineHistogram::new(0.0, 1.0, 1);
            npv_moments(sampler, weights, seed, 0..pilot_paths, 0.0, &mut unbounded)
        }
    };
    let margin = (pilot.max - pilot.min) * 0.5;
    let bins = fine_bins(settings.paths);
    let mut histogram = FineHistogram::new(pilot.min - margin, pilot.max + margin, bins);
    let shift = pilot.mean;

    let mut reduction = Reduction::default();
    let mut moments = Moments::EMPTY;
    let mut done = 0u64;
    let mut stop_reason = StopReason::AllPaths;
    let fixed = settings.stop_at_rel_se.is_some();
    while done < settings.paths {
        let end = (done + backend.batch_paths(fixed)).min(settings.paths);
        backend.run_batch(done..end, shift, &mut histogram, &mut reduction)?;
        moments = reduction.total();
        done = end;
        let elapsed = started.elapsed().as_secs_f64().max(1e-9);
        let (p50, p90) = match histogram.percentiles(&[0.5, 0.9])[..] {
            [p50, p90] => (p50, p90),
            _ => (None, None),
        };
        let progress = Progress {
            paths_done: done,
            paths_total: settings.paths,
            running_mean: moments.mean,
            running_std: moments.std(),
            samples_per_second: done as f64 * drivers / elapsed,
            p50,
            p90,
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
    let (low, high) = (moments.min, moments.max);
    let quantiles = match histogram.quantiles() {
        Some(quantiles) => quantiles,
        None => {
            // A percentile beyond the pilot's range: bin every path again
            // over the run's true extremes, which hold all of them.
            histogram = FineHistogram::new(low, high, bins);
            let mut redone = 0;
            while redone < paths {
                let end = (redone + backend.batch_paths(fixed)).min(paths);
                // Only the binning is wanted: the moments are known.
                backend.run_batch(
                    redone..end,
                    shift,
                    &mut histogram,
                    &mut Reduction::default(),
                )?;
                redone = end;
            }
            // Rounding can put the extremes themselves just outside.
            histogram.counts[0] += std::mem::take(&mut histogram.under);
            histogram.counts[bins - 1] += std::mem::take(&mut histogram.over);
            histogram
                .quantiles()
                .expect("every path lies within the run's extremes")
        }
    };
    let at = |percent: usize| quantiles[percent - 1];
    let percentiles = Percentiles {
        p5: at(5),
        p10: at(10),
        p25: at(25),
        p50: at(50),
        p75: at(75),
        p90: at(90),
        p95: at(95),
    };
    let npv = Summary {
        mean: moments.mean,
        std: moments.std(),
        min: low,
        max: high,
        percentiles,
    };
    let roi = weights
        .roi(1.0)
        .map(|per_unit| scale_summary(&npv, per_unit));
    // A run stopped early by its precision samples fewer paths.
    let sample = match sample {
        Some(sample) if sample.npvs.len() as u64 == paths.min(RANK_SAMPLE) => sample,
        _ => Sample::draw(model, sampler, weights, seed, paths.min(RANK_SAMPLE)),
    };
    let (sensitivity, payback) = sample.statistics(model, sampler, weights);
    let wall_seconds = started.elapsed().as_secs_f64();
    Ok(SimulationResult {
        npv_quantiles: quantiles,
        prob_loss: moments.losses as f64 / paths as f64,
        std_error: moments.std_error(),
        histogram: histogram.coarsen(low, high, settings.bins),
        npv,
        roi,
        sensitivity,
        payback,
        paths,
        seed,
        engine: backend.name().to_owned(),
        stop_reason,
        wall_seconds,
        samples_per_second: paths as f64 * drivers / wall_seconds.max(1e-9),
    })
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

/// The first paths of a run with each driver's quantity and the payback
/// month: what the rank correlations and the payback figures are read from.
struct Sample {
    npvs: Vec<f64>,
    /// Per driver, its quantity on each path.
    columns: Vec<Vec<f64>>,
    /// Never paying back is `u32::MAX`.
    paybacks: Vec<u32>,
}

impl Sample {
    fn draw(
        model: &ValueModel,
        sampler: &Sampler,
        weights: &NpvWeights,
        seed: u64,
        sample: u64,
    ) -> Sample {
        let curves = model.payback_curves();
        let drivers = model.drivers.len();
        let mut paybacks: Vec<u32> = Vec::with_capacity(sample as usize);
        let mut columns = vec![Vec::with_capacity(sample as usize); drivers];
        let mut npvs = Vec::with_capacity(sample as usize);
        let (mut quantities, mut scratch) = (vec![0.0; drivers], vec![0.0; drivers]);
        for path in 0..sample {
            sampler.draw(seed, path, &mut quantities, &mut scratch);
            npvs.push(weights.npv(&quantities));
            paybacks.push(curves.payback_month(&quantities).unwrap_or(u32::MAX));
            for (column, &quantity) in columns.iter_mut().zip(&quantities) {
                column.push(quantity);
            }
        }
        Sample {
            npvs,
            columns,
            paybacks,
        }
    }

    /// The moments of the first `paths` paths, as the pilot takes them.
    fn pilot(&self, paths: u64) -> Moments {
        let mut sums = Sums::new(0.0);
        for &npv in &self.npvs[..paths as usize] {
            sums.add(npv);
        }
        sums.moments(paths)
    }

    /// Tornado bars (closed form: NPV is linear in the quantities), and rank
    /// correlations and payback months over the sample.
    fn statistics(
        mut self,
        model: &ValueModel,
        sampler: &Sampler,
        weights: &NpvWeights,
    ) -> (Vec<Sensitivity>, PaybackSummary) {
        let sample = self.npvs.len() as u64;
        let means: Vec<f64> = model.drivers.iter().map(|d| d.quantity.mean()).collect();
        let at_means = weights.npv(&means);
        let npv_ranks = ranks(&self.npvs);
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
                    rank_correlation: pearson(&ranks(&self.columns[index]), &npv_ranks),
                }
            })
            .collect();
        bars.sort_by(|a, b| b.swing.total_cmp(&a.swing));
        let paybacks = &mut self.paybacks;
        paybacks.sort_unstable();
        let at = |p: f64| {
            let index =
                ((p * paybacks.len() as f64) as usize).min(paybacks.len().saturating_sub(1));
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
}

/// Ranks (ties share their mean rank), for Spearman's correlation.
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    // Ties are grouped below, so the order among them does not matter.
    order.sort_unstable_by(|&a, &b| values[a].total_cmp(&values[b]));
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
    use super::super::cpu::CpuBackend;
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
        let result = run(&model, &settings(400_000), Device::Cpu, |_| {
            Control::Continue
        })
        .unwrap();
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
    fn a_small_runs_sample_gives_the_pilot_its_draws_unchanged() {
        // The sample draws path by path, the pilot block by block: the
        // same paths, so the same extremes and mean.
        let model = normals();
        let (sampler, weights) = (Sampler::new(&model), model.npv_weights());
        let sample = Sample::draw(&model, &sampler, &weights, 42, 3_000);
        let from_sample = sample.pilot(3_000);
        let mut unbounded = FineHistogram::new(0.0, 1.0, 1);
        let drawn = npv_moments(&sampler, &weights, 42, 0..3_000, 0.0, &mut unbounded);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(1.0);
        assert!(
            close(from_sample.min, drawn.min),
            "{from_sample:?} vs {drawn:?}"
        );
        assert!(close(from_sample.max, drawn.max));
        assert!(close(from_sample.mean, drawn.mean));
        assert_eq!(from_sample.losses, drawn.losses);
        assert_eq!(from_sample.count, 3_000);
        // And the run reads its statistics from that same sample.
        let result = run(&model, &settings(3_000), Device::Cpu, |_| Control::Continue).unwrap();
        assert_eq!(result.payback.sampled_paths, 3_000);
        assert_eq!(result.histogram.counts.iter().sum::<u64>(), 3_000);
        assert!((result.npv.mean - drawn.mean).abs() < 1e-6 * drawn.mean.abs());
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
            .install(|| {
                run(&model, &settings(100_000), Device::Cpu, |_| {
                    Control::Continue
                })
            })
            .unwrap();
        let b = two
            .install(|| {
                run(&model, &settings(100_000), Device::Cpu, |_| {
                    Control::Continue
                })
            })
            .unwrap();
        assert_eq!(a.npv.percentiles, b.npv.percentiles);
        assert_eq!(a.histogram, b.histogram);
        // Bit for bit: moments merge in path order whatever the threads.
        assert_eq!(a.npv, b.npv);
        assert_eq!((a.prob_loss, a.std_error), (b.prob_loss, b.std_error));
        assert_eq!(a.sensitivity, b.sensitivity);
        let other_seed = run(
            &model,
            &RunSettings {
                seed: 7,
                ..settings(100_000)
            },
            Device::Cpu,
            |_| Control::Continue,
        )
        .unwrap();
        assert_ne!(other_seed.npv.min, a.npv.min);
    }

    #[test]
    fn npv_at_confidence_reads_the_quantiles() {
        let model = normals();
        let result = run(&model, &settings(200_000), Device::Cpu, |_| {
            Control::Continue
        })
        .unwrap();
        assert_eq!(result.npv_quantiles.len(), 99);
        assert!(result.npv_quantiles.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(result.npv_quantiles[49], result.npv.percentiles.p50);
        assert_eq!(result.npv_at_confidence(0.9), result.npv.percentiles.p10);
        assert_eq!(result.npv_at_confidence(0.5), result.npv.percentiles.p50);
        let between = result.npv_at_confidence(0.875);
        assert!(between > result.npv_quantiles[11] && between < result.npv_quantiles[12]);
    }

    #[test]
    fn chunking_changes_nothing_but_rounding() {
        let model = normals();
        let sampler = Sampler::new(&model);
        let weights = model.npv_weights();
        let whole_histogram = FineHistogram::new(-5_000.0, 20_000.0, FINE_BINS);
        let mut whole = whole_histogram.clone();
        let one = npv_moments(&sampler, &weights, 9, 0..50_000, 4_000.0, &mut whole);
        // Odd chunk sizes, not multiples of the block.
        let mut split = whole_histogram.clone();
        let mut merged = Moments::EMPTY;
        let mut start = 0;
        for size in [1, 255, 257, 4_095, 10_000, 35_392] {
            let part = npv_moments(
                &sampler,
                &weights,
                9,
                start..start + size,
                4_000.0,
                &mut split,
            );
            merged = merged.merge(part);
            start += size;
        }
        assert_eq!(start, 50_000);
        assert_eq!(whole, split);
        assert_eq!(
            (one.count, one.min, one.max, one.losses),
            (merged.count, merged.min, merged.max, merged.losses)
        );
        assert!((one.mean - merged.mean).abs() < 1e-9 * one.mean.abs());
        assert!((one.m2 - merged.m2).abs() < 1e-9 * one.m2);
    }

    #[test]
    fn one_walk_finds_every_percentile_a_walk_each_finds() {
        // The definition, one walk from the start per quantile.
        fn walk(histogram: &FineHistogram, p: f64) -> Option<f64> {
            let target = p * histogram.total() as f64;
            let mut cumulative = histogram.under as f64;
            if cumulative >= target && histogram.under > 0 {
                return None;
            }
            for (index, &count) in histogram.counts.iter().enumerate() {
                let next = cumulative + count as f64;
                if next >= target && count > 0 {
                    let within = ((target - cumulative) / count as f64).clamp(0.0, 1.0);
                    return Some(
                        histogram.low
                            + histogram.width * (index as f64 + within)
                                / histogram.counts.len() as f64,
                    );
                }
                cumulative = next;
            }
            None
        }
        let ps: Vec<f64> = (0..=100)
            .map(|percent| f64::from(percent) / 100.0)
            .collect();
        for (under, over, values) in [
            (0, 0, vec![5.0, 5.0, 5.0]),
            (3, 0, vec![1.0, 2.0, 50.0, 99.0]),
            (0, 7, vec![10.0, 10.5, 11.0, 80.0]),
            (2, 2, (0..1000).map(|v| f64::from(v) / 10.0).collect()),
        ] {
            let mut histogram = FineHistogram::new(0.0, 100.0, FINE_BINS);
            let scale = histogram.scale();
            values.iter().for_each(|&v| histogram.add(v, scale));
            histogram.under = under;
            histogram.over = over;
            let expected: Vec<Option<f64>> = ps.iter().map(|&p| walk(&histogram, p)).collect();
            assert_eq!(histogram.percentiles(&ps), expected);
        }
    }

    /// The whole result but its timings, as the API and the CLI print it.
    fn without_timings(result: &SimulationResult) -> String {
        let mut json = serde_json::to_value(result).unwrap();
        let object = json.as_object_mut().unwrap();
        object.remove("wall_seconds");
        object.remove("samples_per_second");
        serde_json::to_string(&json).unwrap()
    }

    #[test]
    fn a_seed_gives_the_same_bytes_whatever_the_threads_and_chunks() {
        // Before: the mean differed in its last bit between 1 and 2 threads
        // (batches, and so merge order, followed the thread count).
        let model = normals();
        let (sampler, weights) = (Sampler::new(&model), model.npv_weights());
        // Not a whole number of grains or batches, so partial ones count.
        let paths = 2_000_000 + 12_345;
        let mut precise = settings(paths);
        precise.stop_at_rel_se = Some(2e-4);
        let mut seen: Vec<(usize, u64, String, String)> = Vec::new();
        for threads in [1, 2, 7] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for grains in [1, 4] {
                let run_it = |settings: &RunSettings| {
                    pool.install(|| {
                        let mut backend =
                            CpuBackend::new(&sampler, &weights, 42).with_chunk_grains(grains);
                        run_on(
                            &model,
                            settings,
                            &sampler,
                            &weights,
                            &mut backend,
                            PILOT_PATHS,
                            |_| Control::Continue,
                        )
                        .unwrap()
                    })
                };
                let all = without_timings(&run_it(&settings(paths)));
                let stopped = without_timings(&run_it(&precise));
                seen.push((threads, grains, all, stopped));
            }
        }
        let (_, _, first_all, first_stopped) = &seen[0];
        for (threads, grains, all, stopped) in &seen {
            assert_eq!(
                all, first_all,
                "{threads} threads, chunks of {grains} grains"
            );
            assert_eq!(
                stopped, first_stopped,
                "stopped at a precision: {threads} threads, chunks of {grains} grains"
            );
        }
        assert!(first_stopped.contains("\"paths\":"));
    }

    #[test]
    fn percentiles_beyond_the_pilot_range_take_a_second_pass() {
        // A pilot of one path gives a range that almost nothing falls in.
        let model = normals();
        let (sampler, weights) = (Sampler::new(&model), model.npv_weights());
        let run_with_pilot = |pilot| {
            let mut backend = CpuBackend::new(&sampler, &weights, 42);
            run_on(
                &model,
                &settings(200_000),
                &sampler,
                &weights,
                &mut backend,
                pilot,
                |_| Control::Continue,
            )
            .unwrap()
        };
        let usual = run_with_pilot(PILOT_PATHS);
        let refined = run_with_pilot(1);
        // The pilot's mean is the shift of the sums: rounding differs.
        assert!((usual.npv.mean - refined.npv.mean).abs() < 1e-9 * usual.npv.mean.abs());
        let (a, b) = (&usual.npv.percentiles, &refined.npv.percentiles);
        let tolerance = 1e-3 * usual.npv.std;
        for (x, y) in [(a.p5, b.p5), (a.p50, b.p50), (a.p95, b.p95)] {
            assert!((x - y).abs() < tolerance, "{x} vs {y}");
        }
        assert_eq!(refined.histogram.counts.iter().sum::<u64>(), 200_000);
    }

    #[test]
    fn progress_is_reported_and_cancel_stops_the_run() {
        let model = normals();
        let mut reports = Vec::new();
        // A batch is 8 chunks per thread: on a machine of many threads one
        // batch held all 2,000,000 paths (seen on 16 cores), so the run
        // ended before it could be cancelled. Two threads, whatever the
        // machine.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let result = pool.install(|| {
            run(&model, &settings(2_000_000), Device::Cpu, |progress| {
                reports.push(progress.paths_done);
                if progress.paths_done >= 300_000 {
                    Control::Cancel
                } else {
                    Control::Continue
                }
            })
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
            Device::Cpu,
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
        let result = run(&model, &settings(1_000), Device::Cpu, |_| Control::Continue).unwrap();
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
            run(&model, &settings(0), Device::Cpu, |_| Control::Continue).unwrap_err(),
            RunError::Paths(0)
        );
        let no_bins = RunSettings {
            bins: 0,
            ..settings(10)
        };
        assert_eq!(
            run(&model, &no_bins, Device::Cpu, |_| Control::Continue).unwrap_err(),
            RunError::Bins(0)
        );
    }
}
