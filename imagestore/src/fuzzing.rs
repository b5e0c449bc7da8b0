//! Entry points for the `fuzz/` targets (feature `fuzzing`): the parsers of registry documents
//! that are otherwise private to the pull path. Each returns what a pull would act on, so a
//! target can check invariants on the result.

use std::collections::HashMap;

use crate::ImageError;
use crate::manifest::{self, Parsed};

/// What a manifest or index parses into.
#[derive(Debug)]
pub enum Manifest {
    /// An index: its entries' digests and sizes, and the entry picked for this host.
    Index {
        entries: Vec<(String, u64)>,
        picked: Option<String>,
    },
    /// An image manifest: config and layer digests with sizes, and its annotations.
    Image {
        config: (String, u64),
        layers: Vec<(String, u64)>,
        annotations: HashMap<String, String>,
    },
}

/// [`manifest::parse_manifest`], then platform selection for an index.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, ImageError> {
    let size = |d: &manifest::Descriptor| d.size().map(|s| (d.digest.clone(), s));
    match manifest::parse_manifest(bytes, "fuzz")? {
        Parsed::Index(entries) => {
            let picked = manifest::select_platform(&entries, &manifest::host_platform())
                .map(|d| d.digest.clone());
            Ok(Manifest::Index {
                entries: entries.iter().map(size).collect::<Result<_, _>>()?,
                picked,
            })
        }
        Parsed::Manifest {
            config,
            layers,
            annotations,
        } => Ok(Manifest::Image {
            config: size(&config)?,
            layers: layers.iter().map(size).collect::<Result<_, _>>()?,
            annotations,
        }),
    }
}

/// [`manifest::parse_config`] of a config blob for an image of `layers` layers: its diff ids.
pub fn parse_config(bytes: &[u8], layers: usize) -> Result<Vec<String>, ImageError> {
    manifest::parse_config(bytes.to_vec(), "sha256:fuzz", layers)
        .map(|(_, doc)| doc.rootfs.diff_ids)
}

/// Whether `digest` is one the store accepts (`sha256:` and 64 lowercase hex digits).
pub fn valid_digest(digest: &str) -> bool {
    crate::content::digest_hex(digest).is_ok()
}
