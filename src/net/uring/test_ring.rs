//! A plain liburing ring driven by hand, for the shim's tests: real
//! requests on the running kernel, submitted and reaped through the same
//! wrapped liburing calls glommio makes.

use super::{Cqe, LibUring, Sqe};
use std::sync::atomic::{AtomicU32, Ordering};

extern "C" {
    // liburing 2.0, linked in through glommio; `io_uring_submit` and the
    // `rust_` copies land in the shim's wrappers like glommio's own calls.
    fn io_uring_queue_init(entries: u32, ring: *mut LibUring, flags: u32) -> libc::c_int;
    fn io_uring_get_sqe(ring: *mut LibUring) -> *mut Sqe;
    fn io_uring_submit(ring: *mut LibUring) -> libc::c_int;
    fn io_uring_queue_exit(ring: *mut LibUring);
    fn __io_uring_get_cqe(
        ring: *mut LibUring,
        cqe_ptr: *mut *mut Cqe,
        submit: u32,
        wait_nr: u32,
        sigmask: *mut libc::c_void,
    ) -> libc::c_int;
    fn rust_io_uring_peek_cqe(ring: *mut LibUring, cqe_ptr: *mut *mut Cqe) -> libc::c_int;
    fn rust_io_uring_cqe_seen(ring: *mut LibUring, cqe: *mut Cqe);
    fn rust_io_uring_cq_ready(ring: *mut LibUring) -> libc::c_uint;
}

/// One request to queue: opcode, fd, addr, len, op_flags, user_data, and
/// the SQE's flags and `off`.
#[derive(Clone, Copy, Default)]
pub struct Req {
    pub opcode: u8,
    pub fd: i32,
    pub addr: u64,
    pub len: u32,
    pub op_flags: u32,
    pub user_data: u64,
    pub flags: u8,
    pub off: u64,
}

pub struct Ring(Box<std::mem::MaybeUninit<LibUring>>);

impl Ring {
    pub fn new() -> Ring {
        let mut r = Box::new(std::mem::MaybeUninit::<LibUring>::zeroed());
        // SAFETY: liburing initialises the struct it is given.
        assert_eq!(unsafe { io_uring_queue_init(8, r.as_mut_ptr(), 0) }, 0);
        Ring(r)
    }

    pub fn ptr(&mut self) -> *mut LibUring {
        self.0.as_mut_ptr()
    }

    /// The ring's file descriptor.
    pub fn fd(&mut self) -> i32 {
        // SAFETY: an initialised ring.
        unsafe { (*self.ptr()).ring_fd }
    }

    /// Queues requests without submitting them.
    pub fn queue(&mut self, reqs: &[Req]) {
        for r in reqs {
            // SAFETY: a fresh SQE of this ring, filled in full before the
            // submission, which is what reads it.
            unsafe {
                let sqe = io_uring_get_sqe(self.ptr());
                assert!(!sqe.is_null());
                std::ptr::write_bytes(sqe, 0, 1);
                (*sqe).opcode = r.opcode;
                (*sqe).fd = r.fd;
                (*sqe).addr = r.addr;
                (*sqe).len = r.len;
                (*sqe).op_flags = r.op_flags;
                (*sqe).user_data = r.user_data;
                (*sqe).flags = r.flags;
                (*sqe).off = r.off;
            }
        }
    }

    /// Submits what is queued, as glommio does; liburing's result.
    pub fn submit_queued(&mut self) -> libc::c_int {
        // SAFETY: a live ring.
        unsafe { io_uring_submit(self.ptr()) }
    }

    /// Queues one request and submits it; returns its opcode as submitted.
    pub fn submit(
        &mut self,
        opcode: u8,
        fd: i32,
        addr: u64,
        len: u32,
        op_flags: u32,
        ud: u64,
    ) -> u8 {
        self.queue(&[Req {
            opcode,
            fd,
            addr,
            len,
            op_flags,
            user_data: ud,
            ..Req::default()
        }]);
        // SAFETY: the SQE just queued is the ring's last; read after the
        // submission, which leaves it in place.
        unsafe {
            let sq = &(*self.ptr()).sq;
            let sqe = (sq.sqes as *const Sqe)
                .add((sq.sqe_tail.wrapping_sub(1) & *sq.kring_mask) as usize);
            assert_eq!(self.submit_queued(), 1);
            (*sqe).opcode
        }
    }

    /// The next completion, as glommio sees it (through the wrapped peek
    /// and seen), if one is there: (user_data, res).
    pub fn try_next(&mut self) -> Option<(u64, i32)> {
        let mut cqe = std::ptr::null_mut();
        // SAFETY: the CQE is read before it is marked seen.
        unsafe {
            if rust_io_uring_peek_cqe(self.ptr(), &mut cqe) != 0 || cqe.is_null() {
                return None;
            }
            let seen = ((*cqe).user_data, (*cqe).res);
            rust_io_uring_cqe_seen(self.ptr(), cqe);
            Some(seen)
        }
    }

    /// The next completion as glommio sees it, waiting in the ring for one.
    pub fn next(&mut self) -> (u64, i32) {
        loop {
            if let Some(seen) = self.try_next() {
                return seen;
            }
            let mut cqe = std::ptr::null_mut();
            // SAFETY: a live ring; the wait only reports what is there.
            let rc =
                unsafe { __io_uring_get_cqe(self.ptr(), &mut cqe, 0, 1, std::ptr::null_mut()) };
            assert!(rc == 0 || rc == -libc::EINTR, "wait: {rc}");
        }
    }

    /// The next completion, bypassing the shim's peek: what the kernel
    /// posted, `user_data` as it is in the queue.
    pub fn complete(&mut self) -> (u64, i32) {
        let mut cqe = std::ptr::null_mut();
        // SAFETY: the CQE is read before the head moves past it.
        unsafe {
            assert_eq!(
                __io_uring_get_cqe(self.ptr(), &mut cqe, 0, 1, std::ptr::null_mut()),
                0
            );
            let seen = ((*cqe).user_data, (*cqe).res);
            let head = (*self.ptr()).cq.khead as *const AtomicU32;
            (*head).fetch_add(1, Ordering::Release);
            seen
        }
    }

    /// The next two completions (bypassing the peek), in user_data order.
    pub fn complete_two(&mut self) -> [(u64, i32); 2] {
        let mut two = [self.complete(), self.complete()];
        two.sort();
        two
    }

    /// Completions waiting, as glommio counts them.
    pub fn ready(&mut self) -> u32 {
        // SAFETY: a live ring.
        unsafe { rust_io_uring_cq_ready(self.ptr()) }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the ring was initialised and is not used again.
        unsafe { io_uring_queue_exit(self.ptr()) }
    }
}
