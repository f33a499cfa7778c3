//! Per-topic configuration, under Kafka's own names.
//!
//! A topic's effective configuration is the node's defaults (the `[log]` section of
//! `runnel.toml`) overlaid with the topic's overrides, which arrive as `key = value` strings
//! from Kafka admin requests, gRPC or the CLI. Every key is parsed and range-checked here,
//! without I/O, so the controller can reject a bad value before anything is written, and
//! every layer below works with typed values.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// An invalid topic configuration: which key, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicConfigError {
    #[error("unknown topic config `{key}`")]
    UnknownKey { key: String },
    #[error("invalid value `{value}` for topic config `{key}`: {reason}")]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
    },
}

/// What happens to old data: deleted by retention, compacted by key, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupPolicy {
    pub delete: bool,
    pub compact: bool,
}

impl CleanupPolicy {
    pub const DELETE: CleanupPolicy = CleanupPolicy {
        delete: true,
        compact: false,
    };
    pub const COMPACT: CleanupPolicy = CleanupPolicy {
        delete: false,
        compact: true,
    };

    fn parse(value: &str) -> Result<Self, String> {
        let mut policy = CleanupPolicy {
            delete: false,
            compact: false,
        };
        for part in value.split(',') {
            match part.trim() {
                "delete" => policy.delete = true,
                "compact" => policy.compact = true,
                "" => {}
                other => return Err(format!("`{other}` is not one of delete, compact")),
            }
        }
        Ok(policy)
    }
}

impl fmt::Display for CleanupPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.compact, self.delete) {
            (true, true) => f.write_str("compact,delete"),
            (true, false) => f.write_str("compact"),
            (false, true) => f.write_str("delete"),
            (false, false) => f.write_str(""),
        }
    }
}

/// Which timestamp a record carries in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimestampType {
    /// The producer's timestamp, kept as sent.
    CreateTime,
    /// Overwritten with the broker's clock when the batch is appended.
    LogAppendTime,
}

impl fmt::Display for TimestampType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimestampType::CreateTime => f.write_str("CreateTime"),
            TimestampType::LogAppendTime => f.write_str("LogAppendTime"),
        }
    }
}

/// The effective configuration of one topic. Field names follow the Kafka keys
/// (`segment.bytes` is `segment_bytes`); `None` in an `Option` field means "no limit", which
/// Kafka spells `-1` (or `Long.MAX_VALUE` for the flush settings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// `cleanup.policy`: `delete`, `compact` or `compact,delete`.
    pub cleanup_policy: CleanupPolicy,
    /// `segment.bytes`: roll the active segment once it holds this many bytes.
    pub segment_bytes: u64,
    /// `segment.ms`: roll the active segment once its first batch is this old.
    pub segment_ms: u64,
    /// `retention.ms`: delete sealed segments whose newest record is older than this.
    pub retention_ms: Option<u64>,
    /// `retention.bytes`: delete the oldest sealed segments while the partition is larger.
    pub retention_bytes: Option<u64>,
    /// `delete.retention.ms`: how long a tombstone survives compaction.
    pub delete_retention_ms: u64,
    /// `min.compaction.lag.ms`: records younger than this are never compacted away.
    pub min_compaction_lag_ms: u64,
    /// `flush.messages`: fsync after this many records; `None` leaves it to `flush.ms`.
    pub flush_messages: Option<u64>,
    /// `flush.ms`: fsync at least this often while there are unsynced appends.
    pub flush_ms: Option<u64>,
    /// `index.interval.bytes`: bytes of batches between two entries of the sparse indexes.
    pub index_interval_bytes: u64,
    /// `max.message.bytes`: the largest record batch the topic accepts.
    pub max_message_bytes: u64,
    /// `message.timestamp.type`: `CreateTime` or `LogAppendTime`.
    pub message_timestamp_type: TimestampType,
    /// `min.insync.replicas`: replicas that must have a write for `acks=all`.
    pub min_insync_replicas: u32,
    /// `unclean.leader.election.enable`.
    pub unclean_leader_election_enable: bool,
    /// `compression.type`: `producer` keeps batches as sent.
    pub compression_type: String,
    /// `remote.storage.enable`: tier sealed segments to the object store.
    pub remote_storage_enable: bool,
    /// `local.retention.ms`: `-2` (here `None`) means "as `retention.ms`".
    pub local_retention_ms: Option<i64>,
    /// `local.retention.bytes`: `-2` (here `None`) means "as `retention.bytes`".
    pub local_retention_bytes: Option<i64>,
}

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

impl Default for TopicConfig {
    /// Kafka's defaults.
    fn default() -> Self {
        TopicConfig {
            cleanup_policy: CleanupPolicy::DELETE,
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: 7 * DAY_MS,
            retention_ms: Some(7 * DAY_MS),
            retention_bytes: None,
            delete_retention_ms: DAY_MS,
            min_compaction_lag_ms: 0,
            flush_messages: None,
            flush_ms: None,
            index_interval_bytes: 4096,
            max_message_bytes: 1_048_588,
            message_timestamp_type: TimestampType::CreateTime,
            min_insync_replicas: 1,
            unclean_leader_election_enable: false,
            compression_type: "producer".to_string(),
            remote_storage_enable: false,
            local_retention_ms: None,
            local_retention_bytes: None,
        }
    }
}

