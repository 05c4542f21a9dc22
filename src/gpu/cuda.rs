//! The CUDA engine: the kernel in `kernels/montecarlo.cu`, compiled at run
//! time by NVRTC and loaded once per process, one path per GPU thread, the
//! moments and the fine histogram reduced on the device.
//!
//! cudarc loads libcuda and libnvrtc dynamically and panics on its first
//! call when they are missing, so both are probed before any call (never
//! relying on `catch_unwind`); without them the engine is simply absent.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};

use crate::model::NpvWeights;

use super::engine::{Backend, FINE_BINS, FineHistogram, Moments, Reduction, RunError};
use super::sampling::Sampler;

const KERNEL_SOURCE: &str = include_str!("kernels/montecarlo.cu");
const KERNEL_NAME: &str = "simulate_paths";
/// Threads per block; the kernel's shared arrays hold 256.
const THREADS: u32 = 256;
/// Resident blocks per streaming multiprocessor the grid aims at.
const BLOCKS_PER_SM: u32 = 8;
/// Paths per launch: a few tens of milliseconds on a large GPU, the grain
/// of progress and cancellation.
const BATCH_PATHS: u64 = 1 << 25;

/// A GPU, its context and the loaded kernel.
struct Gpu {
    context: Arc<CudaContext>,
    function: CudaFunction,
    blocks: u32,
    name: String,
}

/// Every GPU of the machine, opened once per process.
static GPUS: OnceLock<Result<Vec<Gpu>, String>> = OnceLock::new();

/// Whether libnvrtc can be loaded (all the kernel's compilation needs).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the shared library by its known names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The kernel compiled to PTX. Needs libnvrtc only, no GPU: a test checks
/// the source compiles wherever NVRTC is installed.
pub fn compile_kernel() -> Result<Ptx, String> {
    if !nvrtc_present() {
        return Err("libnvrtc was not found (install the CUDA runtime's NVRTC)".into());
    }
    compile_ptx_with_opts(
        KERNEL_SOURCE,
        CompileOptions {
            // No contracted multiply-adds: the draws must round as the CPU's.
            fmad: Some(false),
            name: Some("montecarlo.cu".into()),
            // 72 registers a thread: three blocks of 256 per multiprocessor
            // instead of two (the compiler's choice, 84), 4% more samples a
            // second on an H200, the same results (BENCHMARKS.md).
            maxrregcount: Some(72),
            ..Default::default()
        },
    )
    .map_err(|error| format!("the kernel did not compile: {error}"))
}

fn open_gpus() -> Result<Vec<Gpu>, String> {
    // SAFETY: only tries to open the shared library by its known names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA driver (libcuda) on this machine".into());
    }
    let count = CudaContext::device_count().map_err(|e| format!("CUDA driver: {e}"))?;
    if count < 1 {
        return Err("the CUDA driver reports no device".into());
    }
    let ptx = compile_kernel()?;
    (0..count as usize)
        .map(|ordinal| open_gpu(ordinal, ptx.clone()))
        .collect()
}

fn open_gpu(ordinal: usize, ptx: Ptx) -> Result<Gpu, String> {
    let context =
        CudaContext::new(ordinal).map_err(|e| format!("cannot open GPU {ordinal}: {e}"))?;
    let module = context
        .load_module(ptx)
        .map_err(|e| format!("cannot load the kernel on GPU {ordinal}: {e}"))?;
    let function = module
        .load_function(KERNEL_NAME)
        .map_err(|e| format!("cannot find the kernel: {e}"))?;
    let sms = context
        .attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )
        .map_err(|e| format!("cannot read the attributes of GPU {ordinal}: {e}"))?;
    let name = context.name().unwrap_or_else(|_| format!("GPU {ordinal}"));
    Ok(Gpu {
        context,
        function,
        blocks: (sms.max(1) as u32) * BLOCKS_PER_SM,
        name,
    })
}

