//! The public gRPC API (`runnel.v1`) against a real `runnel dev` process, through the
//! client code tonic generates from `schemas/proto`: produce and read back, the stream
//! forms, admin, groups with lag, health and reflection, and the errors callers rely on.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use runnel_grpc::api::pb;
use runnel_grpc::api::pb::admin_client::AdminClient;
use runnel_grpc::api::pb::consumer_client::ConsumerClient;
use runnel_grpc::api::pb::producer_client::ProducerClient;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

struct Clients {
    channel: Channel,
    producer: ProducerClient<Channel>,
    consumer: ConsumerClient<Channel>,
    admin: AdminClient<Channel>,
}

async fn connect(node: &Node) -> Clients {
    let address = node.grpc.expect("the banner has a grpc line");
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the grpc api");
    Clients {
        producer: ProducerClient::new(channel.clone()),
        consumer: ConsumerClient::new(channel.clone()),
        admin: AdminClient::new(channel.clone()),
        channel,
    }
}

fn start(dir: &std::path::Path) -> Node {
    Node::start(dir, &as_strs(&dev_args(&dir.join("data"))))
}

fn record(key: Option<&str>, value: &str) -> pb::Record {
    pb::Record {
        key: key.map(|k| k.as_bytes().to_vec()),
        value: Some(value.as_bytes().to_vec()),
        headers: vec![pb::Header {
            key: "source".to_string(),
            value: b"grpc-test".to_vec(),
        }],
        timestamp_ms: Some(1_700_000_000_000),
    }
}

