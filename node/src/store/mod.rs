//! The shard store: blobs kept as content-defined shards on local disk, with a sled index.
//!
//! Owns everything under the data directory (see [`layout`]). Other subsystems reach the disk only
//! through [`ShardStore`]; it knows nothing of HTTP, upstreams or peers.
//!
//! * Ingest ([`Ingest`]): bytes are cut by [`chunker`] and hashed in one pass; each shard is
//!   written once (tmp file, rename) however many blobs share it. At the end the blob's sha256 is
//!   checked; the new shards are fsynced as they are written or from the release of the last
//!   byte on (the ingest's [`Durability`]), all of them before the shard map is written (tmp,
//!   fsync, rename: the commit point) and the index updated. A blob that fails its digest leaves
//!   nothing behind.
//! * Serve ([`ShardStore::read_shard`]): every shard is BLAKE3-verified as it is read; a shard that
//!   fails is deleted and reported, never returned.
//! * Eviction ([`ShardStore::evict_to_budget`]): whole blobs, in the order an [`EvictionPolicy`]
//!   gives, never one that is being served, never a shard an ingest in flight relies on.
//! * Recovery ([`recovery`]): after an unclean stop the index is rebuilt from the shard maps and
//!   shard files, which are the source of truth; `fsck` verifies every shard.
//!
//! **Invariant:** a blob is in the index only if its shard map file exists and every shard it lists
//! was fsynced before the map was renamed into place.

pub mod chunker;
pub mod eviction;

#[cfg(test)]
pub(crate) mod faults;
pub mod files;
mod ingest;
pub mod layout;
pub mod recovery;
pub mod room;
mod shard_sync;
mod shard_writer;
pub mod spool;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use shoal_proto::records::{self, AccessRecord, ManifestRecord, ShardRecord, TagRecord};
use shoal_proto::{BlobDigest, ChunkingParams, ShardEntry, ShardHash, ShardMap};

pub use eviction::{EvictionCandidate, EvictionPolicy, PolicyEviction};
pub use files::{RealFiles, StoreFiles, WriteFailure};
pub use ingest::{Durability, Ingest, IngestError, StoredShard};
pub use layout::Layout;
pub use spool::Spool;

/// Errors of store operations other than ingest.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The cause.
        source: io::Error,
    },
    /// The index database failed.
    #[error("index database: {0}")]
    Index(#[from] sled::Error),
    /// The store is shutting down and takes no more commits.
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    /// Why a write failed, for the node's health and metrics; `None` for errors of the index
    /// database, whose causes are not classified.
    pub fn write_failure(&self) -> Option<WriteFailure> {
        match self {
            Self::Io { source, .. } => Some(WriteFailure::of(source)),
            Self::Index(sled::Error::Io(source)) => Some(WriteFailure::of(source)),
            Self::Index(_) => None,
            Self::Closed => Some(WriteFailure::Closed),
        }
    }
}

pub(crate) fn io_context(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// Why a shard could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ShardReadError {
    /// The file's bytes do not hash to the shard's name; the file was deleted.
    #[error("shard {0} failed BLAKE3 verification and was dropped")]
    Corrupt(ShardHash),
    /// The file is gone.
    #[error("shard {0} is missing")]
    Missing(ShardHash),
    /// Reading failed.
    #[error("reading shard {hash}: {source}")]
    Io {
        /// The shard.
        hash: ShardHash,
        /// The cause.
        source: io::Error,
    },
}

/// Settings of the store, validated by `config`.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The data directory.
    pub data_dir: PathBuf,
    /// FastCDC parameters for new blobs.
    pub chunking: ChunkingParams,
    /// Disk budget for shard bytes; above it whole blobs are evicted.
    pub max_disk_bytes: u64,
}

/// What the store holds, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Committed blobs.
    pub blobs: u64,
    /// Bytes of distinct shards referenced by committed blobs.
    pub bytes: u64,
}

