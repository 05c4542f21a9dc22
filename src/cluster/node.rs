//! This node's part in the cluster: its lease row, its transport and gossip
//! (when it joined a cluster), and the loop that turns leases and gossip
//! into the router's view.
//!
//! Placement chooses among the nodes whose lease is valid: the database,
//! not gossip, decides who is down, so a partition cannot give one key two
//! owners that both reach the store. Gossip tells what each node hosts (its
//! kinds, GPUs, load) and how each looks from here (alive or suspect).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use serde::Serialize;

use crate::config::ClusterConfig;
use valueverse_runtime::System;
use valueverse_store::{Lease, LeaseClaim, Renewal, Store, StoreError, unix_millis};

use super::membership::{Member, MemberInfo, Membership, MembershipConfig, MembershipError};
use super::placement::Candidate;
use super::router::{self, Placed, Router};
use super::transport::{Transport, TransportConfig};

/// How often the view is rebuilt from the leases and gossip.
const VIEW_REFRESH: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot listen for the cluster transport on {addr}: {source}")]
    Transport {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Membership(#[from] MembershipError),
    #[error("cannot resolve the advertised host {host}: {reason}")]
    Advertise { host: String, reason: String },
    #[error("cannot take this node's lease: {0}")]
    Lease(#[source] StoreError),
    #[error(
        "node {node} of this cluster holds another cluster secret: give every node the same --secret"
    )]
    WrongSecret { node: String },
    #[error(
        "this node's runtime already has a way to other nodes: start one cluster node per system"
    )]
    AlreadyAttached,
}

/// One member as `GET /api/v1/cluster` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberView {
    pub node: String,
    /// `alive` (gossip hears it, lease valid), `suspect` (gossip does not
    /// hear it, lease still valid: it keeps its keys), `down` (lease expired).
    pub state: String,
    pub transport_addr: String,
    pub http_addr: String,
    pub kinds: Vec<String>,
    pub gpus: u32,
    pub load: f64,
    /// How long gossip has not heard the member, over its usual heartbeat
    /// interval (phi; about 8 marks it suspect); `None` for this node.
    pub phi: Option<f64>,
    /// Fencing token of the node's current lease.
    pub lease_token: i64,
    pub lease_expires_in_ms: i64,
    /// Instances this node would place on the member, out of a sample of
    /// keys per kind: how evenly the view spreads ownership.
    pub owns_share: f64,
    pub is_self: bool,
}

/// `GET /api/v1/cluster`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterView {
    pub node: String,
    /// Whether this node joined a cluster (`valueverse node`) or is a
    /// cluster of one (`serve`).
    pub clustered: bool,
    pub members: Vec<MemberView>,
    /// Instances active on this node, and how many of them this node owns
    /// in the current view (the rest are being handed off).
    pub local_instances: usize,
    pub rebalances: u64,
}

struct Metrics {
    rebalances: IntCounter,
    members: IntGauge,
    handoffs: IntCounter,
    gossip_ignored: IntCounter,
}

