//! QUIC connections: dialing with backoff, accepting under a handshake budget, keeping one
//! connection per peer when both sides dial, and reading each connection's datagrams.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use quinn::{Connection, ConnectionError, Side, VarInt};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{
    CLOSE_DUPLICATE, CLOSE_REMOVED, CLOSE_UNKNOWN_PEER, MAX_BACKOFF, MIN_BACKOFF, PeerState,
    Received, STABLE_CONNECTION, Shared, lock,
};
use crate::quic::identity::Fingerprint;
use crate::quic::stats::bump;
use crate::quic::verify::{PeerMatch, PeerVerifier, Trust};
use crate::quic::{QuicError, check_ip_packet};

/// Fingerprint of the certificate the other side presented on `conn`.
fn remote_fingerprint(conn: &Connection) -> Option<Fingerprint> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    Fingerprint::of_cert(certs.first()?).ok()
}

/// Whether `conn` is the one both sides keep when two exist: the one dialed by the side whose
/// key fingerprint is lower (both sides know both keys from the handshake, so they agree).
fn preferred(local: &Fingerprint, conn: &Connection) -> bool {
    let Some(remote) = remote_fingerprint(conn) else {
        return false;
    };
    match conn.side() {
        Side::Client => *local < remote,
        Side::Server => remote < *local,
    }
}

