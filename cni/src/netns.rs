//! Namespaces pinned by bind mounts: created by `unshare` on a dedicated OS thread (never a
//! tokio worker, whose namespaces must stay the host's), pinned by bind-mounting that thread's
//! `/proc/self/task/<tid>/ns/<kind>` onto a file, and entered the same way. The thread exits
//! afterwards, so no thread of crid ever keeps a pod's namespace.
//!
//! The `ip netns` pin layout is followed (an empty file with an nsfs bind mount on it), so
//! `nsenter --net=<pin>` and `ip netns exec` style tools work on crid's pins.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::statfs::{NSFS_MAGIC, statfs};

use crate::error::CniError;
use crate::netlink::loopback_up;

/// A kind of namespace crid pins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsKind {
    Net,
    Ipc,
    Uts,
}

impl NsKind {
    fn flag(self) -> CloneFlags {
        match self {
            NsKind::Net => CloneFlags::CLONE_NEWNET,
            NsKind::Ipc => CloneFlags::CLONE_NEWIPC,
            NsKind::Uts => CloneFlags::CLONE_NEWUTS,
        }
    }

    fn proc_name(self) -> &'static str {
        match self {
            NsKind::Net => "net",
            NsKind::Ipc => "ipc",
            NsKind::Uts => "uts",
        }
    }
}

fn ns_err<'a>(op: &'static str, path: &'a Path) -> impl Fn(io::Error) -> CniError + 'a {
    move |source| CniError::Netns {
        op,
        path: path.to_owned(),
        source,
    }
}

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// How many network namespaces are kept made ahead of need (see [`create`]).
const POOL_SIZE: usize = 2;

/// A new network namespace with `lo` up, made on a short-lived thread and held by an open
/// `/proc/thread-self/ns/net` descriptor (no pin: it lives while a descriptor or a process
/// holds it).
pub fn new_netns() -> io::Result<OwnedFd> {
    std::thread::Builder::new()
        .name("crid-netns-pool".into())
        .spawn(|| -> io::Result<OwnedFd> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(nix_io)?;
            loopback_up()?;
            Ok(std::fs::File::open("/proc/thread-self/ns/net")?.into())
        })?
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
}

/// Network namespaces made ahead of need, held open by descriptor only (no pin, no mount:
/// they vanish with the process), each with `lo` already up. One per daemon, owned by whoever
/// creates its pods' namespaces; shared with the thread that refills it.
#[derive(Debug, Default)]
pub struct NetnsPool {
    ready: Mutex<Vec<OwnedFd>>,
    /// Whether a thread is refilling `ready`.
    filling: AtomicBool,
}

impl NetnsPool {
    /// Tops the pool up in the background (one thread at a time).
    fn refill(self: &Arc<Self>) {
        if self.filling.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("crid-netns-fill".into())
            .spawn(move || {
                this.fill();
                this.filling.store(false, Ordering::SeqCst);
            });
        if spawned.is_err() {
            self.filling.store(false, Ordering::SeqCst);
        }
    }

    /// Makes namespaces until the pool is full (or making one fails).
    fn fill(&self) {
        loop {
            let missing = self
                .ready
                .lock()
                .map(|p| p.len() < POOL_SIZE)
                .unwrap_or(false);
            if !missing {
                return;
            }
            match new_netns() {
                Ok(fd) => match self.ready.lock() {
                    // (Another filler may have topped it up meanwhile: then this one goes.)
                    Ok(mut p) if p.len() < POOL_SIZE => p.push(fd),
                    _ => return,
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot make a network namespace ahead of need");
                    return;
                }
            }
        }
    }

    /// A network namespace from the pool, if one is ready; the pool is topped up again.
    fn take(self: &Arc<Self>) -> Option<OwnedFd> {
        let fd = self.ready.lock().ok().and_then(|mut p| p.pop());
        self.refill();
        fd
    }
}

/// Creates new namespaces of the given kinds and pins each at its path. `setup` runs inside
/// the new namespaces before they are pinned (e.g. to set the hostname); its error, naming
/// its own step ([`CniError::NsSetup`]), is returned as it is. On any failure nothing stays
/// pinned.
///
/// Creating a network namespace is the slow part (tens of milliseconds on a busy host), so
/// the network namespace comes from a small pool made ahead of need in the background when
/// one is ready (with `lo` already up), and the pool is topped up after each use.
pub fn create<F>(
    pool: &Arc<NetnsPool>,
    pins: &[(NsKind, PathBuf)],
    setup: F,
) -> Result<(), CniError>
where
    F: FnOnce() -> Result<(), CniError> + Send + 'static,
{
    let pooled = if pins.iter().any(|(k, _)| *k == NsKind::Net) {
        pool.take()
    } else {
        None
    };
    create_with(pins, pooled, setup)
}

