//! Index records the node keeps in its embedded database (sled): cached manifests, tag
//! resolutions and blob access statistics. Each is an rkyv archive behind a one-byte version, and
//! each decoder validates before use. These records are a cache over the shard files and shard
//! maps (the source of truth) plus what upstreams said; losing them loses no blob.

/// The record format version this build writes and reads.
pub const RECORD_VERSION: u8 = 1;

/// Why a stored record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Empty, or a version this build cannot read.
    #[error("record version {0:?} is not supported")]
    Version(Option<u8>),
    /// The archive failed structural validation.
    #[error("record archive is malformed: {0}")]
    Archive(String),
}

/// A manifest (or index) as an upstream served it, kept forever under its digest.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ManifestRecord {
    /// The `Content-Type` the manifest is served with.
    pub media_type: String,
    /// The exact bytes (their sha256 is the key).
    pub body: Vec<u8>,
}

/// What a tag resolved to, and when the upstream said so.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TagRecord {
    /// SHA-256 of the manifest the tag pointed at.
    pub digest: [u8; 32],
    /// Its media type.
    pub media_type: String,
    /// Milliseconds since the Unix epoch when the upstream answered.
    pub fetched_at_ms: u64,
}

/// How a stored blob has been used, for eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AccessRecord {
    /// Milliseconds since the Unix epoch of the last read (or of the commit).
    pub last_access_ms: u64,
    /// Reads served since the blob was stored.
    pub count: u64,
}

/// How many stored blobs use a shard, and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ShardRecord {
    /// Number of stored blobs whose shard map lists this shard (counted once per blob).
    pub refcount: u64,
    /// The shard's length in bytes.
    pub len: u32,
}

/// Encodes a record behind its version byte.
pub fn encode<T>(record: &T) -> Vec<u8>
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::rancor::Error,
        >,
    >,
{
    let archive =
        rkyv::to_bytes::<rkyv::rancor::Error>(record).expect("serialising to memory cannot fail");
    let mut out = Vec::with_capacity(1 + archive.len());
    out.push(RECORD_VERSION);
    out.extend_from_slice(&archive);
    out
}

/// Decodes and validates a record written by [`encode`].
pub fn decode<T>(bytes: &[u8]) -> Result<T, RecordError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
{
    match bytes.first() {
        Some(&RECORD_VERSION) => {}
        other => return Err(RecordError::Version(other.copied())),
    }
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len() - 1);
    aligned.extend_from_slice(&bytes[1..]);
    rkyv::from_bytes::<T, rkyv::rancor::Error>(&aligned)
        .map_err(|e| RecordError::Archive(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let tag = TagRecord {
            digest: [3; 32],
            media_type: "x".into(),
            fetched_at_ms: 42,
        };
        assert_eq!(decode::<TagRecord>(&encode(&tag)).unwrap(), tag);
        let manifest = ManifestRecord {
            media_type: "m".into(),
            body: vec![1, 2, 3],
        };
        assert_eq!(
            decode::<ManifestRecord>(&encode(&manifest)).unwrap(),
            manifest
        );
        let access = AccessRecord {
            last_access_ms: 5,
            count: 6,
        };
        assert_eq!(decode::<AccessRecord>(&encode(&access)).unwrap(), access);
        assert!(decode::<TagRecord>(&[]).is_err());
        assert!(decode::<TagRecord>(&[1, 0, 0]).is_err());
        assert!(decode::<TagRecord>(&[9]).is_err());
    }
}
