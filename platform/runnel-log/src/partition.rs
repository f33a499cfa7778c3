//! One partition's log: a directory of segments with one writer and any number of readers.
//!
//! # Overview
//! Appends go through a channel to the partition's writer task, which owns the active
//! segment. It takes every append waiting in the channel as one group, validates and stamps
//! each batch (offsets assigned contiguously from the log end), writes them, publishes the
//! new log end and high watermark, and then, if any append of the group asked for
//! durability or the flush policy (`flush.messages`, `flush.ms`) says so, runs one fsync for
//! the whole group (group commit). File I/O runs on the blocking pool, never on the async
//! runtime. Readers take a snapshot of the segment list and read with positional reads; they
//! never wait for the writer.
//!
//! # Offsets
//! - log start: the first offset still held (moves forward when retention deletes segments);
//! - log end: the offset the next appended record gets;
//! - high watermark: readers see only whole batches below it. Unreplicated, it follows the
//!   log end as soon as the bytes are written. A replicated partition's leader holds it at
//!   the *replica floor*, the least log end of its in-sync followers
//!   ([`PartitionLog::set_replica_floor`]); a follower takes the leader's
//!   ([`PartitionLog::advance_high_watermark`]).
//! - durable end: every offset below it has been fsynced.
//!
//! # Failures
//! A failed write or fsync, or a corrupt batch met by a reader, takes the partition
//! offline: every later call fails with [`LogError::Offline`] until it is reopened, which
//! runs recovery. After a failed fsync the page cache cannot be trusted, so nothing is
//! retried in place.
//!
//! # Crash consistency
//! A clean close writes the active segment's index files and a `.clean-shutdown` marker.
//! On open the marker is removed and every segment validated (see [`crate::segment`]); a
//! torn tail of the active segment is truncated. Sealed segments were fsynced, with their
//! indexes, before the next segment was created, so damage there is corruption: opening fails
//! with [`LogError::CorruptSegment`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use runnel_config::{TimestampType, TopicConfig};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};

use crate::batch::{self, BatchHeader};
use crate::epochs::EpochCache;
use crate::error::LogError;
use crate::metrics::LogMetrics;
use crate::producers::{self, ProducerStates, SequenceCheck};
use crate::remote::{self, Remote};
use crate::segment::{self, Segment};

const CLEAN_SHUTDOWN_MARKER: &str = ".clean-shutdown";
const LOCK_FILE: &str = ".lock";
/// Records which topic (by UUID) the directory belongs to, like Kafka's file of that name.
const PARTITION_METADATA: &str = "partition.metadata";
/// The log start offset when DeleteRecords moved it inside a segment, like Kafka's
/// log-start-offset checkpoint.
const LOG_START_FILE: &str = "log-start-offset";
/// A replicated partition's high watermark, recorded now and then (Kafka's
/// replication-offset-checkpoint, one file per partition here).
const HIGH_WATERMARK_FILE: &str = "high-watermark-checkpoint";

/// A replica's role in a replicated partition, as replication sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Not set since the log was opened: a replicated partition takes no writes yet.
    Unknown = 0,
    Leader = 1,
    Follower = 2,
}
/// How long opening waits for the previous writer of the directory to let go.
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// Appends taken as one group at most; more wait for the next group.
const MAX_GROUP_APPENDS: usize = 1024;
const MAX_GROUP_BYTES: usize = 16 << 20;
const COMMAND_QUEUE: usize = 1024;
/// How long an append to a tiered partition opened empty waits for tiered storage to
/// report what it holds (see [`crate::remote`]) before failing with a retriable error.
const REMOTE_WAIT: Duration = Duration::from_secs(10);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    pub last_offset: u64,
    /// The broker's timestamp, when the topic uses LogAppendTime.
    pub log_append_time: Option<i64>,
    /// Whether the batch was fsynced before this reply.
    pub durable: bool,
    /// An idempotent producer's retry of a batch already in the log: nothing was written,
    /// and the offsets are the first append's.
    pub duplicate: bool,
}

/// An append queued by [`PartitionLog::submit_append`].
#[must_use = "the append's outcome is only known by waiting for it"]
pub struct PendingAppend(oneshot::Receiver<Result<Appended, LogError>>);

impl PendingAppend {
    pub async fn wait(self) -> Result<Appended, LogError> {
        self.0.await.map_err(|_| LogError::Closed)?
    }
}

/// Batches read from the log and the offsets at the time of the read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// Whole record batches, possibly starting before the requested offset (a batch is never
    /// split), empty if there is nothing at or after it below the high watermark.
    pub records: Bytes,
    pub high_watermark: u64,
    pub log_start: u64,
}

/// A segment as the outside sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base_offset: u64,
    pub next_offset: u64,
    pub size: u64,
    pub max_timestamp: i64,
    pub sealed: bool,
}

/// What a retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub deleted_segments: usize,
    pub deleted_bytes: u64,
}

pub(crate) struct Segments {
    pub list: Vec<Arc<Segment>>,
    pub log_start: u64,
}

pub(crate) struct Shared {
    pub dir: PathBuf,
    config: RwLock<Arc<TopicConfig>>,
    pub segments: RwLock<Segments>,
    log_end: AtomicU64,
    /// The log end again, for waiting on appends (a leader's long poll of a follower).
    appended: watch::Sender<u64>,
    high_watermark: watch::Sender<u64>,
    /// The high watermark never passes it (`u64::MAX`: not replicated, or no follower in
    /// sync). Stored and read with `SeqCst`, against `log_end`, so that of the writer and
    /// the replication, at least one sees both new values.
    replica_floor: AtomicU64,
    /// The replica's role (a [`Role`] as `u8`), set by replication; a log opened is
    /// [`Role::Unknown`] until then.
    role: std::sync::atomic::AtomicU8,
    /// The high watermark last written to [`HIGH_WATERMARK_FILE`].
    checkpointed_high_watermark: AtomicU64,
    durable_end: watch::Sender<u64>,
    leader_epoch: AtomicI32,
    /// The start offset of each leader epoch in the log; changed by the writer only.
    epochs: Mutex<EpochCache>,
    offline: OnceLock<String>,
    closed: std::sync::atomic::AtomicBool,
    /// Set under `maintenance` by `close`: no retention or compaction starts after it.
    closing: std::sync::atomic::AtomicBool,
    /// The topic UUID recorded in the directory, read once at open.
    topic_id: Mutex<Option<String>>,
    /// Serializes retention and compaction, which both replace sealed segments.
    pub maintenance: Mutex<()>,
    /// What tiered storage holds below the local log, once it said (see [`crate::remote`]).
    remote: RwLock<Option<Remote>>,
    /// True while a tiered partition opened empty waits for its remote: appends wait.
    awaiting_remote: watch::Sender<bool>,
    /// The start DeleteRecords recorded: nothing below it is served, remote or local.
    deleted_below: AtomicU64,
    /// The free-disk floor appends are checked against, once the node set one.
    space: OnceLock<Arc<crate::DiskSpace>>,
    /// Held around every fsync and the offline check after it. Linux reports a writeback
    /// error to only one of the fsyncs that follow it, so when the writer and the syncer
    /// both fsync, the one that did not see the error must see the partition offline.
    sync_lock: Mutex<()>,
    pub metrics: Arc<LogMetrics>,
}

