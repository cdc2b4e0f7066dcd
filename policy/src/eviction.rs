//! Eviction: which cached layers a node gives up when its disk is full.
//!
//! This module owns the [`EvictionPolicy`] trait that a node's store calls,
//! and four implementations behind it:
//!
//! * [`Lru`]: plain least-recently-used; the node's default.
//! * [`Lfu`]: least-frequently-used, ties by recency.
//! * [`Predictive`]: a blend of recency and expected hits per byte (learned
//!   reuse by size and hit count, plus the node's own forecast and its share
//!   of the region's, discounted by threat, so that high-risk, rarely used
//!   layers go first), leaning between the two as an LRU shadow shows which
//!   wins on this node ([`crate::guard`]). Layers whose lifecycle says delete
//!   go before all others.
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

use crate::guard::{AdaptiveGuard, BaseOrder, GuardConfig};
use crate::reuse::{ReuseConfig, ReuseStats};
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
    /// Another node of this node's region keeps the layer, so a miss after
    /// evicting this copy is served by that peer, not the origin
    /// ([`crate::cooperative::is_spare_copy`]). Only [`Predictive`] reads it.
    pub spare_copy: bool,
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
            spare_copy: false,
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
    /// Exponent of the size in [`Predictive::keep_value`], the fixed-size
    /// ranking kept for callers that ask for it; eviction itself ranks by the
    /// learned [`Predictive::value_per_byte`]. Default 0.3.
    pub size_exponent: f64,
    /// Weight of recency in [`Predictive::expected_use`]:
    /// `recency_weight / (1 + hours since last access)` is added to the
    /// expected use. Default 1.0.
    pub recency_weight: f64,
    /// The adaptive guard (LRU shadow and hill climbing).
    pub guard: GuardConfig,
    /// The learned reuse probabilities by size and hits.
    pub reuse: ReuseConfig,
    /// What missing a spare copy ([`CandidateLayer::spare_copy`]: a peer of
    /// the region keeps the layer) costs, relative to missing a layer only
    /// this node holds in its region, in [0, 1]. A candidate's rank in the
    /// blended order is multiplied by it, so 1 ignores peers and 0 gives up
    /// every spare copy before any other. Default 0 (chosen on the train
    /// half of the catalog over 0.5 and 1).
    pub spare_copy_cost: f64,
}

impl Default for PredictiveConfig {
    fn default() -> Self {
        PredictiveConfig {
            usage: UsageConfig::default(),
            horizon_buckets: 6,
            threat_discount: 0.5,
            size_exponent: 0.3,
            recency_weight: 1.0,
            guard: GuardConfig::default(),
            reuse: ReuseConfig::default(),
            spare_copy_cost: 0.0,
        }
    }
}

/// Evicts by a blend of recency and predicted value per byte, leaning
/// between them as the node's [`AdaptiveGuard`] finds it wins or loses
/// against an LRU shadow.
///
/// * Predicted value per byte ([`Predictive::value_per_byte`]): the learned
///   probability that a layer of its size and hit count is requested again
///   ([`ReuseStats`]) plus the node's own forecast and its share of the
///   region's forecast over the horizon, times
///   `1 - threat_discount * threat / 100`.
/// * Order: every evictable candidate gets its position in LRU order and its
///   position in value order (both scaled to (0, 1]); it is ranked by
///   `(1 - lean) * lru_position + lean * value_position`, lowest first, ties
///   least recently used first. With `lean = 0` this is exactly LRU's order
///   among copies of the same kind.
/// * Cooperation: a spare copy's rank ([`CandidateLayer::spare_copy`]: a
///   peer of the region keeps the layer, see [`crate::cooperative`]) is
///   multiplied by [`PredictiveConfig::spare_copy_cost`], since missing it
///   costs a transfer inside the region rather than one from the origin.
///   The region then holds more distinct bytes than nodes that each keep
///   the popular set.
/// * Layers whose lifecycle says delete go first of all.
///
/// Without a capacity ([`Predictive::new`]) there is no guard and the lean
/// stays at [`GuardConfig::initial_lean`]; [`Predictive::with_capacity`] or
/// [`Predictive::set_capacity`] start it.
#[derive(Debug, Clone, Default)]
pub struct Predictive {
    config: PredictiveConfig,
    usage: UsageTracker,
    recency: Lru,
    signals: Arc<LayerSignals>,
    reuse: ReuseStats,
    guard: Option<AdaptiveGuard>,
}

