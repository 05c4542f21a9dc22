//! What one caller may take of a node: a request rate per API key (and per
//! address for requests without a valid key), requests in flight per key,
//! WebSockets per key and per address, and a deadline on request bodies.
//! Every map here is bounded: entries go with their last use (the rate
//! limiters are swept) or with the guard that made them.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use actix_web::HttpMessage;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{Error, web};
use dashmap::DashMap;
use futures_util::StreamExt;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};

use valueverse_agents::auth::ApiKeys;

use super::error::ApiError;

/// What one caller may take of a node: request rates, requests and
/// WebSockets at once, connections, and how long a body may take. The
/// defaults fit one node serving a few dozen clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per second one API key may make (then 429 with
    /// `Retry-After`).
    pub requests_per_second: u32,
    /// Requests a key may make at once above its rate.
    pub burst: u32,
    /// Requests per second from one address without a valid key (each
    /// unknown key costs a store lookup).
    pub unauthenticated_per_second: u32,
    /// Requests of one key being handled at once.
    pub in_flight_per_key: u32,
    /// Open HTTP connections, all workers together (below the process's
    /// open-file limit).
    pub max_connections: usize,
    /// Time a request's body may take to arrive in full (then 408).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// How long a key's role is trusted without asking the store again:
    /// a key revoked on another node is refused, and its WebSockets
    /// closed, within this time.
    #[serde(with = "humantime_serde")]
    pub key_cache_ttl: Duration,
    /// Unknown keys remembered (each would otherwise be a store lookup).
    pub unknown_keys_cached: usize,
    /// WebSockets one key may hold open.
    pub websockets_per_key: u32,
    /// WebSockets one address may hold open.
    pub websockets_per_address: u32,
    /// The server pings each WebSocket this often ...
    #[serde(with = "humantime_serde")]
    pub websocket_ping: Duration,
    /// ... and closes one it has heard nothing from for this long.
    #[serde(with = "humantime_serde")]
    pub websocket_idle: Duration,
    /// Versions one value model keeps (all of them are one stored row,
    /// rewritten on each change); a change past it is refused with 409.
    pub model_versions: usize,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            requests_per_second: 50,
            burst: 100,
            unauthenticated_per_second: 10,
            in_flight_per_key: 32,
            max_connections: 4096,
            body_read_timeout: Duration::from_secs(10),
            key_cache_ttl: Duration::from_secs(2),
            unknown_keys_cached: 4096,
            websockets_per_key: 32,
            websockets_per_address: 64,
            websocket_ping: Duration::from_secs(10),
            websocket_idle: Duration::from_secs(30),
            model_versions: 100,
        }
    }
}

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

/// Addresses the unauthenticated limiter tracks at once; past it, requests
/// without a valid key from new addresses wait for the next sweep.
const MAX_ADDRESSES: usize = 100_000;

/// The limits of one node and what each caller holds of them.
pub(crate) struct Limits {
    pub config: LimitsConfig,
    /// Largest request body (`http_body_limit`).
    body_limit: usize,
    per_key: Keyed<String>,
    per_address: Keyed<IpAddr>,
    in_flight: DashMap<String, u32>,
    /// Store lookups of keys not in the cache, at once: they share the pool
    /// that renews the node's lease.
    lookups: Semaphore,
    sockets_by_key: DashMap<String, KeySockets>,
    sockets_by_address: DashMap<IpAddr, u32>,
}

/// A key's open WebSockets and the signal that closes them.
struct KeySockets {
    open: u32,
    revoked: watch::Sender<bool>,
}

fn quota(per_second: u32, burst: u32) -> Quota {
    let per_second = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(per_second.get())).unwrap_or(per_second);
    Quota::per_second(per_second).allow_burst(burst)
}

