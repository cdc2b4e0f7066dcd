//! `shoal-sim`: runs Shoal's policy engine over a simulated network.
//!
//! * `shoal-sim run --scenario FILE --out DIR`: compare the scenario's
//!   policies; writes report.md, results.json, CSV and SVG charts.
//! * `shoal-sim sweep --scenario FILE --out DIR`: capacity planning over the
//!   scenario's `[sweep]` grid.
//! * `shoal-sim suite --suite FILE --out DIR`: tune the pre-cache parameters
//!   on the suite's tuning scenario, then run every scenario of the suite
//!   with every policy; writes one table (markdown, JSON, CSV) and a chart.
//! * `shoal-sim bench-scale`: 1,000 nodes in 10 regions, 1 million pulls;
//!   prints the wall time.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shoal_simulations::engine::{self, PolicyKind, RunOptions};
use shoal_simulations::scenario::{
    PolicySettings, RegionConfig, Scenario, SweepConfig, Targets, TopologyConfig, WorkloadConfig,
};
use shoal_simulations::suite::{run_suite, SuiteConfig};
use shoal_simulations::topology::Topology;
use shoal_simulations::{report, workload};

#[derive(Parser)]
#[command(
    name = "shoal-sim",
    about = "Discrete-event simulator for Shoal's cache policies"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compare the scenario's policies.
    Run {
        /// Scenario TOML file.
        #[arg(long)]
        scenario: PathBuf,
        /// Output folder.
        #[arg(long, default_value = "sim-out")]
        out: PathBuf,
        /// Override the catalog path of the scenario.
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// Override the seed.
        #[arg(long)]
        seed: Option<u64>,
        /// No progress on stderr.
        #[arg(long)]
        quiet: bool,
    },
    /// Find the smallest configuration that meets the scenario's targets.
    Sweep {
        /// Scenario TOML file.
        #[arg(long)]
        scenario: PathBuf,
        /// Output folder.
        #[arg(long, default_value = "sim-sweep")]
        out: PathBuf,
        /// Override the catalog path of the scenario.
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// No progress on stderr.
        #[arg(long)]
        quiet: bool,
    },
    /// Tune on the suite's tuning scenario, then run every scenario of the
    /// suite with every policy: one table and one chart.
    Suite {
        /// Suite TOML file.
        #[arg(long, default_value = "simulations/scenarios/suite.toml")]
        suite: PathBuf,
        /// Output folder.
        #[arg(long, default_value = "simulations/results/suite")]
        out: PathBuf,
        /// No progress on stderr.
        #[arg(long)]
        quiet: bool,
    },
    /// Write a scenario's generated workload as a trace file (JSON lines),
    /// for a trace-driven scenario or another tool.
    ExportTrace {
        /// Scenario TOML file.
        #[arg(long)]
        scenario: PathBuf,
        /// Trace file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Dry-run the retention rules over a catalog at a point in its history:
    /// which images and layers would go and how many bytes. Changes nothing.
    RetentionDryRun {
        /// Image catalog.
        #[arg(long, default_value = "../shared/data/image-catalog.jsonl")]
        catalog: PathBuf,
        /// Catalog time to evaluate at, `YYYY-MM-DDTHH:MM:SSZ`.
        #[arg(long, default_value = "2018-01-26T00:00:00Z")]
        at: String,
        /// Keep every image younger than this many days.
        #[arg(long, default_value_t = 90)]
        keep_days: u64,
        /// Grace period in days for images that fall out of retention.
        #[arg(long, default_value_t = 1)]
        grace_days: u64,
    },
    /// Time 1,000 nodes in 10 regions and 1 million pulls.
    BenchScale {
        /// Image catalog to draw images from (synthetic images if absent).
        #[arg(long, default_value = "../shared/data/image-catalog.jsonl")]
        catalog: PathBuf,
        /// Policy to time, or `all`.
        #[arg(long, default_value = "predictive")]
        policy: String,
        /// Pulls to simulate.
        #[arg(long, default_value_t = 1_000_000)]
        pulls: u64,
        /// Disk per node, GB (smaller disks mean more evictions).
        #[arg(long, default_value_t = 50.0)]
        disk_gb: f64,
    },
}

