//! Suite: every scenario, every policy, one table, with parameters chosen on
//! data the table does not report.
//!
//! A suite file (TOML, [`SuiteConfig`]) names the scenarios to report and a
//! tuning scenario with a small grid of pre-cache parameters. [`run_suite`]
//! first runs the predictive policy on the tuning scenario for every grid
//! point and keeps the point with the least WAN bytes (origin egress, then
//! the grid order, breaking ties); then it runs every reported scenario, all
//! its policies, with that point. The tuning scenario's own figures are never
//! part of the table: the shipped suite tunes on the `train` half of the
//! catalog's repositories and reports the `test` half.
//!
//! For each scenario the four goals are checked against the same
//! run's baselines ([`GoalCheck`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::{RunOptions, RunResult};
use crate::report::Report;
use crate::scenario::{Scenario, ScenarioError, MAX_SCENARIO_BYTES};

/// A suite file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteConfig {
    /// Scenario files to report, relative to the suite file.
    pub scenarios: Vec<PathBuf>,
    /// Where the pre-cache parameters are chosen.
    pub tuning: TuningConfig,
}

/// The tuning grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuningConfig {
    /// The scenario tuned on (never reported), relative to the suite file.
    pub scenario: PathBuf,
    /// `policy.precache.budget_fraction` values to try.
    pub budget_fraction: Vec<f64>,
    /// `policy.precache.latency_credit` values to try.
    pub latency_credit: Vec<f64>,
    /// `policy.eviction.guard.step_up` values to try. Default: the
    /// scenario's own value only.
    #[serde(default)]
    pub guard_step_up: Vec<f64>,
    /// `policy.eviction.spare_copy_cost` values to try. Default: the
    /// scenario's own value only.
    #[serde(default)]
    pub spare_copy_cost: Vec<f64>,
}

/// Why a suite could not run.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    /// Reading the suite file failed.
    #[error("cannot read suite {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not valid TOML, too large, or a value out of range.
    #[error("suite {path}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A scenario of the suite is unusable.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// A scenario's workload could not be built.
    #[error("scenario {scenario}: {source}")]
    Workload {
        /// The scenario file.
        scenario: PathBuf,
        /// The error.
        source: crate::workload::WorkloadError,
    },
}

/// Most scenarios in a suite and most points in its grid.
pub const MAX_SUITE_ENTRIES: usize = 64;

