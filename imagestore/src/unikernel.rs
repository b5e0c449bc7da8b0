//! Recognising unikernel artifacts: urunc's `com.urunc.unikernel.*` keys, read from manifest
//! annotations, image config labels, or `urunc.json` at the rootfs root.
//!
//! Rules, decided here once:
//! - **Where.** The first source holding any `com.urunc.unikernel.*` key wins, in this order:
//!   manifest annotations, config labels, `urunc.json`. Sources are not merged.
//! - **`urunc.json`** is looked up at the root of the top-most layer that has it; a whiteout of
//!   it, or an opaque root, in a higher layer hides lower copies. It must be a regular file of
//!   at most 1 MiB (a symlink is refused, never followed); its values are base64 (as urunc
//!   writes and reads them), each decoded strictly.
//! - **Plain or base64** in annotations and labels is decided per source, not per key, with the
//!   enumerated `unikernelType` as the witness: if it is valid as written, every value is plain
//!   text; otherwise, if every value decodes as standard base64 to UTF-8 and the decoded
//!   `unikernelType` is valid, every value is decoded (and validated); otherwise the values are
//!   validated as written, which names the bad key. No type name is itself the base64 encoding
//!   of UTF-8 text, so a base64 source is never mistaken for a plain one. A free
//!   text value such as `cmdline` cannot tell by itself (`aGk=` is a valid command line), hence
//!   the witness; a source mixing plain and base64 values is not supported.
//! - **Validation.** `unikernelType` is one of linux, unikraft, rumprun, mirage, mewz;
//!   `hypervisor` one of qemu, firecracker, hvt, spt, clh / cloud-hypervisor, crid (crid's own
//!   `crid-vmm`; missing: qemu);
//!   `binary` is required; `binary`, `initrd` and `block` are paths in the rootfs: a leading `/`
//!   is stripped, `..` components and control characters are refused; `cmdline` has no control
//!   characters; `blkMntPoint` is an absolute guest path without `..` or control characters;
//!   `mountRootfs` and `useDMBlock` are booleans as urunc parses them (Go's `strconv.ParseBool`:
//!   `1 t T TRUE true True` and `0 f F FALSE false False`); `unikernelVersion` has no control
//!   characters; every value is at most 4 KiB. Other keys under the prefix are ignored. Any source with a urunc key that fails these
//!   rules is an error (`InvalidUnikernel`, kind `InvalidArgument`, naming the key) — never a
//!   silent fall-back to an ordinary container.
//! - **crid's own key** `io.crid.unikernel.virtio` ([`VIRTIO_KEY`]), not urunc's: `mmio` says
//!   the guest drives virtio-mmio devices announced on its command line
//!   (`virtio_mmio.device=SIZE@ADDR:IRQ`, as Firecracker announces them), `pci` (the default)
//!   virtio-pci ones. Read as plain text from the manifest annotations, else the config labels,
//!   whichever source the urunc keys came from (a pod's or container's CRI annotation may set
//!   it too, see `sandbox`'s `unikernel_keys`); any other value is `InvalidUnikernel` naming
//!   it. A guest's drivers cannot be seen from its kernel file, so crid never guesses this.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine;
use rustix::fs::{FileType, Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::ImageError;

/// The annotation/label key prefix urunc uses.
pub const KEY_PREFIX: &str = "com.urunc.unikernel.";

/// The kind of guest, which decides its kernel command line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnikernelType {
    Linux,
    Unikraft,
    Rumprun,
    Mirage,
    Mewz,
}

/// The monitor that boots the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HypervisorKind {
    Qemu,
    Firecracker,
    CloudHypervisor,
    Hvt,
    Spt,
    /// crid's own microVM monitor, `crid-vmm`.
    Crid,
}

/// The virtio transport the guest's drivers use ([`VIRTIO_KEY`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VirtioTransport {
    /// virtio-pci devices, found by scanning the PCI bus (Unikraft's QEMU builds).
    #[default]
    Pci,
    /// virtio-mmio devices, found from `virtio_mmio.device=` on the command line (builds for
    /// Firecracker, crid's test guest).
    Mmio,
}

/// crid's image annotation or label naming the guest's virtio transport: `pci` or `mmio`.
pub const VIRTIO_KEY: &str = "io.crid.unikernel.virtio";

/// Where the unikernel keys were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnikernelSource {
    ManifestAnnotations,
    ConfigLabels,
    UruncJson,
}

/// A validated unikernel description. Paths are relative to the image rootfs and contain no
/// `..` component; `cmdline` contains no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnikernelInfo {
    pub unikernel_type: UnikernelType,
    pub hypervisor: HypervisorKind,
    /// Kernel image inside the rootfs.
    pub binary: PathBuf,
    pub cmdline: String,
    pub initrd: Option<PathBuf>,
    /// Block device image inside the rootfs.
    pub block: Option<PathBuf>,
    /// Where the guest mounts the block device (`blkMntPoint`): an absolute guest path.
    pub block_mount_point: Option<PathBuf>,
    /// `unikernelVersion` (also read as `version`).
    pub version: Option<String>,
    /// urunc's `mountRootfs`: whether the guest gets the image's root file system. Missing:
    /// crid's default for the guest type (see README's guest table).
    #[serde(default)]
    pub mount_rootfs: Option<bool>,
    /// urunc's `useDMBlock`: use a devmapper snapshot as the guest's block device. crid has no
    /// devmapper snapshotter: with `mountRootfs=true` a `linux` QEMU guest gets its root as a
    /// block device crid builds instead of virtiofs (the sandbox crate's `vm::blockroot`);
    /// recorded only otherwise.
    #[serde(default)]
    pub use_dm_block: Option<bool>,
    /// The guest's virtio transport (crid's [`VIRTIO_KEY`]).
    #[serde(default)]
    pub virtio: VirtioTransport,
    pub source: UnikernelSource,
}

