//! Eviction: which cached layers a node gives up when its disk is full.
//!
//! This module owns the [`EvictionPolicy`] trait that a node's store calls,
//! and four implementations behind it:
//!
//! * [`Lru`]: plain least-recently-used; the node's default.
//! * [`Lfu`]: least-frequently-used, ties by recency.
//! * [`Predictive`]: lowest expected use per byte first, where expected use is
//!   the node's own forecast plus its share of the region's forecast plus a
//!   recency term, discounted by threat, so that high-risk, rarely used
//!   layers go first (the design seed). Layers whose lifecycle says delete go
//!   before all others.
//! * [`BeladyMin`]: Belady's MIN, the offline optimum for equal-sized items:
//!   evict what is needed furthest in the future. It needs the future, so it
//!   exists for comparison in the simulator only.
//!
//! # Protection rules (all implementations)
//!
//! A candidate is never chosen when it is pinned, and never when the
//! replication plan requires this copy unless its lifecycle says delete
//! ([`CandidateLayer::is_evictable`]). Keep beats delete: a pin protects even
//! a layer marked for deletion.
//!
//! # Protocol
//!
//! The store calls [`EvictionPolicy::record_access`] on every read or write
//! of a layer, and [`EvictionPolicy::choose_victims`] with the layers it could
//! drop and how many bytes it needs; it gets back victims in eviction order,
//! just enough to free the bytes (or every evictable candidate if that is not
//! enough). [`EvictionPolicy::forget`] tells the policy a layer is gone.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::usage::{UsageConfig, UsageTracker};
use crate::{LayerId, Timestamp};

/// A layer the store could drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CandidateLayer {
    /// The layer.
    pub layer: LayerId,
    /// Its size in bytes.
    pub size: u64,
    /// Pinned by an operator: never evicted.
    pub pinned: bool,
    /// The replication plan wants a copy on this node.
    pub plan_required: bool,
    /// Its lifecycle says delete (pending deletion past grace, or deleted).
    pub lifecycle_delete: bool,
}

impl CandidateLayer {
    /// An unprotected candidate.
    pub fn new(layer: LayerId, size: u64) -> Self {
        CandidateLayer {
            layer,
            size,
            pinned: false,
            plan_required: false,
            lifecycle_delete: false,
        }
    }

    /// True when the protection rules allow evicting it (see module docs).
    pub fn is_evictable(&self) -> bool {
        !self.pinned && (!self.plan_required || self.lifecycle_delete)
    }
}

/// A cache eviction policy, as a node's store uses it. Object safe.
pub trait EvictionPolicy: Send {
    /// A short name for reports (`lru`, `lfu`, `predictive`, `min`).
    fn name(&self) -> &'static str;

    /// Notes that `layer` (of `size` bytes) was read or written at `now`.
    fn record_access(&mut self, now: Timestamp, layer: LayerId, size: u64);

    /// Picks victims among `candidates` to free at least `bytes_to_free`, in
    /// eviction order. Never returns a candidate that is not evictable.
    fn choose_victims(
        &mut self,
        now: Timestamp,
        candidates: &[CandidateLayer],
        bytes_to_free: u64,
    ) -> Vec<LayerId>;

    /// Drops what the policy knows about a layer that left the store.
    fn forget(&mut self, layer: LayerId) {
        let _ = layer;
    }
}

/// Takes victims from `ordered` (already filtered and sorted) until enough
/// bytes are freed.
fn take_until(
    ordered: impl IntoIterator<Item = CandidateLayer>,
    bytes_to_free: u64,
) -> Vec<LayerId> {
    let mut freed = 0u64;
    let mut out = Vec::new();
    for c in ordered {
        if freed >= bytes_to_free {
            break;
        }
        freed = freed.saturating_add(c.size);
        out.push(c.layer);
    }
    out
}

/// Plain least-recently-used.
#[derive(Debug, Clone, Default)]
pub struct Lru {
    tick: u64,
    last: BTreeMap<LayerId, u64>,
}

