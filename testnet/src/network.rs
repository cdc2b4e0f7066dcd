//! A multi-node Shoal network on loopback: one origin registry, one network
//! key, and N `shoald` nodes, each in a named region with its own ports, data
//! directory and containerd hosts directory.
//!
//! Nodes start one after another; each bootstraps to every node started
//! before it, so the peer network is a full mesh from the start. Start-up
//! returns once every node reports N-1 proven members on its metrics
//! (`shoal_p2p_members`). Network-wide shaping (added latency per region pair)
//! and per-node options (an egress cap, extra flags) go through
//! [`NetworkSpec`], and so does a far link in front of the origin
//! ([`NetworkSpec::far_origin`]). Everything is torn down on drop (nodes first, then the
//! origin); [`Network::shutdown`] stops the parts gracefully instead.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::far_link::{FarLink, LinkShape};
use crate::hosts::HostsDir;
use crate::node::{NetworkKeyFile, Node, NodeConfig};
use crate::origin::Origin;

/// How long the whole network may take to see every member after the last
/// node started.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Most nodes one network starts (each is a process with its own ports).
pub const MAX_NODES: usize = 32;

/// What network to start.
#[derive(Debug, Clone)]
pub struct NetworkSpec {
    key_seed: u64,
    nodes: Vec<(String, NodeConfig)>,
    latency: Vec<(String, String, u64)>,
    far_origin: Option<LinkShape>,
}

impl NetworkSpec {
    /// An empty network whose key is derived from `key_seed`.
    pub fn new(key_seed: u64) -> NetworkSpec {
        NetworkSpec {
            key_seed,
            nodes: Vec::new(),
            latency: Vec::new(),
            far_origin: None,
        }
    }

    /// Puts the origin behind a [`FarLink`] of `shape`: every node reaches it through the link
    /// (an added round trip and a capped rate), and so can a direct client
    /// ([`Network::far_origin`]).
    pub fn far_origin(mut self, shape: LinkShape) -> NetworkSpec {
        self.far_origin = Some(shape);
        self
    }

    /// Adds a node in `region`.
    pub fn node(self, region: &str) -> NetworkSpec {
        self.node_with(region, NodeConfig::default())
    }

    /// Adds a node in `region` with per-node options (for example
    /// [`NodeConfig::test_egress_bytes_per_sec`], extra arguments or
    /// `rust_log`). The network sets the upstream, key, region and bootstrap
    /// peers on top of `options`.
    pub fn node_with(mut self, region: &str, options: NodeConfig) -> NetworkSpec {
        self.nodes.push((region.to_string(), options));
        self
    }

    /// Adds `ms` milliseconds of latency between regions `a` and `b` on every
    /// node (TESTING ONLY shaping; symmetric).
    pub fn latency(mut self, a: &str, b: &str, ms: u64) -> NetworkSpec {
        self.latency.push((a.to_string(), b.to_string(), ms));
        self
    }

    /// How many nodes the network will have.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node was added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// One node of a [`Network`]: the process, its region and its hosts
/// directory.
pub struct NetworkNode {
    node: Node,
    region: String,
    hosts: HostsDir,
}

impl NetworkNode {
    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The node, for stopping, killing or restarting it.
    pub fn node_mut(&mut self) -> &mut Node {
        &mut self.node
    }