/// Kafka's rule for topic names: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
/// The rule also keeps a name safe as a directory name.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a topic name cannot be empty".to_string());
    }
    if name.len() > 249 {
        return Err(format!("{} characters, more than 249", name.len()));
    }
    if name == "." || name == ".." {
        return Err("`.` and `..` are not topic names".to_string());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("`{bad}` is not one of [a-zA-Z0-9._-]"));
    }
    Ok(())
}

/// Every topic config key Runnel knows, in the order DescribeConfigs lists them.
pub const TOPIC_CONFIG_KEYS: &[&str] = &[
    "cleanup.policy",
    "compression.type",
    "delete.retention.ms",
    "flush.messages",
    "flush.ms",
    "index.interval.bytes",
    "local.retention.bytes",
    "local.retention.ms",
    "max.message.bytes",
    "message.timestamp.type",
    "min.compaction.lag.ms",
    "min.insync.replicas",
    "remote.storage.enable",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.ms",
    "unclean.leader.election.enable",
];

const COMPRESSION_TYPES: &[&str] = &["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"];

impl TopicConfig {
    /// `defaults` overlaid with `overrides`, every override checked.
    pub fn with_overrides<'a>(
        defaults: &TopicConfig,
        overrides: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<TopicConfig, TopicConfigError> {
        let mut config = defaults.clone();
        for (key, value) in overrides {
            config.set(key, value)?;
        }
        Ok(config)
    }

