//! The daemon's configuration: embedded defaults, then a TOML file, then command-line flags;
//! parsed and validated once at start-up into a [`Config`] that is passed explicitly.
//!
//! Every problem is reported as one [`ConfigError`] naming the key, so `shoald` can print it and
//! exit with status 2.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shoal_proto::limits::{MAX_SHARD_BYTES, MIN_MAX_SHARD_BYTES};
use shoal_proto::ChunkingParams;

use libp2p::{Multiaddr, PeerId};

use crate::p2p::shaping::ShapingConfig;
use crate::p2p::{ConnectionLimits, NetworkKey, P2pConfig};
use crate::upstream::{UpstreamConfig, UpstreamTimeouts};

/// A configuration problem, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct ConfigError {
    /// The offending key (dotted path), or the file.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

fn error(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

/// A section's optional key: its value, or `default` when absent, refused (with the message to
/// show) unless within `low..=high`. NaN is refused too. Each section (`[placement]`,
/// `[lifecycle]`, `[threat]`, ...) wraps the message in its own error with the key's full name.
pub(crate) fn in_range<T: PartialOrd + Copy + std::fmt::Display>(
    value: Option<T>,
    default: T,
    low: T,
    high: T,
) -> Result<T, String> {
    let value = value.unwrap_or(default);
    if !(value >= low && value <= high) {
        return Err(format!("must be {low} to {high}"));
    }
    Ok(value)
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// Registry endpoint address.
    pub listen: SocketAddr,
    /// Admin endpoint address.
    pub admin_listen: SocketAddr,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Upstream for requests without `ns`.
    pub default_upstream: Option<String>,
    /// Disk budget for shards.
    pub max_disk_bytes: u64,
    /// Percent of the data directory's file system the store leaves free (its effective budget
    /// is never more than the free space above this reserve).
    pub disk_reserve_percent: u8,
    /// How long a tag's digest is trusted.
    pub tag_ttl: Duration,
    /// FastCDC parameters.
    pub chunking: ChunkingParams,
    /// Upstream timeouts and retries.
    pub upstream_timeouts: UpstreamTimeouts,
    /// The peer network; `None` (single node) when no network key is configured.
    pub p2p: Option<P2pConfig>,
    /// The admin API's bearer token (`admin_token_file`), required when the admin listener is
    /// beyond loopback; mutating admin endpoints check it.
    pub admin_token: Option<AdminToken>,
    /// Problems that do not stop the node, one line each with the fix (logged at start).
    pub warnings: Vec<String>,
    /// Predictive placement (`[placement]`).
    pub placement: crate::placement::PlacementConfig,
    /// The layer lifecycle (`[lifecycle]`).
    pub lifecycle: crate::lifecycle::LifecycleSettings,
    /// Image retention (`[retention]`).
    pub retention: crate::lifecycle::RetentionSettings,
    /// Threat intake and scores (`[threat]`).
    pub threat: crate::threat::ThreatConfig,
    /// Rebuilds: shadow fetch and switchover (`[rebuild]`).
    pub rebuild: crate::rebuild::RebuildConfig,
}

/// The admin API's bearer token. Its `Debug` form does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// Whether `presented` (an `Authorization: Bearer` value) is this token, compared in time
    /// that does not depend on where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[cfg(test)]
impl AdminToken {
    /// A token for unit tests.
    pub(crate) fn for_tests(token: &str) -> Self {
        Self(token.to_owned())
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Smallest admin token accepted, in bytes.
pub const MIN_ADMIN_TOKEN_BYTES: usize = 16;

/// The line that says a secret file is readable or writable by others, with the fix; `None`
/// when only its owner may read it (mode 0600 or 0400).
pub fn secret_file_mode_problem(key: &str, path: &Path, mode: u32) -> Option<String> {
    (mode & 0o077 != 0).then(|| {
        format!(
            "`{key}`: {} has mode {:04o}, so other users can read the secret: run chmod 600 {}",
            path.display(),
            mode & 0o7777,
            path.display()
        )
    })
}

fn secret_file_warning(key: &str, path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    secret_file_mode_problem(key, path, mode)
}

/// FastCDC defaults, chosen by measurement (see BENCHMARKS.md and ARCHITECTURE.md).
pub const DEFAULT_CHUNKING: ChunkingParams = ChunkingParams {
    min: 256 * 1024,
    avg: 1024 * 1024,
    max: 4 * 1024 * 1024,
};

/// The config file's shape. Every field is optional; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    admin_listen: Option<String>,
    max_disk_bytes: Option<u64>,
    disk_reserve_percent: Option<u8>,
    tag_ttl_secs: Option<u64>,
    default_upstream: Option<String>,
    chunking: Option<FileChunking>,
    upstream_timeouts: Option<FileTimeouts>,
    upstreams: Option<BTreeMap<String, FileUpstream>>,
    p2p_listen: Option<ListenAddrs>,
    bootstrap: Option<Vec<String>>,
    region: Option<String>,
    network_key_file: Option<PathBuf>,
    allowed_peers: Option<Vec<String>>,
    testing: Option<FileTesting>,
    admin_token_file: Option<PathBuf>,
    p2p_limits: Option<FileP2pLimits>,
    placement: Option<crate::placement::FilePlacement>,
    lifecycle: Option<crate::lifecycle::FileLifecycle>,
    retention: Option<crate::lifecycle::FileRetention>,
    threat: Option<crate::threat::FileThreat>,
    rebuild: Option<crate::rebuild::FileRebuild>,
}

/// `p2p_listen`: one multiaddr (as configs before both transports were the default wrote it) or a
/// list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ListenAddrs {
    One(String),
    Many(Vec<String>),
}

impl ListenAddrs {
    fn to_vec(&self) -> Vec<String> {
        match self {
            ListenAddrs::One(addr) => vec![addr.clone()],
            ListenAddrs::Many(addrs) => addrs.clone(),
        }
    }
}

/// `[p2p_limits]`: how many connections peers may open (see `p2p::limits`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileP2pLimits {
    max_connections: Option<u32>,
    max_inbound_connections: Option<u32>,
    max_pending_inbound: Option<u32>,
    max_connections_per_peer: Option<u32>,
    max_unproven_connections: Option<u32>,
    max_unproven_connections_per_ip: Option<u32>,
}

