//! What this node knows of each connected peer: whether it has proved membership (then its
//! requests are served), whether it has also admitted this node (then it may be asked things), its
//! region (from identify), its round-trip time (from ping) and how many of this node's requests it
//! is serving now. The swarm task writes it; the protocol handlers read it to gate requests, and
//! fetchers read it to pick and rank peers, waiting for a peer that is still proving.
//!
//! A peer leaves the table when its last connection closes; what it must not be asked again
//! (after bad bytes) is kept apart, in `PeerNetwork`'s avoid list, so it outlives the connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::Notify;

/// One connected peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// It has proved that it holds the network key: its requests are served.
    pub member: bool,
    /// It has admitted this node too: it may be asked things (see `membership` for the order).
    pub ready: bool,
    /// The region it announced, if any.
    pub region: Option<String>,
    /// The latest round-trip time measured by ping.
    pub rtt: Option<Duration>,
    /// Transfer requests this node has open to it.
    pub open_requests: u32,
}

/// The connected peers, shared by the swarm task, the protocol handlers and fetchers.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerTable {
    peers: Arc<Mutex<HashMap<PeerId, PeerInfo>>>,
    /// Woken whenever a peer becomes ready.
    became_ready: Arc<Notify>,
}

impl PeerTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<PeerId, PeerInfo>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `peer` has proved membership on a connection that is still open.
    pub(crate) fn is_member(&self, peer: &PeerId) -> bool {
        self.lock().get(peer).is_some_and(|info| info.member)
    }

    /// Records that `peer` proved membership; `false` if it had already.
    pub(crate) fn set_member(&self, peer: PeerId) -> bool {
        let mut table = self.lock();
        let info = table.entry(peer).or_default();
        !std::mem::replace(&mut info.member, true)
    }

    /// Records that `peer` has admitted this node as well (a member that may be asked things);
    /// `false` if it had already.
    pub(crate) fn set_ready(&self, peer: PeerId) -> bool {
        let newly = {
            let mut table = self.lock();
            let info = table.entry(peer).or_default();
            info.member = true;
            !std::mem::replace(&mut info.ready, true)
        };
        self.became_ready.notify_waiters();
        newly
    }

    /// Whether `peer` may be asked things now.
    pub(crate) fn is_ready(&self, peer: &PeerId) -> bool {
        self.lock().get(peer).is_some_and(|info| info.ready)
    }

    /// Waits until `peer` is ready, at most `timeout`; whether it is.
    pub(crate) async fn wait_ready(&self, peer: &PeerId, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.became_ready.notified();
            tokio::pin!(notified);
            // Registered before the check, so a peer becoming ready in between still wakes us.
            notified.as_mut().enable();
            if self.is_ready(peer) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_ready(peer);
            }
        }
    }

    /// Forgets `peer` (its last connection closed); `true` if it was a member.
    pub(crate) fn remove(&self, peer: &PeerId) -> bool {
        self.lock().remove(peer).is_some_and(|info| info.member)
    }

    /// Records the region `peer` announced.
    pub(crate) fn set_region(&self, peer: PeerId, region: String) {
        self.lock().entry(peer).or_default().region = Some(region);
    }

    /// Records a round-trip time measured to `peer`.
    pub(crate) fn set_rtt(&self, peer: PeerId, rtt: Duration) {
        self.lock().entry(peer).or_default().rtt = Some(rtt);
    }

    /// Members connected now that may be asked things (ready).
    pub(crate) fn members(&self) -> Vec<PeerId> {
        self.lock()
            .iter()
            .filter(|(_, info)| info.ready)
            .map(|(peer, _)| *peer)
            .collect()
    }

    /// How many ready members are connected.
    pub(crate) fn member_count(&self) -> usize {
        self.lock().values().filter(|info| info.ready).count()
    }

    /// What is known of `peer`.
    pub(crate) fn info(&self, peer: &PeerId) -> Option<PeerInfo> {
        self.lock().get(peer).cloned()
    }

    /// Marks one more request open to `peer` until the guard is dropped.
    pub(crate) fn begin_request(&self, peer: PeerId) -> OpenRequest {
        self.lock().entry(peer).or_default().open_requests += 1;
        OpenRequest {
            table: self.clone(),
            peer,
        }
    }

    /// Orders `candidates` best first for a fetch by a node in `local_region`: ready members in
    /// the same region first, then by fewest requests open to them, then by lowest measured RTT
    /// (unknown RTTs last). Peers that are not ready members come after every member, in their
    /// given order (they may still answer once dialled and proved).
    pub(crate) fn rank(&self, candidates: &[PeerId], local_region: &str) -> Vec<PeerId> {
        let table = self.lock();
        let mut ranked: Vec<(usize, PeerId)> = candidates.iter().copied().enumerate().collect();
        ranked.sort_by_key(|(position, peer)| match table.get(peer) {
            Some(info) if info.ready => (
                0u8,
                u8::from(info.region.as_deref() != Some(local_region)),
                info.open_requests,
                info.rtt.unwrap_or(Duration::MAX),
                *position,
            ),
            _ => (1, 1, 0, Duration::MAX, *position),
        });
        ranked.into_iter().map(|(_, peer)| peer).collect()
    }
}

