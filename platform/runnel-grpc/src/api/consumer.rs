//! The Consumer service: Fetch (one partition, long poll), Subscribe (a stream over a
//! topic's partitions that follows new records), SubscribeGroup (a stream as a member of a
//! consumer group, see [`super::group_stream`]) and Commit (a group's offsets, shared with
//! Kafka clients).

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use runnel_broker::groups::CommittedOffset;
use runnel_log::PartitionLog;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::{Backends, broker_status, group_status, groups_loaded, pb, records, required};

/// Bytes read per partition and round when a request does not say.
pub(super) const DEFAULT_MAX_BYTES: usize = 1 << 20;
/// The longest long poll of a Fetch.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Records per Subscribe message when the request does not say.
pub(super) const DEFAULT_SUBSCRIBE_RECORDS: usize = 500;
/// How long an idle Subscribe waits before checking that its client is still there.
const IDLE_CHECK: Duration = Duration::from_secs(1);

pub struct ConsumerService {
    backends: Backends,
}

impl ConsumerService {
    pub fn new(backends: Backends) -> ConsumerService {
        ConsumerService { backends }
    }
}

/// Reads the records of `log` from `offset`: up to `max_records` (0: all in `max_bytes`).
pub(super) async fn read(
    backends: &Backends,
    log: &PartitionLog,
    topic: &str,
    partition: i32,
    offset: u64,
    max_records: usize,
    max_bytes: usize,
) -> Result<(Vec<pb::ConsumedRecord>, u64, u64, u64), Status> {
    let read = log
        .read(offset, max_bytes)
        .await
        .map_err(|e| broker_status(&backends.broker, e.into()))?;
    let (found, next) = records::records_of(topic, partition, &read.records, offset, max_records)?;
    Ok((found, next, read.high_watermark, read.log_start))
}

fn offset_of(value: i64) -> Result<u64, Status> {
    u64::try_from(value).map_err(|_| Status::out_of_range(format!("offset {value} is negative")))
}

type SubscribeStream =
    tokio_stream::wrappers::ReceiverStream<Result<pb::SubscribeResponse, Status>>;