/// `[testing]`: TESTING ONLY network shaping (see `p2p::shaping`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTesting {
    egress_bytes_per_sec: Option<u64>,
    latency: Option<Vec<String>>,
    flip_served_bytes: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileChunking {
    min: u32,
    avg: u32,
    max: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTimeouts {
    connect_secs: Option<u64>,
    read_secs: Option<u64>,
    request_secs: Option<u64>,
    attempts: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUpstream {
    url: String,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
}

/// Values given on the command line; each overrides the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--listen`
    pub listen: Option<String>,
    /// `--admin-listen`
    pub admin_listen: Option<String>,
    /// `--upstream NAME=URL`, repeatable; replaces the file's and the default upstreams.
    pub upstreams: Vec<String>,
    /// `--default-upstream`
    pub default_upstream: Option<String>,
    /// `--max-disk-bytes`
    pub max_disk_bytes: Option<u64>,
    /// `--tag-ttl-secs`
    pub tag_ttl_secs: Option<u64>,
    /// `--p2p-listen MULTIADDR`, repeatable; replaces the file's list.
    pub p2p_listen: Vec<String>,
    /// `--bootstrap MULTIADDR`, repeatable; replaces the file's list.
    pub bootstrap: Vec<String>,
    /// `--region NAME`
    pub region: Option<String>,
    /// `--network-key FILE`
    pub network_key_file: Option<PathBuf>,
    /// `--allow-peer PEER_ID`, repeatable; replaces the file's list.
    pub allowed_peers: Vec<String>,
    /// `--test-egress-bytes-per-sec N` (TESTING ONLY)
    pub test_egress_bytes_per_sec: Option<u64>,
    /// `--test-latency A:B=MS`, repeatable; replaces the file's list (TESTING ONLY).
    pub test_latency: Vec<String>,
    /// `--test-flip-served-bytes` (TESTING ONLY: a lying member, for chaos tests)
    pub test_flip_served_bytes: bool,
    /// `--admin-token-file FILE`
    pub admin_token_file: Option<PathBuf>,
}

/// The default peer listen addresses: QUIC on UDP 4001 and TCP + noise + yamux on TCP 4001, all
/// interfaces (which one a node dials is `p2p::transport`'s rule).
pub const DEFAULT_P2P_LISTEN: [&str; 2] =
    ["/ip4/0.0.0.0/udp/4001/quic-v1", "/ip4/0.0.0.0/tcp/4001"];
/// Most addresses `p2p_listen` may name.
pub const MAX_P2P_LISTEN: usize = 8;
/// Smallest network key file accepted, in bytes.
pub const MIN_NETWORK_KEY_BYTES: usize = 32;
/// Most peer ids an allowlist may name.
pub const MAX_ALLOWED_PEERS: usize = 10_000;

fn parse_multiaddr(key: &str, value: &str) -> Result<Multiaddr, ConfigError> {
    value.parse().map_err(|e| {
        error(
            key,
            format!(
                "{value:?} is not a multiaddr such as {}: {e}",
                DEFAULT_P2P_LISTEN[0]
            ),
        )
    })
}

/// Validates the peer network's keys; `None` when no network key file is configured.
fn p2p_config(file: &FileConfig, overrides: &Overrides) -> Result<Option<P2pConfig>, ConfigError> {
    let listen = p2p_listen(file, overrides)?;
    let bootstrap = if overrides.bootstrap.is_empty() {
        file.bootstrap.clone().unwrap_or_default()
    } else {
        overrides.bootstrap.clone()
    };
    let bootstrap = bootstrap
        .iter()
        .map(|addr| parse_multiaddr("bootstrap", addr))
        .collect::<Result<Vec<_>, _>>()?;
    let region = overrides
        .region
        .clone()
        .or(file.region.clone())
        .unwrap_or_else(|| "default".to_owned());
    if region.is_empty()
        || region.len() > 63
        || !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(error(
            "region",
            format!("{region:?} must be 1 to 63 of a-z, 0-9 and -"),
        ));
    }
    let shaping = shaping_config(file, overrides)?;
    let allowed_peers = allowed_peers(file, overrides)?;
    let Some(key_path) = overrides
        .network_key_file
        .clone()
        .or(file.network_key_file.clone())
    else {
        if !bootstrap.is_empty() {
            return Err(error(
                "network_key_file",
                "bootstrap peers are configured but no network key: set network_key_file",
            ));
        }
        if shaping.is_enabled() {
            return Err(error(
                "testing",
                "network shaping applies to peer transfers, but no network key is configured",
            ));
        }
        if allowed_peers.is_some() {
            return Err(error(
                "allowed_peers",
                "an allowlist of peers is configured but no network key: set network_key_file",
            ));
        }
        if file.p2p_limits.is_some() {
            return Err(error(
                "p2p_limits",
                "connection limits are configured but no network key: set network_key_file",
            ));
        }
        return Ok(None);
    };
    let material = std::fs::read(&key_path).map_err(|e| {
        error(
            "network_key_file",
            format!("cannot read {}: {e}", key_path.display()),
        )
    })?;
    let material = material.trim_ascii();
    if material.len() < MIN_NETWORK_KEY_BYTES {
        return Err(error(
            "network_key_file",
            format!(
                "{path} holds {} bytes; a network key needs at least {MIN_NETWORK_KEY_BYTES}: make one with `head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > {path}` and copy it to every node",
                material.len(),
                path = key_path.display(),
            ),
        ));
    }
    if let Some(addr) = bootstrap.iter().find(|addr| {
        !addr
            .iter()
            .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
    }) {
        return Err(error(
            "bootstrap",
            format!(
                "{addr} names no peer: append /p2p/<peer id> (printed by that node at start as `peer network listening ... addr=...`, and in its --ready-file)"
            ),
        ));
    }
    let limits = p2p_limits(file)?;
    Ok(Some(P2pConfig {
        listen,
        bootstrap,
        region,
        network_key: NetworkKey::derive(material),
        allowed_peers,
        shaping,
        limits,
    }))
}

