//! Exec, Attach and PortForward end to end: the runtime's URLs are driven with the SPDY and
//! WebSocket clients of [`crate::stream_client`] against a busybox container (from the test
//! registry) in a fresh pod. Everything created is removed again, also when a check fails.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use proto::cri;
use tonic::Code;

use super::pods::{pod_config, remove_pod, run_pod};
use crate::runner::{Env, Outcome, Test, TestResult};
use crate::stream_client::{self, StreamOpts, Transport, spdy, ws};

const T: Duration = Duration::from_secs(30);
const HTTP_PORT: u16 = 8080;

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "streaming/exec-attach-portforward",
            run: |env| Box::pin(streaming(env)),
        },
        Test {
            name: "streaming/attach-without-log",
            run: |env| Box::pin(attach_without_log(env)),
        },
        Test {
            name: "streaming/unknown-ids",
            run: |env| Box::pin(unknown_ids(env)),
        },
    ]
}

/// critest's attach: a shell with stdin in a pod without a log directory and a container
/// without a log path. Attach still works on the container's stdio: a command sent to its
/// stdin answers on stdout at once, even without a newline (over SPDY and WebSocket).
async fn attach_without_log(env: Env) -> TestResult {
    let Some(image) = super::pull_busybox(&env).await? else {
        return Ok(Outcome::Skipped("no test registry (--registry)".into()));
    };
    // critest's pod: no log directory, kubelet's default pod-wide PID namespace.
    let mut config = pod_config("attach-nolog");
    config.linux = None;
    let pod = run_pod(&env, config.clone()).await?;
    let result = async {
        let shell = cri::ContainerConfig {
            command: vec!["/bin/sh".into()],
            stdin: true,
            stdin_once: true,
            ..super::container("shell", &image)
        };
        let id = super::create_start_in_pod(&env, &pod, &config, shell).await?;
        for (i, t) in [Transport::SPDY_V4, Transport::WS_V5]
            .into_iter()
            .enumerate()
        {
            let mut s = attach(&env, &id, true, t).await?;
            // As critest does: input only after a quiet second.
            tokio::time::sleep(Duration::from_secs(2)).await;
            // Output without a newline (critest's `echo -n hello`) comes at once, unchanged.
            s.write_stdin(format!("echo -n hello-{i}\n").as_bytes())
                .await?;
            let out = s.read_stdout_until(&format!("hello-{i}"), T).await?;
            ensure!(out == format!("hello-{i}"), "{t:?} attach stdout {out:?}");
        }
        anyhow::Ok(())
    }
    .await;
    remove_pod(&env, &pod).await;
    result.map(|()| Outcome::Passed)
}

async fn unknown_ids(env: Env) -> TestResult {
    let mut rt = env.cri.runtime.clone();
    let e = rt
        .exec(cri::ExecRequest {
            container_id: "no-such-container".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .err()
        .context("Exec on an unknown container succeeded")?;
    ensure!(e.code() == Code::NotFound, "Exec: {e}");
    let e = rt
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: "no-such-pod".into(),
            port: vec![80],
        })
        .await
        .err()
        .context("PortForward on an unknown pod succeeded")?;
    ensure!(e.code() == Code::NotFound, "PortForward: {e}");
    Ok(Outcome::Passed)
}

async fn streaming(env: Env) -> TestResult {
    let Some(image) = super::pull_busybox(&env).await? else {
        if std::env::var("CI").as_deref() == Ok("true") {
            bail!("no test registry (--registry / CRID_TEST_REGISTRY) in CI");
        }
        return Ok(Outcome::Skipped("no test registry (--registry)".into()));
    };
    let mut config = pod_config("stream");
    let logs = super::pod_log_directory(&mut config)?;
    let pod = run_pod(&env, config.clone()).await?;
    let result = in_pod(&env, &pod, &config, &image).await;
    remove_pod(&env, &pod).await;
    let _ = std::fs::remove_dir_all(&logs);
    result
}

/// Creates and starts a container in the pod; its id is returned even when the start failed,
/// so that the caller can remove it.
async fn start(
    env: &Env,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    image: &str,
    name: &str,
    command: &[&str],
) -> anyhow::Result<(String, anyhow::Result<()>)> {
    let container = cri::ContainerConfig {
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        ..super::container(name, image)
    };
    let id = super::create_in_pod(env, pod, pod_config, container).await?;
    let started = super::start_container(env, &id, name).await;
    Ok((id, started))
}

async fn remove_container(env: &Env, id: &str) {
    let mut rt = env.cri.runtime.clone();
    let _ = rt
        .stop_container(cri::StopContainerRequest {
            container_id: id.into(),
            timeout: 0,
        })
        .await;
    let _ = rt
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.into(),
        })
        .await;
}

