//! The narrow interface through which the store changes files, so that tests can make any step
//! fail or "crash" the process between two steps (see `faults`, test builds only).
//!
//! Every write of the store is one of six steps: write a new file (not yet durable), start its
//! writeback (a hint that makes a later fsync wait less), fsync a file, rename, fsync a
//! directory, remove a file. Reads and the start-up scan of the data
//! directory use `std::fs` directly: they change nothing, so there is nothing to inject.
//!
//! Failures are classified by [`WriteFailure`] so that the node can say why it is degraded
//! (a full disk, a read-only file system) and count failures by cause.

use std::fmt::Debug;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// The store's file-changing operations.
pub trait StoreFiles: Send + Sync + Debug {
    /// Creates (or truncates) `path` and writes `bytes` to it, without fsync.
    fn write_new(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Starts writing a file's dirty pages to the disk without waiting (nothing becomes durable
    /// by this alone: [`sync_file`](Self::sync_file) still must follow).
    fn start_writeback(&self, path: &Path) -> io::Result<()>;
    /// Makes a file's contents durable.
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes a directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFiles;

impl StoreFiles for RealFiles {
    fn write_new(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut file = File::create(path)?;
        file.write_all(bytes)
    }

    fn start_writeback(&self, path: &Path) -> io::Result<()> {
        start_writeback(&File::open(path)?)
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
}

/// `sync_file_range(SYNC_FILE_RANGE_WRITE)` over the whole file: the kernel starts writing its
/// dirty pages back and returns. Neither `rustix` nor `nix` offers this call, hence `libc`.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn start_writeback(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the duration of the call (borrowed from `file`), and
    // the call takes no pointers; offset 0 with length 0 means "to the end of the file".
    let result =
        unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Elsewhere there is no way to start writeback alone: the commit's fsync does it all.
#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File) -> io::Result<()> {
    Ok(())
}

/// Why a write to the store failed, as far as the node's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WriteFailure {
    /// No space left on the device, or a quota was exceeded.
    DiskFull,
    /// The file system is mounted read-only.
    ReadOnly,
    /// Any other I/O error (a failing disk, a permission changed).
    Io,
    /// The store is closed.
    Closed,
}

impl WriteFailure {
    /// Every cause, in a fixed order (for metrics).
    pub const ALL: [WriteFailure; 4] = [Self::DiskFull, Self::ReadOnly, Self::Io, Self::Closed];

    /// The cause of an I/O error.
    pub fn of(error: &io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Self::DiskFull,
            io::ErrorKind::ReadOnlyFilesystem => Self::ReadOnly,
            _ => Self::Io,
        }
    }

    /// A short label for metrics and `/healthz`.
    pub fn label(self) -> &'static str {
        match self {
            Self::DiskFull => "disk_full",
            Self::ReadOnly => "store_read_only",
            Self::Io => "store_io_error",
            Self::Closed => "store_closed",
        }
    }
}
