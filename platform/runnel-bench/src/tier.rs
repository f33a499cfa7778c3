//! `runnel-bench tier`: tiered storage against the local log, on the same data in one run.
//!
//! It fills a partition log with JSON-like records (sealed into segments), then measures:
//! - upload: every sealed segment encoded as Parquet and put into the object store (a
//!   directory unless `--tier-url` names an S3 store), with its manifest versions;
//! - a first cold pass through a new tier reader and cache, as a node's first cold reads:
//!   each row group fetched and rebuilt, into buffers that are fresh memory;
//! - then `--rounds` rounds of three passes over the same offsets:
//!   - hot: the log read back through `PartitionLog::read` in fetch-sized pieces, from
//!     the page cache (warmed by one pass before the rounds);
//!   - cold: the caches in memory and on disk emptied (`TierCache::clear`, which keeps
//!     the rebuild buffers, as a running node has them), then every row group fetched
//!     from the store and rebuilt;
//!   - cached: the same reads again.
//!
//! It prints the median MB/s and records/s of each kind with the range over the rounds,
//! cold and cached against hot, and the Parquet bytes against the segment bytes. The
//! rounds interleave the kinds, so a machine busier during one round slows all three.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use runnel_config::TopicConfig;
use runnel_log::batch::batch_positions;
use runnel_log::{BatchBuilder, LogMetrics, NewRecord, PartitionLog};
use runnel_tier::{
    Manifest, PartitionPaths, ReadMetrics, StoreConfig, TierCache, TierMetrics, TierReader,
    UploadTarget, Uploader,
};

#[derive(clap::Args)]
pub struct TierOptions {
    /// Bytes of records to write, in MiB.
    #[arg(long, default_value_t = 256)]
    mib: u64,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1000)]
    value_bytes: usize,
    /// `segment.bytes` of the partition, in MiB.
    #[arg(long, default_value_t = 32)]
    segment_mib: u64,
    /// Bytes asked for by each read (a Kafka fetch's partition maximum).
    #[arg(long, default_value_t = 1 << 20)]
    fetch_bytes: usize,
    /// Where to put the log, the cache and (without `--tier-url`) the object store; a
    /// temporary directory under it is removed afterwards.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// An object store other than the directory: `s3://bucket/prefix` (credentials from
    /// the usual AWS variables) with `--tier-endpoint`.
    #[arg(long, default_value = "")]
    tier_url: String,
    #[arg(long)]
    tier_endpoint: Option<String>,
    /// Rounds of reads, each a hot pass, a cold pass with new, empty caches and a cached
    /// pass; the medians are printed.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

pub fn run(options: &TierOptions) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(benchmark(options))
}

/// What one pass read.
struct Pass {
    bytes: u64,
    records: u64,
    elapsed: Duration,
}

impl Pass {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }

    fn records_per_s(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
}

