//! The transactional outbox on both stores: an event exists exactly when
//! the change that raised it does; dispatch writes one notification per
//! subscription and event whoever dispatches; a delivery is claimed by one
//! node while its lease lives and passes to another once it ends. And for
//! real: node processes killed with SIGKILL while webhooks are due lose
//! none and double none; a dead node's deliveries and jobs pass to the
//! survivor.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use rand::Rng;
use serde_json::{Value, json};
use valueverse::store::{Attempt, Claimant, Column, LeaseClaim, OutboxEvent, Record, Renewal};
use valueverse::{Store, StoreError};

use crate::cluster::free_port;
use crate::crash::{kill_9, release_binary, start_child};
use crate::support::{BACKENDS, Backend, TestDb, get_json};
use crate::value_models::acme;

fn event(id: &str) -> OutboxEvent {
    OutboxEvent {
        id: id.to_owned(),
        tenant: "default".into(),
        event_type: "model.created".into(),
        occurred_at_ms: 1,
        payload: format!(r#"{{"id":"{id}"}}"#),
        trace_context: None,
    }
}

fn subscription_row(id: &str, events: Vec<OutboxEvent>) -> Record<'_> {
    Record {
        table: "subscriptions",
        id,
        columns: vec![
            ("status", Column::Text(Some("active".into()))),
            ("created_at_ms", Column::Int(Some(1))),
        ],
        body: "{}".into(),
        events,
    }
}

