//! Per-thread free lists of what every HTTP/1 request allocates and frees:
//! the small vectors it fills and empties (the header indexes of its head and
//! of its response's, the upstream request head, the response head written
//! to the client), the boxes its futures live in ([`FutureBox`]) and the
//! values it hands through its layers ([`Boxed`]).
//!
//! A keep-alive connection keeps none of them while it waits (an idle one
//! should cost little memory), so each request took four from malloc and
//! gave them back, and grew each from empty: ~800 of the ~26,000 user-space
//! instructions of a proxied request (perf/l7cost callgrind). A
//! [`Recycled`] vector comes from its thread's free list when one is there
//! and goes back to it, cleared, when dropped. The lists are bounded
//! ([`KEEP`] vectors of at most [`KEEP_BYTES`] each, per element type and
//! thread), so a burst leaves at most a few hundred KiB behind, and a
//! vector a large head grew goes back to malloc instead.

use std::alloc::Layout;
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};
use std::thread::LocalKey;

/// Vectors kept per element type and thread.
pub const KEEP: usize = 32;

/// The largest allocation kept (bytes); larger ones are freed.
pub const KEEP_BYTES: usize = 8 * 1024;

/// An element type with a free list of its own.
pub trait Reuse: Sized + 'static {
    fn free_list() -> &'static LocalKey<RefCell<Vec<Vec<Self>>>>;
}

/// Gives `$t` a free list.
macro_rules! reuse {
    ($t:ty) => {
        impl $crate::recycle::Reuse for $t {
            fn free_list() -> &'static ::std::thread::LocalKey<
                ::std::cell::RefCell<::std::vec::Vec<::std::vec::Vec<$t>>>,
            > {
                thread_local! {
                    static FREE: ::std::cell::RefCell<::std::vec::Vec<::std::vec::Vec<$t>>> =
                        const { ::std::cell::RefCell::new(::std::vec::Vec::new()) };
                }
                &FREE
            }
        }
    };
}
pub(crate) use reuse;

reuse!(u8);

/// A `Vec<T>` that is taken from, and given back to, its thread's free list.
pub struct Recycled<T: Reuse>(Vec<T>);

impl<T: Reuse> Recycled<T> {
    /// An empty vector: a kept one if there is one (its capacity with it).
    pub fn new() -> Recycled<T> {
        let v = T::free_list()
            .try_with(|f| f.borrow_mut().pop())
            .ok()
            .flatten();
        Recycled(v.unwrap_or_default())
    }
}

impl<T: Reuse> Default for Recycled<T> {
    fn default() -> Recycled<T> {
        Recycled::new()
    }
}

impl<T: Reuse> Drop for Recycled<T> {
    fn drop(&mut self) {
        let bytes = self.0.capacity() * std::mem::size_of::<T>();
        if bytes == 0 || bytes > KEEP_BYTES {
            return;
        }
        let mut v = std::mem::take(&mut self.0);
        v.clear();
        // A thread that is exiting has no list any more: the vector is freed.
        let _ = T::free_list().try_with(|f| {
            let mut f = f.borrow_mut();
            if f.len() < KEEP {
                f.push(v);
            }
        });
    }
}

impl<T: Reuse> Deref for Recycled<T> {
    type Target = Vec<T>;

    fn deref(&self) -> &Vec<T> {
        &self.0
    }
}

impl<T: Reuse> DerefMut for Recycled<T> {
    fn deref_mut(&mut self) -> &mut Vec<T> {
        &mut self.0
    }
}

impl<T: Reuse + Clone> Clone for Recycled<T> {
    fn clone(&self) -> Recycled<T> {
        let mut v = Recycled::new();
        v.extend_from_slice(&self.0);
        v
    }
}

impl<T: Reuse + PartialEq> PartialEq for Recycled<T> {
    fn eq(&self, other: &Recycled<T>) -> bool {
        self.0 == other.0
    }
}

impl<T: Reuse + Eq> Eq for Recycled<T> {}

