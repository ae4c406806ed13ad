use super::*;
use crate::h2::conn::Conn as ServerConn;
use crate::h2::frame::{self, flag, kind, setting, Head, HEAD_LEN};
use crate::h2::link::testing::{frames, goaway_code, rst};
use crate::h2::link::{Read, Settings};
use crate::h2::PREFACE;

/// A connection whose preface and SETTINGS have been written.
fn fresh(settings: Settings) -> ClientConn {
    let mut c = ClientConn::new(settings);
    c.out().clear();
    c
}

fn get(c: &mut ClientConn, path: &str) -> u32 {
    request(c, "GET", path, true).unwrap()
}

fn request(c: &mut ClientConn, method: &str, path: &str, end: bool) -> Result<u32, NotOpened> {
    c.open(end, method == "HEAD", |enc, out| {
        enc.field(b":method", method.as_bytes(), out);
        enc.field(b":scheme", b"http", out);
        enc.field(b":authority", b"up", out);
        enc.field(b":path", path.as_bytes(), out);
    })
}

/// A server written frame by frame: its SETTINGS first, then what a test
/// adds, with its own HPACK encoder.
struct Peer {
    bytes: Vec<u8>,
    enc: Encoder,
}

impl Peer {
    fn new(settings: &[(u16, u32)]) -> Peer {
        let mut bytes = Vec::new();
        frame::write_settings(&mut bytes, settings);
        Peer {
            bytes,
            enc: Encoder::new(),
        }
    }

    fn head(&mut self, stream: u32, fields: &[(&str, &str)], end: bool) -> &mut Peer {
        let mut block = Vec::new();
        self.enc.begin(&mut block);
        for (n, v) in fields {
            self.enc.field(n.as_bytes(), v.as_bytes(), &mut block);
        }
        frame::write_headers(&mut self.bytes, stream, &block, end, 16384);
        self
    }

    fn data(&mut self, stream: u32, data: &[u8], end: bool) -> &mut Peer {
        frame::write_data_head(&mut self.bytes, stream, data.len() as u32, end);
        self.bytes.extend_from_slice(data);
        self
    }

