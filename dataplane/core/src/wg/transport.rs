//! The keys of one established WireGuard session, shared by every worker thread.
//!
//! A data message (type 4) is `type (1) | reserved (3) | receiver index (4, LE) | counter (8,
//! LE) | ChaCha20-Poly1305(plaintext) | tag (16)`, the nonce being four zero bytes and the
//! counter, the associated data empty. [`TransportKeys`] holds both directions' keys as ring
//! `LessSafeKey`s (immutable after construction, so `&self` suffices) and the send counter as one
//! `AtomicU64`: a thread that seals takes the next counter with one `fetch_add`, so threads
//! never reuse a nonce and never wait for each other. Opening checks the header, the counter's
//! upper bound and the tag, but not replay: packets opened on several threads come back out of
//! order, and the [`ReplayWindow`](super::ReplayWindow) belongs to the one sequencer that puts
//! them back in order (it needs `&mut`, the only per-packet state that does).
//!
//! Buffers are the caller's. `seal_in_place` and `open_in_place` leave the plaintext where it
//! is (after a 16-byte header room), so a packet read into a buffer with headroom goes out
//! without a copy; `seal` and `open` copy once between a source and a destination buffer, the
//! copy ring's in-place AEAD needs anyway.
//!
//! WireGuard pads plaintexts to a multiple of 16 bytes; that is the caller's choice of `len`
//! (boringtun does not pad either, and receivers take the length from the IP header).

use std::sync::atomic::{AtomicU64, Ordering};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};

use super::{MSG_DATA, REJECT_AFTER_MESSAGES, REKEY_AFTER_MESSAGES};

/// Bytes before the ciphertext: type, reserved, receiver index, counter.
pub const DATA_HEADER_LEN: usize = 16;
/// Bytes of the Poly1305 tag after the ciphertext.
pub const TAG_LEN: usize = 16;
/// Bytes a data message adds to its plaintext (a keepalive is exactly this long).
pub const DATA_OVERHEAD: usize = DATA_HEADER_LEN + TAG_LEN;

/// Why a packet could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The buffer cannot hold header, plaintext and tag.
    #[error("buffer too small for a data message")]
    BufferTooSmall,
    /// The session sent [`REJECT_AFTER_MESSAGES`] messages: it must be replaced by a new one.
    #[error("session exhausted its message counter")]
    CounterExhausted,
    /// A [`SealBatch`] used all the counters it reserved.
    #[error("batch used all its reserved counters")]
    BatchUsedUp,
}

/// Why a data message was rejected (one per cause, each a drop counter's worth).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Not a data message: wrong type or reserved bytes, or shorter than header and tag.
    #[error("not a data message")]
    Malformed,
    /// The receiver index is not this session's.
    #[error("receiver index is not this session's")]
    WrongIndex,
    /// The counter is at or above [`REJECT_AFTER_MESSAGES`].
    #[error("counter beyond the session's limit")]
    CounterLimit,
    /// The tag does not verify: tampered, or sealed with another key (indistinguishable).
    #[error("authentication failed")]
    Unauthenticated,
    /// The destination cannot hold the plaintext.
    #[error("destination buffer too small")]
    BufferTooSmall,
}

/// An authenticated, decrypted data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// The sender's counter: feed it to the sequencer's [`ReplayWindow`](super::ReplayWindow)
    /// before delivering the plaintext.
    pub counter: u64,
    /// Plaintext length (0 for a keepalive).
    pub len: usize,
}

/// Both directions' keys of one session, its indices and its send counter. `Send + Sync`; share
/// it behind an `Arc` and call it from any number of threads.
pub struct TransportKeys {
    send: LessSafeKey,
    recv: LessSafeKey,
    send_counter: AtomicU64,
    local_index: u32,
    remote_index: u32,
}

impl std::fmt::Debug for TransportKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("TransportKeys")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("sent", &self.messages_sent())
            .finish_non_exhaustive()
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

fn key(bytes: &[u8; 32]) -> LessSafeKey {
    // A 32-byte key is the only thing ChaCha20-Poly1305 key construction checks.
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("32-byte key"))
}

impl TransportKeys {
    /// Keys from a finished handshake: `send` seals what we send, `recv` opens what the peer
    /// sends; `local_index` is ours (peers put it in their messages), `remote_index` the peer's
    /// (we put it in ours). The send counter starts at 0.
    pub fn new(send: &[u8; 32], recv: &[u8; 32], local_index: u32, remote_index: u32) -> Self {
        Self {
            send: key(send),
            recv: key(recv),
            send_counter: AtomicU64::new(0),
            local_index,
            remote_index,
        }
    }

