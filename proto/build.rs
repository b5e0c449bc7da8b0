//! Generates the CRI v1 bindings from `cri-api/api.proto` (see README.md for its origin).
//!
//! protoc 3.21 (Debian 12, what scripts/deps.sh installs) predates the `debug_redact` field
//! option that cri-api uses on the registry credentials of `AuthConfig`, so the options are
//! removed from a copy in `OUT_DIR` before protoc sees it; `src/lib.rs` then redacts those
//! fields by hand in `AuthConfig`'s `Debug`.

use std::path::PathBuf;

const PROTO: &str = "cri-api/api.proto";
const REDACT: &str = " [debug_redact = true]";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    let text = std::fs::read_to_string(PROTO)?;
    let redacted = text.matches(REDACT).count();
    // The hand-written Debug covers exactly these four fields; a new redacted field must be
    // added there before the bindings build.
    assert_eq!(
        redacted, 4,
        "api.proto has {redacted} debug_redact fields, lib.rs redacts 4"
    );
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("cri-api");
    std::fs::create_dir_all(&out)?;
    let copy = out.join("api.proto");
    std::fs::write(&copy, text.replace(REDACT, ""))?;
    tonic_prost_build::configure()
        .skip_debug(["runtime.v1.AuthConfig"])
        .compile_protos(&[copy.as_path()], &[out.as_path()])?;
    Ok(())
}