impl Metrics {
    fn new(registry: &prometheus::Registry) -> Metrics {
        let rebalances = IntCounter::new(
            "valueverse_cluster_rebalances_total",
            "Changes of the placement view (a node joined, left or lost its lease)",
        )
        .expect("valid metric");
        let members = IntGauge::new(
            "valueverse_cluster_members",
            "Nodes in this node's placement view",
        )
        .expect("valid metric");
        let handoffs = IntCounter::new(
            "valueverse_cluster_handoffs_total",
            "Instances asked to passivate because another node owns them now",
        )
        .expect("valid metric");
        let gossip_ignored = IntCounter::new(
            "valueverse_cluster_gossip_ignored_total",
            "Gossip members whose values disagree with the proven lease of the node \
             they name (addresses, kinds, GPUs), counted at each view refresh: \
             ignored, placement follows the lease",
        )
        .expect("valid metric");
        for collector in [
            Box::new(rebalances.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(members.clone()),
            Box::new(handoffs.clone()),
            Box::new(gossip_ignored.clone()),
        ] {
            let _ = registry.register(collector);
        }
        Metrics {
            rebalances,
            members,
            handoffs,
            gossip_ignored,
        }
    }
}

struct Shared {
    system: System,
    /// Where the leases are.
    store: Store,
    router: Arc<Router>,
    config: ClusterConfig,
    transport_addr: String,
    http_addr: String,
    membership: tokio::sync::RwLock<Option<Membership>>,
    token: AtomicI64,
    /// Another run of this node took the lease: this one serves nothing.
    fenced: AtomicBool,
    metrics: Metrics,
    last_leases: Mutex<Vec<Lease>>,
}

/// This node's membership in the cluster. Cheap to clone;
/// [`ClusterNode::leave`] ends it.
#[derive(Clone)]
pub struct ClusterNode {
    shared: Arc<Shared>,
}

impl ClusterNode {
    /// Takes the lease, and with `config.enabled` binds the transport and
    /// joins gossip; the task returned keeps the router's view current.
    pub async fn start(
        system: &System,
        store: &Store,
        config: &ClusterConfig,
        http_addr: SocketAddr,
    ) -> Result<(ClusterNode, tokio::task::JoinHandle<()>), ClusterError> {
        let name = system.node_name().to_owned();
        let router = Arc::new(Router::new(&name, system.placement_changes()));
        system
            .attach_remote(Arc::clone(&router) as Arc<dyn valueverse_runtime::Remote>)
            .map_err(|_| ClusterError::AlreadyAttached)?;
        let mut membership = None;
        let mut transport_addr = String::new();
        if config.enabled {
            let secret = config.secret.clone().unwrap_or_default();
            let advertised = match &config.advertise_host {
                Some(host) => Some(advertised_ip(host).await?),
                None => None,
            };
            let mut transport_config = TransportConfig::new(&name, secret.as_bytes());
            transport_config.advertise =
                advertised.map(|ip| SocketAddr::new(ip, config.listen.port()));
            transport_config.messages = system.message_versions();
            let transport = Transport::bind(
                config.listen,
                transport_config,
                router::inbound(system.downgrade()),
            )
            .await
            .map_err(|source| ClusterError::Transport {
                addr: config.listen,
                source,
            })?;
            transport.register(system.metrics().registry());
            let listen = transport.local_addr();
            transport_addr = listen.to_string();
            router.attach(transport, tokio::runtime::Handle::current());
            membership = Some(
                Membership::start(MembershipConfig {
                    cluster_id: super::membership::gossip_cluster_id(&config.cluster_id, &secret),
                    gossip_addr: config.gossip,
                    advertise_addr: advertised.map(|ip| SocketAddr::new(ip, config.gossip.port())),
                    seeds: config.seeds.clone(),
                    gossip_interval: config.gossip_interval,
                    info: MemberInfo {
                        node: name.clone(),
                        transport_addr: listen,
                        http_addr,
                        kinds: system.kinds(),
                        gpus: config.gpus,
                        load: 0.0,
                    },
                })
                .await?,
            );
        }
        // The HTTP address others can use, for the member list.
        let http_addr = match (&config.advertise_host, http_addr.ip().is_unspecified()) {
            (Some(host), true) => SocketAddr::new(advertised_ip(host).await?, http_addr.port()),
            _ => http_addr,
        };
        let ttl = config.lease_ttl.as_millis() as i64;
        if config.enabled {
            let now = unix_millis();
            let leases = store.leases().await.map_err(ClusterError::Lease)?;
            if let Some(other) = leases.iter().find(|lease| {
                lease.node != name && lease.is_valid_at(now) && !proven(config, lease)
            }) {
                return Err(ClusterError::WrongSecret {
                    node: other.node.clone(),
                });
            }
        }
        let kinds = kinds_field(&system.kinds());
        let http = http_addr.to_string();
        let mut claim = LeaseClaim {
            node: &name,
            transport_addr: &transport_addr,
            http_addr: &http,
            kinds: &kinds,
            gpus: i64::from(config.gpus),
            proof: "",
        };
        let signature = proof(config, &claim);
        claim.proof = &signature;
        let token = store
            .acquire_lease(claim, ttl)
            .await
            .map_err(ClusterError::Lease)?;
        tracing::info!(node = %name, token, clustered = config.enabled, "cluster: lease taken");
        let shared = Arc::new(Shared {
            system: system.clone(),
            store: store.clone(),
            router,
            config: config.clone(),
            transport_addr,
            http_addr: http_addr.to_string(),
            membership: tokio::sync::RwLock::new(membership),
            token: AtomicI64::new(token),
            fenced: AtomicBool::new(false),
            metrics: Metrics::new(system.metrics().registry()),
            last_leases: Mutex::new(Vec::new()),
        });
        shared.refresh().await;
        let task = tokio::spawn(Arc::clone(&shared).run());
        Ok((ClusterNode { shared }, task))
    }

