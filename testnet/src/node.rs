//! `shoald` as a child process: its own data directory, loopback ports, log
//! file and admin endpoint client.
//!
//! The node is started with `--listen 127.0.0.1:0 --admin-listen
//! 127.0.0.1:0 --ready-file <tmp>/ready.json`; shoald writes
//! `{"registry":"127.0.0.1:P1","admin":"127.0.0.1:P2"}` there once both
//! listeners are bound. A restart passes the ports learned the first time,
//! so containerd's `hosts.toml` stays valid. Logs (stderr, `RUST_LOG`
//! respected) go to `<tmp>/shoald.log`; their tail is printed when a test
//! panics while the node is alive.
//!
//! With a network key ([`NodeConfig::network_key`]) the node also runs the
//! peer network on `--p2p-listen /ip4/127.0.0.1/udp/0/quic-v1 --p2p-listen
//! /ip4/127.0.0.1/tcp/0` (both transports, as a deployed node), and the ready
//! file carries its first address as `"p2p"`, which other nodes take as
//! `--bootstrap` ([`NodeConfig::bootstrap`]), and all of them as `"p2p_addrs"`.
//!
//! Binaries are found in `$SHOAL_BIN_DIR`, else next to the test executable's
//! directory (`target/<profile>/`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use tempfile::TempDir;

use crate::containerd::Containerd;
use crate::hosts::HostsDir;
use crate::image::ImageInfo;
use crate::metrics::Metrics;
use crate::origin::Origin;
use crate::process;

/// How long shoald may take to write its ready file.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shoald may take to exit after SIGTERM: it lets fetches in flight commit first.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node may take to prove membership to a peer.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a blob may take to be committed after its response ended.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(60);
/// The node's log file, inside its temp directory.
const LOG_FILE: &str = "shoald.log";

/// Where the project's binaries are: `$SHOAL_BIN_DIR`, else the directory
/// above the running test executable (`target/<profile>/deps/..`).
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SHOAL_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    let mut dir = exe.parent().context("test executable has no parent")?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().context("deps has no parent")?;
    }
    Ok(dir.to_path_buf())
}

/// The path of project binary `name`, or an error telling how to build it.
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build the binaries first: cargo build --workspace --bins \
             (or point SHOAL_BIN_DIR at the directory holding them)",
            path.display()
        );
    }
    Ok(path)
}

/// How to start a node.
#[derive(Debug, Clone, Default)]
pub struct NodeConfig {
    /// `--upstream NAME=URL` pairs.
    pub upstreams: Vec<(String, String)>,
    /// `--default-upstream NAME`.
    pub default_upstream: Option<String>,
    /// `--max-disk-bytes N`.
    pub max_disk_bytes: Option<u64>,
    /// `--network-key FILE`; also turns on `--p2p-listen` on a loopback
    /// UDP port chosen by the kernel.
    pub network_key: Option<PathBuf>,
    /// `--p2p-listen MULTIADDR` when the node has a network key (that one
    /// transport only); defaults to QUIC and TCP, each on a loopback port
    /// chosen by the kernel.
    pub p2p_listen: Option<String>,
    /// `--bootstrap MULTIADDR` values.
    pub bootstrap: Vec<String>,
    /// `--region NAME`.
    pub region: Option<String>,
    /// `--test-egress-bytes-per-sec N` (the node's TESTING ONLY uplink cap).
    pub test_egress_bytes_per_sec: Option<u64>,
    /// `--test-latency A:B=MS` values (TESTING ONLY added latency per region
    /// pair).
    pub test_latency: Vec<String>,
    /// `--test-flip-served-bytes` (TESTING ONLY: the node flips a byte of
    /// every shard it sends to peers, a lying member for chaos tests).
    pub test_flip_served_bytes: bool,
    /// Further arguments, passed as they are.
    pub extra_args: Vec<String>,
    /// `RUST_LOG` for the node; defaults to the test's `RUST_LOG`, else
    /// `info`.
    pub rust_log: Option<String>,
}

impl NodeConfig {
    /// A config whose only upstream, also the default, is `origin` under
    /// [`crate::REGISTRY_HOST`].
    pub fn for_origin(origin: &Origin) -> NodeConfig {
        NodeConfig::default()
            .upstream(crate::REGISTRY_HOST, &origin.url())
            .default_upstream(crate::REGISTRY_HOST)
    }

