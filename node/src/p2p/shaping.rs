//! TESTING ONLY: network shaping for shard transfers, so a test network on one machine's loopback
//! can stand in for nodes that are far apart. Production nodes leave it off (the default), and
//! `shoald` warns at start when it is on.
//!
//! Two knobs, both applied on the serving side of `/shoal/shards/1`:
//! - an egress cap: one token bucket shared by all of this node's outgoing shard transfers, like
//!   the node's uplink. Shard bytes are written in pieces of at most [`PIECE_BYTES`], each after
//!   waiting for its tokens;
//! - an added latency per region pair (symmetric): before answering a transfer request from a
//!   peer whose region pairs with this node's own, the node waits that long once, which stands for
//!   the request's round trip.
//!
//! And one fault for chaos tests: `flip_served_bytes` makes the node a lying member, which flips
//! the first byte of every shard it sends (the frame still names the true hash), so that tests can
//! check that receivers catch, avoid and recover from a member serving bad bytes.
//!
//! It owns no I/O beyond sleeping and writing to the stream it is handed. The bucket's arithmetic
//! is a pure function of `now` ([`TokenBucket::wait_for`]) so it is tested without clocks.

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{AsyncWrite, AsyncWriteExt as _};

/// Largest piece of shard bytes written after one wait for tokens; also the bucket's burst.
pub const PIECE_BYTES: u64 = 256 * 1024;
/// Largest added latency accepted, in milliseconds.
pub const MAX_LATENCY_MS: u64 = 60_000;
/// Most region pairs accepted.
pub const MAX_LATENCY_PAIRS: usize = 1024;

/// Why a shaping setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapingError {
    /// A latency entry is not `A:B=MS`.
    #[error("{0:?} is not REGION:REGION=MILLISECONDS, e.g. eu:us=80")]
    Malformed(String),
    /// A region name in a latency entry is not a valid region.
    #[error("{0:?} is not a region name (1 to 63 of a-z, 0-9 and -)")]
    Region(String),
    /// The latency is over [`MAX_LATENCY_MS`].
    #[error("{0} ms is more than the {MAX_LATENCY_MS} ms allowed")]
    TooLong(u64),
    /// The same pair was given twice.
    #[error("the pair {0}:{1} is given twice")]
    Duplicate(String, String),
    /// More than [`MAX_LATENCY_PAIRS`] pairs.
    #[error("more than {MAX_LATENCY_PAIRS} region pairs")]
    TooMany,
}

/// Whether `name` is a valid region name (the rule `--region` follows).
pub fn is_region_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// One added latency between two regions (symmetric; the names are kept in sorted order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionLatency {
    /// The first region, by name order.
    pub low: String,
    /// The second region, by name order (may equal `low`: latency inside a region).
    pub high: String,
    /// The added delay.
    pub delay: Duration,
}

impl std::str::FromStr for RegionLatency {
    type Err = ShapingError;

    /// Parses `A:B=MS`.
    fn from_str(text: &str) -> Result<Self, ShapingError> {
        let malformed = || ShapingError::Malformed(text.to_owned());
        let (pair, ms) = text.split_once('=').ok_or_else(malformed)?;
        let (a, b) = pair.split_once(':').ok_or_else(malformed)?;
        let (a, b, ms) = (a.trim(), b.trim(), ms.trim());
        for region in [a, b] {
            if !is_region_name(region) {
                return Err(ShapingError::Region(region.to_owned()));
            }
        }
        if ms.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed());
        }
        let ms: u64 = ms.parse().map_err(|_| ShapingError::TooLong(u64::MAX))?;
        if ms > MAX_LATENCY_MS {
            return Err(ShapingError::TooLong(ms));
        }
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        Ok(RegionLatency {
            low: low.to_owned(),
            high: high.to_owned(),
            delay: Duration::from_millis(ms),
        })
    }
}

impl std::fmt::Display for RegionLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}={}", self.low, self.high, self.delay.as_millis())
    }
}

/// The shaping settings, validated; the default is off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShapingConfig {
    /// Cap on this node's outgoing shard bytes per second, if any.
    pub egress_bytes_per_sec: Option<NonZeroU64>,
    /// Added latency per region pair.
    pub latency: Vec<RegionLatency>,
    /// Whether every served shard has its first byte flipped (a lying member, for chaos tests).
    pub flip_served_bytes: bool,
}

