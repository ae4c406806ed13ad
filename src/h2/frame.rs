//! HTTP/2 frames (RFC 9113 §4 and §6) as the server codec of Remora's own
//! reads and writes them: the 9-byte head, each frame type's payload checked
//! the way the RFC requires of a receiver, and writers for the frames a
//! server sends. Nothing here keeps state between frames: stream states,
//! flow-control windows, SETTINGS acknowledgement and the order of
//! HEADERS/CONTINUATION are the connection's (RFC 9113 §5, §6.9, §6.10).
//!
//! [`parse`] borrows the payload and never allocates; every length it reads
//! from the peer is checked against what arrived, so no input can make it
//! index out of bounds or overflow. An error says whether it is a
//! connection error (GOAWAY, RFC 9113 §5.4.1) or a stream error
//! (RST_STREAM, §5.4.2), with the code the RFC names for it.

use std::fmt;

/// A frame head's length (RFC 9113 §4.1).
pub const HEAD_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE's initial value and its lower bound (§6.5.2).
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 1 << 14;
/// SETTINGS_MAX_FRAME_SIZE's upper bound (§6.5.2).
pub const MAX_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// The largest flow-control window (§6.9.1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;
/// Every flow-control window's initial size (§6.9.2).
pub const DEFAULT_WINDOW: u32 = 65_535;

/// Frame types (§6, §11.2).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags (§6). ACK shares END_STREAM's bit on SETTINGS and PING.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// SETTINGS parameters (§6.5.2).
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// An error code (§7). Codes this endpoint does not know are kept as they
/// came: they "MUST NOT trigger any special behavior" (§7), but belong in
/// the log as sent.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    pub const NO_ERROR: ErrorCode = ErrorCode(0x0);
    pub const PROTOCOL_ERROR: ErrorCode = ErrorCode(0x1);
    pub const INTERNAL_ERROR: ErrorCode = ErrorCode(0x2);
    pub const FLOW_CONTROL_ERROR: ErrorCode = ErrorCode(0x3);
    pub const SETTINGS_TIMEOUT: ErrorCode = ErrorCode(0x4);
    pub const STREAM_CLOSED: ErrorCode = ErrorCode(0x5);
    pub const FRAME_SIZE_ERROR: ErrorCode = ErrorCode(0x6);
    pub const REFUSED_STREAM: ErrorCode = ErrorCode(0x7);
    pub const CANCEL: ErrorCode = ErrorCode(0x8);
    pub const COMPRESSION_ERROR: ErrorCode = ErrorCode(0x9);
    pub const CONNECT_ERROR: ErrorCode = ErrorCode(0xa);
    pub const ENHANCE_YOUR_CALM: ErrorCode = ErrorCode(0xb);
    pub const INADEQUATE_SECURITY: ErrorCode = ErrorCode(0xc);
    pub const HTTP_1_1_REQUIRED: ErrorCode = ErrorCode(0xd);

    /// The code's name in RFC 9113 §7, if it has one.
    pub fn name(self) -> Option<&'static str> {
        const NAMES: [&str; 14] = [
            "NO_ERROR",
            "PROTOCOL_ERROR",
            "INTERNAL_ERROR",
            "FLOW_CONTROL_ERROR",
            "SETTINGS_TIMEOUT",
            "STREAM_CLOSED",
            "FRAME_SIZE_ERROR",
            "REFUSED_STREAM",
            "CANCEL",
            "COMPRESSION_ERROR",
            "CONNECT_ERROR",
            "ENHANCE_YOUR_CALM",
            "INADEQUATE_SECURITY",
            "HTTP_1_1_REQUIRED",
        ];
        NAMES.get(self.0 as usize).copied()
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "0x{:x}", self.0),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A frame's head (§4.1). The reserved bit of the stream identifier is
/// ignored on receipt, as §4.1 says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl Head {
    pub fn parse(b: &[u8; HEAD_LEN]) -> Head {
        Head {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & MAX_WINDOW,
        }
    }

    /// The head at the start of `bytes`, if all nine bytes are there.
    pub fn peek(bytes: &[u8]) -> Option<Head> {
        bytes.first_chunk::<HEAD_LEN>().map(Head::parse)
    }

    pub fn bytes(&self) -> [u8; HEAD_LEN] {
        debug_assert!(self.len <= MAX_MAX_FRAME_SIZE);
        let [_, l0, l1, l2] = self.len.to_be_bytes();
        let [s0, s1, s2, s3] = (self.stream & MAX_WINDOW).to_be_bytes();
        [l0, l1, l2, self.kind, self.flags, s0, s1, s2, s3]
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.bytes());
    }

    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
}

