//! Reading tiered records: the remote half of a partition's log, for fetches below the
//! local log start.
//!
//! A read finds the manifest's file holding the offset, the file's footer (cached in
//! memory), and the one row group holding the offset by its offset statistics; it fetches
//! only that row group's bytes (one ranged GET), rebuilds its record batches and keeps them
//! in a disk cache under a size cap, least recently used out first. Row groups end on batch
//! boundaries (see [`crate::columnar`]), so a rebuilt group is whole batches.
//!
//! # Failure behaviour
//! A store error, a truncated body or a file that does not rebuild into the offsets its
//! statistics promise fails the read with a retriable [`LogError::Remote`]; nothing is
//! cached from it, and no partial or guessed records are returned.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::file::metadata::ParquetMetaDataReader;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::statistics::Statistics;
use runnel_log::batch::batch_positions;
use runnel_log::{LogError, RemoteLog, RemoteRead};

use crate::manifest::{Manifest, RemoteSegment};
use crate::{TierError, columnar};

/// Footers kept in memory at most (a few KiB each).
const MAX_FOOTERS: usize = 1024;
/// Bytes fetched from a file's end to find its footer, which usually fits.
const FOOTER_GUESS: u64 = 64 << 10;

/// Counters of the reads, for `/metrics`.
#[derive(Debug, Default)]
pub struct ReadMetrics {
    pub reads: AtomicU64,
    pub read_errors: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// Bytes fetched from the store for row groups.
    pub fetched_bytes: AtomicU64,
    pub cache_bytes: AtomicU64,
}

/// Rebuilt row groups on local disk, under a size cap; and file footers in memory.
pub struct TierCache {
    dir: PathBuf,
    cap: u64,
    state: Mutex<CacheState>,
    footers: Mutex<HashMap<String, ArrowReaderMetadata>>,
    metrics: Arc<ReadMetrics>,
}

#[derive(Default)]
struct CacheState {
    /// File name -> (bytes, last use).
    entries: HashMap<String, (u64, u64)>,
    total: u64,
    clock: u64,
}

impl TierCache {
    /// A cache in `dir` holding at most `cap` bytes. What an earlier run left there is
    /// removed: entries are cheap to rebuild and their bookkeeping is not persisted.
    pub fn open(dir: PathBuf, cap: u64, metrics: Arc<ReadMetrics>) -> Result<TierCache, TierError> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| {
                TierError::Format(format!("clear the tier cache {}: {e}", dir.display()))
            })?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| {
            TierError::Format(format!("create the tier cache {}: {e}", dir.display()))
        })?;
        Ok(TierCache {
            dir,
            cap,
            state: Mutex::new(CacheState::default()),
            footers: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    pub fn metrics(&self) -> &Arc<ReadMetrics> {
        &self.metrics
    }

    fn entry_name(key: &str, group: usize) -> String {
        let flat: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{flat}.{group}.batches")
    }

    async fn get(&self, name: &str) -> Option<Bytes> {
        {
            let mut state = self.state.lock().ok()?;
            state.clock += 1;
            let clock = state.clock;
            let entry = state.entries.get_mut(name)?;
            entry.1 = clock;
        }
        match tokio::fs::read(self.dir.join(name)).await {
            Ok(bytes) => Some(Bytes::from(bytes)),
            Err(_) => {
                self.forget(name);
                None
            }
        }
    }

    fn forget(&self, name: &str) {
        if let Ok(mut state) = self.state.lock()
            && let Some((size, _)) = state.entries.remove(name)
        {
            state.total -= size;
            self.metrics
                .cache_bytes
                .store(state.total, Ordering::Relaxed);
        }
    }

    /// Stores an entry (written aside, then renamed), then evicts the least recently used
    /// entries beyond the cap. A failure to write only means no caching.
    async fn put(&self, name: &str, bytes: &Bytes) {
        let size = bytes.len() as u64;
        if size > self.cap {
            return;
        }
        let path = self.dir.join(name);
        let aside = self.dir.join(format!("{name}.tmp"));
        let written = async {
            tokio::fs::write(&aside, bytes).await?;
            tokio::fs::rename(&aside, &path).await
        }
        .await;
        if let Err(error) = written {
            tracing::warn!(%error, entry = name, "cannot write to the tier cache");
            let _ = tokio::fs::remove_file(&aside).await;
            return;
        }
        let evicted = {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            state.clock += 1;
            let clock = state.clock;
            if let Some((old, _)) = state.entries.insert(name.to_string(), (size, clock)) {
                state.total -= old;
            }
            state.total += size;
            let mut evicted = Vec::new();
            while state.total > self.cap {
                let Some(oldest) = state
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(name, _)| name.clone())
                else {
                    break;
                };
                if let Some((size, _)) = state.entries.remove(&oldest) {
                    state.total -= size;
                }
                evicted.push(oldest);
            }
            self.metrics
                .cache_bytes
                .store(state.total, Ordering::Relaxed);
            evicted
        };
        for name in evicted {
            let _ = tokio::fs::remove_file(self.dir.join(name)).await;
        }
    }

    async fn footer(
        &self,
        store: &Arc<dyn ObjectStore>,
        segment: &RemoteSegment,
    ) -> Result<ArrowReaderMetadata, TierError> {
        if let Some(found) = self
            .footers
            .lock()
            .ok()
            .and_then(|f| f.get(&segment.key).cloned())
        {
            return Ok(found);
        }
        let path = ObjectPath::from(segment.key.as_str());
        let size = segment.size;
        if size < 12 {
            return Err(TierError::Format(format!(
                "{} is {size} bytes: too short for a Parquet file",
                segment.key
            )));
        }
        let mut start = size.saturating_sub(FOOTER_GUESS);
        let mut bytes = store.get_range(&path, start..size).await?;
        let tail_len = bytes.len() as u64;
        if tail_len != size - start || &bytes[bytes.len() - 4..] != b"PAR1" {
            return Err(TierError::Format(format!(
                "the footer of {} is truncated or missing",
                segment.key
            )));
        }
        let tail = &bytes[bytes.len() - 8..bytes.len() - 4];
        let metadata_len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
        if metadata_len + 8 > tail_len {
            start = size.checked_sub(metadata_len + 8).ok_or_else(|| {
                TierError::Format(format!(
                    "the footer of {} is longer than the file",
                    segment.key
                ))
            })?;
            bytes = store.get_range(&path, start..size).await?;
        }
        let chunk = Chunk {
            start,
            bytes,
            file_size: size,
        };
        let parsed = ParquetMetaDataReader::new().parse_and_finish(&chunk)?;
        let metadata = ArrowReaderMetadata::try_new(Arc::new(parsed), ArrowReaderOptions::new())?;
        columnar::check_schema(metadata.schema())?;
        if let Ok(mut footers) = self.footers.lock() {
            if footers.len() >= MAX_FOOTERS {
                footers.clear();
            }
            footers.insert(segment.key.clone(), metadata.clone());
        }
        Ok(metadata)
    }
}

