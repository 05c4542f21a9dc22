//! Operator actions on another node (`?node=` on a reset, a crash or a
//! simulation cancel): what lives in one node's memory is acted on there,
//! so the request is passed on to that node's API, signed as a peer
//! request under the cluster secret (the caller's key, checked here, does
//! not travel), and its answer is taken only with the far node's signature.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use valueverse_cluster::node::ClusterNode;
use valueverse_cluster::peer_requests::{self, PeerRequests};
use valueverse_runtime::System;
use valueverse_runtime::unix_millis;

use super::error::{ApiError, parse_query};
use super::middleware::CORRELATION_HEADER;

/// `?node=`: the node whose instance or job the action is about.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeQuery {
    /// The node that runs it (default: this node).
    node: Option<String>,
    /// The operator's: whose instance `key` is (a tenant's caller acts on
    /// its own tenant only).
    tenant: Option<String>,
    /// Set by the node that passes the operator's action on (signed); a
    /// client's is ignored.
    #[param(ignore)]
    #[allow(dead_code)]
    operator: Option<bool>,
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
    let Some(peers) = request.app_data::<web::Data<PeerRequests>>() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "node_unreachable",
            "this node cannot sign peer requests",
        ));
    };
    let unsent =
        |reason: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "node_unreachable", reason);
    // Signed as reqwest will send it (it normalizes the path).
    let mut url = reqwest::Url::parse(&format!("http://{}{}", member.http_addr, request.path()))
        .map_err(|error| unsent(format!("cannot address node `{node}`: {error}")))?;
    // A tenant's route acts for the caller's tenant there too (signed with
    // the rest of the request).
    // The operator's own `?tenant=` names whose instance it operates; the
    // node there acts for the operator (`operator=true`), not the tenant.
    let (tenant, operator) = match super::scope::Scope::of(request) {
        Ok(scope) if scope.0.role.is_tenant_role() => {
            (Some(scope.tenant().as_str().to_owned()), false)
        }
        Ok(_) => (query.tenant, true),
        Err(_) => (None, false),
    };
    if let Some(tenant) = tenant {
        url.query_pairs_mut().append_pair("tenant", &tenant);
    }
    if operator {
        url.query_pairs_mut().append_pair("operator", "true");
    }
    let header_text = |name: &actix_web::http::header::HeaderName| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let content_type = header_text(&actix_web::http::header::CONTENT_TYPE);
    let correlation_id = header_text(&CORRELATION_HEADER);
    let path_and_query = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let signed = peer_requests::Request {
        method: request.method().as_str(),
        path_and_query: &path_and_query,
        content_type: &content_type,
        correlation_id: &correlation_id,
        body,
    };
    let Some((signature, nonce)) = peers.sign(&node, &signed, unix_millis()) else {
        return Err(unsent(
            "this node has no cluster secret to sign peer requests with".into(),
        ));
    };
    let method = reqwest::Method::from_bytes(request.method().as_str().as_bytes())
        .unwrap_or(reqwest::Method::POST);
    let mut forwarded = peers_client()
        .request(method, url)
        .timeout(FORWARD_TIMEOUT)
        .header(peer_requests::HEADER, signature)
        .body(body.to_vec());
    for (name, value) in [
        (actix_web::http::header::CONTENT_TYPE, content_type),
        (CORRELATION_HEADER, correlation_id),
    ] {
        if !value.is_empty() {
            forwarded = forwarded.header(name.as_str(), value);
        }
    }
    let unreachable = |reason: String| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "node_unreachable",
            format!("node `{node}` did not answer: {reason}"),
        )
    };
    let answer = forwarded
        .send()
        .await
        .map_err(|error| unreachable(error.to_string()))?;
    let status = answer.status().as_u16();
    let signature = answer
        .headers()
        .get(peer_requests::REPLY_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = answer
        .bytes()
        .await
        .map_err(|error| unreachable(error.to_string()))?;
    if !peers.reply_is_good(&nonce, status, &body, &signature) {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "peer_unverified",
            format!("node `{node}`'s answer does not carry its signature; not passed on"),
        ));
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    Ok(Some(
        HttpResponse::build(status)
            .content_type("application/json")
            .body(body),
    ))
}

/// One HTTP client for every peer request (connections pooled); it
/// follows no redirect, which would carry the signature elsewhere.
fn peers_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default()
    })
}
