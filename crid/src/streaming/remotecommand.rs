//! Kubernetes' remote command protocol (exec and attach) over SPDY streams or WebSocket
//! channels: stdin, stdout, stderr, the error stream that carries the final `Status`, and the
//! resize stream of JSON `{"Width":W,"Height":H}` objects.

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::backend::{Exit, Resize, Session};
use super::mux::{self, ConnHandle, StreamWriter};
use super::spdy;
use super::ws::{self, WsHandle};

/// How long a SPDY client has to open all its streams (kubelet's default).
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;

/// Which streams the request asked for.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Options {
    pub fn new(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Options {
        // With a terminal, stderr is part of stdout.
        Options {
            stdin,
            stdout,
            stderr: stderr && !tty,
            tty,
        }
    }
}

/// How the final status is written on the error stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFormat {
    /// v4 and later: a JSON `metav1.Status`.
    Json,
    /// Older protocols: the error message as text, nothing on success.
    Text,
}

/// One outbound stream or channel.
#[derive(Clone)]
pub enum Sink {
    Spdy(StreamWriter),
    Ws(WsHandle, u8),
}

impl Sink {
    async fn write(&self, data: Bytes) -> bool {
        match self {
            Sink::Spdy(w) => w.write(data).await,
            Sink::Ws(h, ch) => h.send(*ch, data).await,
        }
    }

    async fn close(&self) {
        match self {
            Sink::Spdy(w) => w.close().await,
            // Channels have no half-close from the server side; the connection close ends them.
            Sink::Ws(..) => {}
        }
    }
}

#[derive(Clone)]
pub enum Closer {
    Spdy(ConnHandle),
    Ws(WsHandle),
}

impl Closer {
    pub async fn close(&self) {
        match self {
            Closer::Spdy(h) => h.close().await,
            Closer::Ws(h) => h.close().await,
        }
    }

    pub async fn closed(&self) {
        match self {
            Closer::Spdy(h) => h.closed().await,
            Closer::Ws(h) => h.closed().await,
        }
    }
}

/// A client's streams, whatever the transport.
pub struct Channels {
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub resize: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<Sink>,
    pub stderr: Option<Sink>,
    pub error: Option<Sink>,
    pub closer: Closer,
    pub status: StatusFormat,
}

/// Waits for the client to open the streams `opts` calls for (SPDY). `None` when it did not in
/// time; the connection is closed then.
pub async fn spdy_channels(
    mut conn: mux::Conn,
    opts: Options,
    protocol: String,
) -> Option<Channels> {
    let protocol = protocol.as_str();
    let resizable = matches!(protocol, "v3.channel.k8s.io" | "v4.channel.k8s.io");
    let status = if protocol == "v4.channel.k8s.io" {
        StatusFormat::Json
    } else {
        StatusFormat::Text
    };
    let expected = 1
        + opts.stdin as usize
        + opts.stdout as usize
        + opts.stderr as usize
        + (opts.tty && resizable) as usize;
    let mut ch = Channels {
        stdin: None,
        resize: None,
        stdout: None,
        stderr: None,
        error: None,
        closer: Closer::Spdy(conn.handle.clone()),
        status,
    };
    let mut received = 0;
    let deadline = tokio::time::sleep(STREAM_CREATION_TIMEOUT);
    tokio::pin!(deadline);
    while received < expected {
        let stream = tokio::select! {
            s = conn.streams.recv() => s,
            _ = &mut deadline => None,
        };
        let Some(stream) = stream else {
            tracing::warn!("client did not open its streams in time");
            conn.handle.close().await;
            return None;
        };
        let kind = stream.header("streamtype").unwrap_or_default().to_owned();
        received += 1;
        match kind.as_str() {
            "error" => ch.error = Some(Sink::Spdy(stream.tx)),
            "stdin" => ch.stdin = Some(stream.rx),
            "stdout" => ch.stdout = Some(Sink::Spdy(stream.tx)),
            "stderr" => ch.stderr = Some(Sink::Spdy(stream.tx)),
            "resize" => ch.resize = Some(stream.rx),
            other => {
                received -= 1;
                tracing::debug!(stream_type = other, "unexpected stream type");
                stream.tx.reset(spdy::RST_PROTOCOL_ERROR).await;
            }
        }
    }
    // v1 clients never send stdin data after the streams are set up.
    if protocol == "channel.k8s.io" || protocol.is_empty() {
        ch.stdin = None;
    }
    // Streams opened later are refused by dropping the receiver.
    drop(conn.streams);
    Some(ch)
}

