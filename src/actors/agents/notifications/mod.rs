//! The notifier service: turns the domain events of the outbox into
//! notifications and delivers them. Every node runs it over the shared
//! store:
//!
//! - the **dispatcher** takes undispatched events from the outbox (written
//!   in the transactions of the changes that raised them) and writes one
//!   pending notification per active subscription that wants the event's
//!   type, in one transaction (a unique index: never two for one
//!   subscription and event);
//! - the **deliverer** claims due notifications under the node's lease
//!   (one node at a time; a claim whose node's lease ended is taken over)
//!   and makes one attempt each: a signed webhook POST or an email, logged,
//!   then released with its next due time (exponential backoff, full
//!   jitter) until it succeeds or its attempts run out (dead letter). A
//!   dead letter can be redelivered.
//!
//! The notification's id is the `ValueVerse-Delivery` header: the same on
//! every attempt and after a takeover, so a receiver deduplicates on it.

mod metrics;
mod signing;
mod targets;

pub use targets::{TargetError, TargetPolicy, non_public};
/// The delivery log's rows, as [`Notifications::deliveries`] hands them out.
pub use valueverse_store::{Attempt, Notification};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tracing::Instrument;
use valueverse_runtime::TraceContext;

use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use rand::Rng;
use tokio::sync::{Notify, Semaphore};

use crate::config::NotifierConfig;
use crate::notifier::{Channel, Subscription, SubscriptionStatus};
use valueverse_cluster::node::ClusterNode;
use valueverse_runtime::{StateError, System};
use valueverse_store::{Claimant, ClaimedDelivery, Store, StoreError, unix_millis};

use metrics::OutboxMetrics;

pub use signing::{SIGNATURE_HEADER, sign, verify};

pub use valueverse_runtime::EVENT_TYPES;

/// Whether `address` is one email can be sent to (as the mailer parses
/// it); the reason when it is not.
pub fn check_email(address: &str) -> Result<(), String> {
    address
        .parse::<lettre::Address>()
        .map(drop)
        .map_err(|error| format!("not an email address: {error}"))
}

