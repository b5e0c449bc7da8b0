//! Operator commands that read crid's state on disk, without the gRPC socket (so they work
//! while the daemon is down or wedged): `crid pods`, `crid ps`, `crid images`,
//! `crid inspect ID`; and `crid install`, which puts the binary, systemd units, default
//! configuration, default CNI network and a `certs.d` example in place.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sandbox::container::ContainerRecord;
use sandbox::pod::PodRecord;
use sandbox::pod::store::PodStore;
use serde_json::json;

use crate::config::Config;

const SERVICE_UNIT: &str = include_str!("../../systemd/crid.service");
const SOCKET_UNIT: &str = include_str!("../../systemd/crid.socket");
const CNI_CONFLIST: &str = include_str!("../dist/10-crid-bridge.conflist");
const CERTS_EXAMPLE: &str = r#"# Example registry configuration (containerd's hosts.toml format). crid reads
# <certs.d>/<registry[:port]>/hosts.toml for each registry, falling back to
# <certs.d>/_default/hosts.toml. Copy this directory to the registry's name and edit it.

# The upstream registry.
server = "https://registry.example.com:5000"

# Mirrors are tried in order before the server.
[host."https://mirror.example.com"]
capabilities = ["pull", "resolve"]
# ca = "/etc/crid/certs.d/registry.example.com:5000/ca.crt"
# client = [["/etc/crid/certs.d/registry.example.com:5000/client.crt", "/etc/crid/certs.d/registry.example.com:5000/client.key"]]
# skip_verify = false
"#;

/// Pod records under `<root>/pods`, oldest first. Reads only.
pub fn load_pods(config: &Config) -> Vec<PodRecord> {
    let dir = config.root.join("pods");
    if !dir.is_dir() {
        return Vec::new();
    }
    let mut pods = PodStore { dir }.load_all();
    pods.sort_by_key(|p| p.created_at);
    pods
}

/// Container records under `<root>/containers/<id>/record.json`, oldest first. Reads only;
/// unreadable records are reported on stderr and skipped.
pub fn load_containers(config: &Config) -> Vec<ContainerRecord> {
    let dir = config.root.join("containers");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<ContainerRecord> = entries
        .flatten()
        .filter_map(|e| {
            let path = e.path().join("record.json");
            let bytes = std::fs::read(&path).ok()?;
            match serde_json::from_slice(&bytes) {
                Ok(r) => Some(r),
                Err(err) => {
                    eprintln!("crid: skipping unreadable {}: {err}", path.display());
                    None
                }
            }
        })
        .collect();
    out.sort_by_key(|c| c.created_at);
    out
}

fn load_images(config: &Config) -> anyhow::Result<Vec<imagestore::Image>> {
    if !config.root.join("images").is_dir() {
        return Ok(Vec::new());
    }
    let store = crate::state::open_store_offline(config)?;
    let mut images = store.list();
    images.sort_by(|a, b| a.repo_tags.cmp(&b.repo_tags).then(a.id.cmp(&b.id)));
    Ok(images)
}

fn short(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    id.get(..13).unwrap_or(id)
}

