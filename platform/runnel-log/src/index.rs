//! The sparse indexes of a segment: offset -> file position, and timestamp -> offset.
//!
//! On disk, next to `<base>.log`, like Kafka:
//! - `<base>.index`: 8-byte entries, big-endian `relative offset u32, position u32`, one per
//!   `index.interval.bytes` of batches, pointing at the start of a batch (its base offset).
//! - `<base>.timeindex`: 12-byte entries, big-endian `timestamp i64, relative offset u32`:
//!   the largest batch timestamp seen up to and including the batch at that offset, added
//!   with an offset entry whenever that maximum grew.
//!
//! The active segment's indexes live in memory and are written when the segment is sealed
//! or the log is closed cleanly. The offset index written then ends with an *end entry*
//! (next offset and file size, the position's top bit set, which no real position has since
//! segments stay below 2 GiB), so a sealed segment cut short at a batch boundary is noticed. An index file is only a hint: [`SegmentIndex::decode`]
//! refuses anything inconsistent, and the segment is then scanned to rebuild it.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct SegmentIndex {
    pub offsets: Vec<OffsetEntry>,
    pub times: Vec<TimeEntry>,
    bytes_since_entry: u64,
    /// The largest batch timestamp seen so far, what the next time entry records.
    max_timestamp_so_far: i64,
}

impl Default for SegmentIndex {
    fn default() -> Self {
        SegmentIndex {
            offsets: Vec::new(),
            times: Vec::new(),
            bytes_since_entry: 0,
            max_timestamp_so_far: i64::MIN,
        }
    }
}

pub(crate) const OFFSET_ENTRY_LEN: usize = 8;
const END_ENTRY_FLAG: u32 = 1 << 31;
pub(crate) const TIME_ENTRY_LEN: usize = 12;

impl SegmentIndex {
    /// Records a batch appended at `position`; adds entries every `interval` bytes. A time
    /// entry records the largest timestamp of this and every earlier batch, so that every
    /// batch before it is known to be no newer.
    pub fn on_batch(
        &mut self,
        relative_offset: u32,
        position: u32,
        len: u64,
        max_timestamp: i64,
        interval: u64,
    ) {
        self.max_timestamp_so_far = self.max_timestamp_so_far.max(max_timestamp);
        if self.offsets.is_empty() || self.bytes_since_entry >= interval {
            self.offsets.push(OffsetEntry {
                relative_offset,
                position,
            });
            if self
                .times
                .last()
                .is_none_or(|last| self.max_timestamp_so_far > last.timestamp)
            {
                self.times.push(TimeEntry {
                    timestamp: self.max_timestamp_so_far,
                    relative_offset,
                });
            }
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += len;
    }

    /// The position of the last indexed batch whose base offset is at most `relative_offset`.
    pub fn position_for(&self, relative_offset: u32) -> u32 {
        self.entry_for(relative_offset).map_or(0, |e| e.position)
    }

    /// The last indexed batch whose base offset is at most `relative_offset`.
    pub fn entry_for(&self, relative_offset: u32) -> Option<OffsetEntry> {
        let at = self
            .offsets
            .partition_point(|e| e.relative_offset <= relative_offset);
        at.checked_sub(1).map(|i| self.offsets[i])
    }

    /// A relative offset from which a scan finds the first record at or after `timestamp`:
    /// every batch before it has only older records.
    pub fn scan_start_for_timestamp(&self, timestamp: i64) -> u32 {
        let at = self.times.partition_point(|e| e.timestamp < timestamp);
        if at == 0 {
            0
        } else {
            self.times[at - 1].relative_offset
        }
    }

    /// The offset index file, ending with the end entry if one is given.
    pub fn encode_offsets(&self, end: Option<OffsetEntry>) -> Vec<u8> {
        let mut out = Vec::with_capacity((self.offsets.len() + 1) * OFFSET_ENTRY_LEN);
        for entry in &self.offsets {
            out.extend_from_slice(&entry.relative_offset.to_be_bytes());
            out.extend_from_slice(&entry.position.to_be_bytes());
        }
        if let Some(end) = end {
            out.extend_from_slice(&end.relative_offset.to_be_bytes());
            out.extend_from_slice(&(end.position | END_ENTRY_FLAG).to_be_bytes());
        }
        out
    }

    pub fn encode_times(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.times.len() * TIME_ENTRY_LEN);
        for entry in &self.times {
            out.extend_from_slice(&entry.timestamp.to_be_bytes());
            out.extend_from_slice(&entry.relative_offset.to_be_bytes());
        }
        out
    }

