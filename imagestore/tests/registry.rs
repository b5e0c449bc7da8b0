//! Pulls against an in-process fake registry (plain HTTP/1.1 on loopback) that can lie: wrong
//! blob content, huge manifests, self-referencing and deeply nested indexes, an index lying
//! about a manifest's size, slow blobs, basic auth. Checks the error kinds, that nothing
//! half-written stays behind, that concurrent pulls fetch each blob once, and mirror fallback
//! from `hosts.toml`.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imagestore::{Credentials, ErrorKind, ImageStore, ImageStoreConfig};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

#[derive(Default)]
struct Content {
    /// path after /v2/ -> (content type, body)
    routes: HashMap<String, (String, Vec<u8>)>,
    /// paths answered slowly: delay before the body, then the body in small pieces
    slow: HashMap<String, Duration>,
    /// "user:password" required, when set
    basic_auth: Option<String>,
}

struct Fake {
    addr: String,
    gets: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    async fn start(content: Content) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let gets = Arc::new(Mutex::new(Vec::new()));
        let content = Arc::new(content);
        let g = gets.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let content = content.clone();
                let gets = g.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    let mut lines = head.lines();
                    let first = lines.next().unwrap_or_default().to_owned();
                    let mut parts = first.split_whitespace();
                    let method = parts.next().unwrap_or_default().to_owned();
                    let path = parts.next().unwrap_or_default().to_owned();
                    let auth = lines
                        .filter_map(|l| l.split_once(':'))
                        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                        .map(|(_, v)| v.trim().to_owned());
                    let path = path.split('?').next().unwrap_or_default();
                    let key = path.trim_start_matches("/v2/").to_owned();
                    gets.lock().unwrap().push(key.clone());
                    let reply = |status: &str, ctype: &str, extra: &str, body_len: usize| {
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {body_len}\r\n{extra}Connection: close\r\n\r\n"
                        )
                    };
                    if let Some(cred) = &content.basic_auth {
                        use base64::Engine;
                        let want = format!(
                            "Basic {}",
                            base64::engine::general_purpose::STANDARD.encode(cred)
                        );
                        if auth.as_deref() != Some(want.as_str()) {
                            let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"auth"}]}"#;
                            let h = reply(
                                "401 Unauthorized",
                                "application/json",
                                "WWW-Authenticate: Basic realm=\"fake\"\r\n",
                                body.len(),
                            );
                            let _ = sock.write_all(h.as_bytes()).await;
                            let _ = sock.write_all(body).await;
                            return;
                        }
                    }
                    if key.is_empty() {
                        let h = reply("200 OK", "application/json", "", 2);
                        let _ = sock.write_all(h.as_bytes()).await;
                        let _ = sock.write_all(b"{}").await;
                        return;
                    }
                    match content.routes.get(&key) {
                        Some((ctype, body)) => {
                            let h = reply("200 OK", ctype, "", body.len());
                            let _ = sock.write_all(h.as_bytes()).await;
                            if method == "HEAD" {
                                return;
                            }
                            if let Some(delay) = content.slow.get(&key) {
                                tokio::time::sleep(*delay).await;
                                for piece in body.chunks(1024) {
                                    if sock.write_all(piece).await.is_err() {
                                        return;
                                    }
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                            } else {
                                let _ = sock.write_all(body).await;
                            }
                        }
                        None => {
                            let body =
                                br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#;
                            let h = reply("404 Not Found", "application/json", "", body.len());
                            let _ = sock.write_all(h.as_bytes()).await;
                            let _ = sock.write_all(body).await;
                        }
                    }
                });
            }
        });
        Fake { addr, gets, task }
    }

    fn count(&self, suffix: &str) -> usize {
        self.gets
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.ends_with(suffix))
            .count()
    }
}

/// A one-layer image: (manifest bytes, config digest, layer blob, config bytes).
struct TestImage {
    manifest: Vec<u8>,
    config: Vec<u8>,
    layer: Vec<u8>,
}

