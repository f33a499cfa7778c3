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

use super::coordinator::{StoredGroup, StoredMember};

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

const KEY_VERSION: i16 = 1;
const VALUE_VERSION: i16 = 3;
/// Group metadata records: key version 2, value version 3 (Kafka's).
const GROUP_KEY_VERSION: i16 = 2;
const GROUP_VALUE_VERSION: i16 = 3;
/// A consumer-protocol (KIP-848) group. Kafka stores such a group as several record types
/// (key versions 3 to 8); Runnel stores one JSON snapshot per group under a key version of
/// its own, which Kafka never uses, keyed like the classic group metadata.
const CONSUMER_GROUP_KEY_VERSION: i16 = 0x7F01;
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

/// Callers keep strings within `i16::MAX` bytes (group ids are checked, topic names are at
/// most 249 bytes, metadata at most 4096); a longer one would be cut.
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

fn put_nullable_string(out: &mut BytesMut, text: Option<&str>) {
    match text {
        Some(text) => put_string(out, text),
        None => out.put_i16(-1),
    }
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    out.put_i32(bytes.len() as i32);
    out.put_slice(bytes);
}

fn group_key(group: &str) -> Vec<u8> {
    versioned_group_key(GROUP_KEY_VERSION, group)
}

fn versioned_group_key(version: i16, group: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_i16(version);
    put_string(&mut out, group);
    out.to_vec()
}

/// The batch that records a consumer-protocol group as it stands (or, with `None`, that it
/// is gone).
pub fn consumer_group_batch(
    group: &str,
    stored: Option<&super::consumer::StoredConsumerGroup>,
) -> Result<BytesMut, BatchError> {
    let value = match stored {
        Some(stored) => Some(
            serde_json::to_vec(stored)
                .map_err(|e| BatchError::Inconsistent(format!("encode a consumer group: {e}")))?,
        ),
        None => None,
    };
    BatchBuilder::default().build(&[NewRecord {
        timestamp: runnel_log::now_ms(),
        key: Some(versioned_group_key(CONSUMER_GROUP_KEY_VERSION, group)),
        value,
        headers: Vec::new(),
    }])
}

fn group_value(stored: &StoredGroup, now: i64) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_i16(GROUP_VALUE_VERSION);
    put_string(&mut out, &stored.protocol_type);
    out.put_i32(stored.generation);
    put_nullable_string(&mut out, Some(&stored.protocol_name));
    put_nullable_string(&mut out, Some(&stored.leader));
    out.put_i64(now);
    out.put_i32(stored.members.len() as i32);
    for member in &stored.members {
        put_string(&mut out, &member.member_id);
        put_nullable_string(&mut out, member.instance_id.as_deref());
        put_string(&mut out, &member.client_id);
        put_string(&mut out, &member.client_host);
        out.put_i32(member.rebalance_timeout.min(i32::MAX as u64) as i32);
        out.put_i32(member.session_timeout.min(i32::MAX as u64) as i32);
        put_bytes(&mut out, &member.subscription);
        put_bytes(&mut out, &member.assignment);
    }
    out.to_vec()
}

