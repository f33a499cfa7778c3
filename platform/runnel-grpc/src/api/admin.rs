//! The Admin service: topics through the controller (as Kafka's admin APIs), consumer
//! groups through the group coordinator, and the cluster's nodes.

use std::collections::BTreeMap;

use runnel_broker::groups::{CommittedOffset, GroupServiceError};
use runnel_controller::Command;
use tonic::{Request, Response, Status};

use super::{Backends, broker_status, group_status, groups_loaded, pb, required};

/// How long an admin call waits for a new topic's partitions to open here.
const SERVED_WAIT: std::time::Duration = runnel_broker::broker::ADMIN_WAIT;

pub struct AdminService {
    backends: Backends,
}

impl AdminService {
    pub fn new(backends: Backends) -> AdminService {
        AdminService { backends }
    }

    fn describe_topic(&self, name: &str) -> Result<pb::TopicDescription, Status> {
        let broker = &self.backends.broker;
        let metadata = broker.metadata();
        let topic = metadata
            .topics
            .get(name)
            .ok_or_else(|| Status::not_found(format!("unknown topic {name:?}")))?;
        let partitions = topic
            .partitions
            .iter()
            .enumerate()
            .map(|(index, p)| {
                let log = broker.leader_log(name, index as i32).ok();
                pb::PartitionDescription {
                    partition: index as i32,
                    leader: p.leader,
                    replicas: p.replicas.clone(),
                    log_start_offset: log.as_ref().map(|l| l.log_start() as i64),
                    high_watermark: log.as_ref().map(|l| l.high_watermark() as i64),
                }
            })
            .collect();
        let configs = broker
            .topic_configs(name)
            .map_err(|e| broker_status(broker, e))?;
        Ok(pb::TopicDescription {
            name: name.to_string(),
            id: topic.id.to_string(),
            partitions,
            configs: configs
                .effective
                .entries()
                .into_iter()
                .map(|(key, value)| pb::ConfigEntry {
                    name: key.to_string(),
                    value,
                    is_override: configs.overrides.contains_key(key),
                })
                .collect(),
        })
    }

    async fn apply(&self, command: Command, validate_only: bool) -> Result<(), Status> {
        let broker = &self.backends.broker;
        broker
            .admin(command, validate_only)
            .await
            .map(drop)
            .map_err(|e| broker_status(broker, e))
    }

