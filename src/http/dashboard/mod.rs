//! The dashboard's data: one frame of the whole cluster (members, each
//! node's supervision tree and activity, sagas, simulations,
//! notifications), built once per interval per audience while somebody
//! of it watches, and shared by that audience's viewers. The operator's
//! frame (`platform` role) shows every tenant's instances and jobs and no
//! tenant's business panels; a tenant's frame shows its own instances,
//! jobs, sagas and deliveries and none of the node-wide activity.
//!
//! A tenant's frame also carries the realization of its latest active
//! plans' models (at most [`REALIZATION_MODELS`], [`REALIZATION_DAYS`]
//! daily points each): read from the store at most once per
//! [`REALIZATION_REFRESH`] per tenant (the snapshots are daily), not per
//! frame.
//!
//! Cost: with nobody watching the builder sleeps on a `Notify` and does
//! nothing; a sampler reads a few atomic counters every two seconds so that
//! a viewer who arrives sees the last minutes. Any number of viewers share
//! one frame (one build, one serialization per interval).

mod assets;
pub(crate) mod routes;

pub(crate) use assets::asset;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{IntCounter, IntGauge};
use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::schemas::notifier::{FailedAttempt, RecentNotification};
use crate::schemas::sagas::SagaSummary;
use crate::schemas::simulation::{JobProgress, JobStatus};
use crate::schemas::simulations::QueueSnapshot;
use crate::schemas::supervision::{InstanceSnapshot, InstanceStatus};
use crate::schemas::{ClusterView, Device, SimulationResult};
use valueverse_agents::Records;
use valueverse_agents::amplifier;
use valueverse_agents::executor::{PlanStatus, list_plans};
use valueverse_agents::notifications::Notifications;
use valueverse_agents::sagas::{SagaStatus, latest_sagas, list_sagas};
use valueverse_agents::simulation::{SimulationJob, SimulationRequest, latest_jobs};
use valueverse_agents::simulations::Simulations;
use valueverse_cluster::node::ClusterNode;
use valueverse_cluster::peer_requests::{self, PeerRequests};
use valueverse_runtime::{StateError, unix_millis};
use valueverse_runtime::{System, Tenant};

/// How often a watched dashboard is rebuilt.
pub const FRAME_INTERVAL: Duration = Duration::from_secs(1);
/// How often activity is sampled, and how many samples are kept (5 min).
const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);
const SAMPLES_KEPT: usize = 150;
/// Instances shown per kind: failed and busy ones first.
const INSTANCES_SHOWN: usize = 40;
/// How long a peer may take to answer before its panel shows it unreachable.
const PEER_TIMEOUT: Duration = Duration::from_millis(800);
/// Models with a realization chart at most: those of the tenant's latest
/// [`REALIZATION_PLANS_READ`] active plans, newest first.
const REALIZATION_MODELS: usize = 6;
const REALIZATION_PLANS_READ: i64 = 12;
/// Daily points per chart at most: the last this many days.
const REALIZATION_DAYS: u32 = 90;
/// How long a tenant's realization charts are reused before the store is
/// read again (snapshots are taken once a day).
const REALIZATION_REFRESH: Duration = Duration::from_secs(30);

/// Activity of a node at one moment: running totals.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub at_ms: i64,
    pub messages: u64,
    pub restarts: u64,
}

/// One kind's supervisor on one node, trimmed for the page.
#[derive(Debug, Clone, Serialize)]
pub struct KindPanel {
    pub kind: String,
    pub num_active: usize,
    pub num_restarting: usize,
    pub num_failed: usize,
    /// Instances in the tree (only the first [`INSTANCES_SHOWN`] are listed).
    pub instances_total: usize,
    pub instances: Vec<InstanceSnapshot>,
    pub messages_total: u64,
    pub restarts_total: u64,
    /// Messages handled per second over the last sample interval.
    pub messages_per_second: f64,
}

