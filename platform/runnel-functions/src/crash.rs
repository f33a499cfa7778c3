//! Crash points, for tests of what survives a crash at an exact place.
//!
//! `RUNNEL_CRASH_AT=<point>[@<n>]` aborts the process the `n`-th time (default: the
//! first) execution reaches [`point`] with that name, as a power cut or `kill -9` would
//! stop it there: no destructor runs and nothing more is written. Unset, a point costs
//! one load of an initialized `OnceLock`.
//!
//! The points:
//! - `function-outputs-written`: an executor wrote a batch's outputs and not yet its kv
//!   changes and position;
//! - `source-progress-stored`: a source stored a poll's progress (with its batches) and
//!   has not written the batches yet.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The variable naming the crash point.
pub const VARIABLE: &str = "RUNNEL_CRASH_AT";

struct CrashAt {
    point: String,
    nth: u64,
    reached: AtomicU64,
}

static CRASH_AT: OnceLock<Option<CrashAt>> = OnceLock::new();

fn parse(value: &str) -> Option<CrashAt> {
    let (point, nth) = match value.split_once('@') {
        Some((point, nth)) => (point, nth.parse().ok()?),
        None => (value, 1),
    };
    Some(CrashAt {
        point: point.to_string(),
        nth,
        reached: AtomicU64::new(0),
    })
}

/// Aborts here if `RUNNEL_CRASH_AT` names this point and this is its `n`-th time.
pub(crate) fn point(name: &str) {
    let crash = CRASH_AT.get_or_init(|| {
        let value = std::env::var(VARIABLE).ok()?;
        let parsed = parse(&value);
        if parsed.is_none() {
            tracing::warn!(%value, "{VARIABLE} is not <point>[@<n>]; ignored");
        }
        parsed
    });
    let Some(crash) = crash else { return };
    if crash.point != name {
        return;
    }
    let reached = crash.reached.fetch_add(1, Ordering::Relaxed) + 1;
    if reached == crash.nth {
        eprintln!("{VARIABLE}: aborting at {name} (reached {reached} times)");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn points_parse_with_and_without_a_count() {
        let at = parse("function-outputs-written@3").unwrap();
        assert_eq!((at.point.as_str(), at.nth), ("function-outputs-written", 3));
        assert_eq!(parse("x").unwrap().nth, 1);
        assert!(parse("x@many").is_none());
    }
}
