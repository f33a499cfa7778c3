//! Uploading sealed segments: by the partition's leader, each sealed segment whose records
//! are all below the high watermark, in offset order, as one Parquet file; then a new
//! manifest version that lists it.
//!
//! # Failure behaviour
//! A failed upload (the store unreachable, a 5xx, a lost response) leaves the manifest as
//! it was: the partition is tried again after a backoff that doubles up to
//! [`MAX_BACKOFF`], with jitter, and the other partitions go on. A file put without its
//! manifest version is put again under the same key. Local data is never touched here.
//! Compacted topics are not tiered (compaction rewrites sealed segments), nor internal
//! topics (`__…`).
//!
//! # Remote half and retention
//! Each partition's manifest is attached to its log as a [`Remote`] as soon as the
//! partition is seen (every [`ATTACH_INTERVAL`]; a partition opened empty takes no append
//! until then) and again after every change, so fetches below the local log start are
//! served from the files it lists and local retention may delete what it holds. Then
//! `retention.ms` and `retention.bytes`, which span both tiers, drop the oldest remote
//! segments from the manifest (a new version first, the files after). A log start moved by
//! DeleteRecords is recorded in the manifest at the next pass, and the files wholly below
//! it dropped the same way, so records deleted stay deleted when the local data is lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload, WriteMultipart};
use runnel_log::batch::batch_positions;
use runnel_log::{PartitionLog, Remote, SegmentInfo};
use tokio_util::sync::CancellationToken;

use crate::columnar;
use crate::manifest::{Manifest, RemoteSegment};
use crate::read::{TierCache, TierReader};
use crate::{PartitionPaths, TierError};

/// How often the loop looks for segments to upload.
pub const UPLOAD_INTERVAL: Duration = Duration::from_secs(1);
/// How often the loop looks for partitions whose manifest is not attached yet.
pub const ATTACH_INTERVAL: Duration = Duration::from_millis(100);
/// Backoff of a partition whose upload failed: doubling from the first, up to the last.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Bytes read from the log at a time while collecting a segment.
const READ_BYTES: usize = 8 << 20;
/// Files larger than this are uploaded in parts of [`PART_BYTES`], each its own request, so
/// `tier.request_timeout_ms` covers one part rather than a whole file.
const MULTIPART_THRESHOLD: usize = 32 << 20;
const PART_BYTES: usize = 8 << 20;
/// Parts of one file in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

/// A partition this node leads, to upload.
pub struct UploadTarget {
    pub topic: String,
    pub partition: i32,
    pub log: Arc<PartitionLog>,
    pub leader_epoch: i32,
}

/// Counters of the uploads, for `/metrics`.
#[derive(Debug, Default)]
pub struct TierMetrics {
    pub uploads: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    pub uploaded_segment_bytes: AtomicU64,
    pub upload_errors: AtomicU64,
    /// Remote segments dropped by retention.
    pub expired_segments: AtomicU64,
    /// Total time spent in successful uploads, in microseconds.
    pub upload_micros: AtomicU64,
    /// Sealed, committed segments not uploaded yet, at the last pass: count and bytes.
    pub lag_segments: AtomicU64,
    pub lag_bytes: AtomicU64,
    /// The reads' counters, shared with the [`TierCache`].
    pub read: Arc<crate::read::ReadMetrics>,
}

/// A partition's state between passes.
#[derive(Default)]
struct PartitionState {
    manifest: Option<Manifest>,
    failures: u32,
    retry_at: Option<Instant>,
}

/// Uploads the sealed segments of the partitions it is given.
pub struct Uploader {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    metrics: Arc<TierMetrics>,
    cache: Arc<TierCache>,
    partitions: Mutex<HashMap<(String, i32), PartitionState>>,
}

