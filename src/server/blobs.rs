//! Content-addressed blob storage under the data directory: `blobs/sha256/ab/abcdef…`.
//! Uploads stream to a temporary file while being hashed and only become visible, by an
//! atomic rename, once the hash matches the name they were uploaded under.

use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("`{0}` is not a sha256 hex digest")]
    BadDigest(String),
    #[error("content hashes to {actual}, not {expected}")]
    HashMismatch { expected: String, actual: String },
    #[error("upload interrupted: {0}")]
    Interrupted(String),
    #[error("the blob is larger than {limit} bytes, the most this server stores in one (assay server --max-blob-bytes)")]
    TooLarge { limit: u64 },
    #[error("blob storage is full: {used} of {quota} bytes are used (assay server --blob-quota raises it; unreferenced blobs are collected after an hour)")]
    QuotaExceeded { used: u64, quota: u64 },
    #[error("blob storage: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
    max_bytes: u64,
    /// The most all blobs together may take; `None`: no quota.
    quota: Option<u64>,
    /// Bytes stored now (blobs and uploads in progress), counted at open and kept since.
    used: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// The quota unless told otherwise (`assay server --blob-quota`).
pub const DEFAULT_BLOB_QUOTA: u64 = 100 * 1024 * 1024 * 1024;

/// An unreferenced blob is kept this long: an upload comes seconds before the report
/// that names it, and a blob no report names after this is garbage (a cut-off worker's, or
/// a hostile one's).
pub const UNREFERENCED_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// The largest blob stored unless told otherwise: an app archive or a tool's output is
/// megabytes.
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 1024 * 1024 * 1024;

