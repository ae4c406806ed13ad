//! Per-thread free lists of the small vectors every HTTP/1 request fills and
//! empties: the header indexes of its head and of its response's, the
//! upstream request head, the response head written to the client.
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

use std::cell::RefCell;
use std::fmt;
use std::ops::{Deref, DerefMut};
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

#[cfg(test)]
mod tests {
    use super::*;

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
