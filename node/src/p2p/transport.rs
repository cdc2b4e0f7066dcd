//! Which transport a node uses to each member: TCP + TLS (or noise) + yamux to members of its own
//! region (the security protocol is negotiated on each connection, see `secure`),
//! QUIC to members of other regions, and whichever one a member offers when it offers only one.
//!
//! A node listens on both transports (see `config`'s `p2p_listen`), so a member can be reached
//! over either; the first connection to it is whatever was dialled first (a bootstrap address, an
//! address the DHT named, the member's own dial). Once identify has told this node the member's
//! region and listen addresses, [`next_step`] decides, from those alone, whether the connection
//! is the one the rule wants, whether to dial the member again over the other transport, or which
//! connection to close now that the wanted one is up. The swarm task feeds it events and carries
//! out its steps; this module does no I/O.
//!
//! Why this rule (BENCHMARKS.md, "One blob from one peer"): on one host pair inside a data centre,
//! TCP + noise + yamux costs the serving member 39% less CPU per GiB than QUIC (noise frames of up
//! to 64 KiB against QUIC's 1.4 KB datagrams, each sealed and sent in user space) and the
//! receiving member about what a fill from the origin costs, so it is the one that lets a holder
//! feed the most peers. Across regions, QUIC's reasons hold: no head-of-line blocking between the
//! streams of one connection on a lossy wide-area path, and one round trip to connect.
//!
//! Two ends must not tear down each other's connections: only the end that dialled a connection
//! over the wrong transport dials the replacement and later closes its own wrong connection, and
//! only once this end has finished the membership proof with the member (the proof may run on
//! that connection) and the member has spoken identify over the replacement. The last condition
//! keeps the member's view whole: its swarm reports a connection before its handlers speak on
//! it, so the member has seen the replacement open before it sees the old one close, and never
//! takes itself to be disconnected (which would drop this node's membership there while this
//! node, still connected, would not prove it again). A member that cannot be reached over the
//! wanted transport (the dial fails, or it offers only the other one) keeps the connection it
//! has.
//!
//! **Invariant:** a connection is only ever closed here when another connection to the same
//! member, over the wanted transport, is open.

use std::collections::HashMap;

use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};

use super::address_book::MAX_ADDRESSES_PER_PEER;

/// A transport a node speaks to its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// QUIC v1 over UDP (`/udp/N/quic-v1`).
    Quic,
    /// TCP with TLS 1.3 (or noise, for nodes of earlier releases) and yamux streams (`/tcp/N`).
    Tcp,
}

impl Transport {
    /// The name used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
        }
    }
}

/// The transport `addr` speaks, if it is one this node has: QUIC for `/udp/../quic-v1`, TCP for a
/// plain `/tcp/..` (not websocket or other layers over TCP).
pub fn transport_of(addr: &Multiaddr) -> Option<Transport> {
    let mut saw_udp = false;
    let mut found = None;
    for protocol in addr.iter() {
        match protocol {
            Protocol::Udp(_) => saw_udp = true,
            Protocol::QuicV1 if saw_udp && found.is_none() => found = Some(Transport::Quic),
            Protocol::Tcp(_) if found.is_none() && !saw_udp => found = Some(Transport::Tcp),
            Protocol::Ip4(_)
            | Protocol::Ip6(_)
            | Protocol::Dns(_)
            | Protocol::Dns4(_)
            | Protocol::Dns6(_)
            | Protocol::P2p(_) => {}
            _ => return None,
        }
    }
    found
}

/// The transport this node wants to a member of `peer_region`: TCP inside its own region, QUIC
/// across regions and to a member that announced no region.
pub fn preferred(local_region: &str, peer_region: Option<&str>) -> Transport {
    if peer_region == Some(local_region) {
        Transport::Tcp
    } else {
        Transport::Quic
    }
}

