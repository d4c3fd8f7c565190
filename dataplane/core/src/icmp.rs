//! ICMP "fragmentation needed" (IPv4, type 3 code 4) and ICMPv6 "packet too big" (type 2)
//! for packets that do not fit the tunnel, so the sender's path-MTU discovery shrinks its
//! packets instead of black-holing (RFC 1191, RFC 8201).
//!
//! Pure functions over byte slices: the caller writes the result to the TUN, addressed to the
//! offending packet's source. Rate limiting is the caller's (one error per packet is what the
//! kernel would do too; senders cache the MTU).

use std::net::IpAddr;

/// Largest IPv4 ICMP error we emit (RFC 1812 §4.3.2.3: at most 576 bytes).
pub const ICMPV4_ERROR_MAX: usize = 576;
/// Largest ICMPv6 error we emit (RFC 4443 §2.4(c): must not exceed the IPv6 minimum MTU).
pub const ICMPV6_ERROR_MAX: usize = 1280;
/// Hop limit / TTL of generated errors.
const TTL: u8 = 64;

/// Why no ICMP error was generated for an oversized packet (the packet is still dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoIcmp {
    /// Not a well-formed IPv4/IPv6 header.
    Malformed,
    /// IPv4 without Don't-Fragment: fragment it instead (or drop).
    MayFragment,
    /// Never answer an ICMP error, a non-first fragment, or a source that is multicast,
    /// broadcast, unspecified or loopback.
    NotAnswerable,
    /// `router` is not of the packet's IP version.
    NoSourceAddress,
    /// `out` is too small for the error message.
    BufferTooSmall,
}

/// Builds the "too big" error answering `packet`, telling its sender `mtu`, sourced from
/// `router` (our tunnel address of the same IP version). Writes it to `out`, returns its length.
pub fn packet_too_big(
    packet: &[u8],
    mtu: u16,
    router: IpAddr,
    out: &mut [u8],
) -> Result<usize, NoIcmp> {
    match (packet.first().map(|b| b >> 4), router) {
        (Some(4), IpAddr::V4(r)) => v4(packet, mtu, r.octets(), out),
        (Some(6), IpAddr::V6(r)) => v6(packet, mtu, r.octets(), out),
        (Some(4 | 6), _) => Err(NoIcmp::NoSourceAddress),
        _ => Err(NoIcmp::Malformed),
    }
}

