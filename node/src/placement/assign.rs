//! The plan as one node executes it: the policy's replication plan turned into "which layers
//! must this node hold", without a coordinator.
//!
//! Pure: every input is a value. [`plan_for_node`] builds the region table and the RTT matrix from
//! what this node measured, runs `shoal_policy::plan::plan_replication` for the copies each
//! region should hold, and then picks the holders of each region's copies by rendezvous hashing
//! ([`rendezvous`]) over the region's members. Every node of a region that sees the same members
//! and the same demand picks the same holders; a node that joins or leaves moves only the copies
//! it wins or held (about 1/N of them), not the whole assignment.
//!
//! Proximity comes from ping: this node's RTT to each region is the median RTT of its members
//! there; RTTs between two other regions are bounded by the triangle through this node's region
//! (their sum); the origin counts as farther than any region (the largest RTT plus one), since it
//! is reached over the open internet and costs money.

use std::collections::BTreeMap;

use shoal_policy::plan::{plan_replication, PlanConfig, PlanLayer, PlanNode, ReplicationPlan};
use shoal_policy::proximity::DistanceMatrix;
use shoal_policy::{LayerId, NodeId, RegionId};

/// A node of the network as the plan sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Its stable name (the peer id's bytes); this node included.
    pub key: Vec<u8>,
    /// Its region.
    pub region: String,
    /// RTT from this node in milliseconds (0 for this node itself), if measured.
    pub rtt_ms: Option<f64>,
}

/// A layer with demand, as the plan sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DemandedLayer {
    /// Its id.
    pub layer: LayerId,
    /// Its digest's bytes (the rendezvous key).
    pub key: [u8; 32],
    /// Its size.
    pub size: u64,
    /// Forecast pulls over the horizon per region name.
    pub demand: BTreeMap<String, f64>,
    /// Threat score 0-100 (from the threat score source).
    pub threat: f64,
    /// Indices into the member list of the members known to hold it.
    pub holders: Vec<usize>,
}

/// What the plan asks of this node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodePlan {
    /// Region names, indexed by `RegionId`.
    pub regions: Vec<String>,
    /// The policy's plan (copies per region as node lists, priorities).
    pub plan: ReplicationPlan,
    /// Per layer: the holders chosen in each region (member indices).
    pub holders: BTreeMap<LayerId, BTreeMap<String, Vec<usize>>>,
    /// Layers this node must hold.
    pub required_here: Vec<LayerId>,
}

/// The rendezvous (highest random weight) score of `member` for `layer`.
pub fn rendezvous_score(layer: &[u8; 32], member: &[u8]) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"shoal placement rendezvous v1");
    hasher.update(layer);
    hasher.update(member);
    let hash = hasher.finalize();
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The `copies` members (indices into `members`) of highest rendezvous score for `layer`.
pub fn rendezvous(layer: &[u8; 32], members: &[&[u8]], copies: usize) -> Vec<usize> {
    let mut scored: Vec<(u64, usize)> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (rendezvous_score(layer, m), i))
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(members[a.1].cmp(members[b.1])));
    scored.into_iter().take(copies).map(|(_, i)| i).collect()
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

/// The RTT matrix between `regions` from this node's measurements (see the module docs).
pub fn measured_matrix(regions: &[String], own: &str, members: &[Member]) -> DistanceMatrix {
    let own_row: Vec<f64> = regions
        .iter()
        .map(|r| {
            if r == own {
                return 0.0;
            }
            let mut rtts: Vec<f64> = members
                .iter()
                .filter(|m| &m.region == r)
                .filter_map(|m| m.rtt_ms)
                .filter(|v| v.is_finite() && *v >= 0.0)
                .collect();
            median(&mut rtts).unwrap_or(0.0)
        })
        .collect();
    let own_index = regions.iter().position(|r| r == own);
    let n = regions.len();
    let rtt: Vec<Vec<f64>> = (0..n)
        .map(|a| {
            (0..n)
                .map(|b| {
                    if a == b {
                        0.0
                    } else if Some(a) == own_index {
                        own_row[b]
                    } else if Some(b) == own_index {
                        own_row[a]
                    } else {
                        own_row[a] + own_row[b]
                    }
                })
                .collect()
        })
        .collect();
    let farthest = rtt.iter().flatten().copied().fold(0.0, f64::max) + 1.0;
    DistanceMatrix::new(&rtt, &vec![farthest; n]).expect("square, finite and non-negative")
}

