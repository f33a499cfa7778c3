//! Consumer groups of the KIP-848 protocol (ConsumerGroupHeartbeat), with no I/O and no
//! clock of its own: every call gets the time and the topics as the metadata has them.
//!
//! The coordinator, not a client, computes the assignment, with a server-side assignor
//! (`uniform`, the default, or `range`). Three epochs drive it:
//! - the **group epoch** goes up when membership, a subscription, or the partitions of a
//!   subscribed topic change;
//! - the **assignment epoch** is the group epoch the target assignment was computed for
//!   (here right away, so the two are equal after every heartbeat);
//! - each **member epoch** reaches the assignment epoch once the member has given up the
//!   partitions it must lose.
//!
//! A member converges on its target step by step, in its own heartbeats: first it is told
//! to keep only the partitions it keeps (its epoch stays), and once it reports that it
//! owns no more than that, it moves to the new epoch and is given its new partitions as
//! soon as no other member still holds them. No member ever owns a partition another
//! member owns, and nobody waits for a group-wide barrier: members that have nothing to
//! give up move on at once.
//!
//! A member that misses its session timeout, or does not give up partitions within its
//! rebalance timeout, is removed and its partitions are given to others.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use uuid::Uuid;

use super::coordinator::Millis;

/// A topic partition by name.
pub type TopicPartition = (String, i32);

/// The topics as the cluster metadata has them: name -> (id, partition count).
pub type Topics = BTreeMap<String, (Uuid, u32)>;

/// The assignors a member may ask for; the first is the default.
pub const ASSIGNORS: [&str; 2] = ["uniform", "range"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsumerGroupError {
    #[error("unknown member id")]
    UnknownMemberId,
    /// The member's epoch is not its current one: it must rejoin with epoch 0.
    #[error("the member epoch is fenced: rejoin the group")]
    FencedMemberEpoch,
    /// An offset commit or fetch from an epoch the member has left.
    #[error("stale member epoch")]
    StaleMemberEpoch,
    #[error("unsupported assignor {0:?} (served: uniform, range)")]
    UnsupportedAssignor(String),
    #[error("invalid regular expression: {0}")]
    InvalidRegularExpression(String),
    #[error("{0}")]
    InvalidRequest(&'static str),
    #[error("the group uses the classic protocol")]
    ClassicGroup,
    /// A static member's instance id is held by a member that has not left.
    #[error("the instance id is still in use by another member")]
    UnreleasedInstanceId,
    #[error("no such group")]
    GroupIdNotFound,
    #[error("the group still has members")]
    NonEmptyGroup,
}

/// Limits of consumer-protocol groups (Kafka's `group.consumer.*` broker settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerGroupSettings {
    pub session_timeout: Millis,
    pub heartbeat_interval: Millis,
}

impl Default for ConsumerGroupSettings {
    fn default() -> Self {
        ConsumerGroupSettings {
            session_timeout: 45_000,
            heartbeat_interval: 5_000,
        }
    }
}

/// A ConsumerGroupHeartbeat as the coordinator needs it. `None` fields are unchanged since
/// the member's last heartbeat.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    pub group: String,
    /// Chosen by the client (v1); empty on a v0 client's first heartbeat.
    pub member_id: String,
    /// 0 to join, -1 to leave, -2 for a static member leaving for a while, else the
    /// member's current epoch.
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub rebalance_timeout: Option<Millis>,
    pub subscribed_topics: Option<Vec<String>>,
    pub subscribed_regex: Option<String>,
    pub assignor: Option<String>,
    /// The partitions the member owns now.
    pub owned: Option<Vec<TopicPartition>>,
    pub client_id: String,
    pub client_host: String,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval: Millis,
    /// The member's whole assignment, when it differs from what it was last told.
    pub assignment: Option<BTreeSet<TopicPartition>>,
}

/// A group's state as Kafka tools name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerGroupState {
    Empty,
    Assigning,
    Reconciling,
    Stable,
}

