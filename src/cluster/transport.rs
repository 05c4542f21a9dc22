//! TCP links between nodes. A link is one connection, used both ways,
//! inside the Noise channel of [`super::channel`]: the cluster secret's
//! link key authenticates and encrypts every byte, and the encrypted
//! hellos carry each side's name, listen address and protocol version.
//! Senders encode their frame straight into the link's outbox, a byte
//! buffer bounded in size (a full outbox makes senders wait:
//! backpressure, never unbounded memory), and a writer task seals
//! whatever gathered while it wrote into records and sends them in one
//! write (batching).
//!
//! Nothing is trusted before the handshake ends: handshake messages are
//! capped at [`channel::MAX_HANDSHAKE_BYTES`] and read into fixed buffers,
//! connections still in their handshake are capped per node and per
//! source address, and each has [`HANDSHAKE_TIMEOUT`] to finish. A peer
//! that sends garbage, an oversized frame, a bad record or a bad
//! handshake loses its connection, and nothing else does.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};

use super::channel::{self, ChannelError, Hello, Opener, Sealer};
use super::codec::{
    self, CodecError, Envelope, Frame, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, RemoteFailure, Reply,
};

/// Time a peer has, from its connection, to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Time a dial has to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections in their handshake at once, from anyone.
pub const MAX_HANDSHAKES: usize = 64;
/// Connections in their handshake at once from one source address.
pub const MAX_HANDSHAKES_PER_SOURCE: usize = 8;
/// Bytes the writer gathers before it writes.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// Bytes a link's reader asks for at a time.
const READ_BYTES: usize = 64 * 1024;
/// First and longest wait before dialing an address that failed again.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Senders waiting for the dial to one address; past this a message to
/// that peer is refused, not queued (one unreachable peer cannot hold up
/// the dials to the others).
const MAX_DIAL_WAITERS: u64 = 1024;
/// Room replies may take past the outbox's limit: a reply never waits
/// (it is sent from a handler's thread), and past this it is dropped.
const REPLY_HEADROOM_BYTES: usize = 1 << 20;
/// One refusal logged per source address per this long.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Longest node name a hello may carry.
const MAX_NODE_NAME: usize = 128;

/// Who this node is on the wire.
#[derive(Clone)]
pub struct TransportConfig {
    /// The node's name, as peers log it.
    pub node: String,
    /// The shared cluster secret.
    pub secret: Vec<u8>,
    /// Encoded bytes waiting per link before senders wait (a frame is
    /// always taken when the outbox is below this, whatever its size).
    pub queue_bytes: usize,
    /// The address peers dial, when it is not the one bound (a wildcard
    /// bind, a container's name).
    pub advertise: Option<SocketAddr>,
    /// The highest protocol version this node offers: [`PROTOCOL_VERSION`]
    /// unless pinned lower (a node that plays the release before, in tests).
    pub max_version: u16,
    /// `(message id, version)` of each agent kind this node hosts, told to
    /// peers so that they send what it reads.
    pub messages: Vec<(u32, u16)>,
}

impl TransportConfig {
    /// A node's config with an outbox of 4 MiB per link.
    pub fn new(node: &str, secret: &[u8]) -> TransportConfig {
        TransportConfig {
            node: node.to_owned(),
            secret: secret.to_vec(),
            queue_bytes: 4 << 20,
            advertise: None,
            max_version: PROTOCOL_VERSION,
            messages: Vec::new(),
        }
    }
}

impl std::fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportConfig")
            .field("node", &self.node)
            .field("secret", &"***")
            .field("queue_bytes", &self.queue_bytes)
            .finish()
    }
}

/// Why a link could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} failed recently; next try in {retry_in:?}")]
    Backoff {
        addr: SocketAddr,
        retry_in: Duration,
    },
    #[error("too many senders wait for links to open")]
    Busy,
    #[error("handshake with {peer} failed: {reason}")]
    Handshake { peer: String, reason: String },
    #[error("the link to {peer} is closed")]
    Closed { peer: String },
    #[error("no reply from {peer} within {timeout:?}")]
    Timeout { peer: String, timeout: Duration },
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// What the node does with the messages of one link, on the link's reader
/// task; `link` answers on the same connection. A [`Hold`] it returns is
/// awaited before the link's next frame is read: a receiver that cannot
/// take a message yet (a full mailbox) stops reading, TCP fills, and the
/// sender's outbox pushes back.
pub trait Receiver: Send {
    /// One message. The receiver may deliver it now, or stage it until
    /// [`Receiver::flush`].
    fn take(&mut self, link: &Link, envelope: Envelope<'_>) -> Option<Hold>;

    /// Every frame read so far has been taken: deliver what was staged.
    /// Called before the reader waits for more bytes.
    fn flush(&mut self) -> Option<Hold> {
        None
    }
}

/// Makes the [`Receiver`] of each link.
pub type Inbound = Arc<dyn Fn() -> Box<dyn Receiver> + Send + Sync>;

/// An [`Inbound`] that hands every message to `handler` as it comes.
pub fn each(
    handler: impl Fn(&Link, Envelope<'_>) -> Option<Hold> + Send + Sync + 'static,
) -> Inbound {
    let handler: Arc<Handler> = Arc::new(handler);
    Arc::new(move || Box::new(Each(Arc::clone(&handler))))
}

type Handler = dyn Fn(&Link, Envelope<'_>) -> Option<Hold> + Send + Sync;

struct Each(Arc<Handler>);

impl Receiver for Each {
    fn take(&mut self, link: &Link, envelope: Envelope<'_>) -> Option<Hold> {
        (self.0)(link, envelope)
    }
}

/// See [`Inbound`].
pub type Hold = futures_util::future::BoxFuture<'static, ()>;

/// Asks waiting for their reply, by ask id, each with the link it went
/// out on: only that link may answer it, and a link that closes fails its
/// asks at once instead of leaving them to their timeouts.
type Waiting = HashMap<u64, (Arc<str>, oneshot::Sender<Result<Vec<u8>, RemoteFailure>>)>;

/// Frames encoded and waiting for the writer.
struct Outbox {
    bytes: Mutex<Vec<u8>>,
    /// The link's protocol version: how its frames are laid out.
    version: u16,
    limit: usize,
    closed: AtomicBool,
    /// Wakes the writer when bytes arrive.
    filled: Notify,
    /// Wakes senders when the writer took the bytes, or the link closed.
    drained: Notify,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.bytes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.drained.notify_waiters();
    }

    /// Appends `frame` if the outbox holds less than `limit`: `Ok(true)`
    /// taken, `Ok(false)` full.
    fn offer(&self, frame: &Frame<'_>, peer: &str, limit: usize) -> Result<bool, ()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(());
        }
        let mut bytes = self.lock();
        if bytes.len() >= limit {
            return Ok(false);
        }
        let was_empty = bytes.is_empty();
        if let Err(error) = codec::encode_frame(frame, self.version, &mut bytes) {
            tracing::warn!(%peer, %error, "transport: frame not sent");
            return Ok(true);
        }
        drop(bytes);
        if was_empty {
            self.filled.notify_one();
        }
        Ok(true)
    }
}

/// The sending side of one connection.
#[derive(Clone)]
pub struct Link {
    peer: Arc<str>,
    /// The protocol version both ends settled on.
    version: u16,
    /// The peer's message versions, by message id.
    messages: Arc<HashMap<u32, u16>>,
    outbox: Arc<Outbox>,
    replies_dropped: IntCounter,
}

impl Link {
    /// The peer's node name, from its handshake.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The protocol version of the link.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The version of `type_id`'s messages the peer speaks, if it hosts
    /// that kind.
    pub fn peer_version(&self, type_id: u32) -> Option<u16> {
        self.messages.get(&type_id).copied()
    }

