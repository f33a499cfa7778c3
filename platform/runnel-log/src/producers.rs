//! Idempotent producers: per producer id, the epoch and the last five batches appended, so a
//! retried batch is recognised and answered with its first offsets instead of being written
//! twice, and a gap in the sequence numbers is refused.
//!
//! The rules are Kafka's (KIP-98, KIP-360):
//! - a batch without a producer id (or without a sequence) is not tracked;
//! - an epoch older than the one recorded is fenced: [`LogError::InvalidProducerEpoch`];
//! - a newer epoch starts over and must begin at sequence 0 (any sequence for a producer
//!   the partition has never seen, since its state may have expired);
//! - in the same epoch, a batch whose first and last sequence equal one of the last five
//!   batches is a duplicate; otherwise its first sequence must follow the last batch's last
//!   sequence (wrapping after `i32::MAX`), or it is [`LogError::OutOfOrderSequence`].
//!
//! [`ProducerStates`] is pure: the writer asks [`ProducerStates::check`] before appending
//! and calls [`ProducerStates::record`] after. Its state is written to a snapshot file,
//! `<offset:020>.producers`, whenever a segment is sealed and at a clean close; opening
//! loads the newest snapshot at or below the log end and replays the batches after it, so
//! the state survives restarts and crashes without reading the whole log.
//!
//! A producer that has written nothing for `producer.id.expiration.ms` is forgotten
//! ([`ProducerStates::expire`], from the log's maintenance), so the state does not grow
//! with every producer that ever wrote. As in Kafka, "written" is the newest max timestamp
//! of its batches, and a batch of a forgotten producer is appended whatever its sequence.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use crate::batch::BatchHeader;
use crate::error::LogError;
use crate::segment;

/// Batches remembered per producer, as in Kafka (and the most a producer has in flight).
pub const REMEMBERED_BATCHES: usize = 5;

const SNAPSHOT_EXTENSION: &str = "producers";
const SNAPSHOT_MAGIC: &[u8; 4] = b"RPS2";
/// The first format, without the producers' last timestamps; still read.
const SNAPSHOT_MAGIC_V1: &[u8; 4] = b"RPS1";
/// Snapshots kept; older ones are deleted when a new one is written.
const SNAPSHOTS_KEPT: usize = 2;

/// One appended batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchMeta {
    first_sequence: i32,
    last_sequence: i32,
    base_offset: u64,
    last_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ProducerEntry {
    epoch: i16,
    /// The newest max timestamp of its batches, in milliseconds since the epoch.
    last_timestamp: i64,
    batches: VecDeque<BatchMeta>,
}

/// What to do with a produced batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Append it (and then [`ProducerStates::record`] it).
    Append,
    /// Already appended at these offsets: answer with them, write nothing.
    Duplicate { base_offset: u64, last_offset: u64 },
}

/// The idempotent producers of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
}

fn is_idempotent(header: &BatchHeader) -> bool {
    header.producer_id >= 0 && header.base_sequence >= 0
}

fn last_sequence(header: &BatchHeader) -> i32 {
    // Sequences wrap around after i32::MAX, like Kafka's.
    let last = header.base_sequence as i64 + header.last_offset_delta as i64;
    (last % (i32::MAX as i64 + 1)) as i32
}

fn next_sequence(sequence: i32) -> i32 {
    if sequence == i32::MAX {
        0
    } else {
        sequence + 1
    }
}