async fn lease(store: &Store, node: &str, ttl_ms: i64) -> i64 {
    store
        .acquire_lease(
            LeaseClaim {
                node,
                transport_addr: "",
                http_addr: "",
                kinds: "",
                gpus: 0,
                proof: "",
            },
            ttl_ms,
        )
        .await
        .unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_stored_exactly_when_its_change_is() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let row = subscription_row("s1", vec![event("e1")]);
        assert_eq!(store.save_record(&row, 0).await.unwrap(), 1);
        // A stale write is refused, and so is its event.
        let stale = subscription_row("s1", vec![event("e2")]);
        assert!(matches!(
            store.save_record(&stale, 0).await,
            Err(StoreError::VersionConflict { .. })
        ));
        assert_eq!(store.outbox_stats().await.unwrap().undispatched_events, 1);

        // Writes batched together: each event goes with its own write only.
        let ids: Vec<String> = (0..60).map(|index| format!("row-{index}")).collect();
        let writes = ids.iter().enumerate().map(|(index, id)| {
            let store = store.clone();
            async move {
                // Every third write names a version the row does not have.
                let expected = if index % 3 == 0 { 7 } else { 0 };
                let row = subscription_row(id, vec![event(&format!("ev-{id}"))]);
                store.save_record(&row, expected).await.is_ok()
            }
        });
        let applied = futures_util::future::join_all(writes)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count();
        assert_eq!(applied, 40, "{backend:?}");
        let stats = store.outbox_stats().await.unwrap();
        assert_eq!(stats.undispatched_events, 41, "{backend:?}");
        assert_eq!(stats.oldest_undelivered_ms, Some(1));
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_holds_while_its_lease_lives_and_passes_on_when_it_ends() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let a = lease(&store, "a", 600_000).await;
        let b = lease(&store, "b", 600_000).await;
        let (node_a, node_b) = (
            Claimant {
                node: "a",
                token: a,
            },
            Claimant {
                node: "b",
                token: b,
            },
        );
        store
            .save_record(&subscription_row("x", vec![event("e1")]), 0)
            .await
            .unwrap();
        let wanting = |_: Vec<(String, String)>| {
            |_: &str, _: &str| vec!["sub-1".to_owned(), "sub-2".to_owned()]
        };
        // The dispatching node may claim some at once (here one of two).
        let (done, claimed_at_once) = store
            .dispatch_events(100, now(), 3, wanting, Some((node_a, 1)))
            .await
            .unwrap();
        assert_eq!((done.events, done.notifications), (1, 2), "{backend:?}");
        assert_eq!(claimed_at_once.len(), 1);
        assert_eq!(claimed_at_once[0].claimed_by.as_deref(), Some("a"));
        // Dispatched once: a second dispatch finds nothing.
        let (again, _) = store
            .dispatch_events(100, now(), 3, wanting, None)
            .await
            .unwrap();
        assert_eq!((again.events, again.notifications), (0, 0));

        let claimed = store.claim_deliveries(node_a, 10, now(), 0).await.unwrap();
        assert_eq!(claimed.len(), 1, "{backend:?}: the other one");
        assert!(claimed.iter().all(|claim| claim.taken_from.is_none()));
        assert!(
            store
                .claim_deliveries(node_b, 10, now(), 0)
                .await
                .unwrap()
                .is_empty(),
            "{backend:?}: b claimed what a holds"
        );

        // a's lease ends: b takes both over, and a's late report is fenced.
        store.release_lease("a", a).await.unwrap();
        assert!(
            store
                .claim_deliveries(node_a, 10, now(), 0)
                .await
                .unwrap()
                .is_empty(),
            "a node whose lease ended claims nothing"
        );
        let taken = store.claim_deliveries(node_b, 10, now(), 0).await.unwrap();
        assert_eq!(taken.len(), 2, "{backend:?}");
        for claim in &taken {
            assert_eq!(claim.taken_from.as_deref(), Some("a"));
            assert_eq!(claim.notification.takeovers, 1);
        }
        let first = &taken[0].notification;
        let attempt = |by: &str| Attempt {
            id: uuid::Uuid::now_v7().to_string(),
            notification_id: first.id.clone(),
            attempt: 1,
            outcome: format!("succeeded by {by}"),
            http_status: Some(200),
            latency_ms: Some(1),
            error: None,
            at_ms: now(),
        };
        assert!(
            !store
                .record_attempt(&attempt("a"), "delivered", now(), node_a)
                .await
                .unwrap(),
            "a no longer holds it"
        );
        assert!(
            store
                .record_attempt(&attempt("b"), "delivered", now(), node_b)
                .await
                .unwrap()
        );
        let stored = store.notification(&first.id).await.unwrap().unwrap();
        assert_eq!(stored.status, "delivered");
        assert_eq!(stored.claimed_by, None);

        // Released with a due time: claimable by any node once due only.
        let second = &taken[1].notification;
        let retry = Attempt {
            notification_id: second.id.clone(),
            ..attempt("b")
        };
        let later = now() + 60_000;
        assert!(
            store
                .record_attempt(&retry, "pending", later, node_b)
                .await
                .unwrap()
        );
        assert!(
            store
                .claim_deliveries(node_b, 10, now(), 0)
                .await
                .unwrap()
                .is_empty()
        );
        let due = store.claim_deliveries(node_b, 10, later, 0).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].taken_from, None);
        // A claim older than an attempt can take has lapsed, even under a
        // live lease: its node lost track of it.
        let stale = store
            .claim_deliveries(node_b, 10, later, later + 1)
            .await
            .unwrap();
        assert_eq!(stale.len(), 1, "{backend:?}");
        assert_eq!(stale[0].taken_from.as_deref(), Some("b"));
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_dispatching_together_write_each_notification_once() {
    for backend in [Backend::Postgres, Backend::Sqlite] {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        for batch in 0..4 {
            let events: Vec<OutboxEvent> = (0..50)
                .map(|index| event(&format!("e-{batch}-{index:03}")))
                .collect();
            store.append_events(&events).await.unwrap();
        }
        // Two dispatchers over separate pools, as two nodes would be.
        let other = db.store().await;
        let run = |store: Store| async move {
            let mut taken = 0;
            loop {
                let (done, _) = store
                    .dispatch_events(
                        7,
                        now(),
                        3,
                        |_| |_: &str, _: &str| vec!["sub-1".to_owned(), "sub-2".to_owned()],
                        None,
                    )
                    .await
                    .unwrap();
                if done.events == 0 {
                    return taken;
                }
                taken += done.events;
            }
        };
        let (one, two) = tokio::join!(run(store.clone()), run(other.clone()));
        assert_eq!(one + two, 200, "{backend:?}: each event dispatched once");
        for subscription in ["sub-1", "sub-2"] {
            let (total, _) = store.notifications_of(subscription, 1, 0).await.unwrap();
            assert_eq!(total, 200, "{backend:?}");
        }
        other.close().await;
        store.close().await;
    }
}

/// What a webhook receiver saw: per subscription (the URL's last segment),
/// each delivery id with the model it announced and how many times it came.
#[derive(Default)]
struct Seen {
    deliveries: HashMap<(String, String), (String, usize)>,
    /// While set, requests are held this long before the answer (so that
    /// a node dies in the middle of its attempts).
    hold: Option<Duration>,
}

