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

    /// Every readable record, for start-up: an unreadable one (corrupt, truncated, from an
    /// incompatible version) is moved to `<dir>/quarantine/` and logged, so it neither stops
    /// the daemon nor is lost; `*.json.tmp` files of an interrupted save are removed.
    pub fn recover(&self) -> Vec<PodRecord> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut records = Vec::new();
        for path in entries.flatten().map(|e| e.path()) {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.ends_with(".json.tmp") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match read(&path) {
                Ok(r) if format!("{}.json", r.id) == name => records.push(r),
                Ok(r) => self.quarantine(&path, &format!("record of {} in the wrong file", r.id)),
                Err(e) => self.quarantine(&path, &e),
            }
        }
        records
    }

    fn quarantine(&self, path: &Path, reason: &str) {
        let qdir = self.dir.join("quarantine");
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dest = qdir.join(format!("{name}.{stamp}"));
        match std::fs::create_dir_all(&qdir).and_then(|()| std::fs::rename(path, &dest)) {
            Ok(()) => tracing::error!(
                path = %path.display(),
                moved_to = %dest.display(),
                error = reason,
                "unreadable pod record quarantined"
            ),
            Err(e) => tracing::error!(
                path = %path.display(),
                error = reason,
                move_error = %e,
                "unreadable pod record skipped (cannot quarantine it)"
            ),
        }
    }

    /// Every readable record, without changing anything on disk (for operator tools);
    /// unreadable ones are logged and skipped.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recover_quarantines_unreadable_records_and_drops_temp_files() {
        let tmp = tempfile::tempdir().unwrap();
        let store = PodStore::open(tmp.path().join("pods")).unwrap();
        std::fs::write(store.dir.join("abc.json"), b"{\"id\": \"ab").unwrap();
        std::fs::write(store.dir.join("def.json.tmp"), b"{}").unwrap();
        assert!(store.load_all().is_empty());
        // load_all changes nothing on disk.
        assert!(store.dir.join("abc.json").exists());
        assert!(store.recover().is_empty());
        assert!(!store.dir.join("abc.json").exists());
        assert!(!store.dir.join("def.json.tmp").exists());
        let q: Vec<_> = std::fs::read_dir(store.dir.join("quarantine"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(q.len(), 1);
        assert!(q[0].starts_with("abc.json."));
    }
}
