//! A function's log stream: what its instances log, kept in the one-partition topic
//! `__runnel-fn-<name>-logs`, so it survives restarts and any Kafka client can read it.
//!
//! Each line is one record: the value is the message, the timestamp is when the host
//! took it, and the headers `level`, `topic` and `partition` say where it came from. A
//! line's sequence number (what `runnel fn logs -f` follows) is its offset plus one.
//! The topic is trimmed by size (`functions.log_retention_bytes`).
//!
//! Executors hand their lines over without waiting ([`LogBuffer::push`]); one writer task
//! per node appends them in batches every [`FLUSH_INTERVAL`]. The log write is not on the
//! data path: when the topic cannot take lines they wait, at most [`PENDING_LINES`] per
//! function (the oldest are dropped, and counted, beyond that).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use runnel_log::batch::visit_records;
use runnel_log::{BatchBuilder, BatchEncoder};
use tokio::sync::Notify;

use crate::LogLine;
use crate::executor::now_ms;

/// Lines of one function waiting for the writer, at most.
pub const PENDING_LINES: usize = 10_000;
/// How long the writer gathers lines before appending them.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes of the log topic read for one answer.
pub(crate) const READ_BYTES: usize = 1 << 20;
const LEVEL_HEADER: &str = "level";
const TOPIC_HEADER: &str = "topic";
const PARTITION_HEADER: &str = "partition";

/// The topic holding `function`'s log lines.
pub fn logs_topic_of(function: &str) -> String {
    format!("__runnel-fn-{function}-logs")
}

/// One line of a function's log stream.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// The line's offset in the log topic plus one: counts up from 1 per function.
    pub sequence: u64,
    pub timestamp_ms: i64,
    /// The input partition (or a source's state partition) whose executor logged it.
    pub topic: String,
    pub partition: i32,
    pub level: &'static str,
    pub message: String,
}

/// Lines taken from instances and not yet appended, per function.
#[derive(Default)]
pub(crate) struct LogBuffer {
    pending: Mutex<HashMap<String, VecDeque<LogEntry>>>,
    ready: Notify,
    dropped: AtomicU64,
}

impl LogBuffer {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<LogEntry>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `lines` for `function`'s stream.
    pub(crate) fn push(
        &self,
        function: &str,
        topic: &str,
        partition: i32,
        lines: &mut VecDeque<LogLine>,
    ) {
        if lines.is_empty() {
            return;
        }
        let now = now_ms();
        let mut pending = self.lock();
        let queue = pending.entry(function.to_string()).or_default();
        for line in lines.drain(..) {
            queue.push_back(LogEntry {
                sequence: 0,
                timestamp_ms: now,
                topic: topic.to_string(),
                partition,
                level: line.level,
                message: line.message,
            });
        }
        self.trim(queue);
        drop(pending);
        self.ready.notify_one();
    }

    fn trim(&self, queue: &mut VecDeque<LogEntry>) {
        let excess = queue.len().saturating_sub(PENDING_LINES);
        if excess > 0 {
            queue.drain(..excess);
            self.dropped.fetch_add(excess as u64, Ordering::Relaxed);
        }
    }

    /// Waits until lines are pushed (or [`LogBuffer::wake`] is called).
    pub(crate) async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Wakes the writer, to try lines put back again.
    pub(crate) fn wake(&self) {
        self.ready.notify_one();
    }

    /// Every function's pending lines.
    pub(crate) fn take(&self) -> HashMap<String, VecDeque<LogEntry>> {
        std::mem::take(&mut *self.lock())
    }

    /// Puts back lines that could not be appended, before any pushed since.
    pub(crate) fn put_back(&self, function: String, mut lines: VecDeque<LogEntry>) {
        let mut pending = self.lock();
        let queue = pending.entry(function).or_default();
        lines.append(queue);
        *queue = lines;
        self.trim(queue);
    }

    /// Forgets a deleted function's lines.
    pub(crate) fn forget(&self, function: &str) {
        self.lock().remove(function);
    }

