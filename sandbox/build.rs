//! Builds crid's PCI firmware (`pcishim/`, freestanding C, `gcc -m32`, a 64 KiB ROM image) into
//! OUT_DIR, where `vm::pcishim` embeds it. crid ships it inside its binary: no separate file to
//! install.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let src = dir.join("pcishim");
    for file in ["build.sh", "shim.c", "shim.ld", "pvh.h"] {
        println!("cargo:rerun-if-changed={}", src.join(file).display());
    }
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it")).join("pcishim.rom");
    let status = Command::new("sh")
        .arg(src.join("build.sh"))
        .arg(&out)
        .status()
        .expect("cannot run sh for pcishim/build.sh");
    assert!(
        status.success(),
        "pcishim/build.sh failed ({status}): the PCI firmware needs an x86 gcc, GNU ld and objcopy (Debian: gcc, binutils)"
    );
}
