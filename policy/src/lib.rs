#![doc = r#"
Shoal's policy engine: which layers to keep, where to copy them ahead of
demand, what to evict and when to delete.

Everything here is a pure function or a state machine. Nothing reads the
clock, the disk, the network or a random source: time comes in as a
[`Timestamp`] argument and every input is a value. `shoald` feeds the engine
real events and `shoal-sim` feeds it simulated ones, so both run this one
implementation.

# The three signals

* **Usage** ([`usage`]): per-layer access counts in time buckets, forecast over
  a horizon with simple exponential smoothing, Holt's linear trend or Croston's
  method with the SBA correction, chosen per series by how intermittent it is.
  A manifest pull is an immediate signal that its layers follow.
* **Threat** ([`threat`]): a 0-100 score per layer from Trivy or Grype JSON
  reports (CVSS base score × 10 where present, else the severity label).
* **Proximity** ([`proximity`]): how far (in RTT) the predicted demand of each
  region sits from the nearest copy of a layer, 0-100.

# The formula

The pre-cache priority of a layer is the design seed's weighted sum
([`priority`]):

```text
priority = w_usage * usage + w_threat * threat + w_proximity * proximity
```

with each signal on a 0-100 scale and the weights in [`priority::PolicyWeights`]
(defaults 0.6 / 0.1 / 0.3). The priority orders the [`plan`] (how many copies
of each layer in which regions, within each node's disk budget).

Eviction ([`eviction`]) turns threat the other way: among layers with the same
predicted use, the more dangerous one goes first, and the last copies the plan
requires are never offered unless the [`lifecycle`] says the layer is to be
deleted. Deletion of whole images follows the [`retention`] rules, where keep
always beats delete.

# Using it from a node

The store keeps one [`eviction::EvictionPolicy`] (plain [`eviction::Lru`] by
default), tells it about every read and write, and asks it for victims when
the disk is full:

```
use shoal_policy::eviction::{CandidateLayer, EvictionPolicy, Lru};
use shoal_policy::{LayerId, Timestamp};

let mut policy: Box<dyn EvictionPolicy> = Box::new(Lru::new());
policy.record_access(Timestamp(10), LayerId(1), 100);
policy.record_access(Timestamp(20), LayerId(2), 100);
let mut pinned = CandidateLayer::new(LayerId(3), 100);
pinned.pinned = true;
let candidates = [CandidateLayer::new(LayerId(1), 100), CandidateLayer::new(LayerId(2), 100), pinned];
assert_eq!(policy.choose_victims(Timestamp(30), &candidates, 150), vec![LayerId(1), LayerId(2)]);
```
"#]

pub mod cooperative;
pub mod eviction;
pub mod guard;
pub mod lifecycle;
pub mod plan;
pub mod precache;
pub mod priority;
pub mod proximity;
pub mod retention;
pub mod reuse;
pub mod threat;
pub mod usage;

use serde::{Deserialize, Serialize};

/// A point in time, in whole seconds since an epoch the caller chooses.
///
/// The policy engine never reads the clock: every decision takes `now` as a
/// `Timestamp`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Seconds since the epoch.
    pub fn secs(self) -> u64 {
        self.0
    }

    /// Seconds from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// This time plus `secs` seconds (saturating).
    pub fn plus(self, secs: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(secs))
    }
}

/// A compact handle for one layer blob.
///
/// The caller assigns it (for example by interning blob digests in a table);
/// the policy engine only compares and orders handles.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct LayerId(pub u32);

/// A region of the network, numbered densely from zero by the caller.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct RegionId(pub u16);

/// A cache node, numbered densely from zero by the caller.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct NodeId(pub u32);

/// A content digest such as `sha256:<64 hex digits>`, checked on construction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct BlobDigest(String);

/// Why a string is not a [`BlobDigest`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `algorithm:` prefix.
    #[error("digest {0:?} has no algorithm prefix")]
    NoAlgorithm(String),
    /// An algorithm other than sha256 or sha512.
    #[error("digest {0:?} uses an unsupported algorithm")]
    UnsupportedAlgorithm(String),
    /// Wrong length or a character that is not lowercase hex.
    #[error("digest {0:?} is not the right number of lowercase hex digits")]
    BadHex(String),
}

impl BlobDigest {
    /// Parses `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>`.
    pub fn parse(s: &str) -> Result<BlobDigest, DigestError> {
        let shown = || s.chars().take(80).collect::<String>();
        let Some((algo, hex)) = s.split_once(':') else {
            return Err(DigestError::NoAlgorithm(shown()));
        };
        let want = match algo {
            "sha256" => 64,
            "sha512" => 128,
            _ => return Err(DigestError::UnsupportedAlgorithm(shown())),
        };
        if hex.len() != want
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError::BadHex(shown()));
        }
        Ok(BlobDigest(s.to_string()))
    }

    /// The digest as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BlobDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for BlobDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        BlobDigest::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_validation() {
        let ok = format!("sha256:{}", "a".repeat(64));
        assert!(BlobDigest::parse(&ok).is_ok());
        assert!(BlobDigest::parse("sha256:abc").is_err());
        assert!(BlobDigest::parse(&format!("md5:{}", "a".repeat(64))).is_err());
        assert!(BlobDigest::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(BlobDigest::parse("nocolon").is_err());
    }

    #[test]
    fn timestamp_arithmetic_saturates() {
        assert_eq!(Timestamp(5).since(Timestamp(9)), 0);
        assert_eq!(Timestamp(u64::MAX).plus(3), Timestamp(u64::MAX));
    }
}
