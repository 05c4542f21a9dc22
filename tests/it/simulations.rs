//! The simulation agent through its HTTP API and WebSocket stream, on a node
//! started inside the test.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use valueverse::Node;
use valueverse::gpu::{self, Control, Device, RunSettings};
use valueverse::model::ValueModel;

use crate::support::{BACKENDS, Backend, Started, TestDb, poll_json, send, start_node};

const TEN_DRIVERS: &str = include_str!("../../docs/models/ten-drivers.json");

fn model() -> Value {
    serde_json::from_str(TEN_DRIVERS).unwrap()
}

/// A node, its base URL and a client.
struct Running {
    node: Node,
    base: String,
    client: reqwest::Client,
}

impl Running {
    async fn start(db: &TestDb, queue_capacity: usize) -> Running {
        let Started { node, base, .. } = start_node(db, |config| {
            config.simulation.queue_capacity = queue_capacity;
        })
        .await;
        Running {
            node,
            base,
            client: reqwest::Client::new(),
        }
    }

    /// Submits a job that is sure to be accepted.
    async fn submit(&self, body: Value) -> String {
        submit_ok(&self.client, &self.base, body).await
    }

    async fn cancel(&self, id: &str) -> reqwest::Response {
        self.client
            .put(format!("{}/api/v1/simulations/{id}/cancel", self.base))
            .send()
            .await
            .unwrap()
    }

    async fn wait_for(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        wait_for(&self.client, &self.base, id, done).await
    }

    fn ws_url(&self, id: &str) -> String {
        format!(
            "{}/ws/simulations/{id}",
            self.base.replace("http://", "ws://")
        )
    }

    /// The client goes first: a graceful stop waits on its keep-alive.
    async fn stop(self) {
        drop(self.client);
        self.node.stop().await.unwrap();
    }
}

