//! The `valueverse` command line: a thin layer over the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use valueverse::config::{ClusterOverrides, LogFormat, Overrides};
use valueverse::{Config, Node, Store};

mod telemetry;

/// ValueVerse: business agents as supervised, location-transparent actors.
// Many small allocations on many threads (messages, JSON, futures): glibc's
// malloc showed as a tenth of the saga benchmark's CPU (valueverse-bench
// uses the same allocator, so its in-process figures match the node's).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "valueverse", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node: HTTP API, agent runtime, store (SQLite by default).
    Serve(ServeArgs),
    /// Run a node that joins (or forms) a cluster on a shared PostgreSQL.
    Node(NodeArgs),
    /// Apply the database migrations and exit.
    Migrate(MigrateArgs),
    /// Run a Monte Carlo simulation of a value model file.
    Simulate(SimulateArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Apikey(ApikeyCommand),
    /// Manage tenants (the organizations whose data is walled off).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Local clusters.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Import realized value into a plan from a CSV or Excel (.xlsx) file,
    /// through a node's API.
    Import(ImportArgs),
}

#[derive(Args)]
struct ImportArgs {
    /// The file: `.csv` or `.xlsx`, a header row naming the columns.
    file: PathBuf,
    /// The plan the deliveries are of.
    #[arg(long)]
    plan: String,
    /// The node's API.
    #[arg(long, env = "VALUEVERSE_URL", default_value = "http://127.0.0.1:8080")]
    url: url::Url,
    /// An API key of an editor (none for a `--dev` node).
    #[arg(long, env = "VALUEVERSE_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Record the good rows of a file with errors (default: nothing).
    #[arg(long)]
    partial: bool,
    #[arg(long, default_value = "id")]
    id_column: String,
    #[arg(long, default_value = "driver")]
    driver_column: String,
    #[arg(long, default_value = "value")]
    value_column: String,
    #[arg(long, default_value = "date")]
    date_column: String,
    #[arg(long, default_value = "note")]
    note_column: String,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Launch N nodes here as child processes on free ports, sharing one
    /// PostgreSQL database; Ctrl-C stops them all.
    Up(ClusterUpArgs),
}

#[derive(Args)]
struct ClusterUpArgs {
    /// Nodes to launch.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
    nodes: u16,
    /// The shared PostgreSQL database (created when missing).
    #[arg(
        long,
        env = "VALUEVERSE_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL",
        default_value = "postgres://postgres@127.0.0.1:5432/valueverse_cluster"
    )]
    database_url: String,
    #[command(flatten)]
    secret: SecretArg,
    /// Development mode on every node: no API keys are checked.
    #[arg(long)]
    dev: bool,
}

#[derive(Subcommand)]
enum ApikeyCommand {
    /// Create a key and print it (only its hash is stored: it is shown once).
    Create(ApikeyCreateArgs),
    /// List a tenant's keys (never the keys themselves).
    List(ApikeyListArgs),
    /// Revoke a key by id.
    Revoke(ApikeyRevokeArgs),
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant.
    Create(TenantCreateArgs),
    /// List the tenants with their own quotas.
    List(MigrateArgs),
    /// Set a tenant's own quotas (a quota not given takes the node's
    /// default, the `[quotas]` of its config).
    Quotas(TenantQuotasArgs),
}

#[derive(Args)]
struct TenantQuotasArgs {
    #[arg(value_parser = tenant_parser)]
    name: valueverse::actors::Tenant,
    /// Live agent instances of the tenant on each node.
    #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
    max_active_instances: Option<i64>,
    /// Simulation paths the tenant's jobs may ask for in any hour.
    #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
    max_simulation_paths_per_hour: Option<i64>,
    /// Value models the tenant keeps (archived ones do not count).
    #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
    max_models: Option<i64>,
    #[command(flatten)]
    store: MigrateArgs,
}

#[derive(Args)]
struct TenantCreateArgs {
    /// 1 to 63 of a-z, 0-9 and -, starting with a letter or digit.
    #[arg(value_parser = tenant_parser)]
    name: valueverse::actors::Tenant,
    /// A name to show (default: the tenant's name).
    #[arg(long, default_value = "")]
    display_name: String,
    #[command(flatten)]
    store: MigrateArgs,
}

