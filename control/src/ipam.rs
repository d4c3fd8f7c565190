//! Block allocation from a pool (the hub's `tunnel.cidr`, a cluster's block for its nodes).
//!
//! Pure functions: the caller reads the allocations that exist (from `Peer` status, or node
//! annotations), asks for a plan, and persists the result. Allocation is first-fit on aligned
//! blocks, so the same inputs always give the same plan, and a block already held is never
//! moved: a restart changes nothing.

use std::collections::HashSet;

use ipnet::IpNet;

/// Why a block could not be allocated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The block prefix length does not fit the pool.
    #[error("block size /{block} does not fit in pool {pool} (must be between /{} and /{max})", pool.prefix_len(), max = pool.max_prefix_len())]
    BadBlockSize {
        /// The pool.
        pool: IpNet,
        /// The requested prefix length.
        block: u8,
    },
    /// Every block of the pool is taken.
    #[error("pool {pool} is exhausted: all /{block} blocks are allocated")]
    Exhausted {
        /// The pool.
        pool: IpNet,
        /// The block prefix length.
        block: u8,
    },
}

/// Allocates aligned blocks of one prefix length from one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockAllocator {
    pool: IpNet,
    block: u8,
}

/// An address range as integers (IPv4 in the low 32 bits).
type Range = (u128, u128);

