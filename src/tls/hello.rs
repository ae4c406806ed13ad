//! The ClientHello inspector (Envoy's tls_inspector): does a new inbound connection
//! speak TLS, and if so, which server name (SNI) and application protocols (ALPN)?
//!
//! [`inspect`] is a pure function over the bytes peeked (MSG_PEEK) from the socket:
//! nothing is consumed, so the same bytes later reach the TLS stack or, when they
//! are not TLS, the plaintext path. The caller peeks again with more bytes while
//! it answers [`Inspect::NeedMore`], up to [`MAX_CLIENT_HELLO`] bytes.
//!
//! It never panics and never reads out of bounds on any input (the `fuzz/`
//! target `client_hello` runs it on arbitrary bytes): every length is checked
//! against what is left before it is used, and anything malformed past the first
//! record header is [`Inspect::Invalid`] with a reason for the log. Allocation:
//! none until the hello is complete, except one copy when it spans records; then
//! one each for the server name, the ALPN list and the version list.

use std::borrow::Cow;
use std::fmt;

/// The most bytes (records and their headers) a ClientHello may take before it
/// is [`Inspect::Invalid`]. Envoy's tls_inspector uses the same bound
/// (`max_client_hello_size`: default and maximum 16 KiB, BoringSSL's
/// `SSL3_RT_MAX_PLAIN_LENGTH`); real hellos are 0.2 to 2 KiB, the large end with
/// post-quantum key shares. It is also the peek buffer the caller needs.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// TLS 1.2 (RFC 5246) and TLS 1.3 (RFC 8446) as ProtocolVersion values.
pub const TLS12: u16 = 0x0303;
pub const TLS13: u16 = 0x0304;

/// RFC 8446 §5.1: ContentType handshake(22).
const CONTENT_HANDSHAKE: u8 = 22;
/// RFC 8446 §5.1: type (1), legacy_record_version (2), length (2).
const RECORD_HEADER: usize = 5;
/// RFC 8446 §5.1: "The length MUST NOT exceed 2^14 bytes" (plaintext records).
const MAX_FRAGMENT: usize = 1 << 14;
/// RFC 8446 §4: HandshakeType client_hello(1).
const CLIENT_HELLO: u8 = 1;
/// RFC 8446 §4: msg_type (1), uint24 length (3).
const HANDSHAKE_HEADER: usize = 4;

/// RFC 6066 §3 server_name, RFC 7301 §3.1 application_layer_protocol_negotiation,
/// RFC 8446 §4.2.1 supported_versions.
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;

const TOO_LARGE: &str = "ClientHello larger than 16 KiB";

/// The verdict on the bytes peeked so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspect {
    /// Not a TLS handshake record: plaintext (an HTTP method, a server-first
    /// protocol's client, an SSLv2-format hello that neither rustls nor
    /// BoringSSL accepts). Decided from the first three bytes at most.
    NotTls,
    /// A TLS record so far, incomplete: peek again with more bytes.
    NeedMore,
    /// A complete, well-formed ClientHello.
    Hello(ClientHello),
    /// Starts as a TLS handshake record but is malformed or too large: close.
    Invalid(&'static str),
}

/// What the inbound path needs from a ClientHello to choose its filter chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The host_name of the server_name extension (RFC 6066 §3), ASCII
    /// lowercased (DNS names compare case-insensitively, RFC 4343) and without
    /// a trailing dot. `None` when the client sent no server_name.
    pub sni: Option<String>,
    /// The offered application protocols in the client's order (RFC 7301 §3.1);
    /// empty when the extension is absent.
    pub alpn: Alpn,
    /// ClientHello.legacy_version: 0x0303 from TLS 1.3 clients (RFC 8446 §4.1.2),
    /// the highest version from TLS 1.2-only ones (RFC 5246 §7.4.1.2).
    pub legacy_version: u16,
    /// The supported_versions extension in the client's order, GREASE values
    /// (RFC 8701) included; empty when absent (pre-1.3 clients).
    pub supported_versions: Vec<u16>,
    /// Bytes of the records that carry the hello, headers included: where the
    /// hello ends on the wire (whole records; bytes after it are not looked at).
    pub record_len: usize,
}

impl ClientHello {
    /// The highest version offered: from supported_versions when present (then
    /// legacy_version does not count, RFC 8446 §4.2.1), GREASE values skipped.
    pub fn max_version(&self) -> u16 {
        self.supported_versions
            .iter()
            .copied()
            .filter(|v| !is_grease(*v))
            .max()
            .unwrap_or(self.legacy_version)
    }
}

/// RFC 8701 §2: GREASE values are 0x?A?A with both bytes equal.
fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

