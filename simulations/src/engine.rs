//! Engine: the discrete-event loop that runs one policy over the modelled
//! network and workload, driving the policy engine exactly as a node would.
//!
//! Events are the workload's (already sorted) plus a queue of internal ones
//! (transfer finishes, plan ticks, disk samples) in a binary heap keyed by
//! `(time, sequence number)`, so ties resolve the same way every run.
//!
//! # What a pull does
//!
//! A node pulls an image: the manifest costs one RTT to the origin; every
//! distinct layer is then served from the first of: the node's own store
//! (local hit); a transfer already under way to this node (joined); a node of
//! the same region that holds it or is fetching it (peers advertise content
//! still being pulled); the nearest other region that holds it; the origin.
//! Transfers run in parallel and share link bandwidth ([`crate::network`]);
//! a layer is ready one RTT after its transfer ends and the pull ends when its
//! last layer is ready. A fetched layer is stored, evicting by the node's
//! [`EvictionPolicy`] down to 95% of the disk when the disk is full.
//!
//! # The predictive policy
//!
//! With `predictive`, every node runs [`Predictive`] eviction, each region's
//! pulls feed a regional [`UsageTracker`], and every plan interval the engine
//! forecasts demand, builds the [`plan_replication`] plan (the copies it
//! places become protected: eviction never takes them), starts the pre-cache
//! transfers the plan implies, refreshes the eviction signals and steps every
//! layer's [`lifecycle`](shoal_policy::lifecycle) state. When a tag gets a new
//! version, its layers are pre-placed in the regions where the previous
//! version is in demand. When a predictive node evicts, each candidate is
//! marked spare when another node of its region holds the layer and is its
//! keeper ([`cooperative`]): the simulator knows every holder exactly. The
//! baselines (`lru`, `lfu`, `min`) only cache on demand and ignore spares.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;

use hdrhistogram::Histogram;
use serde::Serialize;
use shoal_policy::cooperative;
use shoal_policy::eviction::{
    BeladyMin, CandidateLayer, EvictionPolicy, LayerSignals, Lfu, Lru, Predictive,
};
use shoal_policy::lifecycle::{next_state, LayerFacts, LifecycleState};
use shoal_policy::plan::{plan_replication, PlanLayer, PlanNode};
use shoal_policy::precache::{
    self, PrecacheBudget, PrecacheCandidate, PrecacheLedger, TransferPath,
};
use shoal_policy::priority::usage_score;
use shoal_policy::threat::combine_scores;
use shoal_policy::usage::UsageTracker;
use shoal_policy::{LayerId, NodeId, RegionId, Timestamp};

use crate::network::{Network, NextFinish, Ordered};
use crate::scenario::PolicySettings;
use crate::topology::Topology;
use crate::workload::{EventKind, Workload};

/// Where a layer request was served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Source {
    /// The node's own store.
    Local,
    /// A node of the same region.
    SameRegion,
    /// A node of another region.
    OtherRegion,
    /// The origin registry.
    Origin,
}

const SOURCES: [Source; 4] = [
    Source::Local,
    Source::SameRegion,
    Source::OtherRegion,
    Source::Origin,
];

/// Requests and bytes per source.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SourceCounts {
    /// Layer requests.
    pub requests: [u64; 4],
    /// Bytes.
    pub bytes: [u64; 4],
}

/// What was served and fetched after a split time.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SplitCounts {
    /// Layer requests and bytes by source.
    pub served: SourceCounts,
    /// Bytes the origin sent (demand and pre-cache).
    pub origin_egress_bytes: u64,
}

/// Disk use across nodes at one time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskSample {
    /// Hours since the start.
    pub hour: f64,
    /// Mean fraction of disk used over nodes.
    pub mean_fraction: f64,
    /// Highest fraction over nodes.
    pub max_fraction: f64,
}

/// The outcome of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunResult {
    /// Policy name.
    pub policy: String,
    /// Nodes simulated.
    pub nodes: usize,
    /// Disk per node, bytes.
    pub disk_bytes_per_node: u64,
    /// Pulls completed.
    pub pulls: u64,
    /// Pulls that needed nothing from the origin.
    pub pulls_without_origin: u64,
    /// Layer requests by source.
    pub served: SourceCounts,
    /// Bytes the origin sent (demand and pre-cache).
    pub origin_egress_bytes: u64,
    /// Bytes moved by pre-cache (replication) transfers.
    pub replication_bytes: u64,
    /// Of those, bytes that came from the origin.
    pub replication_from_origin_bytes: u64,
    /// Of the replication bytes, those that pre-placed new versions of tags.
    pub new_version_bytes: u64,
    /// Pull time percentiles in seconds: p50, p90, p99, p99.9, max.
    pub pull_secs: [f64; 5],
    /// Mean pull time in seconds.
    pub mean_pull_secs: f64,
    /// Layers evicted.
    pub evictions: u64,
    /// Layers not stored because eviction could not make room.
    pub not_stored: u64,
    /// Replication plans computed.
    pub plans: u64,
    /// Bytes moved between regions (demand and pre-cache).
    pub inter_region_bytes: u64,
    /// Pre-cache bytes later served to a request (from the copy, or joined
    /// while it was still arriving), counted once per copy.
    pub precache_hit_bytes: u64,
    /// Pre-cache bytes evicted before any request reached them.
    pub precache_wasted_bytes: u64,
    /// Pre-cache bytes still held, unrequested, at the end of the run.
    pub precache_unused_at_end_bytes: u64,
    /// Pre-cache copies the plan wanted that did not pay and were skipped.
    pub precache_rejected: u64,
    /// Bytes an LRU shadow of each node's size would have served locally
    /// (predictive only; the guard's reference).
    pub shadow_lru_hit_bytes: u64,
    /// Mean lean of the nodes' guards at the end (0 = LRU order, 1 = value
    /// order; predictive only).
    pub final_mean_lean: f64,
    /// The same counts from [`RunOptions::split_at_secs`] on (all zero
    /// without a split).
    pub after_split: SplitCounts,
    /// Layers in each lifecycle state at the end (predictive only).
    pub lifecycle: BTreeMap<String, u64>,
    /// Disk use over time.
    pub disk: Vec<DiskSample>,
    /// Bytes used per node at every sample (rows = samples).
    #[serde(skip)]
    pub disk_per_node: Vec<Vec<u64>>,
}

