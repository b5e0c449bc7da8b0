//! The VM backend's only unsafe code: the KVM API version ioctl.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;

/// `KVM_GET_API_VERSION` = `_IO(KVMIO = 0xAE, 0x00)`.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;

/// Asks an open `/dev/kvm` for its API version.
pub(crate) fn kvm_api_version(kvm: &std::fs::File) -> std::io::Result<i32> {
    // SAFETY: the fd is a valid open file for the duration of the call; KVM_GET_API_VERSION takes
    // no argument and touches no user memory.
    let ret = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
