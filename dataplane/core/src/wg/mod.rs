//! WireGuard in the core, built so one session's crypto can run on several threads.
//!
//! boringtun's `Tunn` (wrapped by [`crate::session`]) keeps its session keys private and takes
//! `&mut self` for every packet, so one session is driven by one thread. Two gateways exchange
//! all their traffic as one UDP flow, so spreading peers over workers does not parallelise the
//! main case. This module splits WireGuard the way a multi-core dataplane needs it:
//!
//! - [`handshake`]: the Noise IKpsk2 handshake (on the `snow` crate) with WireGuard's framing,
//!   MACs, cookies and timestamps. Rare and stateful: it runs on the control thread, with `&mut`.
//! - [`transport`]: [`TransportKeys`], the keys of one established session, `Send + Sync`, every
//!   method `&self`: any number of workers seal (the send counter is one atomic) and open
//!   (authentication and decryption only) at the same time, with no lock.
//! - [`replay`]: [`ReplayWindow`], the anti-replay bitmap, run by the single sequencer that
//!   delivers a flow's packets in order after parallel decryption (the only `&mut` per packet).
//!
//! Nothing here reads a clock or a random source: timestamps, `now` and the ephemeral key's
//! random bytes are arguments, as everywhere in the core. Not wired into [`crate::Dataplane`]
//! yet.

pub mod handshake;
pub mod replay;
pub mod transport;

pub use handshake::{HandshakeError, LocalIdentity, PeerHandshake, ReceivedInitiation, Tai64N};
pub use replay::{ReplayError, ReplayWindow};
pub use transport::{OpenError, Opened, SealBatch, SealError, TransportKeys};

/// Message type of a handshake initiation (first byte; the next three are zero).
pub const MSG_INITIATION: u8 = 1;
/// Message type of a handshake response.
pub const MSG_RESPONSE: u8 = 2;
/// Message type of a cookie reply.
pub const MSG_COOKIE_REPLY: u8 = 3;
/// Message type of a transport data message.
pub const MSG_DATA: u8 = 4;

/// After this many messages a session should be replaced by a new handshake (the whitepaper's
/// Rekey-After-Messages, 2^60): far below the hard limit, so the rekey has time to finish.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// No message is sent or accepted with a counter at or above this (the whitepaper's
/// Reject-After-Messages, 2^64 - 2^13 - 1): the nonce must never wrap, and the margin keeps the
/// replay window's arithmetic away from the top of the counter space.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

/// What a datagram is, from its first four bytes (type and three zero bytes) and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A handshake initiation (148 bytes).
    Initiation,
    /// A handshake response (92 bytes) for our session index.
    Response(u32),
    /// A cookie reply (64 bytes) for our session index.
    CookieReply(u32),
    /// A transport data message (at least 32 bytes) for our session index.
    Data(u32),
}

/// Classifies a datagram by its header, with the receiver index that finds the session; `None`
/// for anything that is not a WireGuard message of a plausible length.
pub fn classify(datagram: &[u8]) -> Option<MessageKind> {
    let index = || u32::from_le_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]);
    match (datagram.get(..4)?, datagram.len()) {
        ([MSG_INITIATION, 0, 0, 0], handshake::INITIATION_LEN) => Some(MessageKind::Initiation),
        ([MSG_RESPONSE, 0, 0, 0], handshake::RESPONSE_LEN) => {
            // The receiver index follows the responder's own sender index.
            let r = &datagram[8..12];
            Some(MessageKind::Response(u32::from_le_bytes([
                r[0], r[1], r[2], r[3],
            ])))
        }
        ([MSG_COOKIE_REPLY, 0, 0, 0], handshake::COOKIE_REPLY_LEN) => {
            Some(MessageKind::CookieReply(index()))
        }
        ([MSG_DATA, 0, 0, 0], n) if n >= transport::DATA_OVERHEAD => {
            Some(MessageKind::Data(index()))
        }
        _ => None,
    }
}
