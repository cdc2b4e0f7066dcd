//! The last stage of an ingest: writing new shard files, on a thread of its own so that cutting
//! and hashing the next shards (the caller's thread) and writing the last ones overlap.
//!
//! A shard is written as a temporary file renamed into place. When the ingest's durability runs
//! as its files are written ([`Durability::AsWritten`], or [`Durability::AfterRelease`] once
//! switched), the writer starts the file's writeback before the rename (see
//! `files::StoreFiles::start_writeback`) and hands it to `shard_sync`, whose threads fsync it
//! (and its directory) while the next shards are cut and written. Otherwise nothing is done for
//! the file's durability until the switch ([`ShardWriter::make_durable_from_now`]), which starts
//! the writeback of every file created so far and hands them to the same threads: the writes of
//! the next shards, on a client's path to its last byte, never wait on writeback or on journal
//! commits. Until its blob commits, nothing references a shard file either way, and the commit
//! waits for those fsyncs and makes every other file the blob relies on durable before the shard
//! map makes them reachable (see `ingest`). A shard whose file already exists (another blob, or
//! an earlier shard of this one, has the same bytes) is not written again.
//!
//! Shards are written in the order they were cut, and reported in that order, so the blob's
//! written shards are always a prefix of its shards. The queue between the stages holds at most
//! [`QUEUED_SHARDS`] shards, so a slow disk slows the caller instead of growing memory. A blob
//! whose shards are all cut at its end (a blob under one maximum shard) starts no thread: its
//! shards are written on the caller's thread, and the commit makes them durable.
//!
//! After the first failed write the thread stops; the failure is reported once and every later
//! request fails with the same cause, and nothing more is written. Stopping the stage (an
//! abandoned ingest, or a simulated crash in tests) skips what is still queued and waits for the
//! write in progress, so no file appears after the ingest has cleaned up.

use std::collections::BTreeSet;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use shoal_proto::ShardHash;

use super::ingest::{Durability, StoredShard};
use super::shard_sync::{ShardSyncs, SyncQueue};
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
    /// The shard's file is in place; `created` if this ingest wrote it, `queued` if the writer
    /// started its writeback and handed it to the fsync threads.
    Written {
        shard: StoredShard,
        created: bool,
        queued: bool,
    },
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
    /// Whether each new file's durability starts as it is written (read by the writer thread
    /// before each shard): from the start with [`Durability::AsWritten`], from the switch with
    /// [`Durability::AfterRelease`].
    as_written: Arc<AtomicBool>,
    /// The fsync threads of the files the writer thread created (they outlive the thread until
    /// the commit asks for them, or the stage stops).
    syncs: Option<ShardSyncs>,
    /// This stage's own way to the fsync threads, for the files created before the switch. The
    /// threads end only once it is dropped too.
    sync_queue: Option<SyncQueue>,
    /// Files this ingest created that were not handed to the fsync threads (written before the
    /// switch, or on the caller's thread); the switch hands over those the threads can take,
    /// the commit fsyncs the rest.
    unqueued: Vec<ShardHash>,
    /// Shards whose files the fsync threads made durable.
    synced: BTreeSet<ShardHash>,
    /// The switch at the release happened: durability runs as written from now to the end.
    released: bool,
}

