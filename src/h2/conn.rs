//! The server side of an HTTP/2 connection, without I/O (`h2::server`
//! drives it on a socket).
//!
//! Bytes go in through [`Conn::recv`], bytes to send accumulate in
//! [`Link::out`]; streams are numbers the caller gets from
//! [`Conn::accept`]. What both sides of a connection do alike (SETTINGS,
//! PING, both flow controls, CONTINUATION, the flood limits) is the
//! [`Link`] a `Conn` dereferences to; here is what RFC 9113 asks of a
//! server only: the client's preface (§3.4), client stream identifiers
//! (§5.1.1), `max_concurrent_streams` (REFUSED_STREAM), request heads
//! (`h2::request`, §8.2-8.3) and trailers, GOAWAY either way, and streams
//! the client resets before they are accepted (rapid reset, counted here
//! for the caller's policy).

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};

use super::frame::{self, ErrorCode, Frame};
use super::hpack::Encoder;
use super::link::{BlockOf, Link, Reset, Role, Step};
use super::link::{ConnError, Settings};
use super::request::{trailers_ok, HeadBuilder, Malformed, RequestHead};
use super::PREFACE;

/// What the server side keeps of a stream beyond what [`Link`] keeps.
#[derive(Debug, Default)]
pub struct ServerStream {
    /// The request head, until the caller takes it.
    head: Option<Result<RequestHead, Malformed>>,
    /// The caller accepted the stream.
    accepted: bool,
}

pub struct Conn {
    link: Link<ServerStream>,
    preface_seen: bool,
    /// Streams whose request head is in, for [`Conn::accept`].
    accept: VecDeque<u32>,
    /// GOAWAY either way: the last stream that will be processed.
    goaway: Option<u32>,
    /// Streams the client reset before the caller accepted them.
    pub resets_before_accept: u32,
    /// The last streams we reset and no longer keep: frames the client
    /// sent before it saw the RST_STREAM are ignored, not answered with
    /// STREAM_CLOSED (§5.4.2). Bounded, like h2's and Envoy's memory of
    /// reset streams.
    reset_by_us: VecDeque<u32>,
}

/// How many reset streams `reset_by_us` remembers.
const REMEMBERED_RESETS: usize = 64;

impl Deref for Conn {
    type Target = Link<ServerStream>;
    fn deref(&self) -> &Link<ServerStream> {
        &self.link
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Link<ServerStream> {
        &mut self.link
    }
}

impl Conn {
    /// A connection whose preface has not been read yet; our SETTINGS (and
    /// the connection window's update) are queued at once (§3.4: the
    /// server's preface may go before the client's is read).
    pub fn new(cfg: Settings) -> Conn {
        Conn {
            link: Link::new(cfg, Role::Server),
            preface_seen: false,
            accept: VecDeque::new(),
            goaway: None,
            resets_before_accept: 0,
            reset_by_us: VecDeque::new(),
        }
    }

    /// Reads what it can of `input`: the preface, then whole frames.
    /// Returns how many bytes it used (a frame cut short is left for the
    /// next call). After an error nothing more is read; GOAWAY is in `out`.
    pub fn recv(&mut self, input: &[u8]) -> Result<usize, ConnError> {
        if let Some(e) = self.link.failed {
            return Err(e);
        }
        let mut used = 0;
        if !self.preface_seen {
            let n = input.len().min(PREFACE.len());
            if input[..n] != PREFACE[..n] {
                return Err(self
                    .link
                    .fail(ErrorCode::PROTOCOL_ERROR, "invalid connection preface"));
            }
            if n < PREFACE.len() {
                return Ok(0);
            }
            self.preface_seen = true;
            used = n;
        }
        while let Some((head, payload)) = self.link.next_frame(input, &mut used)? {
            match self.link.frame(head, payload)? {
                Step::Done => {}
                Step::Frame(f) => self.frame(f)?,
                Step::Block(b) => self.block_done(b.of, &b.buf)?,
            }
        }
        Ok(used)
    }

