//! A spool: the raw bytes of one blob in flight, appended as they arrive from the network, in the
//! store's temporary area.
//!
//! A cold blob's client needs only the bytes and the sha256 check; the ingest (cutting, BLAKE3,
//! shard writes) is slower. The spool lets the two run at their own paces: the network side
//! appends here, the ingest reads behind it, and readers of the flight read any offset that is
//! neither in memory nor in a shard file yet. A spool is never committed and never served as
//! a stored blob: it lives in `tmp/`, which the store empties at every start, and it is removed
//! when dropped. Ranges that every reader can find in shard files can be freed while the spool
//! is written ([`Spool::punch`]), so a blob occupies about its own size on disk, not twice.
//!
//! One writer appends; any number of threads read at any offset meanwhile (`pread`, no lock).
//!
//! **Invariant:** a spool is only ever under `tmp/`, so a crash at any moment leaves nothing the
//! next start keeps.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};

use super::{io_context, ShardStore, StoreError};

/// The raw bytes of one blob in flight, on disk until dropped.
#[derive(Debug)]
pub struct Spool {
    file: File,
    path: PathBuf,
    /// Bytes appended so far (the file's length).
    len: AtomicU64,
}

impl ShardStore {
    /// Creates an empty spool in the store's temporary area.
    pub fn create_spool(&self) -> Result<Spool, StoreError> {
        Spool::create(self.tmp_path("spool"))
    }
}

