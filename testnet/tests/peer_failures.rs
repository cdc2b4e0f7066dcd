//! End-to-end tests of peers failing during a transfer, with a real origin
//! registry, real containerd and `shoald` processes.
//!
//! - A peer killed (SIGKILL) in the middle of sending a large layer: the pull
//!   through the receiving node completes, the layer's remaining bytes
//!   coming from the origin with a Range request where the peer stopped.
//!
//! The serving node runs with a TESTING ONLY egress cap, so the transfer of
//! the large layer lasts seconds and the kill lands in its middle; the cap
//! does not affect its own first pull, which comes from the origin.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use shoal_testnet::containerd::{describe, Containerd};
use shoal_testnet::hosts::HostsDir;
use shoal_testnet::image::{push_image, ImageSpec, ManifestFormat};
use shoal_testnet::node::{LogsOnFailure, NetworkKeyFile, Node, NodeConfig};
use shoal_testnet::origin::Origin;

/// The serving node's uplink: 56 MiB take about 7 s.
const EGRESS_BYTES_PER_SEC: u64 = 8 << 20;
/// Peer bytes the receiving node must have before the kill: more than the
/// image config, so part of the large layer has come from the peer.
const PEER_BYTES_BEFORE_KILL: f64 = (1 << 20) as f64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_killed_mid_transfer_the_pull_completes_from_the_origin() -> Result<()> {
    let origin = Origin::start().await?;
    // One large layer, nearly all random so gzip cannot shrink it.
    let image = push_image(
        &origin,
        ImageSpec::new("test/peer-killed", "v1", 51)
            .layer(56 << 20, 97)
            .format(ManifestFormat::OciIndex),
    )
    .await?;
    let layer = image.largest_layer().clone();
    ensure!(layer.size > 48 << 20, "layer is only {} bytes", layer.size);
    let key = NetworkKeyFile::new(51)?;
    let mut a = Node::start(
        NodeConfig::for_origin(&origin)
            .network_key(&key)
            .region("a")
            .test_egress_bytes_per_sec(EGRESS_BYTES_PER_SEC),
    )
    .await?;
    let a_addr = a.p2p_addr()?.to_owned();
    let mut logs = LogsOnFailure::new([&a]);
    a.pull_and_store(&image).await?;

    let b = Node::start(NodeConfig::joining(&origin, &key, &a_addr).region("b")).await?;
    logs.add(&b);
    b.wait_until_joined().await?;
    let hosts_b = HostsDir::for_test_registry(b.registry_addr())?;
    let second = Containerd::start().await?;
    let (reference, hosts_path) = (image.reference.clone(), hosts_b.path().to_path_buf());
    let mut pull = tokio::spawn(async move {
        let output = second.pull(&reference, &hosts_path).await;
        (second, output)
    });

    // Kill A once part of the large layer has arrived at B.
    let at_kill = loop {
        let from_peer = b
            .metric_with("shoal_bytes_received_total", &[("source", "peer")])
            .await?;
        if from_peer > PEER_BYTES_BEFORE_KILL {
            break from_peer;
        }
        if pull.is_finished() {
            bail!("the pull ended before B received {PEER_BYTES_BEFORE_KILL} bytes from A");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    a.kill9();
    ensure!(
        at_kill < layer.size as f64,
        "A had sent the whole layer ({at_kill} bytes) before it was killed"
    );

    let (second, output) = (&mut pull).await.context("pull task")?;
    let output = output?;
    ensure!(
        output.status.success(),
        "pull through B failed after A was killed: {}",
        describe(&output)
    );
    second.ensure_holds(&image).await?;

    let metrics = b.metrics().await?;
    let from_peer = metrics.sum_with("shoal_bytes_received_total", &[("source", "peer")]);
    let from_origin = metrics.sum_with("shoal_bytes_received_total", &[("source", "origin")]);
    let failures = metrics.sum("shoal_peer_fetch_failures_total");
    eprintln!(
        "layer {} bytes; B had {at_kill} peer bytes at the kill; after the pull: {from_peer} from \
         the peer, {from_origin} from the origin, {failures} failed peer fetches",
        layer.size
    );
    ensure!(from_peer >= at_kill, "B's peer bytes fell to {from_peer}");
    ensure!(from_origin > 0.0, "B took nothing from the origin");
    ensure!(
        from_origin < layer.size as f64,
        "B fetched the whole layer again from the origin ({from_origin} bytes) instead of the rest:\n{}",
        b.log_tail(40)
    );
    ensure!(
        from_peer + from_origin >= layer.size as f64,
        "B received {from_peer} + {from_origin} bytes for a {}-byte layer",
        layer.size
    );
    ensure!(failures >= 1.0, "B counted no failed peer fetch");
    origin.settle().await;
    ensure!(
        origin.blob_range_gets(&layer.digest) >= 1,
        "B did not resume the layer from the origin with a Range request"
    );
    b.healthz().await?;
    logs.passed();
    Ok(())
}
