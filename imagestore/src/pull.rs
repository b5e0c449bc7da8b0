//! Pulling images with `oci-client`: registry hosts from `hosts.toml` tried in order, the tag
//! or digest resolved through indexes to this host's manifest (documents parsed and bounded by
//! [`crate::manifest`]), every blob streamed to the content store and verified (size and
//! digest), layers unpacked once into shared layer directories. Concurrent pulls share each
//! download and unpack.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt, TryStreamExt};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::content::{ContentStore, TempPath};
use crate::hosts::{RegistryHost, hosts_for};
use crate::manifest::{
    ACCEPT, ConfigDoc, Descriptor, IndexWalk, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, Step,
    parse_config,
};
use crate::reference::ImageRef;
use crate::store::{Credentials, NewImage, UseGuard};
use crate::{Image, ImageError, ImageStore};

/// Layers downloaded at the same time by one pull.
const PARALLEL_LAYERS: usize = 3;

/// An image whose manifest is resolved and whose blobs are in the content store.
pub(crate) struct Resolved {
    pub(crate) repo_tags: Vec<String>,
    pub(crate) repo_digests: Vec<String>,
    pub(crate) manifest_digests: Vec<String>,
    pub(crate) config: Descriptor,
    pub(crate) layers: Vec<Descriptor>,
    pub(crate) annotations: HashMap<String, String>,
}

/// Reads and checks the config of `res` ([`parse_config`]).
pub(crate) fn read_config(
    content: &ContentStore,
    res: &Resolved,
) -> Result<(String, ConfigDoc), ImageError> {
    let digest = &res.config.digest;
    let bytes = content.read_blob(digest, MAX_CONFIG_BYTES)?;
    parse_config(bytes, digest, res.layers.len())
}

/// Unpacks the layer blob `blob` into `layers/sha256/<diff_id>` unless it is there already:
/// into a temporary directory first, checked against `diff_id`, then renamed into place.
///
/// When the layer is there already and `verify_existing` is set (the blob is new to the
/// store), the blob is still decompressed and hashed, so a corrupt blob is refused even when
/// the layer it claims to be is already unpacked.
pub(crate) fn unpack_into_store(
    content: &ContentStore,
    blob: &str,
    diff_id: &str,
    verify_existing: bool,
) -> Result<(), ImageError> {
    let dest = content.layer_path(diff_id)?;
    if dest.is_dir() {
        return match verify_existing {
            true => verify_diff_id(content, blob, diff_id),
            false => Ok(()),
        };
    }
    let tmp = content.temp_dir()?;
    let _guard = TempPath(Some(tmp.clone()));
    let src = content.blob_path(blob)?;
    let file = std::fs::File::open(&src).map_err(|e| ImageError::io(&src, e))?;
    let stats = crate::unpack::unpack_layer(std::io::BufReader::new(file), &tmp)?;
    if stats.diff_id != diff_id {
        return Err(ImageError::DigestMismatch {
            expected: diff_id.to_owned(),
            actual: stats.diff_id,
        });
    }
    match std::fs::rename(&tmp, &dest) {
        Ok(()) => {
            tracing::debug!(%blob, %diff_id, bytes = stats.bytes, inodes = stats.inodes, "layer unpacked");
            Ok(())
        }
        // Another unpack of the same diff id won the race.
        Err(_) if dest.is_dir() => Ok(()),
        Err(e) => Err(ImageError::io(&dest, e)),
    }
}

/// Decompresses blob `blob` and checks that it hashes to `diff_id`, without unpacking it,
/// within the limits an unpack has.
fn verify_diff_id(content: &ContentStore, blob: &str, diff_id: &str) -> Result<(), ImageError> {
    let src = content.blob_path(blob)?;
    let file = std::fs::File::open(&src).map_err(|e| ImageError::io(&src, e))?;
    let actual = crate::unpack::diff_id(
        std::io::BufReader::new(file),
        &crate::unpack::UnpackOptions::default(),
    )?;
    if actual != diff_id {
        return Err(ImageError::DigestMismatch {
            expected: diff_id.to_owned(),
            actual,
        });
    }
    Ok(())
}

