//! Request middleware: the correlation id (taken from `X-Correlation-ID` or
//! created, echoed in the response, put in the request span and handed to
//! handlers), and request metrics by route pattern and status.

use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, web};
use tracing::Instrument;

use futures_util::StreamExt;

use dashmap::DashMap;
use valueverse_agents::auth::{Cached, Caller, KeyCache, Role};

use super::oidc::OidcVerifier;
use valueverse_cluster::peer_requests::{self, PeerRequests};
use valueverse_runtime::metrics::Metrics;
use valueverse_runtime::unix_millis;
use valueverse_runtime::{CorrelationId, Tenant, TraceContext};

use super::error::ApiError;
use super::limits::{self, Limits};

pub const CORRELATION_HEADER: HeaderName = HeaderName::from_static("x-correlation-id");

pub(crate) async fn correlation(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let correlation_id = request
        .headers()
        .get(&CORRELATION_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(CorrelationId::parse)
        .unwrap_or_else(CorrelationId::generate);
    request.extensions_mut().insert(correlation_id.clone());
    let span = tracing::info_span!(
        "http",
        method = %request.method(),
        path = %request.path(),
        correlation_id = %correlation_id,
        tenant = tracing::field::Empty,
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let propagating = valueverse_runtime::propagating();
    if propagating {
        // The caller's trace, when it sent one (W3C trace context; several
        // `tracestate` headers are one list).
        let headers = request.headers();
        let state: Vec<&str> = headers
            .get_all("tracestate")
            .filter_map(|value| value.to_str().ok())
            .collect();
        let state = (!state.is_empty()).then(|| state.join(","));
        if let Some(parent) = headers
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
            .and_then(|parent| TraceContext::from_headers(parent, state.as_deref()))
        {
            parent.adopt(&span);
        }
        let route = request
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        span.record("otel.name", format!("{} {route}", request.method()));
        span.record("otel.kind", "server");
        span.record("http.route", route);
    }
    let record_status = |status: actix_web::http::StatusCode| {
        span.record("http.response.status_code", status.as_u16());
        if status.is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
    };
    let mut response = match next.call(request).instrument(span.clone()).await {
        Ok(response) => response,
        Err(error) => {
            if propagating {
                record_status(error.as_response_error().status_code());
            }
            return Err(error);
        }
    };
    if propagating {
        record_status(response.status());
        // Where to find this request's spans.
        if let Some(trace) = TraceContext::of(&span)
            && let Ok(value) = HeaderValue::from_str(&trace.trace_id())
        {
            response.headers_mut().insert(TRACE_ID_HEADER, value);
        }
    }
    if let Ok(value) = HeaderValue::from_str(correlation_id.as_str()) {
        response.headers_mut().insert(CORRELATION_HEADER, value);
    }
    Ok(response)
}

/// The trace id of a request's spans, in its response while spans are
/// exported.
pub const TRACE_ID_HEADER: HeaderName = HeaderName::from_static("x-trace-id");

/// Names the caller's tenant on the request's span.
fn mark_tenant(caller: &Caller) {
    if valueverse_runtime::propagating() {
        tracing::Span::current().record("tenant", caller.tenant.as_str());
    }
}

pub(crate) async fn record_metrics(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let metrics = request.app_data::<web::Data<Metrics>>().cloned();
    let method = request.method().to_string();
    let response = next.call(request).await?;
    if let Some(metrics) = metrics {
        // The pattern, not the path, keeps label cardinality bounded.
        let route = response
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        let status = response.status().as_u16().to_string();
        metrics
            .http
            .requests
            .with_label_values(&[method.as_str(), route.as_str(), status.as_str()])
            .inc();
        metrics
            .http
            .duration_seconds
            .with_label_values(&[method.as_str(), route.as_str()])
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(response)
}

/// Whether and how a node checks API keys.
pub(crate) struct Auth {
    /// `serve --dev`: every request is admin.
    pub dev: bool,
    pub keys: KeyCache,
    /// People signed in with an identity provider (bearer JWTs).
    pub oidc: Option<OidcVerifier>,
    /// Tenants seen to exist lately (a token names one by a claim).
    pub tenants: DashMap<String, Instant>,
    pub tenant_ttl: std::time::Duration,
    /// Tokens verified lately, by their SHA-256: the caller and until when
    /// it holds (the token's expiry, or the tenant cache's time at most).
    /// A person's next requests cost no verification and no place of the
    /// address's budget for unknown callers.
    pub people: DashMap<String, (Caller, Instant, Instant)>,
}

/// Verified tokens remembered at most.
const PEOPLE_CACHED: usize = 100_000;

/// Tenants remembered at most.
const TENANTS_CACHED: usize = 10_000;

impl Auth {
    /// The caller a signed-in person's token makes: its tenant must exist,
    /// its roles name a ValueVerse role (the highest counts; `platform`
    /// over the tenant roles).
    /// A verified token's caller and when its sign-in ends, if the token
    /// was verified lately.
    fn known_person(&self, digest: &str) -> Option<(Caller, Instant)> {
        let entry = self.people.get(digest)?;
        let (caller, recheck, ends) = entry.value();
        (Instant::now() < *recheck).then(|| (caller.clone(), *ends))
    }

    /// [`Auth::person`], remembered until the token expires (and checked
    /// again after the tenant cache's time).
    async fn person_cached(
        &self,
        token: &str,
        digest: String,
    ) -> Result<(Caller, Instant), ApiError> {
        let (caller, ends) = self.person(token).await?;
        let recheck =
            ends.min(Instant::now() + self.tenant_ttl.max(std::time::Duration::from_secs(1)));
        if self.people.len() >= PEOPLE_CACHED {
            self.people.clear();
        }
        self.people.insert(digest, (caller.clone(), recheck, ends));
        Ok((caller, ends))
    }

    async fn person(&self, token: &str) -> Result<(Caller, Instant), ApiError> {
        use actix_web::http::StatusCode;
        let Some(oidc) = &self.oidc else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the API key is unknown or revoked (this node takes no identity provider's tokens)",
            ));
        };
        let identity = oidc.verify(token).await.map_err(|error| {
            if error.is_provider_failure() {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "identity_provider_unavailable",
                    format!("the token could not be checked: {error}"),
                )
            } else {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    format!("the token is refused: {error}"),
                )
            }
        })?;
        // The tenant roles by name; the operator's only by the provider's
        // role configured for it (never by a role a tenant could name).
        let platform_role = oidc.platform_role();
        let role = identity
            .roles
            .iter()
            .filter_map(|role| match Role::parse(role) {
                Some(Role::Platform) => None,
                Some(tenant_role) => Some(tenant_role),
                None => (Some(role.as_str()) == platform_role).then_some(Role::Platform),
            })
            .max_by_key(|role| (*role == Role::Platform, *role));
        let Some(role) = role else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the token names no ValueVerse role (viewer, editor, admin or platform)",
            ));
        };
        let tenant = Tenant::parse(&identity.tenant).map_err(|error| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", error.to_string())
        })?;
        let known = self
            .tenants
            .get(tenant.as_str())
            .is_some_and(|seen| seen.elapsed() < self.tenant_ttl);
        if !known {
            if !self.keys.keys().tenant_exists(&tenant).await? {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!("the token's tenant `{tenant}` does not exist here"),
                ));
            }
            if self.tenants.len() >= TENANTS_CACHED {
                self.tenants.clear();
            }
            self.tenants
                .insert(tenant.as_str().to_owned(), Instant::now());
        }
        let left = identity
            .expires_at
            .saturating_sub(unix_millis().max(0) as u64 / 1000);
        let ends = Instant::now() + std::time::Duration::from_secs(left);
        let caller = Caller {
            key_id: format!("oidc:{}", identity.subject),
            role,
            tenant,
            subject: Some(identity.subject),
        };
        Ok((caller, ends))
    }
}

