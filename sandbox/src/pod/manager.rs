//! The pod manager: creation with rollback, stop, remove, lookups and recovery after restart.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use cni::netns::NsKind;
use cni::{Attachment, Bandwidth, Capabilities, Cni, DnsCapability, PodArgs};
use tokio::sync::watch;

use crate::error::{SandboxError, invalid};
use crate::pod::store::PodStore;
use crate::pod::validate::{self, SysctlNs};
use crate::pod::warm::{WarmNet, WarmPool};
use crate::pod::{
    CgroupDriver, NsMode, POD_IFNAME, PidHolder, PodConfig, PodFilter, PodKind, PodMetadata,
    PodPaths, PodRecord, PodState, files,
};
use crate::sys::{self, PodSys};

/// Size of each pod's shm tmpfs.
pub const SHM_SIZE: u64 = 64 * 1024 * 1024;
const INGRESS_ANNOTATION: &str = "kubernetes.io/ingress-bandwidth";
const EGRESS_ANNOTATION: &str = "kubernetes.io/egress-bandwidth";

/// Where pods live and which runtime handlers exist.
#[derive(Debug, Clone)]
pub struct PodSettings {
    /// Persistent root; records go to `<root>/pods`.
    pub root: PathBuf,
    /// Volatile state; pins go to `<state>/{netns,ipcns,utsns}/<id>`, files to
    /// `<state>/pods/<id>`.
    pub state: PathBuf,
    pub runc_handlers: Vec<String>,
    pub unikernel_handlers: Vec<String>,
    pub cgroup_driver: CgroupDriver,
    /// Copied into pods that bring no DNS config.
    pub host_resolv_conf: PathBuf,
    /// How many pod networks to keep prepared ahead of need (0: none); see `warm.rs`.
    pub warm_networks: usize,
    /// The crid executable, whose monitor makes pods' user namespaces (`sys::userns`).
    pub monitor_exe: PathBuf,
}

/// A name reservation: the pod id, whether its creation finished, and whether a caller got
/// the answer.
#[derive(Clone)]
struct Reservation {
    id: String,
    done: watch::Receiver<bool>,
    claimed: Arc<AtomicBool>,
}

struct Entry {
    record: Mutex<PodRecord>,
    /// Serialises stop/remove of one pod.
    op: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Inner {
    pods: HashMap<String, Arc<Entry>>,
    names: HashMap<PodMetadata, Reservation>,
    /// Pods created with [`PodManager::run_hidden`] and not yet published: unknown to
    /// `get` and `list` (a lifecycle hook is still deciding on them).
    hidden: HashSet<String>,
}

/// All pods of this node.
pub struct PodManager {
    settings: PodSettings,
    cni: Arc<Cni>,
    sys: Arc<dyn PodSys>,
    store: PodStore,
    inner: Mutex<Inner>,
    warm: Arc<WarmPool>,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Removes namespace pins, shm mounts and pod directories under `state` that belong to no
/// known pod (their record was quarantined or deleted by hand), so nothing stays mounted.
fn sweep_orphans(state: &Path, pods: &HashMap<String, Arc<Entry>>, sys: &dyn PodSys) {
    let names = |dir: PathBuf| -> Vec<(String, PathBuf)> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                    .filter(|(n, _)| !pods.contains_key(n))
                    .collect()
            })
            .unwrap_or_default()
    };
    for kind in ["netns", "ipcns", "utsns", "userns"] {
        for (id, pin) in names(state.join(kind)) {
            tracing::warn!(pod_sandbox_id = %id, path = %pin.display(), "removing the namespace pin of an unknown pod");
            if let Err(e) = sys.remove_pin(&pin) {
                tracing::warn!(path = %pin.display(), error = %e, "cannot remove namespace pin");
            }
        }
    }
    for (id, dir) in names(state.join("pods")) {
        let shm = dir.join("shm");
        if sys::is_mount_point(&shm) {
            if let Err(e) = sys.unmount(&shm) {
                tracing::warn!(pod_sandbox_id = %id, error = %e, "cannot unmount the shm of an unknown pod");
                continue;
            }
        }
        tracing::warn!(pod_sandbox_id = %id, "removing the directory of an unknown pod");
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(path = %dir.display(), error = %e, "cannot remove pod directory");
        }
    }
}

impl PodManager {
    /// Loads the pods recorded under `<root>/pods`. Pods whose network namespace did not
    /// survive (a reboot) come back `NotReady`.
    pub fn open(settings: PodSettings, cni: Arc<Cni>) -> Result<PodManager, SandboxError> {
        PodManager::with_sys(settings, cni, Arc::new(sys::HostSys::default()))
    }

    /// [`PodManager::open`] over the given kernel operations (a recording fake in tests).
    pub fn with_sys(
        settings: PodSettings,
        cni: Arc<Cni>,
        sys: Arc<dyn PodSys>,
    ) -> Result<PodManager, SandboxError> {
        let store = PodStore::open(settings.root.join("pods"))?;
        let mut inner = Inner::default();
        for mut record in store.recover() {
            if record.state == PodState::Ready {
                let pinned = [
                    &record.paths.netns,
                    &record.paths.ipcns,
                    &record.paths.utsns,
                    &record.paths.userns,
                ]
                .into_iter()
                .flatten()
                .all(|p| sys.is_pinned(p));
                if !pinned {
                    tracing::warn!(pod_sandbox_id = %record.id, "pod namespaces are gone; pod is not ready");
                    record.state = PodState::NotReady;
                    store.save(&record)?;
                }
            }
            if record.state == PodState::NotReady
                && record.network.is_none()
                && record
                    .paths
                    .netns
                    .as_ref()
                    .is_some_and(|p| sys.is_pinned(p))
            {
                // Killed while being created, perhaps in the middle of CNI ADD: undo the
                // network (DEL is idempotent) inside the namespace when the pod is stopped or
                // removed, so every plugin cleans up where it worked.
                tracing::warn!(pod_sandbox_id = %record.id, "pod creation was interrupted; its network will be torn down");
                record.network = Some(String::new());
                store.save(&record)?;
            }
            let (_tx, done) = watch::channel(true);
            inner.names.insert(
                record.config.metadata.clone(),
                Reservation {
                    id: record.id.clone(),
                    done,
                    claimed: Arc::new(AtomicBool::new(true)),
                },
            );
            inner.pods.insert(
                record.id.clone(),
                Arc::new(Entry {
                    record: Mutex::new(record),
                    op: tokio::sync::Mutex::new(()),
                }),
            );
        }
        tracing::info!(pods = inner.pods.len(), "pods recovered");
        sweep_orphans(&settings.state, &inner.pods, sys.as_ref());
        let warm = Arc::new(WarmPool::new(
            settings.warm_networks,
            settings.state.clone(),
            cni.clone(),
            sys.clone(),
        ));
        Ok(PodManager {
            settings,
            cni,
            sys,
            store,
            inner: Mutex::new(inner),
            warm,
        })
    }

