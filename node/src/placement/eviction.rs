//! Eviction when placement is on: the policy's order over stable layer ids, with placement's
//! protections.
//!
//! [`PlacementEviction`] is the store's [`EvictionPolicy`]. Unlike `store::PolicyEviction`, it
//! keeps one `shoal-policy` eviction policy for the node's life and names layers by the ids of the
//! demand table, so what the policy learned (every access, the forecasts) is still there at the
//! next call. The order ([`protected_order`]) comes in four tiers, each in the policy's order:
//!
//! 0. high-threat blobs nobody is forecast to pull (a threat score of at least
//!    `threat.evict_first_score` and no demand; the pre-cache seed's "high-risk, infrequently
//!    used" layers), unless the plan requires them here;
//! 1. unprotected blobs;
//! 2. blobs the replication plan requires on this node;
//! 3. blobs that are the last copy in the network of a layer in demand (no other holder known).
//!
//! With the predictive order, threat also discounts each layer's expected use
//! (`LayerSignals::threat`), so within a tier the more dangerous of two equally used layers goes
//! first.
//!
//! The store evicts from the front until it is within budget, so a protected blob goes only when
//! no other candidate is left (the disk budget is a hard limit). With the lifecycle on,
//! `lifecycle::LifecycleEviction` wraps this order (Cold and Pending Deletion first, pinned keep
//! last); deletion itself is the lifecycle's, not eviction's.

use std::sync::{Arc, Mutex};

use shoal_policy::eviction::{
    CandidateLayer, EvictionPolicy as PolicyOrder, LayerSignals, Lru, Predictive,
};
use shoal_policy::{LayerId, Timestamp};
use shoal_proto::BlobDigest;

use super::Shared;
use crate::store::{EvictionCandidate, EvictionPolicy};

/// Why a candidate is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protection {
    /// Not protected, and first out: its threat score is high and nobody is forecast to pull it.
    HighThreatUnused,
    /// Nothing protects it.
    None,
    /// The plan wants a copy on this node.
    PlanRequired,
    /// No other holder is known and the layer is in demand.
    LastCopyInDemand,
}

/// Orders candidates: the policy's order within each tier of [`Protection`], unprotected first.
/// Every candidate appears exactly once.
pub fn protected_order(
    policy: &mut dyn PolicyOrder,
    now: Timestamp,
    candidates: &[(CandidateLayer, Protection)],
) -> Vec<LayerId> {
    let mut out = Vec::with_capacity(candidates.len());
    for tier in [
        Protection::HighThreatUnused,
        Protection::None,
        Protection::PlanRequired,
        Protection::LastCopyInDemand,
    ] {
        let layers: Vec<CandidateLayer> = candidates
            .iter()
            .filter(|(_, p)| *p == tier)
            .map(|(c, _)| *c)
            .collect();
        let mut chosen = policy.choose_victims(now, &layers, u64::MAX);
        // A policy may leave out what it will never pick; those go last in their tier.
        let listed: std::collections::HashSet<LayerId> = chosen.iter().copied().collect();
        chosen.extend(
            layers
                .iter()
                .map(|c| c.layer)
                .filter(|l| !listed.contains(l)),
        );
        out.extend(chosen);
    }
    out
}

/// What protects a candidate (or sends it first), from its forecast, whether another holder is
/// known, whether the plan requires it here, and its threat score against
/// `threat.evict_first_score` (`None`: no threat source).
pub fn protection(
    forecast: f64,
    other_holders: bool,
    required: bool,
    threat: f64,
    evict_first_score: Option<f64>,
) -> Protection {
    if forecast >= super::IN_DEMAND && !other_holders {
        Protection::LastCopyInDemand
    } else if required {
        Protection::PlanRequired
    } else if evict_first_score.is_some_and(|limit| threat >= limit && forecast < super::IN_DEMAND)
    {
        Protection::HighThreatUnused
    } else {
        Protection::None
    }
}

/// What placement knows of one candidate when the store asks for an order.
#[derive(Debug, Clone, Copy)]
pub struct EvictionFacts {
    /// The candidate's stable id in the demand table.
    pub layer: LayerId,
    /// Its protection tier.
    pub protection: Protection,
    /// Forecast pulls in this node's region over the horizon.
    pub forecast: f64,
    /// Its threat score (0 without reports).
    pub threat: f64,
    /// Another member of this node's region keeps the blob (see `Shared::is_spare_copy`).
    pub spare_copy: bool,
}