impl Predictive {
    /// A predictive policy with no regional signals yet and no guard.
    pub fn new(config: PredictiveConfig) -> Self {
        Predictive {
            usage: UsageTracker::new(config.usage.clone()),
            reuse: ReuseStats::new(config.reuse.clone()),
            recency: Lru::new(),
            signals: Arc::new(LayerSignals::default()),
            guard: None,
            config,
        }
    }

    /// A predictive policy for a node of `capacity_bytes`, guarded by an LRU
    /// shadow of that size.
    pub fn with_capacity(config: PredictiveConfig, capacity_bytes: u64) -> Self {
        let mut p = Predictive::new(config);
        p.set_capacity(capacity_bytes);
        p
    }

    /// Starts (or restarts) the guard for a node of `capacity_bytes`.
    pub fn set_capacity(&mut self, capacity_bytes: u64) {
        self.guard = Some(AdaptiveGuard::new(
            self.config.guard.clone(),
            capacity_bytes,
        ));
    }

    /// Replaces the regional signals (after a plan recomputation).
    pub fn set_signals(&mut self, signals: Arc<LayerSignals>) {
        self.signals = signals;
    }

    /// Records a manifest pull: its layers are about to be read.
    pub fn record_manifest_pull(&mut self, now: Timestamp, layers: &[LayerId]) {
        self.usage.record_manifest_pull(now, layers);
    }

    /// Records a request of `layer` and whether the node had it. Callers
    /// that know (the simulator) use this; [`EvictionPolicy::record_access`]
    /// guesses `hit` from whether the layer is known and not forgotten.
    pub fn record_request(&mut self, now: Timestamp, layer: LayerId, size: u64, hit: bool) {
        self.usage.record_pull(now, layer);
        self.recency.record_access(now, layer, size);
        self.reuse.record_request(layer, size);
        if let Some(g) = &mut self.guard {
            g.record_request(now, layer, size, hit);
        }
    }

    /// Records a request judged at the level of the node's region (see
    /// [`AdaptiveGuard::record_regional_request`]): `hit` when the node or a
    /// peer of its region served it, `peer_shadow_hit` when some peer's LRU
    /// shadow holds it. Without a guard it is [`Predictive::record_request`].
    pub fn record_regional_request(
        &mut self,
        now: Timestamp,
        layer: LayerId,
        size: u64,
        hit: bool,
        peer_shadow_hit: bool,
    ) {
        self.usage.record_pull(now, layer);
        self.recency.record_access(now, layer, size);
        self.reuse.record_request(layer, size);
        if let Some(g) = &mut self.guard {
            g.record_regional_request(now, layer, size, hit, peer_shadow_hit);
        }
    }

    /// How far eviction leans toward prediction (0 = LRU's order).
    pub fn lean(&self) -> f64 {
        self.guard
            .as_ref()
            .map_or(self.config.guard.initial_lean, AdaptiveGuard::lean)
            .clamp(0.0, 1.0)
    }

    /// The node's guard, once it has a capacity.
    pub fn guard(&self) -> Option<&AdaptiveGuard> {
        self.guard.as_ref()
    }

    /// The factor the node's pre-cache budget is multiplied by (see
    /// [`AdaptiveGuard::precache_scale`]); the lean when there is no guard.
    pub fn precache_scale(&self) -> f64 {
        self.guard
            .as_ref()
            .map_or(self.lean(), AdaptiveGuard::precache_scale)
    }

