//! Who is in the cluster: chitchat (scuttlebutt gossip over UDP with a
//! phi-accrual failure detector, the membership layer of Quickwit). Each
//! node publishes what the others need to place and reach its instances:
//! its transport and HTTP addresses, the agent kinds it hosts, its GPU
//! count and its load.
//!
//! A member the detector suspects is `suspect` here, never `down`: taking
//! a node out of placement also needs its lease row in PostgreSQL to have
//! expired (the database arbitrates; gossip alone could split a cluster).
//!
//! Gossip is unauthenticated UDP: anyone on the network can forge it. So
//! nothing that moves keys is taken from it: kinds, GPUs and addresses come
//! from each node's proven lease row (`node.rs`); gossip shows liveness
//! (alive, suspect, phi) and load, for operators.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chitchat::transport::UdpTransport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState};
use serde::Serialize;

const TRANSPORT: &str = "transport_addr";
const HTTP: &str = "http_addr";
const KINDS: &str = "kinds";
const GPUS: &str = "gpus";
const LOAD: &str = "load";

/// What a node publishes about itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberInfo {
    pub node: String,
    pub transport_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub kinds: Vec<String>,
    pub gpus: u32,
    /// Messages waiting in the node's mailboxes, say; published as is.
    pub load: f64,
}

/// How this node joins.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    pub cluster_id: String,
    /// UDP address to gossip on.
    pub gossip_addr: SocketAddr,
    /// Where others reach this node's gossip (the bound address when `None`).
    pub advertise_addr: Option<SocketAddr>,
    /// Gossip addresses of nodes to contact first (`host:port`).
    pub seeds: Vec<String>,
    pub gossip_interval: Duration,
    pub info: MemberInfo,
}

/// A member as this node sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    #[serde(flatten)]
    pub info: MemberInfo,
    /// `alive`, or `suspect` when the failure detector no longer hears it.
    pub state: &'static str,
    pub gossip_addr: SocketAddr,
    /// Suspicion: time since its heartbeat last moved over the mean time
    /// between moves (chitchat's phi, which it keeps private); `None` for
    /// this node and until two moves were seen.
    pub phi: Option<f64>,
}

/// Heartbeat arrivals of each member, seen at each read of the members.
#[derive(Default)]
struct Arrivals {
    by_node: HashMap<ChitchatId, Arrival>,
}

struct Arrival {
    heartbeat: u64,
    at: Instant,
    /// Mean time between heartbeat moves, smoothed (EWMA, 1/8).
    mean: Option<Duration>,
}

impl Arrivals {
    /// Records `heartbeat` of `id` seen at `now`; answers its phi.
    fn observe(&mut self, id: &ChitchatId, heartbeat: u64, now: Instant) -> Option<f64> {
        let arrival = self.by_node.entry(id.clone()).or_insert(Arrival {
            heartbeat,
            at: now,
            mean: None,
        });
        if heartbeat > arrival.heartbeat {
            let interval = now.duration_since(arrival.at);
            arrival.mean = Some(match arrival.mean {
                None => interval,
                Some(mean) => (mean * 7 + interval) / 8,
            });
            arrival.heartbeat = heartbeat;
            arrival.at = now;
        }
        let mean = arrival.mean?.as_secs_f64();
        (mean > 0.0).then(|| now.duration_since(arrival.at).as_secs_f64() / mean)
    }
}

/// The id gossip runs under: the configured id and a tag derived from the
/// secret, so nodes (or strangers) without the secret are not even heard
/// by chitchat. Not a defence on its own (gossip is plaintext UDP, and
/// the tag can be read off the wire): placement never trusts gossip.
pub fn gossip_cluster_id(cluster_id: &str, secret: &str) -> String {
    use hmac::Mac;
    let tag = super::signed(secret, &[b"valueverse-gossip-id", cluster_id.as_bytes()])
        .finalize()
        .into_bytes();
    format!("{cluster_id}-{}", hex::encode(&tag[..8]))
}

