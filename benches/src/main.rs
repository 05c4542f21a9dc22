//! `valueverse-bench ...`: ValueVerse's benchmarks, each with its baseline
//! in the same run (BENCHMARKS.md has the figures). They live outside the
//! library and the `valueverse` binary: a production build compiles none
//! of this code and none of its dependencies.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use valueverse::Config;

mod dashboard;
mod http;
mod import;
mod process;
mod remote;
mod sagas;
mod stalled;

// The node's allocator, so that what runs in this process (the sagas, the
// remote agents) is measured as a node runs it; counting its live bytes
// (two relaxed atomic adds an allocation) for the import's memory.
#[global_allocator]
static ALLOCATOR: import::Counting = import::Counting;

/// ValueVerse's benchmarks, each beside its baseline in the same run.
#[derive(Parser)]
#[command(name = "valueverse-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Value-creation sagas per second end to end, with p50/p99 latency.
    Sagas(BenchSagasArgs),
    /// The cluster transport between two node processes on loopback: tells
    /// per second, ask round trips, beside a bare TCP ping-pong.
    Remote(BenchRemoteArgs),
    /// What the dashboard costs a node: its CPU with nobody watching, then
    /// with viewers connected.
    Dashboard(BenchDashboardArgs),
    /// One key's stalled request bodies against a node: its memory, the
    /// slowest /health and another key's requests, with the per-caller
    /// limits lifted (the baseline) and on.
    StalledBodies(BenchStalledArgs),
    /// The heap an import of deliveries takes while its file is read (CSV,
    /// .xlsx), per 10,000 rows, beside the file's size.
    Import(BenchImportArgs),
    /// The HTTP API under a mixed load on a cluster of node processes on
    /// loopback (a PostgreSQL database of its own): per route count, p50,
    /// p95, p99 and max latency against p95 < 100 ms, and availability
    /// against 99.9%.
    Http(BenchHttpArgs),
}

#[derive(Args)]
struct BenchHttpArgs {
    /// How long the load is measured (after the warm-up), e.g. 20s, 1m.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Load before the measurement, not recorded.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Clients, each with one request in flight.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    concurrency: u64,
    /// Node processes of the cluster.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    nodes: u64,
    /// Paths of each simulation the load starts (small: the API is measured).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    paths: u64,
    /// The release `valueverse` binary the nodes run [default: the one beside this executable].
    #[arg(
        long = "release-bin",
        visible_alias = "valueverse",
        env = "VALUEVERSE_RELEASE_BIN",
        value_name = "PATH"
    )]
    release_bin: Option<PathBuf>,
    /// PostgreSQL's maintenance database, where the benchmark creates (and
    /// drops) a database of its own.
    #[arg(
        long,
        value_name = "URL",
        env = "VALUEVERSE_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres: String,
    /// Export the nodes' traces (OTLP/HTTP) to a receiver in this process,
    /// and count what it gets.
    #[arg(long)]
    otlp: bool,
    /// Print the results as JSON lines (each route, then the total).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchImportArgs {
    /// Rows of each file measured in turn.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    rows: Vec<usize>,
    /// Print the results as JSON lines.
    #[arg(long)]
    json: bool,
}

/// The `valueverse` binary a benchmark runs as its node.
#[derive(Args)]
struct NodeBinary {
    /// [default: the `valueverse` beside this executable]
    #[arg(long = "valueverse", value_name = "PATH")]
    path: Option<PathBuf>,
}

#[derive(Args)]
struct BenchStalledArgs {
    /// Connections that each send all but one byte of a 1 MiB body.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..=15_000))]
    connections: u64,
    #[command(flatten)]
    node: NodeBinary,
    /// Print the results as JSON lines.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchDashboardArgs {
    #[command(flatten)]
    node: NodeBinary,
    /// Viewer counts measured in turn (the first is the baseline).
    #[arg(long, value_delimiter = ',', default_value = "0,1,10", value_parser = clap::value_parser!(u16).range(0..=1000))]
    viewers: Vec<u16>,
    /// Seconds measured per viewer count.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(2..=3600))]
    seconds: u64,
    /// Print the results as JSON lines.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchRemoteArgs {
    /// Tells sent one way.
    #[arg(long, default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    tells: u64,
    /// Asks timed one at a time.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(64..=10_000_000))]
    asks: u64,
    /// Asks sent with 64 in flight (asks/s is measured over all of them).
    #[arg(long, default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(64..=100_000_000))]
    concurrent_asks: u64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Be the peer process (started by the benchmark itself).
    #[arg(long, hide = true)]
    serve: bool,
}

