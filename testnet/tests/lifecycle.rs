//! End-to-end tests of the layer lifecycle, retention, the graph and the admin API's refusals,
//! with a real registry, real containerd and a separate `shoald` process configured by file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use shoal_testnet::cli;
use shoal_testnet::containerd::describe;
use shoal_testnet::image::{push_blob, push_image, push_manifest, Blob, ImageSpec};
use shoal_testnet::node::{LogsOnFailure, Node, NodeConfig};
use shoal_testnet::origin::Origin;

const TOKEN: &str = "lifecycle-test-token-0123456789abcdef";
/// How long a test waits for the node to reach a state (a deadline, not a timed assertion).
const WAIT: Duration = Duration::from_secs(60);

/// A config file and a token file (mode 0600) in a directory of their own.
struct NodeFiles {
    dir: tempfile::TempDir,
}

impl NodeFiles {
    fn new(config: &str) -> Result<NodeFiles> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::Builder::new()
            .prefix("shoal-lifecycle-")
            .tempdir()?;
        let token = dir.path().join("admin.token");
        std::fs::write(&token, TOKEN)?;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))?;
        std::fs::write(dir.path().join("shoald.toml"), config)?;
        Ok(NodeFiles { dir })
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("shoald.toml")
    }

    fn token(&self) -> PathBuf {
        self.dir.path().join("admin.token")
    }

    fn path_str(path: &Path) -> String {
        path.to_string_lossy().into_owned()
    }

    fn node_config(&self, origin: &Origin) -> NodeConfig {
        NodeConfig::for_origin(origin)
            .arg("--config")
            .arg(&Self::path_str(&self.config()))
            .arg("--admin-token-file")
            .arg(&Self::path_str(&self.token()))
    }
}

/// The admin API of one node.
struct Admin {
    base: String,
    http: reqwest::Client,
}

impl Admin {
    fn new(node: &Node) -> Result<Admin> {
        Ok(Admin {
            base: node.admin_url(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(0)
                .build()?,
        })
    }

    async fn get(&self, path: &str) -> Result<(u16, Value)> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let value = serde_json::from_str(&text)
            .with_context(|| format!("GET {path} answered {status} with non-JSON {text:?}"))?;
        Ok((status, value))
    }

