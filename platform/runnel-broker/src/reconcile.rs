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
//! Each partition directory records its topic's UUID: a local partition whose topic was
//! deleted and created again under the same name while this node was away has another
//! UUID, and is replaced (its old data deleted) rather than served as the new topic's.
//! A partition without a recorded UUID (created before they were recorded) adopts the
//! metadata's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use runnel_config::TopicConfig;
use runnel_controller::{Metadata, NodeId};
use runnel_log::{LogManager, TopicPartition};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A partition this node should host: its config and its topic's UUID.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub config: TopicConfig,
    pub topic_id: String,
}

/// A partition on this node: its config and the topic UUID its directory records.
#[derive(Debug, Clone, PartialEq)]
pub struct Local {
    pub config: TopicConfig,
    pub topic_id: Option<String>,
}

/// What to change on this node.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub create: Vec<(TopicPartition, Wanted)>,
    pub reconfigure: Vec<(TopicPartition, TopicConfig)>,
    /// Record the topic UUID in a directory that has none yet.
    pub adopt: Vec<(TopicPartition, String)>,
    /// Local data of an earlier topic of the same name: delete it, create the partition anew.
    pub replace: Vec<(TopicPartition, Wanted)>,
    pub delete: Vec<TopicPartition>,
    /// Local partitions the metadata has never given this node: reported, kept.
    pub strays: Vec<TopicPartition>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty()
            && self.reconfigure.is_empty()
            && self.adopt.is_empty()
            && self.replace.is_empty()
            && self.delete.is_empty()
    }
}

