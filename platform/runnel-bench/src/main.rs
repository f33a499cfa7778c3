//! runnel-bench: load generators that print a report.
//!
//! `runnel-bench kafka` (see [`kafka`]) drives a real node through the Kafka protocol with
//! librdkafka; `runnel-bench grpc` (see [`grpc`]) runs the same workload through the gRPC
//! API beside it. `runnel-bench functions` (see [`functions`]) measures the Wasm boundary.
//! `runnel-bench tier` (see [`tier`]) measures tiered storage against the local log.
//!
//! `runnel-bench log` measures the partition log against the disk itself: it appends the
//! same bytes (1 KiB records in batches of 16 KiB and 1 MiB) to a `PartitionLog` and, in the
//! same run, to a plain file with sequential `write()` + `fdatasync()`, with an fsync per
//! batch and with an fsync per interval, then reads both back. It prints MB/s for each case
//! and the log/raw ratio.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::BytesMut;
use clap::{Parser, Subcommand};
use runnel_config::TopicConfig;
use runnel_log::{BatchBuilder, LogMetrics, NewRecord, PartitionLog};

mod functions;
mod grpc;
mod kafka;
mod replication;
mod tier;

#[derive(Parser)]
#[command(
    name = "runnel-bench",
    version,
    about = "Runnel benchmarks; each prints a report"
)]
struct Cli {
    #[command(subcommand)]
    command: Benchmark,
}

#[derive(Subcommand)]
enum Benchmark {
    /// The partition log against plain sequential writes to a file.
    Log {
        /// Bytes to write in each case, in MiB.
        #[arg(long, default_value_t = 1024)]
        mib: u64,
        /// Where to put the data (a directory on the disk to measure); a temporary
        /// directory under it is removed afterwards.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The fsync interval of the "per interval" cases, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Runs of each case, alternating whether the log or the raw file goes first (the
        /// disk favours whichever writes first); the report shows every run and, in the
        /// `all` row, total bytes over total time of each side.
        #[arg(long, default_value_t = 2)]
        runs: usize,
        /// Seconds to wait (after a `sync`) before each side, so neither pays for the
        /// other's writeback.
        #[arg(long, default_value_t = 2)]
        settle_seconds: u64,
        /// Batch sizes to measure, in KiB.
        #[arg(long, value_delimiter = ',', default_value = "16,1024")]
        batch_kib: Vec<usize>,
    },
    /// Produce and consume through the Kafka protocol (librdkafka) against a `runnel dev`
    /// node started for the run, beside the disk's raw sequential-write speed.
    Kafka(kafka::KafkaOptions),
    /// The Kafka benchmark's workload through the gRPC API (ProduceStream and Subscribe,
    /// with runnel-client) and through the Kafka protocol, side by side in one run.
    Grpc(kafka::KafkaOptions),
    /// The Wasm boundary: batches through a transform component against the same work
    /// done natively, in one run.
    Functions(functions::FunctionsOptions),
    /// Tiered storage on the same data in one run: upload MB/s, cold reads (row groups
    /// fetched and rebuilt) and cached reads against hot reads of the local log, and the
    /// Parquet size against the segments'.
    Tier(tier::TierOptions),
    /// What replication costs a producer: acks=all to a topic with one replica and to one
    /// with three, on a cluster of three nodes started on this machine, in one run.
    Replication(replication::ReplicationOptions),
}

const RECORD_BYTES: usize = 1024;

#[derive(Clone, Copy)]
enum Sync {
    PerBatch,
    Interval(Duration),
}

impl std::fmt::Display for Sync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sync::PerBatch => f.write_str("fsync per batch"),
            Sync::Interval(d) => write!(f, "fsync every {} ms", d.as_millis()),
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Benchmark::Log {
            mib,
            dir,
            interval_ms,
            runs,
            settle_seconds,
            batch_kib,
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let options = LogOptions {
                total: mib << 20,
                interval: Duration::from_millis(interval_ms),
                runs: runs.max(1),
                settle: Duration::from_secs(settle_seconds),
                batch_sizes: batch_kib.iter().map(|kib| kib << 10).collect(),
            };
            runtime.block_on(log_benchmark(&options, &dir))
        }
        Benchmark::Kafka(options) => kafka::run(&options, &[kafka::Protocol::Kafka]),
        Benchmark::Functions(options) => functions::run(&options),
        Benchmark::Tier(options) => tier::run(&options),
        Benchmark::Replication(options) => replication::run(&options),
        Benchmark::Grpc(options) => {
            kafka::run(&options, &[kafka::Protocol::Kafka, kafka::Protocol::Grpc])
        }
    }
}

