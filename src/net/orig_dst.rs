//! Recovering a redirected connection's original destination.
//!
//! iptables REDIRECT rewrites the destination to the proxy's port; the kernel keeps
//! the pre-NAT address in conntrack and returns it through `SO_ORIGINAL_DST`
//! (IPv4) / `IP6T_SO_ORIGINAL_DST` (IPv6). On a connection that was *not*
//! redirected the kernel returns the socket's own local address instead of an
//! error (FACTS.md), so callers must compare against the local address; see
//! `shard::decide`. In TPROXY mode no NAT happens and the local address *is* the
//! original destination.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// `SO_ORIGINAL_DST` and `IP6T_SO_ORIGINAL_DST` share the value 80.
const SO_ORIGINAL_DST: libc::c_int = 80;

/// The pre-REDIRECT destination of an accepted connection.
/// `ipv6` selects the socket family of `fd` (the listener's family).
pub fn original_dst(fd: RawFd, ipv6: bool) -> io::Result<SocketAddr> {
    if ipv6 {
        // SAFETY: sockaddr_in6 is plain data; the kernel writes at most `len` bytes.
        let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IPV6,
                SO_ORIGINAL_DST,
                &mut sa as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
        // An IPv4 connection on a dual-stack socket comes back v4-mapped.
        if let Some(v4) = ip.to_ipv4_mapped() {
            return Ok(SocketAddr::V4(SocketAddrV4::new(
                v4,
                u16::from_be(sa.sin6_port),
            )));
        }
        Ok(SocketAddr::V6(SocketAddrV6::new(
            ip,
            u16::from_be(sa.sin6_port),
            sa.sin6_flowinfo,
            sa.sin6_scope_id,
        )))
    } else {
        // SAFETY: as above.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IP,
                SO_ORIGINAL_DST,
                &mut sa as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
            u16::from_be(sa.sin_port),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Without a REDIRECT rule the kernel answers with the local address
    /// (or ENOENT when conntrack is not loaded): never a foreign address.
    #[test]
    fn unredirected_connection_reports_itself_or_fails() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        match original_dst(s.as_raw_fd(), false) {
            Ok(a) => assert_eq!(a, s.local_addr().unwrap()),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}"),
        }
    }
}
