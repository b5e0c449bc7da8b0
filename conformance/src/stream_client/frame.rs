//! SPDY/3.1 frames for the client side: the same wire format crid's server speaks (control and
//! data frames, zlib-compressed name/value blocks with the SPDY/3 dictionary).

use std::sync::LazyLock;

use bytes::{BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest frame payload accepted from a peer.
pub const MAX_FRAME: usize = 1 << 20;
/// The largest decompressed header block accepted from a peer.
const MAX_HEADER_BLOCK: usize = 64 * 1024;

const VERSION: u16 = 3;
const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;
pub const FLAG_FIN: u8 = 0x01;

/// Header names and values; names are lower-case on the wire.
pub type Headers = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        id: u32,
        fin: bool,
        headers: Headers,
    },
    SynReply {
        id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        id: u32,
        status: u32,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        id: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        id: u32,
        delta: u32,
    },
    Data {
        id: u32,
        fin: bool,
        data: Bytes,
    },
    /// SETTINGS and frame types this side ignores.
    Ignored,
}

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("connection i/o failed")]
    Io(#[from] std::io::Error),
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("frame of {0} bytes is too large")]
    TooLarge(usize),
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    #[error("header block: {0}")]
    HeaderBlock(String),
}

const WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

const TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

/// The SPDY/3 header compression dictionary: length-prefixed common header words, then a tail
/// of common values (1423 bytes).
pub static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut d = Vec::with_capacity(1423);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
});

/// Reads frames from one direction of a connection.
pub struct Reader {
    inflate: Decompress,
}

impl Default for Reader {
    fn default() -> Self {
        Reader {
            inflate: Decompress::new(true),
        }
    }
}

impl Reader {
    /// Reads one frame; `Ok(None)` at a clean end of stream between frames.
    pub async fn read<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<Option<Frame>, SpdyError> {
        let mut head = [0u8; 8];
        match r.read_exact(&mut head[..1]).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        r.read_exact(&mut head[1..]).await?;
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if len > MAX_FRAME {
            return Err(SpdyError::TooLarge(len));
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await?;
        let fin = flags & FLAG_FIN != 0;
        if head[0] & 0x80 == 0 {
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
            return Ok(Some(Frame::Data {
                id,
                fin,
                data: Bytes::from(body),
            }));
        }
        let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let word = |at: usize, what: &'static str| -> Result<u32, SpdyError> {
            body.get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or(SpdyError::Malformed(what))
        };
        Ok(Some(match kind {
            TYPE_SYN_STREAM => {
                let id = word(0, "SYN_STREAM")? & 0x7fff_ffff;
                let block = body.get(10..).ok_or(SpdyError::Malformed("SYN_STREAM"))?;
                let headers = self.headers(block)?;
                Frame::SynStream { id, fin, headers }
            }
            TYPE_SYN_REPLY => {
                let id = word(0, "SYN_REPLY")? & 0x7fff_ffff;
                let headers = self.headers(&body[4..])?;
                Frame::SynReply { id, fin, headers }
            }
            TYPE_HEADERS => {
                let id = word(0, "HEADERS")? & 0x7fff_ffff;
                let headers = self.headers(&body[4..])?;
                Frame::Headers { id, fin, headers }
            }
            TYPE_RST_STREAM => Frame::RstStream {
                id: word(0, "RST_STREAM")? & 0x7fff_ffff,
                status: word(4, "RST_STREAM")?,
            },
            TYPE_PING => Frame::Ping {
                id: word(0, "PING")?,
            },
            TYPE_GOAWAY => Frame::GoAway {
                last_good: word(0, "GOAWAY")? & 0x7fff_ffff,
                status: word(4, "GOAWAY").unwrap_or(0),
            },
            TYPE_WINDOW_UPDATE => Frame::WindowUpdate {
                id: word(0, "WINDOW_UPDATE")? & 0x7fff_ffff,
                delta: word(4, "WINDOW_UPDATE")? & 0x7fff_ffff,
            },
            TYPE_SETTINGS => Frame::Ignored,
            _ => Frame::Ignored,
        }))
    }

    fn headers(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let raw = self.inflate(block)?;
        parse_block(&raw)
    }

    fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(512);
        let mut pos = 0;
        // Each round either consumes input, produces output or sets the dictionary; a round
        // that does none of these means the block is complete (or truncated).
        for _ in 0..4096 {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(SpdyError::HeaderBlock("too large".into()));
                }
                out.reserve(out.len().max(512));
            }
            let (in0, out0) = (self.inflate.total_in(), self.inflate.total_out());
            let mut dict = false;
            match self
                .inflate
                .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync)
            {
                Ok(Status::Ok | Status::BufError | Status::StreamEnd) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&DICTIONARY)
                        .map_err(|e| SpdyError::HeaderBlock(e.to_string()))?;
                    dict = true;
                }
                Err(e) => return Err(SpdyError::HeaderBlock(e.to_string())),
            }
            let consumed = (self.inflate.total_in() - in0) as usize;
            let produced = self.inflate.total_out() - out0;
            pos += consumed;
            let room = out.len() < out.capacity();
            if pos >= input.len() && room && !dict {
                return Ok(out);
            }
            if consumed == 0 && produced == 0 && !dict && room {
                return Err(SpdyError::HeaderBlock("truncated".into()));
            }
        }
        Err(SpdyError::HeaderBlock("does not end".into()))
    }
}