/// Batches of about `batch_bytes` holding 1 KiB records; a few distinct ones to cycle.
fn batches(batch_bytes: usize) -> Result<Vec<BytesMut>> {
    let per_batch = (batch_bytes / RECORD_BYTES).max(1);
    let mut out = Vec::new();
    for variant in 0..8u8 {
        let records: Vec<NewRecord> = (0..per_batch)
            .map(|i| NewRecord {
                timestamp: 1_700_000_000_000 + i as i64,
                key: Some(format!("key-{i}").into_bytes()),
                // 1 KiB on disk with the record's own overhead.
                value: Some(vec![b'a' + variant; RECORD_BYTES - 20]),
                headers: Vec::new(),
            })
            .collect();
        out.push(BatchBuilder::default().build(&records)?);
    }
    Ok(out)
}

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e6
}

struct LogOptions {
    total: u64,
    interval: Duration,
    runs: usize,
    settle: Duration,
    batch_sizes: Vec<usize>,
}

/// One run of one case: write and read rates of the log and of the raw file, in MB/s.
#[derive(Clone, Copy)]
struct Rates {
    log_write: f64,
    raw_write: f64,
    log_read: f64,
    raw_read: f64,
}

fn print_row(batch_bytes: usize, sync: Sync, label: &str, rates: &Rates) {
    let batch = if batch_bytes >= 1 << 20 {
        format!("{} MiB", batch_bytes >> 20)
    } else {
        format!("{} KiB", batch_bytes >> 10)
    };
    println!(
        "{:<9} {:<20} {:<7} {:>10.1} {:>10.1} {:>6.0}% {:>10.1} {:>10.1}",
        batch,
        sync.to_string(),
        label,
        rates.log_write,
        rates.raw_write,
        rates.log_write / rates.raw_write * 100.0,
        rates.log_read,
        rates.raw_read
    );
}

/// Total bytes over total time, for runs that each moved the same number of bytes: the
/// harmonic mean of their rates.
fn overall(rates: impl Iterator<Item = f64>) -> f64 {
    let (count, inverse_sum) = rates.fold((0.0, 0.0), |(n, sum), rate| (n + 1.0, sum + 1.0 / rate));
    count / inverse_sum
}

/// Lets the disk finish the previous side's writeback before the next side starts.
fn settle(pause: Duration) {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::thread::sleep(pause);
}

async fn log_benchmark(options: &LogOptions, parent: &Path) -> Result<()> {
    let scratch = tempfile_in(parent)?;
    println!(
        "runnel-bench log: {} MiB per case and run, 1 KiB records, {} run(s), in {}",
        options.total >> 20,
        options.runs,
        scratch.display()
    );
    println!(
        "{:<9} {:<20} {:<7} {:>10} {:>10} {:>7} {:>10} {:>10}",
        "batch", "durability", "run", "log MB/s", "raw MB/s", "ratio", "log read", "raw read"
    );
    for &batch_bytes in &options.batch_sizes {
        let batches = batches(batch_bytes)?;
        for sync in [Sync::PerBatch, Sync::Interval(options.interval)] {
            let mut all = Vec::new();
            for run in 0..options.runs {
                let case = scratch.join(format!("case-{batch_bytes}-{run}"));
                std::fs::create_dir_all(&case)?;
                let total = options.total;
                // Alternate which goes first, so neither always inherits the other's
                // writeback or a cold disk.
                let ((raw_write, raw_read), (log_write, log_read)) = if run % 2 == 1 {
                    settle(options.settle);
                    let log = log(&case.join("log"), &batches, total, sync).await?;
                    settle(options.settle);
                    (raw_file(&case.join("raw"), &batches, total, sync)?, log)
                } else {
                    settle(options.settle);
                    let raw = raw_file(&case.join("raw"), &batches, total, sync)?;
                    settle(options.settle);
                    (raw, log(&case.join("log"), &batches, total, sync).await?)
                };
                std::fs::remove_dir_all(&case)?;
                let rates = Rates {
                    log_write,
                    raw_write,
                    log_read,
                    raw_read,
                };
                if options.runs > 1 {
                    print_row(batch_bytes, sync, &format!("{}", run + 1), &rates);
                }
                all.push(rates);
            }
            let pick = |field: fn(&Rates) -> f64| overall(all.iter().map(field));
            let totals = Rates {
                log_write: pick(|r| r.log_write),
                raw_write: pick(|r| r.raw_write),
                log_read: pick(|r| r.log_read),
                raw_read: pick(|r| r.raw_read),
            };
            print_row(
                batch_bytes,
                sync,
                if options.runs > 1 { "all" } else { "1" },
                &totals,
            );
        }
    }
    std::fs::remove_dir_all(&scratch)?;
    Ok(())
}

