//! `/api/v1/value-models`: the architect agent's models, their versions,
//! listing with filters, archiving and hypotheses.

use std::time::Duration;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::schemas;
use super::schemas::architect::ModelStatus;
use valueverse_agents::Records;
use valueverse_agents::architect::{Architect, ArchitectMsg, ArchitectReply, ModelRecord};
use valueverse_gpu::model::ValueModel;
use valueverse_runtime::System;

use super::error::ErrorDoc;
use super::error::{ApiError, parse_json, parse_query};
use super::listing::list_page;
use super::scope::Scope;
use valueverse_agents::architect::{derived_hypotheses, list_models};
use valueverse_agents::quotas::TenantQuotas;

/// A model at one version, as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ModelView {
    id: String,
    status: ModelStatus,
    version: i64,
    latest_version: i64,
    archive_reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version_created_at: DateTime<Utc>,
    model: schemas::ValueModel,
    analytics: schemas::Analytics,
}

impl ModelView {
    fn of(record: &ModelRecord, version: i64) -> Option<ModelView> {
        let at = record.version(version)?;
        Some(ModelView {
            id: record.id.clone(),
            status: record.status.into(),
            version,
            latest_version: record.current().version,
            archive_reason: record.archive_reason.clone(),
            created_at: record.created_at,
            updated_at: record.updated_at,
            version_created_at: at.created_at,
            model: at.model.clone().into(),
            analytics: at.analytics.clone().into(),
        })
    }
}

fn ask_timeout(system: &System) -> Duration {
    system.runtime_config().ask_timeout
}

/// Asks the architect instance `id`; answers the record and version.
pub(crate) async fn ask_model(
    system: &System,
    scope: &Scope,
    id: &str,
    msg: ArchitectMsg,
) -> Result<(ModelRecord, i64), ApiError> {
    match scope
        .agent::<Architect>(system, id)
        .ask(msg, ask_timeout(system))
        .await?
    {
        ArchitectReply::Model { record, version } => Ok((*record, version)),
        ArchitectReply::Hypotheses { .. } => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the architect answered a model request with hypotheses",
        )),
    }
}

fn view(record: &ModelRecord, version: i64) -> Result<ModelView, ApiError> {
    ModelView::of(record, version).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no version {version}"),
        )
        .with_field("version")
    })
}

/// A model from a request body: parsed (unknown fields refused) and
/// validated, each error naming its JSON path.
fn model_from(body: &[u8]) -> Result<ValueModel, ApiError> {
    let model: schemas::ValueModel = parse_json(body, false)?;
    validated(model.into())
}

