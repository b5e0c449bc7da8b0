//! The content store: blobs addressed by digest under `blobs/sha256/<hex>`, written through an
//! ingest file that is verified (size and digest) before it is renamed into place, and removed
//! if the write is abandoned. Unpacked layers live next to it under `layers/sha256/<diff hex>`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::ImageError;

/// Validates `sha256:<64 lowercase hex>` and returns the hex part. Digests come from untrusted
/// manifests and become file names, so nothing else is accepted.
pub(crate) fn digest_hex(digest: &str) -> Result<&str, ImageError> {
    let bad = |reason: &str| ImageError::InvalidDigest {
        digest: digest.chars().take(100).collect(),
        reason: reason.to_owned(),
    };
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| bad("only sha256 digests are supported"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(bad("not 64 lowercase hex digits"));
    }
    Ok(hex)
}

pub(crate) fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A unique name for a temporary file or directory: the process id and 64 random bits (from
/// the kernel; the time as a fallback should the call fail).
pub(crate) fn temp_name(prefix: &str) -> String {
    let mut random = [0u8; 8];
    let filled = rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())
        .is_ok_and(|n| n == random.len());
    if !filled {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        random = nanos.to_le_bytes();
    }
    format!("{prefix}-{}-{}", std::process::id(), hex::encode(random))
}

#[derive(Debug, Clone)]
pub(crate) struct ContentStore {
    dir: PathBuf,
}

impl ContentStore {
    pub(crate) fn open(dir: &Path) -> Result<ContentStore, ImageError> {
        let store = Self::open_shared(dir)?;
        // Leftovers of a previous run that stopped mid-download or mid-unpack.
        for sub in ["ingest", "tmp"] {
            let p = dir.join(sub);
            if let Ok(entries) = std::fs::read_dir(&p) {
                for e in entries.flatten() {
                    remove_any(&e.path());
                }
            }
        }
        Ok(store)
    }

    /// Opens the store without touching work in progress (another process may be using it).
    pub(crate) fn open_shared(dir: &Path) -> Result<ContentStore, ImageError> {
        for sub in ["blobs/sha256", "layers/sha256", "ingest", "tmp"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(|e| ImageError::io(&p, e))?;
        }
        Ok(ContentStore {
            dir: dir.to_owned(),
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.dir.join("blobs/sha256").join(digest_hex(digest)?))
    }

    pub(crate) fn layer_path(&self, diff_id: &str) -> Result<PathBuf, ImageError> {
        Ok(self.dir.join("layers/sha256").join(digest_hex(diff_id)?))
    }

    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.dir.join("blobs/sha256")
    }

    pub(crate) fn layers_dir(&self) -> PathBuf {
        self.dir.join("layers/sha256")
    }

    /// A fresh directory on the store's filesystem, for an unpack that is renamed into place.
    pub(crate) fn temp_dir(&self) -> Result<PathBuf, ImageError> {
        let p = self.dir.join("tmp").join(temp_name("unpack"));
        std::fs::create_dir(&p).map_err(|e| ImageError::io(&p, e))?;
        Ok(p)
    }

