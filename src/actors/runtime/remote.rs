//! The runtime's port to other nodes. The runtime decides nothing about
//! membership or links: a [`Remote`] (the cluster's router, attached with
//! [`System::attach_remote`](super::System::attach_remote)) says which node
//! owns a key and carries `(type id, bytes)` there; messages from other
//! nodes come in through [`Stage`](super::Stage), their answers go back
//! through a [`ReplyPort`]. A node without one serves every key itself.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::envelope::CorrelationId;
use super::error::AgentError;

/// A wait the link's reader makes before it reads more (a full mailbox).
pub type Hold = BoxFuture<'static, ()>;

/// Where a message for another node's instance goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub node: String,
    pub addr: SocketAddr,
}

/// A message for an instance another node owns, encoded.
pub struct Outbound<'a> {
    pub kind: &'static str,
    pub key: &'a str,
    pub correlation_id: Option<&'a CorrelationId>,
    /// Who the message acts for.
    pub actor: Option<&'a std::sync::Arc<str>>,
    /// The sender's span, while spans are exported.
    pub trace: Option<crate::TraceContext>,
    /// The kind's [`Agent::MESSAGE_ID`].
    pub type_id: u32,
    /// The kind's [`Agent::MESSAGE_VERSION`], at which `payload` is encoded.
    pub version: u16,
    /// `None` where the route's peer is known to speak only `version - 1`.
    pub payload: Option<Vec<u8>>,
    /// The message encoded at `version - 1`, for a peer that speaks only
    /// that: made when the route's peer is known to, or not known yet.
    pub previous: Option<Vec<u8>>,
}

/// A reply from another node and the message version it was asked at;
/// `None` when that node does not own the key.
pub type RemoteAnswer = Option<(u16, Vec<u8>)>;

/// The way to the other nodes of a cluster.
pub trait Remote: Send + Sync + 'static {
    /// The owner of `(kind, key)` when that is another node; `None` when
    /// this node owns it.
    fn route(&self, kind: &str, key: &str) -> Option<Route>;
    /// Whether this node is the whole view (every route is local).
    fn is_solo(&self) -> bool;
    /// The version of `type_id`'s messages the node `route` leads to
    /// speaks, once a link to it is up (`None` before, or when it does not
    /// host the kind).
    fn peer_version(&self, route: &Route, type_id: u32) -> Option<u16>;
    /// Sends without waiting for an answer.
    fn tell(&self, route: &Route, message: Outbound<'_>) -> Result<(), AgentError>;
    /// Sends and waits at most `timeout` for the encoded reply and the
    /// message version it was asked at (the reply's too); `Ok(None)` when
    /// the node answers that it does not own the key (route again).
    fn ask<'a>(
        &'a self,
        route: &'a Route,
        message: Outbound<'a>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<RemoteAnswer, AgentError>>;
    /// Shares an encoded domain event with every other node, best effort.
    fn share(&self, source: &str, correlation_id: Option<&str>, payload: Vec<u8>);
}

/// A message from another node, as its link read it.
#[derive(Debug)]
pub struct Inbound<'a> {
    pub type_id: u32,
    /// The version of the kind's messages it is encoded at.
    pub version: u16,
    pub key: &'a str,
    /// Unix milliseconds after which nobody waits for the answer.
    pub deadline_ms: Option<u64>,
    pub correlation_id: Option<&'a str>,
    /// Who the message acts for (none from a node at protocol 3).
    pub actor: Option<&'a str>,
    /// The sender's span ([`crate::TraceContext::encode`]'s text).
    pub trace_context: Option<&'a str>,
    pub payload: &'a [u8],
}

/// Why this node does not take or answer a message from another node.
#[derive(Debug)]
pub enum Refusal {
    /// This node does not own the key in its view (the sender routes again).
    NotOwner { owner: Option<String> },
    /// No message type of the kind has this id.
    UnknownType { type_id: u32 },
    /// This node's messages of the kind are at version `speaks`; it takes
    /// that and the one before, not `version`.
    UnknownVersion {
        type_id: u32,
        version: u16,
        speaks: u16,
    },
    /// The payload is not a message of the kind.
    Undecodable { reason: String },
    /// The reply could not be encoded.
    Unencodable { reason: String },
    /// The deadline passed on the way.
    DeadlineExpired,
    /// The agent's answer was an error.
    Agent(AgentError),
}

/// Where the answer to an ask from another node goes.
pub trait ReplyPort: Send {
    fn answer(self: Box<Self>, outcome: Result<Vec<u8>, Refusal>);
}

/// Answers `refusal` to the ask, if the message was one.
pub(crate) fn refuse(reply: Option<Box<dyn ReplyPort>>, refusal: Refusal) {
    if let Some(reply) = reply {
        reply.answer(Err(refusal));
    }
}

/// Payloads are MessagePack with field names: self-describing, so the
/// agents' tagged and flattened serde types round-trip.
pub fn encode_payload<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec_named(value).map_err(|error| error.to_string())
}

pub fn decode_payload<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    rmp_serde::from_slice(bytes).map_err(|error| error.to_string())
}

/// Time left before a wire deadline; `None` once it has passed.
pub(crate) fn time_left(deadline_ms: u64) -> Option<Duration> {
    deadline_ms
        .checked_sub(crate::state::unix_millis().max(0) as u64)
        .filter(|left| *left > 0)
        .map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(tag = "channel", rename_all = "snake_case")]
    enum Tagged {
        Webhook { url: String },
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Outer {
        #[serde(flatten)]
        inner: Inner,
        data: serde_json::Value,
        tagged: Tagged,
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Inner {
        id: String,
        amount: f64,
    }

    #[test]
    fn payloads_keep_tagged_flattened_and_json_values() {
        let value = Outer {
            inner: Inner {
                id: "m-1".into(),
                amount: 1.5,
            },
            data: serde_json::json!({"a": [1, "two", null], "b": {"c": true}}),
            tagged: Tagged::Webhook {
                url: "http://x".into(),
            },
        };
        let bytes = encode_payload(&value).unwrap();
        assert_eq!(decode_payload::<Outer>(&bytes).unwrap(), value);
        assert!(decode_payload::<Outer>(&[0xc1, 0x00]).is_err());
    }
}
