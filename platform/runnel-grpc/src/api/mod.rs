//! The public gRPC API (`runnel.v1`): Producer, Consumer, Admin and Functions, thin
//! adapters over the [`Broker`], the [`GroupService`] and [`runnel_functions::Functions`], with `grpc.health.v1` and server reflection so
//! grpcurl-style tools work. Served on `grpc.listen` (9093).
//!
//! Errors are gRPC statuses with a readable message: NOT_FOUND (unknown topic, partition
//! or group), INVALID_ARGUMENT, ALREADY_EXISTS, RESOURCE_EXHAUSTED (records larger than the
//! topic takes), OUT_OF_RANGE (an offset outside the log), FAILED_PRECONDITION (another
//! node leads the partition or coordinates the group: the message names its gRPC address;
//! a group that still has members), UNAVAILABLE (retriable: not ready, offline, no quorum).

mod admin;
mod consumer;
mod functions;
mod group_stream;
mod producer;
mod records;

use std::net::SocketAddr;
use std::sync::Arc;

use runnel_broker::groups::{ConsumerGroupError, GroupError, GroupService, GroupServiceError};
use runnel_broker::{Broker, BrokerError};
use runnel_controller::{ControllerError, MetadataError, NodeId};
use runnel_log::LogError;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

/// Code generated from `schemas/proto/runnel/v1/*.proto`.
pub mod pb {
    tonic::include_proto!("runnel.v1");
}

/// The encoded descriptors of `runnel.v1`, for server reflection.
const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/runnel_v1_descriptor.bin"));

/// The largest gRPC message taken or sent (tonic's default of 4 MiB is too small for
/// batches).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The largest deploy taken: above any component limit, so an oversized component gets
/// the function host's own error naming the limit rather than a transport error.
const MAX_DEPLOY_BYTES: usize = 128 << 20;

/// What the services answer through.
#[derive(Clone)]
pub struct Backends {
    pub broker: Arc<Broker>,
    pub groups: Arc<GroupService>,
    pub functions: Arc<runnel_functions::Functions>,
}

/// The running API server.
pub struct ApiServer {
    pub address: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl ApiServer {
    /// Serves the API on `listener` until [`ApiServer::stop`].
    pub async fn start(listener: TcpListener, backends: Backends) -> std::io::Result<ApiServer> {
        let address = listener.local_addr()?;
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<pb::producer_server::ProducerServer<producer::ProducerService>>()
            .await;
        health
            .set_serving::<pb::consumer_server::ConsumerServer<consumer::ConsumerService>>()
            .await;
        health
            .set_serving::<pb::admin_server::AdminServer<admin::AdminService>>()
            .await;
        health
            .set_serving::<pb::functions_server::FunctionsServer<functions::FunctionsService>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(DESCRIPTORS)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(std::io::Error::other)?;
        let stop = CancellationToken::new();
        let router = tonic::transport::Server::builder()
            // HTTP/2's default 64 KiB windows held a producer's stream to ~60 MB/s.
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(32 << 20))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(
                pb::producer_server::ProducerServer::new(producer::ProducerService::new(
                    backends.clone(),
                ))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                pb::consumer_server::ConsumerServer::new(consumer::ConsumerService::new(
                    backends.clone(),
                ))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                pb::functions_server::FunctionsServer::new(functions::FunctionsService::new(
                    backends.clone(),
                ))
                .max_decoding_message_size(MAX_DEPLOY_BYTES),
            )
            .add_service(pb::admin_server::AdminServer::new(
                admin::AdminService::new(backends),
            ));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, stopping.cancelled_owned())
                .await
        });
        Ok(ApiServer {
            address,
            stop,
            task,
        })
    }

    /// Stops taking calls and waits for the server to end.
    pub async fn stop(self) {
        self.stop.cancel();
        match self.task.await {
            Ok(Err(error)) => tracing::warn!(%error, "the gRPC API server failed"),
            Err(error) => tracing::warn!(%error, "the gRPC API server task failed"),
            Ok(Ok(())) => {}
        }
    }
}

/// `node`'s gRPC address as the metadata has it.
fn grpc_address(broker: &Broker, node: Option<NodeId>) -> String {
    node.and_then(|id| broker.metadata().nodes.get(&id).map(|n| n.grpc.clone()))
        .map_or_else(
            || "no leader".to_string(),
            |address| format!("node at {address}"),
        )
}

