//! `/api/v1/sagas`: start value-creation and renewal sagas, follow them,
//! cancel them, retry one that needs attention.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use chrono::{NaiveDate, Utc};
use serde::Deserialize;

use valueverse_agents::Records;
use valueverse_agents::architect::{ArchitectMsg, ModelStatus};
use valueverse_agents::auth::Role;
use valueverse_agents::committer::{CommitmentStatus, Committer, CommitterMsg, check_commitment};
use valueverse_agents::saga::SagaMsg;
use valueverse_agents::sagas::{
    RenewalInput, Saga, SagaDefinition, SagaInput, SagaRunner, ValueCreationInput, renewal,
    value_creation,
};
use valueverse_runtime::System;

use super::error::{ApiError, ErrorDoc, parse_json, parse_query};
use super::listing::list_page;
use super::middleware::Auth;
use super::schemas;
use super::schemas::committer as committer_api;
use super::schemas::sagas as api;
use super::scope::Scope;
use super::value_models::ask_model;
use super::ws::{Outgoing, Source};
use valueverse_agents::quotas::TenantQuotas;

/// What a value-creation saga is asked to do.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = ValueCreationInput)]
#[serde(deny_unknown_fields)]
struct ValueCreationBody {
    model: schemas::ValueModel,
    /// 0.5 to 0.95.
    #[schema(minimum = 0.5, maximum = 0.95)]
    confidence: f64,
    /// [default: the NPV the simulation reaches at `confidence`]
    #[schema(minimum = -9007199254740991.0, maximum = 9007199254740991.0)]
    target: Option<f64>,
    terms: committer_api::Terms,
    #[serde(default)]
    #[schema(max_items = 100)]
    milestones: Vec<committer_api::Milestone>,
    /// [default: today]
    start_date: Option<NaiveDate>,
    /// Paths of the simulation step, 1 to 10^7 [default: 20000].
    #[serde(default = "api::default_paths")]
    #[schema(minimum = 1, maximum = 10_000_000)]
    paths: u64,
    /// Admin only: the step to fail, to see the compensations run.
    #[schema(pattern = "^(design|simulate|commit|plan|amplify)$")]
    fail_step: Option<String>,
}

impl From<ValueCreationBody> for ValueCreationInput {
    fn from(body: ValueCreationBody) -> ValueCreationInput {
        let ValueCreationBody {
            model,
            confidence,
            target,
            terms,
            milestones,
            start_date,
            paths,
            fail_step,
        } = body;
        ValueCreationInput {
            model: model.into(),
            confidence,
            target,
            terms: terms.into(),
            milestones: milestones.into_iter().map(Into::into).collect(),
            start_date,
            paths,
            fail_step,
            // Monthly statements: the saga's body has no period of its own.
            statement_months: 1,
        }
    }
}

/// Fault injection is for admins (and `--dev`).
fn check_fail_step(
    request: &HttpRequest,
    auth: &Auth,
    fail_step: &Option<String>,
    definition: &SagaDefinition,
) -> Result<(), ApiError> {
    let Some(step) = fail_step else {
        return Ok(());
    };
    let role = request.extensions().get::<Role>().copied();
    if !auth.dev && role != Some(Role::Admin) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "`fail_step` (fault injection) needs the admin role",
        ));
    }
    if !definition.steps.iter().any(|s| s.name() == step) {
        let names: Vec<&str> = definition.steps.iter().map(|s| s.name()).collect();
        return Err(ApiError::invalid_field(
            "fail_step",
            format!(
                "{} has no step `{step}` (steps: {})",
                definition.name,
                names.join(", ")
            ),
        ));
    }
    Ok(())
}

/// Paths of a saga's simulation step: the bound value creation always had.
fn check_paths(paths: u64) -> Result<(), ApiError> {
    if !(1..=10_000_000).contains(&paths) {
        return Err(ApiError::invalid_field(
            "paths",
            format!("must be within 1..=10000000, got {paths}"),
        ));
    }
    Ok(())
}

fn accepted(saga: Saga) -> HttpResponse {
    let view = api::Saga::from(saga);
    HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/api/v1/sagas/{}", view.id)))
        .json(view)
}

/// A new saga of the caller, in its tenant (the saga's id is its instance
/// key, from which the keys of what it makes follow): its jobs count
/// against the caller's key.
fn start(scope: &Scope, request: &HttpRequest, input: &SagaInput) -> Result<Saga, ApiError> {
    let key = scope.tenant().key(&uuid::Uuid::now_v7().to_string());
    let mut saga = input.start(key.to_string(), Utc::now()).map_err(|error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the saga's input does not serialize: {error}"),
        )
    })?;
    saga.started_by = request
        .extensions()
        .get::<valueverse_agents::auth::Caller>()
        .map(valueverse_agents::auth::Caller::lane);
    Ok(saga)
}

