//! The client commands of the `runnel` CLI, on `runnel-client` (the gRPC API): topics,
//! produce, consume, groups and the cluster, in the spirit of rpk.
//!
//! Tables aligned for people, `--output json` for scripts (one JSON document, or one JSON
//! object per record for produce and consume), `--server` or `RUNNEL_SERVER` to choose the
//! node (default 127.0.0.1:9093). Errors are one line on stderr. Exit codes: 0 done, 1 the
//! server refused or could not be reached, 2 a bad command line, 3 not found (a topic, a
//! partition or a group).

use std::io::{BufRead, Write};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use runnel_client::admin::ResetTo;
use runnel_client::{
    Acks, Client, ConsumedRecord, Error, GroupEvent, ProducerConfig, Record, Reset, Start,
};
use serde_json::json;
use tokio_stream::StreamExt;

/// Where the node is and how to print.
#[derive(Debug, Args)]
pub struct Connection {
    /// The node's gRPC address
    #[arg(
        long,
        env = "RUNNEL_SERVER",
        default_value = "127.0.0.1:9093",
        global = true
    )]
    pub server: String,
    /// How to print results
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct TopicArgs {
    #[command(subcommand)]
    pub command: TopicCommand,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic
    Create {
        name: String,
        /// Partitions (default: the broker's broker.num_partitions)
        #[arg(long, short, default_value_t = 0)]
        partitions: u32,
        /// Replicas of each partition (default: the broker's)
        #[arg(long, short, default_value_t = 0)]
        replicas: u32,
        /// A config override under its Kafka name, e.g. retention.ms=3600000 (repeatable)
        #[arg(long = "config", short, value_name = "KEY=VALUE", value_parser = key_value)]
        configs: Vec<(String, String)>,
        /// Only check that it could be created
        #[arg(long)]
        validate_only: bool,
    },
    /// List topics
    List {
        /// Include internal topics (__consumer_offsets)
        #[arg(long)]
        internal: bool,
    },
    /// A topic's partitions (leader, replicas, offsets) and configs
    Describe { name: String },
    /// Set or remove config overrides
    Alter {
        name: String,
        /// Set KEY=VALUE (repeatable)
        #[arg(long, value_name = "KEY=VALUE", value_parser = key_value)]
        set: Vec<(String, String)>,
        /// Remove an override, back to the default (repeatable)
        #[arg(long, value_name = "KEY")]
        delete: Vec<String>,
    },
    /// Grow a topic to a number of partitions in all
    AddPartitions {
        name: String,
        /// The new total
        #[arg(long)]
        total: u32,
    },
    /// Delete a topic and its data
    Delete { name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Lines of text: the value (and the key, with --key-separator)
    Text,
    /// One JSON object per line: {"key", "value", "headers", ...}
    Json,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    pub topic: String,
    /// Split each line at the first SEP into key and value
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// A header on every record, KEY=VALUE (repeatable)
    #[arg(long = "header", short = 'H', value_name = "KEY=VALUE", value_parser = key_value)]
    pub headers: Vec<(String, String)>,
    /// Write every record to this partition (default: by key, as Kafka's partitioner)
    #[arg(long, short)]
    pub partition: Option<i32>,
    /// How stdin is read: text lines, or JSON objects {"key", "value", "headers",
    /// "timestamp_ms"} one per line
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// all: acknowledged once fsynced; leader: once written
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    pub acks: AcksArg,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AcksArg {
    All,
    Leader,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Start at the first record kept (default: only new records)
    #[arg(long, conflicts_with_all = ["offset", "group"])]
    pub from_beginning: bool,
    /// Start at this offset in every partition read
    #[arg(long, conflicts_with = "group")]
    pub offset: Option<i64>,
    /// Join this consumer group: the server shares the topic's partitions among its
    /// members, each read from the group's committed offsets (the earliest where there are
    /// none), and what was printed is committed
    #[arg(long, short)]
    pub group: Option<String>,
    /// Only these partitions (repeatable; default: all)
    #[arg(long = "partition", short, conflicts_with = "group")]
    pub partitions: Vec<i32>,
    /// Stop after this many records (default: follow until Ctrl-C)
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// text: the value per line (key first with --key-separator); json: one object per line
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// With --format text, print the key, this separator, then the value
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Args)]
pub struct GroupArgs {
    #[command(subcommand)]
    pub command: GroupCommand,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List consumer groups
    List,
    /// A group's state, members and, per partition, committed offset and lag
    Describe { name: String },
    /// Move a group's committed offsets (the group must have no members)
    ResetOffsets {
        name: String,
        #[arg(long)]
        topic: String,
        /// Only these partitions (repeatable; default: all of the topic's)
        #[arg(long = "partition", short)]
        partitions: Vec<i32>,
        #[arg(long, group = "to")]
        to_earliest: bool,
        #[arg(long, group = "to")]
        to_latest: bool,
        /// The first record at or after this time (milliseconds since the epoch)
        #[arg(long, group = "to", value_name = "MS")]
        to_timestamp: Option<i64>,
        #[arg(long, group = "to", value_name = "OFFSET")]
        to_offset: Option<i64>,
    },
    /// Delete a group without members, and its committed offsets
    Delete { name: String },
}

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The nodes, the controller leader and the version
    Info,
}

