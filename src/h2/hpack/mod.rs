//! HPACK (RFC 7541), Remora's own: header blocks to fields and back, with no
//! `h2` or `http` types, for an HTTP/2 codec that decodes request fields
//! straight into its per-stream form and encodes response fields straight
//! from a parsed HTTP/1 head.
//!
//! - [`Decoder`]: one per connection, for the blocks the peer sends. Fields
//!   go to a callback as borrowed slices (from the block, the tables, or a
//!   scratch buffer the decoder keeps for Huffman strings); nothing is
//!   allocated per field once the table and the scratch buffer have grown
//!   to the connection's needs.
//! - [`Encoder`]: one per connection, for the blocks we send. Static table
//!   matches, a dynamic table of up to 4096 bytes found through a hash
//!   index, Huffman where it is shorter.
//!
//! What the decoder refuses, each as its own [`DecodeError`] (a connection
//! error of type COMPRESSION_ERROR, RFC 9113 §4.3, after which the decoder
//! refuses to run again): integers that do not fit in 32 bits or take more
//! than the 5 continuation bytes such an integer needs (§5.1); a block that
//! ends inside a representation, or a string longer than what is left;
//! index 0 or past the tables (§2.3.3); Huffman strings that contain EOS or
//! whose padding is longer than 7 bits or not all ones (§5.2); a table size
//! update above the SETTINGS_HEADER_TABLE_SIZE we advertised (§6.3) or after
//! the block's first field (§4.2). It does not bound the decoded header
//! list: that is the sink's job (SETTINGS_MAX_HEADER_LIST_SIZE), since a
//! one-byte index can name an entry as large as the table. It does not
//! check field names or values either (RFC 9113 §8.2: the codec's job).
//!
//! Huffman decoding goes a nibble at a time through a state table built at
//! compile time from Appendix B's code table (`huffman`); the dynamic table
//! keeps all its entries' bytes in one buffer (`table`).

mod decoder;
mod encoder;
mod huffman;
mod table;

pub use decoder::{DecodeError, Decoder};
pub use encoder::{Encoder, ENCODER_TABLE_LIMIT};

/// The Huffman code's length and encoder, for measurements (benches/hpack.rs).
#[doc(hidden)]
pub mod bench_support {
    pub use super::huffman::{
        decode as huffman_decode, encode as huffman_encode, encoded_len as huffman_len,
    };
}

#[cfg(test)]
mod tests;
