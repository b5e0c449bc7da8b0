//! The result cache: what ADD was called with and what it returned, one JSON file per
//! attachment, so DEL after a restart (or after the configuration changed on disk) gets the
//! exact network configuration, arguments and result the attachment was made with.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::CniError;

/// One cached attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheEntry {
    /// Format marker; a file with another kind is ignored.
    pub kind: String,
    pub container_id: String,
    pub if_name: String,
    pub network_name: String,
    /// The whole network configuration list the attachment was made with.
    pub config: Value,
    pub cni_args: String,
    pub capability_args: Map<String, Value>,
    /// The final result of ADD, `null` until it completed.
    pub result: Value,
}

pub const KIND: &str = "cridCniCacheV1";

/// The cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    pub dir: PathBuf,
}

impl Cache {
    fn path(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.dir.join(format!(
            "{}-{}-{}.json",
            safe(network),
            safe(container_id),
            safe(ifname)
        ))
    }

    pub fn write(&self, entry: &CacheEntry) -> Result<(), CniError> {
        let path = self.path(&entry.network_name, &entry.container_id, &entry.if_name);
        let err = |source| CniError::Cache {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        let bytes = serde_json::to_vec_pretty(entry).map_err(|e| err(e.into()))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }

    /// The entry for an attachment on any network, if one exists.
    pub fn find(&self, container_id: &str, ifname: &str) -> Option<CacheEntry> {
        let suffix = format!("-{}-{}.json", safe(container_id), safe(ifname));
        let entries = std::fs::read_dir(&self.dir).ok()?;
        for e in entries.flatten() {
            let name = e.file_name();
            if !name.to_string_lossy().ends_with(&suffix) {
                continue;
            }
            match read(&e.path()) {
                Some(entry) if entry.container_id == container_id && entry.if_name == ifname => {
                    return Some(entry);
                }
                _ => {}
            }
        }
        None
    }

    /// Every cached attachment (for GC).
    pub fn all(&self) -> Vec<CacheEntry> {
        std::fs::read_dir(&self.dir)
            .map(|entries| entries.flatten().filter_map(|e| read(&e.path())).collect())
            .unwrap_or_default()
    }

    pub fn remove(&self, network: &str, container_id: &str, ifname: &str) -> Result<(), CniError> {
        let path = self.path(network, container_id, ifname);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CniError::Cache { path, source }),
        }
    }
}

fn read(path: &Path) -> Option<CacheEntry> {
    if path.extension().and_then(|e| e.to_str()) != Some("json") {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice::<CacheEntry>(&bytes) {
        Ok(e) if e.kind == KIND => Some(e),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable CNI cache entry");
            None
        }
    }
}

/// File-name-safe rendering: anything but `[A-Za-z0-9._]` becomes `_`.
fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(net: &str, id: &str) -> CacheEntry {
        CacheEntry {
            kind: KIND.into(),
            container_id: id.into(),
            if_name: "eth0".into(),
            network_name: net.into(),
            config: serde_json::json!({"name": net, "plugins": []}),
            cni_args: "K8S_POD_NAME=x".into(),
            capability_args: Map::new(),
            result: serde_json::json!({"cniVersion":"1.0.0"}),
        }
    }

    #[test]
    fn write_find_remove() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache {
            dir: dir.path().join("c"),
        };
        let e = entry("net-a", "abc");
        cache.write(&e).unwrap();
        cache.write(&entry("net-b", "other")).unwrap();
        assert_eq!(cache.find("abc", "eth0"), Some(e));
        assert_eq!(cache.find("abc", "eth1"), None);
        assert_eq!(cache.all().len(), 2);
        cache.remove("net-a", "abc", "eth0").unwrap();
        cache.remove("net-a", "abc", "eth0").unwrap();
        assert_eq!(cache.find("abc", "eth0"), None);
    }

    #[test]
    fn hostile_names_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache {
            dir: dir.path().to_owned(),
        };
        let p = cache.path("../../etc", "../x", "/eth0");
        assert_eq!(p.parent(), Some(dir.path()));
    }
}