#[derive(Args)]
struct BenchSagasArgs {
    /// Sagas in flight at once; a list runs each in turn.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    concurrency: Vec<usize>,
    /// Sagas per concurrency level.
    #[arg(long, default_value_t = 500)]
    sagas: usize,
    /// Paths of each saga's simulation (small: the saga machinery is measured).
    #[arg(long, default_value_t = 1000)]
    paths: u64,
    /// A scratch database: sqlite://FILE or postgres://... [default: a new SQLite file in the temp directory].
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Print the results as JSON lines.
    #[arg(long)]
    json: bool,
    /// Also print the mean time of each step.
    #[arg(long)]
    steps: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one benchmark.
async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Sagas(args) => bench_sagas(args).await,
        BenchCommand::Remote(args) => bench_remote(args).await,
        BenchCommand::Dashboard(args) => bench_dashboard(args).await,
        BenchCommand::StalledBodies(args) => bench_stalled(args).await,
        BenchCommand::Import(args) => bench_import(args),
        BenchCommand::Http(args) => {
            // Ctrl-C unwinds, so that the nodes are killed and the
            // database dropped.
            tokio::select! {
                result = bench_http(args) => result,
                _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
            }
        }
    }
}

async fn bench_http(args: BenchHttpArgs) -> anyhow::Result<()> {
    let options = http::Options {
        exe: process::node_binary(args.release_bin.as_deref())?,
        postgres_admin_url: args.postgres,
        nodes: args.nodes as usize,
        concurrency: args.concurrency as usize,
        warmup: args.warmup,
        duration: args.duration,
        paths: args.paths,
        otlp: args.otlp,
    };
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(200));
    let result = http::run(&options, |stage| bar.set_message(stage.to_owned())).await;
    bar.finish_and_clear();
    let result = result?;
    if args.json {
        for route in &result.routes {
            println!("{}", serde_json::to_string(route)?);
        }
        println!("{}", serde_json::to_string(&result)?);
        return Ok(());
    }
    println!(
        "| route | requests | 2xx | 4xx | 5xx + no answer | p50 ms | p95 ms | p99 ms | max ms | p95 < {:.0} ms |",
        http::P95_TARGET_MS
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for route in result.routes.iter().chain([&result.total]) {
        println!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            route.route,
            route.requests,
            route.ok,
            route.client_errors,
            route.server_errors + route.transport_errors,
            route.p50_ms,
            route.p95_ms,
            route.p99_ms,
            route.max_ms,
            if route.p95_under_target { "yes" } else { "no" }
        );
    }
    println!();
    println!(
        "{} nodes, {} clients, {:.1} s measured: {} requests, {:.0}/s; availability {:.3}% (target {:.1}%: {})",
        result.nodes,
        result.concurrency,
        result.seconds,
        result.requests,
        result.requests_per_second,
        result.availability * 100.0,
        result.availability_target * 100.0,
        if result.availability_met {
            "met"
        } else {
            "missed"
        }
    );
    if let Some(otlp) = &result.otlp {
        println!(
            "OTLP receiver: {} trace exports, {} bytes ({} other requests)",
            otlp.trace_requests, otlp.trace_bytes, otlp.other_requests
        );
    }
    for sample in &result.samples {
        eprintln!("  {sample}");
    }
    Ok(())
}

fn bench_import(args: BenchImportArgs) -> anyhow::Result<()> {
    let measured = import::run(&args.rows)?;
    if args.json {
        for row in &measured {
            println!("{}", serde_json::to_string(row)?);
        }
        return Ok(());
    }
    let mb = |bytes: usize| bytes as f64 / 1e6;
    println!(
        "| file | rows | file size | peak heap while read | kept (the rows) | peak per 10,000 rows | peak / file size | time |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for row in &measured {
        println!(
            "| {} | {} | {:.2} MB | {:.2} MB | {:.2} MB | {:.2} MB | {:.2}x | {:.3} s |",
            row.format,
            row.rows,
            mb(row.file_bytes),
            mb(row.peak_heap_bytes),
            mb(row.kept_heap_bytes),
            mb(row.peak_heap_bytes) * 10_000.0 / row.rows as f64,
            row.peak_heap_bytes as f64 / row.file_bytes as f64,
            row.seconds
        );
    }
    Ok(())
}

async fn bench_remote(args: BenchRemoteArgs) -> anyhow::Result<()> {
    use crate::remote as bench;
    if args.serve {
        let secret = std::env::var(bench::SECRET_ENV)
            .ok()
            .and_then(|text| hex::decode(text).ok())
            .context("the peer process needs its secret")?;
        return Ok(bench::serve(&secret).await?);
    }
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let result = bench::run(
        &exe,
        args.tells,
        args.asks as usize,
        args.concurrent_asks as usize,
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        let (remote, local) = (&result.agent_remote, &result.agent_local);
        println!(
            "| measure | AgentRef, remote (2 processes) | AgentRef, local | transport only | bare TCP, 64-byte frames |"
        );
        println!("|---|---|---|---|---|");
        println!(
            "| tells/s | {:.0} | {:.0} | {:.0} | |",
            remote.tells_per_second, local.tells_per_second, result.tells_per_second
        );
        println!(
            "| ask p50 / p99, 1 in flight | {:.1} / {:.1} us | {:.1} / {:.1} us | {:.1} / {:.1} us | {:.1} / {:.1} us |",
            remote.ask_p50_us,
            remote.ask_p99_us,
            local.ask_p50_us,
            local.ask_p99_us,
            result.ask_p50_us,
            result.ask_p99_us,
            result.tcp_ping_p50_us,
            result.tcp_ping_p99_us
        );
        println!(
            "| asks/s, {} in flight | {:.0} | {:.0} | {:.0} | |",
            result.asks_in_flight,
            remote.asks_per_second_in_flight,
            local.asks_per_second_in_flight,
            result.asks_per_second_in_flight
        );
    }
    Ok(())
}

