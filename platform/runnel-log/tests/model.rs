//! Property test: the log against a plain model (a map of offset -> record).
//!
//! Random configurations (tiny segments and index intervals, every cleanup policy) and
//! random operations: appends (durable or not), reads of random sizes from random offsets,
//! rolls, retention, compaction, close-and-reopen and timestamp lookups. After every
//! operation the whole log, read back in small pieces, must equal the model.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use common::*;
use proptest::prelude::*;
use runnel_config::{CleanupPolicy, TopicConfig};
use runnel_log::PartitionLog;

#[derive(Debug, Clone)]
enum Op {
    /// (key, value, timestamp step): keys from a small set so compaction has work; `None`
    /// value is a tombstone.
    Append {
        records: Vec<(Option<u8>, Option<u8>, u8)>,
        durable: bool,
    },
    Read {
        at: u16,
        max_bytes: u16,
    },
    Roll,
    Retention {
        advance: u16,
    },
    Compact {
        advance: u16,
    },
    Reopen,
    Timestamp {
        at: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (prop::collection::vec((prop::option::weighted(0.9, 0u8..6), prop::option::weighted(0.85, any::<u8>()), 0u8..50), 1..6), any::<bool>())
            .prop_map(|(records, durable)| Op::Append { records, durable }),
        2 => (any::<u16>(), 1u16..2000).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => Just(Op::Roll),
        1 => any::<u16>().prop_map(|advance| Op::Retention { advance }),
        1 => any::<u16>().prop_map(|advance| Op::Compact { advance }),
        1 => Just(Op::Reopen),
        1 => any::<u16>().prop_map(|at| Op::Timestamp { at }),
    ]
}

fn topic_config() -> impl Strategy<Value = TopicConfig> {
    (
        200u64..3000,
        prop_oneof![Just(1u64), 1u64..600],
        prop_oneof![
            Just(CleanupPolicy::DELETE),
            Just(CleanupPolicy::COMPACT),
            Just(CleanupPolicy {
                delete: true,
                compact: true
            })
        ],
        prop::option::of(0u64..3000),
        prop::option::of(0u64..4000),
        0u64..2000,
    )
        .prop_map(
            |(
                segment_bytes,
                index_interval_bytes,
                cleanup_policy,
                retention_ms,
                retention_bytes,
                delete_retention_ms,
            )| TopicConfig {
                segment_bytes,
                index_interval_bytes,
                cleanup_policy,
                retention_ms,
                retention_bytes,
                delete_retention_ms,
                ..TopicConfig::default()
            },
        )
}

struct Model {
    records: BTreeMap<u64, Seen>,
    log_start: u64,
    log_end: u64,
    clock: i64,
}

fn pick(at: u16, low: u64, high: u64) -> u64 {
    low + u64::from(at) % (high - low + 1)
}

async fn check_whole_log(log: &PartitionLog, model: &Model) {
    assert_eq!(log.log_start(), model.log_start, "log start");
    assert_eq!(log.log_end(), model.log_end, "log end");
    assert_eq!(log.high_watermark(), model.log_end, "high watermark");
    let all = read_all(log, model.log_start, 500)
        .await
        .expect("read whole log");
    let expected: Vec<Seen> = model.records.values().cloned().collect();
    assert_eq!(all, expected, "whole log");
}

