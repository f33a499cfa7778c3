//! One node's life: start the services, serve until a signal, stop them cleanly.
//!
//! # Startup
//! 1. install the signal handlers, so a signal from now on means a clean shutdown;
//! 2. bind the HTTP listener (liveness answers from here on, readiness says 503);
//! 3. open the log under `<node.data_dir>/partitions`, recovering every partition; one that
//!    fails to open stays offline and is counted in the banner, the rest serve;
//! 4. start the controller under `<data dir>/controller`: a one-voter quorum (`runnel dev`)
//!    that initializes itself and recovers after a restart, or, with `controller.voters`,
//!    a member of a multi-voter quorum (a learner if its id is not listed) serving the
//!    cluster RPC on `cluster.listen`; wait until it has a leader, has registered this node
//!    and has applied the log up to that; then start reconciling local partitions with the
//!    metadata;
//! 5. start the log's retention and compaction schedule;
//! 6. mark the node ready and print the banner (see [`crate::banner`]).
//!
//! The Kafka and gRPC listeners are bound before the controller starts (so the node
//! registers their real addresses) and serve once the controller is ready.
//!
//! # Shutdown
//! On the first SIGINT/SIGTERM (also one that arrives during startup, which then completes
//! first): readiness goes to 503, the maintenance schedule stops, the HTTP server drains and
//! stops, and [`LogManager::close_all`] flushes every partition and writes its indexes and
//! clean-shutdown marker. Then "stopped" is logged and the process exits 0. A second signal
//! exits at once with 130 (see [`crate::signals`]); the next start then recovers the log as
//! after a crash, which loses nothing that was acknowledged as durable.
//!
//! # Failure
//! A failure to bind, to open the data directory or to close a partition ends the process
//! with code 1 and the error on stderr. If the HTTP server fails while running, the node
//! shuts down as on a signal, then exits 1 with that error.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use runnel_config::NodeConfig;
use runnel_log::{LogManager, LogMetrics, MaintenanceSchedule};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use runnel_broker::groups::{ConsumerGroupSettings, GroupService, GroupSettings, OffsetsSettings};
use runnel_broker::{Broker, BrokerSettings};
use runnel_controller::liveness::Heartbeats;
use runnel_controller::{Controller, NodeInfo, NodeRoles};
use runnel_grpc::cluster::ClusterNetwork;
use runnel_kafka::{Backends, KafkaServer, KafkaSettings};

use crate::admin::ControllerSlot;
use crate::banner::{Banner, ComingListener};
use crate::http::{HttpServer, Readiness};
use crate::{metrics, signals};

/// How long, after the node stopped, the runtime waits for stray blocking tasks.
const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs the node described by `config` until it is told to stop. `started` is when the
/// process started, for the uptime metric and the "ready in" line.
pub fn run(config: NodeConfig, started: Instant) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("runnel-worker")
        .build()
        .context("start the async runtime")?;
    let span = tracing::info_span!("node", id = config.node.id);
    let result = runtime.block_on(run_node(config, started).instrument(span));
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    result
}

