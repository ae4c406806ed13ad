//! DNS messages on the wire (RFC 1035 §4), only what address lookups need:
//! encode an A or AAAA query, decode the answer section of a response (A, AAAA
//! and CNAME records; everything else is skipped) and follow its CNAME chain.
//!
//! Hand-written rather than taken from hickory-proto: the ~300 lines here
//! cover what we use, while hickory-proto 0.26 would add 38 crates (ICU
//! normalisation tables for IDNA, `url`, `rand` 0.10) and raise the minimum
//! Rust version to 1.88. Every read is bounds-checked: a response is untrusted
//! network input and must never panic (see the truncation and garbage tests).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_NXDOMAIN: u8 = 3;

/// UDP payload size we advertise with EDNS(0) (RFC 6891): the DNS Flag Day
/// 2020 value, small enough to avoid IP fragmentation on common paths, large
/// enough that a Kubernetes headless service with dozens of pods fits
/// without falling back to TCP.
pub const EDNS_UDP_PAYLOAD: u16 = 1232;

/// CNAME hops followed before giving up (loops and absurd chains).
pub const MAX_CNAME_HOPS: usize = 8;

/// The record type a query asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QType {
    A,
    Aaaa,
}

impl QType {
    pub fn code(self) -> u16 {
        match self {
            QType::A => TYPE_A,
            QType::Aaaa => TYPE_AAAA,
        }
    }
}

/// A domain name in uncompressed wire form (length-prefixed labels ending
/// with the zero-length root label), ASCII-lowercased: names compare
/// case-insensitively (RFC 4343), and wire form keeps a label that contains
/// a '.' byte distinct from two labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Name(Vec<u8>);

impl Name {
    /// Parses a host name as written in a config (`reviews.default.svc`,
    /// optionally with a trailing dot). Labels are 1..=63 bytes of letters,
    /// digits, '-' and '_' (RFC 1035 §2.3.1 plus the underscore that service
    /// names use); the whole name is at most 255 bytes on the wire (§3.1).
    /// Internationalised names must be given in their `xn--` form.
    pub fn from_host(host: &str) -> Result<Name, &'static str> {
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.is_empty() {
            return Err("empty name");
        }
        let mut wire = Vec::with_capacity(host.len() + 2);
        for label in host.split('.') {
            if label.is_empty() {
                return Err("empty label (two dots in a row, or a leading dot)");
            }
            if label.len() > 63 {
                return Err("a label is longer than 63 characters");
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err("only letters, digits, '-' and '_' are allowed (write international names in their xn-- form)");
            }
            wire.push(label.len() as u8);
            wire.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
        wire.push(0);
        if wire.len() > 255 {
            return Err("longer than 255 bytes");
        }
        Ok(Name(wire))
    }

    /// `self` followed by `suffix` (a search domain), if the result fits.
    pub fn join(&self, suffix: &Name) -> Option<Name> {
        let mut wire = self.0[..self.0.len() - 1].to_vec();
        wire.extend_from_slice(&suffix.0);
        (wire.len() <= 255).then_some(Name(wire))
    }

    #[cfg(test)]
    pub fn wire(&self) -> &[u8] {
        &self.0
    }

    /// Dotted form for messages, without the trailing dot; bytes that are
    /// not printable ASCII are escaped as `\DDD` (RFC 1035 §5.1).
    pub fn to_dotted(&self) -> String {
        let mut out = String::new();
        let mut i = 0;
        while let Some(&len) = self.0.get(i) {
            if len == 0 {
                break;
            }
            if !out.is_empty() {
                out.push('.');
            }
            for &b in self.0.get(i + 1..i + 1 + len as usize).unwrap_or(&[]) {
                if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                    out.push(b as char);
                } else {
                    out.push_str(&format!("\\{b:03}"));
                }
            }
            i += 1 + len as usize;
        }
        if out.is_empty() {
            out.push('.');
        }
        out
    }
}

