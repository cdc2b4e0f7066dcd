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
//!   holds (blobs announced again at start, manifests from its cache);
//! - A holds a shard map that lies (another layer's shards under the largest
//!   layer's digest, each shard's BLAKE3 true): B's response fails at the
//!   sha256, A is avoided, and B fetches the layer again from the origin on its
//!   own, so the retry is served from B's store.
//!
//! B never sees the origin before it is stopped in the first, second and last
//! tests: whatever B serves there came from A.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use shoal_testnet::containerd::{describe, Containerd};
use shoal_testnet::hosts::HostsDir;
use shoal_testnet::image::{push_image, sha256_digest, ImageInfo, ImageSpec};
use shoal_testnet::node::{corrupt_shard_file, LogsOnFailure, NetworkKeyFile, Node, NodeConfig};
use shoal_testnet::origin::Origin;
use shoal_testnet::raw_http;

/// How long a new node may take to prove membership to its bootstrap peer.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

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
    let a_addr = a.p2p_addr()?.to_owned();
    let mut logs = LogsOnFailure::new([&a]);

    let hosts_a = HostsDir::for_test_registry(a.registry_addr())?;
    let first = Containerd::start().await?;
    first.pull_ok(&image.reference, hosts_a.path()).await?;
    first.ensure_holds(&image).await?;
    drop(first);

    let b = Node::start(NodeConfig::joining(&origin, &key, &a_addr).region("b")).await?;
    logs.add(&b);
    b.wait_until_joined().await?;
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
    // A counts each shard after writing it, so its count may trail B's by a moment.
    a.wait_for_metric("shoal_bytes_sent_to_peers_total", JOIN_TIMEOUT, |sent| {
        sent >= blob_bytes as f64
    })
    .await
    .context("A did not count all the bytes it sent")?;
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
    let a_addr = a.p2p_addr()?.to_owned();
    let mut logs = LogsOnFailure::new([&a]);

    a.pull_and_store(&image).await?;

    let outsider = Node::start(NodeConfig::joining(&origin, &other_key, &a_addr)).await?;
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
    let a_addr = a.p2p_addr()?.to_owned();
    let mut logs = LogsOnFailure::new([&a]);
    a.pull_and_store(&image).await?;

    // Flip a byte in A's largest shard: A must not send it, and B must get the rest elsewhere.
    let (shard, _) = a
        .shard_files()?
        .into_iter()
        .next()
        .context("A holds no shards")?;
    corrupt_shard_file(&shard)?;

    let b = Node::start(NodeConfig::joining(&origin, &key, &a_addr)).await?;
    logs.add(&b);
    b.wait_until_joined().await?;
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
    let before = a.p2p_addr()?.to_owned();
    a.pull_and_store(&image).await?;

    a.stop().await?;
    a.restart().await?;
    let after = a.p2p_addr()?.to_owned();
    let peer_id = |addr: &str| addr.rsplit("/p2p/").next().map(str::to_owned);
    ensure!(
        peer_id(&before) == peer_id(&after),
        "peer id changed across a restart: {before} then {after}"
    );

    // Only the announcements made at start-up can tell B that A holds the image.
    let b = Node::start(NodeConfig::joining(&origin, &key, &after)).await?;
    logs.add(&b);
    b.wait_until_joined().await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_blob_fails_its_digest_is_avoided_and_the_blob_fetched_again() -> Result<()> {
    let origin = Origin::start().await?;
    let image = push_image(&origin, ImageSpec::multi_layer("test/p2p-liar", "v1", 37)).await?;
    let key = NetworkKeyFile::new(37)?;
    let mut a = Node::start(NodeConfig::for_origin(&origin).network_key(&key)).await?;
    let mut logs = LogsOnFailure::new([&a]);
    a.pull_and_store(&image).await?;
    a.stop().await?;

    // The lie: the largest layer's map now lists the smallest layer's shards. Every shard is
    // what its BLAKE3 says; only the blob's sha256 can tell. The index is rebuilt from the maps.
    let (target, other) = (
        image.largest_layer().clone(),
        image.smallest_layer().clone(),
    );
    ensure!(
        target.digest != other.digest,
        "the image needs two distinct layers"
    );
    let maps = a.data_dir().join("maps");
    let digest_bytes = |digest: &str| hex::decode(digest.trim_start_matches("sha256:"));
    let (target_bytes, other_bytes) = (digest_bytes(&target.digest)?, digest_bytes(&other.digest)?);
    let mut map = std::fs::read(maps.join(hex::encode(&other_bytes)))?;
    let at: Vec<usize> = map
        .windows(32)
        .enumerate()
        .filter(|(_, w)| *w == other_bytes.as_slice())
        .map(|(i, _)| i)
        .collect();
    ensure!(at.len() == 1, "the map names its blob {} times", at.len());
    map[at[0]..at[0] + 32].copy_from_slice(&target_bytes);
    std::fs::write(maps.join(hex::encode(&target_bytes)), map)?;
    std::fs::remove_dir_all(a.data_dir().join("index"))?;
    a.restart().await?;

    let b = Node::start(NodeConfig::joining(&origin, &key, a.p2p_addr()?)).await?;
    logs.add(&b);
    b.wait_until_joined().await?;
    // B must be able to find A as a provider of the layer (A keeps its provider records and B
    // has A in its routing table): a request made before that goes straight to the origin and
    // never meets the lie (seen once on a loaded machine).
    let a_blobs = a.metric("shoal_store_blobs").await?;
    a.wait_for_metric_with(
        "shoal_p2p_provider_records",
        &[("provider", "local")],
        JOIN_TIMEOUT,
        |records| records >= a_blobs,
    )
    .await
    .context("A never restored its provider records")?;
    b.wait_for_metric("shoal_p2p_routing_table_peers", JOIN_TIMEOUT, |peers| {
        peers >= 1.0
    })
    .await
    .context("A never entered B's routing table")?;
    let path = format!(
        "/v2/{}/blobs/{}?ns={}",
        image.repo,
        target.digest,
        shoal_testnet::REGISTRY_HOST
    );
    // The first answer streams A's bytes and cannot be completed: it must fail, not end.
    if let Ok(reply) = raw_http::request(b.registry_addr(), "GET", &path, &[]).await {
        ensure!(
            reply.status != 200 || sha256_digest(&reply.body) != target.digest,
            "B completed a response with bytes that fail the digest"
        );
    }
    ensure!(b.metric("shoal_digest_mismatches_total").await? >= 1.0);
    // Without another request, B fetches the layer again, without A, and commits it.
    b.wait_for_stored_blobs(1).await?;
    ensure!(b.metric("shoal_refetches_after_bad_peer_total").await? >= 1.0);
    ensure!(
        b.metric_with("shoal_bytes_received_total", &[("source", "origin")])
            .await?
            >= target.size as f64,
        "B did not take the layer from the origin after the bad peer"
    );
    let origin_before = b
        .metric_with("shoal_bytes_received_total", &[("source", "origin")])
        .await?;
    let retry = raw_http::request(b.registry_addr(), "GET", &path, &[]).await?;
    ensure!(retry.status == 200, "the retry answered {}", retry.status);
    ensure!(
        sha256_digest(&retry.body) == target.digest,
        "the retry served wrong bytes"
    );
    ensure!(
        b.metric_with("shoal_bytes_received_total", &[("source", "origin")])
            .await?
            == origin_before,
        "the retry was not served from B's store"
    );
    logs.passed();
    Ok(())
}
