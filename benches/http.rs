//! HTTP/1 codec and router benchmarks: head parsing at three sizes, chunked
//! decoding of 1 MiB, and route matching against 10 / 100 / 1,000 routes.
//!
//! `cargo bench --bench http` (add `-- --quick` for a fast pass).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use remora::http::body::{encode_chunk, encode_last_chunk, ChunkedDecoder, Event};
use remora::http::head::{parse_request, parse_request_into, Limits, Parsed, RequestHead};
use remora::http::rewrite::HeaderOps;
use remora::http::rewrite::{write_request, RequestIdGenerator, RequestRewrite};
use remora::http::route::{
    ClusterChoice, ClusterRef, DomainPattern, Forward, PathMatch, Route, RouteAction, RouteMatch,
    RouteTable, VirtualHost,
};

const SMALL: &[u8] =
    b"GET /api/v1/items?id=7 HTTP/1.1\r\nHost: svc.ns\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";

const TYPICAL: &[u8] = b"GET /static/app/main.3f9a1c.js?v=20240101 HTTP/1.1\r\n\
Host: www.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Referer: https://www.example.com/products/widgets\r\n\
Connection: keep-alive\r\n\
Cookie: session=8c1f2e3d4a5b6c7d8e9f; theme=dark; _ga=GA1.2.123456789.1700000000\r\n\
Cache-Control: no-cache\r\n\
\r\n";

fn large_head() -> Vec<u8> {
    let mut h =
        b"POST /upload/batch HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 0\r\n".to_vec();
    let mut i = 0;
    // ~50 fields of ~160 bytes: under the 100-field limit, like a big cookie/trace set.
    while h.len() < 8 * 1024 - 200 {
        h.extend_from_slice(
            format!(
                "X-Trace-Attribute-{i}: {}\r\n",
                "0123456789abcdef".repeat(8)
            )
            .as_bytes(),
        );
        i += 1;
    }
    h.extend_from_slice(b"\r\n");
    h
}

fn bench_heads(c: &mut Criterion) {
    let large = large_head();
    let limits = Limits::default();
    let mut g = c.benchmark_group("parse_request");
    for (name, input) in [
        ("small", SMALL),
        ("typical", TYPICAL),
        ("large", &large[..]),
    ] {
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("fresh", format!("{name}_{}B", input.len())),
            input,
            |b, input| {
                b.iter(|| match parse_request(black_box(input), &limits) {
                    Ok(Parsed::Complete { head, .. }) => head.head_len,
                    _ => unreachable!(),
                })
            },
        );
        // Baseline: httparse alone, no checks, no spans.
        g.bench_with_input(
            BenchmarkId::new("httparse_only", format!("{name}_{}B", input.len())),
            input,
            |b, input| {
                b.iter(|| {
                    let mut headers = [httparse::EMPTY_HEADER; 100];
                    let mut req = httparse::Request::new(&mut headers);
                    req.parse(black_box(input)).ok()
                })
            },
        );
        // The per-connection pattern: header storage reused across requests.
        let mut head = RequestHead::default();
        g.bench_with_input(
            BenchmarkId::new("reused", format!("{name}_{}B", input.len())),
            input,
            |b, input| b.iter(|| parse_request_into(black_box(input), &limits, &mut head)),
        );
    }
    g.finish();

    // Parse + rewrite + serialize: the whole head path of a forwarded request.
    let ids = RequestIdGenerator::with_seed(1);
    let mut head = RequestHead::default();
    let mut out = Vec::with_capacity(1024);
    c.bench_function("forward_head/typical", |b| {
        b.iter(|| {
            parse_request_into(black_box(TYPICAL), &limits, &mut head).ok();
            let view = head.view(TYPICAL);
            out.clear();
            let rw = RequestRewrite {
                client_addr: Some("10.1.2.3".parse().unwrap()),
                forwarded_proto: Some("http"),
                forwarded_proto_if_absent: false,
                request_id: Some(&ids),
                ..RequestRewrite::passthrough(&view)
            };
            write_request(&view, &rw, &mut out);
            out.len()
        })
    });
}

fn bench_chunked(c: &mut Criterion) {
    let payload = vec![0x5au8; 1 << 20];
    let mut encoded = Vec::new();
    for chunk in payload.chunks(4096) {
        encode_chunk(chunk, &mut encoded);
    }
    encode_last_chunk(b"", &mut encoded);
    let mut g = c.benchmark_group("chunked_decode");
    g.throughput(Throughput::Bytes(payload.len() as u64));
    // Read in 16 KiB pieces, as from a socket.
    g.bench_function("1MiB_in_4KiB_chunks", |b| {
        b.iter(|| {
            let mut d = ChunkedDecoder::default();
            let mut data = 0usize;
            for piece in encoded.chunks(16 * 1024) {
                let mut at = 0;
                loop {
                    let step = d.decode(&piece[at..]).unwrap();
                    at += step.consumed;
                    match step.event {
                        Event::Data(r) => data += r.len(),
                        Event::Trailers(_) => {}
                        Event::NeedMore | Event::Done => break,
                    }
                }
            }
            assert_eq!(data, 1 << 20);
            data
        })
    });
    g.finish();
}

