//! Configuration of one Runnel node: identity, listeners and log defaults.
//!
//! # Layers
//!
//! [`NodeConfig::load`] builds the configuration from four layers, each overriding the one
//! before it:
//!
//! 1. the built-in defaults ([`NodeConfig::default`], the `runnel dev` configuration: data in
//!    `./runnel-data`, every listener on 127.0.0.1);
//! 2. the TOML file (`runnel.toml`), if one is given;
//! 3. environment variables `RUNNEL_<SECTION>__<KEY>`, e.g. `RUNNEL_KAFKA__LISTEN` for
//!    `kafka.listen` or `RUNNEL_LOG__SEGMENT_BYTES` for `log.segment_bytes` (case-insensitive;
//!    an empty variable counts as unset);
//! 4. overrides from the command line, as `("kafka.listen", "127.0.0.1:1234")` pairs.
//!
//! Every key is `<section>.<field>`; [`NODE_CONFIG_KEYS`] lists them all, and
//! `deploy/runnel.toml` documents each with its default.
//!
//! # Failure behaviour
//!
//! Loading reads at most one file and no other I/O; there is nothing to retry. Unknown keys in
//! the file and unknown `RUNNEL_*` variables are not errors but [`Loaded::warnings`] (so an
//! older binary still starts with a newer file), and they are never applied. An unknown key in
//! an override is an error, since it was typed on this command line. A value of the wrong type
//! or out of range is a [`ConfigError`] that names the key and says why; nothing is half
//! applied, because the caller only gets a configuration that passed [`NodeConfig::validate`].
//!
//! [`NodeConfig::validate`] does no I/O: whether a directory is writable or a port is free is
//! found out by whoever opens it.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use config::{Environment, FileFormat, Format, Map, Source, Value, ValueKind};
use serde::{Deserialize, Serialize};

use crate::topic::{TopicConfig, TopicConfigError};

/// Every key of the node configuration, as `<section>.<field>`.
pub const NODE_CONFIG_KEYS: &[&str] = &[
    "node.id",
    "node.data_dir",
    "kafka.listen",
    "kafka.advertised",
    "grpc.listen",
    "grpc.advertised",
    "cluster.listen",
    "cluster.advertised",
    "http.listen",
    "http.advertised",
    "controller.voters",
    "broker.auto_create_topics_enable",
    "broker.num_partitions",
    "broker.default_replication_factor",
    "broker.socket_request_max_bytes",
    "broker.group_initial_rebalance_delay_ms",
    "broker.offsets_topic_num_partitions",
    "broker.offsets_retention_minutes",
    "broker.offsets_retention_check_interval_ms",
    "broker.group_consumer_session_timeout_ms",
    "broker.group_consumer_heartbeat_interval_ms",
    "log.segment_bytes",
    "log.segment_ms",
    "log.retention_ms",
    "log.retention_bytes",
    "log.delete_retention_ms",
    "log.flush_messages",
    "log.flush_ms",
    "log.index_interval_bytes",
    "log.max_message_bytes",
    "log.cleanup_policy",
    "log.retention_check_interval_ms",
    "log.cleaner_interval_ms",
    "log.producer_id_expiration_ms",
    "log.remote_storage_enable",
    "log.min_free_bytes",
    "tier.url",
    "tier.endpoint",
    "tier.region",
    "tier.access_key_id",
    "tier.secret_access_key",
    "tier.virtual_hosted_style",
    "tier.allow_http",
    "tier.request_timeout_ms",
    "tier.cache_bytes",
    "functions.max_component_bytes",
    "functions.max_kv_bytes",
    "functions.compile_timeout_ms",
    "functions.log_retention_bytes",
];

/// `RUNNEL_` variables the binary reads for something else than node configuration: the
/// CLI's server and plugin directory, and the crash points of tests. They are not
/// unknown keys.
pub const OTHER_RUNNEL_VARIABLES: &[&str] =
    &["RUNNEL_SERVER", "RUNNEL_PLUGIN_DIR", "RUNNEL_CRASH_AT"];

/// The prefix of the environment variables that set node configuration keys.
const ENV_PREFIX: &str = "RUNNEL";
/// Separates the section from the key in an environment variable name.
const ENV_SEPARATOR: &str = "__";

/// One invalid key and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The key, as `<section>.<field>` (e.g. `node.id`).
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Why a node configuration could not be loaded or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse config file {}: {reason}", path.display())]
    ParseFile { path: PathBuf, reason: String },
    #[error("unknown config key `{key}` in a command-line override")]
    UnknownOverride { key: String },
    /// One or more keys have bad values; every problem names its key.
    #[error("{}", join_problems(problems))]
    Invalid { problems: Vec<ConfigProblem> },
    /// An error of the layering itself that cannot be pinned on one key.
    #[error("cannot load configuration: {reason}")]
    Load { reason: String },
    /// A failure after warnings were found: both are reported, since a misspelled key is
    /// often the reason for the failure.
    #[error("{error} (also: {})", warnings.join("; "))]
    WithWarnings {
        error: Box<ConfigError>,
        warnings: Vec<String>,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            problems: vec![ConfigProblem {
                key: key.into(),
                reason: reason.into(),
            }],
        }
    }
}

fn join_problems(problems: &[ConfigProblem]) -> String {
    let mut text = String::new();
    for (index, problem) in problems.iter().enumerate() {
        if index > 0 {
            text.push_str("; ");
        }
        text.push_str(&problem.to_string());
    }
    text
}

/// The configuration of one node. Each section is a table in `runnel.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    /// `[node]`: identity and storage.
    pub node: NodeSection,
    /// `[kafka]`: the Kafka protocol listener. Default `127.0.0.1:9092`.
    pub kafka: ListenerSection,
    /// `[grpc]`: the gRPC API listener (`runnel.v1`, health, reflection). Default
    /// `127.0.0.1:9093`.
    pub grpc: ListenerSection,
    /// `[cluster]`: the internal cluster RPC listener (Raft, replication). Default
    /// `127.0.0.1:9094`.
    pub cluster: ListenerSection,
    /// `[http]`: metrics, health checks and the console. Default `127.0.0.1:9644`.
    pub http: ListenerSection,
    /// `[controller]`: the metadata quorum.
    pub controller: ControllerSection,
    /// `[broker]`: how the broker serves clients.
    pub broker: BrokerSection,
    /// `[log]`: defaults for every topic and the log manager's schedule.
    pub log: LogSection,
    /// `[tier]`: the object store of tiered storage.
    pub tier: TierSection,
    /// `[functions]`: node-wide limits of Wasm functions and connectors.
    pub functions: FunctionsSection,
}

