//! Tenants walled off: tenant B's viewer, editor and admin walk every route
//! of the route table with tenant A's ids and learn nothing of A's data
//! (the answer for A's id is the answer for an id nobody has; no body names
//! A's ids), neither through references in B's own requests, webhooks,
//! sagas, the dashboard nor the supervision tree.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::{Value, json};
use valueverse::actors::Tenant;
use valueverse::auth::{Role, create_key};

use crate::commitments::commitment;
use crate::plans::committed_model;
use crate::sagas::{value_creation, wait_until};
use crate::simulations::submit_ok;
use crate::support::{Backend, Started, TestDb, eventually, get_json, poll_json, send, start_node};
use crate::value_models::{acme, create_model};
use crate::webhooks::start_receiver;

/// Keys on, limits lifted (every route with every key from one address),
/// quick ticks and retries.
pub(crate) fn keyed(config: &mut valueverse::Config) {
    config.dev = false;
    config.limits.requests_per_second = 100_000;
    config.limits.burst = 100_000;
    config.limits.unauthenticated_per_second = 100_000;
    config.executor_tick = Duration::from_millis(50);
    config.notifier.initial_backoff = Duration::from_millis(20);
    config.notifier.max_backoff = Duration::from_millis(100);
}

pub(crate) fn client_with(key: &str) -> reqwest::Client {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// A tenant's clients, one per role.
pub(crate) struct Members {
    pub viewer: reqwest::Client,
    pub editor: reqwest::Client,
    pub admin: reqwest::Client,
}

/// Makes the tenant and a key of each role.
pub(crate) async fn members(store: &valueverse::Store, name: &str) -> Members {
    let tenant = Tenant::parse(name).unwrap();
    store.insert_tenant(name, name).await.unwrap();
    let mut clients = Vec::new();
    for role in [Role::Viewer, Role::Editor, Role::Admin] {
        let (_, key) = create_key(store, &tenant, role, "tenants test")
            .await
            .unwrap();
        clients.push(client_with(&key));
    }
    let admin = clients.pop().unwrap();
    let editor = clients.pop().unwrap();
    let viewer = clients.pop().unwrap();
    Members {
        viewer,
        editor,
        admin,
    }
}

/// What tenant A made, by the route parameter that names it.
struct Made {
    model: String,
    simulation: String,
    commitment: String,
    plan: String,
    subscription: String,
    delivery: String,
    saga: String,
    secrets: Vec<String>,
}

impl Made {
    /// The route's path with A's ids (or made-up ones) in its parameters.
    fn path(&self, route: &str, made_up: bool) -> String {
        let pick = |id: &str| {
            if made_up {
                uuid::Uuid::now_v7().to_string()
            } else {
                id.to_owned()
            }
        };
        let id = if route.contains("value-models") || route.contains("amplifications") {
            pick(&self.model)
        } else if route.contains("simulations") {
            pick(&self.simulation)
        } else if route.contains("commitments") {
            pick(&self.commitment)
        } else if route.contains("plans") {
            pick(&self.plan)
        } else if route.contains("webhooks") {
            pick(&self.subscription)
        } else if route.contains("sagas") {
            pick(&self.saga)
        } else {
            pick(&self.model)
        };
        route
            .replace("{id}", &id)
            .replace("{model_id}", &id)
            .replace("{kind}", "architect")
            .replace("{key}", &id)
            .replace("{delivery_id}", &pick(&self.delivery))
    }

    /// Which of A's ids or names `body` shows, besides those the request
    /// named itself (an answer may echo what it was asked).
    fn leaked(&self, body: &str, asked: &str) -> Vec<&str> {
        self.secrets
            .iter()
            .filter(|secret| body.contains(secret.as_str()) && !asked.contains(secret.as_str()))
            .map(String::as_str)
            .collect()
    }
}

/// Status and error code of an answer, and its body.
async fn answer(request: reqwest::RequestBuilder) -> (StatusCode, Option<String>, String) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let code = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|value| value["error"]["code"].as_str().map(str::to_owned));
    (status, code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_reads_lists_changes_streams_and_infers_nothing() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started {
        node, base, api, ..
    } = start_node(&db, keyed).await;
    let a = members(&node.store, "acme").await;
    let b = members(&node.store, "globex").await;
    let (a_hook, a_seen, _a_server) = start_receiver(0);
    let (b_hook, b_seen, _b_server) = start_receiver(0);

    // Tenant A's data: a webhook, a model simulated and committed to, a
    // plan with a delivery, a simulation, a saga.
    let (status, subscription) = send(a.editor.post(format!("{api}/webhooks")).json(&json!({
        "url": a_hook, "secret": "a-secret-of-sixteen+", "event_types": ["*"]
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{subscription}");
    let (status, theirs) = send(b.editor.post(format!("{api}/webhooks")).json(&json!({
        "url": b_hook, "secret": "b-secret-of-sixteen+", "event_types": ["*"]
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{theirs}");
    let (model, commitment_id) = committed_model(&a.editor, &api).await;
    let (status, plan) = send(a.editor.post(format!("{api}/plans")).json(&json!({
        "commitment_id": commitment_id, "start_date": "2026-01-01", "tasks": []
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{plan}");
    let plan = plan["id"].as_str().unwrap().to_owned();
    let (status, delivered) = send(
        a.editor
            .post(format!("{api}/plans/{plan}/deliveries"))
            .json(&json!({ "id": "d-acme-1", "driver": "ticket deflection", "value": 1234.5, "date": "2026-03-15" })),
    )
    .await;
    assert!(status.is_success(), "{delivered}");
    let simulation = submit_ok(
        &a.editor,
        &base,
        json!({ "model_id": model, "paths": 2000, "seed": 1, "device": "cpu" }),
    )
    .await;
    let (status, saga) = send(
        a.editor
            .post(format!("{api}/sagas/value-creation"))
            .json(&value_creation(None, 10_000)),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{saga}");
    let saga = saga["id"].as_str().unwrap().to_owned();
    wait_until(&a.viewer, &api, &saga, "completed").await;
    let subscription = subscription["id"].as_str().unwrap().to_owned();
    let deliveries = poll_json(
        &a.viewer,
        &format!("{api}/webhooks/{subscription}/deliveries"),
        Duration::from_secs(10),
        |log| log["total"].as_i64().unwrap_or(0) > 0,
    )
    .await;
    let delivery = deliveries["items"][0]["id"].as_str().unwrap().to_owned();
    let made = Made {
        secrets: vec![
            model.clone(),
            simulation.clone(),
            commitment_id.clone(),
            plan.clone(),
            subscription.clone(),
            delivery.clone(),
            saga.clone(),
            a_hook.clone(),
            "d-acme-1".into(),
        ],
        model,
        simulation,
        commitment: commitment_id,
        plan,
        subscription,
        delivery,
        saga,
    };

    // B's dashboard, tree, queue and lists show none of A's (before B's
    // own requests below name A's ids and wake instances of B's own).
    for path in [
        "/dashboard",
        "/actors",
        "/simulations/queue",
        "/sagas",
        "/webhooks",
    ] {
        let body = get_json(&b.admin, &format!("{api}{path}"))
            .await
            .to_string();
        assert!(made.leaked(&body, "").is_empty(), "{path}: {body}");
    }

    // Who A's requests were made by, as A's audit log names them.
    let mut a_actors = Vec::new();
    for client in [&a.viewer, &a.editor, &a.admin] {
        let me = get_json(client, &format!("{api}/me")).await;
        a_actors.push(format!("key:{}", me["key_id"].as_str().unwrap()));
    }
    let a_log = get_json(&a.admin, &format!("{api}/audit"))
        .await
        .to_string();
    assert!(
        a_log.contains(&a_actors[1]),
        "A's own log names A's editor: {a_log}"
    );

    // Every route, with each of B's keys: A's ids answer as ids nobody
    // has, and no answer names anything of A's.
    let mut walked = 0;
    for (method, route) in valueverse::http::ROUTES {
        if matches!(*route, "/health" | "/ready" | "/metrics") {
            continue;
        }
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        for (role, client) in [
            ("viewer", &b.viewer),
            ("editor", &b.editor),
            ("admin", &b.admin),
        ] {
            let call = |path: String| {
                let url = format!("{base}{path}");
                let request = client.request(method.clone(), url);
                if method == reqwest::Method::GET {
                    request
                } else {
                    request.json(&json!({}))
                }
            };
            let asked = made.path(route, false);
            let theirs = answer(call(asked.clone())).await;
            let nobodys = answer(call(made.path(route, true))).await;
            assert_eq!(
                (theirs.0, &theirs.1),
                (nobodys.0, &nobodys.1),
                "B's {role} on {method} {route}: A's id answers otherwise than a made-up one: {} / {}",
                theirs.2,
                nobodys.2
            );
            assert_ne!(
                theirs.0,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{method} {route}: {}",
                theirs.2
            );
            // B's audit log names what B itself asked (A's ids among them,
            // from this walk): it must hold nothing A did.
            let leaked = if *route == "/api/v1/audit" {
                a_actors
                    .iter()
                    .filter(|actor| theirs.2.contains(actor.as_str()))
                    .map(String::as_str)
                    .collect()
            } else {
                made.leaked(&theirs.2, &asked)
            };
            assert!(
                leaked.is_empty(),
                "B's {role} on {method} {route} sees {leaked:?}: {}",
                theirs.2
            );
            // B's admin has every tenant role: a 403 could only be about A.
            if role == "admin" && route.contains('{') && route != &"/api/v1/dashboard/node" {
                assert_ne!(
                    theirs.0,
                    StatusCode::FORBIDDEN,
                    "B's {role} on {method} {route}: 404, not 403 (forbidden only by role): {}",
                    theirs.2
                );
            }
            walked += 1;
        }
    }
    assert!(walked > 100, "{walked} calls");

    // A's own view: its reads answer (the walk was not vacuous).
    let mine = get_json(&a.viewer, &format!("{api}/value-models/{}", made.model)).await;
    assert_eq!(mine["id"], made.model.as_str());
    let plan_of_a = get_json(&a.viewer, &format!("{api}/plans/{}", made.plan)).await;
    assert_eq!(plan_of_a["id"], made.plan.as_str());

    // B's own requests naming A's ids are refused as unknown ids are.
    let references = [
        ("/commitments", commitment(&made.model, 1.0)),
        (
            "/plans",
            json!({ "commitment_id": made.commitment, "start_date": "2026-01-01", "tasks": [] }),
        ),
        (
            "/simulations",
            json!({ "model_id": made.model, "paths": 1000, "device": "cpu" }),
        ),
        (
            "/sagas/renewal",
            json!({ "commitment_id": made.commitment, "paths": 1000 }),
        ),
    ];
    for (path, body) in references {
        let (status, error) = send(b.editor.post(format!("{api}{path}")).json(&body)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {error}");
        // As for an id nobody has (the message names what B sent only).
        let text = body.to_string();
        let made_up = uuid::Uuid::now_v7().to_string();
        let nobodys = text
            .replace(&made.model, &made_up)
            .replace(&made.commitment, &made_up);
        let nobodys: Value = serde_json::from_str(&nobodys).unwrap();
        let (again, other) = send(b.editor.post(format!("{api}{path}")).json(&nobodys)).await;
        assert_eq!(
            (again, &other["error"]["code"]),
            (status, &error["error"]["code"]),
            "{path}"
        );
    }

    // B's lists hold B's only.
    create_model(&b.editor, &api, &acme()).await;
    let listed = get_json(&b.viewer, &format!("{api}/value-models")).await;
    assert_eq!(listed["total"], 1, "{listed}");

    // Webhooks: a new model of A's reaches A's receiver, never B's.
    let later = create_model(&a.editor, &api, &acme()).await;
    eventually(
        "A's receiver hears of A's model",
        Duration::from_secs(10),
        || {
            let seen = a_seen.lock().unwrap().requests.clone();
            let later = later.clone();
            async move {
                match seen.iter().any(|(_, _, body)| body.contains(&later)) {
                    true => Ok(()),
                    false => Err(format!("{} requests", seen.len())),
                }
            }
        },
    )
    .await;
    let heard_by_b = b_seen.lock().unwrap().requests.clone();
    for (_, _, body) in &heard_by_b {
        assert!(!body.contains(&later), "B heard of A's model: {body}");
        assert!(
            made.leaked(body, "").is_empty(),
            "B heard of A's data: {body}"
        );
    }
    assert!(
        heard_by_b
            .iter()
            .any(|(_, kind, _)| kind == "model.created"),
        "B hears of its own model: {heard_by_b:?}"
    );

    // Who is calling.
    let me = get_json(&b.viewer, &format!("{api}/me")).await;
    assert_eq!(
        (me["tenant"].as_str(), me["role"].as_str()),
        (Some("globex"), Some("viewer"))
    );
    assert_eq!(me["via"], "api_key");

    // The operator sees A's instances (operations) and none of the data.
    let (_, platform) = create_key(
        &node.store,
        &Tenant::default_tenant(),
        Role::Platform,
        "ops",
    )
    .await
    .unwrap();
    let ops = client_with(&platform);
    let tree = get_json(&ops, &format!("{api}/actors")).await.to_string();
    assert!(tree.contains(&format!("acme/{}", made.model)), "{tree}");
    let (status, _) = send(ops.get(format!("{api}/value-models/{}", made.model))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let frame = get_json(&ops, &format!("{api}/dashboard")).await;
    assert_eq!(frame["sagas"]["running_total"], 0, "{frame}");
    assert!(
        frame["simulations"].as_array().unwrap().is_empty(),
        "{frame}"
    );
    node.stop().await.unwrap();
}

/// Runs `$body` with `$pool` a pool of `$url` on its backend.
macro_rules! on_pool {
    ($backend:expr, $url:expr, |$pool:ident| $body:expr) => {
        match $backend {
            Backend::Sqlite => {
                use std::str::FromStr;
                let options = sqlx::sqlite::SqliteConnectOptions::from_str($url)
                    .unwrap()
                    .create_if_missing(true);
                let $pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
                let done = $body;
                $pool.close().await;
                done
            }
            Backend::Postgres => {
                let $pool = sqlx::PgPool::connect($url).await.unwrap();
                let done = $body;
                $pool.close().await;
                done
            }
        }
    };
}

/// The first migration of tenants: the schema before it is the previous
/// release's.
const TENANTS_MIGRATION: i64 = 20261205000014;

/// A row of `value_models` as the schema before tenants held it.
type ModelRow = (
    String,
    i64,
    i64,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_the_schema_before_tenants_move_into_the_default_tenant_on_both_stores() {
    for backend in crate::support::BACKENDS {
        let dialect = match backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        };
        // A model as this build stores it: its row, to write into the old
        // schema as the previous release would have.
        let scratch = TestDb::new(backend).await;
        let Started { node, api, .. } = start_node(&scratch, |_| {}).await;
        let model = create_model(&reqwest::Client::new(), &api, &acme()).await;
        node.stop().await.unwrap();
        let row: ModelRow = on_pool!(backend, &scratch.url, |pool| {
            sqlx::query_as(
                "SELECT id, version, updated_at_ms, body, status, name, customer, industry, \
                 current_version, created_at_ms FROM value_models WHERE id = $1",
            )
            .bind(&model)
            .fetch_one(&pool)
            .await
            .unwrap()
        });

        // The previous release's schema, with its rows: the model and an
        // admin key (its SHA-256 stored, as that release did).
        let db = TestDb::new(backend).await;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(dialect);
        let mut before = sqlx::migrate::Migrator::new(path).await.unwrap();
        before.migrations = before
            .migrations
            .iter()
            .filter(|migration| migration.version < TENANTS_MIGRATION)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        let key = format!("vv_{}", "k".repeat(43));
        let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(key.as_bytes()));
        on_pool!(backend, &db.url, |pool| {
            before.run(&pool).await.unwrap();
            sqlx::query(
                "INSERT INTO value_models (id, version, updated_at_ms, body, status, name, \
                 customer, industry, current_version, created_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(&row.0)
            .bind(row.1)
            .bind(row.2)
            .bind(&row.3)
            .bind(&row.4)
            .bind(&row.5)
            .bind(&row.6)
            .bind(&row.7)
            .bind(row.8)
            .bind(row.9)
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO api_keys (id, name, role, hash, created_at_ms) \
                 VALUES ('k-old', 'before tenants', 'admin', $1, 1)",
            )
            .bind(&hash)
            .execute(&pool)
            .await
            .unwrap();
        });

        // This build migrates them into the default tenant and serves them.
        let Started { node, api, .. } = start_node(&db, keyed).await;
        let old = client_with(&key);
        let me = get_json(&old, &format!("{api}/me")).await;
        assert_eq!(
            (me["tenant"].as_str(), me["role"].as_str()),
            (Some("default"), Some("admin")),
            "{backend:?}"
        );
        let read = get_json(&old, &format!("{api}/value-models/{model}")).await;
        assert_eq!(read["id"], model.as_str(), "{backend:?}: {read}");
        let listed = get_json(&old, &format!("{api}/value-models")).await;
        assert_eq!(listed["total"], 1, "{backend:?}: {listed}");
        // Another tenant sees none of it.
        let other = members(&node.store, "acme").await;
        let (status, _) = send(other.admin.get(format!("{api}/value-models/{model}"))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{backend:?}");
        node.stop().await.unwrap();
        let tenants: (String, String) = on_pool!(backend, &db.url, |pool| {
            sqlx::query_as(
                "SELECT (SELECT tenant FROM value_models), (SELECT tenant FROM api_keys WHERE id = 'k-old')",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
        });
        assert_eq!(
            tenants,
            ("default".to_owned(), "default".to_owned()),
            "{backend:?}"
        );
    }
}

/// The wall holds across nodes: tenant A's models live on both nodes of a
/// cluster; A reads each from the other node (its tenant's key routes to
/// the owner), B reads none from either (the answer of an id nobody has).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_data_on_another_node_stays_walled_off() {
    use crate::cluster::{Ports, free_port, spawn, wait_for_members};
    let binary = tokio::task::spawn_blocking(crate::crash::release_binary)
        .await
        .unwrap();
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store().await;
    store.migrate().await.unwrap();
    let a = members(&store, "acme").await;
    let b = members(&store, "globex").await;
    let (_, platform) = create_key(&store, &Tenant::default_tenant(), Role::Platform, "ops")
        .await
        .unwrap();
    store.close().await;
    let ops = client_with(&platform);
    let ports: Vec<Ports> = (0..2)
        .map(|_| Ports {
            transport: free_port(),
            gossip: free_port(),
        })
        .collect();
    let seeds: Vec<u16> = ports.iter().map(|p| p.gossip).collect();
    let secret = "tenants-cluster-secret-0123456789";
    let mut nodes: Vec<crate::cluster::Node> = ["n1", "n2"]
        .iter()
        .zip(&ports)
        .map(|(name, ports)| spawn(&binary, &db.url, name, ports, &seeds, secret, false).unwrap())
        .collect();
    for node in &nodes {
        wait_for_members(&ops, node, &["n1", "n2"]).await;
    }
    let (n1, n2) = (&nodes[0].base, &nodes[1].base);
    let mut models = Vec::new();
    for _ in 0..8 {
        models.push(create_model(&a.editor, n1, &acme()).await);
    }
    // Some of A's models live on n2 (the operator's tree says where).
    let tree = get_json(&ops, &format!("{n2}/actors")).await.to_string();
    assert!(
        models
            .iter()
            .any(|model| tree.contains(&format!("acme/{model}"))),
        "n2 hosts none of A's 8 models: {tree}"
    );
    // Who made them crossed to n2 with the messages: the entries of the
    // models n2 holds name A's editor, not `system`.
    let editor = get_json(&a.editor, &format!("{n1}/me")).await;
    let editor = format!("key:{}", editor["key_id"].as_str().unwrap());
    for model in models
        .iter()
        .filter(|model| tree.contains(&format!("acme/{model}")))
    {
        let log = get_json(&a.admin, &format!("{n1}/audit?target=architect/{model}")).await;
        assert_eq!(log["items"][0]["actor"], editor.as_str(), "{log}");
    }
    // A's frame holds its instances on both nodes (n2's panel asked for
    // A's tenant by name, signed).
    let frame = get_json(&a.admin, &format!("{n1}/dashboard"))
        .await
        .to_string();
    for model in &models {
        assert!(
            frame.contains(model.as_str()),
            "A's frame lacks {model}: {frame}"
        );
    }
    // B's lists and frames (with both nodes' panels) first: B's requests
    // below name A's ids and wake instances of B's own under them.
    for base in [n1, n2] {
        let listed = get_json(&b.viewer, &format!("{base}/value-models")).await;
        assert_eq!(listed["total"], 0, "{base}: {listed}");
        let frame = get_json(&b.admin, &format!("{base}/dashboard"))
            .await
            .to_string();
        for model in &models {
            assert!(
                !frame.contains(model.as_str()),
                "B's frame on {base} names A's model"
            );
        }
    }
    for model in &models {
        for base in [n1, n2] {
            let mine = get_json(&a.viewer, &format!("{base}/value-models/{model}")).await;
            assert_eq!(
                mine["id"],
                model.as_str(),
                "A reads its model through {base}"
            );
            let theirs = answer(b.admin.get(format!("{base}/value-models/{model}"))).await;
            let made_up = uuid::Uuid::now_v7();
            let nobodys = answer(b.admin.get(format!("{base}/value-models/{made_up}"))).await;
            assert_eq!(
                (theirs.0, theirs.1),
                (nobodys.0, nobodys.1),
                "{base}: {}",
                theirs.2
            );
            assert_eq!(theirs.0, StatusCode::NOT_FOUND);
        }
    }
    for node in &mut nodes {
        crate::crash::kill_9(&mut node.child);
    }
}

/// Quotas per tenant: stored models, simulation paths per hour and live
/// instances are refused past the tenant's own quota with a 429 naming it;
/// another tenant is not held by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_past_its_quota_gets_429_naming_it() {
    let db = TestDb::new(Backend::Sqlite).await;
    // Tenants and quotas before the node starts: its first read has them.
    let store = db.store().await;
    store.migrate().await.unwrap();
    let small = members(&store, "small").await;
    let crowded = members(&store, "crowded").await;
    let other = members(&store, "other").await;
    let own = |instances: Option<i64>, paths: Option<i64>, models: Option<i64>| {
        valueverse::store::TenantQuotaRow {
            max_active_instances: instances,
            max_simulation_paths_hour: paths,
            max_models: models,
        }
    };
    assert!(
        store
            .set_tenant_quotas("small", own(None, Some(10_000), Some(2)))
            .await
            .unwrap()
    );
    assert!(
        store
            .set_tenant_quotas("crowded", own(Some(2), None, None))
            .await
            .unwrap()
    );
    store.close().await;
    let Started {
        node, base, api, ..
    } = start_node(&db, keyed).await;

    // Models: two, then 429 naming `max_models`; another tenant is free.
    let model = create_model(&small.editor, &api, &acme()).await;
    create_model(&small.editor, &api, &acme()).await;
    let (status, refused) = send(
        small
            .editor
            .post(format!("{api}/value-models"))
            .json(&acme()),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
    assert_eq!(refused["error"]["code"], "quota_exceeded");
    assert_eq!(refused["error"]["field"], "max_models", "{refused}");
    create_model(&other.editor, &api, &acme()).await;
    // Archiving one frees its place.
    let (status, _) = send(
        small
            .editor
            .post(format!("{api}/value-models/{model}/archive"))
            .json(&json!({ "reason": "make room" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    create_model(&small.editor, &api, &acme()).await;

    // Paths per hour: 6,000 of 10,000, then 6,000 more is refused.
    submit_ok(
        &small.editor,
        &base,
        json!({ "model_id": model, "paths": 6000, "device": "cpu" }),
    )
    .await;
    let (status, refused) = send(
        small
            .editor
            .post(format!("{api}/simulations"))
            .json(&json!({ "model": acme(), "paths": 6000, "device": "cpu" })),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
    assert_eq!(
        refused["error"]["field"], "max_simulation_paths_per_hour",
        "{refused}"
    );
    let (status, refused) = send(
        small
            .editor
            .post(format!("{api}/sagas/value-creation"))
            .json(&value_creation(None, 6000)),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "a saga's paths count: {refused}"
    );

    // Live instances on the node: two models' architects, then none more.
    create_model(&crowded.editor, &api, &acme()).await;
    create_model(&crowded.editor, &api, &acme()).await;
    let (status, refused) = send(
        crowded
            .editor
            .post(format!("{api}/value-models"))
            .json(&acme()),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
    assert_eq!(
        refused["error"]["field"], "max_active_instances",
        "{refused}"
    );
    create_model(&other.editor, &api, &acme()).await;
    node.stop().await.unwrap();
}