/// The address a caller counts against: its IP, or for IPv6 its /64 (one
/// host may own a whole /64).
pub(crate) fn address_group(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

fn too_many(message: String, retry_after: Duration) -> ApiError {
    let seconds = u32::try_from(retry_after.as_secs()).unwrap_or(u32::MAX);
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        .retry_after(seconds.saturating_add(1))
}

impl Limits {
    pub fn new(config: LimitsConfig, lookups: usize, body_limit: usize) -> Limits {
        Limits {
            body_limit,
            per_key: RateLimiter::keyed(quota(config.requests_per_second, config.burst)),
            per_address: RateLimiter::keyed(quota(
                config.unauthenticated_per_second,
                config.unauthenticated_per_second.saturating_mul(2),
            )),
            in_flight: DashMap::new(),
            lookups: Semaphore::new(lookups.max(1)),
            sockets_by_key: DashMap::new(),
            sockets_by_address: DashMap::new(),
            config,
        }
    }

    /// 429 when the key has spent its rate.
    pub fn check_key_rate(&self, key_id: &str) -> Result<(), ApiError> {
        self.per_key
            .check_key(&key_id.to_owned())
            .map_err(|not_until| {
                too_many(
                    format!(
                        "this API key may make {} requests a second",
                        self.config.requests_per_second
                    ),
                    not_until.wait_time_from(DefaultClock::default().now()),
                )
            })
    }

    /// Counts a request without a valid key, or with a key never seen,
    /// against its address (before any store lookup); 429 when they come
    /// too fast. A live key seen before is never paced by its address.
    pub fn charge_address(&self, address: Option<IpAddr>) -> Result<(), ApiError> {
        let group = address.map_or(IpAddr::from([0, 0, 0, 0]), address_group);
        // A full table (100,000 addresses or /64s seen within a sweep)
        // makes every request without a valid key wait: live keys never do.
        if self.per_address.len() >= MAX_ADDRESSES {
            return Err(self.paced_error(Duration::from_secs(10)));
        }
        self.per_address.check_key(&group).map_err(|not_until| {
            self.paced_error(not_until.wait_time_from(DefaultClock::default().now()))
        })
    }

    fn paced_error(&self, retry_after: Duration) -> ApiError {
        too_many(
            format!(
                "requests without a valid API key are limited to {} a second per address",
                self.config.unauthenticated_per_second
            ),
            retry_after,
        )
    }

    /// A place for one store lookup of a key (waiting up to a second), or
    /// 503 when the lookups already running would starve the pool.
    pub async fn lookup_permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        match tokio::time::timeout(Duration::from_secs(1), self.lookups.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many API keys are being checked at once; try again",
            )
            .retry_after(1)),
        }
    }

    /// Holds one of the key's places for requests in flight, or 429.
    pub fn enter(self: &Arc<Self>, key_id: &str) -> Result<InFlight, ApiError> {
        let cap = self.config.in_flight_per_key;
        let mut count = self.in_flight.entry(key_id.to_owned()).or_insert(0);
        if *count >= cap {
            return Err(too_many(
                format!("this API key has {cap} requests in flight already"),
                Duration::ZERO,
            ));
        }
        *count += 1;
        Ok(InFlight {
            limits: Arc::downgrade(self),
            key_id: key_id.to_owned(),
        })
    }

    /// Holds a WebSocket place of the key and of the address, or 429.
    pub fn open_socket(
        self: &Arc<Self>,
        key_id: &str,
        address: Option<IpAddr>,
    ) -> Result<SocketTicket, ApiError> {
        let group = address.map(address_group);
        let per_address = self.config.websockets_per_address;
        if let Some(group) = group {
            let mut open = self.sockets_by_address.entry(group).or_insert(0);
            if *open >= per_address {
                return Err(too_many(
                    format!("this address holds {per_address} WebSockets already"),
                    Duration::ZERO,
                ));
            }
            *open += 1;
        }
        let per_key = self.config.websockets_per_key;
        let mut sockets = self
            .sockets_by_key
            .entry(key_id.to_owned())
            .or_insert_with(|| KeySockets {
                open: 0,
                revoked: watch::Sender::new(false),
            });
        if sockets.open >= per_key {
            drop(sockets);
            if let Some(group) = group {
                self.release_address(group);
            }
            return Err(too_many(
                format!("this API key holds {per_key} WebSockets already"),
                Duration::ZERO,
            ));
        }
        sockets.open += 1;
        let revoked = sockets.revoked.subscribe();
        Ok(SocketTicket {
            limits: Arc::downgrade(self),
            key_id: key_id.to_owned(),
            group,
            revoked,
            ping: self.config.websocket_ping,
            idle: self.config.websocket_idle,
            ends_at: None,
        })
    }

    fn release_address(&self, group: IpAddr) {
        if let dashmap::Entry::Occupied(mut open) = self.sockets_by_address.entry(group) {
            *open.get_mut() = open.get().saturating_sub(1);
            if *open.get() == 0 {
                open.remove();
            }
        }
    }

    fn release_key_socket(&self, key_id: &str) {
        if let dashmap::Entry::Occupied(mut sockets) = self.sockets_by_key.entry(key_id.to_owned())
        {
            sockets.get_mut().open = sockets.get().open.saturating_sub(1);
            if sockets.get().open == 0 {
                sockets.remove();
            }
        }
    }

    /// Closes the open WebSockets of a key.
    pub fn close_sockets_of(&self, key_id: &str) {
        if let Some(sockets) = self.sockets_by_key.get(key_id) {
            sockets.revoked.send_replace(true);
        }
    }

    /// Closes the WebSockets of keys revoked anywhere in the cluster and
    /// forgets rate state of callers gone quiet.
    async fn sweep(&self, api_keys: &ApiKeys) {
        self.per_key.retain_recent();
        self.per_address.retain_recent();
        self.per_key.shrink_to_fit();
        self.per_address.shrink_to_fit();
        if self.sockets_by_key.is_empty() {
            return;
        }
        let live = match api_keys.live_ids().await {
            Ok(live) => live,
            Err(error) => {
                tracing::warn!(%error, "http: could not check the keys of open WebSockets");
                return;
            }
        };
        for sockets in &self.sockets_by_key {
            // `dev` is the one caller of a node that checks no keys; a
            // person's socket lives by its token, not by a key.
            let person = sockets.key().starts_with("oidc:");
            if sockets.key() != DEV_CALLER && !person && !live.contains(sockets.key().as_str()) {
                sockets.revoked.send_replace(true);
            }
        }
    }
}

