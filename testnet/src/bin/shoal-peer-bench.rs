//! Peer network benchmarks on real parts (see `shoal_testnet::bench`); prints Markdown tables for
//! BENCHMARKS.md. Needs the project's binaries beside it (or `SHOAL_BIN_DIR`) and
//! `docker-registry` installed.

use anyhow::Result;
use clap::{Parser, Subcommand};
use shoal_testnet::bench::{self, median};

#[derive(Parser)]
#[command(about = "Benchmarks of Shoal's peer network on loopback")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One blob from one peer, beside the origin registry.
    OnePeer {
        /// Blob size in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: usize,
        /// Runs (each with a fresh origin and fresh nodes).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Pins the holder to core HOLDER and the fetching node to core FETCHER (`taskset`), so
        /// that each end has a core of its own, as on two hosts.
        #[arg(long, value_name = "HOLDER,FETCHER", value_delimiter = ',')]
        pin: Option<Vec<usize>>,
        /// Peer transports to measure in each run, each with a holder and a fetching node of its
        /// own: `quic`, `tcp` (TCP + TLS or noise + yamux), `both` (both listened on, as a node does by
        /// default; the node picks TCP, as the two share a region).
        #[arg(long, value_delimiter = ',', default_value = "quic")]
        transports: Vec<bench::Transport>,
    },
    /// N nodes asking for one blob at once.
    Crowd {
        /// Node counts to measure.
        #[arg(long, value_delimiter = ',', default_values_t = [2, 5, 10])]
        nodes: Vec<usize>,
        /// Blob size in MiB.
        #[arg(long, default_value_t = 256)]
        size_mib: usize,
        /// Runs per node count.
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Caps each node's uplink to peers at this many MiB/s (the node's TESTING ONLY option),
        /// so that upload bandwidth runs out before this machine's cores do.
        #[arg(long)]
        egress_mib_per_sec: Option<u64>,
    },
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::OnePeer {
            size_mib,
            runs,
            pin,
            transports,
        } => {
            let size = size_mib << 20;
            let pinning = match pin.as_deref() {
                None => None,
                Some(&[holder, fetcher]) => Some(bench::Pinning { holder, fetcher }),
                Some(_) => anyhow::bail!("--pin wants two cores: HOLDER,FETCHER"),
            };
            anyhow::ensure!(!transports.is_empty(), "--transports wants at least one");
            one_peer(size, runs, pinning, &transports).await?;
        }
        Command::Crowd {
            nodes,
            size_mib,
            runs,
            egress_mib_per_sec,
        } => {
            let size = size_mib << 20;
            let egress = egress_mib_per_sec.map(|mib| mib << 20);
            println!(
                "| nodes | run | time to last byte | origin bytes / blob | peer bytes / blob | most one node uploaded / blob |"
            );
            println!("|---|---|---|---|---|---|");
            for n in nodes {
                for run in 0..runs {
                    let r = bench::crowd(n, size, 900 + (n * 10 + run) as u64, egress).await?;
                    println!(
                        "| {} | {} | {:.2} s | {:.2}x | {:.2}x | {:.2}x |",
                        r.nodes,
                        run + 1,
                        r.seconds,
                        r.origin_copies,
                        r.peer_copies,
                        r.max_upload_copies
                    );
                }
            }
        }
    }
    Ok(())
}