impl SuiteConfig {
    /// Reads and checks a suite file; scenario paths are resolved against
    /// its folder.
    pub fn load(path: &Path) -> Result<SuiteConfig, SuiteError> {
        let invalid = |problem: String| SuiteError::Invalid {
            path: path.to_path_buf(),
            problem,
        };
        let io = |source| SuiteError::Io {
            path: path.to_path_buf(),
            source,
        };
        if std::fs::metadata(path).map_err(io)?.len() > MAX_SCENARIO_BYTES {
            return Err(invalid("larger than 1 MiB".into()));
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let mut config: SuiteConfig = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if config.scenarios.is_empty() || config.scenarios.len() > MAX_SUITE_ENTRIES {
            return Err(invalid(format!(
                "scenarios: between 1 and {MAX_SUITE_ENTRIES}"
            )));
        }
        let t = &config.tuning;
        let grid = t.budget_fraction.len()
            * t.latency_credit.len()
            * t.guard_step_up.len().max(1)
            * t.spare_copy_cost.len().max(1);
        if grid == 0 || grid > MAX_SUITE_ENTRIES {
            return Err(invalid(format!(
                "tuning grid: between 1 and {MAX_SUITE_ENTRIES} points"
            )));
        }
        for &v in t.budget_fraction.iter().chain(&t.latency_credit) {
            if !v.is_finite() || v < 0.0 {
                return Err(invalid(format!("tuning value {v} must be >= 0")));
            }
        }
        if t.guard_step_up.iter().any(|v| !(0.0..=1.0).contains(v)) {
            return Err(invalid(
                "tuning guard_step_up values must be in [0, 1]".into(),
            ));
        }
        if t.spare_copy_cost.iter().any(|v| !(0.0..=1.0).contains(v)) {
            return Err(invalid(
                "tuning spare_copy_cost values must be in [0, 1]".into(),
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        for p in config
            .scenarios
            .iter_mut()
            .chain(std::iter::once(&mut config.tuning.scenario))
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if config.scenarios.contains(&config.tuning.scenario) {
            return Err(invalid(
                "the tuning scenario must not be one of the reported scenarios".into(),
            ));
        }
        Ok(config)
    }
}

/// One grid point tried on the tuning scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TuningPoint {
    /// `precache.budget_fraction`.
    pub budget_fraction: f64,
    /// `precache.latency_credit`.
    pub latency_credit: f64,
    /// `eviction.guard.step_up`.
    pub guard_step_up: f64,
    /// `eviction.spare_copy_cost`.
    pub spare_copy_cost: f64,
    /// WAN bytes of the predictive run on the tuning scenario, GB.
    pub wan_gb: f64,
    /// Origin egress of that run, GB.
    pub origin_egress_gb: f64,
}

/// One scenario × policy row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SuiteRow {
    /// Scenario name.
    pub scenario: String,
    /// Policy.
    pub policy: String,
    /// Origin egress (demand and pre-cache), GB.
    pub origin_egress_gb: f64,
    /// WAN bytes (origin and inter-region, pre-cache included), GB.
    pub wan_gb: f64,
    /// Share of requested bytes served without the origin.
    pub byte_share_without_origin: f64,
    /// Pre-cache traffic, GB.
    pub precache_gb: f64,
    /// Pre-cache bytes that served a request, GB.
    pub precache_hit_gb: f64,
    /// Pre-cache bytes evicted unused, GB.
    pub precache_wasted_gb: f64,
    /// Mean guard lean at the end (predictive only).
    pub final_lean: f64,
}

/// The goals on one scenario, with the figures they were judged on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GoalCheck {
    /// Scenario name.
    pub scenario: String,
    /// Predictive origin egress over the lower of LRU's and LFU's.
    pub egress_ratio: f64,
    /// Predictive share without origin over MIN's.
    pub share_vs_min: f64,
    /// Predictive WAN bytes over LRU's.
    pub wan_ratio: f64,
    /// Wasted pre-cache over pre-cache bytes.
    pub waste_share: f64,
    /// `egress_ratio <= 1`.
    pub egress_met: bool,
    /// `share_vs_min >= 0.9`.
    pub share_met: bool,
    /// `wan_ratio <= 1`.
    pub wan_met: bool,
    /// `waste_share < 0.1`.
    pub waste_met: bool,
}

/// Everything the suite found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SuiteReport {
    /// The scenario tuned on.
    pub tuning_scenario: String,
    /// Every grid point tried there.
    pub tuning: Vec<TuningPoint>,
    /// The point used for every reported run.
    pub chosen: TuningPoint,
    /// Every reported scenario × policy.
    pub rows: Vec<SuiteRow>,
    /// The goals per scenario.
    pub goals: Vec<GoalCheck>,
}

fn gb(b: u64) -> f64 {
    b as f64 / 1e9
}