/// `[functions]`: the limits this node puts on every Wasm function and connector. A
/// function's own limits (memory, time per call, records per call) are in its spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FunctionsSection {
    /// `functions.max_component_bytes`: the largest component a deploy takes; 1 to
    /// 1073741824. Default `16777216` (16 MiB).
    pub max_component_bytes: u64,
    /// `functions.max_kv_bytes`: keys and values of one instance's kv state; a set past it
    /// fails the call. 1 to 1073741824. Default `67108864` (64 MiB).
    pub max_kv_bytes: u64,
    /// `functions.compile_timeout_ms`: how long validating and compiling a component may
    /// take before the deploy is refused; at least 1. Default `60000`.
    pub compile_timeout_ms: u64,
    /// `functions.log_retention_bytes`: the size each function's log topic
    /// (`__runnel-fn-<name>-logs`) is trimmed to, set when the topic is created; at least
    /// 1048576. Default `16777216` (16 MiB).
    pub log_retention_bytes: u64,
}

impl Default for FunctionsSection {
    fn default() -> Self {
        FunctionsSection {
            max_component_bytes: 16 << 20,
            max_kv_bytes: 64 << 20,
            compile_timeout_ms: 60_000,
            log_retention_bytes: 16 << 20,
        }
    }
}

impl FunctionsSection {
    fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut check = |key: &str, value: u64, range: std::ops::RangeInclusive<u64>| {
            if !range.contains(&value) {
                problems.push(ConfigProblem {
                    key: format!("functions.{key}"),
                    reason: format!("{value} is outside {} to {}", range.start(), range.end()),
                });
            }
        };
        check("max_component_bytes", self.max_component_bytes, 1..=1 << 30);
        check("max_kv_bytes", self.max_kv_bytes, 1..=1 << 30);
        check(
            "compile_timeout_ms",
            self.compile_timeout_ms,
            1..=u64::from(u32::MAX),
        );
        check(
            "log_retention_bytes",
            self.log_retention_bytes,
            1 << 20..=i64::MAX as u64,
        );
        problems
    }
}

/// `[tier]`: where tiered storage (and deployed function components) live. The default is
/// the directory `<data dir>/objects`; an S3-compatible store is `tier.url = "s3://…"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TierSection {
    /// `tier.url`: empty (the default) for `<data dir>/objects`, `file:///absolute/dir` for
    /// another directory, or `s3://bucket/prefix` (the prefix may be empty).
    pub url: String,
    /// `tier.endpoint`: the S3 endpoint, e.g. `http://127.0.0.1:9000` for MinIO; unset for
    /// AWS (or `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// `tier.region`: unset for `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// `tier.access_key_id` and `tier.secret_access_key`: unset for the usual AWS
    /// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, …).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// `tier.virtual_hosted_style`: address the bucket as `bucket.endpoint` rather than
    /// `endpoint/bucket` (path style, which MinIO and most local servers want). Default
    /// `false`.
    pub virtual_hosted_style: bool,
    /// `tier.allow_http`: allow a plain `http://` endpoint (local stacks). Default `false`.
    pub allow_http: bool,
    /// `tier.request_timeout_ms`: the timeout of one request to the store, at least 1.
    /// Default `30000`.
    pub request_timeout_ms: u64,
    /// `tier.cache_bytes`: the disk cache of row groups fetched from tiered segments, under
    /// `<data dir>/tier-cache`. Default `1073741824` (1 GiB); `0` keeps nothing on disk.
    /// Up to 128 MiB of batches rebuilt from them are kept in memory besides.
    pub cache_bytes: u64,
}

impl Default for TierSection {
    fn default() -> Self {
        TierSection {
            url: String::new(),
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            virtual_hosted_style: false,
            allow_http: false,
            request_timeout_ms: 30_000,
            cache_bytes: 1 << 30,
        }
    }
}

impl TierSection {
    fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let url = self.url.as_str();
        if let Some(rest) = url.strip_prefix("s3://") {
            if rest.split('/').next().is_none_or(str::is_empty) {
                problems.push(ConfigProblem {
                    key: "tier.url".into(),
                    reason: format!("`{url}` names no bucket: use s3://bucket/prefix"),
                });
            }
        } else if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                problems.push(ConfigProblem {
                    key: "tier.url".into(),
                    reason: format!("`{url}` is not an absolute path: use file:///dir"),
                });
            }
        } else if !url.is_empty() {
            problems.push(ConfigProblem {
                key: "tier.url".into(),
                reason: format!("`{url}` is neither empty, file:///dir nor s3://bucket/prefix"),
            });
        }
        if let Some(endpoint) = &self.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            problems.push(ConfigProblem {
                key: "tier.endpoint".into(),
                reason: format!("`{endpoint}` must start with http:// or https://"),
            });
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            problems.push(ConfigProblem {
                key: "tier.access_key_id".into(),
                reason: "set both tier.access_key_id and tier.secret_access_key, or neither".into(),
            });
        }
        if self.request_timeout_ms == 0 {
            problems.push(ConfigProblem {
                key: "tier.request_timeout_ms".into(),
                reason: "must be at least 1".into(),
            });
        }
        problems
    }
}

/// `[controller]`: the Raft quorum that owns the cluster metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ControllerSection {
    /// `controller.voters`: the voters of the metadata quorum, comma-separated
    /// `id@host:port` with each voter's cluster address, the same list on every voter, e.g.
    /// `1@10.0.0.1:9094,2@10.0.0.2:9094,3@10.0.0.3:9094`. A node not in the list is a
    /// broker only: it joins as a learner and follows the metadata log. Empty (the
    /// default): this node alone is the quorum, as in `runnel dev`.
    pub voters: String,
}

impl ControllerSection {
    /// The voters by node id, or why the list is malformed.
    pub fn voters(&self) -> Result<BTreeMap<u64, String>, String> {
        let mut voters = BTreeMap::new();
        for entry in self
            .voters
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let (id, address) = entry
                .split_once('@')
                .ok_or_else(|| format!("`{entry}` is not `id@host:port`"))?;
            let id: u64 = id
                .parse()
                .ok()
                .filter(|id| *id >= 1)
                .ok_or_else(|| format!("`{id}` in `{entry}` is not a node id (1 or more)"))?;
            if address
                .rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
            {
                return Err(format!("`{address}` in `{entry}` is not host:port"));
            }
            if voters.insert(id, address.to_string()).is_some() {
                return Err(format!("node {id} is listed twice"));
            }
        }
        Ok(voters)
    }
}

