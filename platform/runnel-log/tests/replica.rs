//! What a replicated partition needs of the log: copying batches as they are, holding the
//! high watermark back, the leader epoch of each run of offsets, and cutting a follower's
//! log back to its leader's.

mod common;

use bytes::Bytes;
use common::*;
use runnel_config::TopicConfig;
use runnel_log::{LogError, PartitionLog, Role};

fn small_segments() -> TopicConfig {
    TopicConfig {
        segment_bytes: 300,
        ..TopicConfig::default()
    }
}

fn idempotent(producer_id: i64, sequence: i32) -> bytes::BytesMut {
    runnel_log::BatchBuilder {
        producer_id,
        producer_epoch: 0,
        base_sequence: sequence,
        ..Default::default()
    }
    .build(&[record(1_000, None, Some(b"value"))])
    .unwrap()
}

/// Copies everything `leader` has past `follower`'s end, as a follower's fetches would.
async fn catch_up(follower: &PartitionLog, leader: &PartitionLog) {
    while follower.log_end() < leader.log_end() {
        let read = leader
            .read_replica(follower.log_end(), 1 << 20)
            .await
            .unwrap();
        follower
            .append_replica(read.records, follower.leader_epoch())
            .await
            .unwrap();
    }
}

/// Every batch of a log, as bytes, from its local start.
async fn all_bytes(log: &PartitionLog) -> Vec<u8> {
    let mut out = Vec::new();
    let mut next = log.local_log_start();
    while next < log.log_end() {
        let read = log.read_replica(next, 1 << 20).await.unwrap();
        let end = runnel_log::batch::batch_positions(&read.records)
            .last()
            .map(|(_, h)| h.last_offset() as u64 + 1)
            .unwrap();
        out.extend_from_slice(&read.records);
        next = end;
    }
    out
}

#[tokio::test]
async fn a_follower_copies_batches_byte_for_byte_and_its_high_watermark_follows_the_leader() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = open(a.path(), small_segments()).await;
    let follower = open(b.path(), small_segments()).await;
    leader.set_leader_epoch(4);
    // One follower in sync that has nothing yet: the leader's high watermark stays at 0.
    leader.set_replica_floor(0);
    follower.set_replica_floor(0);
    follower.set_role(Role::Follower);
    for i in 0..10 {
        leader.append(simple_batch(3, 20, 1_000 + i)).await.unwrap();
    }
    assert_eq!(leader.log_end(), 30);
    assert_eq!(leader.high_watermark(), 0, "held back for the follower");
    assert!(leader.read(0, 1 << 20).await.unwrap().records.is_empty());

    catch_up(&follower, &leader).await;
    assert_eq!(follower.log_end(), 30);
    assert_eq!(
        follower.high_watermark(),
        0,
        "a follower's comes from its leader"
    );
    assert_eq!(all_bytes(&follower).await, all_bytes(&leader).await);
    assert_eq!(follower.latest_epoch(), Some(4));
    assert!(follower.segments().len() > 1, "the copy rolls segments too");

    // The follower reported 30: the leader may show everything.
    leader.set_replica_floor(30);
    assert_eq!(leader.high_watermark(), 30);
    follower.advance_high_watermark(leader.high_watermark());
    assert_eq!(follower.high_watermark(), 30);
    assert_eq!(read_all(&follower, 0, 1 << 20).await.unwrap().len(), 30);
    // Never past its own log end, never down.
    follower.advance_high_watermark(99);
    follower.advance_high_watermark(3);
    assert_eq!(follower.high_watermark(), 30);
    // No follower in sync: the high watermark follows the log end again.
    leader.set_replica_floor(u64::MAX);
    leader.append(simple_batch(1, 20, 2_000)).await.unwrap();
    assert_eq!(leader.high_watermark(), 31);
}

#[tokio::test]
async fn replicated_batches_must_start_at_the_log_end_and_be_whole() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = open(a.path(), TopicConfig::default()).await;
    let follower = open(b.path(), TopicConfig::default()).await;
    follower.set_role(Role::Follower);
    for i in 0..3 {
        leader.append(simple_batch(2, 10, 1_000 + i)).await.unwrap();
    }
    let read = leader.read_replica(2, 1 << 20).await.unwrap();
    let error = follower
        .append_replica(read.records.clone(), follower.leader_epoch())
        .await;
    assert!(
        matches!(error, Err(LogError::InvalidBatch(_))),
        "a gap: {error:?}"
    );
    let read = leader.read_replica(0, 1 << 20).await.unwrap();
    let mut damaged = read.records.to_vec();
    let last = damaged.len() - 1;
    damaged[last] ^= 0xff;
    let error = follower
        .append_replica(Bytes::from(damaged), follower.leader_epoch())
        .await;
    assert!(matches!(error, Err(LogError::InvalidBatch(_))), "{error:?}");
    let cut = read.records.slice(..read.records.len() - 5);
    let error = follower.append_replica(cut, follower.leader_epoch()).await;
    assert!(matches!(error, Err(LogError::InvalidBatch(_))), "{error:?}");
    // The whole batches before a refused one are in; nothing after.
    assert_eq!(follower.log_end(), 4);
    follower
        .truncate_to(0, follower.leader_epoch())
        .await
        .unwrap();
    catch_up(&follower, &leader).await;
    assert_eq!(all_bytes(&follower).await, all_bytes(&leader).await);
    // A read below the local log is out of range, with the local start.
    assert!(matches!(
        leader.read_replica(7, 100).await,
        Err(LogError::OffsetOutOfRange { log_end: 6, .. })
    ));
}