    /// Our session index (incoming data messages carry it).
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// The peer's session index (our data messages carry it).
    pub fn remote_index(&self) -> u32 {
        self.remote_index
    }

    /// Send counters handed out so far (sealed messages, and reserved counters a batch left
    /// unused), held at [`REJECT_AFTER_MESSAGES`] once that is reached.
    pub fn messages_sent(&self) -> u64 {
        self.send_counter.load(Ordering::Relaxed)
    }

    /// Whether the session has sent [`REKEY_AFTER_MESSAGES`] and should be replaced.
    pub fn needs_rekey(&self) -> bool {
        self.messages_sent() >= REKEY_AFTER_MESSAGES
    }

    /// Seals the `len` plaintext bytes at `buf[DATA_HEADER_LEN..]` in place: writes the header
    /// before them and the tag after them, and returns the message length (`len +
    /// DATA_OVERHEAD`). `buf` needs room for the tag.
    #[inline]
    pub fn seal_in_place(&self, buf: &mut [u8], len: usize) -> Result<usize, SealError> {
        let total = message_len(buf, len)?;
        // Relaxed is enough: uniqueness of the counter is all the nonce needs, and the atomic
        // read-modify-write gives it whatever the ordering.
        let counter = self.send_counter.fetch_add(1, Ordering::Relaxed);
        self.seal_with(counter, &mut buf[..total], len)
    }

    /// Seals `plaintext` into `dst` (copied to `dst[DATA_HEADER_LEN..]`, then sealed there);
    /// returns the message length. An empty plaintext is a keepalive.
    #[inline]
    pub fn seal(&self, plaintext: &[u8], dst: &mut [u8]) -> Result<usize, SealError> {
        copy_plaintext(plaintext, dst)?;
        self.seal_in_place(dst, plaintext.len())
    }

    /// Reserves the next `n` send counters for one batch with a single atomic add (instead of
    /// one per packet, which two cores sealing for one session would bounce between them).
    /// Counters the batch does not use are skipped; receivers accept gaps.
    /// The batch ends at [`REJECT_AFTER_MESSAGES`] (a compare-and-swap, so a large `n` can
    /// never carry the counter past it and around).
    pub fn reserve(&self, n: u64) -> SealBatch<'_> {
        // The end of a batch of `n` from `c`, or `None` once the limit is reached.
        let end =
            |c: u64| (c < REJECT_AFTER_MESSAGES).then(|| c + n.min(REJECT_AFTER_MESSAGES - c));
        let next = match self
            .send_counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, end)
        {
            Ok(c) | Err(c) => c,
        };
        SealBatch {
            keys: self,
            next,
            end: end(next).unwrap_or(next),
        }
    }

    /// Seals `buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len]` with `counter`, which the caller
    /// took from the atomic counter (so no other message uses it); `buf` is the whole message.
    #[inline]
    fn seal_with(&self, counter: u64, buf: &mut [u8], len: usize) -> Result<usize, SealError> {
        if counter >= REJECT_AFTER_MESSAGES {
            // Hold the counter at the limit: a worker that keeps sealing while the rekey is
            // under way must not add its way around to reused nonces. Only counters at or
            // above the limit were handed out since it was reached, so none is lost.
            self.send_counter
                .store(REJECT_AFTER_MESSAGES, Ordering::Relaxed);
            return Err(SealError::CounterExhausted);
        }
        let (header, rest) = buf.split_at_mut(DATA_HEADER_LEN);
        header[..4].copy_from_slice(&[MSG_DATA, 0, 0, 0]);
        header[4..8].copy_from_slice(&self.remote_index.to_le_bytes());
        header[8..].copy_from_slice(&counter.to_le_bytes());
        let (body, tag_out) = rest.split_at_mut(len);
        let tag = self
            .send
            .seal_in_place_separate_tag(nonce(counter), Aad::empty(), body)
            .map_err(|_| SealError::BufferTooSmall)?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(buf.len())
    }

    /// Checks the header of a data message and returns its counter and the ciphertext length.
    #[inline]
    fn check_header(&self, msg: &[u8]) -> Result<(u64, usize), OpenError> {
        if msg.len() < DATA_OVERHEAD || msg[..4] != [MSG_DATA, 0, 0, 0] {
            return Err(OpenError::Malformed);
        }
        let index = u32::from_le_bytes([msg[4], msg[5], msg[6], msg[7]]);
        if index != self.local_index {
            return Err(OpenError::WrongIndex);
        }
        let mut c = [0u8; 8];
        c.copy_from_slice(&msg[8..DATA_HEADER_LEN]);
        let counter = u64::from_le_bytes(c);
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(OpenError::CounterLimit);
        }
        Ok((counter, msg.len() - DATA_OVERHEAD))
    }

    /// Authenticates and decrypts the data message `msg` in place: the plaintext is left at
    /// `msg[DATA_HEADER_LEN..DATA_HEADER_LEN + len]`. No replay check (see the module docs).
    #[inline]
    pub fn open_in_place(&self, msg: &mut [u8]) -> Result<Opened, OpenError> {
        let (counter, len) = self.check_header(msg)?;
        let tag_at = DATA_HEADER_LEN + len;
        let tag = tag_of(&msg[tag_at..]);
        self.recv
            .open_in_place_separate_tag(
                nonce(counter),
                Aad::empty(),
                tag,
                &mut msg[DATA_HEADER_LEN..tag_at],
                0..,
            )
            .map_err(|_| OpenError::Unauthenticated)?;
        Ok(Opened { counter, len })
    }

    /// Authenticates and decrypts the data message `msg` into `dst[..len]`. No replay check
    /// (see the module docs).
    #[inline]
    pub fn open(&self, msg: &[u8], dst: &mut [u8]) -> Result<Opened, OpenError> {
        let (counter, len) = self.check_header(msg)?;
        let out = dst.get_mut(..len).ok_or(OpenError::BufferTooSmall)?;
        let tag_at = DATA_HEADER_LEN + len;
        out.copy_from_slice(&msg[DATA_HEADER_LEN..tag_at]);
        self.recv
            .open_in_place_separate_tag(
                nonce(counter),
                Aad::empty(),
                tag_of(&msg[tag_at..]),
                out,
                0..,
            )
            .map_err(|_| OpenError::Unauthenticated)?;
        Ok(Opened { counter, len })
    }
}