async fn run_node(config: NodeConfig, started: Instant) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    signals::install(shutdown.clone())?;

    let data_dir =
        std::path::absolute(&config.node.data_dir).unwrap_or_else(|_| config.node.data_dir.clone());
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        data_dir = %data_dir.display(),
        "starting"
    );

    let log_metrics = Arc::new(LogMetrics::default());
    let controller_slot: ControllerSlot = Arc::default();
    let groups_slot: metrics::GroupsSlot = Arc::default();
    let functions_slot: metrics::FunctionsSlot = Arc::default();
    let tier_metrics = Arc::new(runnel_tier::TierMetrics::default());
    let registry = Arc::new(metrics::node_registry(
        &log_metrics,
        started,
        &controller_slot,
        &groups_slot,
        &functions_slot,
        &tier_metrics,
    ));
    let readiness = Readiness::default();
    let http = HttpServer::start(
        config.http.listen,
        readiness.clone(),
        registry,
        controller_slot.clone(),
        shutdown.clone(),
    )
    .await?;

    // Bound before the controller starts, so the node registers the real address (also
    // when kafka.listen asks for port 0).
    let kafka_listener = match tokio::net::TcpListener::bind(config.kafka.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            http.stop().await.ok();
            return Err(anyhow::Error::new(error).context(format!(
                "bind the kafka listener on {} (kafka.listen)",
                config.kafka.listen
            )));
        }
    };
    let kafka_address = kafka_listener
        .local_addr()
        .context("read the kafka listener's address")?;
    let grpc_listener = match tokio::net::TcpListener::bind(config.grpc.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            http.stop().await.ok();
            return Err(anyhow::Error::new(error).context(format!(
                "bind the grpc listener on {} (grpc.listen)",
                config.grpc.listen
            )));
        }
    };
    let grpc_address = grpc_listener
        .local_addr()
        .context("read the grpc listener's address")?;

    let log = match open_log(&config, log_metrics).await {
        Ok(log) => Arc::new(log),
        Err(error) => {
            // The startup error is the one returned; a second one is only logged.
            if let Err(http_error) = http.stop().await {
                let http_error = format!("{http_error:#}");
                tracing::warn!(error = %http_error, "stopping http after a failed start");
            }
            return Err(error);
        }
    };
    let addresses = BoundAddresses {
        http: http.local_addr(),
        kafka: kafka_address,
        grpc: grpc_address,
    };
    // Filled once the broker and groups are up: the cluster RPC serves forwarded writes
    // from then on.
    let local: runnel_grpc::cluster::LocalPartitionsSlot = Arc::default();
    let started_controller =
        match start_controller(&config, &data_dir, addresses, &shutdown, local.clone()).await {
            Ok(started) => started,
            Err(error) => {
                log.close_all().await.ok();
                http.stop().await.ok();
                return Err(error);
            }
        };
    let StartedController {
        controller,
        cluster_server,
    } = started_controller;
    // Set once, right here; nothing else sets it.
    let _ = controller_slot.set(controller.clone());
    let stop_maintenance = CancellationToken::new();
    let reconcile = tokio::spawn(runnel_broker::reconcile::run(
        log.clone(),
        config.node.id,
        controller.subscribe(),
        stop_maintenance.clone(),
    ));
    let broker = Arc::new(Broker::new(
        config.node.id,
        log.clone(),
        controller.clone(),
        BrokerSettings {
            auto_create_topics: config.broker.auto_create_topics_enable,
            default_partitions: config.broker.num_partitions,
            default_replication_factor: config.broker.default_replication_factor,
        },
    ));
    let groups = GroupService::start(
        broker.clone(),
        GroupSettings {
            initial_rebalance_delay: config.broker.group_initial_rebalance_delay_ms,
            ..GroupSettings::default()
        },
        ConsumerGroupSettings {
            session_timeout: config.broker.group_consumer_session_timeout_ms,
            heartbeat_interval: config.broker.group_consumer_heartbeat_interval_ms,
        },
        OffsetsSettings {
            partitions: config.broker.offsets_topic_num_partitions,
            retention: Duration::from_secs(
                config.broker.offsets_retention_minutes.saturating_mul(60),
            ),
            retention_check_interval: interval(config.broker.offsets_retention_check_interval_ms),
        },
        stop_maintenance.clone(),
    );
    // Set once, right here; nothing else sets it.
    let _ = groups_slot.set(groups.clone());
    broker.set_peers(runnel_grpc::cluster::ClusterPeers::new());
    // Replication stops last of the tasks: this node's followers keep the ISR moving for
    // the other nodes' writes while its own executors finish.
    let stop_replication = CancellationToken::new();
    let replication = tokio::spawn(runnel_broker::replication::run(
        broker.clone(),
        stop_replication.clone(),
    ));
    let _ = local.set(runnel_grpc::cluster::LocalPartitions {
        broker: broker.clone(),
        groups: groups.clone(),
    });
    let objects = match open_objects(&config, &data_dir).await {
        Ok(objects) => objects,
        Err(error) => {
            stop_maintenance.cancel();
            controller.shutdown().await;
            log.close_all().await.ok();
            http.stop().await.ok();
            return Err(error);
        }
    };
    let cache = runnel_tier::TierCache::open(
        data_dir.join("tier-cache"),
        config.tier.cache_bytes,
        tier_metrics.read.clone(),
    )
    .map_err(|e| anyhow::anyhow!("open the tier cache: {e}"))?;
    let uploads = start_uploads(
        &objects,
        &log,
        &broker,
        tier_metrics,
        Arc::new(cache),
        stop_maintenance.clone(),
    );
    let functions = start_functions(&config.functions, &data_dir, &objects, &broker, &groups)?;
    let _ = functions_slot.set(functions.clone());
    let functions_task = tokio::spawn(functions.clone().run(stop_maintenance.clone()));
    let api = runnel_grpc::api::ApiServer::start(
        grpc_listener,
        runnel_grpc::api::Backends {
            broker: broker.clone(),
            groups: groups.clone(),
            functions,
        },
    )
    .await
    .context("start the grpc api")?;
    tracing::info!(address = %api.address, "grpc listening");
    let kafka = KafkaServer::start(
        kafka_listener,
        Arc::new(Backends {
            broker: broker.clone(),
            groups,
        }),
        KafkaSettings {
            max_request_bytes: config.broker.socket_request_max_bytes as usize,
        },
    )
    .context("start the kafka listener")?;
    tracing::info!(address = %kafka.local_addr(), "kafka listening");
    let maintenance = log.spawn_maintenance(
        MaintenanceSchedule {
            retention_interval: interval(config.log.retention_check_interval_ms),
            cleaner_interval: interval(config.log.cleaner_interval_ms),
            producer_id_expiration: interval(config.log.producer_id_expiration_ms),
        },
        stop_maintenance.clone(),
    );

    let ready_in = started.elapsed();
    let banner = Banner {
        node_id: config.node.id,
        data_dir,
        partitions_open: log.partitions().len(),
        partitions_offline: log.offline_partitions().len(),
        http: http.local_addr(),
        cluster: cluster_server.as_ref().map(|server| server.address),
        kafka: kafka.local_addr(),
        grpc: api.address,
        coming: cluster_server
            .is_none()
            .then_some(ComingListener {
                name: "cluster",
                listen: config.cluster.listen,
            })
            .into_iter()
            .collect(),
        ready_in,
    };
    // A signal during startup: stop without ever reporting ready.
    if !shutdown.is_cancelled() {
        readiness.set(true);
        print_banner(&banner);
        tracing::info!(
            ready_ms = ready_in.as_millis() as u64,
            partitions = banner.partitions_open,
            offline_partitions = banner.partitions_offline,
            "ready"
        );
    }

    shutdown.cancelled().await;

    readiness.set(false);
    broker.begin_shutdown();
    kafka.stop().await;
    api.stop().await;
    stop_maintenance.cancel();
    // Executors finish the batch in hand (outputs, state, commit) before the log closes.
    if let Err(error) = functions_task.await {
        tracing::error!(%error, "the functions task failed");
    }
    if let Err(error) = uploads.await {
        tracing::error!(%error, "the tiered storage upload task failed");
    }
    if let Err(error) = maintenance.await {
        tracing::error!(%error, "the log maintenance task failed");
    }
    if let Err(error) = reconcile.await {
        tracing::error!(%error, "the partition reconciliation task failed");
    }
    stop_replication.cancel();
    if let Err(error) = replication.await {
        tracing::error!(%error, "the replication task failed");
    }
    controller.shutdown().await;
    if let Some(server) = cluster_server {
        server.stop().await;
    }
    let http_result = http.stop().await;
    log.close_all()
        .await
        .context("close the log cleanly; it will be recovered on the next start")?;
    http_result?;
    tracing::info!("stopped");
    Ok(())
}

