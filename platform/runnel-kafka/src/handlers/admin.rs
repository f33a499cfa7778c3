//! CreateTopics, DeleteTopics and CreatePartitions, through the controller.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
};
use runnel_broker::Broker;
use runnel_controller::Command;

use super::configs::{DEFAULT_CONFIG, DYNAMIC_TOPIC_CONFIG};
use super::text;
use crate::errors::{self, KafkaError};

pub async fn create_topics(
    broker: &Broker,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let result = CreatableTopicResult::default()
            .with_name(topic.name.clone())
            .with_num_partitions(-1)
            .with_replication_factor(-1);
        if !topic.assignments.is_empty() {
            results.push(fail(
                result,
                version,
                KafkaError::new(
                    errors::INVALID_REPLICA_ASSIGNMENT,
                    "manual replica assignment is not supported; give a partition count",
                ),
            ));
            continue;
        }
        let partitions = if topic.num_partitions == -1 {
            broker.settings().default_partitions
        } else {
            match u32::try_from(topic.num_partitions) {
                Ok(n) => n,
                Err(_) => {
                    results.push(fail(
                        result,
                        version,
                        KafkaError::new(
                            errors::INVALID_PARTITIONS,
                            format!("{} partitions", topic.num_partitions),
                        ),
                    ));
                    continue;
                }
            }
        };
        let replication_factor = if topic.replication_factor == -1 {
            broker.settings().default_replication_factor
        } else {
            match u16::try_from(topic.replication_factor) {
                Ok(n) if n > 0 => n,
                _ => {
                    results.push(fail(
                        result,
                        version,
                        KafkaError::new(
                            errors::INVALID_REPLICATION_FACTOR,
                            format!("replication factor {}", topic.replication_factor),
                        ),
                    ));
                    continue;
                }
            }
        };
        let mut configs = BTreeMap::new();
        for config in topic.configs {
            if let Some(value) = config.value {
                configs.insert(config.name.to_string(), value.to_string());
            }
        }
        let id = uuid::Uuid::new_v4();
        let command = Command::CreateTopic {
            name: name.clone(),
            id,
            partitions,
            replication_factor,
            configs,
        };
        match broker.admin(command, request.validate_only).await {
            Ok(_) => {
                if !request.validate_only {
                    broker
                        .wait_until_served(&name, wait_for(request.timeout_ms))
                        .await;
                }
                let mut result = result
                    .with_num_partitions(partitions as i32)
                    .with_replication_factor(replication_factor as i16);
                if !request.validate_only {
                    result = result.with_topic_id(id);
                }
                if version >= 5
                    && let Ok(described) = broker.topic_configs(&name)
                {
                    result = result.with_configs(Some(
                        described
                            .effective
                            .entries()
                            .into_iter()
                            .map(|(key, value)| {
                                let source = if described.overrides.contains_key(key) {
                                    DYNAMIC_TOPIC_CONFIG
                                } else {
                                    DEFAULT_CONFIG
                                };
                                CreatableTopicConfigs::default()
                                    .with_name(text(key))
                                    .with_value(Some(text(value)))
                                    .with_config_source(source)
                            })
                            .collect(),
                    ));
                }
                results.push(result);
            }
            Err(error) => results.push(fail(result, version, KafkaError::from(error))),
        }
    }
    CreateTopicsResponse::default().with_topics(results)
}

fn fail(result: CreatableTopicResult, version: i16, error: KafkaError) -> CreatableTopicResult {
    let result = result.with_error_code(error.code);
    if version >= 1 {
        result.with_error_message(Some(text(error.message)))
    } else {
        result
    }
}

pub async fn delete_topics(broker: &Broker, request: DeleteTopicsRequest) -> DeleteTopicsResponse {
    // Up to v5 topics come by name in `topic_names`; from v6 in `topics`, by name or id.
    let mut wanted: Vec<(Option<String>, uuid::Uuid)> = request
        .topic_names
        .iter()
        .map(|name| (Some(name.0.to_string()), uuid::Uuid::nil()))
        .collect();
    wanted.extend(
        request
            .topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)),
    );
    let mut responses = Vec::with_capacity(wanted.len());
    for (name, id) in wanted {
        let metadata = broker.metadata();
        let resolved = match &name {
            Some(name) => metadata.topics.get(name),
            None => metadata.topics.values().find(|t| t.id == id),
        };
        let mut result = DeletableTopicResult::default()
            .with_name(name.clone().map(|n| TopicName(text(n))))
            .with_topic_id(id);
        let Some(topic) = resolved else {
            let code = if name.is_some() {
                errors::UNKNOWN_TOPIC_OR_PARTITION
            } else {
                errors::UNKNOWN_TOPIC_ID
            };
            responses.push(
                result
                    .with_error_code(code)
                    .with_error_message(Some(text("no such topic"))),
            );
            continue;
        };
        let topic_name = topic.name.clone();
        result = result
            .with_name(Some(TopicName(text(topic_name.clone()))))
            .with_topic_id(topic.id);
        drop(metadata);
        match broker
            .admin(Command::DeleteTopic { name: topic_name }, false)
            .await
        {
            Ok(_) => responses.push(result),
            Err(error) => {
                let error = KafkaError::from(error);
                responses.push(
                    result
                        .with_error_code(error.code)
                        .with_error_message(Some(text(error.message))),
                );
            }
        }
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

pub async fn create_partitions(
    broker: &Broker,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
        let outcome = if topic.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
            Err(KafkaError::new(
                errors::INVALID_REPLICA_ASSIGNMENT,
                "manual replica assignment is not supported",
            ))
        } else {
            match u32::try_from(topic.count) {
                Ok(total) => broker
                    .admin(
                        Command::CreatePartitions {
                            name: topic.name.0.to_string(),
                            total,
                        },
                        request.validate_only,
                    )
                    .await
                    .map(|_| ())
                    .map_err(KafkaError::from),
                Err(_) => Err(KafkaError::new(
                    errors::INVALID_PARTITIONS,
                    format!("{} partitions", topic.count),
                )),
            }
        };
        if outcome.is_ok() && !request.validate_only {
            broker
                .wait_until_served(&topic.name.0, wait_for(request.timeout_ms))
                .await;
        }
        results.push(match outcome {
            Ok(()) => result,
            Err(error) => result
                .with_error_code(error.code)
                .with_error_message(Some(text(error.message))),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}

/// How long an admin request waits for its partitions to open: its own timeout, within
/// reason.
fn wait_for(timeout_ms: i32) -> std::time::Duration {
    std::time::Duration::from_millis(timeout_ms.clamp(0, 30_000) as u64)
        .min(runnel_broker::broker::ADMIN_WAIT)
}
