//! `shoal bench transport`: shard-transfer throughput and small-message latency over loopback,
//! raw quinn beside the node's own libp2p stacks, with both ends in this process.
//!
//! Owns the measurement only: it builds its own endpoints and swarms and never touches the node's
//! peer network. The libp2p swarms are built the way `shoal_node::p2p::start` builds its swarm
//! (one identity, TCP + noise + yamux and QUIC in one `SwarmBuilder`, `libp2p_stream::Behaviour`
//! for raw streams, the node's idle-connection timeout), so the figures are the node's stack's.
//!
//! The bench protocol is one request and one answer per round, repeatable on one stream: the
//! client writes a [`REQUEST_LEN`]-byte request whose first 8 bytes (little-endian) ask for an
//! answer of that many bytes; the server writes the answer in [`PIECE_LEN`] pieces, the average
//! shard at the default chunking, as the node writes a shard at a time. Answer bytes are a pure function of
//! their position, so the client can check a whole answer's BLAKE3 without the server hashing.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{identity, noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::task::JoinHandle;
use tokio_util::compat::FuturesAsyncReadCompatExt as _;

/// The bench's stream protocol on the libp2p transports.
const BENCH_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal-bench/transport/1");
/// Every request's length; also the answer length of the latency rounds.
pub const REQUEST_LEN: usize = 64;
/// The write size of an answer: a shard-sized piece (the default chunking averages 1 MiB).
pub const PIECE_LEN: usize = 1 << 20;
/// The largest answer a server agrees to send; longer requests end the stream.
const MAX_ANSWER: u64 = 64 << 30;
/// Longest wait for a listener to bind or a connection to come up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at one fetch whose stream the server keeps dropping before answering.
const OPEN_ATTEMPTS: u32 = 100;
/// Pause before opening a dropped stream again.
const RETRY_PAUSE: Duration = Duration::from_millis(1);
/// Round trips run before the latency rounds that are recorded.
const WARM_UP_ROUNDS: usize = 100;

/// What `shoal bench transport` measures.
#[derive(Debug, Clone, clap::Args)]
pub struct TransportArgs {
    /// Bytes moved per throughput run, in MiB: on one stream, then split over `--streams`.
    #[arg(long, default_value_t = 1024)]
    pub size_mib: u64,
    /// Runs per throughput measurement (median, min and max are reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Concurrent streams in the second throughput measurement.
    #[arg(long, default_value_t = 8)]
    pub streams: usize,
    /// Recorded round trips per latency measurement.
    #[arg(long, default_value_t = 2000)]
    pub round_trips: usize,
}

/// A transport under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// quinn with its default transport settings and a self-signed rcgen certificate.
    QuinnSelfSigned,
    /// The same with ChaCha20-Poly1305 preferred, in libp2p-tls' cipher-suite order: separates
    /// the cipher from everything else libp2p changes.
    QuinnSelfSignedChaCha,
    /// quinn authenticated by libp2p identities (libp2p-tls certificates) with the transport
    /// settings libp2p-quic applies: raw quinn as the node would use it.
    QuinnNodeIdentity,
    /// libp2p QUIC with `libp2p_stream` raw streams: the node's transfer stack.
    Libp2pQuic,
    /// libp2p TCP + noise + yamux with `libp2p_stream`: the node's fallback transport.
    Libp2pTcp,
}

impl Transport {
    /// Every transport, the baseline first.
    pub const ALL: [Transport; 5] = [
        Transport::QuinnSelfSigned,
        Transport::QuinnSelfSignedChaCha,
        Transport::QuinnNodeIdentity,
        Transport::Libp2pQuic,
        Transport::Libp2pTcp,
    ];

