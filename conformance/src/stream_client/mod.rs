//! A client for CRI streaming URLs, as kubectl/crictl (client-go) speak them: the remote command
//! protocol (exec/attach) and port forwarding, over SPDY/3.1 or WebSocket channels.

mod frame;
pub mod spdy;
pub mod ws;

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;

/// An HTTP answer other than 101 Switching Protocols.
#[derive(Debug)]
pub struct HttpError {
    pub status: u16,
    pub body: String,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.body.trim())
    }
}

impl std::error::Error for HttpError {}

/// The HTTP status of a failed upgrade, if that is what `e` is.
pub fn http_status(e: &anyhow::Error) -> Option<u16> {
    e.downcast_ref::<HttpError>().map(|h| h.status)
}

/// `http://host:port/path?query` split into the address and the request target.
pub struct Url {
    pub authority: String,
    pub target: String,
}

impl Url {
    pub fn parse(url: &str) -> anyhow::Result<Url> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("not an http URL: {url}"))?;
        let (authority, target) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        Ok(Url {
            authority: authority.to_owned(),
            target: target.to_owned(),
        })
    }
}

/// Sends an upgrade request and reads the answer's head; the stream is positioned after it.
pub(crate) async fn upgrade(
    url: &str,
    query: &str,
    headers: &[(&str, String)],
) -> anyhow::Result<(TcpStream, Vec<(String, String)>)> {
    let url = Url::parse(url)?;
    let mut tcp = TcpStream::connect(&url.authority)
        .await
        .with_context(|| format!("cannot connect to {}", url.authority))?;
    let sep = if url.target.contains('?') { '&' } else { '?' };
    let target = if query.is_empty() {
        url.target.clone()
    } else {
        format!("{}{sep}{query}", url.target)
    };
    let mut req = format!(
        "POST {target} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nContent-Length: 0\r\n",
        url.authority
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await?;

    // Read the head byte by byte so nothing after it is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 {
            bail!("response head too large");
        }
        let b = tcp
            .read_u8()
            .await
            .context("connection closed before the answer")?;
        head.push(b);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if status != 101 {
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0)
            .min(64 * 1024);
        let mut body = vec![0u8; len];
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut body)).await;
        return Err(HttpError {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
        .into());
    }
    Ok((tcp, headers))
}

/// Which streams a remote command session opens.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamOpts {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl StreamOpts {
    /// The streams kubectl opens for a command: stdout, stderr unless a terminal carries both
    /// on stdout, and stdin when asked.
    pub fn new(tty: bool, stdin: bool) -> StreamOpts {
        StreamOpts {
            stdin,
            stdout: true,
            stderr: !tty,
            tty,
        }
    }
}

/// What the client sends during a session.
#[derive(Debug)]
pub(crate) enum ClientMsg {
    Stdin(Bytes),
    CloseStdin,
    Resize(u16, u16),
}

/// A remote command session in progress, whatever the transport.
pub struct Session {
    pub(crate) tx: mpsc::Sender<ClientMsg>,
    /// `(channel, data)`: STDOUT, STDERR or ERROR; ends when the server has closed them all.
    pub(crate) out: mpsc::Receiver<(u8, Bytes)>,
    pub protocol: String,
    collected: Output,
}

/// Everything a session produced.
#[derive(Debug, Default, Clone)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The error stream: a JSON `Status` (v4+) or an error text (older protocols).
    pub error: Vec<u8>,
}

impl Output {
    /// The exit code the error stream reports: 0 for `Success` (or, before v4, an empty
    /// stream), the `ExitCode` cause of a `NonZeroExitCode` failure.
    pub fn exit_code(&self) -> anyhow::Result<i32> {
        if self.error.is_empty() {
            return Ok(0);
        }
        let v: serde_json::Value = serde_json::from_slice(&self.error).with_context(|| {
            format!(
                "error stream is not a Status: {:?}",
                String::from_utf8_lossy(&self.error)
            )
        })?;
        match v["status"].as_str() {
            Some("Success") => Ok(0),
            Some("Failure") if v["reason"] == "NonZeroExitCode" => {
                let causes = v["details"]["causes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                causes
                    .iter()
                    .find(|c| c["reason"] == "ExitCode")
                    .and_then(|c| c["message"].as_str())
                    .and_then(|m| m.parse().ok())
                    .with_context(|| format!("no ExitCode cause in {v}"))
            }
            _ => bail!("session failed: {v}"),
        }
    }
}

impl Session {
    pub(crate) fn new(
        tx: mpsc::Sender<ClientMsg>,
        out: mpsc::Receiver<(u8, Bytes)>,
        protocol: String,
    ) -> Session {
        Session {
            tx,
            out,
            protocol,
            collected: Output::default(),
        }
    }

