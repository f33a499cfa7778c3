//! `runnel fn run`, the local test harness: example components built from source run over
//! records from stdin, with no broker.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

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
    let uppercase = build_guest("examples/functions/uppercase", "uppercase");
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

    let word_count = build_guest("examples/functions/word-count", "word_count");
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
    let uppercase = build_guest("examples/functions/uppercase", "uppercase");
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

/// The JSON plugins and the order-enrichment example, run over sample records.
#[test]
fn the_json_plugins_and_order_enrichment_do_what_their_configs_say() {
    let values = |args: &[&str], wasm: &Path, stdin: &str| -> Vec<(String, String)> {
        json_lines(&run_fn(args, wasm, stdin))
            .iter()
            .map(|o| {
                (
                    o["topic"].as_str().unwrap_or("").to_string(),
                    o["value"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let orders = "{\"id\":1,\"customer\":{\"country\":\"BR\"},\"total\":30}\n\
                  {\"id\":2,\"customer\":{\"country\":\"PT\"},\"total\":120}\n\
                  not json\n\
                  {\"id\":3,\"customer\":{\"country\":\"BR\"},\"total\":200}\n";
    let filter = build_guest("plugins/filter", "filter");
    let kept = values(
        &["--config", "field=customer.country", "--config", "value=BR"],
        &filter,
        orders,
    );
    let ids: Vec<&str> = kept.iter().map(|(_, v)| &v[..7]).collect();
    assert_eq!(ids, ["{\"id\":1", "{\"id\":3"]);
    let big = values(
        &[
            "--config",
            "field=total",
            "--config",
            "op=gt",
            "--config",
            "value=100",
        ],
        &filter,
        orders,
    );
    assert_eq!(big.len(), 2, "{big:?}");
    let failed = run_fn(
        &["--config", "field=total", "--config", "invalid=fail"],
        &filter,
        "nope\n",
    );
    assert_eq!(
        failed.status.code(),
        Some(1),
        "a value that is not JSON fails the batch"
    );

    let redact = build_guest("plugins/redact", "redact");
    let config_file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/redact/redact.config");
    let redacted = values(
        &["--config-file", config_file.to_str().unwrap()],
        &redact,
        "{\"email\":\"ana@example.com\",\"card\":{\"number\":\"4111\",\"brand\":\"visa\"},\"n\":1}\n",
    );
    let value: serde_json::Value = serde_json::from_str(&redacted[0].1).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"email": "***", "card": {"number": "***", "brand": "visa"}, "n": 1})
    );

    let router = build_guest("plugins/router", "router");
    let routed = values(
        &[
            "--config",
            "by=field:region",
            "--config",
            "routes=eu=orders-eu,us=orders-us",
            "--config",
            "default=orders-other",
        ],
        &router,
        "{\"region\":\"us\"}\n{\"region\":\"eu\"}\n{\"region\":\"mars\"}\n",
    );
    let topics: Vec<&str> = routed.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(topics, ["orders-us", "orders-eu", "orders-other"]);
    let by_key = values(
        &[
            "--key-separator",
            ":",
            "--config",
            "routes=a=ta",
            "--config",
            "by=key",
        ],
        &router,
        "a:1\nb:2\n",
    );
    assert_eq!(
        by_key,
        [("ta".to_string(), "1".to_string())],
        "unrouted records drop"
    );

    let enrichment = build_guest("examples/functions/order-enrichment", "order_enrichment");
    let enriched = json_lines(&run_fn(
        &["--config", "tax_rate=0.1", "--config", "vip_customers=c-7"],
        &enrichment,
        "{\"id\":\"o-1\",\"customer\":\"c-7\",\"items\":[{\"sku\":\"tea\",\"qty\":2,\"price\":4.5},{\"sku\":\"pot\",\"qty\":1,\"price\":20}]}\n",
    ));
    assert_eq!(enriched[0]["key"], "c-7");
    let order: serde_json::Value =
        serde_json::from_str(enriched[0]["value"].as_str().unwrap()).unwrap();
    assert_eq!(order["subtotal"], 29.0);
    assert_eq!(order["tax"], 2.9);
    assert_eq!(order["total"], 31.9);
    assert_eq!(order["item_count"], 3);
    assert_eq!(order["tier"], "vip");
    assert_eq!(order["items"][0]["amount"], 9.0);
    let refused = run_fn(&[], &enrichment, "{\"id\":\"o-2\",\"customer\":\"c\"}\n");
    assert_eq!(
        refused.status.code(),
        Some(1),
        "an order without items fails"
    );
}

/// `runnel fn init` writes a crate that builds into a component `runnel fn run` runs.
#[test]
fn fn_init_writes_a_crate_that_builds_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = runnel(dir.path());
    command.args(["fn", "init", "my-shout", "--kind", "transform"]);
    let output = run_with_stdin(command, "");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let host_target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repository().join("target"));
    // As its author would: in the crate, whose .cargo/config.toml names the target.
    let built = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()))
        .args(["build", "--quiet", "--release"])
        .current_dir(dir.path().join("my-shout"))
        .arg("--target-dir")
        .arg(host_target.join("wasm-guests"))
        .output()
        .expect("run cargo");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let wasm = host_target.join("wasm-guests/wasm32-wasip2/release/my_shout.wasm");
    let outputs = json_lines(&run_fn(&[], &wasm, "hi\n"));
    assert_eq!(outputs[0]["value"], "HI");
    let again = run_with_stdin(
        {
            let mut command = runnel(dir.path());
            command.args(["fn", "init", "my-shout"]);
            command
        },
        "",
    );
    assert_eq!(
        again.status.code(),
        Some(2),
        "an existing directory is not overwritten"
    );
}