impl ProducerStates {
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Decides whether `header`'s batch is appended, answered as a duplicate, or refused.
    pub fn check(&self, header: &BatchHeader) -> Result<SequenceCheck, LogError> {
        if !is_idempotent(header) {
            return Ok(SequenceCheck::Append);
        }
        let Some(entry) = self.producers.get(&header.producer_id) else {
            return Ok(SequenceCheck::Append);
        };
        let first = header.base_sequence;
        if header.producer_epoch < entry.epoch {
            return Err(LogError::InvalidProducerEpoch {
                producer_id: header.producer_id,
                epoch: header.producer_epoch,
                current: entry.epoch,
            });
        }
        if header.producer_epoch > entry.epoch {
            return if first == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(LogError::OutOfOrderSequence {
                    producer_id: header.producer_id,
                    expected: 0,
                    received: first,
                })
            };
        }
        let last = last_sequence(header);
        if let Some(done) = entry
            .batches
            .iter()
            .find(|b| b.first_sequence == first && b.last_sequence == last)
        {
            return Ok(SequenceCheck::Duplicate {
                base_offset: done.base_offset,
                last_offset: done.last_offset,
            });
        }
        let expected = entry
            .batches
            .back()
            .map_or(first, |b| next_sequence(b.last_sequence));
        if first == expected {
            Ok(SequenceCheck::Append)
        } else {
            Err(LogError::OutOfOrderSequence {
                producer_id: header.producer_id,
                expected,
                received: first,
            })
        }
    }

    /// Records a batch appended at `base_offset` (whose header still carries the producer's
    /// fields; the offsets in it need not be stamped yet).
    pub fn record(&mut self, header: &BatchHeader, base_offset: u64) {
        if !is_idempotent(header) {
            return;
        }
        let meta = BatchMeta {
            first_sequence: header.base_sequence,
            last_sequence: last_sequence(header),
            base_offset,
            last_offset: base_offset + header.last_offset_delta.max(0) as u64,
        };
        let entry = self
            .producers
            .entry(header.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: header.producer_epoch,
                last_timestamp: header.max_timestamp,
                batches: VecDeque::with_capacity(REMEMBERED_BATCHES),
            });
        entry.last_timestamp = entry.last_timestamp.max(header.max_timestamp);
        if header.producer_epoch != entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == REMEMBERED_BATCHES {
            entry.batches.pop_front();
        }
        entry.batches.push_back(meta);
    }

    /// Forgets the producers whose last batch is older than `before_ms`; returns how many.
    pub fn expire(&mut self, before_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, entry| entry.last_timestamp >= before_ms);
        before - self.producers.len()
    }

    /// The snapshot's bytes: magic, count, entries, CRC-32C of everything before it.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.producers.len() * 64);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        let mut ids: Vec<_> = self.producers.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let entry = &self.producers[&id];
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&entry.epoch.to_be_bytes());
            out.extend_from_slice(&entry.last_timestamp.to_be_bytes());
            out.push(entry.batches.len() as u8);
            for batch in &entry.batches {
                out.extend_from_slice(&batch.first_sequence.to_be_bytes());
                out.extend_from_slice(&batch.last_sequence.to_be_bytes());
                out.extend_from_slice(&batch.base_offset.to_be_bytes());
                out.extend_from_slice(&batch.last_offset.to_be_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Parses a snapshot; `None` if it is damaged in any way. Producers of a first-format
    /// snapshot, which has no timestamps, count as having written at `loaded_at`.
    fn decode(bytes: &[u8], loaded_at: i64) -> Option<ProducerStates> {
        let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
        if crc32c::crc32c(body).to_be_bytes() != crc {
            return None;
        }
        let mut reader = Reader(body);
        let with_timestamps = match reader.take(4)? {
            magic if magic == SNAPSHOT_MAGIC => true,
            magic if magic == SNAPSHOT_MAGIC_V1 => false,
            _ => return None,
        };
        let count = u32::from_be_bytes(reader.array()?);
        let mut producers = HashMap::new();
        for _ in 0..count {
            let id = i64::from_be_bytes(reader.array()?);
            let epoch = i16::from_be_bytes(reader.array()?);
            let last_timestamp = if with_timestamps {
                i64::from_be_bytes(reader.array()?)
            } else {
                loaded_at
            };
            let batches = reader.take(1)?[0] as usize;
            if batches > REMEMBERED_BATCHES {
                return None;
            }
            let mut entry = ProducerEntry {
                epoch,
                last_timestamp,
                batches: VecDeque::with_capacity(batches),
            };
            for _ in 0..batches {
                entry.batches.push_back(BatchMeta {
                    first_sequence: i32::from_be_bytes(reader.array()?),
                    last_sequence: i32::from_be_bytes(reader.array()?),
                    base_offset: u64::from_be_bytes(reader.array()?),
                    last_offset: u64::from_be_bytes(reader.array()?),
                });
            }
            producers.insert(id, entry);
        }
        reader.0.is_empty().then_some(ProducerStates { producers })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

fn snapshot_offsets(dir: &Path) -> Result<Vec<u64>, LogError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|source| LogError::io(format!("list {}", dir.display()), source))?;
    let mut offsets = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|source| LogError::io(format!("list {}", dir.display()), source))?;
        let name = entry.file_name();
        if let Some(stem) = name
            .to_str()
            .and_then(|n| n.strip_suffix(&format!(".{SNAPSHOT_EXTENSION}")))
            && stem.len() == 20
            && let Ok(offset) = stem.parse::<u64>()
        {
            offsets.push(offset);
        }
    }
    offsets.sort_unstable();
    Ok(offsets)
}

fn snapshot_path(dir: &Path, offset: u64) -> PathBuf {
    dir.join(segment::file_name(offset, SNAPSHOT_EXTENSION))
}

