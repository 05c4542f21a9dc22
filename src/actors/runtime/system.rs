//! `System`: the agent runtime of one node. It owns the actix arbiters the
//! instances run on, the per-kind registries, the store, the metrics and the
//! stream of supervision events.
//!
//! The arbiters live on a thread of their own, so `AgentRef`s work from any
//! thread or runtime: HTTP workers, tokio tasks, tests, benchmarks.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix_rt::{Arbiter, ArbiterHandle};
use tokio::sync::broadcast;

use crate::metrics::Metrics;
use crate::state::StateStore;

use super::agent::Agent;
use super::agent_ref::AgentRef;
use super::envelope::{CorrelationId, MessageId};
use super::error::{AgentError, SendError};
use super::events::DomainEvent;
use super::registry::{KindControl, KindRuntime, Stage};
use super::remote::{Remote, Route, decode_payload, encode_payload};
use super::supervisor::{
    InstanceSnapshot, InstanceStatus, LifecycleChange, OperatorAction, RestartStrategy,
    SupervisionEvent, SupervisionTree,
};

/// Settings of the agent runtime (the `[runtime]` table of the configuration).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Actix arbiters (event-loop threads) that host agent instances.
    pub workers: usize,
    /// Messages an instance's mailbox holds before `tell`/`ask` fail with `MailboxFull`.
    pub mailbox_capacity: usize,
    /// Idle time after which an instance is passivated (its state stays in the store).
    #[serde(with = "humantime_serde")]
    pub passivate_after: Duration,
    /// Default reply timeout of asks made on behalf of HTTP requests.
    #[serde(with = "humantime_serde")]
    pub ask_timeout: Duration,
    /// Restart strategies by agent kind, overriding each kind's own default.
    pub supervision: HashMap<String, RestartStrategy>,
}

impl Default for RuntimeConfig {
    fn default() -> RuntimeConfig {
        RuntimeConfig {
            workers: std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(2),
            mailbox_capacity: 1024,
            passivate_after: Duration::from_secs(300),
            ask_timeout: Duration::from_secs(5),
            supervision: HashMap::new(),
        }
    }
}

thread_local! {
    /// `(system id, worker index)` of the event loop running on this thread.
    static CURRENT_WORKER: std::cell::Cell<(u64, usize)> = const { std::cell::Cell::new((0, usize::MAX)) };
}

/// Message ids a thread takes from the node's counter at a time.
const MESSAGE_ID_BLOCK: u64 = 1 << 16;

thread_local! {
    /// `(system id, next id, end of block)` of this thread's message ids.
    static MESSAGE_IDS: std::cell::Cell<(u64, u64, u64)> = const { std::cell::Cell::new((0, 0, 0)) };
}

/// Distinguishes the systems of one process (tests run several).
static NEXT_SYSTEM_ID: AtomicU64 = AtomicU64::new(1);

/// What every kind's registry shares on this node.
pub(crate) struct NodeContext {
    id: u64,
    pub(crate) name: String,
    /// The TSC clock, held directly: reading it skips quanta's thread-local
    /// override check and global lookup on every message.
    pub(crate) clock: quanta::Clock,
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) metrics: Metrics,
    pub(crate) runtime: RuntimeConfig,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: AtomicUsize,
    next_message_id: AtomicU64,
    events: broadcast::Sender<SupervisionEvent>,
    /// Events travel shared: every subscriber's receive clones the
    /// pointer, not the event's JSON tree.
    pub(crate) domain_events: broadcast::Sender<Arc<DomainEvent>>,
    /// Events of every node of the cluster: this node's domain events and
    /// shared ones, and those peers forwarded. Streams to clients read it;
    /// the notifier does not (each event is notified once, where it arose).
    cluster_events: broadcast::Sender<Arc<DomainEvent>>,
    /// Rung once events are committed to the outbox, so the notifier
    /// dispatches this node's events at once instead of at its next poll.
    pub(crate) outbox_written: Arc<tokio::sync::Notify>,
    /// The event types the outbox keeps (the notifier keeps it current).
    pub(crate) wanted_events: Arc<super::events::WantedTypes>,
    /// Live instances of each tenant on this node, and the most a tenant
    /// may have (none set: no limit).
    pub(crate) tenants: TenantInstances,
    /// Where other nodes' instances are reached; none: every key is here.
    pub(crate) remote: OnceLock<Arc<dyn Remote>>,
    /// Counts changes of placement, for those who act on one (the remote
    /// rings it).
    pub(crate) placement: Arc<tokio::sync::watch::Sender<u64>>,
}