/// One request open to a peer; counted in its load until dropped.
#[derive(Debug)]
pub(crate) struct OpenRequest {
    table: PeerTable,
    peer: PeerId,
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        if let Some(info) = self.table.lock().get_mut(&self.peer) {
            info.open_requests = info.open_requests.saturating_sub(1);
        }
    }
}

/// The region in an identify agent string (`shoald/<version> region=<name>`), if any.
pub(crate) fn region_from_agent(agent: &str) -> Option<String> {
    agent
        .split_whitespace()
        .find_map(|part| part.strip_prefix("region="))
        .filter(|region| !region.is_empty() && region.len() <= 64)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(table: &PeerTable, region: &str, rtt_ms: u64) -> PeerId {
        let peer = PeerId::random();
        table.set_ready(peer);
        table.set_region(peer, region.to_owned());
        table.set_rtt(peer, Duration::from_millis(rtt_ms));
        peer
    }

    #[test]
    fn ranking_prefers_same_region_then_idle_then_near() {
        let table = PeerTable::default();
        let far = member(&table, "us", 1);
        let near_slow = member(&table, "eu", 40);
        let near_fast = member(&table, "eu", 5);
        let stranger = PeerId::random();
        let ranked = table.rank(&[stranger, far, near_slow, near_fast], "eu");
        assert_eq!(ranked, vec![near_fast, near_slow, far, stranger]);
        // Two requests open to the fast one make the slower one better.
        let _busy = table.begin_request(near_fast);
        let ranked = table.rank(&[near_fast, near_slow], "eu");
        assert_eq!(ranked, vec![near_slow, near_fast]);
        drop(_busy);
        assert_eq!(table.rank(&[near_slow, near_fast], "eu")[0], near_fast);
    }

    #[test]
    fn membership_ends_with_the_connection() {
        let table = PeerTable::default();
        let peer = PeerId::random();
        assert!(!table.is_member(&peer));
        assert!(table.set_member(peer));
        assert!(!table.set_member(peer));
        // Admitted, but not yet asked: it has not admitted this node.
        assert!(table.members().is_empty());
        assert!(table.set_ready(peer));
        assert!(!table.set_ready(peer));
        assert_eq!(table.members(), vec![peer]);
        assert!(table.remove(&peer));
        assert!(!table.is_member(&peer));
        assert!(!table.is_ready(&peer));
        assert_eq!(table.member_count(), 0);
    }

    #[tokio::test]
    async fn waiting_for_a_peer_ends_when_it_becomes_ready_or_at_the_timeout() {
        let table = PeerTable::default();
        let peer = PeerId::random();
        table.set_member(peer);
        assert!(!table.wait_ready(&peer, Duration::from_millis(20)).await);
        let waiter = {
            let table = table.clone();
            tokio::spawn(async move { table.wait_ready(&peer, Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        table.set_ready(peer);
        assert!(waiter.await.unwrap());
        assert!(table.wait_ready(&peer, Duration::ZERO).await);
    }

    #[test]
    fn region_is_read_from_the_agent_string() {
        assert_eq!(
            region_from_agent("shoald/0.1.0 region=eu-west").as_deref(),
            Some("eu-west")
        );
        assert_eq!(region_from_agent("shoald/0.1.0"), None);
        assert_eq!(region_from_agent("shoald/0.1.0 region="), None);
    }
}
