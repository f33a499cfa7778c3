//! The `Broker` API: what every frontend (Kafka, gRPC) does with partitions and topics.
//!
//! Frontends translate their wire formats into these calls and the [`BrokerError`]s back;
//! nothing here knows about Kafka frames or protobuf. Reads and writes go to the local
//! partition log, and only on the partition's leader: a request for a partition led by
//! another node gets [`BrokerError::NotLeader`] naming it. Topic administration goes
//! through the controller, so every node sees the same topics.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use runnel_config::TopicConfig;
use runnel_controller::{Applied, Command, Controller, ControllerError, Metadata, NodeId};
use runnel_log::{
    LogError, LogManager, PartitionLog, PendingAppend, ReadResult, Role, TopicPartition,
};

use crate::peers::{OffsetCommit, Peers};
use crate::replication::ReplicaWait;

/// How long topic creation waits for this node to open the new partitions.
pub const ADMIN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Producer ids a broker takes from the controller at a time.
const PRODUCER_ID_BLOCK: u32 = 1000;

/// Node-wide broker behaviour (Kafka's broker configs of the same meaning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSettings {
    /// `auto.create.topics.enable`: a produce or metadata request for an unknown topic
    /// creates it.
    pub auto_create_topics: bool,
    /// `num.partitions`: partitions of an auto-created topic, or of a CreateTopics request
    /// that leaves the count to the broker.
    pub default_partitions: u32,
    /// `default.replication.factor`.
    pub default_replication_factor: u16,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            auto_create_topics: true,
            default_partitions: 1,
            default_replication_factor: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("unknown topic or partition {topic}-{partition}")]
    UnknownTopicOrPartition { topic: String, partition: i32 },
    #[error("unknown topic `{0}`")]
    UnknownTopic(String),
    /// Another node leads the partition (`leader`, if it has one).
    #[error("this node does not lead {topic}-{partition} (leader: {leader:?})")]
    NotLeader {
        topic: String,
        partition: i32,
        leader: Option<NodeId>,
    },
    /// The partition is assigned here but not open yet (it is being created) or offline.
    #[error("{topic}-{partition} is not available on this node yet")]
    NotAvailable { topic: String, partition: i32 },
    #[error("transactional batches are not supported yet")]
    TransactionsUnsupported,
    /// A replica fetch from a node that holds no replica of the partition.
    #[error("node {replica} holds no replica of {topic}-{partition}")]
    NotReplica {
        topic: String,
        partition: i32,
        replica: NodeId,
    },
    /// A replica fetch for another leadership than the current one.
    #[error("{topic}-{partition}: leader epoch {epoch}, but the current one is {current}")]
    LeaderEpoch {
        topic: String,
        partition: i32,
        epoch: i32,
        current: i32,
    },
    /// An `acks=all` write while the ISR is smaller than `min.insync.replicas`.
    #[error("{topic}-{partition} has {isr} in-sync replica(s); min.insync.replicas is {required}")]
    NotEnoughReplicas {
        topic: String,
        partition: i32,
        isr: usize,
        required: u32,
    },
    /// An `acks=all` write appended by the leader that its replicas did not all take in
    /// time; a retry (idempotent, or not) may write it again.
    #[error("{topic}-{partition}: the in-sync replicas did not take the write in time")]
    NotEnoughReplicasAfterAppend { topic: String, partition: i32 },
    /// A call forwarded to another node failed there or on the way.
    #[error("node {node}: {message}")]
    Peer {
        node: NodeId,
        message: String,
        /// Worth trying again (the node is unreachable, or answered with a retriable
        /// error).
        retriable: bool,
    },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Controller(#[from] ControllerError),
}

/// A topic as the admin APIs describe it: its overrides and effective configuration.
#[derive(Debug, Clone)]
pub struct TopicConfigs {
    pub overrides: BTreeMap<String, String>,
    pub effective: TopicConfig,
}