impl Lru {
    /// An empty LRU.
    pub fn new() -> Self {
        Self::default()
    }

    /// Recency rank of a layer (higher is more recent; 0 = never seen).
    pub fn rank(&self, layer: LayerId) -> u64 {
        self.last.get(&layer).copied().unwrap_or(0)
    }
}

impl EvictionPolicy for Lru {
    fn name(&self) -> &'static str {
        "lru"
    }

    fn record_access(&mut self, _now: Timestamp, layer: LayerId, _size: u64) {
        self.tick += 1;
        self.last.insert(layer, self.tick);
    }

    fn choose_victims(
        &mut self,
        _now: Timestamp,
        candidates: &[CandidateLayer],
        bytes_to_free: u64,
    ) -> Vec<LayerId> {
        let mut c: Vec<(u64, CandidateLayer)> = candidates
            .iter()
            .filter(|c| c.is_evictable())
            .map(|c| (self.rank(c.layer), *c))
            .collect();
        c.sort_by_key(|(rank, c)| (*rank, c.layer));
        take_until(c.into_iter().map(|(_, c)| c), bytes_to_free)
    }

    fn forget(&mut self, layer: LayerId) {
        self.last.remove(&layer);
    }
}

/// Least-frequently-used; ties go to the least recently used.
#[derive(Debug, Clone, Default)]
pub struct Lfu {
    tick: u64,
    stats: BTreeMap<LayerId, (u64, u64)>,
}

impl Lfu {
    /// An empty LFU.
    pub fn new() -> Self {
        Self::default()
    }
}

impl EvictionPolicy for Lfu {
    fn name(&self) -> &'static str {
        "lfu"
    }

    fn record_access(&mut self, _now: Timestamp, layer: LayerId, _size: u64) {
        self.tick += 1;
        let e = self.stats.entry(layer).or_insert((0, 0));
        e.0 += 1;
        e.1 = self.tick;
    }

    fn choose_victims(
        &mut self,
        _now: Timestamp,
        candidates: &[CandidateLayer],
        bytes_to_free: u64,
    ) -> Vec<LayerId> {
        let mut c: Vec<((u64, u64), CandidateLayer)> = candidates
            .iter()
            .filter(|c| c.is_evictable())
            .map(|c| (self.stats.get(&c.layer).copied().unwrap_or((0, 0)), *c))
            .collect();
        c.sort_by_key(|(k, c)| (*k, c.layer));
        take_until(c.into_iter().map(|(_, c)| c), bytes_to_free)
    }

    // Frequency is kept after eviction on purpose (perfect LFU), so a layer
    // that comes back keeps its history.
}

/// Belady's MIN: evicts what is next needed furthest in the future.
///
/// It is given every future access of this node up front. It is optimal for
/// equal-sized layers and a single cache; with mixed sizes it is the classic
/// furthest-next-use heuristic (largest first among never-needed layers).
#[derive(Debug, Clone, Default)]
pub struct BeladyMin {
    future: BTreeMap<LayerId, VecDeque<u64>>,
}

impl BeladyMin {
    /// Builds MIN from this node's future accesses as `(time, layer)`, in any
    /// order.
    pub fn new(mut accesses: Vec<(Timestamp, LayerId)>) -> Self {
        accesses.sort();
        let mut future: BTreeMap<LayerId, VecDeque<u64>> = BTreeMap::new();
        for (t, l) in accesses {
            future.entry(l).or_default().push_back(t.0);
        }
        BeladyMin { future }
    }

    /// When `layer` is next needed after the accesses consumed so far.
    pub fn next_use(&self, layer: LayerId) -> Option<Timestamp> {
        self.future.get(&layer)?.front().map(|&t| Timestamp(t))
    }
}