/// The remote half of one partition at one manifest version.
#[derive(Clone)]
pub struct TierReader {
    store: Arc<dyn ObjectStore>,
    manifest: Arc<Manifest>,
    cache: Arc<TierCache>,
}

impl TierReader {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        manifest: Arc<Manifest>,
        cache: Arc<TierCache>,
    ) -> TierReader {
        TierReader {
            store,
            manifest,
            cache,
        }
    }

    /// Whole batches from the one holding `offset`, about `max_bytes` of them, all from
    /// the row group holding `offset`.
    pub async fn read(
        &self,
        offset: u64,
        max_bytes: usize,
        at_least_one: bool,
    ) -> Result<Bytes, TierError> {
        let segment = self
            .manifest
            .segments
            .iter()
            .find(|s| s.base_offset <= offset && offset <= s.last_offset)
            .ok_or_else(|| TierError::Format(format!("no tiered segment holds offset {offset}")))?;
        let footer = self.cache.footer(&self.store, segment).await?;
        let group = group_holding(&footer, offset).ok_or_else(|| {
            TierError::Format(format!(
                "no row group of {} holds offset {offset}",
                segment.key
            ))
        })?;
        let name = TierCache::entry_name(&segment.key, group);
        let batches = match self.cache.get(&name).await {
            Some(bytes) => {
                self.cache
                    .metrics
                    .cache_hits
                    .fetch_add(1, Ordering::Relaxed);
                bytes
            }
            None => {
                self.cache
                    .metrics
                    .cache_misses
                    .fetch_add(1, Ordering::Relaxed);
                let rebuilt = self.rebuild(segment, &footer, group).await?;
                self.cache.put(&name, &rebuilt).await;
                rebuilt
            }
        };
        Ok(slice(&batches, offset, max_bytes, at_least_one))
    }

    /// Fetches one row group and rebuilds its batches, checking they hold exactly the
    /// offsets its statistics say.
    async fn rebuild(
        &self,
        segment: &RemoteSegment,
        footer: &ArrowReaderMetadata,
        group: usize,
    ) -> Result<Bytes, TierError> {
        let metadata = footer.metadata().row_group(group);
        let (start, end) = metadata
            .columns()
            .iter()
            .map(|c| {
                let (start, length) = c.byte_range();
                (start, start + length)
            })
            .fold((u64::MAX, 0), |(s, e), (cs, ce)| (s.min(cs), e.max(ce)));
        if start >= end || end > segment.size {
            return Err(TierError::Format(format!(
                "row group {group} of {} has no valid byte range",
                segment.key
            )));
        }
        let path = ObjectPath::from(segment.key.as_str());
        let bytes = self.store.get_range(&path, start..end).await?;
        if bytes.len() as u64 != end - start {
            return Err(TierError::Format(format!(
                "a truncated body: {} of {} bytes of row group {group} of {}",
                bytes.len(),
                end - start,
                segment.key
            )));
        }
        self.cache
            .metrics
            .fetched_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let (low, high) = offset_bounds(footer, group).ok_or_else(|| {
            TierError::Format(format!(
                "row group {group} of {} has no offset statistics",
                segment.key
            ))
        })?;
        let chunk = Chunk {
            start,
            bytes,
            file_size: segment.size,
        };
        let footer = footer.clone();
        tokio::task::spawn_blocking(move || -> Result<Bytes, TierError> {
            let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(chunk, footer)
                .with_row_groups(vec![group])
                .build()?;
            let mut rebuilt = columnar::Rebuilder::default();
            for batch in reader {
                rebuilt.add(&batch?, 0, usize::MAX)?;
            }
            let batches = rebuilt.finish()?;
            check_dense(&batches, low, high)?;
            let mut joined = Vec::with_capacity(batches.iter().map(|b| b.len()).sum());
            for batch in &batches {
                joined.extend_from_slice(batch);
            }
            Ok(Bytes::from(joined))
        })
        .await
        .map_err(|e| TierError::Format(format!("the rebuild thread failed: {e}")))?
    }
}