impl Shared {
    pub fn config(&self) -> Arc<TopicConfig> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn high_watermark(&self) -> u64 {
        *self.high_watermark.borrow()
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> (Vec<Arc<Segment>>, u64) {
        let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
        (segments.list.clone(), segments.log_start)
    }

    fn check_online(&self) -> Result<(), LogError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        match self.offline.get() {
            Some(reason) => Err(LogError::Offline {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Takes the partition offline for good (until reopened); returns the error to report.
    /// The topic's name, from the directory's (`<topic>-<partition>`).
    fn topic(&self) -> &str {
        self.dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit_once('-'))
            .map_or("", |(topic, _)| topic)
    }

    fn tiered(&self, config: &TopicConfig) -> bool {
        remote::is_tiered(self.topic(), config)
    }

    /// The attached remote, if it reaches the local log start (so the two tiers hold one
    /// run of offsets); with a gap between them only the local log is served.
    fn joined_remote(&self, local_start: u64) -> Option<Remote> {
        let remote = self.remote.read().unwrap_or_else(|e| e.into_inner());
        remote
            .as_ref()
            .filter(|r| r.start < local_start && r.end >= local_start)
            .cloned()
    }

    /// The first offset served: the remote start if the remote joins the local log, or the
    /// local log start; never below what DeleteRecords removed.
    fn global_start(&self, local_start: u64) -> u64 {
        let start = self
            .joined_remote(local_start)
            .map_or(local_start, |r| r.start);
        start
            .max(self.deleted_below.load(Ordering::Acquire))
            .min(local_start)
    }

    /// Moves the high watermark up to `candidate` (never down).
    fn raise_high_watermark(&self, candidate: u64) {
        self.high_watermark.send_if_modified(|hw| {
            if candidate > *hw {
                *hw = candidate;
                true
            } else {
                false
            }
        });
    }

    /// The high watermark the log end and the replica floor allow, if higher.
    fn follow_log_end(&self) {
        let log_end = self.log_end.load(Ordering::SeqCst);
        let floor = self.replica_floor.load(Ordering::SeqCst);
        self.raise_high_watermark(log_end.min(floor));
    }

    fn role(&self) -> Role {
        match self.role.load(Ordering::SeqCst) {
            1 => Role::Leader,
            2 => Role::Follower,
            _ => Role::Unknown,
        }
    }

    fn epochs(&self) -> std::sync::MutexGuard<'_, EpochCache> {
        self.epochs.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn go_offline(&self, error: LogError) -> LogError {
        if let LogError::Offline { .. } | LogError::Closed = error {
            return error;
        }
        let reason = error.to_string();
        if self.offline.set(reason.clone()).is_ok() {
            tracing::error!(partition = %self.dir.display(), %reason, "partition log going offline");
        }
        error
    }
}

enum Command {
    Append {
        batch: BytesMut,
        durable: bool,
        /// A leader's append: refused unless this log leads in this epoch, and stamped
        /// with it. `None`: stamped with the log's epoch, whatever its role.
        epoch: Option<i32>,
        reply: oneshot::Sender<Result<Appended, LogError>>,
    },
    /// Batches copied from the leader, offsets and epochs as they are; answered once
    /// fsynced.
    AppendReplica {
        records: Bytes,
        /// The leadership the batches come from; refused unless the log follows in it.
        epoch: i32,
        reply: oneshot::Sender<Result<Appended, LogError>>,
    },
    /// Cuts the log back to `offset` (a follower dropping what its leader does not have).
    TruncateTo {
        offset: u64,
        epoch: i32,
        reply: oneshot::Sender<Result<u64, LogError>>,
    },
    Sync {
        reply: oneshot::Sender<Result<(), LogError>>,
    },
    Roll {
        /// Roll only if the active segment's first append is at least this old.
        older_than: Option<Duration>,
        reply: oneshot::Sender<Result<(), LogError>>,
    },
    /// Forget idempotent producers whose last batch is older than `before_ms`.
    ExpireProducers {
        before_ms: i64,
        reply: oneshot::Sender<Result<(), LogError>>,
    },
    Close {
        reply: oneshot::Sender<Result<(), LogError>>,
    },
    /// Empty the log and start it at `offset`; with `epoch`, only while following in it.
    StartAt {
        offset: u64,
        epoch: Option<i32>,
        reply: oneshot::Sender<Result<(), LogError>>,
    },
}

/// A partition's log. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct PartitionLog {
    shared: Arc<Shared>,
    commands: std::sync::mpsc::Sender<(Command, OwnedSemaphorePermit)>,
    /// Bounds the commands queued for the writer; a full queue makes appends wait.
    queue: Arc<Semaphore>,
}

impl PartitionLog {
    /// Opens (creating if needed) the log in `dir`, recovering it as the module docs say.
    pub async fn open(
        dir: impl Into<PathBuf>,
        config: TopicConfig,
        metrics: Arc<LogMetrics>,
    ) -> Result<PartitionLog, LogError> {
        let dir = dir.into();
        let (shared, active, lock, producers) =
            tokio::task::spawn_blocking(move || open_blocking(dir, config, metrics))
                .await
                .map_err(|e| LogError::io("open partition", std::io::Error::other(e)))??;
        let shared = Arc::new(shared);
        let (commands, receiver) = std::sync::mpsc::channel();
        let (syncer, sync_jobs) = std::sync::mpsc::channel();
        let syncer_shared = shared.clone();
        std::thread::Builder::new()
            .name("runnel-log-syncer".to_string())
            .spawn(move || run_syncer(syncer_shared, sync_jobs))
            .map_err(|source| LogError::io("start the partition syncer thread", source))?;
        let writer = Writer {
            shared: shared.clone(),
            _lock: lock,
            active,
            unflushed_records: 0,
            oldest_unflushed: None,
            producers,
            syncer,
        };
        std::thread::Builder::new()
            .name("runnel-log-writer".to_string())
            .spawn(move || writer.run(receiver))
            .map_err(|source| LogError::io("start the partition writer thread", source))?;
        Ok(PartitionLog {
            shared,
            commands,
            queue: Arc::new(Semaphore::new(COMMAND_QUEUE)),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, LogError>>) -> Command,
    ) -> Result<T, LogError> {
        self.shared.check_online()?;
        let (reply, receive) = oneshot::channel();
        self.send(make(reply)).await?;
        receive.await.map_err(|_| LogError::Closed)?
    }

    async fn send(&self, command: Command) -> Result<(), LogError> {
        let permit = self
            .queue
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| LogError::Closed)?;
        self.commands
            .send((command, permit))
            .map_err(|_| LogError::Closed)
    }

    /// Appends one record batch as a producer sent it. Returns once it is written (readable
    /// up to the high watermark); it is durable only if `durable` in the answer says so.
    pub async fn append(&self, batch: BytesMut) -> Result<Appended, LogError> {
        self.submit_append(batch, false).await?.wait().await
    }

    /// Appends one record batch and returns only after an fsync covers it.
    pub async fn append_durable(&self, batch: BytesMut) -> Result<Appended, LogError> {
        self.submit_append(batch, true).await?.wait().await
    }

    /// Checks a batch as an append would (size, CRC, records, keys on compacted topics),
    /// without appending it.
    pub fn validate_batch(&self, batch: &[u8]) -> Result<batch::BatchHeader, LogError> {
        check_produced(batch, &self.shared.config())
    }

    /// Queues one record batch for the writer and returns as soon as it is queued: batches
    /// are appended in the order they were submitted, so a connection can submit in its
    /// requests' order and wait for the answers concurrently. With `durable`, the answer
    /// comes after an fsync covered the batch.
    pub async fn submit_append(
        &self,
        batch: BytesMut,
        durable: bool,
    ) -> Result<PendingAppend, LogError> {
        self.submit(batch, durable, None).await
    }

    /// Like [`PartitionLog::submit_append`], for the leader of a replicated partition in
    /// `epoch`: the writer refuses it ([`LogError::RoleChanged`]) if by the time it gets to
    /// it this log follows, or leads in another epoch, and stamps it with `epoch`.
    pub async fn submit_leader_append(
        &self,
        batch: BytesMut,
        durable: bool,
        epoch: i32,
    ) -> Result<PendingAppend, LogError> {
        self.submit(batch, durable, Some(epoch)).await
    }

    async fn submit(
        &self,
        batch: BytesMut,
        durable: bool,
        epoch: Option<i32>,
    ) -> Result<PendingAppend, LogError> {
        self.shared.check_online()?;
        if *self.shared.awaiting_remote.borrow() {
            self.wait_for_remote().await?;
        }
        if let Some(space) = self.shared.space.get() {
            space.reserve(batch.len() as u64)?;
        }
        let (reply, receive) = oneshot::channel();
        self.send(Command::Append {
            batch,
            durable,
            epoch,
            reply,
        })
        .await?;
        Ok(PendingAppend(receive))
    }

    /// Checks every append from now on against `space`'s free-disk floor (see
    /// [`crate::space`]). Set once; a second call is ignored.
    pub fn set_disk_space(&self, space: Arc<crate::DiskSpace>) {
        let _ = self.shared.space.set(space);
    }

    async fn wait_for_remote(&self) -> Result<(), LogError> {
        let mut attached = self.shared.awaiting_remote.subscribe();
        match tokio::time::timeout(REMOTE_WAIT, attached.wait_for(|waiting| !*waiting)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(LogError::Remote(
                "tiered storage has not yet reported what it holds of this partition".into(),
            )),
        }
    }

    /// fsyncs everything appended so far.
    pub async fn sync(&self) -> Result<(), LogError> {
        self.call(|reply| Command::Sync { reply }).await
    }

    /// Seals the active segment (if it holds anything) and starts a new one.
    pub async fn roll(&self) -> Result<(), LogError> {
        self.call(|reply| Command::Roll {
            older_than: None,
            reply,
        })
        .await
    }

    /// Seals the active segment if it is older than `segment.ms`, so an idle partition's
    /// data becomes subject to retention.
    pub async fn roll_if_expired(&self) -> Result<(), LogError> {
        let older_than = Some(self.shared.config().segment_age_limit());
        self.call(|reply| Command::Roll { older_than, reply }).await
    }

    /// Forgets the idempotent producers that wrote nothing since `before_ms` (the
    /// maintenance's `producer.id.expiration.ms`, see [`crate::producers`]).
    pub async fn expire_producers(&self, before_ms: i64) -> Result<(), LogError> {
        self.call(|reply| Command::ExpireProducers { before_ms, reply })
            .await
    }

    /// Flushes, writes the indexes and the clean-shutdown marker, and stops the writer.
    /// Calls after this fail with [`LogError::Closed`].
    pub async fn close(&self) -> Result<(), LogError> {
        // Wait for a retention or compaction pass under way, and let none start after: once
        // closed, nothing touches the directory (it may be reopened or deleted at once).
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let _maintenance = shared.maintenance.lock().unwrap_or_else(|e| e.into_inner());
            shared.closing.store(true, Ordering::Release);
        })
        .await
        .map_err(|e| LogError::io("close", std::io::Error::other(e)))?;
        let (reply, receive) = oneshot::channel();
        if self.send(Command::Close { reply }).await.is_err() {
            return Ok(()); // already closed
        }
        receive.await.map_err(|_| LogError::Closed)?
    }

    /// The first offset this partition serves: with tiered storage attached, the first it
    /// holds remotely.
    pub fn log_start(&self) -> u64 {
        self.shared.global_start(self.local_log_start())
    }

