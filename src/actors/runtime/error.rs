//! Errors of the messaging boundary: what a caller of `tell`/`ask` can get
//! back, and what a handler can raise.

use std::time::Duration;

use crate::state::StateError;

use super::envelope::AgentId;
use super::supervisor::InstanceStatus;

/// Why a `tell` or `ask` did not produce a reply, by concern: the message
/// was not delivered or answered in time ([`SendError`]), the handler did
/// not reply ([`HandlingError`]), an operator's action does not apply
/// ([`OperatorError`]), the owner's node could not be reached or failed
/// ([`RemoteError`]), or the store failed under the instance.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Send(#[from] SendError),
    #[error(transparent)]
    Handling(#[from] HandlingError),
    #[error(transparent)]
    Operator(#[from] OperatorError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The store failed under the instance (its message is included here,
    /// so it is not also a `source`: chains would print it twice).
    #[error("store error at {target}: {cause}")]
    Store {
        target: AgentId,
        cause: Box<StateError>,
    },
}

/// The message was not delivered, or not answered in time.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("mailbox of {target} is full (capacity {capacity})")]
    MailboxFull { target: AgentId, capacity: usize },
    #[error("no reply from {target} within {after:?}")]
    Timeout { target: AgentId, after: Duration },
    #[error("message to {target} expired in the mailbox before it was handled")]
    Expired { target: AgentId },
    #[error("{target} stopped before it replied")]
    Stopped { target: AgentId },
    #[error("no agent kind `{kind}` on this node")]
    UnknownKind { kind: String },
}

/// The handler did not reply: it refused, failed or panicked, or the
/// instance is stopped after repeated failures.
#[derive(Debug, thiserror::Error)]
pub enum HandlingError {
    #[error("{target} refused the message: {rejection}")]
    Rejected {
        target: AgentId,
        // Boxed, as is `Store`'s source: every ask's result is as large as
        // the largest error, and it is moved on the hot path.
        rejection: Box<Rejection>,
    },
    #[error("handler of {target} panicked: {message}")]
    Panicked { target: AgentId, message: String },
    #[error("handler of {target} failed: {message}")]
    Fatal { target: AgentId, message: String },
    #[error(
        "{target} has failed after repeated restarts and is stopped until an operator resets it (last failure: {last_failure})"
    )]
    Failed {
        target: AgentId,
        last_failure: Box<ExitStatus>,
    },
}

/// An operator's action that does not apply to the instance as it is.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("{target} is {status}, not failed: nothing to reset")]
    NotFailed {
        target: AgentId,
        status: InstanceStatus,
    },
    #[error("{target} is {status}, not active: only a running instance can be crashed")]
    NotActive {
        target: AgentId,
        status: InstanceStatus,
    },
    #[error("no instance {target} on this node")]
    UnknownInstance { target: AgentId },
}

/// The node that owns the instance could not be reached, or answered
/// with a failure of its own.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{target} lives on node {node}, which cannot be reached: {reason}")]
    Unreachable {
        target: AgentId,
        node: String,
        reason: String,
    },
    /// The link to the owner's node has a full outbox: try again shortly.
    #[error("the link to node {node}, which owns {target}, is full")]
    Backpressure { target: AgentId, node: String },
    /// The message could not be encoded for the node that owns `target`.
    #[error("a message to {target} could not be encoded: {reason}")]
    Unencodable { target: AgentId, reason: String },
    /// The owner's node answered with an error that has no local variant.
    #[error("{target} on node {node} failed: {message}")]
    Failed {
        target: AgentId,
        node: String,
        message: String,
    },
}

/// How an instance ended badly: the closed set of failures its supervisor
/// restarts from (and, past its budget, stops on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    /// The handler panicked.
    Panicked { message: String },
    /// The handler returned a fatal error: its state cannot be trusted.
    Fatal { message: String },
    /// The instance's state could not be loaded.
    LoadFailed { message: String },
    /// A change could not be saved.
    SaveFailed { message: String },
    /// An operator injected a fault.
    Injected { reason: String },
    /// Another node's instance failed; its own status arrives as text.
    Reported { message: String },
}

