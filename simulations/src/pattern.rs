//! Pattern workloads: access patterns chosen to test a policy where it is
//! weakest, rather than to look like any one real network.
//!
//! `kind = "pattern"` builds a pool of `pattern_images` images (each a shared
//! base layer, one of ten, and `pattern_layers_per_image - 1` layers of its
//! own, sizes log-normal around `synthetic_mean_layer_mb`) and pulls them at
//! `pulls_per_hour` (Poisson, nodes uniform) in one of these patterns:
//!
//! * `uniform`: every pull picks an image uniformly from the whole pool, so
//!   with a pool much larger than a disk nearly every pull is a one-off and
//!   forecasts carry no information.
//! * `scan`: every node walks the pool in order, again and again: the
//!   classic loop that LRU never hits on when the pool exceeds the disk.
//! * `stable`: a fixed popular set (`pattern_popular_images`, Zipf with
//!   `zipf_exponent`): frequency-heavy.
//! * `recency`: the hot image moves on steadily through the pool (a new one
//!   every `duration / pattern_images`), pulls favour the newest ones
//!   (geometrically), a fifth are one-off images and rollouts pull a new image
//!   on many nodes at once: recency-heavy.
//! * `switch`: `stable` for the first half of the run, `recency` (over other
//!   images) for the second.
//!
//! Everything is a function of the seed.

use shoal_policy::{LayerId, NodeId};

use crate::rng::{Rng, WeightedPicker};
use crate::scenario::WorkloadConfig;
use crate::topology::Topology;
use crate::workload::{Event, EventKind, Version, Workload, WorkloadError};

/// The patterns `workload.pattern` may name.
pub const PATTERNS: [&str; 5] = ["uniform", "scan", "stable", "recency", "switch"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    Uniform,
    Scan,
    Stable,
    Recency,
}