    /// The node's region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// A containerd hosts directory that sends pulls of
    /// [`crate::REGISTRY_HOST`] to this node only.
    pub fn hosts_dir(&self) -> &Path {
        self.hosts.path()
    }
}

/// A running network. Fields drop in order: nodes, key, far link, origin.
pub struct Network {
    nodes: Vec<NetworkNode>,
    key: NetworkKeyFile,
    far_origin: Option<FarLink>,
    origin: Origin,
}

impl Network {
    /// Starts the origin and the nodes of `spec`, and waits until every node
    /// has proved membership to every other.
    pub async fn start(spec: NetworkSpec) -> Result<Network> {
        ensure!(!spec.is_empty(), "a network needs at least one node");
        ensure!(
            spec.len() <= MAX_NODES,
            "at most {MAX_NODES} nodes, not {}",
            spec.len()
        );
        let origin = Origin::start().await?;
        let key = NetworkKeyFile::new(spec.key_seed)?;
        let far_origin = match spec.far_origin {
            Some(shape) => Some(FarLink::start(origin.addr(), shape).await?),
            None => None,
        };
        let upstream = far_origin
            .as_ref()
            .map_or_else(|| origin.url(), FarLink::url);
        let mut network = Network {
            nodes: Vec::with_capacity(spec.len()),
            key,
            far_origin,
            origin,
        };
        let mut bootstrap: Vec<String> = Vec::new();
        for (index, (region, options)) in spec.nodes.into_iter().enumerate() {
            let mut config = options;
            config.upstreams.clear();
            config = config
                .upstream(crate::REGISTRY_HOST, &upstream)
                .default_upstream(crate::REGISTRY_HOST)
                .network_key(&network.key)
                .region(&region);
            config.bootstrap = bootstrap.clone();
            for (a, b, ms) in &spec.latency {
                config = config.test_latency(a, b, *ms);
            }
            let node = Node::start(config)
                .await
                .with_context(|| format!("starting node {index} (region {region})"))?;
            let addr = node.p2p_addr()?;
            bootstrap.push(addr.to_string());
            let hosts = HostsDir::for_test_registry(node.registry_addr())?;
            network.nodes.push(NetworkNode {
                node,
                region,
                hosts,
            });
        }
        network.wait_for_full_mesh(JOIN_TIMEOUT).await?;
        Ok(network)
    }

    /// Waits until every running node reports every other node as a member.
    pub async fn wait_for_full_mesh(&self, timeout: Duration) -> Result<()> {
        let others = (self.nodes.len() - 1) as f64;
        for (index, member) in self.nodes.iter().enumerate() {
            member
                .node
                .wait_for_metric("shoal_p2p_members", timeout, |n| n >= others)
                .await
                .with_context(|| {
                    format!(
                        "node {index} (region {}) never saw all {others} peers; log:\n{}",
                        member.region,
                        member.node.log_tail(30)
                    )
                })?;
        }
        Ok(())
    }

    /// The origin registry.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The origin registry, for stopping and starting it.
    pub fn origin_mut(&mut self) -> &mut Origin {
        &mut self.origin
    }

    /// The far link in front of the origin, if the spec asked for one
    /// ([`NetworkSpec::far_origin`]).
    pub fn far_origin(&self) -> Option<&FarLink> {
        self.far_origin.as_ref()
    }

    /// The network key file every node holds.
    pub fn key(&self) -> &NetworkKeyFile {
        &self.key
    }

    /// The nodes, in start order.
    pub fn nodes(&self) -> &[NetworkNode] {
        &self.nodes
    }

    /// Node `index` (start order).
    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index].node
    }

    /// Node `index`, for stopping, killing or restarting it.
    pub fn node_mut(&mut self, index: usize) -> &mut Node {
        &mut self.nodes[index].node
    }

    /// The hosts directory of node `index`.
    pub fn hosts_dir(&self, index: usize) -> &Path {
        self.nodes[index].hosts_dir()
    }

    /// Every node's registry endpoint, in start order.
    pub fn registry_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.node.registry_addr()).collect()
    }

    /// Stops every node with SIGTERM (a node already gone is skipped), then
    /// the origin. Fails if a node did not exit cleanly.
    pub async fn shutdown(mut self) -> Result<()> {
        let mut failures = Vec::new();
        for (index, member) in self.nodes.iter_mut().enumerate() {
            if !member.node.is_running() {
                continue;
            }
            match member.node.stop().await {
                Ok(status) if status.success() => {}
                Ok(status) => failures.push(format!("node {index} exited with {status}")),
                Err(error) => failures.push(format!("node {index}: {error:#}")),
            }
        }
        self.origin.stop().await?;
        if !failures.is_empty() {
            bail!("{}", failures.join("; "));
        }
        Ok(())
    }
}
