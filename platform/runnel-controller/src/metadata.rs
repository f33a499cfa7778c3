//! The metadata state machine: what the cluster knows, and the commands that change it.
//!
//! Every change is a [`Command`] appended to the Raft log; every node applies the log in
//! order with [`Metadata::apply`]. Applying is deterministic (no clock, no randomness, no
//! I/O), so all nodes hold identical metadata at the same log index. A command that breaks
//! a rule changes nothing and returns a [`MetadataError`] saying why, as Kafka's admin APIs
//! do. Retried commands are safe: creating a topic again with the same UUID (a client
//! retrying after a leader change) succeeds with the original result, registering a node
//! again updates it.
//!
//! Placement is part of applying `CreateTopic` and `CreatePartitions`: replicas go to live
//! brokers, each new partition's leader to the broker leading the fewest partitions, its
//! followers to the brokers holding the fewest replicas (ties broken by node id).

use std::collections::{BTreeMap, BTreeSet};

use runnel_config::{TopicConfig, validate_topic_name};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub type NodeId = u64;

/// What a node does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRoles {
    /// A voter of the metadata quorum.
    pub controller: bool,
    /// Hosts partitions.
    pub broker: bool,
}

/// A node as registered: its id, the address clients or peers use for each listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub kafka: String,
    pub grpc: String,
    pub cluster: String,
    pub http: String,
    pub roles: NodeRoles,
    /// Whether the node is live; fenced nodes get no new replicas and lead nothing new.
    pub alive: bool,
}

/// One partition's replica set and leadership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMeta {
    pub replicas: Vec<NodeId>,
    pub leader: Option<NodeId>,
    pub leader_epoch: i32,
    pub isr: Vec<NodeId>,
}

/// A topic: its id, its configuration overrides (Kafka names) and its partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    pub id: Uuid,
    pub configs: BTreeMap<String, String>,
    pub partitions: Vec<PartitionMeta>,
}

/// A deployed Wasm function (DESIGN §5): what the brokers leading its input partitions
/// run. The component itself is in the object store under its SHA-256 `digest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FunctionSpec {
    pub name: String,
    /// `transform` or `consumer`.
    #[serde(default)]
    pub kind: String,
    /// 1 at the first deploy, one more at every redeploy (set when applied).
    #[serde(default)]
    pub version: u64,
    /// The component's SHA-256, hex: its key in the object store.
    #[serde(default)]
    pub digest: String,
    #[serde(default)]
    pub component_bytes: u64,
    #[serde(default)]
    pub inputs: Vec<String>,
    #[serde(default)]
    pub outputs: Vec<String>,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// The host interfaces the function may import (`log`, `config`, `kv`, `metrics`,
    /// `produce`); a component importing any other is refused.
    #[serde(default)]
    pub grants: Vec<String>,
    #[serde(default)]
    pub limits: FunctionLimits,
    /// What happens to a batch that still fails after its retries: `dlq`, `retry` or
    /// `stop`.
    #[serde(default)]
    pub on_failure: String,
    /// Paused functions keep their spec and progress but do not run.
    #[serde(default)]
    pub paused: bool,
    /// Connectors: the hosts their outgoing HTTP may reach (`host`, `host:port`,
    /// `*.domain`); everything else is refused.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// Sources: how long to wait between polls that returned less than a full batch
    /// (0: [`DEFAULT_POLL_INTERVAL_MS`]).
    #[serde(default)]
    pub poll_interval_ms: u64,
}

/// A source's poll interval unless its spec sets one.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 1000;

/// The limits of a function's instances and of its failure handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionLimits {
    pub memory_bytes: u64,
    pub call_timeout_ms: u64,
    /// Records per call of the function.
    pub batch_records: u32,
    /// Attempts after the first before the failure policy applies.
    pub retries: u32,
}

impl Default for FunctionLimits {
    fn default() -> Self {
        FunctionLimits {
            memory_bytes: 64 << 20,
            call_timeout_ms: 1000,
            batch_records: 1000,
            retries: 3,
        }
    }
}

/// The function kinds the metadata takes: functions, then connectors.
pub const FUNCTION_KINDS: [&str; 4] = ["transform", "consumer", "source", "sink"];
/// The failure policies of a function.
pub const FUNCTION_FAILURE_POLICIES: [&str; 3] = ["dlq", "retry", "stop"];

/// Room for users (filled with authentication).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct UserSpec {
    pub name: String,
}

