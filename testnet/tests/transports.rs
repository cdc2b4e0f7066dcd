//! End-to-end tests of which transport members use to each other (`p2p::transport`), with a
//! real origin registry and separate `shoald` processes:
//!
//! - a holder in region `east` listening on QUIC and TCP (the default), a member of `east` and
//!   a member of `west`, both joining through the holder's first (QUIC) address: once the rule
//!   has settled, the member of `east` reaches the holder over TCP alone and the member of
//!   `west` over QUIC alone (read from each node's `shoal_p2p_transport_connections` gauge);
//!   with the origin stopped, each fills the blob from its peers over those connections;
//! - a holder that listens on QUIC only is still reached by a member of its region, over QUIC,
//!   and serves it the blob.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use shoal_testnet::bench::{fetch, push_random_blob};
use shoal_testnet::image::Blob;
use shoal_testnet::node::{LogsOnFailure, NetworkKeyFile, Node, NodeConfig};
use shoal_testnet::origin::Origin;

/// How long the members may take to join and settle on their transports.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The gauge of open peer connections by transport.
const CONNECTIONS: &str = "shoal_p2p_transport_connections";

/// Waits until `node` has exactly `quic` connections over QUIC and `tcp` over TCP.
async fn wait_for_connections(node: &Node, name: &str, quic: f64, tcp: f64) -> Result<()> {
    for (transport, wanted) in [("quic", quic), ("tcp", tcp)] {
        node.wait_for_metric_with(
            CONNECTIONS,
            &[("transport", transport)],
            SETTLE_TIMEOUT,
            |n| n == wanted,
        )
        .await
        .with_context(|| format!("{name}'s connections over {transport}"))?;
    }
    Ok(())
}

/// Waits until `node` has exactly `tcp` connections over TCP.
async fn wait_for_tcp(node: &Node, name: &str, tcp: f64) -> Result<()> {
    node.wait_for_metric_with(CONNECTIONS, &[("transport", "tcp")], SETTLE_TIMEOUT, |n| {
        n == tcp
    })
    .await
    .with_context(|| format!("{name}'s connections over TCP"))?;
    Ok(())
}

/// GETs `blob` through `node` (the origin is down) and checks that every byte came from peers.
async fn fill_from_peers(node: &Node, name: &str, blob: &Blob) -> Result<()> {
    fetch(&node.registry_url(), blob)
        .await
        .with_context(|| format!("{name} fetching with the origin down"))?;
    let from_peers = node
        .metric_with("shoal_bytes_received_total", &[("source", "peer")])
        .await?;
    ensure!(
        from_peers == blob.size() as f64,
        "{name} received {from_peers} bytes from peers, want {}",
        blob.size()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_one_region_transfer_over_tcp_and_across_regions_over_quic() -> Result<()> {
    let mut origin = Origin::start().await?;
    let blob = push_random_blob(&origin, 8 << 20, 73).await?;
    let key = NetworkKeyFile::new(73)?;
    let holder = Node::start(
        NodeConfig::for_origin(&origin)
            .network_key(&key)
            .region("east"),
    )
    .await?;
    let mut logs = LogsOnFailure::new([&holder]);
    fetch(&holder.registry_url(), &blob).await?;
    holder.wait_for_stored_blobs(1).await?;
    ensure!(
        holder.p2p_addrs().len() == 2,
        "the holder listens on {:?}, want QUIC and TCP",
        holder.p2p_addrs()
    );
    // Both members join through the holder's first address, QUIC: the member of the holder's
    // region must replace that connection by TCP itself.
    let bootstrap = holder.p2p_addr()?.to_owned();
    ensure!(bootstrap.contains("/quic-v1/"), "bootstrap {bootstrap}");
    let east = Node::start(NodeConfig::joining(&origin, &key, &bootstrap).region("east")).await?;
    logs.add(&east);
    wait_for_connections(&east, "the member of east", 0.0, 1.0).await?;
    wait_for_connections(&holder, "the holder", 0.0, 1.0).await?;
    let west = Node::start(NodeConfig::joining(&origin, &key, &bootstrap).region("west")).await?;
    logs.add(&west);
    west.wait_for_metric("shoal_p2p_members", SETTLE_TIMEOUT, |n| n >= 1.0)
        .await?;
    // The member of west reaches the holder (and the member of east, if it meets it) over QUIC.
    west.wait_for_metric_with(CONNECTIONS, &[("transport", "quic")], SETTLE_TIMEOUT, |n| {
        n >= 1.0
    })
    .await?;
    wait_for_tcp(&west, "the member of west", 0.0).await?;
    wait_for_tcp(&holder, "the holder", 1.0).await?;

    origin.stop().await?;
    for (node, name) in [(&east, "the member of east"), (&west, "the member of west")] {
        fill_from_peers(node, name, &blob).await?;
    }
    // The transfers ran over the connections the rule left: the one TCP connection of the
    // holder is still the member of east's, and the member of west has none.
    wait_for_tcp(&holder, "the holder", 1.0).await?;
    wait_for_tcp(&east, "the member of east", 1.0).await?;
    wait_for_tcp(&west, "the member of west", 0.0).await?;
    logs.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_offers_only_quic_is_reached_over_quic_inside_its_region() -> Result<()> {
    let mut origin = Origin::start().await?;
    let blob = push_random_blob(&origin, 8 << 20, 74).await?;
    let key = NetworkKeyFile::new(74)?;
    let holder = Node::start(
        NodeConfig::for_origin(&origin)
            .network_key(&key)
            .region("east")
            .p2p_listen("/ip4/127.0.0.1/udp/0/quic-v1"),
    )
    .await?;
    let mut logs = LogsOnFailure::new([&holder]);
    fetch(&holder.registry_url(), &blob).await?;
    holder.wait_for_stored_blobs(1).await?;
    let member =
        Node::start(NodeConfig::joining(&origin, &key, holder.p2p_addr()?).region("east")).await?;
    logs.add(&member);
    member
        .wait_for_metric("shoal_p2p_members", SETTLE_TIMEOUT, |n| n >= 1.0)
        .await?;
    wait_for_connections(&member, "the member", 1.0, 0.0).await?;
    origin.stop().await?;
    fill_from_peers(&member, "the member", &blob).await?;
    wait_for_connections(&member, "the member", 1.0, 0.0).await?;
    logs.passed();
    Ok(())
}