/// The ALPN ProtocolNameList as sent (RFC 7301 §3.1), checked to be well
/// formed: one allocation for the whole list instead of one per name.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Alpn {
    /// Invariant: a sequence of `len(1) name(len)` entries with `len >= 1`.
    wire: Vec<u8>,
}

impl Alpn {
    /// The protocol names in the client's order.
    pub fn iter(&self) -> AlpnIter<'_> {
        AlpnIter { rest: &self.wire }
    }

    pub fn is_empty(&self) -> bool {
        self.wire.is_empty()
    }

    pub fn contains(&self, protocol: &[u8]) -> bool {
        self.iter().any(|p| p == protocol)
    }
}

impl fmt::Debug for Alpn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(String::from_utf8_lossy))
            .finish()
    }
}

/// Iterator over [`Alpn`]'s names.
pub struct AlpnIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for AlpnIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let mut r = Reader(self.rest);
        // The invariant makes these infallible; checked anyway, so a broken
        // invariant ends the list instead of panicking.
        let name = r.vec8("").ok()?;
        self.rest = r.0;
        Some(name)
    }
}

/// Inspects the first bytes of a connection. Only the first [`MAX_CLIENT_HELLO`]
/// bytes are looked at.
pub fn inspect(buf: &[u8]) -> Inspect {
    let (msg, record_len) = match reassemble(buf) {
        Ok(done) => done,
        Err(verdict) => return verdict,
    };
    match parse_client_hello(&msg) {
        Ok(mut hello) => {
            hello.record_len = record_len;
            Inspect::Hello(hello)
        }
        Err(why) => Inspect::Invalid(why),
    }
}

/// Collects the ClientHello handshake message from the records it spans and
/// returns it with the bytes those records take. RFC 8446 §5.1: a handshake
/// message may be fragmented across records (and real clients do: large
/// post-quantum hellos, middleboxes), but records of other types must not come
/// between its fragments. Borrowed when it fits in the first record (the
/// common case); copied otherwise.
fn reassemble(buf: &[u8]) -> Result<(Cow<'_, [u8]>, usize), Inspect> {
    let window = buf.get(..MAX_CLIENT_HELLO).unwrap_or(buf);
    // A verdict on an incomplete hello: wait, unless the window is already full.
    let need_more = || {
        if buf.len() >= MAX_CLIENT_HELLO {
            Inspect::Invalid(TOO_LARGE)
        } else {
            Inspect::NeedMore
        }
    };
    let mut pos = 0;
    let mut header = HandshakeHeader::default();
    let mut first: &[u8] = &[];
    let mut joined: Vec<u8> = Vec::new();
    let mut records = 0usize;
    loop {
        let rest = window.get(pos..).unwrap_or_default();
        record_prefix(rest, records == 0)?;
        // Even a one-byte record would not fit: no need to wait for its header.
        if pos + RECORD_HEADER >= MAX_CLIENT_HELLO {
            return Err(Inspect::Invalid(TOO_LARGE));
        }
        let Some(&[_, _, _, hi, lo]) = rest.get(..RECORD_HEADER) else {
            return Err(need_more());
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        // RFC 8446 §5.1: "Implementations MUST NOT send zero-length fragments of
        // Handshake types", and the 2^14 bound.
        if len == 0 {
            return Err(Inspect::Invalid("zero-length handshake record"));
        }
        if len > MAX_FRAGMENT {
            return Err(Inspect::Invalid("record longer than 2^14 bytes"));
        }
        // No overflow: pos <= MAX_CLIENT_HELLO and len <= 2^14.
        let end = pos + RECORD_HEADER + len;
        if end > MAX_CLIENT_HELLO {
            return Err(Inspect::Invalid(TOO_LARGE));
        }
        let body = rest.get(RECORD_HEADER..).unwrap_or_default();
        let Some(fragment) = body.get(..len) else {
            // The record is incomplete, but its first bytes may already say
            // this is not a ClientHello or one too large: no need to wait.
            header.feed(body)?;
            return Err(need_more());
        };
        header.feed(fragment)?;
        match records {
            0 => first = fragment,
            1 => {
                joined.reserve(first.len() + fragment.len());
                joined.extend_from_slice(first);
                joined.extend_from_slice(fragment);
            }
            _ => joined.extend_from_slice(fragment),
        }
        records += 1;
        pos = end;
        let Some(msg_len) = header.msg_len() else {
            continue;
        };
        if records == 1 {
            if let Some(msg) = first.get(..msg_len) {
                return Ok((Cow::Borrowed(msg), pos));
            }
        } else if joined.len() >= msg_len {
            // Bytes after the hello in its last record are not ours to judge.
            joined.truncate(msg_len);
            return Ok((Cow::Owned(joined), pos));
        }
    }
}

/// Checks as much of a record header as has arrived, so that plaintext is told
/// apart at its first byte. The first record decides TLS or not; a later one
/// that is not a handshake record breaks the hello (RFC 8446 §5.1: handshake
/// messages "MUST NOT be interleaved with other record types").
fn record_prefix(rest: &[u8], first: bool) -> Result<(), Inspect> {
    let fail = |why| {
        if first {
            Inspect::NotTls
        } else {
            Inspect::Invalid(why)
        }
    };
    // legacy_record_version (RFC 8446 §5.1): 0x0301 or 0x0303 in practice; SSL
    // 3.0 to TLS 1.3 (0x0300..=0x0304) accepted as Envoy's inspector does.
    match rest {
        [t, ..] if *t != CONTENT_HANDSHAKE => {
            Err(fail("non-handshake record inside the ClientHello"))
        }
        [_, major, ..] if *major != 3 => Err(fail("record version is not TLS")),
        [_, _, minor, ..] if *minor > 4 => Err(fail("record version is not TLS")),
        _ => Ok(()),
    }
}

/// The handshake message header (RFC 8446 §4), filled as its bytes arrive: it
/// may itself be split across records.
#[derive(Default)]
struct HandshakeHeader {
    bytes: [u8; HANDSHAKE_HEADER],
    have: usize,
}

impl HandshakeHeader {
    fn feed(&mut self, data: &[u8]) -> Result<(), Inspect> {
        for (slot, byte) in self.bytes.iter_mut().skip(self.have).zip(data) {
            *slot = *byte;
            self.have += 1;
        }
        // RFC 8446 §4.1.2: the client's first message is a ClientHello.
        if self.have >= 1 && self.bytes[0] != CLIENT_HELLO {
            return Err(Inspect::Invalid(
                "first handshake message is not a ClientHello",
            ));
        }
        if self
            .msg_len()
            .is_some_and(|len| RECORD_HEADER + len > MAX_CLIENT_HELLO)
        {
            return Err(Inspect::Invalid(TOO_LARGE));
        }
        Ok(())
    }

    /// The whole message's length, header included, once the header is known.
    fn msg_len(&self) -> Option<usize> {
        let [_, a, b, c] = self.bytes;
        (self.have == HANDSHAKE_HEADER).then(|| {
            HANDSHAKE_HEADER + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c))
        })
    }
}

