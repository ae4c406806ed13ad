//! The decoding side: header blocks in, fields out (RFC 7541 §3, §6).

use super::huffman::{self, HuffmanError};
use super::table::{DynamicTable, FIRST_DYNAMIC, STATIC};

/// Why a header block was not decoded. Every variant but `Sink` is a
/// connection error of type COMPRESSION_ERROR (RFC 9113 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError<E> {
    /// The sink refused a field; the block was still decoded to its end,
    /// so the connection's HPACK state is intact (see [`Decoder::decode`]).
    #[error("header field refused: {0}")]
    Sink(E),
    /// An integer does not fit in 32 bits or has more continuation bytes
    /// than one of 32 bits needs (§5.1).
    #[error("HPACK integer overflow")]
    IntegerOverflow,
    /// The block ends inside a representation: an integer or a string
    /// longer than what is left.
    #[error("HPACK block truncated")]
    Truncated,
    /// Index 0, or beyond the static and dynamic tables (§2.3.3).
    #[error("HPACK index out of range")]
    BadIndex,
    /// A Huffman string contains EOS (§5.2).
    #[error("HPACK Huffman string contains EOS")]
    HuffmanEos,
    /// A Huffman string's padding is longer than 7 bits (§5.2).
    #[error("HPACK Huffman padding longer than 7 bits")]
    HuffmanPaddingTooLong,
    /// A Huffman string's padding is not all ones (§5.2).
    #[error("HPACK Huffman padding not all ones")]
    HuffmanPaddingNotOnes,
    /// A dynamic table size update above the SETTINGS_HEADER_TABLE_SIZE we
    /// advertised (§6.3).
    #[error("HPACK table size update above the advertised maximum")]
    TableSizeUpdateTooLarge,
    /// A dynamic table size update after a field of the block (§4.2).
    #[error("HPACK table size update after the first field of a block")]
    TableSizeUpdateNotFirst,
    /// `decode` was called after it had returned a compression error: the
    /// table may be out of step with the peer's, nothing it would decode
    /// could be trusted.
    #[error("HPACK decoder used after a compression error")]
    Failed,
}

impl<E> DecodeError<E> {
    /// Whether this is a connection error of type COMPRESSION_ERROR (every
    /// variant but `Sink`).
    pub fn is_compression_error(&self) -> bool {
        !matches!(self, DecodeError::Sink(_))
    }
}

impl<E> From<HuffmanError> for DecodeError<E> {
    fn from(e: HuffmanError) -> Self {
        match e {
            HuffmanError::Eos => DecodeError::HuffmanEos,
            HuffmanError::PaddingTooLong => DecodeError::HuffmanPaddingTooLong,
            HuffmanError::PaddingNotOnes => DecodeError::HuffmanPaddingNotOnes,
        }
    }
}

/// A malformation, before it knows the sink's error type.
type Malformed = DecodeError<std::convert::Infallible>;

fn widen<E>(e: Malformed) -> DecodeError<E> {
    match e {
        DecodeError::Sink(never) => match never {},
        DecodeError::IntegerOverflow => DecodeError::IntegerOverflow,
        DecodeError::Truncated => DecodeError::Truncated,
        DecodeError::BadIndex => DecodeError::BadIndex,
        DecodeError::HuffmanEos => DecodeError::HuffmanEos,
        DecodeError::HuffmanPaddingTooLong => DecodeError::HuffmanPaddingTooLong,
        DecodeError::HuffmanPaddingNotOnes => DecodeError::HuffmanPaddingNotOnes,
        DecodeError::TableSizeUpdateTooLarge => DecodeError::TableSizeUpdateTooLarge,
        DecodeError::TableSizeUpdateNotFirst => DecodeError::TableSizeUpdateNotFirst,
        DecodeError::Failed => DecodeError::Failed,
    }
}

/// Reads an integer with an `n`-bit prefix from the start of `buf` (§5.1):
/// its value and the bytes it took. The value must fit in 32 bits, and at
/// most 5 continuation bytes (35 bits, enough for any 32-bit value) are
/// read: a sixth is an overflow, whatever its value.
#[inline]
pub(super) fn read_integer(buf: &[u8], n: u32) -> Result<(usize, usize), Malformed> {
    let mask = (1u8 << n) - 1;
    let Some(&first) = buf.first() else {
        return Err(DecodeError::Truncated);
    };
    let first = first & mask;
    if first < mask {
        return Ok((first as usize, 1));
    }
    let mut value = u64::from(mask);
    for i in 1..=5 {
        let Some(&b) = buf.get(i) else {
            return Err(DecodeError::Truncated);
        };
        value += u64::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            return match u32::try_from(value) {
                Ok(v) => Ok((v as usize, i + 1)),
                Err(_) => Err(DecodeError::IntegerOverflow),
            };
        }
    }
    Err(DecodeError::IntegerOverflow)
}