impl UnikernelInfo {
    /// A guest of `unikernel_type` on `hypervisor` booting `binary`, with nothing else set: no
    /// command line, initrd, block image or version, urunc's defaults for the rest.
    pub fn new(
        unikernel_type: UnikernelType,
        hypervisor: HypervisorKind,
        binary: impl Into<PathBuf>,
        source: UnikernelSource,
    ) -> UnikernelInfo {
        UnikernelInfo {
            unikernel_type,
            hypervisor,
            binary: binary.into(),
            cmdline: String::new(),
            initrd: None,
            block: None,
            block_mount_point: None,
            version: None,
            mount_rootfs: None,
            use_dm_block: None,
            virtio: VirtioTransport::default(),
            source,
        }
    }
}

/// The name of urunc's description file at the rootfs root.
pub const URUNC_JSON: &str = "urunc.json";
/// The largest `urunc.json` read.
pub const MAX_URUNC_JSON: u64 = 1 << 20;
/// The longest value accepted for any key.
pub const MAX_VALUE_LEN: usize = 4096;

const TYPE: &str = "unikernelType";
const HYPERVISOR: &str = "hypervisor";
const BINARY: &str = "binary";
const CMDLINE: &str = "cmdline";
const INITRD: &str = "initrd";
const BLOCK: &str = "block";
const BLK_MNT_POINT: &str = "blkMntPoint";
const VERSION: &str = "unikernelVersion";
const VERSION_ALT: &str = "version";
const MOUNT_ROOTFS: &str = "mountRootfs";
const USE_DM_BLOCK: &str = "useDMBlock";

impl UnikernelType {
    /// The type named by urunc's `unikernelType` value.
    pub fn parse(s: &str) -> Option<UnikernelType> {
        Some(match s {
            "linux" => UnikernelType::Linux,
            "unikraft" => UnikernelType::Unikraft,
            "rumprun" => UnikernelType::Rumprun,
            "mirage" => UnikernelType::Mirage,
            "mewz" => UnikernelType::Mewz,
            _ => return None,
        })
    }

    /// urunc's spelling of the type, as [`UnikernelType::parse`] reads it.
    pub fn as_str(self) -> &'static str {
        match self {
            UnikernelType::Linux => "linux",
            UnikernelType::Unikraft => "unikraft",
            UnikernelType::Rumprun => "rumprun",
            UnikernelType::Mirage => "mirage",
            UnikernelType::Mewz => "mewz",
        }
    }
}

impl HypervisorKind {
    /// The monitor named by urunc's `hypervisor` value.
    pub fn parse(s: &str) -> Option<HypervisorKind> {
        Some(match s {
            "qemu" => HypervisorKind::Qemu,
            "firecracker" => HypervisorKind::Firecracker,
            "clh" | "cloud-hypervisor" | "cloudhypervisor" => HypervisorKind::CloudHypervisor,
            "hvt" => HypervisorKind::Hvt,
            "spt" => HypervisorKind::Spt,
            "crid" => HypervisorKind::Crid,
            _ => return None,
        })
    }

