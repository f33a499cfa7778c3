//! SubscribeGroup: one stream is one member of a consumer group of the KIP-848 protocol.
//!
//! The stream's task heartbeats for its member on the group coordinator, exactly as a
//! Kafka consumer with `group.protocol=consumer` does over the wire, so gRPC streams and
//! Kafka consumers can share a group, and Kafka tools describe it. When a heartbeat brings
//! a new assignment, the task stops reading the partitions taken away, tells the client
//! the new assignment, starts the new partitions from the group's committed offsets (or
//! the reset position), and acknowledges with its next heartbeat, after which the
//! coordinator hands the released partitions to other members.
//!
//! Heartbeats go on while the client is slow to read: a member is only removed when the
//! stream closes (it leaves at once) or the task is stuck for the session timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use runnel_broker::groups::{ConsumerGroupError, ConsumerHeartbeat, GroupServiceError};
use runnel_log::PartitionLog;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Status;

use super::consumer::{DEFAULT_MAX_BYTES, DEFAULT_SUBSCRIBE_RECORDS, read};
use super::{Backends, broker_status, group_status, groups_loaded, pb, required};

/// The rebalance timeout a stream's member declares: how long the coordinator waits for
/// it to release partitions. Its task releases them at its next heartbeat.
const REBALANCE_TIMEOUT_MS: u64 = 60_000;
/// Named as the member's client id in group descriptions.
const CLIENT_ID: &str = "runnel-grpc";

type Partition = (String, i32);
pub type GroupStream =
    tokio_stream::wrappers::ReceiverStream<Result<pb::SubscribeGroupResponse, Status>>;

/// Validates the request, joins the group (so a refusal is the call's status), and starts
/// the member's task.
pub async fn subscribe_group(
    backends: Backends,
    request: pb::SubscribeGroupRequest,
    client_host: String,
) -> Result<GroupStream, Status> {
    let group = required(&request.group, "group")?.to_string();
    if request.topics.is_empty() {
        return Err(Status::invalid_argument("topics are required"));
    }
    let metadata = backends.broker.metadata();
    for topic in &request.topics {
        if !metadata.topics.contains_key(topic) {
            return Err(Status::not_found(format!("unknown topic {topic:?}")));
        }
    }
    let reset_latest = match pb::StartPosition::try_from(request.reset) {
        Ok(pb::StartPosition::StartEarliest) => false,
        Ok(pb::StartPosition::StartLatest) => true,
        _ => {
            return Err(Status::invalid_argument(
                "reset must be START_EARLIEST or START_LATEST",
            ));
        }
    };
    let max_records = match request.max_records {
        0 => DEFAULT_SUBSCRIBE_RECORDS,
        n => n as usize,
    };
    groups_loaded(&backends.groups).await?;
    let mut member = Member {
        backends,
        group,
        topics: request.topics,
        assignor: (!request.assignor.is_empty()).then_some(request.assignor),
        reset_latest,
        max_records,
        client_host,
        member_id: String::new(),
        epoch: 0,
        owned: BTreeSet::new(),
        cursors: BTreeMap::new(),
        interval: Duration::from_secs(1),
        next_heartbeat: Instant::now(),
        changed: None,
    };
    member.heartbeat().await.map_err(|e| member.status(e))?;
    let (sender, receiver) = mpsc::channel(4);
    tokio::spawn(async move {
        if let Err(status) = member.run(&sender).await {
            let _ = sender.send(Err(status)).await;
        }
        member.leave().await;
    });
    Ok(GroupStream::new(receiver))
}

struct Member {
    backends: Backends,
    group: String,
    topics: Vec<String>,
    assignor: Option<String>,
    reset_latest: bool,
    max_records: usize,
    client_host: String,
    /// Chosen by the coordinator on the first heartbeat.
    member_id: String,
    epoch: i32,
    /// The partitions read now (and reported as owned in heartbeats).
    owned: BTreeSet<Partition>,
    /// Where each owned partition is read next.
    cursors: BTreeMap<Partition, (Arc<PartitionLog>, u64)>,
    interval: Duration,
    next_heartbeat: Instant,
    /// An assignment the client has not been told yet.
    changed: Option<pb::GroupAssignment>,
}

