//! The seccomp filter every VMM thread installs once set-up is over: after it, a thread can
//! only run the vCPU (`KVM_RUN`, no other ioctl), move bytes on descriptors it already has,
//! manage its own memory without making it executable, wait on futexes, set its own timers
//! and exit; with a disk,
//! also `pread64`/`pwrite64`/`fdatasync` on the disk's descriptor only; with the serial
//! output's coalesced I/O, also `KVM_UNREGISTER_COALESCED_MMIO` on the VM's descriptor only
//! (the bus ends it when the guest enables the transmitter interrupt, see `devices::PioBus`).
//! Anything else kills the whole process (`SECCOMP_RET_KILL_PROCESS`).
//!
//! The BPF program is written here, one instruction per syscall allowed with any arguments,
//! `ioctl` (`KVM_RUN`, the one the guest makes over and over) first: the kernel's work to
//! install a filter grows with its length, and the install is on a start's path (on this
//! project's hosts about 2.5 µs an instruction: 0.16 ms for 59, 0.43 ms for 171), while
//! `seccompiler`'s compiler spends five instructions on each such syscall (171 for a guest
//! without a disk, against 59 here). `seccompiler` still installs it.

use std::os::fd::RawFd;

use seccompiler::{BpfProgram, sock_filter};

use crate::VmmError;

/// `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;
/// `_IOW(KVMIO, 0x68, struct kvm_coalesced_mmio_zone)`.
const KVM_UNREGISTER_COALESCED_MMIO: u64 = 0x4010_ae68;

/// `AUDIT_ARCH_X86_64`: `EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`.
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;

/// Syscalls allowed with any arguments.
const PLAIN: &[i64] = &[
    libc::SYS_write,
    libc::SYS_read,
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

/// `(argument & mask) == value`, on the whole 64-bit argument.
#[derive(Debug, Clone, Copy)]
struct Check {
    arg: u8,
    mask: u64,
    value: u64,
}

/// The argument equals `value`.
fn eq(arg: u8, value: u64) -> Check {
    Check {
        arg,
        mask: u64::MAX,
        value,
    }
}

/// How a syscall is allowed: with any arguments, or when every check of one of the lists holds.
enum Allowed {
    Always,
    When(Vec<Vec<Check>>),
}

/// Compiles the filter; `disk` is the virtio-blk device's descriptor, if there is one, and
/// `coalesced_vm` the VM's, when the serial output's coalesced I/O may have to be ended.
pub fn filter(disk: Option<RawFd>, coalesced_vm: Option<RawFd>) -> Result<BpfProgram, VmmError> {
    let fd = |fd: RawFd| {
        u64::try_from(fd).map_err(|_| VmmError::Seccomp(format!("bad descriptor {fd}")))
    };
    let mut ioctl = vec![vec![eq(1, KVM_RUN)]];
    if let Some(vm) = coalesced_vm {
        ioctl.push(vec![eq(0, fd(vm)?), eq(1, KVM_UNREGISTER_COALESCED_MMIO)]);
    }
    let no_exec = Check {
        arg: 2,
        mask: libc::PROT_EXEC as u64,
        value: 0,
    };
    let mut rules = vec![(libc::SYS_ioctl, Allowed::When(ioctl))];
    rules.extend(PLAIN.iter().map(|nr| (*nr, Allowed::Always)));
    rules.extend([
        (libc::SYS_mmap, Allowed::When(vec![vec![no_exec]])),
        (libc::SYS_mprotect, Allowed::When(vec![vec![no_exec]])),
        // Rust's debug builds check that a descriptor is still open before closing it.
        (
            libc::SYS_fcntl,
            Allowed::When(vec![vec![eq(1, libc::F_GETFD as u64)]]),
        ),
    ]);
    if let Some(disk) = disk {
        let disk = fd(disk)?;
        for nr in [libc::SYS_pread64, libc::SYS_pwrite64, libc::SYS_fdatasync] {
            rules.push((nr, Allowed::When(vec![vec![eq(0, disk)]])));
        }
    }
    assemble(&program(&rules))
}

/// Installs `program` on the calling thread.
pub fn apply(program: &BpfProgram) -> Result<(), VmmError> {
    seccompiler::apply_filter(program).map_err(|e| VmmError::Seccomp(e.to_string()))
}

/// Where a jump goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Allow,
    Kill,
    /// The instruction numbered so in [`program`]'s label table.
    At(usize),
}

