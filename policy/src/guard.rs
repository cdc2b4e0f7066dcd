//! Guard: keeps a node's predictive policy from losing to plain LRU.
//!
//! This module owns one node's [`AdaptiveGuard`]: a metadata-only shadow of
//! what an LRU cache of the node's size would hold, a sliding window that
//! compares the byte hits the node actually got with the byte hits the shadow
//! would have got, and the hill-climbing *lean* that the eviction order and
//! the pre-cache budget read. It owns no data and decides nothing by itself.
//!
//! # Mechanism
//!
//! * **Shadow.** Every request (layer, size, whether the node had it) is also
//!   replayed on a ghost LRU: layer ids and sizes only, evicted oldest first
//!   down to the node's capacity. It answers "would LRU have hit this?".
//! * **Ghost experts.** With [`GuardConfig::frequency_expert`] (the
//!   default), every request also goes to a ghost LFU of the same size
//!   ([`GhostLfu`]). At the end of each sub-window the node takes as its
//!   baseline order ([`AdaptiveGuard::base_order`]) the order of whichever
//!   ghost got more byte hits over the window, LRU on ties: follow the
//!   leader, as ARC and LeCaR do with their ghost lists, with no misses paid
//!   to find out.
//! * **Window.** Requests are summed into sub-windows of
//!   [`GuardConfig::sub_window_requests`] requests; the last
//!   [`GuardConfig::sub_windows`] of them form the sliding window. At the end
//!   of each sub-window the guard compares actual and shadow byte hits over
//!   the whole window.
//! * **Hill climbing.** `lean` runs from 0 (evict exactly as LRU would) to 1
//!   (evict by predicted value only). When the shadow is ahead by more than
//!   [`GuardConfig::tolerance`] of the window's bytes, `lean` drops by
//!   [`GuardConfig::step_down`]; when the node is at least level with the
//!   shadow, it climbs back by [`GuardConfig::step_up`]; in between it holds.
//!   It falls faster than it climbs, as a congestion window does, so a
//!   workload on which prediction loses is handed to recency within a few
//!   sub-windows, and prediction gets retried slowly afterwards.
//! * **Pre-cache throttle.** [`AdaptiveGuard::precache_scale`] is `lean`
//!   while the node keeps up with the shadow and 0 while the shadow is
//!   ahead: copies placed ahead of demand are what can make a node lose, so
//!   they stop first.
//! * **Survival time.** The window also measures how fast misses fill the
//!   node (bytes fetched per second), which gives the characteristic time a
//!   layer survives unrequested ([`AdaptiveGuard::survival_secs`], Che's
//!   approximation): the pre-cache test uses it as "the chance a copy is still
//!   there when its pulls come".
//!
//! # State per node
//!
//! The ghost LRU list (one entry per layer LRU would hold, at most
//! [`GuardConfig::max_ghost_entries`]), the ghost LFU (as many resident
//! entries, and at most four times as many request counts), `sub_windows`
//! counters of six integers, the leading expert and the lean. No clock is
//! read: requests carry `now`.
//!
//! # Reaction time
//!
//! From full prediction to pure recency takes `ceil(1 / step_down)`
//! sub-windows while the shadow stays ahead: with the defaults, 4 sub-windows
//! of 32 requests, 128 requests of the node. Climbing back from 0 to 1 takes
//! `ceil(1 / step_up)` sub-windows at least level with the shadow (20, 640
//! requests). The leading expert changes at the end of the first sub-window
//! in which the other ghost is ahead over the window (32 requests).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::{LayerId, Timestamp};

/// Settings of the adaptive guard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    /// Requests per sub-window; the lean moves at most once per sub-window.
    /// Default 32.
    pub sub_window_requests: u32,
    /// Sub-windows in the sliding window compared with the shadow. Default 4.
    pub sub_windows: u32,
    /// How far behind the shadow (fraction of the window's requested bytes)
    /// the node may fall before the lean drops. Default 0 (any lag counts;
    /// chosen on the train half of the catalog over 0.01).
    pub tolerance: f64,
    /// Lean taken away per sub-window while the shadow is ahead. Default 0.25.
    pub step_down: f64,
    /// Lean given back per sub-window while the node keeps up. Default 0.05
    /// (chosen on the train half of the catalog over 0.1; the suite tunes it).
    pub step_up: f64,
    /// Lean at start. Default 1.0 (trust prediction until shown otherwise).
    pub initial_lean: f64,
    /// Most ghost entries kept, whatever the capacity. Default 65536.
    pub max_ghost_entries: usize,
    /// Keep a ghost LFU beside the ghost LRU and follow whichever of the
    /// two got more byte hits over the window ([`AdaptiveGuard::base_order`]).
    /// Default true; false keeps recency as the only baseline order.
    pub frequency_expert: bool,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            sub_window_requests: 32,
            sub_windows: 4,
            tolerance: 0.0,
            step_down: 0.25,
            step_up: 0.05,
            initial_lean: 1.0,
            max_ghost_entries: 65_536,
            frequency_expert: true,
        }
    }
}

