//! One executor: a deployed function over one input partition, on the node leading it.
//!
//! # The loop
//! 1. Restore: the function's kv state for the partition and its position are read from
//!    the function's state topic (`__runnel-fn-<name>-state`, compacted); the position is
//!    the later of that and the group `runnel-fn-<name>`'s committed offset (when this node
//!    coordinates the group), else the log start.
//! 2. Read committed records (below the high watermark) from the local log, at most
//!    `limits.batch_records` of them, into one batch buffer; wait on the partition's
//!    notifier when there is nothing new.
//! 3. Call the component (on a blocking thread: a call may run for its whole timeout).
//! 4. On success, write the outputs (a transform's results, a consumer's `produce`
//!    calls) through the produce path, durably (forwarded to the leader of a partition
//!    led elsewhere, see `runnel_broker::peers`); then write the batch's kv changes
//!    and the new position to the state topic as one record batch; then commit the
//!    position as the group's offset, so lag shows in every Kafka tool (while busy at
//!    most every [`COMMIT_INTERVAL`], at once when caught up or stopping). These writes
//!    of one batch run while the next batch is read and processed; the writes of one
//!    batch start only when the previous batch's are done, so they stay in order.
//! 5. On a failure (the function's error, a trap, a timeout, bad outputs) the batch's kv
//!    changes and produced records are rolled back and the call retried with backoff,
//!    `limits.retries` times; then the policy applies: `dlq` writes the batch's records to
//!    `<name>.dlq` with the error and source in headers and moves on, `retry` keeps
//!    retrying, `stop` parks the executor with the error until the function is redeployed,
//!    paused or deleted.
//!
//! # Guarantees
//! At least once: a record's outputs are written before its position is. A crash between
//! the two writes the batch's outputs again on restart. kv state and the position are one
//! atomic write, so the state never counts a batch twice or misses one.
//!
//! # Cancellation
//! The executor checks its token between batches and while it waits or backs off; a
//! batch in flight finishes (outputs, state, commit) before the executor ends, so a pause
//! or redeploy neither loses nor repeats records.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_abi::{BatchWriter, Outputs};
use runnel_broker::BrokerError;
use runnel_broker::groups::{CommittedOffset, GroupServiceError};
use runnel_broker::peers::OffsetCommit;
use runnel_controller::{FunctionSpec, NodeId};
use runnel_log::batch::visit_records;
use runnel_log::{BatchBuilder, BatchEncoder, NewRecord, PartitionLog};
use tokio_util::sync::CancellationToken;

use crate::service::{Functions, PartitionStatus};
use crate::{Function, FunctionError, Instance};

/// The most bytes read from the log for one batch.
const READ_BYTES: usize = 1 << 20;
/// The largest records section decompressed from a stored batch.
const MAX_SECTION: usize = 64 << 20;
/// How long an idle executor waits for new records before looking again.
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// Backoff between attempts of a failed batch: doubling from the first, up to the last.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Output records per produced batch, and their bytes.
const OUTPUT_BATCH_RECORDS: usize = 5000;
const OUTPUT_BATCH_BYTES: usize = 512 << 10;
/// How far the group's committed offset may trail the stored position while busy.
const COMMIT_INTERVAL: Duration = Duration::from_millis(500);

/// Headers of a dead-lettered record.
pub const DLQ_ERROR_HEADER: &str = "runnel.error";
pub const DLQ_TOPIC_HEADER: &str = "runnel.source.topic";
pub const DLQ_PARTITION_HEADER: &str = "runnel.source.partition";
pub const DLQ_OFFSET_HEADER: &str = "runnel.source.offset";
pub const DLQ_VERSION_HEADER: &str = "runnel.function.version";

/// The consumer group a function commits its progress as.
pub fn group_of(function: &str) -> String {
    format!("runnel-fn-{function}")
}

/// The compacted topic of a function's kv state and positions.
pub fn state_topic_of(function: &str) -> String {
    format!("__runnel-fn-{function}-state")
}

/// The dead-letter topic of a function.
pub fn dlq_topic_of(function: &str) -> String {
    format!("{function}.dlq")
}

/// Keys in the state topic: a kind byte, then the input partition, then (kv) the key.
pub(crate) const STATE_KV: u8 = b'k';
const STATE_POSITION: u8 = b'p';

pub(crate) fn state_prefix(kind: u8, topic: &str, partition: i32) -> Vec<u8> {
    let mut key = Vec::with_capacity(topic.len() + 6);
    key.push(kind);
    key.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    key.extend_from_slice(topic.as_bytes());
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

/// Why an executor ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExecutorEnd {
    /// This node no longer leads the partition, or it is gone.
    #[error("the partition is not served here: {0}")]
    NotServed(String),
}

