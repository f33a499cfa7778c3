//! Partition replication: followers copy their leader's log, the leader's high watermark
//! waits for its in-sync replicas, and a follower is cut back to what a new leader has.
//!
//! # The protocol
//! A follower fetches from its leader over the cluster RPC ([`ReplicaFetch`]), from its log
//! end, naming the leader epoch it follows and the newest epoch in its own log. The leader
//! answers with the batches from there on (past its high watermark), its high watermark and,
//! when the follower's log holds records the leader's does not, where they diverge: the end
//! of the follower's last epoch in the leader's log (Kafka's diverging epoch, KIP-320). The
//! follower then cuts its log back to that offset and fetches again. Batches are appended
//! as they are (offsets, epochs, producer ids), fsynced before the next fetch, so a fetch
//! offset is what the follower holds durably.
//!
//! # The high watermark
//! The leader takes each fetch offset as its follower's log end. Its high watermark is the
//! least log end of the replicas in the ISR, itself included: it holds the log at the
//! *replica floor* (see [`runnel_log::PartitionLog::set_replica_floor`]). A follower's high
//! watermark is its leader's, as far as its own log reaches.
//!
//! # The ISR
//! The controller takes a fenced node out of every ISR and gives its leaderships to the
//! first live member left (see `runnel_controller::Command::SetNodeAlive`). The leader
//! itself asks the controller ([`runnel_controller::Command::AlterIsr`]) to drop a follower
//! that has not caught up to its log end for [`LAG_MAX`], and to add back one whose log
//! reaches the high watermark and the start of the leader's epoch.
//!
//! # Produce
//! A write with `acks=all` (`durable`) is refused with too few in-sync replicas
//! (`min.insync.replicas`), and answered once the high watermark passes it. If this node
//! stops leading meanwhile, or the replicas do not catch up in [`REPLICATION_TIMEOUT`], the
//! answer is an error the producer retries (an idempotent one without duplicates).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_controller::{Command, Metadata, NodeId, PartitionMeta};
use runnel_log::{LogError, PartitionLog, Role, TopicPartition};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{Broker, BrokerError};

/// A follower that has not reached the leader's log end for this long leaves the ISR
/// (Kafka's `replica.lag.time.max.ms`, 30 s there; Runnel fences a silent node in 6 s).
pub const LAG_MAX: Duration = Duration::from_secs(10);
/// How long an `acks=all` write waits for the ISR before failing with a retriable error.
pub const REPLICATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a leader holds a follower's fetch that finds nothing new.
const FETCH_WAIT: Duration = Duration::from_millis(500);
/// Bytes a follower asks for in one fetch.
const FETCH_BYTES: usize = 4 << 20;
/// How often the roles and ISRs are checked besides metadata changes.
const TICK: Duration = Duration::from_millis(250);

/// A follower's fetch, as the cluster RPC carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaFetch {
    pub topic: String,
    pub partition: i32,
    /// The follower.
    pub replica: NodeId,
    /// The epoch of the leadership the follower follows.
    pub leader_epoch: i32,
    /// The follower's log end: where to read from, and what it holds.
    pub fetch_offset: u64,
    /// The newest epoch in the follower's log (`-1`: none).
    pub last_fetched_epoch: i32,
    pub max_bytes: usize,
}

/// The leader's answer to a [`ReplicaFetch`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplicaFetched {
    /// Whole batches from the fetch offset.
    pub records: Bytes,
    pub high_watermark: u64,
    /// The leader's local log start: a follower below it starts its log there.
    pub log_start: u64,
    /// Set when the follower's log diverges: the epoch and the offset to cut back to.
    pub diverging: Option<(i32, u64)>,
}

/// What the leader knows of one follower.
#[derive(Debug, Clone, Copy)]
struct Follower {
    log_end: u64,
    /// When the follower last held everything the leader had (Kafka's rule: a fetch
    /// reaching the leader's log end as of the follower's previous fetch).
    caught_up_at: Instant,
    fetched_at: Instant,
    /// The leader's log end at the follower's last fetch.
    leader_end_at_fetch: u64,
}

