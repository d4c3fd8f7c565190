//! End-to-end relaying: WireGuard messages between two members carried through the hub,
//! which forwards them without decrypting.
//!
//! A member that reaches another member only through the hub keeps a WireGuard session with
//! that member itself (`PeerConfig::via` names the hub). Each of its messages for the member
//! leaves as one UDP datagram to the hub with an 8-byte relay header in front:
//!
//! ```text
//!  0        1                                8
//!  +--------+--------------------------------+------------------------------+
//!  | 0xfb   | first 7 bytes of the           | WireGuard message, unchanged |
//!  |        | destination's public key       | (handshake, cookie or data)  |
//!  +--------+--------------------------------+------------------------------+
//! ```
//!
//! WireGuard's own message types are 1 to 4, so the first byte tells the two apart. A relay
//! (`DataplaneConfig::relay`) looks the key prefix up among its peers and sends the datagram,
//! header included, to that peer's current endpoint; it does so only for a datagram that
//! comes from the current endpoint of one of its peers, so it is no open relay. The receiver
//! sees its own key prefix, strips the header and handles the message as if it came from
//! the member directly (but never roams the member's endpoint to the hub's address).
//!
//! Why: the hub does no cryptography for relayed traffic (it used to decrypt and re-encrypt
//! every packet, which halved throughput on a busy hub), and it never sees the members'
//! plaintext. The price is 8 bytes of MTU (see `RELAY_HEADER`).

use crate::key::PublicKey;

/// First byte of a relay message (WireGuard's message types are 1 to 4).
pub const RELAY_TYPE: u8 = 0xfb;
/// Bytes the relay header adds in front of a WireGuard message.
pub const RELAY_HEADER: usize = 8;

/// Who a relay message is for: the first 7 bytes of its public key. Unique among a relay's
/// peers (checked when the config is applied; a clash is refused with the field named).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayId(pub [u8; RELAY_HEADER - 1]);

impl RelayId {
    /// The id of `key`.
    pub fn of(key: &PublicKey) -> Self {
        let mut id = [0u8; RELAY_HEADER - 1];
        id.copy_from_slice(&key.0[..RELAY_HEADER - 1]);
        Self(id)
    }

    /// Writes the relay header for this destination into `out[..RELAY_HEADER]`.
    #[inline]
    pub fn write_header(&self, out: &mut [u8]) {
        out[0] = RELAY_TYPE;
        out[1..RELAY_HEADER].copy_from_slice(&self.0);
    }
}

/// True when `datagram` is a relay message (it may still be too short to carry one).
#[inline]
pub fn is_relay(datagram: &[u8]) -> bool {
    datagram.first() == Some(&RELAY_TYPE)
}

/// The destination and the WireGuard message of a relay datagram; `None` when it is too
/// short to hold the header and a message.
#[inline]
pub fn parse(datagram: &[u8]) -> Option<(RelayId, &[u8])> {
    if datagram.len() <= RELAY_HEADER || datagram[0] != RELAY_TYPE {
        return None;
    }
    let mut id = [0u8; RELAY_HEADER - 1];
    id.copy_from_slice(&datagram[1..RELAY_HEADER]);
    Some((RelayId(id), &datagram[RELAY_HEADER..]))
}

/// The relay ids of a peer table, sorted for a binary search per packet (no hashing).
#[derive(Debug, Clone)]
pub struct RelayIndex<T> {
    ids: Vec<(RelayId, T)>,
}

impl<T> Default for RelayIndex<T> {
    fn default() -> Self {
        Self { ids: Vec::new() }
    }
}

impl<T: Copy> RelayIndex<T> {
    /// An index of `entries` (config validation refuses duplicate ids first).
    pub fn new(mut entries: Vec<(RelayId, T)>) -> Self {
        entries.sort_by_key(|e| e.0);
        Self { ids: entries }
    }

    /// True when nothing is indexed (this node does not relay).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The entry for `id`.
    #[inline]
    pub fn get(&self, id: &RelayId) -> Option<T> {
        self.ids
            .binary_search_by(|e| e.0.cmp(id))
            .ok()
            .map(|i| self.ids[i].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::SecretKey;

    #[test]
    fn header_round_trips_and_leaves_the_message_unchanged() {
        let key = SecretKey::from_random_bytes([7; 32]).public_key();
        let id = RelayId::of(&key);
        let mut buf = [0xAAu8; 40];
        id.write_header(&mut buf);
        buf[RELAY_HEADER] = 4; // a WireGuard data message type
        assert!(is_relay(&buf));
        let (got, msg) = parse(&buf).unwrap();
        assert_eq!(got, id);
        assert_eq!(msg.len(), 40 - RELAY_HEADER);
        assert_eq!(msg[0], 4);
        assert_eq!(&buf[1..RELAY_HEADER], &key.0[..7]);
    }

    #[test]
    fn short_or_foreign_datagrams_are_not_relay_messages() {
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[RELAY_TYPE; RELAY_HEADER]), None, "header only");
        let mut wg = [0u8; 64];
        wg[0] = 4;
        assert!(!is_relay(&wg));
        assert_eq!(parse(&wg), None);
    }

    #[test]
    fn index_finds_every_id_and_nothing_else() {
        let ids: Vec<(RelayId, u32)> = (0..200u32)
            .map(|i| {
                let k = SecretKey::from_random_bytes([i as u8; 32]).public_key();
                (RelayId::of(&k), i)
            })
            .collect();
        let idx = RelayIndex::new(ids.clone());
        for (id, v) in &ids {
            assert_eq!(idx.get(id), Some(*v));
        }
        assert_eq!(idx.get(&RelayId([0xee; 7])), None);
    }
}
