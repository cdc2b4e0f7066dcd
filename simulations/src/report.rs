//! Report: the comparison table, machine-readable JSON and CSV, and SVG
//! charts for a run of several policies and for a capacity sweep.
//!
//! Nothing here depends on wall-clock time, so the same run writes the same
//! bytes.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::engine::{RunResult, Source};
use crate::scenario::Targets;
use crate::svg::{bar_chart, line_chart};

/// Facts about the run that apply to every policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunInfo {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Simulated hours.
    pub duration_hours: f64,
    /// Regions.
    pub regions: usize,
    /// Nodes.
    pub nodes: usize,
    /// Disk per node, GB.
    pub disk_gb_per_node: f64,
    /// Pull events in the workload.
    pub pulls: usize,
    /// Distinct layers.
    pub layers: usize,
    /// Distinct image versions.
    pub versions: usize,
    /// Tags.
    pub tags: usize,
    /// Bytes of all distinct layers.
    pub layer_bytes: u64,
}

/// A whole comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Shared facts.
    pub info: RunInfo,
    /// One result per policy, in the scenario's order.
    pub results: Vec<RunResult>,
}

fn gb(bytes: u64) -> f64 {
    bytes as f64 / 1e9
}

fn pct(f: f64) -> String {
    format!("{:.1}%", 100.0 * f)
}

/// The comparison as a Markdown table.
pub fn markdown_table(report: &Report) -> String {
    let mut s = String::new();
    let i = &report.info;
    let _ = writeln!(
        s,
        "Scenario `{}` (seed {}): {} regions, {} nodes with {} GB disk each, {:.0} simulated hours, {} pulls of {} versions of {} tags ({} layers, {:.1} GB).\n",
        i.scenario, i.seed, i.regions, i.nodes, i.disk_gb_per_node, i.duration_hours, i.pulls, i.versions, i.tags, i.layers, gb(i.layer_bytes)
    );
    s.push_str("| policy | local | same region | other region | origin | pulls without origin | origin egress GB | replication GB | p50 pull s | p99 pull s | evictions |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in &report.results {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {} |",
            r.policy,
            pct(r.fraction(Source::Local)),
            pct(r.fraction(Source::SameRegion)),
            pct(r.fraction(Source::OtherRegion)),
            pct(r.fraction(Source::Origin)),
            pct(r.offload()),
            gb(r.origin_egress_bytes),
            gb(r.replication_bytes),
            r.pull_secs[0],
            r.pull_secs[2],
            r.evictions
        );
    }
    s.push_str("\nShares are of layer requests. Origin egress counts demand and pre-cache transfers; replication is pre-cache traffic only.\n");
    s
}

/// The per-policy summary as CSV.
pub fn summary_csv(report: &Report) -> String {
    let mut s = String::from("policy,pulls,requests_local,requests_same_region,requests_other_region,requests_origin,bytes_local,bytes_same_region,bytes_other_region,bytes_origin,pulls_without_origin,origin_egress_bytes,replication_bytes,replication_from_origin_bytes,p50_s,p90_s,p99_s,p999_s,max_s,mean_s,evictions,not_stored,plans\n");
    for r in &report.results {
        let q = &r.served.requests;
        let b = &r.served.bytes;
        let p = &r.pull_secs;
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{},{},{}",
            r.policy, r.pulls, q[0], q[1], q[2], q[3], b[0], b[1], b[2], b[3], r.pulls_without_origin, r.origin_egress_bytes, r.replication_bytes,
            r.replication_from_origin_bytes, p[0], p[1], p[2], p[3], p[4], r.mean_pull_secs, r.evictions, r.not_stored, r.plans
        );
    }
    s
}

/// Disk use of every node at every sample, as CSV.
pub fn disk_csv(report: &Report) -> String {
    let mut s = String::from("policy,hour,node,used_bytes\n");
    for r in &report.results {
        for (sample, row) in r.disk.iter().zip(&r.disk_per_node) {
            for (node, used) in row.iter().enumerate() {
                let _ = writeln!(s, "{},{},{},{}", r.policy, sample.hour, node, used);
            }
        }
    }
    s
}

