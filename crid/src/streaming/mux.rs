//! A SPDY/3.1 connection, server side: the peer opens streams, this side answers each with
//! SYN_REPLY and exchanges data on it. One task reads frames, one dispatches them, one writes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::spdy::{self, Frame, Headers};
use super::{Activity, wait_closed};

/// Most streams a peer may have open for sending at once.
const MAX_STREAMS: usize = 1024;
/// Largest DATA frame this side sends.
const CHUNK: usize = 32 * 1024;

enum Out {
    Frame(Frame),
    /// GOAWAY, flush and close the connection.
    Close,
}

/// A stream the peer opened.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    /// Data from the peer; ends at its FIN or RST_STREAM, or when the connection ends.
    pub rx: mpsc::Receiver<Bytes>,
    pub tx: StreamWriter,
}

impl Stream {
    pub fn header(&self, name: &str) -> Option<&str> {
        spdy::header(&self.headers, name)
    }
}

/// Sends data on one stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Out>,
}

impl StreamWriter {
    /// Sends data; false once the connection is gone.
    pub async fn write(&self, mut data: Bytes) -> bool {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(CHUNK));
            let frame = Frame::Data {
                id: self.id,
                fin: false,
                data: chunk,
            };
            if self.out.send(Out::Frame(frame)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Half-closes the stream (an empty DATA frame with FIN).
    pub async fn close(&self) {
        let _ = self
            .out
            .send(Out::Frame(Frame::Data {
                id: self.id,
                fin: true,
                data: Bytes::new(),
            }))
            .await;
    }

    pub async fn reset(&self, status: u32) {
        let _ = self
            .out
            .send(Out::Frame(Frame::RstStream {
                id: self.id,
                status,
            }))
            .await;
    }
}

/// The connection: new streams arrive on `streams`.
pub struct Conn {
    pub streams: mpsc::Receiver<Stream>,
    pub handle: ConnHandle,
}

/// Closes the connection or waits for its end.
#[derive(Clone)]
pub struct ConnHandle {
    out: mpsc::Sender<Out>,
    closed: watch::Receiver<bool>,
}

impl ConnHandle {
    /// Sends GOAWAY and closes once everything queued before it is written.
    pub async fn close(&self) {
        let _ = self.out.send(Out::Close).await;
    }

