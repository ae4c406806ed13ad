//! examples/l4floor, the glommio forwarder that perf/l4cost measures Remora's L4
//! path against (perf/README.md, "Session 17"), really forwards: a floor that
//! dropped or mangled bytes would read as a cheaper runtime than it is.
mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread;

#[test]
fn the_floor_forwards_both_ways() {
    // An upstream that answers every byte XORed with 0x5a (however the
    // stream is cut into reads), so an echo by the floor itself would not
    // pass.
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = upstream.local_addr().unwrap();
    thread::spawn(move || {
        for conn in upstream.incoming() {
            let mut c = conn.unwrap();
            thread::spawn(move || {
                let mut buf = [0u8; 65536];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            buf[..n].iter_mut().for_each(|b| *b ^= 0x5a);
                            if c.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    let port = common::free_port();
    let _floor = common::Example::spawn(
        "l4floor",
        &[format!("127.0.0.1:{port}"), up_addr.to_string(), "0".into()],
    );
    // Retries while the floor comes up; a 20 s read timeout.
    let mut c = common::connect(port);
    // Small round trips, as perf/l4cost's requests.
    for i in 0..100u32 {
        let msg = format!("request {i} from the client");
        c.write_all(msg.as_bytes()).unwrap();
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got).unwrap();
        let want: Vec<u8> = msg.bytes().map(|b| b ^ 0x5a).collect();
        assert_eq!(got, want, "round trip {i}");
    }
    // More than one buffer's worth (16 KiB) in one go.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut w = c.try_clone().unwrap();
    let sent = big.clone();
    let writer = thread::spawn(move || w.write_all(&sent).unwrap());
    let mut got = vec![0u8; big.len()];
    c.read_exact(&mut got).unwrap();
    writer.join().unwrap();
    let want: Vec<u8> = big.iter().map(|b| b ^ 0x5a).collect();
    assert!(got == want, "200,000 bytes came back in order");
}
