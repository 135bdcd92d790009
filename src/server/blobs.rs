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
    #[error("blob storage: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
    max_bytes: u64,
}

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
        Ok(BlobStore {
            root: root.to_path_buf(),
            max_bytes: DEFAULT_MAX_BLOB_BYTES,
        })
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
            tokio::fs::rename(&tmp, &target).await?;
            Ok(size)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
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
