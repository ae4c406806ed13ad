//! An HTTP/2 request head in one buffer: the fields HPACK decodes, checked
//! as RFC 9113 §8.2 and §8.3 require of a server, kept as spans into one
//! byte buffer (no per-field allocation, no header map), and read by
//! routing and policy through `http::RequestParts` like an HTTP/1 head.
//!
//! A head is built field by field ([`HeadBuilder::field`], the HPACK
//! decoder's sink) and then finished ([`HeadBuilder::finish`]). Every rule
//! a field breaks makes the request malformed (§8.1.1: a stream error
//! PROTOCOL_ERROR), except size: a header list over the advertised
//! SETTINGS_MAX_HEADER_LIST_SIZE is decoded to its end (HPACK's table must
//! stay in step with the peer's) and answered 431, as h2 and Envoy do.

use super::Span;
use crate::http::head::{has_port, valid_authority};
use crate::http::rewrite::{is_lowercase_token, is_valid_header_name, is_valid_header_value};
use crate::http::RequestParts;

#[derive(Clone, Copy, Debug)]
struct Field {
    name: Span,
    value: Span,
    /// Sent as never indexed (HPACK §6.2.3): passed on as such.
    never_indexed: bool,
}

/// A request head from HEADERS (and CONTINUATION) frames.
#[derive(Debug, Default)]
pub struct RequestHead {
    buf: Vec<u8>,
    fields: Vec<Field>,
    method: Option<Span>,
    scheme: Option<Span>,
    authority: Option<Span>,
    path: Option<Span>,
}

/// Why a request head is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// RFC 9113 §8.1.1: RST_STREAM PROTOCOL_ERROR (the reason is logged).
    Protocol(&'static str),
    /// Over SETTINGS_MAX_HEADER_LIST_SIZE: a 431 answer.
    TooLarge,
}

/// Collects the fields of one header block.
pub struct HeadBuilder {
    head: RequestHead,
    /// RFC 9113 §6.5.2's size: name + value + 32 per field.
    list_size: usize,
    max_list_size: usize,
    regular_seen: bool,
    error: Option<Malformed>,
}

impl HeadBuilder {
    /// `max_list_size`: the SETTINGS_MAX_HEADER_LIST_SIZE advertised.
    pub fn new(max_list_size: u32) -> HeadBuilder {
        HeadBuilder::for_block(max_list_size, 0)
    }

    /// [`HeadBuilder::new`] for a header block of `block_len` bytes: room
    /// for what such a block usually decodes to, so that the head is one
    /// allocation per buffer instead of a doubling from 8 bytes (five
    /// reallocations for a typical request; 1 % of the core on
    /// h2-keepalive).
    pub fn for_block(max_list_size: u32, block_len: usize) -> HeadBuilder {
        let room = (block_len * 4).clamp(256, 4096);
        HeadBuilder {
            head: RequestHead {
                buf: Vec::with_capacity(room),
                fields: Vec::with_capacity(12),
                ..RequestHead::default()
            },
            list_size: 0,
            max_list_size: max_list_size as usize,
            regular_seen: false,
            error: None,
        }
    }

    fn fail(&mut self, m: Malformed) {
        // The first malformation is the one reported; a protocol error
        // outranks size (the request would be refused either way).
        match (self.error, m) {
            (None, _) | (Some(Malformed::TooLarge), Malformed::Protocol(_)) => self.error = Some(m),
            _ => {}
        }
    }

    /// One decoded field. Never fails: a malformed or oversized head is
    /// reported by `finish`, after the whole block was decoded.
    pub fn field(&mut self, name: &[u8], value: &[u8]) {
        self.field_marked(name, value, false)
    }

