//! The client side of an HTTP/2 connection, without I/O (`h2::client`
//! drives it on a socket to an upstream).
//!
//! The mirror of [`super::conn`], the server side, on the same layers
//! (`frame`, `hpack`): bytes go in through [`ClientConn::recv`], bytes to
//! send accumulate in [`ClientConn::out`], and streams are numbers
//! [`ClientConn::open`] hands out. What RFC 9113 asks of a client's
//! connection is here: the preface and SETTINGS (§3.4, §6.5; push
//! disabled), odd stream identifiers in increasing order (§5.1.1), the
//! peer's SETTINGS_MAX_CONCURRENT_STREAMS (§5.1.2; 100 until its SETTINGS
//! arrive), response heads checked as §8.3.2 and §8.1.1 require (one
//! `:status`, interim 1xx heads skipped, content-length against DATA),
//! trailers, both flow controls (§5.2, §6.9: windows credited back as the
//! caller reads), PING, and GOAWAY: streams above its last stream id were
//! not processed and are safe to send again elsewhere (§6.8). A peer that
//! floods control frames, empty frames or header blocks is cut off as the
//! server side does.

use super::conn::{ConnError, Read, StreamMap};
use super::frame::{self, setting, ErrorCode, Frame, FrameError, Head, HEAD_LEN};
use super::hpack::{Decoder, Encoder};
use super::request::{lowercase_token, trailers_ok, valid_value};
use super::{Span, PREFACE};

/// This endpoint's settings and limits toward upstreams.
#[derive(Clone, Copy, Debug)]
pub struct ClientSettings {
    pub initial_stream_window: u32,
    pub initial_connection_window: u32,
    pub max_header_list_size: u32,
    /// One header block's bytes across HEADERS and CONTINUATION.
    pub max_header_block: usize,
    /// Control frames queued and not yet written: past this the peer is
    /// flooding.
    pub max_queued_control: u32,
    /// Frames in a row with an empty payload that end nothing.
    pub max_empty_frames: u32,
}

impl Default for ClientSettings {
    /// Envoy's defaults where it has one (as the server side's).
    fn default() -> ClientSettings {
        ClientSettings {
            initial_stream_window: 256 * 1024,
            initial_connection_window: 1024 * 1024,
            max_header_list_size: 60 * 1024,
            max_header_block: 64 * 1024,
            max_queued_control: 1000,
            max_empty_frames: 1,
        }
    }
}

/// How a stream ended before its answer was whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reset {
    pub code: ErrorCode,
    /// The peer reset it (RST_STREAM), rather than us or the connection.
    pub remote: bool,
    /// The peer did not process it (REFUSED_STREAM, or above a GOAWAY's
    /// last stream id): safe to send again, anywhere (§8.7).
    pub unprocessed: bool,
}

/// Why no stream can be opened now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotOpened {
    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS is reached.
    Full,
    /// The connection is going away (GOAWAY either way, failed, or out of
    /// stream identifiers): no stream will open on it again.
    Closing,
}

/// A response head: the status and the regular fields, as spans of one
/// buffer (no per-field allocation).
#[derive(Debug, Default)]
pub struct ResponseHead {
    pub status: u16,
    buf: Vec<u8>,
    fields: Vec<(Span, Span, bool)>,
}

impl ResponseHead {
    /// The regular fields in order, names lowercase.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.fields
            .iter()
            .map(|(n, v, _)| (n.get(&self.buf), v.get(&self.buf)))
    }

    /// The fields with their never-indexed marks (HPACK §7.1.3).
    pub fn marked_fields(&self) -> impl Iterator<Item = (&[u8], &[u8], bool)> + '_ {
        self.fields
            .iter()
            .map(|(n, v, never)| (n.get(&self.buf), v.get(&self.buf), *never))
    }

    /// The first value of `name` (lowercase).
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.fields().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// Collects a response head's fields, checking them (§8.3.2, §8.2).
struct HeadBuilder {
    head: ResponseHead,
    list_size: usize,
    max_list_size: usize,
    status_seen: bool,
    error: Option<&'static str>,
}

