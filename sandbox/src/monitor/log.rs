//! The CRI container log format written by the monitor:
//! `<RFC3339Nano timestamp> <stream> <P|F> <content>\n`, one record per line of output, lines
//! longer than [`MAX_RECORD`] split into partial (`P`) records, the last piece tagged full (`F`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest content of one record; longer lines become several `P` records.
pub const MAX_RECORD: usize = 16 * 1024;

/// Which stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Formats a Unix time as Go's `time.RFC3339Nano` in UTC (`2006-01-02T15:04:05.999999999Z`):
/// trailing zeros of the fraction are dropped, and the dot too when the fraction is zero.
pub fn rfc3339_nano(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    );
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Now as (seconds, nanoseconds) since the epoch.
pub fn now() -> (i64, u32) {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(_) => (0, 0),
    }
}

/// One formatted record, newline included.
pub fn record(time: (i64, u32), stream: Stream, partial: bool, content: &[u8]) -> Vec<u8> {
    let ts = rfc3339_nano(time.0, time.1);
    let mut out = Vec::with_capacity(ts.len() + content.len() + 12);
    out.extend_from_slice(ts.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(content);
    out.push(b'\n');
    out
}

/// Splits one stream's bytes into records.
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    pending: Vec<u8>,
}

impl LineSplitter {
    pub fn new(stream: Stream) -> Self {
        LineSplitter {
            stream,
            pending: Vec::new(),
        }
    }

    /// Feeds bytes; calls `emit(stream, partial, content)` for each complete record.
    pub fn push(&mut self, mut data: &[u8], emit: &mut dyn FnMut(Stream, bool, &[u8])) {
        while !data.is_empty() {
            match data.iter().position(|b| *b == b'\n') {
                Some(i) if self.pending.len() + i <= MAX_RECORD => {
                    if self.pending.is_empty() {
                        emit(self.stream, false, &data[..i]);
                    } else {
                        self.pending.extend_from_slice(&data[..i]);
                        emit(self.stream, false, &self.pending);
                        self.pending.clear();
                    }
                    data = &data[i + 1..];
                }
                _ => {
                    let room = MAX_RECORD - self.pending.len();
                    let take = room.min(data.len());
                    self.pending.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.pending.len() == MAX_RECORD {
                        // A full record without a newline: a partial one, unless the newline
                        // follows right away (then it is the line's last piece).
                        if data.first() == Some(&b'\n') {
                            emit(self.stream, false, &self.pending);
                            data = &data[1..];
                        } else {
                            emit(self.stream, true, &self.pending);
                        }
                        self.pending.clear();
                    }
                }
            }
        }
    }

    /// At end of stream: what is left becomes a full record.
    pub fn finish(&mut self, emit: &mut dyn FnMut(Stream, bool, &[u8])) {
        if !self.pending.is_empty() {
            emit(self.stream, false, &self.pending);
            self.pending.clear();
        }
    }
}

/// The container log file; reopened on request (kubelet rotates it by renaming).
#[derive(Debug)]
pub struct LogFile {
    path: Option<PathBuf>,
    file: Option<File>,
    /// Records lost since writing started to fail (a full disk): the failure is reported
    /// once, and the count when writing works again, not once per record.
    dropped: u64,
    /// The last failed write left part of a record: the next record starts on a new line.
    torn: bool,
}

impl LogFile {
    /// Opens `path` for appending (creating it and its directory); `None` discards output.
    pub fn open(path: Option<&Path>) -> std::io::Result<LogFile> {
        let mut log = LogFile {
            path: path.map(Path::to_path_buf),
            file: None,
            dropped: 0,
            torn: false,
        };
        log.reopen()?;
        Ok(log)
    }

    pub fn reopen(&mut self) -> std::io::Result<()> {
        self.file = None;
        self.torn = false;
        if let Some(path) = &self.path {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            self.file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o640)
                    .open(path)?,
            );
        }
        Ok(())
    }

    /// Writes one record, in a single `write` unless the disk fills up (the file is opened with
    /// `O_APPEND`). Failures are reported once per run of failures, not per record.
    pub fn write_record(&mut self, stream: Stream, partial: bool, content: &[u8]) {
        if let Some(f) = self.file.as_mut() {
            let mut rec = record(now(), stream, partial, content);
            if self.torn {
                rec.insert(0, b'\n');
            }
            let mut written = 0;
            let result = loop {
                match f.write(&rec[written..]) {
                    Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) if written + n == rec.len() => break Ok(()),
                    Ok(n) => written += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            self.torn = result.is_err() && (written > 0 || self.torn);
            match result {
                Err(e) => {
                    if self.dropped == 0 {
                        eprintln!("crid monitor: writing the container log: {e}");
                    }
                    self.dropped += 1;
                }
                Ok(()) if self.dropped > 0 => {
                    eprintln!(
                        "crid monitor: writing the container log again, {} records were lost",
                        self.dropped
                    );
                    self.dropped = 0;
                }
                Ok(()) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_drops_records_without_reporting_each() {
        // /dev/full fails every write with ENOSPC.
        let mut log = LogFile::open(Some(Path::new("/dev/full"))).unwrap();
        for _ in 0..3 {
            log.write_record(Stream::Stdout, false, b"lost");
        }
        assert_eq!(log.dropped, 3);
        assert!(!log.torn);
    }

    #[test]
    fn timestamps_follow_rfc3339_nano() {
        assert_eq!(rfc3339_nano(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339_nano(1_136_214_245, 999_999_999),
            "2006-01-02T15:04:05.999999999Z"
        );
        assert_eq!(
            rfc3339_nano(1_136_214_245, 500_000_000),
            "2006-01-02T15:04:05.5Z"
        );
        assert_eq!(
            rfc3339_nano(951_782_400, 120),
            "2000-02-29T00:00:00.00000012Z"
        );
        assert_eq!(rfc3339_nano(1_798_761_599, 0), "2026-12-31T23:59:59Z");
    }

    fn split(chunks: &[&[u8]]) -> Vec<(bool, Vec<u8>)> {
        let mut out = Vec::new();
        let mut s = LineSplitter::new(Stream::Stdout);
        let mut emit = |_: Stream, p: bool, c: &[u8]| out.push((p, c.to_vec()));
        for c in chunks {
            s.push(c, &mut emit);
        }
        s.finish(&mut emit);
        out
    }

    #[test]
    fn lines_are_split_and_joined() {
        assert_eq!(
            split(&[b"hel", b"lo\nwor", b"ld\n\nlast"]),
            vec![
                (false, b"hello".to_vec()),
                (false, b"world".to_vec()),
                (false, b"".to_vec()),
                (false, b"last".to_vec()),
            ]
        );
    }

    #[test]
    fn long_lines_become_partial_records() {
        let long = vec![b'x'; MAX_RECORD * 2 + 5];
        let mut input = long.clone();
        input.push(b'\n');
        let out = split(&[&input[..100], &input[100..]]);
        assert_eq!(out.len(), 3);
        assert!(out[0].0 && out[1].0 && !out[2].0);
        assert_eq!(out[2].1.len(), 5);
        let exact = [vec![b'y'; MAX_RECORD], b"\n".to_vec()].concat();
        assert_eq!(split(&[&exact]), vec![(false, vec![b'y'; MAX_RECORD])]);
    }

    #[test]
    fn record_format() {
        let r = record((1_136_214_245, 1000), Stream::Stderr, true, b"abc");
        assert_eq!(r, b"2006-01-02T15:04:05.000001Z stderr P abc\n");
    }
}
