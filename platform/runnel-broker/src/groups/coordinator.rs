//! The consumer-group coordinator's state machine (the classic rebalance protocol), with no
//! I/O and no clock of its own: every call gets the time, and answers that must wait (a
//! JoinGroup until the rebalance completes, a SyncGroup until the leader sent the
//! assignment) are returned later as [`Reply`]s naming the caller's ticket. The async shell
//! ([`super::GroupService`]) turns tickets into waiting requests and calls
//! [`Coordinator::tick`] on a schedule.
//!
//! A group moves through Kafka's states:
//! - **Empty**: no members (committed offsets may remain);
//! - **PreparingRebalance**: members are (re)joining until every known member has sent a
//!   JoinGroup or the rebalance timeout passes (members that did not rejoin are removed); a
//!   group that was empty first waits `initial_rebalance_delay` for more members;
//! - **CompletingRebalance**: the join answers went out (the leader got every member's
//!   subscription); waiting for the leader's SyncGroup with the assignment;
//! - **Stable**: everyone has an assignment; members heartbeat within their session timeout.
//!
//! The assignment itself is computed by the leader member's client (its assignor: range,
//! round robin, sticky, cooperative-sticky); the coordinator only relays it, so eager and
//! cooperative rebalancing both work.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

/// Milliseconds on the shell's monotonic clock.
pub type Millis = u64;

/// Identifies a request waiting for its answer.
pub type Ticket = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("unknown member id")]
    UnknownMemberId,
    #[error("illegal generation")]
    IllegalGeneration,
    #[error("the group is rebalancing")]
    RebalanceInProgress,
    #[error("a member id is required: join again with the one given")]
    MemberIdRequired,
    #[error("the member's protocols do not match the group's")]
    InconsistentGroupProtocol,
    #[error("session timeout out of the allowed range")]
    InvalidSessionTimeout,
    #[error("no such group")]
    GroupIdNotFound,
    #[error("the group still has members")]
    NonEmptyGroup,
    #[error("invalid group id")]
    InvalidGroupId,
    /// Another member now holds this static member's `group.instance.id`.
    #[error("the group instance id is in use by a newer member")]
    FencedInstanceId,
}

/// Group-wide limits (Kafka's `group.*` broker settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSettings {
    pub initial_rebalance_delay: Millis,
    pub min_session_timeout: Millis,
    pub max_session_timeout: Millis,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            initial_rebalance_delay: 3_000,
            min_session_timeout: 6_000,
            max_session_timeout: 1_800_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// The name Kafka tools show.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// A JoinGroup as the coordinator needs it.
#[derive(Debug, Clone)]
pub struct Join {
    pub group: String,
    /// Empty on a member's first join.
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub protocol_type: String,
    /// (name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub session_timeout: Millis,
    pub rebalance_timeout: Millis,
    /// JoinGroup v4+: a new member first gets MEMBER_ID_REQUIRED with its id (KIP-394).
    pub require_known_member_id: bool,
}

/// A member as a JoinGroup answer lists it to the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

/// The answer to a JoinGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinOutcome {
    pub error: Option<GroupError>,
    pub generation: i32,
    pub protocol_type: String,
    pub protocol_name: String,
    pub leader: String,
    pub member_id: String,
    /// Every member with its metadata, for the leader only.
    pub members: Vec<JoinedMember>,
    /// A static leader that rejoined a stable group: it gets the members (to watch their
    /// subscriptions) but must not assign (KIP-814, JoinGroup v9).
    pub skip_assignment: bool,
}

/// The answer to a SyncGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOutcome {
    pub error: Option<GroupError>,
    pub protocol_type: String,
    pub protocol_name: String,
    pub assignment: Bytes,
}

/// An answer to a request that waited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Join(Ticket, JoinOutcome),
    Sync(Ticket, SyncOutcome),
}

/// A member as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol_name: String,
    pub generation: i32,
    pub members: Vec<MemberDescription>,
}

/// A stable group as it is stored in `__consumer_offsets`, so that after a restart its
/// members carry on (heartbeating with their ids and generation) without a rebalance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGroup {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol_name: String,
    pub leader: String,
    pub members: Vec<StoredMember>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Millis,
    pub rebalance_timeout: Millis,
    /// The member's metadata for the group's protocol.
    pub subscription: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug)]
struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    protocols: Vec<(String, Bytes)>,
    session_timeout: Millis,
    rebalance_timeout: Millis,
    assignment: Bytes,
    last_heartbeat: Millis,
    awaiting_join: Option<Ticket>,
    awaiting_sync: Option<Ticket>,
}

impl Member {
    /// The member's metadata (its subscription) for `protocol`, empty if it has none.
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }
}

#[derive(Debug)]
struct Group {
    state: GroupState,
    generation: i32,
    protocol_type: String,
    protocol_name: String,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with the time they expire.
    pending: HashMap<String, Millis>,
    /// When a PreparingRebalance ends at the latest.
    deadline: Millis,
    /// The first rebalance of an empty group waits its whole delay for more members.
    initial_delay: bool,
    /// When the group last became empty (or was first seen), for offset expiry.
    empty_since: Millis,
}

impl Group {
    fn new(now: Millis) -> Group {
        Group {
            empty_since: now,
            state: GroupState::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol_name: String::new(),
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            deadline: 0,
            initial_delay: false,
        }
    }

