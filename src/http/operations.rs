//! Operational endpoints: liveness, readiness and Prometheus metrics.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::actors::System;

use super::error::ApiError;

/// The process is alive and serving HTTP.
pub(crate) async fn health(system: web::Data<System>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok", "node": system.node_name() }))
}

/// The store is reachable and every migration is applied.
pub(crate) async fn ready(system: web::Data<System>) -> Result<HttpResponse, ApiError> {
    system
        .store()
        .check_ready()
        .await
        .map_err(|reason| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason))?;
    Ok(HttpResponse::Ok().json(json!({
        "status": "ready",
        "node": system.node_name(),
        "store": system.store().backend(),
    })))
}

pub(crate) async fn metrics(system: web::Data<System>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(system.render_metrics())
}