/// Builds a pattern workload.
pub fn build(
    config: &WorkloadConfig,
    topology: &Topology,
    duration_secs: f64,
    seed: u64,
) -> Result<Workload, WorkloadError> {
    let name = config.pattern.as_deref().unwrap_or("uniform");
    if !PATTERNS.contains(&name) {
        return Err(WorkloadError::Empty(format!(
            "workload.pattern {name:?} is not one of {PATTERNS:?}"
        )));
    }
    let images = config.pattern_images.max(1) as usize;
    let per_image = config.pattern_layers_per_image.clamp(1, 100) as usize;
    let mut rng = Rng::derive(seed, 21);
    let mean = config.synthetic_mean_layer_mb * 1e6;
    let mut layer_sizes: Vec<u64> = Vec::new();
    let mut new_layer = |rng: &mut Rng, scale: f64| {
        let size = match config.synthetic_fixed_layer_bytes {
            Some(b) => b,
            None => ((mean * scale) * (1.0 * rng.normal() - 0.5).exp()).clamp(200.0, 2e9) as u64,
        };
        layer_sizes.push(size);
        LayerId(layer_sizes.len() as u32 - 1)
    };
    let bases: Vec<LayerId> = (0..10).map(|_| new_layer(&mut rng, 3.0)).collect();
    let mut tags = Vec::with_capacity(images);
    let mut versions = Vec::with_capacity(images);
    for i in 0..images {
        let mut layers = vec![bases[rng.below(bases.len() as u64) as usize]];
        for _ in 1..per_image {
            layers.push(new_layer(&mut rng, 1.0));
        }
        tags.push(format!("pattern/image{i}:latest"));
        versions.push(Version {
            tag: i as u32,
            layers,
        });
    }
    let nodes = topology.nodes();
    if nodes == 0 {
        return Err(WorkloadError::Empty("no nodes".into()));
    }
    let popular = (config.pattern_popular_images.max(1) as usize).min(images);
    let zipf: Vec<f64> = (0..popular)
        .map(|r| 1.0 / ((r + 1) as f64).powf(config.zipf_exponent))
        .collect();
    let zipf = WeightedPicker::new(&zipf).expect("positive weights");
    let mut scan_cursor = vec![0usize; nodes];
    let mut pull_rng = Rng::derive(seed, 22);
    let rate = config.pulls_per_hour / 3600.0;
    let mut events = Vec::new();
    let mut t = 0.0;
    // Images a `recency` phase may use: all of them, or those after the
    // popular set when it follows a `stable` phase.
    let recency_pool = |switching: bool| {
        if switching && images > popular {
            (popular, images - popular)
        } else {
            (0, images)
        }
    };
    loop {
        t += pull_rng.exp(rate);
        if t >= duration_secs {
            break;
        }
        let node = pull_rng.below(nodes as u64) as usize;
        let (pattern, switching) = match name {
            "uniform" => (Pattern::Uniform, false),
            "scan" => (Pattern::Scan, false),
            "stable" => (Pattern::Stable, false),
            "recency" => (Pattern::Recency, false),
            _ if t < duration_secs / 2.0 => (Pattern::Stable, true),
            _ => (Pattern::Recency, true),
        };
        let image = match pattern {
            Pattern::Uniform => pull_rng.below(images as u64) as usize,
            Pattern::Scan => {
                let i = scan_cursor[node];
                scan_cursor[node] = (i + 1) % images;
                i
            }
            Pattern::Stable => zipf.pick(&mut pull_rng),
            Pattern::Recency => {
                let (first, len) = recency_pool(switching);
                let (start, span) = if switching {
                    (duration_secs / 2.0, duration_secs / 2.0)
                } else {
                    (0.0, duration_secs)
                };
                let newest = (((t - start) / span * len as f64) as usize).min(len - 1);
                if pull_rng.f64() < 0.2 {
                    first + pull_rng.below(len as u64) as usize
                } else {
                    // Geometric age: the newest image half the time, the one
                    // before a quarter, and so on.
                    let mut age = 0;
                    while age < newest && pull_rng.f64() < 0.5 {
                        age += 1;
                    }
                    first + newest - age
                }
            }
        };
        events.push(Event {
            time: t,
            kind: EventKind::Pull {
                node: NodeId(node as u32),
                version: image as u32,
            },
        });
        // Rollouts: now and then the newest image lands on many nodes at once.
        if pattern == Pattern::Recency && pull_rng.f64() < 0.02 {
            let share = config.rollout_fraction.clamp(0.0, 1.0);
            for other in 0..nodes {
                if other != node && pull_rng.f64() < share {
                    let at = t + pull_rng.f64() * config.rollout_minutes * 60.0;
                    if at < duration_secs {
                        events.push(Event {
                            time: at,
                            kind: EventKind::Pull {
                                node: NodeId(other as u32),
                                version: image as u32,
                            },
                        });
                    }
                }
            }
        }
    }
    events.sort_by(|a, b| a.time.total_cmp(&b.time));
    if events.is_empty() {
        return Err(WorkloadError::Empty(
            "the pattern produced no pulls".to_string(),
        ));
    }
    Ok(Workload {
        layer_sizes,
        tags,
        versions,
        events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    fn scenario(pattern: &str) -> Scenario {
        Scenario::parse(&format!(
            r#"
name = "p"
duration_hours = 4
[topology]
disk_gb_per_node = 1
regions = [{{ name = "a", nodes = 3, x_km = 0, y_km = 0, origin_rtt_ms = 50 }}]
[workload]
kind = "pattern"
pattern = "{pattern}"
pulls_per_hour = 300
pattern_images = 50
pattern_popular_images = 5
"#
        ))
        .unwrap()
    }

    fn images_pulled(pattern: &str) -> Vec<u32> {
        let s = scenario(pattern);
        let topology = Topology::build(&s.topology, None, None);
        let w = build(&s.workload, &topology, 4.0 * 3600.0, s.seed).unwrap();
        w.events
            .iter()
            .map(|e| match e.kind {
                EventKind::Pull { version, .. } => version,
                _ => unreachable!("pattern workloads only pull"),
            })
            .collect()
    }

    #[test]
    fn stable_stays_in_the_popular_set_and_uniform_spreads() {
        assert!(images_pulled("stable").iter().all(|&v| v < 5));
        let mut u = images_pulled("uniform");
        u.sort_unstable();
        u.dedup();
        assert!(u.len() > 40);
    }

    #[test]
    fn switch_moves_from_the_popular_set_to_other_images() {
        let v = images_pulled("switch");
        let half = v.len() / 2;
        assert!(v[..half / 2].iter().all(|&i| i < 5));
        assert!(v[v.len() - half / 2..].iter().filter(|&&i| i >= 5).count() > half / 4);
    }

    #[test]
    fn same_seed_same_workload() {
        assert_eq!(images_pulled("recency"), images_pulled("recency"));
    }
}
