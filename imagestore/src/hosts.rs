//! Registry host configuration in containerd's `hosts.toml` directory format:
//! `<config_path>/<registry[:port]>/hosts.toml`, falling back to `<config_path>/_default/hosts.toml`.
//!
//! ```toml
//! server = "https://registry-1.docker.io"
//! [host."http://127.0.0.1:5000"]
//!   capabilities = ["pull", "resolve"]
//!   skip_verify = true
//!   ca = "/etc/crid/certs.d/docker.io/ca.crt"
//! ```
//!
//! The `[host]` entries (mirrors) are tried in file order, then `server`. Keys crid does not
//! use (`header`, `client`, `override_path`, `dial_timeout`) are accepted and ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ImageError;

/// One endpoint that can serve a registry's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryHost {
    /// `true` for `http://` endpoints.
    pub plain_http: bool,
    /// `host[:port]`.
    pub host: String,
    /// May fetch blobs and manifests by digest.
    pub pull: bool,
    /// May resolve tags to digests.
    pub resolve: bool,
    pub skip_verify: bool,
    /// PEM files of extra trusted CAs, absolute.
    pub ca: Vec<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
struct HostsFile {
    server: Option<String>,
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    ca: Option<OneOrMany>,
    /// Kept as a table so the file order survives (toml's `preserve_order`).
    #[serde(default)]
    host: toml::Table,
}

#[derive(Debug, Default, Deserialize)]
struct HostEntry {
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    ca: Option<OneOrMany>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn paths(self, base: &Path) -> Vec<PathBuf> {
        let list = match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        };
        list.into_iter().map(|p| base.join(p)).collect()
    }
}

/// The endpoints for `registry`, in the order they are tried.
pub fn hosts_for(config_path: &Path, registry: &str) -> Result<Vec<RegistryHost>, ImageError> {
    // The registry name comes from a parsed reference, so it holds no '/'; still refuse
    // anything that could leave the directory.
    let safe = !registry.is_empty()
        && !registry.contains('/')
        && registry != ".."
        && registry != "."
        && !registry.starts_with('_');
    let mut file = None;
    if safe {
        let p = config_path.join(registry).join("hosts.toml");
        if p.is_file() {
            file = Some(p);
        }
    }
    if file.is_none() {
        let p = config_path.join("_default").join("hosts.toml");
        if p.is_file() {
            file = Some(p);
        }
    }
    match file {
        None => Ok(vec![default_host(registry)]),
        Some(path) => {
            let text = std::fs::read_to_string(&path).map_err(|e| ImageError::io(&path, e))?;
            parse(&text, registry, &path)
        }
    }
}

/// The endpoint used when no `hosts.toml` applies: `https://<registry>`, Docker Hub's real
/// host for `docker.io`, and plain http for loopback registries (as containerd falls back to).
pub fn default_host(registry: &str) -> RegistryHost {
    let host = if registry == "docker.io" {
        "registry-1.docker.io".to_owned()
    } else {
        registry.to_owned()
    };
    RegistryHost {
        plain_http: is_loopback(registry),
        host,
        pull: true,
        resolve: true,
        skip_verify: false,
        ca: Vec::new(),
    }
}

fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => registry,
    };
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

/// Parses the text of one `hosts.toml` that configures `registry`.
pub fn parse(text: &str, registry: &str, path: &Path) -> Result<Vec<RegistryHost>, ImageError> {
    let bad = |reason: String| ImageError::HostsConfig {
        path: path.to_owned(),
        reason,
    };
    let file: HostsFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    let base = path.parent().unwrap_or(Path::new("/"));
    let mut hosts = Vec::new();
    for (url, entry) in file.host {
        let entry: HostEntry = entry
            .try_into()
            .map_err(|e: toml::de::Error| bad(format!("host {url:?}: {e}")))?;
        let mut h = endpoint(&url).map_err(bad)?;
        apply(
            &mut h,
            entry.capabilities,
            entry.skip_verify,
            entry.ca,
            base,
        )
        .map_err(bad)?;
        hosts.push(h);
    }
    let mut server = match &file.server {
        Some(url) => endpoint(url).map_err(bad)?,
        None => default_host(registry),
    };
    apply(
        &mut server,
        file.capabilities,
        file.skip_verify,
        file.ca,
        base,
    )
    .map_err(bad)?;
    if !hosts
        .iter()
        .any(|h| h.host == server.host && h.plain_http == server.plain_http)
    {
        hosts.push(server);
    }
    Ok(hosts)
}

