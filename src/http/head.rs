//! Request and response heads: httparse into a stack array, then the RFC 9112
//! checks httparse leaves to us, and the framing/connection facts the proxy needs.
//!
//! A parsed head stores byte ranges ([`Span`]) into the read buffer, never copies.
//! Read it through a view ([`RequestHead::view`]) that pairs the head with that
//! buffer; the buffer's first `head_len` bytes must not change while it is in use.
//!
//! What httparse already rejects with its default (strict) [`httparse::ParserConfig`],
//! verified by the tests below: whitespace between a field name and the colon, obs-fold
//! (a line starting with SP/HTAB), NUL and other CTLs in names and values, a CR not
//! followed by LF, bad tokens in the method, bad versions, more headers than the array.
//! What it accepts and we reject here: a bare LF as line terminator (RFC 9112 §2.2),
//! heads longer than the configured limit, and every framing ambiguity: CL with TE,
//! differing or malformed Content-Length, TE that is not exactly a final `chunked`,
//! TE in HTTP/1.0, missing or duplicate Host (RFC 9112 §3.2, §6.1–§6.3).

use std::mem::MaybeUninit;

use thiserror::Error;

use super::field::Field;
use crate::recycle::Recycled;

/// The size of the stack array handed to httparse; [`Limits::max_headers`] above
/// this is clamped. 128 × 32 bytes = 4 KiB of stack per parse.
pub const HEADER_CAPACITY: usize = 128;

/// Parser limits. The defaults are Envoy's: 60 KiB of head, 100 headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line (or status line) plus header section plus the empty line.
    /// Exceeding it answers 431 (RFC 6585 §5). Spans are `u32`, so values above
    /// `u32::MAX` act as `u32::MAX`.
    pub max_head_bytes: usize,
    /// Header fields per message, at most [`HEADER_CAPACITY`]. Exceeding it answers 431.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_head_bytes: 60 * 1024,
            max_headers: 100,
        }
    }
}

/// Which peer sent the malformed message; decides the status we answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: answer with the error's own status and close.
    Downstream,
    /// The upstream server: answer the client 502 and close both sides.
    Upstream,
}

/// What was wrong with a head. Every variant means "close the connection after
/// answering": once framing is in doubt, nothing after it can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HeadErrorKind {
    #[error("malformed request line")]
    RequestLine,
    #[error("malformed status line")]
    StatusLine,
    /// Anything but "HTTP/1.0" or "HTTP/1.1" (httparse cannot tell a
    /// malformed line from another major version, so this is 400, not 505).
    #[error("malformed or unsupported HTTP version")]
    Version,
    #[error("invalid byte in a header name (or whitespace before the colon, or obs-fold)")]
    HeaderName,
    #[error("invalid byte in a header value")]
    HeaderValue,
    #[error("bare LF or stray CR where CRLF is required")]
    LineEnding,
    #[error("header section larger than the limit")]
    HeadTooLarge,
    #[error("more header fields than the limit")]
    TooManyHeaders,
    #[error("Content-Length is not a non-negative decimal number")]
    InvalidContentLength,
    #[error("several Content-Length values that differ")]
    ConflictingContentLength,
    #[error("both Content-Length and Transfer-Encoding")]
    ContentLengthWithTransferEncoding,
    #[error("Transfer-Encoding whose final coding is not chunked")]
    TransferEncodingNotChunked,
    #[error("Transfer-Encoding with a coding other than chunked")]
    UnsupportedTransferCoding,
    #[error("Transfer-Encoding in an HTTP/1.0 message")]
    TransferEncodingInHttp10,
    #[error("HTTP/1.1 request without a Host header")]
    MissingHost,
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("Host header is not a valid authority")]
    InvalidHost,
    #[error("request-target is not valid for the method")]
    InvalidTarget,
}

impl HeadErrorKind {
    /// The status a server answers for this problem in a request.
    pub fn request_status(self) -> u16 {
        match self {
            HeadErrorKind::HeadTooLarge | HeadErrorKind::TooManyHeaders => 431,
            // RFC 9112 §6.1: a server that receives a transfer coding it does not
            // understand SHOULD respond 501.
            HeadErrorKind::UnsupportedTransferCoding => 501,
            _ => 400,
        }
    }
}

/// A rejected head: which side sent it and what was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("{side:?} sent an invalid HTTP/1 head: {kind}")]
pub struct HeadError {
    pub side: Side,
    pub kind: HeadErrorKind,
}

impl HeadError {
    /// The status to answer the client with: the kind's own status for a bad
    /// request, 502 for a bad response.
    pub fn status(&self) -> u16 {
        match self.side {
            Side::Downstream => self.kind.request_status(),
            Side::Upstream => 502,
        }
    }

    /// Short reason for logs and local-reply bodies.
    pub fn reason(&self) -> String {
        self.kind.to_string()
    }

    fn req(kind: HeadErrorKind) -> HeadError {
        HeadError {
            side: Side::Downstream,
            kind,
        }
    }

    fn resp(kind: HeadErrorKind) -> HeadError {
        HeadError {
            side: Side::Upstream,
            kind,
        }
    }
}

/// Outcome of a parse attempt on a buffer that may hold only part of a head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    /// No complete head yet (and no error so far): read more and parse again.
    Partial,
    /// A complete head; `len` bytes of the buffer belong to it, the body starts there.
    Complete { head: T, len: usize },
}

/// A byte range into the buffer a head was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// The bytes of this span; empty if `buf` is not the buffer it came from
    /// (a wrong buffer is a bug, but never a panic).
    #[inline]
    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.start as usize..self.end as usize)
            .unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Span of `sub` within `base`. httparse returns subslices of the buffer it
    /// was given, except for an absent reason phrase, which may be a static "":
    /// anything outside `base` becomes an empty span.
    fn of(base: &[u8], sub: &[u8]) -> Span {
        let start = (sub.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
        match start.checked_add(sub.len()) {
            Some(end) if end <= base.len() => Span {
                start: start as u32,
                end: end as u32,
            },
            _ => Span::default(),
        }
    }

    fn sub(&self, from: usize, to: usize) -> Span {
        Span {
            start: self.start + from as u32,
            end: self.start + to as u32,
        }
    }
}

/// One header field as two spans (name as sent, value with OWS trimmed),
/// and what its name is to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderSpan {
    pub name: Span,
    pub value: Span,
    pub field: Field,
}

/// HTTP/1.x minor version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// Request method; the standard ones as variants so the hot checks need no bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    /// An extension method; its bytes are at [`RequestHead::method_span`].
    Other,
}

impl Method {
    pub fn from_bytes(m: &[u8]) -> Method {
        // Methods are case-sensitive (RFC 9110 §9.1).
        match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"CONNECT" => Method::Connect,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }

    /// PUT, DELETE and the safe methods (RFC 9110 §9.2.2): sending one twice
    /// has the effect of sending it once, so it may be retried automatically
    /// (RFC 9112 §9.3.1). Extension methods are not assumed to be.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Options
                | Method::Trace
                | Method::Put
                | Method::Delete
        )
    }
}