    /// Queues a frame, waiting while the link's outbox is full; gives the
    /// frame back when the link is closed, so it can go elsewhere.
    pub async fn send<'a>(&self, frame: Frame<'a>) -> Result<(), Frame<'a>> {
        let limit = self.outbox.limit;
        loop {
            match self.outbox.offer(&frame, &self.peer, limit) {
                Ok(true) => return Ok(()),
                Err(()) => return Err(frame),
                Ok(false) => {}
            }
            // Full: wait for a drain, registered before checking again so
            // that a drain in between is not missed.
            let drained = self.outbox.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            match self.outbox.offer(&frame, &self.peer, limit) {
                Ok(true) => return Ok(()),
                Err(()) => return Err(frame),
                Ok(false) => drained.await,
            }
        }
    }

    /// Queues a frame if the outbox has room now; gives it back otherwise
    /// (for an inbound handler, which must not wait).
    pub fn try_send<'a>(&self, frame: Frame<'a>) -> Result<(), Box<Frame<'a>>> {
        match self.outbox.offer(&frame, &self.peer, self.outbox.limit) {
            Ok(true) => Ok(()),
            Ok(false) | Err(()) => Err(Box::new(frame)),
        }
    }

    /// Queues a reply without waiting: replies may use a fixed headroom
    /// past the outbox's limit (they answer asks the peer is waiting on);
    /// past that, or on a closed link, the reply is dropped, counted, and
    /// the asker times out. Never a task per reply.
    pub fn reply(&self, reply: Reply) {
        let frame = Frame::Reply(reply);
        let limit = self.outbox.limit.saturating_add(REPLY_HEADROOM_BYTES);
        if let Ok(false) = self.outbox.offer(&frame, &self.peer, limit) {
            self.replies_dropped.inc();
            tracing::debug!(peer = %self.peer, "transport: outbox full, a reply dropped");
        }
    }

    pub fn is_closed(&self) -> bool {
        self.outbox.closed.load(Ordering::Acquire)
    }
}

/// Dial backoff of one address.
struct Backoff {
    wait: Duration,
    until: Instant,
}

/// The transport's counters (registered with [`Transport::register`]).
#[derive(Clone)]
struct Metrics {
    refused: IntCounterVec,
    handshakes: IntGauge,
    links: IntGauge,
    replies_dropped: IntCounter,
}

impl Metrics {
    fn new() -> Metrics {
        Metrics {
            refused: IntCounterVec::new(
                Opts::new(
                    "valueverse_transport_refused_total",
                    "Connections the cluster transport refused, by reason (capacity, \
                     too_large, bad_secret, deadline, peer_refused, malformed, io)",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            handshakes: IntGauge::new(
                "valueverse_transport_handshakes",
                "Connections in their handshake (not yet authenticated)",
            )
            .expect("valid metric"),
            links: IntGauge::new("valueverse_transport_links", "Authenticated links open")
                .expect("valid metric"),
            replies_dropped: IntCounter::new(
                "valueverse_transport_replies_dropped_total",
                "Replies dropped because the link's outbox was full past its headroom",
            )
            .expect("valid metric"),
        }
    }
}

/// The source a connection counts against: its address, or for IPv6 its
/// /64 (one host may own a whole /64).
fn source_group(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V4(_) => source,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
    }
}

/// Connections in their handshake, in all and by source address.
#[derive(Default)]
struct Unproven {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// Holds one [`Unproven`] place until dropped.
struct UnprovenPlace {
    inner: Arc<Inner>,
    source: IpAddr,
}

impl Drop for UnprovenPlace {
    fn drop(&mut self) {
        let mut unproven = self.inner.lock_unproven();
        unproven.total -= 1;
        if let Some(count) = unproven.by_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                unproven.by_source.remove(&self.source);
            }
        }
        self.inner.metrics.handshakes.set(unproven.total as i64);
    }
}

/// The dial of one address: its turn, and the senders waiting for it.
#[derive(Default)]
struct DialGate {
    turn: tokio::sync::Mutex<()>,
    waiters: AtomicU64,
}

/// A sender waiting for the dial to an address, counted until dropped
/// (also when its future is cancelled mid-dial); the last one out
/// removes the address's gate.
struct DialWaiter {
    inner: Arc<Inner>,
    addr: SocketAddr,
    gate: Arc<DialGate>,
}

impl DialWaiter {
    /// `None` when as many senders as allowed already wait for `addr`.
    fn new(inner: &Arc<Inner>, addr: SocketAddr) -> Option<DialWaiter> {
        // Counted under the map's lock, as the last one out removes the
        // gate under it: a gate in the map always has its waiters counted.
        let mut dials = inner.lock_dials();
        let gate = Arc::clone(dials.entry(addr).or_default());
        if gate.waiters.load(Ordering::Acquire) >= MAX_DIAL_WAITERS {
            return None;
        }
        gate.waiters.fetch_add(1, Ordering::AcqRel);
        drop(dials);
        Some(DialWaiter {
            inner: Arc::clone(inner),
            addr,
            gate,
        })
    }
}

