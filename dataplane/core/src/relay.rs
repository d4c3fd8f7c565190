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
//!
//! **Cookies under load.** A member under handshake load answers an initiation with a cookie
//! reply instead of doing the Diffie-Hellman (WireGuard's DoS defence). For a relayed
//! initiation it cannot know the initiator before that DH, so it cannot address the reply
//! to it; it sends the reply to the relay instead (a relay message with the relay's own id).
//! The relay remembers, for the last [`RELAYED_HANDSHAKES`] initiations it forwarded, which
//! peer sent which sender index to which peer ([`RelayedHandshakes`]), and forwards the cookie
//! reply (addressed to that index) back to its initiator with the initiator's header. The
//! cookie is computed and later checked by the member for the address the relayed messages
//! come from (the relay's), so the initiator's retried initiation, again through the relay,
//! carries a valid mac2 and is let through under load. The relay does no cryptography here.

use std::time::{Duration, Instant};

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

/// WireGuard message type of a handshake initiation.
pub const WG_INITIATION: u8 = 1;
/// WireGuard message type of a cookie reply.
pub const WG_COOKIE_REPLY: u8 = 3;
/// Size of a handshake initiation.
const INITIATION_LEN: usize = 148;
/// Size of a cookie reply.
const COOKIE_REPLY_LEN: usize = 64;
/// Relayed initiations remembered for routing cookie replies back.
pub const RELAYED_HANDSHAKES: usize = 1024;
/// How long a relayed initiation is remembered (WireGuard's REKEY_TIMEOUT: the initiator
/// retries after it anyway).
pub const RELAYED_HANDSHAKE_TTL: Duration = Duration::from_secs(5);

/// The sender index of a handshake initiation (`None` for any other message).
#[inline]
pub fn initiation_sender(message: &[u8]) -> Option<u32> {
    (message.len() == INITIATION_LEN && message[0] == WG_INITIATION)
        .then(|| u32::from_le_bytes([message[4], message[5], message[6], message[7]]))
}

/// The receiver index of a cookie reply (`None` for any other message).
#[inline]
pub fn cookie_receiver(message: &[u8]) -> Option<u32> {
    (message.len() == COOKIE_REPLY_LEN && message[0] == WG_COOKIE_REPLY)
        .then(|| u32::from_le_bytes([message[4], message[5], message[6], message[7]]))
}

/// The relay's memory of recently forwarded initiations: `(to, sender index) -> from`, a
/// bounded ring (the oldest is forgotten first), so a cookie reply from `to` finds its way
/// back to `from`. Looked up only for cookie replies (rare: only under load).
#[derive(Debug, Clone)]
pub struct RelayedHandshakes<T> {
    ring: std::collections::VecDeque<(T, u32, T, Instant)>,
}

impl<T> Default for RelayedHandshakes<T> {
    fn default() -> Self {
        Self {
            ring: std::collections::VecDeque::new(),
        }
    }
}

impl<T: Copy + PartialEq> RelayedHandshakes<T> {
    /// Remembers that `from` sent an initiation with sender index `index` to `to`.
    pub fn record(&mut self, now: Instant, from: T, to: T, index: u32) {
        if self.ring.len() >= RELAYED_HANDSHAKES {
            self.ring.pop_front();
        }
        self.ring.push_back((to, index, from, now));
    }

    /// Who sent the initiation that `to` answers with a cookie reply for `index` (forgotten
    /// once answered: one cookie per initiation).
    pub fn take(&mut self, now: Instant, to: T, index: u32) -> Option<T> {
        let i = self.ring.iter().rposition(|e| {
            e.0 == to && e.1 == index && now.saturating_duration_since(e.3) < RELAYED_HANDSHAKE_TTL
        })?;
        self.ring.remove(i).map(|e| e.2)
    }

    /// Forgets everything (the peer table changed).
    pub fn clear(&mut self) {
        self.ring.clear();
    }
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
    /// An index of `entries`. Config validation refuses duplicate ids first; should two
    /// entries still share an id, neither is indexed: a relay message is never sent to the
    /// wrong one of two peers it cannot tell apart.
    pub fn new(mut entries: Vec<(RelayId, T)>) -> Self {
        entries.sort_by_key(|e| e.0);
        let mut ids: Vec<(RelayId, T)> = Vec::with_capacity(entries.len());
        let mut i = 0;
        while i < entries.len() {
            let run = entries[i..]
                .iter()
                .take_while(|e| e.0 == entries[i].0)
                .count();
            if run == 1 {
                ids.push(entries[i]);
            }
            i += run;
        }
        Self { ids }
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
    fn relayed_handshakes_route_one_cookie_back_and_forget() {
        let now = Instant::now();
        let mut t = RelayedHandshakes::<u32>::default();
        t.record(now, 1, 2, 0xabcd);
        t.record(now, 3, 2, 0x1234);
        assert_eq!(t.take(now, 2, 0x1234), Some(3));
        assert_eq!(t.take(now, 2, 0x1234), None, "one cookie per initiation");
        assert_eq!(
            t.take(now, 9, 0xabcd),
            None,
            "only the peer it was sent to answers"
        );
        assert_eq!(
            t.take(now + RELAYED_HANDSHAKE_TTL, 2, 0xabcd),
            None,
            "expired"
        );
        for i in 0..(RELAYED_HANDSHAKES as u32 + 10) {
            t.record(now, 5, 6, i);
        }
        assert_eq!(t.ring.len(), RELAYED_HANDSHAKES, "bounded");
        assert_eq!(t.take(now, 6, 0), None, "the oldest is forgotten first");
        assert_eq!(t.take(now, 6, RELAYED_HANDSHAKES as u32 + 9), Some(5));
    }

    #[test]
    fn message_fields() {
        let mut init = [0u8; 148];
        init[0] = WG_INITIATION;
        init[4..8].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(initiation_sender(&init), Some(7));
        assert_eq!(cookie_receiver(&init), None);
        let mut cookie = [0u8; 64];
        cookie[0] = WG_COOKIE_REPLY;
        cookie[4..8].copy_from_slice(&9u32.to_le_bytes());
        assert_eq!(cookie_receiver(&cookie), Some(9));
        assert_eq!(initiation_sender(&cookie), None);
        assert_eq!(cookie_receiver(&cookie[..63]), None);
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

    #[test]
    fn ids_shared_by_two_entries_are_not_indexed() {
        let a = SecretKey::from_random_bytes([1; 32]).public_key();
        let mut twin = a;
        twin.0[31] ^= 1; // same first 7 bytes
        let b = SecretKey::from_random_bytes([2; 32]).public_key();
        let idx = RelayIndex::new(vec![
            (RelayId::of(&a), 1u32),
            (RelayId::of(&b), 2),
            (RelayId::of(&twin), 3),
        ]);
        assert_eq!(idx.get(&RelayId::of(&a)), None, "ambiguous: neither");
        assert_eq!(idx.get(&RelayId::of(&b)), Some(2));
    }
}