fn range_of(net: &IpNet) -> Range {
    match net {
        IpNet::V4(n) => (
            u32::from(n.network()) as u128,
            u32::from(n.broadcast()) as u128,
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

impl BlockAllocator {
    /// An allocator of `/block` blocks out of `pool` (normalised to its network address).
    pub fn new(pool: IpNet, block: u8) -> Result<Self, IpamError> {
        let pool = pool.trunc();
        if block < pool.prefix_len() || block > pool.max_prefix_len() {
            return Err(IpamError::BadBlockSize { pool, block });
        }
        Ok(Self { pool, block })
    }

    /// The pool.
    pub fn pool(&self) -> IpNet {
        self.pool
    }

    /// The block prefix length.
    pub fn block_len(&self) -> u8 {
        self.block
    }

    /// True when `net` is a block of this allocator: inside the pool, of the block size, aligned.
    pub fn is_block(&self, net: &IpNet) -> bool {
        net.prefix_len() == self.block && *net == net.trunc() && self.pool.contains(net)
    }

    /// The first block of the pool that overlaps none of `taken`.
    pub fn first_free<'a>(
        &self,
        taken: impl IntoIterator<Item = &'a IpNet>,
    ) -> Result<IpNet, IpamError> {
        let (pool_start, pool_end) = range_of(&self.pool);
        let size_log2 = u32::from(self.pool.max_prefix_len() - self.block);
        let mut used: Vec<Range> = taken
            .into_iter()
            .filter(|t| matches!(t, IpNet::V4(_)) == matches!(self.pool, IpNet::V4(_)))
            .map(range_of)
            .filter(|&(s, e)| e >= pool_start && s <= pool_end)
            .collect();
        used.sort_unstable();
        let exhausted = IpamError::Exhausted {
            pool: self.pool,
            block: self.block,
        };
        let mut candidate = pool_start;
        for (start, end) in used {
            let last = candidate
                .checked_add(block_span(size_log2))
                .ok_or(exhausted.clone())?;
            if last < start {
                break;
            }
            if end >= candidate {
                candidate = align_up(end, size_log2).ok_or(exhausted.clone())?;
            }
        }
        let last = candidate
            .checked_add(block_span(size_log2))
            .ok_or(exhausted.clone())?;
        if last > pool_end {
            return Err(exhausted);
        }
        Ok(self.net_at(candidate))
    }

    fn net_at(&self, start: u128) -> IpNet {
        match self.pool {
            IpNet::V4(_) => IpNet::V4(
                ipnet::Ipv4Net::new((start as u32).into(), self.block).expect("valid prefix"),
            ),
            IpNet::V6(_) => {
                IpNet::V6(ipnet::Ipv6Net::new(start.into(), self.block).expect("valid prefix"))
            }
        }
    }
}

/// `size - 1` for a block of `2^size_log2` addresses.
fn block_span(size_log2: u32) -> u128 {
    if size_log2 >= 128 {
        u128::MAX
    } else {
        (1u128 << size_log2) - 1
    }
}

/// The first block start strictly after `end`.
fn align_up(end: u128, size_log2: u32) -> Option<u128> {
    let span = block_span(size_log2);
    (end | span).checked_add(1)
}

/// One owner's allocation in a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment<K> {
    /// The owner (a Peer's name, a Node's name).
    pub owner: K,
    /// The block, or why there is none.
    pub block: Result<IpNet, IpamError>,
    /// True when the block is new (must be persisted), false when the owner already held it.
    pub is_new: bool,
}

/// Plans allocations for `owners`, in the given order (oldest first): an owner keeps a valid
/// block it already holds; a block held twice stays with the first owner; everyone else gets
/// the first free block. Deterministic: the same input gives the same plan.
pub fn plan<K: Clone>(alloc: &BlockAllocator, owners: &[(K, Option<IpNet>)]) -> Vec<Assignment<K>> {
    plan_reserving(alloc, owners, &[])
}

/// Like [`plan`], but no block overlaps any of `reserved` (e.g. the ClusterSetIP service
/// block): such a block is never handed out, and an owner holding one gets a new block.
pub fn plan_reserving<K: Clone>(
    alloc: &BlockAllocator,
    owners: &[(K, Option<IpNet>)],
    reserved: &[IpNet],
) -> Vec<Assignment<K>> {
    let mut held: HashSet<IpNet> = HashSet::new();
    let mut out: Vec<Option<Assignment<K>>> = vec![None; owners.len()];
    let overlaps_reserved = |b: &IpNet| {
        reserved
            .iter()
            .any(|r| r.contains(&b.network()) || b.contains(&r.network()))
    };
    for (i, (owner, existing)) in owners.iter().enumerate() {
        if let Some(b) = existing
            && alloc.is_block(b)
            && !overlaps_reserved(b)
            && held.insert(*b)
        {
            out[i] = Some(Assignment {
                owner: owner.clone(),
                block: Ok(*b),
                is_new: false,
            });
        }
    }
    let mut taken: Vec<IpNet> = held.iter().copied().collect();
    taken.extend(reserved.iter().map(|r| r.trunc()));
    for (i, (owner, _)) in owners.iter().enumerate() {
        if out[i].is_some() {
            continue;
        }
        let block = alloc.first_free(taken.iter());
        if let Ok(b) = block {
            taken.push(b);
        }
        out[i] = Some(Assignment {
            owner: owner.clone(),
            block,
            is_new: true,
        });
    }
    out.into_iter()
        .map(|a| a.expect("every owner planned"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn first_fit_skips_taken_and_unaligned_blocks() {
        let a = BlockAllocator::new(net("100.64.0.0/10"), 16).unwrap();
        assert_eq!(a.first_free([]).unwrap(), net("100.64.0.0/16"));
        assert_eq!(
            a.first_free([&net("100.64.0.0/16")]).unwrap(),
            net("100.65.0.0/16")
        );
        // A foreign smaller range inside the second block makes the whole block unusable.
        let taken = [net("100.64.0.0/16"), net("100.65.3.0/24")];
        assert_eq!(a.first_free(taken.iter()).unwrap(), net("100.66.0.0/16"));
    }

    #[test]
    fn exhaustion_is_reported() {
        let a = BlockAllocator::new(net("100.64.0.0/23"), 24).unwrap();
        let taken = [net("100.64.0.0/24"), net("100.64.1.0/24")];
        assert_eq!(
            a.first_free(taken.iter()),
            Err(IpamError::Exhausted {
                pool: net("100.64.0.0/23"),
                block: 24
            })
        );
    }

    #[test]
    fn ipv6_pools_with_huge_block_counts() {
        let a = BlockAllocator::new(net("fd00:100::/32"), 64).unwrap();
        assert_eq!(
            a.first_free([&net("fd00:100::/64")]).unwrap(),
            net("fd00:100:0:1::/64")
        );
        let whole = BlockAllocator::new(net("::/0"), 0).unwrap();
        assert_eq!(whole.first_free([]).unwrap(), net("::/0"));
        assert!(whole.first_free([&net("::/0")]).is_err());
    }

    #[test]
    fn bad_block_size_names_the_pool() {
        let e = BlockAllocator::new(net("100.64.0.0/16"), 8).unwrap_err();
        assert!(e.to_string().contains("100.64.0.0/16"), "{e}");
        assert!(BlockAllocator::new(net("100.64.0.0/16"), 33).is_err());
    }

    #[test]
    fn plan_keeps_existing_and_resolves_duplicates_to_the_oldest() {
        let a = BlockAllocator::new(net("100.64.0.0/16"), 24).unwrap();
        let owners = vec![
            ("old", Some(net("100.64.5.0/24"))),
            ("dup", Some(net("100.64.5.0/24"))),
            ("new", None),
            ("bad", Some(net("10.0.0.0/24"))),
        ];
        let p = plan(&a, &owners);
        assert_eq!(p[0].block, Ok(net("100.64.5.0/24")));
        assert!(!p[0].is_new);
        assert_eq!(p[1].block, Ok(net("100.64.0.0/24")));
        assert_eq!(p[2].block, Ok(net("100.64.1.0/24")));
        assert_eq!(p[3].block, Ok(net("100.64.2.0/24")));
        assert!(p[1].is_new && p[2].is_new && p[3].is_new);
    }

    #[test]
    fn reserved_blocks_are_never_handed_out() {
        // The default service block is the last /16 of the default tunnel CIDR.
        let a = BlockAllocator::new(net("100.64.0.0/10"), 16).unwrap();
        let reserved = [net("100.127.0.0/16"), net("100.65.7.0/24")];
        let owners: Vec<(usize, Option<IpNet>)> = (0..64).map(|i| (i, None)).collect();
        let p = plan_reserving(&a, &owners, &reserved);
        let got: Vec<IpNet> = p.iter().filter_map(|x| x.block.clone().ok()).collect();
        // 64 blocks in the pool, two unusable (one reserved, one overlapping a reserved /24).
        assert_eq!(got.len(), 62);
        assert!(!got.contains(&net("100.127.0.0/16")));
        assert!(!got.contains(&net("100.65.0.0/16")));
        assert!(p[62].block.is_err() && p[63].block.is_err());
        // An owner that holds a reserved block (a hub started before the flag) is moved.
        let p = plan_reserving(
            &a,
            &[
                ("x", Some(net("100.127.0.0/16"))),
                ("y", Some(net("100.66.0.0/16"))),
            ],
            &reserved,
        );
        assert_eq!(p[0].block, Ok(net("100.64.0.0/16")));
        assert!(p[0].is_new);
        assert_eq!(p[1].block, Ok(net("100.66.0.0/16")));
        assert!(!p[1].is_new);
    }

    proptest! {
        #[test]
        fn plans_never_overlap_and_are_stable(n in 1usize..40, block in 20u8..=26) {
            let a = BlockAllocator::new(net("100.64.0.0/20"), block).unwrap();
            let owners: Vec<(usize, Option<IpNet>)> = (0..n).map(|i| (i, None)).collect();
            let first = plan(&a, &owners);
            let got: Vec<IpNet> = first.iter().filter_map(|x| x.block.clone().ok()).collect();
            for (i, x) in got.iter().enumerate() {
                prop_assert!(a.is_block(x));
                for y in &got[i + 1..] {
                    prop_assert!(!x.contains(y) && !y.contains(x));
                }
            }
            // Re-planning with the persisted result changes nothing (a restart moves no block).
            let again: Vec<(usize, Option<IpNet>)> =
                first.iter().map(|x| (x.owner, x.block.clone().ok())).collect();
            for (x, y) in plan(&a, &again).iter().zip(first.iter()) {
                prop_assert_eq!(&x.block, &y.block);
                prop_assert!(x.block.is_err() || !x.is_new);
            }
        }
    }
}