/// How the message body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all.
    None,
    /// Exactly this many bytes (may be 0: "Content-Length: 0" is kept as sent).
    Length(u64),
    /// Chunked transfer coding (RFC 9112 §7.1); decode with `ChunkedDecoder`.
    Chunked,
    /// Responses only: the body runs until the server closes the connection.
    CloseDelimited,
}

/// Connection-header tokens we act on (RFC 9112 §9.6, RFC 9110 §7.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionTokens {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// Any other token: it names a hop-by-hop header to drop when forwarding.
    pub other: bool,
}

/// Header spans stored once per message. Reused across messages via the
/// `parse_*_into` functions, and across connections through the thread's
/// free list ([`Recycled`]): an idle connection drops its heads with the rest
/// of its per-request state (`l7::serve`), and the next request anywhere on
/// the core takes the allocation back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct HeaderList(Recycled<HeaderSpan>);

crate::recycle::reuse!(HeaderSpan);

/// A parsed request head. Read it through [`RequestHead::view`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    pub method_span: Span,
    /// The request-target exactly as sent (RFC 9112 §3.2).
    pub target: Span,
    /// Path and query in origin-form; empty for authority-form (CONNECT) and
    /// for an absolute-form target without a path (read as "/").
    pub path: Span,
    pub version: Version,
    headers: HeaderList,
    /// The authority that identifies the target host: the absolute-form target's
    /// authority if present (RFC 9112 §3.2.2), else the Host header, else none.
    pub authority: Option<Span>,
    pub framing: BodyFraming,
    pub connection: ConnectionTokens,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request (RFC 9110 §10.1.1).
    pub expect_continue: bool,
    /// The Upgrade header's value, when `Connection: upgrade` asks for it.
    pub upgrade: Option<Span>,
    /// Bytes of the head including the final CRLF.
    pub head_len: usize,
}

/// A parsed response head. Read it through [`ResponseHead::view`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub version: Version,
    pub status: u16,
    pub reason: Span,
    headers: HeaderList,
    pub framing: BodyFraming,
    pub connection: ConnectionTokens,
    /// Whether the upstream connection may be reused after this response's body.
    pub keep_alive: bool,
    /// The Upgrade header's value on a 101 response.
    pub upgrade: Option<Span>,
    pub head_len: usize,
}

impl Default for RequestHead {
    fn default() -> RequestHead {
        RequestHead {
            method: Method::Get,
            method_span: Span::default(),
            target: Span::default(),
            path: Span::default(),
            version: Version::Http11,
            headers: HeaderList::default(),
            authority: None,
            framing: BodyFraming::None,
            connection: ConnectionTokens::default(),
            keep_alive: false,
            expect_continue: false,
            upgrade: None,
            head_len: 0,
        }
    }
}

impl Default for ResponseHead {
    fn default() -> ResponseHead {
        ResponseHead {
            version: Version::Http11,
            status: 0,
            reason: Span::default(),
            headers: HeaderList::default(),
            framing: BodyFraming::None,
            connection: ConnectionTokens::default(),
            keep_alive: false,
            upgrade: None,
            head_len: 0,
        }
    }
}

/// Parses a request head from the start of `buf`.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Parsed<RequestHead>, HeadError> {
    let mut head = RequestHead::default();
    Ok(match parse_request_into(buf, limits, &mut head)? {
        Some(len) => Parsed::Complete { head, len },
        None => Parsed::Partial,
    })
}

/// Parses a response head; `request_method` decides bodiless responses (HEAD, CONNECT).
pub fn parse_response(
    buf: &[u8],
    limits: &Limits,
    request_method: Method,
) -> Result<Parsed<ResponseHead>, HeadError> {
    let mut head = ResponseHead::default();
    Ok(
        match parse_response_into(buf, limits, request_method, &mut head)? {
            Some(len) => Parsed::Complete { head, len },
            None => Parsed::Partial,
        },
    )
}

/// Like [`parse_request`], reusing `head`'s header storage. `Ok(None)` is Partial;
/// `head` holds garbage unless `Ok(Some(len))` is returned.
pub fn parse_request_into(
    buf: &[u8],
    limits: &Limits,
    head: &mut RequestHead,
) -> Result<Option<usize>, HeadError> {
    let mut storage = [MaybeUninit::<httparse::Header<'_>>::uninit(); HEADER_CAPACITY];
    let max = limits.max_headers.min(HEADER_CAPACITY);
    let mut req = httparse::Request::new(&mut []);
    let status = req.parse_with_uninit_headers(buf, &mut storage[..max]);
    let len = match status {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.max_head_bytes {
                Err(HeadError::req(HeadErrorKind::HeadTooLarge))
            } else {
                Ok(None)
            };
        }
        Err(e) => return Err(HeadError::req(map_httparse(e, true))),
    };
    if len > limits.max_head_bytes.min(u32::MAX as usize) {
        return Err(HeadError::req(HeadErrorKind::HeadTooLarge));
    }
    check_line_endings(&buf[..len]).map_err(HeadError::req)?;

    // httparse fills all four on Complete; a missing one would be its bug, but
    // still an error rather than a panic.
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::req(HeadErrorKind::RequestLine));
    };
    let method_bytes = method.as_bytes();
    head.method = Method::from_bytes(method_bytes);
    head.method_span = Span::of(buf, method_bytes);
    head.target = Span::of(buf, target.as_bytes());
    head.version = if minor == 0 {
        Version::Http10
    } else {
        Version::Http11
    };
    head.head_len = len;

    let facts = scan_headers(buf, req.headers, &mut head.headers).map_err(HeadError::req)?;

    // Request-target forms (RFC 9112 §3.2).
    let target_bytes = target.as_bytes();
    // A target is visible ASCII without a fragment (RFC 9112 §3.2: "#" is not
    // part of any request-target form; RFC 3986 §2: raw bytes outside ASCII
    // must be percent-encoded). httparse lets both through; forwarded, the
    // upstream might cut or decode them differently from the router.
    if target_bytes
        .iter()
        .any(|&b| !b.is_ascii_graphic() || b == b'#')
    {
        return Err(HeadError::req(HeadErrorKind::InvalidTarget));
    }
    let mut target_authority = None;
    if head.method == Method::Connect {
        // authority-form only (§3.2.3): uri-host ":" port, the port required
        // (RFC 9110 §9.3.6: CONNECT has no default port).
        if target_bytes.is_empty()
            || target_bytes.starts_with(b"/")
            || !valid_authority(target_bytes)
            || !has_port(target_bytes)
        {
            return Err(HeadError::req(HeadErrorKind::InvalidTarget));
        }
        target_authority = Some(head.target);
        head.path = Span::default();
    } else if target_bytes.first() == Some(&b'/') {
        head.path = head.target;
    } else if target_bytes == b"*" {
        // asterisk-form, OPTIONS only (§3.2.4).
        if head.method != Method::Options {
            return Err(HeadError::req(HeadErrorKind::InvalidTarget));
        }
        head.path = head.target;
    } else if let Some((auth_from, auth_to)) = absolute_form_authority(target_bytes) {
        let auth = &target_bytes[auth_from..auth_to];
        if !valid_authority(auth) {
            return Err(HeadError::req(HeadErrorKind::InvalidTarget));
        }
        target_authority = Some(head.target.sub(auth_from, auth_to));
        head.path = head.target.sub(auth_to, target_bytes.len());
    } else {
        return Err(HeadError::req(HeadErrorKind::InvalidTarget));
    }

    // Host (RFC 9112 §3.2): exactly one in HTTP/1.1, at most one in 1.0.
    if facts.host_count > 1 {
        return Err(HeadError::req(HeadErrorKind::DuplicateHost));
    }
    if facts.host_count == 0 && head.version == Version::Http11 {
        return Err(HeadError::req(HeadErrorKind::MissingHost));
    }
    if let Some(host) = facts.host {
        let h = host.get(buf);
        if !h.is_empty() && !valid_authority(h) {
            return Err(HeadError::req(HeadErrorKind::InvalidHost));
        }
    }
    head.authority = target_authority.or(facts.host.filter(|h| !h.is_empty()));

    // Framing (RFC 9112 §6.3, request rules 3–6).
    head.framing = match (facts.te, facts.content_length) {
        (Some(_), _) if head.version == Version::Http10 => {
            // §6.1: treat as faulty framing; we refuse rather than guess.
            return Err(HeadError::req(HeadErrorKind::TransferEncodingInHttp10));
        }
        (Some(_), Some(_)) => {
            // §6.3 item 3: MAY reject; for a proxy it is the only safe choice,
            // since the next hop may pick the other header (request smuggling).
            return Err(HeadError::req(
                HeadErrorKind::ContentLengthWithTransferEncoding,
            ));
        }
        (Some(te), None) => {
            te.check().map_err(HeadError::req)?;
            BodyFraming::Chunked
        }
        (None, Some(n)) => BodyFraming::Length(n),
        (None, None) => BodyFraming::None,
    };

    head.connection = facts.connection;
    head.keep_alive = keep_alive(head.version, facts.connection);
    head.expect_continue = facts.expect_continue && head.version == Version::Http11;
    head.upgrade = facts.upgrade.filter(|_| facts.connection.upgrade);
    Ok(Some(len))
}