/// A partition this node leads, as replication sees it.
#[derive(Debug)]
struct Led {
    epoch: i32,
    /// When this leadership began: followers not heard from count as caught up then.
    since: Instant,
    /// The log end when it began: a follower joins the ISR only once it has it all.
    epoch_start: u64,
    followers: BTreeMap<NodeId, Follower>,
    /// An ISR proposed to the controller and not applied yet. Until it is, the high
    /// watermark waits for the members of both (Kafka's maximal ISR): a follower being
    /// added may be elected as soon as the change commits, so it must have every record
    /// acknowledged from then on.
    proposed_isr: Option<Vec<NodeId>>,
    /// The ISR that proposal was decided from: once the metadata's differs, the proposal
    /// was applied or superseded (the controller refuses it against any other).
    proposed_from: Vec<NodeId>,
    /// Which proposal is the current one, and whether it is on its way. A proposal that
    /// failed without an answer (no quorum, a timeout) may still commit: it stays proposed
    /// and is sent again.
    proposal: u64,
    in_flight: bool,
}

/// The leader side of replication: the followers' progress per partition led here.
#[derive(Debug, Default)]
pub struct Leaderships {
    led: Mutex<HashMap<TopicPartition, Led>>,
}

impl Leaderships {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TopicPartition, Led>> {
        self.led.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Proposal `proposal` for `tp` got an answer: `settled` if it was applied (this node's
    /// metadata has it: a proposal returns once applied here) or refused, so it is no
    /// longer proposed. The floor keeps counting the proposed members until it is next
    /// computed, from the metadata.
    fn finish_proposal(&self, tp: &TopicPartition, proposal: u64, settled: bool) {
        if let Some(led) = self.lock().get_mut(tp)
            && led.proposal == proposal
        {
            led.in_flight = false;
            if settled {
                led.proposed_isr = None;
            }
        }
    }
}

/// The least log end of the followers in `isr` and in any ISR proposed (0 for one not heard
/// from; `u64::MAX` when the leader is alone in them).
fn replica_floor(led: &Led, isr: &[NodeId], leader: NodeId) -> u64 {
    isr.iter()
        .chain(led.proposed_isr.iter().flatten())
        .filter(|r| **r != leader)
        .map(|r| led.followers.get(r).map_or(0, |f| f.log_end))
        .min()
        .unwrap_or(u64::MAX)
}

/// Holds `log`'s high watermark at the floor of `state` over the ISR as this node's
/// metadata has it now. Called with the leaderships' lock held, and the metadata read under
/// it: a proposal cleared from `state` is in the metadata read after it.
fn update_floor(broker: &Broker, tp: &TopicPartition, state: &Led, log: &PartitionLog) {
    let metadata = broker.metadata();
    // Gone, or led in another epoch: not this leadership's to move.
    let Some(meta) = partition_meta(&metadata, tp).filter(|p| p.leader_epoch == state.epoch) else {
        return;
    };
    log.set_replica_floor(replica_floor(state, &meta.isr, broker.node_id()));
}

/// Proposal ids, unique in the process.
static PROPOSALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub(crate) fn partition_meta<'m>(
    metadata: &'m Metadata,
    tp: &TopicPartition,
) -> Option<&'m PartitionMeta> {
    metadata
        .topics
        .get(&tp.topic)?
        .partitions
        .get(tp.partition as usize)
}