/// Send counters reserved for one batch ([`TransportKeys::reserve`]): each seal takes the next
/// one, so no counter is used twice. Not `Clone`, for that reason.
#[derive(Debug)]
pub struct SealBatch<'a> {
    keys: &'a TransportKeys,
    next: u64,
    end: u64,
}

impl SealBatch<'_> {
    /// Counters left in the batch.
    pub fn remaining(&self) -> u64 {
        self.end - self.next
    }

    /// [`TransportKeys::seal_in_place`] with the batch's next counter;
    /// [`SealError::BatchUsedUp`] once they are all used.
    #[inline]
    pub fn seal_in_place(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SealError> {
        let total = message_len(buf, len)?;
        if self.next == self.end {
            return Err(if self.end >= REJECT_AFTER_MESSAGES {
                SealError::CounterExhausted
            } else {
                SealError::BatchUsedUp
            });
        }
        let counter = self.next;
        self.next += 1;
        self.keys.seal_with(counter, &mut buf[..total], len)
    }

    /// [`TransportKeys::seal`] with the batch's next counter.
    #[inline]
    pub fn seal(&mut self, plaintext: &[u8], dst: &mut [u8]) -> Result<usize, SealError> {
        copy_plaintext(plaintext, dst)?;
        self.seal_in_place(dst, plaintext.len())
    }
}

/// The length of the message for `len` plaintext bytes, if `buf` holds it.
#[inline]
fn message_len(buf: &[u8], len: usize) -> Result<usize, SealError> {
    len.checked_add(DATA_OVERHEAD)
        .filter(|t| *t <= buf.len())
        .ok_or(SealError::BufferTooSmall)
}

/// Copies `plaintext` to where a data message's body goes in `dst`, if the message fits.
#[inline]
fn copy_plaintext(plaintext: &[u8], dst: &mut [u8]) -> Result<(), SealError> {
    message_len(dst, plaintext.len())?;
    dst[DATA_HEADER_LEN..DATA_HEADER_LEN + plaintext.len()].copy_from_slice(plaintext);
    Ok(())
}

