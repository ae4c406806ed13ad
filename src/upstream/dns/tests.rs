//! Resolver tests: resolv.conf parsing, the search list, and the transport
//! against small fake servers on 127.0.0.1 (truncation, FORMERR, failover,
//! spoofed and malformed answers). Real-server tests with dnsmasq are in
//! tests/dns_discovery.rs.

use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use super::wire::tests::response;
use super::wire::{self, Name, QType, TYPE_A, TYPE_AAAA};
use super::*;

#[test]
fn resolv_conf_kubernetes_pod() {
    let c = parse_resolv_conf(
        "# generated\nsearch default.svc.cluster.local svc.cluster.local cluster.local\n\
         nameserver 10.96.0.10\noptions ndots:5 timeout:2 attempts:3 rotate\n",
    );
    assert_eq!(c.nameservers, vec!["10.96.0.10:53".parse().unwrap()]);
    assert_eq!(
        c.search,
        [
            "default.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local"
        ]
    );
    assert_eq!(
        (c.ndots, c.timeout, c.attempts),
        (5, Duration::from_secs(2), 3)
    );
}

#[test]
fn resolv_conf_edge_cases() {
    let c = parse_resolv_conf("");
    assert_eq!(c, ResolvConf::default());
    let c = parse_resolv_conf(
        "nameserver 1.1.1.1\nnameserver ::1\nnameserver fe80::1%eth0\nnameserver bogus\n\
         nameserver 2.2.2.2\nnameserver 3.3.3.3\n; comment\nsearch a.example b..bad C.Example.\n\
         domain only.example\noptions ndots:99 timeout:0 attempts:100 ndots:x\n",
    );
    assert_eq!(
        c.nameservers,
        ["1.1.1.1:53", "[::1]:53", "2.2.2.2:53"].map(|s| s.parse::<SocketAddr>().unwrap())
    );
    assert_eq!(c.search, ["only.example"], "the last of search/domain wins");
    assert_eq!(
        (c.ndots, c.timeout, c.attempts),
        (15, Duration::from_secs(1), 5)
    );
    let c = parse_resolv_conf("domain x.example\nsearch a.example b..bad C.Example. # c\n");
    assert_eq!(c.search, ["a.example", "c.example"]);
}

fn resolver(servers: &[SocketAddr], search: &[&str], ndots: u8) -> Resolver {
    Resolver::new(ResolvConf {
        nameservers: servers.to_vec(),
        search: search.iter().map(|s| s.to_string()).collect(),
        ndots,
        timeout: Duration::from_millis(300),
        attempts: 1,
    })
}

#[test]
fn search_list_order() {
    let r = resolver(
        &["127.0.0.1:53".parse().unwrap()],
        &["ns.svc.local", "svc.local"],
        2,
    );
    let names = |h: &str| -> Vec<String> {
        let base = Name::from_host(h).unwrap();
        r.candidates(h, &base)
            .iter()
            .map(|n| n.to_dotted())
            .collect()
    };
    assert_eq!(
        names("reviews"),
        ["reviews.ns.svc.local", "reviews.svc.local", "reviews"]
    );
    assert_eq!(names("a.b"), ["a.b.ns.svc.local", "a.b.svc.local", "a.b"]);
    assert_eq!(
        names("a.b.c"),
        ["a.b.c", "a.b.c.ns.svc.local", "a.b.c.svc.local"]
    );
    assert_eq!(names("a."), ["a"]);
}

#[test]
fn literals_localhost_and_bad_names_never_query() {
    // No server at all: none of these may need one.
    let r = resolver(&[], &[], 1);
    assert_eq!(
        r.lookup("10.1.2.3").unwrap(),
        vec!["10.1.2.3".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        r.lookup("[::1]").unwrap(),
        vec!["::1".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(r.lookup("LocalHost.").unwrap().len(), 2);
    let v4 = r.clone().with_family(LookupFamily::V4Only);
    assert_eq!(
        v4.lookup("a.localhost").unwrap(),
        vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
    );
    assert!(matches!(
        r.lookup("bad name"),
        Err(DnsError::InvalidName { .. })
    ));
    assert!(matches!(r.lookup("x.test"), Err(DnsError::NoResolvers)));
}

/// What a fake server does with one query: `None` = stay silent.
type Handler = dyn Fn(&[u8], bool /* tcp */) -> Option<Vec<u8>> + Send + Sync;

/// What a fake server sends for one query: any number of datagrams (over
/// TCP, only the last).
type MultiHandler = dyn Fn(&[u8], bool /* tcp */) -> Vec<Vec<u8>> + Send + Sync;

fn fake_server(handler: Arc<Handler>) -> SocketAddr {
    fake_server_multi(Arc::new(move |q, tcp| {
        handler(q, tcp).into_iter().collect()
    }))
}

/// A fake DNS server on 127.0.0.1 (UDP, and TCP on the same port).
/// Its threads end when the test process does.
fn fake_server_multi(handler: Arc<MultiHandler>) -> SocketAddr {
    let (udp, tcp) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()) {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    let h = handler.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            for answer in h(&buf[..n], false) {
                let _ = udp.send_to(&answer, from);
            }
        }
    });
    thread::spawn(move || {
        for mut s in tcp.incoming().flatten() {
            let mut len = [0u8; 2];
            if s.read_exact(&mut len).is_err() {
                continue;
            }
            let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
            if s.read_exact(&mut q).is_err() {
                continue;
            }
            if let Some(answer) = handler(&q, true).pop() {
                let mut framed = (answer.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&answer);
                let _ = s.write_all(&framed);
            }
        }
    });
    addr
}