/// `[broker]`: how the broker serves clients, under the names of Kafka's broker settings
/// (`auto.create.topics.enable` is `broker.auto_create_topics_enable` here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BrokerSection {
    /// `broker.auto_create_topics_enable`: a Metadata request for an unknown topic creates
    /// it with `num_partitions` partitions, as in Kafka. Default `true`.
    pub auto_create_topics_enable: bool,
    /// `broker.num_partitions`: partitions of an auto-created topic, or of a CreateTopics
    /// request that leaves the count to the broker; at least 1. Default `1`.
    pub num_partitions: u32,
    /// `broker.default_replication_factor`: replicas of such topics; at least 1. Default `1`.
    pub default_replication_factor: u16,
    /// `broker.socket_request_max_bytes`: the largest Kafka request frame; a larger one
    /// closes its connection before anything is read into memory. 1024 to 2147483647.
    /// Default `104857600` (100 MiB).
    pub socket_request_max_bytes: u64,
    /// `broker.group_initial_rebalance_delay_ms`: how long the first rebalance of an empty
    /// consumer group waits for more members to join. Default `3000`, as in Kafka.
    pub group_initial_rebalance_delay_ms: u64,
    /// `broker.offsets_topic_num_partitions`: partitions of `__consumer_offsets`, created
    /// by the first group request; 1 to 1000. Default `10`.
    pub offsets_topic_num_partitions: u32,
    /// `broker.offsets_retention_minutes`: committed offsets of a group without members
    /// are deleted once its newest commit is this old; at least 1. Default `10080` (7
    /// days), as Kafka's `offsets.retention.minutes`.
    pub offsets_retention_minutes: u64,
    /// `broker.offsets_retention_check_interval_ms`: how often the coordinator looks for
    /// expired offsets and for empty groups without offsets to forget; at least 1. Default
    /// `600000` (10 minutes), as Kafka's `offsets.retention.check.interval.ms`.
    pub offsets_retention_check_interval_ms: u64,
    /// `broker.group_consumer_session_timeout_ms`: a member of a consumer-protocol group
    /// (KIP-848) that sends no heartbeat for this long is removed. Default `45000`, as
    /// Kafka's `group.consumer.session.timeout.ms`.
    pub group_consumer_session_timeout_ms: u64,
    /// `broker.group_consumer_heartbeat_interval_ms`: how often members of such groups
    /// heartbeat; less than the session timeout. Default `5000`.
    pub group_consumer_heartbeat_interval_ms: u64,
}

impl Default for BrokerSection {
    fn default() -> Self {
        BrokerSection {
            auto_create_topics_enable: true,
            num_partitions: 1,
            default_replication_factor: 1,
            socket_request_max_bytes: 100 * 1024 * 1024,
            group_initial_rebalance_delay_ms: 3_000,
            offsets_topic_num_partitions: 10,
            offsets_retention_minutes: 10_080,
            offsets_retention_check_interval_ms: 600_000,
            group_consumer_session_timeout_ms: 45_000,
            group_consumer_heartbeat_interval_ms: 5_000,
        }
    }
}

/// `[node]`: who this node is and where it keeps its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeSection {
    /// `node.id`: this node's id in the cluster, at least 1. Never reuse the id of a node that
    /// was removed. Default `1`.
    pub id: u64,
    /// `node.data_dir`: the directory holding the log, metadata and cached objects; relative
    /// paths are relative to the working directory. Default `./runnel-data`.
    pub data_dir: PathBuf,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            id: 1,
            data_dir: PathBuf::from("./runnel-data"),
        }
    }
}

/// A listener: the address a server binds, and the address others are told to use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListenerSection {
    /// `<section>.listen`: the socket address to bind, `ip:port` (`[ip]:port` for IPv6). Port
    /// `0` picks a free port, and several listeners may use it at once. `0.0.0.0` listens on
    /// every interface.
    pub listen: SocketAddr,
    /// `<section>.advertised`: the `host:port` clients and other nodes are told to connect to.
    /// Unset (the default) means the listen address, so it must be set for `kafka` and
    /// `cluster` when they listen on `0.0.0.0` or `[::]`.
    pub advertised: Option<String>,
}

impl ListenerSection {
    fn on_localhost(port: u16) -> ListenerSection {
        ListenerSection {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            advertised: None,
        }
    }

    /// The `host:port` clients are told: `advertised`, or else the listen address.
    pub fn advertised_address(&self) -> String {
        match &self.advertised {
            Some(advertised) => advertised.clone(),
            None => self.listen.to_string(),
        }
    }
}

impl Default for ListenerSection {
    /// Port 0 on 127.0.0.1; [`NodeConfig::default`] gives each listener its own port.
    fn default() -> Self {
        ListenerSection::on_localhost(0)
    }
}

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// `[log]`: defaults for every topic, under Kafka's broker-level `log.*` names (a topic's
/// `segment.bytes` is `log.segment_bytes` here), and the log manager's schedule. A topic's own
/// configs override these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogSection {
    /// `log.segment_bytes`: roll the active segment once it holds this many bytes, 14 to
    /// 2147483647. Default `1073741824` (1 GiB).
    pub segment_bytes: u64,
    /// `log.segment_ms`: roll the active segment once its first batch is this old, in
    /// milliseconds, at least 1. Default `604800000` (7 days).
    pub segment_ms: u64,
    /// `log.retention_ms`: delete sealed segments whose newest record is older than this, in
    /// milliseconds; `-1` keeps data forever. Default `604800000` (7 days).
    pub retention_ms: i64,
    /// `log.retention_bytes`: delete the oldest sealed segments while a partition is larger
    /// than this, in bytes; `-1` means no size limit. Default `-1`.
    pub retention_bytes: i64,
    /// `log.delete_retention_ms`: how long a tombstone survives compaction, in milliseconds.
    /// Default `86400000` (1 day).
    pub delete_retention_ms: u64,
    /// `log.flush_messages`: fsync a partition after this many records, at least 1. Unset (the
    /// default) leaves it to `log.flush_ms`.
    pub flush_messages: Option<u64>,
    /// `log.flush_ms`: fsync at least this often while there are unsynced appends, in
    /// milliseconds. Unset (the default): no periodic fsync, durability comes from
    /// replication.
    pub flush_ms: Option<u64>,
    /// `log.index_interval_bytes`: bytes of batches between two entries of the sparse offset
    /// and time indexes. Default `4096`.
    pub index_interval_bytes: u64,
    /// `log.max_message_bytes`: the largest record batch a topic accepts, in bytes. Default
    /// `1048588` (1 MiB plus batch overhead, like Kafka).
    pub max_message_bytes: u64,
    /// `log.cleanup_policy`: `delete` (by retention), `compact` (keep the newest record per
    /// key) or `compact,delete`. Default `delete`.
    pub cleanup_policy: String,
    /// `log.retention_check_interval_ms`: how often the log manager looks for segments to
    /// delete, in milliseconds, at least 1. Default `300000` (5 minutes).
    pub retention_check_interval_ms: u64,
    /// `log.cleaner_interval_ms`: how often the log cleaner looks for partitions to compact,
    /// in milliseconds, at least 1. Default `15000` (15 seconds).
    pub cleaner_interval_ms: u64,
    /// `log.producer_id_expiration_ms` (Kafka's `producer.id.expiration.ms`): an idempotent
    /// producer that wrote nothing to a partition for this long is forgotten there, in
    /// milliseconds, at least 1. Checked with retention. Default `86400000` (1 day).
    pub producer_id_expiration_ms: u64,
    /// `log.remote_storage_enable` (Kafka's `remote.storage.enable` for every topic): tier
    /// sealed segments to the object store as Parquet. Default `true`: `runnel dev` tiers
    /// to `<data dir>/objects`. Internal (`__…`) and compacted topics are never tiered.
    pub remote_storage_enable: bool,
    /// `log.min_free_bytes`: while the disk holding the data directory has fewer free bytes
    /// than this, appends fail with a retriable error (KAFKA_STORAGE_ERROR, gRPC
    /// UNAVAILABLE) and nothing is written; `0` turns the floor off. Default `1073741824`
    /// (1 GiB).
    pub min_free_bytes: u64,
}

