//! `runnel fn run`, the local test harness: example components built from source run over
//! records from stdin, with no broker.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds a guest crate of the repository for wasm32-wasip2; the component's path.
fn build(dir: &str, name: &str) -> PathBuf {
    let host_target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repository().join("target"));
    let target = host_target.join("wasm-guests");
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()))
        .args(["build", "--quiet", "--locked", "--release"])
        .args(["--target", "wasm32-wasip2", "--manifest-path"])
        .arg(repository().join(dir).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .output()
        .expect("run cargo");
    assert!(
        output.status.success(),
        "building {dir}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    target.join(format!("wasm32-wasip2/release/{name}.wasm"))
}

fn run_fn(args: &[&str], wasm: &Path, stdin: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut command = runnel(dir.path());
    command.args(["fn", "run"]).arg(wasm).args(args);
    run_with_stdin(command, stdin)
}

fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn a_transform_and_a_consumer_run_over_records_from_stdin() {
    let uppercase = build("examples/functions/uppercase", "uppercase");
    let outputs = json_lines(&run_fn(
        &["--key-separator", ":"],
        &uppercase,
        "u1:ana\nu2:Zeca\n",
    ));
    let values: Vec<(&str, &str)> = outputs
        .iter()
        .map(|o| (o["key"].as_str().unwrap(), o["value"].as_str().unwrap()))
        .collect();
    assert_eq!(values, vec![("u1", "ANA"), ("u2", "ZECA")]);

    // JSON input with headers, and batches of one record.
    let outputs = json_lines(&run_fn(
        &["--format", "json", "--batch-records", "1"],
        &uppercase,
        "{\"value\": \"x\", \"headers\": {\"h\": \"v\"}}\n{\"value\": \"y\"}\n",
    ));
    assert_eq!(outputs.len(), 2);
    assert_eq!(outputs[0]["headers"]["h"], "v");

    let word_count = build("examples/functions/word-count", "word_count");
    let counted = json_lines(&run_fn(
        &["--kind", "consumer"],
        &word_count,
        "to be\nor not to be\n",
    ));
    let last: Vec<(&str, &str)> = counted
        .iter()
        .map(|o| (o["key"].as_str().unwrap(), o["value"].as_str().unwrap()))
        .collect();
    assert_eq!(last.last(), Some(&("be", "2")));
    assert_eq!(last.len(), 6);
}

#[test]
fn failures_are_one_line_errors() {
    let uppercase = build("examples/functions/uppercase", "uppercase");
    // A transform is not a consumer.
    let refused = run_fn(&["--kind", "consumer"], &uppercase, "a\n");
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.starts_with("error: not a valid consumer component"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");

    let missing = run_fn(&[], Path::new("/nonexistent.wasm"), "");
    assert_eq!(missing.status.code(), Some(2));
}
