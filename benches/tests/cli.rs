//! The benchmark binary itself: `remote` runs its two processes and
//! reports every figure; bad counts are refused with the flag named; the
//! process benchmarks say where the node binary is missing.

use std::process::Command;

fn bench() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_valueverse-bench"));
    for (name, _) in std::env::vars() {
        if name.starts_with("VALUEVERSE_") {
            command.env_remove(name);
        }
    }
    command
}

fn json_of(args: &[&str]) -> serde_json::Value {
    let output = bench().args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn bench_remote_measures_two_processes_and_refuses_bad_counts() {
    let result = json_of(&[
        "remote",
        "--tells",
        "20000",
        "--asks",
        "640",
        "--concurrent-asks",
        "1280",
        "--json",
    ]);
    assert_eq!(result["tells"], 20000);
    assert_eq!(result["asks"], 640);
    assert_eq!(result["concurrent_asks"], 1280);
    for field in [
        "tells_per_second",
        "ask_p50_us",
        "ask_p99_us",
        "asks_per_second_in_flight",
        "tcp_ping_p99_us",
    ] {
        assert!(result[field].as_f64().unwrap() > 0.0, "{field}: {result}");
        if field != "tcp_ping_p99_us" {
            for path in ["agent_remote", "agent_local"] {
                let value = result[path][field].as_f64().unwrap();
                assert!(value > 0.0, "{path}.{field}: {result}");
            }
        }
    }
    for flag in ["--asks", "--concurrent-asks"] {
        let refused = bench().args(["remote", flag, "3"]).output().unwrap();
        assert!(!refused.status.success());
        assert!(String::from_utf8_lossy(&refused.stderr).contains(flag));
    }
}

#[test]
fn a_process_benchmark_names_the_node_binary_it_lacks() {
    let output = bench()
        .args(["dashboard", "--valueverse", "/nonexistent/valueverse"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/valueverse") && stderr.contains("--valueverse"),
        "{stderr}"
    );
}