    /// [`HeadBuilder::field`] for a field HPACK marked never indexed
    /// (`never_indexed`), a mark the head keeps for an HTTP/2 upstream.
    pub fn field_marked(&mut self, name: &[u8], value: &[u8], never_indexed: bool) {
        self.list_size = self.list_size.saturating_add(name.len() + value.len() + 32);
        if self.list_size > self.max_list_size {
            self.fail(Malformed::TooLarge);
        }
        // Past the size limit the fields are still checked (a malformed
        // request is refused as such) but no longer kept.
        if matches!(self.error, Some(Malformed::Protocol(_))) {
            return;
        }
        let keep = self.error.is_none();
        if !valid_value(value) {
            return self.fail(Malformed::Protocol(
                "field value with NUL, CR, LF or edge whitespace",
            ));
        }
        let h = &mut self.head;
        if let Some(pseudo) = name.strip_prefix(b":") {
            if self.regular_seen {
                return self.fail(Malformed::Protocol("pseudo-header after a regular field"));
            }
            let slot = match pseudo {
                b"method" => {
                    if h.method.is_some() || value.is_empty() {
                        return self.fail(Malformed::Protocol("duplicate or empty :method"));
                    }
                    if !is_valid_header_name(value) {
                        return self.fail(Malformed::Protocol(":method is not a token"));
                    }
                    h.method = Some(if keep {
                        Span::push(&mut h.buf, value)
                    } else {
                        Span::default()
                    });
                    return;
                }
                b"scheme" => &mut h.scheme,
                b"authority" => &mut h.authority,
                b"path" => &mut h.path,
                _ => return self.fail(Malformed::Protocol("unknown pseudo-header")),
            };
            if slot.is_some() {
                return self.fail(Malformed::Protocol("duplicate pseudo-header"));
            }
            *slot = Some(if keep {
                Span::push(&mut h.buf, value)
            } else {
                Span::default()
            });
            return;
        }
        self.regular_seen = true;
        if !is_lowercase_token(name) {
            return self.fail(Malformed::Protocol("field name not a lowercase token"));
        }
        // §8.2.2: connection-specific fields make a request malformed; `te`
        // may only say "trailers".
        if matches!(
            name,
            b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade"
        ) {
            return self.fail(Malformed::Protocol("connection-specific field"));
        }
        if name == b"te" && value != b"trailers" {
            return self.fail(Malformed::Protocol("te other than trailers"));
        }
        if keep {
            let name = Span::push(&mut h.buf, name);
            let value = Span::push(&mut h.buf, value);
            h.fields.push(Field {
                name,
                value,
                never_indexed,
            });
        }
    }