impl RunResult {
    /// Fraction of layer requests served from `source`.
    pub fn fraction(&self, source: Source) -> f64 {
        let total: u64 = self.served.requests.iter().sum();
        if total == 0 {
            return 0.0;
        }
        self.served.requests[source as usize] as f64 / total as f64
    }

    /// Share of requested bytes served without the origin.
    pub fn byte_share_without_origin(&self) -> f64 {
        let total: u64 = self.served.bytes.iter().sum();
        if total == 0 {
            return 1.0;
        }
        1.0 - self.served.bytes[Source::Origin as usize] as f64 / total as f64
    }

    /// Bytes crossing the WAN: origin egress plus inter-region transfers,
    /// pre-cache included.
    pub fn wan_bytes(&self) -> u64 {
        self.origin_egress_bytes + self.inter_region_bytes
    }

    /// Wasted pre-cache bytes as a share of pre-cache bytes (0 without
    /// pre-cache).
    pub fn precache_waste_share(&self) -> f64 {
        if self.replication_bytes == 0 {
            return 0.0;
        }
        self.precache_wasted_bytes as f64 / self.replication_bytes as f64
    }

    /// Fraction of pulls that needed nothing from the origin.
    pub fn offload(&self) -> f64 {
        if self.pulls == 0 {
            return 1.0;
        }
        self.pulls_without_origin as f64 / self.pulls as f64
    }
}

/// Which policy a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// Forecast-driven plan and eviction.
    Predictive,
    /// Least recently used.
    Lru,
    /// Least frequently used.
    Lfu,
    /// Belady's MIN (knows the future).
    Min,
}

impl PolicyKind {
    /// Parses a policy name.
    pub fn parse(name: &str) -> Option<PolicyKind> {
        match name {
            "predictive" => Some(PolicyKind::Predictive),
            "lru" => Some(PolicyKind::Lru),
            "lfu" => Some(PolicyKind::Lfu),
            "min" => Some(PolicyKind::Min),
            _ => None,
        }
    }

    /// The policy's name.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Predictive => "predictive",
            PolicyKind::Lru => "lru",
            PolicyKind::Lfu => "lfu",
            PolicyKind::Min => "min",
        }
    }
}

enum NodePolicy {
    Predictive(Box<Predictive>),
    Other(Box<dyn EvictionPolicy>),
}

impl NodePolicy {
    fn get(&mut self) -> &mut dyn EvictionPolicy {
        match self {
            NodePolicy::Predictive(p) => p.as_mut(),
            NodePolicy::Other(p) => p.as_mut(),
        }
    }
}

struct Node {
    region: RegionId,
    capacity: u64,
    used: u64,
    stored: BTreeSet<LayerId>,
    inflight: BTreeMap<LayerId, u32>,
    required: BTreeSet<LayerId>,
    /// Copies that arrived by pre-cache and have served no request yet.
    precached: BTreeSet<LayerId>,
    /// Bytes this node's pulls requested since the last plan.
    demand_bytes: u64,
    policy: NodePolicy,
}

struct Flow {
    node: u32,
    layer: LayerId,
    source: Source,
    rtt: f64,
    waiters: Vec<u32>,
    /// Started ahead of demand and no request has joined it yet.
    precache: bool,
}

struct Pull {
    start: f64,
    remaining: u32,
    ready: f64,
    origin: bool,
}

/// What pre-cache copies to one node would push out, in that node's
/// eviction order, consumed as copies are accepted during one interval.
struct Displacement {
    free: u64,
    /// (size, expected hits per byte) of the node's layers, first to go first.
    order: Vec<(u64, f64)>,
    next: usize,
}

impl Displacement {
    /// Expected hits per byte of what `size` more bytes would displace: 0 in
    /// free space, else the byte-weighted value of the next victims.
    fn displaced_hits(&self, size: u64) -> f64 {
        let mut need = size.saturating_sub(self.free);
        if need == 0 {
            return 0.0;
        }
        let total = need as f64;
        let mut weighted = 0.0;
        for &(s, v) in &self.order[self.next.min(self.order.len())..] {
            let take = s.min(need);
            weighted += take as f64 * v;
            need -= take;
            if need == 0 {
                break;
            }
        }
        // Bytes that cannot be freed at all make the copy worthless.
        if need > 0 {
            return f64::INFINITY;
        }
        weighted / total
    }