    /// The start DeleteRecords last recorded (0 if it never ran): nothing below it is
    /// served from either tier. Tiered storage records it in the partition's manifest, so
    /// it outlives the local data.
    pub fn deleted_below(&self) -> u64 {
        self.shared.deleted_below.load(Ordering::Acquire)
    }

    /// The first offset held on local disk (Kafka's local log start).
    pub fn local_log_start(&self) -> u64 {
        self.shared
            .segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .log_start
    }

    /// Attaches (or replaces) what tiered storage holds of this partition; appends waiting
    /// for it go on. A remote ending past the local log end of a partition opened empty
    /// (its data wiped) first moves the log's start to the remote end.
    pub async fn set_remote(&self, remote: Remote) -> Result<(), LogError> {
        if *self.shared.awaiting_remote.borrow() && remote.end > self.log_end() {
            self.start_at(remote.end).await?;
        }
        *self
            .shared
            .remote
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(remote);
        self.shared.awaiting_remote.send_replace(false);
        Ok(())
    }

    /// What tiered storage holds of this partition, as last attached.
    pub fn remote(&self) -> Option<Remote> {
        self.shared
            .remote
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether this partition goes to tiered storage (see [`crate::remote::is_tiered`]).
    pub fn is_tiered(&self) -> bool {
        self.shared.tiered(&self.shared.config())
    }

    /// Empties the log and starts it at `offset` (at or past the log end): the next append
    /// gets `offset`. For a partition whose local data is gone while tiered storage still
    /// holds offsets below `offset`.
    pub async fn start_at(&self, offset: u64) -> Result<(), LogError> {
        self.call(|reply| Command::StartAt {
            offset,
            epoch: None,
            reply,
        })
        .await
    }

    /// [`PartitionLog::start_at`] for a follower of leader epoch `epoch`: refused unless
    /// the log still follows in it.
    pub async fn start_replica_at(&self, offset: u64, epoch: i32) -> Result<(), LogError> {
        self.call(|reply| Command::StartAt {
            offset,
            epoch: Some(epoch),
            reply,
        })
        .await
    }

    pub fn log_end(&self) -> u64 {
        self.shared.log_end.load(Ordering::Acquire)
    }

    pub fn high_watermark(&self) -> u64 {
        *self.shared.high_watermark.borrow()
    }

    pub fn durable_end(&self) -> u64 {
        *self.shared.durable_end.borrow()
    }

    pub fn config(&self) -> Arc<TopicConfig> {
        self.shared.config()
    }

    /// Applies a new configuration; it takes effect from the next append or maintenance pass.
    pub fn set_config(&self, config: TopicConfig) {
        *self
            .shared
            .config
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }

    /// The leader epoch stamped into appended batches.
    pub fn set_leader_epoch(&self, epoch: i32) {
        self.shared.leader_epoch.store(epoch, Ordering::Release);
    }

    pub fn leader_epoch(&self) -> i32 {
        self.shared.leader_epoch.load(Ordering::Acquire)
    }

    /// Holds the high watermark at `floor` from now on: a replicated partition's leader
    /// sets the least log end of its in-sync followers (`u64::MAX` when none is in sync
    /// but itself), a follower 0 (its high watermark comes from the leader). Raises the
    /// high watermark at once if the new floor allows.
    pub fn set_replica_floor(&self, floor: u64) {
        self.shared.replica_floor.store(floor, Ordering::SeqCst);
        self.shared.follow_log_end();
    }

    /// Sets this replica's role. Only a [`Role::Leader`] takes epoch-checked appends
    /// ([`PartitionLog::submit_leader_append`]), only a [`Role::Follower`] replicated
    /// batches and truncation. A follower's copy of a tiered partition is deleted by the
    /// topic's whole `retention.ms` and `retention.bytes`: its leader uploads, and the
    /// follower has no manifest of its own.
    pub fn set_role(&self, role: Role) {
        self.shared.role.store(role as u8, Ordering::SeqCst);
    }

    pub fn role(&self) -> Role {
        self.shared.role()
    }

    /// Records the high watermark (durably, if it changed since the last time), so a
    /// restart does not show records the other replicas may lack.
    pub async fn checkpoint_high_watermark(&self) -> Result<(), LogError> {
        let high_watermark = self.high_watermark();
        let shared = self.shared.clone();
        if shared.checkpointed_high_watermark.load(Ordering::Acquire) == high_watermark {
            return Ok(());
        }
        tokio::task::spawn_blocking(move || {
            segment::write_durably(
                &shared.dir.join(HIGH_WATERMARK_FILE),
                high_watermark.to_string().as_bytes(),
            )?;
            shared
                .checkpointed_high_watermark
                .store(high_watermark, Ordering::Release);
            Ok(())
        })
        .await
        .map_err(|e| LogError::io("record the high watermark", std::io::Error::other(e)))?
    }

    /// A follower's high watermark: the leader's, as far as this log reaches. Never down.
    pub fn advance_high_watermark(&self, leader_high_watermark: u64) {
        self.shared
            .raise_high_watermark(leader_high_watermark.min(self.log_end()));
    }

    /// The newest leader epoch that wrote to this log, if any did.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.shared.epochs().latest()
    }

