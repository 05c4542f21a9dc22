//! `valueverse-bench http`: the HTTP API under a mixed load, on a cluster
//! of real node processes. The benchmark makes a PostgreSQL database of its
//! own, an editor API key in it (`valueverse apikey create`), and starts
//! `valueverse node` processes on loopback that share it (one cluster
//! secret, each seeded with every gossip address). Then `concurrency`
//! clients, each one request at a time, spread their requests round-robin
//! over the nodes' HTTP ports for a fixed time: value models created, read,
//! listed, patched and asked for hypotheses, small simulations started,
//! polled and their results read, commitments made on those results, plans
//! made on the commitments, the model's insights read, and `/health`.
//! Each request's latency (to the last byte of its answer) goes into the
//! histogram of its route (the pattern, not the URL); answers are counted
//! by class: 2xx, 4xx (the client's), and 5xx or no answer at all (a
//! transport error or a timeout), the last two against availability.
//!
//! With `otlp`, the benchmark also runs a minimal OTLP/HTTP receiver (it
//! answers 200 to `POST /v1/traces` and counts requests and bytes) and
//! starts the nodes with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at it, so
//! the same load is measured with trace export on. Without it, the
//! variable is removed from the nodes' environment.
//!
//! Every node is killed when the benchmark ends, however it ends (the
//! children are killed on drop, and Ctrl-C unwinds to there), and the
//! database is dropped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// The model every created model starts from (the README's example).
const ACME: &str = include_str!("../../docs/models/acme-support.json");

/// The p95 each route is held to, and the availability of the whole.
pub const P95_TARGET_MS: f64 = 100.0;
pub const AVAILABILITY_TARGET: f64 = 0.999;

/// Versions a model gets from the load's patches at most (a model keeps
/// 100; the load stays far from that limit).
const MAX_PATCHES: i64 = 20;

/// Simulations one client keeps unfinished at once (it polls them before
/// it starts another).
const PENDING_PER_CLIENT: usize = 2;

/// What one run is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub exe: PathBuf,
    /// `postgres://.../postgres`: where the benchmark makes its database.
    pub postgres_admin_url: String,
    pub nodes: usize,
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Paths of each simulation the load starts.
    pub paths: u64,
    pub otlp: bool,
}

/// One route's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RouteFigures {
    pub kind: &'static str,
    pub route: String,
    pub requests: u64,
    pub ok: u64,
    pub client_errors: u64,
    pub server_errors: u64,
    pub transport_errors: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub p95_under_target: bool,
}

