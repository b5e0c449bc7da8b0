//! `crid unikernel pack`: packages a unikernel (kernel, optional initrd or block image, command
//! line) as an OCI image that urunc and crid both run, like urunc's `bima`.
//!
//! The image has one layer holding `/unikernel/<kernel>` (and `/unikernel/<initrd>`,
//! `/unikernel/<block>`) plus `/urunc.json`, whose values are base64-encoded as urunc reads
//! them. The same `com.urunc.unikernel.*` keys are set, in clear, as manifest annotations and
//! config labels; the config's `Cmd` is the command line split on whitespace. The result is an
//! OCI image layout directory (`--output-layout`) or a push to a registry (`--push`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use sha2::{Digest, Sha256};

use imagestore::{HypervisorKind, UnikernelType};

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Where the files go inside the image.
pub const DIR_IN_IMAGE: &str = "unikernel";

/// Options of `crid unikernel pack`.
#[derive(Debug, Clone, clap::Args)]
pub struct PackArgs {
    /// Guest type: linux, unikraft, rumprun, mirage or mewz.
    #[arg(long = "type")]
    pub unikernel_type: String,
    /// Hypervisor: qemu, firecracker, cloud-hypervisor, hvt or spt.
    #[arg(long)]
    pub hypervisor: String,
    /// The guest kernel.
    #[arg(long)]
    pub kernel: PathBuf,
    /// An initrd for the guest.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// A block device image for the guest.
    #[arg(long)]
    pub block: Option<PathBuf>,
    /// Where the guest mounts the block device.
    #[arg(long)]
    pub block_mount_point: Option<String>,
    /// The application command line.
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// A file of the image's root file system besides the unikernel's: `HOST_PATH:IMAGE_PATH`
    /// (repeatable; the mode's execute bits are kept), e.g. a `linux` guest's workload.
    #[arg(long = "add")]
    pub add: Vec<String>,
    /// The image config's `Entrypoint` (repeatable, one argument each).
    #[arg(long = "entrypoint")]
    pub entrypoint: Vec<String>,
    /// An environment variable of the image config (`KEY=VALUE`; repeatable).
    #[arg(long = "env")]
    pub env: Vec<String>,
    /// The unikernel framework version (e.g. Unikraft's, which selects its command line form).
    #[arg(long)]
    pub unikernel_version: Option<String>,
    /// urunc's `mountRootfs=true`: the guest mounts the container's root file system (crid
    /// shares it with a `linux` guest on QEMU over virtiofs, or gives it as an ext4 block
    /// device on the other hypervisors).
    #[arg(long)]
    pub mount_rootfs: bool,
    /// The guest's virtio transport, `pci` or `mmio` (crid's `io.crid.unikernel.virtio`, as a
    /// manifest annotation and config label; not in `urunc.json`): `mmio` for guests that find
    /// virtio-mmio devices on their command line, such as builds for Firecracker.
    #[arg(long)]
    pub virtio: Option<String>,
    /// Image name (`NAME[:TAG]`, recorded in the layout's index).
    #[arg(short = 't', long = "tag")]
    pub tag: String,
    /// Write an OCI image layout to this directory.
    #[arg(long, conflicts_with = "push")]
    pub output_layout: Option<PathBuf>,
    /// Push to a registry: `HOST[:PORT]/NAME[:TAG]`.
    #[arg(long)]
    pub push: Option<String>,
    /// Use plain HTTP for the registry (always for 127.0.0.1 and localhost).
    #[arg(long)]
    pub insecure: bool,
}

/// A built image: config, one gzip layer, and the manifest annotations.
#[derive(Debug, Clone)]
pub struct Packed {
    pub config: Vec<u8>,
    pub layer: Vec<u8>,
    pub annotations: BTreeMap<String, String>,
}

fn parse_enum<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> anyhow::Result<T> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| anyhow::anyhow!("unknown {what} {s:?}"))
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn file_name(p: &Path) -> anyhow::Result<String> {
    let name = p
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no UTF-8 file name", p.display()))?;
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        bail!("file name {name:?} may only hold letters, digits, '.', '_' and '-'");
    }
    Ok(name.to_string())
}

