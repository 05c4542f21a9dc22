//! The audit log: who did what, written with the change it records (an
//! agent's write, a saga's steps, an operator's action, a key made or
//! revoked, a refused write), read by the tenant's admins only, never
//! rewritten, and whole after a SIGKILL.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::crash::{kill_9, release_binary, spawn};
use crate::sagas::{value_creation, wait_until};
use crate::support::{Backend, Started, TestDb, get_json, send, start_node};
use crate::tenants::{keyed, members};
use crate::value_models::acme;

/// The entries of `api`'s tenant (as its admin sees them) matching `query`.
async fn entries(admin: &reqwest::Client, api: &str, query: &str) -> Vec<Value> {
    let page = get_json(admin, &format!("{api}/audit?limit=100&{query}")).await;
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_names_who_did_what_and_how_it_ended() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started { node, api, .. } = start_node(&db, keyed).await;
    let acme_members = members(&node.store, "acme").await;
    let other = members(&node.store, "globex").await;
    let me = get_json(&acme_members.editor, &format!("{api}/me")).await;
    let editor = format!("key:{}", me["key_id"].as_str().unwrap());

    // An agent's change: who, what, which target, the request's id.
    let (status, model) = send(
        acme_members
            .editor
            .post(format!("{api}/value-models"))
            .header("x-correlation-id", "audit-req-1")
            .json(&acme()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{model}");
    let model = model["id"].as_str().unwrap().to_owned();
    let made = entries(
        &acme_members.admin,
        &api,
        &format!("target=architect/{model}"),
    )
    .await;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0]["actor"], editor.as_str());
    assert_eq!(made[0]["action"], "create");
    assert_eq!(made[0]["outcome"], "ok");
    assert_eq!(made[0]["correlation_id"], "audit-req-1");
    // A read records nothing.
    get_json(&acme_members.viewer, &format!("{api}/value-models/{model}")).await;
    assert_eq!(
        entries(
            &acme_members.admin,
            &api,
            &format!("target=architect/{model}")
        )
        .await
        .len(),
        1
    );

    // A refused write: recorded with its status, nothing changed.
    let mut bad = acme();
    bad["name"] = json!("");
    let (status, _) = send(
        acme_members
            .editor
            .post(format!("{api}/value-models"))
            .json(&bad),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let refused =
        crate::support::eventually("the refusal is logged", Duration::from_secs(5), || {
            let admin = acme_members.admin.clone();
            let api = api.clone();
            async move {
                let found = entries(&admin, &api, "").await;
                found
                    .iter()
                    .find(|entry| entry["outcome"] == "refused 422")
                    .cloned()
                    .ok_or_else(|| format!("{found:?}"))
            }
        })
        .await;
    assert_eq!(refused["action"], "POST /api/v1/value-models");

    // A saga's steps act for its starter, through the saga.
    let (status, saga) = send(
        acme_members
            .editor
            .post(format!("{api}/sagas/value-creation"))
            .json(&value_creation(None, 10_000)),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{saga}");
    let saga = saga["id"].as_str().unwrap().to_owned();
    wait_until(&acme_members.viewer, &api, &saga, "completed").await;
    let designed = entries(
        &acme_members.admin,
        &api,
        &format!("target=architect/{saga}-model"),
    )
    .await;
    assert_eq!(designed.len(), 1, "{designed:?}");
    assert_eq!(
        designed[0]["actor"],
        format!("{editor} via saga {saga}").as_str()
    );
    let planned = entries(
        &acme_members.admin,
        &api,
        &format!("target=executor/{saga}-plan"),
    )
    .await;
    assert!(!planned.is_empty(), "the plan step: {planned:?}");

    // An operator's action on the tenant's instance (its admin's here).
    let (status, _) = send(
        acme_members
            .admin
            .post(format!("{api}/actors/architect/{model}/crash"))
            .json(&json!({ "reason": "drill" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let admin_me = get_json(&acme_members.admin, &format!("{api}/me")).await;
    let admin = format!("key:{}", admin_me["key_id"].as_str().unwrap());
    let crashes = entries(&acme_members.admin, &api, &format!("actor={admin}")).await;
    assert!(
        crashes.iter().any(|entry| entry["action"] == "crash"
            && entry["target"] == format!("architect/{model}").as_str()),
        "{crashes:?}"
    );

    // An operator's reset: crashed until its supervisor gives up, then
    // reset (each crash and the reset in the log).
    let failed = crate::support::eventually("the instance fails", Duration::from_secs(20), || {
        let admin = acme_members.admin.clone();
        let api = api.clone();
        let model = model.clone();
        async move {
            let _ = admin
                .post(format!("{api}/actors/architect/{model}/crash"))
                .json(&json!({ "reason": "drill" }))
                .send()
                .await;
            let tree = get_json(&admin, &format!("{api}/actors")).await.to_string();
            match tree.contains("\"status\":\"failed\"") {
                true => Ok(()),
                false => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(tree)
                }
            }
        }
    })
    .await;
    let () = failed;
    let (status, reset) = send(
        acme_members
            .admin
            .post(format!("{api}/actors/architect/{model}/reset"))
            .json(&json!({ "reason": "after the drill" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reset}");
    let resets = entries(
        &acme_members.admin,
        &api,
        &format!("target=architect/{model}"),
    )
    .await;
    assert!(
        resets.iter().any(|entry| entry["action"] == "reset"
            && entry["outcome"] == "ok"
            && entry["actor"] == admin.as_str()),
        "{resets:?}"
    );

    // A key made and revoked.
    let (status, made_key) = send(
        acme_members
            .admin
            .post(format!("{api}/api-keys"))
            .json(&json!({ "role": "viewer", "name": "temp" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made_key}");
    let key_id = made_key["id"].as_str().unwrap();
    let (status, _) = send(
        acme_members
            .admin
            .delete(format!("{api}/api-keys/{key_id}")),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let key_entries = entries(
        &acme_members.admin,
        &api,
        &format!("target=api-key/{key_id}"),
    )
    .await;
    let actions: Vec<&str> = key_entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["revoke key", "create viewer key"], "newest first");

    // Filters by time; the admins of the tenant only; another tenant's log
    // holds none of it.
    let future = entries(&acme_members.admin, &api, "since=2100-01-01T00:00:00Z").await;
    assert!(future.is_empty());
    for client in [&acme_members.viewer, &acme_members.editor] {
        let (status, _) = send(client.get(format!("{api}/audit"))).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let theirs = entries(&other.admin, &api, "").await;
    assert!(!Value::from(theirs).to_string().contains(&model));
    let (status, bad) = send(acme_members.admin.get(format!("{api}/audit?limit=0"))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    assert_eq!(bad["error"]["field"], "limit");

    // The tenant's dashboard shows its latest entries.
    let frame = get_json(&acme_members.admin, &format!("{api}/dashboard")).await;
    assert!(!frame["audit"].as_array().unwrap().is_empty(), "{frame}");
    node.stop().await.unwrap();
}

/// No code path rewrites the log: no statement in the source updates or
/// deletes its rows.
#[test]
fn the_audit_log_is_append_only() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![root];
    let mut read = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let text = std::fs::read_to_string(&path).unwrap().to_lowercase();
                let squeezed: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
                for forbidden in [
                    "update audit_log",
                    "delete from audit_log",
                    "truncate audit_log",
                ] {
                    assert!(
                        !squeezed.contains(forbidden),
                        "{} has `{forbidden}`",
                        path.display()
                    );
                }
                read += 1;
            }
        }
    }
    assert!(read > 50, "read {read} files");
}

/// A SIGKILL at any moment leaves the log and the changes agreeing: every
/// stored model has its entry and every entry its model (they are written
/// in one transaction), answered or not when the process died (400
/// writes, killed 40 ms in while most are in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_and_changes_survive_a_kill_9_together() {
    let binary = tokio::task::spawn_blocking(release_binary).await.unwrap();
    let db = TestDb::new(Backend::Postgres).await;
    let (mut child, base) = spawn(&binary, &db.url);
    let client = reqwest::Client::new();
    let mut sent = Vec::new();
    for _ in 0..400 {
        let client = client.clone();
        let url = format!("{base}/value-models");
        sent.push(tokio::spawn(async move {
            client
                .post(url)
                .json(&acme())
                .send()
                .await
                .ok()
                .map(|r| r.status())
        }));
    }
    tokio::time::sleep(Duration::from_millis(40)).await;
    kill_9(&mut child);
    let mut answered = 0;
    for request in sent {
        if request.await.unwrap() == Some(StatusCode::CREATED) {
            answered += 1;
        }
    }
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let (models, logged, orphans): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM value_models), \
         (SELECT COUNT(*) FROM audit_log WHERE action = 'create' AND target LIKE 'architect/%'), \
         (SELECT COUNT(*) FROM audit_log a WHERE a.action = 'create' \
          AND a.target LIKE 'architect/%' \
          AND NOT EXISTS (SELECT 1 FROM value_models m WHERE 'architect/' || m.id = a.target))",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    eprintln!("KILL-9 AUDIT: {answered} answered, {models} models stored, {logged} logged");
    assert!(models >= answered, "{models} stored, {answered} answered");
    assert_eq!(models, logged, "every stored model has its entry");
    assert_eq!(orphans, 0, "no entry without its model");
}