impl HeadBuilder {
    fn new(max_list_size: u32, block_len: usize) -> HeadBuilder {
        HeadBuilder {
            head: ResponseHead {
                status: 0,
                buf: Vec::with_capacity((block_len * 4).clamp(128, 4096)),
                fields: Vec::with_capacity(8),
            },
            list_size: 0,
            max_list_size: max_list_size as usize,
            status_seen: false,
            error: None,
        }
    }

    fn field(&mut self, name: &[u8], value: &[u8], never: bool) {
        if self.error.is_some() {
            return;
        }
        self.list_size = self.list_size.saturating_add(name.len() + value.len() + 32);
        if self.list_size > self.max_list_size {
            self.error = Some("response head over the header list limit");
            return;
        }
        if !valid_value(value) {
            self.error = Some("field value with NUL, CR, LF or edge whitespace");
            return;
        }
        if name == b":status" {
            if self.status_seen || !self.head.fields.is_empty() {
                self.error = Some("duplicate or late :status");
                return;
            }
            self.status_seen = true;
            self.head.status = match value {
                [a @ b'1'..=b'9', b @ b'0'..=b'9', c @ b'0'..=b'9'] => {
                    u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
                }
                _ => {
                    self.error = Some(":status is not three digits");
                    return;
                }
            };
            return;
        }
        if name.starts_with(b":") {
            self.error = Some("pseudo-header other than :status in a response");
            return;
        }
        if !lowercase_token(name) {
            self.error = Some("field name not a lowercase token");
            return;
        }
        if matches!(
            name,
            b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade"
        ) {
            self.error = Some("connection-specific field");
            return;
        }
        let h = &mut self.head;
        let n = Span::push(&mut h.buf, name);
        let v = Span::push(&mut h.buf, value);
        h.fields.push((n, v, never));
    }

    fn finish(self) -> Result<ResponseHead, &'static str> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if !self.status_seen {
            return Err("no :status");
        }
        Ok(self.head)
    }
}

#[derive(Debug, Default)]
struct Stream {
    /// The final response head, not yet taken.
    head: Option<ResponseHead>,
    /// The final head came (later HEADERS are trailers).
    head_seen: bool,
    /// Received DATA not yet read.
    body: Vec<u8>,
    recv_end: bool,
    trailers: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    recv_window: i64,
    /// Read by the caller and not yet credited back with WINDOW_UPDATE.
    unacked: u32,
    /// content-length, when the answer has a body that must match it.
    expected_len: Option<u64>,
    received: u64,
    /// The request was HEAD: the answer has no body, whatever it says.
    head_request: bool,
    send_window: i64,
    send_end: bool,
    reset: Option<Reset>,
}

impl Stream {
    /// Counts against the peer's SETTINGS_MAX_CONCURRENT_STREAMS.
    fn open(&self) -> bool {
        self.reset.is_none() && !(self.recv_end && self.send_end)
    }
}

/// A header block being received.
struct Block {
    stream: u32,
    end_stream: bool,
    buf: Vec<u8>,
}

pub struct ClientConn {
    cfg: ClientSettings,
    out: Vec<u8>,
    settings_seen: bool,
    decoder: Decoder,
    encoder: Encoder,
    peer_initial_window: u32,
    peer_max_frame: u32,
    peer_max_streams: u32,
    send_window: i64,
    recv_window: i64,
    recv_unacked: u32,
    streams: StreamMap<Stream>,
    /// Streams open either way (what the peer's limit counts).
    active: u32,
    /// The next stream identifier to use.
    next_id: u32,
    block: Option<Block>,
    /// GOAWAY received: the last stream the peer will process.
    goaway: Option<u32>,
    /// We sent GOAWAY (closing): no new streams.
    closing: bool,
    failed: Option<ConnError>,
    queued_control: u32,
    empty_frames: u32,
    /// Streams something happened to since the caller last asked.
    touched: Vec<u32>,
    /// The connection's send window opened: every writer may go on.
    window_opened: bool,
}

/// The peer's stream limit until its SETTINGS say otherwise (RFC 9113
/// §6.5.2 recommends no less; nghttp2 and Envoy assume as much).
const ASSUMED_MAX_STREAMS: u32 = 100;

