//! The OCI documents an image is made of, parsed and bounded before anything is stored:
//! manifests and indexes (OCI and Docker schema 2), the choice of this host's platform in an
//! index, the walk through indexes down to that platform's manifest ([`IndexWalk`]), and the
//! image config's diff ids. Pulls and imports both read images through these.

use std::collections::HashMap;

use serde::Deserialize;

use crate::ImageError;
use crate::content::{digest_hex, sha256_of};

/// Manifests and indexes larger than this are refused.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Image configs larger than this are refused.
pub(crate) const MAX_CONFIG_BYTES: u64 = 8 << 20;
/// Indexes may point at indexes this deep, no deeper.
pub(crate) const MAX_INDEX_DEPTH: usize = 3;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The manifest and index media types a pull asks a registry for.
pub(crate) const ACCEPT: [&str; 4] = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];
const CONFIG_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// A content descriptor from a manifest or index.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    pub(crate) size: i64,
    #[serde(default)]
    pub(crate) platform: Option<Platform>,
    #[serde(default)]
    pub(crate) annotations: Option<HashMap<String, String>>,
}

impl Descriptor {
    pub(crate) fn size(&self) -> Result<u64, ImageError> {
        u64::try_from(self.size).map_err(|_| ImageError::InvalidDigest {
            digest: self.digest.clone(),
            reason: format!("negative size {}", self.size),
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub(crate) struct Platform {
    #[serde(default)]
    pub(crate) architecture: String,
    #[serde(default)]
    pub(crate) os: String,
    #[serde(default)]
    pub(crate) variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    annotations: Option<HashMap<String, String>>,
}

/// A manifest or index, checked for shape.
#[derive(Debug)]
pub(crate) enum Parsed {
    Index(Vec<Descriptor>),
    Manifest {
        config: Box<Descriptor>,
        layers: Vec<Descriptor>,
        annotations: HashMap<String, String>,
    },
}

/// Parses a manifest or index of at most [`MAX_MANIFEST_BYTES`].
pub(crate) fn parse_manifest(bytes: &[u8], reference: &str) -> Result<Parsed, ImageError> {
    let bad = |reason: String| ImageError::InvalidManifest {
        reference: reference.to_owned(),
        reason,
    };
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(bad(format!(
            "{} bytes is larger than the {MAX_MANIFEST_BYTES} byte limit",
            bytes.len()
        )));
    }
    let doc: ManifestDoc = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if doc.schema_version != Some(2) {
        return Err(bad(format!(
            "schema version {:?} is not supported (only 2)",
            doc.schema_version
        )));
    }
    let mt = doc.media_type.as_deref().unwrap_or("");
    let is_index = match mt {
        OCI_INDEX | DOCKER_LIST => true,
        OCI_MANIFEST | DOCKER_MANIFEST => false,
        "" => doc.manifests.is_some() && doc.config.is_none(),
        other => return Err(bad(format!("unsupported media type {other:?}"))),
    };
    let check = |d: &Descriptor| -> Result<(), ImageError> {
        digest_hex(&d.digest)?;
        d.size()?;
        Ok(())
    };
    if is_index {
        let entries = doc
            .manifests
            .ok_or_else(|| bad("index without manifests".into()))?;
        for e in &entries {
            check(e)?;
        }
        return Ok(Parsed::Index(entries));
    }
    let config = doc
        .config
        .ok_or_else(|| bad("manifest without config".into()))?;
    check(&config)?;
    if !config.media_type.is_empty() && !CONFIG_TYPES.contains(&config.media_type.as_str()) {
        return Err(bad(format!(
            "config media type {:?} is not a container image",
            config.media_type
        )));
    }
    let layers = doc.layers.unwrap_or_default();
    for l in &layers {
        check(l)?;
        if !l.media_type.contains("tar") {
            return Err(bad(format!(
                "layer {} has unsupported media type {:?}",
                l.digest, l.media_type
            )));
        }
    }
    Ok(Parsed::Manifest {
        config: Box::new(config),
        layers,
        annotations: doc.annotations.unwrap_or_default(),
    })
}

/// The platform of this host in OCI terms.
pub(crate) fn host_platform() -> Platform {
    let (architecture, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => ("arm", Some("v7")),
        "x86" => ("386", None),
        "powerpc64" => ("ppc64le", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        other => (other, None),
    };
    Platform {
        architecture: architecture.to_owned(),
        os: std::env::consts::OS.to_owned(),
        variant: variant.map(str::to_owned),
    }
}

/// Picks the index entry for `want`: same os and architecture, preferring the same variant,
/// then an entry without variant; attestation manifests are skipped.
pub(crate) fn select_platform<'a>(
    entries: &'a [Descriptor],
    want: &Platform,
) -> Option<&'a Descriptor> {
    let candidates: Vec<&Descriptor> = entries
        .iter()
        .filter(|e| {
            let attestation = e
                .annotations
                .as_ref()
                .and_then(|a| a.get("vnd.docker.reference.type"))
                .is_some_and(|t| t == "attestation-manifest");
            !attestation
                && e.platform
                    .as_ref()
                    .is_some_and(|p| p.os == want.os && p.architecture == want.architecture)
        })
        .collect();
    let variant_of = |e: &Descriptor| e.platform.as_ref().and_then(|p| p.variant.clone());
    candidates
        .iter()
        .find(|e| want.variant.is_some() && variant_of(e) == want.variant)
        .or_else(|| candidates.iter().find(|e| variant_of(e).is_none()))
        .or_else(|| candidates.first())
        .copied()
}

/// The walk from an image's top manifest down through its indexes to this host's image
/// manifest, the one pulls and imports both make, so that both check the same: each document
/// is the one its descriptor names (its digest, and below the top its size, as the index gave
/// them), indexes nest at most [`MAX_INDEX_DEPTH`] deep and never name a document the walk
/// passed, the document an index names is at most [`MAX_MANIFEST_BYTES`] (checked before it is
/// fetched), and the image's config at most [`MAX_CONFIG_BYTES`]. The caller fetches (from a
/// registry or the content store) what [`IndexWalk::next`] asks for.
pub(crate) struct IndexWalk {
    /// What errors name: the image's reference, or its top digest.
    reference: String,
    platform: Platform,
    /// The digest and size of the document expected next (a pull by tag knows neither of
    /// its top).
    expected: (Option<String>, Option<u64>),
    /// The documents walked, top first.
    digests: Vec<String>,
}

/// What an [`IndexWalk`] needs next.
#[derive(Debug)]
pub(crate) enum Step {
    /// The document this index entry names, to be fetched and handed to [`IndexWalk::next`].
    Fetch(Descriptor),
    /// This host's image manifest: the walk is over.
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
        annotations: HashMap<String, String>,
    },
}

impl IndexWalk {
    /// A walk of `reference` from its top document, of `digest` and `size` when known.
    pub(crate) fn new(reference: &str, digest: Option<&str>, size: Option<u64>) -> IndexWalk {
        IndexWalk {
            reference: reference.to_owned(),
            platform: host_platform(),
            expected: (digest.map(str::to_owned), size),
            digests: Vec::new(),
        }
    }