    fn label(self) -> &'static str {
        match self {
            Transport::QuinnSelfSigned => "quinn, self-signed cert, quinn defaults",
            Transport::QuinnSelfSignedChaCha => "quinn, self-signed cert, ChaCha20 first",
            Transport::QuinnNodeIdentity => "quinn, libp2p-tls identity + libp2p settings",
            Transport::Libp2pQuic => "libp2p QUIC + libp2p-stream (the node's)",
            Transport::Libp2pTcp => "libp2p TCP + noise + yamux + libp2p-stream",
        }
    }
}

/// A bidirectional stream of any of the transports.
trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// Opens client streams on an established connection.
#[derive(Clone)]
enum Opener {
    Quinn(quinn::Connection),
    Libp2p {
        control: libp2p_stream::Control,
        server: PeerId,
    },
}

impl Opener {
    async fn open(&self) -> anyhow::Result<Box<dyn Duplex>> {
        match self {
            Opener::Quinn(connection) => {
                let (send, receive) = connection.open_bi().await?;
                Ok(Box::new(tokio::io::join(receive, send)))
            }
            Opener::Libp2p { control, server } => {
                let stream = control
                    .clone()
                    .open_stream(*server, BENCH_PROTOCOL)
                    .await
                    .map_err(|e| anyhow::anyhow!("opening a stream: {e}"))?;
                Ok(Box::new(stream.compat()))
            }
        }
    }
}

/// One established client-to-server connection of one transport, with the tasks that drive both
/// ends; dropping it stops them.
pub struct Link {
    opener: Opener,
    retried: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
    /// quinn endpoints stay open while the link lives.
    _endpoints: Vec<quinn::Endpoint>,
}

impl Drop for Link {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Link {
    /// Starts a server and a client of `transport` on loopback and connects them.
    pub async fn connect(transport: Transport) -> anyhow::Result<Link> {
        match transport {
            Transport::QuinnSelfSigned => quinn_link(self_signed_configs(false)?).await,
            Transport::QuinnSelfSignedChaCha => quinn_link(self_signed_configs(true)?).await,
            Transport::QuinnNodeIdentity => quinn_link(node_identity_configs()?).await,
            Transport::Libp2pQuic => libp2p_link("/ip4/127.0.0.1/udp/0/quic-v1".parse()?).await,
            Transport::Libp2pTcp => libp2p_link("/ip4/127.0.0.1/tcp/0".parse()?).await,
        }
    }

    /// Asks for `len` answer bytes on a new stream and reads them all; hashes them into
    /// `hasher` when given.
    pub async fn fetch(&self, len: u64, hasher: Option<&mut blake3::Hasher>) -> anyhow::Result<()> {
        fetch_on_new_stream(&self.opener, len, hasher, &self.retried).await
    }

    /// Fetches `len` bytes on each of `streams` concurrent streams, each in its own task;
    /// returns each stream's BLAKE3 when `hash` is set.
    pub async fn fetch_concurrently(
        &self,
        streams: usize,
        len: u64,
        hash: bool,
    ) -> anyhow::Result<Vec<Option<blake3::Hash>>> {
        let tasks: Vec<_> = (0..streams)
            .map(|_| {
                let opener = self.opener.clone();
                let retried = self.retried.clone();
                tokio::spawn(async move {
                    let mut hasher = hash.then(blake3::Hasher::new);
                    fetch_on_new_stream(&opener, len, hasher.as_mut(), &retried).await?;
                    anyhow::Ok(hasher.map(|h| h.finalize()))
                })
            })
            .collect();
        let mut hashes = Vec::with_capacity(streams);
        for task in tasks {
            hashes.push(task.await??);
        }
        Ok(hashes)
    }

    /// Streams the server dropped before answering, so far; each was opened again.
    pub fn retried_streams(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }

    /// Runs `warm_up + rounds` request/answer rounds of [`REQUEST_LEN`] bytes each way, each on
    /// a new stream (`reuse_stream` false, as the node does per request) or all on one stream;
    /// returns the recorded round trips in nanoseconds. Every answer is BLAKE3-checked.
    pub async fn round_trips(
        &self,
        warm_up: usize,
        rounds: usize,
        reuse_stream: bool,
    ) -> anyhow::Result<Histogram<u64>> {
        let expected = payload_hash(REQUEST_LEN as u64);
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
        let mut shared = if reuse_stream {
            Some(self.opener.open().await?)
        } else {
            None
        };
        for i in 0..warm_up + rounds {
            let started = Instant::now();
            let mut hasher = blake3::Hasher::new();
            match shared.as_mut() {
                Some(stream) => {
                    round(stream, REQUEST_LEN as u64, Some(&mut hasher), &mut 0).await?;
                }
                None => self.fetch(REQUEST_LEN as u64, Some(&mut hasher)).await?,
            }
            let elapsed = started.elapsed();
            anyhow::ensure!(
                hasher.finalize() == expected,
                "an answer's bytes were wrong"
            );
            if i >= warm_up {
                histogram.saturating_record(elapsed.as_nanos() as u64);
            }
        }
        if let Some(mut stream) = shared {
            stream.shutdown().await.context("closing the stream")?;
        }
        Ok(histogram)
    }
}

/// Opens a stream, asks for `len` bytes and reads them all. A stream the server drops before
/// answering is opened again, counted in `retried`: libp2p-stream drops inbound streams when its
/// accept queue (one stream deep) is full, which a burst of concurrent opens meets.
async fn fetch_on_new_stream(
    opener: &Opener,
    len: u64,
    mut hasher: Option<&mut blake3::Hasher>,
    retried: &AtomicU64,
) -> anyhow::Result<()> {
    let mut attempt = 1;
    loop {
        let mut received = 0;
        let outcome = async {
            let mut stream = opener.open().await?;
            round(&mut stream, len, hasher.as_deref_mut(), &mut received).await?;
            stream.shutdown().await.context("closing the stream")
        }
        .await;
        match outcome {
            Ok(()) => return Ok(()),
            Err(_) if received == 0 && attempt < OPEN_ATTEMPTS => {
                retried.fetch_add(1, Ordering::Relaxed);
                attempt += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(error) => return Err(error.context(format!("after {attempt} attempts"))),
        }
    }
}

/// Writes one request for `len` bytes and reads the whole answer, counting what arrived in
/// `received`.
async fn round(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin + ?Sized),
    len: u64,
    mut hasher: Option<&mut blake3::Hasher>,
    received: &mut u64,
) -> anyhow::Result<()> {
    let mut request = [0u8; REQUEST_LEN];
    request[..8].copy_from_slice(&len.to_le_bytes());
    stream
        .write_all(&request)
        .await
        .context("writing the request")?;
    stream.flush().await.context("writing the request")?;
    let mut buffer = vec![0u8; PIECE_LEN.min(len as usize)];
    let mut remaining = len;
    while remaining > 0 {
        let want = buffer.len().min(remaining as usize);
        let read = stream
            .read(&mut buffer[..want])
            .await
            .context("reading the answer")?;
        anyhow::ensure!(read > 0, "the answer ended {remaining} bytes early");
        if let Some(hasher) = hasher.as_mut() {
            hasher.update(&buffer[..read]);
        }
        remaining -= read as u64;
        *received += read as u64;
    }
    Ok(())
}

/// Answers requests on one server stream until the client closes it.
async fn serve_stream(mut stream: impl AsyncRead + AsyncWrite + Unpin) -> std::io::Result<()> {
    loop {
        let mut request = [0u8; REQUEST_LEN];
        match stream.read_exact(&mut request).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        let mut len_bytes = [0u8; 8];
        len_bytes.copy_from_slice(&request[..8]);
        let len = u64::from_le_bytes(len_bytes);
        if len > MAX_ANSWER {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "answer too long",
            ));
        }
        let mut sent = 0u64;
        for index in 0.. {
            if sent == len {
                break;
            }
            let piece = payload_piece(index, (len - sent).min(PIECE_LEN as u64) as usize);
            stream.write_all(piece).await?;
            sent += piece.len() as u64;
        }
        stream.flush().await?;
    }
    stream.shutdown().await
}

