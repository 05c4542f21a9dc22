//! The cluster's trust boundary, attacked for real: two release-binary
//! nodes on PostgreSQL, and an attacker on loopback who can reach their
//! transport, gossip and HTTP ports. Each attack must fail, and the
//! cluster must go on serving.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use valueverse::cluster::codec::{self, Envelope, Frame, Target};
use valueverse::cluster::peer_requests::{self, PeerRequests};
use valueverse::cluster::transport::{self, LinkError, Transport, TransportConfig};

use crate::cluster::free_port;
use crate::crash::{kill_9, release_binary};
use crate::support::get_json;
use crate::support::{Backend, TestDb};

const SECRET: &str = "trust-test-secret-0123456789";

struct Node {
    child: Child,
    base: String,
    transport: SocketAddr,
    gossip: u16,
    /// Its log lines (stderr), as they come.
    log: Arc<Mutex<Vec<String>>>,
}

impl Node {
    fn spawn(binary: &PathBuf, url: &str, name: &str, seeds: &[u16]) -> Node {
        let (transport, gossip) = (free_port(), free_port());
        let seeds: Vec<String> = seeds.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut child = Command::new(binary)
            .args(["node", "--dev", "--name", name, "--http", "127.0.0.1:0"])
            .args(["--listen", &format!("127.0.0.1:{transport}")])
            .args(["--gossip", &format!("127.0.0.1:{gossip}")])
            .args(["--seeds", &seeds.join(",")])
            .args(["--database-url", url])
            .env("VALUEVERSE_CLUSTER_SECRET", SECRET)
            .env("VALUEVERSE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the node starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&log);
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = stdout
            .find_map(|line| line.ok().filter(|line| line.contains("listening on")))
            .unwrap_or_else(|| panic!("{name} did not start: {:?}", log.lock().unwrap()));
        std::thread::spawn(move || stdout.for_each(drop));
        let address = line.rsplit("http://").next().unwrap().trim().to_owned();
        Node {
            child,
            base: format!("http://{address}"),
            transport: format!("127.0.0.1:{transport}").parse().unwrap(),
            gossip,
            log,
        }
    }

    fn logged(&self, needle: &str) -> bool {
        self.log
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains(needle))
    }

    /// The node's resident memory, in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse().ok())
            .unwrap();
        kb * 1024
    }

    async fn metric(&self, client: &reqwest::Client, name: &str) -> f64 {
        let text = client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|line| line.starts_with(name))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    async fn cluster(&self, client: &reqwest::Client) -> Value {
        get_json(client, &format!("{}/api/v1/cluster", self.base)).await
    }
}

impl Drop for Node {
    /// A failed assertion must not leave node processes behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until both nodes see both alive, each owning a share of keys.
async fn wait_for_pair(client: &reqwest::Client, nodes: &[&Node]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    'wait: loop {
        assert!(Instant::now() < deadline, "the pair never formed");
        for node in nodes {
            let view = node.cluster(client).await;
            let members = view["members"].as_array().cloned().unwrap_or_default();
            let placed = members
                .iter()
                .filter(|m| m["state"] == "alive" && m["owns_share"].as_f64() > Some(0.0))
                .count();
            if placed != 2 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'wait;
            }
        }
        return;
    }
}