fn tenant_parser(text: &str) -> Result<valueverse::actors::Tenant, String> {
    valueverse::actors::Tenant::parse(text).map_err(|error| error.to_string())
}

#[derive(Args)]
struct TenantArg {
    /// The tenant the key acts for (it must exist: `valueverse tenant create`).
    #[arg(long, default_value = "default", value_parser = tenant_parser)]
    tenant: valueverse::actors::Tenant,
}

#[derive(Args)]
struct ApikeyListArgs {
    #[command(flatten)]
    tenant: TenantArg,
    #[command(flatten)]
    store: MigrateArgs,
}

#[derive(Args)]
struct ApikeyCreateArgs {
    /// viewer (read), editor (write), admin (the tenant's keys) or platform
    /// (the operator's: supervision tree, cluster, resets; no tenant's data).
    #[arg(long, value_parser = role_parser())]
    role: valueverse::auth::Role,
    #[command(flatten)]
    tenant: TenantArg,
    /// What the key is for.
    #[arg(long, default_value = "")]
    name: String,
    #[command(flatten)]
    store: MigrateArgs,
}

#[derive(Args)]
struct ApikeyRevokeArgs {
    id: String,
    #[command(flatten)]
    tenant: TenantArg,
    #[command(flatten)]
    store: MigrateArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Device {
    /// The GPU when one is found, else the CPU.
    Auto,
    Cpu,
    Gpu,
}

#[derive(Args)]
struct SimulateArgs {
    /// The value model (JSON).
    model: PathBuf,
    /// Paths to simulate, 1 to 1000000000.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    paths: u64,
    /// Seed: the same seed gives the same result, whatever the thread count.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
    /// Bins of the NPV histogram.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    bins: u64,
    /// Stop once the standard error of the mean is below this fraction of it.
    #[arg(long, value_name = "FRACTION")]
    stop_at_rel_se: Option<f64>,
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ConfigFileArg {
    /// TOML configuration file; environment and flags override its values.
    #[arg(long, env = "VALUEVERSE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    config_file: ConfigFileArg,
    /// Name of this node in logs, metrics and the supervision tree [default: node-1].
    #[arg(
        long,
        alias = "name",
        env = "VALUEVERSE_NODE_NAME",
        value_name = "NAME"
    )]
    node_name: Option<String>,
    /// Address the HTTP API listens on [default: 127.0.0.1:8080].
    #[arg(long = "http", env = "VALUEVERSE_HTTP_ADDR", value_name = "ADDR")]
    http_addr: Option<SocketAddr>,
    /// sqlite://FILE (created when missing) or postgres://... [default: sqlite://valueverse.db].
    #[arg(
        long,
        env = "VALUEVERSE_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    database_url: Option<String>,
    /// Connections in the store's pool [default: 8].
    #[arg(long, env = "VALUEVERSE_DATABASE_MAX_CONNECTIONS", value_name = "N")]
    database_max_connections: Option<u32>,
    /// Log filter, RUST_LOG syntax [default: info].
    #[arg(long, env = "VALUEVERSE_LOG", value_name = "FILTER")]
    log: Option<String>,
    /// Log output format [default: text].
    #[arg(long, env = "VALUEVERSE_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Export spans to this OpenTelemetry collector, OTLP over HTTP (e.g.
    /// http://localhost:4318; `/v1/traces` is added). Without it, the
    /// standard OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is
    /// read; with neither, nothing is exported.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<url::Url>,
    /// HTTP worker threads [default: 2].
    #[arg(long, env = "VALUEVERSE_HTTP_WORKERS", value_name = "N")]
    http_workers: Option<usize>,
    /// Event-loop threads hosting agent instances [default: number of CPUs].
    #[arg(long, env = "VALUEVERSE_WORKERS", value_name = "N")]
    workers: Option<usize>,
    /// Messages an agent's mailbox holds before sends fail with MailboxFull [default: 1024].
    #[arg(long, env = "VALUEVERSE_MAILBOX_CAPACITY", value_name = "N")]
    mailbox_capacity: Option<usize>,
    /// Idle time before an agent instance is passivated, e.g. 5m [default: 5m].
    #[arg(long, env = "VALUEVERSE_PASSIVATE_AFTER", value_name = "DURATION", value_parser = humantime::parse_duration)]
    passivate_after: Option<Duration>,
    /// Reply timeout of asks made for HTTP requests, e.g. 5s [default: 5s].
    #[arg(long, env = "VALUEVERSE_ASK_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    ask_timeout: Option<Duration>,
    /// Simulation jobs run on the CPU at once [default: 1].
    #[arg(long, env = "VALUEVERSE_SIMULATION_CPU_WORKERS", value_name = "N")]
    simulation_cpu_workers: Option<usize>,
    /// Development mode: no API keys are checked. Never in production.
    /// (`VALUEVERSE_DEV` takes 1/0, true/false, yes/no, on/off.)
    #[arg(long, env = "VALUEVERSE_DEV", value_parser = clap::builder::BoolishValueParser::new())]
    dev: bool,
    /// Largest request body in bytes; larger ones get 413 [default: 1048576].
    #[arg(long, env = "VALUEVERSE_HTTP_BODY_LIMIT", value_name = "BYTES")]
    http_body_limit: Option<usize>,
    /// Do not serve /dashboard and its data.
    #[arg(long, env = "VALUEVERSE_NO_DASHBOARD", value_parser = clap::builder::BoolishValueParser::new())]
    no_dashboard: bool,
    /// Simulation jobs that may wait before submissions get 503 [default: 64].
    #[arg(long, env = "VALUEVERSE_SIMULATION_QUEUE_CAPACITY", value_name = "N")]
    simulation_queue_capacity: Option<usize>,
}

