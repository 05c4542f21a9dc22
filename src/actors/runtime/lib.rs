//! The agent runtime: virtual, supervised agent instances behind
//! location-transparent references.
//!
//! ```text
//! System (one per node)
//! ├── supervisor "architect"     RestartStrategy, registry of instances
//! │   ├── host architect/m-1     actix actor, bounded mailbox, state from the store
//! │   └── host architect/m-2
//! └── supervisor "simulation"
//!     └── host simulation/job-7
//! ```
//!
//! A caller holds an [`AgentRef`] named by `(kind, key)`. The first message
//! activates the instance (state loaded from the store); it is passivated
//! after an idle time and activated again by the next message. A panic or a
//! fatal error in a handler answers the caller with an error and restarts the
//! instance in place after a backoff; too many restarts within a window
//! escalate and the instance answers errors until an operator resets it.

// The business agents (`crate::actors::<agent>` in the root package) build
// on this crate; it knows nothing of them, of the cluster or of HTTP.

mod agent;
mod agent_ref;
mod envelope;
mod error;
mod events;
mod host;
pub mod metrics;
mod registry;
mod remote;
pub mod state;
mod supervisor;
mod system;
mod tenant;
mod trace;

pub use agent::{Agent, AgentMessage, Handling};
/// What [`table_persistence!`]'s expansion calls, in the agents' crates.
#[doc(hidden)]
pub mod __agent {
    pub use super::agent::{load_json_record, nothing_to_save, save_json_record};
    pub use futures_util::future::BoxFuture;
}
pub use agent_ref::AgentRef;
pub use envelope::{AgentId, CorrelationId, MAX_ACTOR_LEN, MAX_CORRELATION_ID_LEN, MessageId};
pub use error::{
    AgentError, ExitStatus, HandlerError, HandlingError, OperatorError, Rejection, RejectionCode,
    RemoteError, SendError,
};
pub use events::{DomainEvent, EVENT_TYPES, WantedTypes, is_notified};
pub use metrics::Metrics;
pub use registry::Stage;
pub use remote::{
    Hold, Inbound, Outbound, Refusal, Remote, RemoteAnswer, ReplyPort, Route, decode_payload,
    encode_payload,
};
pub use state::{
    AUDIT_EVENT, AuditEntry, Column, MemoryState, OutboxEvent, Place, StateError, StateStore,
    StateWrite, VersionedState, encode_state, unix_millis,
};
pub use supervisor::{
    FailureRecord, InstanceSnapshot, InstanceStatus, LifecycleChange, RestartStrategy,
    SupervisionEvent, SupervisionTree, SupervisorSnapshot,
};
pub use system::{InstanceQuota, RuntimeConfig, System, WeakSystem};
pub use tenant::{DEFAULT_TENANT, InvalidTenant, MAX_TENANT_LEN, Tenant, join_key, split_key};
pub use trace::{TraceContext, enable_propagation, propagating};

#[cfg(test)]
mod tests;