impl<T: Reuse + fmt::Debug> fmt::Debug for Recycled<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A future in a heap block of its own, like `Pin<Box<F>>`, whose block
/// comes from (and goes back to) its thread's free list of blocks of that
/// size.
///
/// An HTTP/1 request runs in two such boxes: the busy stretch of its
/// connection (2.2 KB: an idle keep-alive connection must not carry it)
/// and the request itself (4.8 KB: a connection waiting for a head must not
/// carry that). Those sizes are past glibc's per-thread cache (1 KiB), so
/// each malloc and free went through its bins, ~200 instructions apiece, four
/// calls per request. From a free list a block is a pop and a push.
///
/// A [`Boxed`] that never hands out a reference to its future: built in
/// the block ([`FutureBox::new_in_place`]), pinned there for its whole life
/// and dropped in place.
pub struct FutureBox<F>(Boxed<F>);

/// Blocks kept per size, per thread: more than an HTTP/2 connection's
/// streams at its default SETTINGS_MAX_CONCURRENT_STREAMS (100), each in a
/// block of its own. With 64, a core serving 100 streams at a time gave a
/// third of its stream blocks (5.8 KB) back to malloc and took them again,
/// and each such allocation, over glibc's small sizes, also made it
/// consolidate its fast bins (`perf probe` on malloc under h2load -c10
/// -m10: 0.3 block allocations per gRPC call; perf/README.md, "Session 23").
pub const KEEP_BLOCKS: usize = 128;

/// The largest block kept, and the most sizes a thread keeps blocks of.
const MAX_BLOCK: usize = 16 * 1024;
const MAX_CLASSES: usize = 12;

/// A thread's free blocks, by layout.
struct Blocks(Vec<(Layout, Vec<NonNull<u8>>)>);

impl Drop for Blocks {
    fn drop(&mut self) {
        for (layout, blocks) in self.0.drain(..) {
            for b in blocks {
                // SAFETY: each block was allocated with this layout and is
                // owned by this list alone.
                unsafe { std::alloc::dealloc(b.as_ptr(), layout) };
            }
        }
    }
}

thread_local! {
    static BLOCKS: RefCell<Blocks> = const { RefCell::new(Blocks(Vec::new())) };
}

fn kept(layout: Layout) -> bool {
    layout.size() > 0 && layout.size() <= MAX_BLOCK
}

/// A block of `layout` (not zero-sized) from the free list, else from the
/// allocator.
fn take_block(layout: Layout) -> NonNull<u8> {
    if kept(layout) {
        let found = BLOCKS.try_with(|b| {
            let mut b = b.borrow_mut();
            b.0.iter_mut()
                .find(|(l, _)| *l == layout)
                .and_then(|(_, list)| list.pop())
        });
        if let Ok(Some(block)) = found {
            return block;
        }
    }
    // SAFETY: the layout's size is not zero (Boxed::new_in_place).
    let p = unsafe { std::alloc::alloc(layout) };
    NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
}

/// Gives `block` (of `layout`) back to the free list, or to the allocator.
fn give_block(block: NonNull<u8>, layout: Layout) {
    if layout.size() == 0 {
        return;
    }
    let back = kept(layout)
        && BLOCKS
            .try_with(|b| {
                let mut b = b.borrow_mut();
                let at = match b.0.iter().position(|(l, _)| *l == layout) {
                    Some(at) => at,
                    None if b.0.len() < MAX_CLASSES => {
                        b.0.push((layout, Vec::new()));
                        b.0.len() - 1
                    }
                    None => return false,
                };
                let list = &mut b.0[at].1;
                if list.len() < KEEP_BLOCKS {
                    list.push(block);
                    true
                } else {
                    false
                }
            })
            .unwrap_or(false);
    if !back {
        // SAFETY: the block was allocated with this layout (take_block) and
        // nothing refers to it any more.
        unsafe { std::alloc::dealloc(block.as_ptr(), layout) };
    }
}

impl<F> FutureBox<F> {
    /// `make()`'s future, written into a block of its size.
    ///
    /// `Box::pin(fut)` builds the future on the stack and then copies all of
    /// it into the box: the whole state machine, `size_of` bytes, though a
    /// future that has not started holds only its arguments. For the busy
    /// stretch (2,200 B) and the request (4,776 B) that was 7 KB of `memcpy`
    /// per request. Taking the block first and writing `make()` into it lets
    /// the compiler construct the future in place (the return slot is the
    /// block): per keep-alive request, the bytes copied went from 19.0 to
    /// 12.4 KB (perf/README.md, "Session 20"). Nothing relies on it: if the
    /// compiler copied, this would cost what `Box::pin` does.
    #[inline(always)]
    pub fn new_in_place(make: impl FnOnce() -> F) -> FutureBox<F> {
        FutureBox(Boxed::new_in_place(make))
    }
}

