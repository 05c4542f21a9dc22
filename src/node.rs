//! A node: store opened and migrated, agent runtime started, HTTP API bound.
//! `serve` runs one; tests start them in-process.

use std::net::SocketAddr;

use crate::actors::System;
use crate::actors::amplifier::Amplifier;
use crate::actors::architect::Architect;
use crate::actors::committer::Committer;
use crate::actors::executor::{Executor, tick_active_plans};
use crate::actors::notifier::Notifier;
use crate::actors::saga::SagaCoordinator;
use crate::cluster::node::{ClusterError, ClusterNode};
use crate::cluster::peer_requests::PeerRequests;
use crate::config::{Config, ValueConfig};
use crate::dashboard::Dashboard;
use crate::http::{HttpApi, HttpSettings, Services};
use crate::notifications::{Notifications, NotifierError};
use crate::sagas::SagaRunner;
use crate::simulations::{Simulations, StartError};
use crate::store::{Store, StoreError, redact_url};
use valueverse_agents::Records;
use valueverse_agents::quotas::TenantQuotas;
use valueverse_agents::statements::{issue_due_statements, take_due_snapshots};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot open the store at {url}")]
    Store {
        url: String,
        #[source]
        source: StoreError,
    },
    #[error("cannot start the agent runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot start the simulation service")]
    Simulations(#[source] StartError),
    #[error("cannot start the notifier")]
    Notifier(#[source] NotifierError),
    #[error("cannot join the cluster")]
    Cluster(#[source] ClusterError),
    #[error("cannot listen for HTTP on {addr}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running node.
pub struct Node {
    pub system: System,
    /// The store under the node's agents, services and leases.
    pub store: Store,
    pub simulations: Simulations,
    pub http: HttpApi,
    pub notifications: Notifications,
    pub sagas: SagaRunner,
    pub cluster: ClusterNode,
    cluster_task: tokio::task::JoinHandle<()>,
    saga_poller: tokio::task::JoinHandle<()>,
    ticker: tokio::task::JoinHandle<()>,
    value_ticker: tokio::task::JoinHandle<()>,
    listener: tokio::task::JoinHandle<()>,
    quota_refresher: tokio::task::JoinHandle<()>,
}

impl Node {
    /// Opens and migrates the store, starts the runtime, lets `register` add
    /// agent kinds, and serves HTTP. Must be called inside a tokio runtime.
    pub async fn start(config: &Config, register: impl FnOnce(&System)) -> Result<Node, NodeError> {
        let store = Store::open(&config.database_url, config.database_max_connections)
            .await
            .map_err(|source| NodeError::Store {
                url: redact_url(&config.database_url),
                source,
            })?;
        let system = System::start(
            config.node_name.clone(),
            config.runtime.clone(),
            store.clone(),
        )
        .map_err(NodeError::Runtime)?;
        system
            .register::<Architect>()
            .register::<Committer>()
            .register::<Executor>()
            .register::<Amplifier>()
            .register::<Notifier>()
            .register::<SagaCoordinator>();
        register(&system);
        // Each tenant's quotas: read again every few seconds for the
        // runtime's check before an activation.
        let quotas = TenantQuotas::new(store.clone(), config.quotas);
        // Read before the first request; then every few seconds.
        if let Err(error) = quotas.refresh().await {
            tracing::warn!(%error, "could not read the tenants' quotas: the defaults hold");
        }
        system.set_instance_quota(quotas.instance_quota());
        if config.cluster.enabled {
            system.wanted_events().keep_all();
        }
        // Bound first: the lease and gossip advertise the real address
        // (port 0 picks one).
        let (http_listener, http_addr) = std::net::TcpListener::bind(config.http_addr)
            .and_then(|bound| bound.local_addr().map(|addr| (bound, addr)))
            .map_err(|source| NodeError::Http {
                addr: config.http_addr,
                source,
            })?;
        // Before anything that acts on ownership (the saga poller resumes
        // the sagas this node owns): the view holds the cluster by then.
        let (cluster, cluster_task) =
            ClusterNode::start(&system, &store, &config.cluster, http_addr)
                .await
                .map_err(NodeError::Cluster)?;
        let (notifications, listener) = match Notifications::start(
            system.clone(),
            store.clone(),
            cluster.clone(),
            &config.notifier,
        ) {
            Ok(started) => started,
            Err(error) => {
                cluster.leave(cluster_task).await;
                return Err(NodeError::Notifier(error));
            }
        };
        let simulations = match Simulations::start(
            system.clone(),
            store.clone(),
            cluster.clone(),
            &config.simulation,
        )
        .await
        {
            Ok(simulations) => simulations,
            Err(error) => {
                listener.abort();
                cluster.leave(cluster_task).await;
                return Err(NodeError::Simulations(error));
            }
        };
        let (sagas, saga_poller) =
            SagaRunner::start(system.clone(), store.clone(), simulations.clone());
        let records = Records::new(store.clone(), &system);
        let peers = std::sync::Arc::new(PeerRequests::new(
            system.node_name(),
            config
                .cluster
                .secret
                .clone()
                .filter(|_| config.cluster.enabled),
        ));
        let services = Services {
            system: system.clone(),
            records: records.clone(),
            simulations: simulations.clone(),
            notifications: notifications.clone(),
            sagas: sagas.clone(),
            cluster: cluster.clone(),
            dashboard: config.dashboard.then(|| {
                Dashboard::start(
                    system.clone(),
                    records.clone(),
                    simulations.clone(),
                    notifications.clone(),
                    crate::auth::ApiKeys::new(store.clone()),
                    cluster.clone(),
                    std::sync::Arc::clone(&peers),
                )
            }),
            peers,
            api_keys: crate::auth::ApiKeys::new(store.clone()),
            quotas: quotas.clone(),
            value: config.value.clone(),
        };
        let http = match HttpApi::start(http_listener, services, &http_settings(config)) {
            Ok(http) => http,
            Err(source) => {
                saga_poller.abort();
                simulations.stop().await;
                listener.abort();
                cluster.leave(cluster_task).await;
                return Err(NodeError::Http {
                    addr: http_addr,
                    source,
                });
            }
        };
        let ticker = tokio::spawn(tick_plans(
            system.clone(),
            records.clone(),
            config.executor_tick,
        ));
        let value_ticker = tokio::spawn(tick_value(system.clone(), records, config.value.clone()));
        let quota_refresher = tokio::spawn(refresh_quotas(quotas));
        Ok(Node {
            system,
            store,
            simulations,
            http,
            notifications,
            sagas,
            cluster,
            cluster_task,
            saga_poller,
            ticker,
            value_ticker,
            listener,
            quota_refresher,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr
    }

    /// Stops HTTP (finishing requests in flight), the notifier's attempts
    /// under way, then the simulation workers (a running job is left to
    /// run again at the next start or on another node), then releases the
    /// lease, then the runtime, then the store.
    pub async fn stop(self) -> std::io::Result<()> {
        self.ticker.abort();
        self.value_ticker.abort();
        self.quota_refresher.abort();
        self.listener.abort();
        self.saga_poller.abort();
        let stopped = self.http.stop().await;
        // Attempts and jobs under way end before the lease is released:
        // released first, another node would take them over while they
        // still run here.
        self.notifications.drain().await;
        self.simulations.stop().await;
        self.cluster.leave(self.cluster_task).await;
        let system = self.system;
        let store = self.store;
        // Joining the actor threads blocks: keep it off the async workers.
        tokio::task::spawn_blocking(move || system.shutdown())
            .await
            .map_err(|error| std::io::Error::other(error.to_string()))?;
        store.close().await;
        stopped
    }
}

/// Reads the tenants' quotas every few seconds.
async fn refresh_quotas(quotas: TenantQuotas) {
    let mut interval = tokio::time::interval(std::time::Duration::from_secs(5));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Read at start already.
    interval.tick().await;
    loop {
        interval.tick().await;
        if let Err(error) = quotas.refresh().await {
            tracing::warn!(%error, "could not read the tenants' quotas");
        }
    }
}

/// The executor's periodic tick: active plans look for overdue milestones.
async fn tick_plans(system: System, records: Records, every: std::time::Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(error) = tick_active_plans(&system, &records).await {
            tracing::warn!(%error, "executor tick: cannot list the active plans");
        }
    }
}

/// The value loop's tick: statements due are issued, and the daily
/// snapshots taken, on the instances this node owns.
async fn tick_value(system: System, records: Records, config: ValueConfig) {
    let mut interval = tokio::time::interval(config.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(error) = issue_due_statements(&system, &records).await {
            tracing::warn!(%error, "statements: cannot list the commitments due");
        }
        if let Err(error) = take_due_snapshots(&system, &records, config.risk_margin).await {
            tracing::warn!(%error, "snapshots: cannot list the models due");
        }
    }
}

/// What the API reads of a node's configuration.
fn http_settings(config: &Config) -> HttpSettings {
    HttpSettings {
        workers: config.http_workers,
        body_limit: config.http_body_limit,
        dev: config.dev,
        limits: config.limits.clone(),
        store_connections: config.database_max_connections,
        oidc: config.oidc.clone(),
    }
}