#[utoipa::path(
    post,
    path = "/api/v1/sagas/value-creation",
    tag = "sagas",
    request_body = ValueCreationBody,
    responses(
        (status = 202, description = "started", body = api::Saga),
        (status = 400, description = "malformed JSON or unknown field", body = ErrorDoc),
        (status = 403, description = "fail_step without the admin role", body = ErrorDoc),
        (status = 422, description = "invalid field, named", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn start_value_creation(
    scope: Scope,
    quotas: web::Data<TenantQuotas>,
    runner: web::Data<SagaRunner>,
    auth: web::Data<Auth>,
    request: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let input = ValueCreationInput::from(parse_json::<ValueCreationBody>(&body, false)?);
    let definition = value_creation();
    check_fail_step(&request, &auth, &input.fail_step, &definition)?;
    if let Err(invalid_model) = input.model.validate() {
        let first = &invalid_model.errors[0];
        return Err(ApiError::invalid_field(
            &format!("model.{}", first.path),
            invalid_model.to_string(),
        ));
    }
    // The very rules `POST /api/v1/commitments` applies, at start.
    check_commitment(
        input.confidence,
        input.target,
        &input.terms,
        &input.milestones,
    )
    .map_err(|error| ApiError::invalid_field(&error.path, error.message))?;
    check_paths(input.paths)?;
    // The model it designs and the paths it simulates count now.
    quotas.check_models(scope.tenant(), 1).await?;
    quotas.check_paths(scope.tenant(), input.paths).await?;
    let saga = start(&scope, &request, &SagaInput::ValueCreation(Box::new(input)))?;
    Ok(accepted(runner.start_saga(saga).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/sagas/renewal",
    tag = "sagas",
    request_body = api::RenewalInput,
    responses(
        (status = 409, description = "the state of what it names refuses it (a voided commitment, an archived model)", body = ErrorDoc),
        (status = 202, description = "started", body = api::Saga),
        (status = 404, description = "no such commitment", body = ErrorDoc),
        (status = 422, description = "invalid field, named", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn start_renewal(
    scope: Scope,
    quotas: web::Data<TenantQuotas>,
    runner: web::Data<SagaRunner>,
    system: web::Data<System>,
    auth: web::Data<Auth>,
    request: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let input = RenewalInput::from(parse_json::<api::RenewalInput>(&body, false)?);
    let definition = renewal();
    check_fail_step(&request, &auth, &input.fail_step, &definition)?;
    check_paths(input.paths)?;
    // 404 or 422 now rather than a failed saga later: only an active
    // commitment of a live model is renewed.
    let commitment = scope
        .agent::<Committer>(&system, &input.commitment_id)
        .ask(CommitterMsg::Get, system.runtime_config().ask_timeout)
        .await?;
    // The request is well formed; the commitment's state refuses it: 409.
    if commitment.status != CommitmentStatus::Active {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "commitment {} is {}; only an active commitment is renewed",
                commitment.id,
                commitment.status.as_str()
            ),
        )
        .with_field("commitment_id"));
    }
    let (model, _) = ask_model(
        &system,
        &scope,
        &commitment.request.model_id,
        ArchitectMsg::Get { version: None },
    )
    .await?;
    if model.status != ModelStatus::Active {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "the commitment's model {} is archived; it cannot be renewed",
                commitment.request.model_id
            ),
        )
        .with_field("commitment_id"));
    }
    quotas.check_paths(scope.tenant(), input.paths).await?;
    let saga = start(&scope, &request, &SagaInput::Renewal(input))?;
    Ok(accepted(runner.start_saga(saga).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/sagas/{id}",
    tag = "sagas",
    params(("id" = String, Path, description = "saga id")),
    responses(
        (status = 200, description = "the saga: status, each step's state, attempts, timings, errors", body = api::Saga),
        (status = 404, description = "not found", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn get(
    scope: Scope,
    runner: web::Data<SagaRunner>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(api::Saga::from(runner.get(&scope.tenant().key(&id)).await?)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<api::SagaStatus>,
    definition: Option<String>,
    #[serde(default = "super::listing::default_limit")]
    limit: i64,
    #[serde(default)]
    offset: i64,
}

#[utoipa::path(
    get,
    path = "/api/v1/sagas",
    tag = "sagas",
    params(
        ("status" = Option<api::SagaStatus>, Query, description = "filter"),
        ("definition" = Option<String>, Query, description = "value-creation or renewal"),
        ("limit" = Option<i64>, Query, description = "1 to 100 [default: 20]"),
        ("offset" = Option<i64>, Query, description = "rows to skip"),
    ),
    responses(
        (status = 200, description = "a page of sagas", body = super::listing::PageOf<api::SagaSummary>),
        (status = 400, description = "bad query", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn list(
    scope: Scope,
    records: web::Data<Records>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query: ListQuery = parse_query(request.query_string())?;
    list_page(
        (query.limit, query.offset),
        |page| {
            valueverse_agents::sagas::list_sagas(
                &records,
                scope.tenant(),
                query.status.map(Into::into),
                query.definition.as_deref(),
                page,
            )
        },
        api::SagaSummary::from,
    )
    .await
}

#[utoipa::path(
    post,
    path = "/api/v1/sagas/{id}/cancel",
    tag = "sagas",
    params(("id" = String, Path, description = "saga id")),
    responses(
        (status = 200, description = "compensating what was done", body = api::Saga),
        (status = 404, description = "not found", body = ErrorDoc),
        (status = 409, description = "not running", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn cancel(
    scope: Scope,
    runner: web::Data<SagaRunner>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(api::Saga::from(
        runner.cancel(&scope.tenant().key(&id)).await?,
    )))
}

#[utoipa::path(
    post,
    path = "/api/v1/sagas/{id}/retry",
    tag = "sagas",
    params(("id" = String, Path, description = "saga id")),
    responses(
        (status = 200, description = "compensating again", body = api::Saga),
        (status = 404, description = "not found", body = ErrorDoc),
        (status = 409, description = "does not need attention", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn retry(
    scope: Scope,
    runner: web::Data<SagaRunner>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let saga = runner
        .tell(&scope.tenant().key(&id), SagaMsg::Retry)
        .await?;
    Ok(HttpResponse::Ok().json(api::Saga::from(saga)))
}

#[utoipa::path(
    get,
    path = "/ws/sagas/{id}",
    tag = "sagas",
    params(
        ("id" = String, Path, description = "saga id"),
        ("access_token" = Option<String>, Query, description = "the API key, for clients that cannot set headers"),
    ),
    responses(
        (status = 101, description = "WebSocket: `{\"type\":\"state\"}` with the saga at once, then `{\"type\":\"transition\"}` for each transition; closes at completed or compensated"),
        (status = 404, description = "not found", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn events(
    scope: Scope,
    runner: web::Data<SagaRunner>,
    system: web::Data<System>,
    id: web::Path<String>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    // Subscribed before the state is read, so no transition falls between.
    // The cluster's events: the coordinator may live on another node.
    let bus = system.subscribe_cluster_events();
    let key = scope.tenant().key(&id);
    let saga = runner.get(&key).await.map_err(ApiError::from)?;
    let feed = Transitions {
        bus,
        runner: runner.into_inner(),
        tenant: scope.tenant().clone(),
        id: id.into_inner(),
        first: Some(saga),
    };
    super::ws::relay(&request, payload, 4096, feed)
}

/// A saga's state, then each of its transitions until it completes or is
/// compensated.
struct Transitions {
    bus: tokio::sync::broadcast::Receiver<std::sync::Arc<valueverse_runtime::DomainEvent>>,
    runner: std::sync::Arc<SagaRunner>,
    tenant: valueverse_runtime::Tenant,
    id: String,
    first: Option<Saga>,
}

fn state_message(saga: Saga) -> String {
    serde_json::json!({ "type": "state", "saga": api::Saga::from(saga) }).to_string()
}

impl Source for Transitions {
    async fn next(&mut self) -> Outgoing {
        use tokio::sync::broadcast::error::RecvError;
        if let Some(saga) = self.first.take() {
            let last = saga.status.is_final();
            let text = state_message(saga);
            return if last {
                Outgoing::Last(text.into())
            } else {
                Outgoing::Text(text.into())
            };
        }
        loop {
            match self.bus.recv().await {
                Ok(event)
                    if event.event_type == "saga.transition"
                        && event.tenant == self.tenant.as_str()
                        && event.source.strip_prefix("saga/") == Some(self.id.as_str()) =>
                {
                    let done = event.data["status"]
                        .as_str()
                        .is_some_and(|status| status == "completed" || status == "compensated");
                    let text = serde_json::json!({ "type": "transition", "at": event.occurred_at, "transition": event.data }).to_string();
                    return if done {
                        Outgoing::Last(text.into())
                    } else {
                        Outgoing::Text(text.into())
                    };
                }
                Ok(_) => {}
                // Too slow for the bus: the current state instead of what
                // was missed.
                Err(RecvError::Lagged(_)) => {
                    return match self.runner.get(&self.tenant.key(&self.id)).await {
                        Ok(saga) => Outgoing::Text(state_message(saga).into()),
                        Err(_) => Outgoing::End,
                    };
                }
                Err(RecvError::Closed) => return Outgoing::End,
            }
        }
    }
}
