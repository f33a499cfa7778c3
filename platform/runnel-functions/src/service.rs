//! [`Functions`]: a node's functions service. It deploys, pauses, resumes and deletes
//! functions through the metadata log, and runs an executor ([`crate::executor`]) for each
//! input partition of a running function that this node leads.
//!
//! # Deploy
//! The component is validated and compiled first (size, world, grants; on a blocking
//! thread), then stored in the object store under its SHA-256, then the output topics'
//! existence is checked, the dead-letter topic (`<name>.dlq`) and the state topic are
//! created if missing, and finally the spec is proposed to the controller. A deploy that
//! fails at any step leaves at most an unused object and empty topics behind, never a
//! spec pointing at nothing.
//!
//! # Reconciling
//! [`Functions::run`] follows the metadata: on every change (and every second, for
//! leadership and partitions that open late) it works out which executors should run
//! here, stops the ones that should not (a pause, a delete, a redeploy, a lost
//! leadership) and starts the missing ones, compiling each version once (from the disk
//! cache when it is there). A redeploy stops the old version's executors between batches,
//! so the new version resumes at the committed position.
//!
//! # What it keeps in memory
//! Per executor: state, position, counts and the last error ([`PartitionStatus`]), lost
//! on restart (the counts start again; the position and kv state are in the state topic).
//! Log lines go to the function's log topic ([`crate::logs`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use runnel_broker::groups::GroupService;
use runnel_broker::{Broker, BrokerError};
use runnel_controller::{Command, ControllerError, FunctionLimits, FunctionSpec, MetadataError};
use tokio_util::sync::CancellationToken;

use crate::executor::{Executor, dlq_topic_of, group_of, state_topic_of};
use crate::logs::{FLUSH_INTERVAL, LogBuffer, LogEntry, logs_topic_of};
use crate::source::SourceExecutor;
use crate::store::{ComponentStore, ComponentStoreError};
use crate::{Function, FunctionError, FunctionHost, Kind, Limits, LogLine};

