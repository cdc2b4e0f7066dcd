//! containerd's per-registry host configuration (`<dir>/<registry>/hosts.toml`).
//!
//! The `server` is set to an unreachable address (`http://127.0.0.1:1`), and
//! one mirror host is listed with `pull` and `resolve`, so a pull can only
//! succeed through that mirror. containerd adds `?ns=<registry>` to every
//! request it sends to the mirror.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tempfile::TempDir;

/// The unreachable server used as the registry's own address.
pub const UNREACHABLE_SERVER: &str = "http://127.0.0.1:1";

/// Writes `<dir>/<registry_host>/hosts.toml` sending every pull of
/// `registry_host` to the mirror at `mirror` (plain HTTP).
pub fn write_hosts_toml(dir: &Path, registry_host: &str, mirror: SocketAddr) -> Result<PathBuf> {
    let host_dir = dir.join(registry_host);
    std::fs::create_dir_all(&host_dir)
        .with_context(|| format!("creating {}", host_dir.display()))?;
    let path = host_dir.join("hosts.toml");
    let text = format!(
        "server = \"{UNREACHABLE_SERVER}\"\n\n\
         [host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A temporary hosts directory for one registry host and one mirror.
pub struct HostsDir {
    dir: TempDir,
}

impl HostsDir {
    /// Creates a hosts directory sending pulls of `registry_host` to `mirror`.
    pub fn new(registry_host: &str, mirror: SocketAddr) -> Result<HostsDir> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-hosts-")
            .tempdir()
            .context("creating hosts temp dir")?;
        write_hosts_toml(dir.path(), registry_host, mirror)?;
        Ok(HostsDir { dir })
    }

    /// A hosts directory for [`crate::REGISTRY_HOST`].
    pub fn for_test_registry(mirror: SocketAddr) -> Result<HostsDir> {
        HostsDir::new(crate::REGISTRY_HOST, mirror)
    }

    /// The directory to pass as `--hosts-dir`.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
