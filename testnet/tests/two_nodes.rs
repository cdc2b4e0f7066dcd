//! End-to-end tests of two `shoald` nodes joined by the peer network, with a
//! real origin registry and real containerd instances:
//!
//! - an image pulled through node A is pulled through a fresh node B with the
//!   origin stopped: everything comes from A, the tag's resolution and the
//!   manifests over `/shoal/manifests/1`, the config and layers over
//!   `/shoal/shards/1`;
//! - a node holding another network key gets nothing from A, neither manifests
//!   nor blobs, and A logs the failed membership proof;
//! - a shard corrupted on A's disk is not sent, and B gets the rest of that
//!   blob from the origin;
//! - A restarted with its data directory keeps its peer id and serves what it
//!   holds (blobs announced again at start, manifests from its cache).
//!
//! B never sees the origin before it is stopped in the first, second and last
//! tests: whatever B serves there came from A.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use shoal_testnet::containerd::{describe, Containerd};
use shoal_testnet::hosts::HostsDir;
use shoal_testnet::image::{push_image, ImageInfo, ImageSpec};
use shoal_testnet::node::{LogsOnFailure, NetworkKeyFile, Node, NodeConfig};
use shoal_testnet::origin::Origin;

/// How long a new node may take to prove membership to its bootstrap peer.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Checks that `b` took the image's manifests from its peer `a`: the tag's answer (which also
/// caches its target, the index or the manifest) and, behind an index, the platform manifest by
/// digest, each a manifest A sent.
async fn ensure_manifests_came_from_peer(a: &Node, b: &Node, image: &ImageInfo) -> Result<()> {
    let wanted = 1.0 + f64::from(u8::from(image.index.is_some()));
    let received = b
        .metric("shoal_manifests_received_from_peers_total")
        .await?;
    ensure!(
        received >= wanted,
        "B received {received} manifests from peers, want at least {wanted}"
    );
    let sent = a.metric("shoal_manifests_sent_to_peers_total").await?;
    ensure!(
        sent >= received,
        "A sent {sent} manifests to peers, B received {received}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_node_pulls_from_its_peer_with_the_origin_down() -> Result<()> {
    let mut origin = Origin::start().await?;
    let image = push_image(&origin, ImageSpec::multi_layer("test/p2p", "v1", 31)).await?;
    let key = NetworkKeyFile::new(31)?;
    let a = Node::start(
        NodeConfig::for_origin(&origin)
            .network_key(&key)
            .region("a"),
    )
    .await?;
    let a_addr = a
        .p2p_addr()
        .context("node A reported no p2p address")?
        .to_owned();
    let mut logs = LogsOnFailure::new([&a]);

    let hosts_a = HostsDir::for_test_registry(a.registry_addr())?;
    let first = Containerd::start().await?;
    first.pull_ok(&image.reference, hosts_a.path()).await?;
    first.ensure_holds(&image).await?;
    drop(first);

    let b = Node::start(
        NodeConfig::for_origin(&origin)
            .network_key(&key)
            .region("b")
            .bootstrap(&a_addr),
    )
    .await?;
    logs.add(&b);
    b.wait_for_metric("shoal_p2p_members", JOIN_TIMEOUT, |n| n >= 1.0)
        .await
        .context("B never joined A")?;
    origin.stop().await?;

    let hosts_b = HostsDir::for_test_registry(b.registry_addr())?;
    let second = Containerd::start().await?;
    second
        .pull_ok(&image.reference, hosts_b.path())
        .await
        .context("pull through B with the origin stopped")?;
    second.ensure_holds(&image).await?;
    ensure_manifests_came_from_peer(&a, &b, &image).await?;

    let blob_bytes: u64 = image.blobs().map(|blob| blob.size).sum();
    let from_peer = b
        .metric_with("shoal_bytes_received_total", &[("source", "peer")])
        .await?;
    let from_origin = b
        .metric_with("shoal_bytes_received_total", &[("source", "origin")])
        .await?;
    ensure!(
        from_peer >= blob_bytes as f64,
        "B received {from_peer} bytes from peers, want all {blob_bytes} bytes of the image's blobs"
    );
    ensure!(
        from_origin == 0.0,
        "B received {from_origin} bytes from the origin"
    );
    let sent = a.metric("shoal_bytes_sent_to_peers_total").await?;
    ensure!(sent >= blob_bytes as f64, "A sent {sent} bytes to peers");
    a.healthz().await?;
    b.healthz().await?;
    logs.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_another_network_key_gets_nothing() -> Result<()> {
    let mut origin = Origin::start().await?;
    let image = push_image(&origin, ImageSpec::multi_layer("test/p2p-key", "v1", 32)).await?;
    let key = NetworkKeyFile::new(32)?;
    let other_key = NetworkKeyFile::new(33)?;
    let a = Node::start(NodeConfig::for_origin(&origin).network_key(&key)).await?;
    let a_addr = a
        .p2p_addr()
        .context("node A reported no p2p address")?
        .to_owned();
    let mut logs = LogsOnFailure::new([&a]);

    let hosts_a = HostsDir::for_test_registry(a.registry_addr())?;
    let first = Containerd::start().await?;
    first.pull_ok(&image.reference, hosts_a.path()).await?;
    drop(first);

    let outsider = Node::start(
        NodeConfig::for_origin(&origin)
            .network_key(&other_key)
            .bootstrap(&a_addr),
    )
    .await?;
    logs.add(&outsider);
    a.wait_for_log("failed the membership proof", JOIN_TIMEOUT)
        .await
        .context("A never logged the outsider's failed proof")?;
    ensure!(a.metric("shoal_p2p_members").await? == 0.0);
    ensure!(outsider.metric("shoal_p2p_members").await? == 0.0);
    ensure!(a.metric("shoal_p2p_failed_proofs_total").await? >= 1.0);

    origin.stop().await?;
    // Asked directly, the outsider has neither the tag, nor the manifests, nor any blob: A gave it
    // nothing and the origin is down.
    let mut references = vec![image.tag.clone(), image.manifest.digest.clone()];
    references.extend(image.index.iter().map(|index| index.digest.clone()));
    for reference in &references {
        ensure!(
            outsider
                .fetch_manifest(&image.repo, reference)
                .await
                .is_err(),
            "the outsider served manifest {reference} with the origin down"
        );
    }
    for blob in image.blobs() {
        ensure!(
            outsider
                .fetch_blob(&image.repo, &blob.digest)
                .await
                .is_err(),
            "the outsider served blob {} with the origin down",
            blob.digest
        );
    }
    let hosts = HostsDir::for_test_registry(outsider.registry_addr())?;
    let second = Containerd::start().await?;
    let output = second
        .pull_with_timeout(&image.reference, hosts.path(), Duration::from_secs(60))
        .await?;
    ensure!(
        !output.status.success(),
        "the outsider's pull succeeded with the origin down: {}",
        describe(&output)
    );
    ensure!(
        outsider
            .metric_with("shoal_bytes_received_total", &[("source", "peer")])
            .await?
            == 0.0,
        "the outsider received bytes from a peer"
    );
    ensure!(a.metric("shoal_bytes_sent_to_peers_total").await? == 0.0);
    ensure!(
        outsider
            .metric("shoal_manifests_received_from_peers_total")
            .await?
            == 0.0,
        "the outsider received manifests from a peer"
    );
    ensure!(a.metric("shoal_manifests_sent_to_peers_total").await? == 0.0);
    a.healthz().await?;
    logs.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_shard_at_the_peer_falls_back_to_the_origin() -> Result<()> {
    let origin = Origin::start().await?;
    let image = push_image(&origin, ImageSpec::multi_layer("test/p2p-bad", "v1", 34)).await?;
    let key = NetworkKeyFile::new(34)?;
    let a = Node::start(NodeConfig::for_origin(&origin).network_key(&key)).await?;
    let a_addr = a
        .p2p_addr()
        .context("node A reported no p2p address")?
        .to_owned();
    let mut logs = LogsOnFailure::new([&a]);
    let hosts_a = HostsDir::for_test_registry(a.registry_addr())?;
    let first = Containerd::start().await?;
    first.pull_ok(&image.reference, hosts_a.path()).await?;
    drop(first);

    // Flip a byte in A's largest shard: A must not send it, and B must get the rest elsewhere.
    let (shard, len) = a
        .shard_files()?
        .into_iter()
        .next()
        .context("A holds no shards")?;
    let mut bytes = std::fs::read(&shard)?;
    bytes[len as usize / 2] ^= 0xff;
    std::fs::write(&shard, bytes)?;

    let b = Node::start(
        NodeConfig::for_origin(&origin)
            .network_key(&key)
            .bootstrap(&a_addr),
    )
    .await?;
    logs.add(&b);
    b.wait_for_metric("shoal_p2p_members", JOIN_TIMEOUT, |n| n >= 1.0)
        .await
        .context("B never joined A")?;
    let hosts_b = HostsDir::for_test_registry(b.registry_addr())?;
    let second = Containerd::start().await?;
    second.pull_ok(&image.reference, hosts_b.path()).await?;
    second.ensure_holds(&image).await?;
    ensure!(
        b.metric("shoal_peer_fetch_failures_total").await? >= 1.0,
        "B saw no failed peer transfer"
    );
    ensure!(
        b.metric_with("shoal_bytes_received_total", &[("source", "origin")])
            .await?
            > 0.0,
        "B took nothing from the origin"
    );
    ensure!(
        b.metric_with("shoal_bytes_received_total", &[("source", "peer")])
            .await?
            > 0.0,
        "B took nothing from its peer"
    );
    b.healthz().await?;
    logs.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_keeps_its_identity_and_serves_what_it_holds() -> Result<()> {
    let mut origin = Origin::start().await?;
    let image = push_image(
        &origin,
        ImageSpec::multi_layer("test/p2p-restart", "v1", 35),
    )
    .await?;
    let key = NetworkKeyFile::new(35)?;
    let mut a = Node::start(NodeConfig::for_origin(&origin).network_key(&key)).await?;
    let mut logs = LogsOnFailure::new([&a]);
    let before = a.p2p_addr().context("no p2p address")?.to_owned();
    let hosts_a = HostsDir::for_test_registry(a.registry_addr())?;
    let first = Containerd::start().await?;
    first.pull_ok(&image.reference, hosts_a.path()).await?;
    drop(first);

    a.stop().await?;
    a.restart().await?;
    let after = a
        .p2p_addr()
        .context("no p2p address after restart")?
        .to_owned();
    let peer_id = |addr: &str| addr.rsplit("/p2p/").next().map(str::to_owned);
    ensure!(
        peer_id(&before) == peer_id(&after),
        "peer id changed across a restart: {before} then {after}"
    );

    // Only the announcements made at start-up can tell B that A holds the image.
    let b = Node::start(
        NodeConfig::for_origin(&origin)
            .network_key(&key)
            .bootstrap(&after),
    )
    .await?;
    logs.add(&b);
    b.wait_for_metric("shoal_p2p_members", JOIN_TIMEOUT, |n| n >= 1.0)
        .await
        .context("B never joined A")?;
    origin.stop().await?;
    let hosts_b = HostsDir::for_test_registry(b.registry_addr())?;
    let second = Containerd::start().await?;
    second.pull_ok(&image.reference, hosts_b.path()).await?;
    second.ensure_holds(&image).await?;
    ensure_manifests_came_from_peer(&a, &b, &image).await?;
    ensure!(
        b.metric_with("shoal_bytes_received_total", &[("source", "origin")])
            .await?
            == 0.0
    );
    logs.passed();
    Ok(())
}