    /// The newest epoch at or below `epoch` in this log and the offset where it ends (see
    /// Kafka's OffsetsForLeaderEpoch): what a follower keeps of its own log.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, u64) {
        let epochs = self.shared.epochs();
        // Read under the lock: the writer records a new epoch before its batch lands.
        epochs.end_offset_for(epoch, self.log_end())
    }

    /// Appends batches copied from the leader of epoch `epoch`: whole, valid, starting at
    /// this log's end, their offsets and epochs kept. Refused unless the log follows in
    /// that epoch (a fetch from an earlier leadership must not land). Returns once they
    /// are fsynced.
    pub async fn append_replica(&self, records: Bytes, epoch: i32) -> Result<Appended, LogError> {
        if let Some(space) = self.shared.space.get() {
            space.reserve(records.len() as u64)?;
        }
        self.call(|reply| Command::AppendReplica {
            records,
            epoch,
            reply,
        })
        .await
    }

    /// Cuts the log back so it ends at `offset`, or at the start of the batch holding it,
    /// for a follower of leader epoch `epoch` (refused unless it follows in it). Returns the
    /// new log end (unchanged if it was at or below `offset`).
    pub async fn truncate_to(&self, offset: u64, epoch: i32) -> Result<u64, LogError> {
        self.call(|reply| Command::TruncateTo {
            offset,
            epoch,
            reply,
        })
        .await
    }

    /// Reads whole batches from `offset` up to the log end, past the high watermark: what
    /// a follower copies. Only the local log is read; below it the answer is
    /// [`LogError::OffsetOutOfRange`] with the local log start.
    pub async fn read_replica(
        &self,
        offset: u64,
        max_bytes: usize,
    ) -> Result<ReadResult, LogError> {
        self.shared.check_online()?;
        let high_watermark = self.high_watermark();
        let (segments, local_start) = self.shared.snapshot();
        let log_end = self.log_end();
        if offset < local_start || offset > log_end {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start: local_start,
                log_end,
            });
        }
        let records = self
            .read_segments(segments, offset, log_end, max_bytes, true)
            .await?;
        Ok(ReadResult {
            records,
            high_watermark,
            log_start: local_start,
        })
    }

    /// Waits until the log end passes `offset` or `timeout` elapses; returns the log end.
    pub async fn wait_for_log_end(&self, offset: u64, timeout: Duration) -> u64 {
        let mut receiver = self.shared.appended.subscribe();
        let _ = tokio::time::timeout(timeout, receiver.wait_for(|end| *end > offset)).await;
        self.log_end()
    }

    /// The UUID of the topic this partition belongs to, as recorded in the directory
    /// (`None` if none was recorded yet).
    pub fn topic_id(&self) -> Option<String> {
        self.shared
            .topic_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records the topic's UUID in the directory (durably), so a topic deleted and created
    /// again under the same name is never mistaken for the old one.
    pub async fn set_topic_id(&self, topic_id: &str) -> Result<(), LogError> {
        if self.topic_id().as_deref() == Some(topic_id) {
            return Ok(());
        }
        let path = self.shared.dir.join(PARTITION_METADATA);
        let contents = format!("version: 0\ntopic_id: {topic_id}\n");
        tokio::task::spawn_blocking(move || segment::write_durably(&path, contents.as_bytes()))
            .await
            .map_err(|e| LogError::io("record the topic id", std::io::Error::other(e)))??;
        *self
            .shared
            .topic_id
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(topic_id.to_string());
        Ok(())
    }

    /// Whether the partition went offline, and why.
    pub fn offline_reason(&self) -> Option<String> {
        self.shared.offline.get().cloned()
    }

    pub fn segments(&self) -> Vec<SegmentInfo> {
        let (list, _) = self.shared.snapshot();
        let last = list.len().saturating_sub(1);
        list.iter()
            .enumerate()
            .map(|(i, s)| SegmentInfo {
                base_offset: s.base_offset,
                next_offset: s.next_offset(),
                size: s.size(),
                max_timestamp: s.max_timestamp(),
                sealed: i != last,
            })
            .collect()
    }

    /// Bytes held on disk by all segments.
    pub fn size_bytes(&self) -> u64 {
        self.shared.snapshot().0.iter().map(|s| s.size()).sum()
    }

    /// Reads whole batches from `offset` on, about `max_bytes` of them (at least one batch
    /// if any is there). Offsets outside `[log start, log end]` are out of range; at or past
    /// the high watermark the answer is empty.
    pub async fn read(&self, offset: u64, max_bytes: usize) -> Result<ReadResult, LogError> {
        self.read_limited(offset, max_bytes, true).await
    }

    /// Like [`PartitionLog::read`]; without `at_least_one`, a first batch larger than
    /// `max_bytes` is not returned either (a Kafka fetch grants that to its first partition
    /// with data only).
    pub async fn read_limited(
        &self,
        offset: u64,
        max_bytes: usize,
        at_least_one: bool,
    ) -> Result<ReadResult, LogError> {
        self.shared.check_online()?;
        let high_watermark = self.high_watermark();
        let (segments, local_start) = self.shared.snapshot();
        let log_start = self.shared.global_start(local_start);
        let log_end = self.log_end();
        if offset < local_start
            && self.remote().is_none()
            && self.shared.tiered(&self.shared.config())
        {
            // Below the local log of a tiered partition whose remote is not known yet: it
            // may well hold the offset, so this is not out of range.
            return Err(LogError::Remote(
                "tiered storage has not yet reported what it holds of this partition".into(),
            ));
        }
        if offset < log_start || offset > log_end {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start,
                log_end,
            });
        }
        if offset < local_start
            && let Some(remote) = self.shared.joined_remote(local_start)
        {
            let records = remote.reader.read(offset, max_bytes, at_least_one).await?;
            self.shared.metrics.read_bytes.inc_by(records.len() as u64);
            return Ok(ReadResult {
                records,
                high_watermark,
                log_start,
            });
        }
        let empty = ReadResult {
            records: Bytes::new(),
            high_watermark,
            log_start,
        };
        if offset >= high_watermark {
            return Ok(empty);
        }
        let records = self
            .read_segments(segments, offset, high_watermark, max_bytes, at_least_one)
            .await?;
        Ok(ReadResult { records, ..empty })
    }

    /// Whole batches from `offset` below `upper`, from the local segments.
    async fn read_segments(
        &self,
        segments: Vec<Arc<Segment>>,
        offset: u64,
        upper: u64,
        max_bytes: usize,
        at_least_one: bool,
    ) -> Result<Bytes, LogError> {
        if offset >= upper {
            return Ok(Bytes::new());
        }
        let first = segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1);
        let shared = self.shared.clone();
        let records = tokio::task::spawn_blocking(move || -> Result<Bytes, LogError> {
            for segment in &segments[first..] {
                if segment.base_offset >= upper {
                    break;
                }
                if let Some(bytes) = segment.read(offset, upper, max_bytes, at_least_one)? {
                    return Ok(bytes);
                }
            }
            Ok(Bytes::new())
        })
        .await
        .map_err(|e| LogError::io("read", std::io::Error::other(e)))?
        .map_err(|e| match e {
            LogError::CorruptSegment { .. } => shared.go_offline(e),
            other => other,
        })?;
        self.shared.metrics.read_bytes.inc_by(records.len() as u64);
        Ok(records)
    }

    /// Waits until the high watermark passes `offset` or `timeout` elapses; returns the
    /// high watermark. The long poll of a fetch: no sleeping loop, a notification per write.
    pub async fn wait_for_data(&self, offset: u64, timeout: Duration) -> u64 {
        let mut receiver = self.shared.high_watermark.subscribe();
        let _ = tokio::time::timeout(timeout, receiver.wait_for(|hw| *hw > offset)).await;
        self.high_watermark()
    }

    /// The first offset whose record timestamp is at least `timestamp`, or `None` if every
    /// record below the high watermark is older (Kafka's ListOffsets by timestamp).
    pub async fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<u64>, LogError> {
        Ok(self
            .find_timestamp(timestamp)
            .await?
            .map(|(offset, _)| offset))
    }

    /// Like [`PartitionLog::offset_for_timestamp`], with the found record's timestamp.
    /// With a remote attached, the remote tier is asked first: its records come first.
    pub async fn find_timestamp(&self, timestamp: i64) -> Result<Option<(u64, i64)>, LogError> {
        self.shared.check_online()?;
        if let Some(remote) = self.remote()
            && remote.start < remote.end
            && let Some((offset, found)) = remote.reader.find_timestamp(timestamp).await?
        {
            // As below for the local log: below a DeleteRecords start, the start.
            let start = self.log_start();
            if offset.max(start) < remote.end {
                return Ok(Some((offset.max(start), found)));
            }
        }
        let upper = self.high_watermark();
        let (segments, log_start) = self.shared.snapshot();
        let max_batch = decompression_limit(&self.shared.config());
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || -> Result<Option<(u64, i64)>, LogError> {
            for segment in &segments {
                if segment.base_offset >= upper {
                    break;
                }
                if let Some((offset, found)) =
                    segment.offset_for_timestamp(timestamp, upper, max_batch)?
                {
                    return Ok(Some((offset.max(log_start), found)));
                }
            }
            Ok(None)
        })
        .await
        .map_err(|e| LogError::io("offset for timestamp", std::io::Error::other(e)))?
        .map_err(|e| match e {
            LogError::CorruptSegment { .. } => shared.go_offline(e),
            other => other,
        })
    }

    /// Deletes whole sealed segments past `retention.ms` or beyond `retention.bytes`, oldest
    /// first, never the active one. Does nothing unless `cleanup.policy` includes delete.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<RetentionOutcome, LogError> {
        self.shared.check_online()?;
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || enforce_retention_blocking(&shared, now_ms))
            .await
            .map_err(|e| LogError::io("retention", std::io::Error::other(e)))?
    }

    /// Kafka's DeleteRecords: moves the log start to `before` (at most the high watermark)
    /// so nothing below it is served again, deletes the segments wholly below it, and
    /// records the new start durably. Returns the log start after the call (never moves
    /// back).
    pub async fn delete_records(&self, before: u64) -> Result<u64, LogError> {
        self.shared.check_online()?;
        let high_watermark = self.high_watermark();
        if before > high_watermark {
            let (_, log_start) = self.shared.snapshot();
            return Err(LogError::OffsetOutOfRange {
                offset: before,
                log_start,
                log_end: high_watermark,
            });
        }
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || delete_records_blocking(&shared, before))
            .await
            .map_err(|e| LogError::io("delete records", std::io::Error::other(e)))?
    }

    /// Compacts the sealed segments (see [`crate::cleaner`]); does nothing unless
    /// `cleanup.policy` includes compact.
    pub async fn compact(
        &self,
        now_ms: i64,
    ) -> Result<crate::cleaner::CompactionOutcome, LogError> {
        self.shared.check_online()?;
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || crate::cleaner::compact(&shared, now_ms))
            .await
            .map_err(|e| LogError::io("compaction", std::io::Error::other(e)))?
            .map_err(|e| match e {
                LogError::CorruptSegment { .. } => self.shared.go_offline(e),
                other => other,
            })
    }
}

/// The largest decompressed records section the log accepts and looks inside: sixteen
/// times `max.message.bytes`, within 64 MiB to 512 MiB. A batch beyond it is refused at
/// append, so compaction and timestamp lookups never meet one.
pub(crate) fn decompression_limit(config: &TopicConfig) -> usize {
    const FLOOR: usize = 64 << 20;
    const CEILING: usize = 512 << 20;
    (config.max_message_bytes as usize)
        .saturating_mul(16)
        .clamp(FLOOR, CEILING)
}

/// The checks every produced batch passes before it is appended.
fn check_produced(batch: &[u8], config: &TopicConfig) -> Result<batch::BatchHeader, LogError> {
    if batch.len() as u64 > config.max_message_bytes {
        return Err(LogError::BatchTooLarge {
            size: batch.len(),
            max: config.max_message_bytes,
        });
    }
    Ok(batch::validate_produced(
        batch,
        decompression_limit(config),
        config.cleanup_policy.compact,
    )?)
}

/// The topic UUID recorded in `dir`, if any. Only a missing file means "none": any other
/// failure to read it is an error, so the partition stays offline rather than adopt a new
/// UUID for data it cannot identify.
fn read_topic_id(dir: &Path) -> Result<Option<String>, LogError> {
    let path = dir.join(PARTITION_METADATA);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LogError::io(format!("read {}", path.display()), source)),
    };
    Ok(text
        .lines()
        .find_map(|line| line.strip_prefix("topic_id: "))
        .map(|id| id.trim().to_string()))
}

/// Creates `dir` if needed, fsyncing its parent so the new entry survives a crash.
pub(crate) fn create_dir_durably(dir: &Path) -> Result<(), LogError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)
        .map_err(|source| LogError::io(format!("create {}", dir.display()), source))?;
    // A relative path's parent may be empty: that is the working directory.
    if let Some(parent) = dir.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        segment::sync_dir(parent)
            .map_err(|source| LogError::io(format!("fsync {}", parent.display()), source))?;
    }
    Ok(())
}