fn v4(p: &[u8], mtu: u16, router: [u8; 4], out: &mut [u8]) -> Result<usize, NoIcmp> {
    if p.len() < 20 {
        return Err(NoIcmp::Malformed);
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if ihl < 20 || p.len() < ihl {
        return Err(NoIcmp::Malformed);
    }
    let flags_frag = u16::from_be_bytes([p[6], p[7]]);
    if flags_frag & 0x4000 == 0 {
        return Err(NoIcmp::MayFragment);
    }
    let src = [p[12], p[13], p[14], p[15]];
    let is_icmp_error = p[9] == 1 && p.len() > ihl && !matches!(p[ihl], 0 | 8 | 13 | 14);
    let first_fragment = flags_frag & 0x1fff == 0;
    let bad_src = src[0] == 0 || src[0] == 127 || src[0] >= 224;
    if is_icmp_error || !first_fragment || bad_src {
        return Err(NoIcmp::NotAnswerable);
    }
    let quote = p.len().min(ICMPV4_ERROR_MAX - 28);
    let len = 28 + quote;
    let out = out.get_mut(..len).ok_or(NoIcmp::BufferTooSmall)?;
    out[..20].copy_from_slice(&[
        0x45, 0xc0, 0, 0, 0, 0, 0, 0, TTL, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    out[12..16].copy_from_slice(&router);
    out[16..20].copy_from_slice(&src);
    let hc = checksum(0, &out[..20]);
    out[10..12].copy_from_slice(&hc.to_be_bytes());
    out[20..28].copy_from_slice(&[3, 4, 0, 0, 0, 0, 0, 0]);
    out[26..28].copy_from_slice(&mtu.to_be_bytes());
    out[28..].copy_from_slice(&p[..quote]);
    let ic = checksum(0, &out[20..]);
    out[22..24].copy_from_slice(&ic.to_be_bytes());
    Ok(len)
}

fn v6(p: &[u8], mtu: u16, router: [u8; 16], out: &mut [u8]) -> Result<usize, NoIcmp> {
    if p.len() < 40 {
        return Err(NoIcmp::Malformed);
    }
    let src = &p[8..24];
    let unspecified = src.iter().all(|&b| b == 0);
    let loopback = src[..15].iter().all(|&b| b == 0) && src[15] == 1;
    let multicast = src[0] == 0xff;
    // An ICMPv6 error (types below 128) directly after the fixed header is never answered.
    let is_icmp_error = p[6] == 58 && p.len() > 40 && p[40] < 128;
    if unspecified || loopback || multicast || is_icmp_error {
        return Err(NoIcmp::NotAnswerable);
    }
    let quote = p.len().min(ICMPV6_ERROR_MAX - 48);
    let len = 48 + quote;
    let out = out.get_mut(..len).ok_or(NoIcmp::BufferTooSmall)?;
    out[..8].copy_from_slice(&[0x60, 0, 0, 0, 0, 0, 58, TTL]);
    out[4..6].copy_from_slice(&((8 + quote) as u16).to_be_bytes());
    out[8..24].copy_from_slice(&router);
    out[24..40].copy_from_slice(src);
    out[40..48].copy_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]);
    out[44..48].copy_from_slice(&u32::from(mtu).to_be_bytes());
    out[48..].copy_from_slice(&p[..quote]);
    // Pseudo-header: addresses, upper-layer length, next header.
    let mut sum = sum_words(0, &out[8..40]);
    sum += (8 + quote) as u32;
    sum += 58;
    let c = checksum(sum, &out[40..]);
    out[42..44].copy_from_slice(&c.to_be_bytes());
    Ok(len)
}

/// One's-complement sum of 16-bit big-endian words (odd tail padded with zero) onto `sum`.
pub(crate) fn sum_words(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// Folds a one's-complement sum and complements it: the Internet checksum of `data` plus `sum`.
pub(crate) fn checksum(sum: u32, data: &[u8]) -> u16 {
    let mut s = sum_words(sum, data);
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv4 TCP packet 100.64.1.2 -> 100.64.2.3, DF set, `len` bytes.
    fn v4_packet(len: usize, df: bool) -> Vec<u8> {
        let mut p = vec![0xab; len];
        p[..20].copy_from_slice(&[
            0x45, 0, 0, 0, 0x12, 0x34, 0, 0, 64, 6, 0, 0, 100, 64, 1, 2, 100, 64, 2, 3,
        ]);
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        if df {
            p[6] = 0x40;
        }
        p
    }

    fn v6_packet(len: usize, next: u8) -> Vec<u8> {
        let mut p = vec![0xcd; len];
        p[..8].copy_from_slice(&[0x60, 0, 0, 0, 0, 0, next, 64]);
        p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        p[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2]);
        p[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3]);
        p
    }

    #[test]
    fn ipv4_frag_needed_bytes() {
        let p = v4_packet(1500, true);
        let mut out = [0x5a; 700];
        let n = packet_too_big(&p, 1434, "100.64.1.1".parse().unwrap(), &mut out).unwrap();
        assert_eq!(n, 576);
        let o = &out[..n];
        assert_eq!(&o[..4], &[0x45, 0xc0, 0x02, 0x40]);
        assert_eq!(o[9], 1);
        assert_eq!(&o[12..16], &[100, 64, 1, 1]);
        assert_eq!(&o[16..20], &[100, 64, 1, 2], "sent back to the source");
        assert_eq!(&o[20..22], &[3, 4]);
        assert_eq!(&o[26..28], &1434u16.to_be_bytes());
        assert_eq!(&o[28..], &p[..548]);
        assert_eq!(checksum(0, &o[..20]), 0, "valid header checksum");
        assert_eq!(checksum(0, &o[20..]), 0, "valid icmp checksum");
        assert_eq!(out[n], 0x5a, "nothing written past the end");
    }

    #[test]
    fn ipv6_packet_too_big_bytes() {
        let p = v6_packet(1500, 17);
        let mut out = [0u8; 1500];
        let n = packet_too_big(&p, 1414, "fd00:0:0:1::1".parse().unwrap(), &mut out).unwrap();
        assert_eq!(n, 1280);
        let o = &out[..n];
        assert_eq!(&o[4..8], &[0x04, 0xd8, 58, 64]);
        assert_eq!(&o[24..40], &p[8..24], "sent back to the source");
        assert_eq!(&o[40..42], &[2, 0]);
        assert_eq!(&o[44..48], &1414u32.to_be_bytes());
        assert_eq!(&o[48..], &p[..1232]);
        let pseudo = sum_words(0, &o[8..40]) + 1240 + 58;
        assert_eq!(checksum(pseudo, &o[40..]), 0);
        // Short packets are quoted whole.
        let small = v6_packet(60, 6);
        assert_eq!(
            packet_too_big(&small, 1280, "fd00::1".parse().unwrap(), &mut out),
            Ok(108)
        );
    }

    #[test]
    fn refusals() {
        let r4: IpAddr = "100.64.1.1".parse().unwrap();
        let r6: IpAddr = "fd00::1".parse().unwrap();
        let mut out = [0u8; 1500];
        assert_eq!(
            packet_too_big(&v4_packet(1500, false), 1400, r4, &mut out),
            Err(NoIcmp::MayFragment)
        );
        assert_eq!(
            packet_too_big(&v4_packet(1500, true), 1400, r6, &mut out),
            Err(NoIcmp::NoSourceAddress)
        );
        assert_eq!(
            packet_too_big(&[0x45; 10], 1400, r4, &mut out),
            Err(NoIcmp::Malformed)
        );
        assert_eq!(
            packet_too_big(&[], 1400, r4, &mut out),
            Err(NoIcmp::Malformed)
        );
        assert_eq!(
            packet_too_big(&[0x60; 39], 1400, r6, &mut out),
            Err(NoIcmp::Malformed)
        );
        let mut icmp_err = v4_packet(1500, true);
        icmp_err[9] = 1;
        icmp_err[20] = 3;
        assert_eq!(
            packet_too_big(&icmp_err, 1400, r4, &mut out),
            Err(NoIcmp::NotAnswerable)
        );
        icmp_err[20] = 8; // echo request: answered
        assert!(packet_too_big(&icmp_err, 1400, r4, &mut out).is_ok());
        let mut frag = v4_packet(1500, true);
        frag[7] = 10;
        assert_eq!(
            packet_too_big(&frag, 1400, r4, &mut out),
            Err(NoIcmp::NotAnswerable)
        );
        let mut mcast = v4_packet(1500, true);
        mcast[12] = 224;
        assert_eq!(
            packet_too_big(&mcast, 1400, r4, &mut out),
            Err(NoIcmp::NotAnswerable)
        );
        let mut v6err = v6_packet(1500, 58);
        v6err[40] = 1;
        assert_eq!(
            packet_too_big(&v6err, 1400, r6, &mut out),
            Err(NoIcmp::NotAnswerable)
        );
        let mut small = [0u8; 100];
        assert_eq!(
            packet_too_big(&v4_packet(1500, true), 1400, r4, &mut small),
            Err(NoIcmp::BufferTooSmall)
        );
    }
}