    /// Accounts for a copy of `size` bytes accepted.
    fn commit(&mut self, size: u64) {
        let mut need = size;
        let from_free = need.min(self.free);
        self.free -= from_free;
        need -= from_free;
        while need > 0 && self.next < self.order.len() {
            let s = self.order[self.next].0;
            need = need.saturating_sub(s);
            self.next += 1;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Internal {
    LinkFinish { link: usize, generation: u64 },
    Plan,
    Sample,
}

/// Run-time options that are not part of the scenario.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Print progress to stderr.
    pub progress: bool,
    /// Also count requests and origin egress from this simulated second on
    /// ([`RunResult::after_split`]), to compare the parts of a workload that
    /// changes midway.
    pub split_at_secs: Option<f64>,
}

/// One run of one policy.
pub struct Simulation<'a> {
    topology: &'a Topology,
    workload: &'a Workload,
    settings: &'a PolicySettings,
    kind: PolicyKind,
    duration: f64,
    nodes: Vec<Node>,
    net: Network,
    queue: BinaryHeap<Reverse<(Ordered, u64, Internal)>>,
    seq: u64,
    flows: Vec<Flow>,
    free_flows: Vec<u32>,
    pulls: Vec<Pull>,
    free_pulls: Vec<u32>,
    /// Holders per layer per region: `copies[layer * regions + region]`.
    copies: Vec<u32>,
    /// Transfers under way into each region, same layout.
    pending: Vec<u32>,
    holders: Vec<Vec<NodeId>>,
    trackers: Vec<UsageTracker>,
    threat_findings: BTreeMap<LayerId, Vec<f64>>,
    lifecycle: BTreeMap<LayerId, LifecycleState>,
    tag_current: Vec<Option<u32>>,
    references: Vec<u32>,
    split_at: f64,
    /// Pre-cache bytes the current interval may still start.
    precache_budget: PrecacheBudget,
    ledger: PrecacheLedger,
    hist: Histogram<u64>,
    result: RunResult,
}

fn ts(t: f64) -> Timestamp {
    Timestamp(t.max(0.0) as u64)
}

impl<'a> Simulation<'a> {
    /// Prepares a run.
    pub fn new(
        topology: &'a Topology,
        workload: &'a Workload,
        settings: &'a PolicySettings,
        kind: PolicyKind,
        duration: f64,
    ) -> Self {
        let regions = topology.regions();
        let layers = workload.layer_sizes.len();
        let mut future: Vec<Vec<(Timestamp, LayerId)>> = vec![
            Vec::new();
            if kind == PolicyKind::Min {
                topology.nodes()
            } else {
                0
            }
        ];
        if kind == PolicyKind::Min {
            for e in &workload.events {
                if let EventKind::Pull { node, version } = e.kind {
                    let mut seen: Vec<LayerId> = Vec::new();
                    for &l in &workload.versions[version as usize].layers {
                        if !seen.contains(&l) {
                            seen.push(l);
                            future[node.0 as usize].push((ts(e.time), l));
                        }
                    }
                }
            }
        }
        let mut future = future.into_iter();
        let nodes = (0..topology.nodes())
            .map(|n| Node {
                region: topology.node_region[n],
                capacity: topology.node_disk[n],
                used: 0,
                stored: BTreeSet::new(),
                inflight: BTreeMap::new(),
                required: BTreeSet::new(),
                precached: BTreeSet::new(),
                demand_bytes: 0,
                policy: match kind {
                    PolicyKind::Predictive => NodePolicy::Predictive(Box::new(
                        Predictive::with_capacity(settings.eviction.clone(), topology.node_disk[n]),
                    )),
                    PolicyKind::Lru => NodePolicy::Other(Box::new(Lru::new())),
                    PolicyKind::Lfu => NodePolicy::Other(Box::new(Lfu::new())),
                    PolicyKind::Min => NodePolicy::Other(Box::new(BeladyMin::new(
                        future.next().unwrap_or_default(),
                    ))),
                },
            })
            .collect();
        Simulation {
            topology,
            workload,
            settings,
            kind,
            duration,
            nodes,
            net: Network::new(&topology.link_capacity),
            queue: BinaryHeap::new(),
            seq: 0,
            flows: Vec::new(),
            free_flows: Vec::new(),
            pulls: Vec::new(),
            free_pulls: Vec::new(),
            copies: vec![0; layers * regions],
            pending: vec![0; layers * regions],
            holders: vec![Vec::new(); layers],
            trackers: (0..regions)
                .map(|_| UsageTracker::new(settings.eviction.usage.clone()))
                .collect(),
            threat_findings: BTreeMap::new(),
            lifecycle: BTreeMap::new(),
            tag_current: vec![None; workload.tags.len()],
            references: vec![0; layers],
            split_at: f64::INFINITY,
            precache_budget: PrecacheBudget::for_interval(&settings.precache, 0, 0.0),
            ledger: PrecacheLedger::default(),
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
            result: RunResult {
                policy: kind.name().to_string(),
                nodes: topology.nodes(),
                disk_bytes_per_node: topology.node_disk.first().copied().unwrap_or(0),
                pulls: 0,
                pulls_without_origin: 0,
                served: SourceCounts::default(),
                origin_egress_bytes: 0,
                replication_bytes: 0,
                replication_from_origin_bytes: 0,
                new_version_bytes: 0,
                pull_secs: [0.0; 5],
                mean_pull_secs: 0.0,
                evictions: 0,
                not_stored: 0,
                plans: 0,
                inter_region_bytes: 0,
                precache_hit_bytes: 0,
                precache_wasted_bytes: 0,
                precache_unused_at_end_bytes: 0,
                precache_rejected: 0,
                shadow_lru_hit_bytes: 0,
                final_mean_lean: 0.0,
                after_split: SplitCounts::default(),
                lifecycle: BTreeMap::new(),
                disk: Vec::new(),
                disk_per_node: Vec::new(),
            },
        }
    }

    fn schedule(&mut self, time: f64, what: Internal) {
        self.seq += 1;
        self.queue.push(Reverse((Ordered(time), self.seq, what)));
    }

    fn schedule_finish(&mut self, link: usize, next: Option<NextFinish>) {
        if let Some(n) = next {
            self.schedule(
                n.time,
                Internal::LinkFinish {
                    link,
                    generation: n.generation,
                },
            );
        }
    }