/// Incompressible bytes the answers are cut from: one piece plus room to shift each piece.
fn payload_source() -> &'static [u8] {
    static SOURCE: OnceLock<Vec<u8>> = OnceLock::new();
    SOURCE.get_or_init(|| {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut bytes = Vec::with_capacity(PIECE_LEN + 65_536);
        while bytes.len() < PIECE_LEN + 65_536 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.extend_from_slice(&state.to_le_bytes());
        }
        bytes
    })
}

/// The `index`th piece of every answer, `len` (at most [`PIECE_LEN`]) bytes; consecutive pieces
/// differ, so a dropped, repeated or reordered piece changes the answer's hash.
fn payload_piece(index: u64, len: usize) -> &'static [u8] {
    let shift = (index.wrapping_mul(4099) % 65_536) as usize;
    &payload_source()[shift..shift + len]
}

/// The BLAKE3 of a `len`-byte answer.
pub fn payload_hash(len: u64) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    let mut hashed = 0u64;
    for index in 0.. {
        if hashed == len {
            break;
        }
        let piece = payload_piece(index, (len - hashed).min(PIECE_LEN as u64) as usize);
        hasher.update(piece);
        hashed += piece.len() as u64;
    }
    hasher.finalize()
}

/// quinn's server and client configurations for one transport variant, and the server name the
/// client asks for.
struct QuinnConfigs {
    server: quinn::ServerConfig,
    client: quinn::ClientConfig,
    server_name: &'static str,
}

/// A self-signed certificate for "localhost", trusted by the client; quinn's default transport
/// settings and the ring provider's cipher suites, in its own order (AES-GCM first) or, with
/// `chacha_first`, in libp2p-tls' (ChaCha20-Poly1305 first). A TLS 1.3 server in rustls picks
/// the first of the client's suites it supports, so the client's order decides.
fn self_signed_configs(chacha_first: bool) -> anyhow::Result<QuinnConfigs> {
    use quinn::rustls::crypto::ring::{cipher_suite, default_provider};
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let certificate = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let mut provider = default_provider();
    if chacha_first {
        provider.cipher_suites = vec![
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
        ];
    }
    let provider = Arc::new(provider);
    let tls13: &[&quinn::rustls::SupportedProtocolVersion] = &[&quinn::rustls::version::TLS13];
    let server_tls = quinn::rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(tls13)?
        .with_no_client_auth()
        .with_single_cert(vec![certificate.clone()], key)?;
    let server =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server_tls)?));
    let mut roots = quinn::rustls::RootCertStore::empty();
    roots.add(certificate)?;
    let client_tls = quinn::rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(tls13)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client_tls)?));
    Ok(QuinnConfigs {
        server,
        client,
        server_name: "localhost",
    })
}

/// Both ends authenticated by ed25519 libp2p identities through libp2p-tls (the client checks
/// the server's peer id, the server the client's certificate), with the transport settings
/// libp2p-quic 0.13 sets by default: what a node speaking quinn directly would run.
fn node_identity_configs() -> anyhow::Result<QuinnConfigs> {
    let server_key = identity::Keypair::generate_ed25519();
    let client_key = identity::Keypair::generate_ed25519();
    let server_tls = libp2p_tls::make_server_config(&server_key)?;
    let client_tls =
        libp2p_tls::make_client_config(&client_key, Some(server_key.public().to_peer_id()))?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_uni_streams(0u32.into())
        .max_concurrent_bidi_streams(256u32.into())
        .datagram_receive_buffer_size(None)
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .max_idle_timeout(Some(quinn::VarInt::from_u32(10_000).into()))
        .allow_spin(false)
        .stream_receive_window(10_000_000u32.into())
        .receive_window(15_000_000u32.into());
    let transport = Arc::new(transport);
    let mut server =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server_tls)?));
    server.transport_config(transport.clone());
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client_tls)?));
    client.transport_config(transport);
    Ok(QuinnConfigs {
        server,
        client,
        // The libp2p-tls verifier checks the peer id, not the name.
        server_name: "l",
    })
}

