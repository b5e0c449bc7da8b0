//! The HTTP side: serves `/exec/<token>`, `/attach/<token>` and `/portforward/<token>`, checks
//! the token, negotiates SPDY/3.1 or WebSocket and the subprotocol, answers 101 and hands the
//! upgraded connection to the protocol.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue, UPGRADE};
use hyper::{Request as HttpRequest, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::backend::StreamBackend;
use super::remotecommand::{self, Options};
use super::token::{Request, TokenCache};
use super::{StreamError, mux, portforward, ws};

/// How long a client may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest WebSocket message accepted from a client (clients send stdin in small chunks).
const MAX_WS_MESSAGE: usize = 4 << 20;

/// SPDY subprotocols for exec and attach, newest first.
const SPDY_REMOTECOMMAND: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
const SPDY_PORTFORWARD: &[&str] = &["portforward.k8s.io"];
/// WebSocket subprotocols for exec and attach.
const WS_REMOTECOMMAND: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];
const WS_PORTFORWARD: &[&str] = &["v4.channel.k8s.io", "v4.base64.channel.k8s.io"];

/// Settings of the streaming server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub address: String,
    /// 0 picks a free port.
    pub port: u16,
    /// Connections with no traffic for this long are closed.
    pub idle_timeout: Duration,
    /// How long a URL stays valid.
    pub token_ttl: Duration,
    /// Most URLs handed out and not yet used.
    pub max_tokens: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            address: "127.0.0.1".into(),
            port: 0,
            idle_timeout: Duration::from_secs(4 * 60 * 60),
            token_ttl: Duration::from_secs(60),
            max_tokens: 1000,
        }
    }
}

/// The running server.
pub struct Server {
    addr: SocketAddr,
    tokens: TokenCache,
    backend: Arc<dyn StreamBackend>,
    idle: Duration,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Server {
    /// Binds the configured address and starts serving.
    pub async fn start(
        config: &ServerConfig,
        backend: Arc<dyn StreamBackend>,
    ) -> std::io::Result<Arc<Server>> {
        let listener = TcpListener::bind((config.address.as_str(), config.port)).await?;
        let addr = listener.local_addr()?;
        let server = Arc::new_cyclic(|weak: &std::sync::Weak<Server>| {
            let weak = weak.clone();
            Server {
                addr,
                tokens: TokenCache::new(config.token_ttl, config.max_tokens),
                backend,
                idle: config.idle_timeout,
                accept: tokio::spawn(accept_loop(listener, weak)),
            }
        });
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn backend(&self) -> &dyn StreamBackend {
        self.backend.as_ref()
    }

    /// Stores the request and returns the URL that serves it once.
    pub fn url_for(&self, request: Request) -> Result<String, StreamError> {
        let kind = request.kind();
        let token = self.tokens.insert(request)?;
        Ok(format!("http://{}/{kind}/{token}", self.addr))
    }
}

async fn accept_loop(listener: TcpListener, server: std::sync::Weak<Server>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "streaming accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(server) = server.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(handle(server, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(peer = %peer, error = %e, "streaming connection ended");
            }
        });
    }
}

