//! Durable storage of the metadata quorum: openraft's log store and state machine, on local
//! disk in one directory (`<data dir>/controller/`).
//!
//! # Overview
//!
//! [`open_storage`] opens (or creates) the directory and returns the two halves openraft
//! drives: the [`LogStore`] (the Raft log, the vote, the committed and the last purged log
//! id) and the [`StateMachineStore`] (the [`Metadata`](crate::Metadata) with the last applied
//! log id and membership, and the snapshot). Both keep everything in memory and write every
//! change through to disk before reporting it done; the metadata log is small and is purged
//! behind each snapshot.
//!
//! # On-disk layout
//!
//! ```text
//! <dir>/lock            held (flock) while the stores are open: one opener per directory
//! <dir>/raft.log        the log: an 8-byte header `RNLRLOG1`, then one record per entry
//! <dir>/vote.json       the last saved vote (JSON), absent before the first vote
//! <dir>/committed.json  the last saved committed log id (JSON, may be `null`)
//! <dir>/purged.json     the last purged log id (JSON), absent before the first purge
//! <dir>/snapshot.json   the last snapshot (JSON), absent before the first snapshot
//! <dir>/*.tmp           a replacement being written; removed on open
//! ```
//!
//! A log record is `len: u32 LE | crc: u32 LE | payload: len bytes`, where the payload is
//! the serde_json encoding of an `openraft::Entry<TypeConfig>` and `crc` is the CRC-32C of
//! the four `len` bytes followed by the payload. Records follow each other without gaps,
//! their indexes increase (openraft appends consecutive indexes), and a payload is at most
//! [`MAX_RECORD_LEN`] bytes. Entries at or before the purged id are never appended; an
//! append that overlaps the log replaces the overlapped suffix.
//!
//! `snapshot.json` holds `{format, snapshot_id, last_applied, last_membership, metadata}`;
//! its bytes are also exactly the snapshot data openraft sends to a lagging follower.
//!
//! # Consistency
//!
//! - Appends are written and `fdatasync`ed before openraft's flush callback is called; the
//!   vote, committed and purged ids are written to a temporary file, fsynced, renamed over
//!   the old file, and the directory is fsynced, before the call returns.
//! - `truncate` shortens the log file (`ftruncate` + fsync). `purge` saves the purged id
//!   first, then rewrites the log file without the purged entries (temporary file + rename),
//!   so a crash between the two leaves stale entries that the next open skips.
//! - Snapshots are replaced atomically (temporary file + rename + directory fsync). A
//!   snapshot built from an older state never replaces a newer one (building runs in a task
//!   of its own, concurrently with applying and installing).
//! - Applying does not write: after a restart the state machine starts from the snapshot and
//!   openraft re-applies the committed log after it.
//! - All writes run on tokio's blocking pool (fsync must not stall a runtime thread); the
//!   in-memory copies are updated on the same blocking thread right after the write, so a
//!   cancelled call leaves memory and disk agreeing.
//!
//! # Failure and crash consistency
//!
//! - A write that fails marks the log store failed: every later write is refused until it
//!   is reopened, since what reached the disk is then unknown (openraft stops the node on a
//!   storage error anyway).
//! - On open, a torn tail of the log — an incomplete last record, a last record whose
//!   checksum fails, or a zero-filled tail — is what a crash during an append leaves; it was
//!   never acknowledged, so it is cut off with a warning. A checksum failure with data after
//!   it, an impossible length, an undecodable record, indexes that do not increase, a
//!   missing `raft.log` next to a vote or log pointers, or an unreadable JSON file is
//!   corruption: opening fails with [`StoreError::Corrupt`] naming the file, and nothing is
//!   changed.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod durable;
mod log;
mod state_machine;

pub use log::{CommittedIndex, LOG_FILE, LogReader, LogStore, MAX_RECORD_LEN};
pub use state_machine::{SNAPSHOT_FILE, SnapshotBuilder, StateMachineStore};

/// Why the controller's storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{action} {path}: {error}")]
    Io {
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    /// A file's content is not what this module writes; nothing was changed.
    #[error("corrupt {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("controller directory {path} is already open (by this or another process)")]
    Locked { path: PathBuf },
    #[error("encode {what}: {error}")]
    Encode {
        what: &'static str,
        error: serde_json::Error,
    },
    /// openraft asked for something the log cannot hold (a bug, not a disk problem).
    #[error("invalid log operation: {0}")]
    Invalid(String),
    /// An earlier write failed; what is on disk is unknown until the store is reopened.
    #[error("the controller log store failed earlier and refuses writes until reopened")]
    Failed,
    #[error("storage task stopped: {0}")]
    TaskStopped(String),
}

impl StoreError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.to_path_buf();
        move |error| StoreError::Io {
            action,
            path,
            error,
        }
    }
}

/// Opens the controller storage in `dir` (created if missing): the log store and the state
/// machine, restored from what the last run left. Fails if the directory is open already,
/// or if a file in it is corrupt; a torn tail of the log is cut off.
pub async fn open_storage(dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let dir = dir.to_path_buf();
    durable::blocking(move || {
        durable::create_dir(&dir)?;
        let lock = Arc::new(durable::DirLock::acquire(&dir)?);
        durable::remove_temp_files(&dir)?;
        let log_store = LogStore::open(&dir, lock.clone())?;
        let state_machine = StateMachineStore::open(&dir, lock)?;
        Ok((log_store, state_machine))
    })
    .await
}
