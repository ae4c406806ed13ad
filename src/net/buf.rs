//! Per-connection byte buffers, borrowed from a per-core pool only while a
//! message is in flight (an idle keep-alive connection holds none), and the
//! reads and writes that use them.
//!
//! The pool decays: a burst of concurrent requests leaves up to [`POOL_MAX`]
//! buffers (4 MiB) in it, which an idle sidecar would otherwise keep mapped
//! for good. Every [`DECAY_TICK`] while the pool holds more than
//! [`POOL_FLOOR`], the buffers that stayed in it for the whole tick (its
//! low-water mark) go back to malloc, and `malloc_trim` returns their pages
//! to the kernel (glibc keeps freed chunks mapped otherwise). A pool at its
//! floor has no task and no timer: an idle core costs no wake-ups.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use std::os::fd::AsRawFd;

use crate::net::Stream;
use futures_lite::future;
use futures_lite::io::{AsyncRead, AsyncWriteExt};

/// Size a buffer starts at (and the size kept in the pool).
pub const BUF_SIZE: usize = 16 * 1024;
/// Buffers a core keeps for reuse.
const POOL_MAX: usize = 256;
/// Buffers a core keeps however long they go unused (128 KiB).
const POOL_FLOOR: usize = 8;
/// How long a pooled buffer above the floor may go unused before it is freed.
/// Short enough that the memory of a burst is gone about half a second after
/// it (perf/README.md, "Memory per idle connection", third pass); a buffer
/// freed too early costs a malloc and four page faults when it is needed again.
const DECAY_TICK: Duration = Duration::from_millis(200);

/// A core's spare buffers, each of exactly `BUF_SIZE` bytes.
struct Pool {
    bufs: Vec<Vec<u8>>,
    /// The fewest buffers the pool held since the last decay tick: that many
    /// went unused for the whole tick.
    low: usize,
    /// A decay task is running (the pool was above its floor).
    decaying: bool,
}

thread_local! {
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool {
            bufs: Vec::new(),
            low: 0,
            decaying: false,
        })
    };
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
            .with(|p| {
                let mut p = p.borrow_mut();
                let b = p.bufs.pop();
                p.low = p.low.min(p.bufs.len());
                b
            })
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
            let start_decay = POOL.with(|p| {
                let mut p = p.borrow_mut();
                if p.bufs.len() < POOL_MAX {
                    p.bufs.push(self.data);
                }
                if p.bufs.len() > POOL_FLOOR && !p.decaying {
                    p.decaying = true;
                    p.low = p.bufs.len();
                    return true;
                }
                false
            });
            if start_decay {
                glommio::spawn_local(decay()).detach();
            }
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

