//! The SPDY/3.1 client: a connection that opens streams (odd ids) the way client-go's
//! `httpstream/spdy` does, plus exec/attach and port-forward on top of it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::frame::{self, Frame};
use super::{ClientMsg, ERROR, STDERR, STDOUT, Session, StreamOpts};

enum Event {
    Reply,
    Data(Bytes),
    Fin,
    Reset(u32),
}

type Table = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Event>>>>;

/// A client SPDY connection.
pub struct SpdyConn {
    out: mpsc::Sender<Frame>,
    next_id: AtomicU32,
    streams: Table,
    /// The protocol the server chose.
    pub protocol: String,
}

/// A stream this side opened.
pub struct ClientStream {
    pub id: u32,
    rx: mpsc::UnboundedReceiver<Event>,
    out: mpsc::Sender<Frame>,
}

impl ClientStream {
    pub async fn write(&self, data: &[u8]) -> anyhow::Result<()> {
        for chunk in data.chunks(16 * 1024) {
            self.out
                .send(Frame::Data {
                    id: self.id,
                    fin: false,
                    data: Bytes::copy_from_slice(chunk),
                })
                .await
                .map_err(|_| anyhow::anyhow!("connection closed"))?;
        }
        Ok(())
    }

    /// Half-closes this side (FIN).
    pub async fn close(&self) {
        let _ = self
            .out
            .send(Frame::Data {
                id: self.id,
                fin: true,
                data: Bytes::new(),
            })
            .await;
    }

    /// The next data; `None` at the server's FIN, a reset or the connection's end.
    pub async fn read(&mut self) -> Option<Bytes> {
        loop {
            match self.rx.recv().await? {
                Event::Data(d) if !d.is_empty() => return Some(d),
                Event::Data(_) | Event::Reply => continue,
                Event::Fin | Event::Reset(_) => return None,
            }
        }
    }

    pub async fn read_to_end(&mut self, timeout: Duration) -> anyhow::Result<Vec<u8>> {
        let mut all = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.read()).await {
                Ok(Some(d)) => all.extend_from_slice(&d),
                Ok(None) => return Ok(all),
                Err(_) => bail!("stream {} did not end in {timeout:?}", self.id),
            }
        }
    }
}

impl SpdyConn {
    /// Upgrades `url` to SPDY/3.1 offering `protocols`.
    pub async fn connect(url: &str, query: &str, protocols: &[&str]) -> anyhow::Result<SpdyConn> {
        let mut headers = vec![("Upgrade", "SPDY/3.1".to_owned())];
        for p in protocols {
            headers.push(("X-Stream-Protocol-Version", (*p).to_owned()));
        }
        let (tcp, answer) = super::upgrade(url, query, &headers).await?;
        let protocol = answer
            .iter()
            .find(|(k, _)| k == "x-stream-protocol-version")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let upgrade = answer
            .iter()
            .find(|(k, _)| k == "upgrade")
            .map(|(_, v)| v.to_ascii_lowercase());
        if upgrade.as_deref() != Some("spdy/3.1") {
            bail!("server did not upgrade to SPDY/3.1: {answer:?}");
        }
        let (mut rd, mut wr) = tcp.into_split();
        let (out_tx, mut out_rx) = mpsc::channel::<Frame>(64);
        let streams: Table = Arc::default();
        tokio::spawn(async move {
            let mut w = frame::Writer::default();
            let mut buf = BytesMut::new();
            while let Some(f) = out_rx.recv().await {
                buf.clear();
                if w.encode(&f, &mut buf).is_err() || wr.write_all(&buf).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let (table, pong) = (streams.clone(), out_tx.clone());
        tokio::spawn(async move {
            let mut r = frame::Reader::default();
            while let Ok(Some(f)) = r.read(&mut rd).await {
                let send = |id: u32, e: Event| {
                    if let Ok(t) = table.lock() {
                        if let Some(tx) = t.get(&id) {
                            let _ = tx.send(e);
                        }
                    }
                };
                match f {
                    Frame::SynReply { id, fin, .. } => {
                        send(id, Event::Reply);
                        if fin {
                            send(id, Event::Fin);
                        }
                    }
                    Frame::Data { id, fin, data } => {
                        send(id, Event::Data(data));
                        if fin {
                            send(id, Event::Fin);
                        }
                    }
                    Frame::RstStream { id, status } => send(id, Event::Reset(status)),
                    Frame::Ping { id } if id % 2 == 0 => {
                        let _ = pong.send(Frame::Ping { id }).await;
                    }
                    Frame::GoAway { .. } => {}
                    _ => {}
                }
            }
            // Connection gone: every stream ends.
            if let Ok(mut t) = table.lock() {
                t.clear();
            }
        });
        Ok(SpdyConn {
            out: out_tx,
            next_id: AtomicU32::new(1),
            streams,
            protocol,
        })
    }

    /// Opens a stream and waits for the server's SYN_REPLY.
    pub async fn open(&self, headers: &[(&str, &str)]) -> anyhow::Result<ClientStream> {
        let id = self.next_id.fetch_add(2, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.streams
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .insert(id, tx);
        self.out
            .send(Frame::SynStream {
                id,
                fin: false,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned()))
                    .collect(),
            })
            .await
            .map_err(|_| anyhow::anyhow!("connection closed"))?;
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(Event::Reply)) => {}
            Ok(Some(Event::Reset(s))) => bail!("stream {id} was reset ({s})"),
            Ok(_) => bail!("connection ended before stream {id} was answered"),
            Err(_) => bail!("no SYN_REPLY for stream {id}"),
        }
        Ok(ClientStream {
            id,
            rx,
            out: self.out.clone(),
        })
    }