fn load(
    path: &std::path::Path,
    catalog: Option<PathBuf>,
    seed: Option<u64>,
) -> anyhow::Result<Scenario> {
    let mut s = Scenario::load(path)?;
    if let Some(c) = catalog {
        s.workload.catalog = Some(c);
        s.workload.kind = "catalog".into();
    }
    if let Some(seed) = seed {
        s.seed = seed;
    }
    s.validate()?;
    Ok(s)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run {
            scenario,
            out,
            catalog,
            seed,
            quiet,
        } => {
            let s = load(&scenario, catalog, seed)?;
            let started = Instant::now();
            let report = shoal_simulations::compare(
                &s,
                RunOptions {
                    progress: !quiet,
                    ..RunOptions::default()
                },
            )
            .context("building the workload")?;
            report::write_report(&out, &report)?;
            print!("{}", report::markdown_table(&report));
            eprintln!(
                "wrote {} in {:.1} s",
                out.display(),
                started.elapsed().as_secs_f64()
            );
        }
        Command::Sweep {
            scenario,
            out,
            catalog,
            quiet,
        } => {
            let s = load(&scenario, catalog, None)?;
            let started = Instant::now();
            let sweep = shoal_simulations::sweep(
                &s,
                RunOptions {
                    progress: !quiet,
                    ..RunOptions::default()
                },
            )
            .context("building the workload")?;
            report::write_sweep(&out, &sweep)?;
            print!("{}", report::sweep_table(&sweep));
            eprintln!(
                "wrote {} in {:.1} s",
                out.display(),
                started.elapsed().as_secs_f64()
            );
        }
        Command::Suite { suite, out, quiet } => {
            let config = SuiteConfig::load(&suite)?;
            let started = Instant::now();
            let report = run_suite(
                &config,
                RunOptions {
                    progress: !quiet,
                    ..RunOptions::default()
                },
            )?;
            shoal_simulations::suite::write(&out, &report)?;
            print!("{}", shoal_simulations::suite::markdown(&report));
            eprintln!(
                "wrote {} in {:.1} s",
                out.display(),
                started.elapsed().as_secs_f64()
            );
        }
        Command::ExportTrace { scenario, out } => {
            let s = load(&scenario, None, None)?;
            let topology = Topology::build(&s.topology, None, None);
            let wl = workload::build(&s.workload, &topology, s.duration_hours * 3600.0, s.seed)
                .context("building the workload")?;
            std::fs::write(&out, workload::write_trace(&wl))
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!("wrote {} pulls to {}", wl.pulls(), out.display());
        }
        Command::BenchScale {
            catalog,
            policy,
            pulls,
            disk_gb,
        } => bench_scale(catalog, &policy, pulls, disk_gb)?,
        Command::RetentionDryRun {
            catalog,
            at,
            keep_days,
            grace_days,
        } => retention_dry_run(&catalog, &at, keep_days, grace_days)?,
    }
    Ok(())
}

fn bench_scale(catalog: PathBuf, policy: &str, pulls: u64, disk_gb: f64) -> anyhow::Result<()> {
    let regions: Vec<RegionConfig> = (0..10)
        .map(|i| {
            let angle = f64::from(i) * std::f64::consts::TAU / 10.0;
            RegionConfig {
                name: format!("region-{i}"),
                nodes: 100,
                x_km: 6000.0 * angle.cos(),
                y_km: 6000.0 * angle.sin(),
                origin_rtt_ms: 40.0 + 15.0 * f64::from(i),
                utc_offset_hours: f64::from(i) * 2.4 - 12.0,
            }
        })
        .collect();
    let hours = 24.0;
    let use_catalog = catalog.exists();
    let scenario = Scenario {
        name: "bench-scale".into(),
        seed: 7,
        duration_hours: hours,
        policies: vec!["predictive".to_string()],
        topology: TopologyConfig {
            regions,
            disk_gb_per_node: disk_gb,
            lan_gbps: 40.0,
            wan_gbps: 10.0,
            origin_gbps: 10.0,
            lan_rtt_ms: 1.0,
            base_rtt_ms: 5.0,
            rtt_ms_per_100km: 1.0,
        },
        workload: WorkloadConfig {
            kind: if use_catalog { "catalog" } else { "synthetic" }.into(),
            catalog: use_catalog.then_some(catalog),
            catalog_start: Some("2017-06-01T00:00:00Z".into()),
            catalog_days: 30.0,
            trace: None,
            pulls_per_hour: pulls as f64 / hours,
            zipf_exponent: 1.1,
            regional_skew: 1.0,
            daily_amplitude: 0.5,
            rollouts_per_day: 24.0,
            rollout_fraction: 0.3,
            rollout_minutes: 10.0,
            rollout_top_tags: 50,
            disclosures_per_day: 4.0,
            patch_delay_hours: 4.0,
            synthetic_repositories: 500,
            synthetic_mean_layer_mb: 12.0,
            synthetic_fixed_layer_bytes: None,
            pattern: None,
            pattern_images: 2000,
            pattern_popular_images: 100,
            pattern_layers_per_image: 5,
            catalog_part: "all".into(),
        },
        policy: PolicySettings::default(),
        targets: Targets::default(),
        sweep: SweepConfig::default(),
    };
    scenario.validate()?;
    let started = Instant::now();
    let topology = Topology::build(&scenario.topology, None, None);
    let mut scenario = scenario;
    let mut wl = workload::build(&scenario.workload, &topology, hours * 3600.0, scenario.seed)?;
    // Pulls of tags that do not exist yet are dropped, so top up the rate once.
    if (wl.pulls() as u64) < pulls {
        let missing = pulls as f64 / wl.pulls().max(1) as f64;
        scenario.workload.pulls_per_hour *= missing * 1.01;
        wl = workload::build(&scenario.workload, &topology, hours * 3600.0, scenario.seed)?;
    }
    let generated = started.elapsed().as_secs_f64();
    println!(
        "workload: {} pulls, {} layers, {} versions ({}), generated in {:.2} s",
        wl.pulls(),
        wl.layer_sizes.len(),
        wl.versions.len(),
        scenario.workload.kind,
        generated
    );
    let kinds: Vec<PolicyKind> = if policy == "all" {
        ["predictive", "lru", "lfu", "min"]
            .iter()
            .filter_map(|p| PolicyKind::parse(p))
            .collect()
    } else {
        vec![PolicyKind::parse(policy).context("unknown policy")?]
    };
    for kind in kinds {
        let t = Instant::now();
        let r = engine::run(
            &topology,
            &wl,
            &scenario.policy,
            kind,
            hours * 3600.0,
            RunOptions {
                progress: true,
                ..RunOptions::default()
            },
        );
        println!(
            "{}: {} nodes, {} pulls simulated in {:.2} s wall ({} plans, {} evictions); pulls without origin {:.1}%, p99 {:.2} s",
            kind.name(),
            r.nodes,
            r.pulls,
            t.elapsed().as_secs_f64(),
            r.plans,
            r.evictions,
            100.0 * r.offload(),
            r.pull_secs[2]
        );
    }
    Ok(())
}

