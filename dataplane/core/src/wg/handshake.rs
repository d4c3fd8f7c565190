//! The WireGuard handshake: Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s on the `snow` crate, inside
//! WireGuard's own framing (indices, TAI64N timestamp, mac1, mac2, cookie replies).
//!
//! Noise and WireGuard agree on every step: the construction name hashed into the chaining key
//! and the hash, the identifier string as the prologue, the responder's static key mixed in
//! before the first message, `e` also mixed into the key (a psk handshake), the psk (all zeros
//! here) in position 2, and the transport keys from `Split()` = HKDF(C, empty, 2) with
//! HMAC-BLAKE2s, which is WireGuard's Kdf2(C, empty): the first key is the initiator's sending
//! key. snow's `dangerously_get_raw_split` hands those two keys out, and [`TransportKeys`] takes
//! them over (the interop tests against boringtun show both sides derive the same keys).
//!
//! What Noise leaves to WireGuard is here, written from the whitepaper (section 5.4):
//! - initiation (148 bytes): type 1, sender index, Noise message 1 (ephemeral, encrypted
//!   static, encrypted 12-byte TAI64N timestamp: 108 bytes), mac1, mac2;
//! - response (92 bytes): type 2, sender index, receiver index, Noise message 2 (ephemeral,
//!   encrypted empty payload: 48 bytes), mac1, mac2;
//! - mac1 = BLAKE2s-128 keyed with HASH("mac1----" || receiver's static public key) over the
//!   message up to mac1: anyone who knows the receiver's public key can make it, so it only
//!   filters what is cheap to filter before the Diffie-Hellman work;
//! - mac2 = BLAKE2s-128 keyed with the cookie over the message up to mac2, zero unless a cookie
//!   from that peer is less than [`COOKIE_LIFETIME`] old; a cookie reply (type 3) carries the
//!   cookie encrypted with XChaCha20-Poly1305 keyed HASH("cookie--" || sender's public key),
//!   with the mac1 of the message it answers as associated data;
//! - a responder refuses an initiation whose timestamp is not newer than the newest one it
//!   accepted from that peer (a replayed initiation).
//!
//! A responder under load makes cookie replies and checks mac2 with boringtun's
//! `RateLimiter`, which [`crate::session::Identity`] already runs on every datagram before a
//! message reaches a session: that stays in front of this module.
//!
//! No clock and no random source: the caller passes the timestamp, `now` (cookie age) and the
//! 32 random bytes of each ephemeral key.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use blake2::digest::consts::U16;
use blake2::digest::{Digest, KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::{Builder, HandshakeState};

use super::transport::TransportKeys;
use super::{MSG_COOKIE_REPLY, MSG_INITIATION, MSG_RESPONSE};
use crate::key::{PublicKey, SecretKey};

/// Length of a handshake initiation.
pub const INITIATION_LEN: usize = 148;
/// Length of a handshake response.
pub const RESPONSE_LEN: usize = 92;
/// Length of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 64;
/// How long a cookie from a peer is used for mac2 (the whitepaper's 120 s: the responder
/// rotates its cookie secret every two minutes, so an older cookie no longer validates).
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(120);

const CONSTRUCTION: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
const LABEL_MAC1: &[u8] = b"mac1----";
const LABEL_COOKIE: &[u8] = b"cookie--";
/// WireGuard without a configured preshared key uses 32 zero bytes in its place.
const PSK: [u8; 32] = [0; 32];
/// Length of the Noise part of an initiation (ephemeral 32, static 32+16, timestamp 12+16).
const NOISE_INIT_LEN: usize = 108;
/// Length of the Noise part of a response (ephemeral 32, empty payload's tag 16).
const NOISE_RESP_LEN: usize = 48;

/// Why a handshake message was refused (one per cause, each a drop counter's worth).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Wrong type, reserved bytes or length, or a payload of the wrong size.
    #[error("malformed handshake message")]
    Malformed,
    /// The destination buffer cannot hold the message.
    #[error("buffer too small for a handshake message")]
    BufferTooSmall,
    /// mac1 does not match: not meant for our public key, or altered.
    #[error("mac1 does not verify")]
    BadMac1,
    /// The Noise message does not decrypt: a wrong static or ephemeral key, or tampering.
    #[error("handshake does not decrypt (wrong key or tampered)")]
    Decrypt,
    /// The initiation's timestamp is not newer than the newest accepted from this peer.
    #[error("initiation timestamp not newer than the last one (replay)")]
    StaleTimestamp,
    /// The initiation is from another static key than this peer's.
    #[error("initiation is from another peer's key")]
    WrongPeer,
    /// The message answers no handshake message of ours (receiver index unknown).
    #[error("no handshake of ours with this index")]
    UnknownIndex,
    /// A cookie reply that does not decrypt.
    #[error("cookie reply does not decrypt")]
    BadCookie,
    /// snow refused for a reason not listed above (a bug, not an input).
    #[error("noise state error")]
    Noise,
}

