//! The notifier service: fans every domain event out to the subscriptions
//! that want its type, and delivers each one durably: a `notifications` row
//! first, then attempts (signed webhook POSTs or emails) with exponential
//! backoff and full jitter, each logged, until one succeeds or the attempts
//! run out and the notification is dead-lettered. A dead letter can be
//! redelivered; notifications a restart interrupted are resumed.

mod signing;
mod targets;

pub use targets::{TargetError, TargetPolicy, non_public};

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use rand::Rng;
use tokio::sync::{Semaphore, broadcast};

use crate::actors::notifier::{Channel, Subscription, SubscriptionStatus};
use crate::actors::{DomainEvent, System};
use crate::config::NotifierConfig;
use crate::store::{Attempt, Notification, StoreError, unix_millis};

pub use signing::{SIGNATURE_HEADER, sign, verify};

/// Every event type the agents announce; a subscription names some, or `*`.
pub const EVENT_TYPES: &[&str] = &[
    "model.created",
    "model.updated",
    "model.archived",
    "simulation.finished",
    "commitment.made",
    "commitment.voided",
    "plan.created",
    "plan.cancelled",
    "milestone.completed",
    "milestone.overdue",
    "delivery.recorded",
    "saga.finished",
];

/// Why the service did not start.
#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    #[error("cannot read the subscriptions")]
    Store(#[from] StoreError),
    #[error("invalid notifier.smtp_url: {0}")]
    Smtp(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

struct Inner {
    system: System,
    config: NotifierConfig,
    targets: TargetPolicy,
    client: reqwest::Client,
    mailer: Option<AsyncSmtpTransport<Tokio1Executor>>,
    subscriptions: RwLock<HashMap<String, Subscription>>,
    in_flight: Semaphore,
}

/// The notifier service of a node. Cheap to clone.
#[derive(Clone)]
pub struct Notifications {
    inner: Arc<Inner>,
}

impl Notifications {
    /// Loads the active subscriptions, resumes pending notifications and
    /// starts listening to the node's events. Call inside a tokio runtime.
    pub async fn start(
        system: System,
        config: &NotifierConfig,
    ) -> Result<(Notifications, tokio::task::JoinHandle<()>), NotifierError> {
        let mailer = match &config.smtp_url {
            None => None,
            Some(url) => {
                // A relay on the node's network: plain SMTP (see README).
                let address = url.strip_prefix("smtp://").unwrap_or(url);
                let (host, port) = match address.rsplit_once(':') {
                    Some((host, port)) => (
                        host,
                        port.parse::<u16>().map_err(|_| {
                            NotifierError::Smtp(format!(
                                "bad port in {}",
                                crate::store::redact_url(url)
                            ))
                        })?,
                    ),
                    None => (address, 25),
                };
                Some(
                    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
                        .port(port)
                        .build(),
                )
            }
        };
        let targets = TargetPolicy::new(config.allow_networks.clone());
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            // Connects only to addresses the target policy allows.
            .dns_resolver(targets.resolver())
            .build()
            .map_err(|error| NotifierError::Client(error.to_string()))?;
        let mut subscriptions = HashMap::new();
        let mut offset = 0;
        loop {
            let page = system
                .store()
                .list_records("subscriptions", &[("status", Some("active"))], 100, offset)
                .await?;
            for body in &page.bodies {
                if let Ok(subscription) = serde_json::from_str::<Subscription>(body) {
                    subscriptions.insert(subscription.id.clone(), subscription);
                }
            }
            if page.bodies.len() < 100 {
                break;
            }
            offset += 100;
        }
        let events = system.subscribe_domain_events();
        let notifications = Notifications {
            inner: Arc::new(Inner {
                in_flight: Semaphore::new(config.concurrency),
                system,
                config: config.clone(),
                targets,
                client,
                mailer,
                subscriptions: RwLock::new(subscriptions),
            }),
        };
        for pending in notifications
            .inner
            .system
            .store()
            .pending_notifications()
            .await?
        {
            notifications.spawn_delivery(pending);
        }
        let listener = tokio::spawn(notifications.clone().listen(events));
        Ok((notifications, listener))
    }

    /// A subscription created or deleted: the fan-out sees it at once.
    /// Whether webhooks may go to `url` (every address its host stands
    /// for, now); registration refuses what this refuses.
    pub async fn check_target(&self, url: &reqwest::Url) -> Result<(), TargetError> {
        self.inner.targets.check_url(url).await
    }

    pub fn update(&self, subscription: Subscription) {
        let mut subscriptions = self
            .inner
            .subscriptions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if subscription.status == SubscriptionStatus::Active {
            subscriptions.insert(subscription.id.clone(), subscription);
        } else {
            subscriptions.remove(&subscription.id);
        }
    }

    /// Sends a dead notification again, from its first attempt's backoff.
    /// False when it is not dead (delivered, or still being tried).
    pub async fn redeliver(&self, notification_id: &str) -> Result<bool, StoreError> {
        let store = self.inner.system.store();
        if !store.revive_notification(notification_id).await? {
            return Ok(false);
        }
        if let Some(mut notification) = store.notification(notification_id).await? {
            // Attempt numbers go on; the budget starts over.
            notification.status = "pending".into();
            self.spawn_redelivery(notification);
        }
        Ok(true)
    }

    async fn listen(self, mut events: broadcast::Receiver<std::sync::Arc<DomainEvent>>) {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if let Err(error) = self.fan_out(&event).await {
                        tracing::error!(%error, event = %event.event_type, "notifier: cannot queue the event");
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::error!(missed, "notifier: fell behind the event bus; events lost");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    async fn fan_out(&self, event: &DomainEvent) -> Result<(), StoreError> {
        let wanted: Vec<Subscription> = self
            .inner
            .subscriptions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .filter(|subscription| subscription.wants(&event.event_type))
            .cloned()
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let payload = serde_json::to_string(event).unwrap_or_else(|_| "{}".into());
        for subscription in wanted {
            let now = unix_millis();
            let notification = Notification {
                id: uuid::Uuid::now_v7().to_string(),
                subscription_id: subscription.id.clone(),
                event_id: event.id.clone(),
                event_type: event.event_type.clone(),
                payload: payload.clone(),
                status: "pending".into(),
                attempts: 0,
                created_at_ms: now,
                updated_at_ms: now,
            };
            self.inner
                .system
                .store()
                .insert_notification(&notification)
                .await?;
            self.spawn_delivery(notification);
        }
        Ok(())
    }

    fn spawn_delivery(&self, notification: Notification) {
        let this = self.clone();
        let first = notification.attempts + 1;
        tokio::spawn(async move { this.deliver(notification, first, None).await });
    }

    fn spawn_redelivery(&self, notification: Notification) {
        let this = self.clone();
        let first = notification.attempts + 1;
        let budget = i64::from(self.inner.config.max_attempts);
        tokio::spawn(async move {
            this.deliver(notification, first, Some(first + budget - 1))
                .await
        });
    }

    /// Attempts from `first` until one succeeds or `last` (by default the
    /// configured number of attempts) has failed.
    async fn deliver(self, notification: Notification, first: i64, last: Option<i64>) {
        let config = &self.inner.config;
        let last = last.unwrap_or(i64::from(config.max_attempts));
        let subscription = self
            .inner
            .system
            .agent::<crate::actors::notifier::Notifier>(notification.subscription_id.clone())
            .ask(
                crate::actors::notifier::NotifierMsg::Get,
                self.inner.system.runtime_config().ask_timeout,
            )
            .await;
        let mut attempt = first;
        loop {
            let outcome = match &subscription {
                Ok(subscription) if subscription.status == SubscriptionStatus::Active => {
                    let _permit = self.inner.in_flight.acquire().await;
                    self.attempt(&subscription.channel, &notification).await
                }
                Ok(_) => Outcome::gave_up("the subscription was deleted"),
                Err(error) => {
                    Outcome::failed(None, None, format!("cannot read the subscription: {error}"))
                }
            };
            let final_attempt = attempt >= last || outcome.give_up;
            let (label, status) = match (outcome.success, final_attempt) {
                (true, _) => ("succeeded", "delivered"),
                (false, false) => ("failed", "pending"),
                (false, true) if outcome.not_configured => ("not_configured", "dead"),
                (false, true) => ("dead", "dead"),
            };
            let record = Attempt {
                id: uuid::Uuid::now_v7().to_string(),
                notification_id: notification.id.clone(),
                attempt,
                outcome: label.into(),
                http_status: outcome.http_status,
                latency_ms: outcome.latency_ms,
                error: outcome.error.clone(),
                at_ms: unix_millis(),
            };
            if let Err(error) = self
                .inner
                .system
                .store()
                .record_attempt(&record, status)
                .await
            {
                tracing::error!(%error, notification = %notification.id, "notifier: cannot log an attempt");
            }
            if status != "pending" {
                if status == "dead" {
                    tracing::warn!(notification = %notification.id, attempts = attempt,
                        error = ?outcome.error, "notifier: dead-lettered");
                }
                return;
            }
            tokio::time::sleep(self.backoff(attempt - first + 1)).await;
            attempt += 1;
        }
    }

    /// Full jitter over an exponential ceiling (AWS's "full jitter").
    fn backoff(&self, retry: i64) -> Duration {
        let config = &self.inner.config;
        let exponent = u32::try_from(retry.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(30);
        let ceiling = config
            .initial_backoff
            .saturating_mul(1u32 << exponent)
            .min(config.max_backoff);
        ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    async fn attempt(&self, channel: &Channel, notification: &Notification) -> Outcome {
        let started = Instant::now();
        let elapsed = || Some(started.elapsed().as_millis() as i64);
        match channel {
            Channel::Webhook { url, secret } => {
                // An IP literal never reaches the client's resolver: checked
                // here (a name is checked by the resolver, as it connects).
                let literal = reqwest::Url::parse(url)
                    .ok()
                    .and_then(|url| match url.host() {
                        Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
                        Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
                        _ => None,
                    });
                if let Some(Err(error)) = literal.map(|ip| self.inner.targets.check(ip)) {
                    return Outcome::failed(None, elapsed(), format!("target refused: {error}"));
                }
                let timestamp = chrono::Utc::now().timestamp();
                let signature = sign(secret, timestamp, notification.payload.as_bytes());
                let sent = self
                    .inner
                    .client
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(SIGNATURE_HEADER, signature)
                    .header("ValueVerse-Event", &notification.event_type)
                    .header("ValueVerse-Delivery", &notification.id)
                    .body(notification.payload.clone())
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status().is_success() => Outcome {
                        success: true,
                        http_status: Some(i64::from(response.status().as_u16())),
                        latency_ms: elapsed(),
                        ..Outcome::default()
                    },
                    Ok(response) => Outcome::failed(
                        Some(i64::from(response.status().as_u16())),
                        elapsed(),
                        format!("the receiver answered {}", response.status()),
                    ),
                    Err(error) => Outcome::failed(None, elapsed(), format!("{error}")),
                }
            }
            Channel::Email { address } => {
                let Some(mailer) = &self.inner.mailer else {
                    return Outcome {
                        not_configured: true,
                        give_up: true,
                        error: Some("email is not configured (set notifier.smtp_url)".into()),
                        ..Outcome::default()
                    };
                };
                let message = lettre::Message::builder()
                    .from(match self.inner.config.email_from.parse() {
                        Ok(from) => from,
                        Err(error) => {
                            return Outcome::gave_up(&format!(
                                "invalid notifier.email_from: {error}"
                            ));
                        }
                    })
                    .to(match address.parse() {
                        Ok(to) => to,
                        Err(error) => {
                            return Outcome::gave_up(&format!("invalid address: {error}"));
                        }
                    })
                    .subject(format!("[ValueVerse] {}", notification.event_type))
                    .body(notification.payload.clone());
                match message {
                    Ok(message) => match mailer.send(message).await {
                        Ok(_) => Outcome {
                            success: true,
                            latency_ms: elapsed(),
                            ..Outcome::default()
                        },
                        Err(error) => Outcome::failed(None, elapsed(), format!("SMTP: {error}")),
                    },
                    Err(error) => Outcome::gave_up(&format!("cannot build the email: {error}")),
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct Outcome {
    success: bool,
    /// No retry can help (a deleted subscription, an invalid address).
    give_up: bool,
    not_configured: bool,
    http_status: Option<i64>,
    latency_ms: Option<i64>,
    error: Option<String>,
}

impl Outcome {
    fn failed(http_status: Option<i64>, latency_ms: Option<i64>, error: String) -> Outcome {
        Outcome {
            http_status,
            latency_ms,
            error: Some(error),
            ..Outcome::default()
        }
    }

    fn gave_up(error: &str) -> Outcome {
        Outcome {
            give_up: true,
            error: Some(error.to_owned()),
            ..Outcome::default()
        }
    }
}