/// Frees, once per [`DECAY_TICK`], the pooled buffers above the floor that
/// went unused for the whole tick; ends when the pool is back at its floor.
async fn decay() {
    loop {
        crate::deadline::sleep(DECAY_TICK).await;
        let (freed, done) = POOL.with(|p| {
            let mut p = p.borrow_mut();
            let unused = p.low.min(p.bufs.len().saturating_sub(POOL_FLOOR));
            let keep = p.bufs.len() - unused;
            let freed = p.bufs.split_off(keep);
            p.low = p.bufs.len();
            let done = p.bufs.len() <= POOL_FLOOR;
            p.decaying = !done;
            (freed, done)
        });
        if !freed.is_empty() {
            drop(freed);
            // glibc keeps freed chunks mapped (only the top of a heap is
            // returned on free); this gives their whole pages back. It walks
            // every arena's free lists once, taking each arena's lock: a
            // fraction of a millisecond, at most once per tick after a burst.
            // (glibc only: other allocators return pages their own way.)
            // SAFETY: malloc_trim has no preconditions.
            #[cfg(target_env = "gnu")]
            unsafe {
                libc::malloc_trim(0)
            };
        }
        if done {
            return;
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

/// Polls one read on a connection that holds no buffer (it was idle):
/// `Ok(None)` is EOF. A read ([`crate::net::tcp`]) returns Pending without
/// keeping the caller's buffer, so waiting costs no buffer; the bytes land in the
/// per-core scratch, borrowed only inside one poll, and are copied into a
/// pooled buffer in the same poll.
pub fn poll_read_fresh(
    stream: &mut Stream,
    cx: &mut std::task::Context<'_>,
) -> Poll<io::Result<Option<Buf>>> {
    let mut got = None;
    poll_read_via_scratch(stream, cx, BUF_SIZE, |bytes| {
        if !bytes.is_empty() {
            let mut b = Buf::take();
            b.extend(bytes);
            got = Some(b);
        }
    })
    .map_ok(|_| got)
}

/// Polls one read of at most `max` bytes into the per-core scratch and hands
/// what came to `sink` in the same poll. For a caller whose destination is
/// not initialised memory (tokio's `ReadBuf`, which `h2` reads through):
/// copying the few bytes a read returns costs less than zeroing the whole
/// destination before every read, which a safe `&mut [u8]` would need
/// (`ReadBuf::initialize_unfilled`: 8-16 KiB of memset per read).
pub fn poll_read_via_scratch(
    stream: &mut Stream,
    cx: &mut std::task::Context<'_>,
    max: usize,
    sink: impl FnOnce(&[u8]),
) -> Poll<io::Result<usize>> {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let n = max.min(s.len());
        match Pin::new(&mut *stream).poll_read(cx, &mut s[..n]) {
            Poll::Ready(Ok(n)) => {
                sink(&s[..n]);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    })
}

/// Reads once from `stream` into `slot`'s buffer (taking one from the pool
/// when the slot is empty, only once bytes have arrived). `Ok(0)` is EOF; a
/// buffer already holding `max` bytes reads nothing and returns an error of
/// kind `OutOfMemory`.
pub async fn read_into(
    stream: &mut Stream,
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
    let got = future::poll_fn(|cx| poll_read_fresh(stream, cx)).await?;
    match got {
        None => Ok(0),
        Some(b) => {
            let n = b.len();
            *slot = Some(b);
            Ok(n)
        }
    }
}

/// Writes `first` then `second` to `stream`: with one `sendmsg` when the
/// socket takes both at once (the usual case, e.g. a request head and its
/// buffered body), else the rest with ordinary writes that wait for room.
/// Nothing is copied to join the two.
///
/// Two sends instead of one cost more than a syscall: on loopback the sender
/// also delivers into the receiver's socket and wakes it, once per send.
/// The stream's write takes one slice, so the first try goes straight to the
/// socket, non-blocking, as the stream's own write does.
pub async fn write_all_pair(stream: &mut Stream, first: &[u8], second: &[u8]) -> io::Result<()> {
    let stream = match stream {
        Stream::Plain(s) => s,
        Stream::Tls(_) => {
            // One TLS write (one record, one send) for a small pair; the copy
            // is cheap next to the encryption. Larger pairs go in two writes.
            if !first.is_empty() && !second.is_empty() && first.len() + second.len() <= BUF_SIZE {
                let mut joined = Vec::with_capacity(first.len() + second.len());
                joined.extend_from_slice(first);
                joined.extend_from_slice(second);
                return stream.write_all(&joined).await;
            }
            stream.write_all(first).await?;
            return stream.write_all(second).await;
        }
    };
    let sent = if first.is_empty() || second.is_empty() {
        0
    } else {
        send_pair_now(stream.as_raw_fd(), first, second)?
    };
    if sent < first.len() {
        stream.write_all(&first[sent..]).await?;
    }
    let rest = second
        .get(sent.saturating_sub(first.len())..)
        .unwrap_or_default();
    if !rest.is_empty() {
        stream.write_all(rest).await?;
    }
    Ok(())
}

/// Writes `bytes` to `stream` when more will follow soon: on a plain socket
/// the first try is one non-blocking `send` with `MSG_MORE`, which leaves a
/// part-filled segment queued in the kernel until the next send on the socket
/// (or an ACK from the peer) pushes it, so the two go out as one segment. A
/// later send must follow: the caller sends what comes next with an ordinary
/// write, or resets the connection. What the socket did not take goes with an
/// ordinary write. A TLS stream writes as usual.
pub async fn write_all_more(stream: &mut Stream, bytes: &[u8]) -> io::Result<()> {
    let Stream::Plain(s) = stream else {
        return stream.write_all(bytes).await;
    };
    // SAFETY: the slice is live for the call and only read; MSG_DONTWAIT keeps
    // it from blocking whatever mode the socket is in.
    let rc = unsafe {
        libc::send(
            s.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | libc::MSG_MORE,
        )
    };
    let sent = sent_now(rc)?;
    if sent < bytes.len() {
        s.write_all(&bytes[sent..]).await?;
    }
    Ok(())
}

/// One non-blocking `sendmsg` of `a` and `b`: the bytes the socket took, 0 if
/// it had no room (or the call was interrupted).
fn send_pair_now(fd: std::os::fd::RawFd, a: &[u8], b: &[u8]) -> io::Result<usize> {
    let mut iov = [
        libc::iovec {
            iov_base: a.as_ptr() as *mut libc::c_void,
            iov_len: a.len(),
        },
        libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        },
    ];
    // SAFETY: a zeroed msghdr is valid (no address, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: the iovecs point into live slices that the kernel only reads;
    // MSG_DONTWAIT keeps it from blocking whatever mode the socket is in.
    let rc = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    sent_now(rc)
}

/// What a non-blocking send's return value means: the bytes the socket took,
/// 0 if it had no room or the call was interrupted, else the error.
fn sent_now(rc: isize) -> io::Result<usize> {
    if rc >= 0 {
        return Ok(rc as usize);
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::tcp::Tcp;

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

    /// A burst's buffers go back to malloc once unused for a tick or two, down
    /// to the floor, and then the decay task ends; buffers lent out every
    /// tick stay pooled meanwhile.
    #[test]
    fn pool_decays_to_its_floor() {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(64 * 1024)
            .make()
            .expect("executor");
        ex.run(async {
            let pooled = || POOL.with(|p| (p.borrow().bufs.len(), p.borrow().decaying));
            let burst: Vec<Buf> = (0..40).map(|_| Buf::take()).collect();
            burst.into_iter().for_each(Buf::release);
            assert_eq!(pooled(), (40, true));
            for _ in 0..200 {
                if pooled().0 <= POOL_FLOOR {
                    break;
                }
                // Two buffers in use now and then: the decay keeps them.
                let busy = [Buf::take(), Buf::take()];
                glommio::timer::sleep(DECAY_TICK / 4).await;
                busy.into_iter().for_each(Buf::release);
            }
            // The decay ends at the floor (a later tick sees nothing to do).
            for _ in 0..200 {
                if !pooled().1 {
                    break;
                }
                glommio::timer::sleep(DECAY_TICK / 4).await;
            }
            assert_eq!(pooled(), (POOL_FLOOR, false));
        });
    }

    /// Both halves arrive whole and in order, whether the socket takes them
    /// in one send or (small send buffer, slow reader) in partial ones, the
    /// first of which may end inside either half.
    #[test]
    fn write_all_pair_in_order_under_back_pressure() {
        use std::io::Read;
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(64 * 1024)
            .make()
            .expect("executor");
        ex.run(async {
            for (a_len, b_len) in [
                (200, 600),
                (0, 5),
                (5, 0),
                (100, 1 << 20),
                (3 << 20, 5 << 20),
            ] {
                let a: Vec<u8> = (0..a_len).map(|i| (i % 251) as u8).collect();
                let b: Vec<u8> = (0..b_len).map(|i| (i % 241) as u8).collect();
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let reader = std::thread::spawn(move || {
                    let (mut s, _) = listener.accept().unwrap();
                    let mut got = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // A slow reader keeps the sender's buffer full.
                        std::thread::sleep(std::time::Duration::from_micros(20));
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return got,
                            Ok(n) => got.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
                let s = Tcp::connect(addr, None, Duration::from_secs(5))
                    .await
                    .unwrap();
                // SAFETY: `s` owns the descriptor and outlives the borrow.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(s.as_raw_fd()) };
                socket2::SockRef::from(&fd)
                    .set_send_buffer_size(4096)
                    .unwrap();
                let mut s = Stream::from(s);
                write_all_pair(&mut s, &a, &b).await.unwrap();
                let Stream::Plain(mut s) = s else {
                    unreachable!()
                };
                // A shutdown now: glommio closes a dropped stream through the
                // ring, which the join below would keep from running.
                s.close().await.unwrap();
                let got = reader.join().unwrap();
                assert_eq!(got.len(), a.len() + b.len());
                assert!(got[..a.len()] == a[..] && got[a.len()..] == b[..]);
            }
        });
    }
}