pub(crate) fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got `{text}`")),
    }
}

/// A command's failure: its message and exit code.
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) code: u8,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        let code = if error.code() == tonic::Code::NotFound {
            3
        } else {
            1
        };
        Failure {
            message: error.to_string(),
            code,
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Failure {
        Failure {
            message: error.to_string(),
            code: 1,
        }
    }
}

pub(crate) fn usage(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        code: 2,
    }
}

/// Runs a client command to its end.
pub fn run(command: crate::cli::Command) -> ExitCode {
    // Functions run outside any async runtime: wasmtime's synchronous WASI host calls
    // block on one of their own.
    if let crate::cli::Command::Fn(args) = &command
        && args.command.is_local()
    {
        let crate::cli::Command::Fn(args) = command else {
            return ExitCode::FAILURE;
        };
        return exit(crate::functions::run(args));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        use crate::cli::Command;
        match command {
            Command::Topic(args) => topic(args).await,
            Command::Produce(args) => produce(args).await,
            Command::Consume(args) => consume(args).await,
            Command::Group(args) => group(args).await,
            Command::Cluster(args) => cluster(args).await,
            Command::Fn(args) => crate::functions::remote(args).await,
            Command::Connector(args) => crate::connectors::run(args).await,
            Command::Dev(_) | Command::Start(_) => Err(usage("not a client command")),
        }
    });
    exit(result)
}