impl RemoteLog for TierReader {
    fn read(&self, offset: u64, max_bytes: usize, at_least_one: bool) -> RemoteRead {
        let reader = self.clone();
        Box::pin(async move {
            reader.cache.metrics.reads.fetch_add(1, Ordering::Relaxed);
            reader
                .read(offset, max_bytes, at_least_one)
                .await
                .map_err(|error| {
                    reader
                        .cache
                        .metrics
                        .read_errors
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(offset, %error, "a read from tiered storage failed");
                    LogError::Remote(error.to_string())
                })
        })
    }
}

/// One fetched byte range of a file, served to the Parquet reader at its file positions.
struct Chunk {
    start: u64,
    bytes: Bytes,
    file_size: u64,
}

impl Length for Chunk {
    fn len(&self) -> u64 {
        self.file_size
    }
}

impl ChunkReader for Chunk {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        use bytes::Buf as _;
        let end = self.start + self.bytes.len() as u64;
        if start < self.start || start > end {
            return Err(parquet::errors::ParquetError::General(format!(
                "byte {start} lies outside the fetched range"
            )));
        }
        Ok(self.bytes.slice((start - self.start) as usize..).reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let end = start + length as u64;
        if start < self.start || end > self.start + self.bytes.len() as u64 {
            return Err(parquet::errors::ParquetError::General(format!(
                "bytes {start}..{end} lie outside the fetched range"
            )));
        }
        let from = (start - self.start) as usize;
        Ok(self.bytes.slice(from..from + length))
    }
}

/// The smallest and largest offset of a row group, by its statistics.
fn offset_bounds(footer: &ArrowReaderMetadata, group: usize) -> Option<(u64, u64)> {
    match footer.metadata().row_group(group).column(0).statistics() {
        Some(Statistics::Int64(stats)) => {
            let low = u64::try_from(*stats.min_opt()?).ok()?;
            let high = u64::try_from(*stats.max_opt()?).ok()?;
            Some((low, high))
        }
        _ => None,
    }
}

/// The row group whose offsets include `offset`.
fn group_holding(footer: &ArrowReaderMetadata, offset: u64) -> Option<usize> {
    (0..footer.metadata().num_row_groups()).find(|&group| {
        offset_bounds(footer, group).is_some_and(|(low, high)| low <= offset && offset <= high)
    })
}

/// Checks that rebuilt batches hold the dense run of offsets `low..=high`.
fn check_dense(batches: &[bytes::BytesMut], low: u64, high: u64) -> Result<(), TierError> {
    let mut next = low;
    for batch in batches {
        let header = runnel_log::BatchHeader::parse(batch)?;
        let records = i64::from(header.records_count);
        if header.base_offset as u64 != next || records != i64::from(header.last_offset_delta) + 1 {
            return Err(TierError::Format(format!(
                "rebuilt batch at {} does not follow offset {next} densely",
                header.base_offset
            )));
        }
        next = header.last_offset() as u64 + 1;
    }
    if next != high + 1 {
        return Err(TierError::Format(format!(
            "rebuilt batches end at {next}, the row group at {}",
            high + 1
        )));
    }
    Ok(())
}

/// The batches of `batches` from the one holding `offset`, about `max_bytes` of them.
fn slice(batches: &Bytes, offset: u64, max_bytes: usize, at_least_one: bool) -> Bytes {
    let mut from = None;
    let mut to = 0;
    for (position, header) in batch_positions(batches) {
        if header.last_offset() < offset as i64 {
            continue;
        }
        let end = position + header.total_len() as usize;
        let start = *from.get_or_insert(position);
        if end - start > max_bytes && (to > start || !at_least_one) {
            break;
        }
        to = end;
    }
    match from {
        Some(start) if to > start => batches.slice(start..to),
        _ => Bytes::new(),
    }
}
