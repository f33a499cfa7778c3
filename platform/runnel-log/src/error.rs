//! The errors of the partition log.

use std::io;
use std::path::PathBuf;

use crate::batch::BatchError;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The batch was refused; nothing of it was written.
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// The batch was refused; nothing of it was written.
    #[error("record batch of {size} bytes exceeds max.message.bytes ({max})")]
    BatchTooLarge { size: usize, max: u64 },
    #[error("offset {offset} is out of range: the log holds [{log_start}, {log_end})")]
    OffsetOutOfRange {
        offset: u64,
        log_start: u64,
        log_end: u64,
    },
    /// A sealed segment (or a batch about to be served) failed validation. The partition
    /// refuses to serve rather than return bad data.
    #[error("corrupt segment {path} at byte {position}: {reason}")]
    CorruptSegment {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    /// The cause is part of the message, not a `source()`, so printing the error chain does
    /// not repeat it.
    #[error("{action}: {cause}")]
    Io { action: String, cause: io::Error },
    /// An earlier write, fsync or corruption failure took the partition offline; it serves
    /// nothing until it is reopened (and so recovered).
    #[error("partition is offline after an earlier failure: {reason}")]
    Offline { reason: String },
    #[error("invalid topic name `{0}`: use 1 to 249 of [a-zA-Z0-9._-], not `.` or `..`")]
    InvalidTopicName(String),
    #[error("partition log is closed")]
    Closed,
    /// Tiered storage could not serve or report records; nothing wrong was returned, and
    /// asking again may succeed.
    #[error("tiered storage: {0}")]
    Remote(String),
    /// The disk holding the log has less free space than the floor (`log.min_free_bytes`);
    /// nothing was written, and the append may succeed once space is freed.
    #[error(
        "the disk holding the log has {free} bytes free, below the floor of {floor} bytes (log.min_free_bytes)"
    )]
    DiskFull { free: u64, floor: u64 },
    /// An idempotent producer's batch does not follow its previous one; nothing was written.
    #[error("producer {producer_id}: expected sequence {expected}, received {received}")]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        received: i32,
    },
    /// A batch from an older epoch of a producer that has since started a newer one.
    #[error("producer {producer_id}: epoch {epoch} is older than the current epoch {current}")]
    InvalidProducerEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    /// A replicated partition's write for a role this log no longer has: a leader's append
    /// after it began following (or in another epoch), a replica's after it began leading.
    #[error("this replica's role changed: {0}")]
    RoleChanged(String),
}

impl LogError {
    pub(crate) fn io(action: impl Into<String>, source: io::Error) -> LogError {
        LogError::Io {
            action: action.into(),
            cause: source,
        }
    }

    /// Whether the request may succeed if sent again unchanged. Invalid input never will;
    /// an offline or closed partition may once it is reopened elsewhere.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            LogError::Offline { .. }
                | LogError::Closed
                | LogError::Io { .. }
                | LogError::Remote(_)
                | LogError::DiskFull { .. }
                | LogError::RoleChanged(_)
        )
    }
}