/// The partitions `node` should host according to `metadata`, with their effective configs
/// (`defaults` overlaid with each topic's overrides).
pub fn hosted(
    metadata: &Metadata,
    node: NodeId,
    defaults: &TopicConfig,
) -> BTreeMap<TopicPartition, Wanted> {
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
                    Wanted {
                        config: config.clone(),
                        topic_id: topic.id.to_string(),
                    },
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
    local: &BTreeMap<TopicPartition, Local>,
    previously_hosted: &BTreeSet<TopicPartition>,
) -> Plan {
    let wanted = hosted(metadata, node, defaults);
    let mut plan = Plan::default();
    for (tp, want) in &wanted {
        let Some(have) = local.get(tp) else {
            plan.create.push((tp.clone(), want.clone()));
            continue;
        };
        match &have.topic_id {
            Some(id) if *id != want.topic_id => {
                plan.replace.push((tp.clone(), want.clone()));
                continue;
            }
            None => plan.adopt.push((tp.clone(), want.topic_id.clone())),
            Some(_) => {}
        }
        if have.config != want.config {
            plan.reconfigure.push((tp.clone(), want.config.clone()));
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

/// Carries out `plan`, stopping between steps once `cancel` fires; returns how many steps
/// failed (each is logged).
pub async fn apply(log: &LogManager, plan: Plan, cancel: &CancellationToken) -> usize {
    let mut failures = 0;
    let mut failed = |tp: &TopicPartition, what: &str, error: &dyn std::fmt::Display| {
        failures += 1;
        tracing::error!(topic = %tp.topic, partition = tp.partition, %error, "{what} failed");
    };
    for (tp, want) in plan.replace {
        if cancel.is_cancelled() {
            return failures;
        }
        tracing::warn!(topic = %tp.topic, partition = tp.partition, "local data belongs to an earlier topic of the same name: replacing it");
        if let Err(error) = log.delete(&tp).await {
            failed(&tp, "deleting an earlier topic's partition", &error);
            continue;
        }
        match create(log, &tp, want).await {
            Ok(()) => {
                tracing::info!(topic = %tp.topic, partition = tp.partition, "partition created")
            }
            Err(error) => failed(&tp, "creating partition", &error),
        }
    }
    for (tp, want) in plan.create {
        if cancel.is_cancelled() {
            return failures;
        }
        match create(log, &tp, want).await {
            Ok(()) => {
                tracing::info!(topic = %tp.topic, partition = tp.partition, "partition created")
            }
            Err(error) => failed(&tp, "creating partition", &error),
        }
    }
    for (tp, topic_id) in plan.adopt {
        if cancel.is_cancelled() {
            return failures;
        }
        if let Some(partition) = log.get(&tp)
            && let Err(error) = partition.set_topic_id(&topic_id).await
        {
            failed(&tp, "recording the topic id", &error);
        }
    }
    for (tp, config) in plan.reconfigure {
        if cancel.is_cancelled() {
            return failures;
        }
        if let Some(partition) = log.get(&tp) {
            partition.set_config(config);
            tracing::info!(topic = %tp.topic, partition = tp.partition, "partition config updated");
        }
    }
    for tp in plan.delete {
        if cancel.is_cancelled() {
            return failures;
        }
        match log.delete(&tp).await {
            Ok(()) => {
                tracing::info!(topic = %tp.topic, partition = tp.partition, "partition deleted")
            }
            Err(error) => failed(&tp, "deleting partition", &error),
        }
    }
    failures
}

async fn create(log: &LogManager, tp: &TopicPartition, want: Wanted) -> Result<(), String> {
    let partition = log
        .create(tp, want.config)
        .await
        .map_err(|e| e.to_string())?;
    // A directory that records another topic's UUID is never relabelled: that data is not
    // this topic's (it is replaced through `Plan::replace` once it is listed as local).
    if let Some(existing) = partition.topic_id()
        && existing != want.topic_id
    {
        return Err(format!(
            "the directory holds topic {existing}, not {}",
            want.topic_id
        ));
    }
    partition
        .set_topic_id(&want.topic_id)
        .await
        .map_err(|e| e.to_string())
}

/// The partitions on this node, open or offline. An offline one (it failed to open) is
/// not created again, but is still deleted when its topic goes.
fn local_partitions(log: &LogManager) -> BTreeMap<TopicPartition, Local> {
    let mut local: BTreeMap<_, _> = log
        .partitions()
        .into_iter()
        .map(|(tp, partition)| {
            let here = Local {
                config: (*partition.config()).clone(),
                topic_id: partition.topic_id(),
            };
            (tp, here)
        })
        .collect();
    for (tp, _reason) in log.offline_partitions() {
        // Unknown id: an offline partition is adopted at most, never replaced on a guess.
        local.entry(tp).or_insert_with(|| Local {
            config: log.defaults().clone(),
            topic_id: None,
        });
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
        let deletes = plan.delete.clone();
        let failures = if plan.is_empty() {
            0
        } else {
            apply(&log, plan, &cancel).await
        };
        // A partition whose delete failed stays "previously hosted", so it is retried.
        let still_local = local_partitions(&log);
        previously_hosted = hosted(&current, node, log.defaults()).into_keys().collect();
        previously_hosted.extend(
            deletes
                .into_iter()
                .filter(|tp| still_local.contains_key(tp)),
        );
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
        let here = |config: &TopicConfig| Local {
            config: config.clone(),
            topic_id: None,
        };
        let local = BTreeMap::from([
            (stale.clone(), here(&defaults)),
            (stray.clone(), here(&defaults)),
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
            assert!(
                plan.create
                    .iter()
                    .all(|(_, w)| w.config.cleanup_policy.compact)
            );
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
        let settled: BTreeMap<_, _> = hosted(&metadata, 1, &defaults)
            .into_iter()
            .map(|(tp, want)| {
                let here = Local {
                    config: want.config,
                    topic_id: Some(want.topic_id),
                };
                (tp, here)
            })
            .collect();
        let none = BTreeSet::new();
        assert!(plan(&metadata, 1, &defaults, &settled, &none).is_empty());
        let mut outdated = settled.clone();
        outdated
            .values_mut()
            .for_each(|l| l.config = defaults.clone());
        let plan = plan(&metadata, 1, &defaults, &outdated, &none);
        assert_eq!(plan.reconfigure.len(), 1);
        assert!(plan.create.is_empty() && plan.delete.is_empty() && plan.replace.is_empty());
    }

    #[test]
    fn data_of_an_earlier_topic_with_the_same_name_is_replaced_and_no_id_is_adopted() {
        let metadata = metadata_with(1, &[("a", 2, 1)]);
        let defaults = TopicConfig::default();
        let wanted = hosted(&metadata, 1, &defaults);
        let mut local = BTreeMap::new();
        let a0 = TopicPartition::new("a", 0);
        let a1 = TopicPartition::new("a", 1);
        local.insert(
            a0.clone(),
            Local {
                config: wanted[&a0].config.clone(),
                topic_id: Some("an-earlier-uuid".to_string()),
            },
        );
        local.insert(
            a1.clone(),
            Local {
                config: wanted[&a1].config.clone(),
                topic_id: None,
            },
        );
        let plan = plan(&metadata, 1, &defaults, &local, &BTreeSet::new());
        assert_eq!(plan.replace.len(), 1);
        assert_eq!(plan.replace[0].0, a0);
        assert_eq!(plan.adopt, vec![(a1.clone(), wanted[&a1].topic_id.clone())]);
        assert!(plan.create.is_empty() && plan.delete.is_empty());
    }
}
