//! The Functions service: deploy, list, describe, pause, resume, delete and the log stream
//! of Wasm functions, over [`runnel_functions::Functions`].

use std::time::Duration;

use runnel_controller::FunctionLimits;
use runnel_functions::{Deploy, FunctionError, Functions, FunctionsError, Kind};
use tonic::{Request, Response, Status};

use super::{Backends, broker_status, pb, required};

/// How long a followed log stream waits for a line before checking the client is there.
const FOLLOW_WAIT: Duration = Duration::from_secs(1);

pub struct FunctionsService {
    backends: Backends,
}

impl FunctionsService {
    pub fn new(backends: Backends) -> FunctionsService {
        FunctionsService { backends }
    }

    fn functions(&self) -> &std::sync::Arc<Functions> {
        &self.backends.functions
    }

    fn status(&self, error: FunctionsError) -> Status {
        match error {
            FunctionsError::UnknownFunction(name) => {
                Status::not_found(format!("unknown function {name:?}"))
            }
            FunctionsError::Invalid(reason) => Status::invalid_argument(reason),
            FunctionsError::Component(FunctionError::TooLarge { .. }) => {
                Status::resource_exhausted(error.to_string())
            }
            FunctionsError::Component(error) => Status::invalid_argument(error.to_string()),
            FunctionsError::Store(error) if error.is_retryable() => {
                Status::unavailable(error.to_string())
            }
            FunctionsError::Store(error) => Status::internal(error.to_string()),
            FunctionsError::Broker(error) => broker_status(&self.backends.broker, error),
        }
    }
}

/// The call timeout of connectors unless asked otherwise: their calls wait on HTTP.
const CONNECTOR_CALL_TIMEOUT_MS: u64 = 30_000;

fn limits_of(limits: Option<pb::FunctionLimits>, kind: Kind) -> FunctionLimits {
    let mut defaults = FunctionLimits::default();
    if kind.is_connector() {
        defaults.call_timeout_ms = CONNECTOR_CALL_TIMEOUT_MS;
    }
    let Some(limits) = limits else {
        return defaults;
    };
    let or = |value: u64, default: u64| if value == 0 { default } else { value };
    FunctionLimits {
        memory_bytes: or(limits.memory_bytes, defaults.memory_bytes),
        call_timeout_ms: or(limits.call_timeout_ms, defaults.call_timeout_ms),
        batch_records: if limits.batch_records == 0 {
            defaults.batch_records
        } else {
            limits.batch_records
        },
        retries: limits.retries.unwrap_or(defaults.retries),
    }
}

fn limits_to_pb(limits: &FunctionLimits) -> pb::FunctionLimits {
    pb::FunctionLimits {
        memory_bytes: limits.memory_bytes,
        call_timeout_ms: limits.call_timeout_ms,
        batch_records: limits.batch_records,
        retries: Some(limits.retries),
    }
}

type LogStream = tokio_stream::wrappers::ReceiverStream<Result<pb::FunctionLogLine, Status>>;

#[tonic::async_trait]
impl pb::functions_server::Functions for FunctionsService {
    async fn deploy(
        &self,
        request: Request<pb::DeployFunctionRequest>,
    ) -> Result<Response<pb::DeployFunctionResponse>, Status> {
        let request = request.into_inner();
        let name = required(&request.name, "name")?.to_string();
        let kind = Kind::parse(&request.kind).ok_or_else(|| {
            Status::invalid_argument(format!(
                "kind {:?}: one of transform, consumer, source, sink",
                request.kind
            ))
        })?;
        let on_failure = if request.on_failure.is_empty() {
            // A connector's target being down is no reason to dead-letter records.
            if kind.is_connector() { "retry" } else { "dlq" }.to_string()
        } else {
            request.on_failure
        };
        let digest = runnel_functions::digest(&request.component);
        let deploy = Deploy {
            name,
            kind,
            component: request.component.into(),
            inputs: request.inputs,
            outputs: request.outputs,
            config: request.config.into_iter().collect(),
            grants: (!request.grant_all).then_some(request.grants),
            limits: limits_of(request.limits, kind),
            on_failure,
            paused: request.paused,
            allow_hosts: request.allow_hosts,
            poll_interval_ms: request.poll_interval_ms,
        };
        let version = self
            .functions()
            .deploy(deploy)
            .await
            .map_err(|e| self.status(e))?;
        Ok(Response::new(pb::DeployFunctionResponse {
            version,
            digest,
        }))
    }

