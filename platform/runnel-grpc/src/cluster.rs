//! The cluster RPC: openraft's messages and forwarded proposals between nodes, over tonic.
//!
//! Each message carries openraft's own request or response serialized as JSON (see
//! `schemas/proto/runnel/cluster/v1/cluster.proto`), and names the node it is meant for: a
//! node answers FAILED_PRECONDITION to a request for another id, so an address that now
//! belongs to another node is never mistaken for the intended one.
//!
//! Clients connect lazily and reconnect after a failure; a peer that cannot be reached is
//! reported to openraft as `Unreachable`, which backs off and retries. A Raft error on the
//! remote side comes back as openraft's `RemoteError`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use runnel_controller::liveness::{HEARTBEAT_INTERVAL, Heartbeats};
use runnel_controller::{
    Command, Controller, ControllerError, ForwardFuture, Forwarder, NodeId, Response, TypeConfig,
    propose_locally,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use bytes::Bytes;
use runnel_broker::groups::{CommittedOffset, GroupService, GroupServiceError};
use runnel_broker::peers::{OffsetCommit, PeerFuture, Peers};
use runnel_broker::replication::{ReplicaFetch, ReplicaFetched};
use runnel_broker::{Broker, BrokerError};
use runnel_log::ReadResult;

use crate::proto::cluster_client::ClusterClient;
use crate::proto::cluster_server::{Cluster, ClusterServer};
use crate::proto::{
    PartitionData, PartitionProduce, PartitionProduced, PartitionRead, RaftReply, RaftRequest,
    ReplicaFetchReply, ReplicaFetchRequest,
};

/// Messages larger than this are refused. Snapshots travel in chunks far below it; a
/// forwarded function state batch is at most twice `functions.max_kv_bytes` plus 1 MiB
/// (129 MiB by default).
const MAX_MESSAGE_BYTES: usize = 256 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The largest metadata snapshot a node accepts.
const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;

/// The most bytes one forwarded read returns.
const MAX_READ_BYTES: usize = 16 << 20;
/// How long a forwarded write, read or commit may take.
const PEER_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a follower's fetch may take (the leader holds an empty one for 500 ms).
const REPLICA_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// An offset commit as `CommitOffset` carries it.
#[derive(Serialize, serde::Deserialize)]
struct WireCommit {
    group: String,
    topic: String,
    partition: i32,
    offset: i64,
    metadata: String,
    commit_ms: i64,
}

/// What a forwarded proposal answers: the outcome and its log index, or why it failed.
type ForwardReply = Result<(Response, u64), String>;

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(value).map_err(|e| Status::internal(format!("encode: {e}")))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(bytes).map_err(|e| Status::invalid_argument(format!("decode: {e}")))
}

/// This node's broker and group coordinator, for calls forwarded from other nodes; set
/// once they are started (the cluster RPC starts before them).
#[derive(Clone)]
pub struct LocalPartitions {
    pub broker: Arc<Broker>,
    pub groups: Arc<GroupService>,
}

/// Where [`LocalPartitions`] are put once started.
pub type LocalPartitionsSlot = Arc<std::sync::OnceLock<LocalPartitions>>;

/// The server side: answers peers' Raft messages, forwarded proposals, and forwarded
/// writes, reads and offset commits.
pub struct ClusterService {
    node_id: NodeId,
    raft: Raft<TypeConfig>,
    heartbeats: Heartbeats,
    local: LocalPartitionsSlot,
}

