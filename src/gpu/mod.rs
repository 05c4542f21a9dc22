//! Monte Carlo engines and what they share with the CUDA kernel: the
//! counter-based generator, the inverse-transform sampler, the run loop and
//! its result ([`engine`]), the CPU engine and the CUDA engine. `gpu/` knows
//! nothing of actix or HTTP.

pub mod cpu;
pub mod cuda;
pub mod engine;
pub mod philox;
pub mod sampling;

pub use engine::{
    Control, Device, Progress, RunError, RunSettings, SimulationResult, StopReason, run,
};