    /// Resolves when the connection has ended (peer gone, GOAWAY, idle timeout or close).
    pub async fn closed(&self) {
        let mut rx = self.closed.clone();
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// Starts serving a connection whose upgrade has been answered.
pub fn serve<IO>(io: IO, idle: Duration) -> Conn
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let (out_tx, out_rx) = mpsc::channel::<Out>(64);
    let (streams_tx, streams_rx) = mpsc::channel::<Stream>(16);
    let (closed_tx, closed_rx) = watch::channel(false);
    let closed_tx = Arc::new(closed_tx);
    let activity = Activity::new();

    tokio::spawn(write_loop(
        wr,
        out_rx,
        activity.clone(),
        closed_tx.clone(),
        closed_rx.clone(),
    ));
    let (frames_tx, frames_rx) = mpsc::channel::<Frame>(16);
    tokio::spawn(read_loop(rd, frames_tx, activity.clone()));
    tokio::spawn(dispatch(
        frames_rx,
        streams_tx,
        out_tx.clone(),
        activity,
        idle,
        closed_tx,
        closed_rx.clone(),
    ));
    Conn {
        streams: streams_rx,
        handle: ConnHandle {
            out: out_tx,
            closed: closed_rx,
        },
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    frames: mpsc::Sender<Frame>,
    activity: Activity,
) {
    let mut reader = spdy::Reader::default();
    loop {
        match reader.read(&mut rd).await {
            Ok(Some(frame)) => {
                activity.touch();
                if frames.send(frame).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "spdy read ended");
                return;
            }
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut out: mpsc::Receiver<Out>,
    activity: Activity,
    closed_tx: Arc<watch::Sender<bool>>,
    mut closed: watch::Receiver<bool>,
) {
    let mut writer = spdy::Writer::default();
    let mut buf = BytesMut::with_capacity(CHUNK + 64);
    let mut last_good = 0;
    loop {
        let msg = tokio::select! {
            m = out.recv() => m,
            _ = wait_closed(&mut closed) => None,
        };
        let Some(msg) = msg else { break };
        let frame = match msg {
            Out::Frame(f) => {
                if let Frame::SynReply { id, .. } = &f {
                    last_good = *id;
                }
                f
            }
            Out::Close => {
                buf.clear();
                let _ = writer.encode(
                    &Frame::GoAway {
                        last_good,
                        status: 0,
                    },
                    &mut buf,
                );
                let _ = wr.write_all(&buf).await;
                break;
            }
        };
        buf.clear();
        if let Err(e) = writer.encode(&frame, &mut buf) {
            tracing::debug!(error = %e, "spdy encode failed");
            break;
        }
        if wr.write_all(&buf).await.is_err() {
            break;
        }
        activity.touch();
    }
    let _ = wr.flush().await;
    let _ = wr.shutdown().await;
    closed_tx.send_replace(true);
}

async fn dispatch(
    mut frames: mpsc::Receiver<Frame>,
    streams: mpsc::Sender<Stream>,
    out: mpsc::Sender<Out>,
    activity: Activity,
    idle: Duration,
    closed_tx: Arc<watch::Sender<bool>>,
    mut closed: watch::Receiver<bool>,
) {
    let mut inbound: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    loop {
        let frame = tokio::select! {
            f = frames.recv() => f,
            _ = tokio::time::sleep(activity.remaining(idle)) => {
                if activity.idle_for() >= idle {
                    tracing::info!(idle_secs = idle.as_secs(), "closing idle streaming connection");
                    let _ = out.send(Out::Close).await;
                    break;
                }
                continue;
            }
            _ = wait_closed(&mut closed) => None,
        };
        let Some(frame) = frame else { break };
        match frame {
            Frame::SynStream { id, fin, headers } => {
                if inbound.len() >= MAX_STREAMS {
                    let _ = out
                        .send(Out::Frame(Frame::RstStream {
                            id,
                            status: spdy::RST_REFUSED_STREAM,
                        }))
                        .await;
                    continue;
                }
                if id % 2 == 0 || inbound.contains_key(&id) {
                    let _ = out
                        .send(Out::Frame(Frame::RstStream {
                            id,
                            status: spdy::RST_PROTOCOL_ERROR,
                        }))
                        .await;
                    continue;
                }
                let (tx, rx) = mpsc::channel(64);
                let reply = Frame::SynReply {
                    id,
                    fin: false,
                    headers: Headers::new(),
                };
                if out.send(Out::Frame(reply)).await.is_err() {
                    break;
                }
                if !fin {
                    inbound.insert(id, tx);
                }
                let stream = Stream {
                    id,
                    headers,
                    rx,
                    tx: StreamWriter {
                        id,
                        out: out.clone(),
                    },
                };
                if streams.send(stream).await.is_err() {
                    // Nobody takes new streams any more.
                    let _ = out
                        .send(Out::Frame(Frame::RstStream {
                            id,
                            status: spdy::RST_REFUSED_STREAM,
                        }))
                        .await;
                }
            }
            Frame::Data { id, fin, data } => {
                if let Some(tx) = inbound.get(&id) {
                    if !data.is_empty() && tx.send(data).await.is_err() {
                        inbound.remove(&id);
                    }
                }
                if fin {
                    inbound.remove(&id);
                }
            }
            Frame::RstStream { id, .. } => {
                inbound.remove(&id);
            }
            Frame::Ping { id } => {
                // Answer the peer's pings (odd ids from a client); ours would be even.
                if id % 2 == 1 {
                    let _ = out.send(Out::Frame(Frame::Ping { id })).await;
                }
            }
            Frame::GoAway { .. } => break,
            Frame::SynReply { .. }
            | Frame::Headers { .. }
            | Frame::WindowUpdate { .. }
            | Frame::Ignored => {}
        }
    }
    // The peer is gone or said GOAWAY: every inbound stream ends and the connection closes.
    drop(inbound);
    closed_tx.send_replace(true);
}
