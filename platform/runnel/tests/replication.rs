//! Partition replication across real `runnel start` processes, written and read with real
//! Kafka clients (confluent-kafka with `acks=all`, kcat).

mod common;

use std::time::Duration;

use common::*;

const FAILOVER: Duration = Duration::from_secs(40);

/// Partition `index` of `topic` as node `asking` sees it in `/v1/topics`.
fn partition(cluster: &Cluster, asking: usize, topic: &str, index: usize) -> serde_json::Value {
    let topics = cluster.topics(asking);
    topics
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == topic)
        .map(|t| t["partitions"][index].clone())
        .unwrap_or_default()
}

fn leader_of(partition: &serde_json::Value) -> Option<usize> {
    partition["leader"].as_u64().map(|id| id as usize)
}

fn isr_of(partition: &serde_json::Value) -> Vec<u64> {
    let mut isr: Vec<u64> = partition["isr"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
        .unwrap_or_default();
    isr.sort();
    isr
}

/// (offset, value) of every record of `topic`, read by kcat through `node`.
fn values(cluster: &Cluster, node: usize, topic: &str) -> Vec<(i64, String)> {
    kcat_read(cluster.node(node).kafka.unwrap(), topic)
        .into_iter()
        .map(|(_, offset, _, value, _)| (offset, value))
        .collect()
}

fn expected(range: std::ops::Range<usize>) -> Vec<(i64, String)> {
    range.map(|i| (i as i64, format!("record-{i}"))).collect()
}

#[test]
fn acknowledged_records_survive_the_loss_of_their_leader_and_the_old_leader_catches_up() {
    let mut cluster = Cluster::new(3, 3);
    for id in 1..=3 {
        cluster.spawn(id);
    }
    cluster.read_banners(&[1, 2, 3]);
    cluster.create_and_see_everywhere(
        1,
        r#"{"name": "r", "partitions": 1, "replication_factor": 3}"#,
        "r-0",
    );
    let first = partition(&cluster, 1, "r", 0);
    let leader = leader_of(&first).expect("a leader");
    assert_eq!(first["leader_epoch"], 0);
    let other = (1..=3).find(|id| *id != leader).unwrap();

    // acks=all: each record is acknowledged once all three hold it.
    finish(produce_keyed(
        cluster.node(other).kafka.unwrap(),
        "r",
        0,
        300,
    ));
    assert_eq!(values(&cluster, other, "r"), expected(0..300));
    // Every follower has them on disk (the log files hold the values as written).
    for id in (1..=3).filter(|id| *id != leader) {
        wait_for(FAILOVER, "the follower's copy", || {
            on_disk(&cluster, id, "r", b"record-299")
        });
    }

    // The leader dies: a follower in the ISR takes over in a new epoch, with every
    // acknowledged record.
    cluster.kill(leader);
    let killed = std::time::Instant::now();
    wait_for(FAILOVER, "a new leader", || {
        let now = partition(&cluster, other, "r", 0);
        leader_of(&now).is_some_and(|l| l != leader)
            && now["leader_epoch"] == 1
            && !isr_of(&now).contains(&(leader as u64))
    });
    let second = leader_of(&partition(&cluster, other, "r", 0)).unwrap();
    eprintln!(
        "leader {leader} killed; node {second} leads in epoch 1 after {:?}",
        killed.elapsed()
    );
    assert_eq!(values(&cluster, other, "r"), expected(0..300));

    // It takes writes with two replicas in sync.
    let started = std::time::Instant::now();
    finish(produce_keyed(
        cluster.node(other).kafka.unwrap(),
        "r",
        300,
        400,
    ));
    eprintln!(
        "100 acks=all records with two in sync in {:?}",
        started.elapsed()
    );

    // The old leader comes back as a follower, copies what it missed and rejoins the ISR.
    cluster.spawn(leader);
    cluster.read_banners(&[leader]);
    wait_for(FAILOVER, "the old leader back in the ISR", || {
        isr_of(&partition(&cluster, other, "r", 0)) == [1, 2, 3]
    });

    // The second leader dies too: the third (possibly the node that came back) serves
    // everything, each record once, at the offsets first given.
    cluster.kill(second);
    let survivor = (1..=3).find(|id| *id != second).unwrap();
    wait_for(FAILOVER, "a third leader", || {
        let now = partition(&cluster, survivor, "r", 0);
        leader_of(&now).is_some_and(|l| l != second) && now["leader_epoch"] == 2
    });
    assert_eq!(values(&cluster, survivor, "r"), expected(0..400));
    cluster.stop_all();
}

#[test]
fn acks_all_is_refused_below_min_insync_replicas() {
    let mut cluster = Cluster::new(3, 3);
    for id in 1..=3 {
        cluster.spawn(id);
    }
    cluster.read_banners(&[1, 2, 3]);
    let created = cluster.node(1).request(
        "POST",
        "/v1/topics",
        Some(
            r#"{"name": "m", "partitions": 1, "replication_factor": 2,
                "configs": {"min.insync.replicas": "2"}}"#,
        ),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let placed = partition(&cluster, 1, "m", 0);
    let leader = leader_of(&placed).unwrap();
    let follower = placed["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_u64().unwrap() as usize)
        .find(|r| *r != leader)
        .unwrap();
    for id in [leader, follower] {
        let dir = cluster.dir(id).join("data/partitions/m-0");
        wait_until(|| dir.is_dir(), &format!("m-0 on node {id}"));
    }
    finish(produce_keyed(
        cluster.node(leader).kafka.unwrap(),
        "m",
        0,
        50,
    ));

    // The follower goes: it is fenced and leaves the ISR, and acks=all writes fail with
    // NOT_ENOUGH_REPLICAS instead of being acknowledged by one copy.
    cluster.kill(follower);
    wait_for(FAILOVER, "the follower out of the ISR", || {
        isr_of(&partition(&cluster, leader, "m", 0)) == [leader as u64]
    });
    let refused = python_client("produce_keyed.py")
        .args(["50", "51"])
        .env(
            "RUNNEL_BOOTSTRAP",
            cluster.node(leader).kafka.unwrap().to_string(),
        )
        .env("RUNNEL_TOPIC", "m")
        .env("RUNNEL_RETRIES", "0")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("NOT_ENOUGH_REPLICAS"), "{stderr}");
    assert_eq!(values(&cluster, leader, "m"), expected(0..50));

    // Back with the follower: it catches up, rejoins, and writes go through again.
    cluster.spawn(follower);
    cluster.read_banners(&[follower]);
    wait_for(FAILOVER, "the follower back in the ISR", || {
        isr_of(&partition(&cluster, leader, "m", 0)).len() == 2
    });
    finish(produce_keyed(
        cluster.node(leader).kafka.unwrap(),
        "m",
        50,
        60,
    ));
    assert_eq!(values(&cluster, leader, "m"), expected(0..60));
    cluster.stop_all();
}

/// Whether any segment of `topic-0` on node `id` holds `needle`.
fn on_disk(cluster: &Cluster, id: usize, topic: &str, needle: &[u8]) -> bool {
    let dir = cluster.dir(id).join(format!("data/partitions/{topic}-0"));
    std::fs::read_dir(&dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        path.extension().is_some_and(|e| e == "log")
            && std::fs::read(&path)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
    })
}

