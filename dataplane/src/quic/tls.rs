//! rustls/quinn configuration of the QUIC transport: TLS 1.3 only, ring provider only, mutual
//! authentication through [`PeerVerifier`], and the UDP socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::QuicError;
use super::identity::Identity;
use super::stats::CountingCids;
use super::transport::ALPN;
use super::verify::PeerVerifier;

/// Socket buffer size asked for (bytes): room for a few ms of multi-Gbit/s bursts. The kernel
/// caps it at net.core.{r,w}mem_max.
const SOCKET_BUFFER: usize = 8 << 20;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Connection attempts not yet accepted or refused that quinn keeps (beyond, it refuses).
const MAX_INCOMING: usize = 1024;

/// The endpoint-wide settings: stateless-reset tokens keyed by a secret derived from the
/// gateway's private key, and connection IDs that count in `unknown_cid` the datagrams
/// addressed to none of this endpoint's.
pub(crate) fn endpoint_config(
    identity: &Identity,
    unknown_cid: Arc<AtomicU64>,
) -> quinn::EndpointConfig {
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &identity.reset_secret());
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(CountingCids::factory(unknown_cid));
    config
}

/// The server side: requires and verifies a client certificate.
pub(crate) fn server_config(
    identity: &Identity,
    verifier: PeerVerifier,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, QuicError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(QuicError::Tls)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(
            identity.chain.clone(),
            PrivateKeyDer::Pkcs8(identity.key.clone_key()),
        )
        .map_err(QuicError::Tls)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| QuicError::Config(format!("tls: {e}")))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport);
    server.migration(true);
    // Connection attempts quinn keeps before the accept loop decides on them (it decides at
    // once: this only bounds memory under a burst) and the bytes buffered for them.
    server.max_incoming(MAX_INCOMING);
    server.incoming_buffer_size(64 << 10);
    server.incoming_buffer_size_total(8 << 20);
    Ok(server)
}

/// The client side for one dial: presents our certificate, verifies the dialed peer.
pub(crate) fn client_config(
    chain: &[CertificateDer<'static>],
    key: &PrivatePkcs8KeyDer<'static>,
    verifier: PeerVerifier,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, QuicError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(QuicError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain.to_vec(), PrivateKeyDer::Pkcs8(key.clone_key()))
        .map_err(QuicError::Tls)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| QuicError::Config(format!("tls: {e}")))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(transport);
    Ok(client)
}

/// A UDP socket bound to `listen` with large buffers (dual-stack when bound to `[::]`).
pub fn udp_socket(listen: SocketAddr) -> Result<std::net::UdpSocket, QuicError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )
    .map_err(QuicError::Bind)?;
    if listen.is_ipv6() {
        // Dual-stack is best effort: some kernels forbid it.
        let _ = socket.set_only_v6(false);
    }
    // Best effort: a smaller buffer only costs burst tolerance.
    // Past the net.core.*mem_max cap when we may (CAP_NET_ADMIN), as the WireGuard socket.
    if crate::udp::force_buffer(&socket, libc::SO_RCVBUFFORCE).is_err() {
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    }
    if crate::udp::force_buffer(&socket, libc::SO_SNDBUFFORCE).is_err() {
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    }
    socket.bind(&listen.into()).map_err(QuicError::Bind)?;
    Ok(socket.into())
}