    /// Runs to the end and returns the result.
    pub fn run(mut self, options: RunOptions) -> RunResult {
        self.split_at = options.split_at_secs.unwrap_or(f64::INFINITY);
        let sample_every = 3600.0;
        self.schedule(0.0, Internal::Sample);
        if self.kind == PolicyKind::Predictive {
            self.schedule(self.settings.plan_interval_minutes * 60.0, Internal::Plan);
        }
        let events = &self.workload.events;
        let mut next_event = 0usize;
        let step = (events.len() / 20).max(1);
        loop {
            let internal_time = self.queue.peek().map(|Reverse((t, _, _))| t.0);
            let event_time = events.get(next_event).map(|e| e.time);
            let take_event = match (event_time, internal_time) {
                (None, None) => break,
                (Some(e), Some(i)) => e <= i,
                (Some(_), None) => true,
                (None, Some(_)) => false,
            };
            if take_event {
                let e = &events[next_event];
                next_event += 1;
                if options.progress && next_event.is_multiple_of(step) {
                    eprintln!(
                        "  {}: {}% of events, simulated {:.1} h",
                        self.kind.name(),
                        next_event * 100 / events.len(),
                        e.time / 3600.0
                    );
                }
                match &e.kind {
                    EventKind::Pull { node, version } => self.pull(e.time, *node, *version),
                    EventKind::Publish { version } => self.publish(e.time, *version),
                    EventKind::Disclose { layers, score } => {
                        for l in layers {
                            self.threat_findings.entry(*l).or_default().push(*score);
                        }
                    }
                }
                continue;
            }
            let Some(Reverse((Ordered(t), _, what))) = self.queue.pop() else {
                break;
            };
            match what {
                Internal::LinkFinish { link, generation } => {
                    let (done, next) = self.net.finish(link, t, generation);
                    self.schedule_finish(link, next);
                    for f in done {
                        self.flow_done(t, f);
                    }
                }
                Internal::Plan => {
                    self.plan(t);
                    let next = t + self.settings.plan_interval_minutes * 60.0;
                    if next < self.duration {
                        self.schedule(next, Internal::Plan);
                    }
                }
                Internal::Sample => {
                    self.sample(t);
                    if t + sample_every <= self.duration {
                        self.schedule(t + sample_every, Internal::Sample);
                    }
                }
            }
        }
        self.finish()
    }

    fn finish(mut self) -> RunResult {
        self.result.precache_hit_bytes = self.ledger.hit_bytes;
        self.result.precache_wasted_bytes = self.ledger.wasted_bytes;
        let mut leans = Vec::new();
        for n in &self.nodes {
            self.result.precache_unused_at_end_bytes += n
                .precached
                .iter()
                .map(|l| self.workload.layer_sizes[l.0 as usize])
                .sum::<u64>();
            if let NodePolicy::Predictive(p) = &n.policy {
                leans.push(p.lean());
                if let Some(g) = p.guard() {
                    self.result.shadow_lru_hit_bytes += g.totals().shadow_hit_bytes;
                }
            }
        }
        if !leans.is_empty() {
            self.result.final_mean_lean = leans.iter().sum::<f64>() / leans.len() as f64;
        }
        let h = &self.hist;
        let secs = |v: u64| v as f64 / 1e6;
        if !h.is_empty() {
            self.result.pull_secs = [
                secs(h.value_at_quantile(0.5)),
                secs(h.value_at_quantile(0.9)),
                secs(h.value_at_quantile(0.99)),
                secs(h.value_at_quantile(0.999)),
                secs(h.max()),
            ];
            self.result.mean_pull_secs = h.mean() / 1e6;
        }
        for state in self.lifecycle.values() {
            let name = match state {
                LifecycleState::Active => "active",
                LifecycleState::Warm => "warm",
                LifecycleState::Cold => "cold",
                LifecycleState::PendingDeletion { .. } => "pending_deletion",
                LifecycleState::Deleted => "deleted",
            };
            *self.result.lifecycle.entry(name.to_string()).or_insert(0) += 1;
        }
        self.result
    }

    fn sample(&mut self, t: f64) {
        let fractions: Vec<f64> = self
            .nodes
            .iter()
            .map(|n| n.used as f64 / n.capacity.max(1) as f64)
            .collect();
        let mean = fractions.iter().sum::<f64>() / fractions.len().max(1) as f64;
        let max = fractions.iter().copied().fold(0.0, f64::max);
        self.result.disk.push(DiskSample {
            hour: t / 3600.0,
            mean_fraction: mean,
            max_fraction: max,
        });
        self.result
            .disk_per_node
            .push(self.nodes.iter().map(|n| n.used).collect());
    }

    fn idx(&self, layer: LayerId, region: RegionId) -> usize {
        layer.0 as usize * self.topology.regions() + usize::from(region.0)
    }

    /// Picks where a transfer of `layer` into `region` comes from.
    fn source_for(&self, layer: LayerId, region: RegionId) -> (Source, usize, f64) {
        let i = self.idx(layer, region);
        if self.copies[i] > 0 || self.pending[i] > 0 {
            return (
                Source::SameRegion,
                self.topology.lan(region),
                self.topology.lan_rtt_secs(),
            );
        }
        for &other in &self.topology.by_distance[usize::from(region.0)] {
            let j = self.idx(layer, other);
            if self.copies[j] > 0 || self.pending[j] > 0 {
                let rtt = self.topology.distances.rtt(other, region) / 1000.0;
                // Only worth it when nearer than the origin.
                if rtt <= self.topology.distances.origin_rtt(region) / 1000.0 {
                    return (Source::OtherRegion, self.topology.wan(other, region), rtt);
                }
                break;
            }
        }
        (
            Source::Origin,
            self.topology.origin_link(region),
            self.topology.distances.origin_rtt(region) / 1000.0,
        )
    }

