//! The gRPC side of `runnel-bench grpc`: the Kafka benchmark's workload through the
//! `runnel.v1` API with `runnel-client`, a batching producer over one `ProduceStream` and
//! `Subscribe` streams, against the same node in the same run.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use runnel_client::{Acks, Client, ProducerConfig, Record, Start};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::kafka::{Case, Consumed, EndToEnd, Produced, micros_since_epoch};

fn producer_config(acks: Acks, linger: Duration) -> ProducerConfig {
    ProducerConfig {
        linger,
        batch_records: 10_000,
        batch_bytes: 1 << 20,
        acks,
        max_pending: 200_000,
    }
}

/// Produces `case` with one batching producer (acks=all), records spread over the
/// partitions as the Kafka case does; latency is enqueue to acknowledgement.
pub async fn produce(server: &str, case: &Case, partitions: i32) -> Result<Produced> {
    let client = Client::connect(server).await?;
    let producer = client.producer_with(producer_config(Acks::All, Duration::from_millis(10)));
    // Acknowledgements come back in order: one task awaits them as they arrive.
    let (deliveries, mut acknowledged) =
        mpsc::channel::<(Instant, runnel_client::Delivery)>(100_000);
    let measure = tokio::spawn(async move {
        let mut latency = Histogram::<u64>::new(3)?;
        let mut failures = 0u64;
        while let Some((sent, delivery)) = acknowledged.recv().await {
            match delivery.await {
                Ok(_) => {
                    let micros = (Instant::now() - sent).as_micros() as u64;
                    latency.record(micros.max(1))?;
                }
                Err(_) => failures += 1,
            }
        }
        Ok::<_, anyhow::Error>((latency, failures))
    });
    let payload = vec![0x42u8; case.record_bytes];
    let started = Instant::now();
    for i in 0..case.records {
        let record = Record::new(payload.clone()).key((i % 1024).to_be_bytes().to_vec());
        let partition = (i % partitions as u64) as i32;
        let sent = Instant::now();
        let delivery = producer
            .enqueue_to(&case.topic, Some(partition), record)
            .await;
        if deliveries.send((sent, delivery)).await.is_err() {
            break;
        }
    }
    producer.flush().await;
    drop(deliveries);
    let (latency, failures) = measure.await??;
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

/// Reads every record of `case` back with one Subscribe stream over all partitions.
pub async fn consume(server: &str, case: &Case) -> Result<Consumed> {
    let client = Client::connect(server).await?;
    let started = Instant::now();
    let records = client.subscribe(&case.topic, Start::Earliest).await?;
    tokio::pin!(records);
    let (mut count, mut bytes) = (0u64, 0u64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while count < case.records {
        let Ok(next) = tokio::time::timeout_at(deadline, records.next()).await else {
            bail!("consumed {count} of {} records in 300 s", case.records);
        };
        let Some(record) = next else {
            bail!("the stream ended after {count} records");
        };
        let record = record?;
        count += 1;
        bytes += record.value.map_or(0, |v| v.len() as u64);
    }
    let elapsed = started.elapsed();
    Ok(Consumed {
        records_per_s: count as f64 / elapsed.as_secs_f64(),
        mb_per_s: crate::mb_per_s(bytes, elapsed),
    })
}

/// 1 KiB records at `rate` per second for `duration` through a producer without linger,
/// each carrying its send time, while a Subscribe stream from the end reads them.
pub async fn end_to_end(
    server: &str,
    topic: &str,
    partitions: i32,
    rate: f64,
    duration: Duration,
    acks: Acks,
) -> Result<EndToEnd> {
    let client = Client::connect(server).await?;
    let total = (rate * duration.as_secs_f64()) as u64;
    let records = client.subscribe(topic, Start::Latest).await?;
    let reader = tokio::spawn(async move {
        tokio::pin!(records);
        let mut latency = Histogram::<u64>::new(3)?;
        let deadline = tokio::time::Instant::now() + duration + Duration::from_secs(30);
        while latency.len() < total {
            let Ok(Some(record)) = tokio::time::timeout_at(deadline, records.next()).await else {
                break;
            };
            let record = record?;
            let sent = record
                .value
                .as_deref()
                .and_then(|v| v.get(..8))
                .map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap_or_default()));
            latency.record(micros_since_epoch().saturating_sub(sent).max(1))?;
        }
        Ok::<_, anyhow::Error>(latency)
    });
    // The subscription starts from the end as of its start; let it settle first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let producer = client.producer_with(producer_config(acks, Duration::ZERO));
    let (deliveries, mut acknowledged) = mpsc::channel::<runnel_client::Delivery>(100_000);
    let acknowledger = tokio::spawn(async move {
        while let Some(delivery) = acknowledged.recv().await {
            delivery.await?;
        }
        Ok::<_, anyhow::Error>(())
    });
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let started = tokio::time::Instant::now();
    let mut payload = vec![0x42u8; 1024];
    for i in 0..total {
        tokio::time::sleep_until(started + interval.mul_f64(i as f64)).await;
        payload[..8].copy_from_slice(&micros_since_epoch().to_be_bytes());
        let partition = (i % partitions as u64) as i32;
        let delivery = producer
            .enqueue_to(topic, Some(partition), Record::new(payload.clone()))
            .await;
        if deliveries.send(delivery).await.is_err() {
            break;
        }
    }
    drop(deliveries);
    acknowledger.await??;
    let latency = reader.await??;
    Ok(EndToEnd { rate, latency })
}
