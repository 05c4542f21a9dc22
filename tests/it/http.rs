//! The HTTP skeleton on a node started inside the test, on both stores.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{BACKENDS, Backend, Counter, CounterMsg, Started, TestDb, start_node_with};

/// A node with the test's counter agent registered.
async fn with_counter(db: &TestDb) -> Started {
    start_node_with(
        db,
        |_| {},
        |system| {
            system.register::<Counter>();
        },
    )
    .await
}

async fn json(response: reqwest::Response) -> Value {
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "application/json",
        "every answer here is JSON"
    );
    response.json().await.unwrap()
}

/// The supervisor of `kind` in a supervision tree.
fn supervisor<'a>(tree: &'a Value, kind: &str) -> &'a Value {
    tree["supervisors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|supervisor| supervisor["kind"] == kind)
        .unwrap_or_else(|| panic!("no supervisor {kind} in {tree}"))
}

fn assert_error_shape(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operational_endpoints_on_both_stores() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let Started { node, base, .. } = with_counter(&db).await;
        let client = reqwest::Client::new();

        let health = client.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        assert_eq!(json(health).await["status"], "ok");

        // A single node is a cluster of one: its lease, itself alive.
        let cluster = client
            .get(format!("{base}/api/v1/cluster"))
            .send()
            .await
            .unwrap();
        assert_eq!(cluster.status(), StatusCode::OK);
        let cluster = json(cluster).await;
        assert_eq!(cluster["clustered"], false, "{cluster}");
        let members = cluster["members"].as_array().unwrap();
        assert_eq!(members.len(), 1, "{cluster}");
        assert_eq!(members[0]["node"], cluster["node"]);
        assert_eq!(members[0]["state"], "alive");
        assert_eq!(members[0]["owns_share"], 1.0);
        assert!(members[0]["lease_token"].as_i64() > Some(0), "{cluster}");

        let ready = client.get(format!("{base}/ready")).send().await.unwrap();
        assert_eq!(ready.status(), StatusCode::OK);
        let expected = if backend == Backend::Sqlite {
            "sqlite"
        } else {
            "postgres"
        };
        assert_eq!(json(ready).await["store"], expected);

        node.system
            .agent_by_key::<Counter>("x")
            .ask(CounterMsg::Add(3), Duration::from_secs(5))
            .await
            .unwrap();
        let tree = json(
            client
                .get(format!("{base}/api/v1/actors"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(tree["node"], "node-1");
        let counter = supervisor(&tree, "counter");
        assert_eq!(counter["kind"], "counter");
        assert_eq!(counter["instances"][0]["key"], "x");
        assert_eq!(counter["instances"][0]["status"], "active");
        assert_eq!(counter["instances"][0]["messages_handled"], 1);
        assert_eq!(counter["strategy"]["initial_backoff"], "20ms");

        let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(metrics.status(), StatusCode::OK);
        assert!(
            metrics.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        let text = metrics.text().await.unwrap();
        for series in [
            "valueverse_agent_messages_total{kind=\"counter\",outcome=\"ok\"} 1",
            "valueverse_agent_handling_seconds_count{kind=\"counter\"} 1",
            "valueverse_agent_mailbox_depth{kind=\"counter\"} 0",
            "valueverse_agent_activations_total{kind=\"counter\"} 1",
            "valueverse_agent_instances{kind=\"counter\",status=\"active\"} 1",
            "valueverse_http_requests_total{method=\"GET\",route=\"/api/v1/actors\",status=\"200\"} 1",
            "valueverse_http_request_duration_seconds_count{method=\"GET\",route=\"/health\"} 1",
        ] {
            assert!(
                text.contains(series),
                "{backend:?}: missing {series} in\n{text}"
            );
        }
        // Idle keep-alive connections would hold up the graceful stop.
        drop(client);
        node.stop().await.unwrap();
    }
}

/// Sends only the head of a POST whose Content-Length is `length`, and
/// returns what the server answers.
async fn too_large_request(addr: std::net::SocketAddr, path: &str, length: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // Read one whole response (head, then Content-Length bytes of body).
    let mut answer = Vec::new();
    let read = async {
        let mut buffer = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&answer).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|line| {
                        line.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if answer.len() >= end + 4 + length {
                    return;
                }
            }
            let count = stream.read(&mut buffer).await.unwrap();
            assert!(count > 0, "connection closed mid-response");
            answer.extend_from_slice(&buffer[..count]);
        }
    };
    let read = tokio::time::timeout(Duration::from_secs(5), read).await;
    assert!(
        read.is_ok(),
        "the server answers without waiting for the body"
    );
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_share_one_json_shape() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started { node, base, .. } = with_counter(&db).await;
    let client = reqwest::Client::new();

    let missing = client
        .get(format!("{base}/api/v1/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_error_shape(&json(missing).await, "not_found");

    let wrong_method = client
        .delete(format!("{base}/api/v1/actors"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        wrong_method.headers()["allow"],
        "GET",
        "a 405 names what is allowed"
    );
    assert_error_shape(&json(wrong_method).await, "method_not_allowed");
    let both = client
        .put(format!("{base}/api/v1/value-models/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(both.headers()["allow"], "GET, PATCH");

    let reset = format!("{base}/api/v1/actors/counter/x/reset");
    let malformed = client.post(&reset).body("{not json").send().await.unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_error_shape(&json(malformed).await, "malformed_json");

    let wrong_type = client
        .post(&reset)
        .body(r#"{"reason": 7}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), StatusCode::BAD_REQUEST);
    let body = json(wrong_type).await;
    assert_error_shape(&body, "invalid_field");
    assert_eq!(body["error"]["field"], "reason");

    let unknown_field = client
        .post(&reset)
        .body(r#"{"reasn": "x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_field.status(), StatusCode::BAD_REQUEST);
    assert!(
        json(unknown_field).await["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reasn")
    );

    // Announce a body over the limit without sending it: the answer must
    // come from the header alone (a client racing to write 2 MiB into a
    // closed connection would see a broken pipe instead).
    let raw = too_large_request(node.http_addr(), "/api/v1/actors/counter/x/reset", 2 << 20).await;
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(raw.contains("\"code\":\"payload_too_large\""), "{raw}");

    let unknown_kind = client
        .post(format!("{base}/api/v1/actors/nobody/x/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_kind.status(), StatusCode::NOT_FOUND);
    assert_error_shape(&json(unknown_kind).await, "unknown_kind");

    let unknown_instance = client.post(&reset).send().await.unwrap();
    assert_eq!(unknown_instance.status(), StatusCode::NOT_FOUND);
    assert_error_shape(&json(unknown_instance).await, "unknown_instance");
    // Idle keep-alive connections would hold up the graceful stop.
    drop(client);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correlation_ids_are_echoed_or_created() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started { node, base, .. } = with_counter(&db).await;
    let client = reqwest::Client::new();
    let given = client
        .get(format!("{base}/health"))
        .header("X-Correlation-ID", "trace-me-1")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-correlation-id"], "trace-me-1");
    let created = client.get(format!("{base}/nowhere")).send().await.unwrap();
    let id = created.headers()["x-correlation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let invalid = client
        .get(format!("{base}/health"))
        .header("X-Correlation-ID", "x".repeat(200))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.headers()["x-correlation-id"].len(), 36, "replaced");
    // Idle keep-alive connections would hold up the graceful stop.
    drop(client);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_instance_is_reset_over_http() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let Started { node, base, .. } = with_counter(&db).await;
        let client = reqwest::Client::new();
        let counter = node.system.agent_by_key::<Counter>("y");
        let ask = Duration::from_secs(5);
        counter.ask(CounterMsg::Add(4), ask).await.unwrap();
        let mut events = node.system.subscribe();
        for _ in 0..4 {
            counter.ask(CounterMsg::Panic, ask).await.unwrap_err();
        }
        crate::support::wait_for_event(&mut events, "y", ask, |change| {
            matches!(
                change,
                valueverse::actors::LifecycleChange::Escalated { .. }
            )
        })
        .await;
        let tree = json(
            client
                .get(format!("{base}/api/v1/actors"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        let instance = &supervisor(&tree, "counter")["instances"][0];
        assert_eq!(instance["status"], "failed");
        assert_eq!(instance["restarts"], 3);
        assert!(
            instance["last_failure"]["message"]
                .as_str()
                .unwrap()
                .contains("panic")
        );
        assert!(instance["last_failure"]["at"].as_str().is_some());
        assert_eq!(instance["last_failure"]["cause"], "panicked");

        let reset = client
            .post(format!("{base}/api/v1/actors/counter/y/reset"))
            .json(&serde_json::json!({ "reason": "fixed the bug" }))
            .send()
            .await
            .unwrap();
        assert_eq!(reset.status(), StatusCode::OK, "{backend:?}");
        assert_eq!(json(reset).await["key"], "y");
        assert_eq!(
            counter.ask(CounterMsg::Get, ask).await.unwrap(),
            crate::support::CounterReply::Total(4)
        );
        let again = client
            .post(format!("{base}/api/v1/actors/counter/y/reset"))
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::CONFLICT);
        assert_error_shape(&json(again).await, "not_failed");
        // Idle keep-alive connections would hold up the graceful stop.
        drop(client);
        node.stop().await.unwrap();
    }
}
