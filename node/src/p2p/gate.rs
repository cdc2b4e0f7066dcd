//! Kademlia for members only: a wrapper behaviour whose connection handler drops every inbound
//! Kademlia stream from a peer that has not proved membership, before Kademlia sees it. The
//! unproven peer gets no answer at all (no provider records, no closest peers); once it has proved
//! the key, its next stream is served. Outbound requests need no gate: only members enter the
//! routing table.

use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::kad;
use libp2p::swarm::handler::ConnectionEvent;
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

use std::sync::Arc;

use super::record_store::CountedStore;
use super::PeerTable;
use crate::metrics::Metrics;

type Kad = kad::Behaviour<CountedStore>;
type KadHandler = THandler<Kad>;

/// Kademlia that answers members only.
pub(super) struct MembersOnly {
    pub(super) kad: Kad,
    members: PeerTable,
    metrics: Arc<Metrics>,
}

impl MembersOnly {
    pub(super) fn new(kad: Kad, members: PeerTable, metrics: Arc<Metrics>) -> Self {
        Self {
            kad,
            members,
            metrics,
        }
    }

    fn wrap(&self, peer: PeerId, inner: KadHandler) -> GatedHandler {
        GatedHandler {
            inner,
            peer,
            members: self.members.clone(),
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
        self.kad.poll(cx)
    }
}

/// Kademlia's connection handler, minus inbound streams from peers that are not members.
pub(super) struct GatedHandler {
    inner: KadHandler,
    peer: PeerId,
    members: PeerTable,
    metrics: Arc<Metrics>,
}

impl ConnectionHandler for GatedHandler {
    type FromBehaviour = <KadHandler as ConnectionHandler>::FromBehaviour;
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
        self.inner.on_behaviour_event(event);
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
        if matches!(event, ConnectionEvent::FullyNegotiatedInbound(_))
            && !self.members.is_member(&self.peer)
        {
            // Dropping the stream closes it unanswered.
            self.metrics.p2p_refused_non_member_requests.inc();
            tracing::debug!(peer = %self.peer, "Kademlia request from a peer that has not proved membership; dropped");
            return;
        }
        self.inner.on_connection_event(event);
    }
}
