//! runnel-grpc: Runnel's gRPC services.
//!
//! For now, the internal cluster RPC ([`cluster`]): Raft between controller nodes and the
//! forwarding of metadata proposals to the leader. The public `runnel.v1` API comes with
//! its own issue.

pub mod cluster;

/// Code generated from `schemas/proto/runnel/cluster/v1/cluster.proto`.
pub mod proto {
    tonic::include_proto!("runnel.cluster.v1");
}