fn row(scenario: &str, r: &RunResult) -> SuiteRow {
    SuiteRow {
        scenario: scenario.to_string(),
        policy: r.policy.clone(),
        origin_egress_gb: gb(r.origin_egress_bytes),
        wan_gb: gb(r.wan_bytes()),
        byte_share_without_origin: r.byte_share_without_origin(),
        precache_gb: gb(r.replication_bytes),
        precache_hit_gb: gb(r.precache_hit_bytes),
        precache_wasted_gb: gb(r.precache_wasted_bytes),
        final_lean: r.final_mean_lean,
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b <= 0.0 {
        if a <= 0.0 {
            1.0
        } else {
            f64::INFINITY
        }
    } else {
        a / b
    }
}

/// Checks the goals on one scenario's report; `None` unless it ran
/// predictive, LRU, LFU and MIN.
pub fn check_goals(report: &Report) -> Option<GoalCheck> {
    let get = |p: &str| report.results.iter().find(|r| r.policy == p);
    let (pred, lru, lfu, min) = (get("predictive")?, get("lru")?, get("lfu")?, get("min")?);
    let egress_ratio = ratio(
        pred.origin_egress_bytes as f64,
        lru.origin_egress_bytes.min(lfu.origin_egress_bytes) as f64,
    );
    let share_vs_min = ratio(
        pred.byte_share_without_origin(),
        min.byte_share_without_origin(),
    );
    let wan_ratio = ratio(pred.wan_bytes() as f64, lru.wan_bytes() as f64);
    let waste_share = pred.precache_waste_share();
    Some(GoalCheck {
        scenario: report.info.scenario.clone(),
        egress_ratio,
        share_vs_min,
        wan_ratio,
        waste_share,
        egress_met: egress_ratio <= 1.0,
        share_met: share_vs_min >= 0.9,
        wan_met: wan_ratio <= 1.0,
        waste_met: waste_share < 0.1,
    })
}

fn with_point(mut s: Scenario, point: &TuningPoint) -> Scenario {
    s.policy.precache.budget_fraction = point.budget_fraction;
    s.policy.precache.latency_credit = point.latency_credit;
    s.policy.eviction.guard.step_up = point.guard_step_up;
    s.policy.eviction.spare_copy_cost = point.spare_copy_cost;
    s
}

fn run_one(path: &Path, s: &Scenario, options: RunOptions) -> Result<Report, SuiteError> {
    crate::compare(s, options).map_err(|source| SuiteError::Workload {
        scenario: path.to_path_buf(),
        source,
    })
}

/// Tunes on the tuning scenario, then runs every reported scenario. See the
/// module docs.
pub fn run_suite(config: &SuiteConfig, options: RunOptions) -> Result<SuiteReport, SuiteError> {
    let tuning = Scenario::load(&config.tuning.scenario)?;
    let mut points = Vec::new();
    let step_ups = if config.tuning.guard_step_up.is_empty() {
        vec![tuning.policy.eviction.guard.step_up]
    } else {
        config.tuning.guard_step_up.clone()
    };
    let spare_costs = if config.tuning.spare_copy_cost.is_empty() {
        vec![tuning.policy.eviction.spare_copy_cost]
    } else {
        config.tuning.spare_copy_cost.clone()
    };
    let mut grid = Vec::new();
    for &budget_fraction in &config.tuning.budget_fraction {
        for &latency_credit in &config.tuning.latency_credit {
            for &guard_step_up in &step_ups {
                for &spare_copy_cost in &spare_costs {
                    grid.push(TuningPoint {
                        budget_fraction,
                        latency_credit,
                        guard_step_up,
                        spare_copy_cost,
                        wan_gb: 0.0,
                        origin_egress_gb: 0.0,
                    });
                }
            }
        }
    }
    for mut point in grid {
        let mut s = with_point(tuning.clone(), &point);
        s.policies = vec!["predictive".into()];
        if options.progress {
            eprintln!(
                "tuning on {}: budget_fraction {}, latency_credit {}, guard step_up {}, spare_copy_cost {}",
                s.name,
                point.budget_fraction,
                point.latency_credit,
                point.guard_step_up,
                point.spare_copy_cost
            );
        }
        let r = run_one(&config.tuning.scenario, &s, RunOptions::default())?;
        let p = &r.results[0];
        point.wan_gb = gb(p.wan_bytes());
        point.origin_egress_gb = gb(p.origin_egress_bytes);
        points.push(point);
    }
    let chosen = points
        .iter()
        .enumerate()
        .min_by(|(ia, a), (ib, b)| {
            a.wan_gb
                .total_cmp(&b.wan_gb)
                .then(a.origin_egress_gb.total_cmp(&b.origin_egress_gb))
                .then(ia.cmp(ib))
        })
        .map(|(_, p)| p.clone())
        .expect("the grid has at least one point");
    let mut rows = Vec::new();
    let mut goals = Vec::new();
    for path in &config.scenarios {
        let s = with_point(Scenario::load(path)?, &chosen);
        if options.progress {
            eprintln!("suite: {}", s.name);
        }
        let r = run_one(path, &s, RunOptions::default())?;
        rows.extend(r.results.iter().map(|x| row(&s.name, x)));
        goals.extend(check_goals(&r));
    }
    Ok(SuiteReport {
        tuning_scenario: tuning.name,
        tuning: points,
        chosen,
        rows,
        goals,
    })
}

fn yes(b: bool) -> &'static str {
    if b {
        "met"
    } else {
        "NOT met"
    }
}