    fn describe_group(&self, name: &str) -> Result<pb::GroupDescription, Status> {
        let groups = &self.backends.groups;
        let failed = |e: GroupServiceError| group_status(groups, name, e);
        let committed = groups.committed(name).map_err(failed)?;
        let (state, kind, members) = match groups.consumer_describe(name).map_err(failed)? {
            Some(group) => (
                group.state.name().to_string(),
                "consumer",
                group
                    .members
                    .into_iter()
                    .map(|m| pb::GroupMember {
                        member_id: m.member_id,
                        instance_id: m.instance_id,
                        client_id: m.client_id,
                        assignment: m
                            .assignment
                            .iter()
                            .map(|(topic, partition)| format!("{topic}-{partition}"))
                            .collect(),
                    })
                    .collect(),
            ),
            None => match groups.describe(name).map_err(failed)? {
                Some(group) => (
                    group.state.name().to_string(),
                    "classic",
                    group
                        .members
                        .into_iter()
                        .map(|m| pb::GroupMember {
                            member_id: m.member_id,
                            instance_id: m.instance_id,
                            client_id: m.client_id,
                            assignment: Vec::new(),
                        })
                        .collect(),
                ),
                None if committed.is_empty() => {
                    return Err(Status::not_found(format!("no group {name:?}")));
                }
                None => ("Empty".to_string(), "classic", Vec::new()),
            },
        };
        let broker = &self.backends.broker;
        let offsets = committed
            .into_iter()
            .map(|((topic, partition), c)| {
                let end = broker
                    .leader_log(&topic, partition)
                    .ok()
                    .map(|log| log.high_watermark() as i64);
                pb::GroupOffset {
                    lag: end.map(|end| (end - c.offset).max(0)),
                    log_end_offset: end,
                    topic,
                    partition,
                    committed_offset: c.offset,
                    metadata: c.metadata,
                }
            })
            .collect();
        Ok(pb::GroupDescription {
            name: name.to_string(),
            state,
            r#type: kind.to_string(),
            members,
            offsets,
        })
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        let request = request.into_inner();
        let broker = &self.backends.broker;
        let name = required(&request.name, "name")?;
        let settings = broker.settings();
        let partitions = match request.partitions {
            0 => settings.default_partitions,
            n => n,
        };
        let replication_factor = match request.replication_factor {
            0 => settings.default_replication_factor,
            n => u16::try_from(n).map_err(|_| {
                Status::invalid_argument(format!("replication factor {n} is too large"))
            })?,
        };
        let configs: BTreeMap<String, String> = request.configs.into_iter().collect();
        let command = Command::CreateTopic {
            name: name.to_string(),
            id: uuid::Uuid::new_v4(),
            partitions,
            replication_factor,
            configs: configs.clone(),
        };
        self.apply(command, request.validate_only).await?;
        if request.validate_only {
            // Nothing was created: describe what would have been.
            return Ok(Response::new(pb::TopicDescription {
                name: name.to_string(),
                id: String::new(),
                partitions: (0..partitions as i32)
                    .map(|partition| pb::PartitionDescription {
                        partition,
                        ..Default::default()
                    })
                    .collect(),
                configs: configs
                    .into_iter()
                    .map(|(name, value)| pb::ConfigEntry {
                        name,
                        value,
                        is_override: true,
                    })
                    .collect(),
            }));
        }
        broker.wait_until_served(name, SERVED_WAIT).await;
        Ok(Response::new(self.describe_topic(name)?))
    }

    async fn list_topics(
        &self,
        request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let include_internal = request.into_inner().include_internal;
        let metadata = self.backends.broker.metadata();
        let topics = metadata
            .topics
            .iter()
            .filter(|(name, _)| include_internal || !name.starts_with("__"))
            .map(|(name, topic)| pb::TopicSummary {
                name: name.clone(),
                id: topic.id.to_string(),
                partitions: topic.partitions.len() as u32,
                replication_factor: topic
                    .partitions
                    .first()
                    .map_or(0, |p| p.replicas.len() as u32),
            })
            .collect();
        Ok(Response::new(pb::ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        let request = request.into_inner();
        let name = required(&request.name, "name")?;
        Ok(Response::new(self.describe_topic(name)?))
    }

    async fn alter_topic_configs(
        &self,
        request: Request<pb::AlterTopicConfigsRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        let request = request.into_inner();
        let name = required(&request.name, "name")?;
        let command = Command::AlterTopicConfigs {
            name: name.to_string(),
            set: request.set.into_iter().collect(),
            remove: request.remove,
        };
        self.apply(command, false).await?;
        Ok(Response::new(self.describe_topic(name)?))
    }

    async fn add_partitions(
        &self,
        request: Request<pb::AddPartitionsRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        let request = request.into_inner();
        let name = required(&request.name, "name")?;
        let command = Command::CreatePartitions {
            name: name.to_string(),
            total: request.partitions,
        };
        self.apply(command, false).await?;
        self.backends
            .broker
            .wait_until_served(name, SERVED_WAIT)
            .await;
        Ok(Response::new(self.describe_topic(name)?))
    }

    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let request = request.into_inner();
        let name = required(&request.name, "name")?;
        let command = Command::DeleteTopic {
            name: name.to_string(),
        };
        self.apply(command, false).await?;
        Ok(Response::new(pb::DeleteTopicResponse {}))
    }

    async fn list_groups(
        &self,
        _request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let groups = &self.backends.groups;
        groups_loaded(groups).await?;
        let failed = |e| group_status(groups, "", e);
        let classic = groups.list().map_err(failed)?;
        let consumer = groups.list_consumer().map_err(failed)?;
        let mut listed: Vec<pb::GroupSummary> = classic
            .into_iter()
            .map(|(name, state, _)| pb::GroupSummary {
                name,
                state: state.name().to_string(),
                r#type: "classic".to_string(),
            })
            .chain(consumer.into_iter().map(|(name, state)| pb::GroupSummary {
                name,
                state: state.name().to_string(),
                r#type: "consumer".to_string(),
            }))
            .collect();
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(pb::ListGroupsResponse { groups: listed }))
    }

