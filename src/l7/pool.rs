//! Per-core keep-alive pool of upstream connections, per endpoint.
//!
//! No background task: an entry is checked when it is taken (age, and a
//! non-blocking `MSG_PEEK` that sees a FIN, a reset or stray bytes from a
//! server that closed it) and expired entries are dropped when new ones are
//! put back. Cores never share connections.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use glommio::net::TcpStream;

/// Where a pooled connection goes: the endpoint and the bound source address.
pub type Key = (SocketAddr, Option<IpAddr>);

/// An idle upstream connection.
pub struct Idle {
    pub stream: TcpStream,
    since: Instant,
}

#[derive(Default)]
pub struct Pool {
    idle: HashMap<Key, Vec<Idle>>,
}

impl Pool {
    /// The most recently used live connection to `key`. Dead or expired ones
    /// met on the way are returned in `dropped` for the caller to account.
    pub fn take(
        &mut self,
        key: Key,
        max_age: Duration,
        dropped: &mut Vec<TcpStream>,
    ) -> Option<TcpStream> {
        let list = self.idle.get_mut(&key)?;
        while let Some(c) = list.pop() {
            if c.since.elapsed() < max_age && still_open(&c.stream) {
                return Some(c.stream);
            }
            dropped.push(c.stream);
        }
        None
    }

    /// Keeps `stream` unless the endpoint already has `max_idle` idle ones
    /// (then it comes back in `dropped`), dropping expired entries too.
    pub fn put(
        &mut self,
        key: Key,
        stream: TcpStream,
        max_idle: usize,
        max_age: Duration,
        dropped: &mut Vec<TcpStream>,
    ) {
        let list = self.idle.entry(key).or_default();
        let mut i = 0;
        while i < list.len() {
            if list[i].since.elapsed() >= max_age {
                dropped.push(list.remove(i).stream);
            } else {
                i += 1;
            }
        }
        if list.len() < max_idle {
            list.push(Idle {
                stream,
                since: Instant::now(),
            });
        } else {
            dropped.push(stream);
        }
    }

    pub fn idle_count(&self) -> usize {
        self.idle.values().map(Vec::len).sum()
    }
}

/// A pooled connection is reusable only if reading it would block: EOF means
/// the server closed it, bytes mean it sent something unasked, an error means
/// it reset.
fn still_open(stream: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: valid buffer of one byte; MSG_PEEK leaves the socket unchanged.
    let rc = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN)
}
