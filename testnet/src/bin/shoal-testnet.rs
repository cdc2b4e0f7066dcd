//! `shoal-testnet`: starts a local multi-region Shoal network on loopback for
//! trying Shoal by hand, prints how to point containerd at each node, and
//! tears everything down on Ctrl-C (SIGINT) or SIGTERM (`up`). Also runs the
//! chaos soak (`soak`, [`shoal_testnet::soak`]) and the load test (`load`,
//! [`shoal_testnet::load`]), each printing a summary and exiting non-zero when
//! a property failed, and the first-pull-of-a-release benchmark
//! (`release-bench`, [`shoal_testnet::release`]).
//!
//! It runs the same programs the end-to-end tests do (`shoald`, the origin
//! registry `docker-registry`) through [`shoal_testnet::network`]; `shoald`
//! is looked up next to this binary, or in `$SHOAL_BIN_DIR`.

use std::process::ExitCode;

use anyhow::{bail, ensure, Context as _, Result};
use clap::{Parser, Subcommand};
use shoal_testnet::image::{push_image, ImageSpec};
use shoal_testnet::network::{Network, NetworkSpec, MAX_NODES};
use shoal_testnet::node::NodeConfig;

/// The line printed once the network is up; everything above it describes
/// the network.
const READY_LINE: &str = "ready: press Ctrl-C to stop the network";

/// A local Shoal network on loopback, for trying Shoal by hand.
#[derive(Debug, Parser)]
#[command(name = "shoal-testnet", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start an origin registry and shoald nodes in named regions, print how
    /// to pull through each node, and run until Ctrl-C.
    Up(UpArgs),
    /// Chaos soak: 5 nodes in 2 regions, 20 clients, first without faults,
    /// then with nodes killed, the origin stopped and a lying member; checks
    /// wrong bytes, fsck, origin bytes, memory and descriptors.
    Soak(SoakArgs),
    /// Load: many clients on one node's cached blobs and manifests while slow
    /// clients never finish their headers; reports latency, memory and
    /// descriptors.
    Load(LoadArgs),
    /// First pull of a new release with the origin far away: pre-positioned
    /// by placement, cold through a node with placement off, and direct from
    /// the origin; medians over fresh networks.
    ReleaseBench(ReleaseBenchArgs),
    /// The simulator's small scenario on real nodes: writes a trace of
    /// catalog images (and a shoal-sim scenario over it), replays it on six
    /// nodes in three regions, and prints origin bytes and local hit ratio.
    Agreement(AgreementArgs),
}

#[derive(Debug, clap::Args)]
struct AgreementArgs {
    /// The image catalog (JSON lines).
    #[arg(long, default_value = "../shared/data/image-catalog.jsonl")]
    catalog: std::path::PathBuf,
    /// Layer sizes are divided by this.
    #[arg(long, default_value_t = 1000)]
    scale: u64,
    /// Tags pulled.
    #[arg(long, default_value_t = 8)]
    tags: usize,
    /// Pulls in the trace.
    #[arg(long, default_value_t = 240)]
    pulls: usize,
    /// Length of the run, seconds.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Seed of the tag choice and the pulls.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where trace.jsonl and scenario.toml are written.
    #[arg(long, default_value = "agreement-out")]
    out: std::path::PathBuf,
}

