//! Real Kafka clients against a real `runnel dev` node: kcat (librdkafka 2.0.2 from
//! Debian), confluent-kafka (a current librdkafka), kafka-python and kafkajs. Each client's
//! script in `tests/clients/` creates a topic with several partitions, produces keyed and
//! unkeyed messages with every codec the client has, consumes them back, lists offsets,
//! describes and alters a config, and deletes the topic; it exits 0 only if everything
//! matched. `scripts/install-test-clients` installs the clients when they are missing.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn start_node(dir: &Path) -> (Node, SocketAddr) {
    let node = Node::start(dir, &as_strs(&dev_args(&dir.join("data"))));
    let kafka = node.kafka.expect("the banner has a kafka line");
    (node, kafka)
}

/// Runs a client script against `kafka` and fails the test with its output unless it
/// exits 0.
fn run_client(mut command: Command, kafka: SocketAddr, topic: &str) {
    let clients = clients();
    let description = format!("{command:?}");
    // Cargo points LD_LIBRARY_PATH at build outputs, which include the librdkafka that
    // rdkafka-sys builds for the benchmarks: kcat must load its own (Debian's).
    let output = command
        .env_remove("LD_LIBRARY_PATH")
        .env("RUNNEL_BOOTSTRAP", kafka.to_string())
        .env("RUNNEL_TOPIC", topic)
        .env("NODE_PATH", &clients.node_modules)
        .env("KCAT", &clients.kcat)
        .output()
        .expect("run the client");
    assert!(
        output.status.success(),
        "{description} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name)
}

fn python(name: &str) -> Command {
    let mut command = Command::new(&clients().python);
    command.arg(script(name));
    command
}

fn node_script(path: PathBuf) -> Command {
    let mut command = Command::new("node");
    command.arg(path);
    command
}

#[test]
fn confluent_kafka_produces_consumes_and_administers() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, kafka) = start_node(dir.path());
    run_client(python("confluent_kafka_client.py"), kafka, "confluent");
}

#[test]
fn kafka_python_produces_consumes_and_administers() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, kafka) = start_node(dir.path());
    run_client(python("kafka_python_client.py"), kafka, "kafka-python");
}

#[test]
fn kcat_produces_and_consumes_with_every_codec() {
    let dir = tempfile::tempdir().unwrap();
    let (node, kafka) = start_node(dir.path());
    // kcat has no admin commands: the topic comes from the admin API.
    let created = node.request(
        "POST",
        "/v1/topics",
        Some(r#"{"name": "kcat", "partitions": 3}"#),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let mut command = Command::new("bash");
    command.arg(script("kcat_client.sh"));
    run_client(command, kafka, "kcat");
}

#[test]
fn the_kafkajs_walkthrough_sends_names_to_their_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let (node, kafka) = start_node(dir.path());
    let example = repository().join("examples/kafkajs");
    let run = |script: &str, args: &[&str]| {
        let mut command = node_script(example.join(script));
        command
            .args(args)
            .env_remove("LD_LIBRARY_PATH")
            .env("KAFKA_BROKERS", kafka.to_string())
            .env("NODE_PATH", &clients().node_modules);
        let output = command.output().expect("run node");
        assert!(
            output.status.success(),
            "{script} {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run("topic.js", &[]);
    for name in ["Ana", "Maria", "Pedro", "Zeca", "bruno"] {
        run("producer.js", &[name]);
    }
    // consumer.js (group "teste", from the beginning) prints each name with its partition.
    let mut consumer = node_script(example.join("consumer.js"));
    let output = consumer
        .args(["--exit-after", "5"])
        .env_remove("LD_LIBRARY_PATH")
        .env("KAFKA_BROKERS", kafka.to_string())
        .env("NODE_PATH", &clients().node_modules)
        .output()
        .expect("run consumer.js");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "consumer.js failed: {printed}");
    let mut lines: Vec<&str> = printed.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "partition 0: Ana",
            "partition 0: Maria",
            "partition 0: bruno",
            "partition 1: Pedro",
            "partition 1: Zeca"
        ]
    );
    // A–M to partition 0, N–Z to partition 1: the latest offsets, as kcat queries them.
    let offsets = |partition: u32| -> u64 {
        let output = Command::new(&clients().kcat)
            .env_remove("LD_LIBRARY_PATH")
            .args(["-b", &kafka.to_string(), "-Q", "-t"])
            .arg(format!("Usuarios:{partition}:-1"))
            .output()
            .expect("run kcat");
        let text = String::from_utf8_lossy(&output.stdout);
        text.split_whitespace()
            .last()
            .and_then(|offset| offset.parse().ok())
            .unwrap_or_else(|| panic!("kcat -Q printed {text:?}"))
    };
    assert_eq!((offsets(0), offsets(1)), (3, 2));
    let topics = node.get("/v1/topics");
    assert!(topics.body.contains("\"Usuarios\""), "{}", topics.body);
}

