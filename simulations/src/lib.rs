//! Shoal's discrete-event network simulator, for comparing cache policies
//! and sizing a network before buying it.
//!
//! It runs the very same policy engine as `shoald` ([`shoal_policy`]) over a
//! modelled network: [`topology`] (regions, nodes, disks, links), [`network`]
//! (flow-level bandwidth sharing), [`workload`] (trace replay, or a generator
//! over a real image catalog), [`engine`] (the event loop that plays nodes)
//! and [`report`] (table, JSON, CSV, SVG). Runs are deterministic: the same
//! scenario and seed give the same bytes.

pub mod chart;
pub mod engine;
pub mod network;
pub mod pattern;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod suite;
pub mod svg;
pub mod topology;
pub mod workload;

use engine::{PolicyKind, RunOptions};
use report::{Report, RunInfo, SweepPoint, SweepReport};
use scenario::Scenario;
use topology::Topology;
use workload::Workload;

/// Runs every policy of a scenario and gathers the comparison.
pub fn compare(
    scenario: &Scenario,
    options: RunOptions,
) -> Result<Report, workload::WorkloadError> {
    let topology = Topology::build(&scenario.topology, None, None);
    let duration = scenario.duration_hours * 3600.0;
    let workload = workload::build(&scenario.workload, &topology, duration, scenario.seed)?;
    Ok(compare_on(scenario, &topology, &workload, options))
}

/// Runs every policy of a scenario over a prepared topology and workload.
pub fn compare_on(
    scenario: &Scenario,
    topology: &Topology,
    workload: &Workload,
    options: RunOptions,
) -> Report {
    let duration = scenario.duration_hours * 3600.0;
    let results = scenario
        .policies
        .iter()
        .map(|p| {
            let kind = PolicyKind::parse(p).expect("validated policy name");
            if options.progress {
                eprintln!("running {p} ...");
            }
            engine::run(
                topology,
                workload,
                &scenario.policy,
                kind,
                duration,
                options,
            )
        })
        .collect();
    Report {
        info: info(scenario, topology, workload),
        results,
    }
}

fn info(scenario: &Scenario, topology: &Topology, workload: &Workload) -> RunInfo {
    RunInfo {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        duration_hours: scenario.duration_hours,
        regions: topology.regions(),
        nodes: topology.nodes(),
        disk_gb_per_node: topology.node_disk.first().copied().unwrap_or(0) as f64 / 1e9,
        pulls: workload.pulls(),
        layers: workload.layer_sizes.len(),
        versions: workload.versions.len(),
        tags: workload.tags.len(),
        layer_bytes: workload.layer_sizes.iter().sum(),
    }
}

/// Runs the scenario's sweep: every disk size × nodes-per-region pair with
/// the sweep policy, and picks the smallest configuration meeting the targets.
///
/// The workload is generated once per nodes-per-region value (node numbers
/// depend on it) and reused across disk sizes.
pub fn sweep(
    scenario: &Scenario,
    options: RunOptions,
) -> Result<SweepReport, workload::WorkloadError> {
    let duration = scenario.duration_hours * 3600.0;
    let kind = PolicyKind::parse(&scenario.sweep.policy).expect("validated policy name");
    let mut points = Vec::new();
    let mut per_region = scenario.sweep.nodes_per_region.clone();
    per_region.sort_unstable();
    per_region.dedup();
    let mut disks = scenario.sweep.disk_gb.clone();
    disks.sort_by(f64::total_cmp);
    disks.dedup();
    for &n in &per_region {
        let base = Topology::build(&scenario.topology, Some(n), None);
        let workload = workload::build(&scenario.workload, &base, duration, scenario.seed)?;
        for &d in &disks {
            let topology = Topology::build(&scenario.topology, Some(n), Some(d));
            if options.progress {
                eprintln!("sweep: {n} nodes per region, {d} GB per node");
            }
            let r = engine::run(
                &topology,
                &workload,
                &scenario.policy,
                kind,
                duration,
                RunOptions::default(),
            );
            let p99 = r.pull_secs[2];
            let offload = r.offload();
            points.push(SweepPoint {
                disk_gb: d,
                nodes_per_region: n,
                nodes: topology.nodes(),
                total_disk_tb: topology.nodes() as f64 * d / 1000.0,
                offload,
                p99_pull_secs: p99,
                origin_egress_gb: r.origin_egress_bytes as f64 / 1e9,
                meets_targets: offload >= scenario.targets.min_offload
                    && p99 <= scenario.targets.max_p99_pull_secs,
            });
        }
    }
    let smallest = report::smallest(&points);
    Ok(SweepReport {
        scenario: scenario.name.clone(),
        policy: scenario.sweep.policy.clone(),
        targets: scenario.targets.clone(),
        points,
        smallest,
    })
}
