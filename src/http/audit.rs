//! `GET /api/v1/audit`: the tenant's audit log, newest first (its admins).

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use valueverse_agents::auth::ApiKeys;
use valueverse_runtime::AuditEntry;

use super::error::{ApiError, ErrorDoc, parse_query};
use super::scope::Scope;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    /// Only this actor's entries (`key:<id>`... as the entries name them).
    actor: Option<String>,
    /// Only entries about this target (`architect/<id>`, `api-key/<id>`...).
    target: Option<String>,
    /// From this time on (RFC 3339).
    since: Option<DateTime<Utc>>,
    /// Before this time (RFC 3339).
    until: Option<DateTime<Utc>>,
    /// 1 to 100 [default: 100] (as every page of the API).
    limit: Option<i64>,
}

/// One entry: who did what to which target, when, and how it ended.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditView {
    id: String,
    actor: String,
    action: String,
    target: String,
    correlation_id: Option<String>,
    outcome: String,
    at: DateTime<Utc>,
}

impl From<AuditEntry> for AuditView {
    fn from(entry: AuditEntry) -> AuditView {
        let AuditEntry {
            id,
            tenant: _,
            actor,
            action,
            target,
            correlation_id,
            outcome,
            at_ms,
        } = entry;
        AuditView {
            id,
            actor,
            action,
            target,
            correlation_id,
            outcome,
            at: DateTime::from_timestamp_millis(at_ms).unwrap_or_default(),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AuditPage {
    items: Vec<AuditView>,
}

#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "audit",
    operation_id = "audit_log",
    params(AuditQuery),
    responses(
        (status = 200, description = "the tenant's entries, newest first", body = AuditPage),
        (status = 400, description = "bad query", body = ErrorDoc),
        (status = 422, description = "a filter out of range, named", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn list(
    scope: Scope,
    api_keys: web::Data<ApiKeys>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query: AuditQuery = parse_query(request.query_string())?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid_field(
            "limit",
            format!("`limit` must be within 1..=100, got {limit}"),
        ));
    }
    for (field, value) in [("actor", &query.actor), ("target", &query.target)] {
        if value.as_ref().is_some_and(|value| value.len() > 512) {
            return Err(ApiError::invalid_field(
                field,
                format!("`{field}` is at most 512 bytes"),
            ));
        }
    }
    let entries = api_keys
        .audit(scope.tenant(), valueverse_store_query(&query, limit))
        .await?;
    Ok(HttpResponse::Ok().json(AuditPage {
        items: entries.into_iter().map(AuditView::from).collect(),
    }))
}

fn valueverse_store_query(
    query: &AuditQuery,
    limit: i64,
) -> valueverse_agents::auth::AuditFilter<'_> {
    valueverse_agents::auth::AuditFilter {
        actor: query.actor.as_deref(),
        target: query.target.as_deref(),
        since_ms: query.since.map(|at| at.timestamp_millis()),
        until_ms: query.until.map(|at| at.timestamp_millis()),
        limit,
    }
}
