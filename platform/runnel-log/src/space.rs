//! The free-disk floor: appends are refused, with a retriable error, while the disk holding
//! the data directory has less free space than the floor, so a full disk never stops a
//! write halfway or takes a partition offline.
//!
//! The free space is looked up by [`DiskSpace::refresh`] (the node does it every
//! [`REFRESH_INTERVAL`]); between two looks every accepted append is subtracted from it, so
//! a burst of appends cannot run past the floor before the next look. Deleting segments
//! (retention, or local deletion after tiering) frees space again, and appends are taken
//! again at the next look.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::LogError;

/// How often the node looks up the free space.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// Where the free space comes from: the file system, or a test's numbers.
pub type Probe = Box<dyn Fn(&Path) -> std::io::Result<u64> + Send + Sync>;

/// The free space of one directory's disk against a floor.
pub struct DiskSpace {
    dir: PathBuf,
    floor: u64,
    /// Bytes free at the last look, less what was accepted since.
    free: AtomicU64,
    probe: Probe,
    /// Where the free bytes and refusals are reported, once attached.
    metrics: std::sync::OnceLock<crate::LogMetrics>,
    /// Signalled when an append is refused, so retention runs now rather than at its
    /// next interval.
    low: tokio::sync::Notify,
}

impl DiskSpace {
    /// A floor of `floor` bytes on the disk holding `dir`, looked up once now. A floor of 0
    /// refuses nothing.
    pub fn new(dir: impl Into<PathBuf>, floor: u64) -> Result<DiskSpace, LogError> {
        DiskSpace::with_probe(dir, floor, Box::new(available_bytes))
    }

    /// As [`DiskSpace::new`], with the free space from `probe`.
    pub fn with_probe(
        dir: impl Into<PathBuf>,
        floor: u64,
        probe: Probe,
    ) -> Result<DiskSpace, LogError> {
        let dir = dir.into();
        let free = probe(&dir).map_err(|source| {
            LogError::io(format!("find the free space of {}", dir.display()), source)
        })?;
        Ok(DiskSpace {
            dir,
            floor,
            free: AtomicU64::new(free),
            probe,
            metrics: std::sync::OnceLock::new(),
            low: tokio::sync::Notify::new(),
        })
    }

    /// Reports the free bytes, the floor and refused appends to `metrics` from now on.
    /// Set once; a second call is ignored.
    pub fn report_to(&self, metrics: &crate::LogMetrics) {
        metrics.disk_floor_bytes.set(gauge_value(self.floor));
        metrics.disk_free_bytes.set(gauge_value(self.free()));
        let _ = self.metrics.set(metrics.clone());
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Bytes free at the last look, less what was accepted since.
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// Looks up the free space again. A failed look keeps the last estimate.
    pub fn refresh(&self) {
        match (self.probe)(&self.dir) {
            Ok(free) => {
                self.free.store(free, Ordering::Relaxed);
                if let Some(metrics) = self.metrics.get() {
                    metrics.disk_free_bytes.set(gauge_value(free));
                }
            }
            Err(error) => {
                tracing::warn!(dir = %self.dir.display(), %error, "cannot find the free disk space")
            }
        }
    }

    /// Accepts an append of `bytes`, or refuses it if it would leave less than the floor.
    pub fn reserve(&self, bytes: u64) -> Result<(), LogError> {
        if self.floor == 0 {
            return Ok(());
        }
        let taken = self
            .free
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |free| {
                (free.saturating_sub(bytes) >= self.floor).then(|| free - bytes)
            });
        match taken {
            Ok(_) => Ok(()),
            Err(free) => {
                if let Some(metrics) = self.metrics.get() {
                    metrics.appends_refused_disk_full.inc();
                }
                self.low.notify_one();
                Err(LogError::DiskFull {
                    free,
                    floor: self.floor,
                })
            }
        }
    }

    /// Waits until an append is refused (at once if one was since the last wait).
    pub async fn refused(&self) {
        self.low.notified().await;
    }

    /// Refreshes every [`REFRESH_INTERVAL`] for as long as anything else holds `self`.
    pub fn watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let space = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(REFRESH_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(looked) = space.upgrade() else {
                    return;
                };
                let _ = tokio::task::spawn_blocking(move || looked.refresh()).await;
            }
        })
    }
}

fn gauge_value(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// The bytes an unprivileged writer may still use on the file system holding `dir`.
pub fn available_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("the path holds a NUL byte"))?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `stats` is written by the call before it is read.
    let result = unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `stats`.
    let stats = unsafe { stats.assume_init() };
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn space_with(free: Arc<Mutex<u64>>, floor: u64) -> DiskSpace {
        DiskSpace::with_probe("/", floor, Box::new(move |_| Ok(*free.lock().unwrap()))).unwrap()
    }

    #[test]
    fn appends_stop_at_the_floor_and_resume_when_space_is_freed() {
        let free = Arc::new(Mutex::new(1_000u64));
        let space = space_with(free.clone(), 600);
        space.reserve(300).unwrap();
        // 700 left: 200 more would go below 600.
        let refused = space.reserve(200).unwrap_err();
        assert!(refused.is_retryable(), "{refused}");
        assert!(
            matches!(
                refused,
                LogError::DiskFull {
                    free: 700,
                    floor: 600
                }
            ),
            "{refused}"
        );
        space.reserve(100).unwrap();
        assert_eq!(space.free(), 600);
        *free.lock().unwrap() = 10_000;
        space.refresh();
        space.reserve(5_000).unwrap();
    }

    #[test]
    fn a_zero_floor_refuses_nothing() {
        let space = space_with(Arc::new(Mutex::new(0)), 0);
        space.reserve(u64::MAX).unwrap();
    }

    #[test]
    fn the_real_disk_reports_some_space() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available_bytes(dir.path()).unwrap() > 0);
        assert!(available_bytes(&dir.path().join("missing")).is_err());
    }
}