    fn start_flow(
        &mut self,
        t: f64,
        node: u32,
        layer: LayerId,
        replication: bool,
    ) -> (u32, Source) {
        let region = self.nodes[node as usize].region;
        let (source, link, rtt) = self.source_for(layer, region);
        let size = self.workload.layer_sizes[layer.0 as usize];
        let flow = Flow {
            node,
            layer,
            source,
            rtt,
            waiters: Vec::new(),
            precache: replication,
        };
        let id = match self.free_flows.pop() {
            Some(id) => {
                self.flows[id as usize] = flow;
                id
            }
            None => {
                self.flows.push(flow);
                self.flows.len() as u32 - 1
            }
        };
        let i = self.idx(layer, region);
        self.pending[i] += 1;
        self.nodes[node as usize].inflight.insert(layer, id);
        if source == Source::Origin {
            self.result.origin_egress_bytes += size;
            if t >= self.split_at {
                self.result.after_split.origin_egress_bytes += size;
            }
        }
        if source == Source::OtherRegion {
            self.result.inter_region_bytes += size;
        }
        if replication {
            self.result.replication_bytes += size;
            if source == Source::Origin {
                self.result.replication_from_origin_bytes += size;
            }
        }
        let next = self.net.start(link, t, id, size);
        self.schedule_finish(link, next);
        (id, source)
    }

    fn pull(&mut self, t: f64, node: NodeId, version: u32) {
        let v = &self.workload.versions[version as usize];
        let tag = v.tag as usize;
        if self.tag_current[tag].is_none() {
            self.set_current(tag, version);
        }
        let n = node.0 as usize;
        let region = self.nodes[n].region;
        let now = ts(t);
        let manifest_rtt = self.topology.distances.origin_rtt(region) / 1000.0;
        let pull = Pull {
            start: t,
            remaining: 0,
            ready: t + manifest_rtt,
            origin: false,
        };
        let pid = match self.free_pulls.pop() {
            Some(id) => {
                self.pulls[id as usize] = pull;
                id
            }
            None => {
                self.pulls.push(pull);
                self.pulls.len() as u32 - 1
            }
        };
        let layers = &self.workload.versions[version as usize].layers;
        if let NodePolicy::Predictive(p) = &mut self.nodes[n].policy {
            p.record_manifest_pull(now, layers);
        }
        let predictive = self.kind == PolicyKind::Predictive;
        let mut seen: Vec<LayerId> = Vec::with_capacity(layers.len());
        for &layer in layers {
            if seen.contains(&layer) {
                continue;
            }
            seen.push(layer);
            let size = self.workload.layer_sizes[layer.0 as usize];
            let local = self.nodes[n].stored.contains(&layer);
            self.nodes[n].demand_bytes += size;
            if predictive {
                self.trackers[usize::from(region.0)].record_pull(now, layer);
            }
            let source = if local {
                if self.nodes[n].precached.remove(&layer) {
                    self.ledger.record_hit(size);
                }
                Source::Local
            } else if let Some(&f) = self.nodes[n].inflight.get(&layer) {
                let flow = &mut self.flows[f as usize];
                if flow.precache {
                    flow.precache = false;
                    self.ledger.record_hit(size);
                }
                flow.waiters.push(pid);
                self.pulls[pid as usize].remaining += 1;
                flow.source
            } else {
                if predictive {
                    self.claim_regional_precache(region, layer, size);
                }
                let (f, source) = self.start_flow(t, node.0, layer, false);
                self.flows[f as usize].waiters.push(pid);
                self.pulls[pid as usize].remaining += 1;
                source
            };
            // The guard judges by what reaches the origin: nodes serve each
            // other, so a node must not win local hits by losing the
            // network's. Its reference is an LRU network: its own shadow, or
            // the shadow of a node a demand fetch could come from instead.
            let peer_shadow_hit = predictive && self.peer_shadow_holds(node, region, layer);
            match &mut self.nodes[n].policy {
                NodePolicy::Predictive(p) => p.record_regional_request(
                    now,
                    layer,
                    size,
                    source != Source::Origin,
                    peer_shadow_hit,
                ),
                NodePolicy::Other(p) => p.record_access(now, layer, size),
            }
            self.result.served.requests[source as usize] += 1;
            self.result.served.bytes[source as usize] += size;
            if t >= self.split_at {
                self.result.after_split.served.requests[source as usize] += 1;
                self.result.after_split.served.bytes[source as usize] += size;
            }
            if source == Source::Origin {
                self.pulls[pid as usize].origin = true;
            }
        }
        if self.pulls[pid as usize].remaining == 0 {
            self.pull_done(pid);
        }
    }

    fn pull_done(&mut self, pid: u32) {
        let p = &self.pulls[pid as usize];
        let micros = ((p.ready - p.start) * 1e6).round().max(1.0) as u64;
        self.hist.saturating_record(micros);
        self.result.pulls += 1;
        if !p.origin {
            self.result.pulls_without_origin += 1;
        }
        self.free_pulls.push(pid);
    }

    fn flow_done(&mut self, t: f64, id: u32) {
        let (node, layer, rtt) = {
            let f = &self.flows[id as usize];
            (f.node, f.layer, f.rtt)
        };
        let waiters = std::mem::take(&mut self.flows[id as usize].waiters);
        let precache = self.flows[id as usize].precache;
        let region = self.nodes[node as usize].region;
        let i = self.idx(layer, region);
        self.pending[i] -= 1;
        self.nodes[node as usize].inflight.remove(&layer);
        self.store(t, node, layer);
        if precache {
            let size = self.workload.layer_sizes[layer.0 as usize];
            if self.nodes[node as usize].stored.contains(&layer) {
                self.nodes[node as usize].precached.insert(layer);
            } else {
                // It arrived and found no room: moved for nothing.
                self.ledger.record_waste(size);
            }
        }
        for pid in waiters {
            let p = &mut self.pulls[pid as usize];
            p.ready = p.ready.max(t + rtt);
            p.remaining -= 1;
            if p.remaining == 0 {
                self.pull_done(pid);
            }
        }
        self.free_flows.push(id);
    }