async fn quinn_link(configs: QuinnConfigs) -> anyhow::Result<Link> {
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let server = quinn::Endpoint::server(configs.server, loopback)?;
    let server_addr = server.local_addr()?;
    let accepting = server.clone();
    let acceptor = tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            // A failed handshake shows on the client side, which reports it.
            let Ok(connection) = incoming.await else {
                continue;
            };
            tokio::spawn(async move {
                while let Ok((send, receive)) = connection.accept_bi().await {
                    // A failed stream shows on the client side, which reports it.
                    tokio::spawn(async move {
                        let _ = serve_stream(tokio::io::join(receive, send)).await;
                    });
                }
            });
        }
    });
    let mut client = quinn::Endpoint::client(loopback)?;
    client.set_default_client_config(configs.client);
    let connection = tokio::time::timeout(
        SETUP_TIMEOUT,
        client.connect(server_addr, configs.server_name)?,
    )
    .await
    .context("quinn handshake timed out")??;
    Ok(Link {
        opener: Opener::Quinn(connection),
        retried: Arc::default(),
        tasks: vec![acceptor],
        _endpoints: vec![server, client],
    })
}

/// A swarm built like the node's: TCP + noise + yamux and QUIC, raw streams, 300 s idle timeout.
fn node_like_swarm() -> anyhow::Result<Swarm<libp2p_stream::Behaviour>> {
    Ok(libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_quic()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build())
}

async fn libp2p_link(listen: Multiaddr) -> anyhow::Result<Link> {
    let mut server = node_like_swarm()?;
    let mut client = node_like_swarm()?;
    server.listen_on(listen)?;
    let server_addr = tokio::time::timeout(SETUP_TIMEOUT, async {
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
                return address;
            }
        }
    })
    .await
    .context("the server swarm did not start listening")?;
    let server_id = *server.local_peer_id();
    let mut incoming = server
        .behaviour()
        .new_control()
        .accept(BENCH_PROTOCOL)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut tasks = vec![tokio::spawn(drive(server))];
    tasks.push(tokio::spawn(async move {
        while let Some((_peer, stream)) = incoming.next().await {
            // A failed stream shows on the client side, which reports it.
            tokio::spawn(async move {
                let _ = serve_stream(stream.compat()).await;
            });
        }
    }));
    client.dial(server_addr.with(Protocol::P2p(server_id)))?;
    tokio::time::timeout(SETUP_TIMEOUT, async {
        loop {
            match client.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == server_id => {
                    return Ok(());
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    anyhow::bail!("dialling the server swarm: {error}")
                }
                _ => {}
            }
        }
    })
    .await
    .context("the client swarm did not connect")??;
    let control = client.behaviour().new_control();
    tasks.push(tokio::spawn(drive(client)));
    Ok(Link {
        opener: Opener::Libp2p {
            control,
            server: server_id,
        },
        retried: Arc::default(),
        tasks,
        _endpoints: Vec::new(),
    })
}

/// Polls a swarm for as long as the link lives; its events are not needed.
async fn drive(mut swarm: Swarm<libp2p_stream::Behaviour>) {
    loop {
        swarm.select_next_some().await;
    }
}

/// This process's CPU time so far (user + system, all threads), from /proc/self/stat.
fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    // /proc reports clock ticks of USER_HZ, which Linux fixes at 100 for user space.
    Some(Duration::from_millis((user + system) * 10))
}

