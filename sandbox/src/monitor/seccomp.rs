//! The system-call filter of QEMU's `-sandbox on,obsolete=deny,spawn=deny,resourcecontrol=deny`
//! (plus `elevateprivileges=deny` when QEMU stays root), for QEMU builds without seccomp support
//! (Debian's `qemu-system-x86_64-microvm`). The monitor installs it in the VMM's process between
//! fork and exec (the monitor's private `sys::confine_before_exec`), with `no_new_privs`, so it
//! holds from QEMU's first instruction on, where QEMU's own filter starts after its option
//! parsing.
//!
//! It denies what QEMU 7.2's deny list denies (the x86-64 system calls among them), with its actions: the process
//! is killed for the default, obsolete, privileged and spawn sets, `EPERM` for resource control.
//! One difference: the `execve` that starts QEMU must pass, so `execve` is allowed; `execveat`
//! (which runs a memfd without a path) is denied. The plan uses this filter only for a QEMU that
//! switches to its own unprivileged uid in an empty, root-owned chroot with no `/proc`, where
//! `execve` finds no file to run. Like QEMU 8's filter it also kills a `clone` without
//! `CLONE_THREAD` (a new process) and makes `clone3`, whose flags a filter cannot read, fail with
//! `ENOSYS`, so glibc creates threads with `clone`. System calls of the x32 ABI (numbers with
//! `__X32_SYSCALL_BIT`), which a list of x86-64 numbers would not match, kill the process, as
//! libseccomp's architecture check does for QEMU.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};
use serde::{Deserialize, Serialize};

/// QEMU's `-sandbox` set-up, applied by the monitor (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuSandbox {
    /// `elevateprivileges=allow`: the set*id calls stay allowed (QEMU's `-runas` makes them).
    pub elevate_privileges: bool,
}

/// QEMU's default set.
const DEFAULT: &[i64] = &[
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_syslog,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_kexec_load,
    libc::SYS_afs_syscall,
    libc::SYS_getpmsg,
    libc::SYS_putpmsg,
    libc::SYS_security,
    libc::SYS_tuxcall,
    libc::SYS_vserver,
];

/// `obsolete=deny` (`create_module`, `get_kernel_syms` and `query_module` are gone from the
/// kernel: ENOSYS).
const OBSOLETE: &[i64] = &[
    libc::SYS__sysctl,
    libc::SYS_sysfs,
    libc::SYS_uselib,
    libc::SYS_ustat,
];

/// `elevateprivileges=deny`.
const PRIVILEGED: &[i64] = &[
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setpgid,
    libc::SYS_setsid,
    libc::SYS_setreuid,
    libc::SYS_setregid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
];

/// `spawn=deny`, but for `execve` (see the module documentation) and `clone` (by its flags).
const SPAWN: &[i64] = &[libc::SYS_fork, libc::SYS_vfork, libc::SYS_execveat];

/// `resourcecontrol=deny` (`sched_setscheduler` only for another policy than `SCHED_IDLE`).
const RESOURCE_CONTROL: &[i64] = &[
    libc::SYS_setpriority,
    libc::SYS_sched_setparam,
    libc::SYS_sched_setaffinity,
];

fn cond(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<Vec<SeccompRule>, String> {
    let condition = SeccompCondition::new(arg, len, op, value).map_err(|e| e.to_string())?;
    Ok(vec![
        SeccompRule::new(vec![condition]).map_err(|e| e.to_string())?,
    ])
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    action: SeccompAction,
) -> Result<BpfProgram, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let filter =
        SeccompFilter::new(rules, SeccompAction::Allow, action, arch).map_err(|e| e.to_string())?;
    BpfProgram::try_from(filter).map_err(|e| e.to_string())
}

impl QemuSandbox {
    /// The filters to install, in order (the kernel runs them all; the strictest action wins).
    pub fn filters(&self) -> Result<Vec<BpfProgram>, String> {
        let mut kill: BTreeMap<i64, Vec<SeccompRule>> = DEFAULT
            .iter()
            .chain(OBSOLETE)
            .chain(SPAWN)
            .chain(if self.elevate_privileges {
                &[]
            } else {
                PRIVILEGED
            })
            .map(|nr| (*nr, vec![]))
            .collect();
        let thread = u64::try_from(libc::CLONE_THREAD).map_err(|e| e.to_string())?;
        kill.insert(
            libc::SYS_clone,
            cond(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(thread),
                0,
            )?,
        );
        let mut eperm: BTreeMap<i64, Vec<SeccompRule>> =
            RESOURCE_CONTROL.iter().map(|nr| (*nr, vec![])).collect();
        let idle = u64::try_from(libc::SCHED_IDLE).map_err(|e| e.to_string())?;
        eperm.insert(
            libc::SYS_sched_setscheduler,
            cond(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, idle)?,
        );
        let enosys: BTreeMap<i64, Vec<SeccompRule>> = [(libc::SYS_clone3, vec![])].into();
        let errno = |e: i32| SeccompAction::Errno(u32::try_from(e).unwrap_or(1));
        Ok(vec![
            no_x32(),
            compile(kill, SeccompAction::KillProcess)?,
            compile(eperm, errno(libc::EPERM))?,
            compile(enosys, errno(libc::ENOSYS))?,
        ])
    }
}

/// `__X32_SYSCALL_BIT`.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Kills the process on any x32 system call (seccompiler checks the audit architecture, which
/// x32 shares with x86-64, and the syscall number only for equality).
fn no_x32() -> BpfProgram {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        // seccomp_data.nr, at offset 0.
        insn(LD_W_ABS, 0, 0, 0),
        insn(JGE_K, 0, 1, X32_SYSCALL_BIT),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}