fn qtype_of(query: &[u8]) -> u16 {
    let mut i = 12;
    while query[i] != 0 {
        i += 1 + query[i] as usize;
    }
    u16::from_be_bytes([query[i + 1], query[i + 2]])
}

const PTR: [u8; 2] = [0xC0, 12];

fn v4(ip: &str) -> Vec<u8> {
    ip.parse::<Ipv4Addr>().unwrap().octets().to_vec()
}

fn v6(ip: &str) -> Vec<u8> {
    ip.parse::<Ipv6Addr>().unwrap().octets().to_vec()
}

/// Answers A with 10.0.0.1 and AAAA with fd00::1, TTL 30.
fn both(q: &[u8]) -> Vec<u8> {
    match qtype_of(q) {
        TYPE_A => response(q, 0x8180, &[(PTR.to_vec(), TYPE_A, 30, v4("10.0.0.1"))]),
        _ => response(q, 0x8180, &[(PTR.to_vec(), TYPE_AAAA, 30, v6("fd00::1"))]),
    }
}

#[test]
fn a_and_aaaa_over_udp() {
    let s = fake_server(Arc::new(|q, _| Some(both(q))));
    let l = resolver(&[s], &[], 1).lookup_detailed("web.test").unwrap();
    assert_eq!(
        l.addrs,
        ["10.0.0.1", "fd00::1"].map(|a| a.parse::<IpAddr>().unwrap())
    );
    assert_eq!(l.ttl, Duration::from_secs(30));
    let v6only = resolver(&[s], &[], 1).with_family(LookupFamily::V6Only);
    assert_eq!(
        v6only.lookup("web.test").unwrap(),
        vec!["fd00::1".parse::<IpAddr>().unwrap()]
    );
}

#[test]
fn truncated_answer_is_asked_again_over_tcp() {
    let tcp_queries = Arc::new(AtomicUsize::new(0));
    let t = tcp_queries.clone();
    let s = fake_server(Arc::new(move |q, tcp| {
        if !tcp {
            return Some(response(q, 0x8380, &[])); // TC set, no records
        }
        t.fetch_add(1, Ordering::Relaxed);
        let many: Vec<_> = (1..=100)
            .map(|i| (PTR.to_vec(), TYPE_A, 30, v4(&format!("10.0.1.{i}"))))
            .collect();
        match qtype_of(q) {
            TYPE_A => Some(response(q, 0x8180, &many)),
            _ => Some(response(q, 0x8180, &[])),
        }
    }));
    let addrs = resolver(&[s], &[], 1).lookup("big.test").unwrap();
    assert_eq!(addrs.len(), 100);
    assert_eq!(tcp_queries.load(Ordering::Relaxed), 2);
}

#[test]
fn formerr_to_edns_is_asked_again_without_it() {
    let s = fake_server(Arc::new(|q, _| {
        let has_opt = u16::from_be_bytes([q[10], q[11]]) > 0;
        if has_opt {
            Some(response(q, 0x8181, &[])) // FORMERR
        } else {
            Some(both(q))
        }
    }));
    assert_eq!(resolver(&[s], &[], 1).lookup("old.test").unwrap().len(), 2);
}

