//! Kafka error codes: the one place they are named, and the mapping from the broker's
//! errors to them. Nothing below the Kafka frontend knows these numbers.

use runnel_broker::BrokerError;
use runnel_broker::groups::{ConsumerGroupError, GroupError, GroupServiceError};
use runnel_controller::{ControllerError, MetadataError};
use runnel_log::LogError;

pub const NONE: i16 = 0;
pub const UNKNOWN_SERVER_ERROR: i16 = -1;
pub const OFFSET_OUT_OF_RANGE: i16 = 1;
pub const CORRUPT_MESSAGE: i16 = 2;
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub const LEADER_NOT_AVAILABLE: i16 = 5;
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
pub const REQUEST_TIMED_OUT: i16 = 7;
pub const MESSAGE_TOO_LARGE: i16 = 10;
pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
pub const NOT_ENOUGH_REPLICAS: i16 = 19;
pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;
pub const INVALID_REQUIRED_ACKS: i16 = 21;
pub const UNSUPPORTED_VERSION: i16 = 35;
pub const TOPIC_ALREADY_EXISTS: i16 = 36;
pub const INVALID_PARTITIONS: i16 = 37;
pub const INVALID_REPLICATION_FACTOR: i16 = 38;
pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
pub const INVALID_CONFIG: i16 = 40;
pub const NOT_CONTROLLER: i16 = 41;
pub const INVALID_REQUEST: i16 = 42;
pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
pub const INVALID_PRODUCER_EPOCH: i16 = 47;
pub const KAFKA_STORAGE_ERROR: i16 = 56;
pub const FENCED_LEADER_EPOCH: i16 = 74;
pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
pub const INVALID_RECORD: i16 = 87;
pub const UNKNOWN_TOPIC_ID: i16 = 100;
pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
pub const NOT_COORDINATOR: i16 = 16;
pub const ILLEGAL_GENERATION: i16 = 22;
pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
pub const INVALID_GROUP_ID: i16 = 24;
pub const UNKNOWN_MEMBER_ID: i16 = 25;
pub const INVALID_SESSION_TIMEOUT: i16 = 26;
pub const REBALANCE_IN_PROGRESS: i16 = 27;
pub const NON_EMPTY_GROUP: i16 = 68;
pub const GROUP_ID_NOT_FOUND: i16 = 69;
pub const FENCED_MEMBER_EPOCH: i16 = 110;
pub const UNRELEASED_INSTANCE_ID: i16 = 111;
pub const UNSUPPORTED_ASSIGNOR: i16 = 112;
pub const STALE_MEMBER_EPOCH: i16 = 113;
pub const INVALID_REGULAR_EXPRESSION: i16 = 128;
pub const MEMBER_ID_REQUIRED: i16 = 79;
pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
pub const FENCED_INSTANCE_ID: i16 = 82;
pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;

/// A Kafka error code with the message that explains it (sent where the response has a
/// message field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaError {
    pub code: i16,
    pub message: String,
}

impl KafkaError {
    pub fn new(code: i16, message: impl Into<String>) -> KafkaError {
        KafkaError {
            code,
            message: message.into(),
        }
    }
}

impl From<&BrokerError> for KafkaError {
    fn from(error: &BrokerError) -> KafkaError {
        KafkaError::new(code(error), error.to_string())
    }
}

impl From<BrokerError> for KafkaError {
    fn from(error: BrokerError) -> KafkaError {
        KafkaError::from(&error)
    }
}

/// The Kafka error code for a broker error.
pub fn code(error: &BrokerError) -> i16 {
    match error {
        BrokerError::UnknownTopicOrPartition { .. } | BrokerError::UnknownTopic(_) => {
            UNKNOWN_TOPIC_OR_PARTITION
        }
        BrokerError::NotLeader { .. } => NOT_LEADER_OR_FOLLOWER,
        BrokerError::NotAvailable { .. } => LEADER_NOT_AVAILABLE,
        BrokerError::TransactionsUnsupported => INVALID_REQUEST,
        BrokerError::NotReplica { .. } => NOT_LEADER_OR_FOLLOWER,
        BrokerError::LeaderEpoch { .. } => FENCED_LEADER_EPOCH,
        BrokerError::NotEnoughReplicas { .. } => NOT_ENOUGH_REPLICAS,
        BrokerError::NotEnoughReplicasAfterAppend { .. } => NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        BrokerError::Peer {
            retriable: true, ..
        } => REQUEST_TIMED_OUT,
        BrokerError::Peer { .. } => UNKNOWN_SERVER_ERROR,
        BrokerError::Log(error) => log_code(error),
        BrokerError::Controller(error) => controller_code(error),
    }
}

