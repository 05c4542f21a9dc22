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
use super::error::AgentError;
use super::registry::{Instance, KindRuntime};
use super::remote::{Outbound, decode_payload, encode_payload, type_id};

/// A reference to the agent instance `(A::KIND, key)`.
pub struct AgentRef<A: Agent> {
    kind: Arc<KindRuntime<A>>,
    key: Arc<str>,
    correlation_id: Option<CorrelationId>,
    /// The instance this reference last reached, skipping the registry.
    instance: OnceLock<Arc<Instance<A>>>,
}

impl<A: Agent> Clone for AgentRef<A> {
    fn clone(&self) -> AgentRef<A> {
        AgentRef {
            kind: Arc::clone(&self.kind),
            key: self.key.clone(),
            correlation_id: self.correlation_id.clone(),
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
                deadline,
            },
            payload,
            reply,
        }
    }

    /// `msg` encoded for the node that owns the instance.
    fn outbound(&self, msg: &A::Msg) -> Result<Outbound<'_>, AgentError> {
        Ok(Outbound {
            kind: A::KIND,
            key: &self.key,
            correlation_id: self.correlation_id.as_ref(),
            type_id: type_id::<A>(),
            payload: encode_payload(msg).map_err(|reason| AgentError::Unencodable {
                target: KindRuntime::<A>::target(&self.key),
                reason,
            })?,
        })
    }

    /// Sends without waiting for a reply. Fails at once with
    /// [`AgentError::MailboxFull`] when the mailbox is full.
    pub fn tell(&self, msg: A::Msg) -> Result<(), AgentError> {
        if let Some((remote, route)) = self.kind.node.route(A::KIND, &self.key) {
            return remote.tell(&route, self.outbound(&msg)?);
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
            if let Some(bytes) = remote.ask(&route, self.outbound(&msg)?, left).await? {
                return decode_payload(&bytes).map_err(|reason| AgentError::Remote {
                    target: KindRuntime::<A>::target(&self.key),
                    node: route.node.clone(),
                    message: format!("undecodable reply: {reason}"),
                });
            }
            if started.elapsed() + pause >= timeout {
                return Err(AgentError::Timeout {
                    target: KindRuntime::<A>::target(&self.key),
                    after: timeout,
                });
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
            Ok(Ok(Err(error))) if matches!(*error, AgentError::Expired { .. }) => {
                Err(AgentError::Timeout {
                    target: KindRuntime::<A>::target(&self.key),
                    after: timeout,
                })
            }
            Err(_) => Err(AgentError::Timeout {
                target: KindRuntime::<A>::target(&self.key),
                after: timeout,
            }),
            Ok(Ok(result)) => result.map_err(|error| *error),
            Ok(Err(_dropped)) => Err(AgentError::Stopped {
                target: KindRuntime::<A>::target(&self.key),
            }),
        }
    }
}