async fn submit(client: &reqwest::Client, base: &str, body: Value) -> reqwest::Response {
    client
        .post(format!("{base}/api/v1/simulations"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Submits a job through the API at `base` (the node's root URL); answers its id.
pub(crate) async fn submit_ok(client: &reqwest::Client, base: &str, body: Value) -> String {
    let response = submit(client, base, body).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["status"], "queued");
    assert_eq!(
        location,
        format!("/api/v1/simulations/{}", job["id"].as_str().unwrap())
    );
    job["id"].as_str().unwrap().to_owned()
}

/// Polls the job until `done(job)`, at most 20 seconds.
async fn wait_for(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let url = format!("{base}/api/v1/simulations/{id}");
    poll_json(client, &url, Duration::from_secs(20), done).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_to_its_result_and_matches_the_engine_on_both_stores() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let node = Running::start(&db, 8).await;
        let (client, base) = (&node.client, node.base.clone());
        let id = node.submit(json!({ "model": model(), "paths": 300_000, "seed": 77, "bins": 20, "device": "cpu" })).await;
        let job = node.wait_for(&id, |job| job["status"] == "done").await;
        assert_eq!(job["engine"], "cpu");
        assert_eq!(job["attempts"], 1);
        assert_eq!(job["progress"]["percent"], 100.0);
        let (status, body) =
            send(client.get(format!("{base}/api/v1/simulations/{id}/results"))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let result = &body["result"];
        assert_eq!(result["paths"], 300_000);
        assert_eq!(result["histogram"]["counts"].as_array().unwrap().len(), 20);
        // The same seed through the engine directly: the same numbers.
        let model = ValueModel::from_json(TEN_DRIVERS.as_bytes()).unwrap();
        let settings = RunSettings {
            paths: 300_000,
            seed: 77,
            bins: 20,
            stop_at_rel_se: None,
        };
        let direct = gpu::run(&model, &settings, Device::Cpu, |_| Control::Continue).unwrap();
        assert_eq!(result["npv"]["mean"].as_f64().unwrap(), direct.npv.mean);
        assert_eq!(
            result["npv"]["percentiles"]["p50"].as_f64().unwrap(),
            direct.npv.percentiles.p50
        );
        // The record is in the store: a new node reads it.
        node.stop().await;
        let node = Running::start(&db, 8).await;
        let (client, base) = (&node.client, node.base.clone());
        let (status, again) =
            send(client.get(format!("{base}/api/v1/simulations/{id}/results"))).await;
        assert_eq!(status, StatusCode::OK, "{backend:?}");
        assert_eq!(again["result"]["npv"], body["result"]["npv"]);
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_streams_progress_then_the_result() {
    let db = TestDb::new(Backend::Sqlite).await;
    let node = Running::start(&db, 8).await;
    let base = node.base.clone();
    let id = node
        .submit(json!({ "model": model(), "paths": 3_000_000, "seed": 1, "device": "cpu" }))
        .await;
    let ws_url = node.ws_url(&id);
    let (mut socket, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let mut events = Vec::new();
    while let Some(message) = tokio::time::timeout(Duration::from_secs(20), socket.next())
        .await
        .expect("an event within 20 s")
    {
        match message.unwrap() {
            Message::Text(text) => events.push(serde_json::from_str::<Value>(&text).unwrap()),
            Message::Close(_) => break,
            _ => {}
        }
    }
    let last = events.last().expect("events");
    assert_eq!(last["type"], "done", "{last}");
    assert_eq!(last["result"]["paths"], 3_000_000);
    let progress: Vec<&Value> = events.iter().filter(|e| e["type"] == "progress").collect();
    assert!(progress.len() >= 2, "{} progress events", progress.len());
    let done: Vec<u64> = progress
        .iter()
        .filter_map(|e| e["progress"]["paths_done"].as_u64())
        .collect();
    assert!(done.windows(2).all(|w| w[0] < w[1]), "{done:?}");
    let sample = progress.last().unwrap()["progress"].clone();
    for field in [
        "paths_total",
        "percent",
        "samples_per_second",
        "running_mean",
        "p50",
        "p90",
        "eta_seconds",
    ] {
        assert!(sample[field].is_number(), "{field} in {sample}");
    }
    // A late client gets the final state at once, then the close.
    let (mut late, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let first = late.next().await.unwrap().unwrap();
    let first: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(first["type"], "done");
    assert!(matches!(
        late.next().await,
        Some(Ok(Message::Close(_))) | None
    ));
    // An unknown job is refused before the upgrade.
    let refused = tokio_tungstenite::connect_async(format!(
        "{}/ws/simulations/nope",
        base.replace("http://", "ws://")
    ))
    .await;
    assert!(refused.is_err());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_socket_leaves_the_job_running_and_cancel_stops_it() {
    let db = TestDb::new(Backend::Sqlite).await;
    let node = Running::start(&db, 8).await;
    let (client, base) = (&node.client, node.base.clone());
    let id = node
        .submit(json!({ "model": model(), "paths": 1_000_000_000, "device": "cpu" }))
        .await;
    let ws_url = node.ws_url(&id);
    let (mut socket, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    // Read until the job makes progress, then hang up.
    loop {
        let message = socket.next().await.unwrap().unwrap();
        let event: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
        if event["type"] == "progress" && event["progress"]["paths_done"].as_u64() > Some(0) {
            break;
        }
    }
    socket.close(None).await.unwrap();
    drop(socket);
    let before = node.wait_for(&id, |job| job["status"] == "running").await;
    let seen = before["progress"]["paths_done"].as_u64().unwrap_or(0);
    let later = node
        .wait_for(&id, |job| {
            job["progress"]["paths_done"].as_u64().unwrap_or(0) > seen
        })
        .await;
    assert_eq!(later["status"], "running");

    let cancel = node.cancel(&id).await;
    assert_eq!(cancel.status(), StatusCode::OK);
    let job = node.wait_for(&id, |job| job["status"] == "cancelled").await;
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .starts_with("cancelled after"),
        "{job}"
    );
    let (status, body) = send(client.get(format!("{base}/api/v1/simulations/{id}/results"))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "not_finished");
    // Cancelling again is a conflict, not a second cancellation.
    let again = node.cancel(&id).await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_and_a_queued_job_cancels_at_once() {
    let db = TestDb::new(Backend::Sqlite).await;
    let node = Running::start(&db, 2).await;
    let (client, base) = (&node.client, node.base.clone());
    let long = json!({ "model": model(), "paths": 1_000_000_000, "device": "cpu" });
    let running = node.submit(long.clone()).await;
    node.wait_for(&running, |job| job["status"] == "running")
        .await;
    let first = node.submit(long.clone()).await;
    let second = node.submit(long.clone()).await;
    let refused = submit(client, &base, long.clone()).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "queue_full");

    let (_, queue) = send(client.get(format!("{base}/api/v1/simulations/queue"))).await;
    assert_eq!(queue["capacity"], 2);
    assert_eq!(queue["running"][0]["id"], running.as_str());
    let queued: Vec<&str> = queue["queued"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].as_str().unwrap())
        .collect();
    assert_eq!(queued, [first.as_str(), second.as_str()]);

    // A queued job is cancelled at once and leaves the queue.
    let cancelled: Value = node.cancel(&first).await.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    let (_, queue) = send(client.get(format!("{base}/api/v1/simulations/queue"))).await;
    assert_eq!(queue["queued"].as_array().unwrap().len(), 1);
    node.submit(long).await;
    for id in [&running, &second] {
        node.cancel(id).await;
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_the_field() {
    let db = TestDb::new(Backend::Sqlite).await;
    let node = Running::start(&db, 8).await;
    let (client, base) = (&node.client, node.base.clone());
    let mut negative_sd = model();
    negative_sd["drivers"][1]["quantity"]["sd"] = json!(-1.0);
    let cases = [
        (
            json!({ "model": negative_sd }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "model.drivers[1].quantity.sd",
        ),
        (
            json!({ "model": model(), "paths": 0 }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "paths",
        ),
        (
            json!({ "model": model(), "paths": 2_000_000_000u64 }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "paths",
        ),
        (
            json!({ "model": model(), "bins": 0 }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "bins",
        ),
        (
            json!({ "model": model(), "stop_at_rel_se": 1.5 }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "stop_at_rel_se",
        ),
        (
            json!({ "model": model(), "device": "tpu" }),
            StatusCode::BAD_REQUEST,
            "device",
        ),
        (
            json!({ "model": model(), "colour": "red" }),
            StatusCode::BAD_REQUEST,
            "colour",
        ),
        (
            json!({ "paths": 10 }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "model",
        ),
    ];
    for (body, status, field) in cases {
        let response = submit(client, &base, body.clone()).await;
        assert_eq!(response.status(), status, "{body}");
        let error: Value = response.json().await.unwrap();
        if !field.is_empty() {
            assert_eq!(error["error"]["field"], field, "{error}");
        }
    }
    if gpu::cuda::probe().is_err() {
        let response = submit(client, &base, json!({ "model": model(), "device": "gpu" })).await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "no_gpu");
        assert_eq!(error["error"]["field"], "device");
    }
    let (status, body) = send(client.get(format!("{base}/api/v1/simulations/no-such-job"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    // Nothing of the refused requests reached the queue.
    let (_, queue) = send(client.get(format!("{base}/api/v1/simulations/queue"))).await;
    assert_eq!(queue["queued"].as_array().unwrap().len(), 0);
    assert_eq!(queue["running"].as_array().unwrap().len(), 0);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_interrupted_by_a_restart_runs_again_on_both_stores() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let node = Running::start(&db, 8).await;
        let id = node
            .submit(json!({ "model": model(), "paths": 1_000_000_000, "device": "cpu" }))
            .await;
        node.wait_for(&id, |job| job["status"] == "running").await;
        node.stop().await;

        let node = Running::start(&db, 8).await;
        let job = node
            .wait_for(&id, |job| {
                job["status"] == "running" && job["attempts"] == 2
            })
            .await;
        assert_eq!(job["engine"], "cpu", "{backend:?}");
        node.cancel(&id).await;
        node.wait_for(&id, |job| job["status"] == "cancelled").await;
        node.stop().await;
    }
}