fn parse_block(raw: &[u8]) -> Result<Headers, SpdyError> {
    let mut at = 0usize;
    let mut next = |n: usize| -> Result<&[u8], SpdyError> {
        let s = raw
            .get(at..at + n)
            .ok_or_else(|| SpdyError::HeaderBlock("truncated name/value block".into()))?;
        at += n;
        Ok(s)
    };
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let count = be(next(4)?);
    let mut headers = Headers::new();
    for _ in 0..count.min(1024) {
        let n = be(next(4)?);
        let name = String::from_utf8_lossy(next(n)?).to_ascii_lowercase();
        let n = be(next(4)?);
        let value = next(n)?;
        // Several values of one name are separated by NUL.
        for v in value.split(|b| *b == 0) {
            headers.push((name.clone(), String::from_utf8_lossy(v).into_owned()));
        }
    }
    Ok(headers)
}

/// Encodes frames for one direction of a connection.
pub struct Writer {
    deflate: Compress,
}

impl Default for Writer {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        // Setting the dictionary on a fresh stream cannot fail.
        let _ = deflate.set_dictionary(&DICTIONARY);
        Writer { deflate }
    }
}

impl Writer {
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), SpdyError> {
        match frame {
            Frame::Data { id, fin, data } => {
                out.put_u32(id & 0x7fff_ffff);
                out.put_u8(if *fin { FLAG_FIN } else { 0 });
                put_len(out, data.len())?;
                out.put_slice(data);
            }
            Frame::SynStream { id, fin, headers } => {
                let block = self.deflate_block(headers)?;
                control(out, TYPE_SYN_STREAM, fin_flag(*fin), 10 + block.len())?;
                out.put_u32(id & 0x7fff_ffff);
                out.put_u32(0);
                out.put_u16(0);
                out.put_slice(&block);
            }
            Frame::SynReply { id, fin, headers } | Frame::Headers { id, fin, headers } => {
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    TYPE_SYN_REPLY
                } else {
                    TYPE_HEADERS
                };
                let block = self.deflate_block(headers)?;
                control(out, kind, fin_flag(*fin), 4 + block.len())?;
                out.put_u32(id & 0x7fff_ffff);
                out.put_slice(&block);
            }
            Frame::RstStream { id, status } => {
                control(out, TYPE_RST_STREAM, 0, 8)?;
                out.put_u32(id & 0x7fff_ffff);
                out.put_u32(*status);
            }
            Frame::Ping { id } => {
                control(out, TYPE_PING, 0, 4)?;
                out.put_u32(*id);
            }
            Frame::GoAway { last_good, status } => {
                control(out, TYPE_GOAWAY, 0, 8)?;
                out.put_u32(last_good & 0x7fff_ffff);
                out.put_u32(*status);
            }
            Frame::WindowUpdate { id, delta } => {
                control(out, TYPE_WINDOW_UPDATE, 0, 8)?;
                out.put_u32(id & 0x7fff_ffff);
                out.put_u32(delta & 0x7fff_ffff);
            }
            Frame::Ignored => {}
        }
        Ok(())
    }

    fn deflate_block(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let mut raw = Vec::new();
        // Values of one name go out NUL-joined in one entry.
        let mut names: Vec<&str> = Vec::new();
        for (n, _) in headers {
            if !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
        raw.extend_from_slice(&(names.len() as u32).to_be_bytes());
        for name in names {
            let lower = name.to_ascii_lowercase();
            let value = headers
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
                .join("\0");
            raw.extend_from_slice(&(lower.len() as u32).to_be_bytes());
            raw.extend_from_slice(lower.as_bytes());
            raw.extend_from_slice(&(value.len() as u32).to_be_bytes());
            raw.extend_from_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.len().max(256));
            }
            let in0 = self.deflate.total_in();
            self.deflate
                .compress_vec(&raw[pos..], &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::HeaderBlock(e.to_string()))?;
            pos += (self.deflate.total_in() - in0) as usize;
            // A sync flush is complete once all input is in and output space was left over.
            if pos >= raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

fn fin_flag(fin: bool) -> u8 {
    if fin { FLAG_FIN } else { 0 }
}

fn control(out: &mut BytesMut, kind: u16, flags: u8, len: usize) -> Result<(), SpdyError> {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u8(flags);
    put_len(out, len)
}

fn put_len(out: &mut BytesMut, len: usize) -> Result<(), SpdyError> {
    if len > 0x00ff_ffff {
        return Err(SpdyError::TooLarge(len));
    }
    let b = (len as u32).to_be_bytes();
    out.put_slice(&b[1..]);
    Ok(())
}
