//! Small helpers shared by the parts: free ports, bounded polling, child
//! process teardown and log tails. Nothing here knows about a specific part.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Asks the kernel for a free loopback port. The port is released before it
/// is returned, so a caller that binds it later may race another process;
/// callers retry start-up on a bind failure.
pub(crate) fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a probe port")?;
    Ok(listener.local_addr()?.port())
}

/// Whether something accepts TCP connections on `addr`.
pub(crate) fn accepts_connections(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Opens `path` for appending and returns two handles usable as a child's
/// stdout and stderr, so both streams land in one file.
pub(crate) fn log_stdio(path: &Path) -> Result<(Stdio, Stdio)> {
    let file = File::options()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening log file {}", path.display()))?;
    let second = file.try_clone().context("cloning log file handle")?;
    Ok((Stdio::from(file), Stdio::from(second)))
}

/// The last `lines` lines of a log file (or a note that it cannot be read).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

/// Sends SIGKILL to a child and reaps it. Never blocks for long: a child that
/// got SIGKILL exits at once.
pub(crate) fn kill_and_reap(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Sends `signal` (a name such as `TERM`) to `pid` with the `kill` utility;
/// the workspace forbids unsafe code, so no direct `libc::kill`.
pub(crate) fn send_signal(pid: u32, signal: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .arg("-s")
        .arg(signal)
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -s {signal} {pid} failed: {status}");
    }
    Ok(())
}

/// Waits up to `timeout` for a child to exit, polling without blocking the
/// async runtime. Returns `None` if it is still running.
pub(crate) async fn wait_exit(
    child: &mut Child,
    timeout: Duration,
) -> Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("polling child")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Keeps `dir` on disk (and says where) when `SHOAL_TESTNET_KEEP` is set, so
/// a failing test's data directories and logs can be examined afterwards.
pub(crate) fn keep_if_requested(dir: &mut tempfile::TempDir, what: &str) {
    if std::env::var_os("SHOAL_TESTNET_KEEP").is_some() {
        dir.disable_cleanup(true);
        eprintln!(
            "SHOAL_TESTNET_KEEP: keeping {what} at {}",
            dir.path().display()
        );
    }
}
