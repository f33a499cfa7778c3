//! Components built from source in this repository (the examples and a hostile guest),
//! run by the host: outputs, kv state, consumers' produced records, and containment of
//! loops, memory bombs, traps, oversized and ungranted components.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use runnel_abi::{BatchWriter, Outputs};
use runnel_functions::{FunctionError, FunctionHost, Kind, Limits};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds the guest crate at `dir` (relative to the repository) for wasm32-wasip2 and
/// returns its component's bytes. Guests share one target directory beside the host's.
fn build(dir: &str, name: &str) -> Vec<u8> {
    static LOCK: OnceLock<std::sync::Mutex<()>> = OnceLock::new();
    let _one_at_a_time = LOCK.get_or_init(Default::default).lock().unwrap();
    let host_target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repository().join("target"));
    let target = host_target.join("wasm-guests");
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()))
        .args([
            "build",
            "--quiet",
            "--locked",
            "--release",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--manifest-path")
        .arg(repository().join(dir).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run cargo");
    assert!(
        output.status.success(),
        "building {dir} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = target.join(format!("wasm32-wasip2/release/{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn batch(values: &[&str], first_offset: i64) -> Vec<u8> {
    let mut writer = BatchWriter::new("input", 0, 0).unwrap();
    for (i, value) in values.iter().enumerate() {
        writer
            .push(
                first_offset + i as i64,
                1_700_000_000_000 + i as i64,
                Some(format!("k{i}").as_bytes()),
                Some(value.as_bytes()),
                [("trace", Some(&b"t1"[..]))].into_iter(),
            )
            .unwrap();
    }
    writer.finish()
}

fn values(outputs: &[u8]) -> Vec<String> {
    Outputs::parse(outputs)
        .unwrap()
        .iter()
        .map(|o| String::from_utf8(o.value.unwrap_or_default().to_vec()).unwrap())
        .collect()
}

fn config(mode: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("mode".to_string(), mode.to_string())])
}

#[test]
fn the_uppercase_example_transforms_a_batch_keeping_keys_and_headers() {
    let host = FunctionHost::new().unwrap();
    let wasm = build("examples/functions/uppercase", "uppercase");
    let function = host
        .compile(Kind::Transform, &wasm, Limits::default())
        .unwrap();
    let mut instance = function
        .instantiate(BTreeMap::new(), BTreeMap::new())
        .unwrap();
    let outputs = instance.process(&batch(&["ana", "Zeca", ""], 40)).unwrap();
    assert_eq!(values(&outputs), vec!["ANA", "ZECA", ""]);
    let parsed = Outputs::parse(&outputs).unwrap();
    let first = parsed.iter().next().unwrap();
    assert_eq!(first.key, Some(&b"k0"[..]));
    assert_eq!(first.headers, vec![("trace", Some(&b"t1"[..]))]);
    assert_eq!(first.timestamp, Some(1_700_000_000_000));
    assert_eq!((first.topic, first.partition), (None, None));
    // Many calls on one instance, and an empty batch.
    for round in 0..100 {
        let outputs = instance.process(&batch(&["x"], round)).unwrap();
        assert_eq!(values(&outputs), vec!["X"]);
    }
    assert!(values(&instance.process(&batch(&[], 0)).unwrap()).is_empty());
}

#[test]
fn the_word_count_consumer_keeps_counts_in_kv_and_produces_them() {
    let host = FunctionHost::new().unwrap();
    let wasm = build("examples/functions/word-count", "word_count");
    let function = host
        .compile(Kind::Consumer, &wasm, Limits::default())
        .unwrap();
    let mut instance = function
        .instantiate(BTreeMap::new(), BTreeMap::new())
        .unwrap();
    instance
        .process(&batch(&["to be or not", "To BE"], 0))
        .unwrap();
    let state = instance.state().unwrap();
    assert_eq!(state.kv.get(&b"to"[..]), Some(&b"2".to_vec()));
    assert_eq!(state.kv.get(&b"not"[..]), Some(&b"1".to_vec()));
    let produced = std::mem::take(&mut state.produced);
    assert_eq!(produced.len(), 1);
    let counts: Vec<(String, String)> = Outputs::parse(&produced[0])
        .unwrap()
        .iter()
        .map(|o| {
            (
                String::from_utf8(o.key.unwrap().to_vec()).unwrap(),
                String::from_utf8(o.value.unwrap().to_vec()).unwrap(),
            )
        })
        .collect();
    assert_eq!(counts.len(), 6);
    assert_eq!(counts[4], ("to".to_string(), "2".to_string()));
    assert_eq!(counts[5], ("be".to_string(), "2".to_string()));

    // The kv state handed to a new instance (as after a restart) carries the counts on.
    let saved = instance.state().unwrap().kv.clone();
    let mut restarted = function.instantiate(BTreeMap::new(), saved).unwrap();
    restarted.process(&batch(&["be"], 2)).unwrap();
    assert_eq!(
        restarted.state().unwrap().kv.get(&b"be"[..]),
        Some(&b"3".to_vec())
    );

    // A consumer imports `produce`, which transforms are not granted.
    let refused = host
        .compile(Kind::Transform, &wasm, Limits::default())
        .err()
        .expect("a consumer is not a transform");
    assert!(
        matches!(
            refused,
            FunctionError::Invalid {
                kind: "transform",
                ..
            }
        ),
        "{refused}"
    );
}

#[test]
fn hostile_components_are_contained_and_others_keep_running() {
    let host = FunctionHost::new().unwrap();
    let wasm = build("platform/runnel-functions/tests/guests/hostile", "hostile");
    let limits = Limits {
        memory_bytes: 32 << 20,
        call_timeout: Duration::from_millis(300),
        kv_bytes: 4 << 20,
        ..Limits::default()
    };
    let function = host.compile(Kind::Transform, &wasm, limits).unwrap();
    let mut echo = function
        .instantiate(config("echo"), BTreeMap::new())
        .unwrap();

    // An infinite loop is interrupted at the call timeout.
    let mut looping = function
        .instantiate(config("loop"), BTreeMap::new())
        .unwrap();
    let started = Instant::now();
    let error = looping.process(&batch(&["a"], 0)).unwrap_err();
    assert!(matches!(error, FunctionError::Timeout(_)), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(values(&echo.process(&batch(&["b"], 0)).unwrap()), vec!["b"]);

    // A memory bomb hits the memory limit and traps.
    let mut bomb = function
        .instantiate(config("bomb"), BTreeMap::new())
        .unwrap();
    let error = bomb.process(&batch(&["a"], 0)).unwrap_err();
    assert!(matches!(error, FunctionError::Trap(_)), "{error}");

    // kv state past its limit traps, with the reason.
    let mut hoarder = function
        .instantiate(config("kv-bomb"), BTreeMap::new())
        .unwrap();
    let error = hoarder.process(&batch(&["a"], 0)).unwrap_err();
    assert!(
        error.to_string().contains("kv state would grow past"),
        "{error}"
    );
    assert!(hoarder.state().unwrap().kv.len() <= 4);

    // A trap poisons only that call's instance: the next batch runs on a fresh one, with
    // the function's state kept.
    let mut flaky = function
        .instantiate(config("trap-on-9"), BTreeMap::new())
        .unwrap();
    let error = flaky.process(&batch(&["a", "b"], 8)).unwrap_err();
    assert!(matches!(error, FunctionError::Trap(_)), "{error}");
    assert!(error.to_string().contains("unreachable"), "{error}");
    assert_eq!(
        values(&flaky.process(&batch(&["c"], 10)).unwrap()),
        vec!["c"]
    );

    // An error returned by the function is reported as such.
    let mut failing = function
        .instantiate(config("fail"), BTreeMap::new())
        .unwrap();
    match failing.process(&batch(&["a"], 0)).unwrap_err() {
        FunctionError::Failed(message) => {
            assert!(message.contains("refused on purpose"), "{message}")
        }
        other => panic!("{other}"),
    }

    // kv, logs and metrics, and the state surviving a trap in the same instance.
    let mut counting = function
        .instantiate(config("count"), BTreeMap::new())
        .unwrap();
    let outputs = counting.process(&batch(&["a", "b", "c"], 0)).unwrap();
    assert_eq!(values(&outputs), vec!["1", "2", "3"]);
    let state = counting.state().unwrap();
    assert_eq!(state.counters.get("records"), Some(&3));
    assert_eq!(state.logs.len(), 3);
    assert_eq!(state.logs[2].message, "record 2 is number 3");

    // Oversized and malformed components are refused before anything runs.
    let huge = vec![0u8; 100 << 20];
    assert!(matches!(
        host.compile(Kind::Transform, &huge, Limits::default()),
        Err(FunctionError::TooLarge { .. })
    ));
    assert!(matches!(
        host.compile(Kind::Transform, b"\0asm not really", Limits::default()),
        Err(FunctionError::Invalid { .. })
    ));
}

#[test]
fn connectors_are_checked_against_their_worlds_and_the_http_grant() {
    let host = FunctionHost::new().unwrap();
    let sink = build("plugins/http-sink", "http_sink");
    host.compile(Kind::Sink, &sink, Limits::default())
        .expect("a sink compiles as a sink");
    // A transform's world has no wasi:http: the import cannot be satisfied.
    let refused = host
        .compile(Kind::Transform, &sink, Limits::default())
        .err()
        .expect("a sink is not a transform");
    assert!(
        refused.to_string().contains("not a valid transform"),
        "{refused}"
    );
    // Without the grant `http`, a connector importing wasi:http is refused.
    let refused = host
        .compile_granted(
            Kind::Sink,
            &sink,
            Limits::default(),
            &["log", "config", "kv", "metrics"],
            None,
        )
        .err()
        .expect("http was not granted");
    assert!(refused.to_string().contains("wasi:http"), "{refused}");
}

#[test]
fn the_datagen_source_polls_numbered_records_and_resumes_from_its_cursor() {
    let host = FunctionHost::new().unwrap();
    let datagen = build("plugins/datagen", "datagen");
    let function = host
        .compile(Kind::Source, &datagen, Limits::default())
        .unwrap();
    let settings = BTreeMap::from([
        ("rate".to_string(), "1000".to_string()),
        ("shape".to_string(), "counter".to_string()),
    ]);
    let mut instance = function
        .instantiate(settings.clone(), BTreeMap::new())
        .unwrap();
    let first = instance.poll(None, 100).unwrap();
    assert!(
        values(&first.records).is_empty(),
        "nothing is due at the start"
    );
    let cursor = first.cursor.expect("a cursor");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let second = instance.poll(Some(&cursor), 100).unwrap();
    // 1000 a second for 300 ms is due; 100 at most per poll.
    assert_eq!(
        values(&second.records),
        (0..100).map(|n| n.to_string()).collect::<Vec<_>>()
    );
    // A fresh instance (a restart) goes on from the cursor.
    let mut restarted = function.instantiate(settings, BTreeMap::new()).unwrap();
    let third = restarted.poll(second.cursor.as_deref(), 10).unwrap();
    assert_eq!(
        values(&third.records),
        (100..110).map(|n| n.to_string()).collect::<Vec<_>>()
    );
    // A source has no `process`.
    assert!(restarted.process(&batch(&["x"], 0)).is_err());
}
