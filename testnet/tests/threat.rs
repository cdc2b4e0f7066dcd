//! End-to-end tests of threat intake, with a real origin registry, real containerd and `shoald`
//! processes in one peer network:
//!
//! - a report in Trivy's JSON format for an image the test pushed (and containerd pulled through
//!   node A), written in the shape of the real reports in `shared/data/vuln-reports/` with that
//!   image's own layer digests and DiffIDs, imported on node A: `GET /threat/layers/{digest}`
//!   shows its score and CVEs on A and, through gossip, on node B;
//! - a report in Grype's JSON format (findings located by DiffID only) for a second image,
//!   imported on B with `shoal threat import`: A shows it; a clean layer of that image is
//!   recorded as clean; `shoal threat get` prints a record;
//! - with `threat.auto_rebuild` on, a report with fixed versions runs the rebuild flow for the
//!   tag naming the scanned image (no new digest upstream: nothing changes);
//! - oversized, malformed, wrong-format and unmappable reports, and one naming an image the
//!   origin does not have, are each refused with a 4xx (502 for the missing image) and a JSON
//!   error naming the problem, and nothing changes on either node.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use shoal_testnet::containerd::Containerd;
use shoal_testnet::image::{push_image, ImageInfo, ImageSpec};
use shoal_testnet::network::{Network, NetworkSpec};
use shoal_testnet::node::{LogsOnFailure, Node, NodeConfig};
use shoal_testnet::reports::{self, GrypeFinding, LayerLocation, TrivyFinding};

/// How long gossip may take to carry a record to the peer.
const GOSSIP_TIMEOUT: Duration = Duration::from_secs(60);
/// The nodes' report limit in this test (small, so an oversized report is cheap to send).
const MAX_REPORT_BYTES: usize = 256 * 1024;

fn threat_config(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("shoald.toml");
    std::fs::write(
        &path,
        format!("[threat]\nmax_report_bytes = {MAX_REPORT_BYTES}\nauto_rebuild = true\n"),
    )?;
    Ok(path)
}

fn with_config(path: &Path) -> NodeConfig {
    NodeConfig::default()
        .arg("--config")
        .arg(path.to_str().expect("temp paths are UTF-8"))
}

/// `POST /threat/reports`: the status and the JSON answer.
async fn post_report(node: &Node, body: Vec<u8>) -> Result<(u16, Value)> {
    let url = format!("{}/threat/reports", node.admin_url());
    let response = reqwest::Client::new()
        .post(&url)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    let value = serde_json::from_slice(&bytes)
        .with_context(|| format!("POST {url}: not JSON: {}", String::from_utf8_lossy(&bytes)))?;
    Ok((status, value))
}

/// `GET /threat/layers/{digest}`: `None` on 404.
async fn layer_threat(node: &Node, digest: &str) -> Result<Option<Value>> {
    let url = format!("{}/threat/layers/{digest}", node.admin_url());
    let response = reqwest::get(&url)
        .await
        .with_context(|| format!("GET {url}"))?;
    match response.status().as_u16() {
        404 => Ok(None),
        200 => Ok(Some(serde_json::from_slice(&response.bytes().await?)?)),
        other => bail!("GET {url}: {other}"),
    }
}

