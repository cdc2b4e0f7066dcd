//! Demand: which layers clients asked for and when, under ids that never change.
//!
//! Pure state, driven by events with an explicit `now` (seconds): a blob request is a pull of its
//! layer, a manifest request announces its layers (the policy's early signal). Layers are
//! identified by [`LayerId`]s interned from their digests; an id stays with its digest for as long
//! as the layer has history, so the policy's series and the eviction policy's memory survive
//! across calls, and the table is written to disk ([`DemandSnapshot`]) so they survive restarts.
//!
//! Bounded: at most `max_layers` layers; when full, the layers with the oldest last activity are
//! forgotten (their ids freed for reuse). Each layer keeps `history_buckets + 1` buckets and its
//! last [`MAX_ANNOUNCEMENTS`] manifest signals.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use shoal_policy::usage::{Forecast, UsageConfig, UsageSeries};
use shoal_policy::{LayerId, Timestamp};
use shoal_proto::BlobDigest;

/// Manifest signals remembered per layer (older ones have decayed away anyway).
pub const MAX_ANNOUNCEMENTS: usize = 8;
/// Format version of [`DemandSnapshot`].
pub const SNAPSHOT_VERSION: u32 = 1;

/// One layer's demand: the policy's series plus the raw events that rebuild it.
#[derive(Debug, Clone, Default)]
struct LayerDemand {
    digest: Option<BlobDigest>,
    size: u64,
    series: UsageSeries,
    /// (bucket index, pulls), oldest first; the persisted form of `series`'s window.
    buckets: VecDeque<(u64, u32)>,
    /// Times of the last manifest signals.
    announcements: VecDeque<u64>,
    last_activity: u64,
    /// Where clients asked for it: the upstream's name and the repository.
    source: Option<(String, String)>,
}

/// The demand of every layer this node has heard of.
#[derive(Debug, Clone)]
pub struct DemandBook {
    usage: UsageConfig,
    max_layers: usize,
    ids: HashMap<BlobDigest, LayerId>,
    layers: Vec<LayerDemand>,
    free: Vec<LayerId>,
}

/// One layer as written to disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// The stable id.
    pub id: u32,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes, if known (0 when not).
    pub size: u64,
    /// (bucket index, pulls).
    pub buckets: Vec<(u64, u32)>,
    /// Times (seconds) of manifest signals.
    pub announcements: Vec<u64>,
    /// The upstream clients asked for it through.
    #[serde(default)]
    pub upstream: Option<String>,
    /// The repository clients asked for it in.
    #[serde(default)]
    pub repo: Option<String>,
}

/// The demand table as written to disk (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemandSnapshot {
    /// [`SNAPSHOT_VERSION`].
    pub version: u32,
    /// Bucket width the buckets were counted in; a snapshot with another width is not replayed.
    pub bucket_secs: u64,
    /// Every layer with history.
    pub layers: Vec<LayerRecord>,
}

/// Why a snapshot was not loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Another format version.
    #[error("demand snapshot version {0} is not {SNAPSHOT_VERSION}")]
    Version(u32),
    /// Bad content.
    #[error("demand snapshot: {0}")]
    Invalid(String),
}

impl DemandBook {
    /// An empty table.
    pub fn new(usage: UsageConfig, max_layers: usize) -> Self {
        Self {
            usage,
            max_layers: max_layers.max(1),
            ids: HashMap::new(),
            layers: Vec::new(),
            free: Vec::new(),
        }
    }

    /// The usage settings.
    pub fn usage_config(&self) -> &UsageConfig {
        &self.usage
    }

    /// The id of `digest`, if it has one.
    pub fn id(&self, digest: &BlobDigest) -> Option<LayerId> {
        self.ids.get(digest).copied()
    }

    /// The digest behind an id.
    pub fn digest(&self, id: LayerId) -> Option<BlobDigest> {
        self.layers.get(id.0 as usize).and_then(|l| l.digest)
    }

