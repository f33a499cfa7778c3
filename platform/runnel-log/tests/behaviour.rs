//! The partition log's behaviour, one property per test.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use runnel_config::{CleanupPolicy, TimestampType, TopicConfig};
use runnel_log::{LogError, LogMetrics, PartitionLog};

fn config() -> TopicConfig {
    TopicConfig::default()
}

#[tokio::test]
async fn appends_get_contiguous_offsets_and_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config()).await;
    let mut expected = Vec::new();
    for i in 0..50u64 {
        let count = (i % 4 + 1) as usize;
        let appended = log
            .append(simple_batch(count, 10, 1_000 + i as i64))
            .await
            .unwrap();
        assert_eq!(appended.base_offset, expected.len() as u64);
        assert_eq!(
            appended.last_offset,
            appended.base_offset + count as u64 - 1
        );
        expected.extend((0..count).map(|_| appended.base_offset));
    }
    assert_eq!(log.log_end(), expected.len() as u64);
    assert_eq!(log.high_watermark(), log.log_end());
    let seen = read_all(&log, 0, 300).await.unwrap();
    assert_eq!(
        seen.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (0..expected.len() as u64).collect::<Vec<_>>()
    );
    // Reading from the middle of a batch returns the whole batch that holds it.
    let result = log.read(5, 1 << 20).await.unwrap();
    let first = decode(&result.records)[0].offset;
    assert!(first <= 5);
}

#[tokio::test]
async fn a_read_returns_whole_batches_and_at_least_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config()).await;
    for _ in 0..10 {
        log.append(simple_batch(10, 100, 1)).await.unwrap();
    }
    let one_batch_len = simple_batch(10, 100, 1).len();
    let tiny = log.read(0, 1).await.unwrap();
    assert_eq!(
        tiny.records.len(),
        one_batch_len,
        "at least one whole batch"
    );
    let three = log
        .read(0, one_batch_len * 3 + one_batch_len / 2)
        .await
        .unwrap();
    assert_eq!(
        three.records.len(),
        one_batch_len * 3,
        "never a partial batch"
    );
}

#[tokio::test]
async fn offsets_out_of_range_are_errors_and_the_end_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config()).await;
    log.append(simple_batch(3, 1, 1)).await.unwrap();
    assert!(log.read(3, 1000).await.unwrap().records.is_empty());
    assert!(matches!(
        log.read(4, 1000).await,
        Err(LogError::OffsetOutOfRange { offset: 4, .. })
    ));
}

#[tokio::test]
async fn invalid_batches_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut small = config();
    small.max_message_bytes = 500;
    let log = open(dir.path(), small).await;
    log.append(simple_batch(1, 1, 1)).await.unwrap();
    let mut corrupt = simple_batch(2, 10, 1);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert!(matches!(
        log.append(corrupt).await,
        Err(LogError::InvalidBatch(_))
    ));
    assert!(matches!(
        log.append(simple_batch(10, 100, 1)).await,
        Err(LogError::BatchTooLarge { .. })
    ));
    assert!(matches!(
        log.append(bytes::BytesMut::from(&b"short"[..])).await,
        Err(LogError::InvalidBatch(_))
    ));
    assert_eq!(log.log_end(), 1);
    assert_eq!(read_all(&log, 0, 1 << 20).await.unwrap().len(), 1);
    // The partition keeps working after a refusal.
    assert_eq!(
        log.append(simple_batch(1, 1, 1)).await.unwrap().base_offset,
        1
    );
}

#[tokio::test]
async fn segments_roll_by_size_and_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.segment_bytes = 1000;
    let log = open(dir.path(), cfg.clone()).await;
    for _ in 0..10 {
        log.append(simple_batch(1, 300, 1)).await.unwrap();
    }
    let segments = log.segments();
    assert!(segments.len() >= 4, "{segments:?}");
    for pair in segments.windows(2) {
        assert!(pair[0].size <= 1000);
        assert_eq!(pair[0].next_offset, pair[1].base_offset);
    }
    for name in [
        "00000000000000000000.log",
        "00000000000000000000.index",
        "00000000000000000000.timeindex",
    ] {
        assert!(dir.path().join(name).exists(), "{name}");
    }

    let aged = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.segment_ms = 50;
    let log = open(aged.path(), cfg).await;
    log.append(simple_batch(1, 1, 1)).await.unwrap();
    log.roll_if_expired().await.unwrap();
    assert_eq!(log.segments().len(), 1, "too young to roll");
    tokio::time::sleep(Duration::from_millis(60)).await;
    log.append(simple_batch(1, 1, 1)).await.unwrap();
    assert_eq!(
        log.segments().len(),
        2,
        "the append after segment.ms rolled"
    );
    tokio::time::sleep(Duration::from_millis(60)).await;
    log.roll_if_expired().await.unwrap();
    assert_eq!(
        log.segments().len(),
        3,
        "an idle old segment is rolled by maintenance"
    );
}

