//! A far link: a TCP relay on loopback in front of a server (the origin registry) that makes it
//! look far away, with a round trip added to every exchange and one capped rate shared by every
//! connection's download direction.
//!
//! The node's own shaping options (`--test-latency`, `--test-egress-bytes-per-sec`) shape only
//! transfers between peers; nothing in `shoald` shapes its upstream. The relay shapes the origin
//! itself, so a node's fetches and a client's direct pulls cross the same link and can be
//! compared.
//!
//! Model: each chunk read from one side is written to the other half a round trip later (chunks
//! are pipelined, not sent one round trip at a time), and bytes towards the client leave at most
//! at the link's rate, in order, shared by all connections (one access link). A connection's set-up
//! costs nothing extra (the relay accepts locally), so a fresh connection is cheaper than over a
//! real far link: the figures measured through it are a lower bound on the far origin's cost.
//!
//! Every task of the relay stops when the [`FarLink`] is dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Largest chunk relayed at once.
const CHUNK: usize = 16 << 10;
/// Chunks in flight per direction of one connection (bounds the relay's memory).
const IN_FLIGHT: usize = 256;
/// Longest round trip the relay adds.
pub const MAX_RTT: Duration = Duration::from_secs(10);

/// The link's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkShape {
    /// Round trip added to every exchange (half each way).
    pub rtt: Duration,
    /// Bytes per second towards the client, all connections together.
    pub bytes_per_sec: u64,
}

impl LinkShape {
    /// Checks the shape is usable: a round trip of at most [`MAX_RTT`] and a rate of at least
    /// 1 KiB/s.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.rtt <= MAX_RTT,
            "a round trip of at most {MAX_RTT:?}, not {:?}",
            self.rtt
        );
        ensure!(
            self.bytes_per_sec >= 1024,
            "a rate of at least 1 KiB/s, not {} B/s",
            self.bytes_per_sec
        );
        Ok(())
    }
}

/// The shared rate: when the link is next free.
#[derive(Debug)]
struct Rate {
    bytes_per_sec: u64,
    free_at: Mutex<Instant>,
}

impl Rate {
    /// Reserves the link at `now` for `bytes` and returns when they have left it.
    fn reserve(&self, now: Instant, bytes: usize) -> Instant {
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let mut free_at = self.free_at.lock().unwrap_or_else(|p| p.into_inner());
        let start = (*free_at).max(now);
        *free_at = start + cost;
        *free_at
    }
}

/// A running far link.
#[derive(Debug)]
pub struct FarLink {
    addr: SocketAddr,
    shape: LinkShape,
    task: tokio::task::JoinHandle<()>,
}

impl FarLink {
    /// Listens on a loopback port and relays every connection to `target` with `shape`.
    pub async fn start(target: SocketAddr, shape: LinkShape) -> Result<FarLink> {
        shape.validate()?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the far link")?;
        let addr = listener.local_addr()?;
        let rate = Arc::new(Rate {
            bytes_per_sec: shape.bytes_per_sec,
            free_at: Mutex::new(Instant::now()),
        });
        let one_way = shape.rtt / 2;
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        let rate = rate.clone();
                        connections.spawn(async move {
                            // A connection that fails (the server went away) just closes.
                            let _ = relay(client, target, one_way, rate).await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(FarLink { addr, shape, task })
    }

    /// The relay's address: point clients here instead of at the server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The link's shape.
    pub fn shape(&self) -> LinkShape {
        self.shape
    }
}

impl Drop for FarLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays one connection both ways until either side closes.
async fn relay(
    client: TcpStream,
    target: SocketAddr,
    one_way: Duration,
    rate: Arc<Rate>,
) -> Result<()> {
    let server = TcpStream::connect(target)
        .await
        .with_context(|| format!("connecting to {target}"))?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pipe(client_read, server_write, one_way, None);
    let down = pipe(server_read, client_write, one_way, Some(rate));
    // Either direction closing ends the connection (HTTP/1.1 clients close both).
    tokio::select! {
        result = up => result,
        result = down => result,
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read and, with `rate`, no sooner than
/// the shared link lets it out.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    rate: Option<Arc<Rate>>,
) -> Result<()> {
    let (chunks, mut pending) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let reader = async move {
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), anyhow::Error>(());
            }
            buf.truncate(n);
            if chunks.send((Instant::now() + delay, buf)).await.is_err() {
                return Ok(());
            }
        }
    };
    let writer = async move {
        while let Some((due, buf)) = pending.recv().await {
            tokio::time::sleep_until(due).await;
            if let Some(rate) = &rate {
                tokio::time::sleep_until(rate.reserve(Instant::now(), buf.len())).await;
            }
            to.write_all(&buf).await?;
        }
        to.shutdown().await?;
        Ok::<(), anyhow::Error>(())
    };
    let (read, write) = tokio::join!(reader, writer);
    read.and(write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_out_of_range_are_refused() {
        let ok = LinkShape {
            rtt: Duration::from_millis(50),
            bytes_per_sec: 8 << 20,
        };
        assert!(ok.validate().is_ok());
        assert!(LinkShape {
            rtt: Duration::from_secs(11),
            ..ok
        }
        .validate()
        .is_err());
        assert!(LinkShape {
            bytes_per_sec: 10,
            ..ok
        }
        .validate()
        .is_err());
    }

    #[test]
    fn the_rate_is_shared_and_in_order() {
        let start = Instant::now();
        let rate = Rate {
            bytes_per_sec: 1000,
            free_at: Mutex::new(start),
        };
        let ms = Duration::from_millis;
        assert_eq!(rate.reserve(start, 500), start + ms(500));
        // A second sender waits for the first one's bytes.
        assert_eq!(rate.reserve(start + ms(100), 1000), start + ms(1500));
        // An idle link starts at once.
        assert_eq!(rate.reserve(start + ms(5000), 100), start + ms(5100));
    }

    #[tokio::test]
    async fn bytes_cross_the_link_unchanged_both_ways() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = echo.accept().await.unwrap();
            let mut buf = vec![0u8; 100_000];
            socket.read_exact(&mut buf).await.unwrap();
            socket.write_all(&buf).await.unwrap();
        });
        let link = FarLink::start(
            target,
            LinkShape {
                rtt: Duration::from_millis(2),
                bytes_per_sec: 50 << 20,
            },
        )
        .await
        .unwrap();
        let mut client = TcpStream::connect(link.addr()).await.unwrap();
        let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&sent).await.unwrap();
        let mut back = vec![0u8; sent.len()];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(back, sent);
    }
}