impl Default for LogSection {
    /// Kafka's defaults, the same as [`TopicConfig::default`], except that tiering is on.
    fn default() -> Self {
        LogSection {
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: 7 * DAY_MS,
            retention_ms: 7 * DAY_MS as i64,
            retention_bytes: -1,
            delete_retention_ms: DAY_MS,
            flush_messages: None,
            flush_ms: None,
            index_interval_bytes: 4096,
            max_message_bytes: 1_048_588,
            cleanup_policy: "delete".to_string(),
            retention_check_interval_ms: 300_000,
            cleaner_interval_ms: 15_000,
            producer_id_expiration_ms: DAY_MS,
            remote_storage_enable: true,
            min_free_bytes: 1 << 30,
        }
    }
}

impl LogSection {
    /// The default configuration of every topic: [`TopicConfig::default`] with this section
    /// applied through [`TopicConfig::set`], so the values are checked exactly as a topic's
    /// own configs are.
    pub fn topic_defaults(&self) -> Result<TopicConfig, ConfigError> {
        let mut topic = TopicConfig::default();
        for (topic_key, value) in self.topic_settings() {
            topic
                .set(topic_key, &value)
                .map_err(|error| topic_error(topic_key, error))?;
        }
        Ok(topic)
    }

    /// Every topic default of this section as (topic key, Kafka string form).
    fn topic_settings(&self) -> Vec<(&'static str, String)> {
        // Kafka spells "never flush" as Long.MAX_VALUE.
        let flush = |value: Option<u64>| value.map_or(i64::MAX.to_string(), |v| v.to_string());
        vec![
            ("segment.bytes", self.segment_bytes.to_string()),
            ("segment.ms", self.segment_ms.to_string()),
            ("retention.ms", self.retention_ms.to_string()),
            ("retention.bytes", self.retention_bytes.to_string()),
            ("delete.retention.ms", self.delete_retention_ms.to_string()),
            ("flush.messages", flush(self.flush_messages)),
            ("flush.ms", flush(self.flush_ms)),
            (
                "index.interval.bytes",
                self.index_interval_bytes.to_string(),
            ),
            ("max.message.bytes", self.max_message_bytes.to_string()),
            ("cleanup.policy", self.cleanup_policy.clone()),
            (
                "remote.storage.enable",
                self.remote_storage_enable.to_string(),
            ),
        ]
    }

    fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        for (topic_key, value) in self.topic_settings() {
            if let Err(error) = TopicConfig::default().set(topic_key, &value) {
                problems.push(topic_problem(topic_key, error));
            }
        }
        if self.retention_check_interval_ms == 0 {
            problems.push(ConfigProblem {
                key: "log.retention_check_interval_ms".into(),
                reason: "must be at least 1".into(),
            });
        }
        if self.cleaner_interval_ms == 0 {
            problems.push(ConfigProblem {
                key: "log.cleaner_interval_ms".into(),
                reason: "must be at least 1".into(),
            });
        }
        if self.producer_id_expiration_ms == 0 {
            problems.push(ConfigProblem {
                key: "log.producer_id_expiration_ms".into(),
                reason: "must be at least 1".into(),
            });
        }
        problems
    }
}

/// `segment.bytes` is `log.segment_bytes` in the node configuration.
fn log_key(topic_key: &str) -> String {
    format!("log.{}", topic_key.replace('.', "_"))
}

fn topic_problem(topic_key: &str, error: TopicConfigError) -> ConfigProblem {
    let reason = match error {
        TopicConfigError::InvalidValue { value, reason, .. } => {
            format!("invalid value `{value}`: {reason}")
        }
        TopicConfigError::UnknownKey { key } => format!("unknown topic config `{key}`"),
    };
    ConfigProblem {
        key: log_key(topic_key),
        reason,
    }
}

fn topic_error(topic_key: &str, error: TopicConfigError) -> ConfigError {
    ConfigError::Invalid {
        problems: vec![topic_problem(topic_key, error)],
    }
}

/// A configuration and what was odd about its sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub config: NodeConfig,
    /// Things worth logging that did not stop the load, e.g. "unknown key `kafka.lisen` in
    /// runnel.toml".
    pub warnings: Vec<String>,
}

impl Default for NodeConfig {
    /// The `runnel dev` configuration: data in `./runnel-data`, every listener on 127.0.0.1 at
    /// its standard port, Kafka's log defaults.
    fn default() -> Self {
        NodeConfig {
            node: NodeSection::default(),
            kafka: ListenerSection::on_localhost(9092),
            grpc: ListenerSection::on_localhost(9093),
            cluster: ListenerSection::on_localhost(9094),
            http: ListenerSection::on_localhost(9644),
            controller: ControllerSection::default(),
            broker: BrokerSection::default(),
            log: LogSection::default(),
            tier: TierSection::default(),
            functions: FunctionsSection::default(),
        }
    }
}

