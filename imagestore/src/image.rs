//! Image metadata as the rest of crid sees it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::unikernel::UnikernelInfo;

/// A pulled or imported image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// `sha256:<hex>` digest of the image config: the image id.
    pub id: String,
    /// e.g. `127.0.0.1:5000/busybox:latest`.
    pub repo_tags: Vec<String>,
    /// e.g. `127.0.0.1:5000/busybox@sha256:...` (the manifest or index digest pulled).
    pub repo_digests: Vec<String>,
    /// Compressed size of all layers plus config, in bytes.
    pub size: u64,
    /// The raw OCI image config JSON (`config` holds Env, Entrypoint, Cmd, User, ...).
    pub config_json: String,
    /// Layer diff ids (uncompressed digests), bottom layer first.
    pub diff_ids: Vec<String>,
    /// Manifest annotations.
    pub annotations: HashMap<String, String>,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub unikernel: Option<UnikernelInfo>,
    pub pinned: bool,
}
