//! Harness shared by the operations and recovery tests: the real crid binary on temp dirs
//! (config, root, state, socket, log), a per-test CNI bridge network, and an in-process
//! registry (conformance's fake registry) made plain-HTTP through `certs.d`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use conformance::client::Cri;
use proto::cri;

pub const PLUGINS: &str = "/usr/lib/cni";

/// Whether this host can run root tests with CNI; `false` means skip (never in CI).
pub fn can_run_pods() -> bool {
    can_run_pods_for("these")
}

/// [`can_run_pods`], naming `what` tests in the CI failure.
pub fn can_run_pods_for(what: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let plugins = Path::new(PLUGINS).join("bridge").exists();
    if root && plugins {
        return true;
    }
    let reason = if root {
        "no CNI plugins in /usr/lib/cni"
    } else {
        "needs root"
    };
    skip(what, reason);
    false
}

/// Notes why `what` tests are skipped; under `CI=true` a skip is a failure instead.
pub fn skip(what: &str, reason: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} tests cannot run in CI: {reason}"
    );
    eprintln!("skipped: {reason}");
}

/// The test registry (`CRID_TEST_REGISTRY`) when this host can run `what` tests: root, the
/// CNI plugins and every program in `bins`; `None` (skip, never in CI) otherwise.
pub fn registry_for(what: &str, bins: &[&str]) -> Option<String> {
    if !can_run_pods_for(what) {
        return None;
    }
    if let Some(bin) = bins.iter().find(|b| !on_path(b)) {
        skip(what, &format!("{bin} is not installed"));
        return None;
    }
    match std::env::var("CRID_TEST_REGISTRY") {
        Ok(r) => Some(r),
        Err(_) => {
            skip(
                what,
                "CRID_TEST_REGISTRY is not set (scripts/test.sh starts a registry)",
            );
            None
        }
    }
}

/// A bridge network unique to one test (bridge name, subnet, IPAM dir); the bridge is
/// deleted on drop.
pub struct Net {
    pub bridge: String,
    pub prefix: String,
    pub name: String,
    pub ipam_dir: PathBuf,
}

impl Net {
    pub fn new(tag: u8, dir: &Path) -> Net {
        let pid = std::process::id();
        Net {
            bridge: format!("cro{tag}x{}", pid % 100_000),
            prefix: format!("10.{}.{}", 180 + u32::from(tag), pid % 250),
            name: format!("crid-ops-{tag}"),
            ipam_dir: dir.join("ipam"),
        }
    }

    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// bridge (hairpin) + host-local, then `extra` plugins, portmap and loopback.
    pub fn conflist_with(&self, extra: &[serde_json::Value]) -> String {
        let mut plugins = vec![serde_json::json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "dataDir": self.ipam_dir,
                "ranges": [[{ "subnet": format!("{}.0/24", self.prefix) }]],
                "routes": [{ "dst": "0.0.0.0/0" }]
            }
        })];
        plugins.extend(extra.iter().cloned());
        plugins
            .push(serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}}));
        plugins.push(serde_json::json!({"type": "loopback"}));
        serde_json::json!({"cniVersion": "1.0.0", "name": self.name, "plugins": plugins})
            .to_string()
    }

    /// bridge + host-local + loopback.
    pub fn conflist(&self) -> String {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": self.ipam_dir,
                        "ranges": [[{ "subnet": format!("{}.0/24", self.prefix) }]],
                        "routes": [{ "dst": "0.0.0.0/0" }]
                    }
                },
                {"type": "loopback"}
            ]
        })
        .to_string()
    }

    /// Addresses host-local still holds.
    pub fn reservations(&self) -> Vec<String> {
        std::fs::read_dir(self.ipam_dir.join(&self.name))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("10."))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// veths still enslaved to the bridge.
    pub fn veths(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .stderr(Stdio::null())
            .output()
            .expect("ip link");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

/// Mount points below `dir` (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&d))
        .collect()
}

