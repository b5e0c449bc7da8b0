//! The prepared mode (`crid-vmm --prepared POOL --memory MIB`): the VMM builds its VM before
//! any guest is known ([`crate::vm::prepare`]), then takes the guest's command line over
//! standard input, a unix socket whose other end its supervisor, crid's prepared monitor
//! (`sandbox::monitor::prepared`), holds until the VM is built and then passes to crid:
//! 1. the VMM writes [`READY`] once the VM is built;
//! 2. crid writes the rest of a crid-vmm command line, each argument followed by a NUL byte,
//!    and shuts its side down: end of file ends the message. With its first bytes it may pass
//!    one descriptor (`SCM_RIGHTS`), the guest's start gate: one end of a socket pair whose
//!    other end crid keeps;
//! 3. the VMM sets that guest up ([`crate::vm::run_prepared`]) and, given a start gate, waits
//!    on it, confined, until crid writes [`START`] (once the monitor has taken the container:
//!    at `StartContainer` for a container handed over at `CreateContainer`): only then does
//!    the boot vCPU run the guest's first instruction. End of file there (crid removed the
//!    container or went away before starting it) ends the VMM with status 0, the guest never
//!    run.
//!
//! End of file before any byte means crid discarded it: the VMM exits with status 0.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixStream;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// What the VMM writes when its VM is built.
pub const READY: u8 = b'R';

/// What crid writes on a start gate to run the guest.
pub const START: u8 = b'G';

/// A guest handed over: its command line, and the start gate when crid starts it later.
#[derive(Debug)]
pub struct Handed {
    pub args: Vec<OsString>,
    pub start_gate: Option<File>,
}

/// The largest command line taken (what execve takes in all).
const MAX_MESSAGE: u64 = 1 << 20;

/// [`receive`] on standard input, which then becomes `/dev/null`: the socket is not kept.
pub fn receive_on_stdin() -> std::io::Result<Option<Handed>> {
    let socket = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let handed = receive(&socket)?;
    drop(socket);
    crate::sys::stdin_to_null()?;
    Ok(handed)
}

/// Tells the monitor the VM is built, then reads the guest's arguments and the start gate
/// passed with their first bytes. `None` when the monitor closed the socket without sending
/// any.
pub fn receive(mut socket: &UnixStream) -> std::io::Result<Option<Handed>> {
    socket.write_all(&[READY])?;
    let mut first = [0u8; 4096];
    let (n, start_gate) = socket
        .recv_with_fd(&mut first)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    let mut message = first[..n].to_vec();
    if n > 0 {
        socket.take(MAX_MESSAGE + 1).read_to_end(&mut message)?;
    }
    Ok(decode(message)?.map(|args| Handed { args, start_gate }))
}

/// Waits on a start gate for crid's [`START`]; false at end of file (or anything else): the
/// guest is not to run.
pub fn wait_for_start(mut gate: File) -> bool {
    let mut byte = [0u8];
    loop {
        match gate.read(&mut byte) {
            Ok(1) => return byte[0] == START,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            _ => return false,
        }
    }
}

/// The arguments of a message: each one ends with a NUL byte.
fn decode(message: Vec<u8>) -> std::io::Result<Option<Vec<OsString>>> {
    if message.is_empty() {
        return Ok(None);
    }
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    if message.len() as u64 > MAX_MESSAGE {
        return Err(bad("the hand-over message is too long"));
    }
    let Some(body) = message.strip_suffix(&[0]) else {
        return Err(bad("the hand-over message does not end with a NUL byte"));
    };
    Ok(Some(
        body.split(|b| *b == 0)
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_end_with_nul_and_an_empty_message_is_a_discard() {
        let args = decode(b"--kernel\0/k\0--cmdline\0\0".to_vec())
            .unwrap()
            .unwrap();
        assert_eq!(args, ["--kernel", "/k", "--cmdline", ""]);
        assert_eq!(decode(Vec::new()).unwrap(), None);
        assert!(decode(b"--kernel".to_vec()).is_err());
        assert!(decode(vec![b'a'; MAX_MESSAGE as usize + 1]).is_err());
    }

    #[test]
    fn ready_is_written_before_the_message_is_read() {
        let (vmm, mut monitor) = UnixStream::pair().unwrap();
        let sender = std::thread::spawn(move || {
            let mut ready = [0u8];
            monitor.read_exact(&mut ready).unwrap();
            assert_eq!(ready[0], READY);
            monitor.write_all(b"--memory\x0032\0").unwrap();
            monitor.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let handed = receive(&vmm).unwrap().unwrap();
        sender.join().unwrap();
        assert_eq!(handed.args, ["--memory", "32"]);
        assert!(handed.start_gate.is_none());
    }

    #[test]
    fn a_start_gate_comes_with_the_first_bytes_and_opens_on_start_only() {
        use std::os::fd::AsRawFd;
        let (vmm, monitor) = UnixStream::pair().unwrap();
        let (crid, gate) = UnixStream::pair().unwrap();
        let sender = std::thread::spawn(move || {
            let mut ready = [0u8];
            (&monitor).read_exact(&mut ready).unwrap();
            monitor
                .send_with_fd(&b"--memory\x0032\0"[..], gate.as_raw_fd())
                .unwrap();
            monitor.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let handed = receive(&vmm).unwrap().unwrap();
        sender.join().unwrap();
        assert_eq!(handed.args, ["--memory", "32"]);
        let gate = handed.start_gate.expect("the start gate");
        (&crid).write_all(&[START]).unwrap();
        assert!(wait_for_start(gate.try_clone().unwrap()));
        drop(crid);
        assert!(!wait_for_start(gate), "end of file is no start");
    }
}