/// [`create`], with the network namespace given as an open descriptor (`None`: a new one).
fn create_with<F>(
    pins: &[(NsKind, PathBuf)],
    pooled_net: Option<OwnedFd>,
    setup: F,
) -> Result<(), CniError>
where
    F: FnOnce() -> Result<(), CniError> + Send + 'static,
{
    for (_, path) in pins {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(ns_err("create directory", parent))?;
        }
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(ns_err("create pin file", path))?;
    }
    let owned: Vec<(NsKind, PathBuf)> = pins.to_vec();
    let first = pins.first().map(|(_, p)| p.clone()).unwrap_or_default();
    let outcome = std::thread::Builder::new()
        .name("crid-netns".into())
        .spawn(move || -> Result<(), CniError> {
            let fresh = |k: &NsKind| !(*k == NsKind::Net && pooled_net.is_some());
            let flags = owned
                .iter()
                .filter(|(k, _)| fresh(k))
                .fold(CloneFlags::empty(), |acc, (k, _)| acc | k.flag());
            let path0 = owned.first().map(|(_, p)| p.clone()).unwrap_or_default();
            unshare(flags)
                .map_err(nix_io)
                .map_err(ns_err("unshare", &path0))?;
            setup()?;
            let tid = nix::unistd::gettid();
            for (kind, path) in &owned {
                let src = match &pooled_net {
                    Some(fd) if !fresh(kind) => format!("/proc/self/fd/{}", fd.as_raw_fd()),
                    _ => format!("/proc/self/task/{tid}/ns/{}", kind.proc_name()),
                };
                mount(
                    Some(src.as_str()),
                    path.as_path(),
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(nix_io)
                .map_err(ns_err("bind mount", path))?;
            }
            Ok(())
        })
        .map_err(ns_err("spawn thread", &first))
        .and_then(|handle| {
            handle.join().unwrap_or_else(|_| {
                Err(CniError::Netns {
                    op: "create (thread panicked)",
                    path: first.clone(),
                    source: io::Error::other("panic"),
                })
            })
        });
    if outcome.is_err() {
        for (_, path) in pins {
            let _ = remove(path);
        }
    }
    outcome
}

/// Unpins (lazy unmount) and deletes a pin file; a missing or unmounted pin is fine.
pub fn remove(path: &Path) -> Result<(), CniError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(ns_err("unmount", path)(nix_io(e))),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ns_err("remove pin file", path)(e)),
    }
}

/// Whether `path` is a live namespace pin.
pub fn is_pinned(path: &Path) -> bool {
    statfs(path)
        .map(|s| s.filesystem_type() == NSFS_MAGIC)
        .unwrap_or(false)
}

