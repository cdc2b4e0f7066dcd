//! `shoal bench placement`: what the placement loop costs a node, on synthetic state of the
//! size asked (layers in the demand table, members in the network).
//!
//! It drives the same pieces the daemon's planner runs every `plan_interval` (the demand table's
//! forecasts, the regional demand merged from members' summaries, `assign::plan_for_node` over
//! the members, `DemandSummary::top` for the node's own summary) and reports, on one core:
//! the median wall time of a planning round, the resident memory the demand table and the
//! members' summaries take (from `/proc/self/status`, so allocator slack included), and the
//! gossip bytes a node sends and receives per hour for demand, from the encoded size of real
//! summaries.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Args;
use shoal_node::placement::assign::{self, DemandedLayer, Member};
use shoal_node::placement::demand::DemandBook;
use shoal_node::placement::{PlacementConfig, HORIZON_BUCKETS, IN_DEMAND};
use shoal_policy::plan::PlanConfig;
use shoal_policy::usage::UsageConfig;
use shoal_proto::gossip::{DemandSummary, GossipMessage as _};
use shoal_proto::BlobDigest;

/// `shoal bench placement` options.
#[derive(Debug, Args)]
pub struct PlacementArgs {
    /// Layers in the demand table.
    #[arg(long, default_value_t = 10_000)]
    layers: usize,
    /// Members of the network, this node included.
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// Regions the members are spread over.
    #[arg(long, default_value_t = 4)]
    regions: usize,
    /// Planning rounds timed (the median is reported).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
}

/// Resident set size and its peak, in bytes, from `/proc/self/status`.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time this thread has run, so a round's cost is not inflated by other processes sharing
/// the cores.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A deterministic digest for layer `i`.
fn digest(i: usize) -> BlobDigest {
    let hash = blake3::hash(&(i as u64).to_le_bytes());
    BlobDigest::from_bytes(*hash.as_bytes())
}