#[tokio::test]
async fn retention_deletes_whole_old_segments_but_never_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.retention_ms = Some(1_000);
    let log = open(dir.path(), cfg).await;
    // Three sealed segments with timestamps 1000, 2000, 3000 and an active one at 4000.
    for ts in [1_000, 2_000, 3_000, 4_000] {
        log.append(simple_batch(2, 10, ts)).await.unwrap();
        if ts < 4_000 {
            log.roll().await.unwrap();
        }
    }
    let outcome = log.enforce_retention(3_500).await.unwrap();
    assert_eq!(
        outcome.deleted_segments, 2,
        "segments newest 1000 and 2000 are past 1000 ms"
    );
    assert_eq!(log.log_start(), 4);
    assert!(matches!(
        log.read(0, 100).await,
        Err(LogError::OffsetOutOfRange { .. })
    ));
    let outcome = log.enforce_retention(100_000).await.unwrap();
    assert_eq!(
        outcome.deleted_segments, 1,
        "everything is old, but the active segment stays"
    );
    assert_eq!(log.segments().len(), 1);
    assert_eq!(
        read_all(&log, log.log_start(), 1000).await.unwrap().len(),
        2
    );

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.retention_bytes = Some(250);
    let log = open(dir.path(), cfg).await;
    for _ in 0..5 {
        log.append(simple_batch(1, 40, 1)).await.unwrap();
        log.roll().await.unwrap();
    }
    let before: u64 = log.size_bytes();
    log.enforce_retention(0).await.unwrap();
    let after = log.size_bytes();
    // Like Kafka: a segment goes only if what remains is still at least retention.bytes.
    assert!(after >= 250 && after < before, "{before} -> {after}");
    assert!(
        after - log.segments()[0].size < 250,
        "the oldest left is needed to stay at 250"
    );
}

#[tokio::test]
async fn compaction_keeps_the_latest_value_per_key_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.cleanup_policy = CleanupPolicy::COMPACT;
    cfg.delete_retention_ms = 1_000;
    let log = open(dir.path(), cfg).await;
    let k = |s: &str| Some(s.as_bytes().to_vec());
    log.append(batch_of(&[
        record(10, Some(b"a"), Some(b"1")),
        record(10, Some(b"b"), Some(b"1")),
    ]))
    .await
    .unwrap();
    log.append(batch_of(&[
        record(20, Some(b"a"), Some(b"2")),
        record(20, Some(b"z"), Some(b"only")),
    ]))
    .await
    .unwrap();
    // A compacted topic refuses records without a key, and writes nothing of the batch.
    let keyless = log
        .append(batch_of(&[
            record(25, Some(b"y"), Some(b"1")),
            record(25, None, Some(b"x")),
        ]))
        .await;
    assert!(matches!(
        keyless,
        Err(LogError::InvalidBatch(runnel_log::BatchError::MissingKey))
    ));
    log.append(batch_of(&[
        record(30, Some(b"b"), None),
        record(5_000, Some(b"c"), None),
    ]))
    .await
    .unwrap();
    log.roll().await.unwrap();
    log.append(batch_of(&[record(40, Some(b"a"), Some(b"active"))]))
        .await
        .unwrap();
    let outcome = log.compact(2_000).await.unwrap();
    assert_eq!(outcome.segments_rewritten, 1);
    let seen = read_all(&log, 0, 1 << 20).await.unwrap();
    let summary: Vec<_> = seen
        .iter()
        .map(|r| (r.offset, r.key.clone(), r.value.clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (2, k("a"), Some(b"2".to_vec())),
            (3, k("z"), Some(b"only".to_vec())),
            // b's tombstone at 30 is older than delete.retention.ms at now=2000: gone.
            (5, k("c"), None),
            (6, k("a"), Some(b"active".to_vec())),
        ]
    );
    assert_eq!(log.log_end(), 7);
    // Reopening reads the compacted segment (index rebuilt and persisted) the same way.
    log.close().await.unwrap();
    let log = open(
        dir.path(),
        TopicConfig {
            cleanup_policy: CleanupPolicy::COMPACT,
            ..config()
        },
    )
    .await;
    assert_eq!(read_all(&log, 0, 10).await.unwrap(), seen);
}