/// A node whose empty groups wait only half a second for more members before their first
/// rebalance (Kafka's 3 s default would only slow the tests down).
fn start_node_for_groups(dir: &Path) -> (Node, SocketAddr) {
    let mut args = dev_args(&dir.join("data"));
    args.extend([
        "--set".to_string(),
        "broker.group_initial_rebalance_delay_ms=500".to_string(),
        "--set".to_string(),
        "broker.group_consumer_heartbeat_interval_ms=500".to_string(),
    ]);
    let node = Node::start(dir, &as_strs(&args));
    let kafka = node.kafka.expect("the banner has a kafka line");
    (node, kafka)
}

#[test]
fn kafkajs_consumes_in_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, kafka) = start_node_for_groups(dir.path());
    let mut command = node_script(script("kafkajs_client.js"));
    command.arg("--consume");
    run_client(command, kafka, "kafkajs-group");
}

#[test]
fn the_seeds_group_scenario_with_kafkajs() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, kafka) = start_node_for_groups(dir.path());
    run_client(node_script(script("groups_kafkajs.js")), kafka, "Usuarios");
}

#[test]
fn confluent_kafka_groups_with_cooperative_sticky() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, kafka) = start_node_for_groups(dir.path());
    run_client(
        python("groups_confluent_kafka.py"),
        kafka,
        "confluent-groups",
    );
}

/// The same scenario under the KIP-848 protocol (`group.protocol=consumer`): the broker
/// computes the assignment and members converge through ConsumerGroupHeartbeat.
#[test]
fn confluent_kafka_groups_with_the_consumer_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, kafka) = start_node_for_groups(dir.path());
    let mut command = python("groups_confluent_kafka.py");
    command.env("RUNNEL_GROUP_PROTOCOL", "consumer");
    run_client(command, kafka, "kip848-groups");
}

/// A Python client generated with grpcio-tools from nothing but `schemas/proto` produces
/// and fetches through the gRPC API, and confluent-kafka sees the same records (and the
/// reverse): the same offsets, keys, headers, timestamps and key partitions.
#[test]
fn a_python_grpc_client_from_the_proto_files_and_kafka_clients_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (node, kafka) = start_node(dir.path());
    let proto = repository().join("schemas/proto");
    let mut command = python("grpc_python.py");
    command
        .env("RUNNEL_GRPC", node.grpc.expect("a grpc line").to_string())
        .env("RUNNEL_PROTO_DIR", proto);
    run_client(command, kafka, "grpc-python");
}

#[test]
fn kafka_python_groups() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, kafka) = start_node_for_groups(dir.path());
    run_client(
        python("groups_kafka_python.py"),
        kafka,
        "kafka-python-groups",
    );
}

#[test]
fn a_rebalance_storm_loses_nothing_and_never_moves_offsets_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, kafka) = start_node_for_groups(dir.path());
    run_client(python("groups_storm.py"), kafka, "storm");
}

#[test]
fn a_rebalance_storm_under_the_consumer_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, kafka) = start_node_for_groups(dir.path());
    let mut command = python("groups_storm.py");
    command.env("RUNNEL_GROUP_PROTOCOL", "consumer");
    run_client(command, kafka, "kip848-storm");
}

