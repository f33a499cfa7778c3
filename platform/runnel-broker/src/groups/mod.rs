//! Consumer groups: the coordinator state machine ([`coordinator`]), committed offsets
//! stored in the compacted internal topic `__consumer_offsets` ([`offsets`]), and
//! [`GroupService`], the async shell that frontends call.
//!
//! As in Kafka, a group's coordinator is the leader of the `__consumer_offsets` partition
//! its name hashes to, and its committed offsets are records of that partition (Kafka's
//! own key and value formats, so Kafka's tools can read them). The topic is created by the
//! first group request, as in Kafka; on start the service reads the partitions this node
//! leads and restores every committed offset and stable group. Until then requests get
//! [`GroupServiceError::Loading`].

pub mod consumer;
pub mod coordinator;
pub mod offsets;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_controller::{Command, NodeId, NodeInfo};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

pub use consumer::{
    ConsumerGroupDescription, ConsumerGroupError, ConsumerGroupSettings, ConsumerGroupState,
    Heartbeat as ConsumerHeartbeat, HeartbeatAnswer as ConsumerHeartbeatAnswer,
};
pub use coordinator::{
    Coordinator, GroupDescription, GroupError, GroupSettings, GroupState, Join, JoinOutcome,
    JoinedMember, SyncOutcome,
};
pub use offsets::{CommittedOffset, OFFSETS_TOPIC, partition_for};

use crate::broker::{Broker, BrokerError};
use coordinator::{Reply, Ticket};

/// How often the coordinator's clock advances (rebalance deadlines, session expiry).
const TICK: Duration = Duration::from_millis(50);
/// A committed offset's (topic, partition) with its commit time.
type StampedKey = ((String, i32), i64);