/// A stream dependency (§5.3.2, deprecated by RFC 9113 but still parsed:
/// its fields take room in HEADERS and PRIORITY frames).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Priority {
    pub depends_on: u32,
    pub exclusive: bool,
    pub weight: u8,
}

/// A frame as received, its payload borrowed.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Data {
        stream: u32,
        data: &'a [u8],
        end_stream: bool,
        /// What the frame counts against the flow-control windows: the
        /// whole payload, padding included (§6.1).
        flow_len: u32,
    },
    Headers {
        stream: u32,
        fragment: &'a [u8],
        end_stream: bool,
        end_headers: bool,
        priority: Option<Priority>,
    },
    Priority {
        stream: u32,
        priority: Priority,
    },
    RstStream {
        stream: u32,
        code: ErrorCode,
    },
    Settings {
        ack: bool,
        /// The parameters, six bytes each, checked: see [`settings`].
        params: &'a [u8],
    },
    Ping {
        ack: bool,
        data: [u8; 8],
    },
    GoAway {
        last_stream: u32,
        code: ErrorCode,
        debug: &'a [u8],
    },
    WindowUpdate {
        stream: u32,
        increment: u32,
    },
    Continuation {
        stream: u32,
        fragment: &'a [u8],
        end_headers: bool,
    },
    /// A frame type this endpoint does not know: ignored (§4.1, §5.5).
    Unknown {
        kind: u8,
    },
}

/// Why a frame was refused, and what the RFC has the receiver do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// GOAWAY with this code, then close (§5.4.1).
    Connection(ErrorCode, &'static str),
    /// RST_STREAM on this stream with this code (§5.4.2); the connection
    /// goes on.
    Stream(u32, ErrorCode, &'static str),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Connection(c, why) => write!(f, "connection error {c}: {why}"),
            FrameError::Stream(s, c, why) => write!(f, "stream {s} error {c}: {why}"),
        }
    }
}

fn conn(code: ErrorCode, why: &'static str) -> FrameError {
    FrameError::Connection(code, why)
}

