//! [`ImageStore`]: image metadata persisted as JSON under `<dir>/metadata.json`, leases that keep
//! an image's content alive for containers (`<dir>/leases.json`), lookups by id, id prefix, tag
//! or digest, and garbage collection of blobs and layer directories no image or lease uses any
//! more.
//!
//! The two files differ in durability on purpose. `metadata.json` is written with an fsync: it
//! is the only record of the pulled images. `leases.json` is only replaced atomically, without
//! waiting for the disk (that wait was most of a CreateContainer's time): a lease matters only
//! while its container's record exists, and container records are written the same way, so
//! both survive a restart of crid and may both be lost to a power loss. The daemon rebuilds the
//! leases from its container records at start-up ([`ImageStore::set_leases`]), so a lease can
//! neither outlive its container nor be missing for one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::{BoxFuture, Shared, WeakShared};
use serde::{Deserialize, Serialize};

use crate::content::{ContentStore, digest_hex, remove_any, temp_name};
use crate::reference::ImageRef;
use crate::sys::FileLock;
use crate::{Image, ImageError};

/// Where the store lives and how it reaches registries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageStoreConfig {
    /// The store directory, normally `<root>/images`.
    pub dir: PathBuf,
    /// containerd-style `certs.d` directory with `<host>/hosts.toml` files.
    pub registry_config_path: PathBuf,
    /// References of images that are reported pinned and that `remove` refuses (the pause
    /// image and `images.pinned_images`).
    pub pinned_images: Vec<String>,
}

/// Registry credentials of one pull (from the CRI `AuthConfig`).
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Username and password (or an identity token used as password).
    Basic { username: String, password: String },
    /// A bearer token for the registry.
    Token(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

/// Space used by the image store, for `ImageFsInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsUsage {
    pub mountpoint: PathBuf,
    pub used_bytes: u64,
    pub inodes_used: u64,
}

/// The persisted state: images by id and leases by holder.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Metadata {
    pub(crate) version: u32,
    pub(crate) images: BTreeMap<String, Record>,
    /// holder id (a container) -> image id. Kept in `leases.json`; written empty in
    /// `metadata.json`, which held them in stores made before that file (read when it is
    /// missing, moved at the next change).
    #[serde(default)]
    pub(crate) leases: BTreeMap<String, String>,
}

/// One image and the content it keeps alive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) image: Image,
    /// Manifest and index digests this image was reached through.
    pub(crate) manifest_digests: BTreeSet<String>,
    /// Every blob the image needs: indexes, manifest, config, layers.
    pub(crate) blobs: BTreeSet<String>,
    /// Removed by the user but still leased by a container: not listed, content kept.
    #[serde(default)]
    pub(crate) hidden: bool,
}

/// An image ready to be recorded after its content is in the store.
pub(crate) struct NewImage {
    pub(crate) image: Image,
    pub(crate) manifest_digests: Vec<String>,
    pub(crate) blobs: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime_nsec: i64,
    mtime: i64,
}

struct State {
    meta: Metadata,
    /// Of `metadata.json` and `leases.json` when last read or written.
    stamp: (Option<Stamp>, Option<Stamp>),
    /// Digests (blobs and diff ids) that running pulls and imports use: never collected.
    in_use: HashMap<String, usize>,
}

pub(crate) type OpFuture = BoxFuture<'static, Result<(), Arc<ImageError>>>;
pub(crate) type SharedOp = Shared<OpFuture>;

pub(crate) struct Inner {
    pub(crate) content: ContentStore,
    pub(crate) hosts_dir: PathBuf,
    pinned: Vec<String>,
    meta_path: PathBuf,
    leases_path: PathBuf,
    lock_path: PathBuf,
    state: Mutex<State>,
    /// Set for offline stores: the metadata lock, held until the store is dropped.
    held_lock: Option<FileLock>,
    /// Downloads and unpacks in progress, by key; concurrent callers await the same one.
    pub(crate) inflight: Mutex<HashMap<String, WeakShared<OpFuture>>>,
}

/// The image store. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct ImageStore {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("dir", &self.inner.content.dir())
            .finish()
    }
}

/// Marks digests as used by one running pull or import; unmarks them when dropped and, when
/// the operation did not finish, collects what it left behind.
pub(crate) struct UseGuard {
    store: ImageStore,
    digests: Vec<String>,
    finished: bool,
}

