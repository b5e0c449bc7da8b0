//! Container security contexts: user and groups (by id and by name from the image's
//! /etc/passwd and /etc/group), supplemental groups, read-only root filesystem, privileged,
//! added and dropped capabilities, no_new_privs, masked and read-only paths, seccomp profiles
//! (RuntimeDefault, Unconfined, Localhost), AppArmor (RuntimeDefault, an unknown Localhost
//! profile refused; skipped on hosts without AppArmor). Each test runs a
//! long-lived busybox container in a fresh pod and looks from inside with ExecSync; the pod is
//! removed again, also when a check fails.

use std::collections::HashMap;

use anyhow::{Context, ensure};
use proto::cri;

use super::pods::{pod_config, remove_pod, run_pod};
use super::{out, sh};
use crate::runner::{Env, Outcome, Test, TestResult};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "security/run-as-user-and-group",
            run: |env| Box::pin(run_as_user_group(env)),
        },
        Test {
            name: "security/run-as-username",
            run: |env| Box::pin(run_as_username(env)),
        },
        Test {
            name: "security/supplemental-groups-strict",
            run: |env| Box::pin(supplemental_groups_strict(env)),
        },
        Test {
            name: "security/supplemental-groups",
            run: |env| Box::pin(supplemental_groups(env)),
        },
        Test {
            name: "security/readonly-rootfs",
            run: |env| Box::pin(readonly_rootfs(env)),
        },
        Test {
            name: "security/privileged",
            run: |env| Box::pin(privileged(env)),
        },
        Test {
            name: "security/capabilities-add-drop",
            run: |env| Box::pin(capabilities(env)),
        },
        Test {
            name: "security/no-new-privs",
            run: |env| Box::pin(no_new_privs(env)),
        },
        Test {
            name: "security/masked-and-readonly-paths",
            run: |env| Box::pin(masked_paths(env)),
        },
        Test {
            name: "security/seccomp-profiles",
            run: |env| Box::pin(seccomp_profiles(env)),
        },
        Test {
            name: "security/apparmor",
            run: |env| Box::pin(apparmor(env)),
        },
    ]
}

// Capability bit numbers (linux/capability.h).
const CAP_CHOWN: u32 = 0;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// A pod with one running `sleep` container configured by `security`; `check` gets the
/// container id. `pod_privileged` asks for a privileged sandbox (needed for privileged
/// containers).
async fn in_container<F, Fut>(
    env: Env,
    tag: &str,
    pod_privileged: bool,
    security: cri::LinuxContainerSecurityContext,
    check: F,
) -> TestResult
where
    F: FnOnce(Env, String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let Some(image) = super::pull_busybox(&env).await? else {
        return Ok(Outcome::Skipped("no test registry (--registry)".into()));
    };
    let mut config = pod_config(tag);
    if pod_privileged {
        if let Some(sc) = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
        {
            sc.privileged = true;
        }
    }
    let container = cri::ContainerConfig {
        command: vec!["sleep".into(), "3600".into()],
        labels: HashMap::from([("name".to_string(), "sec".to_string())]),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                // As kubelet does: the container's namespaces follow the pod's.
                namespace_options: super::pod_namespace_options(&config),
                ..security
            }),
            ..Default::default()
        }),
        ..super::container("sec", &image)
    };
    let pod = run_pod(&env, config.clone()).await?;
    let result = async {
        let id = super::create_start_in_pod(&env, &pod, &config, container).await?;
        check(env.clone(), id).await
    }
    .await;
    remove_pod(&env, &pod).await;
    result.map(|()| Outcome::Passed)
}

/// The effective capability set of the container's main process (PID 1 may be the pod's
/// holder in a shared PID namespace, so read our own: exec inherits the container's set).
async fn cap_eff(env: &Env, id: &str) -> anyhow::Result<u64> {
    let line = out(env, id, "grep '^CapEff:' /proc/self/status").await?;
    let hex = line.split_whitespace().nth(1).context("no CapEff value")?;
    u64::from_str_radix(hex, 16).with_context(|| format!("CapEff {hex:?}"))
}

fn has(caps: u64, bit: u32) -> bool {
    caps & (1u64 << bit) != 0
}

fn groups(ids: &str) -> Vec<i64> {
    ids.split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect()
}

