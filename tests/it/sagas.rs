//! Sagas through `/api/v1/sagas`: value creation to completion, a failure
//! injected at a step compensated in reverse, a cancel, renewal, bad input.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{BACKENDS, Backend, Started, TestDb, poll_json, send, start_node};
use crate::value_models::acme;

pub(crate) fn value_creation(fail_step: Option<&str>, paths: u64) -> Value {
    json!({
        "model": acme(),
        "confidence": 0.8,
        "terms": { "fixed_fee": 1000, "outcome_share": 0.1, "cap": null },
        "milestones": [{ "name": "go live", "due_date": "2027-06-30", "expected_value": 1000 }],
        "start_date": "2027-01-01",
        "paths": paths,
        "fail_step": fail_step,
    })
}

pub(crate) async fn wait_until(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    status: &str,
) -> Value {
    let url = format!("{base}/sagas/{id}");
    poll_json(client, &url, Duration::from_secs(30), |saga| {
        saga["status"] == status
    })
    .await
}

fn step_statuses(saga: &Value) -> Vec<String> {
    saga["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| step["status"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_creation_completes_on_both_stores() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let Started {
            node, api: base, ..
        } = start_node(&db, |_| {}).await;
        let client = reqwest::Client::new();
        let (status, saga) = send(
            client
                .post(format!("{base}/sagas/value-creation"))
                .json(&value_creation(None, 10_000)),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{saga}");
        let id = saga["id"].as_str().unwrap().to_owned();
        let saga = wait_until(&client, &base, &id, "completed").await;
        assert_eq!(step_statuses(&saga), ["succeeded"; 5], "{backend:?}");
        assert!(
            saga["steps"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["attempts"] == 1)
        );
        let (status, commitment) =
            send(client.get(format!("{base}/commitments/{id}-commitment"))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(commitment["status"], "active");
        let (status, plan) = send(client.get(format!("{base}/plans/{id}-plan"))).await;
        assert_eq!(status, StatusCode::OK, "{plan}");
        let (status, _) = send(client.get(format!(
            "{base}/amplifications/{id}-model/insights?as_of=2027-03-01"
        )))
        .await;
        assert_eq!(status, StatusCode::OK, "the baseline is registered");
        let (_, listed) = send(client.get(format!("{base}/sagas?status=completed"))).await;
        assert_eq!(listed["total"], 1);
        // Lists show summaries: no saga input, no step outputs, no plan
        // arrays (a page of big sagas was 43 MB); the whole thing is on
        // its own route.
        let item = &listed["items"][0];
        assert!(item.get("input").is_none(), "{item}");
        assert!(item["steps"][0].get("output").is_none(), "{item}");
        assert_eq!(listed["next_offset"], Value::Null);
        assert!(
            saga.get("input").is_some(),
            "the saga's own route has it all"
        );
        let (_, plans) = send(client.get(format!("{base}/plans"))).await;
        assert!(plans["items"][0]["milestones"].is_u64(), "{plans}");
        assert!(plan["milestones"].is_array());
        drop(client);
        node.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_compensates_the_steps_before_it_in_reverse() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started {
        node, api: base, ..
    } = start_node(&db, |_| {}).await;
    let mut events = node.system.subscribe_domain_events();
    let client = reqwest::Client::new();
    let (_, saga) = send(
        client
            .post(format!("{base}/sagas/value-creation"))
            .json(&value_creation(Some("amplify"), 10_000)),
    )
    .await;
    let id = saga["id"].as_str().unwrap().to_owned();
    let saga = wait_until(&client, &base, &id, "compensated").await;
    assert_eq!(
        step_statuses(&saga),
        [
            "compensated",
            "succeeded",
            "compensated",
            "compensated",
            "failed"
        ]
    );
    assert!(saga["error"].as_str().unwrap().contains("injected"));
    let (_, commitment) = send(client.get(format!("{base}/commitments/{id}-commitment"))).await;
    assert_eq!(commitment["status"], "voided");
    let (_, plan) = send(client.get(format!("{base}/plans/{id}-plan"))).await;
    assert_eq!(plan["status"], "cancelled");
    let (_, model) = send(client.get(format!("{base}/value-models/{id}-model"))).await;
    assert_eq!(model["status"], "archived");
    // The compensations ran in reverse: plan, commitment, model.
    let mut order = Vec::new();
    while let Ok(event) = events.try_recv() {
        if ["plan.cancelled", "commitment.voided", "model.archived"]
            .contains(&event.event_type.as_str())
        {
            order.push(event.event_type.clone());
        }
    }
    assert_eq!(
        order,
        ["plan.cancelled", "commitment.voided", "model.archived"]
    );
    drop(client);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_compensates_what_was_done() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started {
        node, api: base, ..
    } = start_node(&db, |_| {}).await;
    let client = reqwest::Client::new();
    // A long simulation step, cancelled while it runs.
    let (_, saga) = send(
        client
            .post(format!("{base}/sagas/value-creation"))
            .json(&value_creation(None, 10_000_000)),
    )
    .await;
    let id = saga["id"].as_str().unwrap().to_owned();
    let job_url = format!("{base}/simulations/{id}-simulation");
    poll_json(&client, &job_url, Duration::from_secs(20), |job| {
        job["status"] == "running"
    })
    .await;
    let (status, cancelled) = send(client.post(format!("{base}/sagas/{id}/cancel"))).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    // Cancelling the saga cancels the job it started (before, it ran on).
    poll_json(&client, &job_url, Duration::from_secs(5), |job| {
        job["status"] == "cancelled"
    })
    .await;
    let saga = wait_until(&client, &base, &id, "compensated").await;
    assert_eq!(saga["cancel_requested"], true);
    assert_eq!(saga["steps"][0]["status"], "compensated");
    let (_, model) = send(client.get(format!("{base}/value-models/{id}-model"))).await;
    assert_eq!(model["status"], "archived");
    let (status, _) = send(client.post(format!("{base}/sagas/{id}/cancel"))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    drop(client);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_resimulates_amends_and_replans() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started {
        node, api: base, ..
    } = start_node(&db, |_| {}).await;
    let client = reqwest::Client::new();
    // A target below the P20 (about 791,000), so that a run of other
    // seeds supports it again.
    let mut body = value_creation(None, 10_000);
    body["target"] = json!(700_000);
    let (_, first) = send(
        client
            .post(format!("{base}/sagas/value-creation"))
            .json(&body),
    )
    .await;
    let first = first["id"].as_str().unwrap().to_owned();
    wait_until(&client, &base, &first, "completed").await;
    let (status, renewal) = send(
        client
            .post(format!("{base}/sagas/renewal"))
            .json(&json!({ "commitment_id": format!("{first}-commitment"), "paths": 10_000 })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{renewal}");
    let id = renewal["id"].as_str().unwrap().to_owned();
    let renewal = wait_until(&client, &base, &id, "completed").await;
    assert_eq!(step_statuses(&renewal), ["succeeded"; 4]);
    let (_, amended) = send(client.get(format!("{base}/commitments/{id}-commitment"))).await;
    assert_eq!(amended["status"], "active");
    assert_eq!(amended["model_id"], format!("{first}-model"));
    assert_eq!(amended["renews"], format!("{first}-commitment"));
    // The renewed commitment is superseded, its open plan moved over.
    let (_, old) = send(client.get(format!("{base}/commitments/{first}-commitment"))).await;
    assert_eq!(old["status"], "superseded", "{old}");
    assert_eq!(old["superseded_by"], format!("{id}-commitment"));
    let (_, moved) = send(client.get(format!("{base}/plans/{first}-plan"))).await;
    assert_eq!(moved["status"], "active");
    assert_eq!(moved["commitment_id"], format!("{id}-commitment"));
    let (status, _) = send(client.get(format!("{base}/plans/{id}-plan"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no second plan");
    let (_, insights) = send(client.get(format!(
        "{base}/amplifications/{first}-model/insights?as_of=2027-06-01"
    )))
    .await;
    assert_eq!(
        insights["plans"],
        json!([format!("{first}-plan")]),
        "{insights}"
    );

    // A renewal failing at its last step restores what it changed.
    let (_, undone) = send(client.post(format!("{base}/sagas/renewal")).json(&json!({
        "commitment_id": format!("{id}-commitment"), "paths": 10_000, "fail_step": "supersede"
    })))
    .await;
    let undone = undone["id"].as_str().unwrap().to_owned();
    wait_until(&client, &base, &undone, "compensated").await;
    let (_, amended) = send(client.get(format!("{base}/commitments/{id}-commitment"))).await;
    assert_eq!(amended["status"], "active", "{amended}");
    assert_eq!(amended["superseded_by"], serde_json::Value::Null);
    let (_, voided) = send(client.get(format!("{base}/commitments/{undone}-commitment"))).await;
    assert_eq!(voided["status"], "voided");
    let (_, back) = send(client.get(format!("{base}/plans/{first}-plan"))).await;
    assert_eq!(back["commitment_id"], format!("{id}-commitment"), "{back}");
    assert_eq!(back["status"], "active");
    drop(client);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_saga_requests_name_the_field() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started {
        node, api: base, ..
    } = start_node(&db, |_| {}).await;
    let client = reqwest::Client::new();
    let mut low = value_creation(None, 10_000);
    low["confidence"] = json!(0.2);
    let mut model = value_creation(None, 10_000);
    model["model"]["horizon_months"] = json!(0);
    for (body, field) in [
        (low, "confidence"),
        (model, "model.horizon_months"),
        (value_creation(Some("teleport"), 5_000), "fail_step"),
    ] {
        let (status, error) = send(
            client
                .post(format!("{base}/sagas/value-creation"))
                .json(&body),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
        assert_eq!(error["error"]["field"], field);
    }
    let (status, _) = send(
        client
            .post(format!("{base}/sagas/renewal"))
            .json(&json!({ "commitment_id": "nope" })),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, listed) = send(client.get(format!("{base}/sagas"))).await;
    assert_eq!(listed["total"], 0);
    drop(client);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_streams_every_transition_and_metrics_count_sagas() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let db = TestDb::new(Backend::Sqlite).await;
    let Started {
        node, api: base, ..
    } = start_node(&db, |_| {}).await;
    let client = reqwest::Client::new();
    let (_, saga) = send(
        client
            .post(format!("{base}/sagas/value-creation"))
            .json(&value_creation(Some("plan"), 200_000)),
    )
    .await;
    let id = saga["id"].as_str().unwrap();
    let ws = format!("ws://{}/ws/sagas/{id}", node.http_addr());
    let (mut socket, _) = tokio_tungstenite::connect_async(&ws).await.unwrap();
    let mut messages = Vec::new();
    while let Some(message) = tokio::time::timeout(Duration::from_secs(30), socket.next())
        .await
        .expect("a message within 30 s")
    {
        match message.unwrap() {
            Message::Text(text) => messages.push(serde_json::from_str::<Value>(&text).unwrap()),
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert_eq!(messages[0]["type"], "state");
    let last = messages.last().unwrap();
    assert_eq!(last["type"], "transition");
    assert_eq!(last["transition"]["status"], "compensated");
    let statuses: Vec<&str> = messages
        .iter()
        .filter_map(|m| m["transition"]["status"].as_str())
        .collect();
    assert!(statuses.contains(&"compensating"), "{statuses:?}");
    // The runner counts the end once the coordinator's reply reaches it,
    // a moment after the socket saw the last transition.
    let finished =
        "valueverse_sagas_finished_total{definition=\"value-creation\",status=\"compensated\"} 1";
    let deadline = Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let metrics = client
            .get(format!("http://{}/metrics", node.http_addr()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains(finished) || Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(metrics.contains(finished), "{metrics}");
    assert!(metrics.contains("valueverse_sagas_started_total{definition=\"value-creation\"} 1"));
    assert!(metrics.contains("valueverse_saga_step_seconds_bucket"));
    drop(client);
    node.stop().await.unwrap();
}

/// An instance of the architect in a node's tree.
async fn architect_instance(client: &reqwest::Client, base: &str, key: &str) -> Option<Value> {
    let (_, tree) = send(client.get(format!("{base}/actors"))).await;
    tree["supervisors"]
        .as_array()?
        .iter()
        .find(|kind| kind["kind"] == "architect")?["instances"]
        .as_array()?
        .iter()
        .find(|instance| instance["key"] == key)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensation_that_keeps_failing_needs_attention_until_reset_and_retried() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started {
        node, api: base, ..
    } = start_node(&db, |_| {}).await;
    let client = reqwest::Client::new();
    // The one simulation worker is busy: the saga waits at its simulate step.
    let (status, blocker) = send(
        client
            .post(format!("{base}/simulations"))
            .json(&json!({ "model": acme(), "paths": 1_000_000_000, "device": "cpu" })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{blocker}");
    let blocker = blocker["id"].as_str().unwrap().to_owned();
    let (status, saga) = send(
        client
            .post(format!("{base}/sagas/value-creation"))
            .json(&value_creation(Some("commit"), 2000)),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{saga}");
    let id = saga["id"].as_str().unwrap().to_owned();
    let url = format!("{base}/sagas/{id}");
    let saga = poll_json(&client, &url, Duration::from_secs(20), |saga| {
        saga["steps"][0]["output"]["model_id"].is_string()
    })
    .await;
    let model = saga["steps"][0]["output"]["model_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The model's architect instance fails past its restart budget (5 in a
    // minute): failed until an operator resets it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let instance = architect_instance(&client, &base, &model).await;
        let status = instance.as_ref().map(|i| i["status"].clone());
        if status == Some(json!("failed")) {
            break;
        }
        if status == Some(json!("active")) {
            let crashed = client
                .post(format!("{base}/actors/architect/{model}/crash"))
                .json(&json!({ "reason": "drill" }))
                .send()
                .await
                .unwrap();
            assert_eq!(crashed.status(), StatusCode::OK);
        } else if status.is_none() {
            // Passivated or not yet active: a read brings it back.
            let _ = client
                .get(format!("{base}/value-models/{model}"))
                .send()
                .await;
        }
        assert!(Instant::now() < deadline, "never escalated: {instance:?}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }

    // The saga goes on: commit fails (injected), archiving the model keeps
    // failing (its instance is failed), so the saga needs attention.
    let cancelled = client
        .put(format!("{base}/simulations/{blocker}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    let stuck = wait_until(&client, &base, &id, "needs_attention").await;
    assert_eq!(
        stuck["steps"][0]["status"], "compensation_failed",
        "{stuck}"
    );
    assert!(
        stuck["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{stuck}"
    );

    // The operator resets the instance and retries: the compensation runs.
    let (status, reset) = send(
        client
            .post(format!("{base}/actors/architect/{model}/reset"))
            .json(&json!({ "reason": "saga needs attention" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reset}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, saga) = send(client.get(format!("{base}/sagas/{id}"))).await;
        if saga["status"] == "compensated" {
            break;
        }
        if saga["status"] == "needs_attention" {
            let (status, _) = send(client.post(format!("{base}/sagas/{id}/retry"))).await;
            assert_eq!(status, StatusCode::OK);
        }
        assert!(Instant::now() < deadline, "never compensated: {saga}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, archived) = send(client.get(format!("{base}/value-models/{model}"))).await;
    assert_eq!(archived["status"], "archived", "{archived}");
    node.stop().await.unwrap();
}

/// Sagas obey the rules the routes enforce (the attack: a saga used to
/// complete with terms and milestones `POST /api/v1/commitments` refuses),
/// and a renewal needs an active commitment of a live model and paths
/// within the value-creation bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_refuse_what_the_routes_refuse_naming_the_same_field() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started {
        node, api: base, ..
    } = start_node(&db, |_| {}).await;
    let client = reqwest::Client::new();
    let with = |pointer: &str, value: Value| {
        let mut body = value_creation(None, 10_000);
        *body.pointer_mut(pointer).unwrap() = value;
        body
    };
    let many: Vec<Value> = (0..101)
        .map(|i| json!({ "name": format!("m{i}"), "due_date": "2027-06-30", "expected_value": 1 }))
        .collect();
    let cases = [
        (
            with("/terms/fixed_fee", json!(-5_000_000)),
            "terms.fixed_fee",
        ),
        (
            with("/terms/outcome_share", json!(-3.5)),
            "terms.outcome_share",
        ),
        (
            with("/terms/outcome_share", json!(5)),
            "terms.outcome_share",
        ),
        (with("/terms/cap", json!(-1e308)), "terms.cap"),
        (with("/milestones/0/name", json!("")), "milestones[0].name"),
        (
            with("/milestones/0/due_date", json!("0001-01-01")),
            "milestones[0].due_date",
        ),
        (with("/milestones", json!(many)), "milestones"),
    ];
    for (body, field) in cases {
        // The route and the saga answer alike.
        let mut direct = json!({
            "model_id": "any",
            "confidence": body["confidence"],
            "target": 1000,
            "terms": body["terms"],
            "milestones": body["milestones"],
        });
        direct["model_id"] = json!("any");
        let (status, error) = send(client.post(format!("{base}/commitments")).json(&direct)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {error}");
        assert_eq!(error["error"]["field"], field, "{error}");
        let (status, error) = send(
            client
                .post(format!("{base}/sagas/value-creation"))
                .json(&body),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {error}");
        assert_eq!(error["error"]["field"], field, "{error}");
    }
    let mut with_target = value_creation(None, 10_000);
    with_target["target"] = json!(-1e300);
    let (status, error) = send(
        client
            .post(format!("{base}/sagas/value-creation"))
            .json(&with_target),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert_eq!(error["error"]["field"], "target");
    let (_, listed) = send(client.get(format!("{base}/sagas"))).await;
    assert_eq!(listed["total"], 0, "a refused saga was started");

    // Renewal: paths bounded, and only an active commitment.
    let (_, first) = send(
        client
            .post(format!("{base}/sagas/value-creation"))
            .json(&value_creation(None, 10_000)),
    )
    .await;
    let first = first["id"].as_str().unwrap().to_owned();
    wait_until(&client, &base, &first, "completed").await;
    let commitment = format!("{first}-commitment");
    let (status, error) = send(
        client
            .post(format!("{base}/sagas/renewal"))
            .json(&json!({ "commitment_id": commitment, "paths": 1_000_000_000u64 })),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert_eq!(error["error"]["field"], "paths");
    let (status, voided) = send(
        client
            .post(format!("{base}/commitments/{commitment}/void"))
            .json(&json!({ "reason": "lost the deal" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{voided}");
    let (status, error) = send(
        client
            .post(format!("{base}/sagas/renewal"))
            .json(&json!({ "commitment_id": commitment, "paths": 10_000 })),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["error"]["field"], "commitment_id");
    drop(client);
    node.stop().await.unwrap();
}