/// The transport to use to a member that offers `offered` (its listen addresses): the preferred
/// one if it offers it, else the one it offers; `None` when it offers neither.
pub fn dial_choice(
    local_region: &str,
    peer_region: Option<&str>,
    offered: &[Multiaddr],
) -> Option<Transport> {
    let wanted = preferred(local_region, peer_region);
    let offers = |transport| offered.iter().any(|a| transport_of(a) == Some(transport));
    if offers(wanted) {
        return Some(wanted);
    }
    [Transport::Quic, Transport::Tcp]
        .into_iter()
        .find(|&other| other != wanted && offers(other))
}

/// The addresses among `offered` that speak `transport`, in their order.
pub fn addresses_for(transport: Transport, offered: &[Multiaddr]) -> Vec<Multiaddr> {
    offered
        .iter()
        .filter(|a| transport_of(a) == Some(transport))
        .cloned()
        .collect()
}

/// One open connection to a member, as the rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// The swarm's id of the connection.
    pub id: ConnectionId,
    /// Its transport; `None` for an address of neither kind (never dialled by this node).
    pub transport: Option<Transport>,
    /// Whether this node dialled it (else the member did).
    pub dialled_here: bool,
    /// Whether the member has sent identify over it (so its end has it open).
    pub identified: bool,
}

/// What to do about a member's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// They are as the rule wants, or nothing can be done yet or at all.
    Nothing,
    /// Dial the member over the wanted transport, at these addresses.
    Dial(Vec<Multiaddr>),
    /// The wanted connection is up: close these (dialled here, over the other transport).
    Close(Vec<ConnectionId>),
}

/// What this node knows of one connected member, for [`next_step`].
#[derive(Debug, Clone, Copy)]
pub struct Situation<'a> {
    /// This node's region.
    pub local_region: &'a str,
    /// The member's region, once identify has said it.
    pub peer_region: Option<&'a str>,
    /// The member's listen addresses, from identify (empty until then).
    pub offered: &'a [Multiaddr],
    /// Its open connections.
    pub links: &'a [Link],
    /// Whether this node has already dialled it over the wanted transport since it connected
    /// (once is enough: a failed dial leaves the connection it has).
    pub dialled_wanted: bool,
    /// Whether the membership proof with it has finished on this end.
    pub proved: bool,
}

/// The rule of the module docs, as a pure function of what is known of one member.
pub fn next_step(situation: Situation<'_>) -> Step {
    // Until identify has spoken, the member's offer is unknown: keep what there is.
    if situation.offered.is_empty() {
        return Step::Nothing;
    }
    let Some(wanted) = dial_choice(
        situation.local_region,
        situation.peer_region,
        situation.offered,
    ) else {
        return Step::Nothing;
    };
    let mut wanted_links = situation
        .links
        .iter()
        .filter(|link| link.transport == Some(wanted))
        .peekable();
    if wanted_links.peek().is_some() {
        let confirmed = wanted_links.any(|link| link.identified);
        if !situation.proved || !confirmed {
            return Step::Nothing;
        }
        let close: Vec<ConnectionId> = situation
            .links
            .iter()
            .filter(|link| link.dialled_here && link.transport != Some(wanted))
            .map(|link| link.id)
            .collect();
        return if close.is_empty() {
            Step::Nothing
        } else {
            Step::Close(close)
        };
    }
    let dialled_a_wrong_one = situation.links.iter().any(|link| link.dialled_here);
    if situation.dialled_wanted || !dialled_a_wrong_one {
        return Step::Nothing;
    }
    let addresses = addresses_for(wanted, situation.offered);
    if addresses.is_empty() {
        Step::Nothing
    } else {
        Step::Dial(addresses)
    }
}

/// What the swarm task knows of one connected peer for the rule.
#[derive(Debug, Default)]
struct Entry {
    region: Option<String>,
    offered: Vec<Multiaddr>,
    links: Vec<Link>,
    dialled_wanted: bool,
}

