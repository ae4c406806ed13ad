//! HTTP test peers shared by the L7 test files: a Python backend
//! (tests/l7/backend.py) and a keep-alive client on a raw socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{connect, free_port};

/// A Python backend process (killed on drop).
pub struct Backend {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/l7/backend.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(name)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Backend {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
        }
    }

    /// Requests the backend has seen (asked directly, not through the proxy).
    pub fn count(&self) -> u64 {
        let mut c = Client::new(self.addr.port());
        let r = c.request("GET /count HTTP/1.1\r\nHost: b\r\n\r\n");
        String::from_utf8(r.body).unwrap().parse().unwrap()
    }

    /// What the backend reported for the last request it answered (null if none).
    pub fn last(&self) -> Value {
        let mut c = Client::new(self.addr.port());
        c.request("GET /last HTTP/1.1\r\nHost: b\r\n\r\n").json()
    }

    /// Waits (bounded) until the last request the backend answered is for
    /// `path`, and returns what it reported: a mirrored copy arrives after
    /// the client's answer, with nothing to signal it.
    pub fn wait_last(&self, path: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let last = self.last();
            if last["path"] == path {
                return last;
            }
            assert!(
                Instant::now() < deadline,
                "{path} never arrived; last: {last}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{e}: {}\n{}",
                self.head,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// A keep-alive client on one connection.
pub struct Client {
    pub w: TcpStream,
    pub r: BufReader<TcpStream>,
}

impl Client {
    pub fn new(port: u16) -> Client {
        let s = connect(port);
        Client {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        }
    }

    pub fn request(&mut self, raw: &str) -> Resp {
        self.w.write_all(raw.as_bytes()).unwrap();
        self.response()
    }

    /// Reads one response (Content-Length, chunked, or until close).
    pub fn response(&mut self) -> Resp {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = self.r.read_line(&mut line).unwrap();
            assert!(n > 0, "connection closed inside a response head: {head:?}");
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line: {head:?}"));
        let mut resp = Resp {
            status,
            head,
            body: Vec::new(),
        };
        if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            loop {
                let mut line = String::new();
                self.r.read_line(&mut line).unwrap();
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16)
                    .unwrap_or_else(|_| panic!("bad chunk line {line:?}"));
                if size == 0 {
                    let mut end = String::new();
                    while end != "\r\n" {
                        end.clear();
                        self.r.read_line(&mut end).unwrap();
                    }
                    break;
                }
                let start = resp.body.len();
                resp.body.resize(start + size, 0);
                self.r.read_exact(&mut resp.body[start..]).unwrap();
                let mut crlf = [0u8; 2];
                self.r.read_exact(&mut crlf).unwrap();
                assert_eq!(&crlf, b"\r\n");
            }
        } else if let Some(n) = resp.header("content-length") {
            resp.body.resize(n.parse().unwrap(), 0);
            self.r.read_exact(&mut resp.body).unwrap();
        } else if !matches!(status, 204 | 304) && !(100..200).contains(&status) {
            self.r.read_to_end(&mut resp.body).unwrap();
        }
        resp
    }

    /// Everything until the proxy closes.
    pub fn rest(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        let _ = self.r.read_to_end(&mut v);
        v
    }
}
pub fn get(path: &str, host: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")
}