    /// Checks the document just fetched against what was expected and reads it: the image
    /// manifest ends the walk, an index names the document to fetch next.
    pub(crate) fn next(&mut self, bytes: &[u8]) -> Result<Step, ImageError> {
        let bad = |reason: String| ImageError::InvalidManifest {
            reference: self.reference.clone(),
            reason,
        };
        // The digest is always computed from the bytes, never taken from a header.
        let digest = sha256_of(bytes);
        if self.expected.0.as_ref().is_some_and(|want| *want != digest) {
            return Err(self.mismatch(digest));
        }
        if let Some(size) = self.expected.1.filter(|s| *s != bytes.len() as u64) {
            return Err(ImageError::SizeMismatch {
                digest,
                expected: size,
                actual: bytes.len() as u64,
            });
        }
        self.digests.push(digest);
        match parse_manifest(bytes, &self.reference)? {
            Parsed::Manifest {
                config,
                layers,
                annotations,
            } => {
                if config.size()? > MAX_CONFIG_BYTES {
                    return Err(ImageError::InvalidConfig {
                        digest: config.digest.clone(),
                        reason: format!("larger than {MAX_CONFIG_BYTES} bytes"),
                    });
                }
                Ok(Step::Image {
                    config: *config,
                    layers,
                    annotations,
                })
            }
            Parsed::Index(entries) => {
                if self.digests.len() > MAX_INDEX_DEPTH {
                    return Err(bad(format!("indexes nested deeper than {MAX_INDEX_DEPTH}")));
                }
                let entry = select_platform(&entries, &self.platform)
                    .ok_or_else(|| ImageError::NoMatchingPlatform {
                        reference: self.reference.clone(),
                        platform: self.platform.to_string(),
                    })?
                    .clone();
                if self.digests.contains(&entry.digest) {
                    return Err(bad(format!("index references itself ({})", entry.digest)));
                }
                let size = entry.size()?;
                if size > MAX_MANIFEST_BYTES as u64 {
                    return Err(bad(format!(
                        "{} is {size} bytes, larger than the {MAX_MANIFEST_BYTES} byte limit",
                        entry.digest
                    )));
                }
                self.expected = (Some(entry.digest.clone()), Some(size));
                Ok(Step::Fetch(entry))
            }
        }
    }

