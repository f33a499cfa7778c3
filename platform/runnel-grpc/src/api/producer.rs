//! The Producer service: records grouped into one batch per partition, through the
//! broker's produce path (the same validation, idempotence and durability as Kafka
//! produce).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use futures::{Stream, StreamExt};
use runnel_broker::PendingProduce;
use runnel_broker::partitioner::partition_for_key;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::{Backends, broker_status, pb, records, required};

/// Requests of one ProduceStream taken before their answers are sent.
const STREAM_IN_FLIGHT: usize = 64;

pub struct ProducerService {
    backends: Backends,
    /// Picks the partition of keyless records, one per request, round robin.
    next_partition: Arc<AtomicU32>,
}

impl ProducerService {
    pub fn new(backends: Backends) -> ProducerService {
        ProducerService {
            backends,
            next_partition: Arc::new(AtomicU32::new(0)),
        }
    }
}

/// A produce whose batches are queued on their partitions, in order, waiting to be written.
struct Submitted {
    backends: Backends,
    request_id: u64,
    records: usize,
    /// (partition, the request's indexes of its records, the pending write)
    parts: Vec<(i32, Vec<usize>, PendingProduce)>,
}

impl Submitted {
    async fn finish(self) -> Result<pb::ProduceResponse, Status> {
        let mut positions = vec![pb::RecordPosition::default(); self.records];
        for (partition, indexes, pending) in self.parts {
            let produced = pending
                .wait()
                .await
                .map_err(|e| broker_status(&self.backends.broker, e))?;
            for (n, index) in indexes.into_iter().enumerate() {
                positions[index] = pb::RecordPosition {
                    partition,
                    offset: produced.base_offset as i64 + n as i64,
                };
            }
        }
        Ok(pb::ProduceResponse {
            request_id: self.request_id,
            positions,
        })
    }
}

/// Checks `request`, picks each record's partition and queues one batch per partition.
async fn submit(
    backends: &Backends,
    next_partition: &AtomicU32,
    request: pb::ProduceRequest,
) -> Result<Submitted, Status> {
    let broker = &backends.broker;
    let topic = required(&request.topic, "topic")?;
    if request.records.is_empty() {
        return Err(Status::invalid_argument(
            "a produce needs at least one record",
        ));
    }
    if !broker
        .auto_create_topic(topic)
        .await
        .map_err(|e| broker_status(broker, e))?
    {
        return Err(Status::not_found(format!("unknown topic {topic:?}")));
    }
    let count = broker
        .metadata()
        .topics
        .get(topic)
        .map(|t| t.partitions.len() as u32)
        .ok_or_else(|| Status::not_found(format!("unknown topic {topic:?}")))?;
    if let Some(partition) = request.partition
        && (partition < 0 || partition as u32 >= count)
    {
        return Err(Status::not_found(format!(
            "topic {topic:?} has no partition {partition} (it has {count})"
        )));
    }
    let keyless = next_partition.fetch_add(1, Ordering::Relaxed) % count.max(1);
    let mut by_partition: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    for (index, record) in request.records.iter().enumerate() {
        let partition = match (request.partition, &record.key) {
            (Some(partition), _) => partition,
            (None, Some(key)) => partition_for_key(key, count),
            (None, None) => keyless as i32,
        };
        by_partition.entry(partition).or_default().push(index);
    }
    let durable = request.acks() == pb::Acks::All;
    let now = runnel_log::now_ms();
    let mut parts = Vec::with_capacity(by_partition.len());
    for (partition, indexes) in by_partition {
        let chosen: Vec<&pb::Record> = indexes.iter().map(|i| &request.records[*i]).collect();
        let batch = records::batch_of(&chosen, now)?;
        let pending = broker
            .submit_produce(topic, partition, batch.freeze(), durable)
            .await
            .map_err(|e| broker_status(broker, e))?;
        parts.push((partition, indexes, pending));
    }
    Ok(Submitted {
        backends: backends.clone(),
        request_id: request.request_id,
        records: request.records.len(),
        parts,
    })
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::ProduceResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::producer_server::Producer for ProducerService {
    async fn produce(
        &self,
        request: Request<pb::ProduceRequest>,
    ) -> Result<Response<pb::ProduceResponse>, Status> {
        let submitted = submit(&self.backends, &self.next_partition, request.into_inner()).await?;
        Ok(Response::new(submitted.finish().await?))
    }

    type ProduceStreamStream = ResponseStream;

    /// Requests are queued in arrival order (so their records keep it), their writes
    /// awaited in that order too; at most [`STREAM_IN_FLIGHT`] are between the two.
    async fn produce_stream(
        &self,
        request: Request<Streaming<pb::ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (queued, mut waiting) = mpsc::channel::<Result<Submitted, Status>>(STREAM_IN_FLIGHT);
        let (answers, outbound) = mpsc::channel(STREAM_IN_FLIGHT);
        let backends = self.backends.clone();
        let next_partition = self.next_partition.clone();
        tokio::spawn(async move {
            while let Some(next) = inbound.next().await {
                let submitted = match next {
                    Ok(request) => submit(&backends, &next_partition, request).await,
                    Err(status) => Err(status),
                };
                let failed = submitted.is_err();
                if queued.send(submitted).await.is_err() || failed {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(submitted) = waiting.recv().await {
                let answer = match submitted {
                    Ok(submitted) => submitted.finish().await,
                    Err(status) => Err(status),
                };
                let failed = answer.is_err();
                if answers.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(outbound);
        Ok(Response::new(Box::pin(stream)))
    }
}