/// Takes the partition directory's lock: one writer per directory, across threads and
/// processes. A writer that is still closing gets a few seconds to finish.
pub(crate) fn lock_directory(dir: &Path) -> Result<std::fs::File, LogError> {
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| LogError::io(format!("open {}", path.display()), source))?;
    let started = Instant::now();
    loop {
        // SAFETY: flock on a descriptor we own; no memory is shared with the call.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if locked {
            return Ok(file);
        }
        if started.elapsed() >= LOCK_WAIT {
            return Err(LogError::io(
                format!("lock {}", path.display()),
                std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    "the partition is in use by another writer",
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

type Opened = (Shared, Arc<Segment>, std::fs::File, ProducerStates);

fn open_blocking(
    dir: PathBuf,
    config: TopicConfig,
    metrics: Arc<LogMetrics>,
) -> Result<Opened, LogError> {
    create_dir_durably(&dir)?;
    let lock = lock_directory(&dir)?;
    let marker = dir.join(CLEAN_SHUTDOWN_MARKER);
    let clean = marker.exists();
    if clean {
        std::fs::remove_file(&marker)
            .map_err(|source| LogError::io(format!("remove {}", marker.display()), source))?;
    }
    let mut bases = Vec::new();
    let entries = std::fs::read_dir(&dir)
        .map_err(|source| LogError::io(format!("list {}", dir.display()), source))?;
    for entry in entries {
        let entry =
            entry.map_err(|source| LogError::io(format!("list {}", dir.display()), source))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".cleaned") || name.ends_with(".tmp") {
            // Left by a compaction or index write that did not finish.
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        if let Some(stem) = name.strip_suffix(".log")
            && stem.len() == 20
            && let Ok(base) = stem.parse::<u64>()
        {
            if base > i64::MAX as u64 {
                return Err(LogError::CorruptSegment {
                    path: entry.path(),
                    position: 0,
                    reason: "base offset beyond the largest Kafka offset".to_string(),
                });
            }
            bases.push(base);
        }
    }
    bases.sort_unstable();

    let mut list = Vec::with_capacity(bases.len().max(1));
    for (i, base) in bases.iter().enumerate() {
        let active = i + 1 == bases.len();
        let (segment, report) = Segment::open(&dir, *base, active, config.index_interval_bytes)?;
        if report.truncated_bytes > 0 || (report.index_rebuilt && clean) {
            tracing::warn!(partition = %dir.display(), segment = base, truncated_bytes = report.truncated_bytes, index_rebuilt = report.index_rebuilt, "recovered segment");
        }
        if let Some(previous) = list.last().map(|s: &Arc<Segment>| s.next_offset())
            && segment.base_offset < previous
        {
            return Err(LogError::CorruptSegment {
                path: segment.log_path(),
                position: 0,
                reason: format!(
                    "segment starts at offset {} before the previous one ends ({previous})",
                    segment.base_offset
                ),
            });
        }
        list.push(Arc::new(segment));
    }
    let active = match list.last() {
        Some(last) => last.clone(),
        None => {
            let first = Arc::new(Segment::create(&dir, 0)?);
            segment::sync_dir(&dir)
                .map_err(|source| LogError::io(format!("fsync {}", dir.display()), source))?;
            list.push(first.clone());
            first
        }
    };
    // Whatever survived the crash may still sit only in the page cache.
    active.sync()?;
    if !active.is_empty() {
        // Like Kafka, age a reopened segment from its first batch's timestamp (never from
        // the future), so restarts do not keep resetting segment.ms.
        let first = active.first_batch_timestamp()?.unwrap_or(now_ms());
        active.mark_first_append(first.min(now_ms()));
    }
    let log_end = active.next_offset();
    let deleted_below = read_offset_file(&dir, LOG_START_FILE, "log start offset")?
        .unwrap_or(0)
        .min(log_end);
    let log_start = list.first().map_or(0, |s| s.base_offset).max(deleted_below);
    let awaiting_remote = log_end == 0
        && dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit_once('-'))
            .is_some_and(|(topic, _)| remote::is_tiered(topic, &config));
    let topic_id = read_topic_id(&dir)?;
    let producers = recover_producers(&dir, &list, log_end)?;
    let epochs = EpochCache::load(&dir, &list, log_end)?;
    // A replicated partition's high watermark as last recorded: records past it may not be
    // on the other replicas, so they stay hidden until replication says otherwise.
    let checkpoint = read_offset_file(&dir, HIGH_WATERMARK_FILE, "high watermark checkpoint")?;
    // Snapshots past the log end describe batches a truncation cut (and a crash kept).
    producers::delete_snapshots_from(&dir, log_end + 1)?;
    metrics.segments.inc_by(list.len() as i64);
    let shared = Shared {
        dir,
        config: RwLock::new(Arc::new(config)),
        segments: RwLock::new(Segments { list, log_start }),
        log_end: AtomicU64::new(log_end),
        appended: watch::Sender::new(log_end),
        high_watermark: watch::Sender::new(checkpoint.map_or(log_end, |hw| hw.min(log_end))),
        replica_floor: AtomicU64::new(if checkpoint.is_some() { 0 } else { u64::MAX }),
        role: std::sync::atomic::AtomicU8::new(Role::Unknown as u8),
        checkpointed_high_watermark: AtomicU64::new(checkpoint.unwrap_or(u64::MAX)),
        durable_end: watch::Sender::new(log_end),
        leader_epoch: AtomicI32::new(0),
        epochs: Mutex::new(epochs),
        offline: OnceLock::new(),
        closed: std::sync::atomic::AtomicBool::new(false),
        closing: std::sync::atomic::AtomicBool::new(false),
        topic_id: Mutex::new(topic_id),
        maintenance: Mutex::new(()),
        remote: RwLock::new(None),
        awaiting_remote: watch::Sender::new(awaiting_remote),
        deleted_below: AtomicU64::new(deleted_below),
        space: OnceLock::new(),
        sync_lock: Mutex::new(()),
        metrics,
    };
    Ok((shared, active, lock, producers))
}

/// The producer state as of `log_end`: the newest snapshot, then the batches after it.
fn recover_producers(
    dir: &Path,
    segments: &[Arc<Segment>],
    log_end: u64,
) -> Result<ProducerStates, LogError> {
    let (from, mut states) = producers::load_snapshot(dir, log_end)?.unwrap_or_default();
    for segment in segments.iter().filter(|s| s.next_offset() > from) {
        segment.for_each_batch(0, |_, _, header| {
            if header.base_offset as u64 >= from {
                states.record(header, header.base_offset as u64);
            }
            Ok(true)
        })?;
    }
    Ok(states)
}

/// The offset recorded in the file `name` of `dir` (`what` it is, for the error), if
/// there is one: the log start DeleteRecords recorded, or replication's high watermark.
fn read_offset_file(dir: &Path, name: &str, what: &str) -> Result<Option<u64>, LogError> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| LogError::CorruptSegment {
                path,
                position: 0,
                reason: format!("the {what} file does not hold a number"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LogError::io(format!("read {}", path.display()), source)),
    }
}

fn enforce_retention_blocking(shared: &Shared, now_ms: i64) -> Result<RetentionOutcome, LogError> {
    let _maintenance = shared.maintenance.lock().unwrap_or_else(|e| e.into_inner());
    let config = shared.config();
    let mut outcome = RetentionOutcome::default();
    if !config.cleanup_policy.delete || shared.is_closing() {
        return Ok(outcome);
    }
    let (list, _) = shared.snapshot();
    let high_watermark = shared.high_watermark();
    // A tiered partition deletes locally only what the remote holds, by the local limits;
    // a follower's copy is tiered by its leader, and kept by the whole limits.
    let tiered = shared.tiered(&config) && shared.role() != Role::Follower;
    let (retention_ms, retention_bytes) = if tiered {
        remote::local_limits(&config)
    } else {
        (config.retention_ms, config.retention_bytes)
    };
    let uploaded_end = match shared
        .remote
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        Some(remote) => remote.end,
        None => 0,
    };
    let mut total: u64 = list.iter().map(|s| s.size()).sum();
    let mut doomed = Vec::new();
    // Never the active segment, and never records readers cannot see yet.
    for segment in list
        .iter()
        .take(list.len().saturating_sub(1))
        .take_while(|s| s.next_offset() <= high_watermark)
        .take_while(|s| !tiered || s.next_offset() <= uploaded_end)
    {
        let newest = match segment.max_timestamp() {
            ts if ts >= 0 => ts,
            _ => segment.modified_ms().unwrap_or(now_ms),
        };
        // An empty segment (compaction can leave one) holds nothing to keep.
        let expired = retention_ms.is_some_and(|limit| {
            segment.is_empty() || now_ms.saturating_sub(newest) > limit as i64
        });
        let oversize =
            retention_bytes.is_some_and(|limit| total.saturating_sub(segment.size()) >= limit);
        if !expired && !oversize {
            break;
        }
        total -= segment.size();
        doomed.push(segment.clone());
    }
    if doomed.is_empty() {
        return Ok(outcome);
    }
    {
        let mut segments = shared.segments.write().unwrap_or_else(|e| e.into_inner());
        segments
            .list
            .retain(|s| !doomed.iter().any(|d| Arc::ptr_eq(d, s)));
        let new_start = segments
            .list
            .first()
            .map_or(segments.log_start, |s| s.base_offset);
        segments.log_start = segments.log_start.max(new_start);
    }
    for segment in &doomed {
        segment.delete_files()?;
        outcome.deleted_segments += 1;
        outcome.deleted_bytes += segment.size();
        shared.metrics.segments.dec();
    }
    segment::sync_dir(&shared.dir)
        .map_err(|source| LogError::io(format!("fsync {}", shared.dir.display()), source))?;
    tracing::info!(partition = %shared.dir.display(), segments = outcome.deleted_segments, bytes = outcome.deleted_bytes, "retention deleted segments");
    Ok(outcome)
}

