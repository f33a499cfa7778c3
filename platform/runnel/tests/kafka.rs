//! The Kafka protocol at the byte level, against a real `runnel dev` process: bad input is
//! refused and changes nothing, idempotent retries are written once (also across restarts
//! and crashes), fetches long-poll, and the admin APIs go through the controller.
//!
//! Real clients (kcat, confluent-kafka, kafka-python, kafkajs) are driven by
//! `tests/kafka_clients.rs`; this file speaks the protocol itself so it can send what no
//! well-behaved client would.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::*;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use runnel_log::{BatchBuilder, NewRecord};

const OFFSET_OUT_OF_RANGE: i16 = 1;
const CORRUPT_MESSAGE: i16 = 2;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const MESSAGE_TOO_LARGE: i16 = 10;
const UNSUPPORTED_VERSION: i16 = 35;
const TOPIC_ALREADY_EXISTS: i16 = 36;
const INVALID_CONFIG: i16 = 40;
const INVALID_REQUEST: i16 = 42;
const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;

/// A blocking Kafka connection that speaks one request at a time.
struct Connection {
    stream: TcpStream,
    correlation: i32,
}

impl Connection {
    fn open(address: SocketAddr) -> Connection {
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Connection {
            stream,
            correlation: 0,
        }
    }

    fn send_raw(&mut self, frame: &[u8]) {
        self.stream.write_all(frame).unwrap();
    }

    /// The next response frame's body (after the length), or `None` if the broker closed
    /// the connection.
    fn read_frame(&mut self) -> Option<Bytes> {
        let mut length = [0u8; 4];
        self.stream.read_exact(&mut length).ok()?;
        let mut body = vec![0u8; i32::from_be_bytes(length) as usize];
        self.stream.read_exact(&mut body).ok()?;
        Some(Bytes::from(body))
    }

    /// Whether the broker closed the connection (EOF or reset) rather than answer.
    /// Waiting out the read timeout is not a close.
    fn is_closed_by_broker(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(error) => !matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }

    fn frame<R: Request>(&mut self, request: &R, version: i16) -> BytesMut {
        self.correlation += 1;
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("runnel-test")))
            .encode(&mut frame, R::header_version(version))
            .unwrap();
        request.encode(&mut frame, version).unwrap();
        let length = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&length.to_be_bytes());
        frame
    }

    fn call<R: Request>(&mut self, request: R, version: i16) -> R::Response {
        let frame = self.frame(&request, version);
        self.send_raw(&frame);
        let mut body = self.read_frame().expect("a response");
        let header_version = if R::KEY == ApiVersionsRequest::KEY {
            0
        } else {
            R::Response::header_version(version)
        };
        let header = ResponseHeader::decode(&mut body, header_version).unwrap();
        assert_eq!(header.correlation_id, self.correlation);
        R::Response::decode(&mut body, version).unwrap()
    }
}

fn start(dir: &std::path::Path) -> (Node, SocketAddr) {
    let node = Node::start(dir, &as_strs(&dev_args(&dir.join("data"))));
    let kafka = node.kafka.expect("the banner has a kafka line");
    (node, kafka)
}

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

fn create_topic(conn: &mut Connection, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![
            create_topics_request::CreatableTopic::default()
                .with_name(name(topic))
                .with_num_partitions(partitions)
                .with_replication_factor(1)
                .with_configs(
                    configs
                        .iter()
                        .map(|(k, v)| {
                            create_topics_request::CreatableTopicConfig::default()
                                .with_name(StrBytes::from_string(k.to_string()))
                                .with_value(Some(StrBytes::from_string(v.to_string())))
                        })
                        .collect(),
                ),
        ]);
    let response = conn.call(request, 7);
    assert_eq!(response.topics[0].error_code, 0, "{:?}", response.topics[0]);
}

fn records(values: &[&str]) -> Vec<NewRecord> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| NewRecord {
            timestamp: 1_700_000_000_000 + i as i64,
            key: Some(format!("key-{v}").into_bytes()),
            value: Some(v.as_bytes().to_vec()),
            headers: vec![("h".to_string(), Some(b"1".to_vec()))],
        })
        .collect()
}

fn batch(values: &[&str]) -> Bytes {
    BatchBuilder::default()
        .build(&records(values))
        .unwrap()
        .freeze()
}

fn idempotent_batch(producer_id: i64, sequence: i32, values: &[&str]) -> Bytes {
    BatchBuilder {
        producer_id,
        producer_epoch: 0,
        base_sequence: sequence,
        ..BatchBuilder::default()
    }
    .build(&records(values))
    .unwrap()
    .freeze()
}

/// Produces `records` to one partition; returns (error code, base offset).
fn produce(conn: &mut Connection, topic: &str, partition: i32, records: Bytes) -> (i16, i64) {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![
            produce_request::TopicProduceData::default()
                .with_name(name(topic))
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(records)),
                ]),
        ]);
    let response = conn.call(request, 9);
    let answer = &response.responses[0].partition_responses[0];
    (answer.error_code, answer.base_offset)
}

