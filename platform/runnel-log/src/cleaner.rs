//! Log compaction (`cleanup.policy=compact`): keep the latest record of every key.
//!
//! # What is kept
//! Compaction looks only at sealed segments whose newest record is older than
//! `min.compaction.lag.ms`, oldest first (the cleanable prefix); the active segment is never
//! touched. Over that range it keeps, for each key, only the record with the highest
//! offset. A tombstone (a record with a null value) is kept as the latest value of its key
//! until `delete.retention.ms` has passed since its timestamp, then it is dropped too, so a
//! consumer reading the whole log has that long to see the delete. Records without a key
//! and control batches are always kept. Offsets never change: surviving records keep theirs
//! and a batch keeps its base offset and last offset delta, so gaps appear instead.
//!
//! # How
//! Pass one builds a map from key to its latest offset. Pass two rewrites each segment that
//! loses records: batches that keep everything are copied byte for byte, batches that keep
//! nothing are dropped, the rest are rebuilt from the surviving records' bytes (compressed
//! again with the same codec, new CRC). The key map holds each distinct key once, so memory
//! grows with the number of distinct keys in the cleanable range.
//!
//! # Crash consistency
//! The new segment is written to `<base>.log.cleaned` and fsynced; the old index files are
//! removed, the cleaned file renamed over the old one (atomic) and the directory fsynced.
//! A crash leaves either the old or the new segment; a `.cleaned` leftover is deleted on
//! open, and a missing index is rebuilt. Readers that hold the old segment keep reading the
//! old (unlinked) file.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::batch::{self, BatchHeader, Records};
use crate::error::LogError;
use crate::partition::{Shared, decompression_limit};
use crate::segment::{self, Segment};

/// What a compaction pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionOutcome {
    pub segments_rewritten: usize,
    pub records_removed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

struct Decision<'a> {
    latest: &'a HashMap<Vec<u8>, u64>,
    now_ms: i64,
    delete_retention_ms: i64,
}

impl Decision<'_> {
    fn keep(&self, offset: u64, timestamp: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> bool {
        let Some(key) = key else { return true };
        if self.latest.get(key) != Some(&offset) {
            return false;
        }
        let tombstone_expired =
            value.is_none() && self.now_ms.saturating_sub(timestamp) >= self.delete_retention_ms;
        !tombstone_expired
    }
}

fn record_timestamp(header: &BatchHeader, timestamp_delta: i64) -> i64 {
    if header.is_log_append_time() {
        header.max_timestamp
    } else {
        header.base_timestamp.saturating_add(timestamp_delta)
    }
}

pub(crate) fn compact(shared: &Shared, now_ms: i64) -> Result<CompactionOutcome, LogError> {
    let _maintenance = shared.maintenance.lock().unwrap_or_else(|e| e.into_inner());
    let config = shared.config();
    let mut outcome = CompactionOutcome::default();
    if !config.cleanup_policy.compact || shared.is_closing() {
        return Ok(outcome);
    }
    let (list, _) = shared.snapshot();
    let lag_horizon = now_ms.saturating_sub(config.min_compaction_lag_ms as i64);
    // Never the active segment, and never records readers cannot see yet.
    let high_watermark = shared.high_watermark();
    let cleanable: Vec<Arc<Segment>> = list
        .iter()
        .take(list.len().saturating_sub(1))
        .take_while(|s| s.next_offset() <= high_watermark)
        .take_while(|s| config.min_compaction_lag_ms == 0 || s.max_timestamp() <= lag_horizon)
        .cloned()
        .collect();
    if cleanable.is_empty() {
        return Ok(outcome);
    }
    let limit = decompression_limit(&config);

    let mut latest: HashMap<Vec<u8>, u64> = HashMap::new();
    for segment in &cleanable {
        segment.for_each_batch(0, |position, bytes, header| {
            if header.is_control() {
                return Ok(true);
            }
            let section =
                batch::records_section(bytes, limit).map_err(|e| corrupt(segment, position, e))?;
            for record in Records::new(&section, header.records_count) {
                let record = record.map_err(|e| corrupt(segment, position, e))?;
                if let Some(key) = record.key {
                    let offset = record_offset(header, record.offset_delta)
                        .map_err(|e| corrupt(segment, position, e))?;
                    match latest.get_mut(key) {
                        Some(existing) => *existing = offset,
                        None => {
                            latest.insert(key.to_vec(), offset);
                        }
                    }
                }
            }
            Ok(true)
        })?;
    }

    let decision = Decision {
        latest: &latest,
        now_ms,
        delete_retention_ms: config.delete_retention_ms.min(i64::MAX as u64) as i64,
    };
    for segment in &cleanable {
        if let Some((cleaned, removed)) = rewrite(shared, segment, &decision, limit)? {
            outcome.segments_rewritten += 1;
            outcome.records_removed += removed;
            outcome.bytes_before += segment.size();
            outcome.bytes_after += cleaned.size();
        }
    }
    if outcome.segments_rewritten > 0 {
        tracing::info!(partition = %shared.dir.display(), segments = outcome.segments_rewritten, records_removed = outcome.records_removed, bytes_before = outcome.bytes_before, bytes_after = outcome.bytes_after, "compacted");
    }
    Ok(outcome)
}