/// Room for ACLs (filled with authorization).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AclSpec {
    pub principal: String,
}

/// All cluster metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Metadata {
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    pub topics: BTreeMap<String, TopicMeta>,
    pub functions: BTreeMap<String, FunctionSpec>,
    pub users: BTreeMap<String, UserSpec>,
    pub acls: Vec<AclSpec>,
    /// The first producer id not yet handed out (Kafka's idempotent producers).
    #[serde(default)]
    pub next_producer_id: i64,
}

/// A change to the metadata, as it is stored in the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Adds a node or updates its addresses and roles; the node is marked alive.
    RegisterNode(NodeInfo),
    /// Marks a node alive or not. Fencing a node also takes it out of every ISR it is in
    /// (unless it is the last member) and moves the leadership of the partitions it led to
    /// the first live member left in their ISR, in a new leader epoch.
    SetNodeAlive {
        id: NodeId,
        alive: bool,
    },
    /// A partition's leader changes its ISR (Kafka's AlterPartition): a follower that fell
    /// behind leaves it, one that caught up joins it. Refused unless `leader` still leads
    /// the partition in `leader_epoch` and the ISR is still `current` (the one the leader
    /// decided from: a fencing since may have removed a member it would add back).
    AlterIsr {
        topic: String,
        partition: u32,
        leader: NodeId,
        leader_epoch: i32,
        current: Vec<NodeId>,
        isr: Vec<NodeId>,
    },
    /// Creates a topic. The proposer draws `id`, so every voter stores the same UUID.
    CreateTopic {
        name: String,
        id: Uuid,
        partitions: u32,
        replication_factor: u16,
        configs: BTreeMap<String, String>,
    },
    DeleteTopic {
        name: String,
    },
    /// Grows a topic to `total` partitions (never shrinks).
    CreatePartitions {
        name: String,
        total: u32,
    },
    /// Sets and removes configuration overrides (Kafka's IncrementalAlterConfigs; a full
    /// AlterConfigs removes every key it does not set).
    AlterTopicConfigs {
        name: String,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    },
    /// Hands out the next `count` producer ids, as a block a broker then gives to its
    /// producers one by one (Kafka's AllocateProducerIds).
    AllocateProducerIds {
        count: u32,
    },
    /// Deploys a function, or redeploys it (its version goes up by one; a paused function
    /// stays paused, and a spec with `paused` set deploys paused).
    DeployFunction(FunctionSpec),
    SetFunctionPaused {
        name: String,
        paused: bool,
    },
    DeleteFunction {
        name: String,
    },
}

/// What an applied command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    NodeRegistered,
    NodeAliveSet,
    IsrAltered,
    TopicCreated {
        id: Uuid,
        partitions: Vec<PartitionMeta>,
    },
    TopicDeleted {
        id: Uuid,
    },
    PartitionsCreated {
        added: Vec<PartitionMeta>,
    },
    ConfigsAltered,
    /// The ids `first .. first + count` belong to the proposer.
    ProducerIds {
        first: i64,
        count: u32,
    },
    FunctionDeployed {
        version: u64,
    },
    FunctionPausedSet,
    FunctionDeleted,
}

/// Why a command was refused. Nothing of a refused command is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetadataError {
    #[error("topic `{0}` already exists")]
    TopicAlreadyExists(String),
    #[error("unknown topic `{0}`")]
    UnknownTopic(String),
    #[error("invalid topic name `{name}`: {reason}")]
    InvalidTopicName { name: String, reason: String },
    #[error("invalid partition count: {0}")]
    InvalidPartitions(String),
    #[error("replication factor {requested} is larger than the {available} live broker(s)")]
    InvalidReplicationFactor { requested: u16, available: usize },
    #[error("{0}")]
    InvalidConfig(String),
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    #[error("node {id}: {reason}")]
    InvalidNode { id: NodeId, reason: String },
    #[error("every producer id has been handed out")]
    ProducerIdsExhausted,
    #[error("unknown function `{0}`")]
    UnknownFunction(String),
    /// An ISR change from a leader that no longer leads, or leads in another epoch.
    #[error("{topic}-{partition}: {reason}")]
    StaleLeader {
        topic: String,
        partition: u32,
        reason: String,
    },
    #[error("invalid ISR for {topic}-{partition}: {reason}")]
    InvalidIsr {
        topic: String,
        partition: u32,
        reason: String,
    },
    #[error("invalid function: {0}")]
    InvalidFunction(String),
}

