//! The commit's fsyncs, issued from several threads at once.
//!
//! A commit makes durable every shard file its blob relies on that no committed blob holds yet,
//! then their directories, before the shard map names them. One after another, each fsync of a
//! new file on ext4 is a journal commit of its own; issued from [`SYNC_THREADS`] threads, the
//! file system batches them. Every fsync must succeed before the commit goes on: the first
//! failure is returned and the commit fails.
//!
//! Fsyncing each file earlier, as soon as the writer stage has written it (with or without
//! `sync_file_range` to start its writeback), was measured: it makes the files durable sooner,
//! but the writes of the next shards wait on it and the cold path got slower, so the store
//! fsyncs only at the commit, which follows the release of a cold blob's last byte.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::{io_context, ShardStore, StoreError};

/// Threads issuing a commit's fsyncs at most.
pub const SYNC_THREADS: usize = 4;

/// Fsyncs every file in `paths`, then every directory holding one, on up to [`SYNC_THREADS`]
/// threads at once; the first failure is returned after the fsyncs in flight end.
pub(super) fn sync_all(store: &ShardStore, paths: &[PathBuf]) -> Result<(), StoreError> {
    let dirs: BTreeSet<PathBuf> = paths
        .iter()
        .filter_map(|path| path.parent().map(PathBuf::from))
        .collect();
    let dirs: Vec<PathBuf> = dirs.into_iter().collect();
    in_parallel(paths, |path| {
        store
            .files()
            .sync_file(path)
            .map_err(io_context(format!("fsync {}", path.display())))
    })?;
    in_parallel(&dirs, |dir| store.fsync_dir(dir))
}

/// Runs `step` on every item, on this thread and up to [`SYNC_THREADS`] - 1 scoped helpers
/// (this thread alone for a single item, or if no helper can be started). Stops taking new items
/// after a failure; returns the first.
fn in_parallel<F>(items: &[PathBuf], step: F) -> Result<(), StoreError>
where
    F: Fn(&PathBuf) -> Result<(), StoreError> + Sync,
{
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let work = || -> Result<(), StoreError> {
        while !failed.load(Ordering::SeqCst) {
            let Some(item) = items.get(next.fetch_add(1, Ordering::SeqCst)) else {
                return Ok(());
            };
            if let Err(error) = step(item) {
                failed.store(true, Ordering::SeqCst);
                return Err(error);
            }
        }
        Ok(())
    };
    let helpers = SYNC_THREADS.min(items.len()).saturating_sub(1);
    std::thread::scope(|scope| {
        let started: Vec<_> = (0..helpers)
            .filter_map(|_| {
                std::thread::Builder::new()
                    .name("shoal-commit-sync".into())
                    .spawn_scoped(scope, work)
                    .ok()
            })
            .collect();
        let mut result = work();
        for helper in started {
            let helped = helper.join().unwrap_or_else(|_| {
                Err(StoreError::Io {
                    context: "an fsync thread panicked".into(),
                    source: std::io::Error::other("fsync thread panicked"),
                })
            });
            if result.is_ok() {
                result = helped;
            }
        }
        result
    })
}
