//! `/api/v1/actors`: the live supervision tree and operator resets.

use actix_web::{HttpResponse, web};
use serde::Deserialize;

use crate::actors::{CorrelationId, System};

use super::error::ErrorDoc;
use super::error::{ApiError, parse_json};

/// The supervision tree of this node.
#[utoipa::path(
    get,
    path = "/api/v1/actors",
    tag = "actors",
    responses(
        (status = 200, description = "the live supervision tree of this node", body = Object),
        (status = 401, description = "no or unknown API key", body = ErrorDoc),
        (status = 403, description = "the key's role is too weak", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn tree(system: web::Data<System>) -> HttpResponse {
    HttpResponse::Ok().json(system.supervision_tree())
}

/// Optional body of a reset.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ResetRequest {
    /// Why the operator resets the instance; goes to the log.
    reason: Option<String>,
}

/// Clears a failed instance: restart history forgotten, state reloaded.
#[utoipa::path(
    post,
    path = "/api/v1/actors/{kind}/{key}/reset",
    tag = "actors",
    request_body = ResetRequest,
    params(
        ("kind" = String, Path, description = "agent kind"),
        ("key" = String, Path, description = "instance key"),
    ),
    responses(
        (status = 200, description = "the instance, reset", body = Object),
        (status = 401, description = "no or unknown API key", body = ErrorDoc),
        (status = 403, description = "the key's role is too weak", body = ErrorDoc),
        (status = 404, description = "not found", body = ErrorDoc),
        (status = 409, description = "conflict with the current state", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn reset(
    system: web::Data<System>,
    path: web::Path<(String, String)>,
    correlation_id: web::ReqData<CorrelationId>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let request: ResetRequest = parse_json(&body, true)?;
    let (kind, key) = path.into_inner();
    let correlation_id = correlation_id.into_inner();
    tracing::info!(
        %kind,
        %key,
        %correlation_id,
        reason = request.reason.as_deref().unwrap_or(""),
        "reset requested"
    );
    let snapshot = system.reset(&kind, &key, Some(correlation_id)).await?;
    Ok(HttpResponse::Ok().json(snapshot))
}