/// An instruction whose jumps name labels, resolved by [`assemble`].
#[derive(Debug, Clone, Copy)]
enum Op {
    /// Loads the 32-bit word at this offset of `struct seccomp_data`.
    Load(u32),
    And(u32),
    /// Jumps to the label when the accumulator equals the value, else goes on.
    JumpIfEq(u32, Label),
    /// Goes on when the accumulator equals the value, else jumps to the label.
    JumpUnlessEq(u32, Label),
    Return(u32),
    /// Marks the next instruction as label `At(n)`.
    Mark(usize),
}

/// `struct seccomp_data`: `nr`, `arch`, then the 64-bit arguments from offset 16.
const NR: u32 = 0;
const ARCH: u32 = 4;
fn arg_low(arg: u8) -> u32 {
    16 + 8 * u32::from(arg)
}

/// The filter's instructions: the architecture, then each syscall in turn; a syscall not
/// listed falls through to the kill at the end.
fn program(rules: &[(i64, Allowed)]) -> Vec<Op> {
    let mut ops = vec![
        Op::Load(ARCH),
        Op::JumpUnlessEq(AUDIT_ARCH_X86_64, Label::Kill),
        Op::Load(NR),
    ];
    let mut labels = 0;
    let mut new_label = || {
        labels += 1;
        labels - 1
    };
    for (nr, allowed) in rules {
        let nr = *nr as u32;
        match allowed {
            Allowed::Always => ops.push(Op::JumpIfEq(nr, Label::Allow)),
            Allowed::When(alternatives) => {
                let next_syscall = new_label();
                ops.push(Op::JumpUnlessEq(nr, Label::At(next_syscall)));
                for (i, checks) in alternatives.iter().enumerate() {
                    let last = i + 1 == alternatives.len();
                    let fail = if last {
                        Label::Kill
                    } else {
                        Label::At(new_label())
                    };
                    for check in checks {
                        let low = arg_low(check.arg);
                        for (offset, mask, value) in [
                            (low, check.mask as u32, check.value as u32),
                            (
                                low + 4,
                                (check.mask >> 32) as u32,
                                (check.value >> 32) as u32,
                            ),
                        ] {
                            if mask == 0 && value == 0 {
                                continue;
                            }
                            ops.push(Op::Load(offset));
                            if mask != u32::MAX {
                                ops.push(Op::And(mask));
                            }
                            ops.push(Op::JumpUnlessEq(value, fail));
                        }
                    }
                    ops.push(Op::Return(libc::SECCOMP_RET_ALLOW));
                    if let Label::At(n) = fail {
                        ops.push(Op::Mark(n));
                    }
                }
                // Reached only from the number's comparison (every alternative ends in a
                // return or the kill), so the accumulator still holds the number.
                ops.push(Op::Mark(next_syscall));
            }
        }
    }
    ops.push(Op::Return(libc::SECCOMP_RET_KILL_PROCESS));
    ops
}