fn log_code(error: &LogError) -> i16 {
    use runnel_log::BatchError;
    match error {
        LogError::InvalidBatch(BatchError::CrcMismatch { .. }) => CORRUPT_MESSAGE,
        LogError::InvalidBatch(BatchError::MissingKey) => INVALID_RECORD,
        LogError::InvalidBatch(_) => CORRUPT_MESSAGE,
        LogError::BatchTooLarge { .. } => MESSAGE_TOO_LARGE,
        LogError::OffsetOutOfRange { .. } => OFFSET_OUT_OF_RANGE,
        LogError::OutOfOrderSequence { .. } => OUT_OF_ORDER_SEQUENCE_NUMBER,
        LogError::InvalidProducerEpoch { .. } => INVALID_PRODUCER_EPOCH,
        LogError::InvalidTopicName(_) => INVALID_TOPIC_EXCEPTION,
        // Retriable on the client: the partition may come back (reopened, or led elsewhere).
        LogError::Closed | LogError::RoleChanged(_) => NOT_LEADER_OR_FOLLOWER,
        LogError::CorruptSegment { .. }
        | LogError::Io { .. }
        | LogError::Offline { .. }
        | LogError::Remote(_)
        | LogError::DiskFull { .. } => KAFKA_STORAGE_ERROR,
    }
}

fn controller_code(error: &ControllerError) -> i16 {
    match error {
        ControllerError::Rejected(rejected) => match rejected {
            MetadataError::TopicAlreadyExists(_) => TOPIC_ALREADY_EXISTS,
            MetadataError::UnknownTopic(_) => UNKNOWN_TOPIC_OR_PARTITION,
            MetadataError::InvalidTopicName { .. } => INVALID_TOPIC_EXCEPTION,
            MetadataError::InvalidPartitions(_) => INVALID_PARTITIONS,
            MetadataError::InvalidReplicationFactor { .. } => INVALID_REPLICATION_FACTOR,
            MetadataError::InvalidConfig(_) => INVALID_CONFIG,
            MetadataError::UnknownNode(_)
            | MetadataError::InvalidNode { .. }
            | MetadataError::ProducerIdsExhausted
            | MetadataError::UnknownFunction(_)
            | MetadataError::InvalidFunction(_)
            | MetadataError::InvalidIsr { .. } => UNKNOWN_SERVER_ERROR,
            MetadataError::StaleLeader { .. } => FENCED_LEADER_EPOCH,
        },
        ControllerError::NotLeader { .. } => NOT_CONTROLLER,
        ControllerError::Unavailable(_) => REQUEST_TIMED_OUT,
        ControllerError::Storage(_) => UNKNOWN_SERVER_ERROR,
    }
}

/// The Kafka error code for a consumer-group error.
pub fn group_code(error: &GroupServiceError) -> i16 {
    match error {
        GroupServiceError::Group(error) => match error {
            GroupError::UnknownMemberId => UNKNOWN_MEMBER_ID,
            GroupError::IllegalGeneration => ILLEGAL_GENERATION,
            GroupError::RebalanceInProgress => REBALANCE_IN_PROGRESS,
            GroupError::MemberIdRequired => MEMBER_ID_REQUIRED,
            GroupError::InconsistentGroupProtocol => INCONSISTENT_GROUP_PROTOCOL,
            GroupError::InvalidSessionTimeout => INVALID_SESSION_TIMEOUT,
            GroupError::GroupIdNotFound => GROUP_ID_NOT_FOUND,
            GroupError::NonEmptyGroup => NON_EMPTY_GROUP,
            GroupError::InvalidGroupId => INVALID_GROUP_ID,
            GroupError::FencedInstanceId => FENCED_INSTANCE_ID,
        },
        GroupServiceError::Consumer(error) => match error {
            ConsumerGroupError::UnknownMemberId => UNKNOWN_MEMBER_ID,
            ConsumerGroupError::FencedMemberEpoch => FENCED_MEMBER_EPOCH,
            ConsumerGroupError::StaleMemberEpoch => STALE_MEMBER_EPOCH,
            ConsumerGroupError::UnsupportedAssignor(_) => UNSUPPORTED_ASSIGNOR,
            ConsumerGroupError::InvalidRegularExpression(_) => INVALID_REGULAR_EXPRESSION,
            ConsumerGroupError::InvalidRequest(_) => INVALID_REQUEST,
            ConsumerGroupError::ClassicGroup | ConsumerGroupError::GroupIdNotFound => {
                GROUP_ID_NOT_FOUND
            }
            ConsumerGroupError::NonEmptyGroup => NON_EMPTY_GROUP,
            ConsumerGroupError::UnreleasedInstanceId => UNRELEASED_INSTANCE_ID,
        },
        GroupServiceError::NotCoordinator => NOT_COORDINATOR,
        GroupServiceError::Loading => COORDINATOR_LOAD_IN_PROGRESS,
        // The offsets partition cannot take the write right now: retriable for clients.
        GroupServiceError::Broker(_) => COORDINATOR_NOT_AVAILABLE,
    }
}
