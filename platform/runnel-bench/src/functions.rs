//! `runnel-bench functions`, in two parts, for 1 KiB and 100-byte records:
//!
//! - the Wasm boundary: batches of records in the batch encoding go through a transform
//!   component (build `examples/functions/identity` for the figure of a function that does
//!   nothing) and, in the same run, through the same work done natively with no component;
//! - the pipeline on a node (`runnel dev`, the binary beside this one unless `--runnel`):
//!   an input topic is filled, then copied to an output topic once by the component
//!   deployed as a function (executors reading the log, calling it, producing, storing
//!   progress) and once with no function, by a librdkafka consumer that produces what it
//!   reads (acks=all). Records/s of each and the ratio.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use runnel_abi::{Batch, BatchWriter, Output, OutputWriter, Outputs};
use runnel_functions::{FunctionHost, Kind, Limits};

#[derive(clap::Args)]
pub struct FunctionsOptions {
    /// The transform component to measure (e.g. the identity example built with
    /// `cargo build --target wasm32-wasip2 --release`).
    #[arg(long)]
    pub wasm: PathBuf,
    /// Records per case.
    #[arg(long, default_value_t = 2_000_000)]
    pub records: u64,
    /// Records per batch (one `process` call).
    #[arg(long, default_value_t = 1000)]
    pub batch_records: usize,
    /// Records per case of the pipeline on a node; 0 skips it.
    #[arg(long, default_value_t = 1_000_000)]
    pub pipeline_records: u64,
    /// Partitions of the pipeline's topics.
    #[arg(long, default_value_t = 2)]
    pub partitions: i32,
    /// Records per call of the deployed function.
    #[arg(long, default_value_t = 5000)]
    pub pipeline_batch_records: u32,
    /// Where the node's data goes (the disk to measure).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// The `runnel` binary; by default the one beside this program.
    #[arg(long)]
    pub runnel: Option<PathBuf>,
}

struct Case {
    record_bytes: usize,
}

pub fn run(options: &FunctionsOptions) -> Result<()> {
    let wasm =
        std::fs::read(&options.wasm).with_context(|| format!("read {}", options.wasm.display()))?;
    let host = FunctionHost::new().map_err(|e| anyhow!("{e:#}"))?;
    let started = Instant::now();
    let function = host.compile(Kind::Transform, &wasm, Limits::default())?;
    println!(
        "runnel-bench functions: {} ({} bytes, compiled in {:.0} ms), batches of {} records",
        options.wasm.display(),
        wasm.len(),
        started.elapsed().as_secs_f64() * 1000.0,
        options.batch_records
    );
    println!(
        "\n{:<22} {:>14} {:>10} {:>16} {:>10} {:>7}",
        "records", "native rec/s", "MB/s", "component rec/s", "MB/s", "ratio"
    );
    for case in [Case { record_bytes: 1024 }, Case { record_bytes: 100 }] {
        let batches = batches(options, &case)?;
        let native = measure(options.records, case.record_bytes, || {
            for batch in &batches {
                std::hint::black_box(copy_natively(batch)?);
            }
            Ok(())
        })?;
        let mut instance = function.instantiate(BTreeMap::new(), BTreeMap::new())?;
        let component = measure(options.records, case.record_bytes, || {
            for batch in &batches {
                let outputs = instance.process(batch)?;
                let parsed = Outputs::parse(&outputs)?;
                std::hint::black_box(parsed.len());
            }
            Ok(())
        })?;
        println!(
            "{:<22} {:>14.0} {:>10.1} {:>16.0} {:>10.1} {:>6.0}%",
            format!("{} B values", case.record_bytes),
            native.0,
            native.1,
            component.0,
            component.1,
            100.0 * component.0 / native.0
        );
    }
    if options.pipeline_records > 0 {
        let work = crate::tempfile_in(&options.dir)?;
        let result = pipeline(options, &wasm, &work);
        let _ = std::fs::remove_dir_all(&work);
        result?;
    }
    Ok(())
}

/// The pipeline on a node: the component deployed as a function against a librdkafka
/// consumer copying the same input, per record size.
fn pipeline(options: &FunctionsOptions, wasm: &[u8], work: &std::path::Path) -> Result<()> {
    let node = crate::kafka::NodeProcess::start(options.runnel.as_deref(), work)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = runtime.block_on(runnel_client::Client::connect(&node.grpc))?;
    let records = options.pipeline_records;
    println!(
        "\npipeline on runnel dev: {records} records per case, {} partitions, data in {}",
        options.partitions,
        work.display()
    );
    println!(
        "\n{:<22} {:>18} {:>18} {:>7}",
        "records", "no function rec/s", "function rec/s", "ratio"
    );
    for record_bytes in [1024usize, 100] {
        let input = format!("in-{record_bytes}");
        let copied = format!("copied-{record_bytes}");
        let transformed = format!("transformed-{record_bytes}");
        for topic in [&input, &copied, &transformed] {
            runtime.block_on(crate::kafka::create_topic(
                &node.kafka,
                topic,
                options.partitions,
            ))?;
        }
        fill(
            &node.kafka,
            &input,
            options.partitions,
            records,
            record_bytes,
        )?;
        let baseline =
            copy_with_librdkafka(&node.kafka, &input, &copied, options.partitions, records)?;
        let function = runtime.block_on(through_function(
            &client,
            options,
            wasm,
            &input,
            &transformed,
            record_bytes,
        ))?;
        println!(
            "{:<22} {:>18.0} {:>18.0} {:>6.0}%",
            format!("{record_bytes} B values"),
            baseline,
            function,
            100.0 * function / baseline
        );
    }
    Ok(())
}

