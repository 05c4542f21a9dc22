//! The simulation service beside the simulation agent: admission (checks,
//! the bounded fair queue), the workers (threads that run the engines: a
//! configurable number for the CPU, one for the GPU when there is one), live
//! events for WebSocket clients, and recovery after a restart.
//!
//! The agent instance of a job is its record; workers report to it by
//! message and it persists every change of status. Live events go through
//! a `watch` channel per job: a slow reader sees the latest state, never a
//! growing queue.

mod queue;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::Utc;
use dashmap::DashMap;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use serde::Serialize;
use tokio::sync::watch;

use crate::config::SimulationConfig;
use crate::simulation::{
    JobProgress, JobStatus, Runner, Simulation, SimulationJob, SimulationMsg, SimulationReply,
    SimulationRequest,
};
use valueverse_cluster::node::ClusterNode;
use valueverse_gpu::{self as gpu, Control, Device, RunError, RunSettings, SimulationResult};
use valueverse_runtime::HandlingError;
use valueverse_runtime::{Agent, AgentError, AgentId, System, Tenant};
use valueverse_store::{Store, StoreError};

use queue::FairQueue;

/// Longest interval between progress reports to the job's agent.
const AGENT_PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// Reply timeout of the asks that queue jobs again at start: a node
/// starting under load (many jobs to recover, a busy store) must not give up
/// after the usual HTTP timeout.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a node looks for jobs whose runner's lease ended among the
/// keys it owns.
const TAKEOVER_EVERY: Duration = Duration::from_secs(2);
/// Attempts at recording a job's outcome before giving up (the job then
/// stays `running` in the store and runs again after a restart).
const RECORD_ATTEMPTS: u32 = 5;

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("`{field}` {reason}")]
    Invalid { field: String, reason: String },
    #[error("the simulation queue is full ({capacity} jobs waiting); retry later")]
    QueueFull { capacity: usize },
    #[error(
        "this submitter holds {jobs} jobs costing {held:.3e} driver-paths; one may hold {max_jobs} jobs and {budget:.3e} driver-paths at once"
    )]
    OverQuota {
        jobs: usize,
        held: f64,
        max_jobs: usize,
        budget: f64,
    },
    #[error("`device` is gpu but this node has no GPU engine: {reason}")]
    NoGpu { reason: String },
    #[error("the node is stopping")]
    Stopping,
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// Why the service did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start a simulation worker")]
    Worker(#[source] std::io::Error),
    #[error("cannot list the unfinished simulations")]
    Store(#[source] StoreError),
}

/// Type of the cluster event that carries a [`SimulationEvent`] as data.
pub const SHARED_EVENT: &str = "simulation.event";
/// Type of the cluster event that asks the node running a job to stop it.
const CANCEL_EVENT: &str = "simulation.cancel";

/// Stops the jobs this node runs when a cancel for them was taken on
/// another node (the cancel flag a worker reads lives where it runs).
async fn follow_cancels(
    mut bus: tokio::sync::broadcast::Receiver<std::sync::Arc<valueverse_runtime::DomainEvent>>,
    inner: std::sync::Weak<Inner>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match bus.recv().await {
            Ok(event) if event.event_type == CANCEL_EVENT => {
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                let id = event
                    .source
                    .strip_prefix(Simulation::KIND)
                    .and_then(|rest| rest.strip_prefix('/'));
                if let Some(live) = id.and_then(|id| inner.live.get(id)) {
                    tracing::info!(job = %live.key(), "simulation: cancelled from another node");
                    live.cancel.store(true, Ordering::Release);
                }
            }
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

/// One event of a job's live stream (`/ws/simulations/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimulationEvent {
    /// `queued`, `progress`, `done`, `failed` or `cancelled`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    pub status: JobStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<JobProgress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<SimulationResult>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl SimulationEvent {
    pub fn of(job: &SimulationJob) -> SimulationEvent {
        let kind = match job.status {
            JobStatus::Queued => "queued",
            JobStatus::Running => "progress",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        };
        SimulationEvent {
            kind,
            id: job.id.clone(),
            status: job.status,
            progress: job.progress.clone(),
            result: job.result.clone(),
            error: job.error.clone(),
        }
    }

    pub fn is_final(&self) -> bool {
        self.status.is_finished()
    }
}

/// Which workers run a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    Cpu,
    Gpu,
}

#[derive(Debug)]
struct Queued {
    id: String,
    paths: u64,
    /// [`job_cost`] of the job.
    cost: f64,
    since: Instant,
}

/// Who submits the jobs of sagas started before sagas recorded their key:
/// charged to no one.
pub const SAGA_SUBMITTER: &str = "saga";

/// What a job costs, in driver-paths: paths x drivers, times the
/// correlated drivers (their Cholesky mixing is paid on every path).
pub fn job_cost(request: &SimulationRequest) -> f64 {
    let model = &request.model;
    let correlated: std::collections::HashSet<&str> = model
        .correlations
        .iter()
        .flat_map(|pair| [pair.a.as_str(), pair.b.as_str()])
        .collect();
    request.paths as f64 * model.drivers.len().max(1) as f64 * (1 + correlated.len()) as f64
}

#[derive(Debug, Clone, Serialize)]
pub struct RunningJob {
    pub id: String,
    pub submitter: String,
    pub lane: Lane,
    pub paths: u64,
    /// Driver-paths: what counts against its submitter's budget.
    pub cost: f64,
    pub running_seconds: f64,
    /// The last progress its worker reported.
    pub progress: Option<JobProgress>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueuedJob {
    pub id: String,
    pub submitter: String,
    pub lane: Lane,
    pub paths: u64,
    /// 0 is served next (in its lane).
    pub position: usize,
    pub waiting_seconds: f64,
}

/// The queue as `GET /api/v1/simulations/queue` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct QueueSnapshot {
    pub capacity: usize,
    pub cpu_workers: usize,
    pub gpu_workers: usize,
    /// The GPUs, one worker each.
    pub gpus: Vec<String>,
    /// Why there is no GPU worker, when there is none.
    pub no_gpu_reason: Option<String>,
    pub running: Vec<RunningJob>,
    pub queued: Vec<QueuedJob>,
}

#[derive(Default)]
struct Queues {
    cpu: FairQueue<Queued>,
    gpu: FairQueue<Queued>,
    /// Admitted but not yet recorded by the agent: counted against the
    /// capacity so concurrent submissions cannot overrun it.
    reserved: usize,
    running: BTreeMap<String, (RunningJob, Instant)>,
    stopping: bool,
}

impl Queues {
    fn lane(&mut self, lane: Lane) -> &mut FairQueue<Queued> {
        match lane {
            Lane::Cpu => &mut self.cpu,
            Lane::Gpu => &mut self.gpu,
        }
    }

    fn waiting(&self) -> usize {
        self.cpu.len() + self.gpu.len()
    }

    /// Jobs a submitter has waiting or running, and what they cost.
    fn held_by(&self, submitter: &str) -> (usize, f64) {
        let waiting = self
            .cpu
            .items_of(submitter)
            .chain(self.gpu.items_of(submitter));
        let running = self
            .running
            .values()
            .filter(|(job, _)| job.submitter == submitter);
        let (mut jobs, mut cost) = (0, 0.0);
        for queued in waiting {
            jobs += 1;
            cost += queued.cost;
        }
        for (job, _) in running {
            jobs += 1;
            cost += job.cost;
        }
        (jobs, cost)
    }
}

struct Live {
    events: watch::Sender<SimulationEvent>,
    cancel: Arc<AtomicBool>,
}

#[derive(Clone)]
struct SimulationMetrics {
    jobs: IntCounterVec,
    queued: IntGauge,
    running: IntGauge,
    samples: IntCounter,
    takeovers: IntCounter,
}

impl SimulationMetrics {
    fn new(registry: &prometheus::Registry) -> SimulationMetrics {
        let jobs = IntCounterVec::new(
            Opts::new(
                "valueverse_simulation_jobs_total",
                "Simulation jobs by how they ended",
            ),
            &["outcome"],
        )
        .expect("valid metric options");
        // At 0 from the start, so that rates and alerts see every outcome.
        for outcome in [JobStatus::Done, JobStatus::Failed, JobStatus::Cancelled] {
            jobs.with_label_values(&[outcome.as_str()]);
        }
        let queued = IntGauge::new(
            "valueverse_simulation_queue_depth",
            "Simulation jobs waiting for a worker",
        )
        .expect("valid metric options");
        let running = IntGauge::new("valueverse_simulation_running", "Simulation jobs running")
            .expect("valid metric options");
        let samples = IntCounter::new(
            "valueverse_simulation_samples_total",
            "Driver samples drawn by finished simulations (paths x drivers)",
        )
        .expect("valid metric options");
        let takeovers = IntCounter::new(
            "valueverse_simulation_takeovers_total",
            "Unfinished jobs this node took over from a node whose lease ended",
        )
        .expect("valid metric options");
        for collector in [
            Box::new(jobs.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(queued.clone()),
            Box::new(running.clone()),
            Box::new(samples.clone()),
            Box::new(takeovers.clone()),
        ] {
            // A second node in one process has its own registry; a clash
            // here would be a programming error caught by the tests.
            registry
                .register(collector)
                .expect("simulation metric names are unique");
        }
        SimulationMetrics {
            jobs,
            queued,
            running,
            samples,
            takeovers,
        }
    }
}

/// What one submitter may hold of the queue.
struct Quota {
    max_jobs: usize,
    /// Driver-paths ([`job_cost`]) waiting and running at once.
    budget: f64,
    /// Places only sagas' steps may take.
    saga_reserve: usize,
}

struct Inner {
    system: System,
    store: Store,
    /// The node's lease, under which its jobs are recorded as its own.
    cluster: ClusterNode,
    runtime: tokio::runtime::Handle,
    capacity: usize,
    quota: Quota,
    cpu_workers: usize,
    /// The GPUs (one worker each), or why there are none.
    gpu: Result<Vec<String>, String>,
    queues: Mutex<Queues>,
    /// One per lane, so that a queued job wakes one worker that can run
    /// it (waking them all cost a tenth of the node's CPU with 64 workers).
    wake_cpu: Condvar,
    wake_gpu: Condvar,
    live: DashMap<String, Live>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    metrics: SimulationMetrics,
    min_evidence_paths: u64,
}

/// Recent evidence runs a commitment weighs: it stands on the most
/// conservative of them, so that running the minimum again until a lucky
/// run comes last gains nothing.
pub const EVIDENCE_RUNS: i64 = 5;

/// The simulation service of a node. Cheap to clone.
#[derive(Clone)]
pub struct Simulations {
    inner: Arc<Inner>,
}

impl Simulations {
    /// Starts the workers, queues again the jobs a previous run of the node
    /// left unfinished, and from then on takes over the jobs of nodes whose
    /// lease ended. Must be called inside a tokio runtime.
    pub async fn start(
        system: System,
        store: Store,
        cluster: ClusterNode,
        config: &SimulationConfig,
    ) -> Result<Simulations, StartError> {
        system.register::<Simulation>();
        let gpu = if config.gpu {
            // Probing loads libraries and may compile the kernel: not on an
            // async worker.
            tokio::task::spawn_blocking(gpu::cuda::probe)
                .await
                .unwrap_or_else(|error| Err(format!("the GPU probe failed: {error}")))
        } else {
            Err("disabled by configuration (simulation.gpu = false)".into())
        };
        match &gpu {
            Ok(names) => tracing::info!(gpus = ?names, "simulation: GPU engine ready"),
            Err(reason) => tracing::info!(%reason, "simulation: no GPU engine, CPU only"),
        }
        let inner = Arc::new(Inner {
            metrics: SimulationMetrics::new(system.metrics().registry()),
            system,
            store,
            cluster,
            runtime: tokio::runtime::Handle::current(),
            capacity: config.queue_capacity,
            quota: Quota {
                max_jobs: config.max_jobs_per_submitter,
                budget: config.cost_budget_per_submitter,
                // A quarter of a small queue at most.
                saga_reserve: config.saga_reserve.min(config.queue_capacity / 4),
            },
            min_evidence_paths: config.min_evidence_paths,
            cpu_workers: config.cpu_workers,
            gpu,
            queues: Mutex::new(Queues::default()),
            wake_cpu: Condvar::new(),
            wake_gpu: Condvar::new(),
            live: DashMap::new(),
            workers: Mutex::new(Vec::new()),
        });
        // (lane, GPU ordinal) of each worker.
        let mut workers = vec![(Lane::Cpu, None); config.cpu_workers];
        let gpus = inner.gpu.as_ref().map_or(0, Vec::len);
        workers.extend((0..gpus).map(|ordinal| (Lane::Gpu, Some(ordinal))));
        for (index, (lane, ordinal)) in workers.into_iter().enumerate() {
            let worker = Arc::clone(&inner);
            let handle = std::thread::Builder::new()
                .name(format!("valueverse-sim-{index}"))
                .spawn(move || worker.work(lane, ordinal))
                .map_err(StartError::Worker)?;
            inner.workers().push(handle);
        }
        tokio::spawn(follow_cancels(
            inner.system.subscribe_cluster_events(),
            Arc::downgrade(&inner),
        ));
        let simulations = Simulations { inner };
        simulations.take_over().await?;
        let sweeper = simulations.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TAKEOVER_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                every.tick().await;
                if sweeper.inner.stopping() {
                    return;
                }
                if let Err(error) = sweeper.take_over().await {
                    tracing::warn!(%error, "simulation: cannot take over jobs");
                }
            }
        });
        Ok(simulations)
    }

    /// Checks and queues a job; answers at once with the queued job.
    /// `model` names the stored model and version the request's model came
    /// from, when it did.
    /// The job's `id` is its instance key (`Tenant::key`): the API shows
    /// its id part.
    pub async fn submit(
        &self,
        tenant: &Tenant,
        request: SimulationRequest,
        submitter: String,
        model: Option<(String, i64)>,
    ) -> Result<SimulationJob, SubmitError> {
        // An id this node owns, so that the job's agent lives where its
        // worker runs and a restart of another node never queues it again.
        // (With GPU members in the view, a CPU-only node owns no simulation
        // key: the job then runs here all the same.)
        let system = &self.inner.system;
        let mut id = tenant.key(&uuid::Uuid::now_v7().to_string()).to_string();
        for _ in 0..64 {
            if system.is_local(Simulation::KIND, &id) {
                break;
            }
            id = tenant.key(&uuid::Uuid::now_v7().to_string()).to_string();
        }
        self.enqueue(id, request, submitter, model, false).await
    }

    /// [`Simulations::submit`] under a given id, for a saga's step (which may
    /// use the places kept for sagas); a job that exists already is
    /// answered as it is (a saga's step sent twice runs once).
    pub async fn submit_as(
        &self,
        id: String,
        request: SimulationRequest,
        submitter: String,
        model: Option<(String, i64)>,
    ) -> Result<SimulationJob, SubmitError> {
        match self.get(&id).await {
            Ok(existing) => Ok(existing),
            Err(_) => self.enqueue(id, request, submitter, model, true).await,
        }
    }

    async fn enqueue(
        &self,
        id: String,
        request: SimulationRequest,
        submitter: String,
        model: Option<(String, i64)>,
        saga: bool,
    ) -> Result<SimulationJob, SubmitError> {
        let inner = &self.inner;
        check_request(&request)?;
        let cost = job_cost(&request);
        let quota = &inner.quota;
        // A saga's job counts against the key that started the saga; only
        // sagas from before keys were recorded have no one to charge.
        let charged = submitter != SAGA_SUBMITTER;
        if charged && cost > quota.budget {
            return Err(SubmitError::Invalid {
                field: "paths".into(),
                reason: format!(
                    "makes a job of {cost:.3e} driver-paths (paths x drivers x (1 + correlated drivers)); one submitter's budget is {:.3e}",
                    quota.budget
                ),
            });
        }
        let lane = inner
            .lane_for(request.device)
            .map_err(|reason| SubmitError::NoGpu { reason })?;
        {
            let mut queues = inner.queues();
            if queues.stopping {
                return Err(SubmitError::Stopping);
            }
            // Places are kept for sagas' steps, so that a flood of direct
            // submissions cannot fail a saga.
            let capacity = if saga {
                inner.capacity
            } else {
                inner.capacity - quota.saga_reserve
            };
            if queues.waiting() + queues.reserved >= capacity {
                return Err(SubmitError::QueueFull { capacity });
            }
            if charged {
                let (jobs, held) = queues.held_by(&submitter);
                if jobs >= quota.max_jobs || held + cost > quota.budget {
                    return Err(SubmitError::OverQuota {
                        jobs,
                        held,
                        max_jobs: quota.max_jobs,
                        budget: quota.budget,
                    });
                }
            }
            queues.reserved += 1;
        }
        let job = SimulationJob {
            id: id.clone(),
            status: JobStatus::Queued,
            submitter: submitter.clone(),
            model_version: model.as_ref().map(|(_, version)| *version),
            model_id: model.map(|(id, _)| id),
            request,
            engine: None,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            attempts: 0,
            cancel_requested: false,
            progress: None,
            result: None,
            error: None,
            runner: inner.runner(),
        };
        let paths = job.request.paths;
        inner.publish_new(&job);
        // The job's record is the submitter's change (the audit log's who).
        let recorded = inner
            .ask_as(&id, SimulationMsg::Submit(Box::new(job)), Some(&submitter))
            .await;
        let mut queues = inner.queues();
        queues.reserved -= 1;
        let job = match recorded {
            Ok(job) => job,
            Err(error) => {
                drop(queues);
                inner.live.remove(&id);
                return Err(error.into());
            }
        };
        queues.lane(lane).push(
            &submitter,
            Queued {
                id,
                paths,
                cost,
                since: Instant::now(),
            },
        );
        inner.metrics.queued.set(queues.waiting() as i64);
        drop(queues);
        inner.wake(lane).notify_one();
        Ok(job)
    }

    /// Paths a server-seeded run must have to back a commitment.
    pub fn min_evidence_paths(&self) -> u64 {
        self.inner.min_evidence_paths
    }

    /// The job as its agent holds it (with live progress); `id` is the
    /// job's instance key.
    pub async fn get(&self, id: &str) -> Result<SimulationJob, AgentError> {
        self.inner.ask(id, SimulationMsg::Get).await
    }

    /// The latest finished jobs of a model version that can back a
    /// commitment (server-seeded, at least `min_evidence_paths` paths), at
    /// most [`EVIDENCE_RUNS`], newest first, asked of their agents.
    pub async fn latest_evidence(
        &self,
        tenant: &Tenant,
        model_id: &str,
        model_version: i64,
    ) -> Result<Vec<SimulationJob>, AgentError> {
        let store = &self.inner.store;
        let ids = store
            .latest_evidence(
                tenant.as_str(),
                model_id,
                model_version,
                self.min_evidence_paths(),
                EVIDENCE_RUNS,
            )
            .await
            .map_err(|cause| AgentError::Store {
                target: AgentId {
                    kind: Simulation::KIND,
                    key: format!("model {model_id} v{model_version}").into(),
                },
                cause: Box::new(cause.into()),
            })?;
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            jobs.push(self.get(&id).await?);
        }
        Ok(jobs)
    }

    /// Cancels a queued job at once, or asks its worker to stop a running
    /// one (it stops within one batch).
    pub async fn cancel(&self, id: &str, actor: &str) -> Result<SimulationJob, AgentError> {
        let inner = &self.inner;
        // The cancel is the caller's change (the audit log's who).
        let job = inner.ask_as(id, SimulationMsg::Cancel, Some(actor)).await?;
        match job.status {
            JobStatus::Cancelled => {
                let mut queues = inner.queues();
                let matches = |queued: &Queued| queued.id == id;
                if queues.cpu.remove(matches).is_none() {
                    queues.gpu.remove(matches);
                }
                inner.metrics.queued.set(queues.waiting() as i64);
                drop(queues);
                inner.metrics.jobs.with_label_values(&["cancelled"]).inc();
                inner.publish_final(&job);
            }
            _ => match inner.live.get(id) {
                Some(live) => live.cancel.store(true, Ordering::Release),
                // Running on another node: its worker's flag is there.
                None => inner.share_about(id, CANCEL_EVENT, || Some(serde_json::Value::Null)),
            },
        }
        Ok(job)
    }

    /// Live events of a queued or running job; `None` once it has finished
    /// (its record then has the final state).
    pub fn subscribe(&self, id: &str) -> Option<watch::Receiver<SimulationEvent>> {
        self.inner.live.get(id).map(|live| live.events.subscribe())
    }

    /// The queue as `tenant` may see it: its own jobs (the capacity and
    /// devices are the node's).
    pub fn queue(&self, tenant: Option<&Tenant>) -> QueueSnapshot {
        let inner = &self.inner;
        let visible = |key: &str| {
            tenant.is_none_or(|tenant| valueverse_runtime::split_key(key).0 == tenant.as_str())
        };
        // A tenant sees its jobs' ids; the operator their keys.
        let shown = |key: &str| match tenant {
            Some(_) => valueverse_runtime::split_key(key).1.to_owned(),
            None => key.to_owned(),
        };
        let queues = inner.queues();
        let now = Instant::now();
        let mut queued = Vec::new();
        for (lane, queue) in [(Lane::Cpu, &queues.cpu), (Lane::Gpu, &queues.gpu)] {
            // A tenant's positions count its own jobs only: how many of
            // other tenants' wait is not its to know.
            let visible_jobs = queue
                .in_order()
                .into_iter()
                .filter(|(_, job)| visible(&job.id));
            for (position, (submitter, job)) in visible_jobs.enumerate() {
                queued.push(QueuedJob {
                    id: shown(&job.id),
                    submitter: submitter.to_owned(),
                    lane,
                    paths: job.paths,
                    position,
                    waiting_seconds: now.duration_since(job.since).as_secs_f64(),
                });
            }
        }
        QueueSnapshot {
            capacity: inner.capacity,
            cpu_workers: inner.cpu_workers,
            gpu_workers: inner.gpu.as_ref().map_or(0, Vec::len),
            gpus: inner.gpu.clone().unwrap_or_default(),
            no_gpu_reason: inner.gpu.as_ref().err().cloned(),
            running: queues
                .running
                .values()
                .filter(|(job, _)| visible(&job.id))
                .map(|(job, since)| RunningJob {
                    id: shown(&job.id),
                    running_seconds: now.duration_since(*since).as_secs_f64(),
                    progress: inner
                        .live
                        .get(&job.id)
                        .and_then(|live| live.events.borrow().progress.clone()),
                    ..job.clone()
                })
                .collect(),
            queued,
        }
    }

    /// Stops the workers. A job they were running stays `running` in the
    /// store and runs again when the node restarts.
    pub async fn stop(&self) {
        self.inner.queues().stopping = true;
        self.inner.wake_all();
        let workers = std::mem::take(&mut *self.inner.workers());
        let _ = tokio::task::spawn_blocking(move || {
            for worker in workers {
                let _ = worker.join();
            }
        })
        .await;
    }

    /// Queues here the unfinished jobs this node owns whose runner holds no
    /// live lease: those its own earlier run left (after a restart) and
    /// those of a node that died (their keys are this node's now).
    async fn take_over(&self) -> Result<(), StartError> {
        let inner = &self.inner;
        // This node's own jobs are listed too: one it recorded as its own
        // but holds no longer (an ask that timed out after its write, an
        // outcome it could not record) is queued again here.
        let held_as = inner.runner();
        let mine = held_as.as_ref().map(|runner| valueverse_store::Claimant {
            node: &runner.node,
            token: runner.token,
        });
        let orphans = inner
            .store
            .orphaned_simulations(valueverse_store::unix_millis(), mine)
            .await
            .map_err(StartError::Store)?;
        let system = &inner.system;
        let me = inner.system.node_name();
        // A job queued or running here is this node's whatever its lease
        // did meanwhile (a renewal late past expiry): never queued twice.
        for (id, node, token) in orphans.into_iter().filter(|(id, _, _)| {
            system.is_local(Simulation::KIND, id) && !inner.live.contains_key(id)
        }) {
            let expected = node.zip(token).map(|(node, token)| Runner { node, token });
            // Another node's GPU job waits for a node with a GPU (placement
            // gives simulation keys to GPU members when there are some);
            // only this node's own job, after a restart without its GPU, is
            // failed.
            if inner.gpu.is_err()
                && expected.as_ref().is_some_and(|runner| runner.node != me)
                && let Ok(job) = inner
                    .ask_within(&id, SimulationMsg::Get, RECOVERY_TIMEOUT, None)
                    .await
                && job.request.device == Device::Gpu
            {
                continue;
            }
            let Some(runner) = inner.runner() else {
                return Ok(());
            };
            let from = expected.as_ref().map(|runner| runner.node.clone());
            let own = from.as_deref().is_none_or(|from| from == me);
            let msg = SimulationMsg::Requeue { runner, expected };
            let job = match inner.ask_within(&id, msg, RECOVERY_TIMEOUT, None).await {
                Ok(job) => job,
                // Finished or taken by another node meanwhile.
                Err(AgentError::Handling(HandlingError::Rejected { .. })) => continue,
                // One job that cannot be asked holds up no other: the next
                // sweep tries it again.
                Err(error) => {
                    tracing::warn!(job = %id, %error, "simulation: cannot take the job over now");
                    continue;
                }
            };
            if !own {
                inner.metrics.takeovers.inc();
                tracing::info!(job = %id, from = ?from, "simulation: took over a job whose node's lease ended");
            }
            let lane = match inner.lane_for(job.request.device) {
                Ok(lane) => lane,
                Err(reason) => {
                    // Asked for a GPU this node no longer has.
                    let error = format!("no GPU on this node after a restart: {reason}");
                    let engine = "none".to_owned();
                    let failed = async {
                        inner
                            .ask_within(
                                &id,
                                SimulationMsg::Start { engine },
                                RECOVERY_TIMEOUT,
                                None,
                            )
                            .await?;
                        inner
                            .ask_within(&id, SimulationMsg::Fail { error }, RECOVERY_TIMEOUT, None)
                            .await
                    };
                    match failed.await {
                        Ok(job) => {
                            inner.metrics.jobs.with_label_values(&["failed"]).inc();
                            tracing::warn!(job = %job.id, "simulation: failed after a restart, no GPU");
                        }
                        Err(error) => {
                            tracing::warn!(job = %id, %error, "simulation: cannot fail the job")
                        }
                    }
                    continue;
                }
            };
            tracing::info!(job = %id, attempts = job.attempts, "simulation: queued again");
            inner.publish_new(&job);
            let mut queues = inner.queues();
            queues.lane(lane).push(
                &job.submitter,
                Queued {
                    id,
                    paths: job.request.paths,
                    cost: job_cost(&job.request),
                    since: Instant::now(),
                },
            );
            inner.metrics.queued.set(queues.waiting() as i64);
        }
        inner.wake_all();
        Ok(())
    }
}