impl ImageStore {
    /// Records `res` after its layers are unpacked: reads the config, recognises unikernels and
    /// commits the image metadata. Blocking.
    pub(crate) fn finish(&self, res: Resolved, guard: &mut UseGuard) -> Result<Image, ImageError> {
        let content = &self.inner.content;
        let (config_json, doc) = read_config(content, &res)?;
        let labels = doc
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        let diff_ids = doc.rootfs.diff_ids;
        let layer_dirs = diff_ids
            .iter()
            .map(|d| content.layer_path(d))
            .collect::<Result<Vec<PathBuf>, _>>()?;
        let unikernel = crate::unikernel::detect(&res.annotations, &labels, &layer_dirs)?;
        let mut size = res.config.size()?;
        for l in &res.layers {
            size += l.size()?;
        }
        let mut blobs = res.manifest_digests.clone();
        blobs.push(res.config.digest.clone());
        blobs.extend(res.layers.iter().map(|l| l.digest.clone()));
        let image = Image {
            id: res.config.digest.clone(),
            repo_tags: res.repo_tags,
            repo_digests: res.repo_digests,
            size,
            config_json,
            diff_ids,
            annotations: res.annotations,
            os: doc.os,
            architecture: doc.architecture,
            variant: doc.variant,
            unikernel,
            pinned: false,
        };
        let image = self.commit(NewImage {
            image,
            manifest_digests: res.manifest_digests,
            blobs,
        })?;
        guard.finish();
        tracing::info!(image = %image.id, tags = ?image.repo_tags, "image stored");
        Ok(image)
    }

