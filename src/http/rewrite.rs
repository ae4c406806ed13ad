//! Turning a parsed head into the head the proxy sends on: hop-by-hop removal,
//! X-Forwarded-*, X-Request-Id, route header operations, and serialization.
//!
//! The proxy never forwards the peer's framing headers: Content-Length and
//! Transfer-Encoding are written from the outgoing [`BodyFraming`], so what the
//! next hop reads as the message length is what this proxy decided it is.

use std::cell::Cell;
use std::net::IpAddr;

use super::field::Field;
use super::head::{
    list_elements, BodyFraming, HeaderSpan, Method, RequestView, ResponseView, Version,
};
use crate::policy::shadow_host;

/// Hop-by-hop fields (RFC 9110 §7.6.1, plus the legacy Proxy-Connection and
/// Keep-Alive): meaningful for one connection only, never forwarded.
/// Upgrade is forwarded only when the proxy carries the upgrade through.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    Field::of(name).is_hop_by_hop()
}

/// A byte of a token (RFC 9110 §5.6.2), in [`TOKEN_CLASS`].
const TOKEN: u8 = 1;
/// A byte of a token that is not an uppercase letter (HTTP/2's field names,
/// RFC 9113 §8.2.1).
const LOWER_TOKEN: u8 = 2;

/// tchar (RFC 9110 §5.6.2): a byte of a token.
pub(crate) const fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// field-vchar / SP / HTAB (RFC 9110 §5.5): a byte a field value may hold.
pub(crate) const fn is_field_byte(b: u8) -> bool {
    matches!(b, b'\t' | b' '..=b'~' | 0x80..=0xff)
}

/// Each byte's token classes ([`is_tchar`]): one load per byte of a field
/// name, where a test of the sixteen punctuation characters in turn cost up
/// to sixteen compares (every HTTP/2 field name is checked as it is decoded).
static TOKEN_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = match (is_tchar(c), c.is_ascii_uppercase()) {
            (false, _) => 0,
            (true, true) => TOKEN,
            (true, false) => TOKEN | LOWER_TOKEN,
        };
        b += 1;
    }
    t
};

/// True when `name` is not empty and every byte has `class`; no early
/// exit (names are short, and a branch per byte costs more than a load).
#[inline]
fn all_in_class(name: &[u8], class: u8) -> bool {
    !name.is_empty()
        && name
            .iter()
            .fold(class, |acc, &b| acc & TOKEN_CLASS[b as usize])
            != 0
}

/// token (RFC 9110 §5.6.2): what a field name may be.
pub fn is_valid_header_name(name: &[u8]) -> bool {
    all_in_class(name, TOKEN)
}

/// A token without uppercase letters: a field name as HTTP/2 carries it
/// (RFC 9113 §8.2.1).
pub fn is_lowercase_token(name: &[u8]) -> bool {
    all_in_class(name, LOWER_TOKEN)
}

/// field-value (RFC 9110 §5.5) without leading/trailing whitespace: no CR, LF or NUL
/// can reach the wire through configuration.
pub fn is_valid_header_value(value: &[u8]) -> bool {
    let edges_ok =
        !matches!(value.first(), Some(b' ' | b'\t')) && !matches!(value.last(), Some(b' ' | b'\t'));
    edges_ok && value_bytes_ok(value)
}

/// Every byte is a [`is_field_byte`] (HTAB, SP, visible ASCII, obs-text): no
/// other control character, no DEL. Eight bytes at a time: a word with no byte
/// below 0x20 and none equal to 0x7f passes whole; only a word that has one
/// (a tab, most likely) is looked at byte by byte. A value's last bytes are
/// the word that ends it (overlapping the one before), a short value is
/// padded to a word: no byte-by-byte tail.
#[inline]
fn value_bytes_ok(value: &[u8]) -> bool {
    let n = value.len();
    if n < 8 {
        let mut w = [b'a'; 8];
        w[..n].copy_from_slice(value);
        return word_ok(w);
    }
    let mut words = value.chunks_exact(8);
    let whole = words.all(|c| word_ok(c.try_into().unwrap_or([0; 8])));
    whole && (n % 8 == 0 || word_ok(value[n - 8..].try_into().unwrap_or([0; 8])))
}

/// See [`value_bytes_ok`].
#[inline]
fn word_ok(word: [u8; 8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let w = u64::from_ne_bytes(word);
    // "Has a byte below n" (n <= 0x80) and "has a zero byte" of w ^ 0x7f..:
    // exact as yes/no answers (Hacker's Delight, Anderson's bit hacks).
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    let x = w ^ (ONES * 0x7f);
    let del = x.wrapping_sub(ONES) & !x & HIGHS;
    below_space | del == 0 || word.iter().all(|&b| is_field_byte(b))
}

/// A configured header field (lowercase name, valid value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderField {
    pub name: Box<[u8]>,
    pub value: Box<[u8]>,
}

impl HeaderField {
    pub fn new(name: &[u8], value: &[u8]) -> HeaderField {
        HeaderField {
            name: name.to_ascii_lowercase().into(),
            value: value.into(),
        }
    }
}

/// Header edits from a route, applied in the order remove, set, add.
/// Names are lowercase and values valid (checked when the config is validated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderOps {
    /// Drop every field with this name.
    pub remove: Vec<Box<[u8]>>,
    /// Replace every field with this name by one with this value.
    pub set: Vec<HeaderField>,
    /// Append a field, keeping existing ones.
    pub add: Vec<HeaderField>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Whether an incoming field of this name is dropped (removed or replaced).
    pub(crate) fn drops(&self, name: &[u8]) -> bool {
        self.remove.iter().any(|n| n.eq_ignore_ascii_case(name))
            || self.set.iter().any(|f| f.name.eq_ignore_ascii_case(name))
    }

    /// The set and add fields, in order.
    pub(crate) fn write_new(&self, out: &mut impl FieldSink) {
        for f in self.set.iter().chain(&self.add) {
            out.field(&f.name, &f.value);
        }
    }
}

