//! Keeping the partitions on this node in line with the metadata.
//!
//! [`plan`] compares the metadata with what the log holds and says what to create, what to
//! reconfigure and what to delete. [`run`] applies a plan for every metadata version it
//! sees (the latest wins; versions in between may be skipped, which is fine since a plan is
//! computed from the whole state). A failed step is logged and retried with the next
//! version or after a short delay; it never stops the loop.
//!
//! Deleting is deliberate: a partition is deleted only when it leaves the metadata between
//! two versions this node has seen (its topic was deleted, or it moved away). A local
//! partition the metadata has never listed (a *stray*, say data from another cluster or
//! from before the metadata was reset) is reported and left alone, never deleted on a guess.
//! Partition directories do not record the topic's UUID yet, so a topic deleted and created
//! again under the same name while this node was away keeps its old local data.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use runnel_config::TopicConfig;
use runnel_controller::{Metadata, NodeId};
use runnel_log::{LogManager, TopicPartition};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What to change on this node.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub create: Vec<(TopicPartition, TopicConfig)>,
    pub reconfigure: Vec<(TopicPartition, TopicConfig)>,
    pub delete: Vec<TopicPartition>,
    /// Local partitions the metadata has never given this node: reported, kept.
    pub strays: Vec<TopicPartition>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.reconfigure.is_empty() && self.delete.is_empty()
    }
}

