//! `/api/v1/simulations` and `/ws/simulations/{id}`: submit, follow, read
//! and cancel Monte Carlo jobs.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::schemas::simulation as api;
use super::schemas::simulations as queue_api;
use super::schemas::{Device, SimulationResult, ValueModel};
use valueverse_agents::architect::ArchitectMsg;
use valueverse_agents::auth::Caller;
use valueverse_agents::simulation::{JobStatus, SimulationJob, SimulationRequest};
use valueverse_agents::simulations::{SimulationEvent, Simulations, SubmitError};
use valueverse_runtime::System;

use super::error::ErrorDoc;
use super::error::{ApiError, parse_json};
use super::scope::Scope;
use super::value_models::ask_model;
use super::ws::{Outgoing, Source};
use valueverse_agents::quotas::TenantQuotas;

/// Largest WebSocket frame read from a client (they only send control
/// frames): anything larger drops the connection.
const MAX_CLIENT_FRAME: usize = 4096;

fn default_paths() -> u64 {
    100_000
}

fn default_bins() -> usize {
    50
}

/// Body of `POST /api/v1/simulations`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    /// The model inline, or
    model: Option<ValueModel>,
    /// a model the architect stores (at `model_version`, default current).
    model_id: Option<String>,
    model_version: Option<i64>,
    /// 1 to 10^9 [default: 100000].
    #[serde(default = "default_paths")]
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    paths: u64,
    /// [default: drawn at random; the job reports it]. Only a run whose
    /// seed the server drew backs a commitment.
    seed: Option<u64>,
    #[serde(default)]
    device: Device,
    /// Bins of the result's histogram, 1 to 10000 [default: 50].
    #[serde(default = "default_bins")]
    #[schema(minimum = 1, maximum = 10000)]
    bins: usize,
    /// Stop once the standard error of the mean is below this fraction of it.
    stop_at_rel_se: Option<f64>,
}

/// A job as the API shows it: the request without its model, the status,
/// the progress; the result has a route of its own.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct JobView {
    id: String,
    status: api::JobStatus,
    submitter: String,
    model_name: String,
    model_id: Option<String>,
    model_version: Option<i64>,
    paths: u64,
    seed: u64,
    /// The server drew the seed: only such a run backs a commitment.
    seed_by_server: bool,
    device: Device,
    bins: usize,
    stop_at_rel_se: Option<f64>,
    engine: Option<String>,
    attempts: u32,
    cancel_requested: bool,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    progress: Option<api::JobProgress>,
    error: Option<String>,
    links: Links,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Links {
    #[serde(rename = "self")]
    this: String,
    results: String,
    events: String,
    cancel: String,
}

/// A finished job's result.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ResultsView {
    id: String,
    model_name: String,
    currency: String,
    result: SimulationResult,
}

impl From<SimulationJob> for JobView {
    fn from(job: SimulationJob) -> JobView {
        // The job's key names its tenant; the API shows the id.
        let id = valueverse_runtime::split_key(&job.id).1.to_owned();
        let base = format!("/api/v1/simulations/{id}");
        let request = job.request;
        JobView {
            links: Links {
                results: format!("{base}/results"),
                events: format!("/ws/simulations/{id}"),
                cancel: format!("{base}/cancel"),
                this: base,
            },
            id,
            status: job.status.into(),
            submitter: job.submitter,
            model_name: request.model.name,
            model_id: job.model_id,
            model_version: job.model_version,
            paths: request.paths,
            seed: request.seed,
            seed_by_server: request.seed_by_server,
            device: request.device.into(),
            bins: request.bins,
            stop_at_rel_se: request.stop_at_rel_se,
            engine: job.engine,
            attempts: job.attempts,
            cancel_requested: job.cancel_requested,
            created_at: job.created_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
            progress: job.progress.map(Into::into),
            error: job.error,
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> ApiError {
        let message = error.to_string();
        match error {
            SubmitError::Invalid { field, .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
                    .with_field(field)
            }
            SubmitError::NoGpu { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "no_gpu", message)
                    .with_field("device")
            }
            SubmitError::QueueFull { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "queue_full", message).retry_after(5)
            }
            SubmitError::OverQuota { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "over_quota", message).retry_after(5)
            }
            SubmitError::Stopping => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", message).retry_after(5)
            }
            SubmitError::Agent(error) => error.into(),
        }
    }
}

