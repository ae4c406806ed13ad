//! The static table (RFC 7541 Appendix A) and the dynamic table (§2.3.2,
//! §4): a FIFO of entries whose bytes live in one buffer, shared by the
//! decoder and the encoder, which must evict identically.

use std::collections::VecDeque;

/// RFC 7541 Appendix A; HPACK index `i` (1-61) is `STATIC[i - 1]`.
pub const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// The first dynamic table index (§2.3.3).
pub const FIRST_DYNAMIC: usize = STATIC.len() + 1;

/// What a static table lookup found for a field (encoder side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaticMatch {
    None,
    /// The name is at this index (the lowest one that has it).
    Name(u8),
    /// Name and value are at this index.
    Field(u8),
}

/// The static table's entry for `name` (and `value`), by a match on the name
/// (rustc turns it into a switch on the length and few comparisons).
pub fn static_lookup(name: &[u8], value: &[u8]) -> StaticMatch {
    use StaticMatch::*;
    let with = |idx: u8, values: &[(&[u8], u8)]| {
        for &(v, i) in values {
            if v == value {
                return Field(i);
            }
        }
        Name(idx)
    };
    match name {
        b":authority" => Name(1),
        b":method" => with(2, &[(b"GET", 2), (b"POST", 3)]),
        b":path" => with(4, &[(b"/", 4), (b"/index.html", 5)]),
        b":scheme" => with(6, &[(b"http", 6), (b"https", 7)]),
        b":status" => with(
            8,
            &[
                (b"200", 8),
                (b"204", 9),
                (b"206", 10),
                (b"304", 11),
                (b"400", 12),
                (b"404", 13),
                (b"500", 14),
            ],
        ),
        b"accept-charset" => Name(15),
        b"accept-encoding" => with(16, &[(b"gzip, deflate", 16)]),
        b"accept-language" => Name(17),
        b"accept-ranges" => Name(18),
        b"accept" => Name(19),
        b"access-control-allow-origin" => Name(20),
        b"age" => Name(21),
        b"allow" => Name(22),
        b"authorization" => Name(23),
        b"cache-control" => Name(24),
        b"content-disposition" => Name(25),
        b"content-encoding" => Name(26),
        b"content-language" => Name(27),
        b"content-length" => Name(28),
        b"content-location" => Name(29),
        b"content-range" => Name(30),
        b"content-type" => Name(31),
        b"cookie" => Name(32),
        b"date" => Name(33),
        b"etag" => Name(34),
        b"expect" => Name(35),
        b"expires" => Name(36),
        b"from" => Name(37),
        b"host" => Name(38),
        b"if-match" => Name(39),
        b"if-modified-since" => Name(40),
        b"if-none-match" => Name(41),
        b"if-range" => Name(42),
        b"if-unmodified-since" => Name(43),
        b"last-modified" => Name(44),
        b"link" => Name(45),
        b"location" => Name(46),
        b"max-forwards" => Name(47),
        b"proxy-authenticate" => Name(48),
        b"proxy-authorization" => Name(49),
        b"range" => Name(50),
        b"referer" => Name(51),
        b"refresh" => Name(52),
        b"retry-after" => Name(53),
        b"server" => Name(54),
        b"set-cookie" => Name(55),
        b"strict-transport-security" => Name(56),
        b"transfer-encoding" => Name(57),
        b"user-agent" => Name(58),
        b"vary" => Name(59),
        b"via" => Name(60),
        b"www-authenticate" => Name(61),
        _ => None,
    }
}

/// Bytes an entry counts for, beyond its name and value (§4.1).
pub const ENTRY_OVERHEAD: usize = 32;

/// One entry: where its bytes start, as a position in the stream of all
/// bytes ever inserted (see `DynamicTable::origin`), and its two lengths.
#[derive(Debug, Clone, Copy)]
struct Entry {
    start: usize,
    name_len: usize,
    value_len: usize,
}

/// The dynamic table. Entries are appended at the back of `entries` and
/// their bytes at the end of `bytes`; eviction pops the front. The bytes of
/// the live entries are therefore one contiguous run at the end of
/// `bytes`, from the oldest entry's start; when appending would make
/// `bytes` longer than twice the size limit, the dead prefix is dropped
/// first (one memmove of at most `max_size` bytes per `max_size` bytes
/// inserted, so O(1) per byte). In steady state neither container
/// allocates: `bytes` stays under 2 x `max_size` and `entries` under
/// `max_size / 32` entries.
#[derive(Debug)]
pub struct DynamicTable {
    entries: VecDeque<Entry>,
    bytes: Vec<u8>,
    /// The stream position of `bytes[0]`. Positions grow with every byte
    /// inserted and are compared and subtracted wrapping, so even 2^64
    /// inserted bytes would not break them.
    origin: usize,
    /// Sum of the entries' sizes (§4.1).
    size: usize,
    /// The current limit on `size` (the last table size update, §4.2).
    max_size: usize,
    /// Entries inserted so far, wrapping: the encoder's hash index names
    /// entries by this count.
    inserted: u32,
}

