//! Connectors on a real node: the plugins `http-sink`, `http-source` and `datagen`, built
//! from source, against an HTTP server the test runs, with Kafka clients producing and
//! reading.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const CATCH_UP: Duration = Duration::from_secs(90);

/// A small HTTP/1.1 server: it takes POSTed JSON arrays (a sink's batches), serves the
/// items after `?after=N` (a source's pages), and can be made to fail.
#[derive(Default)]
struct Target {
    /// Every element of every accepted POST, in arrival order.
    received: Mutex<Vec<serde_json::Value>>,
    /// Requests of any kind, accepted or not.
    requests: AtomicUsize,
    /// Answer 503 to everything.
    down: AtomicBool,
    /// Answer with a body that never ends: a byte every 200 ms.
    trickle: AtomicBool,
    /// The items served (`{"id": N, ...}`), and how many a page holds.
    items: Mutex<Vec<serde_json::Value>>,
}

const PAGE: usize = 7;

impl Target {
    fn start() -> (Arc<Target>, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let target = Arc::new(Target::default());
        let serving = target.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let target = serving.clone();
                std::thread::spawn(move || target.serve(stream));
            }
        });
        (target, address)
    }

    fn serve(&self, stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or_default().to_string();
            let target = parts.next().unwrap_or_default().to_string();
            let mut length = 0;
            let mut chunked = false;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 {
                    return;
                }
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                let (name, value) = header.split_once(':').unwrap_or((header, ""));
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "transfer-encoding" => chunked = value.contains("chunked"),
                    _ => {}
                }
            }
            let body = if chunked {
                read_chunked(&mut reader)
            } else {
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                body
            };
            self.requests.fetch_add(1, Ordering::SeqCst);
            if self.trickle.load(Ordering::SeqCst) {
                let _ = writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n");
                while writer.write_all(b" ").is_ok() {
                    std::thread::sleep(Duration::from_millis(200));
                }
                return;
            }
            let (status, answer) = self.answer(&method, &target, &body);
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            );
            if writer.write_all(reply.as_bytes()).is_err() {
                return;
            }
        }
    }

    fn answer(&self, method: &str, target: &str, body: &[u8]) -> (&'static str, String) {
        if self.down.load(Ordering::SeqCst) {
            return (
                "503 Service Unavailable",
                "{\"error\":\"down\"}".to_string(),
            );
        }
        match method {
            "POST" => match serde_json::from_slice::<serde_json::Value>(body) {
                Ok(serde_json::Value::Array(elements)) => {
                    self.received.lock().unwrap().extend(elements);
                    ("200 OK", "{}".to_string())
                }
                _ => (
                    "400 Bad Request",
                    "{\"error\":\"not an array\"}".to_string(),
                ),
            },
            "GET" => {
                let after: i64 = target
                    .split_once("after=")
                    .and_then(|(_, n)| n.split('&').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let page: Vec<serde_json::Value> = self
                    .items
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|item| item["id"].as_i64().unwrap() > after)
                    .take(PAGE)
                    .cloned()
                    .collect();
                ("200 OK", serde_json::Value::Array(page).to_string())
            }
            _ => ("405 Method Not Allowed", "{}".to_string()),
        }
    }

    fn add_items(&self, ids: std::ops::RangeInclusive<i64>) {
        let mut items = self.items.lock().unwrap();
        for id in ids {
            items.push(serde_json::json!({"id": id, "name": format!("item-{id}")}));
        }
    }

    fn received(&self) -> Vec<serde_json::Value> {
        self.received.lock().unwrap().clone()
    }
}

fn read_chunked(reader: &mut impl BufRead) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        if reader.read_line(&mut size).unwrap_or(0) == 0 {
            return body;
        }
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        let mut chunk = vec![0; size + 2];
        if reader.read_exact(&mut chunk).is_err() {
            return body;
        }
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

fn start_dev(dir: &Path) -> Node {
    Node::start(dir, &as_strs(&dev_args(&dir.join("data"))))
}