/// Reads one frame whose head is `head` and whose payload (`head.len`
/// bytes, which the caller has checked against its SETTINGS_MAX_FRAME_SIZE:
/// a larger frame is a FRAME_SIZE_ERROR, §4.2) is `payload`. A server's
/// view: PUSH_PROMISE is a connection error (§8.4: a client cannot push).
pub fn parse(head: Head, payload: &[u8]) -> Result<Frame<'_>, FrameError> {
    debug_assert_eq!(payload.len() as u64, u64::from(head.len));
    let stream = head.stream;
    let on_stream = |what| {
        if stream == 0 {
            Err(conn(ErrorCode::PROTOCOL_ERROR, what))
        } else {
            Ok(())
        }
    };
    let on_connection = |what| {
        if stream != 0 {
            Err(conn(ErrorCode::PROTOCOL_ERROR, what))
        } else {
            Ok(())
        }
    };
    match head.kind {
        kind::DATA => {
            on_stream("DATA on stream 0")?;
            let data = unpad(head, payload)?;
            Ok(Frame::Data {
                stream,
                data,
                end_stream: head.has(flag::END_STREAM),
                flow_len: head.len,
            })
        }
        kind::HEADERS => {
            on_stream("HEADERS on stream 0")?;
            let mut rest = unpad(head, payload)?;
            let priority = if head.has(flag::PRIORITY) {
                let Some((p, r)) = rest.split_first_chunk::<5>() else {
                    return Err(conn(
                        ErrorCode::FRAME_SIZE_ERROR,
                        "HEADERS too short for its priority fields",
                    ));
                };
                rest = r;
                // A stream depending on itself (§5.3.1) is a stream
                // error the caller raises once the header block is
                // decoded: HPACK must stay in step (§4.3).
                Some(priority(p))
            } else {
                None
            };
            Ok(Frame::Headers {
                stream,
                fragment: rest,
                end_stream: head.has(flag::END_STREAM),
                end_headers: head.has(flag::END_HEADERS),
                priority,
            })
        }
        kind::PRIORITY => {
            on_stream("PRIORITY on stream 0")?;
            let Some(p) = payload.first_chunk::<5>().filter(|_| payload.len() == 5) else {
                return Err(FrameError::Stream(
                    stream,
                    ErrorCode::FRAME_SIZE_ERROR,
                    "PRIORITY is not 5 bytes long",
                ));
            };
            let p = priority(p);
            if p.depends_on == stream {
                return Err(FrameError::Stream(
                    stream,
                    ErrorCode::PROTOCOL_ERROR,
                    "PRIORITY makes the stream depend on itself",
                ));
            }
            Ok(Frame::Priority {
                stream,
                priority: p,
            })
        }
        kind::RST_STREAM => {
            on_stream("RST_STREAM on stream 0")?;
            let code = exactly4(payload, "RST_STREAM is not 4 bytes long")?;
            Ok(Frame::RstStream {
                stream,
                code: ErrorCode(code),
            })
        }
        kind::SETTINGS => {
            on_connection("SETTINGS on a stream")?;
            let ack = head.has(flag::ACK);
            if ack && !payload.is_empty() {
                return Err(conn(
                    ErrorCode::FRAME_SIZE_ERROR,
                    "SETTINGS ACK with a payload",
                ));
            }
            if payload.len() % 6 != 0 {
                return Err(conn(
                    ErrorCode::FRAME_SIZE_ERROR,
                    "SETTINGS length not a multiple of 6",
                ));
            }
            for (id, value) in settings(payload) {
                check_setting(id, value)?;
            }
            Ok(Frame::Settings {
                ack,
                params: payload,
            })
        }
        kind::PUSH_PROMISE => Err(conn(
            ErrorCode::PROTOCOL_ERROR,
            "PUSH_PROMISE from a client",
        )),
        kind::PING => {
            on_connection("PING on a stream")?;
            let Some(data) = payload.first_chunk::<8>().filter(|_| payload.len() == 8) else {
                return Err(conn(
                    ErrorCode::FRAME_SIZE_ERROR,
                    "PING is not 8 bytes long",
                ));
            };
            Ok(Frame::Ping {
                ack: head.has(flag::ACK),
                data: *data,
            })
        }
        kind::GOAWAY => {
            on_connection("GOAWAY on a stream")?;
            let Some((fixed, debug)) = payload.split_first_chunk::<8>() else {
                return Err(conn(
                    ErrorCode::FRAME_SIZE_ERROR,
                    "GOAWAY shorter than 8 bytes",
                ));
            };
            let last = u32::from_be_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]) & MAX_WINDOW;
            let code = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
            Ok(Frame::GoAway {
                last_stream: last,
                code: ErrorCode(code),
                debug,
            })
        }
        kind::WINDOW_UPDATE => {
            let increment = exactly4(payload, "WINDOW_UPDATE is not 4 bytes long")? & MAX_WINDOW;
            if increment == 0 {
                // §6.9: a stream error on a stream, a connection error on
                // the connection's window.
                let why = "WINDOW_UPDATE with an increment of 0";
                return Err(if stream == 0 {
                    conn(ErrorCode::PROTOCOL_ERROR, why)
                } else {
                    FrameError::Stream(stream, ErrorCode::PROTOCOL_ERROR, why)
                });
            }
            Ok(Frame::WindowUpdate { stream, increment })
        }
        kind::CONTINUATION => {
            on_stream("CONTINUATION on stream 0")?;
            Ok(Frame::Continuation {
                stream,
                fragment: payload,
                end_headers: head.has(flag::END_HEADERS),
            })
        }
        kind => Ok(Frame::Unknown { kind }),
    }
}

/// The payload less its padding (§6.1, §6.2): padding that fills the frame
/// or more is a connection error PROTOCOL_ERROR.
fn unpad(head: Head, payload: &[u8]) -> Result<&[u8], FrameError> {
    if !head.has(flag::PADDED) {
        return Ok(payload);
    }
    let Some((&pad, rest)) = payload.split_first() else {
        return Err(conn(
            ErrorCode::FRAME_SIZE_ERROR,
            "PADDED frame without its pad length",
        ));
    };
    let pad = usize::from(pad);
    if pad > rest.len() {
        return Err(conn(
            ErrorCode::PROTOCOL_ERROR,
            "padding longer than the frame",
        ));
    }
    Ok(&rest[..rest.len() - pad])
}

