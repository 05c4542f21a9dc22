//! `valueverse-bench dashboard`: what the dashboard costs a node. A `valueverse serve`
//! process runs on a scratch SQLite file; its CPU time is
//! read from /proc while 0, 1, then N WebSocket viewers watch. The first
//! run is the baseline (nobody watching): the others are reported beside it.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct ViewerRun {
    /// Whether the node served the dashboard (`--no-dashboard` otherwise).
    pub dashboard: bool,
    pub viewers: usize,
    pub seconds: f64,
    /// CPU time of the node process over wall time, in percent of one core.
    pub cpu_percent: f64,
    /// Frames each viewer received per second.
    pub frames_per_viewer_per_second: f64,
    pub bytes_per_frame: f64,
}

use crate::process::BenchError;

/// Measures a node without the dashboard (the baseline), then a node with
/// it under each viewer count, `seconds` each. `progress` is told the
/// seconds measured so far.
pub async fn run(
    exe: &Path,
    viewer_counts: &[usize],
    seconds: u64,
    mut progress: impl FnMut(u64),
) -> Result<Vec<ViewerRun>, BenchError> {
    let mut measured = 0;
    let mut runs = measure(exe, false, &[0], seconds, &mut measured, &mut progress).await?;
    runs.extend(
        measure(
            exe,
            true,
            viewer_counts,
            seconds,
            &mut measured,
            &mut progress,
        )
        .await?,
    );
    Ok(runs)
}

async fn measure(
    exe: &Path,
    dashboard: bool,
    viewer_counts: &[usize],
    seconds: u64,
    measured: &mut u64,
    progress: &mut impl FnMut(u64),
) -> Result<Vec<ViewerRun>, BenchError> {
    let db = std::env::temp_dir().join(format!(
        "valueverse-dashboard-bench-{}.db",
        uuid::Uuid::new_v4()
    ));
    let mut command = tokio::process::Command::new(exe);
    command
        .args(["serve", "--dev", "--http", "127.0.0.1:0", "--database-url"])
        .arg(format!("sqlite://{}", db.display()));
    if !dashboard {
        command.arg("--no-dashboard");
    }
    command.env("VALUEVERSE_LOG", "warn");
    let (mut child, pid, addr) = crate::process::serve_process(command)
        .await
        .map_err(BenchError::Node)?;
    // Start-up work (migrations, first view) is not the idle cost.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut runs = Vec::new();
    for &viewers in viewer_counts {
        let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..viewers {
            let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/dashboard"))
                .await
                .map_err(|error| BenchError::Viewer(error.to_string()))?;
            let (received, bytes) = (received.clone(), bytes.clone());
            tasks.push(tokio::spawn(async move {
                let (_, mut read) = socket.split();
                while let Some(Ok(message)) = read.next().await {
                    received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    bytes.fetch_add(message.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }));
        }
        // Let the viewers settle in (first frames) before measuring.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let frames_before = received.load(std::sync::atomic::Ordering::Relaxed);
        let bytes_before = bytes.load(std::sync::atomic::Ordering::Relaxed);
        let cpu_before = cpu_seconds(pid)?;
        let started = Instant::now();
        for _ in 0..seconds {
            tokio::time::sleep(Duration::from_secs(1)).await;
            *measured += 1;
            progress(*measured);
        }
        let wall = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds(pid)? - cpu_before;
        let frames = received.load(std::sync::atomic::Ordering::Relaxed) - frames_before;
        let frame_bytes = bytes.load(std::sync::atomic::Ordering::Relaxed) - bytes_before;
        for task in tasks {
            task.abort();
        }
        runs.push(ViewerRun {
            dashboard,
            viewers,
            seconds: wall,
            cpu_percent: cpu / wall * 100.0,
            frames_per_viewer_per_second: if viewers == 0 {
                0.0
            } else {
                frames as f64 / viewers as f64 / wall
            },
            bytes_per_frame: if frames == 0 {
                0.0
            } else {
                frame_bytes as f64 / frames as f64
            },
        });
        // The node notices the viewers left before the next run.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let _ = child.kill().await;
    for suffix in ["", "-shm", "-wal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    Ok(runs)
}

/// User plus system CPU time of a process, all threads, from /proc.
fn cpu_seconds(pid: u32) -> Result<f64, BenchError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields are counted after its `)`.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| BenchError::Node("unreadable /proc stat".into()))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of the line, 11 and 12 after `)`.
    let ticks = |index: usize| -> Result<f64, BenchError> {
        fields
            .get(index)
            .and_then(|field| field.parse::<f64>().ok())
            .ok_or_else(|| BenchError::Node("unreadable /proc stat".into()))
    };
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Ok((ticks(11)? + ticks(12)?) / per_second)
}
