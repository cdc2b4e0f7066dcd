//! End-to-end tests of what the lifecycle and threat books keep over time and across nodes, with
//! a real registry, real containerd and separate `shoald` processes:
//!
//! - lifecycle states, pins (with their reasons and expiries) and threat scores survive a
//!   `kill -9` and a clean stop of `shoald`, as the admin API shows them after each restart, and
//!   `/status` counts the states;
//! - a layer that reaches Deleted on node A is withdrawn from the network: node B, in the same
//!   region, pulls the image, fetches that layer from the origin rather than from A (and the other
//!   layers from A), and succeeds; A's store no longer has it and `fsck` is clean;
//! - a node that joins after a report was imported and gossiped learns its scores.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use shoal_testnet::cli;
use shoal_testnet::containerd::describe;
use shoal_testnet::image::{push_image, ImageInfo, ImageSpec};
use shoal_testnet::network::{Network, NetworkSpec};
use shoal_testnet::node::{LogsOnFailure, Node, NodeConfig};
use shoal_testnet::origin::Origin;
use shoal_testnet::reports::{self, LayerLocation, TrivyFinding};

const TOKEN: &str = "lifecycle-network-test-token-0123456789";
/// How long a test waits for a node to reach a state (a deadline, not a timed assertion).
const WAIT: Duration = Duration::from_secs(60);
/// Everything falls out of retention at once (so a reference never holds a pin delete back), and
/// the retention timer never fires during a test.
const RETENTION: &str = "enabled = true\nkeep_younger_than_days = 0\nkeep_latest_per_repository = false\ngrace_period_secs = 0\ninterval_secs = 86400";

/// A config file and a token file (mode 0600) in a directory of their own.
struct NodeFiles {
    dir: tempfile::TempDir,
}

impl NodeFiles {
    fn new(grace_secs: u64) -> Result<NodeFiles> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::Builder::new()
            .prefix("shoal-lifecycle-net-")
            .tempdir()?;
        let token = dir.path().join("admin.token");
        std::fs::write(&token, TOKEN)?;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))?;
        std::fs::write(
            dir.path().join("shoald.toml"),
            format!(
                "[lifecycle]\nreview_interval_secs = 1\ngrace_period_secs = {grace_secs}\n\n[retention]\n{RETENTION}\n"
            ),
        )?;
        Ok(NodeFiles { dir })
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// The options that point a node at these files.
    fn options(&self, config: NodeConfig) -> NodeConfig {
        config
            .arg("--config")
            .arg(&self.path("shoald.toml"))
            .arg("--admin-token-file")
            .arg(&self.path("admin.token"))
    }
}

/// `GET` on a node's admin API: the status and the JSON answer.
async fn get(node: &Node, path: &str) -> Result<(u16, Value)> {
    let response = reqwest::get(format!("{}{path}", node.admin_url()))
        .await
        .with_context(|| format!("GET {path}"))?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    let value = serde_json::from_str(&text)
        .with_context(|| format!("GET {path} answered {status} with non-JSON {text:?}"))?;
    Ok((status, value))
}

/// `POST` with the admin token: fails unless the node answers 200.
async fn post(node: &Node, path: &str, body: Vec<u8>) -> Result<Value> {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", node.admin_url()))
        .bearer_auth(TOKEN)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .with_context(|| format!("POST {path}"))?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    ensure!(status == 200, "POST {path}: {status} {text}");
    Ok(serde_json::from_str(&text)?)
}

async fn lifecycle(node: &Node, digest: &str) -> Result<Value> {
    let (status, value) = get(node, &format!("/layers/{digest}/lifecycle")).await?;
    ensure!(status == 200, "lifecycle of {digest}: {status} {value}");
    Ok(value)
}

async fn pin(node: &Node, digest: &str, body: Value) -> Result<Value> {
    post(
        node,
        &format!("/layers/{digest}/lifecycle/override"),
        body.to_string().into_bytes(),
    )
    .await
}

/// `GET /threat/layers/{digest}`: `None` on 404.
async fn threat(node: &Node, digest: &str) -> Result<Option<Value>> {
    match get(node, &format!("/threat/layers/{digest}")).await? {
        (404, _) => Ok(None),
        (200, value) => Ok(Some(value)),
        (status, value) => bail!("threat of {digest}: {status} {value}"),
    }
}