impl ClusterService {
    pub fn new(
        node_id: NodeId,
        raft: Raft<TypeConfig>,
        heartbeats: Heartbeats,
        local: LocalPartitionsSlot,
    ) -> ClusterServer<ClusterService> {
        ClusterServer::new(ClusterService {
            node_id,
            raft,
            heartbeats,
            local,
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn check_target(&self, request: &RaftRequest) -> Result<(), Status> {
        self.check_node(request.target)
    }

    fn check_node(&self, target: NodeId) -> Result<(), Status> {
        if target != self.node_id {
            return Err(Status::failed_precondition(format!(
                "this is node {}, not node {}",
                self.node_id, target
            )));
        }
        Ok(())
    }

    fn local(&self) -> Result<&LocalPartitions, Status> {
        self.local
            .get()
            .ok_or_else(|| Status::unavailable(format!("node {} is starting", self.node_id)))
    }
}

impl ClusterService {
    /// Checks the target, decodes the request's payload and encodes what `handle` answers.
    async fn serve<Message, Reply, Answer>(
        &self,
        request: Request<RaftRequest>,
        handle: impl FnOnce(Message) -> Answer,
    ) -> Result<tonic::Response<RaftReply>, Status>
    where
        Message: DeserializeOwned,
        Reply: Serialize,
        Answer: std::future::Future<Output = Reply>,
    {
        let request = request.into_inner();
        self.check_target(&request)?;
        let message: Message = decode(&request.payload)?;
        let reply = handle(message).await;
        Ok(tonic::Response::new(RaftReply {
            payload: encode(&reply)?,
        }))
    }

    async fn add_learner(&self, join: JoinRequest) -> JoinReply {
        // Not blocking: the learner catches up by itself, and says it is ready once it has.
        let added = self
            .raft
            .add_learner(join.id, BasicNode::new(&join.address), false)
            .await;
        tracing::info!(learner = join.id, address = %join.address, ok = added.is_ok(), "join request");
        match added {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(JoinRefusal {
                    leader: forward.leader_id.zip(forward.leader_node.map(|n| n.addr)),
                    message: "this node is not the controller leader".to_string(),
                })
            }
            Err(error) => Err(JoinRefusal {
                leader: None,
                message: error.to_string(),
            }),
        }
    }
}

type Served = Result<tonic::Response<RaftReply>, Status>;

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn vote(&self, request: Request<RaftRequest>) -> Served {
        self.serve(request, |vote: VoteRequest<NodeId>| self.raft.vote(vote))
            .await
    }

    async fn append_entries(&self, request: Request<RaftRequest>) -> Served {
        self.serve(request, |append: AppendEntriesRequest<TypeConfig>| {
            self.raft.append_entries(append)
        })
        .await
    }

    async fn install_snapshot(&self, request: Request<RaftRequest>) -> Served {
        let request = request.into_inner();
        self.check_target(&request)?;
        let chunk: InstallSnapshotRequest<TypeConfig> = decode(&request.payload)?;
        // The chunk is written at the offset the sender names: bound it, or a forged offset
        // would size an allocation.
        let end = chunk.offset.saturating_add(chunk.data.len() as u64);
        if end > MAX_SNAPSHOT_BYTES {
            return Err(Status::invalid_argument(format!(
                "snapshot chunk ends at byte {end}, past the {MAX_SNAPSHOT_BYTES}-byte limit"
            )));
        }
        let result = self.raft.install_snapshot(chunk).await;
        Ok(tonic::Response::new(RaftReply {
            payload: encode(&result)?,
        }))
    }

    async fn heartbeat(&self, request: Request<RaftRequest>) -> Served {
        self.serve(request, |sender: NodeId| async move {
            // Only members count, so the table stays bounded by the membership.
            let member = self
                .raft
                .metrics()
                .borrow()
                .membership_config
                .nodes()
                .any(|(id, _)| *id == sender);
            if member {
                self.heartbeats.record(sender);
            }
        })
        .await
    }

    async fn join(&self, request: Request<RaftRequest>) -> Served {
        self.serve(request, |join: JoinRequest| self.add_learner(join))
            .await
    }

    async fn produce(
        &self,
        request: Request<PartitionProduce>,
    ) -> Result<tonic::Response<PartitionProduced>, Status> {
        let request = request.into_inner();
        self.check_node(request.target)?;
        let broker = &self.local()?.broker;
        broker
            .produce_here(
                &request.topic,
                request.partition,
                Bytes::from(request.records),
                request.durable,
            )
            .await
            .map_err(|e| crate::api::broker_status(broker, e))?;
        Ok(tonic::Response::new(PartitionProduced {}))
    }

    async fn read(
        &self,
        request: Request<PartitionRead>,
    ) -> Result<tonic::Response<PartitionData>, Status> {
        let request = request.into_inner();
        self.check_node(request.target)?;
        let broker = &self.local()?.broker;
        let max_bytes = (request.max_bytes as usize).min(MAX_READ_BYTES);
        let status = |e: BrokerError| crate::api::broker_status(broker, e);
        let log = broker
            .leader_log(&request.topic, request.partition)
            .map_err(status)?;
        let read = log
            .read(request.offset.max(log.log_start()), max_bytes)
            .await
            .map_err(|e| status(e.into()))?;
        Ok(tonic::Response::new(PartitionData {
            records: read.records.to_vec(),
            high_watermark: read.high_watermark,
            log_start: read.log_start,
        }))
    }

    async fn replica_fetch(
        &self,
        request: Request<ReplicaFetchRequest>,
    ) -> Result<tonic::Response<ReplicaFetchReply>, Status> {
        let request = request.into_inner();
        self.check_node(request.target)?;
        let broker = &self.local()?.broker;
        let fetch = ReplicaFetch {
            topic: request.topic,
            partition: request.partition,
            replica: request.replica,
            leader_epoch: request.leader_epoch,
            fetch_offset: request.fetch_offset,
            last_fetched_epoch: request.last_fetched_epoch,
            max_bytes: (request.max_bytes as usize).min(MAX_READ_BYTES),
        };
        let fetched = broker
            .serve_replica_fetch(fetch)
            .await
            .map_err(|e| crate::api::broker_status(broker, e))?;
        let (diverging_epoch, diverging_end_offset) = fetched.diverging.unwrap_or((-1, 0));
        Ok(tonic::Response::new(ReplicaFetchReply {
            records: fetched.records.to_vec(),
            high_watermark: fetched.high_watermark,
            log_start: fetched.log_start,
            diverging: fetched.diverging.is_some(),
            diverging_epoch,
            diverging_end_offset,
        }))
    }

    async fn commit_offset(&self, request: Request<RaftRequest>) -> Served {
        let request = request.into_inner();
        self.check_target(&request)?;
        let commit: WireCommit = decode(&request.payload)?;
        let groups = &self.local()?.groups;
        let offset = CommittedOffset {
            offset: commit.offset,
            leader_epoch: -1,
            metadata: commit.metadata,
            commit_ms: commit.commit_ms,
        };
        groups
            .commit(
                &commit.group,
                "",
                None,
                -1,
                vec![(commit.topic, commit.partition, offset)],
            )
            .await
            .map_err(|e| match e {
                GroupServiceError::NotCoordinator | GroupServiceError::Loading => {
                    Status::unavailable(e.to_string())
                }
                other => Status::failed_precondition(other.to_string()),
            })?;
        Ok(tonic::Response::new(RaftReply {
            payload: Vec::new(),
        }))
    }

    async fn propose(&self, request: Request<RaftRequest>) -> Served {
        // A forwarded proposal is never forwarded again: if leadership moved meanwhile,
        // the sender retries with the new leader.
        self.serve(request, |command: Command| async move {
            let reply: ForwardReply = propose_locally(&self.raft, command)
                .await
                .map_err(|e| e.to_string());
            reply
        })
        .await
    }
}

#[derive(Debug, Serialize, serde::Deserialize)]
struct JoinRequest {
    id: NodeId,
    address: String,
}

/// Why a join was not accepted, and the leader to ask instead if known.
#[derive(Debug, Serialize, serde::Deserialize)]
struct JoinRefusal {
    leader: Option<(NodeId, String)>,
    message: String,
}

type JoinReply = Result<(), JoinRefusal>;

const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks the voters to add this node (`id`, reachable at `address`) as a learner: each voter
/// in turn, following a redirect to the leader. Returns the last refusal if none accepted.
pub async fn join(
    id: NodeId,
    address: &str,
    voters: &BTreeMap<NodeId, String>,
) -> Result<(), String> {
    let request = JoinRequest {
        id,
        address: address.to_string(),
    };
    let mut last = String::from("no voters to ask");
    let mut candidates: Vec<(NodeId, String)> =
        voters.iter().map(|(id, a)| (*id, a.clone())).collect();
    let mut redirects = 0;
    while let Some((target, voter_address)) = candidates.pop() {
        let mut peer = Peer {
            target,
            address: voter_address,
            client: None,
        };
        match peer
            .call::<_, JoinReply>(Kind::Join, &request, JOIN_TIMEOUT)
            .await
        {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(refusal)) => {
                last = format!("node {target}: {}", refusal.message);
                if let Some(leader) = refusal.leader
                    && redirects < voters.len()
                {
                    redirects += 1;
                    candidates.push(leader);
                }
            }
            Err(CallError::Unreachable(message) | CallError::Network(message)) => last = message,
        }
    }
    Err(last)
}