/// Why a [`GuardConfig`] is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GuardConfigError {
    /// A count that must be positive is zero.
    #[error("guard setting {0} must be greater than zero")]
    Zero(&'static str),
    /// A fraction outside [0, 1].
    #[error("guard setting {name} = {value} must be in [0, 1]")]
    Fraction {
        /// Which key.
        name: &'static str,
        /// Its value.
        value: f64,
    },
}

impl GuardConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), GuardConfigError> {
        if self.sub_window_requests == 0 {
            return Err(GuardConfigError::Zero("sub_window_requests"));
        }
        if self.sub_windows == 0 {
            return Err(GuardConfigError::Zero("sub_windows"));
        }
        if self.max_ghost_entries == 0 {
            return Err(GuardConfigError::Zero("max_ghost_entries"));
        }
        for (name, value) in [
            ("tolerance", self.tolerance),
            ("step_down", self.step_down),
            ("step_up", self.step_up),
            ("initial_lean", self.initial_lean),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(GuardConfigError::Fraction { name, value });
            }
        }
        Ok(())
    }
}

/// A metadata-only LRU: which layers an LRU cache of `capacity` bytes would
/// hold. No data, only ids and sizes.
#[derive(Debug, Clone, Default)]
pub struct GhostLru {
    capacity: u64,
    max_entries: usize,
    used: u64,
    tick: u64,
    /// Layer -> (last tick, size).
    entries: BTreeMap<LayerId, (u64, u64)>,
    /// Last tick -> layer, oldest first.
    order: BTreeMap<u64, LayerId>,
}

impl GhostLru {
    /// An empty ghost list for a cache of `capacity` bytes.
    pub fn new(capacity: u64, max_entries: usize) -> Self {
        GhostLru {
            capacity,
            max_entries: max_entries.max(1),
            ..GhostLru::default()
        }
    }

    /// Replays one request; returns whether LRU would have hit.
    pub fn request(&mut self, layer: LayerId, size: u64) -> bool {
        self.tick += 1;
        let hit = match self.entries.get_mut(&layer) {
            Some((tick, held)) => {
                self.order.remove(tick);
                *tick = self.tick;
                self.used = self.used - *held + size;
                *held = size;
                true
            }
            None => {
                if size > self.capacity {
                    return false;
                }
                self.entries.insert(layer, (self.tick, size));
                self.used += size;
                false
            }
        };
        self.order.insert(self.tick, layer);
        while self.used > self.capacity || self.entries.len() > self.max_entries {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((_, size)) = self.entries.remove(&oldest) {
                self.used -= size;
            }
        }
        hit
    }

    /// True when LRU would hold `layer` now (does not count as a request).
    pub fn contains(&self, layer: LayerId) -> bool {
        self.entries.contains_key(&layer)
    }

    /// Bytes the ghost list stands for.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Layers the ghost list stands for.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when it stands for nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A metadata-only LFU: which layers an LFU cache of `capacity` bytes would
/// hold, ranked as [`crate::eviction::Lfu`] ranks them (request count, then
/// least recently requested first; counts outlive residence, as in perfect
/// LFU). A newly requested layer always enters, as a demand fetch does.
///
/// Bounded: at most `max_entries` resident layers, and at most four times
/// that many counts; past that, the half of the non-resident counts that
/// are lowest are forgotten.
#[derive(Debug, Clone, Default)]
pub struct GhostLfu {
    capacity: u64,
    max_entries: usize,
    used: u64,
    tick: u64,
    /// Layer -> (request count, last tick).
    counts: BTreeMap<LayerId, (u64, u64)>,
    /// Resident layer -> size.
    resident: BTreeMap<LayerId, u64>,
    /// Resident layers by (count, last tick), first to go first.
    order: std::collections::BTreeSet<(u64, u64, LayerId)>,
}

impl GhostLfu {
    /// An empty ghost LFU for a cache of `capacity` bytes.
    pub fn new(capacity: u64, max_entries: usize) -> Self {
        GhostLfu {
            capacity,
            max_entries: max_entries.max(1),
            ..GhostLfu::default()
        }
    }