    /// Whether the blob is present with the expected size.
    pub(crate) fn has_blob(&self, digest: &str, size: u64) -> bool {
        self.blob_path(digest)
            .ok()
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|m| m.is_file() && m.len() == size)
    }

    /// Reads a blob of at most `max` bytes (manifests, configs).
    pub(crate) fn read_blob(&self, digest: &str, max: u64) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(digest)?;
        let f = std::fs::File::open(&path).map_err(|e| ImageError::io(&path, e))?;
        let mut out = Vec::new();
        f.take(max + 1)
            .read_to_end(&mut out)
            .map_err(|e| ImageError::io(&path, e))?;
        if out.len() as u64 > max {
            return Err(ImageError::InvalidManifest {
                reference: digest.to_owned(),
                reason: format!("larger than {max} bytes"),
            });
        }
        Ok(out)
    }

    /// Stores small content held in memory, verifying it against `expected` when given.
    pub(crate) fn write_blob(
        &self,
        bytes: &[u8],
        expected: Option<&str>,
    ) -> Result<String, ImageError> {
        let digest = sha256_of(bytes);
        if let Some(exp) = expected {
            digest_hex(exp)?;
            if exp != digest {
                return Err(ImageError::DigestMismatch {
                    expected: exp.to_owned(),
                    actual: digest,
                });
            }
        }
        if self.has_blob(&digest, bytes.len() as u64) {
            return Ok(digest);
        }
        let mut ingest = SyncIngest::new(self)?;
        ingest.write(bytes)?;
        ingest.commit(self, &digest, bytes.len() as u64)?;
        Ok(digest)
    }

    /// Copies everything `reader` yields into the store verifying it against `expected` when given;
    /// `origin` names the source in errors.
    pub(crate) fn import_reader(
        &self,
        mut reader: impl Read,
        origin: &Path,
        expected: Option<&str>,
    ) -> Result<(String, u64), ImageError> {
        if let Some(exp) = expected {
            digest_hex(exp)?;
        }
        let mut ingest = SyncIngest::new(self)?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| ImageError::io(origin, e))?;
            if n == 0 {
                break;
            }
            ingest.write(&buf[..n])?;
        }
        let digest = format!("sha256:{}", hex::encode(ingest.hasher.clone().finalize()));
        if let Some(exp) = expected {
            if exp != digest {
                return Err(ImageError::DigestMismatch {
                    expected: exp.to_owned(),
                    actual: digest,
                });
            }
        }
        let size = ingest.size;
        if self.has_blob(&digest, size) {
            return Ok((digest, size));
        }
        ingest.commit(self, &digest, size)?;
        Ok((digest, size))
    }

    /// Starts an asynchronous download of `digest`.
    pub(crate) async fn ingest(&self, digest: &str, size: u64) -> Result<Ingest, ImageError> {
        digest_hex(digest)?;
        let path = self.dir.join("ingest").join(temp_name("blob"));
        // The file is made and guarded on the blocking thread: a pull dropped while the create
        // is under way (a client's deadline) drops the task's result, guard included, once
        // the file exists, where a guard made after the await was never made and the file
        // stayed in `ingest` until the next start.
        let (guard, file) = tokio::task::spawn_blocking(move || {
            let guard = TempPath(Some(path.clone()));
            std::fs::File::create(&path)
                .map(|file| (guard, file))
                .map_err(|e| ImageError::io(&path, e))
        })
        .await
        .map_err(|e| ImageError::Task {
            reason: e.to_string(),
        })??;
        Ok(Ingest {
            guard,
            file: tokio::io::BufWriter::with_capacity(256 * 1024, tokio::fs::File::from_std(file)),
            hasher: Sha256::new(),
            written: 0,
            digest: digest.to_owned(),
            size,
        })
    }
}

/// Removes a file or directory tree, ignoring errors (used for clean-up only).
pub(crate) fn remove_any(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// Deletes its path when dropped unless disarmed: abandoned downloads and unpacks leave nothing.
pub(crate) struct TempPath(pub(crate) Option<PathBuf>);

impl TempPath {
    pub(crate) fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            remove_any(&p);
        }
    }
}

/// A blob being downloaded: bytes are hashed and counted as they arrive.
pub(crate) struct Ingest {
    guard: TempPath,
    file: tokio::io::BufWriter<tokio::fs::File>,
    hasher: Sha256,
    written: u64,
    digest: String,
    size: u64,
}

impl Ingest {
    fn path(&self) -> PathBuf {
        self.guard.0.clone().unwrap_or_default()
    }

    pub(crate) async fn write(&mut self, chunk: &[u8]) -> Result<(), ImageError> {
        self.written += chunk.len() as u64;
        if self.written > self.size {
            return Err(ImageError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: self.written,
            });
        }
        self.hasher.update(chunk);
        let path = self.path();
        self.file
            .write_all(chunk)
            .await
            .map_err(|e| ImageError::io(path, e))
    }

    /// Verifies size and digest and moves the blob into the store.
    pub(crate) async fn commit(mut self, store: &ContentStore) -> Result<(), ImageError> {
        if self.written != self.size {
            return Err(ImageError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: self.written,
            });
        }
        let actual = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
        if actual != self.digest {
            return Err(ImageError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        let path = self.path();
        self.file
            .flush()
            .await
            .map_err(|e| ImageError::io(&path, e))?;
        self.file
            .get_mut()
            .sync_all()
            .await
            .map_err(|e| ImageError::io(&path, e))?;
        let dest = store.blob_path(&self.digest)?;
        tokio::fs::rename(&path, &dest)
            .await
            .map_err(|e| ImageError::io(&dest, e))?;
        self.guard.disarm();
        Ok(())
    }
}

