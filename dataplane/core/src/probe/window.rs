//! The per-peer probe window: the last N probes, their answers, and the figures over them.
//! Fixed size, allocated when the peer is added; nothing allocates per probe.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One probe sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    seq: u32,
    sent: Instant,
    rtt: Option<Duration>,
}

/// The last `len` probes to one peer, by sequence number (`seq % len` is the slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeWindow {
    slots: Box<[Option<Slot>]>,
    next_seq: u32,
    last_reply: Option<Instant>,
    first_sent: Option<Instant>,
}

/// Figures over a [`ProbeWindow`] at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ProbeSummary {
    /// Median round trip of the answered probes in the window.
    pub rtt_p50: Option<Duration>,
    /// Lost / (answered + lost) over the window; a probe is lost once unanswered for the
    /// timeout (younger ones are not counted yet). None before any probe was decided.
    pub loss: Option<f64>,
    /// Time since the last answer (any probe, also one that left the window).
    pub last_reply_age: Option<Duration>,
    /// Probes in the window that were answered.
    pub answered: u32,
    /// Probes in the window that are lost.
    pub lost: u32,
}

impl ProbeWindow {
    /// An empty window of `len` probes (at least one).
    pub fn new(len: usize) -> Self {
        Self {
            slots: vec![None; len.max(1)].into_boxed_slice(),
            next_seq: 0,
            last_reply: None,
            first_sent: None,
        }
    }

    /// Number of probes the window holds.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Always false: a window holds at least one probe.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Records a probe sent at `now`; returns its sequence number.
    pub fn send(&mut self, now: Instant) -> u32 {
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        self.first_sent.get_or_insert(now);
        let i = seq as usize % self.slots.len();
        self.slots[i] = Some(Slot {
            seq,
            sent: now,
            rtt: None,
        });
        seq
    }

    /// An answer to probe `seq` arrived at `now`. False when no such probe is waiting in the
    /// window (a duplicate, one that left the window, or never sent): not counted.
    pub fn answer(&mut self, seq: u32, now: Instant) -> bool {
        let i = seq as usize % self.slots.len();
        match &mut self.slots[i] {
            Some(s) if s.seq == seq && s.rtt.is_none() => {
                s.rtt = Some(now.saturating_duration_since(s.sent));
                self.last_reply = Some(now);
                true
            }
            _ => false,
        }
    }

    /// Is the peer answering at `now`? Alive while its last answer is at most `dead_after`
    /// old; dead once it is older, or once probes went unanswered for `dead_after` since the
    /// first one; None before that is known (nothing sent yet, or too soon to tell).
    pub fn liveness(&self, now: Instant, dead_after: Duration) -> Option<bool> {
        match (self.last_reply, self.first_sent) {
            (Some(t), _) => Some(now.saturating_duration_since(t) <= dead_after),
            (None, Some(t)) if now.saturating_duration_since(t) > dead_after => Some(false),
            _ => None,
        }
    }