    /// Replays one request; returns whether LFU would have hit.
    pub fn request(&mut self, layer: LayerId, size: u64) -> bool {
        self.tick += 1;
        let entry = self.counts.entry(layer).or_insert((0, 0));
        let before = *entry;
        entry.0 += 1;
        entry.1 = self.tick;
        let after = *entry;
        let hit = match self.resident.get_mut(&layer) {
            Some(held) => {
                self.order.remove(&(before.0, before.1, layer));
                self.used = self.used - *held + size;
                *held = size;
                true
            }
            None => {
                if size > self.capacity {
                    self.prune_counts();
                    return false;
                }
                self.resident.insert(layer, size);
                self.used += size;
                false
            }
        };
        // The layer just requested stays; others go lowest count first.
        while self.used > self.capacity || self.resident.len() > self.max_entries {
            let Some(&(count, tick, victim)) = self.order.first() else {
                break;
            };
            self.order.remove(&(count, tick, victim));
            if let Some(size) = self.resident.remove(&victim) {
                self.used -= size;
            }
        }
        self.order.insert((after.0, after.1, layer));
        self.prune_counts();
        hit
    }

    fn prune_counts(&mut self) {
        let limit = self.max_entries.saturating_mul(4);
        if self.counts.len() <= limit {
            return;
        }
        let mut gone: Vec<(u64, u64, LayerId)> = self
            .counts
            .iter()
            .filter(|(l, _)| !self.resident.contains_key(l))
            .map(|(&l, &(c, t))| (c, t, l))
            .collect();
        gone.sort_unstable();
        gone.truncate(gone.len() / 2 + 1);
        for (_, _, l) in gone {
            self.counts.remove(&l);
        }
    }

    /// How often `layer` was requested, as far as the ghost remembers.
    pub fn count(&self, layer: LayerId) -> u64 {
        self.counts.get(&layer).map_or(0, |&(c, _)| c)
    }

    /// True when LFU would hold `layer` now (does not count as a request).
    pub fn contains(&self, layer: LayerId) -> bool {
        self.resident.contains_key(&layer)
    }

    /// Bytes the ghost stands for.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Counts remembered (resident or not).
    pub fn remembered(&self) -> usize {
        self.counts.len()
    }
}

/// Which baseline order a node's eviction follows under its predictive
/// blend: whichever ghost expert got more byte hits over the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BaseOrder {
    /// Least recently used first (the ghost LRU leads or ties).
    Recency,
    /// Least frequently used first (the ghost LFU leads).
    Frequency,
}

/// Sums over one sub-window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct WindowSums {
    requests: u32,
    requested_bytes: u64,
    actual_hit_bytes: u64,
    shadow_hit_bytes: u64,
    /// Byte hits of the node's own LRU ghost (no peers).
    own_lru_hit_bytes: u64,
    /// Byte hits of the node's LFU ghost.
    lfu_hit_bytes: u64,
    miss_bytes: u64,
    first: Option<Timestamp>,
    last: Option<Timestamp>,
}

/// One node's guard. See the module docs.
#[derive(Debug, Clone)]
pub struct AdaptiveGuard {
    config: GuardConfig,
    capacity: u64,
    shadow: GhostLru,
    frequency: GhostLfu,
    base_order: BaseOrder,
    current: WindowSums,
    window: VecDeque<WindowSums>,
    lean: f64,
    shadow_ahead: bool,
    totals: GuardTotals,
}

/// What a guard has seen since it started, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct GuardTotals {
    /// Bytes requested.
    pub requested_bytes: u64,
    /// Bytes the node served from its own store.
    pub actual_hit_bytes: u64,
    /// Bytes an LRU of the same size would have served.
    pub shadow_hit_bytes: u64,
    /// Sub-windows that ended with the shadow ahead.
    pub behind_windows: u64,
    /// Sub-windows ended.
    pub windows: u64,
}