pub(crate) struct Executor {
    pub functions: Arc<Functions>,
    pub spec: FunctionSpec,
    pub function: Function,
    pub topic: String,
    pub partition: i32,
    pub status: Arc<PartitionStatus>,
    pub stop: CancellationToken,
}

/// A batch read from the log: its buffer for the function, and the position after it.
struct ReadBatch {
    buffer: Vec<u8>,
    records: usize,
    next: u64,
}

impl Executor {
    pub(crate) async fn run(self) -> Result<(), ExecutorEnd> {
        // The group's committed offsets are part of the position: wait for them.
        self.functions
            .groups()
            .wait_loaded(Duration::from_secs(10))
            .await;
        let (kv, mut position) = loop {
            match self.restore().await {
                Ok(restored) => break restored,
                Err(error) => {
                    self.status.set_error(&error);
                    if self.sleep(Duration::from_secs(1)).await {
                        return Ok(());
                    }
                }
            }
        };
        let mut instance = match self.start_instance(kv).await {
            Ok(instance) => instance,
            Err(error) => {
                self.status
                    .set_state("failed", Some(format!("cannot start: {error}")));
                self.stop.cancelled().await;
                return Ok(());
            }
        };
        self.status.set_state("running", None);
        let mut round_robin: u32 = 0;
        let mut commits = Commits::default();
        let ended = self
            .process_batches(&mut instance, &mut position, &mut round_robin, &mut commits)
            .await;
        // The position reached, for Kafka tools, before the executor goes.
        if let Some(next) = commits.pending.take() {
            self.commit(next).await;
        }
        ended
    }

    /// Reads, processes and writes batches until stopped. The writes of one batch overlap
    /// the reading and processing of the next; writes stay in batch order.
    async fn process_batches(
        &self,
        instance: &mut Instance,
        position: &mut u64,
        round_robin: &mut u32,
        commits: &mut Commits,
    ) -> Result<(), ExecutorEnd> {
        let mut pending: Option<Writes> = None;
        let ended = loop {
            if self.stop.is_cancelled() {
                break Ok(());
            }
            let log = match self.log() {
                Ok(log) => log,
                Err(end) => break Err(end),
            };
            if *position < log.log_start() {
                // Retention removed records the function had not read yet.
                *position = log.log_start();
            }
            if *position >= log.high_watermark() {
                // Caught up: store what is in flight and commit it now rather than at the
                // next interval.
                if let Some(writes) = pending.take()
                    && !self.write(writes, &log, commits).await
                {
                    break Ok(());
                }
                self.status.set_position(*position, log.high_watermark());
                if let Some(next) = commits.pending.take() {
                    self.commit(next).await;
                    commits.at = Instant::now();
                }
                let position = *position;
                tokio::select! {
                    _ = log.wait_for_data(position, IDLE_WAIT) => {}
                    _ = self.stop.cancelled() => {}
                }
                continue;
            }
            // The partition grows while the executor works (or retries): lag shows it.
            self.status.set_high_watermark(log.high_watermark());
            let previous = pending.take();
            let (written, step) = tokio::join!(
                async {
                    match previous {
                        Some(writes) => self.write(writes, &log, commits).await,
                        None => true,
                    }
                },
                self.step(&log, instance, *position, round_robin),
            );
            if !written {
                break Ok(());
            }
            match step {
                Step::Unreadable(error) => {
                    self.status.set_error(&error);
                    if self.sleep(Duration::from_secs(1)).await {
                        break Ok(());
                    }
                }
                Step::Skipped(next) => *position = next,
                Step::Ready(writes) => {
                    *position = writes.next;
                    pending = Some(writes);
                }
                Step::Park { state, reason } => {
                    // `stop`, or the instance (and its kv state) is gone: park rather than
                    // go on without it. A redeploy, pause or restart starts again from the
                    // stored state.
                    self.status.set_state(state, Some(reason));
                    self.stop.cancelled().await;
                    break Ok(());
                }
                Step::Cancelled => break Ok(()),
            }
        };
        // A batch processed is written before the executor goes, so a pause or redeploy
        // does not process it again.
        if let Some(writes) = pending.take()
            && let Ok(log) = self.log()
        {
            self.write(writes, &log, commits).await;
        }
        ended
    }