struct StartedController {
    controller: Arc<Controller>,
    cluster_server: Option<ClusterServer>,
}

/// Starts the controller under `<data dir>/controller` and waits until it is ready: a
/// single voter in `runnel dev`, or one of `controller.voters` with the cluster RPC served
/// on `cluster.listen`. Waiting for a quorum gives way to a shutdown signal.
/// The listeners bound before the controller starts, with their real addresses.
struct BoundAddresses {
    http: std::net::SocketAddr,
    kafka: std::net::SocketAddr,
    grpc: std::net::SocketAddr,
}

async fn start_controller(
    config: &NodeConfig,
    data_dir: &std::path::Path,
    bound: BoundAddresses,
    shutdown: &CancellationToken,
    local: runnel_grpc::cluster::LocalPartitionsSlot,
) -> anyhow::Result<StartedController> {
    let voters = config
        .controller
        .voters()
        .map_err(|reason| anyhow::anyhow!("controller.voters: {reason}"))?;
    let learner = !voters.is_empty() && !voters.contains_key(&config.node.id);
    let node = NodeInfo {
        id: config.node.id,
        kafka: config
            .kafka
            .advertised
            .clone()
            .unwrap_or_else(|| bound.kafka.to_string()),
        grpc: config
            .grpc
            .advertised
            .clone()
            .unwrap_or_else(|| bound.grpc.to_string()),
        cluster: config.cluster.advertised_address(),
        http: config
            .http
            .advertised
            .clone()
            .unwrap_or_else(|| bound.http.to_string()),
        roles: NodeRoles {
            controller: !learner,
            broker: true,
        },
        alive: true,
    };
    let dir = data_dir.join("controller");
    if voters.is_empty() {
        let controller = Controller::start_single(&dir, node)
            .await
            .with_context(|| format!("start the controller in {}", dir.display()))?;
        return Ok(StartedController {
            controller: Arc::new(controller),
            cluster_server: None,
        });
    }
    let controller = Arc::new(
        Controller::start(
            &dir,
            node,
            voters.clone(),
            ClusterNetwork,
            Some(runnel_grpc::cluster::forwarder()),
        )
        .await
        .with_context(|| format!("start the controller in {}", dir.display()))?,
    );
    let heartbeats = Heartbeats::default();
    let server = ClusterServer::start(
        config.cluster.listen,
        &controller,
        heartbeats.clone(),
        local,
    )
    .await?;
    // Liveness: heartbeats to the leader, and fencing while this node leads.
    tokio::spawn(runnel_grpc::cluster::run_heartbeats(
        controller.clone(),
        heartbeats.clone(),
        server.stop.clone(),
    ));
    tokio::spawn(runnel_controller::liveness::run_fencing(
        controller.clone(),
        heartbeats,
        server.stop.clone(),
    ));
    if learner {
        // A broker-only node asks the voters to add it as a learner, until one does.
        let address = config.cluster.advertised_address();
        loop {
            tokio::select! {
                joined = runnel_grpc::cluster::join(config.node.id, &address, &voters) => match joined {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::warn!(%error, "asking the voters to join as a learner");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
                _ = shutdown.cancelled() => break,
            }
        }
    }
    loop {
        tokio::select! {
            ready = controller.wait_ready(READY_ATTEMPT) => match ready {
                Ok(()) => break,
                Err(error) if !error.is_retryable() || controller.is_stopped() => {
                    return Err(anyhow::Error::new(error).context("start the controller"));
                }
                Err(error) => {
                    tracing::warn!(%error, "waiting for the controller quorum");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
            _ = shutdown.cancelled() => break,
        }
    }
    Ok(StartedController {
        controller,
        cluster_server: Some(server),
    })
}

/// How long stopping the cluster RPC server waits for open connections.
const CLUSTER_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one attempt to reach the quorum at startup waits before logging and retrying.
const READY_ATTEMPT: Duration = Duration::from_secs(10);

/// The cluster RPC server (Raft between the voters, forwarded proposals).
struct ClusterServer {
    address: std::net::SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ClusterServer {
    async fn start(
        listen: std::net::SocketAddr,
        controller: &Controller,
        heartbeats: Heartbeats,
        local: runnel_grpc::cluster::LocalPartitionsSlot,
    ) -> anyhow::Result<ClusterServer> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("bind the cluster listener on {listen} (cluster.listen)"))?;
        let address = listener
            .local_addr()
            .context("read the cluster listener's address")?;
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let service = runnel_grpc::cluster::ClusterService::new(
            controller.node_id(),
            controller.raft(),
            heartbeats,
            local,
        );
        let stop = CancellationToken::new();
        let signal = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, signal)
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "the cluster rpc server failed");
            }
        });
        tracing::info!(%address, "cluster rpc listening");
        Ok(ClusterServer {
            address,
            stop,
            task,
        })
    }

    /// Stops serving; a peer that keeps a connection open gets [`CLUSTER_DRAIN_TIMEOUT`].
    async fn stop(self) {
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(CLUSTER_DRAIN_TIMEOUT, &mut task)
            .await
            .is_err()
        {
            tracing::warn!(
                "cluster rpc connections still open after the drain timeout; closing them"
            );
            task.abort();
        }
    }
}

