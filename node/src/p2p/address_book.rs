//! The addresses the swarm task learned for connected peers (the connection's own address and
//! what identify reports), kept until the peer proves membership and its addresses go into the
//! routing table.
//!
//! Any connection can send identify data, proved or not, so the book is bounded: an entry per
//! connected peer at most (an entry goes when the peer's last connection closes), at most
//! [`MAX_ADDRESSES_PER_PEER`] addresses each, and at most a fixed number of peers (the connection
//! limits bound connected peers well below it; past it, news of new peers is dropped).

use std::collections::HashMap;

use libp2p::{Multiaddr, PeerId};

/// Most addresses kept for one peer.
pub const MAX_ADDRESSES_PER_PEER: usize = 16;

/// Addresses per connected peer (see the module docs).
#[derive(Debug)]
pub(crate) struct AddressBook {
    peers: HashMap<PeerId, Vec<Multiaddr>>,
    max_peers: usize,
}

impl AddressBook {
    /// An empty book holding at most `max_peers` peers.
    pub(crate) fn new(max_peers: usize) -> Self {
        Self {
            peers: HashMap::new(),
            max_peers,
        }
    }

    /// Records `addr` for `peer`; `false` if the book or the peer's entry is full (or already
    /// holds it).
    pub(crate) fn remember(&mut self, peer: PeerId, addr: Multiaddr) -> bool {
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.max_peers {
            return false;
        }
        let known = self.peers.entry(peer).or_default();
        if known.contains(&addr) || known.len() >= MAX_ADDRESSES_PER_PEER {
            return false;
        }
        known.push(addr);
        true
    }

    /// The addresses known for `peer`.
    pub(crate) fn addresses(&self, peer: &PeerId) -> &[Multiaddr] {
        self.peers.get(peer).map_or(&[], Vec::as_slice)
    }

    /// Forgets `peer` (its last connection closed).
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }

    /// Peers in the book.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/10.0.0.1/udp/{port}/quic-v1").parse().unwrap()
    }

    #[test]
    fn identify_data_from_many_peers_cannot_grow_the_book_past_its_bound() {
        let mut book = AddressBook::new(3);
        for _ in 0..100 {
            let peer = PeerId::random();
            for port in 0..100 {
                book.remember(peer, addr(port));
            }
        }
        assert_eq!(book.len(), 3);
        assert!(book
            .peers
            .values()
            .all(|a| a.len() == MAX_ADDRESSES_PER_PEER));
    }

    #[test]
    fn a_peer_is_forgotten_when_it_leaves_and_its_place_is_free_again() {
        let mut book = AddressBook::new(1);
        let (a, b) = (PeerId::random(), PeerId::random());
        assert!(book.remember(a, addr(1)));
        assert!(!book.remember(a, addr(1)));
        assert!(!book.remember(b, addr(2)));
        assert_eq!(book.addresses(&a), &[addr(1)]);
        book.forget(&a);
        assert!(book.addresses(&a).is_empty());
        assert!(book.remember(b, addr(2)));
        assert_eq!(book.len(), 1);
    }
}
