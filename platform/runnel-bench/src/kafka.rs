//! `runnel-bench kafka`: produce and consume through the Kafka protocol with librdkafka
//! against a real `runnel dev` node, beside the raw sequential-write speed of the same
//! disk measured in the same run. `runnel-bench grpc` runs the same workload through the
//! gRPC API as well (see [`crate::grpc`]), each case on both protocols in turn.
//!
//! Cases: 1 KiB records and 100-byte records, 6 partitions, acks=all (each acknowledged
//! batch fsynced): records/s, MB/s and produce latency (send to acknowledgement) p50, p99,
//! p99.9; then consuming everything back from the beginning. Last, end-to-end latency
//! (send to receipt by a consumer) of 1 KiB records at half the measured produce rate,
//! with acks=all and with acks=1.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

#[derive(clap::Args)]
pub struct KafkaOptions {
    /// MiB of 1 KiB records to produce (and raw-write).
    #[arg(long, default_value_t = 1024)]
    pub mib: u64,
    /// 100-byte records to produce.
    #[arg(long, default_value_t = 5_000_000)]
    pub small_records: u64,
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Producer clients (threads, each with its own connection) in the throughput cases.
    #[arg(long, default_value_t = 1)]
    pub producers: u64,
    /// Seconds of each end-to-end latency run.
    #[arg(long, default_value_t = 20)]
    pub e2e_seconds: u64,
    /// Records per second of the end-to-end runs (default: half the measured 1 KiB produce
    /// rate).
    #[arg(long)]
    pub e2e_rate: Option<f64>,
    /// Where the node's data and the raw-disk file go (the disk to measure).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// The `runnel` binary; by default the one beside this program.
    #[arg(long)]
    pub runnel: Option<PathBuf>,
}

/// The protocols a run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// librdkafka over the Kafka protocol.
    Kafka,
    /// runnel-client over the gRPC API.
    Grpc,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Kafka => "kafka",
            Protocol::Grpc => "grpc",
        }
    }
}

