//! The image service of crid: pulling OCI images from registries, the content store addressed by
//! digest, unpacking layers once into shared layer directories, image metadata, and recognising
//! unikernel artifacts. It knows nothing of gRPC: `crid` converts CRI requests into calls here.
//!
//! Layout of the store directory (`<root>/images`): `blobs/sha256/<hex>` (content addressed by
//! digest), `layers/sha256/<diff id hex>` (unpacked layers in overlayfs format, shared by all
//! images), `metadata.json` (images), `leases.json` (what containers use), `ingest/` and `tmp/` (in-progress work, removed
//! when abandoned).

mod content;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod hosts;
mod image;
mod import;
mod manifest;
mod pull;
pub mod reference;
mod store;
mod sys;
pub mod unikernel;
pub mod unpack;

pub use error::{ErrorKind, ImageError};
pub use image::Image;
pub use manifest::MAX_MANIFEST_BYTES;
pub use reference::ImageRef;
pub use store::{Credentials, FsUsage, ImageStore, ImageStoreConfig};
pub use unikernel::{
    HypervisorKind, UnikernelInfo, UnikernelSource, UnikernelType, VirtioTransport,
};
pub use unpack::UnpackStats;
