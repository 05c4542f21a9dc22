//! The CPU engine: rayon over chunks of paths, each chunk in blocks whose
//! inner loops the compiler vectorizes (with AVX2 and FMA where the CPU has
//! them, chosen at run time: the build stays portable).

use std::ops::Range;
use std::sync::Mutex;

use rayon::prelude::*;

use crate::model::NpvWeights;

use super::engine::{
    Backend, FineHistogram, GRAIN_PATHS, Moments, Reduction, RunError, npv_moments,
};
use super::sampling::Sampler;

/// Paths per batch of a run stopped at a precision: the same on every
/// machine, so it stops at the same path whatever its thread count.
const FIXED_BATCH_PATHS: u64 = 16 * GRAIN_PATHS;
/// Chunks per thread in a batch of any other run: enough to balance the
/// threads (its batches only pace progress and cancellation).
const CHUNKS_PER_THREAD: u64 = 8;

pub(crate) struct CpuBackend<'a> {
    sampler: &'a Sampler,
    weights: &'a NpvWeights,
    seed: u64,
    /// Paths per unit of parallel work: a whole number of grains that
    /// divides a batch.
    chunk_paths: u64,
    per_thread: Vec<Mutex<FineHistogram>>,
}

impl<'a> CpuBackend<'a> {
    pub fn new(sampler: &'a Sampler, weights: &'a NpvWeights, seed: u64) -> CpuBackend<'a> {
        CpuBackend {
            sampler,
            weights,
            seed,
            chunk_paths: GRAIN_PATHS,
            per_thread: Vec::new(),
        }
    }

    /// Another size of parallel work (a test shows it changes nothing).
    #[cfg(test)]
    pub fn with_chunk_grains(mut self, grains: u64) -> CpuBackend<'a> {
        assert!(grains >= 1 && FIXED_BATCH_PATHS.is_multiple_of(grains * GRAIN_PATHS));
        self.chunk_paths = grains * GRAIN_PATHS;
        self
    }

    /// The moments of each grain of `paths`, in order.
    fn grains(&self, paths: Range<u64>, shift: f64, histogram: &mut FineHistogram) -> Vec<Moments> {
        (paths.start..paths.end)
            .step_by(GRAIN_PATHS as usize)
            .map(|from| self.chunk(from..(from + GRAIN_PATHS).min(paths.end), shift, histogram))
            .collect()
    }

    fn chunk(&self, paths: Range<u64>, shift: f64, histogram: &mut FineHistogram) -> Moments {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { chunk_avx512(self, paths, shift, histogram) };
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { chunk_avx2(self, paths, shift, histogram) };
        }
        npv_moments(
            self.sampler,
            self.weights,
            self.seed,
            paths,
            shift,
            histogram,
        )
    }
}

/// `npv_moments` compiled again with more of the CPU's features. Rust
/// never contracts `a * b + c` into an FMA on its own, so every variant
/// computes the numbers of the plain build.
macro_rules! chunk_variant {
    ($name:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        fn $name(
            backend: &CpuBackend<'_>,
            paths: Range<u64>,
            shift: f64,
            histogram: &mut FineHistogram,
        ) -> Moments {
            npv_moments(
                backend.sampler,
                backend.weights,
                backend.seed,
                paths,
                shift,
                histogram,
            )
        }
    };
}

chunk_variant!(chunk_avx2, "avx2,fma");
chunk_variant!(chunk_avx512, "avx512f,avx512dq,avx512vl,avx2,fma");

impl Backend for CpuBackend<'_> {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn batch_paths(&self, fixed: bool) -> u64 {
        if fixed {
            FIXED_BATCH_PATHS
        } else {
            let threads = rayon::current_num_threads().max(1) as u64;
            (CHUNKS_PER_THREAD * threads * self.chunk_paths).max(FIXED_BATCH_PATHS)
        }
    }

    fn run_batch(
        &mut self,
        paths: Range<u64>,
        shift: f64,
        histogram: &mut FineHistogram,
        into: &mut Reduction,
    ) -> Result<(), RunError> {
        if paths.end - paths.start <= self.chunk_paths {
            // One chunk (a small run): on this thread, straight into the
            // run's histogram, without the pool or per-thread histograms.
            for grain in self.grains(paths, shift, histogram) {
                into.push(grain);
            }
            return Ok(());
        }
        let chunk = self.chunk_paths;
        let chunks: Vec<Range<u64>> = (paths.start..paths.end)
            .step_by(chunk as usize)
            .map(|from| from..(from + chunk).min(paths.end))
            .collect();
        // One fine histogram per thread, kept across batches: the chunks
        // stay small for balance without each costing a histogram.
        let threads = rayon::current_num_threads().max(1);
        let fits = |own: &Mutex<FineHistogram>| {
            let own = own.lock().expect("histogram lock");
            own.low == histogram.low
                && own.width == histogram.width
                && own.counts.len() == histogram.counts.len()
        };
        if self.per_thread.len() != threads || !self.per_thread.iter().all(fits) {
            self.per_thread = (0..threads)
                .map(|_| Mutex::new(histogram.empty_like()))
                .collect();
        }
        let this = &*self;
        // Moments are kept per grain and merged in the fixed tree of
        // `Reduction`, so the result depends on neither the thread count
        // nor the chunk size, not even in its last bit (the histograms are
        // counts: their sum has no order).
        let partials: Vec<Vec<Moments>> = chunks
            .into_par_iter()
            .map(|range| {
                let slot = rayon::current_thread_index().unwrap_or(0) % threads;
                let mut own = this.per_thread[slot].lock().expect("histogram lock");
                this.grains(range, shift, &mut own)
            })
            .collect();
        for own in &self.per_thread {
            let mut own = own.lock().expect("histogram lock");
            histogram.merge(&own);
            own.clear();
        }
        for grain in partials.into_iter().flatten() {
            into.push(grain);
        }
        Ok(())
    }
}