/// The result of applying a command, as the Raft state machine returns it.
pub type Response = Result<Applied, MetadataError>;

/// Kafka's limits: at most this many partitions in one request.
const MAX_PARTITIONS: u32 = 100_000;

impl Metadata {
    /// Applies one command. On error nothing changed.
    pub fn apply(&mut self, command: &Command) -> Response {
        match command {
            Command::RegisterNode(node) => self.register_node(node),
            Command::SetNodeAlive { id, alive } => {
                let node = self
                    .nodes
                    .get_mut(id)
                    .ok_or(MetadataError::UnknownNode(*id))?;
                node.alive = *alive;
                if !*alive {
                    self.fence_replicas(*id);
                }
                Ok(Applied::NodeAliveSet)
            }
            Command::AlterIsr {
                topic,
                partition,
                leader,
                leader_epoch,
                current,
                isr,
            } => self.alter_isr(topic, *partition, (*leader, *leader_epoch), current, isr),
            Command::CreateTopic {
                name,
                id,
                partitions,
                replication_factor,
                configs,
            } => self.create_topic(name, *id, *partitions, *replication_factor, configs),
            Command::DeleteTopic { name } => {
                let topic = self
                    .topics
                    .remove(name)
                    .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
                Ok(Applied::TopicDeleted { id: topic.id })
            }
            Command::CreatePartitions { name, total } => self.create_partitions(name, *total),
            Command::AlterTopicConfigs { name, set, remove } => {
                self.alter_topic_configs(name, set, remove)
            }
            Command::AllocateProducerIds { count } => {
                let first = self.next_producer_id;
                let next = first
                    .checked_add(i64::from(*count))
                    .ok_or(MetadataError::ProducerIdsExhausted)?;
                self.next_producer_id = next;
                Ok(Applied::ProducerIds {
                    first,
                    count: *count,
                })
            }
            Command::DeployFunction(spec) => self.deploy_function(spec),
            Command::SetFunctionPaused { name, paused } => {
                let function = self
                    .functions
                    .get_mut(name)
                    .ok_or_else(|| MetadataError::UnknownFunction(name.clone()))?;
                function.paused = *paused;
                Ok(Applied::FunctionPausedSet)
            }
            Command::DeleteFunction { name } => {
                self.functions
                    .remove(name)
                    .ok_or_else(|| MetadataError::UnknownFunction(name.clone()))?;
                Ok(Applied::FunctionDeleted)
            }
        }
    }

