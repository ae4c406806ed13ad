//! The HTTP/2 frame path: arbitrary bytes after a valid client preface, fed
//! to an h2 server connection built with Remora's downstream settings
//! (`config::Http2`'s defaults, as `l7::h2::serve` builds it), over an
//! in-memory duplex. Every accepted request is answered (its body read and
//! released first, as the proxy does) and translated to the HTTP/1.1 head
//! Remora would send upstream, its rewrite included
//! (`h2::headers::write_h1_request`), which must parse back as exactly one
//! head of the same length: no field h2 accepts may smuggle a second request
//! or leave the head open. No panic anywhere.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use libfuzzer_sys::fuzz_target;
use remora::config::Http2;
use remora::h2::headers::{write_h1_request, H2Parts};
use remora::h2::PREFACE;
use remora::http::head::{parse_request, BodyFraming, Limits, Parsed};
use remora::http::rewrite::{RequestIdGenerator, RequestRewrite};
use remora::http::RequestParts;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Polls `f` to its end with a waker that does nothing: everything here is
/// in memory, so each poll makes progress or nothing ever will. Bounded, so
/// that a state waiting for input that cannot come ends the run.
fn run(f: impl Future<Output = ()>) {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..100_000 {
        if f.as_mut().poll(&mut cx).is_ready() {
            return;
        }
    }
}

async fn answer(req: http::Request<h2::RecvStream>, mut respond: h2::server::SendResponse<Bytes>) {
    let (parts, mut body) = req.into_parts();
    let view = H2Parts(&parts);
    let mut head = Vec::new();
    let ids = RequestIdGenerator::with_seed(1);
    let rewrite = RequestRewrite {
        path: Some(view.path_and_query()),
        host: view.authority(),
        client_addr: Some("192.0.2.1".parse().unwrap()),
        forwarded_proto: Some("http"),
        forwarded_proto_if_absent: true,
        request_id: Some(&ids),
        client_cert: None,
        ops: None,
        framing: BodyFraming::Chunked,
        upgrade: false,
    };
    write_h1_request(&parts.method, &parts.headers, &rewrite, &mut head);
    let limits = Limits {
        max_head_bytes: usize::MAX,
        ..Limits::default()
    };
    match parse_request(&head, &limits) {
        Ok(Parsed::Complete { len, .. }) => {
            assert_eq!(len, head.len(), "{:?}", String::from_utf8_lossy(&head))
        }
        Ok(Parsed::Partial) => panic!(
            "translated head left open: {:?}",
            String::from_utf8_lossy(&head)
        ),
        // Stricter than h2 (e.g. a field value HTTP/1 does not allow): the
        // proxy would answer 400, nothing is forwarded.
        Err(_) => {}
    }
    while let Some(Ok(d)) = body.data().await {
        let _ = body.flow_control().release_capacity(d.len());
    }
    let _ = body.trailers().await;
    let resp = http::Response::builder().status(200).body(()).unwrap();
    if let Ok(mut tx) = respond.send_response(resp, false) {
        let _ = tx.send_data(Bytes::from_static(b"ok"), true);
    }
}

fuzz_target!(|data: &[u8]| {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let s = Http2::default();
    let serve = async {
        let Ok(mut conn) = h2::server::Builder::new()
            .max_concurrent_streams(s.max_concurrent_streams)
            .initial_window_size(s.initial_stream_window_size)
            .initial_connection_window_size(s.initial_connection_window_size)
            .max_header_list_size(s.max_header_list_size)
            .handshake::<_, Bytes>(server)
            .await
        else {
            return;
        };
        let mut streams = FuturesUnordered::new();
        loop {
            let accepted = std::future::poll_fn(|cx| {
                while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
                conn.poll_accept(cx)
            })
            .await;
            match accepted {
                Some(Ok((req, respond))) => streams.push(answer(req, respond)),
                _ => break,
            }
        }
    };
    let peer = async {
        // The client writes everything, then half-closes, reading (and
        // dropping) whatever the server says meanwhile so that neither
        // side's buffer fills.
        let (mut rd, mut wr) = tokio::io::split(&mut client);
        let write = async {
            let _ = wr.write_all(PREFACE).await;
            let _ = wr.write_all(data).await;
            let _ = wr.shutdown().await;
        };
        let read = async {
            let mut sink = [0u8; 4096];
            while let Ok(n) = rd.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        futures_util::future::join(write, read).await;
    };
    run(async {
        futures_util::future::join(serve, peer).await;
    });
});
