//! Bounds on the connections peers can open to this node, before they proved anything.
//!
//! Two behaviours sit first in the swarm's behaviour, so they refuse a connection before any other
//! behaviour sees it: libp2p's own connection limits (pending inbound connections, established
//! inbound connections, established connections in all, connections per peer), and
//! [`UnprovenGuard`], which bounds the inbound connections of peers that have not proved the
//! network key, per remote IP address and in all. A peer that proved the key on another connection
//! still open is not counted (its identity is authenticated by the transport). Unproven
//! connections end at the proof deadline at the latest, so an outsider can hold at most
//! [`ConnectionLimits::max_unproven_per_ip`] of this node's connections per address it controls.
//! Loopback addresses are limited by the total only: nodes on one host (tests, benchmarks) share
//! one, and a local outsider could use any number of them anyway.
//!
//! The accounting is a plain table ([`UnprovenConnections`]) with unit tests; the behaviour only
//! feeds it the swarm's events.
//!
//! **Invariant:** every connection the table counts leaves it when the swarm reports it closed or
//! failed, so the counts are those of connections open now.

use std::collections::HashMap;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::{ConnectionClosed, DialFailure, ListenFailure};
use libp2p::swarm::{
    dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{connection_limits, Multiaddr, PeerId};

use super::PeerTable;

/// How many connections peers may have open to this node (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Established connections in all, both directions.
    pub max_established: u32,
    /// Established inbound connections.
    pub max_established_inbound: u32,
    /// Inbound connections still in their handshake.
    pub max_pending_inbound: u32,
    /// Established connections with one peer.
    pub max_per_peer: u32,
    /// Inbound connections of peers that have not proved the key, in all.
    pub max_unproven: u32,
    /// Inbound connections of peers that have not proved the key, per remote IP address.
    pub max_unproven_per_ip: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_established: 1024,
            max_established_inbound: 768,
            max_pending_inbound: 128,
            max_per_peer: 4,
            max_unproven: 128,
            max_unproven_per_ip: 16,
        }
    }
}

impl ConnectionLimits {
    /// libp2p's connection-limits behaviour for the limits it knows.
    pub(super) fn libp2p_behaviour(&self) -> connection_limits::Behaviour {
        connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established(Some(self.max_established))
                .with_max_established_incoming(Some(self.max_established_inbound))
                .with_max_pending_incoming(Some(self.max_pending_inbound))
                .with_max_established_per_peer(Some(self.max_per_peer)),
        )
    }
}

/// Why an unproven connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnprovenLimitExceeded {
    /// The remote address has as many unproven connections open as allowed.
    #[error("{ip} already has {limit} connections that have not proved the network key")]
    PerIp {
        /// The remote address.
        ip: IpAddr,
        /// The limit.
        limit: u32,
    },
    /// The node has as many unproven connections open as allowed.
    #[error("{limit} connections that have not proved the network key are open already")]
    Total {
        /// The limit.
        limit: u32,
    },
}

/// The inbound connections open now, with their peer and remote address.
#[derive(Debug, Default)]
pub(crate) struct UnprovenConnections {
    open: HashMap<ConnectionId, (PeerId, Option<IpAddr>)>,
}

impl UnprovenConnections {
    /// Counts a new inbound connection from `peer` at `ip`, unless it would exceed a limit.
    /// `is_member` says which peers proved the key on a connection still open.
    pub(crate) fn admit(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        ip: Option<IpAddr>,
        limits: &ConnectionLimits,
        is_member: impl Fn(&PeerId) -> bool,
    ) -> Result<(), UnprovenLimitExceeded> {
        if !is_member(&peer) {
            let mut total = 0u32;
            let mut same_ip = 0u32;
            for (other, other_ip) in self.open.values() {
                if is_member(other) {
                    continue;
                }
                total += 1;
                if ip.is_some() && *other_ip == ip {
                    same_ip += 1;
                }
            }
            if let Some(ip) = ip.filter(|ip| !ip.is_loopback()) {
                if same_ip >= limits.max_unproven_per_ip {
                    return Err(UnprovenLimitExceeded::PerIp {
                        ip,
                        limit: limits.max_unproven_per_ip,
                    });
                }
            }
            if total >= limits.max_unproven {
                return Err(UnprovenLimitExceeded::Total {
                    limit: limits.max_unproven,
                });
            }
        }
        self.open.insert(connection, (peer, ip));
        Ok(())
    }