impl Member {
    fn status(&self, error: GroupServiceError) -> Status {
        match error {
            GroupServiceError::Consumer(ConsumerGroupError::UnsupportedAssignor(_)) => {
                Status::invalid_argument(error.to_string())
            }
            GroupServiceError::Consumer(ConsumerGroupError::ClassicGroup) => {
                Status::failed_precondition(format!(
                    "group {:?} has members of the classic protocol",
                    self.group
                ))
            }
            GroupServiceError::Broker(error) => broker_status(&self.backends.broker, error),
            other => group_status(&self.backends.groups, &self.group, other),
        }
    }

    /// One heartbeat; a new assignment is applied to the cursors and queued for the client.
    /// A member the coordinator fenced or forgot joins again, owning nothing.
    async fn heartbeat(&mut self) -> Result<(), GroupServiceError> {
        loop {
            let joining = self.epoch == 0;
            let request = ConsumerHeartbeat {
                group: self.group.clone(),
                member_id: self.member_id.clone(),
                member_epoch: self.epoch,
                instance_id: None,
                rack_id: None,
                rebalance_timeout: joining.then_some(REBALANCE_TIMEOUT_MS),
                subscribed_topics: joining.then(|| self.topics.clone()),
                subscribed_regex: None,
                assignor: if joining { self.assignor.clone() } else { None },
                owned: Some(self.owned.iter().cloned().collect()),
                client_id: CLIENT_ID.to_string(),
                client_host: self.client_host.clone(),
            };
            let answer = match self.backends.groups.consumer_heartbeat(request).await {
                Ok(answer) => answer,
                Err(GroupServiceError::Consumer(
                    ConsumerGroupError::FencedMemberEpoch | ConsumerGroupError::UnknownMemberId,
                )) if !joining => {
                    tracing::debug!(group = %self.group, member = %self.member_id, "fenced; joining again");
                    self.epoch = 0;
                    self.assign(BTreeSet::new())?;
                    continue;
                }
                Err(error) => return Err(error),
            };
            let epoch_moved = answer.member_epoch != self.epoch;
            self.member_id = answer.member_id;
            self.epoch = answer.member_epoch;
            self.interval = Duration::from_millis(answer.heartbeat_interval.max(1));
            self.next_heartbeat = Instant::now() + self.interval;
            if let Some(assignment) = answer.assignment {
                self.assign(assignment)?;
                // Acknowledged at once, so the partitions released reach their next owner.
                self.next_heartbeat = Instant::now();
            } else if epoch_moved {
                // The same partitions at a new epoch: the client commits with it.
                self.changed = Some(self.assignment_message());
            }
            return Ok(());
        }
    }

    /// Reads `assignment` from now on.
    fn assign(&mut self, assignment: BTreeSet<Partition>) -> Result<(), GroupServiceError> {
        self.cursors
            .retain(|partition, _| assignment.contains(partition));
        let committed = if assignment.iter().any(|p| !self.cursors.contains_key(p)) {
            self.backends
                .groups
                .committed(&self.group)
                .unwrap_or_default()
        } else {
            BTreeMap::new()
        };
        for partition in &assignment {
            if self.cursors.contains_key(partition) {
                continue;
            }
            let log = self.backends.broker.leader_log(&partition.0, partition.1)?;
            let start = match committed.get(partition).map(|c| c.offset) {
                Some(offset) if offset >= 0 => (offset as u64).max(log.log_start()),
                _ if self.reset_latest => log.high_watermark(),
                _ => log.log_start(),
            };
            self.cursors.insert(partition.clone(), (log, start));
        }
        self.owned = assignment;
        self.changed = Some(self.assignment_message());
        Ok(())
    }

