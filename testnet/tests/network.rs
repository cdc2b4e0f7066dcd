//! End-to-end tests of the multi-node tooling, with a real origin registry,
//! real containerd and `shoald` processes:
//!
//! - three nodes in two regions all see each other, and the TESTING ONLY
//!   latency between the regions is applied by the serving node to a peer of
//!   the other region;
//! - `shoal-testnet up` started as a process: the pull command it prints
//!   works with a real containerd, and SIGINT makes it exit 0 leaving no
//!   processes behind.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use shoal_testnet::containerd::Containerd;
use shoal_testnet::image::{push_image, ImageSpec};
use shoal_testnet::network::{Network, NetworkSpec};
use shoal_testnet::node::{binary, NodeConfig};
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// How long `shoal-testnet up --demo-image` may take to print its ready line.
const UP_TIMEOUT: Duration = Duration::from_secs(300);
/// How long `shoal-testnet` may take to exit after SIGINT.
const DOWN_TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_in_two_regions_see_each_other_and_latency_follows_regions() -> Result<()> {
    let shaping_log = NodeConfig {
        rust_log: Some("info,shoal_node::p2p::shaping=debug".into()),
        ..NodeConfig::default()
    };
    let network = Network::start(
        NetworkSpec::new(41)
            .node_with("eu", shaping_log)
            .node("eu")
            .node("us")
            .latency("eu", "us", 80),
    )
    .await?;
    let regions: Vec<&str> = network.nodes().iter().map(|n| n.region()).collect();
    assert_eq!(regions, ["eu", "eu", "us"]);
    let addrs: BTreeSet<_> = network.registry_addrs().into_iter().collect();
    assert_eq!(addrs.len(), 3, "nodes share a registry address");
    for member in network.nodes() {
        let members = member.node().metric("shoal_p2p_members").await?;
        assert_eq!(
            members,
            2.0,
            "a node in {} sees {members} members",
            member.region()
        );
    }

    let image = push_image(
        network.origin(),
        ImageSpec::multi_layer("test/regions", "v1", 41),
    )
    .await?;
    let first = Containerd::start().await?;
    first
        .pull_ok(&image.reference, network.hosts_dir(0))
        .await?;
    first.ensure_holds(&image).await?;
    drop(first);

    // Only node 0 (eu) holds the image: node 2 (us) gets every blob from it, and node 0 waits the
    // eu:us latency before each answer.
    let second = Containerd::start().await?;
    second
        .pull_ok(&image.reference, network.hosts_dir(2))
        .await?;
    second.ensure_holds(&image).await?;
    let blob_bytes: u64 = image.blobs().map(|blob| blob.size).sum();
    let from_peer = network
        .node(2)
        .metric_with("shoal_bytes_received_total", &[("source", "peer")])
        .await?;
    assert!(
        from_peer >= blob_bytes as f64,
        "node 2 received {from_peer} of {blob_bytes} bytes from peers:\n{}",
        network.node(2).log_tail(60)
    );
    let log = std::fs::read_to_string(network.node(0).log_path())?;
    let delays: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("testing: added latency before answering"))
        .collect();
    assert!(
        delays.len() >= image.blobs().count(),
        "node 0 delayed {} answers for {} blobs:\n{}",
        delays.len(),
        image.blobs().count(),
        network.node(0).log_tail(40)
    );
    for line in &delays {
        assert!(
            line.contains("peer_region=us") && line.contains("delay_ms=80"),
            "unexpected delay: {line}"
        );
    }
    assert!(
        log.contains("TESTING ONLY network shaping is on"),
        "node 0 did not warn that shaping is on"
    );
    network.shutdown().await
}

/// What `shoal-testnet up` printed that the test uses.
#[derive(Debug, Default)]
struct Printed {
    pids: Vec<u32>,
    pulls: Vec<(PathBuf, String)>,
    metrics: Vec<String>,
}

