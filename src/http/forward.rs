//! Operator actions on another node (`?node=` on a reset, a crash or a
//! simulation cancel): what lives in one node's memory is acted on there,
//! so the request is passed on to that node's API with the caller's key.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use crate::actors::System;
use crate::cluster::node::ClusterNode;

use super::error::{ApiError, parse_query};
use super::middleware::CORRELATION_HEADER;

/// `?node=`: the node whose instance or job the action is about.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeQuery {
    /// The node that runs it (default: this node).
    node: Option<String>,
}

const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `None` when the action is for this node; otherwise the other node's
/// answer, passed through.
pub(crate) async fn elsewhere(
    request: &HttpRequest,
    body: &web::Bytes,
) -> Result<Option<HttpResponse>, ApiError> {
    let query: NodeQuery = parse_query(request.query_string())?;
    let Some(node) = query.node else {
        return Ok(None);
    };
    let system = request.app_data::<web::Data<System>>();
    if system.is_some_and(|system| system.node_name() == node) {
        return Ok(None);
    }
    let cluster = request
        .app_data::<web::Data<ClusterNode>>()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown_node", "no cluster"))?;
    let view = cluster.view().await;
    let Some(member) = view
        .members
        .iter()
        .find(|member| member.node == node && member.state != "down")
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_node",
            format!("no live member `{node}` in the cluster"),
        )
        .with_field("node"));
    };
    let url = format!("http://{}{}", member.http_addr, request.path());
    let method = reqwest::Method::from_bytes(request.method().as_str().as_bytes())
        .unwrap_or(reqwest::Method::POST);
    let mut forwarded = reqwest::Client::new()
        .request(method, url)
        .timeout(FORWARD_TIMEOUT)
        .body(body.to_vec());
    for name in [
        actix_web::http::header::AUTHORIZATION,
        actix_web::http::header::CONTENT_TYPE,
        CORRELATION_HEADER,
    ] {
        if let Some(value) = request.headers().get(&name) {
            forwarded = forwarded.header(name.as_str(), value.as_bytes());
        }
    }
    let unreachable = |error: reqwest::Error| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "node_unreachable",
            format!("node `{node}` did not answer: {error}"),
        )
    };
    let answer = forwarded.send().await.map_err(unreachable)?;
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = answer.bytes().await.map_err(unreachable)?;
    Ok(Some(
        HttpResponse::build(status)
            .content_type("application/json")
            .body(body),
    ))
}
