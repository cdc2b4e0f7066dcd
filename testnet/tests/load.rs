//! End to end: a smaller version of `shoal-testnet load`. Fifty clients ask one node for cached
//! blobs and manifests for a few seconds while ten slow clients trickle header bytes and never end
//! their headers. Every request must complete with the right bytes, and the node must close every
//! slow connection at its header deadline. Latency is reported, not asserted.

use std::time::Duration;

use anyhow::Result;
use shoal_testnet::load::{render, run, LoadOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_get_cached_blobs_without_errors_and_slow_headers_are_cut() -> Result<()> {
    let report = run(&LoadOptions {
        clients: 50,
        slow_clients: 10,
        duration: Duration::from_secs(5),
        seed: 3,
    })
    .await?;
    eprintln!("{}", render(&report));
    assert!(report.failures().is_empty(), "{:?}", report.failures());
    assert_eq!(report.errors, 0);
    assert_eq!(report.slow_clients_cut, 10);
    assert!(report.ok > 0);
    Ok(())
}
