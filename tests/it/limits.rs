//! What one caller may take of a node (issue 17, findings 5 and 6): request
//! rates per key and per address, requests in flight, stalled bodies,
//! WebSockets per key, their pings and their closing on revocation, and the
//! simulation quota per key.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use valueverse::auth::{Role, create_key};
use valueverse::{Config, Node};

use crate::support::{Backend, Started, TestDb, start_node, test_config};
use crate::value_models::acme;

/// Keys on, then the test's limits.
fn keyed(limit: impl FnOnce(&mut Config)) -> impl FnOnce(&mut Config) {
    |config| {
        config.dev = false;
        limit(config);
    }
}

async fn key(node: &Node, role: Role) -> String {
    create_key(
        &node.store,
        &valueverse::actors::Tenant::default_tenant(),
        role,
        "limits",
    )
    .await
    .unwrap()
    .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_past_its_rate_is_told_when_to_return_and_other_keys_go_on() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started { node, base, .. } = start_node(
        &db,
        keyed(|config| {
            config.limits.requests_per_second = 2;
            config.limits.burst = 4;
        }),
    )
    .await;
    let (greedy, honest) = (
        key(&node, Role::Viewer).await,
        key(&node, Role::Viewer).await,
    );
    let client = reqwest::Client::new();
    let url = format!("{base}/api/v1/value-models");
    let mut refused = None;
    for _ in 0..20 {
        let response = client.get(&url).bearer_auth(&greedy).send().await.unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status(), StatusCode::OK);
    }
    let refused = refused.expect("a burst past the key's rate is refused");
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    let other = client.get(&url).bearer_auth(&honest).send().await.unwrap();
    assert_eq!(
        other.status(),
        StatusCode::OK,
        "another key keeps its own rate"
    );
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_keys_are_paced_per_address_and_evict_no_live_key() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started { node, base, .. } = start_node(
        &db,
        keyed(|config| {
            config.limits.unauthenticated_per_second = 5;
            config.limits.unknown_keys_cached = 16;
            config.limits.key_cache_ttl = Duration::from_secs(60);
        }),
    )
    .await;
    let live = key(&node, Role::Viewer).await;
    let client = reqwest::Client::new();
    let url = format!("{base}/api/v1/value-models");
    let ok = client.get(&url).bearer_auth(&live).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let (mut unauthorized, mut paced) = (0, 0);
    for n in 0..200 {
        let status = client
            .get(&url)
            .bearer_auth(format!("vv_made_up_{n}"))
            .send()
            .await
            .unwrap()
            .status();
        match status {
            StatusCode::UNAUTHORIZED => unauthorized += 1,
            StatusCode::TOO_MANY_REQUESTS => paced += 1,
            other => panic!("a made-up key got {other}"),
        }
    }
    assert!(
        unauthorized <= 30,
        "{unauthorized} store lookups let through"
    );
    assert!(paced >= 150, "{paced} made-up keys paced");
    let still = client.get(&url).bearer_auth(&live).send().await.unwrap();
    assert_eq!(
        still.status(),
        StatusCode::OK,
        "the live key is still known without a lookup"
    );
    node.stop().await.unwrap();
}