/// Removes every container (RemoveContainer stops a running one) and then stops and removes
/// every pod, through the API, ignoring errors: a test's clean-up.
pub async fn remove_everything(cri: &Cri) {
    let mut rt = cri.runtime.clone();
    let list = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .map(|r| r.into_inner().containers)
        .unwrap_or_default();
    for c in list {
        let _ = rt
            .remove_container(cri::RemoveContainerRequest { container_id: c.id })
            .await;
    }
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .map(|r| r.into_inner().items)
        .unwrap_or_default();
    for p in pods {
        let _ = rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: p.id.clone(),
            })
            .await;
        let _ = rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: p.id,
            })
            .await;
    }
}

/// Namespace pins crid still holds under `<dir>/state`.
pub fn pins(dir: &Path) -> Vec<String> {
    ["netns", "ipcns", "utsns", "userns"]
        .iter()
        .flat_map(|k| {
            std::fs::read_dir(dir.join("state").join(k))
                .map(|d| {
                    d.flatten()
                        .map(|e| e.path().display().to_string())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .collect()
}

/// Unmounts everything below `dir`, deepest first (for wiping a state dir).
pub fn unmount_all(dir: &Path) {
    let mut m = mounts_under(dir);
    m.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in m {
        let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// What a failed test may leave behind under `dir` must not outlive it: containers of each
/// OCI runtime under `<dir>/state/<runtime>` are force-deleted, the processes whose command
/// line names `dir` (monitors, PID-namespace holders, VMMs, plugins) are killed, then
/// everything mounted below `dir` is detached. Call it once crid is stopped.
pub fn release_leftovers(dir: &Path) {
    for runtime in ["runc", "crun"] {
        let root = dir.join("state").join(runtime);
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in entries.flatten() {
            let _ = Command::new(runtime)
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force"])
                .arg(e.file_name())
                .stderr(Stdio::null())
                .status();
        }
    }
    // A test that failed before removing its pods leaves their monitors and PID-namespace
    // holders running (crid keeps them across its own restarts by design); nothing else will
    // ever stop them once the test's directory is gone.
    for pid in pids_under(dir, None) {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    unmount_all(dir);
}

/// Processes other than `except` whose command line mentions `dir` (monitors, runc,
/// plugins started for this test).
pub fn processes_under(dir: &Path, except: Option<u32>) -> Vec<String> {
    processes_with_cmdline(dir, except)
        .into_iter()
        .map(|(pid, cmd)| format!("{pid}: {cmd}"))
        .collect()
}

/// The parent of process `pid` (the field after the command name in `/proc/PID/stat`).
pub fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// Pids of the processes [`processes_under`] lists.
pub fn pids_under(dir: &Path, except: Option<u32>) -> Vec<u32> {
    processes_with_cmdline(dir, except)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}

fn processes_with_cmdline(dir: &Path, except: Option<u32>) -> Vec<(u32, String)> {
    let needle = dir.display().to_string();
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                    if pid == me || Some(pid) == except {
                        return None;
                    }
                    let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
                    let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                    cmd.contains(&needle).then_some((pid, cmd))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A test's directory layout and the crid process using it. Each test file writes its own
/// `<dir>/config.toml` first; crid is stopped (SIGTERM, bounded wait) on drop.
pub struct Crid {
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub cri: Cri,
    /// The temp dir when this crid owns it ([`Crid::start_owned`]): on drop, after crid is
    /// stopped, what a failed test left under it is released and the dir is deleted.
    tmp: Option<tempfile::TempDir>,
}

/// Writes `<dir>/config.toml`: CNI from `<dir>/net.d` (+ `<dir>/bin`), registries from
/// `<dir>/certs.d`, the NRI socket at `<dir>/nri.sock`, plus `extra` TOML appended.
pub fn write_config(dir: &Path, extra: &str) {
    // No prepared pod networks: these tests count addresses and veths (pods.rs covers them).
    std::fs::create_dir_all(dir.join("net.d")).unwrap();
    std::fs::create_dir_all(dir.join("certs.d")).unwrap();
    let config = format!(
        "[registry]\nconfig_path = {:?}\n[nri]\nsocket_path = {:?}\n[cni]\nconf_dir = {:?}\nbin_dirs = [{:?}, {:?}]\nplugin_timeout_secs = 20\nprepared_networks = 0\n{extra}",
        dir.join("certs.d"),
        dir.join("nri.sock"),
        dir.join("net.d"),
        dir.join("bin"),
        PLUGINS,
    );
    std::fs::write(dir.join("config.toml"), config).unwrap();
}

/// Makes `host` a plain-HTTP registry for crid.
pub fn plain_http_registry(dir: &Path, host: &str) {
    let certs = dir.join("certs.d").join(host);
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(
        certs.join("hosts.toml"),
        format!(
            "server = \"http://{host}\"\n[host.\"http://{host}\"]\ncapabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .unwrap();
}

/// `crid --config ... --root ... --state ...` arguments for `dir`.
pub fn crid_args(dir: &Path) -> Vec<String> {
    vec![
        "--config".into(),
        dir.join("config.toml").display().to_string(),
        "--root".into(),
        dir.join("root").display().to_string(),
        "--state".into(),
        dir.join("state").display().to_string(),
    ]
}

/// Runs an operator subcommand of crid on `dir` and returns its stdout (panics on failure).
pub fn crid_cli(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_crid"))
        .args(crid_args(dir))
        .args(args)
        .output()
        .expect("run crid");
    assert!(
        out.status.success(),
        "crid {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Spawns crid on `dir` (config `<dir>/config.toml`, root `<dir>/root`, state `<dir>/state`,
/// socket `<dir>/crid.sock`, debug log appended to `<dir>/crid.log`), waits (bounded) for its
/// socket and connects the CRI client. Kills crid and panics with its log if it does not come
/// up.
pub async fn spawn_crid(dir: &Path) -> (Child, Cri) {
    spawn_crid_under(dir, &[]).await
}

/// [`spawn_crid`] with crid's command line after `wrapper` (a program and its arguments that
/// execute crid in the same process, such as `systemd-socket-activate -l SOCKET`).
pub async fn spawn_crid_under(dir: &Path, wrapper: &[String]) -> (Child, Cri) {
    let socket = dir.join("crid.sock");
    let _ = std::fs::remove_file(&socket);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("crid.log"))
        .unwrap();
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(env!("CARGO_BIN_EXE_crid"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_crid")),
    };
    let mut child = command
        .args(crid_args(dir))
        .arg("--socket")
        .arg(&socket)
        .arg("--log-level")
        .arg("debug")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start crid");
    for _ in 0..150 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The socket file appears at bind(), a moment before listen(): retry a refused
    // connection briefly.
    let endpoint = format!("unix://{}", socket.display());
    let mut attempt = 0;
    loop {
        match Cri::connect(&endpoint).await {
            Ok(cri) => return (child, cri),
            Err(_) if attempt < 50 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("crid did not start: {e:#}\n{}", log_text(dir))
            }
        }
    }
}

/// SIGTERM, a wait of at most `tenths` tenths of a second, then SIGKILL.
pub fn terminate(child: &mut Child, tenths: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    for _ in 0..tenths {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Crid {
    /// Starts crid on `dir` (which has a config from [`write_config`]).
    pub async fn start(dir: &Path) -> Crid {
        let (child, cri) = spawn_crid(dir).await;
        Crid {
            dir: dir.to_owned(),
            child: Some(child),
            cri,
            tmp: None,
        }
    }

    /// Starts crid on `tmp` (which has a config) and owns it: on drop crid is stopped, then
    /// [`release_leftovers`], then the dir is deleted.
    pub async fn start_owned(tmp: tempfile::TempDir) -> Crid {
        Crid::start_owned_under(tmp, &[]).await
    }

    /// [`Crid::start_owned`] with crid executed by `wrapper` ([`spawn_crid_under`]).
    pub async fn start_owned_under(tmp: tempfile::TempDir, wrapper: &[String]) -> Crid {
        let (child, cri) = spawn_crid_under(tmp.path(), wrapper).await;
        Crid {
            dir: tmp.path().to_owned(),
            child: Some(child),
            cri,
            tmp: Some(tmp),
        }
    }

    /// Stops crid (SIGTERM, bounded wait; nothing if it was killed already) and hands back the
    /// temp dir it owned, untouched, for a restart on it.
    pub fn into_dir(mut self) -> tempfile::TempDir {
        self.stop();
        self.tmp.take().expect("crid does not own its dir")
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn rt(
        &self,
    ) -> cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel> {
        self.cri.runtime.clone()
    }

    pub fn log(&self) -> String {
        log_text(&self.dir)
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, no clean-up by crid.
    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM with a bounded wait, then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, 100);
        }
    }

    pub fn images_dir(&self) -> PathBuf {
        self.dir.join("root/images")
    }

    /// Runs a pod of [`pod_config`] named `name`.
    pub async fn run_pod(&self, name: &str) -> Result<String, tonic::Status> {
        self.try_run_pod(&pod_config(name, &self.dir), "").await
    }

    /// Runs a pod of `config` under a runtime handler; returns its id or the refusal.
    pub async fn try_run_pod(
        &self,
        config: &cri::PodSandboxConfig,
        handler: &str,
    ) -> Result<String, tonic::Status> {
        self.rt()
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.into(),
            })
            .await
            .map(|r| r.into_inner().pod_sandbox_id)
    }

    pub async fn pods(&self) -> Vec<cri::PodSandbox> {
        self.cri
            .runtime
            .clone()
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .expect("list pods")
            .into_inner()
            .items
    }

    pub async fn stop_and_remove_pod(&self, id: &str) {
        let mut rt = self.cri.runtime.clone();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .expect("stop pod");
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .expect("remove pod");
    }

    pub async fn pull(&self, image: &str) -> Result<String, tonic::Status> {
        self.cri
            .images
            .clone()
            .pull_image(cri::PullImageRequest {
                image: Some(spec(image)),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().image_ref)
    }

    pub async fn images(&self) -> Vec<cri::Image> {
        self.cri
            .images
            .clone()
            .list_images(cri::ListImagesRequest { filter: None })
            .await
            .expect("list images")
            .into_inner()
            .images
    }

    pub async fn remove_image(&self, image: &str) {
        self.cri
            .images
            .clone()
            .remove_image(cri::RemoveImageRequest {
                image: Some(spec(image)),
            })
            .await
            .expect("remove image");
    }

    /// The first file system `ImageFsInfo` reports.
    pub async fn image_fs(&self) -> cri::FilesystemUsage {
        self.cri
            .images
            .clone()
            .image_fs_info(cri::ImageFsInfoRequest {})
            .await
            .expect("image fs info")
            .into_inner()
            .image_filesystems
            .swap_remove(0)
    }

    /// `ImageFsInfo` used bytes.
    pub async fn image_fs_used(&self) -> u64 {
        self.image_fs().await.used_bytes.unwrap().value
    }

    /// Entries in a directory of the image store (`blobs/sha256`, `layers/sha256`, `ingest`,
    /// `tmp`).
    pub fn store_entries(&self, sub: &str) -> Vec<String> {
        std::fs::read_dir(self.images_dir().join(sub))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Crid {
    /// Pulls `image`, panicking with crid's log on failure.
    pub async fn expect_pull(&self, image: &str) -> String {
        self.pull(image)
            .await
            .unwrap_or_else(|e| panic!("pull {image}: {e}\n{}", self.log()))
    }

    /// Runs a host-network pod ([`host_net_pod`]) logging to `<dir>/logs/<name>`.
    pub async fn run_host_pod(&self, name: &str) -> (String, cri::PodSandboxConfig) {
        self.run_host_pod_with(name, "").await
    }

    /// [`Crid::run_host_pod`] under a runtime handler (`urunc` for unikernel images).
    pub async fn run_host_pod_with(
        &self,
        name: &str,
        handler: &str,
    ) -> (String, cri::PodSandboxConfig) {
        let config = host_net_pod(name, &self.dir.join("logs").join(name));
        let id = self.run_pod_under(&config, handler).await;
        (id, config)
    }

    /// Runs a pod of `config` under a runtime handler and returns its id; a refusal fails the
    /// test with crid's log.
    pub async fn run_pod_under(&self, config: &cri::PodSandboxConfig, handler: &str) -> String {
        self.try_run_pod(config, handler)
            .await
            .unwrap_or_else(|e| panic!("run pod: {e}\n{}", self.log()))
    }

    /// A pod's status and its verbose info.
    pub async fn pod_status(&self, id: &str) -> (cri::PodSandboxStatus, serde_json::Value) {
        let r = self
            .rt()
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            })
            .await
            .expect("status")
            .into_inner();
        let info = serde_json::from_str(r.info.get("info").expect("verbose info")).unwrap();
        (r.status.expect("status"), info)
    }

    pub async fn create(
        &self,
        pod: &(String, cri::PodSandboxConfig),
        config: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        self.rt()
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.0.clone(),
                config: Some(config),
                sandbox_config: Some(pod.1.clone()),
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    /// Stops a container with a grace period of `timeout` seconds, panicking with crid's log on
    /// failure.
    pub async fn stop_container(&self, id: &str, timeout: i64) {
        self.rt()
            .stop_container(cri::StopContainerRequest {
                container_id: id.into(),
                timeout,
            })
            .await
            .unwrap_or_else(|e| panic!("stop {id}: {e}\n{}", self.log()));
    }

    /// Removes a container, panicking with crid's log on failure.
    pub async fn remove_container(&self, id: &str) {
        self.rt()
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("remove {id}: {e}\n{}", self.log()));
    }

    /// Stops a container (a grace period of 2 s) and removes it, panicking with crid's log on
    /// failure.
    pub async fn stop_and_remove_container(&self, id: &str) {
        self.stop_container(id, 2).await;
        self.remove_container(id).await;
    }

    /// Every container crid lists.
    pub async fn containers(&self) -> Vec<cri::Container> {
        self.rt()
            .list_containers(cri::ListContainersRequest { filter: None })
            .await
            .expect("list containers")
            .into_inner()
            .containers
    }

    /// Starts a created container, panicking with crid's log on failure.
    pub async fn start_container(&self, id: &str) {
        self.rt()
            .start_container(cri::StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("start {id}: {e}\n{}", self.log()));
    }

    /// Creates and starts a container in `pod`; returns its id.
    pub async fn create_start(
        &self,
        pod: &(String, cri::PodSandboxConfig),
        config: cri::ContainerConfig,
    ) -> String {
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let id = self
            .create(pod, config)
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}\n{}", self.log()));
        self.start_container(&id).await;
        id
    }

    /// Creates and starts a container in `pod`, then waits (bounded: 60 s) until it exited;
    /// returns its status.
    pub async fn run_to_exit(
        &self,
        pod: &(String, cri::PodSandboxConfig),
        config: cri::ContainerConfig,
    ) -> cri::ContainerStatus {
        let id = self.create_start(pod, config).await;
        self.wait_state(&id, cri::ContainerState::ContainerExited)
            .await
    }

    /// The VM section of the verbose runtime `Status` (`vm`: the prepared and armed guests of
    /// the pools).
    pub async fn vm_status(&self) -> serde_json::Value {
        let status = self
            .rt()
            .status(cri::StatusRequest { verbose: true })
            .await
            .unwrap()
            .into_inner();
        serde_json::from_str(&status.info["vm"]).unwrap()
    }

    /// A container's status and its verbose info.
    pub async fn container_status(&self, id: &str) -> (cri::ContainerStatus, serde_json::Value) {
        let r = self
            .rt()
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            })
            .await
            .unwrap_or_else(|e| panic!("status {id}: {e}"))
            .into_inner();
        let info = serde_json::from_str(r.info.get("info").expect("verbose info")).unwrap();
        (r.status.expect("status"), info)
    }

    /// Waits (bounded: 60 s) until the container is in `state`.
    pub async fn wait_state(&self, id: &str, state: cri::ContainerState) -> cri::ContainerStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (s, _) = self.container_status(id).await;
            if s.state == state as i32 {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "container {id} never reached {state:?}: {s:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<cri::ExecSyncResponse, tonic::Status> {
        self.rt()
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout,
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Removes everything through the API, checks no container directory is left, then stops
    /// crid.
    pub async fn finish(mut self) {
        remove_everything(&self.cri).await;
        let left: Vec<_> = std::fs::read_dir(self.dir.join("root/containers"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "containers left: {left:?}");
        self.stop();
    }
}

impl Drop for Crid {
    fn drop(&mut self) {
        self.stop();
        if let Some(tmp) = self.tmp.take() {
            release_leftovers(tmp.path());
        }
    }
}

pub fn log_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("crid.log")).unwrap_or_default()
}

pub fn spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    }
}

pub fn pod_config(name: &str, dir: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "ops-test".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: dir.join("logs").join(name).display().to_string(),
        ..Default::default()
    }
}

/// A TCP proxy in front of a registry that records every request line (`GET /v2/...`) and,
/// while a cut is armed, closes the connection after `n` response bytes of a request whose
/// path contains the armed needle (a blob digest). Stopped on drop.
pub struct RegistryProxy {
    pub addr: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    cut: std::sync::Arc<std::sync::Mutex<Option<(String, usize)>>>,
    cuts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RegistryProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`HOST:PORT`).
    pub async fn start(upstream: &str) -> RegistryProxy {
        use std::sync::{Arc, Mutex};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let cut = Arc::new(Mutex::new(None));
        let cuts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (r, c, n, up) = (
            requests.clone(),
            cut.clone(),
            cuts.clone(),
            upstream.to_owned(),
        );
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (r, c, n, up) = (r.clone(), c.clone(), n.clone(), up.clone());
                tokio::spawn(async move {
                    if let Ok(server) = tokio::net::TcpStream::connect(&up).await {
                        proxy_connection(client, server, r, c, n).await;
                    }
                });
            }
        });
        RegistryProxy {
            addr,
            requests,
            cut,
            cuts,
            task,
        }
    }

    /// Arms (or with `None` disarms) the cut: responses to requests whose path contains
    /// `needle` are cut after `bytes` bytes.
    pub fn cut(&self, cut: Option<(&str, usize)>) {
        *self.cut.lock().unwrap() = cut.map(|(s, n)| (s.to_owned(), n));
    }

    /// How many connections were cut so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every request line seen (`METHOD PATH`).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// How many GET requests had a path ending with `suffix`.
    pub fn gets(&self, suffix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|l| l.starts_with("GET ") && l.ends_with(suffix))
            .count()
    }
}