/// The highest stream identifier (§5.1.1).
const MAX_STREAM_ID: u32 = (1 << 31) - 1;

impl ClientConn {
    /// A connection whose preface, SETTINGS and connection window update
    /// are queued at once (§3.4: requests may follow without waiting for
    /// the server's SETTINGS).
    pub fn new(cfg: ClientSettings) -> ClientConn {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(PREFACE);
        frame::write_settings(
            &mut out,
            &[
                (setting::ENABLE_PUSH, 0),
                (setting::INITIAL_WINDOW_SIZE, cfg.initial_stream_window),
                (setting::MAX_HEADER_LIST_SIZE, cfg.max_header_list_size),
            ],
        );
        let conn_window = cfg
            .initial_connection_window
            .clamp(frame::DEFAULT_WINDOW, frame::MAX_WINDOW);
        if conn_window > frame::DEFAULT_WINDOW {
            frame::write_window_update(&mut out, 0, conn_window - frame::DEFAULT_WINDOW);
        }
        ClientConn {
            cfg,
            out,
            settings_seen: false,
            decoder: Decoder::new(4096),
            encoder: Encoder::new(),
            peer_initial_window: frame::DEFAULT_WINDOW,
            peer_max_frame: frame::DEFAULT_MAX_FRAME_SIZE,
            peer_max_streams: ASSUMED_MAX_STREAMS,
            send_window: i64::from(frame::DEFAULT_WINDOW),
            recv_window: i64::from(conn_window),
            recv_unacked: 0,
            streams: StreamMap::default(),
            active: 0,
            next_id: 1,
            block: None,
            goaway: None,
            closing: false,
            failed: None,
            queued_control: 0,
            empty_frames: 0,
            touched: Vec::new(),
            window_opened: false,
        }
    }

    /// Bytes to write to the peer; the caller drains what it wrote and then
    /// calls [`ClientConn::written`].
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// `out` was written out: control frames no longer count as queued.
    pub fn written(&mut self) {
        if self.out.is_empty() {
            self.queued_control = 0;
        }
    }

    /// Whether a stream may be opened now, and if not, why.
    pub fn can_open(&self) -> Result<(), NotOpened> {
        if self.failed.is_some()
            || self.goaway.is_some()
            || self.closing
            || self.next_id > MAX_STREAM_ID
        {
            return Err(NotOpened::Closing);
        }
        if self.active >= self.peer_max_streams {
            return Err(NotOpened::Full);
        }
        Ok(())
    }

    /// No stream will ever open on it again.
    pub fn is_closing(&self) -> bool {
        matches!(self.can_open(), Err(NotOpened::Closing))
    }

    /// Streams open either way.
    pub fn active(&self) -> u32 {
        self.active
    }

    /// Opens a stream with a request head: `fields` encodes the
    /// pseudo-headers and fields with the connection's HPACK encoder.
    /// `head_request`: the method is HEAD (the answer has no body).
    pub fn open(
        &mut self,
        end_stream: bool,
        head_request: bool,
        fields: impl FnOnce(&mut Encoder, &mut Vec<u8>),
    ) -> Result<u32, NotOpened> {
        self.can_open()?;
        let id = self.next_id;
        self.next_id += 2;
        let at = frame::reserve_head(&mut self.out);
        self.encoder.begin(&mut self.out);
        fields(&mut self.encoder, &mut self.out);
        frame::finish_headers(&mut self.out, at, id, end_stream, self.peer_max_frame);
        self.streams.insert(
            id,
            Stream {
                recv_window: i64::from(self.cfg.initial_stream_window),
                send_window: i64::from(self.peer_initial_window),
                send_end: end_stream,
                head_request,
                ..Stream::default()
            },
        );
        self.active += 1;
        Ok(id)
    }

