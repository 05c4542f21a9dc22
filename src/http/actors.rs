//! `/api/v1/actors`: the live supervision tree and operator resets.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use valueverse_runtime::{CorrelationId, System};

use super::error::ErrorDoc;
use super::error::{ApiError, parse_json};
use super::forward::{self, NodeQuery};
use super::schemas::supervision::SupervisionTree;
use super::scope::Scope;
use valueverse_agents::auth::{ApiKeys, Role};

/// The supervision tree of this node.
#[utoipa::path(
    get,
    path = "/api/v1/actors",
    tag = "actors",
    responses(
        (status = 200, description = "the live supervision tree of this node", body = SupervisionTree),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn tree(scope: Scope, system: web::Data<System>) -> HttpResponse {
    let tree = system.supervision_tree();
    // The operator sees every tenant's instances; a tenant its own.
    let tree = match scope.0.role {
        Role::Platform => tree,
        _ => tree.of_tenant(scope.tenant()),
    };
    HttpResponse::Ok().json(SupervisionTree::from(tree))
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
        NodeQuery,
    ),
    responses(
        (status = 200, description = "the instance, reset", body = Object),
        (status = 404, description = "not found", body = ErrorDoc),
        (status = 409, description = "conflict with the current state", body = ErrorDoc),
        (status = 422, description = "invalid body or `tenant`", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn reset(
    scope: Scope,
    api_keys: web::Data<ApiKeys>,
    system: web::Data<System>,
    path: web::Path<(String, String)>,
    http: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    operate(&scope, &api_keys, &system, path, &http, &body, |body| {
        let request: ResetRequest = parse_json(body, true)?;
        Ok(OperatorAction::Reset {
            reason: request.reason.unwrap_or_default(),
        })
    })
    .await
}

/// What an operator asked for, parsed from the body.
enum OperatorAction {
    Reset { reason: String },
    Crash { reason: String },
}

/// An operator action on one instance: passed on to the node that holds
/// it (`?node=`), or carried out here and logged with its reason.
async fn operate(
    scope: &Scope,
    api_keys: &ApiKeys,
    system: &System,
    path: web::Path<(String, String)>,
    http: &HttpRequest,
    body: &web::Bytes,
    parse: impl FnOnce(&[u8]) -> Result<OperatorAction, ApiError>,
) -> Result<HttpResponse, ApiError> {
    if let Some(answer) = forward::elsewhere(http, body).await? {
        return Ok(answer);
    }
    let action = parse(body)?;
    let (kind, id) = path.into_inner();
    // A tenant's admin operates its own instances (named by id); the
    // operator any instance, named by its key or by `?tenant=` and id.
    let key = match scope.0.role {
        Role::Platform => match super::scope::operator_tenant(http)? {
            Some(tenant) => tenant.key(&id).to_string(),
            None => id,
        },
        _ => scope.tenant().key(&id).to_string(),
    };
    let correlation_id = scope.1.clone().unwrap_or_else(CorrelationId::generate);
    let (verb, done) = match action {
        OperatorAction::Reset { reason } => {
            tracing::info!(%kind, %key, %correlation_id, %reason, "reset requested");
            (
                "reset",
                system.reset(&kind, &key, Some(correlation_id)).await,
            )
        }
        OperatorAction::Crash { reason } => {
            tracing::warn!(%kind, %key, %correlation_id, %reason, "fault injection requested");
            let done = system
                .crash(&kind, &key, reason, Some(correlation_id))
                .await;
            ("crash", done)
        }
    };
    // In the audit log of the instance's tenant, done or refused.
    let (tenant, id) = valueverse_runtime::split_key(&key);
    let outcome = match &done {
        Ok(_) => "ok".to_owned(),
        Err(error) => format!("refused: {error}"),
    };
    let mut entry = scope.audit(verb, &format!("{kind}/{id}"), &outcome);
    entry.tenant = tenant.to_owned();
    if let Err(error) = api_keys.append_audit(&entry).await {
        tracing::warn!(%error, "the operator's action is not in the audit log");
    }
    Ok(HttpResponse::Ok().json(done?))
}

/// Body of a fault injection.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CrashRequest {
    /// Why: goes to the log and the instance's last failure.
    #[schema(min_length = 1, max_length = 500, pattern = "\\S")]
    reason: String,
}

/// Fault injection (admin): a running instance fails as if its handler had,
/// and its supervisor restarts it or, past its restart budget, escalates.
#[utoipa::path(
    post,
    path = "/api/v1/actors/{kind}/{key}/crash",
    tag = "actors",
    request_body = CrashRequest,
    params(
        ("kind" = String, Path, description = "agent kind"),
        ("key" = String, Path, description = "instance key"),
        NodeQuery,
    ),
    responses(
        (status = 200, description = "the instance, failed and in its supervisor's hands", body = Object),
        (status = 404, description = "no such instance on the node", body = ErrorDoc),
        (status = 409, description = "the instance is not running", body = ErrorDoc),
        (status = 422, description = "invalid body", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn crash(
    scope: Scope,
    api_keys: web::Data<ApiKeys>,
    system: web::Data<System>,
    path: web::Path<(String, String)>,
    http: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    operate(&scope, &api_keys, &system, path, &http, &body, |body| {
        let request: CrashRequest = parse_json(body, false)?;
        let reason = ApiError::check_reason(&request.reason, 500)?;
        Ok(OperatorAction::Crash {
            reason: reason.to_owned(),
        })
    })
    .await
}