    fn raw(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> &mut Peer {
        Head {
            len: payload.len() as u32,
            kind,
            flags,
            stream,
        }
        .write(&mut self.bytes);
        self.bytes.extend_from_slice(payload);
        self
    }

    /// Feeds everything so far to `c`.
    fn to(&mut self, c: &mut ClientConn) -> Result<usize, ConnError> {
        let r = c.recv(&self.bytes);
        self.bytes.clear();
        r
    }
}

fn read_all(c: &mut ClientConn, id: u32) -> (Vec<u8>, Read) {
    let mut buf = Vec::new();
    loop {
        match c.read(id, &mut buf) {
            Read::Data(_) => continue,
            r => return (buf, r),
        }
    }
}

#[test]
fn preface_settings_and_window_come_first() {
    let mut c = ClientConn::new(Settings::default());
    let out = std::mem::take(c.out());
    assert!(out.starts_with(PREFACE));
    let f = frames(&out[PREFACE.len()..]);
    assert_eq!(f[0].0.kind, kind::SETTINGS);
    let params: Vec<_> = frame::settings(&f[0].1).collect();
    assert!(params.contains(&(setting::ENABLE_PUSH, 0)));
    assert!(params.contains(&(setting::INITIAL_WINDOW_SIZE, 256 * 1024)));
    assert_eq!(f[1].0.kind, kind::WINDOW_UPDATE);
    assert_eq!(f.len(), 2);
}

/// The whole exchange against the server side of our own codec: request
/// head and body, answer head, body and trailers, through both.
#[test]
fn a_request_and_its_answer_through_the_server_codec() {
    let mut c = ClientConn::new(Settings::default());
    let mut s = ServerConn::new(Settings::default());
    let id = request(&mut c, "POST", "/echo", false).unwrap();
    assert_eq!(id, 1);
    assert_eq!(c.send_data(id, b"hello", false), 5);
    c.send_trailers(id, |enc, out| enc.field(b"x-req-trailer", b"1", out));
    let used = s.recv(c.out()).unwrap();
    assert_eq!(used, c.out().len());
    c.out().clear();
    let sid = s.accept().expect("a stream");
    let head = s.take_head(sid).unwrap().unwrap();
    assert_eq!(head.method(), b"POST");
    assert_eq!(head.path(), Some(&b"/echo"[..]));
    let mut body = Vec::new();
    assert_eq!(s.read(sid, &mut body), Read::Data(5));
    assert_eq!(s.read(sid, &mut Vec::new()), Read::End);
    assert_eq!(
        s.take_trailers(sid),
        Some(vec![(b"x-req-trailer".to_vec(), b"1".to_vec())])
    );
    s.send_head(sid, false, |enc, out| {
        enc.status(200, out);
        enc.field(b"content-type", b"text/plain", out);
    });
    s.send_data(sid, b"world", false);
    s.send_trailers(sid, |enc, out| enc.field(b"grpc-status", b"0", out));
    let out = std::mem::take(s.out());
    assert_eq!(c.recv(&out).unwrap(), out.len());
    let h = c.take_head(id).expect("the head");
    assert_eq!(h.status, 200);
    assert_eq!(h.get(b"content-type"), Some(&b"text/plain"[..]));
    let (data, end) = read_all(&mut c, id);
    assert_eq!((data.as_slice(), end), (&b"world"[..], Read::End));
    assert_eq!(
        c.take_trailers(id),
        Some(vec![(b"grpc-status".to_vec(), b"0".to_vec())])
    );
    assert_eq!(c.active(), 0);
    c.close(id);
    assert!(rst(c.out()).is_empty(), "a closed stream is not reset");
    // The server's SETTINGS were acknowledged.
    assert!(frames(c.out())
        .iter()
        .any(|(h, _)| h.kind == kind::SETTINGS && h.flags & flag::ACK != 0));
}

#[test]
fn interim_heads_are_skipped_and_bad_heads_reset() {
    let mut c = ClientConn::new(Settings::default());
    let ids: Vec<u32> = (0..7).map(|i| get(&mut c, &format!("/{i}"))).collect();
    c.out().clear();
    let mut p = Peer::new(&[]);
    p.head(ids[0], &[(":status", "103"), ("link", "</a>")], false)
        .head(ids[0], &[(":status", "204")], true)
        .head(ids[1], &[("x-a", "1")], true)
        .head(ids[2], &[(":status", "200"), (":path", "/")], true)
        .head(ids[3], &[(":status", "200"), ("connection", "close")], true)
        .head(ids[4], &[(":status", "20x")], true)
        .head(ids[5], &[(":status", "101")], false)
        .head(ids[6], &[(":status", "200")], true);
    // The last head again, with an uppercase name (a literal the encoder
    // would not write).
    let at = p.bytes.len() - 1;
    p.bytes.truncate(at - HEAD_LEN);
    let block = [&[0x88u8, 0x00, 7][..], b"X-Upper", &[1], b"1"].concat();
    frame::write_headers(&mut p.bytes, ids[6], &block, true, 16384);
    p.to(&mut c).unwrap();
    let h = c.take_head(ids[0]).unwrap();
    assert_eq!(h.status, 204);
    assert_eq!(c.read(ids[0], &mut Vec::new()), Read::End);
    let reset: Vec<u32> = rst(c.out())
        .into_iter()
        .map(|(s, code)| {
            assert_eq!(code, ErrorCode::PROTOCOL_ERROR);
            s
        })
        .collect();
    assert_eq!(reset, ids[1..].to_vec());
    for &id in &ids[1..] {
        assert_eq!(c.take_head(id).map(|h| h.status), None);
        assert_eq!(
            c.read(id, &mut Vec::new()),
            Read::Reset(ErrorCode::PROTOCOL_ERROR)
        );
        assert!(!c.reset_of(id).unwrap().unprocessed);
    }
    assert_eq!(c.active(), 0);
    assert!(c.failed().is_none());
}

#[test]
fn content_length_is_held_to_the_data() {
    let mut c = ClientConn::new(Settings::default());
    let short = get(&mut c, "/short");
    let long = get(&mut c, "/long");
    let head = request(&mut c, "HEAD", "/h", true).unwrap();
    let not_modified = get(&mut c, "/304");
    c.out().clear();
    let mut p = Peer::new(&[]);
    p.head(short, &[(":status", "200"), ("content-length", "5")], false)
        .data(short, b"abc", true)
        .head(long, &[(":status", "200"), ("content-length", "2")], false)
        .data(long, b"abc", false)
        .head(head, &[(":status", "200"), ("content-length", "5")], true)
        .head(
            not_modified,
            &[(":status", "304"), ("content-length", "9")],
            true,
        );
    p.to(&mut c).unwrap();
    assert_eq!(
        rst(c.out()),
        vec![
            (short, ErrorCode::PROTOCOL_ERROR),
            (long, ErrorCode::PROTOCOL_ERROR)
        ]
    );
    assert_eq!(c.read(head, &mut Vec::new()), Read::End);
    assert_eq!(c.read(not_modified, &mut Vec::new()), Read::End);
}

#[test]
fn goaway_ends_unprocessed_streams_and_stops_new_ones() {
    let mut c = ClientConn::new(Settings::default());
    let a = get(&mut c, "/a");
    let b = get(&mut c, "/b");
    let mut p = Peer::new(&[]);
    let mut payload = a.to_be_bytes().to_vec();
    payload.extend_from_slice(&ErrorCode::NO_ERROR.0.to_be_bytes());
    p.raw(kind::GOAWAY, 0, 0, &payload);
    p.to(&mut c).unwrap();
    assert_eq!(c.reset_of(a), None, "stream a goes on");
    let r = c.reset_of(b).unwrap();
    assert!(r.unprocessed && r.remote, "{r:?}");
    assert_eq!(c.can_open(), Err(NotOpened::Closing));
    assert!(c.is_closing());
    assert_eq!(request(&mut c, "GET", "/c", true), Err(NotOpened::Closing));
    p.head(a, &[(":status", "200")], true).to(&mut c).unwrap();
    assert_eq!(c.take_head(a).unwrap().status, 200);
    assert_eq!(c.active(), 0);
}

#[test]
fn refused_stream_is_unprocessed_other_resets_are_not() {
    let mut c = ClientConn::new(Settings::default());
    let a = get(&mut c, "/a");
    let b = get(&mut c, "/b");
    let mut p = Peer::new(&[]);
    p.raw(
        kind::RST_STREAM,
        0,
        a,
        &ErrorCode::REFUSED_STREAM.0.to_be_bytes(),
    )
    .raw(
        kind::RST_STREAM,
        0,
        b,
        &ErrorCode::INTERNAL_ERROR.0.to_be_bytes(),
    );
    p.to(&mut c).unwrap();
    assert!(c.reset_of(a).unwrap().unprocessed);
    let rb = c.reset_of(b).unwrap();
    assert!(!rb.unprocessed && rb.remote);
    assert_eq!(rb.code, ErrorCode::INTERNAL_ERROR);
    assert_eq!(c.active(), 0);
    // Closing a reset stream sends nothing.
    c.out().clear();
    c.close(a);
    c.close(b);
    assert!(c.out().is_empty());
}

/// A server may answer before the request body is all in and then reset
/// the stream with NO_ERROR to stop the upload (§8.1): the answer stands.
#[test]
fn an_early_answer_survives_the_reset_that_stops_the_upload() {
    let mut c = fresh(Settings::default());
    let id = request(&mut c, "POST", "/up", false).unwrap();
    let mut p = Peer::new(&[]);
    p.head(id, &[(":status", "405"), ("content-length", "4")], false)
        .data(id, b"nope", true)
        .raw(
            kind::RST_STREAM,
            0,
            id,
            &ErrorCode::NO_ERROR.0.to_be_bytes(),
        );
    p.to(&mut c).unwrap();
    assert_eq!(c.take_head(id).unwrap().status, 405);
    assert!(!c.can_send(id), "the upload is over");
    assert_eq!(c.active(), 0);
    let (body, end) = read_all(&mut c, id);
    assert_eq!((body.as_slice(), end), (&b"nope"[..], Read::End));
    c.out().clear();
    c.close(id);
    assert!(rst(c.out()).is_empty(), "closed by the peer already");
    // Before the answer is whole, the same reset ends the stream.
    let id = request(&mut c, "POST", "/up", false).unwrap();
    p.head(id, &[(":status", "200")], false)
        .data(id, b"part", false)
        .raw(
            kind::RST_STREAM,
            0,
            id,
            &ErrorCode::NO_ERROR.0.to_be_bytes(),
        );
    p.to(&mut c).unwrap();
    assert_eq!(
        c.read(id, &mut Vec::new()),
        Read::Reset(ErrorCode::NO_ERROR)
    );
}

#[test]
fn the_peers_stream_limit_is_honoured() {
    let mut c = ClientConn::new(Settings::default());
    // 100 until the server's SETTINGS say otherwise.
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(get(&mut c, &format!("/{i}")));
    }
    assert_eq!(request(&mut c, "GET", "/x", true), Err(NotOpened::Full));
    Peer::new(&[(setting::MAX_CONCURRENT_STREAMS, 2)])
        .to(&mut c)
        .unwrap();
    for &id in &ids[2..] {
        c.close(id);
    }
    c.drain_touched(|_| {});
    assert_eq!(c.active(), 2);
    assert_eq!(c.can_open(), Err(NotOpened::Full));
    let mut p = Peer::new(&[]);
    p.bytes.clear();
    p.head(ids[0], &[(":status", "200")], true)
        .to(&mut c)
        .unwrap();
    assert_eq!(c.active(), 1);
    // The room is taken by the next opener; nobody waits on a connection
    // for it, so only the answered stream is woken.
    let mut touched = Vec::new();
    assert!(!c.drain_touched(|id| touched.push(id)));
    assert_eq!(touched, [ids[0]]);
    assert_eq!(c.can_open(), Ok(()));
    let next = get(&mut c, "/next");
    assert_eq!(next, 201);
}

