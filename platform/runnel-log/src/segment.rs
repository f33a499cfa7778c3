//! One segment: a file of record batches plus its two sparse indexes.
//!
//! # On disk
//! `<base offset, 20 digits>.log` holds whole v2 batches back to back, base offsets
//! stamped and strictly increasing; `.index` and `.timeindex` beside it (see
//! [`crate::index`]). A compacted segment may have gaps between batches' offsets.
//!
//! # Concurrency
//! Only the partition's writer appends, and only to the active segment, with positional
//! writes at the end of the file. It publishes the new size after the bytes are written, so
//! readers, which use positional reads bounded by the published size, never see a partial
//! batch. The in-memory index sits behind a lock held only to push or look up an entry.
//!
//! # Recovery
//! [`Segment::open`] trusts nothing: an index that is missing or inconsistent is rebuilt by
//! scanning, and batches after the last index entry are always re-validated by CRC. In the
//! active segment a bad tail is a torn write and is truncated; in a sealed segment, which
//! was fsynced before the next one was created, it is corruption and opening fails.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};

use crate::batch::{self, BATCH_HEADER_LEN, BatchHeader};
use crate::error::LogError;
use crate::index::{OFFSET_ENTRY_LEN, OffsetEntry, SegmentIndex};

/// File name of a segment's log file: the base offset in 20 digits, like Kafka.
pub(crate) fn file_name(base_offset: u64, extension: &str) -> String {
    format!("{base_offset:020}.{extension}")
}

/// How much of a file one read of the recovery scan pulls in.
const SCAN_WINDOW: usize = 1 << 20;

pub(crate) struct Segment {
    pub base_offset: u64,
    dir: PathBuf,
    file: File,
    /// Bytes of whole batches; readers never look past it.
    size: AtomicU64,
    /// One past the last offset of the last batch (the base offset while empty).
    next_offset: AtomicU64,
    /// Largest batch max timestamp, `-1` while empty.
    max_timestamp: AtomicI64,
    /// Wall-clock time of the first append to this segment, for `segment.ms`.
    first_append_ms: AtomicI64,
    index: RwLock<SegmentIndex>,
}

/// What opening a segment found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct OpenReport {
    pub index_rebuilt: bool,
    pub truncated_bytes: u64,
}

/// How far a scan got and why it stopped early, if it did.
struct Scan {
    end: u64,
    next_offset: u64,
    max_timestamp: i64,
    stopped: Option<(u64, String)>,
}

