//! The caller a request was authenticated as, for the handlers: the tenant
//! every agent address, list and stream of the request is scoped to.

use std::future::{Ready, ready};

use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpMessage, HttpRequest};

use valueverse_agents::auth::Caller;
use valueverse_runtime::{Agent, AgentRef, AuditEntry, CorrelationId, System, Tenant};

use super::error::ApiError;

/// The authenticated caller (the middleware put it on the request). A
/// request without one is refused: no handler of a tenant's data runs
/// unauthenticated.
#[derive(Debug, Clone)]
pub(crate) struct Scope(pub Caller, pub Option<CorrelationId>);

impl Scope {
    pub(crate) fn tenant(&self) -> &Tenant {
        &self.0.tenant
    }

    /// Who the caller's requests act for in the audit log: its key's id,
    /// or `oidc:<subject>`.
    pub(crate) fn actor(&self) -> String {
        self.0.lane()
    }

    /// The instance `(tenant, A::KIND, id)` of the caller's tenant, its
    /// messages acting for the caller under the request's correlation id.
    pub(crate) fn agent<A: Agent>(&self, system: &System, id: &str) -> AgentRef<A> {
        let agent = system
            .agent::<A>(self.tenant(), id)
            .with_actor(self.actor());
        match &self.1 {
            Some(correlation_id) => agent.with_correlation_id(correlation_id.clone()),
            None => agent,
        }
    }

    /// An audit entry of the caller's, made now.
    pub(crate) fn audit(&self, action: &str, target: &str, outcome: &str) -> AuditEntry {
        AuditEntry::now(
            self.tenant().as_str(),
            &self.actor(),
            action,
            target,
            self.1.as_ref().map(CorrelationId::as_str),
            outcome,
        )
    }

    /// The operator, or a node run with `--dev` (one person, every view).
    pub(crate) fn sees_operations(&self) -> bool {
        self.0.role == valueverse_agents::auth::Role::Platform
            || self.0.key_id == super::limits::DEV_CALLER
    }

    pub(crate) fn of(request: &HttpRequest) -> Result<Scope, ApiError> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .map(|caller| Scope(caller, request.extensions().get::<CorrelationId>().cloned()))
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