/// What the OTLP receiver got.
#[derive(Debug, Clone, Serialize)]
pub struct OtlpFigures {
    /// `POST /v1/traces` requests, and their bodies' bytes.
    pub trace_requests: u64,
    pub trace_bytes: u64,
    /// Any other request (another signal, another path).
    pub other_requests: u64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct HttpBench {
    pub kind: &'static str,
    pub nodes: usize,
    pub concurrency: usize,
    pub paths: u64,
    pub seconds: f64,
    pub requests: u64,
    pub requests_per_second: f64,
    pub ok: u64,
    pub client_errors: u64,
    pub server_errors: u64,
    pub transport_errors: u64,
    /// Answers that were not 5xx and not missing, over all requests.
    pub availability: f64,
    pub availability_target: f64,
    pub availability_met: bool,
    pub p95_target_ms: f64,
    /// Routes whose p95 is at or above the target.
    pub routes_over_p95_target: Vec<String>,
    pub otlp: Option<OtlpFigures>,
    /// All routes together, then each route.
    pub total: RouteFigures,
    pub routes: Vec<RouteFigures>,
    /// A few of the refused and failed answers, to tell why.
    pub samples: Vec<String>,
}

/// Runs the benchmark; `progress` is told what it is doing.
pub async fn run(options: &Options, progress: impl Fn(&str)) -> anyhow::Result<HttpBench> {
    let mut run_dir = RunDir::create()?;
    // Made before the nodes, dropped after them (locals drop in reverse).
    progress("creating the database");
    let db = ScratchDb::create(&options.postgres_admin_url).await?;
    let sink = if options.otlp {
        Some(OtlpSink::start().await?)
    } else {
        None
    };
    let result = measure(options, &db, sink.as_ref(), &run_dir.path, &progress).await;
    progress("dropping the database");
    db.drop_now().await;
    if result.is_err() {
        run_dir.keep = true;
        eprintln!("the nodes' logs: {}", run_dir.path.display());
    }
    result
}

/// The run's files (the nodes' config and logs): removed at the end
/// unless kept to tell why the run failed.
struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl RunDir {
    fn create() -> std::io::Result<RunDir> {
        let path =
            std::env::temp_dir().join(format!("valueverse-bench-http-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path)?;
        Ok(RunDir { path, keep: false })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

async fn measure(
    options: &Options,
    db: &ScratchDb,
    sink: Option<&OtlpSink>,
    run_dir: &Path,
    progress: &impl Fn(&str),
) -> anyhow::Result<HttpBench> {
    progress("creating an API key");
    let key = api_key(&options.exe, &db.url)?;
    let config = run_dir.join("node.toml");
    std::fs::write(&config, node_config(options))?;
    let secret = hex::encode(rand::random::<[u8; 24]>());
    let ports: Vec<(u16, u16)> = (0..options.nodes)
        .map(|_| (free_port(), free_port()))
        .collect();
    let seeds: Vec<String> = ports
        .iter()
        .map(|(_, gossip)| format!("127.0.0.1:{gossip}"))
        .collect();
    let otlp_endpoint = sink.map(|sink| format!("http://{}", sink.addr));
    let mut cluster = Cluster { nodes: Vec::new() };
    for (index, &(transport, gossip)) in ports.iter().enumerate() {
        let name = format!("n{}", index + 1);
        progress(&format!("starting node {name}"));
        let node = NodeSpec {
            exe: &options.exe,
            name: &name,
            transport,
            gossip,
            seeds: &seeds,
            database_url: &db.url,
            config: &config,
            secret: &secret,
            otlp_endpoint: otlp_endpoint.as_deref(),
            log: &run_dir.join(format!("{name}.log")),
        };
        cluster.nodes.push(node.start().await?);
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(options.concurrency)
        .build()?;
    progress("waiting for every node to see the others");
    cluster.wait_for_members(&client, &key).await?;

    let load = Arc::new(Load {
        client,
        key,
        bases: cluster.nodes.iter().map(|node| node.base.clone()).collect(),
        next_node: AtomicUsize::new(0),
        pool: Mutex::new(Pool::default()),
        paths: options.paths,
        model: serde_json::from_str(ACME)?,
        model_count: AtomicU64::new(0),
    });
    progress(&format!(
        "load: {} clients, {:?} warm-up, {:?} measured",
        options.concurrency, options.warmup, options.duration
    ));
    let started = Instant::now();
    let record_from = started + options.warmup;
    let deadline = record_from + options.duration;
    let clients: Vec<_> = (0..options.concurrency)
        .map(|index| {
            let load = Arc::clone(&load);
            tokio::spawn(async move { load.client(index, record_from, deadline).await })
        })
        .collect();
    let mut stats = Stats::default();
    for client in clients {
        stats.merge(client.await.context("a client of the load panicked")?);
    }
    let seconds = record_from.elapsed().as_secs_f64();

    // A clean stop, so that the nodes' exporters flush their last spans.
    progress("stopping the nodes");
    cluster.stop().await;
    let otlp = sink.map(OtlpSink::figures);
    Ok(stats.figures(options, seconds, otlp))
}

/// The node's configuration for the load: one API key stands for all the
/// clients, so its per-key limits are lifted (the defaults, 50 requests/s
/// and 32 in flight, are for one caller among many); simulation jobs per
/// submitter fit the clients' (each keeps at most two unfinished), and a
/// simulation of the load's size counts as evidence for a commitment.
fn node_config(options: &Options) -> String {
    let jobs = (PENDING_PER_CLIENT * options.concurrency).max(16);
    format!(
        "[limits]\nrequests_per_second = 1000000\nburst = 1000000\nin_flight_per_key = 1000000\n\n\
         [simulation]\nmax_jobs_per_submitter = {jobs}\nqueue_capacity = {}\nmin_evidence_paths = {}\n",
        jobs.clamp(64, 100_000),
        options.paths
    )
}

/// `valueverse apikey create` on the database: an editor key of the
/// `default` tenant.
fn api_key(exe: &Path, database_url: &str) -> anyhow::Result<String> {
    let output = std::process::Command::new(exe)
        .args([
            "apikey",
            "create",
            "--role",
            "editor",
            "--name",
            "bench-http",
        ])
        .args(["--database-url", database_url])
        .env("VALUEVERSE_LOG", "error")
        .output()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    if !output.status.success() {
        bail!(
            "`valueverse apikey create` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let key = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !key.starts_with("vv_") {
        bail!("`valueverse apikey create` printed no key: {key:?}");
    }
    Ok(key)
}

/// A free port for TCP and for UDP (the transport and gossip bind it;
/// another process may take it first, which on loopback is rare).
fn free_port() -> u16 {
    loop {
        let Ok(tcp) = std::net::TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = tcp.local_addr() else {
            continue;
        };
        if std::net::UdpSocket::bind(("127.0.0.1", addr.port())).is_ok() {
            return addr.port();
        }
    }
}

/// A PostgreSQL database of the run's own; dropped by [`ScratchDb::drop_now`]
/// or, when the run fails before that, on drop.
struct ScratchDb {
    admin_url: String,
    name: String,
    url: String,
    dropped: bool,
}

impl ScratchDb {
    async fn create(admin_url: &str) -> anyhow::Result<ScratchDb> {
        let name = format!("vv_bench_http_{}", uuid::Uuid::new_v4().simple());
        psql(admin_url, &format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| {
                format!(
                    "cannot create the benchmark's database (PostgreSQL must run at {admin_url})"
                )
            })?;
        let base = admin_url
            .split_once('?')
            .map_or(admin_url, |(base, _)| base)
            .rsplit_once('/')
            .map_or(admin_url, |(base, _)| base);
        Ok(ScratchDb {
            admin_url: admin_url.to_owned(),
            url: format!("{base}/{name}"),
            name,
            dropped: false,
        })
    }

    async fn drop_database(admin_url: &str, name: &str) {
        let _ = psql(
            admin_url,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        )
        .await;
    }

    async fn drop_now(mut self) {
        Self::drop_database(&self.admin_url, &self.name).await;
        self.dropped = true;
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // Dropped while unwinding an error: a runtime of its own on a
        // thread, as this one may be shutting down.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropping = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(ScratchDb::drop_database(&admin_url, &name));
            }
        });
        let _ = dropping.join();
    }
}

/// How one node is started.
struct NodeSpec<'a> {
    exe: &'a Path,
    name: &'a str,
    transport: u16,
    gossip: u16,
    seeds: &'a [String],
    database_url: &'a str,
    config: &'a Path,
    secret: &'a str,
    otlp_endpoint: Option<&'a str>,
    /// Its stderr (the log) goes here.
    log: &'a Path,
}

/// A node process; killed when dropped.
struct NodeProc {
    name: String,
    child: tokio::process::Child,
    /// `http://host:port`.
    base: String,
    log: PathBuf,
}

impl NodeSpec<'_> {
    async fn start(&self) -> anyhow::Result<NodeProc> {
        let log = std::fs::File::create(self.log)?;
        let mut command = tokio::process::Command::new(self.exe);
        command
            .args(["node", "--name", self.name, "--http", "127.0.0.1:0"])
            .args(["--listen", &format!("127.0.0.1:{}", self.transport)])
            .args(["--gossip", &format!("127.0.0.1:{}", self.gossip)])
            .args(["--seeds", &self.seeds.join(",")])
            .args(["--database-url", self.database_url])
            .arg("--config")
            .arg(self.config)
            .env("VALUEVERSE_CLUSTER_SECRET", self.secret)
            .env("VALUEVERSE_LOG", "warn")
            // Keys are checked: the load is measured as production runs.
            .env_remove("VALUEVERSE_DEV")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        match self.otlp_endpoint {
            Some(endpoint) => command.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            None => command.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT"),
        };
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot run {}", self.exe.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let listening = async {
            while let Some(line) = lines.next_line().await? {
                if let Some((_, addr)) = line.rsplit_once("listening on http://") {
                    return Ok(Some(addr.trim().to_owned()));
                }
            }
            Ok::<_, std::io::Error>(None)
        };
        let why = match tokio::time::timeout(Duration::from_secs(60), listening).await {
            Ok(Ok(Some(addr))) => Ok(addr),
            Err(_) => Err("did not listen within 60 s".to_owned()),
            Ok(Err(error)) => Err(error.to_string()),
            Ok(Ok(None)) => Err("exited before listening".to_owned()),
        };
        let addr = match why {
            Ok(addr) => addr,
            Err(why) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                bail!(
                    "node {}: {why}; its log ends with:\n{}",
                    self.name,
                    log_tail(self.log)
                );
            }
        };
        // Keep reading, so that the node never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(NodeProc {
            name: self.name.to_owned(),
            child,
            base: format!("http://{addr}"),
            log: self.log.to_owned(),
        })
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The node processes; each is killed when this is dropped.
struct Cluster {
    nodes: Vec<NodeProc>,
}