/// ListOffsets for one partition at `timestamp` (-1 latest, -2 earliest).
fn list_offset(conn: &mut Connection, topic: &str, partition: i32, timestamp: i64) -> (i16, i64) {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![
            list_offsets_request::ListOffsetsTopic::default()
                .with_name(name(topic))
                .with_partitions(vec![
                    list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(partition)
                        .with_timestamp(timestamp),
                ]),
        ]);
    let response = conn.call(request, 7);
    let answer = &response.topics[0].partitions[0];
    (answer.error_code, answer.offset)
}

fn fetch_request(topic: &str, offset: i64, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            fetch_request::FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(vec![
                    fetch_request::FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(offset)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ])
}

/// Fetches partition 0 from `offset`; returns (error code, high watermark, record bytes).
fn fetch(conn: &mut Connection, topic: &str, offset: i64, max_wait_ms: i32) -> (i16, i64, Bytes) {
    let response = conn.call(fetch_request(topic, offset, max_wait_ms), 12);
    let data = &response.responses[0].partitions[0];
    (
        data.error_code,
        data.high_watermark,
        data.records.clone().unwrap_or_default(),
    )
}

fn metadata_topics(conn: &mut Connection) -> Vec<String> {
    let response = conn.call(MetadataRequest::default().with_topics(None), 12);
    // Internal topics (__consumer_offsets) are listed too, marked internal.
    response
        .topics
        .iter()
        .filter(|t| !t.is_internal)
        .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
        .collect()
}

#[test]
fn bad_frames_close_only_their_own_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, kafka) = start(dir.path());
    let mut good = Connection::open(kafka);
    assert!(metadata_topics(&mut good).is_empty());

    // A length prefix above socket.request.max.bytes (100 MiB): refused from the prefix.
    let mut oversized = Connection::open(kafka);
    oversized.send_raw(&(200i32 << 20).to_be_bytes());
    assert!(oversized.is_closed_by_broker());

    // A negative length.
    let mut negative = Connection::open(kafka);
    negative.send_raw(&(-1i32).to_be_bytes());
    assert!(negative.is_closed_by_broker());

    // Metadata v1 whose topic array claims 54 million entries in a few bytes: the decoder
    // reserves gigabytes for it, which must neither abort the process nor be answered.
    let mut huge_array = Connection::open(kafka);
    huge_array.send_raw(&[
        0, 0, 0, 14, 0, 3, 0, 1, 0, 0, 0, 9, 0, 0, 0x03, 0x3c, 0x0c, 0x00,
    ]);
    assert!(huge_array.is_closed_by_broker());
    // The same with a flexible (compact) array at the largest count a varint can hold.
    let mut huge_compact = Connection::open(kafka);
    let mut frame = vec![0, 3, 0, 12, 0, 0, 0, 9, 0, 0, 0];
    frame.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    let mut framed = (frame.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&frame);
    huge_compact.send_raw(&framed);
    assert!(huge_compact.is_closed_by_broker());

    // A truncated request header.
    let mut truncated = Connection::open(kafka);
    truncated.send_raw(&[0, 0, 0, 3, 0, 3, 0]);
    assert!(truncated.is_closed_by_broker());

    // A frame cut short by the client: nothing to answer, nothing breaks.
    let mut cut = Connection::open(kafka);
    cut.send_raw(&[0, 0, 0, 50, 0, 3]);
    drop(cut);

    // The first connection, and new ones, still work.
    assert!(metadata_topics(&mut good).is_empty());
    let mut fresh = Connection::open(kafka);
    assert!(metadata_topics(&mut fresh).is_empty());
}

#[test]
fn unknown_api_keys_and_versions_get_unsupported_version() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, kafka) = start(dir.path());
    let mut conn = Connection::open(kafka);

    // Api key 999 does not exist: header, then UNSUPPORTED_VERSION.
    conn.send_raw(&[0, 0, 0, 10, 0x03, 0xe7, 0, 0, 0, 0, 0, 77, 0xff, 0xff]);
    let mut answer = conn.read_frame().expect("an answer");
    assert_eq!(answer.get_i32(), 77);
    assert_eq!(answer.get_i16(), UNSUPPORTED_VERSION);

    // Produce v2 is advertised (for old librdkafka) but refused.
    conn.send_raw(&[0, 0, 0, 10, 0, 0, 0, 2, 0, 0, 0, 78, 0xff, 0xff]);
    let mut answer = conn.read_frame().expect("an answer");
    assert_eq!(answer.get_i32(), 78);
    assert_eq!(answer.get_i16(), UNSUPPORTED_VERSION);

    // ApiVersions at a version from the future: a v0 answer listing what is served.
    conn.send_raw(&[0, 0, 0, 10, 0, 18, 0, 99, 0, 0, 0, 79, 0xff, 0xff]);
    let mut answer = conn.read_frame().expect("an answer");
    assert_eq!(answer.get_i32(), 79);
    let versions = ApiVersionsResponse::decode(&mut answer, 0).unwrap();
    assert_eq!(versions.error_code, UNSUPPORTED_VERSION);
    let produce = versions.api_keys.iter().find(|k| k.api_key == 0).unwrap();
    assert_eq!(produce.min_version, 0);

    // The connection is still usable, and ApiVersions v3 answers normally.
    let versions = conn.call(ApiVersionsRequest::default(), 3);
    assert_eq!(versions.error_code, 0);
    assert!(versions.api_keys.iter().any(|k| k.api_key == 1));
}

