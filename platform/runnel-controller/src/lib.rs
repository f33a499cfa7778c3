//! runnel-controller: the cluster's metadata, changed only through the Raft log.
//!
//! - [`metadata`]: the state machine: nodes, topics, partitions and the room later
//!   subsystems fill (functions, connectors, users, ACLs), and the commands that change it.
//!   Applying a command is deterministic (no clock, no randomness: a topic's UUID comes in
//!   the command), so every voter reaches the same state from the same log.
//! - `store` (to come in this crate): the durable openraft log store and state machine.
//!
//! Raft: openraft 0.9 (the stable line) with `storage-v2`, which lets the crate implement
//! `RaftLogStorage` and `RaftStateMachine` directly. The 0.10 line is still alpha and its
//! storage API is still moving; 0.9 has the conformance suite this crate's storage runs.

pub mod metadata;

pub use metadata::{
    Applied, Command, Metadata, MetadataError, NodeId, NodeInfo, NodeRoles, PartitionMeta,
    Response, TopicMeta,
};