impl Drop for RegistryProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn proxy_connection(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    cut: std::sync::Arc<std::sync::Mutex<Option<(String, usize)>>>,
    cuts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Response bytes still allowed on this connection (usize::MAX: no cut armed).
    let budget = std::sync::Arc::new(AtomicUsize::new(usize::MAX));
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let b = budget.clone();
    let upstream = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Request heads are text; clients here send no request bodies on pulls.
            for line in String::from_utf8_lossy(&buf[..n]).split("\r\n") {
                let mut w = line.split(' ');
                if let (Some(m @ ("GET" | "HEAD")), Some(p)) = (w.next(), w.next()) {
                    requests.lock().unwrap().push(format!("{m} {p}"));
                    if let Some((needle, bytes)) = cut.lock().unwrap().clone() {
                        if m == "GET" && p.contains(&needle) {
                            b.store(bytes, Ordering::SeqCst);
                        }
                    }
                }
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let downstream = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let left = budget.load(Ordering::SeqCst);
            if n >= left {
                let _ = cw.write_all(&buf[..left]).await;
                cuts.fetch_add(1, Ordering::SeqCst);
                break;
            }
            if left != usize::MAX {
                budget.store(left - n, Ordering::SeqCst);
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    };
    // A cut ends both directions: the client sees its connection reset mid-body.
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
}

/// Builds the freestanding PVH test guest (sandbox/tests/guests/freestanding) and pushes it as
/// a unikraft/qemu unikernel image with `crid unikernel pack --push` to `reg`, tagged `tag`.
/// The guest prints its command line, exits with `exit=N` or, without it, halts forever.
pub fn push_freestanding_guest(reg: &str, dir: &Path, tag: &str) -> String {
    let kernel = dir.join(format!("guest-{tag}.elf"));
    push_guest_as(reg, &kernel, "unikraft", "qemu", "stay", tag)
}

/// Builds the freestanding test guest into `kernel` (whose file name the guest sees as its
/// first argument) and pushes it to `reg` as a unikernel image of type `guest` for
/// `hypervisor` with the image command line `cmdline`, tagged `tag`.
pub fn push_guest_as(
    reg: &str,
    kernel: &Path,
    guest: &str,
    hypervisor: &str,
    cmdline: &str,
    tag: &str,
) -> String {
    push_guest_with(reg, kernel, guest, hypervisor, cmdline, tag, &[])
}

/// [`push_guest_as`] with more `crid unikernel pack` options (e.g. `--block FILE`).
pub fn push_guest_with(
    reg: &str,
    kernel: &Path,
    guest: &str,
    hypervisor: &str,
    cmdline: &str,
    tag: &str,
    pack_options: &[&str],
) -> String {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../sandbox/tests/guests/freestanding/build.sh");
    let st = Command::new("sh")
        .arg(&script)
        .arg(kernel)
        .status()
        .unwrap();
    assert!(st.success(), "building the test guest failed");
    let reference = format!("{reg}/crid-tests/unikernel:{tag}-{}", std::process::id());
    let _push = one_push_at_a_time();
    let out = Command::new(env!("CARGO_BIN_EXE_crid"))
        .args([
            "unikernel",
            "pack",
            "--type",
            guest,
            "--hypervisor",
            hypervisor,
        ])
        .arg("--kernel")
        .arg(kernel)
        .args(["--cmdline", cmdline, "-t", "guest"])
        .args(pack_options)
        .arg("--push")
        .arg(&reference)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pack --push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    reference
}

/// Serialises the `crid unikernel pack --push` runs of one test binary: tests running in
/// parallel push the same guests (the same blobs, often the same tag), and the registry refused
/// a concurrent upload of one blob (DIGEST_INVALID).
pub fn one_push_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static PUSHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    PUSHING.lock().unwrap_or_else(|e| e.into_inner())
}

