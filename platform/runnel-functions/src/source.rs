//! The executor of a source connector: one per source, on the node leading partition 0 of
//! the source's state topic (so the controller places it, on a live broker, and moves it
//! with that partition's leadership when the broker is gone).
//!
//! # The loop
//! 1. Restore: the source's kv state and its last progress record are read from the state
//!    topic. If the progress record holds batches (see below), they are written again
//!    first: the output partitions drop the ones they already have.
//! 2. Call `poll(cursor, max-records)` on a blocking thread. An error, a trap or a timeout
//!    rolls back its kv changes and is retried with backoff (forever; policy `stop` parks
//!    the source after its retries instead); the cursor stays where it was.
//! 3. Route the records to their topics and partitions and encode them as one produce
//!    batch per partition, stamped with the source's idempotent producer id and the next
//!    sequence numbers of each partition.
//! 4. Write one batch to the state topic: the poll's kv changes and the progress record
//!    (the new cursor, the producer, the sequences after these batches, and the batches
//!    themselves). From here on the poll counts as done.
//! 5. Write the batches to their partitions, durably.
//! 6. Poll again at once if the poll returned `max-records` records, else after the
//!    source's poll interval.
//!
//! # Guarantees
//! Exactly once, for records the source hands out once per cursor: the cursor, the kv
//! state and the records are committed together in step 4, and a crash between steps 4
//! and 5 writes the same batches again on restart, which the partitions recognise by
//! producer id and sequence (they remember each producer's last five batches; a poll
//! makes at most one batch per partition). A crash before step 4 polls again from the
//! stored cursor.
//!
//! The exception: a partition forgets a producer that wrote nothing to it for
//! `producer.id.expiration.ms`, so batches re-written after the source was down longer
//! than that could be appended twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use runnel_controller::{DEFAULT_POLL_INTERVAL_MS, FunctionSpec};
use tokio_util::sync::CancellationToken;

use crate::executor::{
    ExecutorEnd, Outbox, Producer, STATE_KV, Writer, on_blocking_thread, route, scan_state, sleep,
    start_instance, state_prefix, state_topic_of, with_refusal,
};
use crate::service::{Functions, PartitionStatus};
use crate::{Function, FunctionError, HttpAccess, Instance, Polled};

/// The key of a source's progress record in its state topic.
const PROGRESS_KEY: &[u8] = b"source-progress";
const PROGRESS_VERSION: u8 = 1;
/// Backoff between failed polls: doubling from the first, up to the last.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Where a source is: what its progress record holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Progress {
    cursor: Option<Vec<u8>>,
    producer: Producer,
    /// Records written since the source was created.
    records: u64,
    /// The batches of the last poll, as written (to write again after a crash).
    batches: Vec<(String, i32, Bytes)>,
}

pub(crate) struct SourceExecutor {
    pub functions: Arc<Functions>,
    pub spec: FunctionSpec,
    pub function: Function,
    pub status: Arc<PartitionStatus>,
    pub stop: CancellationToken,
}