    /// A JoinGroup answer with the current generation, for a member that keeps its place
    /// without a rebalance.
    fn current_generation(&self, member_id: String) -> JoinOutcome {
        JoinOutcome {
            error: None,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id,
            members: Vec::new(),
            skip_assignment: false,
        }
    }

    /// What the leader sees of every member: its id, instance id and metadata for the
    /// group's protocol.
    fn joined_members(&self, protocol: &str) -> Vec<JoinedMember> {
        self.members
            .iter()
            .map(|(id, m)| JoinedMember {
                member_id: id.clone(),
                instance_id: m.instance_id.clone(),
                metadata: m.metadata_for(protocol),
            })
            .collect()
    }

    fn rebalance_timeout(&self) -> Millis {
        self.members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(0)
    }

    /// Protocols every member supports; the one most members prefer wins (ties: the
    /// name first in the leader's, or any, list).
    fn select_protocol(&self) -> Option<String> {
        let mut members = self.members.values();
        let first = members.next()?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(name, _)| name)
            .filter(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == *name))
            })
            .collect();
        let mut votes: Vec<(usize, &String)> = candidates.iter().map(|c| (0, *c)).collect();
        for member in self.members.values() {
            if let Some((name, _)) = member
                .protocols
                .iter()
                .find(|(name, _)| candidates.contains(&name))
                && let Some(entry) = votes.iter_mut().find(|(_, c)| *c == name)
            {
                entry.0 += 1;
            }
        }
        // The most votes; among equals, the first candidate.
        let best = votes.iter().map(|(n, _)| *n).max()?;
        votes
            .into_iter()
            .find(|(n, _)| *n == best)
            .map(|(_, name)| name.clone())
    }
}

/// Every group this node coordinates.
#[derive(Debug, Default)]
pub struct Coordinator {
    settings: GroupSettings,
    groups: HashMap<String, Group>,
}

fn failed_join(error: GroupError, member_id: &str) -> JoinOutcome {
    JoinOutcome {
        error: Some(error),
        generation: -1,
        protocol_type: String::new(),
        protocol_name: String::new(),
        leader: String::new(),
        member_id: member_id.to_string(),
        members: Vec::new(),
        skip_assignment: false,
    }
}

fn failed_sync(error: GroupError) -> SyncOutcome {
    SyncOutcome {
        error: Some(error),
        protocol_type: String::new(),
        protocol_name: String::new(),
        assignment: Bytes::new(),
    }
}

impl Coordinator {
    pub fn new(settings: GroupSettings) -> Coordinator {
        Coordinator {
            settings,
            groups: HashMap::new(),
        }
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        format!("{client_id}-{}", uuid::Uuid::new_v4())
    }