/// Writes every output of a comparison into `dir`.
pub fn write_report(dir: &Path, report: &Report) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).with_context(|| format!("writing {name}"))
    };
    write(
        "results.json",
        &(serde_json::to_string_pretty(report)? + "\n"),
    )?;
    write("summary.csv", &summary_csv(report))?;
    write("disk_use.csv", &disk_csv(report))?;
    write("report.md", &markdown_table(report))?;
    let policies: Vec<String> = report.results.iter().map(|r| r.policy.clone()).collect();
    let sources: Vec<(String, Vec<f64>)> = Source::all()
        .iter()
        .map(|&s| {
            (
                s.name().replace('_', " "),
                report
                    .results
                    .iter()
                    .map(|r| 100.0 * r.fraction(s))
                    .collect(),
            )
        })
        .collect();
    write(
        "served_from.svg",
        &bar_chart(
            "Where layer requests were served from",
            "% of layer requests",
            &policies,
            &sources,
            true,
        ),
    )?;
    let needed_origin = vec![(
        "needed origin".to_string(),
        report
            .results
            .iter()
            .map(|r| 100.0 * (1.0 - r.offload()))
            .collect(),
    )];
    write(
        "offload.svg",
        &bar_chart(
            "Pulls that needed the origin (lower is better)",
            "% of pulls",
            &policies,
            &needed_origin,
            false,
        ),
    )?;
    let percentiles: Vec<(String, Vec<f64>)> = [("p50", 0), ("p90", 1), ("p99", 2)]
        .iter()
        .map(|&(name, i)| {
            (
                name.to_string(),
                report.results.iter().map(|r| r.pull_secs[i]).collect(),
            )
        })
        .collect();
    write(
        "pull_time.svg",
        &bar_chart(
            "Pull time percentiles",
            "seconds",
            &policies,
            &percentiles,
            false,
        ),
    )?;
    let egress: Vec<(String, Vec<f64>)> = vec![
        (
            "origin egress".to_string(),
            report
                .results
                .iter()
                .map(|r| gb(r.origin_egress_bytes))
                .collect(),
        ),
        (
            "replication".to_string(),
            report
                .results
                .iter()
                .map(|r| gb(r.replication_bytes))
                .collect(),
        ),
    ];
    write(
        "traffic.svg",
        &bar_chart(
            "Origin egress and pre-cache traffic",
            "GB",
            &policies,
            &egress,
            false,
        ),
    )?;
    let disk: Vec<(String, Vec<(f64, f64)>)> = report
        .results
        .iter()
        .map(|r| {
            (
                r.policy.clone(),
                r.disk
                    .iter()
                    .map(|d| (d.hour, 100.0 * d.mean_fraction))
                    .collect(),
            )
        })
        .collect();
    write(
        "disk_use.svg",
        &line_chart(
            "Mean disk use per node over time",
            "hours",
            "% of disk used",
            &disk,
            None,
        ),
    )?;
    Ok(())
}

/// One configuration of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepPoint {
    /// Disk per node, GB.
    pub disk_gb: f64,
    /// Nodes per region.
    pub nodes_per_region: u32,
    /// Nodes in total.
    pub nodes: usize,
    /// Disk in total, TB.
    pub total_disk_tb: f64,
    /// Fraction of pulls without the origin.
    pub offload: f64,
    /// 99th percentile pull time, seconds.
    pub p99_pull_secs: f64,
    /// Origin egress, GB.
    pub origin_egress_gb: f64,
    /// Meets both targets.
    pub meets_targets: bool,
}

/// A capacity-planning sweep.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepReport {
    /// Shared facts (of the first configuration).
    pub scenario: String,
    /// Policy swept.
    pub policy: String,
    /// Targets.
    pub targets: Targets,
    /// Every configuration, by nodes per region then disk.
    pub points: Vec<SweepPoint>,
    /// The configuration with the least total disk (then fewest nodes) that
    /// meets the targets.
    pub smallest: Option<SweepPoint>,
}

