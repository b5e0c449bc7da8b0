//! Kubernetes' WebSocket channel protocol: each message is one channel byte followed by that
//! channel's data (`*.channel.k8s.io`), or, in the base64 flavour, a text message of the
//! channel's digit followed by the base64 data (`*.base64.channel.k8s.io`). v5 adds the close
//! signal: a message on channel 255 whose data is the channel the peer will write no more to.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};

use super::{Activity, wait_closed};

/// The v5 close-signal channel.
pub const CLOSE_CHANNEL: u8 = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Binary,
    Base64,
}

enum Out {
    Data(u8, Bytes),
    Close,
}

/// An open channel connection: inbound `(channel, data)` messages arrive on `inbound`.
pub struct WsConn {
    pub inbound: mpsc::Receiver<(u8, Bytes)>,
    pub handle: WsHandle,
}

#[derive(Clone)]
pub struct WsHandle {
    out: mpsc::Sender<Out>,
    closed: watch::Receiver<bool>,
}

impl WsHandle {
    /// Sends one message on `channel`; false once the connection is gone.
    pub async fn send(&self, channel: u8, data: Bytes) -> bool {
        self.out.send(Out::Data(channel, data)).await.is_ok()
    }

    /// Sends a normal close once everything queued before it is written.
    pub async fn close(&self) {
        let _ = self.out.send(Out::Close).await;
    }

    pub async fn closed(&self) {
        let mut rx = self.closed.clone();
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// Serves a WebSocket whose handshake has been answered.
pub fn serve<IO>(ws: WebSocketStream<IO>, encoding: Encoding, idle: Duration) -> WsConn
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(64);
    let (in_tx, in_rx) = mpsc::channel::<(u8, Bytes)>(64);
    let (closed_tx, closed_rx) = watch::channel(false);
    let closed_tx = Arc::new(closed_tx);
    let activity = Activity::new();

    let (wact, wclosed_tx, mut wclosed) = (activity.clone(), closed_tx.clone(), closed_rx.clone());
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                m = out_rx.recv() => m,
                _ = wait_closed(&mut wclosed) => None,
            };
            match msg {
                Some(Out::Data(ch, data)) => {
                    let msg = match encoding {
                        Encoding::Binary => {
                            let mut b = BytesMut::with_capacity(data.len() + 1);
                            b.put_u8(ch);
                            b.put_slice(&data);
                            Message::Binary(b.freeze())
                        }
                        Encoding::Base64 => {
                            let mut s = String::with_capacity(data.len() * 4 / 3 + 8);
                            s.push(char::from(b'0' + ch % 10));
                            base64::engine::general_purpose::STANDARD.encode_string(&data, &mut s);
                            Message::text(s)
                        }
                    };
                    if sink.send(msg).await.is_err() {
                        break;
                    }
                    wact.touch();
                }
                Some(Out::Close) => {
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code: CloseCode::Normal,
                            reason: "".into(),
                        })))
                        .await;
                    break;
                }
                None => break,
            }
        }
        let _ = sink.close().await;
        wclosed_tx.send_replace(true);
    });

    let (ract, rclosed_tx, mut rclosed, idle_out) =
        (activity, closed_tx, closed_rx.clone(), out_tx.clone());
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                m = stream.next() => m,
                _ = tokio::time::sleep(ract.remaining(idle)) => {
                    if ract.idle_for() >= idle {
                        tracing::info!(idle_secs = idle.as_secs(), "closing idle streaming connection");
                        let _ = idle_out.send(Out::Close).await;
                        break;
                    }
                    continue;
                }
                _ = wait_closed(&mut rclosed) => None,
            };
            let Some(Ok(msg)) = msg else { break };
            ract.touch();
            let decoded = match msg {
                Message::Binary(b) if !b.is_empty() => Some((b[0], b.slice(1..))),
                Message::Text(t) if !t.is_empty() => {
                    let t = t.as_str();
                    let ch = t.as_bytes()[0].wrapping_sub(b'0');
                    t.get(1..)
                        .and_then(|rest| {
                            base64::engine::general_purpose::STANDARD.decode(rest).ok()
                        })
                        .map(|d| (ch, Bytes::from(d)))
                }
                Message::Close(_) => break,
                _ => None,
            };
            if let Some(m) = decoded {
                if in_tx.send(m).await.is_err() {
                    // Nobody reads inbound data any more; keep draining for close/idle.
                    continue;
                }
            }
        }
        rclosed_tx.send_replace(true);
    });

    WsConn {
        inbound: in_rx,
        handle: WsHandle {
            out: out_tx,
            closed: closed_rx,
        },
    }
}