impl AdaptiveGuard {
    /// A guard for a node of `capacity` bytes. An invalid config falls back
    /// to the default one (callers validate configs when they load them).
    pub fn new(config: GuardConfig, capacity: u64) -> Self {
        let config = if config.validate().is_ok() {
            config
        } else {
            GuardConfig::default()
        };
        AdaptiveGuard {
            shadow: GhostLru::new(capacity, config.max_ghost_entries),
            frequency: GhostLfu::new(capacity, config.max_ghost_entries),
            base_order: BaseOrder::Recency,
            capacity,
            current: WindowSums::default(),
            window: VecDeque::with_capacity(config.sub_windows as usize),
            lean: config.initial_lean,
            shadow_ahead: false,
            totals: GuardTotals::default(),
            config,
        }
    }

    /// Records one request of `layer` at `now`, and whether the node had it.
    pub fn record_request(&mut self, now: Timestamp, layer: LayerId, size: u64, hit: bool) {
        let shadow_hit = self.shadow.request(layer, size);
        let lfu_hit = self.config.frequency_expert && self.frequency.request(layer, size);
        self.record_outcome(now, size, hit, shadow_hit, shadow_hit, lfu_hit);
    }

    /// Records one request judged at the level of the node's region: `hit`
    /// when the node or a peer of its region served it, and the shadow hits
    /// when this node's ghost list or `peer_shadow_hit` (some peer's ghost
    /// list, see [`AdaptiveGuard::shadow_holds`]) holds it. Nodes whose peers
    /// serve each other compare this way: a node can gain local hits by
    /// holding what its peers hold too, and lose the region more than it
    /// gains.
    pub fn record_regional_request(
        &mut self,
        now: Timestamp,
        layer: LayerId,
        size: u64,
        hit: bool,
        peer_shadow_hit: bool,
    ) {
        let own = self.shadow.request(layer, size);
        let lfu_hit = self.config.frequency_expert && self.frequency.request(layer, size);
        self.record_outcome(now, size, hit, own || peer_shadow_hit, own, lfu_hit);
    }

    /// True when this node's LRU shadow holds `layer` (not a request).
    pub fn shadow_holds(&self, layer: LayerId) -> bool {
        self.shadow.contains(layer)
    }

    fn record_outcome(
        &mut self,
        now: Timestamp,
        size: u64,
        hit: bool,
        shadow_hit: bool,
        own_lru_hit: bool,
        lfu_hit: bool,
    ) {
        let w = &mut self.current;
        if own_lru_hit {
            w.own_lru_hit_bytes += size;
        }
        if lfu_hit {
            w.lfu_hit_bytes += size;
        }
        w.requests += 1;
        w.requested_bytes += size;
        if hit {
            w.actual_hit_bytes += size;
        } else {
            w.miss_bytes += size;
        }
        if shadow_hit {
            w.shadow_hit_bytes += size;
        }
        w.first.get_or_insert(now);
        w.last = Some(now);
        self.totals.requested_bytes += size;
        self.totals.actual_hit_bytes += if hit { size } else { 0 };
        self.totals.shadow_hit_bytes += if shadow_hit { size } else { 0 };
        if w.requests >= self.config.sub_window_requests {
            self.end_sub_window();
        }
    }

    fn window_sums(&self) -> WindowSums {
        let mut s = WindowSums::default();
        for w in &self.window {
            s.requests += w.requests;
            s.requested_bytes += w.requested_bytes;
            s.actual_hit_bytes += w.actual_hit_bytes;
            s.shadow_hit_bytes += w.shadow_hit_bytes;
            s.own_lru_hit_bytes += w.own_lru_hit_bytes;
            s.lfu_hit_bytes += w.lfu_hit_bytes;
            s.miss_bytes += w.miss_bytes;
            s.first = match (s.first, w.first) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            s.last = s.last.max(w.last);
        }
        s
    }

