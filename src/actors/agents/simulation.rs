//! The simulation agent: one instance per job, keyed by the job id. It owns
//! the job's record (request, status, progress, result) and writes it to its
//! own table at every change of status; the work runs on the simulation
//! workers (`crate::simulations`), which report to it by message. Progress is
//! kept in memory only: a restart runs an unfinished job again.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use valueverse_gpu::model::ValueModel;
use valueverse_gpu::{Device, SimulationResult};
use valueverse_store::Column;

use valueverse_runtime::HandlerError;
use valueverse_runtime::{Agent, AgentMessage, Handling, RejectionCode};

/// What a client asked to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimulationRequest {
    pub model: ValueModel,
    pub paths: u64,
    pub seed: u64,
    /// The server drew the seed (the client named none): only such a run
    /// backs a commitment, since a client who picks seeds can pick a lucky
    /// one.
    #[serde(default)]
    pub seed_by_server: bool,
    /// As asked (`auto`, `cpu`, `gpu`); the job's `engine` says where it ran.
    pub device: Device,
    pub bins: usize,
    pub stop_at_rel_se: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Done | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// Where a running job is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobProgress {
    pub paths_done: u64,
    pub paths_total: u64,
    pub percent: f64,
    pub samples_per_second: f64,
    pub running_mean: f64,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub eta_seconds: Option<f64>,
}

/// The node that queues and runs a job, under its lease token: while that
/// lease is live the job is its; once it is not, the job's owner takes it
/// over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runner {
    pub node: String,
    pub token: i64,
}

/// A simulation job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimulationJob {
    pub id: String,
    pub status: JobStatus,
    /// Who submitted it: the unit of fairness in the queue.
    pub submitter: String,
    pub model_id: Option<String>,
    pub model_version: Option<i64>,
    pub request: SimulationRequest,
    /// `cpu` or `cuda`, once chosen.
    pub engine: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Times the job was started (more than one after a node restart).
    pub attempts: u32,
    pub cancel_requested: bool,
    pub progress: Option<JobProgress>,
    pub result: Option<Box<SimulationResult>>,
    pub error: Option<String>,
    /// Where it is queued or runs (none in records from before runners).
    #[serde(default)]
    pub runner: Option<Runner>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SimulationMsg {
    /// Records a new job, queued.
    Submit(Box<SimulationJob>),
    Get,
    /// A worker takes the job.
    Start {
        engine: String,
    },
    Progress(JobProgress),
    Finish(Box<SimulationResult>),
    Fail {
        error: String,
    },
    /// A client asks to cancel: a queued job is cancelled at once, a running
    /// one is marked and its worker stops it.
    Cancel,
    /// The worker stopped a job whose cancellation was asked.
    Cancelled {
        paths_done: u64,
    },
    /// A node takes over a job whose runner's lease ended (its own earlier
    /// run, after a restart, or a dead node): a running job is queued
    /// again. Only if the job's runner is still `expected` (what the node
    /// saw lapse), so two nodes never both take it.
    Requeue {
        runner: Runner,
        expected: Option<Runner>,
    },
}

