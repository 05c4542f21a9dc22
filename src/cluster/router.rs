//! Routing: this node's view of the members that may own instances, and
//! the remote half of every `AgentRef`. `AgentRef::tell`/`ask` ask the
//! router first; when the owner of `(kind, key)` is another node, the
//! message is encoded and sent over the transport, and the far node's
//! inbound handler delivers it into the instance's mailbox there and sends
//! the reply back. With one member in the view (a single node, or a node
//! before it hears of others) every route is local at the cost of one
//! atomic load.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use futures_util::future::BoxFuture;

use valueverse_runtime::{
    AgentError, AgentId, CorrelationId, Inbound, Outbound, Refusal, Remote, ReplyPort, Route,
    Stage, WeakSystem,
};
use valueverse_runtime::{HandlingError, RemoteError, SendError};

use super::codec::{self, Envelope, Frame, RemoteFailure, Reply, Target};
use super::placement::{Candidate, owner};
use super::transport::{self, Hold, Link, LinkError, Receiver, Transport};

/// Target kind of a shared event (no agent has this name: it starts with _).
pub(crate) const EVENTS_KIND: &str = "_events";
const EVENTS_TYPE: u32 = 0x6576_7473;

/// The kind whose placement prefers members with a GPU.
const GPU_KIND: &str = "simulation";

/// A member placement may choose, and where its transport listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub candidate: Candidate,
    pub transport_addr: SocketAddr,
}

/// The members placement chooses among, and their candidates apart (the
/// hashing reads them on every message: no copy per route).
#[derive(Default)]
struct View {
    placed: Arc<Vec<Placed>>,
    candidates: Vec<Candidate>,
}