/// The headers of a POST with a body of `length` bytes, of which the
/// caller then sends all but the last.
fn stalled_post(base: &str, key: &str, length: usize) -> String {
    let host = base.trim_start_matches("http://");
    format!(
        "POST /api/v1/value-models HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_of_one_key_hold_neither_the_node_nor_other_keys() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started { node, base, .. } = start_node(
        &db,
        keyed(|config| {
            config.limits.in_flight_per_key = 8;
            config.limits.body_read_timeout = Duration::from_secs(1);
            config.http_body_limit = 256 * 1024;
        }),
    )
    .await;
    let (attacker, honest) = (
        key(&node, Role::Editor).await,
        key(&node, Role::Editor).await,
    );
    // The other key has been used before, as a live key is: its requests
    // are never paced by the address it shares here with the attacker
    // (whose 200 first requests may each pay that address a cell before
    // its own key is cached, on a slow machine).
    let warm = reqwest::Client::new()
        .get(format!("{base}/api/v1/value-models"))
        .bearer_auth(&honest)
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), StatusCode::OK);
    let address = node.http_addr();
    let length = 200 * 1024;
    let mut stalled = Vec::new();
    for _ in 0..200 {
        let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
        socket
            .write_all(stalled_post(&base, &attacker, length).as_bytes())
            .await
            .unwrap();
        // All but one byte: the old node buffered each and waited forever.
        let _ = socket.write_all(&vec![b' '; length - 1]).await;
        stalled.push(socket);
    }
    let client = reqwest::Client::new();
    let started = Instant::now();
    let health = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "/health answers while the bodies stall ({:?})",
        started.elapsed()
    );
    let created = client
        .post(format!("{base}/api/v1/value-models"))
        .bearer_auth(&honest)
        .json(&acme())
        .send()
        .await
        .unwrap();
    assert_eq!(
        created.status(),
        StatusCode::CREATED,
        "another key's request goes through"
    );
    // Every stalled request is answered: 429 at once past the key's places
    // in flight, 408 once the body is late. None waits for its last byte.
    let mut answers = std::collections::BTreeMap::new();
    for mut socket in stalled {
        use tokio::io::AsyncReadExt;
        let mut head = vec![0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut head))
            .await
            .expect("answered without the last byte")
            .unwrap_or(0);
        let line = String::from_utf8_lossy(&head[..read]).to_string();
        let status = line.split(' ').nth(1).unwrap_or("closed").to_owned();
        *answers.entry(status).or_insert(0) += 1;
    }
    let late = answers.get("408").copied().unwrap_or(0);
    let refused = answers.get("429").copied().unwrap_or(0);
    assert!(late >= 1, "{answers:?}");
    assert!(refused >= 100, "{answers:?}");
    assert_eq!(late + refused, 200, "{answers:?}");
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_are_capped_per_key_and_closed_when_the_key_is_revoked() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started { node, base, .. } = start_node(
        &db,
        keyed(|config| {
            config.limits.websockets_per_key = 2;
        }),
    )
    .await;
    let admin = key(&node, Role::Admin).await;
    let (row, viewer) = create_key(
        &node.store,
        &valueverse::actors::Tenant::default_tenant(),
        Role::Viewer,
        "watcher",
    )
    .await
    .unwrap();
    let ws = format!(
        "{}/ws/dashboard?access_token={viewer}",
        base.replace("http://", "ws://")
    );
    let (mut first, _) = tokio_tungstenite::connect_async(&ws).await.unwrap();
    let (mut second, _) = tokio_tungstenite::connect_async(&ws).await.unwrap();
    match tokio_tungstenite::connect_async(&ws).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429)
        }
        other => panic!("a third socket of the key: {other:?}"),
    }
    let revoked = reqwest::Client::new()
        .delete(format!("{base}/api/v1/api-keys/{}", row.id))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    for socket in [&mut first, &mut second] {
        let closed = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match socket.next().await {
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => {
                        return frame.map(|frame| frame.reason.to_string());
                    }
                    Some(Ok(_)) => continue,
                    _ => return None,
                }
            }
        })
        .await
        .expect("the socket of a revoked key is closed within a second");
        assert_eq!(closed.as_deref(), Some("the API key was revoked"));
    }
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_websocket_is_pinged_and_then_closed() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started { node, base, .. } = start_node(
        &db,
        keyed(|config| {
            config.limits.websocket_ping = Duration::from_millis(100);
            config.limits.websocket_idle = Duration::from_millis(400);
        }),
    )
    .await;
    let viewer = key(&node, Role::Viewer).await;
    let ws = format!(
        "{}/ws/dashboard?access_token={viewer}",
        base.replace("http://", "ws://")
    );
    let (mut listening, _) = tokio_tungstenite::connect_async(&ws).await.unwrap();
    let (mut silent, _) = tokio_tungstenite::connect_async(&ws).await.unwrap();
    // The listening client reads (and so answers each ping with a pong);
    // the silent one is not read, as a client that vanished.
    let mut pinged = false;
    let until = Instant::now() + Duration::from_millis(1500);
    while let Ok(Some(next)) = tokio::time::timeout_at(until.into(), listening.next()).await {
        match next.expect("the listening socket stays open past the idle time") {
            tokio_tungstenite::tungstenite::Message::Ping(_) => pinged = true,
            tokio_tungstenite::tungstenite::Message::Close(frame) => {
                panic!("a client that answers pings was closed: {frame:?}")
            }
            _ => {}
        }
    }
    assert!(pinged, "the server pings");
    // The silent one was closed: what it holds is a frame or two, the
    // server's pings and then the end (a Close, or a broken pipe when the
    // pong it tries to send finds the connection gone).
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match silent.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))
                | Some(Err(_))
                | None => {
                    return;
                }
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the silent socket was closed");
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_cannot_take_the_simulation_queue() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started { node, base, .. } = start_node(
        &db,
        keyed(|config| {
            config.simulation.max_jobs_per_submitter = 2;
            config.simulation.cost_budget_per_submitter = 5e9;
        }),
    )
    .await;
    let (greedy, honest) = (
        key(&node, Role::Editor).await,
        key(&node, Role::Editor).await,
    );
    let client = reqwest::Client::new();
    let submit = |key: &str, paths: u64| {
        client
            .post(format!("{base}/api/v1/simulations"))
            .bearer_auth(key)
            .json(&json!({ "model": acme(), "paths": paths, "device": "cpu" }))
            .send()
    };
    let huge = submit(&greedy, 1_000_000_000).await.unwrap();
    assert_eq!(huge.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = huge.json().await.unwrap();
    assert_eq!(body["error"]["field"], "paths", "{body}");
    for _ in 0..2 {
        let queued = submit(&greedy, 100_000_000).await.unwrap();
        assert_eq!(queued.status(), StatusCode::ACCEPTED);
    }
    let third = submit(&greedy, 1000).await.unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(third.headers().contains_key("retry-after"));
    let body: Value = third.json().await.unwrap();
    assert_eq!(body["error"]["code"], "over_quota");
    let other = submit(&honest, 1000).await.unwrap();
    assert_eq!(
        other.status(),
        StatusCode::ACCEPTED,
        "another key has its own share"
    );
    let queue: Value = client
        .get(format!("{base}/api/v1/simulations/queue"))
        .bearer_auth(&honest)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = queue.to_string();
    assert!(!text.contains("127.0.0.1"), "no client address: {text}");
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_made_up_ids_leave_no_instances_behind() {
    let db = TestDb::new(Backend::Sqlite).await;
    let config = test_config(&db);
    let node = Node::start(&config, |_| {}).await.expect("node starts");
    let base = format!("http://{}", node.http_addr());
    let client = reqwest::Client::new();
    for n in 0..200 {
        let status = client
            .get(format!("{base}/api/v1/value-models/made-up-{n}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let active = |tree: &Value| {
        tree["supervisors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|supervisor| supervisor["kind"] == "architect")
            .map_or(0, |supervisor| supervisor["num_active"].as_u64().unwrap())
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let tree: Value = client
            .get(format!("{base}/api/v1/actors"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        // Before: each 404 left an instance alive for its idle time.
        if active(&tree) == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} instances left",
            active(&tree)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sagas_simulation_counts_against_the_key_that_started_it() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started { node, base, .. } = start_node(
        &db,
        keyed(|config| {
            config.simulation.max_jobs_per_submitter = 1;
        }),
    )
    .await;
    let (row, editor) = create_key(
        &node.store,
        &valueverse::actors::Tenant::default_tenant(),
        Role::Editor,
        "sagas",
    )
    .await
    .unwrap();
    let client = reqwest::Client::new();
    // The key's one place is taken by a long job.
    let long = client
        .post(format!("{base}/api/v1/simulations"))
        .bearer_auth(&editor)
        .json(&json!({ "model": acme(), "paths": 100_000_000, "device": "cpu" }))
        .send()
        .await
        .unwrap();
    assert_eq!(long.status(), StatusCode::ACCEPTED);
    let long: Value = long.json().await.unwrap();
    let saga: Value = client
        .post(format!("{base}/api/v1/sagas/value-creation"))
        .bearer_auth(&editor)
        .json(&crate::sagas::value_creation(None, 10_000))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = saga["id"].as_str().expect("started").to_owned();
    // Its simulate step is refused (the key is at its quota) and retried.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let saga: Value = client
            .get(format!("{base}/api/v1/sagas/{id}"))
            .bearer_auth(&editor)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let error = saga["steps"][1]["last_error"].as_str().unwrap_or_default();
        if error.contains("this submitter holds 1 jobs") {
            assert_eq!(saga["started_by"], json!(format!("key:{}", row.id)));
            break;
        }
        assert!(Instant::now() < deadline, "{saga}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cancelled = client
        .put(format!(
            "{base}/api/v1/simulations/{}/cancel",
            long["id"].as_str().unwrap()
        ))
        .bearer_auth(&editor)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_header_trick_escapes_the_body_deadline() {
    use tokio::io::AsyncReadExt;
    let db = TestDb::new(Backend::Sqlite).await;
    let Started { node, base, .. } = start_node(
        &db,
        keyed(|config| {
            config.limits.body_read_timeout = Duration::from_millis(500);
        }),
    )
    .await;
    let editor = key(&node, Role::Editor).await;
    let host = base.trim_start_matches("http://");
    let heads = [
        // An upgrade asked on a route that is no WebSocket.
        format!(
            "POST /api/v1/value-models HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {editor}\r\n\
             Upgrade: websocket\r\nConnection: upgrade\r\nContent-Length: 1000\r\n\r\n"
        ),
        // A forged peer request (no key; the signature is checked after the body).
        format!(
            "POST /api/v1/actors/architect/x/crash HTTP/1.1\r\nHost: {host}\r\n\
             x-valueverse-peer: forged\r\nContent-Length: 1000\r\n\r\n"
        ),
    ];
    for head in heads {
        let mut socket = tokio::net::TcpStream::connect(node.http_addr())
            .await
            .unwrap();
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(b"{").await.unwrap();
        let mut answer = vec![0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut answer))
            .await
            .expect("answered at the deadline, not held open")
            .unwrap();
        let line = String::from_utf8_lossy(&answer[..read]).to_string();
        assert!(line.starts_with("HTTP/1.1 408"), "{head}: {line}");
    }
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_elsewhere_loses_its_websockets_within_the_cache_lifetime() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started { node, base, .. } = start_node(
        &db,
        keyed(|config| {
            config.limits.key_cache_ttl = Duration::from_millis(500);
        }),
    )
    .await;
    let (row, viewer) = create_key(
        &node.store,
        &valueverse::actors::Tenant::default_tenant(),
        Role::Viewer,
        "watcher",
    )
    .await
    .unwrap();
    let ws = format!(
        "{}/ws/dashboard?access_token={viewer}",
        base.replace("http://", "ws://")
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(&ws).await.unwrap();
    // Revoked in the shared store, as another node of the cluster does:
    // this node hears of it only through its sweep.
    assert!(
        node.store
            .revoke_api_key(
                "default",
                &row.id,
                &valueverse::actors::AuditEntry::now(
                    "default",
                    "test",
                    "revoke key",
                    &row.id,
                    None,
                    "ok"
                )
            )
            .await
            .unwrap()
    );
    let revoked_at = Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match socket.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => {
                    return frame.map(|frame| frame.reason.to_string());
                }
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("closed within the cache lifetime and a sweep");
    assert_eq!(reason.as_deref(), Some("the API key was revoked"));
    assert!(
        revoked_at.elapsed() < Duration::from_millis(1500),
        "{:?}",
        revoked_at.elapsed()
    );
    // And requests once the cached answer has aged out.
    tokio::time::sleep_until((revoked_at + Duration::from_millis(600)).into()).await;
    let refused = reqwest::Client::new()
        .get(format!("{base}/api/v1/value-models"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    node.stop().await.unwrap();
}
