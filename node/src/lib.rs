//! The Shoal daemon as a library: a pull-through OCI registry mirror for containerd, backed by a
//! content-defined shard store. The `shoald` binary is a thin shell over [`run`].
//!
//! Subsystems, each in its own folder with a module doc saying what it owns:
//! [`config`] (defaults, file, flags), [`registry`] (the OCI endpoint), [`pullthrough`] (when to
//! go upstream, single flight, healing), [`upstream`] (the only code that contacts registries),
//! [`store`] (shards, maps, index, eviction, recovery), [`admin`] (metrics, health),
//! [`metrics`] (the numbers), [`http`] (serving with limits), [`p2p`] (the peer network:
//! membership, DHT provider records, shard transfer, manifest lookup), [`placement`] (predictive
//! placement: demand, new versions pre-positioned, the replication plan, the eviction order),
//! [`preheat`] (operator-requested fetches of images into chosen regions, with progress).
//! [`threat`] (scanner reports in, a score per layer, shared with peers).
//! [`rebuild`] (a tag's new version fetched into every region before the tag moves to it).

pub mod admin;
pub mod assembly;
pub mod catalog;
pub mod config;
pub mod http;
pub mod lifecycle;
pub mod metrics;
pub mod p2p;
pub mod placement;
pub mod preheat;
pub mod pullthrough;
pub mod rebuild;
pub mod registry;
pub mod store;
pub mod threat;
pub mod upstream;

#[cfg(test)]
mod test_data;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pullthrough::{PullConfig, PullThrough};
use crate::store::{ShardStore, StoreConfig, StoreError};
use crate::upstream::{Upstream, UpstreamError};