/// Like [`parse_response`], reusing `head`'s header storage.
pub fn parse_response_into(
    buf: &[u8],
    limits: &Limits,
    request_method: Method,
    head: &mut ResponseHead,
) -> Result<Option<usize>, HeadError> {
    let mut storage = [MaybeUninit::<httparse::Header<'_>>::uninit(); HEADER_CAPACITY];
    let max = limits.max_headers.min(HEADER_CAPACITY);
    let mut resp = httparse::Response::new(&mut []);
    // The default config is strict: no obs-fold, no space before the colon.
    let status = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut storage[..max],
    );
    let len = match status {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.max_head_bytes {
                Err(HeadError::resp(HeadErrorKind::HeadTooLarge))
            } else {
                Ok(None)
            };
        }
        Err(e) => return Err(HeadError::resp(map_httparse(e, false))),
    };
    if len > limits.max_head_bytes.min(u32::MAX as usize) {
        return Err(HeadError::resp(HeadErrorKind::HeadTooLarge));
    }
    check_line_endings(&buf[..len]).map_err(HeadError::resp)?;
    let (Some(minor), Some(code)) = (resp.version, resp.code) else {
        return Err(HeadError::resp(HeadErrorKind::StatusLine));
    };
    head.version = if minor == 0 {
        Version::Http10
    } else {
        Version::Http11
    };
    head.status = code;
    head.reason = resp
        .reason
        .map(|r| Span::of(buf, r.as_bytes()))
        .unwrap_or_default();
    head.head_len = len;

    let facts = scan_headers(buf, resp.headers, &mut head.headers).map_err(HeadError::resp)?;

    // Even where the framing headers are ignored below, they must not be
    // ambiguous: the client would see them too.
    if facts.te.is_some() && facts.content_length.is_some() {
        return Err(HeadError::resp(
            HeadErrorKind::ContentLengthWithTransferEncoding,
        ));
    }
    if facts.te.is_some() && head.version == Version::Http10 {
        return Err(HeadError::resp(HeadErrorKind::TransferEncodingInHttp10));
    }

    // RFC 9112 §6.3, response rules 1–2 and 4–8.
    let bodiless =
        request_method == Method::Head || (100..200).contains(&code) || code == 204 || code == 304;
    let tunnel = request_method == Method::Connect && (200..300).contains(&code);
    head.framing = if bodiless || tunnel {
        BodyFraming::None
    } else if let Some(te) = facts.te {
        // §6.3 item 4 would read a non-chunked TE until close; we strip TE as
        // hop-by-hop and cannot re-apply an unknown coding, so we refuse it.
        te.check().map_err(HeadError::resp)?;
        BodyFraming::Chunked
    } else if let Some(n) = facts.content_length {
        BodyFraming::Length(n)
    } else {
        BodyFraming::CloseDelimited
    };

    head.connection = facts.connection;
    head.keep_alive =
        keep_alive(head.version, facts.connection) && head.framing != BodyFraming::CloseDelimited;
    head.upgrade = facts.upgrade.filter(|_| code == 101);
    Ok(Some(len))
}

/// RFC 9112 §9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only with "keep-alive".
fn keep_alive(version: Version, c: ConnectionTokens) -> bool {
    match version {
        _ if c.close => false,
        Version::Http11 => true,
        Version::Http10 => c.keep_alive,
    }
}

fn map_httparse(e: httparse::Error, request: bool) -> HeadErrorKind {
    match e {
        httparse::Error::HeaderName => HeadErrorKind::HeaderName,
        httparse::Error::HeaderValue => HeadErrorKind::HeaderValue,
        httparse::Error::NewLine => HeadErrorKind::LineEnding,
        httparse::Error::TooManyHeaders => HeadErrorKind::TooManyHeaders,
        httparse::Error::Version => HeadErrorKind::Version,
        httparse::Error::Status if !request => HeadErrorKind::StatusLine,
        _ if request => HeadErrorKind::RequestLine,
        _ => HeadErrorKind::StatusLine,
    }
}