    /// A JoinGroup. Returns the replies that are ready now (possibly this request's own).
    pub fn join(&mut self, ticket: Ticket, join: Join, now: Millis) -> Vec<Reply> {
        let reject = |error| vec![Reply::Join(ticket, failed_join(error, &join.member_id))];
        if join.group.is_empty() {
            return reject(GroupError::InvalidGroupId);
        }
        if join.session_timeout < self.settings.min_session_timeout
            || join.session_timeout > self.settings.max_session_timeout
        {
            return reject(GroupError::InvalidSessionTimeout);
        }
        if join.protocol_type.is_empty() || join.protocols.is_empty() {
            return reject(GroupError::InconsistentGroupProtocol);
        }
        let mut member_id = join.member_id.clone();
        if member_id.is_empty() {
            // A static member that rejoins under a new id replaces its old one.
            member_id = self.new_member_id(&join.client_id);
            if join.require_known_member_id && join.instance_id.is_none() {
                let group = self
                    .groups
                    .entry(join.group.clone())
                    .or_insert_with(|| Group::new(now));
                group
                    .pending
                    .insert(member_id.clone(), now + join.session_timeout);
                return vec![Reply::Join(
                    ticket,
                    failed_join(GroupError::MemberIdRequired, &member_id),
                )];
            }
        }
        let group = self
            .groups
            .entry(join.group.clone())
            .or_insert_with(|| Group::new(now));
        let known = group.members.contains_key(&member_id);
        let pending = group.pending.remove(&member_id).is_some();
        if !known && !pending && !join.member_id.is_empty() {
            // A static member whose instance id another member now holds was replaced by
            // a newer process: fenced (clients treat it as fatal). Any other id is unknown.
            let replaced = join.instance_id.as_ref().is_some_and(|instance| {
                group
                    .members
                    .values()
                    .any(|m| m.instance_id.as_ref() == Some(instance))
            });
            let error = if replaced {
                GroupError::FencedInstanceId
            } else {
                GroupError::UnknownMemberId
            };
            return vec![Reply::Join(ticket, failed_join(error, &join.member_id))];
        }
        if !group.members.is_empty()
            && (group.protocol_type != join.protocol_type
                || !join.protocols.iter().any(|(name, _)| {
                    group
                        .members
                        .values()
                        .all(|m| m.protocols.iter().any(|(n, _)| n == name))
                }))
        {
            return vec![Reply::Join(
                ticket,
                failed_join(GroupError::InconsistentGroupProtocol, &member_id),
            )];
        }
        let mut replies = Vec::new();
        if let Some(instance) = &join.instance_id {
            let previous: Vec<String> = group
                .members
                .iter()
                .filter(|(id, m)| **id != member_id && m.instance_id.as_ref() == Some(instance))
                .map(|(id, _)| id.clone())
                .collect();
            // A static member that restarts into a stable group with the same
            // subscription takes over its old member and assignment without a rebalance
            // (KIP-345); the old process is fenced. A leader stays the leader and gets the
            // members with skip_assignment (KIP-814), so it can watch for changes to
            // their subscriptions without assigning again.
            if let [old] = previous.as_slice()
                && group.state == GroupState::Stable
                && group
                    .members
                    .get(old)
                    .is_some_and(|m| m.protocols == join.protocols)
                && let Some(mut member) = group.members.remove(old)
            {
                if let Some(ticket) = member.awaiting_sync.take() {
                    replies.push(Reply::Sync(
                        ticket,
                        failed_sync(GroupError::FencedInstanceId),
                    ));
                }
                member.last_heartbeat = now;
                member.session_timeout = join.session_timeout;
                member.rebalance_timeout = join.rebalance_timeout;
                group.members.insert(member_id.clone(), member);
                let was_leader = group.leader.as_ref() == Some(old);
                let mut outcome = if was_leader {
                    group.leader = Some(member_id.clone());
                    let members = group.joined_members(&group.protocol_name);
                    JoinOutcome {
                        members,
                        skip_assignment: true,
                        ..group.current_generation(member_id)
                    }
                } else {
                    group.current_generation(member_id)
                };
                outcome.leader = group.leader.clone().unwrap_or_default();
                replies.push(Reply::Join(ticket, outcome));
                return replies;
            }
            for old in previous {
                if let Some(fenced) = group.members.remove(&old) {
                    answer_fenced(&mut replies, &old, fenced);
                }
                if group.leader.as_ref() == Some(&old) {
                    group.leader = Some(member_id.clone());
                }
            }
        }

        // A known follower rejoining a stable group with unchanged protocols gets the
        // current generation back without a rebalance.
        if group.state == GroupState::Stable
            && group.leader.as_ref() != Some(&member_id)
            && let Some(member) = group
                .members
                .get_mut(&member_id)
                .filter(|m| m.protocols == join.protocols)
        {
            member.last_heartbeat = now;
            replies.push(Reply::Join(ticket, group.current_generation(member_id)));
            return replies;
        }

        let member = group
            .members
            .entry(member_id.clone())
            .or_insert_with(|| Member {
                instance_id: join.instance_id.clone(),
                client_id: join.client_id.clone(),
                client_host: join.client_host.clone(),
                protocols: Vec::new(),
                session_timeout: join.session_timeout,
                rebalance_timeout: join.rebalance_timeout,
                assignment: Bytes::new(),
                last_heartbeat: now,
                awaiting_join: None,
                awaiting_sync: None,
            });
        member.protocols = join.protocols;
        member.session_timeout = join.session_timeout;
        member.rebalance_timeout = join.rebalance_timeout;
        member.last_heartbeat = now;
        if let Some(earlier) = member.awaiting_join.replace(ticket) {
            // The same member joined twice: the earlier request is answered as superseded.
            replies.push(Reply::Join(
                earlier,
                failed_join(GroupError::RebalanceInProgress, &member_id),
            ));
        }
        group.protocol_type = join.protocol_type;
        self.prepare_rebalance(&join.group, now, &mut replies);
        self.try_complete_join(&join.group, now, &mut replies);
        replies
    }

    /// Moves a group into PreparingRebalance (if it is not there already), answering
    /// SyncGroups that were waiting on the generation now abandoned.
    fn prepare_rebalance(&mut self, name: &str, now: Millis, replies: &mut Vec<Reply>) {
        let settings = self.settings;
        let Some(group) = self.groups.get_mut(name) else {
            return;
        };
        match group.state {
            GroupState::PreparingRebalance => {}
            GroupState::Empty => {
                group.state = GroupState::PreparingRebalance;
                group.initial_delay = true;
                group.deadline = now
                    + settings
                        .initial_rebalance_delay
                        .min(group.rebalance_timeout());
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                for member in group.members.values_mut() {
                    if let Some(ticket) = member.awaiting_sync.take() {
                        replies.push(Reply::Sync(
                            ticket,
                            failed_sync(GroupError::RebalanceInProgress),
                        ));
                    }
                }
                group.state = GroupState::PreparingRebalance;
                group.initial_delay = false;
                group.deadline = now + group.rebalance_timeout();
            }
        }
    }

