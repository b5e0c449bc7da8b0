//! The one error type of the crate.

use std::path::PathBuf;

use imagestore::ErrorKind;

/// Errors of CNI configuration loading, plugin invocation and network namespaces.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("no valid CNI network configuration in {dir}{}", detail_suffix(.detail))]
    NoNetwork { dir: PathBuf, detail: String },
    #[error("invalid CNI network configuration {path}: {reason}")]
    InvalidConfig { path: PathBuf, reason: String },
    #[error("CNI plugin {plugin:?} not found in {dirs}")]
    PluginNotFound { plugin: String, dirs: String },
    #[error("invalid CNI argument {name}: {reason}")]
    InvalidArgument { name: &'static str, reason: String },
    #[error("CNI plugin {plugin} failed on {command}: {msg}{}{}", detail_suffix(.details), code_suffix(*.code))]
    Plugin {
        plugin: String,
        command: &'static str,
        code: u32,
        msg: String,
        details: String,
    },
    #[error("CNI plugin {plugin} did not finish {command} within {secs} s and was killed")]
    Timeout {
        plugin: String,
        command: &'static str,
        secs: u64,
    },
    #[error("cannot run CNI plugin {plugin}")]
    Exec {
        plugin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin} returned an invalid result: {reason}")]
    BadResult { plugin: String, reason: String },
    #[error("CNI result cache {path}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("namespace {op} at {path}")]
    Netns {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A caller's step inside new namespaces, before they are pinned, failed; `step` names it
    /// and the namespace it acted on (e.g. "set hostname in UTS namespace").
    #[error("{step} {path}")]
    NsSetup {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

fn code_suffix(code: u32) -> String {
    if code == 0 {
        String::new()
    } else {
        format!(" [CNI error code {code}]")
    }
}

/// CNI error code 11: "try again later" (spec, section "Error").
const TRY_AGAIN_LATER: u32 = 11;

impl CniError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            CniError::NoNetwork { .. } | CniError::PluginNotFound { .. } => ErrorKind::Unavailable,
            CniError::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            CniError::Plugin { code, .. } if *code == TRY_AGAIN_LATER => ErrorKind::Unavailable,
            CniError::Plugin { msg, .. } if is_exhaustion(msg) => ErrorKind::ResourceExhausted,
            // A hanging plugin may well answer a retry; the caller's own deadline is not ours.
            CniError::Timeout { .. } => ErrorKind::Unavailable,
            CniError::Netns { source, .. } | CniError::Cache { source, .. }
                if source.raw_os_error() == Some(28) =>
            {
                ErrorKind::ResourceExhausted
            }
            _ => ErrorKind::Internal,
        }
    }

    /// The plugin (type) the error came from, when one did.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            CniError::Plugin { plugin, .. }
            | CniError::Timeout { plugin, .. }
            | CniError::Exec { plugin, .. }
            | CniError::BadResult { plugin, .. }
            | CniError::PluginNotFound { plugin, .. } => Some(plugin),
            _ => None,
        }
    }
}

/// IPAM plugins have no dedicated error code for an empty pool; host-local, whereabouts and
/// the dhcp plugin all say so in their message. This is the one place that reads plugin text.
fn is_exhaustion(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("no ip addresses available") || m.contains("no more ip") || m.contains("exhausted")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin_err(code: u32, msg: &str) -> CniError {
        CniError::Plugin {
            plugin: "host-local".into(),
            command: "ADD",
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    #[test]
    fn kinds() {
        assert_eq!(plugin_err(11, "busy").kind(), ErrorKind::Unavailable);
        assert_eq!(
            plugin_err(999, "failed to allocate for range 0: no IP addresses available in range set: 10.1.0.1-10.1.0.2").kind(),
            ErrorKind::ResourceExhausted
        );
        assert_eq!(plugin_err(7, "bad config").kind(), ErrorKind::Internal);
        let t = CniError::Timeout {
            plugin: "hang".into(),
            command: "ADD",
            secs: 2,
        };
        assert_eq!(t.kind(), ErrorKind::Unavailable);
        assert!(t.to_string().contains("hang"));
    }

    #[test]
    fn message_names_plugin_and_text() {
        let e = plugin_err(7, "bad config");
        let s = e.to_string();
        assert!(
            s.contains("host-local") && s.contains("bad config") && s.contains("7"),
            "{s}"
        );
        assert_eq!(e.plugin(), Some("host-local"));
    }
}
