//! How much the store may hold: the configured `max_disk_bytes`, or less when the file system
//! cannot hold that much.
//!
//! The effective budget is the smaller of `max_disk_bytes` and the store's own bytes plus the
//! file system's free space minus a reserve (a percentage of the file system's size, 5% unless
//! configured), so that a disk shared with other data is not filled to the last block. The
//! arithmetic is [`effective_budget`], a pure function; [`ShardStore::effective_budget`] feeds it
//! from `statvfs` of the data directory.

use std::sync::atomic::Ordering;

use shoal_proto::BlobDigest;

use super::ShardStore;

/// The reserve kept free on the data directory's file system unless configured otherwise.
pub const DEFAULT_RESERVE_PERCENT: u8 = 5;

/// What [`ShardStore::evict_to_fit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    /// The blobs evicted.
    pub evicted: Vec<BlobDigest>,
    /// Whether the bytes asked for now fit in the effective budget.
    pub fits: bool,
}

/// The data directory's file system, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    /// The file system's size.
    pub total: u64,
    /// Bytes an unprivileged process may still write.
    pub available: u64,
}

impl FsSpace {
    /// The file system holding `path`.
    pub fn of(path: &std::path::Path) -> std::io::Result<Self> {
        let stat = rustix::fs::statvfs(path)?;
        Ok(Self {
            total: stat.f_blocks.saturating_mul(stat.f_frsize),
            available: stat.f_bavail.saturating_mul(stat.f_frsize),
        })
    }
}

/// The most the store may hold: `max_disk_bytes`, or what it holds (`used`) plus what the file
/// system can still take beyond its reserve, whichever is smaller. Without file system figures
/// (`statvfs` failed) only the configured budget counts.
pub fn effective_budget(
    max_disk_bytes: u64,
    used: u64,
    space: Option<FsSpace>,
    reserve_percent: u8,
) -> u64 {
    let Some(space) = space else {
        return max_disk_bytes;
    };
    let reserve = space.total / 100 * u64::from(reserve_percent.min(100));
    let room = used.saturating_add(space.available.saturating_sub(reserve));
    max_disk_bytes.min(room)
}

impl ShardStore {
    /// Sets the percentage of the file system kept free (0 to 100; larger values count as 100).
    pub fn set_disk_reserve_percent(&self, percent: u8) {
        self.inner
            .disk_reserve_percent
            .store(percent.min(100), Ordering::Relaxed);
    }

    /// The data directory's file system, if `statvfs` answers.
    pub fn fs_space(&self) -> Option<FsSpace> {
        match FsSpace::of(self.layout().root()) {
            Ok(space) => Some(space),
            Err(error) => {
                tracing::debug!(%error, "statvfs of the data directory failed; only max_disk_bytes counts");
                None
            }
        }
    }

    /// The effective disk budget now (see the module docs). Warns once in the log when the
    /// configured `max_disk_bytes` exceeds what the file system can hold.
    pub fn effective_budget(&self) -> u64 {
        let reserve = self.inner.disk_reserve_percent.load(Ordering::Relaxed);
        let budget = effective_budget(
            self.inner.max_disk_bytes,
            self.stats().bytes,
            self.fs_space(),
            reserve,
        );
        if budget < self.inner.max_disk_bytes
            && !self.inner.warned_budget.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                max_disk_bytes = self.inner.max_disk_bytes,
                effective_budget = budget,
                reserve_percent = reserve,
                "max_disk_bytes exceeds what the data directory's file system can hold; the store keeps to the smaller budget"
            );
        }
        budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_smaller_of_the_configured_budget_and_the_file_system_counts() {
        let space = FsSpace {
            total: 100 * GIB,
            available: 20 * GIB,
        };
        // 20 GiB free, 5 GiB reserved, 10 GiB already held: 25 GiB in all.
        assert_eq!(
            effective_budget(100 * GIB, 10 * GIB, Some(space), 5),
            25 * GIB
        );
        assert_eq!(effective_budget(8 * GIB, 10 * GIB, Some(space), 5), 8 * GIB);
        assert_eq!(effective_budget(8 * GIB, 10 * GIB, None, 5), 8 * GIB);
    }

    #[test]
    fn a_disk_full_beyond_its_reserve_leaves_only_what_is_held() {
        let space = FsSpace {
            total: 100 * GIB,
            available: GIB,
        };
        assert_eq!(effective_budget(u64::MAX, 3 * GIB, Some(space), 5), 3 * GIB);
        assert_eq!(effective_budget(u64::MAX, 3 * GIB, Some(space), 0), 4 * GIB);
        assert_eq!(effective_budget(u64::MAX, 0, Some(space), 200), 0);
    }
}
