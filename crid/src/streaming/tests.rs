//! End-to-end tests of the streaming server: a real server with the host backend (commands run
//! on the host, ports are forwarded in this process's network namespace) and the real SPDY and
//! WebSocket clients of `conformance::stream_client`.

use std::sync::Arc;
use std::time::Duration;

use conformance::stream_client::{self, Output, StreamOpts, Transport, spdy, ws};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::backend::host::HostBackend;
use super::{ExecSpec, Request, Server, ServerConfig};

const T: Duration = Duration::from_secs(20);

async fn server_with(config: ServerConfig) -> Arc<Server> {
    let backend = Arc::new(HostBackend {
        netns: "/proc/self/ns/net".into(),
    });
    Server::start(&config, backend)
        .await
        .expect("server starts")
}

async fn server() -> Arc<Server> {
    server_with(ServerConfig::default()).await
}

fn exec(cmd: &[&str], tty: bool, stdin: bool) -> Request {
    Request::Exec(ExecSpec {
        container_id: "c".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    })
}

const TRANSPORTS: [Transport; 4] = [
    Transport::SPDY_V4,
    Transport::WS_V5,
    Transport::WS_V4,
    Transport::WS_V4_BASE64,
];

async fn run(s: &Server, t: Transport, req: Request, o: StreamOpts) -> Output {
    let url = s.url_for(req).unwrap();
    let session = stream_client::connect(&url, t, o).await.unwrap();
    session.finish(T).await.unwrap()
}

#[tokio::test]
async fn exec_reports_output_and_exit_codes_over_every_transport() {
    let s = server().await;
    for t in TRANSPORTS {
        let out = run(
            &s,
            t,
            exec(&["sh", "-c", "echo out; echo err >&2"], false, false),
            StreamOpts::new(false, false),
        )
        .await;
        assert_eq!(out.stdout, b"out\n", "{t:?}");
        assert_eq!(out.stderr, b"err\n", "{t:?}");
        assert_eq!(out.exit_code().unwrap(), 0, "{t:?}");

        let out = run(
            &s,
            t,
            exec(&["sh", "-c", "exit 42"], false, false),
            StreamOpts::new(false, false),
        )
        .await;
        assert_eq!(out.exit_code().unwrap(), 42, "{t:?}");
        let status: serde_json::Value = serde_json::from_slice(&out.error).unwrap();
        assert_eq!(status["reason"], "NonZeroExitCode", "{t:?}");
    }
}

#[tokio::test]
async fn exec_with_a_tty_merges_output_and_reports_the_exit_code() {
    let s = server().await;
    for t in TRANSPORTS {
        let out = run(
            &s,
            t,
            exec(
                &["sh", "-c", "test -t 0 && echo tty; echo err >&2; exit 3"],
                true,
                false,
            ),
            StreamOpts::new(true, false),
        )
        .await;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("tty") && text.contains("err"),
            "{t:?}: {text:?}"
        );
        assert!(out.stderr.is_empty(), "{t:?}");
        assert_eq!(out.exit_code().unwrap(), 3, "{t:?}");
    }
}

#[tokio::test]
async fn stdin_round_trips_and_its_close_ends_the_command() {
    let s = server().await;
    // v4 WebSocket cannot close stdin, so it is left out here.
    for t in [Transport::SPDY_V4, Transport::WS_V5] {
        let url = s.url_for(exec(&["cat"], false, true)).unwrap();
        let mut session = stream_client::connect(&url, t, StreamOpts::new(false, true))
            .await
            .unwrap();
        session.write_stdin(b"hello ").await.unwrap();
        session.read_stdout_until("hello", T).await.unwrap();
        session.write_stdin(b"world\n").await.unwrap();
        session.close_stdin().await.unwrap();
        let out = session.finish(T).await.unwrap();
        assert_eq!(out.stdout, b"hello world\n", "{t:?}");
        assert_eq!(out.exit_code().unwrap(), 0, "{t:?}");
    }
}

