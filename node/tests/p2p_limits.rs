//! Connection limits against peers that never prove the network key: a node keeps at most its
//! limit of their connections open and refuses the rest, and once they are gone a member joins as
//! before.

mod common;

use common::{node_limited, TestNode};

use std::time::Duration;

use futures::StreamExt as _;
use libp2p::swarm::dummy;
use libp2p::Swarm;
use shoal_node::p2p::ConnectionLimits;
use tokio::sync::watch;

/// A bare QUIC peer with no behaviour: it holds connections open and proves nothing.
fn outsider() -> Swarm<dummy::Behaviour> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_quic()
        .with_behaviour(|_| dummy::Behaviour)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..600 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never: {what}");
}

fn connections(node: &TestNode) -> u64 {
    node.metrics
        .p2p_connections
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unproven_connections_beyond_the_limit_are_refused() {
    let (_stop_tx, stop) = watch::channel(false);
    let key = [31u8; 32];
    let limits = ConnectionLimits {
        max_unproven: 2,
        max_unproven_per_ip: 2,
        ..ConnectionLimits::default()
    };
    let a = node_limited(&key, Vec::new(), stop.clone(), limits).await;

    // Five outsiders dial A at once and keep polling their swarms.
    let (done_tx, done) = watch::channel(false);
    let mut outsiders = Vec::new();
    for _ in 0..5 {
        let mut swarm = outsider();
        swarm.dial(a.addr.clone()).unwrap();
        let mut done = done.clone();
        outsiders.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = done.wait_for(|d| *d) => return,
                    _ = swarm.select_next_some() => {}
                }
            }
        }));
    }
    wait_until("three outsiders refused", || {
        a.metrics.p2p_refused_connections.get() >= 3
    })
    .await;
    assert_eq!(a.metrics.p2p_refused_connections.get(), 3);
    assert!(
        connections(&a) <= 2,
        "A holds {} connections",
        connections(&a)
    );

    // When the outsiders leave, a member joins as before.
    done_tx.send(true).unwrap();
    for outsider in outsiders {
        outsider.await.unwrap();
    }
    wait_until("the outsiders' connections closed", || connections(&a) == 0).await;
    let b = common::node(&key, vec![a.addr.clone()], stop.clone()).await;
    let b_id = b.network.local_peer_id();
    wait_until("B became a member of A", || {
        a.network.members().contains(&b_id)
    })
    .await;
}