impl ConsumerGroupState {
    pub fn name(self) -> &'static str {
        match self {
            ConsumerGroupState::Empty => "Empty",
            ConsumerGroupState::Assigning => "Assigning",
            ConsumerGroupState::Reconciling => "Reconciling",
            ConsumerGroupState::Stable => "Stable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerMemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub member_epoch: i32,
    pub client_id: String,
    pub client_host: String,
    pub subscribed_topics: Vec<String>,
    pub subscribed_regex: Option<String>,
    /// What the member owns or has been given.
    pub assignment: BTreeSet<TopicPartition>,
    /// What the assignor computed for it.
    pub target: BTreeSet<TopicPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupDescription {
    pub state: ConsumerGroupState,
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub assignor: String,
    pub members: Vec<ConsumerMemberDescription>,
}

/// A group as it is stored in `__consumer_offsets` and restored after a restart: everything
/// but the clocks (sessions start over) and what members were last told.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredConsumerGroup {
    pub epoch: i32,
    pub assignment_epoch: i32,
    pub assignor: String,
    pub members: BTreeMap<String, StoredConsumerMember>,
    pub target: BTreeMap<String, BTreeSet<TopicPartition>>,
    pub subscribed_topics: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredConsumerMember {
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub subscribed: BTreeSet<String>,
    pub regex: Option<String>,
    pub assignor: Option<String>,
    pub rebalance_timeout: Millis,
    pub epoch: i32,
    pub previous_epoch: i32,
    pub assigned: BTreeSet<TopicPartition>,
    pub revoking: BTreeSet<TopicPartition>,
    pub owned: BTreeSet<TopicPartition>,
    /// Away for a while (a static member's epoch -2); absent in older snapshots.
    #[serde(default)]
    pub away: bool,
}

#[derive(Debug, Clone)]
struct Member {
    instance_id: Option<String>,
    rack_id: Option<String>,
    client_id: String,
    client_host: String,
    subscribed: BTreeSet<String>,
    regex: Option<(String, regex::Regex)>,
    assignor: Option<String>,
    rebalance_timeout: Millis,
    epoch: i32,
    previous_epoch: i32,
    /// Given to the member (it owns them or may take them).
    assigned: BTreeSet<TopicPartition>,
    /// Given earlier and to be given up; still the member's until it reports otherwise.
    revoking: BTreeSet<TopicPartition>,
    /// What the member last reported owning.
    owned: BTreeSet<TopicPartition>,
    /// The assignment the member was last told, to send only changes.
    told: Option<BTreeSet<TopicPartition>>,
    /// A static member that left for a while (epoch -2): kept until its session ends.
    away: bool,
    session_deadline: Millis,
    revocation_deadline: Option<Millis>,
}

impl Member {
    fn holds(&self, partition: &TopicPartition) -> bool {
        self.assigned.contains(partition) || self.revoking.contains(partition)
    }

    /// Whether the member subscribes to `topic`, by name or by its pattern.
    fn subscribes(&self, topic: &str) -> bool {
        self.subscribed.contains(topic)
            || self
                .regex
                .as_ref()
                .is_some_and(|(_, re)| !topic.starts_with("__") && re.is_match(topic))
    }
}

#[derive(Debug, Clone, Default)]
struct Group {
    epoch: i32,
    assignment_epoch: i32,
    members: BTreeMap<String, Member>,
    target: BTreeMap<String, BTreeSet<TopicPartition>>,
    /// The partition counts of the subscribed topics the target was computed with.
    subscribed_topics: BTreeMap<String, u32>,
    assignor: String,
    /// When the group last became empty (or was created empty).
    empty_since: Millis,
}

impl Group {
    fn state(&self) -> ConsumerGroupState {
        if self.members.is_empty() {
            ConsumerGroupState::Empty
        } else if self.assignment_epoch < self.epoch {
            ConsumerGroupState::Assigning
        } else if self.members.iter().any(|(id, m)| {
            m.epoch != self.assignment_epoch
                || !m.revoking.is_empty()
                || self.target.get(id).is_some_and(|t| *t != m.assigned)
        }) {
            ConsumerGroupState::Reconciling
        } else {
            ConsumerGroupState::Stable
        }
    }

    /// The subscribed topics that exist, with their partition counts.
    fn subscribed_topics(&self, topics: &Topics) -> BTreeMap<String, u32> {
        topics
            .iter()
            .filter(|(name, _)| self.members.values().any(|m| m.subscribes(name)))
            .map(|(name, (_, partitions))| (name.clone(), *partitions))
            .collect()
    }

    fn remove_member(&mut self, member_id: &str, now: Millis) {
        if self.members.remove(member_id).is_some() {
            self.target.remove(member_id);
            self.epoch = self.epoch.saturating_add(1);
            if self.members.is_empty() {
                self.empty_since = now;
            }
        }
    }

    /// Recomputes the target assignment if the group epoch moved past it.
    fn update_target(&mut self) {
        if self.assignment_epoch >= self.epoch {
            return;
        }
        // The assignor most members ask for (ties to the default order), else the default.
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for member in self.members.values() {
            if let Some(name) = member.assignor.as_deref() {
                *votes.entry(name).or_default() += 1;
            }
        }
        let assignor = ASSIGNORS
            .iter()
            .copied()
            .max_by_key(|name| {
                (
                    votes.get(name).copied().unwrap_or(0),
                    usize::from(*name == ASSIGNORS[0]),
                )
            })
            .unwrap_or(ASSIGNORS[0]);
        self.assignor = assignor.to_string();
        self.target = match assignor {
            "range" => assign_range(&self.members, &self.subscribed_topics),
            _ => assign_uniform(&self.members, &self.subscribed_topics, &self.target),
        };
        self.assignment_epoch = self.epoch;
    }

    /// Moves one member a step towards its target (see the module docs). A revocation is
    /// complete only when this heartbeat reported the member's partitions without those
    /// revoked: without a report, what it holds is not known.
    fn reconcile(&mut self, member_id: &str, now: Millis, owned_reported: bool) {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let assignment_epoch = self.assignment_epoch;
        let Some(member) = self.members.get_mut(member_id) else {
            return;
        };
        if !member.revoking.is_empty() {
            if owned_reported && member.owned.is_disjoint(&member.revoking) {
                member.revoking.clear();
                member.revocation_deadline = None;
            } else {
                return;
            }
        }
        if member.epoch < assignment_epoch {
            let revoke: BTreeSet<TopicPartition> =
                member.assigned.difference(&target).cloned().collect();
            if !revoke.is_empty() {
                member.assigned.retain(|p| target.contains(p));
                member.revoking = revoke;
                member.revocation_deadline = Some(now + member.rebalance_timeout);
                return;
            }
            member.previous_epoch = member.epoch;
            member.epoch = assignment_epoch;
        }
        let wanted: Vec<TopicPartition> = target
            .iter()
            .filter(|p| !member.assigned.contains(*p))
            .cloned()
            .collect();
        let free: Vec<TopicPartition> = wanted
            .into_iter()
            .filter(|p| {
                !self
                    .members
                    .iter()
                    .any(|(id, other)| id != member_id && other.holds(p))
            })
            .collect();
        if let Some(member) = self.members.get_mut(member_id) {
            member.assigned.extend(free);
        }
    }
}

/// Every consumer-protocol group of a coordinator.
#[derive(Debug, Default)]
pub struct ConsumerGroups {
    settings: ConsumerGroupSettings,
    groups: HashMap<String, Group>,
}

impl ConsumerGroups {
    pub fn new(settings: ConsumerGroupSettings) -> ConsumerGroups {
        ConsumerGroups {
            settings,
            groups: HashMap::new(),
        }
    }

    /// Whether `group` is a consumer-protocol group with members.
    pub fn has_members(&self, group: &str) -> bool {
        self.groups
            .get(group)
            .is_some_and(|g| !g.members.is_empty())
    }

    pub fn contains(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    pub fn heartbeat(
        &mut self,
        request: Heartbeat,
        topics: &Topics,
        now: Millis,
    ) -> Result<HeartbeatAnswer, ConsumerGroupError> {
        if let Some(name) = request.assignor.as_deref()
            && !ASSIGNORS.contains(&name)
        {
            return Err(ConsumerGroupError::UnsupportedAssignor(name.to_string()));
        }
        let regex = match request.subscribed_regex.as_deref() {
            Some(pattern) if !pattern.is_empty() => {
                let invalid =
                    |e: regex::Error| ConsumerGroupError::InvalidRegularExpression(e.to_string());
                // Checked alone first: wrapped, a pattern like `a)|(b` would compile but
                // no longer match whole names only.
                regex::Regex::new(pattern).map_err(invalid)?;
                Some((
                    pattern.to_string(),
                    regex::Regex::new(&format!("^(?:{pattern})$")).map_err(invalid)?,
                ))
            }
            _ => None,
        };
        // A full request (a join, or every field given, as a client sends after a lost
        // answer) gets the whole assignment back.
        let full = request.member_epoch == 0
            || (request.rebalance_timeout.is_some()
                && request.subscribed_topics.is_some()
                && request.owned.is_some());
        let owned_reported = request.owned.is_some();
        let interval = self.settings.heartbeat_interval;
        let session = self.settings.session_timeout;
        match request.member_epoch {
            -1 | -2 => {
                let group = self
                    .groups
                    .get_mut(&request.group)
                    .ok_or(ConsumerGroupError::UnknownMemberId)?;
                let member = group
                    .members
                    .get_mut(&request.member_id)
                    .ok_or(ConsumerGroupError::UnknownMemberId)?;
                if request.member_epoch == -2 && member.instance_id.is_some() {
                    // A static member away for a while (a restart) keeps its place and
                    // partitions until its session ends, so coming back under its instance
                    // id costs no rebalance (KIP-848).
                    member.away = true;
                    member.session_deadline = now + session;
                    return Ok(HeartbeatAnswer {
                        member_id: request.member_id,
                        member_epoch: -2,
                        heartbeat_interval: interval,
                        assignment: None,
                    });
                }
                group.remove_member(&request.member_id, now);
                group.subscribed_topics = group.subscribed_topics(topics);
                group.update_target();
                return Ok(HeartbeatAnswer {
                    member_id: request.member_id,
                    member_epoch: request.member_epoch,
                    heartbeat_interval: interval,
                    assignment: None,
                });
            }
            0 => {
                if request.subscribed_topics.is_none() && regex.is_none() {
                    return Err(ConsumerGroupError::InvalidRequest(
                        "a joining member must name its subscribed topics or pattern",
                    ));
                }
                if request.rebalance_timeout.is_none() {
                    return Err(ConsumerGroupError::InvalidRequest(
                        "a joining member must give its rebalance timeout",
                    ));
                }
            }
            epoch if epoch < 0 => {
                return Err(ConsumerGroupError::InvalidRequest("invalid member epoch"));
            }
            _ => {}
        }
        // Only a join creates a group: a heartbeat of an unknown member creates nothing.
        if request.member_epoch != 0 && !self.groups.contains_key(&request.group) {
            return Err(ConsumerGroupError::UnknownMemberId);
        }
        let group = self
            .groups
            .entry(request.group.clone())
            .or_insert_with(|| Group {
                empty_since: now,
                assignor: ASSIGNORS[0].to_string(),
                ..Group::default()
            });
        let owned: Option<BTreeSet<TopicPartition>> =
            request.owned.map(|owned| owned.into_iter().collect());
        let mut took_over = false;
        let member_id = if request.member_epoch == 0 {
            let member_id = if request.member_id.is_empty() {
                Uuid::new_v4().to_string()
            } else {
                request.member_id.clone()
            };
            // A static member coming back takes over its earlier self, which must have
            // left for a while (epoch -2): its epoch and partitions, without a rebalance.
            // An instance id still in use is refused.
            let earlier = request.instance_id.as_ref().and_then(|instance| {
                group
                    .members
                    .iter()
                    .find(|(id, m)| **id != member_id && m.instance_id.as_ref() == Some(instance))
                    .map(|(id, m)| (id.clone(), m.away))
            });
            match earlier {
                Some((_, false)) => return Err(ConsumerGroupError::UnreleasedInstanceId),
                Some((old_id, true)) => {
                    if let Some(mut member) = group.members.remove(&old_id) {
                        member.away = false;
                        member.told = None;
                        member.session_deadline = now + session;
                        member.client_id.clone_from(&request.client_id);
                        member.client_host.clone_from(&request.client_host);
                        if let Some(target) = group.target.remove(&old_id) {
                            group.target.insert(member_id.clone(), target);
                        }
                        group.members.insert(member_id.clone(), member);
                    }
                    took_over = true;
                }
                None => {
                    // A member (re)joining owns nothing the group gave it before.
                    group.remove_member(&member_id, now);
                    group.members.insert(
                        member_id.clone(),
                        Member {
                            instance_id: request.instance_id.clone(),
                            rack_id: request.rack_id.clone(),
                            client_id: request.client_id.clone(),
                            client_host: request.client_host.clone(),
                            subscribed: BTreeSet::new(),
                            regex: None,
                            assignor: None,
                            rebalance_timeout: 0,
                            epoch: 0,
                            previous_epoch: 0,
                            assigned: BTreeSet::new(),
                            revoking: BTreeSet::new(),
                            owned: BTreeSet::new(),
                            told: None,
                            away: false,
                            session_deadline: now + session,
                            revocation_deadline: None,
                        },
                    );
                }
            }
            member_id
        } else {
            let member = group
                .members
                .get(&request.member_id)
                .ok_or(ConsumerGroupError::UnknownMemberId)?;
            let retried = request.member_epoch == member.previous_epoch
                && owned
                    .as_ref()
                    .is_some_and(|o| o.is_subset(&member.assigned));
            if request.member_epoch != member.epoch && !retried {
                return Err(ConsumerGroupError::FencedMemberEpoch);
            }
            request.member_id.clone()
        };
        let member = group
            .members
            .get_mut(&member_id)
            .ok_or(ConsumerGroupError::UnknownMemberId)?;
        member.session_deadline = now + session;
        if let Some(timeout) = request.rebalance_timeout {
            member.rebalance_timeout = timeout;
        }
        if let Some(rack) = request.rack_id {
            member.rack_id = Some(rack);
        }
        // A join, a new subscription or new topic partitions: a new group epoch.
        let mut changed = request.member_epoch == 0 && !took_over;
        if let Some(names) = request.subscribed_topics {
            let names: BTreeSet<String> = names.into_iter().collect();
            changed |= names != member.subscribed;
            member.subscribed = names;
        }
        if request.subscribed_regex.is_some() {
            changed |= member.regex.as_ref().map(|(p, _)| p) != regex.as_ref().map(|(p, _)| p);
            member.regex = regex;
        }
        if request.assignor.is_some() {
            changed |= member.assignor != request.assignor;
            member.assignor = request.assignor;
        }
        if let Some(owned) = owned {
            member.owned = owned;
        }
        if full {
            member.told = None;
        }
        let subscribed = group.subscribed_topics(topics);
        if subscribed != group.subscribed_topics {
            group.subscribed_topics = subscribed;
            changed = true;
        }
        if changed {
            group.epoch = group.epoch.saturating_add(1);
        }
        group.update_target();
        group.reconcile(&member_id, now, owned_reported);
        let member = group
            .members
            .get_mut(&member_id)
            .ok_or(ConsumerGroupError::UnknownMemberId)?;
        let current = member.assigned.clone();
        let assignment = if member.told.as_ref() != Some(&current) {
            member.told = Some(current.clone());
            Some(current)
        } else {
            None
        };
        Ok(HeartbeatAnswer {
            member_id,
            member_epoch: member.epoch,
            heartbeat_interval: interval,
            assignment,
        })
    }

    /// Removes members whose session or revocation time ran out; returns how many.
    pub fn tick(&mut self, now: Millis) -> usize {
        let mut removed = 0;
        for group in self.groups.values_mut() {
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| {
                    m.session_deadline <= now || m.revocation_deadline.is_some_and(|d| d <= now)
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in &expired {
                group.remove_member(id, now);
                removed += 1;
            }
            if !expired.is_empty() {
                group.update_target();
            }
        }
        removed
    }

    /// Checks an offset commit (or fetch) made by `member_id` at `epoch`. A commit with no
    /// member (an admin tool's, epoch -1) is taken only while the group has no members.
    pub fn check_commit(
        &self,
        group: &str,
        member_id: &str,
        epoch: i32,
    ) -> Result<(), ConsumerGroupError> {
        let Some(group) = self.groups.get(group) else {
            return Ok(());
        };
        if epoch < 0 {
            return if group.members.is_empty() {
                Ok(())
            } else {
                Err(ConsumerGroupError::UnknownMemberId)
            };
        }
        let member = group
            .members
            .get(member_id)
            .ok_or(ConsumerGroupError::UnknownMemberId)?;
        if epoch == member.epoch || epoch == member.previous_epoch {
            Ok(())
        } else {
            Err(ConsumerGroupError::StaleMemberEpoch)
        }
    }

    pub fn describe(&self, group: &str) -> Option<ConsumerGroupDescription> {
        let g = self.groups.get(group)?;
        Some(ConsumerGroupDescription {
            state: g.state(),
            group_epoch: g.epoch,
            assignment_epoch: g.assignment_epoch,
            assignor: g.assignor.clone(),
            members: g
                .members
                .iter()
                .map(|(id, m)| ConsumerMemberDescription {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    rack_id: m.rack_id.clone(),
                    member_epoch: m.epoch,
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    subscribed_topics: m.subscribed.iter().cloned().collect(),
                    subscribed_regex: m.regex.as_ref().map(|(p, _)| p.clone()),
                    assignment: m.assigned.union(&m.revoking).cloned().collect(),
                    target: g.target.get(id).cloned().unwrap_or_default(),
                })
                .collect(),
        })
    }

    /// Every group: (name, state).
    pub fn list(&self) -> Vec<(String, ConsumerGroupState)> {
        let mut list: Vec<_> = self
            .groups
            .iter()
            .map(|(name, g)| (name.clone(), g.state()))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// How long `group` has had no members (None: it has members or is unknown).
    pub fn empty_for(&self, group: &str, now: Millis) -> Option<Millis> {
        let g = self.groups.get(group)?;
        g.members
            .is_empty()
            .then(|| now.saturating_sub(g.empty_since))
    }

    /// The group as it should be stored (None if there is no such group).
    pub fn stored(&self, group: &str) -> Option<StoredConsumerGroup> {
        let g = self.groups.get(group)?;
        Some(StoredConsumerGroup {
            epoch: g.epoch,
            assignment_epoch: g.assignment_epoch,
            assignor: g.assignor.clone(),
            members: g
                .members
                .iter()
                .map(|(id, m)| {
                    let member = StoredConsumerMember {
                        instance_id: m.instance_id.clone(),
                        rack_id: m.rack_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        subscribed: m.subscribed.clone(),
                        regex: m.regex.as_ref().map(|(p, _)| p.clone()),
                        assignor: m.assignor.clone(),
                        rebalance_timeout: m.rebalance_timeout,
                        epoch: m.epoch,
                        previous_epoch: m.previous_epoch,
                        assigned: m.assigned.clone(),
                        revoking: m.revoking.clone(),
                        owned: m.owned.clone(),
                        away: m.away,
                    };
                    (id.clone(), member)
                })
                .collect(),
            target: g.target.clone(),
            subscribed_topics: g.subscribed_topics.clone(),
        })
    }

    /// Restores a stored group after a restart. Its members' sessions start now, so members
    /// that come back carry on at their epochs and the others expire as usual.
    pub fn restore(&mut self, name: &str, stored: StoredConsumerGroup, now: Millis) {
        let session = self.settings.session_timeout;
        let members = stored
            .members
            .into_iter()
            .map(|(id, m)| {
                // A pattern that compiled when it was stored compiles again; if not, the
                // member keeps its named topics only.
                let regex = m.regex.and_then(|pattern| {
                    let compiled = regex::Regex::new(&format!("^(?:{pattern})$")).ok()?;
                    Some((pattern, compiled))
                });
                let revocation_deadline =
                    (!m.revoking.is_empty()).then_some(now + m.rebalance_timeout);
                let member = Member {
                    instance_id: m.instance_id,
                    rack_id: m.rack_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    subscribed: m.subscribed,
                    regex,
                    assignor: m.assignor,
                    rebalance_timeout: m.rebalance_timeout,
                    epoch: m.epoch,
                    previous_epoch: m.previous_epoch,
                    // Unknown after a restart: the next heartbeat gets the whole assignment.
                    told: None,
                    assigned: m.assigned,
                    revoking: m.revoking,
                    owned: m.owned,
                    away: m.away,
                    session_deadline: now + session,
                    revocation_deadline,
                };
                (id, member)
            })
            .collect();
        self.groups.insert(
            name.to_string(),
            Group {
                epoch: stored.epoch,
                assignment_epoch: stored.assignment_epoch,
                members,
                target: stored.target,
                subscribed_topics: stored.subscribed_topics,
                assignor: stored.assignor,
                empty_since: now,
            },
        );
    }

    /// Names of every group, for storing those a step changed.
    pub fn names(&self) -> Vec<String> {
        self.groups.keys().cloned().collect()
    }

    /// Forgets an empty group.
    pub fn delete(&mut self, group: &str) -> Result<(), ConsumerGroupError> {
        match self.groups.get(group) {
            None => Err(ConsumerGroupError::GroupIdNotFound),
            Some(g) if !g.members.is_empty() => Err(ConsumerGroupError::NonEmptyGroup),
            Some(_) => {
                self.groups.remove(group);
                Ok(())
            }
        }
    }
}

/// The partitions of the subscribed topics, in order.
fn all_partitions(topics: &BTreeMap<String, u32>) -> impl Iterator<Item = TopicPartition> + '_ {
    topics
        .iter()
        .flat_map(|(name, count)| (0..*count as i32).map(move |p| (name.clone(), p)))
}

/// `range`: per topic, its partitions in contiguous runs over the members subscribed to it
/// (sorted by member id), the first members getting one more when they do not divide.
fn assign_range(
    members: &BTreeMap<String, Member>,
    topics: &BTreeMap<String, u32>,
) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let mut target: BTreeMap<String, BTreeSet<TopicPartition>> = members
        .keys()
        .map(|id| (id.clone(), BTreeSet::new()))
        .collect();
    for (topic, count) in topics {
        let eligible: Vec<&String> = members
            .iter()
            .filter(|(_, m)| m.subscribes(topic))
            .map(|(id, _)| id)
            .collect();
        if eligible.is_empty() {
            continue;
        }
        let count = *count as usize;
        let (each, extra) = (count / eligible.len(), count % eligible.len());
        let mut next = 0;
        for (index, id) in eligible.into_iter().enumerate() {
            let take = each + usize::from(index < extra);
            let partitions = target.entry(id.clone()).or_default();
            for partition in next..next + take {
                partitions.insert((topic.clone(), partition as i32));
            }
            next += take;
        }
    }
    target
}

/// `uniform`: every partition to a member subscribed to its topic, as evenly as the
/// subscriptions allow, keeping partitions where they were (the previous target) while
/// that stays within each member's fair share.
fn assign_uniform(
    members: &BTreeMap<String, Member>,
    topics: &BTreeMap<String, u32>,
    previous: &BTreeMap<String, BTreeSet<TopicPartition>>,
) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let mut target: BTreeMap<String, BTreeSet<TopicPartition>> = members
        .keys()
        .map(|id| (id.clone(), BTreeSet::new()))
        .collect();
    let subscribing = members
        .values()
        .filter(|m| topics.keys().any(|t| m.subscribes(t)))
        .count();
    if subscribing == 0 {
        return target;
    }
    let total: usize = topics.values().map(|c| *c as usize).sum();
    let share = total / subscribing;
    let owner_before: HashMap<&TopicPartition, &String> = previous
        .iter()
        .flat_map(|(id, partitions)| partitions.iter().map(move |p| (p, id)))
        .collect();
    let mut unplaced = Vec::new();
    for partition in all_partitions(topics) {
        let keep = owner_before.get(&partition).and_then(|id| {
            let member = members.get(*id)?;
            let held = target.get(*id).map_or(0, BTreeSet::len);
            (member.subscribes(&partition.0) && held < share).then_some(*id)
        });
        match keep {
            Some(id) => {
                target.entry(id.clone()).or_default().insert(partition);
            }
            None => unplaced.push(partition),
        }
    }
    for partition in unplaced {
        let least = members
            .iter()
            .filter(|(_, m)| m.subscribes(&partition.0))
            .map(|(id, _)| id)
            .min_by_key(|id| {
                let held = target.get(*id).map_or(0, BTreeSet::len);
                (held, owner_before.get(&partition) != Some(id), *id)
            });
        if let Some(id) = least {
            target.entry(id.clone()).or_default().insert(partition);
        }
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(list: &[(&str, u32)]) -> Topics {
        list.iter()
            .map(|(name, count)| (name.to_string(), (Uuid::new_v4(), *count)))
            .collect()
    }

    fn join(member: &str, subscribed: &[&str]) -> Heartbeat {
        Heartbeat {
            group: "g".into(),
            member_id: member.into(),
            member_epoch: 0,
            rebalance_timeout: Some(30_000),
            subscribed_topics: Some(subscribed.iter().map(|s| s.to_string()).collect()),
            owned: Some(Vec::new()),
            ..Heartbeat::default()
        }
    }

    fn beat(member: &str, epoch: i32, owned: Option<&BTreeSet<TopicPartition>>) -> Heartbeat {
        Heartbeat {
            group: "g".into(),
            member_id: member.into(),
            member_epoch: epoch,
            owned: owned.map(|o| o.iter().cloned().collect()),
            ..Heartbeat::default()
        }
    }

    fn set(list: &[(&str, i32)]) -> BTreeSet<TopicPartition> {
        list.iter().map(|(t, p)| (t.to_string(), *p)).collect()
    }

    #[test]
    fn a_lone_member_gets_every_partition() {
        let mut groups = ConsumerGroups::default();
        let topics = topics(&[("t", 2)]);
        let answer = groups.heartbeat(join("a", &["t"]), &topics, 0).unwrap();
        assert_eq!(answer.member_epoch, 1);
        assert_eq!(answer.assignment, Some(set(&[("t", 0), ("t", 1)])));
        // Nothing changed: no assignment in the answer.
        let again = groups.heartbeat(beat("a", 1, None), &topics, 10).unwrap();
        assert_eq!(again.assignment, None);
        assert_eq!(
            groups.describe("g").unwrap().state,
            ConsumerGroupState::Stable
        );
    }

    #[test]
    fn a_second_member_gets_a_partition_only_after_the_first_gives_it_up() {
        let mut groups = ConsumerGroups::default();
        let topics = topics(&[("t", 2)]);
        let a = groups.heartbeat(join("a", &["t"]), &topics, 0).unwrap();
        let a_owned = a.assignment.unwrap();
        let b = groups.heartbeat(join("b", &["t"]), &topics, 1).unwrap();
        // b's partition is still a's: b joins at the new epoch with nothing yet.
        assert_eq!(b.member_epoch, 2);
        assert_eq!(b.assignment, Some(BTreeSet::new()));
        assert_eq!(
            groups.describe("g").unwrap().state,
            ConsumerGroupState::Reconciling
        );
        // a is told to keep one partition, at its old epoch.
        let a = groups
            .heartbeat(beat("a", 1, Some(&a_owned)), &topics, 2)
            .unwrap();
        assert_eq!(a.member_epoch, 1);
        let kept = a.assignment.unwrap();
        assert_eq!(kept.len(), 1);
        // Still owning both, a gets nothing new; once it reports one, it moves on.
        let a = groups
            .heartbeat(beat("a", 1, Some(&a_owned)), &topics, 3)
            .unwrap();
        assert_eq!((a.member_epoch, a.assignment), (1, None));
        let a = groups
            .heartbeat(beat("a", 1, Some(&kept)), &topics, 4)
            .unwrap();
        assert_eq!(a.member_epoch, 2);
        let b = groups
            .heartbeat(beat("b", 2, Some(&BTreeSet::new())), &topics, 5)
            .unwrap();
        let got = b.assignment.unwrap();
        assert_eq!(got.len(), 1);
        assert!(got.is_disjoint(&kept));
        assert_eq!(
            groups.describe("g").unwrap().state,
            ConsumerGroupState::Stable
        );
    }

    #[test]
    fn a_revocation_completes_only_on_a_report_and_a_full_request_gets_everything() {
        let mut groups = ConsumerGroups::default();
        let topics = topics(&[("t", 2)]);
        let a = groups.heartbeat(join("a", &["t"]), &topics, 0).unwrap();
        let a_owned = a.assignment.unwrap();
        groups.heartbeat(join("b", &["t"]), &topics, 1).unwrap();
        // a is told to give one up; a heartbeat without owned partitions proves nothing.
        let kept = groups
            .heartbeat(beat("a", 1, Some(&a_owned)), &topics, 2)
            .unwrap()
            .assignment
            .unwrap();
        let a = groups.heartbeat(beat("a", 1, None), &topics, 3).unwrap();
        assert_eq!(a.member_epoch, 1, "still revoking");
        let b = groups
            .heartbeat(beat("b", 2, Some(&BTreeSet::new())), &topics, 4)
            .unwrap();
        assert_eq!(b.assignment, None, "nothing is free yet");
        // A full request (as after a lost answer) is answered with the whole assignment.
        let mut full = beat("a", 1, Some(&kept));
        full.rebalance_timeout = Some(30_000);
        full.subscribed_topics = Some(vec!["t".into()]);
        let a = groups.heartbeat(full, &topics, 5).unwrap();
        assert_eq!((a.member_epoch, a.assignment), (2, Some(kept)));
    }

    #[test]
    fn a_static_member_away_for_a_while_comes_back_without_a_rebalance() {
        let mut groups = ConsumerGroups::default();
        let topics = topics(&[("t", 2)]);
        let static_join = |member: &str| {
            let mut request = join(member, &["t"]);
            request.instance_id = Some("pod-1".into());
            request
        };
        let first = groups.heartbeat(static_join("a"), &topics, 0).unwrap();
        let partitions = first.assignment.unwrap();
        // Another process with the same instance id while the first is alive: refused.
        assert_eq!(
            groups.heartbeat(static_join("a2"), &topics, 2),
            Err(ConsumerGroupError::UnreleasedInstanceId)
        );
        // The first leaves for a while (-2): it keeps its place and partitions...
        let left = groups.heartbeat(beat("a", -2, None), &topics, 3).unwrap();
        assert_eq!(left.member_epoch, -2);
        let epoch = groups.describe("g").unwrap().group_epoch;
        // ...and its restarted process takes them back at its epoch, without a rebalance.
        let back = groups.heartbeat(static_join("a2"), &topics, 4).unwrap();
        assert_eq!(
            (back.member_epoch, back.assignment),
            (first.member_epoch, Some(partitions))
        );
        assert_eq!(groups.describe("g").unwrap().group_epoch, epoch);
        assert_eq!(
            groups.heartbeat(beat("a", 1, None), &topics, 5),
            Err(ConsumerGroupError::UnknownMemberId)
        );
        // Away past its session, a static member is removed like any other.
        groups
            .heartbeat(beat("a2", back.member_epoch, None), &topics, 6)
            .unwrap();
        groups.heartbeat(beat("a2", -2, None), &topics, 7).unwrap();
        assert_eq!(groups.tick(7 + 45_001), 1);
    }

    #[test]
    fn bad_heartbeats_create_nothing() {
        let mut groups = ConsumerGroups::default();
        let topics = topics(&[("t", 1), ("other", 1)]);
        assert_eq!(
            groups.heartbeat(beat("ghost", 3, None), &topics, 0),
            Err(ConsumerGroupError::UnknownMemberId)
        );
        assert!(!groups.contains("g"));
        // A pattern that would escape its anchors once wrapped is refused.
        let mut request = join("a", &[]);
        request.subscribed_topics = None;
        request.subscribed_regex = Some("t)|(o".into());
        assert!(matches!(
            groups.heartbeat(request, &topics, 1),
            Err(ConsumerGroupError::InvalidRegularExpression(_))
        ));
        assert!(!groups.contains("g"));
    }

    #[test]
    fn a_member_that_leaves_hands_its_partitions_over() {
        let mut groups = ConsumerGroups::default();
        let topics = topics(&[("t", 2)]);
        groups.heartbeat(join("a", &["t"]), &topics, 0).unwrap();
        let a_all = set(&[("t", 0), ("t", 1)]);
        groups.heartbeat(join("b", &["t"]), &topics, 1).unwrap();
        let kept = groups
            .heartbeat(beat("a", 1, Some(&a_all)), &topics, 2)
            .unwrap()
            .assignment
            .unwrap();
        groups
            .heartbeat(beat("a", 1, Some(&kept)), &topics, 3)
            .unwrap();
        let b = groups.heartbeat(beat("b", 2, None), &topics, 4).unwrap();
        assert_eq!(b.assignment.map(|a| a.len()), Some(1));
        groups.heartbeat(beat("a", -1, None), &topics, 5).unwrap();
        let b = groups.heartbeat(beat("b", 2, None), &topics, 6).unwrap();
        assert_eq!(b.member_epoch, 3);
        assert_eq!(b.assignment, Some(a_all));
    }

    #[test]
    fn silent_members_expire_and_stale_epochs_are_fenced() {
        let mut groups = ConsumerGroups::default();
        let topics = topics(&[("t", 3)]);
        groups.heartbeat(join("a", &["t"]), &topics, 0).unwrap();
        groups
            .heartbeat(join("b", &["t"]), &topics, 40_000)
            .unwrap();
        assert_eq!(groups.tick(45_000), 1);
        assert_eq!(
            groups.heartbeat(beat("a", 1, None), &topics, 45_001),
            Err(ConsumerGroupError::UnknownMemberId)
        );
        assert_eq!(
            groups.heartbeat(beat("b", 7, None), &topics, 45_001),
            Err(ConsumerGroupError::FencedMemberEpoch)
        );
        let b = groups
            .heartbeat(beat("b", 2, None), &topics, 45_002)
            .unwrap();
        assert_eq!(b.member_epoch, 3);
        assert_eq!(b.assignment.map(|a| a.len()), Some(3));
        assert_eq!(
            groups.check_commit("g", "b", 1),
            Err(ConsumerGroupError::StaleMemberEpoch)
        );
        assert_eq!(groups.check_commit("g", "b", 3), Ok(()));
        assert_eq!(
            groups.check_commit("g", "", -1),
            Err(ConsumerGroupError::UnknownMemberId)
        );
    }

    #[test]
    fn a_member_that_keeps_its_partitions_past_the_rebalance_timeout_is_removed() {
        let mut groups = ConsumerGroups::default();
        let topics = topics(&[("t", 2)]);
        groups.heartbeat(join("a", &["t"]), &topics, 0).unwrap();
        groups.heartbeat(join("b", &["t"]), &topics, 1).unwrap();
        let all = set(&[("t", 0), ("t", 1)]);
        groups
            .heartbeat(beat("a", 1, Some(&all)), &topics, 2)
            .unwrap();
        assert_eq!(groups.tick(30_001), 0);
        assert_eq!(groups.tick(30_002), 1);
        let b = groups
            .heartbeat(beat("b", 2, None), &topics, 30_003)
            .unwrap();
        assert_eq!(b.assignment, Some(all));
    }

    #[test]
    fn new_partitions_and_patterns_are_assigned() {
        let mut groups = ConsumerGroups::default();
        let mut known = topics(&[("orders-eu", 1), ("other", 1)]);
        let mut request = join("a", &[]);
        request.subscribed_topics = None;
        request.subscribed_regex = Some("orders-.*".into());
        let a = groups.heartbeat(request, &known, 0).unwrap();
        assert_eq!(a.assignment, Some(set(&[("orders-eu", 0)])));
        known.insert("orders-us".into(), (Uuid::new_v4(), 2));
        let a = groups.heartbeat(beat("a", 1, None), &known, 1).unwrap();
        assert_eq!(a.member_epoch, 2);
        assert_eq!(
            a.assignment,
            Some(set(&[("orders-eu", 0), ("orders-us", 0), ("orders-us", 1)]))
        );
        let mut bad = join("b", &[]);
        bad.subscribed_regex = Some("(".into());
        assert!(matches!(
            groups.heartbeat(bad, &known, 2),
            Err(ConsumerGroupError::InvalidRegularExpression(_))
        ));
    }

    #[test]
    fn range_and_uniform_split_evenly() {
        let topics = topics(&[("x", 3), ("y", 3)]);
        for assignor in ASSIGNORS {
            let mut groups = ConsumerGroups::default();
            for member in ["a", "b", "c"] {
                let mut request = join(member, &["x", "y"]);
                request.assignor = Some(assignor.to_string());
                groups.heartbeat(request, &topics, 0).unwrap();
            }
            let described = groups.describe("g").unwrap();
            assert_eq!(described.assignor, assignor);
            let sizes: Vec<usize> = described.members.iter().map(|m| m.target.len()).collect();
            assert_eq!(sizes, vec![2, 2, 2], "{assignor}");
            let all: BTreeSet<_> = described
                .members
                .iter()
                .flat_map(|m| m.target.clone())
                .collect();
            assert_eq!(all.len(), 6);
        }
        let mut groups = ConsumerGroups::default();
        let mut request = join("a", &["x"]);
        request.assignor = Some("sticky".into());
        assert_eq!(
            groups.heartbeat(request, &topics, 0),
            Err(ConsumerGroupError::UnsupportedAssignor("sticky".into()))
        );
    }

    #[test]
    fn a_restored_group_carries_on_at_its_epochs() {
        let topics = topics(&[("t", 2)]);
        let mut groups = ConsumerGroups::default();
        groups.heartbeat(join("a", &["t"]), &topics, 0).unwrap();
        let stored = groups.stored("g").unwrap();
        let json = serde_json::to_vec(&stored).unwrap();
        let mut restarted = ConsumerGroups::default();
        restarted.restore("g", serde_json::from_slice(&json).unwrap(), 100_000);
        assert_eq!(restarted.stored("g"), Some(stored));
        let a = restarted
            .heartbeat(beat("a", 1, None), &topics, 100_001)
            .unwrap();
        // What it was last told is not stored: it gets its whole assignment again.
        let both: BTreeSet<TopicPartition> = [("t".to_string(), 0), ("t".to_string(), 1)].into();
        assert_eq!((a.member_epoch, a.assignment), (1, Some(both)));
        let a = restarted
            .heartbeat(beat("a", 1, None), &topics, 100_002)
            .unwrap();
        assert_eq!(a.assignment, None);
        // Its session started at the restore.
        assert_eq!(restarted.tick(144_999), 0);
        assert_eq!(restarted.tick(146_001), 1);
    }

    #[test]
    fn uniform_keeps_partitions_where_they_were() {
        let topics = topics(&[("t", 4)]);
        let mut groups = ConsumerGroups::default();
        for member in ["a", "b"] {
            groups.heartbeat(join(member, &["t"]), &topics, 0).unwrap();
        }
        let before = groups.describe("g").unwrap();
        groups.heartbeat(join("c", &["t"]), &topics, 1).unwrap();
        let after = groups.describe("g").unwrap();
        for member in &before.members {
            let now = &after
                .members
                .iter()
                .find(|m| m.member_id == member.member_id)
                .unwrap()
                .target;
            assert!(now.is_subset(&member.target), "{member:?} -> {now:?}");
        }
    }
}
