//! Just enough of the IP header: version, source and destination, checked once at ingress.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::drop::DropReason;

/// Source and destination of a validated IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpHeader {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
}

impl IpHeader {
    /// Parses an IPv4 or IPv6 packet header; the packet must hold at least the header and
    /// the length it claims.
    #[inline]
    pub fn parse(p: &[u8]) -> Result<Self, DropReason> {
        match p.first().map(|b| b >> 4) {
            Some(4) if p.len() >= 20 => {
                let total = u16::from_be_bytes([p[2], p[3]]) as usize;
                let ihl = (p[0] & 0x0f) as usize * 4;
                if total > p.len() || ihl < 20 || total < ihl {
                    return Err(DropReason::Malformed);
                }
                let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
                let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
                Ok(Self {
                    src: src.into(),
                    dst: dst.into(),
                })
            }
            Some(6) if p.len() >= 40 => {
                let payload = u16::from_be_bytes([p[4], p[5]]) as usize;
                if 40 + payload > p.len() {
                    return Err(DropReason::Malformed);
                }
                let mut s = [0u8; 16];
                let mut d = [0u8; 16];
                s.copy_from_slice(&p[8..24]);
                d.copy_from_slice(&p[24..40]);
                Ok(Self {
                    src: Ipv6Addr::from(s).into(),
                    dst: Ipv6Addr::from(d).into(),
                })
            }
            _ => Err(DropReason::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v4_and_v6_and_rejects_truncated() {
        let mut v4 = [0u8; 28];
        v4[0] = 0x45;
        v4[3] = 28;
        v4[12..16].copy_from_slice(&[100, 64, 1, 1]);
        v4[16..20].copy_from_slice(&[100, 64, 2, 1]);
        let h = IpHeader::parse(&v4).unwrap();
        assert_eq!(h.dst, "100.64.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(IpHeader::parse(&v4[..19]), Err(DropReason::Malformed));
        v4[3] = 29;
        assert_eq!(IpHeader::parse(&v4), Err(DropReason::Malformed));

        let mut v6 = [0u8; 48];
        v6[0] = 0x60;
        v6[5] = 8;
        v6[39] = 2;
        let h = IpHeader::parse(&v6).unwrap();
        assert_eq!(h.dst, "::2".parse::<IpAddr>().unwrap());
        assert_eq!(IpHeader::parse(&[]), Err(DropReason::Malformed));
        assert_eq!(IpHeader::parse(&[0x10; 60]), Err(DropReason::Malformed));
    }
}
