//! User namespaces (CRI `NamespaceOption.userns_options`): a pod in its own user namespace
//! (mode POD with one uid and one gid range), shared by all its containers, with the image's
//! files owned by the container's root and writable by it, and a volume id-mapped (reachable
//! under a 0700 host directory, its files the container's by their on-disk ids); and the
//! requests a runtime must
//! refuse (critest's cases). Skipped when the runtime's `Status` does not report user
//! namespaces for the default handler.

use std::fs::Permissions;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use anyhow::{Context, ensure};
use proto::cri;

use super::pods::{pod_config, remove_pod, run_pod};
use super::{TempDir, out, pull_busybox};
use crate::runner::{Env, Outcome, Test, TestResult};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "security/user-namespace-pod",
            run: |env| Box::pin(pod_user_namespace(env)),
        },
        Test {
            name: "security/user-namespace-refused",
            run: |env| Box::pin(refused(env)),
        },
    ]
}

fn mapping(host_id: u32) -> Vec<cri::IdMapping> {
    vec![cri::IdMapping {
        container_id: 0,
        host_id,
        length: 65536,
    }]
}

/// Distinct uid and gid ranges, so a swap shows.
const UID_BASE: u32 = 200_000;
const GID_BASE: u32 = 300_000;

/// `config` with its pod in a user namespace as `userns` says.
pub fn with_userns(
    mut config: cri::PodSandboxConfig,
    userns: cri::UserNamespace,
) -> cri::PodSandboxConfig {
    let ns = config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options
        .get_or_insert_with(Default::default);
    ns.userns_options = Some(userns);
    config
}

/// Whether the runtime reports user namespaces for the default handler.
async fn supported(env: &Env) -> anyhow::Result<bool> {
    super::default_handler_has(env, |f| f.user_namespaces).await
}

