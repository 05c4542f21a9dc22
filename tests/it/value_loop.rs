//! The value loop end to end (issue 22): a model, a server-seeded
//! simulation, a commitment, a plan, twelve months of deliveries imported
//! from an `.xlsx` file made here, twelve statements whose fees this test
//! recomputes by hand from the deliveries, a risk announced by the daily
//! snapshot, webhooks for each, and a renewal that supersedes.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{Datelike, Months, NaiveDate, Utc};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::commitments::simulate;
use crate::sagas::wait_until;
use crate::support::{Backend, Started, TestDb, eventually, send, start_node};
use crate::value_models::{acme, create_model};
use crate::webhooks::start_receiver;

const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

/// `min(1, m / ramp)`, 1 without a ramp: the model's ramp.
fn ramp(ramp_months: u64, month: u64) -> f64 {
    if ramp_months == 0 {
        1.0
    } else {
        (month as f64 / ramp_months as f64).min(1.0)
    }
}

/// What the commitment asks of each driver in month `m` (1-based), from
/// the expectation it shows: scale x monthly value x ramp.
fn committed_in(commitment: &Value, month: u64) -> BTreeMap<String, f64> {
    let expectation = &commitment["expectation"];
    let scale = expectation["scale"].as_f64().unwrap();
    expectation["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|driver| {
            let value = scale
                * driver["monthly_value"].as_f64().unwrap()
                * ramp(driver["ramp_months"].as_u64().unwrap(), month);
            (driver["name"].as_str().unwrap().to_owned(), value)
        })
        .collect()
}