fn delete_records_blocking(shared: &Shared, before: u64) -> Result<u64, LogError> {
    let _maintenance = shared.maintenance.lock().unwrap_or_else(|e| e.into_inner());
    if shared.is_closing() {
        return Err(LogError::Closed);
    }
    let (list, log_start) = shared.snapshot();
    let served_start = shared.global_start(log_start);
    if before <= served_start {
        return Ok(served_start);
    }
    segment::write_durably(
        &shared.dir.join(LOG_START_FILE),
        before.to_string().as_bytes(),
    )?;
    shared.deleted_below.fetch_max(before, Ordering::AcqRel);
    if before <= log_start {
        // Only tiered records are below it: they are no longer served.
        tracing::info!(partition = %shared.dir.display(), log_start = before, "remote records deleted");
        return Ok(before);
    }
    let doomed: Vec<_> = list
        .iter()
        .take(list.len().saturating_sub(1))
        .take_while(|s| s.next_offset() <= before)
        .cloned()
        .collect();
    {
        let mut segments = shared.segments.write().unwrap_or_else(|e| e.into_inner());
        segments
            .list
            .retain(|s| !doomed.iter().any(|d| Arc::ptr_eq(d, s)));
        segments.log_start = segments.log_start.max(before);
    }
    for segment in &doomed {
        segment.delete_files()?;
        shared.metrics.segments.dec();
    }
    if !doomed.is_empty() {
        segment::sync_dir(&shared.dir)
            .map_err(|source| LogError::io(format!("fsync {}", shared.dir.display()), source))?;
    }
    tracing::info!(partition = %shared.dir.display(), log_start = before, segments = doomed.len(), "records deleted");
    Ok(before)
}

/// The partition's single writer. Owns the active segment and runs on its own thread,
/// where blocking file I/O is fine: a handoff to a thread costs about as much as one to the
/// blocking pool, and this way an append crosses threads once each way.
struct Writer {
    shared: Arc<Shared>,
    /// The directory lock, released when the writer thread ends.
    _lock: std::fs::File,
    active: Arc<Segment>,
    unflushed_records: u64,
    oldest_unflushed: Option<Instant>,
    /// Idempotent producers' recent batches (see [`crate::producers`]).
    producers: ProducerStates,
    /// Where fsyncs for durable appends go, so the writer keeps writing meanwhile.
    syncer: std::sync::mpsc::Sender<SyncJob>,
}

/// An fsync for durable appends, run by the partition's syncer thread: once `segment` is
/// synced, every offset below `up_to` is durable and the replies are sent.
struct SyncJob {
    segment: Arc<Segment>,
    up_to: u64,
    replies: Vec<(oneshot::Sender<Result<Appended, LogError>>, Appended)>,
}

/// The syncer: fsyncs for durable appends, off the writer's thread. While one fsync runs
/// the writer goes on writing (readers see those batches at once); the jobs that queue up
/// meanwhile are served by the next single fsync (pipelined group commit).
fn run_syncer(shared: Arc<Shared>, jobs: std::sync::mpsc::Receiver<SyncJob>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while let Ok(more) = jobs.try_recv() {
            batch.push(more);
        }
        let up_to = batch.iter().map(|job| job.up_to).max().unwrap_or(0);
        let failure = {
            let _sync = shared.sync_lock.lock().unwrap_or_else(|e| e.into_inner());
            let mut result = Ok(());
            let mut synced: Vec<&Arc<Segment>> = Vec::new();
            for job in &batch {
                if synced.iter().any(|s| Arc::ptr_eq(s, &job.segment)) {
                    continue;
                }
                let started = Instant::now();
                result = job.segment.sync();
                shared
                    .metrics
                    .fsync_seconds
                    .observe(started.elapsed().as_secs_f64());
                if result.is_err() {
                    break;
                }
                synced.push(&job.segment);
            }
            match result {
                Err(error) => Some(shared.go_offline(error).to_string()),
                // The writer's fsync may have been the one told of a write error.
                Ok(()) => match shared.offline.get() {
                    Some(reason) => Some(reason.clone()),
                    None => {
                        advance_durable_end(&shared, up_to);
                        None
                    }
                },
            }
        };
        for job in batch {
            for (reply, mut appended) in job.replies {
                let answer = match &failure {
                    None => {
                        appended.durable = true;
                        Ok(appended)
                    }
                    Some(reason) => Err(LogError::Offline {
                        reason: reason.clone(),
                    }),
                };
                let _ = reply.send(answer);
            }
        }
    }
}

/// Moves the durable end forward (never back: the writer and the syncer both fsync).
fn advance_durable_end(shared: &Shared, up_to: u64) {
    shared.durable_end.send_if_modified(|end| {
        if up_to > *end {
            *end = up_to;
            true
        } else {
            false
        }
    });
}

enum Reply {
    Append(
        oneshot::Sender<Result<Appended, LogError>>,
        Result<Appended, LogError>,
        bool,
    ),
    Done(oneshot::Sender<Result<(), LogError>>, Result<(), LogError>),
    Truncated(
        oneshot::Sender<Result<u64, LogError>>,
        Result<u64, LogError>,
    ),
}

type Queued = (Command, OwnedSemaphorePermit);

impl Writer {
    fn run(mut self, receiver: std::sync::mpsc::Receiver<Queued>) {
        use std::sync::mpsc::RecvTimeoutError;
        loop {
            let first = match self.flush_deadline() {
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    match receiver.recv_timeout(wait) {
                        Ok(queued) => queued,
                        Err(RecvTimeoutError::Timeout) => {
                            if let Err(error) = self.flush() {
                                tracing::error!(%error, "scheduled fsync failed");
                            }
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match receiver.recv() {
                    Ok(queued) => queued,
                    Err(_) => break,
                },
            };
            let mut group = vec![first];
            let mut bytes = 0;
            while group.len() < MAX_GROUP_APPENDS && bytes < MAX_GROUP_BYTES {
                match receiver.try_recv() {
                    Ok(queued) => {
                        if let Command::Append { batch, .. } = &queued.0 {
                            bytes += batch.len();
                        }
                        group.push(queued);
                    }
                    Err(_) => break,
                }
            }
            let closing = group
                .iter()
                .any(|(c, _)| matches!(c, Command::Close { .. }));
            let (commands, permits): (Vec<Command>, Vec<OwnedSemaphorePermit>) =
                group.into_iter().unzip();
            let applied =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.apply(commands)));
            drop(permits);
            let Ok(replies) = applied else {
                self.shared.go_offline(LogError::io(
                    "partition writer",
                    std::io::Error::other("the writer panicked"),
                ));
                return;
            };
            for reply in replies {
                match reply {
                    Reply::Append(sender, result, _) => drop(sender.send(result)),
                    Reply::Done(sender, result) => drop(sender.send(result)),
                    Reply::Truncated(sender, result) => drop(sender.send(result)),
                }
            }
            if closing {
                while let Ok((command, _)) = receiver.try_recv() {
                    reject_closed(command);
                }
                return;
            }
        }
        // Every handle was dropped without a close: flush what we have and stop.
        if let Err(error) = self.close() {
            tracing::error!(%error, "closing a dropped partition log failed");
        }
    }

    fn flush_deadline(&self) -> Option<Instant> {
        let flush_ms = self.shared.config().flush_ms?;
        self.oldest_unflushed
            .map(|t| t + Duration::from_millis(flush_ms))
    }

