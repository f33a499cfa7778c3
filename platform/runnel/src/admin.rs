//! The admin API on the HTTP port, in the spirit of Redpanda's: JSON over HTTP for
//! operators and scripts, until the Kafka and gRPC admin APIs arrive (and beside them after).
//!
//! - `GET /v1/cluster`: nodes, and this node's view of the controller;
//! - `GET /v1/topics`: every topic with its id, configs and partitions;
//! - `POST /v1/topics` with `{"name", "partitions", "replication_factor"?, "configs"?,
//!   "id"?}`: 201 with the topic, 409 if it exists, 400 if a rule is broken, 503 without a
//!   quorum. A client that sends its own `id` (a UUID) can retry after a 503: the same
//!   creation succeeds again with 201;
//! - `DELETE /v1/topics/{name}`: 200, or 404 for an unknown topic.
//!
//! Errors are `{"error": "..."}` with a readable message.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use runnel_controller::{Command, Controller, ControllerError, MetadataError, TopicMeta};
use serde::{Deserialize, Serialize};

/// The controller, once the node has started it (the HTTP server starts first).
pub type ControllerSlot = Arc<OnceLock<Arc<Controller>>>;

#[derive(Debug, Deserialize)]
pub struct CreateTopic {
    /// The topic's UUID, chosen by the client so it can retry safely: the same creation
    /// sent again succeeds with the first result. Drawn by the node if absent.
    #[serde(default)]
    id: Option<uuid::Uuid>,
    name: String,
    partitions: u32,
    #[serde(default = "one")]
    replication_factor: u16,
    #[serde(default)]
    configs: BTreeMap<String, String>,
}

fn one() -> u16 {
    1
}

#[derive(Debug, Serialize)]
struct Cluster {
    nodes: Vec<runnel_controller::NodeInfo>,
    controller: ControllerView,
}

#[derive(Debug, Serialize)]
struct ControllerView {
    node_id: u64,
    leader: Option<u64>,
    term: u64,
    log_index: u64,
    commit_index: u64,
    applied_index: u64,
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": message.to_string() })),
    )
        .into_response()
}

fn starting() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the controller is starting",
    )
}

fn status_of(failure: &ControllerError) -> StatusCode {
    match failure {
        ControllerError::Rejected(MetadataError::TopicAlreadyExists(_)) => StatusCode::CONFLICT,
        ControllerError::Rejected(MetadataError::UnknownTopic(_)) => StatusCode::NOT_FOUND,
        ControllerError::Rejected(_) => StatusCode::BAD_REQUEST,
        ControllerError::NotLeader { .. } | ControllerError::Unavailable(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ControllerError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub async fn cluster(State(slot): State<ControllerSlot>) -> Response {
    let Some(controller) = slot.get().cloned() else {
        return starting();
    };
    let status = controller.status();
    Json(Cluster {
        nodes: controller.metadata().nodes.values().cloned().collect(),
        controller: ControllerView {
            node_id: controller.node_id(),
            leader: status.leader,
            term: status.term,
            log_index: status.log_index,
            commit_index: status.commit_index,
            applied_index: status.applied_index,
        },
    })
    .into_response()
}

pub async fn list_topics(State(slot): State<ControllerSlot>) -> Response {
    let Some(controller) = slot.get().cloned() else {
        return starting();
    };
    let topics: Vec<TopicMeta> = controller.metadata().topics.values().cloned().collect();
    Json(topics).into_response()
}

pub async fn create_topic(
    State(slot): State<ControllerSlot>,
    body: Result<Json<CreateTopic>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(controller) = slot.get().cloned() else {
        return starting();
    };
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    let name = request.name.clone();
    let command = Command::CreateTopic {
        name: request.name,
        id: request.id.unwrap_or_else(uuid::Uuid::new_v4),
        partitions: request.partitions,
        replication_factor: request.replication_factor,
        configs: request.configs,
    };
    match controller.propose(command).await {
        Ok(_) => match controller.metadata().topics.get(&name) {
            Some(topic) => (StatusCode::CREATED, Json(topic.clone())).into_response(),
            None => error(
                StatusCode::CONFLICT,
                format!("topic `{name}` was deleted meanwhile"),
            ),
        },
        Err(failure) => error(status_of(&failure), failure),
    }
}

pub async fn delete_topic(
    State(slot): State<ControllerSlot>,
    Path(name): Path<String>,
) -> Response {
    let Some(controller) = slot.get().cloned() else {
        return starting();
    };
    match controller.propose(Command::DeleteTopic { name }).await {
        Ok(_) => (StatusCode::OK, Json(serde_json::json!({}))).into_response(),
        Err(failure) => error(status_of(&failure), failure),
    }
}
