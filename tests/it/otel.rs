//! OpenTelemetry export, for real: node processes export their spans (OTLP
//! over HTTP, protobuf) to a receiver this test starts on loopback. One
//! request on node A reaching an agent on node B is one trace with the
//! right parent links, the webhook it causes carries it on, and a saga's
//! steps stay in the saga's trace across a SIGKILL and restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use serde_json::{Value, json};

use crate::cluster::{Node, Ports, free_port, node_command, wait_for_members};
use crate::crash::{kill_9, release_binary, serve_command, start_child};
use crate::sagas::value_creation;
use crate::support::{Backend, TestDb, eventually, poll_json, send};
use crate::value_models::acme;

const SECRET: &str = "otel-test-secret-0123456789";

/// Node processes killed when the test ends, failed or not.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One span as the receiver got it.
#[derive(Debug, Clone)]
struct Span {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    /// Resource attributes (`service.instance.id` is the node's name) and
    /// the span's own, as text.
    resource: HashMap<String, String>,
    attributes: HashMap<String, String>,
    error: bool,
}

type Received = Arc<Mutex<Vec<Span>>>;

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|value| value.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(list: &[KeyValue]) -> HashMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

/// An OTLP/HTTP receiver on loopback: answers its base URL and what it got.
async fn receiver() -> (String, Received, actix_web::dev::ServerHandle) {
    let received: Received = Arc::default();
    let kept = received.clone();
    let server = HttpServer::new(move || {
        let kept = kept.clone();
        App::new()
            .app_data(web::PayloadConfig::new(64 << 20))
            .route(
                "/v1/traces",
                web::post().to(move |body: web::Bytes| {
                    let kept = kept.clone();
                    async move {
                        let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                            return HttpResponse::BadRequest().finish();
                        };
                        let mut kept = kept.lock().unwrap();
                        for resource_spans in request.resource_spans {
                            let resource = resource_spans
                                .resource
                                .map(|resource| attributes(&resource.attributes))
                                .unwrap_or_default();
                            for scope in resource_spans.scope_spans {
                                for span in scope.spans {
                                    kept.push(Span {
                                        trace_id: hex::encode(&span.trace_id),
                                        span_id: hex::encode(&span.span_id),
                                        parent: hex::encode(&span.parent_span_id),
                                        name: span.name.clone(),
                                        resource: resource.clone(),
                                        attributes: attributes(&span.attributes),
                                        // STATUS_CODE_ERROR
                                        error: span.status.is_some_and(|status| status.code == 2),
                                    });
                                }
                            }
                        }
                        HttpResponse::Ok()
                            .content_type("application/x-protobuf")
                            .finish()
                    }
                }),
            )
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let address = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (format!("http://{address}"), received, handle)
}

/// A node process exporting to `otlp`; `run` tells its lives apart (a
/// resource attribute, through the standard variable).
fn traced(mut command: Command, otlp: &str, run: &str) -> Command {
    command
        .args(["--otlp-endpoint", otlp])
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_RESOURCE_ATTRIBUTES", format!("run={run}"));
    command
}

fn cluster_node(
    binary: &PathBuf,
    url: &str,
    name: &str,
    ports: &Ports,
    seeds: &[u16],
    otlp: &str,
    config: &std::path::Path,
) -> Node {
    let mut command = node_command(binary, url, name, ports, seeds, SECRET, true);
    command.arg("--config").arg(config);
    let (child, base) = start_child(traced(command, otlp, name)).unwrap();
    Node {
        name: name.to_owned(),
        child,
        base,
    }
}

/// A fresh W3C `traceparent` of the test's own (sampled).
fn traceparent() -> (String, String, String) {
    let trace = hex::encode(rand::random::<[u8; 16]>());
    let parent = hex::encode(rand::random::<[u8; 8]>());
    (format!("00-{trace}-{parent}-01"), trace, parent)
}

/// Waits until `found` holds of what the receiver got.
async fn spans_until<T>(
    received: &Received,
    what: &str,
    found: impl Fn(&[Span]) -> Option<T>,
) -> T {
    let found = &found;
    eventually(what, Duration::from_secs(30), || async move {
        let spans = received.lock().unwrap();
        found(&spans).ok_or_else(|| format!("{spans:#?}"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_crosses_nodes_webhooks_and_a_kill_9() {
    let binary = tokio::task::spawn_blocking(release_binary).await.unwrap();
    let (otlp, received, server) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    // Webhooks to the test's loopback receiver.
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[notifier]\nallow_networks = [\"127.0.0.0/8\"]\n").unwrap();
    let client = reqwest::Client::new();

    // Two nodes on one PostgreSQL database.
    let db = TestDb::new(Backend::Postgres).await;
    let ports: Vec<Ports> = (0..2)
        .map(|_| Ports {
            transport: free_port(),
            gossip: free_port(),
        })
        .collect();
    let seeds: Vec<u16> = ports.iter().map(|p| p.gossip).collect();
    let names = ["n1", "n2"];
    let nodes: Vec<Node> = names
        .iter()
        .zip(&ports)
        .map(|(name, ports)| cluster_node(&binary, &db.url, name, ports, &seeds, &otlp, &config))
        .collect();
    for node in &nodes {
        wait_for_members(&client, node, &names).await;
    }
    let a = nodes[0].base.clone();
    let children = Children(nodes.into_iter().map(|node| node.child).collect());

    // Models made through A; each read through A with a trace of its own.
    let mut reads = Vec::new();
    for _ in 0..16 {
        let (status, model) = send(client.post(format!("{a}/value-models")).json(&acme())).await;
        assert_eq!(status, 201, "{model}");
        let id = model["id"].as_str().unwrap().to_owned();
        let (header, trace, parent) = traceparent();
        let response = client
            .get(format!("{a}/value-models/{id}"))
            .header("traceparent", header)
            .header("x-correlation-id", format!("read-{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        // The response names the trace the request joined.
        assert_eq!(response.headers()["x-trace-id"], trace.as_str());
        reads.push((id, trace, parent));
    }
    // One of them is owned by B: A's server span, B's handler its child.
    let (id, http, handle) = spans_until(&received, "a read served by n2", |spans| {
        reads.iter().find_map(|(id, trace, parent)| {
            let http = spans.iter().find(|span| {
                span.trace_id == *trace
                    && span.name == "GET /api/v1/value-models/{id}"
                    && span.resource["service.instance.id"] == "n1"
            })?;
            let handle = spans.iter().find(|span| {
                span.trace_id == *trace
                    && span.attributes.get("kind").map(String::as_str) == Some("architect")
                    && span.resource["service.instance.id"] == "n2"
            })?;
            assert_eq!(http.parent, *parent, "A's span is the client's child");
            Some((id.clone(), http.clone(), handle.clone()))
        })
    })
    .await;
    assert_eq!(
        handle.parent, http.span_id,
        "B's handler is a child of A's span"
    );
    assert_eq!(handle.attributes["key"], id);
    assert_eq!(handle.attributes["node"], "n2");
    assert_eq!(handle.attributes["tenant"], "default");
    assert_eq!(handle.attributes["outcome"], "ok");
    assert_eq!(handle.attributes["correlation_id"], format!("read-{id}"));
    assert_eq!(
        handle.name,
        format!("architect {}", handle.attributes["msg"])
    );
    assert_eq!(http.attributes["http.route"], "/api/v1/value-models/{id}");
    assert_eq!(http.attributes["http.response.status_code"], "200");
    assert_eq!(http.attributes["tenant"], "default");

    // A webhook continues the trace of the change that caused it.
    let hooks: Arc<Mutex<Vec<String>>> = Arc::default();
    let kept = hooks.clone();
    let hook_server = HttpServer::new(move || {
        let kept = kept.clone();
        App::new().default_service(web::to(move |request: actix_web::HttpRequest| {
            let kept = kept.clone();
            async move {
                if let Some(parent) = request.headers().get("traceparent") {
                    kept.lock()
                        .unwrap()
                        .push(parent.to_str().unwrap().to_owned());
                }
                HttpResponse::Ok().finish()
            }
        }))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let hook_address = hook_server.addrs()[0];
    let hook_server = hook_server.run();
    let hook_handle = hook_server.handle();
    tokio::spawn(hook_server);
    let (status, subscription) = send(client.post(format!("{a}/webhooks")).json(&json!({
        "url": format!("http://{hook_address}/hook"),
        "secret": "whsec-otel-test-0123456789",
        "event_types": ["model.created"],
    })))
    .await;
    assert_eq!(status, 201, "{subscription}");
    let (header, trace, _) = traceparent();
    let response = client
        .post(format!("{a}/value-models"))
        .header("traceparent", header)
        .json(&acme())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let hooks = &hooks;
    let trace_id = trace.as_str();
    let hook_parent = eventually(
        &format!("a webhook in trace {trace}"),
        Duration::from_secs(30),
        || async move {
            let seen = hooks.lock().unwrap().clone();
            seen.iter()
                .find(|parent| parent.contains(trace_id))
                .cloned()
                .ok_or_else(|| format!("{seen:?}"))
        },
    )
    .await;
    // Its parent is the delivery attempt's span, in the same trace.
    let notify_id = hook_parent.split('-').nth(2).unwrap().to_owned();
    let notify = spans_until(&received, "the delivery's span", |spans| {
        spans.iter().find(|span| span.span_id == notify_id).cloned()
    })
    .await;
    assert_eq!(notify.trace_id, trace);
    assert_eq!(notify.name, "notify model.created");
    assert_eq!(notify.attributes["outcome"], "succeeded");
    hook_handle.stop(true).await;
    drop(children);

    // A saga on one node, killed with SIGKILL while the saga waits at its
    // simulate step (the one simulation worker is busy), then restarted.
    let sqlite = dir.path().join("saga.db");
    let url = format!("sqlite://{}", sqlite.display());
    let serve = |run: &str| start_child(traced(serve_command(&binary, &url), &otlp, run)).unwrap();
    let (child, base) = serve("first");
    let mut first = Children(vec![child]);
    let (status, blocker) = send(client.post(format!("{base}/simulations")).json(&json!({
        "model": acme(), "paths": 1_000_000_000, "device": "cpu"
    })))
    .await;
    assert_eq!(status, 202, "{blocker}");
    let blocker = blocker["id"].as_str().unwrap().to_owned();
    let (header, trace, _) = traceparent();
    let saga = client
        .post(format!("{base}/sagas/value-creation"))
        .header("traceparent", header)
        .json(&value_creation(None, 10_000))
        .send()
        .await
        .unwrap();
    assert_eq!(saga.status(), 202);
    let saga: Value = saga.json().await.unwrap();
    let id = saga["id"].as_str().unwrap().to_owned();
    assert_eq!(saga["trace_id"], trace.as_str(), "{saga}");
    // The saga's span and its first step reach the receiver before the kill.
    let (saga_span, design) = spans_until(&received, "the saga's span and design step", |spans| {
        let saga_span = spans
            .iter()
            .find(|span| span.trace_id == trace && span.name == "saga value-creation")?;
        let design = spans.iter().find(|span| {
            span.parent == saga_span.span_id && span.name == "saga value-creation design forward"
        })?;
        Some((saga_span.clone(), design.clone()))
    })
    .await;
    assert_eq!(design.attributes["saga.id"], id);
    assert_eq!(design.resource["run"], "first");
    kill_9(&mut first.0[0]);

    let (child, base) = serve("second");
    let _second = Children(vec![child]);
    // The blocker goes; the saga resumes and finishes on the new process.
    let cancel = client
        .put(format!("{base}/simulations/{blocker}/cancel"))
        .send()
        .await
        .unwrap();
    assert!(
        cancel.status().is_success(),
        "{}",
        cancel.text().await.unwrap()
    );
    let saga = poll_json(
        &client,
        &format!("{base}/sagas/{id}"),
        Duration::from_secs(60),
        |saga| saga["status"] == "completed",
    )
    .await;
    assert_eq!(saga["trace_id"], trace.as_str());
    // The steps after the restart are spans of the same trace, under the
    // saga's span that the first process made.
    let after = spans_until(&received, "steps after the restart", |spans| {
        let steps: Vec<&Span> = spans
            .iter()
            .filter(|span| span.resource.get("run").map(String::as_str) == Some("second"))
            .filter(|span| span.name.starts_with("saga value-creation "))
            .collect();
        let names: Vec<&str> = steps.iter().map(|span| span.name.as_str()).collect();
        names
            .contains(&"saga value-creation amplify forward")
            .then(|| steps.into_iter().cloned().collect::<Vec<_>>())
    })
    .await;
    for step in &after {
        assert_eq!(step.trace_id, trace, "{step:?}");
        assert_eq!(step.parent, saga_span.span_id, "{step:?}");
        assert!(!step.error, "{step:?}");
    }
    // And an agent's handler under a step is a child of that step.
    let amplify = after
        .iter()
        .find(|span| span.name == "saga value-creation amplify forward")
        .unwrap();
    spans_until(&received, "a handler under the amplify step", |spans| {
        spans
            .iter()
            .find(|span| span.parent == amplify.span_id && span.attributes.contains_key("kind"))
            .cloned()
    })
    .await;
    server.stop(true).await;
}
