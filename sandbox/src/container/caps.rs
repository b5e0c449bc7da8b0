//! Capability names as CRI requests and seccomp profiles give them, for the OCI spec
//! (`spec.rs`) and the default seccomp profile's capability conditions (`seccomp.rs`).

use std::str::FromStr;

use oci_spec::runtime::Capability;

use crate::SandboxError;

/// Parses a capability name (`NET_ADMIN` or `CAP_NET_ADMIN`, any case).
pub fn parse_capability(name: &str) -> Result<Capability, SandboxError> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare).map_err(|_| SandboxError::InvalidArgument {
        reason: format!("unknown capability {name:?}"),
    })
}
