//! Tests of the QUIC transport: real quinn endpoints on 127.0.0.1 with ephemeral ports.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout};

use super::*;

const DEADLINE: Duration = Duration::from_secs(30);

fn localhost() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

/// An IPv4/UDP packet of exactly `len` bytes (header checksum is not checked by the transport).
fn ipv4_packet(len: usize, marker: u8) -> Bytes {
    assert!(len >= 28);
    let mut p = vec![marker; len];
    p[..20].copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 100, 64, 0, 1, 100, 64, 0, 2,
    ]);
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    Bytes::from(p)
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

struct Gw {
    t: QuicTransport<u32>,
    rx: mpsc::Receiver<Received<u32>>,
    id: Identity,
}

fn gateway(name: &str, id: Identity, tweak: impl FnOnce(&mut QuicConfig)) -> Gw {
    let mut cfg = QuicConfig::new(name, localhost(), id.clone());
    tweak(&mut cfg);
    let (t, rx) = QuicTransport::bind(cfg).unwrap();
    Gw { t, rx, id }
}

fn peer_cfg(tag: u32, name: &str, of: &Gw, dial: bool) -> QuicPeerConfig<u32> {
    QuicPeerConfig {
        tag,
        name: name.into(),
        fingerprint: Some(of.id.fingerprint),
        endpoint: dial.then(|| of.t.local_addr().unwrap()),
    }
}

/// Sends `packet` until one arrives at `rx` (datagrams are unreliable and the connection
/// may still be coming up); returns the received copy.
async fn deliver(
    peer: &QuicPeer<u32>,
    rx: &mut mpsc::Receiver<Received<u32>>,
    packet: Bytes,
) -> Received<u32> {
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < DEADLINE,
            "packet never delivered to {}",
            peer.name()
        );
        let _ = peer.send(packet.clone());
        if let Ok(Some(got)) = timeout(Duration::from_millis(100), rx.recv()).await {
            return got;
        }
    }
}

/// Sends for a while from an unauthenticated sender: nothing may reach `rx`.
async fn assert_nothing_arrives(from: &QuicPeer<u32>, rx: &mut mpsc::Receiver<Received<u32>>) {
    for _ in 0..10 {
        let _ = from.send(ipv4_packet(60, 0xee));
        sleep(Duration::from_millis(10)).await;
    }
    while let Ok(got) = rx.try_recv() {
        assert_ne!(
            got.packet[27], 0xee,
            "a packet of an unauthenticated sender arrived"
        );
    }
}

/// Two gateways pinning each other's keys; `a` dials `b`.
fn pair() -> (Gw, Gw, QuicPeer<u32>, QuicPeer<u32>) {
    let a = gateway("gw-a", Identity::generate("gw-a").unwrap(), |_| {});
    let b = gateway("gw-b", Identity::generate("gw-b").unwrap(), |_| {});
    let a_to_b = a.t.upsert_peer(peer_cfg(2, "gw-b", &b, true)).unwrap();
    let b_to_a = b.t.upsert_peer(peer_cfg(1, "gw-a", &a, false)).unwrap();
    (a, b, a_to_b, b_to_a)
}

#[tokio::test]
async fn authenticated_pair_exchanges_datagrams() {
    let (mut a, mut b, a_to_b, b_to_a) = pair();
    let p = ipv4_packet(1434, 7);
    let got = deliver(&a_to_b, &mut b.rx, p.clone()).await;
    assert_eq!(got.peer, 1);
    assert_eq!(got.packet, p);
    let back = ipv4_packet(100, 9);
    let got = deliver(&b_to_a, &mut a.rx, back.clone()).await;
    assert_eq!((got.peer, got.packet), (2, back));

    let s = a_to_b.stats();
    assert!(s.connected && s.rtt.is_some(), "{s:?}");
    assert_eq!(
        s.max_packet,
        Some(1434),
        "full-size tunnel packets fit: {s:?}"
    );
    assert!(s.tx_packets >= 1 && s.tx_bytes >= 1434);
    assert!(b_to_a.stats().rx_packets >= 1);
    assert_eq!(s.connects, 1);
    assert_eq!(a.t.endpoint_stats(), EndpointStats::default());
    assert_eq!(b.t.endpoint_stats(), EndpointStats::default());
    assert_eq!(b.t.peer_stats().len(), 1);
}