/// One throughput run: MB/s, CPU seconds per GiB moved (both ends), streams opened again.
#[derive(Debug, Clone, Copy)]
struct Sample {
    megabytes_per_second: f64,
    cpu_seconds_per_gib: Option<f64>,
    retried_streams: u64,
}

async fn throughput_run(link: &Link, total: u64, streams: usize) -> anyhow::Result<Sample> {
    let cpu_before = process_cpu_time();
    let retried_before = link.retried_streams();
    let started = Instant::now();
    if streams == 1 {
        link.fetch(total, None).await?;
    } else {
        link.fetch_concurrently(streams, total / streams as u64, false)
            .await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_before.zip(process_cpu_time()).map(|(before, after)| {
        (after - before).as_secs_f64() / (total as f64 / (1u64 << 30) as f64)
    });
    Ok(Sample {
        megabytes_per_second: total as f64 / elapsed / 1e6,
        cpu_seconds_per_gib: cpu,
        retried_streams: link.retried_streams() - retried_before,
    })
}

/// Median, min and max of some figures.
fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {cores} cores available")
}

/// Checks every transport delivers exactly the bytes sent, one stream and several, before
/// anything is timed.
async fn check_delivery(links: &[(Transport, Link)], streams: usize) -> anyhow::Result<()> {
    let len = 8 * PIECE_LEN as u64 + 4099;
    let expected = payload_hash(len);
    for (transport, link) in links {
        let mut hasher = blake3::Hasher::new();
        link.fetch(len, Some(&mut hasher))
            .await
            .with_context(|| format!("{}: one stream", transport.label()))?;
        anyhow::ensure!(
            hasher.finalize() == expected,
            "{}: one stream delivered wrong bytes",
            transport.label()
        );
        let hashes = link
            .fetch_concurrently(streams, len, true)
            .await
            .with_context(|| format!("{}: {streams} streams", transport.label()))?;
        for hash in hashes {
            anyhow::ensure!(
                hash == Some(expected),
                "{}: concurrent streams delivered wrong bytes",
                transport.label()
            );
        }
    }
    Ok(())
}

/// Runs the transport benchmark and prints its tables.
pub fn run(args: TransportArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.size_mib > 0, "--size-mib must be at least 1");
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    anyhow::ensure!(
        args.size_mib.checked_rem(args.streams as u64) == Some(0),
        "--streams must divide --size-mib"
    );
    anyhow::ensure!(args.round_trips > 0, "--round-trips must be at least 1");
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(measure(args))
}