impl ShapingConfig {
    /// Builds the settings from a rate and `A:B=MS` entries, checking every entry.
    pub fn new(
        egress_bytes_per_sec: Option<NonZeroU64>,
        latency: &[String],
    ) -> Result<Self, ShapingError> {
        if latency.len() > MAX_LATENCY_PAIRS {
            return Err(ShapingError::TooMany);
        }
        let mut parsed: Vec<RegionLatency> = Vec::with_capacity(latency.len());
        for entry in latency {
            let pair: RegionLatency = entry.parse()?;
            if parsed
                .iter()
                .any(|p| p.low == pair.low && p.high == pair.high)
            {
                return Err(ShapingError::Duplicate(pair.low, pair.high));
            }
            parsed.push(pair);
        }
        Ok(Self {
            egress_bytes_per_sec,
            latency: parsed,
            flip_served_bytes: false,
        })
    }

    /// The latency pairs as `A:B=MS`, comma-separated (for logs).
    pub fn latency_list(&self) -> String {
        let pairs: Vec<String> = self.latency.iter().map(ToString::to_string).collect();
        pairs.join(",")
    }

    /// Whether any shaping (or the lying-member fault) is configured.
    pub fn is_enabled(&self) -> bool {
        self.egress_bytes_per_sec.is_some() || !self.latency.is_empty() || self.flip_served_bytes
    }

    /// The added latency between `local` and `remote`, if that pair has one.
    pub fn latency_between(&self, local: &str, remote: &str) -> Option<Duration> {
        let (low, high) = if local <= remote {
            (local, remote)
        } else {
            (remote, local)
        };
        self.latency
            .iter()
            .find(|p| p.low == low && p.high == high)
            .map(|p| p.delay)
    }
}

/// A token bucket of bytes that lets a caller reserve ahead: a reservation larger than the tokens
/// on hand puts the bucket in debt, and the caller waits until the debt would be paid. Concurrent
/// callers therefore queue in reservation order and together never exceed the rate.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    /// Tokens on hand at `updated`, in bytes; negative while in debt.
    tokens: i128,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket refilled at `rate` bytes per second, holding at most `burst` bytes.
    pub fn new(rate: NonZeroU64, burst: u64, now: Instant) -> Self {
        Self {
            rate: rate.get(),
            burst,
            tokens: i128::from(burst),
            updated: now,
        }
    }

    /// Reserves `bytes` at `now` and returns how long the caller must wait before sending them.
    pub fn wait_for(&mut self, bytes: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.updated);
        self.updated = self.updated.max(now);
        let refill = elapsed.as_nanos() * u128::from(self.rate) / 1_000_000_000;
        let refill = i128::try_from(refill).unwrap_or(i128::MAX);
        self.tokens = self
            .tokens
            .saturating_add(refill)
            .min(i128::from(self.burst));
        self.tokens -= i128::from(bytes);
        if self.tokens >= 0 {
            return Duration::ZERO;
        }
        let debt = self.tokens.unsigned_abs();
        // Round up, so a caller never sends before its tokens exist.
        let nanos = (debt * 1_000_000_000).div_ceil(u128::from(self.rate));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// The shaping a node applies to what it serves; cheap to clone. Off, every method returns at
/// once.
#[derive(Debug, Clone, Default)]
pub struct Shaping {
    inner: Option<Arc<ShapingState>>,
}

#[derive(Debug)]
struct ShapingState {
    local_region: String,
    latency: BTreeMap<String, Duration>,
    egress: Option<Mutex<TokenBucket>>,
    flip_served_bytes: bool,
}

impl Shaping {
    /// The shaping of a node in `local_region`; off when `config` configures nothing.
    pub fn new(config: &ShapingConfig, local_region: &str) -> Self {
        if !config.is_enabled() {
            return Self::default();
        }
        let latency = config
            .latency
            .iter()
            .filter_map(|p| {
                let remote = if p.low == local_region {
                    &p.high
                } else if p.high == local_region {
                    &p.low
                } else {
                    return None;
                };
                Some((remote.clone(), p.delay))
            })
            .collect();
        let egress = config
            .egress_bytes_per_sec
            .map(|rate| Mutex::new(TokenBucket::new(rate, PIECE_BYTES, Instant::now())));
        Self {
            inner: Some(Arc::new(ShapingState {
                local_region: local_region.to_owned(),
                latency,
                egress,
                flip_served_bytes: config.flip_served_bytes,
            })),
        }
    }