    fn threat_factor(&self, layer: LayerId) -> f64 {
        let threat = self
            .signals
            .threat
            .get(&layer)
            .copied()
            .unwrap_or(0.0)
            .clamp(0.0, 100.0);
        1.0 - self.config.threat_discount.clamp(0.0, 1.0) * threat / 100.0
    }

    fn forecast_use(&self, now: Timestamp, layer: LayerId) -> f64 {
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
        own + regional / f64::from(self.signals.region_nodes.max(1))
    }

    /// The threat-discounted expected use of a layer over the horizon.
    pub fn expected_use(&self, now: Timestamp, layer: LayerId) -> f64 {
        let recency = match self.usage.series(layer).and_then(|s| s.last_access()) {
            Some(t) => self.config.recency_weight / (1.0 + now.since(t) as f64 / 3600.0),
            None => 0.0,
        };
        (self.forecast_use(now, layer) + recency) * self.threat_factor(layer)
    }

    /// The fixed-size ranking: expected use per `size ^ size_exponent`.
    pub fn keep_value(&self, now: Timestamp, layer: LayerId, size: u64) -> f64 {
        self.expected_use(now, layer) / (size.max(1) as f64).powf(self.config.size_exponent)
    }

    /// Expected hits per byte held over the horizon: for byte hits, a byte
    /// of a layer is worth the number of times the layer is expected to be
    /// served again. Learned reuse by size and hits, plus the forecasts,
    /// threat-discounted.
    pub fn value_per_byte(&self, now: Timestamp, layer: LayerId, size: u64) -> f64 {
        let learned = self.reuse.layer_reuse_probability(layer, size);
        (learned + self.forecast_use(now, layer)) * self.threat_factor(layer)
    }

    /// Every evictable candidate in eviction order (first to go first).
    pub fn eviction_order(
        &self,
        now: Timestamp,
        candidates: &[CandidateLayer],
    ) -> Vec<CandidateLayer> {
        let evictable: Vec<CandidateLayer> = candidates
            .iter()
            .filter(|c| c.is_evictable())
            .copied()
            .collect();
        let n = evictable.len();
        if n == 0 {
            return Vec::new();
        }
        // Positions run from 1/n to 1, never 0, so that a spare copy's
        // discounted rank falls below even the first unique candidate's.
        let scale = n as f64;
        // The baseline half of the blend: LRU's order, or LFU's while the
        // node's ghost LFU leads its ghost LRU.
        let frequency = self
            .guard
            .as_ref()
            .filter(|g| g.base_order() == BaseOrder::Frequency);
        let mut by_recency: Vec<usize> = (0..n).collect();
        by_recency.sort_by_key(|&i| {
            let layer = evictable[i].layer;
            (
                frequency.map_or(0, |g| g.frequency(layer)),
                self.recency.rank(layer),
                layer,
            )
        });
        let values: Vec<f64> = evictable
            .iter()
            .map(|c| self.value_per_byte(now, c.layer, c.size))
            .collect();
        let mut by_value: Vec<usize> = (0..n).collect();
        by_value.sort_by(|&a, &b| {
            values[a]
                .total_cmp(&values[b])
                .then(
                    self.recency
                        .rank(evictable[a].layer)
                        .cmp(&self.recency.rank(evictable[b].layer)),
                )
                .then(evictable[a].layer.cmp(&evictable[b].layer))
        });
        let mut position = vec![(0.0f64, 0.0f64); n];
        for (pos, &i) in by_recency.iter().enumerate() {
            position[i].0 = (pos + 1) as f64 / scale;
        }
        for (pos, &i) in by_value.iter().enumerate() {
            position[i].1 = (pos + 1) as f64 / scale;
        }
        let lean = self.lean();
        let spare_cost = if self.config.spare_copy_cost.is_finite() {
            self.config.spare_copy_cost.clamp(0.0, 1.0)
        } else {
            1.0
        };
        let mut keyed: Vec<(bool, f64, u64, CandidateLayer)> = evictable
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (r, v) = position[i];
                let miss_cost = if c.spare_copy { spare_cost } else { 1.0 };
                (
                    !c.lifecycle_delete,
                    ((1.0 - lean) * r + lean * v) * miss_cost,
                    self.recency.rank(c.layer),
                    *c,
                )
            })
            .collect();
        keyed.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then(a.1.total_cmp(&b.1))
                .then(a.2.cmp(&b.2))
                .then(a.3.layer.cmp(&b.3.layer))
        });
        keyed.into_iter().map(|(_, _, _, c)| c).collect()
    }
}

