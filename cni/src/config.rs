//! Network configuration lists: loading `*.conflist`, `*.conf` and `*.json` files from a
//! directory in lexical order, the first valid one winning (as libcni and kubelet do).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::CniError;
use crate::version::Version;

/// Files larger than this are not network configurations.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// A parsed network configuration list. Plugin entries are kept as raw JSON objects so every
/// field a plugin understands reaches it unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    pub name: String,
    pub cni_version: String,
    pub disable_check: bool,
    pub disable_gc: bool,
    pub plugins: Vec<Map<String, Value>>,
    /// Where it was loaded from (empty for one restored from the result cache).
    pub source: PathBuf,
}

impl NetworkConfigList {
    /// Parses a `.conflist` document, or a single-plugin `.conf` document when `single` is set.
    pub fn parse(bytes: &[u8], single: bool, source: &Path) -> Result<Self, CniError> {
        let invalid = |reason: String| CniError::InvalidConfig {
            path: source.to_owned(),
            reason,
        };
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let Value::Object(mut obj) = value else {
            return Err(invalid("not a JSON object".into()));
        };
        // A single-plugin file that is really a list is accepted as a list.
        let single = single && !obj.contains_key("plugins");
        let name = string_field(&obj, "name").ok_or_else(|| invalid("no \"name\"".into()))?;
        if name.is_empty() || name.contains('/') || name.contains('\0') {
            return Err(invalid(format!("invalid network name {name:?}")));
        }
        let cni_version = string_field(&obj, "cniVersion").unwrap_or_else(|| "0.1.0".into());
        Version::parse(&cni_version)
            .ok_or_else(|| invalid(format!("invalid cniVersion {cni_version:?}")))?;
        let disable_check = obj.get("disableCheck").and_then(Value::as_bool) == Some(true);
        let disable_gc = obj.get("disableGC").and_then(Value::as_bool) == Some(true);
        let plugins = if single {
            obj.remove("name");
            obj.remove("cniVersion");
            vec![obj]
        } else {
            match obj.remove("plugins") {
                Some(Value::Array(list)) => list
                    .into_iter()
                    .map(|p| match p {
                        Value::Object(o) => Ok(o),
                        _ => Err(invalid("a plugin entry is not an object".into())),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                _ => return Err(invalid("no \"plugins\" list".into())),
            }
        };
        if plugins.is_empty() {
            return Err(invalid("empty \"plugins\" list".into()));
        }
        for p in &plugins {
            let ty = string_field(p, "type")
                .ok_or_else(|| invalid("a plugin has no \"type\"".into()))?;
            if !valid_plugin_type(&ty) {
                return Err(invalid(format!("invalid plugin type {ty:?}")));
            }
        }
        Ok(NetworkConfigList {
            name,
            cni_version,
            disable_check,
            disable_gc,
            plugins,
            source: source.to_owned(),
        })
    }

    /// The list as a `.conflist` document (what the result cache stores).
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        obj.insert("name".into(), Value::String(self.name.clone()));
        if self.disable_check {
            obj.insert("disableCheck".into(), Value::Bool(true));
        }
        if self.disable_gc {
            obj.insert("disableGC".into(), Value::Bool(true));
        }
        obj.insert(
            "plugins".into(),
            Value::Array(self.plugins.iter().cloned().map(Value::Object).collect()),
        );
        Value::Object(obj)
    }

    /// The `type` of each plugin, in order.
    pub fn plugin_types(&self) -> Vec<String> {
        self.plugins
            .iter()
            .filter_map(|p| string_field(p, "type"))
            .collect()
    }

    pub fn version(&self) -> Version {
        Version::parse(&self.cni_version).unwrap_or(Version(0, 1, 0))
    }

    /// How many leading plugins can be ADDed before the pod is known: plugins whose work
    /// depends on nothing of the pod (not its name, not a capability such as port mappings),
    /// each with no IPAM or `host-local` IPAM. Zero when the list cannot chain results.
    pub fn pod_independent_head(&self) -> usize {
        if !self.version().chains_add() {
            return 0;
        }
        self.plugins
            .iter()
            .take_while(|p| pod_independent(p))
            .count()
    }
}

/// Plugin types that only wire an interface and addresses into the namespace: nothing they do
/// reads `CNI_ARGS` or runtime values of the pod.
const POD_INDEPENDENT_TYPES: &[&str] = &["bridge", "ptp", "macvlan", "ipvlan", "loopback"];

fn pod_independent(plugin: &Map<String, Value>) -> bool {
    let ty = string_field(plugin, "type").unwrap_or_default();
    if !POD_INDEPENDENT_TYPES.contains(&ty.as_str()) {
        return false;
    }
    // A declared capability means runtime values from the pod (ports, IPs, MACs...).
    let asks = match plugin.get("capabilities") {
        Some(Value::Object(caps)) => caps.values().any(|v| v.as_bool() == Some(true)),
        _ => false,
    };
    let ipam_ok = match plugin.get("ipam") {
        None => true,
        Some(Value::Object(ipam)) => {
            ipam.is_empty() || string_field(ipam, "type").as_deref() == Some("host-local")
        }
        Some(_) => false,
    };
    !asks && ipam_ok && !plugin.contains_key("runtimeConfig") && !plugin.contains_key("args")
}

/// A plugin type names a binary in a plugin directory: no path separators, no dot-dot.
pub(crate) fn valid_plugin_type(ty: &str) -> bool {
    !ty.is_empty()
        && ty != "."
        && ty != ".."
        && ty
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

pub(crate) fn string_field(obj: &Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// The candidate files of `dir` in lexical order.
pub fn config_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("conflist" | "conf" | "json")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Loads the first valid network configuration of `dir`. Invalid files are skipped with a
/// warning; when none is valid the error says why the last one was refused.
pub fn load_first(dir: &Path) -> Result<NetworkConfigList, CniError> {
    let mut last_problem = String::new();
    for path in config_files(dir) {
        match load_file(&path) {
            Ok(list) => return Ok(list),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "skipping CNI configuration");
                last_problem = e.to_string();
            }
        }
    }
    Err(CniError::NoNetwork {
        dir: dir.to_owned(),
        detail: last_problem,
    })
}

pub fn load_file(path: &Path) -> Result<NetworkConfigList, CniError> {
    let io = |e: std::io::Error| CniError::InvalidConfig {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() || meta.len() > MAX_CONFIG_BYTES {
        return Err(CniError::InvalidConfig {
            path: path.to_owned(),
            reason: "not a regular file of at most 1 MiB".into(),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let single = path.extension().and_then(|e| e.to_str()) != Some("conflist");
    NetworkConfigList::parse(&bytes, single, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"{"cniVersion":"1.0.0","name":"n1","plugins":[
        {"type":"bridge","bridge":"b0","ipam":{"type":"host-local"}},
        {"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    #[test]
    fn parses_a_list() {
        let l = NetworkConfigList::parse(LIST.as_bytes(), false, Path::new("x")).unwrap();
        assert_eq!(l.name, "n1");
        assert_eq!(l.plugin_types(), ["bridge", "portmap"]);
        assert_eq!(l.version(), Version(1, 0, 0));
        let back =
            NetworkConfigList::parse(l.to_json().to_string().as_bytes(), false, Path::new("y"))
                .unwrap();
        assert_eq!(back.plugins, l.plugins);
    }

    #[test]
    fn single_conf_becomes_a_list() {
        let c = r#"{"cniVersion":"0.4.0","name":"one","type":"bridge","bridge":"b1"}"#;
        let l = NetworkConfigList::parse(c.as_bytes(), true, Path::new("x")).unwrap();
        assert_eq!(l.plugins.len(), 1);
        assert_eq!(l.plugins[0]["bridge"], "b1");
        assert!(!l.plugins[0].contains_key("name"));
    }

    #[test]
    fn refuses_bad_lists() {
        for bad in [
            "not json",
            "[]",
            r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"bridge":"x"}]}"#,
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../../bin/sh"}]}"#,
            r#"{"cniVersion":"one","name":"n","plugins":[{"type":"x"}]}"#,
            r#"{"cniVersion":"1.0.0","name":"a/b","plugins":[{"type":"x"}]}"#,
        ] {
            assert!(
                NetworkConfigList::parse(bad.as_bytes(), false, Path::new("x")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn first_valid_in_lexical_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("05-broken.conflist"), "{").unwrap();
        std::fs::write(
            dir.path().join("20-b.conflist"),
            LIST.replace("\"n1\"", "\"second\""),
        )
        .unwrap();
        std::fs::write(dir.path().join("10-a.conflist"), LIST).unwrap();
        std::fs::write(dir.path().join("00-ignored.txt"), LIST).unwrap();
        let l = load_first(dir.path()).unwrap();
        assert_eq!(l.name, "n1");
        assert!(l.source.ends_with("10-a.conflist"));
    }

    #[test]
    fn pod_independent_head_stops_at_the_first_plugin_that_needs_the_pod() {
        let head = |plugins: &str, version: &str| {
            let doc = format!(r#"{{"cniVersion":"{version}","name":"n","plugins":[{plugins}]}}"#);
            NetworkConfigList::parse(doc.as_bytes(), false, Path::new("x"))
                .unwrap()
                .pod_independent_head()
        };
        let bridge = r#"{"type":"bridge","ipMasq":true,"ipam":{"type":"host-local"}}"#;
        let portmap = r#"{"type":"portmap","capabilities":{"portMappings":true}}"#;
        let lo = r#"{"type":"loopback"}"#;
        assert_eq!(head(&format!("{bridge},{portmap},{lo}"), "1.0.0"), 1);
        assert_eq!(head(&format!("{lo},{bridge},{lo}"), "1.0.0"), 3);
        // Results do not chain before 0.3.0.
        assert_eq!(head(&format!("{bridge},{portmap}"), "0.2.0"), 0);
        for first in [
            // IPAM that could depend on the pod (static IPs from CNI_ARGS, DHCP leases).
            r#"{"type":"bridge","ipam":{"type":"static"}}"#,
            r#"{"type":"bridge","ipam":{"type":"dhcp"}}"#,
            // A capability: runtime values of the pod.
            r#"{"type":"bridge","capabilities":{"ips":true},"ipam":{"type":"host-local"}}"#,
            r#"{"type":"bridge","args":{"cni":{"ips":["10.0.0.9"]}}}"#,
            // Plugins not known to ignore the pod's identity.
            r#"{"type":"calico"}"#,
            r#"{"type":"flannel","delegate":{}}"#,
            portmap,
        ] {
            assert_eq!(head(&format!("{first},{lo}"), "1.0.0"), 0, "{first}");
        }
        // A capability declared but off asks for nothing.
        let off = r#"{"type":"bridge","capabilities":{"ips":false},"ipam":{"type":"host-local"}}"#;
        assert_eq!(head(off, "1.0.0"), 1);
    }

    #[test]
    fn empty_dir_is_no_network() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("05-broken.conflist"), "{").unwrap();
        let e = load_first(dir.path()).unwrap_err();
        assert!(matches!(e, CniError::NoNetwork { .. }));
        assert!(e.to_string().contains("05-broken"), "{e}");
    }
}
