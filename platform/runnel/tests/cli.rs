//! The `runnel` CLI's client commands end to end against a real node: topics, produce,
//! consume, groups and the cluster, in tables and JSON, with the exit codes and one-line
//! errors scripts rely on.

mod common;

use std::process::Output;

use common::*;

struct Cli {
    dir: tempfile::TempDir,
    server: String,
    _node: Node,
}

impl Cli {
    fn start() -> Cli {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(dir.path(), &as_strs(&dev_args(&dir.path().join("data"))));
        let server = node.grpc.expect("a grpc line").to_string();
        Cli {
            dir,
            server,
            _node: node,
        }
    }

    /// Runs `runnel <args> --server <node>` with `stdin`.
    fn run_with(&self, args: &[&str], stdin: &str) -> Output {
        let mut command = runnel(self.dir.path());
        command.args(args).env("RUNNEL_SERVER", &self.server);
        run_with_stdin(command, stdin)
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, "")
    }

    /// Runs a command that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, "")
    }

    fn ok_with(&self, args: &[&str], stdin: &str) -> String {
        let output = self.run_with(args, stdin);
        assert!(
            output.status.success(),
            "runnel {args:?}: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

/// A failed command: its exit code and its single stderr line.
fn failure(output: &Output) -> (i32, String) {
    let stderr = String::from_utf8_lossy(&output.stderr)
        .trim_end()
        .to_string();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    (output.status.code().unwrap(), stderr)
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn topics_are_created_listed_described_altered_grown_and_deleted() {
    let cli = Cli::start();
    let created = cli.ok(&[
        "topic",
        "create",
        "orders",
        "-p",
        "3",
        "-c",
        "retention.ms=60000",
    ]);
    assert_eq!(created.trim(), "created topic orders (3 partitions)");
    let (code, error) = failure(&cli.run(&["topic", "create", "orders"]));
    assert_eq!(code, 1);
    assert!(error.starts_with("error: ALREADY_EXISTS: "), "{error}");

    let listed = cli.ok(&["topic", "list"]);
    let lines: Vec<&str> = listed.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{listed}");
    assert!(lines[1].starts_with("orders  "), "{listed}");
    let listed: serde_json::Value =
        serde_json::from_str(&cli.ok(&["topic", "list", "-o", "json"])).unwrap();
    assert_eq!(listed[0]["name"], "orders");
    assert_eq!(listed[0]["partitions"], 3);

    let described = cli.ok(&["topic", "describe", "orders"]);
    assert!(described.contains("retention.ms"), "{described}");
    assert!(
        described
            .lines()
            .any(|l| l.starts_with("retention.ms") && l.ends_with("topic")),
        "{described}"
    );
    let altered = cli.ok(&[
        "topic",
        "alter",
        "orders",
        "--delete",
        "retention.ms",
        "-o",
        "json",
    ]);
    let altered: serde_json::Value = serde_json::from_str(&altered).unwrap();
    assert_eq!(altered["configs"]["retention.ms"], "604800000");
    assert_eq!(
        cli.ok(&["topic", "add-partitions", "orders", "--total", "4"])
            .trim(),
        "topic orders now has 4 partitions"
    );
    let (code, error) = failure(&cli.run(&["topic", "describe", "nope"]));
    assert_eq!(
        (code, error.as_str()),
        (3, "error: NOT_FOUND: unknown topic \"nope\"")
    );
    cli.ok(&["topic", "delete", "orders"]);
    assert_eq!(failure(&cli.run(&["topic", "delete", "orders"])).0, 3);
    // A bad command line is 2, as clap's.
    assert_eq!(cli.run(&["topic", "create"]).status.code(), Some(2));
    assert_eq!(cli.run(&["topic", "alter", "x"]).status.code(), Some(2));
}

#[test]
fn lines_produced_are_consumed_with_keys_and_headers_and_groups_track_them() {
    let cli = Cli::start();
    cli.ok(&["topic", "create", "Usuarios", "-p", "2"]);
    let produced = cli.ok_with(
        &[
            "produce",
            "Usuarios",
            "--key-separator",
            ":",
            "-H",
            "source=cli",
            "-o",
            "json",
        ],
        "ana:Ana\nbruno:Bruno\nclara:Clara\nzeca:Zeca\n",
    );
    let positions = json_lines(&produced);
    assert_eq!(positions.len(), 4);
    // The same key goes to the same partition as Kafka's default partitioner puts it.
    for (key, position) in ["ana", "bruno", "clara", "zeca"].iter().zip(&positions) {
        assert_eq!(
            position["partition"],
            runnel_broker::partitioner::partition_for_key(key.as_bytes(), 2)
        );
    }

    let consumed = cli.ok(&[
        "consume",
        "Usuarios",
        "--from-beginning",
        "-n",
        "4",
        "--format",
        "json",
    ]);
    let records = json_lines(&consumed);
    assert_eq!(records.len(), 4);
    for record in &records {
        let key = record["key"].as_str().unwrap();
        let value = record["value"].as_str().unwrap();
        assert_eq!(value.to_lowercase(), key);
        assert_eq!(record["headers"]["source"], "cli");
        let position = positions
            .iter()
            .zip(["ana", "bruno", "clara", "zeca"])
            .find(|(_, k)| *k == key)
            .unwrap()
            .0;
        assert_eq!(
            (&record["partition"], &record["offset"]),
            (&position["partition"], &position["offset"])
        );
    }
    let text = cli.ok(&[
        "consume",
        "Usuarios",
        "-p",
        "0",
        "--offset",
        "0",
        "-n",
        "1",
        "--key-separator",
        "=",
    ]);
    assert!(text.trim().contains('='), "{text}");

    // A group: consume two records, then its lag; reset; JSON input.
    cli.ok(&["consume", "Usuarios", "--group", "teste", "-n", "2"]);
    let described: serde_json::Value =
        serde_json::from_str(&cli.ok(&["group", "describe", "teste", "-o", "json"])).unwrap();
    let lag: i64 = described["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["lag"].as_i64().unwrap())
        .sum();
    let committed: i64 = described["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["committed_offset"].as_i64().unwrap())
        .sum();
    assert_eq!(committed, 2, "{described}");
    assert!(lag <= 2, "{described}");
    let table = cli.ok(&["group", "describe", "teste"]);
    assert!(table.contains("LAG"), "{table}");
    // The consumer left the group when it exited (its stream closed); that happens on the
    // server a moment later.
    wait_until(
        || {
            let described: serde_json::Value =
                serde_json::from_str(&cli.ok(&["group", "describe", "teste", "-o", "json"]))
                    .unwrap();
            described["members"].as_array().unwrap().is_empty()
        },
        "the consumer has left the group",
    );
    let listed = cli.ok(&["group", "list"]);
    assert!(listed.lines().any(|l| l.starts_with("teste")), "{listed}");
    let reset: serde_json::Value = serde_json::from_str(&cli.ok(&[
        "group",
        "reset-offsets",
        "teste",
        "--topic",
        "Usuarios",
        "--to-earliest",
        "-o",
        "json",
    ]))
    .unwrap();
    let lag: i64 = reset["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["lag"].as_i64().unwrap())
        .sum();
    assert_eq!(lag, 4, "{reset}");
    cli.ok(&["group", "delete", "teste"]);
    assert_eq!(failure(&cli.run(&["group", "describe", "teste"])).0, 3);

    let written = cli.ok_with(
        &[
            "produce", "Usuarios", "--format", "json", "-p", "1", "-o", "json",
        ],
        "{\"key\": \"k\", \"value\": \"from json\", \"headers\": {\"h\": \"v\"}}\n",
    );
    let offset = json_lines(&written)[0]["offset"].to_string();
    let last = cli.ok(&[
        "consume", "Usuarios", "-p", "1", "--offset", &offset, "-n", "1", "--format", "json",
    ]);
    let last = json_lines(&last);
    assert_eq!(last[0]["headers"]["h"], "v");
    assert_eq!(last[0]["value"], "from json");
}

#[test]
fn cluster_info_and_connection_errors() {
    let cli = Cli::start();
    let info: serde_json::Value =
        serde_json::from_str(&cli.ok(&["cluster", "info", "-o", "json"])).unwrap();
    assert_eq!(info["node_id"], 1);
    assert_eq!(info["controller_leader"], 1);
    assert_eq!(info["nodes"][0]["grpc"], cli.server.as_str());
    let table = cli.ok(&["cluster", "info"]);
    assert!(table.contains("NODE"), "{table}");

    let port = free_port();
    let output = runnel(cli.dir.path())
        .args(["topic", "list", "--server", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    let (code, error) = failure(&output);
    assert_eq!(code, 1);
    assert!(
        error.starts_with("error: cannot connect to 127.0.0.1:"),
        "{error}"
    );
}