#[tokio::test]
async fn packet_bigger_than_tunnel_mtu_is_refused_with_the_max() {
    let (_a, mut b, a_to_b, _b_to_a) = pair();
    deliver(&a_to_b, &mut b.rx, ipv4_packet(60, 1)).await;
    assert_eq!(
        a_to_b.send(ipv4_packet(1435, 1)),
        Err(SendError::TooBig { max: 1434 })
    );
    assert_eq!(a_to_b.stats().drop_too_big, 1);
}

#[tokio::test]
async fn non_ip_and_oversized_datagrams_are_dropped_and_counted() {
    // b's underlay is smaller, so a can send packets b must not accept.
    let a = gateway("gw-a", Identity::generate("gw-a").unwrap(), |_| {});
    let mut b = gateway("gw-b", Identity::generate("gw-b").unwrap(), |c| {
        c.underlay_mtu = 1400
    });
    let a_to_b = a.t.upsert_peer(peer_cfg(2, "gw-b", &b, true)).unwrap();
    let b_to_a = b.t.upsert_peer(peer_cfg(1, "gw-a", &a, false)).unwrap();
    deliver(&a_to_b, &mut b.rx, ipv4_packet(60, 1)).await;

    for junk in [&b"hello"[..], &[0x45; 10], &[0x60; 39], &[0xff; 200]] {
        a_to_b.send(Bytes::copy_from_slice(junk)).unwrap();
    }
    let mut wrong_len = ipv4_packet(100, 3).to_vec();
    wrong_len[3] = 99;
    a_to_b.send(Bytes::from(wrong_len)).unwrap();
    a_to_b.send(ipv4_packet(1400, 4)).unwrap();
    wait_for("drops counted", || {
        let s = b_to_a.stats();
        s.drop_not_ip == 5 && s.drop_oversized == 1
    })
    .await;
    // The connection survives and good packets still pass.
    let good = ipv4_packet(1334, 5);
    assert_eq!(deliver(&a_to_b, &mut b.rx, good.clone()).await.packet, good);
}

#[tokio::test]
async fn unknown_client_certificate_is_rejected_and_counted() {
    let (_a, mut b, a_to_b, _b_to_a) = pair();
    // A stranger that pins b correctly, but b does not know the stranger's key.
    let stranger = gateway("gw-x", Identity::generate("gw-x").unwrap(), |_| {});
    let x_to_b = stranger
        .t
        .upsert_peer(peer_cfg(9, "gw-b", &b, true))
        .unwrap();
    wait_for("stranger rejected", || {
        b.t.endpoint_stats().auth_rejected >= 2
    })
    .await;
    let s = b.t.endpoint_stats();
    assert!(s.handshake_failed >= 2, "{s:?}");
    // (A TLS 1.3 client may believe it is connected for one RTT before the server's
    // rejection arrives; it never gets a packet through.)
    assert_nothing_arrives(&x_to_b, &mut b.rx).await;
    // Same name as a configured peer does not help either: the key is what counts.
    let impostor = gateway("gw-a", Identity::generate("gw-a").unwrap(), |_| {});
    let i_to_b = impostor
        .t
        .upsert_peer(peer_cfg(9, "gw-b", &b, true))
        .unwrap();
    let before = b.t.endpoint_stats().auth_rejected;
    wait_for("impostor rejected", || {
        b.t.endpoint_stats().auth_rejected > before
    })
    .await;
    assert_nothing_arrives(&i_to_b, &mut b.rx).await;
    // The real peer is unaffected.
    deliver(&a_to_b, &mut b.rx, ipv4_packet(80, 2)).await;
    assert_eq!(b.t.endpoint_stats().unknown_peer, 0);
}

#[tokio::test]
async fn wrong_server_key_is_rejected_by_the_dialer() {
    let a = gateway("gw-a", Identity::generate("gw-a").unwrap(), |_| {});
    let b = gateway("gw-b", Identity::generate("gw-b").unwrap(), |_| {});
    b.t.upsert_peer(peer_cfg(1, "gw-a", &a, false)).unwrap();
    let mut wrong = peer_cfg(2, "gw-b", &b, true);
    wrong.fingerprint = Some(Identity::generate("gw-b").unwrap().fingerprint);
    let a_to_b = a.t.upsert_peer(wrong).unwrap();
    wait_for("server key rejected", || {
        a.t.endpoint_stats().auth_rejected >= 1
    })
    .await;
    wait_for("dial failure counted", || a_to_b.stats().dial_failures >= 1).await;
    assert!(!a_to_b.is_connected());
    // Fixing the pin connects.
    a.t.upsert_peer(peer_cfg(2, "gw-b", &b, true)).unwrap();
    wait_for("connected after fixing the pin", || a_to_b.is_connected()).await;
}