impl Cluster {
    /// Waits until every node sees every node alive.
    async fn wait_for_members(
        &mut self,
        client: &reqwest::Client,
        key: &str,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let wanted = self.nodes.len();
        for index in 0..self.nodes.len() {
            loop {
                let node = &mut self.nodes[index];
                if let Ok(Some(status)) = node.child.try_wait() {
                    bail!(
                        "node {} exited ({status}); its log ends with:\n{}",
                        node.name,
                        log_tail(&node.log)
                    );
                }
                let view = client
                    .get(format!("{}/api/v1/cluster", node.base))
                    .bearer_auth(key)
                    .send()
                    .await;
                let alive = match view {
                    Ok(response) if response.status().is_success() => response
                        .json::<Value>()
                        .await
                        .ok()
                        .and_then(|view| {
                            view["members"].as_array().map(|members| {
                                members
                                    .iter()
                                    .filter(|member| member["state"] == "alive")
                                    .count()
                            })
                        })
                        .unwrap_or(0),
                    _ => 0,
                };
                if alive == wanted {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "node {} saw {alive} of {wanted} nodes alive after 60 s",
                        node.name
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// SIGTERM to every node, then up to 15 s for them to finish; those
    /// still running are killed.
    async fn stop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        for node in &self.nodes {
            if let Some(pid) = node.child.id().and_then(|pid| i32::try_from(pid).ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        for node in &mut self.nodes {
            if tokio::time::timeout(Duration::from_secs(15), node.child.wait())
                .await
                .is_err()
            {
                let _ = node.child.kill().await;
            }
        }
    }
}

/// What the clients share: the nodes, the key, and the ids made so far.
struct Load {
    client: reqwest::Client,
    key: String,
    /// Each node's `http://host:port`; requests go round-robin.
    bases: Vec<String>,
    next_node: AtomicUsize,
    pool: Mutex<Pool>,
    paths: u64,
    model: Value,
    model_count: AtomicU64,
}

/// Ids the load made, for the requests that need one.
#[derive(Default)]
struct Pool {
    models: Vec<String>,
    /// Finished simulations; `taken`: its results already made a
    /// commitment's target.
    done: Vec<DoneSim>,
    /// A finished simulation's model and version, with a target it backs.
    committable: Vec<(String, i64, f64)>,
    commitments: Vec<String>,
    /// Plans with their model.
    plans: Vec<(String, String)>,
}

struct DoneSim {
    id: String,
    model_id: String,
    model_version: i64,
    taken: bool,
}

/// What one client keeps to itself: the models it made (it alone patches
/// them, so patches never race) and its unfinished simulations.
#[derive(Default)]
struct Own {
    models: Vec<(String, i64)>,
    pending: Vec<(String, String)>,
    /// What the next commitment stands on, taken from the pool when the
    /// operation was chosen (another client cannot take it meanwhile).
    commit: Option<(String, i64, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Health,
    ListModels,
    CreateModel,
    GetModel,
    PatchModel,
    Hypotheses,
    SubmitSim,
    GetSim,
    SimResults,
    Commit,
    GetCommitment,
    CreatePlan,
    GetPlan,
    Insights,
}

/// The mix: each operation's share, in percent. One that needs what
/// does not exist yet makes it instead (a commitment with no finished
/// simulation polls one, or starts one, or creates a model).
const MIX: [(Op, u32); 14] = [
    (Op::Health, 5),
    (Op::ListModels, 10),
    (Op::CreateModel, 8),
    (Op::GetModel, 25),
    (Op::PatchModel, 4),
    (Op::Hypotheses, 5),
    (Op::SubmitSim, 6),
    (Op::GetSim, 10),
    (Op::SimResults, 5),
    (Op::Commit, 4),
    (Op::GetCommitment, 4),
    (Op::CreatePlan, 3),
    (Op::GetPlan, 6),
    (Op::Insights, 5),
];

/// How a request ended.
enum Answer {
    /// A status and, for a 2xx, its JSON body (when it had one).
    Status(u16, Option<Value>),
    /// No answer: the connection failed or the request timed out.
    Transport,
}

impl Load {
    /// One client: requests one after another until `deadline`; those
    /// sent from `record_from` on are measured.
    async fn client(&self, index: usize, record_from: Instant, deadline: Instant) -> Stats {
        let mut rng = StdRng::seed_from_u64(rand::random::<u64>() ^ index as u64);
        let mut own = Own::default();
        let mut stats = Stats::default();
        let total: u32 = MIX.iter().map(|(_, weight)| weight).sum();
        while Instant::now() < deadline {
            let mut pick = rng.random_range(0..total);
            let mut op = Op::Health;
            for &(candidate, weight) in &MIX {
                if pick < weight {
                    op = candidate;
                    break;
                }
                pick -= weight;
            }
            let op = self.feasible(op, &mut own);
            let sent = Instant::now();
            let (route, answer) = self.call(op, &mut own, &mut rng).await;
            let elapsed = sent.elapsed();
            if sent >= record_from {
                stats.record(route, &answer, elapsed);
            }
            if let Answer::Status(status, _) = &answer
                && *status >= 500
            {
                // A refusing node is not hammered in a tight loop.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        stats
    }

    /// `op`, or what it needs made first.
    fn feasible(&self, mut op: Op, own: &mut Own) -> Op {
        let mut pool = self.pool.lock().expect("the pool");
        loop {
            let next = match op {
                Op::GetModel | Op::Hypotheses if pool.models.is_empty() => Op::CreateModel,
                Op::PatchModel if !own.models.iter().any(|(_, v)| *v < MAX_PATCHES) => {
                    Op::CreateModel
                }
                Op::SubmitSim if pool.models.is_empty() => Op::CreateModel,
                Op::SubmitSim if own.pending.len() >= PENDING_PER_CLIENT => Op::GetSim,
                Op::GetSim if own.pending.is_empty() && pool.done.is_empty() => Op::SubmitSim,
                Op::SimResults if pool.done.is_empty() => Op::GetSim,
                Op::Commit if pool.committable.is_empty() => Op::SimResults,
                Op::GetCommitment | Op::CreatePlan if pool.commitments.is_empty() => Op::Commit,
                Op::GetPlan | Op::Insights if pool.plans.is_empty() => Op::CreatePlan,
                Op::Commit => {
                    let at = rand::rng().random_range(0..pool.committable.len());
                    own.commit = Some(pool.committable.swap_remove(at));
                    return op;
                }
                _ => return op,
            };
            op = next;
        }
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().expect("the pool")
    }

    fn any<T: Clone>(items: &[T], rng: &mut StdRng) -> Option<T> {
        (!items.is_empty()).then(|| items[rng.random_range(0..items.len())].clone())
    }

    /// Makes the request of `op`; answers its route and how it ended, and
    /// keeps what it made.
    async fn call(&self, op: Op, own: &mut Own, rng: &mut StdRng) -> (&'static str, Answer) {
        use reqwest::Method;
        let pool = Load::pool;
        match op {
            Op::Health => ("GET /health", self.send(Method::GET, "/health", None).await),
            Op::ListModels => {
                let path = if rng.random_bool(0.5) {
                    "/api/v1/value-models?limit=20".to_owned()
                } else {
                    format!(
                        "/api/v1/value-models?customer=customer-{}&limit=20",
                        rng.random_range(0..10)
                    )
                };
                (
                    "GET /api/v1/value-models",
                    self.send(Method::GET, &path, None).await,
                )
            }
            Op::CreateModel => {
                let n = self.model_count.fetch_add(1, Ordering::Relaxed);
                let mut model = self.model.clone();
                model["name"] = json!(format!("bench model {n}"));
                model["customer"] = json!(format!("customer-{}", n % 10));
                let answer = self
                    .send(Method::POST, "/api/v1/value-models", Some(model))
                    .await;
                if let Some(id) = created_id(&answer) {
                    own.models.push((id.clone(), 1));
                    pool(self).models.push(id);
                }
                ("POST /api/v1/value-models", answer)
            }
            Op::GetModel => {
                let id = Self::any(&pool(self).models, rng).unwrap_or_default();
                let path = format!("/api/v1/value-models/{id}");
                (
                    "GET /api/v1/value-models/{id}",
                    self.send(Method::GET, &path, None).await,
                )
            }
            Op::PatchModel => {
                let patchable: Vec<usize> = (0..own.models.len())
                    .filter(|&i| own.models[i].1 < MAX_PATCHES)
                    .collect();
                let index = patchable[rng.random_range(0..patchable.len())];
                let path = format!("/api/v1/value-models/{}", own.models[index].0);
                let patch = json!({ "discount_rate": rng.random_range(0.05..0.15) });
                let answer = self.send(Method::PATCH, &path, Some(patch)).await;
                if let Answer::Status(200, Some(body)) = &answer
                    && let Some(version) = body["version"].as_i64()
                {
                    own.models[index].1 = version;
                }
                ("PATCH /api/v1/value-models/{id}", answer)
            }
            Op::Hypotheses => {
                let id = Self::any(&pool(self).models, rng).unwrap_or_default();
                let path = format!("/api/v1/value-models/{id}/hypotheses");
                (
                    "POST /api/v1/value-models/{id}/hypotheses",
                    self.send(Method::POST, &path, Some(json!({ "limit": 3 })))
                        .await,
                )
            }
            Op::SubmitSim => {
                let model_id = Self::any(&pool(self).models, rng).unwrap_or_default();
                let body = json!({ "model_id": model_id, "paths": self.paths });
                let answer = self
                    .send(Method::POST, "/api/v1/simulations", Some(body))
                    .await;
                if let Some(id) = created_id(&answer) {
                    own.pending.push((id, model_id));
                }
                ("POST /api/v1/simulations", answer)
            }
            Op::GetSim => {
                // Its own unfinished one, oldest first; else any finished.
                let (id, waiting) = match own.pending.first() {
                    Some((id, _)) => (id.clone(), true),
                    None => {
                        let pool = pool(self);
                        let at = rng.random_range(0..pool.done.len());
                        (pool.done[at].id.clone(), false)
                    }
                };
                let path = format!("/api/v1/simulations/{id}");
                let answer = self.send(Method::GET, &path, None).await;
                if waiting && let Answer::Status(200, Some(job)) = &answer {
                    match job["status"].as_str() {
                        Some("done") => {
                            let (id, model_id) = own.pending.remove(0);
                            pool(self).done.push(DoneSim {
                                id,
                                model_id,
                                model_version: job["model_version"].as_i64().unwrap_or(1),
                                taken: false,
                            });
                        }
                        Some("failed" | "cancelled") => {
                            own.pending.remove(0);
                        }
                        _ => {}
                    }
                }
                ("GET /api/v1/simulations/{id}", answer)
            }
            Op::SimResults => {
                let (at, id) = {
                    let pool = pool(self);
                    let at = rng.random_range(0..pool.done.len());
                    (at, pool.done[at].id.clone())
                };
                let path = format!("/api/v1/simulations/{id}/results");
                let answer = self.send(Method::GET, &path, None).await;
                // P20 (the quantile a commitment at 0.8 stands on), less
                // half its size: a target the run backs.
                if let Answer::Status(200, Some(body)) = &answer
                    && let Some(p20) = body["result"]["npv_quantiles"][19].as_f64()
                {
                    let mut pool = pool(self);
                    let done = &mut pool.done[at];
                    if !done.taken {
                        done.taken = true;
                        let entry = (
                            done.model_id.clone(),
                            done.model_version,
                            (p20 - p20.abs() / 2.0).round(),
                        );
                        pool.committable.push(entry);
                    }
                }
                ("GET /api/v1/simulations/{id}/results", answer)
            }
            Op::Commit => {
                let (model_id, model_version, target) = own.commit.take().unwrap_or_default();
                let today = chrono::Utc::now().date_naive();
                let due = today + chrono::Days::new(90);
                let body = json!({
                    "model_id": model_id,
                    "model_version": model_version,
                    "confidence": 0.8,
                    "target": target,
                    "terms": { "fixed_fee": 1000, "outcome_share": 0.1, "cap": null },
                    "milestones": [{ "name": "go live", "due_date": due, "expected_value": 1000 }],
                });
                let answer = self
                    .send(Method::POST, "/api/v1/commitments", Some(body))
                    .await;
                if let Some(id) = created_id(&answer) {
                    pool(self).commitments.push(id);
                }
                ("POST /api/v1/commitments", answer)
            }
            Op::GetCommitment => {
                let id = Self::any(&pool(self).commitments, rng).unwrap_or_default();
                let path = format!("/api/v1/commitments/{id}");
                (
                    "GET /api/v1/commitments/{id}",
                    self.send(Method::GET, &path, None).await,
                )
            }
            Op::CreatePlan => {
                let commitment = Self::any(&pool(self).commitments, rng).unwrap_or_default();
                let due = chrono::Utc::now().date_naive() + chrono::Days::new(30);
                let body = json!({
                    "commitment_id": commitment,
                    "tasks": [{ "name": "kick-off", "owner": "ops", "due_date": due, "milestone": "go live" }],
                });
                let answer = self.send(Method::POST, "/api/v1/plans", Some(body)).await;
                if let Some(id) = created_id(&answer)
                    && let Answer::Status(_, Some(plan)) = &answer
                {
                    let model_id = plan["model_id"].as_str().unwrap_or_default().to_owned();
                    pool(self).plans.push((id, model_id));
                }
                ("POST /api/v1/plans", answer)
            }
            Op::GetPlan => {
                let (id, _) = Self::any(&pool(self).plans, rng).unwrap_or_default();
                let path = format!("/api/v1/plans/{id}");
                (
                    "GET /api/v1/plans/{id}",
                    self.send(Method::GET, &path, None).await,
                )
            }
            Op::Insights => {
                let (_, model_id) = Self::any(&pool(self).plans, rng).unwrap_or_default();
                let path = format!("/api/v1/amplifications/{model_id}/insights");
                (
                    "GET /api/v1/amplifications/{model_id}/insights",
                    self.send(Method::GET, &path, None).await,
                )
            }
        }
    }

    /// One request to the next node in turn, timed to the last byte of
    /// its answer by the caller.
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Answer {
        let node = self.next_node.fetch_add(1, Ordering::Relaxed) % self.bases.len();
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.bases[node]))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let Ok(response) = request.send().await else {
            return Answer::Transport;
        };
        let status = response.status().as_u16();
        let Ok(bytes) = response.bytes().await else {
            return Answer::Transport;
        };
        let json = if (200..300).contains(&status) {
            serde_json::from_slice(&bytes).ok()
        } else {
            // The error's JSON, kept to say why.
            Some(Value::String(
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned(),
            ))
        };
        Answer::Status(status, json)
    }
}

/// The `id` of a 2xx answer's body.
fn created_id(answer: &Answer) -> Option<String> {
    match answer {
        Answer::Status(200..=299, Some(body)) => body["id"].as_str().map(str::to_owned),
        _ => None,
    }
}

/// One route's counts and latencies (microseconds).
struct RouteStats {
    latency: Histogram<u64>,
    ok: u64,
    client_errors: u64,
    server_errors: u64,
    transport_errors: u64,
}

impl RouteStats {
    fn new() -> RouteStats {
        RouteStats {
            // 1 us to 10 min, 3 significant digits.
            latency: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
            ok: 0,
            client_errors: 0,
            server_errors: 0,
            transport_errors: 0,
        }
    }

    fn add(&mut self, other: &RouteStats) {
        let _ = self.latency.add(&other.latency);
        self.ok += other.ok;
        self.client_errors += other.client_errors;
        self.server_errors += other.server_errors;
        self.transport_errors += other.transport_errors;
    }

    fn figures(&self, route: &str) -> RouteFigures {
        let ms = |us: u64| us as f64 / 1000.0;
        let p95_ms = ms(self.latency.value_at_quantile(0.95));
        RouteFigures {
            kind: "route",
            route: route.to_owned(),
            requests: self.latency.len(),
            ok: self.ok,
            client_errors: self.client_errors,
            server_errors: self.server_errors,
            transport_errors: self.transport_errors,
            p50_ms: ms(self.latency.value_at_quantile(0.5)),
            p95_ms,
            p99_ms: ms(self.latency.value_at_quantile(0.99)),
            max_ms: ms(self.latency.max()),
            p95_under_target: p95_ms < P95_TARGET_MS,
        }
    }
}

/// What one client measured.
#[derive(Default)]
struct Stats {
    routes: BTreeMap<&'static str, RouteStats>,
    samples: Vec<String>,
}

/// Answers kept to tell why requests were refused or failed.
const SAMPLES: usize = 8;

impl Stats {
    fn record(&mut self, route: &'static str, answer: &Answer, elapsed: Duration) {
        let stats = self.routes.entry(route).or_insert_with(RouteStats::new);
        let us = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        stats.latency.saturating_record(us);
        let sample = match answer {
            Answer::Status(200..=299, _) => {
                stats.ok += 1;
                None
            }
            Answer::Status(status @ 400..=499, body) => {
                stats.client_errors += 1;
                Some(format!("{route}: {status} {}", sample_text(body)))
            }
            Answer::Status(status, body) => {
                stats.server_errors += 1;
                Some(format!("{route}: {status} {}", sample_text(body)))
            }
            Answer::Transport => {
                stats.transport_errors += 1;
                Some(format!("{route}: no answer"))
            }
        };
        if let Some(sample) = sample
            && self.samples.len() < SAMPLES
        {
            self.samples.push(sample);
        }
    }

    fn merge(&mut self, other: Stats) {
        for (route, stats) in other.routes {
            self.routes
                .entry(route)
                .or_insert_with(RouteStats::new)
                .add(&stats);
        }
        for sample in other.samples {
            if self.samples.len() < SAMPLES {
                self.samples.push(sample);
            }
        }
    }

    fn figures(&self, options: &Options, seconds: f64, otlp: Option<OtlpFigures>) -> HttpBench {
        let mut all = RouteStats::new();
        for stats in self.routes.values() {
            all.add(stats);
        }
        let total = all.figures("all routes");
        let routes: Vec<RouteFigures> = self
            .routes
            .iter()
            .map(|(route, stats)| stats.figures(route))
            .collect();
        let failed = total.server_errors + total.transport_errors;
        let availability = if total.requests == 0 {
            0.0
        } else {
            1.0 - failed as f64 / total.requests as f64
        };
        HttpBench {
            kind: "total",
            nodes: options.nodes,
            concurrency: options.concurrency,
            paths: options.paths,
            seconds,
            requests: total.requests,
            requests_per_second: total.requests as f64 / seconds,
            ok: total.ok,
            client_errors: total.client_errors,
            server_errors: total.server_errors,
            transport_errors: total.transport_errors,
            availability,
            availability_target: AVAILABILITY_TARGET,
            availability_met: total.requests > 0 && availability >= AVAILABILITY_TARGET,
            p95_target_ms: P95_TARGET_MS,
            routes_over_p95_target: routes
                .iter()
                .filter(|route| !route.p95_under_target)
                .map(|route| route.route.clone())
                .collect(),
            otlp,
            total,
            routes,
            samples: self.samples.clone(),
        }
    }
}

fn sample_text(body: &Option<Value>) -> String {
    match body {
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// A minimal OTLP/HTTP receiver: HTTP/1.1 with keep-alive, bodies by
/// length or chunked; `POST /v1/traces` is answered 200 (an empty export
/// response), and counted with its body's bytes.
struct OtlpSink {
    addr: SocketAddr,
    counts: Arc<SinkCounts>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct SinkCounts {
    trace_requests: AtomicU64,
    trace_bytes: AtomicU64,
    other_requests: AtomicU64,
}

impl OtlpSink {
    async fn start() -> anyhow::Result<OtlpSink> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(SinkCounts::default());
        let counted = Arc::clone(&counts);
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counts = Arc::clone(&counted);
                tokio::spawn(async move {
                    let _ = serve_otlp(stream, &counts).await;
                });
            }
        });
        Ok(OtlpSink {
            addr,
            counts,
            accept,
        })
    }

    fn figures(&self) -> OtlpFigures {
        OtlpFigures {
            trace_requests: self.counts.trace_requests.load(Ordering::Relaxed),
            trace_bytes: self.counts.trace_bytes.load(Ordering::Relaxed),
            other_requests: self.counts.other_requests.load(Ordering::Relaxed),
        }
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Serves one connection of the OTLP receiver until it closes.
async fn serve_otlp(stream: tokio::net::TcpStream, counts: &SinkCounts) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let (mut length, mut chunked, mut close, mut json) = (0u64, false, false, false);
        loop {
            line.clear();
            if reader.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let value = value.trim().to_ascii_lowercase();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().unwrap_or(0),
                "transfer-encoding" => chunked = value.contains("chunked"),
                "connection" => close = value.contains("close"),
                "content-type" => json = value.contains("json"),
                _ => {}
            }
        }
        let mut body = 0;
        if chunked {
            loop {
                line.clear();
                reader.read_line(&mut line).await?;
                let size_text = line.trim().split(';').next().unwrap_or_default();
                let size = u64::from_str_radix(size_text, 16).unwrap_or(0);
                if size == 0 {
                    // Trailers, up to the empty line.
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).await? == 0 || line.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                body +=
                    tokio::io::copy(&mut (&mut reader).take(size), &mut tokio::io::sink()).await?;
                line.clear();
                reader.read_line(&mut line).await?;
            }
        } else {
            body = tokio::io::copy(&mut (&mut reader).take(length), &mut tokio::io::sink()).await?;
        }
        let traces = method == "POST" && path.split('?').next() == Some("/v1/traces");
        let response: &[u8] = if traces {
            counts.trace_requests.fetch_add(1, Ordering::Relaxed);
            counts.trace_bytes.fetch_add(body, Ordering::Relaxed);
            if json {
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
            }
        } else {
            counts.other_requests.fetch_add(1, Ordering::Relaxed);
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        };
        reader.get_mut().write_all(response).await?;
        if close {
            return Ok(());
        }
    }
}

/// Runs one statement with `psql` (only the store crate links a database
/// driver: ARCHITECTURE.md's crate rules).
async fn psql(admin_url: &str, sql: &str) -> anyhow::Result<()> {
    let output = tokio::process::Command::new("psql")
        .args([admin_url, "-v", "ON_ERROR_STOP=1", "-qc", sql])
        .output()
        .await
        .context("cannot run psql")?;
    if output.status.success() {
        Ok(())
    } else {
        anyhow::bail!("psql: {}", String::from_utf8_lossy(&output.stderr).trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_otlp_sink_counts_trace_exports_by_length_and_chunked() {
        let sink = OtlpSink::start().await.unwrap();
        let client = reqwest::Client::new();
        let url = format!("http://{}/v1/traces", sink.addr);
        let response = client
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .body(vec![7u8; 1000])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        // A chunked body, on a connection kept open for a second request.
        let mut stream = tokio::net::TcpStream::connect(sink.addr).await.unwrap();
        let chunked = "POST /v1/traces HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
                       a\r\n0123456789\r\n14;ext=1\r\n01234567890123456789\r\n0\r\n\r\n";
        for _ in 0..2 {
            stream.write_all(chunked.as_bytes()).await.unwrap();
            let mut answer = [0u8; 12];
            stream.read_exact(&mut answer).await.unwrap();
            assert_eq!(&answer, b"HTTP/1.1 200");
            let mut rest = [0u8; 70];
            let _ = stream.read(&mut rest).await.unwrap();
        }
        let response = client
            .post(format!("http://{}/v1/metrics", sink.addr))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        let figures = sink.figures();
        assert_eq!(figures.trace_requests, 3);
        assert_eq!(figures.trace_bytes, 1060);
        assert_eq!(figures.other_requests, 1);
    }

    #[test]
    fn every_operation_resolves_to_one_it_can_make() {
        let load = Load {
            client: reqwest::Client::new(),
            key: String::new(),
            bases: vec![String::new()],
            next_node: AtomicUsize::new(0),
            pool: Mutex::new(Pool::default()),
            paths: 1,
            model: Value::Null,
            model_count: AtomicU64::new(0),
        };
        // With nothing made yet, everything starts with a model.
        for (op, _) in MIX {
            let expected = if op == Op::Health || op == Op::ListModels {
                op
            } else {
                Op::CreateModel
            };
            assert_eq!(load.feasible(op, &mut Own::default()), expected, "{op:?}");
        }
        load.pool.lock().unwrap().models.push("m".into());
        let mut busy = Own {
            pending: vec![("s1".into(), "m".into()), ("s2".into(), "m".into())],
            ..Own::default()
        };
        assert_eq!(load.feasible(Op::Insights, &mut busy), Op::GetSim);
        assert_eq!(
            load.feasible(Op::Insights, &mut Own::default()),
            Op::SubmitSim
        );
        // A commitment takes what it stands on when it is chosen.
        load.pool
            .lock()
            .unwrap()
            .committable
            .push(("m".into(), 1, 5.0));
        let mut own = Own::default();
        assert_eq!(load.feasible(Op::Insights, &mut own), Op::Commit);
        assert_eq!(own.commit, Some(("m".into(), 1, 5.0)));
        assert!(load.pool.lock().unwrap().committable.is_empty());
    }
}