/// Routes a WebSocket connection's channels (exec/attach).
pub async fn ws_channels(conn: ws::WsConn, opts: Options, protocol: String) -> Channels {
    let ws::WsConn {
        mut inbound,
        handle,
    } = conn;
    let v5 = protocol.starts_with("v5.");
    let status = if v5 || protocol.starts_with("v4.") {
        StatusFormat::Json
    } else {
        StatusFormat::Text
    };
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(64);
    let (resize_tx, resize_rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut stdin_tx = Some(stdin_tx);
        while let Some((ch, data)) = inbound.recv().await {
            match ch {
                STDIN => {
                    if let Some(tx) = &stdin_tx {
                        if !data.is_empty() && tx.send(data).await.is_err() {
                            stdin_tx = None;
                        }
                    }
                }
                RESIZE => {
                    let _ = resize_tx.send(data).await;
                }
                ws::CLOSE_CHANNEL if v5 && data.first() == Some(&STDIN) => stdin_tx = None,
                _ => {}
            }
        }
    });
    let channels = Channels {
        stdin: opts.stdin.then_some(stdin_rx),
        resize: opts.tty.then_some(resize_rx),
        stdout: opts.stdout.then(|| Sink::Ws(handle.clone(), STDOUT)),
        stderr: opts.stderr.then(|| Sink::Ws(handle.clone(), STDERR)),
        error: Some(Sink::Ws(handle.clone(), ERROR)),
        closer: Closer::Ws(handle.clone()),
        status,
    };
    // An empty message on the lowest writable channel tells the client the session is open.
    let first = if opts.stdout {
        STDOUT
    } else if opts.stderr {
        STDERR
    } else {
        ERROR
    };
    handle.send(first, Bytes::new()).await;
    channels
}

#[derive(Deserialize)]
struct TermSize {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

/// Runs a session to its end over `ch`: copies stdio both ways, applies resizes, and writes the
/// final status. `report_exit` is false for attach, whose end is always a success.
pub async fn run(ch: Channels, session: Result<Session, String>, report_exit: bool) {
    let Channels {
        stdin,
        resize,
        stdout,
        stderr,
        error,
        closer,
        status,
    } = ch;
    let mut session = match session {
        Ok(s) => s,
        Err(message) => {
            if let Some(e) = &error {
                write_status(e, status, &Exit::Error(message)).await;
            }
            finish([stdout, stderr, error], &closer).await;
            return;
        }
    };

    let mut tasks = Vec::new();
    if let (Some(mut rx), Some(mut w)) = (stdin, session.stdin.take()) {
        tasks.push(tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                if w.write_all(&data).await.is_err() || w.flush().await.is_err() {
                    break;
                }
            }
            let _ = w.shutdown().await;
        }));
    }
    if let (Some(rx), Some(r)) = (resize, session.resize.take()) {
        tasks.push(tokio::spawn(apply_resizes(rx, r)));
    }
    let mut pumps = Vec::new();
    for (reader, sink) in [
        (session.stdout.take(), stdout.clone()),
        (session.stderr.take(), stderr.clone()),
    ] {
        if let Some(reader) = reader {
            pumps.push(tokio::spawn(pump(reader, sink)));
        }
    }

    let exit = tokio::select! {
        e = &mut session.exit => Some(e),
        _ = closer.closed() => None,
    };
    let Some(exit) = exit else {
        // The client went away (or idled out); the process is left to itself.
        for t in tasks.iter().chain(pumps.iter()) {
            t.abort();
        }
        return;
    };
    for p in pumps {
        tokio::select! {
            _ = p => {}
            _ = closer.closed() => {}
        }
    }
    for t in &tasks {
        t.abort();
    }
    let exit = match exit {
        Exit::Code(_) if !report_exit => Exit::Code(0),
        e => e,
    };
    if let Some(e) = &error {
        write_status(e, status, &exit).await;
    }
    finish([stdout, stderr, error], &closer).await;
}

