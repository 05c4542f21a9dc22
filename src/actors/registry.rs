//! The per-node registry of one agent kind: which instances are active here,
//! activation on first message, delivery into bounded mailboxes, and removal
//! on passivation.
//!
//! Every instance has an [`InstanceCell`] shared by senders and its host. Its
//! `depth` counts messages admitted and not yet taken by the host; it both
//! bounds the mailbox and gates passivation: an idle host may close the cell
//! only by swapping a depth of 0 for `CLOSED`, so no admitted message is ever
//! stranded in a stopped mailbox.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use actix::Addr;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use futures_util::future::BoxFuture;

use crate::cluster::codec::{self, RemoteFailure};
use crate::cluster::router::{self, RemoteReply};
use crate::cluster::transport::Hold;
use crate::metrics::KindMetrics;

use super::agent::Agent;
use super::envelope::{AgentId, CorrelationId, Envelope, Header, ReplySender};
use super::error::AgentError;
use super::host::{Handoff, Host, Operate};
use super::supervisor::{
    FailureRecord, InstanceSnapshot, InstanceStatus, LifecycleChange, OperatorAction,
    RestartStrategy, SupervisorSnapshot,
};
use super::system::NodeContext;

const CLOSED: usize = 1 << (usize::BITS - 1);

/// How many passivated instances a kind keeps listing in its tree.
const RECENTLY_PASSIVATED: usize = 256;

/// Keeps a hot atomic on a cache line of its own, away from the counters the
/// host alone writes.
#[repr(align(64))]
#[derive(Default)]
struct CacheLine<T>(T);

/// State of one instance shared by its senders, its host and observers.
pub(crate) struct InstanceCell {
    depth: CacheLine<AtomicUsize>,
    status: AtomicU8,
    messages_handled: AtomicU64,
    restarts: AtomicU32,
    activated_at: DateTime<Utc>,
    last_failure: Mutex<Option<FailureRecord>>,
}

enum Admission {
    Admitted,
    Full,
    Closed,
}

impl InstanceCell {
    fn new() -> InstanceCell {
        InstanceCell {
            depth: CacheLine::default(),
            status: AtomicU8::new(InstanceStatus::Activating.as_u8()),
            messages_handled: AtomicU64::new(0),
            restarts: AtomicU32::new(0),
            activated_at: Utc::now(),
            last_failure: Mutex::new(None),
        }
    }

    fn admit(&self, capacity: usize) -> Admission {
        let previous = self.depth.0.fetch_add(1, Ordering::AcqRel);
        if previous & CLOSED != 0 {
            self.depth.0.fetch_sub(1, Ordering::AcqRel);
            Admission::Closed
        } else if previous >= capacity {
            self.depth.0.fetch_sub(1, Ordering::AcqRel);
            Admission::Full
        } else {
            Admission::Admitted
        }
    }

    /// Undoes an admission whose send did not happen, or marks one taken.
    pub(crate) fn release(&self) {
        self.depth.0.fetch_sub(1, Ordering::AcqRel);
    }