    /// urunc's spelling of the monitor (the first of the names [`HypervisorKind::parse`] reads).
    pub fn as_str(self) -> &'static str {
        match self {
            HypervisorKind::Qemu => "qemu",
            HypervisorKind::Firecracker => "firecracker",
            HypervisorKind::CloudHypervisor => "cloud-hypervisor",
            HypervisorKind::Hvt => "hvt",
            HypervisorKind::Spt => "spt",
            HypervisorKind::Crid => "crid",
        }
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> ImageError {
    let key = if key.starts_with(KEY_PREFIX) || key == URUNC_JSON {
        key.to_owned()
    } else {
        format!("{KEY_PREFIX}{key}")
    };
    ImageError::InvalidUnikernel {
        key,
        reason: reason.into(),
    }
}

/// Recognises a unikernel image from its manifest annotations, config labels and unpacked
/// layers (bottom first); `None` for an ordinary container image.
pub fn detect(
    manifest_annotations: &HashMap<String, String>,
    config_labels: &HashMap<String, String>,
    layer_dirs_bottom_first: &[PathBuf],
) -> Result<Option<UnikernelInfo>, ImageError> {
    let info = if has_keys(manifest_annotations) {
        from_keys(manifest_annotations, UnikernelSource::ManifestAnnotations)?
    } else if has_keys(config_labels) {
        from_keys(config_labels, UnikernelSource::ConfigLabels)?
    } else {
        find_urunc_json(layer_dirs_bottom_first)?
            .map(|bytes| from_urunc_json(&bytes))
            .transpose()?
    };
    let Some(mut info) = info else {
        return Ok(None);
    };
    info.virtio = virtio_transport(manifest_annotations, config_labels)?;
    Ok(Some(info))
}

/// crid's [`VIRTIO_KEY`] from the manifest annotations, else the config labels; `pci` when
/// neither has it.
pub fn virtio_transport(
    manifest_annotations: &HashMap<String, String>,
    config_labels: &HashMap<String, String>,
) -> Result<VirtioTransport, ImageError> {
    let value = manifest_annotations
        .get(VIRTIO_KEY)
        .or_else(|| config_labels.get(VIRTIO_KEY));
    match value.map(String::as_str) {
        None | Some("") => Ok(VirtioTransport::Pci),
        Some(v) => parse_virtio(v),
    }
}

/// A value of crid's [`VIRTIO_KEY`]: `pci` or `mmio`; anything else is `InvalidUnikernel`
/// naming the key.
pub fn parse_virtio(value: &str) -> Result<VirtioTransport, ImageError> {
    match value {
        "pci" => Ok(VirtioTransport::Pci),
        "mmio" => Ok(VirtioTransport::Mmio),
        other => Err(ImageError::InvalidUnikernel {
            key: VIRTIO_KEY.to_owned(),
            reason: format!(
                "unknown virtio transport {:?} (known: pci, mmio)",
                printable(other)
            ),
        }),
    }
}

fn has_keys(map: &HashMap<String, String>) -> bool {
    map.keys().any(|k| k.starts_with(KEY_PREFIX))
}

/// Reads urunc's keys from annotations or labels, plain text or base64 (see the module rules).
/// `None` when the map holds no `com.urunc.unikernel.*` key.
pub fn from_keys(
    map: &HashMap<String, String>,
    source: UnikernelSource,
) -> Result<Option<UnikernelInfo>, ImageError> {
    let values: HashMap<&str, &str> = map
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(KEY_PREFIX)?, v.as_str())))
        .collect();
    if values.is_empty() {
        return Ok(None);
    }
    let type_ok = |t: Option<&str>| t.is_some_and(|t| UnikernelType::parse(t).is_some());
    if !type_ok(values.get(TYPE).copied()) {
        if let Some(decoded) = decode_all(&values) {
            if type_ok(decoded.get(TYPE).map(String::as_str)) {
                let refs = decoded.iter().map(|(k, v)| (*k, v.as_str())).collect();
                return build(&refs, source).map(Some);
            }
        }
    }
    build(&values, source).map(Some)
}

/// Every value decoded from standard base64 to UTF-8, or `None` if any is not.
fn decode_all<'a>(values: &HashMap<&'a str, &str>) -> Option<HashMap<&'a str, String>> {
    values
        .iter()
        .map(|(k, v)| {
            let bytes = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
            Some((*k, String::from_utf8(bytes).ok()?))
        })
        .collect()
}