fn retention_dry_run(
    catalog: &std::path::Path,
    at: &str,
    keep_days: u64,
    grace_days: u64,
) -> anyhow::Result<()> {
    use shoal_policy::retention::{
        evaluate, ImageContent, ImageRecord, RetentionLedger, RetentionPins, RetentionRules,
    };
    use shoal_policy::{BlobDigest, Timestamp};
    let now = workload::parse_utc(at).context("--at must be YYYY-MM-DDTHH:MM:SSZ")?;
    let cat = workload::load_catalog(catalog)?;
    // One image record per tag version, pushed at its catalog time; the
    // repository is the tag (so "latest of each repository" keeps every tag's
    // current version). Versions pushed after `at` do not exist yet.
    let digest = |l: shoal_policy::LayerId| {
        BlobDigest::parse(&format!("sha256:{:064x}", l.0)).expect("valid")
    };
    let mut images = Vec::new();
    for (tag, history) in cat.history.iter().enumerate() {
        for &(t, v) in history {
            if t > now {
                continue;
            }
            let layers = &cat.versions[v as usize].layers;
            images.push(ImageRecord {
                repository: cat.tags[tag].clone(),
                digest: BlobDigest::parse(&format!("sha256:{:064x}", u64::MAX - u64::from(v)))
                    .expect("valid"),
                pushed_at: Timestamp(t.max(0) as u64),
                content: ImageContent::Manifest {
                    layers: layers
                        .iter()
                        .map(|&l| (digest(l), cat.layer_sizes[l.0 as usize]))
                        .collect(),
                },
            });
        }
    }
    let rules = RetentionRules {
        keep_younger_than_secs: keep_days * 86_400,
        keep_latest_per_repository: true,
        grace_period_secs: grace_days * 86_400,
    };
    // A first pass at `at` records when images fell out of retention (in this
    // in-memory ledger only); the dry run is then evaluated once their grace
    // period has passed.
    let mut ledger = RetentionLedger::new();
    let at_ts = Timestamp(now.max(0) as u64);
    ledger.run(&rules, &images, &RetentionPins::default(), at_ts, false);
    let later = at_ts.plus(rules.grace_period_secs);
    let report = evaluate(&rules, &images, &RetentionPins::default(), &ledger, later);
    let total: u64 = {
        let mut all: Vec<_> = images
            .iter()
            .flat_map(|i| match &i.content {
                ImageContent::Manifest { layers } => layers.clone(),
                ImageContent::Index { .. } => Vec::new(),
            })
            .collect();
        all.sort();
        all.dedup();
        all.iter().map(|(_, s)| s).sum()
    };
    println!(
        "dry run at {at} + {grace_days} d grace, keep {keep_days} d and the latest of each tag: {} images, {} kept, {} would expire; {} layers would be deleted, {:.1} GB of {:.1} GB stored. Nothing was changed.",
        images.len(),
        report.kept.len(),
        report.expired_images.len(),
        report.deleted_layers.len(),
        report.bytes_freed as f64 / 1e9,
        total as f64 / 1e9
    );
    Ok(())
}
