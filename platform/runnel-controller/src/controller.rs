//! A node's controller: the Raft member that holds the metadata log.
//!
//! [`Controller::start`] opens the storage and starts the Raft node for a set of voters
//! (just this node in `runnel dev`). On first start every voter initializes the same
//! membership, which openraft accepts from any or all of them; after a restart the metadata
//! comes back from the snapshot and the log on disk, and the rest from the leader.
//! [`Controller::wait_ready`] then waits for a leader, registers this node (addresses may
//! have changed) and waits until this node has applied the log up to that registration:
//! from then on its metadata is current, and the node reports ready.
//!
//! Changes go through [`Controller::propose`]. On the leader the command is appended,
//! committed by the quorum and applied; on a follower it is forwarded to the leader over
//! the cluster RPC (a [`Forwarder`]). Either way the call returns once the command is
//! applied *here* too, so a read of the metadata right after sees it. A command the
//! metadata refuses comes back as [`ControllerError::Rejected`]; a command not committed
//! within [`PROPOSE_TIMEOUT`] (no quorum) as [`ControllerError::Unavailable`] — it may still
//! commit later, and a retry of a creation with the same UUID is safe.

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

use crate::metadata::{Applied, Command, Metadata, MetadataError, NodeId, NodeInfo, Response};
use crate::store::{CommittedIndex, StoreError, open_storage};
use crate::types::TypeConfig;

/// How long a proposal may take to commit before the caller is told there is no quorum.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends a command to the leader and returns the outcome with its log index.
pub type ForwardFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(Response, u64), ControllerError>> + Send>,
>;

/// Forwards proposals from a follower to the leader (the cluster RPC implements it).
pub trait Forwarder: Send + Sync + 'static {
    fn forward(&self, leader: NodeId, address: String, command: Command) -> ForwardFuture;
}

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
    /// The last index in this node's log.
    pub log_index: u64,
    /// The last index known committed (saved by openraft through the log store).
    pub commit_index: u64,
    pub applied_index: u64,
    pub is_leader: bool,
}

pub struct Controller {
    node: NodeInfo,
    raft: Raft<TypeConfig>,
    metadata: watch::Receiver<Arc<Metadata>>,
    committed: CommittedIndex,
    forwarder: Option<Arc<dyn Forwarder>>,
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
    /// Starts the one-voter controller of `runnel dev` with its state in `dir`, ready.
    pub async fn start_single(dir: &Path, node: NodeInfo) -> Result<Controller, ControllerError> {
        let controller = Controller::start(dir, node, BTreeMap::new(), NoPeers, None).await?;
        controller.wait_ready(PROPOSE_TIMEOUT * 6).await?;
        Ok(controller)
    }

    /// Opens the storage and starts the Raft node with `voters` (id -> cluster address;
    /// empty: this node alone). Returns at once; see [`Controller::wait_ready`].
    pub async fn start<N: RaftNetworkFactory<TypeConfig>>(
        dir: &Path,
        node: NodeInfo,
        voters: BTreeMap<NodeId, String>,
        network: N,
        forwarder: Option<Arc<dyn Forwarder>>,
    ) -> Result<Controller, ControllerError> {
        let (log_store, state_machine) = open_storage(dir).await?;
        let metadata = state_machine.subscribe();
        let committed = log_store.committed_index();
        let raft = Raft::new(node.id, raft_config()?, network, log_store, state_machine)
            .await
            .map_err(|e| ControllerError::Unavailable(e.to_string()))?;
        let unavailable = |e: &dyn std::fmt::Display| ControllerError::Unavailable(e.to_string());
        let initialized = raft.is_initialized().await.map_err(|e| unavailable(&e))?;
        // A learner (a node not among the voters) never initializes: the leader adds it and
        // replicates the log to it.
        let learner = !voters.is_empty() && !voters.contains_key(&node.id);
        if !initialized && !learner {
            let members: BTreeMap<NodeId, BasicNode> = if voters.is_empty() {
                BTreeMap::from([(node.id, BasicNode::new(&node.cluster))])
            } else {
                voters
                    .iter()
                    .map(|(id, address)| (*id, BasicNode::new(address)))
                    .collect()
            };
            // Every voter may initialize the same membership; one that already learned
            // it from another voter is told so, which is fine.
            if let Err(error) = raft.initialize(members).await {
                tracing::info!(%error, "controller membership already initialized");
            }
        }
        Ok(Controller {
            node,
            raft,
            metadata,
            committed,
            forwarder,
        })
    }