/// The BPF instructions of `ops`, jumps resolved: the kill and the allow are the last two
/// instructions (the kill falls through from the syscall list).
fn assemble(ops: &[Op]) -> Result<BpfProgram, VmmError> {
    let mut at: Vec<usize> = Vec::new();
    let mut len: usize = 0;
    for op in ops {
        match op {
            Op::Mark(n) => {
                if at.len() <= *n {
                    at.resize(n + 1, 0);
                }
                at[*n] = len;
            }
            _ => len += 1,
        }
    }
    let kill = len - 1;
    let allow = len;
    let target = |label: Label| match label {
        Label::Allow => allow,
        Label::Kill => kill,
        Label::At(n) => at[n],
    };
    let too_far = || VmmError::Seccomp("the filter's jumps are too long".into());
    // Every jump goes forward.
    let offset = |from: usize, label: Label| {
        target(label)
            .checked_sub(from + 1)
            .and_then(|n| u8::try_from(n).ok())
            .ok_or_else(too_far)
    };
    let stmt = |code: u32, k: u32| sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let mut program = Vec::with_capacity(len + 1);
    for op in ops {
        let here = program.len();
        program.push(match *op {
            Op::Mark(_) => continue,
            Op::Load(offset) => stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset),
            Op::And(mask) => stmt(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, mask),
            Op::JumpIfEq(value, to) => sock_filter {
                jt: offset(here, to)?,
                ..stmt(jeq, value)
            },
            Op::JumpUnlessEq(value, to) => sock_filter {
                jf: offset(here, to)?,
                ..stmt(jeq, value)
            },
            Op::Return(action) => stmt(libc::BPF_RET | libc::BPF_K, action),
        });
    }
    program.push(stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW));
    Ok(program)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `program` on a syscall as the kernel would (the few instructions it uses).
    fn verdict(program: &[sock_filter], arch: u32, nr: i64, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[..4].copy_from_slice(&(nr as u32).to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let i = &program[pc];
            let code = u32::from(i.code);
            pc += 1;
            if code == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS {
                let k = i.k as usize;
                acc = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
            } else if code == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K {
                acc &= i.k;
            } else if code == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K {
                pc += usize::from(if acc == i.k { i.jt } else { i.jf });
            } else if code == libc::BPF_RET | libc::BPF_K {
                return i.k;
            } else {
                panic!("unexpected instruction {i:?}");
            }
        }
    }

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;

    fn call(program: &[sock_filter], nr: i64, args: &[u64]) -> u32 {
        let mut all = [0u64; 6];
        all[..args.len()].copy_from_slice(args);
        verdict(program, AUDIT_ARCH_X86_64, nr, all)
    }

    #[test]
    fn allows_what_the_vmm_runs_on_and_kills_the_rest() {
        let (disk, vm) = (7, 5);
        let p = filter(Some(disk), Some(vm)).unwrap();
        let (disk, vm) = (disk as u64, vm as u64);
        for nr in PLAIN {
            assert_eq!(call(&p, *nr, &[u64::MAX; 6]), ALLOW, "syscall {nr}");
        }
        assert_eq!(call(&p, libc::SYS_ioctl, &[3, KVM_RUN]), ALLOW);
        assert_eq!(call(&p, libc::SYS_ioctl, &[3, KVM_RUN | 1 << 32]), KILL);
        assert_eq!(call(&p, libc::SYS_ioctl, &[vm, 0xae01]), KILL);
        let unregister = KVM_UNREGISTER_COALESCED_MMIO;
        assert_eq!(call(&p, libc::SYS_ioctl, &[vm, unregister]), ALLOW);
        assert_eq!(call(&p, libc::SYS_ioctl, &[vm + 1, unregister]), KILL);
        assert_eq!(call(&p, libc::SYS_ioctl, &[vm | 1 << 32, unregister]), KILL);
        let (rw, exec) = (
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            libc::PROT_EXEC as u64,
        );
        for nr in [libc::SYS_mmap, libc::SYS_mprotect] {
            assert_eq!(call(&p, nr, &[0, 4096, rw | 1 << 40]), ALLOW);
            assert_eq!(call(&p, nr, &[0, 4096, rw | exec]), KILL);
        }
        assert_eq!(call(&p, libc::SYS_fcntl, &[3, libc::F_GETFD as u64]), ALLOW);
        assert_eq!(call(&p, libc::SYS_fcntl, &[3, libc::F_SETFD as u64]), KILL);
        for nr in [libc::SYS_pread64, libc::SYS_pwrite64, libc::SYS_fdatasync] {
            assert_eq!(call(&p, nr, &[disk]), ALLOW);
            assert_eq!(call(&p, nr, &[disk + 1]), KILL);
        }
        for nr in [
            libc::SYS_openat,
            libc::SYS_clone3,
            libc::SYS_execve,
            libc::SYS_socket,
        ] {
            assert_eq!(call(&p, nr, &[]), KILL, "syscall {nr}");
        }
        // x32 numbers and other architectures are not what they seem.
        assert_eq!(call(&p, libc::SYS_write | 0x4000_0000, &[]), KILL);
        assert_eq!(verdict(&p, 0x4000_0028, libc::SYS_write, [0; 6]), KILL);
    }

    #[test]
    fn without_a_disk_or_coalesced_output_their_calls_are_killed() {
        let p = filter(None, None).unwrap();
        assert_eq!(call(&p, libc::SYS_ioctl, &[3, KVM_RUN]), ALLOW);
        assert_eq!(
            call(&p, libc::SYS_ioctl, &[5, KVM_UNREGISTER_COALESCED_MMIO]),
            KILL
        );
        assert_eq!(call(&p, libc::SYS_pread64, &[7]), KILL);
        assert!(p.len() < 64, "{} instructions", p.len());
    }

    #[test]
    fn compiles_and_confines_a_thread() {
        let program = filter(None, None).unwrap();
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