impl UseGuard {
    pub(crate) fn add_all<'a>(&mut self, digests: impl IntoIterator<Item = &'a String>) {
        for d in digests {
            self.add(d);
        }
    }

    pub(crate) fn add(&mut self, digest: &str) {
        if let Ok(mut st) = self.store.inner.state.lock() {
            *st.in_use.entry(digest.to_owned()).or_default() += 1;
        }
        self.digests.push(digest.to_owned());
    }

    pub(crate) fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for UseGuard {
    fn drop(&mut self) {
        if let Ok(mut st) = self.store.inner.state.lock() {
            for d in &self.digests {
                if let Some(n) = st.in_use.get_mut(d) {
                    *n -= 1;
                    if *n == 0 {
                        st.in_use.remove(d);
                    }
                }
            }
        }
        if !self.finished && !self.digests.is_empty() {
            let store = self.store.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn_blocking(move || store.collect_garbage_logged());
                }
                Err(_) => store.collect_garbage_logged(),
            }
        }
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the metadata half-written (it is replaced
    // atomically), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn stamp_of(path: &Path) -> Option<Stamp> {
    std::fs::metadata(path).ok().map(|m| Stamp {
        ino: m.ino(),
        len: m.len(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    })
}

/// Whether `s` is 12 to 64 lowercase hex digits (an image id or a prefix of one).
fn is_hex_prefix(s: &str) -> bool {
    (12..=64).contains(&s.len()) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl ImageStore {
    /// Opens (creating if needed) the store in `cfg.dir`, loads its metadata and collects
    /// content left unreferenced by an earlier run. For the daemon: one per root.
    pub fn open(cfg: ImageStoreConfig) -> Result<ImageStore, ImageError> {
        std::fs::create_dir_all(&cfg.dir).map_err(|e| ImageError::io(&cfg.dir, e))?;
        // Clearing `ingest/` and `tmp/` must not race an offline import.
        let flock = FileLock::exclusive(&cfg.dir.join("metadata.lock"))?;
        let store = Self::open_inner(cfg, None)?;
        drop(flock);
        store.collect_garbage()?;
        Ok(store)
    }

    /// Opens the store for an offline tool (`crid images import`) that may run next to the
    /// daemon: it holds the metadata lock for its whole life, so the daemon's commits and
    /// garbage collection wait for it, and it never collects garbage itself (it cannot see
    /// the daemon's pulls in progress).
    pub fn open_offline(cfg: ImageStoreConfig) -> Result<ImageStore, ImageError> {
        std::fs::create_dir_all(&cfg.dir).map_err(|e| ImageError::io(&cfg.dir, e))?;
        let lock = FileLock::exclusive(&cfg.dir.join("metadata.lock"))?;
        Self::open_inner(cfg, Some(lock))
    }

    fn open_inner(
        cfg: ImageStoreConfig,
        held_lock: Option<FileLock>,
    ) -> Result<ImageStore, ImageError> {
        let offline = held_lock.is_some();
        let content = if offline {
            ContentStore::open_shared(&cfg.dir)?
        } else {
            ContentStore::open(&cfg.dir)?
        };
        let mut pinned = Vec::new();
        for p in &cfg.pinned_images {
            if p.is_empty() {
                continue;
            }
            match ImageRef::parse(p) {
                Ok(r) => {
                    if let Some(t) = r.tagged() {
                        pinned.push(t);
                    }
                    if let Some(d) = r.digest() {
                        pinned.push(r.digested(d));
                    }
                }
                Err(e) => tracing::warn!(image = %p, error = %e, "ignoring invalid pinned image"),
            }
        }
        let store = ImageStore {
            inner: Arc::new(Inner {
                meta_path: cfg.dir.join("metadata.json"),
                leases_path: cfg.dir.join("leases.json"),
                lock_path: cfg.dir.join("metadata.lock"),
                content,
                hosts_dir: cfg.registry_config_path,
                pinned,
                state: Mutex::new(State {
                    meta: Metadata::default(),
                    stamp: (None, None),
                    in_use: HashMap::new(),
                }),
                inflight: Mutex::new(HashMap::new()),
                held_lock,
            }),
        };
        {
            let mut st = lock(&store.inner.state);
            store.refresh(&mut st)?;
        }
        Ok(store)
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        self.inner.content.dir()
    }

    /// Reloads the metadata when another process (or an earlier run) changed it.
    fn refresh(&self, st: &mut State) -> Result<(), ImageError> {
        let path = &self.inner.meta_path;
        let stamp = (stamp_of(path), stamp_of(&self.inner.leases_path));
        if stamp.0.is_some() && stamp == st.stamp {
            return Ok(());
        }
        st.meta = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| ImageError::Metadata {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Metadata::default(),
            Err(e) => return Err(ImageError::io(path, e)),
        };
        let leases = &self.inner.leases_path;
        match std::fs::read(leases) {
            Ok(bytes) => {
                st.meta.leases = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                    // Torn by a power loss: the daemon rebuilds them from its containers.
                    tracing::warn!(path = %leases.display(), error = %e, "unreadable image leases ignored");
                    BTreeMap::new()
                });
            }
            // A store from before `leases.json`: its leases are in `metadata.json`.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::io(leases, e)),
        }
        st.stamp = stamp;
        Ok(())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        let mut st = lock(&self.inner.state);
        if let Err(e) = self.refresh(&mut st) {
            tracing::error!(error = %e, "cannot reload image metadata; using the last good copy");
        }
        st
    }

    /// Read-modify-writes the metadata under the cross-process lock.
    fn mutate<T>(
        &self,
        f: impl FnOnce(&mut Metadata) -> Result<T, ImageError>,
    ) -> Result<T, ImageError> {
        let mut st = lock(&self.inner.state);
        let _flock = self.flock()?;
        self.refresh(&mut st)?;
        let mut meta = st.meta.clone();
        let out = f(&mut meta)?;
        meta.version = 1;
        // Without `leases.json` yet, the leases are in `metadata.json`: written to their own file
        // first, so rewriting `metadata.json` without them cannot lose them.
        let moving = st.stamp.1.is_none();
        if moving || meta.leases != st.meta.leases {
            self.write_leases(&meta.leases)?;
        }
        if moving || meta.images != st.meta.images || meta.version != st.meta.version {
            self.write_meta(&meta)?;
        }
        st.meta = meta;
        st.stamp = (
            stamp_of(&self.inner.meta_path),
            stamp_of(&self.inner.leases_path),
        );
        Ok(out)
    }

    /// The cross-process metadata lock, unless this store holds it already.
    fn flock(&self) -> Result<Option<FileLock>, ImageError> {
        match self.inner.held_lock {
            Some(_) => Ok(None),
            None => FileLock::exclusive(&self.inner.lock_path).map(Some),
        }
    }

    /// Replaces `metadata.json` (without the leases) and waits for the disk.
    fn write_meta(&self, meta: &Metadata) -> Result<(), ImageError> {
        let path = &self.inner.meta_path;
        let tmp = self.dir().join(temp_name(".metadata"));
        let images = Metadata {
            version: meta.version,
            images: meta.images.clone(),
            leases: BTreeMap::new(),
        };
        let bytes = serde_json::to_vec_pretty(&images).map_err(|source| ImageError::Metadata {
            path: path.clone(),
            source,
        })?;
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            ImageError::io(path, e)
        })
    }

    /// Replaces `leases.json` atomically, without waiting for the disk (see the module's
    /// documentation).
    fn write_leases(&self, leases: &BTreeMap<String, String>) -> Result<(), ImageError> {
        let path = &self.inner.leases_path;
        let tmp = self.dir().join(temp_name(".leases"));
        let bytes = serde_json::to_vec_pretty(leases).map_err(|source| ImageError::Metadata {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, &bytes)
            .and_then(|()| crate::sys::replace_unsynced(&tmp, path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                ImageError::io(path, e)
            })
    }

    pub(crate) fn use_guard(&self) -> UseGuard {
        UseGuard {
            store: self.clone(),
            digests: Vec::new(),
            finished: false,
        }
    }

    fn is_pinned(&self, image: &Image) -> bool {
        image
            .repo_tags
            .iter()
            .chain(&image.repo_digests)
            .any(|r| self.inner.pinned.contains(r))
    }

    fn present(&self, rec: &Record) -> Image {
        let mut image = rec.image.clone();
        image.pinned = self.is_pinned(&image);
        image
    }

    /// All images, ordered by id.
    pub fn list(&self) -> Vec<Image> {
        let st = self.state();
        st.meta
            .images
            .values()
            .filter(|r| !r.hidden)
            .map(|r| self.present(r))
            .collect()
    }

    /// Finds the id of the visible image `query` names: an id (`sha256:<hex>` or `<hex>`), a
    /// unique id prefix of at least 12 hex digits, `name:tag` (a bare name means `:latest`) or
    /// `name@digest`.
    fn find(meta: &Metadata, query: &str) -> Result<Option<String>, ImageError> {
        let visible = |id: &str| meta.images.get(id).is_some_and(|r| !r.hidden);
        let hex = query.strip_prefix("sha256:");
        if let Some(h) = hex.or(Some(query)).filter(|h| is_hex_prefix(h)) {
            let matches: Vec<&String> = meta
                .images
                .iter()
                .filter(|(id, r)| !r.hidden && id.trim_start_matches("sha256:").starts_with(h))
                .map(|(id, _)| id)
                .collect();
            match matches.as_slice() {
                [one] => return Ok(Some((*one).clone())),
                [] => {}
                _ => {
                    return Err(ImageError::AmbiguousId {
                        prefix: query.to_owned(),
                    });
                }
            }
            if hex.is_some() {
                return Ok(None);
            }
        }
        let r = ImageRef::parse(query)?;
        let wanted = match (r.digest(), r.tagged()) {
            (Some(d), _) => r.digested(d),
            (None, Some(t)) => t,
            (None, None) => return Ok(None),
        };
        Ok(meta
            .images
            .iter()
            .find(|(id, rec)| {
                visible(id)
                    && (rec.image.repo_tags.contains(&wanted)
                        || rec.image.repo_digests.contains(&wanted))
            })
            .map(|(id, _)| id.clone()))
    }

    /// The image `reference_or_id` names, if present. Invalid references are an error.
    pub fn get(&self, reference_or_id: &str) -> Result<Option<Image>, ImageError> {
        let st = self.state();
        let id = Self::find(&st.meta, reference_or_id)?;
        Ok(id
            .and_then(|id| st.meta.images.get(&id))
            .map(|r| self.present(r)))
    }

    /// Like [`ImageStore::get`], but a missing image is `NotFound`.
    pub fn resolve(&self, reference_or_id: &str) -> Result<Image, ImageError> {
        self.get(reference_or_id)?
            .ok_or_else(|| ImageError::NotFound {
                reference: reference_or_id.to_owned(),
            })
    }

    /// Removes the image with all its tags; missing images are fine. A pinned image is refused.
    /// Content only a leased image uses stays until the lease is gone.
    pub fn remove(&self, reference_or_id: &str) -> Result<(), ImageError> {
        let removed = self.mutate(|meta| {
            let Some(id) = Self::find(meta, reference_or_id)? else {
                return Ok(false);
            };
            let leased = meta.leases.values().any(|i| *i == id);
            let Some(rec) = meta.images.get_mut(&id) else {
                return Ok(false);
            };
            if rec
                .image
                .repo_tags
                .iter()
                .chain(&rec.image.repo_digests)
                .any(|r| self.inner.pinned.contains(r))
            {
                return Err(ImageError::Pinned { id });
            }
            if leased {
                rec.hidden = true;
                rec.image.repo_tags.clear();
                rec.image.repo_digests.clear();
            } else {
                meta.images.remove(&id);
            }
            tracing::info!(image = %id, "image removed");
            Ok(true)
        })?;
        if removed {
            self.collect_garbage()?;
        }
        Ok(())
    }

    /// The unpacked layer directories of `image`, bottom layer first, in overlayfs format:
    /// usable directly as overlay `lowerdir`s (reversed, as overlayfs lists the top first).
    pub fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>, ImageError> {
        image
            .diff_ids
            .iter()
            .map(|d| {
                let p = self.inner.content.layer_path(d)?;
                if p.is_dir() {
                    Ok(p)
                } else {
                    Err(ImageError::NotFound {
                        reference: format!("layer {d} of image {}", image.id),
                    })
                }
            })
            .collect()
    }

    /// Records that `holder_id` (a container) uses `image_id`: its content is kept even if the
    /// image is removed, until [`ImageStore::remove_lease`]. Persisted.
    pub fn add_lease(&self, holder_id: &str, image_id: &str) -> Result<(), ImageError> {
        self.mutate(|meta| {
            let id = match meta.images.contains_key(image_id) {
                true => image_id.to_owned(),
                false => Self::find(meta, image_id)?.ok_or_else(|| ImageError::NotFound {
                    reference: image_id.to_owned(),
                })?,
            };
            meta.leases.insert(holder_id.to_owned(), id);
            Ok(())
        })
    }

    /// Replaces all leases with `leases` (holder -> image id): the daemon's, rebuilt from its
    /// container records at start-up. Images removed while leased that no lease keeps any
    /// more go, with the content nothing else uses.
    pub fn set_leases(&self, leases: BTreeMap<String, String>) -> Result<(), ImageError> {
        let changed = self.mutate(|meta| {
            if meta.leases == leases {
                return Ok(false);
            }
            meta.leases = leases;
            let leased: HashSet<&String> = meta.leases.values().collect();
            meta.images
                .retain(|id, rec| !rec.hidden || leased.contains(id));
            Ok(true)
        })?;
        if changed {
            self.collect_garbage()?;
        }
        Ok(())
    }

    /// Drops the lease of `holder_id` (missing leases are fine) and collects content that
    /// nothing uses any more.
    pub fn remove_lease(&self, holder_id: &str) -> Result<(), ImageError> {
        let changed = self.mutate(|meta| {
            let Some(id) = meta.leases.remove(holder_id) else {
                return Ok(false);
            };
            let still_leased = meta.leases.values().any(|i| *i == id);
            if !still_leased && meta.images.get(&id).is_some_and(|r| r.hidden) {
                meta.images.remove(&id);
            }
            Ok(true)
        })?;
        if changed {
            self.collect_garbage()?;
        }
        Ok(())
    }

    /// Records a pulled or imported image whose content is in the store. Tags it takes over
    /// are removed from the images that had them.
    pub(crate) fn commit(&self, new: NewImage) -> Result<Image, ImageError> {
        let NewImage {
            image,
            manifest_digests,
            blobs,
        } = new;
        let id = image.id.clone();
        let committed = self.mutate(|meta| {
            for (other_id, rec) in meta.images.iter_mut() {
                if *other_id != id {
                    rec.image.repo_tags.retain(|t| !image.repo_tags.contains(t));
                }
            }
            // Images left without any name are gone (their content is collected below),
            // unless a container still leases them.
            let orphans: Vec<String> = meta
                .images
                .iter()
                .filter(|(other_id, rec)| {
                    **other_id != id
                        && !rec.hidden
                        && rec.image.repo_tags.is_empty()
                        && rec.image.repo_digests.is_empty()
                })
                .map(|(other_id, _)| other_id.clone())
                .collect();
            for o in &orphans {
                if meta.leases.values().any(|l| l == o) {
                    if let Some(rec) = meta.images.get_mut(o) {
                        rec.hidden = true;
                    }
                } else {
                    meta.images.remove(o);
                }
            }
            let rec = meta.images.entry(id.clone()).or_insert_with(|| Record {
                image: image.clone(),
                manifest_digests: BTreeSet::new(),
                blobs: BTreeSet::new(),
                hidden: false,
            });
            if rec.hidden {
                rec.hidden = false;
            }
            for t in &image.repo_tags {
                if !rec.image.repo_tags.contains(t) {
                    rec.image.repo_tags.push(t.clone());
                }
            }
            for d in &image.repo_digests {
                if !rec.image.repo_digests.contains(d) {
                    rec.image.repo_digests.push(d.clone());
                }
            }
            if rec.image.unikernel.is_none() {
                rec.image.unikernel = image.unikernel.clone();
            }
            rec.manifest_digests.extend(manifest_digests);
            rec.blobs.extend(blobs);
            Ok((rec.image.clone(), !orphans.is_empty()))
        })?;
        let (committed, orphaned) = committed;
        if orphaned {
            self.collect_garbage_logged();
        }
        let image = {
            let st = self.state();
            st.meta
                .images
                .get(&committed.id)
                .map(|r| self.present(r))
                .unwrap_or(committed)
        };
        Ok(image)
    }

    fn collect_garbage_logged(&self) {
        if let Err(e) = self.collect_garbage() {
            tracing::warn!(error = %e, "image garbage collection failed");
        }
    }

    /// Deletes blobs and layer directories that no image, lease or running pull uses.
    pub fn collect_garbage(&self) -> Result<(), ImageError> {
        if self.inner.held_lock.is_some() {
            return Ok(());
        }
        let content = &self.inner.content;
        let trash = content.dir().join("tmp").join(temp_name("gc"));
        let mut moved = 0usize;
        {
            let mut st = lock(&self.inner.state);
            let _flock = self.flock()?;
            self.refresh(&mut st)?;
            let mut keep: HashSet<String> = st.in_use.keys().cloned().collect();
            for rec in st.meta.images.values() {
                keep.extend(rec.blobs.iter().cloned());
                keep.extend(rec.image.diff_ids.iter().cloned());
            }
            for dir in [content.blobs_dir(), content.layers_dir()] {
                let entries = std::fs::read_dir(&dir).map_err(|e| ImageError::io(&dir, e))?;
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let digest = format!("sha256:{name}");
                    if keep.contains(&digest) {
                        continue;
                    }
                    if moved == 0 {
                        std::fs::create_dir(&trash).map_err(|e| ImageError::io(&trash, e))?;
                    }
                    moved += 1;
                    let target = trash.join(format!("{moved}"));
                    if let Err(e) = std::fs::rename(entry.path(), &target) {
                        tracing::warn!(path = %entry.path().display(), error = %e, "cannot collect");
                    } else if digest_hex(&digest).is_ok() {
                        tracing::debug!(%digest, "collected");
                    }
                }
            }
        }
        if moved > 0 {
            remove_any(&trash);
            tracing::info!(entries = moved, "image content garbage-collected");
        }
        Ok(())
    }

    /// Bytes and inodes used by the store directory, walked now.
    pub fn fs_info(&self) -> Result<FsUsage, ImageError> {
        let root = self.dir().to_owned();
        let mut used_bytes = 0u64;
        let mut inodes_used = 0u64;
        let mut seen_links: HashSet<(u64, u64)> = HashSet::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(m) = entry.metadata() else { continue };
                if m.nlink() > 1 && !m.is_dir() && !seen_links.insert((m.dev(), m.ino())) {
                    continue;
                }
                used_bytes += m.blocks() * 512;
                inodes_used += 1;
                if m.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        if let Ok(m) = std::fs::metadata(&root) {
            used_bytes += m.blocks() * 512;
            inodes_used += 1;
        }
        Ok(FsUsage {
            mountpoint: root,
            used_bytes,
            inodes_used,
        })
    }

    /// The shared operation running under `key`, or a new one made by `make`.
    pub(crate) fn shared_op(&self, key: &str, make: impl FnOnce() -> OpFuture) -> SharedOp {
        let mut map = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.upgrade().is_some());
        if let Some(op) = map.get(key).and_then(|w| w.upgrade()) {
            return op;
        }
        let op = futures::FutureExt::shared(make());
        if let Some(weak) = op.downgrade() {
            map.insert(key.to_owned(), weak);
        }
        op
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id_byte: char, tags: &[&str]) -> NewImage {
        let id = format!("sha256:{}", id_byte.to_string().repeat(64));
        NewImage {
            image: Image {
                id: id.clone(),
                repo_tags: tags.iter().map(|t| t.to_string()).collect(),
                repo_digests: Vec::new(),
                size: 1,
                config_json: "{}".into(),
                diff_ids: Vec::new(),
                annotations: Default::default(),
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: None,
                unikernel: None,
                pinned: false,
            },
            manifest_digests: Vec::new(),
            blobs: vec![id],
        }
    }

    fn store(dir: &Path) -> ImageStore {
        ImageStore::open(ImageStoreConfig {
            dir: dir.to_owned(),
            registry_config_path: dir.join("certs.d"),
            pinned_images: vec!["registry.k8s.io/pause:3.10".into()],
        })
        .unwrap()
    }

    fn ino(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn leases_have_their_own_file_and_survive_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let id = s.commit(image('a', &["example.com/a:1"])).unwrap().id;
        let meta = tmp.path().join("metadata.json");
        let before = ino(&meta);
        s.add_lease("c1", &id).unwrap();
        // A lease alone leaves the fsynced image metadata alone.
        assert_eq!(ino(&meta), before, "metadata.json rewritten for a lease");
        let leases = std::fs::read_to_string(tmp.path().join("leases.json")).unwrap();
        assert!(leases.contains("c1"), "{leases}");
        drop(s);
        let s = store(tmp.path());
        // Still leased after the reopen: removing the image hides it, content kept.
        s.remove(&id).unwrap();
        assert!(s.list().is_empty());
        assert!(lock(&s.inner.state).meta.images.contains_key(&id));
        // Leases rebuilt without that holder: the hidden image goes.
        s.set_leases(BTreeMap::new()).unwrap();
        assert!(!lock(&s.inner.state).meta.images.contains_key(&id));
    }

    #[test]
    fn leases_of_an_older_store_move_to_their_own_file() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let id = s.commit(image('a', &["example.com/a:1"])).unwrap().id;
        drop(s);
        // As crid wrote it before `leases.json`: the leases inside `metadata.json`.
        let meta_path = tmp.path().join("metadata.json");
        let mut meta: Metadata =
            serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
        meta.leases.insert("old".into(), id.clone());
        std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
        std::fs::remove_file(tmp.path().join("leases.json")).unwrap();

        let s = store(tmp.path());
        s.add_lease("new", &id).unwrap();
        let leases: BTreeMap<String, String> =
            serde_json::from_slice(&std::fs::read(tmp.path().join("leases.json")).unwrap())
                .unwrap();
        assert_eq!(leases.keys().collect::<Vec<_>>(), ["new", "old"]);
        let meta: Metadata = serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
        assert!(meta.leases.is_empty());
        assert!(meta.images.contains_key(&id));
    }

    #[test]
    fn a_torn_leases_file_keeps_the_images() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let id = s.commit(image('a', &["example.com/a:1"])).unwrap().id;
        s.add_lease("c1", &id).unwrap();
        drop(s);
        std::fs::write(tmp.path().join("leases.json"), b"{\"c1\": \"sha").unwrap();
        let s = store(tmp.path());
        assert_eq!(s.list().len(), 1);
        assert!(lock(&s.inner.state).meta.leases.is_empty());
        s.set_leases(BTreeMap::from([("c1".to_owned(), id)]))
            .unwrap();
        assert_eq!(lock(&s.inner.state).meta.leases.len(), 1);
    }

    #[test]
    fn lookups_tags_pins_and_persistence() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        s.commit(image('a', &["docker.io/library/busybox:latest"]))
            .unwrap();
        s.commit(image('b', &["registry.k8s.io/pause:3.10"]))
            .unwrap();
        // Same leading digits as 'a' for twelve places is impossible with these ids, so
        // prefixes are unique; a 13-char prefix of 'a' finds it.
        assert_eq!(
            s.get("busybox").unwrap().unwrap().id.chars().last(),
            Some('a')
        );
        assert_eq!(
            s.get(&"a".repeat(13)).unwrap().unwrap().repo_tags,
            ["docker.io/library/busybox:latest"]
        );
        assert!(
            s.get(&"a".repeat(11)).unwrap().is_none(),
            "too short a prefix"
        );
        assert!(
            s.get(&format!("sha256:{}", "c".repeat(64)))
                .unwrap()
                .is_none()
        );
        assert_eq!(
            s.get("Bad Ref").unwrap_err().kind(),
            crate::ErrorKind::InvalidArgument
        );
        // The pause image is pinned and cannot be removed.
        let pause = s.resolve("registry.k8s.io/pause:3.10").unwrap();
        assert!(pause.pinned);
        assert_eq!(
            s.remove(&pause.id).unwrap_err().kind(),
            crate::ErrorKind::FailedPrecondition
        );
        // A tag moves to the newer image; an image left without names is gone.
        s.commit(image('d', &["docker.io/library/busybox:latest"]))
            .unwrap();
        assert_eq!(
            s.resolve("busybox").unwrap().id,
            format!("sha256:{}", "d".repeat(64))
        );
        assert!(s.get(&"a".repeat(64)).unwrap().is_none());
        assert_eq!(s.list().len(), 2);
        // Everything survives a reopen.
        drop(s);
        let s = store(tmp.path());
        assert_eq!(s.list().len(), 2);
        assert!(s.resolve("registry.k8s.io/pause:3.10").unwrap().pinned);
        // Removing twice is fine.
        s.remove("busybox").unwrap();
        s.remove("busybox").unwrap();
        assert_eq!(s.list().len(), 1);
    }

    #[test]
    fn ambiguous_prefixes_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let mut one = image('e', &["x/one:1"]);
        let mut two = image('e', &["x/two:1"]);
        one.image.id = format!("sha256:{}1", "e".repeat(63));
        two.image.id = format!("sha256:{}2", "e".repeat(63));
        s.commit(one).unwrap();
        s.commit(two).unwrap();
        assert_eq!(
            s.get(&"e".repeat(20)).unwrap_err().kind(),
            crate::ErrorKind::InvalidArgument
        );
        assert!(s.get(&format!("{}1", "e".repeat(63))).unwrap().is_some());
    }
}