/// Runs [`bench::one_peer`] `runs` times and prints its table: one column per transport, then
/// the CPU seconds per GiB of each node, then the medians and the ratios to the origin through a
/// node.
async fn one_peer(
    size: usize,
    runs: usize,
    pinning: Option<bench::Pinning>,
    transports: &[bench::Transport],
) -> Result<()> {
    let gib = size as f64 / (1u64 << 30) as f64;
    let rate = |seconds: f64| size as f64 / 1e6 / seconds;
    let names: Vec<&str> = transports.iter().map(|t| t.name()).collect();
    let peer_columns: Vec<String> = names
        .iter()
        .map(|name| format!("cold node, one peer ({name})"))
        .collect();
    let cpu_columns: Vec<String> = names
        .iter()
        .map(|name| format!("holder / node from peer ({name})"))
        .collect();
    println!(
        "| run | origin direct | cold node, origin only | {} | warm holder | CPU s/GiB: node from origin; {} |",
        peer_columns.join(" | "),
        cpu_columns.join("; ")
    );
    println!("|---|---|---|{}---|---|", "---|".repeat(transports.len()));
    let mut origin_direct = Vec::new();
    let mut from_origin = Vec::new();
    let mut cpu_from_origin = Vec::new();
    let mut warm = Vec::new();
    let mut from_peer: Vec<Vec<f64>> = vec![Vec::new(); transports.len()];
    let mut cpu_holder: Vec<Vec<f64>> = vec![Vec::new(); transports.len()];
    let mut cpu_fetcher: Vec<Vec<f64>> = vec![Vec::new(); transports.len()];
    for run in 0..runs {
        // Alternate the order of the transports, so neither always runs on a fresher machine.
        let mut order = transports.to_vec();
        if run % 2 == 1 {
            order.reverse();
        }
        let r = bench::one_peer(size, 700 + run as u64, pinning, &order).await?;
        origin_direct.push(rate(r.origin_direct));
        from_origin.push(rate(r.node_from_origin));
        cpu_from_origin.push(r.cpu_node_from_origin / gib);
        let mut cells = Vec::new();
        let mut cpu_cells = Vec::new();
        for (column, transport) in transports.iter().enumerate() {
            let fill = r
                .peers
                .iter()
                .find(|fill| fill.transport == *transport)
                .expect("one fill per transport");
            from_peer[column].push(rate(fill.seconds));
            cpu_holder[column].push(fill.cpu_holder / gib);
            cpu_fetcher[column].push(fill.cpu_fetcher / gib);
            cells.push(format!(
                "{:.2} s ({:.0} MB/s)",
                fill.seconds,
                rate(fill.seconds)
            ));
            cpu_cells.push(format!(
                "{:.2} / {:.2}",
                fill.cpu_holder / gib,
                fill.cpu_fetcher / gib
            ));
        }
        let first = &r.peers[0];
        warm.push(rate(first.warm_holder));
        println!(
            "| {} | {:.2} s ({:.0} MB/s) | {:.2} s ({:.0} MB/s) | {} | {:.2} s ({:.0} MB/s) | {:.2}; {} |",
            run + 1,
            r.origin_direct,
            rate(r.origin_direct),
            r.node_from_origin,
            rate(r.node_from_origin),
            cells.join(" | "),
            first.warm_holder,
            rate(first.warm_holder),
            r.cpu_node_from_origin / gib,
            cpu_cells.join("; ")
        );
    }
    let origin_median = median(&mut from_origin);
    let peer_medians: Vec<f64> = from_peer.iter_mut().map(|c| median(c)).collect();
    println!(
        "| median | {:.0} MB/s | {:.0} MB/s | {} | {:.0} MB/s | {:.2}; {} |",
        median(&mut origin_direct),
        origin_median,
        peer_medians
            .iter()
            .map(|m| format!("{m:.0} MB/s"))
            .collect::<Vec<_>>()
            .join(" | "),
        median(&mut warm),
        median(&mut cpu_from_origin),
        cpu_holder
            .iter_mut()
            .zip(cpu_fetcher.iter_mut())
            .map(|(h, f)| format!("{:.2} / {:.2}", median(h), median(f)))
            .collect::<Vec<_>>()
            .join("; ")
    );
    for (name, peer_median) in names.iter().zip(&peer_medians) {
        println!(
            "peer ({name}) / origin through a node (medians): {:.2}x",
            peer_median / origin_median
        );
    }
    Ok(())
}
