//! Making an ingest's new shard files durable while the blob is still arriving, and the
//! commit's own fsyncs.
//!
//! Each shard file the writer stage creates while its ingest's durability runs (from the start,
//! or from the release of a client's last byte on: `ingest::Durability`) is handed here once it
//! is in place, its writeback already started, and one of [`SYNC_THREADS`] threads fsyncs it and
//! then its directory. The commit waits for these threads and fsyncs itself only what they did
//! not confirm ([`sync_all`]: the writeback of every file started first, then the fsyncs from
//! [`SYNC_THREADS`] threads), so the disk writes a blob back while it is still being cut instead
//! of all at once at the end, and several fsyncs are in flight at a time (one after another, each
//! new file costs a journal commit of its own).
//!
//! Nothing here weakens the commit: a shard counts as durable only once its file and directory
//! fsyncs returned without error here, and the commit fsyncs every shard the blob relies on that
//! is not in that set before it writes the shard map. A failed fsync is reported to the commit,
//! which then fails; the threads skip the rest of their queue after a failure or when the stage
//! is stopped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use shoal_proto::ShardHash;

use super::{io_context, ShardStore, StoreError};

/// Threads fsyncing one ingest's shard files.
pub const SYNC_THREADS: usize = 4;

/// Shard files waiting for an fsync at most; the writer stage waits when the disk falls this far
/// behind.
pub const QUEUED_SYNCS: usize = 64;

/// What a sync thread says about a shard.
#[derive(Debug)]
enum SyncReport {
    /// The shard's file and its directory entry are durable.
    Synced(ShardHash),
    /// An fsync failed.
    Failed(StoreError),
}

/// The fsync threads of one ingest.
#[derive(Debug)]
pub(super) struct ShardSyncs {
    reports: Receiver<SyncReport>,
    /// Set by [`stop`](Self::stop) and by the first failure: the rest of the queue is skipped.
    skip: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Where the writer stage hands each shard file it created (see [`ShardSyncs::start`]).
pub(super) type SyncQueue = SyncSender<ShardHash>;

impl ShardSyncs {
    /// Starts the threads. They end once the returned queue is dropped and empty.
    pub(super) fn start(store: &ShardStore) -> Result<(Self, SyncQueue), StoreError> {
        let (queue, jobs) = mpsc::sync_channel::<ShardHash>(QUEUED_SYNCS);
        let jobs = Arc::new(Mutex::new(jobs));
        let (report, reports) = mpsc::channel();
        let skip = Arc::new(AtomicBool::new(false));
        let mut syncs = Self {
            reports,
            skip,
            threads: Vec::with_capacity(SYNC_THREADS),
        };
        for _ in 0..SYNC_THREADS {
            let (store, jobs, report, skip) = (
                store.clone(),
                jobs.clone(),
                report.clone(),
                syncs.skip.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name("shoal-shard-sync".into())
                .spawn(move || run(&store, &jobs, &report, &skip))
                .map_err(io_context("starting a shard sync thread"));
            match spawned {
                Ok(handle) => syncs.threads.push(handle),
                Err(error) => {
                    // The threads already started end once the queue is dropped.
                    drop(queue);
                    syncs.stop();
                    return Err(error);
                }
            }
        }
        Ok((syncs, queue))
    }

    /// Waits for the threads (the queue must be dropped first) and returns the shards they made
    /// durable, or the first failure.
    pub(super) fn wait(mut self) -> Result<BTreeSet<ShardHash>, StoreError> {
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
        let mut synced = BTreeSet::new();
        for report in self.reports.try_iter() {
            match report {
                SyncReport::Synced(hash) => {
                    synced.insert(hash);
                }
                SyncReport::Failed(error) => return Err(error),
            }
        }
        Ok(synced)
    }

    /// Skips what is queued and waits for the fsyncs in progress (the queue must be dropped
    /// first, or the threads wait for it).
    pub(super) fn stop(&mut self) {
        self.skip.store(true, Ordering::SeqCst);
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

/// One sync thread: fsyncs queued shard files and their directories until the queue closes.
/// Keeps taking from the queue after a failure or a stop (without fsyncing), so the writer stage
/// never waits on a queue nobody empties.
fn run(
    store: &ShardStore,
    jobs: &Mutex<Receiver<ShardHash>>,
    reports: &Sender<SyncReport>,
    skip: &AtomicBool,
) {
    loop {
        let next = match jobs.lock() {
            Ok(jobs) => jobs.recv(),
            Err(_) => return,
        };
        let Ok(hash) = next else {
            return;
        };
        if skip.load(Ordering::SeqCst) {
            continue;
        }
        let path = store.layout().shard_path(&hash);
        let report = match sync_shard(store, &path) {
            Ok(()) => SyncReport::Synced(hash),
            Err(error) => {
                skip.store(true, Ordering::SeqCst);
                SyncReport::Failed(error)
            }
        };
        if reports.send(report).is_err() {
            return;
        }
    }
}

/// Fsyncs a shard file, then the directory that names it.
fn sync_shard(store: &ShardStore, path: &Path) -> Result<(), StoreError> {
    store
        .files()
        .sync_file(path)
        .map_err(io_context(format!("fsync {}", path.display())))?;
    match path.parent() {
        Some(dir) => store.fsync_dir(dir),
        None => Ok(()),
    }
}

/// Starts the writeback of every file in `paths` (in order, on this thread: the kernel queues it
/// and returns), then fsyncs each file, then every directory holding one, on up to
/// [`SYNC_THREADS`] threads at once; the first failure is returned after the fsyncs in flight
/// end. Started first, the writeback of all the files runs as one sequential stream while the
/// fsyncs wait on it (`bench/fsync_strategies.py`: `late_sfr_par` against `par`).
pub(super) fn sync_all(store: &ShardStore, paths: &[PathBuf]) -> Result<(), StoreError> {
    let dirs: BTreeSet<PathBuf> = paths
        .iter()
        .filter_map(|path| path.parent().map(PathBuf::from))
        .collect();
    let dirs: Vec<PathBuf> = dirs.into_iter().collect();
    if paths.len() > 1 {
        for path in paths {
            store
                .files()
                .start_writeback(path)
                .map_err(io_context(format!(
                    "starting writeback of {}",
                    path.display()
                )))?;
        }
    }
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