/// The route a request reaches: the pattern the router will match it to
/// (`/api/v1/actors/{kind}/{key}/crash`), found on the path as the router
/// sees it (percent-encoded letters decoded), never on the raw path; the
/// router's path itself when no route matches (the answer is a 404).
pub(crate) fn matched_route(request: &ServiceRequest) -> String {
    let routed = request.match_info().as_str();
    request
        .resource_map()
        .match_pattern(routed)
        .unwrap_or_else(|| routed.to_owned())
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// A tenant's caller with at least this role: the tenant's data.
    Tenant(Role),
    /// The operator (`platform` role): the supervision tree, the cluster,
    /// resets, the dashboard's node panels; no tenant's data.
    Platform,
    /// Any authenticated caller (`/api/v1/me`).
    Anyone,
    /// A tenant's caller with at least this role, or the operator (who
    /// stops a runaway job from the dashboard).
    TenantOrPlatform(Role),
}

impl Access {
    /// Why `caller` may not call a route of this access, if it may not.
    fn refusal(self, caller: &Caller) -> Option<String> {
        match self {
            Access::Anyone => None,
            Access::Platform if caller.role == Role::Platform => None,
            Access::Platform => Some(format!(
                "this is an operator's route: it needs the platform role; the caller has {}",
                caller.role.as_str()
            )),
            Access::Tenant(_) if caller.role == Role::Platform => Some(
                "the platform role operates the nodes and reads no tenant's data: \
                 use a key of the tenant"
                    .to_owned(),
            ),
            Access::Tenant(needed) if caller.role < needed => Some(format!(
                "this needs the {} role; the caller has {}",
                needed.as_str(),
                caller.role.as_str()
            )),
            Access::Tenant(_) => None,
            Access::TenantOrPlatform(_) if caller.role == Role::Platform => None,
            Access::TenantOrPlatform(needed) => Access::Tenant(needed).refusal(caller),
        }
    }
}

