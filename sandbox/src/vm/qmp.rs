//! A minimal QMP client (QEMU Machine Protocol over the VMM's unix socket) for graceful stops:
//! `qmp_capabilities`, then `system_powerdown`, which presses the guest's ACPI power button.
//! Whether the guest powers off is up to it; the container manager kills the VMM after the
//! stop timeout either way. A QEMU started paused is resumed with `cont` on a [`Session`]
//! opened ahead (see [`super::qemu_pool`]).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::SandboxError;

/// Lines read while waiting for one command's answer (QEMU interleaves events).
const MAX_LINES: usize = 64;

fn qmp_err(socket: &Path, reason: impl Into<String>) -> SandboxError {
    SandboxError::Runtime {
        op: format!("QMP on {}", socket.display()),
        reason: reason.into(),
    }
}

/// Reads lines until one holds `"return"` (Ok) or `"error"` (Err), skipping events.
fn answer(reader: &mut impl BufRead, socket: &Path, command: &str) -> Result<(), SandboxError> {
    let mut line = String::new();
    for _ in 0..MAX_LINES {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| qmp_err(socket, format!("{command}: {e}")))?;
        if n == 0 {
            return Err(qmp_err(socket, format!("{command}: connection closed")));
        }
        let v: serde_json::Value = serde_json::from_str(line.trim())
            .map_err(|e| qmp_err(socket, format!("{command}: bad reply: {e}")))?;
        if v.get("return").is_some() {
            return Ok(());
        }
        if let Some(e) = v.get("error") {
            return Err(qmp_err(socket, format!("{command}: {e}")));
        }
    }
    Err(qmp_err(socket, format!("{command}: no answer")))
}

/// A QMP connection whose greeting was read and capabilities negotiated: a command on it is
/// one round trip.
pub struct Session {
    socket: std::path::PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Session {
    /// Connects and negotiates, waiting at most `timeout` per step.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Session, SandboxError> {
        let stream = UnixStream::connect(socket).map_err(|e| qmp_err(socket, e.to_string()))?;
        Session::negotiate(socket, stream, timeout)
    }

    /// Negotiates on `stream`, connected to `socket`, waiting at most `timeout` per step.
    pub fn negotiate(
        socket: &Path,
        stream: UnixStream,
        timeout: Duration,
    ) -> Result<Session, SandboxError> {
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| qmp_err(socket, e.to_string()))?;
        let writer = stream
            .try_clone()
            .map_err(|e| qmp_err(socket, e.to_string()))?;
        let mut reader = BufReader::new(stream);
        let mut greeting = String::new();
        reader
            .read_line(&mut greeting)
            .map_err(|e| qmp_err(socket, format!("greeting: {e}")))?;
        if !greeting.contains("\"QMP\"") {
            return Err(qmp_err(socket, format!("not a QMP greeting: {greeting:?}")));
        }
        let mut session = Session {
            socket: socket.to_path_buf(),
            reader,
            writer,
        };
        session.execute("qmp_capabilities")?;
        Ok(session)
    }

    /// Runs `command` (no arguments) and waits for its answer.
    pub fn execute(&mut self, command: &str) -> Result<(), SandboxError> {
        self.send(command)?;
        answer(&mut self.reader, &self.socket, command)
    }

    /// Sends `command` (no arguments) without waiting for its answer.
    pub fn send(&mut self, command: &str) -> Result<(), SandboxError> {
        let msg = serde_json::json!({ "execute": command }).to_string() + "\n";
        self.writer
            .write_all(msg.as_bytes())
            .map_err(|e| qmp_err(&self.socket, format!("{command}: {e}")))
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("socket", &self.socket)
            .finish()
    }
}

/// Runs QMP `command` (no arguments) on the socket, waiting at most `timeout` per step.
pub fn execute(socket: &Path, command: &str, timeout: Duration) -> Result<(), SandboxError> {
    Session::connect(socket, timeout)?.execute(command)
}

/// Presses the guest's power button.
pub fn system_powerdown(socket: &Path) -> Result<(), SandboxError> {
    execute(socket, "system_powerdown", Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A fake QMP server: greets, answers capabilities, emits an event, then answers.
    fn serve(listener: std::os::unix::net::UnixListener, reply: &'static str) -> Vec<String> {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        for reply in ["{\"return\": {}}\r\n", reply] {
            let n = s.read(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            s.write_all(b"{\"event\": \"POWERDOWN\", \"timestamp\": {}}\r\n")
                .unwrap();
            s.write_all(reply.as_bytes()).unwrap();
        }
        got
    }

    #[test]
    fn powerdown_negotiates_and_skips_events() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("q.sock");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || serve(l, "{\"return\": {}}\r\n"));
        system_powerdown(&sock).unwrap();
        let got = server.join().unwrap();
        assert!(got[0].contains("qmp_capabilities"), "{got:?}");
        assert!(got[1].contains("system_powerdown"), "{got:?}");
    }

    #[test]
    fn errors_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("q.sock");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            serve(
                l,
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}}\r\n",
            )
        });
        let err = system_powerdown(&sock).unwrap_err();
        assert!(err.to_string().contains("GenericError"), "{err}");
        server.join().unwrap();
        assert!(system_powerdown(&dir.path().join("missing.sock")).is_err());
    }
}