struct SyncIngest {
    guard: TempPath,
    file: std::fs::File,
    hasher: Sha256,
    size: u64,
}

impl SyncIngest {
    fn new(store: &ContentStore) -> Result<SyncIngest, ImageError> {
        let path = store.dir.join("ingest").join(temp_name("blob"));
        let file = std::fs::File::create(&path).map_err(|e| ImageError::io(&path, e))?;
        Ok(SyncIngest {
            guard: TempPath(Some(path)),
            file,
            hasher: Sha256::new(),
            size: 0,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        let path = self.guard.0.clone().unwrap_or_default();
        self.file
            .write_all(bytes)
            .map_err(|e| ImageError::io(path, e))
    }

    fn commit(mut self, store: &ContentStore, digest: &str, size: u64) -> Result<(), ImageError> {
        if size != self.size {
            return Err(ImageError::SizeMismatch {
                digest: digest.to_owned(),
                expected: size,
                actual: self.size,
            });
        }
        let path = self.guard.0.clone().unwrap_or_default();
        self.file.sync_all().map_err(|e| ImageError::io(&path, e))?;
        let dest = store.blob_path(digest)?;
        std::fs::rename(&path, &dest).map_err(|e| ImageError::io(&dest, e))?;
        self.guard.disarm();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_must_be_sha256_hex() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert!(digest_hex(&good).is_ok());
        for bad in [
            "sha256:../../etc/passwd".to_owned(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha512:{}", "a".repeat(128)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha256:{}/", "a".repeat(64)),
        ] {
            assert!(digest_hex(&bad).is_err(), "{bad}");
        }
    }

    /// A pull dropped (a client's deadline) while its ingest file is being made leaves no file
    /// once the blocking create has run.
    #[tokio::test]
    async fn an_ingest_dropped_while_its_file_is_made_leaves_none() {
        use futures::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let digest = sha256_of(b"x");
        for _ in 0..20 {
            // Polled once, so the create is under way, then dropped.
            if let Some(ingest) = store.ingest(&digest, 1).now_or_never() {
                drop(ingest.unwrap());
            }
        }
        // The blocking creates run on their own; each made a file within microseconds.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert_eq!(
            std::fs::read_dir(dir.path().join("ingest"))
                .unwrap()
                .count(),
            0
        );
    }

    #[tokio::test]
    async fn ingest_verifies_size_and_digest_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let data = b"hello world";
        let digest = sha256_of(data);

        // Right content: committed.
        let mut i = store.ingest(&digest, data.len() as u64).await.unwrap();
        i.write(data).await.unwrap();
        i.commit(&store).await.unwrap();
        assert!(store.has_blob(&digest, data.len() as u64));

        // Wrong content: digest mismatch, nothing left behind.
        let other = sha256_of(b"other content");
        let mut i = store.ingest(&other, data.len() as u64).await.unwrap();
        i.write(data).await.unwrap();
        let e = i.commit(&store).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::FailedPrecondition);
        assert!(!store.blob_path(&other).unwrap().exists());

        // Too much content: refused while streaming.
        let mut i = store.ingest(&other, 3).await.unwrap();
        assert!(matches!(
            i.write(data).await,
            Err(ImageError::SizeMismatch { .. })
        ));
        drop(i);
        // Abandoned (dropped) ingests leave no file.
        let mut i = store.ingest(&other, 100).await.unwrap();
        i.write(b"partial").await.unwrap();
        drop(i);
        assert_eq!(
            std::fs::read_dir(dir.path().join("ingest"))
                .unwrap()
                .count(),
            0
        );

        // In-memory writes are verified too.
        assert!(store.write_blob(data, Some(&other)).is_err());
        assert_eq!(store.write_blob(data, Some(&digest)).unwrap(), digest);
    }
}