    /// Waits the added latency between this node and a peer in `peer_region` (nothing when the
    /// pair has none or the peer's region is unknown).
    pub async fn delay_answer(&self, peer_region: Option<&str>) {
        let Some(state) = &self.inner else { return };
        let Some(delay) = peer_region.and_then(|r| state.latency.get(r)) else {
            return;
        };
        tracing::debug!(
            local = %state.local_region,
            peer_region = %peer_region.unwrap_or_default(),
            delay_ms = delay.as_millis() as u64,
            "testing: added latency before answering"
        );
        tokio::time::sleep(*delay).await;
    }

    /// Writes `bytes` to `stream`, paced by the egress cap when there is one (and with its first
    /// byte flipped when the node plays a lying member).
    pub async fn write_paced(
        &self,
        stream: &mut (impl AsyncWrite + Unpin),
        bytes: &[u8],
    ) -> std::io::Result<()> {
        let flipped;
        let bytes = match self.inner.as_ref() {
            Some(state) if state.flip_served_bytes && !bytes.is_empty() => {
                flipped = flip_first_byte(bytes);
                &flipped[..]
            }
            _ => bytes,
        };
        let Some(egress) = self.inner.as_ref().and_then(|s| s.egress.as_ref()) else {
            return stream.write_all(bytes).await;
        };
        for piece in bytes.chunks(PIECE_BYTES as usize) {
            let wait = egress
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .wait_for(piece.len() as u64, Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            stream.write_all(piece).await?;
        }
        Ok(())
    }
}

/// A copy of `bytes` with the first byte's bits inverted.
fn flip_first_byte(bytes: &[u8]) -> Vec<u8> {
    let mut copy = bytes.to_vec();
    if let Some(first) = copy.first_mut() {
        *first = !*first;
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lying_member_flips_the_first_byte_of_every_served_shard() {
        let honest = Shaping::new(&ShapingConfig::default(), "eu");
        let liar = Shaping::new(
            &ShapingConfig {
                flip_served_bytes: true,
                ..ShapingConfig::default()
            },
            "eu",
        );
        let shard = b"shard bytes".to_vec();
        let mut sent = Vec::new();
        futures::executor::block_on(honest.write_paced(&mut sent, &shard)).unwrap();
        assert_eq!(sent, shard);
        let mut lied = Vec::new();
        futures::executor::block_on(liar.write_paced(&mut lied, &shard)).unwrap();
        assert_eq!(lied.len(), shard.len());
        assert_eq!(lied[0], !shard[0]);
        assert_eq!(lied[1..], shard[1..]);
    }

    const MIB: u64 = 1 << 20;

    fn rate(n: u64) -> NonZeroU64 {
        NonZeroU64::new(n).unwrap()
    }

    #[test]
    fn a_full_bucket_sends_its_burst_at_once_then_paces_at_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(rate(MIB), PIECE_BYTES, start);
        assert_eq!(bucket.wait_for(PIECE_BYTES, start), Duration::ZERO);
        // The next 256 KiB at 1 MiB/s are due a quarter second later.
        assert_eq!(
            bucket.wait_for(PIECE_BYTES, start),
            Duration::from_millis(250)
        );
        // A second caller at the same instant queues behind the first.
        assert_eq!(
            bucket.wait_for(PIECE_BYTES, start),
            Duration::from_millis(500)
        );
        // Half a second on, the debt of 512 KiB is paid: nothing more to wait for those.
        let later = start + Duration::from_millis(500);
        assert_eq!(bucket.wait_for(0, later), Duration::ZERO);
        assert_eq!(
            bucket.wait_for(PIECE_BYTES, later),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(rate(MIB), PIECE_BYTES, start);
        let much_later = start + Duration::from_secs(3600);
        assert_eq!(bucket.wait_for(PIECE_BYTES, much_later), Duration::ZERO);
        assert_eq!(
            bucket.wait_for(MIB, much_later),
            Duration::from_secs(1),
            "an hour idle must not buy more than one burst"
        );
    }

    #[test]
    fn waits_round_up_and_a_clock_going_back_refills_nothing() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(rate(3), 0, start);
        // One byte at 3 B/s is due after a third of a second, rounded up to the nanosecond.
        assert_eq!(bucket.wait_for(1, start), Duration::from_nanos(333_333_334));
        let earlier = start.checked_sub(Duration::from_secs(1)).unwrap_or(start);
        assert_eq!(
            bucket.wait_for(1, earlier),
            Duration::from_nanos(666_666_667)
        );
    }

    #[test]
    fn a_reservation_larger_than_the_burst_waits_for_its_whole_debt() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(rate(8 * MIB), PIECE_BYTES, start);
        // 4 MiB with 256 KiB on hand: 3.75 MiB of debt at 8 MiB/s.
        assert_eq!(
            bucket.wait_for(4 * MIB, start),
            Duration::from_micros(468_750)
        );
    }

