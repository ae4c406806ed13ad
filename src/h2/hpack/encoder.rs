//! The encoding side: fields in, header blocks out (RFC 7541 §6), with a
//! dynamic table found through a hash index.

use super::huffman;
use super::table::{static_lookup, DynamicTable, StaticMatch, ENTRY_OVERHEAD, FIRST_DYNAMIC};

/// The largest dynamic table the encoder uses, whatever the peer allows
/// (RFC 7541 §4.2 lets an encoder use less): the protocol's default, about
/// 60 response fields, enough for the fields that repeat, and it keeps the
/// per-connection memory (`2 x` this for the bytes) and the hash index
/// small.
pub const ENCODER_TABLE_LIMIT: usize = 4096;

/// Slots of each hash index: at most `ENCODER_TABLE_LIMIT / 32` = 128
/// entries live at once, so collisions are rare.
const SLOTS: usize = 256;

/// Names whose values are usually different in every message, so indexing
/// them would only evict the entries that do repeat (the list nghttp2 uses,
/// and the request id Remora adds).
const NOT_INDEXED: [&[u8]; 9] = [
    b":path",
    b"age",
    b"content-length",
    b"etag",
    b"if-modified-since",
    b"if-none-match",
    b"location",
    b"set-cookie",
    b"x-request-id",
];

/// The hash indexes of the dynamic table: per slot, 1 + the insertion
/// number (`DynamicTable::inserted`) of an entry whose field (resp. name)
/// hashed there, 0 for none. A key has two candidate slots (two bytes of
/// its hash) and an insertion takes the one holding the older entry, so
/// two live fields that share one slot do not evict each other from the
/// index (with one slot, a browser request's 24 fields had two such pairs,
/// re-inserted on every request). A slot is a hint, checked against the
/// entry's bytes: it may name an evicted entry, or one with another field
/// of the same hash, and then the lookup misses, which costs compression,
/// never correctness.
struct Index {
    fields: [u32; SLOTS],
    names: [u32; SLOTS],
}

/// An HPACK encoder: one per connection and direction.
///
/// A block is `begin`, then `status` and `field`s in order; the bytes are
/// appended to the caller's buffer (the HEADERS payload being built). Each
/// field is written as the shortest representation available: an index
/// into the static or dynamic table when the whole field is there,
/// otherwise a literal naming the name by index when it can, inserted into
/// the dynamic table unless its value is large or usually unique; a literal
/// string is Huffman-coded when that is shorter.
pub struct Encoder {
    table: DynamicTable,
    /// The peer's last SETTINGS_HEADER_TABLE_SIZE.
    peer_max: usize,
    /// The smallest table size the encoder was held to since the last
    /// block, when a size update is due (§4.2).
    pending: Option<usize>,
    huffman: bool,
    index: Box<Index>,
}

impl Default for Encoder {
    fn default() -> Encoder {
        Encoder::new()
    }
}

impl Encoder {
    /// An encoder for a new connection: table size 4096, the protocol's
    /// default, until the peer's SETTINGS say otherwise.
    pub fn new() -> Encoder {
        Encoder {
            table: DynamicTable::new(ENCODER_TABLE_LIMIT),
            peer_max: 4096,
            pending: None,
            huffman: true,
            index: Box::new(Index {
                fields: [0; SLOTS],
                names: [0; SLOTS],
            }),
        }
    }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE is now `n`. The next block
    /// starts with a dynamic table size update (§4.2, §6.3) if the size the
    /// encoder uses (at most [`ENCODER_TABLE_LIMIT`]) changes, preceded by
    /// one to the smallest size seen since the last block if it went down
    /// and up again.
    pub fn set_max_table_size(&mut self, n: usize) {
        self.peer_max = n;
        let used = n.min(ENCODER_TABLE_LIMIT);
        let low = self.pending.unwrap_or(self.table.max_size());
        self.pending = Some(low.min(used));
    }

    /// Whether literal strings may be Huffman-coded (when shorter; on by
    /// default). Off trades bytes on the wire for the encoding's CPU.
    pub fn set_huffman(&mut self, on: bool) {
        self.huffman = on;
    }

