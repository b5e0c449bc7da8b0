//! Pods and containers: their state machines and on-disk store, and the backends that run them
//! (runc for ordinary containers, a hypervisor for unikernel images). Images come from
//! `imagestore`, networking from `cni`; gRPC is `crid`'s business.

mod error;
pub mod pod;
pub mod sys;
pub mod vm;

pub use error::SandboxError;