impl Uploader {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        metrics: Arc<TierMetrics>,
        cache: Arc<TierCache>,
    ) -> Uploader {
        Uploader {
            store,
            prefix: prefix.to_string(),
            metrics,
            cache,
            partitions: Mutex::new(HashMap::new()),
        }
    }

    pub fn metrics(&self) -> Arc<TierMetrics> {
        self.metrics.clone()
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn paths(&self, topic: &str, partition: i32) -> PartitionPaths {
        PartitionPaths::new(&self.prefix, topic, partition)
    }

    /// Whether a partition of `topic` is tiered at all.
    pub fn tiers(target: &UploadTarget) -> bool {
        runnel_log::remote::is_tiered(&target.topic, &target.log.config())
    }

    /// Attaches new partitions every [`ATTACH_INTERVAL`] and passes over `targets()` every
    /// [`UPLOAD_INTERVAL`], until `stop`.
    pub async fn run(
        self: Arc<Self>,
        targets: impl Fn() -> Vec<UploadTarget>,
        stop: CancellationToken,
    ) {
        let mut last_pass: Option<Instant> = None;
        while !stop.is_cancelled() {
            let targets = targets();
            self.attach_new(&targets).await;
            if last_pass.is_none_or(|at| at.elapsed() >= UPLOAD_INTERVAL) {
                self.pass(&targets, &stop).await;
                last_pass = Some(Instant::now());
            }
            tokio::select! {
                _ = tokio::time::sleep(ATTACH_INTERVAL) => {}
                _ = stop.cancelled() => {}
            }
        }
    }

    /// Loads and attaches the manifest of every tiered target whose log has none yet.
    pub async fn attach_new(&self, targets: &[UploadTarget]) {
        for target in targets.iter().filter(|t| Self::tiers(t)) {
            if target.log.remote().is_some() {
                continue;
            }
            let key = (target.topic.clone(), target.partition);
            let attached = async {
                let manifest = self.manifest(target, &key).await?;
                self.attach(target, &manifest).await
            }
            .await;
            if let Err(error) = attached {
                self.metrics.upload_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic = %target.topic, partition = target.partition, %error, "loading the tiered storage manifest failed; retrying");
            }
        }
    }

    /// Tells the log what the remote holds at `manifest`.
    async fn attach(&self, target: &UploadTarget, manifest: &Manifest) -> Result<(), TierError> {
        let (start, end) = manifest.served();
        let reader = TierReader::new(
            self.store.clone(),
            Arc::new(manifest.clone()),
            self.cache.clone(),
        );
        target
            .log
            .set_remote(Remote {
                start,
                end,
                reader: Arc::new(reader),
            })
            .await?;
        Ok(())
    }

    /// The partition's manifest: cached, or loaded. A manifest of an earlier topic of the
    /// same name (another topic id) is left behind: a new one starts after its version.
    async fn manifest(
        &self,
        target: &UploadTarget,
        key: &(String, i32),
    ) -> Result<Manifest, TierError> {
        if let Some(manifest) = self.cached_manifest(key) {
            return Ok(manifest);
        }
        let paths = self.paths(&target.topic, target.partition);
        let topic_id = target.log.topic_id();
        let loaded = match Manifest::load(&self.store, &paths).await? {
            Some(found)
                if found.topic_id.is_some() && topic_id.is_some() && found.topic_id != topic_id =>
            {
                tracing::info!(topic = %target.topic, partition = target.partition, "the tiered manifest belongs to an earlier topic of this name; starting a new one");
                Manifest {
                    version: found.version,
                    ..Manifest::empty(&target.topic, target.partition, topic_id)
                }
            }
            Some(found) => found,
            None => Manifest::empty(&target.topic, target.partition, topic_id),
        };
        self.cache_manifest(key, loaded.clone());
        Ok(loaded)
    }

    /// One pass: uploads what is ready in each target not backing off, and updates the
    /// lag gauges.
    pub async fn pass(&self, targets: &[UploadTarget], stop: &CancellationToken) {
        let (mut lag_segments, mut lag_bytes) = (0u64, 0u64);
        for target in targets.iter().filter(|t| Self::tiers(t)) {
            if stop.is_cancelled() {
                return;
            }
            let key = (target.topic.clone(), target.partition);
            let waiting = self
                .partitions
                .lock()
                .ok()
                .and_then(|p| p.get(&key).and_then(|s| s.retry_at))
                .is_some_and(|at| Instant::now() < at);
            if !waiting {
                let passed = async {
                    self.record_deleted_records(target).await?;
                    self.upload_ready(target).await?;
                    self.expire(target, runnel_log::now_ms()).await
                }
                .await;
                match passed {
                    Ok(_) => self.succeeded(&key),
                    Err(error) => {
                        self.metrics.upload_errors.fetch_add(1, Ordering::Relaxed);
                        let backoff = self.failed(&key);
                        tracing::warn!(
                            topic = %target.topic, partition = target.partition, %error,
                            "tiering a segment failed; retrying in {backoff:?}"
                        );
                    }
                }
            }
            let uploaded_end = self.uploaded_end(&key);
            for segment in ready_segments(&target.log, uploaded_end) {
                lag_segments += 1;
                lag_bytes += segment.size;
            }
        }
        self.metrics
            .lag_segments
            .store(lag_segments, Ordering::Relaxed);
        self.metrics.lag_bytes.store(lag_bytes, Ordering::Relaxed);
    }

    fn uploaded_end(&self, key: &(String, i32)) -> u64 {
        self.partitions
            .lock()
            .ok()
            .and_then(|p| {
                p.get(key)
                    .and_then(|s| s.manifest.as_ref().map(Manifest::uploaded_end))
            })
            .unwrap_or(0)
    }

    fn succeeded(&self, key: &(String, i32)) {
        if let Ok(mut partitions) = self.partitions.lock()
            && let Some(state) = partitions.get_mut(key)
        {
            state.failures = 0;
            state.retry_at = None;
        }
    }

    /// Records a failure; the backoff until the next attempt.
    fn failed(&self, key: &(String, i32)) -> Duration {
        let Ok(mut partitions) = self.partitions.lock() else {
            return MAX_BACKOFF;
        };
        let state = partitions.entry(key.clone()).or_default();
        let doubled = FIRST_BACKOFF.saturating_mul(1 << state.failures.min(8));
        state.failures = state.failures.saturating_add(1);
        // Jitter of up to a quarter, so partitions failing together do not retry together.
        let jitter = doubled.mul_f64(0.25 * pseudo_random());
        let backoff = (doubled + jitter).min(MAX_BACKOFF);
        state.retry_at = Some(Instant::now() + backoff);
        // The manifest is loaded again: the failure may have been a lost response.
        state.manifest = None;
        backoff
    }

    /// Uploads every segment of `target` ready to go, in order; how many.
    pub async fn upload_ready(&self, target: &UploadTarget) -> Result<usize, TierError> {
        let key = (target.topic.clone(), target.partition);
        let paths = self.paths(&target.topic, target.partition);
        let mut manifest = self.manifest(target, &key).await?;
        if target.log.remote().is_none() {
            self.attach(target, &manifest).await?;
        }
        let mut uploaded = 0;
        for segment in ready_segments(&target.log, manifest.uploaded_end()) {
            let started = Instant::now();
            let batches = read_segment(&target.log, &segment).await?;
            let encoded = tokio::task::spawn_blocking(move || columnar::encode(&batches))
                .await
                .map_err(|e| TierError::Format(format!("the encoding thread failed: {e}")))??;
            let last = segment.next_offset - 1;
            let object = paths.segment(segment.base_offset, last, target.leader_epoch);
            let size = encoded.parquet.len() as u64;
            put_file(&self.store, &object, encoded.parquet, MULTIPART_THRESHOLD).await?;
            let mut next = manifest.clone();
            next.segments.push(RemoteSegment {
                base_offset: segment.base_offset,
                last_offset: last,
                leader_epoch: target.leader_epoch,
                key: object.to_string(),
                size,
                segment_size: segment.size,
                records: encoded.records,
                max_timestamp: encoded.max_timestamp,
            });
            next.end = last + 1;
            manifest = self.commit_manifest(target, &key, next).await?;
            uploaded += 1;
            self.metrics.uploads.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .uploaded_bytes
                .fetch_add(size, Ordering::Relaxed);
            self.metrics
                .uploaded_segment_bytes
                .fetch_add(segment.size, Ordering::Relaxed);
            self.metrics
                .upload_micros
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            tracing::debug!(topic = %target.topic, partition = target.partition, key = %object, "tiered a segment");
        }
        Ok(uploaded)
    }

    /// Drops the oldest remote segments past `retention.ms`, or beyond `retention.bytes`
    /// counted over both tiers: a new manifest version without them, attached, then their
    /// files deleted (a file left by a failed delete is only unreferenced). How many.
    pub async fn expire(&self, target: &UploadTarget, now_ms: i64) -> Result<usize, TierError> {
        let config = target.log.config();
        if !config.cleanup_policy.delete
            || (config.retention_ms.is_none() && config.retention_bytes.is_none())
        {
            return Ok(0);
        }
        let key = (target.topic.clone(), target.partition);
        let manifest = self.manifest(target, &key).await?;
        let uploaded_end = manifest.uploaded_end();
        let local_only: u64 = target
            .log
            .segments()
            .iter()
            .filter(|s| s.next_offset > uploaded_end)
            .map(|s| s.size)
            .sum();
        let mut total = manifest
            .segments
            .iter()
            .map(|s| s.segment_size)
            .sum::<u64>()
            + local_only;
        let mut expired = 0;
        for segment in &manifest.segments {
            let too_old = config
                .retention_ms
                .is_some_and(|limit| now_ms.saturating_sub(segment.max_timestamp) > limit as i64);
            let too_big = config
                .retention_bytes
                .is_some_and(|limit| total.saturating_sub(segment.segment_size) >= limit);
            if !too_old && !too_big {
                break;
            }
            total -= segment.segment_size;
            expired += 1;
        }
        if expired == 0 {
            return Ok(0);
        }
        let mut next = manifest;
        let dropped: Vec<RemoteSegment> = next.segments.drain(..expired).collect();
        next.end = uploaded_end;
        self.commit_manifest(target, &key, next).await?;
        self.delete_files(&dropped).await;
        self.metrics
            .expired_segments
            .fetch_add(expired as u64, Ordering::Relaxed);
        tracing::info!(topic = %target.topic, partition = target.partition, segments = expired, "tiered segments expired");
        Ok(expired)
    }

    /// Records in the manifest the log start DeleteRecords moved `target` to, if the
    /// manifest does not have it yet, and drops the files wholly below it (a new version
    /// first, the files after). How many files were dropped.
    pub async fn record_deleted_records(&self, target: &UploadTarget) -> Result<usize, TierError> {
        let deleted_below = target.log.deleted_below();
        let key = (target.topic.clone(), target.partition);
        let manifest = self.manifest(target, &key).await?;
        if deleted_below <= manifest.start {
            return Ok(0);
        }
        let mut next = manifest;
        next.end = next.uploaded_end();
        next.start = deleted_below;
        let below = next
            .segments
            .iter()
            .take_while(|s| s.last_offset < deleted_below)
            .count();
        let dropped: Vec<RemoteSegment> = next.segments.drain(..below).collect();
        self.commit_manifest(target, &key, next).await?;
        self.delete_files(&dropped).await;
        tracing::info!(topic = %target.topic, partition = target.partition, log_start = deleted_below, segments = dropped.len(), "deleted records recorded in the tiered manifest");
        Ok(dropped.len())
    }

    /// Deletes the files of segments a committed manifest no longer lists; a file left by
    /// a failed delete is only unreferenced.
    async fn delete_files(&self, dropped: &[RemoteSegment]) {
        for segment in dropped {
            let path = object_store::path::Path::from(segment.key.as_str());
            if let Err(error) = self.store.delete(&path).await {
                tracing::warn!(key = %segment.key, %error, "deleting a dropped tiered segment failed; it is no longer referenced");
            }
        }
    }

    /// Stores `next` as the manifest version after the one it was made from, then caches
    /// and attaches it. A version written meanwhile by another leader fails the commit, and
    /// the manifest is loaded again before the next try.
    async fn commit_manifest(
        &self,
        target: &UploadTarget,
        key: &(String, i32),
        mut next: Manifest,
    ) -> Result<Manifest, TierError> {
        let paths = self.paths(&target.topic, target.partition);
        if next.store_next(&self.store, &paths).await?.is_err() {
            self.forget_manifest(key);
            return Err(TierError::Manifest(format!(
                "version {} of {}-{} was written by another leader",
                next.version + 1,
                target.topic,
                target.partition
            )));
        }
        self.cache_manifest(key, next.clone());
        self.attach(target, &next).await?;
        Ok(next)
    }

    fn cached_manifest(&self, key: &(String, i32)) -> Option<Manifest> {
        self.partitions
            .lock()
            .ok()?
            .get(key)
            .and_then(|s| s.manifest.clone())
    }

    fn cache_manifest(&self, key: &(String, i32), manifest: Manifest) {
        if let Ok(mut partitions) = self.partitions.lock() {
            partitions.entry(key.clone()).or_default().manifest = Some(manifest);
        }
    }

    fn forget_manifest(&self, key: &(String, i32)) {
        if let Ok(mut partitions) = self.partitions.lock()
            && let Some(state) = partitions.get_mut(key)
        {
            state.manifest = None;
        }
    }
}

