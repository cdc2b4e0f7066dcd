//! A private containerd: its own root, state and sockets in a temporary
//! directory, so every instance starts with a cold content store.
//!
//! Pulls run `ctr image pull --hosts-dir <dir> <ref>` with a timeout.
//! Teardown kills containerd, lazily unmounts whatever is still mounted under
//! its directory (snapshots left by an interrupted unpack), then removes the
//! directory; `Drop` does all of it, so a failing test leaves nothing behind.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::process;

/// How long containerd may take to answer on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Default bound on one `ctr image pull`.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(240);

/// A running containerd.
pub struct Containerd {
    dir: TempDir,
    child: Option<Child>,
}

impl Containerd {
    /// Writes the config, starts containerd and waits until `ctr version`
    /// answers on its socket.
    pub async fn start() -> Result<Containerd> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-ctrd-")
            .tempdir()
            .context("creating containerd temp dir")?;
        let mut containerd = Containerd { dir, child: None };
        let config = containerd.dir.path().join("config.toml");
        let root = containerd.dir.path().join("root");
        let state = containerd.dir.path().join("state");
        let opt = containerd.dir.path().join("opt");
        let text = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{grpc}"

[ttrpc]
  address = "{ttrpc}"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = root.display(),
            state = state.display(),
            grpc = containerd.socket().display(),
            ttrpc = containerd.dir.path().join("ttrpc.sock").display(),
            opt = opt.display(),
        );
        std::fs::write(&config, text).context("writing containerd config")?;
        let (out, err) = process::log_stdio(&containerd.log_path())?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("spawning containerd (is the containerd package installed?)")?;
        containerd.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = containerd.child.as_mut().expect("just set").try_wait()? {
                containerd.child = None;
                bail!(
                    "containerd exited during start-up ({status}); log:\n{}",
                    process::log_tail(&containerd.log_path(), 30)
                );
            }
            if containerd.socket().exists() {
                let version = containerd.ctr(&["version"], Duration::from_secs(10)).await;
                if matches!(&version, Ok(out) if out.status.success()) {
                    return Ok(containerd);
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "containerd did not answer within {START_TIMEOUT:?}; log:\n{}",
                    process::log_tail(&containerd.log_path(), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// containerd's config file (the CRI plugin is disabled in it).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// The gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// containerd's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("containerd.log")
    }

    /// Runs `ctr --address <socket> <args>` with a timeout; the child is
    /// killed if the timeout passes.
    pub async fn ctr(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut command = tokio::process::Command::new("ctr");
        command
            .arg("--address")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match tokio::time::timeout(timeout, command.output()).await {
            Ok(output) => output.with_context(|| format!("running ctr {args:?}")),
            Err(_) => bail!("ctr {args:?} did not finish within {timeout:?}"),
        }
    }

    /// `ctr image pull --hosts-dir <hosts_dir> <reference>` bounded by
    /// [`PULL_TIMEOUT`]. An error means the pull could not be run or timed
    /// out; a failed pull is an `Ok` output with a failure status.
    pub async fn pull(&self, reference: &str, hosts_dir: &Path) -> Result<Output> {
        self.pull_with_timeout(reference, hosts_dir, PULL_TIMEOUT)
            .await
    }

    /// [`Containerd::pull`] with an explicit timeout.
    pub async fn pull_with_timeout(
        &self,
        reference: &str,
        hosts_dir: &Path,
        timeout: Duration,
    ) -> Result<Output> {
        let hosts = hosts_dir.to_string_lossy();
        self.ctr(
            &["image", "pull", "--hosts-dir", &hosts, reference],
            timeout,
        )
        .await
    }

    /// Pulls and fails with ctr's output if the pull did not succeed.
    pub async fn pull_ok(&self, reference: &str, hosts_dir: &Path) -> Result<Output> {
        let output = self.pull(reference, hosts_dir).await?;
        if !output.status.success() {
            bail!("pull of {reference} failed: {}", describe(&output));
        }
        Ok(output)
    }

    /// Fails unless the content store holds every digest of `image` (index, manifest, config,
    /// layers): what a successful pull must leave behind.
    pub async fn ensure_holds(&self, image: &crate::image::ImageInfo) -> Result<()> {
        let held = self.content_digests().await?;
        for digest in image.content_digests() {
            anyhow::ensure!(
                held.contains(&digest),
                "containerd's content store lacks {digest}; it holds {held:?}"
            );
        }
        Ok(())
    }

    /// Digests in the content store (`ctr content ls -q`).
    pub async fn content_digests(&self) -> Result<BTreeSet<String>> {
        let output = self
            .ctr(&["content", "ls", "-q"], Duration::from_secs(30))
            .await?;
        if !output.status.success() {
            bail!("ctr content ls failed: {}", describe(&output));
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .filter(|d| d.contains(':'))
            .map(str::to_string)
            .collect())
    }

    /// Image names known to containerd (`ctr image ls -q`).
    pub async fn images(&self) -> Result<Vec<String>> {
        let output = self
            .ctr(&["image", "ls", "-q"], Duration::from_secs(30))
            .await?;
        if !output.status.success() {
            bail!("ctr image ls failed: {}", describe(&output));
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }

    fn teardown(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_and_reap(&mut child);
        }
        unmount_below(self.dir.path());
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.teardown();
        process::keep_if_requested(&mut self.dir, "containerd dir");
        if std::thread::panicking() {
            eprintln!(
                "--- containerd log ({}), last lines:\n{}",
                self.log_path().display(),
                process::log_tail(&self.log_path(), 20)
            );
        }
    }
}

/// Status, stdout and stderr of a command, for error messages.
pub fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout:\n{}\n--- stderr:\n{}",
        output.status,
        tail_text(&String::from_utf8_lossy(&output.stdout), 30),
        tail_text(&String::from_utf8_lossy(&output.stderr), 30),
    )
}

fn tail_text(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Lazily unmounts every mount point at or below `dir`, deepest first.
fn unmount_below(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().to_string();
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    for point in points {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&point)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Undoes the octal escapes (`\040` for a space) of `/proc/self/mountinfo`.
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Some(Ok(v)) = raw.get(i + 1..i + 4).map(|o| u8::from_str_radix(o, 8)) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
