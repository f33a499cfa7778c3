//! The Raft log store: `raft.log` plus the vote, committed and purged ids (see the layout in
//! [`crate::store`]).
//!
//! Memory holds every live entry (`BTreeMap` by index), shared with the [`LogReader`]s the
//! replication tasks use; the disk side (the open file and each entry's byte offset) is only
//! touched on the blocking pool, behind its own lock, so a reader never waits for an fsync.
//! Every write goes to disk first and into memory second, on the same blocking thread.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageError, StorageIOError};

use super::StoreError;
use super::durable::{self, DirLock, lock};
use crate::metadata::NodeId;
use crate::types::{Entry, LogId, TypeConfig, Vote};

/// The log file's name in the controller directory.
pub const LOG_FILE: &str = "raft.log";
/// The largest payload of one log record; a longer length read from disk is corruption.
pub const MAX_RECORD_LEN: usize = 64 << 20;

const VOTE_FILE: &str = "vote.json";
const COMMITTED_FILE: &str = "committed.json";
const PURGED_FILE: &str = "purged.json";
const MAGIC: &[u8; 8] = b"RNLRLOG1";
const RECORD_HEADER_LEN: usize = 8;

/// The durable Raft log, vote and log pointers; openraft's [`RaftLogStorage`].
pub struct LogStore {
    memory: Arc<Mutex<LogMemory>>,
    disk: Arc<Mutex<LogDisk>>,
    _lock: Arc<DirLock>,
}

/// Reads the committed log index openraft last saved, for the metrics (openraft 0.9's own
/// metrics do not carry it).
#[derive(Clone)]
pub struct CommittedIndex {
    memory: Arc<Mutex<LogMemory>>,
}

impl CommittedIndex {
    pub fn get(&self) -> u64 {
        lock(&self.memory).committed.map_or(0, |id| id.index)
    }
}

/// Reads log entries for replication, concurrently with the [`LogStore`]'s writes.
#[derive(Clone)]
pub struct LogReader {
    memory: Arc<Mutex<LogMemory>>,
}

/// What is on disk, in memory. Changed only after the disk has it.
struct LogMemory {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
}

struct LogDisk {
    dir: PathBuf,
    path: PathBuf,
    /// Opened for appending; its length is `len`.
    file: File,
    len: u64,
    /// The byte offset of each entry's record in the file.
    offsets: BTreeMap<u64, u64>,
    /// Set while a write is under way and left set if it fails: the file's state is then
    /// unknown and every later write is refused.
    failed: bool,
}

