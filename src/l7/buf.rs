//! Per-connection byte buffers, borrowed from a per-core pool only while a
//! message is in flight (an idle keep-alive connection holds none).

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

use futures_lite::future;
use futures_lite::io::AsyncRead;
use glommio::net::TcpStream;

/// Size a buffer starts at (and the size kept in the pool).
pub const BUF_SIZE: usize = 16 * 1024;
/// Buffers a core keeps for reuse.
const POOL_MAX: usize = 256;

thread_local! {
    /// Pooled buffers of exactly `BUF_SIZE` bytes.
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    /// Where a read lands when the connection has no buffer (it was idle): the
    /// bytes are copied into a pooled buffer in the same poll.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; BUF_SIZE].into_boxed_slice());
}

/// Unconsumed bytes at `data[start..end]`.
pub struct Buf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buf {
    pub fn take() -> Buf {
        let data = POOL
            .with(|p| p.borrow_mut().pop())
            .unwrap_or_else(|| vec![0u8; BUF_SIZE]);
        Buf {
            data,
            start: 0,
            end: 0,
        }
    }

    /// Returns the memory to the pool (grown buffers are freed instead).
    pub fn release(self) {
        if self.data.len() == BUF_SIZE {
            POOL.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOL_MAX {
                    p.push(self.data);
                }
            });
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Free space after the data, compacting and growing up to `max` bytes in
    /// total; empty when the buffer already holds `max` bytes.
    fn spare(&mut self, max: usize) -> &mut [u8] {
        if self.start > 0 && self.end == self.data.len() {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.data.len() && self.data.len() < max {
            let grown = (self.data.len() * 2).clamp(BUF_SIZE, max);
            self.data.resize(grown, 0);
        }
        &mut self.data[self.end..]
    }

    fn extend(&mut self, bytes: &[u8]) {
        let mut done = 0;
        while done < bytes.len() {
            let spare = self.spare(usize::MAX);
            let n = spare.len().min(bytes.len() - done);
            spare[..n].copy_from_slice(&bytes[done..done + n]);
            self.end += n;
            done += n;
        }
    }
}

/// Returns a buffer that holds nothing to the pool, so idle connections keep none.
pub fn release_if_empty(slot: &mut Option<Buf>) {
    if slot.as_ref().is_some_and(Buf::is_empty) {
        if let Some(b) = slot.take() {
            b.release();
        }
    }
}

/// Reads once from `stream` into `slot`'s buffer (taking one from the pool
/// when the slot is empty, only once bytes have arrived). `Ok(0)` is EOF; a
/// buffer already holding `max` bytes reads nothing and returns an error of
/// kind `OutOfMemory`.
pub async fn read_into(
    stream: &mut TcpStream,
    slot: &mut Option<Buf>,
    max: usize,
) -> io::Result<usize> {
    if let Some(buf) = slot {
        let spare = buf.spare(max);
        if spare.is_empty() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let n = future::poll_fn(|cx| Pin::new(&mut *stream).poll_read(cx, spare)).await?;
        buf.end += n;
        return Ok(n);
    }
    // glommio's read returns Pending without keeping the caller's buffer, so
    // waiting costs no buffer; the scratch is borrowed only inside one poll.
    let got = future::poll_fn(|cx| {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            match Pin::new(&mut *stream).poll_read(cx, &mut s[..]) {
                Poll::Ready(Ok(0)) => Poll::Ready(Ok(None)),
                Poll::Ready(Ok(n)) => {
                    let mut b = Buf::take();
                    b.extend(&s[..n]);
                    Poll::Ready(Ok(Some(b)))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    })
    .await?;
    match got {
        None => Ok(0),
        Some(b) => {
            let n = b.len();
            *slot = Some(b);
            Ok(n)
        }
    }
}

/// Runs `f` until `deadline` (None: no deadline); `None` when time ran out.
pub async fn until<T>(deadline: Option<Instant>, f: impl Future<Output = T>) -> Option<T> {
    match deadline {
        None => Some(f.await),
        Some(d) => {
            future::or(async { Some(f.await) }, async {
                glommio::timer::sleep(d.saturating_duration_since(Instant::now())).await;
                None
            })
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_spare_and_grow() {
        let mut b = Buf::take();
        b.extend(b"hello world");
        b.consume(6);
        assert_eq!(b.bytes(), b"world");
        let big = vec![7u8; BUF_SIZE * 2];
        b.extend(&big);
        assert_eq!(b.len(), 5 + big.len());
        assert_eq!(&b.bytes()[..5], b"world");
        assert!(b.spare(b.data.len()).is_empty() || b.end < b.data.len());
        b.consume(usize::MAX);
        assert!(b.is_empty());
        let mut slot = Some(b);
        release_if_empty(&mut slot);
        assert!(slot.is_none());
    }
}
