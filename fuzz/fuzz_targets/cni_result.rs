//! What CNI plugins print: ADD results of every spec version (the plugin is a separate binary
//! and may be anything) and network configuration lists from `conf_dir`. Nothing may panic; a
//! parsed result keeps interface indexes in range and round-trips through the result cache's
//! JSON.
#![no_main]

use std::path::Path;

use cni::{CniResult, NetworkConfigList};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(r) = CniResult::parse(&value) {
            for ip in &r.ips {
                if let Some(i) = ip.interface {
                    assert!(i < r.interfaces.len());
                }
            }
            let ips = r.pod_ips();
            assert!(ips.len() <= r.ips.len());
            let json = serde_json::to_vec(&r).unwrap();
            let back: CniResult = serde_json::from_slice(&json).unwrap();
            assert_eq!(back, r);
        }
    }
    for single in [false, true] {
        if let Ok(list) = NetworkConfigList::parse(data, single, Path::new("/fuzz.conflist")) {
            let _ = list.to_json();
            let _ = list.plugin_types();
            let _ = list.version();
        }
    }
});
