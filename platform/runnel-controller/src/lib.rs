//! runnel-controller: the cluster's metadata, changed only through the Raft log.
//!
//! - [`metadata`]: the state machine: nodes, topics, partitions and the room later
//!   subsystems fill (functions, connectors, users, ACLs), and the commands that change it.
//!   Applying a command is deterministic (no clock, no randomness: a topic's UUID comes in
//!   the command), so every voter reaches the same state from the same log.
//! - [`types`]: the openraft type configuration (log entries carry [`Command`]s).
//! - [`store`]: the durable openraft log store and state machine, in one directory on local
//!   disk; the metadata is published on a `watch` channel after every change.
//! - [`liveness`]: the leader fences nodes that stop heartbeating and unfences them when
//!   they are back.
//! - [`controller`]: the Raft node: start (one voter, or a quorum with learners), propose, follow the
//!   metadata, report the Raft state.
//!
//! Raft: openraft 0.9 (the stable line) with `storage-v2`, which lets the crate implement
//! `RaftLogStorage` and `RaftStateMachine` directly. The 0.10 line is still alpha and its
//! storage API is still moving; 0.9 has the conformance suite this crate's storage runs.

pub mod controller;
pub mod liveness;
pub mod metadata;
pub mod store;
pub mod types;

pub use controller::{
    Controller, ControllerError, ControllerStatus, ForwardFuture, Forwarder, PROPOSE_TIMEOUT,
    propose_locally,
};
pub use metadata::{
    Applied, Command, DEFAULT_POLL_INTERVAL_MS, FUNCTION_FAILURE_POLICIES, FUNCTION_KINDS,
    FunctionLimits, FunctionSpec, Metadata, MetadataError, NodeId, NodeInfo, NodeRoles,
    PartitionMeta, Response, TopicMeta,
};
pub use store::{LogStore, StateMachineStore, StoreError, open_storage};
pub use types::{ApplyResponse, TypeConfig};
