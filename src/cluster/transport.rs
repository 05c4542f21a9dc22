//! TCP links between nodes. A link is one connection, used both ways,
//! opened by a handshake that checks the protocol version and proves on
//! both sides that each holds the cluster secret (HMAC-SHA256 over the
//! other side's fresh nonce) before any frame passes. Senders encode their
//! frame straight into the link's outbox, a byte buffer bounded in size (a
//! full outbox makes senders wait: backpressure, never unbounded memory),
//! and a writer task sends whatever gathered while it wrote in one write
//! (batching) — no per-frame queue operation, one copy of each frame. A peer that sends garbage, an oversized
//! frame or a bad proof loses its connection, and nothing else does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};

use super::codec::{
    self, CodecError, Envelope, Frame, Handshake, PROTOCOL_VERSION, RemoteFailure, Reply,
};

/// Time a peer has to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes the writer gathers before it writes.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// Bytes a link's reader asks for at a time.
const READ_BYTES: usize = 64 * 1024;
/// First and longest wait before dialing an address that failed again.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

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
}

impl TransportConfig {
    /// A node's config with an outbox of 4 MiB per link.
    pub fn new(node: &str, secret: &[u8]) -> TransportConfig {
        TransportConfig {
            node: node.to_owned(),
            secret: secret.to_vec(),
            queue_bytes: 4 << 20,
            advertise: None,
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

/// Asks waiting for their reply, by correlation id.
/// Each with the link it went out on: a link that closes fails its asks at
/// once instead of leaving them to their timeouts.
type Waiting = HashMap<u64, (Arc<str>, oneshot::Sender<Result<Vec<u8>, RemoteFailure>>)>;

/// Frames encoded and waiting for the writer.
struct Outbox {
    bytes: Mutex<Vec<u8>>,
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

    /// Appends `frame` if there is room: `Ok(true)` taken, `Ok(false)` full.
    fn offer(&self, frame: &Frame<'_>, peer: &str) -> Result<bool, ()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(());
        }
        let mut bytes = self.lock();
        if bytes.len() >= self.limit {
            return Ok(false);
        }
        let was_empty = bytes.is_empty();
        if let Err(error) = codec::encode_into(frame, &mut bytes) {
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
    outbox: Arc<Outbox>,
}

impl Link {
    /// The peer's node name, from its handshake.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Queues a frame, waiting while the link's outbox is full; gives the
    /// frame back when the link is closed, so it can go elsewhere.
    pub async fn send<'a>(&self, frame: Frame<'a>) -> Result<(), Frame<'a>> {
        loop {
            match self.outbox.offer(&frame, &self.peer) {
                Ok(true) => return Ok(()),
                Err(()) => return Err(frame),
                Ok(false) => {}
            }
            // Full: wait for a drain, registered before checking again so
            // that a drain in between is not missed.
            let drained = self.outbox.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            match self.outbox.offer(&frame, &self.peer) {
                Ok(true) => return Ok(()),
                Err(()) => return Err(frame),
                Ok(false) => drained.await,
            }
        }
    }

    /// Queues a frame if the outbox has room now; gives it back otherwise
    /// (for an inbound handler, which must not wait).
    pub fn try_send<'a>(&self, frame: Frame<'a>) -> Result<(), Box<Frame<'a>>> {
        match self.outbox.offer(&frame, &self.peer) {
            Ok(true) => Ok(()),
            Ok(false) | Err(()) => Err(Box::new(frame)),
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

struct Inner {
    config: TransportConfig,
    inbound: Inbound,
    links: Mutex<HashMap<SocketAddr, Link>>,
    backoff: Mutex<HashMap<SocketAddr, Backoff>>,
    pending: Mutex<Waiting>,
    next_id: AtomicU64,
    listen: SocketAddr,
    /// Connections accepted, handshake or not.
    accepted: AtomicU64,
}

/// This node's end of the transport: the listener and the links it dialed.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl Transport {
    /// Listens on `addr` and serves peers with `inbound`. Call inside a
    /// tokio runtime.
    pub async fn bind(
        addr: SocketAddr,
        config: TransportConfig,
        inbound: Inbound,
    ) -> std::io::Result<Transport> {
        let listener = TcpListener::bind(addr).await?;
        let listen = match config.advertise {
            Some(advertised) => advertised,
            None => listener.local_addr()?,
        };
        let transport = Transport {
            inner: Arc::new(Inner {
                config,
                inbound,
                links: Mutex::new(HashMap::new()),
                backoff: Mutex::new(HashMap::new()),
                pending: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                accepted: AtomicU64::new(0),
                listen,
            }),
        };
        tokio::spawn(transport.clone().accept(listener));
        Ok(transport)
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
                    let this = self.clone();
                    tokio::spawn(async move {
                        this.inner.accepted.fetch_add(1, Ordering::Relaxed);
                        if let Err(error) = this.open(stream, from, true).await {
                            tracing::warn!(%from, %error, "transport: refused a connection");
                        }
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

    /// The open link to `addr`, if there is one; never dials.
    pub fn open_link(&self, addr: SocketAddr) -> Option<Link> {
        self.lock_links()
            .get(&addr)
            .filter(|link| !link.is_closed())
            .cloned()
    }

    /// The link to the node listening at `addr`: the open one, or a new
    /// connection and handshake.
    pub async fn link(&self, addr: SocketAddr) -> Result<Link, LinkError> {
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
        let dialed = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|source| LinkError::Connect { addr, source })?;
            self.open(stream, addr, false).await
        }
        .await;
        match dialed {
            Ok(link) => {
                self.lock_backoff().remove(&addr);
                let mut links = self.lock_links();
                // Two dials at once: the first link in stays.
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

    /// Sends `envelope` and waits for the reply to its correlation id.
    pub async fn ask(
        &self,
        addr: SocketAddr,
        mut envelope: Envelope<'_>,
        timeout: Duration,
    ) -> Result<Result<Vec<u8>, RemoteFailure>, LinkError> {
        let link = self.link(addr).await?;
        let ask_id = self.next_id();
        envelope.ask_id = Some(ask_id);
        let (reply, answer) = oneshot::channel();
        self.lock_pending()
            .insert(ask_id, (Arc::clone(&link.peer), reply));
        let outcome = async {
            link.send(Frame::Message(envelope))
                .await
                .map_err(|_| LinkError::Closed {
                    peer: link.peer().to_owned(),
                })?;
            match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(outcome)) => Ok(outcome),
                Ok(Err(_)) => Err(LinkError::Closed {
                    peer: link.peer().to_owned(),
                }),
                Err(_) => Err(LinkError::Timeout {
                    peer: link.peer().to_owned(),
                    timeout,
                }),
            }
        }
        .await;
        self.lock_pending().remove(&ask_id);
        outcome
    }

    /// Handshake on a fresh connection (either side), then the link's
    /// writer and reader tasks.
    async fn open(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        accepted: bool,
    ) -> Result<Link, LinkError> {
        stream.set_nodelay(true).map_err(CodecError::Io)?;
        let (mut reader, mut writer) = stream.into_split();
        let (peer, peer_listen) = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            handshake(
                &self.inner.config,
                self.inner.listen,
                &mut reader,
                &mut writer,
            ),
        )
        .await
        .unwrap_or_else(|_| {
            Err(LinkError::Handshake {
                peer: addr.to_string(),
                reason: "timed out".into(),
            })
        })?;
        tracing::info!(peer = %peer, %addr, "transport: link open");
        let link = Link {
            peer: peer.into(),
            outbox: Arc::new(Outbox {
                bytes: Mutex::new(Vec::with_capacity(WRITE_BATCH_BYTES)),
                limit: self.inner.config.queue_bytes.max(1),
                closed: AtomicBool::new(false),
                filled: Notify::new(),
                drained: Notify::new(),
            }),
        };
        // The reader's end stops the writer, which closes the connection.
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(write_frames(
            link.outbox.clone(),
            writer,
            stopped,
            link.peer.clone(),
        ));
        tokio::spawn(self.clone().read_frames(reader, link.clone(), stop));
        if accepted {
            // Messages to the peer reuse its connection rather than dial back.
            self.lock_links()
                .entry(peer_listen)
                .and_modify(|open| {
                    if open.is_closed() {
                        *open = link.clone();
                    }
                })
                .or_insert_with(|| link.clone());
        }
        Ok(link)
    }

    async fn read_frames(self, mut reader: OwnedReadHalf, link: Link, stop: oneshot::Sender<()>) {
        // Each read takes what has arrived (many frames at once under load).
        let mut bytes: Vec<u8> = Vec::with_capacity(READ_BYTES);
        let mut receiver = (self.inner.inbound)();
        loop {
            // The whole frames read so far, each a view into `bytes`.
            let mut taken = 0;
            let wanted = loop {
                match codec::next_frame::<Frame>(&bytes[taken..]) {
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
            bytes.reserve(wanted.max(READ_BYTES / 2).saturating_sub(bytes.len()));
            match reader.read_buf(&mut bytes).await {
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
        self.lock_links()
            .retain(|_, open| !Arc::ptr_eq(&open.peer, &link.peer));
        // Dropping their senders answers them `Closed`.
        self.lock_pending()
            .retain(|_, (peer, _)| !Arc::ptr_eq(peer, &link.peer));
        drop(stop);
    }

    /// One frame from `link`: a message to the inbound handler (waiting
    /// while it holds the link), a reply to its ask.
    async fn take(&self, link: &Link, frame: Frame<'_>, receiver: &mut dyn Receiver) {
        match frame {
            Frame::Message(envelope) => {
                if let Some(hold) = receiver.take(link, envelope) {
                    hold.await;
                }
            }
            Frame::Reply(Reply { ask_id, outcome }) => {
                if let Some((_, waiting)) = self.lock_pending().remove(&ask_id) {
                    let _ = waiting.send(outcome);
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

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.inner.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Sends what gathered in the outbox in one write each time, until the
/// reader stops or a write fails; then closes the outbox.
async fn write_frames(
    outbox: Arc<Outbox>,
    mut writer: OwnedWriteHalf,
    mut stopped: oneshot::Receiver<()>,
    peer: Arc<str>,
) {
    let mut sending = Vec::with_capacity(WRITE_BATCH_BYTES);
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
        if let Err(error) = writer.write_all(&sending).await {
            tracing::info!(%peer, %error, "transport: link write failed");
            break;
        }
        sending.clear();
    }
    outbox.close();
}

/// The proof over the other side's nonce, binding who we say we are.
fn mac(secret: &[u8], nonce: &[u8; 32], node: &str, listen: SocketAddr) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(b"valueverse-link-v1");
    mac.update(nonce);
    for part in [node.as_bytes(), listen.to_string().as_bytes()] {
        mac.update(&(part.len() as u64).to_le_bytes());
        mac.update(part);
    }
    mac
}

/// Tells the peer why it is refused (best effort: it may be gone), and
/// answers the error for this side.
async fn refuse_peer(writer: &mut OwnedWriteHalf, peer: &str, reason: String) -> LinkError {
    let refusal = Handshake::Refused {
        reason: reason.clone(),
    };
    let _ = codec::write_frame(writer, &refusal).await;
    LinkError::Handshake {
        peer: peer.to_owned(),
        reason,
    }
}

/// Both sides: hello, then proof over the other's nonce. Answers the
/// peer's node name.
async fn handshake(
    config: &TransportConfig,
    listen: SocketAddr,
    reader: &mut OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
) -> Result<(String, SocketAddr), LinkError> {
    let nonce: [u8; 32] = rand::random();
    codec::write_frame(
        writer,
        &Handshake::Hello {
            version: PROTOCOL_VERSION,
            node: config.node.clone(),
            listen,
            nonce,
        },
    )
    .await?;
    let mut buffer = Vec::new();
    let refuse = |peer: &str, reason: String| LinkError::Handshake {
        peer: peer.to_owned(),
        reason,
    };
    let (peer, peer_listen, peer_nonce) =
        match codec::read_frame::<Handshake>(reader, &mut buffer).await? {
            Handshake::Hello {
                version,
                node,
                listen,
                nonce,
            } => {
                if version != PROTOCOL_VERSION {
                    let reason =
                        format!("protocol version {version} is not this node's {PROTOCOL_VERSION}");
                    return Err(refuse_peer(writer, &node, reason).await);
                }
                (node, listen, nonce)
            }
            Handshake::Refused { reason } => return Err(refuse("?", format!("refused: {reason}"))),
            Handshake::Proof { .. } => return Err(refuse("?", "proof before hello".into())),
        };
    let proof = mac(&config.secret, &peer_nonce, &config.node, listen)
        .finalize()
        .into_bytes();
    codec::write_frame(writer, &Handshake::Proof { mac: proof.into() }).await?;
    match codec::read_frame::<Handshake>(reader, &mut buffer).await? {
        Handshake::Proof { mac: theirs } => {
            if mac(&config.secret, &nonce, &peer, peer_listen)
                .verify_slice(&theirs)
                .is_err()
            {
                let reason = "the peer does not hold the cluster secret".to_owned();
                return Err(refuse_peer(writer, &peer, reason).await);
            }
        }
        Handshake::Refused { reason } => return Err(refuse(&peer, format!("refused: {reason}"))),
        Handshake::Hello { .. } => return Err(refuse(&peer, "a second hello".into())),
    }
    Ok((peer, peer_listen))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::io::AsyncReadExt;

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
            trace_context: None,
            deadline_ms: None,
            target: Target {
                kind: "architect".into(),
                key: format!("m-{n}").into(),
            },
            type_id: 1,
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

    #[tokio::test]
    async fn another_protocol_version_is_refused_with_a_reason() {
        let (server, _) = server("s3cret").await;
        let mut raw = TcpStream::connect(server.local_addr()).await.unwrap();
        let hello = Handshake::Hello {
            version: PROTOCOL_VERSION + 1,
            node: "future".into(),
            listen: "127.0.0.1:1".parse().unwrap(),
            nonce: [1; 32],
        };
        codec::write_frame(&mut raw, &hello).await.unwrap();
        let mut buffer = Vec::new();
        assert!(matches!(
            codec::read_frame::<Handshake>(&mut raw, &mut buffer)
                .await
                .unwrap(),
            Handshake::Hello { .. }
        ));
        match codec::read_frame::<Handshake>(&mut raw, &mut buffer)
            .await
            .unwrap()
        {
            Handshake::Refused { reason } => assert!(reason.contains("version"), "{reason}"),
            other => panic!("{other:?}"),
        }
        works(&server).await;
    }

    /// Reads until the server closes the connection.
    async fn closed_by_server(raw: &mut TcpStream) -> bool {
        let mut sink = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), raw.read(&mut sink)).await {
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
        raw.write_all(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8])
            .await
            .unwrap();
        assert!(closed_by_server(&mut raw).await);
        // A correct handshake, then a frame over the limit.
        let mut raw = TcpStream::connect(server.local_addr()).await.unwrap();
        let nonce = [7u8; 32];
        codec::write_frame(
            &mut raw,
            &Handshake::Hello {
                version: PROTOCOL_VERSION,
                node: "raw".into(),
                listen: "127.0.0.1:1".parse().unwrap(),
                nonce,
            },
        )
        .await
        .unwrap();
        let mut buffer = Vec::new();
        let Handshake::Hello {
            nonce: server_nonce,
            node,
            ..
        } = codec::read_frame::<Handshake>(&mut raw, &mut buffer)
            .await
            .unwrap()
        else {
            panic!("no hello");
        };
        assert_eq!(node, "server");
        let proof = mac(
            b"s3cret",
            &server_nonce,
            "raw",
            "127.0.0.1:1".parse().unwrap(),
        )
        .finalize()
        .into_bytes();
        codec::write_frame(&mut raw, &Handshake::Proof { mac: proof.into() })
            .await
            .unwrap();
        assert!(matches!(
            codec::read_frame::<Handshake>(&mut raw, &mut buffer)
                .await
                .unwrap(),
            Handshake::Proof { .. }
        ));
        raw.write_all(&((codec::MAX_FRAME_BYTES + 1) as u32).to_be_bytes())
            .await
            .unwrap();
        assert!(closed_by_server(&mut raw).await);
        assert_eq!(count.load(Ordering::Relaxed), 0);
        works(&server).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_full_queue_makes_the_sender_wait() {
        // A server stuck in its first message stops reading its socket.
        let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let held = release.clone();
        let slow_handler: Inbound = each(move |_: &Link, _: Envelope<'_>| {
            while !held.load(Ordering::Relaxed) {
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
