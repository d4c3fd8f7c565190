//! The core's own WireGuard (`wg`) against boringtun's `Tunn`, both ways: handshakes complete,
//! data sealed by one side opens on the other, cookies work, and every kind of bad input is
//! refused with its own reason. Plus: arbitrary bytes never panic the message readers.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blake2::digest::consts::U16;
use blake2::digest::{Digest, KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac};
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use fleetboard_dataplane_core::wg::handshake::{INITIATION_LEN, RESPONSE_LEN};
use fleetboard_dataplane_core::wg::transport::{DATA_HEADER_LEN, DATA_OVERHEAD};
use fleetboard_dataplane_core::wg::{
    HandshakeError, LocalIdentity, MessageKind, OpenError, Opened, PeerHandshake, ReplayError,
    ReplayWindow, Tai64N, TransportKeys, classify,
};
use fleetboard_dataplane_core::{PublicKey, SecretKey};
use proptest::prelude::*;

fn key(n: u8) -> SecretKey {
    SecretKey::from_random_bytes([n; 32])
}

fn ts(secs: u64) -> Tai64N {
    Tai64N::from_unix(1_700_000_000 + secs, 0)
}

/// boringtun's side of the tunnel: `own` key, talking to `peer`.
fn tunn(own: &SecretKey, peer: &PublicKey, limiter: Option<Arc<RateLimiter>>) -> Tunn {
    let secret = x25519::StaticSecret::from(own.0);
    Tunn::new(
        secret,
        x25519::PublicKey::from(peer.0),
        None,
        None,
        7,
        limiter,
    )
}

/// What boringtun wants sent to the network for `datagram` (panics on anything else).
fn bt_network(bt: &mut Tunn, datagram: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let src = Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)));
    match bt.decapsulate(src, datagram, &mut buf) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("boringtun did not answer: {other:?}"),
    }
}

/// An IPv4 packet of `len` bytes (boringtun checks the header of what it decrypts).
fn ipv4(len: usize, fill: u8) -> Vec<u8> {
    let mut p = vec![fill; len];
    p[0] = 0x45;
    p[1] = 0;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[100, 64, 0, 1]);
    p[16..20].copy_from_slice(&[100, 64, 0, 2]);
    p
}

/// Data both ways between our session `keys` and boringtun's `bt`, ours first (a boringtun
/// responder sends only after the initiator's first message). `their_counter` is the counter
/// boringtun's next message carries. Every counter passes a replay window once.
fn exchange(keys: &TransportKeys, bt: &mut Tunn, mut their_counter: u64) {
    let mut window = ReplayWindow::new();
    let mut buf = vec![0u8; 2048];
    for (i, len) in [20usize, 1400, 577].into_iter().enumerate() {
        let packet = ipv4(len, i as u8);
        let n = keys.seal(&packet, &mut buf).unwrap();
        assert_eq!(
            classify(&buf[..n]),
            Some(MessageKind::Data(keys.remote_index()))
        );
        let mut out = vec![0u8; 2048];
        let src = Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)));
        match bt.decapsulate(src, &buf[..n], &mut out) {
            TunnResult::WriteToTunnelV4(p, from) => {
                assert_eq!(p, &packet[..], "boringtun decrypts our packet {i}");
                assert_eq!(from, Ipv4Addr::new(100, 64, 0, 1));
            }
            other => panic!("boringtun refused our packet {i}: {other:?}"),
        }

        let packet = ipv4(len, 0x80 | i as u8);
        let msg = match bt.encapsulate(&packet, &mut out) {
            TunnResult::WriteToNetwork(m) => m.to_vec(),
            other => panic!("boringtun did not encapsulate: {other:?}"),
        };
        let mut plain = vec![0u8; 2048];
        let opened = keys.open(&msg, &mut plain).unwrap();
        assert_eq!(
            opened,
            Opened {
                counter: their_counter,
                len
            }
        );
        assert_eq!(
            &plain[..len],
            &packet[..],
            "we decrypt boringtun's packet {i}"
        );
        assert_eq!(window.accept(opened.counter), Ok(()));
        // The same message in place gives the same plaintext.
        let mut in_place = msg.clone();
        assert_eq!(keys.open_in_place(&mut in_place), Ok(opened));
        assert_eq!(
            &in_place[DATA_HEADER_LEN..DATA_HEADER_LEN + len],
            &packet[..]
        );
        assert_eq!(window.accept(opened.counter), Err(ReplayError::Duplicate));
        their_counter += 1;
    }
}

