//! What both ends of an HTTP/2 connection do alike, without I/O: the
//! output, HPACK both ways, the SETTINGS exchange (§6.5), PING, both flow
//! controls (§5.2, §6.9: windows credited back as the caller reads), header
//! blocks across CONTINUATION frames (§4.3, §6.10), the stream states both
//! sides keep (§5.1), content-length against DATA (§8.1.1), and the limits
//! against the published floods: a header block's size (CONTINUATION
//! flood), control frames queued while the peer does not read
//! (SETTINGS/PING/RST floods), and frames with empty payloads.
//!
//! [`super::conn`] (the server side) and [`super::client_conn`] (the client
//! side) are each a [`Link`] and what only their side does: who opens
//! streams, what a head must be, what GOAWAY means. A `Link` dereferences
//! from both, so the stream calls the drivers make (`read`, `send_data`,
//! `capacity`, ...) are the same code for both.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::frame::{self, setting, ErrorCode, Frame, FrameError, Head, HEAD_LEN};
use super::hpack::{Decoder, Encoder};
use super::PREFACE;

/// This endpoint's settings and limits (the `[http2]` config), either side.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Streams the peer may open at once (SETTINGS_MAX_CONCURRENT_STREAMS,
    /// advertised and enforced by the server side; a client side lets its
    /// peer open none, push being disabled).
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
    /// The body ended (trailers, if any, from [`Link::take_trailers`]).
    End,
    /// Nothing yet.
    Pending,
    /// The stream was reset (by the peer, by us, or with the connection).
    Reset(ErrorCode),
}

/// How a stream ended before both sides were done with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reset {
    pub code: ErrorCode,
    /// The peer reset it (RST_STREAM), rather than us or the connection.
    pub remote: bool,
    /// The peer did not process it (REFUSED_STREAM, or above a GOAWAY's
    /// last stream id): safe to send again, anywhere (§8.7).
    pub unprocessed: bool,
}

impl Reset {
    /// Reset by this side, or with the connection.
    pub(super) fn local(code: ErrorCode) -> Reset {
        Reset {
            code,
            remote: false,
            unprocessed: false,
        }
    }
}

/// Which end of the connection this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    Server,
    Client,
}

/// Trailer fields, names lowercase.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// One stream's state, as both sides keep it; `part` is what only one side
/// keeps (its head, mostly).
#[derive(Debug, Default)]
pub(super) struct Stream<P> {
    pub part: P,
    /// Received DATA not yet read.
    pub body: Vec<u8>,
    /// END_STREAM received.
    pub recv_end: bool,
    pub trailers: Option<Fields>,
    /// What the peer may still send on this stream.
    pub recv_window: i64,
    /// Read by the caller and not yet credited back with WINDOW_UPDATE.
    pub unacked: u32,
    /// content-length, when the body must match one, and DATA received.
    pub expected_len: Option<u64>,
    pub received: u64,
    pub send_window: i64,
    /// END_STREAM sent.
    pub send_end: bool,
    pub reset: Option<Reset>,
    /// Its writer waits for the connection's send window
    /// ([`Link::wait_for_window`]).
    pub window_wait: bool,
}

impl<P> Stream<P> {
    /// Open either way: counts against SETTINGS_MAX_CONCURRENT_STREAMS.
    pub fn open(&self) -> bool {
        self.reset.is_none() && !(self.recv_end && self.send_end)
    }
}

/// A header block as HEADERS announced it.
#[derive(Clone, Copy, Debug)]
pub(super) struct BlockOf {
    pub stream: u32,
    pub end_stream: bool,
    /// A trailer block (the stream's head came earlier), where the side
    /// knows it when the block starts.
    pub trailers: bool,
    /// HEADERS made the stream depend on itself (§5.3.1).
    pub self_dependent: bool,
}

/// A header block being received across CONTINUATION frames.
pub(super) struct Block {
    pub of: BlockOf,
    pub buf: Vec<u8>,
}

/// What [`Link::frame`] leaves to the caller's side.
pub(super) enum Step<'p> {
    /// Handled.
    Done,
    /// GOAWAY, RST_STREAM, PRIORITY, HEADERS or DATA: the side's own.
    Frame(Frame<'p>),
    /// A header block completed by its last CONTINUATION.
    Block(Block),
}