impl ShardWriter {
    pub(super) fn new(store: ShardStore, durability: Durability) -> Self {
        Self {
            store,
            thread: None,
            inline: Finished::default(),
            failed: None,
            as_written: Arc::new(AtomicBool::new(durability == Durability::AsWritten)),
            syncs: None,
            sync_queue: None,
            unqueued: Vec::new(),
            synced: BTreeSet::new(),
            released: false,
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
            // Shards written after a drain: the sync threads of the first run are done first.
            self.sync_queue = None;
            if let Some(earlier) = self.syncs.take() {
                match earlier.wait() {
                    Ok(synced) => self.synced.extend(synced),
                    Err(error) => return Err(self.fail(error)),
                }
            }
            let (thread, syncs, sync_queue) = self.start()?;
            self.thread = Some(thread);
            self.syncs = Some(syncs);
            self.sync_queue = Some(sync_queue);
        }
        let Some(thread) = &self.thread else {
            // Files written here are made durable by the commit.
            return match write_shard(&self.store, &job, false) {
                Ok(created) => {
                    if created {
                        self.inline.created.push(job.hash);
                        self.unqueued.push(job.hash);
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

    fn start(&self) -> Result<(WriterThread, ShardSyncs, SyncQueue), StoreError> {
        let (mut syncs, sync_queue) = ShardSyncs::start(&self.store)?;
        let (jobs, queue) = mpsc::sync_channel(QUEUED_SHARDS);
        let (report, reports) = mpsc::channel();
        let abort = Arc::new(AtomicBool::new(false));
        let (store, stop, as_written) =
            (self.store.clone(), abort.clone(), self.as_written.clone());
        let own_queue = sync_queue.clone();
        let spawned = std::thread::Builder::new()
            .name("shoal-shard-writer".into())
            .spawn(move || run(&store, &queue, &report, &stop, &as_written, &sync_queue))
            .map_err(io_context("starting the shard writer thread"));
        let handle = match spawned {
            Ok(handle) => handle,
            Err(error) => {
                // The closure, and the sync queue with it, is dropped: the sync threads end.
                drop(own_queue);
                syncs.stop();
                return Err(error);
            }
        };
        let thread = WriterThread {
            jobs: Some(jobs),
            reports,
            abort,
            handle: Some(handle),
        };
        Ok((thread, syncs, own_queue))
    }

    /// The switch of a [`Durability::AfterRelease`] ingest, once its client's last byte is
    /// released: the writeback of every file created so far starts, they go to the fsync
    /// threads, and the shards written from now on are made durable as they are written, so the
    /// commit that follows waits on less. Nothing happens for an ingest already switched (or
    /// [`Durability::AsWritten`]). Files the fsync threads do not confirm are fsynced by the
    /// commit, as before.
    pub(super) fn make_durable_from_now(&mut self) -> Result<(), StoreError> {
        self.refuse()?;
        self.released = true;
        if self.as_written.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        match self.collect(false).and_then(|()| self.hand_over_unqueued()) {
            Ok(()) => Ok(()),
            Err(error) => Err(self.fail(error)),
        }
    }

    /// A client now waits for the bytes: the files written from the next shard on are left for
    /// the switch at the release, as with [`Durability::AfterRelease`]; those already handed to
    /// the fsync threads stay with them. Nothing changes after the release.
    pub(super) fn defer_until_release(&mut self) {
        if !self.released {
            self.as_written.store(false, Ordering::SeqCst);
        }
    }

    /// Once switched, starts the writeback of the files not yet handed to the fsync threads (all
    /// of them first, in blob order, so the disk writes them back in that order) and hands them
    /// over. Without fsync threads (a blob written on the caller's thread) the commit fsyncs them.
    fn hand_over_unqueued(&mut self) -> Result<(), StoreError> {
        if !self.as_written.load(Ordering::SeqCst) || self.unqueued.is_empty() {
            return Ok(());
        }
        let Some(queue) = &self.sync_queue else {
            return Ok(());
        };
        let unqueued = std::mem::take(&mut self.unqueued);
        let files = self.store.files();
        let layout = self.store.layout();
        for hash in &unqueued {
            let path = layout.shard_path(hash);
            files.start_writeback(&path).map_err(io_context(format!(
                "starting writeback of {}",
                path.display()
            )))?;
        }
        for hash in unqueued {
            // Waits while the fsyncs are far behind. Should the sync threads be gone, the commit
            // fsyncs the files itself.
            if queue.send(hash).is_err() {
                break;
            }
        }
        Ok(())
    }

    /// Takes the shards written since the last call, without waiting. A failed write is
    /// returned as the error (once); shards written before it stay with the stage, so that
    /// [`stop`](Self::stop) still removes their files.
    pub(super) fn take(&mut self) -> Result<Finished, StoreError> {
        self.refuse()?;
        match self.collect(false).and_then(|()| self.hand_over_unqueued()) {
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
        match collected.and_then(|()| self.hand_over_unqueued()) {
            Ok(()) => Ok(std::mem::take(&mut self.inline)),
            Err(error) => Err(self.fail(error)),
        }
    }

    /// The shards whose files the fsync threads made durable, once every shard is written
    /// ([`drain`](Self::drain)); waits for the fsyncs in flight. A failed fsync is returned as
    /// the error. Before the drain, only what earlier calls collected.
    pub(super) fn synced(&mut self) -> Result<&BTreeSet<ShardHash>, StoreError> {
        self.refuse()?;
        if self.thread.is_none() {
            // The fsync threads end once every way to them is closed.
            self.sync_queue = None;
            if let Some(syncs) = self.syncs.take() {
                match syncs.wait() {
                    Ok(synced) => self.synced.extend(synced),
                    Err(error) => return Err(self.fail(error)),
                }
            }
        }
        Ok(&self.synced)
    }

    /// Moves the thread's reports to `inline`; with `wait`, until the thread has ended.
    fn collect(&mut self, wait: bool) -> Result<(), StoreError> {
        let Self {
            thread,
            inline,
            unqueued,
            ..
        } = self;
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
                Report::Written {
                    shard,
                    created,
                    queued,
                } => {
                    if created {
                        inline.created.push(shard.hash);
                        if !queued {
                            unqueued.push(shard.hash);
                        }
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
        self.sync_queue = None;
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
                    ..
                } = report
                {
                    created.push(shard.hash);
                }
            }
        }
        // The writer thread has ended, and its sync queue with it.
        if let Some(mut syncs) = self.syncs.take() {
            syncs.stop();
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
/// the stage is stopped. While `as_written` holds, each file it creates has its writeback
/// started and goes to the fsync threads once it is reported.
fn run(
    store: &ShardStore,
    queue: &Receiver<ShardJob>,
    reports: &mpsc::Sender<Report>,
    abort: &AtomicBool,
    as_written: &AtomicBool,
    syncs: &SyncQueue,
) {
    while let Ok(job) = queue.recv() {
        if abort.load(Ordering::SeqCst) {
            return;
        }
        let durable_now = as_written.load(Ordering::SeqCst);
        let created = match write_shard(store, &job, durable_now) {
            Ok(created) => created,
            Err(error) => {
                let _ = reports.send(Report::Failed(error));
                return;
            }
        };
        let queued = created && durable_now;
        let report = Report::Written {
            shard: stored_shard(store, &job),
            created,
            queued,
        };
        if reports.send(report).is_err() {
            return;
        }
        if queued {
            // Waits while the fsyncs are far behind. Should the sync threads be gone, the commit
            // fsyncs the file itself.
            let _ = syncs.send(job.hash);
        }
    }
}

/// Writes one shard's file unless it exists; `true` if this call created it. With
/// `start_writeback`, the file's writeback starts before the rename, so the fsync threads' fsync
/// of it waits for little. A failed step leaves no tmp file behind (a crash may; the next start
/// empties tmp/).
fn write_shard(
    store: &ShardStore,
    job: &ShardJob,
    start_writeback: bool,
) -> Result<bool, StoreError> {
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
            if !start_writeback {
                return Ok(());
            }
            files.start_writeback(&tmp).map_err(io_context(format!(
                "starting writeback of {}",
                tmp.display()
            )))
        })
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
