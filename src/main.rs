//! The `valueverse` command line: a thin layer over the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use valueverse::config::{LogFormat, Overrides};
use valueverse::{Config, Node, Store};

/// ValueVerse: business agents as supervised, location-transparent actors.
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
    /// Apply the database migrations and exit.
    Migrate(MigrateArgs),
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
    #[arg(long, env = "VALUEVERSE_NODE_NAME", value_name = "NAME")]
    node_name: Option<String>,
    /// Address the HTTP API listens on [default: 127.0.0.1:8080].
    #[arg(long = "http", env = "VALUEVERSE_HTTP_ADDR", value_name = "ADDR")]
    http_addr: Option<SocketAddr>,
    /// sqlite://FILE (created when missing) or postgres://... [default: sqlite://valueverse.db].
    #[arg(long, env = "VALUEVERSE_DATABASE_URL", value_name = "URL")]
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
}

#[derive(Args)]
struct MigrateArgs {
    #[command(flatten)]
    config_file: ConfigFileArg,
    /// sqlite://FILE or postgres://... [default: sqlite://valueverse.db].
    #[arg(long, env = "VALUEVERSE_DATABASE_URL", value_name = "URL")]
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
        }
    }
}

fn init_tracing(config: &Config) {
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr; stdout carries what a person or script reads.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config_file.config.as_deref(), &args.overrides())?;
    init_tracing(&config);
    let node = Node::start(&config, |_system| {}).await?;
    tracing::info!(
        node = %config.node_name,
        http = %node.http_addr(),
        store = ?node.system.store().backend(),
        "node started: API at http://{}/api/v1/actors, metrics at /metrics",
        node.http_addr()
    );
    // On stdout, for people and scripts (port 0 picks a free port).
    println!("valueverse listening on http://{}", node.http_addr());
    wait_for_shutdown_signal().await?;
    tracing::info!("shutting down");
    node.stop().await.context("shutdown failed")?;
    Ok(())
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
    let overrides = Overrides {
        database_url: args.database_url,
        ..Overrides::default()
    };
    let config = Config::load(args.config_file.config.as_deref(), &overrides)?;
    let store = Store::connect(&config.database_url, 1)
        .await
        .context("cannot open the store")?;
    let count = store.migrate().await.context("migration failed")?;
    store.close().await;
    println!("{count} migrations applied to {:?} store", store.backend());
    Ok(())
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
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Migrate(args) => migrate(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