    /// Forgets a connection that closed or failed.
    pub(crate) fn closed(&mut self, connection: ConnectionId) {
        self.open.remove(&connection);
    }

    /// Inbound connections counted now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }
}

/// The IP address of a multiaddr's first component, if it is one.
fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    match addr.iter().next()? {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    }
}

/// Refuses inbound connections over the unproven limits (see the module docs).
pub(super) struct UnprovenGuard {
    limits: ConnectionLimits,
    members: PeerTable,
    connections: UnprovenConnections,
}

impl UnprovenGuard {
    pub(super) fn new(limits: ConnectionLimits, members: PeerTable) -> Self {
        Self {
            limits,
            members,
            connections: UnprovenConnections::default(),
        }
    }
}

impl NetworkBehaviour for UnprovenGuard {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let members = &self.members;
        self.connections
            .admit(connection, peer, ip_of(remote), &self.limits, |p| {
                members.is_member(p)
            })
            .map_err(|exceeded| {
                tracing::debug!(%peer, %remote, %exceeded, "inbound connection refused");
                ConnectionDenied::new(exceeded)
            })?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // This node's own dials are bounded by libp2p's limits and by what this node asks for.
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. })
            | FromSwarm::ListenFailure(ListenFailure { connection_id, .. })
            | FromSwarm::DialFailure(DialFailure { connection_id, .. }) => {
                self.connections.closed(connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::Ipv4Addr;

    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            max_unproven: 5,
            max_unproven_per_ip: 2,
            ..ConnectionLimits::default()
        }
    }

    #[test]
    fn one_address_gets_only_its_share_of_unproven_connections() {
        let mut table = UnprovenConnections::default();
        let outsider = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        let nobody = |_: &PeerId| false;
        for _ in 0..2 {
            let id = ConnectionId::new_unchecked(table.len());
            assert_eq!(
                table.admit(id, PeerId::random(), outsider, &limits(), nobody),
                Ok(())
            );
        }
        assert!(matches!(
            table.admit(
                ConnectionId::new_unchecked(99),
                PeerId::random(),
                outsider,
                &limits(),
                nobody
            ),
            Err(UnprovenLimitExceeded::PerIp { limit: 2, .. })
        ));
        // Another address still gets in, up to the total.
        for i in 0..3u8 {
            let ip = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 1, i)));
            let id = ConnectionId::new_unchecked(100 + usize::from(i));
            assert_eq!(
                table.admit(id, PeerId::random(), ip, &limits(), nobody),
                Ok(())
            );
        }
        let elsewhere = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1)));
        assert!(matches!(
            table.admit(
                ConnectionId::new_unchecked(200),
                PeerId::random(),
                elsewhere,
                &limits(),
                nobody
            ),
            Err(UnprovenLimitExceeded::Total { limit: 5 })
        ));
        // A closed connection frees its place.
        table.closed(ConnectionId::new_unchecked(0));
        assert_eq!(
            table.admit(
                ConnectionId::new_unchecked(201),
                PeerId::random(),
                outsider,
                &limits(),
                nobody
            ),
            Ok(())
        );
    }

    #[test]
    fn members_are_not_counted_against_the_unproven_limits() {
        let mut table = UnprovenConnections::default();
        let ip = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)));
        let members: Vec<PeerId> = (0..10).map(|_| PeerId::random()).collect();
        let is_member = |p: &PeerId| members.contains(p);
        // Members sharing one address (nodes on one host) are never refused, and do not use up
        // the outsiders' share.
        for (i, member) in members.iter().enumerate() {
            let id = ConnectionId::new_unchecked(i);
            assert_eq!(table.admit(id, *member, ip, &limits(), is_member), Ok(()));
        }
        let mut admitted = HashSet::new();
        for i in 0..4 {
            let id = ConnectionId::new_unchecked(50 + i);
            if table
                .admit(id, PeerId::random(), ip, &limits(), is_member)
                .is_ok()
            {
                admitted.insert(id);
            }
        }
        assert_eq!(admitted.len(), 2);
    }

    #[test]
    fn loopback_connections_are_bounded_by_the_total_only() {
        let mut table = UnprovenConnections::default();
        let ip = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let admitted = (0..8)
            .filter(|i| {
                let id = ConnectionId::new_unchecked(*i);
                table
                    .admit(id, PeerId::random(), ip, &limits(), |_| false)
                    .is_ok()
            })
            .count();
        assert_eq!(admitted, 5);
    }
}