#[tokio::test]
async fn a_diverged_follower_is_cut_back_to_its_new_leader_and_converges() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let old_leader = open(a.path(), small_segments()).await;
    let new_leader = open(b.path(), small_segments()).await;
    new_leader.set_role(Role::Follower);
    // Epoch 0: both get offsets 0..12, then the old leader alone writes 12..24.
    for i in 0..4 {
        old_leader
            .append(simple_batch(3, 20, 1_000 + i))
            .await
            .unwrap();
    }
    catch_up(&new_leader, &old_leader).await;
    for i in 0..4 {
        old_leader.append(idempotent(7, i)).await.unwrap();
        old_leader.append(simple_batch(2, 20, 2_000)).await.unwrap();
    }
    assert_eq!(old_leader.log_end(), 24);
    // Epoch 3: the new leader writes 12..18.
    new_leader.set_leader_epoch(3);
    for i in 0..2 {
        new_leader
            .append(simple_batch(3, 20, 3_000 + i))
            .await
            .unwrap();
    }
    assert_eq!(new_leader.end_offset_for_epoch(0), (0, 12));
    assert_eq!(new_leader.end_offset_for_epoch(3), (3, 18));
    assert_eq!(new_leader.end_offset_for_epoch(2), (0, 12));

    // The old leader follows: its last epoch is 0, which ended at 12 on the new leader.
    old_leader.set_role(Role::Follower);
    let epoch = old_leader.latest_epoch().unwrap();
    let (_, end) = new_leader.end_offset_for_epoch(epoch);
    let segments_before = old_leader.segments().len();
    assert_eq!(
        old_leader
            .truncate_to(end, old_leader.leader_epoch())
            .await
            .unwrap(),
        12
    );
    assert!(old_leader.segments().len() < segments_before);
    assert!(old_leader.high_watermark() <= 12);
    catch_up(&old_leader, &new_leader).await;
    assert_eq!(all_bytes(&old_leader).await, all_bytes(&new_leader).await);
    assert_eq!(old_leader.latest_epoch(), Some(3));

    // The producer whose batches were cut is forgotten: its sequence 0 is new again, not a
    // duplicate of a batch that is gone.
    let appended = old_leader.append(idempotent(7, 0)).await.unwrap();
    assert!(!appended.duplicate);

    // All of it survives a reopen: segments, epochs, producers.
    let end = old_leader.log_end();
    old_leader.close().await.unwrap();
    drop(old_leader);
    let reopened = open(a.path(), small_segments()).await;
    assert_eq!(reopened.log_end(), end);
    assert_eq!(reopened.end_offset_for_epoch(0), (0, 12));
    assert_eq!(reopened.end_offset_for_epoch(3).0, 3);
    assert!(reopened.append(idempotent(7, 0)).await.unwrap().duplicate);
}

