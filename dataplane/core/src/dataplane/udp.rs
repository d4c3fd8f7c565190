//! Datagrams from the underlay: WireGuard messages (handshakes, cookies, data) and relay
//! messages, for this node or forwarded for two of its peers (see [`crate::relay`]).

use std::net::SocketAddr;
use std::time::Instant;

use super::forward::path_of;
use super::{Action, Dataplane, Transmit, enqueue};
use crate::config::Transport;
use crate::drop::DropReason;
use crate::peer::{PeerId, PeerState};
use crate::relay::{self, RELAY_HEADER, RelayId};
use crate::session::{Incoming, SessionOutput};

impl Dataplane {
    /// A UDP datagram from `from`: decrypt it, then deliver to the TUN, relay it to another
    /// peer, or answer a handshake. A relay message for another node is forwarded unchanged
    /// ([`Action::Forward`]) when this node relays.
    pub fn handle_udp(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Action {
        if !relay::is_relay(datagram) {
            return self.handle_wg(now, from, datagram, false, out);
        }
        let Some((to, message)) = relay::parse(datagram) else {
            return self.drop(None, DropReason::Malformed);
        };
        if to == self.relay_id {
            if !self.relay_index.is_empty()
                && let Some(index) = relay::cookie_receiver(message)
                && let Some(a) = self.return_cookie(now, from, index, message, out)
            {
                return a;
            }
            return self.handle_wg(now, from, message, true, out);
        }
        self.forward_relay(now, from, to, datagram)
    }

    /// A cookie reply that a member under load addressed to this relay, for an initiation
    /// the relay forwarded to it: sent back to the initiator with the initiator's header.
    /// `None` when the relay forwarded no such initiation (then it is an ordinary message).
    #[cold]
    fn return_cookie(
        &mut self,
        now: Instant,
        from: SocketAddr,
        index: u32,
        message: &[u8],
        out: &mut [u8],
    ) -> Option<Action> {
        let responder = self.relay_sender_of(from)?;
        let initiator = self.relayed_handshakes.take(now, responder, index)?;
        let p = self.peers.get_mut(initiator)?;
        let Some(endpoint) = p.endpoint.filter(|_| p.via.is_none()) else {
            return Some(self.drop(Some(initiator), DropReason::NoEndpoint));
        };
        let len = RELAY_HEADER + message.len();
        if out.len() < len {
            return Some(self.drop(Some(initiator), DropReason::TooLarge));
        }
        RelayId::of(&p.config.public_key).write_header(out);
        out[RELAY_HEADER..len].copy_from_slice(message);
        p.counters.tx_bytes += len as u64;
        p.counters.tx_packets += 1;
        self.relayed_packets += 1;
        self.relayed_bytes += len as u64;
        Some(Action::SendUdp(Transmit {
            dst: endpoint,
            peer: Some(initiator),
            len,
        }))
    }

    /// A relay message for peer `to` from `from`: forwarded when both are peers of this relay.
    #[inline]
    fn forward_relay(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: RelayId,
        datagram: &[u8],
    ) -> Action {
        let Some(src) = self.relay_sender_of(from) else {
            return self.drop(None, DropReason::RelayRefused);
        };
        let Some(dst_id) = self.relay_index.get(&to).filter(|d| *d != src) else {
            return self.drop(Some(src), DropReason::RelayRefused);
        };
        let len = datagram.len() as u64;
        if let Some(p) = self.peers.get_mut(src) {
            p.counters.rx_bytes += len;
            p.counters.rx_packets += 1;
        }
        let Some(dst) = self.peers.get_mut(dst_id) else {
            return self.drop(Some(src), DropReason::RelayRefused);
        };
        let Some(endpoint) = dst.endpoint.filter(|_| dst.via.is_none()) else {
            return self.drop(Some(dst_id), DropReason::NoEndpoint);
        };
        dst.counters.tx_bytes += len;
        dst.counters.tx_packets += 1;
        if let Some(index) = relay::initiation_sender(&datagram[RELAY_HEADER..]) {
            // Where a cookie reply for it must go back to (one byte compare for data).
            self.relayed_handshakes.record(now, src, dst_id, index);
        }
        self.relayed_packets += 1;
        self.relayed_bytes += len;
        Action::Forward(Transmit {
            dst: endpoint,
            peer: Some(dst_id),
            len: datagram.len(),
        })
    }

    /// The peer whose current endpoint is `from`, if it may send relay messages: only
    /// authenticated, directly connected wg peers (their endpoint is the address their last
    /// authenticated message came from, or configured).
    #[inline]
    fn relay_sender_of(&mut self, from: SocketAddr) -> Option<PeerId> {
        if self.relay_index.is_empty() {
            return None;
        }
        let ok = |p: &PeerState| {
            p.endpoint == Some(from) && p.via.is_none() && p.transport == Transport::Wg
        };
        if let Some((addr, id)) = self.relay_sender
            && addr == from
            && self.peers.get(id).is_some_and(ok)
        {
            return Some(id);
        }
        let id = self.peers.iter().find(|p| ok(p))?.id;
        self.relay_sender = Some((from, id));
        Some(id)
    }

    /// A WireGuard message from `from` (`relayed`: it came inside a relay message, so `from`
    /// is the relay's address).
    fn handle_wg(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        relayed: bool,
        out: &mut [u8],
    ) -> Action {
        let incoming = match self.identity.classify(from.ip(), datagram, out) {
            Ok(Ok(i)) => i,
            Ok(Err((a, b))) => {
                // Under load: a cookie reply instead of a handshake.
                self.drops.add(DropReason::UnderLoad);
                if relayed {
                    return self.cookie_through_relay(from, a, b, out);
                }
                out.copy_within(a..b, 0);
                return Action::SendUdp(Transmit {
                    dst: from,
                    peer: None,
                    len: b - a,
                });
            }
            Err(r) => return self.drop(None, r),
        };
        let peer = match incoming {
            Incoming::Initiation(key) => self
                .peers
                .by_key(&key)
                .and_then(|id| self.peers.get_mut(id)),
            Incoming::ForIndex(idx) => self.peers.by_session_index(idx),
        };
        let Some(peer) = peer else {
            return self.drop(None, DropReason::UnknownPeer);
        };
        let id = peer.id;
        let result = peer.session.decapsulate(from.ip(), datagram, out);
        let is_cookie = datagram[0] == 3;
        if result.is_ok() && !is_cookie {
            // Authenticated: roam to the address it came from (not to a relay's).
            if !relayed && peer.via.is_none() {
                peer.endpoint = Some(from);
            }
            peer.last_rx = Some(now);
            peer.counters.rx_bytes += datagram.len() as u64;
            peer.counters.rx_packets += 1;
            peer.handshake_rtt.received(now, datagram);
        }
        match result {
            Err(r) => self.drop(Some(id), r),
            Ok(SessionOutput::Done) if is_cookie => {
                // The responder is under load: retry with the cookie now, not in 5 s.
                if let Ok(SessionOutput::Network(a, b)) =
                    peer.session.retry_after_cookie(now, &mut self.scratch)
                {
                    peer.handshake_rtt.sent(now, &self.scratch[a..b]);
                    peer.counters.tx_bytes += (b - a) as u64;
                    peer.counters.tx_packets += 1;
                    match path_of(&self.peers, id) {
                        Some((dst, header)) => enqueue(
                            &mut self.queue,
                            &mut self.free,
                            &mut self.drops,
                            dst,
                            Some(id),
                            header,
                            &self.scratch[a..b],
                        ),
                        None => return self.drop(Some(id), DropReason::NoEndpoint),
                    }
                }
                Action::None
            }
            Ok(SessionOutput::Done) => Action::None,
            Ok(SessionOutput::Network(a, b)) => {
                // A handshake answer: back the way the message came.
                peer.handshake_rtt.sent(now, &out[a..b]);
                let header = relayed.then(|| RelayId::of(&peer.config.public_key));
                let off = header.map_or(0, |_| RELAY_HEADER);
                if out.len() < b - a + off {
                    return self.drop(Some(id), DropReason::TooLarge);
                }
                out.copy_within(a..b, off);
                if let Some(h) = header {
                    h.write_header(out);
                }
                peer.counters.tx_bytes += (b - a) as u64;
                peer.counters.tx_packets += 1;
                self.flush_session(now, id);
                Action::SendUdp(Transmit {
                    dst: from,
                    peer: Some(id),
                    len: b - a + off,
                })
            }
            Ok(SessionOutput::Tunnel(a, b, src)) => {
                if a != 0 {
                    out.copy_within(a..b, 0);
                }
                self.forward_from(now, id, src, b - a, out)
            }
        }
    }

    /// A cookie reply (at `out[a..b]`) for an initiation that came through the relay at
    /// `from`: the initiator is unknown before the handshake's DH, so the reply goes to the
    /// relay itself (a relay message with the relay's id), which routes it back to the
    /// initiator (see [`crate::relay`]).
    #[cold]
    fn cookie_through_relay(
        &mut self,
        from: SocketAddr,
        a: usize,
        b: usize,
        out: &mut [u8],
    ) -> Action {
        let relay = self
            .peers
            .iter()
            .find(|p| p.endpoint == Some(from) && p.via.is_none() && p.transport == Transport::Wg)
            .map(|p| (p.id, RelayId::of(&p.config.public_key)));
        let Some((id, header)) = relay else {
            return Action::None;
        };
        let len = b - a + RELAY_HEADER;
        if out.len() < len {
            return self.drop(Some(id), DropReason::TooLarge);
        }
        out.copy_within(a..b, RELAY_HEADER);
        header.write_header(out);
        Action::SendUdp(Transmit {
            dst: from,
            peer: Some(id),
            len,
        })
    }

    /// After a handshake: sends what the session queued while it had no keys (along the
    /// peer's path: its endpoint, or its relay).
    fn flush_session(&mut self, now: Instant, id: PeerId) {
        let Some((dst, header)) = path_of(&self.peers, id) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        while let Ok(SessionOutput::Network(a, b)) =
            peer.session.decapsulate(dst.ip(), &[], &mut self.scratch)
        {
            peer.handshake_rtt.sent(now, &self.scratch[a..b]);
            peer.counters.tx_bytes += (b - a) as u64;
            peer.counters.tx_packets += 1;
            enqueue(
                &mut self.queue,
                &mut self.free,
                &mut self.drops,
                dst,
                Some(id),
                header,
                &self.scratch[a..b],
            );
        }
    }
}