pub struct Broker {
    node_id: NodeId,
    pub(crate) log: Arc<LogManager>,
    controller: Arc<Controller>,
    settings: BrokerSettings,
    /// The rest of the block of producer ids taken from the controller.
    producer_ids: tokio::sync::Mutex<Range<i64>>,
    /// Other nodes, for writes and reads of partitions they lead (set once at startup).
    peers: std::sync::OnceLock<Arc<dyn Peers>>,
    /// The followers' progress on the partitions led here (see [`crate::replication`]).
    pub(crate) leaderships: crate::replication::Leaderships,
    /// Cancelled when the node begins to stop: writes waiting for their replicas give up.
    stopping: tokio_util::sync::CancellationToken,
}

impl Broker {
    pub fn new(
        node_id: NodeId,
        log: Arc<LogManager>,
        controller: Arc<Controller>,
        settings: BrokerSettings,
    ) -> Broker {
        Broker {
            node_id,
            log,
            controller,
            settings,
            producer_ids: tokio::sync::Mutex::new(0..0),
            peers: std::sync::OnceLock::new(),
            leaderships: Default::default(),
            stopping: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Lets this broker forward writes and reads to other nodes; set once (a second call
    /// is ignored). Without it, a partition led elsewhere is [`BrokerError::NotLeader`].
    pub fn set_peers(&self, peers: Arc<dyn Peers>) {
        let _ = self.peers.set(peers);
    }

    /// Where to forward a call for something `leader` holds: the peers and its cluster
    /// address.
    pub(crate) fn peer(
        &self,
        leader: NodeId,
        refused: BrokerError,
    ) -> Result<(&dyn Peers, String), BrokerError> {
        let Some(peers) = self.peers.get() else {
            return Err(refused);
        };
        let address = self
            .metadata()
            .nodes
            .get(&leader)
            .map(|node| node.cluster.clone())
            .ok_or(BrokerError::Peer {
                node: leader,
                message: "no cluster address is known for it".to_string(),
                retriable: true,
            })?;
        Ok((peers.as_ref(), address))
    }

    /// Writes `records` (whole batches) to a partition this node leads and waits until
    /// they are appended; never forwarded (what a forwarded write is served with).
    pub async fn produce_here(
        &self,
        topic: &str,
        partition: i32,
        records: Bytes,
        durable: bool,
    ) -> Result<(), BrokerError> {
        self.submit_produce(topic, partition, records, durable)
            .await?
            .wait()
            .await?;
        Ok(())
    }

    /// Writes `records` (whole batches) to a partition wherever it is led: through the
    /// local log when this node leads it, else forwarded to its leader. Returns once they
    /// are appended (fsynced, with `durable`).
    pub async fn produce_anywhere(
        &self,
        topic: &str,
        partition: i32,
        records: Bytes,
        durable: bool,
    ) -> Result<(), BrokerError> {
        match self
            .submit_produce(topic, partition, records.clone(), durable)
            .await
        {
            Ok(pending) => {
                pending.wait().await?;
                Ok(())
            }
            Err(
                refused @ BrokerError::NotLeader {
                    leader: Some(leader),
                    ..
                },
            ) => {
                self.forward_produce(leader, refused, topic, partition, records, durable)
                    .await
            }
            Err(error) => Err(error),
        }
    }

    /// Sends `records` to `leader`, which [`Broker::submit_produce`] named in `refused`;
    /// without peers the refusal is the answer.
    pub async fn forward_produce(
        &self,
        leader: NodeId,
        refused: BrokerError,
        topic: &str,
        partition: i32,
        records: Bytes,
        durable: bool,
    ) -> Result<(), BrokerError> {
        let (peers, address) = self.peer(leader, refused)?;
        peers
            .produce(
                leader,
                address,
                topic.to_string(),
                partition,
                records,
                durable,
            )
            .await
    }

    /// Reads whole batches from `offset` (or the log start, if that is later) of a
    /// partition wherever it is led.
    pub async fn read_anywhere(
        &self,
        topic: &str,
        partition: i32,
        offset: u64,
        max_bytes: usize,
    ) -> Result<ReadResult, BrokerError> {
        match self.leader_log(topic, partition) {
            Ok(log) => Ok(log.read(offset.max(log.log_start()), max_bytes).await?),
            Err(
                refused @ BrokerError::NotLeader {
                    leader: Some(leader),
                    ..
                },
            ) => {
                let (peers, address) = self.peer(leader, refused)?;
                peers
                    .read(
                        leader,
                        address,
                        topic.to_string(),
                        partition,
                        offset,
                        max_bytes,
                    )
                    .await
            }
            Err(error) => Err(error),
        }
    }

    /// Sends an offset commit to `coordinator`, another node.
    pub async fn commit_offset_at(
        &self,
        coordinator: NodeId,
        commit: OffsetCommit,
    ) -> Result<(), BrokerError> {
        let refused = BrokerError::Peer {
            node: coordinator,
            message: "this node cannot reach other nodes".to_string(),
            retriable: false,
        };
        let (peers, address) = self.peer(coordinator, refused)?;
        peers.commit_offset(coordinator, address, commit).await
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The node is stopping: `acks=all` writes still waiting for their replicas fail at
    /// once (retriable) instead of holding the shutdown up. The replicas a write waits for
    /// may be stopping too, and without a controller quorum no one leaves the ISR.
    pub fn begin_shutdown(&self) {
        self.stopping.cancel();
    }

    pub fn settings(&self) -> &BrokerSettings {
        &self.settings
    }

    /// The cluster metadata as this node last applied it.
    pub fn metadata(&self) -> Arc<Metadata> {
        self.controller.metadata()
    }

    pub fn controller(&self) -> &Arc<Controller> {
        &self.controller
    }

    /// The local log of a partition this node leads.
    pub fn leader_log(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<PartitionLog>, BrokerError> {
        let metadata = self.metadata();
        let unknown = || BrokerError::UnknownTopicOrPartition {
            topic: topic.to_string(),
            partition,
        };
        let meta = metadata.topics.get(topic).ok_or_else(unknown)?;
        let index = u32::try_from(partition).map_err(|_| unknown())?;
        let assigned = meta.partitions.get(index as usize).ok_or_else(unknown)?;
        if assigned.leader != Some(self.node_id) {
            return Err(BrokerError::NotLeader {
                topic: topic.to_string(),
                partition,
                leader: assigned.leader,
            });
        }
        let not_available = || BrokerError::NotAvailable {
            topic: topic.to_string(),
            partition,
        };
        let log = self
            .log
            .get(&TopicPartition::new(topic, index))
            .ok_or_else(not_available)?;
        // Until reconciliation has replaced an earlier topic's data, the directory is not
        // this topic's.
        if log.topic_id().as_deref() != Some(meta.id.to_string().as_str()) {
            return Err(not_available());
        }
        // A replicated partition is led once replication took the leadership's epoch (its
        // batches carry it, and followers are checked against it).
        if assigned.replicas.len() > 1
            && (log.leader_epoch() != assigned.leader_epoch || log.role() != Role::Leader)
        {
            return Err(not_available());
        }
        Ok(log)
    }

    /// Queues `records` (one or more record batches as a Kafka producer sends them) for
    /// appending to a partition this node leads. Returns once they are queued, in order,
    /// so a caller that submits requests one after the other keeps their order; the
    /// returned future gives the first batch's offsets. Every batch is checked before
    /// any is queued: a bad one means nothing is written.
    pub async fn submit_produce(
        &self,
        topic: &str,
        partition: i32,
        records: Bytes,
        durable: bool,
    ) -> Result<PendingProduce, BrokerError> {
        let log = self.leader_log(topic, partition)?;
        let mut batches = split_batches(&records, &log)?;
        // The leader epoch of a replicated partition (which `leader_log` checked the log
        // has): its appends are refused if the log stops leading in it before they land.
        let metadata = self.metadata();
        let meta = crate::replication::partition_meta(
            &metadata,
            &TopicPartition::new(topic, partition as u32),
        );
        let epoch = meta
            .filter(|p| p.replicas.len() > 1)
            .map(|p| p.leader_epoch);
        let replicas = match epoch {
            Some(epoch) if durable => {
                crate::replication::check_in_sync(meta, &log).map_err(|(isr, required)| {
                    BrokerError::NotEnoughReplicas {
                        topic: topic.to_string(),
                        partition,
                        isr,
                        required,
                    }
                })?;
                Some(ReplicaWait {
                    log: log.clone(),
                    epoch,
                    topic: topic.to_string(),
                    partition,
                    metadata: self.controller.subscribe(),
                    stopping: self.stopping.clone(),
                })
            }
            _ => None,
        };
        if batches.len() > 1 {
            // All are checked before any is queued. Decompressing is CPU work that must
            // not hold up the async runtime.
            let checker = log.clone();
            batches = tokio::task::spawn_blocking(move || -> Result<_, LogError> {
                for batch in &batches {
                    checker.validate_batch(batch)?;
                }
                Ok(batches)
            })
            .await
            .map_err(|e| LogError::Io {
                action: "validate batches".to_string(),
                cause: std::io::Error::other(e),
            })??;
        }
        let mut pending = Vec::with_capacity(batches.len());
        for batch in batches {
            pending.push(match epoch {
                Some(epoch) => log.submit_leader_append(batch, durable, epoch).await?,
                None => log.submit_append(batch, durable).await?,
            });
        }
        Ok(PendingProduce { pending, replicas })
    }

    /// Reads whole batches from `offset`, about `max_bytes` of them.
    pub async fn read(
        &self,
        topic: &str,
        partition: i32,
        offset: u64,
        max_bytes: usize,
    ) -> Result<ReadResult, BrokerError> {
        Ok(self
            .leader_log(topic, partition)?
            .read(offset, max_bytes)
            .await?)
    }

    /// Creates `topic` with the broker's defaults if auto-creation is on and it does not
    /// exist. Returns whether the topic exists afterwards.
    pub async fn auto_create_topic(&self, topic: &str) -> Result<bool, BrokerError> {
        if self.metadata().topics.contains_key(topic) {
            return Ok(true);
        }
        if !self.settings.auto_create_topics || runnel_config::validate_topic_name(topic).is_err() {
            return Ok(false);
        }
        // Two requests racing to create it: one wins, the other finds it exists.
        let command = Command::CreateTopic {
            name: topic.to_string(),
            id: uuid::Uuid::new_v4(),
            partitions: self.settings.default_partitions,
            replication_factor: self.settings.default_replication_factor,
            configs: BTreeMap::new(),
        };
        match self.controller.propose(command).await {
            Ok(_) => {
                self.wait_until_served(topic, ADMIN_WAIT).await;
                Ok(true)
            }
            Err(ControllerError::Rejected(
                runnel_controller::MetadataError::TopicAlreadyExists(_),
            )) => Ok(true),
            Err(error) => Err(error.into()),
        }
    }

    /// Waits (up to `timeout`) until every partition of `topic` that this node leads is
    /// open here, so a client told the topic exists can use it at once. Topic creation is
    /// applied by the controller first and the partitions opened after; this bridges the
    /// gap (milliseconds) for admin calls, which are rare enough to poll.
    pub async fn wait_until_served(&self, topic: &str, timeout: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let metadata = self.metadata();
            let Some(meta) = metadata.topics.get(topic) else {
                return;
            };
            let pending = meta
                .partitions
                .iter()
                .enumerate()
                .any(|(index, partition)| {
                    partition.leader == Some(self.node_id)
                        && matches!(
                            self.leader_log(topic, index as i32),
                            Err(BrokerError::NotAvailable { .. })
                        )
                });
            if !pending || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Proposes `command`, or with `validate_only` checks it against the current metadata
    /// without changing anything.
    pub async fn admin(
        &self,
        command: Command,
        validate_only: bool,
    ) -> Result<Applied, BrokerError> {
        if validate_only {
            return self
                .metadata()
                .validate(&command)
                .map_err(|e| BrokerError::Controller(e.into()));
        }
        Ok(self.controller.propose(command).await?)
    }

    /// A topic's overrides and effective configuration.
    pub fn topic_configs(&self, topic: &str) -> Result<TopicConfigs, BrokerError> {
        let metadata = self.metadata();
        let meta = metadata
            .topics
            .get(topic)
            .ok_or_else(|| BrokerError::UnknownTopic(topic.to_string()))?;
        let effective = TopicConfig::with_overrides(
            self.log.defaults(),
            meta.configs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .unwrap_or_else(|_| self.log.defaults().clone());
        Ok(TopicConfigs {
            overrides: meta.configs.clone(),
            effective,
        })
    }

    /// The node-wide topic defaults (the `[log]` section).
    pub fn topic_defaults(&self) -> &TopicConfig {
        self.log.defaults()
    }

    /// A new producer id for an idempotent producer, from a block taken from the
    /// controller (so ids are unique across the cluster and across restarts).
    pub async fn next_producer_id(&self) -> Result<i64, BrokerError> {
        let mut block = self.producer_ids.lock().await;
        if block.is_empty() {
            let applied = self
                .controller
                .propose(Command::AllocateProducerIds {
                    count: PRODUCER_ID_BLOCK,
                })
                .await?;
            let Applied::ProducerIds { first, count } = applied else {
                return Err(BrokerError::Controller(ControllerError::Unavailable(
                    "unexpected answer to a producer id allocation".to_string(),
                )));
            };
            *block = first..first + i64::from(count);
        }
        let id = block.start;
        block.start += 1;
        Ok(id)
    }
}

/// The appends of one produce to one partition, queued in order.
pub struct PendingProduce {
    pending: Vec<PendingAppend>,
    /// For `acks=all` on a replicated partition: the wait for the ISR.
    replicas: Option<ReplicaWait>,
}

/// Where a produce landed: the first batch's base offset, the last batch's last offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    pub base_offset: u64,
    pub last_offset: u64,
    pub log_append_time: Option<i64>,
}

impl PendingProduce {
    pub async fn wait(self) -> Result<Produced, BrokerError> {
        let mut produced: Option<Produced> = None;
        for pending in self.pending {
            let appended = pending.wait().await?;
            let entry = produced.get_or_insert(Produced {
                base_offset: appended.base_offset,
                last_offset: appended.last_offset,
                log_append_time: appended.log_append_time,
            });
            entry.last_offset = appended.last_offset;
        }
        let produced = produced.ok_or_else(|| {
            BrokerError::Log(LogError::InvalidBatch(
                runnel_log::BatchError::Inconsistent("no record batch in the request".to_string()),
            ))
        })?;
        if let Some(replicas) = &self.replicas {
            replicas.wait(produced.last_offset).await?;
        }
        Ok(produced)
    }
}

/// Splits a produce's records into its batches, refusing transactional and oversized ones.
/// One batch (the usual case) is handed to the log as it is, which validates it; with
/// several, the caller validates every one first, so a bad one in the middle means none is
/// written.
fn split_batches(records: &Bytes, log: &PartitionLog) -> Result<Vec<BytesMut>, BrokerError> {
    let mut batches = Vec::new();
    let mut end = 0;
    let max = log.config().max_message_bytes;
    for (position, header) in runnel_log::batch::batch_positions(records) {
        if header.is_transactional() {
            return Err(BrokerError::TransactionsUnsupported);
        }
        let len = header.total_len() as usize;
        // Checked before copying anything.
        if len as u64 > max {
            return Err(BrokerError::Log(LogError::BatchTooLarge { size: len, max }));
        }
        batches.push(BytesMut::from(&records[position..position + len]));
        end = position + len;
    }
    if batches.is_empty() || end != records.len() {
        // Let the log's validation say precisely what is wrong with the bytes.
        let batch = BytesMut::from(&records[end..]);
        let error = runnel_log::batch::validate(&batch)
            .err()
            .unwrap_or_else(|| {
                runnel_log::BatchError::Inconsistent("no record batch in the request".to_string())
            });
        return Err(BrokerError::Log(LogError::InvalidBatch(error)));
    }
    Ok(batches)
}