/// Builds the image in memory.
pub fn build(args: &PackArgs) -> anyhow::Result<Packed> {
    let t: UnikernelType = parse_enum("unikernel type", &args.unikernel_type)?;
    let h: HypervisorKind = parse_enum("hypervisor", &args.hypervisor)?;
    if !sandbox::vm::supported_pair(t, h) {
        bail!(
            "{} guests do not run on {}",
            args.unikernel_type,
            args.hypervisor
        );
    }
    if args.cmdline.chars().any(char::is_control) {
        bail!("the command line contains a control character");
    }
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    let key = |k: &str| format!("{}{k}", imagestore::unikernel::KEY_PREFIX);
    keys.insert(key("unikernelType"), t.as_str().into());
    keys.insert(key("hypervisor"), h.as_str().into());
    let kernel = format!("/{DIR_IN_IMAGE}/{}", file_name(&args.kernel)?);
    keys.insert(key("binary"), kernel.clone());
    files.push((kernel, args.kernel.clone()));
    keys.insert(key("cmdline"), args.cmdline.clone());
    if let Some(initrd) = &args.initrd {
        let p = format!("/{DIR_IN_IMAGE}/{}", file_name(initrd)?);
        keys.insert(key("initrd"), p.clone());
        files.push((p, initrd.clone()));
    }
    if let Some(block) = &args.block {
        let p = format!("/{DIR_IN_IMAGE}/{}", file_name(block)?);
        keys.insert(key("block"), p.clone());
        files.push((p, block.clone()));
        if let Some(mp) = &args.block_mount_point {
            keys.insert(key("blkMntPoint"), mp.clone());
        }
    }
    if args.mount_rootfs {
        keys.insert(key("mountRootfs"), "true".into());
    }
    if let Some(v) = &args.unikernel_version {
        keys.insert(key("unikernelVersion"), v.clone());
    }
    if files.iter().skip(1).any(|(p, _)| *p == files[0].0)
        || (files.len() == 3 && files[1].0 == files[2].0)
    {
        bail!("kernel, initrd and block image need distinct file names");
    }

    // urunc.json: the same keys, values base64-encoded; mountRootfs is mandatory there.
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut json_keys: BTreeMap<String, String> = keys
        .iter()
        .map(|(k, v)| (k.clone(), b64.encode(v)))
        .collect();
    json_keys
        .entry(key("mountRootfs"))
        .or_insert_with(|| b64.encode("false"));
    let urunc_json = serde_json::to_vec_pretty(&json_keys)?;
    // crid's own key: an annotation and a label, not one of urunc's.
    if let Some(v) = &args.virtio {
        imagestore::unikernel::parse_virtio(v)?;
        keys.insert(imagestore::unikernel::VIRTIO_KEY.into(), v.clone());
    }

    // The layer: deterministic tar (mtime 0, root-owned), gzip-compressed.
    let mut tar = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(0);
    tar.append_data(&mut dir, format!("{DIR_IN_IMAGE}/"), std::io::empty())?;
    let mut add = |path: &str, data: &[u8], mode: u32| -> anyhow::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        tar.append_data(&mut h, path.trim_start_matches('/'), data)?;
        Ok(())
    };
    for (path, host) in &files {
        let data = std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        add(path, &data, 0o644)?;
    }
    for spec in &args.add {
        use std::os::unix::fs::PermissionsExt;
        let (host, dest) = spec
            .split_once(':')
            .with_context(|| format!("--add {spec:?} is not HOST_PATH:IMAGE_PATH"))?;
        let dest = dest.trim_start_matches('/');
        if dest.is_empty()
            || dest
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
            || dest.starts_with(&format!("{DIR_IN_IMAGE}/"))
            || dest == "urunc.json"
        {
            bail!("--add {spec:?}: bad image path");
        }
        let data = std::fs::read(host).with_context(|| format!("reading {host}"))?;
        let exec = std::fs::metadata(host)?.permissions().mode() & 0o111 != 0;
        add(dest, &data, if exec { 0o755 } else { 0o644 })?;
    }
    add("urunc.json", &urunc_json, 0o644)?;
    let tar_bytes = tar.into_inner()?;
    let diff_id = sha256(&tar_bytes);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar_bytes)?;
    let layer = gz.finish()?;

    let mut config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Labels": keys },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created_by": "crid unikernel pack" }],
    });
    let cmd: Vec<&str> = args.cmdline.split_whitespace().collect();
    if !cmd.is_empty() {
        config["config"]["Cmd"] = serde_json::json!(cmd);
    }
    if let Some(bad) = args
        .env
        .iter()
        .find(|kv| kv.split_once('=').is_none_or(|(k, _)| k.is_empty()))
    {
        bail!("--env {bad:?} is not KEY=VALUE");
    }
    if !args.env.is_empty() {
        config["config"]["Env"] = serde_json::json!(args.env);
    }
    if !args.entrypoint.is_empty() {
        config["config"]["Entrypoint"] = serde_json::json!(args.entrypoint);
    }
    Ok(Packed {
        config: serde_json::to_vec(&config)?,
        layer,
        annotations: keys,
    })
}