/// How long a stopping node waits for blob fetches in flight to finish and commit.
const FLIGHT_DRAIN: Duration = Duration::from_secs(30);

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error("opening the store: {0}")]
    Store(#[from] StoreError),
    /// An upstream client could not be built.
    #[error("setting up upstream {name}: {source}")]
    Upstream {
        /// The upstream.
        name: String,
        /// The cause.
        source: UpstreamError,
    },
    /// A blocking task failed.
    #[error("start-up task failed: {0}")]
    Task(String),
    /// The peer network could not start.
    #[error("starting the peer network: {0}")]
    P2p(#[from] p2p::P2pError),
    /// Placement's state directory could not be created.
    #[error("starting placement: {0}")]
    Placement(#[from] placement::PlacementError),
    /// The lifecycle's state directory could not be created.
    #[error("starting the lifecycle: {0}")]
    Lifecycle(#[from] lifecycle::LifecycleError),
    /// Threat's state directory could not be created.
    #[error("starting threat: {0}")]
    Threat(#[from] threat::ThreatError),
    /// The rebuild holds could not be read.
    #[error("starting rebuilds: {0}")]
    Rebuild(std::io::Error),
}

/// Runs a node on already-bound listeners until `shutdown` completes; then drains connections and
/// closes the store cleanly.
pub async fn run(
    config: Config,
    registry_listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    run_with(config, registry_listener, admin_listener, shutdown, None).await
}

/// Like [`run`]; once the peer network listens, its addresses (with `/p2p/<peer id>`, one per
/// listen address, in the configured order) are sent on `p2p_ready`. The sender is dropped unsent when the node runs without a peer network.
pub async fn run_with(
    config: Config,
    registry_listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    p2p_ready: Option<tokio::sync::oneshot::Sender<Vec<String>>>,
) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::default());
    let store_config = StoreConfig {
        data_dir: config.data_dir.clone(),
        chunking: config.chunking,
        max_disk_bytes: config.max_disk_bytes,
    };
    // With placement on, the store evicts in placement's order (stable layer ids, protections).
    let placement_shared = match config.placement.enabled {
        true => Some(placement::Shared::load(
            config.placement.clone(),
            &config.data_dir,
            config.tag_ttl,
            metrics.clone(),
        )?),
        false => None,
    };
    let eviction: Box<dyn store::EvictionPolicy> = match &placement_shared {
        Some(shared) => Box::new(shared.store_eviction(config.max_disk_bytes)),
        None => Box::new(store::PolicyEviction::lru()),
    };
    // With the lifecycle on, Cold and Pending Deletion layers are evicted first, pinned ones last.
    let lifecycle_marks = lifecycle::SharedMarks::default();
    let eviction: Box<dyn store::EvictionPolicy> = match config.lifecycle.enabled {
        true => Box::new(lifecycle::LifecycleEviction::new(
            eviction,
            lifecycle_marks.clone(),
        )),
        false => eviction,
    };
    let store =
        tokio::task::spawn_blocking(move || ShardStore::open_with_policy(&store_config, eviction))
            .await
            .map_err(|e| StartError::Task(e.to_string()))??;
    store.set_disk_reserve_percent(config.disk_reserve_percent);
    let stats = store.stats();
    tracing::info!(data_dir = %config.data_dir.display(), blobs = stats.blobs, bytes = stats.bytes, "store open");

    let mut upstreams = BTreeMap::new();
    for (name, upstream_config) in &config.upstreams {
        let upstream = Upstream::new(
            upstream_config.clone(),
            config.upstream_timeouts,
            metrics.clone(),
        )
        .map_err(|source| StartError::Upstream {
            name: name.clone(),
            source,
        })?;
        upstreams.insert(name.clone(), upstream);
    }
    // HTTP stops first; the peer network only after the flights it may be feeding have ended.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (p2p_stop_tx, p2p_stop_rx) = tokio::sync::watch::channel(false);
    let tag_holds = rebuild::holds::TagHolds::open(&config.data_dir, config.rebuild.hold.as_secs())
        .map_err(StartError::Rebuild)?;
    let mut pull = PullThrough::new(
        store.clone(),
        metrics.clone(),
        PullConfig {
            tag_ttl: config.tag_ttl,
        },
    )
    .with_held_tags(Arc::new(tag_holds.clone()));
    let mut p2p_task = None;
    let mut status_network = None;
    let mut network_handle = None;
    match config.p2p.clone() {
        Some(p2p_config) => {
            let (network, listening, task) = p2p::start(
                p2p_config,
                &config.data_dir,
                store.clone(),
                Arc::new(pullthrough::CachedManifests::new(store.clone())),
                metrics.clone(),
                p2p_stop_rx,
            )
            .await?;
            if let Some(ready) = p2p_ready {
                let _ = ready.send(listening.iter().map(ToString::to_string).collect());
            }
            // Announce what the store already holds; new blobs are announced as they commit.
            let (announcer, held) = (network.clone(), store.clone());
            tokio::spawn(async move {
                let digests = tokio::task::spawn_blocking(move || held.blob_digests()).await;
                if let Ok(Ok(digests)) = digests {
                    for digest in digests {
                        announcer.provide_waiting(digest).await;
                    }
                }
            });
            status_network = Some(network.clone());
            pull = pull.with_peers(network.clone());
            network_handle = Some(network.clone());
            network.serve_in_flight(Arc::new(pullthrough::PeerOffers::new(pull.clone())));
            p2p_task = Some(task);
        }
        None => {
            drop(p2p_ready);
            tracing::info!("no network key configured: running without the peer network");
        }
    }
    // Bound to the rebuild service below, once the preheat service it runs on exists.
    let rebuild_hook = Arc::new(rebuild::RebuildHook::default());
    let threats = threat::Threats::open(threat::Parts {
        config: config.threat.clone(),
        data_dir: config.data_dir.clone(),
        store: store.clone(),
        pull: pull.clone(),
        upstreams: upstreams.clone(),
        network: network_handle.clone(),
        rebuild: rebuild_hook.clone(),
    })?;
    let threat_task = threats.start(stop_rx.clone());
    if let Some(shared) = &placement_shared {
        shared.set_threats(threats.clone());
    }
    let flights = pull.clone();
    let health = pull.clone();
    let region = config
        .p2p
        .as_ref()
        .map_or_else(|| "default".to_owned(), |p2p| p2p.region.clone());
    let preheat = preheat::PreheatService::new(preheat::Parts {
        pull: pull.clone(),
        network: network_handle.clone(),
        upstreams: upstreams.clone(),
        default_upstream: config.default_upstream.clone(),
        region: region.clone(),
    });
    if let Some(network) = &network_handle {
        network.serve_preheat(Arc::new(preheat.clone()));
    }
    let rebuilds = rebuild::RebuildService::new(rebuild::Parts {
        pull: pull.clone(),
        network: network_handle.clone(),
        upstreams: upstreams.clone(),
        default_upstream: config.default_upstream.clone(),
        region: region.clone(),
        preheat: preheat.clone(),
        holds: tag_holds,
        config: config.rebuild.clone(),
    });
    rebuilds.listen();
    rebuild_hook.bind(rebuilds.clone());
    let (placement, placement_task) = match placement_shared {
        Some(shared) => {
            let parts = placement::Parts {
                pull: pull.clone(),
                network: network_handle,
                upstreams: upstreams.clone(),
                metrics: metrics.clone(),
                budget_bytes: config.max_disk_bytes,
                tag_ttl: config.tag_ttl,
            };
            let (handle, task) = placement::start(shared, parts, stop_rx.clone());
            (Some(handle), Some(task))
        }
        None => (None, None),
    };
    let (lifecycle, lifecycle_task) = match config.lifecycle.enabled {
        true => {
            let parts = lifecycle::Parts {
                store: store.clone(),
                placement: placement.clone(),
                network: status_network.clone(),
                threat: Arc::new(threats.clone()),
                metrics: metrics.clone(),
                marks: lifecycle_marks,
            };
            let (handle, task) = lifecycle::Lifecycle::start(
                config.lifecycle.clone(),
                config.retention.clone(),
                &config.data_dir,
                parts,
                stop_rx.clone(),
            )?;
            (Some(handle), Some(task))
        }
        false => (None, None),
    };
    let lifecycle_api = lifecycle::api::ApiState {
        store: store.clone(),
        lifecycle,
    };
    let admin_auth = admin::auth::AdminAuth {
        token: config.admin_token.clone(),
        loopback: admin_listener
            .local_addr()
            .map_or(config.admin_listen.ip().is_loopback(), |a| {
                a.ip().is_loopback()
            }),
    };
    let registry_state = Arc::new(registry::RegistryState {
        pull,
        upstreams,
        default_upstream: config.default_upstream.clone(),
        metrics: metrics.clone(),
        placement: placement.clone(),
    });
    let status = admin::status::StatusContext::new(
        config
            .p2p
            .as_ref()
            .map_or_else(|| "default".to_owned(), |p2p| p2p.region.clone()),
        registry_listener
            .local_addr()
            .map_or_else(|_| config.listen.to_string(), |addr| addr.to_string()),
        config
            .upstreams
            .iter()
            .map(|(name, upstream)| (name.clone(), upstream.url.to_string()))
            .collect(),
        config.max_disk_bytes,
        status_network,
        metrics.clone(),
    )
    .with_lifecycle(lifecycle_api.lifecycle.clone());
    let admin_state = admin::AdminState {
        metrics,
        store: store.clone(),
        status,
        pull: health,
    };

    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let limits = http::ServeLimits::default();
    let drain = Duration::from_secs(10);
    let registry_task = tokio::spawn(http::serve(
        registry_listener,
        registry::router(registry_state),
        limits,
        stopped(stop_rx.clone()),
        drain,
    ));
    let admin_task = tokio::spawn(http::serve(
        admin_listener,
        admin::router(admin_state)
            .merge(placement::admin_routes(placement))
            .merge(preheat::admin_routes(preheat))
            .merge(rebuild::admin_routes(rebuilds))
            .merge(lifecycle::api::router(lifecycle_api))
            .merge(threat::http::router(threats, config.admin_token.clone()))
            // Router-wide, after every merge: every mutating admin route needs the token.
            .layer(axum::middleware::from_fn_with_state(
                admin_auth,
                admin::auth::require_token,
            )),
        limits,
        stopped(stop_rx),
        drain,
    ));
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = registry_task.await;
    let _ = admin_task.await;
    let unfinished = flights.drain_flights(FLIGHT_DRAIN).await;
    if unfinished > 0 {
        tracing::warn!(
            unfinished,
            "blob fetches still running at shutdown are abandoned"
        );
    }
    if let Some(task) = placement_task {
        let _ = task.await;
    }
    if let Some(task) = lifecycle_task {
        let _ = task.await;
    }
    let _ = threat_task.await;
    let _ = p2p_stop_tx.send(true);
    if let Some(task) = p2p_task {
        let _ = task.await;
    }
    let closing = store.clone();
    tokio::task::spawn_blocking(move || closing.close())
        .await
        .map_err(|e| StartError::Task(e.to_string()))??;
    tracing::info!("store closed cleanly");
    Ok(())
}
