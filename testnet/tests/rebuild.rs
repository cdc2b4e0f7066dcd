//! End-to-end tests of the rebuild (shadow fetch and switchover), with a real origin registry,
//! real containerd and `shoald` processes in two regions:
//!
//! - image v1 is pushed under a tag and pulled through a node in each region; a rebuild while
//!   the upstream still names v1 answers "no new digest upstream" and changes nothing;
//! - v2 is pushed under the same tag and `shoal rebuild` (the real CLI) starts a rebuild on node
//!   A: the regions that hold v1 are both regions. Node A serves shard transfers slowly (the
//!   TESTING ONLY egress cap), so region b's shadow takes a while; meanwhile both nodes show the
//!   hold, and containerd pulls of the tag through each region get v1, although every tag TTL
//!   (1 s) has long expired and the upstream names v2;
//! - once `GET /images/{ref}/rebuild` says switched (each region holds every blob of v2), pulls
//!   through both regions get v2; then, with the origin stopped, containerd pulls the tag through
//!   both regions again and gets v2 from the caches;
//! - bad requests (no or a wrong admin token, malformed references, a digest, an unknown
//!   upstream, a tag the node never cached, bodies that are not empty or too large, other paths)
//!   get a 4xx JSON error naming the problem and change nothing.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use shoal_testnet::cli;
use shoal_testnet::containerd::{describe, Containerd};
use shoal_testnet::image::{push_image, ImageInfo, ImageSpec};
use shoal_testnet::network::{Network, NetworkSpec};
use shoal_testnet::node::{LogsOnFailure, Node, NodeConfig};

/// How long a rebuild may take to switch over, or news to reach the other node.
const REBUILD_TIMEOUT: Duration = Duration::from_secs(300);
/// Node A's cap on the bytes it serves to members: region b's shadow of v2's large layer, which
/// it fetches from A, lasts about 48 s.
const SLOW_EGRESS_BYTES_PER_SEC: u64 = 128 << 10;

fn node_options() -> NodeConfig {
    NodeConfig::default().arg("--tag-ttl-secs").arg("1")
}

/// `POST` or `GET` `/images/{image}/rebuild` on `node` (with `body` for a `POST`).
async fn rebuild_call(node: &Node, image: &str, post: Option<Vec<u8>>) -> Result<(u16, Value)> {
    rebuild_call_with(node, image, post, None).await
}

/// [`rebuild_call`] with the admin bearer token.
async fn rebuild_call_with(
    node: &Node,
    image: &str,
    post: Option<Vec<u8>>,
    token: Option<&str>,
) -> Result<(u16, Value)> {
    let url = format!("{}/images/{image}/rebuild", node.admin_url());
    let http = reqwest::Client::new();
    let mut request = match post {
        Some(body) => http.post(&url).body(body),
        None => http.get(&url),
    };
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.with_context(|| url.clone())?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    let value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{url}: not JSON: {}", String::from_utf8_lossy(&bytes)))?;
    Ok((status, value))
}