/// A cursor over TLS's vectors (RFC 8446 §3.4): every read checks what is left.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], &'static str> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(what)?;
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, &'static str> {
        let (&b, rest) = self.0.split_first().ok_or(what)?;
        self.0 = rest;
        Ok(b)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, &'static str> {
        let hi = self.u8(what)?;
        let lo = self.u8(what)?;
        Ok(u16::from_be_bytes([hi, lo]))
    }

    /// `opaque x<..2^8-1>`: a one-byte length, then that many bytes.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], &'static str> {
        let n = self.u8(what)?;
        self.take(usize::from(n), what)
    }

    /// `opaque x<..2^16-1>`: a two-byte length, then that many bytes.
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], &'static str> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn end(&self, what: &'static str) -> Result<(), &'static str> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(what)
        }
    }
}

/// Parses the ClientHello message (header included), RFC 8446 §4.1.2:
///
/// ```text
/// ProtocolVersion legacy_version; Random random (32);
/// opaque legacy_session_id<0..32>; CipherSuite cipher_suites<2..2^16-2>;
/// opaque legacy_compression_methods<1..2^8-1>; Extension extensions<8..2^16-1>;
/// ```
///
/// Only what the inbound path needs is interpreted; the TLS stack that
/// terminates the connection checks the rest (key shares, signature schemes).
fn parse_client_hello(msg: &[u8]) -> Result<ClientHello, &'static str> {
    let mut r = Reader(msg);
    r.take(HANDSHAKE_HEADER, "ClientHello truncated")?;
    let legacy_version = r.u16("ClientHello truncated in legacy_version")?;
    if legacy_version >> 8 != 3 {
        return Err("ClientHello legacy_version is not TLS");
    }
    r.take(32, "ClientHello truncated in random")?;
    if r.vec8("ClientHello truncated in legacy_session_id")?.len() > 32 {
        return Err("ClientHello legacy_session_id longer than 32 bytes");
    }
    let suites = r.vec16("ClientHello truncated in cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err("ClientHello cipher_suites empty or of odd length");
    }
    if r.vec8("ClientHello truncated in legacy_compression_methods")?
        .is_empty()
    {
        return Err("ClientHello without compression methods");
    }
    let mut hello = ClientHello {
        sni: None,
        alpn: Alpn::default(),
        legacy_version,
        supported_versions: Vec::new(),
        record_len: 0,
    };
    // RFC 5246 §7.4.1.2: a TLS 1.2 client may send no extensions block at all.
    if r.is_empty() {
        return Ok(hello);
    }
    let mut exts = Reader(r.vec16("ClientHello truncated in extensions")?);
    r.end("ClientHello has bytes after its extensions")?;
    let (mut sni, mut alpn, mut versions) = (false, false, false);
    while !exts.is_empty() {
        let kind = exts.u16("ClientHello extension truncated")?;
        let data = exts.vec16("ClientHello extension truncated")?;
        // RFC 8446 §4.2: "There MUST NOT be more than one extension of the same
        // type". Checked for the ones read here (a duplicate would make the
        // choice ambiguous); the TLS stack checks the others.
        let seen = match kind {
            EXT_SERVER_NAME => &mut sni,
            EXT_ALPN => &mut alpn,
            EXT_SUPPORTED_VERSIONS => &mut versions,
            _ => continue,
        };
        if std::mem::replace(seen, true) {
            return Err("ClientHello repeats an extension");
        }
        match kind {
            EXT_SERVER_NAME => hello.sni = Some(parse_server_name(data)?),
            EXT_ALPN => hello.alpn = parse_alpn(data)?,
            _ => hello.supported_versions = parse_supported_versions(data)?,
        }
    }
    Ok(hello)
}