/// Produces `records` of `record_bytes` to `topic`, spread over its partitions, acks=all.
fn fill(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    records: u64,
    record_bytes: usize,
) -> Result<()> {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let producer: ThreadedProducer<DefaultProducerContext> =
        crate::kafka::producer_config(bootstrap).create()?;
    let payload = vec![0x42u8; record_bytes];
    for i in 0..records {
        let key = (i % 1024).to_be_bytes();
        let record = BaseRecord::to(topic)
            .key(&key[..])
            .payload(&payload[..])
            .partition((i % partitions as u64) as i32);
        crate::kafka::send(&producer, record, Duration::from_micros(200))?;
    }
    producer.flush(rdkafka::util::Timeout::After(Duration::from_secs(120)))?;
    Ok(())
}

/// The pipeline with no function: a librdkafka consumer reads `input` from the start and
/// a librdkafka producer writes every record to the same partition of `output`, acks=all.
/// Records/s from the first poll until every copy is acknowledged.
fn copy_with_librdkafka(
    bootstrap: &str,
    input: &str,
    output: &str,
    partitions: i32,
    records: u64,
) -> Result<f64> {
    use rdkafka::message::Message;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let consumer =
        crate::kafka::consumer(bootstrap, input, partitions, rdkafka::Offset::Beginning)?;
    let producer: ThreadedProducer<DefaultProducerContext> =
        crate::kafka::producer_config(bootstrap).create()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    let mut copied = 0u64;
    while copied < records {
        anyhow::ensure!(
            Instant::now() < deadline,
            "copied {copied} of {records} in 600 s"
        );
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        let mut record = BaseRecord::<[u8], [u8]>::to(output)
            .payload(message.payload().unwrap_or_default())
            .partition(message.partition());
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        crate::kafka::send(&producer, record, Duration::from_micros(200))?;
        copied += 1;
    }
    producer.flush(rdkafka::util::Timeout::After(Duration::from_secs(120)))?;
    Ok(records as f64 / started.elapsed().as_secs_f64())
}

/// The pipeline through the component: deployed paused (so compiling is not timed), then
/// resumed; records/s from the resume until `output` holds every record.
async fn through_function(
    client: &runnel_client::Client,
    options: &FunctionsOptions,
    wasm: &[u8],
    input: &str,
    output: &str,
    record_bytes: usize,
) -> Result<f64> {
    let name = format!("identity-{record_bytes}");
    let functions = client.functions();
    functions
        .deploy(runnel_client::functions::DeployFunctionRequest {
            name: name.clone(),
            kind: "transform".to_string(),
            component: wasm.to_vec(),
            inputs: vec![input.to_string()],
            outputs: vec![output.to_string()],
            grant_all: true,
            limits: Some(runnel_client::functions::FunctionLimits {
                batch_records: options.pipeline_batch_records,
                ..Default::default()
            }),
            paused: true,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    functions.resume(&name).await?;
    let deadline = started + Duration::from_secs(600);
    loop {
        let described = client.admin().describe_topic(output).await?;
        let written: i64 = described
            .partitions
            .iter()
            .map(|p| p.high_watermark.unwrap_or(0))
            .sum();
        if written as u64 >= options.pipeline_records {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the function wrote {written} of {} records in 600 s",
            options.pipeline_records
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    functions.delete(&name).await?;
    Ok(options.pipeline_records as f64 / elapsed.as_secs_f64())
}

/// The case's records in batches, as an executor would hand them to a function.
fn batches(options: &FunctionsOptions, case: &Case) -> Result<Vec<Vec<u8>>> {
    let value = vec![0x42u8; case.record_bytes];
    let per_batch = options.batch_records.max(1) as u64;
    let mut batches = Vec::new();
    let mut offset = 0u64;
    while offset < options.records {
        let count = per_batch.min(options.records - offset);
        let mut writer = BatchWriter::new("bench", 0, count as usize * (case.record_bytes + 40))?;
        for i in offset..offset + count {
            let key = (i % 1024).to_be_bytes();
            writer.push(
                i as i64,
                1_700_000_000_000,
                Some(&key),
                Some(&value),
                std::iter::empty(),
            )?;
        }
        batches.push(writer.finish());
        offset += count;
    }
    Ok(batches)
}

/// The same work as the identity function, natively: read each record, write it out.
fn copy_natively(batch: &[u8]) -> Result<Vec<u8>> {
    let batch = Batch::parse(batch)?;
    let mut writer = OutputWriter::new();
    for record in batch.records() {
        writer.push(&Output {
            timestamp: Some(record.timestamp),
            key: record.key,
            value: record.value,
            headers: record.headers.iter().collect(),
            ..Output::default()
        })?;
    }
    Ok(writer.finish())
}

/// Runs `work` (every batch once) until a second has passed; records/s and MB/s of values.
fn measure(
    records: u64,
    record_bytes: usize,
    mut work: impl FnMut() -> Result<()>,
) -> Result<(f64, f64)> {
    work()?; // warm up
    let started = Instant::now();
    let mut rounds = 0u64;
    while rounds == 0 || started.elapsed() < Duration::from_secs(1) {
        work()?;
        rounds += 1;
    }
    let elapsed = started.elapsed();
    let total = records * rounds;
    Ok((
        total as f64 / elapsed.as_secs_f64(),
        crate::mb_per_s(total * record_bytes as u64, elapsed),
    ))
}
