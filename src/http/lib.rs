//! The HTTP API (actix-web). This is the only module that knows status codes
//! and JSON error shapes.
//!
//! | route | what |
//! |---|---|
//! | `GET /health` | the process is alive |
//! | `GET /ready` | the store is reachable and migrated |
//! | `GET /metrics` | Prometheus text |
//! | `GET /api/v1/actors` | the live supervision tree |
//! | `POST /api/v1/actors/{kind}/{key}/reset` | clear a failed instance (`?node=` another node's) |
//! | `POST /api/v1/actors/{kind}/{key}/crash` | admin: fault injection, the supervisor restarts it |
//! | `GET /dashboard` | the operator page; `GET /ws/dashboard` its live frames |
//! | `GET /api/v1/dashboard`, `GET /api/v1/dashboard/node` | one frame of the cluster; this node's panel |
//! | `GET /api/v1/cluster` | members, their state and leases, ownership |
//! | `POST /api/v1/api-keys`, `GET`, `DELETE /api/v1/api-keys/{id}` | admin: API keys |
//! | `POST /api/v1/simulations` | queue a Monte Carlo job |
//! | `GET /api/v1/simulations/queue` | running and waiting jobs |
//! | `GET /api/v1/simulations/{id}` | a job's status and progress |
//! | `GET /api/v1/simulations/{id}/results` | a finished job's result |
//! | `PUT /api/v1/simulations/{id}/cancel` | cancel a job |
//! | `GET /ws/simulations/{id}` | WebSocket: a job's progress, then its result |
//! | `POST /api/v1/value-models`, `GET` (list) | architect: store a model, list with filters |
//! | `GET`, `PATCH /api/v1/value-models/{id}` | a model (any version), a new version |
//! | `GET /api/v1/value-models/{id}/versions` | every version |
//! | `POST /api/v1/value-models/{id}/archive` | archive |
//! | `POST /api/v1/value-models/{id}/hypotheses` | candidate drivers from the catalogue |
//! | `POST /api/v1/commitments`, `GET` (list) | committer: commit to a simulated target |
//! | `GET /api/v1/commitments/{id}`, `POST .../void` | a commitment; void it with a reason |
//! | `POST /api/v1/plans`, `GET` (list), `GET /api/v1/plans/{id}` | executor: plans from commitments |
//! | `POST /api/v1/plans/{id}/progress`, `.../deliveries`, `.../cancel` | task and milestone progress, realized value |
//! | `GET /api/v1/amplifications/{model_id}/insights` | amplifier: realized vs committed, opportunities, risks |
//! | `POST /api/v1/webhooks`, `GET` (list), `GET`/`DELETE /api/v1/webhooks/{id}` | notifier subscriptions |
//! | `GET /api/v1/webhooks/{id}/deliveries`, `POST .../{delivery_id}/redeliver` | delivery log, dead letters |

mod actors;
mod api_keys;
mod audit;
mod cluster;
mod commitments;
pub mod dashboard;
mod error;
mod forward;
mod imports;
mod limits;
mod listing;
mod middleware;
pub mod oidc;
mod operations;
mod plans;
mod sagas;
mod schemas;
mod scope;
mod simulations;
mod value_models;
mod webhooks;
mod ws;

use std::net::{SocketAddr, TcpListener};

use actix_web::dev::ServerHandle;
use actix_web::middleware::{ErrorHandlers, from_fn};
use actix_web::{App, HttpServer, web};

use crate::dashboard::Dashboard;
use valueverse_agents::Records;
use valueverse_agents::auth::{ApiKeys, KeyCache};
use valueverse_agents::notifications::Notifications;
use valueverse_agents::sagas::SagaRunner;
use valueverse_agents::simulations::Simulations;
use valueverse_cluster::node::ClusterNode;
use valueverse_cluster::peer_requests::PeerRequests;
use valueverse_runtime::System;

pub use error::{ApiError, parse_json};
pub use limits::LimitsConfig;
pub use middleware::CORRELATION_HEADER;

