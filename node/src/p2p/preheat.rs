//! The preheat protocol on `/shoal/preheat/1`, both sides: asking one member to fetch a blob
//! through its own pull path and following its progress, and serving such requests from members.
//! Message layout and flow are in `shoal_proto::preheat`.
//!
//! The serving side hands each request to the [`BlobWarmer`] the node installed (the `preheat`
//! module, which fetches through `pullthrough`); this module never fetches, reads or writes the
//! store itself. Only members are served (the shared accept loop refuses everyone else), at most
//! [`SERVE_QUEUE`] requests at once; the warmer bounds how many of them fetch at a time and
//! answers `Busy` beyond its queue.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::AsyncWriteExt as _;
use libp2p::PeerId;
use shoal_proto::preheat::{PreheatReport, PreheatRequest};
use shoal_proto::wire::WireMessage as _;
use tokio::sync::watch;

use super::accept::{accept_streams, Admit};
use super::transfer::{read_message, TransferError};
use super::{PeerTable, PREHEAT_PROTOCOL};
use crate::metrics::Metrics;

/// Preheat streams served at once (waiting for a fetch slot or fetching); more are refused.
pub const SERVE_QUEUE: usize = 64;
/// How often a serving member reports progress while bytes arrive.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Longest a serving member stays silent: it repeats its progress at least this often, even while
/// its request waits for a fetch slot, so the requester can tell a slow fetch from a dead peer.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Longest the requester waits for the next report (several heartbeats).
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait to read the request once the stream is open.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait to open a stream to a member.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Fetches a blob for a member's preheat request, implemented by the node's preheat service.
pub trait BlobWarmer: Send + Sync + 'static {
    /// Fetches the blob the request names through this node's pull path (or finds it stored),
    /// publishing the bytes done on `progress`; resolves to the final report.
    fn warm(
        &self,
        request: PreheatRequest,
        progress: watch::Sender<u64>,
    ) -> BoxFuture<'static, PreheatReport>;
}

/// Where the node installs its warmer once it is built.
pub(super) type WarmerSlot = Arc<OnceLock<Arc<dyn BlobWarmer>>>;

/// Why a preheat request to a member gave no final report.
#[derive(Debug, thiserror::Error)]
pub enum PreheatRequestError {
    /// The stream could not be opened.
    #[error("opening a stream: {0}")]
    Open(String),
    /// Writing the request failed.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// A report could not be read: cut short, over its limit, malformed or too late.
    #[error("reading a report: {0}")]
    Read(TransferError),
    /// The stream could not be opened in time.
    #[error("timed out opening a stream")]
    Timeout,
}

/// Asks `peer` to fetch the blob `request` names; `on_progress` hears the bytes done as they are
/// reported. Returns the final report.
///
/// A request the member dropped before answering anything is sent again, after each of
/// [`UNANSWERED_RETRY_WAITS`]: the stream layer hands a protocol's inbound streams to its accept
/// loop one at a time and drops any that arrive while one waits to be taken, so some of a burst
/// of requests to one member (a job asks for up to four blobs at once, in each region) are lost
/// that way. A request is idempotent (the member joins its own fetch of the blob, or finds it stored), so
/// sending it again never fetches twice.
pub(super) async fn request(
    control: libp2p_stream::Control,
    peer: PeerId,
    request: PreheatRequest,
    on_progress: &mut (dyn FnMut(u64) + Send),
    _load: super::peers::OpenRequest,
) -> Result<PreheatReport, PreheatRequestError> {
    let mut waits = UNANSWERED_RETRY_WAITS.iter();
    loop {
        let mut answered = false;
        let outcome =
            request_once(control.clone(), peer, &request, on_progress, &mut answered).await;
        match outcome {
            Err(error) if !answered && is_dropped_unanswered(&error) => match waits.next() {
                Some(wait) => {
                    tracing::debug!(%peer, %error, "preheat request dropped unanswered; sending it again");
                    tokio::time::sleep(*wait).await;
                }
                None => return Err(error),
            },
            outcome => return outcome,
        }
    }
}