fn plain(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// All values of a (possibly repeated, comma-separated) header, in order.
fn header_values(req: &HttpRequest<Incoming>, name: &str) -> Vec<String> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The first protocol the client offers that this side supports; `Some("")` when it offered
/// none (legacy clients), `None` when nothing matches.
fn negotiate(offered: &[String], supported: &[&str]) -> Option<String> {
    if offered.is_empty() {
        return Some(String::new());
    }
    offered
        .iter()
        .find(|o| supported.contains(&o.as_str()))
        .cloned()
}

enum Transport {
    Spdy,
    WebSocket { key: String },
}

async fn handle(server: Arc<Server>, mut req: HttpRequest<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if !matches!(kind, "exec" | "attach" | "portforward") || token.is_empty() {
        return plain(StatusCode::NOT_FOUND, "not found");
    }
    let Some(request) = server.tokens.take(token, kind) else {
        return plain(StatusCode::NOT_FOUND, "unknown, used or expired token");
    };

    let upgrade = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let transport = if upgrade == "websocket" {
        match req
            .headers()
            .get("sec-websocket-key")
            .and_then(|v| v.to_str().ok())
        {
            Some(key) => Transport::WebSocket {
                key: key.to_owned(),
            },
            None => return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key"),
        }
    } else if upgrade == "spdy/3.1" {
        Transport::Spdy
    } else {
        return plain(
            StatusCode::BAD_REQUEST,
            "expected an upgrade to SPDY/3.1 or websocket",
        );
    };
    let portforward = matches!(request, Request::PortForward { .. });
    let (offered, supported) = match (&transport, portforward) {
        (Transport::Spdy, false) => (
            header_values(&req, "x-stream-protocol-version"),
            SPDY_REMOTECOMMAND,
        ),
        (Transport::Spdy, true) => (
            header_values(&req, "x-stream-protocol-version"),
            SPDY_PORTFORWARD,
        ),
        (Transport::WebSocket { .. }, false) => (
            header_values(&req, "sec-websocket-protocol"),
            WS_REMOTECOMMAND,
        ),
        (Transport::WebSocket { .. }, true) => (
            header_values(&req, "sec-websocket-protocol"),
            WS_PORTFORWARD,
        ),
    };
    let Some(protocol) = negotiate(&offered, supported) else {
        let mut r = plain(
            StatusCode::FORBIDDEN,
            &format!(
                "none of the requested protocols {offered:?} is supported; supported: {supported:?}"
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&supported.join(", ")) {
            r.headers_mut()
                .insert("x-accepted-stream-protocol-versions", v);
        }
        return r;
    };

    // Port forwarding needs the namespace before anything is promised to the client.
    let netns = match &request {
        Request::PortForward { pod_id, .. } => match server.backend.pod_netns(pod_id).await {
            Ok(p) => Some(p),
            Err(e) => return plain(StatusCode::NOT_FOUND, &e.to_string()),
        },
        _ => None,
    };
    let ws_ports = match &request {
        Request::PortForward { ports, .. } if !ports.is_empty() => ports.clone(),
        Request::PortForward { .. } => {
            let ports: Vec<u16> = req
                .uri()
                .query()
                .unwrap_or_default()
                .split('&')
                .filter_map(|kv| kv.strip_prefix("port="))
                .flat_map(|v| v.split(','))
                .filter_map(|p| p.parse().ok())
                .filter(|p| *p > 0)
                .collect();
            if ports.is_empty() && matches!(transport, Transport::WebSocket { .. }) {
                return plain(
                    StatusCode::BAD_REQUEST,
                    "query parameter \"port\" is required",
                );
            }
            ports
        }
        _ => Vec::new(),
    };

    let on_upgrade = hyper::upgrade::on(&mut req);
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    let encoding = if protocol.contains("base64") {
        ws::Encoding::Base64
    } else {
        ws::Encoding::Binary
    };
    match &transport {
        Transport::Spdy => {
            h.insert(UPGRADE, HeaderValue::from_static("SPDY/3.1"));
            if !protocol.is_empty() {
                if let Ok(v) = HeaderValue::from_str(&protocol) {
                    h.insert("x-stream-protocol-version", v);
                }
            }
        }
        Transport::WebSocket { key } => {
            h.insert(UPGRADE, HeaderValue::from_static("websocket"));
            if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
                h.insert("sec-websocket-accept", v);
            }
            if !protocol.is_empty() {
                if let Ok(v) = HeaderValue::from_str(&protocol) {
                    h.insert("sec-websocket-protocol", v);
                }
            }
        }
    }

    let idle = server.idle;
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::debug!(error = %e, "streaming upgrade failed");
                return;
            }
        };
        match transport {
            Transport::Spdy => {
                let conn = mux::serve(io, idle);
                match request {
                    Request::PortForward { ports, .. } => {
                        let netns = netns.unwrap_or_default();
                        portforward::serve_spdy(conn, netns, ports).await
                    }
                    request => {
                        let opts = options(&request);
                        if let Some(ch) = remotecommand::spdy_channels(conn, opts, protocol).await {
                            start_session(&server, request, ch).await;
                        }
                    }
                }
            }
            Transport::WebSocket { .. } => {
                let limits = WebSocketConfig::default()
                    .max_message_size(Some(MAX_WS_MESSAGE))
                    .max_frame_size(Some(MAX_WS_MESSAGE));
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(limits)).await;
                let conn = ws::serve(ws, encoding, idle);
                match request {
                    Request::PortForward { .. } => {
                        let netns = netns.unwrap_or_default();
                        portforward::serve_ws(conn, netns, ws_ports).await
                    }
                    request => {
                        let opts = options(&request);
                        let ch = remotecommand::ws_channels(conn, opts, protocol).await;
                        start_session(&server, request, ch).await;
                    }
                }
            }
        }
    });
    response
}

fn options(request: &Request) -> Options {
    match request {
        Request::Exec(e) => Options::new(e.stdin, e.stdout, e.stderr, e.tty),
        Request::Attach(a) => Options::new(a.stdin, a.stdout, a.stderr, a.tty),
        Request::PortForward { .. } => Options::new(false, false, false, false),
    }
}

async fn start_session(server: &Server, request: Request, ch: remotecommand::Channels) {
    match request {
        Request::Exec(mut spec) => {
            spec.stderr = spec.stderr && !spec.tty;
            let id = spec.container_id.clone();
            let session = server.backend.exec(spec).await.map_err(|e| e.to_string());
            match &session {
                Ok(_) => tracing::debug!(container_id = %id, "exec session started"),
                Err(e) => tracing::warn!(container_id = %id, error = %e, "exec failed"),
            }
            remotecommand::run(ch, session, true).await;
        }
        Request::Attach(mut spec) => {
            spec.stderr = spec.stderr && !spec.tty;
            let session = server.backend.attach(spec).await.map_err(|e| e.to_string());
            remotecommand::run(ch, session, false).await;
        }
        Request::PortForward { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_takes_the_clients_first_supported_protocol() {
        let offered = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            negotiate(
                &offered(&["v5.channel.k8s.io", "v4.channel.k8s.io"]),
                SPDY_REMOTECOMMAND
            )
            .as_deref(),
            Some("v4.channel.k8s.io")
        );
        assert_eq!(negotiate(&[], SPDY_REMOTECOMMAND).as_deref(), Some(""));
        assert_eq!(negotiate(&offered(&["v9"]), SPDY_REMOTECOMMAND), None);
        assert_eq!(
            negotiate(&offered(&["v5.channel.k8s.io"]), WS_REMOTECOMMAND).as_deref(),
            Some("v5.channel.k8s.io")
        );
    }
}