/// A TAI64N timestamp as an initiation carries it: 8 bytes of TAI64 seconds and 4 of
/// nanoseconds, big-endian, so byte order is time order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tai64N(pub [u8; 12]);

impl Tai64N {
    /// TAI64 label of the Unix epoch (2^62 plus TAI's 10 s offset of 1970).
    const UNIX_BASE: u64 = (1 << 62) + 10;

    /// The timestamp `secs` seconds and `nanos` nanoseconds after the Unix epoch.
    pub fn from_unix(secs: u64, nanos: u32) -> Self {
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&Self::UNIX_BASE.wrapping_add(secs).to_be_bytes());
        b[8..].copy_from_slice(&nanos.to_be_bytes());
        Self(b)
    }

    /// The timestamp of a wall-clock time (which the caller read).
    pub fn from_system_time(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Self::from_unix(d.as_secs(), d.subsec_nanos())
    }
}

fn hash(label: &[u8], key: &PublicKey) -> [u8; 32] {
    Blake2s256::new()
        .chain_update(label)
        .chain_update(key.0)
        .finalize()
        .into()
}

fn keyed_mac(key: &[u8]) -> Blake2sMac<U16> {
    // Keys here are 16 (cookie) or 32 (mac1) bytes, both valid BLAKE2s key lengths.
    <Blake2sMac<U16> as KeyInit>::new_from_slice(key).expect("BLAKE2s key of at most 32 bytes")
}

fn mac(key: &[u8], data: &[u8]) -> [u8; 16] {
    let mut m = keyed_mac(key);
    Mac::update(&mut m, data);
    m.finalize().into_bytes().into()
}

/// A snow resolver with the default primitives and, as its random source, the caller's 32
/// bytes for the one ephemeral key a handshake generates (so the core stays deterministic).
struct EphemeralResolver([u8; 32]);

/// Yields its bytes once: the ephemeral private key. Any other request is an error.
struct OneShotRandom(Option<[u8; 32]>);

impl Random for OneShotRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        match self.0.take() {
            Some(b) if dest.len() == b.len() => {
                dest.copy_from_slice(&b);
                Ok(())
            }
            _ => Err(snow::Error::Rng),
        }
    }
}

impl CryptoResolver for EphemeralResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(OneShotRandom(Some(self.0))))
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

/// A snow handshake state for our side, with `remote` known when we initiate.
fn noise(
    local: &SecretKey,
    remote: Option<&PublicKey>,
    ephemeral: [u8; 32],
) -> Result<HandshakeState, HandshakeError> {
    let params: NoiseParams = CONSTRUCTION.parse().map_err(|_| HandshakeError::Noise)?;
    let builder = Builder::with_resolver(params, Box::new(EphemeralResolver(ephemeral)))
        .local_private_key(&local.0)
        .and_then(|b| b.prologue(IDENTIFIER))
        .and_then(|b| b.psk(2, &PSK))
        .map_err(|_| HandshakeError::Noise)?;
    match remote {
        Some(r) => builder
            .remote_public_key(&r.0)
            .and_then(Builder::build_initiator),
        None => builder.build_responder(),
    }
    .map_err(|_| HandshakeError::Noise)
}

fn noise_error(e: snow::Error) -> HandshakeError {
    match e {
        snow::Error::Decrypt => HandshakeError::Decrypt,
        snow::Error::Input => HandshakeError::Malformed,
        _ => HandshakeError::Noise,
    }
}

fn read_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Our static key pair and the mac1 key of messages sent to us.
pub struct LocalIdentity {
    secret: SecretKey,
    public: PublicKey,
    mac1_key: [u8; 32],
}

impl std::fmt::Debug for LocalIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalIdentity({})", self.public)
    }
}

impl LocalIdentity {
    /// The identity of `secret`.
    pub fn new(secret: &SecretKey) -> Self {
        let public = secret.public_key();
        Self {
            secret: secret.clone(),
            public,
            mac1_key: hash(LABEL_MAC1, &public),
        }
    }