fn gpu(ordinal: usize) -> Result<&'static Gpu, RunError> {
    let gpus = GPUS
        .get_or_init(open_gpus)
        .as_ref()
        .map_err(|reason| RunError::NoGpu(reason.clone()))?;
    gpus.get(ordinal).ok_or_else(|| {
        RunError::NoGpu(format!(
            "no GPU {ordinal} (this machine has {})",
            gpus.len()
        ))
    })
}

/// The names of the GPUs the engine can use, or why there is none (probed
/// once per process).
pub fn probe() -> Result<Vec<String>, String> {
    GPUS.get_or_init(open_gpus)
        .as_ref()
        .map(|gpus| gpus.iter().map(|gpu| gpu.name.clone()).collect())
        .map_err(Clone::clone)
}

fn failed(error: cudarc::driver::DriverError) -> RunError {
    RunError::Gpu(error.to_string())
}

/// One run's device buffers.
pub(crate) struct CudaBackend {
    gpu: &'static Gpu,
    stream: Arc<CudaStream>,
    seed: u64,
    drivers: i32,
    correlated: i32,
    base: f64,
    kinds: CudaSlice<i32>,
    params: CudaSlice<f64>,
    table_offsets: CudaSlice<i32>,
    tables: CudaSlice<f64>,
    cholesky: CudaSlice<f64>,
    weights: CudaSlice<f64>,
    histogram: CudaSlice<u64>,
    outside: CudaSlice<u64>,
    block_sum: CudaSlice<f64>,
    block_sum_sq: CudaSlice<f64>,
    block_min: CudaSlice<f64>,
    block_max: CudaSlice<f64>,
    block_losses: CudaSlice<u64>,
}

