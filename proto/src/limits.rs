//! Size bounds for outside input and stored records. Each is checked before anything is
//! allocated for the thing it bounds.

/// Largest manifest or index accepted, from a client or an upstream (the distribution registry's
/// own limit).
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// Largest blob the store will ingest. Larger layers exist in theory only; this bounds shard-map
/// sizes and keeps offsets far from overflow.
pub const MAX_BLOB_BYTES: u64 = 1 << 40;

/// Largest shard the chunker may produce (FastCDC v2020's own maximum of maximums).
pub const MAX_SHARD_BYTES: u32 = 16 * 1024 * 1024;

/// Smallest maximum shard size allowed by configuration; keeps shard maps small.
pub const MIN_MAX_SHARD_BYTES: u32 = 64 * 1024;

/// Most shards one shard map may list. `MAX_BLOB_BYTES` at the smallest allowed average shard
/// size stays well within it.
pub const MAX_SHARDS_PER_MAP: usize = 1 << 22;

/// Largest encoded shard map accepted by the decoder (header included).
pub const MAX_SHARD_MAP_BYTES: usize = 8 + 64 + MAX_SHARDS_PER_MAP * 48;

/// Longest repository name accepted (the distribution registry's limit).
pub const MAX_REPO_NAME_BYTES: usize = 255;

/// Longest tag accepted (OCI distribution grammar: 1 + 127).
pub const MAX_TAG_BYTES: usize = 128;

/// Longest registry host name accepted (as containerd sends it in `ns`; a DNS name's limit).
pub const MAX_REGISTRY_HOST_BYTES: usize = 253;

/// Longest manifest media type accepted from a peer (RFC 6838's limit for a type and subtype).
pub const MAX_MEDIA_TYPE_BYTES: usize = 255;