    fn end_sub_window(&mut self) {
        let done = std::mem::take(&mut self.current);
        if self.window.len() >= self.config.sub_windows as usize {
            self.window.pop_front();
        }
        self.window.push_back(done);
        self.totals.windows += 1;
        let s = self.window_sums();
        // Follow the leader among the ghost experts: no live exploration,
        // the ghosts already say which order would have done better here.
        self.base_order = if s.lfu_hit_bytes > s.own_lru_hit_bytes {
            BaseOrder::Frequency
        } else {
            BaseOrder::Recency
        };
        let gap = s.shadow_hit_bytes as f64 - s.actual_hit_bytes as f64;
        let allowed = self.config.tolerance * s.requested_bytes as f64;
        if gap > allowed {
            self.lean = (self.lean - self.config.step_down).max(0.0);
            self.shadow_ahead = true;
            self.totals.behind_windows += 1;
        } else {
            self.shadow_ahead = false;
            if gap <= 0.0 {
                self.lean = (self.lean + self.config.step_up).min(1.0);
            }
        }
    }

    /// How far eviction leans toward prediction: 0 is exactly LRU's order,
    /// 1 is predicted value only.
    pub fn lean(&self) -> f64 {
        self.lean
    }

    /// The baseline order the node follows: the ghost expert (LRU or LFU of
    /// the node's size) with more byte hits over the last window.
    pub fn base_order(&self) -> BaseOrder {
        self.base_order
    }

    /// How often `layer` was requested, as the node's ghost LFU remembers.
    pub fn frequency(&self, layer: LayerId) -> u64 {
        self.frequency.count(layer)
    }

    /// True when the last sub-window ended with the shadow ahead.
    pub fn shadow_ahead(&self) -> bool {
        self.shadow_ahead
    }

    /// The factor the node's pre-cache budget is multiplied by: 0 while the
    /// shadow is ahead, else the lean.
    pub fn precache_scale(&self) -> f64 {
        if self.shadow_ahead {
            0.0
        } else {
            self.lean
        }
    }

    /// Seconds a layer is expected to stay on the node unrequested: capacity
    /// over the rate misses bring in new bytes over the sliding window (Che's
    /// characteristic time). `None` until the window has seen misses over a
    /// span of time.
    pub fn survival_secs(&self) -> Option<f64> {
        let mut s = self.window_sums();
        let c = &self.current;
        s.miss_bytes += c.miss_bytes;
        s.first = match (s.first, c.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        s.last = s.last.max(c.last);
        let (Some(first), Some(last)) = (s.first, s.last) else {
            return None;
        };
        let span = last.since(first);
        if span == 0 || s.miss_bytes == 0 {
            return None;
        }
        Some(self.capacity as f64 * span as f64 / s.miss_bytes as f64)
    }

    /// Totals since the start.
    pub fn totals(&self) -> GuardTotals {
        self.totals
    }

    /// The node capacity the shadow models.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> AdaptiveGuard {
        AdaptiveGuard::new(
            GuardConfig {
                sub_window_requests: 4,
                sub_windows: 2,
                ..GuardConfig::default()
            },
            100,
        )
    }

    #[test]
    fn the_ghost_list_holds_what_lru_would_and_no_more_bytes() {
        let mut g = GhostLru::new(100, 10);
        assert!(!g.request(LayerId(1), 40));
        assert!(!g.request(LayerId(2), 40));
        assert!(g.request(LayerId(1), 40));
        // 3 pushes out 2, the least recent.
        assert!(!g.request(LayerId(3), 40));
        assert!(g.used() <= 100);
        assert!(!g.request(LayerId(2), 40));
        assert!(g.request(LayerId(3), 40));
        // Too large to hold at all.
        assert!(!g.request(LayerId(4), 101));
        assert!(!g.request(LayerId(4), 101));
    }

    #[test]
    fn the_ghost_list_is_bounded_in_entries() {
        let mut g = GhostLru::new(u64::MAX, 3);
        for l in 0..10 {
            g.request(LayerId(l), 1);
        }
        assert_eq!(g.len(), 3);
        assert!(g.request(LayerId(9), 1));
        assert!(!g.request(LayerId(0), 1));
    }

    #[test]
    fn the_lean_drops_while_the_shadow_is_ahead_and_pre_cache_stops() {
        let mut g = guard();
        // The shadow hits layer 1 every time; the node claims it never does.
        for t in 0..8 {
            g.record_request(Timestamp(t), LayerId(1), 10, false);
        }
        assert!(g.shadow_ahead());
        assert!(g.lean() < 1.0);
        assert_eq!(g.precache_scale(), 0.0);
        for t in 8..40 {
            g.record_request(Timestamp(t), LayerId(1), 10, false);
        }
        assert_eq!(g.lean(), 0.0);
        assert!(g.totals().behind_windows >= 4);
    }