/// RFC 6066 §3: `ServerName server_name_list<1..2^16-1>`, each entry a
/// NameType (only host_name(0) is defined) and `opaque HostName<1..2^16-1>`;
/// "The ServerNameList MUST NOT contain more than one name of the same name_type".
fn parse_server_name(data: &[u8]) -> Result<String, &'static str> {
    let mut r = Reader(data);
    let mut list = Reader(r.vec16("server_name list truncated")?);
    r.end("bytes after the server_name list")?;
    let mut name = None;
    while !list.is_empty() {
        // The layout of any other name type is undefined, so nothing after
        // one could be read: reject rather than guess (as BoringSSL does).
        if list.u8("server_name entry truncated")? != 0 {
            return Err("server_name of an unknown name_type");
        }
        let host = list.vec16("server_name host_name truncated")?;
        if name.replace(host_name(host)?).is_some() {
            return Err("server_name lists two host_names");
        }
    }
    name.ok_or("server_name list is empty")
}

/// RFC 6066 §3: HostName is "the fully qualified DNS hostname of the server",
/// ASCII, "without a trailing dot". Checked to be a plausible DNS name so that
/// what reaches logs and filter-chain matching is printable: labels of letters,
/// digits, `-` and `_` (Istio's `outbound_.PORT_._.HOST` names and SRV-style
/// labels use `_`), each 1 to 63 bytes, at most 253 in all (RFC 1035 §2.3.4).
/// One trailing dot is tolerated and dropped: some clients send it.
fn host_name(raw: &[u8]) -> Result<String, &'static str> {
    let raw = raw.strip_suffix(b".").unwrap_or(raw);
    if raw.is_empty() || raw.len() > 253 {
        return Err("server_name host_name empty or longer than 253 bytes");
    }
    for label in raw.split(|&b| b == b'.') {
        if label.is_empty() || label.len() > 63 {
            return Err("server_name host_name has an empty or over-long label");
        }
        if !label
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("server_name host_name is not a DNS name");
        }
    }
    // All ASCII, checked above.
    Ok(String::from_utf8_lossy(raw).to_ascii_lowercase())
}

/// RFC 7301 §3.1: `ProtocolName protocol_name_list<2..2^16-1>` of
/// `opaque ProtocolName<1..2^8-1>`; "Empty strings MUST NOT be included".
fn parse_alpn(data: &[u8]) -> Result<Alpn, &'static str> {
    let mut r = Reader(data);
    let list = r.vec16("ALPN list truncated")?;
    r.end("bytes after the ALPN list")?;
    if list.is_empty() {
        return Err("ALPN list is empty");
    }
    let mut names = Reader(list);
    while !names.is_empty() {
        if names.vec8("ALPN protocol name truncated")?.is_empty() {
            return Err("ALPN protocol name is empty");
        }
    }
    Ok(Alpn {
        wire: list.to_vec(),
    })
}

