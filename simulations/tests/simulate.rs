//! End-to-end checks of the simulator on small scenarios (seconds each).

use std::path::Path;

use shoal_simulations::engine::{self, PolicyKind, RunOptions, Source};
use shoal_simulations::report;
use shoal_simulations::scenario::Scenario;
use shoal_simulations::topology::Topology;
use shoal_simulations::workload::{self, EventKind};

fn small(kind: &str, extra: &str) -> Scenario {
    let text = format!(
        r#"
name = "small"
seed = 3
duration_hours = 12
[topology]
disk_gb_per_node = 0.5
wan_gbps = 0.5
origin_gbps = 0.5
regions = [
  {{ name = "a", nodes = 4, x_km = 0, y_km = 0, origin_rtt_ms = 40 }},
  {{ name = "b", nodes = 4, x_km = 3000, y_km = 0, origin_rtt_ms = 90, utc_offset_hours = 3 }},
  {{ name = "c", nodes = 3, x_km = 0, y_km = 6000, origin_rtt_ms = 150, utc_offset_hours = 8 }},
]
[workload]
kind = "{kind}"
pulls_per_hour = 600
synthetic_repositories = 60
synthetic_mean_layer_mb = 20
rollouts_per_day = 24
disclosures_per_day = 6
patch_delay_hours = 1
catalog_days = 60
{extra}
[sweep]
disk_gb = [0.25, 1, 4]
nodes_per_region = [1, 3]
[targets]
min_offload = 0.5
max_p99_pull_secs = 120
"#
    );
    Scenario::parse(&text).unwrap()
}