#[test]
fn refused_batches_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, kafka) = start(dir.path());
    let mut conn = Connection::open(kafka);
    create_topic(&mut conn, "strict", 1, &[("max.message.bytes", "2000")]);

    // A flipped byte in the records: the CRC no longer matches.
    let mut corrupt = BytesMut::from(&batch(&["a", "b"])[..]);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert_eq!(
        produce(&mut conn, "strict", 0, corrupt.freeze()).0,
        CORRUPT_MESSAGE
    );
    // Larger than the topic's max.message.bytes.
    let big = "x".repeat(3000);
    assert_eq!(
        produce(&mut conn, "strict", 0, batch(&[&big])).0,
        MESSAGE_TOO_LARGE
    );
    // Two batches, the second truncated: neither is written.
    let mut two = BytesMut::from(&batch(&["c"])[..]);
    two.extend_from_slice(&batch(&["d"])[..20]);
    assert_eq!(
        produce(&mut conn, "strict", 0, two.freeze()).0,
        CORRUPT_MESSAGE
    );
    // A transactional batch: transactions are not supported yet.
    let mut transactional = BytesMut::from(&batch(&["t"])[..]);
    let attributes = i16::from_be_bytes([transactional[21], transactional[22]]) | 0x10;
    transactional[21..23].copy_from_slice(&attributes.to_be_bytes());
    let crc = crc32c(&transactional[21..]);
    transactional[17..21].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(
        produce(&mut conn, "strict", 0, transactional.freeze()).0,
        INVALID_REQUEST
    );
    // Unknown topics and partitions (a produce never creates a topic).
    assert_eq!(
        produce(&mut conn, "nowhere", 0, batch(&["e"])).0,
        UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(
        produce(&mut conn, "strict", 7, batch(&["f"])).0,
        UNKNOWN_TOPIC_OR_PARTITION
    );

    assert_eq!(list_offset(&mut conn, "strict", 0, -1), (0, 0));
    let (code, high_watermark, bytes) = fetch(&mut conn, "strict", 0, 0);
    assert_eq!((code, high_watermark, bytes.len()), (0, 0, 0));
    // A good batch still goes in at offset 0; a fetch beyond the end is out of range.
    assert_eq!(produce(&mut conn, "strict", 0, batch(&["g", "h"])), (0, 0));
    assert_eq!(fetch(&mut conn, "strict", 5, 0).0, OFFSET_OUT_OF_RANGE);
    let (code, high_watermark, bytes) = fetch(&mut conn, "strict", 0, 0);
    assert_eq!((code, high_watermark), (0, 2));
    // Served as sent, but for the base offset and leader epoch the log stamps.
    assert_eq!(&bytes[16..], &batch(&["g", "h"])[16..]);
}

/// An acks=0 produce gets no response; one that fails closes its connection, which is how
/// the producer learns of it (as in Kafka). A good one leaves the connection open.
#[test]
fn a_failed_acks_zero_produce_closes_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, kafka) = start(dir.path());
    let mut conn = Connection::open(kafka);
    create_topic(&mut conn, "quiet", 1, &[]);

    let fire_and_forget = |topic: &str, records: Bytes| {
        ProduceRequest::default()
            .with_acks(0)
            .with_timeout_ms(5000)
            .with_topic_data(vec![
                produce_request::TopicProduceData::default()
                    .with_name(name(topic))
                    .with_partition_data(vec![
                        produce_request::PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(records)),
                    ]),
            ])
    };
    let frame = conn.frame(&fire_and_forget("quiet", batch(&["a", "b"])), 9);
    conn.send_raw(&frame);
    // The next request's answer is the first frame back: the produce got none. The
    // produce is queued on the partition's writer before the next request is read, but
    // it lands (a partition's first append records its leader epoch, durably, first) on
    // the writer's thread: look until it shows.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while list_offset(&mut conn, "quiet", 0, -1) != (0, 2) {
        assert!(
            std::time::Instant::now() < deadline,
            "the acks=0 batch never landed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let frame = conn.frame(&fire_and_forget("nowhere", batch(&["c"])), 9);
    conn.send_raw(&frame);
    assert!(conn.is_closed_by_broker());

    let mut other = Connection::open(kafka);
    assert_eq!(list_offset(&mut other, "quiet", 0, -1), (0, 2));
}