    fn store(&mut self, t: f64, node: u32, layer: LayerId) {
        let size = self.workload.layer_sizes[layer.0 as usize];
        let n = node as usize;
        if self.nodes[n].stored.contains(&layer) {
            return;
        }
        let capacity = self.nodes[n].capacity;
        if size > capacity {
            self.result.not_stored += 1;
            return;
        }
        if self.nodes[n].used + size > capacity {
            let target = ((capacity as f64 * 0.95) as u64).min(capacity - size);
            let to_free = (self.nodes[n].used + size).saturating_sub(target);
            let now = ts(t);
            let node_ref = &self.nodes[n];
            let candidates: Vec<CandidateLayer> = node_ref
                .stored
                .iter()
                .map(|&l| CandidateLayer {
                    layer: l,
                    size: self.workload.layer_sizes[l.0 as usize],
                    pinned: false,
                    plan_required: node_ref.required.contains(&l),
                    lifecycle_delete: self
                        .lifecycle
                        .get(&l)
                        .is_some_and(|s| s.says_delete(now, &self.settings.lifecycle)),
                    spare_copy: self.is_spare_copy(node, l),
                })
                .collect();
            let victims = self.nodes[n]
                .policy
                .get()
                .choose_victims(now, &candidates, to_free);
            for v in victims {
                self.remove(node, v);
                self.result.evictions += 1;
            }
            if self.nodes[n].used + size > capacity {
                self.result.not_stored += 1;
                return;
            }
        }
        let region = self.nodes[n].region;
        self.nodes[n].stored.insert(layer);
        self.nodes[n].used += size;
        let i = self.idx(layer, region);
        self.copies[i] += 1;
        self.holders[layer.0 as usize].push(NodeId(node));
    }

    fn remove(&mut self, node: u32, layer: LayerId) {
        let n = node as usize;
        if !self.nodes[n].stored.remove(&layer) {
            return;
        }
        let size = self.workload.layer_sizes[layer.0 as usize];
        self.nodes[n].used -= size;
        if self.nodes[n].precached.remove(&layer) {
            self.ledger.record_waste(size);
        }
        self.nodes[n].policy.get().forget(layer);
        let region = self.nodes[n].region;
        let i = self.idx(layer, region);
        self.copies[i] -= 1;
        let h = &mut self.holders[layer.0 as usize];
        if let Some(pos) = h.iter().position(|&x| x == NodeId(node)) {
            h.swap_remove(pos);
        }
    }

    fn set_current(&mut self, tag: usize, version: u32) {
        if let Some(old) = self.tag_current[tag] {
            for &l in &self.workload.versions[old as usize].layers {
                self.references[l.0 as usize] -= 1;
            }
        }
        for &l in &self.workload.versions[version as usize].layers {
            self.references[l.0 as usize] += 1;
        }
        self.tag_current[tag] = Some(version);
    }

    fn publish(&mut self, t: f64, version: u32) {
        let tag = self.workload.versions[version as usize].tag as usize;
        let previous = self.tag_current[tag];
        self.set_current(tag, version);
        if self.kind != PolicyKind::Predictive || !self.settings.precache_new_versions {
            return;
        }
        let Some(previous) = previous else { return };
        let now = ts(t);
        let Some(&top) = self.workload.versions[previous as usize].layers.last() else {
            return;
        };
        let layers = self.workload.versions[version as usize].layers.clone();
        if self.settings.new_versions_to_every_holder {
            self.new_version_to_every_holder(t, top, &layers);
            return;
        }
        for r in 0..self.topology.regions() {
            let region = RegionId(r as u16);
            let demand = self.trackers[r]
                .forecast(now, top, self.settings.horizon_buckets)
                .total();
            if demand < self.settings.plan.min_regional_demand {
                continue;
            }
            // The node that holds the previous version, else the emptiest one.
            let target = self.holders[top.0 as usize]
                .iter()
                .copied()
                .find(|h| self.nodes[h.0 as usize].region == region)
                .or_else(|| {
                    self.topology.region_nodes[r]
                        .iter()
                        .copied()
                        .min_by_key(|n| (self.nodes[n.0 as usize].used, n.0))
                });
            let Some(target) = target else { continue };
            self.trackers[r].record_manifest_pull(now, &layers);
            if let NodePolicy::Predictive(p) = &mut self.nodes[target.0 as usize].policy {
                p.record_manifest_pull(now, &layers);
            }
            let mut displacement = BTreeMap::new();
            for &l in &layers {
                let i = self.idx(l, region);
                if self.copies[i] == 0
                    && self.pending[i] == 0
                    && self.try_precache(t, target.0, l, demand, &mut displacement)
                {
                    self.result.new_version_bytes += self.workload.layer_sizes[l.0 as usize];
                }
            }
        }
    }

    /// `shoald`'s way with a new version: every node holding the previous version's top layer
    /// fetches the new version's layers it lacks, at once, whatever they cost (the transfer takes
    /// the nearest source, as a pull would).
    fn new_version_to_every_holder(&mut self, t: f64, top: LayerId, layers: &[LayerId]) {
        let holders = self.holders[top.0 as usize].clone();
        for holder in holders {
            for &layer in layers {
                let size = self.workload.layer_sizes[layer.0 as usize];
                let node = &self.nodes[holder.0 as usize];
                if node.stored.contains(&layer)
                    || node.inflight.contains_key(&layer)
                    || size > node.capacity
                {
                    continue;
                }
                self.start_flow(t, holder.0, layer, true);
                self.result.new_version_bytes += size;
            }
        }
    }

