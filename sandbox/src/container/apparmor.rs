//! AppArmor for runc containers. On a host with AppArmor, `RuntimeDefault` confines the
//! container with crid's own default profile (loaded with `apparmor_parser` the first time it
//! is needed) and `Localhost` with a profile the administrator loaded; `Unconfined` (and
//! `RuntimeDefault` for privileged containers) leaves runc's own confinement. On a host
//! without AppArmor the default is a no-op and a `Localhost` profile is refused: confinement
//! that was asked for and cannot be given must not be skipped silently.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::container::config::{AppArmorProfile, SecurityContext};
use crate::error::{SandboxError, invalid};

/// The name of crid's default profile.
pub const DEFAULT_PROFILE: &str = "crid-default";

/// Whether the kernel enforces AppArmor (one small sysfs read per call).
pub fn host_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|v| v.trim() == "Y")
}

/// Checks a requested profile against the host (at CreateContainer, before anything is made).
pub fn validate(s: &SecurityContext, host: bool) -> Result<(), SandboxError> {
    if let AppArmorProfile::Localhost(name) = &s.apparmor {
        if name.is_empty()
            || name.len() > 255
            || name.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(invalid(format!("invalid AppArmor profile name {name:?}")));
        }
        if !host {
            return Err(invalid(format!(
                "AppArmor profile {name:?} requested, but this host does not enforce AppArmor"
            )));
        }
    }
    Ok(())
}

/// The profile the container's process gets (`process.apparmorProfile`), loading crid's
/// default profile when it is needed and not loaded yet. `dir` keeps the profile's source.
pub fn profile(
    s: &SecurityContext,
    host: bool,
    dir: &Path,
) -> Result<Option<String>, SandboxError> {
    validate(s, host)?;
    match &s.apparmor {
        AppArmorProfile::Unconfined => Ok(None),
        AppArmorProfile::RuntimeDefault if !host || s.privileged => Ok(None),
        AppArmorProfile::RuntimeDefault => {
            ensure_default_loaded(dir)?;
            Ok(Some(DEFAULT_PROFILE.to_owned()))
        }
        AppArmorProfile::Localhost(name) => Ok(Some(name.clone())),
    }
}

fn loaded(name: &str) -> bool {
    std::fs::read_to_string("/sys/kernel/security/apparmor/profiles")
        .is_ok_and(|list| list.lines().any(|l| l.split(" (").next() == Some(name)))
}

fn ensure_default_loaded(dir: &Path) -> Result<(), SandboxError> {
    if loaded(DEFAULT_PROFILE) {
        return Ok(());
    }
    let failed = |reason: String| SandboxError::FailedPrecondition {
        reason: format!("cannot load AppArmor profile {DEFAULT_PROFILE}: {reason}"),
    };
    std::fs::create_dir_all(dir).map_err(|e| SandboxError::io(dir, e))?;
    let path = dir.join(DEFAULT_PROFILE);
    std::fs::write(&path, default_profile_text()).map_err(|e| SandboxError::io(&path, e))?;
    // -K: no cache, -r: replace if a stale copy is loaded.
    let out = Command::new("apparmor_parser")
        .env_clear()
        .envs(crate::monitor::child_env())
        .arg("-Kr")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| failed(format!("apparmor_parser: {e}")))?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}