#[test]
fn flow_control_both_ways() {
    let settings = Settings {
        initial_stream_window: 65_535,
        initial_connection_window: 65_535,
        ..Settings::default()
    };
    let mut c = ClientConn::new(settings);
    let id = request(&mut c, "POST", "/up", false).unwrap();
    // The peer's initial windows are 65,535 each.
    let big = vec![7u8; 100_000];
    assert_eq!(c.capacity(id), 65_535);
    assert_eq!(c.send_data(id, &big, true), 65_535);
    assert_eq!(c.capacity(id), 0);
    assert!(c.can_send(id));
    let mut p = Peer::new(&[]);
    p.raw(kind::WINDOW_UPDATE, 0, 0, &1000u32.to_be_bytes())
        .raw(kind::WINDOW_UPDATE, 0, id, &500u32.to_be_bytes());
    p.to(&mut c).unwrap();
    assert_eq!(c.capacity(id), 500);
    assert_eq!(c.send_data(id, &big[65_535..], true), 500);
    // Receiving: DATA past our window is a connection error; what is read
    // is credited back once half the window is owed.
    p.head(id, &[(":status", "200")], false)
        .data(id, &vec![1u8; 12_000], false)
        .data(id, &vec![1u8; 12_000], false)
        .data(id, &vec![1u8; 12_000], false)
        .to(&mut c)
        .unwrap();
    c.out().clear();
    let (got, r) = read_all(&mut c, id);
    assert_eq!((got.len(), r), (36_000, Read::Pending));
    let updates: Vec<_> = frames(c.out())
        .into_iter()
        .filter(|(h, _)| h.kind == kind::WINDOW_UPDATE)
        .map(|(h, p)| (h.stream, u32::from_be_bytes(p[..4].try_into().unwrap())))
        .collect();
    assert_eq!(updates, vec![(id, 36_000), (0, 36_000)]);
    for _ in 0..5 {
        p.data(id, &vec![1u8; 16_000], false);
    }
    assert_eq!(
        p.to(&mut c).unwrap_err().code,
        ErrorCode::FLOW_CONTROL_ERROR
    );
    assert_eq!(goaway_code(c.out()), Some(ErrorCode::FLOW_CONTROL_ERROR));
    assert_eq!(
        c.read(id, &mut Vec::new()),
        Read::Reset(ErrorCode::FLOW_CONTROL_ERROR)
    );
}