#[test]
fn silent_and_failing_servers_fall_through_to_the_next() {
    let silent = fake_server(Arc::new(|_, _| None));
    let servfail = fake_server(Arc::new(|q, _| Some(response(q, 0x8182, &[]))));
    let good = fake_server(Arc::new(|q, _| Some(both(q))));
    assert_eq!(
        resolver(&[silent, servfail, good], &[], 1)
            .lookup("x.test")
            .unwrap()
            .len(),
        2
    );

    match resolver(&[silent], &[], 1).lookup("x.test") {
        Err(DnsError::Timeout { server, name, .. }) => {
            assert_eq!((server, name.as_str()), (silent, "x.test"))
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    let e = resolver(&[servfail], &[], 1).lookup("x.test").unwrap_err();
    assert!(matches!(e, DnsError::Rcode { rcode: 2, .. }), "{e:?}");
    assert!(e.to_string().contains("SERVFAIL"), "{e}");
    assert!(!e.is_negative_answer());
}

#[test]
fn spoofed_answers_are_ignored_and_garbage_is_malformed() {
    // Before each real answer: one with another ID and one, with the right
    // ID, for another name (RFC 5452 §9.1). Both must be ignored.
    let s = fake_server_multi(Arc::new(|q, _| {
        let mut wrong_id = both(q);
        wrong_id[0] ^= 0xFF;
        let id = u16::from_be_bytes([q[0], q[1]]);
        let evil = Name::from_host("evil.test").unwrap();
        let other = response(
            &wire::encode_query(id, &evil, QType::A, false),
            0x8180,
            &[(PTR.to_vec(), TYPE_A, 30, v4("6.6.6.6"))],
        );
        vec![wrong_id, other, both(q)]
    }));
    let l = resolver(&[s], &[], 1).lookup_detailed("web.test").unwrap();
    assert_eq!(
        l,
        Lookup {
            name: "web.test".into(),
            canonical_name: "web.test".into(),
            addrs: ["10.0.0.1", "fd00::1"].map(|a| a.parse().unwrap()).to_vec(),
            ttl: Duration::from_secs(30),
        }
    );

    let bad = fake_server(Arc::new(|q, _| {
        Some(response(
            q,
            0x8180,
            &[(PTR.to_vec(), TYPE_A, 30, vec![1, 2, 3])],
        ))
    }));
    let e = resolver(&[bad], &[], 1).lookup("web.test").unwrap_err();
    assert!(matches!(e, DnsError::Malformed { .. }), "{e:?}");
}

#[test]
fn nxdomain_nodata_and_search() {
    // Knows only reviews.ns.svc.test; NXDOMAIN for anything else.
    let s = fake_server(Arc::new(|q, _| {
        let name = Name::from_host("reviews.ns.svc.test").unwrap();
        let ours = q.get(12..12 + name.wire().len()) == Some(name.wire());
        Some(match (ours, qtype_of(q)) {
            (true, TYPE_A) => response(q, 0x8180, &[(PTR.to_vec(), TYPE_A, 30, v4("10.0.0.7"))]),
            (true, _) => response(q, 0x8180, &[]), // NODATA for AAAA
            (false, _) => response(q, 0x8183, &[]),
        })
    }));
    let r = resolver(&[s], &["ns.svc.test", "svc.test"], 5);
    let l = r.lookup_detailed("reviews").unwrap();
    assert_eq!((l.name.as_str(), l.addrs.len()), ("reviews.ns.svc.test", 1));
    // Enough dots: tried as is (NXDOMAIN) and then with the search list.
    let r1 = resolver(&[s], &["svc.test"], 1);
    assert_eq!(r1.lookup("reviews.ns").unwrap().len(), 1);
    let e = r.lookup("ratings").unwrap_err();
    assert!(
        matches!(&e, DnsError::NxDomain { name, server } if name == "ratings" && *server == s),
        "{e:?}"
    );
    assert!(e.is_negative_answer());
    let v6 = resolver(&[s], &[], 1).with_family(LookupFamily::V6Only);
    let e = v6.lookup("reviews.ns.svc.test.").unwrap_err();
    assert!(matches!(e, DnsError::NoData { .. }), "{e:?}");
}

#[test]
fn cname_end_outside_the_answer_is_chased() {
    let s = fake_server(Arc::new(|q, _| {
        let target = Name::from_host("real.test").unwrap();
        let is_target = q.get(12..12 + target.wire().len()) == Some(target.wire());
        Some(match (is_target, qtype_of(q)) {
            (true, TYPE_A) => response(q, 0x8180, &[(PTR.to_vec(), TYPE_A, 30, v4("10.0.0.8"))]),
            (true, _) => response(q, 0x8180, &[]),
            // alias.test CNAME real.test, without real.test's records.
            (false, _) => response(
                q,
                0x8180,
                &[(PTR.to_vec(), wire::TYPE_CNAME, 30, target.wire().to_vec())],
            ),
        })
    }));
    let l = resolver(&[s], &[], 1)
        .lookup_detailed("alias.test")
        .unwrap();
    assert_eq!(l.addrs, vec!["10.0.0.8".parse::<IpAddr>().unwrap()]);
    assert_eq!(l.canonical_name, "real.test");
}

#[test]
fn unreachable_server_is_an_io_error_naming_it() {
    // A port with nothing bound: ICMP port unreachable -> ECONNREFUSED.
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = resolver(&[port], &[], 1).lookup("x.test").unwrap_err();
    assert!(e.to_string().contains(&port.to_string()), "{e}");
    assert!(
        matches!(e, DnsError::Io { .. } | DnsError::Timeout { .. }),
        "{e:?}"
    );
}
