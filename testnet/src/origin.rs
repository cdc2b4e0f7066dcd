//! The origin registry: Debian's `docker-registry` (the distribution
//! registry 2.8) serving from a temporary directory on a loopback port.
//!
//! Its access log (combined log format on stdout/stderr, captured to
//! `<tmp>/registry.log`) is parsed so tests can count how often a blob was
//! fetched from the origin. A line looks like:
//!
//! ```text
//! 127.0.0.1 - - [23/Nov/2026:18:40:57 +0000] "GET /v2/x/blobs/sha256:00.. HTTP/1.1" 200 157 "" "ua"
//! ```
//!
//! The log shows no request headers, so a Range GET is recognised by its
//! `206` status. The origin can be stopped and started again on the same
//! port and data ("origin down" tests), and a stored blob can be corrupted on
//! disk (same length, different bytes) and restored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::process;

/// How long the registry may take to answer `GET /v2/` after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running (or deliberately stopped) origin registry.
pub struct Origin {
    dir: TempDir,
    addr: SocketAddr,
    child: Option<Child>,
}

/// One parsed access-log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogEntry {
    /// HTTP method, e.g. `GET`.
    pub method: String,
    /// Request path without the query string.
    pub path: String,
    /// The query string (without `?`), empty if none.
    pub query: String,
    /// Response status.
    pub status: u16,
    /// Body bytes written (0 when the log shows `-`).
    pub bytes: u64,
    /// When the request was logged, Unix seconds (the log's resolution), if the date parses.
    pub at_unix_secs: Option<u64>,
}

