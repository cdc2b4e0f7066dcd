//! Simulator traces and catalogs (`shoal_simulations::workload::{read_trace, load_catalog}`), one
//! JSON object per line, read from a file as `shoal-sim` does. What reads is consistent: every
//! event and version names layers that exist.

use shoal_simulations::scenario::Scenario;
use shoal_simulations::topology::Topology;
use shoal_simulations::workload::{load_catalog, read_trace};

const TOPOLOGY: &str = r#"
name = "fuzz"
duration_hours = 1
[topology]
disk_gb_per_node = 2
wan_gbps = 1
origin_gbps = 1
regions = [
  { name = "eu", nodes = 2, x_km = 0, y_km = 0, origin_rtt_ms = 30, utc_offset_hours = 0 },
  { name = "us", nodes = 1, x_km = 6000, y_km = 0, origin_rtt_ms = 90, utc_offset_hours = -5 },
]
[workload]
kind = "pattern"
pattern = "uniform"
pulls_per_hour = 120
synthetic_mean_layer_mb = 30
pattern_images = 50
"#;

/// The first byte picks trace (even) or catalog (odd); the rest is the file.
pub fn check(data: &[u8]) {
    let Some((&selector, file)) = data.split_first() else {
        return;
    };
    let path = std::env::temp_dir().join(format!("shoal-fuzz-trace-{}.jsonl", std::process::id()));
    std::fs::write(&path, file).expect("writing the trace to the temporary directory");
    if selector % 2 == 0 {
        let scenario = Scenario::parse(TOPOLOGY).expect("the fixed topology parses");
        let topology = Topology::build(&scenario.topology, None, None);
        if let Ok(workload) = read_trace(&path, &topology, 3600.0, 1) {
            for version in &workload.versions {
                for layer in &version.layers {
                    assert!((layer.0 as usize) < workload.layer_sizes.len());
                }
            }
        }
    } else if let Ok(catalog) = load_catalog(&path) {
        assert_eq!(catalog.history.len(), catalog.tags.len());
        for version in &catalog.versions {
            for layer in &version.layers {
                assert!((layer.0 as usize) < catalog.layer_sizes.len());
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}