pub fn run(options: &KafkaOptions, protocols: &[Protocol]) -> Result<()> {
    let work = crate::tempfile_in(&options.dir)?;
    let result = run_in(options, protocols, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn run_in(options: &KafkaOptions, protocols: &[Protocol], work: &Path) -> Result<()> {
    let total = options.mib << 20;
    let names: Vec<&str> = protocols.iter().map(|p| p.name()).collect();
    println!(
        "runnel-bench {}: librdkafka {} and runnel-client against runnel dev",
        names.join(" + "),
        rdkafka::util::get_rdkafka_version().1
    );
    println!("data in {}\n", work.display());

    // This VM's disk favours whoever writes first, so the raw figure is the mean of one
    // measurement before the produce cases and one after.
    let raw_before = raw_disk(work, total)?;
    let node = NodeProcess::start(options.runnel.as_deref(), work)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    let big = Case {
        topic: "bench-1k".to_string(),
        record_bytes: 1024,
        records: total / 1024,
    };
    let small = Case {
        topic: "bench-100".to_string(),
        record_bytes: 100,
        records: options.small_records,
    };
    let mut rows = Vec::new();
    for case in [&big, &small] {
        for &protocol in protocols {
            let case = Case {
                topic: format!("{}-{}", case.topic, protocol.name()),
                ..case.clone()
            };
            runtime.block_on(create_topic(&node.kafka, &case.topic, options.partitions))?;
            let (produced, consumed) = match protocol {
                Protocol::Kafka => (
                    produce(&node.kafka, &case, options.partitions, options.producers)?,
                    consume(&node.kafka, &case, options.partitions)?,
                ),
                Protocol::Grpc => (
                    runtime.block_on(crate::grpc::produce(
                        &node.grpc,
                        &case,
                        options.partitions,
                    ))?,
                    runtime.block_on(crate::grpc::consume(&node.grpc, &case))?,
                ),
            };
            rows.push((case, protocol, produced, consumed));
        }
    }
    let raw_after = raw_disk(work, total)?;
    let raw = (raw_before + raw_after) / 2.0;
    // Half the first protocol's 1 KiB rate, the same for every protocol.
    let rate = options.e2e_rate.unwrap_or(rows[0].2.records_per_s / 2.0);
    let duration = Duration::from_secs(options.e2e_seconds);
    let mut e2e = Vec::new();
    for &protocol in protocols {
        for acks in ["all", "1"] {
            let topic = format!("bench-e2e-acks-{acks}-{}", protocol.name());
            runtime.block_on(create_topic(&node.kafka, &topic, options.partitions))?;
            let measured = match protocol {
                Protocol::Kafka => end_to_end(
                    &node.kafka,
                    &topic,
                    options.partitions,
                    rate,
                    duration,
                    acks,
                )?,
                Protocol::Grpc => {
                    let acks = if acks == "all" {
                        runnel_client::Acks::All
                    } else {
                        runnel_client::Acks::Leader
                    };
                    runtime.block_on(crate::grpc::end_to_end(
                        &node.grpc,
                        &topic,
                        options.partitions,
                        rate,
                        duration,
                        acks,
                    ))?
                }
            };
            e2e.push((protocol, acks, measured));
        }
    }
    drop(node);
    let raw_sync = raw_sync_latency(
        work,
        rate * 1024.0,
        options.partitions,
        Duration::from_secs(options.e2e_seconds),
    )?;

    println!(
        "raw disk, sequential write of 1 MiB chunks, fdatasync each: {raw:.0} MB/s (before {raw_before:.0}, after {raw_after:.0})\n"
    );
    println!(
        "{:<9} {:<28} {:>12} {:>9} {:>9} {:>9} {:>10} {:>14} {:>9}",
        "protocol",
        "produce (acks=all)",
        "records/s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "consume rec/s",
        "MB/s"
    );
    for (case, protocol, produced, consumed) in &rows {
        println!(
            "{:<9} {:<28} {:>12.0} {:>9.1} {:>9.2} {:>9.2} {:>10.2} {:>14.0} {:>9.1}",
            protocol.name(),
            format!(
                "{} B records, {} partitions",
                case.record_bytes, options.partitions
            ),
            produced.records_per_s,
            produced.mb_per_s,
            ms(produced.latency.value_at_quantile(0.50)),
            ms(produced.latency.value_at_quantile(0.99)),
            ms(produced.latency.value_at_quantile(0.999)),
            consumed.records_per_s,
            consumed.mb_per_s,
        );
    }
    println!();
    for (case, protocol, produced, _) in rows.iter().filter(|row| row.0.record_bytes == 1024) {
        println!(
            "1 KiB produce vs raw disk ({}, {}): {:.1} / {raw:.1} MB/s = {:.0}%",
            protocol.name(),
            case.topic,
            produced.mb_per_s,
            100.0 * produced.mb_per_s / raw
        );
    }
    for (protocol, acks, measured) in &e2e {
        println!(
            "end to end ({}), 1 KiB records, acks={acks}, {:.0} records/s for {} s: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms ({} records)",
            protocol.name(),
            measured.rate,
            options.e2e_seconds,
            ms(measured.latency.value_at_quantile(0.50)),
            ms(measured.latency.value_at_quantile(0.99)),
            ms(measured.latency.value_at_quantile(0.999)),
            measured.latency.len()
        );
    }
    println!(
        "raw disk at the same byte rate, {} files, write then pipelined fdatasync: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms (the floor for acks=all)",
        options.partitions,
        ms(raw_sync.value_at_quantile(0.50)),
        ms(raw_sync.value_at_quantile(0.99)),
        ms(raw_sync.value_at_quantile(0.999)),
    );
    Ok(())
}

pub(crate) fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

#[derive(Clone)]
pub(crate) struct Case {
    pub topic: String,
    pub record_bytes: usize,
    pub records: u64,
}

/// Sequential 1 MiB writes with an fdatasync after each: the disk's durable write speed,
/// which acks=all produce is compared with.
fn raw_disk(dir: &Path, total: u64) -> Result<f64> {
    use std::io::Write;
    let path = dir.join("raw-disk");
    let mut file = std::fs::File::create(&path)?;
    let chunk = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    let mut written = 0;
    while written < total {
        file.write_all(&chunk)?;
        file.sync_data()?;
        written += chunk.len() as u64;
    }
    let rate = crate::mb_per_s(written, started.elapsed());
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

/// The disk's own floor for acks=all end-to-end latency: `partitions` files written at
/// `bytes_per_s` in all (each writer writes what is due every millisecond), each with a
/// syncer that fsyncs again as soon as the last fsync returns (the broker's pipelined group
/// commit); the latency of a write is from when it was due until an fsync covered it.
fn raw_sync_latency(
    dir: &Path,
    bytes_per_s: f64,
    partitions: i32,
    duration: Duration,
) -> Result<Histogram<u64>> {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    struct File {
        file: std::fs::File,
        written: AtomicU64,
        /// (end position of a write, when it was due), in order.
        pending: Mutex<std::collections::VecDeque<(u64, Instant)>>,
        done: AtomicBool,
    }
    let per_file = bytes_per_s / f64::from(partitions.max(1));
    let started = Instant::now();
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let mut threads = Vec::new();
    let mut paths = Vec::new();
    for partition in 0..partitions {
        let path = dir.join(format!("raw-sync-{partition}"));
        let file = Arc::new(File {
            file: std::fs::File::create(&path)?,
            written: AtomicU64::new(0),
            pending: Mutex::new(Default::default()),
            done: AtomicBool::new(false),
        });
        paths.push(path);
        let (syncing, latency) = (file.clone(), latency.clone());
        threads.push(std::thread::spawn(move || -> Result<()> {
            let mut synced = 0;
            loop {
                let written = syncing.written.load(Ordering::Acquire);
                if written == synced {
                    if syncing.done.load(Ordering::Acquire) {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_micros(50));
                    continue;
                }
                syncing.file.sync_data()?;
                synced = written;
                let now = Instant::now();
                let mut pending = syncing.pending.lock().unwrap();
                let mut latency = latency.lock().unwrap();
                while let Some(&(end, due)) = pending.front()
                    && end <= synced
                {
                    let _ = latency.record(((now - due).as_micros() as u64).max(1));
                    pending.pop_front();
                }
            }
        }));
        threads.push(std::thread::spawn(move || -> Result<()> {
            let buffer = vec![0x5au8; (per_file / 100.0) as usize + 4096];
            let mut position = 0u64;
            let mut tick = 0u32;
            while started.elapsed() < duration {
                tick += 1;
                let due = started + Duration::from_millis(u64::from(tick));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let owed = (per_file * due.duration_since(started).as_secs_f64()) as u64;
                let chunk = (owed.saturating_sub(position) as usize).min(buffer.len());
                if chunk == 0 {
                    continue;
                }
                file.file.write_all_at(&buffer[..chunk], position)?;
                position += chunk as u64;
                file.pending.lock().unwrap().push_back((position, due));
                file.written.store(position, Ordering::Release);
            }
            file.done.store(true, Ordering::Release);
            Ok(())
        }));
    }
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("a raw-disk thread panicked"))??;
    }
    for path in paths {
        std::fs::remove_file(path)?;
    }
    let latency = latency.lock().unwrap().clone();
    Ok(latency)
}

/// A `runnel dev` child process on free ports, killed on drop.
pub(crate) struct NodeProcess {
    child: Child,
    pub kafka: String,
    pub grpc: String,
}

impl NodeProcess {
    /// Starts `runnel dev` (by default the binary beside this program) with its data in
    /// `work`, and waits until it is ready.
    pub(crate) fn start(runnel: Option<&Path>, work: &Path) -> Result<NodeProcess> {
        let data = work.join("data");
        let mut args: Vec<std::ffi::OsString> = vec!["dev".into(), "--data-dir".into()];
        args.push(data.into());
        for set in [
            "kafka.listen=127.0.0.1:0",
            "grpc.listen=127.0.0.1:0",
            "http.listen=127.0.0.1:0",
        ] {
            args.extend(["--set".into(), set.into()]);
        }
        Self::spawn(runnel, &args, Stdio::inherit())?.ready()
    }

    /// Starts `runnel` with `args`, its stderr to `stderr`, without waiting for it: see
    /// [`Starting::ready`].
    pub(crate) fn spawn(
        runnel: Option<&Path>,
        args: &[std::ffi::OsString],
        stderr: Stdio,
    ) -> Result<Starting> {
        let binary = match runnel {
            Some(path) => path.to_path_buf(),
            None => std::env::current_exe()?
                .parent()
                .context("the benchmark's directory")?
                .join("runnel"),
        };
        let child = Command::new(&binary)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| {
                format!(
                    "start {} (build it with cargo build --release -p runnel)",
                    binary.display()
                )
            })?;
        Ok(Starting(child))
    }
}

