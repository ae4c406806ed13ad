//! Message bodies: an incremental decoder per [`BodyFraming`] and the chunked encoder.
//!
//! The decoders never copy and never need the caller to keep bytes around: each call
//! either hands back a range of payload (or trailer) bytes inside the input, or absorbs
//! framing bytes into its state. A [`Event::NeedMore`] step has consumed the whole
//! input, so the caller can always discard what it passed in, and input may be split
//! at any byte (the tests split at every one).
//!
//! Chunked coding is RFC 9112 §7.1. Decoding is strict where leniency has been
//! used for request smuggling: a chunk-size is 1–16 hex digits and nothing else,
//! whitespace is only allowed before a `;` extension, chunk data must be followed by
//! exactly CRLF, and bare LF is refused everywhere. Extensions are parsed to
//! their grammar (RFC 9112 §7.1.1: `;` name [`=` token / quoted-string], a
//! malformed one is an error, never waited on) and then dropped, and their bytes
//! are capped per message (each one costs a state-machine step per byte and
//! produces nothing). Trailer fields are validated and capped, and returned
//! as raw bytes so the proxy can forward or drop them.

use std::ops::Range;

use thiserror::Error;

use super::head::BodyFraming;
use super::rewrite::{is_field_byte, is_tchar};

/// Bounds on what a chunked body may spend on framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkedLimits {
    /// Bytes of chunk extensions (and the whitespace before them) in one message.
    pub max_extension_bytes: usize,
    /// Bytes of the trailer section in one message, excluding the final CRLF.
    pub max_trailer_bytes: usize,
}

impl Default for ChunkedLimits {
    fn default() -> ChunkedLimits {
        // Hyper caps extensions at 16 KiB per message; trailers share it.
        ChunkedLimits {
            max_extension_bytes: 16 * 1024,
            max_trailer_bytes: 16 * 1024,
        }
    }
}

/// A body that cannot be decoded. The connection must be closed: the peer's
/// idea of where the message ends is unknown. A request body error answers 400
/// (if nothing has been sent yet), a response body error resets the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum BodyError {
    #[error("chunk size is not 1 to 16 hex digits")]
    InvalidChunkSize,
    #[error("chunk size does not fit in 64 bits")]
    ChunkSizeOverflow,
    #[error("invalid byte in a chunk extension")]
    InvalidExtension,
    #[error("chunk extensions larger than the limit")]
    ExtensionsTooLarge,
    #[error("chunk data not followed by CRLF")]
    MissingChunkDataCrlf,
    #[error("bare LF or stray CR in chunk framing")]
    LineEnding,
    #[error("malformed trailer field")]
    InvalidTrailer,
    #[error("trailer section larger than the limit")]
    TrailersTooLarge,
    #[error("connection closed before the body was complete")]
    Truncated,
}

/// What one decode step produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Payload bytes at this range of the input.
    Data(Range<usize>),
    /// Raw trailer field lines ("name: value\r\n"…) at this range of the input;
    /// a trailer section may arrive in several pieces.
    Trailers(Range<usize>),
    /// All input consumed; the body needs more.
    NeedMore,
    /// The body is complete; input after `consumed` belongs to the next message.
    Done,
}

/// One decode step: `consumed` bytes of the input are used up (the event's range
/// lies within them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub consumed: usize,
    pub event: Event,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk-size.
    Size,
    /// BWS after the size; only a `;` may follow.
    SizeWs,
    /// After a ";": optional BWS, then an extension name (RFC 9112 §7.1.1).
    ExtPreName,
    /// Inside an extension name (a token).
    ExtName,
    /// BWS after a name: "=", ";" or the end of the line may follow.
    ExtPostName,
    /// After "=": optional BWS, then a token or a quoted string.
    ExtPreValue,
    /// Inside a token value.
    ExtToken,
    /// Inside a quoted-string value.
    ExtQuoted,
    /// After a backslash inside a quoted string.
    ExtQuotedPair,
    /// BWS after a value: ";" or the end of the line may follow.
    ExtPostValue,
    /// CR of the size line seen; LF must follow.
    SizeLf,
    /// Chunk data; `remaining` bytes to go.
    Data,
    DataCr,
    DataLf,
    /// Start of a trailer line, or the CR of the final empty line.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    /// CR of the final empty line seen.
    EndLf,
    Done,
}

