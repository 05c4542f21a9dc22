//! `valueverse-bench stalled-bodies`: one editor key opens N connections,
//! each sending all but the last byte of a 1 MiB body, and stalls. A
//! `valueverse serve` process runs twice on a scratch SQLite file:
//! with the per-caller limits lifted (the node as it was before them: the
//! baseline) and with the default limits. Measured while the bodies stall:
//! the node's resident memory (and its peak), the slowest `/health`, and
//! whether another key's requests still succeed.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::AsyncWriteExt;

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct StalledRun {
    /// `lifted` (the baseline) or `default`.
    pub limits: String,
    pub connections: usize,
    /// Resident memory of the node once every body stalls, and its peak.
    pub rss_mb: f64,
    pub peak_rss_mb: f64,
    /// The slowest of the `/health` probes made while the bodies stall.
    pub health_max_ms: f64,
    /// Another key's requests, made while the bodies stall, that succeeded.
    pub honest_ok: usize,
    pub honest_sent: usize,
}

use crate::process::BenchError;

const BODY: usize = 1 << 20;
const PROBES: usize = 20;

/// Runs the baseline, then the default limits, `connections` stalled
/// bodies each. `progress` is told each run's stage.
pub async fn run(
    exe: &Path,
    connections: usize,
    mut progress: impl FnMut(&str),
) -> Result<Vec<StalledRun>, BenchError> {
    let mut runs = Vec::new();
    for lifted in [true, false] {
        progress(if lifted {
            "limits lifted (baseline)"
        } else {
            "default limits"
        });
        runs.push(measure(exe, lifted, connections).await?);
    }
    Ok(runs)
}

/// The limits of a node as it was before them: nothing per caller.
const LIFTED: &str = "[limits]\nrequests_per_second = 1000000\nburst = 1000000\n\
    in_flight_per_key = 1000000\nmax_connections = 1000000\nbody_read_timeout = \"1h\"\n";

async fn measure(exe: &Path, lifted: bool, connections: usize) -> Result<StalledRun, BenchError> {
    let dir = std::env::temp_dir().join(format!("valueverse-stalled-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let db = format!("sqlite://{}", dir.join("bench.db").display());
    let key = |name: &str| {
        let output = std::process::Command::new(exe)
            .args(["apikey", "create", "--role", "editor", "--name", name])
            .args(["--database-url", &db])
            .output()?;
        if !output.status.success() {
            return Err(BenchError::Node(
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let (attacker, honest) = (key("attacker")?, key("honest")?);
    let config = dir.join("node.toml");
    std::fs::write(&config, if lifted { LIFTED } else { "" })?;
    let mut command = tokio::process::Command::new(exe);
    command
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--database-url",
            &db,
            "--config",
        ])
        .arg(&config)
        .env("VALUEVERSE_LOG", "error");
    let (mut child, pid, addr) = crate::process::serve_process(command)
        .await
        .map_err(BenchError::Node)?;

    // Every connection sends its head and all but the last byte, then waits.
    let head = format!(
        "POST /api/v1/value-models HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {attacker}\r\n\
         Content-Type: application/json\r\nContent-Length: {BODY}\r\n\r\n"
    );
    let body = std::sync::Arc::new(vec![b' '; BODY - 1]);
    let mut stalled = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (addr, head, body) = (addr.clone(), head.clone(), body.clone());
        stalled.push(tokio::spawn(async move {
            let Ok(mut socket) = tokio::net::TcpStream::connect(&addr).await else {
                return None;
            };
            let send = async {
                socket.write_all(head.as_bytes()).await?;
                socket.write_all(&body).await
            };
            // A refused body ends early; a buffered one waits for its byte.
            let _ = tokio::time::timeout(Duration::from_secs(30), send).await;
            Some(socket)
        }));
    }
    let mut sockets = Vec::with_capacity(connections);
    for task in stalled {
        if let Ok(Some(socket)) = task.await {
            sockets.push(socket);
        }
    }
    // The node has read what it will read.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|error| BenchError::Node(error.to_string()))?;
    let mut health_max = Duration::ZERO;
    let mut honest_ok = 0;
    for probe in 0..PROBES {
        let started = Instant::now();
        let healthy = client.get(format!("http://{addr}/health")).send().await;
        let took = started.elapsed();
        health_max = health_max.max(if healthy.is_ok() {
            took
        } else {
            Duration::from_secs(10)
        });
        let model = serde_json::json!({
            "name": format!("honest {probe}"), "customer": "c", "industry": "saas",
            "currency": "USD", "horizon_months": 12, "discount_rate": 0.1,
            "costs": { "one_off": 1000, "monthly": 10 },
            "drivers": [{ "name": "a", "category": "revenue", "unit_value": 10,
                          "quantity": { "dist": "fixed", "value": 5 } }]
        });
        let created = client
            .post(format!("http://{addr}/api/v1/value-models"))
            .bearer_auth(&honest)
            .json(&model)
            .send()
            .await;
        if created.is_ok_and(|response| response.status().is_success()) {
            honest_ok += 1;
        }
    }
    let (rss_mb, peak_rss_mb) = memory_mb(pid)?;
    drop(sockets);
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(StalledRun {
        limits: if lifted { "lifted" } else { "default" }.into(),
        connections,
        rss_mb,
        peak_rss_mb,
        health_max_ms: health_max.as_secs_f64() * 1000.0,
        honest_ok,
        honest_sent: PROBES,
    })
}

/// Resident memory now and at its peak (VmRSS, VmHWM), in MB.
fn memory_mb(pid: u32) -> Result<(f64, f64), BenchError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .ok_or_else(|| BenchError::Node(format!("no {name} in /proc status")))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}
