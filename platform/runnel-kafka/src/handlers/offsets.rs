//! ListOffsets, OffsetForLeaderEpoch and DeleteRecords.

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    DeleteRecordsRequest, DeleteRecordsResponse, ListOffsetsRequest, ListOffsetsResponse,
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
};
use runnel_broker::{Broker, BrokerError};

use crate::errors;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;

pub async fn list_offsets(broker: &Broker, request: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in topic.partitions {
            let response = ListOffsetsPartitionResponse::default()
                .with_partition_index(partition.partition_index)
                .with_timestamp(-1)
                .with_offset(-1)
                .with_leader_epoch(-1);
            let found = lookup(
                broker,
                &topic.name.0,
                partition.partition_index,
                partition.timestamp,
            )
            .await;
            partitions.push(match found {
                Ok(Some((offset, timestamp))) => response
                    .with_offset(offset as i64)
                    .with_timestamp(timestamp),
                Ok(None) => response,
                Err(error) => response.with_error_code(errors::code(&error)),
            });
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// The offset (and timestamp) a ListOffsets query names; `None` if no record matches.
async fn lookup(
    broker: &Broker,
    topic: &str,
    partition: i32,
    timestamp: i64,
) -> Result<Option<(u64, i64)>, BrokerError> {
    let log = broker.leader_log(topic, partition)?;
    Ok(match timestamp {
        LATEST => Some((log.high_watermark(), -1)),
        EARLIEST => Some((log.log_start(), -1)),
        EARLIEST_LOCAL => Some((log.local_log_start(), -1)),
        MAX_TIMESTAMP => {
            let newest = log.segments().iter().map(|s| s.max_timestamp).max();
            match newest {
                Some(newest) if newest >= 0 => log.find_timestamp(newest).await?,
                _ => None,
            }
        }
        at if at >= 0 => log.find_timestamp(at).await?,
        _ => {
            return Err(BrokerError::Log(runnel_log::LogError::OffsetOutOfRange {
                offset: 0,
                log_start: log.log_start(),
                log_end: log.high_watermark(),
            }));
        }
    })
}

/// Leader epochs do not change yet (there is no replication to move leadership), so the
/// current epoch ends at the log end and no earlier epoch is known.
pub fn offset_for_leader_epoch(
    broker: &Broker,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let metadata = broker.metadata();
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .into_iter()
                .map(|p| {
                    let answer = EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_leader_epoch(-1)
                        .with_end_offset(-1);
                    let log = match broker.leader_log(&topic.topic.0, p.partition) {
                        Ok(log) => log,
                        Err(error) => return answer.with_error_code(errors::code(&error)),
                    };
                    let current = metadata
                        .topics
                        .get(topic.topic.0.as_str())
                        .and_then(|t| t.partitions.get(p.partition as usize))
                        .map_or(0, |m| m.leader_epoch);
                    if p.current_leader_epoch > current {
                        return answer.with_error_code(errors::UNKNOWN_LEADER_EPOCH);
                    }
                    if p.current_leader_epoch >= 0 && p.current_leader_epoch < current {
                        return answer.with_error_code(errors::FENCED_LEADER_EPOCH);
                    }
                    if p.leader_epoch >= current {
                        answer
                            .with_leader_epoch(current)
                            .with_end_offset(log.high_watermark() as i64)
                    } else {
                        answer
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

pub async fn delete_records(
    broker: &Broker,
    request: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in topic.partitions {
            let result = DeleteRecordsPartitionResult::default()
                .with_partition_index(partition.partition_index)
                .with_low_watermark(-1);
            let outcome = async {
                let log = broker.leader_log(&topic.name.0, partition.partition_index)?;
                // -1 means "up to the high watermark".
                let before = if partition.offset == -1 {
                    log.high_watermark()
                } else {
                    u64::try_from(partition.offset).map_err(|_| {
                        BrokerError::Log(runnel_log::LogError::OffsetOutOfRange {
                            offset: 0,
                            log_start: log.log_start(),
                            log_end: log.high_watermark(),
                        })
                    })?
                };
                Ok::<u64, BrokerError>(log.delete_records(before).await?)
            }
            .await;
            partitions.push(match outcome {
                Ok(low) => result.with_low_watermark(low as i64),
                Err(error) => result.with_error_code(errors::code(&error)),
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
