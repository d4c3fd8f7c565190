//! Connection tracking tables: fixed set-associative tables of flows, allocated once.

use std::net::IpAddr;

use super::{CONNTRACK_BUCKETS, CONNTRACK_WAYS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Key {
    proto: u8,
    a: [u8; 16],
    ap: u16,
    b: [u8; 16],
    bp: u16,
}

impl Key {
    pub(super) fn new(proto: u8, a: IpAddr, ap: u16, b: IpAddr, bp: u16) -> Self {
        Self {
            proto,
            a: octets(a),
            ap,
            b: octets(b),
            bp,
        }
    }

    #[inline]
    pub(super) fn hash(&self) -> usize {
        let mut h: u64 =
            u64::from(self.proto) << 32 | u64::from(self.ap) << 16 | u64::from(self.bp);
        for c in self.a.chunks_exact(8).chain(self.b.chunks_exact(8)) {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            h = (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            h ^= h >> 29;
        }
        h as usize
    }
}

pub(super) fn octets(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
        IpAddr::V6(v) => v.octets(),
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    used: bool,
    key: Key,
    to: Option<(IpAddr, u16)>,
    seen: u32,
}

/// One conntrack direction: a fixed set-associative table.
pub(super) struct Table {
    slots: Box<[Slot]>,
}

impl Table {
    pub(super) fn new() -> Self {
        Self {
            slots: vec![Slot::default(); CONNTRACK_BUCKETS * CONNTRACK_WAYS].into_boxed_slice(),
        }
    }

    fn bucket(&mut self, key: &Key) -> &mut [Slot] {
        let b = key.hash() & (CONNTRACK_BUCKETS - 1);
        &mut self.slots[b * CONNTRACK_WAYS..(b + 1) * CONNTRACK_WAYS]
    }

    pub(super) fn get(&mut self, key: &Key, now: u32, idle: u32) -> Option<(IpAddr, u16)> {
        let slot = self
            .bucket(key)
            .iter_mut()
            .find(|s| s.used && s.key == *key && now.wrapping_sub(s.seen) <= idle)?;
        slot.seen = now;
        slot.to
    }

    pub(super) fn insert(&mut self, key: Key, to: (IpAddr, u16), now: u32) {
        let bucket = self.bucket(&key);
        let i = bucket
            .iter()
            .position(|s| s.used && s.key == key)
            .or_else(|| bucket.iter().position(|s| !s.used))
            .unwrap_or_else(|| {
                // Evict the slot idle the longest.
                (0..bucket.len())
                    .max_by_key(|&i| now.wrapping_sub(bucket[i].seen))
                    .unwrap_or(0)
            });
        bucket[i] = Slot {
            used: true,
            key,
            to: Some(to),
            seen: now,
        };
    }

    pub(super) fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.used).count()
    }
}