    /// Our public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// Checks a message's mac1 (the last 32 bytes are mac1 and mac2).
    fn verify_mac1(&self, msg: &[u8]) -> Result<(), HandshakeError> {
        let at = msg.len() - 32;
        let mut m = keyed_mac(&self.mac1_key);
        Mac::update(&mut m, &msg[..at]);
        m.verify_slice(&msg[at..at + 16])
            .map_err(|_| HandshakeError::BadMac1)
    }

    /// Reads a handshake initiation: checks mac1, runs the Noise message (which authenticates
    /// the sender's static key), and returns who sent it, for the caller to find the peer and
    /// answer with [`PeerHandshake::respond`]. `ephemeral` is 32 random bytes for the
    /// response's ephemeral key. mac2 is not checked here (see the module docs).
    pub fn read_initiation(
        &self,
        msg: &[u8],
        ephemeral: [u8; 32],
    ) -> Result<ReceivedInitiation, HandshakeError> {
        if msg.len() != INITIATION_LEN || msg[..4] != [MSG_INITIATION, 0, 0, 0] {
            return Err(HandshakeError::Malformed);
        }
        self.verify_mac1(msg)?;
        let mut state = noise(&self.secret, None, ephemeral)?;
        let mut payload = [0u8; NOISE_INIT_LEN];
        let n = state
            .read_message(&msg[8..8 + NOISE_INIT_LEN], &mut payload)
            .map_err(noise_error)?;
        if n != 12 {
            return Err(HandshakeError::Malformed);
        }
        let mut timestamp = [0u8; 12];
        timestamp.copy_from_slice(&payload[..12]);
        let mut peer = [0u8; 32];
        peer.copy_from_slice(state.get_remote_static().ok_or(HandshakeError::Noise)?);
        Ok(ReceivedInitiation {
            state,
            peer: PublicKey(peer),
            sender_index: read_u32(&msg[4..8]),
            timestamp: Tai64N(timestamp),
        })
    }
}

/// An authenticated initiation, waiting for the caller to find the peer it names.
pub struct ReceivedInitiation {
    state: HandshakeState,
    /// The initiator's static public key (authenticated by the Noise handshake).
    pub peer: PublicKey,
    /// The initiator's session index (our messages in this session carry it).
    pub sender_index: u32,
    /// The initiator's timestamp (checked against the peer's newest by `respond`).
    pub timestamp: Tai64N,
}

impl std::fmt::Debug for ReceivedInitiation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceivedInitiation")
            .field("peer", &self.peer)
            .field("sender_index", &self.sender_index)
            .field("timestamp", &self.timestamp)
            .finish_non_exhaustive()
    }
}

/// A cookie a peer gave us, and when.
#[derive(Clone, Copy)]
struct Cookie {
    value: [u8; 16],
    received: Instant,
}

/// An initiation of ours waiting for its response.
struct Pending {
    state: HandshakeState,
    sender_index: u32,
}

/// The handshake state with one peer, in both roles: its keys for mac1 and cookies, the newest
/// timestamp it sent, the cookie it gave us, and our initiation in flight.
pub struct PeerHandshake {
    remote: PublicKey,
    /// HASH("mac1----" || remote): mac1 of what we send it.
    mac1_key: [u8; 32],
    /// HASH("cookie--" || remote): decrypts its cookie replies.
    cookie_key: [u8; 32],
    newest_timestamp: Option<Tai64N>,
    cookie: Option<Cookie>,
    /// Index and mac1 of the last handshake message we sent it (a cookie reply answers it).
    last_sent: Option<(u32, [u8; 16])>,
    pending: Option<Pending>,
}

impl std::fmt::Debug for PeerHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerHandshake")
            .field("remote", &self.remote)
            .field("newest_timestamp", &self.newest_timestamp)
            .field("has_cookie", &self.cookie.is_some())
            .field("pending_index", &self.pending_index())
            .finish()
    }
}

impl PeerHandshake {
    /// Handshake state with the peer whose static public key is `remote`.
    pub fn new(remote: PublicKey) -> Self {
        Self {
            remote,
            mac1_key: hash(LABEL_MAC1, &remote),
            cookie_key: hash(LABEL_COOKIE, &remote),
            newest_timestamp: None,
            cookie: None,
            last_sent: None,
            pending: None,
        }
    }

    /// The peer's static public key.
    pub fn remote(&self) -> PublicKey {
        self.remote
    }