impl TestImage {
    fn new(marker: &str) -> TestImage {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(marker.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "marker", marker.as_bytes()).unwrap();
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let layer = gz.finish().unwrap();
        let config = json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/marker"]},
            "rootfs": {"type": "layers", "diff_ids": [sha(&tar)]},
        })
        .to_string()
        .into_bytes();
        let manifest = json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(&layer), "size": layer.len()}],
        })
        .to_string()
        .into_bytes();
        TestImage {
            manifest,
            config,
            layer,
        }
    }

    fn id(&self) -> String {
        sha(&self.config)
    }

    /// Serves the image as `repo:tag` (and by digest).
    fn serve(&self, c: &mut Content, repo: &str, tag: &str) {
        let m = (OCI_MANIFEST.to_owned(), self.manifest.clone());
        c.routes
            .insert(format!("{repo}/manifests/{tag}"), m.clone());
        c.routes
            .insert(format!("{repo}/manifests/{}", sha(&self.manifest)), m);
        c.routes.insert(
            format!("{repo}/blobs/{}", sha(&self.config)),
            ("application/octet-stream".into(), self.config.clone()),
        );
        c.routes.insert(
            format!("{repo}/blobs/{}", sha(&self.layer)),
            ("application/octet-stream".into(), self.layer.clone()),
        );
    }
}

fn open(dir: &Path, hosts: &[(&str, String)]) -> ImageStore {
    let certs = dir.join("certs.d");
    for (reg, text) in hosts {
        std::fs::create_dir_all(certs.join(reg)).unwrap();
        std::fs::write(certs.join(reg).join("hosts.toml"), text).unwrap();
    }
    ImageStore::open(ImageStoreConfig {
        dir: dir.join("images"),
        registry_config_path: certs,
        pinned_images: Vec::new(),
    })
    .unwrap()
}

fn leftovers(dir: &Path) -> usize {
    ["ingest", "tmp"]
        .iter()
        .map(|d| {
            std::fs::read_dir(dir.join("images").join(d))
                .map(|e| e.count())
                .unwrap_or(0)
        })
        .sum()
}

fn count(dir: &Path, sub: &str) -> usize {
    std::fs::read_dir(dir.join("images").join(sub))
        .map(|e| e.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn pull_remove_and_garbage_collection() {
    let img = TestImage::new("one");
    let mut c = Content::default();
    img.serve(&mut c, "app", "v1");
    let fake = Fake::start(c).await;
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), &[]);
    // Loopback registries default to plain http without any hosts.toml.
    let name = format!("{}/app:v1", fake.addr);
    let image = store.pull(&name, None).await.unwrap();
    assert_eq!(image.id, img.id());
    let dirs = store.layer_dirs(&image).unwrap();
    assert_eq!(std::fs::read(dirs[0].join("marker")).unwrap(), b"one");
    let by_digest = format!("{}/app@{}", fake.addr, sha(&img.manifest));
    assert_eq!(store.get(&by_digest).unwrap().unwrap().id, image.id);
    let before = store.fs_info().unwrap();

    // A lease keeps the content after the image is removed; dropping it collects.
    store.add_lease("ctr1", &image.id).unwrap();
    store.remove(&name).unwrap();
    assert!(store.get(&image.id).unwrap().is_none());
    assert!(store.list().is_empty());
    assert!(store.layer_dirs(&image).is_ok());
    assert_eq!(count(tmp.path(), "layers/sha256"), 1);
    store.remove_lease("ctr1").unwrap();
    assert_eq!(count(tmp.path(), "layers/sha256"), 0);
    assert_eq!(count(tmp.path(), "blobs/sha256"), 0);
    assert!(store.fs_info().unwrap().used_bytes < before.used_bytes);
    store.remove(&name).unwrap();

    // Leases survive a reopen (persisted).
    let image = store.pull(&name, None).await.unwrap();
    store.add_lease("ctr2", &image.id).unwrap();
    store.remove(&image.id).unwrap();
    drop(store);
    let store = open(tmp.path(), &[]);
    assert!(
        store.layer_dirs(&image).is_ok(),
        "leased layers survive a restart"
    );
    store.remove_lease("ctr2").unwrap();
    assert!(store.layer_dirs(&image).is_err());
}