fn crc32c(bytes: &[u8]) -> u32 {
    // CRC-32C (Castagnoli), bitwise: small and enough for a test.
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn init_producer_id(conn: &mut Connection) -> i64 {
    let response = conn.call(
        InitProducerIdRequest::default()
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
        4,
    );
    assert_eq!(response.error_code, 0);
    response.producer_id.0
}

#[test]
fn idempotent_retries_are_written_once_across_restarts_and_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let (node, kafka) = start(dir.path());
    let mut conn = Connection::open(kafka);
    create_topic(&mut conn, "idem", 1, &[]);
    let producer = init_producer_id(&mut conn);
    assert_ne!(producer, init_producer_id(&mut conn), "ids are unique");

    let first = idempotent_batch(producer, 0, &["a", "b", "c"]);
    assert_eq!(produce(&mut conn, "idem", 0, first.clone()), (0, 0));
    assert_eq!(
        produce(&mut conn, "idem", 0, first.clone()),
        (0, 0),
        "a retry"
    );
    assert_eq!(
        produce(&mut conn, "idem", 0, idempotent_batch(producer, 5, &["x"])).0,
        OUT_OF_ORDER_SEQUENCE_NUMBER
    );
    let second = idempotent_batch(producer, 3, &["d"]);
    assert_eq!(produce(&mut conn, "idem", 0, second.clone()), (0, 3));
    assert_eq!(list_offset(&mut conn, "idem", 0, -1), (0, 4));

    // A clean restart keeps the producer state (snapshot at close).
    drop(conn);
    let mut node = node;
    node.signal(libc::SIGTERM);
    assert!(node.wait_for_exit().success());
    let (node, kafka) = start(dir.path());
    let mut conn = Connection::open(kafka);
    assert_eq!(produce(&mut conn, "idem", 0, second.clone()), (0, 3));
    let third = idempotent_batch(producer, 4, &["e", "f"]);
    assert_eq!(produce(&mut conn, "idem", 0, third.clone()), (0, 4));

    // A crash keeps it too (replayed from the log after the last snapshot).
    drop(conn);
    let mut node = node;
    node.signal(libc::SIGKILL);
    node.wait_for_exit();
    let (_node, kafka) = start(dir.path());
    let mut conn = Connection::open(kafka);
    assert_eq!(produce(&mut conn, "idem", 0, third), (0, 4));
    assert_eq!(
        produce(&mut conn, "idem", 0, idempotent_batch(producer, 0, &["z"])).0,
        OUT_OF_ORDER_SEQUENCE_NUMBER,
        "an old sequence no longer among the last five batches is not a duplicate"
    );
    assert_eq!(list_offset(&mut conn, "idem", 0, -1), (0, 6));
}

#[test]
fn a_fetch_waits_for_data_and_returns_when_it_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, kafka) = start(dir.path());
    let mut conn = Connection::open(kafka);
    create_topic(&mut conn, "poll", 1, &[]);

    // Nothing there: the fetch waits max_wait_ms and returns empty.
    let (code, _, bytes) = fetch(&mut conn, "poll", 0, 100);
    assert_eq!((code, bytes.len()), (0, 0));

    // A long poll (30 s) answered by a produce on another connection.
    let waiter = std::thread::spawn(move || fetch(&mut conn, "poll", 0, 30_000));
    std::thread::sleep(Duration::from_millis(200));
    let mut producer = Connection::open(kafka);
    assert_eq!(produce(&mut producer, "poll", 0, batch(&["wake"])), (0, 0));
    let (code, high_watermark, bytes) = waiter.join().unwrap();
    assert_eq!((code, high_watermark), (0, 1));
    assert!(!bytes.is_empty());
}