/// Settings the engine checks too, checked here first so that a bad
/// request never reaches the queue.
fn check_request(request: &SimulationRequest) -> Result<(), SubmitError> {
    let invalid = |field: &str, reason: String| SubmitError::Invalid {
        field: field.to_owned(),
        reason,
    };
    if let Err(invalid_model) = request.model.validate() {
        let first = &invalid_model.errors[0];
        return Err(invalid(
            &format!("model.{}", first.path),
            first.message.clone(),
        ));
    }
    let settings = settings_of(request);
    match gpu::engine::check_settings(&settings) {
        Ok(()) => Ok(()),
        Err(RunError::Paths(paths)) => Err(invalid(
            "paths",
            format!("must be within 1..=1000000000, got {paths}"),
        )),
        Err(RunError::Bins(bins)) => Err(invalid(
            "bins",
            format!("must be within 1..=10000, got {bins}"),
        )),
        Err(RunError::RelativeError(target)) => Err(invalid(
            "stop_at_rel_se",
            format!("must be within (0, 1), got {target}"),
        )),
        Err(other) => Err(invalid("request", other.to_string())),
    }
}

fn settings_of(request: &SimulationRequest) -> RunSettings {
    RunSettings {
        paths: request.paths,
        seed: request.seed,
        bins: request.bins,
        stop_at_rel_se: request.stop_at_rel_se,
    }
}