async fn run(dir: &Path, config: TopicConfig, ops: Vec<Op>) {
    let mut log = open(dir, config.clone()).await;
    let mut model = Model {
        records: BTreeMap::new(),
        log_start: 0,
        log_end: 0,
        clock: 1_000,
    };
    for op in ops {
        match op {
            Op::Append { records, durable } => {
                let mut new = Vec::new();
                for (key, value, step) in &records {
                    model.clock += i64::from(*step);
                    // Compacted topics require keys.
                    let key = match key {
                        None if config.cleanup_policy.compact => Some(vec![b'k', 0]),
                        other => other.map(|k| vec![b'k', k]),
                    };
                    let value = value.map(|v| vec![v; usize::from(v % 40)]);
                    new.push(record(model.clock, key.as_deref(), value.as_deref()));
                }
                let batch = batch_of(&new);
                let appended = if durable {
                    log.append_durable(batch).await
                } else {
                    log.append(batch).await
                }
                .expect("append");
                assert_eq!(appended.base_offset, model.log_end);
                if durable {
                    assert!(appended.durable);
                }
                for (i, r) in new.into_iter().enumerate() {
                    let offset = model.log_end + i as u64;
                    model.records.insert(
                        offset,
                        Seen {
                            offset,
                            timestamp: r.timestamp,
                            key: r.key,
                            value: r.value,
                        },
                    );
                }
                model.log_end += records.len() as u64;
            }
            Op::Read { at, max_bytes } => {
                let offset = pick(at, model.log_start, model.log_end);
                let result = log
                    .read(offset, usize::from(max_bytes))
                    .await
                    .expect("read");
                let got: Vec<Seen> = decode(&result.records)
                    .into_iter()
                    .filter(|r| r.offset >= offset)
                    .collect();
                let expected: Vec<Seen> = model
                    .records
                    .range(offset..)
                    .map(|(_, r)| r.clone())
                    .take(got.len())
                    .collect();
                assert_eq!(got, expected, "read at {offset}");
            }
            Op::Roll => log.roll().await.expect("roll"),
            Op::Retention { advance } => {
                let now = model.clock + i64::from(advance);
                let segments = log.segments();
                let mut total: u64 = segments.iter().map(|s| s.size).sum();
                let mut new_start = model.log_start;
                if config.cleanup_policy.delete {
                    for segment in segments.iter().filter(|s| s.sealed) {
                        // An empty segment (compaction can leave one) holds nothing
                        // to keep once any time limit is set.
                        let expired = config.retention_ms.is_some_and(|limit| {
                            segment.size == 0 || now - segment.max_timestamp > limit as i64
                        });
                        let oversize = config
                            .retention_bytes
                            .is_some_and(|limit| total - segment.size >= limit);
                        if !expired && !oversize {
                            break;
                        }
                        total -= segment.size;
                        new_start = segments
                            .iter()
                            .find(|s| s.base_offset > segment.base_offset)
                            .map_or(new_start, |s| s.base_offset);
                    }
                }
                log.enforce_retention(now).await.expect("retention");
                model.log_start = model.log_start.max(new_start);
                model.records.retain(|offset, _| *offset >= model.log_start);
            }
            Op::Compact { advance } => {
                let now = model.clock + i64::from(advance);
                let active_base = log.segments().last().expect("active segment").base_offset;
                log.compact(now).await.expect("compact");
                if config.cleanup_policy.compact {
                    let mut latest: HashMap<Vec<u8>, u64> = HashMap::new();
                    for (offset, r) in model.records.range(..active_base) {
                        if let Some(key) = &r.key {
                            latest.insert(key.clone(), *offset);
                        }
                    }
                    model.records.retain(|offset, r| {
                        if *offset >= active_base {
                            return true;
                        }
                        let Some(key) = &r.key else { return true };
                        let is_latest = latest.get(key) == Some(offset);
                        let expired_tombstone = r.value.is_none()
                            && now - r.timestamp >= config.delete_retention_ms as i64;
                        is_latest && !expired_tombstone
                    });
                }
            }
            Op::Reopen => {
                log.close().await.expect("close");
                log = open(dir, config.clone()).await;
            }
            Op::Timestamp { at } => {
                let target = pick(at, 990, (model.clock + 10) as u64) as i64;
                let expected = model
                    .records
                    .values()
                    .find(|r| r.timestamp >= target)
                    .map(|r| r.offset);
                assert_eq!(
                    log.offset_for_timestamp(target)
                        .await
                        .expect("offset for timestamp"),
                    expected,
                    "timestamp {target}"
                );
            }
        }
        check_whole_log(&log, &model).await;
    }
    log.close().await.expect("close");
}

/// Found by the property test: compaction empties the first segment (a lone expired
/// tombstone), and retention then removes the empty segment, moving the log start.
#[test]
fn retention_removes_a_segment_compaction_emptied() {
    let dir = tempfile::tempdir().unwrap();
    let config = TopicConfig {
        segment_bytes: 200,
        index_interval_bytes: 1,
        cleanup_policy: CleanupPolicy {
            delete: true,
            compact: true,
        },
        retention_ms: Some(2000),
        retention_bytes: None,
        delete_retention_ms: 0,
        ..TopicConfig::default()
    };
    let ops = vec![
        Op::Append {
            records: vec![(None, None, 0)],
            durable: false,
        },
        Op::Append {
            records: vec![(None, Some(24), 0), (None, Some(108), 0)],
            durable: false,
        },
        Op::Compact { advance: 0 },
        Op::Retention { advance: 0 },
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(dir.path(), config, ops));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_log_behaves_like_the_model(config in topic_config(), ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run(dir.path(), config, ops));
    }
}
