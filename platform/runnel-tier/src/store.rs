//! The object store of tiered storage, from configuration, and its startup check.
//!
//! Three kinds: the node's own directory (`runnel dev`), another directory
//! (`file:///dir`), or an S3-compatible store (`s3://bucket/prefix` with an endpoint,
//! region, credentials from configuration or the usual AWS environment variables, path
//! style unless told otherwise, plain HTTP only when allowed). An S3 store's prefix wraps
//! the whole store, so everything Runnel keeps there (segments, manifests, components)
//! lives under it.
//!
//! # Failure behaviour
//! [`open_store`] lists the prefix once, within the request timeout: a missing bucket,
//! refused credentials or an unreachable endpoint fail the node's start with the store's
//! answer, rather than surfacing later as failing uploads.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use crate::TierError;

/// Where the store is; see `[tier]` in `deploy/runnel.toml`.
#[derive(Debug, Clone, Default)]
pub struct StoreConfig {
    /// Empty, `file:///dir` or `s3://bucket/prefix`.
    pub url: String,
    /// The directory of an empty `url`.
    pub default_dir: PathBuf,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub virtual_hosted_style: bool,
    pub allow_http: bool,
    pub request_timeout: Duration,
}

/// An opened store and how to name it in messages.
pub struct OpenedStore {
    pub store: Arc<dyn ObjectStore>,
    /// The URL, or the directory, without credentials.
    pub description: String,
}

/// Opens and checks the store.
pub async fn open_store(config: &StoreConfig) -> Result<OpenedStore, TierError> {
    let opened = if let Some(rest) = config.url.strip_prefix("s3://") {
        open_s3(config, rest)?
    } else {
        let dir = match config.url.strip_prefix("file://") {
            Some(path) => PathBuf::from(path),
            None if config.url.is_empty() => config.default_dir.clone(),
            None => {
                return Err(TierError::Format(format!(
                    "tier.url `{}` is neither empty, file:///dir nor s3://bucket/prefix",
                    config.url
                )));
            }
        };
        std::fs::create_dir_all(&dir).map_err(|e| {
            TierError::Format(format!(
                "create the object store directory {}: {e}",
                dir.display()
            ))
        })?;
        let store = LocalFileSystem::new_with_prefix(&dir)?;
        OpenedStore {
            store: Arc::new(store),
            description: dir.display().to_string(),
        }
    };
    check(&opened, config.request_timeout).await?;
    Ok(opened)
}

fn open_s3(config: &StoreConfig, rest: &str) -> Result<OpenedStore, TierError> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_matches('/');
    if bucket.is_empty() {
        return Err(TierError::Format(format!(
            "tier.url `{}` names no bucket",
            config.url
        )));
    }
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_virtual_hosted_style_request(config.virtual_hosted_style)
        // The client options replace the builder's, allow_http included: set it on them.
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(config.allow_http)
                .with_timeout(config.request_timeout)
                .with_connect_timeout(config.request_timeout.min(Duration::from_secs(5))),
        )
        // Few quick retries: the uploader backs off on its own, and a fetch should fail
        // fast with a retriable error rather than hold the client.
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(500),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: config.request_timeout,
        });
    if let Some(endpoint) = &config.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    let region = config
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .unwrap_or_else(|| "us-east-1".to_string());
    builder = builder.with_region(region);
    if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
        builder = builder
            .with_access_key_id(id)
            .with_secret_access_key(secret);
    }
    let s3 = builder.build()?;
    let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
        Arc::new(s3)
    } else {
        Arc::new(PrefixStore::new(s3, prefix))
    };
    let description = match &config.endpoint {
        Some(endpoint) => format!("{} at {endpoint}", config.url),
        None => config.url.clone(),
    };
    Ok(OpenedStore { store, description })
}

/// One listing of the root, within `timeout`.
async fn check(opened: &OpenedStore, timeout: Duration) -> Result<(), TierError> {
    let listed = tokio::time::timeout(
        timeout,
        opened
            .store
            .list_with_delimiter(Some(&ObjectPath::from("topics"))),
    )
    .await;
    match listed {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(TierError::Format(format!(
            "the object store {} refused a listing: {error}",
            opened.description
        ))),
        Err(_) => Err(TierError::Format(format!(
            "the object store {} did not answer within {timeout:?}",
            opened.description
        ))),
    }
}
