//! How a node joins a cluster: what `valueverse node` is configured with
//! (the root's `Config` holds it and validates it with the rest).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Joining a cluster (`valueverse node`). Off, the node is a cluster of
/// one: the same lease and placement code runs, with no transport or gossip.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    pub enabled: bool,
    /// Where the node-to-node transport listens (TCP).
    pub listen: SocketAddr,
    /// Where gossip listens (UDP); others reach this node there.
    pub gossip: SocketAddr,
    /// Gossip addresses of nodes to contact first (`host:port`).
    pub seeds: Vec<String>,
    /// Host name or IP other nodes reach this one at, when the bound
    /// addresses are wildcards (`0.0.0.0`) or private to a container.
    pub advertise_host: Option<String>,
    /// Shared secret every node of the cluster proves at the handshake.
    pub secret: Option<String>,
    /// Nodes gossip only with nodes of the same cluster id.
    pub cluster_id: String,
    /// A node whose lease is this old without renewal leaves placement.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub gossip_interval: Duration,
    /// GPUs this node offers to simulation jobs (placement prefers them).
    pub gpus: u32,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 7001)),
            gossip: SocketAddr::from(([127, 0, 0, 1], 7101)),
            seeds: Vec::new(),
            advertise_host: None,
            secret: None,
            cluster_id: "valueverse".into(),
            lease_ttl: Duration::from_secs(3),
            gossip_interval: Duration::from_millis(200),
            gpus: 0,
        }
    }
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("enabled", &self.enabled)
            .field("listen", &self.listen)
            .field("gossip", &self.gossip)
            .field("seeds", &self.seeds)
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("cluster_id", &self.cluster_id)
            .field("lease_ttl", &self.lease_ttl)
            .finish_non_exhaustive()
    }
}
