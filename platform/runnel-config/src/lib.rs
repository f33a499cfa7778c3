//! Typed configuration of a Runnel node and of its topics.
//!
//! [`node`] is the node's own configuration (`runnel.toml`, `RUNNEL_*` variables, flags);
//! [`topic`] is the per-topic configuration under Kafka's names, whose defaults come from the
//! node's `[log]` section. Both are validated without I/O.

pub mod node;
pub mod topic;

pub use node::{
    BrokerSection, ConfigError, ConfigProblem, ControllerSection, FunctionsSection,
    ListenerSection, Loaded, LogSection, NODE_CONFIG_KEYS, NodeConfig, NodeSection, TierSection,
};
pub use topic::{
    CleanupPolicy, TOPIC_CONFIG_KEYS, TimestampType, TopicConfig, TopicConfigError,
    validate_topic_name,
};