async fn finish(sinks: [Option<Sink>; 3], closer: &Closer) {
    for s in sinks.into_iter().flatten() {
        s.close().await;
    }
    closer.close().await;
}

async fn pump(mut reader: std::pin::Pin<Box<dyn AsyncRead + Send>>, sink: Option<Sink>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(s) = &sink {
                    if !s.write(Bytes::copy_from_slice(&buf[..n])).await {
                        break;
                    }
                }
            }
        }
    }
    if let Some(s) = &sink {
        s.close().await;
    }
}

async fn apply_resizes(mut rx: mpsc::Receiver<Bytes>, target: Box<dyn Resize>) {
    let mut pending: Vec<u8> = Vec::new();
    while let Some(data) = rx.recv().await {
        pending.extend_from_slice(&data);
        let mut it = serde_json::Deserializer::from_slice(&pending).into_iter::<TermSize>();
        let mut used = 0;
        loop {
            match it.next() {
                Some(Ok(size)) => {
                    used = it.byte_offset();
                    if let Err(e) = target.resize(size.width, size.height) {
                        tracing::debug!(error = %e, "terminal resize failed");
                    }
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "bad resize message; ignoring the resize stream");
                    return;
                }
                None => break,
            }
        }
        pending.drain(..used);
        if pending.len() > 4096 {
            return;
        }
    }
}

/// The `Status` object written on the error stream when a session ends.
pub fn status_json(exit: &Exit) -> serde_json::Value {
    match exit {
        Exit::Code(0) => json!({"metadata": {}, "status": "Success"}),
        Exit::Code(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Exit::Error(message) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("Internal error occurred: {message}"),
            "reason": "InternalError",
            "details": {"causes": [{"message": message}]},
            "code": 500,
        }),
    }
}

async fn write_status(sink: &Sink, format: StatusFormat, exit: &Exit) {
    let body = match format {
        StatusFormat::Json => status_json(exit).to_string(),
        StatusFormat::Text => match exit {
            Exit::Code(0) => return,
            Exit::Code(code) => {
                format!("command terminated with non-zero exit code: exit status {code}")
            }
            Exit::Error(message) => message.clone(),
        },
    };
    sink.write(Bytes::from(body)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_have_the_kubernetes_shape() {
        assert_eq!(
            status_json(&Exit::Code(0)).to_string(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        let v = status_json(&Exit::Code(42));
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "42");
        assert_eq!(status_json(&Exit::Error("x".into()))["code"], 500);
    }

    struct Record(std::sync::Mutex<Vec<(u16, u16)>>);
    impl Resize for std::sync::Arc<Record> {
        fn resize(&self, w: u16, h: u16) -> std::io::Result<()> {
            self.0.lock().unwrap().push((w, h));
            Ok(())
        }
    }

    #[tokio::test]
    async fn resizes_may_be_split_or_joined_across_messages() {
        let rec = std::sync::Arc::new(Record(Default::default()));
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::spawn(apply_resizes(rx, Box::new(rec.clone())));
        tx.send(Bytes::from_static(b"{\"Width\":80,\"Height\":24}{\"Wid"))
            .await
            .unwrap();
        tx.send(Bytes::from_static(b"th\":100,\"Height\":30}\n"))
            .await
            .unwrap();
        drop(tx);
        task.await.unwrap();
        assert_eq!(*rec.0.lock().unwrap(), vec![(80, 24), (100, 30)]);
    }
}
