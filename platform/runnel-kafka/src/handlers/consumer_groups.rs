//! The KIP-848 consumer group protocol: ConsumerGroupHeartbeat and ConsumerGroupDescribe,
//! through the broker's `GroupService`. Partitions travel by topic id on the wire and by
//! topic name inside the coordinator; this is where they are translated.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kafka_protocol::messages::consumer_group_describe_response::{
    Assignment as DescribedAssignment, DescribedGroup, Member,
    TopicPartitions as DescribedPartitions,
};
use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use runnel_broker::Broker;
use runnel_broker::groups::{ConsumerHeartbeat, GroupService, GroupServiceError};
use uuid::Uuid;

use super::text;
use crate::errors;

/// Topic ids and names of the cluster's topics, both ways.
struct TopicIds {
    by_id: HashMap<Uuid, String>,
    by_name: BTreeMap<String, Uuid>,
}

impl TopicIds {
    fn of(broker: &Broker) -> TopicIds {
        let metadata = broker.metadata();
        TopicIds {
            by_id: metadata
                .topics
                .iter()
                .map(|(name, topic)| (topic.id, name.clone()))
                .collect(),
            by_name: metadata
                .topics
                .iter()
                .map(|(name, topic)| (name.clone(), topic.id))
                .collect(),
        }
    }

    /// Partitions by topic, in topic-name order, with each topic's id.
    fn group<'a>(
        &self,
        partitions: impl IntoIterator<Item = &'a (String, i32)>,
    ) -> Vec<(Uuid, String, Vec<i32>)> {
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (topic, partition) in partitions {
            by_topic.entry(topic).or_default().push(*partition);
        }
        by_topic
            .into_iter()
            .map(|(topic, partitions)| {
                let id = self.by_name.get(topic).copied().unwrap_or_default();
                (id, topic.to_string(), partitions)
            })
            .collect()
    }
}

fn present(value: &Option<StrBytes>) -> Option<String> {
    value
        .as_ref()
        .filter(|v| !v.is_empty())
        .map(|v| v.to_string())
}

pub async fn heartbeat(
    groups: &GroupService,
    broker: &Broker,
    request: ConsumerGroupHeartbeatRequest,
    version: i16,
    client_id: String,
) -> ConsumerGroupHeartbeatResponse {
    let refuse = |code: i16, message: &str| {
        ConsumerGroupHeartbeatResponse::default()
            .with_error_code(code)
            .with_error_message(Some(text(message)))
    };
    if request.group_id.is_empty() {
        return refuse(errors::INVALID_REQUEST, "the group id must not be empty");
    }
    // From v1 the client chooses its member id, so it is never empty.
    if version >= 1 && request.member_id.is_empty() {
        return refuse(errors::INVALID_REQUEST, "the member id must not be empty");
    }
    let topics = TopicIds::of(broker);
    let call = ConsumerHeartbeat {
        group: request.group_id.0.to_string(),
        member_id: request.member_id.to_string(),
        member_epoch: request.member_epoch,
        instance_id: present(&request.instance_id),
        rack_id: present(&request.rack_id),
        rebalance_timeout: (request.rebalance_timeout_ms > 0)
            .then_some(request.rebalance_timeout_ms as u64),
        subscribed_topics: request
            .subscribed_topic_names
            .map(|names| names.into_iter().map(|n| n.0.to_string()).collect()),
        subscribed_regex: request.subscribed_topic_regex.map(|r| r.to_string()),
        assignor: present(&request.server_assignor),
        // Partitions of topics that no longer exist are not owned any more.
        owned: request.topic_partitions.map(|owned| {
            owned
                .into_iter()
                .filter_map(|t| {
                    let name = topics.by_id.get(&t.topic_id)?.clone();
                    Some(t.partitions.into_iter().map(move |p| (name.clone(), p)))
                })
                .flatten()
                .collect()
        }),
        client_id,
        client_host: String::new(),
    };
    match groups.consumer_heartbeat(call).await {
        Ok(answer) => ConsumerGroupHeartbeatResponse::default()
            .with_member_id(Some(text(answer.member_id)))
            .with_member_epoch(answer.member_epoch)
            .with_heartbeat_interval_ms(answer.heartbeat_interval.min(i32::MAX as u64) as i32)
            .with_assignment(answer.assignment.map(|assigned| {
                Assignment::default().with_topic_partitions(
                    topics
                        .group(&assigned)
                        .into_iter()
                        .map(|(id, _, partitions)| {
                            TopicPartitions::default()
                                .with_topic_id(id)
                                .with_partitions(partitions)
                        })
                        .collect(),
                )
            })),
        Err(error) => refuse(errors::group_code(&error), &error.to_string()),
    }
}

