//! The peer network in one process: a member finds a blob's provider through the DHT, and a
//! peer that never proves the network key gets no Kademlia answer from the same node.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use libp2p::kad::store::MemoryStore;
use libp2p::swarm::SwarmEvent;
use libp2p::{kad, Multiaddr};
use sha2::{Digest as _, Sha256};
use shoal_node::config::DEFAULT_CHUNKING;
use shoal_node::metrics::Metrics;
use shoal_node::pullthrough::CachedManifests;
use shoal_node::p2p::{self, NetworkKey, P2pConfig, PeerNetwork, KAD_PROTOCOL};
use shoal_node::store::{ShardStore, StoreConfig};
use shoal_proto::BlobDigest;
use tokio::sync::watch;

struct TestNode {
    network: PeerNetwork,
    addr: Multiaddr,
    store: ShardStore,
    _dir: tempfile::TempDir,
}

async fn node(key: &[u8], bootstrap: Vec<Multiaddr>, stop: watch::Receiver<bool>) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let store = ShardStore::open(&StoreConfig {
        data_dir: dir.path().to_path_buf(),
        chunking: DEFAULT_CHUNKING,
        max_disk_bytes: 1 << 30,
    })
    .unwrap();
    let config = P2pConfig {
        listen: "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
        bootstrap,
        region: "test".into(),
        network_key: NetworkKey::derive(key),
    };
    let (network, addr, _task) = p2p::start(
        config,
        dir.path(),
        store.clone(),
        Arc::new(CachedManifests::new(store.clone())),
        Arc::new(Metrics::default()),
        stop,
    )
    .await
    .unwrap();
    TestNode {
        network,
        addr,
        store,
        _dir: dir,
    }
}

fn commit_blob(store: &ShardStore, bytes: &[u8]) -> BlobDigest {
    let digest = BlobDigest::from_bytes(Sha256::digest(bytes).into());
    let mut ingest = store.begin_ingest(digest);
    ingest.write(bytes).unwrap();
    ingest.verify().unwrap();
    ingest.commit().unwrap();
    digest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_find_providers_and_outsiders_get_no_dht_answer() {
    let (_stop_tx, stop) = watch::channel(false);
    let key = [7u8; 32];
    let a = node(&key, Vec::new(), stop.clone()).await;
    let digest = commit_blob(&a.store, &[42u8; 100_000]);
    a.network.provide_waiting(digest).await;

    // A member finds A as the provider and can fetch the whole blob from it.
    let b = node(&key, vec![a.addr.clone()], stop.clone()).await;
    let mut providers = Vec::new();
    for _ in 0..100 {
        providers = b
            .network
            .find_providers(digest, Duration::from_secs(2))
            .await;
        if !providers.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(providers, vec![a.network.local_peer_id()]);
    let mut blob = b.network.open_blob(providers[0], digest).await.unwrap();
    let mut received = Vec::new();
    while let Some(shard) = blob.next_shard().await.unwrap() {
        received.extend_from_slice(&shard);
    }
    assert_eq!(received, vec![42u8; 100_000]);

    // A bare Kademlia peer on the same protocol, that never proves the key, asks A directly.
    let mut outsider = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_quic()
        .with_behaviour(|key| {
            let local = key.public().to_peer_id();
            let mut kad = kad::Behaviour::with_config(
                local,
                MemoryStore::new(local),
                kad::Config::new(KAD_PROTOCOL),
            );
            kad.set_mode(Some(kad::Mode::Server));
            kad
        })
        .unwrap()
        .build();
    outsider
        .behaviour_mut()
        .add_address(&a.network.local_peer_id(), a.addr.clone());
    outsider
        .behaviour_mut()
        .get_providers(kad::RecordKey::new(digest.as_bytes()));
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        let mut found = Vec::new();
        loop {
            if let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::GetProviders(result),
                step,
                ..
            }) = outsider.select_next_some().await
            {
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result {
                    found.extend(providers);
                }
                if step.last {
                    return found;
                }
            }
        }
    })
    .await
    .expect("the outsider's query never finished");
    assert!(found.is_empty(), "an outsider learned providers: {found:?}");
}