impl DynamicTable {
    pub fn new(max_size: usize) -> DynamicTable {
        DynamicTable {
            entries: VecDeque::new(),
            bytes: Vec::new(),
            origin: 0,
            size: 0,
            max_size,
            inserted: 0,
        }
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The sum of the entries' sizes (§4.1).
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// The count of entries ever inserted (wrapping): the newest entry is
    /// number `inserted() - 1`.
    pub fn inserted(&self) -> u32 {
        self.inserted
    }

    /// Entry `i`, 0 being the newest (HPACK index `FIRST_DYNAMIC + i`).
    #[inline]
    pub fn get(&self, i: usize) -> Option<(&[u8], &[u8])> {
        let back = self.entries.len().checked_sub(1)?.checked_sub(i)?;
        let e = self.entries[back];
        // Invariant: every live entry's bytes lie inside `bytes`
        // (`append` writes them there; only dead bytes are dropped).
        let at = e.start.wrapping_sub(self.origin);
        let name = &self.bytes[at..at + e.name_len];
        let value = &self.bytes[at + e.name_len..at + e.name_len + e.value_len];
        Some((name, value))
    }

    /// Sets the size limit (a table size update, §4.3), evicting what no
    /// longer fits.
    pub fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size;
        while self.size > max_size {
            self.evict();
        }
    }

    /// Inserts a field as the newest entry, evicting the oldest ones to make
    /// room; a field larger than the limit empties the table and is not
    /// inserted (§4.4). Returns whether it was inserted.
    pub fn insert(&mut self, name: &[u8], value: &[u8]) -> bool {
        let len = name.len().saturating_add(value.len());
        let size = len.saturating_add(ENTRY_OVERHEAD);
        if size > self.max_size {
            while !self.entries.is_empty() {
                self.evict();
            }
            return false;
        }
        while self.size + size > self.max_size {
            self.evict();
        }
        // The live bytes are at most `max_size - size`, so after dropping the
        // dead prefix the new entry ends within `max_size`.
        if self.bytes.len() + len > self.max_size.saturating_mul(2) {
            let dead = match self.entries.front() {
                Some(e) => e.start.wrapping_sub(self.origin),
                None => self.bytes.len(),
            };
            self.bytes.drain(..dead);
            self.origin = self.origin.wrapping_add(dead);
        }
        let start = self.origin.wrapping_add(self.bytes.len());
        self.bytes.extend_from_slice(name);
        self.bytes.extend_from_slice(value);
        self.entries.push_back(Entry {
            start,
            name_len: name.len(),
            value_len: value.len(),
        });
        self.size += size;
        self.inserted = self.inserted.wrapping_add(1);
        true
    }

    fn evict(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.size -= e.name_len + e.value_len + ENTRY_OVERHEAD;
        }
        if self.entries.is_empty() {
            // Nothing live: the next entry starts at `bytes[0]` again.
            self.origin = self.origin.wrapping_add(self.bytes.len());
            self.bytes.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_lookup_agrees_with_the_table() {
        for (i, &(name, value)) in STATIC.iter().enumerate() {
            let idx = (i + 1) as u8;
            match static_lookup(name, value) {
                StaticMatch::Field(j) => assert_eq!(j, idx, "{:?}", std::str::from_utf8(name)),
                // Entries with an empty value match by name only, and the
                // lookup names the first index with that name.
                StaticMatch::Name(j) => {
                    assert!(value.is_empty());
                    assert_eq!(STATIC[j as usize - 1].0, name);
                    assert!(j <= idx);
                }
                StaticMatch::None => panic!("{:?} not found", std::str::from_utf8(name)),
            }
        }
        assert_eq!(static_lookup(b":status", b"201"), StaticMatch::Name(8));
        assert_eq!(static_lookup(b"x-foo", b""), StaticMatch::None);
    }

    #[test]
    fn evicts_oldest_first_and_keeps_bytes_bounded() {
        let mut t = DynamicTable::new(99);
        // 33 + 34 = 67; a third entry of 33 needs the first evicted.
        assert!(t.insert(b"a", b""));
        assert!(t.insert(b"b", b"c"));
        assert_eq!(t.size(), 67);
        assert!(t.insert(b"d", b""));
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(0), Some((&b"d"[..], &b""[..])));
        assert_eq!(t.get(1), Some((&b"b"[..], &b"c"[..])));
        assert_eq!(t.get(2), None);
        // Larger than the table: empties it.
        assert!(!t.insert(&[b'x'; 69], b""));
        assert_eq!((t.len(), t.size()), (0, 0));
        // Many inserts: the byte buffer stays under twice the limit.
        for i in 0..10_000u32 {
            let v = i.to_string();
            t.insert(b"k", v.as_bytes());
            assert_eq!(t.get(0).unwrap().1, v.as_bytes());
            assert!(t.bytes.len() <= 198);
        }
        t.set_max_size(0);
        assert_eq!((t.len(), t.size()), (0, 0));
    }
}
