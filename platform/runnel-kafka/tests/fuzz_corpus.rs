//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`) through the same entry points the
//! cargo-fuzz targets call, plus seeds generated here: every served request at every
//! served version, and hostile frames (huge array counts, truncations, bit flips). Any
//! panic or abort fails the test run.
//!
//! With `RUNNEL_WRITE_CORPUS=1` the generated seeds are also written into the corpus
//! directories, to start a fuzz run from them.

use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use runnel_kafka::codec;
use runnel_kafka::versions;

/// The same guard the `runnel` binary installs: huge reservations from malformed array
/// counts must not abort the test process either.
#[global_allocator]
static ALLOCATOR: runnel_kafka::alloc::GuardedAllocator = runnel_kafka::alloc::GuardedAllocator;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(corpus_dir(target)) else {
        return Vec::new();
    };
    let mut inputs: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| std::fs::read(e.path()).expect("read a corpus file"))
        .collect();
    inputs.sort();
    inputs
}

/// A default request body for a served api key (an empty but valid message).
fn default_request(key: i16) -> Option<RequestKind> {
    Some(match ApiKey::try_from(key).ok()? {
        ApiKey::Produce => RequestKind::Produce(ProduceRequest::default().with_topic_data(vec![
            produce_request::TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_records(Some(sample_batch())),
                ]),
        ])),
        ApiKey::Fetch => RequestKind::Fetch(FetchRequest::default()),
        ApiKey::ListOffsets => RequestKind::ListOffsets(ListOffsetsRequest::default()),
        ApiKey::Metadata => {
            RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
                metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(TopicName(StrBytes::from_static_str("t")))),
            ])))
        }
        ApiKey::ApiVersions => RequestKind::ApiVersions(ApiVersionsRequest::default()),
        ApiKey::CreateTopics => RequestKind::CreateTopics(CreateTopicsRequest::default()),
        ApiKey::DeleteTopics => RequestKind::DeleteTopics(DeleteTopicsRequest::default()),
        ApiKey::DeleteRecords => RequestKind::DeleteRecords(DeleteRecordsRequest::default()),
        ApiKey::InitProducerId => RequestKind::InitProducerId(InitProducerIdRequest::default()),
        ApiKey::OffsetForLeaderEpoch => {
            RequestKind::OffsetForLeaderEpoch(OffsetForLeaderEpochRequest::default())
        }
        ApiKey::DescribeConfigs => RequestKind::DescribeConfigs(DescribeConfigsRequest::default()),
        ApiKey::AlterConfigs => RequestKind::AlterConfigs(AlterConfigsRequest::default()),
        ApiKey::CreatePartitions => {
            RequestKind::CreatePartitions(CreatePartitionsRequest::default())
        }
        ApiKey::IncrementalAlterConfigs => {
            RequestKind::IncrementalAlterConfigs(IncrementalAlterConfigsRequest::default())
        }
        ApiKey::DescribeCluster => RequestKind::DescribeCluster(DescribeClusterRequest::default()),
        ApiKey::OffsetCommit => RequestKind::OffsetCommit(OffsetCommitRequest::default()),
        ApiKey::OffsetFetch => RequestKind::OffsetFetch(OffsetFetchRequest::default()),
        ApiKey::FindCoordinator => RequestKind::FindCoordinator(FindCoordinatorRequest::default()),
        ApiKey::JoinGroup => RequestKind::JoinGroup(JoinGroupRequest::default()),
        ApiKey::Heartbeat => RequestKind::Heartbeat(HeartbeatRequest::default()),
        ApiKey::LeaveGroup => RequestKind::LeaveGroup(LeaveGroupRequest::default()),
        ApiKey::SyncGroup => RequestKind::SyncGroup(SyncGroupRequest::default()),
        ApiKey::DescribeGroups => RequestKind::DescribeGroups(DescribeGroupsRequest::default()),
        ApiKey::ListGroups => RequestKind::ListGroups(ListGroupsRequest::default()),
        ApiKey::DeleteGroups => RequestKind::DeleteGroups(DeleteGroupsRequest::default()),
        ApiKey::OffsetDelete => RequestKind::OffsetDelete(OffsetDeleteRequest::default()),
        _ => return None,
    })
}

fn sample_batch() -> Bytes {
    runnel_log::BatchBuilder::default()
        .build(&[runnel_log::NewRecord {
            timestamp: 1,
            key: Some(b"k".to_vec()),
            value: Some(b"v".to_vec()),
            headers: vec![("h".to_string(), Some(b"x".to_vec()))],
        }])
        .expect("a batch")
        .freeze()
}