    /// Reads the batch at `position` and processes it: what to write, or why not.
    async fn step(
        &self,
        log: &PartitionLog,
        instance: &mut Instance,
        position: u64,
        round_robin: &mut u32,
    ) -> Step {
        let batch = match self.read_batch(log, position).await {
            Ok(batch) => batch,
            Err(error) => return Step::Unreadable(error),
        };
        if batch.records == 0 {
            return Step::Skipped(batch.next);
        }
        let buffer = Arc::new(batch.buffer);
        let records = batch.records as u64;
        match self.process(instance, &buffer, round_robin).await {
            Processed::Done(outputs, kv) => Step::Ready(Writes {
                outputs,
                kv,
                next: batch.next,
                processed: records,
                failed: 0,
                error: None,
            }),
            Processed::Failed(error) => {
                if self.spec.on_failure == "stop" {
                    return Step::Park {
                        state: "stopped",
                        reason: error.to_string(),
                    };
                }
                Step::Ready(Writes {
                    outputs: self.dead_letters(&buffer, &error),
                    kv: Vec::new(),
                    next: batch.next,
                    processed: 0,
                    failed: records,
                    error: Some(error.to_string()),
                })
            }
            Processed::Cancelled => Step::Cancelled,
            Processed::Broken(reason) => Step::Park {
                state: "failed",
                reason,
            },
        }
    }

    /// Writes a processed batch: its outputs, then its kv changes and position; then
    /// commits the position as the group's offset, at most a [`COMMIT_INTERVAL`] behind
    /// (the state topic holds it already). False: stopped before it was written.
    async fn write(&self, writes: Writes, log: &PartitionLog, commits: &mut Commits) -> bool {
        if !self
            .produce_until_done(&writes.outputs.finish(), "outputs")
            .await
        {
            return false;
        }
        crate::crash::point("function-outputs-written");
        if !self.write_state(writes.kv, writes.next).await {
            return false;
        }
        if writes.processed > 0 {
            self.status.add_processed(writes.processed);
        }
        if writes.failed > 0 {
            self.status.add_failed(writes.failed);
        }
        self.status.set_state("running", writes.error);
        self.status.set_position(writes.next, log.high_watermark());
        commits.pending = Some(writes.next);
        if commits.at.elapsed() >= COMMIT_INTERVAL {
            if let Some(next) = commits.pending.take() {
                self.commit(next).await;
            }
            commits.at = Instant::now();
        }
        true
    }

    async fn sleep(&self, duration: Duration) -> bool {
        sleep(&self.stop, duration).await
    }

    fn log(&self) -> Result<Arc<PartitionLog>, ExecutorEnd> {
        self.functions
            .broker()
            .leader_log(&self.topic, self.partition)
            .map_err(|e| ExecutorEnd::NotServed(e.to_string()))
    }

