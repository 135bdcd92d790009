//! The store conformance suite against SQLite: a fresh database file per test.

use assay::store::sqlite::SqliteStore;
use assay::store::Store;
use std::sync::Arc;

async fn fresh() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("assay.db"))
        .await
        .unwrap();
    (Arc::new(store), dir)
}

assay::store_conformance_tests!(fresh());
