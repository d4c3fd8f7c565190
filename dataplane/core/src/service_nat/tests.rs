//! Unit tests of the service NAT: translation both ways with valid checksums, endpoint
//! choice, expiry and eviction, what is not a flow, validation.

use super::conntrack::octets;
use super::*;
use proptest::prelude::*;

/// Full ones-complement checksum over `data` starting from `init`.
fn sum(data: &[u8], init: u32) -> u16 {
    let mut acc = init;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        acc += u32::from(w);
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn pseudo(p: &[u8], l4: usize, proto: u8) -> u32 {
    let len = (p.len() - l4) as u32;
    let addrs: &[u8] = if p[0] >> 4 == 4 {
        &p[12..20]
    } else {
        &p[8..40]
    };
    let mut acc = 0u32;
    for c in addrs.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    acc + u32::from(proto) + (len >> 16) + (len & 0xffff)
}

/// A valid TCP or UDP packet with correct checksums.
fn packet(
    v6: bool,
    proto: u8,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let l4len = if proto == 6 { 20 } else { 8 } + payload.len();
    let mut p = if v6 {
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&(l4len as u16).to_be_bytes());
        h[6] = proto;
        h[7] = 64;
        h[8..24].copy_from_slice(&octets(src));
        h[24..40].copy_from_slice(&octets(dst));
        h
    } else {
        let mut h = vec![0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&((20 + l4len) as u16).to_be_bytes());
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&octets(src)[12..]);
        h[16..20].copy_from_slice(&octets(dst)[12..]);
        let c = sum(&h, 0);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    };
    let l4 = p.len();
    let mut t = vec![0u8; l4len];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    if proto == 6 {
        t[12] = 0x50;
        t[20..].copy_from_slice(payload);
    } else {
        t[4..6].copy_from_slice(&(l4len as u16).to_be_bytes());
        t[8..].copy_from_slice(payload);
    }
    p.extend_from_slice(&t);
    let c = sum(&p[l4..], pseudo(&p, l4, proto));
    let off = l4 + if proto == 6 { 16 } else { 6 };
    p[off..off + 2].copy_from_slice(&c.to_be_bytes());
    p
}

fn checksums_ok(p: &[u8]) -> bool {
    let f = parse_flow(p).unwrap();
    let ip_ok = p[0] >> 4 == 6 || sum(&p[..20], 0) == 0;
    let l4_ok = sum(&p[f.l4..], pseudo(p, f.l4, f.proto)) == 0;
    ip_ok && l4_ok
}