/// Our initiator's handshake with a boringtun responder: the keys it returns.
fn our_handshake(local: &LocalIdentity, peer: &mut PeerHandshake, bt: &mut Tunn) -> TransportKeys {
    let mut init = [0u8; INITIATION_LEN];
    let n = peer
        .initiate(local, 0x1111, ts(1), [5; 32], Instant::now(), &mut init)
        .unwrap();
    assert_eq!(classify(&init[..n]), Some(MessageKind::Initiation));
    let resp = bt_network(bt, &init[..n]);
    assert_eq!(classify(&resp), Some(MessageKind::Response(0x1111)));
    peer.handle_response(local, &resp).unwrap()
}

#[test]
fn our_initiator_with_a_boringtun_responder() {
    let (ours, theirs) = (key(1), key(2));
    let local = LocalIdentity::new(&ours);
    let mut peer = PeerHandshake::new(theirs.public_key());
    let mut bt = tunn(&theirs, &ours.public_key(), None);
    let keys = our_handshake(&local, &mut peer, &mut bt);
    assert_eq!(keys.local_index(), 0x1111);
    assert_eq!(
        peer.pending_index(),
        None,
        "the response completed the handshake"
    );
    exchange(&keys, &mut bt, 0);
}

#[test]
fn boringtun_initiator_with_our_responder() {
    let (ours, theirs) = (key(1), key(2));
    let local = LocalIdentity::new(&ours);
    let mut bt = tunn(&theirs, &ours.public_key(), None);
    let mut buf = vec![0u8; 2048];
    let init = match bt.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("no initiation: {other:?}"),
    };
    let received = local.read_initiation(&init, [6; 32]).unwrap();
    assert_eq!(received.peer, theirs.public_key());
    let mut peer = PeerHandshake::new(theirs.public_key());
    let mut resp = [0u8; RESPONSE_LEN];
    let (n, keys) = peer
        .respond(received, 0x2222, Instant::now(), &mut resp)
        .unwrap();
    // boringtun completes the handshake and confirms it with a keepalive (its counter 0).
    let keepalive = bt_network(&mut bt, &resp[..n]);
    assert_eq!(keepalive.len(), DATA_OVERHEAD);
    assert_eq!(
        keys.open(&keepalive, &mut []),
        Ok(Opened { counter: 0, len: 0 })
    );
    exchange(&keys, &mut bt, 1);
}

