//! Importing image tarballs for air-gapped nodes: an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/`) or a `docker save` archive (`manifest.json`), optionally gzipped.
//!
//! The tar is read once: every regular file goes straight into the content store (its digest
//! computed on the way; files under `blobs/sha256/` must match their name), small JSON
//! documents are kept in memory. Nothing from the archive is written under its own name, so an
//! archive cannot place files anywhere.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::manifest::{Descriptor, IndexWalk, MAX_MANIFEST_BYTES, Parsed, Step, parse_manifest};
use crate::pull::Resolved;
use crate::reference::ImageRef;
use crate::{Image, ImageError, ImageStore};

/// JSON documents kept in memory are at most this large.
const MAX_JSON: u64 = 8 << 20;
/// Entries in one archive, at most.
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct OciIndex {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// What one pass over the archive found.
#[derive(Default)]
struct Archive {
    /// name -> (digest, size) of files stored in the content store.
    blobs: HashMap<String, (String, u64)>,
    /// name -> content of small `.json` files and `oci-layout`.
    docs: HashMap<String, Vec<u8>>,
    /// name -> target name, for symlinks and hard links inside the archive.
    links: HashMap<String, String>,
}

impl Archive {
    fn resolve<'a>(&'a self, mut name: &'a str) -> &'a str {
        for _ in 0..8 {
            match self.links.get(name) {
                Some(t) => name = t,
                None => break,
            }
        }
        name
    }
}

/// Lexically normalizes an archive path; `None` when it is absolute or leaves the archive,
/// `""` for the archive root itself.
fn clean(path: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?.to_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

impl ImageStore {
    /// Imports every image in the tarball at `path` (OCI layout or `docker save`).
    pub fn import_tar(&self, path: &Path) -> Result<Vec<Image>, ImageError> {
        let bad = |reason: String| ImageError::Import {
            path: path.to_owned(),
            reason,
        };
        let mut guard = self.use_guard();
        let archive = self.read_archive(path, &mut guard)?;
        let resolved = if let Some(m) = archive.docs.get("manifest.json") {
            self.docker_images(&archive, m).map_err(|e| match e {
                ImageError::Import { reason, .. } => bad(reason),
                other => other,
            })?
        } else if let Some(i) = archive.docs.get("index.json") {
            self.oci_images(i)?
        } else {
            return Err(bad(
                "neither an OCI image layout (index.json) nor a docker save archive (manifest.json)"
                    .into(),
            ));
        };
        let content = self.inner.content.clone();
        let mut images = Vec::new();
        for res in resolved {
            let diff_ids = crate::pull::read_config(&content, &res)?.1.rootfs.diff_ids;
            guard.add_all(&diff_ids);
            for (layer, diff_id) in res.layers.iter().zip(&diff_ids) {
                crate::pull::unpack_into_store(&content, &layer.digest, diff_id, true)?;
            }
            images.push(self.finish(res, &mut guard)?);
        }
        Ok(images)
    }

    fn read_archive(
        &self,
        path: &Path,
        guard: &mut crate::store::UseGuard,
    ) -> Result<Archive, ImageError> {
        let bad = |reason: String| ImageError::Import {
            path: path.to_owned(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(|e| ImageError::io(path, e))?;
        let mut reader = BufReader::new(file);
        let gz = reader
            .fill_buf()
            .map_err(|e| ImageError::io(path, e))?
            .starts_with(&[0x1f, 0x8b]);
        let input: Box<dyn Read> = if gz {
            Box::new(flate2::read::MultiGzDecoder::new(reader))
        } else {
            Box::new(reader)
        };
        let mut tar = tar::Archive::new(input);
        let mut archive = Archive::default();
        let content = &self.inner.content;
        let entries = tar.entries().map_err(|e| bad(e.to_string()))?;
        for (n, entry) in entries.enumerate() {
            if n >= MAX_ENTRIES {
                return Err(bad(format!("more than {MAX_ENTRIES} entries")));
            }
            let mut entry = entry.map_err(|e| bad(format!("not a valid tar archive: {e}")))?;
            let raw = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
            let Some(name) = clean(&raw) else {
                return Err(bad(format!("entry {} leaves the archive", raw.display())));
            };
            if name.is_empty() {
                continue;
            }
            let kind = entry.header().entry_type();
            if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name()
                    .map_err(|e| bad(e.to_string()))?
                    .ok_or_else(|| bad(format!("link {name} without target")))?;
                let base = if kind.is_symlink() {
                    Path::new(&name)
                        .parent()
                        .unwrap_or(Path::new(""))
                        .join(&target)
                } else {
                    target.into_owned()
                };
                let Some(t) = clean(&base) else {
                    return Err(bad(format!("link {name} points outside the archive")));
                };
                archive.links.insert(name, t);
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let size = entry.header().size().unwrap_or(u64::MAX);
            let is_doc = (name.ends_with(".json") || name == "oci-layout") && size <= MAX_JSON;
            if is_doc {
                let mut buf = Vec::new();
                (&mut entry)
                    .take(MAX_JSON + 1)
                    .read_to_end(&mut buf)
                    .map_err(|e| ImageError::io(path, e))?;
                archive.docs.insert(name, buf);
                continue;
            }
            let expected = name
                .strip_prefix("blobs/sha256/")
                .map(|hex| format!("sha256:{hex}"));
            let (digest, size) = content.import_reader(&mut entry, path, expected.as_deref())?;
            guard.add(&digest);
            archive.blobs.insert(name, (digest, size));
        }
        Ok(archive)
    }

    /// The bytes of an archive member, wherever the first pass put it.
    fn member(&self, archive: &Archive, name: &str) -> Result<Vec<u8>, ImageError> {
        let name = archive.resolve(name);
        if let Some(b) = archive.docs.get(name) {
            return Ok(b.clone());
        }
        match archive.blobs.get(name) {
            Some((digest, _)) => self.inner.content.read_blob(digest, MAX_JSON),
            None => Err(ImageError::Import {
                path: PathBuf::from(name),
                reason: "missing from the archive".into(),
            }),
        }
    }

    fn docker_images(
        &self,
        archive: &Archive,
        manifest: &[u8],
    ) -> Result<Vec<Resolved>, ImageError> {
        let bad = |reason: String| ImageError::Import {
            path: PathBuf::from("manifest.json"),
            reason,
        };
        let entries: Vec<DockerEntry> =
            serde_json::from_slice(manifest).map_err(|e| bad(e.to_string()))?;
        let content = &self.inner.content;
        let mut out = Vec::new();
        for e in entries {
            let config = self.member(archive, &e.config)?;
            let config_digest = content.write_blob(&config, None)?;
            let mut layers = Vec::new();
            for l in &e.layers {
                let name = archive.resolve(l);
                let (digest, size) = archive
                    .blobs
                    .get(name)
                    .cloned()
                    .ok_or_else(|| bad(format!("layer {l} is missing from the archive")))?;
                layers.push(serde_json::json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest,
                    "size": size,
                }));
            }
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest,
                    "size": config.len(),
                },
                "layers": layers,
            });
            let bytes = serde_json::to_vec(&manifest).map_err(|e| bad(e.to_string()))?;
            let manifest_digest = content.write_blob(&bytes, None)?;
            let Parsed::Manifest {
                config,
                layers,
                annotations,
            } = parse_manifest(&bytes, &e.config)?
            else {
                return Err(bad("synthesized manifest is an index".into()));
            };
            let mut repo_tags = Vec::new();
            for t in e.repo_tags.unwrap_or_default() {
                let r = ImageRef::parse(&t)?;
                repo_tags.extend(r.tagged());
            }
            out.push(Resolved {
                repo_tags,
                repo_digests: Vec::new(),
                manifest_digests: vec![manifest_digest],
                config: *config,
                layers,
                annotations,
            });
        }
        Ok(out)
    }

    fn oci_images(&self, index: &[u8]) -> Result<Vec<Resolved>, ImageError> {
        let index: OciIndex = serde_json::from_slice(index).map_err(|e| ImageError::Import {
            path: PathBuf::from("index.json"),
            reason: e.to_string(),
        })?;
        let content = &self.inner.content;
        let mut out = Vec::new();
        for entry in index.manifests {
            let annotations = entry.annotations.clone().unwrap_or_default();
            let name = annotations
                .get("io.containerd.image.name")
                .or_else(|| {
                    annotations
                        .get("org.opencontainers.image.ref.name")
                        .filter(|n| n.contains('/') || n.contains(':'))
                })
                .map(|n| ImageRef::parse(n))
                .transpose()?;
            let top = entry.digest.clone();
            let reference = name
                .as_ref()
                .map_or_else(|| top.clone(), ToString::to_string);
            let mut walk = IndexWalk::new(&reference, Some(&top), Some(entry.size()?));
            let mut next = top.clone();
            let (config, layers, annotations) = loop {
                let bytes = content.read_blob(&next, MAX_MANIFEST_BYTES as u64)?;
                match walk.next(&bytes)? {
                    Step::Image {
                        config,
                        layers,
                        annotations,
                    } => break (config, layers, annotations),
                    Step::Fetch(entry) => next = entry.digest,
                }
            };
            for d in std::iter::once(&config).chain(&layers) {
                if !content.has_blob(&d.digest, d.size()?) {
                    return Err(ImageError::Import {
                        path: PathBuf::from(&d.digest),
                        reason: "blob missing from the archive".into(),
                    });
                }
            }
            out.push(Resolved {
                repo_tags: name.as_ref().and_then(|r| r.tagged()).into_iter().collect(),
                repo_digests: name
                    .as_ref()
                    .map(|r| r.digested(&top))
                    .into_iter()
                    .collect(),
                manifest_digests: walk.digests().to_vec(),
                config,
                layers,
                annotations,
            });
        }
        Ok(out)
    }

    /// Imports every `*.tar` / `*.tar.gz` in `dir` (start-up import for air-gapped nodes);
    /// imported files move to `dir/done/`, failures stay and are logged.
    pub fn import_directory(&self, dir: &Path) -> Vec<Image> {
        let mut images = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return images;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.ends_with(".tar") || n.ends_with(".tar.gz") || n.ends_with(".tgz")
                    })
            })
            .collect();
        files.sort();
        for f in files {
            match self.import_tar(&f) {
                Ok(imported) => {
                    tracing::info!(file = %f.display(), images = imported.len(), "imported image archive");
                    images.extend(imported);
                    let done = dir.join("done");
                    let moved = std::fs::create_dir_all(&done).and_then(|()| {
                        std::fs::rename(&f, done.join(f.file_name().unwrap_or_default()))
                    });
                    if let Err(e) = moved {
                        tracing::warn!(file = %f.display(), error = %e, "cannot move imported archive; deleting it");
                        let _ = std::fs::remove_file(&f);
                    }
                }
                Err(e) => {
                    tracing::error!(file = %f.display(), error = %e, "image archive import failed")
                }
            }
        }
        images
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::sha256_of;
    use crate::manifest::host_platform;

    fn json(v: serde_json::Value) -> Vec<u8> {
        v.to_string().into_bytes()
    }

    /// A one-layer image: its layer, config and manifest.
    fn image() -> [Vec<u8>; 3] {
        let mut layer = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        layer.append_data(&mut h, "hi", &b"hi\n"[..]).unwrap();
        let layer = layer.into_inner().unwrap();
        let host = host_platform();
        let config = json(serde_json::json!({
            "architecture": host.architecture, "os": host.os,
            "rootfs": {"type": "layers", "diff_ids": [sha256_of(&layer)]},
        }));
        let manifest = json(serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256_of(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": sha256_of(&layer), "size": layer.len()}],
        }));
        [layer, config, manifest]
    }

    /// An index naming `doc` for this host, as `size` bytes.
    fn index_of(doc: &[u8], size: usize) -> Vec<u8> {
        let host = host_platform();
        json(serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": sha256_of(doc), "size": size,
                "platform": {"os": host.os, "architecture": host.architecture, "variant": host.variant}}],
        }))
    }

    /// Imports an OCI layout of `blobs` whose `index.json` names `top` as `size` bytes.
    fn import(blobs: &[&[u8]], top: &[u8], size: usize) -> Result<Vec<Image>, ImageError> {
        let dir = tempfile::tempdir().unwrap();
        let mut archive = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            archive.append_data(&mut h, name, data).unwrap();
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        for blob in blobs.iter().chain([&top]) {
            add(&format!("blobs/sha256/{}", &sha256_of(blob)[7..]), blob);
        }
        let index = json(serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": sha256_of(top), "size": size,
            "annotations": {"io.containerd.image.name": "example.com/walk:1"}}]}));
        add("index.json", &index);
        let path = dir.path().join("image.tar");
        std::fs::write(&path, archive.into_inner().unwrap()).unwrap();
        let store = ImageStore::open(crate::ImageStoreConfig {
            dir: dir.path().join("images"),
            registry_config_path: dir.path().join("certs.d"),
            pinned_images: Vec::new(),
        })
        .unwrap();
        store.import_tar(&path)
    }

    #[test]
    fn an_oci_layout_is_walked_with_the_checks_of_a_pull() {
        let [layer, config, manifest] = image();
        let index = index_of(&manifest, manifest.len());
        let images = import(&[&layer, &config, &manifest], &index, index.len()).unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].repo_tags, ["example.com/walk:1"]);
        // index.json's size of the top, and an index's size of the manifest, must be theirs.
        let e = import(&[&layer, &config, &manifest], &index, index.len() + 1).unwrap_err();
        assert!(matches!(e, ImageError::SizeMismatch { .. }), "{e}");
        let lying = index_of(&manifest, manifest.len() - 1);
        let e = import(&[&layer, &config, &manifest], &lying, lying.len()).unwrap_err();
        assert!(matches!(e, ImageError::SizeMismatch { .. }), "{e}");
        // Indexes nested deeper than a pull takes.
        let mut top = index.clone();
        let mut blobs = vec![layer.clone(), config.clone(), manifest.clone(), index];
        for _ in 0..crate::manifest::MAX_INDEX_DEPTH {
            blobs.push(top.clone());
            top = index_of(&top, top.len());
        }
        let blobs: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
        let e = import(&blobs, &top, top.len()).unwrap_err();
        assert!(e.to_string().contains("nested deeper"), "{e}");
    }

    #[test]
    fn archive_paths_are_confined() {
        assert_eq!(clean(Path::new("./a/b")).as_deref(), Some("a/b"));
        assert_eq!(clean(Path::new("a/../b")).as_deref(), Some("b"));
        assert_eq!(clean(Path::new("../b")), None);
        assert_eq!(clean(Path::new("/etc/passwd")), None);
        assert_eq!(clean(Path::new("./")).as_deref(), Some(""));
    }
}
