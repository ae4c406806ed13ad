//! Byte copying for L4 connections with TLS on either side: read plaintext
//! from one stream, write it to the other. Splice and the raw-fd copy of
//! `l4::pump` need plain sockets at both ends; TLS records must pass through
//! rustls, so they come here.
//!
//! A direction holds its buffer only while bytes are in flight: it is
//! borrowed from the L7 buffer pool when a read returns data and goes back
//! once the bytes are written, so an idle TLS tunnel holds no copy buffer
//! (rustls' own buffers aside).

use std::cell::Cell;

use futures_lite::io::AsyncWriteExt;

use super::PumpError;
use crate::net::buf::{read_into, Buf, BUF_SIZE};
use crate::net::Stream;

/// `src` → `dst` until EOF (then a half-close of `dst`: close_notify and FIN
/// on TLS) or an error. Gives the core back every [`crate::turn::BUDGET`]
/// bytes moved without waiting, as the plain pump does.
pub(super) async fn copy(
    src: &mut Stream,
    dst: &mut Stream,
    total: &Cell<u64>,
) -> Result<(), PumpError> {
    let mut slot: Option<Buf> = None;
    let mut turn = crate::turn::Turn::new();
    let result = loop {
        match read_into(src, &mut slot, BUF_SIZE).await {
            Ok(0) => {
                dst.shutdown_write().await;
                break Ok(());
            }
            Ok(_) => {}
            Err(e) => break Err(PumpError::Read(e)),
        }
        let Some(b) = slot.take() else { continue };
        let n = b.len();
        let wrote = dst.write_all(b.bytes()).await;
        b.release();
        if let Err(e) = wrote {
            break Err(PumpError::Write(e));
        }
        total.set(total.get() + n as u64);
        turn.moved(n).await;
    };
    if let Some(b) = slot {
        b.release();
    }
    result
}
