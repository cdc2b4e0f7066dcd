//! Shoal's formats: everything that has a byte layout on the wire or on disk, and the grammar of
//! the names that arrive from outside.
//!
//! * [`digest`]: blob digests (`sha256:<64 hex>`) and shard hashes (BLAKE3), as types that can only
//!   hold valid values.
//! * [`oci`]: the OCI Distribution grammar for repository names, tags and references, and the
//!   registry host names containerd sends as `ns`.
//! * [`shard_map`]: the record that says how a blob is cut into shards, encoded with rkyv behind a
//!   versioned header.
//! * [`records`]: the index records the node keeps in sled (manifests, tags, access statistics).
//! * [`wire`]: the peer protocols' messages (membership proof, shard transfer, manifest lookup),
//!   framed behind a versioned header with per-message size limits.
//! * [`gossip`]: the gossip topics and their messages (announcements of which shards a member
//!   holds), in the same framing as the peer wire.
//! * [`limits`]: every size bound that is checked before memory is allocated for outside input.
//!
//! Goals: one definition of each format, validated on decode, usable from the daemon, the operator
//! CLI, the simulator and the tests. Non-goals: I/O of any kind, an async runtime, compression.
//!
//! **Invariant:** only this crate defines byte layouts; every decoder here checks lengths before it
//! allocates and returns an error (never panics) on bad input.

pub mod digest;
pub mod gossip;
pub mod limits;
pub mod oci;
pub mod preheat;
pub mod records;
pub mod shard_map;
pub mod wire;

pub use digest::{BlobDigest, DigestError, ShardHash};
pub use oci::{NameError, Reference, RepoName};
pub use shard_map::{ChunkingParams, ShardEntry, ShardMap, ShardMapError};
