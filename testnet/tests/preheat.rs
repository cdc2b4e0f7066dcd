//! End-to-end test of `shoal preheat`, with a real origin registry, real containerd and `shoald`
//! processes in two regions:
//!
//! - `shoal preheat IMAGE --all-regions` (the real CLI binary, its output captured, so not a
//!   terminal) has both regions fetch the image: the origin serves each blob once, the other
//!   region gets it from peers, and the output is plain lines with a summary, without ANSI escapes
//!   or other control characters.
//! - A pull in each region (containerd, `ctr image pull --hosts-dir`) then asks the origin for no
//!   blob: both regions hold the image.
//! - Running the same preheat again reports every blob as already there.

use anyhow::{ensure, Result};
use shoal_testnet::cli;
use shoal_testnet::containerd::{describe, Containerd};
use shoal_testnet::image::{push_image, ImageInfo, ImageSpec};
use shoal_testnet::network::{Network, NetworkSpec};
use shoal_testnet::node::LogsOnFailure;

/// Runs `shoal preheat` against `admin` and returns its stdout, checked to be plain text.
async fn preheat(admin: &str, image: &ImageInfo) -> Result<String> {
    let output = cli::shoal(&[
        "preheat",
        &image.reference,
        "--all-regions",
        "--admin",
        admin,
    ])
    .await?;
    ensure!(
        output.status.success(),
        "preheat failed: {}",
        describe(&output)
    );
    let stdout = String::from_utf8(output.stdout.clone())?;
    let stderr = String::from_utf8(output.stderr.clone())?;
    for (name, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        ensure!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{name} of a preheat that is not on a terminal has control characters:\n{text:?}"
        );
    }
    ensure!(
        stdout.contains("summary: job ") && stdout.contains(" done: "),
        "no summary in:\n{stdout}"
    );
    Ok(stdout)
}

/// The count of blobs on the summary line that starts with `label` (`already there:`, ...).
fn summary_blobs(stdout: &str, label: &str) -> Option<u64> {
    stdout
        .lines()
        .find_map(|line| line.trim_start().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preheated_image_is_pulled_in_each_region_without_the_origin_and_a_rerun_finds_it_there(
) -> Result<()> {
    let network = Network::start(NetworkSpec::new(121).node("a").node("b").node("b")).await?;
    let mut logs = LogsOnFailure::new(network.nodes().iter().map(|n| n.node()));
    let image = push_image(
        network.origin(),
        ImageSpec::multi_layer("test/preheat", "v1", 121),
    )
    .await?;
    let blobs = image.blobs().count() as u64;
    let admin = network.node(0).admin_url();

    let first = preheat(&admin, &image).await?;
    println!("first preheat:\n{first}");
    ensure!(
        summary_blobs(&first, "from origin:") == Some(blobs)
            && summary_blobs(&first, "from peers:") == Some(blobs)
            && summary_blobs(&first, "already there:") == Some(0),
        "region a should fetch each blob from the origin and region b from peers:\n{first}"
    );
    ensure!(
        first.lines().filter(|l| l.starts_with("done ")).count() as u64 == 2 * blobs,
        "one line per blob and region expected:\n{first}"
    );
    for blob in image.blobs() {
        let gets = network.origin().blob_gets(&blob.digest);
        ensure!(gets == 1, "the origin served {} {gets} times", blob.digest);
    }

    // A pull in each region is local: no new blob request reaches the origin.
    for node in [0, 2] {
        let client = Containerd::start().await?;
        client
            .pull_ok(&image.reference, network.hosts_dir(node))
            .await?;
        client.ensure_holds(&image).await?;
    }
    for blob in image.blobs() {
        let gets = network.origin().blob_gets(&blob.digest);
        ensure!(
            gets == 1,
            "after the pulls the origin served {} {gets} times",
            blob.digest
        );
    }

    let again = preheat(&admin, &image).await?;
    println!("second preheat:\n{again}");
    ensure!(
        summary_blobs(&again, "already there:") == Some(2 * blobs)
            && summary_blobs(&again, "from peers:") == Some(0)
            && summary_blobs(&again, "from origin:") == Some(0),
        "a second preheat should find everything there:\n{again}"
    );
    logs.passed();
    network.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_preheat_requests_are_refused_with_the_reason_and_start_nothing() -> Result<()> {
    let network = Network::start(NetworkSpec::new(122).node("a")).await?;
    let mut logs = LogsOnFailure::new(network.nodes().iter().map(|n| n.node()));
    let url = format!("{}/preheat", network.node(0).admin_url());
    let http = reqwest::Client::new();
    let image = format!("{}/test/app:v1", shoal_testnet::REGISTRY_HOST);
    for (body, says) in [
        ("{".to_owned(), "not a preheat request"),
        (r#"{"images":[]}"#.to_owned(), "images"),
        (
            r#"{"images":["other.example/app:v1"]}"#.to_owned(),
            "not a configured upstream",
        ),
        (
            format!(r#"{{"images":["{image}"],"regions":["mars"]}}"#),
            "not known",
        ),
        (
            format!(r#"{{"images":["{image}"],"platforms":["linux"]}}"#),
            "platform",
        ),
        (
            format!(r#"{{"images":["{image}"],"surprise":1}}"#),
            "unknown field",
        ),
    ] {
        let response = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?;
        ensure!(
            response.status() == reqwest::StatusCode::BAD_REQUEST,
            "{body}: {}",
            response.status()
        );
        let answer: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
        let error = answer["error"].as_str().unwrap_or_default();
        ensure!(
            error.contains(says),
            "{body}: {error:?} does not say {says:?}"
        );
    }
    let unknown = http.get(format!("{url}/0123456789abcdef")).send().await?;
    ensure!(unknown.status() == reqwest::StatusCode::NOT_FOUND);
    // Nothing was resolved or fetched.
    ensure!(
        network.origin().manifest_gets("v1") == 0 && network.origin().blob_bytes_served() == 0,
        "a refused request reached the origin"
    );
    logs.passed();
    network.shutdown().await
}