/// Declares every route once: the router registers them, `ROUTES` lists
/// them (a test checks each is in the OpenAPI document), one resource per
/// path so that a known path with a wrong method is a 405.
macro_rules! api {
    ($( $path:literal => { $( $method:ident : $handler:path ),+ $(,)? } )*) => {
        /// `(method, path)` of every route.
        pub const ROUTES: &[(&str, &str)] = &[ $( $( (stringify!($method), $path), )+ )* ];

        fn routes(config: &mut web::ServiceConfig) {
            $( config.service(web::resource($path) $( .route(web::$method().to($handler)) )+ ); )*
            config.service(web::resource("/api-docs/openapi.json").route(web::get().to(openapi_json)));
            // The page and its assets: static, open to all (the data behind
            // them needs a key).
            config.service(web::resource("/dashboard").route(web::get().to(dashboard::routes::page)));
            config.service(web::resource("/dashboard/{file}").route(web::get().to(dashboard::routes::file)));
        }
    };
}

api! {
    "/health" => { get: operations::health }
    "/ready" => { get: operations::ready }
    "/metrics" => { get: operations::metrics }
    "/api/v1/actors" => { get: actors::tree }
    "/api/v1/actors/{kind}/{key}/reset" => { post: actors::reset }
    "/api/v1/actors/{kind}/{key}/crash" => { post: actors::crash }
    "/api/v1/dashboard" => { get: dashboard::routes::frame }
    "/api/v1/dashboard/node" => { get: dashboard::routes::node }
    "/ws/dashboard" => { get: dashboard::routes::events }
    "/api/v1/cluster" => { get: cluster::view }
    "/api/v1/api-keys" => { post: api_keys::create, get: api_keys::list }
    "/api/v1/api-keys/{id}" => { delete: api_keys::revoke }
    "/api/v1/me" => { get: api_keys::me }
    "/api/v1/audit" => { get: audit::list }
    "/api/v1/simulations" => { post: simulations::submit }
    // Before `{id}`, which would otherwise match it.
    "/api/v1/simulations/queue" => { get: simulations::queue }
    "/api/v1/simulations/{id}" => { get: simulations::get }
    "/api/v1/simulations/{id}/results" => { get: simulations::results }
    "/api/v1/simulations/{id}/cancel" => { put: simulations::cancel }
    "/ws/simulations/{id}" => { get: simulations::events }
    "/api/v1/value-models" => { post: value_models::create, get: value_models::list }
    "/api/v1/value-models/{id}" => { get: value_models::get, patch: value_models::patch }
    "/api/v1/value-models/{id}/versions" => { get: value_models::versions }
    "/api/v1/value-models/{id}/archive" => { post: value_models::archive }
    "/api/v1/value-models/{id}/hypotheses" => { post: value_models::hypotheses }
    "/api/v1/commitments" => { post: commitments::commit, get: commitments::list }
    "/api/v1/commitments/{id}" => { get: commitments::get }
    "/api/v1/commitments/{id}/void" => { post: commitments::void }
    "/api/v1/commitments/{id}/statements" => { get: commitments::statements }
    "/api/v1/commitments/{id}/statements/{period}" => { get: commitments::statement }
    "/api/v1/plans" => { post: plans::create, get: plans::list }
    "/api/v1/plans/{id}" => { get: plans::get }
    "/api/v1/plans/{id}/progress" => { post: plans::progress }
    "/api/v1/plans/{id}/deliveries" => { post: plans::deliver }
    "/api/v1/plans/{id}/deliveries:import" => { post: imports::import }
    "/ws/plans/{id}" => { get: imports::events }
    "/api/v1/plans/{id}/cancel" => { post: plans::cancel }
    "/api/v1/amplifications/{model_id}/insights" => { get: plans::insights }
    "/api/v1/amplifications/{model_id}/history" => { get: plans::history }
    "/api/v1/webhooks" => { post: webhooks::subscribe, get: webhooks::list }
    "/api/v1/webhooks/{id}" => { get: webhooks::get, delete: webhooks::delete }
    "/api/v1/webhooks/{id}/deliveries" => { get: webhooks::deliveries }
    "/api/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver" => { post: webhooks::redeliver }
    "/api/v1/sagas" => { get: sagas::list }
    "/api/v1/sagas/value-creation" => { post: sagas::start_value_creation }
    "/api/v1/sagas/renewal" => { post: sagas::start_renewal }
    "/api/v1/sagas/{id}" => { get: sagas::get }
    "/api/v1/sagas/{id}/cancel" => { post: sagas::cancel }
    "/api/v1/sagas/{id}/retry" => { post: sagas::retry }
    "/ws/sagas/{id}" => { get: sagas::events }
}

