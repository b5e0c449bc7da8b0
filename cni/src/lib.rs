//! CNI for crid: finds network configuration lists and plugins, runs ADD/CHECK/DEL/STATUS/GC as
//! the CNI spec defines, caches results for DEL after a restart, and creates the network
//! namespaces pods live in. It decides nothing about pods; `sandbox` calls it.

pub mod cache;
pub mod config;
mod error;
pub mod exec;
pub mod netlink;
pub mod netns;
mod prepare;
pub mod result;
pub mod version;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::cache::{Cache, CacheEntry};
pub use crate::config::NetworkConfigList;
pub use crate::error::CniError;
pub use crate::exec::Executor;
pub use crate::prepare::Prepared;
pub use crate::result::CniResult;
pub use crate::version::Version;

/// Where configuration, plugins and the cache live, and how long one plugin call may take.
#[derive(Debug, Clone)]
pub struct CniSettings {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    pub cache_dir: PathBuf,
    pub timeout: Duration,
}

/// The Kubernetes identity passed to plugins in `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PodArgs {
    pub namespace: String,
    pub name: String,
    pub infra_container_id: String,
    pub uid: String,
}

impl PodArgs {
    /// `IgnoreUnknown=1;K8S_POD_NAMESPACE=…;K8S_POD_NAME=…;K8S_POD_INFRA_CONTAINER_ID=…;K8S_POD_UID=…`.
    /// Values holding `;`, `=` or control characters would change the meaning of the string
    /// and are refused.
    pub fn to_cni_args(&self) -> Result<String, CniError> {
        let pairs = [
            ("K8S_POD_NAMESPACE", &self.namespace),
            ("K8S_POD_NAME", &self.name),
            ("K8S_POD_INFRA_CONTAINER_ID", &self.infra_container_id),
            ("K8S_POD_UID", &self.uid),
        ];
        let mut out = String::from("IgnoreUnknown=1");
        for (key, value) in pairs {
            if value
                .chars()
                .any(|c| c == ';' || c == '=' || c.is_control())
            {
                return Err(CniError::InvalidArgument {
                    name: key,
                    reason: format!("{value:?} holds ';', '=' or a control character"),
                });
            }
            out.push(';');
            out.push_str(key);
            out.push('=');
            out.push_str(value);
        }
        Ok(out)
    }
}

/// One entry of the `portMappings` capability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: i32,
    pub container_port: i32,
    /// "tcp", "udp" or "sctp".
    pub protocol: String,
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// The `bandwidth` capability, bits per second and bits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    pub ingress_rate: u64,
    pub ingress_burst: u64,
    pub egress_rate: u64,
    pub egress_burst: u64,
}

/// The `dns` capability.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DnsCapability {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// Runtime values a plugin gets in `runtimeConfig` when its `capabilities` ask for them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Capabilities {
    pub port_mappings: Vec<PortMapping>,
    pub bandwidth: Option<Bandwidth>,
    pub dns: Option<DnsCapability>,
}

impl Capabilities {
    pub fn to_map(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if !self.port_mappings.is_empty() {
            m.insert("portMappings".into(), json(&self.port_mappings));
        }
        if let Some(b) = &self.bandwidth {
            m.insert("bandwidth".into(), json(b));
        }
        if let Some(d) = &self.dns {
            m.insert("dns".into(), json(d));
        }
        m
    }
}

fn json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// What to attach: a container (the pod) in a network namespace.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub pod: PodArgs,
    pub capabilities: Capabilities,
}

/// The stdin config of one plugin call: the plugin's entry plus the list's name and version,
/// the capabilities it asked for as `runtimeConfig`, and the previous result.
pub fn plugin_config(
    list_name: &str,
    cni_version: &str,
    plugin: &Map<String, Value>,
    capability_args: &Map<String, Value>,
    prev_result: Option<&Value>,
) -> Value {
    let mut obj = plugin.clone();
    obj.insert("name".into(), Value::String(list_name.to_owned()));
    obj.insert("cniVersion".into(), Value::String(cni_version.to_owned()));
    let mut runtime = Map::new();
    if let Some(Value::Object(caps)) = plugin.get("capabilities") {
        for (cap, enabled) in caps {
            if enabled.as_bool() == Some(true) {
                if let Some(v) = capability_args.get(cap) {
                    runtime.insert(cap.clone(), v.clone());
                }
            }
        }
    }
    if runtime.is_empty() {
        obj.remove("runtimeConfig");
    } else {
        obj.insert("runtimeConfig".into(), Value::Object(runtime));
    }
    match prev_result {
        Some(prev) if !prev.is_null() => {
            obj.insert("prevResult".into(), prev.clone());
        }
        _ => {
            obj.remove("prevResult");
        }
    }
    Value::Object(obj)
}