/// In-memory state shared by ingests, readers and eviction.
#[derive(Debug, Default)]
struct LiveState {
    /// Shards an ingest in flight relies on; never deleted while pinned.
    pinned: HashMap<ShardHash, usize>,
    /// Blobs with a response in progress; never evicted while listed.
    readers: HashMap<BlobDigest, usize>,
    /// Reads not yet written to the index: (last read, reads since the last flush). Kept in
    /// memory so a cache hit costs no index write; flushed before eviction, at close, and when
    /// many have gathered. A crash loses only recency, never data.
    pending_access: HashMap<BlobDigest, (u64, u64)>,
    stats: StoreStats,
    /// Set by [`ShardStore::close`]: no commit may start after it.
    closed: bool,
    /// The cause of the last failed write, until a commit succeeds again (or, for a full disk,
    /// until a room check finds space again).
    write_failure: Option<WriteFailure>,
    /// With a full disk recorded: the bytes of the blob that did not fit (a lower bound when it
    /// failed mid-write). The disk counts as full until that much fits in the budget again.
    disk_full_needs: u64,
    /// Commits between their first fsync and their index update. A close that finds any
    /// leaves the store marked unclean, so the next start rebuilds the index from the maps.
    committing: usize,
}

/// A commit in progress ([`ShardStore::begin_commit`]).
struct CommitGuard<'a> {
    store: &'a ShardStore,
}

impl Drop for CommitGuard<'_> {
    fn drop(&mut self) {
        self.store.live().committing -= 1;
    }
}

struct StoreInner {
    layout: Layout,
    db: sled::Db,
    blobs: sled::Tree,
    shards: sled::Tree,
    access: sled::Tree,
    manifests: sled::Tree,
    tags: sled::Tree,
    meta: sled::Tree,
    chunking: ChunkingParams,
    max_disk_bytes: u64,
    /// Percent of the file system kept free: the effective budget never counts it as room.
    disk_reserve_percent: AtomicU8,
    /// Set once the log said that the configured budget exceeds what the file system can hold.
    warned_budget: AtomicBool,
    /// Set when a file that should have been removed could not be: the store is then never
    /// marked clean, so the next start's rebuild removes what is left over.
    needs_rebuild: AtomicBool,
    files: Arc<dyn StoreFiles>,
    live: Mutex<LiveState>,
    eviction: Mutex<Box<dyn EvictionPolicy>>,
    tmp_counter: AtomicU64,
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct ShardStore {
    inner: Arc<StoreInner>,
}

impl std::fmt::Debug for ShardStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardStore")
            .field("root", &self.inner.layout.root())
            .finish()
    }
}

const CLEAN_KEY: &[u8] = b"clean-shutdown";
/// Reads gathered in memory before they are written to the index.
const MAX_PENDING_ACCESS: usize = 4096;
const CREATED_KEY: &[u8] = b"created-at";