#[derive(Args)]
struct SecretArg {
    /// Shared cluster secret, at least 16 characters, the same on every
    /// node (`cluster up` makes a random one when none is given).
    #[arg(
        long,
        env = "VALUEVERSE_CLUSTER_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    secret: Option<String>,
}

#[derive(Args)]
struct NodeArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// Address the cluster transport (TCP) listens on [default: 127.0.0.1:7001].
    #[arg(long, env = "VALUEVERSE_CLUSTER_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Address gossip (UDP) listens on [default: 127.0.0.1:7101].
    #[arg(long, env = "VALUEVERSE_CLUSTER_GOSSIP", value_name = "ADDR")]
    gossip: Option<SocketAddr>,
    /// Gossip addresses of other nodes to contact first, comma-separated.
    #[arg(
        long,
        env = "VALUEVERSE_CLUSTER_SEEDS",
        value_name = "HOST:PORT,...",
        value_delimiter = ','
    )]
    seeds: Option<Vec<String>>,
    /// Host name or IP other nodes reach this one at (needed when --listen
    /// or --gossip binds 0.0.0.0, as in a container).
    #[arg(long, env = "VALUEVERSE_CLUSTER_ADVERTISE_HOST", value_name = "HOST")]
    advertise_host: Option<String>,
    #[command(flatten)]
    secret: SecretArg,
    /// Nodes gossip only with nodes of the same cluster id [default: valueverse].
    #[arg(long, env = "VALUEVERSE_CLUSTER_ID", value_name = "ID")]
    cluster_id: Option<String>,
    /// GPUs this node offers; simulation jobs prefer such nodes [default: 0].
    #[arg(long, env = "VALUEVERSE_CLUSTER_GPUS", value_name = "N")]
    gpus: Option<u32>,
}

impl NodeArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            cluster: Some(ClusterOverrides {
                listen: self.listen,
                gossip: self.gossip,
                seeds: self.seeds.clone(),
                advertise_host: self.advertise_host.clone(),
                secret: self.secret.secret.clone(),
                cluster_id: self.cluster_id.clone(),
                gpus: self.gpus,
            }),
            ..self.serve.overrides()
        }
    }
}

#[derive(Args)]
struct MigrateArgs {
    #[command(flatten)]
    config_file: ConfigFileArg,
    /// sqlite://FILE or postgres://... [default: sqlite://valueverse.db].
    #[arg(
        long,
        env = "VALUEVERSE_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    database_url: Option<String>,
}

