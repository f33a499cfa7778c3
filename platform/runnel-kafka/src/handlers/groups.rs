//! Consumer groups: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, ListGroups, DescribeGroups and DeleteGroups, through the
//! broker's `GroupService`.

use bytes::Bytes;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use runnel_broker::groups::{CommittedOffset, GroupService, GroupServiceError, Join};

use super::{host_and_port, text};
use crate::errors;

/// Kafka's `offset.metadata.max.bytes` default: longer commit metadata is refused.
const MAX_METADATA_BYTES: usize = 4096;

fn error_code(error: &GroupServiceError) -> i16 {
    errors::group_code(error)
}

fn group_name(id: &GroupId) -> String {
    id.0.to_string()
}

pub fn find_coordinator(
    groups: &GroupService,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let answer = |key: &str| -> (i16, i32, String, i32) {
        if request.key_type != 0 {
            return (errors::COORDINATOR_NOT_AVAILABLE, -1, String::new(), -1);
        }
        match groups.coordinator_of(key) {
            Some(node) if node.alive => {
                let (host, port) = host_and_port(&node.kafka);
                (errors::NONE, node.id as i32, host, port)
            }
            _ => (errors::COORDINATOR_NOT_AVAILABLE, -1, String::new(), -1),
        }
    };
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .iter()
            .map(|key| {
                let (code, node, host, port) = answer(key);
                Coordinator::default()
                    .with_key(key.clone())
                    .with_node_id(BrokerId(node))
                    .with_host(text(host))
                    .with_port(port)
                    .with_error_code(code)
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let (code, node, host, port) = answer(&request.key);
    FindCoordinatorResponse::default()
        .with_error_code(code)
        .with_node_id(BrokerId(node))
        .with_host(text(host))
        .with_port(port)
}

pub async fn join_group(
    groups: &GroupService,
    request: JoinGroupRequest,
    version: i16,
    client_id: String,
) -> JoinGroupResponse {
    let join = Join {
        group: group_name(&request.group_id),
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.as_ref().map(|i| i.to_string()),
        client_id,
        client_host: String::new(),
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        session_timeout: request.session_timeout_ms.max(0) as u64,
        // Version 0 has no rebalance timeout: it is the session timeout.
        rebalance_timeout: if version >= 1 {
            request.rebalance_timeout_ms.max(0) as u64
        } else {
            request.session_timeout_ms.max(0) as u64
        },
        require_known_member_id: version >= 4,
    };
    let response = JoinGroupResponse::default()
        .with_generation_id(-1)
        .with_member_id(request.member_id.clone());
    match groups.join(join).await {
        Ok(outcome) => {
            let mut response = response
                .with_error_code(outcome.error.map_or(errors::NONE, |e| {
                    errors::group_code(&GroupServiceError::Group(e))
                }))
                .with_generation_id(outcome.generation)
                .with_leader(text(outcome.leader))
                .with_member_id(text(outcome.member_id))
                .with_members(
                    outcome
                        .members
                        .into_iter()
                        .map(|m| {
                            let member = JoinGroupResponseMember::default()
                                .with_member_id(text(m.member_id))
                                .with_metadata(m.metadata);
                            if version >= 5 {
                                member.with_group_instance_id(m.instance_id.map(text))
                            } else {
                                member
                            }
                        })
                        .collect(),
                );
            if version >= 7 {
                response = response.with_protocol_type(Some(text(outcome.protocol_type)));
            }
            // Older leaders assign again; their SyncGroup in a stable group changes nothing.
            if version >= 9 {
                response = response.with_skip_assignment(outcome.skip_assignment);
            }
            response.with_protocol_name(Some(text(outcome.protocol_name)))
        }
        Err(error) => response.with_error_code(error_code(&error)),
    }
}

pub async fn sync_group(
    groups: &GroupService,
    request: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let assignments: Vec<(String, Bytes)> = request
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    match groups
        .sync(
            &group_name(&request.group_id),
            &request.member_id,
            request.group_instance_id.as_deref(),
            request.generation_id,
            assignments,
        )
        .await
    {
        Ok(outcome) => {
            let response = SyncGroupResponse::default()
                .with_error_code(outcome.error.map_or(errors::NONE, |e| {
                    errors::group_code(&GroupServiceError::Group(e))
                }))
                .with_assignment(outcome.assignment);
            if version >= 5 {
                response
                    .with_protocol_type(Some(text(outcome.protocol_type)))
                    .with_protocol_name(Some(text(outcome.protocol_name)))
            } else {
                response
            }
        }
        Err(error) => SyncGroupResponse::default().with_error_code(error_code(&error)),
    }
}

pub fn heartbeat(groups: &GroupService, request: HeartbeatRequest) -> HeartbeatResponse {
    let code = match groups.heartbeat(
        &group_name(&request.group_id),
        &request.member_id,
        request.group_instance_id.as_deref(),
        request.generation_id,
    ) {
        Ok(()) => errors::NONE,
        Err(error) => error_code(&error),
    };
    HeartbeatResponse::default().with_error_code(code)
}

pub async fn leave_group(
    groups: &GroupService,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    // Up to v2 one member by id; from v3 a list with instance ids.
    let leaving: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|i| i.to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    match groups.leave(&group_name(&request.group_id), &leaving).await {
        Ok(outcomes) => {
            if version < 3 {
                let code = outcomes.first().map_or(errors::NONE, |o| match o {
                    Ok(()) => errors::NONE,
                    Err(e) => errors::group_code(&GroupServiceError::Group(*e)),
                });
                return LeaveGroupResponse::default().with_error_code(code);
            }
            LeaveGroupResponse::default().with_members(
                leaving
                    .into_iter()
                    .zip(outcomes)
                    .map(|((member, instance), outcome)| {
                        MemberResponse::default()
                            .with_member_id(text(member))
                            .with_group_instance_id(instance.map(text))
                            .with_error_code(match outcome {
                                Ok(()) => errors::NONE,
                                Err(e) => errors::group_code(&GroupServiceError::Group(e)),
                            })
                    })
                    .collect(),
            )
        }
        Err(error) => LeaveGroupResponse::default().with_error_code(error_code(&error)),
    }
}

pub async fn offset_commit(
    groups: &GroupService,
    request: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let now = runnel_log::now_ms();
    // Partitions refused one by one: a name no topic can have (it could not be stored in
    // the offsets topic's key either), or metadata above the limit.
    let refused = |topic: &TopicName,
                   p: &kafka_protocol::messages::offset_commit_request::OffsetCommitRequestPartition| {
        if runnel_config::validate_topic_name(&topic.0).is_err() {
            Some(errors::UNKNOWN_TOPIC_OR_PARTITION)
        } else if p
            .committed_metadata
            .as_ref()
            .is_some_and(|m| m.len() > MAX_METADATA_BYTES)
        {
            Some(errors::OFFSET_METADATA_TOO_LARGE)
        } else {
            None
        }
    };
    let commits: Vec<(String, i32, CommittedOffset)> = request
        .topics
        .iter()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .filter(|p| refused(&topic.name, p).is_none())
                .map(move |p| {
                    (
                        topic.name.0.to_string(),
                        p.partition_index,
                        CommittedOffset {
                            offset: p.committed_offset,
                            leader_epoch: p.committed_leader_epoch,
                            metadata: p
                                .committed_metadata
                                .as_ref()
                                .map(|m| m.to_string())
                                .unwrap_or_default(),
                            commit_ms: now,
                        },
                    )
                })
        })
        .collect();
    let code = match groups
        .commit(
            &group_name(&request.group_id),
            &request.member_id,
            request.group_instance_id.as_deref(),
            request.generation_id_or_member_epoch,
            commits,
        )
        .await
    {
        Ok(()) => errors::NONE,
        Err(error) => super::consumer_groups::commit_error_code(&error, version),
    };
    OffsetCommitResponse::default().with_topics(
        request
            .topics
            .into_iter()
            .map(|topic| {
                let partitions = topic
                    .partitions
                    .iter()
                    .map(|p| {
                        OffsetCommitResponsePartition::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(refused(&topic.name, p).unwrap_or(code))
                    })
                    .collect();
                OffsetCommitResponseTopic::default()
                    .with_name(topic.name)
                    .with_partitions(partitions)
            })
            .collect(),
    )
}