async fn run_as_user_group(env: Env) -> TestResult {
    let sc = cri::LinuxContainerSecurityContext {
        run_as_user: Some(cri::Int64Value { value: 1001 }),
        run_as_group: Some(cri::Int64Value { value: 1002 }),
        ..Default::default()
    };
    in_container(env, "sec-uid", false, sc, |env, id| async move {
        let ids = out(&env, &id, "echo $(id -u) $(id -g)").await?;
        ensure!(ids == "1001 1002", "uid gid {ids:?}, want \"1001 1002\"");
        // The main process too (PID 1 of the container's own PID namespace), not only the exec.
        let main = out(&env, &id, "awk '/^(Uid|Gid):/ {print $2}' /proc/1/status").await?;
        ensure!(
            main.split_whitespace().collect::<Vec<_>>() == ["1001", "1002"],
            "PID 1 uid/gid {main:?}"
        );
        Ok(())
    })
    .await
}

async fn run_as_username(env: Env) -> TestResult {
    // The busybox fixture's /etc/passwd has crid 1234:1234, /etc/group adds it to 2345.
    let sc = cri::LinuxContainerSecurityContext {
        run_as_username: "crid".into(),
        ..Default::default()
    };
    in_container(env, "sec-uname", false, sc, |env, id| async move {
        let ids = out(&env, &id, "echo $(id -u) $(id -g)").await?;
        ensure!(ids == "1234 1234", "uid gid {ids:?}, want \"1234 1234\"");
        let all = groups(&out(&env, &id, "id -G").await?);
        ensure!(
            all.contains(&2345),
            "groups {all:?} lack 2345 from /etc/group"
        );
        Ok(())
    })
    .await
}