    /// [`NodeConfig::for_origin`] in the peer network of `key`, joining it
    /// through `bootstrap` (a member's [`Node::p2p_addr`]).
    pub fn joining(origin: &Origin, key: &NetworkKeyFile, bootstrap: &str) -> NodeConfig {
        NodeConfig::for_origin(origin)
            .network_key(key)
            .bootstrap(bootstrap)
    }

    /// Adds `--upstream name=url`.
    pub fn upstream(mut self, name: &str, url: &str) -> NodeConfig {
        self.upstreams.push((name.to_string(), url.to_string()));
        self
    }

    /// Sets `--default-upstream`.
    pub fn default_upstream(mut self, name: &str) -> NodeConfig {
        self.default_upstream = Some(name.to_string());
        self
    }

    /// Sets `--max-disk-bytes`.
    pub fn max_disk_bytes(mut self, bytes: u64) -> NodeConfig {
        self.max_disk_bytes = Some(bytes);
        self
    }

    /// Joins the peer network with the key in `key`.
    pub fn network_key(mut self, key: &NetworkKeyFile) -> NodeConfig {
        self.network_key = Some(key.path().to_path_buf());
        self
    }

    /// Listens for peers on `addr` (`--p2p-listen`), for example
    /// `/ip4/127.0.0.1/tcp/0` for TCP + noise + yamux instead of QUIC.
    pub fn p2p_listen(mut self, addr: &str) -> NodeConfig {
        self.p2p_listen = Some(addr.to_string());
        self
    }

    /// Adds `--bootstrap addr` (a peer's [`Node::p2p_addr`]).
    pub fn bootstrap(mut self, addr: &str) -> NodeConfig {
        self.bootstrap.push(addr.to_string());
        self
    }

    /// Sets `--region`.
    pub fn region(mut self, region: &str) -> NodeConfig {
        self.region = Some(region.to_string());
        self
    }

    /// Caps the node's outgoing shard transfers at `bytes_per_sec` in all
    /// (`--test-egress-bytes-per-sec`, TESTING ONLY).
    pub fn test_egress_bytes_per_sec(mut self, bytes_per_sec: u64) -> NodeConfig {
        self.test_egress_bytes_per_sec = Some(bytes_per_sec);
        self
    }

    /// Adds `ms` milliseconds before the node answers a transfer request
    /// between regions `a` and `b` (`--test-latency a:b=ms`, TESTING ONLY).
    pub fn test_latency(mut self, a: &str, b: &str, ms: u64) -> NodeConfig {
        self.test_latency.push(format!("{a}:{b}={ms}"));
        self
    }

    /// Adds one raw argument.
    pub fn arg(mut self, arg: &str) -> NodeConfig {
        self.extra_args.push(arg.to_string());
        self
    }
}

/// The contents of shoald's ready file.
#[derive(Debug, Clone, Deserialize)]
struct ReadyFile {
    registry: SocketAddr,
    admin: SocketAddr,
    #[serde(default)]
    p2p: Option<String>,
    #[serde(default)]
    p2p_addrs: Vec<String>,
}

/// A network key in a file of its own (mode 0600), shared by the nodes of
/// one test network.
pub struct NetworkKeyFile {
    dir: TempDir,
}

impl NetworkKeyFile {
    /// A key derived from `seed`: equal seeds make the same network.
    pub fn new(seed: u64) -> Result<NetworkKeyFile> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::Builder::new()
            .prefix("shoal-netkey-")
            .tempdir()
            .context("creating key dir")?;
        let path = dir.path().join("network.key");
        let material: String = (0..4u64)
            .map(|i| {
                format!(
                    "{:016x}",
                    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                        .rotate_left(i as u32 * 13)
                        ^ i
                )
            })
            .collect();
        std::fs::write(&path, format!("{material}\n")).context("writing network key")?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .context("chmod network key")?;
        Ok(NetworkKeyFile { dir })
    }

    /// The key file.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("network.key")
    }
}

/// A `shoald` child process and its directories.
pub struct Node {
    config: NodeConfig,
    /// Shared with [`LogsOnFailure`], so the log outlives the node when the watcher was made first.
    dir: Arc<TempDir>,
    child: Option<Child>,
    registry: SocketAddr,
    admin: SocketAddr,
    p2p: Option<String>,
    p2p_addrs: Vec<String>,
    client: reqwest::Client,
}

