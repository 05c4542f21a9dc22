//! `valueverse-bench sagas`: value-creation sagas end to end (the durable
//! saga log, every agent, a small simulation each) on a node started in
//! this process, at a given concurrency.

use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::RecvError;

use valueverse::sagas::{Saga, value_creation};
use valueverse::{Config, Node, NodeError};

/// One measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SagaBench {
    pub store: String,
    pub concurrency: usize,
    pub sagas: usize,
    pub seconds: f64,
    pub sagas_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Mean milliseconds per step and direction (`log`: the coordinator's
    /// write of an outcome).
    pub step_ms: std::collections::BTreeMap<String, f64>,
}

fn input(paths: u64) -> serde_json::Value {
    serde_json::json!({
        "model": {
            "name": "bench", "customer": "bench", "industry": "saas", "currency": "USD",
            "horizon_months": 24, "discount_rate": 0.1,
            "costs": { "one_off": 10000, "monthly": 100 },
            "drivers": [
                { "name": "a", "category": "revenue", "unit_value": 10, "ramp_months": 3,
                  "quantity": { "dist": "normal", "mean": 200, "sd": 20 } }
            ]
        },
        "confidence": 0.8,
        "terms": { "fixed_fee": 0, "outcome_share": 0.1, "cap": null },
        "milestones": [],
        "paths": paths,
    })
}

/// Runs `sagas` sagas, `concurrency` at a time, on a fresh node over
/// `config`'s store; `on_done` is called after each.
pub async fn sagas(
    config: &Config,
    concurrency: usize,
    sagas: usize,
    paths: u64,
    on_done: impl Fn(usize),
) -> Result<SagaBench, NodeError> {
    let node = Node::start(config, |_| {}).await?;
    let mut events = node.system.subscribe_domain_events();
    let runner = node.sagas.clone();
    let definition = value_creation();
    let started_at = Instant::now();
    let mut latencies = Vec::with_capacity(sagas);
    let mut in_flight = std::collections::HashMap::new();
    let mut launched = 0;
    // Starts run as tasks of their own, as HTTP requests would: a loop
    // that waited for each start would measure itself.
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let finish = |id: &str,
                  in_flight: &mut std::collections::HashMap<String, Instant>,
                  latencies: &mut Vec<f64>| {
        if let Some(started) = in_flight.remove(id) {
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            on_done(latencies.len());
        }
    };
    while latencies.len() < sagas {
        while launched < sagas && in_flight.len() < concurrency {
            let saga = Saga::new(
                uuid::Uuid::now_v7().to_string(),
                &definition,
                input(paths),
                chrono::Utc::now(),
            );
            in_flight.insert(saga.id.clone(), Instant::now());
            let runner = runner.clone();
            let failed = failed_tx.clone();
            tokio::spawn(async move {
                let id = saga.id.clone();
                if runner.start_saga(saga).await.is_err() {
                    // Counted as done, and slow: a failed start shows in p99.
                    tracing::warn!("bench: a saga did not start");
                    let _ = failed.send(id);
                }
            });
            launched += 1;
        }
        tokio::select! {
            Some(id) = failed_rx.recv() => finish(&id, &mut in_flight, &mut latencies),
            event = tokio::time::timeout(Duration::from_secs(60), events.recv()) => match event {
                Ok(Ok(event)) if event.event_type == "saga.finished" => {
                    let id = event.data["saga_id"].as_str().unwrap_or_default();
                    finish(id, &mut in_flight, &mut latencies);
                }
                Ok(Err(RecvError::Lagged(_))) => {
                    // Events were lost: ask the sagas in flight directly.
                    let ids: Vec<String> = in_flight.keys().cloned().collect();
                    for id in ids {
                        if let Ok(saga) = runner.get(&id).await
                            && saga.status.is_final()
                        {
                            finish(&id, &mut in_flight, &mut latencies);
                        }
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(RecvError::Closed)) | Err(_) => break,
            },
        }
    }
    let seconds = started_at.elapsed().as_secs_f64();
    let store = format!("{:?}", node.store.backend()).to_lowercase();
    // Mean time of each step and of the log writes between them.
    let mut step_ms = std::collections::BTreeMap::new();
    for family in node.system.metrics().registry().gather() {
        if family.name() == "valueverse_saga_step_seconds" {
            for metric in family.get_metric() {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|pair| pair.name() == name)
                        .map(|pair| pair.value().to_owned())
                        .unwrap_or_default()
                };
                let histogram = metric.get_histogram();
                step_ms.insert(
                    format!("{} {}", label("step"), label("direction")),
                    histogram.get_sample_sum() * 1000.0
                        / histogram.get_sample_count().max(1) as f64,
                );
            }
        }
    }
    let _ = node.stop().await;
    latencies.sort_by(f64::total_cmp);
    let at = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(SagaBench {
        store,
        concurrency,
        sagas: latencies.len(),
        seconds,
        sagas_per_second: latencies.len() as f64 / seconds,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        step_ms,
    })
}