impl ServeArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            node_name: self.node_name.clone(),
            http_addr: self.http_addr,
            database_url: self.database_url.clone(),
            database_max_connections: self.database_max_connections,
            log: self.log.clone(),
            log_format: self.log_format,
            http_workers: self.http_workers,
            workers: self.workers,
            mailbox_capacity: self.mailbox_capacity,
            passivate_after: self.passivate_after,
            ask_timeout: self.ask_timeout,
            simulation_cpu_workers: self.simulation_cpu_workers,
            simulation_queue_capacity: self.simulation_queue_capacity,
            dev: self.dev.then_some(true),
            http_body_limit: self.http_body_limit,
            dashboard: self.no_dashboard.then_some(false),
            cluster: None,
        }
    }
}

/// `--role`: one of the roles' names, listed in `--help` and in the error
/// for any other word.
fn role_parser() -> impl clap::builder::TypedValueParser<Value = valueverse::auth::Role> {
    use clap::builder::TypedValueParser;
    use valueverse::auth::Role;
    clap::builder::PossibleValuesParser::new(Role::ALL.map(Role::as_str))
        // Only the listed names get here, and each is a role's.
        .map(|name| Role::parse(&name).unwrap_or(Role::Viewer))
}

/// What spans the exporter gets: ValueVerse's own at `info` (not the HTTP
/// client's, which would trace the exporter's own requests).
const EXPORTED_SPANS: &str = "warn,valueverse=info,valueverse_runtime=info,valueverse_http=info,\
     valueverse_agents=info,valueverse_cluster=info,valueverse_store=info,valueverse_gpu=info";

/// Logs to stderr, and spans to an OTLP collector when one is set.
async fn init_tracing(
    config: &Config,
    otlp_endpoint: Option<url::Url>,
) -> anyhow::Result<Option<telemetry::Exporting>> {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    // The exporter's blocking HTTP client is made off the async threads.
    let node_name = config.node_name.clone();
    let tracer =
        tokio::task::spawn_blocking(move || telemetry::tracer(otlp_endpoint.as_ref(), &node_name))
            .await
            .context("starting the span exporter")??;
    // Logs go to stderr; stdout carries what a person or script reads.
    let ansi = std::io::stderr().is_terminal();
    let Some((exporting, tracer)) = tracer else {
        // No exporter: the subscriber is what it was before tracing.
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(ansi)
            .with_writer(std::io::stderr);
        match config.log_format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
        return Ok(None);
    };
    let logs = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let logs = match config.log_format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().boxed(),
    };
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(EnvFilter::new(EXPORTED_SPANS));
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(spans)
        .init();
    valueverse::actors::enable_propagation();
    Ok(Some(exporting))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config_file.config.as_deref(), &args.overrides())?;
    run_node(config, args.otlp_endpoint).await
}

async fn node(args: NodeArgs) -> anyhow::Result<()> {
    let config = Config::load(args.serve.config_file.config.as_deref(), &args.overrides())?;
    run_node(config, args.serve.otlp_endpoint).await
}

async fn run_node(config: Config, otlp_endpoint: Option<url::Url>) -> anyhow::Result<()> {
    let exporting = init_tracing(&config, otlp_endpoint).await?;
    let node = Node::start(&config, |_system| {}).await?;
    if config.dev {
        tracing::warn!(
            "DEVELOPMENT MODE: authentication is OFF, every request acts as admin; \
             never run --dev where others can reach this port"
        );
    } else if node.store.live_api_key_ids().await?.is_empty() {
        tracing::warn!(
            "no API keys yet: every API request will get 401. Create one with \
             `valueverse apikey create --role admin --database-url {}` (or run `serve --dev` locally)",
            valueverse::store::redact_url(&config.database_url)
        );
    }
    tracing::info!(
        node = %config.node_name,
        http = %node.http_addr(),
        store = ?node.store.backend(),
        "node started: API at http://{}/api/v1/actors, metrics at /metrics",
        node.http_addr()
    );
    // On stdout, for people and scripts (port 0 picks a free port).
    println!("valueverse listening on http://{}", node.http_addr());
    if config.cluster.enabled {
        println!(
            "node {} in cluster {}: transport {}, gossip {}, seeds [{}]",
            config.node_name,
            config.cluster.cluster_id,
            config.cluster.listen,
            config.cluster.gossip,
            config.cluster.seeds.join(", ")
        );
    }
    wait_for_shutdown_signal().await?;
    tracing::info!("shutting down");
    node.stop().await.context("shutdown failed")?;
    // The spans not yet sent go now (the exporter's client blocks).
    if let Some(exporting) = exporting {
        let _ = tokio::task::spawn_blocking(move || drop(exporting)).await;
    }
    Ok(())
}

