//! TCP MSS clamping: a SYN crossing the tunnel has its MSS option lowered to what fits the
//! tunnel MTU, so TCP never relies on path-MTU discovery through us (some hosts filter ICMP).

/// Lowers the MSS option of a TCP SYN (or SYN-ACK) in `packet` to `max_mss` if it is larger,
/// fixing the TCP checksum incrementally (RFC 1624). Returns whether the packet changed.
/// Anything else (not TCP, not SYN, fragments, IPv6 extension headers, malformed) is left alone.
pub fn clamp_mss(packet: &mut [u8], max_mss: u16) -> bool {
    let Some(tcp) = tcp_offset(packet) else {
        return false;
    };
    let seg = &mut packet[tcp..];
    if seg.len() < 20 || seg[13] & 0x02 == 0 {
        return false;
    }
    let doff = usize::from(seg[12] >> 4) * 4;
    if doff < 20 || doff > seg.len() {
        return false;
    }
    let mut i = 20;
    while i < doff {
        match seg[i] {
            0 => return false,
            1 => i += 1,
            kind => {
                let Some(&len) = seg.get(i + 1) else {
                    return false;
                };
                let len = usize::from(len);
                if len < 2 || i + len > doff {
                    return false;
                }
                if kind == 2 && len == 4 {
                    let old = u16::from_be_bytes([seg[i + 2], seg[i + 3]]);
                    if old <= max_mss {
                        return false;
                    }
                    let new = max_mss.to_be_bytes();
                    let mut csum = u16::from_be_bytes([seg[16], seg[17]]);
                    csum = update(csum, i + 2, seg[i + 2], new[0]);
                    csum = update(csum, i + 3, seg[i + 3], new[1]);
                    seg[i + 2..i + 4].copy_from_slice(&new);
                    seg[16..18].copy_from_slice(&csum.to_be_bytes());
                    return true;
                }
                i += len;
            }
        }
    }
    false
}

/// Offset of the TCP header in an unfragmented IPv4/IPv6 TCP packet.
fn tcp_offset(p: &[u8]) -> Option<usize> {
    match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let frag = u16::from_be_bytes([*p.get(6)?, *p.get(7)?]);
            (ihl >= 20 && p.len() >= ihl && p[9] == 6 && frag & 0x3fff == 0).then_some(ihl)
        }
        6 => (p.len() >= 40 && p[6] == 6).then_some(40),
        _ => None,
    }
}

/// RFC 1624 incremental update for one byte at `offset` (even: high byte of its word)
/// changing from `old` to `new`: HC' = ~(~HC + ~m + m').
fn update(csum: u16, offset: usize, old: u8, new: u8) -> u16 {
    let shift = if offset & 1 == 0 { 8 } else { 0 };
    let m = u32::from(old) << shift;
    let m2 = u32::from(new) << shift;
    let mut s = u32::from(!csum) + (!m & 0xffff) + m2;
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::icmp::{checksum, sum_words};

    /// IPv4 TCP SYN 100.64.1.2:40000 -> 100.64.2.3:5201 with `options`, valid checksum.
    fn syn_v4(options: &[u8], flags: u8) -> Vec<u8> {
        let tcp_len = 20 + options.len();
        let mut p = vec![0u8; 20 + tcp_len];
        p[..20].copy_from_slice(&[
            0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0, 100, 64, 1, 2, 100, 64, 2, 3,
        ]);
        p[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
        let t = &mut p[20..];
        t[..4].copy_from_slice(&[0x9c, 0x40, 0x14, 0x51]);
        t[4..8].copy_from_slice(&[1, 2, 3, 4]);
        t[12] = ((tcp_len / 4) as u8) << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&[0xfa, 0xf0]);
        t[20..].copy_from_slice(options);
        let c = tcp_checksum_v4(&p);
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn tcp_checksum_v4(p: &[u8]) -> u16 {
        let mut sum = sum_words(0, &p[12..20]);
        sum += 6 + (p.len() - 20) as u32;
        let mut t = p[20..].to_vec();
        t[16] = 0;
        t[17] = 0;
        checksum(sum, &t)
    }

    fn assert_valid_v4(p: &[u8]) {
        let stored = u16::from_be_bytes([p[36], p[37]]);
        assert_eq!(stored, tcp_checksum_v4(p), "tcp checksum");
    }

    #[test]
    fn clamps_ipv4_syn_and_keeps_checksum_valid() {
        // MSS 1460, SACK permitted, timestamps, NOP, window scale: as Linux sends it.
        let opts = [
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        let mut p = syn_v4(&opts, 0x02);
        assert!(clamp_mss(&mut p, 1394));
        assert_eq!(&p[42..44], &1394u16.to_be_bytes());
        assert_valid_v4(&p);
        // Already small enough: untouched.
        let before = p.clone();
        assert!(!clamp_mss(&mut p, 1400));
        assert_eq!(p, before);
    }

    #[test]
    fn odd_aligned_mss_option_is_handled() {
        let opts = [1, 2, 4, 0x23, 0x28, 1, 1, 1];
        let mut p = syn_v4(&opts, 0x12); // SYN-ACK, MSS 9000 at an odd offset
        assert!(clamp_mss(&mut p, 1394));
        assert_eq!(&p[43..45], &1394u16.to_be_bytes());
        assert_valid_v4(&p);
    }

    #[test]
    fn clamps_ipv6_syn() {
        let opts = [2, 4, 0x05, 0xa0];
        let mut p = vec![0u8; 40 + 24];
        p[..8].copy_from_slice(&[0x60, 0, 0, 0, 0, 24, 6, 64]);
        p[8] = 0xfd;
        p[23] = 2;
        p[24] = 0xfd;
        p[39] = 3;
        p[40 + 12] = 6 << 4;
        p[40 + 13] = 0x02;
        p[60..64].copy_from_slice(&opts);
        let pseudo = |p: &[u8]| sum_words(0, &p[8..40]) + 24 + 6;
        let c = checksum(pseudo(&p), &p[40..]);
        p[56..58].copy_from_slice(&c.to_be_bytes());
        assert!(clamp_mss(&mut p, 1354));
        assert_eq!(&p[62..64], &1354u16.to_be_bytes());
        assert_eq!(checksum(pseudo(&p), &p[40..]), 0, "checksum still valid");
    }

    #[test]
    fn leaves_other_packets_alone() {
        let opts = [2, 4, 0x05, 0xb4];
        let mut ack = syn_v4(&opts, 0x10);
        assert!(!clamp_mss(&mut ack, 1000));
        let mut udp = syn_v4(&opts, 0x02);
        udp[9] = 17;
        assert!(!clamp_mss(&mut udp, 1000));
        let mut frag = syn_v4(&opts, 0x02);
        frag[7] = 1;
        assert!(!clamp_mss(&mut frag, 1000));
        let mut bad_len = syn_v4(&[2, 9, 0x05, 0xb4], 0x02);
        assert!(!clamp_mss(&mut bad_len, 1000));
        let mut end = syn_v4(&[0, 2, 4, 0x05, 0xb4, 0, 0, 0], 0x02);
        assert!(!clamp_mss(&mut end, 1000));
        let full = syn_v4(&opts, 0x02);
        for n in 0..full.len() {
            let mut t = full[..n].to_vec();
            let _ = clamp_mss(&mut t, 1000);
        }
        assert!(!clamp_mss(&mut [], 1000));
    }
}