/// The host's static busybox, which the test images carry.
pub fn host_busybox() -> Option<&'static str> {
    ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// An image layer's tree: the usual top directories and the host's busybox as `bin/busybox`,
/// linked as each of `applets`; the caller may add to it. Panics without a busybox.
pub fn busybox_tree(applets: &[&str]) -> conformance::fixtures::build::TarBuilder {
    let mut t = conformance::fixtures::build::TarBuilder::new();
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
        t.dir(d, 0o755);
    }
    let bb = std::fs::read(host_busybox().expect("busybox")).expect("read busybox");
    t.file("bin/busybox", 0o755, &bb);
    for applet in applets {
        t.symlink(&format!("bin/{applet}"), "busybox");
    }
    t
}

/// Runs `cmd` without stdin, panicking with its stderr unless it succeeds.
pub fn run_ok(cmd: &mut Command) {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends `payload` to `ip:7777` over UDP and returns the echo (bounded: `tries` of 0.5 s).
pub fn udp_echo(ip: &str, payload: &[u8], tries: u32) -> Option<Vec<u8>> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 256];
    for _ in 0..tries {
        sock.send_to(payload, (ip, 7777)).ok()?;
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            if from.ip().to_string() == ip {
                return Some(buf[..n].to_vec());
            }
        }
    }
    None
}

