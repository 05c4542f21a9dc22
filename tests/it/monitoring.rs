//! deploy/grafana: every series the dashboard and the rules query is one a
//! node exports or a recording rule defines, and the rules cover what the
//! issues ask (the SLO alerts: deploy/grafana/slo.yml; promtool's unit tests
//! in slo_test.yml prove when they fire, deploy/check.sh runs them).

use std::collections::BTreeSet;

use valueverse::Node;

use crate::support::{Backend, TestDb, test_config};

const DASHBOARD: &str = include_str!("../../deploy/grafana/valueverse-dashboard.json");
const ALERTS: &str = include_str!("../../deploy/grafana/alerts.yml");
const SLO: &str = include_str!("../../deploy/grafana/slo.yml");

/// The windows the SLO ratios are recorded over.
const SLO_WINDOWS: [&str; 7] = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"];

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

/// Recording-rule names (`valueverse:...`) named in a PromQL expression.
fn recorded(expr: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("valueverse:") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        rest = &rest[at + name.len()..];
        found.push(name);
    }
    found
}

/// One rule of a Prometheus rule file.
#[derive(Debug, Default)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    labels: Vec<(String, String)>,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The rules of a rule file, read line by line (the files keep to one
/// layout): `- alert:` or `- record:` opens a rule; `expr:` is inline or a
/// block scalar (`|`, `>-`, ...) of the lines indented deeper; `labels:`
/// maps the lines indented deeper.
fn rules(file: &str) -> Vec<Rule> {
    let lines: Vec<&str> = file.lines().collect();
    let mut rules: Vec<Rule> = Vec::new();
    let mut at = 0;
    while at < lines.len() {
        let line = lines[at];
        let trimmed = line.trim();
        at += 1;
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            rules.push(Rule {
                alert: Some(name.trim().to_owned()),
                ..Rule::default()
            });
        } else if let Some(name) = trimmed.strip_prefix("- record:") {
            rules.push(Rule {
                record: Some(name.trim().to_owned()),
                ..Rule::default()
            });
        } else if let Some(value) = trimmed.strip_prefix("expr:") {
            let rule = rules.last_mut().expect("an expr belongs to a rule");
            let value = value.trim();
            if ["|", "|-", ">", ">-"].contains(&value) {
                let mut block = Vec::new();
                while at < lines.len()
                    && (lines[at].trim().is_empty() || indent(lines[at]) > indent(line))
                {
                    block.push(lines[at].trim());
                    at += 1;
                }
                rule.expr = block.join("\n").trim().to_owned();
            } else {
                rule.expr = value.to_owned();
            }
        } else if trimmed == "labels:" {
            let rule = rules.last_mut().expect("labels belong to a rule");
            while at < lines.len() && indent(lines[at]) > indent(line) {
                let (key, value) = lines[at].trim().split_once(':').expect("key: value");
                rule.labels
                    .push((key.trim().to_owned(), value.trim().to_owned()));
                at += 1;
            }
        }
    }
    for rule in &rules {
        assert!(!rule.expr.is_empty(), "{rule:?} has no expr");
    }
    rules
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

    let alerts = rules(ALERTS);
    let alert_names: Vec<&str> = alerts.iter().filter_map(|r| r.alert.as_deref()).collect();
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
    let slo = rules(SLO);
    let exprs: Vec<String> = dashboard_exprs()
        .into_iter()
        .chain(alerts.iter().chain(&slo).map(|rule| rule.expr.clone()))
        .collect();
    let used: BTreeSet<String> = exprs.iter().flat_map(|expr| series(expr)).collect();
    assert!(used.len() >= 12, "{used:?}");
    for name in &used {
        assert!(
            exported.contains(name.as_str()),
            "{name} is queried but a node does not export it; exported: {exported:?}"
        );
    }
    // Recording rules' names are no exported series: each one queried is
    // defined by a rule.
    let defined: BTreeSet<&str> = alerts
        .iter()
        .chain(&slo)
        .filter_map(|rule| rule.record.as_deref())
        .collect();
    let queried: BTreeSet<String> = exprs.iter().flat_map(|expr| recorded(expr)).collect();
    for name in &queried {
        assert!(
            defined.contains(name.as_str()),
            "{name} is queried but no recording rule defines it; defined: {defined:?}"
        );
    }
    // Histogram bounds the rules and panels compare against are buckets a
    // node has (the latency SLO counts requests under le="0.1").
    for expr in exprs
        .iter()
        .filter(|expr| expr.contains("valueverse_http_request_duration_seconds_bucket"))
    {
        for bound in expr.split("le=\"").skip(1) {
            let bound = &bound[..bound.find('"').unwrap()];
            assert!(
                text.lines().any(|line| line
                    .starts_with("valueverse_http_request_duration_seconds_bucket{")
                    && line.contains(&format!("le=\"{bound}\""))),
                "no bucket le=\"{bound}\" in\n{text}"
            );
        }
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

/// Issue 23: the availability (99.9% not 5xx) and latency (95% within
/// 0.1 s) SLOs of the API, their bad-request ratios recorded over every
/// window, and multi-window multi-burn-rate alerts (Google SRE workbook):
/// pages at 14.4x over 1h and 5m and 6x over 6h and 30m, tickets at 3x over
/// 1d and 2h and 1x over 3d and 6h, each over exactly its two windows.
#[test]
fn the_slo_rules_record_every_window_and_alert_on_two() {
    let slo = rules(SLO);
    let records: BTreeSet<&str> = slo.iter().filter_map(|r| r.record.as_deref()).collect();
    for (name, budget) in [("availability", "0.001"), ("latency", "0.05")] {
        for window in SLO_WINDOWS {
            let record = format!("valueverse:slo_{name}_errors:ratio_rate{window}");
            assert!(records.contains(record.as_str()), "{record} missing");
        }
        let title = format!("{}{}", name[..1].to_uppercase(), &name[1..]);
        for (long, short, factor, severity) in [
            ("1h", "5m", "14.4", "critical"),
            ("6h", "30m", "6", "critical"),
            ("1d", "2h", "3", "warning"),
            ("3d", "6h", "1", "warning"),
        ] {
            let alert = format!("ValueVerse{title}BudgetBurn{long}");
            let rule = slo
                .iter()
                .find(|rule| rule.alert.as_deref() == Some(alert.as_str()))
                .unwrap_or_else(|| panic!("{alert} missing"));
            let windows: BTreeSet<String> = recorded(&rule.expr).into_iter().collect();
            assert_eq!(
                windows,
                BTreeSet::from([
                    format!("valueverse:slo_{name}_errors:ratio_rate{long}"),
                    format!("valueverse:slo_{name}_errors:ratio_rate{short}"),
                ]),
                "{alert}: {}",
                rule.expr
            );
            assert!(
                rule.expr.split_whitespace().any(|word| word == "and"),
                "{alert}: both windows must burn"
            );
            assert_eq!(
                rule.expr
                    .matches(&format!("> ({factor} * {budget})"))
                    .count(),
                2,
                "{alert}: {factor}x the budget {budget} over both windows: {}",
                rule.expr
            );
            assert!(
                rule.labels
                    .contains(&("severity".to_owned(), severity.to_owned())),
                "{alert}: severity {severity}: {:?}",
                rule.labels
            );
        }
    }
    // The SLIs count API routes only: not /health, /metrics, the dashboard
    // or the WebSocket streams.
    for rule in slo.iter().filter(|rule| rule.record.is_some()) {
        assert!(
            rule.expr.contains("route=~\"/api/v1/.+\""),
            "{:?}",
            rule.record
        );
    }
}

/// The dashboard shows both SLOs and links slow requests to their traces:
/// Jaeger, service valueverse, the route as span attribute http.route,
/// spans of 100 ms or more, in the panel's time range.
#[test]
fn the_dashboard_shows_the_slos_and_links_slow_requests_to_traces() {
    let exprs = dashboard_exprs();
    for name in ["availability", "latency"] {
        assert!(
            exprs
                .iter()
                .any(|expr| expr.contains(&format!("valueverse:slo_{name}_errors:"))),
            "no {name} SLO panel"
        );
    }
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let links: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|panel| panel["fieldConfig"]["defaults"]["links"].as_array())
        .flatten()
        .map(|link| link["url"].as_str().unwrap())
        .collect();
    assert!(
        links
            .iter()
            .any(|url| url.contains("\"datasource\":\"jaeger\"")
                && url.contains("\"service\":\"valueverse\"")
                && url.contains("http.route=${__field.labels.route")
                && url.contains("\"minDuration\":\"100ms\"")
                && url.contains("${__from}")
                && url.contains("${__to}")),
        "{links:?}"
    );
}

#[test]
fn rules_are_read_from_rule_files() {
    let file = "groups:\n  - name: x\n    rules:\n      - record: valueverse:a:rate5m\n        expr: |\n          sum(rate(valueverse_b_total[5m]))\n          /\n          sum(rate(valueverse_c_total[5m]))\n      - alert: A\n        # comment\n        expr: valueverse:a:rate5m > 1\n        labels:\n          severity: warning\n        annotations:\n          summary: \"x\"\n";
    let read = rules(file);
    assert_eq!(read.len(), 2);
    assert_eq!(read[0].record.as_deref(), Some("valueverse:a:rate5m"));
    assert_eq!(
        read[0].expr,
        "sum(rate(valueverse_b_total[5m]))\n/\nsum(rate(valueverse_c_total[5m]))"
    );
    assert_eq!(read[1].alert.as_deref(), Some("A"));
    assert_eq!(recorded(&read[1].expr), ["valueverse:a:rate5m"]);
    assert_eq!(
        read[1].labels,
        [("severity".to_owned(), "warning".to_owned())]
    );
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