/// Relays `from` into `to` until `until`.
async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    until: tokio::time::Instant,
) -> tokio::net::tcp::OwnedWriteHalf {
    let mut buffer = vec![0u8; 4096];
    while let Ok(Ok(read)) = tokio::time::timeout_at(until, from.read(&mut buffer)).await {
        if read == 0 || to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    to
}

async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut sink = [0u8; 256];
    let until = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(until, stream.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

fn frame() -> Vec<u8> {
    let envelope = Envelope {
        message_id: 1,
        ask_id: None,
        correlation_id: None,
        actor: None,
        trace_context: None,
        deadline_ms: None,
        target: Target {
            kind: "architect".into(),
            key: "forged".into(),
        },
        type_id: 1,
        type_version: 1,
        payload: codec::encode_payload(&1u64).unwrap().into(),
    };
    let mut bytes = Vec::new();
    codec::encode_into(&Frame::Message(envelope), &mut bytes).unwrap();
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_on_the_node_boundary_fail_and_the_cluster_serves_on() {
    let binary = tokio::task::spawn_blocking(release_binary).await.unwrap();
    let db = TestDb::new(Backend::Postgres).await;
    let client = reqwest::Client::new();
    let mut n1 = Node::spawn(&binary, &db.url, "n1", &[]);
    let mut n2 = Node::spawn(&binary, &db.url, "n2", &[n1.gossip]);
    wait_for_pair(&client, &[&n1, &n2]).await;
    let links_before = n1.metric(&client, "valueverse_transport_links").await;

    // 1. The wrong key: refused, with a clear line in n1's log.
    let intruder = Transport::bind(
        "127.0.0.1:0".parse().unwrap(),
        TransportConfig::new("intruder", b"not-the-cluster-secret-0123"),
        transport::each(|_, _| None),
    )
    .await
    .unwrap();
    let refused = intruder.link(n1.transport).await.err();
    assert!(
        matches!(refused, Some(LinkError::Handshake { .. })),
        "{refused:?}"
    );
    // 2. The right key, but n1's own name: refused, and told why.
    let impostor = Transport::bind(
        "127.0.0.1:0".parse().unwrap(),
        TransportConfig::new("n1", SECRET.as_bytes()),
        transport::each(|_, _| None),
    )
    .await
    .unwrap();
    match impostor.link(n1.transport).await {
        Err(LinkError::Handshake { reason, .. }) => {
            assert!(reason.contains("own name"), "{reason}")
        }
        other => panic!("a peer named n1 was let into n1: {:?}", other.err()),
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        n1.logged("does not hold the cluster secret"),
        "{:?}",
        n1.log.lock().unwrap()
    );
    assert!(n1.logged("own name"), "{:?}", n1.log.lock().unwrap());

    // 3. Reflection: two connections to n1, each fed the other's bytes,
    // then a frame injected. Nothing opens, nothing is processed.
    let first = TcpStream::connect(n1.transport).await.unwrap();
    let second = TcpStream::connect(n1.transport).await.unwrap();
    let (first_read, first_write) = first.into_split();
    let (second_read, second_write) = second.into_split();
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    let there = tokio::spawn(relay(first_read, second_write, until));
    let mut back = relay(second_read, first_write, until).await;
    let _ = there.await;
    let _ = back.write_all(&frame()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        n1.metric(&client, "valueverse_transport_links").await,
        links_before,
        "the relayed handshake opened a link"
    );
    let forged = client
        .get(format!("{}/api/v1/actors", n1.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!forged.contains("\"forged\""), "{forged}");

    // 4. Memory before authentication: 64 connections from 8 source
    // addresses, half declaring a 16 MiB message, half dribbling a byte at
    // a time; the node's memory stays put and every one is closed by the
    // handshake deadline.
    let rss_before = n1.rss();
    let mut connections = Vec::new();
    for i in 0..64u8 {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(format!("127.0.0.{}:0", 2 + i % 8).parse().unwrap())
            .unwrap();
        let mut stream = socket.connect(n1.transport).await.unwrap();
        // A length just under the old 16 MiB frame limit (which the old
        // handshake allocated as declared), or the start of one, dribbled.
        let opening: &[u8] = if i % 2 == 0 {
            &[0x01, 0x00, 0x00, 0x00]
        } else {
            &[0x00, 0xff]
        };
        let _ = stream.write_all(opening).await;
        connections.push(stream);
    }
    for _ in 0..5 {
        for stream in connections.iter_mut().skip(1).step_by(2) {
            let _ = stream.write_all(&[0]).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rss_during = n1.rss();
    let started = Instant::now();
    for stream in &mut connections {
        assert!(
            closed_within(
                stream,
                transport::HANDSHAKE_TIMEOUT + Duration::from_secs(2)
            )
            .await,
            "a connection outlived the handshake deadline"
        );
    }
    assert!(started.elapsed() < transport::HANDSHAKE_TIMEOUT + Duration::from_secs(2));
    let rss_after = n1.rss();
    println!(
        "PRE-AUTH MEMORY: n1 {} MB before, {} MB with 64 hostile connections, {} MB after",
        rss_before >> 20,
        rss_during >> 20,
        rss_after >> 20
    );
    for rss in [rss_during, rss_after] {
        assert!(
            rss < rss_before + (8 << 20),
            "n1 grew from {rss_before} to {rss} bytes"
        );
    }
    assert!(
        n1.metric(&client, "valueverse_transport_refused_total")
            .await
            >= 64.0
    );

    // 5. Forged gossip: a member that claims to be n2 and to host nothing.
    let shares_before = n1.cluster(&client).await;
    let forger = forged_gossip(n1.gossip).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while n1
        .metric(&client, "valueverse_cluster_gossip_ignored_total")
        .await
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the forged gossip never reached n1"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for node in [&n1, &n2] {
        let view = node.cluster(&client).await;
        let member = view["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["node"] == "n2")
            .unwrap()
            .clone();
        assert!(member["owns_share"].as_f64().unwrap() > 0.0, "{view}");
        assert!(!member["kinds"].as_array().unwrap().is_empty(), "{view}");
    }
    let shares_after = n1.cluster(&client).await;
    let share = |view: &Value, node: &str| {
        view["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["node"] == node)
            .map(|m| m["owns_share"].clone())
    };
    assert_eq!(share(&shares_before, "n2"), share(&shares_after, "n2"));
    forger.shutdown().await.unwrap();

    // 6. Peer requests: a forged signature is refused; a real one works
    // once and its replay is refused.
    let path = "/api/v1/actors/architect/some-key/reset";
    let forged = client
        .post(format!("{}{path}", n1.base))
        .header(peer_requests::HEADER, "n2.1.00.00")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let signer = PeerRequests::new("n2", Some(SECRET.into()));
    let now = chrono::Utc::now().timestamp_millis();
    let signed = peer_requests::Request {
        method: "POST",
        path_and_query: path,
        content_type: "application/json",
        correlation_id: "",
        body: b"{}",
    };
    let (signature, nonce) = signer.sign("n1", &signed, now).unwrap();
    let send = || {
        client
            .post(format!("{}{path}", n1.base))
            .header(peer_requests::HEADER, signature.clone())
            .header("content-type", "application/json")
            .body("{}")
            .send()
    };
    let first = send().await.unwrap();
    assert_ne!(first.status(), 401);
    let reply = first
        .headers()
        .get(peer_requests::REPLY_HEADER)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let status = first.status().as_u16();
    let body = first.bytes().await.unwrap();
    assert!(signer.reply_is_good(&nonce, status, &body, &reply));
    assert_eq!(send().await.unwrap().status(), 401, "a replay was taken");
    // Nor does it pass on another node than the one it was signed for.
    let elsewhere = client
        .post(format!("{}{path}", n2.base))
        .header(peer_requests::HEADER, signature.clone())
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 401, "a request for n1 was taken by n2");

    // 7. Forged replies: a peer that holds the secret sprays replies for
    // every ask id n1 may have in flight; n1's asks to n2 take only n2's.
    let mut models = Vec::new();
    for _ in 0..16 {
        let created: Value = client
            .post(format!("{}/api/v1/value-models", n1.base))
            .json(&crate::value_models::acme())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        models.push(created["id"].as_str().unwrap().to_owned());
    }
    let forger = Transport::bind(
        "127.0.0.1:0".parse().unwrap(),
        TransportConfig::new("mallory", SECRET.as_bytes()),
        transport::each(|_, _| None),
    )
    .await
    .unwrap();
    let forged_link = forger.link(n1.transport).await.unwrap();
    let spraying = tokio::spawn(async move {
        for round in 0..4u64 {
            for ask_id in 1..50_000u64 {
                let reply = Frame::Reply(codec::Reply {
                    ask_id: ask_id + round * 50_000,
                    outcome: Err(codec::RemoteFailure::Rejected {
                        code: "forged".into(),
                        message: "a forged reply".into(),
                        field: None,
                    }),
                });
                if forged_link.send(reply).await.is_err() {
                    return;
                }
            }
        }
    });
    let until = Instant::now() + Duration::from_secs(2);
    let mut reads = 0;
    while Instant::now() < until {
        for id in &models {
            let response = client
                .get(format!("{}/api/v1/value-models/{id}", n1.base))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body = response.text().await.unwrap();
            assert_eq!(status, 200, "a read through n1 answered {status}: {body}");
            assert!(!body.contains("forged"), "{body}");
            reads += 1;
        }
    }
    spraying.abort();
    assert!(reads >= 32, "{reads} reads");

    // The cluster serves on: a model created on n1 is read through n2.
    let id = &models[0];
    let read = client
        .get(format!("{}/api/v1/value-models/{id}", n2.base))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    kill_9(&mut n1.child);
    kill_9(&mut n2.child);
}

/// A chitchat member, started by the attacker, that claims to be n2 (a
/// newer run of it) hosting no kinds and no GPU.
async fn forged_gossip(seed: u16) -> chitchat::ChitchatHandle {
    use chitchat::transport::UdpTransport;
    use chitchat::{ChitchatConfig, ChitchatId, FailureDetectorConfig};
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let generation = chrono::Utc::now().timestamp_millis() as u64 + 1_000_000;
    let config = ChitchatConfig {
        chitchat_id: ChitchatId::new("n2", generation, listen),
        // Gossip is plaintext: an attacker on the network reads the id.
        cluster_id: valueverse::cluster::membership::gossip_cluster_id("valueverse", SECRET),
        gossip_interval: Duration::from_millis(100),
        listen_addr: listen,
        seed_nodes: vec![format!("127.0.0.1:{seed}")],
        failure_detector_config: FailureDetectorConfig::default(),
        marked_for_deletion_grace_period: Duration::from_secs(60),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: chitchat::ProtocolVersion::V0,
    };
    let values = vec![
        ("transport_addr".to_owned(), "127.0.0.1:9".to_owned()),
        ("http_addr".to_owned(), "127.0.0.1:9".to_owned()),
        ("kinds".to_owned(), String::new()),
        ("gpus".to_owned(), "0".to_owned()),
        ("load".to_owned(), "0".to_owned()),
    ];
    chitchat::spawn_chitchat(config, values, &UdpTransport)
        .await
        .unwrap()
}