async fn in_pod(
    env: &Env,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    image: &str,
) -> TestResult {
    let web = [
        "httpd",
        "-f",
        "-p",
        &format!("127.0.0.1:{HTTP_PORT}"),
        "-h",
        "/etc",
    ];
    let (web_id, started) = start(env, pod, pod_config, image, "web", &web).await?;
    let ticker = [
        "sh",
        "-c",
        "i=0; while true; do echo tick-$i; echo tock-$i >&2; i=$((i+1)); sleep 0.2; done",
    ];
    let result = match started {
        Ok(()) => match start(env, pod, pod_config, image, "ticker", &ticker).await {
            Ok((ticker_id, started)) => {
                let r = match started {
                    Ok(()) => checks(env, pod, &web_id, &ticker_id).await,
                    Err(e) => Err(e),
                };
                remove_container(env, &ticker_id).await;
                r
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    remove_container(env, &web_id).await;
    result
}

async fn exec_url(
    env: &Env,
    container: &str,
    cmd: &[&str],
    tty: bool,
    stdin: bool,
) -> anyhow::Result<String> {
    Ok(env
        .cri
        .runtime
        .clone()
        .exec(cri::ExecRequest {
            container_id: container.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
            stdout: true,
            stderr: !tty,
        })
        .await
        .context("Exec")?
        .into_inner()
        .url)
}

/// Attaches to container `id` without a terminal (with stdin when `stdin`) over `transport`.
async fn attach(
    env: &Env,
    id: &str,
    stdin: bool,
    transport: Transport,
) -> anyhow::Result<stream_client::Session> {
    let url = env
        .cri
        .runtime
        .clone()
        .attach(cri::AttachRequest {
            container_id: id.into(),
            stdin,
            stdout: true,
            stderr: true,
            tty: false,
        })
        .await
        .context("Attach")?
        .into_inner()
        .url;
    stream_client::connect(&url, transport, StreamOpts::new(false, stdin)).await
}

async fn checks(env: &Env, pod: &str, container: &str, ticker: &str) -> TestResult {
    for t in [Transport::SPDY_V4, Transport::WS_V5] {
        // Output, stderr and a non-zero exit code.
        let url = exec_url(
            env,
            container,
            &["sh", "-c", "echo out; echo err >&2; exit 7"],
            false,
            false,
        )
        .await?;
        let out = stream_client::connect(&url, t, StreamOpts::new(false, false))
            .await?
            .finish(T)
            .await?;
        ensure!(
            out.stdout == b"out\n",
            "{t:?} stdout {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        ensure!(
            out.stderr == b"err\n",
            "{t:?} stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            out.exit_code()? == 7,
            "{t:?} exit code {:?}",
            out.exit_code()
        );

        // A reused URL is refused.
        let e = stream_client::connect(&url, t, StreamOpts::new(false, false))
            .await
            .err()
            .context("a used exec URL worked again")?;
        ensure!(
            stream_client::http_status(&e) == Some(404),
            "{t:?} reused URL: {e:#}"
        );

        // Stdin round trip.
        let url = exec_url(env, container, &["cat"], false, true).await?;
        let mut s = stream_client::connect(&url, t, StreamOpts::new(false, true)).await?;
        s.write_stdin(b"round trip\n").await?;
        s.read_stdout_until("round trip", T).await?;
        // WebSocket protocols before v5 (e.g. containerd 1.6's) cannot say "no more stdin"
        // without closing the whole session.
        if matches!(t, Transport::Spdy(_)) || s.protocol.starts_with("v5.") {
            s.close_stdin().await?;
            let out = s.finish(T).await?;
            ensure!(out.exit_code()? == 0, "{t:?} cat exit code");
        } else {
            drop(s);
        }

        // A terminal, resized while the shell runs.
        let url = exec_url(env, container, &["sh"], true, true).await?;
        let mut s = stream_client::connect(&url, t, StreamOpts::new(true, true)).await?;
        s.resize(101, 33).await?;
        s.write_stdin(
            b"for i in $(seq 100); do [ \"$(stty size)\" = '33 101' ] && break; sleep 0.1; done; \
              echo \"size=$(stty size)\"; exit 3\n",
        )
        .await?;
        s.read_stdout_until("size=33 101", T).await?;
        let out = s.finish(T).await?;
        ensure!(out.exit_code()? == 3, "{t:?} tty exit code");
    }

    // Attach to a container that keeps writing to stdout and stderr.
    for t in [Transport::SPDY_V4, Transport::WS_V5] {
        let mut s = attach(env, ticker, false, t).await?;
        let out = s.read_stdout_until("\n", T).await?;
        ensure!(out.contains("tick-"), "{t:?} attach stdout {out:?}");
    }

    // Port forwarding to the container's loopback-only web server (serving /etc).
    let request = "GET /hostname HTTP/1.0\r\nHost: x\r\n\r\n";
    let mut last = String::new();
    let (mut over_spdy, mut over_ws) = (false, false);
    for _ in 0..50 {
        for use_ws in [false, true] {
            if (use_ws && over_ws) || (!use_ws && over_spdy) {
                continue;
            }
            let url = env
                .cri
                .runtime
                .clone()
                .port_forward(cri::PortForwardRequest {
                    pod_sandbox_id: pod.into(),
                    port: vec![i32::from(HTTP_PORT)],
                })
                .await
                .context("PortForward")?
                .into_inner()
                .url;
            let body = if use_ws {
                let mut c = ws::WsPortForward::connect(&url, &[HTTP_PORT]).await?;
                let body = c.round_trip(0, request.as_bytes(), usize::MAX).await?;
                last = String::from_utf8_lossy(&c.errors[0]).into_owned();
                body
            } else {
                let conn = spdy::port_forward(&url).await?;
                let (mut data, mut error) = conn.forward(HTTP_PORT, 1).await?;
                data.write(request.as_bytes()).await?;
                let body = data.read_to_end(T).await?;
                last = String::from_utf8_lossy(&error.read_to_end(T).await?).into_owned();
                body
            };
            let text = String::from_utf8_lossy(&body);
            // /etc/hostname in the container is the pod's hostname.
            if text.contains(" 200 ") && text.contains("hstream") {
                *(if use_ws { &mut over_ws } else { &mut over_spdy }) = true;
            } else {
                let how = if use_ws { "websocket" } else { "spdy" };
                last = format!("{how}: error stream {last:?}, answer {text:?}");
            }
        }
        if over_spdy && over_ws {
            return Ok(Outcome::Passed);
        }
        // The web server may still be starting.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("port forwarding never reached the web server: {last}")
}