    fn apply(&mut self, group: Vec<Command>) -> Vec<Reply> {
        let config = self.shared.config();
        let now = now_ms();
        let mut replies = Vec::with_capacity(group.len());
        let mut durable_appends = false;
        let mut sync_command = false;
        let mut closing = false;
        let written_before = self.shared.log_end.load(Ordering::Acquire);
        for command in group {
            match command {
                Command::Append {
                    batch,
                    durable,
                    epoch,
                    reply,
                } => {
                    let result = self.append(batch, epoch, &config, now);
                    durable_appends |= durable && result.is_ok();
                    replies.push(Reply::Append(reply, result, durable));
                }
                Command::AppendReplica {
                    records,
                    epoch,
                    reply,
                } => {
                    let result = self.append_replica(&records, epoch, &config, now);
                    durable_appends |= result.is_ok();
                    replies.push(Reply::Append(reply, result, true));
                }
                Command::TruncateTo {
                    offset,
                    epoch,
                    reply,
                } => {
                    let result = self.truncate_to(offset, epoch, &config);
                    replies.push(Reply::Truncated(reply, result));
                }
                Command::Sync { reply } => {
                    sync_command = true;
                    replies.push(Reply::Done(reply, Ok(())));
                }
                Command::Roll { older_than, reply } => {
                    let result = self.roll_if(older_than, now);
                    replies.push(Reply::Done(reply, result));
                }
                Command::ExpireProducers { before_ms, reply } => {
                    let forgotten = self.producers.expire(before_ms);
                    if forgotten > 0 {
                        tracing::debug!(partition = %self.shared.dir.display(), forgotten, "idempotent producers expired");
                    }
                    replies.push(Reply::Done(reply, Ok(())));
                }
                Command::Close { reply } => {
                    closing = true;
                    replies.push(Reply::Done(reply, Ok(())));
                }
                Command::StartAt {
                    offset,
                    epoch,
                    reply,
                } => {
                    let result = match epoch {
                        Some(epoch) => self.check_following(epoch),
                        None => Ok(()),
                    }
                    .and_then(|()| self.start_at(offset));
                    replies.push(Reply::Done(reply, result));
                }
            }
        }
        let log_end = self.shared.log_end.load(Ordering::Acquire);
        if log_end != written_before {
            self.shared.appended.send_replace(log_end);
            self.shared.follow_log_end();
        }
        // flush.ms is checked here too: under steady load the writer never sits idle long
        // enough for its timer.
        let interval_due = config.flush_ms.is_some_and(|ms| {
            self.oldest_unflushed
                .is_some_and(|oldest| oldest.elapsed() >= Duration::from_millis(ms))
        });
        let policy_due = config
            .flush_messages
            .is_some_and(|n| self.unflushed_records >= n)
            || interval_due;
        // Durable appends are fsynced by the syncer, unless this group fsyncs here anyway.
        let synchronous = closing || sync_command || policy_due;
        let flushed = if closing {
            self.close()
        } else if synchronous {
            self.flush()
        } else {
            Ok(())
        };
        if durable_appends && !synchronous {
            replies = self.hand_to_syncer(replies, log_end);
        }
        let durable_end = *self.shared.durable_end.borrow();
        for reply in &mut replies {
            match reply {
                Reply::Append(_, result, needs_sync) => {
                    if let Ok(appended) = result {
                        appended.durable = appended.last_offset < durable_end;
                        if *needs_sync && let Err(e) = &flushed {
                            *result = Err(LogError::Offline {
                                reason: e.to_string(),
                            });
                        }
                    }
                }
                Reply::Done(_, result) => {
                    if result.is_ok()
                        && let Err(e) = &flushed
                    {
                        *result = Err(LogError::Offline {
                            reason: e.to_string(),
                        });
                    }
                }
                Reply::Truncated(..) => {}
            }
        }
        replies
    }

    /// Rolls the active segment if the next batch (`len` bytes, last offset `last_offset`)
    /// should start a new one.
    fn roll_for(
        &mut self,
        len: usize,
        last_offset: u64,
        config: &TopicConfig,
        now: i64,
    ) -> Result<(), LogError> {
        let too_big = self.active.size() + len as u64 > config.segment_bytes;
        let too_old = self
            .active
            .first_append_ms()
            .is_some_and(|first| now.saturating_sub(first) >= config.segment_ms as i64);
        let offsets_overflow = last_offset - self.active.base_offset >= u64::from(u32::MAX);
        if !self.active.is_empty() && (too_big || too_old || offsets_overflow) {
            self.roll().map_err(|e| self.shared.go_offline(e))?;
        }
        Ok(())
    }

    /// Replicated batches and truncation are for a follower of the fetch's leadership
    /// only: a fetch still under way when this node began to lead, or to follow another
    /// leader, must not touch its log.
    fn check_following(&self, epoch: i32) -> Result<(), LogError> {
        let role = self.shared.role();
        let current = self.shared.leader_epoch.load(Ordering::SeqCst);
        if role == Role::Follower && current == epoch {
            return Ok(());
        }
        Err(LogError::RoleChanged(format!(
            "a replica's write from leader epoch {epoch}, but this replica is {role:?} in epoch {current}"
        )))
    }

    /// Records `epoch` as starting at `start` if it is new, before its first batch lands.
    fn note_epoch(&self, epoch: i32, start: u64) -> Result<(), LogError> {
        self.shared
            .epochs()
            .assign(&self.shared.dir, epoch, start)
            .map_err(|e| self.shared.go_offline(e))
    }

    /// Appends a follower's copy of the leader's batches (see [`PartitionLog::append_replica`]).
    fn append_replica(
        &mut self,
        records: &Bytes,
        epoch: i32,
        config: &TopicConfig,
        now: i64,
    ) -> Result<Appended, LogError> {
        self.shared.check_online()?;
        self.check_following(epoch)?;
        // A tiered partition opened empty waits for its manifest before it takes appends,
        // lest it reuse offsets the tier holds. A copy of the leader's log continues the
        // leader's offsets instead: no wait, and no moving the start when the manifest
        // comes (once this node leads).
        self.shared.awaiting_remote.send_replace(false);
        let first = self.shared.log_end.load(Ordering::Acquire);
        let mut covered = 0;
        for (position, header) in batch::batch_positions(records) {
            let len = header.total_len() as usize;
            let bytes = &records[position..position + len];
            batch::validate(bytes)?;
            let expected = self.shared.log_end.load(Ordering::Acquire);
            if header.base_offset < 0 || header.base_offset as u64 != expected {
                return Err(LogError::InvalidBatch(batch::BatchError::Inconsistent(
                    format!(
                        "a replicated batch starts at offset {} but the log ends at {expected}",
                        header.base_offset
                    ),
                )));
            }
            let last_offset = header.last_offset() as u64;
            self.roll_for(len, last_offset, config, now)?;
            self.note_epoch(header.partition_leader_epoch, expected)?;
            self.active
                .append(bytes, &header, now, config.index_interval_bytes)
                .map_err(|e| self.shared.go_offline(e))?;
            self.shared.log_end.store(last_offset + 1, Ordering::SeqCst);
            self.producers.record(&header, expected);
            self.unflushed_records += header.records_count as u64;
            self.oldest_unflushed.get_or_insert_with(Instant::now);
            let metrics = &self.shared.metrics;
            metrics.appended_bytes.inc_by(len as u64);
            metrics.appended_batches.inc();
            metrics.appended_records.inc_by(header.records_count as u64);
            covered = position + len;
        }
        if covered != records.len() {
            let error = batch::validate(&records[covered..])
                .err()
                .unwrap_or_else(|| {
                    batch::BatchError::Inconsistent("bytes after the last whole batch".to_string())
                });
            return Err(LogError::InvalidBatch(error));
        }
        let end = self.shared.log_end.load(Ordering::Acquire);
        Ok(Appended {
            base_offset: first,
            last_offset: end.saturating_sub(1).max(first),
            log_append_time: None,
            durable: false,
            duplicate: end == first,
        })
    }

    /// Cuts the log back to end at `offset` (see [`PartitionLog::truncate_to`]).
    fn truncate_to(
        &mut self,
        offset: u64,
        epoch: i32,
        config: &TopicConfig,
    ) -> Result<u64, LogError> {
        self.shared.check_online()?;
        self.check_following(epoch)?;
        let log_end = self.shared.log_end.load(Ordering::Acquire);
        if offset >= log_end {
            return Ok(log_end);
        }
        let shared = self.shared.clone();
        let _maintenance = shared.maintenance.lock().unwrap_or_else(|e| e.into_inner());
        let dir = self.shared.dir.clone();
        let (list, local_start) = self.shared.snapshot();
        // The segment that will hold the new end: the last one starting below `offset`.
        let keep = list.partition_point(|s| s.base_offset < offset);
        let result = (|| -> Result<u64, LogError> {
            if keep == 0 || offset <= local_start {
                // Nothing local stays: start over, empty, at `offset`.
                for segment in list.iter().rev() {
                    segment.delete_files()?;
                }
                let next = Arc::new(Segment::create(&dir, offset)?);
                segment::sync_dir(&dir)
                    .map_err(|source| LogError::io(format!("fsync {}", dir.display()), source))?;
                self.replace_segments(vec![next], list.len(), offset);
                return Ok(offset);
            }
            let holder = &list[keep - 1];
            let mut cut = None;
            holder.for_each_batch(0, |position, _, header| {
                if header.last_offset() as u64 >= offset {
                    cut = Some(position);
                    return Ok(false);
                }
                Ok(true)
            })?;
            // Newest first: a crash part-way leaves a shorter log, never one with a gap.
            for segment in list[keep..].iter().rev() {
                segment.delete_files()?;
            }
            if let Some(position) = cut {
                holder.truncate_file(position)?;
            }
            segment::sync_dir(&dir)
                .map_err(|source| LogError::io(format!("fsync {}", dir.display()), source))?;
            let (reopened, _) =
                Segment::open(&dir, holder.base_offset, true, config.index_interval_bytes)?;
            let reopened = Arc::new(reopened);
            let end = reopened.next_offset();
            let mut kept: Vec<_> = list[..keep - 1].to_vec();
            kept.push(reopened);
            self.replace_segments(kept, list.len() - keep + 1, local_start);
            Ok(end)
        })();
        // Past the cut, any failure leaves state that does not match the disk: offline, so
        // that reopening recovers it.
        let end = result
            .and_then(|end| {
                producers::delete_snapshots_from(&dir, end + 1)?;
                let segments = self.shared.snapshot().0;
                self.producers = recover_producers(&dir, &segments, end)?;
                self.shared.epochs().truncate_from(&dir, end)?;
                Ok(end)
            })
            .map_err(|e| self.shared.go_offline(e))?;
        self.unflushed_records = 0;
        self.oldest_unflushed = None;
        self.shared.log_end.store(end, Ordering::SeqCst);
        self.shared.appended.send_replace(end);
        let lower = |value: &mut u64| {
            let changed = *value > end;
            *value = (*value).min(end);
            changed
        };
        self.shared.high_watermark.send_if_modified(lower);
        self.shared.durable_end.send_if_modified(lower);
        tracing::warn!(partition = %dir.display(), from = log_end, to = end, "log truncated to the leader's");
        Ok(end)
    }

