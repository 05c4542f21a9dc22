//! The `valueverse` binary: configuration errors, migrate, and serve started
//! as a real process on both stores.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{BACKENDS, Backend, TestDb};

/// Runs the CLI with `args`, which must succeed, and parses its JSON output.
fn json_of(args: &[&str]) -> serde_json::Value {
    let output = valueverse().args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn valueverse() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_valueverse"));
    // The developer's own environment must not leak into these checks.
    for (name, _) in std::env::vars() {
        if name.starts_with("VALUEVERSE_") {
            command.env_remove(name);
        }
    }
    command
}

#[test]
fn serve_help_documents_every_option() {
    let output = valueverse().args(["serve", "--help"]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for option in [
        "--config",
        "--node-name",
        "--http",
        "--database-url",
        "--database-max-connections",
        "--log",
        "--log-format",
        "--http-workers",
        "--workers",
        "--mailbox-capacity",
        "--passivate-after",
        "--ask-timeout",
        "VALUEVERSE_HTTP_ADDR",
        "VALUEVERSE_DATABASE_URL",
    ] {
        assert!(help.contains(option), "`{option}` missing from:\n{help}");
    }
}

#[test]
fn a_node_refuses_sqlite_and_a_missing_or_short_secret() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("x.db").display());
    let postgres = "postgres://postgres@127.0.0.1:5432/never_created";
    let cases = [
        (
            sqlite.as_str(),
            Some("a-long-enough-secret-123"),
            "PostgreSQL",
        ),
        (postgres, None, "cluster.secret"),
        (postgres, Some("short"), "cluster.secret"),
    ];
    for (url, secret, needle) in cases {
        let mut command = valueverse();
        command
            .args(["node", "--name", "n1", "--database-url", url])
            .env_remove("VALUEVERSE_CLUSTER_SECRET")
            .stdin(Stdio::null());
        if let Some(secret) = secret {
            command.args(["--secret", secret]);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{url} {secret:?} must fail");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
    }
}

#[test]
fn bad_values_stop_start_up_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("x.db").display());
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[runtime]\nworkers = \"many\"\n").unwrap();
    // (flags, environment, what the error must name)
    type Case<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["--mailbox-capacity".into(), "0".into()],
            vec![],
            "runtime.mailbox_capacity",
        ),
        (
            vec!["--http".into(), "not-an-address".into()],
            vec![],
            "--http",
        ),
        (
            vec![],
            vec![("VALUEVERSE_PASSIVATE_AFTER", "soonish")],
            "--passivate-after",
        ),
        (
            vec!["--config".into(), config.display().to_string()],
            vec![],
            "workers",
        ),
        (
            vec!["--database-url".into(), "mysql://x".into()],
            vec![],
            "database_url",
        ),
        (vec!["--log".into(), "[[".into()], vec![], "log"),
    ];
    for (args, env, needle) in cases {
        let output = valueverse()
            .arg("serve")
            .env("VALUEVERSE_DATABASE_URL", &db)
            .args(&args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} must fail");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?} {env:?}: `{needle}` not in: {stderr}"
        );
    }
}

