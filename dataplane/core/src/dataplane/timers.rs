//! Time: WireGuard timers, forced handshakes and QUIC reconnects for peers the probes call
//! dead, the handshake rate limiter, and the probe interface's packets.

use std::time::Instant;

use super::forward::{path_of, send_to};
use super::{Action, Dataplane, LIMITER_WINDOW, TIMER_TICK, enqueue};
use crate::config::Transport;
use crate::drop::DropReason;
use crate::peer::{Forced, PROBE_DEAD_REHANDSHAKE, PeerId};
use crate::session::SessionOutput;
use crate::wire::IpHeader;

impl Dataplane {
    /// Runs timers: WireGuard rekeys, keepalives and retries, the handshake rate limiter,
    /// and a fresh handshake to a keepalive peer that fell silent (e.g. a restarted hub).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.nat.handle_timeout(now);
        self.last_now = now;
        self.prober
            .handle_timeout(now, &mut self.peers, &self.routes);
        if now >= self.next_limiter_reset {
            self.identity.tick();
            self.next_limiter_reset = now + LIMITER_WINDOW;
        }
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + TIMER_TICK;
        // A QUIC peer dead by its probes may have been replaced behind the same endpoint (a
        // restart in place, a standby replica behind one load balancer address): its
        // connection is gone there, and quinn would notice only at its idle timeout.
        for p in self.peers.iter_mut() {
            if p.transport == Transport::Quic
                && p.probe.alive == Some(false)
                && p.last_forced_handshake
                    .is_none_or(|t| now.duration_since(t) >= PROBE_DEAD_REHANDSHAKE)
            {
                p.last_forced_handshake = Some(now);
                self.reconnect.push(p.id);
                tracing::debug!(peer = %p.config.label(), "probes dead, new QUIC connection");
            }
        }
        let ids: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|p| p.transport == Transport::Wg)
            .map(|p| p.id)
            .collect();
        for id in ids {
            let Some(peer) = self.peers.get_mut(id) else {
                continue;
            };
            let mut outputs = [None];
            outputs[0] = peer.session.update_timers(&mut self.scratch).ok();
            let busy = matches!(outputs[0], Some(SessionOutput::Network(..)));
            match peer.forced_handshake(now) {
                // Already sending something this tick; try again next tick.
                Some(_) if busy => {}
                Some(Forced::ProbesDead) => {
                    peer.last_forced_handshake = Some(now);
                    outputs[0] = peer.session.initiate_anew(&mut self.scratch).ok();
                    tracing::debug!(peer = %peer.config.label(), "probes dead, new handshake");
                }
                Some(Forced::Silent) => {
                    peer.last_forced_handshake = Some(now);
                    outputs[0] = peer.session.initiate(&mut self.scratch).ok();
                    tracing::debug!(peer = %peer.config.label(), "peer silent, new handshake");
                }
                None => {}
            }
            if peer.handshake_due && !matches!(outputs[0], Some(SessionOutput::Network(..))) {
                peer.handshake_due = false;
                outputs[0] = peer.session.initiate(&mut self.scratch).ok();
            }
            if let Some(SessionOutput::Network(a, b)) = outputs[0] {
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
                    None => {
                        self.drops.add(DropReason::NoEndpoint);
                        if let Some(p) = self.peers.get_mut(id) {
                            p.counters.drops.add(DropReason::NoEndpoint);
                        }
                    }
                }
            }
        }
    }

    /// The next QUIC peer to connect anew (its probes say it is dead; at most once per
    /// [`PROBE_DEAD_REHANDSHAKE`] each): close its connection and dial again. Call after
    /// [`Dataplane::handle_timeout`] until None.
    pub fn poll_reconnect(&mut self) -> Option<PeerId> {
        self.reconnect.pop()
    }

    /// When [`Dataplane::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = self.next_tick.min(self.next_limiter_reset);
        Some(self.prober.poll_timeout().map_or(t, |p| p.min(t)))
    }

    /// The next packet of the probe interface (a probe, a reply, an echo reply), routed and
    /// encapsulated into `out` like a TUN packet; None when it has nothing to send. Call it
    /// after every `handle_*` until None (see [`crate::probe`]).
    pub fn poll_probe(&mut self, now: Instant, out: &mut [u8]) -> Option<Action> {
        let packet = self.prober.pop_transmit()?;
        let hdr = match IpHeader::parse(&packet) {
            Ok(h) => h,
            Err(r) => return Some(self.drop(None, r)),
        };
        let Some(id) = self
            .routes
            .lookup(hdr.dst)
            .filter(|id| *id != PeerId::LOCAL)
        else {
            return Some(self.drop(None, DropReason::NoRoute));
        };
        Some(match send_to(&mut self.peers, id, now, &packet, out) {
            Ok(a) => a,
            Err(r) => self.drop(Some(id), r),
        })
    }
}
