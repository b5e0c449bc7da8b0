//! Port forwarding into a pod's network namespace: over SPDY (`portforward.k8s.io`), a data and
//! an error stream per forwarded connection, paired by their `requestID` header; over WebSocket,
//! a data and an error channel per requested port, each opened by the port as a little-endian
//! u16.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use super::mux::{self, StreamWriter};
use super::remotecommand::STREAM_CREATION_TIMEOUT;
use super::sys;
use super::ws;

const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// What a port-forward URL serves.
pub struct Forward {
    /// The pod's network namespace, or why no connection can be made into it (a pod no longer
    /// ready), which each forwarded connection's error stream reports.
    pub target: Result<PathBuf, String>,
    /// Over SPDY the ports a stream may name (any when empty); over WebSocket the ports
    /// forwarded, channel pair by channel pair.
    pub ports: Vec<u16>,
}

async fn dial(target: &Result<PathBuf, String>, port: u16) -> Result<TcpStream, String> {
    let netns = target
        .as_ref()
        .map_err(|why| format!("cannot forward port {port}: {why}"))?;
    let std = sys::connect_in_netns(netns, port, DIAL_TIMEOUT)
        .await
        .map_err(|e| format!("cannot connect to localhost:{port} in the pod: {e}"))?;
    std.set_nonblocking(true).map_err(|e| e.to_string())?;
    TcpStream::from_std(std).map_err(|e| e.to_string())
}

/// Writes what the client sends to the pod's side of a forwarded connection until the client's
/// side ends, then half-closes the pod's side.
async fn copy_to_pod(mut from_client: mpsc::Receiver<Bytes>, mut to_pod: OwnedWriteHalf) {
    while let Some(data) = from_client.recv().await {
        if to_pod.write_all(&data).await.is_err() {
            break;
        }
    }
    let _ = to_pod.shutdown().await;
}

#[derive(Default)]
struct Pair {
    port: u16,
    data: Option<mux::Stream>,
    error: Option<StreamWriter>,
}

/// Serves SPDY port forwarding until the client goes away.
pub async fn serve_spdy(mut conn: mux::Conn, forward: Forward) {
    let Forward {
        target,
        ports: allowed,
    } = forward;
    let target = std::sync::Arc::new(target);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let (expire_tx, mut expire_rx) = mpsc::channel::<String>(16);
    loop {
        let stream = tokio::select! {
            s = conn.streams.recv() => s,
            Some(id) = expire_rx.recv() => {
                if let Some(p) = pairs.remove(&id) {
                    let msg = format!("timed out waiting for the streams of request {id}");
                    if let Some(e) = &p.error {
                        e.write(Bytes::from(msg)).await;
                        e.close().await;
                    }
                    if let Some(d) = &p.data {
                        d.tx.close().await;
                    }
                }
                continue;
            }
        };
        let Some(stream) = stream else { break };
        let kind = stream.header("streamtype").unwrap_or_default().to_owned();
        let port = stream
            .header("port")
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p > 0);
        let Some(port) = port else {
            stream.tx.reset(super::spdy::RST_PROTOCOL_ERROR).await;
            continue;
        };
        if kind != "data" && kind != "error" {
            stream.tx.reset(super::spdy::RST_PROTOCOL_ERROR).await;
            continue;
        }
        // Old clients send no requestID: error stream N pairs with data stream N+2.
        let request = match stream.header("requestid") {
            Some(r) => r.to_owned(),
            None if kind == "error" => stream.id.to_string(),
            None => stream.id.saturating_sub(2).to_string(),
        };
        let pair = pairs.entry(request.clone()).or_insert_with(|| {
            let tx = expire_tx.clone();
            let id = request.clone();
            tokio::spawn(async move {
                tokio::time::sleep(STREAM_CREATION_TIMEOUT).await;
                let _ = tx.send(id).await;
            });
            Pair {
                port,
                ..Pair::default()
            }
        });
        if kind == "data" {
            if pair.data.is_some() {
                stream.tx.reset(super::spdy::RST_PROTOCOL_ERROR).await;
                continue;
            }
            pair.data = Some(stream);
        } else {
            if pair.error.is_some() {
                stream.tx.reset(super::spdy::RST_PROTOCOL_ERROR).await;
                continue;
            }
            pair.error = Some(stream.tx);
            // Nothing is read from the error stream; its receiver is dropped.
        }
        if pair.data.is_some() && pair.error.is_some() {
            if let Some(Pair {
                port,
                data: Some(data),
                error: Some(error),
            }) = pairs.remove(&request)
            {
                let target = target.clone();
                let allowed = allowed.clone();
                tokio::spawn(async move {
                    if !allowed.is_empty() && !allowed.contains(&port) {
                        let msg = format!("port {port} was not requested for forwarding");
                        error.write(Bytes::from(msg)).await;
                    } else if let Err(msg) =
                        forward_connection(&target, port, data.rx, data.tx.clone()).await
                    {
                        error.write(Bytes::from(msg)).await;
                    }
                    data.tx.close().await;
                    error.close().await;
                });
            }
        }
    }
    conn.handle.close().await;
}

/// Copies between a pod port and a client's data stream until both directions end.
async fn forward_connection(
    target: &Result<PathBuf, String>,
    port: u16,
    from_client: mpsc::Receiver<Bytes>,
    to_client: StreamWriter,
) -> Result<(), String> {
    let sock = dial(target, port).await?;
    let (mut rd, wr) = sock.into_split();
    // The client's FIN half-closes the pod side; the pod closing ends the forwarding.
    let up = tokio::spawn(copy_to_pod(from_client, wr));
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !to_client.write(Bytes::copy_from_slice(&buf[..n])).await {
                    break;
                }
            }
        }
    }
    up.abort();
    Ok(())
}

/// Serves WebSocket port forwarding for `forward.ports` (channel `2i` = data, `2i+1` = error of
/// `ports[i]`).
pub async fn serve_ws(conn: ws::WsConn, forward: Forward) {
    let Forward { target, ports } = forward;
    let target = std::sync::Arc::new(target);
    let ws::WsConn {
        mut inbound,
        handle,
    } = conn;
    let mut to_pod: Vec<mpsc::Sender<Bytes>> = Vec::new();
    let mut tasks = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        let le = Bytes::copy_from_slice(&port.to_le_bytes());
        handle.send(data_ch, le.clone()).await;
        handle.send(err_ch, le).await;
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        to_pod.push(tx);
        let (handle, target) = (handle.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            let sock = match dial(&target, port).await {
                Ok(s) => s,
                Err(msg) => {
                    handle.send(err_ch, Bytes::from(msg)).await;
                    return;
                }
            };
            let (mut rd, wr) = sock.into_split();
            let up = tokio::spawn(copy_to_pod(rx, wr));
            let down = async {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if !handle
                                .send(data_ch, Bytes::copy_from_slice(&buf[..n]))
                                .await
                            {
                                break;
                            }
                        }
                    }
                }
            };
            // The pod closing its side ends this port's forwarding.
            tokio::select! {
                _ = down => {}
                _ = handle.closed() => {}
            }
            up.abort();
        }));
    }
    let router = tokio::spawn(async move {
        while let Some((ch, data)) = inbound.recv().await {
            let ch = ch as usize;
            // Data channels are even; clients never write to error channels.
            if ch % 2 == 0 {
                if let Some(tx) = to_pod.get(ch / 2) {
                    let _ = tx.send(data).await;
                }
            }
        }
    });
    for t in tasks {
        let _ = t.await;
    }
    router.abort();
    handle.close().await;
}