/// Reads a `urunc.json`: a JSON object of `com.urunc.unikernel.*` keys with base64 values.
pub fn from_urunc_json(bytes: &[u8]) -> Result<UnikernelInfo, ImageError> {
    if bytes.len() as u64 > MAX_URUNC_JSON {
        return Err(invalid(
            URUNC_JSON,
            format!("larger than {MAX_URUNC_JSON} bytes"),
        ));
    }
    let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(bytes)
        .map_err(|e| invalid(URUNC_JSON, format!("not a JSON object: {e}")))?;
    let mut decoded: HashMap<&str, String> = HashMap::new();
    for (k, v) in &obj {
        let Some(short) = k.strip_prefix(KEY_PREFIX) else {
            continue;
        };
        let serde_json::Value::String(v) = v else {
            return Err(invalid(k, "value is not a string"));
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v)
            .map_err(|e| invalid(k, format!("value is not base64: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|_| invalid(k, "value is not UTF-8"))?;
        decoded.insert(short, text);
    }
    let refs = decoded.iter().map(|(k, v)| (*k, v.as_str())).collect();
    build(&refs, UnikernelSource::UruncJson)
}

/// Validates urunc's values (keys without the prefix) into a description.
fn build(
    values: &HashMap<&str, &str>,
    source: UnikernelSource,
) -> Result<UnikernelInfo, ImageError> {
    for (k, v) in values {
        if v.len() > MAX_VALUE_LEN {
            return Err(invalid(k, format!("longer than {MAX_VALUE_LEN} bytes")));
        }
    }
    let get = |k: &str| values.get(k).copied().filter(|v| !v.is_empty());
    let ty = get(TYPE).ok_or_else(|| invalid(TYPE, "missing"))?;
    let unikernel_type = UnikernelType::parse(ty).ok_or_else(|| {
        invalid(
            TYPE,
            format!(
                "unknown type {:?} (known: linux, unikraft, rumprun, mirage, mewz)",
                printable(ty)
            ),
        )
    })?;
    let hypervisor = match get(HYPERVISOR) {
        None => HypervisorKind::Qemu,
        Some(h) => HypervisorKind::parse(h).ok_or_else(|| {
            invalid(
                HYPERVISOR,
                format!(
                    "unknown hypervisor {:?} (known: qemu, firecracker, hvt, spt, clh, crid)",
                    printable(h)
                ),
            )
        })?,
    };
    let binary = rootfs_path(
        BINARY,
        get(BINARY).ok_or_else(|| invalid(BINARY, "missing"))?,
    )?;
    let cmdline = get(CMDLINE).unwrap_or("");
    if cmdline.chars().any(char::is_control) {
        return Err(invalid(CMDLINE, "contains control characters"));
    }
    let initrd = get(INITRD).map(|v| rootfs_path(INITRD, v)).transpose()?;
    let block = get(BLOCK).map(|v| rootfs_path(BLOCK, v)).transpose()?;
    let block_mount_point = match get(BLK_MNT_POINT) {
        None => None,
        Some(v) => {
            if v.chars().any(char::is_control) {
                return Err(invalid(BLK_MNT_POINT, "contains control characters"));
            }
            if !v.starts_with('/') {
                return Err(invalid(
                    BLK_MNT_POINT,
                    format!("{:?} is not an absolute path", printable(v)),
                ));
            }
            if Path::new(v)
                .components()
                .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(invalid(BLK_MNT_POINT, "contains a `..` component"));
            }
            Some(PathBuf::from(v))
        }
    };
    let version_key = if get(VERSION).is_some() {
        VERSION
    } else {
        VERSION_ALT
    };
    let version = match get(version_key) {
        Some(v) if v.chars().any(char::is_control) => {
            return Err(invalid(version_key, "contains control characters"));
        }
        v => v.map(str::to_owned),
    };
    let mount_rootfs = get(MOUNT_ROOTFS)
        .map(|v| parse_bool(MOUNT_ROOTFS, v))
        .transpose()?;
    let use_dm_block = get(USE_DM_BLOCK)
        .map(|v| parse_bool(USE_DM_BLOCK, v))
        .transpose()?;
    Ok(UnikernelInfo {
        unikernel_type,
        hypervisor,
        binary,
        cmdline: cmdline.to_owned(),
        initrd,
        block,
        block_mount_point,
        version,
        mount_rootfs,
        use_dm_block,
        virtio: VirtioTransport::Pci,
        source,
    })
}

/// The keys urunc reads (without the prefix); CRI annotations are matched against these only.
const KNOWN: &[&str] = &[
    TYPE,
    HYPERVISOR,
    BINARY,
    CMDLINE,
    INITRD,
    BLOCK,
    BLK_MNT_POINT,
    VERSION,
    VERSION_ALT,
    MOUNT_ROOTFS,
    USE_DM_BLOCK,
];

/// The keys of enumerated or boolean values: they tell plain annotations from base64 ones.
const WITNESSES: &[&str] = &[TYPE, HYPERVISOR, MOUNT_ROOTFS, USE_DM_BLOCK];

/// urunc's known keys in a set of CRI annotations, with non-empty values, full key names
/// sorted. Unknown keys under the prefix and empty values are left out (empty: not set).
pub fn annotation_keys<'a>(
    annotations: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Vec<(&'a str, &'a str)> {
    let mut keys: Vec<(&str, &str)> = annotations
        .into_iter()
        .filter(|(k, v)| {
            !v.is_empty()
                && k.strip_prefix(KEY_PREFIX)
                    .is_some_and(|short| KNOWN.contains(&short))
        })
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    keys.sort_unstable();
    keys
}

/// A unikernel image's description with urunc's keys from one set of CRI annotations (a pod's
/// or a container's) put over it, key by key, validated as the image's own are: a path stays
/// inside the image's rootfs, a bad value is `InvalidUnikernel` naming the key. Unknown keys
/// and empty values are ignored. Values are plain text, or all base64 as urunc writes them in
/// a bundle's annotations: the set is decoded when its enumerated keys (`unikernelType`,
/// `hypervisor`, `mountRootfs`, `useDMBlock`) are invalid as written but valid decoded; a set
/// without any of them is read as plain text.
pub fn with_annotations<'a>(
    info: &UnikernelInfo,
    annotations: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<UnikernelInfo, ImageError> {
    let given: HashMap<&str, &str> = annotation_keys(annotations)
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(KEY_PREFIX)?, v)))
        .collect();
    if given.is_empty() {
        return Ok(info.clone());
    }
    let given = plain_or_decoded(&given);
    let mut values: HashMap<&str, String> = image_values(info);
    for (k, v) in &given {
        // `version` is urunc's older spelling of `unikernelVersion`.
        let k = if *k == VERSION_ALT { VERSION } else { *k };
        values.insert(k, v.clone());
    }
    if let Some(v) = given.get(VERSION) {
        values.insert(VERSION, v.clone());
    }
    let refs = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // The transport is the image's own (crid's key, not urunc's).
    let mut tuned = build(&refs, info.source)?;
    tuned.virtio = info.virtio;
    Ok(tuned)
}

/// The values as written, or all decoded from base64 (see [`with_annotations`]).
fn plain_or_decoded<'a>(values: &HashMap<&'a str, &str>) -> HashMap<&'a str, String> {
    let plain = || values.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    let witnesses_ok = |get: &dyn Fn(&str) -> Option<String>| {
        WITNESSES.iter().all(|w| match get(w) {
            None => true,
            Some(v) => match *w {
                TYPE => UnikernelType::parse(&v).is_some(),
                HYPERVISOR => HypervisorKind::parse(&v).is_some(),
                _ => parse_bool(w, &v).is_ok(),
            },
        })
    };
    let has_witness = WITNESSES.iter().any(|w| values.contains_key(w));
    if !has_witness || witnesses_ok(&|k| values.get(k).map(|v| (*v).to_owned())) {
        return plain();
    }
    match decode_all(values) {
        Some(decoded) if witnesses_ok(&|k| decoded.get(k).cloned()) => decoded,
        _ => plain(),
    }
}

