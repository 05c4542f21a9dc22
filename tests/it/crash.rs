//! Crash safety of sagas, for real: the release binary runs as a child
//! process, is killed with SIGKILL at random moments while many sagas run
//! (some with a failure injected), and is restarted; in the end every saga
//! is completed or compensated, and every agent's table agrees with it,
//! each change applied once.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};

use crate::support::{BACKENDS, TestDb, get_json};
use crate::value_models::acme;

/// The release binary: `VALUEVERSE_RELEASE_BIN` (`.ci/run` builds it), or
/// built here into a target directory of its own (no lock shared with the
/// `cargo test` that runs this).
pub(crate) fn release_binary() -> PathBuf {
    if let Ok(path) = std::env::var("VALUEVERSE_RELEASE_BIN") {
        return PathBuf::from(path);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target").join("crash-test");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--quiet",
            "--bin",
            "valueverse",
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(&root)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "the release build failed");
    target.join("release").join("valueverse")
}

/// A node as a child process; answers it and its base URL.
pub(crate) fn spawn(binary: &PathBuf, url: &str) -> (Child, String) {
    start_child(serve_command(binary, url))
        .unwrap_or_else(|stderr| panic!("the node did not start: {stderr}"))
}

/// The command line of a single node in development mode.
pub(crate) fn serve_command(binary: &PathBuf, url: &str) -> Command {
    let mut command = Command::new(binary);
    command.args([
        "serve",
        "--dev",
        "--http",
        "127.0.0.1:0",
        "--database-url",
        url,
    ]);
    command
}

/// Starts a node process (logging at warn) and waits for the line that
/// gives its HTTP address; answers it and its API base URL, or what it
/// wrote on stderr when it exited instead.
pub(crate) fn start_child(mut command: Command) -> Result<(Child, String), String> {
    let mut child = command
        .env("VALUEVERSE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the node starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let Some(line) = lines.find_map(|line| line.ok().filter(|line| line.contains("listening on")))
    else {
        let output = child.wait_with_output().unwrap();
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    };
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || BufReader::new(stderr).lines().for_each(drop));
    let address = line.rsplit("http://").next().unwrap().trim().to_owned();
    // Keep draining stdout so the child never blocks on it.
    std::thread::spawn(move || lines.for_each(drop));
    Ok((child, format!("http://{address}/api/v1")))
}

pub(crate) fn body(index: usize) -> Value {
    let steps = ["design", "simulate", "commit", "plan", "amplify"];
    // Every third saga fails at some step, the rest complete.
    let fail_step = index.is_multiple_of(3).then(|| steps[index % steps.len()]);
    json!({
        "model": acme(),
        "confidence": 0.8,
        "terms": { "fixed_fee": 1000, "outcome_share": 0.1, "cap": null },
        "milestones": [{ "name": "go live", "due_date": "2027-06-30", "expected_value": 1000 }],
        "start_date": "2027-01-01",
        "paths": 10_000,
        "fail_step": fail_step,
    })
}

pub(crate) async fn start_some(
    client: &reqwest::Client,
    base: &str,
    from: usize,
    count: usize,
    ids: &mut Vec<(usize, String)>,
) {
    for index in from..from + count {
        // The node may be dying: a refused request is simply not a saga.
        let Ok(response) = client
            .post(format!("{base}/sagas/value-creation"))
            .json(&body(index))
            .send()
            .await
        else {
            continue;
        };
        if response.status() == reqwest::StatusCode::ACCEPTED
            && let Ok(saga) = response.json::<Value>().await
        {
            ids.push((index, saga["id"].as_str().unwrap().to_owned()));
        }
    }
}

