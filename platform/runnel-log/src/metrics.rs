//! The log's metrics, registered with the node's Prometheus registry under
//! `runnel_log_*`. Labels are never topics, keys or offsets, so their number is bounded.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Counters shared by every partition of a node. Cloning shares the same series.
#[derive(Debug, Clone)]
pub struct LogMetrics {
    pub appended_bytes: Counter,
    pub appended_batches: Counter,
    pub appended_records: Counter,
    pub read_bytes: Counter,
    pub fsync_seconds: Histogram,
    pub segments: Gauge,
    pub partitions: Gauge,
    /// The free-disk floor ([`crate::space`]): free bytes at the last look, the floor,
    /// and appends refused under it.
    pub disk_free_bytes: Gauge,
    pub disk_floor_bytes: Gauge,
    pub appends_refused_disk_full: Counter,
}

impl Default for LogMetrics {
    fn default() -> Self {
        LogMetrics {
            appended_bytes: Counter::default(),
            appended_batches: Counter::default(),
            appended_records: Counter::default(),
            read_bytes: Counter::default(),
            // 50 µs to ~1.6 s
            fsync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            segments: Gauge::default(),
            partitions: Gauge::default(),
            disk_free_bytes: Gauge::default(),
            disk_floor_bytes: Gauge::default(),
            appends_refused_disk_full: Counter::default(),
        }
    }
}

impl LogMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let log = registry.sub_registry_with_prefix("runnel_log");
        log.register_with_unit(
            "appended",
            "Record batch bytes appended",
            Unit::Bytes,
            self.appended_bytes.clone(),
        );
        log.register(
            "appended_batches",
            "Record batches appended",
            self.appended_batches.clone(),
        );
        log.register(
            "appended_records",
            "Records appended",
            self.appended_records.clone(),
        );
        log.register_with_unit(
            "read",
            "Record batch bytes read",
            Unit::Bytes,
            self.read_bytes.clone(),
        );
        log.register_with_unit(
            "fsync_duration",
            "Latency of one log fsync",
            Unit::Seconds,
            self.fsync_seconds.clone(),
        );
        log.register("segments", "Segments on disk", self.segments.clone());
        log.register("partitions", "Partitions open", self.partitions.clone());
        log.register_with_unit(
            "disk_free",
            "Free bytes of the data directory's disk at the last look (every 250 ms)",
            Unit::Bytes,
            self.disk_free_bytes.clone(),
        );
        log.register_with_unit(
            "disk_floor",
            "The free-disk floor (log.min_free_bytes) under which appends are refused",
            Unit::Bytes,
            self.disk_floor_bytes.clone(),
        );
        log.register(
            "appends_refused_disk_full",
            "Appends refused because the disk was under the free-disk floor",
            self.appends_refused_disk_full.clone(),
        );
    }
}
