//! Ingesting one blob: chunk, hash, write shards, verify the digest, commit.
//!
//! Three stages: the caller's thread cuts the bytes into shards and BLAKE3-hashes them (the
//! chunker, zero-copy: each shard is a slice of the chunker's buffer), the `shard_writer` stage
//! writes new shard files on a thread of its own, and `shard_sync`'s threads fsync new files, so
//! cutting, writing and writing back overlap. The blob's sha256 is the caller's:
//! [`Ingest::write`] computes it inline, while the node computes it on a thread of its own and
//! ends with [`Ingest::verify_with`].
//!
//! When the files are made durable is the ingest's [`Durability`], chosen by whoever starts it:
//! as each file is written when no client waits for the bytes, or only once the client's last
//! byte is released (the verify), so that the writes on a client's path never wait on writeback.
//! Either way the commit waits for the fsyncs in flight and makes durable whatever the blob
//! relies on that they did not confirm, before the shard map names it.

use std::collections::BTreeSet;
use std::path::PathBuf;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use shoal_proto::limits::MAX_BLOB_BYTES;
use shoal_proto::{BlobDigest, ShardEntry, ShardHash, ShardMap};

use super::chunker::{cut_window, ShardSink, StreamChunker};
use super::shard_sync::sync_all;
use super::shard_writer::{Finished, ShardJob, ShardWriter};
use super::{ShardStore, StoreError, WriteFailure};

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
    /// The fetch was abandoned before the blob was complete.
    #[error("the fetch was abandoned")]
    Abandoned,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// When an ingest makes its new shard files durable. The commit's guarantee is the same in every
/// mode: the shard map is written only after every shard file it names is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// No client waits for the bytes (placement and preheat copies, rebuilds, peer replication
    /// ahead of demand): each new file's writeback starts as soon as it is written and fsync
    /// threads make it durable while the blob arrives, so the disk writes the blob back at its
    /// sequential speed and the commit waits on little.
    AsWritten,
    /// A client waits for the bytes: nothing is done for durability until the blob's last byte
    /// is released (the sha256 matched, [`Ingest::verify_with`]), since the writes of the next
    /// shards, on the client's path, would wait on writeback and journal commits. Then the ingest
    /// switches: the writeback of every file written so far starts, and the last shards are made
    /// durable as they are written, so the commit after it waits on less.
    AfterRelease,
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
    /// Its BLAKE3.
    pub hash: ShardHash,
}

/// The shards an ingest has written or reused so far.
#[derive(Debug, Default)]
struct IngestShards {
    entries: Vec<ShardEntry>,
    /// Every shard this blob uses, pinned against eviction until the ingest ends.
    pinned: Vec<ShardHash>,
    /// Shards whose files this ingest created.
    created: Vec<ShardHash>,
}

/// One blob being written. Dropping it without [`finish`](Self::finish) undoes everything.
#[derive(Debug)]
pub struct Ingest {
    store: ShardStore,
    expected: BlobDigest,
    chunker: StreamChunker,
    sha256: Sha256,
    received: u64,
    verified: bool,
    shards: IngestShards,
    writer: ShardWriter,
}

/// Pins each shard the chunker emits, lists it in the blob's map and hands it to the writer.
struct ShardQueue<'a> {
    store: &'a ShardStore,
    shards: &'a mut IngestShards,
    writer: &'a mut ShardWriter,
    /// Whether to write on the writer thread (starting it if needed); shards cut at the end of
    /// a blob that never started it are written on the caller's thread.
    background: bool,
}

impl ShardSink for &mut ShardQueue<'_> {
    type Error = IngestError;

    fn shard(&mut self, offset: u64, data: Bytes, hash: ShardHash) -> Result<(), IngestError> {
        // Pinned before the writer looks for its file: eviction cannot remove it in between.
        self.store.pin_shard(hash);
        self.shards.pinned.push(hash);
        self.shards.entries.push(ShardEntry {
            hash: *hash.as_bytes(),
            offset,
            len: data.len() as u32,
        });
        self.writer
            .submit(ShardJob { offset, data, hash }, self.background)?;
        Ok(())
    }
}

impl Ingest {
    pub(super) fn new(store: ShardStore, expected: BlobDigest, durability: Durability) -> Self {
        let chunker = StreamChunker::new(store.chunking());
        let store_for_writer = store.clone();
        Self {
            store,
            expected,
            chunker,
            sha256: Sha256::new(),
            received: 0,
            verified: false,
            shards: IngestShards::default(),
            writer: ShardWriter::new(store_for_writer, durability),
        }
    }