/// What one node shows of itself.
#[derive(Debug, Clone, Serialize)]
pub struct NodePanel {
    pub node: String,
    pub at_ms: i64,
    pub kinds: Vec<KindPanel>,
    pub history: Vec<Sample>,
    pub simulations: QueueSnapshot,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SagaPanel {
    pub running_total: i64,
    pub compensating_total: i64,
    pub needs_attention_total: i64,
    /// Running, compensating and needs_attention sagas, newest first
    /// (summaries: no inputs or step outputs, which can be large).
    pub in_flight: Vec<SagaSummary>,
    /// The latest sagas that ended.
    pub recent: Vec<SagaSummary>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NotificationPanel {
    pub recent: Vec<RecentNotification>,
    pub failures: Vec<FailedAttempt>,
}

/// The frame last answered to an audience's polls, and when it was built.
type Polled = Option<(std::time::Instant, Arc<str>)>;

/// A tenant's realization charts and when they were read from the store.
type RealizationRead = (std::time::Instant, Arc<Vec<RealizationChart>>);

/// Whose frame: the operator's (`None`) or a tenant's.
pub type Audience = Option<Tenant>;

/// Audiences with a frame kept at most (a frame is per tenant watching).
const AUDIENCES_KEPT: usize = 1024;

/// Everything the page shows, as one JSON frame.
#[derive(Debug, Clone, Serialize)]
pub struct Frame {
    pub at_ms: i64,
    /// The node that built the frame.
    pub node: String,
    pub viewers: usize,
    pub cluster: ClusterView,
    /// Each member's panel, or `{node, error}` where it did not answer.
    pub nodes: Vec<serde_json::Value>,
    pub sagas: SagaPanel,
    /// The latest simulation jobs, with results where finished.
    pub simulations: Vec<RecentJob>,
    pub notifications: NotificationPanel,
    /// The tenant's latest audit entries (none in the operator's frame).
    pub audit: Vec<crate::audit::AuditView>,
    /// The realization of the models of the tenant's latest active plans,
    /// those with snapshots (none in the operator's frame).
    pub realization: Arc<Vec<RealizationChart>>,
}

/// One model's daily realization (its active plans together), oldest day
/// first: what its commitments ask to date and what was delivered.
#[derive(Debug, Clone, Serialize)]
pub struct RealizationChart {
    pub model_id: String,
    pub points: Vec<RealizationPoint>,
}

/// One day of a [`RealizationChart`]; values to the cent, the percentage
/// to a hundredth (a frame is sent every second).
#[derive(Debug, Clone, Serialize)]
pub struct RealizationPoint {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Gross value the commitments ask to date.
    pub committed: f64,
    /// Gross value delivered to date.
    pub realized: f64,
    /// Realized over committed, in percent (`null` while nothing is
    /// committed yet).
    pub realization_percent: Option<f64>,
}

/// To the hundredth: cents of value, hundredths of a percent.
fn hundredths(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// A recent simulation job as the page shows it: the request without its
/// model, the result without its raw quantiles (the page draws the
/// histogram, the tornado and the summary).
#[derive(Debug, Clone, Serialize)]
pub struct RecentJob {
    pub id: String,
    pub status: JobStatus,
    pub submitter: String,
    pub model_id: Option<String>,
    pub model_version: Option<i64>,
    pub model_name: String,
    pub request: RecentRequest,
    pub engine: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub attempts: u32,
    pub cancel_requested: bool,
    pub progress: Option<JobProgress>,
    pub result: Option<Box<SimulationResult>>,
    pub error: Option<String>,
}

/// What a recent job was asked to do, its model aside.
#[derive(Debug, Clone, Serialize)]
pub struct RecentRequest {
    pub paths: u64,
    pub seed: u64,
    pub device: Device,
    pub bins: usize,
    pub stop_at_rel_se: Option<f64>,
}

impl From<SimulationJob> for RecentJob {
    fn from(job: SimulationJob) -> RecentJob {
        let SimulationRequest {
            model,
            paths,
            seed,
            seed_by_server: _,
            device,
            bins,
            stop_at_rel_se,
        } = job.request;
        RecentJob {
            // The job's key names its tenant; the page shows the id.
            id: valueverse_runtime::split_key(&job.id).1.to_owned(),
            status: job.status.into(),
            submitter: job.submitter,
            model_id: job.model_id,
            model_version: job.model_version,
            model_name: model.name,
            request: RecentRequest {
                paths,
                seed,
                device: device.into(),
                bins,
                stop_at_rel_se,
            },
            engine: job.engine,
            created_at: job.created_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
            attempts: job.attempts,
            cancel_requested: job.cancel_requested,
            progress: job.progress.map(Into::into),
            result: job.result.map(|result| {
                let mut result = SimulationResult::from(*result);
                result.npv_quantiles = Vec::new();
                Box::new(result)
            }),
            error: job.error,
        }
    }
}

struct Metrics {
    viewers: IntGauge,
    frames: IntCounter,
}

struct Inner {
    system: System,
    records: Records,
    simulations: Simulations,
    notifications: Notifications,
    api_keys: valueverse_agents::auth::ApiKeys,
    cluster: ClusterNode,
    /// Signs panel requests to peers; `None` in a cluster of one.
    peers: Arc<PeerRequests>,
    http: reqwest::Client,
    history: Mutex<History>,
    /// Each audience's latest frame's JSON: every viewer's socket sends
    /// its audience's one buffer (a clone is a reference count, not a
    /// copy).
    frames: Mutex<HashMap<Audience, watch::Sender<Option<bytestring::ByteString>>>>,
    /// Per audience, the frame last answered to a client that polls, and
    /// when it was built: polls within its second share it (the lock makes
    /// concurrent polls wait for one build).
    polled: Mutex<HashMap<Audience, Arc<tokio::sync::Mutex<Polled>>>>,
    /// Per tenant, its realization charts and when they were read.
    realization: Mutex<HashMap<Tenant, RealizationRead>>,
    wake: Arc<Notify>,
    metrics: Metrics,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

#[derive(Default)]
struct History {
    samples: VecDeque<Sample>,
    /// Per kind: the last totals and the rate between the last two samples.
    kinds: HashMap<String, (u64, f64)>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(|p| p.into_inner());
        for task in tasks.drain(..) {
            task.abort();
        }
    }
}

/// The dashboard of one node. Cheap to clone.
#[derive(Clone)]
pub struct Dashboard {
    inner: Arc<Inner>,
}

/// A viewer's subscription: frames as they are built. Dropping it is
/// leaving; the builder stops when the last viewer leaves.
pub struct Viewer {
    pub frames: watch::Receiver<Option<bytestring::ByteString>>,
    inner: Arc<Inner>,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        // The receiver is still counted here, hence the minus one.
        let left = self.inner.viewers().saturating_sub(1);
        self.inner.metrics.viewers.set(left as i64);
    }
}

impl Dashboard {
    /// Starts the sampler and the (idle) frame builder. Must be called
    /// inside a tokio runtime.
    pub fn start(
        system: System,
        records: Records,
        simulations: Simulations,
        notifications: Notifications,
        api_keys: valueverse_agents::auth::ApiKeys,
        cluster: ClusterNode,
        peers: Arc<PeerRequests>,
    ) -> Dashboard {
        let registry = system.metrics().registry();
        let viewers = IntGauge::new(
            "valueverse_dashboard_viewers",
            "Dashboard viewers connected to this node",
        )
        .expect("valid metric");
        let frames = IntCounter::new(
            "valueverse_dashboard_frames_total",
            "Dashboard frames built by this node (none while nobody watches)",
        )
        .expect("valid metric");
        registry
            .register(Box::new(viewers.clone()))
            .and_then(|()| registry.register(Box::new(frames.clone())))
            .expect("dashboard metrics registered once per node");
        let inner = Arc::new(Inner {
            system,
            records,
            simulations,
            notifications,
            api_keys,
            cluster,
            peers,
            // No redirect: it would carry the signature elsewhere.
            http: reqwest::Client::builder()
                .timeout(PEER_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            history: Mutex::new(History::default()),
            frames: Mutex::new(HashMap::new()),
            polled: Mutex::new(HashMap::new()),
            realization: Mutex::new(HashMap::new()),
            wake: Arc::new(Notify::new()),
            metrics: Metrics { viewers, frames },
            tasks: Mutex::new(Vec::new()),
        });
        inner.sample();
        let sampler = tokio::spawn(sample_forever(Arc::downgrade(&inner)));
        let builder = tokio::spawn(build_while_watched(
            Arc::downgrade(&inner),
            Arc::clone(&inner.wake),
        ));
        inner.tasks().extend([sampler, builder]);
        Dashboard { inner }
    }

    /// Joins the viewers; the first frame comes within one interval (at
    /// once if one was built recently).
    pub fn watch(&self, audience: Audience) -> Viewer {
        let inner = &self.inner;
        let frames = {
            let mut senders = inner.senders();
            if senders.len() >= AUDIENCES_KEPT {
                senders.retain(|_, sender| sender.receiver_count() > 0);
            }
            senders
                .entry(audience)
                .or_insert_with(|| watch::Sender::new(None))
                .subscribe()
        };
        inner.metrics.viewers.set(inner.viewers() as i64);
        inner.wake.notify_one();
        Viewer {
            frames,
            inner: Arc::clone(inner),
        }
    }

    /// The frame as JSON for a client that polls (`GET /api/v1/dashboard`):
    /// built at most once per [`FRAME_INTERVAL`], however many poll.
    pub async fn frame_json(&self, audience: Audience) -> Result<Arc<str>, StateError> {
        // One lock per audience: a tenant's polls never wait for another's
        // build.
        let slot = {
            let mut polled = self.inner.polled.lock().unwrap_or_else(|p| p.into_inner());
            if polled.len() >= AUDIENCES_KEPT {
                polled.retain(|_, slot| Arc::strong_count(slot) > 1);
            }
            Arc::clone(polled.entry(audience.clone()).or_default())
        };
        let mut polled = slot.lock().await;
        if let Some((built, json)) = polled.as_ref()
            && built.elapsed() < FRAME_INTERVAL
        {
            return Ok(Arc::clone(json));
        }
        let frame = self.inner.frame(audience.as_ref()).await?;
        self.inner.metrics.frames.inc();
        let json: Arc<str> = serde_json::to_string(&frame)
            .unwrap_or_else(|error| format!("{{\"error\":\"{error}\"}}"))
            .into();
        *polled = Some((std::time::Instant::now(), Arc::clone(&json)));
        Ok(json)
    }

    /// This node's own panel for an audience (peers fetch it to build
    /// their frames).
    pub fn node_panel(&self, audience: Option<&Tenant>) -> NodePanel {
        self.inner.node_panel(audience)
    }
}

async fn sample_forever(inner: Weak<Inner>) {
    let mut every = tokio::time::interval(SAMPLE_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.sample();
    }
}

async fn build_while_watched(inner: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        // The audiences somebody watches; the others are forgotten.
        let watched: Vec<(Audience, watch::Sender<Option<bytestring::ByteString>>)> = {
            let mut senders = strong.senders();
            senders.retain(|_, sender| sender.receiver_count() > 0);
            senders
                .iter()
                .map(|(audience, sender)| (audience.clone(), sender.clone()))
                .collect()
        };
        if watched.is_empty() {
            drop(strong);
            wake.notified().await;
            continue;
        }
        for (audience, sender) in watched {
            match strong.frame(audience.as_ref()).await {
                Ok(frame) => match serde_json::to_string(&frame) {
                    Ok(text) => {
                        strong.metrics.frames.inc();
                        sender.send_replace(Some(text.into()));
                    }
                    Err(error) => tracing::warn!(%error, "dashboard: cannot encode a frame"),
                },
                Err(error) => tracing::warn!(%error, "dashboard: cannot read the store"),
            }
        }
        drop(strong);
        tokio::time::sleep(FRAME_INTERVAL).await;
    }
}

impl Inner {
    fn tasks(&self) -> std::sync::MutexGuard<'_, Vec<tokio::task::JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn senders(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Audience, watch::Sender<Option<bytestring::ByteString>>>>
    {
        self.frames.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Viewers of every audience.
    fn viewers(&self) -> usize {
        self.senders()
            .values()
            .map(watch::Sender::receiver_count)
            .sum()
    }

    fn sample(&self) {
        let now = unix_millis();
        let activity = self.system.metrics().activity();
        let mut history = self.history();
        let elapsed = history
            .samples
            .back()
            .map(|last| (now - last.at_ms) as f64 / 1000.0);
        for kind in &activity {
            let (last, rate) = history.kinds.entry(kind.kind.clone()).or_default();
            if let Some(seconds) = elapsed.filter(|s| *s > 0.0) {
                *rate = kind.messages.saturating_sub(*last) as f64 / seconds;
            }
            *last = kind.messages;
        }
        if history.samples.len() == SAMPLES_KEPT {
            history.samples.pop_front();
        }
        history.samples.push_back(Sample {
            at_ms: now,
            messages: activity.iter().map(|kind| kind.messages).sum(),
            restarts: activity.iter().map(|kind| kind.restarts).sum(),
        });
    }

    fn node_panel(&self, audience: Option<&Tenant>) -> NodePanel {
        let tree = match audience {
            None => self.system.supervision_tree(),
            Some(tenant) => self.system.supervision_tree().of_tenant(tenant),
        };
        let activity: HashMap<String, (u64, u64)> = self
            .system
            .metrics()
            .activity()
            .into_iter()
            .map(|kind| (kind.kind, (kind.messages, kind.restarts)))
            .collect();
        let history = self.history();
        let kinds = tree
            .supervisors
            .into_iter()
            .map(|supervisor| {
                // Node-wide figures (every tenant's messages): the
                // operator's only.
                let (messages_total, restarts_total) = match audience {
                    None => activity.get(&supervisor.kind).copied().unwrap_or_default(),
                    Some(_) => (0, 0),
                };
                let messages_per_second = match audience {
                    None => history
                        .kinds
                        .get(&supervisor.kind)
                        .map_or(0.0, |(_, rate)| *rate),
                    Some(_) => 0.0,
                };
                let instances_total = supervisor.instances.len();
                let mut instances = supervisor.instances;
                instances.sort_by(|a, b| {
                    rank(a.status.into())
                        .cmp(&rank(b.status.into()))
                        .then(b.mailbox_depth.cmp(&a.mailbox_depth))
                        .then(b.messages_handled.cmp(&a.messages_handled))
                });
                instances.truncate(INSTANCES_SHOWN);
                let instances = instances.into_iter().map(InstanceSnapshot::from).collect();
                KindPanel {
                    kind: supervisor.kind,
                    num_active: supervisor.num_active,
                    num_restarting: supervisor.num_restarting,
                    num_failed: supervisor.num_failed,
                    instances_total,
                    instances,
                    messages_total,
                    restarts_total,
                    messages_per_second,
                }
            })
            .collect();
        NodePanel {
            node: tree.node,
            at_ms: unix_millis(),
            kinds,
            history: match audience {
                None => history.samples.iter().cloned().collect(),
                Some(_) => Vec::new(),
            },
            simulations: self.simulations.queue(audience).into(),
        }
    }

    async fn frame(&self, audience: Option<&Tenant>) -> Result<Frame, StateError> {
        let cluster = self.cluster.view().await;
        let me = self.system.node_name().to_owned();
        let peers = cluster
            .members
            .iter()
            .filter(|member| !member.is_self && member.state != "down")
            .map(|member| self.peer_panel(member.node.clone(), member.http_addr.clone(), audience));
        let (peers, sagas, simulations, notifications, audit, realization) = tokio::join!(
            futures_util::future::join_all(peers),
            self.sagas(audience),
            self.recent_simulations(audience),
            self.notifications(audience),
            self.audit(audience),
            self.realization(audience),
        );
        let own = serde_json::to_value(self.node_panel(audience)).unwrap_or_default();
        let mut nodes = vec![own];
        nodes.extend(peers);
        Ok(Frame {
            at_ms: unix_millis(),
            node: me,
            // The operator sees every viewer; a tenant its own.
            viewers: match audience {
                None => self.viewers(),
                Some(tenant) => self
                    .senders()
                    .get(&Some(tenant.clone()))
                    .map_or(0, watch::Sender::receiver_count),
            },
            cluster: match audience {
                None => cluster.into(),
                Some(_) => ClusterView::from(cluster).for_tenant(),
            },
            nodes,
            sagas: sagas?,
            simulations: simulations?,
            notifications: notifications?,
            audit: audit?,
            realization: realization?,
        })
    }

    async fn peer_panel(
        &self,
        node: String,
        http_addr: String,
        audience: Option<&Tenant>,
    ) -> serde_json::Value {
        let unreachable = |error: String| serde_json::json!({ "node": node, "error": error });
        // A tenant's panel is asked for by name (signed with the rest).
        let path = match audience {
            None => "/api/v1/dashboard/node".to_owned(),
            Some(tenant) => format!("/api/v1/dashboard/node?tenant={tenant}"),
        };
        let panel = peer_requests::Request {
            method: "GET",
            path_and_query: &path,
            content_type: "",
            correlation_id: "",
            body: b"",
        };
        let Some((signature, nonce)) = self.peers.sign(&node, &panel, unix_millis()) else {
            return unreachable("no cluster secret to sign the request".into());
        };
        let request = self
            .http
            .get(format!("http://{http_addr}{path}"))
            .header(peer_requests::HEADER, signature);
        let response = match request.send().await {
            Ok(response) if response.status().is_success() => response,
            Ok(response) => return unreachable(format!("answered {}", response.status())),
            Err(error) => return unreachable(error.to_string()),
        };
        let status = response.status().as_u16();
        let reply = response
            .headers()
            .get(peer_requests::REPLY_HEADER)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(error) => return unreachable(error.to_string()),
        };
        if !self.peers.reply_is_good(&nonce, status, &body, &reply) {
            return unreachable("the panel does not carry the node's signature".into());
        }
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(panel) => panel,
            Err(error) => unreachable(error.to_string()),
        }
    }

    /// A tenant's sagas; none in the operator's frame (business data).
    async fn sagas(&self, audience: Option<&Tenant>) -> Result<SagaPanel, StateError> {
        let Some(tenant) = audience else {
            return Ok(SagaPanel::default());
        };
        let records = &self.records;
        let page = |status, limit| list_sagas(records, tenant, Some(status), None, (limit, 0));
        // Counts of the states that stay small; only the latest of the
        // ended ones (counting every completed saga each second would cost
        // more than the rest of the frame).
        let latest = |status| latest_sagas(records, tenant, status, 10);
        let (running, compensating, attention, completed, compensated) = tokio::join!(
            page(SagaStatus::Running, 15),
            page(SagaStatus::Compensating, 10),
            page(SagaStatus::NeedsAttention, 10),
            latest(SagaStatus::Completed),
            latest(SagaStatus::Compensated),
        );
        let (running, compensating, attention) = (running?, compensating?, attention?);
        let mut in_flight = attention.items;
        in_flight.extend(compensating.items);
        in_flight.extend(running.items);
        let mut recent = completed?;
        recent.extend(compensated?);
        recent.sort_by_key(|saga| std::cmp::Reverse(saga.updated_at));
        recent.truncate(10);
        let (in_flight, recent) = (
            in_flight.into_iter().map(SagaSummary::from).collect(),
            recent.into_iter().map(SagaSummary::from).collect(),
        );
        Ok(SagaPanel {
            running_total: running.total,
            compensating_total: compensating.total,
            needs_attention_total: attention.total,
            in_flight,
            recent,
        })
    }

    async fn recent_simulations(
        &self,
        audience: Option<&Tenant>,
    ) -> Result<Vec<RecentJob>, StateError> {
        let Some(tenant) = audience else {
            return Ok(Vec::new());
        };
        let jobs = latest_jobs(&self.records, tenant, 8).await?;
        Ok(jobs.into_iter().map(RecentJob::from).collect())
    }

    /// A tenant's realization charts, read again once they are
    /// [`REALIZATION_REFRESH`] old; none in the operator's frame.
    async fn realization(
        &self,
        audience: Option<&Tenant>,
    ) -> Result<Arc<Vec<RealizationChart>>, StateError> {
        let Some(tenant) = audience else {
            return Ok(Arc::default());
        };
        if let Some((read, charts)) = self.realization_cache().get(tenant)
            && read.elapsed() < REALIZATION_REFRESH
        {
            return Ok(Arc::clone(charts));
        }
        let charts = Arc::new(self.read_realization(tenant).await?);
        let mut cache = self.realization_cache();
        if cache.len() >= AUDIENCES_KEPT {
            cache.retain(|_, (read, _)| read.elapsed() < REALIZATION_REFRESH);
        }
        cache.insert(
            tenant.clone(),
            (std::time::Instant::now(), Arc::clone(&charts)),
        );
        Ok(charts)
    }

    fn realization_cache(&self) -> std::sync::MutexGuard<'_, HashMap<Tenant, RealizationRead>> {
        self.realization.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The models of the tenant's latest active plans (at most
    /// [`REALIZATION_MODELS`]), each with its last [`REALIZATION_DAYS`]
    /// days of snapshots; models without any are left out. One page of
    /// plans and a read per model.
    async fn read_realization(&self, tenant: &Tenant) -> Result<Vec<RealizationChart>, StateError> {
        let plans = list_plans(
            &self.records,
            tenant,
            None,
            None,
            Some(PlanStatus::Active),
            (REALIZATION_PLANS_READ, 0),
        )
        .await?;
        let mut models: Vec<String> = Vec::new();
        for plan in plans.items {
            if models.len() == REALIZATION_MODELS {
                break;
            }
            if !models.contains(&plan.model_id) {
                models.push(plan.model_id);
            }
        }
        let since = Utc::now().date_naive() - chrono::Days::new(u64::from(REALIZATION_DAYS) - 1);
        let reads = models.iter().map(|model_id| {
            amplifier::history(
                &self.records,
                tenant,
                model_id,
                None,
                None,
                since,
                i64::from(REALIZATION_DAYS),
            )
        });
        let histories = futures_util::future::join_all(reads).await;
        let mut charts = Vec::new();
        for (model_id, rows) in models.into_iter().zip(histories) {
            let points: Vec<RealizationPoint> = rows?
                .into_iter()
                .map(|row| RealizationPoint {
                    day: row.day,
                    committed: hundredths(row.committed),
                    realized: hundredths(row.realized),
                    realization_percent: row.realization_percent.map(hundredths),
                })
                .collect();
            if !points.is_empty() {
                charts.push(RealizationChart { model_id, points });
            }
        }
        Ok(charts)
    }

    /// A tenant's latest audit entries; none in the operator's frame.
    async fn audit(
        &self,
        audience: Option<&Tenant>,
    ) -> Result<Vec<crate::audit::AuditView>, StateError> {
        let Some(tenant) = audience else {
            return Ok(Vec::new());
        };
        let latest = valueverse_agents::auth::AuditFilter {
            limit: 10,
            ..Default::default()
        };
        let entries = self.api_keys.audit(tenant, latest).await?;
        Ok(entries.into_iter().map(Into::into).collect())
    }

    async fn notifications(
        &self,
        audience: Option<&Tenant>,
    ) -> Result<NotificationPanel, StateError> {
        let Some(tenant) = audience else {
            return Ok(NotificationPanel::default());
        };
        let (recent, failures) = self.notifications.recent(tenant, 10).await?;
        Ok(NotificationPanel {
            recent: recent.into_iter().map(Into::into).collect(),
            failures: failures.into_iter().map(Into::into).collect(),
        })
    }
}

/// Failed first, then restarting, activating, active, passivated.
fn rank(status: InstanceStatus) -> u8 {
    match status {
        InstanceStatus::Failed => 0,
        InstanceStatus::Restarting => 1,
        InstanceStatus::Activating => 2,
        InstanceStatus::Active => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use valueverse_agents::notifications::{Attempt, Notification};

    /// The panel's rows write the delivery log's JSON, less nothing the
    /// log shows.
    #[test]
    fn the_notification_rows_are_the_logs_json() {
        let notification = Notification {
            id: "n-1".into(),
            subscription_id: "s-1".into(),
            event_id: "e-1".into(),
            event_type: "model.created".into(),
            payload: "{}".into(),
            status: "pending".into(),
            attempts: 2,
            created_at_ms: 1,
            updated_at_ms: 2,
            due_at_ms: 3,
            attempt_limit: 6,
            takeovers: 1,
            claimed_by: Some("node-a".into()),
            claim_token: Some(7),
            trace_context: None,
        };
        let attempt = Attempt {
            id: "a-1".into(),
            notification_id: "n-1".into(),
            attempt: 2,
            outcome: "failed".into(),
            http_status: Some(500),
            latency_ms: Some(12),
            error: Some("HTTP 500".into()),
            at_ms: 4,
        };
        assert_eq!(
            serde_json::to_value(RecentNotification::from(notification.clone())).unwrap(),
            serde_json::to_value(&notification).unwrap()
        );
        assert_eq!(
            serde_json::to_value(FailedAttempt::from(attempt.clone())).unwrap(),
            serde_json::to_value(&attempt).unwrap()
        );
    }

    #[test]
    fn instances_are_ranked_failed_first() {
        use InstanceStatus::*;
        let mut statuses = [Active, Passivated, Failed, Activating, Restarting];
        statuses.sort_by_key(|status| rank(*status));
        assert_eq!(
            statuses,
            [Failed, Restarting, Activating, Active, Passivated]
        );
    }
}