/// CNI as crid uses it.
#[derive(Debug, Clone)]
pub struct Cni {
    settings: CniSettings,
    exec: Executor,
    cache: Cache,
}

impl Cni {
    pub fn new(settings: CniSettings) -> Cni {
        Cni {
            exec: Executor {
                bin_dirs: settings.bin_dirs.clone(),
                timeout: settings.timeout,
            },
            cache: Cache {
                dir: settings.cache_dir.clone(),
            },
            settings,
        }
    }

    pub fn settings(&self) -> &CniSettings {
        &self.settings
    }

    /// The network pods are attached to: the first valid list of the configuration directory.
    pub fn network(&self) -> Result<NetworkConfigList, CniError> {
        config::load_first(&self.settings.conf_dir)
    }

    /// Whether pods can be networked: a valid list whose plugins all exist, and (from CNI
    /// 1.1.0) whose plugins all answer STATUS successfully.
    pub async fn status(&self) -> Result<(), CniError> {
        let list = self.network()?;
        for ty in list.plugin_types() {
            self.exec.find(&ty)?;
        }
        if list.version().has_status_gc() {
            for plugin in &list.plugins {
                let ty = config::string_field(plugin, "type").unwrap_or_default();
                let cfg = plugin_config(&list.name, &list.cni_version, plugin, &Map::new(), None);
                self.exec
                    .run(&exec::Call::network("STATUS", &ty, &cfg))
                    .await?;
            }
        }
        Ok(())
    }

    /// ADD through the whole list. On failure the plugins are called with DEL (so a partial
    /// attachment is undone) and the error of the failing plugin is returned.
    pub async fn add(&self, att: &Attachment) -> Result<CniResult, CniError> {
        let list = self.network()?;
        self.add_from(&list, 0, None, att)
            .await
            .map(|(_, parsed)| parsed)
    }

    /// ADD through `list.plugins[start..]`, `prev` being the result of the plugins before
    /// (already ADDed), with the cache entry and the undo on failure of [`Cni::add`]. Returns
    /// the last plugin's result as printed and parsed.
    async fn add_from(
        &self,
        list: &NetworkConfigList,
        start: usize,
        prev: Option<Value>,
        att: &Attachment,
    ) -> Result<(Value, CniResult), CniError> {
        // A missing plugin is found before anything is attached.
        for ty in list.plugin_types() {
            self.exec.find(&ty)?;
        }
        let args = att.pod.to_cni_args()?;
        let caps = att.capabilities.to_map();
        let mut entry = CacheEntry {
            kind: cache::KIND.into(),
            container_id: att.container_id.clone(),
            if_name: att.ifname.clone(),
            network_name: list.name.clone(),
            config: list.to_json(),
            cni_args: args.clone(),
            capability_args: caps.clone(),
            result: prev.clone().unwrap_or(Value::Null),
        };
        // Written before the first plugin runs, so a crash mid-ADD still leaves DEL the config.
        self.cache.write(&entry)?;
        let outcome = self
            .add_chain(list, start, prev, att, &args, &caps)
            .await
            .and_then(|result| {
                CniResult::parse(&result)
                    .map(|parsed| (result, parsed))
                    .map_err(|reason| CniError::BadResult {
                        plugin: list.plugin_types().last().cloned().unwrap_or_default(),
                        reason,
                    })
            });
        match outcome {
            Ok((result, parsed)) => {
                entry.result = result.clone();
                self.cache.write(&entry)?;
                Ok((result, parsed))
            }
            Err(e) => {
                self.undo(&entry, &att.netns).await;
                Err(e)
            }
        }
    }

    async fn undo(&self, entry: &CacheEntry, netns: &Path) {
        if let Err(e) = self.del_entry(entry, Some(netns)).await {
            tracing::warn!(container_id = %entry.container_id, error = %e, "DEL after a failed ADD failed");
        }
    }