    /// The kv state of this partition and the position to start from.
    async fn restore(&self) -> Result<(BTreeMap<Vec<u8>, Vec<u8>>, u64), String> {
        let kv_prefix = state_prefix(STATE_KV, &self.topic, self.partition);
        let position_key = state_prefix(STATE_POSITION, &self.topic, self.partition);
        let mut kv = BTreeMap::new();
        let mut stored_position: Option<u64> = None;
        scan_state(&self.functions, &self.spec.name, |key, value| {
            if key == position_key.as_slice() {
                if let Some(value) = value.and_then(|v| <[u8; 8]>::try_from(v).ok()) {
                    stored_position = Some(u64::from_le_bytes(value));
                }
            } else if let Some(user_key) = key.strip_prefix(kv_prefix.as_slice()) {
                match value {
                    Some(value) => kv.insert(user_key.to_vec(), value.to_vec()),
                    None => kv.remove(user_key),
                };
            }
        })
        .await?;
        let group = group_of(&self.spec.name);
        // The state topic holds the position; the group's offset counts too when this
        // node coordinates the group (it is only ever behind the state topic's).
        let committed = match self.functions.groups().committed(&group) {
            Ok(offsets) => offsets
                .get(&(self.topic.clone(), self.partition))
                .map(|c| c.offset.max(0) as u64),
            Err(GroupServiceError::NotCoordinator) => None,
            Err(error) => return Err(format!("the committed offsets of {group}: {error}")),
        };
        let position = match (stored_position, committed) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => a.or(b).unwrap_or(0),
        };
        Ok((kv, position))
    }

    async fn start_instance(
        &self,
        kv: BTreeMap<Vec<u8>, Vec<u8>>,
    ) -> Result<Instance, FunctionError> {
        start_instance(&self.function, &self.spec, kv).await
    }

    /// Up to `batch_records` committed records from `position`, in the batch encoding.
    async fn read_batch(&self, log: &PartitionLog, position: u64) -> Result<ReadBatch, String> {
        let read = log
            .read(position, READ_BYTES)
            .await
            .map_err(|e| format!("read {}-{}: {e}", self.topic, self.partition))?;
        let limit = self.spec.limits.batch_records as usize;
        let mut writer = BatchWriter::new(&self.topic, self.partition, read.records.len() + 64)
            .map_err(|e| e.to_string())?;
        let mut encode_error = None;
        let next = visit_records(&read.records, position, MAX_SECTION, |record| {
            if writer.len() >= limit || record.offset >= read.high_watermark {
                return false;
            }
            let pushed = writer.push(
                record.offset as i64,
                record.timestamp,
                record.key,
                record.value,
                record.headers.iter().copied(),
            );
            if let Err(error) = pushed {
                encode_error = Some(error.to_string());
                return false;
            }
            true
        })
        .map_err(|e| {
            format!(
                "a batch of {}-{} does not decode: {e}",
                self.topic, self.partition
            )
        })?;
        if let Some(error) = encode_error {
            return Err(error);
        }
        let records = writer.len();
        Ok(ReadBatch {
            buffer: writer.finish(),
            records,
            next: next.min(read.high_watermark),
        })
    }

    /// Calls the function on `buffer`, retrying failures as the spec says.
    async fn process(
        &self,
        instance: &mut Instance,
        buffer: &Arc<Vec<u8>>,
        round_robin: &mut u32,
    ) -> Processed {
        let mut attempt: u32 = 0;
        loop {
            let result = match self.call(instance, buffer).await {
                Ok(result) => result,
                Err(broken) => return Processed::Broken(broken),
            };
            let result = result.and_then(|(outputs, produced)| {
                let mut routed = Outbox::new(self.spec.outputs.clone());
                for buffer in std::iter::once(&outputs).chain(produced.iter()) {
                    if buffer.is_empty() {
                        continue;
                    }
                    self.route(buffer, round_robin, &mut routed)?;
                }
                Ok(routed)
            });
            let refused = instance.state().and_then(|state| {
                self.functions.collect(
                    &self.spec.name,
                    &self.topic,
                    self.partition,
                    state,
                    &self.status,
                )
            });
            match result {
                Ok(routed) => {
                    let changes = instance
                        .state()
                        .map(|state| state.take_kv_changes())
                        .unwrap_or_default();
                    return Processed::Done(routed, changes);
                }
                Err(error) => {
                    if let Some(state) = instance.state() {
                        state.roll_back();
                    }
                    self.status.add_error(&with_refusal(&error, refused));
                    let retry =
                        self.spec.on_failure == "retry" || attempt < self.spec.limits.retries;
                    if !retry {
                        return Processed::Failed(error);
                    }
                    self.status.set_state("retrying", Some(error.to_string()));
                    let backoff = FIRST_BACKOFF
                        .saturating_mul(1u32 << attempt.min(10))
                        .min(MAX_BACKOFF);
                    attempt = attempt.saturating_add(1);
                    if self.sleep(backoff).await {
                        return Processed::Cancelled;
                    }
                }
            }
        }
    }

    /// One call on a blocking thread: the outputs, and what a consumer produced. The
    /// outer error: the thread itself failed and the instance is lost.
    async fn call(
        &self,
        instance: &mut Instance,
        buffer: &Arc<Vec<u8>>,
    ) -> Result<Result<(Vec<u8>, Vec<Vec<u8>>), FunctionError>, String> {
        let buffer = buffer.clone();
        on_blocking_thread(instance, move |instance| {
            instance.process(&buffer).map(|outputs| {
                let produced = instance
                    .state()
                    .map(|state| std::mem::take(&mut state.produced))
                    .unwrap_or_default();
                (outputs, produced)
            })
        })
        .await
    }

    fn route(
        &self,
        buffer: &[u8],
        round_robin: &mut u32,
        routed: &mut Outbox,
    ) -> Result<(), FunctionError> {
        route(&self.functions, &self.spec, buffer, round_robin, routed)
    }

    async fn produce_until_done(&self, batches: &[(String, i32, Bytes)], what: &str) -> bool {
        self.writer().produce_until_done(batches, what).await
    }

    fn writer(&self) -> Writer<'_> {
        Writer {
            functions: &self.functions,
            function: &self.spec.name,
            status: &self.status,
            stop: &self.stop,
        }
    }

    /// A failed batch's records for the dead-letter topic, with why and where from.
    fn dead_letters(&self, buffer: &[u8], error: &FunctionError) -> Outbox {
        let mut outbox = Outbox::new(vec![dlq_topic_of(&self.spec.name)]);
        let batch = match runnel_abi::Batch::parse(buffer) {
            Ok(batch) => batch,
            Err(parse) => {
                // The host built this buffer: it fails to parse only if the encoding itself
                // is broken, and then nothing can be dead-lettered.
                tracing::error!(function = %self.spec.name, %parse, %error, "a failed batch cannot be dead-lettered");
                return outbox;
            }
        };
        // One line: a trap's message carries a multi-line backtrace.
        let message = error
            .to_string()
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let version = self.spec.version.to_string();
        let partition = self.partition.to_string();
        for record in batch.records() {
            let offset = record.offset.to_string();
            let mut headers: Vec<(&str, Option<&[u8]>)> = record.headers.iter().collect();
            for (key, value) in [
                (DLQ_ERROR_HEADER, message.as_str()),
                (DLQ_TOPIC_HEADER, self.topic.as_str()),
                (DLQ_PARTITION_HEADER, partition.as_str()),
                (DLQ_OFFSET_HEADER, offset.as_str()),
                (DLQ_VERSION_HEADER, version.as_str()),
            ] {
                headers.push((key, Some(value.as_bytes())));
            }
            outbox.push(0, 0, record.timestamp, record.key, record.value, &headers);
        }
        outbox
    }

    /// Writes the batch's kv changes and the new position as one batch of the state
    /// topic, so they are stored together or not at all.
    async fn write_state(&self, changes: Vec<(Vec<u8>, Option<Vec<u8>>)>, next: u64) -> bool {
        let prefix = state_prefix(STATE_KV, &self.topic, self.partition);
        let position = (
            state_prefix(STATE_POSITION, &self.topic, self.partition),
            next.to_le_bytes().to_vec(),
        );
        self.writer().write_state(&prefix, changes, position).await
    }

    /// Commits `next` as the group's offset; a failure is only logged (the state topic
    /// holds the position too, and the next batch commits again).
    async fn commit(&self, next: u64) {
        let group = group_of(&self.spec.name);
        let commit = CommittedOffset {
            offset: next as i64,
            leader_epoch: -1,
            metadata: format!("{} v{}", self.spec.name, self.spec.version),
            commit_ms: now_ms(),
        };
        let committed = match self
            .functions
            .groups()
            .commit(
                &group,
                "",
                None,
                -1,
                vec![(self.topic.clone(), self.partition, commit.clone())],
            )
            .await
        {
            Err(GroupServiceError::NotCoordinator) => self.commit_elsewhere(&group, commit).await,
            other => other.map_err(|e| e.to_string()),
        };
        if let Err(error) = committed {
            tracing::warn!(%group, %error, "committing a function's progress");
        }
    }

    /// Sends the commit to the group's coordinator on another node.
    async fn commit_elsewhere(&self, group: &str, commit: CommittedOffset) -> Result<(), String> {
        let coordinator = self
            .functions
            .groups()
            .coordinator_of(group)
            .ok_or_else(|| format!("{group} has no coordinator now"))?;
        self.functions
            .broker()
            .commit_offset_at(
                coordinator.id,
                OffsetCommit {
                    group: group.to_string(),
                    topic: self.topic.clone(),
                    partition: self.partition,
                    offset: commit.offset,
                    metadata: commit.metadata,
                    commit_ms: commit.commit_ms,
                },
            )
            .await
            .map_err(|e| e.to_string())
    }
}

