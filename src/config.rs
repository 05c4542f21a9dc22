//! One configuration struct for a node. Sources, later ones winning:
//! built-in defaults < TOML file < `VALUEVERSE_*` environment < flags.
//! (Environment and flags reach here merged as [`Overrides`]; the CLI lets a
//! flag win over its environment variable.)

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::actors::RuntimeConfig;
pub use valueverse_agents::config::{NotifierConfig, SimulationConfig, ValueConfig};
pub use valueverse_cluster::config::ClusterConfig;
pub use valueverse_http::LimitsConfig;

/// Configuration of one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Name of this node in logs, metrics and the supervision tree.
    pub node_name: String,
    /// Address the HTTP API listens on.
    pub http_addr: SocketAddr,
    /// `sqlite://path` (embedded, created when missing) or `postgres://...`.
    pub database_url: String,
    /// Connections in the store's pool.
    pub database_max_connections: u32,
    /// Log filter in `RUST_LOG` syntax (`info`, `valueverse=debug,info`).
    pub log: String,
    pub log_format: LogFormat,
    /// HTTP worker threads.
    pub http_workers: usize,
    pub runtime: RuntimeConfig,
    pub simulation: SimulationConfig,
    /// How often active execution plans look for overdue milestones.
    #[serde(with = "humantime_serde")]
    pub executor_tick: Duration,
    /// Statements, snapshots, deliveries and their import.
    pub value: ValueConfig,
    pub notifier: NotifierConfig,
    /// Development mode: no API keys checked (said loudly in the log).
    pub dev: bool,
    /// Largest request body accepted (bytes); larger ones get 413.
    pub http_body_limit: usize,
    /// Serve `/dashboard` and its data (off: those routes answer 404).
    pub dashboard: bool,
    pub cluster: ClusterConfig,
    pub limits: LimitsConfig,
    /// People sign in through this OpenID Connect provider (bearer JWTs);
    /// unset: API keys only.
    pub oidc: Option<valueverse_http::oidc::OidcSettings>,
    /// Each tenant's quotas unless it has its own (`valueverse tenant
    /// quotas`).
    pub quotas: valueverse_agents::quotas::Quotas,
}

/// Shortest cluster secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            node_name: "node-1".into(),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: "sqlite://valueverse.db".into(),
            database_max_connections: 8,
            log: "info".into(),
            log_format: LogFormat::Text,
            http_workers: 2,
            runtime: RuntimeConfig::default(),
            simulation: SimulationConfig::default(),
            executor_tick: Duration::from_secs(60),
            value: ValueConfig::default(),
            notifier: NotifierConfig::default(),
            dev: false,
            http_body_limit: 1 << 20,
            dashboard: true,
            cluster: ClusterConfig::default(),
            limits: LimitsConfig::default(),
            oidc: None,
            quotas: valueverse_agents::quotas::Quotas::default(),
        }
    }
}

/// Values given on the command line or in the environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub node_name: Option<String>,
    pub http_addr: Option<SocketAddr>,
    pub database_url: Option<String>,
    pub database_max_connections: Option<u32>,
    pub log: Option<String>,
    pub log_format: Option<LogFormat>,
    pub http_workers: Option<usize>,
    pub workers: Option<usize>,
    pub mailbox_capacity: Option<usize>,
    pub passivate_after: Option<Duration>,
    pub ask_timeout: Option<Duration>,
    pub simulation_cpu_workers: Option<usize>,
    pub simulation_queue_capacity: Option<usize>,
    pub dev: Option<bool>,
    pub http_body_limit: Option<usize>,
    pub dashboard: Option<bool>,
    /// `valueverse node`: join a cluster with these.
    pub cluster: Option<ClusterOverrides>,
}

/// The flags of `valueverse node`.
#[derive(Clone, Debug, Default)]
pub struct ClusterOverrides {
    pub listen: Option<SocketAddr>,
    pub gossip: Option<SocketAddr>,
    pub seeds: Option<Vec<String>>,
    pub advertise_host: Option<String>,
    pub secret: Option<String>,
    pub cluster_id: Option<String>,
    pub gpus: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid configuration: `{field}` {reason}")]
    Invalid { field: String, reason: String },
}