/// The most live instances a tenant may have on a node.
pub type InstanceQuota = Arc<dyn Fn(&str) -> Option<usize> + Send + Sync>;

/// Live instances per tenant on this node, checked before an activation.
#[derive(Default)]
pub(crate) struct TenantInstances {
    live: dashmap::DashMap<Box<str>, usize>,
    quota: std::sync::RwLock<Option<InstanceQuota>>,
}

impl TenantInstances {
    /// Whether an instance of `key`'s tenant may be activated; the
    /// refusal names the quota. Instances activating at once may pass the
    /// limit by their number.
    pub(crate) fn admit(&self, key: &str) -> Result<(), crate::Rejection> {
        let quota = self
            .quota
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let Some(quota) = quota else {
            return Ok(());
        };
        let tenant = crate::split_key(key).0;
        let Some(limit) = quota(tenant) else {
            return Ok(());
        };
        let live = self.live.get(tenant).map_or(0, |count| *count);
        if live < limit {
            return Ok(());
        }
        Err(crate::Rejection {
            code: crate::RejectionCode::QuotaExceeded,
            message: format!(
                "tenant `{tenant}` has {live} live agent instances on this node; its quota \
                 `max_active_instances` is {limit}"
            ),
            field: Some("max_active_instances".into()),
        })
    }

    pub(crate) fn activated(&self, key: &str) {
        *self.live.entry(crate::split_key(key).0.into()).or_default() += 1;
    }

    pub(crate) fn passivated(&self, key: &str) {
        let tenant = crate::split_key(key).0;
        if let Some(mut count) = self.live.get_mut(tenant) {
            *count = count.saturating_sub(1);
        }
        self.live.remove_if(tenant, |_, count| *count == 0);
    }
}

impl NodeContext {
    /// The event loop the next instance goes to, and its index.
    pub(crate) fn next_arbiter(&self) -> (usize, ArbiterHandle) {
        let index = self.next_arbiter.fetch_add(1, Ordering::Relaxed) % self.arbiters.len();
        (index, self.arbiters[index].clone())
    }

    pub(crate) fn num_workers(&self) -> usize {
        self.arbiters.len()
    }

    /// Whether the calling thread is event loop `worker` of this node.
    pub(crate) fn is_current_worker(&self, worker: usize) -> bool {
        CURRENT_WORKER.with(|current| current.get() == (self.id, worker))
    }

    /// Unique on this node. Each thread takes ids from a block of its own,
    /// so minting one is a thread-local increment, not a shared atomic.
    pub(crate) fn next_message_id(&self) -> MessageId {
        MESSAGE_IDS.with(|ids| {
            let (system, next, end) = ids.get();
            let (next, end) = if system == self.id && next < end {
                (next, end)
            } else {
                let start = self
                    .next_message_id
                    .fetch_add(MESSAGE_ID_BLOCK, Ordering::Relaxed);
                (start, start + MESSAGE_ID_BLOCK)
            };
            ids.set((self.id, next + 1, end));
            MessageId(next)
        })
    }

    /// The owner's node of `(kind, key)` when that is not this one.
    #[inline]
    pub(crate) fn route(&self, kind: &str, key: &str) -> Option<(&dyn Remote, Route)> {
        let remote = self.remote.get()?;
        remote
            .route(kind, key)
            .map(|route| (remote.as_ref(), route))
    }

    fn is_solo(&self) -> bool {
        self.remote.get().is_none_or(|remote| remote.is_solo())
    }

