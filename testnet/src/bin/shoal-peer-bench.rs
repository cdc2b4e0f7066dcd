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
        } => {
            let size = size_mib << 20;
            let pinning = match pin.as_deref() {
                None => None,
                Some(&[holder, fetcher]) => Some(bench::Pinning { holder, fetcher }),
                Some(_) => anyhow::bail!("--pin wants two cores: HOLDER,FETCHER"),
            };
            let gib = size as f64 / (1u64 << 30) as f64;
            let mut columns: [Vec<f64>; 4] = Default::default();
            let mut cpu: [Vec<f64>; 3] = Default::default();
            println!("| run | origin direct | cold node, origin only | cold node, one peer | warm holder | CPU s/GiB: node from origin / holder / node from peer |");
            println!("|---|---|---|---|---|---|");
            for run in 0..runs {
                let r = bench::one_peer(size, 700 + run as u64, pinning).await?;
                let times = [
                    r.origin_direct,
                    r.node_from_origin,
                    r.node_from_peer,
                    r.warm_holder,
                ];
                let rates: Vec<String> = times
                    .iter()
                    .zip(columns.iter_mut())
                    .map(|(t, column)| {
                        let rate = size as f64 / 1e6 / t;
                        column.push(rate);
                        format!("{t:.2} s ({rate:.0} MB/s)")
                    })
                    .collect();
                let per_gib =
                    [r.cpu_node_from_origin, r.cpu_holder, r.cpu_fetcher].map(|s| s / gib);
                for (value, column) in per_gib.iter().zip(cpu.iter_mut()) {
                    column.push(*value);
                }
                println!(
                    "| {} | {} | {:.2} / {:.2} / {:.2} |",
                    run + 1,
                    rates.join(" | "),
                    per_gib[0],
                    per_gib[1],
                    per_gib[2]
                );
            }
            let medians: Vec<String> = columns
                .iter_mut()
                .map(|c| format!("{:.0} MB/s", median(c)))
                .collect();
            let cpu_medians: Vec<String> = cpu
                .iter_mut()
                .map(|c| format!("{:.2}", median(c)))
                .collect();
            println!(
                "| median | {} | {} |",
                medians.join(" | "),
                cpu_medians.join(" / ")
            );
            println!(
                "peer / origin through a node (medians): {:.2}x",
                median(&mut columns[2]) / median(&mut columns[1])
            );
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