#[tokio::test]
async fn lying_registries_get_the_right_errors_and_leave_nothing() {
    let good = TestImage::new("good");
    let other = TestImage::new("other");
    let mut c = Content::default();
    // The layer blob served is another one.
    good.serve(&mut c, "evil/layer", "latest");
    c.routes.insert(
        format!("evil/layer/blobs/{}", sha(&good.layer)),
        ("application/octet-stream".into(), other.layer.clone()),
    );
    // A manifest over 4 MiB.
    let mut huge = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"pad":""#.to_vec();
    huge.extend(std::iter::repeat_n(b'x', 4 << 20));
    huge.extend(br#""}}"#);
    c.routes.insert(
        "evil/huge/manifests/latest".into(),
        (OCI_MANIFEST.into(), huge),
    );
    // An index whose only entry is served as the index itself.
    let fake_digest = sha(b"not the index");
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_INDEX, "digest": fake_digest, "size": 10, "platform": {"os": "linux", "architecture": "amd64"}}
    ]})
    .to_string()
    .into_bytes();
    c.routes.insert(
        "evil/loop/manifests/latest".into(),
        (OCI_INDEX.into(), index.clone()),
    );
    c.routes.insert(
        format!("evil/loop/manifests/{fake_digest}"),
        (OCI_INDEX.into(), index),
    );
    // Indexes nested six deep.
    let mut inner = (OCI_MANIFEST.to_owned(), good.manifest.clone());
    good.serve(&mut c, "evil/deep", "base");
    for _ in 0..6 {
        let idx = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": inner.0, "digest": sha(&inner.1), "size": inner.1.len(), "platform": {"os": "linux", "architecture": "amd64"}}
        ]})
        .to_string()
        .into_bytes();
        c.routes.insert(
            format!("evil/deep/manifests/{}", sha(&idx)),
            (OCI_INDEX.into(), idx.clone()),
        );
        inner = (OCI_INDEX.to_owned(), idx);
    }
    c.routes.insert("evil/deep/manifests/latest".into(), inner);
    // No platform for this host.
    let arm_only = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": sha(&good.manifest), "size": good.manifest.len(), "platform": {"os": "linux", "architecture": "s390x"}}
    ]})
    .to_string()
    .into_bytes();
    c.routes.insert(
        "evil/arm/manifests/latest".into(),
        (OCI_INDEX.into(), arm_only),
    );
    // An index whose entry names the manifest with a size one byte short.
    good.serve(&mut c, "evil/size", "base");
    let short = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": sha(&good.manifest), "size": good.manifest.len() - 1, "platform": {"os": "linux", "architecture": "amd64"}}
    ]})
    .to_string()
    .into_bytes();
    c.routes.insert(
        "evil/size/manifests/latest".into(),
        (OCI_INDEX.into(), short),
    );
    let fake = Fake::start(c).await;
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), &[]);
    let r = |repo: &str| format!("{}/{repo}:latest", fake.addr);

    let e = store.pull(&r("evil/layer"), None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
    assert!(
        !tmp.path()
            .join("images/blobs/sha256")
            .join(&sha(&good.layer)[7..])
            .exists()
    );
    assert_eq!(count(tmp.path(), "layers/sha256"), 0);

    let e = store.pull(&r("evil/huge"), None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("larger than"), "{e}");

    let e = store.pull(&r("evil/loop"), None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("itself"), "{e}");

    let e = store.pull(&r("evil/deep"), None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");

    let e = store.pull(&r("evil/arm"), None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    let e = store.pull(&r("evil/size"), None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
    assert!(e.to_string().contains("size mismatch"), "{e}");

    let e = store.pull(&r("nothing/here"), None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    let e = store.pull("127.0.0.1:1/x/y:z", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");

    // Nothing half-written anywhere; the store still works.
    assert_eq!(leftovers(tmp.path()), 0);
    assert!(store.list().is_empty());
    store
        .pull(&format!("{}/evil/deep:base", fake.addr), None)
        .await
        .unwrap();
}

#[tokio::test]
async fn concurrent_pulls_fetch_each_blob_once_and_cancelled_pulls_clean_up() {
    let img = TestImage::new("shared");
    let mut c = Content::default();
    img.serve(&mut c, "app", "v1");
    c.slow.insert(
        format!("app/blobs/{}", sha(&img.layer)),
        Duration::from_millis(300),
    );
    let fake = Fake::start(c).await;
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), &[]);
    let name = format!("{}/app:v1", fake.addr);

    // A pull dropped mid-download (a client deadline) removes its partial blob.
    let cancelled = tokio::time::timeout(Duration::from_millis(150), store.pull(&name, None)).await;
    assert!(cancelled.is_err(), "the pull should still be downloading");
    for _ in 0..50 {
        if leftovers(tmp.path()) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(leftovers(tmp.path()), 0);
    assert!(
        !tmp.path()
            .join("images/blobs/sha256")
            .join(&sha(&img.layer)[7..])
            .exists()
    );

    let layer_gets = fake.count(&sha(&img.layer));
    let pulls = (0..5).map(|_| store.pull(&name, None));
    for r in futures::future::join_all(pulls).await {
        assert_eq!(r.unwrap().id, img.id());
    }
    assert_eq!(
        fake.count(&sha(&img.layer)) - layer_gets,
        1,
        "five concurrent pulls fetched the layer once"
    );
    assert_eq!(store.list().len(), 1);
}

#[tokio::test]
async fn mirrors_are_tried_in_order_and_credentials_are_sent() {
    let img = TestImage::new("mirrored");
    let mut c = Content::default();
    img.serve(&mut c, "library/app", "v1");
    c.basic_auth = Some("me:secret".into());
    let fake = Fake::start(c).await;
    let tmp = tempfile::tempdir().unwrap();
    // docker.io goes to a dead mirror first, then to the fake registry as a plain-http mirror;
    // the real server is never reached.
    let hosts = format!(
        "server = \"https://registry.invalid\"\n[host.\"http://127.0.0.1:1\"]\n  capabilities = [\"pull\", \"resolve\"]\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        fake.addr
    );
    let store = open(tmp.path(), &[("docker.io", hosts)]);
    let e = store.pull("app:v1", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "no credentials: {e}");
    let creds = Credentials::Basic {
        username: "me".into(),
        password: "secret".into(),
    };
    let image = store.pull("app:v1", Some(creds)).await.unwrap();
    assert_eq!(image.id, img.id());
    assert_eq!(image.repo_tags, ["docker.io/library/app:v1"]);
    assert!(store.get("app").unwrap().is_none(), "app means app:latest");
    assert_eq!(
        store.get("docker.io/library/app:v1").unwrap().unwrap().id,
        img.id()
    );
}

#[tokio::test]
async fn a_corrupt_blob_is_refused_even_when_its_layer_is_unpacked() {
    let good = TestImage::new("base");
    // Another image claiming the same diff id, with the gzip cut in half.
    let mut cut = TestImage::new("base");
    cut.layer.truncate(cut.layer.len() / 2);
    let config: serde_json::Value = serde_json::from_slice(&good.config).unwrap();
    let mut config = config;
    config["config"]["Cmd"] = json!(["/other"]);
    cut.config = config.to_string().into_bytes();
    cut.manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&cut.config), "size": cut.config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(&cut.layer), "size": cut.layer.len()}],
    })
    .to_string()
    .into_bytes();
    let mut c = Content::default();
    good.serve(&mut c, "app", "good");
    cut.serve(&mut c, "app", "cut");
    let fake = Fake::start(c).await;
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path(), &[]);
    store
        .pull(&format!("{}/app:good", fake.addr), None)
        .await
        .unwrap();
    let e = store
        .pull(&format!("{}/app:cut", fake.addr), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_eq!(store.list().len(), 1);
    // The corrupt blob does not stay in the store.
    for _ in 0..50 {
        if !tmp
            .path()
            .join("images/blobs/sha256")
            .join(&sha(&cut.layer)[7..])
            .exists()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !tmp.path()
            .join("images/blobs/sha256")
            .join(&sha(&cut.layer)[7..])
            .exists()
    );
}
