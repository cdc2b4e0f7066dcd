//! Reuse: how likely a layer is to be requested again, learned from what the
//! node has seen, by size and by how often the layer was already reused.
//!
//! This module owns [`ReuseStats`], the size-aware part of the predictive
//! eviction value. It is in the spirit of LHD and AdaptSize: rather than
//! dividing by a fixed power of the size, layers are grouped into classes by
//! size (powers of two) and by hits since they arrived (0, 1, 2-3, 4 or more),
//! and each class learns, from the requests the node actually sees, the
//! probability that a layer in it is requested again. Counts decay by half
//! every [`ReuseConfig::decay_every_requests`] requests, so the estimate
//! follows a workload that changes.
//!
//! For byte hits the value of a byte held is the expected number of times it
//! is served again, so the probability itself is the value per byte: size
//! enters through what each size class has shown, not through a formula.
//!
//! State: a fixed table of classes (two counters each) and, per layer the
//! node knows, one hit count, dropped when the layer is forgotten.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::LayerId;

/// Size classes: powers of two of the size in bytes, up to 2^47 (128 TiB).
const SIZE_CLASSES: usize = 48;
/// Hit classes: 0, 1, 2-3, 4 or more hits since arrival.
const HIT_CLASSES: usize = 4;

/// Settings of the reuse estimator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReuseConfig {
    /// Requests between halvings of every class's counts. Default 2048.
    pub decay_every_requests: u64,
    /// Pseudo-requests of the prior, which says "reused half the time".
    /// Default 2.
    pub prior_weight: f64,
    /// Most layers whose hit counts are kept; beyond it the lowest layer ids
    /// are dropped first. Default 262144.
    pub max_layers: usize,
}

impl Default for ReuseConfig {
    fn default() -> Self {
        ReuseConfig {
            decay_every_requests: 2048,
            prior_weight: 2.0,
            max_layers: 262_144,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct ClassCounts {
    entered: f64,
    reused: f64,
}

/// Per-class reuse probabilities learned from requests. See the module docs.
#[derive(Debug, Clone)]
pub struct ReuseStats {
    config: ReuseConfig,
    classes: Vec<ClassCounts>,
    hits: BTreeMap<LayerId, u32>,
    requests: u64,
}

fn size_class(size: u64) -> usize {
    (63 - size.max(1).leading_zeros() as usize).min(SIZE_CLASSES - 1)
}

fn hit_class(hits: u32) -> usize {
    match hits {
        0 => 0,
        1 => 1,
        2..=3 => 2,
        _ => 3,
    }
}

fn index(size: u64, hits: u32) -> usize {
    size_class(size) * HIT_CLASSES + hit_class(hits)
}

impl Default for ReuseStats {
    fn default() -> Self {
        ReuseStats::new(ReuseConfig::default())
    }
}

impl ReuseStats {
    /// An estimator that knows nothing yet.
    pub fn new(config: ReuseConfig) -> Self {
        ReuseStats {
            config,
            classes: vec![ClassCounts::default(); SIZE_CLASSES * HIT_CLASSES],
            hits: BTreeMap::new(),
            requests: 0,
        }
    }

    /// Records a request of `layer`: a reuse for the class it was in, and
    /// its arrival in the next class.
    pub fn record_request(&mut self, layer: LayerId, size: u64) {
        let next = match self.hits.get_mut(&layer) {
            Some(h) => {
                self.classes[index(size, *h)].reused += 1.0;
                *h = h.saturating_add(1);
                *h
            }
            None => {
                if self.hits.len() >= self.config.max_layers.max(1) {
                    self.hits.pop_first();
                }
                self.hits.insert(layer, 0);
                0
            }
        };
        self.classes[index(size, next)].entered += 1.0;
        self.requests += 1;
        if self
            .requests
            .is_multiple_of(self.config.decay_every_requests.max(1))
        {
            for c in &mut self.classes {
                c.entered /= 2.0;
                c.reused /= 2.0;
            }
        }
    }

    /// Drops a layer that left the node: it arrives afresh if it comes back.
    pub fn forget(&mut self, layer: LayerId) {
        self.hits.remove(&layer);
    }

    /// Hits of `layer` since it arrived (0 when unknown).
    pub fn hits(&self, layer: LayerId) -> u32 {
        self.hits.get(&layer).copied().unwrap_or(0)
    }

    /// The learned probability that a layer of `size` with `hits` hits so
    /// far is requested again.
    pub fn reuse_probability(&self, size: u64, hits: u32) -> f64 {
        let c = self.classes[index(size, hits)];
        let prior = self.config.prior_weight.max(0.0);
        let p = (c.reused + prior * 0.5) / (c.entered + prior).max(f64::MIN_POSITIVE);
        p.clamp(0.0, 1.0)
    }

    /// The learned probability for a layer the estimator knows (or a new one).
    pub fn layer_reuse_probability(&self, layer: LayerId, size: u64) -> f64 {
        self.reuse_probability(size, self.hits(layer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_split_by_powers_of_two_and_hits() {
        assert_eq!(size_class(0), 0);
        assert_eq!(size_class(1), 0);
        assert_eq!(size_class(1023), 9);
        assert_eq!(size_class(1024), 10);
        assert_eq!(size_class(u64::MAX), SIZE_CLASSES - 1);
        assert_eq!(hit_class(3), 2);
        assert_eq!(hit_class(40), 3);
    }

    #[test]
    fn small_layers_reused_and_large_ones_not_are_learned_apart() {
        let mut r = ReuseStats::default();
        // Small layers come back; each large one is seen once.
        for round in 0..20u32 {
            for l in 0..5 {
                r.record_request(LayerId(l), 4_000);
            }
            r.record_request(LayerId(1000 + round), 400_000_000);
        }
        let small = r.reuse_probability(4_000, 4);
        let large = r.reuse_probability(400_000_000, 0);
        assert!(small > 0.9, "{small}");
        assert!(large < 0.1, "{large}");
        // An unseen class sits at the prior.
        assert!((r.reuse_probability(50, 0) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn counts_decay_so_the_estimate_follows_a_change() {
        let mut r = ReuseStats::new(ReuseConfig {
            decay_every_requests: 16,
            ..ReuseConfig::default()
        });
        for _ in 0..200 {
            r.record_request(LayerId(1), 1_000);
        }
        assert!(r.reuse_probability(1_000, 4) > 0.9);
        for l in 10..400 {
            r.record_request(LayerId(l), 1_000);
        }
        // Fresh one-off layers of that size now dominate class (size, 0).
        assert!(r.reuse_probability(1_000, 0) < 0.1);
        r.forget(LayerId(1));
        assert_eq!(r.hits(LayerId(1)), 0);
    }

    #[test]
    fn known_layers_are_bounded() {
        let mut r = ReuseStats::new(ReuseConfig {
            max_layers: 8,
            ..ReuseConfig::default()
        });
        for l in 0..100 {
            r.record_request(LayerId(l), 10);
        }
        assert!(r.hits.len() <= 8);
    }
}