/// The policy behind the order.
#[derive(Debug)]
pub enum OrderPolicy {
    /// Least recently used, by the store's access records (which survive restarts).
    Lru(Lru),
    /// `shoal-policy`'s predictive order, fed every client request with whether the store had
    /// it and, as its regional signal, the persisted demand table's forecasts (so it knows the
    /// history after a restart too). It is built with the node's disk budget, so its guard
    /// (an LRU shadow of that size) hands the order back to recency while prediction loses.
    Predictive(Box<Predictive>),
}

/// The store's eviction policy while placement is on.
pub struct PlacementEviction {
    shared: Arc<Shared>,
    policy: Mutex<OrderPolicy>,
}

impl std::fmt::Debug for PlacementEviction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlacementEviction").finish_non_exhaustive()
    }
}

impl PlacementEviction {
    /// Eviction over `shared`'s demand table with `policy`'s order.
    pub fn new(shared: Arc<Shared>, policy: OrderPolicy) -> Self {
        Self {
            shared,
            policy: Mutex::new(policy),
        }
    }

    /// Tells the policy about a client's request for `layer` and whether the store had it (the
    /// LRU order needs neither: it replays the store's access records).
    pub fn record_request(&self, now: u64, layer: LayerId, size: u64, hit: bool) {
        if let OrderPolicy::Predictive(p) =
            &mut *self.policy.lock().unwrap_or_else(|p| p.into_inner())
        {
            p.record_request(Timestamp(now), layer, size, hit);
        }
    }

    /// What the predictive order's guard measured so far (`None` under the LRU order).
    pub fn guard_totals(&self) -> Option<shoal_policy::guard::GuardTotals> {
        match &*self.policy.lock().unwrap_or_else(|p| p.into_inner()) {
            OrderPolicy::Predictive(p) => p.guard().map(|g| g.totals()),
            OrderPolicy::Lru(_) => None,
        }
    }

    /// Orders the store's candidates (see the module docs).
    pub fn order(&self, now_ms: u64, mut candidates: Vec<EvictionCandidate>) -> Vec<BlobDigest> {
        let now = now_ms / 1000;
        candidates.sort_by_key(|c| (c.last_access_ms, c.digest));
        let facts: Vec<EvictionFacts> = candidates
            .iter()
            .map(|c| self.shared.eviction_facts(now, c))
            .collect();
        let mut by_layer = std::collections::HashMap::new();
        let mut layers = Vec::with_capacity(candidates.len());
        for (candidate, fact) in candidates.iter().zip(&facts) {
            by_layer.insert(fact.layer, candidate.digest);
            let mut layer = CandidateLayer::new(fact.layer, candidate.size);
            layer.spare_copy = fact.spare_copy;
            layers.push((layer, fact.protection));
        }
        let mut policy = self.policy.lock().unwrap_or_else(|p| p.into_inner());
        let order = match &mut *policy {
            OrderPolicy::Lru(lru) => {
                // Replayed oldest first: the store's access records are the truth for recency.
                for (candidate, fact) in candidates.iter().zip(&facts) {
                    lru.record_access(
                        Timestamp(candidate.last_access_ms / 1000),
                        fact.layer,
                        candidate.size,
                    );
                }
                protected_order(lru, Timestamp(now), &layers)
            }
            OrderPolicy::Predictive(predictive) => {
                let signals = LayerSignals {
                    regional_forecast: facts.iter().map(|f| (f.layer, f.forecast)).collect(),
                    threat: facts
                        .iter()
                        .filter(|f| f.threat > 0.0)
                        .map(|f| (f.layer, f.threat))
                        .collect(),
                    region_nodes: 1,
                };
                predictive.set_signals(Arc::new(signals));
                protected_order(predictive.as_mut(), Timestamp(now), &layers)
            }
        };
        order
            .into_iter()
            .filter_map(|layer| by_layer.get(&layer).copied())
            .collect()
    }
}

/// The handle the store holds.
#[derive(Debug, Clone)]
pub struct StoreEviction(pub Arc<PlacementEviction>);