    /// Ends a PreparingRebalance once every member rejoined (or, for the first rebalance
    /// of an empty group, once its delay is over), or at the deadline.
    fn try_complete_join(&mut self, name: &str, now: Millis, replies: &mut Vec<Reply>) {
        let Some(group) = self.groups.get_mut(name) else {
            return;
        };
        if group.state != GroupState::PreparingRebalance {
            return;
        }
        let everyone = group.members.values().all(|m| m.awaiting_join.is_some());
        let due = now >= group.deadline;
        if !(due || (everyone && !group.initial_delay)) {
            return;
        }
        // Members that did not rejoin in time are out.
        group.members.retain(|_, m| m.awaiting_join.is_some());
        group.generation += 1;
        if group.members.is_empty() {
            group.state = GroupState::Empty;
            group.empty_since = now;
            group.leader = None;
            group.protocol_name.clear();
            return;
        }
        let Some(protocol) = group.select_protocol() else {
            // Cannot happen (joins are checked against the group), but never panic: every
            // member is told and the group empties.
            for (id, member) in std::mem::take(&mut group.members) {
                if let Some(ticket) = member.awaiting_join {
                    replies.push(Reply::Join(
                        ticket,
                        failed_join(GroupError::InconsistentGroupProtocol, &id),
                    ));
                }
            }
            group.state = GroupState::Empty;
            group.empty_since = now;
            return;
        };
        group.protocol_name = protocol.clone();
        if group
            .leader
            .as_ref()
            .is_none_or(|l| !group.members.contains_key(l))
        {
            // The member that joined first (tickets grow with time) leads, as in Kafka.
            group.leader = group
                .members
                .iter()
                .min_by_key(|(_, m)| m.awaiting_join)
                .map(|(id, _)| id.clone());
        }
        let leader = group.leader.clone().unwrap_or_default();
        let everyone = group.joined_members(&protocol);
        group.state = GroupState::CompletingRebalance;
        for (id, member) in group.members.iter_mut() {
            member.last_heartbeat = now;
            member.assignment = Bytes::new();
            if let Some(ticket) = member.awaiting_join.take() {
                replies.push(Reply::Join(
                    ticket,
                    JoinOutcome {
                        error: None,
                        generation: group.generation,
                        protocol_type: group.protocol_type.clone(),
                        protocol_name: protocol.clone(),
                        leader: leader.clone(),
                        member_id: id.clone(),
                        members: if *id == leader {
                            everyone.clone()
                        } else {
                            Vec::new()
                        },
                        skip_assignment: false,
                    },
                ));
            }
        }
    }

