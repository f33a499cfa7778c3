//! The controller stores after a restart: what was acknowledged comes back, a torn tail of
//! the log is cut off without losing anything before it, and corruption stops the open.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{
    BasicNode, CommittedLeaderId, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder,
};
use runnel_controller::store::{LOG_FILE, SNAPSHOT_FILE};
use runnel_controller::types::{Entry, LogId, StoredMembership, Vote};
use runnel_controller::{
    Applied, ApplyResponse, Command, NodeInfo, NodeRoles, StoreError, open_storage,
};

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn node(id: u64) -> NodeInfo {
    NodeInfo {
        id,
        kafka: format!("127.0.0.1:{}", 9092 + id),
        grpc: format!("127.0.0.1:{}", 9192 + id),
        cluster: format!("127.0.0.1:{}", 9292 + id),
        http: format!("127.0.0.1:{}", 9392 + id),
        roles: NodeRoles {
            controller: true,
            broker: true,
        },
        alive: true,
    }
}

fn membership() -> Membership<u64, BasicNode> {
    let nodes = BTreeMap::from([(
        1,
        BasicNode {
            addr: "127.0.0.1:9293".to_string(),
        },
    )]);
    Membership::new(vec![BTreeSet::from([1])], nodes)
}

/// Entry 0 sets the membership, the rest register nodes.
fn entry(term: u64, index: u64) -> Entry {
    let payload = if index == 0 {
        EntryPayload::Membership(membership())
    } else {
        EntryPayload::Normal(Command::RegisterNode(node(index)))
    };
    Entry {
        log_id: log_id(term, index),
        payload,
    }
}

fn indexes(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.log_id.index).collect()
}

#[tokio::test]
async fn acknowledged_state_survives_a_restart() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("controller");
    let vote = Vote::new_committed(3, 1);
    {
        let (mut log, mut state_machine) = open_storage(&dir).await?;
        let mut updates = state_machine.subscribe();
        log.blocking_append((0..=7).map(|i| entry(1, i))).await?;
        log.blocking_append([entry(2, 8)]).await?;
        log.save_vote(&vote).await?;
        // A follower's conflicting suffix is cut, then the leader's entries follow.
        log.truncate(log_id(2, 8)).await?;
        log.truncate(log_id(1, 7)).await?;
        log.blocking_append([entry(3, 7)]).await?;
        log.save_committed(Some(log_id(3, 7))).await?;
        log.purge(log_id(1, 2)).await?;

        let applied = log.try_get_log_entries(0..=4).await?;
        let responses = state_machine.apply(applied).await?;
        assert_eq!(responses.len(), 2, "entries 3 and 4 (0..=2 were purged)");
        assert!(
            responses
                .iter()
                .all(|r| *r == ApplyResponse::Command(Ok(Applied::NodeRegistered)))
        );
        assert!(
            updates.has_changed()?,
            "applying a command publishes the metadata"
        );
        assert_eq!(updates.borrow_and_update().nodes.len(), 2);

        // A second open of the same directory is refused while this one is open.
        assert!(matches!(
            open_storage(&dir).await,
            Err(StoreError::Locked { .. })
        ));
    }

    let (mut log, mut state_machine) = open_storage(&dir).await?;
    assert_eq!(log.read_vote().await?, Some(vote));
    assert_eq!(log.read_committed().await?, Some(log_id(3, 7)));
    let state = log.get_log_state().await?;
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(3, 7)));
    let entries = log.try_get_log_entries(..).await?;
    assert_eq!(indexes(&entries), vec![3, 4, 5, 6, 7]);
    assert_eq!(
        entries[..4],
        (3..=6).map(|i| entry(1, i)).collect::<Vec<_>>()
    );
    assert_eq!(entries[4], entry(3, 7));
    // Nothing was snapshotted: the state machine starts empty and openraft re-applies.
    assert_eq!(state_machine.applied_state().await?.0, None);
    assert!(state_machine.metadata().nodes.is_empty());
    Ok(())
}