impl EvictionPolicy for BeladyMin {
    fn name(&self) -> &'static str {
        "min"
    }

    fn record_access(&mut self, now: Timestamp, layer: LayerId, _size: u64) {
        if let Some(q) = self.future.get_mut(&layer) {
            while q.front().is_some_and(|&t| t < now.0) {
                q.pop_front();
            }
            if q.front() == Some(&now.0) {
                q.pop_front();
            }
        }
    }

    fn choose_victims(
        &mut self,
        now: Timestamp,
        candidates: &[CandidateLayer],
        bytes_to_free: u64,
    ) -> Vec<LayerId> {
        let mut c: Vec<(u64, CandidateLayer)> = candidates
            .iter()
            .filter(|c| c.is_evictable())
            .map(|c| {
                // Accesses strictly before `now` that were never recorded are stale.
                let next = self
                    .future
                    .get(&c.layer)
                    .and_then(|q| q.iter().find(|&&t| t >= now.0).copied())
                    .unwrap_or(u64::MAX);
                (next, *c)
            })
            .collect();
        c.sort_by(|(na, a), (nb, b)| {
            nb.cmp(na)
                .then(b.size.cmp(&a.size))
                .then(a.layer.cmp(&b.layer))
        });
        take_until(c.into_iter().map(|(_, c)| c), bytes_to_free)
    }
}

/// Region-wide signals a [`Predictive`] policy reads, shared by the nodes of a
/// region and replaced whenever the plan is recomputed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LayerSignals {
    /// Forecast pulls of each layer in the region over the horizon.
    pub regional_forecast: BTreeMap<LayerId, f64>,
    /// Threat score 0-100 of each layer.
    pub threat: BTreeMap<LayerId, f64>,
    /// Nodes in the region (the share of regional demand one node expects).
    pub region_nodes: u32,
}

/// Settings of the predictive eviction policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PredictiveConfig {
    /// How the node's own usage is bucketed and forecast.
    pub usage: UsageConfig,
    /// Forecast horizon in buckets. Default 6.
    pub horizon_buckets: u32,
    /// Fraction of expected use a threat score of 100 takes away. Default 0.5.
    pub threat_discount: f64,
    /// Expected use is divided by `size ^ size_exponent` before ranking, so
    /// that a large layer must earn its space (0 ignores size). Default 0.3,
    /// a compromise between hit ratio by requests and by bytes.
    pub size_exponent: f64,
    /// Weight of recency: `recency_weight / (1 + hours since last access)` is
    /// added to the expected use, so a layer just read is not dropped before
    /// its history builds up. Default 1.0.
    pub recency_weight: f64,
}

impl Default for PredictiveConfig {
    fn default() -> Self {
        PredictiveConfig {
            usage: UsageConfig::default(),
            horizon_buckets: 6,
            threat_discount: 0.5,
            size_exponent: 0.3,
            recency_weight: 1.0,
        }
    }
}

/// Evicts the layers with the lowest threat-discounted expected use per byte.
///
/// Expected use of a layer = the node's own forecast over the horizon + its
/// share of the region's forecast + a recency term
/// (`recency_weight / (1 + hours since last access)`), times
/// `1 - threat_discount * threat / 100`. Layers are ranked by expected use
/// divided by `size ^ size_exponent`. Ties go least recently used first.
/// Layers whose lifecycle says delete go first of all.
#[derive(Debug, Clone, Default)]
pub struct Predictive {
    config: PredictiveConfig,
    usage: UsageTracker,
    recency: Lru,
    signals: Arc<LayerSignals>,
}

impl Predictive {
    /// A predictive policy with no regional signals yet.
    pub fn new(config: PredictiveConfig) -> Self {
        Predictive {
            usage: UsageTracker::new(config.usage.clone()),
            config,
            recency: Lru::new(),
            signals: Arc::new(LayerSignals::default()),
        }
    }

    /// Replaces the regional signals (after a plan recomputation).
    pub fn set_signals(&mut self, signals: Arc<LayerSignals>) {
        self.signals = signals;
    }