/// The API key that submits: the unit of fairness and of quotas (one
/// client behind a load balancer is still one client).
fn submitter(request: &HttpRequest) -> String {
    match request.extensions().get::<Caller>() {
        Some(caller) => caller.lane(),
        None => "unknown".into(),
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/simulations",
    tag = "simulations",
    request_body = SubmitBody,
    responses(
        (status = 202, description = "queued", body = JobView),
        (status = 404, description = "not found", body = ErrorDoc),
        (status = 422, description = "invalid field, named", body = ErrorDoc),
        (status = 503, description = "store unavailable or queue full (Retry-After)", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn submit(
    scope: Scope,
    quotas: web::Data<TenantQuotas>,
    simulations: web::Data<Simulations>,
    system: web::Data<System>,
    request: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: SubmitBody = parse_json(&body, false)?;
    let (model, source) = match (body.model, body.model_id) {
        (Some(model), None) => {
            if body.model_version.is_some() {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_field",
                    "`model_version` goes with `model_id`, not with an inline `model`",
                )
                .with_field("model_version"));
            }
            (model.into(), None)
        }
        (None, Some(id)) => {
            let msg = ArchitectMsg::Get {
                version: body.model_version,
            };
            let (record, version) = ask_model(&system, &scope, &id, msg).await?;
            let model = record
                .version(version)
                .map(|at| at.model.clone())
                .expect("the architect answered with an existing version");
            (model, Some((id, version)))
        }
        (Some(_), Some(_)) | (None, None) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                "give either `model` (inline) or `model_id` (a stored model), not both",
            )
            .with_field("model"));
        }
    };
    quotas.check_paths(scope.tenant(), body.paths).await?;
    let request_data = SimulationRequest {
        model,
        paths: body.paths,
        seed: body.seed.unwrap_or_else(rand::random),
        seed_by_server: body.seed.is_none(),
        device: body.device.into(),
        bins: body.bins,
        stop_at_rel_se: body.stop_at_rel_se,
    };
    let job = simulations
        .submit(scope.tenant(), request_data, submitter(&request), source)
        .await?;
    let view = JobView::from(job);
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, view.links.this.clone()))
        .json(view))
}