impl Inner {
    fn queues(&self) -> MutexGuard<'_, Queues> {
        // A worker never panics while holding the lock (engines run
        // outside it), so poisoning cannot happen; recover anyway.
        self.queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn workers(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wake(&self, lane: Lane) -> &Condvar {
        match lane {
            Lane::Cpu => &self.wake_cpu,
            Lane::Gpu => &self.wake_gpu,
        }
    }

    fn wake_all(&self) {
        self.wake_cpu.notify_all();
        self.wake_gpu.notify_all();
    }

    /// This node as a job's runner; none while its lease is fenced.
    fn runner(&self) -> Option<Runner> {
        let token = self.cluster.lease_token()?;
        Some(Runner {
            node: self.system.node_name().to_owned(),
            token,
        })
    }

    fn ask_timeout(&self) -> Duration {
        self.system.runtime_config().ask_timeout
    }

    fn agent(&self, id: &str) -> valueverse_runtime::AgentRef<Simulation> {
        self.system.agent_by_key::<Simulation>(id.to_owned())
    }

    /// Asks a job's agent with a message that answers with the job.
    async fn ask(&self, id: &str, msg: SimulationMsg) -> Result<SimulationJob, AgentError> {
        self.ask_as(id, msg, None).await
    }

    /// [`Inner::ask`] acting for `actor` (the audit log's who).
    async fn ask_as(
        &self,
        id: &str,
        msg: SimulationMsg,
        actor: Option<&str>,
    ) -> Result<SimulationJob, AgentError> {
        self.ask_within(id, msg, self.ask_timeout(), actor).await
    }

    async fn ask_within(
        &self,
        id: &str,
        msg: SimulationMsg,
        timeout: Duration,
        actor: Option<&str>,
    ) -> Result<SimulationJob, AgentError> {
        let agent = match actor {
            Some(actor) => self.agent(id).with_actor(actor),
            None => self.agent(id),
        };
        match agent.ask(msg, timeout).await? {
            SimulationReply::Job(job) => Ok(*job),
            SimulationReply::Ack => Err(AgentError::Handling(HandlingError::Fatal {
                target: AgentId {
                    kind: Simulation::KIND,
                    key: id.into(),
                },
                message: "answered a request for the job with an acknowledgement".into(),
            })),
        }
    }

    fn lane_for(&self, device: Device) -> Result<Lane, String> {
        match (device, &self.gpu) {
            (Device::Cpu, _) | (Device::Auto, Err(_)) => Ok(Lane::Cpu),
            (Device::Gpu | Device::Auto, Ok(_)) => Ok(Lane::Gpu),
            (Device::Gpu, Err(reason)) => Err(reason.clone()),
        }
    }

    fn publish_new(&self, job: &SimulationJob) {
        let (events, _) = watch::channel(SimulationEvent::of(job));
        self.live.insert(
            job.id.clone(),
            Live {
                events,
                cancel: Arc::new(AtomicBool::new(false)),
            },
        );
    }

    /// Sends the last event and forgets the job: subscribers still read it.
    fn publish_final(&self, job: &SimulationJob) {
        let event = SimulationEvent::of(job);
        self.share(&event);
        if let Some((_, live)) = self.live.remove(&job.id) {
            live.events.send_replace(event);
        }
    }

    /// Hands a job's event to streams on other nodes of the cluster (a
    /// WebSocket client may follow the job from any node).
    fn share(&self, event: &SimulationEvent) {
        self.share_about(&event.id, SHARED_EVENT, || {
            // As clients see it: the job's id, not its key.
            let mut data = serde_json::to_value(event).ok()?;
            data["id"] = valueverse_runtime::split_key(&event.id).1.into();
            Some(data)
        });
    }

    /// Shares an event about job `id` with the other nodes (there are none
    /// in a cluster of one: `data` is not even built then).
    fn share_about(
        &self,
        id: &str,
        event_type: &str,
        data: impl FnOnce() -> Option<serde_json::Value>,
    ) {
        if self.system.is_solo() {
            return;
        }
        let Some(data) = data() else {
            return;
        };
        self.system.share(valueverse_runtime::DomainEvent {
            id: uuid::Uuid::now_v7().to_string(),
            event_type: event_type.into(),
            occurred_at: chrono::Utc::now(),
            source: format!("{}/{id}", Simulation::KIND),
            tenant: valueverse_runtime::split_key(id).0.to_owned(),
            correlation_id: None,
            data,
        });
    }

    fn stopping(&self) -> bool {
        self.queues().stopping
    }

    /// A worker: takes jobs of its lane until the service stops.
    fn work(self: Arc<Self>, lane: Lane, gpu: Option<usize>) {
        loop {
            let queued = {
                let mut queues = self.queues();
                loop {
                    if queues.stopping {
                        return;
                    }
                    if let Some(queued) = queues.lane(lane).pop() {
                        self.metrics.queued.set(queues.waiting() as i64);
                        break queued;
                    }
                    queues = self
                        .wake(lane)
                        .wait(queues)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
            };
            self.run(queued, lane, gpu);
        }
    }

    fn run(&self, queued: Queued, lane: Lane, gpu: Option<usize>) {
        let id = queued.id;
        let engine = match lane {
            Lane::Cpu => "cpu",
            Lane::Gpu => "cuda",
        };
        let started = self.runtime.block_on(self.ask(
            &id,
            SimulationMsg::Start {
                engine: engine.into(),
            },
        ));
        let job = match started {
            Ok(job) => job,
            // Cancelled while it waited, or its record is unreachable.
            Err(error) => {
                tracing::debug!(job = %id, %error, "simulation: not started");
                return;
            }
        };
        let Some((events, cancel)) = self
            .live
            .get(&id)
            .map(|live| (live.events.clone(), Arc::clone(&live.cancel)))
        else {
            return;
        };
        events.send_replace(SimulationEvent::of(&job));
        self.queues().running.insert(
            id.clone(),
            (
                RunningJob {
                    id: id.clone(),
                    submitter: job.submitter.clone(),
                    lane,
                    paths: job.request.paths,
                    cost: job_cost(&job.request),
                    running_seconds: 0.0,
                    progress: None,
                },
                Instant::now(),
            ),
        );
        self.metrics.running.inc();
        let agent = self.agent(&id);
        let request = &job.request;
        let began = Instant::now();
        let mut last_report = began;
        let mut event = SimulationEvent::of(&job);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            gpu::engine::run_with(&request.model, &settings_of(request), gpu, |progress| {
                if cancel.load(Ordering::Acquire) || self.stopping() {
                    return Control::Cancel;
                }
                let elapsed = began.elapsed().as_secs_f64();
                let rate = progress.paths_done as f64 / elapsed.max(1e-9);
                let left = progress.paths_total - progress.paths_done;
                let progress = JobProgress {
                    paths_done: progress.paths_done,
                    paths_total: progress.paths_total,
                    percent: 100.0 * progress.paths_done as f64 / progress.paths_total as f64,
                    samples_per_second: progress.samples_per_second,
                    running_mean: progress.running_mean,
                    p50: progress.p50,
                    p90: progress.p90,
                    eta_seconds: (rate > 0.0).then(|| left as f64 / rate),
                };
                event.progress = Some(progress.clone());
                events.send_replace(event.clone());
                if last_report.elapsed() >= AGENT_PROGRESS_INTERVAL {
                    last_report = Instant::now();
                    self.share(&event);
                    // Best effort: a full mailbox only delays the display.
                    let _ = agent.tell(SimulationMsg::Progress(progress));
                }
                Control::Continue
            })
        }));
        self.queues().running.remove(&id);
        self.metrics.running.dec();
        let outcome_msg = match outcome {
            Ok(Ok(result)) => {
                self.metrics
                    .samples
                    .inc_by(result.paths * request.model.drivers.len() as u64);
                SimulationMsg::Finish(Box::new(result))
            }
            Ok(Err(RunError::Cancelled { paths_done })) => {
                if !cancel.load(Ordering::Acquire) {
                    // Stopped by the node's shutdown: left `running`, so the
                    // next start runs it again.
                    return;
                }
                SimulationMsg::Cancelled { paths_done }
            }
            Ok(Err(error)) => SimulationMsg::Fail {
                error: error.to_string(),
            },
            Err(panic) => SimulationMsg::Fail {
                error: format!("the engine panicked: {}", panic_message(&panic)),
            },
        };
        self.record(&id, outcome_msg);
    }

    /// Records a job's outcome with its agent, retrying a few times; then
    /// publishes the final event.
    fn record(&self, id: &str, msg: SimulationMsg) {
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=RECORD_ATTEMPTS {
            match self.runtime.block_on(self.ask(id, msg.clone())) {
                Ok(job) => {
                    let outcome = job.status.as_str();
                    self.metrics.jobs.with_label_values(&[outcome]).inc();
                    tracing::info!(job = %id, %outcome, "simulation finished");
                    self.publish_final(&job);
                    return;
                }
                Err(error) => {
                    tracing::warn!(job = %id, attempt, %error, "simulation: cannot record the outcome");
                    std::thread::sleep(delay);
                    delay *= 2;
                }
            }
        }
        // Not held here any more: the takeover sweep queues it again.
        self.live.remove(id);
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}