/// Polls `GET` on `node` until the rebuild's state is `state`.
async fn wait_for_state(node: &Node, image: &str, state: &str) -> Result<Value> {
    let deadline = Instant::now() + REBUILD_TIMEOUT;
    loop {
        let (status, view) = rebuild_call(node, image, None).await?;
        if status == 200 && view["state"] == state {
            return Ok(view);
        }
        if view["state"] == "failed" {
            bail!("the rebuild failed: {view}");
        }
        if Instant::now() > deadline {
            bail!("no {state} within {REBUILD_TIMEOUT:?}: {status} {view}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Pulls `image`'s tag with a fresh containerd through node `index`; the digests it holds after.
async fn pull_through(
    network: &Network,
    index: usize,
    image: &ImageInfo,
) -> Result<BTreeSet<String>> {
    let client = Containerd::start().await?;
    client
        .pull_ok(&image.reference, network.hosts_dir(index))
        .await?;
    client.content_digests().await
}

/// The digest of an image's top manifest (its index).
fn top(image: &ImageInfo) -> &str {
    image
        .index
        .as_ref()
        .map_or(image.manifest.digest.as_str(), |i| i.digest.as_str())
}

/// Fails unless a pull that left `held` got `wanted` (its top manifest and every layer) and not
/// `other`.
fn ensure_got(
    held: &BTreeSet<String>,
    wanted: &ImageInfo,
    other: &ImageInfo,
    when: &str,
) -> Result<()> {
    ensure!(
        held.contains(top(wanted)) && !held.contains(top(other)),
        "{when}: the pull should have got {} and not {}; containerd holds {held:?}",
        top(wanted),
        top(other)
    );
    for layer in &wanted.layers {
        ensure!(
            held.contains(&layer.digest),
            "{when}: layer {} missing",
            layer.digest
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_switches_both_regions_only_after_both_hold_the_new_version() -> Result<()> {
    let mut network = Network::start(
        NetworkSpec::new(131)
            .node_with(
                "a",
                node_options().test_egress_bytes_per_sec(SLOW_EGRESS_BYTES_PER_SEC),
            )
            .node_with("b", node_options()),
    )
    .await?;
    let mut logs = LogsOnFailure::new(network.nodes().iter().map(|n| n.node()));
    let v1 = push_image(
        network.origin(),
        ImageSpec::new("test/rebuild", "stable", 131)
            .layer(64 << 10, 50)
            .layer(512 << 10, 80),
    )
    .await?;
    let image = format!("{}/test/rebuild:stable", shoal_testnet::REGISTRY_HOST);

    // v1 through each region: B first (from the origin), then A (from B, which is not slowed).
    for index in [1, 0] {
        let held = pull_through(&network, index, &v1).await?;
        ensure!(
            held.contains(top(&v1)),
            "node {index} did not serve v1: {held:?}"
        );
    }

    // The upstream still names v1: nothing to do, nothing changed.
    let (status, view) = rebuild_call(network.node(0), &image, Some(Vec::new())).await?;
    ensure!(status == 200, "{status} {view}");
    ensure!(view["state"] == "no_change", "{view}");
    ensure!(
        view["message"]
            .as_str()
            .is_some_and(|m| m.contains("no new digest upstream")),
        "{view}"
    );
    ensure!(
        view["old_digest"] == top(&v1) && view["new_digest"] == top(&v1),
        "{view}"
    );
    let (status, on_b) = rebuild_call(network.node(1), &image, None).await?;
    ensure!(status == 404, "node B knows of no rebuild: {status} {on_b}");

    // v2 under the same tag: a large layer, which region b fetches from A at A's slow pace.
    let v2 = push_image(
        network.origin(),
        ImageSpec::new("test/rebuild", "stable", 132)
            .layer(64 << 10, 50)
            .layer(6 << 20, 100),
    )
    .await?;
    ensure!(top(&v1) != top(&v2));

    let admin = network.node(0).admin_url();
    let started = cli::shoal(&["rebuild", &image, "--admin", &admin]).await?;
    ensure!(
        started.status.success(),
        "shoal rebuild: {}",
        describe(&started)
    );
    let stdout = String::from_utf8(started.stdout.clone())?;
    ensure!(
        stdout.contains(": shadowing: "),
        "shoal rebuild printed:\n{stdout}"
    );

    let view = wait_for_state(network.node(0), &image, "shadowing").await?;
    ensure!(
        view["old_digest"] == top(&v1) && view["new_digest"] == top(&v2),
        "{view}"
    );
    let regions: Vec<&str> = view["regions"]
        .as_array()
        .context("regions")?
        .iter()
        .filter_map(|r| r["region"].as_str())
        .collect();
    ensure!(regions == ["a", "b"], "both regions hold v1: {view}");
    // The hold reached B over gossip.
    let held_on_b = wait_for_state(network.node(1), &image, "shadowing").await?;
    ensure!(held_on_b["old_digest"] == top(&v1), "{held_on_b}");

    // While shadowing, pulls of the tag through each region get v1: the TTLs expired long ago
    // and the upstream names v2, but the hold wins.
    for index in [0, 1] {
        let held = pull_through(&network, index, &v1).await?;
        ensure_got(
            &held,
            &v1,
            &v2,
            &format!("while shadowing, through node {index}"),
        )?;
    }
    let (_, still) = rebuild_call(network.node(0), &image, None).await?;
    ensure!(
        still["state"] == "shadowing",
        "the pulls above must have happened during the shadow: {still}"
    );
    ensure!(
        network
            .node(0)
            .metric("shoal_rebuild_held_tags_served_total")
            .await?
            > 0.0
            && network
                .node(1)
                .metric("shoal_rebuild_held_tags_served_total")
                .await?
                > 0.0,
        "both nodes answered the tag from the hold"
    );

    // The switchover: only once both regions hold every blob of v2.
    let switched = wait_for_state(network.node(0), &image, "switched").await?;
    for region in switched["regions"].as_array().context("regions")? {
        ensure!(
            region["blobs_total"].as_u64() > Some(0)
                && region["blobs_present"] == region["blobs_total"],
            "switched before a region held everything: {switched}"
        );
    }
    wait_for_state(network.node(1), &image, "switched").await?;
    for index in [0, 1] {
        let held = pull_through(&network, index, &v2).await?;
        ensure_got(
            &held,
            &v2,
            &v1,
            &format!("after the switchover, through node {index}"),
        )?;
    }

    // A second rebuild finds no new digest and changes nothing.
    let (status, again) = rebuild_call(network.node(0), &image, Some(b"{}".to_vec())).await?;
    ensure!(
        status == 200 && again["state"] == "no_change",
        "{status} {again}"
    );
    ensure!(again["old_digest"] == top(&v2), "{again}");

    // The origin goes away: both regions still serve the tag, at v2, from their caches.
    network.origin_mut().stop().await?;
    for index in [0, 1] {
        let held = pull_through(&network, index, &v2).await?;
        ensure_got(
            &held,
            &v2,
            &v1,
            &format!("origin down, through node {index}"),
        )?;
    }
    logs.passed();
    network.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rebuild_requests_are_refused_with_the_reason_and_change_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "rebuild-test-token\n")?;
    let token = Some("rebuild-test-token");
    let options = NodeConfig::default()
        .arg("--admin-token-file")
        .arg(token_file.to_str().context("temp paths are UTF-8")?);
    let network = Network::start(NetworkSpec::new(133).node_with("a", options)).await?;
    let mut logs = LogsOnFailure::new(network.nodes().iter().map(|n| n.node()));
    let node = network.node(0);
    let host = shoal_testnet::REGISTRY_HOST;
    let good = format!("{host}/test/app:v1");
    let digest = format!("{host}/test/app@sha256:{}", "a".repeat(64));
    // Without the token, or with a wrong one, the POST is refused before anything is read.
    for wrong in [None, Some("wrong-token")] {
        let (got, answer) = rebuild_call_with(node, &good, Some(Vec::new()), wrong).await?;
        ensure!(
            got == 401 && answer["error"].is_string(),
            "{wrong:?}: {got} {answer}"
        );
    }
    for (image, body, status, says) in [
        ("UPPER/Case:v1", Vec::new(), 400, "OCI grammar"),
        (
            "other.example/app:v1",
            Vec::new(),
            400,
            "not a configured upstream",
        ),
        (digest.as_str(), Vec::new(), 400, "names a digest"),
        (
            good.as_str(),
            b"{\"x\":1}".to_vec(),
            400,
            "not a rebuild request",
        ),
        (good.as_str(), b"[".to_vec(), 400, "not a rebuild request"),
        (good.as_str(), vec![b' '; 4096], 413, "over"),
        (good.as_str(), Vec::new(), 404, "not cached on this node"),
    ] {
        let (got, answer) = rebuild_call_with(node, image, Some(body), token).await?;
        let error = answer["error"].as_str().unwrap_or_default();
        ensure!(
            got == status && error.contains(says),
            "{image}: {got} {answer}, expected {status} saying {says:?}"
        );
    }
    let (got, answer) = rebuild_call(node, &good, None).await?;
    ensure!(got == 404 && answer["error"].is_string(), "{got} {answer}");
    let other = reqwest::get(format!("{}/images/{good}/other", node.admin_url())).await?;
    ensure!(other.status().as_u16() == 404, "{}", other.status());
    // Nothing reached the origin (the refused requests resolved nothing), nothing is held.
    ensure!(
        network.origin().manifest_gets("v1") == 0,
        "a refused request reached the origin"
    );
    ensure!(!node.data_dir().join("rebuild/holds.json").exists());
    logs.passed();
    network.shutdown().await
}