impl<F: Future> Future for FutureBox<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the future lives in its block from new_in_place to drop
        // and is never moved out of it (a FutureBox never calls
        // `into_inner` nor hands out a reference): pinned for its whole life.
        let f = unsafe { Pin::new_unchecked(&mut *self.get_mut().0.ptr.as_ptr()) };
        f.poll(cx)
    }
}

/// Moving a `FutureBox` moves the pointer, not the future.
impl<F> Unpin for FutureBox<F> {}

/// A value in a block from its thread's free list, like `Box<T>`: for a
/// value that is handed through several layers per request, where moving it
/// would copy all of it every time and moving a `Boxed` copies a pointer.
///
/// The HTTP/1 exchange (the upstream stream, its buffer, key and lease,
/// ~310 B) went from the attempt through the per-try deadline, the retry
/// loop, the route deadline and into the response: about ten `memcpy`s of
/// it per request, and as many of each future that held it (perf/README.md,
/// "Session 22"). Blocks are the ones [`FutureBox`] uses, bounded the same.
pub struct Boxed<T> {
    ptr: NonNull<T>,
    _owns: PhantomData<T>,
}

impl<T> Boxed<T> {
    /// `make()`'s value, written into a block of its size (in place, when
    /// the compiler can build it there).
    #[inline(always)]
    pub fn new_in_place(make: impl FnOnce() -> T) -> Boxed<T> {
        let layout = Layout::new::<T>();
        let ptr = match layout.size() {
            0 => NonNull::dangling(),
            _ => take_block(layout).cast::<T>(),
        };
        // Should `make` panic, the block is leaked, never used uninitialized.
        // SAFETY: the block is fresh (ours alone), of T's size and alignment.
        unsafe { ptr.as_ptr().write(make()) };
        Boxed {
            ptr,
            _owns: PhantomData,
        }
    }

    /// The value, moved out; the block goes back to the free list.
    pub fn into_inner(self) -> T {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: the value was written by new_in_place and is read once:
        // `this` is never dropped, so neither the value nor the block is
        // released twice.
        let value = unsafe { this.ptr.as_ptr().read() };
        give_block(this.ptr.cast(), Layout::new::<T>());
        value
    }
}

