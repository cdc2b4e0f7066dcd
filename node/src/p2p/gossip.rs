//! Gossip for members only: gossipsub with signed messages (each author's peer identity), strict
//! validation, and every message checked by [`judge`] before it is forwarded; behind a gate per
//! connection, like `gate` does for Kademlia.
//!
//! The gate: gossipsub's connection handler to a peer that has not proved membership is never
//! polled, so it opens no stream and sends nothing (not even this node's subscriptions), and the
//! one inbound gossip stream such a peer may open is held unread. When the peer proves the key,
//! the swarm task calls [`MembersOnlyGossip::member_proved`]; each of the peer's handlers then
//! takes the held stream and starts. A peer that never proves is disconnected (`PROOF_DEADLINE`)
//! and has received no byte of gossip; gossipsub never learns its subscriptions, so it never
//! publishes to it. What arrives is judged again by [`judge`]: a message forwarded by a peer that
//! is not a member, or written by a connected peer that is not one, is rejected.
//!
//! Topics and payloads are defined in `shoal_proto::gossip`; adding a kind of news means a new
//! [`Topic`] there and an arm in [`Received`], not new plumbing here.

use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::identity::Keypair;
use libp2p::swarm::handler::{ConnectionEvent, FullyNegotiatedInbound};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};
use shoal_proto::gossip::{
    Announcement, DemandSummary, GossipMessage as _, TagNews, ThreatScores, Topic,
    MAX_GOSSIP_TRANSMIT_BYTES,
};

use super::gate::{GateIn, Openings};
use super::PeerTable;

/// The prefix of Shoal's gossipsub protocol names (`/shoal/meshsub/1.1.0` and so on), so that
/// Shoal's gossip never mixes with any other gossipsub network.
pub const GOSSIP_PROTOCOL_PREFIX: &str = "/shoal/meshsub";

/// The gossipsub settings every Shoal node uses: Shoal's protocol names, strict validation
/// (author, sequence number and signature required), every message held until the node judged
/// it, and transmissions bounded by [`MAX_GOSSIP_TRANSMIT_BYTES`].
pub fn gossipsub_config() -> gossipsub::Config {
    gossipsub::ConfigBuilder::default()
        .protocol_id_prefix(GOSSIP_PROTOCOL_PREFIX)
        .validation_mode(ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(MAX_GOSSIP_TRANSMIT_BYTES)
        .build()
        .expect("the gossipsub settings are valid")
}

/// The gossipsub topic for `topic`.
pub(super) fn ident(topic: Topic) -> IdentTopic {
    IdentTopic::new(topic.name())
}

type Gossip = gossipsub::Behaviour;
type GossipHandler = THandler<Gossip>;

/// Gossipsub that members only hear from and speak to.
pub(super) struct MembersOnlyGossip {
    pub(super) gossip: Gossip,
    members: PeerTable,
    openings: Openings,
}

impl MembersOnlyGossip {
    /// Gossipsub signing with `keypair`, subscribed to every [`Topic`].
    pub(super) fn new(keypair: &Keypair, members: PeerTable) -> Result<Self, String> {
        let mut gossip = Gossip::new(
            MessageAuthenticity::Signed(keypair.clone()),
            gossipsub_config(),
        )?;
        for topic in Topic::ALL {
            gossip
                .subscribe(&ident(topic))
                .map_err(|e| format!("subscribing to {}: {e}", topic.name()))?;
        }
        Ok(Self {
            gossip,
            members,
            openings: Openings::default(),
        })
    }

    /// Opens the gate on every connection to `peer`, which has just proved membership.
    pub(super) fn member_proved(&mut self, peer: PeerId) {
        self.openings.open(peer);
    }

    fn wrap(&self, peer: PeerId, inner: GossipHandler) -> GatedHandler {
        GatedHandler {
            inner,
            open: self.members.is_member(&peer),
            held: None,
        }
    }
}

impl NetworkBehaviour for MembersOnlyGossip {
    type ConnectionHandler = GatedHandler;
    type ToSwarm = gossipsub::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.gossip
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self.gossip.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )?;
        Ok(self.wrap(peer, inner))
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.gossip.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self.gossip.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )?;
        Ok(self.wrap(peer, inner))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.openings.on_swarm_event(&event);
        self.gossip.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.gossip
            .on_connection_handler_event(peer_id, connection_id, event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some(open) = self.openings.next() {
            return Poll::Ready(open);
        }
        self.gossip
            .poll(cx)
            .map(|event| event.map_in(GateIn::Inner))
    }
}