/// Validates the peer listen addresses (`p2p_listen`, `--p2p-listen`): 1 to [`MAX_P2P_LISTEN`]
/// distinct multiaddrs, each a transport the node speaks (QUIC or TCP, see `p2p::transport`).
fn p2p_listen(file: &FileConfig, overrides: &Overrides) -> Result<Vec<Multiaddr>, ConfigError> {
    let given = if !overrides.p2p_listen.is_empty() {
        overrides.p2p_listen.clone()
    } else if let Some(listed) = &file.p2p_listen {
        listed.to_vec()
    } else {
        DEFAULT_P2P_LISTEN.iter().map(|a| a.to_string()).collect()
    };
    if given.is_empty() || given.len() > MAX_P2P_LISTEN {
        return Err(error(
            "p2p_listen",
            format!(
                "{} addresses given; name 1 to {MAX_P2P_LISTEN}",
                given.len()
            ),
        ));
    }
    let mut listen: Vec<Multiaddr> = Vec::with_capacity(given.len());
    for value in &given {
        let addr = parse_multiaddr("p2p_listen", value)?;
        if crate::p2p::transport_of(&addr).is_none() {
            return Err(error(
                "p2p_listen",
                format!("{addr} is neither a QUIC (/udp/../quic-v1) nor a TCP (/tcp/..) address"),
            ));
        }
        if listen.contains(&addr) {
            return Err(error("p2p_listen", format!("{addr} is listed twice")));
        }
        listen.push(addr);
    }
    Ok(listen)
}

/// Validates the optional allowlist of peer ids (`allowed_peers`, `--allow-peer`).
fn allowed_peers(
    file: &FileConfig,
    overrides: &Overrides,
) -> Result<Option<BTreeSet<PeerId>>, ConfigError> {
    let listed = if overrides.allowed_peers.is_empty() {
        match &file.allowed_peers {
            Some(listed) => listed.clone(),
            None => return Ok(None),
        }
    } else {
        overrides.allowed_peers.clone()
    };
    if listed.is_empty() || listed.len() > MAX_ALLOWED_PEERS {
        return Err(error(
            "allowed_peers",
            format!(
                "lists {} peer ids; give 1 to {MAX_ALLOWED_PEERS}, or leave it out to admit every holder of the network key",
                listed.len()
            ),
        ));
    }
    listed
        .iter()
        .map(|id| {
            id.trim().parse::<PeerId>().map_err(|e| {
                error(
                    "allowed_peers",
                    format!("{id:?} is not a peer id (12D3KooW...): {e}"),
                )
            })
        })
        .collect::<Result<BTreeSet<_>, _>>()
        .map(Some)
}

/// Validates the TESTING ONLY shaping keys (`[testing]`, `--test-*` flags).
fn shaping_config(file: &FileConfig, overrides: &Overrides) -> Result<ShapingConfig, ConfigError> {
    let testing = file.testing.as_ref();
    let egress = match overrides
        .test_egress_bytes_per_sec
        .or(testing.and_then(|t| t.egress_bytes_per_sec))
    {
        None => None,
        Some(rate) => Some(NonZeroU64::new(rate).ok_or_else(|| {
            error(
                "testing.egress_bytes_per_sec",
                "must be at least 1 byte per second",
            )
        })?),
    };
    let latency = if overrides.test_latency.is_empty() {
        testing.and_then(|t| t.latency.clone()).unwrap_or_default()
    } else {
        overrides.test_latency.clone()
    };
    let flip_served_bytes = overrides.test_flip_served_bytes
        || testing.and_then(|t| t.flip_served_bytes).unwrap_or(false);
    let shaping = ShapingConfig::new(egress, &latency)
        .map_err(|e| error("testing.latency", e.to_string()))?;
    Ok(ShapingConfig {
        flip_served_bytes,
        ..shaping
    })
}