async fn cluster_up(args: ClusterUpArgs) -> anyhow::Result<()> {
    use valueverse::cluster::launch::{LaunchOptions, up};
    if !args.database_url.starts_with("postgres") {
        anyhow::bail!(
            "--database-url must be postgres://...: the nodes of a cluster share one PostgreSQL database"
        );
    }
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let options = LaunchOptions {
        nodes: usize::from(args.nodes),
        database_url: args.database_url,
        secret: args.secret.secret,
        dev: args.dev,
    };
    Ok(up(&exe, options).await?)
}

async fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot listen for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let store = open_store(args, false).await?;
    let count = store.migrate().await.context("migration failed")?;
    store.close().await;
    println!("{count} migrations applied to {:?} store", store.backend());
    Ok(())
}

/// The store `args` names; migrated first when `migrated`.
async fn open_store(args: MigrateArgs, migrated: bool) -> anyhow::Result<Store> {
    let overrides = Overrides {
        database_url: args.database_url,
        ..Overrides::default()
    };
    let config = Config::load(args.config_file.config.as_deref(), &overrides)?;
    let store = if migrated {
        Store::open(&config.database_url, 1).await
    } else {
        Store::connect(&config.database_url, 1).await
    };
    store.context("cannot open the store")
}

async fn apikey(command: ApikeyCommand) -> anyhow::Result<()> {
    match command {
        ApikeyCommand::Create(args) => {
            if !args.name.is_empty()
                && let Some(problem) = valueverse::model::name_problem(&args.name, 200)
            {
                anyhow::bail!("--name {problem}");
            }
            let store = open_store(args.store, true).await?;
            let tenant = args.tenant.tenant;
            if store.tenant(tenant.as_str()).await?.is_none() {
                store.close().await;
                anyhow::bail!(
                    "--tenant: no tenant `{tenant}` (create it with `valueverse tenant create {tenant}`)"
                );
            }
            let made = valueverse::auth::create_key(&store, &tenant, args.role, &args.name).await;
            store.close().await;
            let (row, key) = made?;
            eprintln!(
                "API key {} ({} of tenant {}) created; it is shown once, keep it now:",
                row.id, row.role, row.tenant
            );
            println!("{key}");
        }
        ApikeyCommand::List(args) => {
            let store = open_store(args.store, true).await?;
            for row in store.api_keys(args.tenant.tenant.as_str()).await? {
                let state = if row.revoked_at_ms.is_some() {
                    "revoked"
                } else {
                    "live"
                };
                // A name is the key creator's text: control characters
                // (terminal escapes) are shown escaped, never sent raw.
                let name: String = row.name.chars().flat_map(char::escape_debug).collect();
                println!("{}  {:<6}  {:<7}  {}", row.id, row.role, state, name);
            }
            store.close().await;
        }
        ApikeyCommand::Revoke(args) => {
            let store = open_store(args.store, true).await?;
            let revoked = store
                .revoke_api_key(
                    args.tenant.tenant.as_str(),
                    &args.id,
                    &valueverse::actors::AuditEntry::now(
                        args.tenant.tenant.as_str(),
                        "cli",
                        "revoke key",
                        &format!("api-key/{}", args.id),
                        None,
                        "ok",
                    ),
                )
                .await?;
            store.close().await;
            if !revoked {
                anyhow::bail!("no live API key `{}`", args.id);
            }
            println!("revoked {}", args.id);
        }
    }
    Ok(())
}