/// What the proxy changes when forwarding a request upstream.
#[derive(Debug, Clone, Copy)]
pub struct RequestRewrite<'a> {
    /// New path and query (e.g. after a prefix rewrite); else the original, in
    /// origin-form (an absolute-form target is reduced to its path).
    pub path: Option<&'a [u8]>,
    /// New Host; else the request's authority. A request without one (HTTP/1.0)
    /// gets an empty Host, as RFC 9112 §3.2 prescribes when there is no authority.
    pub host: Option<&'a [u8]>,
    /// Appended to X-Forwarded-For (merging existing fields into one).
    pub client_addr: Option<IpAddr>,
    /// Sets X-Forwarded-Proto ("http" / "https").
    pub forwarded_proto: Option<&'a str>,
    /// ...only when the client sent none: a client's X-Forwarded-Proto is
    /// kept, as Envoy keeps it without `use_remote_address` (Istio's
    /// sidecars); with it, ours replaces the client's.
    pub forwarded_proto_if_absent: bool,
    /// Generates X-Request-Id when the request has none.
    pub request_id: Option<&'a RequestIdGenerator>,
    /// X-Forwarded-Client-Cert: `None` drops what the client sent (Envoy's
    /// default `SANITIZE`: a header naming an identity must come from a proxy
    /// that verified it); `Some(element)` appends this connection's verified
    /// client certificate (`By=..;Hash=..;URI=..`) to it, as Istio's inbound
    /// sidecar does (`APPEND_FORWARD`, mTLS connections only).
    pub client_cert: Option<&'a str>,
    pub ops: Option<&'a HeaderOps>,
    /// The framing of the body as it will be sent upstream.
    pub framing: BodyFraming,
    /// Carry `Connection: upgrade` and the Upgrade field through (WebSocket).
    pub upgrade: bool,
}

impl RequestRewrite<'_> {
    /// Whether this hop's X-Forwarded-Proto replaces the client's:
    /// always when it sets one, unless `forwarded_proto_if_absent` and the
    /// client sent one (`client_sent` is asked only then).
    pub(crate) fn replaces_proto(&self, client_sent: impl FnOnce() -> bool) -> bool {
        self.forwarded_proto.is_some() && !(self.forwarded_proto_if_absent && client_sent())
    }
}

impl<'a> RequestRewrite<'a> {
    /// Forwards the request as is, framing kept, upgrade kept if requested.
    pub fn passthrough(req: &RequestView<'a>) -> RequestRewrite<'a> {
        RequestRewrite {
            path: None,
            host: None,
            client_addr: None,
            forwarded_proto: None,
            forwarded_proto_if_absent: false,
            request_id: None,
            client_cert: None,
            ops: None,
            framing: req.head.framing,
            upgrade: req.head.upgrade.is_some(),
        }
    }
}

/// Facts about what [`write_request`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The X-Request-Id generated for this request, if one was.
    pub generated_request_id: Option<RequestId>,
}

/// Whether `name` is listed in a Connection field of the message, i.e. declared
/// hop-by-hop by the sender (RFC 9110 §7.6.1).
pub(crate) fn named_in_connection<'a>(
    mut connection_values: impl Iterator<Item = &'a [u8]>,
    name: &[u8],
) -> bool {
    connection_values.any(|v| list_elements(v).any(|t| t.eq_ignore_ascii_case(name)))
}

/// Serializes the upstream request head for `req` into `out` (HTTP/1.1 always:
/// RFC 9110 §6.2, a proxy sends its own version).
pub fn write_request(req: &RequestView<'_>, rw: &RequestRewrite<'_>, out: &mut Vec<u8>) -> Written {
    let head = req.head;
    let headers = req.headers();
    out.reserve(head.head_len + 128);
    out.extend_from_slice(req.method());
    out.push(b' ');
    let target = match (rw.path, head.method) {
        (Some(p), _) => p,
        (None, Method::Connect) => req.target(),
        (None, _) => req.path_and_query(),
    };
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    push_header(
        out,
        b"host",
        rw.host.or_else(|| req.authority()).unwrap_or_default(),
    );

    let check_connection = head.connection.other;
    let ops = rw.ops.filter(|o| !o.is_empty());
    let mut had_request_id = false;
    let replaces_proto = rw.replaces_proto(|| headers.contains(b"x-forwarded-proto"));
    let buf = headers.buf();
    let mut lines = Lines::new(buf);
    for h in headers.spans() {
        let (field, name) = (h.field, h.name.get(buf));
        let ours = match field {
            Field::Host | Field::XForwardedClientCert => true,
            Field::ContentLength => rw.framing != BodyFraming::None,
            Field::XForwardedFor => rw.client_addr.is_some(),
            Field::XForwardedProto => replaces_proto,
            f => f.is_hop_by_hop(),
        };
        if ours
            || (check_connection && named_in_connection(headers.get_all(b"connection"), name))
            || ops.is_some_and(|o| o.drops(name))
        {
            continue;
        }
        had_request_id |= field == Field::XRequestId;
        lines.push(out, h);
    }
    lines.flush(out);

    let mut added = H1Fields(out);
    push_forwarded(&mut added, rw, replaces_proto, |n| {
        headers.get_all(n.as_bytes())
    });
    let generated_request_id = push_request_id_and_ops(&mut added, rw, ops, had_request_id);
    push_framing(out, rw.framing);
    if rw.upgrade {
        if let Some(upgrade) = req.upgrade() {
            push_header(out, b"connection", b"upgrade");
            push_header(out, b"upgrade", upgrade);
        }
    }
    out.extend_from_slice(b"\r\n");
    Written {
        generated_request_id,
    }
}