    pub fn cni(&self) -> &Cni {
        &self.cni
    }

    /// Starts preparing pod networks ahead of need (after [`PodManager::collect_garbage`],
    /// which would release them).
    pub fn prepare_networks(&self) {
        self.warm.refill(std::time::Duration::ZERO);
    }

    /// How many prepared pod networks are waiting.
    pub fn prepared_networks(&self) -> usize {
        self.warm.waiting()
    }

    /// Releases the prepared pod networks and stops making new ones (at shutdown).
    pub async fn release_prepared_networks(&self) {
        self.warm.close().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry(&self, id: &str) -> Option<Arc<Entry>> {
        self.lock().pods.get(id).cloned()
    }

    /// The kind of pod a runtime handler gives; an unknown handler is `InvalidArgument`.
    pub fn kind_for_handler(&self, handler: &str) -> Result<PodKind, SandboxError> {
        if self.settings.runc_handlers.iter().any(|h| h == handler) {
            Ok(PodKind::Runc)
        } else if self
            .settings
            .unikernel_handlers
            .iter()
            .any(|h| h == handler)
        {
            Ok(PodKind::Unikernel)
        } else {
            Err(invalid(format!("unknown runtime handler {handler:?}")))
        }
    }

    /// Creates a pod and returns its id. The work runs in its own task, so a caller that gives
    /// up (its deadline passed) does not abort it; its retry then gets the same pod.
    pub async fn run(self: &Arc<Self>, config: PodConfig) -> Result<String, SandboxError> {
        self.run_inner(config, false).await
    }

    /// [`PodManager::run`], the pod staying invisible to `get` and `list` until
    /// [`PodManager::publish`]; [`PodManager::record`], `stop` and `remove` see it.
    pub async fn run_hidden(self: &Arc<Self>, config: PodConfig) -> Result<String, SandboxError> {
        self.run_inner(config, true).await
    }

    /// Makes a pod created hidden visible.
    pub fn publish(&self, id: &str) {
        self.lock().hidden.remove(id);
    }

    async fn run_inner(
        self: &Arc<Self>,
        config: PodConfig,
        hidden: bool,
    ) -> Result<String, SandboxError> {
        let kind = self.validate(&config)?;
        let own_net = config.namespaces.network != NsMode::Node;
        // A prepared network belongs to the host's user namespace, and a pod's user namespace
        // must own its network namespace.
        let may_take_prepared = own_net && config.namespaces.user.is_none();
        loop {
            let existing = self.lock().names.get(&config.metadata).cloned();
            let reservation = match existing {
                Some(r) => {
                    if *r.done.borrow() && r.claimed.load(Ordering::SeqCst) {
                        return Err(SandboxError::AlreadyExists {
                            name: pod_name(&config.metadata),
                            id: r.id,
                        });
                    }
                    // Still being created, or created for a caller that went away: wait and
                    // take it over.
                    let mut done = r.done.clone();
                    let _ = done.wait_for(|d| *d).await;
                    if self.entry(&r.id).is_some() {
                        r.claimed.store(true, Ordering::SeqCst);
                        tracing::info!(pod_sandbox_id = %r.id, "returning the pod of an earlier request");
                        return Ok(r.id);
                    }
                    // That creation failed and released the name; try again.
                    continue;
                }
                None => {
                    let fresh_id = crate::id::new_id()?;
                    let mut inner = self.lock();
                    if inner.names.contains_key(&config.metadata) {
                        continue;
                    }
                    // A pod with its own network namespace takes a prepared network, and
                    // with it the id that network was prepared under.
                    let warm = may_take_prepared.then(|| self.warm.take()).flatten();
                    let id = warm.as_ref().map_or(fresh_id, |w| w.id.clone());
                    let (tx, done) = watch::channel(false);
                    let r = Reservation {
                        id,
                        done,
                        claimed: Arc::new(AtomicBool::new(false)),
                    };
                    inner.names.insert(config.metadata.clone(), r.clone());
                    (r, tx, warm)
                }
            };
            let (r, tx, warm) = reservation;
            if own_net {
                // Also after a miss: the configuration may have appeared since start-up.
                self.warm.refill_after_take();
            }
            let this = self.clone();
            let cfg = config.clone();
            let id = r.id.clone();
            let task = tokio::spawn(async move {
                let result = this.create(&id, cfg.clone(), kind, warm).await;
                match &result {
                    Ok(record) => {
                        let mut inner = this.lock();
                        if hidden {
                            inner.hidden.insert(id.clone());
                        }
                        inner.pods.insert(
                            id.clone(),
                            Arc::new(Entry {
                                record: Mutex::new(record.clone()),
                                op: tokio::sync::Mutex::new(()),
                            }),
                        );
                    }
                    Err(_) => {
                        this.lock().names.remove(&cfg.metadata);
                    }
                }
                let _ = tx.send(true);
                result.map(|r| r.id)
            });
            return match task.await {
                Ok(Ok(id)) => {
                    r.claimed.store(true, Ordering::SeqCst);
                    Ok(id)
                }
                Ok(Err(e)) => Err(e),
                Err(e) => Err(SandboxError::FailedPrecondition {
                    reason: format!("pod creation task failed: {e}"),
                }),
            };
        }
    }

    /// Checks the request ([`validate::pod`]) and, for a pod in its own user namespace, that
    /// crid's directories let the namespace's root through; returns the pod's kind.
    fn validate(&self, config: &PodConfig) -> Result<PodKind, SandboxError> {
        let kind = self.kind_for_handler(&config.runtime_handler)?;
        if validate::pod(config, kind, self.settings.cgroup_driver)?.is_some() {
            for dir in [&self.settings.root, &self.settings.state] {
                if !sys::userns::searchable_by_others(dir) {
                    return Err(SandboxError::FailedPrecondition {
                        reason: format!(
                            "user namespaces need crid's directory {} and its parents searchable by others (o+x)",
                            dir.display()
                        ),
                    });
                }
            }
        }
        self.capabilities(config)?;
        Ok(kind)
    }

    fn capabilities(&self, config: &PodConfig) -> Result<Capabilities, SandboxError> {
        let rate = |key: &str| {
            config
                .annotations
                .get(key)
                .map(|v| validate::bandwidth(key, v))
                .transpose()
        };
        let ingress = rate(INGRESS_ANNOTATION)?;
        let egress = rate(EGRESS_ANNOTATION)?;
        // The bandwidth plugin needs a burst with every rate; this is the one kubelet's
        // kubenet used (effectively unlimited burst).
        const BURST: u64 = i32::MAX as u64;
        let bandwidth = (ingress.is_some() || egress.is_some()).then(|| Bandwidth {
            ingress_rate: ingress.unwrap_or(0),
            ingress_burst: if ingress.is_some() { BURST } else { 0 },
            egress_rate: egress.unwrap_or(0),
            egress_burst: if egress.is_some() { BURST } else { 0 },
        });
        let dns = &config.dns;
        let dns = (!dns.servers.is_empty() || !dns.searches.is_empty()).then(|| DnsCapability {
            servers: dns.servers.clone(),
            searches: dns.searches.clone(),
            options: dns.options.clone(),
        });
        Ok(Capabilities {
            port_mappings: config
                .port_mappings
                .iter()
                .filter(|p| p.host_port > 0)
                .map(|p| cni::PortMapping {
                    host_port: p.host_port,
                    container_port: p.container_port,
                    protocol: p.protocol.to_ascii_lowercase(),
                    host_ip: p.host_ip.clone(),
                })
                .collect(),
            bandwidth,
            dns,
        })
    }

    fn paths(&self, id: &str, config: &PodConfig) -> PodPaths {
        let state = &self.settings.state;
        let dir = state.join("pods").join(id);
        let host_net = config.namespaces.network == NsMode::Node;
        let host_ipc = config.namespaces.ipc == NsMode::Node;
        let own_userns = config
            .namespaces
            .user
            .as_ref()
            .is_some_and(|u| u.mode == NsMode::Pod);
        PodPaths {
            userns: own_userns.then(|| state.join("userns").join(id)),
            netns: (!host_net).then(|| state.join("netns").join(id)),
            ipcns: (!host_ipc).then(|| state.join("ipcns").join(id)),
            // A host-network pod has the host's hostname too, as in Kubernetes.
            utsns: (!host_net).then(|| state.join("utsns").join(id)),
            hostname: dir.join("hostname"),
            hosts: dir.join("hosts"),
            resolv_conf: dir.join("resolv.conf"),
            shm: if host_ipc {
                PathBuf::from("/dev/shm")
            } else {
                dir.join("shm")
            },
            dir,
        }
    }

    async fn create(
        &self,
        id: &str,
        config: PodConfig,
        kind: PodKind,
        warm: Option<WarmNet>,
    ) -> Result<PodRecord, SandboxError> {
        let paths = self.paths(id, &config);
        let mut record = PodRecord {
            id: id.to_owned(),
            kind,
            state: PodState::NotReady,
            created_at: now_ns(),
            paths,
            ips: Vec::new(),
            network: None,
            ifname: None,
            cgroup_driver: self.settings.cgroup_driver,
            cgroup_parent: config.cgroup_parent.clone(),
            pid_mode: config.namespaces.pid,
            pid_holder: None,
            // Validated in `run`.
            userns: config
                .namespaces
                .user
                .as_ref()
                .map(validate::user_namespace)
                .transpose()?
                .flatten(),
            config,
        };
        match self.build(&mut record, warm).await {
            Ok(()) => {
                tracing::info!(pod_sandbox_id = %id, name = %pod_name(&record.config.metadata), ip = %record.primary_ip(), "pod ready");
                Ok(record)
            }
            Err(e) => {
                tracing::error!(pod_sandbox_id = %id, error = %e, "pod creation failed; undoing");
                // A failed CNI ADD undid itself (`network` stays `None`); a later failure
                // (sysctls, files) needs the DEL here.
                let attached = record.network.is_some();
                self.teardown(&record, attached).await;
                if let Err(e) = self.store.delete(id) {
                    tracing::warn!(pod_sandbox_id = %id, error = %e, "cannot delete pod record");
                }
                Err(e)
            }
        }
    }

    async fn build(
        &self,
        record: &mut PodRecord,
        warm: Option<WarmNet>,
    ) -> Result<(), SandboxError> {
        let id = record.id.clone();
        let paths = record.paths.clone();
        let config = record.config.clone();
        // A prepared network (pinned at `paths.netns`, the pod's id being the one it was
        // prepared under) is attached already: any failure from here on needs its DEL.
        if warm.is_some() {
            record.network = Some(String::new());
        }
        std::fs::create_dir_all(&paths.dir).map_err(|e| SandboxError::io(&paths.dir, e))?;
        // The record goes to disk first, so a crash from here on leaves something to remove.
        self.store.save(record)?;

        let hostname = validate::hostname(&config)?;
        let effective_hostname = if record.host_network() {
            sys::node_hostname()
        } else {
            hostname.clone()
        };
        write(&paths.hostname, &files::hostname(&effective_hostname))?;
        write(&paths.hosts, &files::hosts(&effective_hostname, &[]))?;
        match files::resolv_conf(&config.dns) {
            Some(text) => write(&paths.resolv_conf, &text)?,
            None => {
                let host =
                    std::fs::read_to_string(&self.settings.host_resolv_conf).unwrap_or_default();
                write(&paths.resolv_conf, &host)?;
            }
        }
        if paths.ipcns.is_some() {
            self.sys.mount_shm(&paths.shm, SHM_SIZE)?;
        }

        let mut pins = Vec::new();
        if let Some(p) = &paths.netns {
            if warm.is_none() {
                pins.push((NsKind::Net, p.clone()));
            }
        }
        if let Some(p) = &paths.ipcns {
            pins.push((NsKind::Ipc, p.clone()));
        }
        let uts = paths.utsns.clone();
        if let Some(p) = &uts {
            pins.push((NsKind::Uts, p.clone()));
        }
        if !pins.is_empty() {
            let set_hostname = uts.is_some().then(|| hostname.clone());
            let pins2 = pins.clone();
            let kernel = self.sys.clone();
            let plan = match (&paths.userns, record.userns) {
                (Some(pin), Some(mappings)) => Some(sys::UsernsPlan {
                    exe: self.settings.monitor_exe.clone(),
                    pin: pin.clone(),
                    mappings,
                    log: paths.dir.join("userns.log"),
                }),
                _ => None,
            };
            tokio::task::spawn_blocking(move || match plan {
                Some(plan) => kernel.create_user_namespaces(&plan, &pins2, set_hostname),
                None => kernel.create_namespaces(&pins2, set_hostname),
            })
            .await
            .map_err(|e| SandboxError::FailedPrecondition {
                reason: format!("namespace task failed: {e}"),
            })??;
        }

        if let Some(netns) = &paths.netns {
            let caps = self.capabilities(&config)?;
            let att = Attachment {
                container_id: id.clone(),
                netns: netns.clone(),
                ifname: POD_IFNAME.into(),
                pod: pod_args(&record.id, &config.metadata),
                capabilities: caps,
            };
            let added = match warm {
                Some(w) => self.cni.add_prepared(&att, w.prepared).await,
                None => self.cni.add(&att).await,
            };
            // A failed ADD undid itself.
            let result = added.map_err(|e| {
                record.network = None;
                SandboxError::Network(e)
            })?;
            record.network = self.cni.network().ok().map(|n| n.name);
            if record.network.is_none() {
                record.network = Some(String::new());
            }
            record.ifname = Some(result.sandbox_interface().unwrap_or(POD_IFNAME).to_owned());
            let ips = result.pod_ips();
            record.ips = ips.iter().map(IpAddr::to_string).collect();
            write(&paths.hosts, &files::hosts(&effective_hostname, &ips))?;
        }

        // Sysctls last: `net.ipv4.conf.eth0.*` needs the interface CNI made.
        let mut net_writes = Vec::new();
        let mut ipc_writes = Vec::new();
        for (key, value) in &config.sysctls {
            let w = (validate::sysctl_path(key), value.clone());
            match validate::sysctl(key, value)? {
                SysctlNs::Net => net_writes.push(w),
                SysctlNs::Ipc => ipc_writes.push(w),
            }
        }
        for (kind, pin, writes) in [
            (NsKind::Net, &paths.netns, net_writes),
            (NsKind::Ipc, &paths.ipcns, ipc_writes),
        ] {
            if writes.is_empty() {
                continue;
            }
            let Some(pin) = pin.clone() else {
                return Err(invalid("namespaced sysctls need the pod's own namespace"));
            };
            let kernel = self.sys.clone();
            tokio::task::spawn_blocking(move || kernel.write_sysctls(&[(kind, pin)], writes))
                .await
                .map_err(|e| SandboxError::FailedPrecondition {
                    reason: format!("sysctl task failed: {e}"),
                })?
                .map_err(|e| invalid(format!("cannot apply sysctls: {e}: {}", source_text(&e))))?;
        }

        record.state = PodState::Ready;
        self.store.save(record)?;
        Ok(())
    }

    /// Tears the network down (CNI DEL, also when the namespace is gone). Errors are returned;
    /// the caller decides whether they stop it.
    async fn teardown_network(&self, record: &PodRecord) -> Result<(), SandboxError> {
        let Some(netns) = &record.paths.netns else {
            return Ok(());
        };
        let live = self.sys.is_pinned(netns);
        self.cni
            .del(
                &record.id,
                live.then_some(netns.as_path()),
                POD_IFNAME,
                &pod_args(&record.id, &record.config.metadata),
            )
            .await
            .map_err(SandboxError::Network)
    }

    /// Removes every piece of a pod (best effort, logged): network (when `network` is set),
    /// pins, shm, directory. The record is not touched.
    async fn teardown(&self, record: &PodRecord, network: bool) {
        if network {
            if let Err(e) = self.teardown_network(record).await {
                tracing::warn!(pod_sandbox_id = %record.id, error = %e, "network teardown failed during removal; giving up on it");
                if let Err(e) = self.cni.forget(&record.id, POD_IFNAME) {
                    tracing::warn!(pod_sandbox_id = %record.id, error = %e, "cannot drop CNI cache entry");
                }
            }
        }
        for pin in [
            &record.paths.netns,
            &record.paths.ipcns,
            &record.paths.utsns,
            &record.paths.userns,
        ]
        .into_iter()
        .flatten()
        {
            if let Err(e) = self.sys.remove_pin(pin) {
                tracing::warn!(pod_sandbox_id = %record.id, error = %e, "cannot remove namespace pin");
            }
        }
        if record.paths.ipcns.is_some() {
            if let Err(e) = self.sys.unmount(&record.paths.shm) {
                tracing::warn!(pod_sandbox_id = %record.id, error = %e, "cannot unmount shm");
            }
        }
        match std::fs::remove_dir_all(&record.paths.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(pod_sandbox_id = %record.id, error = %e, "cannot remove pod directory")
            }
        }
    }