fn priority(p: &[u8; 5]) -> Priority {
    let dep = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
    Priority {
        depends_on: dep & MAX_WINDOW,
        exclusive: dep & !MAX_WINDOW != 0,
        weight: p[4],
    }
}

fn exactly4(payload: &[u8], why: &'static str) -> Result<u32, FrameError> {
    match payload.first_chunk::<4>() {
        Some(b) if payload.len() == 4 => Ok(u32::from_be_bytes(*b)),
        _ => Err(conn(ErrorCode::FRAME_SIZE_ERROR, why)),
    }
}

/// The (identifier, value) pairs of a SETTINGS payload whose length is a
/// multiple of six (checked by [`parse`]).
pub fn settings(params: &[u8]) -> impl Iterator<Item = (u16, u32)> + '_ {
    params.chunks_exact(6).map(|p| {
        (
            u16::from_be_bytes([p[0], p[1]]),
            u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
        )
    })
}

/// §6.5.2's bounds on the values of the parameters it defines; unknown
/// parameters are ignored.
fn check_setting(id: u16, value: u32) -> Result<(), FrameError> {
    match id {
        setting::ENABLE_PUSH if value > 1 => Err(conn(
            ErrorCode::PROTOCOL_ERROR,
            "SETTINGS_ENABLE_PUSH neither 0 nor 1",
        )),
        setting::INITIAL_WINDOW_SIZE if value > MAX_WINDOW => Err(conn(
            ErrorCode::FLOW_CONTROL_ERROR,
            "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
        )),
        setting::MAX_FRAME_SIZE
            if !(DEFAULT_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE).contains(&value) =>
        {
            Err(conn(
                ErrorCode::PROTOCOL_ERROR,
                "SETTINGS_MAX_FRAME_SIZE outside 2^14..2^24-1",
            ))
        }
        _ => Ok(()),
    }
}