/// The client side: one lazily connected tonic client per peer.
#[derive(Clone, Default)]
pub struct ClusterNetwork;

impl RaftNetworkFactory<TypeConfig> for ClusterNetwork {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            address: node.addr.clone(),
            client: None,
        }
    }
}

pub struct Peer {
    target: NodeId,
    address: String,
    client: Option<ClusterClient<Channel>>,
}

/// Why a call to a peer failed before any Raft answer came back.
enum CallError {
    Unreachable(String),
    Network(String),
}

impl Peer {
    async fn client(&mut self) -> Result<ClusterClient<Channel>, CallError> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", self.address))
            .map_err(|e| CallError::Unreachable(format!("bad address {}: {e}", self.address)))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let channel = endpoint.connect().await.map_err(|e| {
            CallError::Unreachable(format!(
                "connect to node {} at {}: {e}",
                self.target, self.address
            ))
        })?;
        let client = ClusterClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Sends one message and decodes the reply; drops the connection on a transport error.
    async fn call<Req: Serialize, Reply: DeserializeOwned>(
        &mut self,
        kind: Kind,
        message: &Req,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let payload =
            serde_json::to_vec(message).map_err(|e| CallError::Network(format!("encode: {e}")))?;
        let mut client = self.client().await?;
        let mut request = Request::new(RaftRequest {
            target: self.target,
            payload,
        });
        request.set_timeout(timeout);
        let reply = match kind {
            Kind::Vote => client.vote(request).await,
            Kind::Append => client.append_entries(request).await,
            Kind::Snapshot => client.install_snapshot(request).await,
            Kind::Propose => client.propose(request).await,
            Kind::Join => client.join(request).await,
            Kind::Heartbeat => client.heartbeat(request).await,
        };
        let reply = reply.map_err(|status| {
            self.client = None;
            CallError::Network(format!(
                "node {} at {}: {status}",
                self.target, self.address
            ))
        })?;
        serde_json::from_slice(&reply.into_inner().payload).map_err(|e| {
            CallError::Network(format!("decode the reply of node {}: {e}", self.target))
        })
    }