/// Resolves each output's topic and partition, refusing an undeclared topic or a
/// partition it does not have, and encodes it into `routed`.
pub(crate) fn route(
    functions: &Functions,
    spec: &FunctionSpec,
    buffer: &[u8],
    round_robin: &mut u32,
    routed: &mut Outbox,
) -> Result<(), FunctionError> {
    let outputs = Outputs::parse(buffer).map_err(FunctionError::BadOutput)?;
    let metadata = functions.broker().metadata();
    let partitions_of = |index: usize| {
        let topic = &spec.outputs[index];
        match metadata
            .topics
            .get(topic)
            .map_or(0, |t| t.partitions.len() as u32)
        {
            0 => Err(FunctionError::Failed(format!(
                "the output topic `{topic}` does not exist"
            ))),
            partitions => Ok(partitions),
        }
    };
    if spec.outputs.is_empty() {
        return match outputs.iter().next() {
            None => Ok(()),
            Some(_) => Err(FunctionError::Failed(
                "the function has outputs but declares no output topic".to_string(),
            )),
        };
    }
    let now = now_ms();
    // Records without a key or partition of one batch go to one partition, the next
    // batch's to the next (as Kafka's sticky partitioner spreads them).
    *round_robin = round_robin.wrapping_add(1);
    // The topic of the last output, resolved: outputs mostly go to one topic.
    let mut last: Option<(usize, u32)> = None;
    for output in outputs.iter() {
        let index = match (output.topic, last) {
                (None, _) => 0,
                (Some(topic), Some((index, _))) if topic == spec.outputs[index] => index,
                (Some(topic), _) => spec
                    .outputs
                    .iter()
                    .position(|t| t == topic)
                    .ok_or_else(|| {
                        FunctionError::Failed(format!(
                            "an output names topic `{topic}`, which is not one of the function's outputs ({})",
                            spec.outputs.join(", ")
                        ))
                    })?,
            };
        let partitions = match last {
            Some((resolved, partitions)) if resolved == index => partitions,
            _ => {
                let partitions = partitions_of(index)?;
                last = Some((index, partitions));
                partitions
            }
        };
        let partition = match (output.partition, output.key) {
            (Some(partition), _) if (partition as u32) < partitions => partition,
            (Some(partition), _) => {
                return Err(FunctionError::Failed(format!(
                    "an output names partition {partition} of `{}`, which has {partitions}",
                    spec.outputs[index]
                )));
            }
            (None, Some(key)) => runnel_broker::partitioner::partition_for_key(key, partitions),
            (None, None) => (*round_robin % partitions) as i32,
        };
        routed.push(
            index,
            partition,
            output.timestamp.unwrap_or(now),
            output.key,
            output.value,
            &output.headers,
        );
    }
    Ok(())
}