async fn receive(
    seen: web::Data<Arc<Mutex<Seen>>>,
    subscription: web::Path<String>,
    request: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let delivery = request
        .headers()
        .get("ValueVerse-Delivery")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let event: Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = event["data"]["model_id"].as_str().unwrap_or("").to_owned();
    let hold = {
        let mut seen = seen.lock().unwrap();
        let entry = seen
            .deliveries
            .entry((subscription.into_inner(), delivery))
            .or_insert((model, 0));
        entry.1 += 1;
        seen.hold
    };
    if let Some(hold) = hold {
        tokio::time::sleep(hold).await;
    }
    HttpResponse::Ok().finish()
}

/// A receiver on loopback; answers its base URL (`/hook/{subscription}`).
fn start_receiver() -> (String, Arc<Mutex<Seen>>, actix_web::dev::ServerHandle) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let data = web::Data::new(Arc::clone(&seen));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/hook/{subscription}", web::post().to(receive))
    })
    .workers(2)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (format!("http://{addr}/hook"), seen, handle)
}

/// The nodes' configuration file: webhooks to loopback allowed, quick
/// retries, short leases.
fn config_file() -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(
        file,
        r#"
[notifier]
allow_networks = ["127.0.0.0/8"]
initial_backoff = "50ms"
max_backoff = "500ms"
max_attempts = 50
poll_interval = "100ms"

[cluster]
lease_ttl = "2s"
"#
    )
    .unwrap();
    file
}

/// A node process: alone (`serve`), or a member of a cluster on loopback.
struct Proc {
    child: Child,
    base: String,
}

fn spawn(
    binary: &PathBuf,
    url: &str,
    config: &Path,
    member: Option<(&str, u16, u16, &[u16])>,
) -> Proc {
    let mut command = Command::new(binary);
    match member {
        None => {
            command.args(["serve", "--dev"]);
        }
        Some((name, transport, gossip, seeds)) => {
            let seeds: Vec<String> = seeds
                .iter()
                .map(|port| format!("127.0.0.1:{port}"))
                .collect();
            command
                .args(["node", "--dev", "--name", name])
                .args(["--listen", &format!("127.0.0.1:{transport}")])
                .args(["--gossip", &format!("127.0.0.1:{gossip}")])
                .args(["--seeds", &seeds.join(",")])
                .env("VALUEVERSE_CLUSTER_SECRET", "outbox-test-secret-0123456789");
        }
    }
    command
        .args(["--http", "127.0.0.1:0", "--database-url", url])
        .env("VALUEVERSE_CONFIG", config);
    let (child, base) =
        start_child(command).unwrap_or_else(|stderr| panic!("the node did not start: {stderr}"));
    Proc { child, base }
}

