//! The notifier agent: one instance per subscription (a webhook or an email
//! address, and the event types it wants). Delivery itself (signing,
//! retries, the log, dead letters) is the notifier service's
//! (`crate::notifications`), which keeps the active subscriptions in memory.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use valueverse_store::Column;

use valueverse_runtime::HandlerError;
use valueverse_runtime::{Agent, AgentMessage, Handling, RejectionCode};

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "channel", rename_all = "snake_case")]
pub enum Channel {
    /// POSTed, signed with HMAC-SHA256 under `secret`.
    Webhook {
        url: String,
        secret: String,
    },
    Email {
        address: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    Active,
    Deleted,
}

impl SubscriptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::Deleted => "deleted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    pub id: String,
    pub status: SubscriptionStatus,
    #[serde(flatten)]
    pub channel: Channel,
    /// Event types (`model.created`...), or `*` for all.
    pub event_types: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

impl Subscription {
    pub fn wants(&self, event_type: &str) -> bool {
        self.status == SubscriptionStatus::Active
            && self.event_types.iter().any(|wanted| {
                wanted == event_type
                    || (wanted == "*" && valueverse_runtime::is_notified(event_type))
            })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum NotifierMsg {
    Create(Box<Subscription>),
    Get,
    Delete,
}

impl AgentMessage for NotifierMsg {
    fn name(&self) -> &'static str {
        match self {
            NotifierMsg::Create(_) => "create",
            NotifierMsg::Get => "get",
            NotifierMsg::Delete => "delete",
        }
    }
}

pub struct Notifier;

impl Agent for Notifier {
    const KIND: &'static str = "notifier";
    const MESSAGE_ID: u32 = 0x0105;
    type State = Option<Subscription>;
    type Msg = NotifierMsg;
    type Reply = Subscription;

    fn init(_key: &str) -> Option<Subscription> {
        None
    }

    fn handle(
        state: &mut Option<Subscription>,
        msg: NotifierMsg,
        ctx: &mut Handling<'_>,
    ) -> Result<Subscription, HandlerError> {
        let key = ctx.key().to_owned();
        match (msg, state.as_mut()) {
            (NotifierMsg::Create(subscription), None) => {
                ctx.persist();
                Ok(state.insert(*subscription).clone())
            }
            (NotifierMsg::Create(_), Some(_)) => Err(HandlerError::rejected(
                RejectionCode::Conflict,
                format!("subscription `{key}` exists"),
                None,
            )),
            (_, None) => Err(HandlerError::rejected(
                RejectionCode::NotFound,
                format!("no subscription `{key}`"),
                None,
            )),
            (NotifierMsg::Get, Some(subscription)) => Ok(subscription.clone()),
            (NotifierMsg::Delete, Some(subscription)) => {
                if subscription.status == SubscriptionStatus::Deleted {
                    return Err(HandlerError::rejected(
                        RejectionCode::Conflict,
                        format!("subscription `{key}` is already deleted"),
                        None,
                    ));
                }
                subscription.status = SubscriptionStatus::Deleted;
                subscription.deleted_at = Some(Utc::now());
                ctx.persist();
                Ok(subscription.clone())
            }
        }
    }

    valueverse_runtime::table_persistence!("subscriptions", |subscription| vec![
        (
            "status",
            Column::Text(Some(subscription.status.as_str().into()))
        ),
        (
            "created_at_ms",
            Column::Int(Some(subscription.created_at.timestamp_millis()))
        ),
    ]);
}

/// A page of the subscriptions, newest first, filtered by status.
pub async fn list_subscriptions(
    records: &crate::Records,
    tenant: &valueverse_runtime::Tenant,
    status: Option<SubscriptionStatus>,
    page: (i64, i64),
) -> Result<super::Listed<Subscription>, valueverse_runtime::StateError> {
    let listing = valueverse_store::Listing::Subscriptions {
        status: status.map(SubscriptionStatus::as_str),
    };
    super::listing::page(records, tenant, listing, page).await
}