/// A failed call's error, with the outgoing request refused during it (the likely cause,
/// whatever the component made of it).
pub(crate) fn with_refusal(error: &FunctionError, refused: Option<String>) -> String {
    match refused {
        Some(refusal) => format!("{refusal}; {error}"),
        None => error.to_string(),
    }
}

/// An instance of `spec`'s function with its config, restored kv state and HTTP access,
/// started on a blocking thread (its start code runs for up to a call's time).
pub(crate) async fn start_instance(
    function: &Function,
    spec: &FunctionSpec,
    kv: BTreeMap<Vec<u8>, Vec<u8>>,
) -> Result<Instance, FunctionError> {
    let function = function.clone();
    let config = spec.config.clone();
    let http = crate::source::http_access(spec);
    tokio::task::spawn_blocking(move || function.instantiate_with(config, kv, http))
        .await
        .map_err(|e| FunctionError::Trap(format!("the instance's thread failed: {e}")))?
}

/// Runs `call` on `instance` on a blocking thread (a call may take its whole timeout),
/// the instance moving there and back while a placeholder holds its place. The error:
/// the thread itself failed and the instance is lost.
pub(crate) async fn on_blocking_thread<T: Send + 'static>(
    instance: &mut Instance,
    call: impl FnOnce(&mut Instance) -> T + Send + 'static,
) -> Result<T, String> {
    let taken = std::mem::replace(instance, instance.placeholder());
    let joined = tokio::task::spawn_blocking(move || {
        let mut instance = taken;
        let result = call(&mut instance);
        (instance, result)
    })
    .await;
    match joined {
        Ok((back, result)) => {
            *instance = back;
            Ok(result)
        }
        Err(error) => Err(format!("the call's thread failed: {error}")),
    }
}

/// Sleeps `duration`, or less if `stop` is cancelled; whether it was.
pub(crate) async fn sleep(stop: &CancellationToken, duration: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => stop.is_cancelled(),
        _ = stop.cancelled() => true,
    }
}

/// Writes an executor's batches: locally where this node leads the partition, else
/// forwarded to the leader.
pub(crate) struct Writer<'a> {
    pub functions: &'a Functions,
    pub function: &'a str,
    pub status: &'a PartitionStatus,
    pub stop: &'a CancellationToken,
}