/// The plan for this node (`members[0]` is this node itself).
pub fn plan_for_node(
    members: &[Member],
    layers: &[DemandedLayer],
    budget_bytes: u64,
    config: &PlanConfig,
) -> NodePlan {
    let Some(me) = members.first() else {
        return NodePlan::default();
    };
    let mut regions: Vec<String> = members.iter().map(|m| m.region.clone()).collect();
    for layer in layers {
        regions.extend(layer.demand.keys().cloned());
    }
    regions.sort();
    regions.dedup();
    regions.truncate(u16::MAX as usize);
    let region_id = |name: &str| {
        regions
            .binary_search_by(|r| r.as_str().cmp(name))
            .ok()
            .map(|i| RegionId(i as u16))
    };
    let matrix = measured_matrix(&regions, &me.region, members);
    let nodes: Vec<PlanNode> = members
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            Some(PlanNode {
                id: NodeId(i as u32),
                region: region_id(&m.region)?,
                budget_bytes,
            })
        })
        .collect();
    let plan_layers: Vec<PlanLayer> = layers
        .iter()
        .map(|l| {
            let mut demand = vec![0.0; regions.len()];
            for (region, d) in &l.demand {
                if let Some(r) = region_id(region) {
                    demand[usize::from(r.0)] += d.max(0.0);
                }
            }
            PlanLayer {
                layer: l.layer,
                size: l.size,
                demand,
                threat: l.threat,
                holders: l.holders.iter().map(|&i| NodeId(i as u32)).collect(),
            }
        })
        .collect();
    let plan = plan_replication(&nodes, &plan_layers, &matrix, config);
    let by_id: BTreeMap<LayerId, &DemandedLayer> = layers.iter().map(|l| (l.layer, l)).collect();
    let mut holders = BTreeMap::new();
    let mut required_here = Vec::new();
    for (layer, placed) in &plan.placements {
        let Some(demanded) = by_id.get(layer) else {
            continue;
        };
        let mut copies: BTreeMap<&str, usize> = BTreeMap::new();
        for node in placed {
            if let Some(m) = members.get(node.0 as usize) {
                *copies.entry(m.region.as_str()).or_default() += 1;
            }
        }
        let mut chosen_by_region = BTreeMap::new();
        for (region, count) in copies {
            let in_region: Vec<usize> = (0..members.len())
                .filter(|&i| members[i].region == region)
                .collect();
            let keys: Vec<&[u8]> = in_region
                .iter()
                .map(|&i| members[i].key.as_slice())
                .collect();
            let chosen: Vec<usize> = rendezvous(&demanded.key, &keys, count)
                .into_iter()
                .map(|k| in_region[k])
                .collect();
            if chosen.contains(&0) {
                required_here.push(*layer);
            }
            chosen_by_region.insert(region.to_string(), chosen);
        }
        holders.insert(*layer, chosen_by_region);
    }
    NodePlan {
        regions,
        plan,
        holders,
        required_here,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, region: &str, rtt: f64) -> Member {
        Member {
            key: name.as_bytes().to_vec(),
            region: region.into(),
            rtt_ms: Some(rtt),
        }
    }

    fn layer(byte: u8, demand: &[(&str, f64)]) -> DemandedLayer {
        DemandedLayer {
            layer: LayerId(u32::from(byte)),
            key: [byte; 32],
            size: 100,
            demand: demand.iter().map(|(r, d)| (r.to_string(), *d)).collect(),
            threat: 0.0,
            holders: vec![],
        }
    }

    fn config() -> PlanConfig {
        PlanConfig {
            min_regional_demand: 0.5,
            ..PlanConfig::default()
        }
    }

    #[test]
    fn nodes_of_a_region_agree_on_holders_whatever_their_order() {
        let region = [
            member("a", "eu", 0.0),
            member("b", "eu", 1.0),
            member("c", "eu", 1.0),
            member("d", "us", 80.0),
        ];
        let layers: Vec<DemandedLayer> = (1..40).map(|b| layer(b, &[("eu", 3.0)])).collect();
        // Each node puts itself first; the holders chosen must be the same nodes.
        let mut assigned: BTreeMap<LayerId, Vec<String>> = BTreeMap::new();
        for me in 0..3 {
            let mut members = region.to_vec();
            members.swap(0, me);
            let plan = plan_for_node(&members, &layers, 1 << 30, &config());
            for (layer, by_region) in &plan.holders {
                let names: Vec<String> = by_region["eu"]
                    .iter()
                    .map(|&i| String::from_utf8(members[i].key.clone()).unwrap())
                    .collect();
                let previous = assigned.entry(*layer).or_insert_with(|| names.clone());
                assert_eq!(*previous, names, "layer {layer:?}");
            }
            for layer in &plan.required_here {
                assert_eq!(
                    assigned[layer],
                    [String::from_utf8(members[0].key.clone()).unwrap()]
                );
            }
        }
        // Spread over the region, not all on one node.
        let holders: std::collections::BTreeSet<&Vec<String>> = assigned.values().collect();
        assert!(holders.len() > 1);
    }

    #[test]
    fn demand_in_this_region_for_a_layer_held_elsewhere_puts_a_copy_here() {
        let members = [member("a", "eu", 0.0), member("b", "us", 80.0)];
        let mut wanted = layer(1, &[("eu", 1.0)]);
        wanted.holders = vec![1];
        let plan = plan_for_node(&members, &[wanted, layer(2, &[])], 1 << 30, &config());
        assert_eq!(plan.required_here, [LayerId(1)]);
    }

    #[test]
    fn rtts_come_from_measurements_and_the_origin_is_farthest() {
        let regions = vec!["ap".to_string(), "eu".into(), "us".into()];
        let members = [
            member("a", "eu", 0.0),
            member("b", "us", 80.0),
            member("c", "us", 90.0),
            member("d", "us", 70.0),
            member("e", "ap", 200.0),
        ];
        let m = measured_matrix(&regions, "eu", &members);
        assert_eq!(m.rtt(RegionId(1), RegionId(2)), 80.0);
        assert_eq!(m.rtt(RegionId(2), RegionId(1)), 80.0);
        assert_eq!(m.rtt(RegionId(0), RegionId(2)), 280.0);
        assert_eq!(m.origin_rtt(RegionId(1)), 281.0);
    }

    #[test]
    fn rendezvous_moves_few_layers_when_a_member_joins() {
        let before: Vec<&[u8]> = vec![b"a", b"b", b"c", b"d"];
        let after: Vec<&[u8]> = vec![b"a", b"b", b"c", b"d", b"e"];
        let moved = (0..=255u8)
            .filter(|&b| {
                let x = before[rendezvous(&[b; 32], &before, 1)[0]];
                let y = after[rendezvous(&[b; 32], &after, 1)[0]];
                x != y && y != b"e"
            })
            .count();
        assert_eq!(moved, 0, "only layers won by the newcomer move");
    }
}
