//! The image service end to end: the real crid binary on a temp socket, pulling from the real
//! registry at `CRID_TEST_REGISTRY` (Debian's docker-registry, started by scripts/test.sh).
//! The tests build their own images (busybox-static in an OCI layout, written here) and push
//! them with skopeo under repository names unique to the test run. Without the registry the
//! tests fail under CI=true and are skipped otherwise.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use proto::cri;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tonic::Code;

use common::{Crid, spec};

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The registry, or `None` (skip) outside CI.
fn registry() -> Option<String> {
    let missing = |reason: &str| {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "image tests cannot run in CI: {reason}"
        );
        eprintln!("skipped: {reason}");
        None
    };
    let Ok(reg) = std::env::var("CRID_TEST_REGISTRY") else {
        return missing("CRID_TEST_REGISTRY is not set (scripts/test.sh starts a registry)");
    };
    if Command::new("skopeo").arg("--version").output().is_err() {
        return missing("skopeo is not installed");
    }
    if !nix::unistd::geteuid().is_root() {
        return missing("needs root");
    }
    Some(reg)
}

/// A repository name unique to this test process and `tag`.
fn repo(reg: &str, name: &str) -> String {
    format!("{reg}/crid-test-{}/{name}", std::process::id())
}

/// One file of a test layer.
enum Entry<'a> {
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Dir(&'a str),
}

