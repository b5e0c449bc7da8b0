//! Ids of pods and containers: 64 hex digits from the kernel's random source, as containerd
//! makes them.

use std::path::Path;

use crate::error::SandboxError;

pub(crate) fn new_id() -> Result<String, SandboxError> {
    let mut bytes = [0u8; 32];
    let path = Path::new("/dev/urandom");
    std::io::Read::read_exact(
        &mut std::fs::File::open(path).map_err(|e| SandboxError::io(path, e))?,
        &mut bytes,
    )
    .map_err(|e| SandboxError::io(path, e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