    /// Records a manifest pull: its layers are about to be read.
    pub fn record_manifest_pull(&mut self, now: Timestamp, layers: &[LayerId]) {
        self.usage.record_manifest_pull(now, layers);
    }

    /// The threat-discounted expected use of a layer over the horizon.
    pub fn expected_use(&self, now: Timestamp, layer: LayerId) -> f64 {
        let own = self
            .usage
            .forecast(now, layer, self.config.horizon_buckets)
            .total();
        let regional = self
            .signals
            .regional_forecast
            .get(&layer)
            .copied()
            .unwrap_or(0.0);
        let share = regional / f64::from(self.signals.region_nodes.max(1));
        let recency = match self.usage.series(layer).and_then(|s| s.last_access()) {
            Some(t) => self.config.recency_weight / (1.0 + now.since(t) as f64 / 3600.0),
            None => 0.0,
        };
        let threat = self
            .signals
            .threat
            .get(&layer)
            .copied()
            .unwrap_or(0.0)
            .clamp(0.0, 100.0);
        (own + share + recency)
            * (1.0 - self.config.threat_discount.clamp(0.0, 1.0) * threat / 100.0)
    }

    /// The value a layer is ranked by: expected use per `size ^ size_exponent`.
    pub fn keep_value(&self, now: Timestamp, layer: LayerId, size: u64) -> f64 {
        self.expected_use(now, layer) / (size.max(1) as f64).powf(self.config.size_exponent)
    }
}

