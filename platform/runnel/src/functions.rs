//! `runnel fn`: Wasm functions from the command line. `runnel fn run` is the local test
//! harness: it runs a component over sample records from stdin in this process, with the
//! host and limits a node uses, and prints what the function wrote. No broker is needed.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use runnel_abi::{BatchWriter, Outputs};
use runnel_functions::{FunctionHost, Kind, Limits};
use serde_json::json;

use crate::client::{
    Connection, Failure, Format, Output, connect, key_value, parse_record, print_json, table, usage,
};

#[derive(Debug, Args)]
pub struct FnArgs {
    #[command(subcommand)]
    pub command: FnCommand,
}

#[derive(Debug, Subcommand)]
pub enum FnCommand {
    /// Run a function component over records read from stdin, without a broker, and print
    /// its output records as JSON lines (its log lines and state go to stderr)
    Run(RunArgs),
    /// Write a new function crate that builds with `cargo build --target wasm32-wasip2
    /// --release`
    Init(InitArgs),
    /// Deploy a function to the cluster, or a new version of one
    Deploy(DeployArgs),
    /// List the deployed functions
    List {
        #[command(flatten)]
        connection: Connection,
    },
    /// A function's spec, state, lag, counts and last error, per input partition
    Describe {
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Print a function's log lines
    Logs {
        name: String,
        /// Keep printing new lines until Ctrl-C
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Stop running a function, keeping its progress and state
    Pause {
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Run a paused function again, from where it stopped
    Resume {
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Delete a function with its progress and kv state (its dead-letter topic stays)
    Delete {
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
}

impl FnCommand {
    /// Whether this command runs in the CLI's own process (no server, no async runtime).
    pub fn is_local(&self) -> bool {
        matches!(self, FnCommand::Run(_) | FnCommand::Init(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailurePolicy {
    /// Send a batch that keeps failing to `<name>.dlq` and go on
    Dlq,
    /// Retry it until it succeeds
    Retry,
    /// Stop the partition's processing with the error
    Stop,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The component, built with `cargo build --target wasm32-wasip2 --release`
    pub wasm: PathBuf,
    #[arg(long)]
    pub name: String,
    #[arg(long, value_enum, default_value_t = FnKind::Transform)]
    pub kind: FnKind,
    /// An input topic (repeatable)
    #[arg(long = "input", short, required = true)]
    pub inputs: Vec<String>,
    /// An output topic (repeatable); records go to the first unless they name another
    #[arg(long = "output")]
    pub outputs: Vec<String>,
    /// A config entry the function reads, KEY=VALUE (repeatable)
    #[arg(long = "config", short, value_name = "KEY=VALUE", value_parser = key_value)]
    pub configs: Vec<(String, String)>,
    /// A file of KEY=VALUE lines (# comments), read before any --config
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// A host interface the function may import (repeatable: log, config, kv, metrics,
    /// produce); default: every interface of its kind
    #[arg(long = "grant", value_name = "INTERFACE")]
    pub grants: Vec<String>,
    /// Linear memory per instance, in MiB
    #[arg(long, default_value_t = 64)]
    pub memory_mib: u64,
    /// Time per call, in milliseconds
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Records per call
    #[arg(long, default_value_t = 1000)]
    pub batch_records: u32,
    /// Attempts after the first before --on-failure applies
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    #[arg(long, value_enum, default_value_t = FailurePolicy::Dlq)]
    pub on_failure: FailurePolicy,
    /// Deploy it paused: it runs once resumed
    #[arg(long)]
    pub paused: bool,
    /// The node's gRPC address (`--output` names topics here, so no `-o json`)
    #[arg(long, env = "RUNNEL_SERVER", default_value = "127.0.0.1:9093")]
    pub server: String,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The crate's name; it is written to a directory of that name
    pub name: String,
    #[arg(long, value_enum, default_value_t = FnKind::Transform)]
    pub kind: FnKind,
    /// Where to write it (default: ./NAME)
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The runnel-sdk crate to depend on (default: the one of the repository this CLI
    /// was built from)
    #[arg(long)]
    pub sdk: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FnKind {
    Transform,
    Consumer,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The component, built with `cargo build --target wasm32-wasip2 --release`
    pub wasm: PathBuf,
    #[arg(long, value_enum, default_value_t = FnKind::Transform)]
    pub kind: FnKind,
    /// A config entry the function reads, KEY=VALUE (repeatable)
    #[arg(long = "config", short, value_name = "KEY=VALUE", value_parser = key_value)]
    pub configs: Vec<(String, String)>,
    /// A file of KEY=VALUE lines (# comments), read before any --config
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// text: one value per line (key first with --key-separator); json: one object per line
    /// ({"key", "value", "headers", "timestamp_ms"})
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// Records per call of the function
    #[arg(long, default_value_t = 500)]
    pub batch_records: usize,
    /// The topic and partition the records appear to come from
    #[arg(long, default_value = "input")]
    pub topic: String,
    #[arg(long, default_value_t = 0)]
    pub partition: i32,
}

/// The commands that run here: `run` and `init`.
pub fn run(args: FnArgs) -> Result<(), Failure> {
    match args.command {
        FnCommand::Run(args) => run_locally(args),
        FnCommand::Init(args) => init(args),
        _ => Err(usage("a server command")),
    }
}

/// The commands that talk to a node.
pub async fn remote(args: FnArgs) -> Result<(), Failure> {
    match args.command {
        FnCommand::Run(_) | FnCommand::Init(_) => Err(usage("a local command")),
        FnCommand::Deploy(args) => deploy(args).await,
        FnCommand::List { connection } => {
            let functions = connect(&connection).await?.functions().list().await?;
            if connection.output == Output::Json {
                print_json(&json!(
                    functions
                        .iter()
                        .map(|f| json!({
                            "name": f.name, "kind": f.kind, "version": f.version,
                            "inputs": f.inputs, "outputs": f.outputs, "paused": f.paused,
                        }))
                        .collect::<Vec<_>>()
                ));
                return Ok(());
            }
            let rows = functions
                .into_iter()
                .map(|f| {
                    vec![
                        f.name,
                        f.kind,
                        f.version.to_string(),
                        f.inputs.join(","),
                        f.outputs.join(","),
                        if f.paused { "paused" } else { "running" }.to_string(),
                    ]
                })
                .collect();
            table(
                &["NAME", "KIND", "VERSION", "INPUTS", "OUTPUTS", "STATE"],
                rows,
            );
            Ok(())
        }
        FnCommand::Describe { name, connection } => {
            let described = connect(&connection)
                .await?
                .functions()
                .describe(&name)
                .await?;
            describe(&described, connection.output);
            Ok(())
        }
        FnCommand::Logs {
            name,
            follow,
            connection,
        } => {
            let client = connect(&connection).await?;
            let mut lines = client.functions().logs(&name, follow).await?;
            while let Some(line) = tokio_stream::StreamExt::next(&mut lines).await {
                let line = line?;
                if connection.output == Output::Json {
                    println!(
                        "{}",
                        json!({
                            "sequence": line.sequence, "timestamp_ms": line.timestamp_ms,
                            "topic": line.topic, "partition": line.partition,
                            "level": line.level, "message": line.message,
                        })
                    );
                } else {
                    println!(
                        "{} {}-{} [{}] {}",
                        line.timestamp_ms, line.topic, line.partition, line.level, line.message
                    );
                }
            }
            Ok(())
        }
        FnCommand::Pause { name, connection } => {
            connect(&connection).await?.functions().pause(&name).await?;
            println!("paused {name}");
            Ok(())
        }
        FnCommand::Resume { name, connection } => {
            connect(&connection)
                .await?
                .functions()
                .resume(&name)
                .await?;
            println!("resumed {name}");
            Ok(())
        }
        FnCommand::Delete { name, connection } => {
            connect(&connection)
                .await?
                .functions()
                .delete(&name)
                .await?;
            println!("deleted {name}");
            Ok(())
        }
    }
}

/// A function's config: the file's KEY=VALUE lines, then the --config flags over them.
pub(crate) fn function_config(
    file: Option<&std::path::Path>,
    flags: &[(String, String)],
) -> Result<BTreeMap<String, String>, Failure> {
    let mut config = BTreeMap::new();
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| usage(format!("read {}: {e}", file.display())))?;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = key_value(line)
                .map_err(|e| usage(format!("{} line {}: {e}", file.display(), number + 1)))?;
            config.insert(key, value);
        }
    }
    config.extend(flags.iter().cloned());
    Ok(config)
}

/// The policy's name in the API.
pub(crate) fn failure_policy(policy: FailurePolicy) -> &'static str {
    match policy {
        FailurePolicy::Dlq => "dlq",
        FailurePolicy::Retry => "retry",
        FailurePolicy::Stop => "stop",
    }
}

async fn deploy(args: DeployArgs) -> Result<(), Failure> {
    let component = std::fs::read(&args.wasm)
        .map_err(|e| usage(format!("read {}: {e}", args.wasm.display())))?;
    let kind = match args.kind {
        FnKind::Transform => "transform",
        FnKind::Consumer => "consumer",
    };
    let on_failure = failure_policy(args.on_failure);
    let request = runnel_client::functions::DeployFunctionRequest {
        name: args.name.clone(),
        kind: kind.to_string(),
        component,
        inputs: args.inputs,
        outputs: args.outputs,
        config: function_config(args.config_file.as_deref(), &args.configs)?
            .into_iter()
            .collect(),
        grant_all: args.grants.is_empty(),
        grants: args.grants,
        limits: Some(runnel_client::functions::FunctionLimits {
            memory_bytes: args.memory_mib.saturating_mul(1 << 20),
            call_timeout_ms: args.timeout_ms,
            batch_records: args.batch_records,
            retries: Some(args.retries),
        }),
        on_failure: on_failure.to_string(),
        paused: args.paused,
        allow_hosts: Vec::new(),
        poll_interval_ms: 0,
    };
    let connection = Connection {
        server: args.server,
        output: Output::Table,
    };
    let version = connect(&connection)
        .await?
        .functions()
        .deploy(request)
        .await?;
    println!("deployed {} version {version}", args.name);
    Ok(())
}

fn describe(function: &runnel_client::functions::FunctionDescription, output: Output) {
    if output == Output::Json {
        print_json(&json!({
            "name": function.name, "kind": function.kind, "version": function.version,
            "digest": function.digest, "component_bytes": function.component_bytes,
            "inputs": function.inputs, "outputs": function.outputs,
            "config": function.config, "grants": function.grants,
            "on_failure": function.on_failure, "state": function.state,
            "lag": function.lag, "processed": function.processed, "failed": function.failed,
            "last_error": function.last_error, "group": function.group,
            "dead_letter_topic": function.dead_letter_topic,
            "partitions": function.partitions.iter().map(|p| json!({
                "topic": p.topic, "partition": p.partition, "version": p.version,
                "state": p.state, "position": p.position, "high_watermark": p.high_watermark,
                "lag": p.lag, "processed": p.processed, "failed": p.failed,
                "errors": p.errors, "last_error": p.last_error,
                "counters": p.counters, "gauges": p.gauges,
            })).collect::<Vec<_>>(),
        }));
        return;
    }
    println!(
        "{} ({} version {}, {})",
        function.name, function.kind, function.version, function.state
    );
    println!("inputs: {}", function.inputs.join(", "));
    println!("outputs: {}", function.outputs.join(", "));
    println!("group: {}", function.group);
    println!("dead letters: {}", function.dead_letter_topic);
    println!(
        "processed: {}  failed: {}  lag: {}",
        function.processed, function.failed, function.lag
    );
    if !function.last_error.is_empty() {
        println!("last error: {}", function.last_error);
    }
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
            "LAST-ERROR",
        ],
        function
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
                    p.last_error.clone(),
                ]
            })
            .collect(),
    );
}

/// Writes a function crate: Cargo.toml (the SDK by path, the guest release profile), a
/// `.cargo/config.toml` naming the wasm target, and src/lib.rs with an example function
/// of the kind.
fn init(args: InitArgs) -> Result<(), Failure> {
    if args.name.is_empty()
        || !args
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(usage(format!(
            "{:?}: a crate name is letters, digits, - and _",
            args.name
        )));
    }
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() {
        return Err(usage(format!("{} already exists", dir.display())));
    }
    let sdk = match args.sdk {
        Some(sdk) => sdk,
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../sdk/runnel-sdk"),
    };
    let sdk = std::fs::canonicalize(&sdk).map_err(|e| {
        usage(format!(
            "the SDK at {}: {e}; name it with --sdk",
            sdk.display()
        ))
    })?;
    let (feature, source) = match args.kind {
        FnKind::Transform => ("transform", TRANSFORM_TEMPLATE),
        FnKind::Consumer => ("consumer", CONSUMER_TEMPLATE),
    };
    let manifest = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
runnel-sdk = {{ path = "{sdk}", features = ["{feature}"] }}

# Not part of any workspace.
[workspace]

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
strip = true
"#,
        name = args.name,
        sdk = sdk.display(),
    );
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::create_dir_all(dir.join(".cargo"))?;
    std::fs::write(dir.join("Cargo.toml"), manifest)?;
    std::fs::write(
        dir.join(".cargo/config.toml"),
        "[build]\ntarget = \"wasm32-wasip2\"\n",
    )?;
    std::fs::write(dir.join("src/lib.rs"), source)?;
    std::fs::write(dir.join(".gitignore"), "/target\n")?;
    let underscored = args.name.replace('-', "_");
    println!(
        "wrote {dir}\nbuild it:   cd {dir} && cargo build --release\n\
         try it:     echo hello | runnel fn run target/wasm32-wasip2/release/{underscored}.wasm --kind {feature}\n\
         deploy it:  runnel fn deploy target/wasm32-wasip2/release/{underscored}.wasm --name {name} --kind {feature} --input IN{output}",
        dir = dir.display(),
        name = args.name,
        output = if feature == "transform" {
            " --output OUT"
        } else {
            ""
        },
    );
    Ok(())
}