    /// Pulls `reference` for this host's platform and records it. The registry endpoints come
    /// from `hosts.toml`; mirrors are tried in order, then the server.
    pub async fn pull(
        &self,
        reference: &str,
        auth: Option<Credentials>,
    ) -> Result<Image, ImageError> {
        let r = ImageRef::parse(reference)?;
        let hosts: Vec<RegistryHost> = hosts_for(&self.inner.hosts_dir, r.registry())?
            .into_iter()
            .filter(|h| h.pull && (h.resolve || r.digest().is_some()))
            .collect();
        if hosts.is_empty() {
            return Err(ImageError::HostsConfig {
                path: self.inner.hosts_dir.join(r.registry()),
                reason: "no host may pull (and resolve) this image".into(),
            });
        }
        let auth = match auth {
            None => RegistryAuth::Anonymous,
            Some(Credentials::Basic { username, password }) => {
                RegistryAuth::Basic(username, password)
            }
            Some(Credentials::Token(t)) => RegistryAuth::Bearer(t),
        };
        // When every host fails, the most telling error wins: "not found" from a registry that
        // answered beats "unavailable" from one that did not.
        let mut answered: Option<ImageError> = None;
        let mut last: Option<ImageError> = None;
        let count = hosts.len();
        for (i, host) in hosts.iter().enumerate() {
            match self.pull_from(&r, host, &auth).await {
                Ok(image) => return Ok(image),
                Err(e) if i + 1 < count && is_host_failure(&e) => {
                    tracing::warn!(host = %host.host, error = %e, "registry host failed, trying the next");
                    if answered.is_none() && e.kind() != crate::ErrorKind::Unavailable {
                        answered = Some(e);
                    } else {
                        last = Some(e);
                    }
                }
                Err(e) if e.kind() == crate::ErrorKind::Unavailable && answered.is_some() => {
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(answered.or(last).unwrap_or_else(|| ImageError::NotFound {
            reference: r.to_string(),
        }))
    }

    async fn pull_from(
        &self,
        r: &ImageRef,
        host: &RegistryHost,
        auth: &RegistryAuth,
    ) -> Result<Image, ImageError> {
        let client = make_client(host)?;
        let mut oref = r.oci();
        // Docker Hub's own hosts are what oci-client uses for docker.io anyway; any other host
        // is a mirror (oci-client then adds the `ns` query parameter, as containerd does).
        let hub = r.registry() == "docker.io"
            && matches!(
                host.host.as_str(),
                "registry-1.docker.io" | "index.docker.io"
            );
        if host.host != r.registry() && !hub {
            oref.set_mirror_registry(host.host.clone());
        }
        let name = r.to_string();
        let mut guard = self.use_guard();
        let content = self.inner.content.clone();

        // Resolve the tag or digest down to one image manifest for this platform.
        let mut bytes = fetch_manifest(&client, &oref, auth, &host.host, &name).await?;
        let mut walk = IndexWalk::new(&name, r.digest(), None);
        let (config, layers, annotations) = loop {
            let step = walk.next(&bytes)?;
            let current = walk.digests().last().cloned().unwrap_or_default();
            guard.add(&current);
            content.write_blob(&bytes, Some(&current))?;
            match step {
                Step::Image {
                    config,
                    layers,
                    annotations,
                } => break (config, layers, annotations),
                Step::Fetch(entry) => {
                    let child = oref.clone_with_digest(entry.digest.clone());
                    bytes = match fetch_manifest(&client, &child, auth, &host.host, &name).await {
                        Err(ImageError::DigestMismatch { actual, .. }) => {
                            return Err(walk.mismatch(actual));
                        }
                        other => other?,
                    };
                }
            }
        };
        let manifest_digests = walk.digests().to_vec();
        let top = manifest_digests.first().cloned().unwrap_or_default();

        // The config first (it names the diff ids), then the layers.
        guard.add(&config.digest);
        self.ensure_blob(&client, &oref, &config).await?;
        let res = Resolved {
            repo_tags: r.tagged().into_iter().collect(),
            repo_digests: vec![r.digested(&top)],
            manifest_digests,
            config,
            layers,
            annotations,
        };
        let diff_ids = read_config(&content, &res)?.1.rootfs.diff_ids;
        guard.add_all(res.layers.iter().map(|l| &l.digest));
        guard.add_all(&diff_ids);
        let work = res
            .layers
            .iter()
            .cloned()
            .zip(diff_ids.iter().cloned())
            .map(|(layer, diff_id)| {
                let client = client.clone();
                let oref = oref.clone();
                async move {
                    let fetched = self.ensure_blob(&client, &oref, &layer).await?;
                    self.ensure_layer(&layer.digest, &diff_id, fetched).await
                }
            });
        futures::stream::iter(work)
            .buffer_unordered(PARALLEL_LAYERS)
            .try_collect::<Vec<()>>()
            .await?;

        let store = self.clone();
        tokio::task::spawn_blocking(move || store.finish(res, &mut guard))
            .await
            .map_err(|e| ImageError::Task {
                reason: e.to_string(),
            })?
    }

    /// Makes sure blob `desc` is in the content store, downloading it once however many pulls
    /// ask for it at the same time. `true` when it was not in the store before.
    async fn ensure_blob(
        &self,
        client: &Client,
        oref: &Reference,
        desc: &Descriptor,
    ) -> Result<bool, ImageError> {
        let size = desc.size()?;
        let content = self.inner.content.clone();
        if content.has_blob(&desc.digest, size) {
            return Ok(false);
        }
        let op = self.shared_op(&format!("blob:{}", desc.digest), || {
            let client = client.clone();
            let oref = oref.clone();
            let desc = desc.clone();
            async move {
                download(&client, &oref, &content, &desc)
                    .await
                    .map_err(Arc::new)
            }
            .boxed()
        });
        op.await.map_err(|e| e.shared())?;
        Ok(true)
    }

    /// Makes sure the layer `diff_id` is unpacked from blob `blob`, once; a blob new to the
    /// store is checked against `diff_id` even when the layer is there already.
    async fn ensure_layer(
        &self,
        blob: &str,
        diff_id: &str,
        new_blob: bool,
    ) -> Result<(), ImageError> {
        let content = self.inner.content.clone();
        if content.layer_path(diff_id)?.is_dir() && !new_blob {
            return Ok(());
        }
        let key = match new_blob {
            true => format!("verify:{blob}:{diff_id}"),
            false => format!("layer:{diff_id}"),
        };
        let op = self.shared_op(&key, || {
            let blob = blob.to_owned();
            let diff_id = diff_id.to_owned();
            async move {
                tokio::task::spawn_blocking(move || {
                    unpack_into_store(&content, &blob, &diff_id, new_blob)
                })
                .await
                .map_err(|e| {
                    Arc::new(ImageError::Task {
                        reason: e.to_string(),
                    })
                })?
                .map_err(Arc::new)
            }
            .boxed()
        });
        op.await.map_err(|e| e.shared())
    }
}

/// Streams one blob into the content store, checking its size and digest.
async fn download(
    client: &Client,
    oref: &Reference,
    content: &ContentStore,
    desc: &Descriptor,
) -> Result<(), ImageError> {
    let size = desc.size()?;
    let registry = oref.resolve_registry().to_owned();
    let oci_desc = OciDescriptor {
        media_type: desc.media_type.clone(),
        digest: desc.digest.clone(),
        size: desc.size,
        ..Default::default()
    };
    let mut ingest = content.ingest(&desc.digest, size).await?;
    let mut stream = client
        .pull_blob_stream(oref, &oci_desc)
        .await
        .map_err(|e| map_oci_error(e, &registry, &desc.digest))?;
    if let Some(len) = stream.content_length {
        if len > size {
            return Err(ImageError::SizeMismatch {
                digest: desc.digest.clone(),
                expected: size,
                actual: len,
            });
        }
    }
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| map_io_error(e, &registry, &desc.digest))?;
        ingest.write(&chunk).await?;
    }
    ingest.commit(content).await?;
    tracing::debug!(digest = %desc.digest, size, "blob downloaded");
    Ok(())
}

/// The manifest or index `oref` names, at most [`MAX_MANIFEST_BYTES`]; the caller's
/// [`IndexWalk`] checks it is the one asked for.
async fn fetch_manifest(
    client: &Client,
    oref: &Reference,
    auth: &RegistryAuth,
    registry: &str,
    name: &str,
) -> Result<Vec<u8>, ImageError> {
    let (bytes, _) = client
        .pull_manifest_raw(oref, auth, &ACCEPT)
        .await
        .map_err(|e| map_oci_error(e, registry, name))?;
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(ImageError::InvalidManifest {
            reference: name.to_owned(),
            reason: format!(
                "{} bytes is larger than the {MAX_MANIFEST_BYTES} byte limit",
                bytes.len()
            ),
        });
    }
    Ok(bytes.to_vec())
}