/// Where a decoded string's bytes are, until the field is passed on.
#[derive(Clone, Copy)]
enum Str {
    Static(&'static [u8]),
    /// The name of dynamic table entry `i` (0 = newest).
    Table(usize),
    /// `block[start..end]`.
    Block(usize, usize),
    /// `scratch[start..end]`.
    Scratch(usize, usize),
}

/// How a literal is to be indexed (§6.2).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Indexing {
    Incremental,
    Without,
    Never,
}

/// An HPACK decoder: one per connection and direction. It keeps the
/// dynamic table and a scratch buffer for Huffman strings, both of which
/// grow to the connection's largest need and are then reused.
#[derive(Debug)]
pub struct Decoder {
    table: DynamicTable,
    /// The SETTINGS_HEADER_TABLE_SIZE we advertised: the ceiling for the
    /// peer's table size updates.
    max_table_size: usize,
    /// Huffman-decoded strings of the current field.
    scratch: Vec<u8>,
    /// Huffman strings decoded before (see [`Memo`]).
    memo: Memo,
    /// Set by a compression error; every later call fails.
    failed: bool,
}

impl Decoder {
    /// A decoder for a connection on which we advertised
    /// SETTINGS_HEADER_TABLE_SIZE `max_table_size` (default 4096); the
    /// peer's table starts at that size.
    pub fn new(max_table_size: usize) -> Decoder {
        Decoder {
            table: DynamicTable::new(max_table_size),
            max_table_size,
            scratch: Vec::new(),
            memo: Memo::default(),
            failed: false,
        }
    }

    /// Decodes one complete header block (HEADERS and its CONTINUATIONs
    /// joined). Each field goes to `sink(name, value)` in order, as slices
    /// valid only for that call: borrowed from `block`, from the tables, or
    /// from the scratch buffer a Huffman string was decoded into.
    ///
    /// The sink may refuse a field (the header list got too large, a
    /// forbidden field): no further field is passed to it, but the rest of
    /// the block is still decoded into the dynamic table, as RFC 9113
    /// §4.3 and §8.2.3 require of a receiver that keeps the connection, and
    /// the sink's first error is returned as [`DecodeError::Sink`]; the
    /// decoder stays usable, so the caller may reset just the stream. Any
    /// other error is a connection error of type COMPRESSION_ERROR, and the
    /// decoder refuses to decode again ([`DecodeError::Failed`]).
    ///
    /// The sink, not the decoder, bounds the decoded list (the RFC 9113
    /// SETTINGS_MAX_HEADER_LIST_SIZE sum): a few bytes of indexed fields can
    /// name table entries of up to the table size each.
    pub fn decode<E>(
        &mut self,
        block: &[u8],
        mut sink: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), DecodeError<E>> {
        self.decode_marked(block, |n, v, _| sink(n, v))
    }

    /// [`Decoder::decode`], with each field's never-indexed mark (§6.2.3,
    /// §7.1.3): `true` for a literal the sender asked every intermediary
    /// to keep out of its tables (an `authorization`, a cookie), which a
    /// proxy passes on as such.
    pub fn decode_marked<E>(
        &mut self,
        block: &[u8],
        mut sink: impl FnMut(&[u8], &[u8], bool) -> Result<(), E>,
    ) -> Result<(), DecodeError<E>> {
        if self.failed {
            return Err(DecodeError::Failed);
        }
        let mut refused = None;
        let mut emit = |name: &[u8], value: &[u8], never: bool| {
            if refused.is_none() {
                if let Err(e) = sink(name, value, never) {
                    refused = Some(e);
                }
            }
        };
        match self.decode_block(block, &mut emit) {
            Ok(()) => match refused {
                Some(e) => Err(DecodeError::Sink(e)),
                None => Ok(()),
            },
            Err(e) => {
                self.failed = true;
                Err(widen(e))
            }
        }
    }