/// Where committed offsets live and how long they are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetsSettings {
    /// `broker.offsets_topic_num_partitions`: partitions of `__consumer_offsets`.
    pub partitions: u32,
    /// `broker.offsets_retention_minutes`: how long an empty group's offsets are kept.
    pub retention: Duration,
    /// `broker.offsets_retention_check_interval_ms`: how often expired offsets and empty
    /// groups without offsets are looked for.
    pub retention_check_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum GroupServiceError {
    #[error(transparent)]
    Group(#[from] GroupError),
    /// From a group of the KIP-848 protocol.
    #[error(transparent)]
    Consumer(#[from] ConsumerGroupError),
    /// Another node coordinates this group.
    #[error("this node is not the group's coordinator")]
    NotCoordinator,
    /// The committed offsets are still being read.
    #[error("the group coordinator is loading")]
    Loading,
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

enum Waiter {
    Join(oneshot::Sender<JoinOutcome>),
    Sync(oneshot::Sender<SyncOutcome>),
}

struct Inner {
    coordinator: Coordinator,
    /// Groups of the KIP-848 protocol; a group name is in one protocol or the other.
    consumer: consumer::ConsumerGroups,
    /// Each consumer-protocol group as last written to the offsets topic.
    consumer_stored: HashMap<String, consumer::StoredConsumerGroup>,
    waiting: HashMap<Ticket, Waiter>,
    next_ticket: Ticket,
    offsets: HashMap<String, BTreeMap<(String, i32), CommittedOffset>>,
    loaded: bool,
}

impl Inner {
    /// Whether a classic-protocol group of this name has members.
    fn classic_has_members(&self, group: &str) -> bool {
        self.coordinator
            .describe(group)
            .is_some_and(|g| !g.members.is_empty())
    }

    fn has_members(&self, group: &str) -> bool {
        self.classic_has_members(group) || self.consumer.has_members(group)
    }

    /// How long `group` has had no members in either protocol (None: it has members).
    fn empty_for(&self, group: &str, now: coordinator::Millis) -> Option<coordinator::Millis> {
        if self.has_members(group) {
            return None;
        }
        match (
            self.consumer.empty_for(group, now),
            self.coordinator.empty_for(group, now),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn ticket(&mut self, waiter: Waiter) -> Ticket {
        self.next_ticket += 1;
        self.waiting.insert(self.next_ticket, waiter);
        self.next_ticket
    }

    fn deliver(&mut self, replies: Vec<Reply>) {
        for reply in replies {
            match reply {
                Reply::Join(ticket, outcome) => {
                    if let Some(Waiter::Join(sender)) = self.waiting.remove(&ticket) {
                        let _ = sender.send(outcome);
                    }
                }
                Reply::Sync(ticket, outcome) => {
                    if let Some(Waiter::Sync(sender)) = self.waiting.remove(&ticket) {
                        let _ = sender.send(outcome);
                    }
                }
            }
        }
    }
}

pub struct GroupService {
    broker: Arc<Broker>,
    /// Set by the first group request: `__consumer_offsets` is created on demand, as in
    /// Kafka, so a node whose clients never use groups does not carry it.
    wanted: std::sync::atomic::AtomicBool,
    partitions: u32,
    inner: Mutex<Inner>,
    /// Held while consumer-protocol groups are written, so snapshots land in the order
    /// they were taken.
    consumer_writes: tokio::sync::Mutex<()>,
    started: Instant,
}

impl GroupService {
    /// Starts the service: creates `__consumer_offsets` if needed, loads the committed
    /// offsets of the partitions this node leads, and runs the coordinator's clock and the
    /// offsets' expiry until `stop`.
    pub fn start(
        broker: Arc<Broker>,
        settings: GroupSettings,
        consumer_settings: ConsumerGroupSettings,
        offsets_settings: OffsetsSettings,
        stop: CancellationToken,
    ) -> Arc<GroupService> {
        let OffsetsSettings {
            partitions,
            retention,
            retention_check_interval,
        } = offsets_settings;
        let service = Arc::new(GroupService {
            broker,
            wanted: std::sync::atomic::AtomicBool::new(false),
            partitions: partitions.max(1),
            inner: Mutex::new(Inner {
                coordinator: Coordinator::new(settings),
                consumer: consumer::ConsumerGroups::new(consumer_settings),
                consumer_stored: HashMap::new(),
                waiting: HashMap::new(),
                next_ticket: 0,
                offsets: HashMap::new(),
                loaded: false,
            }),
            consumer_writes: tokio::sync::Mutex::new(()),
            started: Instant::now(),
        });
        let clock = service.clone();
        tokio::spawn(async move {
            let mut next_expiry = Instant::now() + retention_check_interval;
            loop {
                let exists = clock.broker.metadata().topics.contains_key(OFFSETS_TOPIC);
                let wanted = clock.wanted.load(std::sync::atomic::Ordering::Acquire);
                if clock.is_loaded() && Instant::now() >= next_expiry {
                    clock.expire_offsets(retention).await;
                    clock.forget_empty_groups().await;
                    next_expiry = Instant::now() + retention_check_interval;
                }
                if !clock.is_loaded() && (exists || wanted) {
                    match clock.load().await {
                        Ok(()) => {}
                        Err(error) => {
                            tracing::warn!(%error, "loading committed offsets; retrying");
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(TICK) => {}
                    _ = stop.cancelled() => break,
                }
                let now = clock.now();
                let (emptied, consumer_changed) = {
                    let mut inner = clock.lock();
                    let before = inner.coordinator.states();
                    let replies = inner.coordinator.tick(now);
                    inner.deliver(replies);
                    let removed = inner.consumer.tick(now);
                    let consumer_changed = if removed > 0 {
                        inner.consumer.names()
                    } else {
                        Vec::new()
                    };
                    (
                        emptied_groups(&before, &inner.coordinator),
                        consumer_changed,
                    )
                };
                for (group, stored) in emptied {
                    clock.store_group(&group, &stored).await;
                }
                for group in consumer_changed {
                    clock.store_consumer_group(&group).await;
                }
            }
        });
        service
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_loaded(&self) -> bool {
        self.lock().loaded
    }

    /// Creates the offsets topic if needed and reads the partitions this node leads.
    async fn load(&self) -> Result<(), GroupServiceError> {
        if !self.broker.metadata().topics.contains_key(OFFSETS_TOPIC) {
            let command = Command::CreateTopic {
                name: OFFSETS_TOPIC.to_string(),
                id: uuid::Uuid::new_v4(),
                partitions: self.partitions,
                replication_factor: 1,
                configs: BTreeMap::from([
                    ("cleanup.policy".to_string(), "compact".to_string()),
                    ("segment.bytes".to_string(), (100u64 << 20).to_string()),
                ]),
            };
            match self.broker.admin(command, false).await {
                Ok(_) => {}
                Err(BrokerError::Controller(runnel_controller::ControllerError::Rejected(
                    runnel_controller::MetadataError::TopicAlreadyExists(_),
                ))) => {}
                Err(error) => return Err(error.into()),
            }
        }
        self.broker
            .wait_until_served(OFFSETS_TOPIC, crate::broker::ADMIN_WAIT)
            .await;
        let metadata = self.broker.metadata();
        let Some(topic) = metadata.topics.get(OFFSETS_TOPIC) else {
            return Err(GroupServiceError::Loading);
        };
        let mut loaded: HashMap<String, BTreeMap<(String, i32), CommittedOffset>> = HashMap::new();
        let mut stored_groups = HashMap::new();
        let mut consumer_groups = HashMap::new();
        for (index, partition) in topic.partitions.iter().enumerate() {
            if partition.leader != Some(self.broker.node_id()) {
                continue;
            }
            let log = self.broker.leader_log(OFFSETS_TOPIC, index as i32)?;
            let mut offset = log.log_start();
            while offset < log.high_watermark() {
                let read = log.read(offset, 4 << 20).await.map_err(BrokerError::from)?;
                if read.records.is_empty() {
                    break;
                }
                offset = offsets::apply_batches(
                    &read.records,
                    offset,
                    &mut loaded,
                    &mut stored_groups,
                    &mut consumer_groups,
                );
            }
        }
        let now = self.now();
        let mut inner = self.lock();
        for group in loaded.keys() {
            inner.coordinator.ensure(group, now);
        }
        for (group, stored) in stored_groups {
            if let Some(stored) = stored {
                inner.coordinator.restore(&group, stored, now);
            }
        }
        for (group, stored) in consumer_groups {
            if let Some(stored) = stored {
                inner.consumer.restore(&group, stored.clone(), now);
                inner.consumer_stored.insert(group, stored);
            }
        }
        let count: usize = loaded.values().map(BTreeMap::len).sum();
        inner.offsets = loaded;
        inner.loaded = true;
        tracing::info!(
            offsets = count,
            "group coordinator loaded committed offsets"
        );
        Ok(())
    }

    /// The node coordinating `group` (the leader of its offsets partition), if any.
    pub fn coordinator_of(&self, group: &str) -> Option<NodeInfo> {
        let metadata = self.broker.metadata();
        let Some(topic) = metadata.topics.get(OFFSETS_TOPIC) else {
            self.want_offsets_topic();
            return None;
        };
        let partition = partition_for(group, topic.partitions.len() as u32);
        let leader = topic.partitions.get(partition as usize)?.leader?;
        metadata.nodes.get(&leader).cloned()
    }

    /// Waits (up to `timeout`) until the committed offsets are loaded, creating the offsets
    /// topic if no group was used yet: for callers that would rather wait than retry on
    /// [`GroupServiceError::Loading`]. Returns whether it is loaded.
    pub async fn wait_loaded(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_loaded() {
                return true;
            }
            self.want_offsets_topic();
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks the clock to create `__consumer_offsets` (the first group request does).
    fn want_offsets_topic(&self) {
        self.wanted
            .store(true, std::sync::atomic::Ordering::Release);
    }

    fn check_local(&self, group: &str) -> Result<i32, GroupServiceError> {
        // The offsets topic's keys hold the group id as a string of at most i16::MAX bytes.
        if group.len() > i16::MAX as usize {
            return Err(GroupError::InvalidGroupId.into());
        }
        if !self.is_loaded() {
            self.want_offsets_topic();
            return Err(GroupServiceError::Loading);
        }
        let metadata = self.broker.metadata();
        let topic = metadata
            .topics
            .get(OFFSETS_TOPIC)
            .ok_or(GroupServiceError::Loading)?;
        let partition = partition_for(group, topic.partitions.len() as u32);
        let leader: Option<NodeId> = topic
            .partitions
            .get(partition as usize)
            .and_then(|p| p.leader);
        if leader != Some(self.broker.node_id()) {
            return Err(GroupServiceError::NotCoordinator);
        }
        Ok(partition as i32)
    }

    pub async fn join(&self, join: Join) -> Result<JoinOutcome, GroupServiceError> {
        self.check_local(&join.group)?;
        let group = join.group.clone();
        let (sender, receiver) = oneshot::channel();
        {
            let now = self.now();
            let mut inner = self.lock();
            if inner.consumer.has_members(&join.group) {
                return Err(GroupError::InconsistentGroupProtocol.into());
            }
            let ticket = inner.ticket(Waiter::Join(sender));
            let replies = inner.coordinator.join(ticket, join, now);
            inner.deliver(replies);
        }
        let outcome = receiver.await.map_err(|_| GroupServiceError::Loading)?;
        // A static member that took over its old entry in a stable group (no rebalance):
        // its new member id is stored, so a restart of this node keeps it.
        if outcome.error.is_none() {
            let stored = {
                let inner = self.lock();
                (inner.coordinator.state(&group) == Some(GroupState::Stable))
                    .then(|| inner.coordinator.stored(&group))
                    .flatten()
            };
            if let Some(stored) = stored
                && stored
                    .members
                    .iter()
                    .any(|m| m.member_id == outcome.member_id && m.instance_id.is_some())
            {
                self.store_group(&group, &stored).await;
            }
        }
        Ok(outcome)
    }

    pub async fn sync(
        &self,
        group: &str,
        member_id: &str,
        instance: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<SyncOutcome, GroupServiceError> {
        self.check_local(group)?;
        self.lock()
            .coordinator
            .check_instance(group, member_id, instance)?;
        let (sender, receiver) = oneshot::channel();
        let stabilized = {
            let now = self.now();
            let mut inner = self.lock();
            let before = inner.coordinator.describe(group).map(|g| g.state);
            let ticket = inner.ticket(Waiter::Sync(sender));
            let replies =
                inner
                    .coordinator
                    .sync(ticket, group, member_id, generation, assignments, now);
            inner.deliver(replies);
            // This sync completed the rebalance: the group as it now stands is stored.
            if before != Some(GroupState::Stable) {
                inner.coordinator.stored(group)
            } else {
                None
            }
        };
        if let Some(stored) = stabilized {
            self.store_group(group, &stored).await;
        }
        receiver.await.map_err(|_| GroupServiceError::Loading)
    }

    /// Records a group's state (or, with `None`, its deletion) in the offsets topic.
    async fn write_group(
        &self,
        group: &str,
        partition: i32,
        stored: Option<&coordinator::StoredGroup>,
    ) -> Result<(), GroupServiceError> {
        let batch = offsets::group_batch(group, stored)
            .map_err(|e| BrokerError::Log(runnel_log::LogError::InvalidBatch(e)))?;
        let log = self.broker.leader_log(OFFSETS_TOPIC, partition)?;
        log.append_durable(batch).await.map_err(BrokerError::from)?;
        Ok(())
    }

    pub fn heartbeat(
        &self,
        group: &str,
        member_id: &str,
        instance: Option<&str>,
        generation: i32,
    ) -> Result<(), GroupServiceError> {
        self.check_local(group)?;
        let now = self.now();
        let mut inner = self.lock();
        inner
            .coordinator
            .check_instance(group, member_id, instance)?;
        Ok(inner
            .coordinator
            .heartbeat(group, member_id, generation, now)?)
    }

    pub async fn leave(
        &self,
        group: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<Result<(), GroupError>>, GroupServiceError> {
        self.check_local(group)?;
        let now = self.now();
        let (outcomes, emptied) = {
            let mut inner = self.lock();
            let before = inner.coordinator.states();
            let (outcomes, replies) = inner.coordinator.leave(group, members, now);
            inner.deliver(replies);
            (outcomes, emptied_groups(&before, &inner.coordinator))
        };
        for (name, stored) in emptied {
            self.store_group(&name, &stored).await;
        }
        Ok(outcomes)
    }

    /// Stores a group's state, logging (not failing) if the offsets topic refuses: a
    /// group stored out of date only costs a rebalance after a restart.
    async fn store_group(&self, group: &str, stored: &coordinator::StoredGroup) {
        let Ok(partition) = self.check_local(group) else {
            return;
        };
        if let Err(error) = self.write_group(group, partition, Some(stored)).await {
            tracing::warn!(%group, %error, "storing the group's state");
        }
    }

    /// Stores committed offsets durably in `__consumer_offsets`, then in memory.
    pub async fn commit(
        &self,
        group: &str,
        member_id: &str,
        instance: Option<&str>,
        generation: i32,
        commits: Vec<(String, i32, CommittedOffset)>,
    ) -> Result<(), GroupServiceError> {
        let partition = self.check_local(group)?;
        {
            let now = self.now();
            let mut inner = self.lock();
            if inner.consumer.contains(group) && !inner.classic_has_members(group) {
                inner.consumer.check_commit(group, member_id, generation)?;
            } else {
                inner
                    .coordinator
                    .check_instance(group, member_id, instance)?;
                inner
                    .coordinator
                    .check_commit(group, member_id, generation, now)?;
            }
        }
        if commits.is_empty() {
            return Ok(());
        }
        let batch = offsets::commit_batch(group, &commits)
            .map_err(|e| BrokerError::Log(runnel_log::LogError::InvalidBatch(e)))?;
        let log = self.broker.leader_log(OFFSETS_TOPIC, partition)?;
        log.append_durable(batch).await.map_err(BrokerError::from)?;
        let mut inner = self.lock();
        let stored = inner.offsets.entry(group.to_string()).or_default();
        for (topic, partition, committed) in commits {
            stored.insert((topic, partition), committed);
        }
        Ok(())
    }

    /// The committed offsets of `group`, all of them or those of the given partitions.
    pub fn committed(
        &self,
        group: &str,
    ) -> Result<BTreeMap<(String, i32), CommittedOffset>, GroupServiceError> {
        self.check_local(group)?;
        Ok(self.lock().offsets.get(group).cloned().unwrap_or_default())
    }

    /// Lag of every committed offset this node holds: (group, topic, partition, log end
    /// minus committed offset). Partitions not led here are left out.
    pub fn lag(&self) -> Vec<(String, String, i32, i64)> {
        let committed: Vec<(String, String, i32, i64)> = {
            let inner = self.lock();
            inner
                .offsets
                .iter()
                .flat_map(|(group, offsets)| {
                    offsets.iter().map(move |((topic, partition), c)| {
                        (group.clone(), topic.clone(), *partition, c.offset)
                    })
                })
                .collect()
        };
        committed
            .into_iter()
            .filter_map(|(group, topic, partition, offset)| {
                let log = self.broker.leader_log(&topic, partition).ok()?;
                let lag = (log.high_watermark() as i64).saturating_sub(offset).max(0);
                Some((group, topic, partition, lag))
            })
            .collect()
    }

    pub fn describe(&self, group: &str) -> Result<Option<GroupDescription>, GroupServiceError> {
        self.check_local(group)?;
        let inner = self.lock();
        // As in Kafka: DescribeGroups is for classic groups; ConsumerGroupDescribe for the
        // others.
        if inner.consumer.contains(group) && !inner.classic_has_members(group) {
            return Err(GroupError::GroupIdNotFound.into());
        }
        Ok(inner.coordinator.describe(group))
    }

    /// Every group this node coordinates: (name, state, protocol type).
    pub fn list(&self) -> Result<Vec<(String, GroupState, String)>, GroupServiceError> {
        if !self.broker.metadata().topics.contains_key(OFFSETS_TOPIC) {
            return Ok(Vec::new()); // no group was ever used
        }
        if !self.is_loaded() {
            return Err(GroupServiceError::Loading);
        }
        let inner = self.lock();
        Ok(inner
            .coordinator
            .list()
            .into_iter()
            .filter(|(name, _, _)| !inner.consumer.contains(name))
            .collect())
    }

    /// Deletes the committed offsets of some partitions of a group that has no members
    /// (Kafka's OffsetDelete; a group with members is still using them).
    pub async fn delete_offsets(
        &self,
        group: &str,
        partitions: &[(String, i32)],
    ) -> Result<(), GroupServiceError> {
        let partition = self.check_local(group)?;
        {
            let inner = self.lock();
            if inner.has_members(group) {
                return Err(GroupError::NonEmptyGroup.into());
            }
            if inner.coordinator.describe(group).is_none()
                && !inner.consumer.contains(group)
                && !inner.offsets.contains_key(group)
            {
                return Err(GroupError::GroupIdNotFound.into());
            }
        }
        self.write_tombstones(group, partition, partitions).await?;
        let mut inner = self.lock();
        if let Some(offsets) = inner.offsets.get_mut(group) {
            for key in partitions {
                offsets.remove(key);
            }
        }
        Ok(())
    }

    async fn write_tombstones(
        &self,
        group: &str,
        partition: i32,
        keys: &[(String, i32)],
    ) -> Result<(), GroupServiceError> {
        if keys.is_empty() {
            return Ok(());
        }
        let batch = offsets::tombstone_batch(group, keys)
            .map_err(|e| BrokerError::Log(runnel_log::LogError::InvalidBatch(e)))?;
        let log = self.broker.leader_log(OFFSETS_TOPIC, partition)?;
        log.append_durable(batch).await.map_err(BrokerError::from)?;
        Ok(())
    }

    /// Deletes the offsets of groups without members whose newest commit is older than
    /// `retention` (Kafka's `offsets.retention.minutes`), and forgets those groups.
    pub async fn expire_offsets(&self, retention: Duration) {
        let cutoff = runnel_log::now_ms() - retention.as_millis() as i64;
        let now = self.now();
        let retention_ms = retention.as_millis() as u64;
        // Expired: empty for the whole retention (counted from when it became empty, or
        // from this node's start for groups known only by their offsets) and no commit
        // within it either.
        let expired: Vec<(String, Vec<StampedKey>)> = {
            let inner = self.lock();
            inner
                .offsets
                .iter()
                .filter(|(group, offsets)| {
                    inner
                        .empty_for(group, now)
                        .is_some_and(|empty| empty >= retention_ms)
                        && offsets.values().all(|c| c.commit_ms < cutoff)
                })
                .map(|(group, offsets)| {
                    let keys = offsets
                        .iter()
                        .map(|(key, c)| (key.clone(), c.commit_ms))
                        .collect();
                    (group.clone(), keys)
                })
                .collect()
        };
        for (group, stamped) in expired {
            let Ok(partition) = self.check_local(&group) else {
                continue;
            };
            let keys: Vec<(String, i32)> = stamped.iter().map(|(key, _)| key.clone()).collect();
            match self.write_tombstones(&group, partition, &keys).await {
                Ok(()) => {
                    {
                        let mut inner = self.lock();
                        // A commit that arrived meanwhile stays (its record follows the
                        // tombstone in the log too).
                        if let Some(offsets) = inner.offsets.get_mut(&group) {
                            for (key, commit_ms) in &stamped {
                                if offsets.get(key).is_some_and(|c| c.commit_ms == *commit_ms) {
                                    offsets.remove(key);
                                }
                            }
                            if offsets.is_empty() {
                                inner.offsets.remove(&group);
                                let _ = inner.coordinator.delete(&group);
                                let _ = inner.consumer.delete(&group);
                            }
                        }
                    }
                    self.forget_stored(&group, partition).await;
                    tracing::info!(%group, partitions = keys.len(), "expired the committed offsets of an empty group");
                }
                Err(error) => tracing::warn!(%group, %error, "expiring committed offsets"),
            }
        }
    }

    /// Forgets the groups, of either protocol, that have no members and no committed
    /// offsets, as Kafka's periodic cleanup does: nothing of them would survive a
    /// restart's reload anyway, and otherwise every group ever named stays in memory.
    pub async fn forget_empty_groups(&self) {
        let now = self.now();
        let candidates: Vec<String> = {
            let inner = self.lock();
            let classic = inner
                .coordinator
                .states()
                .into_iter()
                .filter(|(_, state)| *state == GroupState::Empty)
                .map(|(name, _)| name);
            let consumer = inner
                .consumer
                .names()
                .into_iter()
                .filter(|name| inner.consumer.empty_for(name, now).is_some());
            classic
                .chain(consumer)
                .filter(|name| inner.offsets.get(name).is_none_or(BTreeMap::is_empty))
                .collect()
        };
        for group in candidates {
            let Ok(partition) = self.check_local(&group) else {
                continue;
            };
            let forgotten = {
                let mut inner = self.lock();
                // Checked again: a member or a commit may have come meanwhile.
                let still_unused = !inner.has_members(&group)
                    && inner.offsets.get(&group).is_none_or(BTreeMap::is_empty);
                if still_unused {
                    inner.offsets.remove(&group);
                    let _ = inner.coordinator.delete(&group);
                    let _ = inner.consumer.delete(&group);
                }
                still_unused
            };
            if forgotten {
                self.forget_stored(&group, partition).await;
                tracing::debug!(%group, "forgot an empty group without committed offsets");
            }
        }
    }

    /// Writes the tombstones of a forgotten group's stored state (classic and KIP-848), so
    /// a restart does not bring it back.
    async fn forget_stored(&self, group: &str, partition: i32) {
        if let Err(error) = self.write_group(group, partition, None).await {
            tracing::warn!(%group, %error, "writing the tombstone of a forgotten group");
        }
        self.store_consumer_group(group).await;
    }

    /// A ConsumerGroupHeartbeat (KIP-848): joins, leaves, or keeps a member and moves it
    /// towards its target assignment.
    pub async fn consumer_heartbeat(
        &self,
        request: ConsumerHeartbeat,
    ) -> Result<ConsumerHeartbeatAnswer, GroupServiceError> {
        self.check_local(&request.group)?;
        let topics: consumer::Topics = self
            .broker
            .metadata()
            .topics
            .iter()
            .map(|(name, topic)| (name.clone(), (topic.id, topic.partitions.len() as u32)))
            .collect();
        let group = request.group.clone();
        let answer = {
            let now = self.now();
            let mut inner = self.lock();
            if inner.classic_has_members(&request.group) {
                return Err(ConsumerGroupError::ClassicGroup.into());
            }
            inner.consumer.heartbeat(request, &topics, now)?
        };
        // Stored before the member hears of it, so a restart never forgets an epoch or an
        // assignment a member was told; if that fails, the member hears of the failure
        // (a retriable coordinator error) instead.
        self.try_store_consumer_group(&group).await?;
        Ok(answer)
    }

    /// Writes a consumer-protocol group to the offsets topic if it changed since it was
    /// last written (a tombstone once it is gone), logging a failure: a group stored out
    /// of date only makes its members rejoin after a restart. Heartbeats use
    /// [`GroupService::try_store_consumer_group`] to answer with the failure instead.
    async fn store_consumer_group(&self, group: &str) {
        if let Err(error) = self.try_store_consumer_group(group).await {
            tracing::warn!(%group, %error, "storing the consumer group");
        }
    }

    async fn try_store_consumer_group(&self, group: &str) -> Result<(), GroupServiceError> {
        let _writing = self.consumer_writes.lock().await;
        let (snapshot, previous) = {
            let inner = self.lock();
            (
                inner.consumer.stored(group),
                inner.consumer_stored.get(group).cloned(),
            )
        };
        if snapshot == previous {
            return Ok(());
        }
        let partition = self.check_local(group)?;
        let written = async {
            let batch = offsets::consumer_group_batch(group, snapshot.as_ref())
                .map_err(|e| BrokerError::Log(runnel_log::LogError::InvalidBatch(e)))?;
            let log = self.broker.leader_log(OFFSETS_TOPIC, partition)?;
            log.append_durable(batch).await.map_err(BrokerError::from)?;
            Ok::<(), GroupServiceError>(())
        };
        match written.await {
            Ok(()) => {
                let mut inner = self.lock();
                match snapshot {
                    Some(snapshot) => inner.consumer_stored.insert(group.to_string(), snapshot),
                    None => inner.consumer_stored.remove(group),
                };
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// A consumer-protocol group (ConsumerGroupDescribe); `None` if there is none.
    pub fn consumer_describe(
        &self,
        group: &str,
    ) -> Result<Option<ConsumerGroupDescription>, GroupServiceError> {
        self.check_local(group)?;
        Ok(self.lock().consumer.describe(group))
    }

    /// Every consumer-protocol group this node coordinates: (name, state).
    pub fn list_consumer(&self) -> Result<Vec<(String, ConsumerGroupState)>, GroupServiceError> {
        if !self.broker.metadata().topics.contains_key(OFFSETS_TOPIC) {
            return Ok(Vec::new());
        }
        if !self.is_loaded() {
            return Err(GroupServiceError::Loading);
        }
        Ok(self.lock().consumer.list())
    }

    /// Checks an OffsetFetch that names a member of a consumer-protocol group.
    pub fn check_consumer_fetch(
        &self,
        group: &str,
        member_id: &str,
        epoch: i32,
    ) -> Result<(), GroupServiceError> {
        let inner = self.lock();
        if epoch >= 0 && inner.consumer.contains(group) {
            inner.consumer.check_commit(group, member_id, epoch)?;
        }
        Ok(())
    }

    /// Deletes an empty group and its committed offsets (tombstones in the offsets topic).
    pub async fn delete(&self, group: &str) -> Result<(), GroupServiceError> {
        let partition = self.check_local(group)?;
        let keys: Vec<(String, i32)> = {
            let mut inner = self.lock();
            if inner.consumer.contains(group) {
                inner.consumer.delete(group)?;
                // A classic entry of the same name (its offsets loaded at start) goes too.
                let _ = inner.coordinator.delete(group);
            } else {
                match inner.coordinator.describe(group) {
                    None if !inner.offsets.contains_key(group) => {
                        return Err(GroupError::GroupIdNotFound.into());
                    }
                    _ => {}
                }
                inner.coordinator.delete(group)?;
            }
            inner
                .offsets
                .get(group)
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default()
        };
        self.write_tombstones(group, partition, &keys).await?;
        self.write_group(group, partition, None).await?;
        self.store_consumer_group(group).await;
        self.lock().offsets.remove(group);
        Ok(())
    }
}

/// The groups that a step of the coordinator left Empty (from another state), with the
/// state to store for them.
fn emptied_groups(
    before: &HashMap<String, GroupState>,
    coordinator: &Coordinator,
) -> Vec<(String, coordinator::StoredGroup)> {
    coordinator
        .states()
        .into_iter()
        .filter(|(name, state)| {
            *state == GroupState::Empty
                && before
                    .get(name)
                    .is_some_and(|earlier| *earlier != GroupState::Empty)
        })
        .filter_map(|(name, _)| coordinator.stored(&name).map(|stored| (name, stored)))
        .collect()
}
