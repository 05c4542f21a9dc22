//! The value model ([`model`]: drivers, costs, validation, analytics) and
//! the Monte Carlo engines that run it, with what they share with the CUDA
//! kernel: the counter-based generator, the inverse-transform sampler, the
//! run loop and its result ([`engine`]), the CPU engine and the CUDA engine.
//!
//! Architecture invariant: this crate knows nothing of actix, sqlx, utoipa
//! or HTTP; its types are domain types, and the HTTP layer converts them to
//! its own at its edge.

pub mod cpu;
pub mod cuda;
pub mod engine;
pub mod model;
pub mod philox;
pub mod sampling;

pub use engine::{
    Control, Device, Progress, RunError, RunSettings, SimulationResult, StopReason, run,
};
