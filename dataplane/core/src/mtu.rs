//! Tunnel MTU per transport: how many bytes each encapsulation adds, and the TUN MTU that
//! makes a full-size inner packet fit the underlay MTU without fragmentation.
//!
//! | transport | IPv4 underlay | IPv6 underlay | inner MTU at 1500 underlay |
//! |-----------|---------------|---------------|----------------------------|
//! | WireGuard | 60            | 80            | 1440 / 1420                |
//! | QUIC      | 66            | 86            | 1434 / 1414                |
//!
//! WireGuard: IP (20/40) + UDP 8 + message type/reserved 4 + receiver index 4 + counter 8 +
//! Poly1305 tag 16 = 60/80 (inner packets are padded to 16 bytes by WireGuard, so an MTU that is
//! a multiple of 16 wastes nothing; 1440 and 1420 are).
//!
//! QUIC (1-RTT short header carrying one DATAGRAM frame, as quinn computes its
//! `max_datagram_size`): IP (20/40) + UDP 8 + flags 1 + destination connection id 8 (quinn's
//! default id length) + packet number 4 (quinn budgets the maximum so the size never flickers),
//! AEAD tag 16, DATAGRAM frame bound 9 (type 1, length varint budgeted at 8): 66/86 in all.
//! quinn's `initial_mtu` counts UDP payload bytes, i.e. the underlay MTU minus IP and UDP
//! headers: [`quic_initial_mtu`].

/// Encapsulation of tunnel packets on the underlay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encapsulation {
    /// WireGuard transport data messages over UDP.
    WireGuard,
    /// QUIC DATAGRAM frames (RFC 9221) in 1-RTT packets over UDP.
    Quic,
}

/// IP version of the underlay (outer) packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnderlayFamily {
    /// Outer IPv4 header (20 bytes).
    V4,
    /// Outer IPv6 header (40 bytes).
    V6,
}

/// Outer IP plus UDP header bytes.
pub const fn ip_udp_overhead(family: UnderlayFamily) -> u16 {
    match family {
        UnderlayFamily::V4 => 20 + 8,
        UnderlayFamily::V6 => 40 + 8,
    }
}

/// WireGuard data message header (type+reserved 4, receiver 4, counter 8) plus Poly1305 tag 16.
pub const WIREGUARD_OVERHEAD: u16 = 4 + 4 + 8 + 16;

/// QUIC short header with an 8-byte connection id and 4-byte packet number (13), AEAD tag (16),
/// DATAGRAM frame type and length bound (9): quinn's own accounting.
pub const QUIC_DATAGRAM_OVERHEAD: u16 = 1 + 8 + 4 + 16 + 9;

/// The smallest inner MTU we ever configure: IPv6 requires 1280 on every link.
pub const MIN_TUNNEL_MTU: u16 = 1280;

/// Smallest UDP payload a QUIC path must carry (RFC 9000 §14): quinn's lower bound for MTUs.
pub const QUIC_MIN_UDP_PAYLOAD: u16 = 1200;

/// Bytes added to an inner packet by `encap` over an underlay of `family`.
pub const fn overhead(encap: Encapsulation, family: UnderlayFamily) -> u16 {
    ip_udp_overhead(family)
        + match encap {
            Encapsulation::WireGuard => WIREGUARD_OVERHEAD,
            Encapsulation::Quic => QUIC_DATAGRAM_OVERHEAD,
        }
}

/// The TUN MTU for an underlay MTU: the largest inner packet that fits in one outer packet.
/// Saturates at 0 for absurdly small underlays (validate with [`MIN_TUNNEL_MTU`]).
pub const fn tunnel_mtu(underlay_mtu: u16, encap: Encapsulation, family: UnderlayFamily) -> u16 {
    underlay_mtu.saturating_sub(overhead(encap, family))
}

/// quinn's `initial_mtu` (UDP payload bytes) for an underlay MTU, at least quinn's minimum 1200.
pub const fn quic_initial_mtu(underlay_mtu: u16, family: UnderlayFamily) -> u16 {
    let payload = underlay_mtu.saturating_sub(ip_udp_overhead(family));
    if payload < QUIC_MIN_UDP_PAYLOAD {
        QUIC_MIN_UDP_PAYLOAD
    } else {
        payload
    }
}

/// Largest TCP MSS for a tunnel MTU: MTU minus IP and TCP headers of the inner packet.
pub const fn mss_for_mtu(tunnel_mtu: u16, inner_v6: bool) -> u16 {
    tunnel_mtu.saturating_sub(if inner_v6 { 40 + 20 } else { 20 + 20 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_numbers() {
        use Encapsulation::*;
        use UnderlayFamily::*;
        assert_eq!(overhead(WireGuard, V4), 60);
        assert_eq!(overhead(WireGuard, V6), 80);
        assert_eq!(overhead(Quic, V4), 66);
        assert_eq!(overhead(Quic, V6), 86);
        assert_eq!(tunnel_mtu(1500, WireGuard, V4), 1440);
        assert_eq!(tunnel_mtu(1500, WireGuard, V6), 1420);
        assert_eq!(tunnel_mtu(1500, Quic, V4), 1434);
        assert_eq!(tunnel_mtu(1500, Quic, V6), 1414);
        assert_eq!(tunnel_mtu(9000, Quic, V4), 8934);
        assert_eq!(tunnel_mtu(40, Quic, V4), 0);
        assert_eq!(quic_initial_mtu(1500, V4), 1472);
        assert_eq!(quic_initial_mtu(1500, V6), 1452);
        assert_eq!(quic_initial_mtu(1000, V4), 1200);
        // The tunnel packet plus quinn's datagram overhead is exactly the initial MTU.
        assert_eq!(tunnel_mtu(1500, Quic, V4) + QUIC_DATAGRAM_OVERHEAD, 1472);
        assert_eq!(mss_for_mtu(1434, false), 1394);
        assert_eq!(mss_for_mtu(1414, true), 1354);
    }
}