/// Writes the state as of `offset` (every batch below it is included) durably, and deletes
/// all but the newest snapshots.
pub(crate) fn write_snapshot(
    dir: &Path,
    offset: u64,
    states: &ProducerStates,
) -> Result<(), LogError> {
    segment::write_durably(&snapshot_path(dir, offset), &states.encode())?;
    let offsets = snapshot_offsets(dir)?;
    for old in offsets.iter().rev().skip(SNAPSHOTS_KEPT) {
        let path = snapshot_path(dir, *old);
        if let Err(error) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), %error, "cannot delete an old producer snapshot");
        }
    }
    Ok(())
}

/// Deletes the snapshots at or after `offset`: they describe batches a truncation removed.
pub(crate) fn delete_snapshots_from(dir: &Path, offset: u64) -> Result<(), LogError> {
    for stale in snapshot_offsets(dir)?.into_iter().filter(|o| *o >= offset) {
        let path = snapshot_path(dir, stale);
        std::fs::remove_file(&path)
            .map_err(|source| LogError::io(format!("delete {}", path.display()), source))?;
    }
    Ok(())
}

/// The newest readable snapshot at or below `log_end`, and its offset; a damaged one is
/// skipped (with a warning) in favour of an older one, and without any the state starts
/// empty at `None` (replay everything).
pub(crate) fn load_snapshot(
    dir: &Path,
    log_end: u64,
) -> Result<Option<(u64, ProducerStates)>, LogError> {
    for offset in snapshot_offsets(dir)?.into_iter().rev() {
        if offset > log_end {
            continue;
        }
        let path = snapshot_path(dir, offset);
        let bytes = std::fs::read(&path)
            .map_err(|source| LogError::io(format!("read {}", path.display()), source))?;
        match ProducerStates::decode(&bytes, crate::partition::now_ms()) {
            Some(states) => return Ok(Some((offset, states))),
            None => {
                tracing::warn!(path = %path.display(), "ignoring a damaged producer snapshot");
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(producer_id: i64, epoch: i16, sequence: i32, records: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 0,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id,
            producer_epoch: epoch,
            base_sequence: sequence,
            records_count: records,
        }
    }

    fn append(states: &mut ProducerStates, h: &BatchHeader, offset: u64) -> SequenceCheck {
        let check = states.check(h).expect("accepted");
        if check == SequenceCheck::Append {
            states.record(h, offset);
        }
        check
    }

    #[test]
    fn in_order_batches_append_and_retries_are_duplicates() {
        let mut states = ProducerStates::default();
        assert_eq!(
            append(&mut states, &header(7, 0, 0, 3), 10),
            SequenceCheck::Append
        );
        assert_eq!(
            append(&mut states, &header(7, 0, 3, 2), 13),
            SequenceCheck::Append
        );
        assert_eq!(
            states.check(&header(7, 0, 0, 3)).unwrap(),
            SequenceCheck::Duplicate {
                base_offset: 10,
                last_offset: 12
            }
        );
        assert_eq!(
            states.check(&header(7, 0, 3, 2)).unwrap(),
            SequenceCheck::Duplicate {
                base_offset: 13,
                last_offset: 14
            }
        );
    }

    #[test]
    fn a_gap_is_out_of_order_and_an_old_epoch_is_fenced() {
        let mut states = ProducerStates::default();
        append(&mut states, &header(7, 1, 0, 1), 0);
        assert!(matches!(
            states.check(&header(7, 1, 2, 1)),
            Err(LogError::OutOfOrderSequence {
                expected: 1,
                received: 2,
                ..
            })
        ));
        assert!(matches!(
            states.check(&header(7, 0, 1, 1)),
            Err(LogError::InvalidProducerEpoch { current: 1, .. })
        ));
        // A new epoch starts at 0 and forgets the old batches.
        assert!(states.check(&header(7, 2, 5, 1)).is_err());
        assert_eq!(
            append(&mut states, &header(7, 2, 0, 1), 1),
            SequenceCheck::Append
        );
        assert_eq!(
            states.check(&header(7, 2, 0, 1)).unwrap(),
            SequenceCheck::Duplicate {
                base_offset: 1,
                last_offset: 1
            }
        );
    }

    #[test]
    fn only_the_last_five_batches_are_remembered_and_sequences_wrap() {
        let mut states = ProducerStates::default();
        for i in 0..6 {
            append(&mut states, &header(1, 0, i, 1), i as u64);
        }
        // The first batch is forgotten: sending it again is out of order, not a duplicate.
        assert!(states.check(&header(1, 0, 0, 1)).is_err());
        assert!(matches!(
            states.check(&header(1, 0, 1, 1)),
            Ok(SequenceCheck::Duplicate { .. })
        ));
        let mut states = ProducerStates::default();
        append(&mut states, &header(2, 0, i32::MAX - 1, 2), 0);
        assert_eq!(
            states.check(&header(2, 0, 0, 1)).unwrap(),
            SequenceCheck::Append
        );
    }

    #[test]
    fn untracked_batches_and_unknown_producers_append() {
        let states = ProducerStates::default();
        assert_eq!(
            states.check(&header(-1, -1, -1, 4)).unwrap(),
            SequenceCheck::Append
        );
        assert_eq!(
            states.check(&header(9, 3, 42, 1)).unwrap(),
            SequenceCheck::Append
        );
    }

    #[test]
    fn snapshots_round_trip_and_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let mut states = ProducerStates::default();
        for (pid, seq) in [(1, 0), (1, 1), (2, 0), (3, 0)] {
            append(&mut states, &header(pid, 0, seq, 1), seq as u64);
        }
        write_snapshot(dir.path(), 5, &states).unwrap();
        write_snapshot(dir.path(), 9, &states).unwrap();
        write_snapshot(dir.path(), 12, &ProducerStates::default()).unwrap();
        assert_eq!(snapshot_offsets(dir.path()).unwrap(), vec![9, 12]);
        let (offset, loaded) = load_snapshot(dir.path(), 10).unwrap().unwrap();
        assert_eq!((offset, &loaded), (9, &states));
        // A damaged newest snapshot falls back to the older one.
        std::fs::write(snapshot_path(dir.path(), 12), b"RPS1garbage").unwrap();
        assert_eq!(load_snapshot(dir.path(), 20).unwrap().unwrap().0, 9);
        assert!(ProducerStates::decode(&[], 0).is_none());
        assert!(ProducerStates::decode(&[0; 3], 0).is_none());
    }

    fn at(mut header: BatchHeader, timestamp: i64) -> BatchHeader {
        header.max_timestamp = timestamp;
        header
    }

    #[test]
    fn producers_silent_past_the_expiration_are_forgotten() {
        let mut states = ProducerStates::default();
        append(&mut states, &at(header(1, 0, 0, 1), 1_000), 0);
        append(&mut states, &at(header(1, 0, 1, 1), 5_000), 1);
        append(&mut states, &at(header(2, 0, 0, 1), 2_000), 2);
        // A batch with an older timestamp does not make the producer look older.
        append(&mut states, &at(header(2, 0, 1, 1), 500), 3);
        assert_eq!(states.expire(2_000), 0);
        assert_eq!(states.expire(2_001), 1);
        assert_eq!(states.len(), 1);
        // Forgotten: its next batch is appended whatever its sequence, as for a new one.
        assert_eq!(
            states.check(&header(2, 0, 7, 1)).unwrap(),
            SequenceCheck::Append
        );
        // Remembered: a gap is still refused.
        assert!(matches!(
            states.check(&header(1, 0, 7, 1)),
            Err(LogError::OutOfOrderSequence { expected: 2, .. })
        ));
    }

    #[test]
    fn timestamps_survive_a_snapshot_and_first_format_snapshots_still_load() {
        let mut states = ProducerStates::default();
        append(&mut states, &at(header(4, 1, 0, 2), 1_234), 10);
        let decoded = ProducerStates::decode(&states.encode(), 99).unwrap();
        assert_eq!(decoded, states);

        // The first format: no timestamp after the epoch.
        let mut v1 = Vec::new();
        v1.extend_from_slice(SNAPSHOT_MAGIC_V1);
        v1.extend_from_slice(&1u32.to_be_bytes());
        v1.extend_from_slice(&4i64.to_be_bytes());
        v1.extend_from_slice(&1i16.to_be_bytes());
        v1.push(1);
        for field in [0i32, 1] {
            v1.extend_from_slice(&field.to_be_bytes());
        }
        v1.extend_from_slice(&10u64.to_be_bytes());
        v1.extend_from_slice(&11u64.to_be_bytes());
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_be_bytes());
        let mut loaded = ProducerStates::decode(&v1, 7_000).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(
            loaded.check(&header(4, 1, 0, 2)).unwrap(),
            SequenceCheck::Duplicate {
                base_offset: 10,
                last_offset: 11
            }
        );
        assert_eq!(loaded.expire(7_000), 0);
        assert_eq!(loaded.expire(7_001), 1);
    }
}