#[test]
fn topics_are_administered_through_the_controller() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, kafka) = start(dir.path());
    let mut conn = Connection::open(kafka);

    // validate_only checks without creating.
    let validate = CreateTopicsRequest::default()
        .with_validate_only(true)
        .with_topics(vec![
            create_topics_request::CreatableTopic::default()
                .with_name(name("checked"))
                .with_num_partitions(3)
                .with_replication_factor(1),
        ]);
    assert_eq!(conn.call(validate, 7).topics[0].error_code, 0);
    assert!(metadata_topics(&mut conn).is_empty());

    create_topic(&mut conn, "admin", 2, &[("retention.ms", "60000")]);
    let again = CreateTopicsRequest::default().with_topics(vec![
        create_topics_request::CreatableTopic::default()
            .with_name(name("admin"))
            .with_num_partitions(2)
            .with_replication_factor(1),
    ]);
    assert_eq!(
        conn.call(again, 7).topics[0].error_code,
        TOPIC_ALREADY_EXISTS
    );

    // Metadata: the topic with its id and a leader for every partition.
    let metadata = conn.call(
        MetadataRequest::default().with_topics(Some(vec![
            metadata_request::MetadataRequestTopic::default().with_name(Some(name("admin"))),
        ])),
        12,
    );
    let topic = &metadata.topics[0];
    assert_eq!(topic.error_code, 0);
    assert!(!topic.topic_id.is_nil());
    assert_eq!(topic.partitions.len(), 2);
    assert!(topic.partitions.iter().all(|p| p.leader_id.0 == 1));
    assert_eq!(metadata.brokers.len(), 1);

    // Configs: describe, then alter incrementally, then with a bad value.
    let describe = |conn: &mut Connection| {
        let response = conn.call(
            DescribeConfigsRequest::default().with_resources(vec![
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("admin")),
            ]),
            4,
        );
        response.results[0]
            .configs
            .iter()
            .map(|c| {
                (
                    c.name.to_string(),
                    c.value.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    assert_eq!(describe(&mut conn)["retention.ms"], "60000");
    assert_eq!(describe(&mut conn)["cleanup.policy"], "delete");
    let alter = |conn: &mut Connection, value: &str| {
        let response = conn.call(
            IncrementalAlterConfigsRequest::default().with_resources(vec![
                incremental_alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("admin"))
                    .with_configs(vec![
                        incremental_alter_configs_request::AlterableConfig::default()
                            .with_name(StrBytes::from_static_str("retention.ms"))
                            .with_config_operation(0)
                            .with_value(Some(StrBytes::from_string(value.to_string()))),
                    ]),
            ]),
            1,
        );
        response.responses[0].error_code
    };
    assert_eq!(alter(&mut conn, "120000"), 0);
    assert_eq!(describe(&mut conn)["retention.ms"], "120000");
    assert_eq!(alter(&mut conn, "soon"), INVALID_CONFIG);
    assert_eq!(describe(&mut conn)["retention.ms"], "120000");

    // More partitions.
    let grow = CreatePartitionsRequest::default().with_topics(vec![
        create_partitions_request::CreatePartitionsTopic::default()
            .with_name(name("admin"))
            .with_count(4),
    ]);
    assert_eq!(conn.call(grow, 3).results[0].error_code, 0);
    wait_until(
        || {
            let mut conn = Connection::open(kafka);
            list_offset(&mut conn, "admin", 3, -1) == (0, 0)
        },
        "partition 3 serves",
    );

    // DeleteRecords moves the log start; earlier offsets are then out of range.
    assert_eq!(produce(&mut conn, "admin", 0, batch(&["a", "b", "c"])).0, 0);
    let delete = DeleteRecordsRequest::default().with_topics(vec![
        delete_records_request::DeleteRecordsTopic::default()
            .with_name(name("admin"))
            .with_partitions(vec![
                delete_records_request::DeleteRecordsPartition::default()
                    .with_partition_index(0)
                    .with_offset(2),
            ]),
    ]);
    let deleted = conn.call(delete, 2);
    assert_eq!(deleted.topics[0].partitions[0].low_watermark, 2);
    assert_eq!(list_offset(&mut conn, "admin", 0, -2), (0, 2));
    assert_eq!(fetch(&mut conn, "admin", 1, 0).0, OFFSET_OUT_OF_RANGE);

    // Delete the topic.
    let delete = DeleteTopicsRequest::default().with_topic_names(vec![name("admin")]);
    assert_eq!(conn.call(delete, 5).responses[0].error_code, 0);
    assert!(metadata_topics(&mut conn).is_empty());
    let delete = DeleteTopicsRequest::default().with_topic_names(vec![name("admin")]);
    assert_eq!(
        conn.call(delete, 5).responses[0].error_code,
        UNKNOWN_TOPIC_OR_PARTITION
    );
}

#[test]
fn only_the_first_partition_with_data_may_exceed_its_byte_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, kafka) = start(dir.path());
    let mut conn = Connection::open(kafka);
    create_topic(&mut conn, "limits", 2, &[]);
    assert_eq!(produce(&mut conn, "limits", 0, batch(&["a", "b"])).0, 0);
    assert_eq!(produce(&mut conn, "limits", 1, batch(&["c", "d"])).0, 0);
    let partition = |index| {
        fetch_request::FetchPartition::default()
            .with_partition(index)
            .with_fetch_offset(0)
            .with_partition_max_bytes(10)
    };
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            fetch_request::FetchTopic::default()
                .with_topic(name("limits"))
                .with_partitions(vec![partition(0), partition(1)]),
        ]);
    let response = conn.call(request, 12);
    let partitions = &response.responses[0].partitions;
    let records = |i: usize| partitions[i].records.clone().unwrap_or_default().len();
    assert!(records(0) > 10, "the first batch is returned whole");
    assert_eq!(records(1), 0, "later partitions keep to their limit");
    assert_eq!(partitions[1].high_watermark, 2);
}

fn commit_offset(conn: &mut Connection, group: &str, topic: &str, offset: i64) -> i16 {
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(name(topic))
                .with_partitions(vec![
                    offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(offset)
                        .with_committed_metadata(Some(StrBytes::from_static_str("note"))),
                ]),
        ]);
    conn.call(request, 8).topics[0].partitions[0].error_code
}

fn fetch_offset(conn: &mut Connection, group: &str, topic: &str) -> (i64, String) {
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_topics(Some(vec![
            offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(name(topic))
                .with_partition_indexes(vec![0]),
        ]));
    let response = conn.call(request, 7);
    // While the coordinator loads, the answer is only a top-level error.
    let Some(partition) = response.topics.first().and_then(|t| t.partitions.first()) else {
        return (-2, format!("error {}", response.error_code));
    };
    (
        partition.committed_offset,
        partition
            .metadata
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default(),
    )
}

