//! Image references as kubelet sends them (`PullImage`, `ImageStatus`, container images):
//! parsing never panics, a parsed reference prints as a reference that parses to itself, and
//! crid's hand-written parser agrees with the regex grammar of oci-client/oci-spec it replaced
//! (same acceptance, same registry, repository, tag and digest), apart from crid's own
//! extra rules (lowercase repositories, sha256 digests only, names of at most 255 bytes) and
//! non-ASCII input (the regex's `\w` is Unicode-aware, so oci-spec took `busybox:2М2` with a
//! Cyrillic letter; distribution's grammar is ASCII and so is crid's).
#![no_main]

use imagestore::ImageRef;
use libfuzzer_sys::fuzz_target;
use oci_client::Reference;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let ours = ImageRef::parse(s);
    let theirs: Option<Reference> = (s.len() <= 4096
        && !s.chars().any(|c| c.is_whitespace() || c.is_control()))
    .then(|| s.parse().ok())
    .flatten();
    let extra_rules = |t: &Reference| {
        !s.is_ascii()
            || t.repository().chars().any(|c| c.is_ascii_uppercase())
            || t.repository().len() > 255
            || t.digest().is_some_and(|d| !imagestore::fuzzing::valid_digest(d))
    };
    match (&ours, &theirs) {
        (Ok(r), Some(t)) => {
            assert_eq!(r.registry(), t.registry(), "{s:?}");
            assert_eq!(r.repository(), t.repository(), "{s:?}");
            assert_eq!(r.digest(), t.digest(), "{s:?}");
            assert_eq!(r.tag(), t.tag(), "{s:?}");
        }
        (Ok(r), None) => panic!("{s:?} is accepted as {r}, but not by the reference grammar"),
        (Err(e), Some(t)) if !extra_rules(t) => {
            panic!("{s:?} ({t:?}) is refused ({e}), but fits the reference grammar")
        }
        _ => {}
    }
    let Ok(r) = ours else { return };
    let printed = r.to_string();
    let again = ImageRef::parse(&printed)
        .unwrap_or_else(|e| panic!("{s:?} printed as {printed:?}, which does not parse: {e}"));
    assert_eq!(again, r, "{s:?} printed as {printed:?}");
    assert!(!r.registry().is_empty() && !r.repository().is_empty());
    if let Some(d) = r.digest() {
        assert!(imagestore::fuzzing::valid_digest(d), "{s:?}: digest {d:?}");
    }
});