#[test]
fn an_unreachable_store_is_named_once_and_stops_start_up() {
    let output = valueverse()
        .args(["serve", "--database-url", "sqlite:///nonexistent/dir/x.db"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("cannot open the store at sqlite:///nonexistent/dir/x.db"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("unable to open database file").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn migrate_applies_the_migrations_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    let output = valueverse()
        .args([
            "migrate",
            "--database-url",
            &format!("sqlite://{}", path.display()),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("migrations applied"));
    assert!(path.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_a_node_until_sigterm() {
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let mut child = valueverse()
            .args(["serve", "--http", "127.0.0.1:0", "--database-url", &db.url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .map(Result::unwrap)
                .find(|line| line.contains("listening on"))
                .expect("serve announces its address")
        })
        .await
        .unwrap();
        let address = line
            .trim()
            .rsplit("http://")
            .next()
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        let ready: serde_json::Value = reqwest::get(format!("http://{address}/ready"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let expected = if backend == Backend::Sqlite {
            "sqlite"
        } else {
            "postgres"
        };
        assert_eq!(ready["store"], expected);
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        assert!(output.status.success(), "clean exit on SIGTERM: {output:?}");
        // A fresh database has no key: the log says how to make one.
        let log = String::from_utf8_lossy(&output.stderr);
        assert!(
            log.contains("no API keys yet") && log.contains("valueverse apikey create"),
            "{log}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn simulate_prints_a_summary_or_json_and_refuses_bad_models() {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/models/acme-support.json");
    let result = json_of(&[
        "simulate", model, "--paths", "20000", "--seed", "3", "--json",
    ]);
    assert_eq!(result["paths"], 20000);
    assert_eq!(result["engine"], "cpu");
    let p = &result["npv"]["percentiles"];
    assert!(p["p5"].as_f64().unwrap() < p["p50"].as_f64().unwrap());
    assert!(p["p50"].as_f64().unwrap() < p["p95"].as_f64().unwrap());
    assert_eq!(result["sensitivity"].as_array().unwrap().len(), 5);
    let again = valueverse()
        .args([
            "simulate", model, "--paths", "20000", "--seed", "3", "--json",
        ])
        .output()
        .unwrap();
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(result["npv"], again["npv"], "a seed reproduces its result");

    let table = valueverse()
        .args(["simulate", model, "--paths", "5000"])
        .output()
        .unwrap();
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(
        text.contains("NPV (USD)") && text.contains("Tornado"),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model).unwrap()).unwrap();
    value["drivers"][0]["quantity"]["max"] = 10.into();
    std::fs::write(&bad, value.to_string()).unwrap();
    for args in [
        vec!["simulate".to_owned(), bad.display().to_string()],
        vec![
            "simulate".to_owned(),
            model.to_owned(),
            "--paths".into(),
            "0".into(),
        ],
        vec!["simulate".to_owned(), "/nonexistent.json".into()],
    ] {
        let output = valueverse().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!stderr.is_empty());
    }
    let output = valueverse()
        .args(["simulate", &bad.display().to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("drivers[0].quantity.mode"), "{stderr}");
    // Without a GPU, `--device gpu` says why; `auto` runs on the CPU.
    if valueverse::gpu::cuda::probe().is_err() {
        let output = valueverse()
            .args(["simulate", model, "--paths", "1000", "--device", "gpu"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains("no GPU engine"), "{stderr}");
        let output = valueverse()
            .args(["simulate", model, "--paths", "1000", "--json"])
            .output()
            .unwrap();
        assert!(output.status.success());
        let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(result["engine"], "cpu");
    }
}

#[test]
fn apikey_create_prints_a_key_once_and_list_and_revoke_manage_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keys.db").display());
    let created = valueverse()
        .args([
            "apikey",
            "create",
            "--role",
            "admin",
            "--name",
            "ops",
            "--database-url",
            &url,
        ])
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("vv_") && key.len() == 46, "{key}");
    let listed = valueverse()
        .args(["apikey", "list", "--database-url", &url])
        .output()
        .unwrap();
    let text = String::from_utf8(listed.stdout).unwrap();
    assert!(
        text.contains("admin") && text.contains("live") && text.contains("ops"),
        "{text}"
    );
    assert!(!text.contains(&key), "the key is never shown again");
    let id = text.split_whitespace().next().unwrap().to_owned();
    let revoked = valueverse()
        .args(["apikey", "revoke", &id, "--database-url", &url])
        .output()
        .unwrap();
    assert!(revoked.status.success());
    let again = valueverse()
        .args(["apikey", "revoke", &id, "--database-url", &url])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no live API key"));
    let bad_role = valueverse()
        .args(["apikey", "create", "--role", "root", "--database-url", &url])
        .output()
        .unwrap();
    assert!(!bad_role.status.success());
    assert!(String::from_utf8_lossy(&bad_role.stderr).contains("root"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_launches_nodes_that_form_a_cluster_and_stops_them() {
    let db = crate::support::TestDb::new(crate::support::Backend::Postgres).await;
    let (mut child, urls) = cluster_up(&db.url, 2).await;
    assert_eq!(urls.len(), 2, "{urls:?}");
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for url in &urls {
        loop {
            let view = crate::support::get_json(&client, &format!("{url}/cluster")).await;
            let alive = view["members"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|member| member["state"] == "alive")
                .count();
            if alive == 2 && view["clustered"] == true {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{view}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    // Each node serves the dashboard the summary points to.
    for url in &urls {
        let page = client
            .get(url.replace("/api/v1", "/dashboard"))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), reqwest::StatusCode::OK);
    }
    // Ctrl-C stops every node, and the launcher exits cleanly.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait())
        .await
        .expect("the launcher stops")
        .unwrap();
    assert!(status.success(), "{status}");
    for url in &urls {
        assert!(
            client.get(format!("{url}/cluster")).send().await.is_err(),
            "{url} still answers"
        );
    }
    // A launcher killed outright takes its nodes with it (no orphans).
    let (mut child, urls) = cluster_up(&db.url, 1).await;
    child.kill().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while client
        .get(format!("{}/cluster", urls[0]))
        .send()
        .await
        .is_ok()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the node outlived its launcher"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `valueverse cluster up --nodes N --dev`, with each node's API base URL
/// once it printed how to try them.
async fn cluster_up(url: &str, nodes: usize) -> (tokio::process::Child, Vec<String>) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_valueverse"))
        .args(["cluster", "up", "--dev", "--database-url", url])
        .args(["--nodes", &nodes.to_string()])
        .env("VALUEVERSE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut urls = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.starts_with("| n") && line.contains("http://") {
            // | node | dashboard | HTTP API | members |
            let columns: Vec<&str> = line.split('|').map(str::trim).collect();
            assert!(columns[2].ends_with("/dashboard"), "{line}");
            urls.push(columns[3].to_owned());
        }
        if line.starts_with("Ctrl-C") {
            break;
        }
    }
    assert_eq!(urls.len(), nodes, "{urls:?}");
    // Keep reading, so the launcher never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, urls)
}

/// Small leaks, each tried first: the database URL's password in `--help`,
/// terminal escapes in a key's name reaching an admin's terminal, a SQLite
/// file readable by other users, and `VALUEVERSE_DEV=1` (as README says)
/// refused.
#[test]
fn the_cli_keeps_passwords_escapes_and_files_to_itself() {
    let help = valueverse()
        .args(["serve", "--help"])
        .env("VALUEVERSE_DATABASE_URL", "postgres://u:hunter2@db/vv")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success());
    assert!(!text.contains("hunter2"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keys.db").display());
    let forged = "ci\u{1b}[2J\u{1b}[31mFORGED admin key\n";
    let refused = valueverse()
        .args(["apikey", "create", "--role", "viewer", "--name", forged])
        .args(["--database-url", &url])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "a name with control characters");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("control characters"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // One stored by an older build is still shown escaped.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = valueverse::store::Store::open(&url, 1).await.unwrap();
        valueverse::auth::create_key(
            &store,
            &valueverse::actors::Tenant::default_tenant(),
            valueverse::auth::Role::Viewer,
            forged,
        )
        .await
        .unwrap();
        store.close().await;
    });
    let listed = valueverse()
        .args(["apikey", "list", "--database-url", &url])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listed.stdout);
    assert!(!listing.contains('\u{1b}'), "{listing:?}");
    assert_eq!(listing.lines().count(), 1, "{listing:?}");
    assert!(listing.contains("\\u{1b}[2J"), "{listing:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("keys.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the database file is {mode:o}");
    }

    let mut serve = valueverse()
        .args(["serve", "--http", "127.0.0.1:0", "--database-url", &url])
        .env("VALUEVERSE_DEV", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = serve.stdout.take().unwrap();
    let started = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("listening on"));
    let _ = serve.kill();
    let output = serve.wait_with_output().unwrap();
    assert!(
        started,
        "VALUEVERSE_DEV=1 stopped start-up: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `valueverse import`: a file read and checked here, sent in chunks with a
/// progress bar, idempotent on the row id; a file with errors names each
/// row and column and imports nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_sends_a_file_of_deliveries_to_a_plan() {
    use crate::support::{Started, send, start_node};
    let db = TestDb::new(Backend::Sqlite).await;
    let Started {
        node, api: base, ..
    } = start_node(&db, |_| {}).await;
    let client = reqwest::Client::new();
    let (_, commitment_id) = crate::plans::committed_model(&client, &base).await;
    let (_, plan) = send(
        client
            .post(format!("{base}/plans"))
            .json(&serde_json::json!({
                "commitment_id": commitment_id, "start_date": "2026-01-01",
            })),
    )
    .await;
    let plan_id = plan["id"].as_str().unwrap().to_owned();
    let root = base.trim_end_matches("/api/v1").to_owned();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("realized.csv");
    let mut text = String::from("Row,driver,value,date\n");
    for row in 0..2500 {
        text.push_str(&format!(
            "r{row},churn avoided,10,2026-02-{:02}\n",
            row % 28 + 1
        ));
    }
    std::fs::write(&good, text).unwrap();
    let run = |file: std::path::PathBuf| {
        let (root, plan_id) = (root.clone(), plan_id.clone());
        tokio::task::spawn_blocking(move || {
            valueverse()
                .args([
                    "import",
                    "--plan",
                    &plan_id,
                    "--url",
                    &root,
                    "--id-column",
                    "Row",
                ])
                .arg(file)
                .output()
                .unwrap()
        })
    };
    let output = run(good.clone()).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("2500 rows, 2500 recorded"), "{stdout}");
    let (_, plan) = send(client.get(format!("{base}/plans/{plan_id}"))).await;
    assert_eq!(plan["realized_value"], 25000.0);
    let output = run(good).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("0 recorded, 2500 already recorded"),
        "{stdout}"
    );

    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "Row,driver,value,date\nb1,churn avoided,ten,2026-02-01\n",
    )
    .unwrap();
    let output = run(bad).await.unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("row 2, column `value`"), "{stderr}");
    assert!(stderr.contains("nothing was imported"), "{stderr}");
    drop(client);
    node.stop().await.unwrap();
}
