//! Images: pull by tag and digest (OCI, Docker, multi-arch, layered, zstd), status, list,
//! idempotent remove, filesystem usage, the error codes, unikernel recognition, and the
//! hostile images built by `crid-fixtures` (escapes, truncated layers, deep indexes) and
//! served by the in-process fake registry (digest and size lies, a huge manifest). After each
//! hostile pull nothing outside the store may have changed and the runtime must still answer.
//! Pulls with credentials go through an in-process proxy that demands HTTP Basic auth.

use std::os::unix::fs::MetadataExt;

use anyhow::{Context, bail, ensure};
use base64::Engine as _;
use proto::cri;
use serde_json::Value;
use tonic::Code;

use crate::fixtures::auth_proxy::AuthProxy;
use crate::fixtures::fake_registry::{Content, FakeRegistry};
use crate::fixtures::images::{
    ESCAPE_TARGETS, UNIKERNEL_BINARY, UNIKERNEL_CMDLINE, WHITEOUT_VICTIM,
};
use crate::fixtures::push::registry_digest;
use crate::runner::{Env, Outcome, Test, TestResult};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "images/pull-by-tag-and-status",
            run: |env| Box::pin(pull_by_tag(env)),
        },
        Test {
            name: "images/pull-by-digest",
            run: |env| Box::pin(pull_by_digest(env)),
        },
        Test {
            name: "images/docker-schema2",
            run: |env| Box::pin(docker_schema2(env)),
        },
        Test {
            name: "images/multiarch-picks-host-platform",
            run: |env| Box::pin(multiarch(env)),
        },
        Test {
            name: "images/layered-and-zstd-share-layers",
            run: |env| Box::pin(layered(env)),
        },
        Test {
            name: "images/pull-with-auth",
            run: |env| Box::pin(pull_with_auth(env)),
        },
        Test {
            name: "images/list-and-idempotent-remove",
            run: |env| Box::pin(list_remove(env)),
        },
        Test {
            name: "images/status-of-missing-image",
            run: |env| Box::pin(status_missing(env)),
        },
        Test {
            name: "images/fs-info",
            run: |env| Box::pin(fs_info(env)),
        },
        Test {
            name: "images/error-codes",
            run: |env| Box::pin(error_codes(env)),
        },
        Test {
            name: "images/security/hostile-layers",
            run: |env| Box::pin(hostile_layers(env)),
        },
        Test {
            name: "images/security/digest-and-size-lies",
            run: |env| Box::pin(digest_lies(env)),
        },
        Test {
            name: "images/unikernel/annotations",
            run: |env| Box::pin(unikernel_annotated(env)),
        },
        Test {
            name: "images/unikernel/urunc-json",
            run: |env| Box::pin(unikernel_urunc_json(env)),
        },
        Test {
            name: "images/unikernel/invalid-refused",
            run: |env| Box::pin(unikernel_invalid(env)),
        },
    ]
}

/// The test registry, or why the test cannot run. In CI a missing registry is a failure.
fn registry(env: &Env) -> anyhow::Result<Result<String, Outcome>> {
    match &env.registry {
        Some(r) => Ok(Ok(r.clone())),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            bail!("CRID_TEST_REGISTRY is not set (CI=true)")
        }
        None => Ok(Err(Outcome::Skipped(
            "no test registry (set CRID_TEST_REGISTRY or --registry)".into(),
        ))),
    }
}

macro_rules! registry_or_skip {
    ($env:expr) => {
        match registry(&$env)? {
            Ok(r) => r,
            Err(skip) => return Ok(skip),
        }
    };
}

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    })
}

async fn pull(env: &Env, image: &str) -> Result<String, tonic::Status> {
    pull_as(env, image, None).await
}