impl EvictionPolicy for Predictive {
    fn name(&self) -> &'static str {
        "predictive"
    }

    fn record_access(&mut self, now: Timestamp, layer: LayerId, size: u64) {
        let hit = self.recency.rank(layer) != 0;
        self.record_request(now, layer, size, hit);
    }

    fn choose_victims(
        &mut self,
        now: Timestamp,
        candidates: &[CandidateLayer],
        bytes_to_free: u64,
    ) -> Vec<LayerId> {
        take_until(self.eviction_order(now, candidates), bytes_to_free)
    }

    fn forget(&mut self, layer: LayerId) {
        self.recency.forget(layer);
        self.reuse.forget(layer);
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
    fn a_spare_copy_goes_before_a_copy_only_this_node_holds() {
        let config = PredictiveConfig {
            spare_copy_cost: 0.0,
            guard: GuardConfig {
                initial_lean: 0.0,
                ..GuardConfig::default()
            },
            ..PredictiveConfig::default()
        };
        let mut p = Predictive::with_capacity(config.clone(), 1000);
        for (t, l) in [(0, 1), (1, 2), (2, 3)] {
            p.record_request(Timestamp(t), LayerId(l), 10, false);
        }
        let mut c: Vec<_> = [1, 2, 3]
            .map(|l| CandidateLayer::new(LayerId(l), 10))
            .to_vec();
        // Without peers, the lean-0 order is LRU's.
        assert_eq!(p.choose_victims(Timestamp(3), &c, 10), vec![LayerId(1)]);
        // A peer keeps the most recent one: it goes first.
        c[2].spare_copy = true;
        assert_eq!(p.choose_victims(Timestamp(3), &c, 10), vec![LayerId(3)]);
        // With a spare copy costing as much as any other, peers are ignored.
        let mut blind = Predictive::with_capacity(
            PredictiveConfig {
                spare_copy_cost: 1.0,
                ..config
            },
            1000,
        );
        for (t, l) in [(0, 1), (1, 2), (2, 3)] {
            blind.record_request(Timestamp(t), LayerId(l), 10, false);
        }
        assert_eq!(blind.choose_victims(Timestamp(3), &c, 10), vec![LayerId(1)]);
    }

    #[test]
    fn while_the_ghost_lfu_leads_the_lean_0_order_is_lfus() {
        let config = PredictiveConfig {
            guard: GuardConfig {
                sub_window_requests: 4,
                sub_windows: 2,
                initial_lean: 0.0,
                step_up: 0.0,
                ..GuardConfig::default()
            },
            ..PredictiveConfig::default()
        };
        let mut p = Predictive::with_capacity(config, 100);
        let mut t = 0;
        for round in 0..20u32 {
            p.record_request(Timestamp(t), LayerId(1), 50, false);
            t += 1;
            for k in 0..3 {
                p.record_request(Timestamp(t), LayerId(1000 + round * 3 + k), 50, false);
                t += 1;
            }
        }
        assert_eq!(p.guard().unwrap().base_order(), BaseOrder::Frequency);
        // Layer 1 is the least recent but by far the most frequent.
        let c: Vec<_> = [1, 1058, 1059]
            .map(|l| CandidateLayer::new(LayerId(l), 50))
            .to_vec();
        assert_eq!(p.choose_victims(Timestamp(t), &c, 50), vec![LayerId(1058)]);
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
                layer: LayerId(i as u32), size, pinned, plan_required, lifecycle_delete, spare_copy: i % 3 == 0,
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