impl SourceExecutor {
    pub(crate) async fn run(self) -> Result<(), ExecutorEnd> {
        let (kv, progress) = loop {
            match self.restore().await {
                Ok(restored) => break restored,
                Err(error) => {
                    self.status.set_error(&error);
                    if sleep(&self.stop, Duration::from_secs(1)).await {
                        return Ok(());
                    }
                }
            }
        };
        let mut progress = match progress {
            Some(mut progress) => {
                // The last poll's batches may not all be written: write them again (the
                // partitions drop the ones they have).
                if !self
                    .writer()
                    .produce_until_done(&progress.batches, "records")
                    .await
                {
                    return Ok(());
                }
                // A new epoch fences any older instance that may still be writing; it
                // starts every partition over at sequence 0.
                progress.producer = match next_epoch(&progress.producer) {
                    Some(producer) => producer,
                    None => match self.new_producer().await {
                        Some(producer) => producer,
                        None => return Ok(()),
                    },
                };
                progress.batches.clear();
                if !self
                    .write_progress(Vec::new(), encode_progress(&progress))
                    .await
                {
                    return Ok(());
                }
                progress
            }
            None => match self.new_producer().await {
                Some(producer) => Progress {
                    producer,
                    ..Progress::default()
                },
                None => return Ok(()),
            },
        };
        self.show_progress(&progress);
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
        let max_records = self.spec.limits.batch_records as usize;
        let interval = Duration::from_millis(match self.spec.poll_interval_ms {
            0 => DEFAULT_POLL_INTERVAL_MS,
            ms => ms,
        });
        let mut round_robin: u32 = 0;
        while !self.stop.is_cancelled() {
            self.served()?;
            let accepted = match self.poll(&mut instance, &progress, &mut round_robin).await {
                Poll::Done(accepted) => accepted,
                Poll::Stopped => break,
                Poll::Park(reason) => {
                    self.status.set_state("stopped", Some(reason));
                    self.stop.cancelled().await;
                    break;
                }
            };
            let Accepted {
                next,
                encoded,
                kv_changes,
                count,
            } = accepted;
            if next.cursor != progress.cursor || count > 0 || !kv_changes.is_empty() {
                if !self.write_progress(kv_changes, encoded).await {
                    break;
                }
                progress = next;
                crate::crash::point("source-progress-stored");
                if !self
                    .writer()
                    .produce_until_done(&progress.batches, "records")
                    .await
                {
                    break;
                }
                self.status.add_processed(count as u64);
                self.show_progress(&progress);
            }
            self.status.set_state("running", None);
            if count < max_records {
                // Idle until the next poll: first store that the batches are written, so
                // a restart does not write them again.
                if !progress.batches.is_empty() {
                    progress.batches.clear();
                    if !self
                        .write_progress(Vec::new(), encode_progress(&progress))
                        .await
                    {
                        break;
                    }
                }
                if sleep(&self.stop, interval).await {
                    break;
                }
            }
        }
        Ok(())
    }

