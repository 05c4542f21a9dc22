//! `valueverse-bench remote`: messaging between two node processes on
//! loopback. The parent starts a second process of this binary that runs an
//! agent runtime with an echo agent behind a cluster transport, a bare
//! transport (it counts tells and answers asks with their payload), and a
//! bare TCP echo of 64-byte frames. The parent measures, in one run:
//! `AgentRef` tells and asks to an instance on the other process (the
//! whole path: routing, encoding, transport, mailbox, handler, reply), the
//! same to an instance in its own process (the local path), the bare
//! transport, and the TCP ping-pong baseline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use valueverse::actors::{
    Agent, AgentError, AgentMessage, AgentRef, HandlerError, Handling, System,
};
use valueverse::actors::{RemoteError, SendError};
use valueverse::store::Store;

use valueverse::cluster::codec::{Envelope, Frame, Reply, Target};
use valueverse::cluster::placement::Candidate;
use valueverse::cluster::router::{self, Placed, Router};
use valueverse::cluster::transport::{self, Inbound, Link, LinkError, Transport, TransportConfig};

/// The agent both processes host: counts pings, answers each with its
/// number, and the count when asked.
struct Echo;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum EchoMsg {
    Ping(u64),
    Count,
}

impl AgentMessage for EchoMsg {
    fn name(&self) -> &'static str {
        match self {
            EchoMsg::Ping(_) => "ping",
            EchoMsg::Count => "count",
        }
    }
}

impl Agent for Echo {
    const KIND: &'static str = "bench_echo";
    const MESSAGE_ID: u32 = 0xbe01;
    type State = u64;
    type Msg = EchoMsg;
    type Reply = u64;

    fn init(_key: &str) -> u64 {
        0
    }

    fn handle(state: &mut u64, msg: EchoMsg, _: &mut Handling<'_>) -> Result<u64, HandlerError> {
        Ok(match msg {
            EchoMsg::Ping(n) => {
                *state += 1;
                n
            }
            EchoMsg::Count => *state,
        })
    }
}

/// A node of the benchmark: an agent runtime on an in-memory store, with
/// a transport that delivers to it.
/// A node of the benchmarks: its runtime, its router and its transport.
type BenchNode = (System, Arc<Router>, Transport);

async fn echo_node(name: &str, secret: &[u8]) -> Result<BenchNode, BenchError> {
    agent_node(name, secret, valueverse::actors::RuntimeConfig::default()).await
}

async fn agent_node(
    name: &str,
    secret: &[u8],
    config: valueverse::actors::RuntimeConfig,
) -> Result<BenchNode, BenchError> {
    let store = Store::open("sqlite::memory:", 1)
        .await
        .map_err(|error| BenchError::Peer(error.to_string()))?;
    let system = System::start(name, config, store)?;
    system.register::<Echo>();
    let router = Arc::new(Router::new(name, system.placement_changes()));
    if system
        .attach_remote(Arc::clone(&router) as Arc<dyn valueverse::actors::Remote>)
        .is_err()
    {
        return Err(BenchError::Peer("a fresh system has a remote".into()));
    }
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut transport_config = TransportConfig::new(name, secret);
    transport_config.messages = system.message_versions();
    let transport = Transport::bind(
        loopback,
        transport_config,
        router::inbound(system.downgrade()),
    )
    .await?;
    router.attach(transport.clone(), tokio::runtime::Handle::current());
    Ok((system, router, transport))
}

/// The environment variable that carries the run's secret to the child.
pub const SECRET_ENV: &str = "VALUEVERSE_BENCH_SECRET";

/// Type id of a tell (counted) and of the ask for the count.
const TELL: u32 = 1;
const ECHO: u32 = 2;
const COUNT: u32 = 3;

/// Why the benchmark stopped.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("the peer process: {0}")]
    Peer(String),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One path's figures: tells/s (all sent, then counted by the agent), ask
/// round trip with one in flight, asks/s with 64 in flight.
#[derive(Debug, Clone, Serialize)]
pub struct PathFigures {
    pub tells_per_second: f64,
    pub ask_p50_us: f64,
    pub ask_p99_us: f64,
    pub asks_per_second_in_flight: f64,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteBench {
    /// `AgentRef` to an instance on the other process.
    pub agent_remote: PathFigures,
    /// `AgentRef` to an instance in this process.
    pub agent_local: PathFigures,
    /// The rest: the bare transport between the processes.
    pub tells: u64,
    pub tells_per_second: f64,
    pub asks: usize,
    pub ask_p50_us: f64,
    pub ask_p99_us: f64,
    pub asks_in_flight: usize,
    /// Asks sent in each "64 in flight" measurement.
    pub concurrent_asks: usize,
    pub asks_per_second_in_flight: f64,
    pub tcp_ping_p50_us: f64,
    pub tcp_ping_p99_us: f64,
}

fn envelope(type_id: u32, n: u64) -> Envelope<'static> {
    Envelope {
        message_id: n,
        ask_id: None,
        correlation_id: None,
        actor: None,
        trace_context: None,
        deadline_ms: None,
        target: Target {
            kind: "bench".into(),
            key: "k".into(),
        },
        type_id,
        type_version: 1,
        payload: n.to_le_bytes().to_vec().into(),
    }
}