/// Where a tool is on PATH: the first file of that name in its directories.
pub fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|p| p.is_file())
    })
}

/// Whether a tool is on PATH.
pub fn on_path(bin: &str) -> bool {
    which(bin).is_some()
}

/// Open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Bytes of the regular files below `dir` (symlinks not followed).
pub fn tree_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// A deterministic, incompressible byte stream.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// On drop (also when a test fails): [`release_leftovers`], which kills the processes whose
/// command line names `dir` (monitors, VMMs, plugins; crid itself is stopped by [`Crid`]'s
/// drop first when declared after this guard).
pub struct Leftovers(pub PathBuf);

impl Drop for Leftovers {
    fn drop(&mut self) {
        release_leftovers(&self.0);
    }
}

/// A pod `name` of Kubernetes namespace `namespace` with the namespaces `options` give (a pod
/// network, CNI's, unless they say `NODE`), hostname `name`.
pub fn pod_with(
    name: &str,
    namespace: &str,
    options: cri::NamespaceOption,
) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: namespace.into(),
            attempt: 0,
        }),
        hostname: name.into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(options),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A pod in a pod network (CNI) with its own PID namespace.
pub fn net_pod(name: &str, namespace: &str) -> cri::PodSandboxConfig {
    pod_with(
        name,
        namespace,
        cri::NamespaceOption {
            pid: cri::NamespaceMode::Container as i32,
            ..Default::default()
        },
    )
}

