//! The prepared mode (`crid-vmm --prepared POOL --memory MIB`): the VMM builds its VM before
//! any guest is known ([`crate::vm::prepare`]), then takes the guest's command line from its
//! supervisor, crid's prepared monitor (`sandbox::monitor::prepared`), over standard input, a
//! unix socket:
//! 1. the VMM writes [`READY`] once the VM is built;
//! 2. the monitor writes the rest of a crid-vmm command line, each argument followed by a NUL
//!    byte, and shuts its side down: end of file ends the message;
//! 3. the VMM boots that guest ([`crate::vm::run_prepared`]).
//!
//! End of file before any byte means the monitor discarded it: the VMM exits with status 0.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;

/// What the VMM writes when its VM is built.
pub const READY: u8 = b'R';

/// The largest command line taken (what execve takes in all).
const MAX_MESSAGE: u64 = 1 << 20;

/// [`receive`] on standard input, which then becomes `/dev/null`: the socket is not kept.
pub fn receive_on_stdin() -> std::io::Result<Option<Vec<OsString>>> {
    let mut socket = File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let args = receive(&mut socket)?;
    drop(socket);
    crate::sys::stdin_to_null()?;
    Ok(args)
}

/// Tells the monitor the VM is built, then reads the guest's arguments. `None` when the
/// monitor closed the socket without sending any.
pub fn receive(socket: &mut (impl Read + Write)) -> std::io::Result<Option<Vec<OsString>>> {
    socket.write_all(&[READY])?;
    let mut message = Vec::new();
    socket.take(MAX_MESSAGE + 1).read_to_end(&mut message)?;
    decode(message)
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
        let (mut vmm, mut monitor) = std::os::unix::net::UnixStream::pair().unwrap();
        let sender = std::thread::spawn(move || {
            let mut ready = [0u8];
            monitor.read_exact(&mut ready).unwrap();
            assert_eq!(ready[0], READY);
            monitor.write_all(b"--memory\x0032\0").unwrap();
            monitor.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let args = receive(&mut vmm).unwrap().unwrap();
        sender.join().unwrap();
        assert_eq!(args, ["--memory", "32"]);
    }
}