async fn measure(args: TransportArgs) -> anyhow::Result<()> {
    let total = args.size_mib << 20;
    let mut links = Vec::new();
    for transport in Transport::ALL {
        let link = Link::connect(transport)
            .await
            .with_context(|| format!("connecting {}", transport.label()))?;
        links.push((transport, link));
    }
    check_delivery(&links, args.streams).await?;
    println!("machine: {}", machine());
    println!(
        "both ends in this process on loopback, one multi-threaded tokio runtime; answers written \
         in {} KiB pieces; every transport first BLAKE3-checked on 1 and {} streams",
        PIECE_LEN >> 10,
        args.streams
    );
    for streams in [1, args.streams] {
        // Runs interleave the transports, so slow phases of a noisy machine hit all of them.
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); links.len()];
        for _ in 0..args.runs {
            for ((_, link), samples) in links.iter().zip(&mut samples) {
                samples.push(throughput_run(link, total, streams).await?);
            }
        }
        println!();
        println!(
            "{} MiB on {} stream(s) of {} MiB, {} runs",
            args.size_mib,
            streams,
            args.size_mib / streams as u64,
            args.runs
        );
        println!(
            "{:<46} {:>8} {:>8} {:>8} {:>9} {:>10} {:>8}",
            "transport (MB/s)", "median", "min", "max", "vs quinn", "CPU s/GiB", "retried"
        );
        let mut baseline = None;
        for ((transport, _), samples) in links.iter().zip(samples) {
            let (median, min, max) =
                spread(samples.iter().map(|s| s.megabytes_per_second).collect());
            let cpu = samples
                .iter()
                .map(|s| s.cpu_seconds_per_gib)
                .collect::<Option<Vec<_>>>()
                .map(spread);
            let baseline = *baseline.get_or_insert(median);
            let retried: u64 = samples.iter().map(|s| s.retried_streams).sum();
            println!(
                "{:<46} {:>8.0} {:>8.0} {:>8.0} {:>8.2}x {:>10} {:>8}",
                transport.label(),
                median,
                min,
                max,
                median / baseline,
                cpu.map_or("-".to_owned(), |(median, _, _)| format!("{median:.2}")),
                retried,
            );
        }
    }
    println!();
    println!(
        "round trip, {REQUEST_LEN} B request -> {REQUEST_LEN} B answer, {} rounds after {WARM_UP_ROUNDS} warm-up",
        args.round_trips
    );
    println!(
        "{:<46} {:>16} {:>16} {:>16} {:>16}",
        "transport", "new stream p50", "new stream p99", "same stream p50", "same stream p99"
    );
    for (transport, link) in &links {
        let fresh = link
            .round_trips(WARM_UP_ROUNDS, args.round_trips, false)
            .await?;
        let reused = link
            .round_trips(WARM_UP_ROUNDS, args.round_trips, true)
            .await?;
        let micros =
            |h: &Histogram<u64>, q: f64| format!("{:.0} us", h.value_at_quantile(q) as f64 / 1e3);
        println!(
            "{:<46} {:>16} {:>16} {:>16} {:>16}",
            transport.label(),
            micros(&fresh, 0.5),
            micros(&fresh, 0.99),
            micros(&reused, 0.5),
            micros(&reused, 0.99),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Not a multiple of the piece size, so the last piece is short.
    const ODD_LEN: u64 = 3 * PIECE_LEN as u64 + 17;

    async fn delivers_exact_bytes(transport: Transport) {
        let link = Link::connect(transport).await.expect("connect");
        let expected = payload_hash(ODD_LEN);

        let mut hasher = blake3::Hasher::new();
        link.fetch(ODD_LEN, Some(&mut hasher)).await.expect("fetch");
        assert_eq!(hasher.finalize(), expected, "{transport:?}: one stream");

        let hashes = link
            .fetch_concurrently(4, ODD_LEN, true)
            .await
            .expect("fetch concurrently");
        assert_eq!(hashes, vec![Some(expected); 4], "{transport:?}: 4 streams");

        // Several requests on one stream, then one per stream; every answer is hash-checked.
        for reuse_stream in [true, false] {
            let histogram = link
                .round_trips(2, 10, reuse_stream)
                .await
                .expect("round trips");
            assert_eq!(histogram.len(), 10, "{transport:?}: recorded rounds");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quinn_self_signed_delivers_exact_bytes() {
        delivers_exact_bytes(Transport::QuinnSelfSigned).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quinn_self_signed_chacha_delivers_exact_bytes() {
        delivers_exact_bytes(Transport::QuinnSelfSignedChaCha).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quinn_node_identity_delivers_exact_bytes() {
        delivers_exact_bytes(Transport::QuinnNodeIdentity).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn libp2p_quic_delivers_exact_bytes() {
        delivers_exact_bytes(Transport::Libp2pQuic).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn libp2p_tcp_delivers_exact_bytes() {
        delivers_exact_bytes(Transport::Libp2pTcp).await;
    }

    #[test]
    fn answers_differ_piece_to_piece() {
        // A transport that repeated or dropped a piece would go unnoticed if pieces were equal.
        assert_ne!(payload_piece(0, PIECE_LEN), payload_piece(1, PIECE_LEN));
        assert_ne!(
            payload_hash(2 * PIECE_LEN as u64),
            payload_hash(PIECE_LEN as u64)
        );
    }
}