/// Encodes a recursive query for `name`/`qtype` in class IN; with `edns`, an
/// OPT pseudo-record in the additional section advertises
/// [`EDNS_UDP_PAYLOAD`] (RFC 6891 §6.1.2).
pub fn encode_query(id: u16, name: &Name, qtype: QType, edns: bool) -> Vec<u8> {
    let mut m = Vec::with_capacity(12 + name.0.len() + 4 + 11);
    m.extend_from_slice(&id.to_be_bytes());
    // Flags: only RD (recursion desired), RFC 1035 §4.1.1.
    m.extend_from_slice(&0x0100u16.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    m.extend_from_slice(&0u16.to_be_bytes()); // ANCOUNT
    m.extend_from_slice(&0u16.to_be_bytes()); // NSCOUNT
    m.extend_from_slice(&u16::from(edns).to_be_bytes()); // ARCOUNT
    m.extend_from_slice(&name.0);
    m.extend_from_slice(&qtype.code().to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    if edns {
        m.push(0); // owner: root
        m.extend_from_slice(&TYPE_OPT.to_be_bytes());
        m.extend_from_slice(&EDNS_UDP_PAYLOAD.to_be_bytes()); // "class" = payload size
        m.extend_from_slice(&0u32.to_be_bytes()); // extended rcode, version 0, no DO bit
        m.extend_from_slice(&0u16.to_be_bytes()); // RDLENGTH
    }
    m
}

/// Why a datagram was not accepted as the answer to a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Not an answer to this query (other ID, other question, not a
    /// response): ignored, as RFC 5452 §9.1 asks, and the wait goes on.
    Mismatch,
    /// Claims to answer this query but cannot be decoded.
    Malformed(&'static str),
}

/// The message ID, if the datagram is long enough to have one.
pub fn message_id(msg: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.first()?, *msg.get(1)?]))
}

/// What a response says about one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub rcode: u8,
    /// TC bit: the answer did not fit; ask again over TCP (RFC 1035 §4.2.1,
    /// RFC 7766 §5). Nothing else of a truncated answer is used.
    pub truncated: bool,
    /// The end of the CNAME chain that starts at the query name.
    pub final_name: Name,
    /// Addresses of `final_name` of the queried type, in answer order.
    pub addrs: Vec<IpAddr>,
    /// Smallest TTL along the chain and over the addresses, in seconds.
    pub ttl: u32,
}

/// One resource record of the answer section that we care about.
enum Data {
    Addr(IpAddr),
    Cname(Name),
}

struct Record {
    owner: Name,
    ttl: u32,
    data: Data,
}

/// A cursor over an untrusted message: every read checks its bounds.
struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Malformed(what))?;
        let b = self
            .msg
            .get(self.pos..end)
            .ok_or(WireError::Malformed(what))?;
        self.pos = end;
        Ok(b)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn name(&mut self) -> Result<Name, WireError> {
        let (name, end) = read_name(self.msg, self.pos)?;
        self.pos = end;
        Ok(name)
    }
}

/// Reads a possibly compressed name at `start`; returns it and the offset just
/// past it in the original byte stream.
///
/// A compression pointer must point strictly before the run of labels it
/// ends (RFC 1035 §4.1.4: "a prior occurrence of the same name"). Each jump
/// therefore lands earlier than the last, which bounds the work and rules out
/// loops without a separate jump counter.
fn read_name(msg: &[u8], start: usize) -> Result<(Name, usize), WireError> {
    const PAST_END: WireError = WireError::Malformed("name runs past the end of the message");
    let mut wire = Vec::with_capacity(32);
    let mut pos = start;
    let mut run_start = start;
    let mut end = None;
    loop {
        let len = *msg.get(pos).ok_or(PAST_END)? as usize;
        match len & 0xC0 {
            0x00 if len == 0 => {
                wire.push(0);
                pos += 1;
                break;
            }
            0x00 => {
                let label = msg.get(pos + 1..pos + 1 + len).ok_or(PAST_END)?;
                if wire.len() + 1 + len + 1 > 255 {
                    return Err(WireError::Malformed("name longer than 255 bytes"));
                }
                wire.push(len as u8);
                wire.extend(label.iter().map(u8::to_ascii_lowercase));
                pos += 1 + len;
            }
            0xC0 => {
                let low = *msg.get(pos + 1).ok_or(PAST_END)? as usize;
                let target = ((len & 0x3F) << 8) | low;
                if end.is_none() {
                    end = Some(pos + 2);
                }
                if target >= run_start {
                    return Err(WireError::Malformed(
                        "compression pointer does not point backwards",
                    ));
                }
                run_start = target;
                pos = target;
            }
            // 0x40 (extended label types, RFC 6891 §5) and 0x80 are not names we accept.
            _ => return Err(WireError::Malformed("unknown label type")),
        }
    }
    Ok((Name(wire), end.unwrap_or(pos)))
}