    #[test]
    fn the_lean_climbs_back_when_the_node_keeps_up() {
        let mut g = guard();
        for t in 0..40 {
            g.record_request(Timestamp(t), LayerId(1), 10, false);
        }
        assert_eq!(g.lean(), 0.0);
        for t in 40..200 {
            g.record_request(Timestamp(t), LayerId(1), 10, true);
        }
        assert_eq!(g.lean(), 1.0);
        assert!(!g.shadow_ahead());
        assert_eq!(g.precache_scale(), 1.0);
    }

    #[test]
    fn survival_time_is_capacity_over_the_miss_rate() {
        let mut g = guard();
        assert_eq!(g.survival_secs(), None);
        // 10 bytes of misses every 10 s into 100 bytes: about 100 s.
        for i in 0..9 {
            g.record_request(Timestamp(i * 10), LayerId(i as u32), 10, false);
        }
        let s = g.survival_secs().unwrap();
        assert!((s - 100.0 * 80.0 / 90.0).abs() < 1e-9, "{s}");
    }

    #[test]
    fn a_regional_comparison_counts_peer_shadows_and_peer_hits() {
        let mut g = guard();
        // The node's own shadow never holds these one-offs, but a peer's
        // shadow does: the region's LRU would have served them.
        for t in 0..8 {
            g.record_regional_request(Timestamp(t), LayerId(t as u32), 10, false, true);
        }
        assert!(g.shadow_ahead());
        assert!(g.lean() < 1.0);
        assert!(g.shadow_holds(LayerId(7)));
        assert!(!g.shadow_holds(LayerId(99)));
    }

    #[test]
    fn the_ghost_lfu_keeps_the_frequent_layer_and_lets_a_new_one_in() {
        let mut g = GhostLfu::new(100, 10);
        for _ in 0..3 {
            g.request(LayerId(1), 40);
        }
        assert!(!g.request(LayerId(2), 40));
        // 3 enters and pushes out 2 (one request), not 1 (three).
        assert!(!g.request(LayerId(3), 40));
        assert!(g.contains(LayerId(1)) && g.contains(LayerId(3)));
        assert!(!g.contains(LayerId(2)));
        assert!(g.used() <= 100);
        assert!(g.request(LayerId(1), 40));
        assert_eq!(g.count(LayerId(1)), 4);
        // Counts outlive residence.
        assert_eq!(g.count(LayerId(2)), 1);
    }

    #[test]
    fn the_ghost_lfu_forgets_counts_past_its_bound() {
        let mut g = GhostLfu::new(1, 2);
        for l in 0..100 {
            g.request(LayerId(l), 1);
        }
        assert!(g.remembered() <= 8, "{}", g.remembered());
        assert!(g.contains(LayerId(99)));
    }

    #[test]
    fn the_node_follows_the_ghost_expert_that_is_ahead() {
        let mut g = guard();
        assert_eq!(g.base_order(), BaseOrder::Recency);
        // A hot layer between scans of one-offs: LFU keeps it, LRU of two
        // slots loses it to the scan every time.
        let mut t = 0;
        for round in 0..20u32 {
            g.record_request(Timestamp(t), LayerId(1), 50, false);
            t += 1;
            for k in 0..3 {
                g.record_request(Timestamp(t), LayerId(1000 + round * 3 + k), 50, false);
                t += 1;
            }
        }
        assert_eq!(g.base_order(), BaseOrder::Frequency);
        assert!(g.frequency(LayerId(1)) >= 20);
        // Recency workload: the same two layers over and over after a
        // change of set; LRU catches up at once, LFU clings to layer 1.
        for i in 0..40u32 {
            g.record_request(Timestamp(t), LayerId(2000 + i % 2), 50, false);
            t += 1;
        }
        assert_eq!(g.base_order(), BaseOrder::Recency);
    }

    #[test]
    fn configs_are_checked() {
        assert!(GuardConfig::default().validate().is_ok());
        let bad = GuardConfig {
            step_down: 1.5,
            ..GuardConfig::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(GuardConfigError::Fraction {
                name: "step_down",
                ..
            })
        ));
        let zero = GuardConfig {
            sub_windows: 0,
            ..GuardConfig::default()
        };
        assert!(zero.validate().is_err());
    }
}