    /// Our sender index of the initiation waiting for a response, if any.
    pub fn pending_index(&self) -> Option<u32> {
        self.pending.as_ref().map(|p| p.sender_index)
    }

    /// Fills in mac1 and mac2 of a message we send (its last 32 bytes) and remembers them.
    fn seal_macs(&mut self, msg: &mut [u8], sender_index: u32, now: Instant) {
        let at = msg.len() - 32;
        let mac1 = mac(&self.mac1_key, &msg[..at]);
        msg[at..at + 16].copy_from_slice(&mac1);
        let mac2 = match self.cookie {
            Some(c) if now.saturating_duration_since(c.received) < COOKIE_LIFETIME => {
                mac(&c.value, &msg[..at + 16])
            }
            _ => [0; 16],
        };
        msg[at + 16..].copy_from_slice(&mac2);
        self.last_sent = Some((sender_index, mac1));
    }

    /// Writes a new initiation to `dst[..INITIATION_LEN]` (replacing one in flight) and returns
    /// its length. `sender_index` is our index for the session it starts, `timestamp` the
    /// current time, `ephemeral` 32 random bytes, `now` the clock cookies are aged by.
    pub fn initiate(
        &mut self,
        local: &LocalIdentity,
        sender_index: u32,
        timestamp: Tai64N,
        ephemeral: [u8; 32],
        now: Instant,
        dst: &mut [u8],
    ) -> Result<usize, HandshakeError> {
        let msg = dst
            .get_mut(..INITIATION_LEN)
            .ok_or(HandshakeError::BufferTooSmall)?;
        let mut state = noise(&local.secret, Some(&self.remote), ephemeral)?;
        msg[..4].copy_from_slice(&[MSG_INITIATION, 0, 0, 0]);
        msg[4..8].copy_from_slice(&sender_index.to_le_bytes());
        let n = state
            .write_message(&timestamp.0, &mut msg[8..8 + NOISE_INIT_LEN])
            .map_err(noise_error)?;
        debug_assert_eq!(n, NOISE_INIT_LEN);
        self.seal_macs(msg, sender_index, now);
        self.pending = Some(Pending {
            state,
            sender_index,
        });
        Ok(INITIATION_LEN)
    }

    /// Reads the response to our initiation in flight and returns the session's keys (we are
    /// the initiator: the keys may send at once, and the peer waits for our first message).
    pub fn handle_response(
        &mut self,
        local: &LocalIdentity,
        msg: &[u8],
    ) -> Result<TransportKeys, HandshakeError> {
        if msg.len() != RESPONSE_LEN || msg[..4] != [MSG_RESPONSE, 0, 0, 0] {
            return Err(HandshakeError::Malformed);
        }
        let receiver = read_u32(&msg[8..12]);
        if self.pending_index() != Some(receiver) {
            return Err(HandshakeError::UnknownIndex);
        }
        local.verify_mac1(msg)?;
        let pending = self.pending.as_mut().ok_or(HandshakeError::UnknownIndex)?;
        let mut payload = [0u8; NOISE_RESP_LEN];
        let n = pending
            .state
            .read_message(&msg[12..12 + NOISE_RESP_LEN], &mut payload)
            .map_err(noise_error)?;
        if n != 0 || !pending.state.is_handshake_finished() {
            return Err(HandshakeError::Malformed);
        }
        let (send, recv) = pending.state.dangerously_get_raw_split();
        self.pending = None;
        Ok(TransportKeys::new(
            &send,
            &recv,
            receiver,
            read_u32(&msg[4..8]),
        ))
    }

    /// Answers an initiation from this peer: refuses another peer's or a replayed (not newer)
    /// one, writes the response to `dst[..RESPONSE_LEN]` and returns its length with the
    /// session's keys. `local_index` is our index for the session. WireGuard's responder sends
    /// no data on these keys before the initiator's first data message arrives: that rule is
    /// the caller's (its session table), not the keys'.
    pub fn respond(
        &mut self,
        init: ReceivedInitiation,
        local_index: u32,
        now: Instant,
        dst: &mut [u8],
    ) -> Result<(usize, TransportKeys), HandshakeError> {
        if init.peer != self.remote {
            return Err(HandshakeError::WrongPeer);
        }
        if self.newest_timestamp.is_some_and(|t| init.timestamp <= t) {
            return Err(HandshakeError::StaleTimestamp);
        }
        let msg = dst
            .get_mut(..RESPONSE_LEN)
            .ok_or(HandshakeError::BufferTooSmall)?;
        let mut state = init.state;
        msg[..4].copy_from_slice(&[MSG_RESPONSE, 0, 0, 0]);
        msg[4..8].copy_from_slice(&local_index.to_le_bytes());
        msg[8..12].copy_from_slice(&init.sender_index.to_le_bytes());
        let n = state
            .write_message(&[], &mut msg[12..12 + NOISE_RESP_LEN])
            .map_err(noise_error)?;
        if n != NOISE_RESP_LEN || !state.is_handshake_finished() {
            return Err(HandshakeError::Noise);
        }
        self.seal_macs(msg, local_index, now);
        self.newest_timestamp = Some(init.timestamp);
        // The first split key is the initiator's sending key: ours to receive with.
        let (recv, send) = state.dangerously_get_raw_split();
        Ok((
            RESPONSE_LEN,
            TransportKeys::new(&send, &recv, local_index, init.sender_index),
        ))
    }

