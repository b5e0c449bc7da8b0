//! Pod records on disk: one JSON file per pod under `<root>/pods`, written atomically.

use std::path::{Path, PathBuf};

use crate::error::SandboxError;
use crate::pod::PodRecord;

#[derive(Debug, Clone)]
pub struct PodStore {
    pub dir: PathBuf,
}

impl PodStore {
    pub fn open(dir: PathBuf) -> Result<PodStore, SandboxError> {
        std::fs::create_dir_all(&dir).map_err(|e| SandboxError::io(&dir, e))?;
        Ok(PodStore { dir })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub fn save(&self, record: &PodRecord) -> Result<(), SandboxError> {
        let path = self.path(&record.id);
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| SandboxError::Record {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes).map_err(|e| SandboxError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| SandboxError::io(&path, e))
    }

    pub fn delete(&self, id: &str) -> Result<(), SandboxError> {
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SandboxError::io(&path, e)),
        }
    }

    /// Every readable record; unreadable ones are logged and skipped.
    pub fn load_all(&self) -> Vec<PodRecord> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("json"))
            .filter_map(|p| match read(&p) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "skipping unreadable pod record");
                    None
                }
            })
            .collect()
    }
}

fn read(path: &Path) -> Result<PodRecord, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}