#[tokio::test]
async fn cluster_ca_issued_certificates_authenticate_without_pins() {
    let ca = ClusterCa::generate().unwrap();
    let other = ClusterCa::generate().unwrap();
    let with_ca = |c: &mut QuicConfig| c.ca = Some(ca.cert().clone());
    let a = gateway("gw-a", ca.issue("gw-a").unwrap(), with_ca);
    let mut b = gateway("gw-b", ca.issue("gw-b").unwrap(), with_ca);
    let unpinned = |tag, name: &str, endpoint| QuicPeerConfig {
        tag,
        name: name.into(),
        fingerprint: None,
        endpoint,
    };
    let a_to_b =
        a.t.upsert_peer(unpinned(2, "gw-b", Some(b.t.local_addr().unwrap())))
            .unwrap();
    b.t.upsert_peer(unpinned(1, "gw-a", None)).unwrap();
    let got = deliver(&a_to_b, &mut b.rx, ipv4_packet(200, 1)).await;
    assert_eq!(got.peer, 1);
    // A certificate for the right name from another CA gets nothing.
    let forged = gateway("gw-a", other.issue("gw-a").unwrap(), |_| {});
    let f_to_b = forged.t.upsert_peer(peer_cfg(2, "gw-b", &b, true)).unwrap();
    wait_for("forged cert rejected", || {
        b.t.endpoint_stats().auth_rejected >= 1
    })
    .await;
    assert_nothing_arrives(&f_to_b, &mut b.rx).await;
}

#[tokio::test]
async fn simultaneous_dials_converge_on_one_connection() {
    let mut a = gateway("gw-a", Identity::generate("gw-a").unwrap(), |_| {});
    let mut b = gateway("gw-b", Identity::generate("gw-b").unwrap(), |_| {});
    let a_to_b = a.t.upsert_peer(peer_cfg(2, "gw-b", &b, true)).unwrap();
    let b_to_a = b.t.upsert_peer(peer_cfg(1, "gw-a", &a, true)).unwrap();
    deliver(&a_to_b, &mut b.rx, ipv4_packet(60, 1)).await;
    deliver(&b_to_a, &mut a.rx, ipv4_packet(60, 2)).await;
    // Both converge on the connection dialed by the lower fingerprint: it stays up and
    // carries traffic both ways (a flapping pair would keep dropping these).
    wait_for("both connected", || {
        a_to_b.is_connected() && b_to_a.is_connected()
    })
    .await;
    for i in 0..20 {
        deliver(&a_to_b, &mut b.rx, ipv4_packet(60, i)).await;
        deliver(&b_to_a, &mut a.rx, ipv4_packet(60, i)).await;
    }
    deliver(&a_to_b, &mut b.rx, ipv4_packet(60, 3)).await;
    deliver(&b_to_a, &mut a.rx, ipv4_packet(60, 4)).await;
}

#[tokio::test]
async fn connection_migrates_when_the_dialer_changes_address() {
    let (a, mut b, a_to_b, b_to_a) = pair();
    deliver(&a_to_b, &mut b.rx, ipv4_packet(60, 1)).await;
    let old = b_to_a.stats().remote.unwrap();
    a.t.rebind(udp_socket(localhost()).unwrap()).unwrap();
    let new = a.t.local_addr().unwrap();
    assert_ne!(old, new);
    wait_for("b follows a to its new address", || {
        let _ = a_to_b.send(ipv4_packet(60, 2));
        b_to_a.stats().remote == Some(new)
    })
    .await;
    assert_eq!(a_to_b.stats().connects, 1, "same connection, no re-dial");
    deliver(&a_to_b, &mut b.rx, ipv4_packet(60, 3)).await;
}

#[tokio::test]
async fn dialer_reconnects_after_the_peer_restarts() {
    let (a, b, a_to_b, _b_to_a) = pair();
    let Gw { t, mut rx, id } = b;
    deliver(&a_to_b, &mut rx, ipv4_packet(60, 1)).await;
    let addr = t.local_addr().unwrap();
    t.close();
    drop((t, rx));
    // Restart on the same address with the same identity.
    let mut cfg = QuicConfig::new("gw-b", addr, id);
    cfg.keepalive = Duration::from_secs(5);
    let start = Instant::now();
    let (t2, mut rx2) = loop {
        match QuicTransport::<u32>::bind(cfg.clone()) {
            Ok(x) => break x,
            Err(e) => {
                assert!(start.elapsed() < DEADLINE, "rebind {addr}: {e}");
                sleep(Duration::from_millis(50)).await;
            }
        }
    };
    t2.upsert_peer(peer_cfg(1, "gw-a", &a, false)).unwrap();
    wait_for("reconnected", || a_to_b.stats().connects >= 2).await;
    deliver(&a_to_b, &mut rx2, ipv4_packet(60, 2)).await;
}

