//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs for topics (and an empty
//! description of the broker, which has no dynamic configs yet).

use std::collections::BTreeMap;

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use runnel_broker::Broker;
use runnel_controller::Command;

use super::text;
use crate::errors::{self, KafkaError};

pub const TOPIC: i8 = 2;
pub const BROKER: i8 = 4;
pub const DYNAMIC_TOPIC_CONFIG: i8 = 1;
pub const DEFAULT_CONFIG: i8 = 5;

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

// Kafka's config types, so tools can show and check values.
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_LONG: i8 = 5;
const TYPE_DOUBLE: i8 = 6;
const TYPE_LIST: i8 = 7;

fn config_type(key: &str, value: &str) -> i8 {
    if key == "cleanup.policy" {
        TYPE_LIST
    } else if value == "true" || value == "false" {
        TYPE_BOOLEAN
    } else if value.parse::<i64>().is_ok() {
        TYPE_LONG
    } else if value.parse::<f64>().is_ok() {
        TYPE_DOUBLE
    } else {
        TYPE_STRING
    }
}

pub fn describe_configs(
    broker: &Broker,
    request: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            match resource.resource_type {
                TOPIC => match broker.topic_configs(&resource.resource_name) {
                    Ok(described) => {
                        // No keys (null or empty) means every key.
                        let wanted = |key: &str| {
                            resource
                                .configuration_keys
                                .as_ref()
                                .filter(|keys| !keys.is_empty())
                                .is_none_or(|keys| keys.iter().any(|k| k.as_str() == key))
                        };
                        let configs = described
                            .effective
                            .entries()
                            .into_iter()
                            .filter(|(key, _)| wanted(key))
                            .map(|(key, value)| {
                                let source = if described.overrides.contains_key(key) {
                                    DYNAMIC_TOPIC_CONFIG
                                } else {
                                    DEFAULT_CONFIG
                                };
                                let mut entry = DescribeConfigsResourceResult::default()
                                    .with_name(text(key))
                                    .with_config_source(source)
                                    .with_value(Some(text(value.clone())));
                                if version >= 3 {
                                    entry = entry.with_config_type(config_type(key, &value));
                                }
                                entry
                            })
                            .collect();
                        result.with_configs(configs)
                    }
                    Err(error) => {
                        let error = KafkaError::from(error);
                        result
                            .with_error_code(error.code)
                            .with_error_message(Some(text(error.message)))
                    }
                },
                BROKER
                    if resource.resource_name.is_empty()
                        || resource.resource_name.as_str() == broker.node_id().to_string() =>
                {
                    result
                }
                other => result
                    .with_error_code(errors::INVALID_REQUEST)
                    .with_error_message(Some(text(format!(
                        "describing resource type {other} ({}) is not supported",
                        resource.resource_name
                    )))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// What a resource's alteration resolves to, or why it cannot be done.
fn resolve_topic(resource_type: i8, name: &StrBytes) -> Result<String, KafkaError> {
    if resource_type != TOPIC {
        return Err(KafkaError::new(
            errors::INVALID_REQUEST,
            format!("altering resource type {resource_type} is not supported; only topics (2)"),
        ));
    }
    Ok(name.to_string())
}

async fn alter(
    broker: &Broker,
    topic: String,
    set: BTreeMap<String, String>,
    remove: Vec<String>,
    validate_only: bool,
) -> Result<(), KafkaError> {
    broker
        .admin(
            Command::AlterTopicConfigs {
                name: topic,
                set,
                remove,
            },
            validate_only,
        )
        .await
        .map(|_| ())
        .map_err(KafkaError::from)
}

/// AlterConfigs replaces a topic's overrides with exactly the ones given.
pub async fn alter_configs(broker: &Broker, request: AlterConfigsRequest) -> AlterConfigsResponse {
    use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let outcome = async {
            let topic = resolve_topic(resource.resource_type, &resource.resource_name)?;
            let current = broker.topic_configs(&topic).map_err(KafkaError::from)?;
            let set: BTreeMap<String, String> = resource
                .configs
                .iter()
                .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
                .collect();
            let remove = current
                .overrides
                .keys()
                .filter(|key| !set.contains_key(*key))
                .cloned()
                .collect();
            alter(broker, topic, set, remove, request.validate_only).await
        }
        .await;
        let response = AlterConfigsResourceResponse::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name);
        responses.push(match outcome {
            Ok(()) => response,
            Err(error) => response
                .with_error_code(error.code)
                .with_error_message(Some(text(error.message))),
        });
    }
    AlterConfigsResponse::default().with_responses(responses)
}

/// IncrementalAlterConfigs sets, deletes, appends to or subtracts from single keys.
pub async fn incremental_alter_configs(
    broker: &Broker,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let outcome = async {
            let topic = resolve_topic(resource.resource_type, &resource.resource_name)?;
            let current = broker.topic_configs(&topic).map_err(KafkaError::from)?;
            let mut set = BTreeMap::new();
            let mut remove = Vec::new();
            for config in &resource.configs {
                let key = config.name.to_string();
                let value = config.value.as_ref().map(|v| v.to_string());
                match (config.config_operation, value) {
                    (OP_SET, Some(value)) => {
                        set.insert(key, value);
                    }
                    (OP_DELETE, _) => remove.push(key),
                    (op @ (OP_APPEND | OP_SUBTRACT), Some(value)) => {
                        let existing = current.effective.get(&key).ok_or_else(|| {
                            KafkaError::new(
                                errors::INVALID_CONFIG,
                                format!("unknown topic config `{key}`"),
                            )
                        })?;
                        let mut items: Vec<String> = existing
                            .split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect();
                        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                            if op == OP_APPEND {
                                if !items.iter().any(|i| i == item) {
                                    items.push(item.to_string());
                                }
                            } else {
                                items.retain(|i| i != item);
                            }
                        }
                        set.insert(key, items.join(","));
                    }
                    (op, _) => {
                        return Err(KafkaError::new(
                            errors::INVALID_REQUEST,
                            format!("config operation {op} on `{key}` needs a value or is unknown"),
                        ));
                    }
                }
            }
            alter(broker, topic, set, remove, request.validate_only).await
        }
        .await;
        let response = AlterConfigsResourceResponse::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name);
        responses.push(match outcome {
            Ok(()) => response,
            Err(error) => response
                .with_error_code(error.code)
                .with_error_message(Some(text(error.message))),
        });
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