#[test]
fn committed_offsets_survive_a_restart_and_group_errors_are_kafkas() {
    let dir = tempfile::tempdir().unwrap();
    let (node, kafka) = start(dir.path());
    let mut conn = Connection::open(kafka);
    create_topic(&mut conn, "tracked", 1, &[]);
    // The first group request makes the node create and load __consumer_offsets; until it
    // has, OffsetFetch v1 (no top-level error code yet) carries the error on each partition
    // rather than answering "nothing committed".
    let loading = conn.call(
        OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g1")))
            .with_topics(Some(vec![
                offset_fetch_request::OffsetFetchRequestTopic::default()
                    .with_name(name("tracked"))
                    .with_partition_indexes(vec![0]),
            ])),
        1,
    );
    let partition = &loading.topics[0].partitions[0];
    assert_eq!((partition.error_code, partition.committed_offset), (14, -1));
    // The coordinator loads in the background: retry while it is not ready.
    wait_until(
        || commit_offset(&mut Connection::open(kafka), "g1", "tracked", 5) == 0,
        "a commit is accepted",
    );
    assert_eq!(commit_offset(&mut conn, "g1", "tracked", 7), 0);
    // A name no topic can have is refused, not stored under a mangled key.
    assert_eq!(commit_offset(&mut conn, "g1", "no/such topic", 1), 3);
    assert_eq!(
        fetch_offset(&mut conn, "g1", "tracked"),
        (7, "note".to_string())
    );
    assert_eq!(fetch_offset(&mut conn, "nobody", "tracked").0, -1);

    // Lag (log end minus committed) is in /metrics.
    let values: Vec<String> = (0..10).map(|i| format!("v{i}")).collect();
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    assert_eq!(produce(&mut conn, "tracked", 0, batch(&values)).0, 0);
    let metrics = node.get("/metrics").body;
    assert!(
        metrics.contains("runnel_group_lag{group=\"g1\",topic=\"tracked\",partition=\"0\"} 3\n"),
        "{metrics}"
    );

    // FindCoordinator names this node.
    let found = conn.call(
        FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("g1")),
        3,
    );
    assert_eq!((found.error_code, found.node_id.0), (0, 1));

    // A first JoinGroup (v4+) gets MEMBER_ID_REQUIRED with the id to use; a heartbeat from
    // a stranger gets UNKNOWN_MEMBER_ID.
    let join = conn.call(
        JoinGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g2")))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(10_000)
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![
                join_group_request::JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str("range")),
            ]),
        7,
    );
    assert_eq!(join.error_code, 79);
    assert!(!join.member_id.is_empty());
    let heartbeat = conn.call(
        HeartbeatRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g2")))
            .with_member_id(StrBytes::from_static_str("stranger"))
            .with_generation_id(1),
        4,
    );
    assert_eq!(heartbeat.error_code, 25);

    // OffsetDelete removes a memberless group's offset (a tombstone in the offsets topic).
    assert_eq!(commit_offset(&mut conn, "g3", "tracked", 4), 0);
    let deleted = conn.call(
        OffsetDeleteRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g3")))
            .with_topics(vec![
                offset_delete_request::OffsetDeleteRequestTopic::default()
                    .with_name(name("tracked"))
                    .with_partitions(vec![
                        offset_delete_request::OffsetDeleteRequestPartition::default()
                            .with_partition_index(0),
                    ]),
            ]),
        0,
    );
    assert_eq!(deleted.error_code, 0);
    assert_eq!(deleted.topics[0].partitions[0].error_code, 0);
    assert_eq!(fetch_offset(&mut conn, "g3", "tracked").0, -1);

    // The offsets are in __consumer_offsets: a restart reads them back.
    drop(conn);
    let mut node = node;
    node.signal(libc::SIGTERM);
    assert!(node.wait_for_exit().success());
    let (_node, kafka) = start(dir.path());
    wait_until(
        || fetch_offset(&mut Connection::open(kafka), "g1", "tracked").0 == 7,
        "the committed offset is back after the restart",
    );
    assert_eq!(
        fetch_offset(&mut Connection::open(kafka), "g3", "tracked").0,
        -1,
        "a deleted offset stays deleted"
    );
}

/// A JoinGroup (v7) of the classic protocol with a 30 s session, as a range consumer.
fn classic_join(conn: &mut Connection, group: &str, member: &str) -> JoinGroupResponse {
    conn.call(
        JoinGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_session_timeout_ms(30_000)
            .with_rebalance_timeout_ms(30_000)
            .with_member_id(StrBytes::from_string(member.to_string()))
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![
                join_group_request::JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str("range"))
                    .with_metadata(Bytes::from_static(b"subscription")),
            ]),
        7,
    )
}

/// The SyncGroup of a group's only member, its leader, assigning itself "all of it".
fn sync_alone(
    conn: &mut Connection,
    group: &str,
    generation: i32,
    member: &str,
) -> SyncGroupResponse {
    conn.call(
        SyncGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_generation_id(generation)
            .with_member_id(StrBytes::from_string(member.to_string()))
            .with_assignments(vec![
                sync_group_request::SyncGroupRequestAssignment::default()
                    .with_member_id(StrBytes::from_string(member.to_string()))
                    .with_assignment(Bytes::from_static(b"all of it")),
            ]),
        5,
    )
}

fn listed_groups(kafka: SocketAddr) -> Vec<String> {
    let listed = Connection::open(kafka).call(ListGroupsRequest::default(), 5);
    assert_eq!(listed.error_code, 0);
    listed
        .groups
        .iter()
        .map(|g| g.group_id.to_string())
        .collect()
}

