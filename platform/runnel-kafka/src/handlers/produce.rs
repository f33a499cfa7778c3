//! Produce and InitProducerId.

use std::sync::Arc;

use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse, ProducerId,
    ResponseKind,
};
use runnel_broker::{Broker, BrokerError, PendingProduce};

use super::{Answer, Reply, text};
use crate::errors::{self, KafkaError};

/// The first step queues every partition's batches in request order; the reply waits for
/// the appends (and, with acks=all, their fsync).
pub async fn produce(broker: &Arc<Broker>, request: ProduceRequest, version: i16) -> Reply {
    let acks = request.acks;
    let transactional = request
        .transactional_id
        .as_ref()
        .is_some_and(|id| !id.0.is_empty());
    let mut topics = Vec::with_capacity(request.topic_data.len());
    for topic in request.topic_data {
        let name = topic.name.0.to_string();
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for partition in topic.partition_data {
            let outcome = if !matches!(acks, -1..=1) {
                Err(KafkaError::new(
                    errors::INVALID_REQUIRED_ACKS,
                    format!("acks must be -1, 0 or 1, not {acks}"),
                ))
            } else if transactional {
                Err(KafkaError::from(BrokerError::TransactionsUnsupported))
            } else {
                match partition.records {
                    None => Err(KafkaError::new(
                        errors::CORRUPT_MESSAGE,
                        "a produce request without records",
                    )),
                    Some(records) => broker
                        .submit_produce(&name, partition.index, records, acks == -1)
                        .await
                        .map_err(KafkaError::from),
                }
            };
            partitions.push((partition.index, outcome));
        }
        topics.push((topic.name, partitions));
    }
    if acks == 0 {
        // Nobody waits for a response; a failure closes the connection once the appends
        // queued before it are done (the writer answers in request order).
        return Box::pin(async move {
            let mut failed = false;
            for (name, partitions) in topics {
                for (index, outcome) in partitions {
                    let result = match outcome {
                        Ok(pending) => wait(pending).await.map(drop),
                        Err(error) => Err(error),
                    };
                    if let Err(error) = result {
                        tracing::debug!(topic = %name.0, partition = index, code = error.code, error = %error.message, "acks=0 produce refused; closing the connection");
                        failed = true;
                    }
                }
            }
            if failed {
                Answer::Close
            } else {
                Answer::Nothing
            }
        });
    }
    let broker = broker.clone();
    Box::pin(async move {
        let mut responses = Vec::with_capacity(topics.len());
        for (name, partitions) in topics {
            let mut partition_responses = Vec::with_capacity(partitions.len());
            for (index, outcome) in partitions {
                let finished = match outcome {
                    Ok(pending) => wait(pending).await,
                    Err(error) => Err(error),
                };
                let log_start = broker
                    .leader_log(&name.0, index)
                    .map_or(-1, |log| log.log_start() as i64);
                let mut response = PartitionProduceResponse::default()
                    .with_index(index)
                    .with_log_start_offset(log_start)
                    .with_log_append_time_ms(-1);
                match finished {
                    Ok(produced) => {
                        response = response
                            .with_base_offset(produced.base_offset as i64)
                            .with_log_append_time_ms(produced.log_append_time.unwrap_or(-1));
                    }
                    Err(error) => {
                        tracing::debug!(topic = %name.0, partition = index, code = error.code, error = %error.message, "produce refused");
                        response = response.with_base_offset(-1).with_error_code(error.code);
                        if version >= 8 {
                            response = response.with_error_message(Some(text(error.message)));
                        }
                    }
                }
                partition_responses.push(response);
            }
            responses.push(
                TopicProduceResponse::default()
                    .with_name(name)
                    .with_partition_responses(partition_responses),
            );
        }
        Answer::Respond(ResponseKind::Produce(
            ProduceResponse::default().with_responses(responses),
        ))
    })
}

async fn wait(pending: PendingProduce) -> Result<runnel_broker::Produced, KafkaError> {
    pending.wait().await.map_err(KafkaError::from)
}

/// Hands out producer ids for idempotent producers: always a new id at epoch 0, also to a
/// producer that sends its current one (as Kafka does without a transactional id).
pub async fn init_producer_id(
    broker: &Broker,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let response = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if request
        .transactional_id
        .as_ref()
        .is_some_and(|id| !id.0.is_empty())
    {
        return response.with_error_code(errors::INVALID_REQUEST);
    }
    match broker.next_producer_id().await {
        Ok(id) => response
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Err(error) => response.with_error_code(errors::code(&error)),
    }
}