/// RFC 9112 §2.2: a recipient MAY accept a bare LF; a proxy must not, because the
/// next hop may not, and the disagreement is a smuggling vector. httparse has
/// already refused a CR not followed by LF, so every CR in the head is the
/// start of a CRLF, and the head has a bare LF exactly when it has more LFs
/// than CRs. Counting both is one branch-free pass that the compiler
/// vectorizes; finding each LF (`memchr_iter`) was a call per line, ~750
/// instructions per proxied request (perf/README.md, "Session 20").
fn check_line_endings(head: &[u8]) -> Result<(), HeadErrorKind> {
    let (mut cr, mut lf) = (0usize, 0usize);
    // Byte-wide counters in chunks that cannot overflow them: 16 or 32
    // lanes per vector instead of 2 or 4.
    for chunk in head.chunks(255) {
        let (mut c, mut l) = (0u8, 0u8);
        for &b in chunk {
            c += u8::from(b == b'\r');
            l += u8::from(b == b'\n');
        }
        cr += usize::from(c);
        lf += usize::from(l);
    }
    if cr == lf {
        Ok(())
    } else {
        Err(HeadErrorKind::LineEnding)
    }
}

/// Facts collected in one pass over the header fields.
#[derive(Default)]
struct HeaderFacts {
    host: Option<Span>,
    host_count: u32,
    content_length: Option<u64>,
    te: Option<TeFacts>,
    connection: ConnectionTokens,
    upgrade: Option<Span>,
    expect_continue: bool,
}

/// The Transfer-Encoding list across all TE field lines.
#[derive(Default, Clone, Copy)]
struct TeFacts {
    codings: u32,
    chunked: u32,
    last_is_chunked: bool,
}

impl TeFacts {
    /// Only a single "chunked" is acceptable (see the module doc).
    fn check(self) -> Result<(), HeadErrorKind> {
        if !self.last_is_chunked || self.chunked > 1 {
            // §6.3 item 4 (final coding not chunked) and §6.1 (chunked MUST NOT
            // be applied more than once): framing is unknowable.
            Err(HeadErrorKind::TransferEncodingNotChunked)
        } else if self.codings > 1 {
            // e.g. "gzip, chunked": well-framed, but we would strip gzip.
            Err(HeadErrorKind::UnsupportedTransferCoding)
        } else {
            Ok(())
        }
    }
}

fn scan_headers(
    buf: &[u8],
    headers: &[httparse::Header<'_>],
    out: &mut HeaderList,
) -> Result<HeaderFacts, HeadErrorKind> {
    out.0.clear();
    out.0.reserve(headers.len());
    let mut f = HeaderFacts::default();
    for h in headers {
        let name = h.name.as_bytes();
        let value = h.value;
        let span = HeaderSpan {
            name: Span::of(buf, name),
            value: Span::of(buf, value),
            field: Field::of(name),
        };
        out.0.push(span);
        match span.field {
            Field::Host => {
                f.host_count += 1;
                f.host = Some(span.value);
            }
            Field::ContentLength => {
                let n = parse_content_length(value)?;
                match f.content_length {
                    // RFC 9110 §8.6: identical repeats may be merged; different
                    // values are unrecoverable.
                    Some(prev) if prev != n => return Err(HeadErrorKind::ConflictingContentLength),
                    _ => f.content_length = Some(n),
                }
            }
            Field::TransferEncoding => {
                let te = f.te.get_or_insert_with(TeFacts::default);
                let mut any = false;
                for coding in list_elements(value) {
                    any = true;
                    te.codings += 1;
                    // A coding may carry parameters ("gzip;q=1"): compare its name.
                    let name = coding
                        .split(|&b| b == b';')
                        .next()
                        .map(trim_ows)
                        .unwrap_or_default();
                    te.last_is_chunked = name.eq_ignore_ascii_case(b"chunked");
                    if te.last_is_chunked {
                        te.chunked += 1;
                    }
                }
                if !any {
                    // An empty TE line still means "not chunked last".
                    te.codings += 1;
                    te.last_is_chunked = false;
                }
            }
            Field::Connection => {
                for token in list_elements(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        f.connection.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        f.connection.keep_alive = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        f.connection.upgrade = true;
                    } else {
                        f.connection.other = true;
                    }
                }
            }
            Field::Upgrade => f.upgrade = Some(span.value),
            Field::Expect if trim_ows(value).eq_ignore_ascii_case(b"100-continue") => {
                f.expect_continue = true;
            }
            _ => {}
        }
    }
    Ok(f)
}

/// Content-Length = 1*DIGIT (RFC 9110 §8.6), also accepting the list form
/// "5, 5" that some senders produce when merging fields, if every element agrees.
/// No sign, no inner spaces, no empty elements, no overflow.
fn parse_content_length(value: &[u8]) -> Result<u64, HeadErrorKind> {
    let mut result = None;
    for elem in value.split(|&b| b == b',') {
        let digits = trim_ows(elem);
        if digits.is_empty() {
            return Err(HeadErrorKind::InvalidContentLength);
        }
        let mut n: u64 = 0;
        for &d in digits {
            if !d.is_ascii_digit() {
                return Err(HeadErrorKind::InvalidContentLength);
            }
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d - b'0')))
                .ok_or(HeadErrorKind::InvalidContentLength)?;
        }
        match result {
            Some(prev) if prev != n => return Err(HeadErrorKind::ConflictingContentLength),
            _ => result = Some(n),
        }
    }
    result.ok_or(HeadErrorKind::InvalidContentLength)
}

/// Elements of a comma-separated list (RFC 9110 §5.6.1), OWS trimmed, empty
/// elements skipped as the RFC requires of recipients.
pub(crate) fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// Strips optional whitespace (SP / HTAB) from both ends.
pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `scheme "://" authority` at the start of an absolute-form target: returns the
/// authority's byte range (RFC 3986 §3.2: it ends at "/", "?" or "#").
fn absolute_form_authority(target: &[u8]) -> Option<(usize, usize)> {
    let colon = target.iter().position(|&b| b == b':')?;
    let scheme = &target[..colon];
    let scheme_ok = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok || !target[colon..].starts_with(b"://") {
        return None;
    }
    let from = colon + 3;
    let to = target[from..]
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .map_or(target.len(), |p| from + p);
    (to > from).then_some((from, to))
}

/// Whether an authority ends in ":" and a port 1-65535 after a non-empty
/// host (an IPv6 literal's own colons are inside its brackets).
pub(crate) fn has_port(a: &[u8]) -> bool {
    let Some(colon) = a.iter().rposition(|&b| b == b':') else {
        return false;
    };
    let (host, port) = (&a[..colon], &a[colon + 1..]);
    let host_ok = !host.is_empty()
        && (host.starts_with(b"[") == host.ends_with(b"]"))
        && (host.starts_with(b"[") || !host.contains(&b':'));
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && std::str::from_utf8(port)
            .ok()
            .and_then(|p| p.parse::<u16>().ok())
            .is_some_and(|p| p > 0);
    host_ok && port_ok
}

/// uri-host [":" port] with the characters RFC 3986 allows in a reg-name, an
/// IP literal or a port. Rejects userinfo ("@"), whitespace, "/" and commas, so
/// what routes the request is exactly what the upstream will see.
pub(crate) fn valid_authority(a: &[u8]) -> bool {
    !a.is_empty()
        && a.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'%'
                        | b':'
                        | b'['
                        | b']'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b';'
                        | b'='
                )
        })
}

