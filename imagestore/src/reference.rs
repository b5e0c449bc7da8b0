//! Image references (`[registry/]repository[:tag][@digest]`) in their fully qualified form, the
//! way containerd names images: `busybox` is `docker.io/library/busybox:latest`.

use std::fmt;

use oci_client::Reference;

use crate::ImageError;

/// References longer than this are refused before parsing.
const MAX_REFERENCE_LEN: usize = 4096;
/// The longest repository name (distribution's `NameTotalLengthMax`).
const MAX_NAME_LEN: usize = 255;
const DEFAULT_TAG: &str = "latest";
const DOCKER_HUB: &str = "docker.io";

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
        // Parsed by hand: oci-spec's `Reference::from_str` compiles a reference regex that
        // keeps about 7 MiB of heap alive for the daemon's lifetime.
        let parts = split_reference(s).map_err(bad)?;
        if parts.repository.len() > MAX_NAME_LEN {
            return Err(bad("repository name too long"));
        }
        if parts.repository.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad("repository name must be lowercase"));
        }
        if let Some(d) = parts.digest {
            crate::content::digest_hex(d).map_err(|_| bad("only sha256 digests are supported"))?;
        }
        // Without tag or digest a reference means `:latest`.
        let tag = match (parts.tag, parts.digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (t, _) => t.map(str::to_owned),
        };
        let registry = parts.registry.to_owned();
        let repository = parts.repository.clone();
        let inner = match (parts.tag, parts.digest) {
            (Some(t), Some(d)) => {
                Reference::with_tag_and_digest(registry, repository, t.to_owned(), d.to_owned())
            }
            (None, Some(d)) => Reference::with_digest(registry, repository, d.to_owned()),
            (t, None) => {
                Reference::with_tag(registry, repository, t.unwrap_or(DEFAULT_TAG).to_owned())
            }
        };
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

/// A reference split into its normalized parts.
#[derive(Debug, PartialEq)]
struct Parts<'a> {
    registry: &'a str,
    repository: String,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

/// Splits `s` by the grammar of distribution's `reference` package (the one oci-spec's regex
/// encodes): `[domain/]path[/path...][:tag][@digest]`, and normalizes the name as containerd
/// does (`busybox` is `docker.io/library/busybox`).
fn split_reference(s: &str) -> Result<Parts<'_>, &'static str> {
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        check_digest(d)?;
    }
    let last_slash = rest.rfind('/');
    let (name, tag) = match rest.rfind(':') {
        Some(colon) if last_slash.is_none_or(|sl| colon > sl) => {
            (&rest[..colon], Some(&rest[colon + 1..]))
        }
        _ => (rest, None),
    };
    if let Some(t) = tag {
        let ok = t.len() <= 128
            && t.bytes().next().is_some_and(is_word)
            && t.bytes().all(|b| is_word(b) || b == b'.' || b == b'-');
        if !ok {
            return Err("invalid tag");
        }
    }
    if name.is_empty() {
        return Err("empty name");
    }
    let components: Vec<&str> = name.split('/').collect();
    let (first, others) = components.split_first().ok_or("empty name")?;
    // The first component may be a domain when more follow; the rest are path components.
    let first_is_path = is_path_component(first);
    if !(first_is_path || (!others.is_empty() && is_domain(first))) {
        return Err("invalid reference format");
    }
    if !others.iter().all(|c| is_path_component(c)) {
        return Err("invalid reference format");
    }
    // distribution's splitDomain: a first component with a dot or a port, or `localhost`,
    // names the registry; anything else is a Docker Hub path.
    let (mut registry, remainder) = match name.split_once('/') {
        Some((left, right)) if left.contains(['.', ':']) || left == "localhost" => (left, right),
        _ => (DOCKER_HUB, name),
    };
    if registry == "index.docker.io" {
        registry = DOCKER_HUB;
    }
    let repository = if registry == DOCKER_HUB && !remainder.contains('/') {
        format!("library/{remainder}")
    } else {
        remainder.to_owned()
    };
    Ok(Parts {
        registry,
        repository,
        tag,
        digest,
    })
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// Dot-separated labels of letters, digits and inner hyphens, with an optional `:port`.
fn is_domain(c: &str) -> bool {
    let (host, port) = match c.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (c, None),
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        })
}

/// `algorithm:hex` with the lengths distribution checks for the sha2 family.
fn check_digest(d: &str) -> Result<(), &'static str> {
    let (alg, hex) = d.split_once(':').ok_or("invalid digest format")?;
    let alg_ok = alg.split(['-', '_', '+', '.']).all(|part| {
        part.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && part.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    if !alg_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("invalid digest format");
    }
    let want = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("unsupported digest algorithm"),
    };
    if hex.len() != want {
        return Err("invalid digest length");
    }
    Ok(())
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

    /// The hand-written parser agrees with oci-spec's regex-based one (which crid used
    /// before) on accepted references, their parts, and rejected ones.
    #[test]
    fn hand_parser_agrees_with_the_oci_spec_regex() {
        let long_path = format!("a/{}", "b".repeat(300));
        let cases = [
            "busybox",
            "test.com:tag",
            "test.com:5000",
            "test.com/repo:tag",
            "test:5000/repo",
            "test:5000/repo:tag",
            "test:5000/repo@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "test:5000/repo:tag@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "lowercase:Uppercase",
            "sub-dom1.foo.com/bar/baz/quux",
            "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
            "b.gcr.io/test.example.com/my-app:test.example.com",
            "xn--n3h.com/myimage:xn--n3h.com",
            "foo_bar.com:8080",
            "foo/foo_bar.com:8080",
            "opensuse/leap:15.3",
            "index.docker.io/library/busybox:1",
            "index.docker.io/busybox",
            "localhost/app",
            "localhost:5000/a/b/c:v1.2-rc_3",
            "127.0.0.1:5000/busybox:latest",
            "Registry.Example.COM/app",
            "a__b/c--d/e.f/g_h",
            "a___b",
            "a..b",
            "a-/b",
            "-a/b",
            "a/b/",
            "/a/b",
            "a//b",
            "a:b:c",
            "a:b/c",
            "a:",
            ":a",
            "a@",
            "a@sha256:",
            "a@sha256:abc",
            "a@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "a@sha512:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "a@md5:ffffffffffffffffffffffffffffffff",
            "a@1sha:ffffffffffffffffffffffffffffffff",
            "a@sha256:fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffg",
            "a:-tag",
            "a:.tag",
            "a:_tag",
            "UPPER/case",
            "host.io:port/a",
            "host.io:/a",
            "-host.io/a",
            "ho_st.io/a",
            &format!("a:{}", "t".repeat(128)),
            &format!("a:{}", "t".repeat(129)),
            &long_path,
            "a@b@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        ];
        for input in cases {
            let ours = split_reference(input)
                .ok()
                .filter(|p| p.repository.len() <= MAX_NAME_LEN);
            let theirs: Option<Reference> = input.parse().ok();
            match (&ours, &theirs) {
                (Some(p), Some(r)) => {
                    assert_eq!(p.registry, r.registry(), "{input}");
                    assert_eq!(p.repository, r.repository(), "{input}");
                    assert_eq!(p.digest, r.digest(), "{input}");
                    let tag = p.tag.or(p.digest.is_none().then_some(DEFAULT_TAG));
                    assert_eq!(tag, r.tag(), "{input}");
                }
                (None, None) => {}
                _ => panic!("{input}: ours {ours:?}, oci-spec {theirs:?}"),
            }
        }
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
