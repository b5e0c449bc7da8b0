//! crid, the CRI v1 daemon as a library: configuration and start-up (`daemon`), the shared
//! state the handlers use (`state`), the gRPC layer (`cri`), the exec/attach/port-forward
//! server (`streaming`), metrics, and the operator subcommands (`ops`, `pack`). The binary in
//! `main.rs` parses the command line; tests link this library to serve the CRI in-process.
//!
//! Layers, each using only those below it: `daemon` → `cri`, `metrics`, `nri`, `notify` →
//! `state` → `streaming`, `config`, `sys` and the domain crates (`sandbox`, `imagestore`,
//! `cni`).

pub mod config;
pub mod cri;
pub mod daemon;
pub mod metrics;
pub mod monitor;
pub mod notify;
pub mod nri;
pub mod ops;
pub mod pack;
pub mod state;
pub mod streaming;
pub mod sys;
