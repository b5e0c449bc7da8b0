//! CRI v1 gRPC bindings used by crid and its conformance suite.
//!
//! The generated types come from the `k8s-cri` crate so that no upstream `.proto` text lives in
//! this tree. This crate holds no logic: domain crates never depend on it, only `crid`'s gRPC
//! layer and the `conformance` client do.

pub use k8s_cri::v1 as cri;

/// The CRI API version crid implements, as reported by `Version`.
pub const CRI_API_VERSION: &str = "v1";