    /// Publishes domain events (no subscriber is fine), here and to the
    /// cluster's streams.
    pub(crate) fn publish(&self, events: Vec<DomainEvent>) {
        if events.is_empty() {
            return;
        }
        // No stream listening and no peer: no copy.
        let shared = self.cluster_events.receiver_count() > 0 || !self.is_solo();
        for event in events {
            let event = Arc::new(event);
            if shared {
                self.share(Arc::clone(&event));
            }
            let _ = self.domain_events.send(event);
        }
    }

    /// To every node's stream subscribers, this one's included.
    pub(crate) fn share(&self, event: Arc<DomainEvent>) {
        if let Some(remote) = self.remote.get().filter(|remote| !remote.is_solo()) {
            match encode_payload(event.as_ref()) {
                Ok(payload) => {
                    remote.share(&event.source, event.correlation_id.as_deref(), payload);
                }
                Err(error) => tracing::warn!(%error, "cannot encode an event to share"),
            }
        }
        let _ = self.cluster_events.send(event);
    }

    pub(crate) fn emit(&self, kind: &'static str, key: &Arc<str>, change: LifecycleChange) {
        // No subscriber is fine; a lagging one loses the oldest events.
        let _ = self.events.send(SupervisionEvent {
            kind,
            key: key.clone(),
            change,
            at: Instant::now(),
        });
    }
}

struct RegisteredKind {
    typed: Arc<dyn Any + Send + Sync>,
    control: Arc<dyn KindControl>,
}

struct ActixThread {
    system: actix_rt::System,
    thread: JoinHandle<()>,
}

struct SystemInner {
    node: Arc<NodeContext>,
    kinds: RwLock<BTreeMap<&'static str, RegisteredKind>>,
    actix: Mutex<Option<ActixThread>>,
}

impl Drop for SystemInner {
    fn drop(&mut self) {
        let actix = self.actix.get_mut().map(Option::take).unwrap_or(None);
        stop_actix(actix);
    }
}

fn stop_actix(actix: Option<ActixThread>) {
    if let Some(actix) = actix {
        actix.system.stop();
        let _ = actix.thread.join();
    }
}

/// A [`System`] that may have stopped.
#[derive(Clone)]
pub struct WeakSystem {
    inner: std::sync::Weak<SystemInner>,
}

impl WeakSystem {
    pub fn upgrade(&self) -> Option<System> {
        self.inner.upgrade().map(|inner| System { inner })
    }
}

/// The agent runtime of one node. Cheap to clone; the arbiters stop when
/// [`System::shutdown`] is called or the last clone is dropped.
#[derive(Clone)]
pub struct System {
    inner: Arc<SystemInner>,
}

impl System {
    /// Starts the arbiters. `node_name` names this node in the supervision tree.
    pub fn start(
        node_name: impl Into<String>,
        runtime: RuntimeConfig,
        store: impl StateStore,
    ) -> std::io::Result<System> {
        System::start_with_clock(node_name, runtime, store, quanta::Clock::new())
    }

