//! openraft's storage conformance suite against the controller's on-disk stores, each test in
//! a fresh temporary directory.

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use runnel_controller::{LogStore, NodeId, StateMachineStore, TypeConfig, open_storage};
use tempfile::TempDir;

struct TempDirStores;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for TempDirStores {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|error| {
            StorageError::from_io_error(
                openraft::ErrorSubject::Store,
                openraft::ErrorVerb::Write,
                error,
            )
        })?;
        let (log_store, state_machine) = open_storage(&dir.path().join("controller"))
            .await
            .map_err(|error| openraft::StorageIOError::write(&error))?;
        Ok((dir, log_store, state_machine))
    }
}

#[test]
fn the_stores_pass_openraft_conformance_suite() -> anyhow::Result<()> {
    Suite::test_all(TempDirStores)?;
    Ok(())
}
