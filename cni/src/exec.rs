//! Running one plugin binary: the environment the spec defines, the config on stdin, the
//! result or error on stdout, and a deadline after which the plugin's whole process group is
//! killed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::config::valid_plugin_type;
use crate::error::CniError;

/// Output beyond this is not a CNI result.
const MAX_OUTPUT: usize = 4 * 1024 * 1024;

/// One call of one plugin.
pub struct Call<'a> {
    pub command: &'static str,
    pub plugin: &'a str,
    pub container_id: &'a str,
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    pub args: &'a str,
    pub config: &'a Value,
}

impl<'a> Call<'a> {
    /// A call about the network rather than one attachment (STATUS, GC): no container, no
    /// namespace, no interface, no arguments.
    pub fn network(command: &'static str, plugin: &'a str, config: &'a Value) -> Call<'a> {
        Call {
            command,
            plugin,
            container_id: "",
            netns: None,
            ifname: "",
            args: "",
            config,
        }
    }
}

/// Finds plugin binaries and runs them.
#[derive(Debug, Clone)]
pub struct Executor {
    pub bin_dirs: Vec<PathBuf>,
    pub timeout: Duration,
}

impl Executor {
    pub fn find(&self, plugin: &str) -> Result<PathBuf, CniError> {
        if valid_plugin_type(plugin) {
            for dir in &self.bin_dirs {
                let path = dir.join(plugin);
                if is_executable(&path) {
                    return Ok(path);
                }
            }
        }
        Err(CniError::PluginNotFound {
            plugin: plugin.to_owned(),
            dirs: self.cni_path(),
        })
    }