    /// True when `node` holds `layer` and another node of its region keeps
    /// it ([`cooperative`]); always false for the baselines, which ignore it.
    fn is_spare_copy(&self, node: u32, layer: LayerId) -> bool {
        if self.kind != PolicyKind::Predictive {
            return false;
        }
        let region = self.nodes[node as usize].region;
        let regional = self.holders[layer.0 as usize]
            .iter()
            .copied()
            .filter(|h| self.nodes[h.0 as usize].region == region);
        let mut others = regional.clone().filter(|&h| h != NodeId(node));
        others.next().is_some()
            && cooperative::keeper(layer, regional.chain(std::iter::once(NodeId(node))))
                != Some(NodeId(node))
    }

    /// True when the LRU shadow of another node this node's demand could be
    /// served from (its region, or a region nearer than the origin) holds
    /// `layer`.
    fn peer_shadow_holds(&self, node: NodeId, region: RegionId, layer: LayerId) -> bool {
        let holds = |r: RegionId| {
            self.topology.region_nodes[usize::from(r.0)]
                .iter()
                .any(|&peer| {
                    peer != node
                        && match &self.nodes[peer.0 as usize].policy {
                            NodePolicy::Predictive(p) => {
                                p.guard().is_some_and(|g| g.shadow_holds(layer))
                            }
                            NodePolicy::Other(_) => false,
                        }
                })
        };
        if holds(region) {
            return true;
        }
        let origin_rtt = self.topology.distances.origin_rtt(region);
        self.topology.by_distance[usize::from(region.0)]
            .iter()
            .take_while(|&&other| self.topology.distances.rtt(other, region) <= origin_rtt)
            .any(|&other| holds(other))
    }

    fn precache_scale(node: &Node) -> f64 {
        match &node.policy {
            NodePolicy::Predictive(p) => p.precache_scale(),
            NodePolicy::Other(_) => 0.0,
        }
    }

    /// Opens a pre-cache interval: the budget is a fraction of the bytes
    /// demand requested since the last one, region by region scaled by the
    /// guards of its nodes, and capped by `replication_gb_per_plan`.
    fn start_interval(&mut self) {
        let mut bytes = 0.0;
        for n in &mut self.nodes {
            let scale = Self::precache_scale(n);
            bytes += n.demand_bytes as f64 * scale;
            n.demand_bytes = 0;
        }
        let cap = (self.settings.replication_gb_per_plan * 1e9) as u64;
        self.precache_budget = PrecacheBudget::for_interval(
            &self.settings.precache,
            (bytes.max(0.0) as u64).min(cap),
            1.0,
        );
        self.ledger.decay();
    }

    /// A request in `region` is about to be served by a same-region peer:
    /// if a peer holds the layer as an unused pre-cache copy, that copy has
    /// now paid.
    fn claim_regional_precache(&mut self, region: RegionId, layer: LayerId, size: u64) {
        let holder = self.holders[layer.0 as usize].iter().copied().find(|h| {
            let n = &self.nodes[h.0 as usize];
            n.region == region && n.precached.contains(&layer)
        });
        if let Some(h) = holder {
            self.nodes[h.0 as usize].precached.remove(&layer);
            self.ledger.record_hit(size);
        }
    }

    /// Starts a pre-cache transfer of `layer` to `node` if the node's guard
    /// allows it, the copy pays and the budget has room. Returns whether it
    /// started.
    fn try_precache(
        &mut self,
        t: f64,
        node: u32,
        layer: LayerId,
        forecast_pulls: f64,
        displacement: &mut BTreeMap<u32, Displacement>,
    ) -> bool {
        let size = self.workload.layer_sizes[layer.0 as usize];
        let n = &self.nodes[node as usize];
        let NodePolicy::Predictive(policy) = &n.policy else {
            return false;
        };
        if policy.precache_scale() <= 0.0 || size > n.capacity {
            return false;
        }
        let now = ts(t);
        let region = n.region;
        let (source, _, _) = self.source_for(layer, region);
        let path = |s: Source| match s {
            Source::Local | Source::SameRegion => TransferPath::Lan,
            Source::OtherRegion => TransferPath::InterRegion,
            Source::Origin => TransferPath::Origin,
        };
        let d = displacement.entry(node).or_insert_with(|| {
            let candidates: Vec<CandidateLayer> = n
                .stored
                .iter()
                .map(|&l| CandidateLayer {
                    layer: l,
                    size: self.workload.layer_sizes[l.0 as usize],
                    pinned: false,
                    plan_required: n.required.contains(&l),
                    lifecycle_delete: false,
                    spare_copy: self.is_spare_copy(node, l),
                })
                .collect();
            let inbound: u64 = n
                .inflight
                .keys()
                .map(|l| self.workload.layer_sizes[l.0 as usize])
                .sum();
            Displacement {
                free: n.capacity.saturating_sub(n.used + inbound),
                order: policy
                    .eviction_order(now, &candidates)
                    .into_iter()
                    .map(|c| (c.size, policy.value_per_byte(now, c.layer, c.size)))
                    .collect(),
                next: 0,
            }
        });
        let displaced_hits = d.displaced_hits(size);
        let candidate = PrecacheCandidate {
            size,
            forecast_pulls,
            horizon_secs: f64::from(self.settings.horizon_buckets)
                * self.settings.eviction.usage.bucket_secs as f64,
            survival_secs: policy.guard().and_then(|g| g.survival_secs()),
            source: path(source),
            demand_path: path(source),
            displaced_hits,
        };
        let calibration = self
            .ledger
            .calibration(self.settings.precache.calibration_prior_bytes);
        let verdict = precache::evaluate(&self.settings.precache, &candidate, calibration);
        if !verdict.pays || !self.precache_budget.take(size) {
            self.result.precache_rejected += 1;
            return false;
        }
        d.commit(size);
        self.start_flow(t, node, layer, true);
        true
    }

