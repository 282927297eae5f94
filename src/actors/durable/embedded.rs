//! The embedded checkpoint store: one redb database file on local disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use redb::{Database, ReadableTable, TableDefinition};

use super::{CheckpointStore, DurableError, RunState};

const CHECKPOINTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("checkpoints");

/// Checkpoints in a redb database on local disk: durable runs on one machine with no server.
///
/// Each save is one write transaction committed with redb's default durability (fsync), so a
/// checkpoint survives the process being killed, and the machine losing power, once `save`
/// returns. One file serves many runs; only one process may open it at a time.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").field("path", &self.path).finish()
    }
}

fn store_err(e: impl std::fmt::Display) -> DurableError {
    DurableError::Store(e.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<EmbeddedStore, DurableError> {
        let path = path.as_ref().to_path_buf();
        let db = Database::create(&path).map_err(|e| DurableError::Store(format!("{}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(store_err)?;
        tx.open_table(CHECKPOINTS).map_err(store_err)?;
        tx.commit().map_err(store_err)?;
        Ok(EmbeddedStore { db: Arc::new(db), path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, DurableError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, DurableError>> {
        let db = Arc::clone(&self.db);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&db))
                .await
                .map_err(|e| DurableError::Store(format!("the store task failed: {e}")))?
        })
    }
}

impl CheckpointStore for EmbeddedStore {
    fn load<'a>(&'a self, run_id: &'a str) -> BoxFuture<'a, Result<Option<RunState>, DurableError>> {
        let id = run_id.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(store_err)?;
            let table = tx.open_table(CHECKPOINTS).map_err(store_err)?;
            match table.get(id.as_str()).map_err(store_err)? {
                Some(v) => RunState::from_bytes(v.value()).map(Some),
                None => Ok(None),
            }
        })
    }

    fn save<'a>(&'a self, state: &'a RunState) -> BoxFuture<'a, Result<(), DurableError>> {
        let bytes = state.to_bytes();
        let id = state.run_id.clone();
        Box::pin(async move {
            let bytes = bytes?;
            self.blocking(move |db| {
                let tx = db.begin_write().map_err(store_err)?;
                {
                    let mut table = tx.open_table(CHECKPOINTS).map_err(store_err)?;
                    table.insert(id.as_str(), bytes.as_slice()).map_err(store_err)?;
                }
                tx.commit().map_err(store_err)
            })
            .await
        })
    }

    fn remove<'a>(&'a self, run_id: &'a str) -> BoxFuture<'a, Result<(), DurableError>> {
        let id = run_id.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(store_err)?;
            {
                let mut table = tx.open_table(CHECKPOINTS).map_err(store_err)?;
                table.remove(id.as_str()).map_err(store_err)?;
            }
            tx.commit().map_err(store_err)
        })
    }

    fn run_ids(&self) -> BoxFuture<'_, Result<Vec<String>, DurableError>> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(store_err)?;
            let table = tx.open_table(CHECKPOINTS).map_err(store_err)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(store_err)? {
                let (k, _) = row.map_err(store_err)?;
                out.push(k.value().to_owned());
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::durable::{RunRequest, Submission};

    #[tokio::test]
    async fn saves_loads_lists_and_removes() {
        let dir = std::env::temp_dir().join(format!("flowtrace-redb-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = EmbeddedStore::open(dir.join("cp.redb")).unwrap();
        let req: RunRequest = Submission::new("f").store(serde_json::json!({"a": 1})).into_request();
        let mut state = RunState::initial(&req).unwrap();
        state.next = Some("B".into());
        store.save(&state).await.unwrap();
        assert_eq!(store.load(&req.run_id).await.unwrap(), Some(state.clone()));
        assert_eq!(store.run_ids().await.unwrap(), vec![req.run_id.clone()]);
        drop(store);
        // Reopened, the checkpoint is still there.
        let store = EmbeddedStore::open(dir.join("cp.redb")).unwrap();
        assert_eq!(store.load(&req.run_id).await.unwrap(), Some(state));
        store.remove(&req.run_id).await.unwrap();
        assert_eq!(store.load(&req.run_id).await.unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
