//! Writes that leave together: a task about to write to a peer first lets
//! every task that is runnable now have its turn.
//!
//! Why. Each L7 task writes its request upstream as soon as it has built it.
//! When one read brought many requests (an HTTP/2 connection's streams, many
//! keep-alive clients woken by the same ring poll), their writes went out each
//! after its own request's work, microseconds apart. The upstream, on another
//! core, was woken by the first of them, took the one or two requests that
//! had arrived, slept, and was woken again: every wake-up costs the writer
//! too (the kernel wakes the sleeping reader inside our `send`). Measured on
//! `h2-keepalive`: the backend nginx called `epoll_wait` 0.11 times per
//! request behind Remora and 0.018 behind HAProxy, which does all its sends
//! at the end of a loop pass (perf/H2.md).
//!
//! How. [`Pass::after_runnable`] parks the caller and queues a per-core flusher task
//! behind everything runnable; when the executor reaches it, the flusher
//! wakes the parked writers, which then run one after the other: the work of
//! a pass first, its writes last, back to back. It costs a task switch, no
//! syscall and no timer; with one request in flight it adds nothing but that
//! switch. Tasks that become runnable later (the next ring poll) are the
//! next batch, so nothing waits for more than what was already runnable.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// The per-core batch of parked writers (one per shard).
#[derive(Default, Clone)]
pub struct Pass(Rc<RefCell<State>>);

#[derive(Default)]
struct State {
    /// Bumped each time the flusher releases the parked writers.
    generation: u64,
    parked: Vec<Waker>,
    /// The flusher's waker while it waits for writers; `None` while it runs
    /// or before it is spawned.
    flusher: Option<Waker>,
    spawned: bool,
}

impl Pass {
    pub fn new() -> Pass {
        Pass::default()
    }

    /// Completes once every task that was runnable when it was first polled
    /// has run (see the module doc).
    pub fn after_runnable(&self) -> AfterRunnable {
        AfterRunnable {
            pass: self.clone(),
            generation: None,
        }
    }
}

/// The future of [`Pass::after_runnable`].
pub struct AfterRunnable {
    pass: Pass,
    /// The generation the caller parked in.
    generation: Option<u64>,
}

impl Future for AfterRunnable {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut st = this.pass.0.borrow_mut();
        match this.generation {
            Some(g) if st.generation != g => return Poll::Ready(()),
            Some(_) => {
                // Polled again before the flusher ran (another event of the
                // same task): stay parked, with the waker of this poll.
                st.parked.push(cx.waker().clone());
                return Poll::Pending;
            }
            None => {}
        }
        this.generation = Some(st.generation);
        st.parked.push(cx.waker().clone());
        if let Some(f) = st.flusher.take() {
            f.wake();
        } else if !st.spawned {
            st.spawned = true;
            drop(st);
            glommio::spawn_local(flusher(this.pass.clone())).detach();
        }
        Poll::Pending
    }
}

/// Releases the parked writers, once per batch; lives as long as the executor.
async fn flusher(pass: Pass) {
    let mut woken = Vec::new();
    loop {
        poll_fn(|cx| {
            let mut st = pass.0.borrow_mut();
            if st.parked.is_empty() {
                st.flusher = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        {
            let mut st = pass.0.borrow_mut();
            st.generation = st.generation.wrapping_add(1);
            std::mem::swap(&mut woken, &mut st.parked);
        }
        for w in woken.drain(..) {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn executor() -> glommio::LocalExecutor {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(64 * 1024)
            .make()
            .expect("executor")
    }

    /// Three tasks each do some "work" (a mark) and then wait for their turn
    /// before "writing": every work mark comes before every write mark, and
    /// a second batch after the first works the same way.
    #[test]
    fn the_work_of_a_pass_comes_before_its_writes() {
        executor().run(async {
            let pass = Pass::new();
            for _batch in 0..2 {
                let log = Rc::new(RefCell::new(Vec::new()));
                let tasks: Vec<_> = (0..3)
                    .map(|i| {
                        let (pass, log) = (pass.clone(), log.clone());
                        glommio::spawn_local(async move {
                            log.borrow_mut().push(format!("work {i}"));
                            pass.after_runnable().await;
                            log.borrow_mut().push(format!("write {i}"));
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await;
                }
                let log = log.borrow();
                assert_eq!(
                    *log,
                    ["work 0", "work 1", "work 2", "write 0", "write 1", "write 2"]
                );
            }
        });
    }

    /// A lone writer is not held back by anything: it completes without any
    /// other task or timer.
    #[test]
    fn a_lone_writer_goes_at_once() {
        executor().run(async {
            let pass = Pass::new();
            let n = Cell::new(0);
            for _ in 0..1000 {
                pass.after_runnable().await;
                n.set(n.get() + 1);
            }
            assert_eq!(n.get(), 1000);
        });
    }
}
