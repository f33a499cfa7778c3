//! The node's partitions: opening them at start, creating and deleting them, the periodic
//! retention and compaction passes, and closing everything cleanly.
//!
//! Layout: `<data dir>/partitions/<topic>-<partition>/` per partition, like Kafka's log
//! directories. A partition that fails to open (a corrupt sealed segment, say) is reported
//! and left offline; the node and every other partition keep running.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use runnel_config::TopicConfig;
use tokio_util::sync::CancellationToken;

use crate::error::LogError;
use crate::metrics::LogMetrics;
use crate::partition::{PartitionLog, now_ms};

/// A topic name and partition number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: u32) -> TopicPartition {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }

    fn dir_name(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }

    /// Parses a directory name `<topic>-<partition>`; topic names may contain `-`.
    fn from_dir_name(name: &str) -> Option<TopicPartition> {
        let (topic, partition) = name.rsplit_once('-')?;
        let parsed = TopicPartition::new(topic, partition.parse().ok()?);
        // "t-01" would parse as partition 1 but is not the directory of t-1.
        (is_safe_topic_name(topic) && parsed.dir_name() == name).then_some(parsed)
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// Kafka's rule for topic names, which also keeps them safe as directory names.
pub fn is_safe_topic_name(topic: &str) -> bool {
    runnel_config::validate_topic_name(topic).is_ok()
}

/// Ends the name of a partition directory being deleted.
const TOMBSTONE_SUFFIX: &str = ".deleted";

/// The least time between two retention passes started by refused appends.
const LOW_DISK_PASS: Duration = Duration::from_secs(1);

/// What one maintenance pass did over all partitions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    pub deleted_segments: usize,
    pub compacted_segments: usize,
    pub failures: usize,
}

/// When the log's maintenance runs, and what it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaintenanceSchedule {
    /// `log.retention_check_interval_ms`: segment.ms rolls, retention, producer expiry.
    pub retention_interval: Duration,
    /// `log.cleaner_interval_ms`: compaction.
    pub cleaner_interval: Duration,
    /// `log.producer_id_expiration_ms`: idempotent producers silent this long are forgotten.
    pub producer_id_expiration: Duration,
}

pub struct LogManager {
    root: PathBuf,
    /// `<data dir>/.lock`: one node per data directory.
    _lock: std::fs::File,
    defaults: TopicConfig,
    partitions: RwLock<BTreeMap<TopicPartition, Arc<PartitionLog>>>,
    offline: RwLock<BTreeMap<TopicPartition, String>>,
    /// Serializes creating and deleting partitions, so two calls never open one twice.
    changes: tokio::sync::Mutex<()>,
    metrics: Arc<LogMetrics>,
    /// Tiered storage's hook for partitions created from now on.
    attacher: std::sync::OnceLock<Arc<dyn crate::RemoteAttacher>>,
    /// The free-disk floor every partition's appends are checked against.
    space: std::sync::OnceLock<Arc<crate::DiskSpace>>,
}

/// How long creating a tiered partition waits for tiered storage to attach its remote;
/// past it the partition is served anyway and its appends wait (see [`crate::remote`]).
const ATTACH_WAIT: Duration = Duration::from_secs(5);

impl LogManager {
    /// Opens every partition under `<data_dir>/partitions`, recovering each.
    pub async fn open(
        data_dir: &Path,
        defaults: TopicConfig,
        metrics: Arc<LogMetrics>,
    ) -> Result<LogManager, LogError> {
        let data_dir = data_dir.to_path_buf();
        let (root, lock, mut found) = tokio::task::spawn_blocking(move || {
            crate::partition::create_dir_durably(&data_dir)?;
            let lock = crate::partition::lock_directory(&data_dir)?;
            let root = data_dir.join("partitions");
            crate::partition::create_dir_durably(&root)?;
            let mut found = Vec::new();
            let entries = std::fs::read_dir(&root)
                .map_err(|source| LogError::io(format!("list {}", root.display()), source))?;
            for entry in entries {
                let entry = entry
                    .map_err(|source| LogError::io(format!("list {}", root.display()), source))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.ends_with(TOMBSTONE_SUFFIX) {
                    // A delete that did not finish removing its files.
                    if let Err(error) = std::fs::remove_dir_all(entry.path()) {
                        tracing::warn!(path = %entry.path().display(), %error, "removing a deleted partition's files");
                    }
                    continue;
                }
                if let Some(tp) = TopicPartition::from_dir_name(name) {
                    found.push(tp);
                }
            }
            Ok::<_, LogError>((root, lock, found))
        })
        .await
        .map_err(|e| LogError::io("open the data directory", std::io::Error::other(e)))??;
        let manager = LogManager {
            root,
            _lock: lock,
            defaults,
            partitions: RwLock::new(BTreeMap::new()),
            offline: RwLock::new(BTreeMap::new()),
            changes: tokio::sync::Mutex::new(()),
            metrics,
            attacher: std::sync::OnceLock::new(),
            space: std::sync::OnceLock::new(),
        };
        found.sort();
        for tp in found {
            let dir = manager.root.join(tp.dir_name());
            match PartitionLog::open(&dir, manager.defaults.clone(), manager.metrics.clone()).await
            {
                Ok(log) => {
                    manager.metrics.partitions.inc();
                    manager.write_partitions().insert(tp, Arc::new(log));
                }
                Err(error) => {
                    tracing::error!(partition = %tp, %error, "partition failed to open and stays offline");
                    manager
                        .offline
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(tp, error.to_string());
                }
            }
        }
        Ok(manager)
    }