#[test]
fn same_seed_same_bytes() {
    let s = small("synthetic", "");
    let a = shoal_simulations::compare(&s, RunOptions::default()).unwrap();
    let b = shoal_simulations::compare(&s, RunOptions::default()).unwrap();
    let ja = serde_json::to_string(&a).unwrap();
    let jb = serde_json::to_string(&b).unwrap();
    assert_eq!(ja, jb);
    assert_eq!(report::summary_csv(&a), report::summary_csv(&b));
    assert_eq!(report::disk_csv(&a), report::disk_csv(&b));
    // The files written are byte-identical too.
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    report::write_report(da.path(), &a).unwrap();
    report::write_report(db.path(), &b).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(da.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert!(names.len() >= 8);
    for name in names {
        let fa = std::fs::read(da.path().join(&name)).unwrap();
        let fb = std::fs::read(db.path().join(&name)).unwrap();
        assert_eq!(fa, fb, "{name:?} differs between two runs");
    }
    // A different seed gives a different run.
    let mut other = s.clone();
    other.seed = 4;
    let c = shoal_simulations::compare(&other, RunOptions::default()).unwrap();
    assert_ne!(ja, serde_json::to_string(&c).unwrap());
}

#[test]
fn every_pull_and_request_is_counted_once() {
    let s = small("synthetic", "");
    let topology = Topology::build(&s.topology, None, None);
    let duration = s.duration_hours * 3600.0;
    let wl = workload::build(&s.workload, &topology, duration, s.seed).unwrap();
    let mut requests = 0u64;
    let mut bytes = 0u64;
    for e in &wl.events {
        if let EventKind::Pull { version, .. } = e.kind {
            let mut layers = wl.versions[version as usize].layers.clone();
            layers.sort();
            layers.dedup();
            requests += layers.len() as u64;
            bytes += layers
                .iter()
                .map(|l| wl.layer_sizes[l.0 as usize])
                .sum::<u64>();
        }
    }
    assert!(wl.pulls() > 3000);
    for kind in [
        PolicyKind::Predictive,
        PolicyKind::Lru,
        PolicyKind::Lfu,
        PolicyKind::Min,
    ] {
        let r = engine::run(
            &topology,
            &wl,
            &s.policy,
            kind,
            duration,
            RunOptions::default(),
        );
        assert_eq!(r.pulls, wl.pulls() as u64, "{}", r.policy);
        assert_eq!(
            r.served.requests.iter().sum::<u64>(),
            requests,
            "{}",
            r.policy
        );
        assert_eq!(r.served.bytes.iter().sum::<u64>(), bytes, "{}", r.policy);
        assert!(r.pulls_without_origin <= r.pulls);
        // Origin egress is at least what demand fetched from it.
        assert!(r.origin_egress_bytes >= r.served.bytes[Source::Origin as usize] / 2);
        for sample in &r.disk {
            assert!(
                sample.max_fraction <= 1.0 + 1e-9,
                "{} overfilled a disk",
                r.policy
            );
        }
        if kind != PolicyKind::Predictive {
            assert_eq!(r.replication_bytes, 0);
        }
    }
}

#[test]
fn min_is_not_beaten_on_local_hits_with_equal_layers() {
    let mut s = small("synthetic", "synthetic_fixed_layer_bytes = 10000000");
    s.workload.rollouts_per_day = 0.0;
    s.workload.disclosures_per_day = 0.0;
    let topology = Topology::build(&s.topology, None, None);
    let duration = s.duration_hours * 3600.0;
    let wl = workload::build(&s.workload, &topology, duration, s.seed).unwrap();
    let local = |kind| {
        engine::run(
            &topology,
            &wl,
            &s.policy,
            kind,
            duration,
            RunOptions::default(),
        )
        .fraction(Source::Local)
    };
    let min = local(PolicyKind::Min);
    let lru = local(PolicyKind::Lru);
    let lfu = local(PolicyKind::Lfu);
    assert!(min >= lru && min >= lfu, "min {min} lru {lru} lfu {lfu}");
    assert!(min > 0.0);
}

#[test]
fn catalog_sample_runs_and_writes_reports() {
    let catalog = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/catalog-sample.jsonl");
    let extra = format!(
        "catalog = {:?}\ncatalog_start = \"2017-01-01T00:00:00Z\"",
        catalog.display().to_string()
    );
    let mut s = small("catalog", &extra);
    s.workload.catalog_days = 180.0;
    let r = shoal_simulations::compare(&s, RunOptions::default()).unwrap();
    assert_eq!(r.results.len(), 4);
    assert!(r.info.pulls > 1000);
    assert!(r.results.iter().all(|x| x.pulls == r.info.pulls as u64));
    let dir = tempfile::tempdir().unwrap();
    report::write_report(dir.path(), &r).unwrap();
    for f in [
        "results.json",
        "summary.csv",
        "disk_use.csv",
        "report.md",
        "served_from.svg",
        "pull_time.svg",
        "disk_use.svg",
        "traffic.svg",
        "offload.svg",
    ] {
        let text = std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert!(!text.is_empty(), "{f}");
    }
    let table = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    for p in ["predictive", "lru", "lfu", "min"] {
        assert!(table.contains(&format!("| {p} |")));
    }
}

#[test]
fn trace_replay() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.jsonl");
    let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let mut lines = String::new();
    for i in 0..50 {
        let node = i % 5;
        lines.push_str(&format!(
            "{{\"time\": {}, \"node\": {node}, \"image\": \"app:1\", \"layers\": [{{\"digest\": \"{}\", \"size\": 1000000}}, {{\"digest\": \"{}\", \"size\": 2000}}]}}\n",
            i * 60,
            d('a'),
            d('b')
        ));
    }
    lines.push_str(&format!("{{\"time\": 100, \"region\": \"b\", \"image\": \"db:2\", \"layers\": [{{\"digest\": \"{}\", \"size\": 5000}}]}}\n", d('c')));
    lines.push_str(&format!("{{\"time\": 200, \"kind\": \"disclosure\", \"score\": 98, \"layers\": [{{\"digest\": \"{}\"}}]}}\n", d('a')));
    std::fs::write(&trace, &lines).unwrap();
    let s = small(
        "trace",
        &format!("trace = {:?}", trace.display().to_string()),
    );
    let r = shoal_simulations::compare(&s, RunOptions::default()).unwrap();
    assert_eq!(r.info.pulls, 51);
    assert_eq!(r.info.layers, 3);
    for x in &r.results {
        assert_eq!(x.pulls, 51);
        // Layer a comes from the origin once, then from peers or locally.
        assert_eq!(
            x.served.requests[Source::Origin as usize],
            3,
            "{}",
            x.policy
        );
    }
    // A bad line is reported with its number.
    std::fs::write(
        &trace,
        format!("{lines}{{\"time\": -1, \"node\": 0, \"image\": \"x\", \"layers\": []}}\n"),
    )
    .unwrap();
    let e = shoal_simulations::compare(&s, RunOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 53"), "{e}");
}

#[test]
fn trace_publications_pre_place_new_versions_on_the_holders_of_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.jsonl");
    let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let layer = |c: char, size: u64| format!("{{\"digest\": \"{}\", \"size\": {size}}}", d(c));
    let mut lines = format!(
        "{{\"time\": 0, \"kind\": \"publish\", \"image\": \"app:latest\", \"layers\": [{}]}}\n",
        layer('a', 1_000_000)
    );
    for i in 0..20 {
        lines.push_str(&format!(
            "{{\"time\": {}, \"node\": 0, \"image\": \"app:latest\", \"layers\": [{}]}}\n",
            1 + i * 60,
            layer('a', 1_000_000)
        ));
    }
    let v2 = format!("{}, {}", layer('a', 1_000_000), layer('b', 3_000_000));
    lines.push_str(&format!(
        "{{\"time\": 1500, \"kind\": \"publish\", \"image\": \"app:latest\", \"layers\": [{v2}]}}\n"
    ));
    lines.push_str(&format!(
        "{{\"time\": 2000, \"node\": 0, \"image\": \"app:latest\", \"layers\": [{v2}]}}\n"
    ));
    std::fs::write(&trace, &lines).unwrap();
    let run = |every_holder: bool| {
        let s = small(
            "trace",
            &format!(
                "trace = {:?}\n[policy]\nnew_versions_to_every_holder = {every_holder}\n",
                trace.display().to_string()
            ),
        );
        let r = shoal_simulations::compare(&s, RunOptions::default()).unwrap();
        assert_eq!(r.info.pulls, 21);
        let result = |policy: &str| {
            let x = r.results.iter().find(|x| x.policy == policy).unwrap();
            (
                x.new_version_bytes,
                x.served.requests[Source::Origin as usize],
            )
        };
        (result("predictive"), result("lru"))
    };
    // As shoald does: node 0 holds the old version, so it fetches the new layer at once, and the
    // pull of the new version needs nothing from the origin.
    let (predictive, lru) = run(true);
    assert_eq!(predictive, (3_000_000, 1));
    assert_eq!(lru, (0, 2));
    // By the pre-cache verdict, a copy from the origin costs what the pull would, so it is not
    // made before the pull.
    let (predictive, _) = run(false);
    assert_eq!(predictive, (0, 2));
}

#[test]
fn sweep_finds_the_smallest_configuration() {
    let s = small("synthetic", "");
    let sweep = shoal_simulations::sweep(&s, RunOptions::default()).unwrap();
    assert_eq!(sweep.points.len(), 6);
    let best = sweep
        .smallest
        .as_ref()
        .expect("some configuration of the sweep meets the targets");
    assert!(best.meets_targets);
    assert!(best.offload >= s.targets.min_offload, "{best:?}");
    assert!(
        best.p99_pull_secs <= s.targets.max_p99_pull_secs,
        "{best:?}"
    );
    for p in sweep.points.iter().filter(|p| p.meets_targets) {
        assert!(p.total_disk_tb >= best.total_disk_tb);
    }
    // Not every configuration meets them, or the sweep would show nothing.
    assert!(sweep.points.iter().any(|p| !p.meets_targets));
    let dir = tempfile::tempdir().unwrap();
    report::write_sweep(dir.path(), &sweep).unwrap();
    assert!(std::fs::read_to_string(dir.path().join("sweep.md"))
        .unwrap()
        .contains("nodes/region"));
}