/// Polls `what` until `check` holds for its answer, for at most [`WAIT`].
async fn wait_until<F, Fut>(
    what: &str,
    mut read: F,
    check: impl Fn(&Value) -> bool,
) -> Result<Value>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Value>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let value = read().await?;
        if check(&value) {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("{what} never held: {value:#}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A Trivy report for `image`: one critical, fixable finding in its bottom layer (located by
/// digest and DiffID).
fn trivy_report(image: &ImageInfo, created_at: &str) -> Vec<u8> {
    let finding = TrivyFinding {
        id: "CVE-2024-4242",
        package: "libcrypto3",
        installed: "3.1.4-r0",
        fixed: Some("3.1.4-r5"),
        severity: "CRITICAL",
        score: 9.8,
        layer: LayerLocation::DigestAndDiffId(0),
    };
    let report = reports::trivy_report(image, created_at, &[finding]);
    serde_json::to_vec(&report).expect("a JSON value encodes")
}

/// What must survive a restart: each layer's state, since when and pins, and the threat record.
async fn durable_view(node: &Node, digests: &[&str]) -> Result<Value> {
    let mut view = Vec::new();
    for digest in digests {
        let layer = lifecycle(node, digest).await?;
        view.push(json!({
            "state": layer["state"],
            "since": layer["since"],
            "held": layer["held"],
            "pins": layer["pins"],
            "threat": layer["scores"]["threat"],
            "cves": layer["scores"]["cves"],
            "record": threat(node, digest).await?,
        }));
    }
    Ok(Value::Array(view))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_pins_and_threat_scores_survive_a_crash_and_a_clean_stop() -> Result<()> {
    let origin = Origin::start().await?;
    let image = push_image(
        &origin,
        ImageSpec::new("test/survivor", "v1", 81)
            .layer(300 << 10, 50)
            .layer(200 << 10, 50),
    )
    .await?;
    // A long grace: a layer pinned delete stays Pending Deletion for the whole test.
    let files = NodeFiles::new(3600)?;
    let mut node = Node::start(files.options(NodeConfig::for_origin(&origin))).await?;
    let mut logs = LogsOnFailure::new([&node]);
    node.pull_and_store(&image).await?;
    let (doomed, kept) = (
        image.layers[0].digest.as_str(),
        image.layers[1].digest.as_str(),
    );
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 7 * 86400;
    pin(
        &node,
        doomed,
        json!({"action": "delete", "reason": "test: superseded"}),
    )
    .await?;
    pin(
        &node,
        kept,
        json!({"action": "keep", "reason": "test: base layer", "expires_at": expiry}),
    )
    .await?;
    let summary = post(
        &node,
        "/threat/reports",
        trivy_report(&image, "2026-11-30T08:00:00Z"),
    )
    .await?;
    ensure!(summary["layers_scored"] == 2, "{summary}");
    let layers = [doomed, kept];
    let before = wait_until(
        "the pins and the score are reviewed",
        || durable_view(&node, &layers),
        |v| {
            v[0]["state"] == "pending_deletion"
                && v[0]["threat"].as_f64().is_some_and(|t| t > 90.0)
                && v[1]["state"] == "active"
        },
    )
    .await?;
    ensure!(
        before[0]["pins"]["delete"]["reason"] == "test: superseded"
            && before[1]["pins"]["keep"]["expires_at"] == expiry
            && before[0]["record"]["cves"][0]["id"] == "CVE-2024-4242",
        "{before:#}"
    );
    let (_, status) = get(&node, "/status").await?;
    let counts = &status["lifecycle"];
    ensure!(
        counts["pending_deletion"].as_u64() >= Some(1)
            && counts["pinned_keep"] == 1
            && counts["pinned_delete"] == 1,
        "/status counts the states and pins: {status:#}"
    );
    let output = cli::shoal(&["status", "--admin", &node.admin_url()]).await?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(
        text.contains("pending deletion") && text.contains("pinned keep"),
        "shoal status shows the states: {text}"
    );

    for crash in [true, false] {
        if crash {
            node.kill9();
        } else {
            let exit = node.stop().await?;
            ensure!(exit.success(), "clean stop: {exit:?}");
        }
        node.restart().await?;
        // The answers are the same as soon as the node answers: nothing is recomputed from
        // scratch, and the first review after the start changes nothing.
        let after = durable_view(&node, &layers).await?;
        ensure!(
            after == before,
            "after {}: {after:#}\nbefore: {before:#}",
            if crash { "kill -9" } else { "a clean stop" }
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        let reviewed = durable_view(&node, &layers).await?;
        ensure!(reviewed == before, "after a review: {reviewed:#}");
    }
    logs.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_deleted_on_one_node_is_fetched_from_the_origin_by_its_neighbour() -> Result<()> {
    let files = NodeFiles::new(1)?;
    let mut network = Network::start(
        NetworkSpec::new(82)
            .node_with("eu", files.options(NodeConfig::default()))
            .node_with("eu", NodeConfig::default()),
    )
    .await?;
    let mut logs = LogsOnFailure::new(network.nodes().iter().map(|n| n.node()));
    let (a, b) = (network.node(0), network.node(1));
    let image = push_image(
        network.origin(),
        ImageSpec::new("test/neighbours", "v1", 82)
            .layer(400 << 10, 50)
            .layer(300 << 10, 50),
    )
    .await?;
    a.pull_and_store(&image).await?;
    let (doomed, kept) = (
        image.layers[0].digest.as_str(),
        image.layers[1].digest.as_str(),
    );
    // Everything else stays on A whatever its forecast; the doomed layer goes.
    for other in [kept, image.config.digest.as_str()] {
        pin(a, other, json!({"action": "keep", "reason": "test"})).await?;
    }
    pin(
        a,
        doomed,
        json!({"action": "delete", "reason": "test: gone"}),
    )
    .await?;
    wait_until(
        "the layer is deleted on A",
        || lifecycle(a, doomed),
        |v| v["state"] == "deleted" && v["held"] == false,
    )
    .await?;
    ensure!(
        origin_gets(&network, doomed) == 1 && origin_gets(&network, kept) == 1,
        "A fetched each layer once"
    );

    // B, same region, pulls the image: the doomed layer from the origin, the rest from A.
    b.pull_and_store(&image)
        .await
        .context("B's pull after A deleted the layer")?;
    ensure!(
        origin_gets(&network, doomed) == 2,
        "B fetched the deleted layer from the origin, not from A"
    );
    ensure!(
        origin_gets(&network, kept) == 1,
        "B fetched the layer A still holds from A"
    );
    let b_view = lifecycle(b, doomed).await?;
    ensure!(b_view["held"] == true, "B holds it now: {b_view}");
    ensure!(
        lifecycle(a, doomed).await?["held"] == false,
        "A did not fetch it again"
    );
    let a_dir = a.data_dir();
    let exit = network.node_mut(0).stop().await?;
    ensure!(exit.success(), "A stops cleanly: {exit:?}");
    let inspected = cli::inspect(&a_dir, doomed).await?;
    ensure!(
        !inspected.status.success(),
        "A's store has no map for the deleted layer: {}",
        describe(&inspected)
    );
    let fsck = cli::fsck(&a_dir).await?;
    ensure!(
        fsck.status.success(),
        "shoal fsck on A: {}",
        describe(&fsck)
    );
    logs.passed();
    network.shutdown().await
}

/// How many times the origin served `digest` whole.
fn origin_gets(network: &Network, digest: &str) -> usize {
    network.origin().blob_gets(digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_after_a_report_learns_its_scores() -> Result<()> {
    let network = Network::start(NetworkSpec::new(83).node("a").node("b")).await?;
    let mut logs = LogsOnFailure::new(network.nodes().iter().map(|n| n.node()));
    let (a, b) = (network.node(0), network.node(1));
    let image = push_image(
        network.origin(),
        ImageSpec::new("test/late-join", "v1", 83)
            .layer(200 << 10, 50)
            .layer(100 << 10, 50),
    )
    .await?;
    a.pull_and_store(&image).await?;
    let summary = post(
        a,
        "/threat/reports",
        trivy_report(&image, "2026-11-30T08:00:00Z"),
    )
    .await?;
    ensure!(summary["layers_scored"] == 2, "{summary}");
    let bottom = image.layers[0].digest.as_str();
    wait_until(
        "B has the score",
        || async { Ok(threat(b, bottom).await?.unwrap_or(Value::Null)) },
        |v| !v.is_null(),
    )
    .await?;

    // C joins through B only, after the report went round.
    let c = Node::start(
        NodeConfig::joining(network.origin(), network.key(), b.p2p_addr()?).region("c"),
    )
    .await?;
    logs.add(&c);
    c.wait_until_joined().await?;
    let record = wait_until(
        "C has the score",
        || async { Ok(threat(&c, bottom).await?.unwrap_or(Value::Null)) },
        |v| !v.is_null(),
    )
    .await?;
    ensure!(
        record["cves"][0]["id"] == "CVE-2024-4242" && record["score"].as_f64() > Some(90.0),
        "{record}"
    );
    ensure!(record["source"] == "peer", "{record}");
    // The copies sent again changed nothing on the nodes that had the record.
    let on_a = threat(a, bottom).await?.context("A's record")?;
    ensure!(on_a["source"] == "local", "{on_a}");
    logs.passed();
    network.shutdown().await
}