impl CudaBackend {
    pub fn new(
        sampler: &Sampler,
        weights: &NpvWeights,
        seed: u64,
        ordinal: usize,
    ) -> Result<CudaBackend, RunError> {
        let gpu = gpu(ordinal)?;
        let stream = gpu.context.new_stream().map_err(failed)?;
        let layout = sampler.device_layout();
        let blocks = gpu.blocks as usize;
        let upload_f64 = |values: &[f64]| stream.clone_htod(values).map_err(failed);
        Ok(CudaBackend {
            seed,
            drivers: layout.kinds.len() as i32,
            correlated: i32::from(layout.cholesky.is_some()),
            base: weights.base,
            kinds: stream.clone_htod(&layout.kinds).map_err(failed)?,
            params: upload_f64(&layout.params)?,
            table_offsets: stream.clone_htod(&layout.table_offsets).map_err(failed)?,
            tables: upload_f64(&layout.tables)?,
            cholesky: upload_f64(layout.cholesky.as_deref().unwrap_or(&[0.0]))?,
            weights: upload_f64(&weights.weights)?,
            histogram: stream.alloc_zeros(FINE_BINS).map_err(failed)?,
            outside: stream.alloc_zeros(2).map_err(failed)?,
            block_sum: stream.alloc_zeros(blocks).map_err(failed)?,
            block_sum_sq: stream.alloc_zeros(blocks).map_err(failed)?,
            block_min: stream.alloc_zeros(blocks).map_err(failed)?,
            block_max: stream.alloc_zeros(blocks).map_err(failed)?,
            block_losses: stream.alloc_zeros(blocks).map_err(failed)?,
            gpu,
            stream,
        })
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn batch_paths(&self, _fixed: bool) -> u64 {
        BATCH_PATHS
    }

    fn run_batch(
        &mut self,
        paths: Range<u64>,
        shift: f64,
        histogram: &mut FineHistogram,
        into: &mut Reduction,
    ) -> Result<(), RunError> {
        let stream = &self.stream;
        stream.memset_zeros(&mut self.histogram).map_err(failed)?;
        stream.memset_zeros(&mut self.outside).map_err(failed)?;
        let (seed_lo, seed_hi) = (self.seed as u32, (self.seed >> 32) as u32);
        let (first, count) = (paths.start, paths.end - paths.start);
        let (low, scale) = (histogram.low, histogram.scale());
        let bins = histogram.counts.len() as i32;
        let config = LaunchConfig {
            grid_dim: (self.gpu.blocks, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(&self.gpu.function);
        launch
            .arg(&seed_lo)
            .arg(&seed_hi)
            .arg(&first)
            .arg(&count)
            .arg(&self.drivers)
            .arg(&self.kinds)
            .arg(&self.params)
            .arg(&self.table_offsets)
            .arg(&self.tables)
            .arg(&self.cholesky)
            .arg(&self.correlated)
            .arg(&self.weights)
            .arg(&self.base)
            .arg(&shift)
            .arg(&low)
            .arg(&scale)
            .arg(&bins)
            .arg(&mut self.histogram)
            .arg(&mut self.outside)
            .arg(&mut self.block_sum)
            .arg(&mut self.block_sum_sq)
            .arg(&mut self.block_min)
            .arg(&mut self.block_max)
            .arg(&mut self.block_losses);
        // SAFETY: the arguments match the kernel's signature in type and
        // order, and every buffer is as long as the kernel indexes it
        // (FINE_BINS >= bins bins, 2 outside counters, one partial per block).
        unsafe { launch.launch(config) }.map_err(failed)?;
        let counts = stream.clone_dtoh(&self.histogram).map_err(failed)?;
        let outside = stream.clone_dtoh(&self.outside).map_err(failed)?;
        let sums = stream.clone_dtoh(&self.block_sum).map_err(failed)?;
        let sums_sq = stream.clone_dtoh(&self.block_sum_sq).map_err(failed)?;
        let mins = stream.clone_dtoh(&self.block_min).map_err(failed)?;
        let maxs = stream.clone_dtoh(&self.block_max).map_err(failed)?;
        let losses = stream.clone_dtoh(&self.block_losses).map_err(failed)?;
        stream.synchronize().map_err(failed)?;
        histogram
            .counts
            .iter_mut()
            .zip(&counts)
            .for_each(|(total, count)| *total += count);
        histogram.under += outside[0];
        histogram.over += outside[1];
        // One grain per batch: the batches are fixed in size, so the tree
        // is too (the device's block sums are summed in block order).
        into.push(Moments {
            min: mins.iter().copied().fold(f64::INFINITY, f64::min),
            max: maxs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            losses: losses.iter().sum(),
            ..Moments::from_shifted_sums(count, shift, sums.iter().sum(), sums_sq.iter().sum())
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::engine::{Control, Device, RunSettings, run};
    use super::*;
    use crate::model::ValueModel;

    #[test]
    fn needs_nvrtc_the_kernel_compiles() {
        if !nvrtc_present() {
            eprintln!(
                "SKIPPED needs_nvrtc_the_kernel_compiles: libnvrtc not found \
                 (`.ci/run` installs it and puts it on LD_LIBRARY_PATH)"
            );
            return;
        }
        let ptx = compile_kernel().unwrap();
        assert!(ptx.to_src().contains(".entry simulate_paths"));
    }

    fn model(correlations: serde_json::Value) -> ValueModel {
        ValueModel::from_json(
            serde_json::json!({
                "name": "m", "customer": "c", "industry": "saas", "currency": "USD",
                "horizon_months": 36, "discount_rate": 0.1,
                "costs": { "one_off": 100000, "monthly": 2000 },
                "drivers": [
                    { "name": "a", "category": "revenue", "unit_value": 2.0, "ramp_months": 6,
                      "quantity": { "dist": "normal", "mean": 3000.0, "sd": 900.0 } },
                    { "name": "b", "category": "cost", "unit_value": 0.5,
                      "quantity": { "dist": "lognormal", "mean": 4000.0, "sd": 2000.0 } },
                    { "name": "c", "category": "cost", "unit_value": 3.0, "ramp_months": 3,
                      "quantity": { "dist": "pert", "min": 100.0, "mode": 300.0, "max": 900.0 } },
                    { "name": "d", "category": "risk", "unit_value": 1.0,
                      "quantity": { "dist": "bernoulli", "p": 0.2, "impact": 50000.0 } },
                    { "name": "e", "category": "productivity", "unit_value": 1.0,
                      "quantity": { "dist": "triangular", "min": 0.0, "mode": 500.0, "max": 2000.0 } }
                ],
                "correlations": correlations
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    fn settings(paths: u64, seed: u64) -> RunSettings {
        RunSettings {
            paths,
            seed,
            bins: 50,
            stop_at_rel_se: None,
        }
    }

    #[test]
    fn needs_gpu_cpu_and_gpu_agree_to_rounding() {
        if let Err(reason) = probe() {
            eprintln!("SKIPPED needs_gpu_cpu_and_gpu_agree_to_rounding: {reason}");
            return;
        }
        let settings = settings(3_000_000, 11);
        // The same Philox draws and the same reduction order. Without
        // correlations only the last ulp of log, exp or erfc can differ
        // (seen on an H200: at most 3.7e-16 of the value); with them the
        // Cholesky mix rounds differently in the CPU's vector code and the
        // GPU's, so one path's NPV can move in its twelfth digit (seen:
        // 5.7e-12 on the minimum, 6.7e-13 on the mean).
        for (correlations, bound) in [
            (serde_json::json!([]), 1e-14),
            (
                serde_json::json!([{ "a": "a", "b": "b", "rho": 0.5 }, { "a": "c", "b": "e", "rho": -0.3 }]),
                1e-10,
            ),
        ] {
            let model = model(correlations);
            let cpu = run(&model, &settings, Device::Cpu, |_| Control::Continue).unwrap();
            let gpu = run(&model, &settings, Device::Gpu, |_| Control::Continue).unwrap();
            assert_eq!((cpu.engine.as_str(), gpu.engine.as_str()), ("cpu", "cuda"));
            let scale = cpu.npv.std.max(1.0);
            let close = |a: f64, b: f64| {
                let relative = (a - b).abs() / a.abs().max(scale);
                eprintln!("cpu {a} gpu {b} relative difference {relative:e}");
                relative <= bound
            };
            assert!(
                close(cpu.npv.mean, gpu.npv.mean),
                "{} vs {}",
                cpu.npv.mean,
                gpu.npv.mean
            );
            assert!(close(cpu.npv.std, gpu.npv.std));
            assert!(close(cpu.npv.min, gpu.npv.min) && close(cpu.npv.max, gpu.npv.max));
            // An NPV on a bin edge may land one bin over after a last-ulp
            // difference in log, exp or erfc.
            let (p, q) = (&cpu.npv.percentiles, &gpu.npv.percentiles);
            let bin = (cpu.npv.max - cpu.npv.min) / 1000.0;
            for (x, y) in [(p.p5, q.p5), (p.p50, q.p50), (p.p95, q.p95)] {
                assert!((x - y).abs() <= bin, "{x} vs {y}");
            }
            assert!((cpu.prob_loss - gpu.prob_loss).abs() <= 1e-6);
        }
    }

    #[test]
    fn needs_gpu_a_gpu_run_can_be_cancelled() {
        if let Err(reason) = probe() {
            eprintln!("SKIPPED needs_gpu_a_gpu_run_can_be_cancelled: {reason}");
            return;
        }
        let settings = settings(1_000_000_000, 1);
        let mut batches = 0;
        let result = run(
            &model(serde_json::json!([])),
            &settings,
            Device::Gpu,
            |_| {
                batches += 1;
                if batches == 2 {
                    Control::Cancel
                } else {
                    Control::Continue
                }
            },
        );
        assert!(
            matches!(result, Err(RunError::Cancelled { paths_done }) if paths_done < 1_000_000_000)
        );
    }

    #[test]
    fn without_a_gpu_device_gpu_is_refused_and_auto_runs_on_the_cpu() {
        if probe().is_ok() {
            eprintln!("SKIPPED without_a_gpu_...: this machine has a GPU");
            return;
        }
        let settings = settings(1_000, 1);
        let model = model(serde_json::json!([]));
        let refused = run(&model, &settings, Device::Gpu, |_| Control::Continue).unwrap_err();
        assert!(matches!(refused, RunError::NoGpu(_)), "{refused:?}");
        let auto = run(&model, &settings, Device::Auto, |_| Control::Continue).unwrap();
        assert_eq!(auto.engine, "cpu");
    }
}