/// offsets.retention.minutes at its smallest (1) and a fast check: an empty group without
/// offsets is forgotten at the next check, one with offsets keeps them for the retention
/// and then loses them, and a restart brings neither back. Takes a minute of waiting.
#[test]
fn empty_groups_are_forgotten_and_their_offsets_expire() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = dev_args(&dir.path().join("data"));
    for setting in [
        "broker.offsets_retention_minutes=1",
        "broker.offsets_retention_check_interval_ms=200",
        "broker.group_initial_rebalance_delay_ms=0",
    ] {
        args.extend(["--set".to_string(), setting.to_string()]);
    }
    let node = Node::start(dir.path(), &as_strs(&args));
    let kafka = node.kafka.expect("the banner has a kafka line");
    let mut conn = Connection::open(kafka);
    create_topic(&mut conn, "aging", 1, &[]);
    wait_until(
        || commit_offset(&mut Connection::open(kafka), "idle", "aging", 5) == 0,
        "a commit is accepted",
    );
    let committed_at = std::time::Instant::now();

    // "ghost" gets a member, which leaves without committing anything.
    let group = || GroupId(StrBytes::from_static_str("ghost"));
    let join = |conn: &mut Connection, member: &str| classic_join(conn, "ghost", member);
    let first = join(&mut conn, "");
    assert_eq!(first.error_code, 79);
    let joined = join(&mut conn, &first.member_id.to_string());
    assert_eq!(joined.error_code, 0);
    let member = joined.member_id.to_string();
    let synced = sync_alone(&mut conn, "ghost", joined.generation_id, &member);
    assert_eq!(synced.error_code, 0);
    assert!(listed_groups(kafka).contains(&"ghost".to_string()));
    let left = conn.call(
        LeaveGroupRequest::default()
            .with_group_id(group())
            .with_members(vec![
                leave_group_request::MemberIdentity::default()
                    .with_member_id(StrBytes::from_string(member)),
            ]),
        3,
    );
    assert_eq!(left.error_code, 0);
    wait_until(
        || !listed_groups(kafka).contains(&"ghost".to_string()),
        "the empty group without offsets is forgotten",
    );
    // Still within the retention: the memberless group keeps its offset.
    assert_eq!(fetch_offset(&mut conn, "idle", "aging").0, 5);
    assert!(committed_at.elapsed() < Duration::from_secs(50));

    let deadline = committed_at + Duration::from_secs(90);
    while fetch_offset(&mut Connection::open(kafka), "idle", "aging").0 != -1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the offset of an empty group did not expire"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        committed_at.elapsed() >= Duration::from_secs(60),
        "expired before offsets.retention.minutes"
    );

    drop(conn);
    let mut node = node;
    node.signal(libc::SIGTERM);
    assert!(node.wait_for_exit().success());
    let node = Node::start(dir.path(), &as_strs(&args));
    let kafka = node.kafka.expect("the banner has a kafka line");
    wait_until(
        || fetch_offset(&mut Connection::open(kafka), "idle", "aging").0 == -1,
        "the coordinator is back",
    );
    let listed = listed_groups(kafka);
    assert!(
        !listed.contains(&"ghost".to_string()) && !listed.contains(&"idle".to_string()),
        "{listed:?}"
    );
}

#[test]
fn a_stable_group_survives_a_restart_without_a_rebalance() {
    let dir = tempfile::tempdir().unwrap();
    let (node, kafka) = start(dir.path());
    let group = || GroupId(StrBytes::from_static_str("steady"));
    let join = |conn: &mut Connection, member: &str| classic_join(conn, "steady", member);
    let mut conn = Connection::open(kafka);
    // The coordinator loads in the background; MEMBER_ID_REQUIRED once it is ready.
    let mut first = join(&mut conn, "");
    while first.error_code != 79 {
        std::thread::sleep(Duration::from_millis(50));
        first = join(&mut conn, "");
    }
    let joined = join(&mut conn, &first.member_id.to_string());
    assert_eq!((joined.error_code, joined.generation_id), (0, 1));
    let member = joined.member_id.to_string();
    let synced = sync_alone(&mut conn, "steady", 1, &member);
    assert_eq!(synced.error_code, 0);
    assert_eq!(&synced.assignment[..], b"all of it");

    drop(conn);
    let mut node = node;
    node.signal(libc::SIGTERM);
    assert!(node.wait_for_exit().success());
    let (_node, kafka) = start(dir.path());
    let heartbeat = |conn: &mut Connection| {
        conn.call(
            HeartbeatRequest::default()
                .with_group_id(group())
                .with_member_id(StrBytes::from_string(member.clone()))
                .with_generation_id(1),
            4,
        )
        .error_code
    };
    let mut conn = Connection::open(kafka);
    let mut code = heartbeat(&mut conn);
    while code == 14 {
        // COORDINATOR_LOAD_IN_PROGRESS
        std::thread::sleep(Duration::from_millis(50));
        code = heartbeat(&mut conn);
    }
    assert_eq!(
        code, 0,
        "the member and its generation are known after the restart"
    );
    let described = conn.call(
        DescribeGroupsRequest::default().with_groups(vec![group()]),
        5,
    );
    let described = &described.groups[0];
    assert_eq!(described.group_state.as_str(), "Stable");
    assert_eq!(&described.members[0].member_assignment[..], b"all of it");
}

