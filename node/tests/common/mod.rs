//! What the in-process peer network tests share: a node (store, peer network, metrics) on a
//! loopback QUIC port with its own temporary data directory.
//!
//! Each test binary uses part of this module, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::Arc;

use libp2p::{Multiaddr, PeerId};
use shoal_node::config::DEFAULT_CHUNKING;
use shoal_node::metrics::Metrics;
use shoal_node::p2p::{self, ConnectionLimits, NetworkKey, P2pConfig, PeerNetwork};
use shoal_node::pullthrough::CachedManifests;
use shoal_node::store::{ShardStore, StoreConfig};
use tokio::sync::watch;

/// One node of the peer network, running until the test's stop signal.
pub struct TestNode {
    pub network: PeerNetwork,
    pub addr: Multiaddr,
    pub store: ShardStore,
    pub metrics: Arc<Metrics>,
    _dir: tempfile::TempDir,
}

/// A node holding `key`, joining through `bootstrap`, admitting every key holder.
pub async fn node(key: &[u8], bootstrap: Vec<Multiaddr>, stop: watch::Receiver<bool>) -> TestNode {
    node_allowing(key, bootstrap, stop, None).await
}

/// [`node`] with an allowlist of peer ids.
pub async fn node_allowing(
    key: &[u8],
    bootstrap: Vec<Multiaddr>,
    stop: watch::Receiver<bool>,
    allowed_peers: Option<BTreeSet<PeerId>>,
) -> TestNode {
    node_configured(
        key,
        bootstrap,
        stop,
        allowed_peers,
        ConnectionLimits::default(),
    )
    .await
}

/// [`node`] with connection limits of its own.
pub async fn node_limited(
    key: &[u8],
    bootstrap: Vec<Multiaddr>,
    stop: watch::Receiver<bool>,
    limits: ConnectionLimits,
) -> TestNode {
    node_configured(key, bootstrap, stop, None, limits).await
}

async fn node_configured(
    key: &[u8],
    bootstrap: Vec<Multiaddr>,
    stop: watch::Receiver<bool>,
    allowed_peers: Option<BTreeSet<PeerId>>,
    limits: ConnectionLimits,
) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let store = ShardStore::open(&StoreConfig {
        data_dir: dir.path().to_path_buf(),
        chunking: DEFAULT_CHUNKING,
        max_disk_bytes: 1 << 30,
    })
    .unwrap();
    let config = P2pConfig {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
        bootstrap,
        region: "test".into(),
        network_key: NetworkKey::derive(key),
        allowed_peers,
        shaping: Default::default(),
        limits,
    };
    let metrics = Arc::new(Metrics::default());
    let (network, addrs, _task) = p2p::start(
        config,
        dir.path(),
        store.clone(),
        Arc::new(CachedManifests::new(store.clone())),
        metrics.clone(),
        stop,
    )
    .await
    .unwrap();
    TestNode {
        network,
        addr: addrs[0].clone(),
        store,
        metrics,
        _dir: dir,
    }
}