/// The rule's state for every connected peer: connections, region and offered addresses. Bounded
/// like the address book: an entry per connected peer (removed with its last connection), at most
/// [`MAX_ADDRESSES_PER_PEER`] offered addresses each, at most `max_peers` entries.
#[derive(Debug)]
pub(crate) struct TransportBook {
    peers: HashMap<PeerId, Entry>,
    max_peers: usize,
}

impl TransportBook {
    /// An empty book for at most `max_peers` peers.
    pub(crate) fn new(max_peers: usize) -> Self {
        Self {
            peers: HashMap::new(),
            max_peers,
        }
    }

    fn entry(&mut self, peer: PeerId) -> Option<&mut Entry> {
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.max_peers {
            return None;
        }
        Some(self.peers.entry(peer).or_default())
    }

    /// A connection to `peer` opened.
    pub(crate) fn connected(&mut self, peer: PeerId, link: Link) {
        if let Some(entry) = self.entry(peer) {
            entry.links.push(link);
        }
    }

    /// A connection to `peer` closed; with its last one, the peer is forgotten.
    pub(crate) fn disconnected(&mut self, peer: &PeerId, id: ConnectionId) {
        let Some(entry) = self.peers.get_mut(peer) else {
            return;
        };
        entry.links.retain(|link| link.id != id);
        if entry.links.is_empty() {
            self.peers.remove(peer);
        }
    }

    /// Identify, over `connection`, said `peer`'s region and listen addresses (replacing what it
    /// said before).
    pub(crate) fn identified(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        region: Option<String>,
        offered: Vec<Multiaddr>,
    ) {
        // Identify only speaks over an open connection, which `connected` recorded.
        if let Some(entry) = self.peers.get_mut(&peer) {
            for link in entry.links.iter_mut().filter(|link| link.id == connection) {
                link.identified = true;
            }
            entry.region = region;
            entry.offered = offered
                .into_iter()
                .filter(|addr| transport_of(addr).is_some())
                .take(MAX_ADDRESSES_PER_PEER)
                .collect();
        }
    }

    /// Records that this node dialled `peer` over the wanted transport.
    pub(crate) fn dialled_wanted(&mut self, peer: &PeerId) {
        if let Some(entry) = self.peers.get_mut(peer) {
            entry.dialled_wanted = true;
        }
    }

    /// The rule's step for `peer` (see [`next_step`]).
    pub(crate) fn step(&self, peer: &PeerId, local_region: &str, proved: bool) -> Step {
        let Some(entry) = self.peers.get(peer) else {
            return Step::Nothing;
        };
        next_step(Situation {
            local_region,
            peer_region: entry.region.as_deref(),
            offered: &entry.offered,
            links: &entry.links,
            dialled_wanted: entry.dialled_wanted,
            proved,
        })
    }

    /// Open connections over each transport: (QUIC, TCP).
    pub(crate) fn counts(&self) -> (u64, u64) {
        let mut counts = (0, 0);
        for link in self.peers.values().flat_map(|entry| &entry.links) {
            match link.transport {
                Some(Transport::Quic) => counts.0 += 1,
                Some(Transport::Tcp) => counts.1 += 1,
                None => {}
            }
        }
        counts
    }

