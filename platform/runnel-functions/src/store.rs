//! Components in the object store, content-addressed: a component's key is
//! `functions/components/<sha256>.wasm`, so the same bytes deployed twice (or by two
//! functions) are stored once, and a key always names the same bytes.
//!
//! Writes are create-only (`PutMode::Create`, which every store supports): a second put of
//! the same component finds it there and succeeds. A read checks the bytes against their
//! digest, so a truncated or altered object is an error, never a different function.
//!
//! The store is the node's object store: `runnel dev` uses a directory,
//! `<data dir>/objects` (object_store's LocalFileSystem).

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload};

#[derive(Debug, thiserror::Error)]
pub enum ComponentStoreError {
    #[error("no component {0} in the object store")]
    NotFound(String),
    #[error("the stored component {digest} does not match its digest (read {actual})")]
    Corrupt { digest: String, actual: String },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("open the object store in {path}: {cause}")]
    Open { path: String, cause: String },
}

impl ComponentStoreError {
    /// Whether the same call may succeed later (the store was unreachable or failing).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ComponentStoreError::Store(_))
    }
}

/// Function components in an object store.
#[derive(Clone, Debug)]
pub struct ComponentStore {
    store: Arc<dyn ObjectStore>,
}

impl ComponentStore {
    pub fn new(store: Arc<dyn ObjectStore>) -> ComponentStore {
        ComponentStore { store }
    }

    /// A store in the local directory `dir` (created if missing).
    pub fn local(dir: &std::path::Path) -> Result<ComponentStore, ComponentStoreError> {
        let open = |cause: String| ComponentStoreError::Open {
            path: dir.display().to_string(),
            cause,
        };
        std::fs::create_dir_all(dir).map_err(|e| open(e.to_string()))?;
        let local = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| open(e.to_string()))?;
        Ok(ComponentStore::new(Arc::new(local)))
    }

    fn key(digest: &str) -> ObjectPath {
        ObjectPath::from(format!("functions/components/{digest}.wasm"))
    }

    /// Stores `bytes` under their digest, which it returns.
    pub async fn put(&self, bytes: Bytes) -> Result<String, ComponentStoreError> {
        let digest = crate::digest(&bytes);
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&Self::key(&digest), PutPayload::from(bytes), options)
            .await
        {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(digest),
            Err(error) => Err(error.into()),
        }
    }

    /// The component stored under `digest`, checked against it.
    pub async fn get(&self, digest: &str) -> Result<Bytes, ComponentStoreError> {
        let bytes = match self.store.get(&Self::key(digest)).await {
            Ok(found) => found.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(ComponentStoreError::NotFound(digest.to_string()));
            }
            Err(error) => return Err(error.into()),
        };
        let actual = crate::digest(&bytes);
        if actual != digest {
            return Err(ComponentStoreError::Corrupt {
                digest: digest.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }
}