async fn subscribe(client: &reqwest::Client, base: &str, hook: &str, name: &str) -> String {
    let response = client
        .post(format!("{base}/webhooks"))
        .json(&json!({
            "url": format!("{hook}/{name}"),
            "secret": "a-secret-of-some-length",
            "event_types": ["model.created"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Creates models one after another until `stop`; answers the ids of
/// those whose creation was answered 201 (others may exist too: a node
/// killed after its commit and before its reply).
async fn create_models(
    client: reqwest::Client,
    base: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<String> {
    let mut created = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(response) = client
            .post(format!("{base}/value-models"))
            .json(&acme())
            .timeout(Duration::from_secs(5))
            .send()
            .await
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if response.status() == reqwest::StatusCode::CREATED
            && let Ok(model) = response.json::<Value>().await
        {
            created.push(model["id"].as_str().unwrap().to_owned());
        }
    }
    created
}

/// Waits until every model in `models` reached both subscriptions; then
/// checks that no model reached one twice under different delivery ids,
/// that every delivered model exists, and answers the repeated deliveries
/// (the same id sent again after a node died mid-send).
async fn check_deliveries(
    client: &reqwest::Client,
    base: &str,
    seen: &Arc<Mutex<Seen>>,
    subscriptions: &[&str],
    models: &HashSet<String>,
) -> usize {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let missing: Vec<(String, String)> = {
            let seen = seen.lock().unwrap();
            let delivered: HashSet<(&str, &str)> = seen
                .deliveries
                .iter()
                .map(|((subscription, _), (model, _))| (subscription.as_str(), model.as_str()))
                .collect();
            subscriptions
                .iter()
                .flat_map(|subscription| {
                    models
                        .iter()
                        .filter(|model| !delivered.contains(&(subscription, model.as_str())))
                        .map(|model| (subscription.to_string(), model.clone()))
                })
                .collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} deliveries never came, e.g. {:?}",
            missing.len(),
            models.len() * subscriptions.len(),
            &missing[..missing.len().min(3)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let extra: HashSet<String> = {
        let snapshot = seen.lock().unwrap();
        let mut ids_per_model: HashMap<(&str, &str), usize> = HashMap::new();
        for ((subscription, _), (model, _)) in &snapshot.deliveries {
            *ids_per_model.entry((subscription, model)).or_default() += 1;
        }
        for ((subscription, model), ids) in &ids_per_model {
            assert_eq!(
                *ids, 1,
                "model {model} reached {subscription} under {ids} delivery ids"
            );
        }
        snapshot
            .deliveries
            .values()
            .map(|(model, _)| model.clone())
            .filter(|model| !models.contains(model))
            .collect()
    };
    // A model whose reply the kill cut off may exist; one delivered must
    // (asked until its owner answers: a node may still be rejoining).
    for model in extra {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = client
                .get(format!("{base}/value-models/{model}"))
                .send()
                .await
                .map(|response| response.status());
            match status {
                Ok(reqwest::StatusCode::OK) => break,
                Ok(reqwest::StatusCode::NOT_FOUND) => {
                    panic!("{model} was announced but does not exist")
                }
                other => assert!(Instant::now() < deadline, "{model}: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let seen = seen.lock().unwrap();
    seen.deliveries.values().map(|(_, times)| times - 1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_survive_kill_9_at_random_moments() {
    let binary = tokio::task::spawn_blocking(release_binary).await.unwrap();
    let config = config_file();
    let (hook, seen, receiver) = start_receiver();
    let client = reqwest::Client::new();
    let mut rng = rand::rng();
    for backend in BACKENDS {
        seen.lock().unwrap().deliveries.clear();
        let db = TestDb::new(backend).await;
        // With PostgreSQL, two nodes share the work and one of them dies.
        let ports: Vec<(u16, u16)> = (0..2).map(|_| (free_port(), free_port())).collect();
        let gossips: Vec<u16> = ports.iter().map(|(_, gossip)| *gossip).collect();
        let start = |index: usize| {
            let member = (backend == Backend::Postgres).then(|| {
                let (transport, gossip) = ports[index];
                (["n0", "n1"][index], transport, gossip, &gossips[..])
            });
            spawn(&binary, &db.url, config.path(), member)
        };
        let mut nodes = vec![start(0)];
        if backend == Backend::Postgres {
            nodes.push(start(1));
        }
        let names = ["one", "two"];
        for name in names {
            subscribe(&client, &nodes[0].base, &hook, name).await;
        }
        // No wait: a subscription applies at once, on every node.
        let mut models = HashSet::new();
        for _round in 0..6 {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let writers: Vec<_> = nodes
                .iter()
                .flat_map(|node| {
                    (0..2).map(|_| {
                        tokio::spawn(create_models(
                            client.clone(),
                            node.base.clone(),
                            Arc::clone(&stop),
                        ))
                    })
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
            let victim = rng.random_range(0..nodes.len());
            kill_9(&mut nodes[victim].child);
            stop.store(true, Ordering::Relaxed);
            for writer in writers {
                models.extend(writer.await.unwrap());
            }
            nodes[victim] = start(victim);
        }
        assert!(models.len() >= 20, "{backend:?}: {} models", models.len());
        let repeated = check_deliveries(&client, &nodes[0].base, &seen, &names, &models).await;
        eprintln!(
            "{backend:?}: {} models, {} deliveries, {repeated} sent again after a kill",
            models.len(),
            models.len() * names.len()
        );
        for node in &mut nodes {
            kill_9(&mut node.child);
        }
    }
    receiver.stop(false).await;
}

/// A counter of a node's `/metrics`, 0 when absent.
async fn counter(client: &reqwest::Client, base: &str, name: &str) -> f64 {
    let root = base.trim_end_matches("/api/v1");
    let text = client
        .get(format!("{root}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_deliveries_and_jobs_pass_to_the_survivor() {
    let binary = tokio::task::spawn_blocking(release_binary).await.unwrap();
    let config = config_file();
    let (hook, seen, receiver) = start_receiver();
    let client = reqwest::Client::new();
    let db = TestDb::new(Backend::Postgres).await;
    let (a_ports, b_ports) = ((free_port(), free_port()), (free_port(), free_port()));
    let gossips = [a_ports.1, b_ports.1];
    let mut a = spawn(
        &binary,
        &db.url,
        config.path(),
        Some(("a", a_ports.0, a_ports.1, &gossips)),
    );
    let subscription = subscribe(&client, &a.base, &hook, "one").await;

    // A holds every delivery in flight (the receiver does not answer yet)
    // and runs a long job when it dies.
    seen.lock().unwrap().hold = Some(Duration::from_secs(30));
    let mut models = HashSet::new();
    for _ in 0..5 {
        let response = client
            .post(format!("{}/value-models", a.base))
            .json(&acme())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::CREATED);
        models.insert(
            response.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let model: Value =
        serde_json::from_str(include_str!("../../docs/models/ten-drivers.json")).unwrap();
    let job = client
        .post(format!("{}/simulations", a.base))
        .json(&json!({ "model": model, "paths": 250_000_000, "seed": 5, "device": "cpu" }))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let job_id = job["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let held = seen.lock().unwrap().deliveries.len();
        let job: Value = get_json(&client, &format!("{}/simulations/{job_id}", a.base)).await;
        if held == models.len() && job["status"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "held {held}, job {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // B joins, A dies; once A's lease ends B sends again and runs the job.
    let b = spawn(
        &binary,
        &db.url,
        config.path(),
        Some(("b", b_ports.0, b_ports.1, &gossips)),
    );
    kill_9(&mut a.child);
    seen.lock().unwrap().hold = None;
    // The receiver saw every attempt of A's: wait for B's, delivered.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log: Value = get_json(
            &client,
            &format!("{}/webhooks/{subscription}/deliveries", b.base),
        )
        .await;
        // Until A's lease ends its keys (the subscription's among them)
        // answer nothing: an error body, not a page.
        let delivered = log["items"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|item| item["status"] == "delivered" && item["takeovers"] == 1)
            .count();
        if delivered == models.len() {
            break;
        }
        assert!(Instant::now() < deadline, "not taken over: {log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check_deliveries(&client, &b.base, &seen, &["one"], &models).await;
    {
        let seen = seen.lock().unwrap();
        for ((_, delivery), (model, times)) in &seen.deliveries {
            assert!(
                *times <= 2,
                "delivery {delivery} of {model} came {times} times: once more at most"
            );
        }
    }
    assert!(
        counter(&client, &b.base, "valueverse_outbox_takeovers_total").await == models.len() as f64
    );

    let deadline = Instant::now() + Duration::from_secs(120);
    let job = loop {
        let job: Value = get_json(&client, &format!("{}/simulations/{job_id}", b.base)).await;
        if job["status"] == "done" {
            break job;
        }
        assert!(
            Instant::now() < deadline,
            "the job was not taken over: {job}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(job["attempts"], 2, "{job}");
    assert_eq!(
        counter(&client, &b.base, "valueverse_simulation_takeovers_total").await,
        1.0
    );
    let mut b = b;
    kill_9(&mut b.child);
    receiver.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_made_on_one_node_applies_to_events_raised_on_another() {
    let db = TestDb::new(Backend::Postgres).await;
    let (hook, seen, receiver) = start_receiver();
    let start = |name: &str| {
        let mut config = crate::support::test_config(&db);
        config.node_name = name.into();
        async move { valueverse::Node::start(&config, |_| {}).await.unwrap() }
    };
    let (a, b) = (start("a").await, start("b").await);
    let base = |node: &valueverse::Node| format!("http://{}/api/v1", node.http_addr());
    let client = reqwest::Client::new();
    subscribe(&client, &base(&a), &hook, "one").await;
    // The contract: events raised a second after the subscription was made.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let response = client
        .post(format!("{}/value-models", base(&b)))
        .json(&acme())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    let model = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let models = HashSet::from([model]);
    check_deliveries(&client, &base(&b), &seen, &["one"], &models).await;
    // The dashboard's feed reads the notifications too.
    let recent = b.store.recent_notifications("default", 10).await.unwrap();
    assert_eq!(recent.len(), 1);
    receiver.stop(false).await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_recorded_as_this_nodes_but_not_held_runs_again() {
    let db = TestDb::new(Backend::Sqlite).await;
    let node = valueverse::Node::start(&crate::support::test_config(&db), |_| {})
        .await
        .unwrap();
    let base = format!("http://{}/api/v1", node.http_addr());
    let client = reqwest::Client::new();
    let model: Value =
        serde_json::from_str(include_str!("../../docs/models/ten-drivers.json")).unwrap();
    let job = client
        .post(format!("{base}/simulations"))
        .json(&json!({ "model": model, "paths": 1000, "seed": 3, "device": "cpu" }))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap();
    let done = loop {
        let job = get_json(&client, &format!("{base}/simulations/{id}")).await;
        if job["status"] == "done" {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // A job this node recorded as its own under its current lease, that it
    // does not hold (as after an ask that timed out once its write was
    // made): queued and run again by the sweep.
    let store = db.store().await;
    let (_, body) = store.load_record("simulations", id).await.unwrap().unwrap();
    let mut lost: Value = serde_json::from_str(&body).unwrap();
    let lost_id = uuid::Uuid::now_v7().to_string();
    lost["id"] = json!(lost_id);
    lost["status"] = json!("queued");
    lost["result"] = Value::Null;
    lost["progress"] = Value::Null;
    lost["finished_at"] = Value::Null;
    let runner = &lost["runner"];
    assert_eq!(runner["node"], "node-1", "{done}");
    let row = Record {
        table: "simulations",
        id: &lost_id,
        columns: vec![
            ("status", Column::Text(Some("queued".into()))),
            ("submitter", Column::Text(Some("test".into()))),
            ("created_at_ms", Column::Int(Some(now()))),
            ("runner_node", Column::Text(Some("node-1".into()))),
            ("runner_token", Column::Int(runner["token"].as_i64())),
        ],
        body: lost.to_string(),
        events: Vec::new(),
    };
    store.save_record(&row, 0).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let job = get_json(&client, &format!("{base}/simulations/{lost_id}")).await;
        if job["status"] == "done" {
            assert_eq!(job["attempts"], 2, "{job}");
            break;
        }
        assert!(Instant::now() < deadline, "never run again: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    store.close().await;
    node.stop().await.unwrap();
}

/// A lease renewed only while it is live: one that lapsed (its node
/// stalled, and others took its claims over) is not brought back under the
/// same token, which would make those claims its own again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_lease_is_not_renewed_under_its_old_token() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let token = lease(&store, "a", 600_000).await;
        assert_eq!(
            store.renew_lease("a", token, 600_000).await.unwrap(),
            Renewal::Renewed
        );
        store.release_lease("a", token).await.unwrap();
        assert_eq!(
            store.renew_lease("a", token, 600_000).await.unwrap(),
            Renewal::Lapsed,
            "{backend:?}"
        );
        let newer = lease(&store, "a", 600_000).await;
        assert!(newer > token);
        assert_eq!(
            store.renew_lease("a", token, 600_000).await.unwrap(),
            Renewal::TakenOver
        );
        store.close().await;
    }
}

/// The span that raised an event reaches the notifications made of it,
/// through both write paths (a change's events and events alone), so that
/// its webhooks continue its trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_trace_context_reaches_its_notifications() {
    const TRACE: &str =
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\ncongo=t61rcWkgMzE";
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let traced = |id: &str| OutboxEvent {
            trace_context: Some(TRACE.into()),
            ..event(id)
        };
        store
            .save_record(&subscription_row("s1", vec![traced("e1")]), 0)
            .await
            .unwrap();
        store
            .append_events(&[traced("e2"), event("e3")])
            .await
            .unwrap();
        let (done, _) = store
            .dispatch_events(
                10,
                now(),
                3,
                |_| |_: &str, _: &str| vec!["sub-1".to_owned()],
                None,
            )
            .await
            .unwrap();
        assert_eq!(done.events, 3, "{backend:?}");
        let (_, rows) = store.notifications_of("sub-1", 10, 0).await.unwrap();
        let mut traces: Vec<(String, Option<String>)> = rows
            .into_iter()
            .map(|(row, _)| (row.event_id, row.trace_context))
            .collect();
        traces.sort();
        assert_eq!(
            traces,
            [
                ("e1".to_owned(), Some(TRACE.to_owned())),
                ("e2".to_owned(), Some(TRACE.to_owned())),
                ("e3".to_owned(), None),
            ],
            "{backend:?}"
        );
        store.close().await;
    }
}
