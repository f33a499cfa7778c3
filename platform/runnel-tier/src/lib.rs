//! Tiered storage: sealed log segments in an object store, as Parquet files, listed by
//! per-partition manifests (DESIGN §4).
//!
//! - [`columnar`]: a segment's batches as one Parquet file (the row layout is
//!   `schemas/parquet/README.md`); [`rebuild`]: a row group of such a file back into
//!   record batches, straight from its column pages.
//! - [`manifest`]: which files hold a partition's history, as numbered versions written
//!   create-only, so a deposed leader cannot overwrite a newer one.
//! - [`upload`]: the leader's loop that uploads each sealed segment at or below the high
//!   watermark, then records it in the manifest; it attaches each partition's remote half
//!   to its log and applies `retention.ms`/`retention.bytes` to the remote segments.
//! - [`read`]: fetches below the local log start, one row group at a time, through a disk
//!   cache of rebuilt batches.
//! - [`store`]: the object store from configuration (a directory or an S3 endpoint), with
//!   its startup check.
//!
//! # Object layout
//! Hive-style, so a query engine reads a topic with one glob:
//! `<prefix>/topics/<topic>/partition=<p>/<base:020>-<last:020>-<epoch>.parquet` and
//! `<prefix>/topics/<topic>/partition=<p>/manifest/<version:020>.json`.
//!
//! # Failure behaviour
//! Nothing here deletes local data. An upload that fails at any point leaves no manifest
//! entry, so readers never see it; a file written without its manifest entry is written
//! again (same key) on the next attempt. Errors are retried with backoff and jitter by the
//! upload loop and counted in [`TierMetrics`].

pub mod columnar;
pub mod manifest;
pub mod read;
pub mod rebuild;
pub mod store;
pub mod upload;

use object_store::path::Path as ObjectPath;

pub use manifest::{Manifest, RemoteSegment};
pub use read::{ReadMetrics, TierCache, TierReader};
pub use store::{StoreConfig, open_store};
pub use upload::{TierMetrics, UploadTarget, Uploader};

/// Why a tier operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("record batch: {0}")]
    Batch(#[from] runnel_log::BatchError),
    #[error("log: {0}")]
    Log(#[from] runnel_log::LogError),
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("{0}")]
    Format(String),
}

/// The object keys of one partition under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPaths {
    dir: String,
}

impl PartitionPaths {
    /// `prefix` may be empty; no part may hold a `/` of its own but the prefix.
    pub fn new(prefix: &str, topic: &str, partition: i32) -> PartitionPaths {
        let prefix = prefix.trim_matches('/');
        let dir = if prefix.is_empty() {
            format!("topics/{topic}/partition={partition}")
        } else {
            format!("{prefix}/topics/{topic}/partition={partition}")
        };
        PartitionPaths { dir }
    }

    /// The file of the segment holding offsets `base..=last`, uploaded in leader `epoch`.
    pub fn segment(&self, base: u64, last: u64, epoch: i32) -> ObjectPath {
        ObjectPath::from(format!(
            "{}/{base:020}-{last:020}-{epoch}.parquet",
            self.dir
        ))
    }

    /// The directory of the manifest versions.
    pub fn manifests(&self) -> ObjectPath {
        ObjectPath::from(format!("{}/manifest", self.dir))
    }

    pub fn manifest(&self, version: u64) -> ObjectPath {
        ObjectPath::from(format!("{}/manifest/{version:020}.json", self.dir))
    }
}