impl Node {
    /// Starts shoald on fresh ports with an empty data directory and waits
    /// for its ready file.
    pub async fn start(config: NodeConfig) -> Result<Node> {
        let mut dir = tempfile::Builder::new()
            .prefix("shoal-node-")
            .tempdir()
            .context("creating node temp dir")?;
        std::fs::create_dir_all(dir.path().join("data")).context("creating data dir")?;
        process::keep_if_requested(&mut dir, "shoald dir");
        let dir = Arc::new(dir);
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut node = Node {
            config,
            dir,
            child: None,
            registry: unbound,
            admin: unbound,
            p2p: None,
            p2p_addrs: Vec::new(),
            // No idle keep-alive connections: an idle connection held open by
            // the harness would make every graceful stop wait for it.
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(0)
                .build()
                .context("building HTTP client")?,
        };
        node.spawn(unbound, unbound).await?;
        Ok(node)
    }

    async fn spawn(&mut self, registry: SocketAddr, admin: SocketAddr) -> Result<()> {
        let shoald = binary("shoald")?;
        let ready = self.ready_path();
        let _ = std::fs::remove_file(&ready);
        let mut command = Command::new(shoald);
        command
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(registry.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .arg("--ready-file")
            .arg(&ready);
        for (name, url) in &self.config.upstreams {
            command.arg("--upstream").arg(format!("{name}={url}"));
        }
        if let Some(name) = &self.config.default_upstream {
            command.arg("--default-upstream").arg(name);
        }
        if let Some(bytes) = self.config.max_disk_bytes {
            command.arg("--max-disk-bytes").arg(bytes.to_string());
        }
        if let Some(key) = &self.config.network_key {
            // A restarted node listens where it did before, as a host's daemon would, so the
            // members that knew its address (and nodes bootstrapping from it) still reach it.
            let bound: Vec<String> = self
                .p2p_addrs
                .iter()
                .filter_map(|addr| addr.split_once("/p2p/"))
                .map(|(listen, _)| listen.to_string())
                .collect();
            let listen = if !bound.is_empty() {
                bound
            } else if let Some(addr) = &self.config.p2p_listen {
                vec![addr.clone()]
            } else {
                vec![
                    "/ip4/127.0.0.1/udp/0/quic-v1".to_string(),
                    "/ip4/127.0.0.1/tcp/0".to_string(),
                ]
            };
            command.arg("--network-key").arg(key);
            for addr in listen {
                command.arg("--p2p-listen").arg(addr);
            }
        }
        for addr in &self.config.bootstrap {
            command.arg("--bootstrap").arg(addr);
        }
        if let Some(region) = &self.config.region {
            command.arg("--region").arg(region);
        }
        if let Some(rate) = self.config.test_egress_bytes_per_sec {
            command
                .arg("--test-egress-bytes-per-sec")
                .arg(rate.to_string());
        }
        for pair in &self.config.test_latency {
            command.arg("--test-latency").arg(pair);
        }
        if self.config.test_flip_served_bytes {
            command.arg("--test-flip-served-bytes");
        }
        command.args(&self.config.extra_args);
        let rust_log = self
            .config
            .rust_log
            .clone()
            .or_else(|| std::env::var("RUST_LOG").ok())
            .unwrap_or_else(|| "info".to_string());
        let (out, err) = process::log_stdio(&self.log_path())?;
        let child = command
            .env("RUST_LOG", rust_log)
            // Plain text in the log file, without colour escapes.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("spawning shoald")?;
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().expect("just set").try_wait()? {
                self.child = None;
                bail!(
                    "shoald exited during start-up ({status}); log {}:\n{}",
                    self.log_path().display(),
                    process::log_tail(&self.log_path(), 30)
                );
            }
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let parsed: ReadyFile = serde_json::from_str(&text)
                    .with_context(|| format!("parsing ready file {text:?}"))?;
                self.registry = parsed.registry;
                self.admin = parsed.admin;
                self.p2p = parsed.p2p;
                self.p2p_addrs = parsed.p2p_addrs;
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "shoald wrote no ready file within {START_TIMEOUT:?}; log {}:\n{}",
                    self.log_path().display(),
                    process::log_tail(&self.log_path(), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The options the node was started with; changes apply at the next
    /// [`Node::restart`].
    pub fn config_mut(&mut self) -> &mut NodeConfig {
        &mut self.config
    }

    /// The registry endpoint's address.
    pub fn registry_addr(&self) -> SocketAddr {
        self.registry
    }

    /// The admin endpoint's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The peer network's address (`/ip4/../udp/../quic-v1/p2p/<peer id>`);
    /// an error when the node runs without a network key (no peer network).
    pub fn p2p_addr(&self) -> Result<&str> {
        self.p2p.as_deref().with_context(|| {
            format!(
                "the node at {} reported no p2p address (started without a network key?)",
                self.registry
            )
        })
    }

    /// Every address the peer network listens on (QUIC and TCP by default),
    /// each with `/p2p/<peer id>`; empty without a network key.
    pub fn p2p_addrs(&self) -> &[String] {
        &self.p2p_addrs
    }

    /// `http://<registry addr>`.
    pub fn registry_url(&self) -> String {
        format!("http://{}", self.registry)
    }

    /// `http://<admin addr>`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// The node's `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The file with shoald's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(LOG_FILE)
    }

    fn ready_path(&self) -> PathBuf {
        self.dir.path().join("ready.json")
    }

    /// The last `lines` lines of the node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        process::log_tail(&self.log_path(), lines)
    }

    /// Whether the process is running (not stopped or killed by the test).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, then reap. The data directory stays as the crash left it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_and_reap(&mut child);
        }
    }

    /// SIGTERM, then wait for exit (SIGKILL and an error if it does not exit
    /// within 20 s).
    pub async fn stop(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("shoald is not running")?;
        process::send_signal(child.id(), "TERM")?;
        match process::wait_exit(&mut child, STOP_TIMEOUT).await? {
            Some(status) => Ok(status),
            None => {
                process::kill_and_reap(&mut child);
                bail!("shoald did not exit within {STOP_TIMEOUT:?} of SIGTERM")
            }
        }
    }

    /// Starts shoald again with the same data directory and ports (after
    /// [`Node::stop`] or [`Node::kill9`]; a running node is killed first).
    pub async fn restart(&mut self) -> Result<()> {
        self.kill9();
        let (registry, admin) = (self.registry, self.admin);
        // The ports were just released; retry briefly in case the kernel has
        // not let go of them yet.
        let mut last_err = None;
        for _ in 0..5 {
            match self.spawn(registry, admin).await {
                Ok(()) => return Ok(()),
                Err(err) => last_err = Some(err),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(last_err.expect("at least one attempt")).context("restarting shoald")
    }

    /// `GET /healthz` must answer 200.
    pub async fn healthz(&self) -> Result<()> {
        let resp = self
            .client
            .get(format!("{}/healthz", self.admin_url()))
            .send()
            .await
            .context("GET /healthz")?;
        if !resp.status().is_success() {
            bail!("GET /healthz answered {}", resp.status());
        }
        Ok(())
    }

    /// Scrapes `GET /metrics`.
    pub async fn metrics(&self) -> Result<Metrics> {
        let resp = self
            .client
            .get(format!("{}/metrics", self.admin_url()))
            .send()
            .await
            .context("GET /metrics")?;
        if !resp.status().is_success() {
            bail!("GET /metrics answered {}", resp.status());
        }
        Ok(Metrics::parse(
            &resp.text().await.context("reading /metrics")?,
        ))
    }

    /// One metric summed over all its label sets (0 if absent).
    pub async fn metric(&self, name: &str) -> Result<f64> {
        Ok(self.metrics().await?.sum(name))
    }

    /// One metric summed over the label sets carrying all of `labels`.
    pub async fn metric_with(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        Ok(self.metrics().await?.sum_with(name, labels))
    }

    /// Polls `/metrics` until `name` (summed) satisfies `until`, for at most
    /// `timeout`. Returns the last value.
    pub async fn wait_for_metric(
        &self,
        name: &str,
        timeout: Duration,
        until: impl Fn(f64) -> bool,
    ) -> Result<f64> {
        self.wait_for_metric_with(name, &[], timeout, until).await
    }

    /// [`Node::wait_for_metric`] over the label sets carrying all of `labels`.
    pub async fn wait_for_metric_with(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        timeout: Duration,
        until: impl Fn(f64) -> bool,
    ) -> Result<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.metric_with(name, labels).await.unwrap_or(f64::NAN);
            if until(value) {
                return Ok(value);
            }
            if Instant::now() >= deadline {
                bail!("metric {name}{labels:?} still {value} after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Pulls `image` through this node with a fresh containerd, then waits until every blob of it
    /// is committed here.
    pub async fn pull_and_store(&self, image: &ImageInfo) -> Result<()> {
        let hosts = HostsDir::for_test_registry(self.registry_addr())?;
        let client = Containerd::start().await?;
        client.pull_ok(&image.reference, hosts.path()).await?;
        drop(client);
        self.wait_for_stored_blobs(image.blobs().count()).await
    }

    /// Waits until this node has proved membership to at least one peer.
    pub async fn wait_until_joined(&self) -> Result<()> {
        self.wait_for_metric("shoal_p2p_members", JOIN_TIMEOUT, |n| n >= 1.0)
            .await
            .map(|_| ())
            .context("the node never joined a member")
    }

    /// Waits until the store holds at least `blobs` blobs: a pull's response can end before its
    /// last blob is committed, and tests that touch shard files must wait for the commit.
    pub async fn wait_for_stored_blobs(&self, blobs: usize) -> Result<()> {
        self.wait_for_metric("shoal_store_blobs", COMMIT_TIMEOUT, |n| n >= blobs as f64)
            .await
            .map(|_| ())
    }

    /// Waits until the log contains `needle`, for at most `timeout`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            if text.contains(needle) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("log never said {needle:?} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET` a manifest through the node (any manifest media type), so it
    /// is cached there; fails unless the node answers 200.
    pub async fn fetch_manifest(&self, repo: &str, reference: &str) -> Result<()> {
        let url = format!(
            "{}/v2/{repo}/manifests/{reference}?ns={}",
            self.registry_url(),
            crate::REGISTRY_HOST
        );
        let resp = self
            .client
            .get(&url)
            .header(
                "Accept",
                "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
                 application/vnd.docker.distribution.manifest.list.v2+json, \
                 application/vnd.docker.distribution.manifest.v2+json",
            )
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        if !resp.status().is_success() {
            bail!("GET {url} answered {}", resp.status());
        }
        resp.bytes().await.context("reading manifest")?;
        Ok(())
    }

    /// `GET` a blob through the node; fails unless the node answers 200 and
    /// sends the whole body.
    pub async fn fetch_blob(&self, repo: &str, digest: &str) -> Result<()> {
        let url = format!(
            "{}/v2/{repo}/blobs/{digest}?ns={}",
            self.registry_url(),
            crate::REGISTRY_HOST
        );
        let resp = self
            .client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        if !resp.status().is_success() {
            bail!("GET {url} answered {}", resp.status());
        }
        resp.bytes().await.context("reading blob")?;
        Ok(())
    }

    /// Files under `<data>/shards/`, largest first.
    pub fn shard_files(&self) -> Result<Vec<(PathBuf, u64)>> {
        let mut files = Vec::new();
        collect_files(&self.data_dir().join("shards"), &mut files)?;
        files.sort_by_key(|(_, len)| std::cmp::Reverse(*len));
        Ok(files)
    }
}

fn collect_files(dir: &Path, out: &mut Vec<(PathBuf, u64)>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            collect_files(&entry.path(), out)?;
        } else if meta.is_file() {
            out.push((entry.path(), meta.len()));
        }
    }
    Ok(())
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- shoald log ({}), last lines:\n{}",
                self.log_path().display(),
                self.log_tail(40)
            );
        }
    }
}