/// The OpenAPI 3 document, generated from the handlers' annotations and
/// the request and response types.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "ValueVerse API",
        description = "Business agents as supervised actors: value models, simulations, commitments, plans, insights, notifications."
    ),
    paths(operations::health, operations::ready, operations::metrics, actors::tree, actors::reset, actors::crash, cluster::view, dashboard::routes::frame, dashboard::routes::node, dashboard::routes::events, api_keys::create, api_keys::list, api_keys::revoke, api_keys::me, audit::list, value_models::create, value_models::list, value_models::get, value_models::patch, value_models::versions, value_models::archive, value_models::hypotheses, simulations::submit, simulations::queue, simulations::get, simulations::results, simulations::cancel, simulations::events, commitments::commit, commitments::list, commitments::get, commitments::void, commitments::statements, commitments::statement, plans::create, plans::list, plans::get, plans::progress, plans::deliver, imports::import, imports::events, plans::cancel, plans::insights, plans::history, webhooks::subscribe, webhooks::list, webhooks::get, webhooks::delete, webhooks::deliveries, webhooks::redeliver, sagas::list, sagas::start_value_creation, sagas::start_renewal, sagas::get, sagas::cancel, sagas::retry, sagas::events),
    components(schemas(error::ErrorDoc)),
    modifiers(&BearerAuth, &CommonAnswers),
    tags(
        (name = "operations", description = "probes and metrics (no key needed)"),
        (name = "actors", description = "the supervision tree and operator resets"),
        (name = "cluster", description = "members, leases and ownership"),
        (name = "dashboard", description = "the operator dashboard's data (the page is /dashboard)"),
        (name = "api-keys", description = "admin: API keys"),
        (name = "audit", description = "admin: the tenant's audit log"),
        (name = "architect", description = "value models, versions, hypotheses"),
        (name = "simulations", description = "Monte Carlo jobs and their WebSocket"),
        (name = "committer", description = "commitments"),
        (name = "executor", description = "execution plans, progress, deliveries"),
        (name = "amplifier", description = "realization insights"),
        (name = "notifier", description = "webhooks, email, delivery log"),
        (name = "sagas", description = "value creation and renewal, with compensation"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("an API key: `valueverse apikey create --role ...`"))
                    .build(),
            ),
        );
    }
}

/// What every route may answer besides its own outcomes, declared on each
/// operation so that the document is true: the checks in front of every
/// handler (key, role, rate, body) answer these.
struct CommonAnswers;