    /// Reads a cookie reply from this peer (it is under load): keeps the cookie so our next
    /// handshake message carries mac2. The caller resends its initiation when it sees fit.
    pub fn handle_cookie_reply(&mut self, msg: &[u8], now: Instant) -> Result<(), HandshakeError> {
        if msg.len() != COOKIE_REPLY_LEN || msg[..4] != [MSG_COOKIE_REPLY, 0, 0, 0] {
            return Err(HandshakeError::Malformed);
        }
        let (index, mac1) = self.last_sent.ok_or(HandshakeError::UnknownIndex)?;
        if read_u32(&msg[4..8]) != index {
            return Err(HandshakeError::UnknownIndex);
        }
        let key = chacha20poly1305::Key::from_slice(&self.cookie_key);
        let cipher = <XChaCha20Poly1305 as chacha20poly1305::KeyInit>::new(key);
        let mut value = [0u8; 16];
        value.copy_from_slice(&msg[32..48]);
        cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(&msg[8..32]),
                &mac1,
                &mut value,
                Tag::from_slice(&msg[48..64]),
            )
            .map_err(|_| HandshakeError::BadCookie)?;
        self.cookie = Some(Cookie {
            value,
            received: now,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tai64n_orders_like_time() {
        let a = Tai64N::from_unix(1_700_000_000, 999_999_999);
        let b = Tai64N::from_unix(1_700_000_001, 0);
        assert!(a < b);
        assert_eq!(a.0[..8], ((1u64 << 62) + 10 + 1_700_000_000).to_be_bytes());
        let t = UNIX_EPOCH + Duration::new(1_700_000_001, 0);
        assert_eq!(Tai64N::from_system_time(t), b);
    }

    #[test]
    fn our_initiator_and_responder_agree_on_keys() {
        let (a, b) = (SecretKey([1; 32]), SecretKey([2; 32]));
        let (ia, ib) = (LocalIdentity::new(&a), LocalIdentity::new(&b));
        let (mut a_to_b, mut b_to_a) = (
            PeerHandshake::new(ib.public_key()),
            PeerHandshake::new(ia.public_key()),
        );
        let now = Instant::now();
        let mut init = [0u8; INITIATION_LEN];
        a_to_b
            .initiate(&ia, 7, Tai64N::from_unix(1, 0), [3; 32], now, &mut init)
            .unwrap();
        let received = ib.read_initiation(&init, [4; 32]).unwrap();
        assert_eq!((received.peer, received.sender_index), (ia.public_key(), 7));
        let mut resp = [0u8; RESPONSE_LEN];
        let (_, kb) = b_to_a.respond(received, 9, now, &mut resp).unwrap();
        let ka = a_to_b.handle_response(&ia, &resp).unwrap();
        assert_eq!((ka.local_index(), ka.remote_index()), (7, 9));
        assert_eq!((kb.local_index(), kb.remote_index()), (9, 7));
        let mut buf = [0u8; 64];
        let n = ka.seal(b"ping", &mut buf).unwrap();
        let mut out = [0u8; 4];
        assert_eq!(kb.open(&buf[..n], &mut out).unwrap().len, 4);
        let n = kb.seal(b"pong", &mut buf).unwrap();
        assert_eq!(ka.open(&buf[..n], &mut out).unwrap().len, 4);
        assert_eq!(&out, b"pong");
        // The response was consumed: a second copy answers nothing.
        assert_eq!(
            a_to_b.handle_response(&ia, &resp).unwrap_err(),
            HandshakeError::UnknownIndex
        );
    }
}