/// Validates `[p2p_limits]` over the defaults of [`ConnectionLimits`].
fn p2p_limits(file: &FileConfig) -> Result<ConnectionLimits, ConfigError> {
    let defaults = ConnectionLimits::default();
    let Some(given) = &file.p2p_limits else {
        return Ok(defaults);
    };
    let limits = ConnectionLimits {
        max_established: given.max_connections.unwrap_or(defaults.max_established),
        max_established_inbound: given
            .max_inbound_connections
            .unwrap_or(defaults.max_established_inbound),
        max_pending_inbound: given
            .max_pending_inbound
            .unwrap_or(defaults.max_pending_inbound),
        max_per_peer: given
            .max_connections_per_peer
            .unwrap_or(defaults.max_per_peer),
        max_unproven: given
            .max_unproven_connections
            .unwrap_or(defaults.max_unproven),
        max_unproven_per_ip: given
            .max_unproven_connections_per_ip
            .unwrap_or(defaults.max_unproven_per_ip),
    };
    for (key, value) in [
        ("max_connections", limits.max_established),
        ("max_inbound_connections", limits.max_established_inbound),
        ("max_pending_inbound", limits.max_pending_inbound),
        ("max_connections_per_peer", limits.max_per_peer),
        ("max_unproven_connections", limits.max_unproven),
        (
            "max_unproven_connections_per_ip",
            limits.max_unproven_per_ip,
        ),
    ] {
        if value == 0 {
            return Err(error(format!("p2p_limits.{key}"), "must be at least 1"));
        }
    }
    if limits.max_established_inbound > limits.max_established {
        return Err(error(
            "p2p_limits.max_inbound_connections",
            "must not exceed p2p_limits.max_connections",
        ));
    }
    if limits.max_unproven > limits.max_established_inbound {
        return Err(error(
            "p2p_limits.max_unproven_connections",
            "must not exceed p2p_limits.max_inbound_connections",
        ));
    }
    if limits.max_unproven_per_ip > limits.max_unproven {
        return Err(error(
            "p2p_limits.max_unproven_connections_per_ip",
            "must not exceed p2p_limits.max_unproven_connections",
        ));
    }
    Ok(limits)
}

/// The public registries used when nothing else is configured.
pub const DEFAULT_UPSTREAMS: [(&str, &str); 4] = [
    ("docker.io", "https://registry-1.docker.io"),
    ("ghcr.io", "https://ghcr.io"),
    ("quay.io", "https://quay.io"),
    ("registry.k8s.io", "https://registry.k8s.io"),
];

/// The default data directory: `/var/lib/shoal` for root, else `$XDG_DATA_HOME/shoal` or
/// `~/.local/share/shoal`.
pub fn default_data_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/shoal");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("shoal");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/shoal"),
        None => PathBuf::from("shoal-data"),
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        error(
            key,
            format!("{value:?} is not an address such as 127.0.0.1:5050"),
        )
    })
}

fn parse_upstream(
    key: &str,
    name: &str,
    url: &str,
    username: Option<String>,
    password: Option<String>,
) -> Result<UpstreamConfig, ConfigError> {
    if !shoal_proto::oci::is_valid_registry_host(name) {
        return Err(error(
            key,
            format!("{name:?} is not a registry host name (as containerd sends it in `ns`)"),
        ));
    }
    let parsed =
        reqwest::Url::parse(url).map_err(|e| error(key, format!("{url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(error(
            key,
            format!("{url:?} must be an http:// or https:// URL with a host"),
        ));
    }
    if !parsed.username().is_empty()
        || parsed.password().is_some()
        || parsed.query().is_some()
        || parsed.fragment().is_some()
    {
        return Err(error(key, "the URL must not carry credentials, a query or a fragment (use username/password keys)"));
    }
    if password.is_some() && username.is_none() {
        return Err(error(key, "a password needs a username"));
    }
    Ok(UpstreamConfig {
        name: name.to_owned(),
        url: parsed,
        username,
        password,
    })
}