#[tokio::test]
async fn interactive_tty_shell_sees_typed_commands_and_resizes() {
    let s = server().await;
    for t in [
        Transport::SPDY_V4,
        Transport::WS_V5,
        Transport::WS_V4_BASE64,
    ] {
        let url = s.url_for(exec(&["sh"], true, true)).unwrap();
        let mut session = stream_client::connect(&url, t, StreamOpts::new(true, true))
            .await
            .unwrap();
        session.resize(123, 40).await.unwrap();
        // The resize and stdin travel on different streams; poll until the size shows.
        session
            .write_stdin(
                b"for i in $(seq 100); do [ \"$(stty size)\" = '40 123' ] && break; sleep 0.1; done; \
                  echo \"size=$(stty size)\"\n",
            )
            .await
            .unwrap();
        session.read_stdout_until("size=40 123", T).await.unwrap();
        session.resize(77, 11).await.unwrap();
        session
            .write_stdin(
                b"for i in $(seq 100); do [ \"$(stty size)\" = '11 77' ] && break; sleep 0.1; done; \
                  echo \"size=$(stty size)\"; exit 5\n",
            )
            .await
            .unwrap();
        session.read_stdout_until("size=11 77", T).await.unwrap();
        let out = session.finish(T).await.unwrap();
        assert_eq!(out.exit_code().unwrap(), 5, "{t:?}");
    }
}

#[tokio::test]
async fn attach_types_into_a_shell() {
    let s = server().await;
    for t in [Transport::SPDY_V4, Transport::WS_V5] {
        let url = s
            .url_for(Request::Attach(super::AttachSpec {
                container_id: "c".into(),
                tty: false,
                stdin: true,
                stdout: true,
                stderr: true,
            }))
            .unwrap();
        assert!(url.contains("/attach/"));
        let mut session = stream_client::connect(&url, t, StreamOpts::new(false, true))
            .await
            .unwrap();
        session
            .write_stdin(b"echo attached-$((6*7))\n")
            .await
            .unwrap();
        session.read_stdout_until("attached-42", T).await.unwrap();
        session.write_stdin(b"exit 9\n").await.unwrap();
        let out = session.finish(T).await.unwrap();
        // Attach reports the end of the attachment, not the process's exit code.
        assert_eq!(out.exit_code().unwrap(), 0, "{t:?}");
    }
}

#[tokio::test]
async fn a_failing_start_is_reported_on_the_error_stream() {
    let s = server().await;
    for t in [Transport::SPDY_V4, Transport::WS_V5] {
        let out = run(
            &s,
            t,
            exec(&["/nonexistent/binary"], false, false),
            StreamOpts::new(false, false),
        )
        .await;
        let err = out.exit_code().unwrap_err().to_string();
        assert!(err.contains("InternalError"), "{t:?}: {err}");
    }
}

#[tokio::test]
async fn tokens_are_single_use_and_unknown_ones_get_404() {
    let s = server().await;
    for t in [Transport::SPDY_V4, Transport::WS_V5] {
        let url = s.url_for(exec(&["true"], false, false)).unwrap();
        run_url(&url, t).await.unwrap();
        let e = run_url(&url, t).await.unwrap_err();
        assert_eq!(stream_client::http_status(&e), Some(404), "{t:?}: {e:#}");
        let bogus = format!("http://{}/exec/0123456789abcdef", s.addr());
        let e = run_url(&bogus, t).await.unwrap_err();
        assert_eq!(stream_client::http_status(&e), Some(404), "{t:?}: {e:#}");
        // A token only works on its own kind of URL.
        let url = s.url_for(exec(&["true"], false, false)).unwrap();
        let e = run_url(&url.replace("/exec/", "/attach/"), t)
            .await
            .unwrap_err();
        assert_eq!(stream_client::http_status(&e), Some(404), "{t:?}: {e:#}");
    }
}