    /// The figures at `now`, a probe counting as lost once unanswered for `timeout`.
    pub fn summary(&self, now: Instant, timeout: Duration) -> ProbeSummary {
        let mut scratch = Vec::with_capacity(self.slots.len());
        let mut lost = 0u32;
        for s in self.slots.iter().flatten() {
            match s.rtt {
                Some(r) => scratch.push(r),
                None if now.saturating_duration_since(s.sent) >= timeout => lost += 1,
                None => {}
            }
        }
        let answered = scratch.len() as u32;
        let decided = answered + lost;
        let rtt_p50 = (!scratch.is_empty()).then(|| {
            let mid = (scratch.len() - 1) / 2;
            *scratch.select_nth_unstable(mid).1
        });
        ProbeSummary {
            rtt_p50,
            loss: (decided > 0).then(|| f64::from(lost) / f64::from(decided)),
            last_reply_age: self.last_reply.map(|t| now.saturating_duration_since(t)),
            answered,
            lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const TIMEOUT: Duration = Duration::from_millis(1000);

    fn summary(w: &ProbeWindow, now: Instant) -> ProbeSummary {
        w.summary(now, TIMEOUT)
    }

    #[test]
    fn empty_window_has_no_figures() {
        let w = ProbeWindow::new(30);
        let s = summary(&w, Instant::now());
        assert_eq!(s, ProbeSummary::default());
    }

    #[test]
    fn median_of_answered_probes_and_zero_loss() {
        let t0 = Instant::now();
        let mut w = ProbeWindow::new(5);
        for (i, rtt) in [5u64, 1, 9, 3, 7].iter().enumerate() {
            let at = t0 + (i as u32) * 100 * MS;
            let seq = w.send(at);
            assert!(w.answer(seq, at + *rtt as u32 * MS));
        }
        let s = summary(&w, t0 + 2000 * MS);
        assert_eq!(s.rtt_p50, Some(5 * MS));
        assert_eq!(s.loss, Some(0.0));
        assert_eq!((s.answered, s.lost), (5, 0));
        // Last answer at 400 + 7 ms.
        assert_eq!(s.last_reply_age, Some((2000 - 407) * MS));
        // An even count takes the lower middle.
        let mut w = ProbeWindow::new(4);
        for rtt in [4u32, 2, 8, 6] {
            let seq = w.send(t0);
            w.answer(seq, t0 + rtt * MS);
        }
        assert_eq!(summary(&w, t0 + 2000 * MS).rtt_p50, Some(4 * MS));
    }

    #[test]
    fn unanswered_probes_are_lost_only_after_the_timeout() {
        let t0 = Instant::now();
        let mut w = ProbeWindow::new(4);
        let a = w.send(t0);
        w.answer(a, t0 + 2 * MS);
        w.send(t0 + 100 * MS);
        // Young: pending, not lost.
        let s = summary(&w, t0 + 500 * MS);
        assert_eq!((s.answered, s.lost, s.loss), (1, 0, Some(0.0)));
        // Old: lost.
        let s = summary(&w, t0 + 1100 * MS);
        assert_eq!((s.answered, s.lost, s.loss), (1, 1, Some(0.5)));
    }

    #[test]
    fn a_dead_peer_reaches_full_loss_once_the_window_turned_over() {
        let t0 = Instant::now();
        let mut w = ProbeWindow::new(3);
        for i in 0..3u32 {
            let seq = w.send(t0 + i * 100 * MS);
            w.answer(seq, t0 + i * 100 * MS + MS);
        }
        for i in 3..6u32 {
            w.send(t0 + i * 100 * MS);
        }
        let s = summary(&w, t0 + 5000 * MS);
        assert_eq!(s.loss, Some(1.0));
        assert_eq!(s.rtt_p50, None);
        assert_eq!(s.last_reply_age, Some((5000 - 201) * MS));
    }

    #[test]
    fn liveness_follows_the_age_of_the_last_answer() {
        let t0 = Instant::now();
        let dead_after = 300 * MS;
        let mut w = ProbeWindow::new(10);
        assert_eq!(w.liveness(t0, dead_after), None, "nothing sent");
        w.send(t0);
        assert_eq!(w.liveness(t0 + 200 * MS, dead_after), None, "too soon");
        assert_eq!(
            w.liveness(t0 + 301 * MS, dead_after),
            Some(false),
            "never answered"
        );
        let s = w.send(t0 + 400 * MS);
        w.answer(s, t0 + 401 * MS);
        assert_eq!(w.liveness(t0 + 500 * MS, dead_after), Some(true));
        assert_eq!(w.liveness(t0 + 701 * MS, dead_after), Some(true));
        assert_eq!(
            w.liveness(t0 + 702 * MS, dead_after),
            Some(false),
            "answers stopped"
        );
    }

    #[test]
    fn duplicate_late_and_unknown_answers_are_refused() {
        let t0 = Instant::now();
        let mut w = ProbeWindow::new(2);
        let a = w.send(t0);
        assert!(w.answer(a, t0 + MS));
        assert!(!w.answer(a, t0 + 2 * MS), "duplicate");
        assert!(!w.answer(77, t0), "never sent");
        let b = w.send(t0);
        w.send(t0);
        w.send(t0); // b's slot taken by a later probe
        assert!(!w.answer(b, t0 + MS), "left the window");
        // Sequence numbers wrap without a panic.
        let mut w = ProbeWindow::new(3);
        w.next_seq = u32::MAX;
        let s = w.send(t0);
        assert!(w.answer(s, t0 + MS));
        assert_eq!(w.send(t0), 0);
    }
}