    #[test]
    fn latency_entries_parse_symmetric_and_are_checked() {
        let pair: RegionLatency = "us:eu=80".parse().unwrap();
        assert_eq!(pair.to_string(), "eu:us=80");
        assert_eq!(
            pair,
            RegionLatency {
                low: "eu".into(),
                high: "us".into(),
                delay: Duration::from_millis(80)
            }
        );
        assert_eq!(
            "eu-west:eu-west=0".parse::<RegionLatency>().unwrap().delay,
            Duration::ZERO
        );
        for bad in ["eu:us", "eu=80", "eu:us=", "eu:us=-1", "eu:us=8x", ":us=1"] {
            assert!(bad.parse::<RegionLatency>().is_err(), "{bad} accepted");
        }
        assert_eq!(
            "EU:us=1".parse::<RegionLatency>(),
            Err(ShapingError::Region("EU".into()))
        );
        assert_eq!(
            "eu:us=60001".parse::<RegionLatency>(),
            Err(ShapingError::TooLong(60_001))
        );
        assert!("eu:us=99999999999999999999999"
            .parse::<RegionLatency>()
            .is_err());
        assert_eq!(
            ShapingConfig::new(None, &["eu:us=1".into(), "us:eu=2".into()]),
            Err(ShapingError::Duplicate("eu".into(), "us".into()))
        );
    }

    #[test]
    fn a_node_sees_only_the_pairs_with_its_own_region() {
        let config = ShapingConfig::new(
            None,
            &["eu:us=80".into(), "ap:us=120".into(), "eu:eu=5".into()],
        )
        .unwrap();
        assert!(config.is_enabled());
        assert_eq!(
            config.latency_between("us", "eu"),
            Some(Duration::from_millis(80))
        );
        assert_eq!(config.latency_between("ap", "eu"), None);
        let shaping = Shaping::new(&config, "eu");
        let state = shaping.inner.as_ref().unwrap();
        assert_eq!(
            state.latency.iter().collect::<Vec<_>>(),
            [
                (&"eu".to_owned(), &Duration::from_millis(5)),
                (&"us".to_owned(), &Duration::from_millis(80))
            ]
        );
        assert!(state.egress.is_none());
        assert!(Shaping::new(&ShapingConfig::default(), "eu")
            .inner
            .is_none());
    }

    proptest::proptest! {
        #[test]
        fn any_latency_text_is_refused_or_round_trips(text in "[a-z0-9:=-]{0,24}") {
            if let Ok(pair) = text.parse::<RegionLatency>() {
                proptest::prop_assert!(pair.low <= pair.high);
                proptest::prop_assert!(pair.delay <= Duration::from_millis(MAX_LATENCY_MS));
                proptest::prop_assert_eq!(pair.to_string().parse::<RegionLatency>(), Ok(pair));
            }
        }
    }

    #[tokio::test]
    async fn paced_writes_deliver_every_byte_in_order() {
        let config = ShapingConfig::new(Some(rate(64 * MIB)), &[]).unwrap();
        let shaping = Shaping::new(&config, "eu");
        let bytes: Vec<u8> = (0..(PIECE_BYTES as usize * 2 + 17))
            .map(|i| i as u8)
            .collect();
        let mut out = futures::io::Cursor::new(Vec::new());
        shaping.write_paced(&mut out, &bytes).await.unwrap();
        assert_eq!(out.into_inner(), bytes);
    }
}