/// Where the fields this hop adds go: an HTTP/1 head being written
/// ([`H1Fields`]), or an HTTP/2 request's field list
/// (`h2::forward::UpRequest`). The rules ([`push_forwarded`],
/// [`push_request_id_and_ops`]) are written once for every writer.
pub(crate) trait FieldSink {
    /// A field whose value `value` appends piece by piece.
    fn field_with(&mut self, name: &[u8], value: impl FnOnce(&mut Vec<u8>));

    fn field(&mut self, name: &[u8], value: &[u8]) {
        self.field_with(name, |out| out.extend_from_slice(value));
    }
}

/// An HTTP/1 head being written: fields as `name: value` lines.
pub(crate) struct H1Fields<'a>(pub &'a mut Vec<u8>);

impl FieldSink for H1Fields<'_> {
    fn field_with(&mut self, name: &[u8], value: impl FnOnce(&mut Vec<u8>)) {
        self.0.extend_from_slice(name);
        self.0.extend_from_slice(b": ");
        value(self.0);
        self.0.extend_from_slice(b"\r\n");
    }
}

/// The fields this hop adds after the client's, for every writer:
/// X-Forwarded-For, one comma-separated list with the nearest client last
/// (RFC 7239 §5.2's de-facto predecessor); X-Forwarded-Proto where
/// `replaces_proto`; X-Forwarded-Client-Cert, one list with earlier hops
/// first (Envoy's XFCC). `prev(name)` gives the client's values of a
/// field, which the caller did not copy.
pub(crate) fn push_forwarded<'v, I: Iterator<Item = &'v [u8]>>(
    out: &mut impl FieldSink,
    rw: &RequestRewrite<'_>,
    replaces_proto: bool,
    prev: impl Fn(&'static str) -> I,
) {
    if let Some(addr) = rw.client_addr {
        out.field_with(b"x-forwarded-for", |out| {
            for v in prev("x-forwarded-for").filter(|v| !v.is_empty()) {
                out.extend_from_slice(v);
                out.extend_from_slice(b", ");
            }
            push_ip(out, addr);
        });
    }
    if let Some(proto) = rw.forwarded_proto.filter(|_| replaces_proto) {
        out.field(b"x-forwarded-proto", proto.as_bytes());
    }
    if let Some(element) = rw.client_cert {
        out.field_with(b"x-forwarded-client-cert", |out| {
            for v in prev("x-forwarded-client-cert").filter(|v| !v.is_empty()) {
                out.extend_from_slice(v);
                out.push(b',');
            }
            out.extend_from_slice(element.as_bytes());
        });
    }
}

/// X-Request-Id when the client sent none (`had_request_id`) and the
/// route does not set one, then the route's set and add fields (`ops`, the
/// non-empty operations); returns the id generated. For every writer.
pub(crate) fn push_request_id_and_ops(
    out: &mut impl FieldSink,
    rw: &RequestRewrite<'_>,
    ops: Option<&HeaderOps>,
    had_request_id: bool,
) -> Option<RequestId> {
    let mut generated = None;
    if let Some(generator) = rw.request_id {
        let set_by_route = ops.is_some_and(|o| o.set.iter().any(|f| &*f.name == b"x-request-id"));
        if !had_request_id && !set_by_route {
            let id = generator.next_id();
            out.field(b"x-request-id", id.as_bytes());
            generated = Some(id);
        }
    }
    if let Some(ops) = ops {
        ops.write_new(out);
    }
    generated
}

/// The head of a mirrored copy of a request: `head` as [`write_request`]
/// wrote it, with its Host given the `-shadow` suffix ([`shadow_host`]), as
/// Envoy's `request_mirror_policies` send it. Relies on `write_request`
/// writing Host as the first field; `None` if `head` does not start that way
/// (then nothing is mirrored rather than a copy the shadow could take for
/// the real request).
pub fn shadow_request_head(head: &[u8]) -> Option<Vec<u8>> {
    const HOST: &[u8] = b"host: ";
    let line_end = head.windows(2).position(|w| w == b"\r\n")? + 2;
    let rest = head.get(line_end..)?;
    if !rest.starts_with(HOST) {
        return None;
    }
    let value_start = line_end + HOST.len();
    let value_len = head
        .get(value_start..)?
        .windows(2)
        .position(|w| w == b"\r\n")?;
    let value = head.get(value_start..value_start + value_len)?;
    let shadow = shadow_host(value);
    let mut out = Vec::with_capacity(head.len() + shadow.len());
    out.extend_from_slice(head.get(..value_start)?);
    out.extend_from_slice(&shadow);
    out.extend_from_slice(head.get(value_start + value_len..)?);
    Some(out)
}

/// What the proxy changes when forwarding a response downstream.
#[derive(Debug, Clone, Copy)]
pub struct ResponseRewrite<'a> {
    pub ops: Option<&'a HeaderOps>,
    /// The framing of the body as it will be sent downstream (`None` keeps the
    /// upstream's Content-Length, which for HEAD and 304 describes another body).
    pub framing: BodyFraming,
    /// Whether the downstream connection stays open after this response.
    pub keep_alive: bool,
    /// The client's version: an HTTP/1.0 client needs `Connection: keep-alive`.
    pub client_version: Version,
}

