//! Plaintext packets: from the TUN (or this node) to a peer, and decrypted packets from a
//! peer to the TUN, the probe interface or another peer; the encapsulation for a peer's
//! transport and path.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::{Action, Dataplane, Transmit};
use crate::config::Transport;
use crate::drop::DropReason;
use crate::peer::{PeerId, PeerTable};
use crate::relay::{RELAY_HEADER, RelayId};
use crate::service_nat;
use crate::session::SessionOutput;
use crate::wire::IpHeader;

impl Dataplane {
    /// A packet read from the TUN device at `now`: route it to a peer (a service VIP is first
    /// translated to one of its endpoints, see [`crate::service_nat`]).
    #[inline]
    pub fn handle_tun(&mut self, now: Instant, packet: &[u8], out: &mut [u8]) -> Action {
        let hdr = match IpHeader::parse(packet) {
            Ok(h) => h,
            Err(r) => return self.drop(None, r),
        };
        if self.nat.is_active() && self.nat.is_vip(hdr.dst) {
            return self.handle_tun_vip(now, packet, out);
        }
        let Some(id) = self.routes.lookup(hdr.dst) else {
            return self.drop(None, DropReason::NoRoute);
        };
        match send_to(&mut self.peers, id, now, packet, out) {
            Ok(a) => a,
            Err(r) => self.drop(Some(id), r),
        }
    }

    /// A packet this node generated itself (an ICMP error about a relayed packet): sent to
    /// the peer that owns its destination, or written on the TUN when no peer does.
    pub fn handle_local(&mut self, now: Instant, packet: &[u8], out: &mut [u8]) -> Action {
        let hdr = match IpHeader::parse(packet) {
            Ok(h) => h,
            Err(r) => return self.drop(None, r),
        };
        let routed = self.routes.lookup(hdr.dst);
        match routed.filter(|id| self.peers.get(*id).is_some()) {
            Some(id) => match send_to(&mut self.peers, id, now, packet, out) {
                Ok(a) => a,
                Err(r) => self.drop(Some(id), r),
            },
            None if out.len() >= packet.len() => {
                out[..packet.len()].copy_from_slice(packet);
                Action::WriteTun { len: packet.len() }
            }
            None => self.drop(None, DropReason::TooLarge),
        }
    }

    /// A packet to a service VIP: DNAT to an endpoint (tracked), then route. The rewrite
    /// happens in the scratch buffer (the TUN's buffer is read-only here).
    #[cold]
    fn handle_tun_vip(&mut self, now: Instant, packet: &[u8], out: &mut [u8]) -> Action {
        let Some(flow) = service_nat::parse_flow(packet) else {
            return self.drop(None, DropReason::NoRoute);
        };
        let Some(rw) = self.nat.outbound(&flow) else {
            return self.drop(None, DropReason::NoRoute);
        };
        let len = packet.len();
        if len > self.scratch.len() {
            return self.drop(None, DropReason::TooLarge);
        }
        self.scratch[..len].copy_from_slice(packet);
        service_nat::apply_rewrite(&mut self.scratch[..len], &flow, rw);
        let service_nat::Rewrite::Dst(dst, _) = rw else {
            return self.drop(None, DropReason::NoRoute);
        };
        let Some(id) = self.routes.lookup(dst) else {
            return self.drop(None, DropReason::NoRoute);
        };
        match send_to(&mut self.peers, id, now, &self.scratch[..len], out) {
            Ok(a) => a,
            Err(r) => self.drop(Some(id), r),
        }
    }

    /// A plaintext IP packet that a non-wg transport received from `from`: check its source
    /// and deliver it to the TUN or relay it.
    pub fn handle_peer_packet(
        &mut self,
        now: Instant,
        from: PeerId,
        packet: &[u8],
        out: &mut [u8],
    ) -> Action {
        let hdr = match IpHeader::parse(packet) {
            Ok(h) => h,
            Err(r) => return self.drop(Some(from), r),
        };
        if out.len() < packet.len() {
            return self.drop(Some(from), DropReason::TooLarge);
        }
        let Some(peer) = self.peers.get_mut(from) else {
            return self.drop(None, DropReason::UnknownPeer);
        };
        peer.last_rx = Some(now);
        peer.counters.rx_bytes += packet.len() as u64;
        peer.counters.rx_packets += 1;
        out[..packet.len()].copy_from_slice(packet);
        self.forward_from(now, from, hdr.src, packet.len(), out)
    }

