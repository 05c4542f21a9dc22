//! A cluster for real: three release-binary node processes on loopback
//! sharing one PostgreSQL database. Every node serves every key (asks cross
//! the transport to the owner), a kill -9 moves the dead node's keys to the
//! survivors and its sagas still end, a restarted node takes its share
//! back, and a node with the wrong secret or a peer sending garbage gets
//! nowhere.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::crash::{
    check_agent_tables, kill_9, release_binary, start_child, start_some, wait_until_final,
};
use crate::support::{Backend, TestDb};
use crate::value_models::acme;

const SECRET: &str = "cluster-test-secret-0123456789";

/// A free port for TCP and for UDP (the OS may hand it out again before
/// the node binds it; on loopback in a test that is rare).
pub(crate) fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub(crate) struct Ports {
    pub(crate) transport: u16,
    pub(crate) gossip: u16,
}

pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) child: Child,
    pub(crate) base: String,
}

fn spawn_node(
    binary: &PathBuf,
    url: &str,
    name: &str,
    ports: &Ports,
    seeds: &[u16],
    secret: &str,
) -> Result<Node, String> {
    spawn(binary, url, name, ports, seeds, secret, true)
}

/// A node process; `dev`: no API keys checked.
pub(crate) fn spawn(
    binary: &PathBuf,
    url: &str,
    name: &str,
    ports: &Ports,
    seeds: &[u16],
    secret: &str,
    dev: bool,
) -> Result<Node, String> {
    let command = node_command(binary, url, name, ports, seeds, secret, dev);
    let (child, base) = start_child(command)?;
    Ok(Node {
        name: name.to_owned(),
        child,
        base,
    })
}

/// The command line of a cluster node.
pub(crate) fn node_command(
    binary: &PathBuf,
    url: &str,
    name: &str,
    ports: &Ports,
    seeds: &[u16],
    secret: &str,
    dev: bool,
) -> Command {
    let seeds: Vec<String> = seeds
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    let mut command = Command::new(binary);
    command.arg("node");
    if dev {
        command.arg("--dev");
    }
    command
        .args(["--name", name, "--http", "127.0.0.1:0"])
        .args(["--listen", &format!("127.0.0.1:{}", ports.transport)])
        .args(["--gossip", &format!("127.0.0.1:{}", ports.gossip)])
        .args(["--seeds", &seeds.join(",")])
        .args(["--database-url", url])
        .env("VALUEVERSE_CLUSTER_SECRET", secret);
    command
}

async fn get(client: &reqwest::Client, url: &str) -> Option<Value> {
    let response = client.get(url).send().await.ok()?;
    response.status().is_success().then_some(())?;
    response.json().await.ok()
}