#[test]
fn only_the_streams_a_frame_concerns_are_touched() {
    let settings = Settings {
        initial_stream_window: 65_535,
        initial_connection_window: 65_535,
        ..Settings::default()
    };
    let mut c = ClientConn::new(settings);
    let ids: Vec<u32> = (0..4)
        .map(|i| request(&mut c, "POST", &format!("/{i}"), false).unwrap())
        .collect();
    let touched = |c: &mut ClientConn| {
        let mut t = Vec::new();
        let all = c.drain_touched(|id| t.push(id));
        (t, all)
    };
    // A whole answer in one read (head, DATA, end) lists its stream once.
    let mut p = Peer::new(&[]);
    p.head(ids[3], &[(":status", "200")], false)
        .data(ids[3], b"abc", true)
        .to(&mut c)
        .unwrap();
    assert_eq!(touched(&mut c), (vec![ids[3]], false));
    // ids[0] spends the connection's window and waits for more; ids[1]
    // and ids[2] wait on their answers only.
    assert_eq!(c.send_data(ids[0], &vec![0u8; 70_000], false), 65_535);
    assert_eq!(c.capacity(ids[0]), 0);
    c.wait_for_window(ids[0]);
    c.wait_for_window(ids[0]);
    // Its own window's update wakes it; the connection's stays shut.
    let mut p = Peer::new(&[]);
    p.bytes.clear();
    p.raw(kind::WINDOW_UPDATE, 0, ids[0], &100u32.to_be_bytes())
        .to(&mut c)
        .unwrap();
    assert_eq!(touched(&mut c), (vec![ids[0]], false));
    assert_eq!(c.capacity(ids[0]), 0);
    // The connection's update wakes the stream that waited for it, once,
    // and no other.
    p.raw(kind::WINDOW_UPDATE, 0, 0, &1000u32.to_be_bytes())
        .to(&mut c)
        .unwrap();
    assert_eq!(touched(&mut c), (vec![ids[0]], false));
    assert_eq!(c.capacity(ids[0]), 100);
    // With room in the connection's window, nobody waits for it.
    c.wait_for_window(ids[1]);
    p.raw(kind::WINDOW_UPDATE, 0, 0, &1000u32.to_be_bytes())
        .to(&mut c)
        .unwrap();
    assert_eq!(touched(&mut c), (vec![], false));
    // A larger initial window concerns every stream.
    Peer::new(&[(setting::INITIAL_WINDOW_SIZE, 100_000)])
        .to(&mut c)
        .unwrap();
    assert!(touched(&mut c).1);
}

