//! The shard map: how one blob is cut into content-defined shards.
//!
//! A blob of `blob_len` bytes is split by FastCDC (v2020) into shards; each [`ShardEntry`] gives the
//! shard's BLAKE3 hash, its offset in the blob and its length. Entries are in blob order, start at
//! offset 0, are contiguous and cover the blob exactly; an empty blob has no shards. The map also
//! records the chunking parameters it was cut with, so a store can tell maps cut differently apart.
//!
//! ## Encoding
//!
//! ```text
//! offset  size  field
//! 0       4     magic "SHMP"
//! 4       2     format version, little endian (currently 1)
//! 6       2     reserved, zero
//! 8       ..    rkyv archive of `ShardMap` (validated with bytecheck on decode)
//! ```
//!
//! Decoding checks, in order: total length against [`MAX_SHARD_MAP_BYTES`] (before copying
//! anything), magic, version, the archive's structure, and then the semantic rules above
//! ([`ShardMap::validate`]). A map that decodes is safe to serve from.

use crate::digest::{BlobDigest, ShardHash};
use crate::limits::{MAX_BLOB_BYTES, MAX_SHARDS_PER_MAP, MAX_SHARD_BYTES, MAX_SHARD_MAP_BYTES};

const MAGIC: &[u8; 4] = b"SHMP";
/// The shard map format version this build writes and reads.
pub const SHARD_MAP_VERSION: u16 = 1;
const HEADER_LEN: usize = 8;

/// FastCDC parameters a blob was cut with (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ChunkingParams {
    /// Smallest shard, except the last one of a blob.
    pub min: u32,
    /// Target average shard size.
    pub avg: u32,
    /// Largest shard.
    pub max: u32,
}

/// One shard of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ShardEntry {
    /// BLAKE3 of the shard's bytes.
    pub hash: [u8; 32],
    /// Offset of the shard's first byte in the blob.
    pub offset: u64,
    /// Length in bytes (never zero).
    pub len: u32,
}

impl ShardEntry {
    /// The shard's hash as a typed value.
    pub fn shard_hash(&self) -> ShardHash {
        ShardHash::from_bytes(self.hash)
    }

    /// One past the shard's last byte.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// The ordered list of shards that make up a blob.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ShardMap {
    /// SHA-256 of the whole blob.
    pub blob: [u8; 32],
    /// Length of the whole blob.
    pub blob_len: u64,
    /// How the blob was cut.
    pub chunking: ChunkingParams,
    /// The shards in blob order.
    pub shards: Vec<ShardEntry>,
}

/// Why a shard map was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardMapError {
    /// Encoded form shorter than its header or longer than the limit.
    #[error("encoded shard map is {0} bytes, outside 8..={MAX_SHARD_MAP_BYTES}")]
    Length(usize),
    /// Wrong magic number: not a shard map.
    #[error("not a shard map (bad magic)")]
    Magic,
    /// A version this build cannot read.
    #[error(
        "shard map format version {0} is not supported (this build reads {SHARD_MAP_VERSION})"
    )]
    Version(u16),
    /// The archive failed structural validation.
    #[error("shard map archive is malformed: {0}")]
    Archive(String),
    /// Shards not contiguous from offset 0, zero-length or oversized, or not summing to the blob.
    #[error("shard map is inconsistent: {0}")]
    Inconsistent(&'static str),
}

impl ShardMap {
    /// The blob's digest as a typed value.
    pub fn blob_digest(&self) -> BlobDigest {
        BlobDigest::from_bytes(self.blob)
    }