impl Broker {
    /// Serves a follower's fetch of a partition this node leads.
    pub async fn serve_replica_fetch(
        &self,
        fetch: ReplicaFetch,
    ) -> Result<ReplicaFetched, BrokerError> {
        let log = self.leader_log(&fetch.topic, fetch.partition)?;
        let tp = TopicPartition::new(&fetch.topic, fetch.partition as u32);
        let metadata = self.metadata();
        let meta =
            partition_meta(&metadata, &tp).ok_or_else(|| BrokerError::UnknownTopicOrPartition {
                topic: fetch.topic.clone(),
                partition: fetch.partition,
            })?;
        if !meta.replicas.contains(&fetch.replica) {
            return Err(BrokerError::NotReplica {
                topic: fetch.topic,
                partition: fetch.partition,
                replica: fetch.replica,
            });
        }
        // Both must be at the metadata's epoch: the follower, and this node's log (which
        // the role change sets before it takes followers).
        if fetch.leader_epoch != meta.leader_epoch || log.leader_epoch() != meta.leader_epoch {
            return Err(BrokerError::LeaderEpoch {
                topic: fetch.topic,
                partition: fetch.partition,
                epoch: fetch.leader_epoch,
                current: meta.leader_epoch,
            });
        }
        // An answer without records: where the follower should start over, or diverges.
        let no_records = |log_start: u64, diverging: Option<(i32, u64)>| {
            Ok(ReplicaFetched {
                records: Bytes::new(),
                high_watermark: log.high_watermark(),
                log_start,
                diverging,
            })
        };
        let local_start = log.local_log_start();
        if fetch.fetch_offset < local_start {
            // What the follower lacks is no longer here: it starts over at the local start.
            return no_records(local_start, None);
        }
        if fetch.last_fetched_epoch >= 0 {
            let (epoch, end) = log.end_offset_for_epoch(fetch.last_fetched_epoch);
            let unknown_but_consistent = epoch < 0 && end >= fetch.fetch_offset;
            if !unknown_but_consistent
                && (epoch != fetch.last_fetched_epoch || end < fetch.fetch_offset)
            {
                return no_records(local_start, Some((epoch, end)));
            }
        }
        if fetch.fetch_offset > log.log_end() {
            // Ahead of the leader with no epoch to tell where: cut back to the leader's end.
            return no_records(local_start, Some((-1, log.log_end())));
        }
        self.record_follower(&tp, &log, meta, fetch.replica, fetch.fetch_offset);
        if fetch.fetch_offset >= log.log_end() {
            log.wait_for_log_end(fetch.fetch_offset, FETCH_WAIT).await;
        }
        match log.read_replica(fetch.fetch_offset, fetch.max_bytes).await {
            Ok(read) => Ok(ReplicaFetched {
                records: read.records,
                high_watermark: log.high_watermark(),
                log_start: read.log_start,
                diverging: None,
            }),
            // Retention moved the local start since the check above.
            Err(LogError::OffsetOutOfRange { log_start, .. }) if fetch.fetch_offset < log_start => {
                no_records(log_start, None)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Notes a follower's log end and moves the replica floor.
    fn record_follower(
        &self,
        tp: &TopicPartition,
        log: &PartitionLog,
        meta: &PartitionMeta,
        replica: NodeId,
        log_end: u64,
    ) {
        let mut led = self.leaderships.lock();
        let Some(state) = led.get_mut(tp) else {
            return;
        };
        if state.epoch != meta.leader_epoch {
            return;
        }
        let now = Instant::now();
        let leader_end = log.log_end();
        let follower = state.followers.entry(replica).or_insert(Follower {
            log_end,
            caught_up_at: state.since,
            fetched_at: now,
            leader_end_at_fetch: u64::MAX,
        });
        if log_end >= leader_end {
            follower.caught_up_at = now;
        } else if log_end >= follower.leader_end_at_fetch {
            // It has all the leader had at its previous fetch: caught up as of then.
            follower.caught_up_at = follower.caught_up_at.max(follower.fetched_at);
        }
        follower.log_end = log_end;
        follower.fetched_at = now;
        follower.leader_end_at_fetch = leader_end;
        update_floor(self, tp, state, log);
    }

    /// The local log of a partition this node hosts, whatever its role.
    pub(crate) fn hosted_log(&self, tp: &TopicPartition) -> Option<Arc<PartitionLog>> {
        self.log.get(tp)
    }
}

/// `Err((isr, required))` when `meta`'s ISR is smaller than `log`'s
/// `min.insync.replicas`: before an `acks=all` write is appended, and again once its
/// replicas have it.
pub(crate) fn check_in_sync(
    meta: Option<&PartitionMeta>,
    log: &PartitionLog,
) -> Result<(), (usize, u32)> {
    let required = log.config().min_insync_replicas;
    let isr = meta.map_or(0, |p| p.isr.len());
    if (isr as u64) < u64::from(required) {
        return Err((isr, required));
    }
    Ok(())
}

/// An `acks=all` write waiting for its replicas.
pub(crate) struct ReplicaWait {
    pub log: Arc<PartitionLog>,
    pub epoch: i32,
    pub topic: String,
    pub partition: i32,
    pub metadata: watch::Receiver<Arc<Metadata>>,
    /// The node's shutdown: the wait ends with an error.
    pub stopping: CancellationToken,
}

impl ReplicaWait {
    /// Waits until the high watermark passes `last_offset` while this node still leads in
    /// the same epoch (a role change sets the log's epoch to the new one).
    pub async fn wait(&self, last_offset: u64) -> Result<(), BrokerError> {
        let deadline = tokio::time::Instant::now() + REPLICATION_TIMEOUT;
        loop {
            if self.log.leader_epoch() != self.epoch || self.log.role() != Role::Leader {
                return Err(BrokerError::NotLeader {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    leader: None,
                });
            }
            if self.log.high_watermark() > last_offset {
                // The ISR may have shrunk below min.insync.replicas while the write
                // waited, and the high watermark passed it with fewer copies.
                let tp = TopicPartition::new(&self.topic, self.partition as u32);
                let metadata = self.metadata.borrow().clone();
                return check_in_sync(partition_meta(&metadata, &tp), &self.log).map_err(|_| {
                    BrokerError::NotEnoughReplicasAfterAppend {
                        topic: self.topic.clone(),
                        partition: self.partition,
                    }
                });
            }
            if tokio::time::Instant::now() >= deadline || self.stopping.is_cancelled() {
                return Err(BrokerError::NotEnoughReplicasAfterAppend {
                    topic: self.topic.clone(),
                    partition: self.partition,
                });
            }
            // Woken by the high watermark; the leadership is checked at least this often.
            let wait = Duration::from_millis(200);
            tokio::select! {
                _ = self.log.wait_for_data(last_offset, wait) => {}
                () = self.stopping.cancelled() => {}
            }
        }
    }
}

/// A follower's fetcher, running until cancelled.
struct Fetcher {
    leader: NodeId,
    epoch: i32,
    /// The log it writes to: a partition deleted and created again has a new one.
    log: Arc<PartitionLog>,
    stop: CancellationToken,
}

/// Follows the metadata: makes this node lead or follow each partition it hosts, runs a
/// fetcher per partition it follows, and keeps the ISRs of the partitions it leads.
pub async fn run(broker: Arc<Broker>, stop: CancellationToken) {
    let mut metadata = broker.controller().subscribe();
    let mut fetchers: HashMap<TopicPartition, Fetcher> = HashMap::new();
    let mut last_isr_check = Instant::now();
    let mut recording: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let current = broker.metadata();
        let check_isr = last_isr_check.elapsed() >= Duration::from_secs(1);
        if check_isr {
            last_isr_check = Instant::now();
        }
        let due = step(&broker, &current, &mut fetchers, check_isr);
        // High watermarks are recorded (fsyncs) by a task of their own, one pass at a time.
        if !due.is_empty() && recording.as_ref().is_none_or(|task| task.is_finished()) {
            recording = Some(tokio::spawn(record_high_watermarks(due)));
        }
        tokio::select! {
            changed = metadata.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.cancelled() => break,
        }
    }
    for (_, fetcher) in fetchers.drain() {
        fetcher.stop.cancel();
    }
}

/// One pass over the partitions hosted here. Never waits: role changes must not wait on
/// anything. Returns the replicated logs whose high watermark is due to be recorded.
fn step(
    broker: &Arc<Broker>,
    metadata: &Metadata,
    fetchers: &mut HashMap<TopicPartition, Fetcher>,
    check_isr: bool,
) -> Vec<(TopicPartition, Arc<PartitionLog>)> {
    let me = broker.node_id();
    let mut following = Vec::new();
    let mut alterations = Vec::new();
    let mut checkpoints = Vec::new();
    for topic in metadata.topics.values() {
        for (index, meta) in topic.partitions.iter().enumerate() {
            if !meta.replicas.contains(&me) {
                continue;
            }
            let tp = TopicPartition::new(&topic.name, index as u32);
            let Some(log) = broker.hosted_log(&tp) else {
                continue; // not open yet
            };
            match meta.leader {
                Some(leader) if leader == me => {
                    if let Some(proposal) = lead(broker, &tp, &log, meta, check_isr) {
                        alterations.push((tp.clone(), meta.leader_epoch, proposal));
                    }
                }
                Some(leader) => {
                    following.push(tp.clone());
                    follow(
                        broker,
                        tp.clone(),
                        log.clone(),
                        leader,
                        meta.leader_epoch,
                        fetchers,
                    );
                }
                None => {}
            }
            if check_isr && meta.replicas.len() > 1 {
                checkpoints.push((tp, log));
            }
        }
    }
    fetchers.retain(|tp, fetcher| {
        let keep = following.contains(tp);
        if !keep {
            fetcher.stop.cancel();
        }
        keep
    });
    broker
        .leaderships
        .lock()
        .retain(|tp, _| partition_meta(metadata, tp).is_some_and(|meta| meta.leader == Some(me)));
    for (tp, epoch, (proposal, current, isr)) in alterations {
        // One proposal per partition at a time (`lead` proposes none while one is on its
        // way), off this loop: a proposal may wait seconds for a controller quorum, and
        // role changes must not wait for it.
        let broker = broker.clone();
        tokio::spawn(async move {
            let command = Command::AlterIsr {
                topic: tp.topic.clone(),
                partition: tp.partition,
                leader: me,
                leader_epoch: epoch,
                current,
                isr: isr.clone(),
            };
            let settled = match broker.controller().propose(command).await {
                Ok(_) => {
                    tracing::info!(topic = %tp.topic, partition = tp.partition, ?isr, "ISR changed");
                    true
                }
                Err(runnel_controller::ControllerError::Rejected(error)) => {
                    tracing::warn!(topic = %tp.topic, partition = tp.partition, %error, "ISR change refused");
                    true
                }
                Err(error) => {
                    tracing::warn!(topic = %tp.topic, partition = tp.partition, %error, "ISR change not answered; sending it again");
                    false
                }
            };
            broker.leaderships.finish_proposal(&tp, proposal, settled);
        });
    }
    checkpoints
}

async fn record_high_watermarks(logs: Vec<(TopicPartition, Arc<PartitionLog>)>) {
    for (tp, log) in logs {
        if let Err(error) = log.checkpoint_high_watermark().await {
            tracing::warn!(topic = %tp.topic, partition = tp.partition, %error, "recording the high watermark failed");
        }
    }
}

/// An ISR change to send: the proposal's id, the ISR it was decided from, the new ISR.
type Proposal = (u64, Vec<NodeId>, Vec<NodeId>);

/// Makes this node the leader of `tp` in the metadata's epoch, if it is not yet; returns an
/// ISR change to propose when followers left or joined it (or one to send again).
fn lead(
    broker: &Broker,
    tp: &TopicPartition,
    log: &PartitionLog,
    meta: &PartitionMeta,
    check_isr: bool,
) -> Option<Proposal> {
    let me = broker.node_id();
    let mut led = broker.leaderships.lock();
    let state = led.entry(tp.clone()).or_insert_with(|| Led {
        epoch: -1,
        since: Instant::now(),
        epoch_start: 0,
        followers: BTreeMap::new(),
        proposed_isr: None,
        proposed_from: Vec::new(),
        proposal: 0,
        in_flight: false,
    });
    if state.epoch != meta.leader_epoch || log.role() != Role::Leader {
        *state = Led {
            epoch: meta.leader_epoch,
            since: Instant::now(),
            epoch_start: log.log_end(),
            followers: BTreeMap::new(),
            proposed_isr: None,
            proposed_from: Vec::new(),
            proposal: 0,
            in_flight: false,
        };
        // The floor first: nothing appended from here on is shown before the ISR has it.
        update_floor(broker, tp, state, log);
        log.set_leader_epoch(meta.leader_epoch);
        log.set_role(Role::Leader);
        tracing::info!(topic = %tp.topic, partition = tp.partition, epoch = meta.leader_epoch, log_end = log.log_end(), "leading");
    }
    update_floor(broker, tp, state, log);
    if let Some(proposed) = state.proposed_isr.clone() {
        let metadata = broker.metadata();
        let now = partition_meta(&metadata, tp).map(|p| p.isr.clone());
        if now.as_ref() != Some(&state.proposed_from) {
            // Applied, or superseded (the controller refuses it now): no longer proposed.
            state.proposed_isr = None;
            update_floor(broker, tp, state, log);
        } else if !state.in_flight && check_isr {
            // Unanswered: it may have committed or not. Send it again; meanwhile the
            // floor still counts its members.
            state.in_flight = true;
            return Some((state.proposal, state.proposed_from.clone(), proposed));
        } else {
            return None;
        }
    }
    if !check_isr || meta.replicas.len() < 2 {
        return None;
    }
    let now = Instant::now();
    let high_watermark = log.high_watermark();
    let mut isr = meta.isr.clone();
    isr.retain(|r| {
        *r == me
            || now.duration_since(
                state
                    .followers
                    .get(r)
                    .map_or(state.since, |f| f.caught_up_at),
            ) < LAG_MAX
    });
    for replica in &meta.replicas {
        let joins = !isr.contains(replica)
            && state.followers.get(replica).is_some_and(|f| {
                f.log_end >= high_watermark
                    && f.log_end >= state.epoch_start
                    && now.duration_since(f.fetched_at) < LAG_MAX
            });
        if joins {
            isr.push(*replica);
        }
    }
    if isr == meta.isr {
        return None;
    }
    // From now until the controller answers, the high watermark waits for the members
    // of both ISRs.
    state.proposed_isr = Some(isr.clone());
    state.proposed_from = meta.isr.clone();
    state.proposal = PROPOSALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    state.in_flight = true;
    update_floor(broker, tp, state, log);
    Some((state.proposal, meta.isr.clone(), isr))
}

/// Makes this node follow `leader` for `tp` in `epoch`, starting a fetcher if the one
/// running follows another leadership (or none runs).
fn follow(
    broker: &Arc<Broker>,
    tp: TopicPartition,
    log: Arc<PartitionLog>,
    leader: NodeId,
    epoch: i32,
    fetchers: &mut HashMap<TopicPartition, Fetcher>,
) {
    if let Some(running) = fetchers.get(&tp) {
        let same = running.leader == leader
            && running.epoch == epoch
            && Arc::ptr_eq(&running.log, &log)
            && log.role() == Role::Follower;
        if same {
            return;
        }
        running.stop.cancel();
    }
    // Stop acting as leader before fetching: the role first, so that appends queued for
    // the old epoch are refused from here on; then the epoch, and the high watermark now
    // comes from the leader.
    log.set_role(Role::Follower);
    log.set_leader_epoch(epoch);
    log.set_replica_floor(0);
    tracing::info!(topic = %tp.topic, partition = tp.partition, leader, epoch, "following");
    let stop = CancellationToken::new();
    tokio::spawn(fetch_loop(
        broker.clone(),
        tp.clone(),
        log.clone(),
        leader,
        epoch,
        stop.clone(),
    ));
    fetchers.insert(
        tp,
        Fetcher {
            leader,
            epoch,
            log,
            stop,
        },
    );
}

async fn fetch_loop(
    broker: Arc<Broker>,
    tp: TopicPartition,
    log: Arc<PartitionLog>,
    leader: NodeId,
    epoch: i32,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut reported = None::<String>;
    while !stop.is_cancelled() {
        let fetch = ReplicaFetch {
            topic: tp.topic.clone(),
            partition: tp.partition as i32,
            replica: broker.node_id(),
            leader_epoch: epoch,
            fetch_offset: log.log_end(),
            last_fetched_epoch: log.latest_epoch().unwrap_or(-1),
            max_bytes: FETCH_BYTES,
        };
        let fetched = tokio::select! {
            fetched = broker.fetch_from(leader, fetch.clone()) => fetched,
            _ = stop.cancelled() => return,
        };
        let outcome = match fetched {
            Ok(fetched) => apply_fetched(leader, epoch, &log, &fetch, fetched).await,
            Err(error) => Err(error),
        };
        match outcome {
            Ok(()) => {
                backoff = Duration::from_millis(100);
                if reported.take().is_some() {
                    tracing::info!(topic = %tp.topic, partition = tp.partition, leader, "fetching from the leader again");
                }
            }
            Err(error) => {
                let message = error.to_string();
                if reported.as_ref() != Some(&message) {
                    tracing::warn!(topic = %tp.topic, partition = tp.partition, leader, error = %message, "replica fetch failed; retrying");
                    reported = Some(message);
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Applies a leader's answer to this follower's log.
async fn apply_fetched(
    leader: NodeId,
    epoch: i32,
    log: &PartitionLog,
    fetch: &ReplicaFetch,
    fetched: ReplicaFetched,
) -> Result<(), BrokerError> {
    if let Some((diverging, end)) = fetched.diverging {
        // Keep what both logs agree on: up to where the epoch ends in each.
        let own = if diverging >= 0 {
            log.end_offset_for_epoch(diverging).1
        } else {
            end
        };
        let before = log.log_end();
        let after = log.truncate_to(end.min(own), epoch).await?;
        if after >= before {
            // Nothing to cut, yet the leader says the logs diverge: do not spin on it.
            return Err(BrokerError::Peer {
                node: leader,
                message: format!(
                    "the leader reports a divergence at epoch {diverging}, offset {end}, that this log (end {before}) does not show"
                ),
                retriable: true,
            });
        }
        return Ok(());
    }
    if fetch.fetch_offset < fetched.log_start {
        // The leader no longer holds what this log lacks locally (tiered, or deleted):
        // start over at its local log start (past this log's end).
        log.start_replica_at(fetched.log_start, epoch).await?;
        return Ok(());
    }
    let first = runnel_log::batch::batch_positions(&fetched.records)
        .next()
        .map(|(_, header)| u64::try_from(header.base_offset).unwrap_or(0));
    if let Some(base) = first {
        if base < fetch.fetch_offset && log.local_log_start() == log.log_end() {
            // An empty log started inside a batch (the leader's start was moved there by
            // DeleteRecords): start it at the batch instead.
            log.truncate_to(base, epoch).await?;
        }
        log.append_replica(fetched.records, epoch).await?;
    }
    log.advance_high_watermark(fetched.high_watermark);
    Ok(())
}

impl Broker {
    /// A fetch from `leader` over the cluster RPC.
    async fn fetch_from(
        &self,
        leader: NodeId,
        fetch: ReplicaFetch,
    ) -> Result<ReplicaFetched, BrokerError> {
        let refused = BrokerError::Peer {
            node: leader,
            message: "this node cannot reach other nodes".to_string(),
            retriable: true,
        };
        let (peers, address) = self.peer(leader, refused)?;
        peers.fetch_replica(leader, address, fetch).await
    }
}
