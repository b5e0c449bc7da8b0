//! ttrpc over NRI's connection multiplexer, both written here.
//!
//! One unix connection carries two virtual connections: frames of `conn id: u32 BE`,
//! `length: u32 BE`, payload. Connection 1 carries the plugin's ttrpc service (the runtime
//! calls it), connection 2 the runtime's (the plugin calls it). Each virtual connection is
//! a byte stream of ttrpc messages: `length: u32 BE`, `stream id: u32 BE`, `type: u8`
//! (1 request, 2 response), `flags: u8`, then a protobuf `Request` or `Response`.
//!
//! Why not the `ttrpc` crate: it serves and dials file descriptors, not a virtual connection
//! inside another stream, so it would need a socketpair and a copying task per direction,
//! and its codegen wants `protoc` and the `.proto` files at build time. The framing is small;
//! the messages are prost structs.
//!
//! The peer is untrusted: frames and messages are bounded (4 MiB, as ttrpc), a malformed one
//! closes the connection, concurrent incoming calls are bounded, and every call the local
//! side makes carries a deadline.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Semaphore, oneshot, watch};

/// The virtual connection of the plugin's service.
pub const PLUGIN_CONN: u32 = 1;
/// The virtual connection of the runtime's service.
pub const RUNTIME_CONN: u32 = 2;

const MUX_HEADER: usize = 8;
const TTRPC_HEADER: usize = 10;
/// ttrpc's own limit on a message.
pub const MAX_MESSAGE: usize = 4 << 20;
/// What one mux frame carries at most when we write: the Go side reads a frame into a
/// 4 KiB buffer when it has nothing buffered.
const WRITE_CHUNK: usize = 4096;
const TYPE_REQUEST: u8 = 1;
const TYPE_RESPONSE: u8 = 2;
/// Calls from the peer served at once; more are refused with `RESOURCE_EXHAUSTED`.
const MAX_INFLIGHT: usize = 16;

/// gRPC status codes ttrpc uses.
pub mod code {
    pub const UNKNOWN: i32 = 2;
    pub const NOT_FOUND: i32 = 5;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INVALID_ARGUMENT: i32 = 3;
}

#[derive(Clone, PartialEq, prost::Message)]
struct Request {
    #[prost(string, tag = "1")]
    service: String,
    #[prost(string, tag = "2")]
    method: String,
    #[prost(bytes = "vec", tag = "3")]
    payload: Vec<u8>,
    #[prost(int64, tag = "4")]
    timeout_nano: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Response {
    #[prost(message, optional, tag = "1")]
    status: Option<RpcStatus>,
    #[prost(bytes = "vec", tag = "2")]
    payload: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The peer answered with an error status.
    #[error("{message} (code {code})")]
    Status { code: i32, message: String },
    /// No answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection is gone (closed, or closed for a protocol error).
    #[error("connection closed")]
    Closed,
    /// The answer could not be decoded.
    #[error("bad message: {0}")]
    Decode(#[from] prost::DecodeError),
}

impl CallError {
    /// Errors after which the peer cannot be trusted to answer again.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, CallError::Status { .. })
    }
}

/// An error status a handler returns to the peer.
#[derive(Debug, Clone)]
pub struct Status {
    pub code: i32,
    pub message: String,
}

impl Status {
    pub fn new(code: i32, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
        }
    }
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Serves the calls the peer makes: `(service, method, payload)` → response payload.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        service: String,
        method: String,
        payload: Vec<u8>,
    ) -> BoxFuture<Result<Vec<u8>, Status>>;
}

/// One multiplexed connection: calls out on one virtual connection, serves the other.
pub struct Channel {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Mutex<HashMap<u32, oneshot::Sender<Response>>>,
    next_stream: AtomicU32,
    call_conn: u32,
    serve_conn: u32,
    closed: AtomicBool,
    closed_tx: watch::Sender<bool>,
    inflight: Arc<Semaphore>,
}