    /// [`System::start`] with the clock that times deadlines and idleness:
    /// tests pass a mock (`quanta::Clock::mock`) and move time themselves.
    pub fn start_with_clock(
        node_name: impl Into<String>,
        runtime: RuntimeConfig,
        store: impl StateStore,
        clock: quanta::Clock,
    ) -> std::io::Result<System> {
        let workers = runtime.workers.max(1);
        let (ready, arbiters) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("valueverse-actors".into())
            .spawn(move || {
                let system = actix_rt::System::new();
                let arbiters: Vec<Arbiter> =
                    system.block_on(async { (0..workers).map(|_| Arbiter::new()).collect() });
                let handles: Vec<ArbiterHandle> = arbiters.iter().map(Arbiter::handle).collect();
                if ready.send((actix_rt::System::current(), handles)).is_err() {
                    return;
                }
                let _ = system.run();
                for arbiter in arbiters {
                    arbiter.stop();
                    let _ = arbiter.join();
                }
            })?;
        let (system, arbiters) = arbiters
            .recv()
            .map_err(|_| std::io::Error::other("actor threads failed to start"))?;
        let (events, _) = broadcast::channel(4096);
        // A subscriber more than this many events behind loses the oldest
        // (and says so in its log): memory stays bounded.
        let (domain_events, _) = broadcast::channel(16_384);
        let (cluster_events, _) = broadcast::channel(16_384);
        let id = NEXT_SYSTEM_ID.fetch_add(1, Ordering::Relaxed);
        for (index, arbiter) in arbiters.iter().enumerate() {
            // Until this runs, asks from that thread take the timer path: safe.
            arbiter.spawn_fn(move || CURRENT_WORKER.with(|current| current.set((id, index))));
        }
        let name: String = node_name.into();
        let node = NodeContext {
            id,
            remote: OnceLock::new(),
            placement: Arc::new(tokio::sync::watch::Sender::new(0)),
            name,
            clock,
            store: Arc::new(store),
            metrics: Metrics::new(),
            runtime,
            arbiters,
            next_arbiter: AtomicUsize::new(0),
            next_message_id: AtomicU64::new(1),
            events,
            domain_events,
            cluster_events,
            outbox_written: Arc::new(tokio::sync::Notify::new()),
            wanted_events: Arc::default(),
            tenants: TenantInstances::default(),
        };
        Ok(System {
            inner: Arc::new(SystemInner {
                node: Arc::new(node),
                kinds: RwLock::new(BTreeMap::new()),
                actix: Mutex::new(Some(ActixThread { system, thread })),
            }),
        })
    }

