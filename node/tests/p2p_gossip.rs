//! Gossip in one process: a member's announcements reach another member's holdings (partial,
//! complete, dropped), the DHT and connection gauges follow, and peers that do not prove the
//! network key (a node with another key, and a bare gossipsub client that never tries) neither
//! hear the members' gossip nor get their own believed.

mod common;

use common::{node, TestNode};

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt as _;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity};
use libp2p::swarm::SwarmEvent;
use sha2::{Digest as _, Sha256};
use shoal_node::p2p::{self, AnnouncedHolding};
use shoal_proto::gossip::{Announcement, GossipMessage as _, Topic};
use shoal_proto::wire::ShardSet;
use shoal_proto::BlobDigest;
use tokio::sync::{oneshot, watch};

fn digest(seed: u8) -> BlobDigest {
    BlobDigest::from_bytes(Sha256::digest([seed]).into())
}

/// Waits (polling) until `done` holds; panics naming `what` if it never does.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..600 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}

/// Publishes `announcement` from `from` until `to` holds what `expect` says about its blob.
/// Repeating is needed only at first: the sender must have heard the receiver's subscription.
async fn announce_until(
    from: &TestNode,
    to: &TestNode,
    announcement: Announcement,
    expect: impl Fn(&[AnnouncedHolding]) -> bool,
) -> Vec<AnnouncedHolding> {
    let blob = announcement.blob_digest();
    for _ in 0..300 {
        from.network.announce(announcement.clone());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let holders = to.network.announced_holders(&blob);
        if expect(&holders) {
            return holders;
        }
    }
    panic!("{announcement:?} never reached the other member");
}

async fn two_members(key: &[u8], stop: &watch::Receiver<bool>) -> (TestNode, TestNode) {
    let a = node(key, Vec::new(), stop.clone()).await;
    let b = node(key, vec![a.addr.clone()], stop.clone()).await;
    let (a_id, b_id) = (a.network.local_peer_id(), b.network.local_peer_id());
    eventually("A and B proved membership to each other", || {
        a.network.members() == vec![b_id] && b.network.members() == vec![a_id]
    })
    .await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_reach_members_and_gauges_follow() {
    let (_stop_tx, stop) = watch::channel(false);
    let (a, b) = two_members(&[3u8; 32], &stop).await;
    let a_id = a.network.local_peer_id();

    // A partial holding, as a node announces while a blob downloads.
    let downloading = digest(1);
    let some = ShardSet::from_indices([0, 1, 5]);
    let partial = Announcement::holds(downloading, 12, &some).unwrap();
    let holders = announce_until(&a, &b, partial, |h| !h.is_empty()).await;
    assert_eq!(
        holders,
        vec![AnnouncedHolding {
            peer: a_id,
            shard_count: 12,
            shards: some,
            complete: false,
        }]
    );

    // A committed blob, announced the way pullthrough does after commit.
    let bytes = vec![9u8; 300_000];
    let committed = BlobDigest::from_bytes(Sha256::digest(&bytes).into());
    let mut ingest = a.store.begin_ingest(committed);
    ingest.write(&bytes).unwrap();
    ingest.verify().unwrap();
    let map = ingest.commit().unwrap();
    a.network.announce_held(committed);
    eventually("B learned that A holds the committed blob", || {
        !b.network.announced_holders(&committed).is_empty()
    })
    .await;
    let holders = b.network.announced_holders(&committed);
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].peer, a_id);
    assert!(holders[0].complete);
    assert_eq!(holders[0].shards, ShardSet::All);
    assert_eq!(holders[0].shard_count as usize, map.shards.len());

    // The download finished elsewhere and A evicted the partial blob.
    a.network.announce(Announcement::dropped(downloading));
    eventually("B forgot A's dropped holding", || {
        b.network.announced_holders(&downloading).is_empty()
    })
    .await;
    assert_eq!(b.network.announced_holders(&committed).len(), 1);
    assert_eq!(b.metrics.p2p_gossip_rejected.get(), 0);
    assert!(b.metrics.p2p_gossip_received.get() >= 3);
    assert!(a.metrics.p2p_gossip_published.get() >= 3);

    // DHT gauges: A's provider record is held by A as its own and by B for A.
    a.network.provide_waiting(committed).await;
    eventually("provider record gauges on A and B", || {
        a.metrics.p2p_provider_records_local.load(Ordering::Relaxed) == 1
            && b.metrics
                .p2p_provider_records_remote
                .load(Ordering::Relaxed)
                == 1
    })
    .await;
    for n in [&a, &b] {
        assert!(n.metrics.p2p_connections.load(Ordering::Relaxed) >= 1);
        assert_eq!(n.metrics.p2p_routing_table_peers.load(Ordering::Relaxed), 1);
    }
    assert_eq!(b.metrics.p2p_announced_holdings.load(Ordering::Relaxed), 1);

    // A member that leaves takes its holdings with it.
    let (stop_c, c_stopped) = watch::channel(false);
    let c = node(&[3u8; 32], vec![a.addr.clone()], c_stopped).await;
    let c_id = c.network.local_peer_id();
    eventually("C proved membership to A", || {
        a.network.members().contains(&c_id)
    })
    .await;
    let holders = announce_until(&c, &a, Announcement::complete(digest(7), 4), |h| {
        !h.is_empty()
    })
    .await;
    assert_eq!(holders[0].peer, c_id);
    stop_c.send(true).unwrap();
    eventually("A forgot C's holdings when C went away", || {
        a.network.announced_holders(&digest(7)).is_empty()
    })
    .await;
    assert!(!a.network.members().contains(&c_id));
}