fn age(created_ns: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let secs = (now - created_ns / 1_000_000_000).max(0);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

fn state_name<T: std::fmt::Debug>(s: T) -> String {
    format!("{s:?}")
}

fn print_table(rows: Vec<Vec<String>>) -> anyhow::Result<()> {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = std::io::stdout().lock();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i + 1 == cols {
                    cell.clone()
                } else {
                    format!("{cell:<w$}", w = widths[i])
                }
            })
            .collect();
        writeln!(out, "{}", line.join("   ").trim_end())?;
    }
    Ok(())
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `crid pods`.
pub fn pods(config: &Config, as_json: bool) -> anyhow::Result<()> {
    let pods = load_pods(config);
    if as_json {
        return print_json(&pods);
    }
    let mut rows = vec![
        [
            "POD ID",
            "CREATED",
            "STATE",
            "NAME",
            "NAMESPACE",
            "ATTEMPT",
            "RUNTIME",
            "IP",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for p in pods {
        let m = &p.config.metadata;
        rows.push(vec![
            short(&p.id).to_owned(),
            age(p.created_at),
            state_name(p.state),
            m.name.clone(),
            m.namespace.clone(),
            m.attempt.to_string(),
            if p.config.runtime_handler.is_empty() {
                "(default)".to_owned()
            } else {
                p.config.runtime_handler.clone()
            },
            p.primary_ip().to_owned(),
        ]);
    }
    print_table(rows)
}

/// `crid ps`: containers, with `--all` also the exited ones.
pub fn ps(config: &Config, all: bool, as_json: bool) -> anyhow::Result<()> {
    let containers: Vec<ContainerRecord> = load_containers(config)
        .into_iter()
        .filter(|c| all || c.state != sandbox::container::ContainerState::Exited)
        .collect();
    if as_json {
        return print_json(&containers);
    }
    let mut rows = vec![
        [
            "CONTAINER",
            "IMAGE",
            "CREATED",
            "STATE",
            "NAME",
            "ATTEMPT",
            "POD ID",
            "POD",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for c in containers {
        rows.push(vec![
            short(&c.id).to_owned(),
            c.image.reference.clone(),
            age(c.created_at),
            state_name(c.state),
            c.config.name.clone(),
            c.config.attempt.to_string(),
            short(&c.pod_id).to_owned(),
            c.pod.name.clone(),
        ]);
    }
    print_table(rows)
}

/// `crid images`.
pub fn images(config: &Config, as_json: bool) -> anyhow::Result<()> {
    let images = load_images(config)?;
    if as_json {
        let list: Vec<_> = images
            .iter()
            .map(|i| {
                json!({
                    "id": i.id,
                    "repoTags": i.repo_tags,
                    "repoDigests": i.repo_digests,
                    "size": i.size,
                    "pinned": i.pinned,
                    "unikernel": i.unikernel.is_some(),
                })
            })
            .collect();
        return print_json(&list);
    }
    let mut rows = vec![
        ["IMAGE", "TAG", "IMAGE ID", "SIZE", "PINNED"]
            .map(String::from)
            .to_vec(),
    ];
    for i in images {
        let tags = if i.repo_tags.is_empty() {
            vec!["<none>:<none>".to_owned()]
        } else {
            i.repo_tags.clone()
        };
        for t in tags {
            let (repo, tag) = match t.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => (r.to_owned(), t.to_owned()),
                _ => (t.clone(), String::new()),
            };
            rows.push(vec![
                repo,
                tag,
                short(&i.id).to_owned(),
                human_size(i.size),
                i.pinned.to_string(),
            ]);
        }
    }
    print_table(rows)
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// `crid inspect ID`: the record of the pod, container or image whose id starts with `id`
/// (or, for images, whose tag or digest is `id`), as JSON.
pub fn inspect(config: &Config, id: &str) -> anyhow::Result<()> {
    if id.is_empty() {
        bail!("an id is needed");
    }
    let mut found = Vec::new();
    for p in load_pods(config) {
        if p.id.starts_with(id) {
            let pins: serde_json::Map<String, serde_json::Value> = [
                ("netns", &p.paths.netns),
                ("ipcns", &p.paths.ipcns),
                ("utsns", &p.paths.utsns),
            ]
            .into_iter()
            .filter_map(|(k, v)| {
                v.as_ref()
                    .map(|v| (k.to_owned(), json!(cni::netns::is_pinned(v))))
            })
            .collect();
            found.push(json!({"kind": "pod", "record": p, "pinned": pins}));
        }
    }
    for c in load_containers(config) {
        if c.id.starts_with(id) {
            found.push(json!({"kind": "container", "record": c}));
        }
    }
    let bare = id.strip_prefix("sha256:").unwrap_or(id);
    for i in load_images(config)? {
        let hex = i.id.strip_prefix("sha256:").unwrap_or(&i.id);
        if hex.starts_with(bare)
            || i.repo_tags.iter().any(|t| t == id)
            || i.repo_digests.iter().any(|d| d == id)
        {
            found.push(json!({"kind": "image", "record": i}));
        }
    }
    match found.len() {
        0 => bail!("no pod, container or image matches {id:?}"),
        1 => print_json(&found[0]),
        n => bail!("{n} objects match {id:?}; give more of the id"),
    }
}

/// Where `crid install` puts things.
#[derive(Debug, Clone)]
pub struct InstallPlan {
    /// e.g. `/usr/local`: the binary goes to `<prefix>/bin`, units to
    /// `<prefix>/lib/systemd/system`.
    pub prefix: PathBuf,
    /// Everything is written below this directory (`/` for a real install; a staging or
    /// temp directory for packaging and tests).
    pub dest_root: PathBuf,
}

fn under(root: &Path, abs: &Path) -> PathBuf {
    root.join(abs.strip_prefix("/").unwrap_or(abs))
}

fn write_file(path: &Path, contents: &[u8], mode: u32, replace: bool) -> anyhow::Result<()> {
    if !replace && path.exists() {
        println!("kept      {}", path.display());
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let tmp = path.with_extension("crid-install.tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    println!("installed {}", path.display());
    Ok(())
}

/// `crid install`: the running binary, the systemd units (their `ExecStart` pointing at the
/// installed binary), `/etc/crid/config.toml`, the default CNI network and a `certs.d`
/// example. Existing configuration files are kept; the binary and units are replaced.
pub fn install(plan: &InstallPlan) -> anyhow::Result<()> {
    if !plan.prefix.is_absolute() {
        bail!("--prefix must be absolute");
    }
    let root = &plan.dest_root;
    let bin = plan.prefix.join("bin").join("crid");
    let exe = std::env::current_exe().context("cannot find the running crid binary")?;
    let bytes = std::fs::read(&exe).with_context(|| format!("cannot read {}", exe.display()))?;
    write_file(&under(root, &bin), &bytes, 0o755, true)?;

    let units = under(root, &plan.prefix.join("lib/systemd/system"));
    let service = SERVICE_UNIT.replace(
        "ExecStart=/usr/local/bin/crid",
        &format!("ExecStart={} --config /etc/crid/config.toml", bin.display()),
    );
    write_file(&units.join("crid.service"), service.as_bytes(), 0o644, true)?;
    write_file(
        &units.join("crid.socket"),
        SOCKET_UNIT.as_bytes(),
        0o644,
        true,
    )?;

    let etc = under(root, Path::new("/etc/crid"));
    write_file(
        &etc.join("config.toml"),
        crate::config::DEFAULT_TOML.as_bytes(),
        0o644,
        false,
    )?;
    write_file(
        &etc.join("certs.d/registry.example.com:5000/hosts.toml.example"),
        CERTS_EXAMPLE.as_bytes(),
        0o644,
        false,
    )?;
    write_file(
        &under(root, Path::new("/etc/cni/net.d/10-crid-bridge.conflist")),
        CNI_CONFLIST.as_bytes(),
        0o644,
        false,
    )?;
    if root == Path::new("/") {
        println!(
            "\nnext: systemctl daemon-reload && systemctl enable --now crid.socket crid.service"
        );
    }
    Ok(())
}