impl utoipa::Modify for CommonAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
        use utoipa::openapi::{RefOr, ResponseBuilder};
        let error = |text: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(text)
                    .content(
                        "application/json",
                        utoipa::openapi::ContentBuilder::new()
                            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                                "ErrorDoc",
                            ))))
                            .build(),
                    )
                    .build(),
            )
        };
        let keyed = [
            (
                "400",
                "malformed JSON, unknown field or bad query parameter",
            ),
            ("401", "no, unknown or revoked API key"),
            ("403", "the key's role is too weak"),
            ("408", "the request body did not arrive in time"),
            ("413", "the request body is too large"),
            (
                "429",
                "the key's (or the address's) rate, requests in flight or quota are spent (Retry-After)",
            ),
            (
                "503",
                "the store or the node is busy or unreachable (Retry-After)",
            ),
        ];
        // A tagged enum that denies unknown fields: each variant is closed.
        if let Some(components) = openapi.components.as_mut()
            && let Some(RefOr::T(Schema::OneOf(one_of))) =
                components.schemas.get_mut("Distribution")
        {
            for variant in &mut one_of.items {
                if let RefOr::T(Schema::Object(object)) = variant {
                    object.additional_properties = Some(Box::new(
                        utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
                    ));
                }
            }
        }
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
                if secured {
                    for (status, text) in keyed {
                        operation
                            .responses
                            .responses
                            .entry(status.to_owned())
                            .or_insert_with(|| error(text));
                    }
                }
                // Paging: `limit` 1..=100, `offset` >= 0, as the routes check.
                for parameter in operation.parameters.iter_mut().flatten() {
                    let bounded = match parameter.name.as_str() {
                        "limit" => ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .minimum(Some(1))
                            .maximum(Some(100)),
                        "offset" => ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .minimum(Some(0))
                            .maximum(Some(i64::MAX)),
                        // The insights' margin of error around the target.
                        "margin" => ObjectBuilder::new()
                            .schema_type(Type::Number)
                            .minimum(Some(0.0))
                            .exclusive_maximum(Some(1.0)),
                        _ => continue,
                    };
                    parameter.schema = Some(RefOr::T(Schema::Object(bounded.build())));
                }
            }
        }
    }
}

async fn openapi_json() -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().json(<ApiDoc as utoipa::OpenApi>::openapi())
}

/// What the handlers serve.
pub struct Services {
    pub system: System,
    /// The agents' rows, for the list routes.
    pub records: Records,
    pub simulations: Simulations,
    pub notifications: Notifications,
    pub sagas: SagaRunner,
    pub cluster: ClusterNode,
    /// `None` where the dashboard is turned off.
    pub dashboard: Option<Dashboard>,
    /// Signs and checks requests between nodes.
    pub peers: std::sync::Arc<PeerRequests>,
    pub api_keys: ApiKeys,
    /// Each tenant's quotas.
    pub quotas: valueverse_agents::quotas::TenantQuotas,
    /// The value loop's settings (delivery bounds, imports).
    pub value: valueverse_agents::config::ValueConfig,
}

/// How a node serves HTTP: the part of its configuration the API reads.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// Worker threads (each with its own event loop).
    pub workers: usize,
    /// Largest request body, in bytes.
    pub body_limit: usize,
    /// Development mode: requests without a key are admins.
    pub dev: bool,
    pub limits: LimitsConfig,
    /// Connections of the node's store pool (a quarter of them at most
    /// checks unknown keys).
    pub store_connections: u32,
    /// Sign-in of people through an OpenID Connect provider.
    pub oidc: Option<oidc::OidcSettings>,
}

/// A running HTTP server.
pub struct HttpApi {
    pub local_addr: SocketAddr,
    handle: ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    sweeper: tokio::task::JoinHandle<()>,
}

