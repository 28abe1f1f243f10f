//! What the rsockd tests share: a `python3 -m http.server` target serving
//! [`PAGE`], and small helpers for files and loopback connections.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;

pub use chainmail_tests::free_port;
use chainmail_tests::peer::{Peer, first_line};
use chainmail_tests::{TestDir, find_program, secs};

pub const PAGE: &str = "hello through socks\n";

/// `python3 -m http.server` serving PAGE as /index.html.
pub struct Target {
    _peer: Peer,
    pub port: u16,
}

pub fn http_target(dir: &TestDir) -> Target {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("mkdir www");
    std::fs::write(www.join("index.html"), PAGE).expect("write page");
    let mut cmd = Command::new(find_program("python3"));
    cmd.args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "--directory"]).arg(&www).arg("0");
    let (peer, out) = Peer::spawn(cmd, dir.join("http.stderr"), "python3 -m http.server");
    let line = first_line(out.expect("stdout"), secs(20)).expect("http.server did not start");
    // "Serving HTTP on 127.0.0.1 port 40000 (http://127.0.0.1:40000/) ..."
    let port = line.split_whitespace().skip_while(|w| *w != "port").nth(1).and_then(|p| p.parse().ok());
    Target { _peer: peer, port: port.unwrap_or_else(|| panic!("no port in {line:?}")) }
}

pub fn write(dir: &TestDir, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write a file");
    p
}

pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to rsockd");
    s.set_read_timeout(Some(secs(15))).expect("timeout");
    s
}

pub fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
    v
}

pub fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = s.read_to_end(&mut v);
    v
}