impl Channel {
    /// Starts reading `stream`; calls go out on `call_conn`, calls on `serve_conn` go to
    /// `handler`. The reader runs until the peer closes or breaks the protocol.
    pub fn start(
        stream: UnixStream,
        call_conn: u32,
        serve_conn: u32,
        handler: Arc<dyn Handler>,
    ) -> Arc<Channel> {
        let (read, write) = stream.into_split();
        let (closed_tx, _) = watch::channel(false);
        let ch = Arc::new(Channel {
            writer: tokio::sync::Mutex::new(write),
            pending: Mutex::new(HashMap::new()),
            next_stream: AtomicU32::new(1),
            call_conn,
            serve_conn,
            closed: AtomicBool::new(false),
            closed_tx,
            inflight: Arc::new(Semaphore::new(MAX_INFLIGHT)),
        });
        let this = ch.clone();
        tokio::spawn(async move {
            if let Err(e) = this.read_loop(read, handler).await {
                tracing::debug!(error = %e, "NRI connection ended");
            }
            this.close();
        });
        ch
    }

    /// Closes the connection; pending calls fail with [`CallError::Closed`].
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.lock_pending().clear();
        let _ = self.closed_tx.send(true);
        if let Ok(mut w) = self.writer.try_lock() {
            // Best effort: wakes the peer; the read half goes with the reader task.
            let _ = futures::FutureExt::now_or_never(w.shutdown());
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Resolves once the connection is closed.
    pub async fn closed(&self) {
        let mut rx = self.closed_tx.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u32, oneshot::Sender<Response>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls `service/method` on the peer; the whole call (writing included) is bounded by
    /// `timeout`, which the peer is told as well.
    pub async fn call<Req: Message, Resp: Message + Default>(
        &self,
        service: &str,
        method: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        if self.is_closed() {
            return Err(CallError::Closed);
        }
        let stream = self.next_stream.fetch_add(2, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        self.lock_pending().insert(stream, tx);
        let request = Request {
            service: service.to_owned(),
            method: method.to_owned(),
            payload: req.encode_to_vec(),
            timeout_nano: i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX),
        };
        let mut closed = self.closed_tx.subscribe();
        let exchange = async {
            self.send(
                self.call_conn,
                stream,
                TYPE_REQUEST,
                &request.encode_to_vec(),
            )
            .await?;
            tokio::select! {
                r = rx => r.map_err(|_| CallError::Closed),
                _ = closed.wait_for(|c| *c) => Err(CallError::Closed),
            }
        };
        let result = tokio::time::timeout(timeout, exchange).await;
        self.lock_pending().remove(&stream);
        let response = match result {
            Ok(r) => r?,
            Err(_) => return Err(CallError::Timeout(timeout)),
        };
        if let Some(s) = response.status.filter(|s| s.code != 0) {
            return Err(CallError::Status {
                code: s.code,
                message: s.message,
            });
        }
        Ok(Resp::decode(response.payload.as_slice())?)
    }

    /// Writes one ttrpc message on virtual connection `conn`, in frames of at most 4 KiB.
    async fn send(
        &self,
        conn: u32,
        stream: u32,
        kind: u8,
        payload: &[u8],
    ) -> Result<(), CallError> {
        if payload.len() > MAX_MESSAGE {
            return Err(CallError::Status {
                code: code::RESOURCE_EXHAUSTED,
                message: format!("message of {} bytes exceeds {MAX_MESSAGE}", payload.len()),
            });
        }
        let mut msg = Vec::with_capacity(TTRPC_HEADER + payload.len());
        msg.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        msg.extend_from_slice(&stream.to_be_bytes());
        msg.push(kind);
        msg.push(0);
        msg.extend_from_slice(payload);
        let mut out =
            Vec::with_capacity(msg.len() + msg.len() / WRITE_CHUNK * MUX_HEADER + MUX_HEADER);
        for chunk in msg.chunks(WRITE_CHUNK) {
            out.extend_from_slice(&conn.to_be_bytes());
            out.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        let mut w = self.writer.lock().await;
        if self.is_closed() {
            return Err(CallError::Closed);
        }
        w.write_all(&out).await.map_err(|_| CallError::Closed)
    }

    async fn read_loop(
        self: &Arc<Self>,
        mut read: tokio::net::unix::OwnedReadHalf,
        handler: Arc<dyn Handler>,
    ) -> std::io::Result<()> {
        let mut buffers: HashMap<u32, Vec<u8>> = HashMap::new();
        let mut closed = self.closed_tx.subscribe();
        loop {
            let mut hdr = [0u8; MUX_HEADER];
            tokio::select! {
                r = read.read_exact(&mut hdr) => { r?; }
                _ = closed.wait_for(|c| *c) => return Ok(()),
            }
            let conn = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
            let len = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
            if len > MAX_MESSAGE + TTRPC_HEADER {
                return Err(protocol(format!("mux frame of {len} bytes")));
            }
            let mut frame = vec![0u8; len];
            read.read_exact(&mut frame).await?;
            if conn != self.call_conn && conn != self.serve_conn {
                continue;
            }
            let buf = buffers.entry(conn).or_default();
            buf.extend_from_slice(&frame);
            while buf.len() >= TTRPC_HEADER {
                let length = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                if length > MAX_MESSAGE {
                    return Err(protocol(format!("ttrpc message of {length} bytes")));
                }
                if buf.len() < TTRPC_HEADER + length {
                    break;
                }
                let stream = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
                let kind = buf[8];
                let payload: Vec<u8> = buf[TTRPC_HEADER..TTRPC_HEADER + length].to_vec();
                buf.drain(..TTRPC_HEADER + length);
                match (conn == self.call_conn, kind) {
                    (true, TYPE_RESPONSE) => {
                        let response = Response::decode(payload.as_slice())
                            .map_err(|e| protocol(format!("bad response: {e}")))?;
                        if let Some(tx) = self.lock_pending().remove(&stream) {
                            let _ = tx.send(response);
                        }
                    }
                    (false, TYPE_REQUEST) => self.serve(stream, payload, handler.clone()),
                    // Streaming data and other types: no NRI call uses them.
                    _ => {}
                }
            }
        }
    }

    /// Runs one incoming call in its own task and writes its answer.
    fn serve(self: &Arc<Self>, stream: u32, payload: Vec<u8>, handler: Arc<dyn Handler>) {
        let this = self.clone();
        let permit = self.inflight.clone().try_acquire_owned();
        tokio::spawn(async move {
            let result = match (permit, Request::decode(payload.as_slice())) {
                (Err(_), _) => Err(Status::new(
                    code::RESOURCE_EXHAUSTED,
                    "too many calls in flight",
                )),
                (_, Err(e)) => Err(Status::new(
                    code::INVALID_ARGUMENT,
                    format!("bad request: {e}"),
                )),
                (Ok(_permit), Ok(req)) => {
                    handler.handle(req.service, req.method, req.payload).await
                }
            };
            let response = match result {
                Ok(payload) => Response {
                    status: None,
                    payload,
                },
                Err(s) => Response {
                    status: Some(RpcStatus {
                        code: s.code,
                        message: s.message,
                    }),
                    payload: Vec::new(),
                },
            };
            if this
                .send(
                    this.serve_conn,
                    stream,
                    TYPE_RESPONSE,
                    &response.encode_to_vec(),
                )
                .await
                .is_err()
            {
                this.close();
            }
        });
    }
}

fn protocol(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Decodes a request payload for a handler, as an `INVALID_ARGUMENT` status when it is bad.
pub fn decode<M: Message + Default>(payload: &[u8]) -> Result<M, Status> {
    M::decode(payload).map_err(|e| Status::new(code::INVALID_ARGUMENT, format!("bad request: {e}")))
}