/// A record's offset, refusing a delta outside its batch.
fn record_offset(header: &BatchHeader, offset_delta: i32) -> Result<u64, batch::BatchError> {
    if offset_delta < 0 || offset_delta > header.last_offset_delta {
        return Err(batch::BatchError::MalformedRecord(format!(
            "offset delta {offset_delta} outside the batch"
        )));
    }
    Ok(header.base_offset.saturating_add(i64::from(offset_delta)) as u64)
}

fn corrupt(segment: &Segment, position: u64, error: batch::BatchError) -> LogError {
    LogError::CorruptSegment {
        path: segment.log_path(),
        position,
        reason: error.to_string(),
    }
}

/// Checks a rewritten segment before it replaces the original: whole valid batches with
/// increasing offsets inside the original's range.
fn check_rewritten(output: &[u8], original: &Segment) -> Result<(), String> {
    let mut previous_last = original.base_offset as i64 - 1;
    let mut end = 0usize;
    for (at, header) in batch::batch_positions(output) {
        let len = header.total_len() as usize;
        batch::validate(&output[at..at + len]).map_err(|e| e.to_string())?;
        if header.base_offset <= previous_last
            || header.last_offset() >= original.next_offset() as i64
        {
            return Err(format!("batch at byte {at} has offsets out of order"));
        }
        previous_last = header.last_offset();
        end = at + len;
    }
    if end != output.len() {
        return Err(format!(
            "{} bytes after the last whole batch",
            output.len() - end
        ));
    }
    Ok(())
}

/// Rewrites one segment without the records `decision` drops; `None` if it loses nothing.
fn rewrite(
    shared: &Shared,
    segment: &Arc<Segment>,
    decision: &Decision,
    limit: usize,
) -> Result<Option<(Arc<Segment>, u64)>, LogError> {
    let mut output = Vec::with_capacity(segment.size() as usize);
    let mut removed = 0u64;
    let mut kept_records = Vec::new();
    segment.for_each_batch(0, |position, bytes, header| {
        if header.is_control() {
            output.extend_from_slice(bytes);
            return Ok(true);
        }
        let section =
            batch::records_section(bytes, limit).map_err(|e| corrupt(segment, position, e))?;
        kept_records.clear();
        let mut kept = 0i32;
        for record in Records::new(&section, header.records_count) {
            let record = record.map_err(|e| corrupt(segment, position, e))?;
            let offset = record_offset(header, record.offset_delta)
                .map_err(|e| corrupt(segment, position, e))?;
            let timestamp = record_timestamp(header, record.timestamp_delta);
            if decision.keep(offset, timestamp, record.key, record.value) {
                kept_records.extend_from_slice(record.encoded);
                kept += 1;
            }
        }
        removed += (header.records_count - kept) as u64;
        if kept == header.records_count {
            output.extend_from_slice(bytes);
        } else if kept > 0 {
            let fields = BatchHeader {
                records_count: kept,
                ..*header
            };
            let rebuilt = batch::assemble(&fields, &kept_records)
                .map_err(|e| corrupt(segment, position, e))?;
            output.extend_from_slice(&rebuilt);
        }
        Ok(true)
    })?;
    if removed == 0 {
        return Ok(None);
    }

    let dir = &shared.dir;
    let final_path = segment.log_path();
    let cleaned_path = final_path.with_extension("log.cleaned");
    let write = || -> std::io::Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&cleaned_path)?;
        file.write_all_at(&output, 0)?;
        file.sync_all()
    };
    // Nothing is replaced until the new contents are known to be sound.
    check_rewritten(&output, segment).map_err(|reason| LogError::CorruptSegment {
        path: cleaned_path.clone(),
        position: 0,
        reason: format!("compaction produced a bad segment, the original is kept: {reason}"),
    })?;
    write().map_err(|source| LogError::io(format!("write {}", cleaned_path.display()), source))?;
    segment.remove_index_files()?;
    segment::sync_dir(dir)
        .map_err(|source| LogError::io(format!("fsync {}", dir.display()), source))?;
    std::fs::rename(&cleaned_path, &final_path)
        .map_err(|source| LogError::io(format!("rename {}", cleaned_path.display()), source))?;
    segment::sync_dir(dir)
        .map_err(|source| LogError::io(format!("fsync {}", dir.display()), source))?;
    let config = shared.config();
    let (cleaned, _) = Segment::open(dir, segment.base_offset, false, config.index_interval_bytes)?;
    let cleaned = Arc::new(cleaned);
    let mut segments = shared.segments.write().unwrap_or_else(|e| e.into_inner());
    if let Some(slot) = segments.list.iter_mut().find(|s| Arc::ptr_eq(s, segment)) {
        *slot = cleaned.clone();
    }
    Ok(Some((cleaned, removed)))
}