/// Who may call `route` (a route pattern); `None`: open to all (probes,
/// metrics, docs, the dashboard's static page).
pub(crate) fn required_access(method: &actix_web::http::Method, path: &str) -> Option<Access> {
    use actix_web::http::Method;
    if matches!(path, "/health" | "/ready" | "/metrics" | "/dashboard")
        || path.starts_with("/api-docs")
        || path.starts_with("/dashboard/")
    {
        return None;
    }
    if path == "/api/v1/me" {
        return Some(Access::Anyone);
    }
    let reads = matches!(*method, Method::GET | Method::HEAD);
    // The node's own panel is for its peers (signed requests) and the
    // operator: it shows every tenant's instances.
    if path == "/api/v1/dashboard/node" {
        return Some(Access::Platform);
    }
    // Operations: the operator across tenants, a tenant on its own
    // instances and jobs (the handlers scope what each sees).
    if path.starts_with("/api/v1/actors")
        || path.starts_with("/api/v1/cluster")
        || path.starts_with("/api/v1/dashboard")
        || path == "/ws/dashboard"
    {
        return Some(Access::TenantOrPlatform(if reads {
            Role::Viewer
        } else {
            Role::Admin
        }));
    }
    if *method == Method::PUT && path == "/api/v1/simulations/{id}/cancel" {
        return Some(Access::TenantOrPlatform(Role::Editor));
    }
    let saga_retry = path.starts_with("/api/v1/sagas/") && path.ends_with("/retry");
    Some(Access::Tenant(
        if path.starts_with("/api/v1/api-keys") || path == "/api/v1/audit" || saga_retry {
            Role::Admin
        } else if reads {
            Role::Viewer
        } else {
            Role::Editor
        },
    ))
}

/// The key a request carries: `Authorization: Bearer <key>`, or for
/// WebSocket upgrades (browsers cannot set headers there) `?access_token=`.
fn presented_key(request: &ServiceRequest, route: &str) -> Option<String> {
    if let Some(value) = request
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
    {
        return value
            .to_str()
            .ok()
            .and_then(|text| text.strip_prefix("Bearer "))
            .map(|key| key.trim().to_owned());
    }
    if route.starts_with("/ws/") {
        return form_urlencoded::parse(request.query_string().as_bytes())
            .find(|(name, _)| name == "access_token")
            .map(|(_, value)| value.into_owned());
    }
    None
}

