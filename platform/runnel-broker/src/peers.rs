//! Partitions led by other nodes: what a node's own components (functions, connectors)
//! need when the partition they write or read is not led here.
//!
//! Kafka and gRPC clients are told which node leads a partition and go there themselves;
//! a function's executor cannot, so the broker forwards its writes and reads to the
//! leader over the cluster RPC ([`Peers`], implemented by runnel-grpc). The leader
//! applies them exactly as its own frontends would: the same checks, the same
//! idempotent-producer deduplication.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use runnel_controller::NodeId;
use runnel_log::ReadResult;

use crate::BrokerError;

/// A boxed future of a peer call.
pub type PeerFuture<T> = Pin<Box<dyn Future<Output = Result<T, BrokerError>> + Send>>;

/// An offset commit sent to the group's coordinator on another node.
#[derive(Debug, Clone)]
pub struct OffsetCommit {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub metadata: String,
    pub commit_ms: i64,
}

/// Calls to other nodes, each at its cluster address.
pub trait Peers: Send + Sync {
    /// Appends `records` (whole batches) to a partition `node` leads.
    fn produce(
        &self,
        node: NodeId,
        address: String,
        topic: String,
        partition: i32,
        records: Bytes,
        durable: bool,
    ) -> PeerFuture<()>;

    /// Reads whole batches from `offset` (or the log start, if later) of a partition
    /// `node` leads.
    fn read(
        &self,
        node: NodeId,
        address: String,
        topic: String,
        partition: i32,
        offset: u64,
        max_bytes: usize,
    ) -> PeerFuture<ReadResult>;

    /// A follower's fetch from `node`, the partition's leader.
    fn fetch_replica(
        &self,
        node: NodeId,
        address: String,
        fetch: crate::replication::ReplicaFetch,
    ) -> PeerFuture<crate::replication::ReplicaFetched>;

    /// Commits a group's offset at its coordinator, `node`.
    fn commit_offset(&self, node: NodeId, address: String, commit: OffsetCommit) -> PeerFuture<()>;
}