    /// The error for a document that is not the one expected, `actual` by its digest: one the
    /// walk passed (a registry answering an index's entry with that index) is a cycle.
    pub(crate) fn mismatch(&self, actual: String) -> ImageError {
        if self.digests.contains(&actual) {
            return ImageError::InvalidManifest {
                reference: self.reference.clone(),
                reason: format!("index references itself ({actual})"),
            };
        }
        ImageError::DigestMismatch {
            expected: self.expected.0.clone().unwrap_or_default(),
            actual,
        }
    }

    /// The documents walked so far, top first; the last is the one [`IndexWalk::next`] took.
    pub(crate) fn digests(&self) -> &[String] {
        &self.digests
    }
}

/// The parts of an image config the store reads. Its platform fields are [`Platform`]'s
/// written out, not `#[serde(flatten)]`: flatten buffers every other field of the config
/// (`history` and all) as values, refusing what skipping them accepts (numbers beyond `f64`,
/// lone surrogate escapes), which images in use may carry.
#[derive(Debug, Deserialize)]
pub(crate) struct ConfigDoc {
    #[serde(default)]
    pub(crate) architecture: String,
    #[serde(default)]
    pub(crate) os: String,
    #[serde(default)]
    pub(crate) variant: Option<String>,
    #[serde(default)]
    pub(crate) config: Option<ContainerConfig>,
    pub(crate) rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ContainerConfig {
    #[serde(rename = "Labels", default)]
    pub(crate) labels: Option<HashMap<String, String>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RootFs {
    #[serde(default)]
    pub(crate) diff_ids: Vec<String>,
}

/// Checks an image config blob of an image with `layers` layers (one diff id each); returns it
/// as text with the parts the store reads.
pub(crate) fn parse_config(
    bytes: Vec<u8>,
    digest: &str,
    layers: usize,
) -> Result<(String, ConfigDoc), ImageError> {
    let bad = |reason: String| ImageError::InvalidConfig {
        digest: digest.to_owned(),
        reason,
    };
    let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8".into()))?;
    let doc: ConfigDoc = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if doc.rootfs.diff_ids.len() != layers {
        return Err(bad(format!(
            "{} diff ids for {} layers",
            doc.rootfs.diff_ids.len(),
            layers
        )));
    }
    for d in &doc.rootfs.diff_ids {
        digest_hex(d)?;
    }
    Ok((text, doc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn entry(n: u8, os: &str, arch: &str, variant: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: d(n),
            size: 10,
            platform: Some(Platform {
                architecture: arch.into(),
                os: os.into(),
                variant: variant.map(Into::into),
            }),
            annotations: None,
        }
    }

    #[test]
    fn platform_selection_prefers_exact_variant() {
        let amd64 = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        let entries = vec![
            entry(1, "linux", "arm64", Some("v8")),
            entry(2, "windows", "amd64", None),
            entry(3, "linux", "amd64", Some("v3")),
            entry(4, "linux", "amd64", None),
        ];
        assert_eq!(select_platform(&entries, &amd64).unwrap().digest, d(4));
        assert_eq!(select_platform(&entries[..3], &amd64).unwrap().digest, d(3));
        assert!(select_platform(&entries[..2], &amd64).is_none());
        let arm64 = Platform {
            architecture: "arm64".into(),
            os: "linux".into(),
            variant: Some("v8".into()),
        };
        assert_eq!(select_platform(&entries, &arm64).unwrap().digest, d(1));
        // Attestations are never images.
        let mut att = entry(5, "linux", "amd64", None);
        att.annotations = Some(HashMap::from([(
            "vnd.docker.reference.type".to_owned(),
            "attestation-manifest".to_owned(),
        )]));
        assert!(select_platform(&[att], &amd64).is_none());
        let host = host_platform();
        assert_eq!(host.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host.architecture, "amd64");
        }
    }

    #[test]
    fn manifests_are_parsed_and_bounded() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
            "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":5}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{}","size":7}}]}}"#,
            d(1),
            d(2)
        );
        match parse_manifest(m.as_bytes(), "x").unwrap() {
            Parsed::Manifest { config, layers, .. } => {
                assert_eq!(config.digest, d(1));
                assert_eq!(layers.len(), 1);
            }
            Parsed::Index(_) => panic!("not an index"),
        }
        let i = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":3,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            d(3)
        );
        assert!(matches!(
            parse_manifest(i.as_bytes(), "x").unwrap(),
            Parsed::Index(e) if e.len() == 1
        ));
        let bad = [
            r#"{"schemaVersion":1,"fsLayers":[]}"#.to_owned(),
            "not json".to_owned(),
            format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}"}}"#),
            r#"{"schemaVersion":2,"config":{"digest":"sha256:../../x","size":1},"layers":[]}"#
                .to_owned(),
            format!(
                r#"{{"schemaVersion":2,"config":{{"digest":"{}","size":-1}},"layers":[]}}"#,
                d(1)
            ),
            format!(
                r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.cncf.helm.config.v1+json","digest":"{}","size":1}},"layers":[]}}"#,
                d(1)
            ),
            format!(
                r#"{{"schemaVersion":2,"config":{{"digest":"{}","size":1}},"layers":[{{"mediaType":"application/wasm","digest":"{}","size":1}}]}}"#,
                d(1),
                d(2)
            ),
        ];
        for b in bad {
            let e = parse_manifest(b.as_bytes(), "x").unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{b}");
        }
        let huge = vec![b' '; MAX_MANIFEST_BYTES + 1];
        let e = parse_manifest(&huge, "x").unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    #[test]
    fn config_reads_its_platform_and_diff_ids_and_skips_the_rest() {
        let config = format!(
            r#"{{"architecture":"arm64","os":"linux","variant":"v8","config":{{"Labels":{{"a":"b"}}}},
                "rootfs":{{"type":"layers","diff_ids":["{}"]}},
                "history":[{{"created_by":"\ud800","size":1e400}}]}}"#,
            d(1)
        );
        let (text, doc) = parse_config(config.clone().into_bytes(), &d(9), 1).unwrap();
        assert_eq!(text, config);
        assert_eq!(
            (doc.os.as_str(), doc.architecture.as_str()),
            ("linux", "arm64")
        );
        assert_eq!(doc.variant.as_deref(), Some("v8"));
        let labels = doc.config.and_then(|c| c.labels).unwrap();
        assert_eq!(labels.get("a").map(String::as_str), Some("b"));
        assert_eq!(doc.rootfs.diff_ids, [d(1)]);
        // Absent platform fields are empty; a layer count other than the diff ids' is refused.
        let bare = format!(r#"{{"rootfs":{{"diff_ids":["{}"]}}}}"#, d(1));
        let (_, doc) = parse_config(bare.clone().into_bytes(), &d(9), 1).unwrap();
        assert_eq!(
            (doc.os, doc.architecture, doc.variant),
            (String::new(), String::new(), None)
        );
        assert!(parse_config(bare.into_bytes(), &d(9), 2).is_err());
    }

    fn json(v: serde_json::Value) -> Vec<u8> {
        v.to_string().into_bytes()
    }

    fn image_manifest(config_size: u64) -> Vec<u8> {
        json(serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": CONFIG_TYPES[0], "digest": d(1), "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d(2), "size": 3}],
        }))
    }

    /// An index naming `bytes` (of `size` bytes, if not its own) for this host.
    fn index_of(bytes: &[u8], size: Option<usize>) -> Vec<u8> {
        let host = host_platform();
        json(serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha256_of(bytes),
                "size": size.unwrap_or(bytes.len()),
                "platform": {"os": host.os, "architecture": host.architecture, "variant": host.variant}}],
        }))
    }

    #[test]
    fn a_walk_goes_through_indexes_to_the_image_and_records_them() {
        let manifest = image_manifest(10);
        let index = index_of(&manifest, None);
        let top = index_of(&index, None);
        let mut walk = IndexWalk::new("r", Some(&sha256_of(&top)), Some(top.len() as u64));
        assert!(matches!(walk.next(&top), Ok(Step::Fetch(e)) if e.digest == sha256_of(&index)));
        assert!(matches!(walk.next(&index), Ok(Step::Fetch(_))));
        assert!(
            matches!(walk.next(&manifest), Ok(Step::Image { layers, .. }) if layers.len() == 1)
        );
        assert_eq!(
            walk.digests(),
            [sha256_of(&top), sha256_of(&index), sha256_of(&manifest)]
        );
        // A pull by tag knows nothing of its top.
        let mut walk = IndexWalk::new("r", None, None);
        assert!(matches!(walk.next(&manifest), Ok(Step::Image { .. })));
    }

    #[test]
    fn a_walk_refuses_what_its_descriptor_does_not_name() {
        let manifest = image_manifest(10);
        // The top's digest or size is not the one named.
        let mut walk = IndexWalk::new("r", Some(&d(9)), None);
        let e = walk.next(&manifest).unwrap_err();
        assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
        let mut walk = IndexWalk::new("r", Some(&sha256_of(&manifest)), Some(1));
        let e = walk.next(&manifest).unwrap_err();
        assert!(
            matches!(e, ImageError::SizeMismatch { expected: 1, .. }),
            "{e}"
        );
        // An index entry's size lies.
        let lying = index_of(&manifest, Some(manifest.len() + 1));
        let mut walk = IndexWalk::new("r", None, None);
        walk.next(&lying).unwrap();
        let e = walk.next(&manifest).unwrap_err();
        assert!(matches!(e, ImageError::SizeMismatch { .. }), "{e}");
        // Answered with the index itself: a cycle, not a mismatch.
        let index = index_of(&manifest, None);
        let mut walk = IndexWalk::new("r", None, None);
        walk.next(&index).unwrap();
        let e = walk.next(&index).unwrap_err();
        assert!(e.to_string().contains("references itself"), "{e}");
        let e = walk.mismatch(sha256_of(&index));
        assert!(e.to_string().contains("references itself"), "{e}");
        assert!(matches!(
            walk.mismatch(d(9)),
            ImageError::DigestMismatch { .. }
        ));
    }

    #[test]
    fn a_walk_bounds_depth_sizes_and_platforms() {
        // Indexes nested one deeper than allowed.
        let mut docs = vec![image_manifest(10)];
        for _ in 0..=MAX_INDEX_DEPTH {
            let next = index_of(docs.last().unwrap(), None);
            docs.push(next);
        }
        let mut walk = IndexWalk::new("r", None, None);
        let mut result = Ok(());
        for doc in docs.iter().rev() {
            result = walk.next(doc).map(drop);
            if result.is_err() {
                break;
            }
        }
        let e = result.unwrap_err();
        assert!(e.to_string().contains("nested deeper"), "{e}");
        assert_eq!(walk.digests().len(), MAX_INDEX_DEPTH + 1);
        // A document larger than the limit is refused before it is fetched.
        let huge = index_of(&image_manifest(10), Some(MAX_MANIFEST_BYTES + 1));
        let e = IndexWalk::new("r", None, None).next(&huge).unwrap_err();
        assert!(e.to_string().contains("byte limit"), "{e}");
        // So is a config larger than its limit.
        let e = IndexWalk::new("r", None, None)
            .next(&image_manifest(MAX_CONFIG_BYTES + 1))
            .unwrap_err();
        assert!(matches!(e, ImageError::InvalidConfig { .. }), "{e}");
        // No entry for this host.
        let other = json(serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": d(3), "size": 10,
                "platform": {"os": "plan9", "architecture": "mips"}}],
        }));
        let e = IndexWalk::new("r", None, None).next(&other).unwrap_err();
        assert!(matches!(e, ImageError::NoMatchingPlatform { .. }), "{e}");
    }
}