/// The routes another node may call with a signed peer request: its
/// dashboard panel, and the operator actions passed on with `?node=`.
fn is_peer_route(method: &actix_web::http::Method, route: &str) -> bool {
    use actix_web::http::Method;
    matches!(
        (method.clone(), route),
        (Method::GET, "/api/v1/dashboard/node")
            | (Method::POST, "/api/v1/actors/{kind}/{key}/crash")
            | (Method::POST, "/api/v1/actors/{kind}/{key}/reset")
            | (Method::PUT, "/api/v1/simulations/{id}/cancel")
    )
}

/// A request another node signed ([`peer_requests`]): taken only on the
/// peer routes, only once, only as signed (method, path, query and body);
/// its answer is signed back for the node that asked.
async fn peer_request<B: MessageBody>(
    mut request: ServiceRequest,
    next: Next<B>,
    header: String,
) -> Result<ServiceResponse<EitherBody<B>>, Error> {
    use actix_web::http::StatusCode;
    let refuse = |request: ServiceRequest, status: StatusCode, message: String| {
        let (request, _) = request.into_parts();
        let error = ApiError::new(status, "peer_refused", message);
        let response = actix_web::ResponseError::error_response(&error);
        Ok(ServiceResponse::new(request, response).map_into_right_body())
    };
    let Some(peers) = request.app_data::<web::Data<PeerRequests>>().cloned() else {
        return refuse(
            request,
            StatusCode::UNAUTHORIZED,
            "no peer requests here".into(),
        );
    };
    if !is_peer_route(request.method(), &matched_route(&request)) {
        return refuse(
            request,
            StatusCode::FORBIDDEN,
            "peer requests reach only the dashboard panel and operator actions".into(),
        );
    }
    // Read within the body deadline, as every other body is: the signature
    // can only be checked once the body is in.
    let deadline = request
        .app_data::<web::Data<Limits>>()
        .map_or(std::time::Duration::from_secs(10), |limits| {
            limits.config.body_read_timeout
        });
    let mut payload = request.take_payload();
    let read = async {
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|error| (StatusCode::BAD_REQUEST, error.to_string()))?;
            if body.len() + chunk.len() > peer_requests::MAX_BODY_BYTES {
                return Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "a peer request's body is at most 64 KiB".to_owned(),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    let body = match tokio::time::timeout(deadline, read).await {
        Ok(Ok(body)) => body,
        Ok(Err((status, message))) => return refuse(request, status, message),
        Err(_) => {
            return refuse(
                request,
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time".into(),
            );
        }
    };
    let body = body.freeze();
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or_else(|| request.path().to_owned(), |p| p.as_str().to_owned());
    let header_text = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (content_type, correlation_id) =
        (header_text("content-type"), header_text("x-correlation-id"));
    let signed_request = peer_requests::Request {
        method: request.method().as_str(),
        path_and_query: &path_and_query,
        content_type: &content_type,
        correlation_id: &correlation_id,
        body: &body,
    };
    let signed = match peers.verify(&header, &signed_request, unix_millis()) {
        Ok(signed) => signed,
        Err(refusal) => {
            tracing::warn!(%refusal, path = %path_and_query, "http: refused a peer request");
            // A forged peer request counts as one without a valid key.
            if let Some(limits) = request.app_data::<web::Data<Limits>>()
                && let Err(error) = limits.charge_address(limits::peer_address(&request))
            {
                return refuse(request, error.status, error.message);
            }
            return refuse(request, StatusCode::UNAUTHORIZED, refusal.to_string());
        }
    };
    request.set_payload(actix_web::dev::Payload::from(body));
    // The node that passed it on checked its caller for this route; a
    // tenant's route names the caller's tenant in the signed query.
    let tenant = form_urlencoded::parse(request.query_string().as_bytes())
        .find(|(name, _)| name == "tenant")
        .map(|(_, value)| value.into_owned());
    let operator = form_urlencoded::parse(request.query_string().as_bytes())
        .any(|(name, value)| name == "operator" && value == "true");
    let access = required_access(request.method(), &matched_route(&request));
    let caller = match (access, tenant) {
        // The operator's action (its `tenant` names whose instance or job,
        // read by the handler), or one passed on without a tenant.
        (Some(Access::TenantOrPlatform(_)), tenant) if operator || tenant.is_none() => Caller {
            key_id: format!("peer:{}", signed.node),
            role: Role::Platform,
            tenant: Tenant::default_tenant(),
            subject: None,
        },
        (Some(Access::Tenant(role) | Access::TenantOrPlatform(role)), tenant) => {
            let Some(tenant) = tenant.and_then(|name| Tenant::parse(&name).ok()) else {
                return refuse(
                    request,
                    StatusCode::BAD_REQUEST,
                    "a peer request for a tenant's data names the tenant".into(),
                );
            };
            Caller {
                key_id: format!("peer:{}", signed.node),
                role,
                tenant,
                subject: None,
            }
        }
        _ => Caller {
            key_id: format!("peer:{}", signed.node),
            role: Role::Platform,
            tenant: Tenant::default_tenant(),
            subject: None,
        },
    };
    mark_tenant(&caller);
    request.extensions_mut().insert(caller.role);
    request.extensions_mut().insert(caller);
    let response = next.call(request).await?;
    let (request, response) = response.into_parts();
    let status = response.status();
    let (head, body) = response.into_parts();
    let bytes = actix_web::body::to_bytes(body)
        .await
        .map_err(|error| actix_web::error::ErrorInternalServerError(error.into().to_string()))?;
    let mut answer = head.set_body(actix_web::body::BoxBody::new(bytes.clone()));
    if let Some(value) = peers
        .sign_reply(&signed.nonce, status.as_u16(), &bytes)
        .and_then(|mac| HeaderValue::from_str(&mac).ok())
    {
        answer
            .headers_mut()
            .insert(HeaderName::from_static(peer_requests::REPLY_HEADER), value);
    }
    Ok(ServiceResponse::new(request, answer).map_into_right_body())
}

/// 401 without a valid key, 403 with too weak a role.
pub(crate) async fn authenticate<B: MessageBody>(
    request: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, Error> {
    // Decided on the route the router will match, so that no encoding of
    // the path reaches a route under another route's role.
    let route = matched_route(&request);
    let Some(needed) = required_access(request.method(), &route) else {
        return Ok(next.call(request).await?.map_into_left_body());
    };
    if let Some(header) = request
        .headers()
        .get(peer_requests::HEADER)
        .map(|value| value.to_str().unwrap_or_default().to_owned())
    {
        return peer_request(request, next, header).await;
    }
    let auth = request.app_data::<web::Data<Auth>>().cloned();
    let limits = request.app_data::<web::Data<Limits>>().cloned();
    let (Some(auth), Some(limits)) = (auth, limits) else {
        return Ok(next.call(request).await?.map_into_left_body());
    };
    let limits = limits.into_inner();
    let refuse = |request: ServiceRequest, error: ApiError| {
        let (request, _) = request.into_parts();
        let mut response = actix_web::ResponseError::error_response(&error);
        if error.status == actix_web::http::StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                actix_web::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        Ok(ServiceResponse::new(request, response).map_into_right_body())
    };
    let address = limits::peer_address(&request);
    let mut session_end = None;
    let caller = if auth.dev {
        // Development: every route, as the default tenant's admin (and the
        // operator's routes too).
        Caller {
            key_id: limits::DEV_CALLER.to_owned(),
            role: if needed == Access::Platform {
                Role::Platform
            } else {
                Role::Admin
            },
            tenant: Tenant::default_tenant(),
            subject: None,
        }
    } else {
        let unknown = || {
            ApiError::new(
                actix_web::http::StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the API key is unknown or revoked",
            )
        };
        let Some(key) = presented_key(&request, &route) else {
            if let Err(error) = limits.charge_address(address) {
                return refuse(request, error);
            }
            return refuse(
                request,
                ApiError::new(
                    actix_web::http::StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "send an API key as `Authorization: Bearer <key>` (create one with `valueverse apikey create`)",
                ),
            );
        };
        // Not an API key: a person's token from the identity provider,
        // checked (signature, issuer, audience, expiry) before anything is
        // allocated; a token costs its address a place like an unseen key.
        // An API key not in the cache costs a store lookup: those run a few
        // at once, and an address whose keys keep turning out unknown is
        // paced.
        let found = if !key.starts_with("vv_") {
            let digest = valueverse_agents::auth::digest(&key);
            match auth.known_person(&digest) {
                Some((caller, ends)) => {
                    session_end = Some(ends);
                    Some(caller)
                }
                None => {
                    if let Err(error) = limits.charge_address(address) {
                        return refuse(request, error);
                    }
                    match auth.person_cached(&key, digest).await {
                        Ok((caller, ends)) => {
                            session_end = Some(ends);
                            Some(caller)
                        }
                        Err(error) => return refuse(request, error),
                    }
                }
            }
        } else {
            match auth.keys.cached(&key) {
                (_, Cached::Known(caller)) => Some(caller),
                (_, Cached::Unknown) => None,
                (digest, looked_up @ (Cached::Stale | Cached::Miss)) => {
                    // A key never seen costs its address a place before the
                    // lookup; a live key seen before is asked about freely.
                    if matches!(looked_up, Cached::Miss)
                        && let Err(error) = limits.charge_address(address)
                    {
                        return refuse(request, error);
                    }
                    let permit = match limits.lookup_permit().await {
                        Ok(permit) => permit,
                        Err(error) => return refuse(request, error),
                    };
                    let found = auth.keys.look_up(digest).await;
                    drop(permit);
                    match found {
                        Ok(found) => found,
                        Err(error) => return refuse(request, ApiError::from(error)),
                    }
                }
            }
        };
        let Some(caller) = found else {
            return refuse(request, unknown());
        };
        if let Some(reason) = needed.refusal(&caller) {
            return refuse(
                request,
                ApiError::new(actix_web::http::StatusCode::FORBIDDEN, "forbidden", reason),
            );
        }
        if let Err(error) = limits.check_key_rate(&caller.key_id) {
            return refuse(request, error);
        }
        caller
    };
    let in_flight = if auth.dev {
        None
    } else {
        match limits.enter(&caller.key_id) {
            Ok(place) => Some(place),
            Err(error) => return refuse(request, error),
        }
    };
    if route.starts_with("/ws/") {
        match limits.open_socket(&caller.key_id, address) {
            Ok(mut ticket) => {
                ticket.ends_at = session_end;
                limits::attach_ticket(&request, ticket)
            }
            Err(error) => return refuse(request, error),
        }
    }
    let write = !matches!(
        *request.method(),
        actix_web::http::Method::GET | actix_web::http::Method::HEAD
    );
    mark_tenant(&caller);
    request.extensions_mut().insert(caller.role);
    request.extensions_mut().insert(caller);
    let response = next.call(request).await?.map_into_left_body();
    drop(in_flight);
    // A write refused (or failed) changed nothing: no agent records it, so
    // it is recorded here, after the answer, from what the request holds.
    if write && !response.status().is_success() && !auth.dev {
        let request = response.request();
        let extensions = request.extensions();
        if let Some(caller) = extensions.get::<Caller>() {
            let entry = valueverse_runtime::AuditEntry::now(
                caller.tenant.as_str(),
                &caller.lane(),
                &format!("{} {route}", request.method()),
                request.path(),
                extensions.get::<CorrelationId>().map(CorrelationId::as_str),
                &format!("refused {}", response.status().as_u16()),
            );
            let keys = auth.keys.keys().clone();
            tokio::spawn(async move {
                if let Err(error) = keys.append_audit(&entry).await {
                    tracing::warn!(%error, "a refused write is not in the audit log");
                }
            });
        }
    }
    Ok(response)
}
