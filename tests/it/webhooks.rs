//! The notifier: signed webhook deliveries to a real HTTP receiver started
//! by the test, retries on 500s, dead letters and redelivery, email without
//! SMTP, validation.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;
use valueverse::Node;

use crate::support::{Backend, Started, TestDb, poll_json, send, start_node};
use crate::value_models::{acme, create_model};

const SECRET: &str = "a-test-secret-of-some-length";

/// What the receiver saw, and how it answers: the first `failures`
/// requests get 500.
#[derive(Default)]
pub(crate) struct Receiver {
    pub(crate) requests: Vec<(String, String, String)>,
    failures: usize,
}

async fn receive(
    state: web::Data<Arc<Mutex<Receiver>>>,
    request: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let mut state = state.lock().unwrap();
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    state.requests.push((
        header("ValueVerse-Signature"),
        header("ValueVerse-Event"),
        String::from_utf8_lossy(&body).into_owned(),
    ));
    if state.requests.len() <= state.failures {
        HttpResponse::InternalServerError().body("not now")
    } else {
        HttpResponse::Ok().body("thanks")
    }
}

/// Starts the receiver; answers its URL, its state and its handle.
pub(crate) fn start_receiver(
    failures: usize,
) -> (String, Arc<Mutex<Receiver>>, actix_web::dev::ServerHandle) {
    let state = Arc::new(Mutex::new(Receiver {
        failures,
        ..Receiver::default()
    }));
    let data = web::Data::new(state.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/hook", web::post().to(receive))
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (format!("http://{addr}/hook"), state, handle)
}

fn configure(config: &mut valueverse::Config) {
    config.notifier.max_attempts = 4;
    config.notifier.initial_backoff = Duration::from_millis(20);
    config.notifier.max_backoff = Duration::from_millis(100);
}

async fn subscribe(client: &reqwest::Client, base: &str, body: Value) -> String {
    let (status, subscription) = send(client.post(format!("{base}/webhooks")).json(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{subscription}");
    assert!(
        subscription.get("secret").is_none(),
        "the secret stays on the node"
    );
    subscription["id"].as_str().unwrap().to_owned()
}

/// The subscription's deliveries once the first is `status`.
async fn wait_for_delivery(client: &reqwest::Client, base: &str, id: &str, status: &str) -> Value {
    let url = format!("{base}/webhooks/{id}/deliveries");
    poll_json(client, &url, Duration::from_secs(10), |log| {
        log["items"][0]["status"] == status
    })
    .await
}

fn outcomes(delivery: &Value) -> Vec<String> {
    delivery["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|attempt| attempt["outcome"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_retried_and_logged() {
    let db = TestDb::new(Backend::Postgres).await;
    let Started {
        node, api: base, ..
    } = start_node(&db, configure).await;
    let (url, receiver, server) = start_receiver(2);
    let client = reqwest::Client::new();
    let id = subscribe(
        &client,
        &base,
        json!({ "url": url, "secret": SECRET, "event_types": ["model.created"] }),
    )
    .await;
    let other = subscribe(
        &client,
        &base,
        json!({ "url": url, "secret": SECRET, "event_types": ["commitment.made"] }),
    )
    .await;
    let model_id = create_model(&client, &base, &acme()).await;

    let log = wait_for_delivery(&client, &base, &id, "delivered").await;
    assert_eq!(log["total"], 1);
    let delivery = &log["items"][0];
    assert_eq!(delivery["event_type"], "model.created");
    assert_eq!(outcomes(delivery), ["failed", "failed", "succeeded"]);
    let attempts = delivery["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["http_status"], 500);
    assert_eq!(attempts[2]["http_status"], 200);
    assert!(attempts.iter().all(|a| a["latency_ms"].as_i64().is_some()));

    let requests = receiver.lock().unwrap().requests.clone();
    assert_eq!(requests.len(), 3);
    for (signature, event, body) in &requests {
        assert_eq!(event, "model.created");
        let event: Value = serde_json::from_str(body).unwrap();
        assert_eq!(event["data"]["model_id"], model_id.as_str());
        // Verified independently of the node's own code.
        let parts: Vec<&str> = signature.split(',').collect();
        let timestamp = parts[0].strip_prefix("t=").unwrap();
        let given = hex::decode(parts[1].strip_prefix("v1=").unwrap()).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{timestamp}.{body}").as_bytes());
        mac.verify_slice(&given).expect("a valid signature");
        assert!(valueverse::notifications::verify(
            SECRET,
            signature,
            body.as_bytes(),
            chrono::Utc::now().timestamp(),
            300
        ));
    }
    // The other subscription wanted another type: nothing for it.
    let (_, none) = send(client.get(format!("{base}/webhooks/{other}/deliveries"))).await;
    assert_eq!(none["total"], 0);
    server.stop(true).await;
    drop(client);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_can_be_redelivered() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started {
        node, api: base, ..
    } = start_node(&db, configure).await;
    let (url, receiver, server) = start_receiver(usize::MAX);
    let client = reqwest::Client::new();
    let id = subscribe(
        &client,
        &base,
        json!({ "url": url, "secret": SECRET, "event_types": ["*"] }),
    )
    .await;
    create_model(&client, &base, &acme()).await;
    let log = wait_for_delivery(&client, &base, &id, "dead").await;
    let delivery = &log["items"][0];
    assert_eq!(outcomes(delivery), ["failed", "failed", "failed", "dead"]);
    let delivery_id = delivery["id"].as_str().unwrap().to_owned();

    // Not dead yet is a conflict; dead is sent again once the receiver is back.
    receiver.lock().unwrap().failures = 0;
    let (status, _) = send(client.post(format!(
        "{base}/webhooks/{id}/deliveries/{delivery_id}/redeliver"
    )))
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let log = wait_for_delivery(&client, &base, &id, "delivered").await;
    assert_eq!(
        outcomes(&log["items"][0]),
        ["failed", "failed", "failed", "dead", "succeeded"]
    );
    let (status, error) = send(client.post(format!(
        "{base}/webhooks/{id}/deliveries/{delivery_id}/redeliver"
    )))
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    let (status, _) =
        send(client.post(format!("{base}/webhooks/{id}/deliveries/nope/redeliver"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A deleted subscription gets nothing more.
    let (status, deleted) = send(client.delete(format!("{base}/webhooks/{id}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deleted["status"], "deleted");
    let seen = receiver.lock().unwrap().requests.len();
    create_model(&client, &base, &acme()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.lock().unwrap().requests.len(), seen);
    server.stop(true).await;
    drop(client);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_without_smtp_says_so_in_the_log() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started {
        node, api: base, ..
    } = start_node(&db, configure).await;
    let client = reqwest::Client::new();
    let id = subscribe(
        &client,
        &base,
        json!({ "email": "ops@acme.example", "event_types": ["model.created"] }),
    )
    .await;
    create_model(&client, &base, &acme()).await;
    let log = wait_for_delivery(&client, &base, &id, "dead").await;
    let attempt = &log["items"][0]["attempts"][0];
    assert_eq!(attempt["outcome"], "not_configured");
    assert!(
        attempt["error"]
            .as_str()
            .unwrap()
            .contains("email is not configured")
    );
    drop(client);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscriptions_name_the_field() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started {
        node, api: base, ..
    } = start_node(&db, configure).await;
    let client = reqwest::Client::new();
    let hook = "http://127.0.0.1:9/hook";
    for (body, field) in [
        (
            json!({ "url": "ftp://x/y", "secret": SECRET, "event_types": ["*"] }),
            "url",
        ),
        (
            json!({ "url": "not a url", "secret": SECRET, "event_types": ["*"] }),
            "url",
        ),
        (
            json!({ "url": hook, "secret": "short", "event_types": ["*"] }),
            "secret",
        ),
        (json!({ "url": hook, "event_types": ["*"] }), "secret"),
        (
            json!({ "url": hook, "secret": SECRET, "event_types": ["model.exploded"] }),
            "event_types[0]",
        ),
        (
            json!({ "url": hook, "secret": SECRET, "event_types": [] }),
            "event_types",
        ),
        (json!({ "email": "nobody", "event_types": ["*"] }), "email"),
        (
            json!({ "email": "a@b.example", "url": hook, "secret": SECRET, "event_types": ["*"] }),
            "url",
        ),
    ] {
        let (status, error) = send(client.post(format!("{base}/webhooks")).json(&body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {error}");
        assert_eq!(error["error"]["field"], field, "{body}");
    }
    let (_, listed) = send(client.get(format!("{base}/webhooks"))).await;
    assert_eq!(listed["total"], 0);
    let (status, _) = send(client.get(format!("{base}/webhooks/nope/deliveries"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    drop(client);
    node.stop().await.unwrap();
}

/// A minimal SMTP server: accepts one session and answers the message
/// (envelope and data) it received.
async fn smtp_server() -> (String, tokio::task::JoinHandle<String>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let (read, mut write) = socket.into_split();
        let mut lines = BufReader::new(read).lines();
        let mut seen = String::new();
        write.write_all(b"220 test ESMTP\r\n").await.unwrap();
        let mut in_data = false;
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
            let reply: &[u8] = if in_data {
                if line == "." {
                    in_data = false;
                    b"250 queued\r\n"
                } else {
                    continue;
                }
            } else if line.starts_with("EHLO") || line.starts_with("HELO") {
                b"250 test\r\n"
            } else if line.starts_with("DATA") {
                in_data = true;
                b"354 go ahead\r\n"
            } else if line.starts_with("QUIT") {
                write.write_all(b"221 bye\r\n").await.unwrap();
                break;
            } else {
                b"250 ok\r\n"
            };
            write.write_all(reply).await.unwrap();
        }
        seen
    });
    (address, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_goes_through_a_configured_smtp_relay() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (smtp, session) = smtp_server().await;
    let mut config = crate::support::test_config(&db);
    config.notifier.smtp_url = Some(format!("smtp://{smtp}"));
    config.notifier.email_from = "ValueVerse <vv@example.com>".into();
    let node = Node::start(&config, |_| {}).await.expect("node starts");
    let base = format!("http://{}/api/v1", node.http_addr());
    let client = reqwest::Client::new();
    let id = subscribe(
        &client,
        &base,
        json!({ "email": "ops@acme.example", "event_types": ["model.created"] }),
    )
    .await;
    create_model(&client, &base, &acme()).await;
    let log = wait_for_delivery(&client, &base, &id, "delivered").await;
    assert_eq!(outcomes(&log["items"][0]), ["succeeded"]);
    let seen = tokio::time::timeout(Duration::from_secs(10), session)
        .await
        .expect("the session ends")
        .unwrap();
    assert!(seen.contains("RCPT TO:<ops@acme.example>"), "{seen}");
    assert!(
        seen.contains("Subject: [ValueVerse] model.created"),
        "{seen}"
    );
    drop(client);
    node.stop().await.unwrap();
}

/// SSRF, the attack first: an editor registering the node's own database
/// port, the metadata service or a private address. Refused at
/// registration (checked on the address and on what a name resolves to;
/// no test connects to such an address); viewers see URLs without user
/// info or query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_to_private_addresses_are_refused_and_viewers_see_redacted_urls() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = crate::support::test_config(&db);
    config.notifier.allow_networks.clear();
    config.dev = false;
    let node = Node::start(&config, |_| {}).await.unwrap();
    let base = format!("http://{}/api/v1", node.http_addr());
    let store = &node.store;
    let editor = valueverse::auth::create_key(
        store,
        &valueverse::actors::Tenant::default_tenant(),
        valueverse::auth::Role::Editor,
        "e",
    )
    .await
    .unwrap()
    .1;
    let viewer = valueverse::auth::create_key(
        store,
        &valueverse::actors::Tenant::default_tenant(),
        valueverse::auth::Role::Viewer,
        "v",
    )
    .await
    .unwrap()
    .1;
    let client = reqwest::Client::new();
    for url in [
        "http://127.0.0.1:5432/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/hook",
        "http://192.168.1.10/hook",
        "http://[::1]:8080/hook",
        "http://[fd00:ec2::254]/",
        "http://localhost:9/hook",
    ] {
        let response = client
            .post(format!("{base}/webhooks"))
            .bearer_auth(&editor)
            .json(&json!({ "url": url, "secret": SECRET, "event_types": ["*"] }))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {body}");
        assert_eq!(body["error"]["field"], "url", "{body}");
    }
    node.stop().await.unwrap();

    // With loopback allowed (an internal receiver), the URL is kept, and
    // shown whole to editors only.
    let mut config = crate::support::test_config(&db);
    config.dev = false;
    let node = Node::start(&config, |_| {}).await.unwrap();
    let base = format!("http://{}/api/v1", node.http_addr());
    let url = "http://hook-user:hook-password@127.0.0.1:9/hook?token=s3cr3t";
    let created: Value = client
        .post(format!("{base}/webhooks"))
        .bearer_auth(&editor)
        .json(&json!({ "url": url, "secret": SECRET, "event_types": ["*"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let shown = |key: String, path: String| {
        let request = client.get(format!("{base}{path}")).bearer_auth(key);
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    let to_editor = shown(editor.clone(), format!("/webhooks/{id}")).await;
    assert!(to_editor.contains("s3cr3t"), "{to_editor}");
    for path in [format!("/webhooks/{id}"), "/webhooks".to_owned()] {
        let to_viewer = shown(viewer.clone(), path).await;
        assert!(to_viewer.contains("127.0.0.1:9/hook"), "{to_viewer}");
        for secret in ["s3cr3t", "hook-password", "hook-user"] {
            assert!(!to_viewer.contains(secret), "{to_viewer}");
        }
    }
    node.stop().await.unwrap();
}