fn manifest(p: &Packed) -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": sha256(&p.config),
            "size": p.config.len(),
        },
        "layers": [{
            "mediaType": LAYER_MEDIA_TYPE,
            "digest": sha256(&p.layer),
            "size": p.layer.len(),
        }],
        "annotations": p.annotations,
    }))?)
}

/// Writes an OCI image layout; returns the manifest digest.
pub fn write_layout(p: &Packed, dir: &Path, tag: &str) -> anyhow::Result<String> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let manifest = manifest(p)?;
    for blob in [&p.config, &p.layer, &manifest] {
        let digest = sha256(blob);
        let name = digest.trim_start_matches("sha256:");
        std::fs::write(blobs.join(name), blob)?;
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let digest = sha256(&manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": digest,
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec_pretty(&index)?)?;
    Ok(digest)
}

/// Pushes to `reference` (`HOST[:PORT]/NAME[:TAG]`); returns the manifest URL.
pub async fn push(p: &Packed, reference: &str, insecure: bool) -> anyhow::Result<String> {
    use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    use oci_client::manifest::OciImageManifest;
    let reference: oci_client::Reference = reference
        .parse()
        .with_context(|| format!("bad reference {reference:?}"))?;
    let registry = reference.resolve_registry().to_string();
    let host = registry.split(':').next().unwrap_or("");
    let protocol = if insecure || host == "127.0.0.1" || host == "localhost" {
        ClientProtocol::HttpsExcept(vec![registry.clone()])
    } else {
        ClientProtocol::Https
    };
    let client = oci_client::Client::new(ClientConfig {
        protocol,
        ..Default::default()
    });
    let layers = vec![ImageLayer::new(
        p.layer.clone(),
        LAYER_MEDIA_TYPE.to_string(),
        None,
    )];
    let config = Config::new(p.config.clone(), CONFIG_MEDIA_TYPE.to_string(), None);
    let manifest = OciImageManifest::build(&layers, &config, Some(p.annotations.clone()));
    let resp = client
        .push(
            &reference,
            &layers,
            config,
            &oci_client::secrets::RegistryAuth::Anonymous,
            Some(manifest),
        )
        .await
        .with_context(|| format!("pushing to {reference}"))?;
    Ok(resp.manifest_url)
}

