//! Node liveness, decided by the controller leader from heartbeats.
//!
//! Every node tells the leader it is alive once a second (over the cluster RPC; the leader
//! notes its own). The leader keeps the last time it heard from each node in memory only;
//! when a registered node has been silent for [`SESSION_TIMEOUT`] it proposes
//! `SetNodeAlive { alive: false }` (placement then skips it), and when a fenced node is
//! heard from again, `alive: true`. A node that just became leader first gives every node a
//! full session to find it, so a change of leader fences nobody. Only changes of liveness
//! go through the Raft log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::controller::{Controller, propose_locally};
use crate::metadata::{Command, NodeId};

/// How long a node may be silent before the leader fences it.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// How often nodes send heartbeats and the leader checks sessions.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// When the leader last heard from each node.
#[derive(Debug, Default, Clone)]
pub struct Heartbeats {
    seen: Arc<Mutex<HashMap<NodeId, Instant>>>,
}

impl Heartbeats {
    /// Notes a heartbeat. The caller only records members of the cluster, so the table
    /// stays bounded by the membership.
    pub fn record(&self, node: NodeId) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node, Instant::now());
    }

    fn last_seen(&self, node: NodeId) -> Option<Instant> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&node)
            .copied()
    }
}

/// What the leader should propose for one node, if anything.
fn verdict(
    alive: bool,
    last_seen: Option<Instant>,
    leading_since: Instant,
    now: Instant,
) -> Option<bool> {
    // Silence counts from the later of the last heartbeat and the start of this leadership.
    let since = last_seen.map_or(leading_since, |seen| seen.max(leading_since));
    let silent = now.saturating_duration_since(since) >= SESSION_TIMEOUT;
    match (alive, silent) {
        (true, true) => Some(false),
        (false, false) if last_seen.is_some_and(|seen| seen >= leading_since) => Some(true),
        _ => None,
    }
}

/// Runs on every node until `cancel`: while this node leads, fences silent nodes and
/// unfences the ones heard from again. Decisions are proposed on this node only (never
/// forwarded) and only while it still leads in the term it decided in, so a deposed
/// leader cannot push stale verdicts onto its successor.
pub async fn run_fencing(
    controller: Arc<Controller>,
    heartbeats: Heartbeats,
    cancel: CancellationToken,
) {
    let raft = controller.raft();
    // The term this node leads in, and since when.
    let mut leading: Option<(u64, Instant)> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(HEARTBEAT_INTERVAL) => {}
        }
        let status = controller.status();
        if !status.is_leader {
            leading = None;
            continue;
        }
        let since = match leading {
            Some((term, since)) if term == status.term => since,
            _ => {
                let now = Instant::now();
                leading = Some((status.term, now));
                now
            }
        };
        heartbeats.record(controller.node_id());
        let now = Instant::now();
        for node in controller.metadata().nodes.values() {
            let Some(alive) = verdict(node.alive, heartbeats.last_seen(node.id), since, now) else {
                continue;
            };
            let still = controller.status();
            if !still.is_leader || still.term != status.term {
                break;
            }
            let command = Command::SetNodeAlive { id: node.id, alive };
            match propose_locally(&raft, command).await {
                Ok(_) => tracing::warn!(node = node.id, alive, "node liveness changed"),
                Err(error) => {
                    tracing::warn!(node = node.id, %error, "could not record node liveness")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_fences_and_a_heartbeat_unfences() {
        let start = Instant::now();
        let later = |s: u64| start + Duration::from_secs(s);
        // A new leader waits a whole session before fencing anyone.
        assert_eq!(verdict(true, None, start, later(5)), None);
        assert_eq!(verdict(true, None, start, later(6)), Some(false));
        // Heard from recently: nothing to do; silent too long: fenced.
        assert_eq!(verdict(true, Some(later(3)), start, later(8)), None);
        assert_eq!(verdict(true, Some(later(3)), start, later(9)), Some(false));
        // A fenced node heard from again during this leadership is unfenced.
        assert_eq!(
            verdict(false, Some(later(10)), start, later(11)),
            Some(true)
        );
        // A heartbeat from before this leadership does not count.
        assert_eq!(verdict(false, Some(later(1)), later(2), later(3)), None);
    }
}
