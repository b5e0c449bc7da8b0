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
use imagestore::ErrorKind;

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

/// The HTTP status of a request the backend refused, by the kind of its error: 404 only for
/// what does not exist (as kubelet's streaming server answers an unknown token), 400 for the
/// client's mistakes, 503 for what may work on a retry, 500 for crid's own failures.
fn http_status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorKind::FailedPrecondition => StatusCode::CONFLICT,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The ports of a WebSocket port-forward query (`port=80&port=81,82`), each between 1 and
/// 65535, at least one; the message says what is wrong otherwise (kubelet's `NewV4Options`).
fn query_ports(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for value in query.split('&').filter_map(|kv| kv.strip_prefix("port=")) {
        if value.is_empty() {
            return Err("query parameter \"port\" cannot be empty".into());
        }
        for p in value.split(',') {
            match p.parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => return Err(format!("{p:?} is not a port between 1 and 65535")),
            }
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    Ok(ports)
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

    // Port forwarding resolves the pod before anything is promised to the client: a pod that is
    // gone gets 404, a failure of crid's own 500. A pod that is no longer ready is reported as
    // kubelet's streaming server reports it: the upgrade succeeds and each forwarded
    // connection's error stream says why it cannot be made.
    let forward = match &request {
        Request::PortForward { pod_id, ports } => {
            let target = match server.backend.pod_netns(pod_id).await {
                Ok(netns) => Ok(netns),
                Err(e) if e.kind() == ErrorKind::FailedPrecondition => Err(e.to_string()),
                Err(e) => return plain(http_status(e.kind()), &e.to_string()),
            };
            // Over WebSocket the ports are fixed at the upgrade: the CRI request's, else the
            // query's; over SPDY each stream names its port and the CRI's ports (if any) bound
            // which.
            let ports = match (&transport, ports.is_empty()) {
                (Transport::WebSocket { .. }, true) => {
                    match query_ports(req.uri().query().unwrap_or_default()) {
                        Ok(ports) => ports,
                        Err(msg) => return plain(StatusCode::BAD_REQUEST, &msg),
                    }
                }
                _ => ports.clone(),
            };
            Some(portforward::Forward { target, ports })
        }
        _ => None,
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
        match (transport, forward) {
            (Transport::Spdy, Some(forward)) => {
                portforward::serve_spdy(mux::serve(io, idle), forward).await
            }
            (Transport::Spdy, None) => {
                let conn = mux::serve(io, idle);
                let opts = options(&request);
                if let Some(ch) = remotecommand::spdy_channels(conn, opts, protocol).await {
                    start_session(&server, request, ch).await;
                }
            }
            (Transport::WebSocket { .. }, forward) => {
                let limits = WebSocketConfig::default()
                    .max_message_size(Some(MAX_WS_MESSAGE))
                    .max_frame_size(Some(MAX_WS_MESSAGE));
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(limits)).await;
                let conn = ws::serve(ws, encoding, idle);
                match forward {
                    Some(forward) => portforward::serve_ws(conn, forward).await,
                    None => {
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
    fn refusals_map_to_http_statuses() {
        for (kind, status) in [
            (ErrorKind::NotFound, StatusCode::NOT_FOUND),
            (ErrorKind::InvalidArgument, StatusCode::BAD_REQUEST),
            (ErrorKind::FailedPrecondition, StatusCode::CONFLICT),
            (ErrorKind::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
            (ErrorKind::Internal, StatusCode::INTERNAL_SERVER_ERROR),
            (
                ErrorKind::ResourceExhausted,
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ] {
            assert_eq!(http_status(kind), status, "{kind:?}");
        }
    }

    #[test]
    fn query_ports_are_each_a_port_and_at_least_one() {
        assert_eq!(query_ports("port=80&port=81,82"), Ok(vec![80, 81, 82]));
        assert_eq!(query_ports("a=b&port=443"), Ok(vec![443]));
        for bad in [
            "",
            "a=b",
            "port=",
            "port=0",
            "port=x",
            "port=80,",
            "port=65536",
        ] {
            assert!(query_ports(bad).is_err(), "{bad:?}");
        }
    }

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