    fn writer(&self) -> Writer<'_> {
        Writer {
            functions: &self.functions,
            function: &self.spec.name,
            status: &self.status,
            stop: &self.stop,
        }
    }

    /// Whether this node still leads the state topic, where the source is placed.
    fn served(&self) -> Result<(), ExecutorEnd> {
        self.functions
            .broker()
            .leader_log(&state_topic_of(&self.spec.name), 0)
            .map(|_| ())
            .map_err(|e| ExecutorEnd::NotServed(e.to_string()))
    }

    fn show_progress(&self, progress: &Progress) {
        self.status.set_position(progress.records, progress.records);
        self.status
            .set_cursor(progress.cursor.as_deref().map(show_cursor));
    }

    /// A producer id for a source that has none yet, retried until given (`None`:
    /// stopped first).
    async fn new_producer(&self) -> Option<Producer> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.functions.broker().next_producer_id().await {
                Ok(id) => {
                    return Some(Producer {
                        id,
                        epoch: 0,
                        sequences: BTreeMap::new(),
                    });
                }
                Err(error) => {
                    self.status
                        .set_error(&format!("allocating a producer id: {error}"));
                    if sleep(&self.stop, backoff).await {
                        return None;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// The source's kv state and its last progress record.
    async fn restore(&self) -> Result<(BTreeMap<Vec<u8>, Vec<u8>>, Option<Progress>), String> {
        let kv_prefix = state_prefix(STATE_KV, "", 0);
        let mut kv = BTreeMap::new();
        let mut progress = None;
        let mut bad = None;
        scan_state(&self.functions, &self.spec.name, |key, value| {
            if key == PROGRESS_KEY {
                match value.map(decode_progress) {
                    Some(Ok(decoded)) => progress = Some(decoded),
                    Some(Err(error)) => bad = Some(error),
                    None => progress = None,
                }
            } else if let Some(user_key) = key.strip_prefix(kv_prefix.as_slice()) {
                match value {
                    Some(value) => kv.insert(user_key.to_vec(), value.to_vec()),
                    None => kv.remove(user_key),
                };
            }
        })
        .await?;
        if let Some(error) = bad {
            return Err(format!(
                "the source's progress record does not decode: {error}"
            ));
        }
        Ok((kv, progress))
    }

    async fn start_instance(
        &self,
        kv: BTreeMap<Vec<u8>, Vec<u8>>,
    ) -> Result<Instance, FunctionError> {
        start_instance(&self.function, &self.spec, kv).await
    }

    /// Polls until a poll succeeds and is accepted (or the policy says stop). A poll that
    /// fails, or returns records that cannot be written, counts as a failed attempt.
    async fn poll(
        &self,
        instance: &mut Instance,
        progress: &Progress,
        round_robin: &mut u32,
    ) -> Poll {
        let mut attempt: u32 = 0;
        loop {
            let result = match self.call(instance, progress.cursor.clone()).await {
                Ok(result) => result,
                Err(broken) => return Poll::Park(broken),
            };
            let refused = instance.state().and_then(|state| {
                self.functions
                    .collect(&self.spec.name, "", 0, state, &self.status)
            });
            let accepted =
                result.and_then(|polled| self.accept(instance, progress, polled, round_robin));
            match accepted {
                Ok(accepted) => return Poll::Done(accepted),
                Err(error) => {
                    self.failed_poll(instance, &error, refused);
                    if self.spec.on_failure == "stop" && attempt >= self.spec.limits.retries {
                        return Poll::Park(error.to_string());
                    }
                    let backoff = FIRST_BACKOFF
                        .saturating_mul(1u32 << attempt.min(10))
                        .min(MAX_BACKOFF);
                    attempt = attempt.saturating_add(1);
                    if sleep(&self.stop, backoff).await {
                        return Poll::Stopped;
                    }
                }
            }
        }
    }

    /// Turns a poll into the progress to store: its records routed and encoded as one
    /// batch per partition, checked to be writable here and to fit, with the state, in
    /// one batch of the state topic. Only then are its kv changes taken from the instance
    /// (a refused poll's are rolled back).
    fn accept(
        &self,
        instance: &mut Instance,
        progress: &Progress,
        polled: Polled,
        round_robin: &mut u32,
    ) -> Result<Accepted, FunctionError> {
        let max_records = self.spec.limits.batch_records as usize;
        let mut outbox = Outbox::idempotent(self.spec.outputs.clone(), progress.producer.clone());
        route(
            &self.functions,
            &self.spec,
            &polled.records,
            round_robin,
            &mut outbox,
        )?;
        let count = outbox.len();
        if count > max_records {
            return Err(FunctionError::Failed(format!(
                "a poll returned {count} records, more than the {max_records} asked for"
            )));
        }
        let (batches, producer) = outbox.finish_idempotent();
        self.check_batches(&batches)?;
        let next = Progress {
            cursor: polled.cursor.or_else(|| progress.cursor.clone()),
            producer: producer.unwrap_or_default(),
            records: progress.records + count as u64,
            batches,
        };
        let state_max = self
            .functions
            .broker()
            .leader_log(&state_topic_of(&self.spec.name), 0)
            .map_err(|e| FunctionError::Failed(format!("the state topic: {e}")))?
            .config()
            .max_message_bytes;
        let kv_bytes = instance.state().map_or(0, |state| state.pending_kv_bytes());
        // The state batch: the progress record, the kv changes, and room for headers.
        let encoded = encode_progress(&next);
        let size = encoded.len() as u64 + kv_bytes as u64 + 4096;
        if size > state_max {
            return Err(FunctionError::Failed(format!(
                "a poll's records and state come to {size} bytes, more than the state topic's max.message.bytes of {state_max}; lower the connector's batch records"
            )));
        }
        let kv_changes = instance
            .state()
            .map(|state| state.take_kv_changes())
            .unwrap_or_default();
        Ok(Accepted {
            next,
            encoded,
            kv_changes,
            count,
        })
    }

    /// A poll that cannot be used: its kv changes are undone and the error shown.
    fn failed_poll(&self, instance: &mut Instance, error: &FunctionError, refused: Option<String>) {
        if let Some(state) = instance.state() {
            state.roll_back();
        }
        self.status.add_error(&with_refusal(error, refused));
        self.status.set_state("retrying", None);
    }

    /// One `poll` on a blocking thread. The outer error: the thread itself failed and
    /// the instance is lost.
    async fn call(
        &self,
        instance: &mut Instance,
        cursor: Option<Vec<u8>>,
    ) -> Result<Result<Polled, FunctionError>, String> {
        let max_records = self.spec.limits.batch_records;
        on_blocking_thread(instance, move |instance| {
            instance.poll(cursor.as_deref(), max_records)
        })
        .await
    }

    /// Refuses a poll with a batch larger than its partition takes: written to the
    /// progress record, such a batch would be retried forever. Partitions led by other
    /// nodes are written there ([`Broker::produce_anywhere`]).
    ///
    /// [`Broker::produce_anywhere`]: runnel_broker::Broker::produce_anywhere
    fn check_batches(&self, batches: &[(String, i32, Bytes)]) -> Result<(), FunctionError> {
        for (topic, partition, batch) in batches {
            let max = self
                .functions
                .broker()
                .topic_configs(topic)
                .map_err(|error| FunctionError::Failed(format!("{topic}: {error}")))?
                .effective
                .max_message_bytes;
            if batch.len() as u64 > max {
                return Err(FunctionError::Failed(format!(
                    "a poll returned {} bytes of records for {topic}-{partition}, more than its max.message.bytes of {max}; lower the connector's batch records",
                    batch.len()
                )));
            }
        }
        Ok(())
    }

    /// Writes kv changes and a progress record (encoded) as one batch of the state topic.
    async fn write_progress(
        &self,
        changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        progress: Vec<u8>,
    ) -> bool {
        self.writer()
            .write_state(
                &state_prefix(STATE_KV, "", 0),
                changes,
                (PROGRESS_KEY.to_vec(), progress),
            )
            .await
    }
}

/// A poll taken: the progress after it, its kv changes, and its record count.
struct Accepted {
    next: Progress,
    /// `next` as the progress record.
    encoded: Vec<u8>,
    kv_changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    count: usize,
}

enum Poll {
    Done(Accepted),
    Stopped,
    Park(String),
}

/// The producer's next epoch, which starts every partition at sequence 0 (`None`: the
/// epochs are used up, a new producer id is needed).
fn next_epoch(producer: &Producer) -> Option<Producer> {
    let epoch = producer.epoch.checked_add(1)?;
    Some(Producer {
        id: producer.id,
        epoch,
        sequences: BTreeMap::new(),
    })
}

/// The outgoing HTTP a connector's spec allows, each wait bounded by its call timeout.
pub(crate) fn http_access(spec: &FunctionSpec) -> HttpAccess {
    HttpAccess {
        allow_hosts: spec.allow_hosts.clone(),
        timeout: Duration::from_millis(spec.limits.call_timeout_ms),
        ..HttpAccess::none()
    }
}

/// A cursor for `describe`: its text if it is short UTF-8, else its bytes in hex.
fn show_cursor(cursor: &[u8]) -> String {
    match std::str::from_utf8(cursor) {
        Ok(text) if text.len() <= 200 && !text.chars().any(char::is_control) => text.to_string(),
        _ => {
            use std::fmt::Write as _;
            let mut hex = String::from("0x");
            for byte in cursor.iter().take(100) {
                let _ = write!(hex, "{byte:02x}");
            }
            if cursor.len() > 100 {
                hex.push('…');
            }
            hex
        }
    }
}

// The progress record, little-endian:
//   version:u8 (= 1)  producer_id:i64  epoch:i16  records:u64  cursor:opt_bytes
//   sequences:u32 count, then (topic:str  partition:i32  next:i32)
//   batches:u32 count, then (topic:str  partition:i32  batch:bytes)
// where bytes and str are a u32 length and the bytes, opt_bytes a u8 (0 none, 1 some)
// and then bytes.

fn encode_progress(progress: &Progress) -> Vec<u8> {
    fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    let mut out = Vec::with_capacity(
        64 + progress
            .batches
            .iter()
            .map(|(t, _, b)| t.len() + b.len() + 12)
            .sum::<usize>(),
    );
    out.push(PROGRESS_VERSION);
    out.extend_from_slice(&progress.producer.id.to_le_bytes());
    out.extend_from_slice(&progress.producer.epoch.to_le_bytes());
    out.extend_from_slice(&progress.records.to_le_bytes());
    match &progress.cursor {
        None => out.push(0),
        Some(cursor) => {
            out.push(1);
            put_bytes(&mut out, cursor);
        }
    }
    out.extend_from_slice(&(progress.producer.sequences.len() as u32).to_le_bytes());
    for ((topic, partition), next) in &progress.producer.sequences {
        put_bytes(&mut out, topic.as_bytes());
        out.extend_from_slice(&partition.to_le_bytes());
        out.extend_from_slice(&next.to_le_bytes());
    }
    out.extend_from_slice(&(progress.batches.len() as u32).to_le_bytes());
    for (topic, partition, batch) in &progress.batches {
        put_bytes(&mut out, topic.as_bytes());
        out.extend_from_slice(&partition.to_le_bytes());
        put_bytes(&mut out, batch);
    }
    out
}

fn decode_progress(bytes: &[u8]) -> Result<Progress, String> {
    struct Reader<'a>(&'a [u8]);
    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
            if self.0.len() < n {
                return Err("it ends early".to_string());
            }
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Ok(head)
        }
        fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
            let mut array = [0; N];
            array.copy_from_slice(self.take(N)?);
            Ok(array)
        }
        fn u32(&mut self) -> Result<u32, String> {
            self.array().map(u32::from_le_bytes)
        }
        fn i32(&mut self) -> Result<i32, String> {
            self.array().map(i32::from_le_bytes)
        }
        fn bytes(&mut self) -> Result<&'a [u8], String> {
            let len = self.u32()? as usize;
            self.take(len)
        }
        fn string(&mut self) -> Result<String, String> {
            String::from_utf8(self.bytes()?.to_vec())
                .map_err(|_| "a topic is not UTF-8".to_string())
        }
    }
    let mut reader = Reader(bytes);
    let [version] = reader.array()?;
    if version != PROGRESS_VERSION {
        return Err(format!("unknown version {version}"));
    }
    let id = i64::from_le_bytes(reader.array()?);
    let epoch = i16::from_le_bytes(reader.array()?);
    let records = u64::from_le_bytes(reader.array()?);
    let cursor = match reader.array::<1>()? {
        [0] => None,
        [1] => Some(reader.bytes()?.to_vec()),
        [other] => return Err(format!("cursor marker {other}")),
    };
    let mut sequences = BTreeMap::new();
    for _ in 0..reader.u32()? {
        let topic = reader.string()?;
        let partition = reader.i32()?;
        sequences.insert((topic, partition), reader.i32()?);
    }
    let mut batches = Vec::new();
    for _ in 0..reader.u32()? {
        let topic = reader.string()?;
        let partition = reader.i32()?;
        batches.push((topic, partition, Bytes::copy_from_slice(reader.bytes()?)));
    }
    if !reader.0.is_empty() {
        return Err("bytes are left over".to_string());
    }
    Ok(Progress {
        cursor,
        producer: Producer {
            id,
            epoch,
            sequences,
        },
        records,
        batches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_record_round_trips_and_refuses_damage() {
        let progress = Progress {
            cursor: Some(b"page=7".to_vec()),
            producer: Producer {
                id: 42,
                epoch: 0,
                sequences: BTreeMap::from([(("events".to_string(), 3), 1000)]),
            },
            records: 12_345,
            batches: vec![("events".to_string(), 3, Bytes::from_static(b"batch"))],
        };
        let encoded = encode_progress(&progress);
        assert_eq!(decode_progress(&encoded), Ok(progress.clone()));
        for cut in 0..encoded.len() {
            assert!(decode_progress(&encoded[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = encoded.clone();
        longer.push(0);
        assert!(decode_progress(&longer).is_err());
        let empty = Progress::default();
        assert_eq!(decode_progress(&encode_progress(&empty)), Ok(empty));
    }

    #[test]
    fn cursors_show_as_text_or_hex() {
        assert_eq!(show_cursor(b"id=17"), "id=17");
        assert_eq!(show_cursor(&[0, 1, 255]), "0x0001ff");
    }
}
