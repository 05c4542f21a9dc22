//! `/dashboard`: the operator page (assets compiled in), its live frames
//! over a WebSocket, and the same frame for clients that poll.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::dashboard::{Audience, Dashboard, NodePanel, Viewer, asset};

use crate::error::{ApiError, ErrorDoc, parse_query};
use crate::scope::Scope;
use crate::ws::{Outgoing, Source};
use valueverse_agents::auth::Role;
use valueverse_runtime::Tenant;

/// Client frames are pings and closes: anything big is a misbehaving client.
const MAX_CLIENT_FRAME: usize = 4 * 1024;

/// The dashboard of this node, or 404 where it is turned off.
fn enabled(dashboard: Option<web::Data<Dashboard>>) -> Result<web::Data<Dashboard>, ApiError> {
    dashboard.ok_or_else(|| {
        ApiError::new(
            actix_web::http::StatusCode::NOT_FOUND,
            "dashboard_disabled",
            "this node runs without the dashboard (--no-dashboard)",
        )
    })
}

pub(crate) async fn page(
    dashboard: Option<web::Data<Dashboard>>,
) -> Result<HttpResponse, ApiError> {
    enabled(dashboard)?;
    Ok(serve("index.html"))
}

pub(crate) async fn file(
    dashboard: Option<web::Data<Dashboard>>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    enabled(dashboard)?;
    Ok(serve(&name))
}

/// What the page may load and do: its own scripts, styles and socket,
/// nothing inline, never framed (an operator's controls cannot be
/// clickjacked from another site).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

fn serve(name: &str) -> HttpResponse {
    match asset(name) {
        Some((content_type, body)) => HttpResponse::Ok()
            .content_type(content_type)
            // Compiled into the binary: a new binary is a new page.
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
            .insert_header((header::X_FRAME_OPTIONS, "DENY"))
            .body(body),
        None => actix_web::ResponseError::error_response(&ApiError::new(
            actix_web::http::StatusCode::NOT_FOUND,
            "not_found",
            format!("no dashboard asset `{name}`"),
        )),
    }
}

/// One frame of the dashboard, built now: members, each node's supervision
/// tree and activity, sagas, simulations and notifications.
#[utoipa::path(
    get,
    path = "/api/v1/dashboard",
    tag = "dashboard",
    responses(
        (status = 200, description = "the whole cluster as the dashboard shows it", body = Object),
        (status = 404, description = "the dashboard is turned off", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn frame(
    scope: Scope,
    dashboard: Option<web::Data<Dashboard>>,
) -> Result<HttpResponse, ApiError> {
    let json = enabled(dashboard)?.frame_json(audience(&scope)).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(json.to_string()))
}

/// This node's panel: its supervision tree (failed and busy instances
/// first), activity history and simulation queue. Peers fetch it.
#[utoipa::path(
    get,
    path = "/api/v1/dashboard/node",
    tag = "dashboard",
    responses(
        (status = 200, description = "this node's panel", body = Object),
        (status = 404, description = "the dashboard is turned off", body = ErrorDoc),
        (status = 422, description = "`tenant` is not a tenant name", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn node(
    dashboard: Option<web::Data<Dashboard>>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    // The peer that asks names the tenant whose frame it builds.
    let query: PanelQuery = parse_query(request.query_string())?;
    let tenant = query
        .tenant
        .map(|name| {
            Tenant::parse(&name)
                .map_err(|error| ApiError::invalid_field("tenant", error.to_string()))
        })
        .transpose()?;
    let panel: NodePanel = enabled(dashboard)?.node_panel(tenant.as_ref());
    Ok(HttpResponse::Ok().json(panel))
}

/// WebSocket: a frame (as `/api/v1/dashboard` answers) every second while
/// connected; frames are built once and shared by every viewer.
#[utoipa::path(
    get,
    path = "/ws/dashboard",
    tag = "dashboard",
    params(("access_token" = Option<String>, Query, description = "API key (browsers cannot set headers on a WebSocket)")),
    responses(
        (status = 101, description = "frames follow as JSON text messages"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn events(
    scope: Scope,
    dashboard: Option<web::Data<Dashboard>>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let mut viewer = enabled(dashboard)?.watch(audience(&scope));
    // A frame built before this viewer came is shown at once.
    viewer.frames.mark_changed();
    crate::ws::relay(&request, payload, MAX_CLIENT_FRAME, Frames(viewer))
}

/// A viewer's frames, as they are built; held while the socket is open.
struct Frames(Viewer);

impl Source for Frames {
    async fn next(&mut self) -> Outgoing {
        let frames = &mut self.0.frames;
        loop {
            if frames.changed().await.is_err() {
                return Outgoing::End;
            }
            let frame = frames.borrow_and_update().clone();
            if let Some(frame) = frame {
                return Outgoing::Text(frame);
            }
        }
    }
}

/// The operator's frame, or the caller's tenant's.
fn audience(scope: &Scope) -> Audience {
    match scope.0.role {
        Role::Platform => None,
        _ => Some(scope.tenant().clone()),
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PanelQuery {
    tenant: Option<String>,
}
