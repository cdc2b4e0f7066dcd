//! End-to-end tests of predictive placement, with a real origin registry, real containerd and
//! `shoald` processes:
//!
//! - a new version pushed under a tag that region B pulls is pre-fetched by B's node before any
//!   client asks, and a pull of it through B then succeeds with the origin stopped; the origin's
//!   access log shows each of its blobs fetched once, by the pre-fetch. The node is then killed
//!   with SIGKILL and restarted: the demand history it recorded is still there.
//! - demand in region A (a manifest pulled through one of A's two nodes) for an image only region
//!   B holds makes a copy of each layer appear in A, fetched from B, with no new origin bytes;
//!   A's nodes share the demand over gossip and split the layers between them.
//! - under disk pressure, the last copy in the network of a layer in demand survives while a copy
//!   held elsewhere goes, and the evicted blob's provider record leaves the DHT.
//! - under disk pressure, a copy the plan requires on the node survives (its explanation says so
//!   before the pressure) while a newer copy nothing protects goes: the protection, not recency,
//!   decides.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use shoal_testnet::containerd::Containerd;
use shoal_testnet::image::{push_image, ImageInfo, ImageSpec};
use shoal_testnet::network::{Network, NetworkSpec};
use shoal_testnet::node::{LogsOnFailure, Node, NodeConfig};

/// How long placement may take to act (a few plan intervals and tag checks, plus the fetch).
const PLACEMENT_TIMEOUT: Duration = Duration::from_secs(90);

/// A config file with short tag TTLs and plan intervals, so the test runs in seconds.
fn placement_config(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("shoald.toml");
    std::fs::write(
        &path,
        "tag_ttl_secs = 2\n\n[placement]\nplan_interval_secs = 2\npersist_interval_secs = 1\n",
    )?;
    Ok(path)
}

fn with_config(path: &Path) -> NodeConfig {
    NodeConfig::default()
        .arg("--config")
        .arg(path.to_str().expect("temp paths are UTF-8"))
}

/// `GET /placement/explain/{digest}` on the node's admin listener.
async fn explain(node: &Node, digest: &str) -> Result<serde_json::Value> {
    let url = format!("{}/placement/explain/{digest}", node.admin_url());
    let response = reqwest::get(&url)
        .await
        .with_context(|| format!("GET {url}"))?;
    ensure!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    Ok(serde_json::from_slice(&response.bytes().await?)?)
}

