//! Glue between the dataplane driver and the QUIC transport: starts the endpoint from the
//! [`DataplaneConfig`], keeps one [`QuicPeer`] per core peer whose transport is quic, sends the
//! core's `SendPeer` packets (answering too-big ones with ICMP), clamps TCP MSS, and folds the
//! QUIC figures (RTT, endpoint, tx) into the status.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use fleetboard_dataplane_core::mtu::{self, Encapsulation, UnderlayFamily};
use fleetboard_dataplane_core::quic_config::name_is_dns;
use fleetboard_dataplane_core::{
    Dataplane, DataplaneConfig, DataplaneStatus, DropReason, PeerId, PublicKey, Transport, icmp,
    mss,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use tokio::sync::mpsc;

use super::{
    Fingerprint, Identity, QuicConfig, QuicError, QuicPeer, QuicPeerConfig, QuicTransport,
    Received, SendError,
};

/// `PeerId`s are already unique small integers: hashing them is the identity (no SipHash
/// on the packet path).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n);
    }
}

/// What became of a packet handed to [`QuicLink::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkSend {
    /// Queued on the peer's connection.
    Sent,
    /// Dropped for this reason (count it).
    Dropped(DropReason),
    /// Too big: `icmp_len` bytes of ICMP error are in [`QuicLink::icmp`] for the TUN
    /// (0 when no error may be sent); count [`DropReason::TooLarge`].
    TooBig {
        /// Length of the ICMP error.
        icmp_len: usize,
    },
}

/// The QUIC side of a running dataplane.
pub struct QuicLink {
    transport: QuicTransport<PeerId>,
    rx: mpsc::Receiver<Received<PeerId>>,
    peers: HashMap<PeerId, QuicPeer<PeerId>, BuildHasherDefault<IdHasher>>,
    keys: Vec<(PublicKey, PeerId)>,
    mss_v4: u16,
    mss_v6: u16,
    icmp: Vec<u8>,
}

fn read(path: &std::path::Path, field: &str) -> Result<String, QuicError> {
    std::fs::read_to_string(path)
        .map_err(|e| QuicError::Config(format!("{field}: reading {}: {e}", path.display())))
}

impl QuicLink {
    /// Starts the QUIC endpoint if the config has a QUIC identity (`quic.certificate`);
    /// `Ok(None)` otherwise. Binds `listen_address` (default `[::]`) : `quic.listen_port`.
    pub fn start(config: &DataplaneConfig) -> Result<Option<Self>, QuicError> {
        let q = &config.quic;
        let (Some(cert), Some(key)) = (&q.certificate, &q.private_key) else {
            return Ok(None);
        };
        let identity = Identity::from_pem(
            &read(cert, "quic.certificate")?,
            &read(key, "quic.private_key")?,
        )?;
        let ca = match &q.ca {
            Some(p) => Some(
                CertificateDer::from_pem_slice(read(p, "quic.ca")?.as_bytes())
                    .map_err(|e| QuicError::Config(format!("quic.ca: {e}")))?,
            ),
            None => None,
        };
        let ip = config
            .listen_address
            .unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
        let name = format!("fb-{}", &identity.fingerprint.to_hex()[..12]);
        let mut qc = QuicConfig::new(name, SocketAddr::new(ip, q.listen_port), identity);
        qc.ca = ca;
        qc.underlay_mtu = q.underlay_mtu;
        qc.path_mtu_discovery = q.path_mtu_discovery;
        let tunnel_mtu = qc.tunnel_mtu().min(config.interface.mtu);
        if config.interface.mtu > qc.tunnel_mtu() {
            tracing::warn!(
                interface_mtu = config.interface.mtu,
                quic_tunnel_mtu = qc.tunnel_mtu(),
                "TUN MTU exceeds what QUIC carries; larger packets get ICMP too-big"
            );
        }
        let (transport, rx) = QuicTransport::bind(qc)?;
        let mut link = Self {
            transport,
            rx,
            peers: HashMap::default(),
            keys: Vec::new(),
            mss_v4: mtu::mss_for_mtu(tunnel_mtu, false),
            mss_v6: mtu::mss_for_mtu(tunnel_mtu, true),
            icmp: vec![0u8; icmp::ICMPV6_ERROR_MAX],
        };
        link.mss_v6 = link.mss_v6.min(mtu::mss_for_mtu(
            mtu::tunnel_mtu(q.underlay_mtu, Encapsulation::Quic, UnderlayFamily::V6),
            true,
        ));
        Ok(Some(link))
    }

    /// The QUIC UDP address bound.
    pub fn local_addr(&self) -> Result<SocketAddr, QuicError> {
        self.transport.local_addr()
    }

    /// Re-reads the core's peers after a config change: adds, updates and removes QUIC peers.
    pub fn sync(&mut self, core: &Dataplane) {
        let mut list = Vec::new();
        self.keys.clear();
        for p in core.peers().filter(|p| p.transport == Transport::Quic) {
            let fingerprint = p
                .config
                .fingerprint
                .as_deref()
                .and_then(|f| f.parse::<Fingerprint>().ok());
            // The name is the CA-issued certificate's DNS name; pinned peers need none, so a
            // key-derived one stands in when the label is not a DNS name. The transport keys
            // its peers by name: the stand-in carries 29 of the key's 32 bytes (a DNS label
            // holds 63 characters), so two keys never share one (a short prefix could be
            // ground out by a member to take another's place).
            let name = match &p.config.name {
                Some(n) if name_is_dns(n) => n.clone(),
                _ => key_name(&p.config.public_key.0),
            };
            self.keys.push((p.config.public_key, p.id));
            list.push(QuicPeerConfig {
                tag: p.id,
                name,
                fingerprint,
                endpoint: p.config.endpoint,
            });
        }
        match self.transport.set_peers(list) {
            Ok(handles) => {
                self.peers = handles.into_iter().map(|h| (*h.tag(), h)).collect();
            }
            Err(e) => tracing::error!(error = %e, "quic peers not applied"),
        }
    }