#[test]
fn a_peer_that_breaks_the_protocol_loses_the_connection() {
    type Case = (&'static str, Box<dyn Fn(&mut Peer, u32)>, ErrorCode);
    let cases: Vec<Case> = vec![
        (
            "HEADERS on an even stream (a push)",
            Box::new(|p, _| {
                p.head(2, &[(":status", "200")], true);
            }),
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            "HEADERS on a stream never opened",
            Box::new(|p, id| {
                p.head(id + 2, &[(":status", "200")], true);
            }),
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            "PUSH_PROMISE",
            Box::new(|p, id| {
                p.raw(
                    kind::PUSH_PROMISE,
                    flag::END_HEADERS,
                    id,
                    &[0, 0, 0, 2, 0x82],
                );
            }),
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            "SETTINGS_ENABLE_PUSH 1",
            Box::new(|p, _| {
                frame::write_settings(&mut p.bytes, &[(setting::ENABLE_PUSH, 1)]);
            }),
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            "a header block interrupted",
            Box::new(|p, id| {
                p.raw(kind::HEADERS, 0, id, &[0x88])
                    .raw(kind::PING, 0, 0, &[0; 8]);
            }),
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            "a frame over 16 KiB",
            Box::new(|p, id| {
                p.raw(kind::DATA, 0, id, &vec![0; 16_385]);
            }),
            ErrorCode::FRAME_SIZE_ERROR,
        ),
        (
            "empty frames",
            Box::new(|p, id| {
                p.head(id, &[(":status", "200")], false);
                for _ in 0..3 {
                    p.data(id, b"", false);
                }
            }),
            ErrorCode::ENHANCE_YOUR_CALM,
        ),
        (
            "a ping flood nobody reads the answers to",
            Box::new(|p, _| {
                for _ in 0..1001 {
                    p.raw(kind::PING, 0, 0, &[1; 8]);
                }
            }),
            ErrorCode::ENHANCE_YOUR_CALM,
        ),
        (
            "HPACK garbage",
            Box::new(|p, id| {
                p.raw(
                    kind::HEADERS,
                    flag::END_HEADERS,
                    id,
                    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                );
            }),
            ErrorCode::COMPRESSION_ERROR,
        ),
    ];
    for (what, peer, code) in cases {
        let mut c = fresh(Settings::default());
        let id = get(&mut c, "/");
        let mut p = Peer::new(&[]);
        peer(&mut p, id);
        let e = p.to(&mut c).expect_err(what);
        assert_eq!(e.code, code, "{what}");
        assert_eq!(goaway_code(c.out()), Some(code), "{what}");
        assert_eq!(c.read(id, &mut Vec::new()), Read::Reset(code), "{what}");
        assert!(c.is_closing(), "{what}");
        assert!(c.recv(b"").is_err(), "{what}: nothing more is read");
    }
}

#[test]
fn stream_errors_reset_only_their_stream() {
    let mut c = ClientConn::new(Settings::default());
    let a = get(&mut c, "/a");
    let b = get(&mut c, "/b");
    let d = request(&mut c, "POST", "/d", false).unwrap();
    c.out().clear();
    let mut p = Peer::new(&[]);
    // DATA before the head; a zero WINDOW_UPDATE; trailers without
    // END_STREAM.
    p.data(a, b"x", false)
        .raw(kind::WINDOW_UPDATE, 0, d, &0u32.to_be_bytes())
        .head(b, &[(":status", "200")], false)
        .head(b, &[("grpc-status", "0")], false);
    p.to(&mut c).unwrap();
    assert_eq!(
        rst(c.out()),
        vec![
            (a, ErrorCode::PROTOCOL_ERROR),
            (d, ErrorCode::PROTOCOL_ERROR),
            (b, ErrorCode::PROTOCOL_ERROR)
        ]
    );
    assert!(c.failed().is_none());
    assert_eq!(c.can_open(), Ok(()));
}

#[test]
fn frames_for_streams_let_go_are_ignored_and_credited() {
    let settings = Settings {
        initial_connection_window: 65_535,
        ..Settings::default()
    };
    let mut c = fresh(settings);
    let id = get(&mut c, "/");
    c.close(id);
    assert_eq!(rst(c.out()), vec![(id, ErrorCode::CANCEL)]);
    c.out().clear();
    let mut p = Peer::new(&[]);
    p.head(id, &[(":status", "200")], false);
    for _ in 0..3 {
        p.data(id, &vec![0; 16_000], false);
    }
    p.raw(kind::RST_STREAM, 0, id, &ErrorCode::CANCEL.0.to_be_bytes());
    p.to(&mut c).unwrap();
    // Nothing answered but the connection window's credit (48,000 of
    // 65,535 is past half), and the SETTINGS acknowledged.
    let f: Vec<_> = frames(c.out())
        .into_iter()
        .filter(|(h, _)| h.kind != kind::SETTINGS)
        .collect();
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].0.kind, f[0].0.stream), (kind::WINDOW_UPDATE, 0));
    // The HPACK state stayed in step: a later head decodes.
    let next = get(&mut c, "/next");
    p.head(next, &[(":status", "200"), ("x-after", "yes")], true)
        .to(&mut c)
        .unwrap();
    assert_eq!(
        c.take_head(next).unwrap().get(b"x-after"),
        Some(&b"yes"[..])
    );
}

