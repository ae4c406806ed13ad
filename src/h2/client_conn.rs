//! The client side of an HTTP/2 connection, without I/O (`h2::client`
//! drives it on a socket to an upstream).
//!
//! The mirror of [`super::conn`], the server side: bytes go in through
//! [`ClientConn::recv`], bytes to send accumulate in [`Link::out`], and
//! streams are numbers [`ClientConn::open`] hands out. What both sides do
//! alike (SETTINGS, PING, both flow controls, CONTINUATION, the flood
//! limits) is the [`Link`] a `ClientConn` dereferences to; here is what
//! RFC 9113 asks of a client only: the preface (§3.4; push disabled), odd
//! stream identifiers in increasing order (§5.1.1), the peer's
//! SETTINGS_MAX_CONCURRENT_STREAMS (§5.1.2; 100 until its SETTINGS
//! arrive), response heads checked as §8.3.2 and §8.1.1 require (one
//! `:status`, interim 1xx heads skipped, content-length against DATA, none
//! for HEAD, 204 and 304), trailers, and GOAWAY: streams above its last
//! stream id were not processed and are safe to send again elsewhere
//! (§6.8).

use std::ops::{Deref, DerefMut};

use super::frame::{ErrorCode, Frame};
use super::hpack::Encoder;
use super::link::{BlockOf, Link, Role, Step, MAX_STREAM_ID};
use super::link::{ConnError, Reset, Settings};
use super::request::{trailers_ok, valid_value};
use super::Span;
use crate::http::rewrite::is_lowercase_token;

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

