//! The caller a request was authenticated as, for the handlers: the tenant
//! every agent address, list and stream of the request is scoped to.

use std::future::{Ready, ready};

use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpMessage, HttpRequest};

use valueverse_agents::auth::Caller;
use valueverse_runtime::Tenant;

use super::error::ApiError;

/// The authenticated caller (the middleware put it on the request). A
/// request without one is refused: no handler of a tenant's data runs
/// unauthenticated.
#[derive(Debug, Clone)]
pub(crate) struct Scope(pub Caller);

impl Scope {
    pub(crate) fn tenant(&self) -> &Tenant {
        &self.0.tenant
    }

    pub(crate) fn of(request: &HttpRequest) -> Result<Scope, ApiError> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .map(Scope)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "the request carries no authenticated caller",
                )
            })
    }
}

impl FromRequest for Scope {
    type Error = ApiError;
    type Future = Ready<Result<Scope, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(Scope::of(request))
    }
}

/// The operator's `?tenant=` (next to `?node=`): whose instance or job its
/// action names.
pub(crate) fn operator_tenant(request: &HttpRequest) -> Result<Option<Tenant>, ApiError> {
    let tenant = form_urlencoded::parse(request.query_string().as_bytes())
        .find(|(name, _)| name == "tenant")
        .map(|(_, value)| value.into_owned());
    tenant
        .map(|name| {
            Tenant::parse(&name)
                .map_err(|error| ApiError::invalid_field("tenant", error.to_string()))
        })
        .transpose()
}