async fn tenant(command: TenantCommand) -> anyhow::Result<()> {
    match command {
        TenantCommand::Create(args) => {
            if let Some(problem) = valueverse::model::name_problem(&args.display_name, 200)
                && !args.display_name.is_empty()
            {
                anyhow::bail!("--display-name {problem}");
            }
            let display = if args.display_name.is_empty() {
                args.name.as_str().to_owned()
            } else {
                args.display_name
            };
            let store = open_store(args.store, true).await?;
            let made = store.insert_tenant(args.name.as_str(), &display).await;
            let made = match made {
                Ok(true) => operator_entry(&store, args.name.as_str(), "create tenant").await,
                other => other.map_err(anyhow::Error::from),
            };
            store.close().await;
            if !made? {
                anyhow::bail!("tenant `{}` exists", args.name);
            }
            println!("tenant {} created", args.name);
        }
        TenantCommand::List(args) => {
            let store = open_store(args, true).await?;
            let tenants = store.tenants().await;
            let quotas = store.tenant_quotas().await;
            store.close().await;
            let quotas = quotas?;
            let shown = |value: Option<i64>| value.map_or("default".to_owned(), |v| v.to_string());
            for row in tenants? {
                let name: String = row
                    .display_name
                    .chars()
                    .flat_map(char::escape_debug)
                    .collect();
                let own = quotas
                    .iter()
                    .find(|(tenant, _)| *tenant == row.name)
                    .map(|(_, quotas)| *quotas)
                    .unwrap_or_default();
                println!(
                    "{}  {}  max_active_instances={} max_simulation_paths_per_hour={} max_models={}",
                    row.name,
                    name,
                    shown(own.max_active_instances),
                    shown(own.max_simulation_paths_hour),
                    shown(own.max_models)
                );
            }
        }
        TenantCommand::Quotas(args) => {
            let store = open_store(args.store, true).await?;
            let quotas = valueverse::store::TenantQuotaRow {
                max_active_instances: args.max_active_instances,
                max_simulation_paths_hour: args.max_simulation_paths_per_hour,
                max_models: args.max_models,
            };
            let set = store.set_tenant_quotas(args.name.as_str(), quotas).await;
            let set = match set {
                Ok(true) => operator_entry(&store, args.name.as_str(), "set quotas").await,
                other => other.map_err(anyhow::Error::from),
            };
            store.close().await;
            if !set? {
                anyhow::bail!("no tenant `{}`", args.name);
            }
            println!("quotas of tenant {} set", args.name);
        }
    }
    Ok(())
}

/// The audit entry of an operator's command on a tenant: `true` once
/// written.
async fn operator_entry(
    store: &valueverse::Store,
    tenant: &str,
    action: &str,
) -> anyhow::Result<bool> {
    let entry = valueverse::actors::AuditEntry::now(
        tenant,
        "cli",
        action,
        &format!("tenant/{tenant}"),
        None,
        "ok",
    );
    store.append_audit(&entry).await?;
    Ok(true)
}

/// Rows sent to the node per request (each is one progress step).
const IMPORT_CHUNK: usize = 1000;

