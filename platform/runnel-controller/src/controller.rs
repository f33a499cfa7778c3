//! A node's controller: the Raft member that holds the metadata log.
//!
//! [`Controller::start_single`] runs the one-voter quorum of `runnel dev`: on first start it
//! initializes a cluster of itself, on every start it waits until it leads and has applied
//! everything in its log, then registers its node (addresses may have changed). After a
//! restart the metadata comes back from the snapshot and the log on disk.
//!
//! Changes go through [`Controller::propose`]: the command is appended to the Raft log,
//! committed by the quorum, applied by every member's state machine, and its outcome
//! returned. A command the metadata refuses comes back as [`ControllerError::Rejected`]
//! with the reason; nothing of it was applied.
//!
//! Multi-node quorums need the cluster RPC (vote, append entries, install snapshot over the
//! internal port), which is not built yet: the network here knows no peers, which is
//! exactly right for a single voter and refuses anything else.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use tokio::sync::watch;

use crate::metadata::{Applied, Command, Metadata, MetadataError, NodeId, NodeInfo};
use crate::store::{StoreError, open_storage};
use crate::types::TypeConfig;

/// How long starting waits for the single voter to lead and catch up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The metadata refused the command; nothing was applied.
    #[error(transparent)]
    Rejected(#[from] MetadataError),
    /// This node does not lead the quorum; `leader` is the one that does, if known.
    #[error("this node is not the controller leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// The quorum cannot commit right now (no leader, not enough voters, shutting down).
    #[error("the metadata quorum is unavailable: {0}")]
    Unavailable(String),
    #[error("controller storage: {0}")]
    Storage(#[from] StoreError),
}

impl ControllerError {
    /// Whether sending the same command again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ControllerError::NotLeader { .. } | ControllerError::Unavailable(_)
        )
    }
}

/// The Raft state operators see in `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControllerStatus {
    pub term: u64,
    pub leader: Option<NodeId>,
    /// The last index in this node's log (openraft 0.9 does not report the commit index;
    /// once caught up, applied equals it).
    pub log_index: u64,
    pub applied_index: u64,
    pub is_leader: bool,
}

pub struct Controller {
    node_id: NodeId,
    raft: Raft<TypeConfig>,
    metadata: watch::Receiver<Arc<Metadata>>,
}

fn raft_config() -> Result<Arc<openraft::Config>, ControllerError> {
    let config = openraft::Config {
        cluster_name: "runnel".to_string(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
        max_in_snapshot_log_to_keep: 100,
        ..Default::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|e| ControllerError::Unavailable(format!("raft config: {e}")))
}

impl Controller {
    /// Starts the one-voter controller of `runnel dev` with its state in `dir`.
    pub async fn start_single(dir: &Path, node: NodeInfo) -> Result<Controller, ControllerError> {
        let (log_store, state_machine) = open_storage(dir).await?;
        let metadata = state_machine.subscribe();
        let raft = Raft::new(node.id, raft_config()?, NoPeers, log_store, state_machine)
            .await
            .map_err(|e| ControllerError::Unavailable(e.to_string()))?;
        let unavailable = |e: &dyn std::fmt::Display| ControllerError::Unavailable(e.to_string());
        let initialized = raft.is_initialized().await.map_err(|e| unavailable(&e))?;
        if !initialized {
            let members = BTreeMap::from([(
                node.id,
                BasicNode {
                    addr: node.cluster.clone(),
                },
            )]);
            raft.initialize(members)
                .await
                .map_err(|e| unavailable(&e))?;
        }
        raft.wait(Some(START_TIMEOUT))
            .current_leader(node.id, "the single voter leads")
            .await
            .map_err(|e| unavailable(&e))?;
        let controller = Controller {
            node_id: node.id,
            raft,
            metadata,
        };
        controller.wait_caught_up(START_TIMEOUT).await?;
        controller.propose(Command::RegisterNode(node)).await?;
        Ok(controller)
    }

    /// Waits until everything in this node's log so far is applied here.
    async fn wait_caught_up(&self, timeout: Duration) -> Result<(), ControllerError> {
        let last = self.status().log_index;
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(last), "caught up with the metadata log")
            .await
            .map(|_| ())
            .map_err(|e| ControllerError::Unavailable(e.to_string()))
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Appends `command` to the metadata log and returns what applying it did.
    pub async fn propose(&self, command: Command) -> Result<Applied, ControllerError> {
        match self.raft.client_write(command).await {
            Ok(response) => match response.data.into_command() {
                Some(outcome) => Ok(outcome?),
                None => Err(ControllerError::Unavailable(
                    "the log answered a command with an internal entry".to_string(),
                )),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(ControllerError::NotLeader {
                    leader: forward.leader_id,
                })
            }
            Err(error) => Err(ControllerError::Unavailable(error.to_string())),
        }
    }

    /// The metadata as applied on this node.
    pub fn metadata(&self) -> Arc<Metadata> {
        self.metadata.borrow().clone()
    }

    /// Follows the metadata: a new value after every applied change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Metadata>> {
        self.metadata.clone()
    }

    pub fn status(&self) -> ControllerStatus {
        let metrics = self.raft.metrics().borrow().clone();
        ControllerStatus {
            term: metrics.current_term,
            leader: metrics.current_leader,
            log_index: metrics.last_log_index.unwrap_or(0),
            applied_index: metrics.last_applied.map_or(0, |id| id.index),
            is_leader: metrics.current_leader == Some(self.node_id),
        }
    }

    /// Stops the Raft node; the state on disk is complete (every write was fsynced).
    pub async fn shutdown(&self) {
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "controller shutdown");
        }
    }
}

/// The network of a single voter: there is nobody to talk to.
struct NoPeers;

struct NoPeer {
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeer;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Self::Network {
        NoPeer { target }
    }
}

impl NoPeer {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        RPCError::Unreachable(Unreachable::new(&std::io::Error::other(format!(
            "node {} is not reachable: the cluster RPC is not built yet",
            self.target
        ))))
    }
}

impl RaftNetwork<TypeConfig> for NoPeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, openraft::error::InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}