fn exit(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

pub(crate) async fn connect(connection: &Connection) -> Result<Client, Failure> {
    Ok(Client::connect(&connection.server).await?)
}

/// Prints rows under headers, each column as wide as its widest cell.
pub(crate) fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut text = String::new();
        for (index, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if index + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        println!("{}", text.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

pub(crate) fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

fn optional<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn describe_topic(output: Output, topic: &runnel_client::admin::TopicDescription) {
    if output == Output::Json {
        print_json(&json!({
            "name": topic.name,
            "id": topic.id,
            "partitions": topic.partitions.iter().map(|p| json!({
                "partition": p.partition,
                "leader": p.leader,
                "replicas": p.replicas,
                "log_start_offset": p.log_start_offset,
                "high_watermark": p.high_watermark,
            })).collect::<Vec<_>>(),
            "configs": topic.configs.iter().map(|c| (c.name.clone(), json!(c.value))).collect::<serde_json::Map<_, _>>(),
        }));
        return;
    }
    println!("{} ({})\n", topic.name, topic.id);
    table(
        &[
            "PARTITION",
            "LEADER",
            "REPLICAS",
            "LOG-START",
            "HIGH-WATERMARK",
        ],
        topic
            .partitions
            .iter()
            .map(|p| {
                vec![
                    p.partition.to_string(),
                    optional(p.leader),
                    p.replicas
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                    optional(p.log_start_offset),
                    optional(p.high_watermark),
                ]
            })
            .collect(),
    );
    println!();
    table(
        &["CONFIG", "VALUE", "SOURCE"],
        topic
            .configs
            .iter()
            .map(|c| {
                let source = if c.is_override { "topic" } else { "default" };
                vec![c.name.clone(), c.value.clone(), source.to_string()]
            })
            .collect(),
    );
}

async fn topic(args: TopicArgs) -> Result<(), Failure> {
    let client = connect(&args.connection).await?;
    let admin = client.admin();
    let output = args.connection.output;
    match args.command {
        TopicCommand::Create {
            name,
            partitions,
            replicas,
            configs,
            validate_only,
        } => {
            let created = admin
                .create_topic_with(runnel_client::proto::CreateTopicRequest {
                    name,
                    partitions,
                    replication_factor: replicas,
                    configs: configs.into_iter().collect(),
                    validate_only,
                })
                .await?;
            if output == Output::Json {
                print_json(&json!({"name": created.name, "id": created.id,
                    "partitions": created.partitions.len(), "validate_only": validate_only}));
            } else if validate_only {
                println!(
                    "topic {} could be created ({} partitions)",
                    created.name,
                    created.partitions.len()
                );
            } else {
                println!(
                    "created topic {} ({} partitions)",
                    created.name,
                    created.partitions.len()
                );
            }
        }
        TopicCommand::List { internal } => {
            let topics = admin.list_topics(internal).await?;
            if output == Output::Json {
                print_json(&json!(
                    topics
                        .iter()
                        .map(|t| json!({
                            "name": t.name, "id": t.id, "partitions": t.partitions,
                            "replication_factor": t.replication_factor,
                        }))
                        .collect::<Vec<_>>()
                ));
            } else {
                table(
                    &["NAME", "PARTITIONS", "REPLICAS", "ID"],
                    topics
                        .into_iter()
                        .map(|t| {
                            vec![
                                t.name,
                                t.partitions.to_string(),
                                t.replication_factor.to_string(),
                                t.id,
                            ]
                        })
                        .collect(),
                );
            }
        }
        TopicCommand::Describe { name } => {
            describe_topic(output, &admin.describe_topic(&name).await?)
        }
        TopicCommand::Alter { name, set, delete } => {
            if set.is_empty() && delete.is_empty() {
                return Err(usage("say what to change: --set KEY=VALUE or --delete KEY"));
            }
            let set: Vec<(&str, &str)> =
                set.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let delete: Vec<&str> = delete.iter().map(String::as_str).collect();
            let altered = admin.alter_topic_configs(&name, &set, &delete).await?;
            describe_topic(output, &altered);
        }
        TopicCommand::AddPartitions { name, total } => {
            let grown = admin.add_partitions(&name, total).await?;
            if output == Output::Json {
                print_json(&json!({"name": grown.name, "partitions": grown.partitions.len()}));
            } else {
                println!(
                    "topic {} now has {} partitions",
                    grown.name,
                    grown.partitions.len()
                );
            }
        }
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await?;
            if output == Output::Json {
                print_json(&json!({"deleted": name}));
            } else {
                println!("deleted topic {name}");
            }
        }
    }
    Ok(())
}

/// A record from one line of input.
fn parse_line(args: &ProduceArgs, line: &str) -> Result<Record, Failure> {
    parse_record(
        args.format,
        args.key_separator.as_deref(),
        &args.headers,
        line,
    )
}

/// A record from one line of input, in `format`, with `headers` added.
pub(crate) fn parse_record(
    format: Format,
    key_separator: Option<&str>,
    headers: &[(String, String)],
    line: &str,
) -> Result<Record, Failure> {
    let mut record = match format {
        Format::Text => match key_separator {
            Some(separator) => match line.split_once(separator) {
                Some((key, value)) => Record::new(value).key(key),
                None => Record::new(line),
            },
            None => Record::new(line),
        },
        Format::Json => {
            let value: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| usage(format!("not a JSON object: {e}: {line}")))?;
            let object = value
                .as_object()
                .ok_or_else(|| usage(format!("not a JSON object: {line}")))?;
            let text = |field: &str| -> Option<Vec<u8>> {
                object.get(field).and_then(|v| match v {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some(s.as_bytes().to_vec()),
                    other => Some(other.to_string().into_bytes()),
                })
            };
            let mut record = Record {
                key: text("key"),
                value: text("value"),
                ..Record::default()
            };
            if let Some(headers) = object.get("headers").and_then(|h| h.as_object()) {
                for (key, value) in headers {
                    let value = value
                        .as_str()
                        .map_or_else(|| value.to_string(), str::to_string);
                    record = record.header(key.clone(), value);
                }
            }
            if let Some(timestamp) = object.get("timestamp_ms").and_then(|t| t.as_i64()) {
                record = record.timestamp_ms(timestamp);
            }
            record
        }
    };
    for (key, value) in headers {
        record = record.header(key.clone(), value.clone());
    }
    Ok(record)
}

async fn produce(args: ProduceArgs) -> Result<(), Failure> {
    let client = connect(&args.connection).await?;
    let producer = client.producer_with(ProducerConfig {
        acks: match args.acks {
            AcksArg::All => Acks::All,
            AcksArg::Leader => Acks::Leader,
        },
        ..ProducerConfig::default()
    });
    // Lines are read on a thread of their own (stdin blocks) and queued in order; the
    // deliveries are awaited in that order too.
    let (lines, mut incoming) = tokio::sync::mpsc::channel::<std::io::Result<String>>(1024);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if lines.blocking_send(line).is_err() {
                return;
            }
        }
    });
    let (deliveries, mut acknowledged) = tokio::sync::mpsc::channel(100_000);
    let topic = args.topic.clone();
    let output = args.connection.output;
    let printer = tokio::spawn(async move {
        let mut count = 0u64;
        let mut stdout = std::io::BufWriter::new(std::io::stdout());
        while let Some(delivery) = acknowledged.recv().await {
            let delivery: runnel_client::Delivery = delivery;
            let position = delivery.await?;
            count += 1;
            if output == Output::Json {
                let _ = writeln!(
                    stdout,
                    "{}",
                    json!({"topic": topic, "partition": position.partition, "offset": position.offset})
                );
            }
        }
        let _ = stdout.flush();
        Ok::<u64, Error>(count)
    });
    while let Some(line) = incoming.recv().await {
        let line = line?;
        if line.is_empty() && args.format == Format::Json {
            continue;
        }
        let record = parse_line(&args, &line)?;
        let delivery = producer
            .enqueue_to(&args.topic, args.partition, record)
            .await;
        if deliveries.send(delivery).await.is_err() {
            break;
        }
    }
    drop(deliveries);
    producer.flush().await;
    let count = printer.await.map_err(|e| Failure {
        message: e.to_string(),
        code: 1,
    })??;
    if output == Output::Table {
        eprintln!("produced {count} records to {}", args.topic);
    }
    Ok(())
}