impl Writer<'_> {
    /// Writes `batches` (see [`Writer::produce_all`]), retrying with backoff until they
    /// are written (true) or the executor is stopped (false). Giving up would lose them;
    /// only a redeploy, pause or delete ends the wait, and the batch is then read again.
    pub(crate) async fn produce_until_done(
        &self,
        batches: &[(String, i32, Bytes)],
        what: &str,
    ) -> bool {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.produce_all(batches).await {
                Ok(()) => return true,
                Err(error) => {
                    tracing::warn!(function = %self.function, %error, what, "writing a function's batch; retrying");
                    self.status.set_error(&format!("writing {what}: {error}"));
                    if sleep(self.stop, backoff).await {
                        return false;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Submits every batch for partitions led here, sends the others to their leaders
    /// (in order, so a partition's batches stay in order), then waits for all of them to
    /// be written durably.
    async fn produce_all(&self, batches: &[(String, i32, Bytes)]) -> Result<(), String> {
        let broker = self.functions.broker();
        let mut pending = Vec::with_capacity(batches.len());
        let mut elsewhere = Vec::new();
        // Where each partition's first batch went (`None`: here), its others go too: were
        // leadership to arrive here mid-call, a later batch must not overtake one sent to
        // the leader.
        let mut leaders: BTreeMap<(&str, i32), Option<NodeId>> = BTreeMap::new();
        for (topic, partition, batch) in batches {
            let key = (topic.as_str(), *partition);
            if let Some(Some(leader)) = leaders.get(&key) {
                elsewhere.push((*leader, topic, *partition, batch));
                continue;
            }
            match broker
                .submit_produce(topic, *partition, batch.clone(), true)
                .await
            {
                Ok(submitted) => {
                    leaders.insert(key, None);
                    pending.push(submitted);
                }
                Err(BrokerError::NotLeader {
                    leader: Some(leader),
                    ..
                }) if !leaders.contains_key(&key) => {
                    leaders.insert(key, Some(leader));
                    elsewhere.push((leader, topic, *partition, batch));
                }
                Err(error) => return Err(format!("{topic}-{partition}: {error}")),
            }
        }
        for (leader, topic, partition, batch) in elsewhere {
            let refused = BrokerError::NotLeader {
                topic: topic.clone(),
                partition,
                leader: Some(leader),
            };
            broker
                .forward_produce(leader, refused, topic, partition, batch.clone(), true)
                .await
                .map_err(|e| format!("{topic}-{partition}: {e}"))?;
        }
        for submitted in pending {
            submitted.wait().await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Writes kv changes (their keys after `prefix`) and one more record (`last`, the
    /// position) as one batch of the state topic, so they are stored together or not at
    /// all.
    pub(crate) async fn write_state(
        &self,
        prefix: &[u8],
        changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        last: (Vec<u8>, Vec<u8>),
    ) -> bool {
        let now = now_ms();
        let mut records: Vec<NewRecord> = changes
            .into_iter()
            .map(|(key, value)| {
                let mut full = prefix.to_vec();
                full.extend_from_slice(&key);
                NewRecord {
                    timestamp: now,
                    key: Some(full),
                    value,
                    headers: Vec::new(),
                }
            })
            .collect();
        records.push(NewRecord {
            timestamp: now,
            key: Some(last.0),
            value: Some(last.1),
            headers: Vec::new(),
        });
        // One batch, not chunked: the changes and the position are stored together.
        let batch = match BatchBuilder::default().build(&records) {
            Ok(batch) => batch.freeze(),
            Err(error) => {
                tracing::error!(%error, "cannot encode a function's state");
                return false;
            }
        };
        let batches = [(state_topic_of(self.function), 0, batch)];
        self.produce_until_done(&batches, "state").await
    }
}

/// Reads the function's state topic from its start, handing every keyed record's key and
/// value (`None`: a tombstone) to `visit` in offset order.
pub(crate) async fn scan_state(
    functions: &Functions,
    function: &str,
    mut visit: impl FnMut(&[u8], Option<&[u8]>),
) -> Result<(), String> {
    let state_topic = state_topic_of(function);
    let broker = functions.broker();
    if let Ok(log) = broker.leader_log(&state_topic, 0) {
        // A new leader may hold state its high watermark does not show yet (written under
        // the previous leader, not yet confirmed by the replicas): wait until it does, or
        // the state read would miss it.
        let end = log.log_end();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while log.high_watermark() < end && tokio::time::Instant::now() < deadline {
            log.wait_for_data(log.high_watermark(), Duration::from_millis(100))
                .await;
        }
        if log.high_watermark() < end {
            return Err(format!(
                "the state topic {state_topic} is replicated up to {} of {end}; waiting for its replicas",
                log.high_watermark()
            ));
        }
    }
    let mut offset = 0;
    loop {
        // Here or on the node that leads the state topic.
        let read = broker
            .read_anywhere(&state_topic, 0, offset, 4 << 20)
            .await
            .map_err(|e| format!("read the state topic {state_topic}: {e}"))?;
        offset = offset.max(read.log_start);
        if read.records.is_empty() || offset >= read.high_watermark {
            break;
        }
        let next = visit_records(&read.records, offset, MAX_SECTION, |record| {
            if let Some(key) = record.key {
                visit(key, record.value);
            }
            true
        })
        .map_err(|e| format!("a record of {state_topic} does not decode: {e}"))?;
        if next <= offset {
            // A cut-short or unparsable batch: reading it again would give the same.
            return Err(format!(
                "the state topic {state_topic} does not decode at offset {offset}"
            ));
        }
        offset = next;
    }
    Ok(())
}

/// When the group's offset was last committed, and the position not committed yet.
struct Commits {
    at: Instant,
    pending: Option<u64>,
}

impl Default for Commits {
    fn default() -> Self {
        Commits {
            at: Instant::now(),
            pending: None,
        }
    }
}

/// A processed batch, to write: its outputs (or dead letters), then its kv changes and
/// the position after it.
struct Writes {
    outputs: Outbox,
    kv: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    next: u64,
    processed: u64,
    failed: u64,
    /// Why the batch was dead-lettered.
    error: Option<String>,
}

/// What reading and processing one batch came to.
enum Step {
    Ready(Writes),
    /// Nothing to process before this position (a gap, or control records).
    Skipped(u64),
    Unreadable(String),
    Park {
        state: &'static str,
        reason: String,
    },
    Cancelled,
}

enum Processed {
    Done(Outbox, Vec<(Vec<u8>, Option<Vec<u8>>)>),
    Failed(FunctionError),
    Cancelled,
    Broken(String),
}

/// Output records encoded as produce batches, by topic (an index into `topics`) and
/// partition, each partition's in order; a batch holds at most [`OUTPUT_BATCH_RECORDS`]
/// records and about [`OUTPUT_BATCH_BYTES`]. An idempotent outbox (a source's) stamps its
/// batches with a producer id and consecutive sequence numbers per partition, and makes
/// one batch per partition.
pub(crate) struct Outbox {
    topics: Vec<String>,
    partitions: BTreeMap<(usize, i32), PartitionOutbox>,
    producer: Option<Producer>,
}

/// An idempotent producer: its id and epoch, and the next sequence number of each
/// partition it wrote to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Producer {
    pub id: i64,
    pub epoch: i16,
    pub sequences: BTreeMap<(String, i32), i32>,
}

struct PartitionOutbox {
    sealed: Vec<Bytes>,
    open: BatchEncoder,
}

impl Outbox {
    pub(crate) fn new(topics: Vec<String>) -> Outbox {
        Outbox {
            topics,
            partitions: BTreeMap::new(),
            producer: None,
        }
    }

    pub(crate) fn idempotent(topics: Vec<String>, producer: Producer) -> Outbox {
        Outbox {
            producer: Some(producer),
            ..Outbox::new(topics)
        }
    }

    /// Records pushed so far.
    pub(crate) fn len(&self) -> usize {
        self.partitions.values().map(|p| p.open.len()).sum()
    }

    fn push(
        &mut self,
        topic: usize,
        partition: i32,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) {
        let idempotent = self.producer.is_some();
        let outbox = self
            .partitions
            .entry((topic, partition))
            .or_insert_with(|| PartitionOutbox {
                sealed: Vec::new(),
                open: BatchEncoder::new(BatchBuilder::default()),
            });
        let size = key.map_or(0, <[u8]>::len)
            + value.map_or(0, <[u8]>::len)
            + headers
                .iter()
                .map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len))
                .sum::<usize>();
        if !idempotent
            && !outbox.open.is_empty()
            && (outbox.open.len() >= OUTPUT_BATCH_RECORDS
                || outbox.open.section_len() + size > OUTPUT_BATCH_BYTES)
        {
            outbox.seal();
        }
        outbox
            .open
            .push(timestamp, key, value, headers.iter().copied());
    }

    /// The produce batches, each partition's in order.
    pub(crate) fn finish(self) -> Vec<(String, i32, Bytes)> {
        self.finish_idempotent().0
    }

    /// The produce batches, and the producer with its sequences after them.
    pub(crate) fn finish_idempotent(mut self) -> (Vec<(String, i32, Bytes)>, Option<Producer>) {
        let mut batches = Vec::new();
        for ((topic, partition), mut outbox) in std::mem::take(&mut self.partitions) {
            let name = &self.topics[topic];
            if let Some(producer) = &mut self.producer {
                let next = producer
                    .sequences
                    .entry((name.clone(), partition))
                    .or_insert(0);
                let builder = outbox.open.builder_mut();
                builder.producer_id = producer.id;
                builder.producer_epoch = producer.epoch;
                builder.base_sequence = *next;
                // Kafka's sequences wrap after i32::MAX to 0.
                *next = (i64::from(*next) + outbox.open.len() as i64)
                    .rem_euclid(i64::from(i32::MAX) + 1) as i32;
            }
            outbox.seal();
            for batch in outbox.sealed {
                batches.push((name.clone(), partition, batch));
            }
        }
        (batches, self.producer)
    }
}

impl PartitionOutbox {
    fn seal(&mut self) {
        if self.open.is_empty() {
            return;
        }
        match self.open.finish() {
            Ok(batch) => self.sealed.push(batch.freeze()),
            // Only an empty batch fails to encode, and this one is not.
            Err(error) => tracing::error!(%error, "cannot encode a function's outputs"),
        }
        self.open.clear();
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