    fn frame(&mut self, f: Frame) -> Result<(), ConnError> {
        match f {
            Frame::GoAway { .. } => {
                // The client will open no more streams; those open finish.
                if self.goaway.is_none() {
                    self.goaway = Some(self.link.last_peer_stream);
                }
                Ok(())
            }
            Frame::RstStream { stream, code } => {
                let Some(s) = self.link.streams.get(&stream) else {
                    return self
                        .link
                        .unknown_stream(stream, "RST_STREAM on an idle stream");
                };
                if s.reset.is_none() && !s.part.accepted {
                    self.resets_before_accept += 1;
                }
                let r = Reset {
                    code,
                    remote: true,
                    unprocessed: false,
                };
                self.link.mark_reset(stream, r);
                Ok(())
            }
            Frame::Priority { stream, .. } => {
                // Deprecated (RFC 9113 §5.3.2); a PRIORITY may open no
                // stream, but its number is then used up if higher.
                if stream % 2 == 0 && stream > self.link.last_peer_stream {
                    return Err(self
                        .link
                        .fail(ErrorCode::PROTOCOL_ERROR, "PRIORITY on an even stream"));
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
                let trailers = self.opens(stream, end_stream)?;
                let of = BlockOf {
                    stream,
                    end_stream,
                    trailers,
                    self_dependent: priority.is_some_and(|p| p.depends_on == stream),
                };
                if self.link.start_block(of, fragment, end_headers)? {
                    return self.block_done(of, fragment);
                }
                Ok(())
            }
            Frame::Data {
                stream,
                data,
                end_stream,
                flow_len,
            } => self.data(stream, data, end_stream, flow_len),
            // The link handles the rest.
            _ => Ok(()),
        }
    }

    /// What HEADERS on `stream` may be: a new stream's request head
    /// (false), or its trailers (true).
    fn opens(&mut self, stream: u32, end_stream: bool) -> Result<bool, ConnError> {
        let link = &mut self.link;
        match link.streams.get(&stream) {
            Some(s) if s.recv_end || s.reset.is_some() => {
                // §5.1: HEADERS on a half-closed (remote) or closed stream.
                Err(link.fail(ErrorCode::STREAM_CLOSED, "HEADERS on a closed stream"))
            }
            // Trailers end the stream (§8.1).
            Some(_) if !end_stream => {
                Err(link.fail(ErrorCode::PROTOCOL_ERROR, "trailers without END_STREAM"))
            }
            Some(_) => Ok(true),
            // §5.1.1: client streams are odd.
            None if stream % 2 == 0 => {
                Err(link.fail(ErrorCode::PROTOCOL_ERROR, "even stream identifier"))
            }
            // §5.1.1: and greater than every stream opened before ("an
            // unexpected stream identifier": PROTOCOL_ERROR).
            None if stream <= link.last_peer_stream => Err(link.fail(
                ErrorCode::PROTOCOL_ERROR,
                "stream identifier not increasing",
            )),
            None => {
                link.last_peer_stream = stream;
                Ok(false)
            }
        }
    }

    fn block_done(&mut self, of: BlockOf, block: &[u8]) -> Result<(), ConnError> {
        let stream = of.stream;
        if of.trailers {
            let mut fields = Vec::new();
            let mut ok = true;
            self.link.decode(block, |n, v, _| {
                ok &= trailers_ok(n, v);
                fields.push((n.to_vec(), v.to_vec()));
            })?;
            if !ok || of.self_dependent {
                return self.link.reset_stream(stream, ErrorCode::PROTOCOL_ERROR);
            }
            return self.link.end_of_body(stream, Some(fields));
        }
        let mut b = HeadBuilder::for_block(self.link.cfg.max_header_list_size, block.len());
        self.link
            .decode(block, |n, v, never| b.field_marked(n, v, never))?;
        if self.goaway.is_some_and(|last| stream > last) {
            // After our GOAWAY: decoded (HPACK stays in step), not processed.
            return Ok(());
        }
        if self.link.active >= self.link.cfg.max_concurrent_streams {
            return self.refuse(stream, ErrorCode::REFUSED_STREAM);
        }
        let head = b.finish();
        if of.self_dependent || matches!(head, Err(Malformed::Protocol(_))) {
            // What the client still sends on it is ignored (§5.4.2).
            return self.refuse(stream, ErrorCode::PROTOCOL_ERROR);
        }
        let expected_len = head.as_ref().ok().and_then(|h| {
            let mut v = h.values(b"content-length");
            let first = v.next()?;
            std::str::from_utf8(first).ok()?.parse::<u64>().ok()
        });
        let mut s = self.link.new_stream(ServerStream {
            head: Some(head),
            accepted: false,
        });
        s.expected_len = expected_len;
        s.recv_end = of.end_stream;
        self.link.streams.insert(stream, s);
        self.link.active += 1;
        self.accept.push_back(stream);
        if of.end_stream && expected_len.is_some_and(|n| n != 0) {
            // §8.1.1: content-length promised a body that never came.
            return self.link.reset_stream(stream, ErrorCode::PROTOCOL_ERROR);
        }
        Ok(())
    }

    /// A stream reset before it was kept: RST_STREAM, and remembered.
    fn refuse(&mut self, stream: u32, code: ErrorCode) -> Result<(), ConnError> {
        self.forget(stream);
        self.link.reset_stream(stream, code)
    }

    fn data(
        &mut self,
        stream: u32,
        data: &[u8],
        end_stream: bool,
        flow_len: u32,
    ) -> Result<(), ConnError> {
        self.link.charge(flow_len)?;
        let link = &mut self.link;
        match link.streams.get(&stream) {
            None => {
                link.unknown_stream(stream, "DATA on an idle stream")?;
                link.credit_connection(flow_len);
                let not_processed = self.goaway.is_some_and(|last| stream > last);
                if not_processed || self.reset_by_us.contains(&stream) {
                    // We reset it; what was in flight is ignored (§6.4).
                    return Ok(());
                }
                link.reset_stream(stream, ErrorCode::STREAM_CLOSED)
            }
            Some(s) if s.reset.is_some() => {
                link.credit_connection(flow_len);
                Ok(())
            }
            Some(s) if s.recv_end => {
                link.credit_connection(flow_len);
                link.reset_stream(stream, ErrorCode::STREAM_CLOSED)
            }
            Some(_) => link.take_data(stream, data, end_stream, flow_len),
        }
    }

    /// The next stream whose request head is in.
    pub fn accept(&mut self) -> Option<u32> {
        while let Some(id) = self.accept.pop_front() {
            match self.link.streams.get_mut(&id) {
                Some(s) if s.reset.is_none() => {
                    s.part.accepted = true;
                    return Some(id);
                }
                // Reset before anyone saw it: nobody will close it.
                Some(_) => {
                    self.link.streams.remove(&id);
                }
                None => {}
            }
        }
        None
    }

    /// The request head of an accepted stream (once): Err(TooLarge) asks
    /// for a 431.
    pub fn take_head(&mut self, id: u32) -> Option<Result<RequestHead, Malformed>> {
        self.link.streams.get_mut(&id)?.part.head.take()
    }

    /// Sends a response head: `fields` encodes the status and fields with
    /// the connection's HPACK encoder.
    pub fn send_head(
        &mut self,
        id: u32,
        end_stream: bool,
        fields: impl FnOnce(&mut Encoder, &mut Vec<u8>),
    ) {
        if self.link.can_send(id) {
            self.link.write_head(id, end_stream, fields);
        }
    }

    /// The caller is done with the stream: its state goes; a stream still
    /// open either way is reset (NO_ERROR when only the request body was
    /// left unread, RFC 9113 §8.1; CANCEL otherwise), and unread data is
    /// credited back to the connection.
    pub fn close(&mut self, id: u32) {
        let Some(s) = self.link.streams.get(&id) else {
            return;
        };
        let was_reset = s.reset.is_some();
        if s.open() && self.link.failed.is_none() {
            let code = if s.send_end {
                ErrorCode::NO_ERROR
            } else {
                ErrorCode::CANCEL
            };
            let _ = self.link.reset_stream(id, code);
            self.forget(id);
        } else if was_reset {
            self.forget(id);
        }
        if let Some(s) = self.link.streams.remove(&id) {
            self.link.credit_connection(s.body.len() as u32);
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
            let last = self.link.last_peer_stream;
            self.goaway = Some(last);
            frame::write_goaway(self.link.out(), last, code, b"");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::h2::frame::{flag, setting, Head};
    use crate::h2::hpack::Decoder;
    use crate::h2::link::testing::{frames, goaway_code, rst};
    use crate::h2::link::Read;

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