impl Drop for DialWaiter {
    fn drop(&mut self) {
        let mut dials = self.inner.lock_dials();
        if self.gate.waiters.fetch_sub(1, Ordering::AcqRel) == 1
            && dials
                .get(&self.addr)
                .is_some_and(|gate| Arc::ptr_eq(gate, &self.gate))
        {
            dials.remove(&self.addr);
        }
    }
}

/// An ask waiting for its reply: its entry goes when the ask ends, also
/// when its future is dropped.
struct PendingAsk {
    inner: Arc<Inner>,
    ask_id: u64,
}

impl Drop for PendingAsk {
    fn drop(&mut self) {
        self.inner.lock_pending().remove(&self.ask_id);
    }
}

struct Inner {
    config: TransportConfig,
    link_key: [u8; 32],
    inbound: Inbound,
    links: Mutex<HashMap<SocketAddr, Link>>,
    backoff: Mutex<HashMap<SocketAddr, Backoff>>,
    /// One dial at a time per address: later senders wait for its result.
    dials: Mutex<HashMap<SocketAddr, Arc<DialGate>>>,
    pending: Mutex<Waiting>,
    next_id: AtomicU64,
    listen: SocketAddr,
    /// Connections accepted, handshake or not.
    accepted: AtomicU64,
    unproven: Mutex<Unproven>,
    /// Addresses where proven members listen (from their leases).
    members: std::sync::RwLock<std::collections::HashSet<IpAddr>>,
    /// When a refusal of each kind from each source address was last logged.
    logged: Mutex<HashMap<(IpAddr, &'static str), Instant>>,
    metrics: Metrics,
}

impl Inner {
    fn lock_dials(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<DialGate>>> {
        self.dials.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_unproven(&self) -> std::sync::MutexGuard<'_, Unproven> {
        self.unproven.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a connection from `source` in its handshake, if the
    /// caps allow one. Sources where proven members listen have places
    /// of their own (per source only), so strangers that fill the node's
    /// places do not lock the members out.
    fn admit(self: &Arc<Self>, source: IpAddr) -> Option<UnprovenPlace> {
        let source = source_group(source);
        let member = self
            .members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&source);
        let mut unproven = self.lock_unproven();
        let from_source = unproven.by_source.get(&source).copied().unwrap_or(0);
        if (!member && unproven.total >= MAX_HANDSHAKES) || from_source >= MAX_HANDSHAKES_PER_SOURCE
        {
            return None;
        }
        unproven.total += 1;
        *unproven.by_source.entry(source).or_default() += 1;
        self.metrics.handshakes.set(unproven.total as i64);
        Some(UnprovenPlace {
            inner: Arc::clone(self),
            source,
        })
    }

    /// Counts a refused connection and logs it, once per source address
    /// and reason per [`LOG_EVERY`] (an attacker cannot flood the log).
    fn refused(&self, source: SocketAddr, reason: &'static str, detail: &dyn std::fmt::Display) {
        self.metrics.refused.with_label_values(&[reason]).inc();
        let now = Instant::now();
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.len() >= 1024 {
            logged.retain(|_, at| now.duration_since(*at) < LOG_EVERY);
        }
        let due = logged
            .get(&(source.ip(), reason))
            .is_none_or(|at| now.duration_since(*at) >= LOG_EVERY);
        if due && logged.len() < 1024 {
            logged.insert((source.ip(), reason), now);
            tracing::warn!(%source, reason, %detail, "transport: refused a connection (more like it from this address are counted, not logged, for 10 s)");
        }
    }
}

/// This node's end of the transport: the listener and the links it dialed.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

/// The reason label and text of a failed handshake.
fn handshake_failure(error: &ChannelError) -> &'static str {
    match error {
        ChannelError::HandshakeTooLarge { .. } => "too_large",
        ChannelError::BadSecret | ChannelError::BadRecord => "bad_secret",
        ChannelError::Refused(_) => "peer_refused",
        ChannelError::Malformed(_) => "malformed",
        ChannelError::Late => "deadline",
        ChannelError::Io(_) => "io",
    }
}

/// The protocol version a link between `mine` and `theirs` speaks: the
/// highest both speak (each side works it out alike from the two hellos).
fn negotiated(mine: &Hello, theirs: &Hello) -> Result<u16, String> {
    let version = mine.version.min(theirs.version);
    let lowest = mine.min_version.max(theirs.min_version);
    if version < lowest {
        return Err(format!(
            "no protocol version in common: the peer speaks {}..={}, this node {}..={}",
            theirs.min_version, theirs.version, mine.min_version, mine.version
        ));
    }
    Ok(version)
}

/// Whether a peer's hello may open a link with `me`.
fn vet(me: &Hello, theirs: &Hello) -> Result<(), String> {
    negotiated(me, theirs)?;
    if theirs.messages.len() > channel::MAX_HELLO_MESSAGES {
        return Err(format!(
            "the peer lists {} message kinds, more than {}",
            theirs.messages.len(),
            channel::MAX_HELLO_MESSAGES
        ));
    }
    let me = &me.node;
    if theirs.node == *me {
        return Err(format!("the peer claims this node's own name `{me}`"));
    }
    if theirs.node.is_empty()
        || theirs.node.len() > MAX_NODE_NAME
        || theirs.node.chars().any(char::is_control)
    {
        return Err("the peer's node name is empty, too long or has control characters".into());
    }
    Ok(())
}

impl Transport {
    /// Listens on `addr` and serves peers with `inbound`. Call inside a
    /// tokio runtime.
    pub async fn bind(
        addr: SocketAddr,
        config: TransportConfig,
        inbound: Inbound,
    ) -> std::io::Result<Transport> {
        // Peers refuse a hello listing more kinds: say so here, not there.
        if config.messages.len() > channel::MAX_HELLO_MESSAGES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "this node hosts {} agent kinds; a cluster node may host at most {}",
                    config.messages.len(),
                    channel::MAX_HELLO_MESSAGES
                ),
            ));
        }
        let listener = TcpListener::bind(addr).await?;
        let listen = match config.advertise {
            Some(advertised) => advertised,
            None => listener.local_addr()?,
        };
        let transport = Transport {
            inner: Arc::new(Inner {
                link_key: channel::link_key(&config.secret),
                config,
                inbound,
                links: Mutex::new(HashMap::new()),
                backoff: Mutex::new(HashMap::new()),
                dials: Mutex::new(HashMap::new()),
                pending: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                accepted: AtomicU64::new(0),
                listen,
                unproven: Mutex::new(Unproven::default()),
                members: std::sync::RwLock::new(std::collections::HashSet::new()),
                logged: Mutex::new(HashMap::new()),
                metrics: Metrics::new(),
            }),
        };
        tokio::spawn(transport.clone().accept(listener));
        Ok(transport)
    }

    /// Registers the transport's metrics with `registry`.
    pub fn register(&self, registry: &prometheus::Registry) {
        let metrics = &self.inner.metrics;
        for collector in [
            Box::new(metrics.refused.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.handshakes.clone()),
            Box::new(metrics.links.clone()),
            Box::new(metrics.replies_dropped.clone()),
        ] {
            let _ = registry.register(collector);
        }
    }

    /// The addresses of the proven members (their leases' transport
    /// addresses): connections from them have handshake places of their own.
    pub fn set_members(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let members = addrs
            .into_iter()
            .map(|addr| source_group(addr.ip()))
            .collect();
        *self
            .inner
            .members
            .write()
            .unwrap_or_else(|p| p.into_inner()) = members;
    }

    /// The address peers dial.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.listen
    }

    /// A fresh message or correlation id, unique on this node.
    pub fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    async fn accept(self, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, from)) => {
                    self.inner.accepted.fetch_add(1, Ordering::Relaxed);
                    // Over the caps the connection is closed at once: no
                    // task, no buffer.
                    let Some(place) = self.inner.admit(from.ip()) else {
                        self.inner
                            .refused(from, "capacity", &"too many handshakes in progress");
                        drop(stream);
                        continue;
                    };
                    let this = self.clone();
                    tokio::spawn(async move {
                        let _ = this.open(stream, from, true, Some(place)).await;
                    });
                }
                Err(error) => {
                    // Out of descriptors, say: wait rather than spin.
                    tracing::warn!(%error, "transport: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Forgets the failures of dials to `addr`: the next dial is at once
    /// (a node that is back, as its new lease says).
    pub fn forget_failures(&self, addr: SocketAddr) {
        self.lock_backoff().remove(&addr);
    }

    /// Whether as many senders as allowed already wait for a dial to
    /// `addr`: a message for it is then refused, not queued.
    pub fn dialing_is_busy(&self, addr: SocketAddr) -> bool {
        self.lock_dials()
            .get(&addr)
            .is_some_and(|gate| gate.waiters.load(Ordering::Acquire) >= MAX_DIAL_WAITERS)
    }

    /// The open link to `addr`, if there is one; never dials.
    pub fn open_link(&self, addr: SocketAddr) -> Option<Link> {
        self.lock_links()
            .get(&addr)
            .filter(|link| !link.is_closed())
            .cloned()
    }

    /// The link to the node listening at `addr`: the open one, or a new
    /// connection and handshake. One dial per address at a time: senders
    /// that come meanwhile wait for it and share its link, or its failure
    /// (as a backoff).
    pub async fn link(&self, addr: SocketAddr) -> Result<Link, LinkError> {
        if let Some(link) = self.open_link(addr) {
            return Ok(link);
        }
        // Counted out again when this future ends, finished or dropped.
        let waiter = DialWaiter::new(&self.inner, addr).ok_or(LinkError::Busy)?;
        let _turn = waiter.gate.turn.lock().await;
        if let Some(link) = self.open_link(addr) {
            return Ok(link);
        }
        if let Some(backoff) = self.lock_backoff().get(&addr) {
            let now = Instant::now();
            if backoff.until > now {
                return Err(LinkError::Backoff {
                    addr,
                    retry_in: backoff.until - now,
                });
            }
        }
        self.dial(addr).await
    }

    async fn dial(&self, addr: SocketAddr) -> Result<Link, LinkError> {
        let dialed = async {
            let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await
            {
                Ok(connected) => connected.map_err(|source| LinkError::Connect { addr, source })?,
                Err(_) => {
                    return Err(LinkError::Connect {
                        addr,
                        source: std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no connection within {CONNECT_TIMEOUT:?}"),
                        ),
                    });
                }
            };
            self.open(stream, addr, false, None).await
        }
        .await;
        match dialed {
            Ok(link) => {
                self.lock_backoff().remove(&addr);
                let mut links = self.lock_links();
                // A link the peer opened meanwhile: the first link in stays.
                let link = links
                    .entry(addr)
                    .and_modify(|open| {
                        if open.is_closed() {
                            *open = link.clone();
                        }
                    })
                    .or_insert(link)
                    .clone();
                Ok(link)
            }
            Err(error) => {
                let mut backoff = self.lock_backoff();
                let wait = backoff
                    .get(&addr)
                    .map(|last| (last.wait * 2).min(BACKOFF_MAX))
                    .unwrap_or(BACKOFF_FIRST);
                backoff.insert(
                    addr,
                    Backoff {
                        wait,
                        until: Instant::now() + wait,
                    },
                );
                Err(error)
            }
        }
    }

    /// Sends `envelope` and waits for the reply to its ask id, which only
    /// the link it went out on may give.
    pub async fn ask(
        &self,
        addr: SocketAddr,
        envelope: Envelope<'_>,
        timeout: Duration,
    ) -> Result<Result<Vec<u8>, RemoteFailure>, LinkError> {
        let link = self.link(addr).await?;
        self.ask_on(&link, envelope, timeout).await
    }

    /// [`Transport::ask`] on a link already open (the one the envelope was
    /// laid out for); `timeout` bounds the wait for room in its outbox and
    /// for the reply together.
    pub async fn ask_on(
        &self,
        link: &Link,
        mut envelope: Envelope<'_>,
        timeout: Duration,
    ) -> Result<Result<Vec<u8>, RemoteFailure>, LinkError> {
        let ask_id = self.next_id();
        envelope.ask_id = Some(ask_id);
        let (reply, answer) = oneshot::channel();
        self.lock_pending()
            .insert(ask_id, (Arc::clone(&link.peer), reply));
        let _pending = PendingAsk {
            inner: Arc::clone(&self.inner),
            ask_id,
        };
        let exchange = async {
            link.send(Frame::Message(envelope))
                .await
                .map_err(|_| LinkError::Closed {
                    peer: link.peer().to_owned(),
                })?;
            answer.await.map_err(|_| LinkError::Closed {
                peer: link.peer().to_owned(),
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(outcome) => outcome,
            Err(_) => Err(LinkError::Timeout {
                peer: link.peer().to_owned(),
                timeout,
            }),
        }
    }

    /// The handshake on a fresh connection (either side, within
    /// [`HANDSHAKE_TIMEOUT`]), then the link's writer and reader tasks.
    /// `place` is the accepted connection's place among the unproven: it
    /// is given back when the handshake ends, either way.
    async fn open(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        accepted: bool,
        place: Option<UnprovenPlace>,
    ) -> Result<Link, LinkError> {
        stream.set_nodelay(true).map_err(CodecError::Io)?;
        let (mut reader, mut writer) = stream.into_split();
        let config = &self.inner.config;
        let me = Hello {
            version: config.max_version,
            node: config.node.clone(),
            listen: self.inner.listen,
            min_version: MIN_PROTOCOL_VERSION.min(config.max_version),
            messages: config.messages.clone(),
        };
        let key = &self.inner.link_key;
        let check = |theirs: &Hello| vet(&me, theirs);
        let shake = async {
            if accepted {
                channel::respond(&mut reader, &mut writer, key, &me, check).await
            } else {
                channel::initiate(&mut reader, &mut writer, key, &me, check).await
            }
        };
        let shaken = tokio::time::timeout(HANDSHAKE_TIMEOUT, shake).await;
        drop(place);
        let (theirs, sealer, opener) = match shaken {
            Ok(Ok(shaken)) => shaken,
            Ok(Err(error)) => {
                if accepted {
                    self.inner.refused(addr, handshake_failure(&error), &error);
                } else {
                    tracing::warn!(%addr, %error, "transport: handshake failed");
                }
                let _ = writer.shutdown().await;
                return Err(LinkError::Handshake {
                    peer: addr.to_string(),
                    reason: error.to_string(),
                });
            }
            Err(_) => {
                let reason = format!("no handshake within {HANDSHAKE_TIMEOUT:?}");
                if accepted {
                    self.inner.refused(addr, "deadline", &reason);
                }
                return Err(LinkError::Handshake {
                    peer: addr.to_string(),
                    reason,
                });
            }
        };
        // Vetted already: the two hellos have a version in common.
        let version = negotiated(&me, &theirs).unwrap_or(MIN_PROTOCOL_VERSION);
        let peer = theirs.node;
        tracing::info!(peer = %peer, %addr, version, "transport: link open");
        self.inner.metrics.links.inc();
        let link = Link {
            peer: peer.into(),
            version,
            messages: Arc::new(theirs.messages.into_iter().collect()),
            outbox: Arc::new(Outbox {
                bytes: Mutex::new(Vec::with_capacity(WRITE_BATCH_BYTES)),
                version,
                limit: self.inner.config.queue_bytes.max(1),
                closed: AtomicBool::new(false),
                filled: Notify::new(),
                drained: Notify::new(),
            }),
            replies_dropped: self.inner.metrics.replies_dropped.clone(),
        };
        // The reader's end stops the writer, which closes the connection.
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(write_frames(
            link.outbox.clone(),
            writer,
            sealer,
            stopped,
            link.peer.clone(),
        ));
        tokio::spawn(self.clone().read_frames(reader, opener, link.clone(), stop));
        if accepted {
            // Messages to the peer reuse its connection rather than dial back.
            self.lock_links()
                .entry(theirs.listen)
                .and_modify(|open| {
                    if open.is_closed() {
                        *open = link.clone();
                    }
                })
                .or_insert_with(|| link.clone());
        }
        Ok(link)
    }

    async fn read_frames(
        self,
        mut reader: OwnedReadHalf,
        mut opener: Opener,
        link: Link,
        stop: oneshot::Sender<()>,
    ) {
        // Each read takes what has arrived (many frames at once under load).
        let mut bytes: Vec<u8> = Vec::with_capacity(READ_BYTES);
        let mut receiver = (self.inner.inbound)();
        loop {
            // The whole frames read so far, each a view into `bytes`.
            let mut taken = 0;
            let wanted = loop {
                match codec::next_frame_at(&bytes[taken..], link.version) {
                    Ok(Ok((frame, used))) => {
                        taken += used;
                        self.take(&link, frame, receiver.as_mut()).await;
                    }
                    Ok(Err(wanted)) => break Some(wanted),
                    Err(error) => {
                        tracing::warn!(peer = %link.peer(), %error, "transport: dropping the link");
                        break None;
                    }
                }
            };
            let Some(wanted) = wanted else { break };
            bytes.drain(..taken);
            if let Some(hold) = receiver.flush() {
                hold.await;
            }
            // The frame begun may be large: room for it as records come.
            let want = wanted
                .saturating_sub(bytes.len())
                .clamp(READ_BYTES / 2, READ_BYTES);
            match opener.read(&mut reader, &mut bytes, want).await {
                Ok(0) => {
                    tracing::info!(peer = %link.peer(), "transport: link closed by the peer");
                    break;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(peer = %link.peer(), %error, "transport: dropping the link");
                    break;
                }
            }
        }
        self.inner.metrics.links.dec();
        self.lock_links()
            .retain(|_, open| !Arc::ptr_eq(&open.peer, &link.peer));
        // Dropping their senders answers them `Closed`.
        self.lock_pending()
            .retain(|_, (peer, _)| !Arc::ptr_eq(peer, &link.peer));
        drop(stop);
    }

    /// One frame from `link`: a message to the inbound handler (waiting
    /// while it holds the link), a reply to an ask that went out on this
    /// very link (a reply to any other ask is dropped).
    async fn take(&self, link: &Link, frame: Frame<'_>, receiver: &mut dyn Receiver) {
        match frame {
            Frame::Message(envelope) => {
                if let Some(hold) = receiver.take(link, envelope) {
                    hold.await;
                }
            }
            Frame::Reply(Reply { ask_id, outcome }) => {
                let mut pending = self.lock_pending();
                let ours = pending
                    .get(&ask_id)
                    .is_some_and(|(peer, _)| Arc::ptr_eq(peer, &link.peer));
                if ours {
                    if let Some((_, waiting)) = pending.remove(&ask_id) {
                        let _ = waiting.send(outcome);
                    }
                } else {
                    tracing::debug!(peer = %link.peer(), ask_id, "transport: a reply to no ask of this link, dropped");
                }
            }
        }
    }

    fn lock_links(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Link>> {
        self.inner.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_backoff(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Backoff>> {
        self.inner.backoff.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_dials(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<DialGate>>> {
        self.inner.lock_dials()
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.inner.lock_pending()
    }
}

/// Seals what gathered in the outbox into records and sends them in one
/// write each time, until the reader stops or a write fails; then closes
/// the outbox.
async fn write_frames(
    outbox: Arc<Outbox>,
    mut writer: OwnedWriteHalf,
    mut sealer: Sealer,
    mut stopped: oneshot::Receiver<()>,
    peer: Arc<str>,
) {
    let mut sending = Vec::with_capacity(WRITE_BATCH_BYTES);
    let mut sealed = Vec::with_capacity(WRITE_BATCH_BYTES + 64);
    loop {
        {
            let mut bytes = outbox.lock();
            std::mem::swap(&mut *bytes, &mut sending);
        }
        if sending.is_empty() {
            tokio::select! {
                _ = outbox.filled.notified() => {
                    // Woken by the first frame of a burst: the tasks queuing
                    // the rest run first, so that one write carries them.
                    tokio::task::yield_now().await;
                    continue;
                }
                _ = &mut stopped => break,
            }
        }
        outbox.drained.notify_waiters();
        sealed.clear();
        if let Err(error) = sealer.seal(&sending, &mut sealed) {
            tracing::warn!(%peer, %error, "transport: cannot seal; closing the link");
            break;
        }
        if let Err(error) = writer.write_all(&sealed).await {
            tracing::info!(%peer, %error, "transport: link write failed");
            break;
        }
        sending.clear();
    }
    outbox.close();
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::super::codec::{Target, encode_payload};
    use super::*;

    fn config(node: &str, secret: &str) -> TransportConfig {
        TransportConfig::new(node, secret.as_bytes())
    }

    /// Answers every ask with its payload; counts every message.
    fn echo(count: Arc<AtomicUsize>) -> Inbound {
        each(move |link: &Link, envelope: Envelope<'_>| {
            count.fetch_add(1, Ordering::Relaxed);
            if let Some(ask_id) = envelope.ask_id {
                let link = link.clone();
                let payload = envelope.payload.into_owned();
                tokio::spawn(async move {
                    let _ = link
                        .send(Frame::Reply(Reply {
                            ask_id,
                            outcome: Ok(payload),
                        }))
                        .await;
                });
            }
            None
        })
    }

    fn envelope(n: u64) -> Envelope<'static> {
        Envelope {
            message_id: n,
            ask_id: None,
            correlation_id: None,
            actor: None,
            trace_context: None,
            deadline_ms: None,
            target: Target {
                kind: "architect".into(),
                key: format!("m-{n}").into(),
            },
            type_id: 1,
            type_version: 1,
            payload: encode_payload(&n).unwrap().into(),
        }
    }

    async fn server(secret: &str) -> (Transport, Arc<AtomicUsize>) {
        let count = Arc::new(AtomicUsize::new(0));
        let transport = Transport::bind(
            "127.0.0.1:0".parse().unwrap(),
            config("server", secret),
            echo(count.clone()),
        )
        .await
        .unwrap();
        (transport, count)
    }

    async fn client(secret: &str) -> Transport {
        Transport::bind(
            "127.0.0.1:0".parse().unwrap(),
            config("client", secret),
            echo(Arc::new(AtomicUsize::new(0))),
        )
        .await
        .unwrap()
    }

    async fn works(server: &Transport) {
        let client = client("s3cret").await;
        let answer = client
            .ask(server.local_addr(), envelope(5), Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer, encode_payload(&5u64).unwrap());
    }

    #[tokio::test]
    async fn asks_round_trip_and_tells_all_arrive_on_one_link() {
        let (server, count) = server("s3cret").await;
        let client = client("s3cret").await;
        let link = client.link(server.local_addr()).await.unwrap();
        assert_eq!(link.peer(), "server");
        for n in 0..10_000 {
            link.send(Frame::Message(envelope(n))).await.unwrap();
        }
        works(&server).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while count.load(Ordering::Relaxed) < 10_001 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(count.load(Ordering::Relaxed), 10_001);
        // The same link serves the next call.
        let again = client.link(server.local_addr()).await.unwrap();
        assert!(Arc::ptr_eq(&again.peer, &link.peer));
    }

    #[tokio::test]
    async fn a_pair_of_nodes_shares_one_connection_both_ways() {
        let (server, _) = server("s3cret").await;
        let count = Arc::new(AtomicUsize::new(0));
        let client = Transport::bind(
            "127.0.0.1:0".parse().unwrap(),
            config("client", "s3cret"),
            echo(count.clone()),
        )
        .await
        .unwrap();
        client.link(server.local_addr()).await.unwrap();
        // The server reaches the client on the connection the client opened.
        let deadline = Instant::now() + Duration::from_secs(5);
        let back = loop {
            if let Some(link) = server.lock_links().get(&client.local_addr()).cloned() {
                break link;
            }
            assert!(Instant::now() < deadline, "the accepted link was not kept");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(back.peer(), "client");
        let link = server.link(client.local_addr()).await.unwrap();
        assert!(Arc::ptr_eq(&link.peer, &back.peer));
        let answer = server
            .ask(client.local_addr(), envelope(8), Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer, encode_payload(&8u64).unwrap());
        assert_eq!(count.load(Ordering::Relaxed), 1);
        assert_eq!(client.inner.accepted.load(Ordering::Relaxed), 0);
        assert_eq!(server.inner.accepted.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_on_both_sides() {
        let (server, count) = server("s3cret").await;
        let intruder = client("guess").await;
        let error = intruder.link(server.local_addr()).await.err().unwrap();
        assert!(matches!(error, LinkError::Handshake { .. }), "{error}");
        // A failed address waits before the next dial.
        let again = intruder.link(server.local_addr()).await.err().unwrap();
        assert!(matches!(again, LinkError::Backoff { .. }), "{again}");
        assert_eq!(count.load(Ordering::Relaxed), 0);
        works(&server).await;
    }

    /// A raw connection that completes the handshake as `node` with
    /// `secret`, as a peer would.
    async fn handshaken(
        server: &Transport,
        node: &str,
        version: u16,
    ) -> Result<(TcpStream, Sealer), ChannelError> {
        let mut raw = TcpStream::connect(server.local_addr()).await.unwrap();
        let (mut reader, mut writer) = raw.split();
        let hello = Hello {
            version,
            node: node.into(),
            listen: "127.0.0.1:1".parse().unwrap(),
            min_version: version,
            messages: Vec::new(),
        };
        let (_, sealer, _) = channel::initiate(
            &mut reader,
            &mut writer,
            &channel::link_key(b"s3cret"),
            &hello,
            |_| Ok(()),
        )
        .await?;
        Ok((raw, sealer))
    }

    #[tokio::test]
    async fn another_protocol_version_is_refused_with_a_reason() {
        let (server, _) = server("s3cret").await;
        match handshaken(&server, "future", PROTOCOL_VERSION + 1).await {
            Err(ChannelError::Refused(reason)) => assert!(reason.contains("version"), "{reason}"),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("another version was let in"),
        }
        works(&server).await;
    }

    /// Reads until the server closes the connection.
    async fn closed_by_server(raw: &mut TcpStream) -> bool {
        closed_within(raw, Duration::from_secs(5)).await
    }

    async fn closed_within(raw: &mut TcpStream, limit: Duration) -> bool {
        let mut sink = [0u8; 4096];
        let until = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(until, raw.read(&mut sink)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    #[tokio::test]
    async fn garbage_and_oversized_frames_cost_only_their_connection() {
        let (server, count) = server("s3cret").await;
        // Garbage instead of a hello.
        let mut raw = TcpStream::connect(server.local_addr()).await.unwrap();
        raw.write_all(&[0, 40, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8])
            .await
            .unwrap();
        raw.write_all(&[0; 32]).await.unwrap();
        assert!(closed_by_server(&mut raw).await);
        // A correct handshake, then a frame over the limit.
        let (mut raw, mut sealer) = handshaken(&server, "raw", PROTOCOL_VERSION).await.unwrap();
        let mut sealed = Vec::new();
        sealer
            .seal(
                &((codec::MAX_FRAME_BYTES + 1) as u32).to_be_bytes(),
                &mut sealed,
            )
            .unwrap();
        raw.write_all(&sealed).await.unwrap();
        assert!(closed_by_server(&mut raw).await);
        // A correct handshake, then bytes that are no record of the link.
        let (mut raw, _) = handshaken(&server, "raw", PROTOCOL_VERSION).await.unwrap();
        let mut frame = Vec::new();
        codec::encode_into(&Frame::Message(envelope(1)), &mut frame).unwrap();
        raw.write_all(&frame).await.unwrap();
        assert!(closed_by_server(&mut raw).await);
        assert_eq!(count.load(Ordering::Relaxed), 0);
        works(&server).await;
    }

    /// Before a peer proves itself it gets a fixed, small budget: a huge
    /// declared length is refused at once, a peer that dribbles is cut at
    /// the deadline, and one address holds a few handshakes at most.
    #[tokio::test]
    async fn unauthenticated_connections_are_capped_and_cut_at_the_deadline() {
        let (server, _) = server("s3cret").await;
        let mut huge = TcpStream::connect(server.local_addr()).await.unwrap();
        huge.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
        assert!(closed_within(&mut huge, Duration::from_millis(500)).await);
        let mut held = Vec::new();
        for _ in 0..MAX_HANDSHAKES_PER_SOURCE {
            let mut raw = TcpStream::connect(server.local_addr()).await.unwrap();
            raw.write_all(&[0]).await.unwrap();
            held.push(raw);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // One more from the same address is closed at once.
        let mut over = TcpStream::connect(server.local_addr()).await.unwrap();
        assert!(closed_within(&mut over, Duration::from_millis(500)).await);
        let refused = server
            .inner
            .metrics
            .refused
            .with_label_values(&["capacity"])
            .get();
        assert!(refused >= 1, "{refused}");
        // The held ones, dribbling, are cut at the deadline.
        let started = Instant::now();
        for raw in &mut held {
            assert!(closed_within(raw, HANDSHAKE_TIMEOUT + Duration::from_secs(2)).await);
        }
        assert!(started.elapsed() <= HANDSHAKE_TIMEOUT + Duration::from_secs(2));
        assert_eq!(server.inner.metrics.handshakes.get(), 0);
        works(&server).await;
    }

    /// Relays `from` into `to` until `until`; gives both halves back.
    async fn relay(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        until: tokio::time::Instant,
    ) -> (
        tokio::net::tcp::OwnedReadHalf,
        tokio::net::tcp::OwnedWriteHalf,
    ) {
        let mut buffer = vec![0u8; 4096];
        while let Ok(Ok(read)) = tokio::time::timeout_at(until, from.read(&mut buffer)).await {
            if read == 0 || to.write_all(&buffer[..read]).await.is_err() {
                break;
            }
        }
        (from, to)
    }

    /// The reflection attack: without the secret, an attacker opens two
    /// connections to one node and feeds each one's bytes into the other,
    /// so the node's handshake talks to itself; then injects a frame.
    #[tokio::test]
    async fn a_handshake_relayed_back_to_its_node_opens_no_link_and_passes_no_frame() {
        let (server, count) = server("s3cret").await;
        let first = TcpStream::connect(server.local_addr()).await.unwrap();
        let second = TcpStream::connect(server.local_addr()).await.unwrap();
        let (first_read, first_write) = first.into_split();
        let (second_read, second_write) = second.into_split();
        let until = tokio::time::Instant::now() + Duration::from_millis(1500);
        let there = tokio::spawn(relay(first_read, second_write, until));
        let back = tokio::spawn(relay(second_read, first_write, until));
        let (_first_read, _second_write) = there.await.unwrap();
        let (_second_read, mut first_write) = back.await.unwrap();
        let mut frame = Vec::new();
        codec::encode_into(&Frame::Message(envelope(1)), &mut frame).unwrap();
        let _ = first_write.write_all(&frame).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            count.load(Ordering::Relaxed),
            0,
            "an injected frame was processed"
        );
        assert!(
            server.open_link(server.local_addr()).is_none(),
            "the node holds a link to itself"
        );
        works(&server).await;
    }

    /// A peer that holds the secret but claims the node's own name.
    #[tokio::test]
    async fn a_peer_claiming_the_nodes_own_name_is_refused() {
        let (server, count) = server("s3cret").await;
        let impostor = Transport::bind(
            "127.0.0.1:0".parse().unwrap(),
            config("server", "s3cret"),
            echo(Arc::new(AtomicUsize::new(0))),
        )
        .await
        .unwrap();
        let error = impostor.link(server.local_addr()).await.err();
        assert!(
            matches!(error, Some(LinkError::Handshake { .. })),
            "{error:?}"
        );
        assert_eq!(count.load(Ordering::Relaxed), 0);
        works(&server).await;
    }

    /// A reply is taken only from the link its ask went out on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reply_from_another_link_does_not_answer_an_ask() {
        let (server, _) = server("s3cret").await;
        // The asked node never answers; it tells which ask id it got.
        let (seen, mut asked) = tokio::sync::mpsc::unbounded_channel();
        let silent = Transport::bind(
            "127.0.0.1:0".parse().unwrap(),
            config("silent", "s3cret"),
            each(move |_: &Link, envelope: Envelope<'_>| {
                let _ = seen.send(envelope.ask_id);
                None
            }),
        )
        .await
        .unwrap();
        let forger = client("s3cret").await;
        let forged = forger.link(server.local_addr()).await.unwrap();
        let asking = server.clone();
        let addr = silent.local_addr();
        let ask = tokio::spawn(async move {
            asking
                .ask(addr, envelope(3), Duration::from_millis(1500))
                .await
        });
        let ask_id = asked.recv().await.unwrap().unwrap();
        forged
            .send(Frame::Reply(Reply {
                ask_id,
                outcome: Ok(b"forged".to_vec()),
            }))
            .await
            .unwrap();
        let outcome = ask.await.unwrap();
        assert!(
            matches!(outcome, Err(LinkError::Timeout { .. })),
            "{outcome:?}"
        );
    }

    /// Senders that give up while a dial hangs (a peer that accepts and
    /// never answers) leave no count and no gate behind; an ask that is
    /// dropped leaves no pending entry.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelled_dials_and_asks_leave_nothing_behind() {
        let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mute_addr = mute.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = mute.accept().await {
                held.push(stream);
            }
        });
        let sender = client("s3cret").await;
        for _ in 0..50 {
            let _ = tokio::time::timeout(Duration::from_millis(2), sender.link(mute_addr)).await;
        }
        let cancelled: Vec<_> = (0..20)
            .map(|_| {
                let sender = sender.clone();
                tokio::spawn(async move {
                    tokio::time::timeout(Duration::from_millis(100), sender.link(mute_addr)).await
                })
            })
            .collect();
        for task in cancelled {
            assert!(task.await.unwrap().is_err(), "a mute peer gave a link");
        }
        assert!(!sender.dialing_is_busy(mute_addr));
        assert!(
            sender.lock_dials().is_empty(),
            "a gate outlived its senders"
        );
        // An ask dropped before its reply.
        let (seen, mut asked) = tokio::sync::mpsc::unbounded_channel();
        let silent = Transport::bind(
            "127.0.0.1:0".parse().unwrap(),
            config("silent", "s3cret"),
            each(move |_: &Link, envelope: Envelope<'_>| {
                let _ = seen.send(envelope.ask_id);
                None
            }),
        )
        .await
        .unwrap();
        let asking = tokio::time::timeout(
            Duration::from_millis(300),
            sender.ask(silent.local_addr(), envelope(1), Duration::from_secs(30)),
        );
        assert!(asking.await.is_err());
        assert!(asked.recv().await.is_some());
        assert!(
            sender.lock_pending().is_empty(),
            "a dropped ask stayed pending"
        );
        held.abort();
    }

    /// The reflection that matters under Noise: the node is made to dial a
    /// relay that pipes it into its own listener. Its own responder sees
    /// its own name and refuses, so it opens no link to itself.
    #[tokio::test]
    async fn a_dial_relayed_into_the_nodes_own_listener_opens_nothing() {
        let (server, count) = server("s3cret").await;
        let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = relay.local_addr().unwrap();
        let target = server.local_addr();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = relay.accept().await {
                tokio::spawn(async move {
                    let mut outbound = TcpStream::connect(target).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        match server.link(relay_addr).await {
            Err(LinkError::Handshake { reason, .. }) => {
                assert!(reason.contains("own name"), "{reason}")
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("the node opened a link to itself"),
        }
        assert!(server.open_link(relay_addr).is_none());
        assert!(server.open_link(target).is_none());
        assert_eq!(count.load(Ordering::Relaxed), 0);
        works(&server).await;
    }

    /// Strangers that fill every handshake place of a node do not lock out
    /// its members, whose addresses have places of their own.
    #[tokio::test]
    async fn members_get_in_while_strangers_hold_every_handshake_place() {
        let (server, _) = server("s3cret").await;
        let mut strangers = Vec::new();
        for i in 0..MAX_HANDSHAKES {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            let source = format!("127.0.0.{}:0", 2 + i % 8).parse().unwrap();
            socket.bind(source).unwrap();
            let mut stream = socket.connect(server.local_addr()).await.unwrap();
            stream.write_all(&[0]).await.unwrap();
            strangers.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(server.inner.metrics.handshakes.get(), MAX_HANDSHAKES as i64);
        // A stranger from yet another address is turned away ...
        let intruder = client("s3cret").await;
        assert!(intruder.link(server.local_addr()).await.is_err());
        // ... and a member is let in, once its address is a member's.
        server.set_members(["127.0.0.1:1".parse().unwrap()]);
        let member = client("s3cret").await;
        let link = member.link(server.local_addr()).await.unwrap();
        assert_eq!(link.peer(), "server");
        drop(strangers);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_full_queue_makes_the_sender_wait() {
        // A server stuck in its first message stops reading its socket.
        let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let held = release.clone();
        // Bounded: it holds a runtime worker, and a CI run once hung with
        // it held for good (the test then fails rather than hangs).
        let slow_handler: Inbound = each(move |_: &Link, _: Envelope<'_>| {
            let since = std::time::Instant::now();
            while !held.load(Ordering::Relaxed) && since.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(5));
            }
            None
        });
        let server = Transport::bind(
            "127.0.0.1:0".parse().unwrap(),
            config("server", "s3cret"),
            slow_handler,
        )
        .await
        .unwrap();
        let sender = Transport::bind(
            "127.0.0.1:0".parse().unwrap(),
            TransportConfig {
                queue_bytes: 4 << 20,
                ..config("sender", "s3cret")
            },
            echo(Arc::new(AtomicUsize::new(0))),
        )
        .await
        .unwrap();
        let link = sender.link(server.local_addr()).await.unwrap();
        // Frames of 1 MiB: the socket buffers fill, then the outbox of
        // 4 MiB, then `send` waits instead of growing memory.
        let big = Envelope {
            payload: vec![0; 1 << 20].into(),
            ..envelope(1)
        };
        let mut sent = 0;
        while sent < 256 {
            let queued = tokio::time::timeout(
                Duration::from_secs(1),
                link.send(Frame::Message(big.clone())),
            )
            .await;
            match queued {
                Err(_) => break,
                Ok(Ok(())) => sent += 1,
                Ok(Err(_)) => panic!("the link closed after {sent} frames"),
            }
        }
        release.store(true, Ordering::Relaxed);
        assert!(sent < 64, "{sent} MiB queued without waiting");
        assert!(!link.is_closed());
    }
}