/// An uncompressed tar layer.
fn tar_layer(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            Entry::File(path, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                h.set_mode(*mode);
                b.append_data(&mut h, path, *data).unwrap();
            }
            Entry::Symlink(path, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                b.append_link(&mut h, path, target).unwrap();
            }
            Entry::Dir(path) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                b.append_data(&mut h, path, std::io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn busybox_layer() -> Vec<u8> {
    let bb = std::fs::read("/bin/busybox").expect("busybox-static is installed");
    tar_layer(&[
        Entry::Dir("bin/"),
        Entry::File("bin/busybox", &bb, 0o755),
        Entry::Symlink("bin/sh", "busybox"),
    ])
}

/// An OCI image layout being written in a temp dir.
struct Layout {
    dir: PathBuf,
}

/// A written image manifest: its descriptor pieces.
#[derive(Clone)]
struct Built {
    manifest: String,
    manifest_size: usize,
    config: String,
    arch: String,
}

impl Layout {
    fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_owned(),
        }
    }

    fn blob(&self, bytes: &[u8]) -> String {
        let d = sha(bytes);
        std::fs::write(
            self.dir
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
            bytes,
        )
        .unwrap();
        d
    }

    /// Writes an image of uncompressed `layers` (stored gzipped) for `arch`.
    fn image(&self, arch: &str, layers: &[Vec<u8>], labels: Value) -> Built {
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for l in layers {
            diff_ids.push(sha(l));
            let gz = gzip(l);
            descs.push(json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": self.blob(&gz),
                "size": gz.len(),
            }));
        }
        let config = json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"], "User": "1000", "Labels": labels},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        })
        .to_string();
        let config_digest = self.blob(config.as_bytes());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": descs,
        })
        .to_string();
        Built {
            manifest: self.blob(manifest.as_bytes()),
            manifest_size: manifest.len(),
            config: config_digest,
            arch: arch.to_owned(),
        }
    }

    /// Writes an index over `images` and returns its digest.
    fn index(&self, images: &[Built]) -> String {
        let manifests: Vec<Value> = images
            .iter()
            .map(|b| {
                json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": b.manifest,
                    "size": b.manifest_size,
                    "platform": {"architecture": b.arch, "os": "linux"},
                })
            })
            .collect();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        })
        .to_string();
        let d = self.blob(index.as_bytes());
        self.tag(
            &d,
            index.len(),
            "application/vnd.oci.image.index.v1+json",
            "latest",
        );
        d
    }

    /// Makes `index.json` name `digest` as `tag`.
    fn tag(&self, digest: &str, size: usize, media_type: &str, tag: &str) {
        let index = json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": media_type,
                "digest": digest,
                "size": size,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }],
        });
        std::fs::write(self.dir.join("index.json"), index.to_string()).unwrap();
    }

    fn tag_image(&self, b: &Built, tag: &str) {
        self.tag(
            &b.manifest,
            b.manifest_size,
            "application/vnd.oci.image.manifest.v1+json",
            tag,
        );
    }

    /// Pushes the layout's `latest` to `dest` (`host/repo:tag`) with skopeo.
    fn push(&self, dest: &str, extra: &[&str]) {
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .args(extra)
            .arg(format!("oci:{}:latest", self.dir.display()))
            .arg(format!("docker://{dest}"))
            .output()
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo copy to {dest} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Builds busybox (optionally with extra layers) and pushes it as `dest`.
fn push_busybox(tmp: &Path, dest: &str, extra_layers: &[Vec<u8>], extra: &[&str]) -> Built {
    let hash = sha(dest.as_bytes());
    let layout = Layout::new(&tmp.join(format!("layout-{}", &hash[7..19])));
    let mut layers = vec![busybox_layer()];
    layers.extend(extra_layers.iter().cloned());
    let b = layout.image("amd64", &layers, json!({}));
    layout.tag_image(&b, "latest");
    layout.push(dest, extra);
    b
}

/// This file's config and image-service helpers on the shared [`Crid`].
impl Crid {
    fn config(dir: &Path, reg: &str, pinned: &[String]) {
        Self::config_hosts(dir, &[reg], pinned);
    }

    /// A config whose `hosts.toml` files make each of `regs` a plain-http registry.
    fn config_hosts(dir: &Path, regs: &[&str], pinned: &[String]) {
        for reg in regs {
            common::plain_http_registry(dir, reg);
        }
        std::fs::create_dir_all(dir.join("net.d")).unwrap();
        let config = format!(
            "[registry]\nconfig_path = {:?}\n[images]\npinned_images = {:?}\n[cni]\nconf_dir = {:?}\n",
            dir.join("certs.d"),
            pinned,
            dir.join("net.d"),
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
    }

    async fn status(&self, image: &str) -> (Option<cri::Image>, HashMap<String, String>) {
        let r = self
            .cri
            .images
            .clone()
            .image_status(cri::ImageStatusRequest {
                image: Some(spec(image)),
                verbose: true,
            })
            .await
            .expect("image status")
            .into_inner();
        (r.image, r.info)
    }

    async fn list(&self, filter: Option<&str>) -> Vec<cri::Image> {
        self.cri
            .images
            .clone()
            .list_images(cri::ListImagesRequest {
                filter: filter.map(|f| cri::ImageFilter {
                    image: Some(spec(f)),
                }),
            })
            .await
            .expect("list images")
            .into_inner()
            .images
    }

    async fn remove(&self, image: &str) -> Result<(), tonic::Status> {
        self.cri
            .images
            .clone()
            .remove_image(cri::RemoveImageRequest {
                image: Some(spec(image)),
            })
            .await
            .map(|_| ())
    }

    async fn fs_used(&self) -> (u64, u64, String) {
        let fs = self.image_fs().await;
        assert!(fs.timestamp > 0);
        (
            fs.used_bytes.unwrap().value,
            fs.inodes_used.unwrap().value,
            fs.fs_id.unwrap().mountpoint,
        )
    }

    fn layer_count(&self) -> usize {
        self.store_entries("layers/sha256").len()
    }

    /// Temporary files left in the store. A failed pull returns while a blocking unpack of
    /// another of its layers may still be finishing (and then removes its temp dir), so this
    /// waits a bounded time for the count to reach zero.
    fn leftovers(&self) -> usize {
        let count = || -> usize {
            ["ingest", "tmp"]
                .iter()
                .map(|d| self.store_entries(d).len())
                .sum()
        };
        for _ in 0..100 {
            if count() == 0 {
                return 0;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        count()
    }
}

async fn setup(reg: &str, pinned: &[String]) -> (tempfile::TempDir, Crid) {
    let tmp = tempfile::tempdir().unwrap();
    Crid::config(tmp.path(), reg, pinned);
    let crid = Crid::start(tmp.path()).await;
    (tmp, crid)
}

#[tokio::test]
async fn pull_by_tag_and_digest_list_status_remove() {
    let Some(reg) = registry() else { return };
    let (tmp, crid) = setup(&reg, &[]).await;
    let name = repo(&reg, "busybox");
    let built = push_busybox(tmp.path(), &format!("{name}:v1"), &[], &[]);
    let (used_before, inodes_before, mountpoint) = crid.fs_used().await;
    assert!(mountpoint.ends_with("root/images"), "{mountpoint}");

    let id = crid.expect_pull(&format!("{name}:v1")).await;
    assert_eq!(id, built.config, "PullImage returns the image id");

    // ImageFsInfo reports the real growth: a ~2 MB binary, blob and unpacked.
    let (used_after, inodes_after, _) = crid.fs_used().await;
    assert!(
        used_after > used_before + 2_000_000,
        "{used_before} -> {used_after}"
    );
    assert!(inodes_after > inodes_before);

    // Found by tag, id, id prefix and digest; unknown names are OK with no image.
    let tagged = format!("{name}:v1");
    for q in [
        tagged.clone(),
        id.clone(),
        id.trim_start_matches("sha256:")[..12].to_owned(),
    ] {
        let (img, _) = crid.status(&q).await;
        let img = img.unwrap_or_else(|| panic!("status {q}"));
        assert_eq!(img.id, id);
        assert_eq!(img.repo_tags, std::slice::from_ref(&tagged));
        assert_eq!(img.uid.as_ref().map(|u| u.value), Some(1000));
        assert!(!img.pinned);
        assert!(img.size > 1_000_000);
    }
    let (img, info) = crid.status(&tagged).await;
    let img = img.unwrap();
    assert_eq!(img.repo_digests, [format!("{name}@{}", built.manifest)]);
    let verbose: Value = serde_json::from_str(&info["info"]).unwrap();
    assert_eq!(verbose["platform"]["architecture"], "amd64");
    assert_eq!(verbose["imageSpec"]["config"]["Cmd"][0], "/bin/sh");
    assert!(verbose["unikernel"].is_null());
    assert!(crid.status(&format!("{name}:nope")).await.0.is_none());

    // The layer is unpacked and usable.
    let layers = crid.layer_count();
    assert_eq!(layers, 1);

    // Pull by digest: the same image, no new layer.
    let by_digest = format!("{name}@{}", built.manifest);
    assert_eq!(crid.pull(&by_digest).await.unwrap(), id);
    assert!(crid.status(&by_digest).await.0.is_some());
    assert_eq!(crid.layer_count(), 1);

    // List, with and without filter.
    let all = crid.list(None).await;
    assert_eq!(all.len(), 1);
    assert_eq!(crid.list(Some(&tagged)).await.len(), 1);
    assert_eq!(crid.list(Some(&format!("{name}:other"))).await.len(), 0);

    // Remove is idempotent and collects the content.
    crid.remove(&tagged).await.unwrap();
    crid.remove(&tagged).await.unwrap();
    crid.remove(&id).await.unwrap();
    assert!(crid.status(&id).await.0.is_none());
    assert!(crid.list(None).await.is_empty());
    assert_eq!(crid.layer_count(), 0);
    let (used_end, _, _) = crid.fs_used().await;
    assert!(
        used_end + 2_000_000 < used_after,
        "{used_after} -> {used_end}"
    );
    assert_eq!(crid.leftovers(), 0);
}

#[tokio::test]
async fn multi_arch_index_picks_this_platform() {
    let Some(reg) = registry() else { return };
    let (tmp, crid) = setup(&reg, &[]).await;
    let layout = Layout::new(&tmp.path().join("multi"));
    let arm = layout.image(
        "arm64",
        &[tar_layer(&[Entry::File("arch", b"arm64", 0o644)])],
        json!({}),
    );
    let amd = layout.image(
        "amd64",
        &[tar_layer(&[Entry::File("arch", b"amd64", 0o644)])],
        json!({}),
    );
    let index = layout.index(&[arm, amd.clone()]);
    let name = repo(&reg, "multi");
    layout.push(&format!("{name}:latest"), &["--all"]);

    // A bare name means :latest.
    let id = crid.expect_pull(&name).await;
    assert_eq!(id, amd.config);
    let (img, info) = crid.status(&name).await;
    let img = img.unwrap();
    assert_eq!(img.repo_tags, [format!("{name}:latest")]);
    // The repo digest is the index the tag pointed at.
    assert_eq!(img.repo_digests, [format!("{name}@{index}")]);
    let verbose: Value = serde_json::from_str(&info["info"]).unwrap();
    assert_eq!(verbose["platform"]["architecture"], "amd64");
    let layer = crid
        .images_dir()
        .join("layers/sha256")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(std::fs::read(layer.join("arch")).unwrap(), b"amd64");
}

#[tokio::test]
async fn docker_schema2_and_shared_layers() {
    let Some(reg) = registry() else { return };
    let (tmp, crid) = setup(&reg, &[]).await;
    let name = repo(&reg, "docker");
    let extra = tar_layer(&[Entry::File("etc/motd", b"hello\n", 0o644)]);
    push_busybox(
        tmp.path(),
        &format!("{name}:v2s2"),
        std::slice::from_ref(&extra),
        &["--format", "v2s2"],
    );
    let id = crid.expect_pull(&format!("{name}:v2s2")).await;
    let (img, _) = crid.status(&id).await;
    assert_eq!(img.unwrap().repo_tags, [format!("{name}:v2s2")]);
    assert_eq!(crid.layer_count(), 2);

    // A second image on the same busybox base shares its layer directory.
    let other = tar_layer(&[Entry::File("etc/motd", b"bye\n", 0o644)]);
    let name2 = repo(&reg, "docker2");
    push_busybox(tmp.path(), &format!("{name2}:v1"), &[other], &[]);
    let id2 = crid.pull(&format!("{name2}:v1")).await.unwrap();
    assert_ne!(id, id2);
    assert_eq!(crid.layer_count(), 3, "the busybox layer is shared");

    // Removing one image keeps the shared layer for the other.
    crid.remove(&id).await.unwrap();
    assert_eq!(crid.layer_count(), 2);
    assert!(crid.status(&id2).await.0.is_some());
}

#[tokio::test]
async fn images_survive_a_restart_and_concurrent_pulls_share_downloads() {
    let Some(reg) = registry() else { return };
    let (tmp, mut crid) = setup(&reg, &[]).await;
    let name = repo(&reg, "restart");
    let built = push_busybox(tmp.path(), &format!("{name}:v1"), &[], &[]);
    let reference = format!("{name}:v1");

    let pulls = (0..4).map(|_| crid.pull(&reference));
    let results = futures::future::join_all(pulls).await;
    for r in results {
        assert_eq!(
            r.unwrap_or_else(|e| panic!("concurrent pull: {e}\n{}", crid.log())),
            built.config
        );
    }
    assert_eq!(crid.list(None).await.len(), 1);
    assert_eq!(crid.layer_count(), 1);
    assert_eq!(crid.leftovers(), 0);

    crid.stop();
    let crid = Crid::start(tmp.path()).await;
    let images = crid.list(None).await;
    assert_eq!(images.len(), 1, "{}", crid.log());
    assert_eq!(images[0].id, built.config);
    assert_eq!(images[0].repo_tags, std::slice::from_ref(&reference));
    assert_eq!(
        crid.layer_count(),
        1,
        "restart must not collect a used layer"
    );
}

#[tokio::test]
async fn pull_errors_have_the_right_codes() {
    let Some(reg) = registry() else { return };
    let (tmp, crid) = setup(&reg, &[]).await;

    let unknown = crid.pull(&repo(&reg, "does-not-exist")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    let unreachable = crid.pull("127.0.0.1:1/nothing/here:v1").await.unwrap_err();
    assert_eq!(unreachable.code(), Code::Unavailable, "{unreachable:?}");

    for bad in ["Not A Reference", "busybox@sha256:123", "a//b", ""] {
        let e = crid.pull(bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
    }

    // A client deadline that expires mid-pull: the right code, and nothing half-written.
    let name = repo(&reg, "deadline");
    push_busybox(tmp.path(), &format!("{name}:v1"), &[], &[]);
    let mut req = tonic::Request::new(cri::PullImageRequest {
        image: Some(spec(&format!("{name}:v1"))),
        ..Default::default()
    });
    req.set_timeout(Duration::from_millis(1));
    let e = crid.cri.images.clone().pull_image(req).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{e:?}"
    );
    let mut clean = false;
    for _ in 0..100 {
        if crid.leftovers() == 0 {
            clean = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(clean, "partial downloads were left behind");
    // The daemon keeps serving and the image still pulls.
    crid.pull(&format!("{name}:v1")).await.unwrap();

    // A registry that accepts connections and never answers: the deadline ends the pull.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = hang.accept().await {
            held.push(sock);
        }
    });
    let mut req = tonic::Request::new(cri::PullImageRequest {
        image: Some(spec(&format!("{hang_addr}/stuck/image:v1"))),
        ..Default::default()
    });
    req.set_timeout(Duration::from_millis(700));
    let e = crid.cri.images.clone().pull_image(req).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{e:?}"
    );
    holder.abort();
    assert!(crid.list(Some(&format!("{name}:v1"))).await.len() == 1);
    assert_eq!(crid.leftovers(), 0);
}

#[tokio::test]
async fn pinned_images_are_reported_and_kept() {
    let Some(reg) = registry() else { return };
    let name = repo(&reg, "pinned");
    let reference = format!("{name}:v1");
    let (tmp, crid) = setup(&reg, std::slice::from_ref(&reference)).await;
    push_busybox(tmp.path(), &reference, &[], &[]);
    let id = crid.pull(&reference).await.unwrap();
    let (img, _) = crid.status(&id).await;
    assert!(img.unwrap().pinned);
    let e = crid.remove(&reference).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(crid.status(&id).await.0.is_some());
}

/// Writes `layout_dir` as a tar file.
fn tar_dir(layout_dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    b.append_dir_all(".", layout_dir).unwrap();
    b.finish().unwrap();
}

#[tokio::test]
async fn import_oci_layout_and_docker_save_tarballs() {
    // Import needs no registry, but shares the harness (root, skopeo-free).
    if !nix::unistd::geteuid().is_root() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "needs root");
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    Crid::config(dir, "127.0.0.1:1", &[]);

    // OCI layout, imported with `crid images import` while no daemon runs.
    let layout = Layout::new(&dir.join("oci"));
    let built = layout.image("amd64", &[busybox_layer()], json!({}));
    layout.tag(
        &built.manifest,
        built.manifest_size,
        "application/vnd.oci.image.manifest.v1+json",
        "example.com/imported/busybox:1.0",
    );
    tar_dir(&dir.join("oci"), &dir.join("oci.tar"));
    let archive = dir.join("oci.tar");
    let out = common::crid_cli(dir, &["images", "import", archive.to_str().unwrap()]);
    assert!(out.contains(&built.config));

    // docker save, imported at start-up from <root>/import.
    let save = dir.join("save");
    std::fs::create_dir_all(save.join("layer1")).unwrap();
    let layer = tar_layer(&[Entry::File("hello.txt", b"from docker save\n", 0o644)]);
    std::fs::write(save.join("layer1/layer.tar"), &layer).unwrap();
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [sha(&layer)]},
    })
    .to_string();
    let config_id = sha(config.as_bytes());
    let config_name = format!("{}.json", config_id.trim_start_matches("sha256:"));
    std::fs::write(save.join(&config_name), &config).unwrap();
    std::fs::write(
        save.join("manifest.json"),
        json!([{"Config": config_name, "RepoTags": ["saved/app:2"], "Layers": ["layer1/layer.tar"]}])
            .to_string(),
    )
    .unwrap();
    let import = dir.join("root/import");
    std::fs::create_dir_all(&import).unwrap();
    tar_dir(&save, &import.join("app.tar"));

    let crid = Crid::start(dir).await;
    let (oci_img, _) = crid.status("example.com/imported/busybox:1.0").await;
    assert_eq!(oci_img.expect("OCI layout image").id, built.config);
    let (saved, _) = crid.status("saved/app:2").await;
    let saved = saved.unwrap_or_else(|| panic!("docker save image\n{}", crid.log()));
    assert_eq!(saved.id, config_id);
    assert_eq!(saved.repo_tags, ["docker.io/saved/app:2"]);
    assert!(import.join("done/app.tar").exists());
    assert!(!import.join("app.tar").exists());
    let layer_dir = crid
        .images_dir()
        .join("layers/sha256")
        .join(sha(&layer).trim_start_matches("sha256:"));
    assert_eq!(
        std::fs::read(layer_dir.join("hello.txt")).unwrap(),
        b"from docker save\n"
    );

    // A gzipped archive imported while the daemon runs shows up in its next answer.
    layout.tag(
        &built.manifest,
        built.manifest_size,
        "application/vnd.oci.image.manifest.v1+json",
        "example.com/imported/live:2.0",
    );
    tar_dir(&dir.join("oci"), &dir.join("live.tar"));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&std::fs::read(dir.join("live.tar")).unwrap())
        .unwrap();
    std::fs::write(dir.join("live.tar.gz"), gz.finish().unwrap()).unwrap();
    let archive = dir.join("live.tar.gz");
    common::crid_cli(dir, &["images", "import", archive.to_str().unwrap()]);
    let (live, _) = crid.status("example.com/imported/live:2.0").await;
    let live = live.expect("image imported next to the running daemon");
    assert_eq!(live.id, built.config);
    assert!(
        live.repo_tags
            .contains(&"example.com/imported/busybox:1.0".to_owned())
    );
    // An archive that is not one is refused with a message, and nothing is left behind.
    std::fs::write(dir.join("junk.tar"), b"not a tar at all").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_crid"))
        .args(common::crid_args(dir))
        .args(["images", "import"])
        .arg(dir.join("junk.tar"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(crid.leftovers(), 0);
    assert_eq!(crid.list(None).await.len(), 2);
}

#[tokio::test]
async fn lying_registry_content_is_refused_through_grpc() {
    use conformance::fixtures::fake_registry::{Content, FakeRegistry};
    if !nix::unistd::geteuid().is_root() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "needs root");
        eprintln!("skipped: needs root");
        return;
    }
    let mut content = Content::digest_mismatch();
    content.add_big_manifest();
    let fake = FakeRegistry::start(content).await.unwrap();
    let host = fake.host();
    let tmp = tempfile::tempdir().unwrap();
    Crid::config_hosts(tmp.path(), &[&host], &[]);
    let crid = Crid::start(tmp.path()).await;

    // The lies first: once the good content is in the store it is (rightly) reused.
    for evil in [
        "evil/layer-digest-mismatch:latest",
        "evil/config-digest-mismatch:latest",
        "evil/manifest-digest-mismatch:latest",
        "evil/layer-size-mismatch:latest",
    ] {
        let e = crid.pull(&format!("{host}/{evil}")).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{evil}: {e:?}");
    }
    let by_digest = format!(
        "{host}/evil/manifest-digest-mismatch@{}",
        conformance::fixtures::fake_registry::Content::manifest_mismatch_digest()
    );
    let e = crid.pull(&by_digest).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = crid
        .pull(&format!("{host}/evil/big-manifest:latest"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    assert_eq!(crid.leftovers(), 0);
    assert!(crid.list(None).await.is_empty());
    crid.pull(&format!("{host}/good/small:latest"))
        .await
        .unwrap_or_else(|e| panic!("good image: {e}\n{}", crid.log()));
    assert_eq!(crid.list(None).await.len(), 1);
}

/// The shared test images pushed by `crid-fixtures` (scripts/test.sh runs it after starting
/// the registry).
#[tokio::test]
async fn fixture_images() {
    use conformance::fixtures::images::{ESCAPE_TARGETS, WHITEOUT_VICTIM};
    let Some(reg) = registry() else { return };
    let (_tmp, crid) = setup(&reg, &[]).await;
    let r = |name: &str| format!("{reg}/{name}");
    // Hostile images first, into an empty store (a truncated layer whose diff id the store
    // already holds would be rightly skipped).
    match crid.pull(&r("evil/abs-path:latest")).await {
        Ok(_) => {}
        Err(e) if e.code() == Code::NotFound => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "the registry holds no fixtures: run target/debug/crid-fixtures"
            );
            eprintln!("skipped: no fixtures in the registry (run crid-fixtures)");
            return;
        }
        Err(e) => panic!("evil/abs-path: {e}\n{}", crid.log()),
    }
    // Hostile layers: refused or confined, and never anything outside the store.
    std::fs::write(WHITEOUT_VICTIM, b"victim").unwrap();
    for (name, must_fail) in [
        ("evil/dotdot:latest", true),
        ("evil/abs-path:latest", false),
        ("evil/symlink-escape:latest", true),
        ("evil/hardlink-escape:latest", true),
        ("evil/whiteout-escape:latest", true),
        ("evil/device:latest", false),
        ("evil/truncated-gzip:latest", true),
        ("evil/self-index:latest", true),
    ] {
        match crid.pull(&r(name)).await {
            Ok(_) => assert!(!must_fail, "{name} was accepted"),
            Err(e) => assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e:?}"),
        }
    }
    for t in ESCAPE_TARGETS {
        assert!(!Path::new(t).exists(), "{t} was created outside the store");
    }
    assert_eq!(std::fs::read(WHITEOUT_VICTIM).unwrap(), b"victim");
    let _ = std::fs::remove_file(WHITEOUT_VICTIM);
    let busybox = crid
        .pull(&r("busybox:latest"))
        .await
        .unwrap_or_else(|e| panic!("busybox: {e}\n{}", crid.log()));

    // The index resolves to this host's image, which is busybox:latest itself.
    assert_eq!(crid.pull(&r("busybox:multiarch")).await.unwrap(), busybox);
    // Docker schema 2: the same config, so the same image id.
    let docker = crid.pull(&r("busybox:docker")).await.unwrap();
    let (img, _) = crid.status(&docker).await;
    assert!(img.unwrap().repo_tags.contains(&r("busybox:docker")));

    // Shared layers: layered:v1 and v2 reuse the busybox layer.
    let layers_before = crid.layer_count();
    crid.pull(&r("layered:v1")).await.unwrap();
    crid.pull(&r("layered:v2")).await.unwrap();
    assert_eq!(
        crid.layer_count(),
        layers_before + 2,
        "one new layer per image"
    );
    crid.pull(&r("zstd:latest")).await.unwrap();

    // Unikernels: recognised and shown in verbose status; invalid ones refused by key.
    for name in ["unikernel/annotated:latest", "unikernel/uruncjson:latest"] {
        let id = crid
            .pull(&r(name))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", crid.log()));
        let (_, info) = crid.status(&id).await;
        let verbose: Value = serde_json::from_str(&info["info"]).unwrap();
        assert_eq!(
            verbose["unikernel"]["binary"], "unikernel/kernel",
            "{name}: {verbose}"
        );
    }
    let (_, info) = crid.status(&r("busybox:latest")).await;
    let verbose: Value = serde_json::from_str(&info["info"]).unwrap();
    assert!(verbose["unikernel"].is_null());
    for (name, key) in [
        ("unikernel/bad-type:latest", "unikernelType"),
        ("unikernel/bad-path:latest", "binary"),
        ("unikernel/bad-switch:latest", "mountRootfs"),
    ] {
        let e = crid.pull(&r(name)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e:?}");
        assert!(e.message().contains(key), "{name}: {}", e.message());
    }

    assert_eq!(crid.leftovers(), 0);
    // Still serving.
    assert!(crid.status(&busybox).await.0.is_some());
}

