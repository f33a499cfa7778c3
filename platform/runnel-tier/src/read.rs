//! Reading tiered records: the remote half of a partition's log, for fetches below the
//! local log start.
//!
//! A read finds the manifest's file holding the offset, the file's footer (cached in
//! memory), and the one row group holding the offset by its offset statistics; it fetches
//! only that row group's bytes (one ranged GET), rebuilds its record batches and keeps them
//! in memory (the recent ones); the fetched bytes go to a disk cache under a size cap, so a
//! group read again later is rebuilt without the store. The first read of a group starts
//! rebuilding the next ones (a read of a group not yet on its way starts the next one with
//! its own), so a consumer reading on finds them ready and the rebuilds use every core.
//! Row groups end on batch boundaries (see [`crate::columnar`]), so a rebuilt group is
//! whole batches.
//!
//! # Failure behaviour
//! A store error, a truncated body or a file that does not rebuild into the offsets its
//! statistics promise fails the read with a retriable [`LogError::Remote`]; nothing
//! rebuilt from it is kept (bytes from the disk cache that fail are dropped from it), and
//! no partial or guessed records are returned.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::file::metadata::ParquetMetaDataReader;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::statistics::Statistics;
use runnel_log::batch::{batch_positions, first_at_or_after};
use runnel_log::{LogError, RemoteFind, RemoteLog, RemoteRead};
use tokio::sync::OnceCell;

use crate::manifest::{Manifest, RemoteSegment};
use crate::{TierError, columnar, rebuild};

/// Footers kept in memory at most (a few KiB each).
const MAX_FOOTERS: usize = 1024;
/// Bytes fetched from a file's end to find its footer, which usually fits.
const FOOTER_GUESS: u64 = 64 << 10;
/// Rebuilt row groups kept in memory at most, in bytes of the buffers holding them: the
/// groups consumers are reading and the ones read ahead of them.
const MEMORY_CAP: u64 = 128 << 20;
/// Row groups rebuilt ahead of a reader, each on its own blocking thread: more than the
/// two cores of a small node, so a core that finishes a group finds the next one queued.
const READ_AHEAD: usize = 3;
/// The most room reserved up front for a rebuilt row group, whatever its footer claims.
const MAX_GROUP_GUESS: usize = 256 << 20;
/// Bytes reserved per record beyond its uncompressed columns when a group is rebuilt: the
/// record's length, attributes, deltas and header count as varints, with room to spare.
const RECORD_FRAMING: usize = 32;
/// Bytes of buffers of evicted groups kept for reuse at most: room for the buffers of all
/// the groups in memory, so emptying the cache gives none of its memory back.
const SPARE_CAP: usize = MEMORY_CAP as usize;
/// Spare buffers kept at most, however small: finding one scans them all.
const MAX_SPARES: usize = 32;
/// Rebuild buffers are allocated in multiples of this, so one fits the next group.
const BUFFER_STEP: usize = 4 << 20;

/// Counters of the reads, for `/metrics`.
#[derive(Debug, Default)]
pub struct ReadMetrics {
    pub reads: AtomicU64,
    pub read_errors: AtomicU64,
    /// Row groups served without rebuilding them (from memory or the disk cache).
    pub cache_hits: AtomicU64,
    /// Row groups fetched and rebuilt, by reads and by read-ahead.
    pub cache_misses: AtomicU64,
    /// Bytes fetched from the store for row groups.
    pub fetched_bytes: AtomicU64,
    /// Bytes in the disk cache.
    pub cache_bytes: AtomicU64,
}

/// The row groups read from the tier: the recently rebuilt ones in memory, their fetched
/// bytes on local disk under a size cap; and file footers in memory. A group being rebuilt
/// is rebuilt once, however many readers (and read-aheads) ask for it meanwhile.
pub struct TierCache {
    dir: PathBuf,
    state: Mutex<CacheState>,
    footers: Mutex<HashMap<String, ArrowReaderMetadata>>,
    loading: Mutex<HashMap<String, Arc<OnceCell<Bytes>>>>,
    /// Buffers of evicted groups, for the next rebuilds.
    spare: Mutex<Vec<BytesMut>>,
    metrics: Arc<ReadMetrics>,
}