/// SupplementalGroupsPolicy Strict (critest's "SupplementalGroupsPolicy"): the user's groups
/// in the image's /etc/group are not added, the asked ones are; ContainerStatus reports the
/// identity the process has. Skipped when the runtime does not report the feature.
async fn supplemental_groups_strict(env: Env) -> TestResult {
    if !super::runtime_status(&env)
        .await?
        .features
        .is_some_and(|f| f.supplemental_groups_policy)
    {
        return Ok(Outcome::Skipped(
            "the runtime does not report SupplementalGroupsPolicy".into(),
        ));
    }
    // The busybox fixture's /etc/group adds crid (1234) to 2345.
    let sc = cri::LinuxContainerSecurityContext {
        run_as_user: Some(cri::Int64Value { value: 1234 }),
        supplemental_groups: vec![3001],
        supplemental_groups_policy: cri::SupplementalGroupsPolicy::Strict as i32,
        ..Default::default()
    };
    in_container(env, "sec-groups-strict", false, sc, |env, id| async move {
        let mut all = groups(&out(&env, &id, "id -G").await?);
        all.sort_unstable();
        all.dedup();
        ensure!(all == [1234, 3001], "groups {all:?}, want [1234, 3001]");
        let user = env
            .cri
            .runtime
            .clone()
            .container_status(cri::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await
            .context("ContainerStatus")?
            .into_inner()
            .status
            .and_then(|s| s.user)
            .and_then(|u| u.linux)
            .context("ContainerStatus has no user")?;
        let mut reported = user.supplemental_groups.clone();
        reported.sort_unstable();
        ensure!(
            (user.uid, user.gid, reported.as_slice()) == (1234, 1234, &[1234, 3001][..]),
            "ContainerStatus user {user:?}"
        );
        Ok(())
    })
    .await
}

async fn supplemental_groups(env: Env) -> TestResult {
    let sc = cri::LinuxContainerSecurityContext {
        run_as_user: Some(cri::Int64Value { value: 1001 }),
        run_as_group: Some(cri::Int64Value { value: 1002 }),
        supplemental_groups: vec![3001, 3002],
        ..Default::default()
    };
    in_container(env, "sec-groups", false, sc, |env, id| async move {
        let all = groups(&out(&env, &id, "id -G").await?);
        for g in [1002, 3001, 3002] {
            ensure!(all.contains(&g), "groups {all:?} lack {g}");
        }
        Ok(())
    })
    .await
}

async fn readonly_rootfs(env: Env) -> TestResult {
    let sc = cri::LinuxContainerSecurityContext {
        readonly_rootfs: true,
        ..Default::default()
    };
    in_container(env, "sec-ro", false, sc, |env, id| async move {
        let (code, _, _) = sh(&env, &id, "echo x > /written-by-test").await?;
        ensure!(code != 0, "wrote to a read-only root filesystem");
        let (code, _, _) = sh(&env, &id, "mkdir /bin/newdir").await?;
        ensure!(
            code != 0,
            "created a directory on a read-only root filesystem"
        );
        Ok(())
    })
    .await
}

async fn privileged(env: Env) -> TestResult {
    // An ordinary container lacks CAP_SYS_ADMIN; a privileged one has it (and more devices).
    let plain = in_container(
        env.clone(),
        "sec-unpriv",
        false,
        cri::LinuxContainerSecurityContext::default(),
        |env, id| async move {
            let caps = cap_eff(&env, &id).await?;
            ensure!(
                !has(caps, CAP_SYS_ADMIN),
                "CapEff {caps:x} has CAP_SYS_ADMIN"
            );
            ensure!(has(caps, CAP_CHOWN), "CapEff {caps:x} lacks CAP_CHOWN");
            Ok(())
        },
    )
    .await?;
    if !matches!(plain, Outcome::Passed) {
        return Ok(plain);
    }
    let sc = cri::LinuxContainerSecurityContext {
        privileged: true,
        ..Default::default()
    };
    in_container(env, "sec-priv", true, sc, |env, id| async move {
        let caps = cap_eff(&env, &id).await?;
        ensure!(
            has(caps, CAP_SYS_ADMIN) && has(caps, CAP_NET_ADMIN),
            "privileged CapEff {caps:x}"
        );
        // Host devices are visible and /sys is writable.
        let (code, _, err) = sh(&env, &id, "ls /dev | grep -q -E '^(loop|tty1)'").await?;
        ensure!(code == 0, "no host devices in a privileged container {err}");
        // And CAP_NET_ADMIN works in the pod's network namespace.
        let script = "ip addr add 127.0.0.53/8 dev lo && ip addr del 127.0.0.53/8 dev lo";
        let (code, _, err) = sh(&env, &id, script).await?;
        ensure!(code == 0, "ip addr add in a privileged container: {err}");
        Ok(())
    })
    .await
}

async fn capabilities(env: Env) -> TestResult {
    let sc = cri::LinuxContainerSecurityContext {
        capabilities: Some(cri::Capability {
            add_capabilities: vec!["NET_ADMIN".into()],
            drop_capabilities: vec!["CHOWN".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    in_container(env, "sec-caps", false, sc, |env, id| async move {
        let caps = cap_eff(&env, &id).await?;
        ensure!(has(caps, CAP_NET_ADMIN), "CapEff {caps:x} lacks NET_ADMIN");
        ensure!(!has(caps, CAP_CHOWN), "CapEff {caps:x} still has CHOWN");
        ensure!(!has(caps, CAP_SYS_ADMIN), "CapEff {caps:x} has SYS_ADMIN");
        // And they work: chown is refused even for root.
        let (code, _, _) = sh(&env, &id, "touch /tmp/f && chown 1:1 /tmp/f").await?;
        ensure!(code != 0, "chown worked without CAP_CHOWN");
        Ok(())
    })
    .await
}

async fn no_new_privs(env: Env) -> TestResult {
    for want in [true, false] {
        let sc = cri::LinuxContainerSecurityContext {
            no_new_privs: want,
            ..Default::default()
        };
        let r = in_container(env.clone(), "sec-nnp", false, sc, |env, id| async move {
            let line = out(&env, &id, "grep '^NoNewPrivs:' /proc/self/status").await?;
            let got = line.split_whitespace().nth(1) == Some("1");
            ensure!(got == want, "no_new_privs {want}: {line:?}");
            Ok(())
        })
        .await?;
        if !matches!(r, Outcome::Passed) {
            return Ok(r);
        }
    }
    Ok(Outcome::Passed)
}

async fn masked_paths(env: Env) -> TestResult {
    let sc = cri::LinuxContainerSecurityContext {
        masked_paths: vec!["/proc/kcore".into(), "/etc/group".into()],
        readonly_paths: vec!["/proc/sys".into()],
        ..Default::default()
    };
    in_container(env, "sec-mask", false, sc, |env, id| async move {
        // A masked file reads as empty (/dev/null over it).
        let group = out(&env, &id, "cat /etc/group | wc -c").await?;
        ensure!(group == "0", "masked /etc/group has {group} bytes");
        let kcore = out(&env, &id, "head -c 16 /proc/kcore | wc -c").await?;
        ensure!(kcore == "0", "masked /proc/kcore gave {kcore} bytes");
        let (code, _, _) = sh(&env, &id, "echo 1 > /proc/sys/kernel/domainname").await?;
        ensure!(code != 0, "wrote to read-only /proc/sys");
        // Unmasked files are untouched.
        let passwd = out(&env, &id, "grep -c '^crid:' /etc/passwd").await?;
        ensure!(passwd == "1", "/etc/passwd changed: {passwd}");
        Ok(())
    })
    .await
}

/// The seccomp mode of the exec'd shell (`Seccomp:` in /proc/self/status: 0 none, 2 filter).
async fn seccomp_mode(env: &Env, id: &str) -> anyhow::Result<String> {
    let line = out(env, id, "grep '^Seccomp:' /proc/self/status").await?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned())
}

fn seccomp(profile: cri::security_profile::ProfileType, localhost: &str) -> cri::SecurityProfile {
    cri::SecurityProfile {
        profile_type: profile as i32,
        localhost_ref: localhost.into(),
    }
}

/// A profile file under the runtime's profile root, removed on drop.
struct ProfileFile(std::path::PathBuf);

impl Drop for ProfileFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn seccomp_profiles(env: Env) -> TestResult {
    use cri::security_profile::ProfileType;
    // RuntimeDefault: a filter is installed and namespace creation (`unshare`, refused by the
    // default profiles of Docker, containerd and crid to containers without CAP_SYS_ADMIN)
    // fails; everything ordinary works.
    let sc = cri::LinuxContainerSecurityContext {
        seccomp: Some(seccomp(ProfileType::RuntimeDefault, "")),
        ..Default::default()
    };
    let r = in_container(
        env.clone(),
        "sec-seccomp-default",
        false,
        sc,
        |env, id| async move {
            let mode = seccomp_mode(&env, &id).await?;
            ensure!(
                mode == "2",
                "RuntimeDefault: Seccomp mode {mode:?}, want 2 (filter)"
            );
            let (code, _, err) = sh(&env, &id, "unshare -U true").await?;
            ensure!(
                code != 0,
                "RuntimeDefault let unshare(CLONE_NEWUSER) through"
            );
            ensure!(
                err.contains("not permitted"),
                "unshare failed for another reason than EPERM: {err}"
            );
            out(&env, &id, "mkdir /tmp/ok && ls /tmp/ok").await?;
            Ok(())
        },
    )
    .await?;
    if !matches!(r, Outcome::Passed) {
        return Ok(r);
    }
    // Unconfined: no filter at all.
    let sc = cri::LinuxContainerSecurityContext {
        seccomp: Some(seccomp(ProfileType::Unconfined, "")),
        ..Default::default()
    };
    let r = in_container(
        env.clone(),
        "sec-seccomp-none",
        false,
        sc,
        |env, id| async move {
            let mode = seccomp_mode(&env, &id).await?;
            ensure!(mode == "0", "Unconfined: Seccomp mode {mode:?}, want 0");
            Ok(())
        },
    )
    .await?;
    if !matches!(r, Outcome::Passed) {
        return Ok(r);
    }
    // Localhost: the profile file decides; this one refuses mkdir. It lies under the runtime's
    // profile root when the run names one, else at an absolute path of its own, as kubelet
    // (which resolves profiles itself) and critest send them.
    let root = env.seccomp_profile_root.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("crid-conformance-seccomp-{}", std::process::id()))
    });
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    let profile = ProfileFile(root.join(format!("crid-conformance-{}.json", std::process::id())));
    let json = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{
            "names": ["mkdir", "mkdirat"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 1
        }]
    });
    std::fs::write(&profile.0, json.to_string())
        .with_context(|| format!("write {}", profile.0.display()))?;
    let sc = cri::LinuxContainerSecurityContext {
        seccomp: Some(seccomp(
            ProfileType::Localhost,
            &profile.0.display().to_string(),
        )),
        ..Default::default()
    };
    let own_dir = env.seccomp_profile_root.is_none();
    let privileged_sc = cri::LinuxContainerSecurityContext {
        privileged: true,
        ..sc.clone()
    };
    let r = in_container(
        env.clone(),
        "sec-seccomp-local",
        false,
        sc,
        |env, id| async move {
            let mode = seccomp_mode(&env, &id).await?;
            ensure!(mode == "2", "Localhost: Seccomp mode {mode:?}, want 2");
            let (code, _, err) = sh(&env, &id, "mkdir /tmp/refused").await?;
            ensure!(code != 0, "the Localhost profile let mkdir through");
            ensure!(
                err.contains("not permitted"),
                "mkdir failed otherwise: {err}"
            );
            // What the profile does not name still works.
            out(&env, &id, "touch /tmp/allowed && ls /tmp/allowed").await?;
            Ok(())
        },
    )
    .await;
    // A privileged container ignores the profile (critest: "should ignore a seccomp profile
    // that blocks setting hostname when privileged").
    let r = match r {
        Ok(Outcome::Passed) => {
            in_container(
                env,
                "sec-seccomp-priv",
                true,
                privileged_sc,
                |env, id| async move {
                    let mode = seccomp_mode(&env, &id).await?;
                    ensure!(mode == "0", "privileged: Seccomp mode {mode:?}, want 0");
                    out(&env, &id, "mkdir /tmp/allowed").await?;
                    Ok(())
                },
            )
            .await
        }
        other => other,
    };
    drop(profile);
    if own_dir {
        let _ = std::fs::remove_dir(&root);
    }
    r
}