    /// Releases CNI attachments no pod owns any more (left by a crash mid-creation or a
    /// failed teardown) and lets CNI 1.1 plugins garbage-collect. Call before serving.
    pub async fn collect_garbage(&self) {
        let valid: Vec<(String, String)> = {
            let inner = self.lock();
            inner
                .pods
                .values()
                .filter_map(|e| {
                    let r = e.record.lock().unwrap_or_else(|p| p.into_inner());
                    r.network
                        .is_some()
                        .then(|| (r.id.clone(), POD_IFNAME.to_owned()))
                })
                .collect()
        };
        let stale = self
            .cni
            .cached_attachments()
            .into_iter()
            .filter(|a| !valid.contains(a))
            .count();
        if stale > 0 {
            tracing::info!(
                stale,
                "releasing CNI attachments of pods that no longer exist"
            );
        }
        if let Err(e) = self.cni.gc(&valid).await {
            tracing::warn!(error = %e, "CNI garbage collection failed");
        }
    }

    /// Stops a pod: tears its network down and marks it `NotReady`. Unknown ids are fine.
    /// Containers must have been stopped by the caller.
    pub async fn stop(&self, id: &str) -> Result<(), SandboxError> {
        let Some(entry) = self.entry(id) else {
            return Ok(());
        };
        let _op = entry.op.lock().await;
        let record = self.snapshot(&entry);
        if !self.exists(id) {
            return Ok(());
        }
        let mut result = Ok(());
        if record.network.is_some() {
            match self.teardown_network(&record).await {
                Ok(()) => {
                    if let Some(pin) = &record.paths.netns {
                        if let Err(e) = self.sys.remove_pin(pin) {
                            tracing::warn!(pod_sandbox_id = %id, error = %e, "cannot remove netns pin");
                        }
                    }
                    self.update(&entry, |r| r.network = None)?;
                }
                Err(e) => result = Err(e),
            }
        }
        if record.state != PodState::NotReady {
            self.update(&entry, |r| r.state = PodState::NotReady)?;
            tracing::info!(pod_sandbox_id = %id, "pod stopped");
        }
        result
    }

