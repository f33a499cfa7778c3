//! The state machine: the [`Metadata`] with the last applied log id and membership, and the
//! snapshot file that makes them durable (see the layout in [`crate::store`]).
//!
//! Applying changes memory only; the state survives a restart through the snapshot plus the
//! committed log, which openraft re-applies. Every apply that ran a command, and every
//! installed snapshot, publishes the new metadata on a `watch` channel
//! ([`StateMachineStore::subscribe`]).

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::StoreError;
use super::durable::{self, DirLock, lock};
use crate::metadata::{Metadata, NodeId};
use crate::types::{
    ApplyResponse, Entry, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig,
};

/// The snapshot file's name in the controller directory.
pub const SNAPSHOT_FILE: &str = "snapshot.json";
const SNAPSHOT_FORMAT: u32 = 1;

/// The metadata state machine; openraft's [`RaftStateMachine`].
pub struct StateMachineStore {
    metadata: Arc<Metadata>,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    snapshots: Arc<Snapshots>,
    updates: watch::Sender<Arc<Metadata>>,
    _lock: Arc<DirLock>,
}

/// Builds a snapshot of the state at the time it was made, while the state machine moves on.
pub struct SnapshotBuilder {
    metadata: Arc<Metadata>,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    snapshots: Arc<Snapshots>,
}

/// The snapshot file and its copy in memory.
struct Snapshots {
    dir: PathBuf,
    /// Held (on the blocking pool only) while the file is replaced.
    writing: Mutex<()>,
    current: Mutex<Option<StoredSnapshot>>,
}

#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    /// The file's content, which is also the snapshot data sent to followers.
    bytes: Vec<u8>,
}

/// `snapshot.json`, generic over owning or borrowing the metadata.
#[derive(Serialize, Deserialize)]
struct SnapshotContent<M> {
    format: u32,
    snapshot_id: String,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    metadata: M,
}

impl StateMachineStore {
    /// Restores the state machine from the snapshot in `dir`, if any (blocking).
    pub(super) fn open(
        dir: &Path,
        dir_lock: Arc<DirLock>,
    ) -> Result<StateMachineStore, StoreError> {
        let path = dir.join(SNAPSHOT_FILE);
        let (metadata, current) = match durable::read_optional(&path)? {
            None => (Metadata::default(), None),
            Some(bytes) => {
                let (meta, metadata) = decode_snapshot(&bytes)
                    .map_err(|reason| StoreError::Corrupt { path, reason })?;
                (metadata, Some(StoredSnapshot { meta, bytes }))
            }
        };
        let (last_applied, last_membership) = match &current {
            Some(snapshot) => (
                snapshot.meta.last_log_id,
                snapshot.meta.last_membership.clone(),
            ),
            None => (None, StoredMembership::default()),
        };
        tracing::info!(
            snapshot_last_index = last_applied.map(|id| id.index),
            topics = metadata.topics.len(),
            nodes = metadata.nodes.len(),
            "restored the controller state machine"
        );
        let metadata = Arc::new(metadata);
        let (updates, _) = watch::channel(metadata.clone());
        Ok(StateMachineStore {
            metadata,
            last_applied,
            last_membership,
            snapshots: Arc::new(Snapshots {
                dir: dir.to_path_buf(),
                writing: Mutex::new(()),
                current: Mutex::new(current),
            }),
            updates,
            _lock: dir_lock,
        })
    }

    /// Follows the metadata: the receiver sees a new value after every applied command and
    /// every installed snapshot. Subscribe before handing the store to openraft.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Metadata>> {
        self.updates.subscribe()
    }

    /// The metadata as applied so far.
    pub fn metadata(&self) -> Arc<Metadata> {
        self.metadata.clone()
    }

    fn publish(&self) {
        self.updates.send_replace(self.metadata.clone());
    }
}