/// Whether the host's kernel has AppArmor enabled.
fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|v| v.trim() == "Y")
}

/// An AppArmor profile in both fields: `apparmor` and, for runtimes older than CRI 1.30, the
/// deprecated `apparmor_profile` string (`runtime/default`, `localhost/<name>`), as kubelet
/// sends them.
#[allow(deprecated)] // apparmor_profile: containerd 1.6 reads only this one
fn apparmor_context(
    profile: cri::security_profile::ProfileType,
    localhost: &str,
) -> cri::LinuxContainerSecurityContext {
    use cri::security_profile::ProfileType;
    let legacy = match profile {
        ProfileType::RuntimeDefault => "runtime/default".to_owned(),
        ProfileType::Unconfined => "unconfined".to_owned(),
        ProfileType::Localhost => format!("localhost/{localhost}"),
    };
    cri::LinuxContainerSecurityContext {
        apparmor: Some(cri::SecurityProfile {
            profile_type: profile as i32,
            localhost_ref: localhost.into(),
        }),
        apparmor_profile: legacy,
        ..Default::default()
    }
}

async fn apparmor(env: Env) -> TestResult {
    use cri::security_profile::ProfileType;
    if !apparmor_enabled() {
        return Ok(Outcome::Skipped("host has no AppArmor".into()));
    }
    // RuntimeDefault: the container runs, confined by the runtime's profile.
    let r = in_container(
        env.clone(),
        "sec-apparmor-default",
        false,
        apparmor_context(ProfileType::RuntimeDefault, ""),
        |env, id| async move {
            let label = out(&env, &id, "cat /proc/self/attr/current").await?;
            ensure!(
                !label.is_empty() && !label.starts_with("unconfined"),
                "RuntimeDefault: the container runs {label:?}"
            );
            Ok(())
        },
    )
    .await?;
    if !matches!(r, Outcome::Passed) {
        return Ok(r);
    }
    // Localhost with a profile the kernel does not know: creating or starting fails.
    let missing = format!("crid-conformance-no-such-profile-{}", std::process::id());
    let r = in_container(
        env,
        "sec-apparmor-missing",
        false,
        apparmor_context(ProfileType::Localhost, &missing),
        // Reached only if the container started, which fails the test below.
        |_, _| async { Ok(()) },
    )
    .await;
    match r {
        Ok(Outcome::Passed) => anyhow::bail!("a container with an unloaded AppArmor profile ran"),
        Ok(skipped) => Ok(skipped),
        Err(e) => {
            let msg = format!("{e:#}");
            ensure!(
                msg.starts_with("CreateContainer") || msg.starts_with("StartContainer"),
                "the unknown Localhost profile failed elsewhere: {msg}"
            );
            Ok(Outcome::Passed)
        }
    }
}
