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
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use actix::Addr;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use futures_util::future::BoxFuture;

use crate::metrics::KindMetrics;

use super::agent::Agent;
use super::envelope::{AgentId, CorrelationId, Envelope, Header, ReplySender};
use super::error::{AgentError, ExitStatus, OperatorError, SendError};
use super::host::{Batch, Handoff, Host, Operate};
use super::remote::{self, Hold, Inbound, Refusal, ReplyPort};
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
    /// A sender waits for room (a remote tell holding its link): the host
    /// wakes it once the mailbox has drained to `room_at`, so that it
    /// resumes with room for a burst rather than one message at a time.
    waiting: AtomicBool,
    room: tokio::sync::Notify,
    room_at: usize,
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
    fn new(capacity: usize) -> InstanceCell {
        InstanceCell {
            depth: CacheLine::default(),
            waiting: AtomicBool::new(false),
            room: tokio::sync::Notify::new(),
            room_at: capacity / 2,
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
        let previous = self.depth.0.fetch_sub(1, Ordering::AcqRel);
        // Ordered after a waiter's flag by the depth it changed before
        // trying again: a waiter that found the mailbox full is seen here.
        if (previous - 1) & !CLOSED <= self.room_at && self.waiting.load(Ordering::Acquire) {
            self.wake_waiting();
        }
    }

    fn wake_waiting(&self) {
        self.waiting.store(false, Ordering::Release);
        self.room.notify_waiters();
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
        self.wake_waiting();
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

    pub(crate) fn record_failure(&self, status: ExitStatus) {
        let record = FailureRecord {
            status,
            at: Utc::now(),
        };
        *self
            .last_failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(record);
    }

    /// How the instance last failed (a failed instance always has one).
    pub(crate) fn last_failure(&self) -> ExitStatus {
        self.last_failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .map(|record| record.status.clone())
            .unwrap_or_else(|| ExitStatus::Fatal {
                message: "no failure recorded".into(),
            })
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

/// An envelope the registry could not deliver, given back.
enum Undelivered<A: Agent> {
    /// The instance's mailbox is full: its cell tells when it has room.
    Full(Envelope<A>, Arc<InstanceCell>),
    Stopped(Envelope<A>),
    /// Activating the instance would pass its tenant's quota.
    OverQuota(Envelope<A>, Box<crate::Rejection>),
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

    /// Sends envelopes already admitted as one batch; gives them back
    /// (admissions undone) when the host will not take it.
    fn send_batch(&self, batch: Vec<Envelope<A>>) -> Result<(), Vec<Envelope<A>>> {
        let (Batch(batch), closed) = match self.addr.try_send(Batch(batch)) {
            Ok(()) => return Ok(()),
            Err(actix::dev::SendError::Full(batch)) => (batch, false),
            Err(actix::dev::SendError::Closed(batch)) => (batch, true),
        };
        for _ in &batch {
            self.cell.release();
        }
        if closed {
            self.cell.force_close();
        }
        Err(batch)
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
        self.try_deliver(key, envelope, cache)
            .map_err(|undelivered| match undelivered {
                Undelivered::Full(envelope, _) => self.refuse(envelope, key, Self::full),
                Undelivered::Stopped(envelope) => self.refuse(envelope, key, |_, key| {
                    AgentError::Send(SendError::Stopped {
                        target: Self::target(key),
                    })
                }),
                Undelivered::OverQuota(envelope, rejection) => {
                    self.refuse(envelope, key, Self::over_quota(rejection))
                }
            })
    }

    /// [`KindRuntime::deliver`], giving back what was not delivered.
    fn try_deliver(
        self: &Arc<Self>,
        key: &Arc<str>,
        envelope: Envelope<A>,
        cache: &OnceLock<Arc<Instance<A>>>,
    ) -> Result<usize, Undelivered<A>> {
        let mut envelope = envelope;
        if let Some(instance) = cache.get() {
            match instance.offer(envelope, self.mailbox_capacity) {
                Ok(()) => return Ok(instance.worker),
                Err(Offer::Full(refused)) => {
                    return Err(Undelivered::Full(refused, Arc::clone(&instance.cell)));
                }
                Err(Offer::Closed(returned)) => envelope = returned,
            }
        }
        // A closed mailbox belongs to an instance that passivated between our
        // lookup and our send: drop the entry and go again. Each pass removes
        // one closed entry, so two passes nearly always suffice.
        for _ in 0..16 {
            let instance = match self.instances.get(key) {
                Some(instance) => Arc::clone(&instance),
                None => {
                    if let Err(rejection) = self.node.tenants.admit(key) {
                        return Err(Undelivered::OverQuota(envelope, Box::new(rejection)));
                    }
                    Arc::clone(
                        &self
                            .instances
                            .entry(key.clone())
                            .or_insert_with(|| Arc::new(self.spawn(key))),
                    )
                }
            };
            match instance.offer(envelope, self.mailbox_capacity) {
                Ok(()) => {
                    let worker = instance.worker;
                    // Already set (to a passivated instance) is fine: rarer path.
                    let _ = cache.set(instance);
                    return Ok(worker);
                }
                Err(Offer::Full(refused)) => {
                    return Err(Undelivered::Full(refused, Arc::clone(&instance.cell)));
                }
                Err(Offer::Closed(returned)) => {
                    self.instances
                        .remove_if(key, |_, instance| instance.cell.is_closed());
                    envelope = returned;
                }
            }
        }
        Err(Undelivered::Stopped(envelope))
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

    /// The refusal of an activation past the tenant's quota.
    fn over_quota(rejection: Box<crate::Rejection>) -> impl Fn(&Self, &Arc<str>) -> AgentError {
        move |_, key| {
            AgentError::Handling(crate::HandlingError::Rejected {
                target: Self::target(key),
                rejection: rejection.clone(),
            })
        }
    }

    fn full(&self, key: &Arc<str>) -> AgentError {
        AgentError::Send(SendError::MailboxFull {
            target: Self::target(key),
            capacity: self.mailbox_capacity,
        })
    }

    fn spawn(self: &Arc<Self>, key: &Arc<str>) -> Instance<A> {
        let capacity = self.mailbox_capacity;
        let cell = Arc::new(InstanceCell::new(capacity));
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
        self.node.tenants.activated(key);
        Instance { cell, addr, worker }
    }

    /// Called by a host that closed its idle mailbox and is stopping.
    pub(crate) fn on_passivated(&self, key: &Arc<str>, cell: &Arc<InstanceCell>) {
        cell.set_status(InstanceStatus::Passivated);
        // Once per instance: its mailbox closed once (a sender may have
        // removed the closed entry already).
        self.node.tenants.passivated(key);
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
    /// The kind's message id and version on the wire.
    fn message_version(&self) -> (u32, u16);
    /// Where one link's messages for this kind wait to be delivered.
    fn stage(self: Arc<Self>) -> Box<dyn Stage>;
}

impl<A: Agent> KindRuntime<A> {
    /// The target key and the local envelope (no reply yet) of a message
    /// this node takes.
    fn check_remote(&self, envelope: &Inbound<'_>) -> Result<(Arc<str>, Envelope<A>), Refusal> {
        if envelope.type_id != A::MESSAGE_ID {
            return Err(Refusal::UnknownType {
                type_id: envelope.type_id,
            });
        }
        let oldest = A::MESSAGE_VERSION.saturating_sub(1).max(1);
        if !(oldest..=A::MESSAGE_VERSION).contains(&envelope.version) {
            return Err(Refusal::UnknownVersion {
                type_id: envelope.type_id,
                version: envelope.version,
                speaks: A::MESSAGE_VERSION,
            });
        }
        let key: Arc<str> = envelope.key.into();
        // The sender's view put the key here; ours may not (yet): the
        // sender routes again rather than two nodes serving one key.
        if let Some((_, route)) = self.node.route(A::KIND, &key) {
            return Err(Refusal::NotOwner {
                owner: Some(route.node),
            });
        }
        let deadline = match envelope.deadline_ms {
            Some(deadline_ms) => {
                let left = remote::time_left(deadline_ms).ok_or(Refusal::DeadlineExpired)?;
                Some(self.node.clock.now() + left)
            }
            None => None,
        };
        let payload = A::decode_message(envelope.version, envelope.payload)
            .map_err(|reason| Refusal::Undecodable { reason })?;
        let header = Header {
            message_id: self.node.next_message_id(),
            correlation_id: envelope.correlation_id.and_then(CorrelationId::parse),
            // As long as a correlation id at most: a peer's text, bounded.
            actor: envelope
                .actor
                .filter(|actor| actor.len() <= crate::MAX_ACTOR_LEN)
                .map(Arc::from),
            deadline,
            trace: envelope
                .trace_context
                .filter(|_| crate::propagating())
                .and_then(crate::TraceContext::decode)
                .map(Box::new),
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

/// One link's messages for a kind: decoded as the link's reader takes
/// them, delivered when it has taken all it read. Offered in a burst, they
/// reach a mailbox faster than its host empties it, so the host is woken
/// once per burst rather than once every few messages (a cross-thread
/// wake costs more than handling a message).
pub trait Stage: Send {
    /// Decodes and keeps `envelope`; a message this node will not take is
    /// refused at once (answered, if an ask).
    fn take(&mut self, envelope: Inbound<'_>, reply: Option<Box<dyn ReplyPort>>);
    /// Delivers what was taken, in order. A tell that finds its mailbox
    /// full comes back, with those after it, as the wait for room, which
    /// holds the link's reader; an ask is answered `MailboxFull` at once,
    /// as a local one would be.
    fn flush(&mut self) -> Option<Hold>;
}

type Staged<A> = VecDeque<(Arc<str>, Envelope<A>)>;

struct KindStage<A: Agent> {
    kind: Arc<KindRuntime<A>>,
    staged: Staged<A>,
}

impl<A: Agent> Stage for KindStage<A> {
    fn take(&mut self, envelope: Inbound<'_>, reply: Option<Box<dyn ReplyPort>>) {
        match self.kind.check_remote(&envelope) {
            Ok((key, mut local)) => {
                let previous = envelope.version < A::MESSAGE_VERSION;
                local.reply = reply.map(|port| ReplySender::Remote { port, previous });
                self.staged.push_back((key, local));
            }
            Err(failure) if reply.is_some() => remote::refuse(reply, failure),
            Err(failure) => {
                tracing::debug!(kind = A::KIND, ?failure, "cluster: remote tell dropped");
            }
        }
    }

    fn flush(&mut self) -> Option<Hold> {
        let cell = self.kind.deliver_all(&mut self.staged)?;
        let rest = std::mem::take(&mut self.staged);
        Some(Box::pin(
            Arc::clone(&self.kind).hold_until_taken(rest, cell),
        ))
    }
}

impl<A: Agent> KindRuntime<A> {
    /// Delivers one staged message; gives back a tell its full mailbox
    /// did not take, with the mailbox's cell.
    fn deliver_staged(
        self: &Arc<Self>,
        key: &Arc<str>,
        envelope: Envelope<A>,
    ) -> Option<(Envelope<A>, Arc<InstanceCell>)> {
        match self.try_deliver(key, envelope, &OnceLock::new()) {
            Ok(_) => None,
            Err(Undelivered::Full(envelope, cell)) if envelope.reply.is_none() => {
                Some((envelope, cell))
            }
            Err(Undelivered::Full(envelope, _)) => {
                self.refuse(envelope, key, Self::full);
                None
            }
            Err(Undelivered::Stopped(envelope)) => {
                self.refuse(envelope, key, |_, key| {
                    AgentError::Send(SendError::Stopped {
                        target: Self::target(key),
                    })
                });
                None
            }
            Err(Undelivered::OverQuota(envelope, rejection)) => {
                self.refuse(envelope, key, Self::over_quota(rejection));
                None
            }
        }
    }

    /// Delivers `staged` in order, a run of messages for one active
    /// instance as one batch. Stops at a tell whose mailbox is full: it
    /// stays first in `staged`, and the mailbox's cell is returned.
    fn deliver_all(self: &Arc<Self>, staged: &mut Staged<A>) -> Option<Arc<InstanceCell>> {
        while let Some((key, first)) = staged.pop_front() {
            let run = staged.front().is_some_and(|(next, _)| *next == key);
            let envelope = match self.instances.get(&key).map(|entry| Arc::clone(&entry)) {
                Some(instance) if run => match self.deliver_run(&instance, &key, first, staged) {
                    Some(refused) => refused,
                    None => continue,
                },
                _ => first,
            };
            if let Some((envelope, cell)) = self.deliver_staged(&key, envelope) {
                staged.push_front((key, envelope));
                return Some(cell);
            }
        }
        None
    }

    /// Admits `first` and the messages for `key` after it into
    /// `instance`'s mailbox and sends them as one batch; answers the first
    /// one it could not admit (the rest stay in `staged`).
    fn deliver_run(
        &self,
        instance: &Instance<A>,
        key: &Arc<str>,
        first: Envelope<A>,
        staged: &mut Staged<A>,
    ) -> Option<Envelope<A>> {
        let mut batch = Vec::new();
        let mut next = first;
        let refused = loop {
            if !matches!(
                instance.cell.admit(self.mailbox_capacity),
                Admission::Admitted
            ) {
                break Some(next);
            }
            batch.push(next);
            match staged.pop_front() {
                Some((following, envelope)) if following == *key => next = envelope,
                Some(other) => {
                    staged.push_front(other);
                    break None;
                }
                None => break None,
            }
        };
        let Err(back) = instance.send_batch(batch) else {
            return refused;
        };
        // The host went away: all of them go the single way, in order.
        let mut back = back.into_iter();
        let first = back.next();
        if let Some(refused) = refused {
            staged.push_front((key.clone(), refused));
        }
        for envelope in back.rev() {
            staged.push_front((key.clone(), envelope));
        }
        first
    }

    /// Delivers `staged`, whose first is a tell its full mailbox (`cell`)
    /// refused, offering it again whenever that mailbox has room, until it
    /// is taken (or a while has passed without the host taking anything:
    /// then what waits for it is dropped, as a local tell to a full
    /// mailbox would have been refused).
    async fn hold_until_taken(self: Arc<Self>, mut staged: Staged<A>, mut cell: Arc<InstanceCell>) {
        let mut give_up = tokio::time::Instant::now() + REMOTE_TELL_HOLD;
        loop {
            let watched = Arc::clone(&cell);
            let room = watched.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            // Raised before the offer: a host that drains after it sees it.
            watched.waiting.store(true, Ordering::Release);
            let before = staged.len();
            let Some(full) = self.deliver_all(&mut staged) else {
                return;
            };
            let now = tokio::time::Instant::now();
            if staged.len() < before || !Arc::ptr_eq(&full, &cell) {
                cell = full;
                give_up = now + REMOTE_TELL_HOLD;
                continue;
            }
            if now >= give_up {
                // A host that has not taken a message for so long: drop
                // what waits for it (answering its asks), keep the rest.
                let (stuck, _) = staged.front().expect("a full mailbox stopped the delivery");
                let stuck = stuck.clone();
                tracing::warn!(kind = A::KIND, key = %stuck, "cluster: remote tells dropped, mailbox full");
                for (key, envelope) in std::mem::take(&mut staged) {
                    if key == stuck {
                        self.refuse(envelope, &key, Self::full);
                    } else {
                        staged.push_back((key, envelope));
                    }
                }
                give_up = now + REMOTE_TELL_HOLD;
                continue;
            }
            // Woken by the host; the cap only bounds a wait for a host that
            // went away without a word.
            let _ = tokio::time::timeout_at(give_up.min(now + ROOM_RECHECK), room).await;
        }
    }
}

/// Longest wait for a wake from a full mailbox's host before offering again.
const ROOM_RECHECK: std::time::Duration = std::time::Duration::from_millis(100);

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

    fn message_version(&self) -> (u32, u16) {
        (A::MESSAGE_ID, A::MESSAGE_VERSION)
    }

    fn stage(self: Arc<Self>) -> Box<dyn Stage> {
        Box::new(KindStage {
            kind: self,
            staged: VecDeque::new(),
        })
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
                Err(AgentError::Operator(OperatorError::UnknownInstance {
                    target: KindRuntime::<A>::target(&key),
                }))
            });
        };
        Box::pin(async move {
            // `send` waits for mailbox room: an operator action, not a client flood.
            addr.send(Operate {
                action,
                correlation_id,
            })
            .await
            .map_err(|_| {
                AgentError::Send(SendError::Stopped {
                    target: KindRuntime::<A>::target(&key),
                })
            })??;
            Ok(cell.snapshot(&key, capacity))
        })
    }
}
