//! `AgentRef`: the only handle callers hold on an agent instance. It names
//! the instance by `(kind, key)`, never by an actix address, so the instance
//! may be activated, passivated, restarted (and later live on another node)
//! without the caller noticing.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::oneshot;

use super::agent::Agent;
use super::envelope::{CorrelationId, Envelope, Header, ReplySender};
use super::error::{AgentError, RemoteError, SendError};
use super::registry::{Instance, KindRuntime};
use super::remote::{Outbound, Remote, Route, encode_payload};
use super::trace::TraceContext;

/// A reference to the agent instance `(A::KIND, key)`.
pub struct AgentRef<A: Agent> {
    kind: Arc<KindRuntime<A>>,
    key: Arc<str>,
    correlation_id: Option<CorrelationId>,
    /// Who its messages act for.
    actor: Option<Arc<str>>,
    /// The instance this reference last reached, skipping the registry.
    instance: OnceLock<Arc<Instance<A>>>,
}

impl<A: Agent> Clone for AgentRef<A> {
    fn clone(&self) -> AgentRef<A> {
        AgentRef {
            kind: Arc::clone(&self.kind),
            key: self.key.clone(),
            correlation_id: self.correlation_id.clone(),
            actor: self.actor.clone(),
            instance: self.instance.clone(),
        }
    }
}

impl<A: Agent> fmt::Debug for AgentRef<A> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "AgentRef({}/{})", A::KIND, self.key)
    }
}

impl<A: Agent> AgentRef<A> {
    pub(crate) fn new(kind: Arc<KindRuntime<A>>, key: Arc<str>) -> AgentRef<A> {
        AgentRef {
            kind,
            key,
            correlation_id: None,
            actor: None,
            instance: OnceLock::new(),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The same reference, stamping `correlation_id` on every message it sends.
    pub fn with_correlation_id(mut self, correlation_id: CorrelationId) -> AgentRef<A> {
        self.correlation_id = Some(correlation_id);
        self
    }

    /// The same reference, its messages acting for `actor` (an API key's
    /// id, a person's subject): what the audit log records as "who".
    pub fn with_actor(mut self, actor: impl Into<Arc<str>>) -> AgentRef<A> {
        self.actor = Some(actor.into());
        self
    }

    fn envelope(
        &self,
        payload: A::Msg,
        deadline: Option<quanta::Instant>,
        reply: Option<ReplySender<A>>,
    ) -> Envelope<A> {
        Envelope {
            header: Header {
                message_id: self.kind.node.next_message_id(),
                correlation_id: self.correlation_id.clone(),
                actor: self.actor.clone(),
                deadline,
                trace: TraceContext::current().map(Box::new),
            },
            payload,
            reply,
        }
    }

    /// `msg` encoded for the node that owns the instance: at this kind's
    /// version, and at the one before too where that node speaks only it
    /// or is not known yet.
    fn outbound(
        &self,
        remote: &dyn Remote,
        route: &Route,
        msg: &A::Msg,
    ) -> Result<Outbound<'_>, AgentError> {
        let unencodable = |reason| {
            AgentError::Remote(RemoteError::Unencodable {
                target: KindRuntime::<A>::target(&self.key),
                reason,
            })
        };
        let peer = remote.peer_version(route, A::MESSAGE_ID);
        let previous =
            if A::MESSAGE_VERSION > 1 && peer.is_none_or(|version| version < A::MESSAGE_VERSION) {
                Some(A::encode_previous(msg).map_err(unencodable)?)
            } else {
                None
            };
        let payload = if peer.is_some_and(|version| version < A::MESSAGE_VERSION) {
            None
        } else {
            Some(encode_payload(msg).map_err(unencodable)?)
        };
        Ok(Outbound {
            kind: A::KIND,
            key: &self.key,
            correlation_id: self.correlation_id.as_ref(),
            actor: self.actor.as_ref(),
            trace: TraceContext::current(),
            type_id: A::MESSAGE_ID,
            version: A::MESSAGE_VERSION,
            payload,
            previous,
        })
    }

    /// Sends without waiting for a reply. Fails at once with
    /// [`AgentError::Send(SendError::MailboxFull)`] when the mailbox is full.
    pub fn tell(&self, msg: A::Msg) -> Result<(), AgentError> {
        if let Some((remote, route)) = self.kind.node.route(A::KIND, &self.key) {
            return remote.tell(&route, self.outbound(remote, &route, &msg)?);
        }
        self.kind
            .deliver(&self.key, self.envelope(msg, None, None), &self.instance)
            .map(|_worker| ())
    }

    /// Sends and waits for the reply at most `timeout`. The message carries
    /// the deadline, so an instance that reaches it too late drops it.
    ///
    /// When another node owns the instance the ask goes there. An owner
    /// that answers it is not the owner (views differ while membership
    /// changes) makes the ask route again, a few times, within `timeout`.
    pub async fn ask(&self, msg: A::Msg, timeout: Duration) -> Result<A::Reply, AgentError> {
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            let Some((remote, route)) = self.kind.node.route(A::KIND, &self.key) else {
                return self.ask_here(msg, timeout).await;
            };
            let left = timeout.saturating_sub(started.elapsed());
            let outbound = self.outbound(remote, &route, &msg)?;
            if let Some((version, bytes)) = remote.ask(&route, outbound, left).await? {
                return A::decode_reply(version, &bytes).map_err(|reason| {
                    AgentError::Remote(RemoteError::Failed {
                        target: KindRuntime::<A>::target(&self.key),
                        node: route.node.clone(),
                        message: format!("undecodable reply: {reason}"),
                    })
                });
            }
            if started.elapsed() + pause >= timeout {
                return Err(AgentError::Send(SendError::Timeout {
                    target: KindRuntime::<A>::target(&self.key),
                    after: timeout,
                }));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    async fn ask_here(&self, msg: A::Msg, timeout: Duration) -> Result<A::Reply, AgentError> {
        let (reply, answer) = oneshot::channel();
        let deadline = self.kind.node.clock.now() + timeout;
        let worker = self.kind.deliver(
            &self.key,
            self.envelope(msg, Some(deadline), Some(ReplySender::Local(reply))),
            &self.instance,
        )?;
        let answered = if self.kind.node.is_current_worker(worker) {
            // The instance runs on this very thread. While its handler runs,
            // no timer of ours could fire; while it waits on the store or a
            // backoff, the host itself answers by the deadline. So no timer.
            Ok(answer.await)
        } else {
            tokio::time::timeout(timeout, answer).await
        };
        match answered {
            Ok(Ok(Err(error))) if matches!(*error, AgentError::Send(SendError::Expired { .. })) => {
                Err(AgentError::Send(SendError::Timeout {
                    target: KindRuntime::<A>::target(&self.key),
                    after: timeout,
                }))
            }
            Err(_) => Err(AgentError::Send(SendError::Timeout {
                target: KindRuntime::<A>::target(&self.key),
                after: timeout,
            })),
            Ok(Ok(result)) => result.map_err(|error| *error),
            Ok(Err(_dropped)) => Err(AgentError::Send(SendError::Stopped {
                target: KindRuntime::<A>::target(&self.key),
            })),
        }
    }
}