/// Flips one byte in the middle of a shard file, as a bad disk would.
pub fn corrupt_shard_file(path: &Path) -> Result<()> {
    let mut bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let middle = bytes.len() / 2;
    let byte = bytes.get_mut(middle).context("empty shard file")?;
    *byte ^= 0xff;
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Prints the last lines of the nodes' logs when a test ends by returning an error, unless
/// [`LogsOnFailure::passed`] was called (a panic prints them through [`Node`]'s own drop).
#[derive(Debug, Default)]
pub struct LogsOnFailure {
    /// Each node's directory, kept alive until the logs have been printed.
    dirs: Vec<Arc<TempDir>>,
    passed: bool,
}

impl LogsOnFailure {
    /// Watches the logs of `nodes`.
    pub fn new<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> LogsOnFailure {
        let mut logs = LogsOnFailure::default();
        for node in nodes {
            logs.add(node);
        }
        logs
    }

    /// Watches `node`'s log too.
    pub fn add(&mut self, node: &Node) {
        self.dirs.push(Arc::clone(&node.dir));
    }

    /// The test passed: print nothing.
    pub fn passed(&mut self) {
        self.passed = true;
    }
}

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if self.passed || std::thread::panicking() {
            return;
        }
        for dir in &self.dirs {
            let path = dir.path().join(LOG_FILE);
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "--- shoald log {} (last lines):\n{}",
                path.display(),
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }
}