fn tag_of(bytes: &[u8]) -> Tag {
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(bytes);
    Tag::from(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (TransportKeys, TransportKeys) {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        (
            TransportKeys::new(&a, &b, 10, 20),
            TransportKeys::new(&b, &a, 20, 10),
        )
    }

    #[test]
    fn seal_then_open_both_ways_and_in_place() {
        let (alice, bob) = pair();
        let mut buf = [0u8; 100];
        let n = alice.seal(b"hello", &mut buf).unwrap();
        assert_eq!(n, 5 + DATA_OVERHEAD);
        assert_eq!(buf[..8], [4, 0, 0, 0, 20, 0, 0, 0]);
        let mut out = [0u8; 5];
        assert_eq!(
            bob.open(&buf[..n], &mut out),
            Ok(Opened { counter: 0, len: 5 })
        );
        assert_eq!(&out, b"hello");

        let mut buf = [0u8; 64];
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + 3].copy_from_slice(b"abc");
        let n = bob.seal_in_place(&mut buf, 3).unwrap();
        assert_eq!(
            alice.open_in_place(&mut buf[..n]),
            Ok(Opened { counter: 0, len: 3 })
        );
        assert_eq!(&buf[DATA_HEADER_LEN..DATA_HEADER_LEN + 3], b"abc");
        let n = alice.seal(&[], &mut buf).unwrap();
        assert_eq!(
            bob.open(&buf[..n], &mut []),
            Ok(Opened { counter: 1, len: 0 })
        );
    }

    #[test]
    fn rejects_each_cause_distinctly() {
        let (alice, bob) = pair();
        let mut buf = [0u8; 64];
        assert_eq!(
            alice.seal(&[0; 40], &mut buf),
            Err(SealError::BufferTooSmall)
        );
        let n = alice.seal(b"data", &mut buf).unwrap();
        let msg = buf[..n].to_vec();
        let mut out = [0u8; 64];
        assert_eq!(bob.open(&msg[..31], &mut out), Err(OpenError::Malformed));
        assert_eq!(alice.open(&msg, &mut out), Err(OpenError::WrongIndex));
        assert_eq!(
            bob.open(&msg, &mut out[..3]),
            Err(OpenError::BufferTooSmall)
        );
        let mut bad = msg.clone();
        bad[n - 1] ^= 1;
        assert_eq!(bob.open(&bad, &mut out), Err(OpenError::Unauthenticated));
        let mut far = msg.clone();
        far[8..16].copy_from_slice(&REJECT_AFTER_MESSAGES.to_le_bytes());
        assert_eq!(bob.open(&far, &mut out), Err(OpenError::CounterLimit));
    }

    #[test]
    fn a_batch_uses_its_reserved_counters_once_each() {
        let (alice, bob) = pair();
        let mut buf = [0u8; 64];
        alice.seal(b"a", &mut buf).unwrap();
        let mut batch = alice.reserve(3);
        // Another thread's seal meanwhile takes the counter after the batch.
        let n = alice.seal(b"b", &mut buf).unwrap();
        assert_eq!(bob.open(&buf[..n], &mut [0; 1]).unwrap().counter, 4);
        for expected in 1..=3 {
            assert_eq!(batch.remaining(), 4 - expected);
            let n = batch.seal(b"c", &mut buf).unwrap();
            assert_eq!(bob.open(&buf[..n], &mut [0; 1]).unwrap().counter, expected);
        }
        assert_eq!(batch.seal(b"c", &mut buf), Err(SealError::BatchUsedUp));
        assert_eq!(alice.messages_sent(), 5);
    }

    #[test]
    fn stops_sealing_at_the_counter_limit() {
        let (alice, _) = pair();
        alice
            .send_counter
            .store(REJECT_AFTER_MESSAGES - 1, Ordering::Relaxed);
        let mut buf = [0u8; 64];
        assert!(alice.seal(b"x", &mut buf).is_ok());
        assert!(alice.needs_rekey());
        assert_eq!(alice.seal(b"x", &mut buf), Err(SealError::CounterExhausted));
        assert_eq!(alice.seal(b"x", &mut buf), Err(SealError::CounterExhausted));
        assert_eq!(
            alice.messages_sent(),
            REJECT_AFTER_MESSAGES,
            "held at the limit"
        );
        let mut batch = alice.reserve(u64::MAX);
        assert_eq!(batch.remaining(), 0);
        assert_eq!(batch.seal(b"x", &mut buf), Err(SealError::CounterExhausted));
        // A batch reserved just below the limit ends at it.
        alice
            .send_counter
            .store(REJECT_AFTER_MESSAGES - 2, Ordering::Relaxed);
        let mut batch = alice.reserve(u64::MAX);
        assert_eq!(batch.remaining(), 2);
        assert!(batch.seal(b"x", &mut buf).is_ok());
        assert!(batch.seal(b"x", &mut buf).is_ok());
        assert_eq!(batch.seal(b"x", &mut buf), Err(SealError::CounterExhausted));
        assert_eq!(alice.messages_sent(), REJECT_AFTER_MESSAGES);
    }
}