// Deployed functions: a real node, components built from source, real Kafka clients.

/// How long a deployed function may take to catch up (debug node, busy machine).
const CATCH_UP: Duration = Duration::from_secs(90);

fn start_dev(dir: &Path) -> Node {
    Node::start(dir, &as_strs(&dev_args(&dir.join("data"))))
}

fn cli(node: &Node, dir: &Path, args: &[&str]) -> String {
    runnel_cli(node, dir, args, "")
}

fn describe(node: &Node, dir: &Path, name: &str) -> serde_json::Value {
    let text = cli(node, dir, &["fn", "describe", name, "-o", "json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The word count's `counted N words` log lines once they add up to `words`.
fn counted_lines(node: &Node, dir: &Path, words: usize) -> Vec<String> {
    let lines = std::cell::RefCell::new(Vec::new());
    wait_for(
        CATCH_UP,
        &format!("log lines counting {words} words"),
        || {
            let logs = cli(node, dir, &["fn", "logs", "wc"]);
            let counted: Vec<String> = logs
                .lines()
                .filter(|l| l.contains("[info] counted"))
                .map(str::to_string)
                .collect();
            let total: usize = counted
                .iter()
                .filter_map(|l| {
                    l.split("counted ")
                        .nth(1)?
                        .split(' ')
                        .next()?
                        .parse::<usize>()
                        .ok()
                })
                .sum();
            *lines.borrow_mut() = counted;
            total >= words
        },
    );
    lines.into_inner()
}

/// kcat's records of `topic` once there are at least `count`.
fn read_at_least(
    kafka: SocketAddr,
    topic: &str,
    count: usize,
) -> Vec<(i32, i64, String, String, String)> {
    wait_for(CATCH_UP, &format!("{count} records in {topic}"), || {
        kcat_read(kafka, topic).len() >= count
    });
    kcat_read(kafka, topic)
}

#[test]
fn a_transform_deployed_while_a_kafka_client_produces_writes_exactly_the_expected_output() {
    let uppercase = build_guest("examples/functions/uppercase", "uppercase");
    let dir = tempfile::tempdir().unwrap();
    let node = start_dev(dir.path());
    let kafka = node.kafka.unwrap();
    cli(&node, dir.path(), &["topic", "create", "words", "-p", "3"]);
    cli(
        &node,
        dir.path(),
        &["topic", "create", "shouted", "-p", "2"],
    );

    // Some records before the function exists, the rest while it runs.
    finish(produce_keyed(kafka, "words", 0, 300));
    let wasm = uppercase.display().to_string();
    let deployed = cli(
        &node,
        dir.path(),
        &[
            "fn", "deploy", &wasm, "--name", "shout", "--input", "words", "--output", "shouted",
        ],
    );
    assert!(deployed.contains("deployed shout version 1"), "{deployed}");
    let producer = produce_keyed(kafka, "words", 300, 700);
    finish(producer);

    let output = read_at_least(kafka, "shouted", 700);
    let mut got: Vec<(String, String)> = output
        .iter()
        .map(|(partition, _, key, value, headers)| {
            // Keyed outputs are partitioned as Kafka's default partitioner does.
            assert_eq!(
                *partition,
                runnel_broker::partitioner::partition_for_key(key.as_bytes(), 2),
                "{key}"
            );
            assert_eq!(headers, "source=python", "headers carry over");
            (key.clone(), value.clone())
        })
        .collect();
    got.sort();
    let mut expected: Vec<(String, String)> = (0..700)
        .map(|i| (format!("k{i}"), format!("RECORD-{i}")))
        .collect();
    expected.sort();
    assert_eq!(got, expected, "every record once, upper-cased");

    // Progress is the group runnel-fn-shout: lag 0 in every partition.
    wait_for(CATCH_UP, "the function's lag to reach 0", || {
        let group: serde_json::Value = serde_json::from_str(&cli(
            &node,
            dir.path(),
            &["group", "describe", "runnel-fn-shout", "-o", "json"],
        ))
        .unwrap();
        let offsets = group["offsets"].as_array().cloned().unwrap_or_default();
        offsets.len() == 3 && offsets.iter().all(|o| o["lag"] == 0)
    });
    let described = describe(&node, dir.path(), "shout");
    assert_eq!(described["state"], "running", "{described}");
    assert_eq!(described["processed"], 700, "{described}");
    assert_eq!(described["lag"], 0, "{described}");
    let listed = cli(&node, dir.path(), &["fn", "list"]);
    assert!(
        listed.contains("shout") && listed.contains("words"),
        "{listed}"
    );
    let metrics = node.get("/metrics").body;
    let processed: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("runnel_function_records_processed_total{function=\"shout\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(processed, 700, "{metrics}");
}

#[test]
fn word_counts_kept_in_kv_survive_a_restart_exactly() {
    let word_count = build_guest("examples/functions/word-count", "word_count");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = start_dev(dir.path());
    // One partition: kv state is per partition, and the counts are checked whole.
    cli(&node, dir.path(), &["topic", "create", "lines"]);
    cli(&node, dir.path(), &["topic", "create", "counts"]);
    let wasm = word_count.display().to_string();
    cli(
        &node,
        dir.path(),
        &[
            "fn", "deploy", &wasm, "--name", "wc", "--kind", "consumer", "--input", "lines",
            "--output", "counts",
        ],
    );
    runnel_cli(
        &node,
        dir.path(),
        &["produce", "lines", "--key-separator", ":"],
        "a:to be\nb:or not to be\n",
    );
    let kafka = node.kafka.unwrap();
    read_at_least(kafka, "counts", 6);
    let before = counted_lines(&node, dir.path(), 6);

    node.signal(libc::SIGTERM);
    assert!(node.wait_for_exit().success());
    drop(node);
    let node = Node::start(dir.path(), &as_strs(&dev_args(&data)));
    let kafka = node.kafka.unwrap();
    runnel_cli(
        &node,
        dir.path(),
        &["produce", "lines", "--key-separator", ":"],
        "a:to be or\n",
    );
    let counts = read_at_least(kafka, "counts", 9);
    assert_eq!(counts.len(), 9, "no batch counted twice: {counts:?}");
    // The log stream is kept in the function's log topic: the lines from before the
    // restart are still there, then the new one.
    let after = counted_lines(&node, dir.path(), 9);
    assert_eq!(after.len(), before.len() + 1, "{after:?}");
    assert_eq!(after[..before.len()], before[..]);
    assert!(after[before.len()].contains("[info] counted 3 words in 1 records"));
    let kafka_lines = kcat_read(kafka, "__runnel-fn-wc-logs");
    assert_eq!(
        kafka_lines.len(),
        after.len(),
        "a Kafka client reads the same lines"
    );
    let mut last: std::collections::BTreeMap<String, u64> = Default::default();
    for (_, _, word, count, _) in &counts {
        let count: u64 = count.parse().unwrap();
        let entry = last.entry(word.clone()).or_default();
        *entry = (*entry).max(count);
    }
    let expected: std::collections::BTreeMap<String, u64> =
        [("to", 3), ("be", 3), ("or", 2), ("not", 1)]
            .into_iter()
            .map(|(w, c)| (w.to_string(), c))
            .collect();
    assert_eq!(last, expected);
}

#[test]
fn a_crash_between_a_batchs_outputs_and_its_state_repeats_only_that_batch() {
    let uppercase = build_guest("examples/functions/uppercase", "uppercase");
    let dir = tempfile::tempdir().unwrap();
    let args = dev_args(&dir.path().join("data"));
    // Abort once the third batch's outputs are written, before its position is.
    let mut node = Node::start_with_env(
        dir.path(),
        &as_strs(&args),
        &[("RUNNEL_CRASH_AT", "function-outputs-written@3")],
    );
    cli(&node, dir.path(), &["topic", "create", "in"]);
    cli(&node, dir.path(), &["topic", "create", "out"]);
    let input: String = (0..500).map(|i| format!("record-{i}\n")).collect();
    runnel_cli(&node, dir.path(), &["produce", "in"], &input);
    let wasm = uppercase.display().to_string();
    cli(
        &node,
        dir.path(),
        &[
            "fn",
            "deploy",
            &wasm,
            "--name",
            "up",
            "--input",
            "in",
            "--output",
            "out",
            "--batch-records",
            "100",
        ],
    );
    node.wait_for_crash(CATCH_UP);
    drop(node);

    let node = Node::start(dir.path(), &as_strs(&args));
    let kafka = node.kafka.unwrap();
    read_at_least(kafka, "out", 600);
    wait_for(CATCH_UP, "lag 0", || {
        describe(&node, dir.path(), "up")["lag"] == 0
    });
    let output = kcat_read(kafka, "out");
    let mut seen = std::collections::BTreeMap::<usize, usize>::new();
    for (_, _, _, value, _) in &output {
        let index: usize = value
            .strip_prefix("RECORD-")
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("{value}"));
        *seen.entry(index).or_default() += 1;
    }
    assert_eq!(seen.len(), 500, "no record lost");
    let twice: Vec<usize> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(
        twice,
        (200..300).collect::<Vec<_>>(),
        "only the third batch, whose position was not stored, is repeated"
    );
    assert!(seen.values().all(|n| *n <= 2));
    assert_eq!(output.len(), 600);
}

#[test]
fn functions_and_sources_on_two_nodes_forward_writes_state_and_commits_to_leaders() {
    let uppercase = build_guest("examples/functions/uppercase", "uppercase");
    // The nodes share one component store: an S3 bucket.
    let s3 = S3Server::start();
    let tier = s3.tier_config();
    let mut cluster = Cluster::new(2, 1).with_config(&tier);
    cluster.spawn(1);
    cluster.spawn(2);
    cluster.read_banners(&[1, 2]);
    cluster.wait_alive(2);
    let dir = tempfile::tempdir().unwrap();
    let on = |id: usize, args: &[&str]| cli(cluster.node(id), dir.path(), args);
    on(1, &["topic", "create", "in", "-p", "2"]);
    on(1, &["topic", "create", "out", "-p", "2"]);
    let wasm = uppercase.display().to_string();
    on(
        2,
        &[
            "fn",
            "deploy",
            &wasm,
            "--name",
            "up",
            "--input",
            "in",
            "--output",
            "out",
            "--batch-records",
            "50",
        ],
    );
    let leaders = |topic: &str| -> Vec<u64> {
        let described: serde_json::Value =
            serde_json::from_str(&on(1, &["topic", "describe", topic, "-o", "json"])).unwrap();
        described["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["leader"].as_u64().unwrap())
            .collect()
    };
    // Each node leads one input and one output partition, and one of them the state
    // topic: the other's executor writes its state, and half its outputs, over there.
    let mut input_leaders = leaders("in");
    input_leaders.sort();
    assert_eq!(input_leaders, [1, 2]);
    let mut output_leaders = leaders("out");
    output_leaders.sort();
    assert_eq!(output_leaders, [1, 2]);
    assert_eq!(leaders("__runnel-fn-up-state").len(), 1);

    let kafka = cluster.node(1).kafka.unwrap();
    finish(produce_keyed(kafka, "in", 0, 400));
    let output = read_at_least(kafka, "out", 400);
    let mut got: Vec<(String, String)> = output
        .iter()
        .map(|(partition, _, key, value, _)| {
            assert_eq!(
                *partition,
                runnel_broker::partitioner::partition_for_key(key.as_bytes(), 2),
                "{key}"
            );
            (key.clone(), value.clone())
        })
        .collect();
    got.sort();
    let mut expected: Vec<(String, String)> = (0..400)
        .map(|i| (format!("k{i}"), format!("RECORD-{i}")))
        .collect();
    expected.sort();
    assert_eq!(got, expected, "every record once, upper-cased");

    // The group's coordinator, on one of the nodes, has both partitions at their end.
    wait_for(
        CATCH_UP,
        "runnel-fn-up committed at the end of `in`",
        || {
            (1..=2).any(|id| {
                let described = runnel_cli_output(
                    cluster.node(id),
                    dir.path(),
                    &["group", "describe", "runnel-fn-up", "-o", "json"],
                );
                if !described.status.success() {
                    return false;
                }
                let group: serde_json::Value =
                    serde_json::from_slice(&described.stdout).unwrap_or_default();
                let offsets = group["offsets"].as_array().cloned().unwrap_or_default();
                let committed: i64 = offsets
                    .iter()
                    .filter_map(|o| o["committed_offset"].as_i64())
                    .sum();
                offsets.len() == 2 && committed == 400
            })
        },
    );

    // A source (datagen, keyed by id) writes to partitions of both nodes, from the one
    // node it runs on.
    let datagen = build_guest("plugins/datagen", "datagen");
    on(1, &["topic", "create", "generated", "-p", "2"]);
    let datagen = datagen.display().to_string();
    on(
        1,
        &[
            "connector",
            "create",
            "gen",
            "--kind",
            "source",
            "--wasm",
            &datagen,
            "--config",
            "topic=generated",
            "--config",
            "rate=1000",
            "--config",
            "count=300",
            "--config",
            "key=id",
            "--config",
            "shape=counter",
        ],
    );
    let generated = read_at_least(kafka, "generated", 300);
    let mut values: Vec<u64> = generated.iter().map(|r| r.3.parse().unwrap()).collect();
    values.sort();
    assert_eq!(values, (0..300).collect::<Vec<_>>(), "every record once");
    let partitions: std::collections::BTreeSet<i32> = generated.iter().map(|r| r.0).collect();
    assert_eq!(partitions.len(), 2, "both nodes' partitions");
    cluster.stop_all();
}

#[test]
fn the_node_config_sets_the_component_size_limit() {
    let uppercase = build_guest("examples/functions/uppercase", "uppercase");
    let dir = tempfile::tempdir().unwrap();
    let mut args = dev_args(&dir.path().join("data"));
    args.extend(["--set".into(), "functions.max_component_bytes=1000".into()]);
    let node = Node::start(dir.path(), &as_strs(&args));
    cli(&node, dir.path(), &["topic", "create", "in"]);
    let wasm = uppercase.display().to_string();
    let refused = runnel_cli_output(
        &node,
        dir.path(),
        &[
            "fn", "deploy", &wasm, "--name", "up", "--input", "in", "--output", "in",
        ],
    );
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("more than the limit of 1000"), "{stderr}");
    let listed = cli(&node, dir.path(), &["fn", "list", "-o", "json"]);
    assert_eq!(listed.trim(), "[]", "nothing deployed");
}

#[test]
fn a_redeploy_continues_without_loss_and_pause_resume_and_delete_work() {
    let uppercase = build_guest("examples/functions/uppercase", "uppercase");
    let echo = build_guest("platform/runnel-functions/tests/guests/hostile", "hostile");
    let dir = tempfile::tempdir().unwrap();
    let node = start_dev(dir.path());
    let kafka = node.kafka.unwrap();
    cli(&node, dir.path(), &["topic", "create", "in", "-p", "2"]);
    cli(&node, dir.path(), &["topic", "create", "out"]);
    let deploy = |wasm: &Path, extra: &[&str]| {
        let wasm = wasm.display().to_string();
        let mut args = vec![
            "fn",
            "deploy",
            &wasm,
            "--name",
            "f",
            "--input",
            "in",
            "--output",
            "out",
            "--batch-records",
            "20",
        ];
        args.extend_from_slice(extra);
        cli(&node, dir.path(), &args)
    };
    deploy(&uppercase, &[]);
    let producer = produce_keyed(kafka, "in", 0, 1000);
    std::thread::sleep(Duration::from_millis(300));
    // Version 2 passes values through unchanged; it takes over mid-stream.
    let redeployed = deploy(&echo, &["--config", "mode=echo"]);
    assert!(redeployed.contains("version 2"), "{redeployed}");
    finish(producer);
    let output = read_at_least(kafka, "out", 1000);
    let mut seen = std::collections::BTreeMap::<usize, usize>::new();
    for (_, _, _, value, _) in &output {
        let index: usize = value
            .to_ascii_lowercase()
            .strip_prefix("record-")
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("{value}"));
        *seen.entry(index).or_default() += 1;
    }
    assert_eq!(seen.len(), 1000, "no record lost");
    assert!(
        seen.values().all(|n| *n == 1),
        "a clean redeploy repeats nothing"
    );
    assert_eq!(describe(&node, dir.path(), "f")["version"], 2);

    // Paused: new input waits; resumed: it is processed.
    cli(&node, dir.path(), &["fn", "pause", "f"]);
    assert_eq!(describe(&node, dir.path(), "f")["state"], "paused");
    finish(produce_keyed(kafka, "in", 1000, 1010));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        kcat_read(kafka, "out").len(),
        1000,
        "nothing runs while paused"
    );
    cli(&node, dir.path(), &["fn", "resume", "f"]);
    read_at_least(kafka, "out", 1010);

    cli(&node, dir.path(), &["fn", "delete", "f"]);
    assert_eq!(
        cli(&node, dir.path(), &["fn", "list", "-o", "json"]).trim(),
        "[]"
    );
    let gone = runnel_cli_output(&node, dir.path(), &["fn", "describe", "f"]);
    assert_eq!(gone.status.code(), Some(3), "not found");
    let groups = cli(&node, dir.path(), &["group", "list"]);
    assert!(!groups.contains("runnel-fn-f"), "{groups}");
}

#[test]
fn hostile_components_are_contained_and_reported() {
    let hostile = build_guest("platform/runnel-functions/tests/guests/hostile", "hostile");
    let uppercase = build_guest("examples/functions/uppercase", "uppercase");
    let word_count = build_guest("examples/functions/word-count", "word_count");
    let dir = tempfile::tempdir().unwrap();
    let node = start_dev(dir.path());
    let kafka = node.kafka.unwrap();
    for topic in ["loop-in", "bomb-in", "trap-in", "good-in", "out", "plain"] {
        cli(&node, dir.path(), &["topic", "create", topic]);
    }
    let wasm = hostile.display().to_string();
    let deploy_hostile_to = |name: &str, input: &str, output: &str, mode: &str| {
        let config = format!("mode={mode}");
        cli(
            &node,
            dir.path(),
            &[
                "fn", "deploy", &wasm, "--name", name, "--input", input, "--output", output,
                "--config", &config,
            ],
        );
    };
    let deploy_hostile = |name: &str, input: &str, mode: &str, extra: &[&str]| {
        let config = format!("mode={mode}");
        let mut args = vec![
            "fn", "deploy", &wasm, "--name", name, "--input", input, "--output", "out", "--config",
            &config,
        ];
        args.extend_from_slice(extra);
        cli(&node, dir.path(), &args);
    };
    deploy_hostile(
        "looper",
        "loop-in",
        "loop",
        &["--timeout-ms", "200", "--retries", "1"],
    );
    deploy_hostile(
        "bomber",
        "bomb-in",
        "bomb",
        &["--memory-mib", "16", "--retries", "0"],
    );
    deploy_hostile(
        "trapper",
        "trap-in",
        "trap-on-9",
        &["--batch-records", "1", "--retries", "0"],
    );
    let good = uppercase.display().to_string();
    cli(
        &node,
        dir.path(),
        &[
            "fn", "deploy", &good, "--name", "good", "--input", "good-in", "--output", "out",
        ],
    );
    for topic in ["loop-in", "bomb-in", "good-in"] {
        finish(produce_keyed(kafka, topic, 0, 5));
    }
    finish(produce_keyed(kafka, "trap-in", 0, 30));

    // An infinite loop times out, is retried, then dead-lettered.
    let dead = read_at_least(kafka, "looper.dlq", 5);
    assert!(
        dead[0].4.contains("runnel.error=the call took longer than"),
        "{dead:?}"
    );
    let looper = describe(&node, dir.path(), "looper");
    assert!(looper["failed"].as_u64().unwrap() >= 5, "{looper}");
    assert!(
        looper["last_error"]
            .as_str()
            .unwrap()
            .contains("took longer than 200ms"),
        "{looper}"
    );
    // A memory bomb traps at its limit.
    let dead = read_at_least(kafka, "bomber.dlq", 5);
    assert!(
        dead[0].4.contains("runnel.error=the function trapped"),
        "{dead:?}"
    );
    // A trap on every tenth record sends exactly those records to the dead letters.
    let dead = read_at_least(kafka, "trapper.dlq", 3);
    let offsets: Vec<String> = dead
        .iter()
        .map(|(_, _, _, _, headers)| {
            headers
                .split(',')
                .find_map(|h| h.strip_prefix("runnel.source.offset="))
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(offsets, ["9", "19", "29"]);
    // Meanwhile another function and plain topics are served as ever.
    let out = read_at_least(kafka, "out", 5 + 27);
    assert_eq!(
        out.iter().filter(|r| r.3.starts_with("RECORD-")).count(),
        5,
        "the good function ran"
    );
    finish(produce_keyed(kafka, "plain", 0, 3));
    assert_eq!(kcat_read(kafka, "plain").len(), 3);
    // A well-behaved function's log lines and metrics reach the CLI and /metrics.
    cli(&node, dir.path(), &["topic", "create", "counted"]);
    deploy_hostile_to("counter", "plain", "counted", "count");
    read_at_least(kafka, "counted", 3);
    let logs = cli(&node, dir.path(), &["fn", "logs", "counter"]);
    assert!(logs.contains("[info] record 2 is number 3"), "{logs}");
    let metrics = node.get("/metrics").body;
    assert!(
        metrics.contains("runnel_function_user_total{function=\"counter\",name=\"records\"} 3"),
        "{metrics}"
    );

    // Refused at deploy, with the reason: too large, and an import not granted.
    let huge = dir.path().join("huge.wasm");
    std::fs::write(&huge, vec![0u8; 100 << 20]).unwrap();
    let refused = runnel_cli_output(
        &node,
        dir.path(),
        &[
            "fn",
            "deploy",
            huge.to_str().unwrap(),
            "--name",
            "huge",
            "--input",
            "plain",
            "--output",
            "out",
        ],
    );
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("more than the limit of 16777216"),
        "{stderr}"
    );
    let counts = word_count.display().to_string();
    let refused = runnel_cli_output(
        &node,
        dir.path(),
        &[
            "fn", "deploy", &counts, "--name", "sneaky", "--kind", "consumer", "--input", "plain",
            "--output", "out", "--grant", "log", "--grant", "config",
        ],
    );
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("which was not granted"), "{stderr}");
    let listed = cli(&node, dir.path(), &["fn", "list"]);
    assert!(
        !listed.contains("huge") && !listed.contains("sneaky"),
        "{listed}"
    );
}