/// Makes `conn` the peer's connection unless a live preferred one exists; starts its reader.
fn install<T: Clone + Send + Sync + 'static>(
    sh: &Arc<Shared<T>>,
    peer: &Arc<PeerState<T>>,
    conn: Connection,
) -> bool {
    let _g = lock(&peer.install);
    if peer.removed.load(Ordering::Acquire) {
        conn.close(VarInt::from_u32(CLOSE_REMOVED), b"removed");
        return false;
    }
    if let Some(old) = peer.conn.load_full()
        && old.close_reason().is_none()
    {
        if preferred(&sh.fingerprint, &old) && !preferred(&sh.fingerprint, &conn) {
            conn.close(VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate");
            return false;
        }
        old.close(VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate");
    }
    bump(&peer.counters.connects);
    info!(peer = %peer.name, remote = %conn.remote_address(), side = ?conn.side(), "quic peer connected");
    peer.conn.store(Some(Arc::new(conn.clone())));
    tokio::spawn(read_loop(sh.tx.clone(), sh.max_packet, peer.clone(), conn));
    true
}

async fn read_loop<T: Clone>(
    tx: mpsc::Sender<Received<T>>,
    max_packet: usize,
    peer: Arc<PeerState<T>>,
    conn: Connection,
) {
    let c = &peer.counters;
    let reason = loop {
        match conn.read_datagram().await {
            Ok(packet) => {
                if packet.len() > max_packet {
                    bump(&c.drop_oversized);
                    continue;
                }
                if check_ip_packet(&packet).is_err() {
                    bump(&c.drop_not_ip);
                    continue;
                }
                bump(&c.rx_packets);
                c.rx_bytes.fetch_add(packet.len() as u64, Ordering::Relaxed);
                let msg = Received {
                    peer: peer.tag.clone(),
                    packet,
                };
                if tx.send(msg).await.is_err() {
                    break ConnectionError::LocallyClosed;
                }
            }
            Err(e) => break e,
        }
    };
    {
        let _g = lock(&peer.install);
        let current = peer.conn.load();
        if current.as_deref().map(Connection::stable_id) == Some(conn.stable_id()) {
            peer.conn.store(None);
        }
    }
    info!(peer = %peer.name, %reason, "quic peer connection closed");
    peer.changed.notify_one();
}

pub(super) async fn dial_loop<T: Clone + Send + Sync + 'static>(
    weak: Weak<Shared<T>>,
    peer: Arc<PeerState<T>>,
) {
    let mut backoff = MIN_BACKOFF;
    // When our last connection came up; one that dies young (e.g. the peer rejected our
    // certificate after the TLS 1.3 client finished) does not reset the backoff.
    let mut up_since: Option<Instant> = None;
    loop {
        if peer.removed.load(Ordering::Acquire) {
            return;
        }
        if let Some(conn) = peer.conn.load_full() {
            tokio::select! {
                _ = conn.closed() => {}
                _ = peer.changed.notified() => {}
            }
            continue;
        }
        if let Some(since) = up_since.take() {
            if since.elapsed() >= STABLE_CONNECTION {
                backoff = MIN_BACKOFF;
            } else {
                sleep_or_change(&peer, backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        let (endpoint, fingerprint) = {
            let s = lock(&peer.settings);
            (s.endpoint, s.fingerprint)
        };
        let Some(addr) = endpoint else {
            peer.changed.notified().await;
            continue;
        };
        let Some(sh) = weak.upgrade() else { return };
        let result = dial(&sh, &peer.name, fingerprint, addr).await;
        match result {
            Ok(conn) => {
                if install(&sh, &peer, conn) {
                    up_since = Some(Instant::now());
                    continue;
                }
            }
            Err(e) => {
                bump(&peer.counters.dial_failures);
                debug!(peer = %peer.name, %addr, error = %e, "quic dial failed");
            }
        }
        drop(sh);
        sleep_or_change(&peer, backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn sleep_or_change<T>(peer: &PeerState<T>, delay: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = peer.changed.notified() => {}
    }
}

async fn dial<T>(
    sh: &Shared<T>,
    name: &str,
    fingerprint: Option<Fingerprint>,
    addr: SocketAddr,
) -> Result<Connection, QuicError> {
    let mut trust = Trust {
        ca: sh.ca.clone(),
        ..Trust::default()
    };
    trust.names.insert(name.to_owned(), ());
    if let Some(fp) = fingerprint {
        trust.pins.insert(fp, name.to_owned());
    }
    let verifier = PeerVerifier::new(Arc::new(ArcSwap::from_pointee(trust)), sh.rejected.clone());
    let client =
        crate::quic::tls::client_config(&sh.chain, &sh.key, verifier, sh.transport.clone())?;
    let connecting = sh
        .endpoint
        .connect_with(client, addr, name)
        .map_err(|e| QuicError::Connect(e.to_string()))?;
    connecting
        .await
        .map_err(|e| QuicError::Connect(e.to_string()))
}

pub(super) async fn accept_loop<T: Clone + Send + Sync + 'static>(weak: Weak<Shared<T>>) {
    loop {
        let incoming = {
            let Some(sh) = weak.upgrade() else { return };
            let endpoint = sh.endpoint.clone();
            drop(sh);
            match endpoint.accept().await {
                Some(i) => i,
                None => return,
            }
        };
        let Some(sh) = weak.upgrade() else { return };
        // Handshake slots: at most `max_handshakes` in flight, at most
        // `max_handshakes_per_source` of them from one address, each for at most
        // `handshake_timeout`. Beyond a limit an unvalidated address gets a Retry (a spoofed
        // source never answers it, so it holds nothing), a validated one is refused.
        let source = incoming.remote_address().ip();
        let busy = sh.handshaking.load(Ordering::Relaxed) >= sh.max_handshakes;
        let source_busy = !busy
            && lock(&sh.handshaking_from)
                .get(&source)
                .copied()
                .unwrap_or(0)
                >= sh.max_handshakes_per_source;
        if busy || source_busy {
            if !incoming.remote_address_validated() && incoming.may_retry() {
                bump(&sh.counters.retried);
                let _ = incoming.retry();
            } else {
                bump(if busy {
                    &sh.counters.refused_busy
                } else {
                    &sh.counters.refused_source
                });
                incoming.refuse();
            }
            continue;
        }
        sh.handshaking.fetch_add(1, Ordering::Relaxed);
        *lock(&sh.handshaking_from).entry(source).or_insert(0) += 1;
        tokio::spawn(async move {
            let result = match incoming.accept() {
                // Dropping an unfinished `Connecting` closes it (quinn's implicit close).
                Ok(connecting) => tokio::time::timeout(sh.handshake_timeout, connecting)
                    .await
                    .map_err(|_| ()),
                Err(e) => Ok(Err(e)),
            };
            sh.handshaking.fetch_sub(1, Ordering::Relaxed);
            {
                let mut from = lock(&sh.handshaking_from);
                if let Some(n) = from.get_mut(&source) {
                    *n -= 1;
                    if *n == 0 {
                        from.remove(&source);
                    }
                }
            }
            match result {
                Ok(Ok(conn)) => accepted(&sh, conn),
                Ok(Err(e)) => {
                    bump(&sh.counters.handshake_failed);
                    debug!(error = %e, "quic handshake failed");
                }
                Err(()) => {
                    bump(&sh.counters.handshake_timeout);
                    debug!(%source, "quic handshake timed out");
                }
            }
        });
    }
}

fn accepted<T: Clone + Send + Sync + 'static>(sh: &Arc<Shared<T>>, conn: Connection) {
    let who = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| {
            let (leaf, rest) = certs.split_first()?;
            sh.trust
                .load()
                .identify(leaf, rest, UnixTime::now(), true)
                .ok()
        });
    let name = match who {
        Some(PeerMatch::Pinned(fp)) => sh.trust.load().pins.get(&fp).cloned(),
        Some(PeerMatch::Ca(name)) => Some(name),
        None => None,
    };
    let peer = name.and_then(|n| lock(&sh.peers).get(&n).cloned());
    match peer {
        Some(peer) => {
            install(sh, &peer, conn);
        }
        None => {
            bump(&sh.counters.unknown_peer);
            warn!(remote = %conn.remote_address(), "authenticated quic peer is no longer configured");
            conn.close(VarInt::from_u32(CLOSE_UNKNOWN_PEER), b"unknown peer");
        }
    }
}