/// The suite as markdown: the results table, then the goals table.
pub fn markdown(report: &SuiteReport) -> String {
    let mut s = format!(
        "Parameters chosen on `{}` (not reported): precache.budget_fraction = {}, precache.latency_credit = {}, eviction.guard.step_up = {}, eviction.spare_copy_cost = {}.\n\n",
        report.tuning_scenario,
        report.chosen.budget_fraction,
        report.chosen.latency_credit,
        report.chosen.guard_step_up,
        report.chosen.spare_copy_cost
    );
    s.push_str("| scenario | policy | origin egress GB | WAN GB | bytes without origin | pre-cache GB | pre-cache hit GB | pre-cache wasted GB | lean |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in &report.rows {
        s.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.3} | {:.2} | {:.2} | {:.2} | {} |\n",
            r.scenario,
            r.policy,
            r.origin_egress_gb,
            r.wan_gb,
            r.byte_share_without_origin,
            r.precache_gb,
            r.precache_hit_gb,
            r.precache_wasted_gb,
            if r.policy == "predictive" {
                format!("{:.2}", r.final_lean)
            } else {
                "-".into()
            },
        ));
    }
    s.push_str("\n| scenario | egress / min(LRU, LFU) | share / MIN's | WAN / LRU's | wasted / pre-cache |\n");
    s.push_str("|---|---|---|---|---|\n");
    for g in &report.goals {
        s.push_str(&format!(
            "| {} | {:.3} ({}) | {:.3} ({}) | {:.3} ({}) | {:.3} ({}) |\n",
            g.scenario,
            g.egress_ratio,
            yes(g.egress_met),
            g.share_vs_min,
            yes(g.share_met),
            g.wan_ratio,
            yes(g.wan_met),
            g.waste_share,
            yes(g.waste_met),
        ));
    }
    s
}

/// The rows as CSV.
pub fn csv(report: &SuiteReport) -> String {
    let mut s = String::from("scenario,policy,origin_egress_gb,wan_gb,byte_share_without_origin,precache_gb,precache_hit_gb,precache_wasted_gb,final_lean\n");
    for r in &report.rows {
        s.push_str(&format!(
            "{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.4}\n",
            r.scenario,
            r.policy,
            r.origin_egress_gb,
            r.wan_gb,
            r.byte_share_without_origin,
            r.precache_gb,
            r.precache_hit_gb,
            r.precache_wasted_gb,
            r.final_lean
        ));
    }
    s
}

/// Writes `suite.md`, `suite.json`, `suite.csv` and `suite.svg` into `dir`.
pub fn write(dir: &Path, report: &SuiteReport) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let put = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text)
            .with_context(|| format!("writing {}", dir.join(name).display()))
    };
    put("suite.md", &markdown(report))?;
    put("suite.json", &serde_json::to_string_pretty(report)?)?;
    put("suite.csv", &csv(report))?;
    put("suite.svg", &crate::chart::suite_chart(report)?)?;
    Ok(())
}