/// The caller of a node run with `--dev`.
pub(crate) const DEV_CALLER: &str = "dev";

/// Sweeps `limits` every `every` until it is dropped.
pub(crate) fn sweep_while_alive(
    limits: Weak<Limits>,
    api_keys: ApiKeys,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(limits) = limits.upgrade() else {
                return;
            };
            limits.sweep(&api_keys).await;
        }
    })
}

/// One of a key's places for requests in flight, given back on drop.
pub(crate) struct InFlight {
    limits: Weak<Limits>,
    key_id: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(limits) = self.limits.upgrade()
            && let dashmap::Entry::Occupied(mut count) =
                limits.in_flight.entry(std::mem::take(&mut self.key_id))
        {
            *count.get_mut() = count.get().saturating_sub(1);
            if *count.get() == 0 {
                count.remove();
            }
        }
    }
}

/// A WebSocket's places (of its key and its address), given back when the
/// socket ends; says when its key is revoked and how the socket is kept.
pub(crate) struct SocketTicket {
    limits: Weak<Limits>,
    key_id: String,
    group: Option<IpAddr>,
    /// Becomes `true` when the key is revoked.
    pub revoked: watch::Receiver<bool>,
    /// How often the server pings.
    pub ping: Duration,
    /// Silence from the client after which the socket is closed.
    pub idle: Duration,
    /// When a person's sign-in (their token) ends: the socket closes then.
    pub ends_at: Option<std::time::Instant>,
}

impl Drop for SocketTicket {
    fn drop(&mut self) {
        if let Some(limits) = self.limits.upgrade() {
            limits.release_key_socket(&self.key_id);
            if let Some(group) = self.group {
                limits.release_address(group);
            }
        }
    }
}

/// The import of deliveries, whose body is a customer's file.
pub(crate) const IMPORT_ROUTE: &str = "/api/v1/plans/{id}/deliveries:import";

/// Largest file an import takes (its rows are bounded too:
/// `[value] import_max_rows`).
pub(crate) const IMPORT_BODY_LIMIT: usize = 32 << 20;