    /// Waits for a leader, registers this node and waits until this node has applied the
    /// log up to that registration.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ControllerError> {
        self.raft
            .wait(Some(timeout))
            .metrics(
                |m| m.current_leader.is_some(),
                "a controller leader is known",
            )
            .await
            .map_err(|e| ControllerError::Unavailable(e.to_string()))?;
        self.propose(Command::RegisterNode(self.node.clone()))
            .await?;
        Ok(())
    }

    pub fn node_id(&self) -> NodeId {
        self.node.id
    }

    /// Whether the Raft node stopped (a fatal storage error, or shut down): nothing will
    /// succeed any more.
    pub fn is_stopped(&self) -> bool {
        self.raft.metrics().borrow().running_state.is_err()
    }

    /// The Raft handle, for the cluster RPC server.
    pub fn raft(&self) -> Raft<TypeConfig> {
        self.raft.clone()
    }

    /// Appends `command` to the metadata log (through the leader) and returns what applying
    /// it did, once this node has applied it too.
    pub async fn propose(&self, command: Command) -> Result<Applied, ControllerError> {
        let (outcome, index) = self.propose_indexed(command).await?;
        self.raft
            .wait(Some(PROPOSE_TIMEOUT))
            .applied_index_at_least(Some(index), "the proposal applied here")
            .await
            .map_err(|e| ControllerError::Unavailable(e.to_string()))?;
        Ok(outcome?)
    }

    async fn propose_indexed(&self, command: Command) -> Result<(Response, u64), ControllerError> {
        let forward = match propose_locally(&self.raft, command.clone()).await {
            Err(ControllerError::NotLeader {
                leader: Some(leader),
            }) => leader,
            other => return other,
        };
        let (Some(forwarder), Some(address)) = (&self.forwarder, self.address_of(forward)) else {
            return Err(ControllerError::NotLeader {
                leader: Some(forward),
            });
        };
        tokio::time::timeout(
            PROPOSE_TIMEOUT,
            forwarder.forward(forward, address, command),
        )
        .await
        .map_err(|_| no_quorum())?
    }

    /// The current leader and its cluster address, if known.
    pub fn leader_address(&self) -> Option<(NodeId, String)> {
        let leader = self.status().leader?;
        Some((leader, self.address_of(leader)?))
    }

    /// The cluster address of a member, from the current membership.
    fn address_of(&self, id: NodeId) -> Option<String> {
        let metrics = self.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .nodes()
            .find(|(member, _)| **member == id)
            .map(|(_, node)| node.addr.clone())
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
            commit_index: self.committed.get(),
            applied_index: metrics.last_applied.map_or(0, |id| id.index),
            is_leader: metrics.current_leader == Some(self.node.id),
        }
    }

    /// Stops the Raft node; the state on disk is complete (every write was fsynced).
    pub async fn shutdown(&self) {
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "controller shutdown");
        }
    }
}

fn no_quorum() -> ControllerError {
    ControllerError::Unavailable(format!(
        "the command was not committed within {} s: no controller quorum (it may still \
         commit later)",
        PROPOSE_TIMEOUT.as_secs()
    ))
}

/// Proposes `command` on this node's Raft: the outcome and its log index if this node
/// leads, `NotLeader` with the leader otherwise. Used by the cluster RPC for forwarded
/// proposals too (which are never forwarded again).
pub async fn propose_locally(
    raft: &Raft<TypeConfig>,
    command: Command,
) -> Result<(Response, u64), ControllerError> {
    match tokio::time::timeout(PROPOSE_TIMEOUT, raft.client_write(command)).await {
        Err(_elapsed) => Err(no_quorum()),
        Ok(Ok(response)) => match response.data.into_command() {
            Some(outcome) => Ok((outcome, response.log_id.index)),
            None => Err(ControllerError::Unavailable(
                "the log answered a command with an internal entry".to_string(),
            )),
        },
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
            match forward.leader_id {
                Some(leader) => Err(ControllerError::NotLeader {
                    leader: Some(leader),
                }),
                None => Err(ControllerError::Unavailable(
                    "no controller leader is known right now".to_string(),
                )),
            }
        }
        Ok(Err(error)) => Err(ControllerError::Unavailable(error.to_string())),
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
            "node {} is not reachable: a single-voter controller has no peers",
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