pub fn is_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl BlobStore {
    pub fn open(root: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(root.join("sha256"))?;
        std::fs::create_dir_all(root.join("tmp"))?;
        // Uploads a killed server left half written.
        for entry in std::fs::read_dir(root.join("tmp"))?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        let used: u64 = stored_files(root)?.iter().map(|(_, size, _)| size).sum();
        Ok(BlobStore {
            root: root.to_path_buf(),
            max_bytes: DEFAULT_MAX_BLOB_BYTES,
            quota: Some(DEFAULT_BLOB_QUOTA),
            used: std::sync::Arc::new(used.into()),
        })
    }

    /// All blobs together may take at most `quota` bytes (`None`: no quota).
    pub fn with_quota(mut self, quota: Option<u64>) -> Self {
        self.quota = quota;
        self
    }

    /// Bytes stored now.
    pub fn used(&self) -> u64 {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Delete every blob older than `grace` that `referenced` does not name (it is given
    /// digests in batches and returns those still referenced). Returns (blobs, bytes)
    /// deleted. A blob uploaded meanwhile is younger than the grace, so it is never taken.
    pub async fn collect_garbage<F, Fut>(
        &self,
        grace: std::time::Duration,
        referenced: F,
    ) -> std::io::Result<(usize, u64)>
    where
        F: Fn(Vec<String>) -> Fut,
        Fut: std::future::Future<Output = Option<std::collections::BTreeSet<String>>>,
    {
        let root = self.root.clone();
        let files = tokio::task::spawn_blocking(move || stored_files(&root))
            .await
            .map_err(std::io::Error::other)??;
        let cutoff = std::time::SystemTime::now() - grace;
        let old: Vec<(String, u64)> = files
            .into_iter()
            .filter(|(_, _, modified)| *modified < cutoff)
            .map(|(digest, size, _)| (digest, size))
            .collect();
        let (mut removed, mut bytes) = (0, 0);
        for batch in old.chunks(500) {
            let digests: Vec<String> = batch.iter().map(|(d, _)| d.clone()).collect();
            // The store could not say: keep everything this round.
            let Some(keep) = referenced(digests).await else {
                break;
            };
            for (digest, size) in batch {
                if keep.contains(digest) {
                    continue;
                }
                let path = self.root.join("sha256").join(&digest[..2]).join(digest);
                if tokio::fs::remove_file(&path).await.is_ok() {
                    removed += 1;
                    bytes += size;
                    self.used
                        .fetch_sub(*size, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        Ok((removed, bytes))
    }

    /// Refuse blobs over `max_bytes`.
    pub fn with_limit(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    pub fn path(&self, digest: &str) -> Result<PathBuf, BlobError> {
        if !is_digest(digest) {
            return Err(BlobError::BadDigest(digest.to_string()));
        }
        Ok(self.root.join("sha256").join(&digest[..2]).join(digest))
    }

    pub async fn contains(&self, digest: &str) -> Result<Option<u64>, BlobError> {
        match tokio::fs::metadata(self.path(digest)?).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Store a stream under its expected digest; returns the size. Storing what is
    /// already there is cheap and harmless.
    pub async fn put<S, E>(&self, expected: &str, mut body: S) -> Result<u64, BlobError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let target = self.path(expected)?;
        let mut counted_bytes = 0u64;
        let counted = &mut counted_bytes;
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}.part", uuid::Uuid::new_v4()));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| BlobError::Interrupted(e.to_string()))?;
                size += chunk.len() as u64;
                if size > self.max_bytes {
                    return Err(BlobError::TooLarge {
                        limit: self.max_bytes,
                    });
                }
                // Counted while it streams, so that many uploads at once cannot pass the
                // quota together.
                let before = self
                    .used
                    .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                *counted += chunk.len() as u64;
                if let Some(quota) = self.quota {
                    if before + chunk.len() as u64 > quota {
                        return Err(BlobError::QuotaExceeded {
                            used: before,
                            quota,
                        });
                    }
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await?;
            }
            file.sync_all().await?;
            let actual = hex::encode(hasher.finalize());
            if actual != expected {
                return Err(BlobError::HashMismatch {
                    expected: expected.to_string(),
                    actual,
                });
            }
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            let existed = tokio::fs::metadata(&target).await.is_ok();
            tokio::fs::rename(&tmp, &target).await?;
            // The same content again replaces itself: counted once.
            Ok((size, existed))
        }
        .await;
        match result {
            Ok((size, existed)) => {
                if existed {
                    self.used
                        .fetch_sub(counted_bytes, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(size)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                self.used
                    .fetch_sub(counted_bytes, std::sync::atomic::Ordering::Relaxed);
                Err(e)
            }
        }
    }
}

/// Every stored blob: (digest, size, modified).
fn stored_files(root: &Path) -> std::io::Result<Vec<(String, u64, std::time::SystemTime)>> {
    let mut files = Vec::new();
    for shard in std::fs::read_dir(root.join("sha256"))?.flatten() {
        let Ok(entries) = std::fs::read_dir(shard.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            if is_digest(&name) && meta.is_file() {
                let modified = meta.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                files.push((name, meta.len(), modified));
            }
        }
    }
    Ok(files)
}

/// Hash a file without reading it into memory.
pub async fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<bytes::Bytes, String>> + Unpin {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(bytes::Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn a_blob_over_the_limit_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap().with_limit(8);
        let digest = hex::encode(Sha256::digest(b"hello world"));
        let e = blobs
            .put(&digest, chunks(&[b"hello ", b"world"]))
            .await
            .unwrap_err();
        assert!(matches!(e, BlobError::TooLarge { limit: 8 }), "{e}");
        assert!(e.to_string().contains("--max-blob-bytes"));
        assert_eq!(blobs.contains(&digest).await.unwrap(), None);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        let small = hex::encode(Sha256::digest(b"hi"));
        assert_eq!(blobs.put(&small, chunks(&[b"hi"])).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn the_quota_holds_and_garbage_goes() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap().with_quota(Some(20));
        let a = hex::encode(Sha256::digest(b"0123456789"));
        blobs.put(&a, chunks(&[b"01234", b"56789"])).await.unwrap();
        blobs.put(&a, chunks(&[b"0123456789"])).await.unwrap();
        assert_eq!(blobs.used(), 10, "the same content is counted once");
        let b = hex::encode(Sha256::digest(b"abcdefghijk"));
        let e = blobs.put(&b, chunks(&[b"abcdefghijk"])).await.unwrap_err();
        assert!(
            matches!(e, BlobError::QuotaExceeded { quota: 20, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("--blob-quota"), "{e}");
        assert_eq!(blobs.used(), 10, "a refused upload leaves nothing counted");
        assert_eq!(blobs.contains(&b).await.unwrap(), None);
        let c = hex::encode(Sha256::digest(b"xy"));
        blobs.put(&c, chunks(&[b"xy"])).await.unwrap();
        // Young blobs are never collected; old unreferenced ones are.
        let none = blobs
            .collect_garbage(std::time::Duration::from_secs(3600), |_| async {
                Some(Default::default())
            })
            .await
            .unwrap();
        assert_eq!(none, (0, 0));
        let keep_a = a.clone();
        let gone = blobs
            .collect_garbage(std::time::Duration::ZERO, move |digests| {
                let keep_a = keep_a.clone();
                async move { Some(digests.into_iter().filter(|d| *d == keep_a).collect()) }
            })
            .await
            .unwrap();
        assert_eq!(gone, (1, 2));
        assert_eq!(blobs.contains(&a).await.unwrap(), Some(10));
        assert_eq!(blobs.contains(&c).await.unwrap(), None);
        assert_eq!(blobs.used(), 10);
        // Counted again from disk when opened.
        assert_eq!(BlobStore::open(dir.path()).unwrap().used(), 10);
    }

    #[tokio::test]
    async fn stores_by_digest_and_rejects_mismatches() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let digest = hex::encode(Sha256::digest(b"hello world"));
        assert_eq!(
            blobs
                .put(&digest, chunks(&[b"hello ", b"world"]))
                .await
                .unwrap(),
            11
        );
        assert_eq!(blobs.contains(&digest).await.unwrap(), Some(11));
        let wrong = hex::encode(Sha256::digest(b"other"));
        let err = blobs
            .put(&wrong, chunks(&[b"hello world"]))
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::HashMismatch { .. }));
        assert_eq!(blobs.contains(&wrong).await.unwrap(), None);
        assert!(
            std::fs::read_dir(dir.path().join("tmp"))
                .unwrap()
                .next()
                .is_none(),
            "temp files cleaned"
        );
        assert!(matches!(
            blobs.path("../etc/passwd"),
            Err(BlobError::BadDigest(_))
        ));
    }
}