/// Every served request at every served version, as a frame without its length prefix.
fn generated_requests() -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    for (key, min, max) in versions::SUPPORTED {
        let min = if *key == versions::PRODUCE {
            versions::PRODUCE_MIN_SERVED
        } else {
            *min
        };
        for version in min..=*max {
            let Some(body) = default_request(*key) else {
                continue;
            };
            let api = ApiKey::try_from(*key).unwrap();
            let mut frame = BytesMut::new();
            RequestHeader::default()
                .with_request_api_key(*key)
                .with_request_api_version(version)
                .with_correlation_id(version as i32)
                .encode(&mut frame, api.request_header_version(version))
                .unwrap();
            body.encode(&mut frame, version)
                .unwrap_or_else(|e| panic!("encode {api:?} v{version}: {e}"));
            frames.push(frame.to_vec());
        }
    }
    frames
}

fn hostile_requests() -> Vec<Vec<u8>> {
    vec![
        // Metadata v1 claiming 54 million topics in four bytes.
        vec![0, 3, 0, 1, 0, 0, 0, 9, 0, 0, 0x03, 0x3c, 0x0c, 0x00],
        // Metadata v12 with a compact array of 2^32 - 2 topics.
        vec![
            0, 3, 0, 12, 0, 0, 0, 9, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f,
        ],
        // Produce v9 with a huge topic count.
        vec![
            0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f,
        ],
        // Headers cut short, unknown keys, negative lengths.
        vec![0, 3],
        vec![0x7f, 0xff, 0, 0, 0, 0, 0, 0],
        vec![0, 18, 0, 3, 0, 0, 0, 1, 0xff, 0xfe],
    ]
}

fn with_length(frame: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(frame.len() + 4);
    out.put_i32(frame.len() as i32);
    out.extend_from_slice(frame);
    out.to_vec()
}

/// Single-byte corruptions of `input` at a spread of positions, and every truncation.
fn mutations(input: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for cut in 0..input.len() {
        out.push(input[..cut].to_vec());
    }
    for position in (0..input.len()).step_by(3) {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut changed = input.to_vec();
            changed[position] ^= flip;
            out.push(changed);
        }
    }
    out
}

fn write_corpus(target: &str, inputs: &[Vec<u8>]) {
    if std::env::var_os("RUNNEL_WRITE_CORPUS").is_none() {
        return;
    }
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).unwrap();
    for (index, input) in inputs.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{index:04}")), input).unwrap();
    }
}

#[test]
fn the_request_corpus_and_generated_requests_decode_without_panicking() {
    let generated = generated_requests();
    let decoded = generated
        .iter()
        .filter(|frame| codec::decode_one_for_fuzzing(Bytes::copy_from_slice(frame)))
        .count();
    assert_eq!(decoded, generated.len(), "every served version decodes");

    let mut seeds = generated.clone();
    seeds.extend(hostile_requests());
    write_corpus("request", &seeds);
    for input in seeds.iter().chain(corpus("request").iter()) {
        for mutated in mutations(input) {
            codec::decode_one_for_fuzzing(Bytes::from(mutated));
        }
    }
}

#[test]
fn the_frame_corpus_and_generated_streams_decode_without_panicking() {
    let mut streams: Vec<Vec<u8>> = generated_requests()
        .chunks(4)
        .map(|chunk| chunk.iter().flat_map(|f| with_length(f)).collect())
        .collect();
    streams.extend(hostile_requests().iter().map(|f| with_length(f)));
    streams.push((200i32 << 20).to_be_bytes().to_vec());
    streams.push((-1i32).to_be_bytes().to_vec());
    write_corpus("frame", &streams);
    for input in streams.iter().chain(corpus("frame").iter()) {
        codec::decode_stream_for_fuzzing(input);
        for mutated in mutations(input).into_iter().take(400) {
            codec::decode_stream_for_fuzzing(&mutated);
        }
    }
}

#[test]
fn the_record_batch_corpus_validates_without_panicking() {
    let mut batches = vec![sample_batch().to_vec()];
    for compression in [
        runnel_log::Compression::Gzip,
        runnel_log::Compression::Snappy,
        runnel_log::Compression::Lz4,
        runnel_log::Compression::Zstd,
    ] {
        let batch = runnel_log::BatchBuilder {
            compression,
            ..runnel_log::BatchBuilder::default()
        }
        .build(&[runnel_log::NewRecord {
            timestamp: 5,
            key: None,
            value: Some(vec![7; 300]),
            headers: Vec::new(),
        }])
        .unwrap();
        batches.push(batch.to_vec());
    }
    assert_eq!(runnel_log::batch::fuzz_produced_batch(&batches[0]), 1);
    write_corpus("record_batch", &batches);
    for input in batches.iter().chain(corpus("record_batch").iter()) {
        for mutated in mutations(input) {
            runnel_log::batch::fuzz_produced_batch(&mutated);
        }
    }
}