    fn plan(&mut self, t: f64) {
        let now = ts(t);
        let regions = self.topology.regions();
        let horizon = self.settings.horizon_buckets;
        let mut demand: BTreeMap<LayerId, Vec<f64>> = BTreeMap::new();
        for (r, tracker) in self.trackers.iter_mut().enumerate() {
            tracker.prune(now);
            for layer in tracker.layers().collect::<Vec<_>>() {
                let f = tracker.forecast(now, layer, horizon).total();
                if f > 0.0 {
                    demand.entry(layer).or_insert_with(|| vec![0.0; regions])[r] = f;
                }
            }
        }
        let threat: BTreeMap<LayerId, f64> = self
            .threat_findings
            .iter()
            .map(|(l, s)| (*l, combine_scores(s)))
            .collect();
        let plan_layers: Vec<PlanLayer> = demand
            .iter()
            .map(|(&layer, d)| PlanLayer {
                layer,
                size: self.workload.layer_sizes[layer.0 as usize],
                demand: d.clone(),
                threat: threat.get(&layer).copied().unwrap_or(0.0),
                holders: self.holders[layer.0 as usize].clone(),
            })
            .collect();
        let plan_nodes: Vec<PlanNode> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| PlanNode {
                id: NodeId(i as u32),
                region: n.region,
                // The plan's share of a node shrinks with the node's guard:
                // a node losing to its LRU shadow lets recency have its disk.
                budget_bytes: (n.capacity as f64
                    * self.settings.plan_disk_fraction
                    * Self::precache_scale(n)) as u64,
            })
            .collect();
        let plan = plan_replication(
            &plan_nodes,
            &plan_layers,
            &self.topology.distances,
            &self.settings.plan,
        );
        self.result.plans += 1;
        for n in &mut self.nodes {
            n.required.clear();
        }
        for (layer, nodes) in &plan.placements {
            for node in nodes {
                self.nodes[node.0 as usize].required.insert(*layer);
            }
        }
        // Pre-cache what the plan places but regions lack, highest priority
        // first, when the copy pays (shoal_policy::precache) and within the
        // interval's budget. A region that already holds as many copies as
        // the plan wants there (on other nodes than planned) keeps those
        // instead: moving a copy between two nodes of one region gains
        // nothing.
        self.start_interval();
        let mut displacement: BTreeMap<u32, Displacement> = BTreeMap::new();
        for p in &plan.priorities {
            let Some(nodes) = plan.placements.get(&p.layer) else {
                continue;
            };
            let mut wanted = vec![0u32; regions];
            for node in nodes {
                wanted[usize::from(self.nodes[node.0 as usize].region.0)] += 1;
            }
            for node in nodes {
                let n = &self.nodes[node.0 as usize];
                if n.stored.contains(&p.layer) || n.inflight.contains_key(&p.layer) {
                    continue;
                }
                let region = n.region;
                let i = self.idx(p.layer, region);
                if self.copies[i] + self.pending[i] >= wanted[usize::from(region.0)] {
                    let holder = self.holders[p.layer.0 as usize].iter().copied().find(|h| {
                        let hn = &self.nodes[h.0 as usize];
                        hn.region == region && !hn.required.contains(&p.layer)
                    });
                    if let Some(h) = holder {
                        self.nodes[h.0 as usize].required.insert(p.layer);
                    }
                    continue;
                }
                let forecast = demand
                    .get(&p.layer)
                    .map_or(0.0, |d| d[usize::from(region.0)]);
                self.try_precache(t, node.0, p.layer, forecast, &mut displacement);
            }
        }
        // Eviction signals per region.
        for r in 0..regions {
            let signals = Arc::new(LayerSignals {
                regional_forecast: demand
                    .iter()
                    .filter(|(_, d)| d[r] > 0.0)
                    .map(|(l, d)| (*l, d[r]))
                    .collect(),
                threat: threat.clone(),
                region_nodes: self.topology.region_nodes[r].len() as u32,
            });
            for node in &self.topology.region_nodes[r] {
                if let NodePolicy::Predictive(p) = &mut self.nodes[node.0 as usize].policy {
                    p.set_signals(Arc::clone(&signals));
                }
            }
        }
        // Lifecycle of every layer that has been seen.
        let known: BTreeSet<LayerId> = demand
            .keys()
            .copied()
            .chain(self.lifecycle.keys().copied())
            .collect();
        for layer in known {
            let total: f64 = demand.get(&layer).map_or(0.0, |d| d.iter().sum());
            let facts = LayerFacts {
                usage: usage_score(total, self.settings.plan.usage_half_saturation),
                threat: threat.get(&layer).copied().unwrap_or(0.0),
                referenced: self.references[layer.0 as usize] > 0,
                pinned_keep: false,
                pinned_delete: false,
            };
            let current = self
                .lifecycle
                .get(&layer)
                .copied()
                .unwrap_or(LifecycleState::Active);
            self.lifecycle.insert(
                layer,
                next_state(current, &facts, now, &self.settings.lifecycle),
            );
        }
    }
}

/// Runs one policy.
pub fn run(
    topology: &Topology,
    workload: &Workload,
    settings: &PolicySettings,
    kind: PolicyKind,
    duration: f64,
    options: RunOptions,
) -> RunResult {
    Simulation::new(topology, workload, settings, kind, duration).run(options)
}

impl Source {
    /// All sources in report order.
    pub fn all() -> [Source; 4] {
        SOURCES
    }

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::SameRegion => "same_region",
            Source::OtherRegion => "other_region",
            Source::Origin => "origin",
        }
    }
}
