//! The node's one Prometheus registry, served at `/metrics`.
//!
//! It holds every subsystem's metrics (today the log's `runnel_log_*`) plus the node's own:
//! `runnel_build_info{version="…"} 1` and `runnel_uptime_seconds`. The registry is built once
//! at startup and only read afterwards; metric values are atomics updated by their owners.

use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use runnel_broker::groups::GroupService;
use runnel_controller::ControllerStatus;
use runnel_log::LogMetrics;
use runnel_tier::TierMetrics;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The content type of the OpenMetrics text format that `/metrics` serves.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

type BuildInfo = Family<[(&'static str, &'static str); 1], Gauge>;

/// Builds the registry for a node started at `started`.
pub fn node_registry(
    log: &LogMetrics,
    started: Instant,
    controller: &crate::admin::ControllerSlot,
    groups: &GroupsSlot,
    functions: &FunctionsSlot,
    tier: &Arc<TierMetrics>,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(TierCollector(tier.clone())));
    registry.register_collector(Box::new(GroupLag {
        groups: groups.clone(),
    }));
    registry.register_collector(Box::new(FunctionMetrics {
        functions: functions.clone(),
    }));

    let build_info = BuildInfo::default();
    build_info
        .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
        .set(1);
    registry.register(
        "runnel_build_info",
        "The running build; the value is always 1",
        build_info,
    );
    registry.register_with_unit(
        "runnel_uptime",
        "Time since the process started",
        Unit::Seconds,
        Uptime { started },
    );
    log.register(&mut registry);
    let gauges: [(&str, &str, ReadStatus); 6] = [
        ("term", "Raft term of the metadata quorum", |s| {
            s.term as f64
        }),
        (
            "leader_id",
            "Node id of the controller leader, 0 if none is known",
            |s| s.leader.unwrap_or(0) as f64,
        ),
        (
            "is_leader",
            "1 if this node leads the metadata quorum",
            |s| f64::from(u8::from(s.is_leader)),
        ),
        ("log_index", "Last index of this node's metadata log", |s| {
            s.log_index as f64
        }),
        (
            "commit_index",
            "Last metadata log index known committed",
            |s| s.commit_index as f64,
        ),
        (
            "applied_index",
            "Last metadata log index applied on this node",
            |s| s.applied_index as f64,
        ),
    ];
    let controller_metrics = registry.sub_registry_with_prefix("runnel_controller");
    for (name, help, read) in gauges {
        controller_metrics.register(
            name,
            help,
            ControllerGauge {
                controller: controller.clone(),
                read,
            },
        );
    }
    registry
}

/// The group service, once the node has started it (the registry is built first).
pub type GroupsSlot = std::sync::Arc<std::sync::OnceLock<std::sync::Arc<GroupService>>>;

/// `runnel_group_lag{group, topic, partition}`: log end minus committed offset, for every
/// committed offset of the groups this node coordinates, computed at scrape time.
struct GroupLag {
    groups: GroupsSlot,
}

impl std::fmt::Debug for GroupLag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupLag")
    }
}

impl Collector for GroupLag {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(groups) = self.groups.get() else {
            return Ok(());
        };
        let lag = groups.lag();
        let mut family = encoder.encode_descriptor(
            "runnel_group_lag",
            "Records between a consumer group's committed offset and the log end",
            None,
            MetricType::Gauge,
        )?;
        for (group, topic, partition, lag) in lag {
            let labels = [
                ("group", group),
                ("topic", topic),
                ("partition", partition.to_string()),
            ];
            family.encode_family(&labels)?.encode_gauge(&lag)?;
        }
        Ok(())
    }
}

/// The functions service, once the node has started it.
pub type FunctionsSlot =
    std::sync::Arc<std::sync::OnceLock<std::sync::Arc<runnel_functions::Functions>>>;

/// The executors of this node, per function and input partition: records processed and
/// dead-lettered, failed attempts and lag; and the counters and gauges functions set
/// through their `metrics` import, per function and name.
/// Tiered storage's counters, as `runnel_tier_*`.
#[derive(Debug)]
struct TierCollector(Arc<TierMetrics>);

impl Collector for TierCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let tier = &self.0;
        let counters = [
            (
                "runnel_tier_uploads",
                "Segments uploaded to the object store",
                &tier.uploads,
            ),
            (
                "runnel_tier_uploaded_bytes",
                "Bytes of Parquet files uploaded",
                &tier.uploaded_bytes,
            ),
            (
                "runnel_tier_uploaded_segment_bytes",
                "Bytes of the local segments those files were made from",
                &tier.uploaded_segment_bytes,
            ),
            (
                "runnel_tier_upload_errors",
                "Failed upload or manifest attempts (each is retried)",
                &tier.upload_errors,
            ),
            (
                "runnel_tier_expired_segments",
                "Tiered segments dropped by retention.ms or retention.bytes",
                &tier.expired_segments,
            ),
            (
                "runnel_tier_reads",
                "Fetches served from tiered storage",
                &tier.read.reads,
            ),
            (
                "runnel_tier_read_errors",
                "Fetches from tiered storage that failed (retriable for the client)",
                &tier.read.read_errors,
            ),
            (
                "runnel_tier_cache_hits",
                "Row groups served from the memory or disk cache of rebuilt row groups",
                &tier.read.cache_hits,
            ),
            (
                "runnel_tier_cache_misses",
                "Row groups fetched from the object store and rebuilt (by reads and read-ahead)",
                &tier.read.cache_misses,
            ),
            (
                "runnel_tier_fetched_bytes",
                "Bytes of row groups fetched from the object store",
                &tier.read.fetched_bytes,
            ),
        ];
        for (name, help, value) in counters {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            metric.encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                &value.load(Ordering::Relaxed),
                None,
            )?;
        }
        let seconds = tier.upload_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder
            .encode_descriptor(
                "runnel_tier_upload",
                "Time spent in successful uploads (read, encode, put, manifest)",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?
            .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&seconds, None)?;
        let gauges = [
            (
                "runnel_tier_upload_lag_segments",
                "Sealed, committed segments not uploaded yet",
                &tier.lag_segments,
            ),
            (
                "runnel_tier_upload_lag_bytes",
                "Bytes of sealed, committed segments not uploaded yet",
                &tier.lag_bytes,
            ),
            (
                "runnel_tier_cache_bytes",
                "Bytes in the disk cache of rebuilt row groups",
                &tier.read.cache_bytes,
            ),
        ];
        for (name, help, value) in gauges {
            encoder
                .encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&(value.load(Ordering::Relaxed) as i64))?;
        }
        Ok(())
    }
}