    /// Removes a pod and everything it has. Unknown ids are fine. A network teardown that
    /// still fails here is logged, not returned: removal must not be blocked by a broken
    /// plugin.
    pub async fn remove(&self, id: &str) -> Result<(), SandboxError> {
        let Some(entry) = self.entry(id) else {
            return Ok(());
        };
        let _op = entry.op.lock().await;
        if !self.exists(id) {
            return Ok(());
        }
        let record = self.snapshot(&entry);
        self.teardown(&record, record.network.is_some()).await;
        self.store.delete(id)?;
        let mut inner = self.lock();
        inner.pods.remove(id);
        inner.hidden.remove(id);
        if inner
            .names
            .get(&record.config.metadata)
            .is_some_and(|r| r.id == id)
        {
            inner.names.remove(&record.config.metadata);
        }
        drop(inner);
        tracing::info!(pod_sandbox_id = %id, "pod removed");
        Ok(())
    }

    fn exists(&self, id: &str) -> bool {
        self.lock().pods.contains_key(id)
    }

    fn snapshot(&self, entry: &Entry) -> PodRecord {
        entry
            .record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update(&self, entry: &Entry, f: impl FnOnce(&mut PodRecord)) -> Result<(), SandboxError> {
        let mut record = entry.record.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut record);
        self.store.save(&record)
    }