/// The batch that records a group's state (`None`: deletes it).
pub fn group_batch(group: &str, stored: Option<&StoredGroup>) -> Result<BytesMut, BatchError> {
    let now = runnel_log::now_ms();
    BatchBuilder::default().build(&[NewRecord {
        timestamp: now,
        key: Some(group_key(group)),
        value: stored.map(|s| group_value(s, now)),
        headers: Vec::new(),
    }])
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

fn get_nullable_string(buf: &mut &[u8]) -> Option<Option<String>> {
    if buf.remaining() < 2 {
        return None;
    }
    if i16::from_be_bytes([buf[0], buf[1]]) < 0 {
        buf.advance(2);
        return Some(None);
    }
    get_string(buf).map(Some)
}

fn get_bytes(buf: &mut &[u8]) -> Option<bytes::Bytes> {
    if buf.remaining() < 4 {
        return None;
    }
    let len = usize::try_from(buf.get_i32()).ok()?;
    if buf.remaining() < len {
        return None;
    }
    let bytes = bytes::Bytes::copy_from_slice(&buf[..len]);
    buf.advance(len);
    Some(bytes)
}

/// A group metadata key: its group name.
fn parse_group_key(buf: &[u8]) -> Option<String> {
    parse_versioned_group_key(GROUP_KEY_VERSION, buf)
}

fn parse_versioned_group_key(version: i16, mut buf: &[u8]) -> Option<String> {
    if buf.remaining() < 2 || buf.get_i16() != version {
        return None;
    }
    get_string(&mut buf)
}

fn parse_group_value(mut buf: &[u8]) -> Option<StoredGroup> {
    if buf.remaining() < 2 || buf.get_i16() != GROUP_VALUE_VERSION {
        return None;
    }
    let protocol_type = get_string(&mut buf)?;
    if buf.remaining() < 4 {
        return None;
    }
    let generation = buf.get_i32();
    let protocol_name = get_nullable_string(&mut buf)?.unwrap_or_default();
    let leader = get_nullable_string(&mut buf)?.unwrap_or_default();
    if buf.remaining() < 12 {
        return None;
    }
    let _state_timestamp = buf.get_i64();
    let count = usize::try_from(buf.get_i32()).ok()?;
    // Every member takes far more than one byte: a count beyond the bytes left is damage.
    if count > buf.remaining() {
        return None;
    }
    let mut members = Vec::with_capacity(count);
    for _ in 0..count {
        let member_id = get_string(&mut buf)?;
        let instance_id = get_nullable_string(&mut buf)?;
        let client_id = get_string(&mut buf)?;
        let client_host = get_string(&mut buf)?;
        if buf.remaining() < 8 {
            return None;
        }
        let rebalance_timeout = buf.get_i32().max(0) as u64;
        let session_timeout = buf.get_i32().max(0) as u64;
        let subscription = get_bytes(&mut buf)?;
        let assignment = get_bytes(&mut buf)?;
        members.push(StoredMember {
            member_id,
            instance_id,
            client_id,
            client_host,
            session_timeout,
            rebalance_timeout,
            subscription,
            assignment,
        });
    }
    Some(StoredGroup {
        protocol_type,
        generation,
        protocol_name,
        leader,
        members,
    })
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
    groups: &mut HashMap<String, Option<StoredGroup>>,
    consumer_groups: &mut HashMap<String, Option<super::consumer::StoredConsumerGroup>>,
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
            if let Some(group) = record
                .key
                .and_then(|k| parse_versioned_group_key(CONSUMER_GROUP_KEY_VERSION, k))
            {
                let stored = record.value.and_then(|v| serde_json::from_slice(v).ok());
                consumer_groups.insert(group, stored);
                continue;
            }
            if let Some(group) = record.key.and_then(parse_group_key) {
                // The newest record wins; a tombstone (or a value not understood) clears it.
                groups.insert(group, record.value.and_then(parse_group_value));
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
        let stored = StoredGroup {
            protocol_type: "consumer".to_string(),
            generation: 4,
            protocol_name: "range".to_string(),
            leader: "m1".to_string(),
            members: vec![StoredMember {
                member_id: "m1".to_string(),
                instance_id: None,
                client_id: "c".to_string(),
                client_host: "/127.0.0.1".to_string(),
                session_timeout: 10_000,
                rebalance_timeout: 30_000,
                subscription: bytes::Bytes::from_static(b"sub"),
                assignment: bytes::Bytes::from_static(b"p0"),
            }],
        };
        let mut group = group_batch("g", Some(&stored)).unwrap();
        runnel_log::batch::stamp_offsets(&mut group, 3, 0);
        log.extend_from_slice(&group);
        let mut offsets = HashMap::new();
        let mut groups = HashMap::new();
        assert_eq!(
            apply_batches(&log, 0, &mut offsets, &mut groups, &mut HashMap::new()),
            4
        );
        assert_eq!(groups["g"], Some(stored));
        let group = &offsets["g"];
        assert_eq!(group.len(), 1);
        assert_eq!(group[&("t".to_string(), 0)], committed);
        // Garbage is skipped, not a panic.
        assert_eq!(
            apply_batches(
                &[1, 2, 3],
                5,
                &mut offsets,
                &mut groups,
                &mut HashMap::new()
            ),
            5
        );
    }
}
