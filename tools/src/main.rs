//! `shoal`: the operator CLI. Checks and inspects a node's store, and measures the hot paths.
//!
//! * `shoal fsck --data-dir DIR [--repair]`: verifies every shard map and every shard's BLAKE3
//!   hash, and the index against the maps. Exit 0 when clean, 1 when problems were found. With
//!   `--repair`, removes what is bad and rebuilds the index.
//! * `shoal inspect --data-dir DIR <digest>`: prints a stored blob's shard map. Reads the map file
//!   only, so it works while `shoald` runs. Exit 1 when the blob is not stored.
//! * `shoal bench ingest`, `http`, `transport` and `placement`: the measurements behind
//!   BENCHMARKS.md.
//! * `shoal containerd configure` and `shoal containerd check`: point containerd's registry hosts
//!   at a node, and check that pulls go through it (see [`containerd`]).
//! * `shoal status [--admin URL] [--json]`: a running node at a glance (see [`status`]).
//! * `shoal placement explain <digest> [--admin ADDR]`: why a layer is or is not on a running node.
//! * `shoal preheat IMAGE... [--region R]... [--all-regions] [--platform os/arch]...`: have
//!   regions fetch images ahead of a rollout, with progress (see [`preheat`]).
//! * `shoal threat import FILE` and `shoal threat get DIGEST`: a running node's threat intake (see
//!   [`threat`]).
//! * `shoal rebuild REF [--wait] [--json]`: re-resolve a tag upstream and, on a new digest, shadow
//!   it into every region before switching (see [`rebuild`]).

mod admin_client;
mod bench;
mod bench_placement;
mod bench_transport;
mod containerd;
mod lifecycle;
mod placement;
mod preheat;
mod rebuild;
mod status;
mod threat;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shoal_node::config::DEFAULT_CHUNKING;
use shoal_node::store::layout::Layout;
use shoal_node::store::recovery;
use shoal_node::store::{ShardStore, StoreConfig};
use shoal_proto::{BlobDigest, ShardMap};