    /// Closes an empty mailbox for good; fails when anything is admitted.
    pub(crate) fn try_close(&self) -> bool {
        self.depth
            .0
            .compare_exchange(0, CLOSED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn force_close(&self) {
        self.depth.0.fetch_or(CLOSED, Ordering::AcqRel);
    }

    fn is_closed(&self) -> bool {
        self.depth.0.load(Ordering::Acquire) & CLOSED != 0
    }

    fn mailbox_depth(&self) -> usize {
        self.depth.0.load(Ordering::Acquire) & !CLOSED
    }

    pub(crate) fn status(&self) -> InstanceStatus {
        InstanceStatus::from_u8(self.status.load(Ordering::Acquire))
    }

    pub(crate) fn set_status(&self, status: InstanceStatus) {
        self.status.store(status.as_u8(), Ordering::Release);
    }

    pub(crate) fn count_handled(&self) {
        // Written by the host alone: a plain load and store is enough.
        let handled = self.messages_handled.load(Ordering::Relaxed);
        self.messages_handled.store(handled + 1, Ordering::Relaxed);
    }

    pub(crate) fn record_failure(&self, message: String) {
        let record = FailureRecord {
            message,
            at: Utc::now(),
        };
        *self
            .last_failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(record);
    }

    pub(crate) fn last_failure_message(&self) -> String {
        self.last_failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .map(|record| record.message.clone())
            .unwrap_or_default()
    }

    pub(crate) fn count_restart(&self) {
        self.restarts.fetch_add(1, Ordering::AcqRel);
    }

    fn snapshot(&self, key: &str, mailbox_capacity: usize) -> InstanceSnapshot {
        InstanceSnapshot {
            key: key.to_owned(),
            status: self.status(),
            restarts: self.restarts.load(Ordering::Acquire),
            last_failure: self
                .last_failure
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
            mailbox_depth: self.mailbox_depth(),
            mailbox_capacity,
            messages_handled: self.messages_handled.load(Ordering::Relaxed),
            activated_at: self.activated_at,
        }
    }
}

/// A registry entry: the instance's cell and its host's address.
pub(crate) struct Instance<A: Agent> {
    cell: Arc<InstanceCell>,
    addr: Addr<Host<A>>,
    /// Index of the event loop the host runs on.
    worker: usize,
}

enum Offer<A: Agent> {
    Full(Envelope<A>),
    Closed(Envelope<A>),
}

impl<A: Agent> Instance<A> {
    fn offer(&self, envelope: Envelope<A>, capacity: usize) -> Result<(), Offer<A>> {
        match self.cell.admit(capacity) {
            Admission::Admitted => {}
            Admission::Full => return Err(Offer::Full(envelope)),
            Admission::Closed => return Err(Offer::Closed(envelope)),
        }
        // `try_send` (never `do_send`) so the actix queue is bounded too.
        match self.addr.try_send(envelope) {
            Ok(()) => Ok(()),
            Err(actix::dev::SendError::Full(envelope)) => {
                self.cell.release();
                Err(Offer::Full(envelope))
            }
            Err(actix::dev::SendError::Closed(envelope)) => {
                self.cell.release();
                self.cell.force_close();
                Err(Offer::Closed(envelope))
            }
        }
    }
}

/// Everything one kind needs at run time on this node.
pub(crate) struct KindRuntime<A: Agent> {
    instances: DashMap<Arc<str>, Arc<Instance<A>>, foldhash::fast::RandomState>,
    recently_passivated: Mutex<VecDeque<InstanceSnapshot>>,
    pub(crate) node: Arc<NodeContext>,
    pub(crate) strategy: RestartStrategy,
    pub(crate) mailbox_capacity: usize,
    pub(crate) metrics: KindMetrics,
}

impl<A: Agent> KindRuntime<A> {
    pub(crate) fn new(node: Arc<NodeContext>, strategy: RestartStrategy) -> KindRuntime<A> {
        KindRuntime {
            instances: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            recently_passivated: Mutex::new(VecDeque::new()),
            mailbox_capacity: node.runtime.mailbox_capacity,
            metrics: node.metrics.for_kind(A::KIND, node.num_workers()),
            strategy,
            node,
        }
    }

    pub(crate) fn target(key: &Arc<str>) -> AgentId {
        AgentId {
            kind: A::KIND,
            key: key.clone(),
        }
    }

    /// Puts an envelope into the mailbox of the instance for `key`,
    /// activating it when it is not active here. Never blocks, never queues
    /// beyond the mailbox capacity. Returns the event loop the instance runs on.
    ///
    /// `cache` is the caller's memory of the instance: tried first, and
    /// filled on the first delivery through the registry. Once its instance
    /// has passivated, the cached entry refuses (closed) and the registry
    /// answers instead.
    pub(crate) fn deliver(
        self: &Arc<Self>,
        key: &Arc<str>,
        envelope: Envelope<A>,
        cache: &OnceLock<Arc<Instance<A>>>,
    ) -> Result<usize, AgentError> {
        let mut envelope = envelope;
        if let Some(instance) = cache.get() {
            match instance.offer(envelope, self.mailbox_capacity) {
                Ok(()) => return Ok(instance.worker),
                Err(Offer::Full(refused)) => return Err(self.refuse(refused, key, Self::full)),
                Err(Offer::Closed(returned)) => envelope = returned,
            }
        }
        // A closed mailbox belongs to an instance that passivated between our
        // lookup and our send: drop the entry and go again. Each pass removes
        // one closed entry, so two passes nearly always suffice.
        for _ in 0..16 {
            let instance = match self.instances.get(key) {
                Some(instance) => Arc::clone(&instance),
                None => Arc::clone(
                    &self
                        .instances
                        .entry(key.clone())
                        .or_insert_with(|| Arc::new(self.spawn(key))),
                ),
            };
            match instance.offer(envelope, self.mailbox_capacity) {
                Ok(()) => {
                    let worker = instance.worker;
                    // Already set (to a passivated instance) is fine: rarer path.
                    let _ = cache.set(instance);
                    return Ok(worker);
                }
                Err(Offer::Full(refused)) => return Err(self.refuse(refused, key, Self::full)),
                Err(Offer::Closed(returned)) => {
                    self.instances
                        .remove_if(key, |_, instance| instance.cell.is_closed());
                    envelope = returned;
                }
            }
        }
        Err(self.refuse(envelope, key, |_, key| AgentError::Stopped {
            target: Self::target(key),
        }))
    }

    /// The error of an envelope not delivered, answered to its asker too:
    /// a local one also has it returned, a remote one hears only this way.
    fn refuse(
        &self,
        envelope: Envelope<A>,
        key: &Arc<str>,
        error: impl Fn(&Self, &Arc<str>) -> AgentError,
    ) -> AgentError {
        if let Some(reply) = envelope.reply {
            reply.send(Err(error(self, key)));
        }
        error(self, key)
    }

    fn full(&self, key: &Arc<str>) -> AgentError {
        AgentError::MailboxFull {
            target: Self::target(key),
            capacity: self.mailbox_capacity,
        }
    }

    fn spawn(self: &Arc<Self>, key: &Arc<str>) -> Instance<A> {
        let cell = Arc::new(InstanceCell::new());
        let capacity = self.mailbox_capacity;
        let kind = Arc::clone(self);
        let host_cell = Arc::clone(&cell);
        let host_key = key.clone();
        let (worker, arbiter) = self.node.next_arbiter();
        // The channel gets its capacity here, before the first send: set
        // later from the arbiter, sends racing ahead would see actix's
        // default of 16.
        let (sender, receiver) = actix::dev::channel::channel(capacity);
        arbiter.spawn_fn(move || {
            let ctx = actix::Context::with_receiver(receiver);
            let host = Host::new(kind, worker, host_cell, host_key);
            actix::spawn(ctx.into_future(host));
        });
        let addr = Addr::new(sender);
        self.metrics.activations.inc();
        Instance { cell, addr, worker }
    }

    /// Called by a host that closed its idle mailbox and is stopping.
    pub(crate) fn on_passivated(&self, key: &Arc<str>, cell: &Arc<InstanceCell>) {
        cell.set_status(InstanceStatus::Passivated);
        self.instances
            .remove_if(key, |_, instance| Arc::ptr_eq(&instance.cell, cell));
        let mut recent = self
            .recently_passivated
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        recent.retain(|snapshot| snapshot.key != **key);
        if recent.len() == RECENTLY_PASSIVATED {
            recent.pop_front();
        }
        recent.push_back(cell.snapshot(key, self.mailbox_capacity));
        drop(recent);
        self.metrics.passivations.inc();
        self.node.emit(A::KIND, key, LifecycleChange::Passivated);
    }
}

/// The kind-independent face of a kind's registry, for the supervision tree
/// and operator actions addressed by kind name.
pub(crate) trait KindControl: Send + Sync {
    fn snapshot(&self) -> SupervisorSnapshot;
    /// Resets or crashes one instance of this node.
    fn operate(
        &self,
        key: &str,
        action: OperatorAction,
        correlation_id: Option<CorrelationId>,
    ) -> BoxFuture<'static, Result<InstanceSnapshot, AgentError>>;
    /// Asks every instance whose key another node owns now to passivate;
    /// answers how many were asked.
    fn hand_off_unowned(&self) -> usize;
    /// Delivers a message from another node; an ask is answered through
    /// `reply`. A tell that found the mailbox full comes back as the wait
    /// for room, which holds the link's reader.
    fn deliver_remote(
        self: Arc<Self>,
        envelope: codec::Envelope,
        reply: Option<RemoteReply>,
    ) -> Option<Hold>;
}

impl<A: Agent> KindRuntime<A> {
    /// Delivers a message from another node. Its failure is returned, and
    /// an ask's is also answered on its link (so are the asks the instance
    /// takes: by its handler).
    fn accept_remote(
        self: &Arc<Self>,
        envelope: &codec::Envelope,
        reply: Option<RemoteReply>,
    ) -> Result<(), RemoteFailure> {
        let (key, mut local) = match self.check_remote(envelope) {
            Ok(checked) => checked,
            Err(failure) => {
                RemoteReply::refuse(reply, failure.clone());
                return Err(failure);
            }
        };
        local.reply = reply.map(ReplySender::Remote);
        self.deliver(&key, local, &OnceLock::new())
            .map(|_worker| ())
            .map_err(router::failure_of)
    }

    /// The target key and the local envelope (no reply yet) of a message
    /// this node takes.
    fn check_remote(
        &self,
        envelope: &codec::Envelope,
    ) -> Result<(Arc<str>, Envelope<A>), RemoteFailure> {
        if envelope.type_id != router::type_id::<A>() {
            return Err(RemoteFailure::UnknownType {
                type_id: envelope.type_id,
            });
        }
        let key: Arc<str> = envelope.target.key.as_str().into();
        // The sender's view put the key here; ours may not (yet): the
        // sender routes again rather than two nodes serving one key.
        if let Some((_, route)) = self.node.route(A::KIND, &key) {
            return Err(RemoteFailure::NotOwner {
                owner: Some(route.node),
            });
        }
        let deadline = match envelope.deadline_ms {
            Some(deadline_ms) => {
                let left = router::time_left(deadline_ms).ok_or(RemoteFailure::DeadlineExpired)?;
                Some(self.node.clock.now() + left)
            }
            None => None,
        };
        let payload = router::decode_payload::<A::Msg>(&envelope.payload)
            .map_err(|reason| RemoteFailure::Undecodable { reason })?;
        let header = Header {
            message_id: self.node.next_message_id(),
            correlation_id: envelope
                .correlation_id
                .as_deref()
                .and_then(CorrelationId::parse),
            deadline,
        };
        Ok((
            key,
            Envelope {
                header,
                payload,
                reply: None,
            },
        ))
    }
}

impl<A: Agent> KindRuntime<A> {
    /// Offers a remote tell again until the mailbox takes it (or a while
    /// has passed: then it is dropped, as a local tell to a full mailbox
    /// would have been refused).
    async fn hold_until_taken(self: Arc<Self>, envelope: codec::Envelope) {
        let give_up = std::time::Instant::now() + REMOTE_TELL_HOLD;
        let mut tries = 0u32;
        loop {
            // Spin on the scheduler first (a mailbox drains in microseconds),
            // then wait on the timer.
            if tries < 64 {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            tries += 1;
            match self.accept_remote(&envelope, None) {
                Err(RemoteFailure::MailboxFull { .. }) if std::time::Instant::now() < give_up => {}
                Ok(()) => return,
                Err(failure) => {
                    tracing::warn!(kind = A::KIND, ?failure, "cluster: remote tell dropped");
                    return;
                }
            }
        }
    }
}

/// How long a remote tell waits for room in a full mailbox.
const REMOTE_TELL_HOLD: std::time::Duration = std::time::Duration::from_secs(10);

impl<A: Agent> KindControl for KindRuntime<A> {
    fn hand_off_unowned(&self) -> usize {
        let mut asked = 0;
        for entry in self.instances.iter() {
            if self.node.route(A::KIND, entry.key()).is_some() {
                // A full mailbox will not take it: that instance passivates
                // when idle, and gets no new messages meanwhile.
                let _ = entry.value().addr.try_send(Handoff);
                asked += 1;
            }
        }
        asked
    }

    fn deliver_remote(
        self: Arc<Self>,
        envelope: codec::Envelope,
        reply: Option<RemoteReply>,
    ) -> Option<Hold> {
        if reply.is_some() {
            // Answered on the link, whatever becomes of it.
            let _ = self.accept_remote(&envelope, reply);
            return None;
        }
        match self.accept_remote(&envelope, None) {
            Ok(()) => None,
            Err(RemoteFailure::MailboxFull { .. }) => {
                Some(Box::pin(self.hold_until_taken(envelope)))
            }
            Err(failure) => {
                tracing::debug!(kind = A::KIND, ?failure, "cluster: remote tell dropped");
                None
            }
        }
    }

    fn snapshot(&self) -> SupervisorSnapshot {
        let mut instances: Vec<InstanceSnapshot> = self
            .instances
            .iter()
            .map(|entry| {
                entry
                    .value()
                    .cell
                    .snapshot(entry.key(), self.mailbox_capacity)
            })
            .filter(|snapshot| snapshot.status != InstanceStatus::Passivated)
            .collect();
        instances.sort_by(|a, b| a.key.cmp(&b.key));
        let count = |status| instances.iter().filter(|i| i.status == status).count();
        let (num_active, num_restarting, num_failed) = (
            count(InstanceStatus::Active),
            count(InstanceStatus::Restarting),
            count(InstanceStatus::Failed),
        );
        let recent = self
            .recently_passivated
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let live_keys: std::collections::HashSet<String> =
            instances.iter().map(|i| i.key.clone()).collect();
        instances.extend(
            recent
                .iter()
                .rev()
                .filter(|snapshot| !live_keys.contains(&snapshot.key))
                .cloned(),
        );
        SupervisorSnapshot {
            kind: A::KIND.to_owned(),
            strategy: self.strategy.clone(),
            num_active,
            num_restarting,
            num_failed,
            instances,
        }
    }

    fn operate(
        &self,
        key: &str,
        action: OperatorAction,
        correlation_id: Option<CorrelationId>,
    ) -> BoxFuture<'static, Result<InstanceSnapshot, AgentError>> {
        let key: Arc<str> = key.into();
        let found = self
            .instances
            .get(&key)
            .map(|instance| (instance.addr.clone(), Arc::clone(&instance.cell)));
        let capacity = self.mailbox_capacity;
        let Some((addr, cell)) = found else {
            return Box::pin(async move {
                Err(AgentError::UnknownInstance {
                    target: KindRuntime::<A>::target(&key),
                })
            });
        };
        Box::pin(async move {
            // `send` waits for mailbox room: an operator action, not a client flood.
            addr.send(Operate {
                action,
                correlation_id,
            })
            .await
            .map_err(|_| AgentError::Stopped {
                target: KindRuntime::<A>::target(&key),
            })??;
            Ok(cell.snapshot(&key, capacity))
        })
    }
}
