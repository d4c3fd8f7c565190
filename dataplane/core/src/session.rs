//! The WireGuard crypto sessions: the only module that touches boringtun.
//!
//! boringtun's `Tunn` reads the clock itself (its timers); everything clock-dependent of it is
//! confined here so the rest of the core stays deterministic. Results are returned as byte
//! ranges of the caller's buffer, so nothing is allocated per packet.

use std::net::IpAddr;
use std::sync::Arc;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;

use crate::drop::DropReason;
use crate::key::{PublicKey, SecretKey};

/// Bytes WireGuard adds to an IP packet (type, index, counter, tag).
pub const WG_OVERHEAD: usize = 32;
/// Size of a handshake initiation, the largest control message.
pub const WG_HANDSHAKE_INIT_LEN: usize = 148;
/// Handshake initiations per second accepted before cookies are required (boringtun's own
/// per-peer default is 10; a hub serves many peers, so the shared limit is higher).
const HANDSHAKES_PER_SECOND: u64 = 100;

/// What a session call produced, as a range of the caller's `dst` buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionOutput {
    /// Nothing to send (e.g. packet queued until the handshake completes, keepalive received).
    Done,
    /// `dst[range]` is a datagram for the peer.
    Network(usize, usize),
    /// `dst[range]` is a decrypted IP packet with this inner source address.
    Tunnel(usize, usize, IpAddr),
}

/// Maps a boringtun error to the drop reason it counts as.
pub fn reason_of(e: &WireGuardError) -> DropReason {
    use WireGuardError as E;
    match e {
        E::InvalidMac | E::InvalidAeadTag | E::WrongKey => DropReason::Unauthenticated,
        E::InvalidCounter | E::DuplicateCounter | E::WrongTai64nTimestamp => DropReason::Replay,
        E::NoCurrentSession | E::WrongIndex | E::ConnectionExpired => DropReason::NoSession,
        E::UnderLoad => DropReason::UnderLoad,
        E::DestinationBufferTooSmall => DropReason::TooLarge,
        _ => DropReason::Malformed,
    }
}

/// The range of `out` inside the buffer starting at address `base`.
fn range_of(base: usize, out: &[u8]) -> (usize, usize) {
    let start = out.as_ptr() as usize - base;
    (start, start + out.len())
}

fn convert(dst: usize, r: TunnResult<'_>) -> Result<SessionOutput, DropReason> {
    match r {
        TunnResult::Done => Ok(SessionOutput::Done),
        TunnResult::Err(e) => Err(reason_of(&e)),
        TunnResult::WriteToNetwork(p) => {
            let (a, b) = range_of(dst, p);
            Ok(SessionOutput::Network(a, b))
        }
        TunnResult::WriteToTunnelV4(p, src) => {
            let (a, b) = range_of(dst, p);
            Ok(SessionOutput::Tunnel(a, b, src.into()))
        }
        TunnResult::WriteToTunnelV6(p, src) => {
            let (a, b) = range_of(dst, p);
            Ok(SessionOutput::Tunnel(a, b, src.into()))
        }
    }
}

/// The kind of an incoming WireGuard message, with what routes it to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// A handshake initiation from this public key (authenticated by its MAC and the DH).
    Initiation(PublicKey),
    /// A message for our local session index (response, cookie, data).
    ForIndex(u32),
}

/// This node's identity and the handshake rate limiter shared by all peers.
pub struct Identity {
    secret: x25519::StaticSecret,
    public: x25519::PublicKey,
    limiter: Arc<RateLimiter>,
}

impl Identity {
    /// The identity for `key`.
    pub fn new(key: &SecretKey) -> Self {
        let secret = x25519::StaticSecret::from(key.0);
        let public = x25519::PublicKey::from(&secret);
        let limiter = Arc::new(RateLimiter::new(&public, HANDSHAKES_PER_SECOND));
        Self {
            secret,
            public,
            limiter,
        }
    }

    /// Classifies an incoming datagram. A handshake initiation is checked against the rate
    /// limiter first: under load, `Ok(Err(range))` is a cookie reply in `dst[range]` to send
    /// back to `src`.
    pub fn classify(
        &self,
        src: IpAddr,
        datagram: &[u8],
        dst: &mut [u8],
    ) -> Result<Result<Incoming, (usize, usize)>, DropReason> {
        if dst.len() < WG_HANDSHAKE_INIT_LEN {
            return Err(DropReason::TooLarge);
        }
        let base = dst.as_ptr() as usize;
        let packet = match self.limiter.verify_packet(Some(src), datagram, dst) {
            Ok(p) => p,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                let (a, b) = range_of(base, cookie);
                return Ok(Err((a, b)));
            }
            Err(TunnResult::Err(e)) => return Err(reason_of(&e)),
            Err(_) => return Err(DropReason::Malformed),
        };
        Ok(Ok(match packet {
            Packet::HandshakeInit(ref init) => {
                let half =
                    parse_handshake_anon(&self.secret, &self.public, init).map_err(
                        |e| match e {
                            // The initiator does not know our key or is not who it claims.
                            WireGuardError::InvalidAeadTag => DropReason::UnknownPeer,
                            e => reason_of(&e),
                        },
                    )?;
                Incoming::Initiation(PublicKey(half.peer_static_public))
            }
            Packet::HandshakeResponse(r) => Incoming::ForIndex(r.receiver_idx),
            Packet::PacketCookieReply(c) => Incoming::ForIndex(c.receiver_idx),
            Packet::PacketData(d) => Incoming::ForIndex(d.receiver_idx),
        }))
    }

    /// Called once a second: resets the handshake rate limiter's window.
    pub fn tick(&self) {
        self.limiter.reset_count();
    }
}