impl Config {
    /// Defaults, then the TOML file (if any), then the overrides; validated.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => Config::from_toml_file(path)?,
            None => Config::default(),
        };
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    fn from_toml_file(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: shown,
            message: error.to_string().trim_end().to_owned(),
        })
    }

    fn apply(&mut self, overrides: &Overrides) {
        let Overrides {
            node_name,
            http_addr,
            database_url,
            database_max_connections,
            log,
            log_format,
            http_workers,
            workers,
            mailbox_capacity,
            passivate_after,
            ask_timeout,
            simulation_cpu_workers,
            simulation_queue_capacity,
            dev,
            http_body_limit,
            dashboard,
            cluster,
        } = overrides.clone();
        fn set<T>(target: &mut T, value: Option<T>) {
            if let Some(value) = value {
                *target = value;
            }
        }
        set(&mut self.node_name, node_name);
        set(&mut self.http_addr, http_addr);
        set(&mut self.database_url, database_url);
        set(&mut self.database_max_connections, database_max_connections);
        set(&mut self.log, log);
        set(&mut self.log_format, log_format);
        set(&mut self.http_workers, http_workers);
        set(&mut self.runtime.workers, workers);
        set(&mut self.runtime.mailbox_capacity, mailbox_capacity);
        set(&mut self.runtime.passivate_after, passivate_after);
        set(&mut self.runtime.ask_timeout, ask_timeout);
        set(&mut self.simulation.cpu_workers, simulation_cpu_workers);
        set(
            &mut self.simulation.queue_capacity,
            simulation_queue_capacity,
        );
        set(&mut self.dev, dev);
        set(&mut self.http_body_limit, http_body_limit);
        set(&mut self.dashboard, dashboard);
        if let Some(cluster) = cluster {
            self.cluster.enabled = true;
            set(&mut self.cluster.listen, cluster.listen);
            set(&mut self.cluster.gossip, cluster.gossip);
            set(&mut self.cluster.seeds, cluster.seeds);
            set(&mut self.cluster.cluster_id, cluster.cluster_id);
            set(&mut self.cluster.gpus, cluster.gpus);
            if cluster.secret.is_some() {
                self.cluster.secret = cluster.secret;
            }
            if cluster.advertise_host.is_some() {
                self.cluster.advertise_host = cluster.advertise_host;
            }
        }
    }

    /// Checks every value; the error names the field at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: &str| {
            Err(ConfigError::Invalid {
                field: field.to_owned(),
                reason: reason.to_owned(),
            })
        };
        let valid_name = |name: &str| {
            !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        };
        if !valid_name(&self.node_name) {
            return invalid(
                "node_name",
                "must be 1 to 64 characters of letters, digits, '-', '_' or '.'",
            );
        }
        let url = &self.database_url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return invalid(
                "database_url",
                "must start with sqlite:, postgres:// or postgresql://",
            );
        }
        if !(1..=1000).contains(&self.database_max_connections) {
            return invalid("database_max_connections", "must be within 1..=1000");
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log).is_err() {
            return invalid(
                "log",
                "is not a valid log filter (e.g. `info` or `valueverse=debug`)",
            );
        }
        if !(1..=256).contains(&self.http_workers) {
            return invalid("http_workers", "must be within 1..=256");
        }
        let runtime = &self.runtime;
        if !(1..=256).contains(&runtime.workers) {
            return invalid("runtime.workers", "must be within 1..=256");
        }
        if !(1..=1 << 24).contains(&runtime.mailbox_capacity) {
            return invalid("runtime.mailbox_capacity", "must be within 1..=16777216");
        }
        if runtime.passivate_after.is_zero() {
            return invalid("runtime.passivate_after", "must be longer than 0s");
        }
        if runtime.ask_timeout.is_zero() {
            return invalid("runtime.ask_timeout", "must be longer than 0s");
        }
        if !(1024..=1 << 30).contains(&self.http_body_limit) {
            return invalid("http_body_limit", "must be within 1024..=1073741824 bytes");
        }
        if self.executor_tick < Duration::from_millis(10) {
            return invalid("executor_tick", "must be at least 10ms");
        }
        let value = &self.value;
        if value.tick < Duration::from_millis(10) {
            return invalid("value.tick", "must be at least 10ms");
        }
        if !(value.max_delivery_value.is_finite()
            && value.max_delivery_value > 0.0
            && value.max_delivery_value <= 9_007_199_254_740_991.0)
        {
            return invalid(
                "value.max_delivery_value",
                "must be a positive number of at most 2^53 - 1",
            );
        }
        if !(0.0..1.0).contains(&value.risk_margin) {
            return invalid("value.risk_margin", "must be within [0, 1)");
        }
        if !(1..=1_000_000).contains(&value.import_max_rows) {
            return invalid("value.import_max_rows", "must be within 1..=1000000");
        }
        let notifier = &self.notifier;
        if !(1..=50).contains(&notifier.max_attempts) {
            return invalid("notifier.max_attempts", "must be within 1..=50");
        }
        if notifier.initial_backoff.is_zero() || notifier.max_backoff < notifier.initial_backoff {
            return invalid(
                "notifier.max_backoff",
                "must be at least notifier.initial_backoff, which must be longer than 0s",
            );
        }
        if notifier.timeout.is_zero() {
            return invalid("notifier.timeout", "must be longer than 0s");
        }
        if notifier.poll_interval < Duration::from_millis(10)
            || notifier.poll_interval > Duration::from_secs(60)
        {
            return invalid("notifier.poll_interval", "must be within 10ms..=60s");
        }
        if !(1..=1024).contains(&notifier.concurrency) {
            return invalid("notifier.concurrency", "must be within 1..=1024");
        }
        if let Some(url) = &notifier.smtp_url
            && !url.starts_with("smtp://")
        {
            return invalid("notifier.smtp_url", "must be smtp://host[:port]");
        }
        if let Some(oidc) = &self.oidc
            && let Err(error) = oidc.check()
        {
            return invalid("oidc", &error.to_string());
        }
        let limits = &self.limits;
        let positive = |field: &str, value: u32| {
            if value == 0 {
                invalid(field, "must be at least 1")
            } else {
                Ok(())
            }
        };
        positive("limits.requests_per_second", limits.requests_per_second)?;
        positive(
            "limits.unauthenticated_per_second",
            limits.unauthenticated_per_second,
        )?;
        positive("limits.in_flight_per_key", limits.in_flight_per_key)?;
        positive("limits.websockets_per_key", limits.websockets_per_key)?;
        positive(
            "limits.websockets_per_address",
            limits.websockets_per_address,
        )?;
        if limits.burst < limits.requests_per_second {
            return invalid(
                "limits.burst",
                "must be at least limits.requests_per_second",
            );
        }
        if !(16..=1_000_000).contains(&limits.max_connections) {
            return invalid("limits.max_connections", "must be within 16..=1000000");
        }
        if limits.max_connections < self.http_workers {
            return invalid("limits.max_connections", "must be at least http_workers");
        }
        if !(1..=10_000).contains(&limits.model_versions) {
            return invalid("limits.model_versions", "must be within 1..=10000");
        }
        if !(1..=100_000_000).contains(&limits.unknown_keys_cached) {
            return invalid("limits.unknown_keys_cached", "must be within 1..=100000000");
        }
        for (field, value) in [
            ("limits.body_read_timeout", limits.body_read_timeout),
            ("limits.key_cache_ttl", limits.key_cache_ttl),
            ("limits.websocket_ping", limits.websocket_ping),
        ] {
            if value < Duration::from_millis(10) {
                return invalid(field, "must be at least 10ms");
            }
        }
        if limits.websocket_idle <= limits.websocket_ping {
            return invalid(
                "limits.websocket_idle",
                "must be longer than limits.websocket_ping",
            );
        }
        if !(1..=64).contains(&self.simulation.cpu_workers) {
            return invalid("simulation.cpu_workers", "must be within 1..=64");
        }
        if !(1..=100_000).contains(&self.simulation.queue_capacity) {
            return invalid("simulation.queue_capacity", "must be within 1..=100000");
        }
        if self.simulation.max_jobs_per_submitter == 0 {
            return invalid("simulation.max_jobs_per_submitter", "must be at least 1");
        }
        let budget = self.simulation.cost_budget_per_submitter;
        if !(budget.is_finite() && budget >= 1.0) {
            return invalid(
                "simulation.cost_budget_per_submitter",
                "must be a finite number of at least 1",
            );
        }
        let cluster = &self.cluster;
        if cluster.enabled {
            if url.starts_with("sqlite:") {
                return invalid(
                    "database_url",
                    "is SQLite, but the nodes of a cluster share one PostgreSQL database: \
                     give --database-url postgres://..., or run `valueverse serve` for a \
                     single node on SQLite",
                );
            }
            match &cluster.secret {
                Some(secret) if secret.len() >= MIN_SECRET_LEN => {}
                _ => {
                    return invalid(
                        "cluster.secret",
                        "must be set (--secret or VALUEVERSE_CLUSTER_SECRET) to at least 16 \
                         characters, the same on every node",
                    );
                }
            }
            let wildcard =
                cluster.listen.ip().is_unspecified() || cluster.gossip.ip().is_unspecified();
            if wildcard && cluster.advertise_host.is_none() {
                return invalid(
                    "cluster.advertise_host",
                    "must be set when cluster.listen or cluster.gossip binds a wildcard address: \
                     other nodes need an address they can reach",
                );
            }
            if cluster.gossip.port() == 0 {
                return invalid(
                    "cluster.gossip",
                    "needs a fixed port: other nodes reach this node there",
                );
            }
            if cluster.listen == cluster.gossip {
                return invalid("cluster.gossip", "must differ from cluster.listen");
            }
        }
        if cluster.lease_ttl < Duration::from_millis(300) {
            return invalid("cluster.lease_ttl", "must be at least 300ms");
        }
        if cluster.gossip_interval.is_zero() || cluster.gossip_interval > cluster.lease_ttl {
            return invalid(
                "cluster.gossip_interval",
                "must be longer than 0s and no longer than cluster.lease_ttl",
            );
        }
        for (kind, strategy) in &runtime.supervision {
            if let Err((field, reason)) = strategy.validate() {
                return invalid(&format!("runtime.supervision.{kind}.{field}"), &reason);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn file_then_overrides_win_over_defaults() {
        let file = write(
            "node_name = \"from-file\"\nhttp_addr = \"127.0.0.1:9000\"\n\
             [runtime]\nmailbox_capacity = 64\npassivate_after = \"2m\"\n",
        );
        let overrides = Overrides {
            http_addr: Some("127.0.0.1:9100".parse().unwrap()),
            ..Overrides::default()
        };
        let config = Config::load(Some(file.path()), &overrides).unwrap();
        assert_eq!(config.node_name, "from-file");
        assert_eq!(config.http_addr.port(), 9100);
        assert_eq!(config.runtime.mailbox_capacity, 64);
        assert_eq!(config.runtime.passivate_after, Duration::from_secs(120));
        assert_eq!(config.database_url, "sqlite://valueverse.db");
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            (
                "[runtime]\nmailbox_capacity = 0\n",
                "runtime.mailbox_capacity",
            ),
            ("node_name = \"\"\n", "node_name"),
            ("database_url = \"mysql://x\"\n", "database_url"),
            (
                "[runtime.supervision.architect]\njitter = 3.0\n",
                "runtime.supervision.architect.jitter",
            ),
        ];
        for (text, field) in cases {
            let file = write(text);
            let error = Config::load(Some(file.path()), &Overrides::default()).unwrap_err();
            assert!(error.to_string().contains(field), "{text}: {error}");
        }
    }

    #[test]
    fn unknown_and_mistyped_keys_are_refused_with_their_name() {
        for (text, needle) in [
            ("colour = \"blue\"\n", "colour"),
            ("[runtime]\npassivate_after = \"soon\"\n", "passivate_after"),
        ] {
            let file = write(text);
            let error = Config::load(Some(file.path()), &Overrides::default()).unwrap_err();
            assert!(error.to_string().contains(needle), "{error}");
        }
    }
}