/// An image's description as urunc's values, for [`with_annotations`] to put keys over.
fn image_values(info: &UnikernelInfo) -> HashMap<&'static str, String> {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let mut v = HashMap::from([
        (TYPE, info.unikernel_type.as_str().to_owned()),
        (HYPERVISOR, info.hypervisor.as_str().to_owned()),
        (BINARY, path(&info.binary)),
        (CMDLINE, info.cmdline.clone()),
    ]);
    let optional = [
        (INITRD, info.initrd.as_deref().map(path)),
        (BLOCK, info.block.as_deref().map(path)),
        (BLK_MNT_POINT, info.block_mount_point.as_deref().map(path)),
        (VERSION, info.version.clone()),
        (MOUNT_ROOTFS, info.mount_rootfs.map(|b| b.to_string())),
        (USE_DM_BLOCK, info.use_dm_block.map(|b| b.to_string())),
    ];
    for (k, value) in optional {
        if let Some(value) = value {
            v.insert(k, value);
        }
    }
    v
}

/// A boolean as urunc reads one (Go's `strconv.ParseBool`).
fn parse_bool(key: &str, v: &str) -> Result<bool, ImageError> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(invalid(
            key,
            format!("{:?} is not a boolean (true or false)", printable(v)),
        )),
    }
}

/// A value shown in an error message: control characters escaped, at most 100 characters.
fn printable(v: &str) -> String {
    v.chars().take(100).collect()
}

/// A path inside the rootfs: leading `/` stripped, no `..`, no control characters.
fn rootfs_path(key: &str, v: &str) -> Result<PathBuf, ImageError> {
    if v.chars().any(char::is_control) {
        return Err(invalid(key, "contains control characters"));
    }
    let mut out = PathBuf::new();
    for c in v.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(invalid(
                    key,
                    format!("path {:?} contains `..`", printable(v)),
                ));
            }
            c => out.push(c),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(invalid(key, "path names no file"));
    }
    Ok(out)
}