/// Why membership did not start.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("cannot start gossip on {addr}: {reason}")]
    Start { addr: SocketAddr, reason: String },
}

/// This node's membership; dropping it leaves gossip running until
/// [`Membership::shutdown`].
pub struct Membership {
    handle: ChitchatHandle,
    arrivals: std::sync::Mutex<Arrivals>,
}

impl Membership {
    pub async fn start(config: MembershipConfig) -> Result<Membership, MembershipError> {
        // A restarted node is a new generation: peers do not mix its
        // state with the previous run's.
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or_default();
        let info = &config.info;
        let chitchat = ChitchatConfig {
            chitchat_id: ChitchatId::new(
                info.node.clone(),
                generation,
                config.advertise_addr.unwrap_or(config.gossip_addr),
            ),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: config.gossip_addr,
            seed_nodes: config.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                // Suspect after about 8 phi: seconds of silence, adapted
                // to each member's heartbeat history.
                phi_threshold: 8.0,
                sampling_window_size: 1_000,
                max_interval: Duration::from_secs(10),
                initial_interval: config.gossip_interval * 2,
                dead_node_grace_period: Duration::from_secs(60 * 60),
            },
            marked_for_deletion_grace_period: Duration::from_secs(60 * 15),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let initial = vec![
            (TRANSPORT.to_owned(), info.transport_addr.to_string()),
            (HTTP.to_owned(), info.http_addr.to_string()),
            (KINDS.to_owned(), info.kinds.join(",")),
            (GPUS.to_owned(), info.gpus.to_string()),
            (LOAD.to_owned(), info.load.to_string()),
        ];
        let handle = chitchat::spawn_chitchat(chitchat, initial, &UdpTransport)
            .await
            .map_err(|error| MembershipError::Start {
                addr: config.gossip_addr,
                reason: error.to_string(),
            })?;
        Ok(Membership {
            handle,
            arrivals: std::sync::Mutex::new(Arrivals::default()),
        })
    }

    /// Publishes this node's load.
    pub async fn set_load(&self, load: f64) {
        self.handle
            .with_chitchat(|chitchat| chitchat.self_node_state().set(LOAD, load))
            .await;
    }

