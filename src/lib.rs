//! ValueVerse: business agents as supervised, location-transparent actors.
//!
//! A node runs a [`System`] of agent kinds; callers reach an instance through
//! an [`AgentRef`] named by `(kind, key)`. State lives in a [`Store`]
//! (SQLite embedded, PostgreSQL shared). The [`http`] module serves the API.

pub mod actors;
pub mod auth;
pub use valueverse_cluster as cluster;
pub mod config;
pub mod dashboard;
pub use valueverse_gpu as gpu;
pub mod http;
pub use valueverse_gpu::model;
pub use valueverse_runtime::metrics;
mod node;
pub mod notifier;
pub mod saga;
pub mod simulation;
pub use valueverse_store as store;

pub use actors::{
    Agent, AgentError, AgentMessage, AgentRef, CorrelationId, HandlerError, Handling, Rejection,
    RestartStrategy, RuntimeConfig, System,
};
pub use config::Config;
pub use node::{Node, NodeError};
pub use store::{Store, StoreError};
pub use valueverse_runtime::Metrics;