/// A node started and not known to be ready yet (a cluster's nodes are ready together).
pub(crate) struct Starting(Child);

impl Starting {
    /// Reads the node's banner up to `ready in`; its addresses.
    pub(crate) fn ready(self) -> Result<NodeProcess> {
        use std::io::BufRead;
        let mut child = self.0;
        let stdout = child.stdout.take().context("piped stdout")?;
        let (mut kafka, mut grpc) = (None, None);
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line?;
            if let Some(address) = line.strip_prefix("kafka: ") {
                kafka = Some(address.to_string());
            }
            if let Some(address) = line.strip_prefix("grpc: ") {
                grpc = Some(address.to_string());
            }
            if line.starts_with("ready in ") {
                break;
            }
        }
        let node = NodeProcess {
            child,
            kafka: kafka.unwrap_or_default(),
            grpc: grpc.unwrap_or_default(),
        };
        if node.kafka.is_empty() || node.grpc.is_empty() {
            bail!("the node printed no kafka or grpc address");
        }
        Ok(node)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
    create_replicated_topic(bootstrap, topic, partitions, 1).await
}

pub(crate) async fn create_replicated_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    replicas: i32,
) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(replicas),
            )],
            &AdminOptions::new(),
        )
        .await?;
    for result in results {
        if let Err((name, code)) = result {
            bail!("create topic {name}: {code}");
        }
    }
    Ok(())
}