/// This node's routing state.
pub struct Router {
    me: String,
    view: RwLock<Arc<View>>,
    /// The view is this node alone: every route is local.
    solo: AtomicBool,
    transport: OnceLock<(Transport, tokio::runtime::Handle)>,
    /// Counts changes of the view, for those who act on one (the
    /// runtime's: its agents watch placement through it).
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Router {
    /// A router whose view is `me` alone until [`Router::set_view`]; it
    /// counts each change of its view on `changes`.
    pub fn new(me: &str, changes: Arc<tokio::sync::watch::Sender<u64>>) -> Router {
        Router {
            me: me.to_owned(),
            view: RwLock::new(Arc::new(View::default())),
            solo: AtomicBool::new(true),
            transport: OnceLock::new(),
            changes,
        }
    }

    pub fn node(&self) -> &str {
        &self.me
    }

    /// Remote messages go out through `transport`; dials happen on `runtime`.
    pub fn attach(&self, transport: Transport, runtime: tokio::runtime::Handle) {
        let _ = self.transport.set((transport, runtime));
    }

    pub fn transport(&self) -> Option<&Transport> {
        self.transport.get().map(|(transport, _)| transport)
    }

    /// Replaces the view; answers whether it changed. A view without this
    /// node routes everything elsewhere (a node whose lease lapsed serves
    /// nothing); an empty view routes everything here.
    pub fn set_view(&self, mut members: Vec<Placed>) -> bool {
        members.sort_by(|a, b| a.candidate.node.cmp(&b.candidate.node));
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        if *view.placed == members {
            return false;
        }
        let solo =
            members.is_empty() || (members.len() == 1 && members[0].candidate.node == self.me);
        // A member that joins (or comes back) is dialed at once, whatever
        // failed while it was away.
        if let Some((transport, _)) = self.transport.get() {
            for member in &members {
                if !view.placed.contains(member) {
                    transport.forget_failures(member.transport_addr);
                }
            }
        }
        *view = Arc::new(View {
            candidates: members.iter().map(|p| p.candidate.clone()).collect(),
            placed: Arc::new(members),
        });
        self.solo.store(solo, Ordering::Release);
        drop(view);
        self.changes.send_modify(|count| *count += 1);
        true
    }

    /// Wakes at every change of the view.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether this node is the whole view.
    pub fn is_solo(&self) -> bool {
        self.solo.load(Ordering::Acquire)
    }

    /// Whether `(kind, key)` is owned here in the current view.
    pub fn is_local(&self, kind: &str, key: &str) -> bool {
        self.route(kind, key).is_none()
    }

    /// The members placement chooses among now.
    pub fn view(&self) -> Arc<Vec<Placed>> {
        Arc::clone(&self.view.read().unwrap_or_else(|p| p.into_inner()).placed)
    }

    /// The node that owns `(kind, key)` in this view (this node when the
    /// view is empty or no member hosts the kind).
    pub fn owner_of(&self, kind: &str, key: &str) -> String {
        self.route(kind, key)
            .map(|route| route.node)
            .unwrap_or_else(|| self.me.clone())
    }

    /// `None` when `(kind, key)` is owned here.
    pub fn route(&self, kind: &str, key: &str) -> Option<Route> {
        if self.solo.load(Ordering::Acquire) {
            return None;
        }
        let view = Arc::clone(&self.view.read().unwrap_or_else(|p| p.into_inner()));
        let chosen = owner(kind, key, &view.candidates, kind == GPU_KIND)?;
        if chosen.node == self.me {
            return None;
        }
        // Candidates and placed members are in the same order.
        let index = view
            .candidates
            .iter()
            .position(|candidate| std::ptr::eq(candidate, chosen))?;
        let placed = &view.placed[index];
        Some(Route {
            node: placed.candidate.node.clone(),
            addr: placed.transport_addr,
        })
    }

    /// Sends an encoded event to every other member, best effort: a member
    /// without an open link gets it once the link is up, one that is gone
    /// never.
    fn forward_event(&self, source: &str, correlation_id: Option<&str>, payload: Vec<u8>) {
        if self.solo.load(Ordering::Acquire) {
            return;
        }
        let Some((transport, runtime)) = self.transport.get() else {
            return;
        };
        let envelope = codec::Envelope {
            message_id: transport.next_id(),
            ask_id: None,
            correlation_id: correlation_id.map(Cow::Borrowed),
            actor: None,
            trace_context: None,
            deadline_ms: None,
            target: Target {
                kind: Cow::Borrowed(EVENTS_KIND),
                key: Cow::Borrowed(source),
            },
            type_id: EVENTS_TYPE,
            type_version: 1,
            payload: Cow::Owned(payload),
        };
        for member in self.view().iter().filter(|p| p.candidate.node != self.me) {
            let frame = Frame::Message(envelope.clone().into_owned());
            match transport.open_link(member.transport_addr) {
                // A full outbox drops the event: streams are best effort.
                Some(link) => drop(link.try_send(frame)),
                None if transport.dialing_is_busy(member.transport_addr) => {}
                None => {
                    let transport = transport.clone();
                    let addr = member.transport_addr;
                    runtime.spawn(async move {
                        if let Ok(link) = transport.link(addr).await {
                            let _ = link.send(frame).await;
                        }
                    });
                }
            }
        }
    }

    fn unreachable(&self, target: AgentId, route: &Route, reason: String) -> AgentError {
        AgentError::Remote(RemoteError::Unreachable {
            target,
            node: route.node.clone(),
            reason,
        })
    }

    /// Sends `message` to the remote owner without waiting for a reply.
    /// With no open link yet the send waits for the dial on a task of its
    /// own.
    fn send(&self, route: &Route, message: Outbound<'_>) -> Result<(), AgentError> {
        let target = target_of(&message);
        let Some((transport, runtime)) = self.transport.get() else {
            return Err(self.unreachable(target, route, "this node has no transport".into()));
        };
        match transport.open_link(route.addr) {
            Some(link) => {
                let envelope = envelope(transport, &link, message, None)
                    .map_err(|reason| self.unreachable(target.clone(), route, reason))?;
                link.try_send(Frame::Message(envelope)).map_err(|_| {
                    if link.is_closed() {
                        self.unreachable(target, route, "the link closed".into())
                    } else {
                        AgentError::Remote(RemoteError::Backpressure {
                            target,
                            node: route.node.clone(),
                        })
                    }
                })
            }
            // Senders already wait for links in numbers: push back.
            None if transport.dialing_is_busy(route.addr) => {
                Err(AgentError::Remote(RemoteError::Backpressure {
                    target,
                    node: route.node.clone(),
                }))
            }
            None => {
                let transport = transport.clone();
                let addr = route.addr;
                let message = OwnedOutbound::of(message);
                runtime.spawn(async move {
                    let link = match transport.link(addr).await {
                        Ok(link) => link,
                        Err(error) => {
                            tracing::debug!(%addr, %error, "cluster: tell dropped");
                            return;
                        }
                    };
                    match message.envelope(&transport, &link) {
                        Ok(envelope) => {
                            let _ = link.send(Frame::Message(envelope)).await;
                        }
                        Err(reason) => tracing::debug!(%addr, %reason, "cluster: tell dropped"),
                    }
                });
                Ok(())
            }
        }
    }

    /// Asks the remote owner; `Ok(None)` when it answers that it is not the
    /// owner (the caller routes again).
    async fn request(
        &self,
        route: &Route,
        message: Outbound<'_>,
        timeout: Duration,
    ) -> Result<valueverse_runtime::RemoteAnswer, AgentError> {
        let target = target_of(&message);
        let Some((transport, _)) = self.transport.get() else {
            return Err(self.unreachable(target, route, "this node has no transport".into()));
        };
        let started = std::time::Instant::now();
        // The dial runs to its own bounds (connect, handshake), as before:
        // cut short, it would record no failure and the next ask would dial
        // a dead peer again at once.
        let link = match transport.link(route.addr).await {
            Ok(link) => link,
            Err(error) => return Err(self.unreachable(target, route, error.to_string())),
        };
        let left = timeout.saturating_sub(started.elapsed());
        let envelope = envelope(transport, &link, message, Some(left))
            .map_err(|reason| self.unreachable(target.clone(), route, reason))?;
        let type_version = envelope.type_version;
        let outcome = match transport.ask_on(&link, envelope, left).await {
            Ok(outcome) => outcome,
            Err(LinkError::Timeout { .. }) => {
                return Err(AgentError::Send(SendError::Timeout {
                    target,
                    after: timeout,
                }));
            }
            Err(error) => return Err(self.unreachable(target, route, error.to_string())),
        };
        match outcome {
            Ok(bytes) => Ok(Some((type_version, bytes))),
            Err(RemoteFailure::NotOwner { .. }) => Ok(None),
            Err(failure) => Err(error_of(failure, target, &route.node, timeout)),
        }
    }
}

/// An [`Outbound`] kept for a send that waits for its link.
struct OwnedOutbound {
    kind: &'static str,
    key: String,
    correlation_id: Option<CorrelationId>,
    actor: Option<std::sync::Arc<str>>,
    trace: Option<valueverse_runtime::TraceContext>,
    type_id: u32,
    version: u16,
    payload: Option<Vec<u8>>,
    previous: Option<Vec<u8>>,
}

impl OwnedOutbound {
    fn of(message: Outbound<'_>) -> OwnedOutbound {
        OwnedOutbound {
            kind: message.kind,
            key: message.key.to_owned(),
            correlation_id: message.correlation_id.cloned(),
            actor: message.actor.cloned(),
            trace: message.trace,
            type_id: message.type_id,
            version: message.version,
            payload: message.payload,
            previous: message.previous,
        }
    }