/// Shortest time between two initiations sent at once because a cookie reply arrived: a
/// cookie reply is answered with the retried initiation right away (one round trip instead
/// of boringtun's 5 s REKEY_TIMEOUT), but never more often than this, so a responder whose
/// cookies somehow never validate cannot drive a loop at wire speed.
pub const COOKIE_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The WireGuard state with one peer.
pub struct Session {
    tunn: Tunn,
    /// When the last initiation was retried for a cookie reply (see [`COOKIE_RETRY_INTERVAL`]).
    last_cookie_retry: Option<std::time::Instant>,
}

impl Session {
    /// A session from `key` to `peer`; `index` (24 bits) is put in the top of our session
    /// indices so incoming messages find the peer without a lookup table.
    pub fn new(key: &SecretKey, peer: &PublicKey, keepalive: Option<u16>, index: u32) -> Self {
        let secret = x25519::StaticSecret::from(key.0);
        let tunn = Tunn::new(
            secret,
            x25519::PublicKey::from(peer.0),
            None,
            keepalive,
            index,
            None,
        );
        Self {
            tunn,
            last_cookie_retry: None,
        }
    }

    /// Encrypts an IP packet (or starts a handshake and queues it).
    #[inline]
    pub fn encapsulate(&mut self, src: &[u8], dst: &mut [u8]) -> Result<SessionOutput, DropReason> {
        if dst.len() < src.len() + WG_OVERHEAD || dst.len() < WG_HANDSHAKE_INIT_LEN {
            return Err(DropReason::TooLarge);
        }
        let base = dst.as_ptr() as usize;
        let r = self.tunn.encapsulate(src, dst);
        convert(base, r)
    }

    /// Handles a datagram from `src` (an empty one flushes packets queued during a handshake).
    #[inline]
    pub fn decapsulate(
        &mut self,
        src: IpAddr,
        datagram: &[u8],
        dst: &mut [u8],
    ) -> Result<SessionOutput, DropReason> {
        if dst.len() < datagram.len() || dst.len() < WG_HANDSHAKE_INIT_LEN {
            return Err(DropReason::TooLarge);
        }
        let base = dst.as_ptr() as usize;
        let r = self.tunn.decapsulate(Some(src), datagram, dst);
        convert(base, r)
    }

    /// Runs the WireGuard timers (rekey, keepalive, handshake retry).
    pub fn update_timers(&mut self, dst: &mut [u8]) -> Result<SessionOutput, DropReason> {
        if dst.len() < WG_HANDSHAKE_INIT_LEN {
            return Err(DropReason::TooLarge);
        }
        let base = dst.as_ptr() as usize;
        let r = self.tunn.update_timers(dst);
        convert(base, r)
    }

    /// Starts a handshake now unless one is in progress.
    pub fn initiate(&mut self, dst: &mut [u8]) -> Result<SessionOutput, DropReason> {
        self.initiation(dst, false)
    }

    /// Starts a new handshake now, replacing one in progress (whose answer will not come:
    /// the peer's probes say it is dead, and a replica that took over its key behind the same
    /// endpoint answers only a fresh initiation).
    pub fn initiate_anew(&mut self, dst: &mut [u8]) -> Result<SessionOutput, DropReason> {
        self.initiation(dst, true)
    }

    fn initiation(&mut self, dst: &mut [u8], force: bool) -> Result<SessionOutput, DropReason> {
        if dst.len() < WG_HANDSHAKE_INIT_LEN {
            return Err(DropReason::TooLarge);
        }
        let base = dst.as_ptr() as usize;
        let r = self.tunn.format_handshake_initiation(dst, force);
        convert(base, r)
    }

    /// After a cookie reply was accepted (the responder is under load): the initiation again
    /// at once, now carrying the cookie's mac2, at most once per [`COOKIE_RETRY_INTERVAL`].
    pub fn retry_after_cookie(
        &mut self,
        now: std::time::Instant,
        dst: &mut [u8],
    ) -> Result<SessionOutput, DropReason> {
        if dst.len() < WG_HANDSHAKE_INIT_LEN {
            return Err(DropReason::TooLarge);
        }
        if self
            .last_cookie_retry
            .is_some_and(|t| now.saturating_duration_since(t) < COOKIE_RETRY_INTERVAL)
        {
            return Ok(SessionOutput::Done);
        }
        self.last_cookie_retry = Some(now);
        let base = dst.as_ptr() as usize;
        let r = self.tunn.format_handshake_initiation(dst, true);
        convert(base, r)
    }

    /// Time since the last completed handshake.
    pub fn since_last_handshake(&self) -> Option<std::time::Duration> {
        self.tunn.stats().0
    }
}