    /// Peers in the book.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> Multiaddr {
        text.parse().unwrap()
    }

    fn both() -> Vec<Multiaddr> {
        vec![
            addr("/ip4/10.0.0.5/udp/4001/quic-v1"),
            addr("/ip4/10.0.0.5/tcp/4001"),
        ]
    }

    fn link(n: usize, transport: Transport, dialled_here: bool) -> Link {
        Link {
            id: ConnectionId::new_unchecked(n),
            transport: Some(transport),
            dialled_here,
            identified: true,
        }
    }

    fn situation<'a>(
        peer_region: Option<&'a str>,
        offered: &'a [Multiaddr],
        links: &'a [Link],
    ) -> Situation<'a> {
        Situation {
            local_region: "eu",
            peer_region,
            offered,
            links,
            dialled_wanted: false,
            proved: true,
        }
    }

    #[test]
    fn addresses_are_told_apart_by_transport() {
        assert_eq!(
            transport_of(&addr("/ip4/0.0.0.0/udp/4001/quic-v1")),
            Some(Transport::Quic)
        );
        assert_eq!(
            transport_of(&addr(
                "/ip6/::1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
            )),
            Some(Transport::Tcp)
        );
        assert_eq!(
            transport_of(&addr("/dns4/node-a/tcp/4001")),
            Some(Transport::Tcp)
        );
        // UDP without QUIC, websockets and old QUIC drafts are not transports this node has.
        assert_eq!(transport_of(&addr("/ip4/1.2.3.4/udp/4001")), None);
        assert_eq!(transport_of(&addr("/ip4/1.2.3.4/tcp/4001/ws")), None);
        assert_eq!(transport_of(&addr("/ip4/1.2.3.4/udp/4001/quic")), None);
        assert_eq!(transport_of(&addr("/ip4/1.2.3.4")), None);
    }

    #[test]
    fn tcp_inside_the_region_quic_across_and_to_a_member_of_no_region() {
        let offered = both();
        assert_eq!(
            dial_choice("eu", Some("eu"), &offered),
            Some(Transport::Tcp)
        );
        assert_eq!(
            dial_choice("eu", Some("us"), &offered),
            Some(Transport::Quic)
        );
        assert_eq!(dial_choice("eu", None, &offered), Some(Transport::Quic));
    }

    #[test]
    fn a_member_offering_one_transport_is_dialled_over_it_whatever_the_region() {
        let quic_only = vec![addr("/ip4/10.0.0.5/udp/4001/quic-v1")];
        let tcp_only = vec![addr("/ip4/10.0.0.5/tcp/4001")];
        assert_eq!(
            dial_choice("eu", Some("eu"), &quic_only),
            Some(Transport::Quic)
        );
        assert_eq!(
            dial_choice("eu", Some("us"), &tcp_only),
            Some(Transport::Tcp)
        );
        assert_eq!(
            dial_choice("eu", Some("eu"), &[addr("/ip4/1.2.3.4/tcp/1/ws")]),
            None
        );
        assert_eq!(dial_choice("eu", Some("eu"), &[]), None);
    }

    #[test]
    fn the_dialler_of_a_quic_connection_inside_its_region_dials_tcp_once() {
        let offered = both();
        let links = [link(1, Transport::Quic, true)];
        assert_eq!(
            next_step(situation(Some("eu"), &offered, &links)),
            Step::Dial(vec![addr("/ip4/10.0.0.5/tcp/4001")])
        );
        let already = Situation {
            dialled_wanted: true,
            ..situation(Some("eu"), &offered, &links)
        };
        assert_eq!(next_step(already), Step::Nothing);
    }

    #[test]
    fn the_end_that_did_not_dial_leaves_the_replacement_to_the_other() {
        let offered = both();
        let links = [link(1, Transport::Quic, false)];
        assert_eq!(
            next_step(situation(Some("eu"), &offered, &links)),
            Step::Nothing
        );
    }

    #[test]
    fn across_regions_a_tcp_connection_is_replaced_by_quic() {
        let offered = both();
        let links = [link(1, Transport::Tcp, true)];
        assert_eq!(
            next_step(situation(Some("us"), &offered, &links)),
            Step::Dial(vec![addr("/ip4/10.0.0.5/udp/4001/quic-v1")])
        );
    }

    #[test]
    fn the_wrong_connection_closes_only_once_the_wanted_one_is_up_and_the_proof_is_done() {
        let offered = both();
        let links = [
            link(1, Transport::Quic, true),
            link(2, Transport::Tcp, true),
        ];
        assert_eq!(
            next_step(situation(Some("eu"), &offered, &links)),
            Step::Close(vec![ConnectionId::new_unchecked(1)])
        );
        let proving = Situation {
            proved: false,
            ..situation(Some("eu"), &offered, &links)
        };
        assert_eq!(next_step(proving), Step::Nothing);
        // Not before the member has spoken over the new one: until then its end may not have it
        // yet, and closing the old one would look to it like this node leaving.
        let unheard = [
            link(1, Transport::Quic, true),
            Link {
                identified: false,
                ..link(2, Transport::Tcp, true)
            },
        ];
        assert_eq!(
            next_step(situation(Some("eu"), &offered, &unheard)),
            Step::Nothing
        );
        // A wrong connection the member dialled is the member's to close.
        let theirs = [
            link(1, Transport::Quic, false),
            link(2, Transport::Tcp, true),
        ];
        assert_eq!(
            next_step(situation(Some("eu"), &offered, &theirs)),
            Step::Nothing
        );
    }

    #[test]
    fn nothing_changes_before_identify_or_when_the_connection_is_already_right() {
        let links = [link(1, Transport::Quic, true)];
        assert_eq!(next_step(situation(Some("eu"), &[], &links)), Step::Nothing);
        let offered = both();
        assert_eq!(
            next_step(situation(Some("us"), &offered, &links)),
            Step::Nothing
        );
        let tcp = [link(1, Transport::Tcp, true)];
        assert_eq!(
            next_step(situation(Some("eu"), &offered, &tcp)),
            Step::Nothing
        );
    }

    #[test]
    fn a_member_that_offers_only_the_other_transport_keeps_its_connection() {
        let quic_only = vec![addr("/ip4/10.0.0.5/udp/4001/quic-v1")];
        let links = [link(1, Transport::Quic, true)];
        assert_eq!(
            next_step(situation(Some("eu"), &quic_only, &links)),
            Step::Nothing
        );
    }

    #[test]
    fn the_book_forgets_a_peer_with_its_last_connection_and_stays_bounded() {
        let mut book = TransportBook::new(2);
        let a = PeerId::random();
        let fresh = |n, transport| Link {
            identified: false,
            ..link(n, transport, true)
        };
        book.connected(a, fresh(1, Transport::Quic));
        book.identified(a, ConnectionId::new_unchecked(1), Some("eu".into()), both());
        assert_eq!(
            book.step(&a, "eu", true),
            Step::Dial(vec![addr("/ip4/10.0.0.5/tcp/4001")])
        );
        book.dialled_wanted(&a);
        book.connected(a, fresh(2, Transport::Tcp));
        assert_eq!(book.counts(), (1, 1));
        assert_eq!(book.step(&a, "eu", true), Step::Nothing);
        book.identified(a, ConnectionId::new_unchecked(2), Some("eu".into()), both());
        assert_eq!(
            book.step(&a, "eu", true),
            Step::Close(vec![ConnectionId::new_unchecked(1)])
        );
        book.disconnected(&a, ConnectionId::new_unchecked(1));
        assert_eq!(book.counts(), (0, 1));
        book.disconnected(&a, ConnectionId::new_unchecked(2));
        assert_eq!(book.len(), 0);
        // Identify from a peer with no recorded connection adds nothing.
        book.identified(
            PeerId::random(),
            ConnectionId::new_unchecked(9),
            None,
            both(),
        );
        assert_eq!(book.len(), 0);
        for n in 0..5 {
            book.connected(PeerId::random(), link(10 + n, Transport::Quic, false));
        }
        assert_eq!(book.len(), 2);
        let many: Vec<Multiaddr> = (0..100)
            .map(|port| addr(&format!("/ip4/10.0.0.5/tcp/{}", 1000 + port)))
            .collect();
        let b = PeerId::random();
        let mut small = TransportBook::new(1);
        small.connected(b, link(1, Transport::Quic, true));
        small.identified(b, ConnectionId::new_unchecked(1), Some("eu".into()), many);
        match small.step(&b, "eu", true) {
            Step::Dial(addresses) => assert_eq!(addresses.len(), MAX_ADDRESSES_PER_PEER),
            other => panic!("expected a dial, got {other:?}"),
        }
    }
}