#[tokio::test]
async fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.index_interval_bytes = 1;
    let log = open(dir.path(), cfg).await;
    for i in 0..20i64 {
        log.append(batch_of(&[
            record(i * 10, Some(b"k"), Some(b"v")),
            record(i * 10 + 5, Some(b"k"), Some(b"v")),
        ]))
        .await
        .unwrap();
        if i % 7 == 6 {
            log.roll().await.unwrap();
        }
    }
    assert_eq!(log.offset_for_timestamp(0).await.unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(5).await.unwrap(), Some(1));
    assert_eq!(log.offset_for_timestamp(6).await.unwrap(), Some(2));
    assert_eq!(log.offset_for_timestamp(101).await.unwrap(), Some(21));
    assert_eq!(log.offset_for_timestamp(195).await.unwrap(), Some(39));
    assert_eq!(log.offset_for_timestamp(196).await.unwrap(), None);
}

#[tokio::test]
async fn log_append_time_stamps_the_broker_clock() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.message_timestamp_type = TimestampType::LogAppendTime;
    let log = open(dir.path(), cfg).await;
    let before = runnel_log::now_ms();
    let appended = log.append(simple_batch(2, 1, 7)).await.unwrap();
    let stamped = appended.log_append_time.expect("log append time");
    assert!(stamped >= before);
    let seen = read_all(&log, 0, 1000).await.unwrap();
    assert!(seen.iter().all(|r| r.timestamp == stamped));
}

#[tokio::test]
async fn durable_appends_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(LogMetrics::default());
    let log = Arc::new(
        PartitionLog::open(dir.path(), config(), metrics.clone())
            .await
            .unwrap(),
    );
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            log.append_durable(simple_batch(1, 100, 1)).await
        }));
    }
    for task in tasks {
        let appended = task.await.unwrap().unwrap();
        assert!(appended.durable);
        assert!(log.durable_end() > appended.last_offset);
    }
    let mut text = String::new();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let fsyncs: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("runnel_log_fsync_duration_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .expect("fsync count in metrics");
    assert!(
        (1..200).contains(&fsyncs),
        "group commit: {fsyncs} fsyncs for 200 durable appends"
    );
}

#[tokio::test]
async fn flush_messages_and_flush_ms_make_appends_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.flush_messages = Some(1);
    let log = open(dir.path(), cfg).await;
    assert!(log.append(simple_batch(1, 1, 1)).await.unwrap().durable);

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.flush_ms = Some(20);
    let log = open(dir.path(), cfg).await;
    let appended = log.append(simple_batch(1, 1, 1)).await.unwrap();
    assert!(!appended.durable);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        log.durable_end() > appended.last_offset,
        "flush.ms fsynced it"
    );
}

#[tokio::test]
async fn a_long_poll_wakes_on_the_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(open(dir.path(), config()).await);
    let waiter = {
        let log = log.clone();
        tokio::spawn(async move { log.wait_for_data(0, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    log.append(simple_batch(1, 1, 1)).await.unwrap();
    let hw = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("woken")
        .unwrap();
    assert_eq!(hw, 1);
    // And it gives up after its timeout when nothing comes.
    assert_eq!(log.wait_for_data(5, Duration::from_millis(10)).await, 1);
}

#[tokio::test]
async fn reopening_after_close_keeps_everything_and_rebuilds_lost_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.segment_bytes = 2_000;
    cfg.index_interval_bytes = 100;
    let log = open(dir.path(), cfg.clone()).await;
    for i in 0..40 {
        log.append(simple_batch(2, 50, i)).await.unwrap();
    }
    let before = read_all(&log, 0, 700).await.unwrap();
    log.close().await.unwrap();
    assert!(matches!(
        log.append(simple_batch(1, 1, 1)).await,
        Err(LogError::Closed)
    ));
    assert!(dir.path().join(".clean-shutdown").exists());

    let log = open(dir.path(), cfg.clone()).await;
    assert_eq!(read_all(&log, 0, 700).await.unwrap(), before);
    log.close().await.unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path
            .extension()
            .is_some_and(|e| e == "index" || e == "timeindex")
        {
            std::fs::remove_file(path).unwrap();
        }
    }
    let log = open(dir.path(), cfg).await;
    assert_eq!(read_all(&log, 0, 700).await.unwrap(), before);
    assert_eq!(log.offset_for_timestamp(20).await.unwrap(), Some(40));
}

#[tokio::test]
async fn timestamp_lookups_see_out_of_order_timestamps_before_and_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    // ~90-byte batches and an entry every 150 bytes: batches 0, 2 and 4 are indexed, so
    // the late timestamp in batch 1 is only seen through the running maximum.
    cfg.index_interval_bytes = 150;
    let log = open(dir.path(), cfg.clone()).await;
    // CreateTime timestamps need not grow: 500 comes before 200s.
    for ts in [100, 500, 200, 200, 210, 220] {
        log.append(simple_batch(1, 10, ts)).await.unwrap();
    }
    assert_eq!(log.offset_for_timestamp(300).await.unwrap(), Some(1));
    assert_eq!(log.offset_for_timestamp(205).await.unwrap(), Some(1));
    assert_eq!(log.offset_for_timestamp(501).await.unwrap(), None);
    log.close().await.unwrap();
    let log = open(dir.path(), cfg).await;
    assert_eq!(log.offset_for_timestamp(300).await.unwrap(), Some(1));
    assert_eq!(
        log.segments()[0].max_timestamp,
        500,
        "the newest record counts after a reopen"
    );
}