    /// Decodes both files, refusing entries that are not strictly ordered. Returns the end
    /// entry separately (relative next offset, file size) if the file has one. The caller
    /// checks positions against the segment.
    pub fn decode(
        offsets: &[u8],
        times: &[u8],
    ) -> Result<(SegmentIndex, Option<OffsetEntry>), String> {
        if !offsets.len().is_multiple_of(OFFSET_ENTRY_LEN) {
            return Err(format!(
                "offset index of {} bytes is not whole entries",
                offsets.len()
            ));
        }
        if !times.len().is_multiple_of(TIME_ENTRY_LEN) {
            return Err(format!(
                "time index of {} bytes is not whole entries",
                times.len()
            ));
        }
        let mut index = SegmentIndex::default();
        let mut end = None;
        for chunk in offsets.chunks_exact(OFFSET_ENTRY_LEN) {
            let entry = OffsetEntry {
                relative_offset: u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
                position: u32::from_be_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]),
            };
            if end.is_some() {
                return Err("offset index has entries after its end entry".to_string());
            }
            if entry.position & END_ENTRY_FLAG != 0 {
                end = Some(OffsetEntry {
                    relative_offset: entry.relative_offset,
                    position: entry.position & !END_ENTRY_FLAG,
                });
                continue;
            }
            if let Some(last) = index.offsets.last()
                && (entry.relative_offset <= last.relative_offset
                    || entry.position <= last.position)
            {
                return Err("offset index entries are not increasing".to_string());
            }
            if index.offsets.is_empty() && entry.position != 0 {
                return Err("offset index does not start at the first batch".to_string());
            }
            index.offsets.push(entry);
        }
        for chunk in times.chunks_exact(TIME_ENTRY_LEN) {
            let mut timestamp = [0u8; 8];
            timestamp.copy_from_slice(&chunk[..8]);
            let entry = TimeEntry {
                timestamp: i64::from_be_bytes(timestamp),
                relative_offset: u32::from_be_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]),
            };
            if let Some(last) = index.times.last()
                && (entry.timestamp <= last.timestamp
                    || entry.relative_offset < last.relative_offset)
            {
                return Err("time index entries are not increasing".to_string());
            }
            index.times.push(entry);
        }
        if let (Some(end), Some(last)) = (end, index.offsets.last())
            && (end.position <= last.position || end.relative_offset <= last.relative_offset)
        {
            return Err("offset index end entry is before its last entry".to_string());
        }
        Ok((index, end))
    }

    /// Continues indexing after a loaded index whose last offset entry was removed to be
    /// scanned again: the next batch gets an entry, and the running maximum timestamp
    /// continues from the last time entry kept.
    pub fn resume(&mut self) {
        self.bytes_since_entry = u64::MAX;
        self.max_timestamp_so_far = self.times.last().map_or(i64::MIN, |t| t.timestamp);
    }

    /// The largest timestamp recorded, `None` before any batch.
    pub fn max_timestamp(&self) -> Option<i64> {
        (self.max_timestamp_so_far != i64::MIN).then_some(self.max_timestamp_so_far)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_entries_carry_the_running_maximum() {
        let mut index = SegmentIndex::default();
        // Indexed, not indexed (interval 150 with 100-byte batches), indexed.
        index.on_batch(0, 0, 100, 100, 150);
        index.on_batch(1, 100, 100, 500, 150);
        index.on_batch(2, 200, 100, 200, 150);
        assert_eq!(index.offsets.len(), 2);
        assert_eq!(
            index.times.last(),
            Some(&TimeEntry {
                timestamp: 500,
                relative_offset: 2
            })
        );
        // A lookup for 300 must not start after the batch holding 500.
        assert_eq!(index.scan_start_for_timestamp(300), 0);
        assert_eq!(index.max_timestamp(), Some(500));
    }

    #[test]
    fn lookups_find_the_entry_at_or_before() {
        let mut index = SegmentIndex::default();
        for i in 0..10u32 {
            index.on_batch(i * 10, i * 100, 100, i64::from(i) * 5, 250);
        }
        // interval 250 with 100-byte batches: entries at batches 0, 3, 6, 9
        assert_eq!(index.offsets.len(), 4);
        assert_eq!(index.position_for(0), 0);
        assert_eq!(index.position_for(35), 300);
        assert_eq!(index.position_for(95), 900);
        assert_eq!(index.scan_start_for_timestamp(0), 0);
        assert_eq!(index.scan_start_for_timestamp(31), 60);
        assert_eq!(index.scan_start_for_timestamp(30), 30);
        let end = OffsetEntry {
            relative_offset: 100,
            position: 1000,
        };
        let (decoded, decoded_end) =
            SegmentIndex::decode(&index.encode_offsets(Some(end)), &index.encode_times()).unwrap();
        assert_eq!(decoded.offsets, index.offsets);
        assert_eq!(decoded.times, index.times);
        assert_eq!(decoded_end, Some(end));
        let (_, no_end) =
            SegmentIndex::decode(&index.encode_offsets(None), &index.encode_times()).unwrap();
        assert_eq!(no_end, None);
        assert!(SegmentIndex::decode(&index.encode_offsets(None)[..7], &[]).is_err());
    }
}