struct CacheState {
    /// Entries on disk, by file name.
    disk: Lru<()>,
    /// Entries in memory; `true` until a read has used one (a read-ahead's result).
    memory: Lru<(Bytes, bool)>,
    /// How many times the cache was emptied: a write to disk begun before is dropped.
    generation: u64,
}

/// Named entries under a byte cap, the least recently used evicted first.
struct Lru<V> {
    cap: u64,
    entries: HashMap<String, (V, u64, u64)>,
    total: u64,
    clock: u64,
}

impl<V> Lru<V> {
    fn new(cap: u64) -> Lru<V> {
        Lru {
            cap,
            entries: HashMap::new(),
            total: 0,
            clock: 0,
        }
    }

    /// The entry, marked as used now.
    fn touch(&mut self, name: &str) -> Option<&mut V> {
        self.clock += 1;
        let clock = self.clock;
        let (value, _, used) = self.entries.get_mut(name)?;
        *used = clock;
        Some(value)
    }

    /// Inserts an entry of `size` bytes; the entries evicted to make room. An entry larger
    /// than the cap is not kept.
    fn insert(&mut self, name: &str, value: V, size: u64) -> Vec<(String, V)> {
        if size > self.cap {
            return Vec::new();
        }
        self.remove(name);
        self.clock += 1;
        self.entries
            .insert(name.to_string(), (value, size, self.clock));
        self.total += size;
        let mut evicted = Vec::new();
        while self.total > self.cap {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(name, _)| name.clone())
            else {
                break;
            };
            if let Some(value) = self.remove(&oldest) {
                evicted.push((oldest, value));
            }
        }
        evicted
    }

    fn remove(&mut self, name: &str) -> Option<V> {
        let (value, size, _) = self.entries.remove(name)?;
        self.total -= size;
        Some(value)
    }

    /// Every entry, removed.
    fn drain(&mut self) -> Vec<(String, V)> {
        self.total = 0;
        self.entries
            .drain()
            .map(|(name, (value, _, _))| (name, value))
            .collect()
    }
}

