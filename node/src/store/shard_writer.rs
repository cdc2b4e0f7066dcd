//! The last stage of an ingest: writing new shard files, on a thread of its own so that cutting
//! and hashing the next shards (the caller's thread) and writing the last ones overlap.
//!
//! A shard is written as a temporary file renamed into place, without fsync: until its blob
//! commits, nothing references the file, and the commit fsyncs every file the ingest created
//! before the shard map makes them reachable (see `ingest`). Fsyncing early, while the blob
//! arrives, was measured and slowed the cold path: the writes of the next shards wait on it. A shard whose file already exists
//! (another blob, or an earlier shard of this one, has the same bytes) is not written again.
//!
//! Shards are written in the order they were cut, and reported in that order, so the blob's
//! written shards are always a prefix of its shards. The queue between the stages holds at most
//! [`QUEUED_SHARDS`] shards, so a slow disk slows the caller instead of growing memory. A blob
//! whose shards are all cut at its end (a blob under one maximum shard) starts no thread: its
//! shards are written on the caller's thread.
//!
//! After the first failed write the thread stops; the failure is reported once and every later
//! request fails with the same cause, and nothing more is written. Stopping the stage (an
//! abandoned ingest, or a simulated crash in tests) skips what is still queued and waits for the
//! write in progress, so no file appears after the ingest has cleaned up.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use shoal_proto::ShardHash;

use super::ingest::StoredShard;
use super::{io_context, ShardStore, StoreError};

/// Shards cut and waiting for the writer thread at most.
pub const QUEUED_SHARDS: usize = 4;

/// One shard to write.
#[derive(Debug)]
pub(super) struct ShardJob {
    /// Offset of the shard in the blob.
    pub offset: u64,
    /// The shard's bytes.
    pub data: Bytes,
    /// Its BLAKE3 (already computed from `data`).
    pub hash: ShardHash,
}

/// What the writer says about a shard.
#[derive(Debug)]
enum Report {
    /// The shard's file is in place; `created` if this ingest wrote it.
    Written { shard: StoredShard, created: bool },
    /// Writing failed; nothing after it was written.
    Failed(StoreError),
}

/// Shards the writer finished since the last call, in blob order.
#[derive(Debug, Default)]
pub(super) struct Finished {
    /// Every shard now readable from its file.
    pub stored: Vec<StoredShard>,
    /// The hashes of the files among them that this ingest created.
    pub created: Vec<ShardHash>,
}

#[derive(Debug)]
struct WriterThread {
    jobs: Option<SyncSender<ShardJob>>,
    reports: Receiver<Report>,
    abort: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

/// The writer stage of one ingest.
#[derive(Debug)]
pub(super) struct ShardWriter {
    store: ShardStore,
    thread: Option<WriterThread>,
    /// Shards written (here or by the thread) and not yet taken.
    inline: Finished,
    /// Set by the first failure: every later request fails with the same kind of error.
    failed: Option<io::ErrorKind>,
}

impl ShardWriter {
    pub(super) fn new(store: ShardStore) -> Self {
        Self {
            store,
            thread: None,
            inline: Finished::default(),
            failed: None,
        }
    }

    fn refuse(&self) -> Result<(), StoreError> {
        match self.failed {
            Some(kind) => Err(StoreError::Io {
                context: "an earlier shard of this blob could not be written".into(),
                source: io::Error::from(kind),
            }),
            None => Ok(()),
        }
    }

    fn fail(&mut self, error: StoreError) -> StoreError {
        self.failed = Some(match &error {
            StoreError::Io { source, .. } => source.kind(),
            StoreError::Index(sled::Error::Io(source)) => source.kind(),
            _ => io::ErrorKind::Other,
        });
        error
    }

    /// Queues a shard for writing. With `background`, the writer thread is started if it is not
    /// running; without, a shard is written right here unless the thread already runs (then it
    /// queues behind the others, so shards stay in order). Blocks while the queue is full.
    pub(super) fn submit(&mut self, job: ShardJob, background: bool) -> Result<(), StoreError> {
        self.refuse()?;
        if self.thread.is_none() && background {
            self.thread = Some(self.start()?);
        }
        let Some(thread) = &self.thread else {
            return match write_shard(&self.store, &job) {
                Ok(created) => {
                    if created {
                        self.inline.created.push(job.hash);
                    }
                    self.inline.stored.push(stored_shard(&self.store, &job));
                    Ok(())
                }
                Err(error) => Err(self.fail(error)),
            };
        };
        let Some(jobs) = &thread.jobs else {
            return Err(self.fail(StoreError::Closed));
        };
        if jobs.send(job).is_err() {
            // The thread stopped after a failure: its report says why.
            let error = match self.collect(true) {
                Err(error) => error,
                Ok(()) => StoreError::Io {
                    context: "the shard writer stopped".into(),
                    source: io::Error::other("shard writer thread ended"),
                },
            };
            return Err(self.fail(error));
        }
        Ok(())
    }