#[derive(Debug, clap::Args)]
struct ReleaseBenchArgs {
    /// Runs of each way to pull (each on a fresh origin, nodes and containerd).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Round trip added to every exchange with the origin, milliseconds.
    #[arg(long, default_value_t = 50)]
    origin_rtt_ms: u64,
    /// The origin's rate towards its clients, MiB per second (all together).
    #[arg(long, default_value_t = 8)]
    origin_mib_per_sec: u64,
    /// Round trip added between the two regions' nodes, milliseconds.
    #[arg(long, default_value_t = 5)]
    peer_rtt_ms: u64,
    /// Seed of the images.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct SoakArgs {
    /// Minutes of each phase (fault-free, then faulted).
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Seed of the images, the clients' requests and the faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the summary as JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// Concurrent clients asking for cached blobs and manifests.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Clients that open a connection and never finish their headers.
    #[arg(long, default_value_t = 100)]
    slow_clients: usize,
    /// Seconds the clients send requests.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seed of the image and the clients' choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the summary as JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Region names, comma-separated (a-z, 0-9, -).
    #[arg(long, value_delimiter = ',', default_value = "eu,us")]
    regions: Vec<String>,
    /// Nodes started in each region.
    #[arg(long, default_value_t = 1)]
    nodes_per_region: usize,
    /// Added latency between two regions, A:B=MS (symmetric; TESTING ONLY
    /// shaping in every node); repeatable.
    #[arg(long = "latency", value_name = "A:B=MS")]
    latency: Vec<String>,
    /// Cap on each node's outgoing peer transfers, in MiB per second (TESTING
    /// ONLY shaping).
    #[arg(long, value_name = "N")]
    egress_mib_per_sec: Option<u64>,
    /// Build a small demo image and push it to the origin, and print the
    /// pull command for it.
    #[arg(long)]
    demo_image: bool,
    /// Seed of the network key (nodes started with the same seed form one
    /// network).
    #[arg(long, default_value_t = 1)]
    key_seed: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("shoal-testnet: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match args.command {
            Command::Up(up) => run_up(up).await,
            Command::Soak(soak) => run_soak(soak).await,
            Command::Load(load) => run_load(load).await,
            Command::ReleaseBench(args) => run_release_bench(args).await,
            Command::Agreement(args) => run_agreement(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shoal-testnet: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_region_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Parses `A:B=MS`, with both regions among `regions`.
fn parse_latency(text: &str, regions: &[String]) -> Result<(String, String, u64)> {
    let parse = || -> Option<(&str, &str, u64)> {
        let (pair, ms) = text.split_once('=')?;
        let (a, b) = pair.split_once(':')?;
        Some((a, b, ms.parse().ok()?))
    };
    let Some((a, b, ms)) = parse() else {
        bail!("--latency {text:?} is not A:B=MS, e.g. eu:us=80");
    };
    for region in [a, b] {
        ensure!(
            regions.iter().any(|r| r == region),
            "--latency {text:?}: {region:?} is not one of --regions {regions:?}"
        );
    }
    ensure!(ms <= 60_000, "--latency {text:?}: at most 60000 ms");
    Ok((a.to_string(), b.to_string(), ms))
}

fn network_spec(up: &UpArgs) -> Result<NetworkSpec> {
    ensure!(!up.regions.is_empty(), "--regions names no region");
    for region in &up.regions {
        ensure!(
            is_region_name(region),
            "--regions: {region:?} is not a region name (1 to 63 of a-z, 0-9 and -)"
        );
    }
    let total = up.regions.len().saturating_mul(up.nodes_per_region);
    ensure!(
        (1..=MAX_NODES).contains(&total),
        "{total} nodes asked for; 1 to {MAX_NODES} are allowed"
    );
    let mut options = NodeConfig::default();
    if let Some(mib) = up.egress_mib_per_sec {
        ensure!(mib >= 1, "--egress-mib-per-sec must be at least 1");
        let bytes = mib
            .checked_mul(1 << 20)
            .context("--egress-mib-per-sec is too large")?;
        options = options.test_egress_bytes_per_sec(bytes);
    }
    let mut spec = NetworkSpec::new(up.key_seed);
    for text in &up.latency {
        let (a, b, ms) = parse_latency(text, &up.regions)?;
        spec = spec.latency(&a, &b, ms);
    }
    for region in &up.regions {
        for _ in 0..up.nodes_per_region {
            spec = spec.node_with(region, options.clone());
        }
    }
    Ok(spec)
}

async fn run_up(up: UpArgs) -> Result<()> {
    // Installed before anything starts, so an early Ctrl-C still tears down what was started.
    let mut stop = Box::pin(shutdown_signal()?);
    let spec = network_spec(&up)?;
    eprintln!("shoal-testnet: starting an origin and {} nodes", spec.len());
    let network = tokio::select! {
        network = Network::start(spec) => network?,
        () = &mut stop => {
            eprintln!("shoal-testnet: interrupted during start-up");
            return Ok(());
        }
    };
    let demo = if up.demo_image {
        let spec = ImageSpec::multi_layer("demo/app", "v1", up.key_seed);
        tokio::select! {
            image = push_image(network.origin(), spec) => Some(image.context("pushing the demo image")?),
            () = &mut stop => {
                eprintln!("shoal-testnet: interrupted while pushing the demo image");
                return network.shutdown().await;
            }
        }
    } else {
        None
    };
    print_network(
        &network,
        demo.as_ref().map(|image| image.reference.as_str()),
    );
    stop.await;
    eprintln!("shoal-testnet: stopping");
    network.shutdown().await
}

async fn run_soak(args: SoakArgs) -> Result<()> {
    ensure!(
        (1..=24 * 60).contains(&args.minutes),
        "--minutes must be 1 to 1440"
    );
    let options = shoal_testnet::soak::SoakOptions::minutes(args.minutes, args.seed);
    let report = shoal_testnet::soak::run(&options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", shoal_testnet::soak::render(&report));
    }
    let failures = report.failures();
    ensure!(failures.is_empty(), "soak failed: {}", failures.join("; "));
    Ok(())
}

async fn run_load(args: LoadArgs) -> Result<()> {
    ensure!(
        (1..=2000).contains(&args.clients),
        "--clients must be 1 to 2000"
    );
    ensure!(
        args.slow_clients <= 2000,
        "--slow-clients must be at most 2000"
    );
    ensure!(
        (1..=3600).contains(&args.seconds),
        "--seconds must be 1 to 3600"
    );
    let options = shoal_testnet::load::LoadOptions {
        clients: args.clients,
        slow_clients: args.slow_clients,
        duration: std::time::Duration::from_secs(args.seconds),
        seed: args.seed,
    };
    let report = shoal_testnet::load::run(&options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", shoal_testnet::load::render(&report));
    }
    let failures = report.failures();
    ensure!(failures.is_empty(), "load failed: {}", failures.join("; "));
    Ok(())
}

async fn run_release_bench(args: ReleaseBenchArgs) -> Result<()> {
    ensure!(
        (1..=1024).contains(&args.origin_mib_per_sec),
        "--origin-mib-per-sec must be 1 to 1024"
    );
    ensure!(
        args.peer_rtt_ms <= 10_000,
        "--peer-rtt-ms must be at most 10000"
    );
    let options = shoal_testnet::release::ReleaseOptions {
        runs: args.runs,
        origin: shoal_testnet::far_link::LinkShape {
            rtt: std::time::Duration::from_millis(args.origin_rtt_ms),
            bytes_per_sec: args.origin_mib_per_sec << 20,
        },
        peer_rtt_ms: args.peer_rtt_ms,
        seed: args.seed,
    };
    let report = shoal_testnet::release::run(&options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", shoal_testnet::release::render(&report));
    }
    Ok(())
}

async fn run_agreement(args: AgreementArgs) -> Result<()> {
    ensure!(
        (1..=7200).contains(&args.seconds),
        "--seconds must be 1 to 7200"
    );
    let options = shoal_testnet::agreement::AgreementOptions {
        catalog: args.catalog,
        scale: args.scale,
        tags: args.tags,
        pulls: args.pulls,
        seconds: args.seconds,
        seed: args.seed,
        out: args.out,
    };
    let report = shoal_testnet::agreement::replay(&options).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    println!(
        "trace and scenario in {}; the simulator's figures: shoal-sim run --scenario {}",
        options.out.display(),
        options.out.join("scenario.toml").display()
    );
    Ok(())
}

fn print_network(network: &Network, demo: Option<&str>) {
    let origin = network.origin();
    let reference = demo
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}/<repository>:<tag>", shoal_testnet::REGISTRY_HOST));
    println!("origin registry: {}", origin.url());
    println!(
        "  push your own images to {} (plain HTTP, no auth), then pull them through a node as {}/<repository>:<tag>",
        origin.addr(),
        shoal_testnet::REGISTRY_HOST
    );
    if let Some(pid) = origin.pid() {
        println!("  pid: {pid}");
    }
    for (index, member) in network.nodes().iter().enumerate() {
        let node = member.node();
        println!("node {index}: region {}", member.region());
        if let Some(pid) = node.pid() {
            println!("  pid: {pid}");
        }
        println!("  registry: {}", node.registry_url());
        println!("  metrics: {}/metrics", node.admin_url());
        println!("  data dir: {}", node.data_dir().display());
        println!("  log: {}", node.log_path().display());
        println!("  hosts dir: {}", member.hosts_dir().display());
        println!(
            "  pull: ctr image pull --hosts-dir {} {reference}",
            member.hosts_dir().display()
        );
    }
    println!("{READY_LINE}");
}

/// A future that completes on the first SIGINT or SIGTERM; the handlers are
/// installed when this is called.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_must_name_known_regions() {
        let regions = vec!["eu".to_string(), "us".to_string()];
        assert_eq!(
            parse_latency("eu:us=80", &regions).unwrap(),
            ("eu".into(), "us".into(), 80)
        );
        assert!(parse_latency("eu:ap=80", &regions).is_err());
        assert!(parse_latency("eu-us=80", &regions).is_err());
        assert!(parse_latency("eu:us=70000", &regions).is_err());
    }

    #[test]
    fn one_node_per_region_by_default_and_limits_hold() {
        let up = Args::parse_from(["shoal-testnet", "up", "--regions", "eu,us,ap"]);
        let Command::Up(up) = up.command else {
            panic!("parsed as another command")
        };
        assert_eq!(network_spec(&up).unwrap().len(), 3);
        let too_many = Args::parse_from([
            "shoal-testnet",
            "up",
            "--regions",
            "eu",
            "--nodes-per-region",
            "1000",
        ]);
        let Command::Up(too_many) = too_many.command else {
            panic!("parsed as another command")
        };
        assert!(network_spec(&too_many).is_err());
        let bad = Args::parse_from(["shoal-testnet", "up", "--regions", "EU"]);
        let Command::Up(bad) = bad.command else {
            panic!("parsed as another command")
        };
        assert!(network_spec(&bad).is_err());
    }
}
