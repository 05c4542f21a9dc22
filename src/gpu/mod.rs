//! Monte Carlo engines and what they share with the CUDA kernel: the
//! counter-based generator, the inverse-transform sampler, and (so far) the
//! CPU engine. `gpu/` knows nothing of actix or HTTP.

pub mod cpu;
pub mod philox;
pub mod sampling;
