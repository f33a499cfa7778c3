//! Tiered storage on a real node: sealed segments uploaded to the node's object store as
//! Parquet files that a data-lake reader (pyarrow) reads back as exactly the records a
//! Kafka client produced.

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