fn tempfile_in(parent: &Path) -> Result<PathBuf> {
    let dir = parent.join(format!("runnel-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

/// Sequential write() of the same batches to one file, fdatasync per batch or per interval;
/// then a sequential read in 1 MiB chunks. Returns (write MB/s, read MB/s).
fn raw_file(path: &Path, batches: &[BytesMut], total: u64, sync: Sync) -> Result<(f64, f64)> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o644)
        .open(path)?;
    let started = Instant::now();
    let mut written = 0u64;
    let mut last_sync = Instant::now();
    let mut i = 0;
    while written < total {
        let batch = &batches[i % batches.len()];
        file.write_all(batch)?;
        written += batch.len() as u64;
        i += 1;
        match sync {
            Sync::PerBatch => file.sync_data()?,
            Sync::Interval(every) if last_sync.elapsed() >= every => {
                file.sync_data()?;
                last_sync = Instant::now();
            }
            Sync::Interval(_) => {}
        }
    }
    file.sync_data()?;
    let write = mb_per_s(written, started.elapsed());
    drop(file);

    let mut file = File::open(path)?;
    let mut buffer = vec![0u8; 1 << 20];
    let started = Instant::now();
    let mut read = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        read += n as u64;
    }
    Ok((write, mb_per_s(read, started.elapsed())))
}

/// The same bytes through the partition log: one producer, each append waiting for its
/// fsync (per batch) or for the write only (per interval, `flush.ms`). Then a sequential
/// read of everything in 1 MiB fetches. Returns (write MB/s, read MB/s).
async fn log(dir: &Path, batches: &[BytesMut], total: u64, sync: Sync) -> Result<(f64, f64)> {
    let mut config = TopicConfig::default();
    if let Sync::Interval(every) = sync {
        config.flush_ms = Some(every.as_millis() as u64);
    }
    let log = Arc::new(PartitionLog::open(dir, config, Arc::new(LogMetrics::default())).await?);
    // Batches are prepared (copied into fresh buffers) on another thread, as a network
    // reader would hand them over, so the copy is not on the log's critical path.
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<BytesMut>(4);
    let templates = batches.to_vec();
    let producer = std::thread::spawn(move || {
        let mut prepared = 0u64;
        let mut i = 0;
        while prepared < total {
            let batch = templates[i % templates.len()].clone();
            prepared += batch.len() as u64;
            i += 1;
            if sender.blocking_send(batch).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut written = 0u64;
    while let Some(batch) = receiver.recv().await {
        written += batch.len() as u64;
        match sync {
            Sync::PerBatch => log.append_durable(batch).await?,
            Sync::Interval(_) => log.append(batch).await?,
        };
    }
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("batch producer panicked"))?;
    log.sync().await?;
    let write = mb_per_s(written, started.elapsed());

    let started = Instant::now();
    let mut offset = 0;
    let mut read = 0u64;
    while offset < log.high_watermark() {
        let result = log.read(offset, 1 << 20).await?;
        read += result.records.len() as u64;
        let last = runnel_log::batch::batch_positions(&result.records)
            .last()
            .map(|(_, header)| header.last_offset() as u64)
            .context("a read returned no whole batch")?;
        offset = last + 1;
    }
    let read_rate = mb_per_s(read, started.elapsed());
    log.close().await?;
    Ok((write, read_rate))
}
