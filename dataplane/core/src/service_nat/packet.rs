//! The packet side of the service NAT: which flow a packet belongs to, and rewriting its
//! address and port with incrementally fixed checksums (RFC 1624).

use std::net::IpAddr;

/// A rewrite decided for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    /// Replace the destination address and port (client -> endpoint).
    Dst(IpAddr, u16),
    /// Replace the source address and port (endpoint reply -> VIP).
    Src(IpAddr, u16),
}

/// The parts of a TCP/UDP packet the NAT looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// IP protocol number (6 or 17).
    pub proto: u8,
    /// Source address.
    pub src: IpAddr,
    /// Source port.
    pub sport: u16,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port.
    pub dport: u16,
    /// Offset of the TCP/UDP header.
    pub l4: usize,
}

/// Parses the flow of an unfragmented IPv4/IPv6 TCP or UDP packet with a complete L4 header.
#[inline]
pub fn parse_flow(p: &[u8]) -> Option<Flow> {
    let (proto, src, dst, l4) = match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let frag = u16::from_be_bytes([p[6], p[7]]);
            if ihl < 20 || frag & 0x3fff != 0 {
                return None;
            }
            let s: [u8; 4] = p[12..16].try_into().ok()?;
            let d: [u8; 4] = p[16..20].try_into().ok()?;
            (p[9], IpAddr::from(s), IpAddr::from(d), ihl)
        }
        6 if p.len() >= 40 => {
            let s: [u8; 16] = p[8..24].try_into().ok()?;
            let d: [u8; 16] = p[24..40].try_into().ok()?;
            (p[6], IpAddr::from(s), IpAddr::from(d), 40)
        }
        _ => return None,
    };
    let min = match proto {
        6 => 20,
        17 => 8,
        _ => return None,
    };
    if p.len() < l4 + min {
        return None;
    }
    Some(Flow {
        proto,
        src,
        sport: u16::from_be_bytes([p[l4], p[l4 + 1]]),
        dst,
        dport: u16::from_be_bytes([p[l4 + 2], p[l4 + 3]]),
        l4,
    })
}

/// Applies `rw` to the packet in place (its flow from [`parse_flow`]), fixing checksums.
#[inline]
pub fn apply_rewrite(p: &mut [u8], flow: &Flow, rw: Rewrite) {
    let (addr_off, port_off, addr, port) = match (rw, flow.src.is_ipv6()) {
        (Rewrite::Dst(a, pt), false) => (16, flow.l4 + 2, a, pt),
        (Rewrite::Src(a, pt), false) => (12, flow.l4, a, pt),
        (Rewrite::Dst(a, pt), true) => (24, flow.l4 + 2, a, pt),
        (Rewrite::Src(a, pt), true) => (8, flow.l4, a, pt),
    };
    let mut new = [0u8; 16];
    let alen = match addr {
        IpAddr::V4(a) => {
            new[..4].copy_from_slice(&a.octets());
            4
        }
        IpAddr::V6(a) => {
            new.copy_from_slice(&a.octets());
            16
        }
    };
    let mut old = [0u8; 16];
    old[..alen].copy_from_slice(&p[addr_off..addr_off + alen]);
    let old_port = [p[port_off], p[port_off + 1]];
    let new_port = port.to_be_bytes();
    // Transport checksum: pseudo-header address and the port.
    let csum_off = flow.l4 + if flow.proto == 6 { 16 } else { 6 };
    let csum = u16::from_be_bytes([p[csum_off], p[csum_off + 1]]);
    if !(flow.proto == 17 && csum == 0 && !flow.src.is_ipv6()) {
        let mut c = csum_replace(csum, &old[..alen], &new[..alen]);
        c = csum_replace(c, &old_port, &new_port);
        if flow.proto == 17 && c == 0 {
            c = 0xffff;
        }
        p[csum_off..csum_off + 2].copy_from_slice(&c.to_be_bytes());
    }
    if alen == 4 {
        let hc = u16::from_be_bytes([p[10], p[11]]);
        let hc = csum_replace(hc, &old[..4], &new[..4]);
        p[10..12].copy_from_slice(&hc.to_be_bytes());
    }
    p[addr_off..addr_off + alen].copy_from_slice(&new[..alen]);
    p[port_off..port_off + 2].copy_from_slice(&new_port);
}

/// RFC 1624 incremental update of a ones-complement checksum when `old` (even length) is
/// replaced by `new`.
#[inline]
fn csum_replace(sum: u16, old: &[u8], new: &[u8]) -> u16 {
    let mut acc: u32 = u32::from(!sum);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        acc += u32::from(!u16::from_be_bytes([o[0], o[1]]));
        acc += u32::from(u16::from_be_bytes([n[0], n[1]]));
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}