async fn bench_dashboard(args: BenchDashboardArgs) -> anyhow::Result<()> {
    let exe = process::node_binary(args.node.path.as_deref())?;
    let viewers: Vec<usize> = args.viewers.iter().map(|&v| v as usize).collect();
    let bar = indicatif::ProgressBar::new(args.seconds * (viewers.len() as u64 + 1));
    let runs = dashboard::run(&exe, &viewers, args.seconds, |done| bar.set_position(done)).await?;
    bar.finish_and_clear();
    // The first run is the node without the dashboard.
    let baseline = runs.first().map_or(0.0, |run| run.cpu_percent);
    print_runs(
        args.json,
        &[
            "node",
            "viewers",
            "node CPU, % of a core",
            "minus the node without it",
            "frames/s per viewer",
            "bytes/frame",
        ],
        &runs,
        |run| {
            format!(
                "| {} | {} | {:.2} | {:+.2} | {:.2} | {:.0} |",
                if run.dashboard {
                    "with the dashboard"
                } else {
                    "--no-dashboard"
                },
                run.viewers,
                run.cpu_percent,
                run.cpu_percent - baseline,
                run.frames_per_viewer_per_second,
                run.bytes_per_frame
            )
        },
    )
}

async fn bench_stalled(args: BenchStalledArgs) -> anyhow::Result<()> {
    let exe = process::node_binary(args.node.path.as_deref())?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let runs = stalled::run(&exe, args.connections as usize, |stage| {
        bar.set_message(format!("{} stalled bodies, {stage}", args.connections))
    })
    .await?;
    bar.finish_and_clear();
    print_runs(
        args.json,
        &[
            "limits",
            "stalled bodies",
            "node RSS, MB",
            "peak RSS, MB",
            "slowest /health, ms",
            "another key's requests ok",
        ],
        &runs,
        |run| {
            format!(
                "| {} | {} | {:.0} | {:.0} | {:.1} | {}/{} |",
                run.limits,
                run.connections,
                run.rss_mb,
                run.peak_rss_mb,
                run.health_max_ms,
                run.honest_ok,
                run.honest_sent
            )
        },
    )
}

async fn bench_sagas(args: BenchSagasArgs) -> anyhow::Result<()> {
    if args.concurrency.iter().any(|&c| !(1..=4096).contains(&c)) {
        anyhow::bail!("--concurrency values must be within 1..=4096");
    }
    if !(1..=1_000_000).contains(&args.sagas) {
        anyhow::bail!("--sagas must be within 1..=1000000");
    }
    let url = args.database_url.clone().unwrap_or_else(|| {
        let file =
            std::env::temp_dir().join(format!("valueverse-bench-{}.db", uuid::Uuid::new_v4()));
        format!("sqlite://{}", file.display())
    });
    let mut config = Config {
        database_url: url,
        http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        dev: true,
        database_max_connections: 16,
        ..Config::default()
    };
    config.simulation.queue_capacity = 100_000;
    // Each saga's simulation is tiny: its worker mostly waits on the job's
    // writes, so many run at once.
    config.simulation.cpu_workers = 64;
    config.runtime.mailbox_capacity = 100_000;
    config.runtime.ask_timeout = Duration::from_secs(60);
    config.validate()?;
    if !args.json {
        println!("| store | concurrency | sagas | seconds | sagas/s | p50 ms | p99 ms |");
        println!("|---|---|---|---|---|---|---|");
    }
    for &concurrency in &args.concurrency {
        let bar = indicatif::ProgressBar::new(args.sagas as u64);
        let result = sagas::sagas(&config, concurrency, args.sagas, args.paths, |done| {
            bar.set_position(done as u64)
        })
        .await?;
        bar.finish_and_clear();
        if args.json {
            println!("{}", serde_json::to_string(&result)?);
        } else {
            println!(
                "| {} | {} | {} | {:.2} | {:.0} | {:.1} | {:.1} |",
                result.store,
                result.concurrency,
                result.sagas,
                result.seconds,
                result.sagas_per_second,
                result.p50_ms,
                result.p99_ms
            );
        }
        if args.steps {
            for (step, ms) in &result.step_ms {
                eprintln!("  {step}: {ms:.2} ms");
            }
        }
    }
    Ok(())
}

/// Prints `runs` as JSON lines, or as a Markdown table under `header`.
fn print_runs<T: serde::Serialize>(
    json: bool,
    header: &[&str],
    runs: &[T],
    row: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    if !json {
        println!("| {} |", header.join(" | "));
        println!("|{}", "---|".repeat(header.len()));
    }
    for run in runs {
        if json {
            println!("{}", serde_json::to_string(run)?);
        } else {
            println!("{}", row(run));
        }
    }
    Ok(())
}