fn print_record(
    args: &ConsumeArgs,
    record: &ConsumedRecord,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let text = |bytes: &Option<Vec<u8>>| {
        bytes
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    match args.format {
        Format::Text => {
            let value = text(&record.value).unwrap_or_default();
            match &args.key_separator {
                Some(separator) => {
                    writeln!(
                        out,
                        "{}{separator}{value}",
                        text(&record.key).unwrap_or_default()
                    )
                }
                None => writeln!(out, "{value}"),
            }
        }
        Format::Json => {
            let headers: serde_json::Map<String, serde_json::Value> = record
                .headers
                .iter()
                .map(|h| (h.key.clone(), json!(String::from_utf8_lossy(&h.value))))
                .collect();
            writeln!(
                out,
                "{}",
                json!({
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                    "timestamp_ms": record.timestamp_ms,
                    "key": text(&record.key),
                    "value": text(&record.value),
                    "headers": headers,
                })
            )
        }
    }
}

async fn consume(args: ConsumeArgs) -> Result<(), Failure> {
    let client = connect(&args.connection).await?;
    if let Some(group) = &args.group {
        return consume_in_group(&client, group, &args).await;
    }
    let start = match (args.offset, args.from_beginning) {
        (Some(offset), _) => Start::Offset(offset),
        (None, true) => Start::Earliest,
        (None, false) => Start::Latest,
    };
    let records = client
        .subscribe_partitions(&args.topic, &args.partitions, start)
        .await?;
    tokio::pin!(records);
    let mut printed = 0u64;
    let mut stdout = std::io::stdout();
    loop {
        let next = tokio::select! {
            next = records.next() => next,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(record) = next else { break };
        print_record(&args, &record?, &mut stdout)?;
        printed += 1;
        if args.count.is_some_and(|count| printed >= count) {
            break;
        }
    }
    stdout.flush()?;
    Ok(())
}

/// `consume --group`: one member of the group, committing each record once printed.
async fn consume_in_group(client: &Client, group: &str, args: &ConsumeArgs) -> Result<(), Failure> {
    let mut member = client
        .subscribe_group(group, &[args.topic.as_str()], Reset::Earliest)
        .await?;
    let mut printed = 0u64;
    let mut stdout = std::io::stdout();
    loop {
        let next = tokio::select! {
            next = member.next() => next,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(event) = next else { break };
        let GroupEvent::Record(record) = event? else {
            continue;
        };
        print_record(args, &record, &mut stdout)?;
        printed += 1;
        // What was printed is consumed: the group resumes after it.
        member
            .commit(&record.topic, &[(record.partition, record.offset + 1)])
            .await?;
        if args.count.is_some_and(|count| printed >= count) {
            break;
        }
    }
    stdout.flush()?;
    Ok(())
}

async fn group(args: GroupArgs) -> Result<(), Failure> {
    let client = connect(&args.connection).await?;
    let admin = client.admin();
    let output = args.connection.output;
    let describe = |group: runnel_client::admin::GroupDescription| {
        if output == Output::Json {
            print_json(&json!({
                "name": group.name, "state": group.state, "type": group.r#type,
                "members": group.members.iter().map(|m| json!({
                    "member_id": m.member_id, "instance_id": m.instance_id,
                    "client_id": m.client_id, "assignment": m.assignment,
                })).collect::<Vec<_>>(),
                "offsets": group.offsets.iter().map(|o| json!({
                    "topic": o.topic, "partition": o.partition,
                    "committed_offset": o.committed_offset,
                    "log_end_offset": o.log_end_offset, "lag": o.lag,
                })).collect::<Vec<_>>(),
            }));
            return;
        }
        println!(
            "{} ({} group, {}, {} members)\n",
            group.name,
            group.r#type,
            group.state,
            group.members.len()
        );
        table(
            &["TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG"],
            group
                .offsets
                .iter()
                .map(|o| {
                    vec![
                        o.topic.clone(),
                        o.partition.to_string(),
                        o.committed_offset.to_string(),
                        optional(o.log_end_offset),
                        optional(o.lag),
                    ]
                })
                .collect(),
        );
        if !group.members.is_empty() {
            println!();
            table(
                &["MEMBER", "CLIENT", "ASSIGNMENT"],
                group
                    .members
                    .iter()
                    .map(|m| {
                        vec![
                            m.member_id.clone(),
                            m.client_id.clone(),
                            m.assignment.join(","),
                        ]
                    })
                    .collect(),
            );
        }
    };
    match args.command {
        GroupCommand::List => {
            let groups = admin.list_groups().await?;
            if output == Output::Json {
                print_json(&json!(
                    groups
                        .iter()
                        .map(|g| json!({
                            "name": g.name, "state": g.state, "type": g.r#type,
                        }))
                        .collect::<Vec<_>>()
                ));
            } else {
                table(
                    &["NAME", "STATE", "TYPE"],
                    groups
                        .into_iter()
                        .map(|g| vec![g.name, g.state, g.r#type])
                        .collect(),
                );
            }
        }
        GroupCommand::Describe { name } => describe(admin.describe_group(&name).await?),
        GroupCommand::ResetOffsets {
            name,
            topic,
            partitions,
            to_earliest,
            to_latest,
            to_timestamp,
            to_offset,
        } => {
            let to = match (to_earliest, to_latest, to_timestamp, to_offset) {
                (true, _, _, _) => ResetTo::Earliest(true),
                (_, true, _, _) => ResetTo::Latest(true),
                (_, _, Some(ms), _) => ResetTo::TimestampMs(ms),
                (_, _, _, Some(offset)) => ResetTo::Offset(offset),
                _ => {
                    return Err(usage(
                        "say where to: --to-earliest, --to-latest, --to-timestamp MS or --to-offset N",
                    ));
                }
            };
            describe(
                admin
                    .reset_group_offsets(&name, &topic, &partitions, to)
                    .await?,
            );
        }
        GroupCommand::Delete { name } => {
            admin.delete_group(&name).await?;
            if output == Output::Json {
                print_json(&json!({"deleted": name}));
            } else {
                println!("deleted group {name}");
            }
        }
    }
    Ok(())
}

async fn cluster(args: ClusterArgs) -> Result<(), Failure> {
    let client = connect(&args.connection).await?;
    let ClusterCommand::Info = args.command;
    let info = client.admin().cluster_info().await?;
    if args.connection.output == Output::Json {
        print_json(&json!({
            "cluster_id": info.cluster_id, "version": info.version, "node_id": info.node_id,
            "controller_leader": info.controller_leader,
            "nodes": info.nodes.iter().map(|n| json!({
                "id": n.id, "kafka": n.kafka_address, "grpc": n.grpc_address, "alive": n.alive,
            })).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    println!(
        "cluster {}, runnel {} (answered by node {}, controller leader {})\n",
        info.cluster_id,
        info.version,
        info.node_id,
        optional(info.controller_leader)
    );
    table(
        &["NODE", "KAFKA", "GRPC", "ALIVE"],
        info.nodes
            .into_iter()
            .map(|n| {
                vec![
                    n.id.to_string(),
                    n.kafka_address,
                    n.grpc_address,
                    n.alive.to_string(),
                ]
            })
            .collect(),
    );
    Ok(())
}
