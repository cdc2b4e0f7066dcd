//! Cooperative eviction: which of a region's copies of a layer is spare.
//!
//! This module owns one decision: given the nodes of a region that hold a
//! layer, is this node's copy *spare* — would the region still hold the layer
//! if this node let it go? It decides nothing about when to evict; the
//! predictive order ([`crate::eviction::Predictive`]) reads the answer through
//! [`crate::eviction::CandidateLayer::spare_copy`].
//!
//! # Why
//!
//! The cost of a miss is not the same for every layer. A layer a peer of the
//! node's region still holds comes back from that peer: no origin bytes, no
//! WAN bytes. A layer only this node holds in its region comes back from
//! another region or the origin. Independent LRU on every node keeps the
//! popular set on every node of a region; ranking a spare copy's miss as
//! cheap lets the region hold more distinct bytes.
//!
//! # Which copy is spare (rendezvous hashing)
//!
//! Two nodes that hold the only two copies of a layer must not both drop
//! theirs because the other has one. Among the holders (this node included),
//! the one with the highest rendezvous weight `hash(layer, node)` is the
//! layer's *keeper* in the region; every other holder's copy is spare, the
//! keeper's never is. Every node that sees the same holders names the same
//! keeper without talking to anyone, so at most the non-keepers drop their
//! copies on this ground, and a holder joining or leaving moves the keeper
//! role of that one layer only (the property rendezvous hashing is chosen
//! for). When views of the holders differ (gossip is late), a node that does
//! not know of a copy treats its own as less spare, never more: a copy is
//! spare only when some *other* holder is known.
//!
//! # State
//!
//! None: the answer is a pure function of the layer, the node and the
//! holders the caller knows (the simulator's exact holder lists; the
//! daemon's known holders from gossip).

use crate::{LayerId, NodeId};

/// The rendezvous weight of `node` for `layer`: a fixed 64-bit mix
/// (SplitMix64's finaliser) of both ids, the same on every node and every
/// run.
pub fn rendezvous_weight(layer: LayerId, node: NodeId) -> u64 {
    let mut z = (u64::from(layer.0) << 32 | u64::from(node.0)).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The holder that keeps `layer` in its region: the highest rendezvous
/// weight, ties (equal weights need equal ids) to the lower id. `None` when
/// there is no holder.
pub fn keeper(layer: LayerId, holders: impl IntoIterator<Item = NodeId>) -> Option<NodeId> {
    holders
        .into_iter()
        .max_by_key(|&n| (rendezvous_weight(layer, n), std::cmp::Reverse(n)))
}

/// True when `this` node's copy of `layer` is spare: some other node of the
/// region holds it (`regional_holders`, which may or may not list `this`)
/// and, among all of them and `this`, `this` is not the keeper.
pub fn is_spare_copy(layer: LayerId, this: NodeId, regional_holders: &[NodeId]) -> bool {
    if !regional_holders.iter().any(|&n| n != this) {
        return false;
    }
    let all = regional_holders
        .iter()
        .copied()
        .filter(|&n| n != this)
        .chain(std::iter::once(this));
    keeper(layer, all) != Some(this)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_lone_copy_is_never_spare() {
        assert!(!is_spare_copy(LayerId(7), NodeId(1), &[]));
        assert!(!is_spare_copy(LayerId(7), NodeId(1), &[NodeId(1)]));
    }

    #[test]
    fn of_two_copies_exactly_one_is_spare() {
        for layer in 0..200 {
            let holders = [NodeId(3), NodeId(9)];
            let spare: Vec<bool> = holders
                .iter()
                .map(|&n| is_spare_copy(LayerId(layer), n, &holders))
                .collect();
            assert_eq!(spare.iter().filter(|&&s| s).count(), 1, "layer {layer}");
        }
    }

    #[test]
    fn the_keeper_role_spreads_over_the_nodes() {
        let holders: Vec<NodeId> = (0..4).map(NodeId).collect();
        let mut kept = [0u32; 4];
        for layer in 0..4000 {
            let k = keeper(LayerId(layer), holders.iter().copied()).unwrap();
            kept[k.0 as usize] += 1;
        }
        for k in kept {
            assert!((800..1200).contains(&k), "{kept:?}");
        }
    }

    proptest! {
        #[test]
        fn nodes_that_see_the_same_holders_keep_exactly_one_copy(
            layer in any::<u32>(),
            ids in proptest::collection::btree_set(any::<u32>(), 1..8),
        ) {
            let holders: Vec<NodeId> = ids.into_iter().map(NodeId).collect();
            let kept = holders
                .iter()
                .filter(|&&n| !is_spare_copy(LayerId(layer), n, &holders))
                .count();
            prop_assert_eq!(kept, 1);
        }

        #[test]
        fn a_holder_leaving_moves_only_its_own_keeper_role(
            layer in any::<u32>(),
            ids in proptest::collection::btree_set(any::<u32>(), 2..8),
        ) {
            let holders: Vec<NodeId> = ids.into_iter().map(NodeId).collect();
            let k = keeper(LayerId(layer), holders.iter().copied()).unwrap();
            for &gone in holders.iter().filter(|&&n| n != k) {
                let rest = holders.iter().copied().filter(|&n| n != gone);
                prop_assert_eq!(keeper(LayerId(layer), rest), Some(k));
            }
        }
    }
}