    /// Starts a block: writes the table size updates due, if any.
    pub fn begin(&mut self, out: &mut Vec<u8>) {
        let Some(low) = self.pending.take() else {
            return;
        };
        let target = self.peer_max.min(ENCODER_TABLE_LIMIT);
        if low < self.table.max_size() {
            write_integer(low, 5, 0x20, out);
            self.table.set_max_size(low);
        }
        if target != self.table.max_size() {
            write_integer(target, 5, 0x20, out);
            self.table.set_max_size(target);
        }
    }

    /// `:status`: one byte for 200, 204, 206, 304, 400, 404 and 500 (static
    /// entries 8-14); other codes are indexed in the dynamic table.
    pub fn status(&mut self, code: u16, out: &mut Vec<u8>) {
        let idx = match code {
            200 => 8,
            204 => 9,
            206 => 10,
            304 => 11,
            400 => 12,
            404 => 13,
            500 => 14,
            _ => {
                debug_assert!((100..=999).contains(&code), "status {code}");
                let mut digits = [0u8; 5];
                let mut at = digits.len();
                let mut c = code;
                loop {
                    at -= 1;
                    digits[at] = b'0' + (c % 10) as u8;
                    c /= 10;
                    if c == 0 {
                        break;
                    }
                }
                self.field(b":status", &digits[at..], out);
                return;
            }
        };
        out.push(0x80 | idx);
    }

    /// One field. `name` is lowercase already (RFC 9113 §8.2.1; the
    /// caller's job).
    pub fn field(&mut self, name: &[u8], value: &[u8], out: &mut Vec<u8>) {
        debug_assert!(!name.iter().any(u8::is_ascii_uppercase), "uppercase name");
        self.encode(name, value, false, out);
    }

    /// A field never to be indexed (§6.2.3, §7.1.3): a literal that no
    /// intermediary may index either, for credentials and cookie-like
    /// values that a compression side channel could otherwise guess.
    pub fn field_sensitive(&mut self, name: &[u8], value: &[u8], out: &mut Vec<u8>) {
        debug_assert!(!name.iter().any(u8::is_ascii_uppercase), "uppercase name");
        self.encode(name, value, true, out);
    }

    fn encode(&mut self, name: &[u8], value: &[u8], sensitive: bool, out: &mut Vec<u8>) {
        let known = static_lookup(name, value);
        if let (StaticMatch::Field(i), false) = (known, sensitive) {
            out.push(0x80 | i);
            return;
        }
        let name_hash = hash(0, name);
        let field_hash = hash(name_hash, value);
        if !sensitive {
            let found = slots(field_hash)
                .into_iter()
                .find_map(|s| self.find(self.index.fields[s], name, Some(value)));
            if let Some(i) = found {
                write_integer(FIRST_DYNAMIC + i, 7, 0x80, out);
                return;
            }
        }
        let name_idx = match known {
            StaticMatch::Name(i) | StaticMatch::Field(i) => i as usize,
            StaticMatch::None => slots(name_hash)
                .into_iter()
                .find_map(|s| self.find(self.index.names[s], name, None))
                .map_or(0, |i| FIRST_DYNAMIC + i),
        };
        if sensitive {
            self.literal(0x10, 4, name_idx, name, value, out);
        } else if self.worth_indexing(name, value) {
            self.literal(0x40, 6, name_idx, name, value, out);
            if self.table.insert(name, value) {
                let v = self.table.inserted();
                let s = self.older_slot(&self.index.fields, field_hash);
                self.index.fields[s] = v;
                let s = self.older_slot(&self.index.names, name_hash);
                self.index.names[s] = v;
            }
        } else {
            self.literal(0x00, 4, name_idx, name, value, out);
        }
    }

    /// Whether to insert a field into the dynamic table: not when it would
    /// take more than a quarter of the table (it would evict several that
    /// repeat for one that may not), nor values that are usually unique.
    fn worth_indexing(&self, name: &[u8], value: &[u8]) -> bool {
        name.len() + value.len() + ENTRY_OVERHEAD <= self.table.max_size() / 4
            && !NOT_INDEXED.contains(&name)
    }

    /// Of the two slots for `hash`, the one to overwrite: empty, or holding
    /// the older entry (an evicted one is older than any live one).
    fn older_slot(&self, index: &[u32; SLOTS], hash: u64) -> usize {
        let age = |v: u32| match v {
            0 => u32::MAX,
            v => self.table.inserted().wrapping_sub(v),
        };
        let [a, b] = slots(hash);
        if age(index[b]) > age(index[a]) {
            b
        } else {
            a
        }
    }

