//! API keys and roles on a node with authentication on: the role matrix,
//! keys made and revoked over the API and by the CLI, the body limit.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use valueverse::actors::Tenant;
use valueverse::auth::{Role, create_key};

use crate::support::{Backend, Started, TestDb, start_node};
use crate::value_models::acme;

/// Keys on; the rate limits lifted: these tests walk every route with
/// every key from one address (the limits have tests of their own).
fn configure(config: &mut valueverse::Config) {
    config.dev = false;
    config.http_body_limit = 64 * 1024;
    config.limits.requests_per_second = 100_000;
    config.limits.burst = 100_000;
    config.limits.unauthenticated_per_second = 100_000;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_checks_the_key_and_its_role() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started { node, base, .. } = start_node(&db, configure).await;
    let store = &node.store;
    let keys: Vec<(Role, String)> = {
        let mut keys = Vec::new();
        for role in [Role::Viewer, Role::Editor, Role::Admin] {
            keys.push((
                role,
                create_key(store, &Tenant::default_tenant(), role, "test")
                    .await
                    .unwrap()
                    .1,
            ));
        }
        keys
    };
    let key = |role: Role| keys.iter().find(|(r, _)| *r == role).unwrap().1.clone();
    let client = reqwest::Client::new();
    let call = |method: Method, path: &str, key: Option<String>| {
        let mut request = client.request(method, format!("{base}{path}"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.json(&json!({}))
    };
    // (method, path, weakest role that passes)
    let routes = [
        (Method::GET, "/api/v1/value-models", Role::Viewer),
        (Method::POST, "/api/v1/value-models", Role::Editor),
        (Method::GET, "/api/v1/simulations/queue", Role::Viewer),
        (Method::POST, "/api/v1/simulations", Role::Editor),
        (Method::GET, "/api/v1/commitments", Role::Viewer),
        (Method::POST, "/api/v1/webhooks", Role::Editor),
        (Method::GET, "/api/v1/actors", Role::Viewer),
        (
            Method::POST,
            "/api/v1/actors/architect/x/reset",
            Role::Admin,
        ),
        (Method::GET, "/api/v1/api-keys", Role::Admin),
    ];
    for (method, path, needed) in routes.clone() {
        let response = call(method.clone(), path, None).send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
        let wrong = call(method.clone(), path, Some("vv_not-a-key".into()))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        for (role, _) in &keys {
            let status = call(method.clone(), path, Some(key(*role)))
                .send()
                .await
                .unwrap()
                .status();
            if *role < needed {
                assert_eq!(status, StatusCode::FORBIDDEN, "{role:?} on {method} {path}");
            } else {
                assert!(
                    status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
                    "{role:?} on {method} {path}: {status}"
                );
            }
        }
    }
    // The operator's key reaches the operations, and no tenant's data.
    let (_, platform) = create_key(store, &Tenant::default_tenant(), Role::Platform, "ops")
        .await
        .unwrap();
    for (method, path, _) in routes {
        let status = call(method.clone(), path, Some(platform.clone()))
            .send()
            .await
            .unwrap()
            .status();
        let operations = path.starts_with("/api/v1/actors");
        if operations {
            assert!(
                status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
                "platform on {method} {path}: {status}"
            );
        } else {
            assert_eq!(status, StatusCode::FORBIDDEN, "platform on {method} {path}");
        }
    }
    for path in ["/api/v1/cluster", "/api/v1/dashboard", "/api/v1/me"] {
        let status = call(Method::GET, path, Some(platform.clone()))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::OK, "platform on {path}");
    }
    // A tenant's admin makes no platform key.
    let refused = call(Method::POST, "/api/v1/api-keys", Some(key(Role::Admin)))
        .json(&json!({ "role": "platform", "name": "escalate" }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // Nor sees or revokes the operator's key, though it was made in its
    // tenant.
    let (platform_row, _) = create_key(store, &Tenant::default_tenant(), Role::Platform, "ops 2")
        .await
        .unwrap();
    let listed: Value = call(Method::GET, "/api/v1/api-keys", Some(key(Role::Admin)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!listed.to_string().contains(&platform_row.id), "{listed}");
    let revoke = call(
        Method::DELETE,
        &format!("/api/v1/api-keys/{}", platform_row.id),
        Some(key(Role::Admin)),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(revoke.status(), StatusCode::NOT_FOUND);
    // Probes and metrics stay open.
    for path in ["/health", "/ready", "/metrics"] {
        let status = client
            .get(format!("{base}{path}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    drop(client);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_made_and_revoked_over_the_api() {
    let db = TestDb::new(Backend::Postgres).await;
    let Started { node, base, .. } = start_node(&db, configure).await;
    let (_, admin) = create_key(
        &node.store,
        &Tenant::default_tenant(),
        Role::Admin,
        "bootstrap",
    )
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{base}/api/v1/api-keys"))
        .bearer_auth(&admin)
        .json(&json!({ "role": "editor", "name": "ci" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let made: Value = response.json().await.unwrap();
    let editor = made["key"].as_str().unwrap().to_owned();
    assert!(editor.starts_with("vv_"));
    let listed: Value = client
        .get(format!("{base}/api/v1/api-keys"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
    assert!(
        !listed.to_string().contains(&editor),
        "keys are never listed"
    );
    assert!(listed["items"][0].get("hash").is_none());

    let created = client
        .post(format!("{base}/api/v1/value-models"))
        .bearer_auth(&editor)
        .json(&acme())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let revoke = client
        .delete(format!(
            "{base}/api/v1/api-keys/{}",
            made["id"].as_str().unwrap()
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), StatusCode::NO_CONTENT);
    let refused = client
        .get(format!("{base}/api/v1/value-models"))
        .bearer_auth(&editor)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    // A bad role is a 400 naming the field.
    let bad: Value = client
        .post(format!("{base}/api/v1/api-keys"))
        .bearer_auth(&admin)
        .json(&json!({ "role": "root" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bad["error"]["field"], "role");
    // Bodies over the limit get 413 in the JSON shape.
    let big = client
        .post(format!("{base}/api/v1/value-models"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(vec![b' '; 100 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = big.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    drop(client);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_may_send_its_key_as_access_token() {
    use futures_util::StreamExt;
    let db = TestDb::new(Backend::Sqlite).await;
    let Started { node, base, .. } = start_node(&db, configure).await;
    let (_, key) = create_key(&node.store, &Tenant::default_tenant(), Role::Viewer, "ws")
        .await
        .unwrap();
    let (_, editor) = create_key(&node.store, &Tenant::default_tenant(), Role::Editor, "sim")
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let job: Value = client
        .post(format!("{base}/api/v1/simulations"))
        .bearer_auth(&editor)
        .json(&json!({ "model": acme(), "paths": 1000, "device": "cpu" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap();
    let ws = format!("{}/ws/simulations/{id}", base.replace("http://", "ws://"));
    assert!(
        tokio_tungstenite::connect_async(&ws).await.is_err(),
        "no key, no upgrade"
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("{ws}?access_token={key}"))
        .await
        .expect("the key in the query string is accepted");
    let first = socket.next().await.unwrap().unwrap();
    let event: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(event["id"], id);
    drop(socket);
    drop(client);
    node.stop().await.unwrap();
}

/// `%61` for `a`, on the first letter of the segment at `index`.
fn encode_segment(path: &str, index: usize) -> Option<String> {
    let mut segments: Vec<String> = path.split('/').map(str::to_owned).collect();
    let segment = segments.get_mut(index)?;
    let first = segment.chars().next().filter(char::is_ascii_alphabetic)?;
    *segment = format!("%{:02X}{}", first as u32, &segment[1..]);
    Some(segments.join("/"))
}

/// The attack first: an editor that percent-encodes a letter of the path
/// must not get what only an admin may do; then every route of the route
/// table, with every role, answers the same allow/forbid decision for the
/// path as written and for each of its segments percent-encoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_encoding_the_path_changes_no_role_decision() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started { node, base, .. } = start_node(&db, configure).await;
    let store = &node.store;
    let mut keys = Vec::new();
    for role in [Role::Viewer, Role::Editor, Role::Admin] {
        keys.push((
            role,
            create_key(store, &Tenant::default_tenant(), role, "test")
                .await
                .unwrap()
                .1,
        ));
    }
    let key = |role: Role| keys.iter().find(|(r, _)| *r == role).unwrap().1.clone();
    let client = reqwest::Client::new();
    let editor_makes_admin = client
        .post(format!("{base}/api/v1/%61pi-keys"))
        .bearer_auth(key(Role::Editor))
        .json(&json!({ "role": "admin", "name": "escalated" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        editor_makes_admin.status(),
        StatusCode::FORBIDDEN,
        "an editor made a key through /api/v1/%61pi-keys: {}",
        editor_makes_admin.text().await.unwrap()
    );
    let viewer_lists_keys = client
        .get(format!("{base}/api/v1/%61pi-keys"))
        .bearer_auth(key(Role::Viewer))
        .send()
        .await
        .unwrap();
    assert_eq!(viewer_lists_keys.status(), StatusCode::FORBIDDEN);

    let mut checked = 0;
    for (method, pattern) in valueverse::http::ROUTES {
        let path = pattern
            .replace("{kind}", "architect")
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    "x"
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let variants: Vec<String> = (1..path.split('/').count())
            .filter_map(|index| encode_segment(&path, index))
            .collect();
        for (role, secret) in &keys {
            let decide = |path: String| {
                let request = client
                    .request(method.clone(), format!("{base}{path}"))
                    .bearer_auth(secret)
                    .json(&json!({}));
                async move { request.send().await.unwrap().status() }
            };
            let written = decide(path.clone()).await;
            for variant in &variants {
                let encoded = decide(variant.clone()).await;
                assert_eq!(
                    written == StatusCode::FORBIDDEN,
                    encoded == StatusCode::FORBIDDEN,
                    "{role:?} {method} {path} answered {written}, {variant} answered {encoded}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "{checked} variants checked");
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_control_characters_are_refused() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started { node, base, .. } = start_node(&db, configure).await;
    let (_, admin) = create_key(&node.store, &Tenant::default_tenant(), Role::Admin, "admin")
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let key = client
        .post(format!("{base}/api/v1/api-keys"))
        .bearer_auth(&admin)
        .json(&json!({ "role": "viewer", "name": "ci\u{1b}[2J\nFORGED" }))
        .send()
        .await
        .unwrap();
    assert_eq!(key.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = key.json().await.unwrap();
    assert_eq!(body["error"]["field"], "name", "{body}");
    let mut model = acme();
    model["drivers"][0]["name"] = json!("ticket\u{7}deflection");
    let refused = client
        .post(format!("{base}/api/v1/value-models"))
        .bearer_auth(&admin)
        .json(&model)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["field"], "drivers[0].name", "{body}");
    node.stop().await.unwrap();
}