/// Header fields of a message, in order, as (name, value) byte slices.
#[derive(Clone, Copy)]
pub struct Headers<'a> {
    spans: &'a [HeaderSpan],
    buf: &'a [u8],
}

impl<'a> Headers<'a> {
    /// Where each field's name and value lie in the buffer.
    pub fn spans(&self) -> &'a [HeaderSpan] {
        self.spans
    }

    /// The buffer the spans index.
    pub fn buf(&self) -> &'a [u8] {
        self.buf
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let buf = self.buf;
        self.spans
            .iter()
            .map(move |h| (h.name.get(buf), h.value.get(buf)))
    }

    /// As [`iter`](Self::iter), with what each name is ([`Field`]).
    pub fn fields(&self) -> impl Iterator<Item = (Field, &'a [u8], &'a [u8])> + 'a {
        let buf = self.buf;
        self.spans
            .iter()
            .map(move |h| (h.field, h.name.get(buf), h.value.get(buf)))
    }

    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.get_all(name).next()
    }

    /// Every value of `name` (case-insensitive), in order. A name the
    /// proxy knows ([`Field`]) is matched by the field each span was given
    /// at parse, not by comparing every name's bytes again.
    pub fn get_all<'n>(&self, name: &'n [u8]) -> impl Iterator<Item = &'a [u8]> + 'n
    where
        'a: 'n,
    {
        let field = Field::of(name);
        self.fields()
            .filter(move |&(f, n, _)| match field {
                Field::Other => n.eq_ignore_ascii_case(name),
                known => f == known,
            })
            .map(|(_, _, v)| v)
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.get(name).is_some()
    }
}

/// A request head together with the buffer it was parsed from.
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    pub head: &'a RequestHead,
    pub buf: &'a [u8],
}

impl RequestHead {
    /// Pairs the head with its buffer (the one it was parsed from).
    pub fn view<'a>(&'a self, buf: &'a [u8]) -> RequestView<'a> {
        RequestView { head: self, buf }
    }
}

impl<'a> RequestView<'a> {
    pub fn method(&self) -> &'a [u8] {
        self.head.method_span.get(self.buf)
    }

    pub fn target(&self) -> &'a [u8] {
        self.head.target.get(self.buf)
    }

    /// Path and query in origin-form ("/" for an absolute-form target without a path).
    pub fn path_and_query(&self) -> &'a [u8] {
        let p = self.head.path.get(self.buf);
        if p.is_empty() && self.head.method != Method::Connect {
            b"/"
        } else {
            p
        }
    }

    /// The path without the query.
    pub fn path(&self) -> &'a [u8] {
        let pq = self.path_and_query();
        let end = memchr::memchr(b'?', pq).unwrap_or(pq.len());
        &pq[..end]
    }

    /// The query without "?", if there is one.
    pub fn query(&self) -> Option<&'a [u8]> {
        let pq = self.path_and_query();
        memchr::memchr(b'?', pq).map(|i| &pq[i + 1..])
    }

    /// The target authority (`host[:port]`) as sent; see [`RequestHead::authority`].
    pub fn authority(&self) -> Option<&'a [u8]> {
        self.head.authority.map(|s| s.get(self.buf))
    }

    /// The authority without its port, e.g. for virtual-host matching.
    pub fn host(&self) -> Option<&'a [u8]> {
        self.authority().map(strip_port)
    }

    pub fn headers(&self) -> Headers<'a> {
        Headers {
            spans: &self.head.headers.0,
            buf: self.buf,
        }
    }

    pub fn upgrade(&self) -> Option<&'a [u8]> {
        self.head.upgrade.map(|s| s.get(self.buf))
    }

    /// A WebSocket handshake (RFC 6455 §4.1): GET with `Connection: upgrade`
    /// and `Upgrade: websocket`.
    pub fn is_websocket(&self) -> bool {
        self.head.method == Method::Get
            && self
                .upgrade()
                .is_some_and(|u| list_elements(u).any(|p| p.eq_ignore_ascii_case(b"websocket")))
    }

    /// CONNECT: after a 2xx response the connection becomes a byte tunnel.
    pub fn is_connect(&self) -> bool {
        self.head.method == Method::Connect
    }
}

/// A response head together with the buffer it was parsed from.
#[derive(Clone, Copy)]
pub struct ResponseView<'a> {
    pub head: &'a ResponseHead,
    pub buf: &'a [u8],
}

impl ResponseHead {
    pub fn view<'a>(&'a self, buf: &'a [u8]) -> ResponseView<'a> {
        ResponseView { head: self, buf }
    }
}

