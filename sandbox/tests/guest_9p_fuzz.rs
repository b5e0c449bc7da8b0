//! The freestanding test guest's 9P client (tests/guests/freestanding/ninep.h) against a fake
//! device that answers with random, truncated, oversized and almost-right replies
//! (fuzz_ninep.c), built for the host with AddressSanitizer and UBSan: no access outside the
//! client's buffers, no unbounded loop (at most 2000 requests per run), whatever the replies.
//!
//! Needs gcc with its sanitizer runtimes (Debian's gcc has them); in CI (CI=true) their
//! absence fails.

use std::path::Path;
use std::process::Command;

#[test]
fn the_guest_9p_client_survives_random_replies() {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests/freestanding/fuzz_ninep.c");
    let exe = dir.path().join("fuzz_ninep");
    let built = Command::new("gcc")
        .args(["-O1", "-g", "-Wall", "-Wextra", "-Werror"])
        .args(["-fsanitize=address,undefined", "-fno-sanitize-recover=all"])
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .status();
    if !matches!(built, Ok(s) if s.success()) {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("cannot build {}: {built:?}", src.display());
        }
        eprintln!("skipped: cannot build {}: {built:?}", src.display());
        return;
    }
    for seed in ["1", "2", "3"] {
        let out = Command::new(&exe)
            .args(["20000", seed])
            // LeakSanitizer needs ptrace, which a container may not allow; nothing is
            // allocated anyway.
            .env("ASAN_OPTIONS", "detect_leaks=0")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("fuzz_ninep: 20000 runs"),
            "seed {seed}: {:?}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