type Inbound = <GossipHandler as ConnectionHandler>::InboundProtocol;
type InboundInfo = <GossipHandler as ConnectionHandler>::InboundOpenInfo;

/// Gossipsub's connection handler, asleep until the peer has proved membership.
pub(super) struct GatedHandler {
    inner: GossipHandler,
    /// The peer proved membership; the inner handler runs.
    open: bool,
    /// The latest inbound gossip stream the peer opened before it proved membership, unread.
    held: Option<FullyNegotiatedInbound<Inbound, InboundInfo>>,
}

impl GatedHandler {
    fn open(&mut self) {
        if self.open {
            return;
        }
        self.open = true;
        if let Some(held) = self.held.take() {
            self.inner
                .on_connection_event(ConnectionEvent::FullyNegotiatedInbound(held));
        }
    }
}

impl ConnectionHandler for GatedHandler {
    type FromBehaviour = GateIn<THandlerInEvent<Gossip>>;
    type ToBehaviour = <GossipHandler as ConnectionHandler>::ToBehaviour;
    type InboundProtocol = Inbound;
    type OutboundProtocol = <GossipHandler as ConnectionHandler>::OutboundProtocol;
    type InboundOpenInfo = InboundInfo;
    type OutboundOpenInfo = <GossipHandler as ConnectionHandler>::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        // The protocol is offered even before the proof, so that a member that finished its side
        // of the proof first is not told gossip is unsupported; its stream waits in `held`.
        self.inner.listen_protocol()
    }

    fn connection_keep_alive(&self) -> bool {
        self.open && self.inner.connection_keep_alive()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        if !self.open {
            // Woken again by `GateIn::Open`.
            return Poll::Pending;
        }
        self.inner.poll(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        if !self.open {
            return Poll::Ready(None);
        }
        self.inner.poll_close(cx)
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        match event {
            GateIn::Open => self.open(),
            GateIn::Inner(event) => self.inner.on_behaviour_event(event),
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(stream) if !self.open => {
                // Replacing an earlier held stream drops (closes) it: gossipsub keeps one.
                self.held = Some(stream);
            }
            event => self.inner.on_connection_event(event),
        }
    }
}

/// A message that passed [`judge`], decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Received {
    /// On [`Topic::Announce`].
    Announcement(Announcement),
    /// On [`Topic::Demand`].
    Demand(DemandSummary),
    /// On [`Topic::Threat`].
    Threat(ThreatScores),
    /// On [`Topic::Rebuild`].
    Rebuild(TagNews),
}

/// A gossip message that passed [`judge`]: who wrote it, and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Judged {
    /// The author (signed).
    pub(super) author: PeerId,
    /// The author's sequence number.
    pub(super) sequence: u64,
    /// The author is a member connected to this node (its news can be acted on directly).
    pub(super) author_connected: bool,
    /// The decoded message.
    pub(super) message: Received,
}

