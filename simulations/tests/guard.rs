//! The predictive policy against the baselines on workloads built to beat
//! it: one where forecasts carry no information, one that switches from
//! frequency-heavy to recency-heavy halfway, and a small version of the
//! scenario suite (seconds each).

use shoal_simulations::engine::{self, PolicyKind, RunOptions, RunResult, Source};
use shoal_simulations::scenario::Scenario;
use shoal_simulations::suite::{self, SuiteConfig};
use shoal_simulations::topology::Topology;
use shoal_simulations::workload;

fn pattern(pattern: &str, extra: &str) -> Scenario {
    Scenario::parse(&format!(
        r#"
name = "{pattern}"
seed = 9
duration_hours = 48
[topology]
disk_gb_per_node = 0.6
regions = [
  {{ name = "a", nodes = 2, x_km = 0, y_km = 0, origin_rtt_ms = 40 }},
  {{ name = "b", nodes = 2, x_km = 4000, y_km = 0, origin_rtt_ms = 120 }},
]
[workload]
kind = "pattern"
pattern = "{pattern}"
pulls_per_hour = 80
synthetic_mean_layer_mb = 10
{extra}
"#
    ))
    .unwrap()
}

fn run_all(s: &Scenario, options: RunOptions) -> Vec<RunResult> {
    let topology = Topology::build(&s.topology, None, None);
    let duration = s.duration_hours * 3600.0;
    let wl = workload::build(&s.workload, &topology, duration, s.seed).unwrap();
    assert!(wl.pulls() > 1000, "{} pulls", wl.pulls());
    [PolicyKind::Predictive, PolicyKind::Lru, PolicyKind::Lfu]
        .into_iter()
        .map(|kind| engine::run(&topology, &wl, &s.policy, kind, duration, options))
        .collect()
}

/// Bytes served without the origin.
fn byte_hits(bytes: &[u64; 4]) -> u64 {
    bytes.iter().sum::<u64>() - bytes[Source::Origin as usize]
}

#[test]
fn with_forecasts_that_carry_no_information_predictive_stays_within_5_percent_of_lru() {
    for s in [
        pattern("uniform", "pattern_images = 1500"),
        pattern("scan", "pattern_images = 150"),
    ] {
        let r = run_all(&s, RunOptions::default());
        let (pred, lru) = (&r[0], &r[1]);
        let (ph, lh) = (byte_hits(&pred.served.bytes), byte_hits(&lru.served.bytes));
        assert!(
            ph as f64 >= 0.95 * lh as f64,
            "{}: predictive byte hits {ph} against LRU's {lh}",
            s.name
        );
        assert!(
            pred.origin_egress_bytes as f64 <= 1.05 * lru.origin_egress_bytes as f64,
            "{}: predictive origin egress {} against LRU's {}",
            s.name,
            pred.origin_egress_bytes,
            lru.origin_egress_bytes
        );
        // The workload really is forecast-free: LRU itself gains little.
        assert!(lh < lru.served.bytes.iter().sum::<u64>() / 2, "{}", s.name);
    }
}

#[test]
fn after_a_switch_from_frequency_to_recency_predictive_keeps_up_with_the_better_baseline() {
    let s = pattern(
        "switch",
        "pattern_images = 1200\npattern_popular_images = 100\nzipf_exponent = 0.8\nrollout_fraction = 0.5",
    );
    let half = s.duration_hours * 3600.0 / 2.0;
    let r = run_all(
        &s,
        RunOptions {
            split_at_secs: Some(half),
            ..RunOptions::default()
        },
    );
    // Per half: (byte hits, origin egress).
    let halves = |x: &RunResult| {
        let mut first = x.served.bytes;
        for (f, a) in first.iter_mut().zip(x.after_split.served.bytes) {
            *f -= a;
        }
        [
            (
                byte_hits(&first),
                x.origin_egress_bytes - x.after_split.origin_egress_bytes,
            ),
            (
                byte_hits(&x.after_split.served.bytes),
                x.after_split.origin_egress_bytes,
            ),
        ]
    };
    let (pred, lru, lfu) = (halves(&r[0]), halves(&r[1]), halves(&r[2]));
    for (i, name) in ["frequency-heavy half", "recency-heavy half"]
        .iter()
        .enumerate()
    {
        let best_hits = lru[i].0.max(lfu[i].0);
        let best_egress = lru[i].1.min(lfu[i].1);
        assert!(
            pred[i].0 as f64 >= 0.95 * best_hits as f64,
            "{name}: predictive byte hits {} against the better baseline's {best_hits} (lru {:?}, lfu {:?})",
            pred[i].0,
            lru[i],
            lfu[i]
        );
        assert!(
            pred[i].1 as f64 <= 1.05 * best_egress as f64,
            "{name}: predictive origin egress {} against the better baseline's {best_egress} (lru {:?}, lfu {:?})",
            pred[i].1,
            lru[i],
            lfu[i]
        );
    }
    // The baselines do differ between the halves, or the test would show
    // nothing: LFU leads the first half, LRU the second.
    assert!(lfu[0].0 >= lru[0].0, "lfu {:?} lru {:?}", lfu[0], lru[0]);
    assert!(lru[1].0 > lfu[1].0, "lru {:?} lfu {:?}", lru[1], lfu[1]);
}