    /// The node's lease token, while the node holds its lease (not
    /// fenced by another run of itself): what its claims are made under.
    pub fn lease_token(&self) -> Option<i64> {
        let shared = &self.shared;
        (!shared.fenced.load(Ordering::Acquire)).then(|| shared.token.load(Ordering::Acquire))
    }

    /// The members as this node sees them.
    pub async fn view(&self) -> ClusterView {
        self.shared.view().await
    }

    /// Leaves, once `task` is stopped: the lease is released (placement
    /// moves at once, without waiting for expiry) and gossip stops.
    pub async fn leave(&self, task: tokio::task::JoinHandle<()>) {
        task.abort();
        let _ = task.await;
        let shared = &self.shared;
        let name = shared.system.node_name();
        let token = shared.token.load(Ordering::Acquire);
        if let Err(error) = shared.store.release_lease(name, token).await {
            tracing::warn!(%error, "cluster: could not release the lease");
        }
        if let Some(membership) = shared.membership.write().await.take() {
            membership.shutdown().await;
        }
    }
}

impl Shared {
    async fn run(self: Arc<Self>) {
        let renew_every = self.config.lease_ttl / 3;
        let mut renew = tokio::time::interval(renew_every);
        let mut refresh = tokio::time::interval(VIEW_REFRESH);
        for timer in [&mut renew, &mut refresh] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                _ = renew.tick() => self.renew().await,
                _ = refresh.tick() => self.refresh().await,
            }
        }
    }

    async fn renew(&self) {
        if self.fenced.load(Ordering::Acquire) {
            return;
        }
        let name = self.system.node_name();
        let token = self.token.load(Ordering::Acquire);
        let ttl = self.config.lease_ttl.as_millis() as i64;
        match self.store.renew_lease(name, token, ttl).await {
            Ok(Renewal::Renewed) => {}
            Ok(Renewal::Lapsed) => {
                // Stalled past the lease (a slow store): what was claimed
                // under the old token may be another node's now. A new
                // token, as a restart would take, keeps it so.
                let kinds = kinds_field(&self.system.kinds());
                let mut claim = LeaseClaim {
                    node: name,
                    transport_addr: &self.transport_addr,
                    http_addr: &self.http_addr,
                    kinds: &kinds,
                    gpus: i64::from(self.config.gpus),
                    proof: "",
                };
                let signature = proof(&self.config, &claim);
                claim.proof = &signature;
                match self.store.acquire_lease(claim, ttl).await {
                    Ok(new) => {
                        self.token.store(new, Ordering::Release);
                        tracing::warn!(node = %name, old = token, new,
                            "cluster: the lease lapsed before its renewal; took a new one");
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cluster: the lease lapsed and cannot be taken again")
                    }
                }
            }
            Ok(Renewal::TakenOver) => {
                // Another run of this node holds the lease now: serving
                // beside it would make two owners of our keys.
                tracing::error!(
                    node = %name,
                    token,
                    "cluster: this node's lease was taken over; it stops serving its keys"
                );
                self.fenced.store(true, Ordering::Release);
            }
            Err(error) => {
                tracing::warn!(%error, "cluster: cannot renew the lease; keys move elsewhere when it expires")
            }
        }
    }

    /// Rebuilds the router's view: the nodes with a valid lease.
    async fn refresh(&self) {
        let leases = match self.store.leases().await {
            Ok(leases) => leases,
            Err(error) => {
                tracing::warn!(%error, "cluster: cannot read the leases; keeping the view");
                return;
            }
        };
        let heard = self.heard().await;
        let me = self.system.node_name();
        let now = unix_millis();
        let fenced = self.fenced.load(Ordering::Acquire);
        let mut placed = Vec::new();
        for lease in &leases {
            let mine = lease.node == me;
            if !lease.is_valid_at(now) || !proven(&self.config, lease) || (mine && fenced) {
                continue;
            }
            let transport_addr = match lease.transport_addr.parse() {
                Ok(addr) => addr,
                // A cluster of one has no transport: only itself to place on.
                Err(_) if mine => SocketAddr::from(([127, 0, 0, 1], 0)),
                Err(_) => continue,
            };
            // What a node hosts is what its proven lease says; gossip that
            // says otherwise is forged or stale, and only counted.
            let kinds = lease_kinds(lease);
            let gpus = u32::try_from(lease.gpus).unwrap_or(0);
            let disagreeing = heard
                .iter()
                .filter(|member| {
                    member.info.node == lease.node
                        && (member.info.kinds != kinds
                            || member.info.gpus != gpus
                            || member.info.transport_addr.to_string() != lease.transport_addr)
                })
                .count();
            if disagreeing > 0 {
                self.metrics.gossip_ignored.inc_by(disagreeing as u64);
                tracing::debug!(node = %lease.node, "cluster: gossip disagrees with the lease; ignored");
            }
            placed.push(Placed {
                candidate: Candidate {
                    node: lease.node.clone(),
                    kinds,
                    gpus,
                },
                transport_addr,
            });
        }
        if let Some(transport) = self.router.transport() {
            transport.set_members(
                placed
                    .iter()
                    .filter(|placed| placed.candidate.node != me)
                    .map(|placed| placed.transport_addr),
            );
        }
        if !self.config.enabled {
            // A cluster of one places on itself alone, whatever else the
            // database holds.
            placed.retain(|placed| placed.candidate.node == me);
        }
        let count = placed.len();
        let nodes: Vec<String> = placed.iter().map(|p| p.candidate.node.clone()).collect();
        if self.router.set_view(placed) {
            self.metrics.rebalances.inc();
            self.metrics.members.set(count as i64);
            let handed_off = self.system.hand_off_unowned();
            self.metrics.handoffs.inc_by(handed_off as u64);
            tracing::info!(
                members = ?nodes,
                handed_off,
                "cluster: placement changed"
            );
        }
        *self.last_leases.lock().unwrap_or_else(|p| p.into_inner()) = leases;
    }

    /// Every member gossip knows, runs of one name apart.
    async fn heard(&self) -> Vec<Member> {
        match self.membership.read().await.as_ref() {
            Some(membership) => membership.members().await,
            None => Vec::new(),
        }
    }

    /// Members gossip knows, by name; the newest run of each name wins.
    async fn gossip(&self) -> HashMap<String, Member> {
        let mut by_name: HashMap<String, Member> = HashMap::new();
        for member in self.heard().await {
            let keep = by_name
                .get(&member.info.node)
                .is_none_or(|known| known.state != "alive");
            if keep {
                by_name.insert(member.info.node.clone(), member);
            }
        }
        by_name
    }

    async fn view(&self) -> ClusterView {
        let gossip = self.gossip().await;
        let leases = self
            .last_leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let router = &self.router;
        let placed = router.view();
        let me = self.system.node_name().to_owned();
        let now = unix_millis();
        let kinds = self.system.kinds();
        // Ownership shares over a fixed sample of keys per kind.
        const SAMPLE: usize = 256;
        let mut owned: HashMap<String, usize> = HashMap::new();
        for kind in &kinds {
            for i in 0..SAMPLE {
                *owned
                    .entry(router.owner_of(kind, &format!("k-{i}")))
                    .or_default() += 1;
            }
        }
        let total = (SAMPLE * kinds.len()).max(1) as f64;
        let members = leases
            .iter()
            .filter(|lease| self.config.enabled || lease.node == me)
            .map(|lease| {
                let heard = gossip.get(&lease.node);
                let in_view = placed.iter().any(|p| p.candidate.node == lease.node);
                let state = if !lease.is_valid_at(now) || !in_view {
                    "down"
                } else if heard.is_none_or(|m| m.state == "alive") {
                    "alive"
                } else {
                    "suspect"
                };
                MemberView {
                    node: lease.node.clone(),
                    state: state.into(),
                    transport_addr: lease.transport_addr.clone(),
                    http_addr: lease.http_addr.clone(),
                    kinds: lease_kinds(lease),
                    gpus: u32::try_from(lease.gpus).unwrap_or(0),
                    load: heard.map(|m| m.info.load).unwrap_or_default(),
                    phi: heard
                        .and_then(|m| m.phi)
                        .map(|phi| (phi * 100.0).round() / 100.0),
                    lease_token: lease.token,
                    lease_expires_in_ms: lease.expires_at_ms - now,
                    owns_share: *owned.get(&lease.node).unwrap_or(&0) as f64 / total,
                    is_self: lease.node == me,
                }
            })
            .collect();
        let tree = self.system.supervision_tree();
        let local_instances = tree
            .supervisors
            .iter()
            .map(|supervisor| supervisor.num_active)
            .sum();
        ClusterView {
            node: me,
            clustered: self.config.enabled,
            members,
            local_instances,
            rebalances: self.metrics.rebalances.get(),
        }
    }
}