    async fn post(&self, path: &str, token: Option<&str>, body: &str) -> Result<(u16, Value)> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .body(body.to_owned());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let value = serde_json::from_str(&text)
            .with_context(|| format!("POST {path} answered {status} with non-JSON {text:?}"))?;
        Ok((status, value))
    }

    async fn lifecycle(&self, digest: &str) -> Result<Value> {
        let (status, value) = self.get(&format!("/layers/{digest}/lifecycle")).await?;
        ensure!(status == 200, "lifecycle of {digest}: {status} {value}");
        Ok(value)
    }

    async fn pin(&self, digest: &str, body: Value) -> Result<Value> {
        let (status, value) = self
            .post(
                &format!("/layers/{digest}/lifecycle/override"),
                Some(TOKEN),
                &body.to_string(),
            )
            .await?;
        ensure!(status == 200, "override of {digest}: {status} {value}");
        Ok(value)
    }

    /// Waits until `check` holds for the layer's lifecycle answer.
    async fn wait_for(
        &self,
        digest: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.lifecycle(digest).await?;
            if check(&value) {
                return Ok(value);
            }
            if Instant::now() > deadline {
                bail!("{digest} never became {what}: {value:#}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn lifecycle_config(retention: &str) -> String {
    format!(
        "[lifecycle]\nreview_interval_secs = 1\ngrace_period_secs = 2\n\n[retention]\n{retention}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_pinned_delete_goes_after_its_grace_keep_beats_delete_and_the_next_pull_succeeds(
) -> Result<()> {
    let origin = Origin::start().await?;
    let image = push_image(
        &origin,
        ImageSpec::new("test/lifecycle", "v1", 41)
            .layer(300 << 10, 50)
            .layer(200 << 10, 50),
    )
    .await?;
    // Every image falls out of retention at once, so nothing a pin asks is held back by a
    // reference; the retention timer itself never fires during the test.
    let files = NodeFiles::new(&lifecycle_config(
        "enabled = true\nkeep_younger_than_days = 0\nkeep_latest_per_repository = false\ngrace_period_secs = 0\ninterval_secs = 86400",
    ))?;
    let node = Node::start(files.node_config(&origin)).await?;
    let mut logs = LogsOnFailure::new([&node]);
    let admin = Admin::new(&node)?;
    node.pull_and_store(&image).await?;
    let doomed = image.layers[0].digest.clone();
    let kept = image.layers[1].digest.clone();
    admin
        .wait_for(&doomed, "reviewed", |v| v["state"].is_string())
        .await?;

    admin
        .pin(
            &doomed,
            json!({"action": "delete", "reason": "test: remove it"}),
        )
        .await?;
    admin
        .pin(
            &kept,
            json!({"action": "delete", "reason": "test: remove it too"}),
        )
        .await?;
    let answer = admin
        .pin(
            &kept,
            json!({"action": "keep", "reason": "test: but keep wins"}),
        )
        .await?;
    ensure!(
        answer["pins"]["keep"]["reason"] == "test: but keep wins"
            && answer["pins"]["delete"]["reason"] == "test: remove it too",
        "both pins are shown: {answer}"
    );

    let gone = admin
        .wait_for(&doomed, "deleted", |v| {
            v["state"] == "deleted" && v["held"] == false
        })
        .await?;
    ensure!(
        gone["reason"]
            .as_str()
            .unwrap_or("")
            .contains("pinned delete (test: remove it)"),
        "the reason names the pin: {gone}"
    );
    // Grace is over for both; keep still holds the other one.
    let other = admin.lifecycle(&kept).await?;
    ensure!(
        other["state"] == "active" && other["held"] == true,
        "pin keep beats pin delete: {other:#}"
    );
    let listing = admin.get("/layers?state=deleted").await?.1;
    let listed: Vec<&str> = listing["layers"]
        .as_array()
        .context("layers")?
        .iter()
        .filter_map(|l| l["digest"].as_str())
        .collect();
    ensure!(
        listed.contains(&doomed.as_str()) && !listed.contains(&kept.as_str()),
        "listing of deleted layers: {listing}"
    );

    // Clear the pin, pull again with a fresh containerd: the layer comes from the origin.
    admin.pin(&doomed, json!({"action": "clear"})).await?;
    node.pull_and_store(&image)
        .await
        .context("the next pull after the deletion")?;
    admin
        .wait_for(&doomed, "held again", |v| {
            v["held"] == true && v["state"] != "deleted"
        })
        .await?;
    logs.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_exactly_what_its_dry_run_listed_and_a_shared_layer_survives(
) -> Result<()> {
    let origin = Origin::start().await?;
    // Same seed, same first layer: v1 and v2 share it. Their second layers differ.
    let v1 = push_image(
        &origin,
        ImageSpec::new("test/retained", "v1", 77)
            .layer(256 << 10, 50)
            .layer(128 << 10, 50),
    )
    .await?;
    let v2 = push_image(
        &origin,
        ImageSpec::new("test/retained", "v2", 77)
            .layer(256 << 10, 50)
            .layer(160 << 10, 50),
    )
    .await?;
    ensure!(
        v1.layers[0].digest == v2.layers[0].digest,
        "the images share a layer"
    );
    let files = NodeFiles::new(&lifecycle_config(
        "enabled = true\nkeep_younger_than_days = 0\nkeep_latest_per_repository = true\ngrace_period_secs = 0\ninterval_secs = 86400",
    ))?;
    let node = Node::start(files.node_config(&origin)).await?;
    let mut logs = LogsOnFailure::new([&node]);
    let admin = Admin::new(&node)?;

    // v1 is seen first, v2 at a later second: v2 is the latest of the repository.
    node.pull_and_store(&v1).await?;
    admin
        .wait_for(&v1.layers[1].digest, "reviewed", |v| v["state"].is_string())
        .await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    node.pull_and_store(&v2).await?;
    admin
        .wait_for(&v2.layers[1].digest, "reviewed", |v| v["state"].is_string())
        .await?;

    // Refusals first: they change nothing.
    let (status, body) = admin.post("/retention/run", None, "").await?;
    ensure!(
        status == 401 && body["error"].is_string(),
        "no token: {status} {body}"
    );
    let (status, body) = admin
        .post("/retention/run?dry_run=maybe", Some(TOKEN), "")
        .await?;
    ensure!(
        status == 400 && body["error"].is_string(),
        "bad flag: {status} {body}"
    );

    let (status, dry) = admin.get("/retention/run").await?;
    ensure!(
        status == 200 && dry["dry_run"] == true,
        "dry run: {status} {dry}"
    );
    let listed: BTreeSet<String> = dry["deleted_layers"]
        .as_array()
        .context("deleted_layers")?
        .iter()
        .filter_map(|l| l[0].as_str().map(str::to_owned))
        .collect();
    let expected: BTreeSet<String> = [v1.layers[1].digest.clone(), v1.config.digest.clone()]
        .into_iter()
        .collect();
    ensure!(
        listed == expected,
        "dry run lists v1's own blobs only: {dry:#}"
    );
    let bytes = v1.layers[1].size + v1.config.size;
    ensure!(dry["bytes_freed"] == bytes, "dry run bytes: {dry}");
    // The dry run changed nothing.
    for blob in v1.blobs() {
        let state = admin.lifecycle(&blob.digest).await?;
        ensure!(state["held"] == true, "held after the dry run: {state}");
    }

    let (status, real) = admin.post("/retention/run", Some(TOKEN), "").await?;
    ensure!(
        status == 200 && real["dry_run"] == false,
        "real run: {status} {real}"
    );
    ensure!(
        real["deleted_layers"] == dry["deleted_layers"] && real["left_busy"] == json!([]),
        "the real run deleted exactly what the dry run listed: {real:#} vs {dry:#}"
    );
    for digest in &expected {
        let state = admin.lifecycle(digest).await?;
        ensure!(
            state["held"] == false && state["state"] == "deleted",
            "deleted: {state:#}"
        );
    }
    let shared = admin.lifecycle(&v1.layers[0].digest).await?;
    ensure!(
        shared["held"] == true && shared["referenced_by_retained_image"] == true,
        "the layer shared with the retained v2 survives: {shared:#}"
    );
    for blob in v2.blobs() {
        ensure!(admin.lifecycle(&blob.digest).await?["held"] == true);
    }
    logs.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_missing_tokens_are_refused_and_change_nothing() -> Result<()> {
    let origin = Origin::start().await?;
    let image = push_image(
        &origin,
        ImageSpec::new("test/refusals", "v1", 5).layer(64 << 10, 50),
    )
    .await?;
    let files = NodeFiles::new(&lifecycle_config("enabled = false"))?;
    let node = Node::start(files.node_config(&origin)).await?;
    let mut logs = LogsOnFailure::new([&node]);
    let admin = Admin::new(&node)?;
    node.pull_and_store(&image).await?;
    let layer = image.layers[0].digest.clone();
    let path = format!("/layers/{layer}/lifecycle/override");
    let keep = json!({"action": "keep", "reason": "r"}).to_string();
    let unknown = format!("sha256:{}", "0".repeat(64));
    let cases: Vec<(String, Option<&str>, String, u16)> = vec![
        (path.clone(), None, keep.clone(), 401),
        (path.clone(), Some("wrong-token"), keep.clone(), 401),
        (path.clone(), Some(TOKEN), "{not json".into(), 400),
        (
            path.clone(),
            Some(TOKEN),
            json!({"action": "keep", "extra": 1}).to_string(),
            400,
        ),
        (
            path.clone(),
            Some(TOKEN),
            json!({"action": "explode"}).to_string(),
            400,
        ),
        (
            path.clone(),
            Some(TOKEN),
            json!({"action": "keep", "expires_at": 1}).to_string(),
            400,
        ),
        (
            path.clone(),
            Some(TOKEN),
            format!(
                "{{\"action\":\"keep\",\"reason\":\"{}\"}}",
                "x".repeat(20_000)
            ),
            413,
        ),
        (
            "/layers/sha256:1234/lifecycle/override".into(),
            Some(TOKEN),
            keep.clone(),
            400,
        ),
        (
            format!("/layers/{unknown}/lifecycle/override"),
            Some(TOKEN),
            keep.clone(),
            404,
        ),
        ("/retention/run".into(), Some(TOKEN), String::new(), 409),
    ];
    for (path, token, body, expected) in &cases {
        let (status, answer) = admin.post(path, *token, body).await?;
        ensure!(
            status == *expected && answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "POST {path} with {token:?}: expected {expected} and an error, got {status} {answer}"
        );
    }
    for (query, expected) in [
        ("/layers?limit=0", 400),
        ("/layers?limit=1001", 400),
        ("/layers?state=frozen", 400),
        ("/layers?sort=colour", 400),
        ("/layers?bogus=1", 400),
        ("/graph?image=NOT%20A%20REF", 400),
        ("/graph?image=test/absent:v1", 404),
        ("/layers/sha256:zz/lifecycle", 400),
    ] {
        let (status, answer) = admin.get(query).await?;
        ensure!(
            status == expected && answer["error"].is_string(),
            "GET {query}: expected {expected}, got {status} {answer}"
        );
    }
    // Nothing changed: no pin was recorded.
    let state = admin.lifecycle(&layer).await?;
    ensure!(
        state["pins"] == json!({"keep": null, "delete": null}),
        "no pin after refusals: {state:#}"
    );
    let listing = admin.get("/layers").await?.1;
    ensure!(
        listing["layers"]
            .as_array()
            .is_some_and(|l| l.iter().all(|r| r["pinned_keep"] == false)),
        "no pin in the listing: {listing}"
    );
    logs.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_of_a_multi_arch_index_lists_its_children_and_their_shared_layers() -> Result<()>
{
    let origin = Origin::start().await?;
    let client = reqwest::Client::new();
    let repo = "test/multi";
    let layer = |seed: u8, size: usize| {
        let mut bytes = vec![0u8; size];
        shoal_testnet::image::SplitMix64(u64::from(seed)).fill(&mut bytes);
        Blob::new("application/vnd.oci.image.layer.v1.tar+gzip", bytes)
    };
    let (shared, amd64_only, arm64_only) = (layer(1, 40_000), layer(2, 20_000), layer(3, 30_000));
    let mut children = Vec::new();
    for (arch, own) in [("amd64", &amd64_only), ("arm64", &arm64_only)] {
        let config = Blob::new(
            "application/vnd.oci.image.config.v1+json",
            serde_json::to_vec(&json!({"architecture": arch, "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": []}}))?,
        );
        let manifest = Blob::new(
            "application/vnd.oci.image.manifest.v1+json",
            serde_json::to_vec(&json!({"schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config.descriptor(),
                "layers": [shared.descriptor(), own.descriptor()]}))?,
        );
        for blob in [&shared, own, &config] {
            push_blob(&client, &origin.url(), repo, blob).await?;
        }
        push_manifest(&client, &origin.url(), repo, &manifest.digest, &manifest).await?;
        let mut entry = manifest.descriptor();
        entry["platform"] = json!({"os": "linux", "architecture": arch});
        children.push((manifest, entry));
    }
    let index = Blob::new(
        "application/vnd.oci.image.index.v1+json",
        serde_json::to_vec(&json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": children.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>()}))?,
    );
    push_manifest(&client, &origin.url(), repo, "v1", &index).await?;

    let node = Node::start(NodeConfig::for_origin(&origin)).await?;
    let mut logs = LogsOnFailure::new([&node]);
    // The index by tag, then both children, as clients on two platforms would.
    node.fetch_manifest(repo, "v1").await?;
    for (manifest, _) in &children {
        node.fetch_manifest(repo, &manifest.digest).await?;
    }
    let admin = Admin::new(&node)?;
    let (status, graph) = admin.get("/graph?image=test/multi:v1").await?;
    ensure!(status == 200, "graph: {status} {graph}");
    let images = graph["images"].as_array().context("images")?;
    ensure!(images.len() == 3, "the index and both children: {graph:#}");
    let index_node = images
        .iter()
        .find(|i| i["digest"] == index.digest.as_str())
        .context("the index is in the graph")?;
    ensure!(index_node["kind"] == "index" && index_node["tags"] == json!(["v1"]));
    let platforms: BTreeSet<&str> = index_node["children"]
        .as_array()
        .context("children")?
        .iter()
        .filter(|c| c["cached"] == true)
        .filter_map(|c| c["platform"].as_str())
        .collect();
    ensure!(
        platforms == BTreeSet::from(["linux/amd64", "linux/arm64"]),
        "children with their platforms: {index_node:#}"
    );
    ensure!(
        graph["shared_layers"] == json!([shared.digest]),
        "the shared layer: {graph:#}"
    );
    for (manifest, _) in &children {
        let child = images
            .iter()
            .find(|i| i["digest"] == manifest.digest.as_str())
            .context("a child is in the graph")?;
        ensure!(
            child["parent"] == index.digest.as_str()
                && child["repository"] == repo
                && child["layers"][0]["digest"] == shared.digest.as_str(),
            "the child, its index and its layers in order: {child:#}"
        );
    }

    // The CLI renders the same graph for Graphviz.
    let admin_url = node.admin_url();
    let dot = cli::shoal(&[
        "graph",
        "--admin",
        &admin_url,
        "--image",
        "test/multi:v1",
        "--format",
        "dot",
    ])
    .await?;
    ensure!(dot.status.success(), "shoal graph: {}", describe(&dot));
    let text = String::from_utf8_lossy(&dot.stdout);
    ensure!(
        text.starts_with("digraph") && text.contains(&shared.digest[..19]),
        "dot output: {text}"
    );
    logs.passed();
    Ok(())
}