fn cli(node: &Node, dir: &Path, args: &[&str]) -> String {
    runnel_cli(node, dir, args, "")
}

fn describe(node: &Node, dir: &Path, name: &str) -> serde_json::Value {
    let text = cli(node, dir, &["connector", "describe", name, "-o", "json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Creates the `http-source` connector `feed`: items of `address`'s `/items` into `items`,
/// resumed by their `id`, five per poll every 100 ms; `config` adds `--config` pairs. The
/// CLI's output.
fn create_feed(
    node: &Node,
    dir: &Path,
    source: &Path,
    address: SocketAddr,
    config: &[&str],
) -> String {
    let wasm = source.display().to_string();
    let url = format!("url=http://{address}/items");
    let allow = address.ip().to_string();
    let mut args = vec![
        "connector",
        "create",
        "feed",
        "--kind",
        "source",
        "--wasm",
        &wasm,
        "--config",
        "topic=items",
        "--config",
        &url,
        "--config",
        "cursor.field=id",
        "--allow-host",
        &allow,
        "--poll-interval-ms",
        "100",
        "--batch-records",
        "5",
    ];
    for pair in config {
        args.extend(["--config", pair]);
    }
    cli(node, dir, &args)
}

/// The records the sink delivered, as (key, value), sorted.
fn delivered(target: &Target) -> Vec<(String, String)> {
    let mut records: Vec<(String, String)> = target
        .received()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap_or_default().to_string(),
                r["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    records.sort();
    records
}

fn expected(range: std::ops::Range<usize>) -> Vec<(String, String)> {
    let mut records: Vec<(String, String)> = range
        .map(|i| (format!("k{i}"), format!("record-{i}")))
        .collect();
    records.sort();
    records
}

#[test]
fn a_sink_delivers_exactly_the_records_produced_and_waits_out_an_outage() {
    let sink = build_guest("plugins/http-sink", "http_sink");
    let (target, address) = Target::start();
    let dir = tempfile::tempdir().unwrap();
    let node = start_dev(dir.path());
    let kafka = node.kafka.unwrap();
    cli(&node, dir.path(), &["topic", "create", "events", "-p", "2"]);
    finish(produce_keyed(kafka, "events", 0, 300));
    let url = format!("http://{address}/ingest");
    let allow = address.to_string();
    let wasm = sink.display().to_string();
    let created = cli(
        &node,
        dir.path(),
        &[
            "connector",
            "create",
            "out",
            "--kind",
            "sink",
            "--wasm",
            &wasm,
            "--topic",
            "events",
            "--config",
            &format!("url={url}"),
            "--allow-host",
            &allow,
        ],
    );
    assert!(created.contains("created sink out version 1"), "{created}");
    wait_for(CATCH_UP, "300 records at the target", || {
        target.received().len() >= 300
    });
    assert_eq!(delivered(&target), expected(0..300), "each record once");
    let first = &target.received()[0];
    assert_eq!(first["topic"], "events");
    assert_eq!(first["headers"]["source"], "python", "{first}");

    // The target goes down: the sink retries, and its progress stays put.
    target.down.store(true, Ordering::SeqCst);
    let before = target.requests.load(Ordering::SeqCst);
    finish(produce_keyed(kafka, "events", 300, 500));
    wait_for(
        CATCH_UP,
        "the sink to retry against the failing target",
        || {
            let described = describe(&node, dir.path(), "out");
            described["state"] == "retrying"
                && described["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("503"))
                && target.requests.load(Ordering::SeqCst) >= before + 2
        },
    );
    assert_eq!(target.received().len(), 300, "nothing accepted while down");
    assert!(describe(&node, dir.path(), "out")["lag"].as_u64().unwrap() > 0);

    // Back up: everything arrives, once.
    target.down.store(false, Ordering::SeqCst);
    wait_for(CATCH_UP, "500 records at the target", || {
        target.received().len() >= 500
    });
    wait_for(CATCH_UP, "the sink's lag to reach 0", || {
        describe(&node, dir.path(), "out")["lag"] == 0
    });
    assert_eq!(
        delivered(&target),
        expected(0..500),
        "nothing lost or doubled"
    );
    let described = describe(&node, dir.path(), "out");
    assert_eq!(described["state"], "running", "{described}");
    assert_eq!(described["failed"], 0, "{described}");
    let listed = cli(&node, dir.path(), &["connector", "list"]);
    assert!(
        listed.contains("out") && listed.contains("sink"),
        "{listed}"
    );
}

#[test]
fn a_crash_after_a_poll_is_stored_and_before_its_records_are_written_loses_nothing() {
    let source = build_guest("plugins/http-source", "http_source");
    let (target, address) = Target::start();
    target.add_items(1..=40);
    let dir = tempfile::tempdir().unwrap();
    let args = dev_args(&dir.path().join("data"));
    // Abort once the third poll (items 11 to 15) is stored with its batch, before the
    // batch is written to the topic.
    let mut node = Node::start_with_env(
        dir.path(),
        &as_strs(&args),
        &[("RUNNEL_CRASH_AT", "source-progress-stored@3")],
    );
    create_feed(&node, dir.path(), &source, address, &[]);
    node.wait_for_crash(CATCH_UP);
    drop(node);

    let node = Node::start(dir.path(), &as_strs(&args));
    let kafka = node.kafka.unwrap();
    wait_for(CATCH_UP, "the source to reach item 40", || {
        describe(&node, dir.path(), "feed")["cursor"] == "40"
    });
    let ids: Vec<i64> = kcat_read(kafka, "items")
        .iter()
        .map(|(_, _, _, value, _)| {
            serde_json::from_str::<serde_json::Value>(value).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        ids,
        (1..=40).collect::<Vec<_>>(),
        "each item once, in order"
    );
}

#[test]
fn a_source_writes_each_item_once_across_a_crash_and_restart() {
    let source = build_guest("plugins/http-source", "http_source");
    let (target, address) = Target::start();
    target.add_items(1..=40);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = start_dev(dir.path());
    let created = create_feed(&node, dir.path(), &source, address, &["key.field=name"]);
    assert!(created.contains("created topic items"), "{created}");
    let kafka = node.kafka.unwrap();
    wait_for(CATCH_UP, "the first items in the topic", || {
        kcat_read(kafka, "items").len() >= 10
    });

    // A crash mid-way: the restarted node resumes from the stored cursor.
    node.signal(libc::SIGKILL);
    node.wait_for_exit();
    drop(node);
    target.add_items(41..=80);
    let node = Node::start(dir.path(), &as_strs(&dev_args(&data)));
    let kafka = node.kafka.unwrap();
    wait_for(CATCH_UP, "80 items in the topic", || {
        kcat_read(kafka, "items").len() >= 80
    });
    wait_for(CATCH_UP, "the source to reach item 80", || {
        describe(&node, dir.path(), "feed")["cursor"] == "80"
    });
    // A few more polls find nothing new.
    std::thread::sleep(Duration::from_millis(500));
    let records = kcat_read(kafka, "items");
    let ids: Vec<i64> = records
        .iter()
        .map(|(_, _, _, value, _)| {
            serde_json::from_str::<serde_json::Value>(value).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        ids,
        (1..=80).collect::<Vec<_>>(),
        "each item once, in order"
    );
    assert_eq!(records[0].2, "item-1", "keyed by key.field");
    let described = describe(&node, dir.path(), "feed");
    assert_eq!(described["kind"], "source");
    assert_eq!(described["state"], "running", "{described}");
    let text = cli(&node, dir.path(), &["connector", "describe", "feed"]);
    assert!(text.contains("position: 80"), "{text}");
    assert!(text.contains("records written: 80"), "{text}");

    // Pause, resume and delete.
    cli(&node, dir.path(), &["connector", "pause", "feed"]);
    assert_eq!(describe(&node, dir.path(), "feed")["state"], "paused");
    cli(&node, dir.path(), &["connector", "resume", "feed"]);
    cli(&node, dir.path(), &["connector", "delete", "feed"]);
    let gone = runnel_cli_output(&node, dir.path(), &["connector", "describe", "feed"]);
    assert!(!gone.status.success());
}

/// The ids of the items in `topic`, in offset order, as kcat reads them through `kafka`.
fn item_ids(kafka: SocketAddr, topic: &str) -> Vec<i64> {
    kcat_read(kafka, topic)
        .iter()
        .map(|(_, _, _, value, _)| {
            serde_json::from_str::<serde_json::Value>(value).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect()
}

#[test]
fn a_source_moves_to_another_broker_when_its_broker_is_lost_and_writes_each_item_once() {
    let source = build_guest("plugins/http-source", "http_source");
    let (target, address) = Target::start();
    target.add_items(1..=40);
    // Three nodes sharing one component store (an S3 bucket); every topic the connector
    // creates, its state topic included, has three replicas.
    let s3 = S3Server::start();
    let config = format!(
        "{}[broker]\ndefault_replication_factor = 3\n",
        s3.tier_config()
    );
    let mut cluster = Cluster::new(3, 3).with_config(&config);
    for id in 1..=3 {
        cluster.spawn(id);
    }
    cluster.read_banners(&[1, 2, 3]);
    let dir = tempfile::tempdir().unwrap();
    create_feed(
        cluster.node(1),
        dir.path(),
        &source,
        address,
        &["key.field=name"],
    );
    let runner = |cluster: &Cluster, asking: usize| -> Option<usize> {
        let topics = cluster.topics(asking);
        topics
            .as_array()?
            .iter()
            .find(|t| t["name"] == "__runnel-fn-feed-state")?["partitions"][0]["leader"]
            .as_u64()
            .map(|id| id as usize)
    };
    wait_for(CATCH_UP, "the first items in the topic", || {
        item_ids(cluster.node(1).kafka.unwrap(), "items").len() >= 10
    });
    let first = runner(&cluster, 1).expect("the source's node");
    let isr = cluster
        .topics(1)
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "items")
        .unwrap()["partitions"][0]["isr"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(isr, 3, "the topic is replicated");

    // The source's node is lost mid-way. Once it is fenced, its state topic's partition
    // moves to a node holding a replica, and the source with it: it resumes from the
    // stored cursor, items added meanwhile included.
    cluster.kill(first);
    let killed = Instant::now();
    target.add_items(41..=80);
    let survivor = (1..=3).find(|id| *id != first).unwrap();
    let kafka = cluster.node(survivor).kafka.unwrap();
    wait_for(CATCH_UP, "the source on another node", || {
        runner(&cluster, survivor).is_some_and(|id| id != first)
    });
    let second = runner(&cluster, survivor).unwrap();
    wait_for(CATCH_UP, "80 items in the topic", || {
        item_ids(kafka, "items").len() >= 80
    });
    eprintln!(
        "source node {first} killed; on node {second}, all 80 items written {:?} later",
        killed.elapsed()
    );
    wait_for(CATCH_UP, "the source to reach item 80", || {
        describe(cluster.node(second), dir.path(), "feed")["cursor"] == "80"
    });
    // A few more polls find nothing new.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        item_ids(kafka, "items"),
        (1..=80).collect::<Vec<_>>(),
        "each item once, in order, across the move"
    );
    let described = describe(cluster.node(second), dir.path(), "feed");
    assert_eq!(described["state"], "running", "{described}");
    // The other survivor stops first: it leaves the ISR of the topics without a quorum to
    // say so, and the source's node still stops promptly.
    let other = (1..=3).find(|id| *id != first && *id != second).unwrap();
    cluster.stop(other);
    cluster.stop(second);
}

#[test]
fn outgoing_http_off_the_allow_list_is_refused_and_reported() {
    let sink = build_guest("plugins/http-sink", "http_sink");
    let (target, address) = Target::start();
    let dir = tempfile::tempdir().unwrap();
    let node = start_dev(dir.path());
    cli(&node, dir.path(), &["topic", "create", "private"]);
    runnel_cli(&node, dir.path(), &["produce", "private"], "secret\n");
    let wasm = sink.display().to_string();
    let url = format!("http://{address}/ingest");
    cli(
        &node,
        dir.path(),
        &[
            "connector",
            "create",
            "leak",
            "--kind",
            "sink",
            "--wasm",
            &wasm,
            "--topic",
            "private",
            "--config",
            &format!("url={url}"),
            "--allow-host",
            "api.example.com",
        ],
    );
    wait_for(CATCH_UP, "the refusal in describe", || {
        describe(&node, dir.path(), "leak")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("allow-list"))
    });
    let described = describe(&node, dir.path(), "leak");
    assert_eq!(described["state"], "retrying", "{described}");
    assert_eq!(
        target.requests.load(Ordering::SeqCst),
        0,
        "nothing reached it"
    );
    // Log lines reach the log topic a little after the error shows in describe (they are
    // gathered for 100 ms, and the topic is created on the first line).
    let refusal = format!(
        "refused outgoing HTTP to {}:{}",
        address.ip(),
        address.port()
    );
    wait_for(CATCH_UP, "the refusal in the log stream", || {
        cli(&node, dir.path(), &["fn", "logs", "leak"]).contains(&refusal)
    });

    // A transform cannot make requests at all: its world has no wasi:http.
    let refused = runnel_cli_output(
        &node,
        dir.path(),
        &[
            "fn", "deploy", &wasm, "--name", "sneaky", "--input", "private", "--output", "private",
        ],
    );
    assert!(!refused.status.success());
    // A connector name is not a function to `runnel connector`, nor the other way.
    let mixed = runnel_cli_output(&node, dir.path(), &["connector", "describe", "nothing"]);
    assert!(!mixed.status.success());
}

#[test]
fn a_call_that_waits_on_a_slow_server_ends_at_its_deadline() {
    let sink = build_guest("plugins/http-sink", "http_sink");
    let (target, address) = Target::start();
    target.trickle.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let node = start_dev(dir.path());
    cli(&node, dir.path(), &["topic", "create", "slow"]);
    runnel_cli(&node, dir.path(), &["produce", "slow"], "a\nb\n");
    let wasm = sink.display().to_string();
    let url = format!("url=http://{address}/ingest");
    let allow = address.to_string();
    cli(
        &node,
        dir.path(),
        &[
            "connector",
            "create",
            "patient",
            "--kind",
            "sink",
            "--wasm",
            &wasm,
            "--topic",
            "slow",
            "--config",
            &url,
            "--allow-host",
            &allow,
            "--timeout-ms",
            "1500",
        ],
    );
    // The server never finishes a response: each call fails at its 1.5 s deadline
    // instead of waiting on it for ever, and is retried.
    wait_for(CATCH_UP, "calls ended by their deadline", || {
        let described = describe(&node, dir.path(), "patient");
        described["instances"][0]["errors"].as_u64().unwrap_or(0) >= 2
    });
    assert!(target.requests.load(Ordering::SeqCst) >= 2);
    let started = Instant::now();
    cli(&node, dir.path(), &["connector", "pause", "patient"]);
    cli(&node, dir.path(), &["connector", "delete", "patient"]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a pause and delete wait at most for the call in flight"
    );
}

#[test]
fn a_failing_poll_stops_or_retries_as_its_policy_says_and_an_oversized_one_writes_nothing() {
    let datagen = build_guest("plugins/datagen", "datagen");
    let plugin_dir = datagen.parent().unwrap().display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let node = start_dev(dir.path());
    let create = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "connector",
            "create",
            name,
            "--kind",
            "source",
            "--plugin",
            "datagen",
            "--plugin-dir",
            &plugin_dir,
            "--poll-interval-ms",
            "50",
        ];
        args.extend_from_slice(extra);
        cli(&node, dir.path(), &args)
    };
    let settles = |name: &str, state: &str, error: &str| {
        wait_for(CATCH_UP, &format!("{name} {state} with `{error}`"), || {
            let described = describe(&node, dir.path(), name);
            described["state"] == state
                && described["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains(error))
        });
    };
    // datagen refuses rate=0 on every poll: `stop` parks the source with the error.
    create(
        "broken",
        &[
            "--config",
            "topic=a",
            "--config",
            "rate=0",
            "--on-failure",
            "stop",
            "--retries",
            "1",
        ],
    );
    settles("broken", "stopped", "at least 1 record per second");
    // A poll whose batch is over the topic's max.message.bytes is refused and retried;
    // nothing of it is written.
    create(
        "huge",
        &[
            "--config",
            "topic=b",
            "--config",
            "shape=bytes:1048576",
            "--config",
            "rate=100",
            "--batch-records",
            "2",
        ],
    );
    settles("huge", "retrying", "max.message.bytes");
    for topic in ["a", "b"] {
        let described: serde_json::Value = serde_json::from_str(&cli(
            &node,
            dir.path(),
            &["topic", "describe", topic, "-o", "json"],
        ))
        .unwrap();
        assert_eq!(described["partitions"][0]["high_watermark"], 0, "{topic}");
    }
}

#[test]
fn datagen_produces_at_its_configured_rate() {
    let datagen = build_guest("plugins/datagen", "datagen");
    let plugin_dir = datagen.parent().unwrap().display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let node = start_dev(dir.path());
    let created = cli(
        &node,
        dir.path(),
        &[
            "connector",
            "create",
            "gen",
            "--kind",
            "source",
            "--plugin",
            "datagen",
            "--plugin-dir",
            &plugin_dir,
            "--config",
            "topic=generated",
            "--config",
            "rate=300",
            "--config",
            "key=user",
        ],
    );
    assert!(created.contains("created source gen"), "{created}");
    let written = || -> u64 {
        let topic: serde_json::Value = serde_json::from_str(&cli(
            &node,
            dir.path(),
            &["topic", "describe", "generated", "-o", "json"],
        ))
        .unwrap();
        topic["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["high_watermark"].as_u64().unwrap())
            .sum()
    };
    wait_for(CATCH_UP, "datagen's first records", || written() > 0);
    let (start, first) = (Instant::now(), written());
    std::thread::sleep(Duration::from_secs(6));
    let (elapsed, last) = (start.elapsed(), written());
    let rate = (last - first) as f64 / elapsed.as_secs_f64();
    assert!(
        (300.0 * 0.75..=300.0 * 1.25).contains(&rate),
        "datagen wrote {rate:.0} records/s, configured 300"
    );
    let kafka = node.kafka.unwrap();
    let records = kcat_read(kafka, "generated");
    let mut by_id = BTreeMap::new();
    for (_, _, key, value, _) in &records {
        let event: serde_json::Value = serde_json::from_str(value).unwrap();
        assert_eq!(event["user"], key.as_str());
        by_id.insert(event["id"].as_u64().unwrap(), ());
    }
    assert_eq!(by_id.len(), records.len(), "every id once");
    assert_eq!(by_id.keys().next(), Some(&0));
}

/// A GET of the test S3 server, signed as the sink signs (moto refuses anonymous reads of
/// the objects); the status and body.
fn s3_get(s3: &S3Server, path: &str, query: &[(&str, &str)]) -> (u16, String) {
    let path = runnel_sigv4::encode_path(path);
    let query = runnel_sigv4::encode_query(query);
    let host = s3.address.to_string();
    let signed = runnel_sigv4::sign(&runnel_sigv4::Request {
        method: "GET",
        host: &host,
        path: &path,
        query: &query,
        payload: b"",
        region: "us-east-1",
        access_key: "AKIDTEST",
        secret_key: "secret",
        unix_seconds: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    });
    let mut stream = TcpStream::connect(s3.address).unwrap();
    let target = if query.is_empty() {
        path.clone()
    } else {
        format!("{path}?{query}")
    };
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAuthorization: {}\r\nx-amz-date: {}\r\nx-amz-content-sha256: {}\r\n\r\n",
        signed.authorization, signed.date, signed.content_sha256
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// The records under `prefix` in the test S3 server's bucket `runnel`: each object's
/// JSON lines, by key.
fn objects(s3: &S3Server, prefix: &str) -> BTreeMap<String, Vec<serde_json::Value>> {
    let (status, listing) = s3_get(
        s3,
        "/runnel",
        &[("list-type", "2"), ("max-keys", "1000"), ("prefix", prefix)],
    );
    assert_eq!(status, 200, "{listing}");
    let mut objects = BTreeMap::new();
    for part in listing.split("<Key>").skip(1) {
        let key = part.split("</Key>").next().unwrap().to_string();
        let (status, body) = s3_get(s3, &format!("/runnel/{key}"), &[]);
        assert_eq!(status, 200, "{key}: {body}");
        let lines = body
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        objects.insert(key, lines);
    }
    objects
}

#[test]
fn the_object_store_sink_writes_json_lines_to_a_bucket_through_an_outage() {
    let sink = build_guest("plugins/object-store-sink", "object_store_sink");
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let node = start_dev(dir.path());
    let kafka = node.kafka.unwrap();
    cli(&node, dir.path(), &["topic", "create", "orders"]);
    finish(produce_keyed(kafka, "orders", 0, 250));
    let wasm = sink.display().to_string();
    let endpoint = format!("endpoint=http://{}", s3.address);
    let allow = s3.address.to_string();
    cli(
        &node,
        dir.path(),
        &[
            "connector",
            "create",
            "archive",
            "--kind",
            "sink",
            "--wasm",
            &wasm,
            "--topic",
            "orders",
            "--config",
            &endpoint,
            "--config",
            "bucket=runnel",
            "--config",
            "prefix=archive/",
            "--config",
            "access.key=AKIDTEST",
            "--config",
            "secret.key=secret",
            "--allow-host",
            &allow,
            "--batch-records",
            "100",
        ],
    );
    let records = |objects: &BTreeMap<String, Vec<serde_json::Value>>| -> Vec<(String, String)> {
        let mut records: Vec<(String, String)> = objects
            .values()
            .flatten()
            .map(|r| {
                (
                    r["key"].as_str().unwrap().to_string(),
                    r["value"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        records.sort();
        records
    };
    wait_for(CATCH_UP, "250 records in the bucket", || {
        records(&objects(&s3, "archive/")).len() >= 250
    });
    let written = objects(&s3, "archive/");
    assert_eq!(records(&written), expected(0..250), "each record once");
    let first_key = written.keys().next().unwrap();
    assert!(
        first_key.starts_with("archive/orders/partition=0/00000000000000000000-"),
        "{first_key}"
    );
    assert!(written.values().all(|lines| lines.len() <= 100));

    // The store fails: the sink retries and loses nothing once it is back.
    s3.fault("error");
    finish(produce_keyed(kafka, "orders", 250, 400));
    wait_for(
        CATCH_UP,
        "the sink to retry against the failing store",
        || {
            let described = describe(&node, dir.path(), "archive");
            described["state"] == "retrying"
                && described["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("503"))
        },
    );
    s3.fault("ok");
    wait_for(CATCH_UP, "400 records in the bucket", || {
        records(&objects(&s3, "archive/")).len() >= 400
    });
    wait_for(CATCH_UP, "the sink's lag to reach 0", || {
        describe(&node, dir.path(), "archive")["lag"] == 0
    });
    assert_eq!(
        records(&objects(&s3, "archive/")),
        expected(0..400),
        "nothing lost or doubled"
    );
}
