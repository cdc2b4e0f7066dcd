//! `shoald`: the Shoal node daemon. Parses flags and config, binds the listeners, runs the node
//! until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use shoal_node::config::{Config, Overrides};

/// A pull-through OCI registry mirror for containerd, backed by a content-defined shard store.
#[derive(Debug, Parser)]
#[command(name = "shoald", version)]
struct Args {
    /// TOML config file (see the README's config reference).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (shards, maps, index).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Registry endpoint address [default: 127.0.0.1:5050].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Admin endpoint address (/metrics, /healthz) [default: 127.0.0.1:5051].
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// An upstream registry, NAME=URL (NAME is what containerd sends as `ns`); repeatable.
    /// Replaces the upstreams of the config file and the defaults.
    #[arg(long = "upstream", value_name = "NAME=URL")]
    upstreams: Vec<String>,
    /// The upstream for requests without `ns`.
    #[arg(long, value_name = "NAME")]
    default_upstream: Option<String>,
    /// Disk budget for shard data, in bytes.
    #[arg(long, value_name = "BYTES")]
    max_disk_bytes: Option<u64>,
    /// How long a tag's digest is trusted before asking the upstream again.
    #[arg(long, value_name = "SECS")]
    tag_ttl_secs: Option<u64>,
    /// Peer network listen address (multiaddr); repeatable. Replaces the config file's list
    /// [default: /ip4/0.0.0.0/udp/4001/quic-v1 and /ip4/0.0.0.0/tcp/4001].
    #[arg(long = "p2p-listen", value_name = "MULTIADDR")]
    p2p_listen: Vec<String>,
    /// A peer to join the network through; repeatable. Replaces the config file's list.
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// This node's region name (a-z, 0-9, -) [default: default].
    #[arg(long, value_name = "NAME")]
    region: Option<String>,
    /// The network key file shared by the nodes of one network (at least 32 bytes). Without
    /// one the node runs alone, without the peer network.
    #[arg(long = "network-key", value_name = "FILE")]
    network_key: Option<PathBuf>,
    /// Admit only this peer id (besides holding the network key); repeatable. Replaces the config
    /// file's `allowed_peers`. Without any, every holder of the key may join.
    #[arg(long = "allow-peer", value_name = "PEER_ID")]
    allow_peer: Vec<String>,
    /// TESTING ONLY: cap this node's outgoing shard transfers at N bytes per second in all (one
    /// token bucket, like an uplink). For emulating distance on one machine; never in production.
    #[arg(long, value_name = "N")]
    test_egress_bytes_per_sec: Option<u64>,
    /// TESTING ONLY: add MS milliseconds before answering a transfer request from a peer when its
    /// region and this node's are A and B (symmetric); repeatable. Replaces `[testing] latency`.
    #[arg(long = "test-latency", value_name = "A:B=MS")]
    test_latency: Vec<String>,
    /// TESTING ONLY: play a lying member that flips the first byte of every shard it sends to
    /// peers, for chaos tests of the receivers' checks. Never in production.
    #[arg(long)]
    test_flip_served_bytes: bool,
    /// Once both listeners are bound, write their addresses as JSON to this file (for test
    /// harnesses and supervisors that start shoald on port 0); with the peer network on, also its
    /// address as "p2p" (a multiaddr ending in `/p2p/<peer id>`).
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
    /// The admin API's bearer token, in a file (mode 0600); required when --admin-listen is not
    /// a loopback address. Replaces `admin_token_file`.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let overrides = Overrides {
        data_dir: args.data_dir.clone(),
        listen: args.listen.clone(),
        admin_listen: args.admin_listen.clone(),
        upstreams: args.upstreams.clone(),
        default_upstream: args.default_upstream.clone(),
        max_disk_bytes: args.max_disk_bytes,
        tag_ttl_secs: args.tag_ttl_secs,
        p2p_listen: args.p2p_listen.clone(),
        bootstrap: args.bootstrap.clone(),
        region: args.region.clone(),
        network_key_file: args.network_key.clone(),
        allowed_peers: args.allow_peer.clone(),
        test_egress_bytes_per_sec: args.test_egress_bytes_per_sec,
        test_latency: args.test_latency.clone(),
        test_flip_served_bytes: args.test_flip_served_bytes,
        admin_token_file: args.admin_token_file.clone(),
    };
    let config = match Config::load(args.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("shoald: invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("shoald: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, args.ready_file)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shoald: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, ready_file: Option<PathBuf>) -> anyhow::Result<()> {
    let registry = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the registry endpoint to {}", config.listen))?;
    let admin = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding the admin endpoint to {}", config.admin_listen))?;
    let registry_addr = registry.local_addr()?;
    let admin_addr = admin.local_addr()?;
    if !admin_addr.ip().is_loopback() {
        tracing::warn!(%admin_addr, "the admin endpoint listens beyond loopback");
    }
    tracing::info!(registry = %registry_addr, admin = %admin_addr, upstreams = ?config.upstreams.keys().collect::<Vec<_>>(), "shoald listening");
    let (p2p_tx, p2p_rx) = tokio::sync::oneshot::channel();
    let mut node = tokio::spawn(shoal_node::run_with(
        config,
        registry,
        admin,
        shutdown_signal()?,
        Some(p2p_tx),
    ));
    // The peer address is known once the swarm listens; without a peer network the sender is
    // dropped. A node that fails to start ends the wait too.
    let p2p = tokio::select! {
        addr = p2p_rx => addr.ok(),
        result = &mut node => {
            result.context("node task")??;
            return Ok(());
        }
    };
    if let Some(path) = ready_file {
        let mut ready = serde_json::json!({ "registry": registry_addr.to_string(), "admin": admin_addr.to_string() });
        // `p2p` is the first address (as before nodes listened on both transports); `p2p_addrs`
        // all of them.
        if let Some(p2p) = p2p {
            if let Some(first) = p2p.first() {
                ready["p2p"] = serde_json::Value::String(first.clone());
            }
            ready["p2p_addrs"] = serde_json::json!(p2p);
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, ready.to_string())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    node.await.context("node task")??;
    Ok(())
}

/// Installs the SIGINT and SIGTERM handlers now (before the ready file says the node is up), and
/// returns a future that completes on the first of them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
