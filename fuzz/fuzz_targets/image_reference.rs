//! Image references as kubelet sends them (`PullImage`, `ImageStatus`, container images):
//! parsing never panics, and a parsed reference prints as a reference that parses to itself.
#![no_main]

use imagestore::ImageRef;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(r) = ImageRef::parse(s) else {
        return;
    };
    let printed = r.to_string();
    let again = ImageRef::parse(&printed)
        .unwrap_or_else(|e| panic!("{s:?} printed as {printed:?}, which does not parse: {e}"));
    assert_eq!(again, r, "{s:?} printed as {printed:?}");
    assert!(!r.registry().is_empty() && !r.repository().is_empty());
    if let Some(d) = r.digest() {
        assert!(imagestore::fuzzing::valid_digest(d), "{s:?}: digest {d:?}");
    }
});