    /// Puts `segments` in place of the whole list (`dropped` segments left it), the last
    /// one active.
    fn replace_segments(&mut self, segments: Vec<Arc<Segment>>, dropped: usize, log_start: u64) {
        let metrics = &self.shared.metrics;
        metrics.segments.dec_by(dropped as i64);
        metrics.segments.inc();
        let active = segments.last().cloned().expect("at least one segment");
        let mut current = self
            .shared
            .segments
            .write()
            .unwrap_or_else(|e| e.into_inner());
        current.list = segments;
        current.log_start = log_start;
        self.active = active;
    }

    fn append(
        &mut self,
        mut batch: BytesMut,
        epoch: Option<i32>,
        config: &TopicConfig,
        now: i64,
    ) -> Result<Appended, LogError> {
        self.shared.check_online()?;
        let current = self.shared.leader_epoch.load(Ordering::SeqCst);
        if let Some(epoch) = epoch
            && (self.shared.role() != Role::Leader || current != epoch)
        {
            return Err(LogError::RoleChanged(format!(
                "a write for leader epoch {epoch}, but this replica is {:?} in epoch {current}",
                self.shared.role()
            )));
        }
        let header = check_produced(&batch, config)?;
        if let SequenceCheck::Duplicate {
            base_offset,
            last_offset,
        } = self.producers.check(&header)?
        {
            return Ok(Appended {
                base_offset,
                last_offset,
                log_append_time: None,
                durable: false,
                duplicate: true,
            });
        }
        let base_offset = self.shared.log_end.load(Ordering::Acquire);
        let last_offset = base_offset + header.last_offset_delta as u64;
        self.roll_for(batch.len(), last_offset, config, now)?;
        if BatchHeader::parse(&batch)?.max_timestamp != header.max_timestamp {
            batch::set_max_timestamp(&mut batch, header.max_timestamp);
        }
        batch::stamp_offsets(&mut batch, base_offset as i64, epoch.unwrap_or(current));
        let log_append_time =
            (config.message_timestamp_type == TimestampType::LogAppendTime).then(|| {
                batch::stamp_log_append_time(&mut batch, now);
                now
            });
        let stamped = batch::BatchHeader::parse(&batch)?;
        self.note_epoch(stamped.partition_leader_epoch, base_offset)?;
        self.active
            .append(&batch, &stamped, now, config.index_interval_bytes)
            .map_err(|e| self.shared.go_offline(e))?;
        self.shared.log_end.store(last_offset + 1, Ordering::SeqCst);
        // The stamped header: its max timestamp is the append time under LogAppendTime.
        self.producers.record(&stamped, base_offset);
        self.unflushed_records += header.records_count as u64;
        self.oldest_unflushed.get_or_insert_with(Instant::now);
        let metrics = &self.shared.metrics;
        metrics.appended_bytes.inc_by(batch.len() as u64);
        metrics.appended_batches.inc();
        metrics.appended_records.inc_by(header.records_count as u64);
        Ok(Appended {
            base_offset,
            last_offset,
            log_append_time,
            durable: false,
            duplicate: false,
        })
    }

    /// Sends the group's successful durable appends to the syncer with a job covering
    /// everything written so far; returns the other replies, to be sent now.
    fn hand_to_syncer(&mut self, replies: Vec<Reply>, log_end: u64) -> Vec<Reply> {
        let mut now = Vec::with_capacity(replies.len());
        let mut job = SyncJob {
            segment: self.active.clone(),
            up_to: log_end,
            replies: Vec::new(),
        };
        for reply in replies {
            match reply {
                Reply::Append(sender, Ok(appended), true) => job.replies.push((sender, appended)),
                other => now.push(other),
            }
        }
        self.unflushed_records = 0;
        self.oldest_unflushed = None;
        if let Err(std::sync::mpsc::SendError(job)) = self.syncer.send(job) {
            // The syncer is gone (it never stops before the writer): fail safe.
            for (sender, _) in job.replies {
                let _ = sender.send(Err(LogError::Closed));
            }
        }
        now
    }

    fn flush(&mut self) -> Result<(), LogError> {
        let log_end = self.shared.log_end.load(Ordering::Acquire);
        // Not only what this thread left unsynced: a syncer job may still be running.
        if self.oldest_unflushed.is_none() && *self.shared.durable_end.borrow() >= log_end {
            return Ok(());
        }
        {
            let _sync = self
                .shared
                .sync_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let started = Instant::now();
            self.active.sync().map_err(|e| self.shared.go_offline(e))?;
            self.shared
                .metrics
                .fsync_seconds
                .observe(started.elapsed().as_secs_f64());
            // The syncer's fsync may have been the one told of a write error.
            self.shared.check_online()?;
            advance_durable_end(&self.shared, log_end);
        }
        self.unflushed_records = 0;
        self.oldest_unflushed = None;
        Ok(())
    }

    fn roll_if(&mut self, older_than: Option<Duration>, now: i64) -> Result<(), LogError> {
        self.shared.check_online()?;
        if self.active.is_empty() {
            return Ok(());
        }
        if let Some(age) = older_than {
            let old_enough = self
                .active
                .first_append_ms()
                .is_some_and(|first| now.saturating_sub(first) >= age.as_millis() as i64);
            if !old_enough {
                return Ok(());
            }
        }
        self.roll().map_err(|e| self.shared.go_offline(e))
    }

    /// Seals the active segment (fsync, index files) and creates the next one.
    fn roll(&mut self) -> Result<(), LogError> {
        self.oldest_unflushed.get_or_insert_with(Instant::now);
        self.flush()?;
        self.active.persist_current_index()?;
        let base = self.shared.log_end.load(Ordering::Acquire);
        producers::write_snapshot(&self.shared.dir, base, &self.producers)?;
        let next = Arc::new(Segment::create(&self.shared.dir, base)?);
        segment::sync_dir(&self.shared.dir).map_err(|source| {
            LogError::io(format!("fsync {}", self.shared.dir.display()), source)
        })?;
        self.shared
            .segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .list
            .push(next.clone());
        self.shared.metrics.segments.inc();
        self.active = next;
        Ok(())
    }

    /// Replaces every segment by an empty one at `offset`. Records below it are served by
    /// the remote, not refused: the start is not a DeleteRecords start.
    fn start_at(&mut self, offset: u64) -> Result<(), LogError> {
        self.shared.check_online()?;
        let log_end = self.shared.log_end.load(Ordering::Acquire);
        if offset < log_end {
            return Err(LogError::io(
                "start the log at a new offset",
                std::io::Error::other(format!("offset {offset} is below the log end {log_end}")),
            ));
        }
        if offset == log_end
            && self.active.is_empty()
            && self
                .shared
                .segments
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .list
                .len()
                == 1
        {
            return Ok(());
        }
        let _maintenance = self
            .shared
            .maintenance
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dir = &self.shared.dir;
        // The new segment's base is the new start (on reopen too); the old segments are
        // all below it, so a crash before they are gone leaves a valid log.
        let next = Arc::new(Segment::create(dir, offset)?);
        let old = {
            let mut segments = self
                .shared
                .segments
                .write()
                .unwrap_or_else(|e| e.into_inner());
            segments.log_start = offset;
            std::mem::replace(&mut segments.list, vec![next.clone()])
        };
        for segment in &old {
            segment.delete_files()?;
            self.shared.metrics.segments.dec();
        }
        self.shared.metrics.segments.inc();
        segment::sync_dir(dir)
            .map_err(|source| LogError::io(format!("fsync {}", dir.display()), source))?;
        self.active = next;
        self.producers = ProducerStates::default();
        self.shared.epochs().clear(dir)?;
        self.unflushed_records = 0;
        self.oldest_unflushed = None;
        self.shared.log_end.store(offset, Ordering::SeqCst);
        self.shared.appended.send_replace(offset);
        self.shared.high_watermark.send_replace(offset);
        advance_durable_end(&self.shared, offset);
        tracing::info!(partition = %dir.display(), start = offset, "log started at a new offset");
        Ok(())
    }

    fn close(&mut self) -> Result<(), LogError> {
        if self.shared.offline.get().is_some() {
            return Ok(()); // leave recovery to the next open
        }
        self.oldest_unflushed.get_or_insert_with(Instant::now);
        self.flush()?;
        self.active.persist_current_index()?;
        let log_end = self.shared.log_end.load(Ordering::Acquire);
        producers::write_snapshot(&self.shared.dir, log_end, &self.producers)?;
        let marker = self.shared.dir.join(CLEAN_SHUTDOWN_MARKER);
        segment::write_durably(&marker, b"")?;
        self.shared.closed.store(true, Ordering::Release);
        Ok(())
    }
}

fn reject_closed(command: Command) {
    match command {
        Command::Append { reply, .. } | Command::AppendReplica { reply, .. } => {
            drop(reply.send(Err(LogError::Closed)))
        }
        Command::TruncateTo { reply, .. } => drop(reply.send(Err(LogError::Closed))),
        Command::Sync { reply }
        | Command::Roll { reply, .. }
        | Command::ExpireProducers { reply, .. }
        | Command::StartAt { reply, .. }
        | Command::Close { reply } => drop(reply.send(Err(LogError::Closed))),
    }
}
