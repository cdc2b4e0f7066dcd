//! A `shoald` out of file descriptors (a low `RLIMIT_NOFILE`, set with the shell's `ulimit -n`
//! before it starts) answers new connections `503` before taking their request, instead of
//! leaving them unanswered in the backlog, and serves normally once descriptors are free again.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: usize = 256;

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// Sends a whole request on a new connection and returns the answer's status line.
fn status_of_new_request(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: shoal\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_node_out_of_descriptors_answers_503_before_taking_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready.json");
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {LIMIT} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_shoald"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--upstream", "origin.invalid=http://127.0.0.1:9"])
        .arg("--ready-file")
        .arg(&ready)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("shoald starts");
    let mut node = Node(child);
    let pid = node.0.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "no ready file");
        assert!(node.0.try_wait().unwrap().is_none(), "shoald exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let addresses: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ready).unwrap()).unwrap();
    let registry = addresses["registry"].as_str().unwrap().to_owned();
    assert!(status_of_new_request(&registry).contains("200"));

    // Idle connections (no request yet) until the node holds every descriptor it may open.
    let mut idle = Vec::new();
    while open_descriptors(pid) < LIMIT {
        assert!(
            idle.len() < 2 * LIMIT,
            "the node never ran out of descriptors"
        );
        let before = open_descriptors(pid);
        idle.push(TcpStream::connect(&registry).unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        while open_descriptors(pid) <= before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // Out of descriptors: a new request is refused with 503 before it is taken, every time.
    for _ in 0..3 {
        let status = status_of_new_request(&registry);
        assert!(status.starts_with("HTTP/1.1 503"), "{status:?}");
    }
    // Descriptors free again: served as usual.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(30);
    while open_descriptors(pid) >= LIMIT - 8 {
        assert!(Instant::now() < deadline, "the node kept its descriptors");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Served as usual again. Connections the node is still closing, and its own background
    // tasks' files, can hold the last few descriptors for a moment, so a 503 (with Retry-After,
    // as a client would) is retried until the deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = status_of_new_request(&registry);
        if status.contains("200") {
            break;
        }
        assert!(
            status.starts_with("HTTP/1.1 503") && Instant::now() < deadline,
            "{status:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(node.0.try_wait().unwrap().is_none(), "shoald died");
}
