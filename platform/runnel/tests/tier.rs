//! Tiered storage on a real node: sealed segments uploaded to the node's object store as
//! Parquet files that a data-lake reader (pyarrow) reads back as exactly the records a
//! Kafka client produced; and, against a real S3-protocol server (moto) behind a
//! fault-injecting proxy, local deletion after upload, Kafka fetches from offset 0 served
//! from the tier, an outage of every kind with nothing lost, and restore after a wipe.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const UPLOADED: Duration = Duration::from_secs(60);

fn cli(node: &Node, dir: &Path, args: &[&str]) -> String {
    runnel_cli(node, dir, args, "")
}

/// The records of the topic's Parquet files, as pyarrow reads them.
fn read_parquet(topic_dir: &Path) -> Vec<serde_json::Value> {
    let output = python_client("read_parquet.py")
        .arg(topic_dir)
        .output()
        .expect("run read_parquet.py");
    assert!(
        output.status.success(),
        "read_parquet.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// The newest manifest of a partition, parsed.
fn manifest(partition_dir: &Path) -> Option<serde_json::Value> {
    let mut versions: Vec<_> = std::fs::read_dir(partition_dir.join("manifest"))
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    versions.sort();
    let text = std::fs::read_to_string(versions.last()?).ok()?;
    serde_json::from_str(&text).ok()
}

/// The base offset of a partition's active (newest) local segment.
fn active_base(data: &Path, topic: &str, partition: usize) -> u64 {
    let dir = data.join(format!("partitions/{topic}-{partition}"));
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse::<u64>().ok()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn sealed_segments_are_uploaded_as_parquet_that_pyarrow_reads_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = Node::start(dir.path(), &as_strs(&dev_args(&data)));
    let kafka = node.kafka.unwrap();
    // Small segments, so a few thousand records seal many; and an untiered topic, which
    // must not be uploaded.
    cli(
        &node,
        dir.path(),
        &[
            "topic",
            "create",
            "events",
            "-p",
            "2",
            "--config",
            "segment.bytes=4096",
        ],
    );
    cli(
        &node,
        dir.path(),
        &[
            "topic",
            "create",
            "local-only",
            "--config",
            "segment.bytes=4096",
            "--config",
            "remote.storage.enable=false",
        ],
    );
    // Six rounds, each flushed: at least one batch of about 9 KiB per partition and
    // round, so each partition seals at least five segments however the client batches.
    for round in 0..6 {
        finish(produce_keyed(
            kafka,
            "events",
            round * 500,
            (round + 1) * 500,
        ));
    }
    finish(produce_keyed(kafka, "local-only", 0, 1000));

    let topic_dir = data.join("objects/topics/events");
    // Every sealed segment is uploaded: the manifests end where the active segments begin.
    let describe = |topic: &str| -> serde_json::Value {
        serde_json::from_str(&cli(
            &node,
            dir.path(),
            &["topic", "describe", topic, "-o", "json"],
        ))
        .unwrap()
    };
    let described = describe("events");
    // Uploaded: each manifest ends where the partition's active local segment begins.
    let uploaded = || {
        (0..2).all(|p| {
            manifest(&topic_dir.join(format!("partition={p}")))
                .and_then(|m| m["segments"].as_array()?.last()?["last_offset"].as_u64())
                .is_some_and(|last| last + 1 == active_base(&data, "events", p))
        })
    };
    let deadline = std::time::Instant::now() + UPLOADED;
    while !uploaded() {
        assert!(
            std::time::Instant::now() < deadline,
            "the sealed segments of events were not uploaded in {UPLOADED:?}; topic: {}\nnode:\n{}",
            cli(
                &node,
                dir.path(),
                &["topic", "describe", "events", "-o", "json"]
            ),
            node.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let records = read_parquet(&topic_dir);
    assert!(
        records.len() > 1000,
        "several segments' worth: {}",
        records.len()
    );
    // Each record as produced: offsets dense from 0 in each partition, keys, values and
    // headers intact.
    let mut next = [0u64; 2];
    for record in &records {
        let partition = record["partition"].as_u64().unwrap() as usize;
        assert_eq!(record["offset"], next[partition], "{record}");
        next[partition] += 1;
        let key = record["key"].as_str().unwrap();
        let i: usize = key[1..].parse().unwrap();
        assert_eq!(record["value"], format!("record-{i}"), "{record}");
        assert_eq!(record["headers"], serde_json::json!([["source", "python"]]));
        assert!(record["timestamp"].as_i64().unwrap() > 1_700_000_000_000);
    }
    // What was uploaded is what the manifest lists, up to the active segment.
    for p in 0..2 {
        let manifest = manifest(&topic_dir.join(format!("partition={p}"))).unwrap();
        let segments = manifest["segments"].as_array().unwrap();
        assert!(segments.len() >= 5, "partition {p}: {manifest}");
        let last = segments.last().unwrap()["last_offset"].as_u64().unwrap();
        assert_eq!(last + 1, next[p], "partition {p}: {manifest}");
        let high_watermark = described["partitions"][p]["high_watermark"]
            .as_u64()
            .unwrap();
        assert!(next[p] < high_watermark, "the active segment stays local");
        for segment in segments {
            let key = segment["key"].as_str().unwrap();
            assert!(data.join("objects").join(key).is_file(), "{key}");
            assert!(key.ends_with("-0.parquet"), "leader epoch 0: {key}");
        }
    }
    assert!(!data.join("objects/topics/local-only").exists());
    assert!(!data.join("objects/topics/__consumer_offsets").exists());

    // The counters show the uploads; the lag gauge, set at the end of each pass, falls to 0.
    let metrics = node.get("/metrics").body;
    let uploads = metrics
        .lines()
        .find_map(|l| l.strip_prefix("runnel_tier_uploads_total "))
        .unwrap_or_else(|| panic!("no runnel_tier_uploads_total:\n{metrics}"));
    assert!(uploads.parse::<u64>().unwrap() >= 10, "{uploads}");
    wait_for(UPLOADED, "the upload lag gauge at 0", || {
        node.get("/metrics")
            .body
            .contains("runnel_tier_upload_lag_segments 0\n")
    });
}

/// A counter or gauge of the node's `/metrics`, 0 if absent.
fn metric(node: &Node, name: &str) -> f64 {
    node.get("/metrics")
        .body
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The base offset of a partition's oldest local segment.
fn first_local_base(data: &Path, topic: &str, partition: usize) -> u64 {
    let dir = data.join(format!("partitions/{topic}-{partition}"));
    std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|entry| {
                    let name = entry.ok()?.file_name().into_string().ok()?;
                    name.strip_suffix(".log")?.parse::<u64>().ok()
                })
                .min()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// confluent-kafka reading `count` records of partition 0 from `offset` (see
/// `consume_from.py`); started, not waited for.
fn consume_from(
    kafka: std::net::SocketAddr,
    topic: &str,
    offset: u64,
    count: usize,
) -> std::process::Child {
    python_client("consume_from.py")
        .args([offset.to_string(), count.to_string(), "120".to_string()])
        .env("RUNNEL_BOOTSTRAP", kafka.to_string())
        .env("RUNNEL_TOPIC", topic)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run consume_from.py")
}

/// Waits for a [`consume_from`] reader and checks it read exactly the records
/// `produce_keyed` wrote as `first..first + count`, at offsets `first..`, in order; their
/// timestamps.
fn expect_records(reader: std::process::Child, first: u64, count: usize) -> Vec<i64> {
    let output = reader.wait_with_output().expect("wait for consume_from.py");
    assert!(
        output.status.success(),
        "consume_from.py: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert_eq!(records.len(), count);
    let mut last_timestamp = 0;
    let mut timestamps = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let offset = first + i as u64;
        assert_eq!(record["offset"], offset, "{record}");
        assert_eq!(record["key"], format!("k{offset}"), "{record}");
        assert_eq!(record["value"], format!("record-{offset}"), "{record}");
        assert_eq!(record["headers"], serde_json::json!([["source", "python"]]));
        let timestamp = record["timestamp"].as_i64().unwrap();
        assert!(timestamp >= last_timestamp && timestamp > 1_700_000_000_000);
        last_timestamp = timestamp;
        timestamps.push(timestamp);
    }
    timestamps
}

/// kcat's answer to ListOffsets by `timestamp` for partition 0 of `topic`.
fn offset_for_time(kafka: std::net::SocketAddr, topic: &str, timestamp: i64) -> String {
    let output = std::process::Command::new(&clients().kcat)
        .env_remove("LD_LIBRARY_PATH")
        .args(["-b", &kafka.to_string(), "-Q", "-t"])
        .arg(format!("{topic}:0:{timestamp}"))
        .output()
        .expect("run kcat -Q");
    assert!(
        output.status.success(),
        "kcat -Q: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Creates `topic` with tiny segments and nothing kept locally once uploaded, produces
/// records `0..records` to it in rounds of 500 (see `produce_keyed`), and waits until they
/// are uploaded and deleted locally up to past offset `past`.
fn tiered_and_trimmed_locally(
    node: &Node,
    dir: &Path,
    data: &Path,
    topic: &str,
    records: usize,
    past: u64,
) {
    cli(
        node,
        dir,
        &[
            "topic",
            "create",
            topic,
            "--config",
            "segment.bytes=4096",
            "--config",
            "local.retention.bytes=0",
        ],
    );
    let kafka = node.kafka.unwrap();
    for first in (0..records).step_by(500) {
        finish(produce_keyed(
            kafka,
            topic,
            first,
            (first + 500).min(records),
        ));
    }
    wait_for(UPLOADED, "uploaded segments deleted locally", || {
        first_local_base(data, topic, 0) > past
    });
}

#[test]
fn a_partition_tiered_to_s3_is_served_from_offset_0_through_faults_and_a_wipe() {
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut args = dev_args(&data);
    for set in [
        "tier.url=s3://runnel/cluster-a".to_string(),
        format!("tier.endpoint=http://{}", s3.address),
        "tier.allow_http=true".to_string(),
        "tier.access_key_id=test".to_string(),
        "tier.secret_access_key=test".to_string(),
        "tier.region=us-east-1".to_string(),
        "tier.request_timeout_ms=2000".to_string(),
        "log.retention_check_interval_ms=200".to_string(),
    ] {
        args.push("--set".to_string());
        args.push(set);
    }

    // An unreachable store stops the node at startup, saying so.
    s3.fault("error");
    let refused = run_to_exit(dir.path(), &as_strs(&args));
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("object store") && stderr.contains("s3://runnel/cluster-a"),
        "{stderr}"
    );
    s3.fault("ok");

    let mut node = Node::start(dir.path(), &as_strs(&args));
    let kafka = node.kafka.unwrap();
    tiered_and_trimmed_locally(&node, dir.path(), &data, "history", 2000, 1000);
    // A Kafka client reading from offset 0 gets every record, from the tier.
    let timestamps = expect_records(consume_from(kafka, "history", 0, 2000), 0, 2000);
    assert!(metric(&node, "runnel_tier_reads_total") > 0.0);
    // ListOffsets by timestamp finds tiered records too: the first at or after it.
    let local_start = first_local_base(&data, "history", 0) as usize;
    for probe in [0, 700, local_start.saturating_sub(1)] {
        let expected = timestamps
            .iter()
            .position(|t| *t >= timestamps[probe])
            .unwrap();
        assert!(expected < local_start);
        let answer = offset_for_time(kafka, "history", timestamps[probe]);
        assert!(
            answer.ends_with(&format!("offset {expected}")),
            "timestamp of offset {probe}: {answer}"
        );
    }

    // A restart empties the row-group cache, so the next reads go to the store, which
    // now fails in every way in turn while a reader from offset 0 and a producer run.
    node.signal(libc::SIGTERM);
    assert!(node.wait_for_exit().success());
    let node = Node::start(dir.path(), &as_strs(&args));
    let kafka = node.kafka.unwrap();
    // Once the manifest is attached, the partition starts at 0 again.
    wait_for(UPLOADED, "the manifest attached after the restart", || {
        log_start(&node, dir.path(), "history") == 0
    });
    s3.fault("error");
    let reader = consume_from(kafka, "history", 0, 2500);
    // Produce does not need the store: these stay local until it is back.
    finish(produce_keyed(kafka, "history", 2000, 2500));
    let local_start = first_local_base(&data, "history", 0);
    for fault in ["error", "truncate", "drop", "stall"] {
        s3.fault(fault);
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            first_local_base(&data, "history", 0) <= local_start,
            "nothing unuploaded is deleted during `{fault}`"
        );
    }
    assert!(metric(&node, "runnel_tier_upload_errors_total") > 0.0);
    assert!(metric(&node, "runnel_tier_read_errors_total") > 0.0);
    assert!(metric(&node, "runnel_tier_upload_lag_segments") > 0.0);
    s3.fault("ok");
    // Once it is back: every record exactly once, the backlog uploaded and trimmed.
    expect_records(reader, 0, 2500);
    wait_for(UPLOADED, "the backlog uploaded and deleted locally", || {
        metric(&node, "runnel_tier_upload_lag_segments") == 0.0
            && first_local_base(&data, "history", 0) >= 2000
    });

    // Restore: with the partition's local data wiped, the history the manifest holds
    // (all but the active segment, which was only local) is served again, and new records
    // continue after it.
    let uploaded_end = first_local_base(&data, "history", 0);
    let mut node = node;
    node.signal(libc::SIGTERM);
    assert!(node.wait_for_exit().success());
    std::fs::remove_dir_all(data.join("partitions/history-0")).unwrap();
    let node = Node::start(dir.path(), &as_strs(&args));
    let kafka = node.kafka.unwrap();
    let end = uploaded_end as usize;
    expect_records(consume_from(kafka, "history", 0, end), 0, end);
    let described: serde_json::Value = serde_json::from_str(&cli(
        &node,
        dir.path(),
        &["topic", "describe", "history", "-o", "json"],
    ))
    .unwrap();
    assert_eq!(
        described["partitions"][0]["high_watermark"], uploaded_end,
        "{described}"
    );
    finish(produce_keyed(kafka, "history", end, end + 10));
    expect_records(
        consume_from(kafka, "history", uploaded_end, 10),
        uploaded_end,
        10,
    );
}

/// The log start of partition 0 of `topic`, as `runnel topic describe` reports it.
fn log_start(node: &Node, dir: &Path, topic: &str) -> serde_json::Value {
    let described: serde_json::Value =
        serde_json::from_str(&cli(node, dir, &["topic", "describe", topic, "-o", "json"])).unwrap();
    described["partitions"][0]["log_start_offset"].clone()
}

#[test]
fn records_deleted_below_the_local_start_stay_deleted_after_a_wipe() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut args = dev_args(&data);
    args.extend([
        "--set".to_string(),
        "log.retention_check_interval_ms=200".to_string(),
    ]);
    let mut node = Node::start(dir.path(), &as_strs(&args));
    let kafka = node.kafka.unwrap();
    // The last round seals what came before it: 0-999 are uploaded and deleted locally.
    tiered_and_trimmed_locally(&node, dir.path(), &data, "trimmed", 1500, 600);
    // DeleteRecords below the local log start: only tiered records go, the whole first
    // file and part of the second.
    let deleted = python_client("delete_records.py")
        .arg("700")
        .env("RUNNEL_BOOTSTRAP", kafka.to_string())
        .env("RUNNEL_TOPIC", "trimmed")
        .output()
        .expect("run delete_records.py");
    assert!(
        deleted.status.success(),
        "delete_records.py: {}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&deleted.stdout).trim(), "700");
    // The manifest records the new start, and drops the files wholly below it.
    let partition_dir = data.join("objects/topics/trimmed/partition=0");
    wait_for(UPLOADED, "the deleted start in the manifest", || {
        manifest(&partition_dir).is_some_and(|m| m["start"] == 700)
    });
    let recorded = manifest(&partition_dir).unwrap();
    let first = &recorded["segments"][0];
    assert!(
        first["base_offset"].as_u64().unwrap() <= 700
            && first["last_offset"].as_u64().unwrap() >= 700,
        "{recorded}"
    );
    let files = std::fs::read_dir(&partition_dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
        })
        .count();
    assert_eq!(files, recorded["segments"].as_array().unwrap().len());

    // Wiped and restored: the history starts at 700, not at 0.
    let uploaded_end = first_local_base(&data, "trimmed", 0);
    node.signal(libc::SIGTERM);
    assert!(node.wait_for_exit().success());
    std::fs::remove_dir_all(data.join("partitions/trimmed-0")).unwrap();
    let node = Node::start(dir.path(), &as_strs(&args));
    let kafka = node.kafka.unwrap();
    wait_for(UPLOADED, "the manifest attached after the wipe", || {
        log_start(&node, dir.path(), "trimmed") == 700
    });
    let count = (uploaded_end - 700) as usize;
    expect_records(consume_from(kafka, "trimmed", 700, count), 700, count);
    // The earliest timestamp lookup lands on the new start too.
    let answer = offset_for_time(kafka, "trimmed", 0);
    assert!(answer.ends_with("offset 700"), "{answer}");
}

/// A file that really takes `bytes` of the disk (allocated, not sparse).
fn fill(path: &Path, bytes: u64) -> std::fs::File {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::File::create(path).unwrap();
    // SAFETY: fallocate on a descriptor this function owns.
    let result = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, bytes as libc::off_t) };
    assert_eq!(result, 0, "posix_fallocate of {bytes} bytes");
    file
}

#[test]
fn below_the_free_disk_floor_produce_fails_retriably_and_resumes_when_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The floor a little below what is free now; a filler file twice that margin puts the
    // disk below it, and removing the filler lifts it again. Other tests writing meanwhile
    // use far less than the margin.
    let margin = 256u64 << 20;
    let free = runnel_log::space::available_bytes(dir.path()).unwrap();
    assert!(
        free > 4 * margin,
        "this test needs {} MiB free, the disk has {} MiB",
        (4 * margin) >> 20,
        free >> 20
    );
    let floor = free - margin;
    let mut args = dev_args(&data);
    args.extend(["--set".to_string(), format!("log.min_free_bytes={floor}")]);
    let node = Node::start(dir.path(), &as_strs(&args));
    let kafka = node.kafka.unwrap();
    cli(&node, dir.path(), &["topic", "create", "floor", "-p", "1"]);
    finish(produce_keyed(kafka, "floor", 0, 100));

    let filler_path = dir.path().join("filler");
    let filler = fill(&filler_path, 2 * margin);
    // The node looks at the free space four times a second.
    std::thread::sleep(Duration::from_secs(1));
    let mut produce = runnel(dir.path());
    produce
        .args(["produce", "floor"])
        .env("RUNNEL_SERVER", node.grpc.unwrap().to_string());
    let refused = run_with_stdin(produce, "refused\n");
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "produced below the floor");
    assert!(
        error.contains("below the floor") && error.contains("log.min_free_bytes"),
        "{error}"
    );
    // A Kafka producer keeps retrying meanwhile; nothing it sends is written yet.
    let producer = produce_keyed(kafka, "floor", 100, 200);
    std::thread::sleep(Duration::from_secs(2));
    let described: serde_json::Value = serde_json::from_str(&cli(
        &node,
        dir.path(),
        &["topic", "describe", "floor", "-o", "json"],
    ))
    .unwrap();
    assert_eq!(described["partitions"][0]["high_watermark"], 100);
    // /metrics shows the floor, the free bytes under it, and the refusals.
    let metrics = node.get("/metrics").body;
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert_eq!(value("runnel_log_disk_floor_bytes"), floor);
    assert!(value("runnel_log_disk_free_bytes") < floor, "{metrics}");
    assert!(
        value("runnel_log_appends_refused_disk_full_total") >= 1,
        "{metrics}"
    );
    // Space freed: the producer's retries go through, every record exactly once (retries
    // of a producer without idempotence may reorder them).
    drop(filler);
    std::fs::remove_file(&filler_path).unwrap();
    finish(producer);
    let records = kcat_read(kafka, "floor");
    assert!(
        records.iter().enumerate().all(|(i, r)| r.1 == i as i64),
        "offsets dense from 0: {records:?}"
    );
    let mut values: Vec<&str> = records.iter().map(|r| r.3.as_str()).collect();
    values.sort_by_key(|v| v["record-".len()..].parse::<u32>().unwrap());
    let expected: Vec<String> = (0..200).map(|i| format!("record-{i}")).collect();
    assert_eq!(values, expected);
}