    /// Opens the error and data streams of one forwarded connection (port forwarding).
    pub async fn forward(
        &self,
        port: u16,
        request_id: u32,
    ) -> anyhow::Result<(ClientStream, ClientStream)> {
        let (port, rid) = (port.to_string(), request_id.to_string());
        let error = self
            .open(&[
                ("streamType", "error"),
                ("port", &port),
                ("requestID", &rid),
            ])
            .await?;
        // Nothing is ever written to the error stream.
        error.close().await;
        let data = self
            .open(&[("streamType", "data"), ("port", &port), ("requestID", &rid)])
            .await?;
        Ok((data, error))
    }
}

/// Port forwarding over SPDY (`portforward.k8s.io`).
pub async fn port_forward(url: &str) -> anyhow::Result<SpdyConn> {
    let conn = SpdyConn::connect(url, "", &["portforward.k8s.io"]).await?;
    if conn.protocol != "portforward.k8s.io" {
        bail!("server chose {:?} for port forwarding", conn.protocol);
    }
    Ok(conn)
}

/// Starts an exec/attach session over SPDY, opening streams as client-go does: error first,
/// then stdin, stdout, stderr and (with a TTY) resize.
pub async fn remote_command(
    url: &str,
    protocols: &[&str],
    opts: StreamOpts,
) -> anyhow::Result<Session> {
    let conn = SpdyConn::connect(url, "", protocols).await?;
    let protocol = conn.protocol.clone();
    let error = conn.open(&[("streamType", "error")]).await?;
    error.close().await;
    let stdin = if opts.stdin {
        Some(conn.open(&[("streamType", "stdin")]).await?)
    } else {
        None
    };
    let stdout = if opts.stdout {
        Some(conn.open(&[("streamType", "stdout")]).await?)
    } else {
        None
    };
    let stderr = if opts.stderr && !opts.tty {
        Some(conn.open(&[("streamType", "stderr")]).await?)
    } else {
        None
    };
    let resize =
        if opts.tty && matches!(protocol.as_str(), "v3.channel.k8s.io" | "v4.channel.k8s.io") {
            Some(conn.open(&[("streamType", "resize")]).await?)
        } else {
            None
        };

    let (out_tx, out_rx) = mpsc::channel::<(u8, Bytes)>(64);
    for (ch, stream) in [(STDOUT, stdout), (STDERR, stderr), (ERROR, Some(error))] {
        let Some(mut stream) = stream else { continue };
        let out = out_tx.clone();
        tokio::spawn(async move {
            while let Some(d) = stream.read().await {
                if out.send((ch, d)).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(out_tx);

    let (tx, mut rx) = mpsc::channel::<ClientMsg>(16);
    tokio::spawn(async move {
        // Keeps the connection (and its writer) alive for the whole session.
        let _conn = conn;
        while let Some(msg) = rx.recv().await {
            match msg {
                ClientMsg::Stdin(d) => {
                    if let Some(s) = &stdin {
                        let _ = s.write(&d).await;
                    }
                }
                ClientMsg::CloseStdin => {
                    if let Some(s) = &stdin {
                        s.close().await;
                    }
                }
                ClientMsg::Resize(w, h) => {
                    if let Some(r) = &resize {
                        let msg = serde_json::json!({"Width": w, "Height": h}).to_string();
                        let _ = r.write(msg.as_bytes()).await;
                    }
                }
            }
        }
    });
    Ok(Session::new(tx, out_rx, protocol))
}

/// Sends `data` through a forwarded port and reads until `want` bytes came back.
pub async fn round_trip(
    data_stream: &mut ClientStream,
    data: &[u8],
    want: usize,
) -> anyhow::Result<Vec<u8>> {
    data_stream.write(data).await?;
    let mut got = Vec::new();
    while got.len() < want {
        let chunk = tokio::time::timeout(Duration::from_secs(10), data_stream.read())
            .await
            .context("no data back from the forwarded port")?;
        match chunk {
            Some(c) => got.extend_from_slice(&c),
            None => break,
        }
    }
    Ok(got)
}