async fn pod_user_namespace(env: Env) -> TestResult {
    if !supported(&env).await? {
        return Ok(Outcome::Skipped(
            "the runtime reports no user namespace support".into(),
        ));
    }
    let Some(image) = pull_busybox(&env).await? else {
        return Ok(Outcome::Skipped("no test registry (--registry)".into()));
    };
    let mut config = with_userns(
        pod_config("userns"),
        cri::UserNamespace {
            mode: cri::NamespaceMode::Pod as i32,
            uids: mapping(UID_BASE),
            gids: mapping(GID_BASE),
        },
    );
    // A pod-wide PID namespace too: its init lives in the pod's user namespace.
    if let Some(ns) = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
    {
        ns.pid = cri::NamespaceMode::Pod as i32;
    }
    // A volume as kubelet keeps them: under a directory only root may enter (kubelet's
    // `/var/lib/kubelet` is 0700), a root-owned file only its owner may read.
    let host = TempDir::new("userns")?;
    std::fs::set_permissions(&host.0, Permissions::from_mode(0o700))?;
    let volume = host.0.join("volume");
    std::fs::create_dir(&volume)?;
    std::fs::write(volume.join("secret"), "s3cret")?;
    std::fs::set_permissions(volume.join("secret"), Permissions::from_mode(0o600))?;
    let pod = run_pod(&env, config.clone()).await?;
    let result = async {
        let mut ids = Vec::new();
        for name in ["first", "second"] {
            let mounts = match name {
                "first" => vec![
                    cri::Mount {
                        container_path: "/vol".into(),
                        host_path: volume.display().to_string(),
                        ..Default::default()
                    },
                    // An image volume: its layers id-mapped like the rootfs's.
                    cri::Mount {
                        container_path: "/imgvol".into(),
                        readonly: true,
                        image: Some(cri::ImageSpec {
                            image: image.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ],
                _ => vec![],
            };
            let command = vec!["sleep".into(), "3600".into()];
            let id =
                super::start_in_pod(&env, &pod, &config, &image, name, command, mounts).await?;
            ids.push(id);
        }
        let first = &ids[0];
        let squeeze = |s: String| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let uid_map = squeeze(out(&env, first, "cat /proc/self/uid_map").await?);
        ensure!(
            uid_map == format!("0 {UID_BASE} 65536"),
            "uid_map {uid_map:?}"
        );
        let gid_map = squeeze(out(&env, first, "cat /proc/self/gid_map").await?);
        ensure!(
            gid_map == format!("0 {GID_BASE} 65536"),
            "gid_map {gid_map:?}"
        );
        let who = out(&env, first, "echo $(id -u) $(id -g)").await?;
        ensure!(who == "0 0", "uid gid {who:?}");
        // The image's root-owned files are the container root's (not the overflow id 65534),
        // and it can write where root can.
        let owner = out(&env, first, "stat -c '%u %g' /bin /etc /imgvol/bin").await?;
        ensure!(
            squeeze(owner.clone()) == "0 0 0 0 0 0",
            "image (and image volume) files owned by {owner:?}"
        );
        let written = out(
            &env,
            first,
            "mkdir /made && echo x > /etc/written && stat -c '%u %g' /made /etc/written",
        )
        .await?;
        ensure!(
            squeeze(written.clone()) == "0 0 0 0",
            "new files owned by {written:?}"
        );
        // One user namespace for the pod; the pod's network namespace is its own (sysfs shows
        // the pod's interfaces), and the PID namespace is shared.
        let ns = |id: String| {
            let env = env.clone();
            async move { out(&env, &id, "readlink /proc/self/ns/user").await }
        };
        let (a, b) = (ns(ids[0].clone()).await?, ns(ids[1].clone()).await?);
        ensure!(
            a == b,
            "containers in different user namespaces: {a} vs {b}"
        );
        let sleeps = out(&env, &ids[1], "cat /proc/[0-9]*/comm | grep -c '^sleep$'").await?;
        ensure!(
            sleeps == "2",
            "{sleeps} sleep processes seen, want both containers'"
        );
        let lo = out(&env, first, "ls /sys/class/net").await?;
        ensure!(lo.contains("lo"), "/sys/class/net: {lo:?}");
        // The volume is id-mapped: its root-owned files are the container root's, and what the
        // container writes is owned on disk by the container's ids, not the pod's host range.
        let secret = out(
            &env,
            first,
            "stat -c '%u %g' /vol/secret && cat /vol/secret",
        )
        .await?;
        ensure!(
            squeeze(secret.clone()) == "0 0 s3cret",
            "volume file: {secret:?}"
        );
        out(&env, first, "echo y > /vol/new").await?;
        let meta = std::fs::metadata(volume.join("new")).context("the container's file")?;
        ensure!(
            (meta.uid(), meta.gid()) == (0, 0),
            "the container's file is owned by {}:{} on disk",
            meta.uid(),
            meta.gid()
        );
        Ok(())
    }
    .await;
    remove_pod(&env, &pod).await;
    result?;
    // Removing the container took its copy of the volume away, not the volume's files.
    ensure!(
        volume.join("secret").is_file() && volume.join("new").is_file(),
        "the volume's files are gone after RemovePodSandbox"
    );
    Ok(Outcome::Passed)
}

/// What containerd refuses and critest checks: two ranges, container id 0 unmapped, the
/// CONTAINER and TARGET modes; each `RunPodSandbox` fails with `INVALID_ARGUMENT`.
async fn refused(env: Env) -> TestResult {
    if !supported(&env).await? {
        return Ok(Outcome::Skipped(
            "the runtime reports no user namespace support".into(),
        ));
    }
    let mut two = mapping(UID_BASE);
    two.extend(mapping(UID_BASE + 65536));
    let unmapped_root = vec![cri::IdMapping {
        container_id: 1,
        host_id: UID_BASE,
        length: 65536,
    }];
    let cases = [
        ("two ranges", cri::NamespaceMode::Pod, two),
        (
            "container id 0 unmapped",
            cri::NamespaceMode::Pod,
            unmapped_root,
        ),
        ("mode CONTAINER", cri::NamespaceMode::Container, vec![]),
        ("mode TARGET", cri::NamespaceMode::Target, vec![]),
    ];
    for (what, mode, ids) in cases {
        let config = with_userns(
            pod_config("userns-bad"),
            cri::UserNamespace {
                mode: mode as i32,
                uids: ids.clone(),
                gids: ids,
            },
        );
        match run_pod(&env, config).await {
            Ok(id) => {
                remove_pod(&env, &id).await;
                anyhow::bail!("{what}: RunPodSandbox succeeded");
            }
            Err(e) => {
                let code = e
                    .downcast_ref::<tonic::Status>()
                    .map(tonic::Status::code)
                    .with_context(|| format!("{what}: {e:#}"))?;
                ensure!(
                    code == tonic::Code::InvalidArgument,
                    "{what}: {code:?}, want InvalidArgument ({e:#})"
                );
            }
        }
    }
    Ok(Outcome::Passed)
}