impl LogStore {
    /// Opens the log in `dir` (blocking): reads the small files, scans `raft.log`, cuts off a
    /// torn tail, and drops entries an interrupted purge left behind.
    pub(super) fn open(dir: &Path, dir_lock: Arc<DirLock>) -> Result<LogStore, StoreError> {
        let vote: Option<Vote> = durable::read_json(dir, VOTE_FILE)?;
        let committed: Option<LogId> =
            durable::read_json::<Option<LogId>>(dir, COMMITTED_FILE)?.flatten();
        let last_purged: Option<LogId> = durable::read_json(dir, PURGED_FILE)?;

        let path = dir.join(LOG_FILE);
        let bytes = match durable::read_optional(&path)? {
            Some(bytes) => bytes,
            None if vote.is_some() || committed.is_some() || last_purged.is_some() => {
                return Err(StoreError::Corrupt {
                    path,
                    reason: "missing, while the vote and log pointers next to it exist".into(),
                });
            }
            None => {
                durable::write_atomic(dir, LOG_FILE, MAGIC)?;
                MAGIC.to_vec()
            }
        };
        let scan = scan_log(&bytes).map_err(|reason| StoreError::Corrupt {
            path: path.clone(),
            reason,
        })?;
        if let Some(reason) = &scan.torn_tail {
            tracing::warn!(
                path = %path.display(),
                reason = %reason,
                kept_bytes = scan.valid_len,
                dropped_bytes = bytes.len() as u64 - scan.valid_len,
                "cutting off a torn tail of the controller log (an append interrupted by a crash)"
            );
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(StoreError::io("open", &path))?;
            file.set_len(scan.valid_len)
                .and_then(|()| file.sync_all())
                .map_err(StoreError::io("truncate", &path))?;
        }

        let mut entries = BTreeMap::new();
        let mut offsets = BTreeMap::new();
        let mut stale = 0usize;
        let mut previous: Option<u64> = None;
        for (offset, entry) in scan.records {
            let index = entry.log_id.index;
            if previous.is_some_and(|previous| index <= previous) {
                return Err(StoreError::Corrupt {
                    path,
                    reason: format!("entry {index} at byte {offset} follows entry {previous:?}"),
                });
            }
            previous = Some(index);
            if last_purged.is_some_and(|purged| index <= purged.index) {
                stale += 1;
                continue;
            }
            offsets.insert(index, offset);
            entries.insert(index, entry);
        }
        let mut expected = last_purged.map(|id| id.index + 1);
        for index in entries.keys() {
            if let Some(expected) = expected.filter(|expected| expected != index) {
                // openraft never leaves a hole; its test suite does. Reading the missing
                // entries fails when openraft asks for them.
                tracing::warn!(index, expected, "the controller log has a hole");
            }
            expected = Some(index + 1);
        }

        let file = open_for_append(&path)?;
        let mut disk = LogDisk {
            dir: dir.to_path_buf(),
            path,
            file,
            len: scan.valid_len,
            offsets,
            failed: false,
        };
        if stale > 0 {
            tracing::info!(stale, "dropping purged entries left in the controller log");
            let records = encode_records(entries.values())?;
            disk.guarded(|disk| disk.rewrite(&records))?;
        }
        tracing::info!(
            entries = entries.len(),
            first = entries.keys().next().copied(),
            last = entries.keys().next_back().copied(),
            last_purged = last_purged.map(|id| id.index),
            "opened the controller log"
        );
        Ok(LogStore {
            memory: Arc::new(Mutex::new(LogMemory {
                entries,
                last_purged,
                vote,
                committed,
            })),
            disk: Arc::new(Mutex::new(disk)),
            _lock: dir_lock,
        })
    }

    /// A handle on the committed index, to read while openraft owns the store.
    pub fn committed_index(&self) -> CommittedIndex {
        CommittedIndex {
            memory: self.memory.clone(),
        }
    }

    fn reader(&self) -> LogReader {
        LogReader {
            memory: self.memory.clone(),
        }
    }

    /// Runs `write` against the disk on the blocking pool, then `update` against memory on
    /// the same thread.
    async fn write<T: Send + 'static>(
        &self,
        write: impl FnOnce(&mut LogDisk, &Mutex<LogMemory>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let disk = self.disk.clone();
        let memory = self.memory.clone();
        durable::blocking(move || lock(&disk).guarded(|disk| write(disk, &memory))).await
    }
}

impl LogDisk {
    /// Runs one write; a failure (or a panic) leaves the disk marked failed.
    fn guarded<T>(
        &mut self,
        write: impl FnOnce(&mut LogDisk) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.failed {
            return Err(StoreError::Failed);
        }
        self.failed = true;
        let result = write(self)?;
        self.failed = false;
        Ok(result)
    }

    /// Appends encoded records and fdatasyncs them.
    fn append(&mut self, records: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
        let mut buffer = Vec::with_capacity(records.iter().map(|(_, r)| r.len()).sum());
        let mut offsets = Vec::with_capacity(records.len());
        let mut offset = self.len;
        for (index, record) in records {
            offsets.push((*index, offset));
            offset += record.len() as u64;
            buffer.extend_from_slice(record);
        }
        self.file
            .write_all(&buffer)
            .and_then(|()| self.file.sync_data())
            .map_err(StoreError::io("append to", &self.path))?;
        self.len = offset;
        self.offsets.extend(offsets);
        Ok(())
    }

    /// Cuts the file before the record of entry `from` (if it has one) and fsyncs.
    fn truncate(&mut self, from: u64) -> Result<(), StoreError> {
        let Some(offset) = self.offsets.range(from..).next().map(|(_, o)| *o) else {
            return Ok(());
        };
        self.file
            .set_len(offset)
            .and_then(|()| self.file.sync_all())
            .map_err(StoreError::io("truncate", &self.path))?;
        self.len = offset;
        self.offsets.split_off(&from);
        Ok(())
    }

