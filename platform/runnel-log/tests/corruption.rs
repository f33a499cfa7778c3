//! Damaged files: truncation at every byte and a bit flip in every byte of a partition's
//! segments. The log must never panic and never serve a record that differs from what was
//! written: a torn tail of the active segment is cut back to whole batches, and damage to a
//! sealed segment makes the partition refuse to open or to serve.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use runnel_config::TopicConfig;
use runnel_log::{LogError, batch};

fn config() -> TopicConfig {
    TopicConfig {
        segment_bytes: 700,
        index_interval_bytes: 150,
        ..TopicConfig::default()
    }
}

struct Pristine {
    _root: tempfile::TempDir,
    dir: PathBuf,
    records: Vec<Seen>,
    /// Segment files, oldest first; the last is the active one.
    segments: Vec<PathBuf>,
}

/// A closed partition with two sealed segments and an active one with several batches.
fn pristine(runtime: &tokio::runtime::Runtime) -> Pristine {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("p");
    let records = runtime.block_on(async {
        let log = open(&dir, config()).await;
        let mut i = 0i64;
        while log.segments().len() < 3 || log.segments().last().unwrap().size < 400 {
            let batch = batch_of(&[
                record(
                    1_000 + i,
                    Some(format!("key-{i}").as_bytes()),
                    Some(&vec![i as u8; 20 + (i as usize % 30)]),
                ),
                record(1_001 + i, None, Some(b"second")),
            ]);
            log.append(batch).await.unwrap();
            i += 1;
        }
        let records = read_all(&log, 0, 1 << 20).await.unwrap();
        log.close().await.unwrap();
        records
    });
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    assert_eq!(segments.len(), 3);
    Pristine {
        _root: root,
        dir,
        records,
        segments,
    }
}

fn damaged_copy(
    pristine: &Pristine,
    scratch: &Path,
    crashed: bool,
    damage: impl FnOnce(&Path),
) -> PathBuf {
    let dir = scratch.join(format!("copy-{}", rand_suffix()));
    copy_dir(&pristine.dir, &dir);
    if crashed {
        std::fs::remove_file(dir.join(".clean-shutdown")).unwrap();
    }
    damage(&dir);
    dir
}