/// Serializes the downstream response head for `resp` into `out`.
pub fn write_response(resp: &ResponseView<'_>, rw: &ResponseRewrite<'_>, out: &mut Vec<u8>) {
    let head = resp.head;
    let headers = resp.headers();
    out.reserve(head.head_len + 64);
    let reason = resp.reason();
    let reason = if reason.is_empty() {
        reason_phrase(head.status).as_bytes()
    } else {
        reason
    };
    push_status_line(out, head.status, reason);

    let check_connection = head.connection.other;
    let ops = rw.ops.filter(|o| !o.is_empty());
    let buf = headers.buf();
    let mut lines = Lines::new(buf);
    for h in headers.spans() {
        let (field, name) = (h.field, h.name.get(buf));
        if field.is_hop_by_hop()
            || (rw.framing != BodyFraming::None && field == Field::ContentLength)
            || (check_connection && named_in_connection(headers.get_all(b"connection"), name))
            || ops.is_some_and(|o| o.drops(name))
        {
            continue;
        }
        lines.push(out, h);
    }
    lines.flush(out);
    if let Some(ops) = ops {
        ops.write_new(&mut H1Fields(out));
    }
    push_framing(out, rw.framing);
    if let Some(upgrade) = resp.upgrade() {
        push_header(out, b"connection", b"upgrade");
        push_header(out, b"upgrade", upgrade);
    } else if !rw.keep_alive || rw.framing == BodyFraming::CloseDelimited {
        push_header(out, b"connection", b"close");
    } else if rw.client_version == Version::Http10 {
        push_header(out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
}

/// The interim response sent when the proxy accepts an `Expect: 100-continue`.
pub const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A response generated by the proxy itself (errors, direct responses,
/// redirects, injected faults). A 1xx, 204 or 304 gets neither the body nor a
/// Content-Length: it cannot have content (RFC 9110 §15.3.5, §15.4.5; §8.6
/// forbids Content-Length on 1xx and 204), and a client would read the bytes
/// as the start of the next response.
pub fn write_local_response(
    status: u16,
    headers: &[(&[u8], &[u8])],
    body: &[u8],
    keep_alive: bool,
    out: &mut Vec<u8>,
) {
    let bodiless = matches!(status, 100..=199 | 204 | 304);
    let body = if bodiless { &[][..] } else { body };
    out.reserve(64 + body.len());
    push_status_line(out, status, reason_phrase(status).as_bytes());
    for (n, v) in headers {
        push_header(out, n, v);
    }
    if !bodiless {
        push_framing(out, BodyFraming::Length(body.len() as u64));
    }
    if !keep_alive {
        push_header(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Reason phrases for the statuses a proxy sends (RFC 9110 §15); the phrase is
/// informational only (RFC 9112 §4), so unknown codes get an empty one.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Kept header fields written out as their lines came, a run of adjacent
/// lines at a time: a field whose line is already what [`push_header`]
/// writes (`name: value` CRLF, one space after the colon, no trailing
/// whitespace, as almost every sender writes them) joins the run when it
/// follows the last kept line, and a run is one copy. Any other field is
/// rewritten by `push_header`. The output is the same bytes either way;
/// only the number of copies changes (four per field before).
struct Lines<'b> {
    buf: &'b [u8],
    /// The pending run, `start..end` in `buf` (empty: none).
    start: usize,
    end: usize,
}

impl<'b> Lines<'b> {
    fn new(buf: &'b [u8]) -> Lines<'b> {
        Lines {
            buf,
            start: 0,
            end: 0,
        }
    }

    #[inline]
    fn push(&mut self, out: &mut Vec<u8>, h: &HeaderSpan) {
        let (name_end, value_start) = (h.name.end as usize, h.value.start as usize);
        let line_end = h.value.end as usize + 2;
        let as_written = value_start == name_end + 2
            && self.buf.get(name_end..value_start) == Some(b": ")
            && self.buf.get(line_end - 2..line_end) == Some(b"\r\n");
        if !as_written {
            self.flush(out);
            push_header(out, h.name.get(self.buf), h.value.get(self.buf));
            return;
        }
        let line_start = h.name.start as usize;
        if self.end != line_start || self.start == self.end {
            self.flush(out);
            self.start = line_start;
        }
        self.end = line_end;
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        if self.start < self.end {
            out.extend_from_slice(self.buf.get(self.start..self.end).unwrap_or_default());
        }
        self.start = 0;
        self.end = 0;
    }
}

/// `HTTP/1.1 <status> <reason>` and its line end: a proxy sends its own
/// version (RFC 9110 §6.2).
pub(crate) fn push_status_line(out: &mut Vec<u8>, status: u16, reason: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn push_framing(out: &mut Vec<u8>, framing: BodyFraming) {
    match framing {
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => push_header(out, b"transfer-encoding", b"chunked"),
        BodyFraming::None | BodyFraming::CloseDelimited => {}
    }
}

/// `n` in decimal. Up to three digits (a status, an IPv4 octet, most
/// lengths) go byte by byte: a slice of variable length is a call to memcpy,
/// six of them per request before.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    if let Ok(small) = u16::try_from(n) {
        if small < 1000 {
            for d in decimal3(small) {
                out.push(d);
            }
            return;
        }
    }
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// The ASCII digits of `n` (below 1000), no leading zeros.
fn decimal3(n: u16) -> impl Iterator<Item = u8> {
    let digits = [(n / 100) as u8, (n / 10 % 10) as u8, (n % 10) as u8];
    let skip = match n {
        0..=9 => 2,
        10..=99 => 1,
        _ => 0,
    };
    digits.into_iter().skip(skip).map(|d| b'0' + d)
}

/// Appends `ip` in its text form (IPv4 dotted decimal, IPv6 as RFC 5952,
/// which `Display` writes). IPv4 is written by hand: `Display` for an
/// address goes through the formatter's padding machinery, ~1,000
/// instructions per X-Forwarded-For in an instruction profile, ~1/50th of
/// an HTTP/2 request's whole user-space cost.
pub(crate) fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Into a stack buffer, then one copy: pushed digit by digit it
            // was ~320 instructions per X-Forwarded-For.
            let mut text = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                for d in decimal3(octet.into()) {
                    text[n] = d;
                    n += 1;
                }
            }
            out.extend_from_slice(&text[..n]);
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

/// A request id in UUID text form (8-4-4-4-12 lowercase hex, version 4 layout).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId([u8; 36]);

impl RequestId {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits and dashes are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-core X-Request-Id source: a random 60-bit seed drawn once, and a counter.
///
/// The upper half of the id is the seed, the lower half a bijective mix of the
/// counter (so consecutive ids do not look consecutive). Ids from one generator
/// never repeat (2^62 of them); two generators collide only if their random seeds
/// agree in all 60 bits. No syscall, lock or atomic per id; `!Sync` on purpose.
#[derive(Debug)]
pub struct RequestIdGenerator {
    seed: u64,
    counter: Cell<u64>,
}

const LOW62: u64 = (1 << 62) - 1;

impl RequestIdGenerator {
    /// Seeds from the OS (getrandom(2)). If that fails, falls back to std's
    /// per-process random hasher keys, which come from the same source or the clock.
    pub fn new() -> RequestIdGenerator {
        RequestIdGenerator::with_seed(crate::random_u64())
    }

    pub fn with_seed(seed: u64) -> RequestIdGenerator {
        RequestIdGenerator {
            seed,
            counter: Cell::new(0),
        }
    }

    pub fn next_id(&self) -> RequestId {
        let n = self.counter.get();
        self.counter.set(n.wrapping_add(1));
        // Version nibble 4 (bits 12..16 of the first half) and variant 0b10
        // (top two bits of the second half), as in RFC 9562 §5.4.
        let hi = (self.seed & !0xf000) | 0x4000;
        let lo = mix62(n & LOW62) | (0b10 << 62);
        format_uuid(hi, lo)
    }
}

impl Default for RequestIdGenerator {
    fn default() -> RequestIdGenerator {
        RequestIdGenerator::new()
    }
}

/// A bijection on 62-bit integers: multiplication by an odd constant and
/// xor-shift-right are each invertible modulo 2^62.
fn mix62(mut x: u64) -> u64 {
    x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15) & LOW62;
    x ^= x >> 31;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9) & LOW62;
    x ^= x >> 29;
    x
}

fn format_uuid(hi: u64, lo: u64) -> RequestId {
    // The 32 digits of hi and lo, then the dashes of 8-4-4-4-12 put in by
    // copying the groups.
    let mut digits = [0u8; 32];
    digits[..8].copy_from_slice(&hex8((hi >> 32) as u32));
    digits[8..16].copy_from_slice(&hex8(hi as u32));
    digits[16..24].copy_from_slice(&hex8((lo >> 32) as u32));
    digits[24..].copy_from_slice(&hex8(lo as u32));
    let mut out = [b'-'; 36];
    out[..8].copy_from_slice(&digits[..8]);
    out[9..13].copy_from_slice(&digits[8..12]);
    out[14..18].copy_from_slice(&digits[12..16]);
    out[19..23].copy_from_slice(&digits[16..20]);
    out[24..].copy_from_slice(&digits[20..]);
    RequestId(out)
}

/// The 8 lowercase hex digits of `x`, most significant first, computed in
/// one u64 (a byte per nibble) instead of a table lookup per digit.
fn hex8(x: u32) -> [u8; 8] {
    const ONES: u64 = 0x0101_0101_0101_0101;
    // Spread the nibbles over the bytes: nibble k (from the top) in byte k.
    let mut v = u64::from(x.swap_bytes());
    v = (v | (v << 16)) & 0x0000_ffff_0000_ffff;
    v = (v | (v << 8)) & 0x00ff_00ff_00ff_00ff;
    // Each byte holds one byte of x (in big-endian order): high nibble to
    // the lower address, low nibble to the next one.
    v = ((v >> 4) & 0x000f_000f_000f_000f) | ((v & 0x000f_000f_000f_000f) << 8);
    // 0-9 -> '0'-'9', 10-15 -> 'a'-'f' (39 = 'a' - '0' - 10).
    let letters = ((v + 6 * ONES) >> 4) & ONES;
    (v + u64::from(b'0') * ONES + letters * 39).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::head::{
        parse_request, parse_response, Limits, Parsed, RequestHead, ResponseHead,
    };

    #[test]
    fn hex8_is_lowercase_hex() {
        let mut cases: Vec<u32> = vec![
            0,
            1,
            9,
            10,
            15,
            16,
            0xdead_beef,
            0x0123_4567,
            0x89ab_cdef,
            u32::MAX,
        ];
        let mut x = 0x9e37_79b9u32;
        for _ in 0..10_000 {
            x = x.wrapping_mul(0x0101_0101).wrapping_add(0x7f4a_7c15);
            cases.push(x);
        }
        for x in cases {
            assert_eq!(std::str::from_utf8(&hex8(x)).unwrap(), format!("{x:08x}"));
        }
    }

    #[test]
    fn push_u64_writes_what_display_writes() {
        let mut cases: Vec<u64> = (0..=1100).collect();
        cases.extend([9_999, 10_000, 612, 1 << 32, u64::MAX - 1, u64::MAX]);
        for n in cases {
            let mut out = b"x".to_vec();
            push_u64(&mut out, n);
            assert_eq!(std::str::from_utf8(&out[1..]).unwrap(), n.to_string());
        }
    }

    #[test]
    fn push_ip_writes_what_display_writes() {
        let mut cases: Vec<IpAddr> = [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "127.0.0.1",
            "::1",
            "fe80::1:2",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        // Every octet value in every position, through a cheap permutation.
        for i in 0..=255u32 {
            let o = |k: u32| ((i * (2 * k + 1) + 7 * k) % 256) as u8;
            cases.push(IpAddr::from([o(0), o(1), o(2), o(3)]));
        }
        for ip in cases {
            let mut out = b"x".to_vec();
            push_ip(&mut out, ip);
            assert_eq!(std::str::from_utf8(&out[1..]).unwrap(), ip.to_string());
        }
    }

    fn parse_req(input: &[u8]) -> RequestHead {
        match parse_request(input, &Limits::default()) {
            Ok(Parsed::Complete { head, .. }) => head,
            other => panic!("{other:?}"),
        }
    }

    fn parse_resp(input: &[u8], m: Method) -> ResponseHead {
        match parse_response(input, &Limits::default(), m) {
            Ok(Parsed::Complete { head, .. }) => head,
            other => panic!("{other:?}"),
        }
    }

    fn text(out: &[u8]) -> &str {
        std::str::from_utf8(out).unwrap()
    }

    /// Lines copied in runs are byte for byte what `push_header` writes per
    /// field, for every choice of fields kept, with lines as senders write
    /// them and lines that are not (no space or two after the colon, tabs,
    /// trailing whitespace, empty values, odd name case), first and last.
    #[test]
    fn lines_in_runs_are_what_push_header_writes() {
        let heads: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Wed, 02 Dec 2026\r\nX-A:a\r\nX-B:  b \r\nEmpty: \r\nBare:\r\nX-Tab:\tt\t\r\nETag: \"e\"\r\nACCEPT-ranges: bytes\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nX-One: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA:1\r\nB: 2\r\nC: 3\r\nD:4\r\nE: 5\r\nF: 6 \r\nG: 7\r\n\r\n",
        ];
        for input in heads {
            let head = parse_resp(input, Method::Get);
            let view = head.view(input);
            let headers = view.headers();
            let n = headers.len();
            assert!(n <= 12);
            for mask in 0u32..(1 << n) {
                let kept = || {
                    headers
                        .spans()
                        .iter()
                        .enumerate()
                        .filter(move |(i, _)| mask & (1 << i) != 0)
                        .map(|(_, h)| h)
                };
                let mut want = b"<".to_vec();
                for h in kept() {
                    push_header(&mut want, h.name.get(input), h.value.get(input));
                }
                want.push(b'>');
                let mut got = b"<".to_vec();
                let mut lines = Lines::new(headers.buf());
                for h in kept() {
                    lines.push(&mut got, h);
                }
                lines.flush(&mut got);
                got.push(b'>');
                assert_eq!(text(&got), text(&want), "mask {mask:b} of {}", text(input));
            }
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped() {
        let input = b"GET /p HTTP/1.1\r\nHost: svc\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\nTE: trailers\r\nX-Secret: s\r\nX-Keep: k\r\nUpgrade: h2c\r\n\r\n";
        let head = parse_req(input);
        let view = head.view(input);
        let mut out = Vec::new();
        write_request(&view, &RequestRewrite::passthrough(&view), &mut out);
        assert_eq!(
            text(&out),
            "GET /p HTTP/1.1\r\nhost: svc\r\nX-Keep: k\r\n\r\n"
        );
        // The output is a valid request again.
        let again = parse_req(&out);
        assert_eq!(again.view(&out).headers().get(b"x-keep"), Some(&b"k"[..]));
    }

    #[test]
    fn forwarded_headers_request_id_and_ops() {
        let input = b"POST /api/v1/x?y=1 HTTP/1.1\r\nHost: a:80\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\nX-Forwarded-Proto: https\r\nX-Drop: d\r\nX-Set: old\r\nContent-Length: 3\r\n\r\n";
        let head = parse_req(input);
        let view = head.view(input);
        let ops = HeaderOps {
            remove: vec![b"x-drop"[..].into()],
            set: vec![HeaderField::new(b"X-Set", b"new")],
            add: vec![HeaderField::new(b"x-add", b"1")],
        };
        let ids = RequestIdGenerator::with_seed(7);
        let rw = RequestRewrite {
            path: Some(b"/v1/x?y=1"),
            host: Some(b"backend"),
            client_addr: Some("10.0.0.9".parse().unwrap()),
            forwarded_proto: Some("http"),
            forwarded_proto_if_absent: false,
            request_id: Some(&ids),
            ops: Some(&ops),
            ..RequestRewrite::passthrough(&view)
        };
        let mut out = Vec::new();
        let w = write_request(&view, &rw, &mut out);
        let id = w.generated_request_id.expect("generated");
        let expected = format!(
            "POST /v1/x?y=1 HTTP/1.1\r\nhost: backend\r\n\
             x-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.9\r\nx-forwarded-proto: http\r\n\
             x-request-id: {}\r\nx-set: new\r\nx-add: 1\r\ncontent-length: 3\r\n\r\n",
            id.as_str()
        );
        assert_eq!(text(&out), expected);

        // Without use_remote_address (Envoy's transparent mode): the
        // client's X-Forwarded-Proto stays, ours only fills its absence.
        let rw = RequestRewrite {
            forwarded_proto_if_absent: true,
            ..rw
        };
        let mut out = Vec::new();
        write_request(&view, &rw, &mut out);
        let kept = parse_req(&out);
        let kept: Vec<&[u8]> = kept
            .view(&out)
            .headers()
            .get_all(b"x-forwarded-proto")
            .collect();
        assert_eq!(kept, [&b"https"[..]]);
        let input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let head = parse_req(input);
        let view = head.view(input);
        let rw = RequestRewrite {
            forwarded_proto: Some("http"),
            forwarded_proto_if_absent: true,
            ..RequestRewrite::passthrough(&view)
        };
        let mut out = Vec::new();
        write_request(&view, &rw, &mut out);
        assert!(text(&out).contains("x-forwarded-proto: http\r\n"));

        // An existing id is kept and none is generated.
        let input = b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: abc\r\n\r\n";
        let head = parse_req(input);
        let view = head.view(input);
        let rw = RequestRewrite {
            request_id: Some(&ids),
            ..RequestRewrite::passthrough(&view)
        };
        let mut out = Vec::new();
        assert_eq!(
            write_request(&view, &rw, &mut out).generated_request_id,
            None
        );
        assert_eq!(
            text(&out),
            "GET / HTTP/1.1\r\nhost: a\r\nX-Request-Id: abc\r\n\r\n"
        );
    }

    /// A client-sent X-Forwarded-Client-Cert never reaches the app as sent:
    /// dropped on a connection without a verified client certificate
    /// (spoofed identity), and on an mTLS connection kept with this hop's
    /// element appended (Envoy's APPEND_FORWARD, as Istio's inbound sets it).
    #[test]
    fn client_cert_header_is_sanitized_or_appended() {
        let input = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Client-Cert: URI=spiffe://evil/ns/x/sa/y\r\nx-forwarded-client-cert: By=b\r\n\r\n";
        let head = parse_req(input);
        let view = head.view(input);
        let mut out = Vec::new();
        write_request(&view, &RequestRewrite::passthrough(&view), &mut out);
        assert_eq!(text(&out), "GET / HTTP/1.1\r\nhost: a\r\n\r\n");
        out.clear();
        let rw = RequestRewrite {
            client_cert: Some("By=spiffe://td/ns/a/sa/s;Hash=ab;URI=spiffe://td/ns/b/sa/c"),
            ..RequestRewrite::passthrough(&view)
        };
        write_request(&view, &rw, &mut out);
        assert_eq!(
            text(&out),
            "GET / HTTP/1.1\r\nhost: a\r\nx-forwarded-client-cert: URI=spiffe://evil/ns/x/sa/y,By=b,\
             By=spiffe://td/ns/a/sa/s;Hash=ab;URI=spiffe://td/ns/b/sa/c\r\n\r\n"
        );
    }

    #[test]
    fn framing_is_rewritten_not_copied() {
        let input = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        let head = parse_req(input);
        let view = head.view(input);
        let mut out = Vec::new();
        // E.g. the proxy buffered the body and knows its length now.
        let rw = RequestRewrite {
            framing: BodyFraming::Length(12),
            ..RequestRewrite::passthrough(&view)
        };
        write_request(&view, &rw, &mut out);
        assert_eq!(
            text(&out),
            "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 12\r\n\r\n"
        );
        out.clear();
        write_request(&view, &RequestRewrite::passthrough(&view), &mut out);
        assert_eq!(
            text(&out),
            "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn websocket_upgrade_is_carried_through() {
        let input = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n";
        let head = parse_req(input);
        let view = head.view(input);
        let mut out = Vec::new();
        write_request(&view, &RequestRewrite::passthrough(&view), &mut out);
        assert_eq!(
            text(&out),
            "GET /ws HTTP/1.1\r\nhost: a\r\nSec-WebSocket-Key: k\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
        );
        out.clear();
        let rw = RequestRewrite {
            upgrade: false,
            ..RequestRewrite::passthrough(&view)
        };
        write_request(&view, &rw, &mut out);
        assert_eq!(
            text(&out),
            "GET /ws HTTP/1.1\r\nhost: a\r\nSec-WebSocket-Key: k\r\n\r\n"
        );
    }

    #[test]
    fn http10_request_gets_host_and_11() {
        let input = b"GET http://x.y/z HTTP/1.0\r\n\r\n";
        let head = parse_req(input);
        let view = head.view(input);
        let mut out = Vec::new();
        write_request(&view, &RequestRewrite::passthrough(&view), &mut out);
        assert_eq!(text(&out), "GET /z HTTP/1.1\r\nhost: x.y\r\n\r\n");
    }

    #[test]
    fn response_rewrite() {
        let input = b"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nContent-Length: 5\r\nServer: s\r\n\r\n";
        let head = parse_resp(input, Method::Get);
        let view = head.view(input);
        let ops = HeaderOps {
            remove: vec![b"server"[..].into()],
            ..HeaderOps::default()
        };
        let mut out = Vec::new();
        let rw = ResponseRewrite {
            ops: Some(&ops),
            framing: head.framing,
            keep_alive: true,
            client_version: Version::Http10,
        };
        write_response(&view, &rw, &mut out);
        assert_eq!(
            text(&out),
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\n"
        );

        // HEAD: framing None keeps the upstream Content-Length.
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n";
        let head = parse_resp(input, Method::Head);
        let mut out = Vec::new();
        let rw = ResponseRewrite {
            ops: None,
            framing: head.framing,
            keep_alive: false,
            client_version: Version::Http11,
        };
        write_response(&head.view(input), &rw, &mut out);
        assert_eq!(
            text(&out),
            "HTTP/1.1 200 OK\r\nContent-Length: 500\r\nconnection: close\r\n\r\n"
        );

        // A close-delimited upstream body re-chunked for an HTTP/1.1 client.
        let input = b"HTTP/1.0 200\r\n\r\n";
        let head = parse_resp(input, Method::Get);
        assert_eq!(head.framing, BodyFraming::CloseDelimited);
        let mut out = Vec::new();
        let rw = ResponseRewrite {
            ops: None,
            framing: BodyFraming::Chunked,
            keep_alive: true,
            client_version: Version::Http11,
        };
        write_response(&head.view(input), &rw, &mut out);
        assert_eq!(
            text(&out),
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn local_response() {
        let mut out = Vec::new();
        write_local_response(
            431,
            &[(b"content-type", b"text/plain")],
            b"too big",
            false,
            &mut out,
        );
        assert_eq!(
            text(&out),
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\ncontent-length: 7\r\nconnection: close\r\n\r\ntoo big"
        );
        // No content, and no length, where the status allows none.
        for (status, line) in [(204, "204 No Content"), (304, "304 Not Modified")] {
            out.clear();
            write_local_response(status, &[], b"fault filter abort\n", true, &mut out);
            assert_eq!(text(&out), format!("HTTP/1.1 {line}\r\n\r\n"));
        }
    }

    #[test]
    fn shadow_head_rewrites_only_the_host() {
        let input = b"POST /p?q=1 HTTP/1.1\r\nHost: reviews:9080\r\nX-Request-Id: r1\r\nContent-Length: 2\r\n\r\n";
        let view_head = parse_req(input);
        let mut up = Vec::new();
        let rw = RequestRewrite {
            host: Some(b"reviews.internal:9080"),
            ..RequestRewrite::passthrough(&view_head.view(input))
        };
        write_request(&view_head.view(input), &rw, &mut up);
        let shadow = shadow_request_head(&up).unwrap();
        // Host rewritten (after any host_rewrite), everything else as sent.
        assert_eq!(
            text(&shadow),
            text(&up).replace(
                "host: reviews.internal:9080",
                "host: reviews.internal-shadow:9080"
            )
        );
        assert!(text(&shadow).contains("X-Request-Id: r1\r\n"));
        // An HTTP/1.0 request without Host keeps its empty one.
        let input = b"GET / HTTP/1.0\r\n\r\n";
        let h = parse_req(input);
        let mut up = Vec::new();
        write_request(
            &h.view(input),
            &RequestRewrite::passthrough(&h.view(input)),
            &mut up,
        );
        assert_eq!(shadow_request_head(&up).unwrap(), up);
        // Not a head write_request wrote: no copy.
        assert_eq!(
            shadow_request_head(b"GET / HTTP/1.1\r\nx: 1\r\nhost: a\r\n\r\n"),
            None
        );
        assert_eq!(shadow_request_head(b"GET / HTTP/1.1"), None);
    }

    #[test]
    fn uuid_text_is_the_digits_of_both_halves_in_8_4_4_4_12() {
        let id = format_uuid(0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210);
        assert_eq!(id.as_str(), "01234567-89ab-cdef-fedc-ba9876543210");
    }

    #[test]
    fn request_ids_are_unique_and_uuid_shaped() {
        let a = RequestIdGenerator::with_seed(1);
        let b = RequestIdGenerator::with_seed(2);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50_000 {
            for id in [a.next_id(), b.next_id()] {
                let s = id.as_str();
                assert_eq!(s.len(), 36);
                assert_eq!(&s[14..15], "4", "{s}");
                assert!("89ab".contains(&s[19..20]), "{s}");
                assert!(s.bytes().all(|c| c == b'-' || c.is_ascii_hexdigit()));
                assert!(seen.insert(id), "duplicate {s}");
            }
        }
        // Two OS-seeded generators differ.
        assert_ne!(
            RequestIdGenerator::new().next_id(),
            RequestIdGenerator::new().next_id()
        );
    }

    /// The table and the word-at-a-time check say what the byte-by-byte
    /// definitions say: every byte value, at every position of values
    /// long enough to fill two words and a remainder.
    #[test]
    fn name_and_value_checks_match_their_definitions() {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        let value_byte = |b: u8| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80;
        for b in 0..=255u8 {
            for len in 1..=19 {
                for at in 0..len {
                    let mut v = vec![b'a'; len];
                    v[at] = b;
                    assert_eq!(is_valid_header_name(&v), token(b), "name {v:?}");
                    assert_eq!(
                        is_lowercase_token(&v),
                        token(b) && !b.is_ascii_uppercase(),
                        "name {v:?}"
                    );
                    let edge = (at == 0 || at == len - 1) && (b == b' ' || b == b'\t');
                    assert_eq!(
                        is_valid_header_value(&v),
                        value_byte(b) && !edge,
                        "value {v:?}"
                    );
                }
            }
        }
        // Obs-text and a tab inside a word, next to a forbidden byte in the same word.
        assert!(is_valid_header_value(b"a\tb\x80\xffcdefgh\tij"));
        assert!(!is_valid_header_value(b"a\tbcdefg\x7fhij"));
        assert!(!is_valid_header_value(b"abcdefgh\tbcdefg\x1f"));
    }

    #[test]
    fn header_validation() {
        assert!(is_valid_header_name(b"x-envoy-upstream"));
        assert!(!is_valid_header_name(b"x y"));
        assert!(!is_valid_header_name(b""));
        assert!(!is_valid_header_name(b"x:y"));
        assert!(is_valid_header_value(b"a b\tc"));
        assert!(is_valid_header_value(b""));
        assert!(!is_valid_header_value(b"a\r\nx-injected: 1"));
        assert!(!is_valid_header_value(b"a\0"));
        assert!(!is_valid_header_value(b" a"));
    }
}