/// The partitions `node` should host according to `metadata`, with their effective configs
/// (`defaults` overlaid with each topic's overrides).
pub fn hosted(
    metadata: &Metadata,
    node: NodeId,
    defaults: &TopicConfig,
) -> BTreeMap<TopicPartition, TopicConfig> {
    let mut hosted = BTreeMap::new();
    for topic in metadata.topics.values() {
        // Overrides were validated by the controller; should one still fail here (a newer
        // controller knowing more keys), the defaults serve and the failure is logged.
        let config = TopicConfig::with_overrides(
            defaults,
            topic.configs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .unwrap_or_else(|error| {
            tracing::warn!(topic = %topic.name, %error, "topic configs not understood; using defaults");
            defaults.clone()
        });
        for (index, partition) in topic.partitions.iter().enumerate() {
            if partition.replicas.contains(&node) {
                hosted.insert(
                    TopicPartition::new(&topic.name, index as u32),
                    config.clone(),
                );
            }
        }
    }
    hosted
}

/// Compares what the metadata wants with what is local (`local`: partition -> its current
/// config). `previously_hosted` is what the last metadata version seen gave this node
/// (empty at start): only those partitions may be deleted.
pub fn plan(
    metadata: &Metadata,
    node: NodeId,
    defaults: &TopicConfig,
    local: &BTreeMap<TopicPartition, TopicConfig>,
    previously_hosted: &BTreeSet<TopicPartition>,
) -> Plan {
    let wanted = hosted(metadata, node, defaults);
    let mut plan = Plan::default();
    for (tp, config) in &wanted {
        match local.get(tp) {
            None => plan.create.push((tp.clone(), config.clone())),
            Some(current) if current != config => {
                plan.reconfigure.push((tp.clone(), config.clone()))
            }
            Some(_) => {}
        }
    }
    for tp in local.keys() {
        if wanted.contains_key(tp) {
            continue;
        }
        if previously_hosted.contains(tp) {
            plan.delete.push(tp.clone());
        } else {
            plan.strays.push(tp.clone());
        }
    }
    plan
}

/// Carries out `plan`; returns how many steps failed (each is logged).
pub async fn apply(log: &LogManager, plan: Plan) -> usize {
    let mut failures = 0;
    for (tp, config) in plan.create {
        match log.create(&tp, config).await {
            Ok(_) => {
                tracing::info!(topic = %tp.topic, partition = tp.partition, "partition created")
            }
            Err(error) => {
                failures += 1;
                tracing::error!(topic = %tp.topic, partition = tp.partition, %error, "creating partition failed");
            }
        }
    }
    for (tp, config) in plan.reconfigure {
        if let Some(partition) = log.get(&tp) {
            partition.set_config(config);
            tracing::info!(topic = %tp.topic, partition = tp.partition, "partition config updated");
        }
    }
    for tp in plan.delete {
        match log.delete(&tp).await {
            Ok(()) => {
                tracing::info!(topic = %tp.topic, partition = tp.partition, "partition deleted")
            }
            Err(error) => {
                failures += 1;
                tracing::error!(topic = %tp.topic, partition = tp.partition, %error, "deleting partition failed");
            }
        }
    }
    failures
}

/// The partitions on this node, open or offline. An offline one (it failed to open) is
/// not created again, but is still deleted when its topic goes.
fn local_partitions(log: &LogManager) -> BTreeMap<TopicPartition, TopicConfig> {
    let mut local: BTreeMap<_, _> = log
        .partitions()
        .into_iter()
        .map(|(tp, partition)| (tp, (*partition.config()).clone()))
        .collect();
    for (tp, _reason) in log.offline_partitions() {
        local.entry(tp).or_insert_with(|| log.defaults().clone());
    }
    local
}

/// Reconciles once now and again on every metadata change, until `cancel` fires. After a
/// failed step it tries again in a second even without a change.
pub async fn run(
    log: Arc<LogManager>,
    node: NodeId,
    mut metadata: watch::Receiver<Arc<Metadata>>,
    cancel: CancellationToken,
) {
    const RETRY: Duration = Duration::from_secs(1);
    let mut previously_hosted = BTreeSet::new();
    let mut reported_strays = BTreeSet::new();
    loop {
        let current = metadata.borrow_and_update().clone();
        let mut plan = plan(
            &current,
            node,
            log.defaults(),
            &local_partitions(&log),
            &previously_hosted,
        );
        for tp in std::mem::take(&mut plan.strays) {
            if reported_strays.insert(tp.clone()) {
                tracing::warn!(topic = %tp.topic, partition = tp.partition, "stray partition: not in the cluster metadata, left untouched");
            }
        }
        previously_hosted = hosted(&current, node, log.defaults()).into_keys().collect();
        let failures = if plan.is_empty() {
            0
        } else {
            apply(&log, plan).await
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = metadata.changed() => {
                if changed.is_err() {
                    return; // the controller is gone: the node is stopping
                }
            }
            _ = tokio::time::sleep(RETRY), if failures > 0 => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_controller::{Command, NodeInfo, NodeRoles};

    fn metadata_with(nodes: u64, topics: &[(&str, u32, u16)]) -> Metadata {
        let mut metadata = Metadata::default();
        for id in 1..=nodes {
            metadata
                .apply(&Command::RegisterNode(NodeInfo {
                    id,
                    kafka: String::new(),
                    grpc: String::new(),
                    cluster: String::new(),
                    http: String::new(),
                    roles: NodeRoles {
                        controller: true,
                        broker: true,
                    },
                    alive: true,
                }))
                .unwrap();
        }
        for (name, partitions, replication_factor) in topics {
            metadata
                .apply(&Command::CreateTopic {
                    name: name.to_string(),
                    id: uuid::Uuid::new_v4(),
                    partitions: *partitions,
                    replication_factor: *replication_factor,
                    configs: [("cleanup.policy".to_string(), "compact".to_string())].into(),
                })
                .unwrap();
        }
        metadata
    }

    #[test]
    fn a_node_creates_what_it_hosts_and_deletes_what_it_does_not() {
        let metadata = metadata_with(3, &[("a", 3, 1), ("b", 1, 3)]);
        let defaults = TopicConfig::default();
        let stale = TopicPartition::new("gone", 0);
        let stray = TopicPartition::new("never-known", 0);
        let local = BTreeMap::from([
            (stale.clone(), defaults.clone()),
            (stray.clone(), defaults.clone()),
        ]);
        let previously = BTreeSet::from([stale.clone()]);
        let mut created = 0;
        for node in 1..=3 {
            let plan = plan(&metadata, node, &defaults, &local, &previously);
            assert_eq!(
                plan.delete,
                vec![stale.clone()],
                "it left the metadata: deleted"
            );
            assert_eq!(
                plan.strays,
                vec![stray.clone()],
                "never in the metadata: kept"
            );
            assert!(plan.create.iter().all(|(_, c)| c.cleanup_policy.compact));
            assert!(
                plan.create.iter().any(|(tp, _)| tp.topic == "b"),
                "b has a replica everywhere"
            );
            created += plan.create.len();
        }
        assert_eq!(
            created,
            3 + 3,
            "3 single-replica partitions of a, 3 replicas of b"
        );
    }

    #[test]
    fn a_changed_config_is_applied_and_a_settled_node_has_nothing_to_do() {
        let metadata = metadata_with(1, &[("a", 1, 1)]);
        let defaults = TopicConfig::default();
        let settled = hosted(&metadata, 1, &defaults);
        let none = BTreeSet::new();
        assert!(plan(&metadata, 1, &defaults, &settled, &none).is_empty());
        let mut outdated = settled.clone();
        outdated.values_mut().for_each(|c| *c = defaults.clone());
        let plan = plan(&metadata, 1, &defaults, &outdated, &none);
        assert_eq!(plan.reconfigure.len(), 1);
        assert!(plan.create.is_empty() && plan.delete.is_empty());
    }
}