/// The child's side: serves until its stdin closes. Prints the transport
/// address and the echo address on one line.
pub async fn serve(secret: &[u8]) -> Result<(), BenchError> {
    let tells = Arc::new(AtomicU64::new(0));
    let counted = tells.clone();
    let inbound: Inbound = transport::each(move |link: &Link, envelope: Envelope<'_>| {
        if envelope.type_id == TELL {
            counted.fetch_add(1, Ordering::Relaxed);
        }
        let ask_id = envelope.ask_id?;
        let payload = match envelope.type_id {
            COUNT => counted.load(Ordering::Relaxed).to_le_bytes().to_vec(),
            _ => envelope.payload.into_owned(),
        };
        let reply = Frame::Reply(Reply {
            ask_id,
            outcome: Ok(payload),
        });
        // A full queue: wait for room off the reader's path.
        if let Err(reply) = link.try_send(reply) {
            let link = link.clone();
            tokio::spawn(async move { link.send(*reply).await });
        }
        None
    });
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let transport =
        Transport::bind(loopback, TransportConfig::new("peer", secret), inbound).await?;
    let echo = TcpListener::bind(loopback).await?;
    // Its view is itself: every key sent here is served here.
    let (_system, _router, agents) = echo_node("peer-agents", secret).await?;
    println!(
        "{} {} {}",
        transport.local_addr(),
        echo.local_addr()?,
        agents.local_addr()
    );
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = echo.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let mut frame = [0u8; 64];
                while stream.read_exact(&mut frame).await.is_ok() {
                    if stream.write_all(&frame).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    // The parent holds our stdin: its end is ours.
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    while stdin.read(&mut sink).await.unwrap_or(0) > 0 {}
    Ok(())
}

/// Tells, then asks one at a time, then asks 64 at a time, through `agent`.
async fn measure_agent(
    agent: AgentRef<Echo>,
    tells: u64,
    asks: Asks,
) -> Result<PathFigures, BenchError> {
    let timeout = Duration::from_secs(30);
    let failed = |error: AgentError| BenchError::Peer(error.to_string());
    // Warm: the instance activated, the link open.
    agent.ask(EchoMsg::Ping(0), timeout).await.map_err(failed)?;
    let before = agent.ask(EchoMsg::Count, timeout).await.map_err(failed)?;
    let started = Instant::now();
    let mut sent = 0;
    while sent < tells {
        match agent.tell(EchoMsg::Ping(sent)) {
            Ok(()) => sent += 1,
            // A full mailbox or outbox: the sender waits its turn. A full
            // outbox holds 4 MiB of tells, so a 1 ms sleep leaves the pipe
            // full, and spinning would take the receiver's CPU.
            Err(AgentError::Send(SendError::MailboxFull { .. })) => tokio::task::yield_now().await,
            Err(AgentError::Remote(RemoteError::Backpressure { .. })) => {
                tokio::time::sleep(Duration::from_millis(1)).await
            }
            Err(error) => return Err(failed(error)),
        }
    }
    let mut counted = before;
    while counted < before + tells {
        if started.elapsed() > timeout {
            return Err(BenchError::Peer(format!(
                "{} of {tells} tells arrived within {timeout:?}",
                counted - before
            )));
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
        counted = agent.ask(EchoMsg::Count, timeout).await.map_err(failed)?;
    }
    let tells_per_second = tells as f64 / started.elapsed().as_secs_f64();

    let ask = move |n| {
        let agent = agent.clone();
        async move { agent.ask(EchoMsg::Ping(n), timeout).await.map(drop) }
    };
    let (latencies, asks_per_second_in_flight) = time_asks(asks, ask).await?;
    Ok(PathFigures {
        tells_per_second,
        ask_p50_us: percentile(&latencies, 0.5),
        ask_p99_us: percentile(&latencies, 0.99),
        asks_per_second_in_flight,
    })
}

/// How many asks each ask measurement sends.
#[derive(Debug, Clone, Copy)]
struct Asks {
    /// One at a time, each timed.
    sequential: usize,
    /// With [`IN_FLIGHT`] at once, timed together (long enough that a
    /// scheduling hiccup of the VM does not decide the figure).
    concurrent: usize,
}

/// Asks timed one at a time (round trips in us, sorted), then asks per
/// second with [`IN_FLIGHT`] at once.
async fn time_asks<F, Fut, E>(asks: Asks, ask: F) -> Result<(Vec<f64>, f64), BenchError>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), E>> + Send,
    E: std::fmt::Display + Send + 'static,
{
    let failed = |error: E| BenchError::Peer(error.to_string());
    let mut latencies = Vec::with_capacity(asks.sequential);
    for n in 0..asks.sequential as u64 {
        let sent = Instant::now();
        ask(n).await.map_err(failed)?;
        latencies.push(sent.elapsed().as_secs_f64() * 1e6);
    }
    latencies.sort_by(f64::total_cmp);
    let per_task = (asks.concurrent / IN_FLIGHT).max(1);
    let started = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let ask = ask.clone();
            tokio::spawn(async move {
                for n in 0..per_task as u64 {
                    ask(n).await?;
                }
                Ok::<_, E>(())
            })
        })
        .collect();
    for task in tasks {
        task.await
            .map_err(|error| BenchError::Peer(error.to_string()))?
            .map_err(failed)?;
    }
    let per_second = (per_task * IN_FLIGHT) as f64 / started.elapsed().as_secs_f64();
    Ok((latencies, per_second))
}