pub(crate) fn kill_9(child: &mut Child) {
    let killed = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_survive_kill_9_at_random_moments() {
    let binary = tokio::task::spawn_blocking(release_binary).await.unwrap();
    for backend in BACKENDS {
        let db = TestDb::new(backend).await;
        let client = reqwest::Client::new();
        let mut ids = Vec::new();
        let (mut child, mut base) = spawn(&binary, &db.url);
        let mut rng = rand::rng();
        for round in 0..6 {
            start_some(&client, &base, round * 8, 8, &mut ids).await;
            tokio::time::sleep(Duration::from_millis(rng.random_range(20..300))).await;
            kill_9(&mut child);
            (child, base) = spawn(&binary, &db.url);
        }
        assert!(ids.len() >= 30, "{} sagas started", ids.len());

        let sagas = wait_until_final(&client, &base, &ids).await;
        kill_9(&mut child);
        check_agent_tables(&db, &sagas).await;
    }
}

/// Waits until every saga of `ids` is completed or compensated; answers
/// them with the index each was started with.
pub(crate) async fn wait_until_final(
    client: &reqwest::Client,
    base: &str,
    ids: &[(usize, String)],
) -> Vec<(usize, Value)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut sagas = Vec::new();
    for (index, id) in ids {
        let saga = loop {
            let saga = get_json(client, &format!("{base}/sagas/{id}")).await;
            if saga["status"] == "completed" || saga["status"] == "compensated" {
                break saga;
            }
            assert!(Instant::now() < deadline, "saga {id} stuck: {saga}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        sagas.push((*index, saga));
    }
    sagas
}

/// The agents' tables agree with each saga, each change made once.
pub(crate) async fn check_agent_tables(db: &TestDb, sagas: &[(usize, Value)]) {
    let backend = &db.url;
    let store = db.store().await;

    for (index, saga) in sagas {
        let id = saga["id"].as_str().unwrap();
        let completed = saga["status"] == "completed";
        assert_eq!(
            completed,
            index % 3 != 0,
            "{backend:?} saga {index}: {saga}"
        );
        let row = |table: &'static str, key: String| {
            let store = store.clone();
            async move { store.load_record(table, &key).await.unwrap() }
        };
        let field = |body: &str, name: &str| -> Value {
            serde_json::from_str::<Value>(body).unwrap()[name].clone()
        };
        let model = row("value_models", format!("{id}-model")).await;
        let commitment = row("commitments", format!("{id}-commitment")).await;
        let plan = row("plans", format!("{id}-plan")).await;
        if completed {
            let (version, model) = model.expect("the model");
            assert_eq!((version, field(&model, "status")), (1, json!("active")));
            let (version, commitment) = commitment.expect("the commitment");
            assert_eq!(
                (version, field(&commitment, "status")),
                (1, json!("active"))
            );
            let (version, plan) = plan.expect("the plan");
            assert_eq!((version, field(&plan, "status")), (1, json!("active")));
            let (_, amplification) = row("amplifications", format!("{id}-model"))
                .await
                .expect("the baseline");
            // A baseline per plan, active.
            let plans = &serde_json::from_str::<Value>(&amplification).unwrap()["plans"];
            let plan = &plans[format!("{id}-plan")];
            assert_eq!(plan["baseline"]["plan_id"], json!(format!("{id}-plan")));
            assert_eq!(plan["active"], json!(true));
        } else {
            // Made at most once and undone at most once: version 2 at most.
            for (what, record, undone) in [
                ("model", model, "archived"),
                ("commitment", commitment, "voided"),
                ("plan", plan, "cancelled"),
            ] {
                if let Some((version, body)) = record {
                    assert!(version <= 2, "{what} of {id} written {version} times");
                    assert_eq!(field(&body, "status"), json!(undone), "{what} of {id}");
                }
            }
            if let Some((_, amplification)) = row("amplifications", format!("{id}-model")).await {
                let plans = &serde_json::from_str::<Value>(&amplification).unwrap()["plans"];
                assert!(
                    plans[format!("{id}-plan")].is_null(),
                    "baseline of {id} removed: {plans}"
                );
            }
        }
    }
    store.close().await;
}