/// Two brokers (node 1 the controller, node 2 a broker-only learner), a topic whose
/// partitions are led by both: kcat, bootstrapped from node 1 alone, is sent by Metadata to
/// each partition's leader for produce and fetch.
#[test]
fn clients_follow_partition_leaders_across_nodes() {
    let (mut cluster, _leaders) = two_brokers_with_topic("spread", 4);
    let bootstrap = cluster.node(1).kafka.expect("a kafka line").to_string();
    let kcat = || {
        let mut command = Command::new(&clients().kcat);
        command
            .env_remove("LD_LIBRARY_PATH")
            .args(["-b", &bootstrap]);
        command
    };
    for partition in 0..4 {
        let mut producer = kcat()
            .args(["-P", "-t", "spread", "-p", &partition.to_string()])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("run kcat");
        use std::io::Write as _;
        writeln!(producer.stdin.take().expect("stdin"), "value-{partition}").unwrap();
        assert!(producer.wait().unwrap().success(), "kcat -P to {partition}");
    }
    let consumed = kcat()
        .args(["-C", "-t", "spread", "-e", "-f", "%p %s\\n"])
        .output()
        .expect("run kcat");
    let text = String::from_utf8_lossy(&consumed.stdout);
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        ["0 value-0", "1 value-1", "2 value-2", "3 value-3"],
        "{}",
        String::from_utf8_lossy(&consumed.stderr)
    );
    cluster.stop_all();
}

/// Records produced with the `runnel` CLI (over gRPC) are what kcat reads over the Kafka
/// protocol, at the same partitions and offsets with the same keys and headers; records
/// kcat produces with Kafka's default partitioner are what the CLI reads, and a key goes
/// to the same partition whichever side writes it.
#[test]
fn the_cli_and_kcat_read_each_others_records() {
    let dir = tempfile::tempdir().unwrap();
    let (node, kafka) = start_node(dir.path());
    runnel_cli(
        &node,
        dir.path(),
        &["topic", "create", "both", "-p", "3"],
        "",
    );

    let names = ["alice", "bob", "carol", "dave", "erin", "frank"];
    let lines: String = names.iter().map(|n| format!("{n}:hello {n}\n")).collect();
    let written = runnel_cli(
        &node,
        dir.path(),
        &[
            "produce",
            "both",
            "--key-separator",
            ":",
            "--header",
            "source=cli",
            "-o",
            "json",
        ],
        &lines,
    );
    let mut expected: Vec<_> = written
        .lines()
        .zip(names)
        .map(|(line, name)| {
            let position: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                position["partition"].as_i64().unwrap() as i32,
                position["offset"].as_i64().unwrap(),
                name.to_string(),
                format!("hello {name}"),
                "source=cli".to_string(),
            )
        })
        .collect();
    expected.sort();
    assert_eq!(kcat_read(kafka, "both"), expected);
    let partition_of = |name: &str| expected.iter().find(|r| r.2 == name).unwrap().0;

    // The reverse: kcat writes with Kafka's default partitioner (murmur2).
    let mut child = Command::new(&clients().kcat)
        .env_remove("LD_LIBRARY_PATH")
        .args(["-b", &kafka.to_string(), "-P", "-t", "both", "-K", ":"])
        .args(["-H", "origin=kcat", "-X", "partitioner=murmur2_random"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run kcat");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        for name in names {
            writeln!(stdin, "{name}:from kcat").unwrap();
        }
    }
    assert!(child.wait().unwrap().success());
    let by_kcat: Vec<_> = kcat_read(kafka, "both")
        .into_iter()
        .filter(|r| r.3 == "from kcat")
        .collect();
    assert_eq!(by_kcat.len(), names.len());
    for record in &by_kcat {
        assert_eq!(
            record.0,
            partition_of(&record.2),
            "{record:?}: key partitions differ"
        );
        assert_eq!(record.4, "origin=kcat");
    }
    let consumed = runnel_cli(
        &node,
        dir.path(),
        &[
            "consume",
            "both",
            "--from-beginning",
            "--format",
            "json",
            "-n",
            "12",
        ],
        "",
    );
    let mut read: Vec<_> = consumed
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|r| r["value"] == "from kcat")
        .map(|r| {
            let headers = r["headers"].as_object().unwrap();
            assert_eq!(headers.len(), 1, "{r}");
            (
                r["partition"].as_i64().unwrap() as i32,
                r["offset"].as_i64().unwrap(),
                r["key"].as_str().unwrap().to_string(),
                "from kcat".to_string(),
                format!("origin={}", headers["origin"].as_str().unwrap()),
            )
        })
        .collect();
    read.sort();
    assert_eq!(read, by_kcat);
}
