//! CRI v1 gRPC bindings used by crid and its conformance suite.
//!
//! The types and the service traits are generated at build time (`build.rs`, prost and tonic)
//! from `cri-api/api.proto`, the CRI definition of Kubernetes 1.36 (k8s.io/cri-api v0.36.3; see
//! README.md). This crate holds no logic: domain crates never depend on it, only `crid`'s gRPC
//! layer and the `conformance` client do.

/// The `runtime.v1` package of cri-api.
#[allow(clippy::all, missing_docs)]
pub mod cri {
    tonic::include_proto!("runtime.v1");

    /// cri-api marks these credentials `debug_redact`; protoc 3.21 cannot read that option
    /// (see `build.rs`), so the redaction is written here: a logged request never shows them.
    impl std::fmt::Debug for AuthConfig {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let redact = |s: &str| if s.is_empty() { "" } else { "[REDACTED]" };
            f.debug_struct("AuthConfig")
                .field("username", &self.username)
                .field("password", &redact(&self.password))
                .field("auth", &redact(&self.auth))
                .field("server_address", &self.server_address)
                .field("identity_token", &redact(&self.identity_token))
                .field("registry_token", &redact(&self.registry_token))
                .finish()
        }
    }
}

/// The CRI API version crid implements, as reported by `Version`.
pub const CRI_API_VERSION: &str = "v1";

#[cfg(test)]
mod tests {
    use super::cri;

    #[test]
    fn auth_config_debug_hides_credentials() {
        let auth = cri::AuthConfig {
            username: "user".into(),
            password: "hunter2".into(),
            auth: "dXNlcjpodW50ZXIy".into(),
            identity_token: "id-token".into(),
            registry_token: "reg-token".into(),
            ..Default::default()
        };
        let shown = format!("{auth:?}");
        assert!(shown.contains("user"), "{shown}");
        for secret in ["hunter2", "dXNlcjpodW50ZXIy", "id-token", "reg-token"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
}
