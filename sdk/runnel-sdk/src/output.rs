//! Output records, owned and built by functions.

use runnel_abi::Record;

/// A record a function writes: to its first declared output topic unless it names
/// another, to the partition its key picks (as Kafka's default partitioner) unless it
/// names one, stamped with the write time unless it carries a timestamp.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub topic: Option<String>,
    pub partition: Option<i32>,
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Output {
    pub fn new() -> Output {
        Output::default()
    }

    /// An output with `record`'s key, headers and timestamp (its value is set apart).
    pub fn from_record(record: &Record<'_>) -> Output {
        Output {
            timestamp: Some(record.timestamp),
            key: record.key.map(<[u8]>::to_vec),
            headers: record
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(<[u8]>::to_vec)))
                .collect(),
            ..Output::default()
        }
    }

    pub fn value(mut self, value: impl Into<Vec<u8>>) -> Output {
        self.value = Some(value.into());
        self
    }

    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Output {
        self.key = Some(key.into());
        self
    }

    pub fn topic(mut self, topic: impl Into<String>) -> Output {
        self.topic = Some(topic.into());
        self
    }

    pub fn partition(mut self, partition: i32) -> Output {
        self.partition = Some(partition);
        self
    }

    pub fn timestamp(mut self, timestamp_ms: i64) -> Output {
        self.timestamp = Some(timestamp_ms);
        self
    }

    pub fn header(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Output {
        self.headers.push((key.into(), Some(value.into())));
        self
    }

    pub(crate) fn as_abi(&self) -> runnel_abi::Output<'_> {
        runnel_abi::Output {
            topic: self.topic.as_deref(),
            partition: self.partition,
            timestamp: self.timestamp,
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref()))
                .collect(),
        }
    }
}