#[test]
fn pre_cache_is_counted_as_hits_or_waste_and_stays_within_its_budget() {
    let s = pattern("stable", "pattern_images = 80\npattern_popular_images = 80");
    let r = run_all(&s, RunOptions::default());
    let pred = &r[0];
    // Every pre-cache byte is a hit, waste or still unused at the end; a copy
    // that was joined while arriving is a hit too, so this is an upper bound.
    assert!(
        pred.precache_hit_bytes + pred.precache_wasted_bytes + pred.precache_unused_at_end_bytes
            <= pred.replication_bytes,
        "{pred:?}"
    );
    // The budget: a fraction of the demand bytes.
    let demand: u64 = pred.served.bytes.iter().sum();
    assert!(
        pred.replication_bytes as f64 <= s.policy.precache.budget_fraction * demand as f64 + 2e9,
        "pre-cache {} for demand {demand}",
        pred.replication_bytes
    );
    for x in &r[1..] {
        assert_eq!(x.replication_bytes, 0);
        assert_eq!(x.precache_hit_bytes + x.precache_wasted_bytes, 0);
    }
}

#[test]
fn the_suite_tunes_on_one_scenario_and_reports_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, s: &str| std::fs::write(dir.path().join(name), s).unwrap();
    let scenario = |name: &str, pattern: &str| {
        format!(
            r#"
name = "{name}"
seed = 2
duration_hours = 12
[topology]
disk_gb_per_node = 0.5
regions = [{{ name = "a", nodes = 2, x_km = 0, y_km = 0, origin_rtt_ms = 40 }}]
[workload]
kind = "pattern"
pattern = "{pattern}"
pulls_per_hour = 60
pattern_images = 200
pattern_popular_images = 40
synthetic_mean_layer_mb = 10
"#
        )
    };
    write("train.toml", &scenario("train", "stable"));
    write("a.toml", &scenario("a", "recency"));
    write("b.toml", &scenario("b", "uniform"));
    write(
        "suite.toml",
        r#"
scenarios = ["a.toml", "b.toml"]
[tuning]
scenario = "train.toml"
budget_fraction = [0.02, 0.1]
latency_credit = [0.1]
"#,
    );
    let config = SuiteConfig::load(&dir.path().join("suite.toml")).unwrap();
    let report = suite::run_suite(&config, RunOptions::default()).unwrap();
    assert_eq!(report.tuning.len(), 2);
    assert_eq!(report.tuning_scenario, "train");
    assert!(report.tuning.contains(&report.chosen));
    // Every reported scenario, every policy; never the tuning scenario.
    assert_eq!(report.rows.len(), 8);
    assert!(report.rows.iter().all(|r| r.scenario != "train"));
    assert_eq!(report.goals.len(), 2);
    for r in report.rows.iter().filter(|r| r.policy == "predictive") {
        assert!(r.precache_wasted_gb <= r.precache_gb + 1e-12);
    }
    // Same inputs, same bytes.
    let (a, b) = (dir.path().join("out-a"), dir.path().join("out-b"));
    suite::write(&a, &report).unwrap();
    let again = suite::run_suite(&config, RunOptions::default()).unwrap();
    suite::write(&b, &again).unwrap();
    for f in ["suite.md", "suite.json", "suite.csv", "suite.svg"] {
        let fa = std::fs::read(a.join(f)).unwrap();
        assert!(!fa.is_empty(), "{f}");
        assert_eq!(fa, std::fs::read(b.join(f)).unwrap(), "{f} differs");
    }
    let md = std::fs::read_to_string(a.join("suite.md")).unwrap();
    assert!(md.contains("| a | predictive |") && md.contains("| b | min |"));
    assert!(std::fs::read_to_string(a.join("suite.svg"))
        .unwrap()
        .contains("<svg"));
    // A suite that reports its own tuning scenario is refused.
    write(
        "bad.toml",
        r#"
scenarios = ["train.toml"]
[tuning]
scenario = "train.toml"
budget_fraction = [0.1]
latency_credit = [0.1]
"#,
    );
    let e = SuiteConfig::load(&dir.path().join("bad.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("tuning scenario"), "{e}");
}
