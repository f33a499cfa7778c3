//! runnel-log: the partition log.
//!
//! A partition is a directory of segments, each a file of Kafka v2 record batches exactly as
//! they travel on the wire (base offset stamped by the log), with a sparse offset index and
//! a time index beside it. See:
//! - [`batch`] for the batch format and its validation, [`compression`] for the codecs;
//! - [`segment`](crate::segment) (private) for the on-disk layout and recovery of one segment;
//! - [`PartitionLog`] for the single writer, group commit, reads, offsets and retention;
//! - [`cleaner`] for compaction;
//! - [`LogManager`] for the node's set of partitions and the periodic maintenance.
//!
//! Invariants: offsets are assigned contiguously by the one writer and never change (not
//! even by compaction); readers see only whole batches below the high watermark and never
//! wait for the writer; an append is reported durable only after an fsync covered it;
//! nothing read from disk can make the log panic.

pub mod batch;
pub mod cleaner;
pub mod compression;
mod epochs;
mod error;
mod index;
mod manager;
mod metrics;
mod partition;
pub mod producers;
pub mod remote;
mod segment;
pub mod space;

pub use batch::{BatchAppender, BatchBuilder, BatchEncoder, BatchError, BatchHeader, NewRecord};
pub use cleaner::CompactionOutcome;
pub use compression::Compression;
pub use error::LogError;
pub use manager::{
    LogManager, MaintenanceReport, MaintenanceSchedule, TopicPartition, is_safe_topic_name,
};
pub use metrics::LogMetrics;
pub use partition::{
    Appended, PartitionLog, PendingAppend, ReadResult, RetentionOutcome, Role, SegmentInfo, now_ms,
};
pub use remote::{Remote, RemoteAttacher, RemoteFind, RemoteLog, RemoteRead};
pub use space::DiskSpace;
