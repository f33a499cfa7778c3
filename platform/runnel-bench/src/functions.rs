//! `runnel-bench functions`: the cost of the Wasm boundary. Batches of records in the batch
//! encoding go through a transform component (build `examples/functions/identity` for the
//! figure of a function that does nothing) and, in the same run, through the same work done
//! natively with no component: reading each record of the batch and writing it to an
//! output buffer. Records/s, MB/s and the ratio, for 1 KiB and 100-byte records.
//!
//! This measures the host and the interface only; the pipeline with the log, executors and
//! produce path comes with them.

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
    Ok(())
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