/// Decodes `msg` as the response to the query (`id`, `qname`, `qtype`).
pub fn decode_response(
    msg: &[u8],
    id: u16,
    qname: &Name,
    qtype: QType,
) -> Result<Response, WireError> {
    let mut r = Reader { msg, pos: 0 };
    if r.u16("short header").map_err(|_| WireError::Mismatch)? != id {
        return Err(WireError::Mismatch);
    }
    let flags = r.u16("short header")?;
    // QR must say "response" and the opcode "standard query" (RFC 1035 §4.1.1).
    if flags & 0x8000 == 0 || (flags >> 11) & 0xF != 0 {
        return Err(WireError::Mismatch);
    }
    let truncated = flags & 0x0200 != 0;
    let rcode = (flags & 0xF) as u8;
    let qdcount = r.u16("short header")?;
    let ancount = r.u16("short header")?;
    let _nscount = r.u16("short header")?;
    let _arcount = r.u16("short header")?;
    if truncated {
        // RFC 2181 §9: a truncated answer may lack records, so use none of it.
        return Ok(Response {
            rcode,
            truncated,
            final_name: qname.clone(),
            addrs: Vec::new(),
            ttl: 0,
        });
    }
    // The question must be ours (RFC 5452 §9.1), or a spoofed or stale
    // answer for another name could be taken for this one.
    if qdcount != 1 {
        return Err(WireError::Mismatch);
    }
    let name = r.name()?;
    let qt = r.u16("question runs past the end")?;
    let qc = r.u16("question runs past the end")?;
    if &name != qname || qt != qtype.code() || qc != CLASS_IN {
        return Err(WireError::Mismatch);
    }
    let mut records = Vec::new();
    for _ in 0..ancount {
        let owner = r.name()?;
        let rtype = r.u16("record runs past the end")?;
        let class = r.u16("record runs past the end")?;
        // RFC 2181 §8: a TTL with the top bit set is to be taken as zero.
        let ttl = match r.u32("record runs past the end")? {
            t if t > i32::MAX as u32 => 0,
            t => t,
        };
        let rdlen = r.u16("record runs past the end")? as usize;
        let rdata_start = r.pos;
        let rdata = r.bytes(rdlen, "record data runs past the end")?;
        if class != CLASS_IN {
            continue;
        }
        let data = match rtype {
            TYPE_A => {
                let b: [u8; 4] = rdata
                    .try_into()
                    .map_err(|_| WireError::Malformed("A record data is not 4 bytes"))?;
                Data::Addr(IpAddr::V4(Ipv4Addr::from(b)))
            }
            TYPE_AAAA => {
                let b: [u8; 16] = rdata
                    .try_into()
                    .map_err(|_| WireError::Malformed("AAAA record data is not 16 bytes"))?;
                Data::Addr(IpAddr::V6(Ipv6Addr::from(b)))
            }
            TYPE_CNAME => {
                let (target, end) = read_name(msg, rdata_start)?;
                if end != rdata_start + rdlen {
                    return Err(WireError::Malformed(
                        "CNAME data length disagrees with its name",
                    ));
                }
                Data::Cname(target)
            }
            _ => continue,
        };
        records.push(Record { owner, ttl, data });
    }
    // Authority and additional sections are not read: nothing in them is
    // needed for an address lookup, and records there are not trusted.
    let (final_name, addrs, ttl) = follow_chain(&records, qname, qtype)?;
    Ok(Response {
        rcode,
        truncated,
        final_name,
        addrs,
        ttl,
    })
}

