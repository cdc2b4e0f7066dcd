//! Benchmarks behind BENCHMARKS.md. Figures are medians over runs, single-threaded where the
//! question is per-core cost; every figure is printed beside its baseline from the same run.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Subcommand;
use fastcdc::v2020::FastCDC;
use hdrhistogram::Histogram;
use sha2::{Digest as _, Sha256};
use shoal_node::config::{validate_chunking, DEFAULT_CHUNKING};
use shoal_node::store::chunker::{cut_window, StreamChunker};
use shoal_node::store::{Durability, ShardStore, StoreConfig};
use shoal_proto::{BlobDigest, ChunkingParams, ShardHash};

/// What to measure.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Chunking + BLAKE3 in one pass beside FastCDC alone, memcpy, BLAKE3 and SHA-256 alone, and
    /// the whole ingest into a real store (with fsync), on one core.
    Ingest {
        /// Buffer size in MiB.
        #[arg(long, default_value_t = 256)]
        size_mib: usize,
        /// Runs per measurement (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Chunking parameters to compare, as MIN:AVG:MAX in KiB; repeatable. Default: the
        /// shipped default.
        #[arg(long = "chunking", value_name = "MIN:AVG:MAX")]
        chunkings: Vec<String>,
        /// Directory for the store-ingest measurement (default: a temporary directory).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// Only the disk's baseline and the whole-ingest rows (for profiling them alone).
        #[arg(long)]
        store_only: bool,
        /// Time opening each fresh store and removing it with its ingest, and removing the
        /// sequential write's file with the write, as the bench of earlier builds did (to
        /// compare with their figures).
        #[arg(long)]
        setup_timed: bool,
    },
    /// GETs a URL repeatedly from N concurrent clients; reports throughput and latency.
    Http {
        /// The URL to fetch.
        #[arg(long)]
        url: String,
        /// Concurrent clients.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Requests per client.
        #[arg(long, default_value_t = 10)]
        requests: usize,
    },
    /// Shard-transfer throughput and small-message latency over loopback: raw quinn beside the
    /// node's libp2p QUIC and TCP stacks.
    Transport(crate::bench_transport::TransportArgs),
    /// The placement loop's cost: a planning round's time, the memory of the demand table and
    /// the members' summaries, and demand gossip bytes per hour, on synthetic state.
    Placement(crate::bench_placement::PlacementArgs),
}

