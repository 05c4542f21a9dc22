//! `/api/v1/api-keys` (admin): create, list and revoke API keys.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use valueverse_agents::auth::{ApiKeyRow, ApiKeys, Role as DomainRole};

use super::error::ErrorDoc;
use super::error::{ApiError, parse_json};
use super::middleware::Auth;
use super::schemas::auth::Role;
use super::scope::Scope;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    role: Role,
    /// What the key is for [default: empty].
    #[serde(default)]
    #[schema(
        max_length = 200,
        pattern = "^([^\\x00-\\x1f\\x7f-\\x9f]*\\S[^\\x00-\\x1f\\x7f-\\x9f]*)?$"
    )]
    name: String,
}

/// Live API keys a tenant may have.
const MAX_KEYS_PER_TENANT: usize = 1000;

/// A key as the API lists it: never the key itself or its hash.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct KeyView {
    id: String,
    /// The tenant the key acts for.
    tenant: String,
    name: String,
    /// `viewer`, `editor`, `admin` or `platform`.
    role: String,
    created_at_ms: i64,
    /// When it was revoked; `null` while it is live.
    revoked_at_ms: Option<i64>,
}

impl From<ApiKeyRow> for KeyView {
    fn from(row: ApiKeyRow) -> KeyView {
        let ApiKeyRow {
            id,
            tenant,
            name,
            role,
            hash: _,
            created_at_ms,
            revoked_at_ms,
        } = row;
        KeyView {
            id,
            tenant,
            name,
            role,
            created_at_ms,
            revoked_at_ms,
        }
    }
}

/// Every key, revoked ones included.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct KeyList {
    items: Vec<KeyView>,
}

/// Answers the key itself, once; only its hash is stored.
#[utoipa::path(
    post,
    path = "/api/v1/api-keys",
    tag = "api-keys",
    request_body = CreateBody,
    responses(
        (status = 201, description = "the key, shown once", body = Object),
        (status = 422, description = "invalid field, named", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn create(
    scope: Scope,
    api_keys: web::Data<ApiKeys>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: CreateBody = parse_json(&body, false)?;
    // A key's name is optional; one given follows the rules of names.
    if !body.name.is_empty()
        && let Some(problem) = valueverse_gpu::model::name_problem(&body.name, 200)
    {
        return Err(ApiError::invalid_field("name", format!("`name` {problem}")));
    }
    let role: DomainRole = body.role.into();
    // A tenant's admin makes keys of its tenant; the operator's keys are
    // made on the command line only.
    if !role.is_tenant_role() {
        return Err(ApiError::invalid_field(
            "role",
            "`platform` keys are made with `valueverse apikey create --role platform` only".into(),
        ));
    }
    // Keys are per caller limits: a tenant's keys are bounded so that
    // making keys cannot multiply its share of the node.
    let live = api_keys
        .list(scope.tenant())
        .await?
        .iter()
        .filter(|key| key.revoked_at_ms.is_none())
        .count();
    if live >= MAX_KEYS_PER_TENANT {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
            format!(
                "tenant `{}` has {live} live keys, the most a tenant may have: revoke one first",
                scope.tenant()
            ),
        )
        .with_field("max_keys"));
    }
    let correlation_id = scope.1.as_ref().map(|id| id.as_str());
    let (row, key) = api_keys
        .create(
            scope.tenant(),
            role,
            &body.name,
            &scope.actor(),
            correlation_id,
        )
        .await?;
    Ok(HttpResponse::Created().json(serde_json::json!({
        "id": row.id, "name": row.name, "role": row.role, "key": key,
        "created_at_ms": row.created_at_ms,
    })))
}

#[utoipa::path(
    get,
    path = "/api/v1/api-keys",
    tag = "api-keys",
    responses(
        (status = 200, description = "every key (never the keys themselves)", body = KeyList),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn list(
    scope: Scope,
    api_keys: web::Data<ApiKeys>,
) -> Result<HttpResponse, ApiError> {
    let items = api_keys
        .list(scope.tenant())
        .await?
        .into_iter()
        .map(KeyView::from)
        .collect();
    Ok(HttpResponse::Ok().json(KeyList { items }))
}

#[utoipa::path(
    delete,
    path = "/api/v1/api-keys/{id}",
    tag = "api-keys",
    params(
        ("id" = String, Path, description = "id"),
    ),
    responses(
        (status = 204, description = "revoked"),
        (status = 404, description = "not found", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn revoke(
    scope: Scope,
    api_keys: web::Data<ApiKeys>,
    auth: web::Data<Auth>,
    limits: web::Data<super::limits::Limits>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let correlation_id = scope.1.as_ref().map(|id| id.as_str());
    if !api_keys
        .revoke(scope.tenant(), &id, &scope.actor(), correlation_id)
        .await?
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no live API key `{id}`"),
        ));
    }
    auth.keys.forget_known();
    limits.close_sockets_of(&id);
    Ok(HttpResponse::NoContent().finish())
}

/// Who the caller is, as the API authenticated it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct MeView {
    /// The tenant the caller acts for.
    tenant: String,
    role: Role,
    /// `api_key` or `oidc`.
    via: &'static str,
    /// The API key's id, for a key.
    key_id: Option<String>,
    /// The identity provider's subject, for a person.
    subject: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "api-keys",
    responses(
        (status = 200, description = "the caller: tenant, role, key or subject", body = MeView),
        (status = 401, description = "no valid key or token", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn me(scope: Scope) -> HttpResponse {
    let caller = scope.0;
    let (via, key_id) = match &caller.subject {
        Some(_) => ("oidc", None),
        None => ("api_key", Some(caller.key_id.clone())),
    };
    HttpResponse::Ok().json(MeView {
        tenant: caller.tenant.as_str().to_owned(),
        role: caller.role.into(),
        via,
        key_id,
        subject: caller.subject,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The list shows what the stored row shows, and never its hash.
    #[test]
    fn a_listed_key_is_its_row_without_the_hash() {
        let row = ApiKeyRow {
            id: "k-1".into(),
            tenant: "acme".into(),
            name: "ci".into(),
            role: "editor".into(),
            hash: "secret-digest".into(),
            created_at_ms: 1,
            revoked_at_ms: Some(2),
        };
        let shown = serde_json::to_value(KeyView::from(row.clone())).unwrap();
        assert_eq!(shown, serde_json::to_value(&row).unwrap());
        assert!(!shown.to_string().contains("secret-digest"));
    }
}