#[test]
fn keys_shared_by_two_threads_seal_what_boringtun_accepts() {
    let (ours, theirs) = (key(1), key(2));
    let local = LocalIdentity::new(&ours);
    let mut peer = PeerHandshake::new(theirs.public_key());
    let mut bt = tunn(&theirs, &ours.public_key(), None);
    let keys = our_handshake(&local, &mut peer, &mut bt);
    let packet = ipv4(1400, 9);
    let sealed: Vec<Vec<u8>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    (0..200)
                        .map(|_| {
                            let mut buf = vec![0u8; 1500];
                            let n = keys.seal(&packet, &mut buf).unwrap();
                            buf.truncate(n);
                            buf
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let mut counters: Vec<u64> = sealed
        .iter()
        .map(|m| u64::from_le_bytes(m[8..16].try_into().unwrap()))
        .collect();
    counters.sort_unstable();
    assert_eq!(
        counters,
        (0..400).collect::<Vec<_>>(),
        "each counter used once"
    );
    let mut out = vec![0u8; 2048];
    for m in &sealed {
        assert!(
            matches!(
                bt.decapsulate(None, m, &mut out),
                TunnResult::WriteToTunnelV4(..)
            ),
            "boringtun accepts every packet sealed on either thread"
        );
    }
}

#[test]
fn a_cookie_from_a_boringtun_responder_under_load_is_used_for_mac2() {
    let (ours, theirs) = (key(1), key(2));
    let local = LocalIdentity::new(&ours);
    let mut peer = PeerHandshake::new(theirs.public_key());
    // A limit of 0 handshakes a second: always under load, every initiation needs mac2.
    let public = x25519::PublicKey::from(theirs.public_key().0);
    let mut bt = tunn(
        &theirs,
        &ours.public_key(),
        Some(Arc::new(RateLimiter::new(&public, 0))),
    );
    let now = Instant::now();
    let mut init = [0u8; INITIATION_LEN];
    peer.initiate(&local, 0x3333, ts(1), [5; 32], now, &mut init)
        .unwrap();
    let reply = bt_network(&mut bt, &init);
    assert_eq!(classify(&reply), Some(MessageKind::CookieReply(0x3333)));
    let mut garbled = reply.clone();
    garbled[40] ^= 1;
    assert_eq!(
        peer.handle_cookie_reply(&garbled, now),
        Err(HandshakeError::BadCookie)
    );
    peer.handle_cookie_reply(&reply, now).unwrap();

    peer.initiate(&local, 0x3334, ts(2), [5; 32], now, &mut init)
        .unwrap();
    let resp = bt_network(&mut bt, &init);
    assert_eq!(classify(&resp), Some(MessageKind::Response(0x3334)));
    let keys = peer.handle_response(&local, &resp).unwrap();
    exchange(&keys, &mut bt, 0);

    // A cookie older than its lifetime is not used: the responder asks again.
    let later = now + Duration::from_secs(121);
    peer.initiate(&local, 0x3335, ts(3), [5; 32], later, &mut init)
        .unwrap();
    assert_eq!(init[132..], [0; 16], "no mac2 with an expired cookie");
    let reply = bt_network(&mut bt, &init);
    assert_eq!(classify(&reply), Some(MessageKind::CookieReply(0x3335)));
}

/// boringtun's initiation to us (its key `theirs`), believing our public key is `ours_as_seen`.
fn bt_initiation(theirs: &SecretKey, ours_as_seen: &PublicKey) -> Vec<u8> {
    let mut bt = tunn(theirs, ours_as_seen, None);
    let mut buf = vec![0u8; 2048];
    match bt.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("no initiation: {other:?}"),
    }
}

#[test]
fn bad_inputs_are_refused_each_with_its_reason() {
    let (ours, theirs) = (key(1), key(2));
    let local = LocalIdentity::new(&ours);
    let now = Instant::now();

    // Bad mac1: one bit of it flipped.
    let init = bt_initiation(&theirs, &ours.public_key());
    let mut bad = init.clone();
    bad[INITIATION_LEN - 20] ^= 1;
    assert_eq!(
        local.read_initiation(&bad, [6; 32]).unwrap_err(),
        HandshakeError::BadMac1
    );
    // An initiation made for another static key: mac1 fails first; with mac1 recomputed for
    // ours (anyone who knows our public key can), the Noise message does not decrypt.
    let mut other = bt_initiation(&theirs, &key(3).public_key());
    assert_eq!(
        local.read_initiation(&other, [6; 32]).unwrap_err(),
        HandshakeError::BadMac1
    );
    let mac1_key: [u8; 32] = Blake2s256::new()
        .chain_update(b"mac1----")
        .chain_update(ours.public_key().0)
        .finalize()
        .into();
    let mut m = <Blake2sMac<U16> as KeyInit>::new_from_slice(&mac1_key).unwrap();
    Mac::update(&mut m, &other[..116]);
    other[116..132].copy_from_slice(&m.finalize().into_bytes());
    assert_eq!(
        local.read_initiation(&other, [6; 32]).unwrap_err(),
        HandshakeError::Decrypt
    );

    // A replayed initiation (its timestamp is not newer than the one accepted).
    let mut peer = PeerHandshake::new(theirs.public_key());
    let mut resp = [0u8; RESPONSE_LEN];
    let first = local.read_initiation(&init, [6; 32]).unwrap();
    peer.respond(first, 1, now, &mut resp).unwrap();
    let again = local.read_initiation(&init, [7; 32]).unwrap();
    assert_eq!(
        peer.respond(again, 2, now, &mut resp).unwrap_err(),
        HandshakeError::StaleTimestamp
    );
    // An initiation from a key that is not this peer's.
    let stranger = bt_initiation(&key(4), &ours.public_key());
    let received = local.read_initiation(&stranger, [6; 32]).unwrap();
    assert_eq!(
        peer.respond(received, 3, now, &mut resp).unwrap_err(),
        HandshakeError::WrongPeer
    );

    // An older timestamp from our own initiator, after a newer one.
    let initiator = LocalIdentity::new(&theirs);
    let mut to_us = PeerHandshake::new(ours.public_key());
    let mut peer = PeerHandshake::new(theirs.public_key());
    let mut msg = [0u8; INITIATION_LEN];
    to_us
        .initiate(&initiator, 10, ts(5), [8; 32], now, &mut msg)
        .unwrap();
    let received = local.read_initiation(&msg, [6; 32]).unwrap();
    peer.respond(received, 11, now, &mut resp).unwrap();
    to_us
        .initiate(&initiator, 12, ts(4), [8; 32], now, &mut msg)
        .unwrap();
    let received = local.read_initiation(&msg, [6; 32]).unwrap();
    assert_eq!(
        peer.respond(received, 13, now, &mut resp).unwrap_err(),
        HandshakeError::StaleTimestamp
    );
    // A response to an initiation that a newer one replaced answers nothing of ours.
    to_us
        .initiate(&initiator, 20, ts(8), [8; 32], now, &mut msg)
        .unwrap();
    let received = local.read_initiation(&msg, [6; 32]).unwrap();
    let (n, _) = peer.respond(received, 21, now, &mut resp).unwrap();
    to_us
        .initiate(&initiator, 22, ts(9), [8; 32], now, &mut msg)
        .unwrap();
    assert_eq!(
        to_us.handle_response(&initiator, &resp[..n]).unwrap_err(),
        HandshakeError::UnknownIndex
    );

    // Transport: a garbled tag, a wrong key (indistinguishable from a garbled tag by design),
    // a replayed counter.
    let mut bt = tunn(&theirs, &ours.public_key(), None);
    let mut peer = PeerHandshake::new(theirs.public_key());
    let keys = our_handshake(&local, &mut peer, &mut bt);
    let (mut buf, mut out) = (vec![0u8; 2048], vec![0u8; 2048]);
    let n = keys.seal(&ipv4(100, 1), &mut buf).unwrap();
    assert!(matches!(
        bt.decapsulate(None, &buf[..n], &mut out),
        TunnResult::WriteToTunnelV4(..)
    ));
    let msg = match bt.encapsulate(&ipv4(100, 2), &mut buf) {
        TunnResult::WriteToNetwork(m) => m.to_vec(),
        other => panic!("boringtun did not encapsulate: {other:?}"),
    };
    let mut garbled = msg.clone();
    *garbled.last_mut().unwrap() ^= 0x80;
    assert_eq!(
        keys.open(&garbled, &mut out),
        Err(OpenError::Unauthenticated)
    );
    let wrong = TransportKeys::new(&[9; 32], &[9; 32], keys.local_index(), keys.remote_index());
    assert_eq!(wrong.open(&msg, &mut out), Err(OpenError::Unauthenticated));
    let mut window = ReplayWindow::new();
    let opened = keys.open(&msg, &mut out).unwrap();
    assert_eq!(window.accept(opened.counter), Ok(()));
    let replayed = keys.open(&msg, &mut out).unwrap();
    assert_eq!(window.accept(replayed.counter), Err(ReplayError::Duplicate));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_open_nor_panic(
        data in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..1600),
            // Data-message headers for the session's index, with any counter and body.
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..1600)).prop_map(|(c, body)| {
                let mut m = vec![4, 0, 0, 0, 0x44, 0x44, 0, 0];
                m.extend_from_slice(&c.to_le_bytes());
                m.extend_from_slice(&body);
                m
            }),
        ]
    ) {
        let keys = TransportKeys::new(&[1; 32], &[2; 32], 0x4444, 0x5555);
        let mut out = vec![0u8; 2048];
        prop_assert!(keys.open(&data, &mut out).is_err());
        prop_assert!(keys.open(&data, &mut out[..data.len() / 2]).is_err());
        let mut in_place = data.clone();
        prop_assert!(keys.open_in_place(&mut in_place).is_err());
        let _ = classify(&data);
        let local = LocalIdentity::new(&key(1));
        prop_assert!(local.read_initiation(&data, [1; 32]).is_err());
        let mut peer = PeerHandshake::new(key(2).public_key());
        prop_assert!(peer.handle_response(&local, &data).is_err());
        prop_assert!(peer.handle_cookie_reply(&data, Instant::now()).is_err());
    }
}
