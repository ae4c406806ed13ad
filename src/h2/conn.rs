//! The server side of an HTTP/2 connection, without I/O (`h2::server`
//! drives it on a socket).
//!
//! Bytes go in through [`Conn::recv`], bytes to send accumulate in
//! [`Conn::out`]; streams are numbers the caller gets from
//! [`Conn::accept`]. Everything RFC 9113 asks of a server's connection is
//! here: the preface and SETTINGS exchange (§3.4, §6.5), stream states and
//! identifiers (§5.1), header blocks across CONTINUATION frames (§4.3, one
//! HPACK decoder for the connection, kept in step even for refused
//! streams), both flow controls (§5.2, §6.9: windows credited back as the
//! caller reads), `max_concurrent_streams` (REFUSED_STREAM), request
//! validity (`h2::request`, content-length against DATA, §8.1.1), PING,
//! GOAWAY, and the limits against the published floods: a header block's
//! size (CONTINUATION flood), control frames queued while the peer does not
//! read (SETTINGS/PING/RST floods), frames with empty payloads, and streams
//! the client resets before they are accepted (rapid reset, counted here
//! for the caller's policy).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use super::frame::{self, setting, ErrorCode, Frame, FrameError, Head, HEAD_LEN};
use super::hpack::{Decoder, Encoder};
use super::request::{trailers_ok, HeadBuilder, Malformed, RequestHead};
use super::PREFACE;

/// This endpoint's settings and limits (the `[http2]` config).
#[derive(Clone, Debug)]
pub struct Settings {
    pub max_concurrent_streams: u32,
    pub initial_stream_window: u32,
    pub initial_connection_window: u32,
    pub max_header_list_size: u32,
    /// One header block's bytes across HEADERS and CONTINUATION.
    pub max_header_block: usize,
    /// Control frames (SETTINGS and PING acknowledgements, RST_STREAM)
    /// queued and not yet written: past this the peer is flooding.
    pub max_queued_control: u32,
    /// Frames in a row with an empty payload that end nothing.
    pub max_empty_frames: u32,
}

impl Default for Settings {
    /// Envoy's defaults where it has one.
    fn default() -> Settings {
        Settings {
            max_concurrent_streams: 100,
            initial_stream_window: 256 * 1024,
            initial_connection_window: 1024 * 1024,
            max_header_list_size: 60 * 1024,
            max_header_block: 64 * 1024,
            max_queued_control: 1000,
            max_empty_frames: 1,
        }
    }
}

/// A connection error: GOAWAY with `code` is queued in `out`; the caller
/// writes it and closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnError {
    pub code: ErrorCode,
    pub reason: &'static str,
}

/// What a stream's reader finds.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// This many bytes were appended to the caller's buffer.
    Data(usize),
    /// The body ended (trailers, if any, from [`Conn::take_trailers`]).
    End,
    /// Nothing yet.
    Pending,
    /// The stream was reset (by the client, or by us for a protocol error).
    Reset(ErrorCode),
}

#[derive(Debug, Default)]
struct Stream {
    head: Option<Result<RequestHead, Malformed>>,
    /// Received DATA not yet read.
    body: Vec<u8>,
    /// END_STREAM received.
    recv_end: bool,
    trailers: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    /// What the client may still send on this stream.
    recv_window: i64,
    /// Read by the caller and not yet credited back with WINDOW_UPDATE.
    unacked: u32,
    /// content-length, when the request had one, and DATA received.
    expected_len: Option<u64>,
    received: u64,
    send_window: i64,
    head_sent: bool,
    send_end: bool,
    reset: Option<ErrorCode>,
    accepted: bool,
}

/// A header block being received.
struct Block {
    stream: u32,
    end_stream: bool,
    /// HEADERS made the stream depend on itself (§5.3.1): reset once
    /// decoded.
    self_dependent: bool,
    buf: Vec<u8>,
    /// A trailer block (the stream's head came earlier).
    trailers: bool,
}

pub struct Conn {
    cfg: Settings,
    out: Vec<u8>,
    preface_seen: bool,
    settings_seen: bool,
    decoder: Decoder,
    encoder: Encoder,
    peer_initial_window: u32,
    peer_max_frame: u32,
    send_window: i64,
    recv_window: i64,
    recv_unacked: u32,
    streams: StreamMap<Stream>,
    /// Streams that are open and count against max_concurrent_streams.
    active: u32,
    /// The highest stream the client opened.
    last_stream: u32,
    block: Option<Block>,
    accept: VecDeque<u32>,
    /// GOAWAY sent: the last stream that will be processed.
    goaway: Option<u32>,
    failed: Option<ConnError>,
    queued_control: u32,
    empty_frames: u32,
    /// Streams the client reset before the caller accepted them.
    pub resets_before_accept: u32,
    /// Streams something happened to since the caller last asked (data,
    /// the end of the body, a reset, a window opened): their readers and
    /// writers may go on. Duplicates are possible.
    touched: Vec<u32>,
    /// The connection's send window opened (WINDOW_UPDATE on stream 0, or
    /// a larger SETTINGS_INITIAL_WINDOW_SIZE): every writer may go on.
    window_opened: bool,
    /// The last streams we reset and no longer keep: frames the client
    /// sent before it saw the RST_STREAM are ignored, not answered with
    /// STREAM_CLOSED (§5.4.2). Bounded, like h2's and Envoy's memory of
    /// reset streams.
    reset_by_us: VecDeque<u32>,
}

/// How many reset streams `reset_by_us` remembers.
const REMEMBERED_RESETS: usize = 64;

/// A map keyed by stream id. The ids are small, distinct and few (at most
/// `max_concurrent_streams` live, and a client must open them in increasing
/// order), so SipHash's protection against chosen keys buys nothing here
/// and cost ~1 % of the core on h2-keepalive: a multiply spreads them over
/// the table instead.
pub type StreamMap<V> = HashMap<u32, V, BuildHasherDefault<StreamIdHasher>>;

#[derive(Default)]
pub struct StreamIdHasher(u64);

