//! Per-core counters: plain `Cell`s owned by one core, no atomics on the hot
//! path. Cores hand out a copy ([`Counters`]) that is summed on read.

use std::cell::Cell;
use std::fmt;

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// A copy of one core's (or the sum of all cores') counters.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Counters { $( $(#[$doc])* pub $name: u64, )* }

        impl Counters {
            /// Field-wise sum.
            pub fn add(&mut self, o: &Counters) { $( self.$name += o.$name; )* }
            /// `(name, value)` pairs, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$( (stringify!($name), self.$name), )*]
            }
        }

        /// The live counters of one core.
        #[derive(Debug, Default)]
        pub struct CoreStats { $( pub $name: Cell<u64>, )* }

        impl CoreStats {
            pub fn snapshot(&self) -> Counters { Counters { $( $name: self.$name.get(), )* } }
        }
    };
}

counters! {
    /// Connections accepted on any listener.
    downstream_cx_total,
    /// Connections open right now.
    downstream_cx_active,
    /// Accepted and closed at once: the core was at max_connections_per_core.
    downstream_cx_overflow,
    /// Refused: the original destination was Remora itself (not redirected, or a loop).
    downstream_cx_loop_refused,
    /// accept() failures (EMFILE, ENFILE, ENOBUFS, ...); the loop backs off and retries.
    accept_errors,
    /// Upstream connections established.
    upstream_cx_total,
    /// Upstream connects that failed (refused, unreachable).
    upstream_cx_connect_fail,
    /// Upstream connects that did not finish within connect_timeout.
    upstream_cx_connect_timeout,
    /// Bytes from downstream to upstream.
    bytes_upstream,
    /// Bytes from upstream to downstream.
    bytes_downstream,
    /// Connections that ended with a reset on either side.
    cx_reset,
    /// Connections closed by the idle timeout.
    cx_idle_timeout,
}

impl CoreStats {
    pub fn inc(c: &Cell<u64>) {
        c.set(c.get() + 1);
    }
    pub fn dec(c: &Cell<u64>) {
        c.set(c.get().saturating_sub(1));
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (name, v) in self.fields() {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{name}={v}")?;
        }
        Ok(())
    }
}