/// Runs the subcommand.
pub fn run(args: &PackArgs) -> anyhow::Result<()> {
    let packed = build(args)?;
    match (&args.output_layout, &args.push) {
        (Some(dir), None) => {
            let digest = write_layout(&packed, dir, &args.tag)?;
            println!("{digest}");
        }
        (None, Some(reference)) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let url = rt.block_on(push(&packed, reference, args.insecure))?;
            println!("{url}");
        }
        _ => bail!("give exactly one of --output-layout DIR or --push REFERENCE"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn args(dir: &Path) -> PackArgs {
        std::fs::write(dir.join("kernel.elf"), b"\x7fELF kernel").unwrap();
        std::fs::write(dir.join("initrd.cpio"), b"initrd").unwrap();
        PackArgs {
            unikernel_type: "unikraft".into(),
            hypervisor: "qemu".into(),
            kernel: dir.join("kernel.elf"),
            initrd: Some(dir.join("initrd.cpio")),
            block: None,
            block_mount_point: None,
            cmdline: "app --port 8080".into(),
            unikernel_version: Some("0.17.0".into()),
            mount_rootfs: false,
            virtio: None,
            env: vec!["FROM_IMAGE=yes".into()],
            add: vec![],
            entrypoint: vec![],
            tag: "example/hello:latest".into(),
            output_layout: None,
            push: None,
            insecure: false,
        }
    }

    fn layer_files(layer: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(layer));
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.insert(path, data);
        }
        out
    }

    #[test]
    fn layout_has_annotations_urunc_json_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        let out = dir.path().join("layout");
        a.output_layout = Some(out.clone());
        a.virtio = Some("mmio".into());
        run(&a).unwrap();

        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(
            m["annotations"]["org.opencontainers.image.ref.name"],
            "example/hello:latest"
        );
        let blob = |d: &serde_json::Value| {
            let d = d.as_str().unwrap();
            let data = std::fs::read(out.join("blobs/sha256").join(&d[7..])).unwrap();
            assert_eq!(sha256(&data), d, "blob digest");
            data
        };
        let manifest: serde_json::Value = serde_json::from_slice(&blob(&m["digest"])).unwrap();
        let ann = &manifest["annotations"];
        assert_eq!(ann["com.urunc.unikernel.unikernelType"], "unikraft");
        assert_eq!(ann["com.urunc.unikernel.hypervisor"], "qemu");
        assert_eq!(ann["com.urunc.unikernel.binary"], "/unikernel/kernel.elf");
        assert_eq!(ann["com.urunc.unikernel.initrd"], "/unikernel/initrd.cpio");
        assert_eq!(ann["com.urunc.unikernel.cmdline"], "app --port 8080");
        assert_eq!(ann["com.urunc.unikernel.unikernelVersion"], "0.17.0");
        assert_eq!(ann["io.crid.unikernel.virtio"], "mmio");

        let config: serde_json::Value =
            serde_json::from_slice(&blob(&manifest["config"]["digest"])).unwrap();
        assert_eq!(config["config"]["Labels"], *ann);
        assert_eq!(
            config["config"]["Env"],
            serde_json::json!(["FROM_IMAGE=yes"])
        );
        assert_eq!(
            config["config"]["Cmd"],
            serde_json::json!(["app", "--port", "8080"])
        );

        let layer = blob(&manifest["layers"][0]["digest"]);
        let files = layer_files(&layer);
        assert_eq!(files["unikernel/kernel.elf"], b"\x7fELF kernel");
        assert_eq!(files["unikernel/initrd.cpio"], b"initrd");
        let uj: BTreeMap<String, String> = serde_json::from_slice(&files["urunc.json"]).unwrap();
        let dec = |k: &str| {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(&uj[k])
                    .unwrap(),
            )
            .unwrap()
        };
        assert_eq!(dec("com.urunc.unikernel.unikernelType"), "unikraft");
        assert_eq!(dec("com.urunc.unikernel.binary"), "/unikernel/kernel.elf");
        assert_eq!(dec("com.urunc.unikernel.mountRootfs"), "false");
        // crid's own key is not urunc's.
        assert!(!uj.contains_key("io.crid.unikernel.virtio"));
        // The diff_id is the uncompressed layer's digest.
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(&layer[..])
            .read_to_end(&mut tar_bytes)
            .unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], sha256(&tar_bytes));
    }

    #[test]
    fn rejects_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.unikernel_type = "windows".into();
        assert!(build(&a).is_err());
        let mut a = args(dir.path());
        a.hypervisor = "hvt".into(); // unikraft does not run on hvt
        assert!(build(&a).is_err());
        let mut a = args(dir.path());
        a.cmdline = "a\nb".into();
        assert!(build(&a).is_err());
        let mut a = args(dir.path());
        a.virtio = Some("ccw".into());
        assert!(build(&a).is_err());
        let mut a = args(dir.path());
        a.kernel = dir.path().join("missing");
        assert!(build(&a).is_err());
        let a = args(dir.path());
        assert!(run(&a).is_err(), "neither layout nor push");
    }

    #[test]
    fn push_to_the_test_registry() {
        let Ok(registry) = std::env::var("CRID_TEST_REGISTRY") else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CRID_TEST_REGISTRY is not set");
            }
            eprintln!("skipped: CRID_TEST_REGISTRY is not set");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        let reference = format!("{registry}/crid-test/pack:v1");
        a.push = Some(reference.clone());
        let packed = build(&a).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(push(&packed, &reference, true)).unwrap();
        // Read the manifest back and check the annotations survived.
        let client = oci_client::Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::Http,
            ..Default::default()
        });
        let r: oci_client::Reference = reference.parse().unwrap();
        let (manifest, _) = rt
            .block_on(client.pull_image_manifest(&r, &oci_client::secrets::RegistryAuth::Anonymous))
            .unwrap();
        let ann = manifest.annotations.unwrap();
        assert_eq!(ann["com.urunc.unikernel.unikernelType"], "unikraft");
        assert_eq!(ann["com.urunc.unikernel.binary"], "/unikernel/kernel.elf");
    }
}