#[utoipa::path(
    get,
    path = "/api/v1/simulations/{id}",
    tag = "simulations",
    params(
        ("id" = String, Path, description = "id"),
    ),
    responses(
        (status = 200, description = "status and progress", body = JobView),
        (status = 404, description = "not found", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn get(
    scope: Scope,
    simulations: web::Data<Simulations>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = simulations.get(&scope.tenant().key(&id)).await?;
    Ok(HttpResponse::Ok().json(JobView::from(job)))
}

#[utoipa::path(
    get,
    path = "/api/v1/simulations/{id}/results",
    tag = "simulations",
    params(
        ("id" = String, Path, description = "id"),
    ),
    responses(
        (status = 200, description = "the result of a finished job", body = ResultsView),
        (status = 404, description = "not found", body = ErrorDoc),
        (status = 409, description = "conflict with the current state", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn results(
    scope: Scope,
    simulations: web::Data<Simulations>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = simulations.get(&scope.tenant().key(&id)).await?;
    match (job.status, job.result) {
        (JobStatus::Done, Some(result)) => Ok(HttpResponse::Ok().json(ResultsView {
            id: id.into_inner(),
            model_name: job.request.model.name,
            currency: job.request.model.currency,
            result: (*result).into(),
        })),
        (status, _) => {
            let mut message = format!(
                "simulation `{}` is {}: it has no results",
                id.as_str(),
                status.as_str()
            );
            if let Some(error) = job.error {
                message.push_str(&format!(" ({error})"));
            }
            Err(ApiError::new(StatusCode::CONFLICT, "not_finished", message))
        }
    }
}

#[utoipa::path(
    put,
    path = "/api/v1/simulations/{id}/cancel",
    tag = "simulations",
    params(
        ("id" = String, Path, description = "id"),
        super::forward::NodeQuery,
    ),
    responses(
        (status = 200, description = "cancelled, or cancelling", body = JobView),
        (status = 404, description = "not found", body = ErrorDoc),
        (status = 409, description = "conflict with the current state", body = ErrorDoc),
        (status = 422, description = "the operator's `tenant` is not a tenant name", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn cancel(
    scope: Scope,
    simulations: web::Data<Simulations>,
    id: web::Path<String>,
    request: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    // A running job stops where it runs: `?node=` names that node.
    if let Some(answer) = super::forward::elsewhere(&request, &body).await? {
        return Ok(answer);
    }
    // The operator stops a runaway job of the tenant `?tenant=` names and
    // sees only that it stopped: the job's model is the tenant's data.
    if scope.0.role == valueverse_agents::auth::Role::Platform {
        let tenant = super::scope::operator_tenant(&request)?
            .unwrap_or_else(valueverse_runtime::Tenant::default_tenant);
        let job = simulations.cancel(&tenant.key(&id), &scope.actor()).await?;
        let status = api::JobStatus::from(job.status);
        return Ok(
            HttpResponse::Ok().json(serde_json::json!({ "id": id.as_str(), "status": status }))
        );
    }
    let job = simulations
        .cancel(&scope.tenant().key(&id), &scope.actor())
        .await?;
    Ok(HttpResponse::Ok().json(JobView::from(job)))
}

#[utoipa::path(
    get,
    path = "/api/v1/simulations/queue",
    tag = "simulations",
    responses(
        (status = 200, description = "running and queued jobs", body = queue_api::QueueSnapshot),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn queue(scope: Scope, simulations: web::Data<Simulations>) -> HttpResponse {
    let queue = simulations.queue(Some(scope.tenant()));
    HttpResponse::Ok().json(queue_api::QueueSnapshot::from(queue))
}

/// `/ws/simulations/{id}`: the job's state at once, then an event after each
/// batch, then the final event with the result or the failure; then the
/// server closes. Closing the socket leaves the job running.
#[utoipa::path(
    get,
    path = "/ws/simulations/{id}",
    tag = "simulations",
    params(
        ("id" = String, Path, description = "id"),
        ("access_token" = Option<String>, Query, description = "the API key, for clients that cannot set headers"),
    ),
    responses(
        (status = 101, description = "WebSocket: JSON events (the state at once, progress after each batch, then done/failed/cancelled)"),
        (status = 404, description = "not found", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn events(
    scope: Scope,
    simulations: web::Data<Simulations>,
    system: web::Data<System>,
    id: web::Path<String>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    // Where the events come from: this node's worker, or (for a job that
    // runs on another node of the cluster) the events it shares.
    let key = scope.tenant().key(&id);
    let feed = match simulations.subscribe(&key) {
        Some(live) => Feed::Local { live, sent: false },
        None => {
            // Subscribed before the state is read, so no event falls between.
            let bus = system.subscribe_cluster_events();
            // An unknown job is a 404 before any upgrade.
            let job = simulations.get(&key).await.map_err(ApiError::from)?;
            let event = api::SimulationEvent::from(SimulationEvent::of(&job));
            let event = serde_json::to_value(event).unwrap_or_default();
            Feed::Shared {
                bus,
                source: format!("simulation/{key}"),
                first: Some(event),
            }
        }
    };
    super::ws::relay(&request, payload, MAX_CLIENT_FRAME, feed)
}

/// A job's events for one WebSocket client, as JSON.
enum Feed {
    Local {
        live: tokio::sync::watch::Receiver<SimulationEvent>,
        sent: bool,
    },
    Shared {
        bus: tokio::sync::broadcast::Receiver<std::sync::Arc<valueverse_runtime::DomainEvent>>,
        source: String,
        first: Option<serde_json::Value>,
    },
}

impl Source for Feed {
    async fn next(&mut self) -> Outgoing {
        // None: the node is stopping, no final event will come.
        let Some(event) = self.event().await else {
            return Outgoing::End;
        };
        let last = matches!(
            event["type"].as_str(),
            Some("done" | "failed" | "cancelled")
        );
        if last {
            Outgoing::Last(event.to_string().into())
        } else {
            Outgoing::Text(event.to_string().into())
        }
    }
}

impl Feed {
    async fn event(&mut self) -> Option<serde_json::Value> {
        match self {
            Feed::Local { live, sent } => {
                // The current state at once, then each change.
                if std::mem::replace(sent, true) {
                    live.changed().await.ok()?;
                }
                let event = api::SimulationEvent::from(live.borrow_and_update().clone());
                serde_json::to_value(event).ok()
            }
            Feed::Shared { bus, source, first } => {
                if let Some(first) = first.take() {
                    return Some(first);
                }
                loop {
                    match bus.recv().await {
                        Ok(event)
                            if event.source == *source
                                && event.event_type
                                    == valueverse_agents::simulations::SHARED_EVENT =>
                        {
                            // The domain event's JSON, which is the API's
                            // shape (a unit test holds them together): sent
                            // as it came, not read and written again per
                            // subscriber (the last one carries the result).
                            return Some(event.data.clone());
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        }
    }
}