    fn write_partitions(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, BTreeMap<TopicPartition, Arc<PartitionLog>>> {
        self.partitions.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn defaults(&self) -> &TopicConfig {
        &self.defaults
    }

    /// Sets tiered storage's hook, called for every tiered partition created from now on
    /// before it is served. Set once; a second call is ignored.
    pub fn set_remote_attacher(&self, attacher: Arc<dyn crate::RemoteAttacher>) {
        let _ = self.attacher.set(attacher);
    }

    /// Checks the appends of every partition, open now or created later, against
    /// `space`'s free-disk floor. Set once; a second call is ignored.
    pub fn set_disk_space(&self, space: Arc<crate::DiskSpace>) {
        space.report_to(&self.metrics);
        if self.space.set(space.clone()).is_ok() {
            for (_, log) in self.partitions() {
                log.set_disk_space(space.clone());
            }
        }
    }

    pub fn metrics(&self) -> &Arc<LogMetrics> {
        &self.metrics
    }

    /// The partition's log, creating it with `config` if it does not exist yet. An existing
    /// log gets `config` applied.
    pub async fn create(
        &self,
        tp: &TopicPartition,
        config: TopicConfig,
    ) -> Result<Arc<PartitionLog>, LogError> {
        if !is_safe_topic_name(&tp.topic) {
            return Err(LogError::InvalidTopicName(tp.topic.clone()));
        }
        let _changes = self.changes.lock().await;
        if let Some(existing) = self.get(tp) {
            existing.set_config(config);
            return Ok(existing);
        }
        let log = Arc::new(
            PartitionLog::open(self.root.join(tp.dir_name()), config, self.metrics.clone()).await?,
        );
        if let Some(space) = self.space.get() {
            log.set_disk_space(space.clone());
        }
        if let Some(attacher) = self.attacher.get()
            && log.is_tiered()
        {
            let attached = tokio::time::timeout(
                ATTACH_WAIT,
                attacher.attach(&tp.topic, tp.partition as i32, &log),
            )
            .await;
            match attached {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(partition = %tp, %error, "tiered storage could not attach the new partition yet")
                }
                Err(_) => {
                    tracing::warn!(partition = %tp, "tiered storage did not attach the new partition in time")
                }
            }
        }
        let mut partitions = self.write_partitions();
        if let Some(raced) = partitions.get(tp) {
            return Ok(raced.clone());
        }
        partitions.insert(tp.clone(), log.clone());
        self.metrics.partitions.inc();
        Ok(log)
    }

    pub fn get(&self, tp: &TopicPartition) -> Option<Arc<PartitionLog>> {
        self.partitions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(tp)
            .cloned()
    }

    pub fn partitions(&self) -> Vec<(TopicPartition, Arc<PartitionLog>)> {
        self.partitions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(tp, log)| (tp.clone(), log.clone()))
            .collect()
    }