/// The address `host` (a name or an IP) resolves to, IPv4 first.
async fn advertised_ip(host: &str) -> Result<std::net::IpAddr, ClusterError> {
    let failed = |reason: String| ClusterError::Advertise {
        host: host.to_owned(),
        reason,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|error| failed(error.to_string()))?
        .collect();
    addrs
        .iter()
        .find(|addr| addr.is_ipv4())
        .or(addrs.first())
        .map(|addr| addr.ip())
        .ok_or_else(|| failed("no address".into()))
}

/// A lease's kinds as a list.
fn lease_kinds(lease: &Lease) -> Vec<String> {
    lease
        .kinds
        .split(',')
        .filter(|kind| !kind.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Kinds as a lease holds them: sorted, comma-separated.
fn kinds_field(kinds: &[String]) -> String {
    let mut kinds = kinds.to_vec();
    kinds.sort();
    kinds.join(",")
}

/// What a node's lease carries to show it holds the cluster secret: an
/// HMAC-SHA256 under the secret of everything placement takes from the
/// row (name, both addresses, kinds, GPUs), so a row edited by anyone
/// without the secret, or copied to another name or address, is not
/// placed on. A cluster of one has no secret and no proof.
fn proof(config: &ClusterConfig, claim: &LeaseClaim<'_>) -> String {
    use hmac::Mac;
    let Some(secret) = config.secret.as_ref().filter(|_| config.enabled) else {
        return String::new();
    };
    let gpus = claim.gpus.to_string();
    let mac = super::signed(
        secret,
        &[
            b"valueverse-lease-v2",
            claim.node.as_bytes(),
            claim.transport_addr.as_bytes(),
            claim.http_addr.as_bytes(),
            claim.kinds.as_bytes(),
            gpus.as_bytes(),
        ],
    );
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `lease` carries this cluster's proof of what it claims.
fn proven(config: &ClusterConfig, lease: &Lease) -> bool {
    let claim = LeaseClaim {
        node: &lease.node,
        transport_addr: &lease.transport_addr,
        http_addr: &lease.http_addr,
        kinds: &lease.kinds,
        gpus: lease.gpus,
        proof: &lease.proof,
    };
    let expected = proof(config, &claim);
    // Constant time: the proof is a MAC.
    expected.len() == lease.proof.len()
        && expected
            .bytes()
            .zip(lease.proof.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("node", &self.shared.system.node_name())
            .field("transport", &self.shared.transport_addr)
            .field("http", &self.shared.http_addr)
            .finish()
    }
}
