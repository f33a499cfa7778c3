//! Fetch: whole batches from the local log, with the long poll on `max_wait_ms` and
//! `min_bytes`, and the per-partition and per-response byte limits.
//!
//! Every partition is read once; if the answer holds fewer than `min_bytes` and no
//! partition failed, the fetch waits until any requested partition's high watermark moves
//! past its fetch offset (a notification, not a sleep) or the wait runs out, and reads
//! again. The first batch found is returned whole even above the limits, so a consumer
//! always makes progress (KIP-74). Fetch sessions (KIP-227) are not kept: every answer
//! has session id 0, which tells the client to send full fetches.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt as _;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, TopicName};
use runnel_broker::{Broker, BrokerError};
use runnel_log::PartitionLog;
use tokio::time::Instant;
use uuid::Uuid;

use crate::errors;

/// The most one fetch response carries (Kafka's `fetch.max.bytes` default, 55 MiB), so a
/// client cannot make the broker buffer gigabytes for it.
const MAX_RESPONSE_BYTES: usize = 55 << 20;
/// A longer wait than this is cut short (clients ask for 500 ms or so).
const MAX_WAIT: Duration = Duration::from_secs(30);
const READ_COMMITTED: i8 = 1;

struct Wanted {
    topic: usize,
    name: Option<String>,
    partition: i32,
    offset: i64,
    max_bytes: i32,
}

pub async fn fetch(broker: &Broker, request: FetchRequest, version: i16) -> FetchResponse {
    let metadata = broker.metadata();
    let mut topics = Vec::with_capacity(request.topics.len());
    let mut wanted = Vec::new();
    for (index, topic) in request.topics.iter().enumerate() {
        let name = if version >= 13 {
            metadata
                .topics
                .values()
                .find(|t| t.id == topic.topic_id)
                .map(|t| t.name.clone())
        } else {
            Some(topic.topic.0.to_string())
        };
        topics.push((topic.topic.clone(), topic.topic_id));
        for partition in &topic.partitions {
            wanted.push(Wanted {
                topic: index,
                name: name.clone(),
                partition: partition.partition,
                offset: partition.fetch_offset,
                max_bytes: partition.partition_max_bytes,
            });
        }
    }
    drop(metadata);

    let max_wait = Duration::from_millis(request.max_wait_ms.max(0) as u64).min(MAX_WAIT);
    let deadline = Instant::now() + max_wait;
    // A version-0-2 style "no limit" and any larger ask are held to the broker's cap.
    let response_max = usize::try_from(request.max_bytes)
        .ok()
        .filter(|max| *max > 0)
        .map_or(MAX_RESPONSE_BYTES, |max| max.min(MAX_RESPONSE_BYTES));
    let read_committed = request.isolation_level == READ_COMMITTED;
    loop {
        let round = read_round(broker, &wanted, response_max, read_committed).await;
        let now = Instant::now();
        if round.bytes >= request.min_bytes.max(0) as usize
            || round.failed
            || now >= deadline
            || round.waiting.is_empty()
        {
            return assemble(&topics, &wanted, round.partitions, version);
        }
        let waits = round
            .waiting
            .iter()
            .map(|(log, offset)| log.wait_for_data(*offset, deadline - now).boxed());
        futures::future::select_all(waits).await;
    }
}

struct Round {
    partitions: Vec<PartitionData>,
    bytes: usize,
    failed: bool,
    /// The partitions read without error, to wait on: (log, the high watermark this round
    /// saw; the wait ends when it moves).
    waiting: Vec<(Arc<PartitionLog>, u64)>,
}

async fn read_round(
    broker: &Broker,
    wanted: &[Wanted],
    response_max: usize,
    read_committed: bool,
) -> Round {
    let mut round = Round {
        partitions: Vec::with_capacity(wanted.len()),
        bytes: 0,
        failed: false,
        waiting: Vec::new(),
    };
    for want in wanted {
        let mut data = PartitionData::default()
            .with_partition_index(want.partition)
            .with_high_watermark(-1)
            .with_last_stable_offset(-1)
            .with_log_start_offset(-1)
            .with_preferred_read_replica(BrokerId(-1))
            .with_records(Some(Bytes::new()));
        if read_committed {
            data = data.with_aborted_transactions(Some(Vec::new()));
        }
        let Some(name) = &want.name else {
            round.failed = true;
            round
                .partitions
                .push(data.with_error_code(errors::UNKNOWN_TOPIC_ID));
            continue;
        };
        let log = match broker.leader_log(name, want.partition) {
            Ok(log) => log,
            Err(error) => {
                round.failed = true;
                round
                    .partitions
                    .push(data.with_error_code(errors::code(&error)));
                continue;
            }
        };
        let budget = (want.max_bytes.max(0) as usize).min(response_max.saturating_sub(round.bytes));
        let offset = u64::try_from(want.offset).unwrap_or(u64::MAX);
        let result = if budget == 0 && round.bytes > 0 {
            // The response is full: this partition gets its offsets but no records.
            Ok(None)
        } else {
            // Only the first partition with data may exceed its limit (KIP-74).
            log.read_limited(offset, budget.max(1), round.bytes == 0)
                .await
                .map(Some)
        };
        match result {
            Ok(read) => {
                let high_watermark = log.high_watermark();
                let records = read.as_ref().map(|r| r.records.clone()).unwrap_or_default();
                round.bytes += records.len();
                data = data
                    .with_high_watermark(high_watermark as i64)
                    .with_last_stable_offset(high_watermark as i64)
                    .with_log_start_offset(log.log_start() as i64)
                    .with_records(Some(records));
                // Wait for new data, not for data already there but fewer than min_bytes.
                round.waiting.push((log, high_watermark.max(offset)));
            }
            Err(error) => {
                round.failed = true;
                let code = errors::code(&BrokerError::Log(error));
                data = data
                    .with_error_code(code)
                    .with_high_watermark(log.high_watermark() as i64)
                    .with_last_stable_offset(log.high_watermark() as i64)
                    .with_log_start_offset(log.log_start() as i64);
                if code == errors::OFFSET_OUT_OF_RANGE {
                    tracing::debug!(topic = %name, partition = want.partition, offset = want.offset, "fetch out of range");
                }
            }
        }
        round.partitions.push(data);
    }
    round
}

fn assemble(
    topics: &[(TopicName, Uuid)],
    wanted: &[Wanted],
    partitions: Vec<PartitionData>,
    version: i16,
) -> FetchResponse {
    let mut responses: Vec<FetchableTopicResponse> = topics
        .iter()
        .map(|(name, id)| {
            let response = FetchableTopicResponse::default();
            if version >= 13 {
                response.with_topic_id(*id)
            } else {
                response.with_topic(name.clone())
            }
        })
        .collect();
    for (want, data) in wanted.iter().zip(partitions) {
        if let Some(topic) = responses.get_mut(want.topic) {
            topic.partitions.push(data);
        }
    }
    FetchResponse::default().with_responses(responses)
}
