//! The seccomp filter every VMM thread installs once set-up is over: after it, a thread can
//! only run the vCPU (`KVM_RUN`, no other ioctl), move bytes on descriptors it already has,
//! manage its own memory without making it executable, wait on futexes, set its own timers
//! and exit; with a disk,
//! also `pread64`/`pwrite64`/`fdatasync` on the disk's descriptor only; with the serial
//! output's coalesced I/O, also `KVM_UNREGISTER_COALESCED_MMIO` on the VM's descriptor only
//! (the bus ends it when the guest enables the transmitter interrupt, see `devices::PioBus`).
//! Anything else kills the whole process (`SECCOMP_RET_KILL_PROCESS`).

use std::collections::BTreeMap;
use std::os::fd::RawFd;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::VmmError;

/// `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;
/// `_IOW(KVMIO, 0x68, struct kvm_coalesced_mmio_zone)`.
const KVM_UNREGISTER_COALESCED_MMIO: u64 = 0x4010_ae68;

/// Syscalls allowed with any arguments.
const PLAIN: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_futex,
    libc::SYS_munmap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_mremap,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // The partial-line timer of the serial output (the process's own timers only).
    libc::SYS_timer_settime,
    libc::SYS_timer_delete,
];

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, VmmError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| VmmError::Seccomp(e.to_string()))
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<Vec<SeccompRule>, VmmError> {
    Ok(vec![
        SeccompRule::new(conditions).map_err(|e| VmmError::Seccomp(e.to_string()))?,
    ])
}

/// Compiles the filter; `disk` is the virtio-blk device's descriptor, if there is one, and
/// `coalesced_vm` the VM's, when the serial output's coalesced I/O may have to be ended.
pub fn filter(disk: Option<RawFd>, coalesced_vm: Option<RawFd>) -> Result<BpfProgram, VmmError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = PLAIN.iter().map(|nr| (*nr, vec![])).collect();
    if let Some(fd) = disk {
        let fd = u64::try_from(fd).map_err(|_| VmmError::Seccomp(format!("bad disk fd {fd}")))?;
        for nr in [libc::SYS_pread64, libc::SYS_pwrite64, libc::SYS_fdatasync] {
            rules.insert(nr, rule(vec![cond(0, SeccompCmpOp::Eq, fd)?])?);
        }
    }
    let mut ioctl = rule(vec![cond(1, SeccompCmpOp::Eq, KVM_RUN)?])?;
    if let Some(vm) = coalesced_vm {
        let vm = u64::try_from(vm).map_err(|_| VmmError::Seccomp(format!("bad VM fd {vm}")))?;
        ioctl.extend(rule(vec![
            cond(0, SeccompCmpOp::Eq, vm)?,
            cond(1, SeccompCmpOp::Eq, KVM_UNREGISTER_COALESCED_MMIO)?,
        ])?);
    }
    rules.insert(libc::SYS_ioctl, ioctl);
    // Rust's debug builds check that a descriptor is still open before closing it.
    rules.insert(
        libc::SYS_fcntl,
        rule(vec![cond(1, SeccompCmpOp::Eq, libc::F_GETFD as u64)?])?,
    );
    let no_exec = libc::PROT_EXEC as u64;
    rules.insert(
        libc::SYS_mmap,
        rule(vec![cond(2, SeccompCmpOp::MaskedEq(no_exec), 0)?])?,
    );
    rules.insert(
        libc::SYS_mprotect,
        rule(vec![cond(2, SeccompCmpOp::MaskedEq(no_exec), 0)?])?,
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| VmmError::Seccomp(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| VmmError::Seccomp(e.to_string()))
}

/// Installs `program` on the calling thread.
pub fn apply(program: &BpfProgram) -> Result<(), VmmError> {
    seccompiler::apply_filter(program).map_err(|e| VmmError::Seccomp(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_and_confines_a_thread() {
        let program = filter(None, None).unwrap();
        assert!(!program.is_empty());
        // Install it on a throwaway thread (no_new_privs is per thread, so the test process
        // stays unconfined) and check a plain write still works there.
        std::thread::spawn(move || {
            // An unprivileged filter needs no_new_privs; the VMM sets it in `sys::confine`.
            crate::sys::no_new_privs().unwrap();
            apply(&program).unwrap();
            let mut out = std::io::sink();
            std::io::Write::write_all(&mut out, b"ok").unwrap();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_disk_descriptor_takes_positioned_io_and_flushes() {
        use std::os::unix::fs::FileExt;
        let disk = tempfile::tempfile().unwrap();
        disk.write_all_at(b"sector", 0).unwrap();
        let program = filter(Some(std::os::fd::AsRawFd::as_raw_fd(&disk)), None).unwrap();
        std::thread::spawn(move || {
            crate::sys::no_new_privs().unwrap();
            apply(&program).unwrap();
            let mut b = [0u8; 6];
            disk.read_exact_at(&mut b, 0).unwrap();
            assert_eq!(&b, b"sector");
            disk.write_all_at(b"S", 0).unwrap();
            disk.sync_data().unwrap();
        })
        .join()
        .unwrap();
    }
}