/// Compares offsets first, so a failure prints something readable.
fn assert_same(seen: &[Seen], expected: &[Seen], what: String) {
    let offsets = |records: &[Seen]| records.iter().map(|r| r.offset).collect::<Vec<_>>();
    assert_eq!(offsets(seen), offsets(expected), "{what}: offsets");
    assert!(seen == expected, "{what}: contents differ");
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Offsets of the records held by whole batches in the first `len` bytes of a segment file.
fn whole_batch_records(file: &Path, len: usize) -> usize {
    let bytes = std::fs::read(file).unwrap();
    batch::batch_positions(&bytes[..len])
        .map(|(_, h)| h.records_count as usize)
        .sum()
}

#[test]
fn truncating_the_active_segment_anywhere_keeps_exactly_the_whole_batches_before_the_cut() {
    let runtime = runtime();
    let pristine = pristine(&runtime);
    let scratch = tempfile::tempdir().unwrap();
    let active = pristine.segments.last().unwrap().clone();
    let active_name = active.file_name().unwrap().to_owned();
    let active_len = std::fs::metadata(&active).unwrap().len() as usize;
    let sealed_records = pristine.records.len() - whole_batch_records(&active, active_len);
    for crashed in [true, false] {
        for cut in 0..=active_len {
            let dir = damaged_copy(&pristine, scratch.path(), crashed, |dir| {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join(&active_name))
                    .unwrap();
                file.set_len(cut as u64).unwrap();
            });
            let expected = sealed_records + whole_batch_records(&active, cut);
            runtime.block_on(async {
                let log = open(&dir, config()).await;
                assert_eq!(log.log_end(), expected as u64, "cut at {cut}");
                let seen = read_all(&log, 0, 300).await.unwrap();
                assert_same(
                    &seen,
                    &pristine.records[..expected],
                    format!("cut at {cut}"),
                );
                let appended = log.append(simple_batch(1, 5, 1)).await.unwrap();
                assert_eq!(appended.base_offset, expected as u64);
                log.close().await.unwrap();
            });
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}

#[test]
fn a_sealed_segment_cut_short_anywhere_refuses_to_open() {
    let runtime = runtime();
    let pristine = pristine(&runtime);
    let scratch = tempfile::tempdir().unwrap();
    for sealed in &pristine.segments[..2] {
        let name = sealed.file_name().unwrap().to_owned();
        let len = std::fs::metadata(sealed).unwrap().len();
        for cut in 0..len {
            let dir = damaged_copy(&pristine, scratch.path(), cut % 2 == 0, |dir| {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join(&name))
                    .unwrap();
                file.set_len(cut).unwrap();
            });
            let result = runtime.block_on(runnel_log::PartitionLog::open(
                &dir,
                config(),
                Default::default(),
            ));
            match result {
                Err(LogError::CorruptSegment { .. }) => {}
                Err(other) => panic!("cut {cut}: unexpected error {other}"),
                Ok(_) => panic!("sealed segment cut at {cut} of {len} bytes was opened"),
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}

/// Flips one bit in every byte of `file_name` and checks what the log then serves.
fn flip_every_byte(
    file_name: &str,
    crashed: bool,
    check: impl Fn(usize, Result<Vec<Seen>, LogError>, &[Seen]),
) {
    let runtime = runtime();
    let pristine = pristine(&runtime);
    let scratch = tempfile::tempdir().unwrap();
    let len = std::fs::metadata(pristine.dir.join(file_name))
        .unwrap()
        .len() as usize;
    for byte in 0..len {
        let dir = damaged_copy(&pristine, scratch.path(), crashed, |dir| {
            let path = dir.join(file_name);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[byte] ^= 1 << (byte % 8);
            std::fs::write(&path, bytes).unwrap();
        });
        let outcome = runtime.block_on(async {
            let log = runnel_log::PartitionLog::open(&dir, config(), Default::default()).await?;
            let first = read_all(&log, 0, 250).await;
            if first.is_err() {
                // Once a reader met corruption, the partition stays offline.
                assert!(
                    matches!(log.read(0, 100).await, Err(LogError::Offline { .. })),
                    "byte {byte}"
                );
            }
            log.close().await.unwrap();
            first
        });
        check(byte, outcome, &pristine.records);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

fn name_of(pristine_index: usize, extension: &str) -> String {
    let runtime = runtime();
    let pristine = pristine(&runtime);
    let stem = pristine.segments[pristine_index]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    format!("{stem}.{extension}")
}

/// Damage must be refused, or be invisible (bits outside the CRC that do not change what a
/// record is, such as the partition leader epoch).
fn refused_or_identical(byte: usize, outcome: Result<Vec<Seen>, LogError>, original: &[Seen]) {
    match outcome {
        Err(LogError::CorruptSegment { .. }) => {}
        Err(other) => panic!("byte {byte}: unexpected error {other}"),
        Ok(seen) => assert_same(
            &seen,
            original,
            format!("byte {byte}: damaged data was served"),
        ),
    }
}

#[test]
fn bit_flips_in_a_sealed_segment_are_never_served() {
    flip_every_byte(&name_of(1, "log"), false, refused_or_identical);
    flip_every_byte(&name_of(0, "log"), true, refused_or_identical);
}

#[test]
fn bit_flips_in_index_files_are_rebuilt_or_refused() {
    flip_every_byte(&name_of(0, "index"), false, refused_or_identical);
    flip_every_byte(&name_of(1, "timeindex"), true, refused_or_identical);
    flip_every_byte(&name_of(2, "index"), true, refused_or_identical);
}

#[test]
fn bit_flips_in_the_active_segment_after_a_crash_serve_only_true_records() {
    flip_every_byte(
        &name_of(2, "log"),
        true,
        |byte, outcome, original| match outcome {
            Err(LogError::CorruptSegment { .. }) => {}
            Err(other) => panic!("byte {byte}: unexpected error {other}"),
            // Recovery cuts the tail at the damaged batch: a prefix of the truth remains.
            Ok(seen) => assert_eq!(
                seen,
                original[..seen.len()],
                "byte {byte}: damaged data was served"
            ),
        },
    );
}
