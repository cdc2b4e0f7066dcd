//! Plan: the replication plan the priorities imply.
//!
//! This module owns the decision of how many copies of each layer to keep in
//! which regions, and on which nodes, within each node's disk budget. It does
//! not move bytes: the caller compares the plan with what nodes hold and
//! schedules transfers (and tells eviction which copies the plan requires).
//!
//! # Algorithm
//!
//! 1. Score every layer: `usage` from its total forecast, `threat` as given,
//!    `proximity` from its regional demand and the regions that already hold
//!    it (each region scored against the copies of *other* regions, see
//!    [`crate::proximity::placement_proximity_score`], so that the plan is
//!    stable); `priority` by the weighted formula of [`crate::priority`].
//!    A layer some node already holds gets `incumbent_bonus` extra points
//!    (hysteresis against churn).
//! 2. Walk layers by priority, highest first (ties by [`LayerId`]). In every
//!    region whose forecast demand reaches `min_regional_demand`, want
//!    `1 + floor(demand / pulls_per_extra_copy)` copies, at most
//!    `max_copies_per_region` and at most the region's node count. A layer with
//!    any demand gets at least `min_copies` copies overall, added in the
//!    regions of highest demand.
//! 3. Place each copy on a node of that region: a node that already holds the
//!    layer first (no transfer), else the node with the most budget left. A
//!    copy that fits nowhere is skipped and counted in `unplaced_bytes`.
//!
//! Cost: O(L log L + C log N) for L layers, C copies and N nodes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use serde::{Deserialize, Serialize};

use crate::priority::{usage_score, PolicyWeights};
use crate::proximity::{placement_proximity_score, DistanceMatrix};
use crate::{LayerId, NodeId, RegionId};

/// A node as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanNode {
    /// Its handle.
    pub id: NodeId,
    /// Its region.
    pub region: RegionId,
    /// Bytes of its disk the plan may fill.
    pub budget_bytes: u64,
}

/// A layer as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanLayer {
    /// Its handle.
    pub layer: LayerId,
    /// Its size in bytes.
    pub size: u64,
    /// Forecast pulls over the horizon, per region (index = region number).
    pub demand: Vec<f64>,
    /// Its threat score, 0-100.
    pub threat: f64,
    /// Nodes that hold it now.
    pub holders: Vec<NodeId>,
}

/// Planner settings. Keys and defaults are listed per field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlanConfig {
    /// The signal weights. Default: [`PolicyWeights::default`].
    pub weights: PolicyWeights,
    /// Forecast pulls over the horizon that score 50 on usage. Default 2.0.
    pub usage_half_saturation: f64,
    /// Forecast pulls in a region that earn it a copy. Default 1.0.
    pub min_regional_demand: f64,
    /// Forecast pulls per additional copy in a region. Default 50.0.
    pub pulls_per_extra_copy: f64,
    /// Most copies in one region. Default 3.
    pub max_copies_per_region: u32,
    /// Fewest copies of a layer with any demand. Default 1.
    pub min_copies: u32,
    /// Priority points added to a layer that some node already holds, so that
    /// a held layer is displaced only by a clearly better one. Without it,
    /// layers at the edge of a tight budget swap places every round as their
    /// forecasts wobble, and each swap costs a transfer. Default 10.
    pub incumbent_bonus: f64,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            weights: PolicyWeights::default(),
            usage_half_saturation: 2.0,
            min_regional_demand: 1.0,
            pulls_per_extra_copy: 50.0,
            max_copies_per_region: 3,
            min_copies: 1,
            incumbent_bonus: 10.0,
        }
    }
}

/// One layer's scores.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerPriority {
    /// The layer.
    pub layer: LayerId,
    /// Usage score 0-100.
    pub usage: f64,
    /// Threat score 0-100.
    pub threat: f64,
    /// Proximity score 0-100.
    pub proximity: f64,
    /// The weighted priority (plus the incumbent bonus in a plan).
    pub priority: f64,
}

/// The plan: which nodes should hold which layers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReplicationPlan {
    /// Nodes per layer, in placement order.
    pub placements: BTreeMap<LayerId, Vec<NodeId>>,
    /// Every scored layer, highest priority first.
    pub priorities: Vec<LayerPriority>,
    /// Bytes the plan puts on each node.
    pub bytes_per_node: BTreeMap<NodeId, u64>,
    /// Bytes of copies that fit on no node.
    pub unplaced_bytes: u64,
}

impl ReplicationPlan {
    /// True when the plan wants `node` to hold `layer`.
    pub fn requires(&self, layer: LayerId, node: NodeId) -> bool {
        self.placements
            .get(&layer)
            .is_some_and(|n| n.contains(&node))
    }
}

