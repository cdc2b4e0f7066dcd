//! A blob's home is found by a Kademlia closest-peers lookup, not only among the members a node is
//! connected to: nodes bootstrapped in a chain, one of which is connected to a single member, still
//! agree on the home, and of all the nodes that ask it who fetches the blob exactly one is told to
//! fetch it from the origin. A member re-homing away from the member that failed it is placed
//! under another one over the wire, and a member that some node avoids stays the home for it.

mod common;

use common::{node, TestNode};

use std::time::Duration;

use libp2p::{kad, PeerId};
use shoal_node::p2p::TransferError;
use shoal_node::p2p::{PeerAnswer, PeerNetwork};
use shoal_proto::wire::{ClaimAsk, MapWanted, ShardRequest, ShardSet};
use shoal_proto::BlobDigest;
use tokio::sync::watch;

/// The member closest to `digest`'s key among `peers`, as Kademlia measures it.
fn true_home(digest: &BlobDigest, peers: &[PeerId]) -> PeerId {
    let key = kad::KBucketKey::new(kad::RecordKey::new(digest.as_bytes()));
    *peers
        .iter()
        .min_by_key(|peer| kad::KBucketKey::from(**peer).distance(&key))
        .unwrap()
}

/// Waits until `node` counts `peer` as a member.
async fn wait_for_member(node: &TestNode, peer: PeerId) {
    for _ in 0..1200 {
        if node.network.members().contains(&peer) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{peer} never became a member");
}

/// What asking the home who fetches `digest` told `network`: `None` when it is to fetch the blob
/// itself, otherwise the member to follow.
async fn claim(network: &PeerNetwork, home: PeerId, digest: BlobDigest) -> Option<PeerId> {
    let request = ShardRequest {
        blob: *digest.as_bytes(),
        shards: ShardSet::Bitfield(Vec::new()),
        map: MapWanted::Full,
        claim: ClaimAsk::WhoFetches,
    };
    match network.request(home, request).await {
        Err(TransferError::NotHere) => None,
        Ok(PeerAnswer::Claimed(claimant)) => Some(claimant),
        other => panic!("the home answered a claim with {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_not_all_connected_agree_on_the_home_and_one_fetches_from_the_origin() {
    let (_stop_tx, stop) = watch::channel(false);
    let key = [21u8; 32];
    // A chain: each node joins through the one before it.
    let mut nodes: Vec<TestNode> = Vec::new();
    for _ in 0..6 {
        let bootstrap = nodes
            .last()
            .map(|n| vec![n.addr.clone()])
            .unwrap_or_default();
        let joiner = node(&key, bootstrap, stop.clone()).await;
        if let Some(previous) = nodes.last() {
            wait_for_member(&joiner, previous.network.local_peer_id()).await;
        }
        nodes.push(joiner);
    }
    let ids: Vec<PeerId> = nodes.iter().map(|n| n.network.local_peer_id()).collect();
    // Every node's routing table holds every member (the joiners looked themselves up).
    for node in &nodes {
        for id in &ids {
            if *id != node.network.local_peer_id() {
                wait_for_member(node, *id).await;
            }
        }
    }

    // The first node keeps a single connection, to the second: it sees one member.
    // (Repeated: the others' own Kademlia bootstraps may still dial it while they settle.)
    let lonely = &nodes[0];
    for _ in 0..200 {
        if lonely.network.members() == vec![ids[1]] {
            break;
        }
        for id in &ids[2..] {
            lonely.network.disconnect(*id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lonely.network.members(), vec![ids[1]]);

    // Blobs whose home is neither the lonely node nor its one member: its own view would pick
    // another home than everybody else.
    let digests: Vec<BlobDigest> = (0u8..=255)
        .map(|n| BlobDigest::from_bytes([n; 32]))
        .filter(|d| !ids[..2].contains(&true_home(d, &ids)))
        .take(3)
        .collect();
    assert_eq!(digests.len(), 3);
    // (Checked before any lookup: a lookup connects the lonely node to the members it reaches.)
    for digest in &digests {
        assert_ne!(
            lonely.network.home_among_connected(*digest),
            true_home(digest, &ids)
        );
    }
    for digest in &digests {
        let home = true_home(digest, &ids);
        assert_eq!(lonely.network.find_home(*digest).await, home);
        for node in &nodes[1..] {
            assert_eq!(node.network.find_home(*digest).await, home);
        }
    }

    // Every node but the home misses the blob at once and asks the home who fetches it: one is
    // told to fetch it from the origin, the others whom to follow. (The home's own miss is left
    // out: a home that claimed a blob offers its flight to the others, and these nodes run no
    // flights.)
    let digest = digests[0];
    let home = true_home(&digest, &ids);
    let mut asks = Vec::new();
    for node in nodes.iter().filter(|n| n.network.local_peer_id() != home) {
        let network = node.network.clone();
        asks.push(tokio::spawn(async move {
            let home = network.find_home(digest).await;
            claim(&network, home, digest).await
        }));
    }
    let mut from_origin = 0;
    for ask in asks {
        match ask.await.unwrap() {
            None => from_origin += 1,
            Some(parent) => assert!(ids.contains(&parent), "told to follow {parent}"),
        }
    }
    assert_eq!(
        from_origin, 1,
        "more than one node would fetch from the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_homing_member_is_placed_away_from_the_one_that_failed_it_by_the_same_home() {
    let (_stop_tx, stop) = watch::channel(false);
    let key = [22u8; 32];
    let mut nodes: Vec<TestNode> = Vec::new();
    for _ in 0..4 {
        let bootstrap = nodes
            .last()
            .map(|n| vec![n.addr.clone()])
            .unwrap_or_default();
        let joiner = node(&key, bootstrap, stop.clone()).await;
        if let Some(previous) = nodes.last() {
            wait_for_member(&joiner, previous.network.local_peer_id()).await;
        }
        nodes.push(joiner);
    }
    let ids: Vec<PeerId> = nodes.iter().map(|n| n.network.local_peer_id()).collect();
    for node in &nodes {
        for id in &ids {
            if *id != node.network.local_peer_id() {
                wait_for_member(node, *id).await;
            }
        }
    }
    let digest = BlobDigest::from_bytes([9; 32]);
    let home = true_home(&digest, &ids);
    let others: Vec<&TestNode> = nodes
        .iter()
        .filter(|n| n.network.local_peer_id() != home)
        .collect();
    let (first, second, third) = (others[0], others[1], others[2]);
    // `second` got bad bytes from the home once (say): it still finds the same home, since the
    // home's claims are not its bytes and every node must ask the same one.
    // (Once the disconnection that avoiding brings is done: the lookup then dials it again.)
    second.network.avoid(home);
    for _ in 0..100 {
        if !second.network.members().contains(&home) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(second.network.find_home(digest).await, home);

    assert_eq!(claim(&first.network, home, digest).await, None);
    let first_id = first.network.local_peer_id();
    assert_eq!(claim(&second.network, home, digest).await, Some(first_id));
    assert_eq!(claim(&third.network, home, digest).await, Some(first_id));
    // `first` fails `second` mid-blob while its lease runs: asked plainly, the home names it
    // again; named as the one that failed, the home places `second` under `third` at once.
    assert_eq!(claim(&second.network, home, digest).await, Some(first_id));
    match second
        .network
        .request_instead_of(home, digest, first_id)
        .await
    {
        Ok(PeerAnswer::Claimed(parent)) => assert_eq!(parent, third.network.local_peer_id()),
        other => panic!("the home answered a re-homing request with {other:?}"),
    }
    // `third` is failed by `first` too: nobody else is left (`second` follows it), so it is let
    // fetch the rest from the origin.
    assert!(matches!(
        third
            .network
            .request_instead_of(home, digest, first_id)
            .await,
        Err(TransferError::NotHere)
    ));
}
