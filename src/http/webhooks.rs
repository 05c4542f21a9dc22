//! `/api/v1/webhooks`: subscriptions (webhooks and email), their delivery
//! log, and redelivery of dead letters.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use chrono::Utc;
use serde::{Deserialize, Serialize};

use valueverse_agents::Records;
use valueverse_agents::auth::Role;
use valueverse_agents::notifications::{Attempt, Notification};
use valueverse_agents::notifications::{EVENT_TYPES, Notifications};
use valueverse_agents::notifier::{Channel, Notifier, NotifierMsg, Subscription};
use valueverse_runtime::System;

use super::error::ErrorDoc;
use super::error::{ApiError, parse_json, parse_query};
use super::listing::{check_paging, list_page};
use super::schemas::notifier::SubscriptionStatus;
use super::scope::Scope;
use valueverse_agents::notifier::list_subscriptions;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SubscribeBody {
    /// An http or https URL to POST signed events to, or
    url: Option<String>,
    /// its HMAC secret (16 to 256 characters);
    secret: Option<String>,
    /// an email address.
    email: Option<String>,
    /// The event types to send (`*`: all), at least one.
    #[schema(schema_with = event_types_schema)]
    event_types: Vec<String>,
}

/// `event_types` as the document shows it: the names the agents announce.
fn event_types_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    let names = std::iter::once("*").chain(EVENT_TYPES.iter().copied());
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(names)),
        )
        .min_items(Some(1))
        .build()
}

/// A subscription as shown: the secret never leaves the node.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct SubscriptionView {
    id: String,
    status: SubscriptionStatus,
    channel: &'static str,
    url: Option<String>,
    email: Option<String>,
    event_types: Vec<String>,
    created_at: chrono::DateTime<Utc>,
    deleted_at: Option<chrono::DateTime<Utc>>,
}

impl From<Subscription> for SubscriptionView {
    fn from(subscription: Subscription) -> SubscriptionView {
        let (channel, url, email) = match subscription.channel {
            Channel::Webhook { url, .. } => ("webhook", Some(url), None),
            Channel::Email { address } => ("email", None, Some(address)),
        };
        SubscriptionView {
            id: subscription.id,
            status: subscription.status.into(),
            channel,
            url,
            email,
            event_types: subscription.event_types,
            created_at: subscription.created_at,
            deleted_at: subscription.deleted_at,
        }
    }
}

fn channel_of(body: SubscribeBody) -> Result<(Channel, Vec<String>), ApiError> {
    if body.event_types.is_empty() {
        return Err(ApiError::invalid_field(
            "event_types",
            "name at least one event type, or \"*\"".into(),
        ));
    }
    for (index, event_type) in body.event_types.iter().enumerate() {
        if event_type != "*" && !EVENT_TYPES.contains(&event_type.as_str()) {
            return Err(ApiError::invalid_field(
                &format!("event_types[{index}]"),
                format!(
                    "unknown event type `{event_type}`; known: *, {}",
                    EVENT_TYPES.join(", ")
                ),
            ));
        }
    }
    let channel = match (body.url, body.secret, body.email) {
        (Some(url), Some(secret), None) => {
            let parsed = reqwest::Url::parse(&url)
                .map_err(|error| ApiError::invalid_field("url", format!("not a URL: {error}")))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                return Err(ApiError::invalid_field(
                    "url",
                    "must be an http or https URL with a host".into(),
                ));
            }
            if !(16..=256).contains(&secret.len()) {
                return Err(ApiError::invalid_field(
                    "secret",
                    "must have 16 to 256 characters".into(),
                ));
            }
            Channel::Webhook { url, secret }
        }
        (Some(_), None, None) => {
            return Err(ApiError::invalid_field(
                "secret",
                "a webhook needs a `secret` to sign with".into(),
            ));
        }
        (None, None, Some(address)) => {
            valueverse_agents::notifications::check_email(&address)
                .map_err(|reason| ApiError::invalid_field("email", reason))?;
            Channel::Email { address }
        }
        _ => {
            return Err(ApiError::invalid_field(
                "url",
                "give `url` and `secret` (a webhook) or `email`, not both".into(),
            ));
        }
    };
    Ok((channel, body.event_types))
}