    /// The dynamic table's entries, newest first (for tests and
    /// diagnostics).
    pub fn table_entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        (0..self.table.len()).filter_map(|i| self.table.get(i))
    }

    /// The dynamic table's size (§4.1): its entries' bytes plus 32 each.
    pub fn table_size(&self) -> usize {
        self.table.size()
    }

    fn decode_block(
        &mut self,
        block: &[u8],
        emit: &mut impl FnMut(&[u8], &[u8], bool),
    ) -> Result<(), Malformed> {
        let mut pos = 0;
        let mut fields_seen = false;
        while let Some(&b) = block.get(pos) {
            let rest = &block[pos..];
            if b & 0x80 != 0 {
                // Indexed field (§6.1).
                let (idx, n) = read_integer(rest, 7)?;
                pos += n;
                let (name, value) = self.entry(idx)?;
                emit(name, value, false);
                fields_seen = true;
            } else if b & 0x40 != 0 {
                pos = self.literal(block, pos, 6, Indexing::Incremental, emit)?;
                fields_seen = true;
            } else if b & 0x20 != 0 {
                // Dynamic table size update (§6.3): only before the first
                // field (§4.2), and never above what we advertised.
                if fields_seen {
                    return Err(DecodeError::TableSizeUpdateNotFirst);
                }
                let (size, n) = read_integer(rest, 5)?;
                pos += n;
                if size > self.max_table_size {
                    return Err(DecodeError::TableSizeUpdateTooLarge);
                }
                self.table.set_max_size(size);
            } else {
                let indexing = if b & 0x10 != 0 {
                    Indexing::Never
                } else {
                    Indexing::Without
                };
                pos = self.literal(block, pos, 4, indexing, emit)?;
                fields_seen = true;
            }
        }
        Ok(())
    }

    /// The field at HPACK index `idx` (§2.3.3).
    #[inline]
    fn entry(&self, idx: usize) -> Result<(&[u8], &[u8]), Malformed> {
        if idx == 0 {
            Err(DecodeError::BadIndex)
        } else if idx < FIRST_DYNAMIC {
            Ok(STATIC[idx - 1])
        } else {
            self.table
                .get(idx - FIRST_DYNAMIC)
                .ok_or(DecodeError::BadIndex)
        }
    }

    /// A literal field representation (§6.2) starting at `block[pos]`, with
    /// an `n`-bit name index prefix; returns where the next one starts.
    fn literal(
        &mut self,
        block: &[u8],
        pos: usize,
        n: u32,
        indexing: Indexing,
        emit: &mut impl FnMut(&[u8], &[u8], bool),
    ) -> Result<usize, Malformed> {
        self.scratch.clear();
        let (idx, used) = read_integer(&block[pos..], n)?;
        let mut pos = pos + used;
        // A peer that never refers to its table (nginx) sends the same
        // names and values as literals, Huffman-coded, on every message:
        // those are remembered (`Memo`). Never-indexed ones are not: they
        // are the values the sender wants kept out of every table.
        let memo = indexing != Indexing::Never;
        let mut name = if idx == 0 {
            let (s, next) = self.string(block, pos, memo)?;
            pos = next;
            s
        } else if idx < FIRST_DYNAMIC {
            Str::Static(STATIC[idx - 1].0)
        } else if self.table.get(idx - FIRST_DYNAMIC).is_some() {
            Str::Table(idx - FIRST_DYNAMIC)
        } else {
            return Err(DecodeError::BadIndex);
        };
        let (value, pos) = self.string(block, pos, memo)?;

        if indexing == Indexing::Incremental {
            if let Str::Table(i) = name {
                // Inserting may evict the entry the name comes from (§4.4):
                // copy it out first.
                let start = self.scratch.len();
                if let Some((n, _)) = self.table.get(i) {
                    self.scratch.extend_from_slice(n);
                }
                name = Str::Scratch(start, self.scratch.len());
            }
        }
        let name_bytes = self.resolve(block, name);
        let value_bytes = self.resolve(block, value);
        emit(name_bytes, value_bytes, indexing == Indexing::Never);
        if indexing == Indexing::Incremental {
            // `resolve` borrows only `scratch`, `block` and statics here.
            let name_bytes = resolve_untabled(block, &self.scratch, name);
            let value_bytes = resolve_untabled(block, &self.scratch, value);
            self.table.insert(name_bytes, value_bytes);
        }
        Ok(pos)
    }

    /// A string literal (§5.2) at `block[pos]`: where its bytes are, and
    /// where the next representation starts. `memo`: a Huffman string is
    /// looked up in, or else added to, the strings decoded before.
    #[inline]
    fn string(&mut self, block: &[u8], pos: usize, memo: bool) -> Result<(Str, usize), Malformed> {
        let rest = block.get(pos..).unwrap_or_default();
        let huffman = rest.first().is_some_and(|b| b & 0x80 != 0);
        let (len, used) = read_integer(rest, 7)?;
        let start = pos + used;
        let end = match start.checked_add(len) {
            Some(end) if end <= block.len() => end,
            _ => return Err(DecodeError::Truncated),
        };
        if !huffman {
            return Ok((Str::Block(start, end), end));
        }
        let from = self.scratch.len();
        let coded = &block[start..end];
        if memo && coded.len() <= MEMO_MAX_CODED {
            if let Some(decoded) = self.memo.get(coded) {
                self.scratch.extend_from_slice(decoded);
            } else {
                huffman::decode(coded, &mut self.scratch).map_err(DecodeError::from)?;
                self.memo.put(coded, &self.scratch[from..]);
            }
        } else {
            huffman::decode(coded, &mut self.scratch).map_err(DecodeError::from)?;
        }
        Ok((Str::Scratch(from, self.scratch.len()), end))
    }

    fn resolve<'a>(&'a self, block: &'a [u8], s: Str) -> &'a [u8] {
        match s {
            Str::Table(i) => self.table.get(i).map_or(&[][..], |(n, _)| n),
            s => resolve_untabled(block, &self.scratch, s),
        }
    }
}