#[tonic::async_trait]
impl pb::consumer_server::Consumer for ConsumerService {
    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        let request = request.into_inner();
        let broker = &self.backends.broker;
        let topic = required(&request.topic, "topic")?;
        let log = broker
            .leader_log(topic, request.partition)
            .map_err(|e| broker_status(broker, e))?;
        let offset = offset_of(request.offset)?;
        let max_bytes = match request.max_bytes {
            0 => DEFAULT_MAX_BYTES,
            n => n as usize,
        };
        let wait = Duration::from_millis(u64::from(request.max_wait_ms)).min(MAX_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (records, next, high_watermark, log_start) = read(
                &self.backends,
                &log,
                topic,
                request.partition,
                offset,
                request.max_records as usize,
                max_bytes,
            )
            .await?;
            let now = tokio::time::Instant::now();
            if !records.is_empty() || now >= deadline || next > offset {
                return Ok(Response::new(pb::FetchResponse {
                    records,
                    next_offset: next as i64,
                    high_watermark: high_watermark as i64,
                    log_start_offset: log_start as i64,
                }));
            }
            log.wait_for_data(offset, deadline - now).await;
        }
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<SubscribeStream>, Status> {
        let request = request.into_inner();
        let broker = &self.backends.broker;
        let topic = required(&request.topic, "topic")?.to_string();
        let count = broker
            .metadata()
            .topics
            .get(&topic)
            .map(|t| t.partitions.len() as i32)
            .ok_or_else(|| Status::not_found(format!("unknown topic {topic:?}")))?;
        let partitions: Vec<i32> = if request.partitions.is_empty() {
            (0..count).collect()
        } else {
            request.partitions.clone()
        };
        let committed = match request.start {
            Some(pb::subscribe_request::Start::Position(p))
                if p == pb::StartPosition::StartCommitted as i32 =>
            {
                let group = required(&request.group, "group (to start from its commits)")?;
                groups_loaded(&self.backends.groups).await?;
                Some(
                    self.backends
                        .groups
                        .committed(group)
                        .map_err(|e| group_status(&self.backends.groups, group, e))?,
                )
            }
            _ => None,
        };
        let mut cursors: Vec<(i32, Arc<PartitionLog>, u64)> = Vec::new();
        for partition in partitions {
            let log = broker
                .leader_log(&topic, partition)
                .map_err(|e| broker_status(broker, e))?;
            let start = match request.start {
                Some(pb::subscribe_request::Start::Offset(offset)) => offset_of(offset)?,
                Some(pb::subscribe_request::Start::Position(p))
                    if p == pb::StartPosition::StartLatest as i32 =>
                {
                    log.high_watermark()
                }
                _ => committed
                    .as_ref()
                    .and_then(|c| c.get(&(topic.clone(), partition)))
                    .and_then(|c| u64::try_from(c.offset).ok())
                    .unwrap_or_else(|| log.log_start())
                    .max(log.log_start()),
            };
            cursors.push((partition, log, start));
        }
        let max_records = match request.max_records {
            0 => DEFAULT_SUBSCRIBE_RECORDS,
            n => n as usize,
        };
        let (sender, receiver) = mpsc::channel(4);
        let backends = self.backends.clone();
        tokio::spawn(async move {
            loop {
                let mut sent_any = false;
                for (partition, log, offset) in &mut cursors {
                    let read = read(
                        &backends,
                        log,
                        &topic,
                        *partition,
                        *offset,
                        max_records,
                        DEFAULT_MAX_BYTES,
                    )
                    .await;
                    match read {
                        Ok((records, next, _, _)) => {
                            *offset = next;
                            if records.is_empty() {
                                continue;
                            }
                            sent_any = true;
                            let message = pb::SubscribeResponse { records };
                            if sender.send(Ok(message)).await.is_err() {
                                return;
                            }
                        }
                        Err(status) => {
                            let _ = sender.send(Err(status)).await;
                            return;
                        }
                    }
                }
                if sent_any {
                    continue;
                }
                let waits = cursors
                    .iter()
                    .map(|(_, log, offset)| log.wait_for_data(*offset, IDLE_CHECK).boxed());
                tokio::select! {
                    _ = futures::future::select_all(waits) => {}
                    _ = sender.closed() => return,
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        )))
    }

    type SubscribeGroupStream = super::group_stream::GroupStream;

    async fn subscribe_group(
        &self,
        request: Request<pb::SubscribeGroupRequest>,
    ) -> Result<Response<Self::SubscribeGroupStream>, Status> {
        let client_host = request
            .remote_addr()
            .map_or_else(String::new, |address| address.ip().to_string());
        let stream = super::group_stream::subscribe_group(
            self.backends.clone(),
            request.into_inner(),
            client_host,
        )
        .await?;
        Ok(Response::new(stream))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let request = request.into_inner();
        let groups = &self.backends.groups;
        let group = required(&request.group, "group")?;
        let topic = required(&request.topic, "topic")?;
        groups_loaded(groups).await?;
        let now = runnel_log::now_ms();
        let commits = request
            .offsets
            .into_iter()
            .map(|p| {
                (
                    topic.to_string(),
                    p.partition,
                    CommittedOffset {
                        offset: p.offset,
                        leader_epoch: -1,
                        metadata: p.metadata,
                        commit_ms: now,
                    },
                )
            })
            .collect();
        // A SubscribeGroup member commits with its id and epoch; anyone else only while
        // the group has no members.
        let epoch = if request.member_id.is_empty() {
            -1
        } else {
            request.member_epoch
        };
        groups
            .commit(group, &request.member_id, None, epoch, commits)
            .await
            .map_err(|e| group_status(groups, group, e))?;
        Ok(Response::new(pb::CommitResponse {}))
    }
}