#[tokio::test]
async fn removed_peer_is_disconnected_and_can_return() {
    let (a, mut b, a_to_b, _b_to_a) = pair();
    deliver(&a_to_b, &mut b.rx, ipv4_packet(60, 1)).await;
    assert!(b.t.remove_peer("gw-a"));
    assert!(!b.t.remove_peer("gw-a"));
    wait_for("a sees the close", || {
        !a_to_b.is_connected() || a_to_b.stats().connects > 1
    })
    .await;
    // While removed, a's dials are rejected (its key is no longer trusted).
    wait_for("rejected while removed", || {
        b.t.endpoint_stats().auth_rejected >= 1
    })
    .await;
    let back = b.t.set_peers(vec![peer_cfg(1, "gw-a", &a, false)]).unwrap();
    assert_eq!(back.len(), 1);
    deliver(&a_to_b, &mut b.rx, ipv4_packet(60, 2)).await;
}

#[tokio::test]
async fn flood_of_connection_attempts_is_bounded_and_other_peers_keep_working() {
    let a = gateway("gw-a", Identity::generate("gw-a").unwrap(), |_| {});
    let mut b = gateway("gw-b", Identity::generate("gw-b").unwrap(), |c| {
        c.max_handshakes = 2
    });
    let a_to_b = a.t.upsert_peer(peer_cfg(2, "gw-b", &b, true)).unwrap();
    b.t.upsert_peer(peer_cfg(1, "gw-a", &a, false)).unwrap();
    deliver(&a_to_b, &mut b.rx, ipv4_packet(60, 1)).await;
    let id = Identity::generate("gw-x").unwrap();
    let strangers: Vec<Gw> = (0..16)
        .map(|i| {
            let g = gateway(&format!("gw-x{i}"), id.clone(), |_| {});
            g.t.upsert_peer(peer_cfg(9, "gw-b", &b, true)).unwrap();
            g
        })
        .collect();
    wait_for("flood noticed", || {
        let s = b.t.endpoint_stats();
        s.auth_rejected + s.refused_busy >= 16
    })
    .await;
    for g in &strangers {
        assert_nothing_arrives(&g.t.peer("gw-b").unwrap(), &mut b.rx).await;
    }
    deliver(&a_to_b, &mut b.rx, ipv4_packet(1434, 2)).await;
}

/// Datagrams for connection IDs the endpoint never issued (garbage on its port) are dropped
/// by quinn and counted as `unknown_cid`; a real connection's datagrams never are, and the
/// connection beside the garbage keeps working.
#[tokio::test]
async fn datagrams_for_connection_ids_never_issued_are_counted() {
    let (_a, mut b, a_to_b, _) = pair();
    deliver(&a_to_b, &mut b.rx, ipv4_packet(60, 1)).await;
    assert_eq!(b.t.endpoint_stats().unknown_cid, 0);
    let garbage = std::net::UdpSocket::bind(localhost()).unwrap();
    for i in 0..10u8 {
        // A short header (fixed bit, no long-header bit), an 8-byte connection ID, a payload.
        let mut d = vec![0x41];
        d.extend_from_slice(&[i ^ 0x5a; 8]);
        d.extend_from_slice(&[i; 40]);
        garbage.send_to(&d, b.t.local_addr().unwrap()).unwrap();
    }
    wait_for("10 datagrams for unknown connection IDs counted", || {
        b.t.endpoint_stats().unknown_cid >= 10
    })
    .await;
    deliver(&a_to_b, &mut b.rx, ipv4_packet(60, 2)).await;
    let s = b.t.endpoint_stats();
    assert_eq!(
        s,
        EndpointStats {
            unknown_cid: s.unknown_cid,
            ..EndpointStats::default()
        },
        "the garbage counts as nothing else"
    );
}

/// A UDP relay on 127.0.0.2 that passes datagrams on to `to` and drops every answer: QUIC
/// handshakes through it start (the server sees the client's Initials) and never finish.
async fn one_way_proxy(to: SocketAddr) -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2), 0))
        .await
        .unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            if from != to {
                let _ = sock.send_to(&buf[..n], to).await;
            }
        }
    });
    addr
}