    /// The head, once the block is decoded; §8.3.1's pseudo-header rules
    /// checked.
    pub fn finish(self) -> Result<RequestHead, Malformed> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let h = self.head;
        let Some(method) = h.method else {
            return Err(Malformed::Protocol("no :method"));
        };
        // §8.3.1: no userinfo; the same characters an HTTP/1 Host may have
        // (what goes upstream as Host must mean the same there).
        if h.authority.is_some_and(|a| !valid_authority(a.get(&h.buf))) {
            return Err(Malformed::Protocol(":authority is not a valid authority"));
        }
        let method = method.get(&h.buf);
        if method == b"CONNECT" {
            // §8.5: :authority (host and port) only.
            if h.scheme.is_some()
                || h.path.is_some()
                || h.authority.is_none_or(|a| !has_port(a.get(&h.buf)))
            {
                return Err(Malformed::Protocol(
                    "CONNECT with :scheme or :path, or without host:port",
                ));
            }
        } else {
            if h.scheme.is_none_or(|s| s.get(&h.buf).is_empty()) {
                return Err(Malformed::Protocol("no :scheme"));
            }
            // §8.3.1: :path is not empty; it starts with "/" or is "*"
            // (OPTIONS). As an HTTP/1 request-target it must be visible
            // ASCII without a fragment (what `http::head` demands of one).
            match h.path.map(|p| p.get(&h.buf)) {
                None | Some(b"") => return Err(Malformed::Protocol("no :path")),
                Some(b"*") if method == b"OPTIONS" => {}
                Some(p) if p[0] != b'/' => {
                    return Err(Malformed::Protocol(
                        ":path neither origin form nor * (OPTIONS)",
                    ))
                }
                Some(p) if p.iter().any(|&b| !b.is_ascii_graphic() || b == b'#') => {
                    return Err(Malformed::Protocol(
                        ":path with a space, a control byte, non-ASCII or #",
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(h)
    }
}

/// A trailer block: regular fields only (§8.1).
pub fn trailers_ok(name: &[u8], value: &[u8]) -> bool {
    !name.starts_with(b":") && is_lowercase_token(name) && valid_value(value)
}

/// RFC 9113 §8.2.1 forbids NUL, CR and LF and whitespace at either end;
/// the value is also held to RFC 9110's field-value (no other control
/// character but HTAB), as an HTTP/1 head is (`http::rewrite`) and as
/// nghttp2 (Envoy's codec) does: what goes upstream is what an HTTP/1
/// client could have sent.
pub(super) fn valid_value(v: &[u8]) -> bool {
    is_valid_header_value(v)
}

impl RequestHead {
    pub fn method(&self) -> &[u8] {
        self.method.map_or(&b""[..], |m| m.get(&self.buf))
    }
    pub fn scheme(&self) -> Option<&[u8]> {
        self.scheme.map(|s| s.get(&self.buf))
    }
    pub fn authority(&self) -> Option<&[u8]> {
        self.authority.map(|s| s.get(&self.buf))
    }
    pub fn path(&self) -> Option<&[u8]> {
        self.path.map(|s| s.get(&self.buf))
    }
    /// The regular fields, in the order they came.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.fields
            .iter()
            .map(|f| (f.name.get(&self.buf), f.value.get(&self.buf)))
    }
    /// The buffer every field, and :authority and :path, are spans of.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
    /// The regular fields as spans of [`RequestHead::bytes`]: name, value,
    /// never-indexed mark.
    pub fn field_ranges(
        &self,
    ) -> impl ExactSizeIterator<Item = (std::ops::Range<usize>, std::ops::Range<usize>, bool)> + '_
    {
        self.fields
            .iter()
            .map(|f| (f.name.range(), f.value.range(), f.never_indexed))
    }
    /// :authority and :path as spans of [`RequestHead::bytes`].
    pub fn authority_range(&self) -> Option<std::ops::Range<usize>> {
        self.authority.map(|s| s.range())
    }
    pub fn path_range(&self) -> Option<std::ops::Range<usize>> {
        self.path.map(|s| s.range())
    }
    /// The values of one field (name lowercase).
    pub fn values<'s>(&'s self, name: &'s [u8]) -> impl Iterator<Item = &'s [u8]> + 's {
        self.fields()
            .filter(move |(n, _)| *n == name)
            .map(|(_, v)| v)
    }
}

impl RequestParts for RequestHead {
    fn method(&self) -> &[u8] {
        RequestHead::method(self)
    }
    fn authority(&self) -> Option<&[u8]> {
        // §8.3.1: :authority, else Host.
        RequestHead::authority(self).or_else(|| self.values(b"host").next())
    }
    fn path_and_query(&self) -> &[u8] {
        self.path().filter(|p| p.starts_with(b"/")).unwrap_or(b"/")
    }
    fn header_values<'s>(&'s self, name: &'s [u8]) -> impl Iterator<Item = &'s [u8]> + 's {
        self.values(name)
    }
    fn header_fields<'s>(&'s self) -> impl Iterator<Item = (&'s [u8], &'s [u8])> + 's {
        self.fields()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(fields: &[(&str, &str)]) -> Result<RequestHead, Malformed> {
        let mut b = HeadBuilder::new(16 * 1024);
        for (n, v) in fields {
            b.field(n.as_bytes(), v.as_bytes());
        }
        b.finish()
    }