    /// Checks that `member` of `generation` belongs to the group.
    fn member<'a>(
        group: &'a mut Group,
        member_id: &str,
        generation: i32,
    ) -> Result<&'a mut Member, GroupError> {
        let member = group
            .members
            .get_mut(member_id)
            .ok_or(GroupError::UnknownMemberId)?;
        if generation != group.generation {
            return Err(GroupError::IllegalGeneration);
        }
        Ok(member)
    }

    /// A SyncGroup; the leader's carries every member's assignment.
    pub fn sync(
        &mut self,
        ticket: Ticket,
        name: &str,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: Millis,
    ) -> Vec<Reply> {
        let Some(group) = self.groups.get_mut(name) else {
            return vec![Reply::Sync(
                ticket,
                failed_sync(GroupError::UnknownMemberId),
            )];
        };
        let state = group.state;
        let is_leader = group.leader.as_deref() == Some(member_id);
        let member = match Self::member(group, member_id, generation) {
            Ok(member) => member,
            Err(error) => return vec![Reply::Sync(ticket, failed_sync(error))],
        };
        member.last_heartbeat = now;
        match state {
            GroupState::Empty | GroupState::PreparingRebalance => {
                vec![Reply::Sync(
                    ticket,
                    failed_sync(GroupError::RebalanceInProgress),
                )]
            }
            GroupState::Stable => {
                let assignment = member.assignment.clone();
                vec![Reply::Sync(
                    ticket,
                    SyncOutcome {
                        error: None,
                        protocol_type: group.protocol_type.clone(),
                        protocol_name: group.protocol_name.clone(),
                        assignment,
                    },
                )]
            }
            GroupState::CompletingRebalance => {
                if let Some(earlier) = member.awaiting_sync.replace(ticket) {
                    // The same member synced twice: the earlier request is superseded.
                    let superseded =
                        Reply::Sync(earlier, failed_sync(GroupError::RebalanceInProgress));
                    if !is_leader {
                        return vec![superseded];
                    }
                    let mut replies = vec![superseded];
                    replies.extend(Self::distribute(group, assignments));
                    return replies;
                }
                if !is_leader {
                    return Vec::new();
                }
                Self::distribute(group, assignments)
            }
        }
    }

    /// The leader's assignment: every member gets its part and waiting syncs are answered.
    fn distribute(group: &mut Group, assignments: Vec<(String, Bytes)>) -> Vec<Reply> {
        let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
        group.state = GroupState::Stable;
        let mut replies = Vec::new();
        for (id, member) in group.members.iter_mut() {
            member.assignment = given.remove(id).unwrap_or_default();
            if let Some(waiting) = member.awaiting_sync.take() {
                replies.push(Reply::Sync(
                    waiting,
                    SyncOutcome {
                        error: None,
                        protocol_type: group.protocol_type.clone(),
                        protocol_name: group.protocol_name.clone(),
                        assignment: member.assignment.clone(),
                    },
                ));
            }
        }
        replies
    }

    pub fn heartbeat(
        &mut self,
        name: &str,
        member_id: &str,
        generation: i32,
        now: Millis,
    ) -> Result<(), GroupError> {
        let group = self
            .groups
            .get_mut(name)
            .ok_or(GroupError::UnknownMemberId)?;
        let state = group.state;
        let member = Self::member(group, member_id, generation)?;
        member.last_heartbeat = now;
        match state {
            GroupState::PreparingRebalance => Err(GroupError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// Members leaving (by member id, or by instance id for static members). Returns each
    /// one's outcome and the replies the departure made ready.
    pub fn leave(
        &mut self,
        name: &str,
        leaving: &[(String, Option<String>)],
        now: Millis,
    ) -> (Vec<Result<(), GroupError>>, Vec<Reply>) {
        let mut replies = Vec::new();
        let Some(group) = self.groups.get_mut(name) else {
            return (
                leaving
                    .iter()
                    .map(|_| Err(GroupError::UnknownMemberId))
                    .collect(),
                replies,
            );
        };
        let mut outcomes = Vec::with_capacity(leaving.len());
        let mut removed = false;
        for (member_id, instance_id) in leaving {
            let id = if member_id.is_empty() {
                instance_id.as_ref().and_then(|instance| {
                    group
                        .members
                        .iter()
                        .find(|(_, m)| m.instance_id.as_ref() == Some(instance))
                        .map(|(id, _)| id.clone())
                })
            } else {
                Some(member_id.clone())
            };
            match id.and_then(|id| group.members.remove(&id).map(|m| (id, m))) {
                Some((id, member)) => {
                    answer_fenced(&mut replies, &id, member);
                    removed = true;
                    outcomes.push(Ok(()));
                }
                None => outcomes.push(Err(GroupError::UnknownMemberId)),
            }
        }
        if removed {
            self.member_left(name, now, &mut replies);
        }
        (outcomes, replies)
    }

    /// After members left or expired: rebalance the rest, or go empty.
    fn member_left(&mut self, name: &str, now: Millis, replies: &mut Vec<Reply>) {
        let Some(group) = self.groups.get_mut(name) else {
            return;
        };
        if group.members.is_empty() && group.state != GroupState::PreparingRebalance {
            group.state = GroupState::Empty;
            group.empty_since = now;
            group.generation += 1;
            group.leader = None;
            group.protocol_name.clear();
            return;
        }
        self.prepare_rebalance(name, now, replies);
        self.try_complete_join(name, now, replies);
    }

    /// Time passing: rebalances reach their deadline, silent members' sessions expire,
    /// unclaimed member ids are forgotten.
    pub fn tick(&mut self, now: Millis) -> Vec<Reply> {
        let mut replies = Vec::new();
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in names {
            let Some(group) = self.groups.get_mut(&name) else {
                continue;
            };
            group.pending.retain(|_, expires| *expires > now);
            // A member waiting for its join or sync answer is alive; any other silent one
            // is gone, also during a rebalance (a crashed member must not hold it up until
            // the rebalance timeout).
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| {
                    m.awaiting_join.is_none()
                        && m.awaiting_sync.is_none()
                        && m.last_heartbeat + m.session_timeout <= now
                })
                .map(|(id, _)| id.clone())
                .collect();
            if !expired.is_empty() {
                for id in &expired {
                    if let Some(member) = group.members.remove(id) {
                        answer_fenced(&mut replies, id, member);
                    }
                }
                self.member_left(&name, now, &mut replies);
            }
            self.try_complete_join(&name, now, &mut replies);
        }
        replies
    }

    /// Whether an offset commit from this member may be stored: a member of the current
    /// generation, unless the new assignment is being handed out, or (generation -1, no member id) a
    /// client that commits without joining, if the group has no members.
    pub fn check_commit(
        &mut self,
        name: &str,
        member_id: &str,
        generation: i32,
        now: Millis,
    ) -> Result<(), GroupError> {
        if name.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        let group = self
            .groups
            .entry(name.to_string())
            .or_insert_with(|| Group::new(now));
        if generation < 0 && member_id.is_empty() {
            return if group.members.is_empty() {
                Ok(())
            } else {
                Err(GroupError::IllegalGeneration)
            };
        }
        let state = group.state;
        let member = Self::member(group, member_id, generation)?;
        member.last_heartbeat = now;
        // As in Kafka: members of the current generation may commit while the group
        // prepares a rebalance (cooperative consumers keep working), not while the new
        // assignment is being handed out.
        match state {
            GroupState::CompletingRebalance => Err(GroupError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    pub fn describe(&self, name: &str) -> Option<GroupDescription> {
        let group = self.groups.get(name)?;
        Some(GroupDescription {
            state: group.state,
            protocol_type: group.protocol_type.clone(),
            protocol_name: group.protocol_name.clone(),
            generation: group.generation,
            members: group
                .members
                .iter()
                .map(|(id, m)| MemberDescription {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata_for(&group.protocol_name),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }

    /// A request naming a static member's instance id must come from the member that
    /// holds it now: a replaced process is fenced.
    pub fn check_instance(
        &self,
        name: &str,
        member_id: &str,
        instance: Option<&str>,
    ) -> Result<(), GroupError> {
        let (Some(instance), Some(group)) = (instance, self.groups.get(name)) else {
            return Ok(());
        };
        let holder = group
            .members
            .iter()
            .find(|(_, m)| m.instance_id.as_deref() == Some(instance));
        match holder {
            Some((id, _)) if id != member_id => Err(GroupError::FencedInstanceId),
            _ => Ok(()),
        }
    }

    /// The state of every group, to see which ones a step changed.
    pub fn state(&self, name: &str) -> Option<GroupState> {
        self.groups.get(name).map(|g| g.state)
    }

    pub fn states(&self) -> HashMap<String, GroupState> {
        self.groups
            .iter()
            .map(|(name, g)| (name.clone(), g.state))
            .collect()
    }

    /// Every group known: (name, state, protocol type).
    pub fn list(&self) -> Vec<(String, GroupState, String)> {
        let mut groups: Vec<_> = self
            .groups
            .iter()
            .map(|(name, g)| (name.clone(), g.state, g.protocol_type.clone()))
            .collect();
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        groups
    }

    /// Forgets a group with no members (its offsets are the caller's to delete).
    pub fn delete(&mut self, name: &str) -> Result<(), GroupError> {
        match self.groups.get(name) {
            Some(group) if !group.members.is_empty() => Err(GroupError::NonEmptyGroup),
            _ => {
                self.groups.remove(name);
                Ok(())
            }
        }
    }

    /// How long a group has had no members; `None` while it has members (an unknown
    /// group has had none for ever).
    pub fn empty_for(&self, name: &str, now: Millis) -> Option<Millis> {
        match self.groups.get(name) {
            None => Some(Millis::MAX),
            Some(group) if group.members.is_empty() => Some(now.saturating_sub(group.empty_since)),
            Some(_) => None,
        }
    }

    /// The group as stored, if it is Stable or Empty (the states worth restoring).
    pub fn stored(&self, name: &str) -> Option<StoredGroup> {
        let group = self.groups.get(name)?;
        if !matches!(group.state, GroupState::Stable | GroupState::Empty) {
            return None;
        }
        Some(StoredGroup {
            protocol_type: group.protocol_type.clone(),
            generation: group.generation,
            protocol_name: group.protocol_name.clone(),
            leader: group.leader.clone().unwrap_or_default(),
            members: group
                .members
                .iter()
                .map(|(id, m)| StoredMember {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout: m.session_timeout,
                    rebalance_timeout: m.rebalance_timeout,
                    subscription: m.metadata_for(&group.protocol_name),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }

    /// Restores a stored group after a restart: Stable with its members, whose sessions
    /// start now (a member that does not come back expires as usual).
    pub fn restore(&mut self, name: &str, stored: StoredGroup, now: Millis) {
        let mut group = Group::new(now);
        group.generation = stored.generation;
        group.protocol_type = stored.protocol_type;
        group.protocol_name = stored.protocol_name.clone();
        if !stored.members.is_empty() {
            group.state = GroupState::Stable;
            group.leader = Some(stored.leader);
        }
        for member in stored.members {
            group.members.insert(
                member.member_id,
                Member {
                    instance_id: member.instance_id,
                    client_id: member.client_id,
                    client_host: member.client_host,
                    protocols: vec![(stored.protocol_name.clone(), member.subscription)],
                    session_timeout: member.session_timeout,
                    rebalance_timeout: member.rebalance_timeout,
                    assignment: member.assignment,
                    last_heartbeat: now,
                    awaiting_join: None,
                    awaiting_sync: None,
                },
            );
        }
        self.groups.insert(name.to_string(), group);
    }

    /// Makes a group known (as Empty) when only its committed offsets were loaded.
    pub fn ensure(&mut self, name: &str, now: Millis) {
        self.groups
            .entry(name.to_string())
            .or_insert_with(|| Group::new(now));
    }
}

/// A member removed while a JoinGroup or SyncGroup of its was waiting: that request is
/// answered with UNKNOWN_MEMBER_ID.
fn answer_fenced(replies: &mut Vec<Reply>, id: &str, member: Member) {
    if let Some(ticket) = member.awaiting_join {
        replies.push(Reply::Join(
            ticket,
            failed_join(GroupError::UnknownMemberId, id),
        ));
    }
    if let Some(ticket) = member.awaiting_sync {
        replies.push(Reply::Sync(
            ticket,
            failed_sync(GroupError::UnknownMemberId),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> GroupSettings {
        GroupSettings {
            initial_rebalance_delay: 100,
            min_session_timeout: 10,
            max_session_timeout: 100_000,
        }
    }

    fn join(member_id: &str) -> Join {
        Join {
            group: "g".to_string(),
            member_id: member_id.to_string(),
            instance_id: None,
            client_id: "c".to_string(),
            client_host: "/127.0.0.1".to_string(),
            protocol_type: "consumer".to_string(),
            protocols: vec![("range".to_string(), Bytes::from_static(b"meta"))],
            session_timeout: 1_000,
            rebalance_timeout: 5_000,
            require_known_member_id: true,
        }
    }

    fn joined(replies: &[Reply], ticket: Ticket) -> JoinOutcome {
        replies
            .iter()
            .find_map(|r| match r {
                Reply::Join(t, outcome) if *t == ticket => Some(outcome.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no join reply for ticket {ticket} in {replies:?}"))
    }

    fn synced(replies: &[Reply], ticket: Ticket) -> SyncOutcome {
        replies
            .iter()
            .find_map(|r| match r {
                Reply::Sync(t, outcome) if *t == ticket => Some(outcome.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no sync reply for ticket {ticket} in {replies:?}"))
    }

    /// Two members join (after the member-id round trip), the first is leader, the leader's
    /// assignment reaches both.
    fn two_member_group(c: &mut Coordinator) -> (String, String, i32) {
        let first = joined(&c.join(1, join(""), 0), 1);
        assert_eq!(first.error, Some(GroupError::MemberIdRequired));
        let second = joined(&c.join(2, join(""), 0), 2);
        assert!(c.join(3, join(&first.member_id), 0).is_empty());
        assert!(
            c.join(4, join(&second.member_id), 10).is_empty(),
            "initial delay"
        );
        let replies = c.tick(100);
        let a = joined(&replies, 3);
        let b = joined(&replies, 4);
        assert_eq!((a.error, b.error), (None, None));
        assert_eq!(a.generation, 1);
        assert_eq!(a.leader, a.member_id);
        assert_eq!(a.members.len(), 2);
        assert!(b.members.is_empty());
        assert!(c.sync(5, "g", &b.member_id, 1, vec![], 110).is_empty());
        let replies = c.sync(
            6,
            "g",
            &a.member_id,
            1,
            vec![
                (a.member_id.clone(), Bytes::from_static(b"p0")),
                (b.member_id.clone(), Bytes::from_static(b"p1")),
            ],
            120,
        );
        assert_eq!(synced(&replies, 6).assignment, Bytes::from_static(b"p0"));
        assert_eq!(synced(&replies, 5).assignment, Bytes::from_static(b"p1"));
        (a.member_id, b.member_id, 1)
    }

    #[test]
    fn members_join_sync_and_get_the_leaders_assignment() {
        let mut c = Coordinator::new(settings());
        let (a, b, generation) = two_member_group(&mut c);
        assert_eq!(c.heartbeat("g", &a, generation, 200), Ok(()));
        assert_eq!(
            c.heartbeat("g", &b, generation + 1, 200),
            Err(GroupError::IllegalGeneration)
        );
        assert_eq!(
            c.heartbeat("g", "stranger", generation, 200),
            Err(GroupError::UnknownMemberId)
        );
        assert_eq!(c.describe("g").unwrap().state, GroupState::Stable);
    }

    #[test]
    fn a_leaving_member_triggers_a_rebalance_of_the_rest() {
        let mut c = Coordinator::new(settings());
        let (a, b, generation) = two_member_group(&mut c);
        let (outcomes, replies) = c.leave("g", &[(b.clone(), None)], 300);
        assert_eq!(outcomes, vec![Ok(())]);
        assert!(replies.is_empty());
        assert_eq!(
            c.heartbeat("g", &a, generation, 310),
            Err(GroupError::RebalanceInProgress)
        );
        let replies = c.join(10, join(&a), 320);
        let outcome = joined(&replies, 10);
        assert_eq!(outcome.generation, generation + 1);
        assert_eq!(outcome.members.len(), 1);
    }

    #[test]
    fn a_silent_member_expires_and_one_that_does_not_rejoin_is_removed() {
        let mut c = Coordinator::new(settings());
        let (a, b, generation) = two_member_group(&mut c);
        // a keeps heartbeating, b does not.
        assert_eq!(c.heartbeat("g", &a, generation, 900), Ok(()));
        let replies = c.tick(1_200);
        assert!(replies.is_empty());
        assert_eq!(
            c.describe("g").unwrap().state,
            GroupState::PreparingRebalance
        );
        assert_eq!(
            c.heartbeat("g", &b, generation, 1_200),
            Err(GroupError::UnknownMemberId)
        );
        let outcome = joined(&c.join(11, join(&a), 1_300), 11);
        assert_eq!(outcome.members.len(), 1);

        // A member that does not rejoin within the rebalance timeout is dropped.
        let mut c = Coordinator::new(settings());
        let (a, _b, _) = two_member_group(&mut c);
        assert!(c.join(12, join(&a), 400).is_empty(), "b has not rejoined");
        let replies = c.tick(400 + 5_000);
        let outcome = joined(&replies, 12);
        assert_eq!(outcome.members.len(), 1);
        assert_eq!(outcome.generation, 2);
    }

    #[test]
    fn commits_are_checked_against_membership_and_rebalances() {
        let mut c = Coordinator::new(settings());
        assert_eq!(c.check_commit("solo", "", -1, 0), Ok(()));
        let (a, _b, generation) = two_member_group(&mut c);
        assert_eq!(c.check_commit("g", &a, generation, 200), Ok(()));
        assert_eq!(
            c.check_commit("g", "", -1, 200),
            Err(GroupError::IllegalGeneration)
        );
        c.join(20, join(&a), 210);
        assert_eq!(c.check_commit("g", &a, generation, 220), Ok(()));
        assert_eq!(c.delete("g"), Err(GroupError::NonEmptyGroup));
    }

    #[test]
    fn bad_joins_are_refused() {
        let mut c = Coordinator::new(settings());
        let mut short = join("");
        short.session_timeout = 1;
        assert_eq!(
            joined(&c.join(1, short, 0), 1).error,
            Some(GroupError::InvalidSessionTimeout)
        );
        assert_eq!(
            joined(&c.join(2, join("made-up"), 0), 2).error,
            Some(GroupError::UnknownMemberId)
        );
        let (a, _, _) = two_member_group(&mut c);
        let mut other = join("");
        other.require_known_member_id = false;
        other.protocols = vec![("other".to_string(), Bytes::new())];
        assert_eq!(
            joined(&c.join(30, other, 500), 30).error,
            Some(GroupError::InconsistentGroupProtocol)
        );
        assert_eq!(c.heartbeat("g", &a, 1, 500), Ok(()));
    }

    #[test]
    fn a_crashed_member_does_not_hold_a_rebalance_until_its_timeout() {
        let mut c = Coordinator::new(settings());
        let (a, b, _) = two_member_group(&mut c);
        // A new member arrives; a rejoins, b has crashed and says nothing.
        let mut newcomer = join("");
        newcomer.require_known_member_id = false;
        assert!(c.join(40, newcomer, 500).is_empty());
        assert!(c.join(41, join(&a), 510).is_empty());
        // b's session (1 s) ends long before the rebalance timeout (5 s).
        let replies = c.tick(1_200);
        let outcome = joined(&replies, 41);
        assert_eq!(outcome.members.len(), 2, "a and the newcomer, without b");
        assert!(outcome.members.iter().all(|m| m.member_id != b));
    }

    #[test]
    fn a_replaced_static_member_is_fenced() {
        let mut c = Coordinator::new(settings());
        let mut first = join("");
        first.instance_id = Some("pod-1".to_string());
        assert!(c.join(50, first.clone(), 0).is_empty());
        let old = joined(&c.tick(100), 50);
        assert_eq!(old.error, None);
        // A second process with the same instance id takes its place...
        let newer = joined(&c.join(51, first.clone(), 200), 51);
        assert_eq!(newer.error, None);
        assert_ne!(newer.member_id, old.member_id);
        // ...and the first, rejoining with its old id, is fenced.
        let mut stale = first;
        stale.member_id = old.member_id;
        assert_eq!(
            joined(&c.join(52, stale, 300), 52).error,
            Some(GroupError::FencedInstanceId)
        );
    }

    #[test]
    fn a_repeated_sync_answers_the_earlier_one() {
        let mut c = Coordinator::new(settings());
        let first = joined(&c.join(60, join(""), 0), 60);
        let second = joined(&c.join(61, join(""), 0), 61);
        assert!(c.join(62, join(&first.member_id), 0).is_empty());
        assert!(c.join(63, join(&second.member_id), 0).is_empty());
        let replies = c.tick(100);
        let follower = joined(&replies, 63);
        assert!(follower.members.is_empty(), "the first joiner leads");
        assert!(
            c.sync(64, "g", &follower.member_id, 1, vec![], 110)
                .is_empty()
        );
        let replies = c.sync(65, "g", &follower.member_id, 1, vec![], 120);
        assert_eq!(
            synced(&replies, 64).error,
            Some(GroupError::RebalanceInProgress)
        );
    }

    #[test]
    fn a_static_follower_restarts_without_a_rebalance() {
        let mut c = Coordinator::new(settings());
        let static_join = |instance: &str| {
            let mut j = join("");
            j.instance_id = Some(instance.to_string());
            j
        };
        assert!(c.join(70, static_join("leader"), 0).is_empty());
        assert!(c.join(71, static_join("follower"), 10).is_empty());
        let replies = c.tick(100);
        let leader = joined(&replies, 70);
        let follower = joined(&replies, 71);
        c.sync(72, "g", &follower.member_id, 1, vec![], 110);
        c.sync(
            73,
            "g",
            &leader.member_id,
            1,
            vec![(follower.member_id.clone(), Bytes::from_static(b"p1"))],
            120,
        );
        // The follower's process restarts: a new member id, the same generation, no
        // rebalance, and its assignment is still there.
        let again = joined(&c.join(74, static_join("follower"), 500), 74);
        assert_eq!((again.error, again.generation), (None, 1));
        assert_ne!(again.member_id, follower.member_id);
        assert_eq!(c.describe("g").unwrap().state, GroupState::Stable);
        let replies = c.sync(75, "g", &again.member_id, 1, vec![], 510);
        assert_eq!(synced(&replies, 75).assignment, Bytes::from_static(b"p1"));
        assert_eq!(
            c.heartbeat("g", &follower.member_id, 1, 520),
            Err(GroupError::UnknownMemberId)
        );
        // The old process, naming its instance id, is fenced; the new one is not.
        assert_eq!(
            c.check_instance("g", &follower.member_id, Some("follower")),
            Err(GroupError::FencedInstanceId)
        );
        assert_eq!(
            c.check_instance("g", &again.member_id, Some("follower")),
            Ok(())
        );
    }

    #[test]
    fn a_static_leader_restarts_without_a_rebalance_and_skips_assignment() {
        let mut c = Coordinator::new(settings());
        let static_join = |instance: &str| {
            let mut j = join("");
            j.instance_id = Some(instance.to_string());
            j
        };
        assert!(c.join(80, static_join("leader"), 0).is_empty());
        assert!(c.join(81, static_join("follower"), 10).is_empty());
        let replies = c.tick(100);
        let leader = joined(&replies, 80);
        let follower = joined(&replies, 81);
        assert_eq!(leader.leader, leader.member_id);
        c.sync(82, "g", &follower.member_id, 1, vec![], 110);
        c.sync(
            83,
            "g",
            &leader.member_id,
            1,
            vec![
                (leader.member_id.clone(), Bytes::from_static(b"p0")),
                (follower.member_id.clone(), Bytes::from_static(b"p1")),
            ],
            120,
        );
        // The leader's process restarts: a new member id that still leads, the members
        // to watch, skip_assignment, and no rebalance.
        let again = joined(&c.join(84, static_join("leader"), 500), 84);
        assert_eq!((again.error, again.generation), (None, 1));
        assert_ne!(again.member_id, leader.member_id);
        assert_eq!(again.leader, again.member_id);
        assert!(again.skip_assignment);
        let mut members: Vec<_> = again.members.iter().map(|m| m.member_id.clone()).collect();
        members.sort();
        let mut expected = vec![again.member_id.clone(), follower.member_id.clone()];
        expected.sort();
        assert_eq!(members, expected);
        assert_eq!(c.describe("g").unwrap().state, GroupState::Stable);
        // A SyncGroup of an assigning old-version leader changes nothing.
        let replies = c.sync(
            85,
            "g",
            &again.member_id,
            1,
            vec![(again.member_id.clone(), Bytes::from_static(b"everything"))],
            510,
        );
        assert_eq!(synced(&replies, 85).assignment, Bytes::from_static(b"p0"));
        assert_eq!(c.heartbeat("g", &follower.member_id, 1, 520), Ok(()));
        assert_eq!(
            c.heartbeat("g", &leader.member_id, 1, 520),
            Err(GroupError::UnknownMemberId)
        );
    }
}
