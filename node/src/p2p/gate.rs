//! Kademlia for members only: a wrapper behaviour whose connection handler keeps every inbound
//! Kademlia stream from a peer that has not proved membership away from Kademlia. The first few
//! are held unread and handed to Kademlia once the peer is admitted (a member's lookup can arrive
//! a moment before its proof is recorded: Kademlia asks peers it learns of mid-query as soon as it
//! connects to them); the rest are dropped, and a peer that never proves is disconnected with its
//! held streams unanswered. So an unproven peer gets no answer at all (no provider records, no
//! closest peers). Outbound requests need no gate: only members enter the routing table.

use std::collections::{HashMap, VecDeque};
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::kad;
use libp2p::swarm::handler::{ConnectionEvent, FullyNegotiatedInbound};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, NotifyHandler, SubstreamProtocol, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

use std::sync::Arc;

use super::record_store::CountedStore;
use super::PeerTable;
use crate::metrics::Metrics;

type Kad = kad::Behaviour<CountedStore>;
type KadHandler = THandler<Kad>;
type Inbound = <KadHandler as ConnectionHandler>::InboundProtocol;
type InboundInfo = <KadHandler as ConnectionHandler>::InboundOpenInfo;

/// Inbound Kademlia streams held per connection until the peer is admitted.
const MAX_HELD_STREAMS: usize = 4;

/// Kademlia that answers members only.
pub(super) struct MembersOnly {
    pub(super) kad: Kad,
    members: PeerTable,
    metrics: Arc<Metrics>,
    openings: Openings,
}

/// What a gate's behaviour tells a connection's handler (this one's and gossip's).
#[derive(Debug)]
pub(super) enum GateIn<E> {
    /// The peer was admitted: let its streams through, those held first.
    Open,
    /// For the wrapped protocol's handler.
    Inner(E),
}

/// Each peer's connections, and the gates waiting to be opened on them: what a gating behaviour
/// (this one, gossip's) keeps to tell every connection of a peer that it was admitted.
#[derive(Debug, Default)]
pub(super) struct Openings {
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    opening: VecDeque<(PeerId, ConnectionId)>,
}

impl Openings {
    /// Follows connections opening and closing.
    pub(super) fn on_swarm_event(&mut self, event: &FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(established) => {
                self.connections
                    .entry(established.peer_id)
                    .or_default()
                    .push(established.connection_id);
            }
            FromSwarm::ConnectionClosed(closed) => {
                if let Some(connections) = self.connections.get_mut(&closed.peer_id) {
                    connections.retain(|id| *id != closed.connection_id);
                    if connections.is_empty() {
                        self.connections.remove(&closed.peer_id);
                    }
                }
            }
            _ => {}
        }
    }

    /// Queues an [`GateIn::Open`] for every connection to `peer`.
    pub(super) fn open(&mut self, peer: PeerId) {
        for connection in self.connections.get(&peer).into_iter().flatten() {
            self.opening.push_back((peer, *connection));
        }
    }

    /// The next queued [`GateIn::Open`], as the behaviour's `poll` returns it.
    pub(super) fn next<T, E>(&mut self) -> Option<ToSwarm<T, GateIn<E>>> {
        let (peer_id, connection) = self.opening.pop_front()?;
        Some(ToSwarm::NotifyHandler {
            peer_id,
            handler: NotifyHandler::One(connection),
            event: GateIn::Open,
        })
    }
}

impl MembersOnly {
    pub(super) fn new(kad: Kad, members: PeerTable, metrics: Arc<Metrics>) -> Self {
        Self {
            kad,
            members,
            metrics,
            openings: Openings::default(),
        }
    }

    /// Opens the gate on every connection to `peer`, which has just been admitted.
    pub(super) fn member_admitted(&mut self, peer: PeerId) {
        self.openings.open(peer);
    }

    fn wrap(&self, peer: PeerId, inner: KadHandler) -> GatedHandler {
        GatedHandler {
            inner,
            peer,
            open: self.members.is_member(&peer),
            held: Vec::new(),
            metrics: self.metrics.clone(),
        }
    }
}

impl NetworkBehaviour for MembersOnly {
    type ConnectionHandler = GatedHandler;
    type ToSwarm = kad::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.kad
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self.kad.handle_established_inbound_connection(
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
        self.kad.handle_pending_outbound_connection(
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
        let inner = self.kad.handle_established_outbound_connection(
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
        self.kad.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.kad
            .on_connection_handler_event(peer_id, connection_id, event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some(open) = self.openings.next() {
            return Poll::Ready(open);
        }
        self.kad.poll(cx).map(|event| event.map_in(GateIn::Inner))
    }
}

/// Kademlia's connection handler, minus inbound streams from peers that are not members.
pub(super) struct GatedHandler {
    inner: KadHandler,
    peer: PeerId,
    /// The peer was admitted; its streams go to Kademlia.
    open: bool,
    /// Streams the peer opened before it was admitted, unread.
    held: Vec<FullyNegotiatedInbound<Inbound, InboundInfo>>,
    metrics: Arc<Metrics>,
}

impl GatedHandler {
    fn open(&mut self) {
        if self.open {
            return;
        }
        self.open = true;
        for held in std::mem::take(&mut self.held) {
            self.inner
                .on_connection_event(ConnectionEvent::FullyNegotiatedInbound(held));
        }
    }
}

impl ConnectionHandler for GatedHandler {
    type FromBehaviour = GateIn<THandlerInEvent<Kad>>;
    type ToBehaviour = <KadHandler as ConnectionHandler>::ToBehaviour;
    type InboundProtocol = <KadHandler as ConnectionHandler>::InboundProtocol;
    type OutboundProtocol = <KadHandler as ConnectionHandler>::OutboundProtocol;
    type InboundOpenInfo = <KadHandler as ConnectionHandler>::InboundOpenInfo;
    type OutboundOpenInfo = <KadHandler as ConnectionHandler>::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        self.inner.listen_protocol()
    }

    fn connection_keep_alive(&self) -> bool {
        self.inner.connection_keep_alive()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        self.inner.poll(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
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
            ConnectionEvent::FullyNegotiatedInbound(inbound) if !self.open => {
                if self.held.len() < MAX_HELD_STREAMS {
                    tracing::debug!(peer = %self.peer, "Kademlia request from a peer not admitted yet; held");
                    self.held.push(inbound);
                } else {
                    // Dropping the stream closes it unanswered.
                    self.metrics.p2p_refused_non_member_requests.inc();
                    tracing::debug!(peer = %self.peer, "Kademlia request from a peer not admitted yet; dropped");
                }
            }
            event => self.inner.on_connection_event(event),
        }
    }
}
