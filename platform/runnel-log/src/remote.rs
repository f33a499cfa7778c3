//! Records of a partition that tiered storage holds below the local log (DESIGN §4).
//!
//! The log knows nothing of object stores: tiered storage attaches a [`Remote`] to a
//! partition (the offsets it holds and a reader for them) and replaces it whenever its
//! manifest changes. With one attached, [`PartitionLog::log_start`] is the remote start,
//! reads below the local log start go to the reader, and retention deletes a local segment
//! only once the remote holds all of it (see [`PartitionLog::enforce_retention`]).
//!
//! A tiered partition opened empty (new, or its directory wiped) accepts no append until a
//! remote is attached: if the remote already holds offsets, the log first moves its start
//! past them ([`PartitionLog::start_at`]), so new records never reuse their offsets.
//!
//! [`PartitionLog`]: crate::PartitionLog
//! [`PartitionLog::log_start`]: crate::PartitionLog::log_start
//! [`PartitionLog::enforce_retention`]: crate::PartitionLog::enforce_retention
//! [`PartitionLog::start_at`]: crate::PartitionLog::start_at

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use runnel_config::TopicConfig;

use crate::LogError;

/// A read from the remote tier in progress.
pub type RemoteRead = Pin<Box<dyn Future<Output = Result<Bytes, LogError>> + Send + 'static>>;

/// A lookup by timestamp in the remote tier in progress: (offset, timestamp) of the first
/// record at or after the timestamp asked, if the remote holds one.
pub type RemoteFind =
    Pin<Box<dyn Future<Output = Result<Option<(u64, i64)>, LogError>> + Send + 'static>>;

/// Reads a partition's remote records.
pub trait RemoteLog: Send + Sync {
    /// Whole batches from the one holding `offset` on, about `max_bytes` of them (with
    /// `at_least_one`, the first even if larger). A failure is a retriable
    /// [`LogError::Remote`], never records that were not produced.
    fn read(&self, offset: u64, max_bytes: usize, at_least_one: bool) -> RemoteRead;

    /// The first remote record whose timestamp is at least `timestamp` (ListOffsets by
    /// timestamp), or `None` if every remote record is older. Failures as for `read`.
    fn find_timestamp(&self, timestamp: i64) -> RemoteFind;
}

/// What the remote tier holds of a partition: offsets `start..end`.
#[derive(Clone)]
pub struct Remote {
    pub start: u64,
    pub end: u64,
    pub reader: Arc<dyn RemoteLog>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("start", &self.start)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

/// Attaches what tiered storage holds of a partition the [`crate::LogManager`] just
/// created, before the partition is served, so its first appends need not wait.
pub trait RemoteAttacher: Send + Sync {
    fn attach<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
        log: &'a Arc<crate::PartitionLog>,
    ) -> Pin<Box<dyn Future<Output = Result<(), LogError>> + Send + 'a>>;
}

/// Whether a partition of `topic` goes to tiered storage: `remote.storage.enable`, not
/// compacted (compaction rewrites sealed segments) and not internal (`__…`).
pub fn is_tiered(topic: &str, config: &TopicConfig) -> bool {
    config.remote_storage_enable && !config.cleanup_policy.compact && !topic.starts_with("__")
}

/// The local retention limits of a tiered partition: `local.retention.*`, where `-2`
/// (`None`) means the total limit and `-1` none.
pub(crate) fn local_limits(config: &TopicConfig) -> (Option<u64>, Option<u64>) {
    let local = |limit: Option<i64>, total: Option<u64>| match limit {
        None => total,
        Some(n) if n < 0 => None,
        Some(n) => Some(n as u64),
    };
    (
        local(config.local_retention_ms, config.retention_ms),
        local(config.local_retention_bytes, config.retention_bytes),
    )
}