impl<'a> ResponseView<'a> {
    pub fn reason(&self) -> &'a [u8] {
        self.head.reason.get(self.buf)
    }

    pub fn headers(&self) -> Headers<'a> {
        Headers {
            spans: &self.head.headers.0,
            buf: self.buf,
        }
    }

    pub fn upgrade(&self) -> Option<&'a [u8]> {
        self.head.upgrade.map(|s| s.get(self.buf))
    }

    /// An interim 1xx other than 101: forward it, then parse the final response.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.head.status) && self.head.status != 101
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`; a bare `host` or `[v6]` unchanged.
pub fn strip_port(authority: &[u8]) -> &[u8] {
    if authority.first() == Some(&b'[') {
        return match memchr::memchr(b']', authority) {
            Some(i) => &authority[..=i],
            None => authority,
        };
    }
    match memchr::memrchr(b':', authority) {
        Some(i) => &authority[..i],
        None => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        max_head_bytes: 60 * 1024,
        max_headers: 100,
    };

    /// Parses `input` whole, then every prefix (every split point of a
    /// two-read arrival): each prefix must be Partial or fail the same way.
    fn req(input: &[u8]) -> Result<(RequestHead, usize), HeadError> {
        req_with(input, &L)
    }

    fn req_with(input: &[u8], limits: &Limits) -> Result<(RequestHead, usize), HeadError> {
        let whole = parse_request(input, limits);
        for cut in 0..input.len() {
            match parse_request(&input[..cut], limits) {
                Ok(Parsed::Partial) => {}
                Ok(Parsed::Complete { len, .. }) => {
                    // Only possible if the head ended before the cut.
                    assert!(len <= cut, "complete past the cut at {cut}");
                }
                Err(e) => assert_eq!(
                    whole.as_ref().err(),
                    Some(&e),
                    "prefix of {cut} bytes fails differently from the whole"
                ),
            }
        }
        match whole? {
            Parsed::Complete { head, len } => Ok((head, len)),
            Parsed::Partial => panic!(
                "whole input is partial: {:?}",
                String::from_utf8_lossy(input)
            ),
        }
    }

    fn resp(input: &[u8], method: Method) -> Result<(ResponseHead, usize), HeadError> {
        let whole = parse_response(input, &L, method);
        for cut in 0..input.len() {
            match parse_response(&input[..cut], &L, method) {
                Ok(Parsed::Partial) => {}
                Ok(Parsed::Complete { len, .. }) => assert!(len <= cut),
                Err(e) => assert_eq!(whole.as_ref().err(), Some(&e), "prefix {cut}"),
            }
        }
        match whole? {
            Parsed::Complete { head, len } => Ok((head, len)),
            Parsed::Partial => panic!("whole input is partial"),
        }
    }

    fn req_err(input: &[u8]) -> (HeadErrorKind, u16) {
        let e = req(input).expect_err("must be rejected");
        assert_eq!(e.side, Side::Downstream);
        (e.kind, e.status())
    }

    #[test]
    fn simple_get_with_offsets() {
        let input =
            b"GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: Example.COM:8080\r\nUser-Agent: t\r\n\r\nBODY";
        let (head, len) = req(input).unwrap();
        assert_eq!(len, input.len() - 4);
        let v = head.view(input);
        assert_eq!(v.method(), b"GET");
        assert_eq!(head.method, Method::Get);
        assert_eq!(v.path(), b"/a/b");
        assert_eq!(v.query(), Some(&b"x=1&y=2"[..]));
        assert_eq!(v.authority(), Some(&b"Example.COM:8080"[..]));
        assert_eq!(v.host(), Some(&b"Example.COM"[..]));
        assert_eq!(v.headers().len(), 2);
        assert_eq!(v.headers().get(b"user-agent"), Some(&b"t"[..]));
        assert_eq!(head.framing, BodyFraming::None);
        assert!(head.keep_alive);
        assert!(!head.expect_continue);
        // The spans point into the buffer, not into copies.
        let p = v.path();
        assert!(input.as_ptr_range().contains(&p.as_ptr()));
    }

    #[test]
    fn leading_empty_line_is_ignored() {
        // RFC 9112 §2.2: SHOULD ignore at least one empty line before the request line.
        let (head, _) = req(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(head.method, Method::Get);
    }

    #[test]
    fn content_length_forms() {
        let ok: &[(&[u8], u64)] = &[
            (b"Content-Length: 5\r\n", 5),
            (b"Content-Length: 0\r\n", 0),
            (b"Content-Length: 5\r\nContent-Length: 5\r\n", 5),
            (b"Content-Length: 5, 5\r\n", 5),
            (b"Content-Length: 5,5\r\n", 5),
            (b"Content-Length: 007\r\n", 7),
            (b"Content-Length: 18446744073709551615\r\n", u64::MAX),
        ];
        for (h, n) in ok {
            let input = [b"POST / HTTP/1.1\r\nHost: a\r\n", *h, b"\r\n"].concat();
            let (head, _) =
                req(&input).unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(h)));
            assert_eq!(head.framing, BodyFraming::Length(*n));
        }
    }

    /// The smuggling / malformed table: every case with its expected outcome.
    #[test]
    fn malformed_requests_table() {
        use HeadErrorKind::*;
        let cases: &[(&str, &[u8], HeadErrorKind, u16)] = &[
            ("CL and TE", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", ContentLengthWithTransferEncoding, 400),
            ("TE and CL", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", ContentLengthWithTransferEncoding, 400),
            ("differing CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", ConflictingContentLength, 400),
            ("differing CL list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", ConflictingContentLength, 400),
            ("CL with plus", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", InvalidContentLength, 400),
            ("CL negative", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n", InvalidContentLength, 400),
            ("CL inner space", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n", InvalidContentLength, 400),
            ("CL hex", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", InvalidContentLength, 400),
            ("CL empty", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", InvalidContentLength, 400),
            ("CL empty element", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,,5\r\n\r\n", InvalidContentLength, 400),
            ("CL overflow", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n", InvalidContentLength, 400),
            ("TE chunked, gzip", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", TransferEncodingNotChunked, 400),
            ("TE gzip", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", TransferEncodingNotChunked, 400),
            ("TE gzip, chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", UnsupportedTransferCoding, 501),
            ("TE chunked twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", TransferEncodingNotChunked, 400),
            ("TE chunked on two lines", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", TransferEncodingNotChunked, 400),
            ("TE then gzip line", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n", TransferEncodingNotChunked, 400),
            ("TE empty", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n", TransferEncodingNotChunked, 400),
            ("TE xchunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", TransferEncodingNotChunked, 400),
            ("TE on HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", TransferEncodingInHttp10, 400),
            ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", HeaderName, 400),
            ("obs-fold tab", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n", HeaderName, 400),
            ("space before colon", b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n", HeaderName, 400),
            ("tab before colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-A\t: b\r\n\r\n", HeaderName, 400),
            ("space before first header", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", HeaderName, 400),
            ("NUL in value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n", HeaderValue, 400),
            ("CR in value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", HeaderValue, 400),
            ("DEL in value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x7fc\r\n\r\n", HeaderValue, 400),
            ("NUL in name", b"GET / HTTP/1.1\r\nHost: a\r\nX\0A: b\r\n\r\n", HeaderName, 400),
            ("empty name", b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", HeaderName, 400),
            ("bare LF after header", b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n", LineEnding, 400),
            ("bare LF after request line", b"GET / HTTP/1.1\nHost: a\r\n\r\n", LineEnding, 400),
            ("bare LF end of head", b"GET / HTTP/1.1\r\nHost: a\r\n\n", LineEnding, 400),
            ("bare LF before request line", b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", LineEnding, 400),
            ("missing host", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", MissingHost, 400),
            ("duplicate host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", DuplicateHost, 400),
            ("host with userinfo", b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", InvalidHost, 400),
            ("host with comma", b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", InvalidHost, 400),
            ("host with slash", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", InvalidHost, 400),
            ("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", Version, 400),
            ("lowercase version", b"GET / http/1.1\r\nHost: a\r\n\r\n", Version, 400),
            ("two spaces", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", RequestLine, 400),
            ("space in target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", Version, 400),
            ("relative target", b"GET a HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget, 400),
            ("asterisk not OPTIONS", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget, 400),
            ("CONNECT origin-form", b"CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget, 400),
            ("CONNECT without port", b"CONNECT db.internal HTTP/1.1\r\nHost: db.internal\r\n\r\n", InvalidTarget, 400),
            ("CONNECT empty port", b"CONNECT db: HTTP/1.1\r\nHost: db\r\n\r\n", InvalidTarget, 400),
            ("CONNECT port 0", b"CONNECT db:0 HTTP/1.1\r\nHost: db\r\n\r\n", InvalidTarget, 400),
            ("CONNECT port too big", b"CONNECT db:65536 HTTP/1.1\r\nHost: db\r\n\r\n", InvalidTarget, 400),
            ("CONNECT bare IPv6", b"CONNECT ::1:443 HTTP/1.1\r\nHost: x\r\n\r\n", InvalidTarget, 400),
            ("fragment in target", b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget, 400),
            ("fragment in absolute form", b"GET http://a/b#f HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget, 400),
            ("raw non-ASCII in target", b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget, 400),
            ("method with bad char", b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", RequestLine, 400),
        ];
        for (name, input, kind, status) in cases {
            let got = req(input).map(|(h, _)| h.framing);
            match got {
                Err(e) => assert_eq!((e.kind, e.status()), (*kind, *status), "case {name}"),
                Ok(f) => panic!("case {name}: accepted with {f:?}"),
            }
        }
    }

    #[test]
    fn counting_line_endings_finds_every_bare_lf() {
        // Every head over {a, CR, LF} up to 9 bytes (and one over the 255-byte
        // chunk) in which each CR starts a CRLF, as httparse guarantees:
        // the count agrees with looking at the byte before each LF.
        fn bare_lf(h: &[u8]) -> bool {
            (0..h.len()).any(|i| h[i] == b'\n' && (i == 0 || h[i - 1] != b'\r'))
        }
        let mut checked = 0;
        for len in 0..=9u32 {
            for mut n in 0..3usize.pow(len) {
                let mut h = Vec::new();
                for _ in 0..len {
                    h.push([b'a', b'\r', b'\n'][n % 3]);
                    n /= 3;
                }
                if (0..h.len()).any(|i| h[i] == b'\r' && h.get(i + 1) != Some(&b'\n')) {
                    continue;
                }
                let want = if bare_lf(&h) {
                    Err(HeadErrorKind::LineEnding)
                } else {
                    Ok(())
                };
                assert_eq!(check_line_endings(&h), want, "{h:?}");
                checked += 1;
            }
        }
        assert!(checked > 1000);
        let mut long = b"a\r\n".repeat(200);
        assert_eq!(check_line_endings(&long), Ok(()));
        long[400] = b'\n';
        assert_eq!(check_line_endings(&long), Err(HeadErrorKind::LineEnding));
    }

    #[test]
    fn what_httparse_enforces_by_itself() {
        // Documented in the module doc; if an httparse upgrade relaxes any of
        // these defaults, this test says which.
        let mut h = [httparse::EMPTY_HEADER; 4];
        let mut r = httparse::Request::new(&mut h);
        assert_eq!(
            r.parse(b"GET / HTTP/1.1\r\nA : b\r\n\r\n"),
            Err(httparse::Error::HeaderName)
        );
        let mut r = httparse::Request::new(&mut h);
        assert_eq!(
            r.parse(b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n"),
            Err(httparse::Error::HeaderName)
        );
        let mut r = httparse::Request::new(&mut h);
        assert_eq!(
            r.parse(b"GET / HTTP/1.1\r\nA: b\0\r\n\r\n"),
            Err(httparse::Error::HeaderValue)
        );
        // A CR anywhere but before an LF is refused, in requests and in
        // responses: check_line_endings counts on it (every CR starts a CRLF).
        for bad in [
            &b"GET /\r HTTP/1.1\r\nA: b\r\n\r\n"[..],
            b"GET / HTTP/1.1\rX\r\nA: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nA\r: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\r\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\r\n\r\r\n",
            b"\rGET / HTTP/1.1\r\nA: b\r\n\r\n",
        ] {
            let mut r = httparse::Request::new(&mut h);
            assert!(r.parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        for bad in [
            &b"HTTP/1.1 200 O\rK\r\nA: b\r\n\r\n"[..],
            b"HTTP/1.1 200\r OK\r\nA: b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\r\n\r\r\n",
        ] {
            let mut r = httparse::Response::new(&mut h);
            assert!(r.parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // ...but bare LF is accepted, which is why check_line_endings exists.
        let mut r = httparse::Request::new(&mut h);
        assert!(matches!(
            r.parse(b"GET / HTTP/1.1\nA: b\n\n"),
            Ok(httparse::Status::Complete(_))
        ));
    }

    #[test]
    fn limits_answer_431() {
        let many: Vec<u8> = [
            &b"GET / HTTP/1.1\r\nHost: a\r\n"[..],
            &b"X-A: b\r\n".repeat(100),
            b"\r\n",
        ]
        .concat();
        assert_eq!(req_err(&many), (HeadErrorKind::TooManyHeaders, 431));
        // Exactly at the limit passes.
        let ok: Vec<u8> = [
            &b"GET / HTTP/1.1\r\nHost: a\r\n"[..],
            &b"X-A: b\r\n".repeat(99),
            b"\r\n",
        ]
        .concat();
        assert_eq!(req(&ok).unwrap().0.view(&ok).headers().len(), 100);

        let small = Limits {
            max_head_bytes: 64,
            max_headers: 100,
        };
        let long = b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: 0123456789012345678901234567890123456789\r\n\r\n";
        let e = req_with(long, &small).unwrap_err();
        assert_eq!((e.kind, e.status()), (HeadErrorKind::HeadTooLarge, 431));
        // An unterminated head is refused as soon as it passes the limit.
        let endless = [&b"GET / HTTP/1.1\r\nX: "[..], &[b'a'; 100]].concat();
        assert_eq!(
            parse_request(&endless, &small).unwrap_err().kind,
            HeadErrorKind::HeadTooLarge
        );
        assert_eq!(parse_request(&endless[..60], &small), Ok(Parsed::Partial));
    }

    #[test]
    fn keep_alive_rules() {
        let cases: &[(&[u8], bool)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                false,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, CLOSE\r\n\r\n",
                false,
            ),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
            (
                b"GET / HTTP/1.0\r\nConnection: foo,  keep-alive\r\n\r\n",
                true,
            ),
        ];
        for (input, ka) in cases {
            assert_eq!(
                req(input).unwrap().0.keep_alive,
                *ka,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn expect_upgrade_connect() {
        let (h, _) =
            req(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-Continue\r\n\r\n")
                .unwrap();
        assert!(h.expect_continue);
        // RFC 9110 §10.1.1: ignored in HTTP/1.0.
        let (h, _) =
            req(b"PUT /x HTTP/1.0\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n").unwrap();
        assert!(!h.expect_continue);

        let ws = b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let (h, _) = req(ws).unwrap();
        assert!(h.connection.upgrade);
        assert!(h.view(ws).is_websocket());
        // Upgrade without the Connection token is not an upgrade request.
        let no = b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n";
        let (h, _) = req(no).unwrap();
        assert_eq!(h.upgrade, None);
        assert!(!h.view(no).is_websocket());

        let c = b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n";
        let (h, _) = req(c).unwrap();
        let v = h.view(c);
        assert!(v.is_connect());
        assert_eq!(v.authority(), Some(&b"db.internal:5432"[..]));
        assert_eq!(v.path_and_query(), b"");
        for ok in [
            &b"CONNECT [::1]:443 HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"CONNECT 10.0.0.1:65535 HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(req(ok).is_ok(), "{}", String::from_utf8_lossy(ok));
        }
        // Percent-encoded bytes and a query are fine.
        assert!(req(b"GET /caf%C3%A9?q=%20 HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
    }

    #[test]
    fn absolute_form_overrides_host() {
        let input = b"GET http://Svc.NS:9080/p?q HTTP/1.1\r\nHost: other\r\n\r\n";
        let (h, _) = req(input).unwrap();
        let v = h.view(input);
        assert_eq!(v.authority(), Some(&b"Svc.NS:9080"[..]));
        assert_eq!(v.path_and_query(), b"/p?q");
        let input = b"GET http://svc HTTP/1.1\r\nHost: svc\r\n\r\n";
        let (h, _) = req(input).unwrap();
        assert_eq!(h.view(input).path_and_query(), b"/");
        let input = b"OPTIONS * HTTP/1.1\r\nHost: svc\r\n\r\n";
        assert_eq!(req(input).unwrap().0.view(input).path(), b"*");
    }

    #[test]
    fn values_are_trimmed_and_obs_text_allowed() {
        let input =
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: \t  v w \t\r\nX-B: caf\xc3\xa9\r\nX-C:\r\n\r\n";
        let (h, _) = req(input).unwrap();
        let hs = h.view(input).headers();
        assert_eq!(hs.get(b"x-a"), Some(&b"v w"[..]));
        assert_eq!(hs.get(b"X-B"), Some(&b"caf\xc3\xa9"[..]));
        assert_eq!(hs.get(b"x-c"), Some(&b""[..]));
        assert_eq!(hs.get(b"x-d"), None);
    }

    #[test]
    fn reuse_storage() {
        let mut head = RequestHead::default();
        let a = b"GET /a HTTP/1.1\r\nHost: a\r\nX: 1\r\nY: 2\r\n\r\n";
        let b = b"GET /b HTTP/1.1\r\nHost: b\r\n\r\n";
        assert_eq!(parse_request_into(a, &L, &mut head), Ok(Some(a.len())));
        assert_eq!(parse_request_into(b, &L, &mut head), Ok(Some(b.len())));
        assert_eq!(head.view(b).headers().len(), 1);
        assert_eq!(head.view(b).path(), b"/b");
    }

    #[test]
    fn pipelined_requests() {
        let input = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n";
        let Ok(Parsed::Complete { len, .. }) = parse_request(input, &L) else {
            panic!()
        };
        let Ok(Parsed::Complete { head, .. }) = parse_request(&input[len..], &L) else {
            panic!()
        };
        assert_eq!(head.view(&input[len..]).path(), b"/2");
    }

    #[test]
    fn response_framing_table() {
        use BodyFraming::*;
        let cases: &[(&[u8], Method, BodyFraming, bool)] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                Method::Get,
                Length(10),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::Get,
                Chunked,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\n\r\n",
                Method::Get,
                CloseDelimited,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                Method::Head,
                None,
                true,
            ),
            (b"HTTP/1.1 204 No Content\r\n\r\n", Method::Get, None, true),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                Method::Get,
                None,
                true,
            ),
            (b"HTTP/1.1 100 Continue\r\n\r\n", Method::Post, None, true),
            (
                b"HTTP/1.1 200 Connection established\r\n\r\n",
                Method::Connect,
                None,
                true,
            ),
            (
                b"HTTP/1.1 407 Auth\r\nContent-Length: 0\r\n\r\n",
                Method::Connect,
                Length(0),
                true,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
                Method::Get,
                Length(1),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n",
                Method::Get,
                Length(1),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n",
                Method::Get,
                Length(1),
                false,
            ),
            (
                b"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\n",
                Method::Get,
                Length(1),
                true,
            ),
        ];
        for (input, m, framing, ka) in cases {
            let (h, _) = resp(input, *m)
                .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(input)));
            assert_eq!(
                (h.framing, h.keep_alive),
                (*framing, *ka),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn malformed_responses_table() {
        use HeadErrorKind::*;
        let cases: &[(&str, &[u8], HeadErrorKind)] = &[
            (
                "CL and TE",
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                ContentLengthWithTransferEncoding,
            ),
            (
                "CL and TE on HEAD too",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                ContentLengthWithTransferEncoding,
            ),
            (
                "differing CL",
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                ConflictingContentLength,
            ),
            (
                "TE gzip",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                TransferEncodingNotChunked,
            ),
            (
                "TE 1.0",
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                TransferEncodingInHttp10,
            ),
            (
                "obs-fold",
                b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
                HeaderName,
            ),
            (
                "space before colon",
                b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
                HeaderName,
            ),
            (
                "bare LF",
                b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
                LineEnding,
            ),
            ("bad status", b"HTTP/1.1 2000 OK\r\n\r\n", StatusLine),
            ("bad version", b"HTTP/1.2 200 OK\r\n\r\n", Version),
        ];
        for (name, input, kind) in cases {
            let e = resp(input, Method::Get).expect_err(name);
            assert_eq!(
                (e.side, e.kind, e.status()),
                (Side::Upstream, *kind, 502),
                "case {name}"
            );
        }
    }

    #[test]
    fn upgrade_response() {
        let input = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
        let (h, _) = resp(input, Method::Get).unwrap();
        assert_eq!(h.view(input).upgrade(), Some(&b"websocket"[..]));
        assert!(!h.view(input).is_interim());
        let input = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n";
        let (h, _) = resp(input, Method::Get).unwrap();
        assert!(h.view(input).is_interim());
    }

    /// Deterministic mutation fuzzing: no input may panic, and whatever is
    /// accepted must have every span inside the head.
    #[test]
    fn mutated_inputs_never_panic() {
        let seeds: &[&[u8]] = &[
            b"POST http://a:1/p?q HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: x, close\r\nExpect: 100-continue\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nUpgrade: ws\r\n\r\n",
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet = b"\r\n :,;\t\0\x7f\xffaAzZ09-/?*[]";
        for round in 0..20_000 {
            let mut input = seeds[round % seeds.len()].to_vec();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % input.len();
                let b = alphabet[(next() as usize) % alphabet.len()];
                match next() % 3 {
                    0 => input[at] = b,
                    1 => input.insert(at, b),
                    _ => {
                        input.remove(at);
                    }
                }
                if input.is_empty() {
                    input.push(b'G');
                }
            }
            if let Ok(Parsed::Complete { head, len }) = parse_request(&input, &L) {
                let v = head.view(&input);
                for (n, val) in v.headers().iter() {
                    assert!(!n.is_empty());
                    assert!(!val.contains(&b'\n') && !val.contains(&b'\r'));
                }
                assert!(head.target.end as usize <= len);
            }
            for m in [Method::Get, Method::Head, Method::Connect] {
                if let Ok(Parsed::Complete { head, len }) = parse_response(&input, &L, m) {
                    assert!(head.reason.end as usize <= len);
                }
            }
        }
    }

    #[test]
    fn strip_port_forms() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"a.b", b"a.b"),
            (b"a.b:80", b"a.b"),
            (b"[::1]", b"[::1]"),
            (b"[::1]:8080", b"[::1]"),
            (b"10.0.0.1:1", b"10.0.0.1"),
            (b"", b""),
        ];
        for (a, h) in cases {
            assert_eq!(strip_port(a), *h);
        }
    }
}
