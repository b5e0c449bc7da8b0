//! Real web servers under crid's `RuntimeDefault` seccomp profile: busybox `httpd`, nginx and
//! Apache httpd, each in a pod with a CNI bridge network, answering a page over the pod IP.
//! The images are built here from the host's own binaries, their shared libraries (as `ldd`
//! lists them) and a minimal configuration, and served by conformance's in-process registry.
//! Needs root, the CNI plugins, busybox, nginx and apache2 (scripts/deps.sh installs them);
//! skipped with a reason otherwise (failing under CI).

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use conformance::fixtures::build::{Compression, Format, ImageSpec, Layer, TarBuilder, image};
use conformance::fixtures::fake_registry::{Content, FakeRegistry};
use proto::cri;

use common::{Crid, Net, PLUGINS};

const BUSYBOX: &str = "/bin/busybox";
const NGINX: &str = "/usr/sbin/nginx";
const APACHE: &str = "/usr/sbin/apache2";
const APACHE_MODULES: &str = "/usr/lib/apache2/modules";

/// The port each server listens on inside its pod.
const PORT: u16 = 8080;

fn can_run() -> bool {
    if !common::can_run_pods_for("workload") {
        return false;
    }
    for bin in [BUSYBOX, NGINX, APACHE, "/usr/bin/ldd"] {
        if !Path::new(bin).exists() {
            common::skip("workload", &format!("{bin} is not installed"));
            return false;
        }
    }
    true
}

/// The shared libraries `ldd` lists for `binary` (the dynamic loader included).
fn libraries(binary: &str) -> Vec<String> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .expect("run ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(str::to_owned)
        })
        .collect()
}

/// An image holding the host files `files` (with their shared libraries), busybox as `/bin/sh`,
/// `extra` files (path, content) and a page at `/www/index.html` naming `name`.
fn server_image(
    name: &str,
    files: &[&str],
    extra: &[(&str, String)],
) -> conformance::fixtures::build::Built {
    let mut t = TarBuilder::new();
    let mut dirs = BTreeSet::new();
    let mut paths: BTreeSet<String> = files.iter().map(|f| (*f).to_owned()).collect();
    for f in files {
        if f.ends_with(".so") || !f.contains("/modules/") {
            paths.extend(libraries(f));
        }
    }
    let mut entries: Vec<(String, u32, Vec<u8>)> = paths
        .iter()
        .map(|p| {
            let content = std::fs::read(p).unwrap_or_else(|e| panic!("read {p}: {e}"));
            (p.trim_start_matches('/').to_owned(), 0o755, content)
        })
        .collect();
    entries.push(("bin/busybox".into(), 0o755, std::fs::read(BUSYBOX).unwrap()));
    entries.push((
        "www/index.html".into(),
        0o644,
        format!("crid-workload-{name}\n").into_bytes(),
    ));
    entries.push((
        "etc/passwd".into(),
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
            .to_vec(),
    ));
    entries.push((
        "etc/group".into(),
        0o644,
        b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
    ));
    for (path, content) in extra {
        entries.push(((*path).to_owned(), 0o644, content.clone().into_bytes()));
    }
    for (path, _, _) in &entries {
        let mut dir = Path::new(path).parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.display().to_string());
            dir = d.parent();
        }
    }
    for d in [
        "tmp",
        "proc",
        "sys",
        "dev",
        "run",
        "var/log/nginx",
        "var/lib/nginx",
    ] {
        dirs.insert(d.to_owned());
    }
    for d in &dirs {
        t.dir(d, if d == "tmp" { 0o1777 } else { 0o755 });
    }
    t.symlink("bin/sh", "busybox");
    for (path, mode, content) in &entries {
        t.file(path, *mode, content);
    }
    let config = serde_json::json!({"Env": ["PATH=/usr/sbin:/usr/bin:/bin"], "Cmd": ["/bin/sh"]});
    image(&ImageSpec::new(
        Format::Oci,
        vec![Layer::new(&t.finish(), Compression::Gzip, Format::Oci)],
        config,
    ))
}

/// nginx with a master and one worker (as the `nobody` user), logging to stderr.
fn nginx_conf() -> String {
    format!(
        "worker_processes 1;\nerror_log stderr;\npid /tmp/nginx.pid;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  default_type text/plain;\n  client_body_temp_path /tmp/body;\n  \
         proxy_temp_path /tmp/proxy;\n  fastcgi_temp_path /tmp/fastcgi;\n  uwsgi_temp_path /tmp/uwsgi;\n  \
         scgi_temp_path /tmp/scgi;\n  server {{ listen {PORT}; root /www; }}\n}}\n"
    )
}

/// Apache httpd with the event MPM (threads), serving `/www` as `nobody`.
fn apache_conf() -> String {
    format!(
        "ServerRoot /etc/apache2\nServerName localhost\nListen {PORT}\n\
         LoadModule mpm_event_module {APACHE_MODULES}/mod_mpm_event.so\n\
         LoadModule authz_core_module {APACHE_MODULES}/mod_authz_core.so\n\
         LoadModule dir_module {APACHE_MODULES}/mod_dir.so\n\
         User nobody\nGroup nogroup\nPidFile /tmp/httpd.pid\nDefaultRuntimeDir /tmp\n\
         ErrorLog /dev/stderr\nDocumentRoot /www\nDirectoryIndex index.html\n\
         <Directory /www>\n  Require all granted\n</Directory>\n"
    )
}