/// Polls the explanations of every blob of `image` until each is held on one of `nodes`.
async fn wait_until_held(nodes: &[&Node], image: &ImageInfo) -> Result<()> {
    let deadline = Instant::now() + PLACEMENT_TIMEOUT;
    loop {
        let mut missing = Vec::new();
        for blob in image.blobs() {
            let mut held = false;
            for node in nodes {
                held |= explain(node, &blob.digest).await?["held_here"] == true;
            }
            if !held {
                missing.push(blob.digest.clone());
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = nodes.iter().map(|n| n.log_tail(40)).collect();
            bail!(
                "after {PLACEMENT_TIMEOUT:?} no node holds {missing:?}:\n{}",
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_of_a_pulled_tag_is_prepositioned_and_served_with_the_origin_down(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = placement_config(dir.path())?;
    let mut network = Network::start(
        NetworkSpec::new(91)
            .node_with("a", with_config(&config))
            .node_with("a", with_config(&config))
            .node_with("b", with_config(&config)),
    )
    .await?;
    let mut logs = LogsOnFailure::new(network.nodes().iter().map(|n| n.node()));
    let v1 = push_image(
        network.origin(),
        ImageSpec::multi_layer("test/app", "latest", 91),
    )
    .await?;
    let client = Containerd::start().await?;
    for _ in 0..3 {
        client.pull_ok(&v1.reference, network.hosts_dir(2)).await?;
    }
    client.ensure_holds(&v1).await?;
    drop(client);

    let v2 = push_image(
        network.origin(),
        ImageSpec::new("test/app", "latest", 92)
            .layer(3 << 20, 60)
            .layer(1 << 20, 60),
    )
    .await?;
    ensure!(
        v2.manifest.digest != v1.manifest.digest,
        "the tag did not move"
    );
    // No client asks for the new version; the node watching the tag fetches it.
    wait_until_held(&[network.node(2)], &v2).await?;
    for blob in v2.blobs() {
        let gets = network.origin().blob_gets(&blob.digest);
        ensure!(gets == 1, "the origin served {} {gets} times", blob.digest);
    }
    network
        .node(2)
        .wait_for_metric(
            "shoal_placement_versions_prepositioned_total",
            PLACEMENT_TIMEOUT,
            |n| n >= 1.0,
        )
        .await?;
    let from_origin = network
        .node(2)
        .metric_with(
            "shoal_placement_prefetched_bytes_total",
            &[("source", "origin")],
        )
        .await?;
    let v2_bytes: u64 = v2.blobs().map(|b| b.size).sum();
    ensure!(
        from_origin >= v2_bytes as f64,
        "pre-fetched {from_origin} of {v2_bytes} bytes"
    );
    // Region A's nodes never saw the tag pulled: they do not pre-fetch it.
    for a in [0, 1] {
        let other = network
            .node(a)
            .metric("shoal_placement_versions_prepositioned_total")
            .await?;
        ensure!(other == 0.0, "node {a} pre-positioned {other} versions");
    }

    network.origin_mut().stop().await?;
    let client = Containerd::start().await?;
    client.pull_ok(&v2.reference, network.hosts_dir(2)).await?;
    client.ensure_holds(&v2).await?;
    drop(client);
    for blob in v2.blobs() {
        let gets = network.origin().blob_gets(&blob.digest);
        ensure!(
            gets == 1,
            "the origin's log shows {} fetched {gets} times",
            blob.digest
        );
    }
    let hits = network
        .node(2)
        .metric("shoal_placement_prefetch_hit_bytes_total")
        .await?;
    ensure!(
        hits >= v2_bytes as f64,
        "pre-fetch hits {hits} of {v2_bytes} bytes"
    );

    // Restart after SIGKILL: the demand history of the layers the client pulled survives, under
    // the same layer ids.
    let layer = v2.largest_layer().digest.clone();
    let before = explain(network.node(2), &layer).await?;
    ensure!(
        before["total_pulls"].as_u64() >= Some(1),
        "no demand recorded: {before}"
    );
    let state = network.node(2).data_dir().join("placement/state.json");
    // Wait for a write of the table that began after the pull's requests were recorded.
    let asked = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let deadline = Instant::now() + PLACEMENT_TIMEOUT;
    while !std::fs::metadata(&state)
        .and_then(|m| m.modified())
        .is_ok_and(|written| written > asked + Duration::from_millis(20))
    {
        ensure!(
            Instant::now() < deadline,
            "the demand table was never written"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    network.node_mut(2).kill9();
    network.node_mut(2).restart().await?;
    let after = explain(network.node(2), &layer).await?;
    ensure!(
        after["layer_id"] == before["layer_id"],
        "{before} became {after}"
    );
    ensure!(
        after["total_pulls"] == before["total_pulls"],
        "{before} became {after}"
    );
    ensure!(after["held_here"] == true, "{after}");
    logs.passed();
    network.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demand_in_a_region_copies_a_layer_there_from_a_peer_without_origin_bytes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = placement_config(dir.path())?;
    let network = Network::start(
        NetworkSpec::new(93)
            .node_with("b", with_config(&config))
            .node_with("a", with_config(&config))
            .node_with("a", with_config(&config)),
    )
    .await?;
    let mut logs = LogsOnFailure::new(network.nodes().iter().map(|n| n.node()));
    let image = push_image(
        network.origin(),
        ImageSpec::multi_layer("test/regional", "v1", 93),
    )
    .await?;
    network.node(0).pull_and_store(&image).await?;
    let origin_bytes = network.origin().blob_bytes_served();

    // A client in region A resolves the image (its index, then the manifest) and asks for no
    // blob: the manifest is the early signal for its layers.
    network
        .node(1)
        .fetch_manifest(&image.repo, &image.tag)
        .await?;
    network
        .node(1)
        .fetch_manifest(&image.repo, &image.manifest.digest)
        .await?;
    let region_a = [network.node(1), network.node(2)];
    wait_until_held(&region_a, &image).await?;
    ensure!(
        network.origin().blob_bytes_served() == origin_bytes,
        "the origin served {} more blob bytes",
        network.origin().blob_bytes_served() - origin_bytes
    );
    let mut from_peers = 0.0;
    for node in region_a {
        from_peers += node
            .metric_with(
                "shoal_placement_prefetched_bytes_total",
                &[("source", "peer")],
            )
            .await?;
    }
    let bytes: u64 = image.blobs().map(|b| b.size).sum();
    ensure!(
        from_peers >= bytes as f64,
        "pre-fetched {from_peers} of {bytes} bytes from peers"
    );
    // The node that did not see the demand learned it over gossip.
    let explained = explain(network.node(2), &image.largest_layer().digest).await?;
    ensure!(
        explained["regional_forecast"]["a"].as_f64() > Some(0.0),
        "{explained}"
    );
    logs.passed();
    network.shutdown().await
}

/// Node 0 withdrew at least one provider record, and node 1 stops naming node 0 as a provider of
/// what node 0 evicted: its store's records of node 0 match node 0's blobs again.
async fn evictions_leave_the_dht(network: &Network) -> Result<()> {
    let withdrawn = network
        .node(0)
        .metric("shoal_provider_records_withdrawn_total")
        .await?;
    ensure!(withdrawn >= 1.0, "no provider record withdrawn");
    let blobs = network.node(0).metric("shoal_store_blobs").await?;
    network
        .node(1)
        .wait_for_metric_with(
            "shoal_p2p_provider_records",
            &[("provider", "remote")],
            PLACEMENT_TIMEOUT,
            |n| n == blobs,
        )
        .await
        .context("node 1 still holds provider records of blobs node 0 evicted")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_disk_pressure_the_last_copy_in_demand_survives_and_evicted_blobs_leave_the_dht(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = placement_config(dir.path())?;
    let network = Network::start(
        NetworkSpec::new(95)
            .node_with("a", with_config(&config).max_disk_bytes(16 << 20))
            .node_with("b", with_config(&config)),
    )
    .await?;
    let mut logs = LogsOnFailure::new(network.nodes().iter().map(|n| n.node()));
    let image = |repo: &str, seed| ImageSpec::new(repo, "v1", seed).layer(7 << 20, 100);
    let only_here = push_image(network.origin(), image("test/only-here", 95)).await?;
    let shared = push_image(network.origin(), image("test/shared", 96)).await?;
    let newest = push_image(network.origin(), image("test/newest", 97)).await?;
    // Node 0 pulls the first image (the network's only copy), then the second, which node 1
    // holds too. By recency, the first would be evicted first.
    network.node(0).pull_and_store(&only_here).await?;
    network.node(1).pull_and_store(&shared).await?;
    network.node(0).pull_and_store(&shared).await?;
    let shared_layer = shared.largest_layer().digest.clone();
    let deadline = Instant::now() + PLACEMENT_TIMEOUT;
    while explain(network.node(0), &shared_layer).await?["known_holders"]
        .as_array()
        .is_none_or(|h| h.is_empty())
    {
        ensure!(
            Instant::now() < deadline,
            "node 0 never heard that node 1 holds {shared_layer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The third image does not fit: something must go.
    let hosts = shoal_testnet::hosts::HostsDir::for_test_registry(network.node(0).registry_addr())?;
    let client = Containerd::start().await?;
    client.pull_ok(&newest.reference, hosts.path()).await?;
    drop(client);
    network
        .node(0)
        .wait_for_metric("shoal_evictions_total", PLACEMENT_TIMEOUT, |n| n >= 1.0)
        .await?;

    let kept = explain(network.node(0), &only_here.largest_layer().digest).await?;
    ensure!(
        kept["held_here"] == true,
        "the last copy in demand was evicted: {kept}"
    );
    let evicted = explain(network.node(0), &shared_layer).await?;
    ensure!(
        evicted["held_here"] == false,
        "the copy held elsewhere stayed: {evicted}"
    );
    evictions_leave_the_dht(&network).await?;
    logs.passed();
    network.shutdown().await
}

/// Has `node` preheat `image` into its own region (no client request: no demand is recorded) and
/// waits until the job is done.
async fn preheat_here(node: &Node, image: &ImageInfo) -> Result<()> {
    let http = reqwest::Client::new();
    let url = format!("{}/preheat", node.admin_url());
    let body = serde_json::json!({ "images": [image.reference] });
    let response = http
        .post(&url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await?;
    ensure!(
        response.status().is_success(),
        "POST {url}: {}",
        response.status()
    );
    let started: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
    let id = started["id"].as_str().context("no job id")?.to_owned();
    let deadline = Instant::now() + PLACEMENT_TIMEOUT;
    loop {
        let job: serde_json::Value = serde_json::from_slice(
            &http
                .get(format!("{url}/{id}"))
                .send()
                .await?
                .bytes()
                .await?,
        )?;
        match job["state"].as_str() {
            Some("done") => return Ok(()),
            Some("failed") => bail!("preheat failed: {job}"),
            _ => {}
        }
        ensure!(Instant::now() < deadline, "preheat never finished: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `digest`'s explanation on `node` until `ready` holds for it.
async fn wait_for_explanation(
    node: &Node,
    digest: &str,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let deadline = Instant::now() + PLACEMENT_TIMEOUT;
    loop {
        let explained = explain(node, digest).await?;
        if ready(&explained) {
            return Ok(explained);
        }
        ensure!(
            Instant::now() < deadline,
            "{digest}: never {what}: {explained}\n{}",
            node.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_disk_pressure_a_copy_the_plan_requires_survives_and_an_unprotected_newer_one_goes(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = placement_config(dir.path())?;
    let network = Network::start(
        NetworkSpec::new(97)
            .node_with("a", with_config(&config).max_disk_bytes(16 << 20))
            .node_with("b", with_config(&config)),
    )
    .await?;
    let mut logs = LogsOnFailure::new(network.nodes().iter().map(|n| n.node()));
    let image = |repo: &str, seed| ImageSpec::new(repo, "v1", seed).layer(7 << 20, 100);
    let required = push_image(network.origin(), image("test/required", 98)).await?;
    let unprotected = push_image(network.origin(), image("test/unprotected", 99)).await?;
    let newest = push_image(network.origin(), image("test/newest", 100)).await?;
    // Node 1 holds both, so neither is the last copy in the network.
    network.node(1).pull_and_store(&required).await?;
    network.node(1).pull_and_store(&unprotected).await?;
    // A client of region A pulls the first image through node 0 (demand in A: the plan wants a
    // copy there, and node 0 is A's only node); then node 0 preheats the second, which no client
    // of A asked for. By recency, the required copy is the older one.
    network.node(0).pull_and_store(&required).await?;
    preheat_here(network.node(0), &unprotected).await?;

    let required_layer = required.largest_layer().digest.clone();
    let unprotected_layer = unprotected.largest_layer().digest.clone();
    let has_holders =
        |e: &serde_json::Value| e["known_holders"].as_array().is_some_and(|h| !h.is_empty());
    wait_for_explanation(
        network.node(0),
        &required_layer,
        "required here by the plan with another holder known",
        |e| {
            e["held_here"] == true
                && e["required_here"] == true
                && e["eviction_protection"] == "plan_required"
                && has_holders(e)
        },
    )
    .await?;
    let before = wait_for_explanation(
        network.node(0),
        &unprotected_layer,
        "held here and unprotected with another holder known",
        |e| e["held_here"] == true && e["planned_at"].as_u64() > Some(0) && has_holders(e),
    )
    .await?;
    ensure!(
        before["required_here"] == false && before["eviction_protection"] == "none",
        "the preheated copy is protected: {before}"
    );
    ensure!(
        before["plan"]["copies_per_region"].get("a").is_none(),
        "the plan wants the preheated layer in region A: {before}"
    );

    // The third image does not fit: something must go.
    let hosts = shoal_testnet::hosts::HostsDir::for_test_registry(network.node(0).registry_addr())?;
    let client = Containerd::start().await?;
    client.pull_ok(&newest.reference, hosts.path()).await?;
    drop(client);
    network
        .node(0)
        .wait_for_metric("shoal_evictions_total", PLACEMENT_TIMEOUT, |n| n >= 1.0)
        .await?;

    let kept = explain(network.node(0), &required_layer).await?;
    ensure!(
        kept["held_here"] == true,
        "the copy the plan requires was evicted: {kept}"
    );
    let evicted = explain(network.node(0), &unprotected_layer).await?;
    ensure!(
        evicted["held_here"] == false,
        "the unprotected copy stayed: {evicted}"
    );
    evictions_leave_the_dht(&network).await?;
    logs.passed();
    network.shutdown().await
}