    fn envelope(self, transport: &Transport, link: &Link) -> Result<Envelope<'static>, String> {
        let (type_version, payload) = for_peer(
            link,
            self.type_id,
            self.version,
            self.payload,
            self.previous,
        )?;
        Ok(Envelope {
            message_id: transport.next_id(),
            ask_id: None,
            correlation_id: self
                .correlation_id
                .map(|id| Cow::Owned(id.as_str().to_owned())),
            actor: self.actor.map(|actor| Cow::Owned(actor.to_string())),
            trace_context: self.trace.map(|trace| Cow::Owned(trace.encode())),
            deadline_ms: None,
            target: Target {
                kind: Cow::Borrowed(self.kind),
                key: Cow::Owned(self.key),
            },
            type_id: self.type_id,
            type_version,
            payload: Cow::Owned(payload),
        })
    }
}

/// The version and bytes of a message that `link`'s peer reads: this
/// node's version, or the one before where the peer speaks only that.
fn for_peer(
    link: &Link,
    type_id: u32,
    version: u16,
    payload: Option<Vec<u8>>,
    previous: Option<Vec<u8>>,
) -> Result<(u16, Vec<u8>), String> {
    let speaks = link.peer_version(type_id);
    let missing = |at: u16| format!("message {type_id:#x} was not encoded at version {at}");
    match speaks {
        Some(theirs) if theirs < version && version.checked_sub(1) == Some(theirs) => previous
            .map(|previous| (theirs, previous))
            .ok_or_else(|| missing(theirs)),
        Some(theirs) if theirs < version => Err(format!(
            "node {} speaks version {theirs} of message {type_id:#x}, this node {version}: \
             two or more releases apart",
            link.peer()
        )),
        _ => payload
            .map(|payload| (version, payload))
            .ok_or_else(|| missing(version)),
    }
}

