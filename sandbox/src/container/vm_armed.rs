//! crid-vmm guests armed at `CreateContainer`: when the pool ([`crate::vm::pool`]) has a
//! prepared monitor for the guest, the VM backend hands it the container right after the
//! record is saved, in the background: the guest's cgroup, tap and plan, the monitor's pid
//! file and CRI log, then the VMM joins the cgroup and the network namespace, loads the kernel
//! and confines itself (chroot, uid, seccomp) and its boot vCPU waits on its start gate (see
//! [`crate::monitor::prepared`]). `StartContainer` then writes one byte to the VMM: no other
//! process wakes, and the set-up overlapped the client's round trip between the two calls.
//! A PCI guest handed a paused QEMU ([`crate::vm::qemu_pool`]) is armed the same way; its
//! gate resumes QEMU over QMP, then writes the byte to the QEMU's monitor.
//!
//! The entries live in crid's memory only. A container removed (or its resources updated)
//! before it started is disarmed: dropping its gate ends the VMM before the guest ran, and
//! its monitor with it; a crid that stops or dies closes every gate the same way, and after
//! a restart a created guest is reported exited, as every created unikernel is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

use super::record::VmState;
use crate::SandboxError;
use crate::monitor::prepared::StartGate;

/// A guest set up by its VMM, waiting for its start.
pub struct Armed {
    /// The VM state as the start records it (argv, accelerator, command line).
    pub state: VmState,
    /// The VMM, the container's process.
    pub pid: i32,
    pub gate: StartGate,
}

/// How arming ended: armed; failed (what it had made is released, and the start reports the
/// error); or `None` when the prepared monitor had ended before it took the container (nothing
/// was made: the start goes the usual way).
pub type Outcome = Option<Result<Armed, SandboxError>>;

/// The guests being armed or armed, by container id.
#[derive(Clone, Default)]
pub struct ArmedGuests {
    tasks: Arc<Mutex<HashMap<String, JoinHandle<Outcome>>>>,
}

impl ArmedGuests {
    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, JoinHandle<Outcome>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the arming task of container `id`.
    pub fn insert(&self, id: &str, task: JoinHandle<Outcome>) {
        self.tasks().insert(id.to_owned(), task);
    }

    /// Takes container `id`'s entry, waiting for its arming to end; `None` when it has none
    /// (or its task failed).
    pub async fn take(&self, id: &str) -> Outcome {
        let task = self.tasks().remove(id)?;
        task.await.ok().flatten()
    }

    /// How many guests are armed or being armed.
    pub fn count(&self) -> usize {
        self.tasks().len()
    }
}