fn make_client(host: &RegistryHost) -> Result<Client, ImageError> {
    let mut certs = Vec::new();
    for ca in &host.ca {
        let data = std::fs::read(ca).map_err(|e| ImageError::io(ca, e))?;
        certs.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        });
    }
    let config = ClientConfig {
        protocol: if host.plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        accept_invalid_certificates: host.skip_verify,
        extra_root_certificates: certs,
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(15)),
        read_timeout: Some(Duration::from_secs(120)),
        user_agent: concat!("crid/", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    };
    Client::try_from(config).map_err(|e| ImageError::Registry {
        registry: host.host.clone(),
        reason: e.to_string(),
    })
}

/// Failures that another host (a mirror or the server) may not have.
fn is_host_failure(e: &ImageError) -> bool {
    matches!(
        e.kind(),
        crate::ErrorKind::Unavailable | crate::ErrorKind::NotFound | crate::ErrorKind::Internal
    )
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(x) = source {
        let m = x.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        source = x.source();
    }
    s
}

fn map_io_error(e: std::io::Error, registry: &str, what: &str) -> ImageError {
    if let Some(DigestError::VerificationError { expected, actual }) =
        e.get_ref().and_then(|r| r.downcast_ref::<DigestError>())
    {
        return ImageError::DigestMismatch {
            expected: expected.clone(),
            actual: actual.clone(),
        };
    }
    ImageError::RegistryUnavailable {
        registry: registry.to_owned(),
        reason: format!("reading {what}: {}", chain(&e)),
    }
}

/// Maps an oci-client error onto the store's errors (and so onto gRPC codes).
fn map_oci_error(e: OciDistributionError, registry: &str, what: &str) -> ImageError {
    let not_found = || ImageError::NotFound {
        reference: what.to_owned(),
    };
    match e {
        OciDistributionError::RequestError(ref re) => {
            let _ = re;
            ImageError::RegistryUnavailable {
                registry: registry.to_owned(),
                reason: chain(&e),
            }
        }
        OciDistributionError::IoError(io) => map_io_error(io, registry, what),
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|x| &x.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::ManifestBlobUnknown
                )
            }) {
                not_found()
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                ImageError::AccessDenied {
                    reference: what.to_owned(),
                }
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
            {
                ImageError::RegistryUnavailable {
                    registry: registry.to_owned(),
                    reason: envelope.to_string(),
                }
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::NameInvalid | OciErrorCode::TagInvalid))
            {
                ImageError::InvalidReference {
                    reference: what.to_owned(),
                    reason: envelope.to_string(),
                }
            } else {
                ImageError::Registry {
                    registry: registry.to_owned(),
                    reason: envelope.to_string(),
                }
            }
        }
        OciDistributionError::ServerError { code, message, .. } => match code {
            404 => not_found(),
            401 | 403 => ImageError::AccessDenied {
                reference: what.to_owned(),
            },
            408 | 429 | 500..=599 => ImageError::RegistryUnavailable {
                registry: registry.to_owned(),
                reason: format!(
                    "HTTP {code}: {}",
                    message.chars().take(200).collect::<String>()
                ),
            },
            _ => ImageError::Registry {
                registry: registry.to_owned(),
                reason: format!(
                    "HTTP {code}: {}",
                    message.chars().take(200).collect::<String>()
                ),
            },
        },
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => ImageError::AccessDenied {
            reference: what.to_owned(),
        },
        OciDistributionError::DigestError(DigestError::VerificationError { expected, actual }) => {
            ImageError::DigestMismatch { expected, actual }
        }
        OciDistributionError::ImageManifestNotFoundError(_) => not_found(),
        e @ (OciDistributionError::DigestError(_)
        | OciDistributionError::ManifestParsingError(_)
        | OciDistributionError::VersionedParsingError(_)
        | OciDistributionError::UnsupportedMediaTypeError(_)
        | OciDistributionError::UnsupportedSchemaVersionError(_)
        | OciDistributionError::ManifestEncodingError(_)
        | OciDistributionError::JsonError(_)) => ImageError::InvalidManifest {
            reference: what.to_owned(),
            reason: e.to_string(),
        },
        other => ImageError::Registry {
            registry: registry.to_owned(),
            reason: chain(&other),
        },
    }
}
