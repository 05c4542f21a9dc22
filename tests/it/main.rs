//! The one integration test binary (see STYLE.md): modules per area.

mod audit;
mod auth;
mod cli;
mod cluster;
mod cluster_trust;
mod commitments;
mod crash;
mod dashboard;
mod http;
mod limits;
mod monitoring;
mod openapi;
mod outbox;
mod partition;
mod people;
mod plans;
mod runtime;
mod sagas;
mod simulations;
mod store;
mod support;
mod tenants;
mod tracing_spans;
mod value_loop;
mod value_models;
mod webhooks;