#[test]
fn a_large_request_head_goes_in_continuation_frames() {
    let mut c = ClientConn::new(Settings::default());
    c.out().clear();
    let big = "v".repeat(40_000);
    let id = c
        .open(true, false, |enc, out| {
            enc.field(b":method", b"GET", out);
            enc.field(b":scheme", b"http", out);
            enc.field(b":authority", b"up", out);
            enc.field(b":path", b"/", out);
            enc.field(b"x-big", big.as_bytes(), out);
        })
        .unwrap();
    let f = frames(c.out());
    assert_eq!(f[0].0.kind, kind::HEADERS);
    assert!(f[1..].iter().all(|(h, _)| h.kind == kind::CONTINUATION));
    assert_eq!(
        f.last().unwrap().0.flags & flag::END_HEADERS,
        flag::END_HEADERS
    );
    assert!(f.iter().all(|(h, _)| h.stream == id && h.len <= 16_384));
    // And a server reads it whole.
    let mut s = ServerConn::new(Settings::default());
    let mut bytes = PREFACE.to_vec();
    frame::write_settings(&mut bytes, &[]);
    bytes.extend_from_slice(c.out());
    s.recv(&bytes).unwrap();
    let sid = s.accept().unwrap();
    let h = s.take_head(sid).unwrap().unwrap();
    assert_eq!(h.values(b"x-big").next().map(<[u8]>::len), Some(40_000));
}