/// Reads the file here (against the plan's drivers and horizon, read
/// first), reports its errors, then sends its rows in chunks of CSV to
/// `POST /api/v1/plans/{id}/deliveries:import`: idempotent on the row id,
/// so a run stopped half way is finished by running it again.
async fn import(args: ImportArgs) -> anyhow::Result<()> {
    use valueverse::actors::import::{self, Format, Mapping, Rules};
    let format = args
        .file
        .extension()
        .and_then(|extension| Format::from_name(&extension.to_string_lossy()))
        .ok_or_else(|| anyhow::anyhow!("{}: a .csv or .xlsx file", args.file.display()))?;
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let client = reqwest::Client::new();
    let plan_url = args
        .url
        .join(&format!("api/v1/plans/{}", args.plan))
        .context("--url")?;
    let authorized = |request: reqwest::RequestBuilder| match &args.key {
        Some(key) => request.bearer_auth(key),
        None => request,
    };
    let answer = authorized(client.get(plan_url.clone())).send().await?;
    let status = answer.status();
    let plan: serde_json::Value = answer.json().await?;
    if !status.is_success() {
        anyhow::bail!("plan {}: {status}: {}", args.plan, plan["error"]["message"]);
    }
    let drivers: Vec<String> = serde_json::from_value(plan["drivers"].clone())?;
    let start: chrono::NaiveDate = serde_json::from_value(plan["start_date"].clone())?;
    let horizon = plan["horizon_months"].as_u64().unwrap_or(0) as u32;
    let last = if horizon == 0 {
        chrono::NaiveDate::from_ymd_opt(2199, 12, 31).expect("a date")
    } else {
        start
            .checked_add_months(chrono::Months::new(horizon))
            .and_then(|end| end.pred_opt())
            .unwrap_or(chrono::NaiveDate::MAX)
    };
    let mapping = Mapping {
        id: args.id_column,
        driver: args.driver_column,
        value: args.value_column,
        date: args.date_column,
        note: Some(args.note_column),
    };
    let rules = Rules {
        drivers: &drivers,
        max_abs_value: 9_007_199_254_740_991.0,
        first_date: start,
        last_date: last,
        max_rows: 1_000_000,
    };
    let style = |unit: &str| {
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {{msg:9}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} ({{eta}})"
        ))
        .expect("valid progress template")
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(style("rows"));
    bar.set_message("reading");
    let parsed = import::read(&bytes, format, &mapping, &rules, &mut |read, total| {
        bar.set_length(total.max(read) as u64);
        bar.set_position(read as u64);
    })
    .map_err(|error| anyhow::anyhow!("{}: {error}", args.file.display()))?;
    bar.finish_and_clear();
    for error in parsed.errors.iter().take(20) {
        eprintln!(
            "row {}, column `{}`: {}",
            error.row, error.column, error.message
        );
    }
    if parsed.errors.len() > 20 {
        eprintln!("... and {} more", parsed.errors.len() - 20);
    }
    if !parsed.errors.is_empty() && !args.partial {
        anyhow::bail!(
            "{} of {} rows refused: nothing was imported (fix them, or pass --partial)",
            parsed.errors.len(),
            parsed.total_rows
        );
    }
    let mut endpoint = args
        .url
        .join(&format!("api/v1/plans/{}/deliveries:import", args.plan))
        .context("--url")?;
    endpoint.set_query(Some("format=csv"));
    let bar = indicatif::ProgressBar::new(parsed.rows.len() as u64);
    bar.set_style(style("rows"));
    bar.set_message("recording");
    let (mut recorded, mut already) = (0u64, 0u64);
    for chunk in parsed.rows.chunks(IMPORT_CHUNK) {
        let mut out = csv::Writer::from_writer(Vec::new());
        out.write_record(["id", "driver", "value", "date", "note"])?;
        for row in chunk {
            out.write_record([
                row.id.as_str(),
                row.driver.as_str(),
                &row.value.to_string(),
                &row.date.to_string(),
                row.note.as_deref().unwrap_or(""),
            ])?;
        }
        let body = out.into_inner().map_err(|error| error.into_error())?;
        let answer = authorized(client.post(endpoint.clone()))
            .header("content-type", "text/csv")
            .body(body)
            .send()
            .await?;
        let status = answer.status();
        let report: serde_json::Value = answer.json().await?;
        if !status.is_success() {
            bar.abandon();
            anyhow::bail!(
                "the node refused rows {}..: {status}: {} ({} recorded before; run again to finish: rows already recorded are skipped)",
                chunk[0].row,
                report["error"]["message"],
                recorded
            );
        }
        recorded += report["recorded"].as_u64().unwrap_or(0);
        already += report["already_recorded"].as_u64().unwrap_or(0);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    println!(
        "{}: {} rows, {recorded} recorded, {already} already recorded, {} refused",
        args.file.display(),
        parsed.total_rows,
        parsed.errors.len()
    );
    Ok(())
}

fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    use valueverse::gpu::{self, Control, RunSettings};
    use valueverse::model::ValueModel;

    let bytes = std::fs::read(&args.model)
        .with_context(|| format!("cannot read {}", args.model.display()))?;
    let model = ValueModel::from_json(&bytes)
        .map_err(|invalid| anyhow::anyhow!("invalid model {}: {invalid}", args.model.display()))?;
    let device = match args.device {
        Device::Auto => gpu::Device::Auto,
        Device::Cpu => gpu::Device::Cpu,
        Device::Gpu => gpu::Device::Gpu,
    };
    let settings = RunSettings {
        paths: args.paths,
        seed: args.seed,
        bins: args.bins as usize,
        stop_at_rel_se: args.stop_at_rel_se,
    };
    let bar = indicatif::ProgressBar::new(args.paths);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} paths ({eta}) {msg}",
        )
        .expect("valid progress template"),
    );
    gpu::engine::check_settings(&settings).map_err(|error| match error {
        gpu::RunError::RelativeError(target) => {
            anyhow::anyhow!("--stop-at-rel-se must be within (0, 1), got {target}")
        }
        other => other.into(),
    })?;
    let result = gpu::run(&model, &settings, device, |progress| {
        bar.set_position(progress.paths_done);
        bar.set_message(format!(
            "mean {:.0}, {:.1} M samples/s",
            progress.running_mean,
            progress.samples_per_second / 1e6
        ));
        Control::Continue
    });
    bar.finish_and_clear();
    let result = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    let currency = &model.currency;
    let npv = &result.npv;
    let p = &npv.percentiles;
    println!(
        "{}: {} paths, seed {}, {} engine, {:.2} s ({:.1} M samples/s)",
        model.name,
        result.paths,
        result.seed,
        result.engine,
        result.wall_seconds,
        result.samples_per_second / 1e6
    );
    println!(
        "NPV ({currency})   mean {:>14.0}   std {:>14.0}   std error {:.0}",
        npv.mean, npv.std, result.std_error
    );
    println!(
        "             min  {:>14.0}   max {:>14.0}",
        npv.min, npv.max
    );
    println!(
        "             P5 {:.0}  P10 {:.0}  P25 {:.0}  P50 {:.0}  P75 {:.0}  P90 {:.0}  P95 {:.0}",
        p.p5, p.p10, p.p25, p.p50, p.p75, p.p90, p.p95
    );
    println!("P(loss)      {:.2} %", result.prob_loss * 100.0);
    if let Some(roi) = &result.roi {
        println!(
            "ROI          mean {:.1} %   P10 {:.1} %   P90 {:.1} %",
            roi.mean * 100.0,
            roi.percentiles.p10 * 100.0,
            roi.percentiles.p90 * 100.0
        );
    }
    let month = |m: Option<u32>| m.map_or("never".to_owned(), |m| format!("month {m}"));
    let payback = &result.payback;
    println!(
        "Payback      {:.1} % within the horizon   P10 {}   P50 {}   P90 {}   (first {} paths)",
        payback.prob_within_horizon * 100.0,
        month(payback.p10),
        month(payback.p50),
        month(payback.p90),
        payback.sampled_paths
    );
    println!("Tornado (NPV with the driver at its P10 / P90, others at their means):");
    for bar in &result.sensitivity {
        println!(
            "  {:<28} {:>14.0} {:>14.0}   swing {:>14.0}   rank corr {:+.2}",
            bar.driver, bar.npv_at_p10, bar.npv_at_p90, bar.swing, bar.rank_correlation
        );
    }
    Ok(())
}

/// The error and its causes on one line, skipping a cause whose text the
/// line already holds (sqlx's errors repeat their source in their message).
fn describe(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
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
    let result = match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Node(args) => runtime.block_on(node(args)),
        Command::Cluster(ClusterCommand::Up(args)) => runtime.block_on(cluster_up(args)),
        Command::Migrate(args) => runtime.block_on(migrate(args)),
        Command::Apikey(command) => runtime.block_on(apikey(command)),
        Command::Tenant(command) => runtime.block_on(tenant(command)),
        Command::Import(args) => runtime.block_on(import(args)),
        // CPU-bound on rayon's threads: no async runtime involved.
        Command::Simulate(args) => simulate(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", describe(&error));
            ExitCode::FAILURE
        }
    }
}
