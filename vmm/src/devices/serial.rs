//! COM1 (0x3f8, IRQ 4), a 16550A from `vm-superio`, whose transmitted bytes go to the VMM's
//! stdout — crid's container monitor turns that pipe into the CRI log — a line at a time
//! ([`LineOut`]).

use std::io::Write;

use super::IrqLine;

/// The longest partial line kept back: beyond it the bytes go out without their newline (the
/// pipe's atomic write size).
const MAX_PENDING: usize = 4096;

/// Arms or disarms the timer that makes the VMM send out a partial line (see [`LineOut`]).
pub trait PartialLineAlarm {
    fn set(&mut self, armed: bool);
}

/// No timer (tests, and output that is only ever flushed by hand).
impl PartialLineAlarm for () {
    fn set(&mut self, _armed: bool) {}
}

/// The guest's output on its way to `out`, one write per line instead of one per byte: a
/// guest writes its serial port a byte at a time, and every write to the log pipe wakes
/// crid's monitor, which writes the CRI log record only at the newline anyway (24 wake-ups for
/// the test guest's first line, competing for the CPU with everything else of the start). A
/// partial line (a prompt) goes out when the guest ends or stops, or when `alarm` fires: it is
/// armed while a partial line waits, and its owner calls [`LineOut::send_partial`] then. While
/// bytes may reach it late (see [`LineOut::watch_queue`]) the alarm stays armed too, and its
/// owner reads the queue and calls [`LineOut::queue_read`] when it fires.
pub struct LineOut<W: Write, A: PartialLineAlarm> {
    out: W,
    pending: Vec<u8>,
    alarm: A,
    armed: bool,
    /// Bytes may wait in a queue before they reach this writer (see [`LineOut::watch_queue`]).
    queue_watch: bool,
    /// The alarm's period began with the partial line's first byte: the line has waited its
    /// whole delay when the alarm fires.
    line_phase: bool,
}

impl<W: Write, A: PartialLineAlarm> LineOut<W, A> {
    pub fn new(out: W, alarm: A) -> Self {
        LineOut {
            out,
            pending: Vec::new(),
            alarm,
            armed: false,
            queue_watch: false,
            line_phase: false,
        }
    }

    /// Sends out whatever waits, newline or not.
    pub fn send_partial(&mut self) -> std::io::Result<()> {
        let sent = self.send(self.pending.len());
        self.queue_watch = false;
        self.set_alarm();
        sent
    }

    /// Bytes the guest writes from now on may wait in a queue that nothing reads until the
    /// guest's next exit, which may never come (KVM's coalesced I/O, see the VMM's `vm`
    /// module): the alarm stays armed, even with no partial line, until [`LineOut::queue_read`].
    pub fn watch_queue(&mut self) {
        self.queue_watch = true;
        self.set_alarm();
    }

    /// The alarm fired and the queue was read into this writer: what it held waits no more, and
    /// a partial line that began with it waits its own delay.
    pub fn queue_read(&mut self) {
        self.queue_watch = false;
        self.set_alarm();
    }

    /// Whether a partial line waits.
    pub fn has_partial(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes the first `n` pending bytes to `out` (dropped if that fails: the guest cannot act
    /// on it, see [`Serial::write`]).
    fn send(&mut self, n: usize) -> std::io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        let sent = self.out.write_all(&self.pending[..n]);
        self.pending.drain(..n);
        sent
    }

    fn set_alarm(&mut self) {
        let line = !self.pending.is_empty();
        if !line && !self.queue_watch {
            if self.armed {
                self.alarm.set(false);
                self.armed = false;
            }
            self.line_phase = false;
            return;
        }
        // A partial line waits its whole delay, also when the alarm was armed already for the
        // queue: setting it again starts its period anew.
        if !self.armed || (line && !self.line_phase) {
            self.alarm.set(true);
            self.armed = true;
        }
        self.line_phase = line;
    }

    #[cfg(test)]
    pub fn get_ref(&self) -> &W {
        &self.out
    }
}

impl<W: Write, A: PartialLineAlarm> Write for LineOut<W, A> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        let sent = match self.pending.iter().rposition(|b| *b == b'\n') {
            Some(last) => self.send(last + 1),
            None if self.pending.len() >= MAX_PENDING => self.send(self.pending.len()),
            None => Ok(()),
        };
        self.set_alarm();
        sent.map(|()| buf.len())
    }

    /// Nothing: `vm-superio` flushes after every byte, and lines go out as they end.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const BASE: u16 = 0x3f8;
const PORTS: u16 = 8;
/// The data register (THR when written), the one port a guest writes byte after byte.
pub const DATA_PORT: u16 = BASE;
/// IER's "transmitter holding register empty" interrupt.
const IER_THRI: u8 = 0x02;
/// The legacy interrupt line of COM1.
pub const IRQ: u32 = 4;

