//! Metadata and DescribeCluster: the brokers, the controller, topics and their leaders.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, MetadataRequest, MetadataResponse,
    TopicName,
};
use runnel_broker::Broker;
use runnel_controller::{Metadata, NodeInfo, TopicMeta};
use uuid::Uuid;

use super::{CLUSTER_ID, host_and_port, text};
use crate::errors;

fn live_brokers(metadata: &Metadata) -> impl Iterator<Item = &NodeInfo> {
    metadata
        .nodes
        .values()
        .filter(|node| node.alive && node.roles.broker)
}

fn controller_id(broker: &Broker) -> i32 {
    broker
        .controller()
        .status()
        .leader
        .map_or(-1, |id| id as i32)
}

/// A requested topic: by name, or (v10+) by id.
enum Wanted {
    Name(String),
    Id(Uuid),
}

pub async fn metadata(broker: &Broker, request: MetadataRequest, version: i16) -> MetadataResponse {
    let wanted: Option<Vec<Wanted>> = match request.topics {
        None => None,
        // Version 0 has no null list: an empty one asks for every topic.
        Some(topics) if topics.is_empty() && version == 0 => None,
        Some(topics) => Some(
            topics
                .into_iter()
                .map(|topic| match topic.name {
                    Some(name) => Wanted::Name(name.0.to_string()),
                    None => Wanted::Id(topic.topic_id),
                })
                .collect(),
        ),
    };
    let auto_create = version < 4 || request.allow_auto_topic_creation;
    let mut creation_errors = Vec::new();
    if auto_create && let Some(wanted) = &wanted {
        for name in wanted.iter().filter_map(|w| match w {
            Wanted::Name(name) => Some(name),
            Wanted::Id(_) => None,
        }) {
            if let Err(error) = broker.auto_create_topic(name).await {
                tracing::warn!(topic = %name, %error, "auto-creating a topic");
                creation_errors.push((name.clone(), errors::KafkaError::from(error)));
            }
        }
    }

    let metadata = broker.metadata();
    let topics = match wanted {
        None => metadata.topics.values().map(topic_entry).collect(),
        Some(wanted) => wanted
            .iter()
            .map(|w| match w {
                Wanted::Name(name) => match metadata.topics.get(name) {
                    Some(topic) => topic_entry(topic),
                    None => {
                        let code = creation_errors
                            .iter()
                            .find(|(n, _)| n == name)
                            .map(|(_, e)| e.code)
                            .unwrap_or_else(|| {
                                if runnel_config::validate_topic_name(name).is_err() {
                                    errors::INVALID_TOPIC_EXCEPTION
                                } else {
                                    errors::UNKNOWN_TOPIC_OR_PARTITION
                                }
                            });
                        MetadataResponseTopic::default()
                            .with_name(Some(TopicName(text(name.clone()))))
                            .with_error_code(code)
                    }
                },
                Wanted::Id(id) => match metadata.topics.values().find(|t| t.id == *id) {
                    Some(topic) => topic_entry(topic),
                    None => MetadataResponseTopic::default()
                        .with_topic_id(*id)
                        .with_error_code(errors::UNKNOWN_TOPIC_ID),
                },
            })
            .collect(),
    };
    MetadataResponse::default()
        .with_brokers(
            live_brokers(&metadata)
                .map(|node| {
                    let (host, port) = host_and_port(&node.kafka);
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(node.id as i32))
                        .with_host(text(host))
                        .with_port(port)
                })
                .collect(),
        )
        .with_cluster_id(Some(text(CLUSTER_ID)))
        .with_controller_id(BrokerId(controller_id(broker)))
        .with_topics(topics)
}

fn topic_entry(topic: &TopicMeta) -> MetadataResponseTopic {
    let partitions = topic
        .partitions
        .iter()
        .enumerate()
        .map(|(index, partition)| {
            let nodes = |ids: &[u64]| ids.iter().map(|id| BrokerId(*id as i32)).collect();
            MetadataResponsePartition::default()
                .with_error_code(if partition.leader.is_some() {
                    errors::NONE
                } else {
                    errors::LEADER_NOT_AVAILABLE
                })
                .with_partition_index(index as i32)
                .with_leader_id(BrokerId(partition.leader.map_or(-1, |id| id as i32)))
                // -1 until leader epochs change with leadership: a real epoch makes
                // librdkafka validate offsets with OffsetForLeaderEpoch after every change.
                .with_leader_epoch(-1)
                .with_replica_nodes(nodes(&partition.replicas))
                .with_isr_nodes(nodes(&partition.isr))
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(text(topic.name.clone()))))
        .with_topic_id(topic.id)
        .with_is_internal(topic.name.starts_with("__"))
        .with_partitions(partitions)
}

pub fn describe_cluster(
    broker: &Broker,
    _request: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let metadata = broker.metadata();
    DescribeClusterResponse::default()
        .with_cluster_id(text(CLUSTER_ID))
        .with_controller_id(BrokerId(controller_id(broker)))
        .with_brokers(
            live_brokers(&metadata)
                .map(|node| {
                    let (host, port) = host_and_port(&node.kafka);
                    DescribeClusterBroker::default()
                        .with_broker_id(BrokerId(node.id as i32))
                        .with_host(text(host))
                        .with_port(port)
                })
                .collect(),
        )
}