/// A consumer-protocol (KIP-848) group is stored in `__consumer_offsets`: after a restart
/// its member carries on at its epoch with its assignment, without rejoining.
#[test]
fn a_consumer_protocol_group_survives_a_restart() {
    const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    const GROUP_ID_NOT_FOUND: i16 = 69;
    const FENCED_MEMBER_EPOCH: i16 = 110;
    let dir = tempfile::tempdir().unwrap();
    let (node, kafka) = start(dir.path());
    let mut conn = Connection::open(kafka);
    create_topic(&mut conn, "kip848", 2, &[]);
    let topic_id = conn
        .call(
            MetadataRequest::default().with_topics(Some(vec![
                metadata_request::MetadataRequestTopic::default().with_name(Some(name("kip848"))),
            ])),
            12,
        )
        .topics[0]
        .topic_id;
    let group = || GroupId(StrBytes::from_static_str("next-gen"));
    let heartbeat = |conn: &mut Connection, epoch: i32, owned: Option<Vec<i32>>| {
        let mut request = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(group())
            .with_member_id(StrBytes::from_static_str("member-one"))
            .with_member_epoch(epoch)
            .with_rebalance_timeout_ms(if epoch == 0 { 30_000 } else { -1 })
            .with_topic_partitions(owned.map(|partitions| {
                vec![
                    consumer_group_heartbeat_request::TopicPartitions::default()
                        .with_topic_id(topic_id)
                        .with_partitions(partitions),
                ]
            }));
        if epoch == 0 {
            request = request.with_subscribed_topic_names(Some(vec![name("kip848")]));
        }
        let mut answer = conn.call(request.clone(), 1);
        while answer.error_code == COORDINATOR_LOAD_IN_PROGRESS {
            std::thread::sleep(Duration::from_millis(50));
            answer = conn.call(request.clone(), 1);
        }
        answer
    };
    let partitions_of = |answer: &ConsumerGroupHeartbeatResponse| {
        answer.assignment.as_ref().map(|a| {
            let mut all: Vec<i32> = a
                .topic_partitions
                .iter()
                .inspect(|t| assert_eq!(t.topic_id, topic_id))
                .flat_map(|t| t.partitions.clone())
                .collect();
            all.sort();
            all
        })
    };
    let joined = heartbeat(&mut conn, 0, Some(vec![]));
    assert_eq!((joined.error_code, joined.member_epoch), (0, 1));
    assert_eq!(partitions_of(&joined), Some(vec![0, 1]));

    // The group is the consumer protocol's: the classic APIs do not take it.
    let classic_join = conn.call(
        JoinGroupRequest::default()
            .with_group_id(group())
            .with_session_timeout_ms(30_000)
            .with_rebalance_timeout_ms(30_000)
            .with_member_id(StrBytes::from_static_str("someone"))
            .with_protocol_type(StrBytes::from_static_str("consumer")),
        7,
    );
    assert_eq!(classic_join.error_code, INCONSISTENT_GROUP_PROTOCOL);
    let described = conn.call(
        DescribeGroupsRequest::default().with_groups(vec![group()]),
        5,
    );
    assert_eq!(described.groups[0].error_code, GROUP_ID_NOT_FOUND);
    let listed = conn.call(ListGroupsRequest::default(), 5);
    let listed = listed
        .groups
        .iter()
        .find(|g| g.group_id == group())
        .expect("the group is listed");
    assert_eq!(
        (listed.group_type.as_str(), listed.group_state.as_str()),
        ("consumer", "Stable")
    );

    drop(conn);
    let mut node = node;
    node.signal(libc::SIGTERM);
    assert!(node.wait_for_exit().success());
    let (_node, kafka) = start(dir.path());
    let mut conn = Connection::open(kafka);
    let again = heartbeat(&mut conn, 1, Some(vec![0, 1]));
    assert_eq!(
        (again.error_code, again.member_epoch, partitions_of(&again)),
        (0, 1, Some(vec![0, 1])),
        "the member carries on at its epoch with the same assignment (sent again, as what \
         it was told is not stored): {again:?}"
    );
    let described = conn.call(
        ConsumerGroupDescribeRequest::default().with_group_ids(vec![group()]),
        1,
    );
    let described = &described.groups[0];
    assert_eq!(
        (
            described.error_code,
            described.group_state.as_str(),
            described.group_epoch,
            described.assignor_name.as_str()
        ),
        (0, "Stable", 1, "uniform")
    );
    assert_eq!(described.members.len(), 1);
    assert_eq!(
        described.members[0].assignment.topic_partitions[0]
            .partitions
            .len(),
        2
    );
    let fenced = heartbeat(&mut conn, 7, None);
    assert_eq!(fenced.error_code, FENCED_MEMBER_EPOCH);
}

#[test]
fn a_partition_led_by_another_node_gets_not_leader_or_follower() {
    let (mut cluster, leaders) = two_brokers_with_topic("elsewhere", 2);
    let remote = leaders
        .iter()
        .position(|leader| *leader == 2)
        .expect("a partition led by node 2") as i32;
    let mut conn = Connection::open(cluster.node(1).kafka.expect("a kafka line"));
    assert_eq!(produce(&mut conn, "elsewhere", remote, batch(&["x"])).0, 6);
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            fetch_request::FetchTopic::default()
                .with_topic(name("elsewhere"))
                .with_partitions(vec![
                    fetch_request::FetchPartition::default()
                        .with_partition(remote)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let response = conn.call(request, 12);
    assert_eq!(response.responses[0].partitions[0].error_code, 6);
    // Metadata names node 2 as the leader, at its own Kafka address.
    let metadata = conn.call(
        MetadataRequest::default().with_topics(Some(vec![
            metadata_request::MetadataRequestTopic::default().with_name(Some(name("elsewhere"))),
        ])),
        12,
    );
    let leader = metadata.topics[0].partitions[remote as usize].leader_id.0;
    assert_eq!(leader, 2);
    let broker = metadata.brokers.iter().find(|b| b.node_id.0 == 2).unwrap();
    assert_eq!(
        broker.port,
        i32::from(cluster.node(2).kafka.unwrap().port())
    );
    cluster.stop_all();
}