/// Incremental decoder for the chunked transfer coding (RFC 9112 §7.1).
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u8,
    remaining: u64,
    extension_bytes: usize,
    trailer_bytes: usize,
    limits: ChunkedLimits,
}

/// HTAB / SP / VCHAR / obs-text: what a quoted string may hold, and what may
/// follow a backslash in it (RFC 9110 §5.6.4; `"` and `\\` are the caller's).
fn is_quoted_byte(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff)
}

impl Default for ChunkedDecoder {
    fn default() -> ChunkedDecoder {
        ChunkedDecoder::new(ChunkedLimits::default())
    }
}

impl ChunkedDecoder {
    pub fn new(limits: ChunkedLimits) -> ChunkedDecoder {
        ChunkedDecoder {
            state: State::Size,
            size: 0,
            digits: 0,
            remaining: 0,
            extension_bytes: 0,
            trailer_bytes: 0,
            limits,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`; call again with the rest (`input[consumed..]`) until
    /// the event is `NeedMore` (read more) or `Done`.
    pub fn decode(&mut self, input: &[u8]) -> Result<Step, BodyError> {
        let mut i = 0;
        let mut trailer_start = None;
        while i < input.len() {
            match self.state {
                State::Done => break,
                State::Data => {
                    let avail = (input.len() - i) as u64;
                    let n = self.remaining.min(avail) as usize;
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok(Step {
                        consumed: i + n,
                        event: Event::Data(i..i + n),
                    });
                }
                _ => {}
            }
            let b = input[i];
            let in_trailer = matches!(
                self.state,
                State::TrailerName | State::TrailerValue | State::TrailerLf
            ) || (self.state == State::TrailerStart && b != b'\r');
            if in_trailer {
                trailer_start.get_or_insert(i);
                self.trailer_bytes += 1;
                if self.trailer_bytes > self.limits.max_trailer_bytes {
                    return Err(BodyError::TrailersTooLarge);
                }
            } else if let Some(start) = trailer_start {
                return Ok(Step {
                    consumed: i,
                    event: Event::Trailers(start..i),
                });
            }
            self.step(b)?;
            i += 1;
        }
        let event = match trailer_start {
            Some(start) => Event::Trailers(start..i),
            None if self.state == State::Done => Event::Done,
            None => Event::NeedMore,
        };
        Ok(Step { consumed: i, event })
    }

    /// One framing byte (every state but Data and Done).
    fn step(&mut self, b: u8) -> Result<(), BodyError> {
        self.state = match self.state {
            State::Size => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    // 16 hex digits fill a u64; more is either overflow or
                    // padding, and nobody pads.
                    if self.digits == 16 {
                        return Err(if self.size != 0 {
                            BodyError::ChunkSizeOverflow
                        } else {
                            BodyError::InvalidChunkSize
                        });
                    }
                    let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                    self.size = (self.size << 4) | d;
                    self.digits += 1;
                    State::Size
                }
                _ if self.digits == 0 => return Err(BodyError::InvalidChunkSize),
                b';' => self.extension_byte(State::ExtPreName)?,
                b' ' | b'\t' => self.extension_byte(State::SizeWs)?,
                b'\r' => State::SizeLf,
                b'\n' => return Err(BodyError::LineEnding),
                _ => return Err(BodyError::InvalidChunkSize),
            },
            // chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ):
            // whitespace after the size must lead to a ";".
            State::SizeWs => match b {
                b' ' | b'\t' => self.extension_byte(State::SizeWs)?,
                b';' => self.extension_byte(State::ExtPreName)?,
                _ => return Err(BodyError::InvalidChunkSize),
            },
            // chunk-ext-name = token; chunk-ext-val = token / quoted-string.
            // Whatever does not fit (`2;` with no name, an unbalanced quote,
            // a stray byte) is refused at once rather than passed along.
            State::ExtPreName => match b {
                b' ' | b'\t' => self.extension_byte(State::ExtPreName)?,
                _ if is_tchar(b) => self.extension_byte(State::ExtName)?,
                b'\n' => return Err(BodyError::LineEnding),
                _ => return Err(BodyError::InvalidExtension),
            },
            State::ExtName => match b {
                _ if is_tchar(b) => self.extension_byte(State::ExtName)?,
                b' ' | b'\t' => self.extension_byte(State::ExtPostName)?,
                b'=' => self.extension_byte(State::ExtPreValue)?,
                b';' => self.extension_byte(State::ExtPreName)?,
                b'\r' => State::SizeLf,
                b'\n' => return Err(BodyError::LineEnding),
                _ => return Err(BodyError::InvalidExtension),
            },
            State::ExtPostName => match b {
                b' ' | b'\t' => self.extension_byte(State::ExtPostName)?,
                b'=' => self.extension_byte(State::ExtPreValue)?,
                b';' => self.extension_byte(State::ExtPreName)?,
                b'\r' => State::SizeLf,
                b'\n' => return Err(BodyError::LineEnding),
                _ => return Err(BodyError::InvalidExtension),
            },
            State::ExtPreValue => match b {
                b' ' | b'\t' => self.extension_byte(State::ExtPreValue)?,
                b'"' => self.extension_byte(State::ExtQuoted)?,
                _ if is_tchar(b) => self.extension_byte(State::ExtToken)?,
                b'\n' => return Err(BodyError::LineEnding),
                _ => return Err(BodyError::InvalidExtension),
            },
            State::ExtToken => match b {
                _ if is_tchar(b) => self.extension_byte(State::ExtToken)?,
                b' ' | b'\t' => self.extension_byte(State::ExtPostValue)?,
                b';' => self.extension_byte(State::ExtPreName)?,
                b'\r' => State::SizeLf,
                b'\n' => return Err(BodyError::LineEnding),
                _ => return Err(BodyError::InvalidExtension),
            },
            // qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
            // (RFC 9110 §5.6.4); CR or LF inside means the quote never closed.
            State::ExtQuoted => match b {
                b'"' => self.extension_byte(State::ExtPostValue)?,
                b'\\' => self.extension_byte(State::ExtQuotedPair)?,
                _ if is_quoted_byte(b) => self.extension_byte(State::ExtQuoted)?,
                _ => return Err(BodyError::InvalidExtension),
            },
            State::ExtQuotedPair => match b {
                _ if is_quoted_byte(b) => self.extension_byte(State::ExtQuoted)?,
                _ => return Err(BodyError::InvalidExtension),
            },
            State::ExtPostValue => match b {
                b' ' | b'\t' => self.extension_byte(State::ExtPostValue)?,
                b';' => self.extension_byte(State::ExtPreName)?,
                b'\r' => State::SizeLf,
                b'\n' => return Err(BodyError::LineEnding),
                _ => return Err(BodyError::InvalidExtension),
            },
            State::SizeLf => match b {
                b'\n' if self.size == 0 => State::TrailerStart,
                b'\n' => {
                    self.remaining = self.size;
                    State::Data
                }
                _ => return Err(BodyError::LineEnding),
            },
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return Err(BodyError::MissingChunkDataCrlf),
            },
            State::DataLf => match b {
                b'\n' => {
                    self.size = 0;
                    self.digits = 0;
                    State::Size
                }
                _ => return Err(BodyError::MissingChunkDataCrlf),
            },
            State::TrailerStart => match b {
                b'\r' => State::EndLf,
                b'\n' => return Err(BodyError::LineEnding),
                _ if is_tchar(b) => State::TrailerName,
                // Includes SP/HTAB: obs-fold is not allowed in trailers either.
                _ => return Err(BodyError::InvalidTrailer),
            },
            State::TrailerName => match b {
                b':' => State::TrailerValue,
                _ if is_tchar(b) => State::TrailerName,
                _ => return Err(BodyError::InvalidTrailer),
            },
            State::TrailerValue => match b {
                b'\r' => State::TrailerLf,
                b'\n' => return Err(BodyError::LineEnding),
                _ if is_field_byte(b) => State::TrailerValue,
                _ => return Err(BodyError::InvalidTrailer),
            },
            State::TrailerLf => match b {
                b'\n' => State::TrailerStart,
                _ => return Err(BodyError::LineEnding),
            },
            State::EndLf => match b {
                b'\n' => State::Done,
                _ => return Err(BodyError::LineEnding),
            },
            // decode() never steps these.
            State::Data | State::Done => self.state,
        };
        Ok(())
    }

    fn extension_byte(&mut self, next: State) -> Result<State, BodyError> {
        self.extension_bytes += 1;
        if self.extension_bytes > self.limits.max_extension_bytes {
            return Err(BodyError::ExtensionsTooLarge);
        }
        Ok(next)
    }
}

/// Decoder for any framing: the proxy's one loop over a body.
#[derive(Debug, Clone)]
pub enum BodyDecoder {
    Length {
        remaining: u64,
    },
    Chunked(ChunkedDecoder),
    /// Until the peer closes (responses only).
    CloseDelimited,
}

impl BodyDecoder {
    pub fn new(framing: BodyFraming, limits: ChunkedLimits) -> BodyDecoder {
        match framing {
            BodyFraming::None => BodyDecoder::Length { remaining: 0 },
            BodyFraming::Length(n) => BodyDecoder::Length { remaining: n },
            BodyFraming::Chunked => BodyDecoder::Chunked(ChunkedDecoder::new(limits)),
            BodyFraming::CloseDelimited => BodyDecoder::CloseDelimited,
        }
    }

    /// Same contract as [`ChunkedDecoder::decode`].
    pub fn decode(&mut self, input: &[u8]) -> Result<Step, BodyError> {
        match self {
            BodyDecoder::Length { remaining: 0 } => Ok(Step {
                consumed: 0,
                event: Event::Done,
            }),
            BodyDecoder::Length { remaining } => {
                if input.is_empty() {
                    return Ok(Step {
                        consumed: 0,
                        event: Event::NeedMore,
                    });
                }
                let n = (*remaining).min(input.len() as u64) as usize;
                *remaining -= n as u64;
                Ok(Step {
                    consumed: n,
                    event: Event::Data(0..n),
                })
            }
            BodyDecoder::Chunked(c) => c.decode(input),
            BodyDecoder::CloseDelimited => Ok(Step {
                consumed: input.len(),
                event: if input.is_empty() {
                    Event::NeedMore
                } else {
                    Event::Data(0..input.len())
                },
            }),
        }
    }

    /// Whether the body is complete (a close-delimited body never is until EOF).
    pub fn is_done(&self) -> bool {
        match self {
            BodyDecoder::Length { remaining } => *remaining == 0,
            BodyDecoder::Chunked(c) => c.is_done(),
            BodyDecoder::CloseDelimited => false,
        }
    }

    /// The peer closed: fine for a close-delimited or complete body, otherwise the
    /// body was truncated (and must not be passed off as complete, RFC 9112 §8).
    pub fn on_eof(&self) -> Result<(), BodyError> {
        match self {
            BodyDecoder::CloseDelimited => Ok(()),
            _ if self.is_done() => Ok(()),
            _ => Err(BodyError::Truncated),
        }
    }
}

/// A chunk-size line ("1a2b\r\n") on the stack, for a vectored write of
/// header + payload + [`CRLF`] without copying the payload.
#[derive(Clone, Copy)]
pub struct ChunkHeader {
    buf: [u8; 18],
    len: u8,
}

impl ChunkHeader {
    pub fn new(size: u64) -> ChunkHeader {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 18];
        let digits = (16 - size.leading_zeros() as usize / 4).max(1);
        for (i, slot) in buf[..digits].iter_mut().enumerate() {
            let shift = 4 * (digits - 1 - i);
            *slot = HEX[((size >> shift) & 0xf) as usize];
        }
        buf[digits] = b'\r';
        buf[digits + 1] = b'\n';
        ChunkHeader {
            buf,
            len: (digits + 2) as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

pub const CRLF: &[u8] = b"\r\n";
/// The last chunk with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Appends `data` as one chunk. Empty data writes nothing: a zero-size chunk
/// would end the body.
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(ChunkHeader::new(data.len() as u64).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(CRLF);
}

/// Appends the last chunk; `trailers` are raw field lines as produced by
/// [`Event::Trailers`] (each ending in CRLF), or empty.
pub fn encode_last_chunk(trailers: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n");
    out.extend_from_slice(trailers);
    out.extend_from_slice(CRLF);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    struct Decoded {
        data: Vec<u8>,
        trailers: Vec<u8>,
        /// Bytes of the input that belong to the body.
        body_len: usize,
    }

    /// Feeds `pieces` in order (the caller keeps nothing between calls, which
    /// is the decoder's contract) and collects the output.
    fn feed(pieces: &[&[u8]], limits: ChunkedLimits) -> Result<Option<Decoded>, BodyError> {
        let mut d = ChunkedDecoder::new(limits);
        let mut out = Decoded {
            data: vec![],
            trailers: vec![],
            body_len: 0,
        };
        for piece in pieces {
            let mut at = 0;
            loop {
                let step = d.decode(&piece[at..])?;
                assert!(step.consumed <= piece.len() - at);
                match step.event {
                    Event::Data(r) => {
                        assert!(!r.is_empty(), "empty data event");
                        out.data.extend_from_slice(&piece[at..][r]);
                    }
                    Event::Trailers(r) => out.trailers.extend_from_slice(&piece[at..][r]),
                    Event::NeedMore => {
                        assert_eq!(at + step.consumed, piece.len(), "NeedMore left bytes");
                        out.body_len += step.consumed;
                        break;
                    }
                    Event::Done => {
                        out.body_len += step.consumed;
                        return Ok(Some(out));
                    }
                }
                out.body_len += step.consumed;
                at += step.consumed;
            }
        }
        Ok(None)
    }

    /// Decodes whole, split at every byte boundary into two, and byte by byte;
    /// all must agree.
    fn decode_every_way(input: &[u8]) -> Result<Option<Decoded>, BodyError> {
        let limits = ChunkedLimits::default();
        let whole = feed(&[input], limits);
        for cut in 0..=input.len() {
            let (a, b) = input.split_at(cut);
            assert_eq!(feed(&[a, b], limits), whole, "split at {cut}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(feed(&bytes, limits), whole, "byte by byte");
        whole
    }

    #[test]
    fn valid_bodies() {
        // (input, payload, trailers, bytes of the input that are body)
        type Case = (&'static [u8], &'static [u8], &'static [u8], usize);
        let cases: &[Case] = &[
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello", b"", 15),
            (
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET",
                b"hello world",
                b"",
                26,
            ),
            (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789", b"", 20),
            (b"00000a\r\n0123456789\r\n0\r\n\r\n", b"0123456789", b"", 25),
            (b"0\r\n\r\n", b"", b"", 5),
            // Extensions are skipped, with or without BWS and values.
            (b"5;a=b\r\nhello\r\n0 ; last\r\n\r\n", b"hello", b"", 26),
            (b"5\t;\tx=\"q s\"\r\nhello\r\n0\r\n\r\n", b"hello", b"", 25),
            // Several, a name alone, BWS around "=", escapes in quotes.
            (
                b"5;a;b=1 ; c = \"x\\\"y\"\r\nhello\r\n0\r\n\r\n",
                b"hello",
                b"",
                34,
            ),
            // Trailers come back raw, CRLFs included; the final CRLF is not.
            (
                b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nX-B:\r\n\r\nnext",
                b"abc",
                b"X-Sum: 1\r\nX-B:\r\n",
                29,
            ),
        ];
        for (input, data, trailers, body_len) in cases {
            let got = decode_every_way(input)
                .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(input)))
                .unwrap_or_else(|| panic!("{}: incomplete", String::from_utf8_lossy(input)));
            assert_eq!(got.data, *data);
            assert_eq!(got.trailers, *trailers);
            assert_eq!(
                got.body_len,
                *body_len,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn incomplete_body_needs_more() {
        for input in [
            &b"5\r\nhel"[..],
            b"5\r\nhello\r\n",
            b"0\r\n",
            b"0\r\nX: y\r\n",
        ] {
            assert_eq!(decode_every_way(input).unwrap(), None);
        }
    }

    #[test]
    fn malformed_chunked_table() {
        use BodyError::*;
        let cases: &[(&str, &[u8], BodyError)] = &[
            ("empty size", b"\r\nhello\r\n0\r\n\r\n", InvalidChunkSize),
            ("0x prefix", b"0x5\r\nhello\r\n0\r\n\r\n", InvalidChunkSize),
            ("plus sign", b"+5\r\nhello\r\n0\r\n\r\n", InvalidChunkSize),
            ("minus sign", b"-5\r\nhello\r\n0\r\n\r\n", InvalidChunkSize),
            (
                "leading space",
                b" 5\r\nhello\r\n0\r\n\r\n",
                InvalidChunkSize,
            ),
            (
                "trailing space",
                b"5 \r\nhello\r\n0\r\n\r\n",
                InvalidChunkSize,
            ),
            (
                "trailing garbage",
                b"5g\r\nhello\r\n0\r\n\r\n",
                InvalidChunkSize,
            ),
            (
                "garbage after space",
                b"5 x\r\nhello\r\n0\r\n\r\n",
                InvalidChunkSize,
            ),
            ("17 digits", b"10000000000000000\r\n", ChunkSizeOverflow),
            ("huge", b"ffffffffffffffffff\r\n", ChunkSizeOverflow),
            ("17 zero digits", b"00000000000000000\r\n", InvalidChunkSize),
            ("bare LF after size", b"5\nhello\r\n0\r\n\r\n", LineEnding),
            ("CR without LF", b"5\rhello\r\n0\r\n\r\n", LineEnding),
            (
                "bare LF in extension",
                b"5;a\nhello\r\n0\r\n\r\n",
                LineEnding,
            ),
            (
                "NUL in extension",
                b"5;a\0\r\nhello\r\n0\r\n\r\n",
                InvalidExtension,
            ),
            // RFC 9112 §7.1.1: chunk-ext-name = token, chunk-ext-val = token /
            // quoted-string.
            ("no name", b"2;\r\nhi\r\n0\r\n\r\n", InvalidExtension),
            (
                "value without name",
                b"2;=b\r\nhi\r\n0\r\n\r\n",
                InvalidExtension,
            ),
            ("empty value", b"2;a=\r\nhi\r\n0\r\n\r\n", InvalidExtension),
            (
                "space inside name",
                b"2;a b\r\nhi\r\n0\r\n\r\n",
                InvalidExtension,
            ),
            (
                "unbalanced quote",
                b"2;a=\"x\r\nhi\r\n0\r\n\r\n",
                InvalidExtension,
            ),
            (
                "junk after quote",
                b"2;a=\"x\"y\r\nhi\r\n0\r\n\r\n",
                InvalidExtension,
            ),
            (
                "separator in token",
                b"2;a=b/c\r\nhi\r\n0\r\n\r\n",
                InvalidExtension,
            ),
            (
                "data too long",
                b"5\r\nhello!\r\n0\r\n\r\n",
                MissingChunkDataCrlf,
            ),
            (
                "LF only after data",
                b"5\r\nhello\n0\r\n\r\n",
                MissingChunkDataCrlf,
            ),
            (
                "CR then junk after data",
                b"5\r\nhello\rx0\r\n\r\n",
                MissingChunkDataCrlf,
            ),
            ("bare LF at end", b"0\r\n\n", LineEnding),
            (
                "trailer obs-fold",
                b"0\r\nX: a\r\n b\r\n\r\n",
                InvalidTrailer,
            ),
            (
                "trailer space before colon",
                b"0\r\nX : a\r\n\r\n",
                InvalidTrailer,
            ),
            ("trailer NUL", b"0\r\nX: a\0\r\n\r\n", InvalidTrailer),
            ("trailer bare LF", b"0\r\nX: a\n\r\n", LineEnding),
            ("trailer no colon", b"0\r\nXa\r\n\r\n", InvalidTrailer),
        ];
        for (name, input, err) in cases {
            assert_eq!(decode_every_way(input), Err(*err), "case {name}");
        }
    }

    #[test]
    fn max_chunk_size_is_accepted() {
        // 16 digits is the most a u64 holds: accepted, and then waits for data.
        let mut d = ChunkedDecoder::default();
        let step = d.decode(b"ffffffffffffffff\r\nab").unwrap();
        assert_eq!(step.event, Event::Data(18..20));
        assert_eq!(d.remaining, u64::MAX - 2);
    }

    #[test]
    fn limits_are_enforced() {
        let tight = ChunkedLimits {
            max_extension_bytes: 8,
            max_trailer_bytes: 8,
        };
        let ok = b"1;abcdef\r\nx\r\n0\r\nX: 123\r\n\r\n";
        assert!(feed(&[ok], tight).unwrap().is_some());
        // The budget is per message, not per chunk.
        let many = b"1;abcd\r\nx\r\n1;abcd\r\nx\r\n0\r\n\r\n";
        assert_eq!(feed(&[many], tight), Err(BodyError::ExtensionsTooLarge));
        let long_trailer = b"0\r\nX: 12345\r\n\r\n";
        assert_eq!(
            feed(&[long_trailer], tight),
            Err(BodyError::TrailersTooLarge)
        );
    }

    #[test]
    fn one_mib_roundtrip() {
        let payload: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
        let mut encoded = Vec::new();
        for c in payload.chunks(4096) {
            encode_chunk(c, &mut encoded);
        }
        encode_last_chunk(b"X-T: 1\r\n", &mut encoded);
        // Read the encoded stream in odd-sized reads.
        let pieces: Vec<&[u8]> = encoded.chunks(1000).collect();
        let got = feed(&pieces, ChunkedLimits::default()).unwrap().unwrap();
        assert_eq!(got.data, payload);
        assert_eq!(got.trailers, b"X-T: 1\r\n");
        assert_eq!(got.body_len, encoded.len());
    }

    #[test]
    fn chunk_header_encoding() {
        let cases: &[(u64, &[u8])] = &[
            (0, b"0\r\n"),
            (1, b"1\r\n"),
            (15, b"f\r\n"),
            (16, b"10\r\n"),
            (4096, b"1000\r\n"),
            (u64::MAX, b"ffffffffffffffff\r\n"),
        ];
        for (n, s) in cases {
            assert_eq!(ChunkHeader::new(*n).as_bytes(), *s);
        }
        let mut out = Vec::new();
        encode_chunk(b"", &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn length_and_close_delimited() {
        let mut d = BodyDecoder::new(BodyFraming::Length(5), ChunkedLimits::default());
        assert_eq!(d.decode(b"abc").unwrap().event, Event::Data(0..3));
        assert_eq!(d.on_eof(), Err(BodyError::Truncated));
        let s = d.decode(b"deXX").unwrap();
        assert_eq!((s.consumed, s.event), (2, Event::Data(0..2)));
        assert!(d.is_done());
        assert_eq!(d.decode(b"XX").unwrap().event, Event::Done);

        let mut d = BodyDecoder::new(BodyFraming::None, ChunkedLimits::default());
        assert_eq!(
            d.decode(b"GET").unwrap(),
            Step {
                consumed: 0,
                event: Event::Done
            }
        );

        let mut d = BodyDecoder::new(BodyFraming::CloseDelimited, ChunkedLimits::default());
        assert_eq!(d.decode(b"abc").unwrap().event, Event::Data(0..3));
        assert!(!d.is_done());
        assert_eq!(d.on_eof(), Ok(()));
    }
}
