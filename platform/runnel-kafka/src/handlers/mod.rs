//! One handler per API: a decoded request in, a response out, through the `Broker` API.
//!
//! A request is handled in two steps. The first runs on the connection's reader, in the
//! order requests arrived, and does what must keep that order: a produce queues its
//! batches on the partitions' writers there, so an idempotent producer's pipelined
//! requests are appended in sequence. The second, the returned [`Reply`], runs on its own
//! task (a fetch long-polls there) while the reader goes on; replies are written back in
//! request order by the connection's writer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use kafka_protocol::messages::{RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use runnel_broker::Broker;
use runnel_broker::groups::GroupService;

use crate::codec::{self, Request};

mod admin;
mod configs;
mod consumer_groups;
mod fetch;
mod groups;
mod metadata;
mod offsets;
mod produce;

/// The rest of a request's handling.
pub type Reply = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// What the connection does once a request is handled.
// As large as the `Option<ResponseKind>` it replaced; boxing would cost an allocation per
// response for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Answer {
    /// Send this response.
    Respond(ResponseKind),
    /// Send nothing: a produce with acks=0 that succeeded.
    Nothing,
    /// Close the connection without a response: a produce with acks=0 that failed. As in
    /// Kafka, that is how such a producer learns of the error (it reconnects and refreshes
    /// its metadata, for example after a leader moved).
    Close,
}

fn ready(response: ResponseKind) -> Reply {
    Box::pin(std::future::ready(Answer::Respond(response)))
}

fn later(future: impl Future<Output = ResponseKind> + Send + 'static) -> Reply {
    Box::pin(async move { Answer::Respond(future.await) })
}

/// The id Kafka clients show for this cluster.
pub const CLUSTER_ID: &str = "runnel";

/// What the handlers answer through.
pub struct Backends {
    pub broker: Arc<Broker>,
    pub groups: Arc<GroupService>,
}

/// Handles one request (see the module docs for the two steps).
pub async fn handle(backends: &Arc<Backends>, request: Request) -> Reply {
    let version = request.version();
    let broker = backends.broker.clone();
    let group_service = backends.groups.clone();
    let client_id = request
        .header
        .client_id
        .as_ref()
        .map(|c| c.to_string())
        .unwrap_or_default();
    match request.body {
        RequestKind::ApiVersions(_) => {
            ready(ResponseKind::ApiVersions(codec::api_versions_response()))
        }
        RequestKind::Metadata(body) => later(async move {
            ResponseKind::Metadata(metadata::metadata(&broker, body, version).await)
        }),
        RequestKind::DescribeCluster(body) => ready(ResponseKind::DescribeCluster(
            metadata::describe_cluster(&broker, body),
        )),
        RequestKind::Produce(body) => produce::produce(&broker, body, version).await,
        RequestKind::Fetch(body) => {
            later(async move { ResponseKind::Fetch(fetch::fetch(&broker, body, version).await) })
        }
        RequestKind::ListOffsets(body) => {
            later(
                async move { ResponseKind::ListOffsets(offsets::list_offsets(&broker, body).await) },
            )
        }
        RequestKind::OffsetForLeaderEpoch(body) => ready(ResponseKind::OffsetForLeaderEpoch(
            offsets::offset_for_leader_epoch(&broker, body),
        )),
        RequestKind::DeleteRecords(body) => later(async move {
            ResponseKind::DeleteRecords(offsets::delete_records(&broker, body).await)
        }),
        RequestKind::InitProducerId(body) => later(async move {
            ResponseKind::InitProducerId(produce::init_producer_id(&broker, body).await)
        }),
        RequestKind::CreateTopics(body) => later(async move {
            ResponseKind::CreateTopics(admin::create_topics(&broker, body, version).await)
        }),
        RequestKind::DeleteTopics(body) => {
            later(
                async move { ResponseKind::DeleteTopics(admin::delete_topics(&broker, body).await) },
            )
        }
        RequestKind::CreatePartitions(body) => later(async move {
            ResponseKind::CreatePartitions(admin::create_partitions(&broker, body).await)
        }),
        RequestKind::DescribeConfigs(body) => ready(ResponseKind::DescribeConfigs(
            configs::describe_configs(&broker, body, version),
        )),
        RequestKind::AlterConfigs(body) => {
            later(
                async move { ResponseKind::AlterConfigs(configs::alter_configs(&broker, body).await) },
            )
        }
        RequestKind::IncrementalAlterConfigs(body) => later(async move {
            ResponseKind::IncrementalAlterConfigs(
                configs::incremental_alter_configs(&broker, body).await,
            )
        }),
        RequestKind::FindCoordinator(body) => ready(ResponseKind::FindCoordinator(
            groups::find_coordinator(&group_service, body, version),
        )),
        RequestKind::JoinGroup(body) => later(async move {
            ResponseKind::JoinGroup(
                groups::join_group(&group_service, body, version, client_id).await,
            )
        }),
        RequestKind::SyncGroup(body) => later(async move {
            ResponseKind::SyncGroup(groups::sync_group(&group_service, body, version).await)
        }),
        RequestKind::Heartbeat(body) => ready(ResponseKind::Heartbeat(groups::heartbeat(
            &group_service,
            body,
        ))),
        RequestKind::LeaveGroup(body) => later(async move {
            ResponseKind::LeaveGroup(groups::leave_group(&group_service, body, version).await)
        }),
        // Committed in the first step, so a connection's pipelined commits are stored in
        // the order they were sent (a later one never overwritten by an earlier one).
        RequestKind::OffsetCommit(body) => ready(ResponseKind::OffsetCommit(
            groups::offset_commit(&group_service, body, version).await,
        )),
        RequestKind::OffsetFetch(body) => ready(ResponseKind::OffsetFetch(groups::offset_fetch(
            &group_service,
            body,
            version,
        ))),
        RequestKind::ListGroups(body) => ready(ResponseKind::ListGroups(groups::list_groups(
            &group_service,
            body,
        ))),
        RequestKind::DescribeGroups(body) => ready(ResponseKind::DescribeGroups(
            groups::describe_groups(&group_service, body),
        )),
        RequestKind::DeleteGroups(body) => later(async move {
            ResponseKind::DeleteGroups(groups::delete_groups(&group_service, body).await)
        }),
        RequestKind::OffsetDelete(body) => later(async move {
            ResponseKind::OffsetDelete(groups::offset_delete(&group_service, body).await)
        }),
        RequestKind::ConsumerGroupHeartbeat(body) => later(async move {
            ResponseKind::ConsumerGroupHeartbeat(
                consumer_groups::heartbeat(&group_service, &broker, body, version, client_id).await,
            )
        }),
        RequestKind::ConsumerGroupDescribe(body) => ready(ResponseKind::ConsumerGroupDescribe(
            consumer_groups::describe(&group_service, &broker, body, version),
        )),
        // decode_request only decodes served keys, all of which are listed above.
        other => {
            tracing::warn!(request = ?std::mem::discriminant(&other), "request without a handler");
            Box::pin(std::future::ready(Answer::Close))
        }
    }
}

fn text(value: impl Into<String>) -> StrBytes {
    StrBytes::from_string(value.into())
}

/// Splits an advertised `host:port` into its parts for the protocol's broker entries.
fn host_and_port(address: &str) -> (String, i32) {
    match address.rsplit_once(':') {
        Some((host, port)) => (
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port.parse().unwrap_or(-1),
        ),
        None => (address.to_string(), -1),
    }
}
