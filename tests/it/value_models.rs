//! The architect agent through `/api/v1/value-models`, on both stores.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;

use crate::support::{BACKENDS, Backend, Started, TestDb, send, start_node};

const ACME: &str = include_str!("../../docs/models/acme-support.json");

pub(crate) fn acme() -> Value {
    serde_json::from_str(ACME).unwrap()
}

/// Creates a model; answers its id.
pub(crate) async fn create_model(client: &reqwest::Client, base: &str, model: &Value) -> String {
    let (status, body) = send(client.post(format!("{base}/value-models")).json(model)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_stored_versioned_listed_and_archived_on_both_stores() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let Started {
            node, api: base, ..
        } = start_node(&db, |_| {}).await;
        let client = reqwest::Client::new();

        let id = create_model(&client, &base, &acme()).await;
        let (status, first) = send(client.get(format!("{base}/value-models/{id}"))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(first["version"], 1);
        assert_eq!(first["status"], "active");
        // Analytics from the drivers' means, as the model computes them.
        let model = valueverse::model::ValueModel::from_json(ACME.as_bytes()).unwrap();
        let analytics = model.analytics();
        assert_eq!(first["analytics"]["npv"].as_f64().unwrap(), analytics.npv);
        assert_eq!(
            first["analytics"]["drivers"][0]["annual_value_at_full_ramp"]
                .as_f64()
                .unwrap(),
            analytics.drivers[0].annual_value_at_full_ramp
        );

        // A merge patch makes version 2; version 1 stays readable.
        let (status, second) = send(
            client
                .patch(format!("{base}/value-models/{id}"))
                .json(&json!({ "discount_rate": 0.2, "costs": { "monthly": 20000 } })),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{second}");
        assert_eq!(second["version"], 2);
        assert_eq!(
            second["model"]["costs"]["one_off"].as_f64(),
            acme()["costs"]["one_off"].as_f64()
        );
        assert!(second["analytics"]["npv"].as_f64() < first["analytics"]["npv"].as_f64());
        let (_, old) = send(client.get(format!("{base}/value-models/{id}?version=1"))).await;
        assert_eq!(
            old["model"]["discount_rate"].as_f64(),
            acme()["discount_rate"].as_f64()
        );
        assert_eq!(old["latest_version"], 2);
        let (_, versions) = send(client.get(format!("{base}/value-models/{id}/versions"))).await;
        assert_eq!(versions["versions"].as_array().unwrap().len(), 2);
        // A patch written against version 1 is refused now.
        let (status, stale) = send(
            client
                .patch(format!("{base}/value-models/{id}"))
                .header("If-Match", "\"1\"")
                .json(&json!({ "name": "late" })),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "{stale}");
        // An invalid patch is refused naming the field; nothing changes.
        let (status, invalid) = send(
            client
                .patch(format!("{base}/value-models/{id}"))
                .json(&json!({ "horizon_months": 0 })),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(invalid["error"]["field"], "horizon_months");

        // Listing: filters and paging.
        let mut other = acme();
        other["customer"] = json!("Globex");
        other["industry"] = json!("retail");
        let other_id = create_model(&client, &base, &other).await;
        let (_, all) = send(client.get(format!("{base}/value-models"))).await;
        assert_eq!(all["total"], 2);
        let (_, acme_only) = send(client.get(format!("{base}/value-models?customer=Acme"))).await;
        assert_eq!(acme_only["total"], 1);
        assert_eq!(acme_only["items"][0]["id"], id.as_str());
        assert_eq!(acme_only["items"][0]["version"], 2);
        let (_, retail) = send(client.get(format!("{base}/value-models?industry=retail"))).await;
        assert_eq!(retail["items"][0]["id"], other_id.as_str());
        let (_, page) = send(client.get(format!("{base}/value-models?limit=1&offset=1"))).await;
        assert_eq!(page["items"].as_array().unwrap().len(), 1);
        assert_eq!(page["items"][0]["id"], id.as_str(), "newest first");

        // Archiving: listed by status, no more versions.
        let (status, archived) = send(
            client
                .post(format!("{base}/value-models/{id}/archive"))
                .json(&json!({ "reason": "superseded" })),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(archived["status"], "archived");
        let (_, listed) = send(client.get(format!("{base}/value-models?status=archived"))).await;
        assert_eq!(listed["total"], 1);
        let (status, _) = send(
            client
                .patch(format!("{base}/value-models/{id}"))
                .json(&json!({ "name": "again" })),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT);

        // It all survives a restart.
        drop(client);
        node.stop().await.unwrap();
        let Started {
            node, api: base, ..
        } = start_node(&db, |_| {}).await;
        let client = reqwest::Client::new();
        let (_, again) = send(client.get(format!("{base}/value-models/{id}"))).await;
        assert_eq!(again["status"], "archived", "{backend:?}");
        assert_eq!(again["version"], 2);
        drop(client);
        node.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hypotheses_come_from_the_catalogue_ranked_and_new() {
    let db = TestDb::new(crate::support::Backend::Sqlite).await;
    let Started {
        node, api: base, ..
    } = start_node(&db, |_| {}).await;
    let client = reqwest::Client::new();
    // acme-support is a saas model that already has "ticket deflection".
    let id = create_model(&client, &base, &acme()).await;
    let (status, body) = send(
        client
            .post(format!("{base}/value-models/{id}/hypotheses"))
            .json(&json!({ "limit": 10 })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["industry"], "saas");
    let hypotheses = body["hypotheses"].as_array().unwrap();
    assert!(!hypotheses.is_empty());
    let names: Vec<&str> = hypotheses
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"ticket deflection"), "{names:?}");
    let values: Vec<f64> = hypotheses
        .iter()
        .map(|h| h["expected_annual_value"].as_f64().unwrap())
        .collect();
    assert!(values.windows(2).all(|w| w[0] >= w[1]), "{values:?}");
    assert!(
        hypotheses
            .iter()
            .all(|h| h["why"].as_str().unwrap().len() > 40)
    );

    let mut unknown = acme();
    unknown["industry"] = json!("shipbuilding");
    let other = create_model(&client, &base, &unknown).await;
    let (status, error) =
        send(client.post(format!("{base}/value-models/{other}/hypotheses"))).await;
    // The stored model's state refuses, not the request: 409; no model of
    // the tenant is in a similar industry either.
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error["error"]["code"], "unknown_industry");
    assert_eq!(error["error"]["field"], "industry");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("none of your models"),
        "{error}"
    );

    // Beyond the table: a model in a similar industry lends its drivers.
    let mut peer = acme();
    peer["industry"] = json!("Marine shipbuilding");
    peer["drivers"][0]["name"] = json!("hull inspections saved");
    peer["correlations"] = json!([]);
    create_model(&client, &base, &peer).await;
    let (status, body) = send(client.post(format!("{base}/value-models/{other}/hypotheses"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["source"], "derived");
    let derived = body["hypotheses"].as_array().unwrap();
    let hull = derived
        .iter()
        .find(|h| h["name"] == "hull inspections saved")
        .unwrap_or_else(|| panic!("the peer's driver: {body}"));
    assert_eq!(hull["unit_value"], 12.5);
    assert!(
        hull["why"]
            .as_str()
            .unwrap()
            .contains("marine shipbuilding"),
        "{hull}"
    );
    // Its own drivers are not proposed again.
    assert!(derived.iter().all(|h| h["name"] != "agent productivity"));
    drop(client);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_models_and_queries_name_the_field() {
    let db = TestDb::new(crate::support::Backend::Sqlite).await;
    let Started {
        node, api: base, ..
    } = start_node(&db, |_| {}).await;
    let client = reqwest::Client::new();
    let mut bad = acme();
    bad["drivers"][0]["quantity"]["max"] = json!(10);
    let mut unknown = acme();
    unknown["colour"] = json!("red");
    for (body, status, field) in [
        (
            bad,
            StatusCode::UNPROCESSABLE_ENTITY,
            "drivers[0].quantity.mode",
        ),
        (unknown, StatusCode::BAD_REQUEST, "colour"),
    ] {
        let (got, error) = send(client.post(format!("{base}/value-models")).json(&body)).await;
        assert_eq!(got, status, "{error}");
        assert_eq!(error["error"]["field"], field, "{error}");
    }
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("status=gone", "status"),
        ("colour=red", ""),
    ] {
        let (status, error) = send(client.get(format!("{base}/value-models?{query}"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {error}");
        if !field.is_empty() {
            assert_eq!(error["error"]["field"], field, "{error}");
        }
    }
    let (status, _) = send(client.get(format!("{base}/value-models/nope"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = send(client.get(format!("{base}/value-models"))).await;
    assert_eq!(
        list["total"], 0,
        "nothing of the refused requests was stored"
    );
    drop(client);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_model_is_simulated_by_id_and_version() {
    let db = TestDb::new(crate::support::Backend::Sqlite).await;
    let Started {
        node, api: base, ..
    } = start_node(&db, |_| {}).await;
    let client = reqwest::Client::new();
    let id = create_model(&client, &base, &acme()).await;
    let (status, job) = send(
        client
            .post(format!("{base}/simulations"))
            .json(&json!({ "model_id": id, "paths": 20000, "device": "cpu" })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["model_id"], id.as_str());
    assert_eq!(job["model_version"], 1);
    for (body, field) in [
        (json!({ "model_id": id, "model": acme() }), "model"),
        (json!({ "paths": 10 }), "model"),
        (
            json!({ "model": acme(), "model_version": 1 }),
            "model_version",
        ),
    ] {
        let (status, error) = send(client.post(format!("{base}/simulations")).json(&body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
        assert_eq!(error["error"]["field"], field);
    }
    let (status, error) = send(
        client
            .post(format!("{base}/simulations"))
            .json(&json!({ "model_id": id, "model_version": 7 })),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
    drop(client);
    node.stop().await.unwrap();
}

/// Finite inputs whose products are not: refused with 422 naming the
/// field, on create, on patch and inline in a simulation; the list still
/// answers for everyone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_whose_products_overflow_are_refused_naming_the_field() {
    let db = TestDb::new(crate::support::Backend::Sqlite).await;
    let Started {
        node, api: base, ..
    } = start_node(&db, |_| {}).await;
    let client = reqwest::Client::new();
    let mut huge = acme();
    huge["drivers"][0]["unit_value"] = json!(1e200);
    huge["drivers"][0]["quantity"] = json!({ "dist": "fixed", "value": 1e200 });
    let (status, refused) = send(client.post(format!("{base}/value-models")).json(&huge)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(
        refused["error"]["field"], "drivers[0].unit_value",
        "{refused}"
    );
    let mut wide = acme();
    wide["drivers"][0]["quantity"] = json!({ "dist": "normal", "mean": 1.0, "sd": 1e300 });
    let (status, refused) = send(client.post(format!("{base}/value-models")).json(&wide)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(
        refused["error"]["field"], "drivers[0].unit_value",
        "{refused}"
    );
    let (status, refused) = send(
        client
            .post(format!("{base}/simulations"))
            .json(&json!({ "model": huge, "paths": 1000, "device": "cpu" })),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    let id = create_model(&client, &base, &acme()).await;
    let (status, refused) = send(
        client
            .patch(format!("{base}/value-models/{id}"))
            .json(&json!({ "costs": { "monthly": 1e300 } })),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["error"]["field"], "costs.monthly", "{refused}");
    let (status, listed) = send(client.get(format!("{base}/value-models"))).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed["total"], 1);
    // A row stored by an older build with a null NPV (what the attack used
    // to leave behind) is skipped and counted; the rest are listed.
    let other = create_model(&client, &base, &acme()).await;
    let mut connection = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::query("UPDATE value_models SET body = replace(body, '\"npv\":', '\"npv\":null,\"was\":') WHERE id = ?")
        .bind(&other)
        .execute(&mut connection)
        .await
        .unwrap();
    let (status, listed) = send(client.get(format!("{base}/value-models"))).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{listed}");
    assert_eq!(items[0]["id"], id.as_str());
    let metrics = reqwest::get(format!("{}/metrics", base.trim_end_matches("/api/v1")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("valueverse_http_rows_skipped_total{table=\"value_models\"} 1"),
        "{metrics}"
    );
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_keeps_at_most_a_hundred_versions() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started {
        node, api: base, ..
    } = start_node(&db, |_| {}).await;
    let client = reqwest::Client::new();
    let id = create_model(&client, &base, &acme()).await;
    let patch = |n: usize| {
        client
            .patch(format!("{base}/value-models/{id}"))
            .json(&json!({ "discount_rate": 0.05 + n as f64 * 0.001 }))
    };
    for n in 2..=100 {
        let (status, body) = send(patch(n)).await;
        assert_eq!(status, StatusCode::OK, "version {n}: {body}");
    }
    // Before: every version stayed, all rewritten in one row on each change.
    let (status, refused) = send(patch(101)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("100 versions"),
        "{refused}"
    );
    drop(client);
    node.stop().await.unwrap();
}