impl Remote for Router {
    fn route(&self, kind: &str, key: &str) -> Option<Route> {
        Router::route(self, kind, key)
    }

    fn peer_version(&self, route: &Route, type_id: u32) -> Option<u16> {
        let (transport, _) = self.transport.get()?;
        let link = transport.open_link(route.addr)?;
        link.peer_version(type_id)
    }

    fn is_solo(&self) -> bool {
        Router::is_solo(self)
    }

    fn tell(&self, route: &Route, message: Outbound<'_>) -> Result<(), AgentError> {
        self.send(route, message)
    }

    fn ask<'a>(
        &'a self,
        route: &'a Route,
        message: Outbound<'a>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<valueverse_runtime::RemoteAnswer, AgentError>> {
        Box::pin(self.request(route, message, timeout))
    }

    fn share(&self, source: &str, correlation_id: Option<&str>, payload: Vec<u8>) {
        self.forward_event(source, correlation_id, payload);
    }
}

fn target_of(message: &Outbound<'_>) -> AgentId {
    AgentId {
        kind: message.kind,
        key: message.key.into(),
    }
}

fn unix_millis() -> u64 {
    valueverse_store::unix_millis().max(0) as u64
}

fn envelope<'a>(
    transport: &Transport,
    link: &Link,
    message: Outbound<'a>,
    timeout: Option<Duration>,
) -> Result<codec::Envelope<'a>, String> {
    let (type_version, payload) = for_peer(
        link,
        message.type_id,
        message.version,
        message.payload,
        message.previous,
    )?;
    Ok(codec::Envelope {
        message_id: transport.next_id(),
        ask_id: None,
        correlation_id: message.correlation_id.map(|id| Cow::Borrowed(id.as_str())),
        actor: message.actor.map(|actor| Cow::Borrowed(&**actor)),
        trace_context: message.trace.map(|trace| Cow::Owned(trace.encode())),
        deadline_ms: timeout.map(|timeout| unix_millis() + timeout.as_millis() as u64),
        target: Target {
            kind: Cow::Borrowed(message.kind),
            key: Cow::Borrowed(message.key),
        },
        type_id: message.type_id,
        type_version,
        payload: Cow::Owned(payload),
    })
}