/// The waits before each new try of a request a member dropped unanswered (see [`request`]).
const UNANSWERED_RETRY_WAITS: [Duration; 3] = [
    Duration::from_millis(10),
    Duration::from_millis(50),
    Duration::from_millis(250),
];

/// Whether `error` is what a request the member dropped unanswered ends with: its stream stopped
/// or reset while writing the request, or ended or reset before the first report. A member that
/// went quiet (a timeout) or sent something malformed is not asked again.
fn is_dropped_unanswered(error: &PreheatRequestError) -> bool {
    matches!(
        error,
        PreheatRequestError::Io(_)
            | PreheatRequestError::Read(TransferError::Io(_) | TransferError::EndedEarly(_))
    )
}

/// One try of [`request`]; sets `answered` once a report has come.
async fn request_once(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    request: &PreheatRequest,
    on_progress: &mut (dyn FnMut(u64) + Send),
    answered: &mut bool,
) -> Result<PreheatReport, PreheatRequestError> {
    let mut stream =
        tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, PREHEAT_PROTOCOL))
            .await
            .map_err(|_| PreheatRequestError::Timeout)?
            .map_err(|e| PreheatRequestError::Open(e.to_string()))?;
    stream.write_all(&request.encode()).await?;
    stream.flush().await?;
    loop {
        let report = read_message::<PreheatReport>(&mut stream, REPORT_TIMEOUT)
            .await
            .map_err(PreheatRequestError::Read)?;
        *answered = true;
        match report {
            PreheatReport::Progress(bytes_done) => on_progress(bytes_done),
            last => {
                let _ = stream.close().await;
                return Ok(last);
            }
        }
    }
}

/// Serves preheat requests from members until `stop`.
pub(super) async fn serve(
    incoming: libp2p_stream::IncomingStreams,
    members: PeerTable,
    warmer: WarmerSlot,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) {
    accept_streams(
        incoming,
        Admit::Members(members, metrics),
        SERVE_QUEUE,
        "preheat",
        stop,
        |_peer, stream| {
            let warmer = warmer.get().cloned();
            async move {
                if let Err(error) = serve_one(stream, warmer).await {
                    tracing::debug!(%error, "preheat request ended early");
                }
            }
        },
    )
    .await;
}

/// Why serving one preheat request stopped.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("reading the request: {0}")]
    Read(TransferError),
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
}

async fn serve_one(
    mut stream: libp2p::Stream,
    warmer: Option<Arc<dyn BlobWarmer>>,
) -> Result<(), ServeError> {
    let request: PreheatRequest = read_message(&mut stream, REQUEST_TIMEOUT)
        .await
        .map_err(ServeError::Read)?;
    let Some(warmer) = warmer else {
        let refusal = PreheatReport::failed("this member does not take preheat requests yet");
        stream.write_all(&refusal.encode()).await?;
        stream.close().await?;
        return Ok(());
    };
    let digest = request.digest();
    tracing::info!(%digest, ns = %request.upstream, repo = %request.repo, "preheat asked by a member");
    let (progress, mut bytes_done) = watch::channel(0u64);
    let mut fetch = warmer.warm(request, progress);
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sent = (0u64, tokio::time::Instant::now());
    let last = loop {
        tokio::select! {
            last = &mut fetch => break last,
            _ = tick.tick() => {
                let done = *bytes_done.borrow_and_update();
                if done != last_sent.0 || last_sent.1.elapsed() >= HEARTBEAT {
                    let report = PreheatReport::Progress(done);
                    stream.write_all(&report.encode()).await?;
                    stream.flush().await?;
                    last_sent = (done, tokio::time::Instant::now());
                }
            }
        }
    };
    tracing::info!(%digest, report = ?last, "preheat for a member done");
    stream.write_all(&last.encode()).await?;
    stream.close().await?;
    Ok(())
}