async fn create_topic(clients: &mut Clients, name: &str, partitions: u32) -> pb::TopicDescription {
    clients
        .admin
        .create_topic(pb::CreateTopicRequest {
            name: name.to_string(),
            partitions,
            ..Default::default()
        })
        .await
        .expect("create the topic")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_produced_are_fetched_back_intact_in_their_key_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let mut clients = connect(&node).await;
    let created = create_topic(&mut clients, "orders", 3).await;
    assert_eq!(created.partitions.len(), 3);

    let records: Vec<pb::Record> = (0..30)
        .map(|i| record(Some(&format!("customer-{}", i % 7)), &format!("order {i}")))
        .collect();
    let produced = clients
        .producer
        .produce(pb::ProduceRequest {
            topic: "orders".to_string(),
            records: records.clone(),
            request_id: 7,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(produced.request_id, 7);
    assert_eq!(produced.positions.len(), 30);
    // Kafka's default partitioner: the same key always lands in the same partition, the
    // one murmur2 gives.
    for (record, position) in records.iter().zip(&produced.positions) {
        let key = record.key.as_deref().unwrap();
        assert_eq!(
            position.partition,
            runnel_broker::partitioner::partition_for_key(key, 3)
        );
    }

    let mut seen = 0;
    for partition in 0..3 {
        let fetched = clients
            .consumer
            .fetch(pb::FetchRequest {
                topic: "orders".to_string(),
                partition,
                offset: 0,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(fetched.next_offset, fetched.high_watermark);
        for got in &fetched.records {
            let index = records
                .iter()
                .position(|r| r.value == got.value)
                .expect("a produced record");
            let position = &produced.positions[index];
            assert_eq!(
                (got.partition, got.offset),
                (position.partition, position.offset)
            );
            assert_eq!(got.key, records[index].key);
            assert_eq!(got.timestamp_ms, 1_700_000_000_000);
            assert_eq!(got.headers, records[index].headers);
            assert_eq!(got.topic, "orders");
            seen += 1;
        }
    }
    assert_eq!(seen, 30);

    // Limits: max_records, and a long poll that ends when a record arrives.
    let limited = clients
        .consumer
        .fetch(pb::FetchRequest {
            topic: "orders".to_string(),
            partition: produced.positions[0].partition,
            offset: 0,
            max_records: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((limited.records.len(), limited.next_offset), (1, 1));
    let mut waiting = clients.consumer.clone();
    let end = limited.high_watermark;
    let partition = produced.positions[0].partition;
    let poll = tokio::spawn(async move {
        waiting
            .fetch(pb::FetchRequest {
                topic: "orders".to_string(),
                partition,
                offset: end,
                max_wait_ms: 10_000,
                ..Default::default()
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "the fetch waits for data");
    clients
        .producer
        .produce(pb::ProduceRequest {
            topic: "orders".to_string(),
            partition: Some(partition),
            records: vec![record(None, "late")],
            ..Default::default()
        })
        .await
        .unwrap();
    let late = poll.await.unwrap().unwrap().into_inner();
    assert_eq!(late.records[0].value.as_deref(), Some(&b"late"[..]));
    assert_eq!(late.records[0].key, None);
}

/// The status code of an answer; an error must carry a message.
fn code<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => {
            assert!(!status.message().is_empty(), "{status:?}");
            status.code()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_status_codes_callers_rely_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let mut clients = connect(&node).await;
    let mut small = HashMap::new();
    small.insert("max.message.bytes".to_string(), "1000".to_string());
    clients
        .admin
        .create_topic(pb::CreateTopicRequest {
            name: "small".to_string(),
            partitions: 1,
            configs: small,
            ..Default::default()
        })
        .await
        .unwrap();
    let produce =
        |topic: &str, partition: Option<i32>, records: Vec<pb::Record>| pb::ProduceRequest {
            topic: topic.to_string(),
            partition,
            records,
            ..Default::default()
        };
    let mut producer = clients.producer.clone();
    assert_eq!(
        code(
            producer
                .produce(produce("small", Some(5), vec![record(None, "x")]))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            producer
                .produce(produce("", None, vec![record(None, "x")]))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(producer.produce(produce("small", None, vec![])).await),
        Code::InvalidArgument
    );
    let big = record(None, &"x".repeat(5000));
    assert_eq!(
        code(producer.produce(produce("small", None, vec![big])).await),
        Code::ResourceExhausted
    );
    let fetched = clients
        .consumer
        .fetch(pb::FetchRequest {
            topic: "small".to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        fetched.high_watermark, 0,
        "nothing of a refused produce is written"
    );
    let fetch = |topic: &str, offset: i64| pb::FetchRequest {
        topic: topic.to_string(),
        offset,
        ..Default::default()
    };
    let mut consumer = clients.consumer.clone();
    assert_eq!(
        code(consumer.fetch(fetch("nowhere", 0)).await),
        Code::NotFound
    );
    assert_eq!(
        code(consumer.fetch(fetch("small", 5)).await),
        Code::OutOfRange
    );
    assert_eq!(
        code(
            clients
                .admin
                .create_topic(pb::CreateTopicRequest {
                    name: "small".to_string(),
                    ..Default::default()
                })
                .await
        ),
        Code::AlreadyExists
    );
    assert_eq!(
        code(
            clients
                .admin
                .describe_group(pb::DescribeGroupRequest {
                    name: "nobody".to_string()
                })
                .await
        ),
        Code::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_keep_order_and_follow_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let mut clients = connect(&node).await;
    create_topic(&mut clients, "events", 2).await;

    // 200 requests sent without waiting; the answers come back in order.
    let requests = tokio_stream::iter((0..200u64).map(|i| pb::ProduceRequest {
        topic: "events".to_string(),
        partition: Some((i % 2) as i32),
        records: vec![record(None, &format!("event {i}"))],
        request_id: i,
        acks: pb::Acks::Leader as i32,
    }));
    let mut answers = clients
        .producer
        .produce_stream(requests)
        .await
        .unwrap()
        .into_inner();
    let mut expected = 0;
    while let Some(answer) = answers.next().await {
        let answer = answer.unwrap();
        assert_eq!(answer.request_id, expected);
        let position = &answer.positions[0];
        assert_eq!(
            (position.partition as u64, position.offset as u64),
            (expected % 2, expected / 2)
        );
        expected += 1;
    }
    assert_eq!(expected, 200);

    // Subscribe from the earliest: everything, then records written afterwards.
    let mut stream = clients
        .consumer
        .subscribe(pb::SubscribeRequest {
            topic: "events".to_string(),
            start: Some(pb::subscribe_request::Start::Position(
                pb::StartPosition::StartEarliest as i32,
            )),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while got.len() < 200 {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("records within 10 s")
            .unwrap()
            .unwrap();
        got.extend(message.records);
    }
    for partition in 0..2 {
        let offsets: Vec<i64> = got
            .iter()
            .filter(|r| r.partition == partition)
            .map(|r| r.offset)
            .collect();
        assert_eq!(offsets, (0..100).collect::<Vec<_>>());
    }
    clients
        .producer
        .produce(pb::ProduceRequest {
            topic: "events".to_string(),
            partition: Some(1),
            records: vec![record(Some("k"), "afterwards")],
            ..Default::default()
        })
        .await
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the new record within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(
        message.records[0].value.as_deref(),
        Some(&b"afterwards"[..])
    );
    assert_eq!(
        (message.records[0].partition, message.records[0].offset),
        (1, 100)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_groups_and_the_cluster_are_administered() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let mut clients = connect(&node).await;
    let admin = &mut clients.admin;
    let created = admin
        .create_topic(pb::CreateTopicRequest {
            name: "Usuarios".to_string(),
            partitions: 2,
            configs: HashMap::from([("retention.ms".to_string(), "3600000".to_string())]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let retention = |d: &pb::TopicDescription| {
        d.configs
            .iter()
            .find(|c| c.name == "retention.ms")
            .map(|c| (c.value.clone(), c.is_override))
    };
    assert_eq!(retention(&created), Some(("3600000".to_string(), true)));
    assert_eq!(created.partitions[0].leader, Some(1));
    let listed = admin
        .list_topics(pb::ListTopicsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .topics
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["Usuarios"]
    );
    let altered = admin
        .alter_topic_configs(pb::AlterTopicConfigsRequest {
            name: "Usuarios".to_string(),
            remove: vec!["retention.ms".to_string()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retention(&altered).map(|r| r.1), Some(false));
    let grown = admin
        .add_partitions(pb::AddPartitionsRequest {
            name: "Usuarios".to_string(),
            partitions: 3,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grown.partitions.len(), 3);

    // A group's committed offsets, lag, reset and deletion.
    clients
        .producer
        .produce(pb::ProduceRequest {
            topic: "Usuarios".to_string(),
            partition: Some(0),
            records: (0..10).map(|i| record(None, &format!("u{i}"))).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    clients
        .consumer
        .commit(pb::CommitRequest {
            group: "teste".to_string(),
            topic: "Usuarios".to_string(),
            offsets: vec![pb::PartitionOffset {
                partition: 0,
                offset: 4,
                metadata: String::new(),
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let admin = &mut clients.admin;
    let described = admin
        .describe_group(pb::DescribeGroupRequest {
            name: "teste".to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.offsets.len(), 1);
    let offset = &described.offsets[0];
    assert_eq!(
        (offset.committed_offset, offset.log_end_offset, offset.lag),
        (4, Some(10), Some(6))
    );
    let groups = admin
        .list_groups(pb::ListGroupsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        groups.groups.iter().any(|g| g.name == "teste"),
        "{groups:?}"
    );
    let reset = admin
        .reset_group_offsets(pb::ResetGroupOffsetsRequest {
            name: "teste".to_string(),
            topic: "Usuarios".to_string(),
            partitions: vec![0],
            to: Some(pb::reset_group_offsets_request::To::Latest(true)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reset.offsets[0].lag, Some(0));
    // A subscription from the group's commits starts where they point.
    admin
        .reset_group_offsets(pb::ResetGroupOffsetsRequest {
            name: "teste".to_string(),
            topic: "Usuarios".to_string(),
            partitions: vec![0],
            to: Some(pb::reset_group_offsets_request::To::Offset(8)),
        })
        .await
        .unwrap();
    let mut stream = clients
        .consumer
        .subscribe(pb::SubscribeRequest {
            topic: "Usuarios".to_string(),
            partitions: vec![0],
            group: "teste".to_string(),
            start: Some(pb::subscribe_request::Start::Position(
                pb::StartPosition::StartCommitted as i32,
            )),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.records[0].offset, 8);
    drop(stream);
    let admin = &mut clients.admin;
    admin
        .delete_group(pb::DeleteGroupRequest {
            name: "teste".to_string(),
        })
        .await
        .unwrap();
    let gone = admin
        .describe_group(pb::DescribeGroupRequest {
            name: "teste".to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    let cluster = admin
        .cluster_info(pb::ClusterInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((cluster.node_id, cluster.controller_leader), (1, Some(1)));
    assert_eq!(cluster.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        cluster.nodes[0].grpc_address,
        node.grpc.unwrap().to_string()
    );

    admin
        .delete_topic(pb::DeleteTopicRequest {
            name: "Usuarios".to_string(),
        })
        .await
        .unwrap();
    let gone = admin
        .describe_topic(pb::DescribeTopicRequest {
            name: "Usuarios".to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let clients = connect(&node).await;
    let mut health = HealthClient::new(clients.channel.clone());
    for service in [
        "runnel.v1.Producer",
        "runnel.v1.Consumer",
        "runnel.v1.Admin",
    ] {
        let answer = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answer.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );
    }
    let mut reflection = ServerReflectionClient::new(clients.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in [
        "runnel.v1.Producer",
        "runnel.v1.Consumer",
        "runnel.v1.Admin",
    ] {
        assert!(names.iter().any(|n| n == service), "{names:?}");
    }
}

/// Events of a group subscription until `done` says enough, with a deadline.
async fn events_until(
    member: &mut runnel_client::GroupSubscription,
    mut done: impl FnMut(&runnel_client::GroupEvent) -> bool,
    what: &str,
) -> Vec<runnel_client::GroupEvent> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout_at(deadline, member.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting: {what}; seen {seen:?}"))
            .expect("the stream goes on")
            .expect("no error");
        let finished = done(&event);
        seen.push(event);
        if finished {
            return seen;
        }
    }
}

fn partitions_of(assignment: &runnel_client::Assignment) -> Vec<i32> {
    assignment.partitions.iter().map(|(_, p)| *p).collect()
}

/// Two SubscribeGroup streams of one group split a topic's partitions, each reads only
/// its own, and when one closes the other takes them all over from the committed offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_subscriptions_split_partitions_and_rebalance_when_one_closes() {
    use runnel_client::{Acks, Client, GroupEvent, Record, Reset};
    let dir = tempfile::tempdir().unwrap();
    let mut args = dev_args(&dir.path().join("data"));
    args.extend([
        "--set".to_string(),
        "broker.group_consumer_heartbeat_interval_ms=200".to_string(),
    ]);
    let node = Node::start(dir.path(), &as_strs(&args));
    let client = Client::connect(&node.grpc.unwrap().to_string())
        .await
        .unwrap();
    client.admin().create_topic("split", 4, &[]).await.unwrap();
    let produce_round = |round: usize| {
        let client = client.clone();
        async move {
            for partition in 0..4 {
                let records = (0..10)
                    .map(|i| Record::new(format!("r{round}-p{partition}-{i}")))
                    .collect();
                client
                    .produce("split", Some(partition), records, Acks::All)
                    .await
                    .unwrap();
            }
        }
    };
    produce_round(0).await;

    // Alone, the first member gets every partition and reads the first round.
    let mut a = client
        .subscribe_group("pair", &["split"], Reset::Earliest)
        .await
        .unwrap();
    let mut records = 0;
    events_until(
        &mut a,
        |event| {
            if let GroupEvent::Record(_) = event {
                records += 1;
            }
            records == 40
        },
        "the first member reads the first round",
    )
    .await;
    assert_eq!(partitions_of(a.assignment()), vec![0, 1, 2, 3]);
    for partition in 0..4 {
        a.commit("split", &[(partition, 10)]).await.unwrap();
    }

    // A second member joins: the first gives up two partitions, which then go to it.
    let mut b = client
        .subscribe_group("pair", &["split"], Reset::Earliest)
        .await
        .unwrap();
    let reader_a = tokio::spawn(async move {
        events_until(
            &mut a,
            |event| matches!(event, GroupEvent::Assigned(x) if x.partitions.len() == 2),
            "the first member gives up half",
        )
        .await;
        a
    });
    events_until(
        &mut b,
        |event| matches!(event, GroupEvent::Assigned(x) if x.partitions.len() == 2),
        "the second member gets half",
    )
    .await;
    let mut a = reader_a.await.unwrap();
    let (mine_a, mine_b) = (partitions_of(a.assignment()), partitions_of(b.assignment()));
    let mut all: Vec<i32> = mine_a.iter().chain(&mine_b).copied().collect();
    all.sort();
    assert_eq!(all, vec![0, 1, 2, 3], "{mine_a:?} and {mine_b:?}");

    // New records: each member gets exactly those of its own partitions.
    produce_round(1).await;
    for (member, mine) in [(&mut a, &mine_a), (&mut b, &mine_b)] {
        let mut count = 0;
        let seen = events_until(
            member,
            |event| {
                if let GroupEvent::Record(r) = event
                    && r.value.as_deref().is_some_and(|v| v.starts_with(b"r1"))
                {
                    count += 1;
                }
                count == 20
            },
            "each member reads the second round of its partitions",
        )
        .await;
        for event in seen {
            if let GroupEvent::Record(record) = event {
                assert!(
                    mine.contains(&record.partition),
                    "{record:?} is not in {mine:?}"
                );
                let round0 = record
                    .value
                    .as_deref()
                    .is_some_and(|v| v.starts_with(b"r0"));
                // The second member starts from the first's commits: no first round.
                assert!(!round0, "{record:?} was committed already");
            }
        }
    }

    // The first member commits nothing more and closes: the second takes its partitions
    // over from their committed offsets (10), so the second round of them comes again.
    drop(a);
    let mut again = 0;
    let seen = events_until(
        &mut b,
        |event| {
            if let GroupEvent::Record(r) = event
                && mine_a.contains(&r.partition)
            {
                again += 1;
            }
            again == 20
        },
        "the second member takes the first's partitions over",
    )
    .await;
    assert_eq!(partitions_of(b.assignment()), vec![0, 1, 2, 3]);
    for event in seen {
        if let GroupEvent::Record(record) = event
            && mine_a.contains(&record.partition)
        {
            assert!(record.offset >= 10, "{record:?}");
        }
    }

    // Commits are checked against the member: a stale identity is refused.
    b.commit("split", &[(0, 20)]).await.unwrap();
    let stranger = client.commit("pair", "split", &[(0, 1)]).await.unwrap_err();
    assert!(
        stranger.to_string().starts_with("FAILED_PRECONDITION"),
        "{stranger}"
    );

    // Bad subscriptions are refused before any stream starts.
    let unknown = client
        .subscribe_group("pair", &["nowhere"], Reset::Earliest)
        .await
        .err()
        .expect("an unknown topic is refused");
    assert!(unknown.to_string().starts_with("NOT_FOUND"), "{unknown}");
}