impl NodeConfig {
    /// The defaults with data in `data_dir`. Tests that need free ports also set each
    /// listener to `127.0.0.1:0`.
    pub fn dev(data_dir: impl Into<PathBuf>) -> NodeConfig {
        let mut config = NodeConfig::default();
        config.node.data_dir = data_dir.into();
        config
    }

    /// Loads the configuration from its layers: built-in defaults < the TOML `file` (if
    /// given) < `RUNNEL_<SECTION>__<KEY>` variables in `env` < `overrides`
    /// (`("kafka.listen", "127.0.0.1:1234")` pairs from flags). The binary passes
    /// `std::env::vars()` as `env`. The result is validated.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Loaded, ConfigError> {
        let mut warnings = Vec::new();
        let config = Self::load_layers(file, env, overrides, &mut warnings).map_err(|error| {
            if warnings.is_empty() {
                error
            } else {
                ConfigError::WithWarnings {
                    error: Box::new(error),
                    warnings: warnings.clone(),
                }
            }
        })?;
        Ok(Loaded { config, warnings })
    }

    fn load_layers(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, String)],
        warnings: &mut Vec<String>,
    ) -> Result<NodeConfig, ConfigError> {
        let defaults = config::Config::try_from(&NodeConfig::default()).map_err(load_error)?;
        let mut builder = config::Config::builder().add_source(defaults);

        if let Some(path) = file {
            let values = read_toml_file(path)?;
            for key in unknown_file_keys(&values) {
                warnings.push(format!("unknown key `{key}` in {}", path.display()));
            }
            builder = builder.add_source(ParsedFile(values));
        }

        let mut known_env = Map::new();
        for (name, value) in env {
            let Some(key) = env_var_key(&name) else {
                continue;
            };
            if OTHER_RUNNEL_VARIABLES.contains(&name.to_ascii_uppercase().as_str()) {
                continue;
            }
            if value.is_empty() {
                continue;
            }
            if NODE_CONFIG_KEYS.contains(&key.as_str()) {
                known_env.insert(name, value);
            } else {
                warnings.push(format!(
                    "unknown key `{key}` in environment variable {name}"
                ));
            }
        }
        // Values stay strings (no `try_parsing`): numbers are parsed when deserialized, and a
        // string such as a data_dir of `1e3` is not turned into `1000`.
        builder = builder.add_source(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator(ENV_SEPARATOR)
                .source(Some(known_env)),
        );

        for (key, value) in overrides {
            if !NODE_CONFIG_KEYS.contains(&key.as_str()) {
                return Err(ConfigError::UnknownOverride { key: key.clone() });
            }
            let origin = "the command line".to_string();
            let value = Value::new(Some(&origin), ValueKind::String(value.clone()));
            builder = builder
                .set_override(key.as_str(), value)
                .map_err(load_error)?;
        }

        let layered = builder.build().map_err(load_error)?;
        let config: NodeConfig = layered.clone().try_deserialize().map_err(|error| {
            // Errors raised while parsing a value (e.g. a socket address) do not say which
            // layer it came from; the layered values do.
            let error = with_origin(error, |key| origin_of(&layered.cache, key));
            load_error(error)
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value without I/O. The error lists every problem, each naming its key and
    /// saying why, e.g. `node.id: must be at least 1`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.node.id == 0 {
            problems.push(ConfigProblem {
                key: "node.id".into(),
                reason: "must be at least 1".into(),
            });
        }
        if self.node.data_dir.as_os_str().is_empty() {
            problems.push(ConfigProblem {
                key: "node.data_dir".into(),
                reason: "must not be empty".into(),
            });
        }

        let listeners = self.listeners();
        for (index, (name, listener)) in listeners.iter().enumerate() {
            for (earlier_name, earlier) in &listeners[..index] {
                if addresses_overlap(earlier.listen, listener.listen) {
                    problems.push(ConfigProblem {
                        key: format!("{name}.listen"),
                        reason: format!(
                            "{} overlaps {earlier_name}.listen ({}); each listener needs its own port",
                            listener.listen, earlier.listen
                        ),
                    });
                }
            }
            match &listener.advertised {
                Some(advertised) => {
                    if let Err(reason) = check_advertised(advertised) {
                        problems.push(ConfigProblem {
                            key: format!("{name}.advertised"),
                            reason: format!("invalid value `{advertised}`: {reason}"),
                        });
                    }
                }
                None => {
                    let told_to_others = *name == "kafka" || *name == "cluster";
                    if told_to_others && listener.listen.ip().is_unspecified() {
                        problems.push(ConfigProblem {
                            key: format!("{name}.advertised"),
                            reason: format!(
                                "must be set when {name}.listen is {}, which others cannot connect to",
                                listener.listen
                            ),
                        });
                    }
                }
            }
        }

        problems.extend(self.log.problems());
        problems.extend(self.tier.problems());
        problems.extend(self.functions.problems());

        if let Err(reason) = self.controller.voters() {
            problems.push(ConfigProblem {
                key: "controller.voters".to_string(),
                reason,
            });
        }
        if self.broker.num_partitions == 0 {
            problems.push(ConfigProblem {
                key: "broker.num_partitions".to_string(),
                reason: "must be at least 1".to_string(),
            });
        }
        if self.broker.default_replication_factor == 0 {
            problems.push(ConfigProblem {
                key: "broker.default_replication_factor".to_string(),
                reason: "must be at least 1".to_string(),
            });
        }
        if self.broker.offsets_retention_minutes == 0 {
            problems.push(ConfigProblem {
                key: "broker.offsets_retention_minutes".to_string(),
                reason: "must be at least 1".to_string(),
            });
        }
        if self.broker.offsets_retention_check_interval_ms == 0 {
            problems.push(ConfigProblem {
                key: "broker.offsets_retention_check_interval_ms".to_string(),
                reason: "must be at least 1".to_string(),
            });
        }
        let (session, interval) = (
            self.broker.group_consumer_session_timeout_ms,
            self.broker.group_consumer_heartbeat_interval_ms,
        );
        if interval == 0 || interval >= session || session > i32::MAX as u64 {
            problems.push(ConfigProblem {
                key: "broker.group_consumer_heartbeat_interval_ms".to_string(),
                reason: format!(
                    "{interval} must be at least 1 and less than broker.group_consumer_session_timeout_ms ({session}, at most 2147483647)"
                ),
            });
        }
        if !(1..=1000).contains(&self.broker.offsets_topic_num_partitions) {
            problems.push(ConfigProblem {
                key: "broker.offsets_topic_num_partitions".to_string(),
                reason: format!(
                    "{} is outside 1 to 1000",
                    self.broker.offsets_topic_num_partitions
                ),
            });
        }
        if !(1024..=i32::MAX as u64).contains(&self.broker.socket_request_max_bytes) {
            problems.push(ConfigProblem {
                key: "broker.socket_request_max_bytes".to_string(),
                reason: format!(
                    "{} is outside 1024 to 2147483647",
                    self.broker.socket_request_max_bytes
                ),
            });
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }

    fn listeners(&self) -> [(&'static str, &ListenerSection); 4] {
        [
            ("kafka", &self.kafka),
            ("grpc", &self.grpc),
            ("cluster", &self.cluster),
            ("http", &self.http),
        ]
    }
}

/// Whether two listeners could not both bind: the same non-zero port on the same address, or
/// on any address when one of them is the unspecified address.
fn addresses_overlap(first: SocketAddr, second: SocketAddr) -> bool {
    if first.port() == 0 || first.port() != second.port() {
        return false;
    }
    first.ip() == second.ip() || first.ip().is_unspecified() || second.ip().is_unspecified()
}

/// An advertised address is `host:port`, with IPv6 addresses in brackets.
fn check_advertised(advertised: &str) -> Result<(), String> {
    let Some((host, port)) = advertised.rsplit_once(':') else {
        return Err("expected host:port".to_string());
    };
    if host.is_empty() {
        return Err("the host is empty".to_string());
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => {}
        _ => return Err(format!("`{port}` is not a port between 1 and 65535")),
    }
    let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let bare_host = bracketed.unwrap_or(host);
    if bracketed.is_none() && host.contains(':') {
        return Err("an IPv6 address must be in brackets, e.g. [::1]:9092".to_string());
    }
    if let Ok(ip) = bare_host.parse::<IpAddr>()
        && ip.is_unspecified()
    {
        return Err(format!("{ip} is not an address others can connect to"));
    }
    Ok(())
}

/// The node configuration key of an environment variable, or `None` if the variable is not a
/// `RUNNEL_` one. Mirrors `config::Environment`: lowercased, prefix removed, `__` read as `.`.
fn env_var_key(name: &str) -> Option<String> {
    let lowercase = name.to_lowercase();
    let prefix = format!("{}_", ENV_PREFIX.to_lowercase());
    let rest = lowercase.strip_prefix(&prefix)?;
    Some(rest.replace(ENV_SEPARATOR, "."))
}

fn read_toml_file(path: &Path) -> Result<Map<String, Value>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    let origin = path.display().to_string();
    FileFormat::Toml
        .parse(Some(&origin), &text)
        .map_err(|error| ConfigError::ParseFile {
            path: path.to_path_buf(),
            reason: error.to_string().trim_end().to_string(),
        })
}

/// The keys of a parsed file that are not node configuration keys, sorted. A whole unknown
/// section is reported once.
fn unknown_file_keys(values: &Map<String, Value>) -> Vec<String> {
    let sections: BTreeSet<&str> = NODE_CONFIG_KEYS
        .iter()
        .filter_map(|key| key.split_once('.').map(|(section, _)| section))
        .collect();
    let mut unknown = Vec::new();
    for (section, value) in values {
        if NODE_CONFIG_KEYS.contains(&section.as_str()) {
            continue;
        }
        if !sections.contains(section.as_str()) {
            unknown.push(section.clone());
            continue;
        }
        // A known section that is not a table fails to deserialize, with its own error.
        let ValueKind::Table(fields) = &value.kind else {
            continue;
        };
        for field in fields.keys() {
            let key = format!("{section}.{field}");
            if !NODE_CONFIG_KEYS.contains(&key.as_str()) {
                unknown.push(key);
            }
        }
    }
    unknown.sort();
    unknown
}

/// A TOML file already read and parsed, so it is read once and its errors name the file.
#[derive(Debug, Clone)]
struct ParsedFile(Map<String, Value>);

impl Source for ParsedFile {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

/// Fills in the origin of an error that names its key but not where the value came from.
fn with_origin(
    error: config::ConfigError,
    origin_of: impl Fn(&str) -> Option<String>,
) -> config::ConfigError {
    match error {
        config::ConfigError::At {
            error,
            origin: None,
            key: Some(key),
        } => config::ConfigError::At {
            error,
            origin: origin_of(&key),
            key: Some(key),
        },
        config::ConfigError::Type {
            origin: None,
            unexpected,
            expected,
            key: Some(key),
        } => config::ConfigError::Type {
            origin: origin_of(&key),
            unexpected,
            expected,
            key: Some(key),
        },
        other => other,
    }
}

/// Where the value at `key` (`section.field`) came from: a file path or "the environment".
fn origin_of(values: &Value, key: &str) -> Option<String> {
    let mut value = values;
    for part in key.split('.') {
        let ValueKind::Table(table) = &value.kind else {
            return None;
        };
        value = table.get(part)?;
    }
    value.origin().map(str::to_string)
}

/// Names the key where the `config` crate knows it.
fn load_error(error: config::ConfigError) -> ConfigError {
    let from = |origin: Option<String>| match origin {
        Some(origin) => format!(" (from {origin})"),
        None => String::new(),
    };
    match error {
        config::ConfigError::Type {
            origin,
            unexpected,
            expected,
            key: Some(key),
        } => ConfigError::invalid(
            key,
            format!("expected {expected}, found {unexpected}{}", from(origin)),
        ),
        config::ConfigError::At {
            error,
            origin,
            key: Some(key),
        } => ConfigError::invalid(key, format!("{error}{}", from(origin))),
        other => ConfigError::Load {
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_also_reports_the_warnings_found_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("runnel.toml");
        std::fs::write(&file, "[node]\nid = 0\n[kafka]\nlisen = \"127.0.0.1:1\"\n").unwrap();
        let error = NodeConfig::load(Some(&file), Vec::new(), &[]).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("node.id"), "{message}");
        assert!(message.contains("kafka.lisen"), "{message}");
    }

    fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    fn write_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("runnel.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn problem_keys(error: &ConfigError) -> Vec<&str> {
        match error {
            ConfigError::Invalid { problems } => problems
                .iter()
                .map(|problem| problem.key.as_str())
                .collect(),
            other => panic!("expected invalid values, got {other:?}"),
        }
    }

    fn flatten(prefix: &str, values: Map<String, Value>, keys: &mut BTreeSet<String>) {
        for (key, value) in values {
            let path = if prefix.is_empty() {
                key
            } else {
                format!("{prefix}.{key}")
            };
            match value.kind {
                ValueKind::Table(inner) => flatten(&path, inner, keys),
                _ => {
                    keys.insert(path);
                }
            }
        }
    }

    #[test]
    fn the_key_list_matches_the_struct() {
        let defaults = config::Config::try_from(&NodeConfig::default()).unwrap();
        let mut keys = BTreeSet::new();
        flatten("", defaults.collect().unwrap(), &mut keys);
        let listed: BTreeSet<String> = NODE_CONFIG_KEYS.iter().map(|k| k.to_string()).collect();
        assert_eq!(keys, listed);
    }

    #[test]
    fn defaults_are_valid_and_are_kafkas_topic_defaults() {
        let defaults = NodeConfig::default();
        defaults.validate().unwrap();
        // Kafka's, but with tiering on (`runnel dev` tiers to its local object store).
        assert_eq!(
            defaults.log.topic_defaults().unwrap(),
            TopicConfig {
                remote_storage_enable: true,
                ..TopicConfig::default()
            }
        );
        let loaded = NodeConfig::load(None, Vec::new(), &[]).unwrap();
        assert_eq!(loaded.config, defaults);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);

        let dev = NodeConfig::dev("/tmp/node-1");
        assert_eq!(dev.node.data_dir, PathBuf::from("/tmp/node-1"));
        assert_eq!(dev.kafka, defaults.kafka);
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/runnel.toml");
        let loaded = NodeConfig::load(Some(&path), Vec::new(), &[]).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert_eq!(loaded.config, NodeConfig::default());
    }

    #[test]
    fn each_layer_beats_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(
            &dir,
            r#"
            [node]
            id = 2
            [kafka]
            listen = "127.0.0.1:1001"
            [grpc]
            listen = "127.0.0.1:1002"
            [cluster]
            listen = "127.0.0.1:1003"
            [log]
            segment_bytes = 1000
            "#,
        );
        let env = pairs(&[
            ("RUNNEL_GRPC__LISTEN", "127.0.0.1:2002"),
            ("RUNNEL_CLUSTER__LISTEN", "127.0.0.1:2003"),
        ]);
        let overrides = pairs(&[("cluster.listen", "127.0.0.1:3003")]);
        let config = NodeConfig::load(Some(&file), env, &overrides)
            .unwrap()
            .config;

        // Untouched by any layer: the default.
        assert_eq!(config.http.listen, "127.0.0.1:9644".parse().unwrap());
        assert_eq!(config.log.segment_ms, LogSection::default().segment_ms);
        // File beats default.
        assert_eq!(config.node.id, 2);
        assert_eq!(config.kafka.listen, "127.0.0.1:1001".parse().unwrap());
        assert_eq!(config.log.segment_bytes, 1000);
        // Env beats file.
        assert_eq!(config.grpc.listen, "127.0.0.1:2002".parse().unwrap());
        // Override beats env.
        assert_eq!(config.cluster.listen, "127.0.0.1:3003".parse().unwrap());
    }

    #[test]
    fn overrides_beat_env_without_a_file() {
        let env = pairs(&[("RUNNEL_LOG__SEGMENT_BYTES", "2000")]);
        let overrides = pairs(&[("log.segment_bytes", "3000")]);
        let config = NodeConfig::load(None, env, &overrides).unwrap().config;
        assert_eq!(config.log.segment_bytes, 3000);
    }

    #[test]
    fn unknown_keys_in_the_file_and_env_are_warnings() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(
            &dir,
            r#"
            colour = "blue"
            [kafka]
            lisen = "127.0.0.1:1234"
            [metrics]
            enabled = true
            port = 1
            "#,
        );
        let env = pairs(&[
            ("RUNNEL_KAFKA__LISEN", "127.0.0.1:1234"),
            ("RUNNEL_LOG", "debug"),
            ("RUNNEL_SERVER", "127.0.0.1:1"),
            ("RUNNEL_LOG__SEGMENT_BYTES__MAX", "1"),
            ("PATH", "/usr/bin"),
            ("KAFKA__LISTEN", "127.0.0.1:1234"),
        ]);
        let loaded = NodeConfig::load(Some(&file), env, &[]).unwrap();
        assert_eq!(loaded.config, NodeConfig::default());
        let shown = file.display();
        assert_eq!(
            loaded.warnings,
            vec![
                format!("unknown key `colour` in {shown}"),
                format!("unknown key `kafka.lisen` in {shown}"),
                format!("unknown key `metrics` in {shown}"),
                "unknown key `kafka.lisen` in environment variable RUNNEL_KAFKA__LISEN".to_string(),
                "unknown key `log` in environment variable RUNNEL_LOG".to_string(),
                "unknown key `log.segment_bytes.max` in environment variable RUNNEL_LOG__SEGMENT_BYTES__MAX"
                    .to_string(),
            ]
        );
    }

    #[test]
    fn an_unknown_override_is_an_error() {
        let overrides = pairs(&[("kafka.lisen", "127.0.0.1:1234")]);
        let error = NodeConfig::load(None, Vec::new(), &overrides).unwrap_err();
        assert!(
            matches!(&error, ConfigError::UnknownOverride { key } if key == "kafka.lisen"),
            "{error:?}"
        );
        assert!(error.to_string().contains("kafka.lisen"), "{error}");
    }

    #[test]
    fn validation_names_every_bad_key() {
        let mut config = NodeConfig::dev("");
        config.node.id = 0;
        config.grpc.listen = "127.0.0.1:9092".parse().unwrap();
        config.http.listen = "0.0.0.0:9094".parse().unwrap();
        config.cluster.advertised = Some("0.0.0.0:9094".into());
        config.kafka.advertised = Some("broker-1".into());
        config.log.segment_bytes = 3;
        config.log.retention_ms = -5;
        config.log.flush_messages = Some(0);
        config.log.cleanup_policy = "shred".into();
        config.log.cleaner_interval_ms = 0;
        config.log.producer_id_expiration_ms = 0;
        config.functions.max_component_bytes = 0;
        config.functions.compile_timeout_ms = 0;
        config.functions.log_retention_bytes = 1000;
        let error = config.validate().unwrap_err();
        assert_eq!(
            problem_keys(&error),
            vec![
                "node.id",
                "node.data_dir",
                "kafka.advertised",
                "grpc.listen",
                "cluster.advertised",
                "http.listen",
                "log.segment_bytes",
                "log.retention_ms",
                "log.flush_messages",
                "log.cleanup_policy",
                "log.cleaner_interval_ms",
                "log.producer_id_expiration_ms",
                "functions.max_component_bytes",
                "functions.compile_timeout_ms",
                "functions.log_retention_bytes",
            ]
        );
        let message = error.to_string();
        assert!(
            message.starts_with("node.id: must be at least 1; "),
            "{message}"
        );
        assert!(
            message.contains("grpc.listen: 127.0.0.1:9092 overlaps kafka.listen"),
            "{message}"
        );
        assert!(
            message.contains("log.segment_bytes: invalid value `3`: must be between 14"),
            "{message}"
        );
        assert!(
            message.contains("functions.log_retention_bytes: 1000 is outside 1048576 to"),
            "{message}"
        );
    }

    #[test]
    fn listener_rules() {
        // Port 0 may repeat: each listener gets its own free port.
        let mut config = NodeConfig::dev("data");
        for listener in [
            &mut config.kafka,
            &mut config.grpc,
            &mut config.cluster,
            &mut config.http,
        ] {
            listener.listen = "127.0.0.1:0".parse().unwrap();
        }
        config.validate().unwrap();

        // The same port on different addresses is fine, on the wildcard address it is not.
        let mut config = NodeConfig::dev("data");
        config.grpc.listen = "127.0.0.2:9092".parse().unwrap();
        config.validate().unwrap();
        config.grpc.listen = "[::]:9092".parse().unwrap();
        assert_eq!(
            problem_keys(&config.validate().unwrap_err()),
            vec!["grpc.listen"]
        );

        // Listening on every interface needs an advertised address for kafka and cluster.
        let mut config = NodeConfig::dev("data");
        config.kafka.listen = "0.0.0.0:9092".parse().unwrap();
        config.http.listen = "0.0.0.0:9644".parse().unwrap();
        assert_eq!(
            problem_keys(&config.validate().unwrap_err()),
            vec!["kafka.advertised"]
        );
        config.kafka.advertised = Some("broker-1.example.com:9092".into());
        config.validate().unwrap();
        assert_eq!(
            config.kafka.advertised_address(),
            "broker-1.example.com:9092"
        );
        assert_eq!(config.http.advertised_address(), "0.0.0.0:9644");

        for good in ["localhost:9092", "10.0.0.1:9092", "[::1]:9092"] {
            assert_eq!(check_advertised(good), Ok(()), "{good}");
        }
        for bad in [
            "localhost",
            ":9092",
            "localhost:0",
            "localhost:http",
            "::1:9092",
            "[::]:9092",
        ] {
            assert!(check_advertised(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn load_validates() {
        let env = pairs(&[("RUNNEL_NODE__ID", "0")]);
        let error = NodeConfig::load(None, env, &[]).unwrap_err();
        assert_eq!(error.to_string(), "node.id: must be at least 1");
    }

    #[test]
    fn a_malformed_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(&dir, "[kafka\nlisten = \"127.0.0.1:9092\"\n");
        let error = NodeConfig::load(Some(&file), Vec::new(), &[]).unwrap_err();
        assert!(matches!(error, ConfigError::ParseFile { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("cannot parse config file {}: ", file.display())),
            "{message}"
        );

        let missing = dir.path().join("missing.toml");
        let error = NodeConfig::load(Some(&missing), Vec::new(), &[]).unwrap_err();
        assert!(matches!(error, ConfigError::ReadFile { .. }), "{error:?}");
        assert!(
            error.to_string().contains(&missing.display().to_string()),
            "{error}"
        );
    }

    #[test]
    fn wrong_types_name_the_key_and_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(&dir, "[kafka]\nlisten = \"localhost\"\n");
        let error = NodeConfig::load(Some(&file), Vec::new(), &[]).unwrap_err();
        assert_eq!(problem_keys(&error), vec!["kafka.listen"]);
        assert!(
            error.to_string().contains(&file.display().to_string()),
            "{error}"
        );

        let env = pairs(&[("RUNNEL_LOG__SEGMENT_BYTES", "big")]);
        let error = NodeConfig::load(None, env, &[]).unwrap_err();
        assert_eq!(problem_keys(&error), vec!["log.segment_bytes"]);
        assert!(error.to_string().contains("environment"), "{error}");

        let overrides = pairs(&[("node.id", "-3")]);
        let error = NodeConfig::load(None, Vec::new(), &overrides).unwrap_err();
        assert_eq!(problem_keys(&error), vec!["node.id"]);
        assert!(error.to_string().contains("command line"), "{error}");
    }

    #[test]
    fn env_values_are_parsed_by_type() {
        let env = pairs(&[
            ("RUNNEL_NODE__ID", "7"),
            ("RUNNEL_NODE__DATA_DIR", "1e3"),
            ("RUNNEL_KAFKA__LISTEN", "[::1]:19092"),
            ("RUNNEL_KAFKA__ADVERTISED", "localhost:19092"),
            ("RUNNEL_GRPC__LISTEN", "127.0.0.1:19093"),
            ("RUNNEL_LOG__SEGMENT_BYTES", "1048576"),
            ("RUNNEL_LOG__RETENTION_MS", "-1"),
            ("RUNNEL_LOG__FLUSH_MS", "1000"),
            ("RUNNEL_LOG__CLEANUP_POLICY", "compact,delete"),
            // Lowercase names work too, and empty values count as unset.
            ("runnel_http__listen", "127.0.0.1:19644"),
            ("RUNNEL_CLUSTER__ADVERTISED", ""),
        ]);
        let loaded = NodeConfig::load(None, env, &[]).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let config = loaded.config;
        assert_eq!(config.node.id, 7);
        assert_eq!(config.node.data_dir, PathBuf::from("1e3"));
        assert_eq!(config.kafka.listen, "[::1]:19092".parse().unwrap());
        assert_eq!(config.kafka.advertised.as_deref(), Some("localhost:19092"));
        assert_eq!(config.grpc.listen, "127.0.0.1:19093".parse().unwrap());
        assert_eq!(config.http.listen, "127.0.0.1:19644".parse().unwrap());
        assert_eq!(config.cluster.advertised, None);
        assert_eq!(config.log.segment_bytes, 1_048_576);
        assert_eq!(config.log.retention_ms, -1);
        assert_eq!(config.log.flush_ms, Some(1000));

        let topic = config.log.topic_defaults().unwrap();
        assert_eq!(topic.segment_bytes, 1_048_576);
        assert_eq!(topic.retention_ms, None);
        assert_eq!(topic.flush_ms, Some(1000));
        assert_eq!(topic.flush_messages, None);
        assert!(topic.cleanup_policy.compact && topic.cleanup_policy.delete);
    }

    #[test]
    fn topic_defaults_reject_what_a_topic_would() {
        let log = LogSection {
            max_message_bytes: u64::MAX,
            ..LogSection::default()
        };
        let error = log.topic_defaults().unwrap_err();
        assert_eq!(problem_keys(&error), vec!["log.max_message_bytes"]);
    }
}