/// A small deterministic generator (xorshift), so every run sees the same state.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Runs the benchmark and prints its figures.
pub fn run(args: PlacementArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.layers > 0 && args.members > 0 && args.regions > 0);
    let config = PlacementConfig::default();
    let usage = UsageConfig {
        bucket_secs: config.bucket_secs,
        history_buckets: config.history_buckets,
        ..UsageConfig::default()
    };
    let (rss_before, _) = memory();

    // Two days of pulls: layer i is pulled with a Zipf-like weight 1/(i+1), so a few layers are
    // hot and most are pulled a few times; every layer is pulled at least once.
    let now: u64 = 1_700_000_000;
    let start = now - config.history_buckets as u64 * config.bucket_secs;
    let mut book = DemandBook::new(usage, config.max_layers);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut pulls = 0u64;
    for i in 0..args.layers {
        let size = 1 + rng.next() % (64 << 20);
        let id = book.intern(start, digest(i));
        book.set_size(id, size);
        let count = 1 + (2_000 / (i + 1)) as u64;
        for _ in 0..count {
            let at = start + rng.next() % (now - start);
            book.record_pull(at, digest(i));
            pulls += 1;
        }
    }
    let (rss_book, _) = memory();

    // Members: this node first, spread over the regions; each other member published a summary
    // of its top layers (the most any summary carries).
    let region = |m: usize| format!("region-{}", m % args.regions);
    let members: Vec<Member> = (0..args.members)
        .map(|m| Member {
            key: blake3::hash(format!("member {m}").as_bytes())
                .as_bytes()
                .to_vec(),
            region: region(m),
            rtt_ms: Some(if m % args.regions == 0 { 1.0 } else { 40.0 }),
        })
        .collect();
    let summaries: Vec<DemandSummary> = (1..args.members)
        .map(|m| {
            let offset = (rng.next() as usize) % args.layers;
            DemandSummary::top(
                &region(m),
                (0..args.layers.min(1_000))
                    .map(|k| (digest((offset + k) % args.layers), 1.0 + (k % 7) as f64)),
            )
        })
        .collect();
    let mut remote: BTreeMap<String, BTreeMap<BlobDigest, f64>> = BTreeMap::new();
    for summary in &summaries {
        let blobs = remote.entry(summary.region.clone()).or_default();
        for entry in &summary.entries {
            *blobs.entry(BlobDigest::from_bytes(entry.blob)).or_default() +=
                f64::from(entry.milli_pulls) / 1000.0;
        }
    }
    let (rss_state, _) = memory();
    let own_region = region(0);

    let mut times = Vec::with_capacity(args.rounds);
    let mut cpu_times = Vec::with_capacity(args.rounds);
    let mut required = 0;
    let mut own_summary_bytes = 0;
    for _ in 0..args.rounds.max(1) {
        let started = Instant::now();
        let cpu_started = thread_cpu();
        let layers: Vec<DemandedLayer> = book
            .ids()
            .filter_map(|id| {
                let forecast = book.forecast(now, id, HORIZON_BUCKETS)?.total();
                let digest = book.digest(id)?;
                let elsewhere = remote.values().any(|r| r.contains_key(&digest));
                if forecast <= 0.0 && !elsewhere {
                    return None;
                }
                let mut demand = BTreeMap::from([(own_region.clone(), forecast)]);
                for (region, blobs) in &remote {
                    if let Some(pulls) = blobs.get(&digest) {
                        *demand.entry(region.clone()).or_default() += pulls;
                    }
                }
                let holder = (rng.next() as usize) % args.members;
                Some(DemandedLayer {
                    layer: id,
                    key: *digest.as_bytes(),
                    size: book.size(id),
                    demand,
                    threat: 0.0,
                    holders: vec![holder],
                })
            })
            .collect();
        let plan_config = PlanConfig {
            min_regional_demand: IN_DEMAND,
            ..PlanConfig::default()
        };
        let plan = assign::plan_for_node(&members, &layers, 500 << 30, &plan_config);
        let own = layers
            .iter()
            .map(|l| (BlobDigest::from_bytes(l.key), l.demand[&own_region]));
        own_summary_bytes = DemandSummary::top(&own_region, own).to_payload().len();
        required = plan.required_here.len();
        times.push(started.elapsed());
        cpu_times.push(thread_cpu().saturating_sub(cpu_started));
    }
    times.sort();
    cpu_times.sort();
    let median = times[times.len() / 2];
    let median_cpu = cpu_times[cpu_times.len() / 2];
    let (_, peak) = memory();

    let summary_bytes: Vec<usize> = summaries.iter().map(|s| s.to_payload().len()).collect();
    let mean_summary =
        summary_bytes.iter().sum::<usize>() as f64 / summary_bytes.len().max(1) as f64;
    let rounds_per_hour = 3600.0 / config.plan_interval.as_secs_f64();
    let received = mean_summary * (args.members - 1) as f64 * rounds_per_hour;
    let sent = own_summary_bytes as f64 * rounds_per_hour;
    let plan_share = median_cpu.as_secs_f64() / config.plan_interval.as_secs_f64();

    println!(
        "placement loop: {} layers ({pulls} pulls over {} h), {} members in {} regions",
        book.len(),
        config.history_buckets,
        args.members,
        args.regions
    );
    println!(
        "  planning round     median {:>8.1} ms CPU ({:.1} ms wall) over {} rounds ({:.3}% of one core at plan_interval {} s); {required} layers required here",
        ms(median_cpu),
        ms(median),
        times.len(),
        plan_share * 100.0,
        config.plan_interval.as_secs()
    );
    println!(
        "  memory             demand table {:>6.1} MiB, members' summaries {:>6.1} MiB, peak RSS {:>6.1} MiB",
        mib(rss_book.saturating_sub(rss_before)),
        mib(rss_state.saturating_sub(rss_book)),
        mib(peak)
    );
    println!(
        "  demand gossip      own summary {own_summary_bytes} B, members' {mean_summary:.0} B each; per hour: sends {:.1} KiB of own summaries, receives {:.1} MiB (payloads, one copy each; gossipsub's envelope, signature and duplicate deliveries come on top)",
        sent / 1024.0,
        received / (1024.0 * 1024.0)
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