/// Scores one layer.
pub fn score_layer(
    layer: &PlanLayer,
    holder_regions: &[RegionId],
    matrix: &DistanceMatrix,
    config: &PlanConfig,
) -> LayerPriority {
    let total: f64 = layer.demand.iter().sum();
    let usage = usage_score(total, config.usage_half_saturation);
    let threat = layer.threat.clamp(0.0, 100.0);
    let proximity = placement_proximity_score(matrix, &layer.demand, holder_regions);
    LayerPriority {
        layer: layer.layer,
        usage,
        threat,
        proximity,
        priority: config.weights.priority(usage, threat, proximity),
    }
}

/// Builds the replication plan. See the module docs for the algorithm.
pub fn plan_replication(
    nodes: &[PlanNode],
    layers: &[PlanLayer],
    matrix: &DistanceMatrix,
    config: &PlanConfig,
) -> ReplicationPlan {
    let region_of: BTreeMap<NodeId, RegionId> = nodes.iter().map(|n| (n.id, n.region)).collect();
    let mut free: BTreeMap<NodeId, u64> = nodes.iter().map(|n| (n.id, n.budget_bytes)).collect();
    let regions = matrix.regions();
    let mut region_nodes = vec![0u32; regions];
    // Per region: a max-heap of (free bytes, node); stale entries are skipped.
    let mut heaps: Vec<BinaryHeap<(u64, Reverse<NodeId>)>> = vec![BinaryHeap::new(); regions];
    for n in nodes {
        if let Some(h) = heaps.get_mut(usize::from(n.region.0)) {
            h.push((n.budget_bytes, Reverse(n.id)));
            region_nodes[usize::from(n.region.0)] += 1;
        }
    }

    let mut order: Vec<(LayerPriority, usize)> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut held: Vec<RegionId> = l
                .holders
                .iter()
                .filter_map(|n| region_of.get(n).copied())
                .collect();
            held.sort();
            held.dedup();
            let mut score = score_layer(l, &held, matrix, config);
            if !held.is_empty() {
                score.priority += config.incumbent_bonus;
            }
            (score, i)
        })
        .collect();
    order.sort_by(|(a, _), (b, _)| {
        b.priority
            .total_cmp(&a.priority)
            .then(a.layer.cmp(&b.layer))
    });

    let mut plan = ReplicationPlan::default();
    for (_, index) in &order {
        let layer = &layers[*index];
        let total: f64 = layer.demand.iter().sum();
        if total <= 0.0 {
            continue;
        }
        let mut wanted: Vec<(RegionId, u32)> = Vec::new();
        for (r, &d) in layer.demand.iter().enumerate().take(regions) {
            if d >= config.min_regional_demand && d > 0.0 {
                let extra = if config.pulls_per_extra_copy > 0.0 {
                    (d / config.pulls_per_extra_copy).floor() as u32
                } else {
                    0
                };
                let copies = (1 + extra)
                    .min(config.max_copies_per_region)
                    .min(region_nodes[r]);
                wanted.push((RegionId(r as u16), copies));
            }
        }
        let mut planned: u32 = wanted.iter().map(|(_, c)| c).sum();
        if planned < config.min_copies {
            let mut by_demand: Vec<usize> = (0..layer.demand.len().min(regions)).collect();
            by_demand.sort_by(|&a, &b| layer.demand[b].total_cmp(&layer.demand[a]).then(a.cmp(&b)));
            for r in by_demand {
                if planned >= config.min_copies {
                    break;
                }
                let region = RegionId(r as u16);
                let cap = config.max_copies_per_region.min(region_nodes[r]);
                match wanted.iter_mut().find(|(w, _)| *w == region) {
                    Some((_, c)) if *c < cap => {
                        *c += 1;
                        planned += 1;
                    }
                    Some(_) => {}
                    None if cap > 0 => {
                        wanted.push((region, 1));
                        planned += 1;
                    }
                    None => {}
                }
            }
        }
        let mut chosen: Vec<NodeId> = Vec::new();
        for (region, copies) in wanted {
            for _ in 0..copies {
                // A current holder first: keeping a copy costs no transfer.
                let holder = layer.holders.iter().copied().find(|h| {
                    region_of.get(h) == Some(&region)
                        && !chosen.contains(h)
                        && free.get(h).is_some_and(|&f| f >= layer.size)
                });
                let node = holder.or_else(|| {
                    pop_roomiest(
                        &mut heaps[usize::from(region.0)],
                        &free,
                        &chosen,
                        layer.size,
                    )
                });
                let Some(node) = node else {
                    plan.unplaced_bytes += layer.size;
                    continue;
                };
                let f = free.get_mut(&node).expect("node is known");
                *f -= layer.size;
                heaps[usize::from(region.0)].push((*f, Reverse(node)));
                *plan.bytes_per_node.entry(node).or_insert(0) += layer.size;
                chosen.push(node);
            }
        }
        if !chosen.is_empty() {
            plan.placements.insert(layer.layer, chosen);
        }
    }
    plan.priorities = order.into_iter().map(|(p, _)| p).collect();
    plan
}