    fn start(&self) -> Result<WriterThread, StoreError> {
        let (jobs, queue) = mpsc::sync_channel(QUEUED_SHARDS);
        let (report, reports) = mpsc::channel();
        let abort = Arc::new(AtomicBool::new(false));
        let (store, stop) = (self.store.clone(), abort.clone());
        let handle = std::thread::Builder::new()
            .name("shoal-shard-writer".into())
            .spawn(move || run(&store, &queue, &report, &stop))
            .map_err(io_context("starting the shard writer thread"))?;
        Ok(WriterThread {
            jobs: Some(jobs),
            reports,
            abort,
            handle: Some(handle),
        })
    }

    /// Takes the shards written since the last call, without waiting. A failed write is
    /// returned as the error (once); shards written before it stay with the stage, so that
    /// [`stop`](Self::stop) still removes their files.
    pub(super) fn take(&mut self) -> Result<Finished, StoreError> {
        self.refuse()?;
        match self.collect(false) {
            Ok(()) => Ok(std::mem::take(&mut self.inline)),
            Err(error) => Err(self.fail(error)),
        }
    }

    /// Waits until every queued shard is written and takes them all.
    pub(super) fn drain(&mut self) -> Result<Finished, StoreError> {
        self.refuse()?;
        if let Some(thread) = &mut self.thread {
            // The thread ends once its queue is closed and empty.
            thread.jobs = None;
        }
        let collected = self.collect(true);
        if let Some(mut thread) = self.thread.take() {
            if let Some(handle) = thread.handle.take() {
                let _ = handle.join();
            }
        }
        match collected {
            Ok(()) => Ok(std::mem::take(&mut self.inline)),
            Err(error) => Err(self.fail(error)),
        }
    }

    /// Moves the thread's reports to `inline`; with `wait`, until the thread has ended.
    fn collect(&mut self, wait: bool) -> Result<(), StoreError> {
        let Self { thread, inline, .. } = self;
        let Some(thread) = thread else {
            return Ok(());
        };
        loop {
            let report = if wait {
                match thread.reports.recv() {
                    Ok(report) => report,
                    Err(_) => return Ok(()),
                }
            } else {
                match thread.reports.try_recv() {
                    Ok(report) => report,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => return Ok(()),
                }
            };
            match report {
                Report::Written { shard, created } => {
                    if created {
                        inline.created.push(shard.hash);
                    }
                    inline.stored.push(shard);
                }
                Report::Failed(error) => return Err(error),
            }
        }
    }

    /// Stops the stage: what is queued is skipped, the write in progress finishes. Returns the
    /// hashes of every file this ingest created that no earlier call returned.
    pub(super) fn stop(&mut self) -> Vec<ShardHash> {
        let mut created = std::mem::take(&mut self.inline.created);
        if let Some(mut thread) = self.thread.take() {
            thread.abort.store(true, Ordering::SeqCst);
            thread.jobs = None;
            if let Some(handle) = thread.handle.take() {
                let _ = handle.join();
            }
            while let Ok(report) = thread.reports.try_recv() {
                if let Report::Written {
                    shard,
                    created: true,
                } = report
                {
                    created.push(shard.hash);
                }
            }
        }
        created
    }
}

fn stored_shard(store: &ShardStore, job: &ShardJob) -> StoredShard {
    StoredShard {
        offset: job.offset,
        len: job.data.len() as u32,
        path: store.layout().shard_path(&job.hash),
        hash: job.hash,
    }
}

/// The writer thread: writes queued shards in order until the queue closes, a write fails, or
/// the stage is stopped.
fn run(
    store: &ShardStore,
    queue: &Receiver<ShardJob>,
    reports: &mpsc::Sender<Report>,
    abort: &AtomicBool,
) {
    while let Ok(job) = queue.recv() {
        if abort.load(Ordering::SeqCst) {
            return;
        }
        let report = match write_shard(store, &job) {
            Ok(created) => Report::Written {
                shard: stored_shard(store, &job),
                created,
            },
            Err(error) => {
                let _ = reports.send(Report::Failed(error));
                return;
            }
        };
        if reports.send(report).is_err() {
            return;
        }
    }
}

/// Writes one shard's file unless it exists; `true` if this call created it. A failed step
/// leaves no tmp file behind (a crash may; the next start empties tmp/).
fn write_shard(store: &ShardStore, job: &ShardJob) -> Result<bool, StoreError> {
    let path = store.layout().shard_path(&job.hash);
    if path.exists() {
        return Ok(false);
    }
    let files = store.files();
    let tmp = store.tmp_path("shard");
    let written = files
        .write_new(&tmp, &job.data)
        .map_err(io_context(format!("writing {}", tmp.display())))
        .and_then(|()| {
            files
                .rename(&tmp, &path)
                .map_err(io_context(format!("renaming to {}", path.display())))
        });
    if let Err(error) = written {
        store.discard(&tmp);
        return Err(error);
    }
    Ok(true)
}