    /// ADD through `list.plugins[start..]`, `prev` being the result of the plugins before.
    async fn add_chain(
        &self,
        list: &NetworkConfigList,
        start: usize,
        mut prev: Option<Value>,
        att: &Attachment,
        args: &str,
        caps: &Map<String, Value>,
    ) -> Result<Value, CniError> {
        let chains = list.version().chains_add();
        for plugin in list.plugins.iter().skip(start) {
            let ty = config::string_field(plugin, "type").unwrap_or_default();
            if ty == "loopback" && chains && prev.is_some() {
                // The reference `loopback` plugin's ADD sets `lo` up and passes the previous
                // result on unchanged: done here, it costs a netlink request instead of
                // starting a Go binary. (CHECK and DEL still run the plugin.)
                let pins = [(netns::NsKind::Net, att.netns.clone())];
                tokio::task::spawn_blocking(move || netns::run_in(&pins, netlink::loopback_up))
                    .await
                    .map_err(|e| CniError::BadResult {
                        plugin: ty.clone(),
                        reason: format!("built-in loopback task failed: {e}"),
                    })??;
                continue;
            }
            let cfg = plugin_config(
                &list.name,
                &list.cni_version,
                plugin,
                caps,
                if chains { prev.as_ref() } else { None },
            );
            let out = self
                .exec
                .run(&exec::Call {
                    command: "ADD",
                    plugin: &ty,
                    container_id: &att.container_id,
                    netns: Some(&att.netns),
                    ifname: &att.ifname,
                    args,
                    config: &cfg,
                })
                .await?;
            match out {
                Some(v) => prev = Some(v),
                None if prev.is_none() => {
                    return Err(CniError::BadResult {
                        plugin: ty,
                        reason: "ADD printed no result".into(),
                    });
                }
                None => {}
            }
        }
        prev.ok_or_else(|| CniError::BadResult {
            plugin: String::new(),
            reason: "empty plugin list".into(),
        })
    }

    /// CHECK through the whole list with the cached result (CNI 0.4.0 and later, unless the
    /// list disables it).
    pub async fn check(
        &self,
        container_id: &str,
        netns: &Path,
        ifname: &str,
    ) -> Result<(), CniError> {
        let Some(entry) = self.cache.find(container_id, ifname) else {
            return Err(CniError::InvalidArgument {
                name: "container_id",
                reason: format!("no cached attachment for {container_id}"),
            });
        };
        let list = cached_list(&entry)?;
        if !list.version().has_check() || list.disable_check {
            return Ok(());
        }
        for plugin in &list.plugins {
            let ty = config::string_field(plugin, "type").unwrap_or_default();
            let cfg = plugin_config(
                &list.name,
                &list.cni_version,
                plugin,
                &entry.capability_args,
                Some(&entry.result),
            );
            self.exec
                .run(&exec::Call {
                    command: "CHECK",
                    plugin: &ty,
                    container_id,
                    netns: Some(netns),
                    ifname,
                    args: &entry.cni_args,
                    config: &cfg,
                })
                .await?;
        }
        Ok(())
    }

    /// DEL of an attachment, with the configuration it was made with (from the cache) or, when
    /// none is cached, the current one. `netns` is `None` when the namespace is already gone.
    /// Every plugin is called even when one fails; the first error is returned and the cache
    /// entry kept for a retry.
    pub async fn del(
        &self,
        container_id: &str,
        netns: Option<&Path>,
        ifname: &str,
        pod: &PodArgs,
    ) -> Result<(), CniError> {
        let entry = match self.cache.find(container_id, ifname) {
            Some(e) => e,
            None => {
                let list = match self.network() {
                    Ok(l) => l,
                    // Nothing was cached and nothing is configured: nothing to undo.
                    Err(CniError::NoNetwork { .. }) => return Ok(()),
                    Err(e) => return Err(e),
                };
                CacheEntry {
                    kind: cache::KIND.into(),
                    container_id: container_id.to_owned(),
                    if_name: ifname.to_owned(),
                    network_name: list.name.clone(),
                    config: list.to_json(),
                    cni_args: pod.to_cni_args().unwrap_or_default(),
                    capability_args: Map::new(),
                    result: Value::Null,
                }
            }
        };
        self.del_entry(&entry, netns).await
    }

