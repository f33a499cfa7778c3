//! The API versions this broker serves, as ApiVersions advertises them.
//!
//! A hand-written table, shaped like a Kafka 4.x release (clients such as kafka-python guess
//! the broker's version from the set), listing only what is implemented in full. Produce is
//! advertised from version 0 although versions 0–2 are refused when they arrive, as Kafka
//! 4.0 does: old librdkafka (Debian's kcat) looks for Produce v0 before it compresses.

/// `(api key, min version, max version)`.
pub const SUPPORTED: &[(i16, i16, i16)] = &[
    (PRODUCE, 0, 11),
    (FETCH, 4, 16),
    (LIST_OFFSETS, 1, 8),
    (METADATA, 0, 12),
    (API_VERSIONS, 0, 4),
    (CREATE_TOPICS, 2, 7),
    (DELETE_TOPICS, 1, 6),
    (DELETE_RECORDS, 0, 2),
    (INIT_PRODUCER_ID, 0, 5),
    (OFFSET_FOR_LEADER_EPOCH, 2, 4),
    (DESCRIBE_CONFIGS, 1, 4),
    (ALTER_CONFIGS, 0, 2),
    (CREATE_PARTITIONS, 0, 3),
    (INCREMENTAL_ALTER_CONFIGS, 0, 1),
    (DESCRIBE_CLUSTER, 0, 1),
    (OFFSET_COMMIT, 2, 9),
    (OFFSET_FETCH, 1, 9),
    (FIND_COORDINATOR, 0, 4),
    (JOIN_GROUP, 0, 9),
    (HEARTBEAT, 0, 4),
    (LEAVE_GROUP, 0, 5),
    (SYNC_GROUP, 0, 5),
    (DESCRIBE_GROUPS, 0, 5),
    (LIST_GROUPS, 0, 5),
    (DELETE_GROUPS, 0, 2),
    (OFFSET_DELETE, 0, 0),
    (CONSUMER_GROUP_HEARTBEAT, 0, 1),
    (CONSUMER_GROUP_DESCRIBE, 0, 1),
];

pub const PRODUCE: i16 = 0;
pub const FETCH: i16 = 1;
pub const LIST_OFFSETS: i16 = 2;
pub const METADATA: i16 = 3;
pub const OFFSET_COMMIT: i16 = 8;
pub const OFFSET_FETCH: i16 = 9;
pub const FIND_COORDINATOR: i16 = 10;
pub const JOIN_GROUP: i16 = 11;
pub const HEARTBEAT: i16 = 12;
pub const LEAVE_GROUP: i16 = 13;
pub const SYNC_GROUP: i16 = 14;
pub const DESCRIBE_GROUPS: i16 = 15;
pub const LIST_GROUPS: i16 = 16;
pub const DELETE_GROUPS: i16 = 42;
pub const OFFSET_DELETE: i16 = 47;
pub const API_VERSIONS: i16 = 18;
pub const CREATE_TOPICS: i16 = 19;
pub const DELETE_TOPICS: i16 = 20;
pub const DELETE_RECORDS: i16 = 21;
pub const INIT_PRODUCER_ID: i16 = 22;
pub const OFFSET_FOR_LEADER_EPOCH: i16 = 23;
pub const DESCRIBE_CONFIGS: i16 = 32;
pub const ALTER_CONFIGS: i16 = 33;
pub const CREATE_PARTITIONS: i16 = 37;
pub const INCREMENTAL_ALTER_CONFIGS: i16 = 44;
pub const DESCRIBE_CLUSTER: i16 = 60;
pub const CONSUMER_GROUP_HEARTBEAT: i16 = 68;
pub const CONSUMER_GROUP_DESCRIBE: i16 = 69;

/// The oldest Produce version served; older ones are advertised but refused.
pub const PRODUCE_MIN_SERVED: i16 = 3;

/// The advertised range of `api_key`, if it is served at all.
pub fn range(api_key: i16) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(key, _, _)| *key == api_key)
        .map(|(_, min, max)| (*min, *max))
}

/// Whether a request of this key and version is served.
pub fn is_served(api_key: i16, version: i16) -> bool {
    let min_served = |min: i16| {
        if api_key == PRODUCE {
            PRODUCE_MIN_SERVED
        } else {
            min
        }
    };
    range(api_key).is_some_and(|(min, max)| (min_served(min)..=max).contains(&version))
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::ApiKey;

    use super::*;

    #[test]
    fn every_advertised_version_is_one_the_codec_can_decode_and_encode() {
        for (key, min, max) in SUPPORTED {
            let api = ApiKey::try_from(*key).expect("a known api key");
            let (codec_min, codec_max) = crate::codec::codec_range(api);
            let served_min = if *key == PRODUCE {
                PRODUCE_MIN_SERVED
            } else {
                *min
            };
            assert!(
                codec_min <= served_min && *max <= codec_max,
                "{api:?}: served {served_min}..={max}, codec {codec_min}..={codec_max}"
            );
        }
    }

    #[test]
    fn produce_is_advertised_from_zero_but_served_from_three() {
        assert_eq!(range(PRODUCE).unwrap().0, 0);
        assert!(!is_served(PRODUCE, 2));
        assert!(is_served(PRODUCE, 3));
        assert!(!is_served(77, 0));
    }
}
