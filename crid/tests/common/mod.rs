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
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} tests cannot run in CI: {reason}"
    );
    eprintln!("skipped: {reason}");
    false
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

/// Unmounts everything below `dir`, deepest first (for wiping a state dir).
pub fn unmount_all(dir: &Path) {
    let mut m = mounts_under(dir);
    m.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in m {
        let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Processes other than `except` whose command line mentions `dir` (monitors, runc,
/// plugins started for this test).
pub fn processes_under(dir: &Path, except: Option<u32>) -> Vec<String> {
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
                    cmd.contains(&needle).then(|| format!("{pid}: {cmd}"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A test's directory layout and the crid process using it.
pub struct Crid {
    pub dir: PathBuf,
    child: Option<Child>,
    pub cri: Cri,
}

/// Writes `<dir>/config.toml`: CNI from `<dir>/net.d` (+ `<dir>/bin`), registries from
/// `<dir>/certs.d`, plus `extra` TOML appended.
pub fn write_config(dir: &Path, extra: &str) {
    std::fs::create_dir_all(dir.join("net.d")).unwrap();
    std::fs::create_dir_all(dir.join("certs.d")).unwrap();
    let config = format!(
        "[registry]\nconfig_path = {:?}\n[cni]\nconf_dir = {:?}\nbin_dirs = [{:?}, {:?}]\nplugin_timeout_secs = 20\n{extra}",
        dir.join("certs.d"),
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
    let socket = dir.join("crid.sock");
    let _ = std::fs::remove_file(&socket);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("crid.log"))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_crid"))
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
        }
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

    pub async fn run_pod(&self, name: &str) -> Result<String, tonic::Status> {
        self.cri
            .runtime
            .clone()
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod_config(name, &self.dir)),
                runtime_handler: String::new(),
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

    /// `ImageFsInfo` used bytes.
    pub async fn image_fs_used(&self) -> u64 {
        let r = self
            .cri
            .images
            .clone()
            .image_fs_info(cri::ImageFsInfoRequest {})
            .await
            .expect("image fs info")
            .into_inner();
        r.image_filesystems[0].used_bytes.as_ref().unwrap().value
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

impl Drop for Crid {
    fn drop(&mut self) {
        self.stop();
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
