//! What the benchmarks that run node processes share: starting a
//! `valueverse serve` and waiting for its address, finding that binary, and
//! the error they end with.

use std::path::{Path, PathBuf};

/// Why a benchmark that runs node processes could not finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot run the node: {0}")]
    Io(#[from] std::io::Error),
    #[error("the node process: {0}")]
    Node(String),
    #[error("a viewer could not connect: {0}")]
    Viewer(String),
}

/// Starts `command` (a `valueverse serve`, stdout piped) and waits for
/// it to say where it listens: the child, its pid and `host:port`.
pub async fn serve_process(
    mut command: tokio::process::Command,
) -> Result<(tokio::process::Child, u32, String), String> {
    use tokio::io::AsyncBufReadExt;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| error.to_string())?;
    let pid = child.id().ok_or("exited at once")?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    loop {
        match lines.next_line().await.map_err(|error| error.to_string())? {
            Some(line) if line.contains("listening on http://") => {
                let addr = line
                    .rsplit("http://")
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                // Keep reading, so the node never blocks on a full pipe.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                return Ok((child, pid, addr));
            }
            Some(_) => {}
            None => return Err("exited before listening".into()),
        }
    }
}

/// The `valueverse` binary the process benchmarks run: `explicit`, or the
/// one beside this executable (`cargo build --release --workspace` puts
/// both in `target/release/`).
pub fn node_binary(explicit: Option<&Path>) -> Result<PathBuf, BenchError> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()?.with_file_name("valueverse"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(BenchError::Node(format!(
            "no `valueverse` binary at {} (build it: cargo build --release --workspace, or pass --valueverse PATH)",
            path.display()
        )))
    }
}
