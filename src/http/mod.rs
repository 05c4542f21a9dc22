//! The HTTP API (actix-web). This is the only module that knows status codes
//! and JSON error shapes.
//!
//! | route | what |
//! |---|---|
//! | `GET /health` | the process is alive |
//! | `GET /ready` | the store is reachable and migrated |
//! | `GET /metrics` | Prometheus text |
//! | `GET /api/v1/actors` | the live supervision tree |
//! | `POST /api/v1/actors/{kind}/{key}/reset` | clear a failed instance |
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
mod commitments;
mod error;
mod listing;
mod middleware;
mod operations;
mod plans;
mod simulations;
mod value_models;
mod webhooks;

use std::net::{SocketAddr, TcpListener};

use actix_web::dev::ServerHandle;
use actix_web::middleware::{ErrorHandlers, from_fn};
use actix_web::{App, HttpServer, web};

use crate::actors::System;
use crate::auth::KeyCache;
use crate::config::Config;
use crate::notifier::Notifications;
use crate::simulation::Simulations;

pub use error::{ApiError, parse_json};
pub use middleware::CORRELATION_HEADER;

/// Routes and middleware of the API, for `App::configure`.
fn routes(config: &mut web::ServiceConfig) {
    // Resources (not bare routes) so a known path with a wrong method is a 405.
    config
        .service(web::resource("/health").get(operations::health))
        .service(web::resource("/ready").get(operations::ready))
        .service(web::resource("/metrics").get(operations::metrics))
        .service(
            web::scope("/api/v1")
                .service(web::resource("/actors").get(actors::tree))
                .service(
                    web::resource("/api-keys")
                        .post(api_keys::create)
                        .get(api_keys::list),
                )
                .service(web::resource("/api-keys/{id}").delete(api_keys::revoke))
                .service(web::resource("/actors/{kind}/{key}/reset").post(actors::reset))
                .service(web::resource("/simulations").post(simulations::submit))
                // Before `{id}`, which would otherwise match it.
                .service(web::resource("/simulations/queue").get(simulations::queue))
                .service(web::resource("/simulations/{id}").get(simulations::get))
                .service(web::resource("/simulations/{id}/results").get(simulations::results))
                .service(web::resource("/simulations/{id}/cancel").put(simulations::cancel))
                .service(
                    web::resource("/value-models")
                        .post(value_models::create)
                        .get(value_models::list),
                )
                .service(
                    web::resource("/value-models/{id}")
                        .get(value_models::get)
                        .patch(value_models::patch),
                )
                .service(web::resource("/value-models/{id}/versions").get(value_models::versions))
                .service(web::resource("/value-models/{id}/archive").post(value_models::archive))
                .service(
                    web::resource("/value-models/{id}/hypotheses").post(value_models::hypotheses),
                )
                .service(
                    web::resource("/commitments")
                        .post(commitments::commit)
                        .get(commitments::list),
                )
                .service(web::resource("/commitments/{id}").get(commitments::get))
                .service(web::resource("/commitments/{id}/void").post(commitments::void))
                .service(web::resource("/plans").post(plans::create).get(plans::list))
                .service(web::resource("/plans/{id}").get(plans::get))
                .service(web::resource("/plans/{id}/progress").post(plans::progress))
                .service(web::resource("/plans/{id}/deliveries").post(plans::deliver))
                .service(web::resource("/plans/{id}/cancel").post(plans::cancel))
                .service(web::resource("/amplifications/{model_id}/insights").get(plans::insights))
                .service(
                    web::resource("/webhooks")
                        .post(webhooks::subscribe)
                        .get(webhooks::list),
                )
                .service(
                    web::resource("/webhooks/{id}")
                        .get(webhooks::get)
                        .delete(webhooks::delete),
                )
                .service(web::resource("/webhooks/{id}/deliveries").get(webhooks::deliveries))
                .service(
                    web::resource("/webhooks/{id}/deliveries/{delivery_id}/redeliver")
                        .post(webhooks::redeliver),
                ),
        )
        .service(web::resource("/ws/simulations/{id}").get(simulations::events));
}

/// A running HTTP server.
pub struct HttpApi {
    pub local_addr: SocketAddr,
    handle: ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl HttpApi {
    /// Binds `config.http_addr` (port 0 picks a free port) and serves the
    /// API of `system`. Must be called inside a tokio runtime.
    pub fn start(
        system: System,
        simulations: Simulations,
        notifications: Notifications,
        config: &Config,
    ) -> std::io::Result<HttpApi> {
        let listener = TcpListener::bind(config.http_addr)?;
        let body_limit = config.http_body_limit;
        let auth = web::Data::new(middleware::Auth {
            dev: config.dev,
            keys: KeyCache::default(),
        });
        let local_addr = listener.local_addr()?;
        let metrics = web::Data::new(system.metrics().clone());
        let system = web::Data::new(system);
        let simulations = web::Data::new(simulations);
        let notifications = web::Data::new(notifications);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(system.clone())
                .app_data(simulations.clone())
                .app_data(notifications.clone())
                .app_data(metrics.clone())
                .app_data(auth.clone())
                .app_data(web::PayloadConfig::new(body_limit))
                .configure(routes)
                .wrap(from_fn(middleware::authenticate))
                .wrap(ErrorHandlers::new().default_handler(error::to_json_error))
                .wrap(from_fn(middleware::correlation))
                .wrap(from_fn(middleware::record_metrics))
        })
        .workers(config.http_workers)
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
        })
    }

    /// Stops accepting, finishes requests in flight, returns when stopped.
    pub async fn stop(self) -> std::io::Result<()> {
        self.handle.stop(true).await;
        self.task
            .await
            .map_err(|error| std::io::Error::other(error.to_string()))?
    }
}