/// Runs `f` on a fresh OS thread that has joined the pinned namespaces, and returns its
/// result. Use from async code through `spawn_blocking`.
pub fn run_in<F, T>(pins: &[(NsKind, PathBuf)], f: F) -> Result<T, CniError>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let owned: Vec<(NsKind, PathBuf)> = pins.to_vec();
    let first = pins.first().map(|(_, p)| p.clone()).unwrap_or_default();
    std::thread::Builder::new()
        .name("crid-setns".into())
        .spawn(move || -> Result<T, CniError> {
            for (kind, path) in &owned {
                let file = std::fs::File::open(path).map_err(ns_err("open", path))?;
                setns(&file, kind.flag())
                    .map_err(nix_io)
                    .map_err(ns_err("setns", path))?;
            }
            let path0 = owned.first().map(|(_, p)| p.clone()).unwrap_or_default();
            f().map_err(ns_err("run inside", &path0))
        })
        .map_err(ns_err("spawn thread", &first))?
        .join()
        .unwrap_or_else(|_| {
            Err(CniError::Netns {
                op: "run inside (thread panicked)",
                path: first.clone(),
                source: io::Error::other("panic"),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn create_enter_remove() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("netns/a");
        let uts = dir.path().join("utsns/a");
        // A fresh network namespace (not one from the pool, whose lo is up already).
        create_with(
            &[(NsKind::Net, net.clone()), (NsKind::Uts, uts.clone())],
            None,
            || {
                nix::unistd::sethostname("pinned-host")
                    .map_err(nix_io)
                    .map_err(ns_err("set hostname", Path::new("-")))
            },
        )
        .unwrap();
        assert!(is_pinned(&net) && is_pinned(&uts));
        let host_ino = std::fs::metadata("/proc/self/ns/net").map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.ino()
        });
        let (ino, name) = run_in(
            &[(NsKind::Net, net.clone()), (NsKind::Uts, uts.clone())],
            || {
                use std::os::unix::fs::MetadataExt;
                let ino = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
                let name = nix::unistd::gethostname().map_err(nix_io)?;
                Ok((ino, name.to_string_lossy().into_owned()))
            },
        )
        .unwrap();
        assert_ne!(Some(ino), host_ino.ok());
        assert_eq!(name, "pinned-host");
        // This process's hostname is untouched.
        assert_ne!(
            nix::unistd::gethostname().unwrap().to_string_lossy(),
            "pinned-host"
        );
        // lo starts down in a new namespace; loopback_up brings it up there only.
        let lo_up = |pins: &[(NsKind, PathBuf)]| {
            // A child forked by the thread inside the namespace sees its links.
            run_in(pins, || {
                let out = std::process::Command::new("ip")
                    .args(["-o", "link", "show", "lo"])
                    .output()?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                Ok(text.contains(",UP") || text.contains("<UP"))
            })
            .unwrap()
        };
        let pins = [(NsKind::Net, net.clone())];
        assert!(!lo_up(&pins), "lo is up in a fresh namespace");
        run_in(&pins, loopback_up).unwrap();
        assert!(lo_up(&pins), "lo is still down");
        remove(&net).unwrap();
        remove(&uts).unwrap();
        remove(&net).unwrap();
        assert!(!net.exists() && !uts.exists());
    }

    /// Whether `lo` is up in the pinned network namespace.
    fn lo_is_up(net: &Path) -> bool {
        run_in(&[(NsKind::Net, net.to_owned())], || {
            let out = std::process::Command::new("ip")
                .args(["-o", "link", "show", "lo"])
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            Ok(text.contains("<LOOPBACK,UP") || text.contains(",UP,"))
        })
        .unwrap()
    }

    fn ns_id(path: &str) -> String {
        std::fs::read_link(path)
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    #[test]
    fn a_pooled_network_namespace_is_pinned_with_lo_up() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("netns/p");
        let ipc = dir.path().join("ipcns/p");
        let made = new_netns().unwrap();
        let made_id = ns_id(&format!("/proc/self/fd/{}", made.as_raw_fd()));
        create_with(
            &[(NsKind::Net, net.clone()), (NsKind::Ipc, ipc.clone())],
            Some(made),
            || Ok(()),
        )
        .unwrap();
        assert!(is_pinned(&net) && is_pinned(&ipc));
        // The pin is that namespace (the descriptor is closed: the pin keeps it alive).
        let pinned_id = run_in(&[(NsKind::Net, net.clone())], || {
            Ok(ns_id("/proc/thread-self/ns/net"))
        })
        .unwrap();
        assert_eq!(pinned_id, made_id);
        assert_ne!(pinned_id, ns_id("/proc/self/ns/net"));
        assert!(lo_is_up(&net), "lo of a pooled namespace is down");
        // The IPC namespace is still a new one.
        let ipc_id = run_in(&[(NsKind::Ipc, ipc.clone())], || {
            Ok(ns_id("/proc/thread-self/ns/ipc"))
        })
        .unwrap();
        assert_ne!(ipc_id, ns_id("/proc/self/ns/ipc"));
        remove(&net).unwrap();
        remove(&ipc).unwrap();
    }

    #[test]
    fn the_pool_fills_up_after_use() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let pool = Arc::new(NetnsPool::default());
        pool.fill();
        let before = pool.ready.lock().unwrap().len();
        assert_eq!(before, POOL_SIZE);
        let fd = pool.take().expect("a pooled namespace");
        drop(fd);
        // The refill runs in the background; wait for it (bounded).
        let mut len = 0;
        for _ in 0..200 {
            len = pool.ready.lock().unwrap().len();
            if len == POOL_SIZE && !pool.filling.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(len, POOL_SIZE, "the pool was not topped up");
    }

    #[test]
    fn failed_setup_leaves_nothing() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("n");
        let e = create_with(&[(NsKind::Net, net.clone())], None, || {
            Err(CniError::NsSetup {
                step: "set hostname in UTS namespace",
                path: "/u".into(),
                source: io::Error::other("no"),
            })
        })
        .unwrap_err();
        // The caller's step and path, not a generic "set up" at the first pin.
        assert_eq!(e.to_string(), "set hostname in UTS namespace /u", "{e}");
        assert!(!net.exists());
    }
}