    /// Partitions that failed to open, with the reason.
    pub fn offline_partitions(&self) -> Vec<(TopicPartition, String)> {
        self.offline
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(tp, reason)| (tp.clone(), reason.clone()))
            .collect()
    }

    /// Closes the partition and removes its directory.
    pub async fn delete(&self, tp: &TopicPartition) -> Result<(), LogError> {
        let _changes = self.changes.lock().await;
        let open = self.get(tp);
        if let Some(log) = &open {
            log.close().await?;
        }
        // First an atomic rename to a name no partition has (`from_dir_name` rejects it),
        // made durable: from then on a crash or a failed removal can never bring the old
        // data back as a partition. Only then is the partition forgotten.
        let dir = self.root.join(tp.dir_name());
        let tombstone = self
            .root
            .join(format!("{}.{}{TOMBSTONE_SUFFIX}", tp.dir_name(), now_ms()));
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || -> Result<(), LogError> {
            match std::fs::rename(&dir, &tombstone) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(source) => {
                    return Err(LogError::io(format!("rename {}", dir.display()), source));
                }
            }
            crate::segment::sync_dir(&root)
                .map_err(|source| LogError::io(format!("fsync {}", root.display()), source))?;
            if let Err(error) = std::fs::remove_dir_all(&tombstone) {
                // Harmless: the tombstone is removed at the next start.
                tracing::warn!(path = %tombstone.display(), %error, "removing a deleted partition's files");
            }
            Ok(())
        })
        .await
        .map_err(|e| LogError::io("delete partition", std::io::Error::other(e)))??;
        self.write_partitions().remove(tp);
        self.offline
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(tp);
        if let Some(log) = open {
            self.metrics.partitions.dec();
            self.metrics.segments.dec_by(log.segments().len() as i64);
        }
        Ok(())
    }

    /// One pass of segment.ms rolls, retention, producer expiry and (if `compact`)
    /// compaction over every partition.
    pub async fn run_maintenance(
        &self,
        compact: bool,
        producer_id_expiration: Duration,
    ) -> MaintenanceReport {
        let mut report = MaintenanceReport::default();
        for (tp, log) in self.partitions() {
            if log.offline_reason().is_some() {
                continue;
            }
            let now = now_ms();
            let result = async {
                log.roll_if_expired().await?;
                report.deleted_segments += log.enforce_retention(now).await?.deleted_segments;
                let expiration =
                    i64::try_from(producer_id_expiration.as_millis()).unwrap_or(i64::MAX);
                log.expire_producers(now.saturating_sub(expiration)).await?;
                if compact {
                    report.compacted_segments += log.compact(now).await?.segments_rewritten;
                }
                Ok::<_, LogError>(())
            }
            .await;
            if let Err(error) = result
                && !matches!(error, LogError::Closed)
            {
                tracing::warn!(partition = %tp, %error, "log maintenance failed");
                report.failures += 1;
            }
        }
        report
    }

    /// Runs retention (and producer expiry) every `retention_interval` and compaction every
    /// `cleaner_interval` until `cancel` fires.
    pub fn spawn_maintenance(
        self: &Arc<Self>,
        schedule: MaintenanceSchedule,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let MaintenanceSchedule {
            retention_interval,
            cleaner_interval,
            producer_id_expiration,
        } = schedule;
        let manager = self.clone();
        tokio::spawn(async move {
            // The first passes come one interval after start, not at start.
            let start = tokio::time::Instant::now();
            let mut retention =
                tokio::time::interval_at(start + retention_interval, retention_interval);
            let mut cleaner = tokio::time::interval_at(start + cleaner_interval, cleaner_interval);
            retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            cleaner.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Under the free-disk floor, retention runs at once (and then at most once
            // per LOW_DISK_PASS), since local deletion after tiering may free space.
            let mut last_low_pass: Option<tokio::time::Instant> = None;
            loop {
                let compact = tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = retention.tick() => false,
                    _ = cleaner.tick() => true,
                    () = manager.appends_refused() => {
                        if last_low_pass.is_some_and(|at| at.elapsed() < LOW_DISK_PASS) {
                            continue;
                        }
                        last_low_pass = Some(tokio::time::Instant::now());
                        tracing::info!("an append was refused under the free-disk floor: running retention now");
                        false
                    }
                };
                manager
                    .run_maintenance(compact, producer_id_expiration)
                    .await;
            }
        })
    }

    /// Waits until an append is refused under the free-disk floor (forever without one).
    async fn appends_refused(&self) {
        match self.space.get() {
            Some(space) => space.refused().await,
            None => std::future::pending().await,
        }
    }

    /// Flushes and closes every partition; the first error is returned after all were tried.
    pub async fn close_all(&self) -> Result<(), LogError> {
        let mut first_error = None;
        for (tp, log) in self.partitions() {
            let segments = log.segments().len() as i64;
            if let Err(error) = log.close().await {
                tracing::error!(partition = %tp, %error, "closing partition failed");
                first_error.get_or_insert(error);
            }
            self.metrics.partitions.dec();
            self.metrics.segments.dec_by(segments);
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_names_round_trip_and_nothing_else_is_a_partition() {
        let tp = TopicPartition::new("my-topic.v2", 7);
        assert_eq!(TopicPartition::from_dir_name(&tp.dir_name()), Some(tp));
        for name in ["t-01", "t-+1", "t", "-1", "t-", "../x-1", "t-99999999999"] {
            assert_eq!(TopicPartition::from_dir_name(name), None, "{name}");
        }
    }
}