async fn run_url(url: &str, t: Transport) -> anyhow::Result<Output> {
    stream_client::connect(url, t, StreamOpts::new(false, false))
        .await?
        .finish(T)
        .await
}

#[tokio::test]
async fn expired_tokens_get_404() {
    let s = server_with(ServerConfig {
        token_ttl: Duration::ZERO,
        ..ServerConfig::default()
    })
    .await;
    let url = s.url_for(exec(&["true"], false, false)).unwrap();
    let e = run_url(&url, Transport::SPDY_V4).await.unwrap_err();
    assert_eq!(stream_client::http_status(&e), Some(404), "{e:#}");
}

#[tokio::test]
async fn outstanding_urls_are_capped() {
    let s = server_with(ServerConfig {
        max_tokens: 2,
        ..ServerConfig::default()
    })
    .await;
    s.url_for(exec(&["true"], false, false)).unwrap();
    s.url_for(exec(&["true"], false, false)).unwrap();
    let e = s.url_for(exec(&["true"], false, false)).unwrap_err();
    assert_eq!(e.kind(), imagestore::ErrorKind::ResourceExhausted);
}

#[tokio::test]
async fn unsupported_protocols_are_refused() {
    let s = server().await;
    let url = s.url_for(exec(&["true"], false, false)).unwrap();
    let e = stream_client::connect(
        &url,
        Transport::Spdy(&["v9.channel.k8s.io"]),
        StreamOpts::new(false, false),
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(stream_client::http_status(&e), Some(403), "{e:#}");
}

#[tokio::test]
async fn older_spdy_protocols_still_work() {
    let s = server().await;
    // The last: a client that negotiates nothing gets the original protocol.
    for p in ["v3.channel.k8s.io", "v2.channel.k8s.io", ""] {
        let offer = if p.is_empty() { vec![] } else { vec![p] };
        let protocols: &'static [&'static str] = Box::leak(offer.into_boxed_slice());
        let url = s
            .url_for(exec(&["sh", "-c", "echo hi; exit 4"], false, false))
            .unwrap();
        let session = stream_client::connect(
            &url,
            Transport::Spdy(protocols),
            StreamOpts::new(false, false),
        )
        .await
        .unwrap();
        assert_eq!(session.protocol, p);
        let out = session.finish(T).await.unwrap();
        assert_eq!(out.stdout, b"hi\n");
        // Before v4 the error stream carries a message, not a Status.
        assert!(String::from_utf8_lossy(&out.error).contains("exit status 4"));
    }
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let s = server_with(ServerConfig {
        idle_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    })
    .await;
    for t in [Transport::SPDY_V4, Transport::WS_V5] {
        let url = s.url_for(exec(&["sleep", "30"], false, true)).unwrap();
        let session = stream_client::connect(&url, t, StreamOpts::new(false, true))
            .await
            .unwrap();
        // Nothing moves, so the server hangs up well before the command ends.
        session.finish(T).await.unwrap();
    }
}