impl Config {
    /// Reads the optional file, applies the overrides and validates the result.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let file_config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| error(path.display().to_string(), format!("cannot read: {e}")))?;
                if text.len() > 1 << 20 {
                    return Err(error(
                        path.display().to_string(),
                        "config file larger than 1 MiB",
                    ));
                }
                toml::from_str::<FileConfig>(&text).map_err(|e| {
                    let message = e.message().to_owned();
                    let key = message
                        .split('`')
                        .nth(1)
                        .filter(|_| message.starts_with("unknown field"))
                        .map(str::to_owned)
                        .unwrap_or_else(|| path.display().to_string());
                    error(key, e.to_string().trim().replace('\n', " "))
                })?
            }
            None => FileConfig::default(),
        };
        Self::from_parts(file_config, overrides)
    }

    /// Validates file values plus overrides.
    pub fn from_parts(mut file: FileConfig, overrides: &Overrides) -> Result<Self, ConfigError> {
        let p2p = p2p_config(&file, overrides)?;
        let mut warnings = Vec::new();
        if let Some(path) = overrides
            .network_key_file
            .as_ref()
            .or(file.network_key_file.as_ref())
        {
            warnings.extend(secret_file_warning("network_key_file", path));
        }
        let placement = crate::placement::PlacementConfig::from_file(file.placement.take())
            .map_err(|e| error(e.key, e.message))?;
        let lifecycle = crate::lifecycle::LifecycleSettings::from_file(file.lifecycle.take())
            .map_err(|e| error(e.key, e.message))?;
        let retention = crate::lifecycle::RetentionSettings::from_file(file.retention.take())
            .map_err(|e| error(e.key, e.message))?;
        let threat = crate::threat::ThreatConfig::from_file(file.threat.take())
            .map_err(|e| error(e.key, e.message))?;
        let rebuild = crate::rebuild::RebuildConfig::from_file(file.rebuild.take())
            .map_err(|e| error(e.key, e.message))?;
        let data_dir = overrides
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(default_data_dir);
        if data_dir.as_os_str().is_empty() {
            return Err(error("data_dir", "must not be empty"));
        }
        let listen = parse_addr(
            "listen",
            overrides
                .listen
                .as_deref()
                .or(file.listen.as_deref())
                .unwrap_or("127.0.0.1:5050"),
        )?;
        let admin_listen = parse_addr(
            "admin_listen",
            overrides
                .admin_listen
                .as_deref()
                .or(file.admin_listen.as_deref())
                .unwrap_or("127.0.0.1:5051"),
        )?;

        let mut upstreams = BTreeMap::new();
        if !overrides.upstreams.is_empty() {
            for flag in &overrides.upstreams {
                let (name, url) = flag
                    .split_once('=')
                    .ok_or_else(|| error("--upstream", format!("{flag:?} is not NAME=URL")))?;
                let upstream = parse_upstream("--upstream", name, url, None, None)?;
                upstreams.insert(name.to_owned(), upstream);
            }
        } else if let Some(configured) = file.upstreams {
            for (name, entry) in configured {
                let key = format!("upstreams.{name}");
                let password = match (entry.password, entry.password_file) {
                    (Some(_), Some(_)) => {
                        return Err(error(key, "set password or password_file, not both"))
                    }
                    (Some(password), None) => Some(password),
                    (None, Some(path)) => Some(
                        std::fs::read_to_string(&path)
                            .map_err(|e| {
                                error(
                                    format!("{key}.password_file"),
                                    format!("cannot read {}: {e}", path.display()),
                                )
                            })?
                            .trim_end_matches(['\r', '\n'])
                            .to_owned(),
                    ),
                    (None, None) => None,
                };
                upstreams.insert(
                    name.clone(),
                    parse_upstream(&key, &name, &entry.url, entry.username, password)?,
                );
            }
        } else {
            for (name, url) in DEFAULT_UPSTREAMS {
                upstreams.insert(
                    name.to_owned(),
                    parse_upstream("upstreams", name, url, None, None)?,
                );
            }
        }
        if upstreams.is_empty() {
            return Err(error("upstreams", "at least one upstream is needed"));
        }
        let default_upstream = match overrides.default_upstream.clone().or(file.default_upstream) {
            Some(name) if upstreams.contains_key(&name) => Some(name),
            Some(name) => {
                return Err(error(
                    "default_upstream",
                    format!("{name:?} is not a configured upstream"),
                ))
            }
            None if upstreams.contains_key("docker.io") => Some("docker.io".to_owned()),
            None if upstreams.len() == 1 => upstreams.keys().next().cloned(),
            None => None,
        };

        let max_disk_bytes = overrides
            .max_disk_bytes
            .or(file.max_disk_bytes)
            .unwrap_or(100 * (1 << 30));
        if max_disk_bytes < u64::from(MAX_SHARD_BYTES) {
            return Err(error(
                "max_disk_bytes",
                format!("must be at least {MAX_SHARD_BYTES} bytes"),
            ));
        }
        let disk_reserve_percent = file
            .disk_reserve_percent
            .unwrap_or(crate::store::room::DEFAULT_RESERVE_PERCENT);
        if disk_reserve_percent > 50 {
            return Err(error("disk_reserve_percent", "must be 0 to 50"));
        }
        let tag_ttl_secs = overrides.tag_ttl_secs.or(file.tag_ttl_secs).unwrap_or(300);
        if tag_ttl_secs > 30 * 24 * 3600 {
            return Err(error("tag_ttl_secs", "must be at most 30 days"));
        }
        let chunking = match file.chunking {
            Some(c) => validate_chunking(ChunkingParams {
                min: c.min,
                avg: c.avg,
                max: c.max,
            })?,
            None => DEFAULT_CHUNKING,
        };
        let timeouts = file.upstream_timeouts.unwrap_or_default();
        let defaults = UpstreamTimeouts::default();
        let seconds =
            |key: &str, value: Option<u64>, default: Duration| -> Result<Duration, ConfigError> {
                match value {
                    None => Ok(default),
                    Some(0) => Err(error(
                        format!("upstream_timeouts.{key}"),
                        "must be at least 1",
                    )),
                    Some(s) if s > 3600 => Err(error(
                        format!("upstream_timeouts.{key}"),
                        "must be at most 3600",
                    )),
                    Some(s) => Ok(Duration::from_secs(s)),
                }
            };
        let upstream_timeouts = UpstreamTimeouts {
            connect: seconds("connect_secs", timeouts.connect_secs, defaults.connect)?,
            read: seconds("read_secs", timeouts.read_secs, defaults.read)?,
            request: seconds("request_secs", timeouts.request_secs, defaults.request)?,
            attempts: match timeouts.attempts {
                None => defaults.attempts,
                Some(n @ 1..=10) => n,
                Some(_) => return Err(error("upstream_timeouts.attempts", "must be 1 to 10")),
            },
            backoff: defaults.backoff,
        };
        let admin_token = match overrides
            .admin_token_file
            .clone()
            .or(file.admin_token_file.clone())
        {
            None => None,
            Some(path) => {
                let token = std::fs::read_to_string(&path).map_err(|e| {
                    error(
                        "admin_token_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let token = token.trim();
                if token.len() < MIN_ADMIN_TOKEN_BYTES
                    || !token.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err(error(
                        "admin_token_file",
                        format!(
                            "{path} must hold at least {MIN_ADMIN_TOKEN_BYTES} printable characters: make one with `head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > {path}`",
                            path = path.display()
                        ),
                    ));
                }
                warnings.extend(secret_file_warning("admin_token_file", &path));
                Some(AdminToken(token.to_owned()))
            }
        };
        if !admin_listen.ip().is_loopback() && admin_token.is_none() {
            return Err(error(
                "admin_listen",
                format!(
                    "{admin_listen} is reachable beyond this host, but no admin token is configured: set admin_token_file (a file of at least {MIN_ADMIN_TOKEN_BYTES} random characters), or listen on 127.0.0.1"
                ),
            ));
        }
        Ok(Self {
            data_dir,
            listen,
            admin_listen,
            upstreams,
            default_upstream,
            max_disk_bytes,
            disk_reserve_percent,
            tag_ttl: Duration::from_secs(tag_ttl_secs),
            chunking,
            upstream_timeouts,
            p2p,
            admin_token,
            warnings,
            placement,
            lifecycle,
            retention,
            threat,
            rebuild,
        })
    }
}

/// Checks FastCDC parameters against the algorithm's limits and ours.
pub fn validate_chunking(params: ChunkingParams) -> Result<ChunkingParams, ConfigError> {
    let ChunkingParams { min, avg, max } = params;
    if !(64..=1 << 20).contains(&min) {
        return Err(error("chunking.min", "must be 64 B to 1 MiB"));
    }
    if !(256..=1 << 22).contains(&avg) || avg <= min {
        return Err(error(
            "chunking.avg",
            "must be 256 B to 4 MiB and above chunking.min",
        ));
    }
    if !(MIN_MAX_SHARD_BYTES..=MAX_SHARD_BYTES).contains(&max) || max <= avg {
        return Err(error(
            "chunking.max",
            format!(
                "must be {MIN_MAX_SHARD_BYTES} to {MAX_SHARD_BYTES} bytes and above chunking.avg"
            ),
        ));
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig =
            toml::from_str(toml_text).map_err(|e| error("file", e.to_string()))?;
        Config::from_parts(file, &Overrides::default())
    }

    #[test]
    fn embedded_defaults_are_valid() {
        let config = Config::from_parts(FileConfig::default(), &Overrides::default()).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:5050");
        assert!(config.admin_listen.ip().is_loopback());
        assert_eq!(config.upstreams.len(), 4);
        assert_eq!(config.default_upstream.as_deref(), Some("docker.io"));
        assert_eq!(config.chunking, DEFAULT_CHUNKING);
    }

    #[test]
    fn file_and_flags_combine() {
        let file: FileConfig = toml::from_str(
            r#"
            listen = "0.0.0.0:5000"
            tag_ttl_secs = 60
            [upstreams."reg.example"]
            url = "https://reg.example"
            username = "u"
            password = "p"
            "#,
        )
        .unwrap();
        let overrides = Overrides {
            listen: Some("127.0.0.1:6000".into()),
            ..Overrides::default()
        };
        let config = Config::from_parts(file, &overrides).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:6000");
        assert_eq!(config.tag_ttl, Duration::from_secs(60));
        assert_eq!(
            config.upstreams["reg.example"].username.as_deref(),
            Some("u")
        );
        assert_eq!(config.default_upstream.as_deref(), Some("reg.example"));
        let flags = Overrides {
            upstreams: vec!["origin=http://127.0.0.1:9".into()],
            ..Overrides::default()
        };
        let config = Config::from_parts(FileConfig::default(), &flags).unwrap();
        assert_eq!(config.upstreams.keys().collect::<Vec<_>>(), ["origin"]);
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(parse("listen = \"nope\"").unwrap_err().key, "listen");
        assert_eq!(
            parse("[chunking]\nmin = 1\navg = 2\nmax = 3")
                .unwrap_err()
                .key,
            "chunking.min"
        );
        assert_eq!(
            parse("[upstreams.x]\nurl = \"ftp://x\"").unwrap_err().key,
            "upstreams.x"
        );
        assert_eq!(
            parse("[upstreams.x]\nurl = \"https://u:p@x\"")
                .unwrap_err()
                .key,
            "upstreams.x"
        );
        assert_eq!(
            parse("default_upstream = \"nowhere\"").unwrap_err().key,
            "default_upstream"
        );
        assert_eq!(
            parse("disk_reserve_percent = 51").unwrap_err().key,
            "disk_reserve_percent"
        );
        assert_eq!(
            parse("max_disk_bytes = 5").unwrap_err().key,
            "max_disk_bytes"
        );
        assert!(parse("bogus = 1").is_err());
        let flags = Overrides {
            upstreams: vec!["no-equals".into()],
            ..Overrides::default()
        };
        assert_eq!(
            Config::from_parts(FileConfig::default(), &flags)
                .unwrap_err()
                .key,
            "--upstream"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_config_text_is_accepted_or_refused_without_panicking(text in "[ -~\n]{0,200}") {
            if let Ok(file) = toml::from_str::<FileConfig>(&text) {
                let _ = Config::from_parts(file, &Overrides::default());
            }
        }
    }

    #[test]
    fn p2p_needs_a_network_key_and_names_its_keys() {
        let config = parse("").unwrap();
        assert!(config.p2p.is_none());
        assert_eq!(
            parse("bootstrap = [\"/ip4/127.0.0.1/udp/1/quic-v1\"]")
                .unwrap_err()
                .key,
            "network_key_file"
        );
        assert_eq!(
            parse("p2p_listen = \"nope\"").unwrap_err().key,
            "p2p_listen"
        );
        assert_eq!(parse("region = \"EU West\"").unwrap_err().key, "region");
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.key");
        std::fs::write(&short, "abc").unwrap();
        let flags = Overrides {
            network_key_file: Some(short),
            ..Overrides::default()
        };
        assert_eq!(
            Config::from_parts(FileConfig::default(), &flags)
                .unwrap_err()
                .key,
            "network_key_file"
        );
        let good = dir.path().join("net.key");
        std::fs::write(&good, format!("{}\n", "ab".repeat(32))).unwrap();
        let flags = Overrides {
            network_key_file: Some(good),
            region: Some("eu-west".into()),
            bootstrap: vec![format!(
                "/ip4/127.0.0.1/udp/4001/quic-v1/p2p/{}",
                PeerId::random()
            )],
            ..Overrides::default()
        };
        let p2p = Config::from_parts(FileConfig::default(), &flags)
            .unwrap()
            .p2p
            .unwrap();
        let listen: Vec<String> = p2p.listen.iter().map(ToString::to_string).collect();
        assert_eq!(listen, DEFAULT_P2P_LISTEN);
        assert_eq!(p2p.region, "eu-west");
        assert_eq!(p2p.bootstrap.len(), 1);
    }

    #[test]
    fn p2p_listen_takes_one_address_as_before_or_a_list() {
        let dir = tempfile::tempdir().unwrap();
        let flags = overrides_with_key(dir.path());
        let listen = |text: &str| -> Vec<String> {
            let p2p = load(text, &flags).unwrap().p2p.unwrap();
            p2p.listen.iter().map(ToString::to_string).collect()
        };
        assert_eq!(
            listen("p2p_listen = \"/ip4/0.0.0.0/udp/4001/quic-v1\""),
            ["/ip4/0.0.0.0/udp/4001/quic-v1"]
        );
        assert_eq!(
            listen("p2p_listen = [\"/ip4/0.0.0.0/tcp/4001\", \"/ip6/::/udp/4001/quic-v1\"]"),
            ["/ip4/0.0.0.0/tcp/4001", "/ip6/::/udp/4001/quic-v1"]
        );
        let cli = Overrides {
            p2p_listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            ..overrides_with_key(dir.path())
        };
        let p2p = load("p2p_listen = [\"/ip4/0.0.0.0/udp/1/quic-v1\"]", &cli)
            .unwrap()
            .p2p
            .unwrap();
        assert_eq!(p2p.listen.len(), 1);
        assert_eq!(p2p.listen[0].to_string(), "/ip4/127.0.0.1/tcp/0");
    }

    #[test]
    fn p2p_listen_refuses_other_transports_duplicates_and_empty_or_long_lists() {
        let dir = tempfile::tempdir().unwrap();
        let flags = overrides_with_key(dir.path());
        for text in [
            "p2p_listen = []",
            "p2p_listen = [\"/ip4/0.0.0.0/tcp/1/ws\"]",
            "p2p_listen = \"/ip4/0.0.0.0/udp/4001\"",
            "p2p_listen = [\"/ip4/0.0.0.0/tcp/1\", \"/ip4/0.0.0.0/tcp/1\"]",
            "p2p_listen = [\"/ip4/0.0.0.0/tcp/1\", \"not an address\"]",
        ] {
            assert_eq!(load(text, &flags).unwrap_err().key, "p2p_listen", "{text}");
        }
        let many: Vec<String> = (0..=MAX_P2P_LISTEN)
            .map(|port| format!("\"/ip4/0.0.0.0/tcp/{}\"", port + 1))
            .collect();
        let text = format!("p2p_listen = [{}]", many.join(", "));
        assert_eq!(load(&text, &flags).unwrap_err().key, "p2p_listen");
    }

    /// Command-line overrides that name a valid network key file written in `dir`.
    fn overrides_with_key(dir: &Path) -> Overrides {
        let key = dir.join("net.key");
        std::fs::write(&key, "ab".repeat(32)).unwrap();
        Overrides {
            network_key_file: Some(key),
            ..Overrides::default()
        }
    }

    /// A config from TOML `text` and `overrides`.
    fn load(text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).unwrap();
        Config::from_parts(file, overrides)
    }

    #[test]
    fn an_allowlist_needs_a_key_and_valid_peer_ids_and_flags_replace_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let with_key = overrides_with_key(dir.path());
        let (one, two) = (PeerId::random(), PeerId::random());
        assert!(load("", &with_key)
            .unwrap()
            .p2p
            .unwrap()
            .allowed_peers
            .is_none());
        let text = format!("allowed_peers = [\"{one}\", \"{two}\"]");
        let allowed = load(&text, &with_key).unwrap().p2p.unwrap().allowed_peers;
        assert_eq!(allowed, Some(BTreeSet::from([one, two])));
        let flags = Overrides {
            allowed_peers: vec![two.to_string()],
            ..with_key.clone()
        };
        let allowed = load(&text, &flags).unwrap().p2p.unwrap().allowed_peers;
        assert_eq!(allowed, Some(BTreeSet::from([two])));
        for bad in ["allowed_peers = []", "allowed_peers = [\"not-a-peer\"]"] {
            assert_eq!(load(bad, &with_key).unwrap_err().key, "allowed_peers");
        }
        assert_eq!(
            load(&text, &Overrides::default()).unwrap_err().key,
            "allowed_peers"
        );
    }

    #[test]
    fn p2p_limits_default_and_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let with_key = overrides_with_key(dir.path());
        let limits = load("", &with_key).unwrap().p2p.unwrap().limits;
        assert_eq!(limits, ConnectionLimits::default());
        let text =
            "[p2p_limits]\nmax_unproven_connections = 20\nmax_unproven_connections_per_ip = 4";
        let limits = load(text, &with_key).unwrap().p2p.unwrap().limits;
        assert_eq!(limits.max_unproven, 20);
        assert_eq!(limits.max_unproven_per_ip, 4);
        assert_eq!(
            limits.max_established,
            ConnectionLimits::default().max_established
        );
        let key_of = |text: &str| load(text, &with_key).unwrap_err().key;
        assert_eq!(
            key_of("[p2p_limits]\nmax_connections = 0"),
            "p2p_limits.max_connections"
        );
        assert_eq!(
            key_of("[p2p_limits]\nmax_connections = 10"),
            "p2p_limits.max_inbound_connections"
        );
        assert_eq!(
            key_of("[p2p_limits]\nmax_unproven_connections = 2"),
            "p2p_limits.max_unproven_connections_per_ip"
        );
        assert_eq!(
            load("[p2p_limits]\nmax_connections = 5", &Overrides::default())
                .unwrap_err()
                .key,
            "p2p_limits"
        );
    }

    #[test]
    fn the_lying_member_fault_is_off_unless_the_file_or_a_flag_asks_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let with_key = overrides_with_key(dir.path());
        let off = load("", &with_key).unwrap().p2p.unwrap().shaping;
        assert!(!off.flip_served_bytes && !off.is_enabled());
        let file = load("[testing]\nflip_served_bytes = true", &with_key)
            .unwrap()
            .p2p
            .unwrap()
            .shaping;
        assert!(file.flip_served_bytes && file.is_enabled());
        let flag = Overrides {
            test_flip_served_bytes: true,
            ..with_key.clone()
        };
        assert!(
            load("", &flag)
                .unwrap()
                .p2p
                .unwrap()
                .shaping
                .flip_served_bytes
        );
    }

    #[test]
    fn testing_shaping_is_validated_and_flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let with_key = overrides_with_key(dir.path());
        let off = load("", &with_key).unwrap().p2p.unwrap();
        assert!(!off.shaping.is_enabled());
        let text = "[testing]\negress_bytes_per_sec = 1000\nlatency = [\"eu:us=40\"]";
        let shaping = load(text, &with_key).unwrap().p2p.unwrap().shaping;
        assert_eq!(shaping.egress_bytes_per_sec, NonZeroU64::new(1000));
        assert_eq!(
            shaping.latency_between("us", "eu"),
            Some(Duration::from_millis(40))
        );
        let flags = Overrides {
            test_egress_bytes_per_sec: Some(5),
            test_latency: vec!["ap:eu=7".into()],
            ..with_key.clone()
        };
        let shaping = load(text, &flags).unwrap().p2p.unwrap().shaping;
        assert_eq!(shaping.egress_bytes_per_sec, NonZeroU64::new(5));
        assert_eq!(shaping.latency_between("us", "eu"), None);
        assert_eq!(
            shaping.latency_between("eu", "ap"),
            Some(Duration::from_millis(7))
        );
        let key_of = |text: &str, overrides: &Overrides| load(text, overrides).unwrap_err().key;
        assert_eq!(
            key_of("[testing]\negress_bytes_per_sec = 0", &with_key),
            "testing.egress_bytes_per_sec"
        );
        assert_eq!(
            key_of("[testing]\nlatency = [\"eu:us=60001\"]", &with_key),
            "testing.latency"
        );
        assert_eq!(
            key_of("[testing]\nlatency = [\"eu-us=1\"]", &with_key),
            "testing.latency"
        );
        assert_eq!(
            key_of("[testing]\negress_bytes_per_sec = 1", &Overrides::default()),
            "testing"
        );
    }

    #[test]
    fn unknown_keys_in_a_file_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\nlisten_adress = \"x\"\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err();
        assert_eq!(err.key, "listen_adress");
    }

    #[test]
    fn a_bootstrap_address_without_a_peer_id_says_how_to_add_it() {
        let dir = tempfile::tempdir().unwrap();
        let flags = Overrides {
            bootstrap: vec!["/ip4/10.0.0.5/udp/4001/quic-v1".into()],
            ..overrides_with_key(dir.path())
        };
        let err = load("", &flags).unwrap_err();
        assert_eq!(err.key, "bootstrap");
        assert!(err.message.contains("/p2p/<peer id>"), "{err}");
    }

    #[test]
    fn a_short_network_key_says_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.key");
        std::fs::write(&short, "abc").unwrap();
        let flags = Overrides {
            network_key_file: Some(short),
            ..Overrides::default()
        };
        let err = load("", &flags).unwrap_err();
        assert_eq!(err.key, "network_key_file");
        assert!(err.message.contains("head -c 32 /dev/urandom"), "{err}");
    }

    #[test]
    fn a_secret_readable_by_others_is_warned_about_with_the_chmod() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let flags = overrides_with_key(dir.path());
        let key = flags.network_key_file.clone().unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let warnings = load("", &flags).unwrap().warnings;
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains(&format!("chmod 600 {}", key.display())));
        assert!(warnings[0].contains("0644"));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load("", &flags).unwrap().warnings.is_empty());
        assert!(secret_file_mode_problem("k", Path::new("/x"), 0o100400).is_none());
    }

    #[test]
    fn an_admin_listener_beyond_loopback_needs_a_token() {
        let err = parse("admin_listen = \"0.0.0.0:5051\"").unwrap_err();
        assert_eq!(err.key, "admin_listen");
        assert!(err.message.contains("admin_token_file"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "short\n").unwrap();
        let text = format!(
            "admin_listen = \"0.0.0.0:5051\"\nadmin_token_file = \"{}\"",
            token.display()
        );
        assert_eq!(parse(&text).unwrap_err().key, "admin_token_file");
        std::fs::write(&token, format!("{}\n", "f".repeat(32))).unwrap();
        let config = parse(&text).unwrap();
        let admin_token = config.admin_token.unwrap();
        assert!(admin_token.matches(&"f".repeat(32)));
        assert!(!admin_token.matches("f"));
        assert_eq!(format!("{admin_token:?}"), "AdminToken(..)");
        assert!(parse("admin_listen = \"127.0.0.1:5051\"")
            .unwrap()
            .admin_token
            .is_none());
    }
}