/// Takes the node with the most free bytes that can hold `size` and is not in
/// `exclude`; entries whose free bytes are stale are dropped.
fn pop_roomiest(
    heap: &mut BinaryHeap<(u64, Reverse<NodeId>)>,
    free: &BTreeMap<NodeId, u64>,
    exclude: &[NodeId],
    size: u64,
) -> Option<NodeId> {
    let mut skipped = Vec::new();
    let mut found = None;
    while let Some((f, Reverse(node))) = heap.pop() {
        if free.get(&node) != Some(&f) {
            continue;
        }
        if f < size {
            skipped.push((f, Reverse(node)));
            break;
        }
        if exclude.contains(&node) {
            skipped.push((f, Reverse(node)));
            continue;
        }
        found = Some(node);
        break;
    }
    heap.extend(skipped);
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn matrix(n: usize) -> DistanceMatrix {
        let rtt: Vec<Vec<f64>> = (0..n)
            .map(|a| (0..n).map(|b| if a == b { 0.0 } else { 50.0 }).collect())
            .collect();
        DistanceMatrix::new(&rtt, &vec![120.0; n]).unwrap()
    }

    fn nodes(per_region: u32, regions: u16, budget: u64) -> Vec<PlanNode> {
        let mut out = Vec::new();
        for r in 0..regions {
            for i in 0..per_region {
                out.push(PlanNode {
                    id: NodeId(u32::from(r) * per_region + i),
                    region: RegionId(r),
                    budget_bytes: budget,
                });
            }
        }
        out
    }

    #[test]
    fn copies_follow_demand_and_prefer_holders() {
        let layers = vec![
            PlanLayer {
                layer: LayerId(1),
                size: 10,
                demand: vec![120.0, 0.0],
                threat: 0.0,
                holders: vec![NodeId(1)],
            },
            PlanLayer {
                layer: LayerId(2),
                size: 10,
                demand: vec![0.0, 0.5],
                threat: 0.0,
                holders: vec![],
            },
            PlanLayer {
                layer: LayerId(3),
                size: 10,
                demand: vec![0.0, 0.0],
                threat: 90.0,
                holders: vec![],
            },
        ];
        let plan = plan_replication(
            &nodes(4, 2, 100),
            &layers,
            &matrix(2),
            &PlanConfig::default(),
        );
        let one = &plan.placements[&LayerId(1)];
        assert_eq!(one.len(), 3);
        assert_eq!(one[0], NodeId(1), "the current holder keeps its copy");
        // Below the regional threshold, but min_copies = 1 puts one copy where the demand is.
        assert_eq!(plan.placements[&LayerId(2)].len(), 1);
        assert!(plan.requires(LayerId(2), plan.placements[&LayerId(2)][0]));
        assert!(
            !plan.placements.contains_key(&LayerId(3)),
            "no demand, no copy"
        );
        assert_eq!(plan.priorities[0].layer, LayerId(1));
    }

    proptest! {
        #[test]
        fn budgets_are_never_exceeded(
            sizes in proptest::collection::vec(1u64..500, 1..40),
            demand in proptest::collection::vec(0.0f64..300.0, 120),
            budget in 0u64..2000,
        ) {
            let ns = nodes(3, 3, budget);
            let layers: Vec<PlanLayer> = sizes.iter().enumerate().map(|(i, &size)| PlanLayer {
                layer: LayerId(i as u32), size, demand: demand[i * 3..i * 3 + 3].to_vec(), threat: 0.0, holders: vec![],
            }).collect();
            let plan = plan_replication(&ns, &layers, &matrix(3), &PlanConfig::default());
            for n in &ns {
                let used: u64 = plan.placements.iter()
                    .filter(|(_, holders)| holders.contains(&n.id))
                    .map(|(l, _)| sizes[l.0 as usize]).sum();
                prop_assert!(used <= n.budget_bytes);
                prop_assert_eq!(used, plan.bytes_per_node.get(&n.id).copied().unwrap_or(0));
            }
            for holders in plan.placements.values() {
                let mut h = holders.clone();
                h.sort();
                h.dedup();
                prop_assert_eq!(h.len(), holders.len(), "one copy per node");
            }
        }
    }
}