fn apply(
    h: &mut RegistryHost,
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    ca: Option<OneOrMany>,
    base: &Path,
) -> Result<(), String> {
    if let Some(caps) = capabilities {
        h.pull = false;
        h.resolve = false;
        for c in caps {
            match c.as_str() {
                "pull" => h.pull = true,
                "resolve" => h.resolve = true,
                "push" => {}
                other => return Err(format!("unknown capability {other:?}")),
            }
        }
    }
    if let Some(s) = skip_verify {
        h.skip_verify = s;
    }
    if let Some(ca) = ca {
        h.ca = ca.paths(base);
    }
    Ok(())
}

/// Splits `scheme://host[:port][/path]`. A missing scheme means https.
fn endpoint(url: &str) -> Result<RegistryHost, String> {
    let (plain_http, rest) = if let Some(r) = url.strip_prefix("http://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (false, r)
    } else if url.contains("://") {
        return Err(format!("{url:?}: only http and https are supported"));
    } else {
        (false, url)
    };
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h, p),
        None => (rest, ""),
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
    {
        return Err(format!("{url:?}: invalid host"));
    }
    let path = path.trim_end_matches('/');
    if !path.is_empty() && path != "v2" {
        tracing::warn!(
            url,
            "path prefixes of registry hosts are not supported; ignored"
        );
    }
    Ok(RegistryHost {
        plain_http,
        host: host.to_owned(),
        pull: true,
        resolve: true,
        skip_verify: false,
        ca: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_in_file_order_then_server() {
        let text = r#"
server = "https://registry-1.docker.io"

[host."https://z-mirror.example.com"]
  capabilities = ["pull"]
  ca = "ca.pem"

[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
  header = { x = ["y"] }

[host."https://a-mirror.example.com:8443/v2"]
  ca = ["/abs/ca1.pem", "rel/ca2.pem"]
"#;
        let hosts = parse(
            text,
            "docker.io",
            Path::new("/etc/crid/certs.d/docker.io/hosts.toml"),
        )
        .unwrap();
        let names: Vec<_> = hosts.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(
            names,
            [
                "z-mirror.example.com",
                "127.0.0.1:5000",
                "a-mirror.example.com:8443",
                "registry-1.docker.io"
            ]
        );
        assert!(hosts[0].pull && !hosts[0].resolve && !hosts[0].plain_http);
        assert_eq!(
            hosts[0].ca,
            [PathBuf::from("/etc/crid/certs.d/docker.io/ca.pem")]
        );
        assert!(hosts[1].plain_http && hosts[1].skip_verify && hosts[1].resolve);
        assert_eq!(
            hosts[2].ca,
            [
                PathBuf::from("/abs/ca1.pem"),
                PathBuf::from("/etc/crid/certs.d/docker.io/rel/ca2.pem")
            ]
        );
        assert!(hosts[3].pull && hosts[3].resolve && !hosts[3].skip_verify);
    }

    #[test]
    fn server_only_and_defaults() {
        let hosts = parse(
            "server = \"http://127.0.0.1:5000\"\nskip_verify = true\n",
            "127.0.0.1:5000",
            Path::new("/x/hosts.toml"),
        )
        .unwrap();
        assert_eq!(hosts.len(), 1);
        assert!(hosts[0].plain_http && hosts[0].skip_verify);
        // No server key: the registry itself, over https.
        let hosts = parse("", "quay.io", Path::new("/x/hosts.toml")).unwrap();
        assert_eq!(hosts, [default_host("quay.io")]);
        assert!(!hosts[0].plain_http);
        assert_eq!(default_host("docker.io").host, "registry-1.docker.io");
        assert!(default_host("localhost:5000").plain_http);
        assert!(default_host("127.0.0.1:5000").plain_http);
    }

    #[test]
    fn invalid_files_are_refused() {
        for text in [
            "server = 1",
            "server = \"ftp://x\"",
            "[host.\"https://x\"]\ncapabilities = [\"fly\"]",
            "[host.\"https://a b\"]",
            "not toml",
        ] {
            let e = parse(text, "r", Path::new("/x/hosts.toml")).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::FailedPrecondition, "{text}");
        }
    }

    #[test]
    fn directory_lookup_and_default_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            hosts_for(dir.path(), "example.com").unwrap(),
            [default_host("example.com")]
        );
        std::fs::create_dir_all(dir.path().join("_default")).unwrap();
        std::fs::write(
            dir.path().join("_default/hosts.toml"),
            "[host.\"https://mirror.local\"]\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("127.0.0.1:5000")).unwrap();
        std::fs::write(
            dir.path().join("127.0.0.1:5000/hosts.toml"),
            "server = \"http://127.0.0.1:5000\"\n",
        )
        .unwrap();
        let h = hosts_for(dir.path(), "127.0.0.1:5000").unwrap();
        assert_eq!(h.len(), 1);
        assert!(h[0].plain_http);
        let h = hosts_for(dir.path(), "example.com").unwrap();
        assert_eq!(h[0].host, "mirror.local");
        assert_eq!(h[1].host, "example.com");
    }
}