    /// The dynamic table position (0 = newest) of the entry a slot holds
    /// (`v`: 1 + its insertion number), if it is still there and has this
    /// name (and value).
    #[inline]
    fn find(&self, v: u32, name: &[u8], value: Option<&[u8]>) -> Option<usize> {
        if v == 0 {
            return None;
        }
        let i = self.table.inserted().wrapping_sub(v) as usize;
        let (en, ev) = self.table.get(i)?;
        (en == name && value.is_none_or(|v| v == ev)).then_some(i)
    }

    /// A literal representation (§6.2): `flags` and an `n`-bit prefix
    /// for the name index, 0 meaning a literal name.
    fn literal(
        &self,
        flags: u8,
        n: u32,
        name_idx: usize,
        name: &[u8],
        value: &[u8],
        out: &mut Vec<u8>,
    ) {
        write_integer(name_idx, n, flags, out);
        if name_idx == 0 {
            self.string(name, out);
        }
        self.string(value, out);
    }

    /// A string literal (§5.2), Huffman-coded when that is shorter.
    #[inline]
    fn string(&self, s: &[u8], out: &mut Vec<u8>) {
        if self.huffman && s.len() < 0x7f {
            // One pass: the code goes after a length byte written last
            // (both lengths fit the 7-bit prefix), and is taken back when it
            // is not shorter.
            let at = out.len();
            out.reserve(s.len() + 1);
            out.push(0);
            huffman::encode(s, out);
            let len = out.len() - at - 1;
            if len < s.len() {
                out[at] = 0x80 | len as u8;
                return;
            }
            out.truncate(at);
        } else if self.huffman {
            let len = huffman::encoded_len(s);
            if len < s.len() {
                out.reserve(len + 5);
                write_integer(len, 7, 0x80, out);
                huffman::encode(s, out);
                return;
            }
        }
        write_integer(s.len(), 7, 0, out);
        out.extend_from_slice(s);
    }
}

/// Writes `value` with an `n`-bit prefix after `flags` (§5.1).
#[inline]
pub(super) fn write_integer(value: usize, n: u32, flags: u8, out: &mut Vec<u8>) {
    let mask = (1usize << n) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    let mut v = value - mask;
    while v >= 0x80 {
        out.push(0x80 | (v & 0x7f) as u8);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A multiplicative hash (FxHash's step) over the length and at most four
/// 8-byte words: all of a string of up to 16 bytes (overlapping loads),
/// the first and last 16 of a longer one. The index only needs spread, not
/// resistance to chosen collisions (a collision costs a literal, not
/// time); hashing every word of long values was a chain of dependent
/// multiplies that took half of the encoder's time on a browser-like
/// request. A value that differs from another of the same length only in
/// its middle shares its slot.
#[inline]
fn hash(seed: u64, bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let step = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(K);
    let n = bytes.len();
    let h = step(seed, n as u64);
    if n <= 8 {
        step(h, small(bytes))
    } else if n <= 16 {
        step(step(h, word(&bytes[..8])), word(&bytes[n - 8..]))
    } else {
        let h = step(step(h, word(&bytes[..8])), word(&bytes[8..16]));
        step(step(h, word(&bytes[n - 16..n - 8])), word(&bytes[n - 8..]))
    }
}

/// The first 8 bytes of `b` (at least 8) as one load.
#[inline]
fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

/// Up to 8 bytes as a word, by two overlapping 4-byte loads or three byte
/// loads (every byte counted, no loop).
#[inline]
fn small(b: &[u8]) -> u64 {
    let n = b.len();
    if n >= 4 {
        let lo = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let hi = u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]);
        u64::from(lo) | u64::from(hi) << 32
    } else if n > 0 {
        u64::from(b[0]) | u64::from(b[n / 2]) << 8 | u64::from(b[n - 1]) << 16
    } else {
        0
    }
}

/// The two candidate slots of a hash: its top two bytes.
#[inline]
fn slots(h: u64) -> [usize; 2] {
    [(h >> 56) as usize % SLOTS, (h >> 48) as usize % SLOTS]
}
