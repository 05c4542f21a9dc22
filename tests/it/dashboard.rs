//! The dashboard: its data (frames built only while somebody watches, shared
//! by every viewer), fault injection, and the page itself in a real
//! browser (Debian's chromium, driven by playwright-core from
//! tests/browser/dashboard.mjs).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::{Value, json};
use valueverse::Node;
use valueverse::auth::{Role, create_key};

use crate::crash::wait_until_final;
use crate::simulations::submit_ok;
use crate::support::{Backend, Started, TestDb, eventually, get_json, send};
use crate::value_models::{acme, create_model};

/// A node that checks API keys, and a client that sends an admin key.
/// A node with keys on, an admin key and a client that sends it.
async fn keyed_node(db: &TestDb) -> (Node, String, reqwest::Client, String) {
    keyed_node_with(db, |_| {}).await
}

/// [`keyed_node`] with more of the test's own configuration.
async fn keyed_node_with(
    db: &TestDb,
    configure: impl FnOnce(&mut valueverse::Config),
) -> (Node, String, reqwest::Client, String) {
    let Started { node, base, .. } = crate::support::start_node(db, |config| {
        config.dev = false;
        configure(config);
    })
    .await;
    let (_, key) = create_key(
        &node.store,
        &valueverse::actors::Tenant::default_tenant(),
        Role::Admin,
        "dashboard test",
    )
    .await
    .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
    );
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    (node, base, client, key)
}

fn frames_built(metrics: &str) -> u64 {
    metric(metrics, "valueverse_dashboard_frames_total")
}

fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} is not exported"))
}