impl EvictionPolicy for StoreEviction {
    fn order_victims(
        &mut self,
        now_ms: u64,
        candidates: Vec<EvictionCandidate>,
    ) -> Vec<BlobDigest> {
        self.0.order(now_ms, candidates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::{EvictionOrder, PlacementConfig};
    use shoal_proto::RepoName;

    /// A node with placement's predictive order, as `shoald` builds it.
    fn predictive_node(dir: &std::path::Path, capacity: u64) -> (Arc<Shared>, StoreEviction) {
        let config = PlacementConfig {
            eviction: EvictionOrder::Predictive,
            ..PlacementConfig::default()
        };
        let shared = Shared::load(
            config,
            dir,
            std::time::Duration::from_secs(60),
            Arc::new(crate::metrics::Metrics::default()),
        )
        .unwrap();
        let eviction = shared.store_eviction(capacity);
        (shared, eviction)
    }

    #[test]
    fn the_daemons_predictive_order_is_guarded_by_an_lru_shadow_fed_every_answer() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, eviction) = predictive_node(dir.path(), 1 << 20);
        let repo: RepoName = "library/app".parse().unwrap();
        let blob = BlobDigest::from_bytes([7; 32]);
        // First request: fetched (a miss, for the node and for the shadow); then two hits.
        for from_store in [false, true, true] {
            shared.blob_requested("docker.io", &repo, blob);
            shared.blob_answered(&blob, Some(1000), from_store);
        }
        let totals = eviction
            .0
            .guard_totals()
            .expect("the predictive order has a guard");
        assert_eq!(totals.requested_bytes, 3000);
        assert_eq!(totals.actual_hit_bytes, 2000);
        assert_eq!(
            totals.shadow_hit_bytes, 2000,
            "an LRU of 1 MiB holds the blob after its first fetch"
        );
        // A blob placement has never seen a request for is not counted.
        shared.blob_answered(&BlobDigest::from_bytes([8; 32]), Some(1000), true);
        assert_eq!(eviction.0.guard_totals().unwrap().requested_bytes, 3000);
    }

    #[test]
    fn the_lru_order_keeps_no_guard() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared::load(
            PlacementConfig::default(),
            dir.path(),
            std::time::Duration::from_secs(60),
            Arc::new(crate::metrics::Metrics::default()),
        )
        .unwrap();
        assert!(shared.store_eviction(1 << 20).0.guard_totals().is_none());
    }

    #[test]
    fn protected_copies_go_only_after_every_other_candidate() {
        let mut lru = Lru::new();
        for (t, layer) in [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)] {
            lru.record_access(Timestamp(t), LayerId(layer), 10);
        }
        let candidates = [
            (
                CandidateLayer::new(LayerId(1), 10),
                Protection::LastCopyInDemand,
            ),
            (
                CandidateLayer::new(LayerId(2), 10),
                Protection::PlanRequired,
            ),
            (CandidateLayer::new(LayerId(3), 10), Protection::None),
            (
                CandidateLayer::new(LayerId(4), 10),
                Protection::PlanRequired,
            ),
            (CandidateLayer::new(LayerId(5), 10), Protection::None),
        ];
        let order = protected_order(&mut lru, Timestamp(9), &candidates);
        assert_eq!(
            order,
            [3, 5, 2, 4, 1].map(LayerId),
            "oldest first within each tier"
        );
    }

    #[test]
    fn a_high_threat_layer_nobody_pulls_goes_first_unless_protected() {
        let limit = Some(70.0);
        assert_eq!(
            protection(0.0, true, false, 90.0, limit),
            Protection::HighThreatUnused
        );
        assert_eq!(protection(0.0, true, false, 60.0, limit), Protection::None);
        assert_eq!(protection(0.0, true, false, 90.0, None), Protection::None);
        // In demand: threat does not send it first.
        assert_eq!(protection(3.0, true, false, 90.0, limit), Protection::None);
        assert_eq!(
            protection(3.0, false, false, 90.0, limit),
            Protection::LastCopyInDemand
        );
        assert_eq!(
            protection(0.0, true, true, 90.0, limit),
            Protection::PlanRequired
        );
        let mut lru = Lru::new();
        for (t, layer) in [(1, 1), (2, 2), (3, 3)] {
            lru.record_access(Timestamp(t), LayerId(layer), 10);
        }
        let candidates = [
            (CandidateLayer::new(LayerId(1), 10), Protection::None),
            (
                CandidateLayer::new(LayerId(2), 10),
                Protection::PlanRequired,
            ),
            (
                CandidateLayer::new(LayerId(3), 10),
                Protection::HighThreatUnused,
            ),
        ];
        assert_eq!(
            protected_order(&mut lru, Timestamp(9), &candidates),
            [3, 1, 2].map(LayerId),
            "the newest layer goes first when it is dangerous and unused"
        );
    }
}