impl AgentMessage for SimulationMsg {
    fn name(&self) -> &'static str {
        match self {
            SimulationMsg::Submit(_) => "submit",
            SimulationMsg::Get => "get",
            SimulationMsg::Start { .. } => "start",
            SimulationMsg::Progress(_) => "progress",
            SimulationMsg::Finish(_) => "finish",
            SimulationMsg::Fail { .. } => "fail",
            SimulationMsg::Cancel => "cancel",
            SimulationMsg::Cancelled { .. } => "cancelled",
            SimulationMsg::Requeue { .. } => "requeue",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum SimulationReply {
    Job(Box<SimulationJob>),
    /// Progress is not answered with the whole job.
    Ack,
}

impl SimulationReply {
    /// The job, for the messages that answer with it.
    pub fn into_job(self) -> Option<SimulationJob> {
        match self {
            SimulationReply::Job(job) => Some(*job),
            SimulationReply::Ack => None,
        }
    }
}

pub struct Simulation;

fn not_found(key: &str) -> HandlerError {
    HandlerError::rejected(
        RejectionCode::NotFound,
        format!("no simulation `{key}`"),
        None,
    )
}

fn conflict(job: &SimulationJob, what: &str) -> HandlerError {
    HandlerError::rejected(
        RejectionCode::Conflict,
        format!(
            "simulation `{}` is {}: cannot {what}",
            valueverse_runtime::split_key(&job.id).1,
            job.status.as_str()
        ),
        None,
    )
}

impl Agent for Simulation {
    const KIND: &'static str = "simulation";
    const MESSAGE_ID: u32 = 0x0106;
    type State = Option<SimulationJob>;
    type Msg = SimulationMsg;
    type Reply = SimulationReply;

    fn init(_key: &str) -> Option<SimulationJob> {
        None
    }

    fn handle(
        state: &mut Option<SimulationJob>,
        msg: SimulationMsg,
        ctx: &mut Handling<'_>,
    ) -> Result<SimulationReply, HandlerError> {
        let key = ctx.key().to_owned();
        if let SimulationMsg::Submit(job) = msg {
            if let Some(existing) = state {
                return Err(conflict(existing, "submit it again"));
            }
            if job.id != ctx.instance_key() {
                return Err(HandlerError::fatal("job id differs from the instance key"));
            }
            *state = Some(*job);
            ctx.persist();
            return Ok(reply(state));
        }
        let Some(job) = state.as_mut() else {
            return Err(not_found(&key));
        };
        let now = Utc::now();
        match msg {
            SimulationMsg::Submit(_) => unreachable!("handled above"),
            SimulationMsg::Get => {}
            SimulationMsg::Start { engine } => {
                if job.status != JobStatus::Queued {
                    return Err(conflict(job, "start it"));
                }
                job.status = JobStatus::Running;
                job.engine = Some(engine);
                job.started_at = Some(now);
                job.attempts += 1;
                ctx.persist();
            }
            SimulationMsg::Progress(progress) => {
                if job.status == JobStatus::Running {
                    job.progress = Some(progress);
                }
                return Ok(SimulationReply::Ack);
            }
            SimulationMsg::Finish(result) => {
                if job.status != JobStatus::Running {
                    return Err(conflict(job, "finish it"));
                }
                job.status = JobStatus::Done;
                job.finished_at = Some(now);
                job.progress = Some(final_progress(job, &result));
                ctx.emit(
                    "simulation.finished",
                    serde_json::json!({
                        "simulation_id": key,
                        "model_id": job.model_id,
                        "model_version": job.model_version,
                        "model_name": job.request.model.name,
                        "paths": result.paths,
                        "npv_mean": result.npv.mean,
                        "npv_p50": result.npv.percentiles.p50,
                        "prob_loss": result.prob_loss,
                    }),
                );
                job.result = Some(result);
                ctx.persist();
            }
            SimulationMsg::Fail { error } => {
                if job.status != JobStatus::Running {
                    return Err(conflict(job, "fail it"));
                }
                job.status = JobStatus::Failed;
                job.finished_at = Some(now);
                job.error = Some(error);
                ctx.persist();
            }
            SimulationMsg::Cancel => match job.status {
                JobStatus::Queued => {
                    job.status = JobStatus::Cancelled;
                    job.cancel_requested = true;
                    job.finished_at = Some(now);
                    ctx.persist();
                }
                JobStatus::Running => {
                    if !job.cancel_requested {
                        job.cancel_requested = true;
                        ctx.persist();
                    }
                }
                _ => return Err(conflict(job, "cancel it")),
            },
            SimulationMsg::Cancelled { paths_done } => {
                if job.status != JobStatus::Running {
                    return Err(conflict(job, "record its cancellation"));
                }
                job.status = JobStatus::Cancelled;
                job.finished_at = Some(now);
                job.error = Some(format!("cancelled after {paths_done} paths"));
                ctx.persist();
            }
            SimulationMsg::Requeue { runner, expected } => {
                if job.status.is_finished() {
                    return Err(conflict(job, "queue it again"));
                }
                if job.runner != expected {
                    return Err(HandlerError::rejected(
                        RejectionCode::Conflict,
                        format!("simulation `{}` was taken over already", job.id),
                        None,
                    ));
                }
                job.status = JobStatus::Queued;
                job.progress = None;
                job.runner = Some(runner);
                ctx.persist();
            }
        }
        Ok(reply(state))
    }

    valueverse_runtime::table_persistence!(TABLE, |job| vec![
        ("status", Column::Text(Some(job.status.as_str().into()))),
        ("model_id", Column::Text(job.model_id.clone())),
        ("model_version", Column::Int(job.model_version)),
        ("submitter", Column::Text(Some(job.submitter.clone()))),
        (
            "created_at_ms",
            Column::Int(Some(job.created_at.timestamp_millis()))
        ),
        (
            "runner_node",
            Column::Text(job.runner.as_ref().map(|runner| runner.node.clone()))
        ),
        (
            "runner_token",
            Column::Int(job.runner.as_ref().map(|runner| runner.token))
        ),
        (
            "paths",
            Column::Int(Some(i64::try_from(job.request.paths).unwrap_or(i64::MAX)))
        ),
        ("evidence_paths", Column::Int(evidence_paths(job))),
    ]);
}

const TABLE: &str = "simulations";

/// The paths a finished, server-seeded job ran: what it weighs as the
/// evidence of a commitment (`None`: it is none).
fn evidence_paths(job: &SimulationJob) -> Option<i64> {
    let result = job.result.as_ref()?;
    (job.status == JobStatus::Done && job.request.seed_by_server)
        .then(|| i64::try_from(result.paths).unwrap_or(i64::MAX))
}

fn reply(state: &Option<SimulationJob>) -> SimulationReply {
    SimulationReply::Job(Box::new(state.clone().expect("a job exists here")))
}

fn final_progress(job: &SimulationJob, result: &SimulationResult) -> JobProgress {
    JobProgress {
        paths_done: result.paths,
        paths_total: job.request.paths,
        percent: 100.0,
        samples_per_second: result.samples_per_second,
        running_mean: result.npv.mean,
        p50: Some(result.npv.percentiles.p50),
        p90: Some(result.npv.percentiles.p90),
        eta_seconds: Some(0.0),
    }
}

/// The newest `limit` jobs, uncounted.
pub async fn latest_jobs(
    records: &crate::Records,
    tenant: &valueverse_runtime::Tenant,
    limit: i64,
) -> Result<Vec<SimulationJob>, valueverse_runtime::StateError> {
    super::listing::latest(
        records,
        tenant,
        valueverse_store::Listing::Simulations,
        limit,
    )
    .await
}
