//! What travels with every message: ids, correlation, deadline and target.
//!
//! The header holds only plain data (no channels, no actix types), so the
//! cluster layer can encode it next to the payload and the target. Where the
//! reply goes rides beside it in [`Envelope`]: a channel on the node that
//! asked, or the link an ask from another node came on.

use std::fmt;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::agent::Agent;
use super::error::AgentError;
use super::remote::{Refusal, ReplyPort, encode_payload};

/// Names one agent instance: its kind and its key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AgentId {
    pub kind: &'static str,
    pub key: Arc<str>,
}

impl fmt::Display for AgentId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.kind, self.key)
    }
}

/// Unique per node: the node's sequence number of the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MessageId(pub u64);

/// The id that ties together everything done for one request, across actors
/// and (later) nodes. Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CorrelationId(Arc<str>);

/// Longest correlation id accepted from a client.
pub const MAX_CORRELATION_ID_LEN: usize = 128;
/// Longest actor a message from another node may name.
pub const MAX_ACTOR_LEN: usize = 300;

impl CorrelationId {
    /// A fresh random id (UUID v4).
    pub fn generate() -> CorrelationId {
        CorrelationId(uuid::Uuid::new_v4().to_string().into())
    }

    /// Accepts a client's id when it is 1..=128 visible ASCII characters.
    pub fn parse(text: &str) -> Option<CorrelationId> {
        let valid = !text.is_empty()
            && text.len() <= MAX_CORRELATION_ID_LEN
            && text.bytes().all(|byte| byte.is_ascii_graphic());
        valid.then(|| CorrelationId(text.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// Tracing and timing data of one message. Locally the mailbox a message
/// sits in is its target; the cluster's wire frame pairs this header with
/// the target's [`AgentId`].
#[derive(Clone, Debug)]
pub(crate) struct Header {
    pub(crate) message_id: MessageId,
    pub(crate) correlation_id: Option<CorrelationId>,
    /// Who the message acts for: an API key's id, a person's subject, a
    /// saga's starter (the audit log's "who").
    pub(crate) actor: Option<Arc<str>>,
    /// After this instant (TSC clock) nobody waits for the answer: the
    /// message is dropped unhandled and answered `Expired`.
    pub(crate) deadline: Option<quanta::Instant>,
    /// The sender's span, while spans are exported: the handler's span is
    /// its child.
    /// Boxed: the header stays small on the path where it is `None`.
    pub(crate) trace: Option<Box<super::trace::TraceContext>>,
}

/// Where the answer to an `ask` goes, when the sender waits for one.
pub(crate) enum ReplySender<A: Agent> {
    /// An ask made on this node. Errors travel boxed: the channel then
    /// carries a small value on the hot path, not the largest error's size.
    Local(oneshot::Sender<Result<A::Reply, Box<AgentError>>>),
    /// An ask from another node: the handler's thread encodes the answer
    /// straight onto the link it came on (no task per ask to carry it);
    /// `previous` when the ask came at the version before the kind's.
    Remote {
        port: Box<dyn ReplyPort>,
        previous: bool,
    },
}

impl<A: Agent> ReplySender<A> {
    /// Answers; an asker that timed out and went is no error.
    pub(crate) fn send(self, result: Result<A::Reply, AgentError>) {
        match self {
            ReplySender::Local(sender) => {
                let _ = sender.send(result.map_err(Box::new));
            }
            ReplySender::Remote { port, previous } => {
                let encoded = match &result {
                    Ok(value) if previous => A::encode_previous_reply(value),
                    Ok(value) => encode_payload(value),
                    Err(_) => Ok(Vec::new()),
                };
                port.answer(match (result, encoded) {
                    (Err(error), _) => Err(Refusal::Agent(error)),
                    (Ok(_), Ok(bytes)) => Ok(bytes),
                    (Ok(_), Err(reason)) => Err(Refusal::Unencodable { reason }),
                });
            }
        }
    }
}

/// A message on its way into an instance's mailbox.
pub(crate) struct Envelope<A: Agent> {
    pub header: Header,
    pub payload: A::Msg,
    pub reply: Option<ReplySender<A>>,
}

impl<A: Agent> actix::Message for Envelope<A> {
    type Result = ();
}

#[cfg(test)]
mod tests {
    use super::CorrelationId;

    #[test]
    fn correlation_ids_are_validated() {
        let cases = [
            ("abc-123", true),
            ("", false),
            ("has space", false),
            ("tab\t", false),
            ("é", false),
        ];
        for (text, valid) in cases {
            assert_eq!(CorrelationId::parse(text).is_some(), valid, "{text:?}");
        }
        assert!(CorrelationId::parse(&"x".repeat(128)).is_some());
        assert!(CorrelationId::parse(&"x".repeat(129)).is_none());
        assert_ne!(CorrelationId::generate(), CorrelationId::generate());
    }
}