    /// Replaces the file with one holding exactly `records`, atomically.
    fn rewrite(&mut self, records: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
        let mut bytes = MAGIC.to_vec();
        let mut offsets = BTreeMap::new();
        for (index, record) in records {
            offsets.insert(*index, bytes.len() as u64);
            bytes.extend_from_slice(record);
        }
        durable::write_atomic(&self.dir, LOG_FILE, &bytes)?;
        self.file = open_for_append(&self.path)?;
        self.len = bytes.len() as u64;
        self.offsets = offsets;
        Ok(())
    }

    /// Whether the file holds a record of an entry at or before `index`.
    fn holds_up_to(&self, index: u64) -> bool {
        self.offsets.range(..=index).next().is_some()
    }
}

fn open_for_append(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(StoreError::io("open", path))
}

/// Encodes one entry as a record: `len | crc | payload`.
fn encode_record(entry: &Entry) -> Result<Vec<u8>, StoreError> {
    let payload = serde_json::to_vec(entry).map_err(|error| StoreError::Encode {
        what: "log entry",
        error,
    })?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len as usize <= MAX_RECORD_LEN)
        .ok_or_else(|| {
            StoreError::Invalid(format!(
                "log entry {} is {} bytes encoded, more than {MAX_RECORD_LEN}",
                entry.log_id.index,
                payload.len()
            ))
        })?
        .to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), &payload);
    let mut record = Vec::with_capacity(RECORD_HEADER_LEN + payload.len());
    record.extend_from_slice(&len);
    record.extend_from_slice(&crc.to_le_bytes());
    record.extend_from_slice(&payload);
    Ok(record)
}

fn encode_records<'a>(
    entries: impl IntoIterator<Item = &'a Entry>,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    entries
        .into_iter()
        .map(|entry| Ok((entry.log_id.index, encode_record(entry)?)))
        .collect()
}

/// What a scan of the log file found.
#[derive(Debug)]
struct Scan {
    /// Each record's byte offset and entry, in file order.
    records: Vec<(u64, Entry)>,
    /// The length of the file up to the end of the last good record.
    valid_len: u64,
    /// Why the bytes after `valid_len` are a torn tail, if there are any.
    torn_tail: Option<String>,
}

/// Scans a log file's bytes. A damaged last record is a torn tail (returned in the scan);
/// damage followed by more data is corruption (the error says where and why).
fn scan_log(bytes: &[u8]) -> Result<Scan, String> {
    if bytes.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
        return Err("missing the RNLRLOG1 header: not a controller log".to_string());
    }
    let mut records = Vec::new();
    let mut position = MAGIC.len();
    let torn_tail = loop {
        let rest = bytes.get(position..).unwrap_or_default();
        if rest.is_empty() {
            break None;
        }
        let (Some(len), Some(crc)) = (read_u32(rest, 0), read_u32(rest, 4)) else {
            break Some(format!("incomplete record header at byte {position}"));
        };
        let len = len as usize;
        if len == 0 || len > MAX_RECORD_LEN {
            if is_zeros(rest) {
                break Some(format!("zero-filled tail from byte {position}"));
            }
            return Err(format!(
                "record at byte {position} has invalid length {len}"
            ));
        }
        let Some(payload) = rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len) else {
            break Some(format!(
                "incomplete record at byte {position}: {len} bytes of payload, {} in the file",
                rest.len() - RECORD_HEADER_LEN
            ));
        };
        let after = rest.get(RECORD_HEADER_LEN + len..).unwrap_or_default();
        let computed = crc32c::crc32c_append(crc32c::crc32c(&(len as u32).to_le_bytes()), payload);
        if computed != crc {
            if is_zeros(after) {
                break Some(format!(
                    "checksum mismatch in the last record, at byte {position}"
                ));
            }
            return Err(format!(
                "checksum mismatch in the record at byte {position}, with {} bytes after it",
                after.len()
            ));
        }
        let entry: Entry = serde_json::from_slice(payload).map_err(|error| {
            format!("record at byte {position} passes its checksum but does not decode: {error}")
        })?;
        records.push((position as u64, entry));
        position += RECORD_HEADER_LEN + len;
    };
    Ok(Scan {
        records,
        valid_len: position as u64,
        torn_tail,
    })
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let word: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(word))
}

