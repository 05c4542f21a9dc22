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

mod agent;
mod agent_ref;
pub mod amplifier;
pub mod architect;
pub mod committer;
mod envelope;
mod error;
mod events;
pub mod executor;
mod host;
pub mod notifier;
mod registry;
mod remote;
pub mod saga;
pub mod simulation;
mod supervisor;
mod system;

pub use agent::{Agent, AgentMessage, Handling};
pub use agent_ref::AgentRef;
pub use envelope::{AgentId, CorrelationId, MAX_CORRELATION_ID_LEN, MessageId};
pub use error::{AgentError, HandlerError, Rejection};
pub use events::{DomainEvent, EVENT_TYPES};
pub use registry::Stage;
pub use remote::{Hold, Inbound, Outbound, Refusal, Remote, ReplyPort, Route, type_id};
pub use supervisor::{
    FailureRecord, InstanceSnapshot, InstanceStatus, LifecycleChange, RestartStrategy,
    SupervisionEvent, SupervisionTree, SupervisorSnapshot,
};
pub use system::{RuntimeConfig, System, WeakSystem};