    fn cni_path(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Runs the call; `Ok(Some(json))` when the plugin printed a result.
    pub async fn run(&self, call: &Call<'_>) -> Result<Option<Value>, CniError> {
        let path = self.find(call.plugin)?;
        let exec_err = |source| CniError::Exec {
            plugin: call.plugin.to_owned(),
            source,
        };
        let stdin = serde_json::to_vec(call.config).map_err(|e| exec_err(e.into()))?;
        let mut cmd = tokio::process::Command::new(&path);
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            )
            .env("CNI_COMMAND", call.command)
            .env("CNI_CONTAINERID", call.container_id)
            .env("CNI_IFNAME", call.ifname)
            .env("CNI_ARGS", call.args)
            .env("CNI_PATH", self.cni_path())
            .env(
                "CNI_NETNS",
                call.netns.map(Path::as_os_str).unwrap_or_default(),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout kills whatever the plugin started too.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = spawn(&mut cmd).await.map_err(exec_err)?;
        let pid = child.id();
        tracing::debug!(
            plugin = call.plugin,
            command = call.command,
            container_id = call.container_id,
            "running CNI plugin"
        );
        let io = async {
            if let Some(mut input) = child.stdin.take() {
                // A plugin that does not read its config may close stdin early; its exit
                // status tells what happened.
                let _ = input.write_all(&stdin).await;
            }
            child.wait_with_output().await
        };
        let output = match tokio::time::timeout(self.timeout, io).await {
            Ok(out) => out.map_err(exec_err)?,
            Err(_) => {
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
                return Err(CniError::Timeout {
                    plugin: call.plugin.to_owned(),
                    command: call.command,
                    secs: self.timeout.as_secs(),
                });
            }
        };
        // Whatever the plugin left running in its group goes too.
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let stdout = &output.stdout[..output.stdout.len().min(MAX_OUTPUT)];
        if !output.status.success() {
            return Err(plugin_error(call, stdout, &output.stderr));
        }
        let text = String::from_utf8_lossy(stdout);
        if text.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(stdout)
            .map(Some)
            .map_err(|e| CniError::BadResult {
                plugin: call.plugin.to_owned(),
                reason: format!("output is not JSON: {e}"),
            })
    }
}

/// The spec's error object on stdout, or stderr's text when the plugin printed none.
fn plugin_error(call: &Call<'_>, stdout: &[u8], stderr: &[u8]) -> CniError {
    let parsed: Option<Value> = serde_json::from_slice(stdout).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let code = parsed
        .as_ref()
        .and_then(|v| v.get("code"))
        .and_then(Value::as_u64)
        .and_then(|c| u32::try_from(c).ok())
        .unwrap_or(0);
    let mut msg = field("msg");
    if msg.is_empty() {
        msg = truncate(String::from_utf8_lossy(stderr).trim());
    }
    if msg.is_empty() {
        msg = truncate(String::from_utf8_lossy(stdout).trim());
    }
    if msg.is_empty() {
        msg = "exited with an error and no message".into();
    }
    CniError::Plugin {
        plugin: call.plugin.to_owned(),
        command: call.command,
        code,
        msg,
        details: truncate(&field("details")),
    }
}

fn truncate(s: &str) -> String {
    const MAX: usize = 2048;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Spawns `cmd`, retrying a few times on ETXTBSY: the binary was just written (a plugin being
/// installed or upgraded), and for a moment another process forked meanwhile may still hold it
/// open for writing until that child execs.
async fn spawn(cmd: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let mut attempt = 0;
    loop {
        match cmd.spawn() {
            Err(e)
                if e.raw_os_error() == Some(nix::errno::Errno::ETXTBSY as i32) && attempt < 10 =>
            {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(10 * attempt)).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn call<'a>(plugin: &'a str, config: &'a Value) -> Call<'a> {
        Call {
            command: "ADD",
            plugin,
            container_id: "c1",
            netns: Some(Path::new("/run/x")),
            ifname: "eth0",
            args: "IgnoreUnknown=1;K8S_POD_NAME=p",
            config,
        }
    }

    #[tokio::test]
    async fn env_stdin_and_result() {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "echoenv",
            r#"cfg=$(cat); printf '{"cniVersion":"1.0.0","ips":[],"dns":{"nameservers":["%s","%s","%s","%s","%s"]},"cfg":%s}' "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME" "$CNI_ARGS" "$cfg""#,
        );
        let ex = Executor {
            bin_dirs: vec![PathBuf::from("/nonexistent"), dir.path().to_owned()],
            timeout: Duration::from_secs(5),
        };
        let cfg = serde_json::json!({"name":"n","type":"echoenv"});
        let out = ex.run(&call("echoenv", &cfg)).await.unwrap().unwrap();
        assert_eq!(
            out["dns"]["nameservers"],
            serde_json::json!([
                "ADD",
                "c1",
                "/run/x",
                "eth0",
                "IgnoreUnknown=1;K8S_POD_NAME=p"
            ])
        );
        assert_eq!(out["cfg"], cfg);
    }

    #[tokio::test]
    async fn a_plugin_still_open_for_writing_is_retried() {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fresh");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&p)
            .unwrap();
        f.write_all(b"#!/bin/sh\necho '{}'\n").unwrap();
        // While this descriptor is open, exec fails with ETXTBSY; it closes 50 ms later.
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(f);
        });
        let mut cmd = tokio::process::Command::new(&p);
        cmd.stdout(Stdio::null());
        let status = spawn(&mut cmd)
            .await
            .expect("spawned after a retry")
            .wait()
            .await;
        assert!(status.unwrap().success());
        writer.join().unwrap();
    }

    #[tokio::test]
    async fn error_object_and_timeout() {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "fail",
            r#"echo '{"cniVersion":"1.0.0","code":7,"msg":"broken config","details":"line 3"}'; exit 1"#,
        );
        script(dir.path(), "stderr", "echo oops >&2; exit 2");
        script(dir.path(), "hang", "sleep 30 & sleep 30");
        let ex = Executor {
            bin_dirs: vec![dir.path().to_owned()],
            timeout: Duration::from_secs(1),
        };
        let cfg = serde_json::json!({});
        match ex.run(&call("fail", &cfg)).await.unwrap_err() {
            CniError::Plugin {
                code,
                msg,
                details,
                plugin,
                ..
            } => {
                assert_eq!(
                    (code, msg.as_str(), details.as_str(), plugin.as_str()),
                    (7, "broken config", "line 3", "fail")
                );
            }
            e => panic!("{e}"),
        }
        let e = ex.run(&call("stderr", &cfg)).await.unwrap_err();
        assert!(e.to_string().contains("oops"), "{e}");
        let e = ex.run(&call("hang", &cfg)).await.unwrap_err();
        assert!(matches!(e, CniError::Timeout { .. }), "{e}");
        let e = ex.run(&call("missing", &cfg)).await.unwrap_err();
        assert!(matches!(e, CniError::PluginNotFound { .. }), "{e}");
        let e = ex.run(&call("../fail", &cfg)).await.unwrap_err();
        assert!(matches!(e, CniError::PluginNotFound { .. }), "{e}");
    }
}