    /// Lines dropped because the topic could not take them in time.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// One batch of the log topic holding `lines`.
pub(crate) fn encode(lines: &VecDeque<LogEntry>) -> Result<bytes::Bytes, String> {
    let mut encoder = BatchEncoder::new(BatchBuilder::default());
    for line in lines {
        let partition = line.partition.to_string();
        let headers = [
            (LEVEL_HEADER, Some(line.level.as_bytes())),
            (TOPIC_HEADER, Some(line.topic.as_bytes())),
            (PARTITION_HEADER, Some(partition.as_bytes())),
        ];
        encoder.push(
            line.timestamp_ms,
            None,
            Some(line.message.as_bytes()),
            headers.iter().copied(),
        );
    }
    encoder
        .finish()
        .map(|batch| batch.freeze())
        .map_err(|e| e.to_string())
}

/// The lines in `batches` (read from the log topic) at or after offset `from`.
pub(crate) fn decode(batches: &[u8], from: u64) -> Result<Vec<LogEntry>, String> {
    let mut lines = Vec::new();
    visit_records(batches, from, READ_BYTES * 4, |record| {
        let header = |name: &str| {
            record
                .headers
                .iter()
                .find(|(key, _)| *key == name)
                .and_then(|(_, value)| *value)
                .map(String::from_utf8_lossy)
        };
        let level = match header(LEVEL_HEADER).as_deref() {
            Some("debug") => "debug",
            Some("warn") => "warn",
            Some("error") => "error",
            _ => "info",
        };
        lines.push(LogEntry {
            sequence: record.offset + 1,
            timestamp_ms: record.timestamp,
            topic: header(TOPIC_HEADER)
                .map(|t| t.into_owned())
                .unwrap_or_default(),
            partition: header(PARTITION_HEADER)
                .and_then(|p| p.parse().ok())
                .unwrap_or(-1),
            level,
            message: String::from_utf8_lossy(record.value.unwrap_or_default()).into_owned(),
        });
        true
    })
    .map_err(|e| e.to_string())?;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(level: &'static str, message: &str) -> LogLine {
        LogLine {
            level,
            message: message.to_string(),
        }
    }

    #[test]
    fn lines_round_trip_through_a_batch_with_their_origin() {
        let buffer = LogBuffer::default();
        let mut lines = VecDeque::from([line("warn", "first"), line("error", "second ü")]);
        buffer.push("f", "orders", 3, &mut lines);
        assert!(lines.is_empty());
        let pending = buffer.take().remove("f").unwrap();
        let mut batch = encode(&pending).unwrap().to_vec();
        // As the log stores it: base offset 7.
        batch[..8].copy_from_slice(&7i64.to_be_bytes());
        let decoded = decode(&batch, 8).unwrap();
        assert_eq!(decoded.len(), 1);
        assert_eq!(decoded[0].sequence, 9);
        assert_eq!(decoded[0].level, "error");
        assert_eq!(decoded[0].message, "second ü");
        assert_eq!(decoded[0].topic, "orders");
        assert_eq!(decoded[0].partition, 3);
        assert_eq!(decoded[0].timestamp_ms, pending[1].timestamp_ms);
    }

    #[test]
    fn pending_lines_are_capped_oldest_first_and_put_back_in_order() {
        let buffer = LogBuffer::default();
        let mut lines: VecDeque<LogLine> = (0..PENDING_LINES + 5)
            .map(|i| line("info", &i.to_string()))
            .collect();
        buffer.push("f", "t", 0, &mut lines);
        assert_eq!(buffer.dropped(), 5);
        let taken = buffer.take().remove("f").unwrap();
        assert_eq!(taken.front().unwrap().message, "5");
        buffer.push("f", "t", 0, &mut VecDeque::from([line("info", "new")]));
        buffer.put_back("f".to_string(), taken);
        let again = buffer.take().remove("f").unwrap();
        assert_eq!(again.len(), PENDING_LINES);
        assert_eq!(again.back().unwrap().message, "new");
        assert_eq!(buffer.dropped(), 6);
    }
}