async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_poll_share_one_frame_a_second() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (node, base, client, _key) = keyed_node(&db).await;
    let polls = (0..20).map(|_| {
        let (client, url) = (client.clone(), format!("{base}/api/v1/dashboard"));
        async move {
            let frame: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            frame["at_ms"].as_i64().unwrap()
        }
    });
    let stamps = futures_util::future::join_all(polls).await;
    let distinct: std::collections::BTreeSet<i64> = stamps.into_iter().collect();
    let built = frames_built(&metrics(&base).await);
    // Before: a frame per call (20 builds, each asking the store and peers).
    assert!(built <= 2, "{built} frames built for 20 polls");
    assert_eq!(distinct.len() as u64, built, "{distinct:?}");
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_watching_builds_nothing_and_viewers_share_each_frame() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (node, base, _client, key) = keyed_node(&db).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        frames_built(&metrics(&base).await),
        0,
        "built with nobody watching"
    );

    // Three viewers for about three seconds.
    let ws = format!("ws://{}/ws/dashboard?access_token={key}", node.http_addr());
    let mut viewers = Vec::new();
    for _ in 0..3 {
        let (socket, _) = tokio_tungstenite::connect_async(&ws).await.unwrap();
        viewers.push(socket);
    }
    let started = Instant::now();
    let mut received = vec![Vec::new(); 3];
    while started.elapsed() < Duration::from_millis(3200) {
        for (index, socket) in viewers.iter_mut().enumerate() {
            if let Ok(Some(Ok(message))) =
                tokio::time::timeout(Duration::from_millis(50), socket.next()).await
                && let Ok(text) = message.into_text()
            {
                let frame: Value = serde_json::from_str(&text).unwrap();
                received[index].push(frame["at_ms"].as_i64().unwrap());
            }
        }
    }
    let scraped = metrics(&base).await;
    assert_eq!(metric(&scraped, "valueverse_dashboard_viewers"), 3);
    let built = frames_built(&scraped);
    // One frame a second for everyone, not one per viewer.
    assert!(
        (2..=5).contains(&built),
        "{built} frames for 3 viewers in 3 s"
    );
    for frames in &received {
        assert!(frames.len() >= 2, "a viewer got {frames:?}");
    }
    // The viewers saw the same frames: no more distinct ones than built.
    let distinct: std::collections::BTreeSet<i64> = received.iter().flatten().copied().collect();
    assert!(
        distinct.len() as u64 <= built,
        "{distinct:?} from {built} builds"
    );
    drop(viewers);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = metrics(&base).await;
    assert_eq!(metric(&after, "valueverse_dashboard_viewers"), 0);
    let settled = frames_built(&after);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        frames_built(&metrics(&base).await),
        settled,
        "built after the viewers left"
    );
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_shows_the_tree_sagas_simulations_and_notifications() {
    let db = TestDb::new(Backend::Postgres).await;
    let (node, base, client, _) = keyed_node(&db).await;
    let api = format!("{base}/api/v1");
    let model = create_model(&client, &api, &acme()).await;
    let frame = get_json(&client, &format!("{api}/dashboard")).await;
    assert_eq!(frame["cluster"]["members"].as_array().unwrap().len(), 1);
    let panel = &frame["nodes"][0];
    assert_eq!(panel["node"], frame["node"]);
    let architect = panel["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|kind| kind["kind"] == "architect")
        .expect("the architect supervisor");
    assert_eq!(architect["num_active"], 1);
    assert_eq!(architect["instances"][0]["key"], model.as_str());
    for part in ["sagas", "simulations", "notifications"] {
        assert!(
            frame[part].is_object() || frame[part].is_array(),
            "{part}: {frame}"
        );
    }
    // Viewers only: a frame needs a key.
    let anonymous = reqwest::get(format!("{api}/dashboard")).await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    // A forged peer header is no key either.
    let forged = reqwest::Client::new()
        .get(format!("{api}/dashboard/node"))
        .header("x-valueverse-peer", "1.00")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    // The page and its assets are open (no data in them).
    for path in [
        "/dashboard",
        "/dashboard/dashboard.js",
        "/dashboard/charts.js",
        "/dashboard/dashboard.css",
    ] {
        let response = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let missing = reqwest::get(format!("{base}/dashboard/secrets.txt"))
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_restarts_an_instance_and_refuses_bad_requests() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (node, base, client, _) = keyed_node(&db).await;
    let api = format!("{base}/api/v1");
    let model = create_model(&client, &api, &acme()).await;
    let crash = |path: String, body: Value| client.post(format!("{api}{path}")).json(&body).send();

    let response = crash(
        format!("/actors/architect/{model}/crash"),
        json!({ "reason": "drill" }),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let tree = get_json(&client, &format!("{api}/actors")).await;
        let instance = tree["supervisors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|kind| kind["kind"] == "architect")
            .and_then(|kind| kind["instances"].as_array().unwrap().first().cloned())
            .unwrap();
        if instance["restarts"] == 1 && instance["status"] == "active" {
            assert!(
                instance["last_failure"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("drill")
            );
            break;
        }
        assert!(Instant::now() < deadline, "no restart: {instance}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The model is still there: a restart reloads the state.
    let again = get_json(&client, &format!("{api}/value-models/{model}")).await;
    assert_eq!(again["id"], model.as_str());

    let cases = [
        (
            "/actors/architect/nobody/crash",
            json!({ "reason": "x" }),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            "/actors/wizard/x/crash",
            json!({ "reason": "x" }),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            &*format!("/actors/architect/{model}/crash"),
            json!({ "reason": "" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("reason"),
        ),
        (
            &*format!("/actors/architect/{model}/crash"),
            json!({}),
            StatusCode::BAD_REQUEST,
            Some("reason"),
        ),
        (
            &*format!("/actors/architect/{model}/crash?node=elsewhere"),
            json!({ "reason": "x" }),
            StatusCode::NOT_FOUND,
            Some("node"),
        ),
        (
            &*format!("/actors/architect/{model}/crash?nod=x"),
            json!({ "reason": "x" }),
            StatusCode::BAD_REQUEST,
            Some("nod"),
        ),
        (
            &*format!("/actors/architect/{model}/reset"),
            json!({}),
            StatusCode::CONFLICT,
            None,
        ),
    ];
    for (path, body, status, field) in cases {
        let response = crash(path.to_owned(), body).await.unwrap();
        assert_eq!(response.status(), status, "{path}");
        let error: Value = response.json().await.unwrap();
        if let Some(field) = field {
            assert!(
                error["error"]["field"]
                    .as_str()
                    .unwrap_or("")
                    .contains(field),
                "{path}: {error}"
            );
        }
    }
    // Admin only.
    let (_, editor) = create_key(
        &node.store,
        &valueverse::actors::Tenant::default_tenant(),
        Role::Editor,
        "editor",
    )
    .await
    .unwrap();
    let refused = reqwest::Client::new()
        .post(format!("{api}/actors/architect/{model}/crash"))
        .bearer_auth(editor)
        .json(&json!({ "reason": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    node.stop().await.unwrap();
}

/// A tenant's frame charts the realization of its plans' models (the daily
/// snapshots, committed and realized to date); another tenant's frame and
/// the operator's carry none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_frame_charts_its_models_realization() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started { node, api, .. } = crate::support::start_node(&db, |config| {
        crate::tenants::keyed(config);
        config.value.tick = Duration::from_millis(100);
    })
    .await;
    let acme = crate::tenants::members(&node.store, "acme").await.admin;
    let globex = crate::tenants::members(&node.store, "globex").await.admin;
    let (model, commitment) = crate::plans::committed_model(&acme, &api).await;
    let today = chrono::Utc::now().date_naive();
    let start = today - chrono::Months::new(3);
    let (status, plan) = send(acme.post(format!("{api}/plans")).json(&json!({
        "commitment_id": commitment, "start_date": start,
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{plan}");
    let plan_id = plan["id"].as_str().unwrap();
    let (status, delivery) = send(
        acme.post(format!("{api}/plans/{plan_id}/deliveries"))
            .json(&json!({ "driver": "ticket deflection", "value": 50000, "date": start })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{delivery}");
    // The first snapshot (the tick finds it due at once).
    eventually("a snapshot", Duration::from_secs(20), || async {
        let history = get_json(&acme, &format!("{api}/amplifications/{model}/history")).await;
        match history["points"].as_array() {
            Some(points) if !points.is_empty() => Ok(()),
            _ => Err(history.to_string()),
        }
    })
    .await;

    let frame = get_json(&acme, &format!("{api}/dashboard")).await;
    let charts = frame["realization"].as_array().expect("realization charts");
    assert_eq!(charts.len(), 1, "{frame}");
    assert_eq!(charts[0]["model_id"], model.as_str());
    let points = charts[0]["points"].as_array().unwrap();
    assert!(!points.is_empty() && points.len() <= 90, "{points:?}");
    // The model's totals (its active plans together), as the history
    // route answers them, to the cent.
    let history = get_json(&acme, &format!("{api}/amplifications/{model}/history")).await;
    for point in points {
        let day = history["points"]
            .as_array()
            .unwrap()
            .iter()
            .find(|day| day["day"] == point["day"])
            .unwrap_or_else(|| panic!("{point} is not in the history {history}"));
        for figure in ["committed", "realized", "realization_percent"] {
            let (shown, stored) = (point[figure].as_f64(), day[figure].as_f64());
            assert!(
                (shown.unwrap() - stored.unwrap()).abs() <= 0.005,
                "{figure}: {point} against {day}"
            );
        }
        assert!(point["committed"].as_f64().unwrap() > 0.0, "{point}");
    }

    // Another tenant's frame, and the operator's, chart nothing of it.
    let other = get_json(&globex, &format!("{api}/dashboard")).await;
    assert_eq!(other["realization"], json!([]), "{other}");
    assert!(!other.to_string().contains(&model), "{other}");
    let (_, platform) = create_key(
        &node.store,
        &valueverse::actors::Tenant::default_tenant(),
        Role::Platform,
        "ops",
    )
    .await
    .unwrap();
    let operator = crate::tenants::client_with(&platform);
    let frame = get_json(&operator, &format!("{api}/dashboard")).await;
    assert_eq!(frame["realization"], json!([]), "{frame}");
    node.stop().await.unwrap();
}

/// Where the browser test's tools are; a clear failure where they are not.
fn browser_tools() -> (PathBuf, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let chromium =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned()));
    let script_dir = root.join("tests").join("browser");
    assert!(
        chromium.exists(),
        "the dashboard test needs Debian's chromium at {} (`apt-get install chromium`; .ci/run installs it)",
        chromium.display()
    );
    assert!(
        script_dir
            .join("node_modules")
            .join("playwright-core")
            .exists(),
        "the dashboard test needs playwright-core: `npm ci --prefix tests/browser` (.ci/run runs it)"
    );
    (chromium, script_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_live_in_a_real_browser() {
    let (chromium, script_dir) = browser_tools();
    let db = TestDb::new(Backend::Sqlite).await;
    // Quick value ticks: the plan below gets its daily snapshot at once.
    let (node, base, client, key) = keyed_node_with(&db, |config| {
        config.value.tick = Duration::from_millis(100);
    })
    .await;
    let api = format!("{base}/api/v1");
    let model = create_model(&client, &api, &acme()).await;

    // A plan whose model's realization is charted (its snapshot taken).
    let (planned, commitment) = crate::plans::committed_model(&client, &api).await;
    let (status, plan) = send(client.post(format!("{api}/plans")).json(&json!({
        "commitment_id": commitment,
        "start_date": chrono::Utc::now().date_naive() - chrono::Months::new(2),
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{plan}");
    eventually("a snapshot", Duration::from_secs(20), || async {
        let history = get_json(&client, &format!("{api}/amplifications/{planned}/history")).await;
        match history["points"].as_array() {
            Some(points) if !points.is_empty() => Ok(()),
            _ => Err(history.to_string()),
        }
    })
    .await;

    // A finished simulation (its histogram and tornado), a compensated
    // saga, and a long simulation whose progress bar must move.
    let small = submit_ok(
        &client,
        &base,
        json!({ "model": acme(), "paths": 20_000, "seed": 7, "bins": 30, "device": "cpu" }),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while get_json(&client, &format!("{api}/simulations/{small}")).await["status"] != "done" {
        assert!(
            Instant::now() < deadline,
            "the small simulation did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut body = crate::crash::body(1);
    body["fail_step"] = json!("commit");
    let saga: Value = client
        .post(format!("{api}/sagas/value-creation"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let saga = saga["id"].as_str().unwrap().to_owned();
    let finished = wait_until_final(&client, &api, &[(0, saga.clone())]).await;
    assert_eq!(finished[0].1["status"], "compensated");
    let long = submit_ok(
        &client,
        &base,
        json!({ "model": acme(), "paths": 1_000_000_000, "seed": 8, "device": "cpu" }),
    )
    .await;

    let screenshot = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("dashboard.png");
    let output = tokio::process::Command::new("node")
        .arg(script_dir.join("dashboard.mjs"))
        .env("VV_URL", &base)
        .env("VV_KEY", &key)
        .env("VV_NODE", node.system.node_name())
        .env("VV_ARCHITECT_KEY", &model)
        .env("VV_SIMULATION", &long)
        .env("VV_SAGA", &saga)
        .env("VV_REALIZATION_MODEL", &planned)
        .env("VV_SCREENSHOT", &screenshot)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .expect("the browser test finished within 2 minutes")
        .expect("node runs (Node.js is needed for playwright-core)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("browser findings: {stdout}");
    assert!(
        output.status.success(),
        "browser checks failed: {stdout}\n{stderr}"
    );
    let findings: Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    assert_eq!(findings["console_errors"], json!([]));
    let restart_ms = findings["checks"]["restart_visible_ms"].as_u64().unwrap();
    assert!(restart_ms <= 2000, "restart shown after {restart_ms} ms");
    assert_eq!(findings["checks"]["saga_status"], "compensated");
    assert_eq!(findings["checks"]["saga_steps"], 5);
    assert!(findings["checks"]["histogram_bars"].as_u64().unwrap() >= 10);
    assert!(findings["checks"]["tornado_bars"].as_u64().unwrap() >= 2);
    assert!(findings["checks"]["realization_points"].as_u64().unwrap() >= 1);
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10_000);
    assert_eq!(findings["checks"]["reset_from_page"], true);
    // The page's cancel reached the job.
    let job = get_json(&client, &format!("{api}/simulations/{long}")).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    if std::env::var_os("VALUEVERSE_UPDATE_SCREENSHOT").is_some() {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("docs")
            .join("dashboard.png");
        std::fs::copy(&screenshot, docs).unwrap();
    }
    node.stop().await.unwrap();
}