    const GET: [(&str, &str); 4] = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "example.com"),
        (":path", "/a?b"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        GET.iter().chain(extra).copied().collect()
    }

    fn refused(fields: &[(&str, &str)]) -> &'static str {
        match head(fields) {
            Err(Malformed::Protocol(why)) => why,
            other => panic!("{fields:?} accepted or too large: {other:?}"),
        }
    }

    #[test]
    fn a_request_reads_like_an_http1_one() {
        let h = head(&with(&[
            ("user-agent", "curl"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
        ]))
        .unwrap();
        assert_eq!(RequestParts::method(&h), b"GET");
        assert_eq!(RequestParts::authority(&h), Some(&b"example.com"[..]));
        assert_eq!(h.path_and_query(), b"/a?b");
        assert_eq!(h.scheme(), Some(&b"http"[..]));
        assert_eq!(
            h.header_values(b"cookie").collect::<Vec<_>>(),
            [&b"a=1"[..], b"b=2"]
        );
        assert_eq!(h.header_fields().count(), 3);
        // Host stands in for a missing :authority.
        let h = head(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/"),
            ("host", "h"),
        ])
        .unwrap();
        assert_eq!(RequestParts::authority(&h), Some(&b"h"[..]));
    }

    #[test]
    fn pseudo_header_rules() {
        assert_eq!(refused(&GET[1..]), "no :method");
        assert_eq!(refused(&[GET[0], GET[2], GET[3]]), "no :scheme");
        assert_eq!(refused(&GET[..3]), "no :path");
        assert_eq!(
            refused(&with(&[(":path", "/again")])),
            "duplicate pseudo-header"
        );
        assert_eq!(
            refused(&[GET[0], ("a", "b"), GET[1], GET[2], GET[3]]),
            "pseudo-header after a regular field"
        );
        assert_eq!(
            refused(&with(&[(":status", "200")])),
            "unknown pseudo-header"
        );
        assert_eq!(
            refused(&[GET[0], GET[1], GET[2], (":path", "a")]),
            ":path neither origin form nor * (OPTIONS)"
        );
        assert!(head(&[GET[0], GET[1], GET[2], (":path", "*")]).is_err());
        for p in ["/a b", "/a#f", "/\x7f", "/caf\u{e9}"] {
            assert!(
                head(&[GET[0], GET[1], GET[2], (":path", p)]).is_err(),
                "{p:?}"
            );
        }
        for a in ["user@host", "a b", "h/x", ""] {
            assert_eq!(
                refused(&[GET[0], GET[1], (":authority", a), GET[3]]),
                ":authority is not a valid authority"
            );
        }
        assert!(head(&[(":method", "OPTIONS"), GET[1], GET[2], (":path", "*")]).is_ok());
        assert_eq!(
            refused(&[(":method", "G T"), GET[1], GET[2], GET[3]]),
            ":method is not a token"
        );
        // CONNECT: :authority only.
        assert!(head(&[(":method", "CONNECT"), (":authority", "h:443")]).is_ok());
        assert!(head(&[(":method", "CONNECT"), (":authority", "h")]).is_err());
        assert!(head(&[(":method", "CONNECT"), (":authority", "h:443"), GET[3]]).is_err());
        assert!(head(&[(":method", "CONNECT")]).is_err());
    }

    #[test]
    fn field_rules() {
        assert_eq!(
            refused(&with(&[("User-Agent", "x")])),
            "field name not a lowercase token"
        );
        assert_eq!(
            refused(&with(&[("a b", "x")])),
            "field name not a lowercase token"
        );
        assert_eq!(
            refused(&with(&[("", "x")])),
            "field name not a lowercase token"
        );
        // Control characters other than HTAB too (RFC 9110 field-value).
        for v in ["a\r\nb", "a\0", " a", "a\t", "a\n", "a\x01b", "a\x7fb"] {
            assert!(
                matches!(head(&with(&[("x", v)])), Err(Malformed::Protocol(_))),
                "{v:?}"
            );
        }
        assert!(head(&with(&[("x", "a b"), ("y", ""), ("z", "a\tb\u{e9}")])).is_ok());
        for n in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
        ] {
            assert_eq!(refused(&with(&[(n, "x")])), "connection-specific field");
        }
        assert_eq!(refused(&with(&[("te", "gzip")])), "te other than trailers");
        assert!(head(&with(&[("te", "trailers")])).is_ok());
    }

    #[test]
    fn an_oversized_list_is_431_unless_also_malformed() {
        let mut b = HeadBuilder::new(200);
        for (n, v) in GET {
            b.field(n.as_bytes(), v.as_bytes());
        }
        b.field(b"x", &[b'a'; 100]);
        assert_eq!(b.finish().unwrap_err(), Malformed::TooLarge);
        let mut b = HeadBuilder::new(100);
        for (n, v) in GET {
            b.field(n.as_bytes(), v.as_bytes());
        }
        b.field(b"Bad", b"x");
        assert!(matches!(b.finish(), Err(Malformed::Protocol(_))));
    }

    #[test]
    fn trailer_fields() {
        assert!(trailers_ok(b"grpc-status", b"0"));
        assert!(!trailers_ok(b":status", b"200"));
        assert!(!trailers_ok(b"Grpc-Status", b"0"));
        assert!(!trailers_ok(b"x", b"a\nb"));
    }
}