    /// Reads what it can of `input`, whole frames only. Returns how many
    /// bytes it used (a frame cut short is left for the next call). After
    /// an error nothing more is read; GOAWAY is in `out`.
    pub fn recv(&mut self, input: &[u8]) -> Result<usize, ConnError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mut used = 0;
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
            // We process no stream the peer opens: there are none.
            frame::write_goaway(&mut self.out, 0, code, reason.as_bytes());
            self.failed = Some(e);
            let how = Reset {
                code,
                remote: false,
                unprocessed: false,
            };
            self.end_streams(how, |_| true);
        }
        e
    }

    /// Ends the open streams `which` picks as `how`.
    fn end_streams(&mut self, how: Reset, which: impl Fn(u32) -> bool) {
        let mut unread = 0;
        for (&id, s) in self.streams.iter_mut() {
            if which(id) && s.open() {
                s.reset = Some(how);
                self.active = self.active.saturating_sub(1);
                unread += s.body.len() as u32;
                s.body = Vec::new();
                self.touched.push(id);
            }
        }
        self.credit_connection(unread);
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

    /// Marks the stream reset; what it had received and nobody will read
    /// is credited back to the connection.
    fn mark_reset(&mut self, id: u32, r: Reset) {
        let mut unread = 0;
        if let Some(s) = self.streams.get_mut(&id) {
            if s.reset.is_none() {
                if s.open() {
                    self.active = self.active.saturating_sub(1);
                }
                s.reset = Some(r);
            }
            unread = s.body.len() as u32;
            s.body = Vec::new();
            self.touched.push(id);
        }
        self.credit_connection(unread);
    }

    /// RST_STREAM from us.
    fn reset_stream(&mut self, id: u32, code: ErrorCode) -> Result<(), ConnError> {
        frame::write_rst_stream(&mut self.out, id, code);
        self.mark_reset(
            id,
            Reset {
                code,
                remote: false,
                unprocessed: false,
            },
        );
        self.control_queued()
    }

    /// A stream this side opened once (it may be gone from the map).
    fn opened(&self, id: u32) -> bool {
        id % 2 == 1 && id < self.next_id
    }

    fn frame(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        let f = match frame::parse(head, payload) {
            Ok(f) => f,
            Err(FrameError::Connection(code, why)) => return Err(self.fail(code, why)),
            Err(FrameError::Stream(id, code, _)) => {
                if self.block.is_some() {
                    return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "frame inside a header block"));
                }
                if !self.opened(id) {
                    return Err(self.fail(code, "stream error on an idle stream"));
                }
                return self.reset_stream(id, code);
            }
        };
        if !self.settings_seen {
            // §3.4: the server's preface is a SETTINGS frame.
            if !matches!(f, Frame::Settings { ack: false, .. }) {
                return Err(self.fail(
                    ErrorCode::PROTOCOL_ERROR,
                    "server preface not a SETTINGS frame",
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
        let ends_something = matches!(
            f,
            Frame::Settings { .. }
                | Frame::Unknown { .. }
                | Frame::Data {
                    end_stream: true,
                    ..
                }
                | Frame::Headers {
                    end_stream: true,
                    ..
                }
                | Frame::Continuation {
                    end_headers: true,
                    ..
                }
        );
        if payload.is_empty() && !ends_something {
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
            Frame::GoAway { last_stream, .. } => {
                // Streams above `last_stream` were not processed: they end
                // now, safe to send again; those at or below finish.
                let last = self.goaway.map_or(last_stream, |l| l.min(last_stream));
                self.goaway = Some(last);
                let refused = Reset {
                    code: ErrorCode::REFUSED_STREAM,
                    remote: true,
                    unprocessed: true,
                };
                self.end_streams(refused, |id| id > last);
                // Openers waiting for room go elsewhere.
                self.window_opened = true;
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
                    return self.closed_stream(stream, "WINDOW_UPDATE on an idle stream");
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
                    return self.closed_stream(stream, "RST_STREAM on an idle stream");
                };
                if s.recv_end && s.reset.is_none() {
                    // The answer is whole: the peer only stops the request
                    // body it no longer wants (§8.1: NO_ERROR after a
                    // complete response, which the client must not
                    // discard). What is left of the answer is still read.
                    if !s.send_end {
                        s.send_end = true;
                        self.active = self.active.saturating_sub(1);
                        self.window_opened = true;
                    }
                    self.touched.push(stream);
                    return Ok(());
                }
                self.mark_reset(
                    stream,
                    Reset {
                        code,
                        remote: true,
                        unprocessed: code == ErrorCode::REFUSED_STREAM,
                    },
                );
                Ok(())
            }
            Frame::Priority { .. } => Ok(()),
            Frame::Headers {
                stream,
                fragment,
                end_stream,
                end_headers,
                ..
            } => {
                if !self.opened(stream) {
                    // §8.4: no push (we disabled it); §5.1.1: no stream the
                    // client did not open.
                    return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "HEADERS on an idle stream"));
                }
                if fragment.len() > self.cfg.max_header_block {
                    return Err(self.fail(ErrorCode::ENHANCE_YOUR_CALM, "header block too large"));
                }
                if end_headers {
                    return self.block_done(stream, fragment, end_stream);
                }
                self.block = Some(Block {
                    stream,
                    end_stream,
                    buf: fragment.to_vec(),
                });
                Ok(())
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
                    return self.block_done(b.stream, &b.buf, b.end_stream);
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

    /// A frame for a stream not in the map: one never opened is a
    /// connection error (§5.1), a closed one is ignored.
    fn closed_stream(&mut self, stream: u32, what: &'static str) -> Result<(), ConnError> {
        if !self.opened(stream) {
            return Err(self.fail(ErrorCode::PROTOCOL_ERROR, what));
        }
        Ok(())
    }

    fn settings(&mut self, params: &[u8]) -> Result<(), ConnError> {
        for (id, value) in frame::settings(params) {
            match id {
                setting::HEADER_TABLE_SIZE => self.encoder.set_max_table_size(value as usize),
                setting::ENABLE_PUSH if value != 0 => {
                    // §6.5.2: a server may only say 0.
                    return Err(self.fail(
                        ErrorCode::PROTOCOL_ERROR,
                        "SETTINGS_ENABLE_PUSH 1 from a server",
                    ));
                }
                setting::MAX_CONCURRENT_STREAMS => {
                    self.peer_max_streams = value;
                    self.window_opened = true;
                }
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

    fn block_done(&mut self, stream: u32, block: &[u8], end_stream: bool) -> Result<(), ConnError> {
        let (head_seen, usable) = match self.streams.get(&stream) {
            Some(s) => (s.head_seen, s.reset.is_none()),
            None => (false, false),
        };
        if head_seen {
            // Trailers: regular fields only, and they end the stream (§8.1).
            let mut fields = Vec::new();
            let mut ok = end_stream;
            let mut size = 0usize;
            let r = self.decoder.decode(block, |n, v| {
                ok &= trailers_ok(n, v);
                size = size.saturating_add(n.len() + v.len() + 32);
                if usable {
                    fields.push((n.to_vec(), v.to_vec()));
                }
                Ok::<(), ()>(())
            });
            if r.is_err() {
                return Err(self.fail(ErrorCode::COMPRESSION_ERROR, "HPACK"));
            }
            if !usable {
                return Ok(());
            }
            if self.streams.get(&stream).is_some_and(|s| s.recv_end) {
                return self.reset_stream(stream, ErrorCode::STREAM_CLOSED);
            }
            if !ok || size > self.cfg.max_header_list_size as usize {
                return self.reset_stream(stream, ErrorCode::PROTOCOL_ERROR);
            }
            return self.end_of_body(stream, Some(fields));
        }
        let mut b = HeadBuilder::new(self.cfg.max_header_list_size, block.len());
        let r = self.decoder.decode_marked(block, |n, v, never| {
            b.field(n, v, never);
            Ok::<(), ()>(())
        });
        if r.is_err() {
            return Err(self.fail(ErrorCode::COMPRESSION_ERROR, "HPACK"));
        }
        if !usable {
            // A stream we reset or let go: decoded (HPACK stays in step),
            // nothing more.
            return Ok(());
        }
        let head = match b.finish() {
            Ok(h) => h,
            Err(_) => return self.reset_stream(stream, ErrorCode::PROTOCOL_ERROR),
        };
        if (100..200).contains(&head.status) {
            // Interim answers are not passed on; 101 does not exist in
            // HTTP/2 (§8.6), and an interim head cannot end the stream.
            if head.status == 101 || end_stream {
                return self.reset_stream(stream, ErrorCode::PROTOCOL_ERROR);
            }
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            return Ok(());
        };
        // §8.1.1: DATA must add up to content-length, unless the answer
        // has no body by definition (HEAD, 204, 304).
        let bodiless = s.head_request || matches!(head.status, 204 | 304);
        s.expected_len = head
            .get(b"content-length")
            .filter(|_| !bodiless)
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
        s.head_seen = true;
        s.head = Some(head);
        self.touched.push(stream);
        if end_stream {
            return self.end_of_body(stream, None);
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
        let Some(s) = self.streams.get_mut(&stream) else {
            if !self.opened(stream) {
                return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "DATA on an idle stream"));
            }
            // A stream we let go: what was in flight is ignored (§6.4).
            self.credit_connection(flow_len);
            return Ok(());
        };
        if s.reset.is_some() {
            self.credit_connection(flow_len);
            return Ok(());
        }
        if s.recv_end || !s.head_seen {
            let code = if s.recv_end {
                ErrorCode::STREAM_CLOSED
            } else {
                // §8.1: DATA before the response head.
                ErrorCode::PROTOCOL_ERROR
            };
            self.credit_connection(flow_len);
            return self.reset_stream(stream, code);
        }
        s.recv_window -= i64::from(flow_len);
        if s.recv_window < 0 {
            self.credit_connection(flow_len);
            return self.reset_stream(stream, ErrorCode::FLOW_CONTROL_ERROR);
        }
        s.received += data.len() as u64;
        let too_much =
            s.expected_len.is_some_and(|n| s.received > n) || (s.head_request && !data.is_empty());
        if too_much {
            self.credit_connection(flow_len);
            return self.reset_stream(stream, ErrorCode::PROTOCOL_ERROR);
        }
        // Padding is credited back at once, data as it is read.
        let padding = flow_len - data.len() as u32;
        s.body.extend_from_slice(data);
        s.unacked += padding;
        self.touched.push(stream);
        self.credit_connection(padding);
        if end_stream {
            return self.end_of_body(stream, None);
        }
        Ok(())
    }

    fn end_of_body(
        &mut self,
        stream: u32,
        trailers: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    ) -> Result<(), ConnError> {
        let Some(s) = self.streams.get_mut(&stream) else {
            return Ok(());
        };
        if s.expected_len.is_some_and(|n| n != s.received) {
            return self.reset_stream(stream, ErrorCode::PROTOCOL_ERROR);
        }
        s.recv_end = true;
        s.trailers = trailers;
        self.touched.push(stream);
        if s.send_end && s.reset.is_none() {
            self.active = self.active.saturating_sub(1);
            self.window_opened = true;
        }
        Ok(())
    }

    /// Credits `n` bytes back to the connection window, with a
    /// WINDOW_UPDATE once half the window is owed (not one per frame).
    fn credit_connection(&mut self, n: u32) {
        if self.failed.is_some() {
            return;
        }
        self.recv_unacked += n;
        let window = self
            .cfg
            .initial_connection_window
            .clamp(frame::DEFAULT_WINDOW, frame::MAX_WINDOW);
        if self.recv_unacked >= window / 2 {
            frame::write_window_update(&mut self.out, 0, self.recv_unacked);
            self.recv_window += i64::from(self.recv_unacked);
            self.recv_unacked = 0;
        }
    }

    /// The final response head (once), when it has come.
    pub fn take_head(&mut self, id: u32) -> Option<ResponseHead> {
        self.streams.get_mut(&id)?.head.take()
    }

    /// Whether the final head has come (taken or not).
    pub fn head_seen(&self, id: u32) -> bool {
        self.streams.get(&id).is_some_and(|s| s.head_seen)
    }

    /// How the stream ended early, if it did.
    pub fn reset_of(&self, id: u32) -> Option<Reset> {
        match self.streams.get(&id) {
            Some(s) => s.reset,
            None => Some(Reset {
                code: ErrorCode::STREAM_CLOSED,
                remote: false,
                unprocessed: false,
            }),
        }
    }

    /// Moves the stream's received data into `buf`, crediting its window
    /// back (a WINDOW_UPDATE once half of it is owed).
    pub fn read(&mut self, id: u32, buf: &mut Vec<u8>) -> Read {
        let Some(s) = self.streams.get_mut(&id) else {
            return Read::Reset(ErrorCode::STREAM_CLOSED);
        };
        if let Some(r) = s.reset {
            return Read::Reset(r.code);
        }
        if !s.body.is_empty() {
            let n = s.body.len();
            if buf.is_empty() {
                std::mem::swap(buf, &mut s.body);
            } else {
                buf.append(&mut s.body);
            }
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

    /// The answer's trailers, after [`Read::End`].
    pub fn take_trailers(&mut self, id: u32) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        self.streams.get_mut(&id)?.trailers.take()
    }

    /// Nothing more to read: END_STREAM came, all data before it was read,
    /// and there were no trailers.
    pub fn recv_done(&self, id: u32) -> bool {
        self.streams
            .get(&id)
            .is_some_and(|s| s.recv_end && s.body.is_empty() && s.trailers.is_none())
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

    /// Whether the stream can still send (not reset, END_STREAM not sent).
    pub fn can_send(&self, id: u32) -> bool {
        self.streams
            .get(&id)
            .is_some_and(|s| s.reset.is_none() && !s.send_end)
    }

    /// Sends as much of `data` as the windows allow (in frames of the
    /// peer's maximum size); END_STREAM with the last byte if `end` and all
    /// of it went. Returns the bytes sent.
    pub fn send_data(&mut self, id: u32, data: &[u8], end: bool) -> usize {
        if !self.can_send(id) {
            return 0;
        }
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

    /// Request trailers (END_STREAM).
    pub fn send_trailers(&mut self, id: u32, fields: impl FnOnce(&mut Encoder, &mut Vec<u8>)) {
        if !self.can_send(id) {
            return;
        }
        let at = frame::reserve_head(&mut self.out);
        self.encoder.begin(&mut self.out);
        fields(&mut self.encoder, &mut self.out);
        frame::finish_headers(&mut self.out, at, id, true, self.peer_max_frame);
        self.send_ended(id);
    }

    fn send_ended(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.send_end = true;
            if s.recv_end && s.reset.is_none() {
                self.active = self.active.saturating_sub(1);
                self.window_opened = true;
            }
        }
    }

    /// Resets the stream (the caller gave up on it).
    pub fn reset(&mut self, id: u32, code: ErrorCode) {
        if self.streams.get(&id).is_some_and(Stream::open) && self.failed.is_none() {
            let _ = self.reset_stream(id, code);
        }
    }

    /// The caller is done with the stream: its state goes; a stream still
    /// open either way is reset (CANCEL), and unread data is credited back
    /// to the connection.
    pub fn close(&mut self, id: u32) {
        self.reset(id, ErrorCode::CANCEL);
        if let Some(s) = self.streams.remove(&id) {
            if s.open() {
                self.active = self.active.saturating_sub(1);
            }
            self.credit_connection(s.body.len() as u32);
        }
    }

    /// Starts a graceful close: no new streams; GOAWAY tells the peer so.
    pub fn goaway(&mut self) {
        if !self.closing && self.failed.is_none() {
            self.closing = true;
            frame::write_goaway(&mut self.out, 0, ErrorCode::NO_ERROR, b"");
        }
    }

    /// Hands `wake` every stream touched since the last call; true if the
    /// connection's window opened or room for streams was made, which
    /// concerns every writer and opener.
    pub fn drain_touched(&mut self, mut wake: impl FnMut(u32)) -> bool {
        for id in self.touched.drain(..) {
            wake(id);
        }
        std::mem::take(&mut self.window_opened)
    }

    /// Gives back what a burst grew (no stream open, nothing queued).
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

    /// The peer's GOAWAY: the last stream it processes.
    pub fn goaway_received(&self) -> Option<u32> {
        self.goaway
    }
}

#[cfg(test)]
mod tests;