impl Segment {
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(file_name(self.base_offset, "log"))
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join(file_name(self.base_offset, "index"))
    }

    fn time_index_path(&self) -> PathBuf {
        self.dir.join(file_name(self.base_offset, "timeindex"))
    }

    fn io_error(&self, action: &str, source: io::Error) -> LogError {
        LogError::io(format!("{action} {}", self.log_path().display()), source)
    }

    /// Creates a new, empty segment file (failing if one exists).
    pub fn create(dir: &Path, base_offset: u64) -> Result<Segment, LogError> {
        let path = dir.join(file_name(base_offset, "log"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| LogError::io(format!("create segment {}", path.display()), source))?;
        Ok(Segment::from_parts(
            dir,
            base_offset,
            file,
            SegmentIndex::default(),
        ))
    }

    fn from_parts(dir: &Path, base_offset: u64, file: File, index: SegmentIndex) -> Segment {
        Segment {
            base_offset,
            dir: dir.to_path_buf(),
            file,
            size: AtomicU64::new(0),
            next_offset: AtomicU64::new(base_offset),
            max_timestamp: AtomicI64::new(-1),
            first_append_ms: AtomicI64::new(-1),
            index: RwLock::new(index),
        }
    }

    /// Opens an existing segment, validating it as described in the module docs.
    /// `active` says whether a bad tail may be truncated as a torn write.
    pub fn open(
        dir: &Path,
        base_offset: u64,
        active: bool,
        index_interval: u64,
    ) -> Result<(Segment, OpenReport), LogError> {
        let path = dir.join(file_name(base_offset, "log"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| LogError::io(format!("open segment {}", path.display()), source))?;
        let file_len = file
            .metadata()
            .map_err(|source| LogError::io(format!("stat segment {}", path.display()), source))?
            .len();
        let segment = Segment::from_parts(dir, base_offset, file, SegmentIndex::default());
        let mut report = OpenReport::default();

        let mut loaded = segment.load_index_files();
        // A sealed segment's size and end offset were recorded when it was sealed.
        let sealed_end = if active {
            None
        } else {
            segment.read_end_entry()
        };
        if let Some(end) = sealed_end
            && u64::from(end.position) != file_len
        {
            return Err(LogError::CorruptSegment {
                path,
                position: file_len.min(u64::from(end.position)),
                reason: format!(
                    "segment is {file_len} bytes but was sealed at {} bytes",
                    end.position
                ),
            });
        }
        if let Ok(Some((index, _))) = &loaded
            && let Err(reason) = segment.check_index(index, file_len)
        {
            loaded = Err(reason);
        }
        if let Err(reason) = &loaded {
            tracing::warn!(segment = %path.display(), %reason, "rebuilding segment index");
        }
        // Batches from the last indexed one on are re-validated; that entry is re-added
        // by the scan.
        let (mut index, scan_from, first_offset) = match loaded {
            Ok(Some((mut index, _))) => match index.offsets.pop() {
                Some(last) => {
                    // The time entry at `last` holds the maximum of every batch before it,
                    // which the scan from `last` cannot see again: keep it.
                    index
                        .times
                        .retain(|t| t.relative_offset <= last.relative_offset);
                    index.resume();
                    let first_offset = base_offset + u64::from(last.relative_offset);
                    (index, u64::from(last.position), first_offset)
                }
                None => (index, 0, base_offset),
            },
            Ok(None) | Err(_) => {
                report.index_rebuilt = true;
                (SegmentIndex::default(), 0, base_offset)
            }
        };
        // The active segment was never compacted, so its offsets have no gaps.
        let contiguous = active;
        let mut scan = segment.scan(
            scan_from,
            first_offset,
            contiguous,
            file_len,
            &mut index,
            index_interval,
        )?;
        if scan.stopped.is_some() && scan_from > 0 {
            // Find the true end of the valid batches from the start of the file.
            report.index_rebuilt = true;
            index = SegmentIndex::default();
            scan = segment.scan(
                0,
                base_offset,
                contiguous,
                file_len,
                &mut index,
                index_interval,
            )?;
        }
        let max_timestamp = index.max_timestamp().unwrap_or(-1).max(scan.max_timestamp);
        if let Some((position, reason)) = scan.stopped {
            if !active {
                return Err(LogError::CorruptSegment {
                    path,
                    position,
                    reason,
                });
            }
            tracing::warn!(segment = %path.display(), position, %reason, "truncating torn write at the log tail");
            report.truncated_bytes = file_len - scan.end;
            // Index files from an earlier clean close describe bytes about to be rewritten.
            segment.remove_index_files()?;
            segment
                .file
                .set_len(scan.end)
                .and_then(|()| segment.file.sync_all())
                .map_err(|source| segment.io_error("truncate", source))?;
        }
        if let Some(end) = sealed_end
            && scan.next_offset != base_offset + u64::from(end.relative_offset)
        {
            return Err(LogError::CorruptSegment {
                path,
                position: scan.end,
                reason: format!(
                    "segment ends at offset {} but was sealed at offset {}",
                    scan.next_offset,
                    base_offset + u64::from(end.relative_offset)
                ),
            });
        }
        segment.size.store(scan.end, Ordering::Release);
        segment
            .next_offset
            .store(scan.next_offset.max(base_offset), Ordering::Release);
        segment
            .max_timestamp
            .store(max_timestamp, Ordering::Release);
        *segment.index.write().unwrap_or_else(|e| e.into_inner()) = index;
        if report.index_rebuilt && !active {
            segment.persist_current_index()?;
        }
        Ok((segment, report))
    }

    /// Reads both index files and the offset index's end entry; `Ok(None)` if either file
    /// is missing.
    fn load_index_files(&self) -> Result<Option<(SegmentIndex, Option<OffsetEntry>)>, String> {
        // An index has at most an entry per batch: anything larger is not an index of ours.
        let file_len = self
            .file
            .metadata()
            .map_err(|e| format!("stat: {e}"))?
            .len();
        let limit = (file_len / BATCH_HEADER_LEN as u64 + 2) * crate::index::TIME_ENTRY_LEN as u64;
        let read = |path: PathBuf| match std::fs::metadata(&path) {
            Ok(meta) if meta.len() > limit => Err(format!(
                "{} is {} bytes, too large for its segment",
                path.display(),
                meta.len()
            )),
            _ => match std::fs::read(&path) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("read {}: {e}", path.display())),
            },
        };
        let (Some(offsets), Some(times)) =
            (read(self.index_path())?, read(self.time_index_path())?)
        else {
            return Ok(None);
        };
        SegmentIndex::decode(&offsets, &times).map(Some)
    }

    /// The end entry at the end of the offset index file, if it has one.
    fn read_end_entry(&self) -> Option<OffsetEntry> {
        let file = std::fs::File::open(self.index_path()).ok()?;
        let len = file.metadata().ok()?.len();
        if len < OFFSET_ENTRY_LEN as u64 || len % OFFSET_ENTRY_LEN as u64 != 0 {
            return None;
        }
        let mut last = [0u8; OFFSET_ENTRY_LEN];
        file.read_exact_at(&mut last, len - OFFSET_ENTRY_LEN as u64)
            .ok()?;
        let (_, end) = SegmentIndex::decode(&last, &[]).ok()?;
        end
    }

    /// Checks that a loaded index fits the file: it starts at the first batch and its last
    /// entry points at a batch with the offset it claims.
    fn check_index(&self, index: &SegmentIndex, file_len: u64) -> Result<(), String> {
        if index
            .offsets
            .first()
            .is_some_and(|first| first.position != 0)
        {
            return Err("offset index does not start at the first batch".to_string());
        }
        if let Some(last) = index.offsets.last() {
            if u64::from(last.position) + BATCH_HEADER_LEN as u64 > file_len {
                return Err(format!(
                    "offset index points at byte {} of a {file_len}-byte segment",
                    last.position
                ));
            }
            let mut header = [0u8; BATCH_HEADER_LEN];
            self.file
                .read_exact_at(&mut header, u64::from(last.position))
                .map_err(|e| format!("read indexed batch: {e}"))?;
            let parsed = BatchHeader::parse(&header).map_err(|e| e.to_string())?;
            if parsed.base_offset != (self.base_offset + u64::from(last.relative_offset)) as i64 {
                return Err("last index entry does not match its batch".to_string());
            }
        }
        Ok(())
    }

    /// Validates batches from `from` (where a batch with base offset `first_offset` is
    /// expected) to `file_len`, adding them to `index`. With `contiguous`, every batch must
    /// start right after the previous one, as in a segment compaction has not touched.
    fn scan(
        &self,
        from: u64,
        first_offset: u64,
        contiguous: bool,
        file_len: u64,
        index: &mut SegmentIndex,
        interval: u64,
    ) -> Result<Scan, LogError> {
        let mut scan = Scan {
            end: from,
            next_offset: first_offset,
            max_timestamp: -1,
            stopped: None,
        };
        let mut window = Vec::new();
        let mut window_start = from;
        let mut position = from;
        while position < file_len {
            let stop = |reason: String| Some((position, reason));
            let remaining = file_len - position;
            if remaining < BATCH_HEADER_LEN as u64 {
                scan.stopped = stop(format!(
                    "{remaining} trailing bytes, less than a batch header"
                ));
                break;
            }
            let header_bytes = self.window(
                &mut window,
                &mut window_start,
                position,
                BATCH_HEADER_LEN as u64,
                file_len,
            )?;
            let header = match BatchHeader::parse(header_bytes) {
                Ok(header) => header,
                Err(e) => {
                    scan.stopped = stop(e.to_string());
                    break;
                }
            };
            let len = header.total_len();
            if len < BATCH_HEADER_LEN as u64 || len > remaining {
                scan.stopped = stop(format!(
                    "batch of {len} bytes with {remaining} bytes left in the file"
                ));
                break;
            }
            let bytes = self.window(&mut window, &mut window_start, position, len, file_len)?;
            if let Err(e) = batch::validate(bytes) {
                scan.stopped = stop(e.to_string());
                break;
            }
            let expected = scan.next_offset as i64;
            let relative = header.base_offset - self.base_offset as i64;
            if header.base_offset < expected
                || (contiguous && header.base_offset != expected)
                || relative < 0
                || header.last_offset() - (self.base_offset as i64) > i64::from(u32::MAX)
            {
                scan.stopped = stop(format!(
                    "batch base offset {} out of order (expected {expected})",
                    header.base_offset
                ));
                break;
            }
            index.on_batch(
                relative as u32,
                position as u32,
                len,
                header.max_timestamp,
                interval,
            );
            scan.next_offset = header.last_offset() as u64 + 1;
            scan.max_timestamp = scan.max_timestamp.max(header.max_timestamp);
            position += len;
            scan.end = position;
        }
        Ok(scan)
    }

    /// Returns `len` bytes at `position`, refilling the scan window when needed.
    fn window<'w>(
        &self,
        window: &'w mut Vec<u8>,
        window_start: &mut u64,
        position: u64,
        len: u64,
        file_len: u64,
    ) -> Result<&'w [u8], LogError> {
        let within =
            position >= *window_start && position + len <= *window_start + window.len() as u64;
        if !within {
            let want = (len as usize)
                .max(SCAN_WINDOW)
                .min((file_len - position) as usize);
            window.resize(want, 0);
            self.file
                .read_exact_at(window, position)
                .map_err(|source| self.io_error("read", source))?;
            *window_start = position;
        }
        let start = (position - *window_start) as usize;
        Ok(&window[start..start + len as usize])
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    pub fn next_offset(&self) -> u64 {
        self.next_offset.load(Ordering::Acquire)
    }

    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.size() == 0
    }

    /// Milliseconds since the epoch of the first append, `None` while empty or unknown.
    pub fn first_append_ms(&self) -> Option<i64> {
        let ms = self.first_append_ms.load(Ordering::Acquire);
        (ms >= 0).then_some(ms)
    }

    /// The max timestamp of the first batch, `None` if empty or without a timestamp.
    pub fn first_batch_timestamp(&self) -> Result<Option<i64>, LogError> {
        if self.size() < BATCH_HEADER_LEN as u64 {
            return Ok(None);
        }
        let header = self.read_header_at(0)?;
        Ok((header.max_timestamp >= 0).then_some(header.max_timestamp))
    }

    /// Starts the `segment.ms` clock of a segment reopened with data in it.
    pub fn mark_first_append(&self, now_ms: i64) {
        self.first_append_ms.store(now_ms, Ordering::Release);
    }

    /// The log file's modification time, the age of a segment whose records carry no
    /// timestamps.
    pub fn modified_ms(&self) -> Option<i64> {
        let modified = self.file.metadata().and_then(|m| m.modified()).ok()?;
        let since_epoch = modified.duration_since(std::time::UNIX_EPOCH).ok()?;
        Some(since_epoch.as_millis() as i64)
    }

    /// Appends one validated, stamped batch at the end. Only the writer calls this.
    pub fn append(
        &self,
        bytes: &[u8],
        header: &BatchHeader,
        now_ms: i64,
        index_interval: u64,
    ) -> Result<(), LogError> {
        let position = self.size();
        self.file
            .write_all_at(bytes, position)
            .map_err(|source| self.io_error("append to", source))?;
        let relative = (header.base_offset as u64 - self.base_offset) as u32;
        self.index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .on_batch(
                relative,
                position as u32,
                bytes.len() as u64,
                header.max_timestamp,
                index_interval,
            );
        if position == 0 {
            self.first_append_ms.store(now_ms, Ordering::Release);
        }
        self.max_timestamp
            .fetch_max(header.max_timestamp, Ordering::AcqRel);
        self.next_offset
            .store(header.last_offset() as u64 + 1, Ordering::Release);
        self.size
            .store(position + bytes.len() as u64, Ordering::Release);
        Ok(())
    }

    /// fdatasync of the log file.
    pub fn sync(&self) -> Result<(), LogError> {
        self.file
            .sync_data()
            .map_err(|source| self.io_error("fsync", source))
    }

    /// Writes both index files durably (temporary file, fsync, rename), the offset index
    /// ending with the segment's current end.
    pub fn persist_current_index(&self) -> Result<(), LogError> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner()).clone();
        let end = OffsetEntry {
            relative_offset: (self.next_offset() - self.base_offset) as u32,
            position: self.size() as u32,
        };
        write_durably(&self.index_path(), &index.encode_offsets(Some(end)))?;
        write_durably(&self.time_index_path(), &index.encode_times())
    }

    /// Removes the index files, so a crash before they are rewritten forces a rebuild.
    pub fn remove_index_files(&self) -> Result<(), LogError> {
        for path in [self.index_path(), self.time_index_path()] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(LogError::io(format!("remove {}", path.display()), source));
                }
            }
        }
        Ok(())
    }

    /// Cuts the file at `position` (a batch boundary) and removes the index files, which
    /// describe the bytes cut: the segment must be opened again after this.
    pub fn truncate_file(&self, position: u64) -> Result<(), LogError> {
        self.remove_index_files()?;
        self.file
            .set_len(position)
            .and_then(|()| self.file.sync_all())
            .map_err(|source| self.io_error("truncate", source))
    }

    /// Deletes the segment's files. Readers holding it keep reading the unlinked file.
    pub fn delete_files(&self) -> Result<(), LogError> {
        self.remove_index_files()?;
        std::fs::remove_file(self.log_path()).map_err(|source| self.io_error("delete", source))
    }

    /// The file position to start scanning for `offset`.
    fn position_for(&self, offset: u64) -> u64 {
        let relative = offset
            .saturating_sub(self.base_offset)
            .min(u64::from(u32::MAX)) as u32;
        u64::from(
            self.index
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .position_for(relative),
        )
    }

    fn read_header_at(&self, position: u64) -> Result<BatchHeader, LogError> {
        let mut header = [0u8; BATCH_HEADER_LEN];
        self.file
            .read_exact_at(&mut header, position)
            .map_err(|source| self.io_error("read", source))?;
        let parsed =
            BatchHeader::parse(&header).map_err(|e| self.corrupt(position, e.to_string()))?;
        if parsed.total_len() < BATCH_HEADER_LEN as u64 {
            return Err(self.corrupt(position, format!("batch length {}", parsed.batch_length)));
        }
        Ok(parsed)
    }

    fn corrupt(&self, position: u64, reason: String) -> LogError {
        LogError::CorruptSegment {
            path: self.log_path(),
            position,
            reason,
        }
    }

    /// The position of the first batch holding offsets at or after `offset`, with its
    /// header and the last offset of the batch before it (or a lower bound), or `None` if no
    /// such batch lies below `size`. Checks the offsets it walks over: the indexed batch must
    /// have the offset the index recorded, and each batch must start after the previous one.
    fn seek(&self, offset: u64, size: u64) -> Result<Option<(u64, BatchHeader, i64)>, LogError> {
        let relative = offset
            .saturating_sub(self.base_offset)
            .min(u64::from(u32::MAX)) as u32;
        let entry = self
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .entry_for(relative);
        let mut position = entry.map_or(0, |e| u64::from(e.position));
        let mut expected_first = entry.map(|e| self.base_offset + u64::from(e.relative_offset));
        let mut previous_last = self.base_offset as i64 - 1;
        while position + BATCH_HEADER_LEN as u64 <= size {
            let header = self.read_header_at(position)?;
            if let Some(expected) = expected_first.take()
                && header.base_offset != expected as i64
            {
                return Err(self.corrupt(
                    position,
                    format!(
                        "index expects offset {expected} here, batch says {}",
                        header.base_offset
                    ),
                ));
            }
            if header.base_offset <= previous_last {
                return Err(self.corrupt(
                    position,
                    format!("batch offset {} out of order", header.base_offset),
                ));
            }
            if position + header.total_len() > size {
                return Err(self.corrupt(
                    position,
                    format!(
                        "batch of {} bytes runs past the segment end",
                        header.total_len()
                    ),
                ));
            }
            if header.last_offset() >= offset as i64 {
                return Ok(Some((position, header, previous_last)));
            }
            // A batch stepped over must be sound too, or a damaged length or offset delta
            // would silently skip records.
            let mut whole = vec![0u8; header.total_len() as usize];
            self.file
                .read_exact_at(&mut whole, position)
                .map_err(|source| self.io_error("read", source))?;
            batch::validate(&whole).map_err(|e| self.corrupt(position, e.to_string()))?;
            previous_last = header.last_offset();
            position += header.total_len();
        }
        if position != size {
            return Err(self.corrupt(position, "trailing bytes after the last batch".to_string()));
        }
        Ok(None)
    }

    /// Reads whole batches starting with the one that holds `offset`, only batches entirely
    /// below `upper` (the high watermark), at most `max_bytes` unless the first batch alone
    /// is larger and `at_least_one` is set. Each batch's CRC is checked: a mismatch is
    /// corruption, never served.
    pub fn read(
        &self,
        offset: u64,
        upper: u64,
        max_bytes: usize,
        at_least_one: bool,
    ) -> Result<Option<Bytes>, LogError> {
        let size = self.size();
        let Some((start, first, before_first)) = self.seek(offset, size)? else {
            return Ok(None);
        };
        if first.last_offset() >= self.next_offset() as i64 {
            return Err(self.corrupt(
                start,
                format!(
                    "batch claims offsets up to {}, past the segment end",
                    first.last_offset()
                ),
            ));
        }
        if first.last_offset() >= upper as i64 {
            return Ok(None);
        }
        let want = (max_bytes as u64).min(size - start);
        let mut buffer = BytesMut::zeroed(want as usize);
        self.file
            .read_exact_at(&mut buffer, start)
            .map_err(|source| self.io_error("read", source))?;
        let mut batches = Vec::new();
        for (at, header) in batch::batch_positions(&buffer) {
            if header.last_offset() >= upper as i64 {
                break;
            }
            batches.push((at, header.total_len() as usize));
        }
        if batches.is_empty() {
            let first_len = first.total_len();
            if !at_least_one {
                // The batch holding `offset` is here but larger than allowed: nothing now,
                // which is not the same as "not in this segment".
                return Ok(Some(Bytes::new()));
            }
            if start + first_len > size {
                return Ok(None);
            }
            buffer = BytesMut::zeroed(first_len as usize);
            self.file
                .read_exact_at(&mut buffer, start)
                .map_err(|source| self.io_error("read", source))?;
            batches.push((0, buffer.len()));
        }
        // The CRC does not cover the base offset, so check that offsets make sense too.
        let mut end = 0;
        let mut previous_last = before_first;
        let segment_end = self.next_offset() as i64;
        for (at, len) in batches {
            let header = batch::validate(&buffer[at..at + len])
                .map_err(|e| self.corrupt(start + at as u64, e.to_string()))?;
            if header.base_offset <= previous_last || header.last_offset() >= segment_end {
                return Err(self.corrupt(
                    start + at as u64,
                    format!(
                        "batch offsets {}..={} out of order",
                        header.base_offset,
                        header.last_offset()
                    ),
                ));
            }
            previous_last = header.last_offset();
            end = at + len;
        }
        // The batch after the ones served must continue the sequence, or a changed base
        // offset in the last one served would go unnoticed.
        let after = start + end as u64;
        if after + BATCH_HEADER_LEN as u64 <= size {
            let next = self.read_header_at(after)?;
            if next.base_offset <= previous_last {
                return Err(self.corrupt(
                    after,
                    format!("batch offset {} out of order", next.base_offset),
                ));
            }
        } else if after != size {
            return Err(self.corrupt(after, "trailing bytes after the last batch".to_string()));
        }
        buffer.truncate(end);
        Ok(Some(buffer.freeze()))
    }

    /// Calls `visit` with every batch from `from_position` to the end, whole and validated.
    pub fn for_each_batch(
        &self,
        from_position: u64,
        mut visit: impl FnMut(u64, &[u8], &BatchHeader) -> Result<bool, LogError>,
    ) -> Result<(), LogError> {
        let size = self.size();
        let segment_end = self.next_offset() as i64;
        let mut previous_last = self.base_offset as i64 - 1;
        let mut window = Vec::new();
        let mut window_start = from_position;
        let mut position = from_position;
        while position + BATCH_HEADER_LEN as u64 <= size {
            let header = self.read_header_at(position)?;
            let len = header.total_len();
            if position + len > size {
                return Err(self.corrupt(
                    position,
                    "batch runs past the end of the segment".to_string(),
                ));
            }
            let bytes = self.window(&mut window, &mut window_start, position, len, size)?;
            batch::validate(bytes).map_err(|e| self.corrupt(position, e.to_string()))?;
            if header.base_offset <= previous_last || header.last_offset() >= segment_end {
                return Err(self.corrupt(
                    position,
                    format!(
                        "batch offsets {}..={} out of order",
                        header.base_offset,
                        header.last_offset()
                    ),
                ));
            }
            previous_last = header.last_offset();
            if !visit(position, bytes, &header)? {
                break;
            }
            position += len;
        }
        Ok(())
    }

    /// The first offset below `upper` whose record timestamp is at least `timestamp`, with
    /// that record's timestamp.
    pub fn offset_for_timestamp(
        &self,
        timestamp: i64,
        upper: u64,
        max_batch_bytes: usize,
    ) -> Result<Option<(u64, i64)>, LogError> {
        if self.max_timestamp() < timestamp {
            return Ok(None);
        }
        let start_relative = self
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .scan_start_for_timestamp(timestamp);
        let start = self.position_for(self.base_offset + u64::from(start_relative));
        let mut found = None;
        self.for_each_batch(start, |position, bytes, header| {
            if header.base_offset >= upper as i64 {
                return Ok(false);
            }
            found = batch::first_at_or_after(bytes, header, timestamp, upper, max_batch_bytes)
                .map_err(|e| self.corrupt(position, e.to_string()))?;
            Ok(found.is_none())
        })?;
        Ok(found)
    }
}

/// Writes `bytes` to `path` so that after a crash it holds either the old or the new
/// contents: temporary file, fsync, rename, fsync of the directory.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), LogError> {
    let temporary = path.with_extension(format!(
        "{}.tmp",
        path.extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
    ));
    let write = || -> io::Result<()> {
        let file = File::create(&temporary)?;
        file.write_all_at(bytes, 0)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            sync_dir(dir)?;
        }
        Ok(())
    };
    write().map_err(|source| LogError::io(format!("write {}", path.display()), source))
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
