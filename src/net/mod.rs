//! Everything that touches sockets and the io_uring runtime directly.
//!
//! The rest of the crate sees plain `SocketAddr`s and a few async helpers; only
//! this module (and `l4`, which moves bytes) knows that glommio hands out blocking
//! fds, which operations go through the ring and which are direct syscalls.

pub mod batch;
pub mod buf;
pub mod orig_dst;
pub mod socket;
pub mod stream;
pub mod tcp;
pub mod uring;

pub use orig_dst::original_dst;
pub use stream::{DownstreamTls, Stream};
