//! The operator CLI `shoal`, run as a child process with a timeout.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::node::binary;

/// Bound on one CLI run.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `shoal <args>`.
pub async fn shoal(args: &[&str]) -> Result<Output> {
    let mut command = tokio::process::Command::new(binary("shoal")?);
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(CLI_TIMEOUT, command.output()).await {
        Ok(output) => output.with_context(|| format!("running shoal {args:?}")),
        Err(_) => bail!("shoal {args:?} did not finish within {CLI_TIMEOUT:?}"),
    }
}

/// `shoal fsck --data-dir <dir>`: exit 0 when the store is clean, 1 when it
/// found problems.
pub async fn fsck(data_dir: &Path) -> Result<Output> {
    let dir = data_dir.to_string_lossy();
    shoal(&["fsck", "--data-dir", &dir]).await
}

/// `shoal inspect --data-dir <dir> <digest>`: exit 0 and the shard map when
/// the blob is stored, 1 when it is not.
pub async fn inspect(data_dir: &Path, digest: &str) -> Result<Output> {
    let dir = data_dir.to_string_lossy();
    shoal(&["inspect", "--data-dir", &dir, digest]).await
}