/// RFC 8446 §4.2.1: in a ClientHello, `ProtocolVersion versions<2..254>`.
fn parse_supported_versions(data: &[u8]) -> Result<Vec<u16>, &'static str> {
    let mut r = Reader(data);
    let list = r.vec8("supported_versions truncated")?;
    r.end("bytes after supported_versions")?;
    if list.is_empty() || list.len() % 2 != 0 {
        return Err("supported_versions empty or of odd length");
    }
    Ok(list
        .chunks_exact(2)
        .map(|v| u16::from_be_bytes([v[0], v[1]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Read;
    use std::net::TcpListener;
    use std::process::{Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use rustls::pki_types::ServerName;
    use rustls::version::{TLS12 as RUSTLS_TLS12, TLS13 as RUSTLS_TLS13};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, SupportedProtocolVersion};

    /// Istio's ALPN values: TCP mTLS, then HTTP/1.1 and HTTP/2 (issue 11).
    const ISTIO_TCP: [&[u8]; 2] = [b"istio-peer-exchange", b"istio"];
    const ISTIO_HTTP: [&[u8]; 4] = [b"istio-http/1.1", b"istio-h2", b"h2", b"http/1.1"];
    const OUTBOUND_SNI: &str = "outbound_.9080_._.reviews.default.svc.cluster.local";

    /// The bytes rustls' client sends first: its real ClientHello.
    fn rustls_hello(
        name: &str,
        alpn: &[&[u8]],
        versions: &[&'static SupportedProtocolVersion],
        sni: bool,
    ) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.enable_sni = sni;
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let mut conn = ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    /// The bytes `openssl s_client ARGS` sends first, read from a local listener.
    fn openssl_hello(args: &[&str]) -> Vec<u8> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut child = Command::new("openssl")
            .arg("s_client")
            .arg("-connect")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_client (Debian package openssl)");
        // Bounded: an openssl that fails before connecting must not hang the test.
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut sock = loop {
            match listener.accept() {
                Ok((sock, _)) => break sock,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "openssl never connected");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        sock.set_nonblocking(false).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 4096];
        while inspect(&bytes) == Inspect::NeedMore {
            let n = sock.read(&mut chunk).expect("openssl sent its hello");
            assert!(n > 0, "openssl closed before its hello was complete");
            bytes.extend_from_slice(&chunk[..n]);
        }
        let _ = child.kill();
        let _ = child.wait();
        bytes
    }

    fn hello(bytes: &[u8]) -> ClientHello {
        match inspect(bytes) {
            Inspect::Hello(h) => h,
            other => panic!("expected a hello, got {other:?}"),
        }
    }

    fn alpn(h: &ClientHello) -> Vec<&[u8]> {
        h.alpn.iter().collect()
    }

    /// A one-record hello's handshake bytes, re-sent as records of `size`.
    fn refragment(bytes: &[u8], size: usize) -> Vec<u8> {
        let msg = &bytes[RECORD_HEADER..];
        let mut out = Vec::new();
        for part in msg.chunks(size) {
            out.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    /// Every proper prefix of a real hello is a TLS record still arriving.
    fn assert_prefixes_need_more(bytes: &[u8]) {
        for n in 0..bytes.len() {
            assert_eq!(
                inspect(&bytes[..n]),
                Inspect::NeedMore,
                "prefix of {n} bytes"
            );
        }
    }

    #[test]
    fn rustls_istio_tcp_hello() {
        let bytes = rustls_hello(
            OUTBOUND_SNI,
            &ISTIO_TCP,
            &[&RUSTLS_TLS13, &RUSTLS_TLS12],
            true,
        );
        let h = hello(&bytes);
        assert_eq!(h.sni.as_deref(), Some(OUTBOUND_SNI));
        assert_eq!(alpn(&h), ISTIO_TCP);
        assert!(h.alpn.contains(b"istio"));
        assert_eq!(h.legacy_version, TLS12);
        assert!(h.supported_versions.contains(&TLS13));
        assert!(h.supported_versions.contains(&TLS12));
        assert_eq!(h.max_version(), TLS13);
        assert_eq!(h.record_len, bytes.len());
        assert_prefixes_need_more(&bytes);
    }

    #[test]
    fn rustls_istio_http_hello_tls13_only() {
        let bytes = rustls_hello(
            "reviews.default.svc.cluster.local",
            &ISTIO_HTTP,
            &[&RUSTLS_TLS13],
            true,
        );
        let h = hello(&bytes);
        assert_eq!(h.sni.as_deref(), Some("reviews.default.svc.cluster.local"));
        assert_eq!(alpn(&h), ISTIO_HTTP);
        assert_eq!(h.max_version(), TLS13);
        assert!(!h.supported_versions.contains(&TLS12));
        assert_prefixes_need_more(&bytes);
    }

    #[test]
    fn rustls_tls12_only_and_without_sni_or_alpn() {
        let bytes = rustls_hello("example.com", &[], &[&RUSTLS_TLS12], false);
        let h = hello(&bytes);
        assert_eq!(h.sni, None);
        assert!(h.alpn.is_empty());
        assert_eq!(h.max_version(), TLS12);
        // An IP address as the server name: rustls sends no server_name (RFC
        // 6066 §3 forbids literal addresses), so none is reported.
        let h = hello(&rustls_hello(
            "10.0.0.7",
            &[b"h2"],
            &[&RUSTLS_TLS13, &RUSTLS_TLS12],
            true,
        ));
        assert_eq!(h.sni, None);
        assert_eq!(alpn(&h), [b"h2"]);
    }

    #[test]
    fn openssl_hellos() {
        let bytes = openssl_hello(&["-servername", "x", "-alpn", "istio-http/1.1"]);
        let h = hello(&bytes);
        assert_eq!(h.sni.as_deref(), Some("x"));
        assert_eq!(alpn(&h), [b"istio-http/1.1"]);
        assert_eq!(h.max_version(), TLS13);
        assert_eq!(h.record_len, bytes.len());
        assert_prefixes_need_more(&bytes);

        let bytes = openssl_hello(&[
            "-tls1_2",
            "-servername",
            "Outbound_.8080_._.Ratings.default.svc.cluster.local.",
            "-alpn",
            "istio-peer-exchange,istio",
        ]);
        let h = hello(&bytes);
        assert_eq!(
            h.sni.as_deref(),
            Some("outbound_.8080_._.ratings.default.svc.cluster.local")
        );
        assert_eq!(alpn(&h), ISTIO_TCP);
        assert_eq!(h.max_version(), TLS12);
        assert_prefixes_need_more(&bytes);
        for size in [1, 3, 64] {
            assert_eq!(hello(&refragment(&bytes, size)).sni, h.sni);
        }
    }

    #[test]
    fn hello_split_over_records() {
        let bytes = rustls_hello(
            OUTBOUND_SNI,
            &ISTIO_HTTP,
            &[&RUSTLS_TLS13, &RUSTLS_TLS12],
            true,
        );
        let whole = hello(&bytes);
        // 1 and 2 split the handshake header itself across records.
        for size in [1, 2, 3, 4, 5, 7, 100, 255, 16384] {
            let split = refragment(&bytes, size);
            let h = hello(&split);
            assert_eq!(h.sni, whole.sni, "records of {size}");
            assert_eq!(h.alpn, whole.alpn);
            assert_eq!(h.supported_versions, whole.supported_versions);
            assert_eq!(h.record_len, split.len());
        }
        assert_prefixes_need_more(&refragment(&bytes, 7));
        // Whatever follows the hello (a second record) is not looked at.
        let mut more = refragment(&bytes, 100);
        let record_len = more.len();
        more.extend_from_slice(&[23, 3, 3, 0, 1, 0xff, b'x']);
        assert_eq!(hello(&more).record_len, record_len);
    }

    #[test]
    fn not_tls_from_the_first_bytes() {
        for bytes in [
            &b"G"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST /x HTTP/1.1\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"\x00",
            // An SSLv2-format hello (RFC 5246 Appendix E.2): neither rustls nor
            // BoringSSL accepts it.
            b"\x80\x2e\x01\x03\x01",
            b"\x15\x03\x03\x00\x02\x02\x28", // an alert record
            b"\x17\x03\x03",                 // application data
            b"\x16\x02",
            b"\x16\x03\x05",
            b"\x16\xff\xff\x00\x10",
        ] {
            assert_eq!(inspect(bytes), Inspect::NotTls, "{bytes:?}");
        }
        for bytes in [
            &b""[..],
            b"\x16",
            b"\x16\x03",
            b"\x16\x03\x01",
            b"\x16\x03\x01\x02",
        ] {
            assert_eq!(inspect(bytes), Inspect::NeedMore, "{bytes:?}");
        }
    }

    /// A hand-made ClientHello record, for the malformed cases.
    fn synth(
        version: u16,
        session: &[u8],
        suites: &[u8],
        comp: &[u8],
        exts: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut body = version.to_be_bytes().to_vec();
        body.extend_from_slice(&[7; 32]);
        body.push(session.len() as u8);
        body.extend_from_slice(session);
        body.extend_from_slice(&(suites.len() as u16).to_be_bytes());
        body.extend_from_slice(suites);
        body.push(comp.len() as u8);
        body.extend_from_slice(comp);
        if let Some(exts) = exts {
            body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
            body.extend_from_slice(exts);
        }
        record(&handshake(CLIENT_HELLO, &body))
    }

    fn handshake(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut msg = vec![kind];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(body);
        msg
    }

    fn record(fragment: &[u8]) -> Vec<u8> {
        let mut out = vec![CONTENT_HANDSHAKE, 3, 1];
        out.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
        out.extend_from_slice(fragment);
        out
    }

    fn ext(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    fn vec16(data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(data);
        out
    }

    fn sni_ext(names: &[(u8, &[u8])]) -> Vec<u8> {
        let mut list = Vec::new();
        for (kind, name) in names {
            list.push(*kind);
            list.extend_from_slice(&vec16(name));
        }
        ext(EXT_SERVER_NAME, &vec16(&list))
    }

    fn with_exts(exts: &[Vec<u8>]) -> Vec<u8> {
        synth(TLS12, &[], &[0x13, 0x01], &[0], Some(&exts.concat()))
    }

    #[test]
    fn hand_made_well_formed_hellos() {
        // TLS 1.2 allows no extensions block at all (RFC 5246 §7.4.1.2).
        let h = hello(&synth(TLS12, &[1; 32], &[0, 0x2f], &[0], None));
        assert_eq!(
            (h.sni.clone(), h.alpn.is_empty(), h.max_version()),
            (None, true, TLS12)
        );
        let h = hello(&with_exts(&[]));
        assert_eq!(h.sni, None);
        // Unknown extensions are skipped; GREASE versions do not count as the maximum.
        let h = hello(&with_exts(&[
            ext(0x0a0a, &[]),
            sni_ext(&[(0, b"a-b_c.D9")]),
            ext(EXT_SUPPORTED_VERSIONS, &[4, 0x7a, 0x7a, 3, 3]),
        ]));
        assert_eq!(h.sni.as_deref(), Some("a-b_c.d9"));
        assert_eq!(h.max_version(), TLS12);
    }

    #[test]
    fn malformed_hellos_are_invalid() {
        let long_label = [b'a'; 64];
        let long_name = [b"a.".repeat(127), b"a".to_vec()].concat(); // 255 bytes
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("zero-length record", vec![22, 3, 1, 0, 0]),
            ("record over 2^14", vec![22, 3, 1, 0x40, 0x01]),
            ("server hello", record(&handshake(2, &[3, 3]))),
            ("declared too large", vec![22, 3, 1, 0, 0x10, 1, 0, 0x40, 0]),
            (
                "legacy_version 2.0",
                synth(0x0200, &[], &[0, 0x2f], &[0], None),
            ),
            (
                "session id of 33",
                synth(TLS12, &[0; 33], &[0, 0x2f], &[0], None),
            ),
            (
                "odd cipher suites",
                synth(TLS12, &[], &[0, 0x2f, 0], &[0], None),
            ),
            ("no cipher suites", synth(TLS12, &[], &[], &[0], None)),
            ("no compression", synth(TLS12, &[], &[0, 0x2f], &[], None)),
            ("extensions overrun", {
                let mut b = with_exts(&[ext(99, &[1, 2, 3])]);
                let n = b.len();
                b[n - 4] = 9; // the extension now says 9 bytes, 3 follow
                b
            }),
            ("bytes after extensions", {
                let mut body = with_exts(&[])[9..].to_vec();
                body.push(0);
                record(&handshake(CLIENT_HELLO, &body))
            }),
            (
                "truncated in random",
                record(&handshake(CLIENT_HELLO, &[3, 3, 1, 2])),
            ),
            ("empty body", record(&handshake(CLIENT_HELLO, &[]))),
            (
                "duplicate SNI",
                with_exts(&[sni_ext(&[(0, b"a")]), sni_ext(&[(0, b"b")])]),
            ),
            (
                "two host names",
                with_exts(&[sni_ext(&[(0, b"a"), (0, b"b")])]),
            ),
            ("unknown name type", with_exts(&[sni_ext(&[(1, b"a")])])),
            (
                "empty SNI list",
                with_exts(&[ext(EXT_SERVER_NAME, &vec16(&[]))]),
            ),
            (
                "empty SNI extension",
                with_exts(&[ext(EXT_SERVER_NAME, &[])]),
            ),
            ("empty host name", with_exts(&[sni_ext(&[(0, b"")])])),
            ("host name space", with_exts(&[sni_ext(&[(0, b"a b")])])),
            ("host name NUL", with_exts(&[sni_ext(&[(0, b"a\0.com")])])),
            (
                "host name UTF-8",
                with_exts(&[sni_ext(&[(0, "é.com".as_bytes())])]),
            ),
            ("empty label", with_exts(&[sni_ext(&[(0, b"a..b")])])),
            ("leading dot", with_exts(&[sni_ext(&[(0, b".a")])])),
            ("only a dot", with_exts(&[sni_ext(&[(0, b".")])])),
            ("label of 64", with_exts(&[sni_ext(&[(0, &long_label)])])),
            ("name of 255", with_exts(&[sni_ext(&[(0, &long_name)])])),
            ("empty ALPN list", with_exts(&[ext(EXT_ALPN, &vec16(&[]))])),
            (
                "empty ALPN name",
                with_exts(&[ext(EXT_ALPN, &vec16(&[2, b'h', b'2', 0]))]),
            ),
            (
                "ALPN name overrun",
                with_exts(&[ext(EXT_ALPN, &vec16(&[3, b'h', b'2']))]),
            ),
            (
                "ALPN trailing",
                with_exts(&[ext(EXT_ALPN, &[vec16(&[1, b'x']), vec![0]].concat())]),
            ),
            (
                "duplicate ALPN",
                with_exts(&[
                    ext(EXT_ALPN, &vec16(&[1, b'x'])),
                    ext(EXT_ALPN, &vec16(&[1, b'y'])),
                ]),
            ),
            (
                "odd versions",
                with_exts(&[ext(EXT_SUPPORTED_VERSIONS, &[3, 3, 4, 3])]),
            ),
            (
                "empty versions",
                with_exts(&[ext(EXT_SUPPORTED_VERSIONS, &[0])]),
            ),
            ("alert inside the hello", {
                let split = refragment(&with_exts(&[sni_ext(&[(0, b"a")])]), 10);
                [&split[..15], &[21, 3, 3, 0, 2, 2, 40], &split[15..]].concat()
            }),
            ("bad version in a later record", {
                let mut split = refragment(&with_exts(&[]), 10);
                split[16] = 4;
                split
            }),
        ];
        for (name, bytes) in cases {
            assert!(
                matches!(inspect(&bytes), Inspect::Invalid(_)),
                "{name}: {:?}",
                inspect(&bytes)
            );
        }
    }

    #[test]
    fn oversized_hellos_are_invalid_without_waiting_for_16_kib() {
        // A message type or a length that cannot fit is known from a prefix.
        assert!(matches!(
            inspect(&[22, 3, 1, 0, 10, 2]),
            Inspect::Invalid(_)
        ));
        assert!(matches!(
            inspect(&[22, 3, 1, 0, 10, 1, 0, 0x40, 0]),
            Inspect::Invalid(_)
        ));
        // Declared to fit, but fragmented so finely that its records exceed the cap.
        let big = with_exts(&[ext(21, &[0; 3000])]); // a padding extension (RFC 7685)
        assert!(matches!(inspect(&big), Inspect::Hello(_)));
        let split = refragment(&big, 1); // 6 bytes a byte
        assert!(matches!(
            inspect(&split[..MAX_CLIENT_HELLO - 3]),
            Inspect::Invalid(_)
        ));
        assert_eq!(inspect(&split[..MAX_CLIENT_HELLO - 6]), Inspect::NeedMore);
        assert!(matches!(inspect(&split), Inspect::Invalid(_)));
        // The cap counts the record header, as Envoy's peek buffer does: a
        // hello of exactly 16 KiB on the wire is accepted, one byte more is not.
        let max = with_exts(&[ext(21, &vec![0; MAX_CLIENT_HELLO - 56])]);
        assert_eq!(max.len(), MAX_CLIENT_HELLO);
        assert_eq!(hello(&max).record_len, MAX_CLIENT_HELLO);
        let over = with_exts(&[ext(21, &vec![0; MAX_CLIENT_HELLO - 55])]);
        assert_eq!(inspect(&over[..6]), Inspect::Invalid(TOO_LARGE));
    }

    /// Damaged real hellos: every byte changed, every length field cut short.
    /// Never a panic, and a hello cut inside a complete record is never a Hello.
    #[test]
    fn damaged_real_hellos_never_panic() {
        let bytes = rustls_hello(
            OUTBOUND_SNI,
            &ISTIO_HTTP,
            &[&RUSTLS_TLS13, &RUSTLS_TLS12],
            true,
        );
        for i in 0..bytes.len() {
            for v in [0u8, 1, 0x7f, 0x80, 0xff, bytes[i] ^ 1] {
                let mut b = bytes.clone();
                b[i] = v;
                let _ = inspect(&b);
                let _ = inspect(&refragment(&b, 50));
            }
        }
        let msg = &bytes[RECORD_HEADER..];
        for cut in 1..msg.len() {
            let short = record(&msg[..cut]);
            assert!(
                matches!(inspect(&short), Inspect::NeedMore | Inspect::Invalid(_)),
                "{cut}"
            );
        }
    }

    #[test]
    fn alpn_debug_and_iteration() {
        let a = parse_alpn(&vec16(&[
            2, b'h', b'2', 8, b'h', b't', b't', b'p', b'/', b'1', b'.', b'1',
        ]))
        .unwrap();
        assert_eq!(format!("{a:?}"), r#"["h2", "http/1.1"]"#);
        assert!(a.contains(b"http/1.1") && !a.contains(b"h3"));
    }

    #[test]
    fn grease() {
        assert!(is_grease(0x0a0a) && is_grease(0xfafa) && is_grease(0x3a3a));
        assert!(!is_grease(0x0304) && !is_grease(0x0a1a));
    }
}
