//! Image references (`[registry/]repository[:tag][@digest]`) in their fully qualified form, the
//! way containerd names images: `busybox` is `docker.io/library/busybox:latest`.

use std::fmt;

use oci_client::Reference;

use crate::ImageError;

/// References longer than this are refused before parsing.
const MAX_REFERENCE_LEN: usize = 4096;

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    inner: Reference,
    /// The tag as written; `None` when only a digest was given.
    tag: Option<String>,
}

impl ImageRef {
    /// Parses and normalizes `s`. A reference without tag or digest means `:latest`.
    pub fn parse(s: &str) -> Result<ImageRef, ImageError> {
        let bad = |reason: &str| ImageError::InvalidReference {
            reference: s.chars().take(256).collect(),
            reason: reason.to_owned(),
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if s.len() > MAX_REFERENCE_LEN {
            return Err(bad("too long"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("contains whitespace or control characters"));
        }
        let inner: Reference = s
            .parse()
            .map_err(|e: oci_client::ParseError| bad(&e.to_string()))?;
        if inner.repository().chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad("repository name must be lowercase"));
        }
        if let Some(d) = inner.digest() {
            crate::content::digest_hex(d).map_err(|_| bad("only sha256 digests are supported"))?;
        }
        let tag = inner.tag().map(str::to_owned);
        Ok(ImageRef { inner, tag })
    }

    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&str> {
        self.inner.digest()
    }

    /// `registry/repository`, e.g. `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry(), self.repository())
    }

    /// `registry/repository:tag`, when the reference has a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag().map(|t| format!("{}:{}", self.name(), t))
    }

    /// `registry/repository@digest` for any digest of this repository.
    pub fn digested(&self, digest: &str) -> String {
        format!("{}@{}", self.name(), digest)
    }

    /// The reference oci-client fetches: by digest when there is one, else by tag.
    pub(crate) fn oci(&self) -> Reference {
        match self.digest() {
            Some(d) => Reference::with_digest(
                self.registry().to_owned(),
                self.repository().to_owned(),
                d.to_owned(),
            ),
            None => self.inner.clone(),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())?;
        if let Some(t) = self.tag() {
            write!(f, ":{t}")?;
        }
        if let Some(d) = self.digest() {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn short_names_are_normalized_like_containerd() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.tagged().unwrap(), "docker.io/library/busybox:latest");
        let r = ImageRef::parse("k8s/pause:3.10").unwrap();
        assert_eq!(r.to_string(), "docker.io/k8s/pause:3.10");
        let r = ImageRef::parse("registry.k8s.io/pause:3.10").unwrap();
        assert_eq!(r.registry(), "registry.k8s.io");
        assert_eq!(r.repository(), "pause");
    }

    #[test]
    fn registries_with_ports_and_digests() {
        let r = ImageRef::parse(&format!("127.0.0.1:5000/a/b@{D}")).unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "a/b");
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest(), Some(D));
        assert_eq!(r.digested(D), format!("127.0.0.1:5000/a/b@{D}"));
        let r = ImageRef::parse(&format!("localhost/x:1@{D}")).unwrap();
        assert_eq!(r.tag(), Some("1"));
        assert_eq!(r.oci().tag(), None);
        assert_eq!(r.oci().digest(), Some(D));
    }

    #[test]
    fn bad_references_are_invalid_argument() {
        for bad in [
            "",
            "UPPER/case",
            "a b",
            "busybox:",
            "busybox@sha256:abc",
            "busybox@md5:0123456789abcdef0123456789abcdef",
            "a/../b",
            "-x",
            "x\n",
        ] {
            let e = ImageRef::parse(bad).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{bad:?}");
        }
        let long = "a".repeat(5000);
        assert!(ImageRef::parse(&long).is_err());
    }
}
