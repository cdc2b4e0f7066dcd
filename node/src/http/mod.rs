//! Serving HTTP/1.1 with the limits a public-facing daemon needs: a bound on open connections,
//! a deadline for request headers, and read and write timeouts that cut off stalled or
//! non-reading clients. Used by the registry endpoint and the admin listener; knows nothing of
//! either's routes.
//!
//! **Out of file descriptors.** The server holds one descriptor in reserve. When `accept` fails
//! because the process (or the system) has no descriptor left, the reserve is released, the
//! waiting connection is accepted and answered `503 Service Unavailable` before its request is
//! taken (containerd then falls back to its next host), and the reserve is taken again. Without
//! it, connections would wait unanswered in the kernel's backlog until the client gave up.

use std::fs::File;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;

/// Connection limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time a client has to send its request headers.
    pub header_timeout: Duration,
    /// Longest a connection may go without the peer sending or accepting bytes.
    pub io_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_timeout: Duration::from_secs(30),
            io_timeout: Duration::from_secs(120),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then waits (at most `drain`) for
/// open connections to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut shutdown = pin!(shutdown);
    // Tells open connections to finish their current response and close (idle ones close now).
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let mut reserve = reserve_descriptor();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) if out_of_descriptors(&error) => {
                    tracing::warn!(%error, "out of file descriptors: answering 503 until some are free");
                    // Release the reserve to take the waiting connection and refuse it politely.
                    if reserve.take().is_some() {
                        let waiting = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
                        if let Ok(Ok((stream, _))) = waiting {
                            refuse_busy(stream).await;
                        }
                    } else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    reserve = reserve_descriptor();
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let mut timed = TimeoutStream::new(stream);
        timed.set_read_timeout(Some(limits.io_timeout));
        timed.set_write_timeout(Some(limits.io_timeout));
        let io = TokioIo::new(Box::pin(timed));
        let service = TowerToHyperService::new(router.clone());
        let mut closing = closing.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(io, service);
            let mut connection = pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = closed(&mut closing) => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    let _ = closing_tx.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(drain, permits.acquire_many(all)).await;
}

/// The descriptor held back for running out of them.
fn reserve_descriptor() -> Option<File> {
    File::open("/dev/null").ok()
}

/// Whether an `accept` failed for want of a file descriptor (per process or system-wide).
fn out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The whole answer to a connection refused for want of descriptors.
const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n";

/// Answers 503 on a connection taken with the reserve descriptor: reads what the client sent of
/// its request headers first (so closing does not reset the connection under the answer), sends
/// the answer, and closes. Bounded in time: the accept loop waits for it.
async fn refuse_busy(mut stream: TcpStream) {
    let mut request = [0u8; 8192];
    let mut seen = 0;
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        while seen < request.len() {
            match stream.read(&mut request[seen..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen += n,
            }
            if request[..seen].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        let _ = stream.write_all(BUSY_RESPONSE).await;
        let _ = stream.shutdown().await;
        // Wait for the client to close, so that nothing unread remains when this end closes.
        let mut rest = [0u8; 1024];
        while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Completes once the server starts closing.
async fn closed(closing: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        let now_closing = *closing.borrow_and_update();
        if now_closing || closing.changed().await.is_err() {
            return;
        }
    }
}