async fn open_log(config: &NodeConfig, metrics: Arc<LogMetrics>) -> anyhow::Result<LogManager> {
    let defaults = config
        .log
        .topic_defaults()
        .context("topic defaults from the [log] section")?;
    let data_dir = &config.node.data_dir;
    let log = LogManager::open(data_dir, defaults, metrics)
        .await
        .with_context(|| format!("open the log in {} (node.data_dir)", data_dir.display()))?;
    let space = Arc::new(
        runnel_log::DiskSpace::new(data_dir, config.log.min_free_bytes)
            .context("the free-disk floor (log.min_free_bytes)")?,
    );
    if space.free() < space.floor() {
        tracing::warn!(
            free = space.free(),
            floor = space.floor(),
            "the data directory's disk is below log.min_free_bytes: appends are refused until space is freed"
        );
    }
    // Refreshed for as long as the log holds it.
    space.watch();
    log.set_disk_space(space);
    Ok(log)
}

/// The node's object store (`[tier]`; by default the directory `<data dir>/objects`),
/// checked with one listing.
async fn open_objects(
    config: &NodeConfig,
    data_dir: &std::path::Path,
) -> anyhow::Result<Arc<dyn object_store::ObjectStore>> {
    let tier = &config.tier;
    let store_config = runnel_tier::StoreConfig {
        url: tier.url.clone(),
        default_dir: data_dir.join("objects"),
        endpoint: tier.endpoint.clone(),
        region: tier.region.clone(),
        access_key_id: tier.access_key_id.clone(),
        secret_access_key: tier.secret_access_key.clone(),
        virtual_hosted_style: tier.virtual_hosted_style,
        allow_http: tier.allow_http,
        request_timeout: Duration::from_millis(tier.request_timeout_ms),
    };
    let opened = runnel_tier::open_store(&store_config)
        .await
        .map_err(|e| anyhow::anyhow!("open the object store ([tier]): {e}"))?;
    tracing::info!(store = %opened.description, "object store ready");
    Ok(opened.store)
}