    /// Takes fenced node `id` out of the ISRs and leaderships it holds. A partition whose
    /// ISR has no live member but `id` keeps it (as leader, if it led): electing a replica
    /// that may lack acknowledged records would lose them (Kafka's clean election).
    fn fence_replicas(&mut self, id: NodeId) {
        let alive: BTreeSet<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.alive)
            .map(|n| n.id)
            .collect();
        for topic in self.topics.values_mut() {
            for partition in &mut topic.partitions {
                if !partition.isr.contains(&id) {
                    continue;
                }
                let Some(&successor) = partition
                    .isr
                    .iter()
                    .find(|r| **r != id && alive.contains(r))
                else {
                    continue;
                };
                partition.isr.retain(|r| *r != id);
                if partition.leader == Some(id) {
                    partition.leader = Some(successor);
                    partition.leader_epoch += 1;
                }
            }
        }
    }

    fn alter_isr(
        &mut self,
        topic: &str,
        index: u32,
        (leader, leader_epoch): (NodeId, i32),
        current: &[NodeId],
        isr: &[NodeId],
    ) -> Response {
        let meta = self
            .topics
            .get_mut(topic)
            .ok_or_else(|| MetadataError::UnknownTopic(topic.to_string()))?;
        let partition = meta
            .partitions
            .get_mut(index as usize)
            .ok_or_else(|| MetadataError::UnknownTopic(format!("{topic}-{index}")))?;
        if partition.leader != Some(leader) || partition.leader_epoch != leader_epoch {
            return Err(MetadataError::StaleLeader {
                topic: topic.to_string(),
                partition: index,
                reason: format!(
                    "node {leader} in epoch {leader_epoch} does not lead it (leader {:?}, epoch {})",
                    partition.leader, partition.leader_epoch
                ),
            });
        }
        if partition.isr != current {
            return Err(MetadataError::StaleLeader {
                topic: topic.to_string(),
                partition: index,
                reason: format!(
                    "the ISR is {:?}, not {current:?} as the leader last saw it",
                    partition.isr
                ),
            });
        }
        let invalid = |reason: String| MetadataError::InvalidIsr {
            topic: topic.to_string(),
            partition: index,
            reason,
        };
        if !isr.contains(&leader) {
            return Err(invalid("it must hold the leader".to_string()));
        }
        let mut unique = isr.to_vec();
        unique.sort_unstable();
        unique.dedup();
        if unique.len() != isr.len() || isr.iter().any(|r| !partition.replicas.contains(r)) {
            return Err(invalid(format!(
                "{isr:?} is not a set of the replicas {:?}",
                partition.replicas
            )));
        }
        partition.isr = isr.to_vec();
        Ok(Applied::IsrAltered)
    }

    fn deploy_function(&mut self, spec: &FunctionSpec) -> Response {
        let invalid = |reason: String| Err(MetadataError::InvalidFunction(reason));
        validate_topic_name(&spec.name).map_err(|reason| {
            MetadataError::InvalidFunction(format!("name `{}`: {reason}", spec.name))
        })?;
        if !FUNCTION_KINDS.contains(&spec.kind.as_str()) {
            return invalid(format!(
                "kind `{}`; one of {}",
                spec.kind,
                FUNCTION_KINDS.join(", ")
            ));
        }
        if !FUNCTION_FAILURE_POLICIES.contains(&spec.on_failure.as_str()) {
            return invalid(format!(
                "on-failure `{}`; one of {}",
                spec.on_failure,
                FUNCTION_FAILURE_POLICIES.join(", ")
            ));
        }
        if spec.digest.len() != 64 || !spec.digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return invalid("the component digest is not a SHA-256".to_string());
        }
        if spec.kind == "source" {
            if !spec.inputs.is_empty() {
                return invalid("a source takes no input topics".to_string());
            }
            if spec.outputs.is_empty() {
                return invalid("a source needs at least one output topic".to_string());
            }
        } else if spec.inputs.is_empty() {
            return invalid("at least one input topic is needed".to_string());
        }
        if spec.kind == "transform" && spec.outputs.is_empty() {
            return invalid("a transform needs at least one output topic".to_string());
        }
        if spec.kind == "sink" && !spec.outputs.is_empty() {
            return invalid("a sink has no output topics".to_string());
        }
        if !spec.allow_hosts.is_empty() && !matches!(spec.kind.as_str(), "source" | "sink") {
            return invalid("only connectors (sources and sinks) make HTTP requests".to_string());
        }
        if spec.kind == "source" && spec.on_failure == "dlq" {
            return invalid(
                "a source has nothing to dead-letter: on-failure `retry` or `stop`".to_string(),
            );
        }
        let bad_port = |host: &str| match host.rsplit_once(':') {
            // `[::1]` alone, or a port after a name or a bracketed address.
            Some((name, port)) if !name.contains(':') || name.ends_with(']') => {
                port.parse::<u16>().is_err()
            }
            _ => false,
        };
        if let Some(host) = spec.allow_hosts.iter().find(|h| {
            h.is_empty() || h.contains('/') || h.chars().any(char::is_whitespace) || bad_port(h)
        }) {
            return invalid(format!(
                "allowed host `{host}`: a host name, `host:port` or `*.domain`"
            ));
        }
        for topic in spec.inputs.iter().chain(&spec.outputs) {
            if !self.topics.contains_key(topic) {
                return Err(MetadataError::UnknownTopic(topic.clone()));
            }
        }
        if let Some(input) = spec
            .inputs
            .iter()
            .find(|input| spec.outputs.contains(input))
        {
            return invalid(format!("`{input}` is both an input and an output"));
        }
        let limits = spec.limits;
        if limits.memory_bytes == 0 || limits.call_timeout_ms == 0 || limits.batch_records == 0 {
            return invalid("memory, call timeout and batch records must be above 0".to_string());
        }
        let mut spec = spec.clone();
        match self.functions.get(&spec.name) {
            Some(existing) => {
                spec.version = existing.version + 1;
                spec.paused = spec.paused || existing.paused;
            }
            None => spec.version = 1,
        }
        let version = spec.version;
        self.functions.insert(spec.name.clone(), spec);
        Ok(Applied::FunctionDeployed { version })
    }

    /// Checks a command against the current state without applying it (Kafka's
    /// `validate_only`).
    pub fn validate(&self, command: &Command) -> Response {
        self.clone().apply(command)
    }

    /// Live brokers, by id.
    pub fn live_brokers(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.alive && n.roles.broker)
            .map(|n| n.id)
            .collect()
    }

    fn register_node(&mut self, node: &NodeInfo) -> Response {
        if node.id == 0 {
            return Err(MetadataError::InvalidNode {
                id: 0,
                reason: "node ids start at 1".to_string(),
            });
        }
        let mut node = node.clone();
        node.alive = true;
        self.nodes.insert(node.id, node);
        Ok(Applied::NodeRegistered)
    }

    fn create_topic(
        &mut self,
        name: &str,
        id: Uuid,
        partitions: u32,
        replication_factor: u16,
        configs: &BTreeMap<String, String>,
    ) -> Response {
        if let Some(existing) = self.topics.get(name) {
            // The same creation arriving again (a retry) succeeds as it did the first time.
            if existing.id == id {
                return Ok(Applied::TopicCreated {
                    id,
                    partitions: existing.partitions.clone(),
                });
            }
            return Err(MetadataError::TopicAlreadyExists(name.to_string()));
        }
        validate_topic_name(name).map_err(|reason| MetadataError::InvalidTopicName {
            name: name.to_string(),
            reason,
        })?;
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(MetadataError::InvalidPartitions(format!(
                "{partitions} partitions; a topic needs 1 to {MAX_PARTITIONS}"
            )));
        }
        check_configs(configs)?;
        let placed = self.place(partitions, replication_factor)?;
        self.topics.insert(
            name.to_string(),
            TopicMeta {
                name: name.to_string(),
                id,
                configs: configs.clone(),
                partitions: placed.clone(),
            },
        );
        Ok(Applied::TopicCreated {
            id,
            partitions: placed,
        })
    }

    fn create_partitions(&mut self, name: &str, total: u32) -> Response {
        let topic = self
            .topics
            .get(name)
            .ok_or_else(|| MetadataError::UnknownTopic(name.to_string()))?;
        let current = topic.partitions.len() as u32;
        if total <= current {
            return Err(MetadataError::InvalidPartitions(format!(
                "topic `{name}` has {current} partitions; it can only grow, not to {total}"
            )));
        }
        if total > MAX_PARTITIONS {
            return Err(MetadataError::InvalidPartitions(format!(
                "{total} partitions is more than {MAX_PARTITIONS}"
            )));
        }
        let replication_factor = topic.partitions.first().map_or(1, |p| p.replicas.len()) as u16;
        let added = self.place(total - current, replication_factor)?;
        if let Some(topic) = self.topics.get_mut(name) {
            topic.partitions.extend(added.iter().cloned());
        }
        Ok(Applied::PartitionsCreated { added })
    }

    fn alter_topic_configs(
        &mut self,
        name: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Response {
        let topic = self
            .topics
            .get(name)
            .ok_or_else(|| MetadataError::UnknownTopic(name.to_string()))?;
        let mut configs = topic.configs.clone();
        for key in remove {
            if TopicConfig::default().get(key).is_none() {
                return Err(MetadataError::InvalidConfig(format!(
                    "unknown topic config `{key}`"
                )));
            }
            configs.remove(key);
        }
        configs.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
        check_configs(&configs)?;
        if let Some(topic) = self.topics.get_mut(name) {
            topic.configs = configs;
        }
        Ok(Applied::ConfigsAltered)
    }

    /// Places `count` new partitions with `replication_factor` replicas on live brokers,
    /// evening out leaders and replicas across them.
    fn place(
        &self,
        count: u32,
        replication_factor: u16,
    ) -> Result<Vec<PartitionMeta>, MetadataError> {
        let brokers = self.live_brokers();
        if replication_factor == 0 || usize::from(replication_factor) > brokers.len() {
            return Err(MetadataError::InvalidReplicationFactor {
                requested: replication_factor,
                available: brokers.len(),
            });
        }
        let mut leaders: BTreeMap<NodeId, usize> = brokers.iter().map(|b| (*b, 0)).collect();
        let mut replicas: BTreeMap<NodeId, usize> = leaders.clone();
        for partition in self.topics.values().flat_map(|t| &t.partitions) {
            if let Some(count) = partition.leader.and_then(|l| leaders.get_mut(&l)) {
                *count += 1;
            }
            for replica in &partition.replicas {
                if let Some(count) = replicas.get_mut(replica) {
                    *count += 1;
                }
            }
        }
        let mut placed = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let count_of =
                |counts: &BTreeMap<NodeId, usize>, b: &NodeId| counts.get(b).copied().unwrap_or(0);
            // Applying runs on every voter: no panics, even on an impossible state.
            let Some(leader) = brokers
                .iter()
                .copied()
                .min_by_key(|b| (count_of(&leaders, b), count_of(&replicas, b), *b))
            else {
                return Err(MetadataError::InvalidReplicationFactor {
                    requested: replication_factor,
                    available: 0,
                });
            };
            let mut followers: Vec<NodeId> =
                brokers.iter().copied().filter(|b| *b != leader).collect();
            followers.sort_by_key(|b| (count_of(&replicas, b), *b));
            followers.truncate(usize::from(replication_factor) - 1);
            let mut set = vec![leader];
            set.extend(followers);
            *leaders.entry(leader).or_default() += 1;
            for replica in &set {
                *replicas.entry(*replica).or_default() += 1;
            }
            placed.push(PartitionMeta {
                replicas: set.clone(),
                leader: Some(leader),
                leader_epoch: 0,
                isr: set,
            });
        }
        Ok(placed)
    }
}