impl Snapshots {
    /// Makes `snapshot` the current one, durably (blocking). Unless `force`d, a snapshot
    /// older than the current one is dropped (a slow build racing a newer install).
    fn store(&self, snapshot: StoredSnapshot, force: bool) -> Result<(), StoreError> {
        let _writing = lock(&self.writing);
        if !force
            && lock(&self.current)
                .as_ref()
                .is_some_and(|current| current.meta.last_log_id > snapshot.meta.last_log_id)
        {
            tracing::info!(
                snapshot_id = %snapshot.meta.snapshot_id,
                "a newer snapshot exists already; not replacing it"
            );
            return Ok(());
        }
        durable::write_atomic(&self.dir, SNAPSHOT_FILE, &snapshot.bytes)?;
        *lock(&self.current) = Some(snapshot);
        Ok(())
    }
}

/// Reads a snapshot's bytes: its meta and metadata, or why they are not a snapshot.
fn decode_snapshot(bytes: &[u8]) -> Result<(SnapshotMeta, Metadata), String> {
    let content: SnapshotContent<Metadata> =
        serde_json::from_slice(bytes).map_err(|error| error.to_string())?;
    if content.format != SNAPSHOT_FORMAT {
        return Err(format!(
            "snapshot format {} is not the supported {SNAPSHOT_FORMAT}",
            content.format
        ));
    }
    let meta = SnapshotMeta {
        last_log_id: content.last_applied,
        last_membership: content.last_membership,
        snapshot_id: content.snapshot_id,
    };
    Ok((meta, content.metadata))
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError<NodeId>> {
        let snapshot_id = match self.last_applied {
            Some(id) => format!(
                "{}-{}-{}",
                id.leader_id.term,
                id.index,
                uuid::Uuid::new_v4().simple()
            ),
            None => format!("empty-{}", uuid::Uuid::new_v4().simple()),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id: snapshot_id.clone(),
        };
        let content = SnapshotContent {
            format: SNAPSHOT_FORMAT,
            snapshot_id,
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            metadata: &*self.metadata,
        };
        let bytes = serde_json::to_vec(&content).map_err(|error| {
            StorageIOError::write_snapshot(
                Some(meta.signature()),
                &StoreError::Encode {
                    what: "snapshot",
                    error,
                },
            )
        })?;
        let snapshots = self.snapshots.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            bytes: bytes.clone(),
        };
        durable::blocking(move || snapshots.store(stored, false))
            .await
            .map_err(|error| StorageIOError::write_snapshot(Some(meta.signature()), &error))?;
        tracing::info!(
            snapshot_id = %meta.snapshot_id,
            last_index = meta.last_log_id.map(|id| id.index),
            bytes = bytes.len(),
            "built a controller snapshot"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), StorageError<NodeId>> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut ran_a_command = false;
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => ApplyResponse::Internal,
                EntryPayload::Normal(command) => {
                    ran_a_command = true;
                    ApplyResponse::Command(Arc::make_mut(&mut self.metadata).apply(&command))
                }
                EntryPayload::Membership(membership) => {
                    self.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    ApplyResponse::Internal
                }
            };
            responses.push(response);
        }
        if ran_a_command {
            self.publish();
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            metadata: self.metadata.clone(),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let read_error = |reason: String| {
            StorageIOError::read_snapshot(
                Some(meta.signature()),
                &StoreError::Corrupt {
                    path: PathBuf::from("(received snapshot)"),
                    reason,
                },
            )
        };
        let (content_meta, metadata) = decode_snapshot(&bytes).map_err(read_error)?;
        if content_meta != *meta {
            return Err(read_error(format!(
                "the data is of snapshot {content_meta}, the meta says {meta}"
            ))
            .into());
        }
        let snapshots = self.snapshots.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            bytes,
        };
        durable::blocking(move || snapshots.store(stored, true))
            .await
            .map_err(|error| StorageIOError::write_snapshot(Some(meta.signature()), &error))?;
        self.metadata = Arc::new(metadata);
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.publish();
        tracing::info!(
            snapshot_id = %meta.snapshot_id,
            last_index = meta.last_log_id.map(|id| id.index),
            "installed a controller snapshot"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError<NodeId>> {
        Ok(lock(&self.snapshots.current)
            .clone()
            .map(|stored| Snapshot {
                meta: stored.meta,
                snapshot: Box::new(Cursor::new(stored.bytes)),
            }))
    }
}
