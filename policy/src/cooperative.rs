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
//! daemon's known holders from gossip). Layers and nodes are named by keys
//! every node derives alike: global ids in the simulator, [`stable_key`] of
//! the digest and peer id in a daemon (whose interned layer ids are local).

use crate::{LayerId, NodeId};

/// The rendezvous weight of a node for a layer, from keys every node of the
/// region derives the same way (the simulator's global ids; the daemon's
/// digest and peer id hashes, see [`stable_key`]): a fixed 64-bit mix
/// (SplitMix64's finaliser) of both, the same on every node and every run.
pub fn rendezvous_weight(layer_key: u64, node_key: u64) -> u64 {
    let mut z = (layer_key.rotate_left(32) ^ node_key).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A key for [`rendezvous_weight`] from bytes every node agrees on (a
/// digest, a peer id): the first eight bytes of their FNV-1a 64 hash mix.
/// Local handles such as an interned [`LayerId`] differ between nodes and
/// must not be used where nodes have to agree.
pub fn stable_key(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The key that keeps `layer_key` among `holder_keys`: the highest rendezvous
/// weight, ties to the lower key. `None` when there is no holder.
pub fn keeper_key(layer_key: u64, holder_keys: impl IntoIterator<Item = u64>) -> Option<u64> {
    holder_keys
        .into_iter()
        .max_by_key(|&n| (rendezvous_weight(layer_key, n), std::cmp::Reverse(n)))
}

/// True when the copy of the node keyed `this` is spare: some other holder
/// of the region is known (`regional_holders`, which may or may not list
/// `this`) and, among all of them and `this`, `this` is not the keeper.
pub fn is_spare_key(layer_key: u64, this: u64, regional_holders: &[u64]) -> bool {
    if !regional_holders.iter().any(|&n| n != this) {
        return false;
    }
    let all = regional_holders
        .iter()
        .copied()
        .filter(|&n| n != this)
        .chain(std::iter::once(this));
    keeper_key(layer_key, all) != Some(this)
}

/// [`keeper_key`] over ids that are the same on every node (the
/// simulator's).
pub fn keeper(layer: LayerId, holders: impl IntoIterator<Item = NodeId>) -> Option<NodeId> {
    keeper_key(
        u64::from(layer.0),
        holders.into_iter().map(|n| u64::from(n.0)),
    )
    .map(|k| NodeId(k as u32))
}

/// [`is_spare_key`] over ids that are the same on every node (the
/// simulator's).
pub fn is_spare_copy(layer: LayerId, this: NodeId, regional_holders: &[NodeId]) -> bool {
    let holders: Vec<u64> = regional_holders.iter().map(|n| u64::from(n.0)).collect();
    is_spare_key(u64::from(layer.0), u64::from(this.0), &holders)
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

    #[test]
    fn keys_from_digests_and_peer_ids_agree_across_nodes() {
        let layer = stable_key(b"sha256:4f2a");
        let a = stable_key(b"peer-a");
        let b = stable_key(b"peer-b");
        assert_eq!(layer, stable_key(b"sha256:4f2a"));
        assert_ne!(a, b);
        // Each node lists the holders in its own order: same answer.
        assert_eq!(
            is_spare_key(layer, a, &[a, b]),
            is_spare_key(layer, a, &[b, a])
        );
        assert_ne!(
            is_spare_key(layer, a, &[a, b]),
            is_spare_key(layer, b, &[b, a])
        );
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