    /// A handle that does not keep the runtime alive.
    pub fn downgrade(&self) -> WeakSystem {
        WeakSystem {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// Messages for keys `remote` places on other nodes go through it
    /// from now on. A node has one remote at most: a second is refused.
    pub fn attach_remote(&self, remote: Arc<dyn Remote>) -> Result<(), Arc<dyn Remote>> {
        self.inner.node.remote.set(remote)
    }

    /// What a remote rings at each change of placement.
    pub fn placement_changes(&self) -> Arc<tokio::sync::watch::Sender<u64>> {
        Arc::clone(&self.inner.node.placement)
    }

    /// Wakes at every change of placement.
    pub fn watch_placement(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.node.placement.subscribe()
    }

    /// Whether `(kind, key)` is owned here in the current view.
    pub fn is_local(&self, kind: &str, key: &str) -> bool {
        self.inner.node.route(kind, key).is_none()
    }

    /// Whether this node is the whole view (no remote, or one that sees
    /// no other member).
    pub fn is_solo(&self) -> bool {
        self.inner.node.is_solo()
    }

    /// After a change of placement: instances whose keys another node owns
    /// now passivate once idle. Answers how many were asked to.
    pub fn hand_off_unowned(&self) -> usize {
        let controls = self.controls();
        controls
            .iter()
            .map(|control| control.hand_off_unowned())
            .sum()
    }

    /// The kinds registered on this node.
    pub fn kinds(&self) -> Vec<String> {
        self.read_kinds()
            .keys()
            .map(|kind| (*kind).to_owned())
            .collect()
    }

    /// `(message id, version)` of every kind registered here: what this
    /// node tells its peers it speaks.
    pub fn message_versions(&self) -> Vec<(u32, u16)> {
        self.controls()
            .iter()
            .map(|control| control.message_version())
            .collect()
    }

    /// Where one link's messages for `kind` wait to be delivered here;
    /// `None` when no agent of that kind is registered.
    pub fn stage(&self, kind: &str) -> Option<Box<dyn Stage>> {
        self.control(kind).ok().map(KindControl::stage)
    }

    /// Registers a kind so that it shows in the supervision tree before its
    /// first message. Sending to an unregistered kind registers it too.
    pub fn register<A: Agent>(&self) -> &System {
        self.kind::<A>();
        self
    }

    /// Sets the most live instances each tenant may have on this node
    /// (`None` from the function: no limit for that tenant).
    pub fn set_instance_quota(&self, quota: InstanceQuota) {
        *self
            .inner
            .node
            .tenants
            .quota
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(quota);
    }

    /// A reference to the instance `(tenant, A::KIND, id)`, wherever it
    /// lives.
    pub fn agent<A: Agent>(&self, tenant: &crate::Tenant, id: &str) -> AgentRef<A> {
        AgentRef::new(self.kind::<A>(), tenant.key(id))
    }

    /// A reference to the instance of `A::KIND` under an instance key (one
    /// [`crate::Tenant::key`] made, or read back from the store).
    pub fn agent_by_key<A: Agent>(&self, key: impl Into<Arc<str>>) -> AgentRef<A> {
        AgentRef::new(self.kind::<A>(), key.into())
    }

    fn kind<A: Agent>(&self) -> Arc<KindRuntime<A>> {
        let downcast = |registered: &RegisteredKind| {
            Arc::clone(&registered.typed)
                .downcast::<KindRuntime<A>>()
                .unwrap_or_else(|_| panic!("two agent types declare the kind name `{}`", A::KIND))
        };
        if let Some(registered) = self.read_kinds().get(A::KIND) {
            return downcast(registered);
        }
        let mut kinds = self
            .inner
            .kinds
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // A message id names a kind on the wire: two kinds with one id
        // would take each other's messages from other nodes. A wiring
        // mistake, refused at registration like a kind name used twice.
        let clash = match kinds.contains_key(A::KIND) {
            true => None,
            false => kinds
                .iter()
                .find(|(_, registered)| registered.control.message_version().0 == A::MESSAGE_ID)
                .map(|(kind, _)| *kind),
        };
        if let Some(kind) = clash {
            drop(kinds);
            panic!(
                "agent kinds `{kind}` and `{}` declare the same MESSAGE_ID {:#x}",
                A::KIND,
                A::MESSAGE_ID
            );
        }
        let registered = kinds.entry(A::KIND).or_insert_with(|| {
            let node = &self.inner.node;
            let strategy = node
                .runtime
                .supervision
                .get(A::KIND)
                .cloned()
                .unwrap_or_else(A::strategy);
            let runtime = Arc::new(KindRuntime::<A>::new(Arc::clone(node), strategy));
            RegisteredKind {
                typed: runtime.clone(),
                control: runtime,
            }
        });
        downcast(registered)
    }

    fn read_kinds(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<&'static str, RegisteredKind>> {
        self.inner
            .kinds
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every kind's control, taken out of the lock (their calls may block).
    fn controls(&self) -> Vec<Arc<dyn KindControl>> {
        self.read_kinds()
            .values()
            .map(|registered| Arc::clone(&registered.control))
            .collect()
    }

    fn control(&self, kind: &str) -> Result<Arc<dyn KindControl>, AgentError> {
        self.read_kinds()
            .get(kind)
            .map(|registered| Arc::clone(&registered.control))
            .ok_or_else(|| {
                AgentError::Send(SendError::UnknownKind {
                    kind: kind.to_owned(),
                })
            })
    }

    pub fn runtime_config(&self) -> &RuntimeConfig {
        &self.inner.node.runtime
    }

    pub fn node_name(&self) -> &str {
        &self.inner.node.name
    }

    /// The store the instances' state lives in.
    pub fn state(&self) -> &dyn StateStore {
        &*self.inner.node.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.node.metrics
    }

    /// The live supervision tree of this node.
    pub fn supervision_tree(&self) -> SupervisionTree {
        let controls = self.controls();
        SupervisionTree {
            node: self.inner.node.name.clone(),
            supervisors: controls.iter().map(|control| control.snapshot()).collect(),
        }
    }

    /// Brings a failed instance back: restart history cleared, state reloaded.
    /// `correlation_id` ties the reset to the request that asked for it.
    pub async fn reset(
        &self,
        kind: &str,
        key: &str,
        correlation_id: Option<CorrelationId>,
    ) -> Result<InstanceSnapshot, AgentError> {
        self.control(kind)?
            .operate(key, OperatorAction::Reset, correlation_id)
            .await
    }

    /// Fault injection: a running instance fails as if its handler had, and
    /// its supervisor restarts it (or escalates). Admin only, over HTTP.
    pub async fn crash(
        &self,
        kind: &str,
        key: &str,
        reason: String,
        correlation_id: Option<CorrelationId>,
    ) -> Result<InstanceSnapshot, AgentError> {
        self.control(kind)?
            .operate(key, OperatorAction::Crash { reason }, correlation_id)
            .await
    }

    /// Lifecycle changes of every instance on this node, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SupervisionEvent> {
        self.inner.node.events.subscribe()
    }

    /// Rung whenever this node committed domain events to the outbox.
    pub fn outbox_written(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.inner.node.outbox_written)
    }

    /// The event types the outbox keeps: the notifier sets them from the
    /// active subscriptions.
    pub fn wanted_events(&self) -> Arc<super::events::WantedTypes> {
        Arc::clone(&self.inner.node.wanted_events)
    }

    /// Domain events of every agent on this node, from now on.
    pub fn subscribe_domain_events(&self) -> broadcast::Receiver<Arc<DomainEvent>> {
        self.inner.node.domain_events.subscribe()
    }

    /// Events of every node of the cluster, from now on: what streams to
    /// clients follow, wherever the instance lives.
    pub fn subscribe_cluster_events(&self) -> broadcast::Receiver<Arc<DomainEvent>> {
        self.inner.node.cluster_events.subscribe()
    }

    /// Shares an event with the cluster's streams only (live progress,
    /// which the notifier has no business with).
    pub fn share(&self, event: DomainEvent) {
        self.inner.node.share(Arc::new(event));
    }

    /// An event another node shared.
    /// An event another node shared (encoded as [`Remote::share`] got it):
    /// to this node's stream subscribers. One that does not decode is
    /// dropped: streams are best effort.
    pub fn receive_shared(&self, payload: &[u8]) {
        match decode_payload::<DomainEvent>(payload) {
            Ok(event) => {
                let _ = self.inner.node.cluster_events.send(Arc::new(event));
            }
            Err(error) => tracing::debug!(%error, "an undecodable shared event dropped"),
        }
    }

    /// Prometheus text of this node's metrics, gauges refreshed from the tree.
    pub fn render_metrics(&self) -> String {
        let agents = &self.inner.node.metrics.agents;
        for supervisor in self.supervision_tree().supervisors {
            let depth: usize = supervisor.instances.iter().map(|i| i.mailbox_depth).sum();
            agents
                .mailbox_depth
                .with_label_values(&[&supervisor.kind])
                .set(depth as i64);
            let fill = supervisor
                .instances
                .iter()
                .map(|i| i.mailbox_depth as f64 / i.mailbox_capacity.max(1) as f64)
                .fold(0.0, f64::max);
            agents
                .mailbox_fill
                .with_label_values(&[&supervisor.kind])
                .set(fill);
            for status in [
                InstanceStatus::Active,
                InstanceStatus::Restarting,
                InstanceStatus::Failed,
            ] {
                let count = supervisor
                    .instances
                    .iter()
                    .filter(|i| i.status == status)
                    .count();
                agents
                    .instances
                    .with_label_values(&[supervisor.kind.as_str(), &status.to_string()])
                    .set(count as i64);
            }
        }
        self.inner.node.metrics.render()
    }

    /// Runs `future` on one of the runtime's event-loop threads, next to agent
    /// instances (with one worker: on the same thread as every instance).
    /// Returns false once the runtime has shut down.
    pub fn spawn<F>(&self, future: F) -> bool
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.inner.node.next_arbiter().1.spawn(future)
    }

    /// Stops every instance and the arbiters. Messages still queued are
    /// dropped and their askers get `Stopped`.
    pub fn shutdown(&self) {
        let actix = self
            .inner
            .actix
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        stop_actix(actix);
    }
}