/// crid's default profile: what a container needs (files in its root, networking, the
/// capabilities runc gave it, signals from its monitor) and none of the ways out to the host:
/// mounting, writing kernel settings under /proc/sys and /sys, reading the kernel's memory or
/// firmware, tracing processes of other profiles.
pub fn default_profile_text() -> String {
    let name = DEFAULT_PROFILE;
    let mut rules = vec![
        "network,".to_owned(),
        "capability,".to_owned(),
        "file,".to_owned(),
        "umount,".to_owned(),
        "signal (receive) peer=unconfined,".to_owned(),
        format!("signal (send,receive) peer={name},"),
        format!("ptrace (trace,read,tracedby,readby) peer={name},"),
        "deny mount,".to_owned(),
        "deny pivot_root,".to_owned(),
        "deny /sys/** wklx,".to_owned(),
        "deny @{PROC}/sys/** wklx,".to_owned(),
    ];
    for path in ["/sys/firmware/**", "/sys/kernel/security/**"] {
        rules.push(format!("deny {path} rwklx,"));
    }
    for file in ["sysrq-trigger", "kcore", "kmem", "mem"] {
        rules.push(format!("deny @{{PROC}}/{file} rwklx,"));
    }
    let body: String = rules.iter().map(|r| format!("  {r}\n")).collect();
    format!(
        "#include <tunables/global>\n\nprofile {name} flags=(attach_disconnected,mediate_deleted) {{\n  #include <abstractions/base>\n\n{body}}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sc(apparmor: AppArmorProfile, privileged: bool) -> SecurityContext {
        SecurityContext {
            apparmor,
            privileged,
            ..Default::default()
        }
    }

    #[test]
    fn profiles_by_host_and_request() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Without AppArmor: the default and unconfined are no-ops, a named profile is refused.
        assert_eq!(
            profile(&sc(AppArmorProfile::Unconfined, false), false, d).unwrap(),
            None
        );
        assert_eq!(
            profile(&sc(AppArmorProfile::RuntimeDefault, false), false, d).unwrap(),
            None
        );
        let e = profile(
            &sc(AppArmorProfile::Localhost("p1".into()), false),
            false,
            d,
        )
        .unwrap_err();
        assert!(matches!(e, SandboxError::InvalidArgument { .. }), "{e}");
        assert!(e.to_string().contains("does not enforce AppArmor"), "{e}");
        // With AppArmor: a named profile is passed on; privileged containers keep runc's.
        assert_eq!(
            profile(&sc(AppArmorProfile::Localhost("p1".into()), false), true, d).unwrap(),
            Some("p1".into())
        );
        assert_eq!(
            profile(&sc(AppArmorProfile::RuntimeDefault, true), true, d).unwrap(),
            None
        );
        assert_eq!(
            profile(&sc(AppArmorProfile::Unconfined, false), true, d).unwrap(),
            None
        );
        // Nothing was written for any of these.
        assert_eq!(std::fs::read_dir(d).unwrap().count(), 0);
    }

    #[test]
    fn bad_profile_names_are_refused() {
        for name in ["", "a b", "a\nb", "a\0b", &"x".repeat(256)] {
            let e = validate(&sc(AppArmorProfile::Localhost(name.into()), false), true);
            assert!(e.is_err(), "{name:?}");
        }
        assert!(
            validate(
                &sc(AppArmorProfile::Localhost("k8s-nginx".into()), false),
                true
            )
            .is_ok()
        );
    }

    #[test]
    fn the_default_profile_denies_mounts_and_kernel_knobs() {
        let text = default_profile_text();
        assert!(
            text.contains("profile crid-default flags=(attach_disconnected,mediate_deleted) {")
        );
        for rule in [
            "deny mount,",
            "deny @{PROC}/sysrq-trigger rwklx,",
            "deny /sys/kernel/security/** rwklx,",
            "ptrace (trace,read,tracedby,readby) peer=crid-default,",
        ] {
            assert!(text.contains(rule), "{rule}");
        }
        // The profile compiles, where apparmor_parser is installed (it need not be loaded:
        // -Q skips the kernel).
        let parser = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join("apparmor_parser"))
            .find(|p| p.is_file());
        let Some(parser) = parser else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI installs apparmor_parser (scripts/deps.sh)"
            );
            eprintln!("apparmor_parser not installed: profile syntax not checked");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(DEFAULT_PROFILE);
        std::fs::write(&file, &text).unwrap();
        let out = Command::new(parser).arg("-QK").arg(&file).output().unwrap();
        assert!(
            out.status.success(),
            "{}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