fn check_configs(configs: &BTreeMap<String, String>) -> Result<(), MetadataError> {
    TopicConfig::with_overrides(
        &TopicConfig::default(),
        configs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .map(|_| ())
    .map_err(|e| MetadataError::InvalidConfig(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId) -> NodeInfo {
        NodeInfo {
            id,
            kafka: format!("127.0.0.1:{}", 9092 + id * 10),
            grpc: format!("127.0.0.1:{}", 9093 + id * 10),
            cluster: format!("127.0.0.1:{}", 9094 + id * 10),
            http: format!("127.0.0.1:{}", 9644 + id * 10),
            roles: NodeRoles {
                controller: true,
                broker: true,
            },
            alive: true,
        }
    }

    fn cluster(nodes: u64) -> Metadata {
        let mut metadata = Metadata::default();
        for id in 1..=nodes {
            metadata.apply(&Command::RegisterNode(node(id))).unwrap();
        }
        metadata
    }

    fn create(name: &str, partitions: u32, replication_factor: u16) -> Command {
        Command::CreateTopic {
            name: name.to_string(),
            id: Uuid::new_v4(),
            partitions,
            replication_factor,
            configs: BTreeMap::new(),
        }
    }

    #[test]
    fn topics_follow_kafkas_rules() {
        let mut metadata = cluster(3);
        for bad in ["", ".", "..", "has space", "slash/", &"x".repeat(250)] {
            assert!(
                matches!(
                    metadata.apply(&create(bad, 1, 1)),
                    Err(MetadataError::InvalidTopicName { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            metadata.apply(&create("t", 0, 1)),
            Err(MetadataError::InvalidPartitions(_))
        ));
        assert!(matches!(
            metadata.apply(&create("t", 1, 4)),
            Err(MetadataError::InvalidReplicationFactor {
                requested: 4,
                available: 3
            })
        ));
        let bad_config = Command::CreateTopic {
            name: "t".into(),
            id: Uuid::new_v4(),
            partitions: 1,
            replication_factor: 1,
            configs: [("retention.ms".to_string(), "soon".to_string())].into(),
        };
        let error = metadata.apply(&bad_config).unwrap_err();
        assert!(error.to_string().contains("retention.ms"), "{error}");
        assert!(
            metadata.topics.is_empty(),
            "refused commands change nothing"
        );

        metadata.apply(&create("Usuarios", 2, 3)).unwrap();
        assert!(matches!(
            metadata.apply(&create("Usuarios", 2, 3)),
            Err(MetadataError::TopicAlreadyExists(_))
        ));
    }

    #[test]
    fn a_retried_creation_succeeds_with_the_same_result() {
        let mut metadata = cluster(1);
        let command = create("orders", 3, 1);
        let first = metadata.apply(&command).unwrap();
        assert_eq!(metadata.apply(&command).unwrap(), first);
        assert_eq!(metadata.topics.len(), 1);
    }

    #[test]
    fn leaders_and_replicas_spread_evenly() {
        let mut metadata = cluster(3);
        metadata.apply(&create("a", 6, 2)).unwrap();
        metadata.apply(&create("b", 3, 3)).unwrap();
        let mut leaders = BTreeMap::<NodeId, usize>::new();
        let mut replicas = BTreeMap::<NodeId, usize>::new();
        for partition in metadata.topics.values().flat_map(|t| &t.partitions) {
            *leaders.entry(partition.leader.unwrap()).or_default() += 1;
            for r in &partition.replicas {
                *replicas.entry(*r).or_default() += 1;
            }
            assert_eq!(partition.replicas[0], partition.leader.unwrap());
            assert_eq!(partition.isr, partition.replicas);
            let mut unique = partition.replicas.clone();
            unique.dedup();
            assert_eq!(unique.len(), partition.replicas.len());
        }
        assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![3, 3, 3]);
        assert_eq!(
            replicas.values().copied().collect::<Vec<_>>(),
            vec![7, 7, 7]
        );
    }

    #[test]
    fn fenced_brokers_get_nothing_new() {
        let mut metadata = cluster(3);
        metadata
            .apply(&Command::SetNodeAlive {
                id: 2,
                alive: false,
            })
            .unwrap();
        metadata.apply(&create("a", 4, 2)).unwrap();
        assert!(
            metadata.topics["a"]
                .partitions
                .iter()
                .all(|p| !p.replicas.contains(&2))
        );
    }

    fn fence(metadata: &mut Metadata, id: NodeId) {
        metadata
            .apply(&Command::SetNodeAlive { id, alive: false })
            .unwrap();
    }

    #[test]
    fn fencing_a_leader_moves_leadership_to_a_live_isr_member_in_a_new_epoch() {
        let mut metadata = cluster(3);
        metadata.apply(&create("a", 3, 3)).unwrap();
        metadata.apply(&create("single", 3, 1)).unwrap();
        let before = metadata.topics.clone();
        fence(&mut metadata, 1);
        for (index, partition) in metadata.topics["a"].partitions.iter().enumerate() {
            let old = &before["a"].partitions[index];
            assert!(!partition.isr.contains(&1), "{partition:?}");
            assert_eq!(partition.replicas, old.replicas, "replicas do not change");
            if old.leader == Some(1) {
                assert_eq!(partition.leader_epoch, old.leader_epoch + 1);
                assert_ne!(partition.leader, Some(1));
                assert!(partition.isr.contains(&partition.leader.unwrap()));
            } else {
                assert_eq!(partition.leader, old.leader);
                assert_eq!(partition.leader_epoch, old.leader_epoch);
            }
        }
        // Unreplicated partitions have no one else to go to: they keep their leader.
        assert_eq!(metadata.topics["single"], before["single"]);

        // Node 2 goes too: node 3 leads everything, alone in the ISR; then node 3 goes,
        // and stays the (unavailable) leader rather than hand over to a stale replica.
        fence(&mut metadata, 2);
        fence(&mut metadata, 3);
        for partition in &metadata.topics["a"].partitions {
            assert_eq!(partition.leader, Some(3));
            assert_eq!(partition.isr, vec![3]);
        }
    }

    #[test]
    fn only_the_current_leader_in_its_epoch_alters_the_isr() {
        let mut metadata = cluster(3);
        metadata.apply(&create("a", 1, 3)).unwrap();
        let leader = metadata.topics["a"].partitions[0].leader.unwrap();
        let follower = *metadata.topics["a"].partitions[0]
            .replicas
            .iter()
            .find(|r| **r != leader)
            .unwrap();
        let all = metadata.topics["a"].partitions[0].isr.clone();
        let alter =
            |leader, leader_epoch, current: &[NodeId], isr: Vec<NodeId>| Command::AlterIsr {
                topic: "a".into(),
                partition: 0,
                leader,
                leader_epoch,
                current: current.to_vec(),
                isr,
            };
        metadata
            .apply(&alter(leader, 0, &all, vec![leader, follower]))
            .unwrap();
        assert_eq!(
            metadata.topics["a"].partitions[0].isr,
            vec![leader, follower]
        );
        let before = metadata.clone();
        let now = [leader, follower];
        for refused in [
            alter(follower, 0, &now, vec![follower]),
            alter(leader, 1, &now, vec![leader]),
            alter(leader, 0, &now, vec![follower]),
            alter(leader, 0, &now, vec![leader, leader]),
            alter(leader, 0, &now, vec![leader, 99]),
            // Decided from an ISR that has changed since.
            alter(leader, 0, &all, all.clone()),
        ] {
            assert!(metadata.apply(&refused).is_err(), "{refused:?}");
            assert_eq!(metadata, before);
        }
    }

    #[test]
    fn partitions_only_grow_and_configs_are_checked() {
        let mut metadata = cluster(2);
        metadata.apply(&create("t", 2, 2)).unwrap();
        let grow = |total| Command::CreatePartitions {
            name: "t".into(),
            total,
        };
        assert!(matches!(
            metadata.apply(&grow(2)),
            Err(MetadataError::InvalidPartitions(_))
        ));
        assert!(matches!(
            metadata.apply(&grow(1)),
            Err(MetadataError::InvalidPartitions(_))
        ));
        let Applied::PartitionsCreated { added } = metadata.apply(&grow(5)).unwrap() else {
            panic!("partitions created")
        };
        assert_eq!(added.len(), 3);
        assert_eq!(metadata.topics["t"].partitions.len(), 5);
        assert!(added.iter().all(|p| p.replicas.len() == 2));

        let alter = |set: &[(&str, &str)], remove: &[&str]| Command::AlterTopicConfigs {
            name: "t".into(),
            set: set
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            remove: remove.iter().map(|k| k.to_string()).collect(),
        };
        metadata
            .apply(&alter(&[("cleanup.policy", "compact")], &[]))
            .unwrap();
        assert!(
            metadata
                .apply(&alter(&[("segment.bytes", "1")], &[]))
                .is_err()
        );
        assert!(metadata.apply(&alter(&[], &["colour"])).is_err());
        assert_eq!(metadata.topics["t"].configs["cleanup.policy"], "compact");
        metadata.apply(&alter(&[], &["cleanup.policy"])).unwrap();
        assert!(metadata.topics["t"].configs.is_empty());
        assert!(matches!(
            metadata.apply(&Command::DeleteTopic {
                name: "nope".into()
            }),
            Err(MetadataError::UnknownTopic(_))
        ));
        metadata
            .apply(&Command::DeleteTopic { name: "t".into() })
            .unwrap();
        assert!(metadata.topics.is_empty());
    }

    #[test]
    fn validate_changes_nothing() {
        let metadata = cluster(1);
        let before = metadata.clone();
        assert!(metadata.validate(&create("t", 1, 1)).is_ok());
        assert_eq!(metadata, before);
    }

    #[test]
    fn connector_specs_are_checked_for_their_kind() {
        let mut metadata = cluster(1);
        metadata.apply(&create("events", 1, 1)).unwrap();
        let spec = |kind: &str, inputs: &[&str], outputs: &[&str]| FunctionSpec {
            name: "c".to_string(),
            kind: kind.to_string(),
            digest: "ab".repeat(32),
            inputs: inputs.iter().map(|t| t.to_string()).collect(),
            outputs: outputs.iter().map(|t| t.to_string()).collect(),
            on_failure: "retry".to_string(),
            allow_hosts: vec!["api.example.com:443".to_string()],
            ..FunctionSpec::default()
        };
        let refused = |spec: FunctionSpec| {
            metadata
                .validate(&Command::DeployFunction(spec))
                .expect_err("refused")
                .to_string()
        };
        assert!(refused(spec("source", &["events"], &["events"])).contains("no input"));
        assert!(refused(spec("source", &[], &[])).contains("output topic"));
        assert!(refused(spec("sink", &["events"], &["events"])).contains("no output"));
        let mut dead_letters = spec("source", &[], &["events"]);
        dead_letters.on_failure = "dlq".to_string();
        assert!(refused(dead_letters).contains("nothing to dead-letter"));
        let mut bad_host = spec("sink", &["events"], &[]);
        bad_host.allow_hosts = vec!["api.example.com:http".to_string()];
        assert!(refused(bad_host).contains("allowed host"));
        let mut transform = spec("transform", &["events"], &[]);
        transform.outputs = vec![];
        transform.inputs = vec!["events".to_string()];
        assert!(refused(transform).contains("output topic"));
        let mut fetching = spec("consumer", &["events"], &[]);
        fetching.allow_hosts = vec!["x".to_string()];
        assert!(refused(fetching).contains("only connectors"));
        let mut ipv6 = spec("sink", &["events"], &[]);
        ipv6.allow_hosts = vec!["[::1]:9000".to_string(), "*.internal".to_string()];
        metadata.apply(&Command::DeployFunction(ipv6)).unwrap();
        metadata
            .apply(&Command::DeployFunction(spec("source", &[], &["events"])))
            .unwrap();
    }
}
