//! Pods and containers: their state machines and on-disk store, and the backends that run them
//! (runc for ordinary containers, a hypervisor for unikernel images). Images come from
//! `imagestore`, networking from `cni`; gRPC is `crid`'s business.

pub mod container;
mod error;
pub mod hooks;
mod id;
pub mod monitor;
pub mod pod;
mod prepared_pool;
pub mod runc;
pub mod runtime;
pub mod sys;
pub mod vm;

pub use error::SandboxError;
pub use runtime::{PidNamespace, Runtime, RuntimeSettings};
