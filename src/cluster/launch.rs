//! `valueverse cluster up`: N local nodes as child processes of this one,
//! on free ports, sharing one PostgreSQL database. It prints what a person
//! needs to try the cluster, prefixes each node's log lines with its name,
//! says so loudly when a node exits (it is never restarted behind anyone's
//! back), and stops every node on Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// What `cluster up` launches.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    pub nodes: usize,
    pub database_url: String,
    /// The shared secret; a random one when `None`.
    pub secret: Option<String>,
    /// Pass `--dev` to every node (no API keys checked).
    pub dev: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot find a free port: {0}")]
    Ports(#[source] std::io::Error),
    #[error("cannot start node {node}: {source}")]
    Spawn {
        node: String,
        #[source]
        source: std::io::Error,
    },
    #[error("node {node} exited before it listened; its last words: {stderr}")]
    NotStarted { node: String, stderr: String },
    #[error("cannot listen for Ctrl-C: {0}")]
    Signal(#[source] std::io::Error),
    #[error("every node has exited")]
    AllExited,
}

struct Launched {
    name: String,
    child: Child,
    http: String,
    gossip: String,
}

/// A port free for TCP and UDP on loopback now.
fn free_port() -> Result<u16, LaunchError> {
    for _ in 0..100 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").map_err(LaunchError::Ports)?;
        let port = tcp.local_addr().map_err(LaunchError::Ports)?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(LaunchError::Ports(std::io::Error::other(
        "no port free for both TCP and UDP",
    )))
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Runs the cluster until Ctrl-C or SIGTERM; `exe` is this program.
pub async fn up(exe: &Path, options: LaunchOptions) -> Result<(), LaunchError> {
    let secret = options
        .secret
        .clone()
        .unwrap_or_else(|| hex::encode(rand::random::<[u8; 24]>()));
    let mut ports = Vec::new();
    for _ in 0..options.nodes {
        ports.push((free_port()?, free_port()?, free_port()?));
    }
    let seeds: Vec<String> = ports
        .iter()
        .map(|(_, gossip, _)| loopback(*gossip).to_string())
        .collect();
    let mut launched: Vec<Launched> = Vec::new();
    for (index, (transport, gossip, http)) in ports.iter().enumerate() {
        let name = format!("n{}", index + 1);
        let mut command = Command::new(exe);
        command
            .arg("node")
            .args(["--name", &name])
            .args(["--http", &loopback(*http).to_string()])
            .args(["--listen", &loopback(*transport).to_string()])
            .args(["--gossip", &loopback(*gossip).to_string()])
            .args(["--seeds", &seeds.join(",")])
            .args(["--database-url", &options.database_url])
            .env("VALUEVERSE_CLUSTER_SECRET", &secret)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if options.dev {
            command.arg("--dev");
        }
        // SAFETY: between fork and exec only `prctl` runs, which is
        // async-signal-safe. If this launcher dies without its Ctrl-C path
        // (SIGKILL), its nodes get SIGTERM instead of living on orphaned.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                    .map_err(std::io::Error::from)
            });
        }
        if std::env::var_os("VALUEVERSE_LOG").is_none() {
            // Warnings, and the cluster's own news (joins, leaves, moves).
            command.env("VALUEVERSE_LOG", "warn,valueverse::cluster=info");
        }
        match start(command, &name, loopback(*gossip).to_string()).await {
            Ok(node) => launched.push(node),
            Err(error) => {
                stop_all(&mut launched).await;
                return Err(error);
            }
        }
    }
    print_summary(&launched, &options, &secret);
    let outcome = watch(&mut launched).await;
    stop_all(&mut launched).await;
    println!("all nodes stopped");
    outcome
}

/// Starts one node and waits for the line with its HTTP address; its log
/// lines go on to this process's stderr, prefixed with its name.
async fn start(mut command: Command, name: &str, gossip: String) -> Result<Launched, LaunchError> {
    let mut child = command.spawn().map_err(|source| LaunchError::Spawn {
        node: name.to_owned(),
        source,
    })?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let (last_words, mut said) = tokio::sync::watch::channel(String::new());
    let prefix = format!("[{name}]");
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("{prefix} {line}");
            last_words.send_replace(line);
        }
    });
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let mut http = None;
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(address) = line.strip_prefix("valueverse listening on ") {
            http = Some(address.trim().to_owned());
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    match http {
        Some(http) => Ok(Launched {
            name: name.to_owned(),
            child,
            http,
            gossip,
        }),
        None => {
            let _ = child.wait().await;
            // The stderr task may still be printing the last line.
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err(LaunchError::NotStarted {
                node: name.to_owned(),
                stderr: said.borrow_and_update().clone(),
            })
        }
    }
}

fn print_summary(launched: &[Launched], options: &LaunchOptions, secret: &str) {
    println!(
        "cluster of {} nodes up on {}",
        launched.len(),
        valueverse_store::redact_url(&options.database_url)
    );
    println!();
    println!("| node | dashboard | HTTP API | members |");
    println!("|---|---|---|---|");
    for node in launched {
        println!(
            "| {} | {}/dashboard | {}/api/v1 | {}/api/v1/cluster |",
            node.name, node.http, node.http, node.http
        );
    }
    let first = &launched[0].http;
    println!();
    if options.dev {
        println!("development mode: no API key needed. Try:");
        println!("  curl -s {first}/api/v1/cluster");
    } else {
        println!("create an API key, then try:");
        println!(
            "  valueverse apikey create --role admin --database-url {}",
            valueverse_store::redact_url(&options.database_url)
        );
        println!("  curl -s -H \"Authorization: Bearer $KEY\" {first}/api/v1/cluster");
    }
    let shown = if options.secret.is_some() {
        "<the secret you gave>"
    } else {
        secret
    };
    println!(
        "another node joins with: VALUEVERSE_CLUSTER_SECRET={shown} valueverse node --name n{} \\\n    --seeds {} --database-url {}",
        launched.len() + 1,
        launched
            .iter()
            .map(|node| node.gossip.as_str())
            .collect::<Vec<_>>()
            .join(","),
        valueverse_store::redact_url(&options.database_url)
    );
    println!("Ctrl-C stops every node.");
}

/// Waits for Ctrl-C or SIGTERM, reporting every node that exits meanwhile.
async fn watch(launched: &mut [Launched]) -> Result<(), LaunchError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(LaunchError::Signal)?;
    let mut exited = vec![false; launched.len()];
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            result = tokio::signal::ctrl_c() => {
                result.map_err(LaunchError::Signal)?;
                println!("Ctrl-C: stopping every node");
                return Ok(());
            }
            _ = terminate.recv() => return Ok(()),
            _ = poll.tick() => {
                for (node, exited) in launched.iter_mut().zip(exited.iter_mut()) {
                    if *exited {
                        continue;
                    }
                    if let Ok(Some(status)) = node.child.try_wait() {
                        *exited = true;
                        eprintln!(
                            "NODE {} EXITED ({status}); it is not restarted. The others go on.",
                            node.name
                        );
                    }
                }
                if exited.iter().all(|exited| *exited) {
                    return Err(LaunchError::AllExited);
                }
            }
        }
    }
}

/// SIGTERM to every node (a clean stop releases its lease), then waits;
/// a node that has not stopped within 10 s is killed.
async fn stop_all(launched: &mut [Launched]) {
    for node in launched.iter() {
        if let Some(pid) = node.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    for node in launched.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(10), node.child.wait())
            .await
            .is_err()
        {
            let _ = node.child.kill().await;
        }
    }
}