/// Records the time from send to acknowledgement of every record. The send time travels
/// as the delivery opaque, in microseconds since `epoch`, so no record allocates for it.
struct LatencyContext {
    epoch: Instant,
    latency: Mutex<Histogram<u64>>,
    failures: Mutex<u64>,
}

impl LatencyContext {
    fn new(epoch: Instant) -> Result<LatencyContext> {
        Ok(LatencyContext {
            epoch,
            latency: Mutex::new(Histogram::new(3)?),
            failures: Mutex::new(0),
        })
    }

    fn stamp(&self) -> usize {
        self.epoch.elapsed().as_micros() as usize
    }
}

impl ClientContext for LatencyContext {}

impl ProducerContext for LatencyContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Self::DeliveryOpaque) {
        if result.is_err() {
            *self.failures.lock().unwrap() += 1;
            return;
        }
        let micros = self.stamp().saturating_sub(sent) as u64;
        let _ = self.latency.lock().unwrap().record(micros.max(1));
    }
}

/// Hands `record` to librdkafka, waiting `pause` and trying again while its queue is full.
pub(crate) fn send<'a, C, K>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'a, K, [u8], C::DeliveryOpaque>,
    pause: Duration,
) -> Result<()>
where
    C: ProducerContext + 'static,
    K: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(pause);
            }
            Err((error, back)) => bail!("produce to {}: {error}", back.topic),
        }
    }
}

pub(crate) struct Produced {
    pub records_per_s: f64,
    pub mb_per_s: f64,
    pub latency: Histogram<u64>,
}

pub(crate) fn producer_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("socket.nagle.disable", "true")
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("compression.type", "none")
        .set("linger.ms", "10")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("queue.buffering.max.messages", "1000000");
    config
}

/// Produces `case` from `producers` threads, each with its own librdkafka producer (and so
/// its own connection) taking every `producers`-th record: one librdkafka producer thread
/// tops out below what the broker takes when records are small.
pub(crate) fn produce(
    bootstrap: &str,
    case: &Case,
    partitions: i32,
    producers: u64,
) -> Result<Produced> {
    let epoch = Instant::now();
    let started = Instant::now();
    let threads: Vec<_> = (0..producers)
        .map(|first| {
            let bootstrap = bootstrap.to_string();
            let (topic, record_bytes, records) =
                (case.topic.clone(), case.record_bytes, case.records);
            std::thread::spawn(move || -> Result<(Histogram<u64>, u64)> {
                let producer: ThreadedProducer<LatencyContext> =
                    producer_config(&bootstrap).create_with_context(LatencyContext::new(epoch)?)?;
                let payload = vec![0x42u8; record_bytes];
                for i in (first..records).step_by(producers as usize) {
                    let key = (i % 1024).to_be_bytes();
                    let record = BaseRecord::with_opaque_to(&topic, producer.context().stamp())
                        .payload(&payload[..])
                        .key(&key[..])
                        .partition((i % partitions as u64) as i32);
                    send(&producer, record, Duration::from_millis(1))?;
                }
                producer.flush(Timeout::After(Duration::from_secs(120)))?;
                let context = producer.context();
                let latency = context.latency.lock().unwrap().clone();
                let failures = *context.failures.lock().unwrap();
                Ok((latency, failures))
            })
        })
        .collect();
    let mut latency = Histogram::<u64>::new(3)?;
    let mut failures = 0;
    for thread in threads {
        let (measured, failed) = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a producer thread panicked"))??;
        latency.add(&measured)?;
        failures += failed;
    }
    let elapsed = started.elapsed();
    if failures > 0 {
        bail!("{failures} records of {} were not acknowledged", case.topic);
    }
    Ok(Produced {
        records_per_s: case.records as f64 / elapsed.as_secs_f64(),
        mb_per_s: crate::mb_per_s(case.records * case.record_bytes as u64, elapsed),
        latency,
    })
}