impl Hasher for StreamIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u32 keys are hashed here; any other input still hashes.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, id: u32) {
        // Client ids are odd: halved, consecutive ones are consecutive
        // numbers, which an odd multiplier keeps distinct in the low bits
        // (the bucket) while mixing the high ones (the table's tag byte).
        self.0 = u64::from(id >> 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The client may send this much on a new stream before any WINDOW_UPDATE.
const INITIAL: u32 = frame::DEFAULT_WINDOW;

impl Conn {
    /// A connection whose preface has not been read yet; our SETTINGS (and
    /// the connection window's update) are queued at once (§3.4: the
    /// server's preface may go before the client's is read).
    pub fn new(cfg: Settings) -> Conn {
        let mut out = Vec::with_capacity(64);
        frame::write_settings(
            &mut out,
            &[
                (setting::MAX_CONCURRENT_STREAMS, cfg.max_concurrent_streams),
                (setting::INITIAL_WINDOW_SIZE, cfg.initial_stream_window),
                (setting::MAX_HEADER_LIST_SIZE, cfg.max_header_list_size),
                (setting::ENABLE_PUSH, 0),
            ],
        );
        let conn_window = cfg.initial_connection_window.min(frame::MAX_WINDOW);
        if conn_window > INITIAL {
            frame::write_window_update(&mut out, 0, conn_window - INITIAL);
        }
        Conn {
            out,
            preface_seen: false,
            settings_seen: false,
            decoder: Decoder::new(4096),
            encoder: Encoder::new(),
            peer_initial_window: INITIAL,
            peer_max_frame: frame::DEFAULT_MAX_FRAME_SIZE,
            send_window: i64::from(INITIAL),
            recv_window: i64::from(conn_window.max(INITIAL)),
            recv_unacked: 0,
            streams: StreamMap::default(),
            active: 0,
            last_stream: 0,
            block: None,
            accept: VecDeque::new(),
            goaway: None,
            failed: None,
            queued_control: 0,
            empty_frames: 0,
            resets_before_accept: 0,
            touched: Vec::new(),
            window_opened: false,
            reset_by_us: VecDeque::new(),
            cfg,
        }
    }

    /// Bytes to write to the client. The caller drains what it wrote and
    /// then calls [`Conn::written`].
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// `out` was written out: control frames no longer count as queued.
    pub fn written(&mut self) {
        if self.out.is_empty() {
            self.queued_control = 0;
        }
    }

    /// Reads what it can of `input`: the preface, then whole frames.
    /// Returns how many bytes it used (a frame cut short is left for the
    /// next call). After an error nothing more is read; GOAWAY is in `out`.
    pub fn recv(&mut self, input: &[u8]) -> Result<usize, ConnError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mut used = 0;
        if !self.preface_seen {
            let n = input.len().min(PREFACE.len());
            if input[..n] != PREFACE[..n] {
                return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "invalid connection preface"));
            }
            if n < PREFACE.len() {
                return Ok(0);
            }
            self.preface_seen = true;
            used = n;
        }
        while let Some(head) = Head::peek(&input[used..]) {
            if head.len > frame::DEFAULT_MAX_FRAME_SIZE {
                // We never raise SETTINGS_MAX_FRAME_SIZE (§4.2).
                return Err(self.fail(ErrorCode::FRAME_SIZE_ERROR, "frame over 16 KiB"));
            }
            let end = used + HEAD_LEN + head.len as usize;
            let Some(payload) = input.get(used + HEAD_LEN..end) else {
                break;
            };
            used = end;
            self.frame(head, payload)?;
        }
        Ok(used)
    }

    fn fail(&mut self, code: ErrorCode, reason: &'static str) -> ConnError {
        let e = ConnError { code, reason };
        if self.failed.is_none() {
            frame::write_goaway(&mut self.out, self.last_stream, code, reason.as_bytes());
            self.failed = Some(e);
        }
        e
    }

    fn control_queued(&mut self) -> Result<(), ConnError> {
        self.queued_control += 1;
        if self.queued_control > self.cfg.max_queued_control {
            return Err(self.fail(
                ErrorCode::ENHANCE_YOUR_CALM,
                "too many control frames queued (flood)",
            ));
        }
        Ok(())
    }

    /// RST_STREAM; what the stream had received and nobody will read now
    /// is credited back to the connection.
    fn reset_stream(&mut self, id: u32, code: ErrorCode) -> Result<(), ConnError> {
        frame::write_rst_stream(&mut self.out, id, code);
        let mut unread = 0;
        if let Some(s) = self.streams.get_mut(&id) {
            self.touched.push(id);
            if s.reset.is_none() {
                s.reset = Some(code);
                if !(s.recv_end && s.send_end) {
                    self.active = self.active.saturating_sub(1);
                }
            }
            unread = s.body.len() as u32;
            s.body = Vec::new();
        }
        self.credit_connection(unread);
        self.control_queued()
    }

    fn frame(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        let f = match frame::parse(head, payload) {
            Ok(f) => f,
            Err(FrameError::Connection(code, why)) => return Err(self.fail(code, why)),
            Err(FrameError::Stream(id, code, _)) => {
                if self.block.is_some() {
                    return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "frame inside a header block"));
                }
                return self.reset_stream(id, code);
            }
        };
        if !self.settings_seen {
            // §3.4: the preface ends with a SETTINGS frame.
            if !matches!(f, Frame::Settings { ack: false, .. }) {
                return Err(self.fail(
                    ErrorCode::PROTOCOL_ERROR,
                    "preface not followed by SETTINGS",
                ));
            }
            self.settings_seen = true;
        }
        // §6.10: once a header block started, only its CONTINUATIONs.
        if let Some(b) = &self.block {
            match f {
                Frame::Continuation { stream, .. } if stream == b.stream => {}
                _ => return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "header block interrupted")),
            }
        }
        let empty = payload.is_empty()
            && !matches!(f, Frame::Settings { .. } | Frame::Unknown { .. })
            && !matches!(
                f,
                Frame::Data {
                    end_stream: true,
                    ..
                } | Frame::Headers {
                    end_stream: true,
                    ..
                }
            )
            && !matches!(
                f,
                Frame::Continuation {
                    end_headers: true,
                    ..
                }
            );
        if empty {
            self.empty_frames += 1;
            if self.empty_frames > self.cfg.max_empty_frames {
                return Err(self.fail(ErrorCode::ENHANCE_YOUR_CALM, "frames with empty payloads"));
            }
        } else {
            self.empty_frames = 0;
        }
        match f {
            Frame::Settings { ack: true, .. } => Ok(()),
            Frame::Settings { ack: false, params } => self.settings(params),
            Frame::Ping { ack: false, data } => {
                frame::write_ping(&mut self.out, data, true);
                self.control_queued()
            }
            Frame::Ping { ack: true, .. } => Ok(()),
            Frame::GoAway { .. } => {
                // The client will open no more streams; those open finish.
                if self.goaway.is_none() {
                    self.goaway = Some(self.last_stream);
                }
                Ok(())
            }
            Frame::WindowUpdate {
                stream: 0,
                increment,
            } => {
                self.send_window += i64::from(increment);
                if self.send_window > i64::from(frame::MAX_WINDOW) {
                    return Err(self.fail(
                        ErrorCode::FLOW_CONTROL_ERROR,
                        "connection window over 2^31-1",
                    ));
                }
                self.window_opened = true;
                Ok(())
            }
            Frame::WindowUpdate { stream, increment } => {
                let Some(s) = self.streams.get_mut(&stream) else {
                    return self.unknown_stream(stream, "WINDOW_UPDATE on an idle stream");
                };
                s.send_window += i64::from(increment);
                if s.send_window > i64::from(frame::MAX_WINDOW) {
                    return self.reset_stream(stream, ErrorCode::FLOW_CONTROL_ERROR);
                }
                self.touched.push(stream);
                Ok(())
            }
            Frame::RstStream { stream, code } => {
                let Some(s) = self.streams.get_mut(&stream) else {
                    return self.unknown_stream(stream, "RST_STREAM on an idle stream");
                };
                if s.reset.is_none() {
                    s.reset = Some(code);
                    if !(s.recv_end && s.send_end) {
                        self.active = self.active.saturating_sub(1);
                    }
                    if !s.accepted {
                        self.resets_before_accept += 1;
                    }
                }
                let unread = s.body.len() as u32;
                s.body = Vec::new();
                self.touched.push(stream);
                self.credit_connection(unread);
                Ok(())
            }
            Frame::Priority { stream, .. } => {
                // Deprecated (RFC 9113 §5.3.2); a PRIORITY may open no
                // stream, but its number is then used up if higher.
                if stream % 2 == 0 && stream > self.last_stream {
                    return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "PRIORITY on an even stream"));
                }
                Ok(())
            }
            Frame::Headers {
                stream,
                fragment,
                end_stream,
                end_headers,
                priority,
            } => {
                let self_dependent = priority.is_some_and(|p| p.depends_on == stream);
                self.headers(stream, fragment, end_stream, end_headers, self_dependent)
            }
            Frame::Continuation {
                fragment,
                end_headers,
                ..
            } => {
                let Some(b) = self.block.as_mut() else {
                    return Err(
                        self.fail(ErrorCode::PROTOCOL_ERROR, "CONTINUATION without HEADERS")
                    );
                };
                if b.buf.len() + fragment.len() > self.cfg.max_header_block {
                    return Err(self.fail(ErrorCode::ENHANCE_YOUR_CALM, "header block too large"));
                }
                b.buf.extend_from_slice(fragment);
                if end_headers {
                    let b = self.block.take().expect("checked above");
                    return self.block_done(
                        b.stream,
                        &b.buf,
                        b.end_stream,
                        b.trailers,
                        b.self_dependent,
                    );
                }
                Ok(())
            }
            Frame::Data {
                stream,
                data,
                end_stream,
                flow_len,
            } => self.data(stream, data, end_stream, flow_len),
            Frame::Unknown { .. } => Ok(()),
        }
    }

    /// A frame for a stream not in the map: idle (never opened) is a
    /// connection error for most frames (§5.1), closed is ignored.
    fn unknown_stream(&mut self, stream: u32, what: &'static str) -> Result<(), ConnError> {
        if stream > self.last_stream {
            return Err(self.fail(ErrorCode::PROTOCOL_ERROR, what));
        }
        Ok(())
    }

    fn settings(&mut self, params: &[u8]) -> Result<(), ConnError> {
        for (id, value) in frame::settings(params) {
            match id {
                setting::HEADER_TABLE_SIZE => self.encoder.set_max_table_size(value as usize),
                setting::INITIAL_WINDOW_SIZE => {
                    // §6.9.2: every stream's send window moves by the change.
                    let delta = i64::from(value) - i64::from(self.peer_initial_window);
                    self.peer_initial_window = value;
                    self.window_opened |= delta > 0;
                    for s in self.streams.values_mut() {
                        s.send_window += delta;
                        if s.send_window > i64::from(frame::MAX_WINDOW) {
                            return Err(self.fail(
                                ErrorCode::FLOW_CONTROL_ERROR,
                                "SETTINGS_INITIAL_WINDOW_SIZE overflows a window",
                            ));
                        }
                    }
                }
                setting::MAX_FRAME_SIZE => self.peer_max_frame = value,
                _ => {}
            }
        }
        frame::write_settings_ack(&mut self.out);
        self.control_queued()
    }

    fn headers(
        &mut self,
        stream: u32,
        fragment: &[u8],
        end_stream: bool,
        end_headers: bool,
        self_dependent: bool,
    ) -> Result<(), ConnError> {
        let trailers = match self.streams.get(&stream) {
            Some(s) if s.recv_end || s.reset.is_some() => {
                // §5.1: HEADERS on a half-closed (remote) or closed stream.
                return Err(self.fail(ErrorCode::STREAM_CLOSED, "HEADERS on a closed stream"));
            }
            Some(_) => {
                if !end_stream {
                    // Trailers end the stream (§8.1).
                    return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "trailers without END_STREAM"));
                }
                true
            }
            None => {
                if stream % 2 == 0 {
                    // §5.1.1: client streams are odd.
                    return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "even stream identifier"));
                }
                if stream <= self.last_stream {
                    // §5.1.1: and greater than every stream opened before
                    // ("an unexpected stream identifier": PROTOCOL_ERROR).
                    return Err(self.fail(
                        ErrorCode::PROTOCOL_ERROR,
                        "stream identifier not increasing",
                    ));
                }
                self.last_stream = stream;
                false
            }
        };
        if fragment.len() > self.cfg.max_header_block {
            return Err(self.fail(ErrorCode::ENHANCE_YOUR_CALM, "header block too large"));
        }
        if end_headers {
            return self.block_done(stream, fragment, end_stream, trailers, self_dependent);
        }
        self.block = Some(Block {
            stream,
            end_stream,
            self_dependent,
            buf: fragment.to_vec(),
            trailers,
        });
        Ok(())
    }

    fn block_done(
        &mut self,
        stream: u32,
        block: &[u8],
        end_stream: bool,
        trailers: bool,
        self_dependent: bool,
    ) -> Result<(), ConnError> {
        if trailers {
            let mut fields = Vec::new();
            let mut ok = true;
            let r = self.decoder.decode(block, |n, v| {
                ok &= trailers_ok(n, v);
                fields.push((n.to_vec(), v.to_vec()));
                Ok::<(), ()>(())
            });
            if r.is_err() {
                return Err(self.fail(ErrorCode::COMPRESSION_ERROR, "HPACK"));
            }
            if !ok || self_dependent {
                return self.reset_stream(stream, ErrorCode::PROTOCOL_ERROR);
            }
            return self.end_of_body(stream, Some(fields));
        }
        let mut b = HeadBuilder::for_block(self.cfg.max_header_list_size, block.len());
        let r = self.decoder.decode_marked(block, |n, v, never| {
            b.field_marked(n, v, never);
            Ok::<(), ()>(())
        });
        if let Err(e) = r {
            if e.is_compression_error() {
                return Err(self.fail(ErrorCode::COMPRESSION_ERROR, "HPACK"));
            }
        }
        if self.goaway.is_some_and(|last| stream > last) {
            // After our GOAWAY: decoded (HPACK stays in step), not processed.
            return Ok(());
        }
        if self.active >= self.cfg.max_concurrent_streams {
            self.forget(stream);
            frame::write_rst_stream(&mut self.out, stream, ErrorCode::REFUSED_STREAM);
            return self.control_queued();
        }
        let head = b.finish();
        if self_dependent || matches!(head, Err(Malformed::Protocol(_))) {
            // What the client still sends on it is ignored (§5.4.2).
            self.forget(stream);
            frame::write_rst_stream(&mut self.out, stream, ErrorCode::PROTOCOL_ERROR);
            return self.control_queued();
        }
        let expected_len = head.as_ref().ok().and_then(|h| {
            let mut v = h.values(b"content-length");
            let first = v.next()?;
            std::str::from_utf8(first).ok()?.parse::<u64>().ok()
        });
        self.streams.insert(
            stream,
            Stream {
                head: Some(head),
                recv_end: end_stream,
                recv_window: i64::from(self.cfg.initial_stream_window),
                send_window: i64::from(self.peer_initial_window),
                expected_len,
                ..Stream::default()
            },
        );
        self.active += 1;
        self.accept.push_back(stream);
        if end_stream && expected_len.is_some_and(|n| n != 0) {
            return self.reset_stream(stream, ErrorCode::PROTOCOL_ERROR);
        }
        Ok(())
    }

    fn data(
        &mut self,
        stream: u32,
        data: &[u8],
        end_stream: bool,
        flow_len: u32,
    ) -> Result<(), ConnError> {
        // The connection window counts every DATA frame, whatever becomes
        // of its stream (§6.9).
        self.recv_window -= i64::from(flow_len);
        if self.recv_window < 0 {
            return Err(self.fail(
                ErrorCode::FLOW_CONTROL_ERROR,
                "DATA beyond the connection window",
            ));
        }
        // Padding and data of dropped streams are credited back at once.
        let mut credit = flow_len - data.len() as u32;
        let Some(s) = self.streams.get_mut(&stream) else {
            if stream > self.last_stream {
                return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "DATA on an idle stream"));
            }
            self.credit_connection(flow_len);
            let not_processed = self.goaway.is_some_and(|last| stream > last);
            if not_processed || self.reset_by_us.contains(&stream) {
                // We reset it; what was in flight is ignored (§6.4).
                return Ok(());
            }
            return self.reset_stream_unknown(stream);
        };
        if s.recv_end || s.reset.is_some() {
            credit = flow_len;
            let closed_by_us = s.reset.is_some();
            self.credit_connection(credit);
            if closed_by_us {
                return Ok(());
            }
            return self.reset_stream(stream, ErrorCode::STREAM_CLOSED);
        }
        s.recv_window -= i64::from(flow_len);
        if s.recv_window < 0 {
            self.credit_connection(flow_len);
            return self.reset_stream(stream, ErrorCode::FLOW_CONTROL_ERROR);
        }
        s.received += data.len() as u64;
        if s.expected_len.is_some_and(|n| s.received > n) {
            // §8.1.1: more DATA than content-length.
            self.credit_connection(flow_len);
            return self.reset_stream(stream, ErrorCode::PROTOCOL_ERROR);
        }
        s.body.extend_from_slice(data);
        s.unacked += credit;
        self.touched.push(stream);
        self.credit_connection(credit);
        if end_stream {
            return self.end_of_body(stream, None);
        }
        Ok(())
    }

    fn reset_stream_unknown(&mut self, stream: u32) -> Result<(), ConnError> {
        frame::write_rst_stream(&mut self.out, stream, ErrorCode::STREAM_CLOSED);
        self.control_queued()
    }

    fn end_of_body(
        &mut self,
        stream: u32,
        trailers: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    ) -> Result<(), ConnError> {
        let Some(s) = self.streams.get_mut(&stream) else {
            return Ok(());
        };
        s.recv_end = true;
        s.trailers = trailers;
        self.touched.push(stream);
        if s.expected_len.is_some_and(|n| n != s.received) {
            return self.reset_stream(stream, ErrorCode::PROTOCOL_ERROR);
        }
        if s.send_end && s.reset.is_none() {
            self.active = self.active.saturating_sub(1);
        }
        Ok(())
    }

    /// Credits `n` bytes back to the connection window, with a
    /// WINDOW_UPDATE once half the window is owed (not one per frame).
    fn credit_connection(&mut self, n: u32) {
        self.recv_unacked += n;
        let window = self.cfg.initial_connection_window.max(INITIAL);
        if self.recv_unacked >= window / 2 {
            frame::write_window_update(&mut self.out, 0, self.recv_unacked);
            self.recv_window += i64::from(self.recv_unacked);
            self.recv_unacked = 0;
        }
    }

    /// The next stream whose request head is in.
    pub fn accept(&mut self) -> Option<u32> {
        while let Some(id) = self.accept.pop_front() {
            match self.streams.get_mut(&id) {
                Some(s) if s.reset.is_none() => {
                    s.accepted = true;
                    return Some(id);
                }
                // Reset before anyone saw it: nobody will close it.
                Some(_) => {
                    self.streams.remove(&id);
                }
                None => {}
            }
        }
        None
    }

    /// The request head of an accepted stream (once): Err(TooLarge) asks
    /// for a 431.
    pub fn take_head(&mut self, id: u32) -> Option<Result<RequestHead, Malformed>> {
        self.streams.get_mut(&id)?.head.take()
    }

    /// Moves the stream's received data into `buf`, crediting its window
    /// back (a WINDOW_UPDATE once half of it is owed).
    pub fn read(&mut self, id: u32, buf: &mut Vec<u8>) -> Read {
        let Some(s) = self.streams.get_mut(&id) else {
            return Read::Reset(ErrorCode::STREAM_CLOSED);
        };
        if let Some(code) = s.reset {
            return Read::Reset(code);
        }
        if !s.body.is_empty() {
            let n = s.body.len();
            buf.append(&mut s.body);
            s.unacked += n as u32;
            if !s.recv_end && s.unacked >= self.cfg.initial_stream_window / 2 {
                frame::write_window_update(&mut self.out, id, s.unacked);
                s.recv_window += i64::from(s.unacked);
                s.unacked = 0;
            }
            self.credit_connection(n as u32);
            return Read::Data(n);
        }
        if s.recv_end {
            Read::End
        } else {
            Read::Pending
        }
    }

    /// The request's trailers, after [`Read::End`].
    pub fn take_trailers(&mut self, id: u32) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        self.streams.get_mut(&id)?.trailers.take()
    }

    /// Sends a response head: `fields` encodes the status and fields with
    /// the connection's HPACK encoder.
    pub fn send_head(
        &mut self,
        id: u32,
        end_stream: bool,
        fields: impl FnOnce(&mut Encoder, &mut Vec<u8>),
    ) {
        let Some(s) = self
            .streams
            .get_mut(&id)
            .filter(|s| s.reset.is_none() && !s.send_end)
        else {
            return;
        };
        s.head_sent = true;
        let at = frame::reserve_head(&mut self.out);
        self.encoder.begin(&mut self.out);
        fields(&mut self.encoder, &mut self.out);
        frame::finish_headers(&mut self.out, at, id, end_stream, self.peer_max_frame);
        if end_stream {
            self.send_ended(id);
        }
    }

    fn send_ended(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.send_end = true;
            if s.recv_end && s.reset.is_none() {
                self.active = self.active.saturating_sub(1);
            }
        }
    }

    /// How many bytes of DATA the windows allow on the stream now.
    pub fn capacity(&self, id: u32) -> usize {
        match self.streams.get(&id) {
            Some(s) if s.reset.is_none() && !s.send_end => {
                s.send_window.min(self.send_window).max(0) as usize
            }
            _ => 0,
        }
    }

    /// Sends as much of `data` as the windows allow (in frames of the
    /// peer's maximum size); END_STREAM with the last byte if `end` and all
    /// of it went. Returns the bytes sent.
    pub fn send_data(&mut self, id: u32, data: &[u8], end: bool) -> usize {
        let n = data.len().min(self.capacity(id));
        let all = n == data.len();
        if n == 0 && !(all && end) {
            return 0;
        }
        let max = self.peer_max_frame as usize;
        let mut sent = 0;
        loop {
            let piece = (n - sent).min(max);
            let last = sent + piece == n;
            frame::write_data_head(&mut self.out, id, piece as u32, last && all && end);
            self.out.extend_from_slice(&data[sent..sent + piece]);
            sent += piece;
            if last {
                break;
            }
        }
        self.send_window -= n as i64;
        if let Some(s) = self.streams.get_mut(&id) {
            s.send_window -= n as i64;
        }
        if all && end {
            self.send_ended(id);
        }
        n
    }

    /// Response trailers (END_STREAM).
    pub fn send_trailers(&mut self, id: u32, fields: impl FnOnce(&mut Encoder, &mut Vec<u8>)) {
        if self
            .streams
            .get(&id)
            .is_none_or(|s| s.reset.is_some() || s.send_end)
        {
            return;
        }
        let at = frame::reserve_head(&mut self.out);
        self.encoder.begin(&mut self.out);
        fields(&mut self.encoder, &mut self.out);
        frame::finish_headers(&mut self.out, at, id, true, self.peer_max_frame);
        self.send_ended(id);
    }

    /// Resets the stream (the caller gave up on it).
    pub fn reset(&mut self, id: u32, code: ErrorCode) {
        if self
            .streams
            .get(&id)
            .is_some_and(|s| s.reset.is_none() && !(s.recv_end && s.send_end))
        {
            let _ = self.reset_stream(id, code);
        }
    }

    /// The caller is done with the stream: its state goes; a stream still
    /// open either way is reset (NO_ERROR when only the request body was
    /// left unread, RFC 9113 §8.1; CANCEL otherwise), and unread data is
    /// credited back to the connection.
    pub fn close(&mut self, id: u32) {
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        let was_reset = s.reset.is_some();
        let done = s.recv_end && s.send_end;
        if !was_reset && !done && self.failed.is_none() {
            let code = if s.send_end {
                ErrorCode::NO_ERROR
            } else {
                ErrorCode::CANCEL
            };
            let _ = self.reset_stream(id, code);
            self.forget(id);
        } else if was_reset {
            self.forget(id);
        }
        if let Some(s) = self.streams.remove(&id) {
            self.credit_connection(s.body.len() as u32);
        }
    }

    /// Remembers a stream we reset and drop (see `reset_by_us`).
    fn forget(&mut self, id: u32) {
        if self.reset_by_us.len() == REMEMBERED_RESETS {
            self.reset_by_us.pop_front();
        }
        self.reset_by_us.push_back(id);
    }

    /// Starts a graceful close: GOAWAY naming the last stream the client
    /// opened; those finish, newer ones are not processed.
    pub fn goaway(&mut self, code: ErrorCode) {
        if self.goaway.is_none() {
            self.goaway = Some(self.last_stream);
            frame::write_goaway(&mut self.out, self.last_stream, code, b"");
        }
    }

    /// Streams open either way.
    pub fn active(&self) -> u32 {
        self.active
    }

    /// Hands `wake` every stream touched since the last call (see
    /// `touched`); true if the connection's window opened, which concerns
    /// every writer.
    pub fn drain_touched(&mut self, mut wake: impl FnMut(u32)) -> bool {
        for id in self.touched.drain(..) {
            wake(id);
        }
        std::mem::take(&mut self.window_opened)
    }

    /// Whether the stream was reset (by the client, or by us), or is gone.
    pub fn is_reset(&self, id: u32) -> bool {
        self.streams.get(&id).is_none_or(|s| s.reset.is_some())
    }

    /// Whether the stream can still send (not reset, END_STREAM not sent).
    pub fn can_send(&self, id: u32) -> bool {
        self.streams
            .get(&id)
            .is_some_and(|s| s.reset.is_none() && !s.send_end)
    }

    /// Nothing more to read: END_STREAM came and all the data before it
    /// was read (and there were no trailers).
    pub fn recv_done(&self, id: u32) -> bool {
        self.streams
            .get(&id)
            .is_some_and(|s| s.recv_end && s.body.is_empty() && s.trailers.is_none())
    }

    /// Received request data nobody has read (yet).
    pub fn unread(&self, id: u32) -> usize {
        self.streams.get(&id).map_or(0, |s| s.body.len())
    }

    /// Gives back what a burst grew (the caller has no stream open and
    /// nothing queued): an idle connection keeps small buffers.
    pub fn shrink(&mut self) {
        if self.out.is_empty() && self.out.capacity() > 16 * 1024 {
            self.out = Vec::with_capacity(1024);
        }
        if self.streams.is_empty() && self.streams.capacity() > 16 {
            self.streams = StreamMap::default();
        }
        self.touched.shrink_to(16);
    }

    /// The connection failed (GOAWAY queued in `out`).
    pub fn failed(&self) -> Option<ConnError> {
        self.failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_client_ids_land_in_distinct_buckets() {
        use std::hash::BuildHasher;
        let b = BuildHasherDefault::<StreamIdHasher>::default();
        let buckets: std::collections::HashSet<u64> =
            (0..128u32).map(|n| b.hash_one(2 * n + 1) & 127).collect();
        assert_eq!(buckets.len(), 128);
        let mut m = StreamMap::default();
        m.insert(7u32, "a");
        assert_eq!(m.get(&7), Some(&"a"));
    }
    use crate::h2::frame::flag;

    /// A client's bytes: the preface, SETTINGS, then what the test adds.
    struct Client {
        bytes: Vec<u8>,
        enc: Encoder,
    }

    impl Client {
        fn new() -> Client {
            let mut bytes = PREFACE.to_vec();
            frame::write_settings(&mut bytes, &[]);
            Client {
                bytes,
                enc: Encoder::new(),
            }
        }

        fn get(&mut self, stream: u32, path: &str, end: bool) -> &mut Client {
            self.request(
                stream,
                &[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":authority", "a"),
                    (":path", path),
                ],
                end,
            )
        }

        fn request(&mut self, stream: u32, fields: &[(&str, &str)], end: bool) -> &mut Client {
            let mut block = Vec::new();
            self.enc.begin(&mut block);
            for (n, v) in fields {
                self.enc.field(n.as_bytes(), v.as_bytes(), &mut block);
            }
            frame::write_headers(
                &mut self.bytes,
                stream,
                &block,
                end,
                frame::DEFAULT_MAX_FRAME_SIZE,
            );
            self
        }

        fn data(&mut self, stream: u32, data: &[u8], end: bool) -> &mut Client {
            frame::write_data_head(&mut self.bytes, stream, data.len() as u32, end);
            self.bytes.extend_from_slice(data);
            self
        }

        fn raw(&mut self, head: Head, payload: &[u8]) -> &mut Client {
            head.write(&mut self.bytes);
            self.bytes.extend_from_slice(payload);
            self
        }
    }

    /// The head of a one-byte HEADERS frame that leaves its block open.
    fn unended_headers(stream: u32) -> Head {
        Head {
            len: 1,
            kind: frame::kind::HEADERS,
            flags: 0,
            stream,
        }
    }

    /// The frames in `out` (heads and payloads).
    fn frames(out: &[u8]) -> Vec<(Head, Vec<u8>)> {
        let mut v = Vec::new();
        let mut rest = out;
        while let Some(h) = Head::peek(rest) {
            let end = HEAD_LEN + h.len as usize;
            v.push((h, rest[HEAD_LEN..end].to_vec()));
            rest = &rest[end..];
        }
        v
    }

    fn goaway_code(out: &[u8]) -> Option<ErrorCode> {
        frames(out)
            .into_iter()
            .find_map(|(h, p)| match frame::parse(h, &p) {
                Ok(Frame::GoAway { code, .. }) => Some(code),
                _ => None,
            })
    }

    fn rst(out: &[u8]) -> Vec<(u32, ErrorCode)> {
        frames(out)
            .into_iter()
            .filter_map(|(h, p)| match frame::parse(h, &p) {
                Ok(Frame::RstStream { stream, code }) => Some((stream, code)),
                _ => None,
            })
            .collect()
    }

    fn conn() -> Conn {
        Conn::new(Settings::default())
    }

    /// The code of the connection error `bytes` cause.
    fn conn_error(c: &mut Conn, bytes: &[u8]) -> ErrorCode {
        match c.recv(bytes) {
            Err(e) => e.code,
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn a_request_in_pieces_and_its_answer() {
        let mut c = conn();
        let mut cl = Client::new();
        cl.get(1, "/x", false).data(1, b"hello", true);
        // Fed a byte at a time: nothing is lost at any boundary.
        let mut pending = Vec::new();
        for &b in &cl.bytes {
            pending.push(b);
            let n = c.recv(&pending).unwrap();
            pending.drain(..n);
        }
        assert!(pending.is_empty());
        let id = c.accept().unwrap();
        assert_eq!(id, 1);
        let head = c.take_head(id).unwrap().unwrap();
        assert_eq!(head.path(), Some(&b"/x"[..]));
        let mut body = Vec::new();
        assert_eq!(c.read(id, &mut body), Read::Data(5));
        assert_eq!(c.read(id, &mut body), Read::End);
        assert_eq!(body, b"hello");
        c.out().clear();
        c.send_head(id, false, |e, out| {
            e.status(200, out);
            e.field(b"content-type", b"text/plain", out);
        });
        assert_eq!(c.send_data(id, b"ok", true), 2);
        let f = frames(c.out());
        assert_eq!(f.len(), 2);
        assert_eq!(
            (f[0].0.kind, f[0].0.flags),
            (frame::kind::HEADERS, flag::END_HEADERS)
        );
        assert_eq!(
            (f[1].0.kind, f[1].0.flags, &f[1].1[..]),
            (frame::kind::DATA, flag::END_STREAM, &b"ok"[..])
        );
        let mut dec = Decoder::new(4096);
        let mut fields = Vec::new();
        dec.decode(&f[0].1, |n, v| {
            fields.push((n.to_vec(), v.to_vec()));
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(fields[0], (b":status".to_vec(), b"200".to_vec()));
        assert_eq!(c.active(), 0);
    }

    #[test]
    fn a_bad_preface_or_first_frame_is_a_protocol_error() {
        let mut c = conn();
        assert!(c.recv(b"GET / HTTP/1.1\r\n").is_err());
        assert_eq!(goaway_code(c.out()), Some(ErrorCode::PROTOCOL_ERROR));
        let mut c = conn();
        let mut b = PREFACE.to_vec();
        frame::write_ping(&mut b, [0; 8], false);
        assert_eq!(c.recv(&b).unwrap_err().code, ErrorCode::PROTOCOL_ERROR);
    }

    #[test]
    fn stream_identifiers_must_be_new_and_odd() {
        let mut c = conn();
        let mut cl = Client::new();
        cl.get(3, "/", true).get(1, "/", true);
        assert_eq!(conn_error(&mut c, &cl.bytes), ErrorCode::PROTOCOL_ERROR);
        let mut c = conn();
        let mut cl = Client::new();
        cl.get(2, "/", true);
        assert_eq!(conn_error(&mut c, &cl.bytes), ErrorCode::PROTOCOL_ERROR);
    }

    #[test]
    fn continuation_must_follow_and_is_capped() {
        let mut c = conn();
        let mut cl = Client::new();
        cl.raw(unended_headers(1), b"\x82");
        frame::write_ping(&mut cl.bytes, [0; 8], false);
        assert_eq!(conn_error(&mut c, &cl.bytes), ErrorCode::PROTOCOL_ERROR);
        // A flood of CONTINUATION frames never ending the block.
        let mut c = conn();
        let mut cl = Client::new();
        cl.raw(unended_headers(1), b"\x82");
        let piece = vec![0x40u8; 16_384];
        for _ in 0..5 {
            cl.raw(
                Head {
                    len: piece.len() as u32,
                    kind: frame::kind::CONTINUATION,
                    flags: 0,
                    stream: 1,
                },
                &piece,
            );
        }
        assert_eq!(conn_error(&mut c, &cl.bytes), ErrorCode::ENHANCE_YOUR_CALM);
    }

    #[test]
    fn streams_over_the_limit_are_refused_and_hpack_stays_in_step() {
        let mut c = Conn::new(Settings {
            max_concurrent_streams: 2,
            ..Settings::default()
        });
        let mut cl = Client::new();
        cl.get(1, "/a", false)
            .get(3, "/b", false)
            .get(5, "/c", false);
        c.recv(&cl.bytes).unwrap();
        assert!(rst(c.out()).contains(&(5, ErrorCode::REFUSED_STREAM)));
        assert_eq!(
            (c.accept(), c.accept(), c.accept()),
            (Some(1), Some(3), None)
        );
        // Stream 1 ends both ways; stream 7 (same fields, indexed by the
        // client's encoder) is accepted and decodes right.
        let mut more = Client {
            bytes: Vec::new(),
            enc: cl.enc,
        };
        more.data(1, b"", true).get(7, "/c", true);
        c.take_head(1);
        c.send_head(1, true, |e, out| e.status(204, out));
        c.recv(&more.bytes).unwrap();
        assert_eq!(c.accept(), Some(7));
        assert_eq!(c.take_head(7).unwrap().unwrap().path(), Some(&b"/c"[..]));
    }

    #[test]
    fn flow_control_is_enforced_and_credited_back() {
        let mut c = Conn::new(Settings {
            initial_stream_window: 100,
            ..Settings::default()
        });
        let mut cl = Client::new();
        cl.get(1, "/", false).data(1, &[1; 100], false);
        c.recv(&cl.bytes).unwrap();
        let id = c.accept().unwrap();
        c.out().clear();
        let mut buf = Vec::new();
        assert_eq!(c.read(id, &mut buf), Read::Data(100));
        // Read: the stream's window is credited back.
        assert!(frames(c.out())
            .iter()
            .any(|(h, p)| h.kind == frame::kind::WINDOW_UPDATE
                && h.stream == 1
                && p == &100u32.to_be_bytes()));
        // One byte more than the window: a stream error.
        let mut c = Conn::new(Settings {
            initial_stream_window: 100,
            ..Settings::default()
        });
        let mut cl = Client::new();
        cl.get(1, "/", false).data(1, &[1; 101], false);
        c.recv(&cl.bytes).unwrap();
        assert!(rst(c.out()).contains(&(1, ErrorCode::FLOW_CONTROL_ERROR)));
    }

    #[test]
    fn sending_waits_for_the_peers_window() {
        let mut c = conn();
        let mut cl = Client::new();
        frame::write_settings(&mut cl.bytes, &[(setting::INITIAL_WINDOW_SIZE, 10)]);
        cl.get(1, "/", true);
        c.recv(&cl.bytes).unwrap();
        let id = c.accept().unwrap();
        c.send_head(id, false, |e, out| e.status(200, out));
        assert_eq!(c.capacity(id), 10);
        assert_eq!(c.send_data(id, &[7; 25], true), 10);
        assert_eq!(c.capacity(id), 0);
        let mut more = Vec::new();
        frame::write_window_update(&mut more, 1, 20);
        c.recv(&more).unwrap();
        assert_eq!(c.send_data(id, &[7; 15], true), 15);
        assert_eq!(c.active(), 0);
        // A window pushed past 2^31-1 resets the stream.
        let mut c = conn();
        let mut cl = Client::new();
        cl.get(1, "/", true);
        frame::write_window_update(&mut cl.bytes, 1, frame::MAX_WINDOW);
        c.recv(&cl.bytes).unwrap();
        assert!(rst(c.out()).contains(&(1, ErrorCode::FLOW_CONTROL_ERROR)));
    }

    #[test]
    fn content_length_must_match_the_data() {
        let mut c = conn();
        let mut cl = Client::new();
        let fields = [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "a"),
            (":path", "/"),
            ("content-length", "3"),
        ];
        cl.request(1, &fields, false).data(1, b"toolong", true);
        cl.request(3, &fields, false).data(3, b"ab", true);
        c.recv(&cl.bytes).unwrap();
        assert_eq!(
            rst(c.out()),
            [
                (1, ErrorCode::PROTOCOL_ERROR),
                (3, ErrorCode::PROTOCOL_ERROR)
            ]
        );
    }

    /// Whatever became of the data (read, reset, dropped unread), the
    /// connection window gets every byte back exactly once.
    #[test]
    fn the_connection_window_is_credited_once_per_byte() {
        let mut c = Conn::new(Settings {
            initial_connection_window: 65_535,
            ..Settings::default()
        });
        let mut cl = Client::new();
        let post = |len: &'static str| {
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "a"),
                (":path", "/"),
                ("content-length", len),
            ]
        };
        cl.request(1, &post("3"), false)
            .data(1, b"0123456789", false); // over its length: reset
        cl.request(3, &post("5"), false).data(3, b"abcde", true); // read
        cl.request(5, &post("4"), false).data(5, b"wxyz", true); // dropped unread
        cl.get(7, "/", false).data(7, b"12", false); // reset by the client
        frame::write_rst_stream(&mut cl.bytes, 7, ErrorCode::CANCEL);
        c.recv(&cl.bytes).unwrap();
        let mut buf = Vec::new();
        while let Some(id) = c.accept() {
            if id == 3 {
                while let Read::Data(_) = c.read(id, &mut buf) {}
            }
            c.send_head(id, true, |e, out| e.status(200, out));
            c.close(id);
        }
        assert_eq!(buf, b"abcde");
        assert_eq!(c.recv_window + i64::from(c.recv_unacked), 65_535);
        assert!(c.streams.is_empty());
    }

    #[test]
    fn floods_are_refused() {
        // PINGs the client never reads the answers of.
        let mut c = conn();
        let mut cl = Client::new();
        for _ in 0..1_100 {
            frame::write_ping(&mut cl.bytes, [1; 8], false);
        }
        assert_eq!(conn_error(&mut c, &cl.bytes), ErrorCode::ENHANCE_YOUR_CALM);
        // Empty DATA frames.
        let mut c = conn();
        let mut cl = Client::new();
        cl.get(1, "/", false)
            .data(1, b"", false)
            .data(1, b"", false);
        assert_eq!(conn_error(&mut c, &cl.bytes), ErrorCode::ENHANCE_YOUR_CALM);
    }

    #[test]
    fn client_resets_before_accept_are_counted() {
        let mut c = conn();
        let mut cl = Client::new();
        for id in (1..40).step_by(2) {
            cl.get(id, "/", false);
            frame::write_rst_stream(&mut cl.bytes, id, ErrorCode::CANCEL);
        }
        c.recv(&cl.bytes).unwrap();
        assert_eq!(c.resets_before_accept, 20);
        assert_eq!(c.accept(), None);
        assert_eq!(c.active(), 0);
    }

    #[test]
    fn malformed_and_oversized_heads() {
        let mut c = Conn::new(Settings {
            max_header_list_size: 200,
            ..Settings::default()
        });
        let mut cl = Client::new();
        cl.request(1, &[(":method", "GET"), (":path", "/")], true);
        let big = "x".repeat(300);
        cl.request(
            3,
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("big", &big),
            ],
            true,
        );
        c.recv(&cl.bytes).unwrap();
        assert!(rst(c.out()).contains(&(1, ErrorCode::PROTOCOL_ERROR)));
        assert_eq!(c.accept(), Some(3));
        assert_eq!(c.take_head(3).unwrap().unwrap_err(), Malformed::TooLarge);
    }

    #[test]
    fn goaway_lets_open_streams_finish_and_drops_new_ones() {
        let mut c = conn();
        let mut cl = Client::new();
        cl.get(1, "/", true);
        c.recv(&cl.bytes).unwrap();
        c.goaway(ErrorCode::NO_ERROR);
        let mut more = Client {
            bytes: Vec::new(),
            enc: cl.enc,
        };
        more.get(3, "/", true);
        c.recv(&more.bytes).unwrap();
        assert_eq!((c.accept(), c.accept()), (Some(1), None));
    }

    #[test]
    fn no_input_panics() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut cl = Client::new();
        cl.get(1, "/a", false).data(1, b"abc", false);
        let valid = cl.bytes.clone();
        for _ in 0..3_000 {
            let mut input = valid.clone();
            for _ in 0..(next() % 6) {
                let i = (next() as usize) % input.len();
                input[i] = next() as u8;
            }
            let tail: Vec<u8> = (0..next() % 64).map(|_| next() as u8).collect();
            input.extend_from_slice(&tail);
            let mut c = conn();
            if c.recv(&input).is_ok() {
                while let Some(id) = c.accept() {
                    let _ = c.take_head(id);
                    let _ = c.read(id, &mut Vec::new());
                    c.send_head(id, false, |e, out| e.status(200, out));
                    c.send_data(id, b"x", true);
                    c.close(id);
                }
            }
        }
    }
}
