//! ValueVerse: business agents as supervised, location-transparent actors.
//!
//! A node runs a [`System`] of agent kinds; callers reach an instance through
//! an [`AgentRef`] named by `(kind, key)`. State lives in a [`Store`]
//! (SQLite embedded, PostgreSQL shared). The [`http`] module serves the API.
//! This package is the binary's library: configuration and wiring; the
//! crates it re-exports hold the rest.

/// The runtime (`valueverse-runtime`) and the business agents on it
/// (`valueverse-agents`), under one name.
pub mod actors {
    pub use valueverse_agents::{
        Listed, amplifier, architect, committer, executor, import, notifier, saga, simulation,
        statements,
    };
    pub use valueverse_runtime::*;
}
pub use valueverse_agents::{auth, notifications, sagas, simulations};
pub use valueverse_cluster as cluster;
pub mod config;
pub use valueverse_gpu as gpu;
pub use valueverse_gpu::model;
pub use valueverse_http as http;
pub use valueverse_http::dashboard;
pub use valueverse_runtime::metrics;
mod node;
pub use valueverse_store as store;

pub use actors::{
    Agent, AgentError, AgentMessage, AgentRef, CorrelationId, HandlerError, Handling, Rejection,
    RestartStrategy, RuntimeConfig, System,
};
pub use config::Config;
pub use node::{Node, NodeError};
pub use store::{Store, StoreError};
pub use valueverse_runtime::Metrics;