impl TierCache {
    /// A cache in `dir` holding at most `cap` bytes on disk (and [`MEMORY_CAP`] of rebuilt
    /// groups in memory). What an earlier run left there is removed: entries are cheap to
    /// fetch again and their bookkeeping is not persisted.
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
            state: Mutex::new(CacheState {
                disk: Lru::new(cap),
                memory: Lru::new(MEMORY_CAP),
                generation: 0,
            }),
            footers: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
            spare: Mutex::new(Vec::new()),
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
        format!("{flat}.{group}.chunk")
    }

    /// The entry if it is in memory, and whether this is its first use.
    fn in_memory(&self, name: &str) -> Option<(Bytes, bool)> {
        let mut state = self.state.lock().ok()?;
        let (bytes, fresh) = state.memory.touch(name)?;
        let first = std::mem::replace(fresh, false);
        Some((bytes.clone(), first))
    }

    /// Whether the entry is in memory or being loaded.
    fn is_at_hand(&self, name: &str) -> bool {
        let in_memory = self
            .state
            .lock()
            .is_ok_and(|state| state.memory.entries.contains_key(name));
        in_memory || self.loading.lock().is_ok_and(|l| l.contains_key(name))
    }

    /// The entry from the disk cache.
    async fn read_from_disk(&self, name: &str) -> Option<Bytes> {
        {
            let mut state = self.state.lock().ok()?;
            state.disk.touch(name)?;
        }
        match tokio::fs::read(self.dir.join(name)).await {
            Ok(bytes) => Some(Bytes::from(bytes)),
            Err(_) => {
                self.forget_on_disk(name).await;
                None
            }
        }
    }

    async fn forget_on_disk(&self, name: &str) {
        if let Ok(mut state) = self.state.lock() {
            state.disk.remove(name);
            self.metrics
                .cache_bytes
                .store(state.disk.total, Ordering::Relaxed);
        }
        let _ = tokio::fs::remove_file(self.dir.join(name)).await;
    }

    /// How many times the cache was emptied so far: what was begun before it last was
    /// is not kept.
    fn generation(&self) -> u64 {
        self.state.lock().map_or(u64::MAX, |state| state.generation)
    }

    /// Keeps a rebuilt group in memory, counted as the `held` bytes of its buffer, unless
    /// the cache was emptied since `generation`.
    fn keep_in_memory(&self, name: &str, bytes: &Bytes, held: usize, fresh: bool, generation: u64) {
        let evicted = match self.state.lock() {
            Ok(mut state) if state.generation == generation => {
                state
                    .memory
                    .insert(name, (bytes.clone(), fresh), held as u64)
            }
            _ => return,
        };
        for (_, (bytes, _)) in evicted {
            self.lend(bytes);
        }
    }

    /// Takes the buffer of an evicted group as a spare if nobody reads the group any
    /// more: the next rebuild then writes into pages already mapped. Beyond [`SPARE_CAP`],
    /// the smallest go, as the ones least likely to fit a group.
    fn lend(&self, bytes: Bytes) {
        if let Ok(mut buffer) = bytes.try_into_mut()
            && buffer.capacity() <= SPARE_CAP
            && let Ok(mut spare) = self.spare.lock()
        {
            buffer.clear();
            spare.push(buffer);
            while (spare.len() > MAX_SPARES
                || spare.iter().map(BytesMut::capacity).sum::<usize>() > SPARE_CAP)
                && let Some((smallest, _)) =
                    spare.iter().enumerate().min_by_key(|(_, b)| b.capacity())
            {
                spare.swap_remove(smallest);
            }
        }
    }

    /// Empties the cache, in memory and on disk, as a restart of the node would, but
    /// keeps the rebuild buffers for reuse. The next read of any group is cold again.
    pub async fn clear(&self) {
        let (in_memory, on_disk) = match self.state.lock() {
            Ok(mut state) => {
                state.generation += 1;
                (state.memory.drain(), state.disk.drain())
            }
            Err(_) => return,
        };
        self.metrics.cache_bytes.store(0, Ordering::Relaxed);
        if let Ok(mut footers) = self.footers.lock() {
            footers.clear();
        }
        for (_, (bytes, _)) in in_memory {
            self.lend(bytes);
        }
        for (name, ()) in on_disk {
            let _ = tokio::fs::remove_file(self.dir.join(name)).await;
        }
    }

    /// A buffer with room for a rebuilt group of `bytes`: the smallest spare one that
    /// holds it without being much larger than a new one would be, or a new one; a large
    /// one rounded up to [`BUFFER_STEP`], so that groups of about the same size can pass
    /// their buffers on. A spare is never grown: that would copy it into fresh memory,
    /// costing more than a new buffer. Nor is a large spare spent on a small group: the
    /// next large group would then need fresh memory, and the memory cache, which counts
    /// what groups hold, would hold much more.
    fn buffer(&self, bytes: usize) -> BytesMut {
        let new = if bytes >= BUFFER_STEP {
            bytes.next_multiple_of(BUFFER_STEP)
        } else {
            bytes
        };
        let spare = self.spare.lock().ok().and_then(|mut spare| {
            let fits = spare
                .iter()
                .enumerate()
                .filter(|(_, b)| (bytes..=new + new / 2).contains(&b.capacity()))
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i)?;
            Some(spare.swap_remove(fits))
        });
        spare.unwrap_or_else(|| BytesMut::with_capacity(new))
    }

    /// The fetched bytes `name` from the disk cache if they are there and `len` long, or
    /// from `fetch`; and whether they came from the cache.
    async fn fetched<F>(&self, name: &str, len: u64, fetch: F) -> Result<(Bytes, bool), TierError>
    where
        F: Future<Output = Result<Bytes, TierError>>,
    {
        if let Some(bytes) = self.read_from_disk(name).await
            && bytes.len() as u64 == len
        {
            self.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok((bytes, true));
        }
        self.metrics.cache_misses.fetch_add(1, Ordering::Relaxed);
        let bytes = fetch.await?;
        self.metrics
            .fetched_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok((bytes, false))
    }

    /// Stores an entry on disk (written aside, then renamed), evicting the least recently
    /// used entries beyond the cap, unless the cache was emptied since `generation` (when
    /// the bytes were fetched). A failure to write only means no caching on disk.
    async fn write_to_disk(&self, name: &str, bytes: &Bytes, generation: u64) {
        let size = bytes.len() as u64;
        if self
            .state
            .lock()
            .map_or(true, |state| size > state.disk.cap)
        {
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
            if state.generation == generation {
                let evicted = state.disk.insert(name, (), size);
                self.metrics
                    .cache_bytes
                    .store(state.disk.total, Ordering::Relaxed);
                evicted
            } else if state.disk.entries.contains_key(name) {
                // Emptied meanwhile, and written again since: that file stays.
                Vec::new()
            } else {
                // Emptied meanwhile: this entry goes with the others.
                vec![(name.to_string(), ())]
            }
        };
        for (name, ()) in evicted {
            let _ = tokio::fs::remove_file(self.dir.join(name)).await;
        }
    }

    /// The rebuilt entry `name`: from memory, or made by `rebuild` (the entry and the bytes
    /// its buffer holds) — once, however many callers ask meanwhile — and kept in memory.
    /// `fresh` marks what this call makes as not yet read. The entry, and whether this
    /// call found it in memory used before.
    async fn load<F>(
        self: &Arc<Self>,
        name: &str,
        fresh: bool,
        rebuild: F,
    ) -> Result<(Bytes, bool), TierError>
    where
        F: Future<Output = Result<(Bytes, usize), TierError>>,
    {
        if let Some((bytes, first)) = self.in_memory(name) {
            self.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok((bytes, !first));
        }
        let cell = match self.loading.lock() {
            Ok(mut loading) => loading.entry(name.to_string()).or_default().clone(),
            Err(_) => Arc::new(OnceCell::new()),
        };
        let generation = self.generation();
        let loaded = cell
            .get_or_try_init(|| async move {
                let (rebuilt, held) = rebuild.await?;
                self.keep_in_memory(name, &rebuilt, held, fresh, generation);
                Ok(rebuilt)
            })
            .await
            .cloned();
        if let Ok(mut loading) = self.loading.lock()
            && loading.get(name).is_some_and(|c| Arc::ptr_eq(c, &cell))
        {
            loading.remove(name);
        }
        loaded.map(|bytes| (bytes, false))
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
    /// the row group holding `offset`. The first read of a group starts rebuilding the
    /// next [`READ_AHEAD`] groups, for a consumer reading on.
    pub async fn read(
        &self,
        offset: u64,
        max_bytes: usize,
        at_least_one: bool,
    ) -> Result<Bytes, TierError> {
        let index = self
            .manifest
            .segments
            .iter()
            .position(|s| s.base_offset <= offset && offset <= s.last_offset)
            .ok_or_else(|| TierError::Format(format!("no tiered segment holds offset {offset}")))?;
        let segment = &self.manifest.segments[index];
        let footer = self.cache.footer(&self.store, segment).await?;
        let group = group_holding(&footer, offset).ok_or_else(|| {
            TierError::Format(format!(
                "no row group of {} holds offset {offset}",
                segment.key
            ))
        })?;
        let groups = footer.metadata().num_row_groups();
        // A group neither in memory nor on its way is a cold start: the next group is
        // rebuilt meanwhile, on another core, rather than after it. Only one: a read that
        // does not go on (a seek, a single lookup) then costs one spare rebuild, not three,
        // and its own rebuild keeps a core.
        let cold = !self
            .cache
            .is_at_hand(&TierCache::entry_name(&segment.key, group));
        if cold {
            self.read_ahead(index, groups, group, 1);
        }
        let (batches, used_before) = self.group(index, &footer, group, false).await?;
        if !cold && !used_before {
            self.read_ahead(index, groups, group, READ_AHEAD);
        }
        Ok(slice(&batches, offset, max_bytes, at_least_one))
    }

    /// The rebuilt batches of row group `group` of segment `index`, and whether a read
    /// has used them before.
    async fn group(
        &self,
        index: usize,
        footer: &ArrowReaderMetadata,
        group: usize,
        ahead: bool,
    ) -> Result<(Bytes, bool), TierError> {
        let segment = &self.manifest.segments[index];
        let name = TierCache::entry_name(&segment.key, group);
        self.cache
            .load(&name, ahead, self.rebuild(segment, footer, group))
            .await
    }

    /// Starts rebuilding the `depth` row groups after `group` of segment `index` (which
    /// has `groups` of them), each in its own task, unless they are at hand. A failure
    /// there only means the read that needs the group fetches it again.
    fn read_ahead(&self, index: usize, groups: usize, group: usize, depth: usize) {
        let segments = self.manifest.segments.len();
        for step in 1..=depth {
            let (index, group) = if group + step < groups {
                (index, group + step)
            } else if index + 1 < segments {
                // Into the next file: its groups are counted once its footer is read.
                (index + 1, group + step - groups)
            } else {
                return;
            };
            let reader = self.clone();
            tokio::spawn(async move {
                let segment = &reader.manifest.segments[index];
                let Ok(footer) = reader.cache.footer(&reader.store, segment).await else {
                    return;
                };
                if group >= footer.metadata().num_row_groups()
                    || reader
                        .cache
                        .is_at_hand(&TierCache::entry_name(&segment.key, group))
                {
                    return;
                }
                if let Err(error) = reader.group(index, &footer, group, true).await {
                    tracing::debug!(key = %segment.key, group, %error, "reading ahead failed");
                }
            });
        }
    }

    /// The first record whose timestamp is at least `timestamp`: the files whose newest
    /// record is older are skipped by the manifest, then the row groups by their timestamp
    /// statistics, and the first group that may hold one is read (through the cache) and
    /// searched.
    pub async fn find_timestamp(&self, timestamp: i64) -> Result<Option<(u64, i64)>, TierError> {
        for (index, segment) in self.manifest.segments.iter().enumerate() {
            if segment.max_timestamp < timestamp {
                continue;
            }
            let footer = self.cache.footer(&self.store, segment).await?;
            for group in 0..footer.metadata().num_row_groups() {
                if int64_bounds(&footer, group, TIMESTAMP_COLUMN)
                    .is_some_and(|(_, newest)| newest < timestamp)
                {
                    continue;
                }
                let (batches, _) = self.group(index, &footer, group, false).await?;
                for (position, header) in batch_positions(&batches) {
                    let bytes = &batches[position..position + header.total_len() as usize];
                    let found =
                        first_at_or_after(bytes, &header, timestamp, u64::MAX, bytes.len())?;
                    if found.is_some() {
                        return Ok(found);
                    }
                }
            }
        }
        Ok(None)
    }

    /// Counts a failed read or lookup and makes it the log's retriable error.
    fn failed(&self, what: &str, error: TierError) -> LogError {
        self.cache
            .metrics
            .read_errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%error, "{what} in tiered storage failed");
        LogError::Remote(error.to_string())
    }

    /// Fetches one row group and rebuilds its batches, checking they hold exactly the
    /// offsets its statistics say; with them, the bytes their buffer holds (its capacity),
    /// which is what the memory cache counts.
    async fn rebuild(
        &self,
        segment: &RemoteSegment,
        footer: &ArrowReaderMetadata,
        group: usize,
    ) -> Result<(Bytes, usize), TierError> {
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
        let fetch = async {
            let bytes = self.store.get_range(&path, start..end).await?;
            if bytes.len() as u64 != end - start {
                return Err(TierError::Format(format!(
                    "a truncated body: {} of {} bytes of row group {group} of {}",
                    bytes.len(),
                    end - start,
                    segment.key
                )));
            }
            Ok(bytes)
        };
        let name = TierCache::entry_name(&segment.key, group);
        let generation = self.cache.generation();
        let (bytes, from_cache) = self.cache.fetched(&name, end - start, fetch).await?;
        let fetched = bytes.clone();
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
        // Rebuilt batches hold the group's keys, values and headers (most of its
        // uncompressed columns) plus each record's framing; reserving short of that would
        // make the buffer grow once more near the end, copying the whole group.
        let capacity = usize::try_from(metadata.total_byte_size())
            .unwrap_or(0)
            .saturating_add(
                usize::try_from(metadata.num_rows())
                    .unwrap_or(0)
                    .saturating_mul(RECORD_FRAMING),
            );
        let cache = self.cache.clone();
        let rebuilt = tokio::task::spawn_blocking(move || -> Result<(Bytes, usize), TierError> {
            let buffer = cache.buffer(capacity.min(MAX_GROUP_GUESS));
            let batches =
                rebuild::rebuild_row_group(&Arc::new(chunk), footer.metadata(), group, buffer)?;
            check_dense(&batches, low, high)?;
            let held = batches.capacity();
            Ok((batches.freeze(), held))
        })
        .await
        .map_err(|e| TierError::Format(format!("the rebuild thread failed: {e}")))?;
        match (&rebuilt, from_cache) {
            // Fetched bytes that rebuilt go to the disk cache, behind the reader's back.
            (Ok(_), false) => {
                let cache = self.cache.clone();
                tokio::spawn(async move { cache.write_to_disk(&name, &fetched, generation).await });
            }
            // Damaged on local disk: the next try fetches from the store.
            (Err(_), true) => self.cache.forget_on_disk(&name).await,
            _ => {}
        }
        rebuilt
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
                .map_err(|error| reader.failed(&format!("a read from offset {offset}"), error))
        })
    }

    fn find_timestamp(&self, timestamp: i64) -> RemoteFind {
        let reader = self.clone();
        Box::pin(async move {
            reader.find_timestamp(timestamp).await.map_err(|error| {
                reader.failed(&format!("a lookup of timestamp {timestamp}"), error)
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

/// The column of the offsets in a segment file, and of the timestamps.
const OFFSET_COLUMN: usize = 0;
const TIMESTAMP_COLUMN: usize = 1;

/// The smallest and largest value of an Int64 column of a row group, by its statistics.
fn int64_bounds(footer: &ArrowReaderMetadata, group: usize, column: usize) -> Option<(i64, i64)> {
    let group = footer.metadata().row_group(group);
    if column >= group.num_columns() {
        return None;
    }
    match group.column(column).statistics() {
        Some(Statistics::Int64(stats)) => Some((*stats.min_opt()?, *stats.max_opt()?)),
        _ => None,
    }
}

/// The smallest and largest offset of a row group, by its statistics.
fn offset_bounds(footer: &ArrowReaderMetadata, group: usize) -> Option<(u64, u64)> {
    let (low, high) = int64_bounds(footer, group, OFFSET_COLUMN)?;
    Some((u64::try_from(low).ok()?, u64::try_from(high).ok()?))
}

/// The row group whose offsets include `offset`.
fn group_holding(footer: &ArrowReaderMetadata, offset: u64) -> Option<usize> {
    (0..footer.metadata().num_row_groups()).find(|&group| {
        offset_bounds(footer, group).is_some_and(|(low, high)| low <= offset && offset <= high)
    })
}

/// Checks that rebuilt batches hold the dense run of offsets `low..=high`, and nothing else.
fn check_dense(batches: &[u8], low: u64, high: u64) -> Result<(), TierError> {
    let mut next = low;
    let mut end = 0;
    for (position, header) in batch_positions(batches) {
        end = position + header.total_len() as usize;
        let records = i64::from(header.records_count);
        if header.base_offset as u64 != next || records != i64::from(header.last_offset_delta) + 1 {
            return Err(TierError::Format(format!(
                "rebuilt batch at {} does not follow offset {next} densely",
                header.base_offset
            )));
        }
        next = header.last_offset() as u64 + 1;
    }
    if next != high + 1 || end != batches.len() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use object_store::memory::InMemory;
    use runnel_log::batch::{stamp_offsets, visit_records};
    use runnel_log::{BatchBuilder, NewRecord};

    /// A segment of `records` records from `base` in batches of 500, record `i` with the
    /// timestamp `1_000 + i` and the value `v<i>`.
    fn segment(base: u64, records: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut offset = base;
        while offset < base + records {
            let count = 500.min(base + records - offset);
            let batch: Vec<NewRecord> = (offset..offset + count)
                .map(|i| NewRecord {
                    timestamp: 1_000 + i as i64,
                    key: Some(format!("k{i}").into_bytes()),
                    value: Some(format!("v{i}").into_bytes()),
                    headers: vec![("h".to_string(), Some(b"x".to_vec()))],
                })
                .collect();
            let mut bytes = BatchBuilder::default().build(&batch).unwrap();
            stamp_offsets(&mut bytes, offset as i64, 0);
            out.extend_from_slice(&bytes);
            offset += count;
        }
        out
    }

    /// Two tiered files of 40,000 records each (three row groups apiece) in a store.
    async fn two_files(dir: &std::path::Path) -> (TierReader, Arc<ReadMetrics>) {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let mut manifest = Manifest::empty("t", 0, None);
        for (index, base) in [0u64, 40_000].into_iter().enumerate() {
            let encoded = columnar::encode(&segment(base, 40_000)).unwrap();
            let key = format!("t/{index}.parquet");
            let size = encoded.parquet.len() as u64;
            store
                .put(&ObjectPath::from(key.as_str()), encoded.parquet.into())
                .await
                .unwrap();
            manifest.segments.push(RemoteSegment {
                base_offset: base,
                last_offset: base + 39_999,
                leader_epoch: 0,
                key,
                size,
                segment_size: 0,
                records: 40_000,
                max_timestamp: encoded.max_timestamp,
            });
        }
        manifest.end = 80_000;
        let metrics = Arc::new(ReadMetrics::default());
        let cache = TierCache::open(dir.join("cache"), 1 << 30, metrics.clone()).unwrap();
        let reader = TierReader::new(store, Arc::new(manifest), Arc::new(cache));
        (reader, metrics)
    }

    #[tokio::test]
    async fn a_reader_from_offset_0_gets_every_record_and_each_group_is_rebuilt_once() {
        let dir = tempfile::tempdir().unwrap();
        let (reader, metrics) = two_files(dir.path()).await;
        let mut next = 0u64;
        while next < 80_000 {
            let read = reader.read(next, 64 << 10, true).await.unwrap();
            let from = next;
            visit_records(&read, from, 1 << 30, |record| {
                assert_eq!(record.offset, next, "dense, in order");
                assert_eq!(record.value, Some(format!("v{next}").as_bytes()));
                assert_eq!(record.timestamp, 1_000 + next as i64);
                assert_eq!(record.headers, vec![("h", Some(&b"x"[..]))]);
                next += 1;
                true
            })
            .unwrap();
            assert!(next > from, "a read from {from} made no progress");
        }
        // Read-ahead and the reader asked for the same groups; each was fetched once.
        let groups = 2 * 40_000usize.div_ceil(columnar::ROW_GROUP_ROWS) as u64;
        assert_eq!(metrics.cache_misses.load(Ordering::Relaxed), groups);
        // The fetched bytes reach the disk cache behind the reader.
        for _ in 0..100 {
            if metrics.cache_bytes.load(Ordering::Relaxed) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(metrics.cache_bytes.load(Ordering::Relaxed) > 0);

        // Emptied, the cache keeps the groups' buffers but no group: a read is cold again.
        reader.cache.clear().await;
        assert_eq!(metrics.cache_bytes.load(Ordering::Relaxed), 0);
        assert!(!reader.cache.spare.lock().unwrap().is_empty());
        let read = reader.read(0, 64 << 10, true).await.unwrap();
        assert!(!read.is_empty());
        assert!(metrics.cache_misses.load(Ordering::Relaxed) > groups);
    }

    #[tokio::test]
    async fn timestamps_are_found_in_the_right_file_and_row_group() {
        let dir = tempfile::tempdir().unwrap();
        let (reader, _) = two_files(dir.path()).await;
        assert_eq!(reader.find_timestamp(0).await.unwrap(), Some((0, 1_000)));
        assert_eq!(
            reader.find_timestamp(1_000 + 57_321).await.unwrap(),
            Some((57_321, 1_000 + 57_321))
        );
        assert_eq!(
            reader.find_timestamp(1_000 + 79_999).await.unwrap(),
            Some((79_999, 1_000 + 79_999))
        );
        assert_eq!(reader.find_timestamp(1_000 + 80_000).await.unwrap(), None);
    }

    #[test]
    fn rebuild_buffers_are_reused_only_where_they_fit_and_the_largest_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache =
            TierCache::open(dir.path().join("c"), 0, Arc::new(ReadMetrics::default())).unwrap();
        let spare_capacities = |cache: &TierCache| {
            let mut capacities: Vec<usize> = cache
                .spare
                .lock()
                .unwrap()
                .iter()
                .map(|b| b.capacity())
                .collect();
            capacities.sort();
            capacities
        };
        cache
            .spare
            .lock()
            .unwrap()
            .push(BytesMut::with_capacity(BUFFER_STEP));
        let fresh = cache.buffer(BUFFER_STEP + 1);
        assert_eq!(
            fresh.capacity(),
            2 * BUFFER_STEP,
            "a new buffer, in whole steps"
        );
        assert_eq!(
            spare_capacities(&cache),
            [BUFFER_STEP],
            "a short spare is left alone"
        );
        let small = cache.buffer(1000);
        assert_eq!(
            small.capacity(),
            1000,
            "a small group is not given a large spare"
        );
        assert_eq!(spare_capacities(&cache), [BUFFER_STEP]);
        let reused = cache.buffer(BUFFER_STEP - 1000);
        assert_eq!(reused.capacity(), BUFFER_STEP);
        assert!(spare_capacities(&cache).is_empty());

        // Evicted groups lend their buffers, unless still read; beyond SPARE_CAP the
        // smallest go.
        let read = Bytes::from(vec![0u8; 8 << 20]);
        let _reader = read.clone();
        cache.lend(read);
        let step = SPARE_CAP / 4;
        for size in [3 * step / 4, step / 2, step, step / 4, step, step] {
            let mut buffer = BytesMut::with_capacity(size);
            buffer.extend_from_slice(b"records");
            cache.lend(buffer.freeze());
        }
        assert_eq!(
            spare_capacities(&cache),
            [3 * step / 4, step, step, step],
            "the largest that fit under the cap"
        );
        assert!(cache.buffer(1).is_empty(), "a spare is handed out cleared");

        // A buffer larger than the whole pool is not kept, and does not empty it.
        let before = spare_capacities(&cache);
        cache.lend(BytesMut::with_capacity(SPARE_CAP + 1).freeze());
        assert_eq!(spare_capacities(&cache), before);
        // Nor are more than MAX_SPARES kept, however small.
        for _ in 0..2 * MAX_SPARES {
            cache.lend(BytesMut::with_capacity(64).freeze());
        }
        assert_eq!(spare_capacities(&cache).len(), MAX_SPARES);
    }
}
