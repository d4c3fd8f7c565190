//! Cross-checks the pure MTU packet functions of the core (ICMP too-big, MSS clamping) against
//! an independent packet library (etherparse): what we emit parses and checksums correctly.

use etherparse::{
    Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpNumber, Ipv4Header, PacketBuilder,
    SlicedPacket, TcpOptionElement, TransportSlice, icmpv4::DestUnreachableHeader,
};
use fleetboard_dataplane_core::{icmp, mss};

fn tcp_syn_v4(payload: usize, mss: u16) -> Vec<u8> {
    let builder = PacketBuilder::ipv4([100, 64, 1, 2], [100, 64, 2, 3], 64)
        .tcp(40000, 5201, 7, 64240)
        .syn()
        .options(&[
            TcpOptionElement::MaximumSegmentSize(mss),
            TcpOptionElement::Noop,
            TcpOptionElement::WindowScale(7),
        ])
        .unwrap();
    let body = vec![0x11; payload];
    let mut out = Vec::new();
    builder.write(&mut out, &body).unwrap();
    // Set Don't-Fragment, fix the header checksum.
    out[6] |= 0x40;
    let (mut h, _) = Ipv4Header::from_slice(&out).unwrap();
    h.header_checksum = h.calc_header_checksum();
    out[..20].copy_from_slice(&h.to_bytes());
    out
}

#[test]
fn icmpv4_frag_needed_parses_with_valid_checksums() {
    let packet = tcp_syn_v4(1460, 1460);
    let mut out = vec![0u8; 1500];
    let n = icmp::packet_too_big(&packet, 1434, "100.64.1.1".parse().unwrap(), &mut out).unwrap();
    let sliced = SlicedPacket::from_ip(&out[..n]).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = &sliced.net else {
        panic!("not ipv4")
    };
    let h = ip.header().to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum());
    assert_eq!(h.destination, [100, 64, 1, 2]);
    let Some(TransportSlice::Icmpv4(icmp)) = sliced.transport else {
        panic!("not icmp")
    };
    assert_eq!(
        icmp.icmp_type(),
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: 1434
        })
    );
    let expect = Icmpv4Header::with_checksum(icmp.icmp_type(), icmp.payload());
    assert_eq!(icmp.checksum(), expect.checksum);
}

#[test]
fn icmpv6_packet_too_big_parses_with_valid_checksum() {
    let builder = PacketBuilder::ipv6(
        [0xfd, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2],
        [0xfd, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3],
        64,
    )
    .udp(1000, 2000);
    let mut packet = Vec::new();
    builder.write(&mut packet, &[0x22; 1452]).unwrap();
    let mut out = vec![0u8; 1500];
    let n =
        icmp::packet_too_big(&packet, 1414, "fd00:0:0:1::1".parse().unwrap(), &mut out).unwrap();
    let sliced = SlicedPacket::from_ip(&out[..n]).unwrap();
    let Some(etherparse::NetSlice::Ipv6(ip)) = &sliced.net else {
        panic!("not ipv6")
    };
    let (src, dst) = (ip.header().source(), ip.header().destination());
    let Some(TransportSlice::Icmpv6(icmp)) = sliced.transport else {
        panic!("not icmpv6")
    };
    assert_eq!(icmp.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1414 });
    let expect = Icmpv6Header::with_checksum(icmp.icmp_type(), src, dst, icmp.payload()).unwrap();
    assert_eq!(icmp.checksum(), expect.checksum);
    assert_eq!(ip.header().next_header(), IpNumber::IPV6_ICMP);
}

#[test]
fn clamped_syn_parses_with_valid_tcp_checksum() {
    let mut packet = tcp_syn_v4(0, 1460);
    assert!(mss::clamp_mss(&mut packet, 1394));
    let sliced = SlicedPacket::from_ip(&packet).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = &sliced.net else {
        panic!("not ipv4")
    };
    let (src, dst) = (ip.header().source(), ip.header().destination());
    let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
        panic!("not tcp")
    };
    let opts: Vec<_> = tcp.options_iterator().map(Result::unwrap).collect();
    assert_eq!(opts[0], TcpOptionElement::MaximumSegmentSize(1394));
    let h = tcp.to_header();
    assert_eq!(
        h.checksum,
        h.calc_checksum_ipv4_raw(src, dst, tcp.payload()).unwrap()
    );
}
