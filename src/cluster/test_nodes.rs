//! Nodes of a cluster in one process, for the cluster's tests: a runtime on
//! an in-memory store with the kinds `register` adds, its router, and a
//! transport on loopback; `share_view` puts them in each other's sight.

use std::net::SocketAddr;
use std::sync::Arc;

use valueverse_runtime::{RuntimeConfig, System};
use valueverse_store::Store;

use super::placement::Candidate;
use super::router::{self, Placed, Router};
use super::transport::{Transport, TransportConfig};

pub(super) struct TestNode {
    pub system: System,
    pub router: Arc<Router>,
    pub transport: Transport,
}

/// A node named `name` whose transport offers protocol versions up to
/// `max_version`, keyed by `secret`.
pub(super) async fn node(
    name: &str,
    runtime: RuntimeConfig,
    max_version: u16,
    secret: &[u8],
    register: impl FnOnce(&System),
) -> TestNode {
    let store = Store::open("sqlite::memory:", 1).await.unwrap();
    let system = System::start(name, runtime, store).unwrap();
    register(&system);
    let router = Arc::new(Router::new(name, system.placement_changes()));
    assert!(system.attach_remote(router.clone()).is_ok());
    let mut config = TransportConfig::new(name, secret);
    config.max_version = max_version;
    config.messages = system.message_versions();
    let transport = Transport::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        config,
        router::inbound(system.downgrade()),
    )
    .await
    .unwrap();
    router.attach(transport.clone(), tokio::runtime::Handle::current());
    TestNode {
        system,
        router,
        transport,
    }
}

/// Gives every node of `nodes` the same view: all of them, each hosting
/// `kinds`.
pub(super) fn share_view(nodes: &[&TestNode], kinds: &[&str]) {
    let view: Vec<Placed> = nodes
        .iter()
        .map(|node| Placed {
            candidate: Candidate {
                node: node.system.node_name().to_owned(),
                kinds: kinds.iter().map(|kind| (*kind).to_owned()).collect(),
                gpus: 0,
            },
            transport_addr: node.transport.local_addr(),
        })
        .collect();
    for node in nodes {
        node.router.set_view(view.clone());
    }
}

/// A key of `kind` that `system` does not own.
pub(super) fn key_elsewhere(system: &System, kind: &str) -> String {
    (0..)
        .map(|i| format!("k-{i}"))
        .find(|key| !system.is_local(kind, key))
        .unwrap()
}

/// A key of `kind` that `system` owns.
pub(super) fn key_here(system: &System, kind: &str) -> String {
    (0..)
        .map(|i| format!("k-{i}"))
        .find(|key| system.is_local(kind, key))
        .unwrap()
}
