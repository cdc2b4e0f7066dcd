//! Topology: regions, nodes with disk budgets, and the links between them.
//!
//! Links are modelled per region, at flow level: each region has one internal
//! link (its LAN, shared by all transfers between its nodes), one link to the
//! origin, and one directed link to every other region. RTTs between regions
//! follow the distance between their positions.

use shoal_policy::proximity::DistanceMatrix;
use shoal_policy::{NodeId, RegionId};

use crate::scenario::TopologyConfig;

/// A link's index in [`Topology::link_capacity`].
pub type LinkId = usize;

/// The modelled network.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Region names.
    pub region_names: Vec<String>,
    /// Region of each node.
    pub node_region: Vec<RegionId>,
    /// Nodes of each region.
    pub region_nodes: Vec<Vec<NodeId>>,
    /// Disk of each node in bytes.
    pub node_disk: Vec<u64>,
    /// RTTs.
    pub distances: DistanceMatrix,
    /// Other regions of each region, nearest first.
    pub by_distance: Vec<Vec<RegionId>>,
    /// Capacity of each link in bytes per second.
    pub link_capacity: Vec<f64>,
    /// UTC offset of each region in hours.
    pub utc_offset_hours: Vec<f64>,
    lan_rtt_ms: f64,
}

impl Topology {
    /// Builds the topology; `nodes_per_region` and `disk_gb` override the
    /// config (for sweeps).
    pub fn build(
        config: &TopologyConfig,
        nodes_per_region: Option<u32>,
        disk_gb: Option<f64>,
    ) -> Topology {
        let n = config.regions.len();
        let disk = (disk_gb.unwrap_or(config.disk_gb_per_node) * 1e9) as u64;
        let mut node_region = Vec::new();
        let mut region_nodes = Vec::new();
        for (r, region) in config.regions.iter().enumerate() {
            let count = nodes_per_region.unwrap_or(region.nodes);
            let mut ids = Vec::new();
            for _ in 0..count {
                ids.push(NodeId(node_region.len() as u32));
                node_region.push(RegionId(r as u16));
            }
            region_nodes.push(ids);
        }
        let rtt: Vec<Vec<f64>> = config
            .regions
            .iter()
            .enumerate()
            .map(|(a, ra)| {
                config
                    .regions
                    .iter()
                    .enumerate()
                    .map(|(b, rb)| {
                        if a == b {
                            config.lan_rtt_ms
                        } else {
                            let km =
                                ((ra.x_km - rb.x_km).powi(2) + (ra.y_km - rb.y_km).powi(2)).sqrt();
                            config.base_rtt_ms + km / 100.0 * config.rtt_ms_per_100km
                        }
                    })
                    .collect()
            })
            .collect();
        let origin: Vec<f64> = config.regions.iter().map(|r| r.origin_rtt_ms).collect();
        let distances =
            DistanceMatrix::new(&rtt, &origin).expect("validated scenario gives a valid matrix");
        let by_distance = (0..n)
            .map(|a| {
                let mut others: Vec<usize> = (0..n).filter(|&b| b != a).collect();
                others.sort_by(|&x, &y| rtt[a][x].total_cmp(&rtt[a][y]).then(x.cmp(&y)));
                others.into_iter().map(|b| RegionId(b as u16)).collect()
            })
            .collect();
        let bps = |gbps: f64| gbps * 1e9 / 8.0;
        let mut link_capacity = vec![bps(config.lan_gbps); n];
        link_capacity.extend(std::iter::repeat_n(bps(config.wan_gbps), n * n));
        link_capacity.extend(std::iter::repeat_n(bps(config.origin_gbps), n));
        Topology {
            region_names: config.regions.iter().map(|r| r.name.clone()).collect(),
            node_disk: vec![disk; node_region.len()],
            node_region,
            region_nodes,
            distances,
            by_distance,
            link_capacity,
            utc_offset_hours: config.regions.iter().map(|r| r.utc_offset_hours).collect(),
            lan_rtt_ms: config.lan_rtt_ms,
        }
    }

    /// Number of regions.
    pub fn regions(&self) -> usize {
        self.region_names.len()
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.node_region.len()
    }

    /// The LAN link of a region.
    pub fn lan(&self, r: RegionId) -> LinkId {
        usize::from(r.0)
    }

    /// The directed link from region `from` to region `to`.
    pub fn wan(&self, from: RegionId, to: RegionId) -> LinkId {
        let n = self.regions();
        n + usize::from(from.0) * n + usize::from(to.0)
    }

    /// The origin's link into a region.
    pub fn origin_link(&self, r: RegionId) -> LinkId {
        let n = self.regions();
        n + n * n + usize::from(r.0)
    }

    /// RTT inside a region, seconds.
    pub fn lan_rtt_secs(&self) -> f64 {
        self.lan_rtt_ms / 1000.0
    }
}