    /// The member's partitions and identity, as the client is told them.
    fn assignment_message(&self) -> pb::GroupAssignment {
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (topic, partition) in &self.owned {
            by_topic.entry(topic).or_default().push(*partition);
        }
        pb::GroupAssignment {
            member_id: self.member_id.clone(),
            member_epoch: self.epoch,
            partitions: by_topic
                .into_iter()
                .map(|(topic, partitions)| pb::TopicPartitions {
                    topic: topic.to_string(),
                    partitions,
                })
                .collect(),
        }
    }

    /// Heartbeats and streams records until the client goes away (Ok) or an error ends
    /// the stream.
    async fn run(
        &mut self,
        sender: &mpsc::Sender<Result<pb::SubscribeGroupResponse, Status>>,
    ) -> Result<(), Status> {
        loop {
            if Instant::now() >= self.next_heartbeat {
                self.heartbeat().await.map_err(|e| self.status(e))?;
            }
            if let Some(mut assignment) = self.changed.take() {
                // The epoch of the heartbeat that brought it (or a later one).
                assignment.member_id.clone_from(&self.member_id);
                assignment.member_epoch = self.epoch;
                let event = pb::subscribe_group_response::Event::Assignment(assignment);
                if self.send(sender, event).await? {
                    return Ok(());
                }
                continue;
            }
            let mut sent_any = false;
            let partitions: Vec<Partition> = self.cursors.keys().cloned().collect();
            for partition in partitions {
                let Some((log, offset)) = self.cursors.get(&partition) else {
                    continue;
                };
                let (log, offset) = (log.clone(), *offset);
                let (records, next, _, _) = read(
                    &self.backends,
                    &log,
                    &partition.0,
                    partition.1,
                    offset,
                    self.max_records,
                    DEFAULT_MAX_BYTES,
                )
                .await?;
                if let Some(cursor) = self.cursors.get_mut(&partition) {
                    cursor.1 = next;
                }
                if records.is_empty() {
                    continue;
                }
                sent_any = true;
                let event =
                    pb::subscribe_group_response::Event::Records(pb::SubscribeResponse { records });
                if self.send(sender, event).await? {
                    return Ok(());
                }
                if self.changed.is_some() {
                    // A heartbeat while sending moved partitions: tell the client first.
                    break;
                }
            }
            if sent_any || self.changed.is_some() {
                continue;
            }
            let deadline = self.next_heartbeat;
            let waits: Vec<_> = self
                .cursors
                .values()
                .map(|(log, offset)| log.wait_for_data(*offset, Duration::from_secs(1)).boxed())
                .collect();
            let any_data = async {
                if waits.is_empty() {
                    std::future::pending::<()>().await;
                }
                futures::future::select_all(waits).await;
            };
            tokio::select! {
                _ = any_data => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = sender.closed() => return Ok(()),
            }
        }
    }

    /// Sends one message, heartbeating while the client is slow to take it. True if the
    /// client went away.
    async fn send(
        &mut self,
        sender: &mpsc::Sender<Result<pb::SubscribeGroupResponse, Status>>,
        event: pb::subscribe_group_response::Event,
    ) -> Result<bool, Status> {
        loop {
            tokio::select! {
                permit = sender.reserve() => {
                    let Ok(permit) = permit else { return Ok(true) };
                    permit.send(Ok(pb::SubscribeGroupResponse { event: Some(event) }));
                    return Ok(false);
                }
                _ = tokio::time::sleep_until(self.next_heartbeat) => {
                    self.heartbeat().await.map_err(|e| self.status(e))?;
                }
            }
        }
    }

    /// Leaves the group, so its partitions move to the other members at once.
    async fn leave(&mut self) {
        if self.member_id.is_empty() {
            return;
        }
        let request = ConsumerHeartbeat {
            group: self.group.clone(),
            member_id: self.member_id.clone(),
            member_epoch: -1,
            instance_id: None,
            rack_id: None,
            rebalance_timeout: None,
            subscribed_topics: None,
            subscribed_regex: None,
            assignor: None,
            owned: None,
            client_id: CLIENT_ID.to_string(),
            client_host: self.client_host.clone(),
        };
        if let Err(error) = self.backends.groups.consumer_heartbeat(request).await {
            tracing::debug!(group = %self.group, %error, "leaving the group");
        }
    }
}