#[tokio::test]
async fn the_state_machine_comes_back_from_its_snapshot() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("controller");
    let built = {
        let (_log, mut state_machine) = open_storage(&dir).await?;
        state_machine.apply((0..=3).map(|i| entry(1, i))).await?;
        let snapshot = state_machine
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await?;
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 3)));
        // Applied after the snapshot: gone after a restart until the log is re-applied.
        state_machine.apply([entry(1, 4)]).await?;
        snapshot
    };
    assert!(dir.join(SNAPSHOT_FILE).exists());

    let (_log, mut state_machine) = open_storage(&dir).await?;
    let (last_applied, membership) = state_machine.applied_state().await?;
    assert_eq!(last_applied, Some(log_id(1, 3)));
    assert_eq!(
        membership,
        StoredMembership::new(Some(log_id(1, 0)), membership_of(&built))
    );
    let metadata = state_machine.metadata();
    assert_eq!(
        metadata.nodes.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let current = state_machine.get_current_snapshot().await?;
    let current = current.ok_or_else(|| anyhow::anyhow!("no current snapshot"))?;
    assert_eq!(current.meta, built.meta);
    assert_eq!(current.snapshot.into_inner(), built.snapshot.into_inner());

    // Installing it on a fresh store gives the same state, durably.
    let other = temp.path().join("other");
    {
        let (_log, mut follower) = open_storage(&other).await?;
        let snapshot = state_machine.get_current_snapshot().await?;
        let snapshot = snapshot.ok_or_else(|| anyhow::anyhow!("no current snapshot"))?;
        let updates = follower.subscribe();
        follower
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await?;
        assert!(updates.has_changed()?);
        assert_eq!(*updates.borrow(), metadata);
    }
    let (_log, mut follower) = open_storage(&other).await?;
    assert_eq!(follower.applied_state().await?.0, Some(log_id(1, 3)));
    assert_eq!(follower.metadata(), metadata);
    Ok(())
}

fn membership_of(
    snapshot: &openraft::Snapshot<runnel_controller::TypeConfig>,
) -> Membership<u64, BasicNode> {
    snapshot.meta.last_membership.membership().clone()
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_nothing_before_it_is_lost() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("controller");
    let log_path = dir.join(LOG_FILE);
    let mut record_ends = Vec::new();
    {
        let (mut log, _state_machine) = open_storage(&dir).await?;
        for index in 0..=5 {
            log.blocking_append([entry(1, index)]).await?;
            record_ends.push(std::fs::metadata(&log_path)?.len());
        }
    }
    // Cut the last record in the middle, as a crash during its append could.
    let last_start = record_ends[4];
    let full = record_ends[5];
    set_len(&log_path, last_start + (full - last_start) / 2)?;

    {
        let (mut log, _state_machine) = open_storage(&dir).await?;
        let entries = log.try_get_log_entries(..).await?;
        assert_eq!(indexes(&entries), vec![0, 1, 2, 3, 4]);
        assert_eq!(entries, (0..=4).map(|i| entry(1, i)).collect::<Vec<_>>());
        assert_eq!(log.get_log_state().await?.last_log_id, Some(log_id(1, 4)));
        assert_eq!(
            std::fs::metadata(&log_path)?.len(),
            last_start,
            "tail cut off"
        );
        log.blocking_append([entry(2, 5)]).await?;
    }
    let end_of_5 = std::fs::metadata(&log_path)?.len();

    // A tail cut inside a record header is torn as well.
    {
        let (mut log, _state_machine) = open_storage(&dir).await?;
        assert_eq!(log.get_log_state().await?.last_log_id, Some(log_id(2, 5)));
        log.blocking_append([entry(2, 6)]).await?;
    }
    set_len(&log_path, end_of_5 + 3)?;
    let (mut log, _state_machine) = open_storage(&dir).await?;
    let entries = log.try_get_log_entries(..).await?;
    assert_eq!(indexes(&entries), vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(entries[5], entry(2, 5));
    Ok(())
}

#[tokio::test]
async fn corruption_before_the_tail_stops_the_open() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("controller");
    {
        let (mut log, _state_machine) = open_storage(&dir).await?;
        log.blocking_append((0..=3).map(|i| entry(1, i))).await?;
        log.save_vote(&Vote::new(1, 1)).await?;
    }
    let log_path = dir.join(LOG_FILE);
    let mut bytes = std::fs::read(&log_path)?;
    // A bit flip in the first record's payload (header 8 bytes, record header 8 bytes).
    bytes[20] ^= 0x04;
    std::fs::write(&log_path, &bytes)?;
    match open_storage(&dir).await {
        Err(StoreError::Corrupt { path, reason }) => {
            assert_eq!(path, log_path);
            assert!(reason.contains("checksum mismatch"), "{reason}");
        }
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(_) => panic!("a corrupt log opened"),
    }

    std::fs::write(&log_path, b"")?;
    match open_storage(&dir).await {
        Err(StoreError::Corrupt { reason, .. }) => assert!(reason.contains("header"), "{reason}"),
        other => panic!("expected corruption, got {:?}", other.err()),
    }

    // A lost log file is not mistaken for a new one.
    std::fs::remove_file(&log_path)?;
    match open_storage(&dir).await {
        Err(StoreError::Corrupt { reason, .. }) => assert!(reason.contains("missing"), "{reason}"),
        other => panic!("expected corruption, got {:?}", other.err()),
    }

    let vote_path = dir.join("vote.json");
    std::fs::write(&vote_path, b"{\"leader_id\":")?;
    match open_storage(&dir).await {
        Err(StoreError::Corrupt { path, .. }) => assert_eq!(path, vote_path),
        other => panic!("expected corruption, got {:?}", other.err()),
    }
    Ok(())
}

fn set_len(path: &Path, len: u64) -> std::io::Result<()> {
    OpenOptions::new().write(true).open(path)?.set_len(len)
}