    async fn list(
        &self,
        _request: Request<pb::ListFunctionsRequest>,
    ) -> Result<Response<pb::ListFunctionsResponse>, Status> {
        let functions = self
            .functions()
            .list()
            .into_iter()
            .map(|spec| pb::FunctionSummary {
                name: spec.name,
                kind: spec.kind,
                version: spec.version,
                inputs: spec.inputs,
                outputs: spec.outputs,
                paused: spec.paused,
            })
            .collect();
        Ok(Response::new(pb::ListFunctionsResponse { functions }))
    }

    async fn describe(
        &self,
        request: Request<pb::DescribeFunctionRequest>,
    ) -> Result<Response<pb::FunctionDescription>, Status> {
        let name = request.into_inner().name;
        let described = self
            .functions()
            .describe(&name)
            .map_err(|e| self.status(e))?;
        let partitions = described
            .partitions
            .iter()
            .map(|p| pb::FunctionPartition {
                topic: p.topic.clone(),
                partition: p.partition,
                version: p.version,
                state: p.state.clone(),
                position: p.position,
                high_watermark: p.high_watermark,
                lag: p.high_watermark.saturating_sub(p.position),
                processed: p.processed,
                failed: p.failed,
                errors: p.errors,
                last_error: p.last_error.clone().unwrap_or_default(),
                counters: p.counters.clone().into_iter().collect(),
                gauges: p.gauges.clone().into_iter().collect(),
                cursor: p.cursor.clone().unwrap_or_default(),
            })
            .collect();
        let spec = &described.spec;
        Ok(Response::new(pb::FunctionDescription {
            name: spec.name.clone(),
            kind: spec.kind.clone(),
            version: spec.version,
            digest: spec.digest.clone(),
            component_bytes: spec.component_bytes,
            inputs: spec.inputs.clone(),
            outputs: spec.outputs.clone(),
            config: spec.config.clone().into_iter().collect(),
            grants: spec.grants.clone(),
            limits: Some(limits_to_pb(&spec.limits)),
            on_failure: spec.on_failure.clone(),
            state: described.state.clone(),
            lag: described.lag(),
            processed: described.processed(),
            failed: described.failed(),
            last_error: described.last_error().unwrap_or_default().to_string(),
            group: runnel_functions::executor::group_of(&spec.name),
            dead_letter_topic: runnel_functions::executor::dlq_topic_of(&spec.name),
            partitions,
            allow_hosts: spec.allow_hosts.clone(),
            poll_interval_ms: spec.poll_interval_ms,
        }))
    }

    async fn pause(
        &self,
        request: Request<pb::PauseFunctionRequest>,
    ) -> Result<Response<pb::PauseFunctionResponse>, Status> {
        let name = request.into_inner().name;
        self.functions()
            .set_paused(&name, true)
            .await
            .map_err(|e| self.status(e))?;
        Ok(Response::new(pb::PauseFunctionResponse {}))
    }

    async fn resume(
        &self,
        request: Request<pb::ResumeFunctionRequest>,
    ) -> Result<Response<pb::ResumeFunctionResponse>, Status> {
        let name = request.into_inner().name;
        self.functions()
            .set_paused(&name, false)
            .await
            .map_err(|e| self.status(e))?;
        Ok(Response::new(pb::ResumeFunctionResponse {}))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteFunctionRequest>,
    ) -> Result<Response<pb::DeleteFunctionResponse>, Status> {
        let name = request.into_inner().name;
        self.functions()
            .delete(&name)
            .await
            .map_err(|e| self.status(e))?;
        Ok(Response::new(pb::DeleteFunctionResponse {}))
    }

    type LogsStream = LogStream;

    async fn logs(
        &self,
        request: Request<pb::FunctionLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let request = request.into_inner();
        let functions = self.functions().clone();
        let name = request.name;
        // Fails at once for an unknown function.
        let first = functions
            .logs(&name, 0, Duration::ZERO)
            .await
            .map_err(|e| self.status(e))?;
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        let follow = request.follow;
        tokio::spawn(async move {
            let mut lines = first;
            let mut after = 0;
            loop {
                // Without follow, the stream ends when every kept line was sent.
                let caught_up = lines.is_empty();
                for line in lines {
                    after = line.sequence;
                    let line = pb::FunctionLogLine {
                        sequence: line.sequence,
                        timestamp_ms: line.timestamp_ms,
                        topic: line.topic,
                        partition: line.partition,
                        level: line.level.to_string(),
                        message: line.message,
                    };
                    if sender.send(Ok(line)).await.is_err() {
                        return;
                    }
                }
                if (!follow && caught_up) || sender.is_closed() {
                    return;
                }
                let wait = if follow { FOLLOW_WAIT } else { Duration::ZERO };
                lines = match functions.logs(&name, after, wait).await {
                    Ok(lines) => lines,
                    Err(error) => {
                        let _ = sender.send(Err(Status::not_found(error.to_string()))).await;
                        return;
                    }
                };
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        )))
    }
}
