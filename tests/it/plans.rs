//! The executor and amplifier through `/api/v1/plans` and
//! `/api/v1/amplifications`: plans from commitments, progress, deliveries,
//! the overdue tick and its event, insights.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::commitments::{commitment, simulate};
use crate::support::{Backend, Started, TestDb, eventually, send, start_node};
use crate::value_models::{acme, create_model};

fn configure(config: &mut valueverse::Config) {
    config.executor_tick = Duration::from_millis(50);
}

/// A model, simulated, and an active commitment with one milestone long
/// past due; answers (model id, commitment id).
pub(crate) async fn committed_model(client: &reqwest::Client, base: &str) -> (String, String) {
    let model_id = create_model(client, base, &acme()).await;
    let result = simulate(client, base, &model_id, 1).await;
    let target = result["npv_quantiles"][19].as_f64().unwrap() - 1000.0;
    let mut body = commitment(&model_id, target);
    body["milestones"][0]["due_date"] = json!("2020-01-31");
    let (status, made) = send(client.post(format!("{base}/commitments")).json(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    (model_id, made["id"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_tracks_progress_deliveries_overdue_milestones_and_insights() {
    let db = TestDb::new(Backend::Postgres).await;
    let Started {
        node, api: base, ..
    } = start_node(&db, configure).await;
    let mut events = node.system.subscribe_domain_events();
    let client = reqwest::Client::new();
    let (model_id, commitment_id) = committed_model(&client, &base).await;

    let (status, plan) = send(client.post(format!("{base}/plans")).json(&json!({
        "commitment_id": commitment_id,
        "start_date": "2026-01-01",
        "tasks": [
            { "name": "deploy bot", "owner": "ana", "due_date": "2027-06-01", "milestone": "full rollout" },
            { "name": "train agents", "owner": "bo", "due_date": "2027-07-01" }
        ]
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{plan}");
    let plan_id = plan["id"].as_str().unwrap().to_owned();
    assert_eq!(plan["milestones"].as_array().unwrap().len(), 2);
    assert_eq!(plan["tasks"][0]["id"], "t1");
    assert_eq!(plan["progress_percent"], 0.0);

    // The tick finds the milestone past due, marks it and announces it once.
    let overdue = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = events.recv().await.unwrap();
            if event.event_type == "milestone.overdue" && event.data["plan_id"] == plan_id.as_str()
            {
                return event;
            }
        }
    })
    .await
    .expect("a milestone.overdue event");
    assert_eq!(overdue.data["milestone"], "pilot live");
    assert_eq!(overdue.source, format!("executor/{plan_id}"));
    let (_, plan) = send(client.get(format!("{base}/plans/{plan_id}"))).await;
    assert_eq!(plan["milestones"][0]["status"], "overdue");
    assert_eq!(plan["milestones"][1]["status"], "pending");
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(event) = events.try_recv() {
        assert_ne!(
            event.event_type, "milestone.overdue",
            "announced once: {event:?}"
        );
    }

    // Progress: the only task of a milestone done completes it.
    let (status, plan) = send(
        client
            .post(format!("{base}/plans/{plan_id}/progress"))
            .json(&json!({ "task": "t1", "status": "done" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(plan["milestones"][1]["status"], "done");
    assert_eq!(plan["progress_percent"], 50.0);

    // Deliveries: the same id twice counts once; unknown drivers refused.
    let delivery = json!({ "id": "d-1", "driver": "ticket deflection", "value": 150000, "date": "2026-03-15" });
    for _ in 0..2 {
        let (status, body) = send(
            client
                .post(format!("{base}/plans/{plan_id}/deliveries"))
                .json(&delivery),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["realized_value"], 150000.0);
    }
    let (status, error) = send(
        client
            .post(format!("{base}/plans/{plan_id}/deliveries"))
            .json(&json!({ "driver": "unicorns", "value": 1, "date": "2026-03-15" })),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["error"]["field"], "driver");
    send(
        client
            .post(format!("{base}/plans/{plan_id}/deliveries"))
            .json(&json!({ "driver": "escalations avoided", "value": 100, "date": "2026-02-10" })),
    )
    .await;

    // Insights three months in: ticket deflection far ahead, escalations behind.
    let (status, insights) = send(client.get(format!(
        "{base}/amplifications/{model_id}/insights?as_of=2026-04-01&margin=0.1"
    )))
    .await;
    assert_eq!(status, StatusCode::OK, "{insights}");
    assert_eq!(insights["plans"], json!([plan_id]));
    assert_eq!(insights["plan_id"], serde_json::Value::Null);
    assert_eq!(insights["realized_to_date"], 150100.0);
    let opportunities: Vec<&str> = insights["opportunities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["driver"].as_str().unwrap())
        .collect();
    assert_eq!(opportunities, ["ticket deflection"]);
    assert!(
        insights["opportunities"][0]["added_value_at_horizon"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let risks: Vec<&str> = insights["risks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["driver"].as_str().unwrap())
        .collect();
    assert!(risks.contains(&"escalations avoided"), "{risks:?}");
    assert_eq!(insights["trend"].as_array().unwrap().len(), 2);

    // Cancelled plans take nothing more.
    let (status, _) = send(
        client
            .post(format!("{base}/plans/{plan_id}/cancel"))
            .json(&json!({ "reason": "scope changed" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(
        client
            .post(format!("{base}/plans/{plan_id}/deliveries"))
            .json(&delivery),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, listed) = send(client.get(format!("{base}/plans?commitment_id={commitment_id}"))).await;
    assert_eq!(listed["items"][0]["status"], "cancelled");

    // No plan, no baseline.
    let other = create_model(&client, &base, &acme()).await;
    let (status, error) = send(client.get(format!("{base}/amplifications/{other}/insights"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["error"]["code"], "no_baseline");
    drop(client);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plans_name_the_field() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started {
        node, api: base, ..
    } = start_node(&db, configure).await;
    let client = reqwest::Client::new();
    let (_, commitment_id) = committed_model(&client, &base).await;
    for (body, field) in [
        (
            json!({ "commitment_id": commitment_id, "tasks": [{ "name": "", "owner": "a", "due_date": "2027-01-01" }] }),
            "tasks[0].name",
        ),
        (
            json!({ "commitment_id": commitment_id, "tasks": [{ "name": "x", "owner": "a", "due_date": "2027-01-01", "milestone": "nope" }] }),
            "tasks[0].milestone",
        ),
    ] {
        let (status, error) = send(client.post(format!("{base}/plans")).json(&body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
        assert_eq!(error["error"]["field"], field);
    }
    let (status, error) = send(
        client
            .post(format!("{base}/plans"))
            .json(&json!({ "commitment_id": commitment_id, "start_date": "soon" })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["error"]["field"], "start_date");
    let (status, _) = send(
        client
            .post(format!("{base}/plans"))
            .json(&json!({ "commitment_id": "nope" })),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, listed) = send(client.get(format!("{base}/plans"))).await;
    assert_eq!(listed["total"], 0);
    drop(client);
    node.stop().await.unwrap();
}

/// The findings of issue 22, each as it was reproduced: three active plans
/// for one commitment, a voided commitment's plan taking deliveries, a
/// delivery of -1e308 dated in year 262142, a second plan's delivery
/// vanishing from insights (ids deduplicated per model), insights measured
/// against a cancelled plan, and idle plans woken by every tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_agree_with_their_commitment() {
    let db = TestDb::new(Backend::Postgres).await;
    let Started {
        node, api: base, ..
    } = start_node(&db, configure).await;
    let client = reqwest::Client::new();
    let (model_id, commitment_id) = committed_model(&client, &base).await;
    let plan = |client: reqwest::Client, base: String, commitment_id: String| async move {
        let (status, plan) = send(client.post(format!("{base}/plans")).json(&json!({
            "commitment_id": commitment_id, "start_date": "2026-01-01",
        })))
        .await;
        assert_eq!(status, StatusCode::CREATED, "{plan}");
        plan["id"].as_str().unwrap().to_owned()
    };
    let deliver = |plan: &str, body: serde_json::Value| {
        let request = client
            .post(format!("{base}/plans/{plan}/deliveries"))
            .json(&body);
        async move { send(request).await }
    };
    let first = plan(client.clone(), base.clone(), commitment_id.clone()).await;
    let jan =
        json!({ "id": "jan", "driver": "ticket deflection", "value": 100, "date": "2026-01-20" });
    assert_eq!(deliver(&first, jan).await.0, StatusCode::CREATED);

    // A new plan supersedes the commitment's plan: one active at a time.
    let second = plan(client.clone(), base.clone(), commitment_id.clone()).await;
    let (_, old) = send(client.get(format!("{base}/plans/{first}"))).await;
    assert_eq!(old["status"], "superseded");
    assert_eq!(old["superseded_by"], second.as_str());
    let (_, active) = send(client.get(format!(
        "{base}/plans?commitment_id={commitment_id}&status=active"
    )))
    .await;
    assert_eq!(active["total"], 1, "{active}");

    // The same delivery id in another plan is another delivery.
    let jan =
        json!({ "id": "jan", "driver": "ticket deflection", "value": 99999, "date": "2026-01-20" });
    let (status, body) = deliver(&second, jan).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let insights = |query: String| {
        let request = client.get(format!(
            "{base}/amplifications/{model_id}/insights?as_of=2026-03-01{query}"
        ));
        async move { send(request).await }
    };
    let (_, model) = insights(String::new()).await;
    assert_eq!(
        model["plans"],
        json!([second]),
        "the baseline follows the active plan"
    );
    assert_eq!(model["realized_to_date"], 99999.0);
    let (_, old) = insights(format!("&plan_id={first}")).await;
    assert_eq!(old["realized_to_date"], 100.0);

    // Deliveries are checked: a finite value within the bound, a date
    // within the plan's horizon (36 months from 2026-01-01).
    for (body, status, field) in [
        (
            json!({ "driver": "ticket deflection", "value": -1e308, "date": "2026-02-01" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "value",
        ),
        (
            json!({ "driver": "ticket deflection", "value": 1, "date": "+262142-12-31" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "date",
        ),
        (
            json!({ "driver": "ticket deflection", "value": 1, "date": "2029-01-01" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "date",
        ),
        (
            json!({ "driver": "ticket deflection", "value": 1, "date": "2025-12-31" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "date",
        ),
    ] {
        let (got, error) = deliver(&second, body).await;
        assert_eq!(got, status, "{error}");
        assert_eq!(error["error"]["field"], field, "{error}");
    }
    let (_, kept) = send(client.get(format!("{base}/plans/{second}"))).await;
    assert_eq!(kept["realized_value"], 99999.0);

    // The tick's index: a superseded plan is off it; the active one is due
    // the day after its first pending milestone (the first, of 2020, is
    // overdue already: the next is 2027-09-30).
    let due = |plan: String| {
        let url = db.url.clone();
        async move {
            let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
                .await
                .unwrap();
            sqlx::query_scalar::<_, Option<i64>>("SELECT next_due_ms FROM plans WHERE id = $1")
                .bind(plan)
                .fetch_one(&mut connection)
                .await
                .unwrap()
        }
    };
    assert_eq!(due(first.clone()).await, None);
    eventually(
        "the overdue milestone marked",
        Duration::from_secs(10),
        || async {
            let (_, plan) = send(client.get(format!("{base}/plans/{second}"))).await;
            if plan["milestones"][0]["status"] == "overdue" {
                Ok(())
            } else {
                Err(plan.to_string())
            }
        },
    )
    .await;
    let expected = chrono::NaiveDate::from_ymd_opt(2027, 10, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis();
    assert_eq!(due(second.clone()).await, Some(expected));

    // Voiding the commitment cancels its plan: no more deliveries, no
    // insights measured against it.
    let (status, _) = send(
        client
            .post(format!("{base}/commitments/{commitment_id}/void"))
            .json(&json!({ "reason": "customer left" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, cancelled) = send(client.get(format!("{base}/plans/{second}"))).await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let late = json!({ "driver": "ticket deflection", "value": 5, "date": "2026-02-01" });
    assert_eq!(deliver(&second, late).await.0, StatusCode::CONFLICT);
    let (status, error) = insights(String::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
    assert_eq!(error["error"]["code"], "no_baseline");
    assert_eq!(due(second).await, None);
    drop(client);
    node.stop().await.unwrap();
}