    /// Sets one key from its Kafka string form. On error `self` is unchanged.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), TopicConfigError> {
        let invalid = |reason: String| TopicConfigError::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
            reason,
        };
        let value = value.trim();
        match key {
            "cleanup.policy" => {
                self.cleanup_policy = CleanupPolicy::parse(value).map_err(invalid)?
            }
            "segment.bytes" => {
                self.segment_bytes = parse_u64(value, 14, i32::MAX as u64).map_err(invalid)?
            }
            "segment.ms" => {
                self.segment_ms = parse_u64(value, 1, i64::MAX as u64).map_err(invalid)?
            }
            "retention.ms" => self.retention_ms = parse_limit(value).map_err(invalid)?,
            "retention.bytes" => self.retention_bytes = parse_limit(value).map_err(invalid)?,
            "delete.retention.ms" => {
                self.delete_retention_ms = parse_u64(value, 0, i64::MAX as u64).map_err(invalid)?
            }
            "min.compaction.lag.ms" => {
                self.min_compaction_lag_ms =
                    parse_u64(value, 0, i64::MAX as u64).map_err(invalid)?
            }
            "flush.messages" => self.flush_messages = parse_flush(value, 1).map_err(invalid)?,
            "flush.ms" => self.flush_ms = parse_flush(value, 0).map_err(invalid)?,
            "index.interval.bytes" => {
                self.index_interval_bytes = parse_u64(value, 0, i32::MAX as u64).map_err(invalid)?
            }
            "max.message.bytes" => {
                self.max_message_bytes = parse_u64(value, 0, i32::MAX as u64).map_err(invalid)?
            }
            "message.timestamp.type" => {
                self.message_timestamp_type = match value {
                    "CreateTime" => TimestampType::CreateTime,
                    "LogAppendTime" => TimestampType::LogAppendTime,
                    _ => return Err(invalid("expected CreateTime or LogAppendTime".into())),
                }
            }
            "min.insync.replicas" => {
                self.min_insync_replicas =
                    parse_u64(value, 1, i32::MAX as u64).map_err(invalid)? as u32
            }
            "unclean.leader.election.enable" => {
                self.unclean_leader_election_enable = parse_bool(value).map_err(invalid)?
            }
            "compression.type" => {
                if !COMPRESSION_TYPES.contains(&value) {
                    return Err(invalid(format!(
                        "expected one of {}",
                        COMPRESSION_TYPES.join(", ")
                    )));
                }
                self.compression_type = value.to_string();
            }
            "remote.storage.enable" => {
                self.remote_storage_enable = parse_bool(value).map_err(invalid)?
            }
            "local.retention.ms" => {
                self.local_retention_ms = parse_local_limit(value).map_err(invalid)?
            }
            "local.retention.bytes" => {
                self.local_retention_bytes = parse_local_limit(value).map_err(invalid)?
            }
            _ => {
                return Err(TopicConfigError::UnknownKey {
                    key: key.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The value of one key in Kafka's string form, or `None` for an unknown key.
    pub fn get(&self, key: &str) -> Option<String> {
        let limit = |value: Option<u64>| value.map_or("-1".to_string(), |v| v.to_string());
        let flush = |value: Option<u64>| value.map_or(i64::MAX.to_string(), |v| v.to_string());
        let local = |value: Option<i64>| value.map_or("-2".to_string(), |v| v.to_string());
        Some(match key {
            "cleanup.policy" => self.cleanup_policy.to_string(),
            "compression.type" => self.compression_type.clone(),
            "delete.retention.ms" => self.delete_retention_ms.to_string(),
            "flush.messages" => flush(self.flush_messages),
            "flush.ms" => flush(self.flush_ms),
            "index.interval.bytes" => self.index_interval_bytes.to_string(),
            "local.retention.bytes" => local(self.local_retention_bytes),
            "local.retention.ms" => local(self.local_retention_ms),
            "max.message.bytes" => self.max_message_bytes.to_string(),
            "message.timestamp.type" => self.message_timestamp_type.to_string(),
            "min.compaction.lag.ms" => self.min_compaction_lag_ms.to_string(),
            "min.insync.replicas" => self.min_insync_replicas.to_string(),
            "remote.storage.enable" => self.remote_storage_enable.to_string(),
            "retention.bytes" => limit(self.retention_bytes),
            "retention.ms" => limit(self.retention_ms),
            "segment.bytes" => self.segment_bytes.to_string(),
            "segment.ms" => self.segment_ms.to_string(),
            "unclean.leader.election.enable" => self.unclean_leader_election_enable.to_string(),
            _ => return None,
        })
    }

    /// Every key with its value, for DescribeConfigs and `runnel topic describe`.
    pub fn entries(&self) -> BTreeMap<&'static str, String> {
        TOPIC_CONFIG_KEYS
            .iter()
            .filter_map(|key| self.get(key).map(|value| (*key, value)))
            .collect()
    }

    pub fn segment_age_limit(&self) -> Duration {
        Duration::from_millis(self.segment_ms)
    }
}

fn parse_i64(value: &str) -> Result<i64, String> {
    value
        .parse::<i64>()
        .map_err(|_| "not an integer".to_string())
}

fn parse_u64(value: &str, min: u64, max: u64) -> Result<u64, String> {
    let parsed = parse_i64(value)?;
    if parsed < 0 || (parsed as u64) < min || (parsed as u64) > max {
        return Err(format!("must be between {min} and {max}"));
    }
    Ok(parsed as u64)
}

/// `-1` is "no limit"; otherwise a non-negative number.
fn parse_limit(value: &str) -> Result<Option<u64>, String> {
    match parse_i64(value)? {
        -1 => Ok(None),
        n if n >= 0 => Ok(Some(n as u64)),
        _ => Err("must be -1 (no limit) or at least 0".to_string()),
    }
}

/// `-2` is "same as the total retention", `-1` no limit, otherwise a non-negative number.
fn parse_local_limit(value: &str) -> Result<Option<i64>, String> {
    match parse_i64(value)? {
        -2 => Ok(None),
        n if n >= -1 => Ok(Some(n)),
        _ => Err("must be -2 (as retention), -1 (no limit) or at least 0".to_string()),
    }
}

/// Kafka spells "never" as `Long.MAX_VALUE`.
fn parse_flush(value: &str, min: u64) -> Result<Option<u64>, String> {
    match parse_i64(value)? {
        i64::MAX => Ok(None),
        n if n >= 0 && n as u64 >= min => Ok(Some(n as u64)),
        _ => Err(format!("must be at least {min}")),
    }
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected true or false".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_round_trips_through_its_string_form() {
        let defaults = TopicConfig::default();
        for key in TOPIC_CONFIG_KEYS {
            let value = defaults.get(key).expect("known key");
            let mut config = defaults.clone();
            config
                .set(key, &value)
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(config, defaults, "{key}");
        }
    }

    #[test]
    fn overrides_are_checked_and_name_the_key() {
        let err = TopicConfig::with_overrides(&TopicConfig::default(), [("retention.ms", "soon")])
            .unwrap_err();
        assert!(err.to_string().contains("retention.ms"), "{err}");
        let err =
            TopicConfig::with_overrides(&TopicConfig::default(), [("colour", "blue")]).unwrap_err();
        assert_eq!(
            err,
            TopicConfigError::UnknownKey {
                key: "colour".into()
            }
        );
        let config = TopicConfig::with_overrides(
            &TopicConfig::default(),
            [
                ("cleanup.policy", "compact,delete"),
                ("retention.bytes", "-1"),
                ("flush.messages", "1"),
            ],
        )
        .unwrap();
        assert_eq!(
            config.cleanup_policy,
            CleanupPolicy {
                delete: true,
                compact: true
            }
        );
        assert_eq!(config.retention_bytes, None);
        assert_eq!(config.flush_messages, Some(1));
    }

    #[test]
    fn a_failed_set_changes_nothing() {
        let mut config = TopicConfig::default();
        assert!(config.set("segment.bytes", "3").is_err());
        assert_eq!(config, TopicConfig::default());
    }
}