#[derive(Debug, Parser)]
#[command(name = "shoal", version, about = "Operate and measure Shoal nodes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify a stopped node's store: every map, every shard's hash, the index.
    Fsck {
        /// The node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Remove what is bad and rebuild the index from the shard maps and shard files.
        #[arg(long)]
        repair: bool,
    },
    /// Print the shard map of a stored blob.
    Inspect {
        /// The node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The blob, `sha256:<hex>`.
        digest: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Measurements (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Point containerd at a node and check that it pulls through it.
    #[command(subcommand)]
    Containerd(containerd::ContainerdCommand),
    /// A running node at a glance: region, members, disk, hit ratio, traffic, warnings.
    /// Exit 1 when the node reports warnings.
    Status {
        /// The node's admin API.
        #[arg(long, default_value = "http://127.0.0.1:5051")]
        admin: String,
        /// Print the node's JSON answer instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Ask a running node about predictive placement.
    #[command(subcommand)]
    Placement(placement::PlacementCommand),
    /// Have regions fetch images' layers ahead of a rollout, through the peer network, and show
    /// the progress. Ctrl-C stops waiting (the node goes on); running it again resumes. Exit 1
    /// when some blob could not be fetched.
    Preheat {
        /// Images, `registry/repository[:tag][@digest]` (the registry must be a configured
        /// upstream of the node).
        #[arg(required = true)]
        images: Vec<String>,
        /// A region to fill (repeatable); default: the node's own region.
        #[arg(long = "region")]
        regions: Vec<String>,
        /// Fill every region the node knows (its own and its members').
        #[arg(long, conflicts_with = "regions")]
        all_regions: bool,
        /// A platform of multi-platform images, `os/arch[/variant]` (repeatable); default: all.
        #[arg(long = "platform")]
        platforms: Vec<String>,
        /// The node's admin API.
        #[arg(long, default_value = "http://127.0.0.1:5051")]
        admin: String,
        /// A file holding the admin bearer token (the node's `admin_token_file`).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// A running node's layers with their lifecycle states (`GET /layers`), paginated.
    Layers {
        /// Only layers in this state: active, warm, cold, pending_deletion, deleted.
        #[arg(long)]
        state: Option<String>,
        /// Order: digest, size, since, usage, threat, state.
        #[arg(long, default_value = "digest")]
        sort: String,
        /// Layers per page (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Where the page starts.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        #[command(flatten)]
        options: lifecycle::AdminOptions,
    },
    /// A layer's lifecycle on a running node: get it, pin it (keep or delete), unpin it.
    #[command(subcommand)]
    Lifecycle(lifecycle::LifecycleCommand),
    /// The layer dependency graph of a running node's cache (`GET /graph`).
    Graph {
        /// Only this image and its children: `[upstream/]repo[:tag]`, `repo@sha256:…` or a digest.
        #[arg(long)]
        image: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: lifecycle::GraphFormat,
        #[command(flatten)]
        options: lifecycle::AdminOptions,
    },
    /// Runs a running node's retention rules: with --dry-run, prints what would go and changes
    /// nothing.
    Retention {
        /// Only show what would be deleted.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        options: lifecycle::AdminOptions,
    },
    /// Send scanner reports to a running node and read its threat scores.
    #[command(subcommand)]
    Threat(threat::ThreatCommand),
    /// Re-resolve an image's tag upstream; on a new digest, fetch the new version into every
    /// region that holds the old one and only then move the tag (`POST /images/{ref}/rebuild`).
    /// Exit 1 when the rebuild failed.
    Rebuild {
        /// The image, `registry/repository:tag` (the registry must be a configured upstream).
        image: String,
        /// Follow the rebuild until it switched over or failed.
        #[arg(long)]
        wait: bool,
        /// Print the node's JSON answer (the last one with --wait) instead of lines.
        #[arg(long)]
        json: bool,
        /// The node's admin API.
        #[arg(long, default_value = "http://127.0.0.1:5051")]
        admin: String,
        /// A file holding the admin bearer token (the node's `admin_token_file`).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Fsck { data_dir, repair } => fsck(data_dir, repair),
        Command::Inspect {
            data_dir,
            digest,
            json,
        } => inspect(data_dir, &digest, json),
        Command::Bench(command) => bench::run(command).map(|()| ExitCode::SUCCESS),
        Command::Containerd(command) => block_on(containerd::run(command)),
        Command::Status { admin, json } => block_on(status::run(&admin, json)),
        Command::Placement(command) => placement::run(command),
        Command::Preheat {
            images,
            regions,
            all_regions,
            platforms,
            admin,
            token_file,
        } => block_on(preheat::run(preheat::PreheatArgs {
            admin,
            images,
            regions,
            all_regions,
            platforms,
            token_file,
        })),
        Command::Layers {
            state,
            sort,
            limit,
            offset,
            options,
        } => lifecycle::layers(&options, state.as_deref(), &sort, limit, offset),
        Command::Lifecycle(command) => lifecycle::run(command),
        Command::Graph {
            image,
            format,
            options,
        } => lifecycle::graph(&options, image.as_deref(), format),
        Command::Retention { dry_run, options } => lifecycle::retention(&options, dry_run),
        Command::Threat(command) => block_on(threat::run(command)),
        Command::Rebuild {
            image,
            wait,
            json,
            admin,
            token_file,
        } => block_on(rebuild::run(rebuild::RebuildArgs {
            image,
            wait,
            json,
            admin,
            token_file,
        })),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("shoal: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn block_on<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

fn fsck(data_dir: PathBuf, repair: bool) -> anyhow::Result<ExitCode> {
    let report = recovery::fsck(&data_dir, repair)?;
    if repair {
        // fsck dropped the clean-shutdown mark: opening the store rebuilds the index from the
        // shard maps and shard files, dropping maps that lost shards and shards no map uses.
        let config = StoreConfig {
            data_dir: data_dir.clone(),
            chunking: DEFAULT_CHUNKING,
            max_disk_bytes: u64::MAX,
        };
        let store = ShardStore::open(&config)?;
        let stats = store.stats();
        store.close()?;
        println!(
            "index rebuilt: {} blobs, {} bytes",
            stats.blobs, stats.bytes
        );
    }
    println!("maps checked:     {}", report.maps_checked);
    println!(
        "shards checked:   {} ({} bytes hashed)",
        report.shards_checked, report.bytes_checked
    );
    println!("clean shutdown:   {}", report.clean_shutdown);
    println!(
        "orphan shards:    {}{}",
        report.orphan_shards,
        if report.clean_shutdown {
            ""
        } else {
            " (removed at the next start)"
        }
    );
    for (label, items) in [
        ("bad map", report.bad_maps.clone()),
        (
            "corrupt shard",
            report
                .corrupt_shards
                .iter()
                .map(|h| h.to_string())
                .collect(),
        ),
        (
            "missing shard",
            report
                .missing_shards
                .iter()
                .map(|h| h.to_string())
                .collect(),
        ),
        ("stray file", report.stray_files.clone()),
        ("index mismatch", report.index_mismatches.clone()),
    ] {
        for item in items {
            println!("{label}: {item}");
        }
    }
    if report.is_clean() {
        println!("store is clean");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "store has problems{}",
            if repair {
                "; repaired: the next start rebuilds the index"
            } else {
                "; run with --repair to fix"
            }
        );
        Ok(ExitCode::from(1))
    }
}

fn inspect(data_dir: PathBuf, digest: &str, json: bool) -> anyhow::Result<ExitCode> {
    let digest: BlobDigest = digest.parse()?;
    let layout = Layout::new(data_dir);
    let path = layout.map_path(&digest);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("{digest} is not stored");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    };
    let map = ShardMap::decode(&bytes)?;
    let present = |entry: &shoal_proto::ShardEntry| layout.shard_path(&entry.shard_hash()).exists();
    if json {
        let shards: Vec<_> = map
            .shards
            .iter()
            .map(|s| serde_json::json!({"hash": s.shard_hash().hex(), "offset": s.offset, "len": s.len, "present": present(s)}))
            .collect();
        let value = serde_json::json!({
            "digest": digest.to_string(),
            "length": map.blob_len,
            "chunking": {"min": map.chunking.min, "avg": map.chunking.avg, "max": map.chunking.max},
            "shards": shards,
        });
        println!("{value:#}");
    } else {
        println!("blob      {digest}");
        println!("length    {}", map.blob_len);
        println!(
            "chunking  min {} avg {} max {}",
            map.chunking.min, map.chunking.avg, map.chunking.max
        );
        println!("shards    {}", map.shards.len());
        for (i, s) in map.shards.iter().enumerate() {
            println!(
                "{i:>6}  {:>12}  {:>9}  {}{}",
                s.offset,
                s.len,
                s.shard_hash(),
                if present(s) { "" } else { "  MISSING" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