/// What a bare gossipsub client saw while connected to a member.
#[derive(Debug, Default)]
struct OutsiderSaw {
    messages: usize,
    subscriptions_from_member: usize,
    published: usize,
    publish_attempts: usize,
    disconnected: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_neither_hear_gossip_nor_get_theirs_believed() {
    let (_stop_tx, stop) = watch::channel(false);
    let (a, b) = two_members(&[5u8; 32], &stop).await;
    let a_id = a.network.local_peer_id();
    let forged = digest(66);

    // A real node with another key: its proof fails and it is disconnected; its announcement
    // reaches neither member.
    let other = node(&[6u8; 32], vec![a.addr.clone()], stop.clone()).await;
    for _ in 0..20 {
        other.network.announce(Announcement::complete(forged, 1));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually("A refused the node with another key", || {
        a.metrics.p2p_failed_proofs.get() >= 1
    })
    .await;
    assert!(other.network.members().is_empty());

    // A bare gossipsub client on Shoal's gossip protocol, subscribed to the announcements, that
    // never proves the key. It keeps trying to publish until A disconnects it.
    let mut outsider = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_quic()
        .with_behaviour(|key| {
            let mut gossip: gossipsub::Behaviour = gossipsub::Behaviour::new(
                MessageAuthenticity::Signed(key.clone()),
                p2p::gossipsub_config(),
            )?;
            gossip.subscribe(&IdentTopic::new(Topic::Announce.name()))?;
            Ok(gossip)
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    outsider.dial(a.addr.clone()).unwrap();
    let (connected_tx, connected) = oneshot::channel();
    let outsider_run = tokio::spawn(async move {
        let mut saw = OutsiderSaw::default();
        let mut connected_tx = Some(connected_tx);
        let mut attempt = tokio::time::interval(Duration::from_millis(100));
        let payload = Announcement::complete(forged, 1).to_payload();
        let ended = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                tokio::select! {
                    event = outsider.select_next_some() => match event {
                        SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == a_id => {
                            if let Some(tx) = connected_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. }
                            if peer_id == a_id => return,
                        SwarmEvent::Behaviour(gossipsub::Event::Message { .. }) => {
                            saw.messages += 1;
                        }
                        SwarmEvent::Behaviour(gossipsub::Event::Subscribed { peer_id, .. })
                            if peer_id == a_id => saw.subscriptions_from_member += 1,
                        _ => {}
                    },
                    _ = attempt.tick() => {
                        saw.publish_attempts += 1;
                        let topic = IdentTopic::new(Topic::Announce.name());
                        if outsider.behaviour_mut().publish(topic, payload.clone()).is_ok() {
                            saw.published += 1;
                        }
                    }
                }
            }
        })
        .await;
        saw.disconnected = ended.is_ok();
        saw
    });
    connected.await.expect("the outsider never connected to A");

    // While the outsider is connected, A keeps announcing, and B hears it.
    let news = digest(8);
    let announcer = a.network.clone();
    let announcing = tokio::spawn(async move {
        for shard_count in 1.. {
            announcer.announce(Announcement::complete(news, shard_count));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    eventually("B heard A while the outsider was connected", || {
        !b.network.announced_holders(&news).is_empty()
    })
    .await;
    let saw = outsider_run.await.unwrap();
    // A's gossip to B goes on after the outsider is gone: later announcements still arrive.
    let heard = b.network.announced_holders(&news)[0].shard_count;
    eventually("A's later announcements reach B", || {
        b.network.announced_holders(&news)[0].shard_count > heard
    })
    .await;
    announcing.abort();
    assert!(
        saw.disconnected,
        "A never disconnected the outsider: {saw:?}"
    );
    assert_eq!(saw.messages, 0, "the outsider heard gossip: {saw:?}");
    assert_eq!(
        saw.subscriptions_from_member, 0,
        "A told the outsider its subscriptions: {saw:?}"
    );
    assert!(saw.publish_attempts > 0);
    assert_eq!(saw.published, 0, "the outsider could publish to A: {saw:?}");
    assert!(a.metrics.p2p_failed_proofs.get() >= 2);
    for member in [&a, &b] {
        assert!(member.network.announced_holders(&forged).is_empty());
        assert_eq!(member.network.members().len(), 1);
    }
    assert!(other.network.announced_holders(&news).is_empty());
}
