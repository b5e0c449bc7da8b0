//! urunc's unikernel description from an image: a `urunc.json` file, or the same keys as
//! manifest annotations / config labels (plain or base64 values). Nothing may panic; what is
//! accepted names files inside the rootfs only (relative, no `..`) and carries no control
//! characters onto the guest command line.
#![no_main]

use std::collections::HashMap;
use std::path::{Component, Path};

use imagestore::UnikernelSource;
use imagestore::unikernel::{UnikernelInfo, from_keys, from_urunc_json};
use libfuzzer_sys::fuzz_target;

fn inside(p: &Path) {
    assert!(!p.as_os_str().is_empty());
    assert!(
        p.components().all(|c| matches!(c, Component::Normal(_))),
        "{} leaves the rootfs",
        p.display()
    );
}

fn check(info: &UnikernelInfo) {
    inside(&info.binary);
    info.initrd.as_deref().map(inside);
    info.block.as_deref().map(inside);
    if let Some(m) = &info.block_mount_point {
        assert!(!m.components().any(|c| c == Component::ParentDir));
    }
    assert!(!info.cmdline.chars().any(char::is_control), "{:?}", info.cmdline);
    if let Some(v) = &info.version {
        assert!(!v.chars().any(char::is_control));
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = from_urunc_json(data) {
        check(&info);
    }
    // The same bytes as a map of annotations (keys are prefixed when they are not already).
    if let Ok(map) = serde_json::from_slice::<HashMap<String, String>>(data) {
        let map: HashMap<String, String> = map
            .into_iter()
            .map(|(k, v)| match k.starts_with("com.urunc.unikernel.") {
                true => (k, v),
                false => (format!("com.urunc.unikernel.{k}"), v),
            })
            .collect();
        if let Ok(Some(info)) = from_keys(&map, UnikernelSource::ManifestAnnotations) {
            check(&info);
        }
    }
});