fn forward_route(name: String, path: PathMatch) -> Route {
    Route {
        name: name.into(),
        matcher: RouteMatch {
            path,
            methods: vec![],
            headers: vec![],
            query: vec![],
        },
        action: RouteAction::Forward(Forward {
            clusters: ClusterChoice::Single(ClusterRef {
                name: "c".into(),
                index: 0,
            }),
            prefix_rewrite: None,
            host_rewrite: None,
            timeout: None,
            retry: None,
            max_request_body_bytes: None,
            fault: None,
            mirror: None,
        }),
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
        rate_limit: None,
    }
}

fn bench_routes(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("route_match");
    for n in [10usize, 100, 1000] {
        // Istio-like: one virtual host per service, matched by exact Host.
        let vhosts = (0..n)
            .map(|i| {
                VirtualHost::new(
                    format!("svc-{i}"),
                    vec![
                        DomainPattern::parse(&format!("svc-{i}.ns.svc.cluster.local")).unwrap(),
                        DomainPattern::parse(&format!("svc-{i}")).unwrap(),
                    ],
                    vec![forward_route(
                        format!("r{i}"),
                        PathMatch::Prefix(b"/"[..].into()),
                    )],
                    HeaderOps::default(),
                    HeaderOps::default(),
                )
            })
            .collect();
        let table = RouteTable::new(vhosts);
        let req = format!(
            "GET /api/x HTTP/1.1\r\nHost: svc-{}.ns.svc.cluster.local:8080\r\n\r\n",
            n - 1
        );
        let Ok(Parsed::Complete { head, .. }) = parse_request(req.as_bytes(), &limits) else {
            panic!()
        };
        let view = head.view(req.as_bytes());
        g.bench_function(BenchmarkId::new("vhosts_exact_host", n), |b| {
            b.iter(|| {
                table
                    .match_request(black_box(&view))
                    .map(|m| m.route.name.len())
            })
        });

        // Worst case: one virtual host with n prefix routes, the last one matches.
        let routes = (0..n)
            .map(|i| {
                forward_route(
                    format!("r{i}"),
                    PathMatch::Prefix(format!("/service-{i}/").into_bytes().into()),
                )
            })
            .collect();
        let table = RouteTable::new(vec![VirtualHost::new(
            "all",
            vec![DomainPattern::Any],
            routes,
            HeaderOps::default(),
            HeaderOps::default(),
        )]);
        let req = format!(
            "GET /service-{}/items/7 HTTP/1.1\r\nHost: gw\r\n\r\n",
            n - 1
        );
        let Ok(Parsed::Complete { head, .. }) = parse_request(req.as_bytes(), &limits) else {
            panic!()
        };
        let view = head.view(req.as_bytes());
        assert!(table.match_request(&view).is_some());
        g.bench_function(BenchmarkId::new("prefix_routes_last_matches", n), |b| {
            b.iter(|| {
                table
                    .match_request(black_box(&view))
                    .map(|m| m.route.name.len())
            })
        });

        // n exact-path routes: indexed, so independent of n.
        let routes = (0..n)
            .map(|i| {
                forward_route(
                    format!("r{i}"),
                    PathMatch::Exact(format!("/service-{i}/items").into_bytes().into()),
                )
            })
            .collect();
        let table = RouteTable::new(vec![VirtualHost::new(
            "all",
            vec![DomainPattern::Any],
            routes,
            HeaderOps::default(),
            HeaderOps::default(),
        )]);
        let req = format!(
            "GET /service-{}/items?x=1 HTTP/1.1\r\nHost: gw\r\n\r\n",
            n - 1
        );
        let Ok(Parsed::Complete { head, .. }) = parse_request(req.as_bytes(), &limits) else {
            panic!()
        };
        let view = head.view(req.as_bytes());
        assert!(table.match_request(&view).is_some());
        g.bench_function(BenchmarkId::new("exact_path_routes", n), |b| {
            b.iter(|| {
                table
                    .match_request(black_box(&view))
                    .map(|m| m.route.name.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_heads, bench_chunked, bench_routes);
criterion_main!(benches);
