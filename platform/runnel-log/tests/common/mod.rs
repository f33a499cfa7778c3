//! Helpers shared by the log's integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;
use runnel_config::TopicConfig;
use runnel_log::batch::{self, Records};
use runnel_log::{BatchBuilder, LogMetrics, NewRecord, PartitionLog};

/// A record as read back: offset, timestamp, key, value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

pub fn record(timestamp: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> NewRecord {
    NewRecord {
        timestamp,
        key: key.map(<[u8]>::to_vec),
        value: value.map(<[u8]>::to_vec),
        headers: Vec::new(),
    }
}

pub fn batch_of(records: &[NewRecord]) -> BytesMut {
    BatchBuilder::default().build(records).expect("build batch")
}

/// A batch of `count` records whose values are `value_len` bytes.
pub fn simple_batch(count: usize, value_len: usize, timestamp: i64) -> BytesMut {
    let records: Vec<_> = (0..count)
        .map(|i| {
            record(
                timestamp,
                Some(format!("key-{i}").as_bytes()),
                Some(&vec![b'x'; value_len]),
            )
        })
        .collect();
    batch_of(&records)
}

/// Decodes every record of the concatenated batches in `bytes`.
pub fn decode(bytes: &[u8]) -> Vec<Seen> {
    let mut seen = Vec::new();
    for (at, header) in batch::batch_positions(bytes) {
        let len = header.total_len() as usize;
        let whole = &bytes[at..at + len];
        batch::validate(whole).expect("served batch validates");
        let section = batch::records_section(whole, 64 << 20).expect("records section");
        for record in Records::new(&section, header.records_count) {
            let record = record.expect("record decodes");
            seen.push(Seen {
                offset: (header.base_offset + i64::from(record.offset_delta)) as u64,
                timestamp: if header.is_log_append_time() {
                    header.max_timestamp
                } else {
                    header.base_timestamp + record.timestamp_delta
                },
                key: record.key.map(<[u8]>::to_vec),
                value: record.value.map(<[u8]>::to_vec),
            });
        }
    }
    seen
}

/// Reads every record from `from` up to the high watermark, in many reads of `max_bytes`.
pub async fn read_all(
    log: &PartitionLog,
    from: u64,
    max_bytes: usize,
) -> Result<Vec<Seen>, runnel_log::LogError> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let result = log.read(next, max_bytes).await?;
        let records: Vec<Seen> = decode(&result.records)
            .into_iter()
            .filter(|r| r.offset >= next)
            .collect();
        match records.last() {
            Some(last) => {
                next = last.offset + 1;
                out.extend(records);
            }
            None => {
                // Nothing at `next`: either the end, or a compacted gap ending a batch.
                let end = batch::batch_positions(&result.records)
                    .last()
                    .map(|(_, h)| h.last_offset() as u64 + 1);
                match end {
                    Some(end) if end > next => next = end,
                    _ => break,
                }
            }
        }
        if next >= result.high_watermark {
            break;
        }
    }
    Ok(out)
}

pub async fn open(dir: &Path, config: TopicConfig) -> PartitionLog {
    PartitionLog::open(dir, config, Arc::new(LogMetrics::default()))
        .await
        .expect("open log")
}

/// Copies a partition directory (segments and indexes) into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}
