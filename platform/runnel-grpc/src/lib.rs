//! runnel-grpc: Runnel's gRPC services.
//!
//! - [`api`]: the public `runnel.v1` API (Producer, Consumer, Admin) on `grpc.listen`.
//! - [`cluster`]: the internal cluster RPC: Raft between controller nodes and the
//!   forwarding of metadata proposals to the leader.

pub mod api;
pub mod cluster;

/// Code generated from `schemas/proto/runnel/cluster/v1/cluster.proto`.
pub mod proto {
    tonic::include_proto!("runnel.cluster.v1");
}
