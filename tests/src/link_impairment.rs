//! What an impaired link does to each frame (sans-IO: frames and instants in, frames and
//! deadlines out): the model behind [`crate::impaired_link`], which stands in for `tc netem`
//! on kernels without `sch_netem`.
//!
//! Per direction, in this order (as netem with a `rate` does it):
//! 1. loss: a frame is dropped with probability `loss`;
//! 2. duplication: a frame is queued twice with probability `duplicate`;
//! 3. the bottleneck: a FIFO drained at `rate_bps`, at most `queue_bytes` waiting (tail drop);
//! 4. propagation: `delay` ± `jitter` (uniform). Jitter keeps the order of frames, as netem's
//!    does when it also has a rate: a frame never leaves before the one ahead of it;
//! 5. reordering: with probability `reorder` a frame skips the propagation delay (netem's
//!    `reorder`), so it overtakes the frames still in flight.
//!
//! Randomness comes from a seeded generator ([`fastrand`]), so the same seed gives the same
//! decisions for the same sequence of frames. Every decision is counted.
//!
//! Why not a crate: `linkem` and `badnet` drive `tc netem` (missing on this kernel);
//! `str0m-netem` is sans-IO like this and seeded, but counts nothing (the test must show the
//! impairment happened), reorders only by swapping every n-th frame with the one before it
//! (a displacement of one, which TCP's three-duplicate-ACK rule never notices), and its
//! buffer limit counts frames in the delay line too, so it is no bottleneck queue.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// The impairment of one direction of a link.
#[derive(Clone, Debug, PartialEq)]
pub struct Impairment {
    /// Probability that a frame is lost (0.01 = 1 %).
    pub loss: f64,
    /// Propagation delay.
    pub delay: Duration,
    /// Uniform variation of the delay, ± this much.
    pub jitter: Duration,
    /// Probability that a frame skips the delay and overtakes the frames in flight.
    pub reorder: f64,
    /// Probability that a frame is sent twice.
    pub duplicate: f64,
    /// Bottleneck rate in bits per second (Ethernet frame bytes, headers included).
    pub rate_bps: u64,
    /// Bytes that may wait at the bottleneck; a frame that does not fit is dropped.
    pub queue_bytes: usize,
    /// Seed of the random decisions.
    pub seed: u64,
}

impl Impairment {
    /// A clean link of `rate_bps` with `queue_bytes` of queue: no loss, delay or reordering.
    pub fn clean(rate_bps: u64, queue_bytes: usize) -> Self {
        Self {
            loss: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: 0.0,
            duplicate: 0.0,
            rate_bps,
            queue_bytes,
            seed: 1,
        }
    }

    /// The longest a frame can take through this direction: a full queue, the delay and
    /// the jitter.
    pub fn max_one_way(&self) -> Duration {
        self.delay + self.jitter + self.transmit_time(self.queue_bytes)
    }

    fn transmit_time(&self, bytes: usize) -> Duration {
        Duration::from_nanos(
            (bytes as u64 * 8).saturating_mul(1_000_000_000) / self.rate_bps.max(1),
        )
    }
}

/// What one direction of the link did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImpairmentCounts {
    /// Frames that arrived at the link.
    pub frames_in: u64,
    /// Frames dropped by the `loss` decision.
    pub lost: u64,
    /// Extra copies queued by the `duplicate` decision.
    pub duplicated: u64,
    /// Frames dropped because the bottleneck queue was full.
    pub queue_dropped: u64,
    /// Frames that skipped the delay (the `reorder` decision).
    pub reordered: u64,
    /// Frames held for a non-zero propagation delay.
    pub delayed: u64,
    /// Frames handed on.
    pub frames_out: u64,
}

impl ImpairmentCounts {
    /// `self - before`, field by field (what happened between two readings).
    pub fn since(&self, before: &Self) -> Self {
        Self {
            frames_in: self.frames_in - before.frames_in,
            lost: self.lost - before.lost,
            duplicated: self.duplicated - before.duplicated,
            queue_dropped: self.queue_dropped - before.queue_dropped,
            reordered: self.reordered - before.reordered,
            delayed: self.delayed - before.delayed,
            frames_out: self.frames_out - before.frames_out,
        }
    }

    /// Sum of two readings (both directions).
    pub fn plus(&self, o: &Self) -> Self {
        Self {
            frames_in: self.frames_in + o.frames_in,
            lost: self.lost + o.lost,
            duplicated: self.duplicated + o.duplicated,
            queue_dropped: self.queue_dropped + o.queue_dropped,
            reordered: self.reordered + o.reordered,
            delayed: self.delayed + o.delayed,
            frames_out: self.frames_out + o.frames_out,
        }
    }
}

/// A frame in flight: leaves at `.0`, `.1` breaks ties in arrival order.
type InFlight = Reverse<(Instant, u64, Vec<u8>)>;

/// One direction of an impaired link.
pub struct LinkModel {
    imp: Impairment,
    rng: fastrand::Rng,
    /// When the bottleneck has sent everything queued so far.
    link_free: Instant,
    /// When the last in-order frame is handed on (jitter never reorders).
    last_delivery: Instant,
    in_flight: BinaryHeap<InFlight>,
    seq: u64,
    counts: ImpairmentCounts,
}

impl LinkModel {
    /// A link with `imp`, starting now.
    pub fn new(imp: Impairment) -> Self {
        let now = Instant::now();
        Self {
            rng: fastrand::Rng::with_seed(imp.seed),
            imp,
            link_free: now,
            last_delivery: now,
            in_flight: BinaryHeap::new(),
            seq: 0,
            counts: ImpairmentCounts::default(),
        }
    }