/// A host-network pod (no CNI needed) with its own PID namespace, logging under `log_dir`.
pub fn host_net_pod(name: &str, log_dir: &Path) -> cri::PodSandboxConfig {
    let options = cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Container as i32,
        ..Default::default()
    };
    cri::PodSandboxConfig {
        log_directory: log_dir.display().to_string(),
        ..pod_with(name, "test", options)
    }
}

/// A container of `image` running `args` in its own PID namespace (no pause holder needed),
/// logging to `<name>.log`.
pub fn container_config(image: &str, name: &str, args: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(spec(image)),
        command: args.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A unikernel container of `image` whose CRI `args` reach the guest's command line, logging
/// to `<name>.log`.
pub fn guest_config(image: &str, name: &str, args: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(spec(image)),
        args: args.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

/// What kubelet sends for a guest container `name` of `image` in `pod`: `args`, an
/// environment variable, a declared port, a ConfigMap and an emptyDir volume; limits and the
/// build are the caller's.
pub fn kubelet_guest(
    pod: &conformance::kubelet::KubeletPod,
    name: &str,
    image: &str,
    args: &[&str],
) -> conformance::kubelet::KubeletContainer {
    pod.container(name, image)
        .args(args)
        .env("GREETING", "hi")
        .port("http", 8080)
        .config_map("config", "/etc/app", &[("greeting", "hello")])
        .empty_dir("cache", "/cache")
}

/// The VMM's argv of a guest container, from its verbose `ContainerStatus` info.
pub fn guest_argv(info: &serde_json::Value) -> Vec<String> {
    serde_json::from_value(info["runtimeSpec"]["unikernel"]["argv"].clone()).unwrap()
}

/// The argument after the first `flag` in `argv`.
pub fn arg_after(argv: &[String], flag: &str) -> Option<String> {
    argv.windows(2).find(|w| w[0] == flag).map(|w| w[1].clone())
}

/// The Prometheus text crid's metrics endpoint at `addr` serves (bounded: 10 s).
pub async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.read_to_string(&mut out),
    )
    .await
    .expect("scrape timed out")
    .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The value of the series `name` with exactly `labels` (in any order) in Prometheus text.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    text.lines().find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        let found: Vec<&str> = rest
            .trim_end_matches('}')
            .split(',')
            .filter(|p| !p.is_empty())
            .collect();
        let matches = n == name
            && found.len() == want.len()
            && want.iter().all(|w| found.contains(&w.as_str()));
        matches.then(|| value.parse().ok())?
    })
}

/// A loopback TCP port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}
