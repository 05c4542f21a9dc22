//! `/api/v1/commitments`: commit to a value target that the model's latest
//! simulation supports; read, list and void commitments.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use valueverse_agents::Records;
use valueverse_agents::architect::{ArchitectMsg, ModelStatus};
use valueverse_agents::committer::{
    Commitment, CommitmentRequest, Committer, CommitterMsg, SimulatedSupport, check_commitment,
};
use valueverse_agents::simulations::Simulations;
use valueverse_runtime::System;

use super::error::ErrorDoc;
use super::error::{ApiError, parse_json, parse_query};
use super::listing::list_page;
use super::schemas::committer as api;
use super::scope::Scope;
use super::value_models::ask_model;
use valueverse_agents::committer::list_commitments;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CommitBody {
    model_id: String,
    /// [default: the model's current version]
    model_version: Option<i64>,
    /// 0.5 to 0.95: the probability the outcome reaches the target.
    #[schema(minimum = 0.5, maximum = 0.95)]
    confidence: f64,
    #[schema(minimum = -9007199254740991.0, maximum = 9007199254740991.0)]
    target: f64,
    terms: api::Terms,
    #[serde(default)]
    #[schema(max_items = 100)]
    milestones: Vec<api::Milestone>,
}

async fn ask(
    system: &System,
    scope: &Scope,
    id: &str,
    msg: CommitterMsg,
) -> Result<Commitment, ApiError> {
    Ok(scope
        .agent::<Committer>(system, id)
        .ask(msg, system.runtime_config().ask_timeout)
        .await?)
}

#[utoipa::path(
    post,
    path = "/api/v1/commitments",
    tag = "committer",
    request_body = CommitBody,
    responses(
        (status = 201, description = "committed", body = api::Commitment),
        (status = 404, description = "not found", body = ErrorDoc),
        (status = 422, description = "invalid field, named", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn commit(
    scope: Scope,
    system: web::Data<System>,
    simulations: web::Data<Simulations>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: CommitBody = parse_json(&body, false)?;
    let terms = body.terms.into();
    let milestones: Vec<_> = body.milestones.into_iter().map(Into::into).collect();
    check_commitment(body.confidence, Some(body.target), &terms, &milestones)
        .map_err(|error| ApiError::invalid_field(&error.path, error.message))?;
    let (record, version) = ask_model(
        &system,
        &scope,
        &body.model_id,
        ArchitectMsg::Get {
            version: body.model_version,
        },
    )
    .await?;
    if record.status == ModelStatus::Archived {
        return Err(ApiError::invalid_field(
            "model_id",
            format!(
                "value model `{}` is archived: nothing can be committed to it",
                record.id
            ),
        ));
    }
    let model = &record.version(version).expect("an existing version").model;
    // The committer decides; the simulation kind answers what it needs.
    let simulated = simulations
        .latest_evidence(scope.tenant(), &record.id, version)
        .await?
        .and_then(|job| {
            let id = valueverse_runtime::split_key(&job.id).1;
            SimulatedSupport::of(id, &job, body.confidence)
        });
    let request = CommitmentRequest {
        model_id: record.id.clone(),
        model_version: version,
        model_name: model.name.clone(),
        currency: model.currency.clone(),
        confidence: body.confidence,
        target: body.target,
        terms,
        milestones,
    };
    let id = uuid::Uuid::now_v7().to_string();
    let commitment = ask(
        &system,
        &scope,
        &id,
        CommitterMsg::Commit {
            request: Box::new(request),
            simulated,
            min_paths: simulations.min_evidence_paths(),
        },
    )
    .await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/commitments/{id}")))
        .json(api::Commitment::from(commitment)))
}

#[utoipa::path(
    get,
    path = "/api/v1/commitments/{id}",
    tag = "committer",
    params(
        ("id" = String, Path, description = "id"),
    ),
    responses(
        (status = 200, description = "the commitment", body = api::Commitment),
        (status = 404, description = "not found", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn get(
    scope: Scope,
    system: web::Data<System>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let commitment = ask(&system, &scope, &id, CommitterMsg::Get).await?;
    Ok(HttpResponse::Ok().json(api::Commitment::from(commitment)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct VoidBody {
    #[schema(min_length = 1, max_length = 1000, pattern = "\\S")]
    reason: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/commitments/{id}/void",
    tag = "committer",
    request_body = VoidBody,
    params(
        ("id" = String, Path, description = "id"),
    ),
    responses(
        (status = 200, description = "voided", body = api::Commitment),
        (status = 404, description = "not found", body = ErrorDoc),
        (status = 409, description = "conflict with the current state", body = ErrorDoc),
        (status = 422, description = "invalid field, named", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn void(
    scope: Scope,
    system: web::Data<System>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: VoidBody = parse_json(&body, false)?;
    let reason = ApiError::check_reason(&body.reason, 1000)?;
    let commitment = ask(
        &system,
        &scope,
        &id,
        CommitterMsg::Void {
            reason: reason.to_owned(),
        },
    )
    .await?;
    Ok(HttpResponse::Ok().json(api::Commitment::from(commitment)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    model_id: Option<String>,
    status: Option<api::CommitmentStatus>,
    #[serde(default = "super::listing::default_limit")]
    limit: i64,
    #[serde(default)]
    offset: i64,
}

#[utoipa::path(
    get,
    path = "/api/v1/commitments",
    tag = "committer",
    params(
        ("model_id" = Option<String>, Query, description = "filter"),
        ("status" = Option<api::CommitmentStatus>, Query, description = "filter"),
        ("limit" = Option<i64>, Query, description = "1 to 100 [default: 20]"),
        ("offset" = Option<i64>, Query, description = "rows to skip [default: 0]"),
    ),
    responses(
        (status = 200, description = "a page of commitments", body = super::listing::PageOf<api::Commitment>),
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
            let status = query.status.map(Into::into);
            list_commitments(
                &records,
                scope.tenant(),
                query.model_id.as_deref(),
                status,
                page,
            )
        },
        api::Commitment::from,
    )
    .await
}