fn svc(vip: &str, eps: &[(&str, bool)]) -> ServiceConfig {
    ServiceConfig {
        name: "ns/svc".into(),
        vip: vip.parse().unwrap(),
        ports: vec![
            ServicePortConfig {
                protocol: Protocol::Tcp,
                port: 80,
                target_port: 8080,
            },
            ServicePortConfig {
                protocol: Protocol::Udp,
                port: 53,
                target_port: 5353,
            },
        ],
        endpoints: eps
            .iter()
            .map(|(a, l)| ServiceEndpointConfig {
                address: a.parse().unwrap(),
                local: *l,
            })
            .collect(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn dnat_out_and_reverse_on_reply_v4() {
    let mut nat = ServiceNat::new();
    nat.apply(&[svc("100.127.0.10", &[("100.64.1.5", false)])]);
    let mut p = packet(
        false,
        6,
        ip("100.64.2.7"),
        40000,
        ip("100.127.0.10"),
        80,
        b"hello",
    );
    let f = parse_flow(&p).unwrap();
    let rw = nat.outbound(&f).unwrap();
    assert_eq!(rw, Rewrite::Dst(ip("100.64.1.5"), 8080));
    apply_rewrite(&mut p, &f, rw);
    assert!(checksums_ok(&p));
    let f2 = parse_flow(&p).unwrap();
    assert_eq!((f2.dst, f2.dport), (ip("100.64.1.5"), 8080));

    let mut r = packet(
        false,
        6,
        ip("100.64.1.5"),
        8080,
        ip("100.64.2.7"),
        40000,
        b"world!",
    );
    let fr = parse_flow(&r).unwrap();
    let rw = nat.inbound(&fr).unwrap();
    assert_eq!(rw, Rewrite::Src(ip("100.127.0.10"), 80));
    apply_rewrite(&mut r, &fr, rw);
    assert!(checksums_ok(&r));
    assert_eq!(&r[r.len() - 6..], b"world!");
    // Not a tracked reply: untouched.
    let other = packet(
        false,
        6,
        ip("100.64.1.5"),
        8080,
        ip("100.64.2.8"),
        40000,
        b"",
    );
    assert_eq!(nat.inbound(&parse_flow(&other).unwrap()), None);
}

#[test]
fn v6_udp_and_unknown_port_or_empty_service() {
    let mut nat = ServiceNat::new();
    nat.apply(&[
        svc("fd00:fb::a", &[("fd00:64:1::5", false)]),
        svc("100.127.0.11", &[]),
    ]);
    let mut p = packet(
        true,
        17,
        ip("fd00:64:2::7"),
        1234,
        ip("fd00:fb::a"),
        53,
        b"q",
    );
    let f = parse_flow(&p).unwrap();
    let rw = nat.outbound(&f).unwrap();
    apply_rewrite(&mut p, &f, rw);
    assert!(checksums_ok(&p));
    let wrong_port = packet(
        true,
        17,
        ip("fd00:64:2::7"),
        1234,
        ip("fd00:fb::a"),
        54,
        b"q",
    );
    assert_eq!(nat.outbound(&parse_flow(&wrong_port).unwrap()), None);
    let empty = packet(false, 6, ip("100.64.2.7"), 1, ip("100.127.0.11"), 80, b"");
    assert_eq!(nat.outbound(&parse_flow(&empty).unwrap()), None);
    assert!(nat.is_vip(ip("100.127.0.11")));
}

#[test]
fn local_endpoints_preferred_and_flows_spread_and_stick() {
    let mut nat = ServiceNat::new();
    nat.apply(&[svc(
        "100.127.0.10",
        &[
            ("100.64.1.5", false),
            ("100.64.2.5", true),
            ("100.64.2.6", true),
        ],
    )]);
    let mut seen = std::collections::BTreeSet::new();
    for port in 1000..1100u16 {
        let p = packet(
            false,
            6,
            ip("100.64.2.7"),
            port,
            ip("100.127.0.10"),
            80,
            b"",
        );
        let f = parse_flow(&p).unwrap();
        let Some(Rewrite::Dst(ep, _)) = nat.outbound(&f) else {
            panic!()
        };
        assert_ne!(
            ep,
            ip("100.64.1.5"),
            "remote endpoint while local ones exist"
        );
        seen.insert(ep);
        // The same flow keeps its endpoint.
        assert_eq!(nat.outbound(&f), Some(Rewrite::Dst(ep, 8080)));
    }
    assert_eq!(seen.len(), 2, "flows spread over both local endpoints");
    // Local endpoints gone: the remote one takes over, existing flows re-balance.
    nat.apply(&[svc("100.127.0.10", &[("100.64.1.5", false)])]);
    let p = packet(
        false,
        6,
        ip("100.64.2.7"),
        1000,
        ip("100.127.0.10"),
        80,
        b"",
    );
    assert_eq!(
        nat.outbound(&parse_flow(&p).unwrap()),
        Some(Rewrite::Dst(ip("100.64.1.5"), 8080))
    );
}

#[test]
fn idle_flows_expire_and_full_buckets_evict() {
    let mut nat = ServiceNat::new();
    nat.apply(&[svc("100.127.0.10", &[("100.64.1.5", false)])]);
    let t0 = Instant::now();
    nat.handle_timeout(t0);
    let p = packet(false, 17, ip("100.64.2.7"), 5, ip("100.127.0.10"), 53, b"");
    let f = parse_flow(&p).unwrap();
    nat.outbound(&f).unwrap();
    let reply = packet(false, 17, ip("100.64.1.5"), 5353, ip("100.64.2.7"), 5, b"");
    let fr = parse_flow(&reply).unwrap();
    assert!(nat.inbound(&fr).is_some());
    nat.handle_timeout(t0 + UDP_IDLE + Duration::from_secs(2));
    assert!(nat.inbound(&fr).is_none(), "expired");
    // Far more flows than slots: bounded, no panic.
    for i in 0..(CONNTRACK_BUCKETS * CONNTRACK_WAYS * 2) as u32 {
        let src = IpAddr::from((0x6440_0000u32 + i).to_be_bytes());
        let p = packet(
            false,
            6,
            src,
            (i % 60000) as u16 + 1,
            ip("100.127.0.10"),
            80,
            b"",
        );
        nat.outbound(&parse_flow(&p).unwrap()).unwrap();
    }
    assert!(nat.flows() <= CONNTRACK_BUCKETS * CONNTRACK_WAYS);
}

#[test]
fn fragments_and_other_protocols_are_not_flows() {
    let mut p = packet(false, 6, ip("100.64.2.7"), 1, ip("100.127.0.10"), 80, b"");
    p[6] = 0x20; // more fragments
    assert!(parse_flow(&p).is_none());
    let mut icmp = packet(false, 17, ip("100.64.2.7"), 1, ip("100.127.0.10"), 80, b"");
    icmp[9] = 1;
    assert!(parse_flow(&icmp).is_none());
    assert!(parse_flow(&[0x45, 0, 0]).is_none());
}

#[test]
fn validation_names_fields() {
    let mut errs = Vec::new();
    let mut a = svc("100.127.0.10", &[("fd00::1", false)]);
    a.ports.push(a.ports[0]);
    let b = svc("100.127.0.10", &[]);
    validate(&[a, b], &mut |f, p| errs.push(format!("{f}: {p}")));
    let all = errs.join("\n");
    for f in [
        "services[0].endpoints[0].address",
        "services[0].ports[2]",
        "services[1].vip",
    ] {
        assert!(all.contains(f), "{f} missing in {all}");
    }
}

proptest! {
    /// Any rewrite of any valid TCP/UDP packet keeps every checksum valid, and the
    /// reverse rewrite restores the original bytes.
    #[test]
    fn rewrites_keep_checksums_valid(
        v6 in any::<bool>(),
        tcp in any::<bool>(),
        src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(), to in any::<[u8; 16]>(),
        sport in 1u16.., dport in 1u16.., port in 1u16..,
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        dst_side in any::<bool>(),
    ) {
        let mk = |b: [u8; 16]| if v6 { IpAddr::from(b) } else { IpAddr::from([b[0], b[1], b[2], b[3]]) };
        let proto = if tcp { 6 } else { 17 };
        let orig = packet(v6, proto, mk(src), sport, mk(dst), dport, &payload);
        let mut p = orig.clone();
        let f = parse_flow(&p).unwrap();
        let rw = if dst_side { Rewrite::Dst(mk(to), port) } else { Rewrite::Src(mk(to), port) };
        apply_rewrite(&mut p, &f, rw);
        prop_assert!(checksums_ok(&p));
        let back = if dst_side { Rewrite::Dst(f.dst, f.dport) } else { Rewrite::Src(f.src, f.sport) };
        let f2 = parse_flow(&p).unwrap();
        apply_rewrite(&mut p, &f2, back);
        prop_assert!(checksums_ok(&p));
        // Equal up to the 0x0000/0xffff representations of a checksum.
        let off = f.l4 + if tcp { 16 } else { 6 };
        let mut a = orig.clone();
        let mut b = p.clone();
        for x in [&mut a, &mut b] {
            if x[off] == 0xff && x[off + 1] == 0xff { x[off] = 0; x[off + 1] = 0; }
        }
        prop_assert_eq!(a, b);
    }

    /// Garbage never panics the parser or the NAT.
    #[test]
    fn garbage_is_safe(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        let mut nat = ServiceNat::new();
        nat.apply(&[svc("100.127.0.10", &[("100.64.1.5", false)])]);
        if let Some(f) = parse_flow(&bytes) {
            let _ = nat.outbound(&f);
            let _ = nat.inbound(&f);
        }
    }
}
