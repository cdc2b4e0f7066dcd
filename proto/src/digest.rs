//! Content identifiers.
//!
//! [`BlobDigest`] names a blob or manifest the way OCI does (`sha256:` and 64 lowercase hex
//! digits); Shoal stores and verifies SHA-256 only, and rejects every other algorithm at the edge.
//! [`ShardHash`] names a shard by the BLAKE3 hash of its bytes.

use std::fmt;
use std::str::FromStr;

/// Why a digest string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `algorithm:` prefix.
    #[error("digest has no algorithm prefix (expected `sha256:<hex>`)")]
    MissingAlgorithm,
    /// An algorithm other than sha256.
    #[error("unsupported digest algorithm {0:?} (only sha256 is supported)")]
    UnsupportedAlgorithm(String),
    /// Wrong number of hex digits.
    #[error("digest hex has {0} characters, expected 64")]
    WrongLength(usize),
    /// A character outside `[0-9a-f]`.
    #[error("digest hex must be lowercase hexadecimal")]
    NotHex,
}

/// A SHA-256 content digest, `sha256:<64 lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobDigest([u8; 32]);

impl BlobDigest {
    /// Wraps raw SHA-256 output.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 hex digits without the algorithm prefix (used for file names).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the bare 64-hex form (as used in file names).
    pub fn from_hex(s: &str) -> Result<Self, DigestError> {
        if s.len() != 64 {
            return Err(DigestError::WrongLength(s.len()));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError::NotHex);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| DigestError::NotHex)?;
        Ok(Self(out))
    }
}

impl FromStr for BlobDigest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algorithm, hex) = s.split_once(':').ok_or(DigestError::MissingAlgorithm)?;
        if algorithm != "sha256" {
            let shown: String = algorithm.chars().take(32).collect();
            return Err(DigestError::UnsupportedAlgorithm(shown));
        }
        Self::from_hex(hex)
    }
}

impl fmt::Display for BlobDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for BlobDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The BLAKE3 hash of one shard's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardHash([u8; 32]);

impl ShardHash {
    /// Wraps raw BLAKE3 output.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hex digits (the shard's file name).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 lowercase hex digits.
    pub fn from_hex(s: &str) -> Result<Self, DigestError> {
        BlobDigest::from_hex(s).map(|d| Self(d.0))
    }
}

impl fmt::Display for ShardHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for ShardHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blake3:{}", self.hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn round_trips() {
        let d: BlobDigest = GOOD.parse().unwrap();
        assert_eq!(d.to_string(), GOOD);
        assert_eq!(BlobDigest::from_hex(&d.hex()).unwrap(), d);
    }

    #[test]
    fn rejects_bad_digests() {
        assert_eq!(
            "e3b0".parse::<BlobDigest>(),
            Err(DigestError::MissingAlgorithm)
        );
        assert!(matches!(
            "md5:abcd".parse::<BlobDigest>(),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert_eq!(
            "sha256:abc".parse::<BlobDigest>(),
            Err(DigestError::WrongLength(3))
        );
        let upper = GOOD.to_uppercase().replacen("SHA256", "sha256", 1);
        assert_eq!(upper.parse::<BlobDigest>(), Err(DigestError::NotHex));
        let traversal = format!("sha256:../../{}", &GOOD[13..]);
        assert!(traversal.parse::<BlobDigest>().is_err());
    }
}