struct FunctionMetrics {
    functions: FunctionsSlot,
}

impl std::fmt::Debug for FunctionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FunctionMetrics")
    }
}

impl Collector for FunctionMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(functions) = self.functions.get() else {
            return Ok(());
        };
        let statuses = functions.statuses();
        type Read = fn(&runnel_functions::PartitionState) -> u64;
        let per_partition: [(&str, &str, MetricType, Read); 4] = [
            (
                "runnel_function_records_processed",
                "Input records a function processed",
                MetricType::Counter,
                |s| s.processed,
            ),
            (
                "runnel_function_records_dead_lettered",
                "Input records sent to a function's dead-letter topic",
                MetricType::Counter,
                |s| s.failed,
            ),
            (
                "runnel_function_errors",
                "Failed calls of a function, retries included",
                MetricType::Counter,
                |s| s.errors,
            ),
            (
                "runnel_function_lag",
                "Records of an input partition a function has not processed yet",
                MetricType::Gauge,
                |s| s.high_watermark.saturating_sub(s.position),
            ),
        ];
        for (name, help, kind, read) in per_partition {
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for (function, status) in &statuses {
                let labels = [
                    ("function", function.clone()),
                    ("topic", status.topic.clone()),
                    ("partition", status.partition.to_string()),
                ];
                let value = read(status);
                let mut metric = family.encode_family(&labels)?;
                match kind {
                    MetricType::Counter => metric
                        .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                            &value, None,
                        )?,
                    _ => metric.encode_gauge(&(value as i64))?,
                }
            }
        }
        // The functions' own metrics, summed (counters) or last set (gauges) over their
        // partitions here.
        let mut counters: std::collections::BTreeMap<(String, String), u64> = Default::default();
        let mut gauges: std::collections::BTreeMap<(String, String), f64> = Default::default();
        for (function, status) in &statuses {
            for (name, value) in &status.counters {
                *counters
                    .entry((function.clone(), name.clone()))
                    .or_default() += value;
            }
            for (name, value) in &status.gauges {
                gauges.insert((function.clone(), name.clone()), *value);
            }
        }
        let mut family = encoder.encode_descriptor(
            "runnel_function_user",
            "A counter a function adds to through its metrics import",
            None,
            MetricType::Counter,
        )?;
        for ((function, name), value) in &counters {
            let labels = [("function", function.clone()), ("name", name.clone())];
            family
                .encode_family(&labels)?
                .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(value, None)?;
        }
        let mut family = encoder.encode_descriptor(
            "runnel_function_user_gauge",
            "A gauge a function sets through its metrics import",
            None,
            MetricType::Gauge,
        )?;
        for ((function, name), value) in &gauges {
            let labels = [("function", function.clone()), ("name", name.clone())];
            family.encode_family(&labels)?.encode_gauge(value)?;
        }
        encoder
            .encode_descriptor(
                "runnel_function_log_lines_dropped",
                "Function log lines dropped because their log topic could not take them in time",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                &functions.dropped_log_lines(),
                None,
            )?;
        Ok(())
    }
}

/// Reads one value out of the controller's status.
type ReadStatus = fn(&ControllerStatus) -> f64;

/// A controller gauge, read at scrape time; 0 until the controller has started.
struct ControllerGauge {
    controller: crate::admin::ControllerSlot,
    read: ReadStatus,
}

impl std::fmt::Debug for ControllerGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControllerGauge")
    }
}

impl EncodeMetric for ControllerGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let value = self
            .controller
            .get()
            .map_or(0.0, |controller| (self.read)(&controller.status()));
        encoder.encode_gauge(&value)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// Encodes every metric of `registry` in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

/// A gauge whose value is read from the clock when it is scraped.
#[derive(Debug)]
struct Uptime {
    started: Instant,
}

impl EncodeMetric for Uptime {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.started.elapsed().as_secs_f64())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_holds_node_and_log_metrics() {
        let log = LogMetrics::default();
        log.partitions.set(3);
        let text = encode(&node_registry(
            &log,
            Instant::now(),
            &Default::default(),
            &Default::default(),
            &Default::default(),
            &Default::default(),
        ))
        .unwrap();
        assert!(
            text.contains("# TYPE runnel_tier_uploads counter\nrunnel_tier_uploads_total 0\n"),
            "{text}"
        );
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            text.contains(&format!("runnel_build_info{{version=\"{version}\"}} 1\n")),
            "{text}"
        );
        assert!(
            text.contains("# TYPE runnel_uptime_seconds gauge"),
            "{text}"
        );
        assert!(text.contains("runnel_log_partitions 3\n"), "{text}");
        assert!(
            text.contains("# TYPE runnel_log_fsync_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