/// An .xlsx of deliveries with the customer's own headers.
fn workbook(rows: &[(String, String, f64, NaiveDate)]) -> Vec<u8> {
    use rust_xlsxwriter::{ExcelDateTime, Format, Workbook};
    let mut book = Workbook::new();
    let sheet = book.add_worksheet();
    let dates = Format::new().set_num_format("yyyy-mm-dd");
    for (column, name) in ["Row", "Driver", "Amount (USD)", "Booked on"]
        .into_iter()
        .enumerate()
    {
        sheet.write_string(0, column as u16, name).unwrap();
    }
    for (index, (id, driver, value, date)) in rows.iter().enumerate() {
        let row = index as u32 + 1;
        sheet.write_string(row, 0, id).unwrap();
        sheet.write_string(row, 1, driver).unwrap();
        sheet.write_number(row, 2, *value).unwrap();
        let day = ExcelDateTime::from_ymd(date.year() as u16, date.month() as u8, date.day() as u8)
            .unwrap();
        sheet
            .write_datetime_with_format(row, 3, &day, &dates)
            .unwrap();
    }
    book.save_to_buffer().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_value_loop_closes() {
    let db = TestDb::new(Backend::Postgres).await;
    // First run: no statement falls due while the deliveries are imported.
    let Started {
        node, api: base, ..
    } = start_node(&db, |config| {
        config.value.tick = Duration::from_secs(3600);
    })
    .await;
    let client = reqwest::Client::new();
    let (hook, receiver, hook_server) = start_receiver(0);
    let (status, subscription) = send(client.post(format!("{base}/webhooks")).json(&json!({
        "url": hook, "secret": "a-test-secret-of-some-length",
        "event_types": ["statement.issued", "risk.detected"]
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{subscription}");

    let model_id = create_model(&client, &base, &acme()).await;
    let result = simulate(&client, &base, &model_id, 1).await;
    let p20 = result["npv_quantiles"][19].as_f64().unwrap();
    // Twelve whole months ago: twelve periods have ended.
    let today = Utc::now().date_naive();
    let this_month = today.with_day(1).unwrap();
    let start = this_month - Months::new(12);
    let (status, commitment) = send(client.post(format!("{base}/commitments")).json(&json!({
        // Well below the P20, so that the renewal's run of other seeds
        // supports it again.
        "model_id": model_id, "confidence": 0.8, "target": p20 * 0.95,
        "terms": { "fixed_fee": 36000, "outcome_share": 0.2, "cap": 50000 },
        "start_date": start,
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{commitment}");
    let commitment_id = commitment["id"].as_str().unwrap().to_owned();
    let scale = commitment["expectation"]["scale"].as_f64().unwrap();
    assert!(
        scale > 0.0 && scale < 1.0,
        "a target below the mean: {scale}"
    );
    let (status, plan) = send(client.post(format!("{base}/plans")).json(&json!({
        "commitment_id": commitment_id, "start_date": start,
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{plan}");
    let plan_id = plan["id"].as_str().unwrap().to_owned();

    // Twelve months: every driver at 130% of what is committed, but
    // escalations at half.
    let mut rows = Vec::new();
    for month in 1..=12u64 {
        let day = start + Months::new(month as u32 - 1) + chrono::Days::new(14);
        for (driver, committed) in committed_in(&commitment, month) {
            let pace = if driver == "escalations avoided" {
                0.5
            } else {
                1.3
            };
            let value = (committed * pace * 100.0).round() / 100.0;
            rows.push((format!("{month}-{driver}"), driver, value, day));
        }
    }
    let file = workbook(&rows);
    let ws_base = base.replace("http://", "ws://").replace("/api/v1", "");
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("{ws_base}/ws/plans/{plan_id}"))
        .await
        .expect("the plan's stream");
    let import = format!(
        "{base}/plans/{plan_id}/deliveries:import?id_column=Row&driver_column=Driver\
         &value_column=Amount%20(USD)&date_column=Booked%20on"
    );
    let (status, report) = send(
        client
            .post(&import)
            .header("content-type", XLSX)
            .body(file.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["rows"], 60, "{report}");
    assert_eq!(report["recorded"], 60);
    // The same file again records nothing twice.
    let (_, again) = send(client.post(&import).header("content-type", XLSX).body(file)).await;
    assert_eq!(again["recorded"], 0, "{again}");
    assert_eq!(again["already_recorded"], 60);
    // The import's progress came over the plan's stream.
    let progress = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(message)) = socket.next().await {
            let text = message.into_text().unwrap_or_default();
            let event: Value = serde_json::from_str(&text).unwrap_or_default();
            if event["type"] == "import.progress" && event["data"]["stage"] == "done" {
                return event;
            }
        }
        panic!("the stream ended");
    })
    .await
    .expect("import progress on the plan's stream");
    assert_eq!(progress["data"]["rows_recorded"], 60);
    drop(socket);
    node.stop().await.unwrap();

    // Second run: the tick finds the twelve periods due and the snapshot.
    let Started {
        node, api: base, ..
    } = start_node(&db, |config| {
        config.value.tick = Duration::from_millis(100);
    })
    .await;
    let statements = eventually("twelve statements", Duration::from_secs(30), || async {
        let (_, body) =
            send(client.get(format!("{base}/commitments/{commitment_id}/statements"))).await;
        if body["statements"].as_array().map_or(0, Vec::len) == 12 {
            Ok(body)
        } else {
            Err(body.to_string())
        }
    })
    .await;
    let statements = statements["statements"].as_array().unwrap().clone();
    // By hand, from the deliveries: committed and realized per month, the
    // fee to date by the terms, each statement the difference.
    let (mut committed_to_date, mut realized_to_date, mut fees_before) = (0.0, 0.0, 0.0);
    for (index, statement) in statements.iter().enumerate() {
        let month = index as u64 + 1;
        let committed: f64 = committed_in(&commitment, month).values().sum();
        let first = start + Months::new(month as u32 - 1);
        let realized: f64 = rows
            .iter()
            .filter(|(_, _, _, date)| *date >= first && *date < first + Months::new(1))
            .map(|(_, _, value, _)| value)
            .sum();
        committed_to_date += committed;
        realized_to_date += realized;
        let uncapped = 36000.0 * month as f64 / 36.0
            + 0.2 * f64::max(0.0, realized_to_date - committed_to_date);
        let fee_to_date = uncapped.min(50000.0);
        let fee = fee_to_date - fees_before;
        fees_before = fee_to_date;
        let near = |field: &Value, expected: f64| {
            let got = field.as_f64().unwrap();
            assert!(
                (got - expected).abs() <= 1e-6 * expected.abs().max(1.0),
                "period {month}: {got} != {expected}: {statement}"
            );
        };
        assert_eq!(statement["period"], month);
        assert_eq!(statement["period_start"], first.to_string());
        near(&statement["committed"], committed);
        near(&statement["realized"], realized);
        near(&statement["adjustments"], 0.0);
        near(&statement["fee"], fee);
        near(&statement["to_date"]["fees"], fee_to_date);
        assert_eq!(statement["cap_reached"], uncapped >= 50000.0);
    }
    assert!(fees_before > 12_000.0, "the share above target counted");
    // CSV: a row per driver and a total per statement.
    let csv = client
        .get(format!(
            "{base}/commitments/{commitment_id}/statements?format=csv"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), StatusCode::OK);
    let csv = csv.text().await.unwrap();
    assert_eq!(csv.lines().count(), 1 + 12 * 6, "{csv}");
    assert!(csv.lines().nth(6).unwrap().contains(",total,"), "{csv}");
    let (status, one) =
        send(client.get(format!("{base}/commitments/{commitment_id}/statements/3"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["statements"][0]["period"], 3);

    // The daily snapshot: escalations run at half: a risk, announced once.
    let history = eventually("a snapshot", Duration::from_secs(20), || async {
        let (_, body) = send(client.get(format!("{base}/amplifications/{model_id}/history"))).await;
        if body["points"].as_array().map_or(0, Vec::len) == 1 {
            Ok(body)
        } else {
            Err(body.to_string())
        }
    })
    .await;
    assert_eq!(history["points"][0]["day"], today.to_string());
    let (_, insights) =
        send(client.get(format!("{base}/amplifications/{model_id}/insights"))).await;
    let risks: Vec<&str> = insights["risks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|risk| risk["driver"].as_str().unwrap())
        .collect();
    assert_eq!(risks, ["escalations avoided"], "{insights}");

    // Webhooks: one per statement, and the risk.
    let received = eventually("the webhooks", Duration::from_secs(20), || async {
        let received = receiver.lock().unwrap().requests.clone();
        let count = |kind: &str| {
            received
                .iter()
                .filter(|(_, event, _)| event == kind)
                .count()
        };
        let counts = (count("statement.issued"), count("risk.detected"));
        if counts == (12, 1) {
            Ok(received)
        } else {
            Err(format!("{counts:?}"))
        }
    })
    .await;
    let risk: Value = received
        .iter()
        .find(|(_, event, _)| event == "risk.detected")
        .map(|(_, _, body)| serde_json::from_str(body).unwrap())
        .unwrap();
    assert_eq!(risk["data"]["driver"], "escalations avoided", "{risk}");

    // A renewal supersedes: the plan moves, the new commitment starts
    // where the old one stopped stating.
    let (status, saga) = send(client.post(format!("{base}/sagas/renewal")).json(&json!({
        "commitment_id": commitment_id, "paths": 20_000
    })))
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{saga}");
    let saga = saga["id"].as_str().unwrap().to_owned();
    wait_until(&client, &base, &saga, "completed").await;
    let (_, old) = send(client.get(format!("{base}/commitments/{commitment_id}"))).await;
    assert_eq!(old["status"], "superseded");
    let (_, renewed) = send(client.get(format!("{base}/commitments/{saga}-commitment"))).await;
    assert_eq!(renewed["renews"], commitment_id.as_str());
    assert_eq!(renewed["start_date"], this_month.to_string());
    let (_, plan) = send(client.get(format!("{base}/plans/{plan_id}"))).await;
    assert_eq!(plan["commitment_id"], format!("{saga}-commitment"));
    assert_eq!(plan["status"], "active");
    hook_server.stop(true).await;
    drop(client);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_get_a_report_never_a_500() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Started {
        node, api: base, ..
    } = start_node(&db, |config| {
        config.value.import_max_rows = 50_000;
    })
    .await;
    let client = reqwest::Client::new();
    let (_, commitment_id) = crate::plans::committed_model(&client, &base).await;
    let (_, plan) = send(client.post(format!("{base}/plans")).json(&json!({
        "commitment_id": commitment_id, "start_date": "2026-01-01",
    })))
    .await;
    let plan_id = plan["id"].as_str().unwrap().to_owned();
    let import = |query: &str| format!("{base}/plans/{plan_id}/deliveries:import{query}");
    let post = |url: String, body: String| {
        let client = client.clone();
        async move {
            send(
                client
                    .post(url)
                    .header("content-type", "text/csv")
                    .body(body),
            )
            .await
        }
    };
    // Wrong columns: the missing one named.
    let (status, error) = post(
        import(""),
        "id,driver,amount,date\n1,churn avoided,5,2026-02-01\n".into(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert_eq!(error["error"]["field"], "value");
    // Text in a number cell, a date out of range, an unknown driver: each
    // row and column named, nothing stored.
    let file = "id,driver,value,date\n\
                a,churn avoided,lots,2026-02-01\n\
                b,churn avoided,5,2099-01-01\n\
                c,unicorns,5,2026-02-01\n\
                d,churn avoided,7,2026-03-01\n";
    let (status, error) = post(import(""), file.into()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    let errors = error["report"]["errors"].as_array().unwrap();
    let found: Vec<(u64, &str)> = errors
        .iter()
        .map(|e| (e["row"].as_u64().unwrap(), e["column"].as_str().unwrap()))
        .collect();
    assert_eq!(found, [(2, "value"), (3, "date"), (4, "driver")], "{error}");
    assert!(errors[0]["message"].as_str().unwrap().contains("lots"));
    let (_, plan) = send(client.get(format!("{base}/plans/{plan_id}"))).await;
    assert_eq!(
        plan["deliveries"].as_array().unwrap().len(),
        0,
        "nothing stored"
    );
    // partial=true stores the good row and reports the rest.
    let (status, report) = post(import("?partial=true"), file.into()).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        (report["recorded"].as_u64(), report["refused"].as_u64()),
        (Some(1), Some(3))
    );
    // An id of 60 characters of two bytes each: the import and the plan
    // count characters alike, so it is recorded (the plan counted bytes
    // and refused it after earlier rows were stored).
    let mut file = String::from("id,driver,value,date\n");
    for row in 0..1500 {
        file.push_str(&format!("w{row},churn avoided,1,2026-02-01\n"));
    }
    file.push_str(&format!("{},churn avoided,1,2026-02-01\n", "é".repeat(60)));
    let (status, report) = post(import(""), file).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["recorded"], 1501, "{report}");
    // 100,000 rows: refused as a whole, naming the limit.
    let mut big = String::from("id,driver,value,date\n");
    for row in 0..100_000 {
        big.push_str(&format!("r{row},churn avoided,1,2026-02-01\n"));
    }
    let (status, error) = post(import(""), big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("50000"),
        "{error}"
    );
    // Not a spreadsheet at all.
    let (status, error) = send(
        client
            .post(import(""))
            .header("content-type", XLSX)
            .body(b"PK\x03\x04 not really a zip".to_vec()),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    // Another type is read by its first bytes: not a zip, so CSV, whose
    // header lacks the columns.
    let (status, error) = send(
        client
            .post(import(""))
            .header("content-type", "application/pdf")
            .body("%PDF"),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert_eq!(error["error"]["code"], "invalid_file", "{error}");
    drop(client);
    node.stop().await.unwrap();
}