/// The three servers: (image tag, command, what the image holds besides busybox).
fn servers() -> Vec<(
    &'static str,
    Vec<String>,
    conformance::fixtures::build::Built,
)> {
    let module = |m: &str| format!("{APACHE_MODULES}/{m}");
    let modules = ["mod_mpm_event.so", "mod_authz_core.so", "mod_dir.so"].map(module);
    let mut apache_files = vec![APACHE];
    apache_files.extend(modules.iter().map(String::as_str));
    let argv = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let port = PORT.to_string();
    vec![
        (
            "busybox",
            argv(&["/bin/busybox", "httpd", "-f", "-p", &port, "-h", "/www"]),
            server_image("busybox", &[], &[]),
        ),
        (
            "nginx",
            argv(&[
                NGINX,
                "-c",
                "/etc/nginx/nginx.conf",
                "-e",
                "stderr",
                "-g",
                "daemon off;",
            ]),
            server_image("nginx", &[NGINX], &[("etc/nginx/nginx.conf", nginx_conf())]),
        ),
        (
            "httpd",
            argv(&[APACHE, "-f", "/etc/apache2/httpd.conf", "-DFOREGROUND"]),
            server_image(
                "httpd",
                &apache_files,
                &[("etc/apache2/httpd.conf", apache_conf())],
            ),
        ),
    ]
}

/// One HTTP/1.0 GET of `/` from `ip:PORT`: the whole response, or the error.
fn http_get(ip: &str) -> std::io::Result<String> {
    let addr = format!("{ip}:{PORT}").parse().expect("socket address");
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: crid\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Each server, in its own pod with a bridge network and with `RuntimeDefault` seccomp (the
/// filter is checked in `/proc/PID/status`), serves its page over the pod IP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_servers_serve_over_the_pod_ip_under_runtime_default_seccomp() {
    if !can_run() {
        return;
    }
    let servers = servers();
    let mut content = Content::default();
    for (tag, _, built) in &servers {
        content.add_image("workloads/server", tag, built);
    }
    let registry = FakeRegistry::start(content).await.expect("fake registry");

    let dir = tempfile::TempDir::new().unwrap();
    let d = dir.path();
    let net = Net::new(50, d);
    std::fs::create_dir_all(d.join("net.d")).unwrap();
    std::fs::write(d.join("net.d/10-test.conflist"), net.conflist()).unwrap();
    std::fs::write(
        d.join("config.toml"),
        format!(
            "[cni]\nconf_dir = {:?}\nbin_dirs = [{PLUGINS:?}]\nprepared_networks = 0\n",
            d.join("net.d")
        ),
    )
    .unwrap();
    let crid = Crid::start_owned(dir).await;

    for (tag, command, _) in servers {
        let image = format!("{}/workloads/server:{tag}", registry.host());
        crid.expect_pull(&image).await;
        let config = common::pod_config(tag, crid.path());
        std::fs::create_dir_all(&config.log_directory).unwrap();
        let pod_id = crid
            .try_run_pod(&config, "")
            .await
            .unwrap_or_else(|e| panic!("run pod {tag}: {e}\n{}", crid.log()));
        let container = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: tag.into(),
                attempt: 0,
            }),
            image: Some(common::spec(&image)),
            command,
            log_path: format!("{tag}.log"),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    seccomp: Some(cri::SecurityProfile {
                        profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                        localhost_ref: String::new(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pod = (pod_id.clone(), config.clone());
        let id = crid.create_start(&pod, container).await;
        let (_, info) = crid.container_status(&id).await;
        let pid = info["pid"].as_i64().expect("the container's pid");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert!(
            status.lines().any(|l| l == "Seccomp:\t2"),
            "{tag} runs without a seccomp filter: {status}"
        );
        let (pod_status, _) = crid.pod_status(&pod_id).await;
        let ip = pod_status.network.map(|n| n.ip).unwrap_or_default();
        let log = Path::new(&config.log_directory).join(format!("{tag}.log"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let page = loop {
            match http_get(&ip) {
                Ok(page) if page.contains(&format!("crid-workload-{tag}")) => break page,
                other => {
                    let (s, _) = crid.container_status(&id).await;
                    assert!(
                        s.state == cri::ContainerState::ContainerRunning as i32
                            && Instant::now() < deadline,
                        "{tag} does not serve on {ip}:{PORT} ({other:?}): {s:?}\nlog: {}\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default(),
                        crid.log()
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        assert!(page.starts_with("HTTP/1."), "{page}");
        assert!(page.contains(" 200 "), "{page}");
        crid.stop_and_remove_pod(&pod_id).await;
    }
    crid.finish().await;
    drop(net);
}