async fn benchmark(options: &TierOptions) -> Result<()> {
    std::fs::create_dir_all(&options.dir)?;
    let scratch = tempfile::Builder::new()
        .prefix("runnel-bench-tier-")
        .tempdir_in(&options.dir)
        .context("create the scratch directory")?;
    let config = TopicConfig {
        segment_bytes: options.segment_mib << 20,
        remote_storage_enable: true,
        ..TopicConfig::default()
    };
    let log = Arc::new(
        PartitionLog::open(
            scratch.path().join("partitions/bench-0"),
            config,
            Arc::new(LogMetrics::default()),
        )
        .await?,
    );
    // A tiered partition opened empty waits for its remote before taking appends.
    log.set_remote(runnel_log::Remote {
        start: 0,
        end: 0,
        reader: Arc::new(Nothing),
    })
    .await?;
    let total = options.mib << 20;
    let mut written = 0u64;
    let mut sequence = 0u64;
    while written < total {
        let batch = json_batch(&mut sequence, options.value_bytes, 64 << 10)?;
        written += batch.len() as u64;
        log.append(batch).await?;
    }
    log.roll().await?;
    let end = log.high_watermark();

    let store_config = StoreConfig {
        url: options.tier_url.clone(),
        default_dir: scratch.path().join("objects"),
        endpoint: options.tier_endpoint.clone(),
        allow_http: true,
        request_timeout: Duration::from_secs(120),
        ..StoreConfig::default()
    };
    let store = runnel_tier::open_store(&store_config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    // Warm the page cache for the hot passes.
    read_log(&log, end, options.fetch_bytes).await?;

    // Upload every sealed segment.
    let metrics = Arc::new(TierMetrics::default());
    let cache = Arc::new(
        TierCache::open(
            scratch.path().join("upload-cache"),
            0,
            Arc::new(ReadMetrics::default()),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let uploader = Uploader::new(store.store.clone(), "", metrics.clone(), cache);
    let target = UploadTarget {
        topic: "bench".to_string(),
        partition: 0,
        log: log.clone(),
        leader_epoch: 0,
    };
    let started = Instant::now();
    let segments = uploader
        .upload_ready(&target)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let upload_elapsed = started.elapsed();
    let segment_bytes = metrics
        .uploaded_segment_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    let parquet_bytes = metrics
        .uploaded_bytes
        .load(std::sync::atomic::Ordering::Relaxed);

    // One reader with one cache, as a node has. Its first pass is the node's first cold
    // read: the rebuild buffers are fresh memory. Then rounds of a hot pass, a cold pass
    // (the caches in memory and on disk emptied first, their buffers kept) and a cached
    // pass (the same reads again), so that each round compares the three under the same
    // conditions of the machine.
    let manifest = Arc::new(
        Manifest::load(&store.store, &PartitionPaths::new("", "bench", 0))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .context("no manifest after the upload")?,
    );
    let uploaded_end = manifest.uploaded_end();
    let read_metrics = Arc::new(ReadMetrics::default());
    let cache = Arc::new(
        TierCache::open(
            scratch.path().join("tier-cache"),
            u64::MAX,
            read_metrics.clone(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let reader = TierReader::new(store.store.clone(), manifest.clone(), cache.clone());
    let first = read_tier(&reader, uploaded_end, options.fetch_bytes).await?;
    let fetched = read_metrics
        .fetched_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    let (mut hot, mut cold, mut cached) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..options.rounds.max(1) {
        hot.push(read_log(&log, end, options.fetch_bytes).await?);
        cache.clear().await;
        cold.push(read_tier(&reader, uploaded_end, options.fetch_bytes).await?);
        cached.push(read_tier(&reader, uploaded_end, options.fetch_bytes).await?);
    }
    let ranges = [range(&hot), range(&cold), range(&cached)];
    let (hot, cold, cached) = (median(hot), median(cold), median(cached));

    println!(
        "tiered storage: {} MiB of {}-byte values in {} MiB segments, {} records; store: {}",
        options.mib, options.value_bytes, options.segment_mib, end, store.description
    );
    println!(
        "  reads: the median of {} rounds of hot, cold and cached passes",
        options.rounds.max(1)
    );
    println!(
        "  upload        {:>8.1} MB/s of segments  ({segments} segments, {:.1} s)",
        segment_bytes as f64 / upload_elapsed.as_secs_f64() / 1e6,
        upload_elapsed.as_secs_f64()
    );
    println!(
        "  parquet size  {:>8.1} MB for {:.1} MB of segments ({:.1}%)",
        parquet_bytes as f64 / 1e6,
        segment_bytes as f64 / 1e6,
        100.0 * parquet_bytes as f64 / segment_bytes.max(1) as f64
    );
    for ((name, pass), (slowest, fastest)) in [
        ("hot read", &hot),
        ("cold read", &cold),
        ("cached read", &cached),
    ]
    .into_iter()
    .zip(ranges)
    {
        println!(
            "  {name:<13} {:>8.1} MB/s  {:>10.0} records/s  ({:.0}% of hot; {slowest:.0}–{fastest:.0} MB/s)",
            pass.mb_per_s(),
            pass.records_per_s(),
            100.0 * pass.mb_per_s() / hot.mb_per_s()
        );
    }
    println!(
        "  first cold    {:>8.1} MB/s  {:>10.0} records/s  ({:.0}% of hot; the node's first, into fresh memory)",
        first.mb_per_s(),
        first.records_per_s(),
        100.0 * first.mb_per_s() / hot.mb_per_s()
    );
    println!(
        "  a cold pass fetched {:.1} MB of row groups from the store",
        fetched as f64 / 1e6
    );
    Ok(())
}

/// The slowest and fastest MB/s of `passes`.
fn range(passes: &[Pass]) -> (f64, f64) {
    passes.iter().fold((f64::MAX, 0.0), |(low, high), pass| {
        (low.min(pass.mb_per_s()), high.max(pass.mb_per_s()))
    })
}

/// The pass of median speed.
fn median(mut passes: Vec<Pass>) -> Pass {
    passes.sort_by(|a, b| a.mb_per_s().total_cmp(&b.mb_per_s()));
    passes.swap_remove(passes.len() / 2)
}

/// A remote holding nothing, attached so the empty tiered log takes appends.
struct Nothing;

impl runnel_log::RemoteLog for Nothing {
    fn read(&self, _: u64, _: usize, _: bool) -> runnel_log::RemoteRead {
        Box::pin(async { Ok(bytes::Bytes::new()) })
    }

    fn find_timestamp(&self, _: i64) -> runnel_log::RemoteFind {
        Box::pin(async { Ok(None) })
    }
}

/// Records like an order event in JSON: about `value_bytes` each, in batches of about
/// `batch_bytes`.
fn json_batch(
    sequence: &mut u64,
    value_bytes: usize,
    batch_bytes: usize,
) -> Result<bytes::BytesMut> {
    let count = (batch_bytes / (value_bytes + 40)).max(1);
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        let n = *sequence;
        *sequence += 1;
        // A cheap mix, so values differ the way real ones do.
        let mix = n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
        let mut value = format!(
            "{{\"order\":{n},\"customer\":\"c-{}\",\"amount\":{}.{:02},\"currency\":\"{}\",\"token\":\"{mix:016x}\",\"note\":\"",
            mix % 50_000,
            mix % 10_000,
            mix % 100,
            ["BRL", "USD", "EUR"][(mix % 3) as usize]
        );
        while value.len() + 2 < value_bytes {
            value.push_str(
                ["lorem ", "ipsum ", "dolor ", "sit ", "amet "][(value.len() + n as usize) % 5],
            );
        }
        value.truncate(value_bytes.saturating_sub(2));
        value.push_str("\"}");
        records.push(NewRecord {
            timestamp: 1_700_000_000_000 + n as i64,
            key: Some(format!("c-{}", mix % 50_000).into_bytes()),
            value: Some(value.into_bytes()),
            headers: Vec::new(),
        });
    }
    Ok(BatchBuilder::default().build(&records)?)
}

/// The record count of whole batches, and the offset after the last.
fn count(batches: &[u8]) -> (u64, Option<u64>) {
    let mut records = 0;
    let mut next = None;
    for (_, header) in batch_positions(batches) {
        records += header.records_count as u64;
        next = Some(header.last_offset() as u64 + 1);
    }
    (records, next)
}

async fn read_log(log: &PartitionLog, end: u64, fetch_bytes: usize) -> Result<Pass> {
    let started = Instant::now();
    let (mut offset, mut bytes, mut records) = (0, 0u64, 0u64);
    while offset < end {
        let read = log.read(offset, fetch_bytes).await?;
        let (n, next) = count(&read.records);
        offset = next.context("a log read returned nothing before the end")?;
        bytes += read.records.len() as u64;
        records += n;
    }
    Ok(Pass {
        bytes,
        records,
        elapsed: started.elapsed(),
    })
}

async fn read_tier(reader: &TierReader, end: u64, fetch_bytes: usize) -> Result<Pass> {
    let started = Instant::now();
    let (mut offset, mut bytes, mut records) = (0, 0u64, 0u64);
    while offset < end {
        let read = reader
            .read(offset, fetch_bytes, true)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (n, next) = count(&read);
        offset = next.context("a tier read returned nothing before the end")?;
        bytes += read.len() as u64;
        records += n;
    }
    Ok(Pass {
        bytes,
        records,
        elapsed: started.elapsed(),
    })
}