impl<T> Deref for Boxed<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: initialized from new_in_place until drop or into_inner.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> DerefMut for Boxed<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in deref; `&mut self` makes the borrow unique.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T> Drop for Boxed<T> {
    fn drop(&mut self) {
        // SAFETY: the value was written by new_in_place and not moved out
        // (into_inner forgets `self`); the block is released only after.
        unsafe { std::ptr::drop_in_place(self.ptr.as_ptr()) };
        give_block(self.ptr.cast(), Layout::new::<T>());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks_kept(size: usize) -> usize {
        BLOCKS.with(|b| {
            b.borrow()
                .0
                .iter()
                .filter(|(l, _)| l.size() == size)
                .map(|(_, list)| list.len())
                .sum()
        })
    }

    /// A future in a FutureBox runs to completion where it lies (polled
    /// across wake-ups), its destructor runs once, and its block is reused
    /// by the next future of that size only; at most KEEP_BLOCKS are kept.
    #[test]
    fn future_boxes_run_drop_and_reuse_blocks() {
        use std::rc::Rc;
        use std::task::Wake;

        struct Noop;
        impl Wake for Noop {
            fn wake(self: std::sync::Arc<Self>) {}
        }
        let waker = std::task::Waker::from(std::sync::Arc::new(Noop));
        let mut cx = Context::from_waker(&waker);

        // A future that is pending twice, holds a large array (so it has a
        // size class of its own) and an Rc (to see its destructor run).
        let alive = Rc::new(());
        let make = |alive: Rc<()>| {
            let mut polls = 0;
            let big = [7u8; 3000];
            std::future::poll_fn(move |_| {
                let _keep = &alive;
                polls += 1;
                if polls < 3 {
                    Poll::Pending
                } else {
                    Poll::Ready(big.iter().map(|&b| usize::from(b)).sum::<usize>() + polls)
                }
            })
        };
        let size = std::mem::size_of_val(&make(alive.clone()));
        assert!(size > 3000);

        let mut f = FutureBox::new_in_place(|| make(alive.clone()));
        let first = f.0.ptr.as_ptr() as usize;
        assert_eq!(Rc::strong_count(&alive), 2);
        assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
        assert_eq!(Pin::new(&mut f).poll(&mut cx), Poll::Ready(7 * 3000 + 3));
        drop(f);
        assert_eq!(Rc::strong_count(&alive), 1, "the future was dropped");
        assert_eq!(blocks_kept(size), 1);

        // The same block again for the same size; another size gets its own.
        let g = FutureBox::new_in_place(|| make(alive.clone()));
        assert_eq!(g.0.ptr.as_ptr() as usize, first);
        assert_eq!(blocks_kept(size), 0);
        let other = FutureBox::new_in_place(|| async { [1u64; 100].len() });
        assert_ne!(other.0.ptr.as_ptr() as usize, first);
        drop(g);
        drop(other);
        assert_eq!(blocks_kept(size), 1);

        // Bounded: KEEP_BLOCKS kept, the rest freed.
        let many: Vec<_> = (0..KEEP_BLOCKS + 3)
            .map(|_| FutureBox::new_in_place(|| make(alive.clone())))
            .collect();
        assert_eq!(Rc::strong_count(&alive), KEEP_BLOCKS + 4);
        drop(many);
        assert_eq!(Rc::strong_count(&alive), 1);
        assert_eq!(blocks_kept(size), KEEP_BLOCKS);
    }

    /// A boxed value is reachable through the box, dropped once (in place
    /// or after `into_inner`), and its block is reused.
    #[test]
    fn boxed_values_drop_once_and_reuse_blocks() {
        use std::rc::Rc;
        let alive = Rc::new(());
        let size = std::mem::size_of::<([u32; 700], Rc<()>)>();
        let mut b = Boxed::new_in_place(|| ([3u32; 700], alive.clone()));
        b.0[1] = 4;
        assert_eq!(b.0[..3], [3, 4, 3]);
        let first = b.ptr.as_ptr() as usize;
        assert_eq!(Rc::strong_count(&alive), 2);
        drop(b);
        assert_eq!(Rc::strong_count(&alive), 1, "dropped in place");
        assert_eq!(blocks_kept(size), 1);

        let c = Boxed::new_in_place(|| ([5u32; 700], alive.clone()));
        assert_eq!(c.ptr.as_ptr() as usize, first, "the block again");
        let (array, rc) = c.into_inner();
        assert_eq!(array[699], 5);
        assert_eq!(blocks_kept(size), 1, "into_inner gave the block back");
        assert_eq!(Rc::strong_count(&alive), 2, "moved out, not dropped");
        drop(rc);
        assert_eq!(Rc::strong_count(&alive), 1);
        let zst = Boxed::new_in_place(|| ());
        assert_eq!(*zst, ());
        zst.into_inner();
    }

    fn kept() -> Vec<usize> {
        u8::free_list().with(|f| f.borrow().iter().map(Vec::capacity).collect())
    }

    /// A dropped vector comes back cleared with its capacity; an empty one,
    /// one over [`KEEP_BYTES`] and any beyond [`KEEP`] are not kept.
    #[test]
    fn kept_cleared_and_bounded() {
        // Each test runs on its own thread: its lists start empty.
        assert!(kept().is_empty());
        let mut a = Recycled::<u8>::new();
        a.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let cap = a.capacity();
        drop(a);
        assert_eq!(kept(), [cap]);
        let b = Recycled::<u8>::new();
        assert!(b.is_empty());
        assert_eq!(b.capacity(), cap);
        assert!(kept().is_empty());
        drop(b);
        assert_eq!(kept(), [cap]);

        // Grown past KEEP_BYTES: freed.
        let mut big = Recycled::<u8>::new();
        big.reserve(KEEP_BYTES + 1);
        drop(big);
        assert!(kept().is_empty());
        // Never allocated: nothing to keep.
        drop(Recycled::<u8>::default());
        assert!(kept().is_empty());

        let many: Vec<Recycled<u8>> = (0..KEEP + 5)
            .map(|_| {
                let mut v = Recycled::new();
                v.push(1);
                v
            })
            .collect();
        drop(many);
        assert_eq!(kept().len(), KEEP);
    }
}
