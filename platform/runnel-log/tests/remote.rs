//! A tiered partition with a remote attached (see `runnel_log::remote`): what it serves,
//! what retention may delete, and how a partition opened empty restarts after the remote's
//! offsets. The remote here is a second log holding the same batches, the way tiered
//! storage holds copies of sealed segments.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use runnel_config::TopicConfig;
use runnel_log::{LogError, PartitionLog, Remote, RemoteFind, RemoteLog, RemoteRead};

/// Serves reads from another log (or fails every read).
struct Copy {
    log: Option<Arc<PartitionLog>>,
}

impl RemoteLog for Copy {
    fn read(&self, offset: u64, max_bytes: usize, _: bool) -> RemoteRead {
        let log = self.log.clone();
        Box::pin(async move {
            match log {
                Some(log) => Ok(log.read(offset, max_bytes).await?.records),
                None => Err(LogError::Remote("the store is down".into())),
            }
        })
    }

    fn find_timestamp(&self, timestamp: i64) -> RemoteFind {
        let log = self.log.clone();
        Box::pin(async move {
            match log {
                Some(log) => log.find_timestamp(timestamp).await,
                None => Err(LogError::Remote("the store is down".into())),
            }
        })
    }
}

fn tiered() -> TopicConfig {
    TopicConfig {
        segment_bytes: 600,
        remote_storage_enable: true,
        local_retention_bytes: Some(0),
        ..TopicConfig::default()
    }
}

fn remote(start: u64, end: u64, log: Option<Arc<PartitionLog>>) -> Remote {
    Remote {
        start,
        end,
        reader: Arc::new(Copy { log }),
    }
}

async fn append_records(log: &PartitionLog, count: usize) {
    for i in 0..count {
        log.append(simple_batch(1, 100, 1_000 + i as i64))
            .await
            .expect("append");
    }
}

#[tokio::test]
async fn local_segments_go_only_once_the_remote_holds_them_and_reads_below_go_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(open(&dir.path().join("events-0"), tiered()).await);
    log.set_remote(remote(0, 0, None)).await.unwrap();
    append_records(&log, 20).await;
    let sealed: Vec<_> = log.segments().into_iter().filter(|s| s.sealed).collect();
    assert!(sealed.len() >= 3, "{sealed:?}");

    // Nothing uploaded: local.retention.bytes=0 deletes nothing.
    log.enforce_retention(i64::MAX).await.unwrap();
    assert_eq!(log.local_log_start(), 0);

    // The remote holds the first two sealed segments: only they go.
    let held = sealed[1].next_offset;
    let copy = Arc::new(open(&dir.path().join("copy-0"), TopicConfig::default()).await);
    for batch in read_batches(&log, 0, held).await {
        copy.append(batch).await.unwrap();
    }
    log.set_remote(remote(0, held, Some(copy.clone())))
        .await
        .unwrap();
    log.enforce_retention(i64::MAX).await.unwrap();
    assert_eq!(log.local_log_start(), held);
    assert_eq!(log.log_start(), 0, "the served start is the remote's");

    // Every offset still reads, below the local start from the remote.
    let all = read_all(&log, 0, 300).await.expect("read everything");
    assert_eq!(all.len(), 20);
    assert!(all.iter().enumerate().all(|(i, r)| r.offset == i as u64));
    // So do timestamps (record i has timestamp 1000 + i): below the local start from the
    // remote, above it from the local log.
    assert_eq!(log.offset_for_timestamp(0).await.unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(1_003).await.unwrap(), Some(3));
    let local = 1_000 + held as i64 + 1;
    assert_eq!(
        log.offset_for_timestamp(local).await.unwrap(),
        Some(held + 1)
    );
    assert_eq!(log.offset_for_timestamp(1_020).await.unwrap(), None);

    // A failing remote is a retriable error, not an out-of-range offset.
    log.set_remote(remote(0, held, None)).await.unwrap();
    let error = log.read(0, 1000).await.unwrap_err();
    assert!(
        matches!(error, LogError::Remote(_)) && error.is_retryable(),
        "{error}"
    );
    assert!(log.read(held, 1000).await.is_ok(), "local reads go on");
    let error = log.offset_for_timestamp(0).await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
}

#[tokio::test]
async fn a_tiered_partition_opened_empty_waits_for_its_remote_then_continues_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(open(&dir.path().join("events-0"), tiered()).await);
    // Appends wait for the remote; reads below the (empty) local log are not refused as
    // out of range either.
    let waiting = {
        let log = log.clone();
        tokio::spawn(async move { log.append(simple_batch(1, 10, 5)).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "the append waits for the remote");

    // The remote holds offsets 0..50 (a wiped partition): the log starts at 50.
    let copy = Arc::new(open(&dir.path().join("copy-0"), TopicConfig::default()).await);
    append_records(&copy, 50).await;
    log.set_remote(remote(0, 50, Some(copy))).await.unwrap();
    let appended = waiting.await.unwrap().expect("the append goes on");
    assert_eq!(appended.base_offset, 50);
    assert_eq!(log.log_start(), 0);
    assert_eq!(log.local_log_start(), 50);
    let all = read_all(&log, 0, 300).await.expect("read everything");
    assert_eq!(all.len(), 51);

    // Reopened, it keeps its start (the remote is attached again by tiered storage).
    log.close().await.unwrap();
    drop(log);
    let log = open(&dir.path().join("events-0"), tiered()).await;
    assert_eq!(log.local_log_start(), 50);
    assert_eq!(log.log_end(), 51);
    let error = log.read(0, 100).await.unwrap_err();
    assert!(matches!(error, LogError::Remote(_)), "{error}");
}

/// The whole batches of `log` in `from..to`.
async fn read_batches(log: &PartitionLog, from: u64, to: u64) -> Vec<bytes::BytesMut> {
    let mut out = Vec::new();
    let mut offset = from;
    while offset < to {
        let read: Bytes = log.read(offset, 1).await.unwrap().records;
        let header = runnel_log::BatchHeader::parse(&read).unwrap();
        let len = header.total_len() as usize;
        out.push(bytes::BytesMut::from(&read[..len]));
        offset = header.last_offset() as u64 + 1;
    }
    out
}