    /// A decrypted packet of `len` bytes in `out` from peer `from` with inner source `src`:
    /// cryptokey routing check, then TUN or relay.
    #[inline]
    pub(super) fn forward_from(
        &mut self,
        now: Instant,
        from: PeerId,
        src: IpAddr,
        len: usize,
        out: &mut [u8],
    ) -> Action {
        if self.routes.lookup(src) != Some(from) {
            return self.drop(Some(from), DropReason::SourceNotAllowed);
        }
        let dst = match IpHeader::parse(&out[..len]) {
            Ok(h) => h.dst,
            Err(r) => return self.drop(Some(from), r),
        };
        match self.routes.lookup(dst) {
            Some(to) if to != from && to != PeerId::LOCAL => {
                // Relay: re-encrypt for the other peer, never through the host stack.
                if self.peers.get(to).is_none() {
                    return self.drop(Some(from), DropReason::NoRoute);
                }
                self.scratch[..len].copy_from_slice(&out[..len]);
                match send_to(&mut self.peers, to, now, &self.scratch[..len], out) {
                    Ok(a) => a,
                    Err(r) => self.drop(Some(to), r),
                }
            }
            _ => {
                if dst == self.probe_ip && self.divert_probe(now, len, out) {
                    return Action::None;
                }
                if self.nat.is_active()
                    && let Some(flow) = service_nat::parse_flow(&out[..len])
                    && let Some(rw) = self.nat.inbound(&flow)
                {
                    // A reply of a service flow: it comes from the VIP again.
                    service_nat::apply_rewrite(&mut out[..len], &flow, rw);
                }
                Action::WriteTun { len }
            }
        }
    }

    /// A packet from a peer to the probe address: the probe interface's, or (false) the
    /// kernel's.
    #[cold]
    #[inline(never)]
    fn divert_probe(&mut self, now: Instant, len: usize, out: &[u8]) -> bool {
        self.prober
            .receive(now, &out[..len], &mut self.peers, &self.routes)
    }
}

/// Where datagrams for peer `id` go: its endpoint, or its relay's endpoint with the relay
/// header for it.
#[inline]
pub(super) fn path_of(peers: &PeerTable, id: PeerId) -> Option<(SocketAddr, Option<RelayId>)> {
    let p = peers.get(id)?;
    match p.via {
        None => p.endpoint.map(|e| (e, None)),
        Some(r) => {
            let relay = peers.get(r)?;
            Some((relay.endpoint?, Some(RelayId::of(&p.config.public_key))))
        }
    }
}

/// Encapsulates `packet` for peer `id` into `out` (behind the relay header when the peer is
/// reached through a relay). `now` times a handshake initiation it may start.
#[inline]
pub(super) fn send_to(
    peers: &mut PeerTable,
    id: PeerId,
    now: Instant,
    packet: &[u8],
    out: &mut [u8],
) -> Result<Action, DropReason> {
    let path = path_of(peers, id);
    let Some(peer) = peers.get_mut(id) else {
        return Err(DropReason::NoRoute);
    };
    match peer.transport {
        Transport::Quic => {
            if out.len() < packet.len() {
                return Err(DropReason::TooLarge);
            }
            out[..packet.len()].copy_from_slice(packet);
            Ok(Action::SendPeer {
                peer: peer.id,
                transport: Transport::Quic,
                len: packet.len(),
            })
        }
        Transport::Wg => {
            let Some((dst, header)) = path else {
                return Err(DropReason::NoEndpoint);
            };
            let off = header.map_or(0, |_| RELAY_HEADER);
            if out.len() <= off {
                return Err(DropReason::TooLarge);
            }
            let (head, body) = out.split_at_mut(off);
            match peer.session.encapsulate(packet, body)? {
                SessionOutput::Network(a, b) => {
                    peer.handshake_rtt.sent(now, &body[a..b]);
                    if a != 0 {
                        body.copy_within(a..b, 0);
                    }
                    if let Some(h) = header {
                        h.write_header(head);
                    }
                    peer.counters.tx_bytes += (b - a) as u64;
                    peer.counters.tx_packets += 1;
                    Ok(Action::SendUdp(Transmit {
                        dst,
                        peer: Some(peer.id),
                        len: off + b - a,
                    }))
                }
                SessionOutput::Done => Ok(Action::None),
                SessionOutput::Tunnel(..) => Err(DropReason::Malformed),
            }
        }
    }
}