/// Reads a request's body within `limits.body_read_timeout` (408 past it)
/// before the handler runs, so that a body trickled in byte by byte holds
/// no worker, buffer or place in flight for long. WebSocket upgrades, whose
/// payload is the socket itself, pass untouched.
pub(crate) async fn read_body_in_time(
    mut request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<actix_web::body::EitherBody<impl MessageBody>>, Error> {
    let limits = request.app_data::<web::Data<Limits>>().cloned();
    // Only a WebSocket route's GET skips the deadline (its payload is the
    // socket); an `Upgrade` header on anything else changes nothing.
    let socket = request.method() == actix_web::http::Method::GET
        && super::middleware::matched_route(&request).starts_with("/ws/");
    let Some(limits) = limits.filter(|_| !socket) else {
        return Ok(next.call(request).await?.map_into_left_body());
    };
    let refuse = |request: ServiceRequest, error: ApiError| {
        let (request, _) = request.into_parts();
        let mut response = actix_web::ResponseError::error_response(&error);
        // The rest of the body is not read: the connection cannot be reused.
        response
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
        Ok(ServiceResponse::new(request, response).map_into_right_body())
    };
    let (timeout, mut body_limit) = (limits.config.body_read_timeout, limits.body_limit);
    // A customer's file of deliveries may be larger than any JSON body.
    if request.method() == actix_web::http::Method::POST
        && request
            .match_pattern()
            .is_some_and(|pattern| pattern == IMPORT_ROUTE)
    {
        body_limit = body_limit.max(IMPORT_BODY_LIMIT);
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("a request body is at most {body_limit} bytes"),
        )
    };
    // A body announced too large is refused before a byte of it is read.
    let announced = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|length| length > body_limit as u64) {
        return refuse(request, too_large());
    }
    let mut payload = request.take_payload();
    let read = async {
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|error| {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_body", error.to_string())
            })?;
            if body.len() + chunk.len() > body_limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(body)) => {
            request.set_payload(actix_web::dev::Payload::from(body));
            Ok(next.call(request).await?.map_into_left_body())
        }
        Ok(Err(error)) => refuse(request, error),
        Err(_) => refuse(
            request,
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {}",
                    humantime::format_duration(timeout)
                ),
            ),
        ),
    }
}

/// Where the caller of a request counts: its peer address.
pub(crate) fn peer_address(request: &ServiceRequest) -> Option<IpAddr> {
    request.peer_addr().map(|address| address.ip())
}

/// Attaches the ticket of a WebSocket request, for [`super::ws::relay`].
pub(crate) fn attach_ticket(request: &ServiceRequest, ticket: SocketTicket) {
    request
        .extensions_mut()
        .insert(Arc::new(std::sync::Mutex::new(Some(ticket))));
}

/// Takes the ticket [`attach_ticket`] left on a WebSocket request.
pub(crate) fn take_ticket(request: &actix_web::HttpRequest) -> Option<SocketTicket> {
    request
        .extensions()
        .get::<Arc<std::sync::Mutex<Option<SocketTicket>>>>()
        .and_then(|slot| slot.lock().ok()?.take())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Arc<Limits> {
        Arc::new(Limits::new(
            LimitsConfig {
                requests_per_second: 2,
                burst: 3,
                in_flight_per_key: 2,
                websockets_per_key: 2,
                websockets_per_address: 3,
                ..LimitsConfig::default()
            },
            1,
            1 << 20,
        ))
    }

    #[test]
    fn a_key_past_its_burst_is_told_when_to_come_back() {
        let limits = limits();
        for _ in 0..3 {
            limits.check_key_rate("a").unwrap();
        }
        let refused = limits.check_key_rate("a").unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.retry_after.is_some_and(|seconds| seconds >= 1));
        limits
            .check_key_rate("b")
            .expect("another key has its own rate");
    }

    #[test]
    fn places_in_flight_come_back_when_dropped() {
        let limits = limits();
        let first = limits.enter("a").unwrap();
        let _second = limits.enter("a").unwrap();
        assert!(limits.enter("a").is_err());
        limits.enter("b").expect("another key has its own places");
        drop(first);
        let _third = limits.enter("a").expect("a place came back");
        drop(_third);
        drop(_second);
        assert!(limits.in_flight.is_empty(), "no entry outlives its guards");
    }

    #[test]
    fn sockets_are_capped_per_key_and_per_address_and_revocable() {
        let limits = limits();
        let here = Some(IpAddr::from([10, 0, 0, 1]));
        let one = limits.open_socket("a", here).unwrap();
        let _two = limits.open_socket("a", here).unwrap();
        assert!(limits.open_socket("a", here).is_err(), "per key");
        let _three = limits.open_socket("b", here).unwrap();
        assert!(limits.open_socket("c", here).is_err(), "per address");
        limits
            .open_socket("c", Some(IpAddr::from([10, 0, 0, 2])))
            .expect("another address");
        assert!(!*one.revoked.borrow());
        limits.close_sockets_of("a");
        assert!(*one.revoked.borrow(), "revoking the key closes its sockets");
    }

    #[test]
    fn ipv6_callers_count_per_64() {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        assert_eq!(address_group(a), address_group(b));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_group(mapped), IpAddr::from([10, 0, 0, 1]));
    }
}
