//! The chunked decoder on arbitrary bytes: no panic, no loop without progress,
//! every event range inside what was consumed, and the same payload, trailers
//! and verdict whether the body arrives whole or in pieces of any size (trailers:
//! when it is accepted).
#![no_main]

use libfuzzer_sys::fuzz_target;
use remora::http::body::{BodyError, ChunkedDecoder, ChunkedLimits, Event};

/// What decoding `data`, fed `piece` bytes at a time, produced.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    payload: Vec<u8>,
    trailers: Vec<u8>,
    /// Ok(Some(n)): done after n bytes; Ok(None): needs more; Err: rejected.
    end: Result<Option<usize>, BodyError>,
}

fn decode(data: &[u8], piece: usize, limits: ChunkedLimits) -> Outcome {
    let mut d = ChunkedDecoder::new(limits);
    let mut out = Outcome {
        payload: Vec::new(),
        trailers: Vec::new(),
        end: Ok(None),
    };
    let mut offset = 0;
    for chunk in data.chunks(piece.max(1)) {
        let mut input = chunk;
        loop {
            let step = match d.decode(input) {
                Ok(step) => step,
                Err(e) => {
                    out.end = Err(e);
                    return out;
                }
            };
            assert!(step.consumed <= input.len(), "{step:?}");
            let used = &input[..step.consumed];
            match step.event {
                Event::Data(ref r) => {
                    assert!(r.end <= step.consumed && !r.is_empty(), "{r:?} {step:?}");
                    out.payload.extend_from_slice(&used[r.clone()]);
                }
                Event::Trailers(ref r) => {
                    assert!(r.end <= step.consumed, "{r:?} {step:?}");
                    out.trailers.extend_from_slice(&used[r.clone()]);
                }
                Event::NeedMore => {
                    assert_eq!(step.consumed, input.len(), "NeedMore leaves input");
                    offset += step.consumed;
                    break;
                }
                Event::Done => {
                    assert!(d.is_done());
                    out.end = Ok(Some(offset + step.consumed));
                    return out;
                }
            }
            // Data and Trailers events make progress; otherwise this would spin.
            assert!(step.consumed > 0, "an event without progress");
            offset += step.consumed;
            input = &input[step.consumed..];
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    let limits = if selector & 0x80 != 0 {
        ChunkedLimits {
            max_extension_bytes: 16,
            max_trailer_bytes: 16,
        }
    } else {
        ChunkedLimits::default()
    };
    let piece = usize::from(selector & 0x7f);
    let whole = decode(data, data.len(), limits);
    let mut split = decode(data, piece, limits);
    // Trailer lines stream out as they arrive: pieces may have passed on the
    // start of a trailer that the error then cut short (the connection is
    // reset then, so they never count). Payload and verdict must agree.
    if whole.end.is_err() {
        split.trailers.clone_from(&whole.trailers);
    }
    assert_eq!(whole, split, "whole vs pieces of {piece}");
});
