//! Monte Carlo engines and what they share with the CUDA kernel. So far: the
//! counter-based generator both engines draw from. (`gpu/` knows nothing of
//! actix or HTTP.)

pub mod philox;
pub mod sampling;
