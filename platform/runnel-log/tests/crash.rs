//! Crash test: a writer process is killed with SIGKILL in the middle of appending, over and
//! over, and the log is reopened each time. Every append the writer saw acknowledged as
//! durable must be there with its contents, offsets must stay contiguous, and no torn batch
//! may ever be served.
//!
//! The writer is this same test binary, re-run with an environment variable that turns the
//! `crash_child` test into the writer.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use runnel_config::TopicConfig;
use runnel_log::PartitionLog;

const CHILD_DIR: &str = "RUNNEL_LOG_CRASH_CHILD_DIR";

fn config() -> TopicConfig {
    TopicConfig {
        segment_bytes: 1 << 20,
        index_interval_bytes: 4096,
        ..TopicConfig::default()
    }
}

fn value(tag: &str, index: usize, len: usize) -> Vec<u8> {
    let mut value = format!("{tag}-{index}-").into_bytes();
    value.resize(len.max(value.len()), b'.');
    value
}

/// The writer: four tasks append durable batches of varied size until the process is
/// killed, printing `durable <base> <last> <tag> <value length>` after each acknowledgement.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let log = Arc::new(
            PartitionLog::open(&dir, config(), Default::default())
                .await
                .expect("child opens the log"),
        );
        let stdout = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for task in 0..4u64 {
            let log = log.clone();
            let stdout = stdout.clone();
            tasks.push(tokio::spawn(async move {
                for seq in 0u64.. {
                    let tag = format!("t{task}s{seq}p{}", std::process::id());
                    let count = 1 + (seq % 7) as usize;
                    let len = [10, 1_000, 30_000][(seq % 3) as usize];
                    let records: Vec<_> = (0..count)
                        .map(|i| {
                            record(seq as i64, Some(tag.as_bytes()), Some(&value(&tag, i, len)))
                        })
                        .collect();
                    let appended = log
                        .append_durable(batch_of(&records))
                        .await
                        .expect("append");
                    assert!(appended.durable);
                    let mut out = stdout.lock().unwrap();
                    writeln!(
                        out,
                        "durable {} {} {tag} {len}",
                        appended.base_offset, appended.last_offset
                    )
                    .unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
}

struct Acknowledged {
    base: u64,
    last: u64,
    tag: String,
    len: usize,
}

fn parse(line: &str) -> Option<Acknowledged> {
    let mut parts = line.strip_prefix("durable ")?.split(' ');
    Some(Acknowledged {
        base: parts.next()?.parse().ok()?,
        last: parts.next()?.parse().ok()?,
        tag: parts.next()?.to_string(),
        len: parts.next()?.parse().ok()?,
    })
}

#[test]
fn appends_acknowledged_as_durable_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged = Vec::new();
    for round in 0..8u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (first_ack, first_ack_seen) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(ack) = parse(&line) {
                    if lines.is_empty() {
                        let _ = first_ack.send(());
                    }
                    lines.push(ack);
                }
            }
            lines
        });
        // Once the writer is under way, let it write for a while, then kill it at a moment
        // that varies by round.
        let started = first_ack_seen.recv_timeout(Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(50 + round * 97 % 400));
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        assert!(
            started.is_ok() && !lines.is_empty(),
            "round {round}: the writer acknowledged nothing"
        );
        acknowledged.extend(lines);
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let log = open(dir.path(), config()).await;
        // Everything served is whole, valid (decode checks the CRC) and contiguous.
        let all = read_all(&log, 0, 1 << 20)
            .await
            .expect("read after crashes");
        assert_eq!(all.len() as u64, log.log_end());
        for (i, record) in all.iter().enumerate() {
            assert_eq!(record.offset, i as u64, "offsets are contiguous");
        }
        for ack in &acknowledged {
            assert!(
                ack.last < log.log_end(),
                "{} acknowledged up to {} but the log ends at {}",
                ack.tag,
                ack.last,
                log.log_end()
            );
            for offset in ack.base..=ack.last {
                let record = &all[offset as usize];
                let index = (offset - ack.base) as usize;
                assert_eq!(
                    record.key.as_deref(),
                    Some(ack.tag.as_bytes()),
                    "offset {offset}"
                );
                assert_eq!(
                    record.value.as_deref(),
                    Some(&value(&ack.tag, index, ack.len)[..]),
                    "offset {offset}"
                );
            }
        }
        println!(
            "{} durable appends checked, log end {}",
            acknowledged.len(),
            log.log_end()
        );
    });
}
