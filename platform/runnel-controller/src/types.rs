//! The openraft type configuration of the metadata quorum.
//!
//! The log carries [`Command`]s; applying an entry returns an [`ApplyResponse`]. Nodes are
//! named by their [`NodeId`] and reached at [`BasicNode::addr`], the node's cluster RPC
//! address. Snapshots travel as one in-memory buffer (the metadata is small): the bytes are
//! exactly the content of the snapshot file (see [`crate::store`]).

use std::io::Cursor;

use openraft::BasicNode;
use serde::{Deserialize, Serialize};

use crate::metadata::{Command, NodeId, Response};

openraft::declare_raft_types!(
    /// The openraft types of Runnel's metadata quorum.
    pub TypeConfig:
        D = Command,
        R = ApplyResponse,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// What applying one log entry returned.
///
/// openraft asks the state machine for a response to every entry, including the blank entry
/// a new leader appends and membership changes; only a client's [`Command`] has an outcome,
/// so [`Response`] alone cannot be the response type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyResponse {
    /// The outcome of a client's command, as [`crate::Metadata::apply`] returned it.
    Command(Response),
    /// A blank or membership entry: openraft's own, with nothing to report.
    Internal,
}

impl ApplyResponse {
    /// The command's outcome, or `None` for openraft's own entries.
    pub fn into_command(self) -> Option<Response> {
        match self {
            ApplyResponse::Command(response) => Some(response),
            ApplyResponse::Internal => None,
        }
    }
}

/// A log entry of the metadata log.
pub type Entry = openraft::Entry<TypeConfig>;
/// The id of a log entry: the leader that proposed it and its index.
pub type LogId = openraft::LogId<NodeId>;
/// A node's vote: the term and the candidate it voted for.
pub type Vote = openraft::Vote<NodeId>;
/// A membership configuration and the id of the log entry that set it.
pub type StoredMembership = openraft::StoredMembership<NodeId, BasicNode>;
/// What a snapshot covers: its last log id, membership and id.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, BasicNode>;
/// A snapshot with its data.
pub type Snapshot = openraft::Snapshot<TypeConfig>;
