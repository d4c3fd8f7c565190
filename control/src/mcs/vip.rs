//! ClusterSetIP allocation from the cluster's service block(s), one address per IP family.
//!
//! Deterministic and stable: an import keeps the addresses it already has (stored in its
//! `spec.ips`) while they lie in the block and are unique; a new import starts probing at a
//! hash of `namespace/name`, so the same import tends to get the same address everywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

/// Most probes for one new address (bounds the work in huge IPv6 blocks).
const MAX_PROBES: u128 = 1 << 20;

/// The ClusterSetIPs of every import in `imports` (key -> addresses it has now); imports are
/// handled in key order so the result does not depend on map order.
pub fn allocate<K: Ord + Clone + AsRef<str>>(
    blocks: &[IpNet],
    imports: &BTreeMap<K, Vec<IpAddr>>,
) -> BTreeMap<K, Vec<IpAddr>> {
    let mut used: BTreeSet<IpAddr> = BTreeSet::new();
    let mut out: BTreeMap<K, Vec<IpAddr>> = BTreeMap::new();
    // Keep what is valid first, so a new import never steals an existing address.
    for (k, have) in imports {
        let mut keep = Vec::new();
        for block in blocks {
            if let Some(ip) = have
                .iter()
                .find(|ip| block.contains(*ip) && usable(block, **ip) && !used.contains(*ip))
            {
                used.insert(*ip);
                keep.push(*ip);
            }
        }
        out.insert(k.clone(), keep);
    }
    for (k, ips) in out.iter_mut() {
        for block in blocks {
            if ips.iter().any(|ip| block.contains(ip)) {
                continue;
            }
            if let Some(ip) = pick(block, k.as_ref(), &used) {
                used.insert(ip);
                ips.push(ip);
            }
        }
        ips.sort_by_key(|ip| ip.is_ipv6());
    }
    out
}

fn usable(block: &IpNet, ip: IpAddr) -> bool {
    ip != block.network() && (ip.is_ipv6() || ip != block.broadcast())
}

fn host_bits(block: &IpNet) -> u32 {
    u32::from(block.max_prefix_len() - block.prefix_len())
}

fn nth(block: &IpNet, n: u128) -> IpAddr {
    match block.network() {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a).wrapping_add(n as u32)).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a).wrapping_add(n)).into()),
    }
}

fn pick(block: &IpNet, key: &str, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
    let bits = host_bits(block).min(100);
    let size: u128 = 1u128 << bits;
    // FNV-1a: stable across runs and versions (std's hasher is not).
    let mut h: u64 = 0xcbf29ce484222325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    let start = u128::from(h) % size;
    (0..size.min(MAX_PROBES))
        .map(|i| nth(block, (start + i) % size))
        .find(|ip| usable(block, *ip) && !used.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_existing_and_allocates_unique_per_family() {
        let blocks: Vec<IpNet> = vec![
            "100.127.0.0/30".parse().unwrap(),
            "fd00:fb::/120".parse().unwrap(),
        ];
        let mut imports: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        imports.insert("a/x".into(), vec!["100.127.0.2".parse().unwrap()]);
        imports.insert("b/y".into(), vec![]);
        imports.insert("c/z".into(), vec!["100.127.0.2".parse().unwrap()]);
        let got = allocate(&blocks, &imports);
        assert_eq!(got["a/x"][0], "100.127.0.2".parse::<IpAddr>().unwrap());
        // /30 has two usable addresses: b gets .1, c has none left for IPv4.
        assert_eq!(got["b/y"][0], "100.127.0.1".parse::<IpAddr>().unwrap());
        assert!(got["c/z"].iter().all(|ip| ip.is_ipv6()));
        let v6: BTreeSet<IpAddr> = got
            .values()
            .flatten()
            .filter(|i| i.is_ipv6())
            .copied()
            .collect();
        assert_eq!(v6.len(), 3);
        // Stable: a second pass with the result changes nothing.
        assert_eq!(allocate(&blocks, &got), got);
    }
}
