//! The accept loop every Shoal protocol shares: take a protocol's inbound streams until `stop`,
//! refuse streams from peers that have not proved membership (for every protocol but the proof
//! itself), refuse streams beyond a concurrency limit, and handle each accepted stream on its own
//! task in the peer's span.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt as _;
use libp2p::PeerId;
use tokio::sync::{watch, Semaphore};
use tracing::Instrument as _;

use super::PeerTable;
use crate::metrics::Metrics;

/// Who may open streams of a protocol.
pub(super) enum Admit {
    /// Anyone connected (the membership proof itself).
    Anyone,
    /// Members only; refusals are counted in `metrics`.
    Members(PeerTable, Arc<Metrics>),
}

/// Accepts `incoming` until `stop`, at most `limit` handled at once; `what` names the protocol's
/// requests in logs.
pub(super) async fn accept_streams<H, F>(
    mut incoming: libp2p_stream::IncomingStreams,
    admit: Admit,
    limit: usize,
    what: &'static str,
    mut stop: watch::Receiver<bool>,
    handle: H,
) where
    H: Fn(PeerId, libp2p::Stream) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(limit));
    loop {
        let (peer, stream) = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            next = incoming.next() => match next {
                Some(next) => next,
                None => return,
            },
        };
        if let Admit::Members(members, metrics) = &admit {
            if !members.is_member(&peer) {
                metrics.p2p_refused_non_member_requests.inc();
                tracing::warn!(%peer, what, "request from a peer that has not proved membership; refused");
                continue;
            }
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::debug!(%peer, what, "too many requests in progress; refused");
            continue;
        };
        let handled = handle(peer, stream);
        tokio::spawn(
            async move {
                handled.await;
                drop(permit);
            }
            .instrument(tracing::info_span!("peer", %peer)),
        );
    }
}