/// How often the executors are checked against the metadata without a change.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);
/// How long log lines that could not be appended wait before the next try.
const LOG_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum FunctionsError {
    #[error("unknown function `{0}`")]
    UnknownFunction(String),
    #[error("invalid function: {0}")]
    Invalid(String),
    #[error(transparent)]
    Component(#[from] FunctionError),
    #[error(transparent)]
    Store(#[from] ComponentStoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl From<ControllerError> for FunctionsError {
    fn from(error: ControllerError) -> FunctionsError {
        match error {
            ControllerError::Rejected(MetadataError::UnknownFunction(name)) => {
                FunctionsError::UnknownFunction(name)
            }
            ControllerError::Rejected(MetadataError::InvalidFunction(reason)) => {
                FunctionsError::Invalid(reason)
            }
            other => FunctionsError::Broker(BrokerError::Controller(other)),
        }
    }
}

/// Node-wide settings of the functions service.
#[derive(Debug, Clone)]
pub struct FunctionsSettings {
    /// Where compiled components are cached.
    pub cache_dir: PathBuf,
    /// The largest component taken.
    pub max_component_bytes: usize,
    /// kv state per instance.
    pub max_kv_bytes: usize,
    /// How long a component may take to compile.
    pub compile_timeout: Duration,
    /// The size each function's log topic is trimmed to.
    pub log_retention_bytes: u64,
}

/// What a deploy asks for.
#[derive(Debug, Clone)]
pub struct Deploy {
    pub name: String,
    pub kind: Kind,
    pub component: Bytes,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub config: BTreeMap<String, String>,
    /// `None`: every interface of the kind's world.
    pub grants: Option<Vec<String>>,
    pub limits: FunctionLimits,
    pub on_failure: String,
    /// Deploy without running (until resumed).
    pub paused: bool,
    /// Connectors: the hosts their outgoing HTTP may reach.
    pub allow_hosts: Vec<String>,
    /// Sources: the wait between polls that did not fill a batch (0: the default).
    pub poll_interval_ms: u64,
}

/// One executor's state as `describe` shows it.
#[derive(Debug, Default)]
pub struct PartitionStatus {
    inner: Mutex<PartitionState>,
}

#[derive(Debug, Clone, Default)]
pub struct PartitionState {
    pub topic: String,
    pub partition: i32,
    pub version: u64,
    /// `starting`, `running`, `retrying`, `stopped` (policy `stop`), `failed` (cannot
    /// start), `idle` (not running here now).
    pub state: String,
    /// The next offset to process, and the partition's high watermark.
    pub position: u64,
    pub high_watermark: u64,
    /// Records processed, and records sent to the dead-letter topic.
    pub processed: u64,
    pub failed: u64,
    /// Failed attempts (each retry counts).
    pub errors: u64,
    pub last_error: Option<String>,
    /// A source's cursor, shown as text (or hex).
    pub cursor: Option<String>,
    pub counters: BTreeMap<String, u64>,
    pub gauges: BTreeMap<String, f64>,
}

impl PartitionStatus {
    fn lock(&self) -> std::sync::MutexGuard<'_, PartitionState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> PartitionState {
        self.lock().clone()
    }

    pub(crate) fn set_state(&self, state: &str, error: Option<String>) {
        let mut inner = self.lock();
        inner.state = state.to_string();
        if error.is_some() {
            inner.last_error = error;
        }
    }

    pub(crate) fn set_error(&self, error: &dyn std::fmt::Display) {
        self.lock().last_error = Some(error.to_string());
    }

    pub(crate) fn add_error(&self, error: &dyn std::fmt::Display) {
        let mut inner = self.lock();
        inner.errors += 1;
        inner.last_error = Some(error.to_string());
    }

    pub(crate) fn set_position(&self, position: u64, high_watermark: u64) {
        let mut inner = self.lock();
        inner.position = position;
        inner.high_watermark = high_watermark.max(position);
    }

    pub(crate) fn set_high_watermark(&self, high_watermark: u64) {
        let mut inner = self.lock();
        inner.high_watermark = high_watermark.max(inner.position);
    }

    pub(crate) fn set_cursor(&self, cursor: Option<String>) {
        self.lock().cursor = cursor;
    }

    pub(crate) fn add_processed(&self, records: u64) {
        self.lock().processed += records;
    }

    pub(crate) fn add_failed(&self, records: u64) {
        self.lock().failed += records;
    }

    pub(crate) fn set_metrics(
        &self,
        counters: &BTreeMap<String, u64>,
        gauges: &BTreeMap<String, f64>,
    ) {
        let mut inner = self.lock();
        inner.counters.clone_from(counters);
        inner.gauges.clone_from(gauges);
    }
}

/// A function as `describe` shows it.
#[derive(Debug, Clone)]
pub struct Description {
    pub spec: FunctionSpec,
    /// `running`, `paused`, or the worst executor state (`stopped`, `failed`, `retrying`).
    pub state: String,
    pub partitions: Vec<PartitionState>,
}

impl Description {
    pub fn processed(&self) -> u64 {
        self.partitions.iter().map(|p| p.processed).sum()
    }

    pub fn failed(&self) -> u64 {
        self.partitions.iter().map(|p| p.failed).sum()
    }

    pub fn lag(&self) -> u64 {
        self.partitions
            .iter()
            .map(|p| p.high_watermark.saturating_sub(p.position))
            .sum()
    }

    pub fn last_error(&self) -> Option<&str> {
        self.partitions.iter().find_map(|p| p.last_error.as_deref())
    }
}

type ExecutorKey = (String, String, i32);

struct Running {
    version: u64,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub struct Functions {
    broker: Arc<Broker>,
    groups: Arc<GroupService>,
    host: Arc<FunctionHost>,
    store: ComponentStore,
    settings: FunctionsSettings,
    status: Mutex<BTreeMap<ExecutorKey, Arc<PartitionStatus>>>,
    logs: LogBuffer,
}

impl Functions {
    pub fn new(
        broker: Arc<Broker>,
        groups: Arc<GroupService>,
        host: Arc<FunctionHost>,
        store: ComponentStore,
        settings: FunctionsSettings,
    ) -> Arc<Functions> {
        Arc::new(Functions {
            broker,
            groups,
            host,
            store,
            settings,
            status: Mutex::new(BTreeMap::new()),
            logs: LogBuffer::default(),
        })
    }

    pub(crate) fn broker(&self) -> &Broker {
        &self.broker
    }

    pub(crate) fn groups(&self) -> &GroupService {
        &self.groups
    }

    fn limits(&self, limits: &FunctionLimits) -> Limits {
        Limits {
            memory_bytes: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX),
            call_timeout: Duration::from_millis(limits.call_timeout_ms),
            component_bytes: self.settings.max_component_bytes,
            kv_bytes: self.settings.max_kv_bytes,
        }
    }

    /// Compiles `component` for `spec`-like settings on a blocking thread.
    async fn compile(
        &self,
        kind: Kind,
        component: Bytes,
        limits: Limits,
        grants: Vec<String>,
    ) -> Result<Function, FunctionsError> {
        let host = self.host.clone();
        let cache = self.settings.cache_dir.clone();
        let compiling = tokio::task::spawn_blocking(move || {
            let grants: Vec<&str> = grants.iter().map(String::as_str).collect();
            host.compile_granted(kind, &component, limits, &grants, Some(&cache))
        });
        // Cranelift cannot be interrupted: past the limit the caller is answered and the
        // thread finishes on its own (its work bounded by the component size limit).
        match tokio::time::timeout(self.settings.compile_timeout, compiling).await {
            Err(_) => Err(FunctionsError::Invalid(format!(
                "compiling the component took longer than {:?}",
                self.settings.compile_timeout
            ))),
            Ok(joined) => joined
                .map_err(|e| FunctionsError::Invalid(format!("the compile thread failed: {e}")))?
                .map_err(FunctionsError::from),
        }
    }

    /// Deploys or redeploys a function; its version.
    pub async fn deploy(&self, deploy: Deploy) -> Result<u64, FunctionsError> {
        runnel_config::validate_topic_name(&deploy.name).map_err(|reason| {
            FunctionsError::Invalid(format!("name `{}`: {reason}", deploy.name))
        })?;
        if deploy.name.len() > 200 {
            return Err(FunctionsError::Invalid(
                "a function's name is at most 200 characters".to_string(),
            ));
        }
        let grants = deploy.grants.clone().unwrap_or_else(|| {
            deploy
                .kind
                .interfaces()
                .iter()
                .map(|g| g.to_string())
                .collect()
        });
        let limits = self.limits(&deploy.limits);
        self.compile(
            deploy.kind,
            deploy.component.clone(),
            limits,
            grants.clone(),
        )
        .await?;
        let component_bytes = deploy.component.len() as u64;
        let digest = self.store.put(deploy.component).await?;
        let metadata = self.broker.metadata();
        for topic in deploy.inputs.iter().chain(&deploy.outputs) {
            if !metadata.topics.contains_key(topic) {
                return Err(BrokerError::UnknownTopic(topic.clone()).into());
            }
        }
        // A source has no input records to dead-letter.
        if deploy.kind != Kind::Source {
            self.ensure_topic(&dlq_topic_of(&deploy.name), BTreeMap::new())
                .await?;
        }
        self.ensure_topic(
            &state_topic_of(&deploy.name),
            BTreeMap::from([
                ("cleanup.policy".to_string(), "compact".to_string()),
                // One batch holds a batch's kv changes: let it be as large as the state.
                (
                    "max.message.bytes".to_string(),
                    (self.settings.max_kv_bytes.saturating_mul(2) + (1 << 20)).to_string(),
                ),
            ]),
        )
        .await?;
        self.ensure_logs_topic(&deploy.name).await?;
        let spec = FunctionSpec {
            name: deploy.name,
            kind: deploy.kind.name().to_string(),
            version: 0,
            digest,
            component_bytes,
            inputs: deploy.inputs,
            outputs: deploy.outputs,
            config: deploy.config,
            grants,
            limits: deploy.limits,
            on_failure: deploy.on_failure,
            paused: deploy.paused,
            allow_hosts: deploy.allow_hosts,
            poll_interval_ms: deploy.poll_interval_ms,
        };
        let applied = self
            .broker
            .controller()
            .propose(Command::DeployFunction(spec))
            .await?;
        match applied {
            runnel_controller::Applied::FunctionDeployed { version } => Ok(version),
            _ => Err(FunctionsError::Invalid(
                "unexpected answer to a deploy".to_string(),
            )),
        }
    }

    /// Creates the function's log topic if it does not exist: trimmed by size, never
    /// tiered.
    async fn ensure_logs_topic(&self, function: &str) -> Result<(), FunctionsError> {
        let retention = self.settings.log_retention_bytes;
        let segment = (retention / 4).clamp(1 << 20, i32::MAX as u64);
        self.ensure_topic(
            &logs_topic_of(function),
            BTreeMap::from([
                ("retention.bytes".to_string(), retention.to_string()),
                ("segment.bytes".to_string(), segment.to_string()),
                ("remote.storage.enable".to_string(), "false".to_string()),
            ]),
        )
        .await
    }

    /// Creates a one-partition topic if it does not exist.
    async fn ensure_topic(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<(), FunctionsError> {
        if self.broker.metadata().topics.contains_key(name) {
            return Ok(());
        }
        let command = Command::CreateTopic {
            name: name.to_string(),
            id: uuid::Uuid::new_v4(),
            partitions: 1,
            replication_factor: self.broker.settings().default_replication_factor,
            configs,
        };
        match self.broker.admin(command, false).await {
            Ok(_)
            | Err(BrokerError::Controller(ControllerError::Rejected(
                MetadataError::TopicAlreadyExists(_),
            ))) => {}
            Err(error) => return Err(error.into()),
        }
        self.broker
            .wait_until_served(name, runnel_broker::broker::ADMIN_WAIT)
            .await;
        Ok(())
    }

    pub fn list(&self) -> Vec<FunctionSpec> {
        self.broker.metadata().functions.values().cloned().collect()
    }

    pub fn describe(&self, name: &str) -> Result<Description, FunctionsError> {
        let spec = self
            .broker
            .metadata()
            .functions
            .get(name)
            .cloned()
            .ok_or_else(|| FunctionsError::UnknownFunction(name.to_string()))?;
        let partitions: Vec<PartitionState> = self
            .lock_status()
            .iter()
            .filter(|((function, _, _), _)| function == name)
            .map(|(_, status)| status.snapshot())
            .collect();
        let state = if spec.paused {
            "paused".to_string()
        } else {
            ["failed", "stopped", "retrying"]
                .iter()
                .find(|worst| partitions.iter().any(|p| p.state == **worst))
                .map_or_else(|| "running".to_string(), |s| s.to_string())
        };
        Ok(Description {
            spec,
            state,
            partitions,
        })
    }

    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<(), FunctionsError> {
        self.broker
            .controller()
            .propose(Command::SetFunctionPaused {
                name: name.to_string(),
                paused,
            })
            .await?;
        Ok(())
    }

    /// Deletes the function and its progress (its group and state topic). The
    /// dead-letter topic stays: it holds records the function never processed.
    pub async fn delete(&self, name: &str) -> Result<(), FunctionsError> {
        self.broker
            .controller()
            .propose(Command::DeleteFunction {
                name: name.to_string(),
            })
            .await?;
        // The executors stop on the metadata change; wait for that before removing the
        // progress they write.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self
            .lock_status()
            .iter()
            .any(|((function, _, _), s)| function == name && s.snapshot().state != "idle")
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for topic in [state_topic_of(name), logs_topic_of(name)] {
            if self.broker.metadata().topics.contains_key(&topic) {
                self.broker
                    .admin(Command::DeleteTopic { name: topic }, false)
                    .await?;
            }
        }
        if let Err(error) = self.groups.delete(&group_of(name)).await {
            tracing::info!(function = %name, %error, "deleting the function's group");
        }
        self.lock_status()
            .retain(|(function, _, _), _| function != name);
        self.logs.forget(name);
        Ok(())
    }

    fn lock_status(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<ExecutorKey, Arc<PartitionStatus>>> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes what an instance gathered in a call: its log lines into the function's
    /// stream, its metrics into `status`, and each outgoing HTTP request it was refused
    /// as a warning in the stream. The last refusal is returned, for the call's error.
    pub(crate) fn collect(
        &self,
        function: &str,
        topic: &str,
        partition: i32,
        state: &mut crate::State,
        status: &PartitionStatus,
    ) -> Option<String> {
        let mut last = None;
        for refusal in state.take_refused_requests() {
            tracing::warn!(%function, %refusal, "a connector's request was refused");
            state.logs.push_back(LogLine {
                level: "warn",
                message: refusal.clone(),
            });
            last = Some(refusal);
        }
        self.take_logs(function, topic, partition, &mut state.logs);
        status.set_metrics(&state.counters, &state.gauges);
        last
    }

    /// Moves an instance's log lines into the function's stream.
    pub(crate) fn take_logs(
        &self,
        function: &str,
        topic: &str,
        partition: i32,
        lines: &mut VecDeque<LogLine>,
    ) {
        self.logs.push(function, topic, partition, lines);
    }

    /// The function's log lines after `after` (a sequence number; 0: from the oldest
    /// kept), as many as one read of its log topic holds, waiting up to `wait` for one if
    /// there is none yet.
    pub async fn logs(
        &self,
        name: &str,
        after: u64,
        wait: Duration,
    ) -> Result<Vec<LogEntry>, FunctionsError> {
        if !self.broker.metadata().functions.contains_key(name) {
            return Err(FunctionsError::UnknownFunction(name.to_string()));
        }
        let topic = logs_topic_of(name);
        if !self.broker.metadata().topics.contains_key(&topic) {
            // Deployed by a version that kept logs in memory: no line yet.
            tokio::time::sleep(wait).await;
            return Ok(Vec::new());
        }
        let local = self.broker.leader_log(&topic, 0).ok();
        if let Some(log) = &local {
            // Led here: wait for a line without polling.
            log.wait_for_data(after.max(log.log_start()), wait).await;
            if after > log.high_watermark() {
                // Past the end (the topic was made again): nothing yet.
                return Ok(Vec::new());
            }
        }
        let read = self
            .broker
            .read_anywhere(&topic, 0, after, crate::logs::READ_BYTES)
            .await?;
        let lines = crate::logs::decode(&read.records, after).map_err(FunctionsError::Invalid)?;
        if lines.is_empty() && local.is_none() {
            // Led elsewhere: look again after a while.
            tokio::time::sleep(wait.min(Duration::from_millis(500))).await;
        }
        Ok(lines)
    }

    /// Log lines dropped on this node because the log topic could not take them.
    pub fn dropped_log_lines(&self) -> u64 {
        self.logs.dropped()
    }

    /// Appends pending log lines to the functions' log topics until `stop`, then once
    /// more.
    async fn write_logs(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let stopping = tokio::select! {
                () = self.logs.ready() => false,
                () = stop.cancelled() => true,
            };
            if !stopping {
                // Gather what else is logged meanwhile into the same batches.
                tokio::time::sleep(FLUSH_INTERVAL).await;
            }
            let mut failed = false;
            for (function, lines) in self.logs.take() {
                if let Err(error) = self.append_logs(&function, &lines).await {
                    tracing::warn!(%function, %error, "cannot append to a function's log topic; the lines wait");
                    self.logs.put_back(function, lines);
                    failed = true;
                }
            }
            if stopping {
                return;
            }
            if failed {
                // Try the waiting lines again after a while, even if nothing new is logged.
                tokio::select! {
                    () = tokio::time::sleep(LOG_RETRY) => self.logs.wake(),
                    () = stop.cancelled() => {}
                }
            }
        }
    }

    async fn append_logs(
        &self,
        function: &str,
        lines: &VecDeque<LogEntry>,
    ) -> Result<(), FunctionsError> {
        if lines.is_empty() || !self.broker.metadata().functions.contains_key(function) {
            return Ok(());
        }
        self.ensure_logs_topic(function).await?;
        let batch = crate::logs::encode(lines).map_err(FunctionsError::Invalid)?;
        self.broker
            .produce_anywhere(&logs_topic_of(function), 0, batch, false)
            .await?;
        Ok(())
    }

    /// Every executor's status (for `/metrics`), with its function's name.
    pub fn statuses(&self) -> Vec<(String, PartitionState)> {
        self.lock_status()
            .iter()
            .map(|((function, _, _), status)| (function.clone(), status.snapshot()))
            .collect()
    }

    /// Runs the executors of this node until `stop`, following the metadata.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut metadata = self.broker.controller().subscribe();
        let mut running: HashMap<ExecutorKey, Running> = HashMap::new();
        let mut compiled: HashMap<(String, u64), Function> = HashMap::new();
        let stop_logs = CancellationToken::new();
        let logs = tokio::spawn(self.clone().write_logs(stop_logs.clone()));
        loop {
            self.reconcile(&mut running, &mut compiled, &stop).await;
            tokio::select! {
                changed = metadata.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(RECONCILE_INTERVAL) => {}
                _ = stop.cancelled() => break,
            }
        }
        for (_, executor) in running.drain() {
            executor.stop.cancel();
            if let Err(error) = executor.task.await {
                tracing::warn!(%error, "a function executor failed");
            }
        }
        // The executors' last lines, if the log topics still take them.
        stop_logs.cancel();
        if tokio::time::timeout(Duration::from_secs(2), logs)
            .await
            .is_err()
        {
            tracing::warn!("the functions' last log lines were not all appended");
        }
    }

    async fn reconcile(
        self: &Arc<Self>,
        running: &mut HashMap<ExecutorKey, Running>,
        compiled: &mut HashMap<(String, u64), Function>,
        stop: &CancellationToken,
    ) {
        let metadata = self.broker.metadata();
        let node = self.broker.node_id();
        let mut wanted: BTreeMap<ExecutorKey, FunctionSpec> = BTreeMap::new();
        for spec in metadata.functions.values().filter(|s| !s.paused) {
            if spec.kind == Kind::Source.name() {
                // A source runs where its state topic is led.
                let led_here = metadata
                    .topics
                    .get(&state_topic_of(&spec.name))
                    .and_then(|topic| topic.partitions.first())
                    .is_some_and(|partition| partition.leader == Some(node));
                if led_here {
                    wanted.insert((spec.name.clone(), String::new(), 0), spec.clone());
                }
                continue;
            }
            for topic in &spec.inputs {
                let Some(meta) = metadata.topics.get(topic) else {
                    continue;
                };
                for (index, partition) in meta.partitions.iter().enumerate() {
                    if partition.leader == Some(node) {
                        wanted.insert(
                            (spec.name.clone(), topic.clone(), index as i32),
                            spec.clone(),
                        );
                    }
                }
            }
        }
        // Stop what should not run (or runs an old version), and what ended by itself.
        let stale: Vec<ExecutorKey> = running
            .iter()
            .filter(|(key, executor)| {
                executor.task.is_finished()
                    || wanted
                        .get(*key)
                        .is_none_or(|spec| spec.version != executor.version)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            if let Some(executor) = running.remove(&key) {
                executor.stop.cancel();
                if let Err(error) = executor.task.await {
                    tracing::warn!(%error, "a function executor failed");
                }
                if let Some(status) = self.lock_status().get(&key) {
                    status.set_state("idle", None);
                }
            }
        }
        for (key, status) in self.lock_status().iter() {
            if !running.contains_key(key) {
                status.set_state("idle", None);
            }
        }
        compiled.retain(|(name, version), _| {
            metadata
                .functions
                .get(name)
                .is_some_and(|s| s.version == *version)
        });
        for (key, spec) in wanted {
            if running.contains_key(&key) || stop.is_cancelled() {
                continue;
            }
            // Only once the partition is open here (it may be being created).
            let served = if key.1.is_empty() {
                self.broker.leader_log(&state_topic_of(&key.0), 0)
            } else {
                self.broker.leader_log(&key.1, key.2)
            };
            if served.is_err() {
                continue;
            }
            let status = self
                .lock_status()
                .entry(key.clone())
                .or_insert_with(|| Arc::new(PartitionStatus::default()))
                .clone();
            let function = match compiled.get(&(spec.name.clone(), spec.version)) {
                Some(function) => function.clone(),
                None => match self.load(&spec).await {
                    Ok(function) => {
                        compiled.insert((spec.name.clone(), spec.version), function.clone());
                        function
                    }
                    Err(error) => {
                        tracing::warn!(function = %spec.name, %error, "cannot load a function");
                        status.set_state("failed", Some(format!("cannot load: {error}")));
                        continue;
                    }
                },
            };
            {
                let mut state = status.lock();
                state.topic = key.1.clone();
                state.partition = key.2;
                state.version = spec.version;
                state.state = "starting".to_string();
            }
            let executor_stop = stop.child_token();
            let span = tracing::info_span!("function", function = %spec.name, topic = %key.1, partition = key.2);
            let ran: std::pin::Pin<Box<dyn Future<Output = _> + Send>> =
                if spec.kind == Kind::Source.name() {
                    let executor = SourceExecutor {
                        functions: self.clone(),
                        spec: spec.clone(),
                        function,
                        status,
                        stop: executor_stop.clone(),
                    };
                    Box::pin(executor.run())
                } else {
                    let executor = Executor {
                        functions: self.clone(),
                        spec: spec.clone(),
                        function,
                        topic: key.1.clone(),
                        partition: key.2,
                        status,
                        stop: executor_stop.clone(),
                    };
                    Box::pin(executor.run())
                };
            let task = tokio::spawn(tracing::Instrument::instrument(
                async move {
                    if let Err(end) = ran.await {
                        tracing::info!(%end, "function executor ended");
                    }
                },
                span,
            ));
            running.insert(
                key,
                Running {
                    version: spec.version,
                    stop: executor_stop,
                    task,
                },
            );
        }
    }

    /// The compiled component of a spec, from the object store (and the compile cache).
    async fn load(&self, spec: &FunctionSpec) -> Result<Function, FunctionsError> {
        let kind = Kind::parse(&spec.kind)
            .ok_or_else(|| FunctionsError::Invalid(format!("unknown kind `{}`", spec.kind)))?;
        let component = self.store.get(&spec.digest).await?;
        self.compile(
            kind,
            component,
            self.limits(&spec.limits),
            spec.grants.clone(),
        )
        .await
    }
}