/// Decides whether a gossip message is believed and forwarded, or rejected (and why). Rejected:
/// forwarded by a peer that has not proved membership; without an author or sequence number
/// (gossipsub's strict mode already refuses those); written by a connected peer that has not
/// proved membership; on a topic this build does not know; with a payload that does not decode.
/// An author that is not connected to this node is vouched for by the member that forwarded it,
/// which applied the same rules, down to the member that heard it from the author itself.
pub(super) fn judge(
    propagation_source: &PeerId,
    message: &gossipsub::Message,
    members: &PeerTable,
) -> Result<Judged, &'static str> {
    if !members.is_member(propagation_source) {
        return Err("forwarded by a peer that has not proved membership");
    }
    let (Some(author), Some(sequence)) = (message.source, message.sequence_number) else {
        return Err("unsigned message");
    };
    let author_connected = match members.info(&author) {
        Some(info) if !info.member => {
            return Err("written by a connected peer that has not proved membership")
        }
        Some(_) => true,
        None => false,
    };
    let topic = Topic::from_name(message.topic.as_str()).ok_or("unknown topic")?;
    let message = match topic {
        Topic::Announce => Received::Announcement(
            Announcement::from_payload(&message.data).map_err(|_| "undecodable announcement")?,
        ),
        Topic::Demand => Received::Demand(
            DemandSummary::from_payload(&message.data).map_err(|_| "undecodable demand summary")?,
        ),
        Topic::Threat => Received::Threat(
            ThreatScores::from_payload(&message.data).map_err(|_| "undecodable threat scores")?,
        ),
        Topic::Rebuild => Received::Rebuild(
            TagNews::from_payload(&message.data).map_err(|_| "undecodable tag news")?,
        ),
    };
    Ok(Judged {
        author,
        sequence,
        author_connected,
        message,
    })
}

#[cfg(test)]
mod tests {
    use shoal_proto::wire::ShardSet;
    use shoal_proto::BlobDigest;

    use super::*;

    fn message(author: PeerId, topic: Topic, data: Vec<u8>) -> gossipsub::Message {
        gossipsub::Message {
            source: Some(author),
            data,
            sequence_number: Some(7),
            topic: ident(topic).hash(),
        }
    }

    #[test]
    fn only_members_news_is_believed() {
        let members = PeerTable::default();
        let (relay, author, stranger, far) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        members.set_member(relay);
        members.set_member(author);
        // A connected peer that has not proved the key (identify told us its region).
        members.set_region(stranger, "eu".into());
        let holds = Announcement::holds(
            BlobDigest::from_bytes([5; 32]),
            9,
            &ShardSet::from_indices([0, 8]),
        )
        .unwrap();
        let payload = holds.to_payload();

        let judged = judge(
            &relay,
            &message(author, Topic::Announce, payload.clone()),
            &members,
        )
        .unwrap();
        assert_eq!(judged.author, author);
        assert_eq!(judged.sequence, 7);
        assert!(judged.author_connected);
        assert_eq!(judged.message, Received::Announcement(holds.clone()));
        // Relayed from an author this node has no connection to: vouched for by the relay.
        let judged = judge(
            &relay,
            &message(far, Topic::Announce, payload.clone()),
            &members,
        )
        .unwrap();
        assert!(!judged.author_connected);

        for (source, msg, why) in [
            (
                stranger,
                message(author, Topic::Announce, payload.clone()),
                "forwarded by a peer that has not proved membership",
            ),
            (
                relay,
                message(stranger, Topic::Announce, payload.clone()),
                "written by a connected peer that has not proved membership",
            ),
            (
                relay,
                message(author, Topic::Announce, b"SHWR junk".to_vec()),
                "undecodable announcement",
            ),
            (
                relay,
                gossipsub::Message {
                    topic: IdentTopic::new("shoal/other/1").hash(),
                    ..message(author, Topic::Announce, payload.clone())
                },
                "unknown topic",
            ),
            (
                relay,
                gossipsub::Message {
                    source: None,
                    ..message(author, Topic::Announce, payload.clone())
                },
                "unsigned message",
            ),
        ] {
            assert_eq!(judge(&source, &msg, &members), Err(why));
        }
    }
}