    pub async fn write_stdin(&self, data: &[u8]) -> anyhow::Result<()> {
        self.tx
            .send(ClientMsg::Stdin(Bytes::copy_from_slice(data)))
            .await
            .map_err(|_| anyhow::anyhow!("session is closed"))
    }

    pub async fn close_stdin(&self) -> anyhow::Result<()> {
        self.tx
            .send(ClientMsg::CloseStdin)
            .await
            .map_err(|_| anyhow::anyhow!("session is closed"))
    }

    pub async fn resize(&self, width: u16, height: u16) -> anyhow::Result<()> {
        self.tx
            .send(ClientMsg::Resize(width, height))
            .await
            .map_err(|_| anyhow::anyhow!("session is closed"))
    }

    fn collect(&mut self, ch: u8, data: &[u8]) {
        match ch {
            STDOUT => self.collected.stdout.extend_from_slice(data),
            STDERR => self.collected.stderr.extend_from_slice(data),
            ERROR => self.collected.error.extend_from_slice(data),
            _ => {}
        }
    }

    /// Reads until stdout contains `needle`; returns stdout so far.
    pub async fn read_stdout_until(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let so_far = String::from_utf8_lossy(&self.collected.stdout).into_owned();
            if so_far.contains(needle) {
                return Ok(so_far);
            }
            match tokio::time::timeout_at(deadline, self.out.recv()).await {
                Ok(Some((ch, data))) => self.collect(ch, &data),
                Ok(None) => bail!("session ended before {needle:?} appeared; stdout: {so_far:?}"),
                Err(_) => bail!("{needle:?} did not appear in {timeout:?}; stdout: {so_far:?}"),
            }
        }
    }

    /// Reads everything until the server ends the session.
    pub async fn finish(mut self, timeout: Duration) -> anyhow::Result<Output> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.out.recv()).await {
                Ok(Some((ch, data))) => self.collect(ch, &data),
                Ok(None) => return Ok(self.collected),
                Err(_) => bail!(
                    "session did not end in {timeout:?}; stdout so far: {:?}",
                    String::from_utf8_lossy(&self.collected.stdout)
                ),
            }
        }
    }
}

/// The transport and subprotocol offers of a session.
#[derive(Debug, Clone, Copy)]
pub enum Transport {
    /// SPDY/3.1 offering these `X-Stream-Protocol-Version`s, in order.
    Spdy(&'static [&'static str]),
    /// WebSocket offering these subprotocols, in order.
    WebSocket(&'static [&'static str]),
}

impl Transport {
    pub const SPDY_V4: Transport = Transport::Spdy(&[
        "v4.channel.k8s.io",
        "v3.channel.k8s.io",
        "v2.channel.k8s.io",
        "channel.k8s.io",
    ]);
    pub const WS_V5: Transport = Transport::WebSocket(&["v5.channel.k8s.io", "v4.channel.k8s.io"]);
    pub const WS_V4: Transport = Transport::WebSocket(&["v4.channel.k8s.io"]);
    pub const WS_V4_BASE64: Transport = Transport::WebSocket(&["v4.base64.channel.k8s.io"]);
}

/// Opens an exec or attach session at `url`.
pub async fn connect(url: &str, transport: Transport, opts: StreamOpts) -> anyhow::Result<Session> {
    match transport {
        Transport::Spdy(protocols) => spdy::remote_command(url, protocols, opts).await,
        Transport::WebSocket(protocols) => ws::remote_command(url, protocols, opts).await,
    }
}