/// How a refusal travels back to the asking node.
fn failure_of(refusal: Refusal) -> RemoteFailure {
    let error = match refusal {
        Refusal::NotOwner { owner } => return RemoteFailure::NotOwner { owner },
        Refusal::UnknownType { type_id } => return RemoteFailure::UnknownType { type_id },
        Refusal::Undecodable { reason } => return RemoteFailure::Undecodable { reason },
        // No variant of its own: the reply's layout stays what the release before reads.
        Refusal::UnknownVersion {
            type_id,
            version,
            speaks,
        } => {
            return RemoteFailure::Undecodable {
                reason: format!(
                    "version {version} of message {type_id:#x}: this node reads {}..={speaks}",
                    speaks.saturating_sub(1)
                ),
            };
        }
        Refusal::DeadlineExpired => return RemoteFailure::DeadlineExpired,
        Refusal::Unencodable { reason } => return RemoteFailure::Agent { message: reason },
        Refusal::Agent(error) => error,
    };
    match error {
        AgentError::Send(SendError::MailboxFull { capacity, .. }) => RemoteFailure::MailboxFull {
            capacity: capacity as u64,
        },
        AgentError::Send(SendError::Timeout { .. })
        | AgentError::Send(SendError::Expired { .. }) => RemoteFailure::DeadlineExpired,
        AgentError::Handling(HandlingError::Rejected { rejection, .. }) => {
            RemoteFailure::Rejected {
                code: rejection.code.as_str().to_owned(),
                message: rejection.message,
                field: rejection.field,
            }
        }
        AgentError::Handling(HandlingError::Failed { last_failure, .. }) => RemoteFailure::Failed {
            last_failure: last_failure.to_string(),
        },
        AgentError::Send(SendError::Stopped { .. }) => RemoteFailure::Stopped,
        other => RemoteFailure::Agent {
            message: other.to_string(),
        },
    }
}

/// The local error for a failure the owner's node answered.
fn error_of(failure: RemoteFailure, target: AgentId, node: &str, timeout: Duration) -> AgentError {
    match failure {
        RemoteFailure::MailboxFull { capacity } => AgentError::Send(SendError::MailboxFull {
            target,
            capacity: capacity as usize,
        }),
        RemoteFailure::DeadlineExpired => AgentError::Send(SendError::Timeout {
            target,
            after: timeout,
        }),
        RemoteFailure::Rejected {
            code,
            message,
            field,
        } => AgentError::Handling(HandlingError::Rejected {
            target,
            rejection: Box::new(valueverse_runtime::Rejection {
                code: valueverse_runtime::RejectionCode::from_wire(&code),
                message,
                field,
            }),
        }),
        RemoteFailure::Failed { last_failure } => AgentError::Handling(HandlingError::Failed {
            target,
            // Another node's status arrives as its text.
            last_failure: Box::new(valueverse_runtime::ExitStatus::Reported {
                message: last_failure,
            }),
        }),
        RemoteFailure::Stopped => AgentError::Send(SendError::Stopped { target }),
        other => AgentError::Remote(RemoteError::Failed {
            target,
            node: node.to_owned(),
            message: format!("{other:?}"),
        }),
    }
}

/// The transport's handler of messages from other nodes: each goes to its
/// kind's registry here, which checks that this node owns the target;
/// asks are answered on the link they came on.
pub fn inbound(system: WeakSystem) -> transport::Inbound {
    Arc::new(move || {
        Box::new(SystemReceiver {
            system: system.clone(),
            stages: Vec::new(),
        })
    })
}

/// One link's receiver: each kind's messages staged by its registry (the
/// kinds looked up once per link, not once per message).
struct SystemReceiver {
    system: WeakSystem,
    stages: Vec<(String, Box<dyn Stage>)>,
}

impl Receiver for SystemReceiver {
    fn take(&mut self, link: &Link, envelope: codec::Envelope<'_>) -> Option<Hold> {
        if envelope.target.kind == EVENTS_KIND {
            if envelope.type_id == EVENTS_TYPE
                && let Some(system) = self.system.upgrade()
            {
                system.receive_shared(&envelope.payload);
            }
            return None;
        }
        let reply = envelope.ask_id.map(|ask_id| RemoteReply {
            link: Some(link.clone()),
            ask_id,
        });
        let kind = &envelope.target.kind;
        let index = match self.stages.iter().position(|(staged, _)| staged == kind) {
            Some(index) => index,
            None => {
                let Some(system) = self.system.upgrade() else {
                    RemoteReply::refuse(reply, RemoteFailure::Stopped);
                    return None;
                };
                let Some(stage) = system.stage(kind) else {
                    let kind = kind.clone().into_owned();
                    RemoteReply::refuse(reply, RemoteFailure::UnknownKind { kind });
                    return None;
                };
                self.stages.push((kind.clone().into_owned(), stage));
                self.stages.len() - 1
            }
        };
        let inbound = Inbound {
            type_id: envelope.type_id,
            version: envelope.type_version,
            key: &envelope.target.key,
            deadline_ms: envelope.deadline_ms,
            correlation_id: envelope.correlation_id.as_deref(),
            actor: envelope.actor.as_deref(),
            trace_context: envelope.trace_context.as_deref(),
            payload: &envelope.payload,
        };
        self.stages[index].1.take(
            inbound,
            reply.map(|reply| Box::new(reply) as Box<dyn ReplyPort>),
        );
        None
    }