async fn ask(
    system: &System,
    scope: &Scope,
    id: &str,
    msg: NotifierMsg,
) -> Result<Subscription, ApiError> {
    Ok(scope
        .agent::<Notifier>(system, id)
        .ask(msg, system.runtime_config().ask_timeout)
        .await?)
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks",
    tag = "notifier",
    request_body = SubscribeBody,
    responses(
        (status = 201, description = "subscribed", body = SubscriptionView),
        (status = 422, description = "invalid field, named", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn subscribe(
    scope: Scope,
    system: web::Data<System>,
    notifications: web::Data<Notifications>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: SubscribeBody = parse_json(&body, false)?;
    let (channel, event_types) = channel_of(body)?;
    if let Channel::Webhook { url, .. } = &channel {
        let parsed = reqwest::Url::parse(url)
            .map_err(|error| ApiError::invalid_field("url", format!("not a URL: {error}")))?;
        notifications
            .check_target(&parsed)
            .await
            .map_err(|error| ApiError::invalid_field("url", error.to_string()))?;
    }
    let id = uuid::Uuid::now_v7().to_string();
    let subscription = Subscription {
        id: id.clone(),
        status: valueverse_agents::notifier::SubscriptionStatus::Active,
        channel,
        event_types,
        created_at: Utc::now(),
        deleted_at: None,
    };
    let subscription = ask(
        &system,
        &scope,
        &id,
        NotifierMsg::Create(Box::new(subscription)),
    )
    .await?;
    notifications.subscribed(&subscription);
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/webhooks/{id}")))
        .json(SubscriptionView::from(subscription)))
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks/{id}",
    tag = "notifier",
    params(
        ("id" = String, Path, description = "id"),
    ),
    responses(
        (status = 200, description = "the subscription (never its secret)", body = SubscriptionView),
        (status = 404, description = "not found", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn get(
    scope: Scope,
    system: web::Data<System>,
    id: web::Path<String>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let subscription = ask(&system, &scope, &id, NotifierMsg::Get).await?;
    let view = SubscriptionView::from(subscription).for_role(caller_role(&request));
    Ok(HttpResponse::Ok().json(view))
}

/// The caller's role; `None` on a `--dev` node (everyone is admin there).
fn caller_role(request: &HttpRequest) -> Option<Role> {
    request.extensions().get::<Role>().copied()
}

/// A webhook URL as a viewer sees it: no user info, no query (receivers
/// often put their tokens there).
fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            if parsed.query().is_some() {
                parsed.set_query(Some("redacted"));
            }
            parsed.set_fragment(None);
            parsed.to_string()
        }
        Err(_) => "(redacted)".into(),
    }
}

impl SubscriptionView {
    /// Viewers get URLs without user info or query.
    fn for_role(mut self, role: Option<Role>) -> SubscriptionView {
        if role == Some(Role::Viewer) {
            self.url = self.url.as_deref().map(redacted);
        }
        self
    }
}

#[utoipa::path(
    delete,
    path = "/api/v1/webhooks/{id}",
    tag = "notifier",
    params(
        ("id" = String, Path, description = "id"),
    ),
    responses(
        (status = 200, description = "deleted", body = SubscriptionView),
        (status = 404, description = "not found", body = ErrorDoc),
        (status = 409, description = "conflict with the current state", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn delete(
    scope: Scope,
    system: web::Data<System>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let subscription = ask(&system, &scope, &id, NotifierMsg::Delete).await?;
    Ok(HttpResponse::Ok().json(SubscriptionView::from(subscription)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<SubscriptionStatus>,
    #[serde(default = "super::listing::default_limit")]
    limit: i64,
    #[serde(default)]
    offset: i64,
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks",
    tag = "notifier",
    params(
        ("status" = Option<SubscriptionStatus>, Query, description = "filter"),
        ("limit" = Option<i64>, Query, description = "1 to 100 [default: 20]"),
        ("offset" = Option<i64>, Query, description = "rows to skip [default: 0]"),
    ),
    responses(
        (status = 200, description = "a page of subscriptions", body = super::listing::PageOf<SubscriptionView>),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn list(
    scope: Scope,
    records: web::Data<Records>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query: ListQuery = parse_query(request.query_string())?;
    let role = caller_role(&request);
    list_page(
        (query.limit, query.offset),
        |page| list_subscriptions(&records, scope.tenant(), query.status.map(Into::into), page),
        |subscription: Subscription| SubscriptionView::from(subscription).for_role(role),
    )
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    #[serde(default = "super::listing::default_limit")]
    limit: i64,
    #[serde(default)]
    offset: i64,
}

/// One notification of a subscription, as the API shows it (the store's
/// row also holds the claim, which is the nodes' business).
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct DeliveryView {
    id: String,
    subscription_id: String,
    event_id: String,
    event_type: String,
    /// The event's JSON, as delivered.
    payload: String,
    /// `pending`, `delivered` or `dead`.
    status: String,
    attempts_made: i64,
    created_at_ms: i64,
    updated_at_ms: i64,
    /// When the next attempt may go (while `pending`).
    due_at_ms: i64,
    /// The last attempt before the dead letter (0: the node's configured
    /// number of attempts).
    attempt_limit: i64,
    /// How many times a node took it over from one whose lease ended.
    takeovers: i64,
    attempts: Vec<AttemptView>,
}

/// One attempt at a delivery.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct AttemptView {
    id: String,
    attempt: i64,
    /// `succeeded`, `failed`, `dead` or `not_configured`.
    outcome: String,
    http_status: Option<i64>,
    latency_ms: Option<i64>,
    error: Option<String>,
    at_ms: i64,
}

/// A page of deliveries, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct DeliveryPage {
    total: i64,
    limit: i64,
    offset: i64,
    items: Vec<DeliveryView>,
}

impl DeliveryView {
    fn new(notification: Notification, attempts: Vec<Attempt>) -> DeliveryView {
        DeliveryView {
            id: notification.id,
            subscription_id: notification.subscription_id,
            event_id: notification.event_id,
            event_type: notification.event_type,
            payload: notification.payload,
            status: notification.status,
            attempts_made: notification.attempts,
            created_at_ms: notification.created_at_ms,
            updated_at_ms: notification.updated_at_ms,
            due_at_ms: notification.due_at_ms,
            attempt_limit: notification.attempt_limit,
            takeovers: notification.takeovers,
            attempts: attempts
                .into_iter()
                .map(|attempt| AttemptView {
                    id: attempt.id,
                    attempt: attempt.attempt,
                    outcome: attempt.outcome,
                    http_status: attempt.http_status,
                    latency_ms: attempt.latency_ms,
                    error: attempt.error,
                    at_ms: attempt.at_ms,
                })
                .collect(),
        }
    }
}

/// Every notification of the subscription, newest first, with each attempt
/// (outcome, HTTP status, latency, error).
#[utoipa::path(
    get,
    path = "/api/v1/webhooks/{id}/deliveries",
    tag = "notifier",
    params(
        ("id" = String, Path, description = "id"),
        ("limit" = Option<i64>, Query, description = "1 to 100 [default: 20]"),
        ("offset" = Option<i64>, Query, description = "rows to skip [default: 0]"),
    ),
    responses(
        (status = 200, description = "notifications with every attempt", body = DeliveryPage),
        (status = 404, description = "not found", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn deliveries(
    scope: Scope,
    system: web::Data<System>,
    notifications: web::Data<Notifications>,
    id: web::Path<String>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query: PageQuery = parse_query(request.query_string())?;
    check_paging(query.limit, query.offset)?;
    // 404 for an unknown subscription.
    ask(&system, &scope, &id, NotifierMsg::Get).await?;
    let (total, rows) = notifications
        .deliveries(&scope.tenant().key(&id), (query.limit, query.offset))
        .await?;
    Ok(HttpResponse::Ok().json(DeliveryPage {
        total,
        limit: query.limit,
        offset: query.offset,
        items: rows
            .into_iter()
            .map(|(notification, attempts)| DeliveryView::new(notification, attempts))
            .collect(),
    }))
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
    tag = "notifier",
    params(
        ("id" = String, Path, description = "id"),
        ("delivery_id" = String, Path, description = "delivery id"),
    ),
    responses(
        (status = 202, description = "sent again", body = Object),
        (status = 404, description = "not found", body = ErrorDoc),
        (status = 409, description = "conflict with the current state", body = ErrorDoc),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn redeliver(
    scope: Scope,
    api_keys: web::Data<valueverse_agents::auth::ApiKeys>,
    notifications: web::Data<Notifications>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, notification_id) = path.into_inner();
    if notifications
        .delivery(&scope.tenant().key(&id), &notification_id)
        .await?
        .is_none()
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("subscription `{id}` has no delivery `{notification_id}`"),
        ));
    }
    if !notifications.redeliver(&notification_id).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_dead",
            format!("delivery `{notification_id}` is not dead-lettered: nothing to redeliver"),
        ));
    }
    // The delivery log is not an agent's state: the entry is appended on
    // its own.
    let entry = scope.audit(
        "redeliver",
        &format!("webhook/{id}/delivery/{notification_id}"),
        "ok",
    );
    api_keys.append_audit(&entry).await?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({
        "id": notification_id, "status": "pending",
    })))
}
