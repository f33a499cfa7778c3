//! A partition's manifest: the segment files that hold its history in the object store.
//!
//! Each change is a new version, `manifest/<version:020>.json`, written with
//! `PutMode::Create` (every store has it; LocalFileSystem has no compare-and-swap). The
//! highest version is the manifest. Two writers racing for the same version: one wins and
//! the other gets [`ManifestConflict`] and must load the winner's before trying again, so
//! a deposed leader never overwrites what the new one recorded.

use std::sync::Arc;

use futures::TryStreamExt as _;
use object_store::{ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::{PartitionPaths, TierError};

/// One uploaded segment file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSegment {
    /// The first offset the file covers (the local segment's base offset).
    pub base_offset: u64,
    /// The last offset it covers (the local segment's next offset minus one).
    pub last_offset: u64,
    /// The leader epoch it was uploaded in.
    pub leader_epoch: i32,
    /// Its key in the store.
    pub key: String,
    /// Bytes of the Parquet file, and of the segment it was made from.
    pub size: u64,
    pub segment_size: u64,
    pub records: u64,
    /// The largest record timestamp in it, `i64::MIN` without records.
    pub max_timestamp: i64,
}

/// A partition's manifest at one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u64,
    pub topic: String,
    pub partition: i32,
    /// The topic's UUID, so a topic deleted and created again under the same name does
    /// not adopt the old one's files.
    pub topic_id: Option<String>,
    /// In offset order, not overlapping.
    pub segments: Vec<RemoteSegment>,
    /// The offset after the last one ever uploaded, kept when retention drops every
    /// segment (0 in manifests written before it existed).
    #[serde(default)]
    pub end: u64,
    /// The log start DeleteRecords moved the partition to (0 if it never did): nothing
    /// below it is served, and files wholly below it are dropped. Kept here so a node
    /// whose local data is lost does not serve deleted records again.
    #[serde(default)]
    pub start: u64,
}

/// Another writer recorded this version first.
#[derive(Debug)]
pub struct ManifestConflict;

impl Manifest {
    pub fn empty(topic: &str, partition: i32, topic_id: Option<String>) -> Manifest {
        Manifest {
            version: 0,
            topic: topic.to_string(),
            partition,
            topic_id,
            segments: Vec::new(),
            end: 0,
            start: 0,
        }
    }

    /// The offset after the last uploaded one (0 with nothing uploaded).
    pub fn uploaded_end(&self) -> u64 {
        self.segments
            .last()
            .map_or(0, |s| s.last_offset + 1)
            .max(self.end)
    }

    /// The offsets the remote serves, `start..end`: from the first file's base offset, or
    /// from where DeleteRecords moved the start if that is later, to the uploaded end. The
    /// end is never below [`Manifest::start`], so a partition restored from the manifest
    /// never hands out a deleted offset again; the range is empty when nothing is served.
    pub fn served(&self) -> (u64, u64) {
        let end = self.uploaded_end().max(self.start);
        let first = self.segments.first().map_or(end, |s| s.base_offset);
        (first.max(self.start).min(end), end)
    }

    /// The highest version stored under `paths`, or `None` if there is none.
    pub async fn load(
        store: &Arc<dyn ObjectStore>,
        paths: &PartitionPaths,
    ) -> Result<Option<Manifest>, TierError> {
        let listed: Vec<_> = store.list(Some(&paths.manifests())).try_collect().await?;
        let latest = listed
            .iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?;
                let version: u64 = name.strip_suffix(".json")?.parse().ok()?;
                Some(version)
            })
            .max();
        let Some(version) = latest else {
            return Ok(None);
        };
        let bytes = store.get(&paths.manifest(version)).await?.bytes().await?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| TierError::Manifest(format!("version {version} does not parse: {e}")))?;
        if manifest.version != version {
            return Err(TierError::Manifest(format!(
                "the file of version {version} says version {}",
                manifest.version
            )));
        }
        Ok(Some(manifest))
    }

    /// Stores this manifest as the next version after its own; on success `self` is that
    /// version.
    pub async fn store_next(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        paths: &PartitionPaths,
    ) -> Result<Result<(), ManifestConflict>, TierError> {
        let mut next = self.clone();
        next.version = self.version + 1;
        let json = serde_json::to_vec_pretty(&next)
            .map_err(|e| TierError::Manifest(format!("cannot encode: {e}")))?;
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match store
            .put_opts(
                &paths.manifest(next.version),
                PutPayload::from(json),
                options,
            )
            .await
        {
            Ok(_) => {
                *self = next;
                Ok(Ok(()))
            }
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Err(ManifestConflict)),
            Err(error) => Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_files(files: &[(u64, u64)], start: u64) -> Manifest {
        let mut manifest = Manifest::empty("t", 0, None);
        for &(base_offset, last_offset) in files {
            manifest.segments.push(RemoteSegment {
                base_offset,
                last_offset,
                leader_epoch: 0,
                key: format!("{base_offset}"),
                size: 1,
                segment_size: 1,
                records: last_offset - base_offset + 1,
                max_timestamp: 0,
            });
        }
        manifest.end = manifest.uploaded_end();
        manifest.start = start;
        manifest
    }

    #[test]
    fn the_served_range_starts_where_delete_records_moved_it() {
        assert_eq!(with_files(&[], 0).served(), (0, 0));
        assert_eq!(with_files(&[(0, 99), (100, 199)], 0).served(), (0, 200));
        // Inside the first file: the rest of it is served.
        assert_eq!(with_files(&[(100, 199)], 150).served(), (150, 200));
        // Past everything uploaded: nothing is served, and the end moves up so a restored
        // log does not hand out a deleted offset again.
        assert_eq!(with_files(&[(100, 199)], 250).served(), (250, 250));
        // An older manifest without `start` reads as 0.
        let old =
            r#"{"version":3,"topic":"t","partition":0,"topic_id":null,"segments":[],"end":40}"#;
        let parsed: Manifest = serde_json::from_str(old).unwrap();
        assert_eq!((parsed.start, parsed.served()), (0, (40, 40)));
    }
}
