//! Why a packet was dropped: small `Copy` reasons that feed counters, never allocations.

use serde::{Deserialize, Serialize};

/// The reason a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum DropReason {
    /// Not a well-formed WireGuard message or IP packet (garbage, truncated).
    Malformed = 0,
    /// A message for a peer or session index we do not know (e.g. unknown key; for QUIC, a
    /// connection of no configured peer, or a datagram for a connection ID never issued).
    UnknownPeer,
    /// Failed authentication: bad MAC, bad AEAD tag, wrong key.
    Unauthenticated,
    /// A replayed or too old message (counter or handshake timestamp).
    Replay,
    /// Data for a session that no longer exists (e.g. after a restart).
    NoSession,
    /// Handshakes are being rate limited (cookie sent instead).
    UnderLoad,
    /// Inner source address outside the sending peer's allowed CIDRs (cryptokey routing).
    SourceNotAllowed,
    /// No route for the destination address.
    NoRoute,
    /// The route's peer has no known endpoint yet.
    NoEndpoint,
    /// The packet does not fit the buffer.
    TooLarge,
    /// The route's peer uses a transport that is not available.
    TransportUnavailable,
    /// The I/O layer failed to send it (socket or TUN error, full queue).
    SendFailed,
    /// A relay message this node does not forward: relaying is off, or the sender or the
    /// destination is not one of its peers.
    RelayRefused,
    /// An incoming QUIC handshake that did not complete within the handshake timeout (its
    /// slot was freed).
    HandshakeTimeout,
}

/// Number of [`DropReason`] variants.
pub const DROP_REASONS: usize = 14;

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; DROP_REASONS] = [
        DropReason::Malformed,
        DropReason::UnknownPeer,
        DropReason::Unauthenticated,
        DropReason::Replay,
        DropReason::NoSession,
        DropReason::UnderLoad,
        DropReason::SourceNotAllowed,
        DropReason::NoRoute,
        DropReason::NoEndpoint,
        DropReason::TooLarge,
        DropReason::TransportUnavailable,
        DropReason::SendFailed,
        DropReason::RelayRefused,
        DropReason::HandshakeTimeout,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::Unauthenticated => "unauthenticated",
            DropReason::Replay => "replay",
            DropReason::NoSession => "no_session",
            DropReason::UnderLoad => "under_load",
            DropReason::SourceNotAllowed => "source_not_allowed",
            DropReason::NoRoute => "no_route",
            DropReason::NoEndpoint => "no_endpoint",
            DropReason::TooLarge => "too_large",
            DropReason::TransportUnavailable => "transport_unavailable",
            DropReason::SendFailed => "send_failed",
            DropReason::RelayRefused => "relay_refused",
            DropReason::HandshakeTimeout => "handshake_timeout",
        }
    }
}

/// A counter per [`DropReason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCounters(pub [u64; DROP_REASONS]);

impl DropCounters {
    /// Counts one drop.
    #[inline]
    pub fn add(&mut self, r: DropReason) {
        self.0[r as usize] += 1;
    }

    /// The count for one reason.
    pub fn get(&self, r: DropReason) -> u64 {
        self.0[r as usize]
    }

    /// Sum over all reasons.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(reason, count)` for every reason.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (*r, self.get(*r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_discriminant_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