    /// Changes the impairment (frames in flight keep their times) and restarts the random
    /// decisions from its seed.
    pub fn set(&mut self, imp: Impairment) {
        self.rng = fastrand::Rng::with_seed(imp.seed);
        self.imp = imp;
    }

    /// The impairment in force.
    pub fn impairment(&self) -> &Impairment {
        &self.imp
    }

    /// The counts so far.
    pub fn counts(&self) -> ImpairmentCounts {
        self.counts
    }

    /// A frame arrives at `now`.
    pub fn offer(&mut self, now: Instant, frame: Vec<u8>) {
        self.counts.frames_in += 1;
        if self.rng.f64() < self.imp.loss {
            self.counts.lost += 1;
            return;
        }
        if self.rng.f64() < self.imp.duplicate {
            self.counts.duplicated += 1;
            self.enqueue(now, frame.clone());
        }
        self.enqueue(now, frame);
    }

    fn enqueue(&mut self, now: Instant, frame: Vec<u8>) {
        let start = self.link_free.max(now);
        let waiting = start - now;
        if waiting > self.imp.transmit_time(self.imp.queue_bytes) {
            self.counts.queue_dropped += 1;
            return;
        }
        let sent = start + self.imp.transmit_time(frame.len());
        self.link_free = sent;
        let at = if self.rng.f64() < self.imp.reorder {
            self.counts.reordered += 1;
            sent
        } else {
            let jitter = self.imp.jitter.as_secs_f64() * (self.rng.f64() * 2.0 - 1.0);
            let delay = Duration::from_secs_f64((self.imp.delay.as_secs_f64() + jitter).max(0.0));
            if !delay.is_zero() {
                self.counts.delayed += 1;
            }
            let at = (sent + delay).max(self.last_delivery);
            self.last_delivery = at;
            at
        };
        self.seq += 1;
        self.in_flight.push(Reverse((at, self.seq, frame)));
    }

    /// When the next frame is due, if any is in flight.
    pub fn next_due(&self) -> Option<Instant> {
        self.in_flight.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The next frame due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.next_due()? > now {
            return None;
        }
        let Reverse((_, _, frame)) = self.in_flight.pop()?;
        self.counts.frames_out += 1;
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(m: &mut LinkModel, until: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(f) = m.pop_due(until) {
            out.push(f);
        }
        out
    }

    #[test]
    fn loss_and_duplication_happen_at_about_their_rates_and_are_counted() {
        let mut imp = Impairment::clean(1_000_000_000_000, 1 << 30);
        imp.loss = 0.01;
        imp.duplicate = 0.01;
        let mut m = LinkModel::new(imp);
        let t = Instant::now();
        for i in 0..100_000u32 {
            m.offer(t, i.to_be_bytes().to_vec());
        }
        let out = drain(&mut m, t + Duration::from_secs(1));
        let c = m.counts();
        assert!((800..1200).contains(&c.lost), "{c:?}");
        assert!((800..1200).contains(&c.duplicated), "{c:?}");
        assert_eq!(out.len() as u64, c.frames_out);
        assert_eq!(c.frames_out, 100_000 - c.lost + c.duplicated);
    }

    #[test]
    fn the_same_seed_makes_the_same_decisions() {
        let mut imp = Impairment::clean(1_000_000_000, 1 << 20);
        imp.loss = 0.05;
        imp.reorder = 0.05;
        imp.delay = Duration::from_millis(5);
        let run = |imp: &Impairment| {
            let mut m = LinkModel::new(imp.clone());
            let t = m.link_free;
            for i in 0..2_000u32 {
                m.offer(
                    t + Duration::from_micros(i as u64 * 10),
                    i.to_be_bytes().to_vec(),
                );
            }
            drain(&mut m, t + Duration::from_secs(5))
        };
        assert_eq!(run(&imp), run(&imp));
        let mut other = imp.clone();
        other.seed = 2;
        assert_ne!(run(&imp), run(&other));
    }

    #[test]
    fn the_rate_spaces_frames_and_a_full_queue_drops() {
        // 1000-byte frames at 8 Mbit/s: one per millisecond; 10 frames of queue.
        let mut m = LinkModel::new(Impairment::clean(8_000_000, 10_000));
        let t = m.link_free;
        for _ in 0..20 {
            m.offer(t, vec![0; 1000]);
        }
        let c = m.counts();
        assert_eq!(c.queue_dropped, 9, "{c:?}");
        assert_eq!(drain(&mut m, t + Duration::from_micros(5_500)).len(), 5);
        assert_eq!(drain(&mut m, t + Duration::from_millis(20)).len(), 6);
    }

    #[test]
    fn jitter_keeps_order_and_reordering_overtakes() {
        let mut imp = Impairment::clean(1_000_000_000, 1 << 20);
        imp.delay = Duration::from_millis(10);
        imp.jitter = Duration::from_millis(5);
        let mut m = LinkModel::new(imp.clone());
        let t = m.link_free;
        for i in 0..1000u32 {
            m.offer(
                t + Duration::from_micros(i as u64 * 50),
                i.to_be_bytes().to_vec(),
            );
        }
        let out = drain(&mut m, t + Duration::from_secs(1));
        assert!(out.windows(2).all(|w| w[0] < w[1]), "jitter reordered");
        assert_eq!(m.counts().delayed, 1000);

        imp.reorder = 0.05;
        let mut m = LinkModel::new(imp);
        for i in 0..1000u32 {
            m.offer(
                t + Duration::from_micros(i as u64 * 50),
                i.to_be_bytes().to_vec(),
            );
        }
        let out = drain(&mut m, t + Duration::from_secs(1));
        let c = m.counts();
        assert!((20..90).contains(&c.reordered), "{c:?}");
        assert!(out.windows(2).any(|w| w[0] > w[1]), "nothing overtook");
    }
}
