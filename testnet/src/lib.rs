//! Shoal's test network: starts the real parts of a Shoal deployment on
//! loopback ports in temporary directories, so end-to-end tests exercise the
//! same programs a user runs.
//!
//! One module per part:
//! - [`origin`]: the distribution registry (`docker-registry`) as the origin,
//!   with its access log parsed so tests can count origin fetches.
//! - [`image`]: deterministic test images built here (real tar + gzip layers,
//!   OCI and Docker manifests, an optional index) and pushed to the origin.
//! - [`containerd`]: a private containerd (fresh content store per instance)
//!   and `ctr image pull` with a timeout.
//! - [`far_link`]: a relay that puts the origin far away (an added round trip, a capped rate).
//! - [`hosts`]: the `hosts.toml` that makes containerd pull only through a
//!   mirror.
//! - [`node`]: `shoald` as a child process, with restart, `kill -9` and the
//!   admin endpoint's metrics.
//! - [`network`]: N nodes in named regions joined into one peer network
//!   behind one origin, each with its hosts directory (and the
//!   `shoal-testnet up` command built on it).
//! - [`cli`]: the operator CLI `shoal` (`fsck`, `inspect`).
//! - [`release`]: the first pull of a new release (`shoal-testnet release-bench`), pre-positioned,
//!   cold through a node and direct, with the origin behind a [`far_link`].
//! - [`raw_http`]: exact HTTP requests for hostile-input tests.
//! - [`reports`]: Trivy and Grype reports for a test image, for the threat-intake tests.
//! - [`metrics`]: reading the Prometheus text of `/metrics`.
//! - [`agreement`]: one small scenario from the image catalog, written as a `shoal-sim` trace and
//!   replayed on six nodes (`shoal-testnet agreement`), to compare the simulator with the testnet.
//! - [`bench`]: peer network benchmarks (`shoal-peer-bench`).
//! - [`tmpfs`]: a small tmpfs over a node's data directory (a disk that fills up; root only).
//! - [`soak`]: the chaos soak (`shoal-testnet soak`): five nodes, twenty clients, nodes killed,
//!   the origin stopped and a member lying, then wrong bytes, fsck, origin bytes, memory and
//!   descriptors checked.
//! - [`load`]: the load test (`shoal-testnet load`): many clients on one node's cache while slow
//!   clients never finish their headers.
//!
//! Every part lives in its own temporary directory and on its own ports, and
//! is stopped by a `Drop` guard, so tests can run in parallel and a failing
//! test leaves no processes behind. Every wait is bounded.

pub mod agreement;
pub mod bench;
pub mod cli;
pub mod containerd;
pub mod far_link;
pub mod hosts;
pub mod image;
pub mod load;
pub mod metrics;
pub mod network;
pub mod node;
pub mod origin;
mod process;
pub mod raw_http;
pub mod release;
pub mod reports;
pub mod soak;
pub mod tmpfs;

/// The registry host name used in test image references
/// (`origin.shoal.test/<repo>:<tag>`). It never resolves: `hosts.toml`
/// overrides the server, and containerd sends it to the mirror as `?ns=`.
pub const REGISTRY_HOST: &str = "origin.shoal.test";