    async fn del_entry(&self, entry: &CacheEntry, netns: Option<&Path>) -> Result<(), CniError> {
        let list = cached_list(entry)?;
        let with_result = list.version().has_check();
        let mut first_error = None;
        for plugin in list.plugins.iter().rev() {
            let ty = config::string_field(plugin, "type").unwrap_or_default();
            let cfg = plugin_config(
                &list.name,
                &list.cni_version,
                plugin,
                &entry.capability_args,
                if with_result {
                    Some(&entry.result)
                } else {
                    None
                },
            );
            let call = exec::Call {
                command: "DEL",
                plugin: &ty,
                container_id: &entry.container_id,
                netns,
                ifname: &entry.if_name,
                args: &entry.cni_args,
                config: &cfg,
            };
            if let Err(e) = self.exec.run(&call).await {
                tracing::warn!(container_id = %entry.container_id, plugin = %ty, error = %e, "CNI DEL failed");
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => self
                .cache
                .remove(&entry.network_name, &entry.container_id, &entry.if_name),
        }
    }

    /// Drops the cached attachment without calling any plugin: for giving up on a DEL that
    /// keeps failing.
    pub fn forget(&self, container_id: &str, ifname: &str) -> Result<(), CniError> {
        match self.cache.find(container_id, ifname) {
            Some(e) => self.cache.remove(&e.network_name, container_id, ifname),
            None => Ok(()),
        }
    }

    /// Attachments in the cache, as (container id, interface name).
    pub fn cached_attachments(&self) -> Vec<(String, String)> {
        self.cache
            .all()
            .into_iter()
            .map(|e| (e.container_id, e.if_name))
            .collect()
    }

    /// GC (CNI 1.1.0): tells the current network's plugins which attachments are still valid,
    /// so they can release whatever else they hold. Cache entries of attachments not in
    /// `valid` are dropped. Older versions only get the cache pruned.
    pub async fn gc(&self, valid: &[(String, String)]) -> Result<(), CniError> {
        let keep = |id: &str, ifname: &str| valid.iter().any(|(c, i)| c == id && i == ifname);
        for e in self.cache.all() {
            if !keep(&e.container_id, &e.if_name) {
                // DEL first, so plugins that predate GC release the attachment too.
                if self.del_entry(&e, None).await.is_err() {
                    let _ = self
                        .cache
                        .remove(&e.network_name, &e.container_id, &e.if_name);
                }
            }
        }
        let Ok(list) = self.network() else {
            return Ok(());
        };
        if !list.version().has_status_gc() || list.disable_gc {
            return Ok(());
        }
        let attachments: Vec<Value> = valid
            .iter()
            .map(|(c, i)| serde_json::json!({"containerID": c, "ifname": i}))
            .collect();
        for plugin in &list.plugins {
            let ty = config::string_field(plugin, "type").unwrap_or_default();
            let mut cfg = plugin_config(&list.name, &list.cni_version, plugin, &Map::new(), None);
            if let Value::Object(o) = &mut cfg {
                o.insert(
                    "cni.dev/valid-attachments".into(),
                    Value::Array(attachments.clone()),
                );
            }
            self.exec.run(&exec::Call::network("GC", &ty, &cfg)).await?;
        }
        Ok(())
    }
}

fn cached_list(entry: &CacheEntry) -> Result<NetworkConfigList, CniError> {
    let bytes = serde_json::to_vec(&entry.config).unwrap_or_default();
    NetworkConfigList::parse(&bytes, false, Path::new("<cache>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_order_and_injection() {
        let p = PodArgs {
            namespace: "default".into(),
            name: "web".into(),
            infra_container_id: "abc".into(),
            uid: "u-1".into(),
        };
        assert_eq!(
            p.to_cni_args().unwrap(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1"
        );
        for bad in ["a;b", "a=b", "a\nb"] {
            let q = PodArgs {
                name: bad.into(),
                ..p.clone()
            };
            assert!(q.to_cni_args().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn runtime_config_only_for_declared_capabilities() {
        let caps = Capabilities {
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new(),
            }],
            bandwidth: Some(Bandwidth {
                ingress_rate: 1000,
                ingress_burst: 10,
                egress_rate: 2000,
                egress_burst: 20,
            }),
            dns: None,
        }
        .to_map();
        let portmap: Map<String, Value> = serde_json::from_str(
            r#"{"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}}"#,
        )
        .unwrap();
        let prev = serde_json::json!({"cniVersion":"1.0.0","ips":[]});
        let cfg = plugin_config("net", "1.0.0", &portmap, &caps, Some(&prev));
        assert_eq!(cfg["name"], "net");
        assert_eq!(cfg["cniVersion"], "1.0.0");
        assert_eq!(
            cfg["runtimeConfig"],
            serde_json::json!({"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]})
        );
        assert_eq!(cfg["prevResult"], prev);
        let bridge: Map<String, Value> = serde_json::from_str(r#"{"type":"bridge"}"#).unwrap();
        let cfg = plugin_config("net", "1.0.0", &bridge, &caps, None);
        assert!(cfg.get("runtimeConfig").is_none() && cfg.get("prevResult").is_none());
    }
}
