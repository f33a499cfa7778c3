//! Typed configuration of a Runnel node and of its topics.

pub mod topic;

pub use topic::{CleanupPolicy, TimestampType, TopicConfig, TopicConfigError, TOPIC_CONFIG_KEYS};