/// Runs a command, panicking with its stderr on failure.
/// A docker-registry serving TLS with a certificate from a throw-away CA; stopped on drop.
struct TlsRegistry {
    child: Child,
    addr: String,
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsRegistry {
    async fn start(dir: &Path) -> TlsRegistry {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let p = |n: &str| dir.join(n).display().to_string();
        common::run_ok(Command::new("openssl").args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=crid test CA",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.pem"),
        ]));
        common::run_ok(Command::new("openssl").args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &p("server.key"),
            "-out",
            &p("server.csr"),
        ]));
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        common::run_ok(Command::new("openssl").args([
            "x509",
            "-req",
            "-in",
            &p("server.csr"),
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &p("ext.cnf"),
            "-out",
            &p("server.pem"),
        ]));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        std::fs::write(
            dir.join("config.yml"),
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n  tls:\n    certificate: {}\n    key: {}\nlog:\n  level: warn\n",
                p("data"),
                p("server.pem"),
                p("server.key")
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).unwrap())
            .spawn()
            .expect("start docker-registry");
        let reg = TlsRegistry { child, addr };
        for _ in 0..100 {
            if std::net::TcpStream::connect(&reg.addr).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        reg
    }
}

#[tokio::test]
async fn tls_registries_honour_ca_and_skip_verify() {
    // Needs no shared registry: starts its own TLS one.
    if registry().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = TlsRegistry::start(&tmp.path().join("registry")).await;
    let name = format!("{}/tls/busybox", reg.addr);
    push_busybox(tmp.path(), &format!("{name}:v1"), &[], &[]);
    let ca = tmp.path().join("registry/ca.pem");

    let dir = tmp.path().join("crid");
    Crid::config_hosts(&dir, &[], &[]);
    let certs = dir.join("certs.d").join(&reg.addr);
    std::fs::create_dir_all(&certs).unwrap();
    let hosts = certs.join("hosts.toml");
    let crid = Crid::start(&dir).await;

    // Not trusted: refused (the registry cannot be reached safely).
    std::fs::write(&hosts, format!("server = \"https://{}\"\n", reg.addr)).unwrap();
    let e = crid.pull(&format!("{name}:v1")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // The CA from hosts.toml (relative to its directory) makes it trusted.
    std::fs::copy(&ca, certs.join("ca.pem")).unwrap();
    std::fs::write(
        &hosts,
        format!("server = \"https://{}\"\nca = \"ca.pem\"\n", reg.addr),
    )
    .unwrap();
    crid.pull(&format!("{name}:v1"))
        .await
        .unwrap_or_else(|e| panic!("with ca: {e}\n{}", crid.log()));
    crid.remove(&format!("{name}:v1")).await.unwrap();
    // skip_verify trusts anything.
    std::fs::write(
        &hosts,
        format!("server = \"https://{}\"\nskip_verify = true\n", reg.addr),
    )
    .unwrap();
    crid.pull(&format!("{name}:v1"))
        .await
        .unwrap_or_else(|e| panic!("with skip_verify: {e}\n{}", crid.log()));
}