impl Spool {
    /// Creates an empty spool at `path` (removed when the spool is dropped).
    pub fn create(path: PathBuf) -> Result<Self, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_context(format!("creating spool {}", path.display())))?;
        Ok(Self {
            file,
            path,
            len: AtomicU64::new(0),
        })
    }

    /// Where the spool is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes appended so far.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// Whether nothing was appended yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `bytes` at the end. Only one thread appends; readers may read meanwhile.
    pub fn append(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let at = self.len.load(Ordering::Acquire);
        self.file
            .write_all_at(bytes, at)
            .map_err(io_context(format!(
                "appending to spool {}",
                self.path.display()
            )))?;
        self.len.store(at + bytes.len() as u64, Ordering::Release);
        Ok(())
    }

    /// Reads `len` bytes at `offset`, which must lie within what was appended.
    pub fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let mut buffer = BytesMut::zeroed(len);
        self.read_into(offset, &mut buffer)?;
        Ok(buffer.freeze())
    }

    /// Fills `buffer` from `offset`, which must lie within what was appended.
    pub fn read_into(&self, offset: u64, buffer: &mut [u8]) -> io::Result<()> {
        self.check_appended("read", offset, buffer.len())?;
        self.file.read_exact_at(buffer, offset)
    }

    /// An error unless `offset..offset + len` lies within what was appended.
    fn check_appended(&self, what: &str, offset: u64, len: usize) -> io::Result<()> {
        let end = offset.saturating_add(len as u64);
        if end > self.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("spool {what} up to {end} beyond its {} bytes", self.len()),
            ));
        }
        Ok(())
    }

    /// Maps `len` bytes at `offset`, which must lie within what was appended, as [`Bytes`] that
    /// own the mapping: the ingest cuts shards straight out of the page cache, with no copy into a
    /// buffer of its own. Slices of it stay valid for as long as any is held.
    ///
    /// Safety of the mapping: the spool file is never truncated (a punched range keeps the
    /// length and reads as zeros, never faults), and only this process writes it, appending
    /// beyond what is mapped. The caller must not map ranges it may punch while it still reads
    /// them; the node's ingest frees only ranges behind the shards it has written.
    #[allow(unsafe_code)] // memmap2's `map` is unsafe: see "Safety of the mapping" above.
    pub fn map(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        self.check_appended("map", offset, len)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        // SAFETY: see above; the file outlives no mapping it backs (the kernel keeps the pages
        // of a removed file until the last mapping goes). memmap2 aligns the offset to a page.
        let mapping = unsafe {
            memmap2::MmapOptions::new()
                .offset(offset)
                .len(len)
                .populate()
                .map(&self.file)?
        };
        Ok(Bytes::from_owner(mapping))
    }

    /// Frees the disk blocks of `offset..offset + len` (the file keeps its length; the range
    /// reads as zeros afterwards, so the caller must never read it again). A file system that
    /// cannot punch holes keeps the blocks until the spool is dropped.
    pub fn punch(&self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let punched = rustix::fs::fallocate(
            &self.file,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            offset,
            len,
        );
        if let Err(error) = punched {
            tracing::debug!(spool = %self.path.display(), %error, "cannot free a spool's range; it stays until the spool is dropped");
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_file(&self.path) {
            if error.kind() != io::ErrorKind::NotFound {
                tracing::warn!(spool = %self.path.display(), %error, "cannot remove a spool");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::store::StoreConfig;

    const MIB: u64 = 1 << 20;

    fn store(dir: &Path) -> ShardStore {
        ShardStore::open(&StoreConfig {
            data_dir: dir.to_path_buf(),
            max_disk_bytes: 1 << 30,
            chunking: shoal_proto::ChunkingParams {
                min: 1024,
                avg: 4096,
                max: 16384,
            },
        })
        .unwrap()
    }

    #[test]
    fn bytes_appended_read_back_at_any_offset_while_the_spool_grows() {
        let dir = tempfile::tempdir().unwrap();
        let spool = store(dir.path()).create_spool().unwrap();
        assert!(spool.is_empty());
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for piece in data.chunks(70_001) {
            spool.append(piece).unwrap();
            let len = spool.len() as usize;
            // Anything appended so far reads back, from anywhere.
            for offset in [0, len / 3, len - 1] {
                let read = spool.read_at(offset as u64, len - offset).unwrap();
                assert_eq!(&read[..], &data[offset..len]);
            }
            // Beyond the end is an error, not zeros.
            assert!(spool.read_at(len as u64 - 1, 2).is_err());
        }
        assert_eq!(spool.len(), data.len() as u64);
    }

    #[test]
    fn a_mapped_range_reads_as_appended_and_outlives_more_appends() {
        let dir = tempfile::tempdir().unwrap();
        let spool = store(dir.path()).create_spool().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 251) as u8).collect();
        spool.append(&data[..200_000]).unwrap();
        // An offset off any page boundary.
        let mapped = spool.map(5_001, 190_000).unwrap();
        assert_eq!(&mapped[..], &data[5_001..195_001]);
        spool.append(&data[200_000..]).unwrap();
        let shard = mapped.slice(1_000..2_000);
        drop(mapped);
        assert_eq!(&shard[..], &data[6_001..7_001]);
        assert_eq!(&spool.map(0, 300_000).unwrap()[..], &data[..]);
        assert!(spool.map(299_999, 2).is_err(), "beyond the end is an error");
        assert!(spool.map(300_000, 0).unwrap().is_empty());
    }

    #[test]
    fn a_punched_range_frees_its_blocks_and_the_rest_still_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let spool = store(dir.path()).create_spool().unwrap();
        let data = vec![0xA5u8; 8 * MIB as usize];
        spool.append(&data).unwrap();
        std::fs::File::open(spool.path())
            .unwrap()
            .sync_all()
            .unwrap();
        let blocks_before = std::fs::metadata(spool.path()).unwrap().blocks();
        spool.punch(0, 6 * MIB);
        let metadata = std::fs::metadata(spool.path()).unwrap();
        assert_eq!(metadata.len(), 8 * MIB, "the length is kept");
        // tmpfs and ext4 free the blocks; a file system without hole punching keeps them.
        assert!(metadata.blocks() <= blocks_before);
        let rest = spool.read_at(6 * MIB, 2 * MIB as usize).unwrap();
        assert!(rest.iter().all(|&b| b == 0xA5));
    }

    #[test]
    fn dropping_a_spool_removes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let spool = store.create_spool().unwrap();
        spool.append(b"bytes").unwrap();
        let path = spool.path().to_path_buf();
        assert!(path.starts_with(store.layout().tmp_dir()));
        assert!(path.exists());
        drop(spool);
        assert!(!path.exists());
        assert_eq!(
            std::fs::read_dir(store.layout().tmp_dir()).unwrap().count(),
            0
        );
    }

    #[test]
    fn a_spool_left_by_a_crash_is_removed_when_the_store_starts_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let store = store(dir.path());
            let spool = store.create_spool().unwrap();
            spool.append(&[1u8; 4096]).unwrap();
            let path = spool.path().to_path_buf();
            // A crash: the spool is never dropped, the store never closed.
            std::mem::forget(spool);
            drop(store);
            path
        };
        assert!(path.exists());
        let store = store(dir.path());
        assert!(!path.exists(), "a stale spool survived the restart");
        assert_eq!(
            std::fs::read_dir(store.layout().tmp_dir()).unwrap().count(),
            0
        );
        store.close().unwrap();
        drop(store);
        let report = crate::store::recovery::fsck(dir.path(), false).unwrap();
        assert!(report.is_clean(), "{report:?}");
    }
}