/// Waits until `node` sees exactly `alive` as its alive members.
pub(crate) async fn wait_for_members(
    client: &reqwest::Client,
    node: &Node,
    alive: &[&str],
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(view) = get(client, &format!("{}/cluster", node.base)).await {
            let mut seen: Vec<&str> = view["members"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|member| member["state"] == "alive")
                .map(|member| member["node"].as_str().unwrap())
                .collect();
            seen.sort();
            if seen == alive {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "{} never saw {alive:?}: {view}",
                node.name
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Active architect instances in a node's supervision tree.
async fn architects_on(client: &reqwest::Client, node: &Node) -> Vec<String> {
    let tree = get(client, &format!("{}/actors", node.base)).await.unwrap();
    tree["supervisors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|supervisor| supervisor["kind"] == "architect")
        .flat_map(|supervisor| supervisor["instances"].as_array().unwrap().clone())
        .filter(|instance| instance["status"] == "active")
        .map(|instance| instance["key"].as_str().unwrap().to_owned())
        .collect()
}

async fn create_models(client: &reqwest::Client, base: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..count {
        let mut model = acme();
        model["name"] = json!(format!("model {i}"));
        let response = client
            .post(format!("{base}/value-models"))
            .json(&model)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        let created: Value = response.json().await.unwrap();
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    ids
}

/// Every JSON message of a WebSocket until the server closes it.
async fn follow(url: String) -> (String, Vec<Value>) {
    use futures_util::StreamExt;
    let (mut socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .unwrap_or_else(|error| panic!("{url}: {error}"));
    let mut events = Vec::new();
    while let Some(message) = tokio::time::timeout(Duration::from_secs(60), socket.next())
        .await
        .unwrap_or_else(|_| panic!("{url}: silent for 60 s after {events:?}"))
    {
        match message {
            Ok(tokio_tungstenite::tungstenite::Message::Text(text)) => {
                events.push(serde_json::from_str(&text).unwrap())
            }
            Ok(tokio_tungstenite::tungstenite::Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    (url, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_every_key_and_survive_a_kill_9() {
    let binary = tokio::task::spawn_blocking(release_binary).await.unwrap();
    let db = TestDb::new(Backend::Postgres).await;
    let client = reqwest::Client::new();
    let ports: Vec<Ports> = (0..3)
        .map(|_| Ports {
            transport: free_port(),
            gossip: free_port(),
        })
        .collect();
    let seeds: Vec<u16> = ports.iter().map(|p| p.gossip).collect();
    let names = ["n1", "n2", "n3"];
    let mut nodes: Vec<Node> = names
        .iter()
        .zip(&ports)
        .map(|(name, ports)| spawn_node(&binary, &db.url, name, ports, &seeds, SECRET).unwrap())
        .collect();
    for node in &nodes {
        wait_for_members(&client, node, &names).await;
    }
    // Each node reports the others' phi (small: heard lately), not its own.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let view = get(&client, &format!("{}/cluster", nodes[0].base))
        .await
        .unwrap();
    for member in view["members"].as_array().unwrap() {
        if member["is_self"] == true {
            assert!(member["phi"].is_null(), "{member}");
        } else {
            let phi = member["phi"].as_f64().unwrap_or_else(|| panic!("{member}"));
            assert!((0.0..8.0).contains(&phi), "{member}");
        }
    }

    // Models created through n1 live on their owners: all three host some.
    let models = create_models(&client, &nodes[0].base, 30).await;
    let mut hosts: HashMap<String, String> = HashMap::new();
    for node in &nodes {
        for key in architects_on(&client, node).await {
            assert!(
                hosts.insert(key.clone(), node.name.clone()).is_none(),
                "{key} is active on two nodes"
            );
        }
    }
    for node in &nodes {
        let count = hosts.values().filter(|host| **host == node.name).count();
        assert!(
            count >= 1,
            "{} hosts none of 30 models: {hosts:?}",
            node.name
        );
    }
    // Every node answers for every model, the same.
    for id in &models {
        let mut seen = Vec::new();
        for node in &nodes {
            let model = get(&client, &format!("{}/value-models/{id}", node.base))
                .await
                .unwrap_or_else(|| panic!("{} cannot serve {id}", node.name));
            seen.push(model);
        }
        assert!(seen.windows(2).all(|pair| pair[0] == pair[1]), "{seen:?}");
    }
    // The dashboard of any node shows every node's tree (peers sign their
    // panel requests with the cluster secret), and an operator action
    // sent to n1 for an instance on another node is carried out there.
    let frame = get(&client, &format!("{}/dashboard", nodes[1].base))
        .await
        .unwrap();
    let panels = frame["nodes"].as_array().unwrap();
    assert_eq!(panels.len(), 3, "{frame}");
    let mut shown = 0;
    for panel in panels {
        assert!(panel.get("error").is_none(), "{panel}");
        let architect = panel["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|kind| kind["kind"] == "architect")
            .unwrap();
        shown += architect["num_active"].as_u64().unwrap();
    }
    assert_eq!(shown as usize, hosts.len(), "{frame}");
    let (victim, victim_host) = hosts.iter().find(|(_, host)| *host != "n1").unwrap();
    let crashed = client
        .post(format!(
            "{}/actors/architect/{victim}/crash?node={victim_host}",
            nodes[0].base
        ))
        .json(&json!({ "reason": "drill across nodes" }))
        .send()
        .await
        .unwrap();
    assert_eq!(crashed.status(), 200, "{}", crashed.text().await.unwrap());
    let host = nodes.iter().find(|node| &node.name == victim_host).unwrap();
    let tree = get(&client, &format!("{}/actors", host.base))
        .await
        .unwrap();
    let restarted = tree["supervisors"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|kind| kind["instances"].as_array().unwrap())
        .find(|instance| instance["key"] == victim.as_str())
        .unwrap();
    assert_eq!(restarted["restarts"], 1, "{restarted}");

    // A refusal on the owner keeps its status and field on another node.
    let remote_model = models
        .iter()
        .find(|id| hosts.get(*id).map(String::as_str) != Some("n1"))
        .unwrap();
    let response = client
        .patch(format!("{}/value-models/{remote_model}", nodes[0].base))
        .json(&json!({ "horizon_months": 0 }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let refusal: Value = response.json().await.unwrap();
    assert_eq!(status, 422, "{refusal}");
    assert_eq!(refusal["error"]["field"], "horizon_months", "{refusal}");

    // Streams follow work on other nodes: a simulation submitted to n1
    // runs there, and a saga started on n1 has its coordinator anywhere;
    // clients of every node see their events to the end.
    let model: Value =
        serde_json::from_str(include_str!("../../docs/models/ten-drivers.json")).unwrap();
    let job: Value = client
        .post(format!("{}/simulations", nodes[0].base))
        .json(&json!({ "model": model, "paths": 4_000_000, "seed": 3, "device": "cpu" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_id = job["id"].as_str().unwrap().to_owned();
    let mut saga_ids = Vec::new();
    start_some(&client, &nodes[0].base, 1, 1, &mut saga_ids).await;
    let saga_id = saga_ids[0].1.clone();
    let followers: Vec<_> = nodes
        .iter()
        .flat_map(|node| {
            let ws = node.base.replace("http://", "ws://").replace("/api/v1", "");
            [
                format!("{ws}/ws/simulations/{job_id}"),
                format!("{ws}/ws/sagas/{saga_id}"),
            ]
        })
        .map(|url| tokio::spawn(follow(url)))
        .collect();
    for follower in followers {
        let (url, events) = follower.await.unwrap();
        let last = events.last().unwrap_or_else(|| panic!("{url}: no events"));
        if url.contains("/ws/simulations/") {
            assert_eq!(last["type"], "done", "{url}: {events:?}");
            assert!(
                events.len() >= 2,
                "{url}: no progress before the result: {events:?}"
            );
        } else {
            let status = if last["type"] == "state" {
                &last["saga"]["status"]
            } else {
                &last["transition"]["status"]
            };
            assert_eq!(status, "completed", "{url}: {events:?}");
        }
    }

    // A job running on n1 stops when it is cancelled through n2.
    let long: Value = client
        .post(format!("{}/simulations", nodes[0].base))
        .json(&json!({ "model": model, "paths": 1_000_000_000, "seed": 4, "device": "cpu" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let long_id = long["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&client, &format!("{}/simulations/{long_id}", nodes[0].base))
        .await
        .is_none_or(|job| job["status"] != "running")
    {
        assert!(Instant::now() < deadline, "the long job never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cancelled = client
        .put(format!("{}/simulations/{long_id}/cancel", nodes[1].base))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let job = get(&client, &format!("{}/simulations/{long_id}", nodes[0].base)).await;
        if job.as_ref().is_some_and(|job| job["status"] == "cancelled") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a cancel through another node did not stop the job: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Sagas run across the cluster while n3 dies.
    let mut sagas = Vec::new();
    start_some(&client, &nodes[0].base, 0, 12, &mut sagas).await;
    start_some(&client, &nodes[1].base, 12, 12, &mut sagas).await;
    let on_n3: Vec<&String> = models
        .iter()
        .filter(|id| hosts.get(*id).map(String::as_str) == Some("n3"))
        .collect();
    kill_9(&mut nodes[2].child);
    let killed = Instant::now();
    // Until every one of n3's models answers again from n1 and n2.
    let mut pending: Vec<&String> = on_n3.clone();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for id in pending {
            let mut served = true;
            for node in &nodes[..2] {
                served &= get(&client, &format!("{}/value-models/{id}", node.base))
                    .await
                    .is_some();
            }
            if !served {
                still.push(id);
            }
        }
        pending = still;
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "n3's keys not served after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failover = killed.elapsed();
    println!(
        "FAILOVER: n3's {} models served by the survivors {:.2} s after kill -9",
        on_n3.len(),
        failover.as_secs_f64()
    );
    let view = wait_for_members(&client, &nodes[0], &["n1", "n2"]).await;
    let n3 = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|member| member["node"] == "n3")
        .unwrap();
    assert_eq!(n3["state"], "down", "{view}");

    // Every saga ends, each change applied once.
    let finished = wait_until_final(&client, &nodes[0].base, &sagas).await;
    println!(
        "SAGAS: all {} final {:.1} s after the kill",
        finished.len(),
        killed.elapsed().as_secs_f64()
    );
    check_agent_tables(&db, &finished).await;

    // n3 comes back and takes its share again.
    nodes[2] = spawn_node(&binary, &db.url, "n3", &ports[2], &seeds, SECRET).unwrap();
    for node in &nodes {
        wait_for_members(&client, node, &names).await;
    }
    for id in &on_n3 {
        assert!(
            get(&client, &format!("{}/value-models/{id}", nodes[0].base))
                .await
                .is_some(),
            "{id} not served through n1 after n3 rejoined"
        );
    }
    println!(
        "REJOIN: {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    let back = architects_on(&client, &nodes[2]).await;
    assert!(
        on_n3.iter().all(|id| back.contains(id)),
        "n3 hosts {back:?}, not all of {on_n3:?}"
    );

    // A node with another secret is refused and says why.
    let stranger = Ports {
        transport: free_port(),
        gossip: free_port(),
    };
    let refused = spawn_node(
        &binary,
        &db.url,
        "n4",
        &stranger,
        &seeds,
        "another-secret-0123456789",
    );
    let Err(stderr) = refused else {
        panic!("a node with the wrong secret started");
    };
    assert!(stderr.contains("secret"), "{stderr}");

    // Garbage and an oversized frame on n1's transport port: dropped, and
    // n1 goes on serving remote keys.
    for bytes in [vec![0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4], vec![0xff; 4]] {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", ports[0].transport)).unwrap();
        stream.write_all(&bytes).unwrap();
    }
    for id in &models {
        assert!(
            get(&client, &format!("{}/value-models/{id}", nodes[0].base))
                .await
                .is_some()
        );
    }
    for node in &mut nodes {
        kill_9(&mut node.child);
    }
}