#[tokio::test]
async fn flush_ms_fsyncs_even_when_appends_never_stop() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.flush_ms = Some(30);
    let log = open(dir.path(), cfg).await;
    let started = std::time::Instant::now();
    let mut durable_during_load = false;
    while started.elapsed() < Duration::from_millis(400) {
        let appended = log.append(simple_batch(1, 10, 1)).await.unwrap();
        durable_during_load |= appended.durable || log.durable_end() > 0;
    }
    assert!(
        durable_during_load,
        "flush.ms=30 never fsynced during 400 ms of appends"
    );
}

#[tokio::test]
async fn the_topic_id_is_recorded_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config()).await;
    assert_eq!(log.topic_id(), None);
    log.set_topic_id("2d7543f8-7a8f-45f2-a0be-0f7aa18f6254")
        .await
        .unwrap();
    log.close().await.unwrap();
    let log = open(dir.path(), config()).await;
    assert_eq!(
        log.topic_id().as_deref(),
        Some("2d7543f8-7a8f-45f2-a0be-0f7aa18f6254")
    );
}

fn idempotent_batch(producer_id: i64, sequence: i32, timestamp: i64) -> bytes::BytesMut {
    runnel_log::BatchBuilder {
        producer_id,
        producer_epoch: 0,
        base_sequence: sequence,
        ..Default::default()
    }
    .build(&[record(timestamp, None, Some(b"v"))])
    .unwrap()
}

#[tokio::test]
async fn expired_producers_are_forgotten_and_others_kept_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), config()).await;
    log.append(idempotent_batch(1, 0, 1_000)).await.unwrap();
    log.append(idempotent_batch(2, 0, 9_000)).await.unwrap();
    log.expire_producers(5_000).await.unwrap();
    // Producer 2 is remembered: its retry is a duplicate and a gap is refused.
    let retry = log.append(idempotent_batch(2, 0, 9_000)).await.unwrap();
    assert!(retry.duplicate);
    assert!(matches!(
        log.append(idempotent_batch(2, 5, 9_000)).await,
        Err(LogError::OutOfOrderSequence { .. })
    ));
    // Producer 1 is forgotten: the same batch is appended again, as from a new producer.
    let again = log.append(idempotent_batch(1, 0, 1_000)).await.unwrap();
    assert!(!again.duplicate);
    assert_eq!(again.base_offset, 2);

    // The snapshot written at close keeps the timestamps: producer 2 still counts as
    // having written at 9000 after a reopen.
    log.close().await.unwrap();
    drop(log);
    let log = open(dir.path(), config()).await;
    assert!(
        log.append(idempotent_batch(2, 0, 9_000))
            .await
            .unwrap()
            .duplicate
    );
    log.expire_producers(9_001).await.unwrap();
    assert!(
        !log.append(idempotent_batch(2, 0, 9_000))
            .await
            .unwrap()
            .duplicate
    );
}

#[tokio::test]
async fn an_append_refused_under_the_free_disk_floor_runs_retention_at_once() {
    use runnel_log::{DiskSpace, LogManager, MaintenanceSchedule, TopicPartition};
    let dir = tempfile::tempdir().unwrap();
    let manager = Arc::new(
        LogManager::open(dir.path(), config(), Arc::new(LogMetrics::default()))
            .await
            .unwrap(),
    );
    let mut cfg = config();
    cfg.retention_bytes = Some(250);
    let log = manager
        .create(&TopicPartition::new("t", 0), cfg)
        .await
        .unwrap();
    for _ in 0..5 {
        log.append(simple_batch(1, 40, 1)).await.unwrap();
        log.roll().await.unwrap();
    }
    let segments = log.segments().len();
    // 100 bytes free against a floor of 1000: every append is refused.
    let space = DiskSpace::with_probe(dir.path(), 1000, Box::new(|_| Ok(100))).unwrap();
    manager.set_disk_space(Arc::new(space));
    // Retention's own schedule would not come for an hour.
    let cancel = tokio_util::sync::CancellationToken::new();
    let maintenance = manager.spawn_maintenance(
        MaintenanceSchedule {
            retention_interval: Duration::from_secs(3600),
            cleaner_interval: Duration::from_secs(3600),
            producer_id_expiration: Duration::from_secs(3600),
        },
        cancel.clone(),
    );
    assert!(matches!(
        log.append(simple_batch(1, 40, 1)).await,
        Err(LogError::DiskFull { .. })
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while log.segments().len() == segments {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention did not run after the refusal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    maintenance.await.unwrap();
}