impl ExitStatus {
    /// Its name in the supervision tree's JSON (`last_failure.cause`).
    pub fn cause(&self) -> &'static str {
        match self {
            ExitStatus::Panicked { .. } => "panicked",
            ExitStatus::Fatal { .. } => "fatal",
            ExitStatus::LoadFailed { .. } => "load_failed",
            ExitStatus::SaveFailed { .. } => "save_failed",
            ExitStatus::Injected { .. } => "injected",
            ExitStatus::Reported { .. } => "reported",
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Panicked { message } => write!(formatter, "panic: {message}"),
            ExitStatus::Fatal { message } | ExitStatus::Reported { message } => {
                formatter.write_str(message)
            }
            ExitStatus::LoadFailed { message } => write!(formatter, "state load failed: {message}"),
            ExitStatus::SaveFailed { message } => write!(formatter, "state save failed: {message}"),
            ExitStatus::Injected { reason } => {
                write!(formatter, "fault injected by an operator: {reason}")
            }
        }
    }
}

/// A business refusal: the instance is fine, the request is not. It reaches
/// the caller as [`AgentError::Rejected`] and an HTTP 4xx naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub code: RejectionCode,
    pub message: String,
    pub field: Option<String>,
}

/// Why a request is refused: the closed set callers branch on (the API
/// maps each to its status, the saga runner reads a step's own earlier
/// attempt in `Conflict`). On the wire and in API bodies it is its
/// snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectionCode {
    /// What the request names does not exist.
    NotFound,
    /// The target's state refuses it: already made, voided, archived,
    /// recorded with other values.
    Conflict,
    /// A field of the request is invalid for the target.
    Invalid,
    /// The model version has no finished simulation to commit against.
    NoSimulation,
    /// The simulation does not support the target at the confidence.
    TargetNotSupported,
    /// The model's industry has no hypothesis catalogue.
    UnknownIndustry,
    /// No plan has registered a baseline for the model.
    NoBaseline,
    /// A delivery names a driver the plan does not track.
    UnknownDriver,
    /// The tenant's quota (named in the field) does not allow it.
    QuotaExceeded,
}

impl RejectionCode {
    const ALL: [RejectionCode; 9] = [
        RejectionCode::NotFound,
        RejectionCode::Conflict,
        RejectionCode::Invalid,
        RejectionCode::NoSimulation,
        RejectionCode::TargetNotSupported,
        RejectionCode::UnknownIndustry,
        RejectionCode::NoBaseline,
        RejectionCode::UnknownDriver,
        RejectionCode::QuotaExceeded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectionCode::NotFound => "not_found",
            RejectionCode::Conflict => "conflict",
            RejectionCode::Invalid => "invalid",
            RejectionCode::NoSimulation => "no_simulation",
            RejectionCode::TargetNotSupported => "target_not_supported",
            RejectionCode::UnknownIndustry => "unknown_industry",
            RejectionCode::NoBaseline => "no_baseline",
            RejectionCode::UnknownDriver => "unknown_driver",
            RejectionCode::QuotaExceeded => "quota_exceeded",
        }
    }

    /// The code a peer sent; one this release does not know (a later
    /// release's) reads as `Invalid`, its message kept.
    pub fn from_wire(code: &str) -> RejectionCode {
        Self::ALL
            .into_iter()
            .find(|known| known.as_str() == code)
            .unwrap_or(RejectionCode::Invalid)
    }
}

/// What a handler returns instead of a reply.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The request is refused; the instance and its state stay as they are.
    #[error(transparent)]
    Rejected(Rejection),
    /// The instance can no longer trust its state: it is stopped and restarted
    /// by its supervisor, state reloaded from the store.
    #[error("fatal: {0}")]
    Fatal(String),
}

impl HandlerError {
    pub fn rejected(
        code: RejectionCode,
        message: impl Into<String>,
        field: Option<&str>,
    ) -> HandlerError {
        HandlerError::Rejected(Rejection {
            code,
            message: message.into(),
            field: field.map(str::to_owned),
        })
    }

    pub fn fatal(message: impl Into<String>) -> HandlerError {
        HandlerError::Fatal(message.into())
    }
}

#[cfg(test)]
mod tests {
    use super::RejectionCode;

    #[test]
    fn every_rejection_code_reads_back_from_its_wire_name() {
        for code in RejectionCode::ALL {
            assert_eq!(RejectionCode::from_wire(code.as_str()), code);
        }
        let names: std::collections::HashSet<_> = RejectionCode::ALL
            .iter()
            .map(|code| code.as_str())
            .collect();
        assert_eq!(names.len(), RejectionCode::ALL.len(), "names are distinct");
        // A later release's code reads as a refusal of the request.
        assert_eq!(
            RejectionCode::from_wire("a_code_from_the_future"),
            RejectionCode::Invalid
        );
    }
}