    /// The record of a pod; `NotFound` for an unknown id.
    pub fn get(&self, id: &str) -> Result<PodRecord, SandboxError> {
        if self.lock().hidden.contains(id) {
            return Err(SandboxError::NotFound {
                what: "pod sandbox",
                id: id.to_owned(),
            });
        }
        self.record(id)
    }

    /// The record of a pod, also of one created hidden; `NotFound` for an unknown id.
    pub fn record(&self, id: &str) -> Result<PodRecord, SandboxError> {
        self.entry(id)
            .map(|e| self.snapshot(&e))
            .ok_or_else(|| SandboxError::NotFound {
                what: "pod sandbox",
                id: id.to_owned(),
            })
    }

    /// The record of a pod that can take containers: `NotFound` for an unknown id,
    /// `FailedPrecondition` when it is not ready.
    pub fn get_ready(&self, id: &str) -> Result<PodRecord, SandboxError> {
        let r = self.get(id)?;
        if r.state != PodState::Ready {
            return Err(SandboxError::FailedPrecondition {
                reason: format!("pod sandbox {id} is not ready"),
            });
        }
        Ok(r)
    }

    /// Pods matching `filter`, oldest first.
    pub fn list(&self, filter: &PodFilter) -> Vec<PodRecord> {
        let entries: Vec<Arc<Entry>> = {
            let inner = self.lock();
            inner
                .pods
                .iter()
                .filter(|(id, _)| !inner.hidden.contains(*id))
                .map(|(_, e)| e.clone())
                .collect()
        };
        let mut out: Vec<PodRecord> = entries
            .iter()
            .map(|e| self.snapshot(e))
            .filter(|r| filter.matches(r))
            .collect();
        out.sort_by_key(|r| r.created_at);
        out
    }

    /// Records (or clears) the process holding the pod's PID namespace.
    pub fn set_pid_holder(&self, id: &str, holder: Option<PidHolder>) -> Result<(), SandboxError> {
        let entry = self.entry(id).ok_or_else(|| SandboxError::NotFound {
            what: "pod sandbox",
            id: id.to_owned(),
        })?;
        self.update(&entry, |r| r.pid_holder = holder)
    }
}

fn source_text(e: &SandboxError) -> String {
    let mut out = String::new();
    let mut s = std::error::Error::source(e);
    while let Some(x) = s {
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&x.to_string());
        s = x.source();
    }
    out
}

fn pod_name(m: &PodMetadata) -> String {
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}

fn pod_args(id: &str, m: &PodMetadata) -> PodArgs {
    PodArgs {
        namespace: m.namespace.clone(),
        name: m.name.clone(),
        infra_container_id: id.to_owned(),
        uid: m.uid.clone(),
    }
}