/// Milliseconds since the Unix epoch (for access records only; policy decisions take time as an
/// argument).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl ShardStore {
    /// Opens (creating if needed) the store. After an unclean stop the index is rebuilt from the
    /// shard maps and shard files first; the temporary directory is always emptied.
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        Self::open_with_policy(config, Box::new(PolicyEviction::lru()))
    }

    /// Like [`open`](Self::open), with an eviction policy of the caller's choice.
    pub fn open_with_policy(
        config: &StoreConfig,
        eviction: Box<dyn EvictionPolicy>,
    ) -> Result<Self, StoreError> {
        Self::open_with_files(config, eviction, Arc::new(RealFiles))
    }

    /// Like [`open_with_policy`](Self::open_with_policy), changing files only through `files`
    /// (tests pass one that fails or "crashes" at chosen steps).
    pub fn open_with_files(
        config: &StoreConfig,
        eviction: Box<dyn EvictionPolicy>,
        files: Arc<dyn StoreFiles>,
    ) -> Result<Self, StoreError> {
        let layout = Layout::new(&config.data_dir);
        layout.create_dirs().map_err(io_context(format!(
            "creating data directory {}",
            config.data_dir.display()
        )))?;
        let tmp = layout.tmp_dir();
        for entry in fs::read_dir(&tmp).map_err(io_context(format!("listing {}", tmp.display())))? {
            let path = entry.map_err(io_context("listing tmp"))?.path();
            fs::remove_file(&path).map_err(io_context(format!("removing {}", path.display())))?;
        }
        let db = open_index(&layout.index_dir())?;
        let store = Self {
            inner: Arc::new(StoreInner {
                blobs: db.open_tree("blobs")?,
                shards: db.open_tree("shards")?,
                access: db.open_tree("access")?,
                manifests: db.open_tree("manifests")?,
                tags: db.open_tree("tags")?,
                meta: db.open_tree("meta")?,
                db,
                layout,
                chunking: config.chunking,
                max_disk_bytes: config.max_disk_bytes,
                disk_reserve_percent: AtomicU8::new(room::DEFAULT_RESERVE_PERCENT),
                warned_budget: AtomicBool::new(false),
                needs_rebuild: AtomicBool::new(false),
                files,
                live: Mutex::new(LiveState::default()),
                eviction: Mutex::new(eviction),
                tmp_counter: AtomicU64::new(0),
            }),
        };
        let new_store = store.inner.meta.get(CREATED_KEY)?.is_none();
        if new_store {
            store
                .inner
                .meta
                .insert(CREATED_KEY, &now_ms().to_le_bytes())?;
            tracing::info!(data_dir = %config.data_dir.display(), "new store created");
        }
        if store.inner.meta.get(CLEAN_KEY)?.is_none() {
            let report = recovery::rebuild_index(&store)?;
            if !new_store {
                tracing::info!(
                    ?report,
                    "index rebuilt from shard maps after an unclean stop"
                );
            }
        } else {
            let stats = store.count_stats()?;
            store.live().stats = stats;
        }
        store.inner.meta.remove(CLEAN_KEY)?;
        store.inner.db.flush()?;
        Ok(store)
    }

    /// Closes the store: no commit starts after this. The store is marked clean, so the next
    /// start skips recovery, only if no commit was half done; otherwise the next start rebuilds
    /// the index from the shard maps, which are the source of truth.
    pub fn close(&self) -> Result<(), StoreError> {
        let committing = {
            let mut live = self.live();
            live.closed = true;
            live.committing
        };
        self.flush_access()?;
        self.inner.db.flush()?;
        let leftovers = self.inner.needs_rebuild.load(Ordering::Relaxed);
        if leftovers {
            tracing::warn!("files the store could not remove are left; the next start rebuilds the index and removes them");
        }
        if committing == 0 && !leftovers {
            self.inner.meta.insert(CLEAN_KEY, &[1])?;
            self.inner.db.flush()?;
        } else {
            tracing::warn!(
                committing,
                "store closed during a commit; the next start rebuilds the index"
            );
        }
        Ok(())
    }

    /// Writes `bytes` to `path` through a temporary file: write, fsync, rename, fsync the
    /// directory. Readers see either the old file or the whole new one. On failure the temporary
    /// file is removed, and so is `path` if the rename created it but its directory could not be
    /// made durable: nobody may rely on a file whose name may vanish in a crash. A `path` that
    /// existed before stays (its old name was durable, and a crash leaves the old or the new
    /// version, never none).
    pub(crate) fn write_durably(
        &self,
        label: &str,
        path: &Path,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let files = &self.inner.files;
        let tmp = self.tmp_path(label);
        // A file already there (a committed blob's map, ingested again) was durable before this
        // write: if the new name cannot be made durable, the file must stay, since either
        // version is valid and a committed blob must not lose its map.
        let replacing = path.exists();
        let written = files
            .write_new(&tmp, bytes)
            .map_err(io_context(format!("writing {}", tmp.display())))
            .and_then(|()| {
                files
                    .sync_file(&tmp)
                    .map_err(io_context(format!("fsync {}", tmp.display())))
            })
            .and_then(|()| {
                files
                    .rename(&tmp, path)
                    .map_err(io_context(format!("renaming to {}", path.display())))
            });
        if let Err(error) = written {
            self.discard(&tmp);
            return Err(error);
        }
        if let Some(dir) = path.parent() {
            if let Err(error) = self.fsync_dir(dir) {
                if !replacing {
                    self.discard(path);
                }
                return Err(error);
            }
        }
        Ok(())
    }

    /// Makes a directory's entries (creations, renames) durable.
    pub(crate) fn fsync_dir(&self, dir: &Path) -> Result<(), StoreError> {
        self.inner
            .files
            .sync_dir(dir)
            .map_err(io_context(format!("fsync directory {}", dir.display())))
    }

    /// The file operations the store changes files through.
    pub(crate) fn files(&self) -> &dyn StoreFiles {
        self.inner.files.as_ref()
    }

    /// Removes a file that nothing may use any more. One that cannot be removed is left for the
    /// next start's rebuild: the store is then not marked clean when it closes.
    pub(crate) fn discard(&self, path: &Path) {
        match self.inner.files.remove_file(path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot remove a file; the next start will");
                self.inner.needs_rebuild.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Records that a write failed, for [`write_failure`](Self::write_failure).
    pub(crate) fn record_write_failure(&self, cause: WriteFailure) {
        let mut live = self.live();
        if live.write_failure != Some(cause) {
            tracing::warn!(
                cause = cause.label(),
                "the store cannot take writes; blobs pass through uncached"
            );
        }
        live.write_failure = Some(cause);
    }

    /// Records that a blob of `needed` bytes found no room: the disk counts as full until that
    /// much fits again (see [`evict_to_fit`](Self::evict_to_fit)).
    pub(crate) fn record_no_room(&self, needed: u64) {
        self.record_write_failure(WriteFailure::DiskFull);
        self.live().disk_full_needs = needed;
    }

    /// Clears the recorded write failure: a commit succeeded.
    /// A full disk stays recorded while the blob that did not fit still would not: a small
    /// blob that fitted says nothing about a large one.
    fn record_write_success(&self) {
        let (failure, needs) = {
            let live = self.live();
            (live.write_failure, live.disk_full_needs)
        };
        let Some(cause) = failure else {
            return;
        };
        if cause == WriteFailure::DiskFull
            && self.stats().bytes.saturating_add(needs) > self.effective_budget()
        {
            return;
        }
        let mut live = self.live();
        if live.write_failure == Some(cause) {
            live.write_failure = None;
            tracing::info!(
                was = cause.label(),
                "the store takes writes again; caching resumed"
            );
        }
    }

    /// Why the last write failed, until the store takes writes again; `None` when healthy. A
    /// store that is only closed (shutting down) reports nothing.
    pub fn write_failure(&self) -> Option<WriteFailure> {
        self.live().write_failure
    }

    /// Admits one commit, unless the store is closed; the commit lasts as long as the guard.
    fn begin_commit(&self) -> Result<CommitGuard<'_>, StoreError> {
        let mut live = self.live();
        if live.closed {
            return Err(StoreError::Closed);
        }
        live.committing += 1;
        Ok(CommitGuard { store: self })
    }

    /// The data directory's layout.
    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// The chunking parameters for new blobs.
    pub fn chunking(&self) -> ChunkingParams {
        self.inner.chunking
    }

    /// Blobs and bytes held.
    pub fn stats(&self) -> StoreStats {
        self.live().stats
    }

    fn live(&self) -> MutexGuard<'_, LiveState> {
        self.inner
            .live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn count_stats(&self) -> Result<StoreStats, StoreError> {
        let mut stats = StoreStats {
            blobs: self.inner.blobs.len() as u64,
            bytes: 0,
        };
        for item in self.inner.shards.iter() {
            let (_, value) = item?;
            if let Ok(record) = records::decode::<ShardRecord>(&value) {
                stats.bytes += u64::from(record.len);
            }
        }
        Ok(stats)
    }

    pub(crate) fn tmp_path(&self, label: &str) -> PathBuf {
        let n = self.inner.tmp_counter.fetch_add(1, Ordering::Relaxed);
        self.inner
            .layout
            .tmp_dir()
            .join(format!("{label}.{}.{n}", std::process::id()))
    }

    /// The shard map of a committed blob.
    pub fn shard_map(&self, digest: &BlobDigest) -> Result<Option<ShardMap>, StoreError> {
        let Some(bytes) = self.inner.blobs.get(digest.as_bytes())? else {
            return Ok(None);
        };
        match ShardMap::decode(&bytes) {
            Ok(map) => Ok(Some(map)),
            Err(error) => {
                tracing::error!(%digest, %error, "undecodable shard map in the index; treating as absent");
                Ok(None)
            }
        }
    }

    /// Looks a blob up and registers a reader, so the blob is not evicted while the returned guard
    /// lives. Records the access.
    pub fn open_blob(
        &self,
        digest: &BlobDigest,
    ) -> Result<Option<(ShardMap, ReaderGuard)>, StoreError> {
        let guard = self.register_reader(*digest);
        let Some(map) = self.shard_map(digest)? else {
            return Ok(None);
        };
        self.record_access(digest)?;
        Ok(Some((map, guard)))
    }

    /// Registers a response in progress for `digest` (committed or not): eviction skips it.
    pub fn register_reader(&self, digest: BlobDigest) -> ReaderGuard {
        *self.live().readers.entry(digest).or_insert(0) += 1;
        ReaderGuard {
            store: self.clone(),
            digest,
        }
    }

    fn record_access(&self, digest: &BlobDigest) -> Result<(), StoreError> {
        let gathered = {
            let mut live = self.live();
            let entry = live.pending_access.entry(*digest).or_insert((0, 0));
            entry.0 = now_ms();
            entry.1 += 1;
            live.pending_access.len()
        };
        if gathered >= MAX_PENDING_ACCESS {
            self.flush_access()?;
        }
        Ok(())
    }

    /// Writes the reads gathered in memory to the index.
    fn flush_access(&self) -> Result<(), StoreError> {
        let pending = std::mem::take(&mut self.live().pending_access);
        for (digest, (last_access_ms, reads)) in pending {
            let Some(previous) = self.inner.access.get(digest.as_bytes())? else {
                // Evicted since the read.
                continue;
            };
            let count = records::decode::<AccessRecord>(&previous).map_or(0, |r| r.count);
            let record = AccessRecord {
                last_access_ms,
                count: count + reads,
            };
            self.inner
                .access
                .insert(digest.as_bytes(), records::encode(&record))?;
        }
        Ok(())
    }

    /// Reads one shard and verifies its BLAKE3 hash. A shard that fails is deleted (so it is never
    /// served) and reported as corrupt; the caller heals it with [`repair_shard`](Self::repair_shard).
    pub fn read_shard(&self, entry: &ShardEntry) -> Result<Bytes, ShardReadError> {
        let hash = entry.shard_hash();
        let path = self.inner.layout.shard_path(&hash);
        let data = match fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ShardReadError::Missing(hash))
            }
            Err(source) => return Err(ShardReadError::Io { hash, source }),
        };
        if data.len() != entry.len as usize || blake3::hash(&data).as_bytes() != hash.as_bytes() {
            // Only delete if the file is still the bad one (a concurrent repair may have replaced it).
            if fs::read(&path).is_ok_and(|now| blake3::hash(&now).as_bytes() != hash.as_bytes()) {
                self.discard(&path);
            }
            return Err(ShardReadError::Corrupt(hash));
        }
        Ok(Bytes::from(data))
    }

    /// Puts a shard back after it was found corrupt or missing. `data` is verified first.
    pub fn repair_shard(&self, entry: &ShardEntry, data: &[u8]) -> Result<bool, StoreError> {
        let hash = entry.shard_hash();
        if data.len() != entry.len as usize || blake3::hash(data).as_bytes() != hash.as_bytes() {
            return Ok(false);
        }
        self.write_durably("repair", &self.inner.layout.shard_path(&hash), data)?;
        Ok(true)
    }

    /// Starts ingesting a blob that should have `expected` as its sha256, for which no client
    /// waits: its shard files are made durable as they are written ([`Durability::AsWritten`]).
    pub fn begin_ingest(&self, expected: BlobDigest) -> Ingest {
        self.begin_ingest_with(expected, Durability::AsWritten)
    }

    /// Starts ingesting a blob that should have `expected` as its sha256, making its shard files
    /// durable as `durability` says (whether a client waits for its bytes).
    pub fn begin_ingest_with(&self, expected: BlobDigest, durability: Durability) -> Ingest {
        Ingest::new(self.clone(), expected, durability)
    }

    /// A cached manifest by digest.
    pub fn manifest(&self, digest: &BlobDigest) -> Result<Option<ManifestRecord>, StoreError> {
        Ok(self
            .inner
            .manifests
            .get(digest.as_bytes())?
            .and_then(|bytes| records::decode::<ManifestRecord>(&bytes).ok()))
    }

    /// Caches a manifest; the caller has verified that `digest` is the sha256 of its body.
    pub fn put_manifest(
        &self,
        digest: &BlobDigest,
        record: &ManifestRecord,
    ) -> Result<(), StoreError> {
        self.inner
            .manifests
            .insert(digest.as_bytes(), records::encode(record))?;
        Ok(())
    }

    /// A cached tag resolution; `key` names upstream, repository and tag.
    pub fn tag(&self, key: &str) -> Result<Option<TagRecord>, StoreError> {
        Ok(self
            .inner
            .tags
            .get(key.as_bytes())?
            .and_then(|bytes| records::decode::<TagRecord>(&bytes).ok()))
    }

    /// Caches a tag resolution.
    pub fn put_tag(&self, key: &str, record: &TagRecord) -> Result<(), StoreError> {
        self.inner
            .tags
            .insert(key.as_bytes(), records::encode(record))?;
        Ok(())
    }

    /// Cached manifests' digests, at most `limit` of them (in key order).
    pub fn manifest_digests(&self, limit: usize) -> Result<Vec<BlobDigest>, StoreError> {
        let mut out = Vec::new();
        for key in self.inner.manifests.iter().keys().take(limit) {
            if let Ok(bytes) = <[u8; 32]>::try_from(key?.as_ref()) {
                out.push(BlobDigest::from_bytes(bytes));
            }
        }
        Ok(out)
    }

    /// Cached tag resolutions with their keys (see [`tag`](Self::tag)), at most `limit` of them
    /// (in key order); records that do not decode are skipped.
    pub fn tags(&self, limit: usize) -> Result<Vec<(String, TagRecord)>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.tags.iter().take(limit) {
            let (key, value) = item?;
            let (Ok(key), Ok(record)) = (
                String::from_utf8(key.to_vec()),
                records::decode::<TagRecord>(&value),
            ) else {
                continue;
            };
            out.push((key, record));
        }
        Ok(out)
    }

    /// Pins `hash` for an ingest in flight: its file is not removed until it is unpinned.
    fn pin_shard(&self, hash: ShardHash) {
        *self.live().pinned.entry(hash).or_insert(0) += 1;
    }

    /// Whether a committed blob holds `hash` (then its file was fsynced by that blob's commit).
    fn shard_is_committed(&self, hash: &ShardHash) -> Result<bool, StoreError> {
        Ok(self.inner.shards.get(hash.as_bytes())?.is_some())
    }

    /// Releases pins; deletes `created` shards that no committed blob and no other ingest uses.
    fn unpin_shards(&self, pinned: &[ShardHash], created: &[ShardHash]) {
        let mut live = self.live();
        for hash in pinned {
            if let Some(count) = live.pinned.get_mut(hash) {
                *count -= 1;
                if *count == 0 {
                    live.pinned.remove(hash);
                }
            }
        }
        for hash in created {
            let referenced = live.pinned.contains_key(hash)
                || self
                    .inner
                    .shards
                    .get(hash.as_bytes())
                    .ok()
                    .flatten()
                    .is_some();
            if !referenced {
                self.discard(&self.inner.layout.shard_path(hash));
            }
        }
    }

    /// Adds a committed blob to the index (its map file is already durable).
    fn index_blob(&self, map: &ShardMap, encoded_map: &[u8]) -> Result<(), StoreError> {
        let digest = map.blob_digest();
        let mut live = self.live();
        if self.inner.blobs.get(digest.as_bytes())?.is_some() {
            return Ok(());
        }
        let mut added_bytes = 0u64;
        let mut seen = std::collections::HashSet::new();
        for shard in &map.shards {
            if !seen.insert(shard.hash) {
                continue;
            }
            let previous = self
                .inner
                .shards
                .get(shard.hash)?
                .and_then(|bytes| records::decode::<ShardRecord>(&bytes).ok());
            let refcount = previous.map_or(0, |r| r.refcount);
            if refcount == 0 {
                added_bytes += u64::from(shard.len);
            }
            let record = ShardRecord {
                refcount: refcount + 1,
                len: shard.len,
            };
            self.inner
                .shards
                .insert(shard.hash, records::encode(&record))?;
        }
        self.inner.blobs.insert(digest.as_bytes(), encoded_map)?;
        let access = AccessRecord {
            last_access_ms: now_ms(),
            count: 0,
        };
        self.inner
            .access
            .insert(digest.as_bytes(), records::encode(&access))?;
        live.stats.blobs += 1;
        live.stats.bytes += added_bytes;
        Ok(())
    }

    /// Removes a committed blob: map file first (so a crash leaves no map whose shards are gone),
    /// then the index entries, then shards no other blob or ingest uses. Refuses blobs being served,
    /// and everything once the store is closed.
    pub fn remove_blob(&self, digest: &BlobDigest) -> Result<bool, StoreError> {
        let mut live = self.live();
        if live.closed || live.readers.contains_key(digest) {
            return Ok(false);
        }
        let Some(map) = self.shard_map(digest)? else {
            return Ok(false);
        };
        let map_path = self.inner.layout.map_path(digest);
        match self.inner.files.remove_file(&map_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_context(format!("removing {}", map_path.display()))(e)),
        }
        self.inner.blobs.remove(digest.as_bytes())?;
        self.inner.access.remove(digest.as_bytes())?;
        let mut seen = std::collections::HashSet::new();
        for shard in &map.shards {
            if !seen.insert(shard.hash) {
                continue;
            }
            let Some(bytes) = self.inner.shards.get(shard.hash)? else {
                continue;
            };
            let Ok(record) = records::decode::<ShardRecord>(&bytes) else {
                continue;
            };
            if record.refcount > 1 {
                let record = ShardRecord {
                    refcount: record.refcount - 1,
                    len: record.len,
                };
                self.inner
                    .shards
                    .insert(shard.hash, records::encode(&record))?;
                continue;
            }
            self.inner.shards.remove(shard.hash)?;
            live.stats.bytes = live.stats.bytes.saturating_sub(u64::from(record.len));
            let hash = shard.shard_hash();
            if !live.pinned.contains_key(&hash) {
                self.discard(&self.inner.layout.shard_path(&hash));
            }
        }
        live.stats.blobs = live.stats.blobs.saturating_sub(1);
        Ok(true)
    }

    /// Evicts whole blobs, in the policy's order, until the store is within its effective disk
    /// budget (see [`room`]). Returns the digests evicted.
    pub fn evict_to_budget(&self) -> Result<Vec<BlobDigest>, StoreError> {
        Ok(self.evict_to_fit(0)?.evicted)
    }

    /// Evicts whole blobs, in the policy's order, until `incoming` more bytes fit in the effective
    /// disk budget, and says whether they do (blobs being served are never evicted, so they may
    /// not). A full disk is no longer reported by [`write_failure`](Self::write_failure) once
    /// the blob that did not fit would fit.
    pub fn evict_to_fit(&self, incoming: u64) -> Result<room::Eviction, StoreError> {
        let whole = self.effective_budget();
        let budget = whole.saturating_sub(incoming);
        // A blob that would not fit even in an empty store evicts nothing: emptying the cache
        // for it would only lose what can still be served.
        let evicted = if incoming > whole {
            Vec::new()
        } else {
            self.evict_to(budget)?
        };
        let used = self.stats().bytes;
        let fits = used.saturating_add(incoming) <= whole;
        let mut live = self.live();
        if live.write_failure == Some(WriteFailure::DiskFull) {
            // A small blob that fits says nothing about the large one that did not.
            if used.saturating_add(live.disk_full_needs) <= whole {
                live.write_failure = None;
                tracing::info!("the disk has room again; caching resumed");
            }
        }
        Ok(room::Eviction { evicted, fits })
    }

    fn evict_to(&self, budget: u64) -> Result<Vec<BlobDigest>, StoreError> {
        if self.stats().bytes <= budget {
            return Ok(Vec::new());
        }
        self.flush_access()?;
        let mut candidates = Vec::new();
        for item in self.inner.blobs.iter() {
            let (key, value) = item?;
            let Ok(hex) = <[u8; 32]>::try_from(key.as_ref()) else {
                continue;
            };
            let digest = BlobDigest::from_bytes(hex);
            let access = self
                .inner
                .access
                .get(digest.as_bytes())?
                .and_then(|bytes| records::decode::<AccessRecord>(&bytes).ok())
                .unwrap_or(AccessRecord {
                    last_access_ms: 0,
                    count: 0,
                });
            let size = ShardMap::decode(&value).map_or(0, |m| m.blob_len);
            candidates.push(EvictionCandidate {
                digest,
                size,
                last_access_ms: access.last_access_ms,
                access_count: access.count,
            });
        }
        {
            let readers = &self.live().readers;
            candidates.retain(|c| !readers.contains_key(&c.digest));
        }
        let order = self
            .inner
            .eviction
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .order_victims(now_ms(), candidates);
        let mut evicted = Vec::new();
        for digest in order {
            if self.stats().bytes <= budget {
                break;
            }
            if self.remove_blob(&digest)? {
                evicted.push(digest);
            }
        }
        Ok(evicted)
    }

    /// Every committed blob's digest.
    pub fn blob_digests(&self) -> Result<Vec<BlobDigest>, StoreError> {
        let mut out = Vec::new();
        for key in self.inner.blobs.iter().keys() {
            if let Ok(bytes) = <[u8; 32]>::try_from(key?.as_ref()) {
                out.push(BlobDigest::from_bytes(bytes));
            }
        }
        Ok(out)
    }
}

/// Keeps a blob from being evicted while a response that reads it is in progress.
#[derive(Debug)]
pub struct ReaderGuard {
    store: ShardStore,
    digest: BlobDigest,
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        let mut live = self.store.live();
        if let Some(count) = live.readers.get_mut(&self.digest) {
            *count -= 1;
            if *count == 0 {
                live.readers.remove(&self.digest);
            }
        }
    }
}

#[cfg(test)]
mod fault_tests;
/// Opens the sled index at `path`, waiting up to [`INDEX_LOCK_WAIT`] for its file lock.
///
/// sled releases the lock only when its last background I/O task lets go of the database, a
/// moment after the handle is dropped; a stop and start in the same process (a restart, `fsck`
/// right after `close`) can otherwise see the lock still held by the instance just closed.
/// A lock held longer than that is another process, and the error says so.
pub(crate) fn open_index(path: &Path) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + INDEX_LOCK_WAIT;
    loop {
        match sled::Config::new().path(path).open() {
            // sled reports a held lock as an `Other` error whose text carries the OS error.
            Err(sled::Error::Io(error))
                if error.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// How long [`open_index`] waits for a lock released by an instance in this process.
const INDEX_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

#[cfg(test)]
mod tests;
