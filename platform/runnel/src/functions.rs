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

use crate::client::{Failure, Format, key_value, parse_record, usage};

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

pub fn run(args: FnArgs) -> Result<(), Failure> {
    match args.command {
        FnCommand::Run(args) => run_locally(args),
    }
}

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
    let config: BTreeMap<String, String> = args.configs.iter().cloned().collect();
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