impl Origin {
    /// Starts a registry with empty storage on a free loopback port and waits
    /// until `GET /v2/` answers.
    pub async fn start() -> Result<Origin> {
        let mut last_err = None;
        // A free port can be taken between probing and binding; retry then.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("shoal-origin-")
                .tempdir()
                .context("creating origin temp dir")?;
            let port = process::free_port()?;
            let mut origin = Origin {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                dir,
                child: None,
            };
            origin.write_config()?;
            match origin.start_again().await {
                Ok(()) => return Ok(origin),
                Err(err) => last_err = Some(err),
            }
        }
        Err(last_err.expect("at least one attempt")).context("starting origin registry")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    fn write_config(&self) -> Result<()> {
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n  secret: shoal-testnet\n",
            root = self.root_dir().display(),
            addr = self.addr,
        );
        std::fs::write(self.config_path(), config).context("writing registry config")
    }

    /// Starts the registry process again (after [`Origin::stop`]) on the same
    /// port and storage, and waits until it answers.
    pub async fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("origin is already running");
        }
        let (out, err) = process::log_stdio(&self.log_path())?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("spawning docker-registry (is the docker-registry package installed?)")?;
        self.child = Some(child);
        let url = format!("{}/v2/", self.url());
        let client = reqwest::Client::new();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().expect("just set").try_wait()? {
                self.child = None;
                bail!(
                    "docker-registry exited during start-up ({status}); log:\n{}",
                    process::log_tail(&self.log_path(), 20)
                );
            }
            if let Ok(resp) = client.get(&url).send().await {
                if resp.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "docker-registry did not answer GET /v2/ within {START_TIMEOUT:?}; log:\n{}",
                    process::log_tail(&self.log_path(), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the registry (SIGKILL) and waits until its port refuses
    /// connections. Storage and the log are kept.
    pub async fn stop(&mut self) -> Result<()> {
        // The registry writes an access-log line after its response has gone out: let the last
        // lines land before the process is killed, or counts taken later miss them.
        if self.child.is_some() {
            self.settle().await;
        }
        if let Some(mut child) = self.child.take() {
            process::kill_and_reap(&mut child);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while process::accepts_connections(self.addr) {
            if Instant::now() >= deadline {
                bail!(
                    "origin port {} still accepts connections after stop",
                    self.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// The registry's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the registry process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The registry's storage root.
    pub fn root_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The file holding the registry's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// Waits until the log has stopped growing for a second (at most 15 s).
    /// The registry writes an access-log line after the response has gone
    /// out, so a count taken right after a response may miss its line: call
    /// this before counting. The quiet second allows for a loaded machine.
    pub async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let size = || {
            std::fs::metadata(self.log_path())
                .map(|m| m.len())
                .unwrap_or(0)
        };
        let mut last = size();
        let mut stable_since = Instant::now();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = size();
            if now != last {
                last = now;
                stable_since = Instant::now();
            } else if stable_since.elapsed() >= Duration::from_secs(1) {
                return;
            }
        }
    }

    /// All access-log entries so far (see [`Origin::settle`]).
    pub fn access_log(&self) -> Result<Vec<AccessLogEntry>> {
        let text = std::fs::read_to_string(self.log_path()).context("reading registry log")?;
        Ok(text.lines().filter_map(parse_access_line).collect())
    }

    /// Number of requests the origin has answered so far.
    pub fn request_count(&self) -> usize {
        self.access_log().map(|log| log.len()).unwrap_or(0)
    }

    /// Number of `GET /v2/<repo>/blobs/<digest>` requests (any status, ranged
    /// or not).
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.blob_get_entries(digest).count()
    }

    /// Number of blob GETs for `digest` answered with `206 Partial Content`
    /// (the log shows no headers; a Range GET shows as a 206).
    pub fn blob_range_gets(&self, digest: &str) -> usize {
        self.blob_get_entries(digest)
            .filter(|e| e.status == 206)
            .count()
    }

    /// Body bytes of every blob GET answered so far (see [`Origin::settle`]): what the origin
    /// served of blobs, however many requests it took.
    pub fn blob_bytes_served(&self) -> u64 {
        self.access_log()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.method == "GET" && e.path.contains("/blobs/sha256:"))
            .map(|e| e.bytes)
            .sum()
    }

    /// Number of `GET /v2/<repo>/manifests/<reference>` requests.
    pub fn manifest_gets(&self, reference: &str) -> usize {
        let suffix = format!("/manifests/{reference}");
        self.access_log()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| {
                e.method == "GET" && e.path.starts_with("/v2/") && e.path.ends_with(&suffix)
            })
            .count()
    }

    fn blob_get_entries(&self, digest: &str) -> impl Iterator<Item = AccessLogEntry> {
        let suffix = format!("/blobs/{digest}");
        self.access_log()
            .unwrap_or_default()
            .into_iter()
            .filter(move |e| {
                e.method == "GET" && e.path.starts_with("/v2/") && e.path.ends_with(&suffix)
            })
    }

    /// Where the registry stores the bytes of `digest` (`sha256:<hex>`).
    pub fn blob_data_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = digest
            .strip_prefix("sha256:")
            .with_context(|| format!("not a sha256 digest: {digest}"))?;
        if hex.len() != 64 {
            bail!("not a sha256 digest: {digest}");
        }
        Ok(self
            .root_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data"))
    }

    /// Overwrites the stored bytes of `digest` with different bytes of the
    /// same length, so the origin serves wrong content under that digest.
    /// The returned guard restores the original bytes on
    /// [`CorruptedBlob::restore`] or when dropped.
    pub fn corrupt_blob(&self, digest: &str) -> Result<CorruptedBlob> {
        let path = self.blob_data_path(digest)?;
        let original =
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let corrupted: Vec<u8> = original.iter().map(|b| b ^ 0x5a).collect();
        std::fs::write(&path, &corrupted)
            .with_context(|| format!("corrupting {}", path.display()))?;
        Ok(CorruptedBlob {
            path,
            original: Some(original),
        })
    }

    /// Kills the registry if it runs; used by `Drop`.
    fn shutdown(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_and_reap(&mut child);
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.shutdown();
        process::keep_if_requested(&mut self.dir, "origin dir");
        if std::thread::panicking() {
            eprintln!(
                "--- origin registry log ({}), last lines:\n{}",
                self.log_path().display(),
                process::log_tail(&self.log_path(), 30)
            );
        }
    }
}

/// A blob on the origin's disk that currently holds wrong bytes.
pub struct CorruptedBlob {
    path: PathBuf,
    original: Option<Vec<u8>>,
}

impl CorruptedBlob {
    /// The corrupted data file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Puts the original bytes back.
    pub fn restore(mut self) -> Result<()> {
        self.put_back()
    }

    fn put_back(&mut self) -> Result<()> {
        if let Some(original) = self.original.take() {
            std::fs::write(&self.path, original)
                .with_context(|| format!("restoring {}", self.path.display()))?;
        }
        Ok(())
    }
}

impl Drop for CorruptedBlob {
    fn drop(&mut self) {
        let _ = self.put_back();
    }
}

/// Parses one combined-log-format line; returns `None` for every other line
/// (the registry's structured `time=... level=...` lines).
pub fn parse_access_line(line: &str) -> Option<AccessLogEntry> {
    // `<ip> - - [<date>] "<METHOD> <URI> <PROTO>" <status> <bytes> "<referer>" "<ua>"`
    let date_end = line.find("] \"")?;
    let at_unix_secs = line[..date_end]
        .rsplit_once('[')
        .and_then(|(_, date)| parse_log_date(date));
    let after_date = &line[date_end + 3..];
    let (request, rest) = after_date.split_once('"')?;
    let mut request_parts = request.split(' ');
    let method = request_parts.next()?.to_string();
    let uri = request_parts.next()?;
    if !request_parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let mut fields = rest.split_whitespace();
    let status = fields.next()?.parse().ok()?;
    let bytes = fields.next().and_then(|b| b.parse().ok()).unwrap_or(0);
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    Some(AccessLogEntry {
        method,
        path: path.to_string(),
        query: query.to_string(),
        status,
        bytes,
        at_unix_secs,
    })
}

/// Unix seconds of a combined-log date, `23/Nov/2026:18:40:57 +0000` (UTC offsets only, which is
/// what the registry writes).
fn parse_log_date(date: &str) -> Option<u64> {
    let (stamp, zone) = date.split_once(' ')?;
    if zone != "+0000" {
        return None;
    }
    let mut parts = stamp.split(['/', ':']);
    let day: u64 = parts.next()?.parse().ok()?;
    let month = parts.next()?;
    let year: i64 = parts.next()?.parse().ok()?;
    let hour: u64 = parts.next()?.parse().ok()?;
    let minute: u64 = parts.next()?.parse().ok()?;
    let second: u64 = parts.next()?.parse().ok()?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day as i64 - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = u64::try_from(era * 146_097 + day_of_era - 719_468).ok()?;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_combined_log_lines() {
        let line = "127.0.0.1 - - [23/Nov/2026:18:40:57 +0000] \"GET /v2/x/blobs/sha256:00 HTTP/1.1\" 206 157 \"\" \"curl/7.88.1\"";
        assert_eq!(
            parse_access_line(line),
            Some(AccessLogEntry {
                method: "GET".into(),
                path: "/v2/x/blobs/sha256:00".into(),
                query: String::new(),
                status: 206,
                bytes: 157,
                at_unix_secs: Some(1_795_459_257),
            })
        );
        let structured = "time=\"2026-11-23T18:40:57Z\" level=info msg=\"response completed\" http.request.uri=/v2/";
        assert_eq!(parse_access_line(structured), None);
    }
}