    fn rpc_error<E: std::error::Error>(&self, error: CallError) -> RPCError<NodeId, BasicNode, E> {
        match error {
            CallError::Unreachable(message) => {
                RPCError::Unreachable(Unreachable::new(&std::io::Error::other(message)))
            }
            CallError::Network(message) => {
                RPCError::Network(NetworkError::new(&std::io::Error::other(message)))
            }
        }
    }

    async fn raft_call<Req: Serialize, Reply: DeserializeOwned, E>(
        &mut self,
        kind: Kind,
        message: &Req,
        option: &RPCOption,
    ) -> Result<Reply, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        E: std::error::Error + DeserializeOwned,
    {
        let reply: Result<Reply, RaftError<NodeId, E>> = self
            .call(kind, message, option.hard_ttl())
            .await
            .map_err(|e| self.rpc_error(e))?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Vote,
    Append,
    Snapshot,
    Propose,
    Join,
    Heartbeat,
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.raft_call(Kind::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.raft_call(Kind::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.raft_call(Kind::Vote, &rpc, &option).await
    }
}

/// Tells the controller leader every second that this node is alive, until `cancel`.
pub async fn run_heartbeats(
    controller: Arc<Controller>,
    heartbeats: Heartbeats,
    cancel: CancellationToken,
) {
    let mut peer: Option<Peer> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(HEARTBEAT_INTERVAL) => {}
        }
        let Some((leader, address)) = controller.leader_address() else {
            continue;
        };
        if leader == controller.node_id() {
            heartbeats.record(leader);
            continue;
        }
        // Keep the connection while the leader stays the same.
        let reuse = peer
            .as_ref()
            .is_some_and(|p| p.target == leader && p.address == address);
        if !reuse {
            peer = Some(Peer {
                target: leader,
                address,
                client: None,
            });
        }
        if let Some(peer) = peer.as_mut()
            && let Err(CallError::Unreachable(message) | CallError::Network(message)) = peer
                .call::<_, ()>(Kind::Heartbeat, &controller.node_id(), HEARTBEAT_INTERVAL)
                .await
        {
            tracing::debug!(%message, "heartbeat to the controller leader");
        }
    }
}

/// Forwards proposals to the leader over the cluster RPC.
pub struct ClusterForwarder;

impl Forwarder for ClusterForwarder {
    fn forward(&self, leader: NodeId, address: String, command: Command) -> ForwardFuture {
        Box::pin(async move {
            let mut peer = Peer {
                target: leader,
                address,
                client: None,
            };
            let reply: ForwardReply = peer
                .call(Kind::Propose, &command, runnel_controller::PROPOSE_TIMEOUT)
                .await
                .map_err(|e| match e {
                    CallError::Unreachable(m) | CallError::Network(m) => {
                        ControllerError::Unavailable(format!("forward to the leader: {m}"))
                    }
                })?;
            reply.map_err(ControllerError::Unavailable)
        })
    }
}

/// The forwarder as the controller takes it.
pub fn forwarder() -> Arc<dyn Forwarder> {
    Arc::new(ClusterForwarder)
}

/// Forwards a node's writes, reads and offset commits to the nodes that hold the
/// partition or group, one lazily connected client per node.
#[derive(Default)]
pub struct ClusterPeers {
    clients: std::sync::Mutex<BTreeMap<NodeId, (String, ClusterClient<Channel>)>>,
}