impl runnel_log::RemoteAttacher for Uploader {
    fn attach<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
        log: &'a Arc<PartitionLog>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), runnel_log::LogError>> + Send + 'a>,
    > {
        Box::pin(async move {
            let target = UploadTarget {
                topic: topic.to_string(),
                partition,
                log: log.clone(),
                leader_epoch: 0,
            };
            let key = (target.topic.clone(), partition);
            let attached = async {
                let manifest = self.manifest(&target, &key).await?;
                self.attach(&target, &manifest).await
            }
            .await;
            attached.map_err(|e| runnel_log::LogError::Remote(e.to_string()))
        })
    }
}

/// The sealed segments holding only committed records after `uploaded_end`, in order.
fn ready_segments(log: &PartitionLog, uploaded_end: u64) -> Vec<SegmentInfo> {
    let high_watermark = log.high_watermark();
    log.segments()
        .into_iter()
        .filter(|s| {
            s.sealed
                && s.next_offset > s.base_offset
                && s.next_offset <= high_watermark
                && s.base_offset >= uploaded_end
        })
        .collect()
}

/// The whole batches of one sealed segment, read through the log.
async fn read_segment(log: &PartitionLog, segment: &SegmentInfo) -> Result<Bytes, TierError> {
    let mut bytes = Vec::with_capacity(segment.size as usize);
    let mut offset = segment.base_offset;
    while offset < segment.next_offset {
        let read = log.read(offset, READ_BYTES).await?;
        if read.records.is_empty() {
            return Err(TierError::Format(format!(
                "the segment at {} ends at {offset}, before its next offset {}",
                segment.base_offset, segment.next_offset
            )));
        }
        let mut taken = 0;
        for (position, header) in batch_positions(&read.records) {
            let last = header.last_offset().max(0) as u64;
            if last >= segment.next_offset {
                break;
            }
            taken = position + header.total_len() as usize;
            offset = last + 1;
        }
        if taken == 0 {
            break;
        }
        bytes.extend_from_slice(&read.records[..taken]);
    }
    Ok(Bytes::from(bytes))
}

