//! A small tmpfs mounted over a directory, for tests of a node whose disk fills up. Needs root;
//! mounting fails loudly otherwise (a test that needs a full disk never skips). Unmounted (lazily,
//! so a process still using it does not block the test's teardown) on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A mounted tmpfs.
#[derive(Debug)]
pub struct Tmpfs {
    path: PathBuf,
}

fn mount(args: &[&str], path: &Path) -> Result<()> {
    let output = Command::new("mount")
        .args(args)
        .arg(path)
        .output()
        .context("running mount")?;
    if !output.status.success() {
        bail!(
            "mount {args:?} {} failed (tests with a small disk must run as root): {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_bytes` on `path` (an existing directory).
    pub fn mount(path: &Path, size_bytes: u64) -> Result<Tmpfs> {
        mount(
            &["-t", "tmpfs", "-o", &format!("size={size_bytes}"), "tmpfs"],
            path,
        )?;
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    /// Grows (or shrinks) the mounted tmpfs to `size_bytes`, files kept: space "returns".
    pub fn resize(&self, size_bytes: u64) -> Result<()> {
        mount(&["-o", &format!("remount,size={size_bytes}")], &self.path)
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