fn is_zeros(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

/// The entries of `memory` within `range`.
fn read_entries(memory: &Mutex<LogMemory>, range: impl RangeBounds<u64>) -> Vec<Entry> {
    let start = match range.start_bound() {
        Bound::Included(start) => *start,
        Bound::Excluded(start) => match start.checked_add(1) {
            Some(start) => start,
            None => return Vec::new(),
        },
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(end) => end.checked_add(1),
        Bound::Excluded(end) => Some(*end),
        Bound::Unbounded => None,
    };
    let memory = lock(memory);
    match end {
        Some(end) if end <= start => Vec::new(),
        Some(end) => memory
            .entries
            .range(start..end)
            .map(|(_, e)| e.clone())
            .collect(),
        None => memory
            .entries
            .range(start..)
            .map(|(_, e)| e.clone())
            .collect(),
    }
}

fn write_error(error: &StoreError) -> StorageError<NodeId> {
    StorageIOError::write_logs(error).into()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        Ok(read_entries(&self.memory, range))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        Ok(read_entries(&self.memory, range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let memory = lock(&self.memory);
        let last_log_id = memory
            .entries
            .last_key_value()
            .map(|(_, entry)| entry.log_id)
            .or(memory.last_purged);
        Ok(LogState {
            last_purged_log_id: memory.last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError<NodeId>> {
        let vote = *vote;
        self.write(move |disk, memory| {
            durable::write_json(&disk.dir, VOTE_FILE, "vote", &vote)?;
            lock(memory).vote = Some(vote);
            Ok(())
        })
        .await
        .map_err(|error| StorageIOError::write_vote(&error).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError<NodeId>> {
        Ok(lock(&self.memory).vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId>,
    ) -> Result<(), StorageError<NodeId>> {
        self.write(move |disk, memory| {
            durable::write_json(&disk.dir, COMMITTED_FILE, "committed log id", &committed)?;
            lock(memory).committed = committed;
            Ok(())
        })
        .await
        .map_err(|error| StorageIOError::write(&error).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<NodeId>> {
        Ok(lock(&self.memory).committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let result = self
            .write(move |disk, memory| {
                let (entries, last) = {
                    let memory = lock(memory);
                    let purged = memory.last_purged.map(|id| id.index);
                    // Entries at or before the purged id are in the state machine already.
                    let entries: Vec<Entry> = entries
                        .into_iter()
                        .filter(|entry| purged.is_none_or(|purged| entry.log_id.index > purged))
                        .collect();
                    let last = memory.entries.keys().next_back().copied();
                    (entries, last)
                };
                let Some(first) = entries.first().map(|entry| entry.log_id.index) else {
                    return Ok(());
                };
                if entries
                    .windows(2)
                    .any(|pair| pair[1].log_id.index <= pair[0].log_id.index)
                {
                    return Err(StoreError::Invalid(
                        "appended entries are not in index order".to_string(),
                    ));
                }
                // openraft truncates a conflicting suffix before appending over it; should an
                // append overlap the log anyway, it replaces the overlapped suffix, so the
                // file's indexes always increase.
                if last.is_some_and(|last| first <= last) {
                    disk.truncate(first)?;
                    lock(memory).entries.split_off(&first);
                }
                let records = encode_records(&entries)?;
                disk.append(&records)?;
                let mut memory = lock(memory);
                for entry in entries {
                    memory.entries.insert(entry.log_id.index, entry);
                }
                Ok(())
            })
            .await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                callback.log_io_completed(Err(io::Error::other(error.to_string())));
                Err(write_error(&error))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<NodeId>> {
        let from = log_id.index;
        self.write(move |disk, memory| {
            disk.truncate(from)?;
            lock(memory).entries.split_off(&from);
            Ok(())
        })
        .await
        .map_err(|error| write_error(&error))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<NodeId>> {
        self.write(move |disk, memory| {
            if lock(memory)
                .last_purged
                .is_some_and(|purged| purged.index >= log_id.index)
            {
                return Ok(());
            }
            // The purged id first: a crash before the rewrite leaves stale entries that the
            // next open skips, never a log that starts after its purged id.
            durable::write_json(&disk.dir, PURGED_FILE, "purged log id", &log_id)?;
            let kept = {
                let mut memory = lock(memory);
                memory.entries = memory.entries.split_off(&(log_id.index + 1));
                memory.last_purged = Some(log_id);
                if !disk.holds_up_to(log_id.index) {
                    return Ok(());
                }
                encode_records(memory.entries.values())?
            };
            disk.rewrite(&kept)
        })
        .await
        .map_err(|error| write_error(&error))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn file(entries: &[Entry]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        for entry in entries {
            bytes.extend(encode_record(entry).unwrap());
        }
        bytes
    }

    #[test]
    fn a_whole_file_scans_clean() {
        let bytes = file(&[entry(1), entry(2), entry(3)]);
        let scan = scan_log(&bytes).unwrap();
        assert_eq!(scan.records.len(), 3);
        assert_eq!(scan.valid_len, bytes.len() as u64);
        assert!(scan.torn_tail.is_none());
    }

    #[test]
    fn every_cut_inside_the_last_record_is_a_torn_tail() {
        let two = file(&[entry(1), entry(2)]);
        let three = file(&[entry(1), entry(2), entry(3)]);
        for cut in two.len() + 1..three.len() {
            let scan = scan_log(&three[..cut]).unwrap();
            assert_eq!(scan.records.len(), 2, "cut at {cut}");
            assert_eq!(scan.valid_len, two.len() as u64);
            assert!(scan.torn_tail.is_some());
        }
    }

    #[test]
    fn a_zeroed_or_garbled_last_record_is_a_torn_tail() {
        let two = file(&[entry(1), entry(2)]);
        let mut zeroed = file(&[entry(1), entry(2), entry(3)]);
        zeroed[two.len()..].fill(0);
        assert_eq!(scan_log(&zeroed).unwrap().records.len(), 2);

        let mut garbled = file(&[entry(1), entry(2), entry(3)]);
        let last = garbled.len() - 2;
        garbled[last] ^= 0xff;
        let scan = scan_log(&garbled).unwrap();
        assert_eq!(scan.records.len(), 2);
        assert!(scan.torn_tail.unwrap().contains("checksum"));
    }

    #[test]
    fn damage_before_good_data_is_corruption() {
        let one = file(&[entry(1)]);
        let mut bytes = file(&[entry(1), entry(2), entry(3)]);
        bytes[one.len() + RECORD_HEADER_LEN + 3] ^= 0x01;
        let error = scan_log(&bytes).unwrap_err();
        assert!(error.contains("checksum mismatch"), "{error}");

        let mut bytes = file(&[entry(1), entry(2)]);
        bytes[one.len()..one.len() + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let error = scan_log(&bytes).unwrap_err();
        assert!(error.contains("invalid length"), "{error}");

        assert!(scan_log(b"RNLRLOG").is_err());
        assert!(scan_log(b"not a log at all").is_err());
    }

    #[test]
    fn ranges_never_panic() {
        let memory = Mutex::new(LogMemory {
            entries: (1..=5).map(|i| (i, entry(i))).collect(),
            last_purged: None,
            vote: None,
            committed: None,
        });
        assert_eq!(read_entries(&memory, 2..4).len(), 2);
        assert_eq!(read_entries(&memory, 2..=4).len(), 3);
        assert_eq!(read_entries(&memory, ..).len(), 5);
        assert!(read_entries(&memory, (Bound::Included(4), Bound::Excluded(2))).is_empty());
        assert!(read_entries(&memory, 3..3).is_empty());
        assert_eq!(read_entries(&memory, 3..=u64::MAX).len(), 3);
        assert!(
            read_entries(
                &memory,
                (Bound::Excluded(u64::MAX), Bound::<u64>::Unbounded)
            )
            .is_empty()
        );
    }
}