/// Events one dispatch transaction takes at most.
const DISPATCH_BATCH: i64 = 256;
/// How long a dispatch waits after this node committed events, so that
/// events committed about together go in one transaction.
const DISPATCH_COALESCE: Duration = Duration::from_millis(20);
/// About the most notifications one dispatch writes: events are taken
/// fewer at a time when many subscriptions want them.
const MAX_FAN_OUT: usize = 4096;
/// Notifications one claim takes at most.
const CLAIM_BATCH: usize = 64;
/// How often a node alone reads the subscriptions for what its outbox
/// keeps (types added on the node itself apply at once).
const SUBSCRIPTIONS_CHECK: Duration = Duration::from_millis(250);
/// How often the outbox's depth and age are read for the metrics.
const STATS_EVERY: Duration = Duration::from_secs(5);
/// Tries at logging an attempt before its claim is left to lapse.
const RECORD_ATTEMPTS: u32 = 4;
/// Wait after a store error before a loop tries again.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// Why the service did not start.
#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    #[error("invalid notifier.smtp_url: {0}")]
    Smtp(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

struct Inner {
    system: System,
    store: Store,
    cluster: ClusterNode,
    config: NotifierConfig,
    targets: TargetPolicy,
    client: reqwest::Client,
    mailer: Option<AsyncSmtpTransport<Tokio1Executor>>,
    /// Attempts under way on this node; what the deliverer claims is
    /// bounded by the permits free.
    in_flight: Arc<Semaphore>,
    /// Rung when notifications were written or released here.
    deliveries_due: Notify,
    /// Active subscriptions at the last dispatch (sizes the next one).
    subscribers: AtomicUsize,
    metrics: OutboxMetrics,
}

/// The notifier service of a node. Cheap to clone.
#[derive(Clone)]
pub struct Notifications {
    inner: Arc<Inner>,
}

impl Notifications {
    /// Starts the dispatcher, the deliverer and the outbox's housekeeping
    /// (which resume whatever the outbox holds: events a crash left
    /// undispatched, deliveries a dead node held). Call inside a tokio
    /// runtime, once the node holds its lease.
    pub fn start(
        system: System,
        store: Store,
        cluster: ClusterNode,
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
                                valueverse_store::redact_url(url)
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
        let metrics = OutboxMetrics::new(system.metrics().registry());
        let notifications = Notifications {
            inner: Arc::new(Inner {
                in_flight: Arc::new(Semaphore::new(config.concurrency)),
                system,
                store,
                cluster,
                config: config.clone(),
                targets,
                client,
                mailer,
                deliveries_due: Notify::new(),
                subscribers: AtomicUsize::new(0),
                metrics,
            }),
        };
        let this = notifications.clone();
        let task = tokio::spawn(async move {
            tokio::join!(
                this.clone().dispatch_loop(),
                this.clone().deliver_loop(),
                this.housekeeping(),
            );
        });
        Ok((notifications, task))
    }

    /// Whether webhooks may go to `url` (every address its host stands
    /// for, now); registration refuses what this refuses.
    pub async fn check_target(&self, url: &reqwest::Url) -> Result<(), TargetError> {
        self.inner.targets.check_url(url).await
    }

    /// Waits for the attempts under way (at most the receivers' timeout
    /// and a second); call once the service's task is stopped.
    pub async fn drain(&self) {
        let all = u32::try_from(self.inner.config.concurrency).unwrap_or(u32::MAX);
        let wait = self.inner.config.timeout + Duration::from_secs(1);
        let _ = tokio::time::timeout(wait, self.inner.in_flight.acquire_many(all)).await;
    }

    /// A subscription made on this node: events of its types are kept
    /// from now on here (other nodes read it from the store).
    pub fn subscribed(&self, subscription: &Subscription) {
        self.inner
            .system
            .wanted_events()
            .add(subscription.event_types.iter().map(String::as_str));
    }

    /// A page of a subscription's delivery log, newest first: each
    /// notification with its attempts, and the count of all.
    pub async fn deliveries(
        &self,
        subscription_id: &str,
        (limit, offset): (i64, i64),
    ) -> Result<(i64, Vec<(Notification, Vec<Attempt>)>), StateError> {
        Ok(self
            .inner
            .store
            .notifications_of(subscription_id, limit, offset)
            .await?)
    }

    /// The latest `limit` notifications of a tenant's subscriptions, and
    /// their latest `limit` failed attempts (the dashboard's panel).
    pub async fn recent(
        &self,
        tenant: &valueverse_runtime::Tenant,
        limit: i64,
    ) -> Result<(Vec<Notification>, Vec<Attempt>), StateError> {
        let store = &self.inner.store;
        let (recent, failures) = tokio::join!(
            store.recent_notifications(tenant.as_str(), limit),
            store.recent_failed_attempts(tenant.as_str(), limit)
        );
        Ok((recent?, failures?))
    }

    /// The notification of a subscription with this id, if it has one.
    pub async fn delivery(
        &self,
        subscription_id: &str,
        notification_id: &str,
    ) -> Result<Option<Notification>, StateError> {
        let found = self.inner.store.notification(notification_id).await?;
        Ok(found.filter(|notification| notification.subscription_id == subscription_id))
    }

    /// Sends a dead notification again (under the same delivery id), with
    /// a fresh budget of attempts. False when it is not dead (delivered,
    /// or still being tried).
    pub async fn redeliver(&self, notification_id: &str) -> Result<bool, StateError> {
        let budget = i64::from(self.inner.config.max_attempts);
        let revived = self
            .inner
            .store
            .revive_notification(notification_id, budget)
            .await?;
        if revived {
            self.inner.deliveries_due.notify_one();
        }
        Ok(revived)
    }

    fn claimant(&self) -> Option<(String, i64)> {
        let token = self.inner.cluster.lease_token()?;
        Some((self.inner.system.node_name().to_owned(), token))
    }

    /// Dispatches this node's events as soon as they are committed, and
    /// every node's at each poll.
    async fn dispatch_loop(self) {
        let written = self.inner.system.outbox_written();
        loop {
            let rung = tokio::select! {
                _ = written.notified() => true,
                _ = tokio::time::sleep(self.inner.config.poll_interval) => false,
            };
            if rung {
                // Events committed together go in one dispatch.
                tokio::time::sleep(DISPATCH_COALESCE).await;
            }
            let mut known = rung;
            loop {
                match self.dispatch_once(known).await {
                    Ok(0) => break,
                    Ok(_) => known = false,
                    Err(error) => {
                        tracing::warn!(%error, "notifier: cannot dispatch the outbox; trying again");
                        tokio::time::sleep(STORE_RETRY).await;
                        break;
                    }
                }
            }
        }
    }

    /// One dispatch transaction; answers how many events it took (the
    /// loop goes on until none is left). Unless
    /// events are `known` to wait, a read looks first (no write
    /// transaction while the outbox is empty).
    async fn dispatch_once(&self, known: bool) -> Result<usize, StoreError> {
        let store = &self.inner.store;
        if !known && !store.has_undispatched_events().await? {
            return Ok(0);
        }
        let attempt_limit = i64::from(self.inner.config.max_attempts);
        // Notifications this node can attempt now are written claimed by
        // it and attempted at once; the rest wait for any node's claim.
        let mut permits = Vec::new();
        while permits.len() < CLAIM_BATCH {
            match Arc::clone(&self.inner.in_flight).try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        let claimant = self.claimant();
        let claim = claimant.as_ref().map(|(node, token)| {
            let claimant = Claimant {
                node,
                token: *token,
            };
            (claimant, permits.len())
        });
        // Fewer events at once when many subscriptions want them: a
        // dispatch writes at most about MAX_FAN_OUT notifications.
        let subscribers = self.inner.subscribers.load(Ordering::Relaxed).max(1);
        let limit = (MAX_FAN_OUT / subscribers).clamp(1, DISPATCH_BATCH as usize) as i64;
        let counted = &self.inner.subscribers;
        let (done, claimed) = store
            .dispatch_events(
                limit,
                unix_millis(),
                attempt_limit,
                |rows| {
                    // (key, subscription): the key names its tenant.
                    let subscriptions: Vec<(String, Subscription)> = rows
                        .into_iter()
                        .filter_map(|(key, body)| Some((key, serde_json::from_str(&body).ok()?)))
                        .collect();
                    counted.store(subscriptions.len(), Ordering::Relaxed);
                    move |event_type: &str, tenant: &str| {
                        subscriptions
                            .iter()
                            .filter(|(key, subscription)| {
                                valueverse_runtime::split_key(key).0 == tenant
                                    && subscription.wants(event_type)
                            })
                            .map(|(key, _)| key.clone())
                            .collect()
                    }
                },
                claim,
            )
            .await?;
        self.inner.metrics.dispatched.inc_by(done.events as u64);
        if let Some((node, token)) = claimant {
            for (notification, permit) in claimed.into_iter().zip(permits) {
                self.inner.metrics.claimed.inc();
                let this = self.clone();
                let node = node.clone();
                tokio::spawn(async move {
                    this.deliver(notification, &node, token).await;
                    drop(permit);
                });
            }
        }
        if done.notifications > 0 {
            self.inner.deliveries_due.notify_one();
        }
        Ok(done.events)
    }

    /// Reads the active subscriptions and sets what this node's agents
    /// keep in the outbox from them (a node alone only: a node of a
    /// cluster keeps every notified event and needs no read).
    async fn refresh_wanted(&self) -> Result<(), StoreError> {
        let wanted = self.inner.system.wanted_events();
        if wanted.keeps_all() {
            return Ok(());
        }
        let read_began = Instant::now();
        let bodies = self.inner.store.active_subscriptions().await?;
        let subscriptions = parse_subscriptions(&bodies);
        wanted.set(
            read_began,
            subscriptions
                .iter()
                .flat_map(|subscription| subscription.event_types.iter().map(String::as_str)),
        );
        Ok(())
    }

    /// Claims due notifications while this node has attempts to spare, and
    /// makes one attempt at each.
    async fn deliver_loop(self) {
        loop {
            tokio::select! {
                _ = self.inner.deliveries_due.notified() => {}
                _ = tokio::time::sleep(self.inner.config.poll_interval) => {}
            }
            loop {
                // Wait for a free attempt before claiming: a claim held in
                // memory while nothing can send it only delays others.
                let Ok(first) = Arc::clone(&self.inner.in_flight).acquire_owned().await else {
                    return;
                };
                let free = (self.inner.in_flight.available_permits() + 1).min(CLAIM_BATCH);
                let Some((node, token)) = self.claimant() else {
                    break;
                };
                let claimant = Claimant { node: &node, token };
                let claimed = match self
                    .inner
                    .store
                    .claim_deliveries(
                        claimant,
                        free as i64,
                        unix_millis(),
                        self.stale_claims_before(),
                    )
                    .await
                {
                    Ok(claimed) => claimed,
                    Err(error) => {
                        tracing::warn!(%error, "notifier: cannot claim deliveries; trying again");
                        tokio::time::sleep(STORE_RETRY).await;
                        break;
                    }
                };
                let full = claimed.len() == free;
                let mut first = Some(first);
                for delivery in claimed {
                    let permit = match first.take() {
                        Some(permit) => permit,
                        None => match Arc::clone(&self.inner.in_flight).acquire_owned().await {
                            Ok(permit) => permit,
                            Err(_) => return,
                        },
                    };
                    self.count_claim(&delivery);
                    let this = self.clone();
                    let (node, token) = (node.clone(), token);
                    tokio::spawn(async move {
                        this.deliver(delivery.notification, &node, token).await;
                        drop(permit);
                    });
                }
                if !full {
                    break;
                }
            }
        }
    }

    /// Claims made before this are lapsed: longer ago than one attempt can
    /// take (the receiver's timeout, the subscription's read, an SMTP
    /// exchange), so their node lost track of them.
    fn stale_claims_before(&self) -> i64 {
        let longest = self.inner.config.timeout
            + self.inner.system.runtime_config().ask_timeout
            + Duration::from_secs(90);
        unix_millis().saturating_sub(longest.as_millis() as i64)
    }

    fn count_claim(&self, delivery: &ClaimedDelivery) {
        let metrics = &self.inner.metrics;
        metrics.claimed.inc();
        if let Some(from) = &delivery.taken_from {
            metrics.takeovers.inc();
            tracing::info!(notification = %delivery.notification.id, from = %from,
                "notifier: took over a delivery whose node's lease ended");
        }
    }

    /// Reads the subscriptions (what the outbox keeps
    /// follows them), and the outbox's depth and age for the metrics.
    async fn housekeeping(self) {
        let mut subscriptions = tokio::time::interval(SUBSCRIPTIONS_CHECK);
        let mut stats = tokio::time::interval(STATS_EVERY);
        for timer in [&mut subscriptions, &mut stats] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let store = self.inner.store.clone();
        loop {
            tokio::select! {
                _ = subscriptions.tick() => {
                    if let Err(error) = self.refresh_wanted().await {
                        tracing::warn!(%error, "notifier: cannot read the subscriptions");
                    }
                }
                _ = stats.tick() => match store.outbox_stats().await {
                    Ok(stats) => self.inner.metrics.observe(&stats, unix_millis()),
                    Err(error) => tracing::warn!(%error, "notifier: cannot read the outbox's depth"),
                },
            }
        }
    }

    /// One attempt at a claimed notification, logged; the notification is
    /// then released: delivered, dead, or pending until its next due time.
    async fn deliver(self, notification: Notification, node: &str, token: i64) {
        let config = &self.inner.config;
        let budget = i64::from(config.max_attempts);
        let last = if notification.attempt_limit > 0 {
            notification.attempt_limit
        } else {
            budget
        };
        let attempt = notification.attempts + 1;
        let subscription = self
            .inner
            .system
            .agent_by_key::<crate::notifier::Notifier>(notification.subscription_id.clone())
            .ask(
                crate::notifier::NotifierMsg::Get,
                self.inner.system.runtime_config().ask_timeout,
            )
            .await;
        // While spans are exported, each attempt is a span in the trace of
        // the change that raised the event; its `traceparent` goes along.
        let span = if valueverse_runtime::propagating() {
            let span = tracing::info_span!(
                "notify",
                otel.name = %format_args!("notify {}", notification.event_type),
                otel.kind = "client",
                otel.status_code = tracing::field::Empty,
                event_type = %notification.event_type,
                delivery = %notification.id,
                subscription = %notification.subscription_id,
                tenant = valueverse_runtime::split_key(&notification.subscription_id).0,
                attempt,
                http.response.status_code = tracing::field::Empty,
                outcome = tracing::field::Empty,
            );
            if let Some(parent) = notification
                .trace_context
                .as_deref()
                .and_then(TraceContext::decode)
            {
                parent.adopt(&span);
            }
            span
        } else {
            tracing::Span::none()
        };
        let outcome = match &subscription {
            Ok(subscription) if subscription.status == SubscriptionStatus::Active => {
                self.attempt(&subscription.channel, &notification)
                    .instrument(span.clone())
                    .await
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
        span.record("outcome", label);
        if let Some(status) = outcome.http_status {
            span.record("http.response.status_code", status);
        }
        if !outcome.success {
            span.record("otel.status_code", "ERROR");
        }
        drop(span);
        let now = unix_millis();
        // Retries count from the start of this budget (a redelivery starts
        // its backoff over).
        let retry = attempt - (last - budget).max(0);
        let due_at_ms = if status == "pending" {
            now.saturating_add(self.backoff(retry).as_millis() as i64)
        } else {
            now
        };
        let record = Attempt {
            id: uuid::Uuid::now_v7().to_string(),
            notification_id: notification.id.clone(),
            attempt,
            outcome: label.into(),
            http_status: outcome.http_status,
            latency_ms: outcome.latency_ms,
            error: outcome.error.clone(),
            at_ms: now,
        };
        let claimant = Claimant { node, token };
        let store = &self.inner.store;
        for retry in 1..=RECORD_ATTEMPTS {
            match store
                .record_attempt(&record, status, due_at_ms, claimant)
                .await
            {
                Ok(true) => break,
                Ok(false) => {
                    tracing::warn!(notification = %notification.id,
                        "notifier: the claim was taken over while an attempt ran; the new holder goes on");
                    break;
                }
                Err(error) if retry == RECORD_ATTEMPTS => {
                    // The claim stays with this node until its lease ends
                    // or it restarts; then another attempt is made.
                    tracing::error!(%error, notification = %notification.id, "notifier: cannot log an attempt");
                }
                Err(_) => tokio::time::sleep(STORE_RETRY * retry).await,
            }
        }
        if status == "dead" {
            tracing::warn!(notification = %notification.id, attempts = attempt,
                error = ?outcome.error, "notifier: dead-lettered");
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
                let mut request = self
                    .inner
                    .client
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(SIGNATURE_HEADER, signature)
                    .header("ValueVerse-Event", &notification.event_type)
                    .header("ValueVerse-Delivery", &notification.id);
                // The attempt's span (W3C trace context): the receiver's
                // spans join the trace.
                if let Some(trace) = TraceContext::current() {
                    let (parent, state) = trace.headers();
                    request = request.header("traceparent", parent);
                    if let Some(state) = state {
                        request = request.header("tracestate", state);
                    }
                }
                let sent = request.body(notification.payload.clone()).send().await;
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

/// The subscriptions among stored bodies (one that cannot be read is
/// skipped, as the agent would refuse it).
fn parse_subscriptions(bodies: &[String]) -> Vec<Subscription> {
    bodies
        .iter()
        .filter_map(|body| serde_json::from_str(body).ok())
        .collect()
}
