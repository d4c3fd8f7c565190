//! Longest-prefix-match route table from destination prefix to peer, IPv4 and IPv6.
//!
//! Built once per config change; lookups neither allocate nor hash: per family, one sorted
//! array of networks per distinct prefix length, searched longest length first with a binary
//! search (at most 33 / 129 lengths, in practice a handful).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::peer::PeerId;

/// Prefixes of one length, sorted by network address.
#[derive(Debug, Clone, Default)]
struct Level<A> {
    len: u8,
    entries: Vec<(A, PeerId)>,
}

/// Routes of one address family, `A` being `u32` or `u128`.
#[derive(Debug, Clone, Default)]
struct FamilyTable<A> {
    /// Longest prefix length first.
    levels: Vec<Level<A>>,
}

trait Bits: Copy + Ord + Default {
    fn mask(self, len: u8) -> Self;
}

impl Bits for u32 {
    fn mask(self, len: u8) -> Self {
        if len == 0 {
            0
        } else {
            self & (u32::MAX << (32 - len))
        }
    }
}

impl Bits for u128 {
    fn mask(self, len: u8) -> Self {
        if len == 0 {
            0
        } else {
            self & (u128::MAX << (128 - len))
        }
    }
}

impl<A: Bits> FamilyTable<A> {
    fn insert(&mut self, net: A, len: u8, peer: PeerId) {
        let net = net.mask(len);
        let pos = self.levels.iter().position(|l| l.len <= len);
        let level = match pos {
            Some(i) if self.levels[i].len == len => &mut self.levels[i],
            Some(i) => {
                self.levels.insert(
                    i,
                    Level {
                        len,
                        entries: Vec::new(),
                    },
                );
                &mut self.levels[i]
            }
            None => {
                self.levels.push(Level {
                    len,
                    entries: Vec::new(),
                });
                self.levels.last_mut().expect("just pushed")
            }
        };
        match level.entries.binary_search_by(|(n, _)| n.cmp(&net)) {
            Ok(i) => level.entries[i].1 = peer,
            Err(i) => level.entries.insert(i, (net, peer)),
        }
    }

    #[inline]
    fn lookup(&self, addr: A) -> Option<PeerId> {
        for level in &self.levels {
            let key = addr.mask(level.len);
            if let Ok(i) = level.entries.binary_search_by(|(n, _)| n.cmp(&key)) {
                return Some(level.entries[i].1);
            }
        }
        None
    }

    fn len(&self) -> usize {
        self.levels.iter().map(|l| l.entries.len()).sum()
    }
}

/// The route table: prefix to peer, longest prefix wins.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    v4: FamilyTable<u32>,
    v6: FamilyTable<u128>,
}

impl RouteTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the route for `net`.
    pub fn insert(&mut self, net: IpNet, peer: PeerId) {
        match net {
            IpNet::V4(n) => self.v4.insert(u32::from(n.addr()), n.prefix_len(), peer),
            IpNet::V6(n) => self.v6.insert(u128::from(n.addr()), n.prefix_len(), peer),
        }
    }

    /// The peer of the longest prefix containing `addr`.
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<PeerId> {
        match addr {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a)),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a)),
        }
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// True when there is no route.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(i: u32) -> PeerId {
        PeerId(i)
    }

    #[test]
    fn longest_prefix_wins_v4_and_v6() {
        let mut t = RouteTable::new();
        t.insert("100.64.0.0/10".parse().unwrap(), p(1));
        t.insert("100.64.2.0/24".parse().unwrap(), p(2));
        t.insert("0.0.0.0/0".parse().unwrap(), p(9));
        t.insert("fd00:64::/32".parse().unwrap(), p(3));
        t.insert("fd00:64:0:2::/64".parse().unwrap(), p(4));
        assert_eq!(t.lookup("100.64.2.7".parse().unwrap()), Some(p(2)));
        assert_eq!(t.lookup("100.64.3.7".parse().unwrap()), Some(p(1)));
        assert_eq!(t.lookup("8.8.8.8".parse().unwrap()), Some(p(9)));
        assert_eq!(t.lookup("fd00:64:0:2::9".parse().unwrap()), Some(p(4)));
        assert_eq!(t.lookup("fd00:64:0:3::9".parse().unwrap()), Some(p(3)));
        assert_eq!(t.lookup("fd01::1".parse().unwrap()), None);
        assert_eq!(t.len(), 5);
    }

    proptest! {
        /// The table agrees with a brute-force longest match over the same routes.
        #[test]
        fn matches_brute_force(routes in proptest::collection::vec((any::<u32>(), 0u8..=32), 0..40),
                               probes in proptest::collection::vec(any::<u32>(), 1..40)) {
            let mut t = RouteTable::new();
            let mut list: Vec<(u32, u8, u32)> = Vec::new();
            for (i, (a, l)) in routes.iter().enumerate() {
                let net = a.mask(*l);
                t.insert(IpNet::V4(ipnet::Ipv4Net::new((net).into(), *l).unwrap()), p(i as u32));
                list.retain(|(n, len, _)| !(*n == net && len == l));
                list.push((net, *l, i as u32));
            }
            for a in probes {
                let want = list.iter().filter(|(n, l, _)| a.mask(*l) == *n).max_by_key(|(_, l, _)| *l).map(|x| p(x.2));
                prop_assert_eq!(t.lookup(IpAddr::V4(a.into())), want);
            }
        }
    }
}
