//! `runnel connector`: sources and sinks from the command line. Connectors are functions
//! of the kinds `source` and `sink` (docs/connectors.md): they deploy through the same
//! `Functions` API, and these commands only show and touch those two kinds.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::client::{Connection, Failure, Output, connect, key_value, print_json, table, usage};
use crate::functions::{FailurePolicy, failure_policy, function_config};

#[derive(Debug, Args)]
pub struct ConnectorArgs {
    #[command(subcommand)]
    pub command: ConnectorCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConnectorCommand {
    /// Create a connector, or a new version of one (it resumes from its position)
    Create(CreateArgs),
    /// List the connectors
    List {
        #[command(flatten)]
        connection: Connection,
    },
    /// A connector's spec, state, position (sources) or lag (sinks), and last error
    Describe {
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Stop running a connector, keeping its position and state
    Pause {
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Run a paused connector again, from where it stopped
    Resume {
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Delete a connector with its position and kv state
    Delete {
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConnectorKind {
    /// Brings records in: polled on a schedule, written to its topics
    Source,
    /// Sends records out: called with batches of its topics
    Sink,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    pub name: String,
    #[arg(long, value_enum)]
    pub kind: ConnectorKind,
    /// The component, built with `cargo build --target wasm32-wasip2 --release`
    #[arg(long, conflicts_with = "plugin", required_unless_present = "plugin")]
    pub wasm: Option<PathBuf>,
    /// A ready-made connector of `plugins/` (datagen, http-source, http-sink,
    /// object-store-sink), found in --plugin-dir
    #[arg(long)]
    pub plugin: Option<String>,
    /// Where --plugin components are (NAME.wasm); default: $RUNNEL_PLUGIN_DIR, then the
    /// plugins build directory of the repository this CLI was built from
    #[arg(long, env = "RUNNEL_PLUGIN_DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// The topic a source writes to or a sink reads (repeatable); default: the `topic`
    /// or `topics` (comma-separated) config entry
    #[arg(long = "topic", short)]
    pub topics: Vec<String>,
    /// A config entry the connector reads, KEY=VALUE (repeatable)
    #[arg(long = "config", short, value_name = "KEY=VALUE", value_parser = key_value)]
    pub configs: Vec<(String, String)>,
    /// A file of KEY=VALUE lines (# comments), read before any --config
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// A host its outgoing HTTP may reach: `host`, `host:port` or `*.domain`
    /// (repeatable); any other request is refused
    #[arg(long = "allow-host", value_name = "HOST")]
    pub allow_hosts: Vec<String>,
    /// Sources: the wait between polls that returned less than a full batch
    #[arg(long, default_value_t = 1000)]
    pub poll_interval_ms: u64,
    /// Time per call (a poll, or a sink's batch), HTTP included
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// Records per poll or per sink call
    #[arg(long, default_value_t = 1000)]
    pub batch_records: u32,
    /// Linear memory per instance, in MiB
    #[arg(long, default_value_t = 64)]
    pub memory_mib: u64,
    /// Attempts after the first before --on-failure applies
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// What a sink does with a batch that keeps failing: by default it retries until the
    /// target takes it. A source retries a failing poll until it succeeds, unless `stop`
    /// (`dlq` is refused for sources)
    #[arg(long, value_enum, default_value_t = FailurePolicy::Retry)]
    pub on_failure: FailurePolicy,
    /// Create it paused: it runs once resumed
    #[arg(long)]
    pub paused: bool,
    /// The node's gRPC address
    #[arg(long, env = "RUNNEL_SERVER", default_value = "127.0.0.1:9093")]
    pub server: String,
}

fn is_connector(kind: &str) -> bool {
    kind == "source" || kind == "sink"
}

pub async fn run(args: ConnectorArgs) -> Result<(), Failure> {
    match args.command {
        ConnectorCommand::Create(args) => create(args).await,
        ConnectorCommand::List { connection } => {
            let connectors: Vec<_> = connect(&connection)
                .await?
                .functions()
                .list()
                .await?
                .into_iter()
                .filter(|f| is_connector(&f.kind))
                .collect();
            let topics = |f: &runnel_client::functions::FunctionSummary| {
                if f.kind == "source" {
                    f.outputs.join(",")
                } else {
                    f.inputs.join(",")
                }
            };
            if connection.output == Output::Json {
                print_json(&json!(
                    connectors
                        .iter()
                        .map(|f| json!({
                            "name": f.name, "kind": f.kind, "version": f.version,
                            "topics": topics(f), "paused": f.paused,
                        }))
                        .collect::<Vec<_>>()
                ));
                return Ok(());
            }
            let rows = connectors
                .iter()
                .map(|f| {
                    vec![
                        f.name.clone(),
                        f.kind.clone(),
                        f.version.to_string(),
                        topics(f),
                        if f.paused { "paused" } else { "running" }.to_string(),
                    ]
                })
                .collect();
            table(&["NAME", "KIND", "VERSION", "TOPICS", "STATE"], rows);
            Ok(())
        }
        ConnectorCommand::Describe { name, connection } => {
            let described = connect(&connection)
                .await?
                .functions()
                .describe(&name)
                .await?;
            if !is_connector(&described.kind) {
                return Err(not_a_connector(&name, &described.kind));
            }
            describe(&described, connection.output);
            Ok(())
        }
        ConnectorCommand::Pause { name, connection } => {
            let client = connect(&connection).await?;
            check_kind(&client, &name).await?;
            client.functions().pause(&name).await?;
            println!("paused {name}");
            Ok(())
        }
        ConnectorCommand::Resume { name, connection } => {
            let client = connect(&connection).await?;
            check_kind(&client, &name).await?;
            client.functions().resume(&name).await?;
            println!("resumed {name}");
            Ok(())
        }
        ConnectorCommand::Delete { name, connection } => {
            let client = connect(&connection).await?;
            check_kind(&client, &name).await?;
            client.functions().delete(&name).await?;
            println!("deleted {name}");
            Ok(())
        }
    }
}

fn not_a_connector(name: &str, kind: &str) -> Failure {
    usage(format!(
        "`{name}` is a {kind} function, not a connector: see `runnel fn`"
    ))
}

async fn check_kind(client: &runnel_client::Client, name: &str) -> Result<(), Failure> {
    let described = client.functions().describe(name).await?;
    if is_connector(&described.kind) {
        Ok(())
    } else {
        Err(not_a_connector(name, &described.kind))
    }
}

/// The component of `--plugin NAME`: `NAME.wasm` in the plugin directory, or in the
/// repository's plugins build directory.
fn plugin_component(name: &str, dir: Option<&Path>) -> Result<PathBuf, Failure> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(usage(format!("plugin {name:?}: letters, digits and -")));
    }
    let file = format!("{}.wasm", name.replace('-', "_"));
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let candidates: Vec<PathBuf> = match dir {
        Some(dir) => vec![dir.join(&file)],
        None => vec![
            repository
                .join("plugins/target/wasm32-wasip2/release")
                .join(&file),
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repository.join("target"))
                .join("wasm-guests/wasm32-wasip2/release")
                .join(&file),
        ],
    };
    if let Some(found) = candidates.iter().find(|path| path.is_file()) {
        return Ok(found.clone());
    }
    Err(usage(format!(
        "plugin `{name}` is not built (looked for {}); build it with `cargo build --release --target wasm32-wasip2 --manifest-path plugins/{name}/Cargo.toml`, or name its directory with --plugin-dir",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

async fn create(args: CreateArgs) -> Result<(), Failure> {
    let path = match (&args.wasm, &args.plugin) {
        (Some(wasm), _) => wasm.clone(),
        (None, Some(plugin)) => plugin_component(plugin, args.plugin_dir.as_deref())?,
        (None, None) => return Err(usage("name the component with --wasm or --plugin")),
    };
    let component =
        std::fs::read(&path).map_err(|e| usage(format!("read {}: {e}", path.display())))?;
    let config = function_config(args.config_file.as_deref(), &args.configs)?;
    let mut topics = args.topics.clone();
    if topics.is_empty()
        && let Some(listed) = config.get("topics").or_else(|| config.get("topic"))
    {
        topics = listed
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
    }
    if topics.is_empty() {
        return Err(usage(
            "name the connector's topics with --topic or --config topic=NAME",
        ));
    }
    let connection = Connection {
        server: args.server.clone(),
        output: Output::Table,
    };
    let client = connect(&connection).await?;
    let (kind, inputs, outputs) = match args.kind {
        ConnectorKind::Source => {
            // A source's topics are created if missing, with the cluster's defaults.
            for topic in &topics {
                let described = client.admin().describe_topic(topic).await;
                if let Err(error) = described {
                    if error.code() != tonic::Code::NotFound {
                        return Err(error.into());
                    }
                    client.admin().create_topic(topic, 0, &[]).await?;
                    println!("created topic {topic}");
                }
            }
            ("source", Vec::new(), topics)
        }
        ConnectorKind::Sink => ("sink", topics, Vec::new()),
    };
    let request = runnel_client::functions::DeployFunctionRequest {
        name: args.name.clone(),
        kind: kind.to_string(),
        component,
        inputs,
        outputs,
        config: config.into_iter().collect(),
        grant_all: true,
        grants: Vec::new(),
        limits: Some(runnel_client::functions::FunctionLimits {
            memory_bytes: args.memory_mib.saturating_mul(1 << 20),
            call_timeout_ms: args.timeout_ms,
            batch_records: args.batch_records,
            retries: Some(args.retries),
        }),
        on_failure: failure_policy(args.on_failure).to_string(),
        paused: args.paused,
        allow_hosts: args.allow_hosts,
        poll_interval_ms: args.poll_interval_ms,
    };
    let version = client.functions().deploy(request).await?;
    println!("created {kind} {} version {version}", args.name);
    Ok(())
}

fn describe(connector: &runnel_client::functions::FunctionDescription, output: Output) {
    let source = connector.kind == "source";
    if output == Output::Json {
        print_json(&json!({
            "name": connector.name, "kind": connector.kind, "version": connector.version,
            "digest": connector.digest,
            "topics": if source { &connector.outputs } else { &connector.inputs },
            "config": connector.config, "allow_hosts": connector.allow_hosts,
            "poll_interval_ms": connector.poll_interval_ms,
            "on_failure": connector.on_failure, "state": connector.state,
            "lag": connector.lag, "processed": connector.processed,
            "failed": connector.failed, "last_error": connector.last_error,
            "cursor": connector.partitions.first().map(|p| p.cursor.clone()),
            "dead_letter_topic": (!source).then_some(&connector.dead_letter_topic),
            "instances": connector.partitions.iter().map(|p| json!({
                "topic": p.topic, "partition": p.partition, "version": p.version,
                "state": p.state, "position": p.position, "lag": p.lag,
                "processed": p.processed, "failed": p.failed, "errors": p.errors,
                "last_error": p.last_error, "cursor": p.cursor,
                "counters": p.counters, "gauges": p.gauges,
            })).collect::<Vec<_>>(),
        }));
        return;
    }
    println!(
        "{} ({} version {}, {})",
        connector.name, connector.kind, connector.version, connector.state
    );
    if source {
        println!("writes to: {}", connector.outputs.join(", "));
        let cursor = connector
            .partitions
            .first()
            .map(|p| p.cursor.as_str())
            .filter(|c| !c.is_empty())
            .unwrap_or("(none yet)");
        println!("position: {cursor}");
        // The position of a source is the records it wrote, over restarts.
        let written = connector.partitions.first().map_or(0, |p| p.position);
        println!("records written: {written}");
    } else {
        println!("reads: {}", connector.inputs.join(", "));
        println!("dead letters: {}", connector.dead_letter_topic);
        println!(
            "processed: {}  failed: {}  lag: {}",
            connector.processed, connector.failed, connector.lag
        );
    }
    println!(
        "allowed hosts: {}",
        if connector.allow_hosts.is_empty() {
            "none".to_string()
        } else {
            connector.allow_hosts.join(", ")
        }
    );
    if !connector.last_error.is_empty() {
        println!("last error: {}", connector.last_error);
    }
    if !source && !connector.partitions.is_empty() {
        println!();
        table(
            &[
                "TOPIC",
                "PARTITION",
                "STATE",
                "POSITION",
                "LAG",
                "PROCESSED",
                "FAILED",
            ],
            connector
                .partitions
                .iter()
                .map(|p| {
                    vec![
                        p.topic.clone(),
                        p.partition.to_string(),
                        p.state.clone(),
                        p.position.to_string(),
                        p.lag.to_string(),
                        p.processed.to_string(),
                        p.failed.to_string(),
                    ]
                })
                .collect(),
        );
    }
}
