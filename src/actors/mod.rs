//! The agents: the runtime (crate `valueverse-runtime`, `runtime/`), and
//! the business agents built on it, one module each.

pub use valueverse_runtime::*;

pub mod amplifier;
pub mod architect;
pub mod committer;
pub mod executor;
pub(crate) mod listing;
pub use listing::Listed;
pub mod notifier;
pub mod saga;
pub mod simulation;
