//! Ingesting one blob: chunk, hash, write shards, verify the digest, commit.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};
use shoal_proto::limits::MAX_BLOB_BYTES;
use shoal_proto::{BlobDigest, ShardEntry, ShardHash, ShardMap};

use super::chunker::{CutShard, StreamChunker};
use super::{fsync_dir, io_context, write_durably, ShardStore, StoreError};

/// Why an ingest did not commit. Nothing of the blob is left in the store in every case.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The bytes did not hash to the digest they were fetched under.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest the blob was requested under.
        expected: BlobDigest,
        /// The sha256 of the bytes received.
        actual: BlobDigest,
    },
    /// More bytes than any blob may have.
    #[error("blob exceeds the {MAX_BLOB_BYTES}-byte limit")]
    TooLarge,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A shard written during an ingest, readable by responses that joined late.
#[derive(Debug, Clone)]
pub struct StoredShard {
    /// Offset in the blob.
    pub offset: u64,
    /// Length.
    pub len: u32,
    /// Where its bytes are.
    pub path: PathBuf,
}

/// One blob being written. Dropping it without [`finish`](Self::finish) undoes everything.
#[derive(Debug)]
pub struct Ingest {
    store: ShardStore,
    expected: BlobDigest,
    chunker: StreamChunker,
    sha256: Sha256,
    received: u64,
    entries: Vec<ShardEntry>,
    /// Every shard this blob uses, pinned against eviction until the ingest ends.
    pinned: Vec<ShardHash>,
    /// Shards whose files this ingest created.
    created: Vec<ShardHash>,
    cut: Vec<CutShard>,
}

impl Ingest {
    pub(super) fn new(store: ShardStore, expected: BlobDigest) -> Self {
        let chunker = StreamChunker::new(store.chunking());
        Self {
            store,
            expected,
            chunker,
            sha256: Sha256::new(),
            received: 0,
            entries: Vec::new(),
            pinned: Vec::new(),
            created: Vec::new(),
            cut: Vec::new(),
        }
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Feeds the next bytes of the blob; returns the shards that became final and were written.
    pub fn write(&mut self, data: &[u8]) -> Result<Vec<StoredShard>, IngestError> {
        self.received += data.len() as u64;
        if self.received > MAX_BLOB_BYTES {
            return Err(IngestError::TooLarge);
        }
        self.sha256.update(data);
        let mut cut = std::mem::take(&mut self.cut);
        self.chunker.push(data, &mut cut);
        let stored = self.store_cut(&mut cut);
        self.cut = cut;
        stored
    }

    fn store_cut(&mut self, cut: &mut Vec<CutShard>) -> Result<Vec<StoredShard>, IngestError> {
        let mut stored = Vec::with_capacity(cut.len());
        for shard in cut.drain(..) {
            let path = self.store.layout().shard_path(&shard.hash);
            let exists = self.store.pin_shard(shard.hash);
            self.pinned.push(shard.hash);
            if !exists {
                // Rename without fsync: until the blob commits the file is unreferenced, and the
                // commit fsyncs every file it created before the shard map makes them reachable.
                let tmp = self.store.tmp_path("shard");
                fs::write(&tmp, &shard.data)
                    .map_err(io_context(format!("writing {}", tmp.display())))?;
                fs::rename(&tmp, &path)
                    .map_err(io_context(format!("renaming to {}", path.display())))?;
                self.created.push(shard.hash);
            }
            let len = shard.data.len() as u32;
            self.entries.push(ShardEntry {
                hash: *shard.hash.as_bytes(),
                offset: shard.offset,
                len,
            });
            stored.push(StoredShard {
                offset: shard.offset,
                len,
                path,
            });
        }
        Ok(stored)
    }

    /// Ends the blob: cuts the last shards, checks the sha256, and commits. Returns the map and
    /// the last shards written.
    pub fn finish(mut self) -> Result<(ShardMap, Vec<StoredShard>), IngestError> {
        let mut cut = std::mem::take(&mut self.cut);
        self.chunker.finish(&mut cut);
        let last = self.store_cut(&mut cut)?;
        let actual = BlobDigest::from_bytes(self.sha256.clone().finalize().into());
        if actual != self.expected {
            return Err(IngestError::DigestMismatch {
                expected: self.expected,
                actual,
            });
        }
        let map = ShardMap {
            blob: *self.expected.as_bytes(),
            blob_len: self.received,
            chunking: self.store.chunking(),
            shards: std::mem::take(&mut self.entries),
        };
        self.commit(&map)?;
        Ok((map, last))
    }

    fn commit(&mut self, map: &ShardMap) -> Result<(), IngestError> {
        let layout = self.store.layout().clone();
        let mut dirs = BTreeSet::new();
        for hash in &self.created {
            let path = layout.shard_path(hash);
            fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io_context(format!("fsync {}", path.display())))?;
            if let Some(dir) = path.parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
        for dir in dirs {
            fsync_dir(&dir)?;
        }
        let encoded = map.encode();
        let tmp = self.store.tmp_path("map");
        write_durably(&tmp, &layout.map_path(&self.expected), &encoded)?;
        self.store.index_blob(map, &encoded)?;
        // Committed: the created shards now belong to the blob.
        self.created.clear();
        Ok(())
    }
}

#[cfg(test)]
impl Ingest {
    /// Ends the ingest the way a crash would: files stay where they are, nothing is cleaned up.
    pub(crate) fn crash(mut self) {
        self.pinned.clear();
        self.created.clear();
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.store.unpin_shards(&self.pinned, &self.created);
    }
}
