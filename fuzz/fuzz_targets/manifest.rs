//! Registry documents: a manifest or index (OCI or Docker schema 2) and an image config, as
//! the pull path parses them, and the config's `config` object as container creation reads it
//! (argv merge, env, working dir, `User`). Nothing may panic; what parses must be safe to use
//! (digests that are valid file names, sizes that are not negative, ids in range).
#![no_main]

use imagestore::fuzzing::{Manifest, parse_config, parse_manifest, valid_digest};
use libfuzzer_sys::fuzz_target;
use sandbox::container::spec::{ImageConfig, merge_env, process_args};

fuzz_target!(|data: &[u8]| {
    let mut layers = 1;
    match parse_manifest(data) {
        Ok(Manifest::Index { entries, picked }) => {
            for (d, _) in &entries {
                assert!(valid_digest(d), "index entry digest {d:?}");
            }
            if let Some(p) = picked {
                assert!(entries.iter().any(|(d, _)| *d == p));
            }
        }
        Ok(Manifest::Image {
            config,
            layers: l,
            annotations: _,
        }) => {
            assert!(valid_digest(&config.0), "config digest {:?}", config.0);
            for (d, _) in &l {
                assert!(valid_digest(d), "layer digest {d:?}");
            }
            layers = l.len();
        }
        Err(_) => {}
    }
    if let Ok(ids) = parse_config(data, layers) {
        assert_eq!(ids.len(), layers);
        assert!(ids.iter().all(|d| valid_digest(d)));
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(image) = ImageConfig::parse(text) else {
        return;
    };
    let _ = process_args(&[], &[], &image);
    let env = merge_env(
        image.env.as_deref().unwrap_or_default(),
        &[("PATH".into(), "/bin".into())],
    );
    assert!(env.iter().any(|e| e == "PATH=/bin"));
    if let Some(user) = &image.user {
        if let Ok(u) = sandbox::container::user::resolve(user, None, "", None, &[], false, &[]) {
            assert!(
                u.uid <= i32::MAX as u32 && u.gid <= i32::MAX as u32,
                "{user:?}: {u:?}"
            );
        }
    }
});