#[test]
fn a_leader_that_comes_back_drops_what_only_it_had_and_follows_the_new_leader() {
    let mut cluster = Cluster::new(3, 3);
    for id in 1..=3 {
        cluster.spawn(id);
    }
    cluster.read_banners(&[1, 2, 3]);
    cluster.create_and_see_everywhere(
        1,
        r#"{"name": "d", "partitions": 1, "replication_factor": 3}"#,
        "d-0",
    );
    let leader = leader_of(&partition(&cluster, 1, "d", 0)).unwrap();
    let followers: Vec<usize> = (1..=3).filter(|id| *id != leader).collect();
    finish(produce_keyed(
        cluster.node(leader).kafka.unwrap(),
        "d",
        0,
        50,
    ));

    // The followers stop fetching (SIGSTOP, well within the 6 s session), and the leader
    // takes ten records with acks=1 that no one else gets; then it dies.
    for id in &followers {
        cluster.node(*id).signal(libc::SIGSTOP);
    }
    // A fetch sent just before the stop is held by the leader for up to 500 ms and then
    // answered, empty, into the stopped follower's socket: wait that out, so that no
    // fetch is pending when the records come.
    std::thread::sleep(Duration::from_millis(1500));
    let acks_one = python_client("produce_keyed.py")
        .args(["1000", "1010"])
        .env(
            "RUNNEL_BOOTSTRAP",
            cluster.node(leader).kafka.unwrap().to_string(),
        )
        .env("RUNNEL_TOPIC", "d")
        .env("RUNNEL_ACKS", "1")
        .output()
        .unwrap();
    assert!(
        acks_one.status.success(),
        "{}",
        String::from_utf8_lossy(&acks_one.stderr)
    );
    assert!(on_disk(&cluster, leader, "d", b"record-1009"));
    cluster.kill(leader);
    for id in &followers {
        cluster.node(*id).signal(libc::SIGCONT);
    }

    // A follower takes over in epoch 1 without them, and takes new writes.
    let survivor = followers[0];
    wait_for(FAILOVER, "a new leader", || {
        let now = partition(&cluster, survivor, "d", 0);
        leader_of(&now).is_some_and(|l| l != leader) && now["leader_epoch"] == 1
    });
    finish(produce_keyed(
        cluster.node(survivor).kafka.unwrap(),
        "d",
        50,
        60,
    ));

    // The old leader comes back: its log diverges from the new leader's at offset 50. It
    // is cut back there, copies 50..60 and rejoins the ISR; the ten records only it had
    // are gone from its disk, and no reader ever sees them.
    cluster.spawn(leader);
    cluster.read_banners(&[leader]);
    wait_for(FAILOVER, "the old leader back in the ISR", || {
        isr_of(&partition(&cluster, survivor, "d", 0)) == [1, 2, 3]
    });
    assert!(!on_disk(&cluster, leader, "d", b"record-1000"));
    assert!(on_disk(&cluster, leader, "d", b"record-59"));
    assert_eq!(values(&cluster, survivor, "d"), expected(0..60));
    assert!(
        cluster
            .node(leader)
            .stderr()
            .contains("log truncated to the leader's"),
        "the cut is logged"
    );
    cluster.stop_all();
}