fn parse_printed(lines: &[String]) -> Result<Printed> {
    let mut printed = Printed::default();
    for line in lines {
        let line = line.trim();
        if let Some(pid) = line.strip_prefix("pid: ") {
            printed.pids.push(pid.parse().context("pid")?);
        } else if let Some(url) = line.strip_prefix("metrics: ") {
            printed.metrics.push(url.to_string());
        } else if let Some(command) = line.strip_prefix("pull: ") {
            let words: Vec<&str> = command.split_whitespace().collect();
            let ["ctr", "image", "pull", "--hosts-dir", dir, reference] = words[..] else {
                bail!("unexpected pull command {command:?}");
            };
            printed
                .pulls
                .push((PathBuf::from(dir), reference.to_string()));
        }
    }
    Ok(printed)
}

/// Whether `pid` is a live `shoald` or `docker-registry` (a reused pid of
/// another program, or a zombie, does not count).
fn is_live_part(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rsplit(')').next().unwrap_or("").trim_start();
    if state.starts_with('Z') {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    cmdline.contains("shoald") || cmdline.contains("docker-registry")
}

async fn scrape(client: &reqwest::Client, url: &str) -> Result<shoal_testnet::metrics::Metrics> {
    let text = client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(shoal_testnet::metrics::Metrics::parse(&text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shoal_testnet_up_prints_working_pull_commands_and_stops_clean_on_sigint() -> Result<()> {
    let mut child = tokio::process::Command::new(binary("shoal-testnet")?)
        .args([
            "up",
            "--regions",
            "eu,us",
            "--latency",
            "eu:us=20",
            "--egress-mib-per-sec",
            "64",
            "--demo-image",
            "--key-seed",
            "43",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("spawning shoal-testnet")?;
    let pid = child.id().context("shoal-testnet has no pid")?;
    let mut stdout = BufReader::new(child.stdout.take().context("no stdout")?).lines();
    let mut lines = Vec::new();
    let read_until_ready = async {
        while let Some(line) = stdout.next_line().await? {
            eprintln!("shoal-testnet| {line}");
            if line.starts_with("ready:") {
                return Ok(true);
            }
            lines.push(line);
        }
        Ok::<bool, anyhow::Error>(false)
    };
    let ready = tokio::time::timeout(UP_TIMEOUT, read_until_ready)
        .await
        .context("shoal-testnet printed no ready line in time")??;
    ensure!(ready, "shoal-testnet closed its output before it was ready");
    let printed = parse_printed(&lines)?;
    ensure!(
        printed.pids.len() == 3,
        "want the pids of the origin and two nodes: {lines:?}"
    );
    ensure!(
        printed.pulls.len() == 2,
        "want two pull commands: {lines:?}"
    );
    let demo = ImageSpec::multi_layer("demo/app", "v1", 43);
    let demo = tokio::task::spawn_blocking(move || demo.build())
        .await??
        .info();

    // The first node fetches the demo image from the origin, the second from the first.
    for (dir, reference) in &printed.pulls {
        ensure!(reference == &demo.reference, "pull of {reference}");
        let containerd = Containerd::start().await?;
        containerd.pull_ok(reference, dir).await?;
        containerd.ensure_holds(&demo).await?;
    }
    let client = reqwest::Client::new();
    let second = scrape(&client, &printed.metrics[1]).await?;
    let from_peer = second.sum_with("shoal_bytes_received_total", &[("source", "peer")]);
    let blob_bytes: u64 = demo.blobs().map(|blob| blob.size).sum();
    ensure!(
        from_peer >= blob_bytes as f64,
        "the second node received {from_peer} of {blob_bytes} bytes from its peer"
    );

    let status = std::process::Command::new("kill")
        .args(["-s", "INT", &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -s INT failed");
    let exit = tokio::time::timeout(DOWN_TIMEOUT, child.wait())
        .await
        .context("shoal-testnet did not exit after SIGINT")??;
    ensure!(exit.success(), "shoal-testnet exited with {exit}");
    let left: Vec<u32> = printed
        .pids
        .iter()
        .copied()
        .filter(|pid| is_live_part(*pid))
        .collect();
    ensure!(left.is_empty(), "processes left running: {left:?}");
    Ok(())
}
