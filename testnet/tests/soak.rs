//! End to end: the chaos soak's one-minute version (`shoal-testnet soak --minutes 1` runs the
//! same code). Five nodes in two regions and 20 clients, one minute without faults, then one
//! minute on a fresh network while nodes are killed with SIGKILL, the origin is stopped and a
//! member serves flipped bytes. Asserts what the soak checks: no response completed with wrong
//! bytes, every store passes fsck, origin bytes within 1.1x of the fault-free minute's, memory and
//! file descriptors of every node sampled and under their bounds, and faults were in fact
//! injected. No figure is timed.

use anyhow::Result;
use shoal_testnet::soak::{render, run, SoakOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_kills_origin_outages_and_a_lying_member_serves_no_wrong_byte() -> Result<()> {
    let report = run(&SoakOptions::minutes(1, 11)).await?;
    eprintln!("{}", render(&report));
    assert!(report.passed(), "soak failed: {:?}", report.failures());
    let faulted = report.faulted.total();
    assert_eq!(faulted.wrong_bytes, 0);
    assert!(report.faulted.outcomes.contains_key("ctr_pull"));
    assert!(report.faulted.outcomes.contains_key("range"));
    Ok(())
}