/// Polls `node` until it has a record of `digest` from a report made at `reported_at`.
async fn wait_for_record(node: &Node, digest: &str, reported_at: u64) -> Result<Value> {
    let deadline = Instant::now() + GOSSIP_TIMEOUT;
    loop {
        if let Some(record) = layer_threat(node, digest).await? {
            if record["reported_at"] == reported_at {
                return Ok(record);
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "after {GOSSIP_TIMEOUT:?} the node has no record of {digest} from {reported_at}:\n{}",
                node.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn cve_ids(record: &Value) -> Vec<String> {
    record["cves"]
        .as_array()
        .map(|cves| {
            cves.iter()
                .filter_map(|c| c["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A Trivy report for `image`: a critical fixable CVE and a medium one in the bottom layer
/// (located by digest and DiffID, as Trivy does), and a high one in the top layer located by
/// DiffID only.
fn trivy_report(image: &ImageInfo, created_at: &str) -> Value {
    let top = image.layers.len() - 1;
    let finding = |id, package, fixed, severity, score, layer| TrivyFinding {
        id,
        package,
        installed: "1.0.0-r0",
        fixed,
        severity,
        score,
        layer,
    };
    reports::trivy_report(
        image,
        created_at,
        &[
            finding(
                "CVE-2024-0001",
                "libcrypto3",
                Some("3.1.4-r5"),
                "CRITICAL",
                9.8,
                LayerLocation::DigestAndDiffId(0),
            ),
            finding(
                "CVE-2024-0002",
                "busybox",
                None,
                "MEDIUM",
                5.5,
                LayerLocation::DigestAndDiffId(0),
            ),
            finding(
                "CVE-2024-0003",
                "zlib",
                Some("1.3.1-r0"),
                "HIGH",
                7.5,
                LayerLocation::DiffIdOnly(top),
            ),
        ],
    )
}

/// A Grype report for `image`: a high fixable and a low unfixed finding, both in the bottom layer.
fn grype_report(image: &ImageInfo, timestamp: &str) -> Value {
    let finding = |id, severity, score, fixed| GrypeFinding {
        id,
        severity,
        score,
        fixed,
    };
    reports::grype_report(
        image,
        timestamp,
        &[
            finding("CVE-2024-1001", "High", 8.1, true),
            finding("CVE-2024-1002", "Low", 3.3, false),
        ],
    )
}

/// Every record both nodes hold for `digests`, to compare before and after refused reports.
async fn records(nodes: &[&Node], digests: &[String]) -> Result<Vec<Option<Value>>> {
    let mut all = Vec::new();
    for node in nodes {
        for digest in digests {
            all.push(layer_threat(node, digest).await?);
        }
    }
    Ok(all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_in_trivy_and_grype_formats_score_layers_here_and_on_a_peer() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = threat_config(dir.path())?;
    let network = Network::start(
        NetworkSpec::new(71)
            .node_with("a", with_config(&config))
            .node_with("b", with_config(&config)),
    )
    .await?;
    let mut logs = LogsOnFailure::new(network.nodes().iter().map(|n| n.node()));
    let (a, b) = (network.node(0), network.node(1));
    let app = push_image(
        network.origin(),
        ImageSpec::new("test/vuln-app", "v1", 71)
            .layer(300 << 10, 50)
            .layer(100 << 10, 50)
            .layer(50 << 10, 50),
    )
    .await?;
    let client = Containerd::start().await?;
    client.pull_ok(&app.reference, network.hosts_dir(0)).await?;
    drop(client);

    // Trivy, on A.
    let trivy = serde_json::to_vec(&trivy_report(&app, "2026-11-30T08:00:00.123456789Z"))?;
    let (status, summary) = post_report(a, trivy).await?;
    ensure!(status == 200, "Trivy import: {status} {summary}");
    ensure!(summary["scanner"] == "trivy", "{summary}");
    ensure!(summary["layers_scored"] == app.layers.len(), "{summary}");
    ensure!(summary["cves"] == 3, "{summary}");
    ensure!(summary["findings_unmapped"] == 0, "{summary}");
    // Fixed versions exist and `threat.auto_rebuild` is on: the rebuild flow ran for the tag that
    // names the scanned manifest here; the upstream names the same digest, so it changed nothing
    // (testnet/tests/rebuild.rs covers a rebuild to a new digest).
    ensure!(summary["rebuild_requested"] == true, "{summary}");
    a.wait_for_log(
        "threat.auto_rebuild: no new digest upstream",
        Duration::from_secs(20),
    )
    .await?;
    ensure!(
        summary["image_manifest"] == app.manifest.digest.as_str(),
        "the index's child was read: {summary}"
    );
    let reported_at = 1_796_025_600; // 2026-11-30T08:00:00Z
    let (bottom, middle, top) = (
        &app.layers[0].digest,
        &app.layers[1].digest,
        &app.layers[2].digest,
    );
    for node in [a, b] {
        let record = wait_for_record(node, bottom, reported_at).await?;
        let score = record["score"].as_f64().unwrap_or(0.0);
        ensure!((98.0..=100.0).contains(&score), "bottom layer: {record}");
        ensure!(
            cve_ids(&record) == ["CVE-2024-0001", "CVE-2024-0002"],
            "{record}"
        );
        ensure!(record["cves"][0]["severity"] == "CRITICAL", "{record}");
        ensure!(record["cves"][0]["fixed"] == true, "{record}");
        ensure!(record["cves"][1]["fixed"] == false, "{record}");
        // The DiffID-only finding was mapped through the image config.
        let record = wait_for_record(node, top, reported_at).await?;
        ensure!(cve_ids(&record) == ["CVE-2024-0003"], "{record}");
        ensure!(record["score"] == 75.0, "{record}");
        let record = wait_for_record(node, middle, reported_at).await?;
        ensure!(
            record["score"] == 0.0,
            "a clean layer is recorded clean: {record}"
        );
    }
    ensure!(layer_threat(a, bottom).await?.unwrap()["source"] == "local");
    ensure!(layer_threat(b, bottom).await?.unwrap()["source"] == "peer");
    ensure!(layer_threat(a, bottom).await?.unwrap()["cached"] == true);
    let output =
        shoal_testnet::cli::shoal(&["threat", "get", bottom, "--admin", &b.admin_url()]).await?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success() && text.contains("CVE-2024-0001") && text.contains("CRITICAL"),
        "shoal threat get: {text} {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Grype, on B, for an image nobody pulled: its layers' scores are kept, pending.
    let tool = push_image(
        network.origin(),
        ImageSpec::new("test/vuln-tool", "v2", 72)
            .layer(200 << 10, 50)
            .layer(60 << 10, 50),
    )
    .await?;
    // Through the operator CLI this time: `shoal threat import FILE --json`.
    let grype_file = dir.path().join("grype.json");
    std::fs::write(
        &grype_file,
        serde_json::to_vec(&grype_report(&tool, "2026-11-30T09:30:00.5+01:00"))?,
    )?;
    let output = shoal_testnet::cli::shoal(&[
        "threat",
        "import",
        grype_file.to_str().expect("temp paths are UTF-8"),
        "--admin",
        &b.admin_url(),
        "--json",
    ])
    .await?;
    ensure!(
        output.status.success(),
        "shoal threat import: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout)?;
    ensure!(summary["scanner"] == "grype", "{summary}");
    ensure!(summary["layers_scored"] == 2, "{summary}");
    ensure!(
        summary["layers_pending"].as_array().map(Vec::len) == Some(2),
        "{summary}"
    );
    let grype_at = 1_796_027_400; // 2026-11-30T08:30:00Z
    for node in [b, a] {
        let record = wait_for_record(node, &tool.layers[0].digest, grype_at).await?;
        ensure!(
            cve_ids(&record) == ["CVE-2024-1001", "CVE-2024-1002"],
            "{record}"
        );
        ensure!(record["cves"][0]["severity"] == "HIGH", "{record}");
        let record = wait_for_record(node, &tool.layers[1].digest, grype_at).await?;
        ensure!(record["score"] == 0.0, "{record}");
    }

    // Refused reports change nothing, here or on the peer.
    let digests: Vec<String> = app
        .layers
        .iter()
        .chain(&tool.layers)
        .map(|l| l.digest.clone())
        .collect();
    let before = records(&[a, b], &digests).await?;
    let mut oversized = trivy_report(&app, "2026-12-01T00:00:00Z");
    oversized["Padding"] = json!("x".repeat(MAX_REPORT_BYTES));
    let mut missing_image = trivy_report(&app, "2026-12-01T00:00:00Z");
    missing_image["Metadata"]["RepoDigests"] = json!([]);
    missing_image["Metadata"]["RepoTags"] = json!([format!(
        "{}/test/vuln-app:no-such-tag",
        shoal_testnet::REGISTRY_HOST
    )]);
    let mut elsewhere = grype_report(&tool, "2026-12-01T00:00:00Z");
    elsewhere["source"]["target"]["userInput"] = json!("registry.invalid/x/y:1");
    elsewhere["source"]["target"]["tags"] = json!(["registry.invalid/x/y:1"]);
    let mut bad_field = trivy_report(&app, "2026-12-01T00:00:00Z");
    bad_field["Results"][0]["Vulnerabilities"][0]["CVSS"]["nvd"]["V3Score"] = json!(42);
    for (body, status, error) in [
        (serde_json::to_vec(&oversized)?, 413, "too_large"),
        (b"{\"Results\": [".to_vec(), 400, "malformed_json"),
        (
            br#"{"bomFormat": "CycloneDX", "components": []}"#.to_vec(),
            422,
            "unknown_format",
        ),
        (serde_json::to_vec(&bad_field)?, 422, "bad_field"),
        (serde_json::to_vec(&elsewhere)?, 422, "unmapped"),
        (
            serde_json::to_vec(&missing_image)?,
            502,
            "image_unavailable",
        ),
    ] {
        let (got, answer) = post_report(a, body).await?;
        ensure!(
            got == status && answer["error"] == error,
            "expected {status} {error}, got {got} {answer}"
        );
        ensure!(
            answer["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
    }
    // Give gossip the time it took above to carry anything (nothing should travel).
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        records(&[a, b], &digests).await? == before,
        "a refused report changed a record"
    );
    logs.passed();
    network.shutdown().await
}