impl ClusterPeers {
    pub fn new() -> Arc<ClusterPeers> {
        Arc::new(ClusterPeers::default())
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, (String, ClusterClient<Channel>)>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The client of `node` at `address`, connected lazily (a new address replaces it).
    fn client(&self, node: NodeId, address: &str) -> Result<ClusterClient<Channel>, BrokerError> {
        let mut clients = self.lock();
        if let Some((known, client)) = clients.get(&node)
            && known == address
        {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| BrokerError::Peer {
                node,
                message: format!("bad cluster address {address}: {e}"),
                retriable: false,
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let client = ClusterClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        clients.insert(node, (address.to_string(), client.clone()));
        Ok(client)
    }
}

/// A peer's answer as a broker error: statuses a retry may cure are retriable.
fn peer_error(node: NodeId, status: Status) -> BrokerError {
    use tonic::Code;
    let retriable = matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::FailedPrecondition
            | Code::ResourceExhausted
            | Code::Unknown
            | Code::Cancelled
    );
    BrokerError::Peer {
        node,
        message: status.message().to_string(),
        retriable,
    }
}

impl Peers for ClusterPeers {
    fn produce(
        &self,
        node: NodeId,
        address: String,
        topic: String,
        partition: i32,
        records: Bytes,
        durable: bool,
    ) -> PeerFuture<()> {
        let client = self.client(node, &address);
        Box::pin(async move {
            let mut request = Request::new(PartitionProduce {
                target: node,
                topic,
                partition,
                records: records.to_vec(),
                durable,
            });
            request.set_timeout(PEER_CALL_TIMEOUT);
            client?
                .produce(request)
                .await
                .map_err(|status| peer_error(node, status))?;
            Ok(())
        })
    }

    fn read(
        &self,
        node: NodeId,
        address: String,
        topic: String,
        partition: i32,
        offset: u64,
        max_bytes: usize,
    ) -> PeerFuture<ReadResult> {
        let client = self.client(node, &address);
        Box::pin(async move {
            let mut request = Request::new(PartitionRead {
                target: node,
                topic,
                partition,
                offset,
                max_bytes: u32::try_from(max_bytes).unwrap_or(u32::MAX),
            });
            request.set_timeout(PEER_CALL_TIMEOUT);
            let data = client?
                .read(request)
                .await
                .map_err(|status| peer_error(node, status))?
                .into_inner();
            Ok(ReadResult {
                records: Bytes::from(data.records),
                high_watermark: data.high_watermark,
                log_start: data.log_start,
            })
        })
    }

    fn fetch_replica(
        &self,
        node: NodeId,
        address: String,
        fetch: ReplicaFetch,
    ) -> PeerFuture<ReplicaFetched> {
        let client = self.client(node, &address);
        Box::pin(async move {
            let mut request = Request::new(ReplicaFetchRequest {
                target: node,
                topic: fetch.topic,
                partition: fetch.partition,
                replica: fetch.replica,
                leader_epoch: fetch.leader_epoch,
                fetch_offset: fetch.fetch_offset,
                last_fetched_epoch: fetch.last_fetched_epoch,
                max_bytes: u32::try_from(fetch.max_bytes).unwrap_or(u32::MAX),
            });
            request.set_timeout(REPLICA_FETCH_TIMEOUT);
            let reply = client?
                .replica_fetch(request)
                .await
                .map_err(|status| peer_error(node, status))?
                .into_inner();
            Ok(ReplicaFetched {
                records: Bytes::from(reply.records),
                high_watermark: reply.high_watermark,
                log_start: reply.log_start,
                diverging: reply
                    .diverging
                    .then_some((reply.diverging_epoch, reply.diverging_end_offset)),
            })
        })
    }

    fn commit_offset(&self, node: NodeId, address: String, commit: OffsetCommit) -> PeerFuture<()> {
        let client = self.client(node, &address);
        Box::pin(async move {
            let wire = WireCommit {
                group: commit.group,
                topic: commit.topic,
                partition: commit.partition,
                offset: commit.offset,
                metadata: commit.metadata,
                commit_ms: commit.commit_ms,
            };
            let payload = serde_json::to_vec(&wire).map_err(|e| BrokerError::Peer {
                node,
                message: format!("encode: {e}"),
                retriable: false,
            })?;
            let mut request = Request::new(RaftRequest {
                target: node,
                payload,
            });
            request.set_timeout(PEER_CALL_TIMEOUT);
            client?
                .commit_offset(request)
                .await
                .map_err(|status| peer_error(node, status))?;
            Ok(())
        })
    }
}