/// A map keyed by stream id. The ids are small, distinct and few (at most
/// `max_concurrent_streams` live, and opened in increasing order), so
/// SipHash's protection against chosen keys buys nothing here and cost ~1 %
/// of the core on h2-keepalive: a multiply spreads them over the table
/// instead.
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
        // Ids of one side have one parity: halved, consecutive ones are
        // consecutive numbers, which an odd multiplier keeps distinct in
        // the low bits (the bucket) while mixing the high ones (the
        // table's tag byte).
        self.0 = u64::from(id >> 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Either side's connection state, apart from what only one side keeps.
pub struct Link<P> {
    pub(super) cfg: Settings,
    role: Role,
    out: Vec<u8>,
    settings_seen: bool,
    decoder: Decoder,
    encoder: Encoder,
    peer_initial_window: u32,
    peer_max_frame: u32,
    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS: the streams this side
    /// may open (100 until its SETTINGS say otherwise: RFC 9113 §6.5.2
    /// recommends no less, and nghttp2 and Envoy assume as much).
    pub(super) peer_max_streams: u32,
    send_window: i64,
    pub(super) recv_window: i64,
    pub(super) recv_unacked: u32,
    pub(super) streams: StreamMap<Stream<P>>,
    /// Streams open either way (what the limits count).
    pub(super) active: u32,
    /// The highest stream the peer opened (a GOAWAY of ours names it).
    pub(super) last_peer_stream: u32,
    /// The next stream identifier this side would open.
    pub(super) next_own_id: u32,
    block: Option<Block>,
    pub(super) failed: Option<ConnError>,
    queued_control: u32,
    empty_frames: u32,
    /// Streams something happened to since the caller last asked (data,
    /// the end of the body, a reset, a window opened): their readers and
    /// writers may go on. A stream touched twice in a row is listed once
    /// (its head and its DATA in one read); other duplicates are possible.
    touched: Vec<u32>,
    /// Streams whose writers wait for the connection's send window: a
    /// connection WINDOW_UPDATE touches these, not every stream.
    window_waiters: Vec<u32>,
    /// Something concerns every stream: the peer's initial stream window
    /// grew (every send window with it).
    all_touched: bool,
}

/// What the peer may send before any WINDOW_UPDATE, on the connection and
/// on each stream (§6.9.2).
const INITIAL: u32 = frame::DEFAULT_WINDOW;

/// The highest stream identifier (§5.1.1).
pub(super) const MAX_STREAM_ID: u32 = (1 << 31) - 1;

/// Lists stream `id` as touched, once if it was also the last one listed.
fn touch(touched: &mut Vec<u32>, id: u32) {
    if touched.last() != Some(&id) {
        touched.push(id);
    }
}

impl<P: Default> Link<P> {
    /// A connection whose first words are queued at once: the client's
    /// preface, then either side's SETTINGS (push disabled) and the
    /// connection window's update (§3.4: neither side waits for the
    /// other's).
    pub(super) fn new(cfg: Settings, role: Role) -> Link<P> {
        let mut out = Vec::with_capacity(128);
        match role {
            Role::Server => frame::write_settings(
                &mut out,
                &[
                    (setting::MAX_CONCURRENT_STREAMS, cfg.max_concurrent_streams),
                    (setting::INITIAL_WINDOW_SIZE, cfg.initial_stream_window),
                    (setting::MAX_HEADER_LIST_SIZE, cfg.max_header_list_size),
                    (setting::ENABLE_PUSH, 0),
                ],
            ),
            Role::Client => {
                out.extend_from_slice(PREFACE);
                frame::write_settings(
                    &mut out,
                    &[
                        (setting::ENABLE_PUSH, 0),
                        (setting::INITIAL_WINDOW_SIZE, cfg.initial_stream_window),
                        (setting::MAX_HEADER_LIST_SIZE, cfg.max_header_list_size),
                    ],
                );
            }
        }
        let conn_window = connection_window(&cfg);
        if conn_window > INITIAL {
            frame::write_window_update(&mut out, 0, conn_window - INITIAL);
        }
        Link {
            cfg,
            role,
            out,
            settings_seen: false,
            decoder: Decoder::new(4096),
            encoder: Encoder::new(),
            peer_initial_window: INITIAL,
            peer_max_frame: frame::DEFAULT_MAX_FRAME_SIZE,
            peer_max_streams: 100,
            send_window: i64::from(INITIAL),
            recv_window: i64::from(conn_window),
            recv_unacked: 0,
            streams: StreamMap::default(),
            active: 0,
            last_peer_stream: 0,
            next_own_id: match role {
                Role::Server => 2,
                Role::Client => 1,
            },
            block: None,
            failed: None,
            queued_control: 0,
            empty_frames: 0,
            touched: Vec::new(),
            window_waiters: Vec::new(),
            all_touched: false,
        }
    }

    /// A stream as it starts, either side: its windows from both sides'
    /// settings.
    pub(super) fn new_stream(&self, part: P) -> Stream<P> {
        Stream {
            part,
            recv_window: i64::from(self.cfg.initial_stream_window),
            send_window: i64::from(self.peer_initial_window),
            ..Stream::default()
        }
    }
}

/// The connection's receive window we advertise.
fn connection_window(cfg: &Settings) -> u32 {
    cfg.initial_connection_window
        .clamp(INITIAL, frame::MAX_WINDOW)
}

impl<P> Link<P> {
    /// Bytes to write to the peer. The caller drains what it wrote and then
    /// calls [`Link::written`].
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// `out` was written out: control frames no longer count as queued.
    pub fn written(&mut self) {
        if self.out.is_empty() {
            self.queued_control = 0;
        }
    }

    /// The connection failed (GOAWAY queued in `out`).
    pub fn failed(&self) -> Option<ConnError> {
        self.failed
    }

    /// Streams open either way.
    pub fn active(&self) -> u32 {
        self.active
    }

    /// The next whole frame of `input` from `*used` on, if it is all there
    /// (a frame cut short is left for the next read); `*used` moves past
    /// it. After an error nothing more is read; GOAWAY is in `out`.
    pub(super) fn next_frame<'i>(
        &mut self,
        input: &'i [u8],
        used: &mut usize,
    ) -> Result<Option<(Head, &'i [u8])>, ConnError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let Some(head) = Head::peek(&input[*used..]) else {
            return Ok(None);
        };
        if head.len > frame::DEFAULT_MAX_FRAME_SIZE {
            // We never raise SETTINGS_MAX_FRAME_SIZE (§4.2).
            return Err(self.fail(ErrorCode::FRAME_SIZE_ERROR, "frame over 16 KiB"));
        }
        let start = *used + HEAD_LEN;
        let Some(payload) = input.get(start..start + head.len as usize) else {
            return Ok(None);
        };
        *used = start + head.len as usize;
        Ok(Some((head, payload)))
    }

    /// A connection error: GOAWAY (naming the last stream the peer opened:
    /// those below may have been processed), and every open stream ends.
    pub(super) fn fail(&mut self, code: ErrorCode, reason: &'static str) -> ConnError {
        let e = ConnError { code, reason };
        if self.failed.is_none() {
            frame::write_goaway(
                &mut self.out,
                self.last_peer_stream,
                code,
                reason.as_bytes(),
            );
            self.failed = Some(e);
            self.end_streams(Reset::local(code), |_| true);
        }
        e
    }

    /// Ends the open streams `which` picks as `how`; what they received and
    /// nobody will read is credited back.
    pub(super) fn end_streams(&mut self, how: Reset, which: impl Fn(u32) -> bool) {
        let mut unread = 0;
        for (&id, s) in self.streams.iter_mut() {
            if which(id) && s.open() {
                s.reset = Some(how);
                self.active = self.active.saturating_sub(1);
                unread += s.body.len() as u32;
                s.body = Vec::new();
                touch(&mut self.touched, id);
            }
        }
        self.credit_connection(unread);
    }

    pub(super) fn control_queued(&mut self) -> Result<(), ConnError> {
        self.queued_control += 1;
        if self.queued_control > self.cfg.max_queued_control {
            return Err(self.fail(
                ErrorCode::ENHANCE_YOUR_CALM,
                "too many control frames queued (flood)",
            ));
        }
        Ok(())
    }

    /// A stream neither side opened yet (§5.1): frames other than HEADERS
    /// and PRIORITY on it are a connection error.
    pub(super) fn idle(&self, id: u32) -> bool {
        let ours = id % 2 == self.next_own_id % 2;
        if ours {
            id >= self.next_own_id
        } else {
            id > self.last_peer_stream
        }
    }

    /// A frame for a stream not in the map: idle is a connection error,
    /// closed is ignored (§5.1).
    pub(super) fn unknown_stream(
        &mut self,
        stream: u32,
        what: &'static str,
    ) -> Result<(), ConnError> {
        if self.idle(stream) {
            return Err(self.fail(ErrorCode::PROTOCOL_ERROR, what));
        }
        Ok(())
    }

    /// Marks the stream reset; what it had received and nobody will read
    /// is credited back to the connection.
    pub(super) fn mark_reset(&mut self, id: u32, r: Reset) {
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
            touch(&mut self.touched, id);
        }
        self.credit_connection(unread);
    }

    /// RST_STREAM from us.
    pub(super) fn reset_stream(&mut self, id: u32, code: ErrorCode) -> Result<(), ConnError> {
        frame::write_rst_stream(&mut self.out, id, code);
        self.mark_reset(id, Reset::local(code));
        self.control_queued()
    }

    /// Checks a frame as both sides must (its format, the preface's
    /// SETTINGS, header blocks uninterrupted, empty frames) and handles
    /// what both handle alike; the rest is the caller's [`Step`].
    pub(super) fn frame<'p>(
        &mut self,
        head: Head,
        payload: &'p [u8],
    ) -> Result<Step<'p>, ConnError> {
        let f = match frame::parse(head, payload) {
            Ok(f) => f,
            Err(FrameError::Connection(code, why)) => return Err(self.fail(code, why)),
            Err(FrameError::Stream(id, code, why)) => {
                if self.block.is_some() {
                    return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "frame inside a header block"));
                }
                if head.kind != frame::kind::PRIORITY && self.idle(id) {
                    return Err(self.fail(ErrorCode::PROTOCOL_ERROR, why));
                }
                self.reset_stream(id, code)?;
                return Ok(Step::Done);
            }
        };
        if !self.settings_seen {
            // §3.4: either side's preface ends with a SETTINGS frame.
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
                Frame::Continuation { stream, .. } if stream == b.of.stream => {}
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
            Frame::Settings { ack: true, .. } | Frame::Ping { ack: true, .. } => {}
            Frame::Unknown { .. } => {}
            Frame::Settings { ack: false, params } => self.settings(params)?,
            Frame::Ping { ack: false, data } => {
                frame::write_ping(&mut self.out, data, true);
                self.control_queued()?;
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
                if self.send_window > 0 {
                    for id in self.window_waiters.drain(..) {
                        if let Some(s) = self.streams.get_mut(&id) {
                            s.window_wait = false;
                            self.touched.push(id);
                        }
                    }
                }
            }
            Frame::WindowUpdate { stream, increment } => {
                let Some(s) = self.streams.get_mut(&stream) else {
                    self.unknown_stream(stream, "WINDOW_UPDATE on an idle stream")?;
                    return Ok(Step::Done);
                };
                s.send_window += i64::from(increment);
                if s.send_window > i64::from(frame::MAX_WINDOW) {
                    self.reset_stream(stream, ErrorCode::FLOW_CONTROL_ERROR)?;
                } else {
                    touch(&mut self.touched, stream);
                }
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
                    return Ok(Step::Block(self.block.take().expect("checked above")));
                }
            }
            f => return Ok(Step::Frame(f)),
        }
        Ok(Step::Done)
    }

    fn settings(&mut self, params: &[u8]) -> Result<(), ConnError> {
        for (id, value) in frame::settings(params) {
            match id {
                setting::HEADER_TABLE_SIZE => self.encoder.set_max_table_size(value as usize),
                setting::ENABLE_PUSH if value != 0 && self.role == Role::Client => {
                    // §6.5.2: a server may only say 0.
                    return Err(self.fail(
                        ErrorCode::PROTOCOL_ERROR,
                        "SETTINGS_ENABLE_PUSH 1 from a server",
                    ));
                }
                setting::MAX_CONCURRENT_STREAMS => {
                    // Read by openers when they open (nobody waits on a
                    // connection for room: a full one is passed over).
                    self.peer_max_streams = value;
                }
                setting::INITIAL_WINDOW_SIZE => {
                    // §6.9.2: every stream's send window moves by the change.
                    let delta = i64::from(value) - i64::from(self.peer_initial_window);
                    self.peer_initial_window = value;
                    self.all_touched |= delta > 0;
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

    /// The first fragment of a header block the side accepted: true when it
    /// is the whole block (the side decodes `fragment` at once), else it is
    /// kept for the CONTINUATIONs ([`Step::Block`] hands it back).
    pub(super) fn start_block(
        &mut self,
        of: BlockOf,
        fragment: &[u8],
        end_headers: bool,
    ) -> Result<bool, ConnError> {
        if fragment.len() > self.cfg.max_header_block {
            return Err(self.fail(ErrorCode::ENHANCE_YOUR_CALM, "header block too large"));
        }
        if !end_headers {
            self.block = Some(Block {
                of,
                buf: fragment.to_vec(),
            });
        }
        Ok(end_headers)
    }

    /// Decodes a header block with the connection's HPACK decoder (which
    /// must see every block, to stay in step with the peer's encoder).
    /// Err is a COMPRESSION_ERROR, and the connection has failed.
    pub(super) fn decode(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(&[u8], &[u8], bool),
    ) -> Result<(), ConnError> {
        let r = self.decoder.decode_marked(block, |n, v, never| {
            field(n, v, never);
            Ok::<(), ()>(())
        });
        if r.is_err() {
            return Err(self.fail(ErrorCode::COMPRESSION_ERROR, "HPACK"));
        }
        Ok(())
    }

    /// Charges a DATA frame to the connection's receive window: every DATA
    /// frame counts, whatever becomes of its stream (§6.9).
    pub(super) fn charge(&mut self, flow_len: u32) -> Result<(), ConnError> {
        self.recv_window -= i64::from(flow_len);
        if self.recv_window < 0 {
            return Err(self.fail(
                ErrorCode::FLOW_CONTROL_ERROR,
                "DATA beyond the connection window",
            ));
        }
        Ok(())
    }

    /// DATA (already charged) for a stream the side found open to it: the
    /// stream's window, content-length, the body, END_STREAM.
    pub(super) fn take_data(
        &mut self,
        stream: u32,
        data: &[u8],
        end_stream: bool,
        flow_len: u32,
    ) -> Result<(), ConnError> {
        let Some(s) = self.streams.get_mut(&stream) else {
            self.credit_connection(flow_len);
            return Ok(());
        };
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
        // Padding is credited back at once, data as it is read.
        let padding = flow_len - data.len() as u32;
        s.body.extend_from_slice(data);
        s.unacked += padding;
        touch(&mut self.touched, stream);
        self.credit_connection(padding);
        if end_stream {
            return self.end_of_body(stream, None);
        }
        Ok(())
    }

    /// END_STREAM received (with trailers, or on DATA or a head): the body
    /// must have been as long as content-length said (§8.1.1).
    pub(super) fn end_of_body(
        &mut self,
        stream: u32,
        trailers: Option<Fields>,
    ) -> Result<(), ConnError> {
        let Some(s) = self.streams.get_mut(&stream) else {
            return Ok(());
        };
        if s.expected_len.is_some_and(|n| n != s.received) {
            return self.reset_stream(stream, ErrorCode::PROTOCOL_ERROR);
        }
        s.recv_end = true;
        s.trailers = trailers;
        touch(&mut self.touched, stream);
        if s.send_end && s.reset.is_none() {
            self.stream_done();
        }
        Ok(())
    }

    /// Stream `id`'s reader or writer may go on.
    pub(super) fn touch(&mut self, id: u32) {
        touch(&mut self.touched, id);
    }

    /// Stream `id`'s writer found no send window: it is touched when the
    /// connection's window opens (its own window's update touches it
    /// anyway). Without this, every connection WINDOW_UPDATE would wake
    /// every stream of the connection, most of them waiting for nothing
    /// a window gives.
    pub(super) fn wait_for_window(&mut self, id: u32) {
        if self.send_window > 0 {
            return;
        }
        if let Some(s) = self.streams.get_mut(&id) {
            if !s.window_wait {
                s.window_wait = true;
                self.window_waiters.push(id);
            }
        }
        // Streams that ended while waiting leave their ids behind until
        // the window opens; a peer that never opens it does not grow this.
        if self.window_waiters.len() > 2 * self.streams.len() + 16 {
            let streams = &self.streams;
            self.window_waiters.retain(|id| streams.contains_key(id));
        }
    }

    /// A stream closed both ways: on the client side, room for another
    /// (taken by the next opener; none waits on the connection for it).
    pub(super) fn stream_done(&mut self) {
        self.active = self.active.saturating_sub(1);
    }

    /// Credits `n` bytes back to the connection window, with a
    /// WINDOW_UPDATE once half the window is owed (not one per frame).
    pub(super) fn credit_connection(&mut self, n: u32) {
        if self.failed.is_some() {
            return;
        }
        self.recv_unacked += n;
        if self.recv_unacked >= connection_window(&self.cfg) / 2 {
            frame::write_window_update(&mut self.out, 0, self.recv_unacked);
            self.recv_window += i64::from(self.recv_unacked);
            self.recv_unacked = 0;
        }
    }

    /// A head or trailers on stream `id`: `fields` encodes them with the
    /// connection's HPACK encoder, in frames of the peer's size.
    pub(super) fn write_head(
        &mut self,
        id: u32,
        end_stream: bool,
        fields: impl FnOnce(&mut Encoder, &mut Vec<u8>),
    ) {
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
                self.stream_done();
            }
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

    /// The trailers, after [`Read::End`].
    pub fn take_trailers(&mut self, id: u32) -> Option<Fields> {
        self.streams.get_mut(&id)?.trailers.take()
    }

    /// Nothing more to read: END_STREAM came, all data before it was read,
    /// and there were no trailers.
    pub fn recv_done(&self, id: u32) -> bool {
        self.streams
            .get(&id)
            .is_some_and(|s| s.recv_end && s.body.is_empty() && s.trailers.is_none())
    }

    /// Received data nobody has read (yet).
    pub fn unread(&self, id: u32) -> usize {
        self.streams.get(&id).map_or(0, |s| s.body.len())
    }

    /// Whether the stream was reset (by the peer, by us, with the
    /// connection), or is gone.
    pub fn is_reset(&self, id: u32) -> bool {
        self.streams.get(&id).is_none_or(|s| s.reset.is_some())
    }

    /// Whether the stream can still send (not reset, END_STREAM not sent).
    pub fn can_send(&self, id: u32) -> bool {
        self.streams
            .get(&id)
            .is_some_and(|s| s.reset.is_none() && !s.send_end)
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

    /// Trailers (END_STREAM).
    pub fn send_trailers(&mut self, id: u32, fields: impl FnOnce(&mut Encoder, &mut Vec<u8>)) {
        if self.can_send(id) {
            self.write_head(id, true, fields);
        }
    }

    /// Resets the stream (the caller gave up on it).
    pub fn reset(&mut self, id: u32, code: ErrorCode) {
        if self.streams.get(&id).is_some_and(Stream::open) && self.failed.is_none() {
            let _ = self.reset_stream(id, code);
        }
    }

    /// Hands `wake` every stream touched since the last call (see
    /// `touched`); true if something concerns every stream (see
    /// `all_touched`).
    pub fn drain_touched(&mut self, mut wake: impl FnMut(u32)) -> bool {
        for id in self.touched.drain(..) {
            wake(id);
        }
        std::mem::take(&mut self.all_touched)
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
        self.window_waiters.shrink_to(16);
    }
}

/// What the tests of both sides read an endpoint's output with.
#[cfg(test)]
pub(super) mod testing {
    use crate::h2::frame::{self, ErrorCode, Frame, Head, HEAD_LEN};

    /// The whole frames in `out` (heads and payloads).
    pub fn frames(out: &[u8]) -> Vec<(Head, Vec<u8>)> {
        let mut v = Vec::new();
        let mut rest = out;
        while let Some(h) = Head::peek(rest) {
            let end = HEAD_LEN + h.len as usize;
            let Some(payload) = rest.get(HEAD_LEN..end) else {
                break;
            };
            v.push((h, payload.to_vec()));
            rest = &rest[end..];
        }
        v
    }

    /// The streams reset in `out`, and how.
    pub fn rst(out: &[u8]) -> Vec<(u32, ErrorCode)> {
        frames(out)
            .into_iter()
            .filter_map(|(h, p)| match frame::parse(h, &p) {
                Ok(Frame::RstStream { stream, code }) => Some((stream, code)),
                _ => None,
            })
            .collect()
    }

    /// The code of the first GOAWAY in `out`.
    pub fn goaway_code(out: &[u8]) -> Option<ErrorCode> {
        frames(out)
            .into_iter()
            .find_map(|(h, p)| match frame::parse(h, &p) {
                Ok(Frame::GoAway { code, .. }) => Some(code),
                _ => None,
            })
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

    #[test]
    fn idle_streams_are_those_neither_side_opened() {
        let mut server = Link::<()>::new(Settings::default(), Role::Server);
        server.last_peer_stream = 5;
        assert!(!server.idle(1) && !server.idle(5));
        assert!(server.idle(7), "above the client's last");
        assert!(server.idle(2), "no push: every even stream is idle");
        let mut client = Link::<()>::new(Settings::default(), Role::Client);
        client.next_own_id = 5;
        assert!(!client.idle(1) && !client.idle(3));
        assert!(client.idle(5) && client.idle(2));
    }
}
