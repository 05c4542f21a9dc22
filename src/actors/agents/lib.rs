//! The business agents on the runtime (crate `valueverse-runtime`), one
//! module each, and the services beside them: the saga definitions, state
//! machine and runner (`sagas`), the simulation service (`simulations`),
//! the notifier's dispatch and delivery (`notifications`), API keys
//! (`auth`). Domain rules live here once: the API and the saga runner call
//! the same functions.

pub mod amplifier;
pub mod architect;
pub mod auth;
pub mod committer;
pub mod config;
pub mod executor;
pub mod hypotheses;
pub mod import;
mod listing;
pub use listing::{Listed, Records};
pub mod notifications;
pub mod notifier;
pub mod quotas;
pub mod saga;
pub mod sagas;
pub mod simulation;
pub mod simulations;
pub mod statements;
pub mod value;