    async fn describe_group(
        &self,
        request: Request<pb::DescribeGroupRequest>,
    ) -> Result<Response<pb::GroupDescription>, Status> {
        let request = request.into_inner();
        let name = required(&request.name, "name")?;
        groups_loaded(&self.backends.groups).await?;
        Ok(Response::new(self.describe_group(name)?))
    }

    async fn reset_group_offsets(
        &self,
        request: Request<pb::ResetGroupOffsetsRequest>,
    ) -> Result<Response<pb::GroupDescription>, Status> {
        use pb::reset_group_offsets_request::To;
        let request = request.into_inner();
        let name = required(&request.name, "name")?;
        let topic = required(&request.topic, "topic")?;
        let to = request.to.ok_or_else(|| {
            Status::invalid_argument("say where to: earliest, latest, timestamp_ms or offset")
        })?;
        let broker = &self.backends.broker;
        let count = broker
            .metadata()
            .topics
            .get(topic)
            .map(|t| t.partitions.len() as i32)
            .ok_or_else(|| Status::not_found(format!("unknown topic {topic:?}")))?;
        let partitions: Vec<i32> = if request.partitions.is_empty() {
            (0..count).collect()
        } else {
            request.partitions
        };
        let now = runnel_log::now_ms();
        let mut commits = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let log = broker
                .leader_log(topic, partition)
                .map_err(|e| broker_status(broker, e))?;
            let (start, end) = (log.log_start() as i64, log.high_watermark() as i64);
            let offset = match to {
                To::Earliest(_) => start,
                To::Latest(_) => end,
                To::Offset(offset) => offset.clamp(start, end),
                To::TimestampMs(timestamp) => log
                    .offset_for_timestamp(timestamp)
                    .await
                    .map_err(|e| broker_status(broker, e.into()))?
                    .map_or(end, |offset| offset as i64),
            };
            commits.push((
                topic.to_string(),
                partition,
                CommittedOffset {
                    offset,
                    leader_epoch: -1,
                    metadata: String::new(),
                    commit_ms: now,
                },
            ));
        }
        let groups = &self.backends.groups;
        groups_loaded(groups).await?;
        let described = self.describe_group(name);
        if described.as_ref().is_ok_and(|g| !g.members.is_empty()) {
            return Err(Status::failed_precondition(format!(
                "group {name:?} has members; stop them before resetting its offsets"
            )));
        }
        groups
            .commit(name, "", None, -1, commits)
            .await
            .map_err(|e| group_status(groups, name, e))?;
        Ok(Response::new(self.describe_group(name)?))
    }

    async fn delete_group(
        &self,
        request: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        let request = request.into_inner();
        let name = required(&request.name, "name")?;
        let groups = &self.backends.groups;
        groups_loaded(groups).await?;
        groups
            .delete(name)
            .await
            .map_err(|e| group_status(groups, name, e))?;
        Ok(Response::new(pb::DeleteGroupResponse {}))
    }

    async fn cluster_info(
        &self,
        _request: Request<pb::ClusterInfoRequest>,
    ) -> Result<Response<pb::ClusterInfoResponse>, Status> {
        let broker = &self.backends.broker;
        let metadata = broker.metadata();
        Ok(Response::new(pb::ClusterInfoResponse {
            cluster_id: "runnel".to_string(),
            nodes: metadata
                .nodes
                .values()
                .map(|node| pb::NodeInfo {
                    id: node.id,
                    kafka_address: node.kafka.clone(),
                    grpc_address: node.grpc.clone(),
                    alive: node.alive,
                })
                .collect(),
            controller_leader: broker.controller().leader_address().map(|(id, _)| id),
            version: env!("CARGO_PKG_VERSION").to_string(),
            node_id: broker.node_id(),
        }))
    }
}