/// The bytes of `urunc.json` as the merged rootfs shows it: from the top-most layer that has
/// it, unless a higher layer whites it out or has an opaque root.
fn find_urunc_json(layers_bottom_first: &[PathBuf]) -> Result<Option<Vec<u8>>, ImageError> {
    for layer in layers_bottom_first.iter().rev() {
        let st = match rustix::fs::lstat(layer.join(URUNC_JSON)) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => {
                if crate::unpack::is_opaque(layer) {
                    return Ok(None);
                }
                continue;
            }
            Err(e) => return Err(ImageError::io(layer.join(URUNC_JSON), e.into())),
        };
        return match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => read_bounded(&layer.join(URUNC_JSON)).map(Some),
            // A whiteout: deleted in this layer.
            FileType::CharacterDevice if st.st_rdev == 0 => Ok(None),
            FileType::Symlink => Err(invalid(URUNC_JSON, "is a symlink")),
            _ => Err(invalid(URUNC_JSON, "is not a regular file")),
        };
    }
    Ok(None)
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, ImageError> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| ImageError::io(path, e.into()))?;
    let file = std::fs::File::from(fd);
    let mut out = Vec::new();
    file.take(MAX_URUNC_JSON + 1)
        .read_to_end(&mut out)
        .map_err(|e| ImageError::io(path, e))?;
    if out.len() as u64 > MAX_URUNC_JSON {
        return Err(invalid(
            URUNC_JSON,
            format!("larger than {MAX_URUNC_JSON} bytes"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use std::collections::BTreeMap;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn keys(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{KEY_PREFIX}{k}"), (*v).to_owned()))
            .collect()
    }

    const GOOD: &[(&str, &str)] = &[
        ("unikernelType", "unikraft"),
        ("hypervisor", "qemu"),
        ("binary", "/unikernel/kernel"),
        ("cmdline", "app -- --port 8080"),
        ("initrd", "/unikernel/initrd"),
        ("unikernelVersion", "0.17.0"),
    ];

    fn expected(source: UnikernelSource) -> UnikernelInfo {
        UnikernelInfo {
            unikernel_type: UnikernelType::Unikraft,
            hypervisor: HypervisorKind::Qemu,
            binary: PathBuf::from("unikernel/kernel"),
            cmdline: "app -- --port 8080".into(),
            initrd: Some(PathBuf::from("unikernel/initrd")),
            block: None,
            block_mount_point: None,
            mount_rootfs: None,
            use_dm_block: None,
            version: Some("0.17.0".into()),
            virtio: VirtioTransport::Pci,
            source,
        }
    }

    #[test]
    fn plain_and_base64_annotations_agree() {
        let plain = keys(GOOD);
        let encoded: Vec<(String, String)> = GOOD
            .iter()
            .map(|(k, v)| ((*k).to_owned(), b64(v)))
            .collect();
        let encoded: Vec<(&str, &str)> = encoded
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let src = UnikernelSource::ManifestAnnotations;
        assert_eq!(from_keys(&plain, src).unwrap(), Some(expected(src)));
        assert_eq!(
            from_keys(&keys(&encoded), src).unwrap(),
            Some(expected(src))
        );
    }

    #[test]
    fn plain_free_text_that_looks_like_base64_stays_plain() {
        // "aGk=" is base64 of "hi", but the type witness says the source is plain.
        let mut pairs = GOOD.to_vec();
        pairs.retain(|(k, _)| *k != "cmdline");
        pairs.push(("cmdline", "aGk="));
        let info = from_keys(&keys(&pairs), UnikernelSource::ConfigLabels)
            .unwrap()
            .unwrap();
        assert_eq!(info.cmdline, "aGk=");
    }

    #[test]
    fn no_keys_is_not_a_unikernel() {
        let mut m = HashMap::new();
        m.insert("org.opencontainers.image.title".to_owned(), "x".to_owned());
        assert_eq!(detect(&m, &m, &[]).unwrap(), None);
    }

    #[rstest]
    #[case::unknown_type(&[("unikernelType", "windows"), ("binary", "k")], "unikernelType")]
    #[case::missing_type(&[("hypervisor", "qemu"), ("binary", "k")], "unikernelType")]
    #[case::unknown_hypervisor(&[("unikernelType", "linux"), ("hypervisor", "vbox"), ("binary", "k")], "hypervisor")]
    #[case::missing_binary(&[("unikernelType", "linux")], "binary")]
    #[case::binary_dotdot(&[("unikernelType", "linux"), ("binary", "../../etc/passwd")], "binary")]
    #[case::binary_abs_dotdot(&[("unikernelType", "linux"), ("binary", "/boot/../../x")], "binary")]
    #[case::binary_root(&[("unikernelType", "linux"), ("binary", "/")], "binary")]
    #[case::initrd_dotdot(&[("unikernelType", "linux"), ("binary", "k"), ("initrd", "a/../../i")], "initrd")]
    #[case::block_dotdot(&[("unikernelType", "linux"), ("binary", "k"), ("block", "..")], "block")]
    #[case::cmdline_newline(&[("unikernelType", "linux"), ("binary", "k"), ("cmdline", "a\ninit=/bin/sh")], "cmdline")]
    #[case::cmdline_nul(&[("unikernelType", "linux"), ("binary", "k"), ("cmdline", "a\0b")], "cmdline")]
    #[case::binary_control(&[("unikernelType", "linux"), ("binary", "k\u{1b}[2J")], "binary")]
    #[case::mount_rootfs_maybe(&[("unikernelType", "linux"), ("binary", "k"), ("mountRootfs", "maybe")], "mountRootfs")]
    #[case::use_dm_block_yes(&[("unikernelType", "linux"), ("binary", "k"), ("useDMBlock", "yes")], "useDMBlock")]
    #[case::blk_mnt_relative(&[("unikernelType", "rumprun"), ("binary", "k"), ("blkMntPoint", "data")], "blkMntPoint")]
    #[case::blk_mnt_dotdot(&[("unikernelType", "rumprun"), ("binary", "k"), ("blkMntPoint", "/data/../..")], "blkMntPoint")]
    #[case::version_control(&[("unikernelType", "unikraft"), ("binary", "k"), ("unikernelVersion", "0.17\n")], "unikernelVersion")]
    fn invalid_keys_are_named(#[case] pairs: &[(&str, &str)], #[case] bad: &str) {
        for encode in [false, true] {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        if encode { b64(v) } else { (*v).to_owned() },
                    )
                })
                .collect();
            let refs: Vec<(&str, &str)> = pairs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let err = detect(&keys(&refs), &HashMap::new(), &[]).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
            match &err {
                ImageError::InvalidUnikernel { key, .. } => {
                    assert_eq!(key, &format!("{KEY_PREFIX}{bad}"), "{err}")
                }
                other => panic!("unexpected {other:?}"),
            }
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn rootfs_switches_are_recorded_and_unknown_keys_ignored() {
        for encode in [false, true] {
            let pairs = [
                ("unikernelType", "linux"),
                ("binary", "/boot/vmlinuz"),
                ("block", "/rootfs.ext4"),
                ("blkMntPoint", "/"),
                ("mountRootfs", "True"),
                ("useDMBlock", "0"),
                ("unikernelVersion", "6.1"),
                ("someFutureKey", "anything at all"),
            ];
            let m: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| {
                    let v = if encode { b64(v) } else { (*v).to_owned() };
                    (format!("{KEY_PREFIX}{k}"), v)
                })
                .collect();
            let info = from_keys(&m, UnikernelSource::ManifestAnnotations)
                .unwrap()
                .unwrap();
            assert_eq!(info.mount_rootfs, Some(true));
            assert_eq!(info.use_dm_block, Some(false));
            assert_eq!(info.block_mount_point, Some(PathBuf::from("/")));
            assert_eq!(info.version.as_deref(), Some("6.1"));
        }
        let info = from_urunc_json(&urunc_json(&[
            ("unikernelType", "linux"),
            ("binary", "k"),
            ("mountRootfs", "false"),
        ]))
        .unwrap();
        assert_eq!(info.mount_rootfs, Some(false));
        assert_eq!(info.use_dm_block, None);
    }

    #[test]
    fn annotations_over_an_image_keep_what_they_do_not_set() {
        let mut image = expected(UnikernelSource::UruncJson);
        image.block = Some("disk.img".into());
        image.block_mount_point = Some("/data".into());
        image.mount_rootfs = Some(true);
        // Restating a value changes nothing: the image's values read back as they were.
        let same: BTreeMap<String, String> =
            [(format!("{KEY_PREFIX}unikernelType"), "unikraft".to_owned())]
                .into_iter()
                .collect();
        assert_eq!(with_annotations(&image, &same).unwrap(), image);
        // `version` is the older spelling; `unikernelVersion` wins when both are given.
        let alt: BTreeMap<String, String> = [(format!("{KEY_PREFIX}version"), "0.15.0".to_owned())]
            .into_iter()
            .collect();
        let got = with_annotations(&image, &alt).unwrap();
        assert_eq!(got.version.as_deref(), Some("0.15.0"));
        let mut both = alt.clone();
        both.insert(format!("{KEY_PREFIX}unikernelVersion"), "0.16.1".into());
        let got = with_annotations(&image, &both).unwrap();
        assert_eq!(got.version.as_deref(), Some("0.16.1"));
        assert_eq!(got.block, image.block);
        assert_eq!(got.source, UnikernelSource::UruncJson);
    }

    #[test]
    fn metadata_of_older_versions_still_reads() {
        let mut v = serde_json::to_value(expected(UnikernelSource::UruncJson)).unwrap();
        let obj = v.as_object_mut().unwrap();
        obj.remove("mount_rootfs");
        obj.remove("use_dm_block");
        obj.remove("virtio");
        let info: UnikernelInfo = serde_json::from_value(v).unwrap();
        assert_eq!(info, expected(UnikernelSource::UruncJson));
    }

    #[test]
    fn virtio_transport_is_crids_own_key_from_annotations_or_labels() {
        let none = HashMap::new();
        let mmio: HashMap<String, String> = [(VIRTIO_KEY.to_owned(), "mmio".to_owned())].into();
        let pci: HashMap<String, String> = [(VIRTIO_KEY.to_owned(), "pci".to_owned())].into();
        let ann = keys(GOOD);
        // Missing: pci.
        assert_eq!(
            detect(&ann, &none, &[]).unwrap().unwrap().virtio,
            VirtioTransport::Pci
        );
        // A label counts whichever source held urunc's keys; an annotation wins over it.
        let mut ann_mmio = ann.clone();
        ann_mmio.extend(mmio.clone());
        assert_eq!(
            detect(&ann_mmio, &none, &[]).unwrap().unwrap().virtio,
            VirtioTransport::Mmio
        );
        assert_eq!(
            detect(&ann, &mmio, &[]).unwrap().unwrap().virtio,
            VirtioTransport::Mmio
        );
        let mut ann_pci = ann.clone();
        ann_pci.extend(pci);
        assert_eq!(
            detect(&ann_pci, &mmio, &[]).unwrap().unwrap().virtio,
            VirtioTransport::Pci
        );
        // Alone it makes no unikernel image.
        assert_eq!(detect(&mmio, &none, &[]).unwrap(), None);
        // A bad value names the key.
        let bad: HashMap<String, String> = [(VIRTIO_KEY.to_owned(), "ccw".to_owned())].into();
        let err = detect(&ann, &bad, &[]).unwrap_err();
        assert!(
            matches!(&err, ImageError::InvalidUnikernel { key, .. } if key == VIRTIO_KEY),
            "{err}"
        );
        // urunc's keys given as annotations keep the image's transport.
        let mut image = expected(UnikernelSource::ConfigLabels);
        image.virtio = VirtioTransport::Mmio;
        let tune: BTreeMap<String, String> =
            [(format!("{KEY_PREFIX}cmdline"), "other".to_owned())].into();
        assert_eq!(
            with_annotations(&image, &tune).unwrap().virtio,
            VirtioTransport::Mmio
        );
    }

    #[rstest]
    #[case("qemu", HypervisorKind::Qemu)]
    #[case("firecracker", HypervisorKind::Firecracker)]
    #[case("clh", HypervisorKind::CloudHypervisor)]
    #[case("cloud-hypervisor", HypervisorKind::CloudHypervisor)]
    #[case("hvt", HypervisorKind::Hvt)]
    #[case("spt", HypervisorKind::Spt)]
    #[case("crid", HypervisorKind::Crid)]
    fn hypervisors(#[case] name: &str, #[case] want: HypervisorKind) {
        let m = keys(&[
            ("unikernelType", "mirage"),
            ("hypervisor", name),
            ("binary", "k"),
        ]);
        let info = from_keys(&m, UnikernelSource::ConfigLabels)
            .unwrap()
            .unwrap();
        assert_eq!(info.hypervisor, want);
        assert_eq!(HypervisorKind::parse(want.as_str()), Some(want));
    }

    fn urunc_json(pairs: &[(&str, &str)]) -> Vec<u8> {
        let obj: serde_json::Map<String, serde_json::Value> = pairs
            .iter()
            .map(|(k, v)| {
                (
                    format!("{KEY_PREFIX}{k}"),
                    serde_json::Value::String(b64(v)),
                )
            })
            .collect();
        serde_json::to_vec(&obj).unwrap()
    }

    #[test]
    fn annotations_win_over_labels_and_urunc_json() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(URUNC_JSON),
            urunc_json(&[("unikernelType", "rumprun"), ("binary", "j")]),
        )
        .unwrap();
        let layers = [dir.path().to_owned()];
        let ann = keys(GOOD);
        let labels = keys(&[("unikernelType", "linux"), ("binary", "l")]);
        let none = HashMap::new();
        let got = detect(&ann, &labels, &layers).unwrap().unwrap();
        assert_eq!(got.source, UnikernelSource::ManifestAnnotations);
        let got = detect(&none, &labels, &layers).unwrap().unwrap();
        assert_eq!(got.source, UnikernelSource::ConfigLabels);
        assert_eq!(got.binary, PathBuf::from("l"));
        let got = detect(&none, &none, &layers).unwrap().unwrap();
        assert_eq!(got.source, UnikernelSource::UruncJson);
        assert_eq!(got.unikernel_type, UnikernelType::Rumprun);
        assert_eq!(got.binary, PathBuf::from("j"));
    }

    #[test]
    fn urunc_json_from_the_top_most_layer_respecting_whiteouts() {
        let tmp = tempfile::tempdir().unwrap();
        let l: Vec<PathBuf> = (0..4).map(|i| tmp.path().join(format!("l{i}"))).collect();
        for d in &l {
            std::fs::create_dir(d).unwrap();
        }
        let none = HashMap::new();
        std::fs::write(
            l[0].join(URUNC_JSON),
            urunc_json(&[("unikernelType", "linux"), ("binary", "bottom")]),
        )
        .unwrap();
        std::fs::write(
            l[1].join(URUNC_JSON),
            urunc_json(&[("unikernelType", "linux"), ("binary", "middle")]),
        )
        .unwrap();
        let got = detect(&none, &none, &l).unwrap().unwrap();
        assert_eq!(got.binary, PathBuf::from("middle"));
        // A whiteout in a higher layer deletes it.
        if rustix::fs::mknodat(
            rustix::fs::CWD,
            l[2].join(URUNC_JSON),
            FileType::CharacterDevice,
            Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .is_ok()
        {
            assert_eq!(detect(&none, &none, &l).unwrap(), None);
            std::fs::remove_file(l[2].join(URUNC_JSON)).unwrap();
        }
        // A symlink is refused, never followed.
        std::os::unix::fs::symlink(l[0].join(URUNC_JSON), l[3].join(URUNC_JSON)).unwrap();
        let err = detect(&none, &none, &l).unwrap_err();
        assert!(matches!(err, ImageError::InvalidUnikernel { ref key, .. } if key == URUNC_JSON));
    }

    /// Arbitrary values never panic; whatever is accepted satisfies the documented rules.
    #[test]
    fn arbitrary_values_never_panic() {
        let alphabet: Vec<char> = "ab/.\\\n\u{0}\u{7f}=+ linuxqemu9\u{e9}".chars().collect();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let keys_all = [
            "unikernelType",
            "hypervisor",
            "binary",
            "cmdline",
            "initrd",
            "block",
            "blkMntPoint",
        ];
        for _ in 0..2000 {
            let mut m = HashMap::new();
            for k in keys_all {
                if next() % 3 == 0 {
                    continue;
                }
                let len = (next() % 12) as usize;
                let v: String = (0..len)
                    .map(|_| alphabet[(next() as usize) % alphabet.len()])
                    .collect();
                let v = if next() % 4 == 0 { b64(&v) } else { v };
                m.insert(format!("{KEY_PREFIX}{k}"), v);
            }
            if let Ok(Some(info)) = from_keys(&m, UnikernelSource::ConfigLabels) {
                for p in [
                    Some(&info.binary),
                    info.initrd.as_ref(),
                    info.block.as_ref(),
                ]
                .into_iter()
                .flatten()
                {
                    assert!(p.is_relative(), "{p:?}");
                    assert!(!p.components().any(|c| c == std::path::Component::ParentDir));
                }
                assert!(!info.cmdline.chars().any(char::is_control));
            }
        }
    }

    #[rstest]
    #[case::not_json(b"{nope".to_vec(), URUNC_JSON)]
    #[case::not_base64(br#"{"com.urunc.unikernel.unikernelType":"linux!"}"#.to_vec(), "com.urunc.unikernel.unikernelType")]
    #[case::not_string(br#"{"com.urunc.unikernel.binary":1}"#.to_vec(), "com.urunc.unikernel.binary")]
    #[case::bad_path(urunc_json(&[("unikernelType", "linux"), ("binary", "../../etc/passwd")]), "com.urunc.unikernel.binary")]
    #[case::empty(b"{}".to_vec(), "com.urunc.unikernel.unikernelType")]
    fn bad_urunc_json(#[case] bytes: Vec<u8>, #[case] bad: &str) {
        match from_urunc_json(&bytes).unwrap_err() {
            ImageError::InvalidUnikernel { key, .. } => assert_eq!(key, bad),
            other => panic!("unexpected {other:?}"),
        }
    }
}
