//! deploy/grafana: every series the dashboard and the alert rules query is
//! one a node exports, and the rules cover what the issue asks.

use std::collections::BTreeSet;

use valueverse::Node;

use crate::support::{Backend, TestDb, test_config};

const DASHBOARD: &str = include_str!("../../deploy/grafana/valueverse-dashboard.json");
const ALERTS: &str = include_str!("../../deploy/grafana/alerts.yml");

/// `valueverse_*` series named in a PromQL expression, histogram suffixes
/// stripped to their family.
fn series(expr: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("valueverse_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        found.push(family.to_owned());
    }
    found
}

fn dashboard_exprs() -> Vec<String> {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids must be unique");
    panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap().iter())
        .map(|target| target["expr"].as_str().unwrap().to_owned())
        .collect()
}

/// The `expr:` of each rule and the names of the alerts.
fn alert_rules() -> (Vec<String>, Vec<String>) {
    let mut exprs = Vec::new();
    let mut names = Vec::new();
    for line in ALERTS.lines().map(str::trim) {
        if let Some(expr) = line.strip_prefix("expr:") {
            exprs.push(expr.trim().to_owned());
        } else if let Some(name) = line.strip_prefix("- alert:") {
            names.push(name.trim().to_owned());
        }
    }
    assert_eq!(exprs.len(), names.len(), "every alert has one expr line");
    (exprs, names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alerts_use_only_exported_series() {
    let db = TestDb::new(Backend::Sqlite).await;
    let node = Node::start(&test_config(&db), |_| {}).await.unwrap();
    let base = format!("http://{}", node.http_addr());
    // HTTP series appear once a request has been served.
    reqwest::get(format!("{base}/health")).await.unwrap();
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported: BTreeSet<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .collect();

    let (alert_exprs, alert_names) = alert_rules();
    assert_eq!(
        alert_names,
        [
            "ValueVerseRestartStorm",
            "ValueVerseMailboxSaturation",
            "ValueVerseSagaNeedsAttention",
            "ValueVerseNodeDown",
            "ValueVerseOutboxStuck"
        ]
    );
    let exprs: Vec<String> = dashboard_exprs().into_iter().chain(alert_exprs).collect();
    let used: BTreeSet<String> = exprs.iter().flat_map(|expr| series(expr)).collect();
    assert!(used.len() >= 12, "{used:?}");
    for name in &used {
        assert!(
            exported.contains(name.as_str()),
            "{name} is queried but a node does not export it; exported: {exported:?}"
        );
    }
    // `up` is Prometheus' own; only the node-down rule and panel use it.
    assert!(
        exprs
            .iter()
            .any(|expr| expr.starts_with("up{job=\"valueverse\"}"))
    );
    // The series a first failure moves exist before it, at 0.
    for series in [
        "valueverse_sagas_finished_total{definition=\"value-creation\",status=\"needs_attention\"} 0",
        "valueverse_simulation_jobs_total{outcome=\"failed\"} 0",
    ] {
        assert!(text.contains(series), "{series} missing from\n{text}");
    }
    node.stop().await.unwrap();
}

#[test]
fn series_names_are_read_from_promql() {
    assert_eq!(
        series(
            "histogram_quantile(0.99, sum by (le) (rate(valueverse_x_seconds_bucket[5m]))) / valueverse_y"
        ),
        ["valueverse_x_seconds", "valueverse_y"]
    );
}
