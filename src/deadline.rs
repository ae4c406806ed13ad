//! A deadline around any future, without an extra copy of it (used by the
//! L7 path for head, body and response timeouts and by TLS handshakes).

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

/// Runs `f` until `deadline` (if any): `None` when the deadline came first.
///
/// A hand-written future rather than an `async fn` around `future::or`: that
/// form stores `f` once as an argument and again as each awaited copy, so a
/// large future (a request's attempts, several KiB) was laid out three times
/// over and moved on every request. This one polls `f` where it lies and
/// creates the timer only when `f` is not ready at once.
pub fn until<F: Future>(deadline: Option<Instant>, f: F) -> Until<F> {
    Until {
        f,
        deadline,
        timer: None,
    }
}

pin_project_lite::pin_project! {
    /// See [`until`].
    pub struct Until<F> {
        #[pin]
        f: F,
        deadline: Option<Instant>,
        timer: Option<glommio::timer::Timer>,
    }
}

impl<F: Future> Future for Until<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.f.poll(cx) {
            return Poll::Ready(Some(v));
        }
        let Some(deadline) = *this.deadline else {
            return Poll::Pending;
        };
        let timer = this.timer.get_or_insert_with(|| {
            glommio::timer::Timer::new(deadline.saturating_duration_since(Instant::now()))
        });
        match Pin::new(timer).poll(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
