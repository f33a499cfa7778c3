//! Committed offsets as records of `__consumer_offsets`, in Kafka's formats:
//! - key (version 1): `version i16, group string, topic string, partition i32`;
//! - value (version 3): `version i16, offset i64, leader_epoch i32, metadata string,
//!   commit_timestamp i64`; a null value (tombstone) deletes the offset.
//!
//! Strings are an `i16` length and UTF-8 bytes. Other record kinds Kafka writes there (group
//! metadata, key version 2) are skipped when reading.

use std::collections::{BTreeMap, HashMap};

use bytes::{Buf, BufMut, BytesMut};
use runnel_log::batch::{BatchError, Records, batch_positions, records_section};
use runnel_log::{BatchBuilder, NewRecord};

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

const KEY_VERSION: i16 = 1;
const VALUE_VERSION: i16 = 3;
/// Decompressed size bound when reading the offsets topic back.
const MAX_BATCH: usize = 64 << 20;

/// One committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_ms: i64,
}

/// The offsets partition a group belongs to: Java's `String.hashCode` of the name, made
/// non-negative, modulo the partition count (as Kafka computes it).
pub fn partition_for(group: &str, partitions: u32) -> u32 {
    let mut hash: i32 = 0;
    for unit in group.encode_utf16() {
        hash = hash.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    ((hash & 0x7fff_ffff) as u32) % partitions.max(1)
}

fn put_string(out: &mut BytesMut, text: &str) {
    let bytes = text.as_bytes();
    let len = bytes.len().min(i16::MAX as usize);
    out.put_i16(len as i16);
    out.put_slice(&bytes[..len]);
}

fn key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_i16(KEY_VERSION);
    put_string(&mut out, group);
    put_string(&mut out, topic);
    out.put_i32(partition);
    out.to_vec()
}

fn value(committed: &CommittedOffset) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_i16(VALUE_VERSION);
    out.put_i64(committed.offset);
    out.put_i32(committed.leader_epoch);
    put_string(&mut out, &committed.metadata);
    out.put_i64(committed.commit_ms);
    out.to_vec()
}

/// The batch that records `commits` of `group`.
pub fn commit_batch(
    group: &str,
    commits: &[(String, i32, CommittedOffset)],
) -> Result<BytesMut, BatchError> {
    let now = runnel_log::now_ms();
    let records: Vec<NewRecord> = commits
        .iter()
        .map(|(topic, partition, committed)| NewRecord {
            timestamp: now,
            key: Some(key(group, topic, *partition)),
            value: Some(value(committed)),
            headers: Vec::new(),
        })
        .collect();
    BatchBuilder::default().build(&records)
}

/// The batch that deletes the given offsets of `group`.
pub fn tombstone_batch(group: &str, keys: &[(String, i32)]) -> Result<BytesMut, BatchError> {
    let now = runnel_log::now_ms();
    let records: Vec<NewRecord> = keys
        .iter()
        .map(|(topic, partition)| NewRecord {
            timestamp: now,
            key: Some(key(group, topic, *partition)),
            value: None,
            headers: Vec::new(),
        })
        .collect();
    BatchBuilder::default().build(&records)
}

fn get_string(buf: &mut &[u8]) -> Option<String> {
    if buf.remaining() < 2 {
        return None;
    }
    let len = usize::try_from(buf.get_i16()).ok()?;
    if buf.remaining() < len {
        return None;
    }
    let text = String::from_utf8(buf[..len].to_vec()).ok()?;
    buf.advance(len);
    Some(text)
}

fn parse_key(mut buf: &[u8]) -> Option<(String, String, i32)> {
    if buf.remaining() < 2 {
        return None;
    }
    let version = buf.get_i16();
    if !(0..=1).contains(&version) {
        return None; // group metadata and others
    }
    let group = get_string(&mut buf)?;
    let topic = get_string(&mut buf)?;
    (buf.remaining() >= 4).then(|| (group, topic, buf.get_i32()))
}

fn parse_value(mut buf: &[u8]) -> Option<CommittedOffset> {
    if buf.remaining() < 2 {
        return None;
    }
    let version = buf.get_i16();
    if buf.remaining() < 8 {
        return None;
    }
    let offset = buf.get_i64();
    let leader_epoch = if version >= 3 {
        (buf.remaining() >= 4).then(|| buf.get_i32())?
    } else {
        -1
    };
    let metadata = get_string(&mut buf)?;
    let commit_ms = (buf.remaining() >= 8).then(|| buf.get_i64())?;
    Some(CommittedOffset {
        offset,
        leader_epoch,
        metadata,
        commit_ms,
    })
}

/// Applies the offset records of `batches` (read from the offsets topic) to `offsets`;
/// returns the offset after the last batch, or `from` if there was none. Malformed
/// records are skipped.
pub fn apply_batches(
    batches: &[u8],
    from: u64,
    offsets: &mut HashMap<String, BTreeMap<(String, i32), CommittedOffset>>,
) -> u64 {
    let mut next = from;
    for (position, header) in batch_positions(batches) {
        next = next.max(header.last_offset() as u64 + 1);
        if header.is_control() {
            continue;
        }
        let Some(bytes) = batches.get(position..position + header.total_len() as usize) else {
            break;
        };
        let Ok(section) = records_section(bytes, MAX_BATCH) else {
            continue;
        };
        for record in Records::new(&section, header.records_count).flatten() {
            let offset = header.base_offset + i64::from(record.offset_delta);
            if offset < from as i64 {
                continue;
            }
            let Some((group, topic, partition)) = record.key.and_then(parse_key) else {
                continue;
            };
            match record.value {
                None => {
                    if let Some(group_offsets) = offsets.get_mut(&group) {
                        group_offsets.remove(&(topic, partition));
                        if group_offsets.is_empty() {
                            offsets.remove(&group);
                        }
                    }
                }
                Some(value) => {
                    if let Some(committed) = parse_value(value) {
                        offsets
                            .entry(group)
                            .or_default()
                            .insert((topic, partition), committed);
                    }
                }
            }
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_follow_javas_string_hash() {
        // "teste".hashCode() == 110251539 in Java; 110251539 % 50 == 39.
        assert_eq!(partition_for("teste", 50), 39);
        assert_eq!(partition_for("", 10), 0);
        assert!(partition_for("a-very-long-group-name-that-overflows", 7) < 7);
    }

    #[test]
    fn commits_and_tombstones_round_trip() {
        let committed = CommittedOffset {
            offset: 42,
            leader_epoch: -1,
            metadata: "m".to_string(),
            commit_ms: 7,
        };
        let mut log = BytesMut::new();
        let mut batch = commit_batch(
            "g",
            &[
                ("t".to_string(), 0, committed.clone()),
                ("t".to_string(), 1, committed.clone()),
            ],
        )
        .unwrap();
        runnel_log::batch::stamp_offsets(&mut batch, 0, 0);
        log.extend_from_slice(&batch);
        let mut tombstone = tombstone_batch("g", &[("t".to_string(), 1)]).unwrap();
        runnel_log::batch::stamp_offsets(&mut tombstone, 2, 0);
        log.extend_from_slice(&tombstone);
        let mut offsets = HashMap::new();
        assert_eq!(apply_batches(&log, 0, &mut offsets), 3);
        let group = &offsets["g"];
        assert_eq!(group.len(), 1);
        assert_eq!(group[&("t".to_string(), 0)], committed);
        // Garbage is skipped, not a panic.
        assert_eq!(apply_batches(&[1, 2, 3], 5, &mut offsets), 5);
    }
}
