//! Operational endpoints: liveness, readiness and Prometheus metrics.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde_json::json;

use valueverse_runtime::System;

use super::error::ApiError;
use super::error::ErrorDoc;

/// The process is alive and serving HTTP.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses(
        (status = 200, description = "the process is alive", body = Object),
    ),
)]
pub(crate) async fn health(system: web::Data<System>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok", "node": system.node_name() }))
}

/// The store is reachable and every migration is applied.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    responses(
        (status = 200, description = "the store is reachable and migrated", body = Object),
        (status = 503, description = "not ready", body = ErrorDoc),
    ),
)]
pub(crate) async fn ready(system: web::Data<System>) -> Result<HttpResponse, ApiError> {
    system
        .state()
        .check_ready()
        .await
        .map_err(|reason| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason))?;
    Ok(HttpResponse::Ok().json(json!({
        "status": "ready",
        "node": system.node_name(),
        "store": system.state().backend(),
    })))
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
    ),
)]
pub(crate) async fn metrics(system: web::Data<System>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(system.render_metrics())
}