/// The register offset of `port`, if it is one of COM1's.
pub fn offset(port: u16) -> Option<u8> {
    (BASE..BASE + PORTS)
        .contains(&port)
        .then(|| (port - BASE) as u8)
}

pub struct Serial<W: Write> {
    device: vm_superio::Serial<IrqLine, vm_superio::serial::NoEvents, W>,
}

impl<W: Write> Serial<W> {
    pub fn new(out: W, irq: IrqLine) -> Self {
        Serial {
            device: vm_superio::Serial::new(irq, out),
        }
    }

    /// A register write. Output errors (the log pipe closed) are dropped: the guest cannot act
    /// on them, and the VMM keeps running until the guest or crid ends it.
    pub fn write(&mut self, offset: u8, value: u8) {
        let _ = self.device.write(offset, value);
    }

    pub fn read(&mut self, offset: u8) -> u8 {
        self.device.read(offset)
    }

    /// Whether the guest asked for an interrupt each time the transmitter empties: then it
    /// may wait for that interrupt between bytes instead of reading the line status.
    pub fn thr_interrupt_enabled(&self) -> bool {
        self.device.state().interrupt_enable & IER_THRI != 0
    }

    /// The writer the transmitted bytes go to.
    pub fn writer_mut(&mut self) -> &mut W {
        self.device.writer_mut()
    }

    #[cfg(test)]
    pub fn output(&self) -> &W {
        self.device.writer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_an_empty_receiver() {
        let mut s = Serial::new(Vec::new(), IrqLine(None));
        // LSR bit 0 (data ready) stays clear: the guest gets no console input.
        assert_eq!(s.read(5) & 1, 0);
        assert_eq!(offset(0x3f8), Some(0));
        assert_eq!(offset(0x3ff), Some(7));
        assert_eq!(offset(0x400), None);
    }

    /// Records how the alarm was set.
    #[derive(Default)]
    struct Alarm(Vec<bool>);

    impl PartialLineAlarm for &mut Alarm {
        fn set(&mut self, armed: bool) {
            self.0.push(armed);
        }
    }

    #[test]
    fn lines_go_out_whole_and_a_partial_one_waits_for_the_alarm() {
        let mut alarm = Alarm::default();
        let mut out = LineOut::new(Vec::new(), &mut alarm);
        for b in b"booted\nprom" {
            out.write_all(&[*b]).unwrap();
            out.flush().unwrap();
        }
        assert_eq!(
            out.get_ref(),
            b"booted\n",
            "the line, not yet the partial one"
        );
        out.write_all(b"pt> ").unwrap();
        out.send_partial().unwrap();
        assert_eq!(out.get_ref(), b"booted\nprompt> ");
        out.write_all(b"a\nb\nc").unwrap();
        assert_eq!(
            out.get_ref(),
            b"booted\nprompt> a\nb\n",
            "up to the last newline"
        );
        out.send_partial().unwrap();
        out.send_partial().unwrap();
        assert_eq!(out.get_ref(), b"booted\nprompt> a\nb\nc");
        drop(out);
        // Armed by the first byte of each partial line, disarmed once it went out.
        assert_eq!(alarm.0, [true, false, true, false, true, false]);
    }

    #[test]
    fn a_watched_queue_keeps_the_alarm_armed_and_a_line_starts_its_period_anew() {
        let mut alarm = Alarm::default();
        let mut out = LineOut::new(Vec::new(), &mut alarm);
        out.watch_queue();
        // A line that arrives meanwhile starts the period again; its end keeps the alarm.
        out.write_all(b"line").unwrap();
        out.write_all(b"\n").unwrap();
        // The alarm fired, the queue held the start of a prompt: it waits its own delay.
        out.write_all(b">").unwrap();
        out.queue_read();
        assert_eq!(out.get_ref(), b"line\n");
        out.send_partial().unwrap();
        assert_eq!(out.get_ref(), b"line\n>");
        // Read with nothing new: disarmed.
        out.watch_queue();
        out.queue_read();
        drop(out);
        assert_eq!(alarm.0, [true, true, true, false, true, false]);
    }

    #[test]
    fn a_long_line_goes_out_without_its_newline() {
        let mut out = LineOut::new(Vec::new(), ());
        out.write_all(&[b'x'; MAX_PENDING - 1]).unwrap();
        assert!(out.get_ref().is_empty());
        out.write_all(b"x").unwrap();
        assert_eq!(out.get_ref().len(), MAX_PENDING);
    }

    #[test]
    fn through_the_uart() {
        let mut s = Serial::new(LineOut::new(Vec::new(), ()), IrqLine(None));
        for b in b"hi\nyo" {
            s.write(0, *b);
        }
        assert_eq!(s.output().get_ref(), b"hi\n");
        s.writer_mut().send_partial().unwrap();
        assert_eq!(s.output().get_ref(), b"hi\nyo");
    }
}