/// The status for a broker error.
pub fn broker_status(broker: &Broker, error: BrokerError) -> Status {
    let message = error.to_string();
    let code = match &error {
        BrokerError::UnknownTopic(_) | BrokerError::UnknownTopicOrPartition { .. } => {
            Code::NotFound
        }
        BrokerError::NotLeader { leader, .. } => {
            return Status::failed_precondition(format!(
                "{message}; the leader: {}",
                grpc_address(broker, *leader)
            ));
        }
        BrokerError::NotAvailable { .. } => Code::Unavailable,
        BrokerError::TransactionsUnsupported => Code::InvalidArgument,
        BrokerError::NotReplica { .. } | BrokerError::LeaderEpoch { .. } => {
            Code::FailedPrecondition
        }
        BrokerError::NotEnoughReplicas { .. }
        | BrokerError::NotEnoughReplicasAfterAppend { .. } => Code::Unavailable,
        BrokerError::Peer {
            retriable: true, ..
        } => Code::Unavailable,
        BrokerError::Peer { .. } => Code::Internal,
        BrokerError::Log(log) => match log {
            LogError::BatchTooLarge { .. } => Code::ResourceExhausted,
            LogError::InvalidBatch(_) | LogError::InvalidTopicName(_) => Code::InvalidArgument,
            LogError::OffsetOutOfRange { .. } => Code::OutOfRange,
            LogError::OutOfOrderSequence { .. } | LogError::InvalidProducerEpoch { .. } => {
                Code::FailedPrecondition
            }
            LogError::CorruptSegment { .. }
            | LogError::Io { .. }
            | LogError::Offline { .. }
            | LogError::Remote(_)
            | LogError::DiskFull { .. }
            | LogError::Closed
            | LogError::RoleChanged(_) => Code::Unavailable,
        },
        BrokerError::Controller(controller) => match controller {
            ControllerError::Rejected(rejected) => match rejected {
                MetadataError::TopicAlreadyExists(_) => Code::AlreadyExists,
                MetadataError::UnknownTopic(_)
                | MetadataError::UnknownNode(_)
                | MetadataError::UnknownFunction(_) => Code::NotFound,
                MetadataError::ProducerIdsExhausted => Code::ResourceExhausted,
                _ => Code::InvalidArgument,
            },
            _ => Code::Unavailable,
        },
    };
    Status::new(code, message)
}

/// The status for a group service error.
pub fn group_status(groups: &GroupService, group: &str, error: GroupServiceError) -> Status {
    match error {
        GroupServiceError::NotCoordinator => {
            let coordinator = groups
                .coordinator_of(group)
                .map_or_else(|| "none yet".to_string(), |node| node.grpc);
            Status::failed_precondition(format!(
                "this node is not the coordinator of group {group:?}; the coordinator: {coordinator}"
            ))
        }
        GroupServiceError::Loading => Status::unavailable("the group coordinator is loading"),
        GroupServiceError::Broker(error) => Status::unavailable(error.to_string()),
        GroupServiceError::Group(GroupError::GroupIdNotFound)
        | GroupServiceError::Consumer(ConsumerGroupError::GroupIdNotFound) => {
            Status::not_found(format!("no group {group:?}"))
        }
        GroupServiceError::Group(GroupError::NonEmptyGroup)
        | GroupServiceError::Consumer(ConsumerGroupError::NonEmptyGroup) => {
            Status::failed_precondition(format!("group {group:?} has members; stop them first"))
        }
        GroupServiceError::Group(GroupError::InvalidGroupId) => {
            Status::invalid_argument(format!("invalid group id {group:?}"))
        }
        other => Status::failed_precondition(other.to_string()),
    }
}

/// How long a group call waits for the coordinator to load (the first group call of a
/// node creates `__consumer_offsets`) before answering UNAVAILABLE.
const GROUPS_LOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits for the group coordinator to be loaded, or answers UNAVAILABLE.
async fn groups_loaded(groups: &GroupService) -> Result<(), Status> {
    if groups.wait_loaded(GROUPS_LOAD_WAIT).await {
        Ok(())
    } else {
        Err(Status::unavailable(
            "the group coordinator is still loading",
        ))
    }
}

/// A required name field.
fn required<'a>(value: &'a str, what: &str) -> Result<&'a str, Status> {
    if value.is_empty() {
        Err(Status::invalid_argument(format!("{what} is required")))
    } else {
        Ok(value)
    }
}
