//! Anti-replay for one session's received counters: a sliding bitmap in the style of RFC 6479.
//!
//! The window remembers which of the last [`WINDOW`] counters below the greatest one seen were
//! received. Its bits are a ring of 64-bit words; moving the window forward clears whole words
//! (at most the ring's size, whatever the jump), so every check is O(1) with no shifting of the
//! bitmap. One word of the ring is always the one being filled, which is why the window is one
//! word short of the ring.
//!
//! Run it only on counters whose message authenticated ([`TransportKeys::open`]), or a forged
//! counter would move the window; and run it where packets are put back in order after
//! parallel decryption, before delivery: it is the one `&mut` step per packet.
//!
//! [`TransportKeys::open`]: super::TransportKeys::open

use super::REJECT_AFTER_MESSAGES;

/// Words in the bitmap ring. Parallel decryption returns packets out of order by up to the
/// packets in flight (workers x batch: 16 x 128 = 2048 on a large gateway), and the network
/// reorders a little more; 64 words = 4096 bits keeps those inside the window for 512 bytes a
/// session (wireguard-go's 2048-bit window sized one worker's reordering).
const WORDS: usize = 64;
/// Counters this far below the greatest seen are still accepted once (4032).
pub const WINDOW: u64 = ((WORDS - 1) * 64) as u64;

/// Why a counter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// Already received: a replay (or a duplicate from the network).
    #[error("counter already received")]
    Duplicate,
    /// Too far behind the newest counter to tell.
    #[error("counter older than the replay window")]
    TooOld,
    /// At or above the session's message limit.
    #[error("counter beyond the session's limit")]
    CounterLimit,
}

/// The received-counter window of one session's receiving direction.
#[derive(Clone)]
pub struct ReplayWindow {
    bits: [u64; WORDS],
    /// The greatest counter accepted (0 before any, which the empty bitmap makes harmless).
    greatest: u64,
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("greatest", &self.greatest)
            .finish_non_exhaustive()
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// A window that has seen nothing.
    pub fn new() -> Self {
        Self {
            bits: [0; WORDS],
            greatest: 0,
        }
    }

    /// Accepts `counter` once: `Ok` the first time it is seen inside the window (and records
    /// it), the reason otherwise.
    pub fn accept(&mut self, counter: u64) -> Result<(), ReplayError> {
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(ReplayError::CounterLimit);
        }
        let block = counter / 64;
        if counter > self.greatest {
            let current = self.greatest / 64;
            // Clear the words the window moves over (all of them at most), then advance.
            let advance = (block - current).min(WORDS as u64);
            for i in 1..=advance {
                self.bits[((current + i) % WORDS as u64) as usize] = 0;
            }
            self.greatest = counter;
        } else if self.greatest - counter > WINDOW {
            return Err(ReplayError::TooOld);
        }
        let word = &mut self.bits[(block % WORDS as u64) as usize];
        let bit = 1u64 << (counter % 64);
        if *word & bit != 0 {
            return Err(ReplayError::Duplicate);
        }
        *word |= bit;
        Ok(())
    }

    /// [`accept`](Self::accept) as a yes or no: `true` when the packet may be delivered.
    pub fn check_and_update(&mut self, counter: u64) -> bool {
        self.accept(counter).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_counters_are_accepted_once() {
        let mut w = ReplayWindow::new();
        for c in 0..10_000 {
            assert!(w.check_and_update(c), "counter {c}");
        }
        assert_eq!(w.accept(9_999), Err(ReplayError::Duplicate));
        assert_eq!(w.accept(0), Err(ReplayError::TooOld));
    }

    #[test]
    fn out_of_order_within_the_window_is_accepted_once() {
        let mut w = ReplayWindow::new();
        // Every counter of 0..6000, in a scrambled order whose spread stays inside the window.
        let order: Vec<u64> = (0..6000u64)
            .map(|i| (i / 1000) * 1000 + (i * 7919) % 1000)
            .collect();
        for &c in &order {
            assert_eq!(w.accept(c), Ok(()), "counter {c}");
        }
        for &c in order.iter().rev().take(3000) {
            assert_eq!(w.accept(c), Err(ReplayError::Duplicate), "counter {c}");
        }
        // The oldest counter still inside the window, then one behind it.
        let mut w = ReplayWindow::new();
        assert!(w.check_and_update(WINDOW + 100));
        assert!(w.check_and_update(100));
        assert_eq!(w.accept(99), Err(ReplayError::TooOld));
        assert_eq!(w.accept(100), Err(ReplayError::Duplicate));
    }

    #[test]
    fn far_jump_forgets_the_old_window() {
        let mut w = ReplayWindow::new();
        for c in 0..200 {
            assert!(w.check_and_update(c));
        }
        let far = 1_000_000;
        assert!(w.check_and_update(far));
        assert_eq!(w.accept(199), Err(ReplayError::TooOld));
        // Counters just behind the jump were never seen: the stale bits were cleared.
        for c in far - WINDOW..far {
            assert_eq!(w.accept(c), Ok(()), "counter {c}");
        }
        assert_eq!(w.accept(far), Err(ReplayError::Duplicate));
        // A jump of exactly one ring of words reuses the same slots, cleared.
        let next = far + 64 * WORDS as u64;
        assert!(w.check_and_update(next));
        assert!(w.check_and_update(next - 1));
    }

    #[test]
    fn counter_limit_is_refused() {
        let mut w = ReplayWindow::new();
        assert_eq!(
            w.accept(REJECT_AFTER_MESSAGES),
            Err(ReplayError::CounterLimit)
        );
        assert_eq!(w.accept(u64::MAX), Err(ReplayError::CounterLimit));
        assert!(w.check_and_update(REJECT_AFTER_MESSAGES - 1));
        assert!(!w.check_and_update(REJECT_AFTER_MESSAGES - 1));
    }
}