    fn flush(&mut self) -> Option<Hold> {
        let mut holds: Vec<Hold> = self
            .stages
            .iter_mut()
            .filter_map(|(_, stage)| stage.flush())
            .collect();
        match holds.len() {
            0 => None,
            1 => holds.pop(),
            _ => Some(Box::pin(async move {
                futures_util::future::join_all(holds).await;
            })),
        }
    }
}

/// Where the answer to an ask from another node goes: the link it came
/// on. Whoever answers (the instance's handler, or the delivery that could
/// not take it) queues the reply frame from its own thread. Dropped
/// unanswered (its mailbox went away with it), it answers `Stopped`, as a
/// local asker's dropped channel does.
struct RemoteReply {
    link: Option<Link>,
    ask_id: u64,
}

impl RemoteReply {
    /// Answers `failure` to the ask, if the message was one.
    fn refuse(reply: Option<RemoteReply>, failure: RemoteFailure) {
        if let Some(mut reply) = reply {
            reply.send(Err(failure));
        }
    }

    fn send(&mut self, outcome: Result<Vec<u8>, RemoteFailure>) {
        if let Some(link) = self.link.take() {
            // Never waits: a reply past the outbox's headroom is dropped
            // (counted) and its asker times out.
            link.reply(Reply {
                ask_id: self.ask_id,
                outcome,
            });
        }
    }
}

impl ReplyPort for RemoteReply {
    fn answer(mut self: Box<Self>, outcome: Result<Vec<u8>, Refusal>) {
        self.send(outcome.map_err(failure_of));
    }
}

impl Drop for RemoteReply {
    fn drop(&mut self) {
        self.send(Err(RemoteFailure::Stopped));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(node: &str, port: u16) -> Placed {
        Placed {
            candidate: Candidate {
                node: node.into(),
                kinds: vec!["architect".into(), "simulation".into()],
                gpus: 0,
            },
            transport_addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    #[test]
    fn a_view_of_this_node_alone_routes_everything_here() {
        let router = Router::new("n1", Arc::new(tokio::sync::watch::Sender::new(0)));
        assert!(router.route("architect", "m-1").is_none());
        assert!(!router.set_view(Vec::new()));
        assert!(router.set_view(vec![placed("n1", 7001)]));
        assert!(router.route("architect", "m-1").is_none());
        assert!(!router.set_view(vec![placed("n1", 7001)]));
    }

    #[test]
    fn keys_spread_over_the_view_and_all_move_off_a_node_that_left_it() {
        let router = Router::new("n1", Arc::new(tokio::sync::watch::Sender::new(0)));
        router.set_view(vec![
            placed("n1", 7001),
            placed("n2", 7002),
            placed("n3", 7003),
        ]);
        let remote = (0..300)
            .filter_map(|i| router.route("architect", &format!("m-{i}")))
            .collect::<Vec<_>>();
        assert!((150..250).contains(&remote.len()), "{}", remote.len());
        assert!(remote.iter().all(|route| route.node != "n1"));
        // A view without this node (its lease lapsed): nothing is local.
        router.set_view(vec![placed("n2", 7002), placed("n3", 7003)]);
        assert!((0..100).all(|i| router.route("architect", &format!("m-{i}")).is_some()));
    }
}