impl EvictionPolicy for Predictive {
    fn name(&self) -> &'static str {
        "predictive"
    }

    fn record_access(&mut self, now: Timestamp, layer: LayerId, size: u64) {
        self.usage.record_pull(now, layer);
        self.recency.record_access(now, layer, size);
    }

    fn choose_victims(
        &mut self,
        now: Timestamp,
        candidates: &[CandidateLayer],
        bytes_to_free: u64,
    ) -> Vec<LayerId> {
        let mut c: Vec<(bool, f64, u64, CandidateLayer)> = candidates
            .iter()
            .filter(|c| c.is_evictable())
            .map(|c| {
                (
                    !c.lifecycle_delete,
                    self.keep_value(now, c.layer, c.size),
                    self.recency.rank(c.layer),
                    *c,
                )
            })
            .collect();
        c.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then(a.1.total_cmp(&b.1))
                .then(a.2.cmp(&b.2))
                .then(a.3.layer.cmp(&b.3.layer))
        });
        take_until(c.into_iter().map(|(_, _, _, c)| c), bytes_to_free)
    }

    fn forget(&mut self, layer: LayerId) {
        self.recency.forget(layer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Replays `trace` on a cache of `slots` unit-sized layers and counts hits.
    fn hits(policy: &mut dyn EvictionPolicy, trace: &[u32], slots: usize) -> usize {
        let mut cache: Vec<LayerId> = Vec::new();
        let mut hits = 0;
        for (t, &l) in trace.iter().enumerate() {
            let now = Timestamp(t as u64);
            let layer = LayerId(l);
            if cache.contains(&layer) {
                hits += 1;
            } else {
                if cache.len() >= slots {
                    let candidates: Vec<CandidateLayer> =
                        cache.iter().map(|&l| CandidateLayer::new(l, 1)).collect();
                    let victims = policy.choose_victims(now, &candidates, 1);
                    assert_eq!(victims.len(), 1);
                    cache.retain(|c| *c != victims[0]);
                    policy.forget(victims[0]);
                }
                cache.push(layer);
            }
            policy.record_access(now, layer, 1);
        }
        hits
    }

    fn min_for(trace: &[u32]) -> BeladyMin {
        BeladyMin::new(
            trace
                .iter()
                .enumerate()
                .map(|(t, &l)| (Timestamp(t as u64), LayerId(l)))
                .collect(),
        )
    }

    #[test]
    fn lru_and_lfu_orders() {
        let mut lru = Lru::new();
        let mut lfu = Lfu::new();
        for (t, l) in [(0, 1), (1, 2), (2, 1), (3, 3), (4, 1), (5, 2)] {
            lru.record_access(Timestamp(t), LayerId(l), 1);
            lfu.record_access(Timestamp(t), LayerId(l), 1);
        }
        let c: Vec<_> = [1, 2, 3]
            .map(|l| CandidateLayer::new(LayerId(l), 1))
            .to_vec();
        assert_eq!(
            lru.choose_victims(Timestamp(6), &c, 2),
            vec![LayerId(3), LayerId(1)]
        );
        assert_eq!(
            lfu.choose_victims(Timestamp(6), &c, 2),
            vec![LayerId(3), LayerId(2)]
        );
    }

    #[test]
    fn predictive_evicts_risky_rarely_used_first() {
        let mut p = Predictive::new(PredictiveConfig::default());
        let signals = LayerSignals {
            regional_forecast: [(LayerId(1), 10.0), (LayerId(2), 10.0), (LayerId(3), 40.0)].into(),
            threat: [(LayerId(2), 90.0)].into(),
            region_nodes: 10,
        };
        p.set_signals(Arc::new(signals));
        let c: Vec<_> = [1, 2, 3]
            .map(|l| CandidateLayer::new(LayerId(l), 1))
            .to_vec();
        assert_eq!(p.choose_victims(Timestamp(0), &c, 1), vec![LayerId(2)]);
        let mut doomed = c.clone();
        doomed[2].lifecycle_delete = true;
        assert_eq!(p.choose_victims(Timestamp(0), &doomed, 1), vec![LayerId(3)]);
    }

    #[test]
    fn min_example() {
        let trace = [1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5];
        assert_eq!(hits(&mut min_for(&trace), &trace, 3), 5);
        assert_eq!(hits(&mut Lru::new(), &trace, 3), 2);
    }

    fn policies() -> Vec<Box<dyn EvictionPolicy>> {
        vec![
            Box::new(Lru::new()),
            Box::new(Lfu::new()),
            Box::new(Predictive::new(PredictiveConfig::default())),
            Box::new(BeladyMin::new(Vec::new())),
        ]
    }

    proptest! {
        #[test]
        fn min_is_never_beaten(trace in proptest::collection::vec(0u32..12, 1..200), slots in 1usize..6) {
            let best = hits(&mut min_for(&trace), &trace, slots);
            prop_assert!(best >= hits(&mut Lru::new(), &trace, slots));
            prop_assert!(best >= hits(&mut Lfu::new(), &trace, slots));
            prop_assert!(best >= hits(&mut Predictive::new(PredictiveConfig::default()), &trace, slots));
        }

        #[test]
        fn protected_layers_are_never_victims(
            flags in proptest::collection::vec((any::<bool>(), any::<bool>(), any::<bool>(), 1u64..100), 0..40),
            need in 0u64..5000,
        ) {
            let candidates: Vec<CandidateLayer> = flags.iter().enumerate().map(|(i, &(pinned, plan_required, lifecycle_delete, size))| CandidateLayer {
                layer: LayerId(i as u32), size, pinned, plan_required, lifecycle_delete,
            }).collect();
            for mut p in policies() {
                for (i, c) in candidates.iter().enumerate() {
                    p.record_access(Timestamp(i as u64), c.layer, c.size);
                }
                let victims = p.choose_victims(Timestamp(1000), &candidates, need);
                let evictable: u64 = candidates.iter().filter(|c| c.is_evictable()).map(|c| c.size).sum();
                let freed: u64 = victims.iter().map(|v| candidates[v.0 as usize].size).sum();
                for v in &victims {
                    let c = candidates[v.0 as usize];
                    prop_assert!(!c.pinned, "{} chose a pinned layer", p.name());
                    prop_assert!(!c.plan_required || c.lifecycle_delete, "{} chose a required copy", p.name());
                }
                prop_assert!(freed >= need.min(evictable));
            }
        }
    }
}