    /// A client now waits for the bytes of an ingest started as [`Durability::AsWritten`] (it
    /// joined a fetch made ahead of demand): from the next shard on, the ingest runs as
    /// [`Durability::AfterRelease`], so the writes on the client's path no longer wait on
    /// writeback; files already being made durable stay so. Nothing changes after the verify.
    pub fn defer_durability(&mut self) {
        self.writer.defer_until_release();
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Notes a failed write in the store's health before handing the error on.
    fn noted<T>(&self, result: Result<T, IngestError>) -> Result<T, IngestError> {
        if let Err(IngestError::Store(error)) = &result {
            match error.write_failure() {
                Some(WriteFailure::DiskFull) => self.store.record_no_room(self.received),
                Some(cause) => self.store.record_write_failure(cause),
                None => {}
            }
        }
        result
    }

    /// Feeds the next bytes of the blob; returns the shards that became final and were written.
    pub fn write(&mut self, data: &[u8]) -> Result<Vec<StoredShard>, IngestError> {
        self.sha256.update(data);
        self.write_unhashed(data)
    }

    /// Like [`write`](Self::write), for a caller that computes the blob's sha256 itself (on
    /// another thread) and ends with [`verify_with`](Self::verify_with).
    pub fn write_unhashed(&mut self, data: &[u8]) -> Result<Vec<StoredShard>, IngestError> {
        self.received += data.len() as u64;
        if self.received > MAX_BLOB_BYTES {
            return Err(IngestError::TooLarge);
        }
        // A blob under one maximum shard starts no threads: its few shards are written here.
        let background = self.received >= u64::from(self.store.chunking().max);
        let mut queue = ShardQueue {
            store: &self.store,
            shards: &mut self.shards,
            writer: &mut self.writer,
            background,
        };
        let pushed = self.chunker.push(data, &mut queue);
        let written = pushed.and_then(|()| self.take_written());
        self.noted(written)
    }

    /// Cuts `window`, the blob's next bytes from [`received`](Self::received) on, like
    /// [`write_unhashed`](Self::write_unhashed) but with no copy: shards are slices of `window`
    /// (`chunker::cut_window`). Only the shards whose ends are final are cut, every one with
    /// `at_end`; returns how many bytes were cut, with the shards written. The uncut rest is not
    /// kept: it must start the next window. Bytes given to `write_unhashed` must all be cut first.
    pub fn write_window(
        &mut self,
        window: &Bytes,
        at_end: bool,
    ) -> Result<(usize, Vec<StoredShard>), IngestError> {
        debug_assert!(self.chunker.is_empty(), "bytes wait in the stream chunker");
        if self.received + window.len() as u64 > MAX_BLOB_BYTES {
            return Err(IngestError::TooLarge);
        }
        let background =
            self.received + window.len() as u64 >= u64::from(self.store.chunking().max);
        let mut queue = ShardQueue {
            store: &self.store,
            shards: &mut self.shards,
            writer: &mut self.writer,
            background,
        };
        let params = self.store.chunking();
        let cut = cut_window(params, window, self.received, at_end, &mut &mut queue);
        if let Ok(cut) = &cut {
            self.received += *cut as u64;
            self.chunker.skip_to(self.received);
        }
        let written = cut.and_then(|cut| Ok((cut, self.take_written()?)));
        self.noted(written)
    }

    /// The shards the writer finished since the last call.
    fn take_written(&mut self) -> Result<Vec<StoredShard>, IngestError> {
        let Finished { stored, created } = self.writer.take()?;
        self.shards.created.extend(created);
        Ok(stored)
    }

    /// Waits for the writer to finish every shard queued.
    fn drain_written(&mut self) -> Result<Vec<StoredShard>, IngestError> {
        let Finished { stored, created } = self.writer.drain()?;
        self.shards.created.extend(created);
        Ok(stored)
    }

    /// Stores one shard cut by a peer with this store's chunking settings, whose BLAKE3 the caller
    /// has checked (`hash` is the hash of `data`). Skips cutting and hashing the bytes again. If
    /// bytes given to [`write_unhashed`](Self::write_unhashed) are still waiting to be cut, the
    /// shard joins them instead, so a blob's shards stay contiguous either way.
    pub fn write_shard(
        &mut self,
        data: Bytes,
        hash: ShardHash,
    ) -> Result<Vec<StoredShard>, IngestError> {
        if !self.chunker.is_empty() {
            return self.write_unhashed(&data);
        }
        let offset = self.received;
        self.received += data.len() as u64;
        if self.received > MAX_BLOB_BYTES {
            return Err(IngestError::TooLarge);
        }
        let mut queue = ShardQueue {
            store: &self.store,
            shards: &mut self.shards,
            writer: &mut self.writer,
            background: true,
        };
        let queued = (&mut queue).shard(offset, data, hash);
        let written = queued.and_then(|()| self.take_written());
        let stored = self.noted(written)?;
        self.chunker.skip_to(self.received);
        Ok(stored)
    }

    /// Ends the blob: cuts the last shards, checks the sha256, and commits. Returns the map and
    /// the last shards written.
    pub fn finish(mut self) -> Result<(ShardMap, Vec<StoredShard>), IngestError> {
        let last = self.verify()?;
        let map = self.commit()?;
        Ok((map, last))
    }

    /// Cuts the last shards and checks the sha256 of everything received. After this returns
    /// `Ok`, the bytes are known good and may be released to clients; [`commit`](Self::commit)
    /// makes them durable.
    pub fn verify(&mut self) -> Result<Vec<StoredShard>, IngestError> {
        let actual = BlobDigest::from_bytes(self.sha256.clone().finalize().into());
        self.verify_with(actual)
    }

    /// Like [`verify`](Self::verify), with the sha256 of every byte written computed by the caller.
    /// A [`Durability::AfterRelease`] ingest switches here when the digest matches: the node's
    /// flight releases the client's last byte once this same sha256 matched, before it ends the
    /// ingest's feed, so making the files durable no longer delays anyone.
    pub fn verify_with(&mut self, actual: BlobDigest) -> Result<Vec<StoredShard>, IngestError> {
        if actual == self.expected {
            let switched = self
                .writer
                .make_durable_from_now()
                .map_err(IngestError::from);
            self.noted(switched)?;
        }
        let mut queue = ShardQueue {
            store: &self.store,
            shards: &mut self.shards,
            writer: &mut self.writer,
            background: false,
        };
        let cut = self.chunker.finish(&mut queue);
        let written = cut.and_then(|()| self.drain_written());
        let last = self.noted(written)?;
        if actual != self.expected {
            return Err(IngestError::DigestMismatch {
                expected: self.expected,
                actual,
            });
        }
        self.verified = true;
        Ok(last)
    }

    /// Makes a verified blob durable and indexes it: fsyncs the shards it created, writes its
    /// shard map (the commit point), updates the index.
    pub fn commit(mut self) -> Result<ShardMap, IngestError> {
        self.commit_in_place()
    }

    /// Like [`commit`](Self::commit), keeping the ingest when the commit fails: until it is
    /// dropped, the shard files it wrote stay readable for responses still sending the blob,
    /// and nothing of it is committed. Commits at most once.
    pub fn commit_in_place(&mut self) -> Result<ShardMap, IngestError> {
        if !self.verified {
            return Err(IngestError::Abandoned);
        }
        let map = ShardMap {
            blob: *self.expected.as_bytes(),
            blob_len: self.received,
            chunking: self.store.chunking(),
            shards: self.shards.entries.clone(),
        };
        let committed = self.write_commit(&map);
        self.noted(committed)?;
        self.shards.entries.clear();
        self.verified = false;
        self.store.record_write_success();
        Ok(map)
    }

    fn write_commit(&mut self, map: &ShardMap) -> Result<(), IngestError> {
        let _commit = self.store.begin_commit()?;
        let layout = self.store.layout().clone();
        // The files the sync threads made durable while the blob arrived (a failed fsync fails
        // the commit here).
        let synced = self.writer.synced()?;
        // Every file this ingest created, and every file it found in place that no committed
        // blob holds yet (another ingest still running wrote it and has not fsynced it), unless
        // the sync threads already made it durable.
        let mut unsynced: BTreeSet<ShardHash> = self
            .shards
            .created
            .iter()
            .filter(|hash| !synced.contains(hash))
            .copied()
            .collect();
        for entry in &self.shards.entries {
            let hash = ShardHash::from_bytes(entry.hash);
            if !unsynced.contains(&hash)
                && !synced.contains(&hash)
                && !self.store.shard_is_committed(&hash)?
            {
                unsynced.insert(hash);
            }
        }
        let paths: Vec<PathBuf> = unsynced.iter().map(|h| layout.shard_path(h)).collect();
        sync_all(&self.store, &paths)?;
        let encoded = map.encode();
        let map_path = layout.map_path(&self.expected);
        self.store.write_durably("map", &map_path, &encoded)?;
        if let Err(error) = self.store.index_blob(map, &encoded) {
            // Not indexed, so not committed: the map must go too, since the shards it lists are
            // removed with this ingest.
            self.store.discard(&map_path);
            return Err(error.into());
        }
        // Committed: the created shards now belong to the blob.
        self.shards.created.clear();
        Ok(())
    }
}

#[cfg(test)]
impl Ingest {
    /// Waits until every shard is written and the sync threads are done with them (a commit
    /// then fsyncs only what they did not).
    pub(crate) fn settle(&mut self) -> Result<(), IngestError> {
        self.drain_written()?;
        self.writer.synced()?;
        Ok(())
    }

    /// Waits until every shard queued so far is written, without the verify (so without the
    /// switch of a [`Durability::AfterRelease`] ingest).
    pub(crate) fn wait_for_writes(&mut self) -> Result<(), IngestError> {
        self.drain_written()?;
        Ok(())
    }

    /// Ends the ingest the way a crash would: files stay where they are, nothing is cleaned up
    /// (the writer stage stops without writing what is queued, as a dying process would).
    pub(crate) fn crash(mut self) {
        self.writer.stop();
        self.shards.pinned.clear();
        self.shards.created.clear();
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        // No file may appear after the cleanup: stop the writer first.
        let created = self.writer.stop();
        self.shards.created.extend(created);
        self.store
            .unpin_shards(&self.shards.pinned, &self.shards.created);
    }
}