/// Tiered storage's uploads of the sealed segments of partitions this node leads.
fn start_uploads(
    objects: &Arc<dyn object_store::ObjectStore>,
    log: &LogManager,
    broker: &Arc<Broker>,
    metrics: Arc<runnel_tier::TierMetrics>,
    cache: Arc<runnel_tier::TierCache>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let uploader = Arc::new(runnel_tier::Uploader::new(
        objects.clone(),
        "",
        metrics,
        cache,
    ));
    // Partitions created from now on are attached before they are served.
    log.set_remote_attacher(uploader.clone());
    let broker = broker.clone();
    let targets = move || {
        let metadata = broker.metadata();
        let mut targets = Vec::new();
        for (name, topic) in &metadata.topics {
            for (index, partition) in topic.partitions.iter().enumerate() {
                if partition.leader != Some(broker.node_id()) {
                    continue;
                }
                if let Ok(log) = broker.leader_log(name, index as i32) {
                    targets.push(runnel_tier::UploadTarget {
                        topic: name.clone(),
                        partition: index as i32,
                        log,
                        leader_epoch: partition.leader_epoch,
                    });
                }
            }
        }
        targets
    };
    tokio::spawn(uploader.run(targets, stop))
}

/// The functions service: components in the node's object store, compiled ones cached in
/// `<data dir>/functions/cache`.
fn start_functions(
    limits: &runnel_config::FunctionsSection,
    data_dir: &std::path::Path,
    objects: &Arc<dyn object_store::ObjectStore>,
    broker: &Arc<Broker>,
    groups: &Arc<GroupService>,
) -> anyhow::Result<Arc<runnel_functions::Functions>> {
    let host = runnel_functions::FunctionHost::new()
        .map_err(|e| anyhow::anyhow!("start the wasm engine: {e:#}"))?;
    let store = runnel_functions::ComponentStore::new(objects.clone());
    let bytes = |value: u64| usize::try_from(value).unwrap_or(usize::MAX);
    Ok(runnel_functions::Functions::new(
        broker.clone(),
        groups.clone(),
        Arc::new(host),
        store,
        runnel_functions::FunctionsSettings {
            cache_dir: data_dir.join("functions").join("cache"),
            max_component_bytes: bytes(limits.max_component_bytes),
            max_kv_bytes: bytes(limits.max_kv_bytes),
            compile_timeout: Duration::from_millis(limits.compile_timeout_ms),
            log_retention_bytes: limits.log_retention_bytes,
        },
    ))
}

/// A schedule interval from a `*_interval_ms` key; validation keeps those at least 1.
fn interval(milliseconds: u64) -> Duration {
    Duration::from_millis(milliseconds.max(1))
}

/// Prints the banner to stdout. A closed or full stdout must not stop the node, so a failed
/// write is only logged.
fn print_banner(banner: &Banner) {
    let mut stdout = std::io::stdout().lock();
    let written = write!(stdout, "{banner}").and_then(|()| stdout.flush());
    if let Err(error) = written {
        tracing::warn!(%error, "cannot print the startup banner to stdout");
    }
}
