//! `h2::hpack` on arbitrary bytes. Input: one byte choosing the table size
//! we advertise, then header blocks, each a length byte and that many bytes,
//! decoded in order on one decoder (so the dynamic table carries over).
//! Asserted: no panic; after a compression error the decoder refuses to run
//! again; every block that decodes, re-encoded by our encoder (fields
//! alternately sensitive, with the table size the peer allows changing) and
//! decoded by a second decoder, gives the same fields in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remora::h2::hpack::{DecodeError, Decoder, Encoder};

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// The sink's bound on a decoded list: an HPACK bomb is refused, not
/// collected.
const LIST_LIMIT: usize = 64 << 10;

fn decode(d: &mut Decoder, block: &[u8]) -> Result<Fields, DecodeError<()>> {
    let mut out = Vec::new();
    let mut size = 0usize;
    d.decode(block, |n, v| {
        size += n.len() + v.len() + 32;
        if size > LIST_LIMIT {
            return Err(());
        }
        out.push((n.to_vec(), v.to_vec()));
        Ok(())
    })?;
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let sizes = [4096, 0, 256, 65536];
    let mut d = Decoder::new(sizes[(sel & 3) as usize]);
    let mut e = Encoder::new();
    let mut again = Decoder::new(4096);
    let mut n = 0usize;
    while let Some((&len, tail)) = rest.split_first() {
        let len = (len as usize).min(tail.len());
        let (block, tail) = tail.split_at(len);
        rest = tail;
        n += 1;
        let list = match decode(&mut d, block) {
            Ok(list) => list,
            Err(DecodeError::Sink(())) => continue,
            Err(_) => {
                assert_eq!(decode(&mut d, &[0x82]), Err(DecodeError::Failed));
                return;
            }
        };
        // Our encoder takes lowercase names only (HTTP/2 has no others).
        if list.iter().any(|(n, _)| n.iter().any(u8::is_ascii_uppercase)) {
            continue;
        }
        if sel & 0x10 != 0 && n % 3 == 0 {
            // The peer's SETTINGS_HEADER_TABLE_SIZE changes (down, up).
            let peer = [0, 100, 4096, 300][(n / 3 + (sel >> 5) as usize) % 4];
            e.set_max_table_size(peer / 2);
            e.set_max_table_size(peer);
        }
        let mut out = Vec::new();
        e.begin(&mut out);
        for (i, (name, value)) in list.iter().enumerate() {
            if (i + n) % 5 == 0 {
                e.field_sensitive(name, value, &mut out);
            } else {
                e.field(name, value, &mut out);
            }
        }
        // The second decoder advertised the most the encoder ever uses.
        let back = decode(&mut again, &out).expect("our own block decodes");
        assert_eq!(back, list);
    }
});
