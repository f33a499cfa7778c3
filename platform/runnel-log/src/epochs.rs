//! Which leader epoch wrote each run of a partition's offsets (Kafka's leader epoch cache).
//!
//! Every batch carries the epoch of the leader that appended it. The log keeps, for each
//! epoch, the first offset it wrote: `(epoch, start)` pairs, both ascending. A follower that
//! meets a new leader compares its last epoch with the leader's record of that epoch and cuts
//! off whatever the leader does not have (see [`EpochCache::end_offset_for`]).
//!
//! The pairs are kept in `leader-epoch-checkpoint` in the partition directory: a version
//! line (`0`), a count line, then one `epoch start` line per pair. A pair is written
//! (durably) before the first batch of its epoch, so after a crash the file may name an
//! epoch whose batch never landed: pairs starting at or past the log end are dropped on open.

use std::path::Path;

use crate::error::LogError;
use crate::segment::{self, Segment};

const FILE: &str = "leader-epoch-checkpoint";

/// The start offset of each leader epoch found in the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EpochCache {
    entries: Vec<(i32, u64)>,
}

impl EpochCache {
    /// Reads the checkpoint of `dir`, or without one rebuilds it from the batches of
    /// `segments` (a log written before epochs were recorded).
    pub fn load(
        dir: &Path,
        segments: &[std::sync::Arc<Segment>],
        log_end: u64,
    ) -> Result<EpochCache, LogError> {
        let path = dir.join(FILE);
        let mut cache = match std::fs::read_to_string(&path) {
            Ok(text) => parse(&text).ok_or_else(|| LogError::CorruptSegment {
                path: path.clone(),
                position: 0,
                reason: "the leader epoch checkpoint does not parse".to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut cache = EpochCache::default();
                for segment in segments {
                    segment.for_each_batch(0, |_, _, header| {
                        cache.note(header.partition_leader_epoch, header.base_offset as u64);
                        Ok(true)
                    })?;
                }
                if !cache.entries.is_empty() {
                    cache.persist(dir)?;
                }
                return Ok(cache);
            }
            Err(source) => return Err(LogError::io(format!("read {}", path.display()), source)),
        };
        let before = cache.entries.len();
        cache.entries.retain(|(_, start)| *start < log_end);
        if cache.entries.len() != before {
            cache.persist(dir)?;
        }
        Ok(cache)
    }

    /// The newest epoch that wrote anything, if any did.
    pub fn latest(&self) -> Option<i32> {
        self.entries.last().map(|(epoch, _)| *epoch)
    }

    /// Records that `epoch` writes from `start` on, if it is newer than every epoch so far
    /// (an older one changes nothing). Written to disk before the caller appends.
    pub fn assign(&mut self, dir: &Path, epoch: i32, start: u64) -> Result<(), LogError> {
        if self.note(epoch, start) {
            self.persist(dir)?;
        }
        Ok(())
    }

    fn note(&mut self, epoch: i32, start: u64) -> bool {
        if epoch < 0 || self.latest().is_some_and(|latest| latest >= epoch) {
            return false;
        }
        self.entries.push((epoch, start));
        true
    }

    /// Forgets the epochs that start at or after `end` (the log was cut there).
    pub fn truncate_from(&mut self, dir: &Path, end: u64) -> Result<(), LogError> {
        let before = self.entries.len();
        self.entries.retain(|(_, start)| *start < end);
        if self.entries.len() != before {
            self.persist(dir)?;
        }
        Ok(())
    }

    /// Empties the cache (the log was emptied).
    pub fn clear(&mut self, dir: &Path) -> Result<(), LogError> {
        self.truncate_from(dir, 0)
    }

    /// The newest epoch at or below `epoch` and the offset where it ended in this log: the
    /// start of the next epoch, or `log_end` for the newest. `(-1, start)` when the log has no
    /// epoch that old, where `start` is where its first epoch begins (or `log_end`).
    pub fn end_offset_for(&self, epoch: i32, log_end: u64) -> (i32, u64) {
        let after = self.entries.partition_point(|(e, _)| *e <= epoch);
        let end = self.entries.get(after).map_or(log_end, |(_, start)| *start);
        match after.checked_sub(1) {
            Some(found) => (self.entries[found].0, end),
            None => (-1, end),
        }
    }

    fn persist(&self, dir: &Path) -> Result<(), LogError> {
        let mut text = format!("0\n{}\n", self.entries.len());
        for (epoch, start) in &self.entries {
            text.push_str(&format!("{epoch} {start}\n"));
        }
        segment::write_durably(&dir.join(FILE), text.as_bytes())
    }
}

fn parse(text: &str) -> Option<EpochCache> {
    let mut lines = text.lines();
    if lines.next()?.trim() != "0" {
        return None;
    }
    let count: usize = lines.next()?.trim().parse().ok()?;
    let mut entries = Vec::with_capacity(count.min(1 << 16));
    for line in lines.by_ref().take(count) {
        let (epoch, start) = line.trim().split_once(' ')?;
        let pair: (i32, u64) = (epoch.parse().ok()?, start.parse().ok()?);
        if entries
            .last()
            .is_some_and(|&(e, s): &(i32, u64)| e >= pair.0 || s > pair.1)
        {
            return None;
        }
        entries.push(pair);
    }
    if entries.len() != count || lines.any(|l| !l.trim().is_empty()) {
        return None;
    }
    Some(EpochCache { entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, u64)]) -> EpochCache {
        EpochCache {
            entries: entries.to_vec(),
        }
    }

    #[test]
    fn end_offsets_follow_kafka_rules() {
        let epochs = cache(&[(0, 0), (2, 100), (5, 180)]);
        assert_eq!(epochs.end_offset_for(0, 250), (0, 100));
        assert_eq!(
            epochs.end_offset_for(1, 250),
            (0, 100),
            "an epoch never seen"
        );
        assert_eq!(epochs.end_offset_for(2, 250), (2, 180));
        assert_eq!(
            epochs.end_offset_for(5, 250),
            (5, 250),
            "the newest ends at the log end"
        );
        assert_eq!(epochs.end_offset_for(9, 250), (5, 250));
        assert_eq!(cache(&[(3, 40)]).end_offset_for(1, 90), (-1, 40));
        assert_eq!(cache(&[]).end_offset_for(1, 0), (-1, 0));
    }

    #[test]
    fn the_checkpoint_round_trips_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        let mut epochs = EpochCache::default();
        epochs.assign(dir.path(), 0, 0).unwrap();
        epochs.assign(dir.path(), 0, 10).unwrap();
        epochs.assign(dir.path(), 3, 20).unwrap();
        epochs.assign(dir.path(), 2, 30).unwrap();
        assert_eq!(epochs, cache(&[(0, 0), (3, 20)]));
        let loaded = EpochCache::load(dir.path(), &[], 50).unwrap();
        assert_eq!(loaded, epochs);
        // A pair written before a batch that never landed is dropped.
        let loaded = EpochCache::load(dir.path(), &[], 20).unwrap();
        assert_eq!(loaded, cache(&[(0, 0)]));
        assert_eq!(EpochCache::load(dir.path(), &[], 50).unwrap(), loaded);

        for bad in ["1\n0\n", "0\n2\n0 0\n", "0\n2\n3 0\n1 5\n", "0\n1\nx 0\n"] {
            std::fs::write(dir.path().join(FILE), bad).unwrap();
            assert!(EpochCache::load(dir.path(), &[], 50).is_err(), "{bad:?}");
        }
    }
}