    /// Layers with an id.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when no layer has an id.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The id of `digest`, assigning one (and forgetting the least recently active layer when
    /// the table is full).
    pub fn intern(&mut self, now: u64, digest: BlobDigest) -> LayerId {
        if let Some(id) = self.ids.get(&digest) {
            return *id;
        }
        if self.ids.len() >= self.max_layers {
            self.forget_oldest();
        }
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.layers.push(LayerDemand::default());
                LayerId((self.layers.len() - 1) as u32)
            }
        };
        self.layers[id.0 as usize] = LayerDemand {
            digest: Some(digest),
            last_activity: now,
            ..LayerDemand::default()
        };
        self.ids.insert(digest, id);
        id
    }

    fn forget_oldest(&mut self) {
        let oldest = self
            .layers
            .iter()
            .enumerate()
            .filter(|(_, l)| l.digest.is_some())
            .min_by_key(|(i, l)| (l.last_activity, *i))
            .map(|(i, _)| LayerId(i as u32));
        if let Some(id) = oldest {
            self.forget(id);
        }
    }

    /// Drops a layer's history and frees its id.
    pub fn forget(&mut self, id: LayerId) {
        let Some(layer) = self.layers.get_mut(id.0 as usize) else {
            return;
        };
        if let Some(digest) = layer.digest.take() {
            self.ids.remove(&digest);
            *layer = LayerDemand::default();
            self.free.push(id);
        }
    }

    /// Notes a layer's size (from a manifest descriptor or the store).
    pub fn set_size(&mut self, id: LayerId, size: u64) {
        if let Some(layer) = self.layers.get_mut(id.0 as usize) {
            layer.size = size;
        }
    }

    /// Notes where clients ask for the layer (the upstream's name and the repository), so the
    /// plan can fetch it from the origin if no peer has it.
    pub fn set_source(&mut self, id: LayerId, upstream: &str, repo: &str) {
        if let Some(layer) = self.layers.get_mut(id.0 as usize) {
            if layer
                .source
                .as_ref()
                .is_none_or(|(u, r)| u != upstream || r != repo)
            {
                layer.source = Some((upstream.to_owned(), repo.to_owned()));
            }
        }
    }

    /// Where clients asked for the layer.
    pub fn source(&self, id: LayerId) -> Option<(&str, &str)> {
        self.layers
            .get(id.0 as usize)
            .and_then(|l| l.source.as_ref())
            .map(|(u, r)| (u.as_str(), r.as_str()))
    }

    /// The size last noted, 0 if none.
    pub fn size(&self, id: LayerId) -> u64 {
        self.layers.get(id.0 as usize).map_or(0, |l| l.size)
    }

    /// A client asked for the blob `digest` at `now`.
    pub fn record_pull(&mut self, now: u64, digest: BlobDigest) -> LayerId {
        let id = self.intern(now, digest);
        self.add_pulls(now, id, 1);
        id
    }

    fn add_pulls(&mut self, now: u64, id: LayerId, count: u32) {
        let bucket = now / self.usage.bucket_secs.max(1);
        let keep = self.usage.history_buckets + 1;
        let usage = &self.usage;
        let layer = &mut self.layers[id.0 as usize];
        layer.series.record(Timestamp(now), count, usage);
        match layer.buckets.back_mut() {
            Some((b, n)) if *b == bucket => *n = n.saturating_add(count),
            Some((b, _)) if *b > bucket => {}
            _ => layer.buckets.push_back((bucket, count)),
        }
        while layer
            .buckets
            .front()
            .is_some_and(|(b, _)| b + keep as u64 <= bucket)
            || layer.buckets.len() > keep
        {
            layer.buckets.pop_front();
        }
        layer.last_activity = layer.last_activity.max(now);
    }

    /// A client asked for a manifest listing `layers` (digest, size) at `now`: each is announced.
    pub fn record_manifest(&mut self, now: u64, layers: &[(BlobDigest, u64)]) -> Vec<LayerId> {
        let mut ids = Vec::with_capacity(layers.len());
        for (digest, size) in layers {
            let id = self.intern(now, *digest);
            self.set_size(id, *size);
            self.announce(now, id);
            ids.push(id);
        }
        ids
    }

    fn announce(&mut self, now: u64, id: LayerId) {
        let signal = self.usage.manifest_signal;
        let usage = &self.usage;
        let layer = &mut self.layers[id.0 as usize];
        layer.series.announce(Timestamp(now), signal, usage);
        layer.announcements.push_back(now);
        while layer.announcements.len() > MAX_ANNOUNCEMENTS {
            layer.announcements.pop_front();
        }
        layer.last_activity = layer.last_activity.max(now);
    }

    /// The policy's forecast for `id` over `horizon` buckets.
    pub fn forecast(&self, now: u64, id: LayerId, horizon: u32) -> Option<Forecast> {
        let layer = self.layers.get(id.0 as usize)?;
        layer.digest?;
        Some(layer.series.forecast(Timestamp(now), horizon, &self.usage))
    }

    /// The policy's series of `id`.
    pub fn series(&self, id: LayerId) -> Option<&UsageSeries> {
        self.layers
            .get(id.0 as usize)
            .filter(|l| l.digest.is_some())
            .map(|l| &l.series)
    }

    /// Every layer with an id, in id order.
    pub fn ids(&self) -> impl Iterator<Item = LayerId> + '_ {
        self.layers
            .iter()
            .enumerate()
            .filter(|(_, l)| l.digest.is_some())
            .map(|(i, _)| LayerId(i as u32))
    }

    /// The table as written to disk.
    pub fn snapshot(&self) -> DemandSnapshot {
        let layers = self
            .layers
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                Some(LayerRecord {
                    id: i as u32,
                    digest: l.digest?.to_string(),
                    size: l.size,
                    buckets: l.buckets.iter().copied().collect(),
                    announcements: l.announcements.iter().copied().collect(),
                    upstream: l.source.as_ref().map(|(u, _)| u.clone()),
                    repo: l.source.as_ref().map(|(_, r)| r.clone()),
                })
            })
            .collect();
        DemandSnapshot {
            version: SNAPSHOT_VERSION,
            bucket_secs: self.usage.bucket_secs,
            layers,
        }
    }

    /// Rebuilds the table from a snapshot, keeping every layer's id. Records past the bounds are
    /// cut (the newest buckets and signals kept); a duplicate id or digest is an error and
    /// nothing is loaded.
    pub fn restore(
        usage: UsageConfig,
        max_layers: usize,
        snapshot: DemandSnapshot,
    ) -> Result<Self, SnapshotError> {
        if snapshot.version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version(snapshot.version));
        }
        let mut book = Self::new(usage, max_layers);
        if snapshot.bucket_secs != book.usage.bucket_secs {
            return Ok(book);
        }
        if snapshot.layers.len() > book.max_layers {
            return Err(SnapshotError::Invalid(format!(
                "{} layers, at most {} allowed",
                snapshot.layers.len(),
                book.max_layers
            )));
        }
        let mut by_id: BTreeMap<u32, LayerRecord> = BTreeMap::new();
        for record in snapshot.layers {
            if record.id as usize >= book.max_layers {
                return Err(SnapshotError::Invalid(format!(
                    "id {} too large",
                    record.id
                )));
            }
            if by_id.insert(record.id, record).is_some() {
                return Err(SnapshotError::Invalid("duplicate id".into()));
            }
        }
        let len = by_id.keys().next_back().map_or(0, |id| *id as usize + 1);
        book.layers = vec![LayerDemand::default(); len];
        for (id, record) in by_id {
            let digest = record
                .digest
                .parse::<BlobDigest>()
                .map_err(|_| SnapshotError::Invalid(format!("bad digest for id {id}")))?;
            if book.ids.insert(digest, LayerId(id)).is_some() {
                return Err(SnapshotError::Invalid(format!(
                    "digest {digest} listed twice"
                )));
            }
            let source = match (record.upstream, record.repo) {
                (Some(u), Some(r)) if u.len() <= 256 && r.len() <= 256 => Some((u, r)),
                _ => None,
            };
            book.layers[id as usize] = LayerDemand {
                digest: Some(digest),
                size: record.size,
                source,
                ..LayerDemand::default()
            };
            let keep = book.usage.history_buckets + 1;
            let bucket_secs = book.usage.bucket_secs;
            let mut buckets = record.buckets;
            buckets.sort_unstable();
            buckets.dedup_by_key(|(b, _)| *b);
            let skip = buckets.len().saturating_sub(keep);
            for (bucket, count) in buckets.into_iter().skip(skip) {
                book.add_pulls(bucket.saturating_mul(bucket_secs), LayerId(id), count);
            }
            let mut announcements = record.announcements;
            announcements.sort_unstable();
            let skip = announcements.len().saturating_sub(MAX_ANNOUNCEMENTS);
            for at in announcements.into_iter().skip(skip) {
                book.announce(at, LayerId(id));
            }
        }
        book.free = (0..len as u32)
            .rev()
            .map(LayerId)
            .filter(|id| book.layers[id.0 as usize].digest.is_none())
            .collect();
        Ok(book)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(byte: u8) -> BlobDigest {
        BlobDigest::from_bytes([byte; 32])
    }

    fn usage() -> UsageConfig {
        UsageConfig {
            bucket_secs: 60,
            history_buckets: 4,
            ..UsageConfig::default()
        }
    }

    #[test]
    fn ids_are_stable_and_history_accumulates_across_calls() {
        let mut book = DemandBook::new(usage(), 10);
        let a = book.record_pull(0, digest(1));
        let b = book.record_pull(0, digest(2));
        assert_ne!(a, b);
        for t in [60, 120, 180] {
            assert_eq!(book.record_pull(t, digest(1)), a);
        }
        assert_eq!(book.series(a).unwrap().total_pulls(), 4);
        assert!(
            book.forecast(200, a, 1).unwrap().total() > book.forecast(200, b, 1).unwrap().total()
        );
    }

    #[test]
    fn a_manifest_pull_announces_its_layers_before_any_blob_is_asked_for() {
        let mut book = DemandBook::new(usage(), 10);
        let ids = book.record_manifest(10, &[(digest(1), 100), (digest(2), 200)]);
        assert_eq!(book.size(ids[1]), 200);
        let forecast = book.forecast(10, ids[0], 1).unwrap();
        assert!(forecast.announced > 0.9, "{forecast:?}");
        assert_eq!(forecast.statistical, 0.0);
    }

    #[test]
    fn the_snapshot_restores_ids_history_and_signals() {
        let mut book = DemandBook::new(usage(), 10);
        for t in 0..20 {
            book.record_pull(t * 30, digest(1));
        }
        book.record_pull(590, digest(2));
        let ids = book.record_manifest(595, &[(digest(3), 7)]);
        book.set_source(ids[0], "docker", "library/app");
        book.forget(book.id(&digest(2)).unwrap());
        let snapshot = book.snapshot();
        let json = serde_json::to_vec(&snapshot).unwrap();
        let back: DemandSnapshot = serde_json::from_slice(&json).unwrap();
        let restored = DemandBook::restore(usage(), 10, back).unwrap();
        for d in [digest(1), digest(3)] {
            let id = book.id(&d).unwrap();
            assert_eq!(restored.id(&d), Some(id));
            assert_eq!(restored.forecast(600, id, 2), book.forecast(600, id, 2));
        }
        assert_eq!(restored.id(&digest(2)), None);
        assert_eq!(restored.size(restored.id(&digest(3)).unwrap()), 7);
        assert_eq!(restored.source(ids[0]), Some(("docker", "library/app")));
        // A freed id is reused, not a live one.
        let mut restored = restored;
        let new = restored.intern(600, digest(9));
        assert_eq!(new, LayerId(1));
        assert_ne!(Some(new), restored.id(&digest(1)));
    }

    #[test]
    fn a_full_table_forgets_the_least_recently_active_layer() {
        let mut book = DemandBook::new(usage(), 16);
        for i in 0..16u8 {
            book.record_pull(u64::from(i), digest(i));
        }
        book.record_pull(100, digest(0));
        book.record_pull(101, digest(200));
        assert_eq!(book.len(), 16);
        assert!(book.id(&digest(0)).is_some());
        assert!(book.id(&digest(1)).is_none());
    }

    #[test]
    fn bad_snapshots_load_nothing() {
        let record = |id, byte| LayerRecord {
            id,
            digest: digest(byte).to_string(),
            size: 0,
            buckets: vec![],
            announcements: vec![],
            upstream: None,
            repo: None,
        };
        let snapshot = |layers| DemandSnapshot {
            version: SNAPSHOT_VERSION,
            bucket_secs: 60,
            layers,
        };
        assert!(
            DemandBook::restore(usage(), 10, snapshot(vec![record(0, 1), record(0, 2)])).is_err()
        );
        assert!(
            DemandBook::restore(usage(), 10, snapshot(vec![record(0, 1), record(1, 1)])).is_err()
        );
        assert!(DemandBook::restore(usage(), 10, snapshot(vec![record(99, 1)])).is_err());
        let mut wrong = snapshot(vec![]);
        wrong.version = 7;
        assert_eq!(
            DemandBook::restore(usage(), 10, wrong).unwrap_err(),
            SnapshotError::Version(7)
        );
    }
}