/// A number in [0, 1) good enough for jitter, without a dependency.
fn pseudo_random() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(nanos % 1000) / 1000.0
}

/// Puts `bytes` at `path`: in one request up to `threshold` bytes, else as a multipart
/// upload, aborted on failure. Either way the object is visible whole or not at all.
async fn put_file(
    store: &Arc<dyn ObjectStore>,
    path: &object_store::path::Path,
    mut bytes: Bytes,
    threshold: usize,
) -> Result<(), TierError> {
    if bytes.len() <= threshold {
        store.put(path, PutPayload::from(bytes)).await?;
        return Ok(());
    }
    let upload = store.put_multipart(path).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    while !bytes.is_empty() {
        if let Err(error) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
            let _ = writer.abort().await;
            return Err(error.into());
        }
        writer.put(bytes.split_to(PART_BYTES.min(bytes.len())));
    }
    writer.finish().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn a_large_file_is_put_in_parts_and_reads_back_whole() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        // 2.5 parts' worth, so the last part is short.
        let bytes: Bytes = (0..PART_BYTES * 5 / 2).map(|i| (i % 251) as u8).collect();
        for (name, threshold) in [("whole", usize::MAX), ("parts", 1)] {
            let path = object_store::path::Path::from(name);
            put_file(&store, &path, bytes.clone(), threshold)
                .await
                .unwrap();
            let back = store.get(&path).await.unwrap().bytes().await.unwrap();
            assert_eq!(back, bytes, "{name}");
        }
    }
}