fn validated(model: ValueModel) -> Result<ValueModel, ApiError> {
    match model.validate() {
        Ok(()) => Ok(model),
        Err(invalid) => {
            let first = &invalid.errors[0];
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                invalid.to_string(),
            )
            .with_field(first.path.clone()))
        }
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/value-models",
    tag = "architect",
    request_body = schemas::ValueModel,
    responses(
        (status = 201, description = "stored as version 1, with analytics", body = ModelView),
        (status = 422, description = "invalid field, named", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn create(
    scope: Scope,
    quotas: web::Data<TenantQuotas>,
    system: web::Data<System>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let model = model_from(&body)?;
    quotas.check_models(scope.tenant(), 1).await?;
    let id = uuid::Uuid::now_v7().to_string();
    let (record, version) =
        ask_model(&system, &scope, &id, ArchitectMsg::Create(Box::new(model))).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/value-models/{id}")))
        .json(view(&record, version)?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionQuery {
    version: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/api/v1/value-models/{id}",
    tag = "architect",
    params(
        ("id" = String, Path, description = "id"),
        ("version" = Option<i64>, Query, description = "[default: the current one]"),
    ),
    responses(
        (status = 200, description = "the model at a version", body = ModelView),
        (status = 404, description = "not found", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn get(
    scope: Scope,
    system: web::Data<System>,
    id: web::Path<String>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query: VersionQuery = parse_query(request.query_string())?;
    let (record, version) = ask_model(
        &system,
        &scope,
        &id,
        ArchitectMsg::Get {
            version: query.version,
        },
    )
    .await?;
    Ok(HttpResponse::Ok().json(view(&record, version)?))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct VersionSummary {
    version: i64,
    created_at: DateTime<Utc>,
    name: String,
    npv: f64,
    roi: Option<f64>,
    payback_month: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/api/v1/value-models/{id}/versions",
    tag = "architect",
    params(
        ("id" = String, Path, description = "id"),
    ),
    responses(
        (status = 200, description = "every version", body = Object),
        (status = 404, description = "not found", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn versions(
    scope: Scope,
    system: web::Data<System>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (record, _) = ask_model(&system, &scope, &id, ArchitectMsg::Get { version: None }).await?;
    let versions: Vec<VersionSummary> = record
        .versions
        .iter()
        .map(|version| VersionSummary {
            version: version.version,
            created_at: version.created_at,
            name: version.model.name.clone(),
            npv: version.analytics.npv,
            roi: version.analytics.roi,
            payback_month: version.analytics.payback_month,
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "id": record.id, "versions": versions })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    customer: Option<String>,
    industry: Option<String>,
    status: Option<ModelStatus>,
    #[serde(default = "super::listing::default_limit")]
    limit: i64,
    #[serde(default)]
    offset: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ModelSummary {
    id: String,
    status: ModelStatus,
    version: i64,
    name: String,
    customer: String,
    industry: String,
    currency: String,
    npv: f64,
    roi: Option<f64>,
    payback_month: Option<u32>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[utoipa::path(
    get,
    path = "/api/v1/value-models",
    tag = "architect",
    params(
        ("customer" = Option<String>, Query, description = "filter"),
        ("industry" = Option<String>, Query, description = "filter"),
        ("status" = Option<ModelStatus>, Query, description = "filter"),
        ("limit" = Option<i64>, Query, description = "1 to 100 [default: 20]"),
        ("offset" = Option<i64>, Query, description = "rows to skip [default: 0]"),
    ),
    responses(
        (status = 200, description = "a page of model summaries", body = super::listing::PageOf<ModelSummary>),
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
            list_models(
                &records,
                scope.tenant(),
                query.customer.as_deref(),
                query.industry.as_deref(),
                query.status.map(Into::into),
                page,
            )
        },
        |record: ModelRecord| {
            let current = record.current();
            ModelSummary {
                id: record.id.clone(),
                status: record.status.into(),
                version: current.version,
                name: current.model.name.clone(),
                customer: current.model.customer.clone(),
                industry: current.model.industry.clone(),
                currency: current.model.currency.clone(),
                npv: current.analytics.npv,
                roi: current.analytics.roi,
                payback_month: current.analytics.payback_month,
                created_at: record.created_at,
                updated_at: record.updated_at,
            }
        },
    )
    .await
}

/// `PATCH`: a JSON merge patch (RFC 7396) over the current version makes
/// the next one. `If-Match: "N"` names the version the patch was written
/// against; without it, the version read here.
/// A JSON merge patch over a model, as the document shows it: the model's
/// own fields, each optional (`null` removes one; the result must be a
/// valid model).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ModelPatch {
    name: Option<String>,
    customer: Option<String>,
    industry: Option<String>,
    currency: Option<String>,
    horizon_months: Option<u32>,
    discount_rate: Option<f64>,
    #[schema(value_type = Option<Object>)]
    costs: Option<serde_json::Value>,
    drivers: Option<Vec<schemas::Driver>>,
    correlations: Option<Vec<schemas::Correlation>>,
}

#[utoipa::path(
    patch,
    path = "/api/v1/value-models/{id}",
    tag = "architect",
    request_body(content = ModelPatch, description = "a JSON merge patch (RFC 7396) over the model", content_type = "application/merge-patch+json"),
    params(
        ("id" = String, Path, description = "id"),
    ),
    responses(
        (status = 200, description = "the new version (a JSON merge patch over the current one; If-Match: the version it was written against)", body = ModelView),
        (status = 404, description = "not found", body = ErrorDoc),
        (status = 409, description = "conflict with the current state", body = ErrorDoc),
        (status = 422, description = "invalid field, named", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn patch(
    scope: Scope,
    system: web::Data<System>,
    limits: web::Data<super::limits::Limits>,
    id: web::Path<String>,
    request: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let patch: serde_json::Value = parse_json(&body, false)?;
    if !patch.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "a merge patch must be a JSON object",
        ));
    }
    let (record, current) =
        ask_model(&system, &scope, &id, ArchitectMsg::Get { version: None }).await?;
    let base_version = match request.headers().get(header::IF_MATCH) {
        None => current,
        Some(value) => value
            .to_str()
            .ok()
            .map(|text| text.trim().trim_matches('"'))
            .and_then(|text| text.parse::<i64>().ok())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_header",
                    "If-Match must be a model version, e.g. \"3\"",
                )
                .with_field("If-Match")
            })?,
    };
    let mut merged = serde_json::to_value(&record.current().model).map_err(|error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            error.to_string(),
        )
    })?;
    json_patch::merge(&mut merged, &patch);
    let merged = serde_json::to_vec(&merged).map_err(|error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            error.to_string(),
        )
    })?;
    // The patch was well formed; a merged model that does not read as one
    // (a required field removed with `null`) is invalid: 422.
    let model: schemas::ValueModel = parse_json(&merged, false).map_err(|mut error| {
        error.status = StatusCode::UNPROCESSABLE_ENTITY;
        error.code = "invalid_field".into();
        error
    })?;
    let model = validated(model.into())?;
    let (record, version) = ask_model(
        &system,
        &scope,
        &id,
        ArchitectMsg::Update {
            model: Box::new(model),
            base_version,
            max_versions: limits.config.model_versions,
        },
    )
    .await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, format!("\"{version}\"")))
        .json(view(&record, version)?))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ArchiveBody {
    reason: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/value-models/{id}/archive",
    tag = "architect",
    request_body = ArchiveBody,
    params(
        ("id" = String, Path, description = "id"),
    ),
    responses(
        (status = 200, description = "archived", body = ModelView),
        (status = 404, description = "not found", body = ErrorDoc),
        (status = 409, description = "conflict with the current state", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn archive(
    scope: Scope,
    system: web::Data<System>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: ArchiveBody = parse_json(&body, true)?;
    let (record, version) = ask_model(
        &system,
        &scope,
        &id,
        ArchitectMsg::Archive {
            reason: body.reason,
        },
    )
    .await?;
    Ok(HttpResponse::Ok().json(view(&record, version)?))
}

fn default_hypotheses() -> usize {
    10
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct HypothesesBody {
    #[serde(default = "default_hypotheses")]
    #[schema(minimum = 1, maximum = 50)]
    limit: usize,
}

#[utoipa::path(
    post,
    path = "/api/v1/value-models/{id}/hypotheses",
    tag = "architect",
    request_body = HypothesesBody,
    params(
        ("id" = String, Path, description = "id"),
    ),
    responses(
        (status = 409, description = "the state of what it names refuses it (a voided commitment, an archived model)", body = ErrorDoc),
        (status = 200, description = "candidate drivers, best first", body = schemas::architect::Hypotheses),
        (status = 404, description = "not found", body = ErrorDoc),
        (status = 422, description = "invalid field, named", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn hypotheses(
    scope: Scope,
    system: web::Data<System>,
    records: web::Data<Records>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: HypothesesBody = parse_json(&body, true)?;
    if !(1..=50).contains(&body.limit) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!("`limit` must be within 1..=50, got {}", body.limit),
        )
        .with_field("limit"));
    }
    let reply = scope
        .agent::<Architect>(&system, &id)
        .ask(
            ArchitectMsg::Hypotheses { limit: body.limit },
            ask_timeout(&system),
        )
        .await;
    let refusal = match reply {
        Ok(ArchitectReply::Hypotheses {
            industry,
            hypotheses,
        }) => {
            return Ok(HttpResponse::Ok().json(schemas::architect::Hypotheses {
                industry,
                source: "catalogue".into(),
                hypotheses: hypotheses.into_iter().map(Into::into).collect(),
            }));
        }
        Ok(ArchitectReply::Model { .. }) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the architect answered a hypotheses request with a model",
            ));
        }
        Err(error) => ApiError::from(error),
    };
    if refusal.code != "unknown_industry" {
        return Err(refusal);
    }
    // No template for the industry: the tenant's own models in similar
    // industries say what to expect.
    let (record, _) = ask_model(&system, &scope, &id, ArchitectMsg::Get { version: None }).await?;
    let derived = derived_hypotheses(&records, scope.tenant(), &record, body.limit).await?;
    if derived.is_empty() {
        return Err(ApiError::new(
            refusal.status,
            &refusal.code,
            format!(
                "{}; and none of your models is in an industry similar to `{}`",
                refusal.message,
                record.current().model.industry
            ),
        )
        .with_field("industry"));
    }
    Ok(HttpResponse::Ok().json(schemas::architect::Hypotheses {
        industry: record.current().model.industry.to_lowercase(),
        source: "derived".into(),
        hypotheses: derived.into_iter().map(Into::into).collect(),
    }))
}