#[tokio::test]
async fn incomplete_handshakes_from_one_source_time_out_and_cannot_hold_the_slots() {
    let a = gateway("gw-a", Identity::generate("gw-a").unwrap(), |_| {});
    let mut b = gateway("gw-b", Identity::generate("gw-b").unwrap(), |c| {
        c.max_handshakes = 8;
        c.max_handshakes_per_source = 2;
        c.handshake_timeout = Duration::from_secs(1);
    });
    let a_to_b = a.t.upsert_peer(peer_cfg(2, "gw-b", &b, true)).unwrap();
    b.t.upsert_peer(peer_cfg(1, "gw-a", &a, false)).unwrap();
    deliver(&a_to_b, &mut b.rx, ipv4_packet(60, 1)).await;

    // 24 dialers behind one address (the proxy's) start handshakes that never complete.
    let proxy = one_way_proxy(b.t.local_addr().unwrap()).await;
    let id = Identity::generate("gw-x").unwrap();
    let flood: Vec<Gw> = (0..24)
        .map(|i| {
            let g = gateway(&format!("gw-x{i}"), id.clone(), |_| {});
            let mut to_b = peer_cfg(9, "gw-b", &b, true);
            to_b.endpoint = Some(proxy);
            g.t.upsert_peer(to_b).unwrap();
            g
        })
        .collect();
    wait_for("slots of the flooding source time out", || {
        b.t.endpoint_stats().handshake_timeout >= 2
    })
    .await;
    let s = b.t.endpoint_stats();
    assert!(s.refused_source + s.retried > 0, "{s:?}");

    // The established connection keeps passing traffic during the flood...
    for k in 0..20 {
        deliver(&a_to_b, &mut b.rx, ipv4_packet(1000, k)).await;
    }
    // ...and a new peer completes its handshake while it goes on.
    let c = gateway("gw-c", Identity::generate("gw-c").unwrap(), |_| {});
    let c_to_b = c.t.upsert_peer(peer_cfg(2, "gw-b", &b, true)).unwrap();
    b.t.upsert_peer(peer_cfg(3, "gw-c", &c, false)).unwrap();
    let started = Instant::now();
    let got = deliver(&c_to_b, &mut b.rx, ipv4_packet(60, 0xc)).await;
    assert_eq!(got.peer, 3);
    let s = b.t.endpoint_stats();
    eprintln!(
        "quic flood: new peer connected in {:?} under flood; {s:?}",
        started.elapsed()
    );
    assert!(s.handshake_timeout >= 2, "{s:?}");
    drop(flood);
}

#[test]
fn ip_packet_check() {
    assert_eq!(check_ip_packet(&ipv4_packet(28, 0)), Ok(()));
    assert_eq!(check_ip_packet(&[]), Err(NotIp::Truncated));
    assert_eq!(check_ip_packet(&[0x45; 19]), Err(NotIp::Truncated));
    assert_eq!(check_ip_packet(&[0x20; 40]), Err(NotIp::Version));
    let mut short_ihl = ipv4_packet(28, 0).to_vec();
    short_ihl[0] = 0x44;
    assert_eq!(check_ip_packet(&short_ihl), Err(NotIp::Length));
    let mut v6 = vec![0u8; 48];
    v6[0] = 0x60;
    v6[5] = 8;
    assert_eq!(check_ip_packet(&v6), Ok(()));
    v6[5] = 9;
    assert_eq!(check_ip_packet(&v6), Err(NotIp::Length));
}

#[test]
fn config_errors_name_the_field() {
    let id = Identity::generate("gw-a").unwrap();
    let mut c = QuicConfig::new("gw-a", localhost(), id);
    assert!(c.validate().is_ok());
    assert_eq!(c.tunnel_mtu(), 1434);
    assert_eq!(c.initial_mtu(), 1472);
    c.underlay_mtu = 1300;
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("underlay_mtu")
    );
    c.underlay_mtu = 1500;
    c.keepalive = c.idle_timeout;
    assert!(c.validate().unwrap_err().to_string().contains("keepalive"));
    c.keepalive = DEFAULT_KEEPALIVE;
    c.name = "bad name".into();
    assert!(c.validate().unwrap_err().to_string().contains("name"));
    c.name = "gw-a".into();
    c.max_handshakes_per_source = 0;
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("max_handshakes_per_source")
    );
    c.max_handshakes_per_source = DEFAULT_MAX_HANDSHAKES_PER_SOURCE;
    c.handshake_timeout = Duration::ZERO;
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("handshake_timeout")
    );
    c.handshake_timeout = DEFAULT_HANDSHAKE_TIMEOUT;
    c.ca = Some(CertificateDer::from(vec![1, 2, 3]));
    assert!(c.validate().unwrap_err().to_string().contains("ca"));
}