impl HttpApi {
    /// Serves the API of `system` on `listener`. Must be called inside a
    /// tokio runtime.
    pub fn start(
        listener: TcpListener,
        services: Services,
        config: &HttpSettings,
    ) -> std::io::Result<HttpApi> {
        let Services {
            system,
            records,
            simulations,
            notifications,
            sagas,
            cluster,
            dashboard,
            peers,
            api_keys,
            quotas,
            value,
        } = services;
        let body_limit = config.body_limit;
        let oidc = match &config.oidc {
            Some(settings) => {
                // No redirect: a provider's answer comes from where it was
                // asked, or not at all.
                let client = reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(std::io::Error::other)?;
                Some(
                    oidc::OidcVerifier::new(settings.clone(), client)
                        .map_err(std::io::Error::other)?,
                )
            }
            None => None,
        };
        let auth = web::Data::new(middleware::Auth {
            dev: config.dev,
            keys: KeyCache::new(
                api_keys.clone(),
                config.limits.key_cache_ttl,
                config.limits.unknown_keys_cached,
            ),
            oidc,
            tenants: dashmap::DashMap::new(),
            people: dashmap::DashMap::new(),
            tenant_ttl: config.limits.key_cache_ttl,
        });
        // A quarter of the pool at most checks unknown keys: the rest
        // renews the lease and serves requests.
        let limits = web::Data::new(limits::Limits::new(
            config.limits.clone(),
            (config.store_connections / 4).max(1) as usize,
            body_limit,
        ));
        let sweeper = limits::sweep_while_alive(
            std::sync::Arc::downgrade(&limits.clone().into_inner()),
            api_keys.clone(),
            config.limits.key_cache_ttl,
        );
        let connections_per_worker = config.limits.max_connections / config.workers.max(1);
        let local_addr = listener.local_addr()?;
        let metrics = web::Data::new(system.metrics().clone());
        let system = web::Data::new(system);
        let records = web::Data::new(records);
        let simulations = web::Data::new(simulations);
        let notifications = web::Data::new(notifications);
        let sagas = web::Data::new(sagas);
        let cluster = web::Data::new(cluster);
        let api_keys = web::Data::new(api_keys);
        let quotas = web::Data::new(quotas);
        let value = web::Data::new(value);
        let dashboard = dashboard.map(web::Data::new);
        let peers = web::Data::from(peers);
        let server = HttpServer::new(move || {
            // Absent where turned off: its handlers then answer 404.
            let app = match &dashboard {
                Some(dashboard) => App::new().app_data(dashboard.clone()),
                None => App::new(),
            };
            app.app_data(system.clone())
                .app_data(records.clone())
                .app_data(simulations.clone())
                .app_data(notifications.clone())
                .app_data(sagas.clone())
                .app_data(cluster.clone())
                .app_data(api_keys.clone())
                .app_data(quotas.clone())
                .app_data(value.clone())
                .app_data(metrics.clone())
                .app_data(auth.clone())
                .app_data(limits.clone())
                .app_data(peers.clone())
                .app_data(web::PayloadConfig::new(body_limit))
                .configure(routes)
                .wrap(from_fn(limits::read_body_in_time))
                .wrap(from_fn(middleware::authenticate))
                .wrap(ErrorHandlers::new().default_handler(error::to_json_error))
                .wrap(from_fn(middleware::correlation))
                .wrap(from_fn(middleware::record_metrics))
                // Every answer: no content sniffing, no referrer leaked.
                .wrap(
                    actix_web::middleware::DefaultHeaders::new()
                        .add((actix_web::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                        .add((actix_web::http::header::REFERRER_POLICY, "no-referrer")),
                )
        })
        .workers(config.workers)
        .max_connections(connections_per_worker.max(1))
        .client_request_timeout(std::time::Duration::from_secs(5))
        .disable_signals()
        .shutdown_timeout(5)
        .listen(listener)?
        .run();
        let handle = server.handle();
        let task = tokio::spawn(server);
        Ok(HttpApi {
            local_addr,
            handle,
            task,
            sweeper,
        })
    }

    /// Stops accepting, finishes requests in flight, returns when stopped.
    /// Bounded: a stop that does not finish within a few seconds more than
    /// the server's own shutdown timeout is forced (a CI run once waited on
    /// a graceful stop for minutes; the cause is not yet known).
    pub async fn stop(mut self) -> std::io::Result<()> {
        self.sweeper.abort();
        const WITHIN: std::time::Duration = std::time::Duration::from_secs(10);
        if tokio::time::timeout(WITHIN, self.handle.stop(true))
            .await
            .is_err()
        {
            tracing::warn!("http: the graceful stop took over 10 s; stopping at once");
            let _ = tokio::time::timeout(WITHIN, self.handle.stop(false)).await;
        }
        match tokio::time::timeout(WITHIN, &mut self.task).await {
            Ok(joined) => joined.map_err(|error| std::io::Error::other(error.to_string()))?,
            Err(_) => {
                tracing::warn!("http: the server did not end within 10 s of its stop; aborted");
                self.task.abort();
                Ok(())
            }
        }
    }
}