/// The committed offsets of one group for the asked topics (all committed when `None`):
/// per topic, per partition (offset, leader epoch, metadata), -1 where nothing is
/// committed.
type Fetched = Vec<(String, Vec<(i32, i64, i32, String)>)>;

fn fetch_group(
    groups: &GroupService,
    group: &str,
    asked: Option<Vec<(String, Vec<i32>)>>,
) -> Result<Fetched, GroupServiceError> {
    let committed = groups.committed(group)?;
    let asked = asked.unwrap_or_else(|| {
        let mut all: Vec<(String, Vec<i32>)> = Vec::new();
        for (topic, partition) in committed.keys() {
            match all.last_mut() {
                Some((t, partitions)) if t == topic => partitions.push(*partition),
                _ => all.push((topic.clone(), vec![*partition])),
            }
        }
        all
    });
    Ok(asked
        .into_iter()
        .map(|(topic, partitions)| {
            let found = partitions
                .into_iter()
                .map(|p| match committed.get(&(topic.clone(), p)) {
                    Some(c) => (p, c.offset, c.leader_epoch, c.metadata.clone()),
                    None => (p, -1, -1, String::new()),
                })
                .collect();
            (topic, found)
        })
        .collect())
}

pub fn offset_fetch(
    groups: &GroupService,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version >= 8 {
        let answers = request
            .groups
            .into_iter()
            .map(|group| {
                let asked = group.topics.map(|topics| {
                    topics
                        .into_iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes))
                        .collect()
                });
                let answer =
                    OffsetFetchResponseGroup::default().with_group_id(group.group_id.clone());
                let name = group_name(&group.group_id);
                // v9: a member of a consumer-protocol group names itself and its epoch.
                let member = group.member_id.as_deref().unwrap_or_default();
                let fetched = groups
                    .check_consumer_fetch(&name, member, group.member_epoch)
                    .and_then(|()| fetch_group(groups, &name, asked));
                match fetched {
                    Ok(fetched) => answer.with_topics(
                        fetched
                            .into_iter()
                            .map(|(topic, partitions)| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(TopicName(text(topic)))
                                    .with_partitions(
                                        partitions
                                            .into_iter()
                                            .map(|(p, offset, epoch, metadata)| {
                                                OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(p)
                                                    .with_committed_offset(offset)
                                                    .with_committed_leader_epoch(epoch)
                                                    .with_metadata(Some(text(metadata)))
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    ),
                    Err(error) => answer.with_error_code(error_code(&error)),
                }
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(answers);
    }
    let asked: Option<Vec<(String, Vec<i32>)>> = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    let partition = |p: i32, offset: i64, epoch: i32, metadata: String| {
        let entry = OffsetFetchResponsePartition::default()
            .with_partition_index(p)
            .with_committed_offset(offset)
            .with_metadata(Some(text(metadata)));
        if version >= 5 {
            entry.with_committed_leader_epoch(epoch)
        } else {
            entry
        }
    };
    match fetch_group(groups, &group_name(&request.group_id), asked.clone()) {
        Ok(fetched) => OffsetFetchResponse::default().with_topics(
            fetched
                .into_iter()
                .map(|(topic, partitions)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(text(topic)))
                        .with_partitions(
                            partitions
                                .into_iter()
                                .map(|(p, offset, epoch, metadata)| {
                                    partition(p, offset, epoch, metadata)
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
        Err(error) => {
            let code = error_code(&error);
            if version >= 2 {
                return OffsetFetchResponse::default().with_error_code(code);
            }
            // Before v2 there is no top-level error code: it goes on every partition asked
            // for (v0 and v1 always name them), so a client never mistakes a coordinator
            // error for "nothing committed".
            let topics = asked
                .unwrap_or_default()
                .into_iter()
                .map(|(topic, partitions)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(text(topic)))
                        .with_partitions(
                            partitions
                                .into_iter()
                                .map(|p| partition(p, -1, -1, String::new()).with_error_code(code))
                                .collect(),
                        )
                })
                .collect();
            OffsetFetchResponse::default().with_topics(topics)
        }
    }
}

pub fn list_groups(groups: &GroupService, request: ListGroupsRequest) -> ListGroupsResponse {
    let listed = groups.list().and_then(|classic| {
        let consumer = groups.list_consumer()?;
        // (name, state, protocol type, group type)
        let classic = classic
            .into_iter()
            .map(|(name, state, protocol)| (name, state.name(), protocol, "classic"));
        let consumer = consumer
            .into_iter()
            .map(|(name, state)| (name, state.name(), "consumer".to_string(), "consumer"));
        Ok(classic.chain(consumer).collect::<Vec<_>>())
    });
    let wanted = |filter: &[kafka_protocol::protocol::StrBytes], value: &str| {
        filter.is_empty() || filter.iter().any(|f| f.eq_ignore_ascii_case(value))
    };
    match listed {
        Ok(list) => ListGroupsResponse::default().with_groups(
            list.into_iter()
                .filter(|(_, state, _, kind)| {
                    wanted(&request.states_filter, state) && wanted(&request.types_filter, kind)
                })
                .map(|(name, state, protocol_type, kind)| {
                    ListedGroup::default()
                        .with_group_id(GroupId(text(name)))
                        .with_protocol_type(text(protocol_type))
                        .with_group_state(text(state))
                        .with_group_type(text(kind))
                })
                .collect(),
        ),
        Err(error) => ListGroupsResponse::default().with_error_code(error_code(&error)),
    }
}

pub fn describe_groups(
    groups: &GroupService,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    DescribeGroupsResponse::default().with_groups(
        request
            .groups
            .into_iter()
            .map(|id| {
                let described = DescribedGroup::default().with_group_id(id.clone());
                match groups.describe(&group_name(&id)) {
                    Ok(Some(group)) => described
                        .with_group_state(text(group.state.name()))
                        .with_protocol_type(text(group.protocol_type))
                        .with_protocol_data(text(group.protocol_name))
                        .with_members(
                            group
                                .members
                                .into_iter()
                                .map(|m| {
                                    DescribedGroupMember::default()
                                        .with_member_id(text(m.member_id))
                                        .with_group_instance_id(m.instance_id.map(text))
                                        .with_client_id(text(m.client_id))
                                        .with_client_host(text(m.client_host))
                                        .with_member_metadata(m.metadata)
                                        .with_member_assignment(m.assignment)
                                })
                                .collect(),
                        ),
                    // Kafka describes an unknown group as Dead, without an error.
                    Ok(None) => described.with_group_state(text("Dead")),
                    Err(error) => described.with_error_code(error_code(&error)),
                }
            })
            .collect(),
    )
}

pub async fn delete_groups(
    groups: &GroupService,
    request: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
    let mut results = Vec::with_capacity(request.groups_names.len());
    for id in request.groups_names {
        let code = match groups.delete(&group_name(&id)).await {
            Ok(()) => errors::NONE,
            Err(error) => error_code(&error),
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(id)
                .with_error_code(code),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}

/// OffsetDelete: only for a group without members (Kafka also allows it for topics the
/// members do not subscribe to; here every partition of a live group is refused).
pub async fn offset_delete(
    groups: &GroupService,
    request: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    use kafka_protocol::messages::offset_delete_response::{
        OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
    };
    let partitions: Vec<(String, i32)> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.name.0.to_string(), p.partition_index))
        })
        .collect();
    let (top, each) = match groups
        .delete_offsets(&group_name(&request.group_id), &partitions)
        .await
    {
        Ok(()) => (errors::NONE, errors::NONE),
        Err(GroupServiceError::Group(runnel_broker::groups::GroupError::NonEmptyGroup)) => {
            (errors::NONE, errors::GROUP_SUBSCRIBED_TO_TOPIC)
        }
        Err(error) => (error_code(&error), errors::NONE),
    };
    OffsetDeleteResponse::default()
        .with_error_code(top)
        .with_topics(
            request
                .topics
                .into_iter()
                .map(|topic| {
                    OffsetDeleteResponseTopic::default()
                        .with_name(topic.name)
                        .with_partitions(
                            topic
                                .partitions
                                .iter()
                                .map(|p| {
                                    OffsetDeleteResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(each)
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
}
