//! crid's end-to-end judge: a CRI v1 client, a small test runner and the tests themselves,
//! usable against any CRI endpoint (crid or containerd), plus the benchmark binary.

pub mod bench;
pub mod client;
pub mod fixtures;
pub mod gaps;
pub mod kubelet;
pub mod runner;
pub mod stream_client;
pub mod tests;