fn write(path: &Path, text: &str) -> Result<(), SandboxError> {
    std::fs::write(path, text).map_err(|e| SandboxError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::NamespaceOptions;

    /// Host-network, host-IPC pods need no namespaces or mounts, so these run without root.
    fn host_pod(name: &str) -> PodConfig {
        PodConfig {
            metadata: PodMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "ns".into(),
                attempt: 0,
            },
            hostname: name.into(),
            labels: [("app".to_string(), name.to_string())].into(),
            namespaces: NamespaceOptions {
                network: NsMode::Node,
                ipc: NsMode::Node,
                pid: NsMode::Container,
                target_id: String::new(),
                user: None,
            },
            ..PodConfig::default()
        }
    }

    fn manager(dir: &Path) -> Arc<PodManager> {
        let cni = Cni::new(cni::CniSettings {
            conf_dir: dir.join("net.d"),
            bin_dirs: vec![],
            cache_dir: dir.join("cache"),
            timeout: std::time::Duration::from_secs(1),
        });
        std::fs::write(dir.join("resolv.conf"), "nameserver 192.0.2.53\n").unwrap();
        let settings = PodSettings {
            root: dir.join("root"),
            state: dir.join("state"),
            runc_handlers: vec![String::new(), "runc".into()],
            unikernel_handlers: vec!["urunc".into()],
            cgroup_driver: CgroupDriver::Cgroupfs,
            host_resolv_conf: dir.join("resolv.conf"),
            warm_networks: 0,
            monitor_exe: PathBuf::from("/nonexistent/crid"),
        };
        Arc::new(PodManager::open(settings, Arc::new(cni)).unwrap())
    }

    #[tokio::test]
    async fn lifecycle_reservation_and_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let pods = manager(dir.path());
        let id = pods.run(host_pod("a")).await.unwrap();
        let r = pods.get_ready(&id).unwrap();
        assert_eq!(r.kind, PodKind::Runc);
        assert!(r.paths.netns.is_none() && r.paths.ipcns.is_none());
        assert_eq!(r.paths.shm, PathBuf::from("/dev/shm"));
        let resolv = std::fs::read_to_string(&r.paths.resolv_conf).unwrap();
        assert_eq!(resolv, "nameserver 192.0.2.53\n");

        let e = pods.run(host_pod("a")).await.unwrap_err();
        assert_eq!(e.kind(), imagestore::ErrorKind::AlreadyExists, "{e}");
        let mut next = host_pod("a");
        next.metadata.attempt = 1;
        let id2 = pods.run(next).await.unwrap();
        assert_ne!(id, id2);

        let only_a = PodFilter {
            id_prefix: id[..8].to_owned(),
            ..PodFilter::default()
        };
        assert_eq!(pods.list(&only_a).len(), 1);
        pods.stop(&id).await.unwrap();
        pods.stop(&id).await.unwrap();
        let not_ready = PodFilter {
            state: Some(PodState::NotReady),
            ..PodFilter::default()
        };
        assert_eq!(pods.list(&not_ready).len(), 1);
        assert_eq!(
            pods.get_ready(&id).unwrap_err().kind(),
            imagestore::ErrorKind::FailedPrecondition
        );

        // A new manager over the same directories sees both pods and their reservations.
        drop(pods);
        let pods = manager(dir.path());
        assert_eq!(pods.list(&PodFilter::default()).len(), 2);
        assert_eq!(pods.get(&id).unwrap().state, PodState::NotReady);
        assert_eq!(pods.get(&id2).unwrap().state, PodState::Ready);
        let e = pods.run(host_pod("a")).await.unwrap_err();
        assert_eq!(e.kind(), imagestore::ErrorKind::AlreadyExists);

        for id in [&id, &id2] {
            pods.remove(id).await.unwrap();
            pods.remove(id).await.unwrap();
        }
        assert!(pods.list(&PodFilter::default()).is_empty());
        assert_eq!(
            pods.get(&id).unwrap_err().kind(),
            imagestore::ErrorKind::NotFound
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("root/pods"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("state/pods"))
                .unwrap()
                .count(),
            0
        );
        // The name is free again.
        let id3 = pods.run(host_pod("a")).await.unwrap();
        pods.remove(&id3).await.unwrap();
    }

    /// Records every kernel operation instead of doing it.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
        pinned: Mutex<std::collections::HashSet<PathBuf>>,
        fail_sysctls: AtomicBool,
    }

    impl Recorder {
        fn log(&self, s: String) {
            self.calls.lock().unwrap().push(s);
        }
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.calls.lock().unwrap())
        }
    }

    fn name(p: &Path) -> String {
        let parent = p
            .parent()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let leaf = p.file_name().unwrap_or_default().to_string_lossy();
        format!(
            "{}/{}",
            &parent[..parent.len().min(6)],
            &leaf[..leaf.len().min(6)]
        )
    }

    impl PodSys for Recorder {
        fn create_namespaces(
            &self,
            pins: &[(NsKind, PathBuf)],
            hostname: Option<String>,
        ) -> Result<(), SandboxError> {
            let names: Vec<String> = pins.iter().map(|(_, p)| name(p)).collect();
            for (_, p) in pins {
                self.pinned.lock().unwrap().insert(p.clone());
            }
            self.log(format!("create {} hostname={hostname:?}", names.join(",")));
            Ok(())
        }
        fn create_user_namespaces(
            &self,
            plan: &sys::UsernsPlan,
            pins: &[(NsKind, PathBuf)],
            hostname: Option<String>,
        ) -> Result<(), SandboxError> {
            self.pinned.lock().unwrap().insert(plan.pin.clone());
            let m = &plan.mappings;
            self.log(format!(
                "userns {} uid={}+{} gid={}+{}",
                name(&plan.pin),
                m.uid.host_id,
                m.uid.length,
                m.gid.host_id,
                m.gid.length
            ));
            self.create_namespaces(pins, hostname)
        }
        fn remove_pin(&self, path: &Path) -> Result<(), SandboxError> {
            if self.pinned.lock().unwrap().remove(path) {
                self.log(format!("remove {}", name(path)));
            }
            Ok(())
        }
        fn is_pinned(&self, path: &Path) -> bool {
            self.pinned.lock().unwrap().contains(path)
        }
        fn mount_shm(&self, path: &Path, size_bytes: u64) -> Result<(), SandboxError> {
            self.log(format!("shm {} {size_bytes}", name(path)));
            Ok(())
        }
        fn unmount(&self, path: &Path) -> Result<(), SandboxError> {
            self.log(format!("unmount {}", name(path)));
            Ok(())
        }
        fn write_sysctls(
            &self,
            _pins: &[(NsKind, PathBuf)],
            writes: Vec<(String, String)>,
        ) -> Result<(), SandboxError> {
            if self.fail_sysctls.load(Ordering::SeqCst) {
                return Err(invalid("no such sysctl"));
            }
            for (k, v) in writes {
                self.log(format!("sysctl {k}={v}"));
            }
            Ok(())
        }
    }

    /// A manager over the recorder and a fake plugin (a shell script) that logs its calls and
    /// answers ADD with 10.9.0.5 after `add_delay` seconds.
    fn recorded(dir: &Path, add_delay: &str) -> (Arc<PodManager>, Arc<Recorder>) {
        use std::os::unix::fs::PermissionsExt;
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let log = dir.join("plugin.log");
        let script = format!(
            "#!/bin/sh\ncat >/dev/null\necho \"$CNI_COMMAND $CNI_ARGS\" >>{log}\n\
             if [ \"$CNI_COMMAND\" = ADD ]; then sleep {add_delay}; \
             echo '{{\"cniVersion\":\"1.0.0\",\"interfaces\":[{{\"name\":\"cni0\"}},{{\"name\":\"net1\",\"sandbox\":\"/x\"}}],\"ips\":[{{\"address\":\"10.9.0.5/24\",\"interface\":1}}]}}'; fi\n",
            log = log.display()
        );
        std::fs::write(bin.join("fakenet"), script).unwrap();
        std::fs::set_permissions(bin.join("fakenet"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::create_dir_all(dir.join("net.d")).unwrap();
        std::fs::write(
            dir.join("net.d/10-fake.conflist"),
            r#"{"cniVersion":"1.0.0","name":"fake","plugins":[{"type":"fakenet"}]}"#,
        )
        .unwrap();
        std::fs::write(dir.join("resolv.conf"), "nameserver 192.0.2.53\n").unwrap();
        let cni = Cni::new(cni::CniSettings {
            conf_dir: dir.join("net.d"),
            bin_dirs: vec![bin],
            cache_dir: dir.join("cache"),
            timeout: std::time::Duration::from_secs(10),
        });
        let settings = PodSettings {
            root: dir.join("root"),
            state: dir.join("state"),
            runc_handlers: vec![String::new()],
            unikernel_handlers: vec![],
            cgroup_driver: CgroupDriver::Systemd,
            host_resolv_conf: dir.join("resolv.conf"),
            warm_networks: 0,
            monitor_exe: PathBuf::from("/nonexistent/crid"),
        };
        let rec = Arc::new(Recorder::default());
        let pods = PodManager::with_sys(settings, Arc::new(cni), rec.clone()).unwrap();
        (Arc::new(pods), rec)
    }

    fn net_pod(name: &str) -> PodConfig {
        let mut c = host_pod(name);
        c.namespaces.network = NsMode::Pod;
        c.namespaces.ipc = NsMode::Pod;
        c.sysctls = [("net.ipv4.ping_group_range".to_string(), "0 0".to_string())].into();
        c.cgroup_parent = "kubepods-besteffort-pod1.slice".into();
        c
    }

    #[tokio::test]
    async fn network_pod_operations_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (pods, rec) = recorded(dir.path(), "0");
        let id = pods.run(net_pod("n")).await.unwrap();
        let short = &id[..6];
        assert_eq!(
            rec.take(),
            [
                format!("shm {short}/shm {SHM_SIZE}"),
                format!("create netns/{short},ipcns/{short},utsns/{short} hostname=Some(\"n\")"),
                "sysctl /proc/sys/net/ipv4/ping_group_range=0 0".to_string(),
            ]
        );
        let r = pods.get_ready(&id).unwrap();
        assert_eq!(r.ips, ["10.9.0.5"]);
        // The interface the plugin's result names, not the CNI_IFNAME crid passed.
        assert_eq!(r.ifname.as_deref(), Some("net1"));
        assert_eq!(r.cgroup_parent, "kubepods-besteffort-pod1.slice");
        assert_eq!(r.cgroup_driver, CgroupDriver::Systemd);
        let hosts = std::fs::read_to_string(&r.paths.hosts).unwrap();
        assert!(hosts.contains("10.9.0.5\tn\n"), "{hosts}");

        pods.stop(&id).await.unwrap();
        assert_eq!(rec.take(), [format!("remove netns/{short}")]);
        pods.remove(&id).await.unwrap();
        assert_eq!(
            rec.take(),
            [
                format!("remove ipcns/{short}"),
                format!("remove utsns/{short}"),
                format!("unmount {short}/shm"),
            ]
        );
        let log = std::fs::read_to_string(dir.path().join("plugin.log")).unwrap();
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=n;K8S_POD_INFRA_CONTAINER_ID={id};K8S_POD_UID=uid-n"
        );
        assert_eq!(log, format!("ADD {args}\nDEL {args}\n"));
    }

    /// A pod in its own user namespace: made with its network, IPC and UTS namespaces (which it
    /// owns) in one step, never from the prepared networks; its pin goes with the pod.
    #[tokio::test]
    async fn a_user_namespace_pod_makes_and_removes_its_namespaces() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let (pods, rec) = recorded(dir.path(), "0");
        let map = |host_id| crate::pod::IdMapping {
            container_id: 0,
            host_id,
            length: 65536,
        };
        let mut c = net_pod("u");
        c.sysctls.clear();
        c.namespaces.user = Some(crate::pod::UsernsOptions {
            mode: NsMode::Pod,
            uids: vec![map(100_000)],
            gids: vec![map(200_000)],
        });
        let id = pods.run(c.clone()).await.unwrap();
        let short = &id[..6];
        assert_eq!(
            rec.take(),
            [
                format!("shm {short}/shm {SHM_SIZE}"),
                format!("userns userns/{short} uid=100000+65536 gid=200000+65536"),
                format!("create netns/{short},ipcns/{short},utsns/{short} hostname=Some(\"u\")"),
            ]
        );
        let r = pods.get_ready(&id).unwrap();
        assert_eq!(r.userns.unwrap().gid.host_id, 200_000);
        assert!(r.paths.userns.is_some());
        pods.stop(&id).await.unwrap();
        pods.remove(&id).await.unwrap();
        let calls = rec.take();
        assert!(
            calls.contains(&format!("remove userns/{short}")),
            "{calls:?}"
        );

        // A pod-wide PID namespace's init runs as nobody inside: 65534 must be mapped.
        let mut c2 = c.clone();
        c2.metadata.name = "u2".into();
        c2.namespaces.pid = NsMode::Pod;
        let short_map = crate::pod::IdMapping {
            length: 1000,
            ..map(100_000)
        };
        c2.namespaces.user.as_mut().unwrap().uids = vec![short_map];
        let e = pods.run(c2).await.unwrap_err();
        assert_eq!(e.kind(), imagestore::ErrorKind::InvalidArgument, "{e}");
        assert!(rec.take().is_empty());
    }

    /// critest's pods: no hostname, a 68-character name. The UTS namespace gets kubelet's
    /// hostname (the name cut to 63), and so do `/etc/hostname` and `/etc/hosts`.
    #[tokio::test]
    async fn a_pod_without_hostname_gets_its_name_cut_to_63() {
        let dir = tempfile::tempdir().unwrap();
        let (pods, rec) = recorded(dir.path(), "0");
        let name = "PodSandbox-for-create-container-2f4a8e1c-6b0d-4c1e-9a57-3d2b1c0e9f88";
        let mut c = net_pod(name);
        c.hostname.clear();
        c.sysctls.clear();
        let id = pods.run(c).await.unwrap();
        let short = &id[..6];
        let expected = &name[..63];
        assert_eq!(
            rec.take(),
            [
                format!("shm {short}/shm {SHM_SIZE}"),
                format!(
                    "create netns/{short},ipcns/{short},utsns/{short} hostname=Some({expected:?})"
                ),
            ]
        );
        let r = pods.get_ready(&id).unwrap();
        let file = std::fs::read_to_string(&r.paths.hostname).unwrap();
        assert_eq!(file, format!("{expected}\n"));
        let hosts = std::fs::read_to_string(&r.paths.hosts).unwrap();
        assert!(
            hosts.contains(&format!("10.9.0.5\t{expected}\n")),
            "{hosts}"
        );
        pods.remove(&id).await.unwrap();
        rec.take();

        // A hostname the config names is not cut: too long is the caller's mistake.
        let mut c = net_pod("long");
        c.hostname = "h".repeat(65);
        let e = pods.run(c).await.unwrap_err();
        assert_eq!(e.kind(), imagestore::ErrorKind::InvalidArgument, "{e}");
        // Nor is a name that leaves nothing once cut and trimmed.
        let mut c = net_pod(&"-".repeat(70));
        c.hostname.clear();
        let e = pods.run(c).await.unwrap_err();
        assert_eq!(e.kind(), imagestore::ErrorKind::InvalidArgument, "{e}");
        // Refused before any namespace or mount.
        assert!(rec.take().is_empty());
    }

    #[tokio::test]
    async fn a_late_failure_undoes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let (pods, rec) = recorded(dir.path(), "0");
        rec.fail_sysctls.store(true, Ordering::SeqCst);
        let e = pods.run(net_pod("f")).await.unwrap_err();
        assert_eq!(e.kind(), imagestore::ErrorKind::InvalidArgument);
        let calls = rec.take();
        assert_eq!(calls.len(), 6, "{calls:?}");
        assert!(calls[2].starts_with("remove netns/"), "{calls:?}");
        assert!(calls[5].starts_with("unmount "), "{calls:?}");
        let log = std::fs::read_to_string(dir.path().join("plugin.log")).unwrap();
        assert!(log.starts_with("ADD ") && log.contains("\nDEL "), "{log}");
        assert!(pods.list(&PodFilter::default()).is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path().join("root/pods"))
                .unwrap()
                .count(),
            0
        );
        assert!(pods.cni().cached_attachments().is_empty());
        // The name is free again.
        rec.fail_sysctls.store(false, Ordering::SeqCst);
        let id = pods.run(net_pod("f")).await.unwrap();
        pods.remove(&id).await.unwrap();
    }

    #[tokio::test]
    async fn a_retry_after_the_caller_gave_up_gets_the_same_pod() {
        let dir = tempfile::tempdir().unwrap();
        let (pods, _rec) = recorded(dir.path(), "1");
        let first = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            pods.run(net_pod("slow")),
        )
        .await;
        assert!(first.is_err(), "the first call should time out");
        let id = pods.run(net_pod("slow")).await.unwrap();
        let all = pods.list(&PodFilter::default());
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].id, id);
        let e = pods.run(net_pod("slow")).await.unwrap_err();
        assert_eq!(e.kind(), imagestore::ErrorKind::AlreadyExists);
        pods.remove(&id).await.unwrap();
    }

    #[tokio::test]
    async fn refused_configs() {
        let dir = tempfile::tempdir().unwrap();
        let pods = manager(dir.path());
        let mut c = host_pod("h");
        c.runtime_handler = "kata".into();
        assert_eq!(
            pods.run(c).await.unwrap_err().kind(),
            imagestore::ErrorKind::InvalidArgument
        );
        let mut c = host_pod("h");
        c.runtime_handler = "urunc".into();
        let id = pods.run(c).await.unwrap();
        assert_eq!(pods.get(&id).unwrap().kind, PodKind::Unikernel);
        pods.remove(&id).await.unwrap();
        for (k, v) in [("net.ipv4.ip_forward", "1"), ("kernel.shmmax", "1")] {
            let mut c = host_pod("s");
            c.sysctls = [(k.to_string(), v.to_string())].into();
            let e = pods.run(c).await.unwrap_err();
            assert_eq!(e.kind(), imagestore::ErrorKind::InvalidArgument, "{k}: {e}");
        }
        let mut c = host_pod("d");
        c.dns.servers = vec!["1.1.1.1\nnameserver 6.6.6.6".into()];
        assert!(pods.run(c).await.is_err());
        let mut c = host_pod("g");
        c.cgroup_parent = "../../etc".into();
        assert!(pods.run(c).await.is_err());
        let mut c = host_pod("m");
        c.metadata.uid.clear();
        assert!(pods.run(c).await.is_err());
        assert!(pods.list(&PodFilter::default()).is_empty());
    }
}