/// An echo server on loopback; answers each connection by echoing until EOF.
async fn echo_listener() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf).await {
                    if n == 0 || c.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

fn pf(ports: Vec<u16>) -> Request {
    Request::PortForward {
        pod_id: "p".into(),
        ports,
    }
}

#[tokio::test]
async fn port_forward_over_spdy_carries_several_connections() {
    let s = server().await;
    let port = echo_listener().await;
    let url = s.url_for(pf(vec![port])).unwrap();
    let conn = spdy::port_forward(&url).await.unwrap();
    for rid in 0..3 {
        let (mut data, mut error) = conn.forward(port, rid).await.unwrap();
        let msg = format!("ping-{rid}");
        let got = spdy::round_trip(&mut data, msg.as_bytes(), msg.len())
            .await
            .unwrap();
        assert_eq!(got, msg.as_bytes());
        data.close().await;
        assert!(data.read_to_end(T).await.unwrap().is_empty());
        assert!(error.read_to_end(T).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn port_forward_over_spdy_reports_refused_ports() {
    let s = server().await;
    // Bind and drop to find a port that nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = s.url_for(pf(vec![])).unwrap();
    let conn = spdy::port_forward(&url).await.unwrap();
    let (mut data, mut error) = conn.forward(closed, 1).await.unwrap();
    let msg = String::from_utf8(error.read_to_end(T).await.unwrap()).unwrap();
    assert!(msg.contains(&format!("localhost:{closed}")), "{msg}");
    assert!(data.read_to_end(T).await.unwrap().is_empty());
}

#[tokio::test]
async fn port_forward_over_websocket() {
    let s = server().await;
    let (a, b) = (echo_listener().await, echo_listener().await);
    let url = s.url_for(pf(vec![a, b])).unwrap();
    let mut conn = ws::WsPortForward::connect(&url, &[a, b]).await.unwrap();
    assert_eq!(conn.protocol, "v4.channel.k8s.io");
    assert_eq!(conn.round_trip(0, b"to-a", 4).await.unwrap(), b"to-a");
    assert_eq!(conn.round_trip(1, b"to-b", 4).await.unwrap(), b"to-b");
    // Ports may also come from the query when the CRI request named none.
    let url = s.url_for(pf(vec![])).unwrap();
    let mut conn = ws::WsPortForward::connect(&url, &[a]).await.unwrap();
    assert_eq!(conn.round_trip(0, b"q", 1).await.unwrap(), b"q");
}

#[tokio::test]
async fn port_forward_tokens_are_single_use() {
    let s = server().await;
    let port = echo_listener().await;
    let url = s.url_for(pf(vec![port])).unwrap();
    drop(spdy::port_forward(&url).await.unwrap());
    let e = spdy::port_forward(&url).await.err().expect("refused");
    assert_eq!(stream_client::http_status(&e), Some(404));
    let e = ws::WsPortForward::connect(&url, &[port])
        .await
        .err()
        .expect("refused");
    assert_eq!(stream_client::http_status(&e), Some(404));
}

fn pf_to(pod_id: &str, ports: Vec<u16>) -> Request {
    Request::PortForward {
        pod_id: pod_id.into(),
        ports,
    }
}

#[tokio::test]
async fn port_forward_answers_say_what_went_wrong() {
    let s = server().await;
    let port = echo_listener().await;
    // A pod that is gone: 404; a failure of crid's own: 500 (not 404).
    for (pod, status) in [("missing", 404), ("broken", 500)] {
        let url = s.url_for(pf_to(pod, vec![port])).unwrap();
        let e = spdy::port_forward(&url).await.err().expect("refused");
        assert_eq!(stream_client::http_status(&e), Some(status), "{pod}: {e:#}");
        let url = s.url_for(pf_to(pod, vec![port])).unwrap();
        let e = ws::WsPortForward::connect(&url, &[port])
            .await
            .err()
            .expect("refused");
        assert_eq!(stream_client::http_status(&e), Some(status), "{pod}: {e:#}");
    }
    // Over WebSocket without ports in the CRI request, a query without a valid port is the
    // client's mistake: 400.
    for query in [
        "",
        "port=",
        "port=0",
        "port=x",
        &format!("port={port},99999"),
    ] {
        let url = s.url_for(pf(vec![])).unwrap();
        let e = ws::connect(&url, query, &["v4.channel.k8s.io"])
            .await
            .expect_err("refused");
        assert_eq!(
            stream_client::http_status(&e),
            Some(400),
            "{query:?}: {e:#}"
        );
    }
}

#[tokio::test]
async fn port_forward_into_a_pod_no_longer_ready_reports_on_the_error_stream() {
    let s = server().await;
    let port = echo_listener().await;
    let url = s.url_for(pf_to("stopped", vec![])).unwrap();
    let conn = spdy::port_forward(&url).await.unwrap();
    let (mut data, mut error) = conn.forward(port, 1).await.unwrap();
    let msg = String::from_utf8(error.read_to_end(T).await.unwrap()).unwrap();
    assert!(msg.contains("stopped is not ready"), "{msg}");
    assert!(data.read_to_end(T).await.unwrap().is_empty());

    let url = s.url_for(pf_to("stopped", vec![port])).unwrap();
    let mut conn = ws::WsPortForward::connect(&url, &[port]).await.unwrap();
    conn.drain(T).await.unwrap();
    let msg = String::from_utf8_lossy(&conn.errors[0]);
    assert!(msg.contains("stopped is not ready"), "{msg}");
}

/// Interop with client-go as kubectl ships it (SPDY and WebSocket exec, SPDY port-forward): a stand-in API
/// server answers kubectl's pod lookup and splices its exec request onto a fresh streaming
/// URL. Needs `kubectl` on PATH; run with `cargo test -p crid kubectl -- --ignored`.
#[tokio::test]
#[ignore = "needs kubectl"]
async fn kubectl_interop() {
    use tokio::net::{TcpListener, TcpStream};

    let s = server().await;
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr = api.local_addr().unwrap();
    let server = s.clone();
    let upgrades = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = upgrades.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = api.accept().await {
            let (server, seen) = (server.clone(), seen.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if c.read_exact(&mut b).await.is_err() {
                        return;
                    }
                    head.push(b[0]);
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let target = text
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned();
                let path = target.split('?').next().unwrap_or_default();
                if path.ends_with("/portforward") {
                    let lower = text.to_ascii_lowercase();
                    let kind = if lower.contains("upgrade: websocket") {
                        "websocket"
                    } else {
                        "spdy"
                    };
                    seen.lock().unwrap().push(format!("pf-{kind}"));
                    let url = server.url_for(pf(vec![])).unwrap();
                    let new_path = url.splitn(4, '/').nth(3).unwrap_or_default();
                    let head = text.replacen(&target, &format!("/{new_path}"), 1);
                    let mut up = TcpStream::connect(server.addr()).await.unwrap();
                    up.write_all(head.as_bytes()).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
                    return;
                }
                if path.ends_with("/exec") {
                    let lower = text.to_ascii_lowercase();
                    let kind = if lower.contains("upgrade: websocket") {
                        "websocket"
                    } else {
                        "spdy"
                    };
                    seen.lock().unwrap().push(kind.to_owned());
                    let tty = target.contains("tty=true");
                    let stdin = target.contains("stdin=true");
                    let cmd: Vec<&str> = if tty {
                        vec!["sh", "-c", "stty size; exit 6"]
                    } else if stdin {
                        vec!["cat"]
                    } else {
                        vec!["sh", "-c", "echo out; echo err >&2; exit 3"]
                    };
                    let url = server.url_for(exec(&cmd, tty, stdin)).unwrap();
                    let new_path = url.splitn(4, '/').nth(3).unwrap_or_default();
                    let head = text.replacen(&target, &format!("/{new_path}"), 1);
                    let mut up = TcpStream::connect(server.addr()).await.unwrap();
                    up.write_all(head.as_bytes()).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
                    return;
                }
                let body = if path.ends_with("/pods/p") {
                    r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p","namespace":"default"},"spec":{"containers":[{"name":"c","image":"x"}]},"status":{"phase":"Running"}}"#.to_string()
                } else if path == "/api" {
                    r#"{"kind":"APIVersions","versions":["v1"]}"#.to_string()
                } else if path == "/api/v1" {
                    r#"{"kind":"APIResourceList","groupVersion":"v1","resources":[{"name":"pods","singularName":"pod","namespaced":true,"kind":"Pod","verbs":["get","list"],"shortNames":["po"]},{"name":"pods/exec","singularName":"","namespaced":true,"kind":"PodExecOptions","verbs":["create","get"]}]}"#.to_string()
                } else if path == "/apis" {
                    r#"{"kind":"APIGroupList","apiVersion":"v1","groups":[]}"#.to_string()
                } else {
                    let r = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
                    let _ = c.write_all(r.as_bytes()).await;
                    return;
                };
                let r = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(r.as_bytes()).await;
            });
        }
    });
    let kubectl = |ws: bool, args: &[&str], input: Option<&'static [u8]>| {
        let mut cmd = std::process::Command::new("kubectl");
        cmd.arg(format!("--server=http://{api_addr}"))
            .args([
                "--insecure-skip-tls-verify",
                "-n",
                "default",
                "exec",
                "p",
                "-c",
                "c",
            ])
            .args(args)
            .env(
                "KUBECTL_REMOTE_COMMAND_WEBSOCKETS",
                if ws { "true" } else { "false" },
            )
            .stdin(if input.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        async move {
            tokio::task::spawn_blocking(move || {
                let mut child = cmd.spawn().expect("kubectl");
                if let Some(i) = input {
                    use std::io::Write;
                    let mut w = child.stdin.take().unwrap();
                    w.write_all(i).unwrap();
                }
                child.wait_with_output().unwrap()
            })
            .await
            .unwrap()
        }
    };
    for ws in [false, true] {
        let out = kubectl(ws, &["--", "x"], None).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "out\n",
            "ws={ws} {stderr}"
        );
        assert!(stderr.contains("err"), "ws={ws} {stderr}");
        assert_eq!(out.status.code(), Some(3), "ws={ws} {stderr}");

        let out = kubectl(ws, &["-i", "--", "x"], Some(b"piped input\n")).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "piped input\n",
            "ws={ws} {stderr}"
        );
        assert_eq!(out.status.code(), Some(0), "ws={ws} {stderr}");
        // kubectl falls back to SPDY silently; make sure each transport really was used.
        let used = std::mem::take(&mut *upgrades.lock().unwrap());
        let want = if ws { "websocket" } else { "spdy" };
        assert!(
            !used.is_empty() && used.iter().all(|u| u == want),
            "ws={ws}: {used:?}"
        );
    }

    // kubectl port-forward speaks plain SPDY to a kubelet-style URL.
    let echo = echo_listener().await;
    let local = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut pf = tokio::process::Command::new("kubectl")
        .arg(format!("--server=http://{api_addr}"))
        .args(["-n", "default", "port-forward", "pod/p"])
        .arg(format!("{local}:{echo}"))
        .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl port-forward");
    let mut got = Vec::new();
    for _ in 0..100 {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", local)).await {
            c.write_all(b"through kubectl").await.unwrap();
            let mut buf = [0u8; 15];
            if tokio::time::timeout(T, c.read_exact(&mut buf))
                .await
                .is_ok()
            {
                got = buf.to_vec();
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = pf.kill().await;
    assert_eq!(got, b"through kubectl");
    let used = std::mem::take(&mut *upgrades.lock().unwrap());
    assert!(
        used.iter().all(|u| u == "pf-spdy") && !used.is_empty(),
        "{used:?}"
    );
}

/// The container and pod managers' errors reach the client with their own kind and message: a
/// missing container is `NOT_FOUND`, a full disk `RESOURCE_EXHAUSTED` (not `INTERNAL`).
#[test]
fn sandbox_errors_keep_their_kind_and_message() {
    use imagestore::ErrorKind;
    let missing = super::StreamError::from(sandbox::SandboxError::NotFound {
        what: "container",
        id: "c1".into(),
    });
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    assert_eq!(missing.to_string(), "container c1 not found");
    let full = super::StreamError::from(sandbox::SandboxError::DiskFull {
        op: "exec".into(),
        path: "/var/lib/crid".into(),
        reason: "no space left on device".into(),
    });
    assert_eq!(full.kind(), ErrorKind::ResourceExhausted);
}