#[cfg(test)]
impl ResponseHead {
    /// A head as the codec would have decoded it.
    pub(crate) fn for_test(status: u16, fields: &[(&str, &str)]) -> ResponseHead {
        let mut b = HeadBuilder::new(64 * 1024, 256);
        b.field(b":status", status.to_string().as_bytes(), false);
        for (n, v) in fields {
            b.field(n.as_bytes(), v.as_bytes(), false);
        }
        b.finish().expect("a valid head")
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
        if !is_lowercase_token(name) {
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

/// What the client side keeps of a stream beyond what [`Link`] keeps.
#[derive(Debug, Default)]
pub struct ClientStream {
    /// The final response head, not yet taken.
    head: Option<ResponseHead>,
    /// The final head came (later HEADERS are trailers).
    head_seen: bool,
    /// The request was HEAD: the answer has no body, whatever it says.
    head_request: bool,
}

pub struct ClientConn {
    link: Link<ClientStream>,
    /// GOAWAY received: the last stream the peer will process.
    goaway: Option<u32>,
    /// We sent GOAWAY (closing): no new streams.
    closing: bool,
}

impl Deref for ClientConn {
    type Target = Link<ClientStream>;
    fn deref(&self) -> &Link<ClientStream> {
        &self.link
    }
}

impl DerefMut for ClientConn {
    fn deref_mut(&mut self) -> &mut Link<ClientStream> {
        &mut self.link
    }
}

impl ClientConn {
    /// A connection whose preface, SETTINGS and connection window update
    /// are queued at once (§3.4: requests may follow without waiting for
    /// the server's SETTINGS).
    pub fn new(cfg: Settings) -> ClientConn {
        ClientConn {
            link: Link::new(cfg, Role::Client),
            goaway: None,
            closing: false,
        }
    }

    /// Whether a stream may be opened now, and if not, why.
    pub fn can_open(&self) -> Result<(), NotOpened> {
        let link = &self.link;
        if link.failed.is_some() || self.goaway.is_some() || self.closing {
            return Err(NotOpened::Closing);
        }
        if link.next_own_id > MAX_STREAM_ID {
            return Err(NotOpened::Closing);
        }
        if link.active >= link.peer_max_streams {
            return Err(NotOpened::Full);
        }
        Ok(())
    }

    /// No stream will ever open on it again.
    pub fn is_closing(&self) -> bool {
        matches!(self.can_open(), Err(NotOpened::Closing))
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
        let link = &mut self.link;
        let id = link.next_own_id;
        link.next_own_id += 2;
        let s = link.new_stream(ClientStream {
            head_request,
            ..ClientStream::default()
        });
        link.streams.insert(id, s);
        link.active += 1;
        link.write_head(id, end_stream, fields);
        Ok(id)
    }

    /// Reads what it can of `input`, whole frames only. Returns how many
    /// bytes it used (a frame cut short is left for the next call). After
    /// an error nothing more is read; GOAWAY is in `out`, and every open
    /// stream has ended.
    pub fn recv(&mut self, input: &[u8]) -> Result<usize, ConnError> {
        let mut used = 0;
        while let Some((head, payload)) = self.link.next_frame(input, &mut used)? {
            match self.link.frame(head, payload)? {
                Step::Done => {}
                Step::Frame(f) => self.frame(f)?,
                Step::Block(b) => self.block_done(b.of.stream, &b.buf, b.of.end_stream)?,
            }
        }
        Ok(used)
    }

    fn frame(&mut self, f: Frame) -> Result<(), ConnError> {
        let link = &mut self.link;
        match f {
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
                // It wakes the streams it ends; no opener waits on a
                // connection (the pool passes over a closing one).
                link.end_streams(refused, |id| id > last);
                Ok(())
            }
            Frame::RstStream { stream, code } => {
                let Some(s) = link.streams.get_mut(&stream) else {
                    return link.unknown_stream(stream, "RST_STREAM on an idle stream");
                };
                if s.recv_end && s.reset.is_none() {
                    // The answer is whole: the peer only stops the request
                    // body it no longer wants (§8.1: NO_ERROR after a
                    // complete response, which the client must not
                    // discard). What is left of the answer is still read.
                    if !s.send_end {
                        s.send_end = true;
                        link.stream_done();
                    }
                    link.touch(stream);
                    return Ok(());
                }
                let r = Reset {
                    code,
                    remote: true,
                    unprocessed: code == ErrorCode::REFUSED_STREAM,
                };
                link.mark_reset(stream, r);
                Ok(())
            }
            Frame::Headers {
                stream,
                fragment,
                end_stream,
                end_headers,
                ..
            } => {
                if link.idle(stream) {
                    // §8.4: no push (we disabled it); §5.1.1: no stream the
                    // client did not open.
                    return Err(link.fail(ErrorCode::PROTOCOL_ERROR, "HEADERS on an idle stream"));
                }
                let of = BlockOf {
                    stream,
                    end_stream,
                    trailers: false,
                    self_dependent: false,
                };
                if link.start_block(of, fragment, end_headers)? {
                    return self.block_done(stream, fragment, end_stream);
                }
                Ok(())
            }
            Frame::Data {
                stream,
                data,
                end_stream,
                flow_len,
            } => self.data(stream, data, end_stream, flow_len),
            // PRIORITY is ignored; the link handles the rest.
            _ => Ok(()),
        }
    }

    fn block_done(&mut self, stream: u32, block: &[u8], end_stream: bool) -> Result<(), ConnError> {
        let link = &mut self.link;
        let (head_seen, usable) = match link.streams.get(&stream) {
            Some(s) => (s.part.head_seen, s.reset.is_none()),
            None => (false, false),
        };
        if head_seen {
            // Trailers: regular fields only, and they end the stream (§8.1).
            let mut fields = Vec::new();
            let mut ok = end_stream;
            let mut size = 0usize;
            link.decode(block, |n, v, _| {
                ok &= trailers_ok(n, v);
                size = size.saturating_add(n.len() + v.len() + 32);
                if usable {
                    fields.push((n.to_vec(), v.to_vec()));
                }
            })?;
            if !usable {
                return Ok(());
            }
            if link.streams.get(&stream).is_some_and(|s| s.recv_end) {
                return link.reset_stream(stream, ErrorCode::STREAM_CLOSED);
            }
            if !ok || size > link.cfg.max_header_list_size as usize {
                return link.reset_stream(stream, ErrorCode::PROTOCOL_ERROR);
            }
            return link.end_of_body(stream, Some(fields));
        }
        let mut b = HeadBuilder::new(link.cfg.max_header_list_size, block.len());
        link.decode(block, |n, v, never| b.field(n, v, never))?;
        if !usable {
            // A stream we reset or let go: decoded (HPACK stays in step),
            // nothing more.
            return Ok(());
        }
        let head = match b.finish() {
            Ok(h) => h,
            Err(_) => return link.reset_stream(stream, ErrorCode::PROTOCOL_ERROR),
        };
        if (100..200).contains(&head.status) {
            // Interim answers are not passed on; 101 does not exist in
            // HTTP/2 (§8.6), and an interim head cannot end the stream.
            if head.status == 101 || end_stream {
                return link.reset_stream(stream, ErrorCode::PROTOCOL_ERROR);
            }
            return Ok(());
        }
        let Some(s) = link.streams.get_mut(&stream) else {
            return Ok(());
        };
        // §8.1.1: DATA must add up to content-length, unless the answer
        // has no body by definition: none after HEAD, whatever
        // content-length says, and none checked for 204 and 304.
        s.expected_len = if s.part.head_request {
            Some(0)
        } else if matches!(head.status, 204 | 304) {
            None
        } else {
            head.get(b"content-length")
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
        };
        s.part.head_seen = true;
        s.part.head = Some(head);
        link.touch(stream);
        if end_stream {
            return link.end_of_body(stream, None);
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
        let link = &mut self.link;
        link.charge(flow_len)?;
        match link.streams.get(&stream) {
            None => {
                link.unknown_stream(stream, "DATA on an idle stream")?;
                // A stream we let go: what was in flight is ignored (§6.4).
                link.credit_connection(flow_len);
                Ok(())
            }
            Some(s) if s.reset.is_some() => {
                link.credit_connection(flow_len);
                Ok(())
            }
            Some(s) if s.recv_end || !s.part.head_seen => {
                let code = if s.recv_end {
                    ErrorCode::STREAM_CLOSED
                } else {
                    // §8.1: DATA before the response head.
                    ErrorCode::PROTOCOL_ERROR
                };
                link.credit_connection(flow_len);
                link.reset_stream(stream, code)
            }
            Some(_) => link.take_data(stream, data, end_stream, flow_len),
        }
    }

    /// The final response head (once), when it has come.
    pub fn take_head(&mut self, id: u32) -> Option<ResponseHead> {
        self.link.streams.get_mut(&id)?.part.head.take()
    }

    /// Whether the final head has come (taken or not).
    pub fn head_seen(&self, id: u32) -> bool {
        self.link.streams.get(&id).is_some_and(|s| s.part.head_seen)
    }

    /// How the stream ended early, if it did.
    pub fn reset_of(&self, id: u32) -> Option<Reset> {
        match self.link.streams.get(&id) {
            Some(s) => s.reset,
            None => Some(Reset::local(ErrorCode::STREAM_CLOSED)),
        }
    }

    /// The caller is done with the stream: its state goes; a stream still
    /// open either way is reset (CANCEL), and unread data is credited back
    /// to the connection.
    pub fn close(&mut self, id: u32) {
        let link = &mut self.link;
        link.reset(id, ErrorCode::CANCEL);
        if let Some(s) = link.streams.remove(&id) {
            if s.open() {
                link.stream_done();
            }
            link.credit_connection(s.body.len() as u32);
        }
    }

    /// Starts a graceful close: no new streams; GOAWAY tells the peer so.
    pub fn goaway(&mut self) {
        if !self.closing && self.link.failed.is_none() {
            self.closing = true;
            super::frame::write_goaway(self.link.out(), 0, ErrorCode::NO_ERROR, b"");
        }
    }

    /// The peer's GOAWAY: the last stream it processes.
    pub fn goaway_received(&self) -> Option<u32> {
        self.goaway
    }
}

#[cfg(test)]
mod tests;
