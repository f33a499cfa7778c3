//! Small durable-file helpers: atomic replacement, directory fsync, the directory lock, and
//! running blocking I/O off the runtime threads.

use std::fs::{self, File, TryLockError};
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;

const LOCK_FILE: &str = "lock";
const TEMP_SUFFIX: &str = ".tmp";

/// Runs blocking file I/O on tokio's blocking pool. The closure runs to completion even if
/// the caller is cancelled.
pub(super) async fn blocking<T, F>(work: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| StoreError::TaskStopped(error.to_string()))?
}

/// Locks a mutex whose holders never leave the data half-changed in memory (failures on disk
/// are tracked separately), so a poisoned lock is still usable.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Creates `dir` and its parents, making the new directory entry durable.
pub(super) fn create_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(StoreError::io("create directory", dir))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Makes the directory's entries (created, renamed files) durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("fsync directory", dir))
}

/// Replaces `dir/name` with `bytes` atomically and durably: a crash leaves either the old
/// or the new content, never a mix.
pub(super) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let temp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let path = dir.join(name);
    let mut file = File::create(&temp).map_err(StoreError::io("create", &temp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(StoreError::io("write", &temp))?;
    drop(file);
    fs::rename(&temp, &path).map_err(StoreError::io("rename into place", &path))?;
    sync_dir(dir)
}

/// Writes `value` as JSON to `dir/name` with [`write_atomic`].
pub(super) fn write_json<T: Serialize>(
    dir: &Path,
    name: &str,
    what: &'static str,
    value: &T,
) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value).map_err(|error| StoreError::Encode { what, error })?;
    write_atomic(dir, name, &bytes)
}

/// Reads a whole file, `None` if it does not exist.
pub(super) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(StoreError::Io {
            action: "read",
            path: path.to_path_buf(),
            error,
        }),
    }
}

/// Reads `dir/name` as JSON, `None` if it does not exist; unreadable JSON is corruption.
pub(super) fn read_json<T: DeserializeOwned>(
    dir: &Path,
    name: &str,
) -> Result<Option<T>, StoreError> {
    let path = dir.join(name);
    let Some(bytes) = read_optional(&path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|error| StoreError::Corrupt {
            path,
            reason: error.to_string(),
        })
}

/// Removes replacements a crash left half-written (`*.tmp`).
pub(super) fn remove_temp_files(dir: &Path) -> Result<(), StoreError> {
    let entries = fs::read_dir(dir).map_err(StoreError::io("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(StoreError::io("list", dir))?;
        let path = entry.path();
        if path.to_string_lossy().ends_with(TEMP_SUFFIX) {
            tracing::info!(path = %path.display(), "removing an unfinished replacement file");
            fs::remove_file(&path).map_err(StoreError::io("remove", &path))?;
        }
    }
    Ok(())
}

/// An exclusive lock on the directory, held as long as a store of it is open. It guards
/// against a second opener (another process, or a second open in this one) writing the
/// same files.
#[derive(Debug)]
pub(super) struct DirLock {
    _file: File,
}

impl DirLock {
    pub(super) fn acquire(dir: &Path) -> Result<DirLock, StoreError> {
        let path = dir.join(LOCK_FILE);
        let file = File::create(&path).map_err(StoreError::io("create", &path))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(StoreError::Locked {
                path: dir.to_path_buf(),
            }),
            Err(TryLockError::Error(error)) => Err(StoreError::Io {
                action: "lock",
                path,
                error,
            }),
        }
    }
}