/// Picks the smallest configuration that meets the targets.
pub fn smallest(points: &[SweepPoint]) -> Option<SweepPoint> {
    points
        .iter()
        .filter(|p| p.meets_targets)
        .min_by(|a, b| {
            a.total_disk_tb
                .total_cmp(&b.total_disk_tb)
                .then(a.nodes.cmp(&b.nodes))
                .then(a.disk_gb.total_cmp(&b.disk_gb))
        })
        .cloned()
}

/// The sweep as a Markdown table.
pub fn sweep_table(sweep: &SweepReport) -> String {
    let mut s = format!(
        "Sweep of `{}` with policy `{}`; target: at least {} of pulls without the origin and p99 pull time at most {} s.\n\n",
        sweep.scenario,
        sweep.policy,
        pct(sweep.targets.min_offload),
        sweep.targets.max_p99_pull_secs
    );
    s.push_str("| nodes/region | disk GB/node | total disk TB | pulls without origin | p99 pull s | origin egress GB | meets |\n|---:|---:|---:|---:|---:|---:|:---:|\n");
    for p in &sweep.points {
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {} | {:.2} | {:.1} | {} |",
            p.nodes_per_region,
            p.disk_gb,
            p.total_disk_tb,
            pct(p.offload),
            p.p99_pull_secs,
            p.origin_egress_gb,
            if p.meets_targets { "yes" } else { "no" }
        );
    }
    match &sweep.smallest {
        Some(p) => {
            let _ = writeln!(
                s,
                "\n**Smallest configuration that meets the targets:** {} nodes per region with {} GB each ({} nodes, {:.2} TB in total).",
                p.nodes_per_region, p.disk_gb, p.nodes, p.total_disk_tb
            );
        }
        None => s.push_str("\n**No configuration in the sweep meets the targets.**\n"),
    }
    s
}

/// Writes every output of a sweep into `dir`.
pub fn write_sweep(dir: &Path, sweep: &SweepReport) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).with_context(|| format!("writing {name}"))
    };
    write("sweep.json", &(serde_json::to_string_pretty(sweep)? + "\n"))?;
    let mut csv = String::from("nodes_per_region,disk_gb,nodes,total_disk_tb,offload,p99_pull_secs,origin_egress_gb,meets_targets\n");
    for p in &sweep.points {
        let _ = writeln!(
            csv,
            "{},{},{},{:.4},{:.6},{:.6},{:.3},{}",
            p.nodes_per_region,
            p.disk_gb,
            p.nodes,
            p.total_disk_tb,
            p.offload,
            p.p99_pull_secs,
            p.origin_egress_gb,
            p.meets_targets
        );
    }
    write("sweep.csv", &csv)?;
    write("sweep.md", &sweep_table(sweep))?;
    let mut per_nodes: Vec<u32> = sweep.points.iter().map(|p| p.nodes_per_region).collect();
    per_nodes.dedup();
    let series = |f: &dyn Fn(&SweepPoint) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        per_nodes
            .iter()
            .map(|&n| {
                (
                    format!("{n} nodes/region"),
                    sweep
                        .points
                        .iter()
                        .filter(|p| p.nodes_per_region == n)
                        .map(|p| (p.disk_gb, f(p)))
                        .collect(),
                )
            })
            .collect()
    };
    let target_offload = format!("target {}", pct(sweep.targets.min_offload));
    write(
        "sweep_offload.svg",
        &line_chart(
            "Pulls served without the origin",
            "disk per node (GB)",
            "% of pulls",
            &series(&|p| 100.0 * p.offload),
            Some((100.0 * sweep.targets.min_offload, &target_offload)),
        ),
    )?;
    let target_p99 = format!("bound {} s", sweep.targets.max_p99_pull_secs);
    write(
        "sweep_p99.svg",
        &line_chart(
            "99th percentile pull time",
            "disk per node (GB)",
            "seconds",
            &series(&|p| p.p99_pull_secs),
            Some((sweep.targets.max_p99_pull_secs, &target_p99)),
        ),
    )?;
    Ok(())
}
