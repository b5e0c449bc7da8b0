//! The image service of crid: pulling OCI images from registries, the content store addressed by
//! digest, unpacking layers once into shared layer directories, image metadata, and recognising
//! unikernel artifacts. It knows nothing of gRPC: `crid` converts CRI requests into calls here.

mod error;
mod image;
pub mod unikernel;

pub use error::{ErrorKind, ImageError};
pub use image::Image;
pub use unikernel::{HypervisorKind, UnikernelInfo, UnikernelSource, UnikernelType};