    /// Every member this node has heard of and not yet forgotten, itself
    /// included, sorted by name.
    pub async fn members(&self) -> Vec<Member> {
        let mut members = self
            .handle
            .with_chitchat(|chitchat| {
                let live: Vec<ChitchatId> = chitchat.live_nodes().cloned().collect();
                let me = chitchat.self_chitchat_id().clone();
                let now = Instant::now();
                let mut arrivals = self.arrivals.lock().unwrap_or_else(|p| p.into_inner());
                // Members gossip forgot leave no bookkeeping behind.
                let states = chitchat.node_states();
                arrivals.by_node.retain(|id, _| states.contains_key(id));
                chitchat
                    .node_states()
                    .iter()
                    .filter_map(|(id, state)| {
                        let info = info_of(id, state)?;
                        let phi = (*id != me)
                            .then(|| arrivals.observe(id, u64::from(state.heartbeat()), now))
                            .flatten();
                        Some(Member {
                            info,
                            state: if live.contains(id) {
                                "alive"
                            } else {
                                "suspect"
                            },
                            gossip_addr: id.gossip_advertise_addr,
                            phi,
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .await;
        members.sort_by(|a, b| a.info.node.cmp(&b.info.node));
        members
    }

    /// Leaves gossip; peers then stop hearing this node.
    pub async fn shutdown(self) {
        if let Err(error) = self.handle.shutdown().await {
            tracing::warn!(%error, "membership: gossip did not stop cleanly");
        }
    }
}

/// A member's published info; `None` while its keys have not all arrived.
fn info_of(id: &ChitchatId, state: &NodeState) -> Option<MemberInfo> {
    Some(MemberInfo {
        node: id.node_id.to_string(),
        transport_addr: state.get(TRANSPORT)?.parse().ok()?,
        http_addr: state.get(HTTP)?.parse().ok()?,
        kinds: state
            .get(KINDS)?
            .split(',')
            .filter(|kind| !kind.is_empty())
            .map(str::to_owned)
            .collect(),
        gpus: state.get(GPUS)?.parse().ok()?,
        load: state.get(LOAD)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::time::Instant;

    use super::*;

    fn free_udp() -> SocketAddr {
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    fn config(node: &str, gossip: SocketAddr, seeds: &[SocketAddr]) -> MembershipConfig {
        MembershipConfig {
            cluster_id: "test".into(),
            gossip_addr: gossip,
            advertise_addr: None,
            seeds: seeds.iter().map(ToString::to_string).collect(),
            gossip_interval: Duration::from_millis(100),
            info: MemberInfo {
                node: node.into(),
                transport_addr: "127.0.0.1:7001".parse().unwrap(),
                http_addr: "127.0.0.1:8081".parse().unwrap(),
                kinds: vec!["architect".into(), "simulation".into()],
                gpus: u32::from(node == "n3"),
                load: 0.0,
            },
        }
    }

    async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn three_nodes_find_each_other_and_a_silent_one_becomes_suspect() {
        let addrs = [free_udp(), free_udp(), free_udp()];
        let first = Membership::start(config("n1", addrs[0], &[]))
            .await
            .unwrap();
        let second = Membership::start(config("n2", addrs[1], &addrs[..1]))
            .await
            .unwrap();
        let third = Membership::start(config("n3", addrs[2], &addrs[..1]))
            .await
            .unwrap();
        until("three alive members everywhere", async || {
            for membership in [&first, &second, &third] {
                let members = membership.members().await;
                if members.iter().filter(|m| m.state == "alive").count() != 3 {
                    return false;
                }
            }
            true
        })
        .await;
        let members = second.members().await;
        assert_eq!(
            members
                .iter()
                .map(|m| m.info.node.as_str())
                .collect::<Vec<_>>(),
            ["n1", "n2", "n3"]
        );
        assert_eq!(members[2].info.gpus, 1);
        assert_eq!(members[0].gossip_addr, addrs[0]);
        // Published changes travel.
        third.set_load(42.5).await;
        until("the new load", async || {
            first
                .members()
                .await
                .iter()
                .any(|m| m.info.node == "n3" && m.info.load == 42.5)
        })
        .await;
        // A node that stops gossiping is suspected, not forgotten.
        third.shutdown().await;
        until("n3 suspect", async || {
            first
                .members()
                .await
                .iter()
                .any(|m| m.info.node == "n3" && m.state == "suspect")
        })
        .await;
        let alive: Vec<String> = first
            .members()
            .await
            .into_iter()
            .filter(|member| member.state == "alive")
            .map(|member| member.info.node)
            .collect();
        assert_eq!(alive, ["n1", "n2"]);
        first.shutdown().await;
        second.shutdown().await;
    }
}

#[cfg(test)]
mod phi_tests {
    use super::*;

    #[test]
    fn phi_is_silence_over_the_mean_interval() {
        let id = ChitchatId::new("n2", 1, "127.0.0.1:7101".parse().unwrap());
        let mut arrivals = Arrivals::default();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(arrivals.observe(&id, 1, at(0)), None);
        // Still one arrival only: no interval yet.
        assert_eq!(arrivals.observe(&id, 1, at(100)), None);
        // A move every 250 ms: phi is 0 on arrival, 1 a mean later.
        for beat in 2..=10 {
            assert_eq!(arrivals.observe(&id, beat, at(250 * (beat - 1))), Some(0.0));
        }
        let phi = arrivals.observe(&id, 10, at(250 * 9 + 250)).unwrap();
        assert!((phi - 1.0).abs() < 1e-9, "{phi}");
        // Silence: phi grows with it.
        let phi = arrivals.observe(&id, 10, at(250 * 9 + 2500)).unwrap();
        assert!((phi - 10.0).abs() < 1e-9, "{phi}");
    }
}