const TRANSFORM_TEMPLATE: &str = r#"//! A transform: each input record becomes zero or more output records.

use runnel_sdk::{Error, Output, Record};

#[runnel_sdk::transform]
fn transform(record: Record<'_>) -> Result<Option<Output>, Error> {
    let value = record.value.unwrap_or_default().to_ascii_uppercase();
    Ok(Some(Output::from_record(&record).value(value)))
}
"#;

const CONSUMER_TEMPLATE: &str = r#"//! A consumer: does something with each input record (here: counts them in kv).

use runnel_sdk::{Error, Record, kv, log};

#[runnel_sdk::consumer]
fn consume(record: Record<'_>) -> Result<(), Error> {
    let seen = kv::get(b"seen")
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_le_bytes)
        + 1;
    kv::set(b"seen", &seen.to_le_bytes());
    log::info(&format!("record {} is number {seen}", record.offset));
    Ok(())
}
"#;

fn failure(message: impl std::fmt::Display) -> Failure {
    Failure {
        message: message.to_string(),
        code: 1,
    }
}

fn run_locally(args: RunArgs) -> Result<(), Failure> {
    let wasm = std::fs::read(&args.wasm)
        .map_err(|e| usage(format!("read {}: {e}", args.wasm.display())))?;
    let kind = match args.kind {
        FnKind::Transform => Kind::Transform,
        FnKind::Consumer => Kind::Consumer,
    };
    let host = FunctionHost::new().map_err(|e| failure(format!("{e:#}")))?;
    let function = host
        .compile(kind, &wasm, Limits::default())
        .map_err(failure)?;
    let config = function_config(args.config_file.as_deref(), &args.configs)?;
    let mut instance = function
        .instantiate(config, BTreeMap::new())
        .map_err(failure)?;

    let mut records = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.is_empty() && args.format == Format::Json {
            continue;
        }
        records.push(parse_record(
            args.format,
            args.key_separator.as_deref(),
            &[],
            &line,
        )?);
    }
    let now = runnel_log::now_ms();
    let mut stdout = std::io::stdout().lock();
    for (index, chunk) in records.chunks(args.batch_records.max(1)).enumerate() {
        let first = (index * args.batch_records.max(1)) as i64;
        let mut batch = BatchWriter::new(&args.topic, args.partition, 0).map_err(failure)?;
        for (i, record) in chunk.iter().enumerate() {
            batch
                .push(
                    first + i as i64,
                    now,
                    record.key.as_deref(),
                    record.value.as_deref(),
                    record
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), Some(v.as_slice()))),
                )
                .map_err(failure)?;
        }
        let outputs = instance.process(&batch.finish());
        let state = instance.state();
        if let Some(state) = state {
            for line in state.logs.drain(..) {
                eprintln!("[{}] {}", line.level, line.message);
            }
        }
        let outputs = outputs.map_err(|e| failure(format!("batch from offset {first}: {e}")))?;
        let mut buffers = vec![outputs];
        if let Some(state) = instance.state() {
            buffers.append(&mut state.produced);
        }
        for buffer in buffers.iter().filter(|b| !b.is_empty()) {
            let parsed = Outputs::parse(buffer).map_err(failure)?;
            for output in parsed.iter() {
                let text =
                    |bytes: Option<&[u8]>| bytes.map(|b| String::from_utf8_lossy(b).into_owned());
                let headers: serde_json::Map<String, serde_json::Value> = output
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(text(*v))))
                    .collect();
                writeln!(
                    stdout,
                    "{}",
                    json!({
                        "topic": output.topic,
                        "partition": output.partition,
                        "timestamp_ms": output.timestamp,
                        "key": text(output.key),
                        "value": text(output.value),
                        "headers": headers,
                    })
                )?;
            }
        }
    }
    stdout.flush()?;
    if let Some(state) = instance.state() {
        eprintln!(
            "{} records; kv entries {}; counters {:?}",
            records.len(),
            state.kv.len(),
            state.counters
        );
    }
    Ok(())
}