/// How many Huffman strings a decoder remembers, and the longest (coded).
const MEMO_ENTRIES: usize = 16;
const MEMO_MAX_CODED: usize = 48;

/// Huffman strings of literals (other than never-indexed ones), with what
/// they decoded to. nginx never refers to its dynamic table: each response
/// repeats `server`, `date`, `content-type`, `last-modified`, `etag`,
/// `accept-ranges` and the trailer name `grpc-status` as Huffman literals,
/// about 100 coded bytes decoded on every gRPC call (a tenth of the call's
/// instructions). Comparing the coded bytes with what came before costs a
/// fraction of that. A peer that indexes sends a literal once and then its
/// index, so it pays one copy per string it adds to its table; a peer
/// whose strings never repeat (a request id) pays a scan of the lengths
/// and a copy per string.
///
/// Replacement is the clock (second chance): a string found since the
/// hand last passed it is kept, so a value that changes on every message
/// (a `date`, once a second) takes one slot in turn instead of pushing out
/// the ones that repeat. Kept for the connection's life, since a
/// connection that goes quiet between requests would otherwise decode its
/// strings anew each time: at most 16 x (48 + 77) bytes of strings, about
/// 400 for nginx's.
#[derive(Debug, Default)]
struct Memo {
    entries: Vec<MemoEntry>,
    hand: usize,
}

#[derive(Debug)]
struct MemoEntry {
    /// The coded bytes, then the decoded ones.
    bytes: Vec<u8>,
    coded: usize,
    /// Found since the hand last passed.
    used: bool,
}

impl Memo {
    fn get(&mut self, coded: &[u8]) -> Option<&[u8]> {
        let e = self
            .entries
            .iter_mut()
            .find(|e| e.coded == coded.len() && e.bytes[..e.coded] == *coded)?;
        e.used = true;
        Some(&e.bytes[e.coded..])
    }

    fn put(&mut self, coded: &[u8], decoded: &[u8]) {
        let e = if self.entries.len() < MEMO_ENTRIES {
            self.entries.push(MemoEntry {
                bytes: Vec::with_capacity(coded.len() + decoded.len()),
                coded: 0,
                used: false,
            });
            self.entries.last_mut()
        } else {
            loop {
                let e = &mut self.entries[self.hand];
                self.hand = (self.hand + 1) % MEMO_ENTRIES;
                if !std::mem::take(&mut e.used) {
                    break;
                }
            }
            let at = (self.hand + MEMO_ENTRIES - 1) % MEMO_ENTRIES;
            self.entries.get_mut(at)
        };
        if let Some(e) = e {
            e.bytes.clear();
            e.bytes.extend_from_slice(coded);
            e.bytes.extend_from_slice(decoded);
            e.coded = coded.len();
        }
    }
}

/// A string's bytes, for every place but the dynamic table (whose strings
/// are copied to `scratch` before an insertion).
fn resolve_untabled<'a>(block: &'a [u8], scratch: &'a [u8], s: Str) -> &'a [u8] {
    match s {
        Str::Static(b) => b,
        Str::Block(a, b) => &block[a..b],
        Str::Scratch(a, b) => &scratch[a..b],
        Str::Table(_) => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The clock keeps what is found again: strings that repeat stay
    /// while one-offs pass through a slot at a time.
    #[test]
    fn memo_keeps_repeating_strings_past_one_offs() {
        let mut m = Memo::default();
        let repeating: Vec<Vec<u8>> = (0..MEMO_ENTRIES as u8 - 2).map(|i| vec![b'r', i]).collect();
        for r in &repeating {
            m.put(r, b"decoded");
        }
        for round in 0..100u32 {
            for r in &repeating {
                assert_eq!(m.get(r), Some(&b"decoded"[..]), "round {round}");
            }
            let once = round.to_be_bytes();
            assert_eq!(m.get(&once), None);
            m.put(&once, b"once");
        }
        assert_eq!(m.entries.len(), MEMO_ENTRIES);
        // Equal lengths, other bytes: not a hit.
        assert_eq!(m.get(b"r\xff"), None);
    }
}
