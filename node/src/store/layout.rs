//! Where things live in the data directory.
//!
//! ```text
//! <data>/shards/<2 hex>/<64 hex>   shard bytes, named by their BLAKE3 hash (the source of truth)
//! <data>/maps/<64 hex>             encoded shard map of a committed blob, named by its sha256;
//!                                  its presence is the commit point of that blob
//! <data>/index/                    sled: blob -> map, shard -> refcount, access, manifests, tags
//! <data>/tmp/                      files being written; emptied at every start
//! ```
//!
//! Paths are built only from validated digests and hashes, never from request strings.

use std::path::{Path, PathBuf};

use shoal_proto::{BlobDigest, ShardHash};

/// The data directory's layout.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The data directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of all shard fan-out directories.
    pub fn shards_dir(&self) -> PathBuf {
        self.root.join("shards")
    }

    /// Directory of committed shard maps.
    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    /// Directory of files being written.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The sled database directory.
    pub fn index_dir(&self) -> PathBuf {
        self.root.join("index")
    }

    /// The file holding a shard.
    pub fn shard_path(&self, hash: &ShardHash) -> PathBuf {
        let hex = hash.hex();
        self.shards_dir().join(&hex[..2]).join(hex)
    }

    /// The file holding a committed blob's shard map.
    pub fn map_path(&self, digest: &BlobDigest) -> PathBuf {
        self.maps_dir().join(digest.hex())
    }

    /// Creates every directory of the layout.
    pub fn create_dirs(&self) -> std::io::Result<()> {
        for dir in [self.maps_dir(), self.tmp_dir(), self.index_dir()] {
            std::fs::create_dir_all(dir)?;
        }
        for fan in 0..=255u8 {
            std::fs::create_dir_all(self.shards_dir().join(hex::encode([fan])))?;
        }
        Ok(())
    }
}