    /// Checks the semantic rules: contiguous, non-empty, bounded shards that cover the blob.
    pub fn validate(&self) -> Result<(), ShardMapError> {
        if self.blob_len > MAX_BLOB_BYTES {
            return Err(ShardMapError::Inconsistent("blob longer than the limit"));
        }
        if self.shards.len() > MAX_SHARDS_PER_MAP {
            return Err(ShardMapError::Inconsistent("too many shards"));
        }
        let mut expected_offset = 0u64;
        for shard in &self.shards {
            if shard.len == 0 || shard.len > MAX_SHARD_BYTES {
                return Err(ShardMapError::Inconsistent("shard length out of range"));
            }
            if shard.offset != expected_offset {
                return Err(ShardMapError::Inconsistent("shards are not contiguous"));
            }
            expected_offset += u64::from(shard.len);
        }
        if expected_offset != self.blob_len {
            return Err(ShardMapError::Inconsistent("shards do not cover the blob"));
        }
        Ok(())
    }

    /// Index of the shard that holds byte `offset` (which must be below `blob_len`).
    pub fn shard_index_at(&self, offset: u64) -> Option<usize> {
        if offset >= self.blob_len {
            return None;
        }
        Some(self.shards.partition_point(|s| s.end() <= offset))
    }

    /// Encodes the map behind the versioned header.
    pub fn encode(&self) -> Vec<u8> {
        let archive = rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .expect("serialising plain data to memory cannot fail");
        let mut out = Vec::with_capacity(HEADER_LEN + archive.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&SHARD_MAP_VERSION.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&archive);
        out
    }

    /// Decodes and validates an encoded map.
    pub fn decode(bytes: &[u8]) -> Result<Self, ShardMapError> {
        if bytes.len() < HEADER_LEN || bytes.len() > MAX_SHARD_MAP_BYTES {
            return Err(ShardMapError::Length(bytes.len()));
        }
        if &bytes[0..4] != MAGIC {
            return Err(ShardMapError::Magic);
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != SHARD_MAP_VERSION {
            return Err(ShardMapError::Version(version));
        }
        // rkyv needs the archive aligned; the header offsets it, so copy into an aligned buffer.
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len() - HEADER_LEN);
        aligned.extend_from_slice(&bytes[HEADER_LEN..]);
        let map = rkyv::from_bytes::<ShardMap, rkyv::rancor::Error>(&aligned)
            .map_err(|e| ShardMapError::Archive(e.to_string()))?;
        map.validate()?;
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map_from_lengths(lengths: &[u32]) -> ShardMap {
        let mut offset = 0u64;
        let shards = lengths
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let entry = ShardEntry {
                    hash: [i as u8; 32],
                    offset,
                    len,
                };
                offset += u64::from(len);
                entry
            })
            .collect();
        ShardMap {
            blob: [7; 32],
            blob_len: offset,
            chunking: ChunkingParams {
                min: 1,
                avg: 2,
                max: 4,
            },
            shards,
        }
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(lengths in proptest::collection::vec(1u32..100_000, 0..200)) {
            let map = map_from_lengths(&lengths);
            let decoded = ShardMap::decode(&map.encode()).unwrap();
            prop_assert_eq!(&decoded, &map);
            for (i, shard) in map.shards.iter().enumerate() {
                prop_assert_eq!(map.shard_index_at(shard.offset), Some(i));
                prop_assert_eq!(map.shard_index_at(shard.end() - 1), Some(i));
            }
            prop_assert_eq!(map.shard_index_at(map.blob_len), None);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = ShardMap::decode(&bytes);
            let mut with_header = b"SHMP\x01\x00\x00\x00".to_vec();
            with_header.extend_from_slice(&bytes);
            let _ = ShardMap::decode(&with_header);
        }
    }

    #[test]
    fn rejects_inconsistent_maps() {
        let mut map = map_from_lengths(&[10, 20]);
        map.shards[1].offset = 11;
        assert!(matches!(
            ShardMap::decode(&map.encode()),
            Err(ShardMapError::Inconsistent(_))
        ));
        let mut map = map_from_lengths(&[10, 20]);
        map.blob_len = 31;
        assert!(ShardMap::decode(&map.encode()).is_err());
        let mut encoded = map_from_lengths(&[5]).encode();
        encoded[4] = 9;
        assert_eq!(ShardMap::decode(&encoded), Err(ShardMapError::Version(9)));
        assert_eq!(ShardMap::decode(b"SHM"), Err(ShardMapError::Length(3)));
    }
}