pub(crate) struct Consumed {
    pub records_per_s: f64,
    pub mb_per_s: f64,
}

pub(crate) fn consumer(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    from: Offset,
) -> Result<BaseConsumer> {
    // Manual assignment: a group id is required by librdkafka but no group is joined.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("socket.nagle.disable", "true")
        .set("group.id", "runnel-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "4194304")
        .set("queued.max.messages.kbytes", "262144")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, from)?;
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

fn consume(bootstrap: &str, case: &Case, partitions: i32) -> Result<Consumed> {
    let consumer = consumer(bootstrap, &case.topic, partitions, Offset::Beginning)?;
    let started = Instant::now();
    let mut count = 0u64;
    let mut bytes = 0u64;
    let deadline = started + Duration::from_secs(300);
    while count < case.records {
        if Instant::now() > deadline {
            bail!("consumed {count} of {} records in 300 s", case.records);
        }
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message?;
            count += 1;
            bytes += message.payload_len() as u64;
        }
    }
    let elapsed = started.elapsed();
    Ok(Consumed {
        records_per_s: count as f64 / elapsed.as_secs_f64(),
        mb_per_s: crate::mb_per_s(bytes, elapsed),
    })
}

pub(crate) struct EndToEnd {
    pub rate: f64,
    pub latency: Histogram<u64>,
}

pub(crate) fn micros_since_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Produces 1 KiB records at `rate` per second for `duration`, each carrying its send time,
/// while a consumer reads them; the latency is receipt time minus send time.
fn end_to_end(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    rate: f64,
    duration: Duration,
    acks: &str,
) -> Result<EndToEnd> {
    let consumer = consumer(bootstrap, topic, partitions, Offset::End)?;
    let total = (rate * duration.as_secs_f64()) as u64;
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let reader = {
        let latency = latency.clone();
        std::thread::spawn(move || -> Result<()> {
            let deadline = Instant::now() + duration + Duration::from_secs(30);
            let mut seen = 0;
            while seen < total && Instant::now() < deadline {
                if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                    let message = message?;
                    let sent = message
                        .payload()
                        .and_then(|p| p.get(..8))
                        .map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap_or_default()));
                    let micros = micros_since_epoch().saturating_sub(sent).max(1);
                    let _ = latency.lock().unwrap().record(micros);
                    seen += 1;
                }
            }
            Ok(())
        })
    };
    // Let the consumer's assignment settle before timing anything.
    std::thread::sleep(Duration::from_secs(1));
    let mut config = producer_config(bootstrap);
    config.set("linger.ms", "0").set("acks", acks);
    let producer: ThreadedProducer<DefaultProducerContext> = config.create()?;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let started = Instant::now();
    let mut payload = vec![0x42u8; 1024];
    for i in 0..total {
        let due = started + interval.mul_f64(i as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        payload[..8].copy_from_slice(&micros_since_epoch().to_be_bytes());
        let record = BaseRecord::<(), [u8]>::to(topic)
            .payload(&payload[..])
            .partition((i % partitions as u64) as i32);
        send(&producer, record, Duration::from_micros(200))?;
    }
    producer.flush(Timeout::After(Duration::from_secs(60)))?;
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("the consumer thread panicked"))??;
    let latency = latency.lock().unwrap().clone();
    Ok(EndToEnd { rate, latency })
}