/// Asks in flight at once in the throughput runs.
const IN_FLIGHT: usize = 64;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

/// The parent's side: starts the peer process from `exe` and measures.
pub async fn run(
    exe: &std::path::Path,
    tells: u64,
    asks: usize,
    concurrent_asks: usize,
) -> Result<RemoteBench, BenchError> {
    let asks = Asks {
        sequential: asks,
        concurrent: concurrent_asks,
    };
    let secret: [u8; 32] = rand::random();
    let mut child = tokio::process::Command::new(exe)
        .args(["remote", "--serve"])
        .env(SECRET_ENV, hex::encode(secret))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| BenchError::Peer("no stdout".into()))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).await?;
    let mut addresses = line.split_whitespace().map(str::parse::<SocketAddr>);
    let (Some(Ok(peer)), Some(Ok(echo)), Some(Ok(peer_agents))) =
        (addresses.next(), addresses.next(), addresses.next())
    else {
        return Err(BenchError::Peer(format!("unexpected first line {line:?}")));
    };

    // AgentRef: this process and the peer in the view, one key each side.
    let (system, router, agents) = echo_node("bench-agents", &secret).await?;
    let placed = |node: &str, addr: SocketAddr| Placed {
        candidate: Candidate {
            node: node.to_owned(),
            kinds: vec![Echo::KIND.to_owned()],
            gpus: 0,
        },
        transport_addr: addr,
    };
    router.set_view(vec![
        placed("bench-agents", agents.local_addr()),
        placed("peer-agents", peer_agents),
    ]);
    let key_where = |remote: bool| {
        (0..)
            .map(|i| format!("k-{i}"))
            .find(|key| router.is_local(Echo::KIND, key) != remote)
            .expect("keys on both sides")
    };
    let agent_remote = measure_agent(system.agent_by_key(key_where(true)), tells, asks).await?;
    let agent_local = measure_agent(system.agent_by_key(key_where(false)), tells, asks).await?;
    system.shutdown();
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let ignore: Inbound = transport::each(|_: &Link, _: Envelope<'_>| None);
    let transport =
        Transport::bind(loopback, TransportConfig::new("bench", &secret), ignore).await?;
    let link = transport.link(peer).await?;
    let timeout = Duration::from_secs(30);

    // Tells: all sent, then counted on the far side.
    let started = Instant::now();
    for n in 0..tells {
        link.send(Frame::Message(envelope(TELL, n)))
            .await
            .map_err(|_| BenchError::Peer("the link closed".into()))?;
    }
    loop {
        let answer = transport.ask(peer, envelope(COUNT, 0), timeout).await?;
        let count = answer
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or_default();
        if count >= tells {
            break;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let tells_per_second = tells as f64 / started.elapsed().as_secs_f64();

    // Asks, one in flight, then 64.
    let ask = {
        let transport = transport.clone();
        move |n| {
            let transport = transport.clone();
            async move {
                transport
                    .ask(peer, envelope(ECHO, n), timeout)
                    .await
                    .map(drop)
            }
        }
    };
    let (latencies, asks_per_second_in_flight) = time_asks(asks, ask).await?;

    // The baseline: bare TCP ping-pong of 64-byte frames.
    let mut stream = TcpStream::connect(echo).await?;
    stream.set_nodelay(true)?;
    let mut pings = Vec::with_capacity(asks.sequential);
    let mut frame = [7u8; 64];
    for _ in 0..asks.sequential {
        let sent = Instant::now();
        stream.write_all(&frame).await?;
        stream.read_exact(&mut frame).await?;
        pings.push(sent.elapsed().as_secs_f64() * 1e6);
    }
    pings.sort_by(f64::total_cmp);
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    Ok(RemoteBench {
        agent_remote,
        agent_local,
        tells,
        tells_per_second,
        asks: asks.sequential,
        ask_p50_us: percentile(&latencies, 0.5),
        ask_p99_us: percentile(&latencies, 0.99),
        asks_in_flight: IN_FLIGHT,
        concurrent_asks: asks.concurrent,
        asks_per_second_in_flight,
        tcp_ping_p50_us: percentile(&pings, 0.5),
        tcp_ping_p99_us: percentile(&pings, 0.99),
    })
}