async fn pull_as(
    env: &Env,
    image: &str,
    auth: Option<cri::AuthConfig>,
) -> Result<String, tonic::Status> {
    env.cri
        .images
        .clone()
        .pull_image(cri::PullImageRequest {
            image: spec(image),
            auth,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

async fn pull_ok(env: &Env, image: &str) -> anyhow::Result<String> {
    let id = pull(env, image)
        .await
        .map_err(|s| anyhow::anyhow!("pull {image}: {:?} {}", s.code(), s.message()))?;
    ensure!(!id.is_empty(), "pull {image}: empty image_ref");
    Ok(id)
}

async fn status(
    env: &Env,
    image: &str,
    verbose: bool,
) -> anyhow::Result<(Option<cri::Image>, Value)> {
    let r = env
        .cri
        .images
        .clone()
        .image_status(cri::ImageStatusRequest {
            image: spec(image),
            verbose,
        })
        .await
        .with_context(|| format!("ImageStatus {image}"))?
        .into_inner();
    let info = r
        .info
        .get("info")
        .and_then(|i| serde_json::from_str(i).ok())
        .unwrap_or(Value::Null);
    Ok((r.image, info))
}

async fn remove(env: &Env, image: &str) -> anyhow::Result<()> {
    env.cri
        .images
        .clone()
        .remove_image(cri::RemoveImageRequest { image: spec(image) })
        .await
        .with_context(|| format!("RemoveImage {image}"))?;
    Ok(())
}

async fn list(env: &Env, filter: Option<&str>) -> anyhow::Result<Vec<cri::Image>> {
    Ok(env
        .cri
        .images
        .clone()
        .list_images(cri::ListImagesRequest {
            filter: filter.map(|f| cri::ImageFilter { image: spec(f) }),
        })
        .await
        .context("ListImages")?
        .into_inner()
        .images)
}

/// The runtime still answers.
async fn alive(env: &Env) -> anyhow::Result<()> {
    env.cri
        .runtime
        .clone()
        .version(cri::VersionRequest {
            version: "v1".into(),
        })
        .await
        .context("the runtime stopped answering")?;
    Ok(())
}

async fn digest_of(host: &str, repo: &str, tag: &str) -> anyhow::Result<String> {
    let (h, r, t) = (host.to_owned(), repo.to_owned(), tag.to_owned());
    tokio::task::spawn_blocking(move || registry_digest(&h, &r, &t))
        .await??
        .with_context(|| format!("{repo}:{tag} is not in the registry (did crid-fixtures run?)"))
}

async fn pull_by_tag(env: Env) -> TestResult {
    let reg = registry_or_skip!(env);
    let name = format!("{reg}/busybox:latest");
    let id = pull_ok(&env, &name).await?;
    let (img, info) = status(&env, &name, true).await?;
    let img = img.context("ImageStatus found no image after the pull")?;
    ensure!(img.id == id, "status id {} != pulled {id}", img.id);
    ensure!(
        img.repo_tags.contains(&name),
        "repo_tags {:?}",
        img.repo_tags
    );
    ensure!(img.size > 0, "size 0");
    // Status by id finds the same image.
    let (by_id, _) = status(&env, &id, false).await?;
    ensure!(by_id.is_some_and(|i| i.id == id), "ImageStatus by id");
    if !info.is_null() {
        ensure!(
            info.pointer("/unikernel").is_none_or(Value::is_null),
            "busybox reported as a unikernel: {info}"
        );
    }
    Ok(Outcome::Passed)
}

async fn pull_by_digest(env: Env) -> TestResult {
    let reg = registry_or_skip!(env);
    let digest = digest_of(&reg, "busybox", "latest").await?;
    let name = format!("{reg}/busybox@{digest}");
    let id = pull_ok(&env, &name).await?;
    let (img, _) = status(&env, &name, false).await?;
    let img = img.context("ImageStatus by digest found nothing")?;
    ensure!(img.id == id);
    ensure!(
        img.repo_digests.contains(&name),
        "repo_digests {:?}",
        img.repo_digests
    );
    // Same content as the tag.
    let by_tag = pull_ok(&env, &format!("{reg}/busybox:latest")).await?;
    ensure!(by_tag == id, "tag gives {by_tag}, digest gives {id}");
    Ok(Outcome::Passed)
}

async fn docker_schema2(env: Env) -> TestResult {
    let reg = registry_or_skip!(env);
    let name = format!("{reg}/busybox:docker");
    pull_ok(&env, &name).await?;
    let (img, _) = status(&env, &name, false).await?;
    ensure!(img.is_some(), "no status for {name}");
    Ok(Outcome::Passed)
}

async fn multiarch(env: Env) -> TestResult {
    let reg = registry_or_skip!(env);
    let host_image = pull_ok(&env, &format!("{reg}/busybox:latest")).await?;
    let id = pull_ok(&env, &format!("{reg}/busybox:multiarch")).await?;
    ensure!(
        id == host_image,
        "multiarch resolved to {id}, not this host's image {host_image}"
    );
    Ok(Outcome::Passed)
}

fn diff_ids(info: &Value) -> Vec<String> {
    info.pointer("/diffIds")
        .or_else(|| info.pointer("/imageSpec/rootfs/diff_ids"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn layered(env: Env) -> TestResult {
    let reg = registry_or_skip!(env);
    let mut ids = Vec::new();
    for tag in ["busybox:latest", "layered:v1", "layered:v2", "zstd:latest"] {
        let name = format!("{reg}/{tag}");
        pull_ok(&env, &name).await?;
        let (img, info) = status(&env, &name, true).await?;
        ensure!(img.is_some(), "no status for {name}");
        ids.push(diff_ids(&info));
    }
    if ids.iter().all(Vec::is_empty) {
        return Ok(Outcome::Skipped(
            "the runtime's verbose ImageStatus has no diff ids".into(),
        ));
    }
    let [bb, v1, v2, zstd] = &ids[..] else {
        bail!("four images expected");
    };
    ensure!(
        bb.len() == 1 && v1.len() == 2 && v2.len() == 3,
        "layer counts {ids:?}"
    );
    ensure!(
        v1[0] == bb[0] && v2[..2] == v1[..],
        "layers not shared: {ids:?}"
    );
    ensure!(
        zstd.len() == 2 && zstd[0] == bb[0],
        "zstd base layer differs: {ids:?}"
    );
    Ok(Outcome::Passed)
}

const AUTH_USER: &str = "crid-conformance";
const AUTH_PASSWORD: &str = "s3cret-pa55";

fn basic(user: &str, password: &str) -> Option<cri::AuthConfig> {
    Some(cri::AuthConfig {
        username: user.into(),
        password: password.into(),
        ..Default::default()
    })
}

async fn pull_with_auth(env: Env) -> TestResult {
    let reg = registry_or_skip!(env);
    let proxy = AuthProxy::start(&reg, AUTH_USER, AUTH_PASSWORD).await?;
    let name = format!("{}/busybox:latest", proxy.host());
    let result = pull_with_auth_checks(&env, &proxy, &name).await;
    // Also after a failed check; the proxy stops when dropped.
    let removed = remove(&env, &name).await;
    drop(proxy);
    result?;
    removed?;
    Ok(Outcome::Passed)
}

async fn pull_with_auth_checks(env: &Env, proxy: &AuthProxy, name: &str) -> anyhow::Result<()> {
    // The blobs may be in the store already (busybox from the registry itself): only resolving
    // the tag proves the credentials, and that must go through the proxy.
    remove(env, name).await?;
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    let refused: [(&str, Option<cri::AuthConfig>); 4] = [
        ("no credentials", None),
        ("a wrong password", basic(AUTH_USER, "wrong")),
        ("an unknown user", basic("nobody", AUTH_PASSWORD)),
        (
            "a wrong password in auth",
            Some(cri::AuthConfig {
                auth: b64(format!("{AUTH_USER}:wrong")),
                ..Default::default()
            }),
        ),
    ];
    for (what, auth) in refused {
        let before = proxy.refused();
        match pull_as(env, name, auth).await {
            Ok(id) => bail!("pull with {what} succeeded ({id})"),
            // The registry answered (401): not "unreachable", not the runtime's own fault.
            // The code itself differs (crid: NotFound, as for a missing repository;
            // containerd 1.6: Unknown), so only those are ruled out.
            Err(s) => ensure!(
                !matches!(
                    s.code(),
                    Code::Ok | Code::Unavailable | Code::DeadlineExceeded | Code::Internal
                ),
                "pull with {what}: {:?} ({}), expected an access error",
                s.code(),
                s.message()
            ),
        }
        ensure!(
            proxy.refused() > before,
            "pull with {what} failed without asking the registry"
        );
        ensure!(
            proxy.forwarded() == 0,
            "the proxy forwarded {} requests with {what}",
            proxy.forwarded()
        );
        let (img, _) = status(env, name, false).await?;
        ensure!(img.is_none(), "{name} is listed after a pull with {what}");
    }
    // Username and password.
    let id = pull_as(env, name, basic(AUTH_USER, AUTH_PASSWORD))
        .await
        .map_err(|s| {
            anyhow::anyhow!(
                "pull {name} with credentials: {:?} {}",
                s.code(),
                s.message()
            )
        })?;
    ensure!(!id.is_empty(), "pull {name}: empty image_ref");
    ensure!(
        proxy.forwarded() > 0,
        "the pull succeeded but nothing passed the proxy"
    );
    let (img, _) = status(env, name, false).await?;
    let img = img.context("ImageStatus found no image after the pull with credentials")?;
    ensure!(img.id == id, "status id {} != pulled {id}", img.id);
    ensure!(
        img.repo_tags.iter().any(|t| t == name),
        "repo_tags {:?}",
        img.repo_tags
    );
    // The `auth` field: base64 of "user:password".
    remove(env, name).await?;
    let (img, _) = status(env, name, false).await?;
    ensure!(img.is_none(), "{name} still has a status after RemoveImage");
    let forwarded = proxy.forwarded();
    let auth = Some(cri::AuthConfig {
        auth: b64(format!("{AUTH_USER}:{AUTH_PASSWORD}")),
        ..Default::default()
    });
    let again = pull_as(env, name, auth)
        .await
        .map_err(|s| anyhow::anyhow!("pull {name} with auth: {:?} {}", s.code(), s.message()))?;
    ensure!(
        again == id,
        "auth pull gave {again}, username/password pull {id}"
    );
    ensure!(
        proxy.forwarded() > forwarded,
        "the pull with auth succeeded but nothing passed the proxy"
    );
    let (img, _) = status(env, name, false).await?;
    ensure!(
        img.is_some_and(|i| i.id == id),
        "ImageStatus after the pull with auth"
    );
    Ok(())
}

async fn list_remove(env: Env) -> TestResult {
    let reg = registry_or_skip!(env);
    let name = format!("{reg}/zstd:latest");
    let id = pull_ok(&env, &name).await?;
    let all = list(&env, None).await?;
    ensure!(all.iter().any(|i| i.id == id), "ListImages lacks {name}");
    let filtered = list(&env, Some(&name)).await?;
    ensure!(
        filtered.len() == 1 && filtered[0].id == id,
        "filtered ListImages: {:?}",
        filtered.iter().map(|i| &i.id).collect::<Vec<_>>()
    );
    remove(&env, &name).await?;
    let (img, _) = status(&env, &name, false).await?;
    ensure!(img.is_none(), "{name} still has a status after RemoveImage");
    ensure!(
        !list(&env, None).await?.iter().any(|i| i.id == id),
        "{name} still listed after RemoveImage"
    );
    // Idempotent: removing again, by name and by id, succeeds.
    remove(&env, &name).await?;
    remove(&env, &id).await?;
    ensure!(
        list(&env, Some(&name)).await?.is_empty(),
        "filter still matches"
    );
    Ok(Outcome::Passed)
}

async fn status_missing(env: Env) -> TestResult {
    let reg = registry_or_skip!(env);
    let (img, _) = status(&env, &format!("{reg}/never-pulled:nope"), true).await?;
    ensure!(img.is_none(), "status of a missing image returned one");
    Ok(Outcome::Passed)
}

async fn fs_info(env: Env) -> TestResult {
    let reg = registry_or_skip!(env);
    pull_ok(&env, &format!("{reg}/busybox:latest")).await?;
    // Runtimes may measure usage periodically (containerd every stats_collect_period).
    let mut r = cri::ImageFsInfoResponse::default();
    for _ in 0..30 {
        r = env
            .cri
            .images
            .clone()
            .image_fs_info(cri::ImageFsInfoRequest {})
            .await?
            .into_inner();
        let used = r
            .image_filesystems
            .first()
            .and_then(|f| f.used_bytes.as_ref());
        if used.is_some_and(|u| u.value > 500_000) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let fs = r
        .image_filesystems
        .first()
        .context("no image filesystem reported")?;
    let mount = fs
        .fs_id
        .as_ref()
        .map(|f| f.mountpoint.clone())
        .unwrap_or_default();
    ensure!(!mount.is_empty(), "empty mountpoint");
    let used = fs.used_bytes.as_ref().map(|v| v.value).unwrap_or(0);
    let inodes = fs.inodes_used.as_ref().map(|v| v.value).unwrap_or(0);
    // busybox alone is about a megabyte and a few hundred inodes.
    ensure!(used > 500_000, "used_bytes {used}");
    ensure!(inodes > 100, "inodes_used {inodes}");
    ensure!(fs.timestamp > 0, "timestamp 0");
    Ok(Outcome::Passed)
}

async fn expect_code(env: &Env, image: &str, want: Code) -> anyhow::Result<tonic::Status> {
    match pull(env, image).await {
        Ok(id) => bail!("pull {image} succeeded ({id}), expected {want:?}"),
        Err(s) if s.code() == want => Ok(s),
        Err(s) => bail!(
            "pull {image}: {:?} ({}), expected {want:?}",
            s.code(),
            s.message()
        ),
    }
}

async fn error_codes(env: Env) -> TestResult {
    let reg = registry_or_skip!(env);
    expect_code(
        &env,
        &format!("{reg}/does-not-exist:latest"),
        Code::NotFound,
    )
    .await?;
    expect_code(&env, &format!("{reg}/busybox:no-such-tag"), Code::NotFound).await?;
    expect_code(&env, "UPPER/Case::bad@@ref", Code::InvalidArgument).await?;
    // Nothing listens on port 1.
    expect_code(&env, "127.0.0.1:1/busybox:latest", Code::Unavailable).await?;
    alive(&env).await?;
    Ok(Outcome::Passed)
}

/// No escape target exists, the whiteout victim is intact and /etc/passwd was not linked.
fn check_host(passwd_nlink: u64) -> anyhow::Result<()> {
    for t in ESCAPE_TARGETS {
        ensure!(
            std::fs::symlink_metadata(t).is_err(),
            "{t} exists: an image wrote outside the store"
        );
    }
    let victim = std::fs::read(WHITEOUT_VICTIM).context("the whiteout victim is gone")?;
    ensure!(victim == b"victim", "the whiteout victim changed");
    let nlink = std::fs::metadata("/etc/passwd")?.nlink();
    ensure!(nlink == passwd_nlink, "/etc/passwd link count changed");
    Ok(())
}

async fn hostile_layers(env: Env) -> TestResult {
    let reg = registry_or_skip!(env);
    for t in ESCAPE_TARGETS {
        let _ = std::fs::remove_file(t);
    }
    std::fs::write(WHITEOUT_VICTIM, b"victim")?;
    let passwd_nlink = std::fs::metadata("/etc/passwd")?.nlink();
    let result = async {
        let cases: &[(&str, Option<Code>)] = &[
            ("evil/dotdot", Some(Code::InvalidArgument)),
            ("evil/symlink-escape", Some(Code::InvalidArgument)),
            ("evil/hardlink-escape", Some(Code::InvalidArgument)),
            ("evil/whiteout-escape", Some(Code::InvalidArgument)),
            ("evil/truncated-gzip", Some(Code::InvalidArgument)),
            ("evil/self-index", Some(Code::InvalidArgument)),
            // Neutralised rather than refused: the leading `/` is stripped, devices skipped.
            ("evil/abs-path", None),
            ("evil/device", None),
        ];
        for (repo, want) in cases {
            let name = format!("{reg}/{repo}:latest");
            // A stale copy from an earlier run would hide whether this pull stored anything.
            remove(&env, &name).await?;
            match want {
                Some(code) => {
                    expect_code(&env, &name, *code).await?;
                    let (img, _) = status(&env, &name, false).await?;
                    ensure!(img.is_none(), "{name} is listed after a failed pull");
                }
                None => {
                    pull_ok(&env, &name).await?;
                    remove(&env, &name).await?;
                }
            }
            check_host(passwd_nlink).with_context(|| format!("after pulling {name}"))?;
            alive(&env).await?;
        }
        anyhow::Ok(())
    }
    .await;
    let _ = std::fs::remove_file(WHITEOUT_VICTIM);
    result?;
    Ok(Outcome::Passed)
}

async fn digest_lies(env: Env) -> TestResult {
    let mut content = Content::digest_mismatch();
    content.add_big_manifest();
    let fake = FakeRegistry::start(content).await?;
    let host = fake.host();
    // The fake registry works: an honest image pulls.
    let good = format!("{host}/good/small:latest");
    pull_ok(&env, &good).await?;
    for (name, code) in [
        (
            "evil/layer-digest-mismatch:latest".to_owned(),
            Code::FailedPrecondition,
        ),
        (
            "evil/config-digest-mismatch:latest".to_owned(),
            Code::FailedPrecondition,
        ),
        (
            format!(
                "evil/manifest-digest-mismatch@{}",
                Content::manifest_mismatch_digest()
            ),
            Code::FailedPrecondition,
        ),
        (
            "evil/layer-size-mismatch:latest".to_owned(),
            Code::FailedPrecondition,
        ),
        ("evil/big-manifest:latest".to_owned(), Code::InvalidArgument),
    ] {
        let image = format!("{host}/{name}");
        remove(&env, &image).await?;
        expect_code(&env, &image, code).await?;
        let (img, _) = status(&env, &image, false).await?;
        ensure!(img.is_none(), "{image} is listed after a failed pull");
        alive(&env).await?;
    }
    remove(&env, &good).await?;
    Ok(Outcome::Passed)
}

fn unikernel_info(info: &Value) -> anyhow::Result<&Value> {
    let u = info
        .pointer("/unikernel")
        .filter(|u| !u.is_null())
        .with_context(|| format!("no unikernel info in the verbose status: {info}"))?;
    Ok(u)
}

async fn check_unikernel(env: &Env, name: &str, source: &str) -> anyhow::Result<()> {
    pull_ok(env, name).await?;
    let (img, info) = status(env, name, true).await?;
    ensure!(img.is_some(), "no status for {name}");
    let u = unikernel_info(&info)?;
    let field = |k: &str| {
        u.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    ensure!(field("unikernel_type") == "linux", "type in {u}");
    ensure!(field("hypervisor") == "qemu", "hypervisor in {u}");
    ensure!(
        field("binary") == UNIKERNEL_BINARY.trim_start_matches('/'),
        "binary in {u}"
    );
    ensure!(field("cmdline") == UNIKERNEL_CMDLINE, "cmdline in {u}");
    ensure!(field("source") == source, "source in {u}");
    Ok(())
}

async fn unikernel_annotated(env: Env) -> TestResult {
    let reg = registry_or_skip!(env);
    check_unikernel(
        &env,
        &format!("{reg}/unikernel/annotated:latest"),
        "manifest-annotations",
    )
    .await?;
    Ok(Outcome::Passed)
}

async fn unikernel_urunc_json(env: Env) -> TestResult {
    let reg = registry_or_skip!(env);
    check_unikernel(
        &env,
        &format!("{reg}/unikernel/uruncjson:latest"),
        "urunc-json",
    )
    .await?;
    Ok(Outcome::Passed)
}

async fn unikernel_invalid(env: Env) -> TestResult {
    let reg = registry_or_skip!(env);
    for (repo, key) in [
        ("unikernel/bad-path", "com.urunc.unikernel.binary"),
        ("unikernel/bad-type", "com.urunc.unikernel.unikernelType"),
        ("unikernel/bad-switch", "com.urunc.unikernel.mountRootfs"),
    ] {
        let name = format!("{reg}/{repo}:latest");
        remove(&env, &name).await?;
        let s = expect_code(&env, &name, Code::InvalidArgument).await?;
        ensure!(
            s.message().contains(key),
            "the error for {name} does not name {key}: {}",
            s.message()
        );
        let (img, _) = status(&env, &name, false).await?;
        ensure!(img.is_none(), "{name} is listed after a failed pull");
    }
    alive(&env).await?;
    Ok(Outcome::Passed)
}