#[tokio::test]
async fn cutting_inside_a_batch_cuts_the_whole_batch_and_cutting_everything_keeps_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), TopicConfig::default()).await;
    for i in 0..3 {
        log.append(simple_batch(5, 10, 1_000 + i)).await.unwrap();
    }
    assert!(
        matches!(
            log.truncate_to(12, log.leader_epoch()).await,
            Err(LogError::RoleChanged(_))
        ),
        "only a follower is cut back"
    );
    log.set_role(Role::Follower);
    assert_eq!(log.truncate_to(12, log.leader_epoch()).await.unwrap(), 10);
    assert_eq!(
        log.truncate_to(40, log.leader_epoch()).await.unwrap(),
        10,
        "past the end: nothing"
    );
    assert_eq!(read_all(&log, 0, 1 << 20).await.unwrap().len(), 10);
    assert_eq!(log.truncate_to(0, log.leader_epoch()).await.unwrap(), 0);
    assert_eq!(log.log_end(), 0);
    assert_eq!(log.latest_epoch(), None);
    log.append(simple_batch(2, 10, 5_000)).await.unwrap();
    assert_eq!(read_all(&log, 0, 1 << 20).await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_follower_of_a_tiered_topic_deletes_by_the_whole_retention_not_by_uploads() {
    let tiered = TopicConfig {
        segment_bytes: 300,
        remote_storage_enable: true,
        local_retention_bytes: Some(0),
        retention_bytes: Some(700),
        ..TopicConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let leader = open(&dir.path().join("leader"), small_segments()).await;
    let log = open(&dir.path().join("events-0"), tiered).await;
    log.set_replica_floor(0);
    log.set_role(Role::Follower);
    for i in 0..20 {
        leader
            .append(simple_batch(1, 100, 1_000 + i))
            .await
            .unwrap();
    }
    // Opened empty, the tiered copy still takes the leader's batches at once.
    catch_up(&log, &leader).await;
    log.advance_high_watermark(log.log_end());
    // Nothing was uploaded from here (the leader uploads): a leader's copy would keep
    // every segment; the follower's keeps what retention.bytes allows.
    log.enforce_retention(i64::MAX).await.unwrap();
    let kept: u64 = log.segments().iter().map(|s| s.size).sum();
    assert!(log.local_log_start() > 0);
    assert!(kept <= 700 + 300, "{kept} bytes kept");

    // Leading again, it keeps what it has not uploaded.
    log.set_role(Role::Leader);
    let start = log.local_log_start();
    for i in 0..10 {
        log.append(simple_batch(1, 100, 2_000 + i)).await.unwrap();
    }
    log.enforce_retention(i64::MAX).await.unwrap();
    assert_eq!(log.local_log_start(), start);
}

#[tokio::test]
async fn a_leaders_append_lands_only_in_its_epoch_and_a_replicas_only_while_following() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), TopicConfig::default()).await;
    log.set_leader_epoch(2);
    log.set_role(Role::Leader);
    let pending = log
        .submit_leader_append(simple_batch(1, 10, 1_000), true, 2)
        .await
        .unwrap();
    pending.wait().await.unwrap();
    // Queued for epoch 2, but by the time the writer gets to it this replica follows:
    // refused, and nothing is written in the new leader's epoch.
    log.set_role(Role::Follower);
    log.set_leader_epoch(3);
    let refused = log
        .submit_leader_append(simple_batch(1, 10, 1_000), true, 2)
        .await
        .unwrap()
        .wait()
        .await;
    assert!(
        matches!(refused, Err(LogError::RoleChanged(_))),
        "{refused:?}"
    );
    assert_eq!(log.log_end(), 1);
    assert_eq!(log.latest_epoch(), Some(2));
    // Leading again in epoch 3: a write for epoch 2 is stale, one for 3 goes in.
    log.set_role(Role::Leader);
    let stale = log
        .submit_leader_append(simple_batch(1, 10, 1_000), true, 2)
        .await
        .unwrap()
        .wait()
        .await;
    assert!(matches!(stale, Err(LogError::RoleChanged(_))));
    log.submit_leader_append(simple_batch(1, 10, 1_000), true, 3)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(log.end_offset_for_epoch(2), (2, 1));
    assert_eq!(log.latest_epoch(), Some(3));
    // A leader takes no replicated batches.
    let copied = log.read_replica(0, 1 << 20).await.unwrap();
    assert!(matches!(
        log.append_replica(copied.records, log.leader_epoch()).await,
        Err(LogError::RoleChanged(_))
    ));
    // Following in epoch 4: what a fetch of the leadership of epoch 3 brings is refused.
    log.set_role(Role::Follower);
    log.set_leader_epoch(4);
    let stale = log.read_replica(0, 1 << 20).await.unwrap().records;
    assert!(matches!(
        log.append_replica(stale, 3).await,
        Err(LogError::RoleChanged(_))
    ));
    assert!(matches!(
        log.truncate_to(0, 3).await,
        Err(LogError::RoleChanged(_))
    ));
    assert!(matches!(
        log.start_replica_at(100, 3).await,
        Err(LogError::RoleChanged(_))
    ));
    assert_eq!(log.log_end(), 2);
    assert_eq!(log.truncate_to(1, 4).await.unwrap(), 1);
}

#[tokio::test]
async fn a_reopened_replica_shows_records_only_up_to_its_recorded_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), TopicConfig::default()).await;
    log.set_replica_floor(0);
    for i in 0..5 {
        log.append(simple_batch(2, 10, 1_000 + i)).await.unwrap();
    }
    log.set_replica_floor(4);
    log.checkpoint_high_watermark().await.unwrap();
    log.set_replica_floor(6);
    assert_eq!(log.high_watermark(), 6);
    log.close().await.unwrap();
    drop(log);
    // A crash after 6 was shown but before it was recorded: 4 again, and held there until
    // replication moves it (appends alone do not).
    let log = open(dir.path(), TopicConfig::default()).await;
    assert_eq!(log.high_watermark(), 4);
    log.append(simple_batch(1, 10, 2_000)).await.unwrap();
    assert_eq!(log.high_watermark(), 4);
    assert_eq!(read_all(&log, 0, 1 << 20).await.unwrap().len(), 4);
    log.set_replica_floor(u64::MAX);
    assert_eq!(log.high_watermark(), 11);
}