/// A SETTINGS frame with these parameters.
pub fn write_settings(out: &mut Vec<u8>, params: &[(u16, u32)]) {
    Head {
        len: (params.len() * 6) as u32,
        kind: kind::SETTINGS,
        flags: 0,
        stream: 0,
    }
    .write(out);
    for (id, v) in params {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// The acknowledgement of the peer's SETTINGS (§6.5.3).
pub fn write_settings_ack(out: &mut Vec<u8>) {
    Head {
        len: 0,
        kind: kind::SETTINGS,
        flags: flag::ACK,
        stream: 0,
    }
    .write(out);
}

/// A PING, or the answer to one (`ack`, same data: §6.7).
pub fn write_ping(out: &mut Vec<u8>, data: [u8; 8], ack: bool) {
    Head {
        len: 8,
        kind: kind::PING,
        flags: if ack { flag::ACK } else { 0 },
        stream: 0,
    }
    .write(out);
    out.extend_from_slice(&data);
}

/// GOAWAY (§6.8): the last stream this endpoint will have processed.
pub fn write_goaway(out: &mut Vec<u8>, last_stream: u32, code: ErrorCode, debug: &[u8]) {
    // The debug data is ours, short; a frame of the minimum maximum size
    // holds it.
    let debug = &debug[..debug.len().min(DEFAULT_MAX_FRAME_SIZE as usize - 8)];
    Head {
        len: 8 + debug.len() as u32,
        kind: kind::GOAWAY,
        flags: 0,
        stream: 0,
    }
    .write(out);
    out.extend_from_slice(&(last_stream & MAX_WINDOW).to_be_bytes());
    out.extend_from_slice(&code.0.to_be_bytes());
    out.extend_from_slice(debug);
}

/// RST_STREAM (§6.4).
pub fn write_rst_stream(out: &mut Vec<u8>, stream: u32, code: ErrorCode) {
    Head {
        len: 4,
        kind: kind::RST_STREAM,
        flags: 0,
        stream,
    }
    .write(out);
    out.extend_from_slice(&code.0.to_be_bytes());
}

/// WINDOW_UPDATE (§6.9); `increment` is 1 to 2^31-1.
pub fn write_window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    debug_assert!(increment > 0 && increment <= MAX_WINDOW);
    Head {
        len: 4,
        kind: kind::WINDOW_UPDATE,
        flags: 0,
        stream,
    }
    .write(out);
    out.extend_from_slice(&(increment & MAX_WINDOW).to_be_bytes());
}

/// A DATA frame's head; its `len` payload bytes follow (at most the peer's
/// SETTINGS_MAX_FRAME_SIZE: the caller splits).
pub fn write_data_head(out: &mut Vec<u8>, stream: u32, len: u32, end_stream: bool) {
    Head {
        len,
        kind: kind::DATA,
        flags: if end_stream { flag::END_STREAM } else { 0 },
        stream,
    }
    .write(out);
}

/// A header block as HEADERS and, past `max_frame` bytes, CONTINUATION
/// frames (§4.3: one contiguous sequence, END_HEADERS on the last).
pub fn write_headers(
    out: &mut Vec<u8>,
    stream: u32,
    block: &[u8],
    end_stream: bool,
    max_frame: u32,
) {
    let max = (max_frame.max(DEFAULT_MAX_FRAME_SIZE) as usize).min(MAX_MAX_FRAME_SIZE as usize);
    let mut pieces = block.chunks(max);
    let first = pieces.next().unwrap_or_default();
    let mut more = block.len() > first.len();
    let mut flags = if end_stream { flag::END_STREAM } else { 0 };
    if !more {
        flags |= flag::END_HEADERS;
    }
    Head {
        len: first.len() as u32,
        kind: kind::HEADERS,
        flags,
        stream,
    }
    .write(out);
    out.extend_from_slice(first);
    let mut written = first.len();
    for piece in pieces {
        written += piece.len();
        more = written < block.len();
        Head {
            len: piece.len() as u32,
            kind: kind::CONTINUATION,
            flags: if more { 0 } else { flag::END_HEADERS },
            stream,
        }
        .write(out);
        out.extend_from_slice(piece);
    }
}

/// A header block written into `out` at `at` with room for a HEADERS head
/// left before it (see [`reserve_head`]): fills in that head when the block
/// fits one frame, which is the usual case and saves a copy; otherwise
/// moves the block out and writes HEADERS and CONTINUATION frames.
pub fn finish_headers(out: &mut Vec<u8>, at: usize, stream: u32, end_stream: bool, max_frame: u32) {
    let Some(block_len) = out.len().checked_sub(at + HEAD_LEN) else {
        debug_assert!(false, "finish_headers without reserve_head");
        return;
    };
    let max = (max_frame.max(DEFAULT_MAX_FRAME_SIZE) as usize).min(MAX_MAX_FRAME_SIZE as usize);
    if block_len <= max {
        let head = Head {
            len: block_len as u32,
            kind: kind::HEADERS,
            flags: flag::END_HEADERS | if end_stream { flag::END_STREAM } else { 0 },
            stream,
        };
        out[at..at + HEAD_LEN].copy_from_slice(&head.bytes());
        return;
    }
    let block = out.split_off(at + HEAD_LEN);
    out.truncate(at);
    write_headers(out, stream, &block, end_stream, max_frame);
}

/// Leaves room for a HEADERS head at the end of `out` and returns where it
/// starts (for [`finish_headers`], once the block is encoded after it).
pub fn reserve_head(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; HEAD_LEN]);
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> (Head, Vec<u8>) {
        (
            Head {
                len: payload.len() as u32,
                kind,
                flags,
                stream,
            },
            payload.to_vec(),
        )
    }

    fn parsed(
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> Result<Frame<'static>, FrameError> {
        let (h, p) = frame(kind, flags, stream, payload);
        let p: &'static [u8] = Box::leak(p.into_boxed_slice());
        parse(h, p)
    }

    fn conn_code(r: Result<Frame<'_>, FrameError>) -> ErrorCode {
        match r {
            Err(FrameError::Connection(c, _)) => c,
            other => panic!("expected a connection error, got {other:?}"),
        }
    }

    #[test]
    fn head_round_trips_and_ignores_the_reserved_bit() {
        let mut out = Vec::new();
        let h = Head {
            len: 0x12_3456,
            kind: kind::HEADERS,
            flags: 0x25,
            stream: 0x7fff_fffe,
        };
        h.write(&mut out);
        assert_eq!(out.len(), HEAD_LEN);
        assert_eq!(Head::peek(&out), Some(h));
        out[5] |= 0x80;
        assert_eq!(Head::peek(&out), Some(h));
        assert_eq!(Head::peek(&out[..8]), None);
    }

    #[test]
    fn data_with_padding_counts_the_whole_payload() {
        let f = parsed(
            kind::DATA,
            flag::PADDED | flag::END_STREAM,
            1,
            &[3, b'a', b'b', 0, 0, 0],
        );
        assert_eq!(
            f,
            Ok(Frame::Data {
                stream: 1,
                data: b"ab",
                end_stream: true,
                flow_len: 6
            })
        );
        // Padding as long as the rest: empty data; longer: an error.
        assert!(matches!(
            parsed(kind::DATA, flag::PADDED, 1, &[2, 0, 0]),
            Ok(Frame::Data { data: b"", .. })
        ));
        assert_eq!(
            conn_code(parsed(kind::DATA, flag::PADDED, 1, &[3, 0, 0])),
            ErrorCode::PROTOCOL_ERROR
        );
        assert_eq!(
            conn_code(parsed(kind::DATA, flag::PADDED, 1, &[])),
            ErrorCode::FRAME_SIZE_ERROR
        );
        assert_eq!(
            conn_code(parsed(kind::DATA, 0, 0, b"x")),
            ErrorCode::PROTOCOL_ERROR
        );
    }

    #[test]
    fn headers_with_priority_and_padding() {
        let mut p = vec![2];
        p.extend_from_slice(&[0x80, 0, 0, 1, 15]);
        p.extend_from_slice(b"block");
        p.extend_from_slice(&[0, 0]);
        let f = parsed(
            kind::HEADERS,
            flag::PADDED | flag::PRIORITY | flag::END_HEADERS,
            3,
            &p,
        );
        assert_eq!(
            f,
            Ok(Frame::Headers {
                stream: 3,
                fragment: b"block",
                end_stream: false,
                end_headers: true,
                priority: Some(Priority {
                    depends_on: 1,
                    exclusive: true,
                    weight: 15
                })
            })
        );
        // Depending on itself is left to the caller (after decoding the
        // block); too short is a connection error.
        assert!(matches!(
            parsed(kind::HEADERS, flag::PRIORITY, 3, &[0, 0, 0, 3, 0]),
            Ok(Frame::Headers {
                priority: Some(Priority { depends_on: 3, .. }),
                ..
            })
        ));
        assert_eq!(
            conn_code(parsed(kind::HEADERS, flag::PRIORITY, 3, &[0, 0, 0])),
            ErrorCode::FRAME_SIZE_ERROR
        );
        assert_eq!(
            conn_code(parsed(kind::HEADERS, 0, 0, b"x")),
            ErrorCode::PROTOCOL_ERROR
        );
    }

    #[test]
    fn fixed_size_frames_check_their_size() {
        assert!(matches!(
            parsed(kind::PRIORITY, 0, 5, &[0, 0, 0, 1]),
            Err(FrameError::Stream(5, ErrorCode::FRAME_SIZE_ERROR, _))
        ));
        assert_eq!(
            conn_code(parsed(kind::RST_STREAM, 0, 5, &[0, 0, 8])),
            ErrorCode::FRAME_SIZE_ERROR
        );
        assert_eq!(
            parsed(kind::RST_STREAM, 0, 5, &[0, 0, 0, 8]),
            Ok(Frame::RstStream {
                stream: 5,
                code: ErrorCode::CANCEL
            })
        );
        assert_eq!(
            conn_code(parsed(kind::PING, 0, 0, &[0; 7])),
            ErrorCode::FRAME_SIZE_ERROR
        );
        assert_eq!(
            conn_code(parsed(kind::PING, 0, 1, &[0; 8])),
            ErrorCode::PROTOCOL_ERROR
        );
        assert_eq!(
            conn_code(parsed(kind::WINDOW_UPDATE, 0, 0, &[0, 0, 1])),
            ErrorCode::FRAME_SIZE_ERROR
        );
        assert_eq!(
            conn_code(parsed(kind::GOAWAY, 0, 0, &[0; 7])),
            ErrorCode::FRAME_SIZE_ERROR
        );
    }

    #[test]
    fn window_update_of_zero_is_a_stream_or_connection_error() {
        assert!(matches!(
            parsed(kind::WINDOW_UPDATE, 0, 7, &[0, 0, 0, 0]),
            Err(FrameError::Stream(7, ErrorCode::PROTOCOL_ERROR, _))
        ));
        assert_eq!(
            conn_code(parsed(kind::WINDOW_UPDATE, 0, 0, &[0x80, 0, 0, 0])),
            ErrorCode::PROTOCOL_ERROR
        );
        assert_eq!(
            parsed(kind::WINDOW_UPDATE, 0, 0, &[0xff, 0xff, 0xff, 0xff]),
            Ok(Frame::WindowUpdate {
                stream: 0,
                increment: MAX_WINDOW
            })
        );
    }

    #[test]
    fn settings_are_checked() {
        let mut p = Vec::new();
        for (id, v) in [(setting::INITIAL_WINDOW_SIZE, 1 << 20), (0x99, 7)] {
            p.extend_from_slice(&u16::to_be_bytes(id));
            p.extend_from_slice(&u32::to_be_bytes(v));
        }
        let Ok(Frame::Settings { ack: false, params }) = parsed(kind::SETTINGS, 0, 0, &p) else {
            panic!("valid SETTINGS refused");
        };
        assert_eq!(
            settings(params).collect::<Vec<_>>(),
            [(setting::INITIAL_WINDOW_SIZE, 1 << 20), (0x99, 7)]
        );
        let one = |id: u16, v: u32| {
            let mut p = id.to_be_bytes().to_vec();
            p.extend_from_slice(&v.to_be_bytes());
            conn_code(parsed(kind::SETTINGS, 0, 0, &p))
        };
        assert_eq!(one(setting::ENABLE_PUSH, 2), ErrorCode::PROTOCOL_ERROR);
        assert_eq!(
            one(setting::INITIAL_WINDOW_SIZE, 1 << 31),
            ErrorCode::FLOW_CONTROL_ERROR
        );
        assert_eq!(
            one(setting::MAX_FRAME_SIZE, (1 << 14) - 1),
            ErrorCode::PROTOCOL_ERROR
        );
        assert_eq!(
            one(setting::MAX_FRAME_SIZE, 1 << 24),
            ErrorCode::PROTOCOL_ERROR
        );
        assert_eq!(
            conn_code(parsed(kind::SETTINGS, 0, 0, &[0; 5])),
            ErrorCode::FRAME_SIZE_ERROR
        );
        assert_eq!(
            conn_code(parsed(kind::SETTINGS, flag::ACK, 0, &[0; 6])),
            ErrorCode::FRAME_SIZE_ERROR
        );
        assert_eq!(
            conn_code(parsed(kind::SETTINGS, 0, 1, &[])),
            ErrorCode::PROTOCOL_ERROR
        );
    }

    #[test]
    fn push_promise_from_a_client_and_unknown_types() {
        assert_eq!(
            conn_code(parsed(kind::PUSH_PROMISE, 0, 1, &[0; 4])),
            ErrorCode::PROTOCOL_ERROR
        );
        assert_eq!(
            parsed(0xfa, 0xff, 9, b"whatever"),
            Ok(Frame::Unknown { kind: 0xfa })
        );
    }

    #[test]
    fn goaway_keeps_unknown_codes() {
        let mut p = 0x8000_0005u32.to_be_bytes().to_vec();
        p.extend_from_slice(&0x1234u32.to_be_bytes());
        p.extend_from_slice(b"bye");
        let f = parsed(kind::GOAWAY, 0, 0, &p);
        assert_eq!(
            f,
            Ok(Frame::GoAway {
                last_stream: 5,
                code: ErrorCode(0x1234),
                debug: b"bye"
            })
        );
        assert_eq!(format!("{:?}", ErrorCode(0x1234)), "0x1234");
        assert_eq!(
            ErrorCode::ENHANCE_YOUR_CALM.to_string(),
            "ENHANCE_YOUR_CALM"
        );
    }

    /// Writes frames, reads them back with `parse`.
    fn read_all(mut bytes: &[u8]) -> Vec<(Head, Vec<u8>)> {
        let mut v = Vec::new();
        while let Some(h) = Head::peek(bytes) {
            let end = HEAD_LEN + h.len as usize;
            v.push((h, bytes[HEAD_LEN..end].to_vec()));
            bytes = &bytes[end..];
        }
        assert!(bytes.is_empty(), "a frame was cut short");
        v
    }

    #[test]
    fn writers_produce_what_parse_reads() {
        let mut out = Vec::new();
        write_settings(&mut out, &[(setting::MAX_CONCURRENT_STREAMS, 100)]);
        write_settings_ack(&mut out);
        write_ping(&mut out, *b"12345678", true);
        write_goaway(&mut out, 7, ErrorCode::NO_ERROR, b"drain");
        write_rst_stream(&mut out, 3, ErrorCode::REFUSED_STREAM);
        write_window_update(&mut out, 0, 1 << 20);
        write_data_head(&mut out, 1, 2, true);
        out.extend_from_slice(b"ok");
        let frames = read_all(&out);
        let got: Vec<_> = frames.iter().map(|(h, p)| parse(*h, p).unwrap()).collect();
        assert_eq!(
            got,
            [
                Frame::Settings {
                    ack: false,
                    params: &[0, 3, 0, 0, 0, 100][..]
                },
                Frame::Settings {
                    ack: true,
                    params: &[][..]
                },
                Frame::Ping {
                    ack: true,
                    data: *b"12345678"
                },
                Frame::GoAway {
                    last_stream: 7,
                    code: ErrorCode::NO_ERROR,
                    debug: b"drain"
                },
                Frame::RstStream {
                    stream: 3,
                    code: ErrorCode::REFUSED_STREAM
                },
                Frame::WindowUpdate {
                    stream: 0,
                    increment: 1 << 20
                },
                Frame::Data {
                    stream: 1,
                    data: b"ok",
                    end_stream: true,
                    flow_len: 2
                },
            ]
        );
    }

    #[test]
    fn a_large_header_block_goes_out_as_headers_and_continuations() {
        let block: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        for via_reserve in [false, true] {
            let mut out = b"before".to_vec();
            if via_reserve {
                let at = reserve_head(&mut out);
                out.extend_from_slice(&block);
                finish_headers(&mut out, at, 5, true, DEFAULT_MAX_FRAME_SIZE);
            } else {
                write_headers(&mut out, 5, &block, true, DEFAULT_MAX_FRAME_SIZE);
            }
            assert_eq!(&out[..6], b"before");
            let frames = read_all(&out[6..]);
            let kinds: Vec<_> = frames
                .iter()
                .map(|(h, _)| (h.kind, h.flags, h.len))
                .collect();
            assert_eq!(
                kinds,
                [
                    (kind::HEADERS, flag::END_STREAM, 16_384),
                    (kind::CONTINUATION, 0, 16_384),
                    (kind::CONTINUATION, flag::END_HEADERS, 40_000 - 32_768),
                ]
            );
            let joined: Vec<u8> = frames.iter().flat_map(|(_, p)| p.clone()).collect();
            assert_eq!(joined, block);
        }
        // A small block: one HEADERS frame with END_HEADERS, written in place.
        let mut out = Vec::new();
        let at = reserve_head(&mut out);
        out.extend_from_slice(b"\x88");
        finish_headers(&mut out, at, 1, false, DEFAULT_MAX_FRAME_SIZE);
        assert_eq!(
            parse(Head::peek(&out).unwrap(), &out[HEAD_LEN..]),
            Ok(Frame::Headers {
                stream: 1,
                fragment: b"\x88",
                end_stream: false,
                end_headers: true,
                priority: None
            })
        );
        // An empty block is still one HEADERS frame.
        let mut out = Vec::new();
        write_headers(&mut out, 1, b"", true, DEFAULT_MAX_FRAME_SIZE);
        assert_eq!(read_all(&out).len(), 1);
    }

    #[test]
    fn no_input_panics() {
        // Every type, flag combination and a spread of lengths and bytes.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let r = next();
            let len = (r % 40) as usize;
            let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let head = Head {
                len: len as u32,
                kind: (r >> 8) as u8 % 12,
                flags: (r >> 16) as u8,
                stream: (r >> 24) as u32 % 4,
            };
            let _ = parse(head, &payload);
        }
    }
}