    /// Waits for the next received packet (pending forever when the endpoint is gone).
    pub async fn recv(&mut self) -> Option<Received<PeerId>> {
        self.rx.recv().await
    }

    /// A received packet if one is ready.
    pub fn try_recv(&mut self) -> Option<Received<PeerId>> {
        self.rx.try_recv().ok()
    }

    /// Closes `peer`'s connection (its probes say it is dead): the side that dials dials
    /// again at once, the other accepts the new connection.
    pub fn reconnect(&self, peer: PeerId) {
        if let Some(h) = self.peers.get(&peer) {
            h.reconnect();
        }
    }

    /// Sends `packet` to `peer`; on too-big, builds the ICMP error into [`QuicLink::icmp`].
    pub fn send(&mut self, peer: PeerId, packet: &[u8]) -> LinkSend {
        let Some(h) = self.peers.get(&peer) else {
            return LinkSend::Dropped(DropReason::TransportUnavailable);
        };
        match h.send(Bytes::copy_from_slice(packet)) {
            Ok(()) => LinkSend::Sent,
            Err(SendError::NotConnected) => LinkSend::Dropped(DropReason::NoEndpoint),
            Err(SendError::TooBig { max }) => {
                // Sourced from the packet's own destination (as if the far end answered):
                // the sending host drops an error sourced from its own address as martian,
                // and rp_filter accepts this one since that address routes into the TUN.
                let router = fleetboard_dataplane_core::wire::IpHeader::parse(packet)
                    .ok()
                    .map(|h| h.dst);
                let mtu = u16::try_from(max).unwrap_or(u16::MAX);
                let icmp_len = router
                    .and_then(|r| icmp::packet_too_big(packet, mtu, r, &mut self.icmp).ok())
                    .unwrap_or(0);
                LinkSend::TooBig { icmp_len }
            }
        }
    }

    /// The ICMP error built by the last [`LinkSend::TooBig`].
    pub fn icmp(&self, len: usize) -> &[u8] {
        &self.icmp[..len]
    }

    /// Clamps the MSS of a TCP SYN entering the tunnel to what the QUIC tunnel carries.
    #[inline]
    pub fn clamp_mss(&self, packet: &mut [u8]) {
        let max = if packet.first().map(|b| b >> 4) == Some(6) {
            self.mss_v6
        } else {
            self.mss_v4
        };
        mss::clamp_mss(packet, max);
    }

    /// Folds QUIC's own figures (RTT, current endpoint, tx counters) into `status`, and its
    /// drops into the drop counters: rejected certificates and failed handshakes as
    /// `unauthenticated`, connections of no peer and datagrams for connection IDs never issued
    /// as `unknown_peer`, non-IP datagrams as `malformed`, oversized ones as `too_large`.
    pub fn fill_status(&self, status: &mut DataplaneStatus) {
        let e = self.transport.endpoint_stats();
        let mut bump = |r: DropReason, n: u64| status.drops.0[r as usize] += n;
        bump(
            DropReason::Unauthenticated,
            e.auth_rejected.max(e.handshake_failed),
        );
        bump(DropReason::UnknownPeer, e.unknown_peer + e.unknown_cid);
        bump(DropReason::UnderLoad, e.refused_busy + e.refused_source);
        bump(DropReason::HandshakeTimeout, e.handshake_timeout);
        for s in self.transport.peer_stats() {
            bump(DropReason::Malformed, s.drop_not_ip);
            bump(DropReason::TooLarge, s.drop_oversized);
        }
        for p in status
            .peers
            .iter_mut()
            .filter(|p| p.transport == Transport::Quic)
        {
            let Some(h) = self
                .keys
                .iter()
                .find(|(k, _)| *k == p.public_key)
                .and_then(|(_, id)| self.peers.get(id))
            else {
                continue;
            };
            let s = h.stats();
            p.endpoint = s.remote.or(p.endpoint);
            p.rtt_micros = s
                .rtt
                .map(|r| u64::try_from(r.as_micros()).unwrap_or(u64::MAX));
            p.max_packet = s.max_packet.and_then(|m| u32::try_from(m).ok());
            p.counters.tx_bytes = s.tx_bytes;
            p.counters.tx_packets = s.tx_packets;
        }
    }

    /// The underlying transport (per-peer and endpoint statistics).
    pub fn transport(&self) -> &QuicTransport<PeerId> {
        &self.transport
    }
}

/// The stand-in QUIC peer name of a key: `peer-` and the hex of its first 29 bytes (63
/// characters, a DNS label).
fn key_name(key: &[u8; 32]) -> String {
    let mut name = String::with_capacity(63);
    name.push_str("peer-");
    for b in &key[..29] {
        name.push_str(&format!("{b:02x}"));
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_are_dns_labels_that_keys_do_not_share() {
        let a = [7u8; 32];
        let mut b = a;
        b[28] ^= 1;
        let (na, nb) = (key_name(&a), key_name(&b));
        assert_eq!(na.len(), 63);
        assert!(name_is_dns(&na), "{na}");
        assert_ne!(na, nb, "keys equal in their first 28 bytes share no name");
    }
}