pub fn describe(
    groups: &GroupService,
    broker: &Broker,
    request: ConsumerGroupDescribeRequest,
    version: i16,
) -> ConsumerGroupDescribeResponse {
    let topics = TopicIds::of(broker);
    let assignment = |partitions: &BTreeSet<(String, i32)>| {
        DescribedAssignment::default().with_topic_partitions(
            topics
                .group(partitions)
                .into_iter()
                .map(|(id, name, partitions)| {
                    DescribedPartitions::default()
                        .with_topic_id(id)
                        .with_topic_name(TopicName(text(name)))
                        .with_partitions(partitions)
                })
                .collect(),
        )
    };
    let described = request.group_ids.into_iter().map(|id| {
        let answer = DescribedGroup::default().with_group_id(id.clone());
        let not_found = |answer: DescribedGroup| {
            answer
                .with_error_code(errors::GROUP_ID_NOT_FOUND)
                .with_error_message(Some(text(format!(
                    "no consumer group {:?} (a classic group is described by DescribeGroups)",
                    id.0.as_str()
                ))))
                .with_group_state(text("Dead"))
        };
        match groups.consumer_describe(&id.0) {
            Ok(Some(group)) => answer
                .with_group_state(text(group.state.name()))
                .with_group_epoch(group.group_epoch)
                .with_assignment_epoch(group.assignment_epoch)
                .with_assignor_name(text(group.assignor))
                .with_members(
                    group
                        .members
                        .into_iter()
                        .map(|m| {
                            let member = Member::default()
                                .with_member_id(text(m.member_id))
                                .with_instance_id(m.instance_id.map(text))
                                .with_rack_id(m.rack_id.map(text))
                                .with_member_epoch(m.member_epoch)
                                .with_client_id(text(m.client_id))
                                .with_client_host(text(m.client_host))
                                .with_subscribed_topic_names(
                                    m.subscribed_topics
                                        .into_iter()
                                        .map(|t| TopicName(text(t)))
                                        .collect(),
                                )
                                .with_subscribed_topic_regex(m.subscribed_regex.map(text))
                                .with_assignment(assignment(&m.assignment))
                                .with_target_assignment(assignment(&m.target));
                            // v1: 1 is a member of the consumer protocol.
                            if version >= 1 {
                                member.with_member_type(1)
                            } else {
                                member
                            }
                        })
                        .collect(),
                ),
            Ok(None) => not_found(answer),
            Err(error) => answer
                .with_error_code(errors::group_code(&error))
                .with_error_message(Some(text(error.to_string()))),
        }
    });
    ConsumerGroupDescribeResponse::default().with_groups(described.collect())
}

/// The error an OffsetCommit of `version` gets for a commit refused by a consumer-protocol
/// group: STALE_MEMBER_EPOCH exists from v9; older clients know ILLEGAL_GENERATION.
pub fn commit_error_code(error: &GroupServiceError, version: i16) -> i16 {
    let code = errors::group_code(error);
    if code == errors::STALE_MEMBER_EPOCH && version < 9 {
        errors::ILLEGAL_GENERATION
    } else {
        code
    }
}