/// Follows CNAMEs from `qname` (RFC 1034 §3.6.2: a name with a CNAME has no
/// other data, so a CNAME wins) and collects the addresses of the last name.
/// Records that are not on the chain are ignored.
fn follow_chain(
    records: &[Record],
    qname: &Name,
    qtype: QType,
) -> Result<(Name, Vec<IpAddr>, u32), WireError> {
    let mut current = qname;
    let mut ttl = u32::MAX;
    let mut hops = 0;
    while let Some(rec) = records
        .iter()
        .find(|r| &r.owner == current && matches!(r.data, Data::Cname(_)))
    {
        if let Data::Cname(target) = &rec.data {
            hops += 1;
            if hops > MAX_CNAME_HOPS {
                return Err(WireError::Malformed("CNAME chain too long or looping"));
            }
            ttl = ttl.min(rec.ttl);
            current = target;
        }
    }
    let mut addrs = Vec::new();
    for rec in records.iter().filter(|r| &r.owner == current) {
        if let Data::Addr(ip) = rec.data {
            let wanted = match qtype {
                QType::A => ip.is_ipv4(),
                QType::Aaaa => ip.is_ipv6(),
            };
            if wanted && !addrs.contains(&ip) {
                addrs.push(ip);
                ttl = ttl.min(rec.ttl);
            }
        }
    }
    Ok((current.clone(), addrs, ttl))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::from_host(s).unwrap()
    }

    /// Builds a response to `query` (as `encode_query` made it) with the
    /// given answer records, each (owner wire, type, ttl, rdata).
    pub(crate) fn response(
        query: &[u8],
        flags: u16,
        answers: &[(Vec<u8>, u16, u32, Vec<u8>)],
    ) -> Vec<u8> {
        // Header + question of the query, ARCOUNT cleared, OPT dropped.
        let qend = read_name(query, 12).unwrap().1 + 4;
        let mut m = query[..qend].to_vec();
        m[2..4].copy_from_slice(&flags.to_be_bytes());
        m[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
        m[10..12].copy_from_slice(&0u16.to_be_bytes());
        for (owner, t, ttl, data) in answers {
            m.extend_from_slice(owner);
            m.extend_from_slice(&t.to_be_bytes());
            m.extend_from_slice(&CLASS_IN.to_be_bytes());
            m.extend_from_slice(&ttl.to_be_bytes());
            m.extend_from_slice(&(data.len() as u16).to_be_bytes());
            m.extend_from_slice(data);
        }
        m
    }

    const PTR_QNAME: [u8; 2] = [0xC0, 12];

    #[test]
    fn host_names_are_validated_and_lowercased() {
        assert_eq!(n("A.b.").wire(), b"\x01a\x01b\x00");
        assert_eq!(n("A.b").to_dotted(), "a.b");
        assert!(Name::from_host("").is_err());
        assert!(Name::from_host(".").is_err());
        assert!(Name::from_host("a..b").is_err());
        assert!(Name::from_host(".a").is_err());
        assert!(Name::from_host("a b").is_err());
        assert!(Name::from_host("ünï.com").is_err());
        assert!(Name::from_host(&"a".repeat(64)).is_err());
        assert!(Name::from_host(&"a".repeat(63)).is_ok());
        let long = vec!["abcdefg"; 32].join(".");
        assert!(Name::from_host(&long).is_err(), "256 bytes on the wire");
        let suffix = n(&vec!["abcdefg"; 31].join(".")); // 249 bytes
        assert!(n("abcde").join(&suffix).is_some());
        assert!(n("abcdefg").join(&suffix).is_none());
        assert_eq!(n("r").join(&n("svc.local")).unwrap(), n("r.svc.local"));
    }

    #[test]
    fn query_layout() {
        let q = encode_query(0xBEEF, &n("ab.c"), QType::Aaaa, true);
        assert_eq!(
            &q[..12],
            b"\xBE\xEF\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01"
        );
        assert_eq!(&q[12..21], b"\x02ab\x01c\x00\x00\x1c\x00");
        assert_eq!(q[21], 1);
        assert_eq!(&q[22..], b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00");
        let q = encode_query(1, &n("ab.c"), QType::A, false);
        assert_eq!(q.len(), 12 + 6 + 4);
    }

    #[test]
    fn decodes_addresses_and_min_ttl() {
        let name = n("web.test");
        let q = encode_query(7, &name, QType::A, true);
        let m = response(
            &q,
            0x8180,
            &[
                (PTR_QNAME.to_vec(), TYPE_A, 30, vec![10, 0, 0, 1]),
                (PTR_QNAME.to_vec(), TYPE_A, 20, vec![10, 0, 0, 2]),
                // Not ours: a record for another owner is ignored.
                (n("evil.test").wire().to_vec(), TYPE_A, 1, vec![6, 6, 6, 6]),
            ],
        );
        let r = decode_response(&m, 7, &name, QType::A).unwrap();
        assert_eq!(r.rcode, RCODE_NOERROR);
        assert_eq!(
            r.addrs,
            vec![
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "10.0.0.2".parse().unwrap()
            ]
        );
        assert_eq!(r.ttl, 20);
        assert_eq!(r.final_name, name);
    }

    #[test]
    fn follows_cname_chains_with_compression() {
        let name = n("alias.test");
        let q = encode_query(9, &name, QType::Aaaa, false);
        // alias.test CNAME mid.test; mid.test CNAME web.test; web.test AAAA.
        let mut mid = b"\x03mid".to_vec();
        mid.extend_from_slice(&[0xC0, 18]); // "test" inside the question
        let m = response(
            &q,
            0x8180,
            &[
                (PTR_QNAME.to_vec(), TYPE_CNAME, 50, mid.clone()),
                (mid.clone(), TYPE_CNAME, 40, n("web.test").wire().to_vec()),
                (
                    n("WEB.test").wire().to_vec(),
                    TYPE_AAAA,
                    60,
                    "fd00::1".parse::<Ipv6Addr>().unwrap().octets().to_vec(),
                ),
            ],
        );
        let r = decode_response(&m, 9, &name, QType::Aaaa).unwrap();
        assert_eq!(r.final_name, n("web.test"));
        assert_eq!(r.addrs, vec!["fd00::1".parse::<IpAddr>().unwrap()]);
        assert_eq!(r.ttl, 40);
    }

    #[test]
    fn cname_loops_are_rejected() {
        let name = n("a.test");
        let q = encode_query(1, &name, QType::A, false);
        let m = response(
            &q,
            0x8180,
            &[
                (
                    PTR_QNAME.to_vec(),
                    TYPE_CNAME,
                    5,
                    n("b.test").wire().to_vec(),
                ),
                (
                    n("b.test").wire().to_vec(),
                    TYPE_CNAME,
                    5,
                    n("a.test").wire().to_vec(),
                ),
            ],
        );
        assert!(matches!(
            decode_response(&m, 1, &name, QType::A),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn mismatches_are_not_answers() {
        let name = n("web.test");
        let q = encode_query(7, &name, QType::A, false);
        let good = response(&q, 0x8180, &[]);
        assert!(decode_response(&good, 7, &name, QType::A).is_ok());
        assert_eq!(
            decode_response(&good, 8, &name, QType::A),
            Err(WireError::Mismatch)
        );
        assert_eq!(
            decode_response(&good, 7, &n("other.test"), QType::A),
            Err(WireError::Mismatch)
        );
        assert_eq!(
            decode_response(&good, 7, &name, QType::Aaaa),
            Err(WireError::Mismatch)
        );
        // Our own query echoed back (QR clear) is not an answer.
        assert_eq!(
            decode_response(&q, 7, &name, QType::A),
            Err(WireError::Mismatch)
        );
    }

    #[test]
    fn truncated_and_error_rcodes() {
        let name = n("web.test");
        let q = encode_query(7, &name, QType::A, false);
        let tc = response(&q, 0x8380, &[]);
        assert!(decode_response(&tc, 7, &name, QType::A).unwrap().truncated);
        // Some servers drop the question from a truncated answer.
        assert!(
            decode_response(&tc[..12], 7, &name, QType::A)
                .unwrap()
                .truncated
        );
        let nx = response(&q, 0x8183, &[]);
        assert_eq!(
            decode_response(&nx, 7, &name, QType::A).unwrap().rcode,
            RCODE_NXDOMAIN
        );
    }

    #[test]
    fn bad_records_are_malformed() {
        let name = n("web.test");
        let q = encode_query(7, &name, QType::A, false);
        let short_a = response(
            &q,
            0x8180,
            &[(PTR_QNAME.to_vec(), TYPE_A, 1, vec![1, 2, 3])],
        );
        assert!(matches!(
            decode_response(&short_a, 7, &name, QType::A),
            Err(WireError::Malformed(_))
        ));
        let forward_ptr = response(
            &q,
            0x8180,
            &[(vec![0xC0, 200], TYPE_A, 1, vec![1, 2, 3, 4])],
        );
        assert!(matches!(
            decode_response(&forward_ptr, 7, &name, QType::A),
            Err(WireError::Malformed(_))
        ));
        let self_ptr = {
            let mut m = response(&q, 0x8180, &[(vec![0xC0, 0], TYPE_A, 1, vec![1, 2, 3, 4])]);
            let at = m.len() - 16;
            m[at + 1] = at as u8; // a pointer to itself
            m
        };
        assert!(matches!(
            decode_response(&self_ptr, 7, &name, QType::A),
            Err(WireError::Malformed(_))
        ));
    }

    /// Every prefix and a spread of byte flips of a valid answer decode to
    /// something or an error, never a panic.
    #[test]
    fn truncations_and_corruptions_never_panic() {
        let name = n("alias.test");
        let q = encode_query(3, &name, QType::A, true);
        let m = response(
            &q,
            0x8180,
            &[
                (
                    PTR_QNAME.to_vec(),
                    TYPE_CNAME,
                    50,
                    n("web.test").wire().to_vec(),
                ),
                (n("web.test").wire().to_vec(), TYPE_A, 60, vec![10, 0, 0, 1]),
            ],
        );
        for len in 0..m.len() {
            let _ = decode_response(&m[..len], 3, &name, QType::A);
        }
        let mut seed = 0x2545F491u32;
        for _ in 0..20_000 {
            // xorshift: deterministic, no dependency.
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let mut c = m.clone();
            let i = seed as usize % c.len();
            c[i] = (seed >> 8) as u8;
            let j = (seed >> 16) as usize % c.len();
            c[j] ^= 0xC0;
            let _ = decode_response(&c, 3, &name, QType::A);
        }
    }
}