/// Runs a benchmark.
pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Ingest {
            size_mib,
            runs,
            chunkings,
            dir,
            store_only,
            setup_timed,
        } => ingest(
            size_mib,
            runs.max(1),
            &chunkings,
            dir,
            IngestRows {
                store_only,
                setup_timed,
            },
        ),
        BenchCommand::Http {
            url,
            concurrency,
            requests,
        } => {
            tokio::runtime::Runtime::new()?.block_on(http(url, concurrency.max(1), requests.max(1)))
        }
        BenchCommand::Transport(args) => crate::bench_transport::run(args),
        BenchCommand::Placement(args) => crate::bench_placement::run(args),
    }
}

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn median_mbps(bytes: usize, runs: usize, mut f: impl FnMut()) -> f64 {
    let mut rates: Vec<f64> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            f();
            bytes as f64 / started.elapsed().as_secs_f64() / 1e6
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// Seconds of CPU this thread has used.
fn thread_cpu_seconds() -> f64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// Like [`median_mbps`], per second of this thread's CPU time instead of wall time: on a machine
/// shared with other work, the figure that says what the code costs (for single-threaded work).
fn median_cpu_mbps(bytes: usize, runs: usize, mut f: impl FnMut()) -> f64 {
    let mut rates: Vec<f64> = (0..runs)
        .map(|_| {
            let started = thread_cpu_seconds();
            f();
            bytes as f64 / (thread_cpu_seconds() - started).max(1e-9) / 1e6
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn parse_chunking(spec: &str) -> anyhow::Result<ChunkingParams> {
    let parts: Vec<u32> = spec
        .split(':')
        .map(|p| p.parse::<u32>().map(|k| k * 1024))
        .collect::<Result<_, _>>()?;
    let [min, avg, max] = parts[..] else {
        anyhow::bail!("--chunking wants MIN:AVG:MAX in KiB, got {spec:?}");
    };
    Ok(validate_chunking(ChunkingParams { min, avg, max })?)
}

/// Which rows `bench ingest` measures, and how.
#[derive(Debug, Clone, Copy)]
struct IngestRows {
    /// Only the disk's baseline and the whole ingests into a store.
    store_only: bool,
    /// Whether the whole ingests' time covers opening and removing the store.
    setup_timed: bool,
}

fn ingest(
    size_mib: usize,
    runs: usize,
    chunkings: &[String],
    dir: Option<std::path::PathBuf>,
    rows: IngestRows,
) -> anyhow::Result<()> {
    let data = pseudo_random(size_mib << 20);
    let bytes = data.len();
    let params: Vec<ChunkingParams> = if chunkings.is_empty() {
        vec![DEFAULT_CHUNKING]
    } else {
        chunkings
            .iter()
            .map(|c| parse_chunking(c))
            .collect::<anyhow::Result<_>>()?
    };
    println!("buffer {size_mib} MiB of incompressible bytes, {runs} runs, median MB/s, one thread");
    if !rows.store_only {
        memory_rows(&data, runs);
    }
    let base = match dir {
        Some(dir) => tempfile_in(&dir)?,
        None => tempfile_in(&std::env::temp_dir())?,
    };
    for p in params {
        let label = format!("{}K/{}K/{}K", p.min / 1024, p.avg / 1024, p.max / 1024);
        let shards = FastCDC::new(&data, p.min, p.avg, p.max).count();
        println!(
            "chunking {label}: {shards} shards, mean {} KiB",
            bytes / shards.max(1) / 1024
        );
        let fastcdc_alone = if rows.store_only {
            None
        } else {
            Some(chunking_rows(&data, p, runs))
        };
        let base = base.join(label.replace('/', "-"));
        std::fs::create_dir_all(&base)?;
        store_rows(
            &data,
            p,
            runs.min(3),
            &base,
            fastcdc_alone,
            rows.setup_timed,
        );
    }
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

/// memcpy, BLAKE3 and SHA-256 of the whole buffer.
fn memory_rows(data: &[u8], runs: usize) {
    let bytes = data.len();
    let mut copy = vec![0u8; bytes];
    let memcpy = median_mbps(bytes, runs, || {
        copy.copy_from_slice(data);
        std::hint::black_box(&copy);
    });
    let blake3_alone = median_mbps(bytes, runs, || {
        std::hint::black_box(blake3::hash(data));
    });
    let sha256_alone = median_mbps(bytes, runs, || {
        std::hint::black_box(Sha256::digest(data));
    });
    println!("{:<44} {:>9.0}", "memcpy", memcpy);
    println!(
        "{:<44} {:>9.0}",
        "BLAKE3 alone (whole buffer)", blake3_alone
    );
    println!(
        "{:<44} {:>9.0}",
        "SHA-256 alone (sha2, SHA-NI if present)", sha256_alone
    );
}

/// The chunk-and-hash passes in memory, printed; returns FastCDC alone's MB/s.
fn chunking_rows(data: &[u8], p: ChunkingParams, runs: usize) -> f64 {
    let bytes = data.len();
    // Each of the three passes is measured twice: per second of wall time, and per second
    // of the thread's CPU time (which a shared machine disturbs less).
    let mut fastcdc_pass = || {
        std::hint::black_box(FastCDC::new(data, p.min, p.avg, p.max).count());
    };
    let fastcdc_alone = median_mbps(bytes, runs, &mut fastcdc_pass);
    let fastcdc_cpu = median_cpu_mbps(bytes, runs, &mut fastcdc_pass);
    let mut whole_buffer_pass = || {
        for chunk in FastCDC::new(data, p.min, p.avg, p.max) {
            std::hint::black_box(blake3::hash(
                &data[chunk.offset..chunk.offset + chunk.length],
            ));
        }
    };
    let whole_buffer = median_mbps(bytes, runs, &mut whole_buffer_pass);
    let whole_buffer_cpu = median_cpu_mbps(bytes, runs, &mut whole_buffer_pass);
    let mut one_pass_pass = || {
        let mut chunker = StreamChunker::new(p);
        let mut sink = |_: u64, shard: Bytes, hash: ShardHash| {
            std::hint::black_box((shard.len(), hash));
        };
        for piece in data.chunks(64 * 1024) {
            let Ok(()) = chunker.push(piece, &mut sink);
        }
        let Ok(()) = chunker.finish(&mut sink);
    };
    // The node's ingest: windows of the spool mapped as `Bytes`, shards cut as slices of them,
    // each window starting at the uncut end of the last (here 16 MiB windows of memory).
    let shared = Bytes::copy_from_slice(data);
    let mut windows_pass = || {
        let mut sink = |_: u64, shard: Bytes, hash: ShardHash| {
            std::hint::black_box((shard.len(), hash));
        };
        let (mut cut_to, mut read_to) = (0usize, 0usize);
        while read_to < bytes {
            read_to = (read_to + (16 << 20)).min(bytes);
            let window = shared.slice(cut_to..read_to);
            let Ok(cut) = cut_window(p, &window, cut_to as u64, read_to == bytes, &mut sink);
            cut_to += cut;
        }
    };
    let windows = median_mbps(bytes, runs, &mut windows_pass);
    let windows_cpu = median_cpu_mbps(bytes, runs, &mut windows_pass);
    let one_pass = median_mbps(bytes, runs, &mut one_pass_pass);
    let one_pass_cpu = median_cpu_mbps(bytes, runs, &mut one_pass_pass);
    let with_sha = median_mbps(bytes, runs, || {
        let mut chunker = StreamChunker::new(p);
        let mut sha = Sha256::new();
        let mut sink = |_: u64, shard: Bytes, hash: ShardHash| {
            std::hint::black_box((shard.len(), hash));
        };
        for piece in data.chunks(64 * 1024) {
            sha.update(piece);
            let Ok(()) = chunker.push(piece, &mut sink);
        }
        let Ok(()) = chunker.finish(&mut sink);
        std::hint::black_box(sha.finalize());
    });
    println!("{:<44} {:>9.0}", "  FastCDC alone", fastcdc_alone);
    println!(
        "{:<44} {:>9.0}  ({:.2}x FastCDC alone)",
        "  FastCDC + BLAKE3, whole buffer in memory",
        whole_buffer,
        whole_buffer / fastcdc_alone
    );
    println!(
        "{:<44} {:>9.0}  ({:.2}x FastCDC alone)",
        "  FastCDC + BLAKE3, one pass (StreamChunker)",
        one_pass,
        one_pass / fastcdc_alone
    );
    println!(
        "{:<44} {:>9.0}  ({:.2}x FastCDC alone)",
        "  FastCDC + BLAKE3, windows (the node's ingest)",
        windows,
        windows / fastcdc_alone
    );
    println!(
        "{:<44} {:>9.0}",
        "  FastCDC alone, per CPU second", fastcdc_cpu
    );
    println!(
        "{:<44} {:>9.0}  ({:.2}x FastCDC alone, per CPU second)",
        "  whole buffer, per CPU second",
        whole_buffer_cpu,
        whole_buffer_cpu / fastcdc_cpu
    );
    println!(
        "{:<44} {:>9.0}  ({:.2}x FastCDC alone, per CPU second)",
        "  windows, per CPU second",
        windows_cpu,
        windows_cpu / fastcdc_cpu
    );
    println!(
        "{:<44} {:>9.0}  ({:.2}x FastCDC alone, per CPU second)",
        "  one pass, per CPU second",
        one_pass_cpu,
        one_pass_cpu / fastcdc_cpu
    );
    println!(
        "{:<44} {:>9.0}  ({:.2}x FastCDC alone)",
        "  + SHA-256 of the blob (ingest CPU path)",
        with_sha,
        with_sha / fastcdc_alone
    );
    fastcdc_alone
}

/// The disk's baseline and the whole ingests into a store, printed (with their ratio to FastCDC
/// alone when it was measured).
fn store_rows(
    data: &[u8],
    p: ChunkingParams,
    store_runs: usize,
    base: &std::path::Path,
    fastcdc_alone: Option<f64>,
    setup_timed: bool,
) {
    let bytes = data.len();
    // The disk's baseline: the same bytes written to one file in 1 MiB writes, then fsync
    // (what `dd bs=1M conv=fsync` does), on the same file system as the store. Removing the
    // file is timed only with `setup_timed`, as in the bench of earlier builds.
    let mut sequential_rates: Vec<f64> = (0..store_runs)
        .map(|_| {
            let path = base.join("sequential");
            let started = Instant::now();
            let mut file = std::fs::File::create(&path).expect("create");
            for piece in data.chunks(1 << 20) {
                std::io::Write::write_all(&mut file, piece).expect("write");
            }
            file.sync_all().expect("fsync");
            drop(file);
            let mut elapsed = started.elapsed();
            let _ = std::fs::remove_file(&path);
            if setup_timed {
                elapsed = started.elapsed();
            }
            bytes as f64 / elapsed.as_secs_f64() / 1e6
        })
        .collect();
    sequential_rates.sort_by(f64::total_cmp);
    let sequential_write = sequential_rates[sequential_rates.len() / 2];
    // The whole ingest models copies made ahead of demand (placement, preheat, rebuilds):
    // durable as written. A client's ingest, durable only from its last byte's release on,
    // beside it.
    let rows = [
        (
            "  whole ingest into a store, durable as written",
            store_ingest(
                base,
                p,
                data,
                store_runs,
                false,
                Durability::AsWritten,
                setup_timed,
            ),
        ),
        (
            "  same, SHA-256 on a thread of its own (node)",
            store_ingest(
                base,
                p,
                data,
                store_runs,
                true,
                Durability::AsWritten,
                setup_timed,
            ),
        ),
        (
            "  same, durable after release (a client's)",
            store_ingest(
                base,
                p,
                data,
                store_runs,
                true,
                Durability::AfterRelease,
                setup_timed,
            ),
        ),
    ];
    for (label, StoreRate { mbps, cpu_seconds }) in rows {
        match fastcdc_alone {
            Some(fastcdc_alone) => println!(
                "{label:<44} {mbps:>9.0}  ({:.2}x FastCDC alone, {:.2}x the sequential write; \
                 {cpu_seconds:.2} CPU s)",
                mbps / fastcdc_alone,
                mbps / sequential_write
            ),
            None => println!(
                "{label:<44} {mbps:>9.0}  ({:.2}x the sequential write; {cpu_seconds:.2} CPU s)",
                mbps / sequential_write
            ),
        }
    }
    println!(
        "{:<44} {:>9.0}",
        "  sequential write of one file, fsync at end", sequential_write
    );
}

/// Whole ingests of one blob: the median MB/s, and the median seconds of CPU the process spent
/// on one (every thread: the ingest's, the writer's, the sync threads', the SHA-256's).
#[derive(Debug, Clone, Copy)]
struct StoreRate {
    mbps: f64,
    cpu_seconds: f64,
}

/// The rest after removing a store before the next run: ext4 without a journal (this machine's
/// root file system) skips inodes freed in the last 5 to 10 seconds one by one when it allocates
/// a new one, so a run right after the removal of the last run's store would pay for that
/// removal in every file it creates. The rest keeps the runs from measuring each other.
const RECENTLY_FREED: Duration = Duration::from_secs(11);

/// Seconds of CPU the whole process has used.
fn process_cpu_seconds() -> f64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// Whole ingests of `data` into fresh stores under `base`, committed (fsync) each time, their
/// shard files made durable as `durability` says. With `hash_apart`, the blob's SHA-256 runs on
/// a thread of its own beside the ingest and the ingest cuts windows of the blob without a copy,
/// as the node runs it (the node's windows are mapped from its spool); otherwise `Ingest::write` computes
/// it inline. The time runs from the ingest's start to its commit: opening the fresh store
/// (creating its 256 shard directories and its index) comes before, and removing it after,
/// followed by [`RECENTLY_FREED`] of rest. With `setup_timed`, the time also covers opening the
/// store and removing it, without the rest, as the bench of earlier builds measured.
fn store_ingest(
    base: &std::path::Path,
    params: ChunkingParams,
    data: &[u8],
    runs: usize,
    hash_apart: bool,
    durability: Durability,
    setup_timed: bool,
) -> StoreRate {
    let digest = BlobDigest::from_bytes(Sha256::digest(data).into());
    let shared = Bytes::copy_from_slice(data);
    let label = format!(
        "{}-{durability:?}",
        if hash_apart { "apart" } else { "inline" }
    );
    let mut samples: Vec<(f64, f64)> = (0..runs)
        .map(|run| {
            let data_dir = base.join(format!("store-{label}-{run}"));
            let config = StoreConfig {
                data_dir: data_dir.clone(),
                chunking: params,
                max_disk_bytes: u64::MAX,
            };
            let mut started = (Instant::now(), process_cpu_seconds());
            let store = ShardStore::open(&config).expect("open store");
            if !setup_timed {
                started = (Instant::now(), process_cpu_seconds());
            }
            let mut ingest = store.begin_ingest_with(digest, durability);
            if hash_apart {
                let actual = std::thread::scope(|scope| {
                    let sha256 =
                        scope.spawn(|| BlobDigest::from_bytes(Sha256::digest(data).into()));
                    // As the node's ingest cuts its spool: 16 MiB windows, no copy.
                    let (mut cut_to, mut read_to) = (0usize, 0usize);
                    while read_to < shared.len() {
                        read_to = (read_to + (16 << 20)).min(shared.len());
                        let window = shared.slice(cut_to..read_to);
                        let at_end = read_to == shared.len();
                        let (cut, _) = ingest.write_window(&window, at_end).expect("ingest");
                        cut_to += cut;
                    }
                    sha256.join().expect("the SHA-256 thread")
                });
                ingest.verify_with(actual).expect("verify");
                ingest.commit().expect("commit");
            } else {
                for piece in data.chunks(64 * 1024) {
                    ingest.write(piece).expect("ingest");
                }
                ingest.finish().expect("commit");
            }
            let mut ended = (started.0.elapsed().as_secs_f64(), process_cpu_seconds());
            drop(store);
            let _ = std::fs::remove_dir_all(&data_dir);
            if setup_timed {
                ended = (started.0.elapsed().as_secs_f64(), process_cpu_seconds());
            } else {
                std::thread::sleep(RECENTLY_FREED);
            }
            (data.len() as f64 / ended.0 / 1e6, ended.1 - started.1)
        })
        .collect();
    let mid = samples.len() / 2;
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mbps = samples[mid].0;
    samples.sort_by(|a, b| a.1.total_cmp(&b.1));
    StoreRate {
        mbps,
        cpu_seconds: samples[mid].1,
    }
}

fn tempfile_in(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join(format!("shoal-bench-{}", std::process::id()));
    std::fs::create_dir_all(&path)?;
    Ok(path)
}

async fn http(url: String, concurrency: usize, requests: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let url = url.clone();
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().build()?;
            let mut latencies = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
            let mut bytes = 0u64;
            for _ in 0..requests {
                let begun = Instant::now();
                let mut response = client.get(&url).send().await?.error_for_status()?;
                while let Some(chunk) = response.chunk().await? {
                    bytes += chunk.len() as u64;
                }
                latencies.saturating_record(begun.elapsed().as_micros() as u64);
            }
            anyhow::Ok((bytes, latencies))
        }));
    }
    let mut total = 0u64;
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    for worker in workers {
        let (bytes, histogram) = worker.await??;
        total += bytes;
        latencies.add(&histogram)?;
    }
    let elapsed = started.elapsed();
    let quantile = |q: f64| Duration::from_micros(latencies.value_at_quantile(q));
    println!(
        "{url}: {concurrency} clients x {requests} requests, {total} bytes in {:.2}s = {:.0} MB/s; latency p50 {:?} p99 {:?} max {:?}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64() / 1e6,
        quantile(0.5),
        quantile(0.99),
        Duration::from_micros(latencies.max()),
    );
    Ok(())
}
