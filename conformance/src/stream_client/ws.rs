//! The WebSocket client: Kubernetes' channel protocol (`v5`/`v4.channel.k8s.io`, and the
//! base64 flavour) for exec/attach and for port forwarding.

use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{ClientMsg, HttpError, Session, StreamOpts};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn to_ws_url(url: &str, query: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("not an http URL: {url}"))?;
    let sep = if rest.contains('?') { '&' } else { '?' };
    Ok(if query.is_empty() {
        format!("ws://{rest}")
    } else {
        format!("ws://{rest}{sep}{query}")
    })
}

/// Connects offering `protocols`; returns the socket and the protocol the server chose.
pub async fn connect(url: &str, query: &str, protocols: &[&str]) -> anyhow::Result<(Ws, String)> {
    let mut req = to_ws_url(url, query)?.into_client_request()?;
    if !protocols.is_empty() {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(&protocols.join(", "))?,
        );
    }
    let (ws, resp) = match tokio_tungstenite::connect_async(req).await {
        Ok(ok) => ok,
        Err(WsError::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            return Err(HttpError {
                status: resp.status().as_u16(),
                body,
            }
            .into());
        }
        Err(e) => return Err(e).context("websocket connect failed"),
    };
    let protocol = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((ws, protocol))
}

fn encode(base64: bool, ch: u8, data: &[u8]) -> Message {
    if base64 {
        let mut s = String::new();
        s.push(char::from(b'0' + ch));
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
        Message::text(s)
    } else {
        let mut b = Vec::with_capacity(data.len() + 1);
        b.push(ch);
        b.extend_from_slice(data);
        Message::Binary(b.into())
    }
}

fn decode(msg: Message) -> Option<(u8, Bytes)> {
    match msg {
        Message::Binary(b) if !b.is_empty() => Some((b[0], b.slice(1..))),
        Message::Text(t) if !t.is_empty() => {
            let ch = t.as_bytes()[0].wrapping_sub(b'0');
            let data = base64::engine::general_purpose::STANDARD
                .decode(t.as_str().get(1..)?)
                .ok()?;
            Some((ch, Bytes::from(data)))
        }
        _ => None,
    }
}

/// Starts an exec/attach session over WebSocket.
pub async fn remote_command(
    url: &str,
    protocols: &[&str],
    opts: StreamOpts,
) -> anyhow::Result<Session> {
    let _ = opts;
    let (ws, protocol) = connect(url, "", protocols).await?;
    let base64 = protocol.contains("base64");
    let v5 = protocol.starts_with("v5.");
    let (mut sink, mut stream) = ws.split();
    let (out_tx, out_rx) = mpsc::channel::<(u8, Bytes)>(64);
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            if let Some((ch, data)) = decode(msg) {
                if out_tx.send((ch, data)).await.is_err() {
                    break;
                }
            }
        }
    });
    let (tx, mut rx) = mpsc::channel::<ClientMsg>(16);
    tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let m = match msg {
                ClientMsg::Stdin(d) => encode(base64, 0, &d),
                // Only v5 can say "no more stdin"; older protocols have no way to.
                ClientMsg::CloseStdin if v5 => Message::Binary(vec![255u8, 0].into()),
                ClientMsg::CloseStdin => continue,
                ClientMsg::Resize(w, h) => {
                    let json = serde_json::json!({"Width": w, "Height": h}).to_string();
                    encode(base64, 4, json.as_bytes())
                }
            };
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    Ok(Session::new(tx, out_rx, protocol))
}

/// A WebSocket port-forward connection: channel 2i carries port i's data, 2i+1 its errors.
pub struct WsPortForward {
    ws: Ws,
    base64: bool,
    pub protocol: String,
    /// Error channel text per port index.
    pub errors: Vec<Vec<u8>>,
}

impl WsPortForward {
    /// Connects and reads the two port preambles of every port.
    pub async fn connect(url: &str, ports: &[u16]) -> anyhow::Result<WsPortForward> {
        let query = ports
            .iter()
            .map(|p| format!("port={p}"))
            .collect::<Vec<_>>()
            .join("&");
        let (ws, protocol) = connect(url, &query, &["v4.channel.k8s.io"]).await?;
        let mut pf = WsPortForward {
            ws,
            base64: protocol.contains("base64"),
            protocol,
            errors: vec![Vec::new(); ports.len()],
        };
        for _ in 0..ports.len() * 2 {
            let (ch, data) = pf
                .next(Duration::from_secs(10))
                .await?
                .context("closed early")?;
            let idx = ch as usize / 2;
            let want = ports.get(idx).context("preamble on an unknown channel")?;
            if data.as_ref() != want.to_le_bytes() {
                bail!("channel {ch} opened with {data:?}, not port {want} as little-endian u16");
            }
        }
        Ok(pf)
    }

    async fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<(u8, Bytes)>> {
        loop {
            let msg = tokio::time::timeout(timeout, self.ws.next())
                .await
                .context("no message from the server")?;
            match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(m)) => {
                    if let Some(d) = decode(m) {
                        return Ok(Some(d));
                    }
                }
            }
        }
    }

    /// Sends `data` to port index `idx` and reads its data channel until `want` bytes came.
    pub async fn round_trip(
        &mut self,
        idx: usize,
        data: &[u8],
        want: usize,
    ) -> anyhow::Result<Vec<u8>> {
        let ch = (2 * idx) as u8;
        self.ws.send(encode(self.base64, ch, data)).await?;
        let mut got = Vec::new();
        while got.len() < want {
            match self.next(Duration::from_secs(10)).await? {
                Some((c, d)) if c == ch => got.extend_from_slice(&d),
                Some((c, d)) if c == ch + 1 => self.errors[idx].extend_from_slice(&d),
                Some(_) => {}
                None => break,
            }
        }
        Ok(got)
    }

    /// Reads until the server closes, collecting error channel text.
    pub async fn drain(&mut self, timeout: Duration) -> anyhow::Result<()> {
        while let Some((c, d)) = self.next(timeout).await? {
            if c % 2 == 1 {
                if let Some(e) = self.errors.get_mut(c as usize / 2) {
                    e.extend_from_slice(&d);
                }
            }
        }
        Ok(())
    }
}
