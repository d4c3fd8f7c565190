//! ClusterSetIP translation: a service's virtual IP and port become one of its endpoints on
//! the way out (DNAT), and the endpoint's replies become the VIP again on the way back.
//!
//! - Configuration: [`ServiceConfig`] (VIP, TCP/UDP port map, endpoints with a `local` flag),
//!   part of the dataplane's `services`.
//! - Connection tracking both ways in two fixed, set-associative tables allocated once when
//!   services first appear ([`CONNTRACK_BUCKETS`] x [`CONNTRACK_WAYS`] flows): the forward
//!   table maps a client flow to its endpoint, the reverse table an endpoint flow back to the
//!   VIP. A full bucket evicts its idle-longest slot. No allocation, lock or syscall per
//!   packet; lookups hash the flow tuple with a fixed multiply-xor hash.
//! - A new flow picks an endpoint by a hash of the client's address and port, among the
//!   local-cluster endpoints when there are any, else among all (spread, stable per flow).
//! - Checksums are fixed incrementally (RFC 1624): IPv4 header, TCP/UDP with the pseudo
//!   header (a zero UDP/IPv4 checksum stays zero).
//! - Only unfragmented TCP/UDP without IPv6 extension headers is translated; other packets to
//!   a VIP are dropped by the caller (no route).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Buckets of each conntrack table (a power of two). With [`CONNTRACK_WAYS`] this tracks
/// 32768 flows per direction in about 2 MiB each: plenty for one node's clients of services.
pub const CONNTRACK_BUCKETS: usize = 8192;
/// Slots per bucket: a collision evicts only within its bucket.
pub const CONNTRACK_WAYS: usize = 4;
/// Idle time after which a TCP flow may be evicted or re-balanced (established connections
/// are kept this long without traffic, like a conservative NAT).
pub const TCP_IDLE: Duration = Duration::from_secs(600);
/// Idle time of a UDP flow (DNS-like request/response traffic).
pub const UDP_IDLE: Duration = Duration::from_secs(60);

/// Transport protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl Protocol {
    fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

/// One service with a virtual IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// A label (e.g. `namespace/name`).
    #[serde(default)]
    pub name: String,
    /// The virtual IP (the ServiceImport's ClusterSetIP).
    pub vip: IpAddr,
    /// Ports served on the VIP.
    #[serde(default)]
    pub ports: Vec<ServicePortConfig>,
    /// The endpoints, of the VIP's address family.
    #[serde(default)]
    pub endpoints: Vec<ServiceEndpointConfig>,
}

/// A VIP port and the endpoints' port it maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePortConfig {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Port on the VIP.
    pub port: u16,
    /// Port on the endpoints.
    pub target_port: u16,
}

/// One endpoint of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEndpointConfig {
    /// Its address (a pod's parallel address).
    pub address: IpAddr,
    /// In this node's own cluster: preferred when any is present.
    #[serde(default)]
    pub local: bool,
}

/// Checks `services` (called by `DataplaneConfig::validate`), reporting each problem by field.
pub fn validate(services: &[ServiceConfig], err: &mut impl FnMut(String, String)) {
    for (i, s) in services.iter().enumerate() {
        if s.vip.is_unspecified() || s.vip.is_multicast() {
            err(
                format!("services[{i}].vip"),
                format!("{} cannot be a service VIP", s.vip),
            );
        }
        if let Some(j) = services[..i].iter().position(|o| o.vip == s.vip) {
            err(
                format!("services[{i}].vip"),
                format!("{} is already the VIP of services[{j}]", s.vip),
            );
        }
        for (k, p) in s.ports.iter().enumerate() {
            if p.port == 0 || p.target_port == 0 {
                err(
                    format!("services[{i}].ports[{k}]"),
                    "ports must not be 0".into(),
                );
            }
            if s.ports[..k]
                .iter()
                .any(|o| o.protocol == p.protocol && o.port == p.port)
            {
                err(
                    format!("services[{i}].ports[{k}]"),
                    format!("duplicate {:?} port {}", p.protocol, p.port),
                );
            }
        }
        for (k, e) in s.endpoints.iter().enumerate() {
            if e.address.is_ipv6() != s.vip.is_ipv6() {
                err(
                    format!("services[{i}].endpoints[{k}].address"),
                    format!("{} is not of the VIP's address family", e.address),
                );
            }
        }
    }
}

/// A rewrite decided for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    /// Replace the destination address and port (client -> endpoint).
    Dst(IpAddr, u16),
    /// Replace the source address and port (endpoint reply -> VIP).
    Src(IpAddr, u16),
}

/// The parts of a TCP/UDP packet the NAT looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// IP protocol number (6 or 17).
    pub proto: u8,
    /// Source address.
    pub src: IpAddr,
    /// Source port.
    pub sport: u16,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port.
    pub dport: u16,
    /// Offset of the TCP/UDP header.
    pub l4: usize,
}

/// Parses the flow of an unfragmented IPv4/IPv6 TCP or UDP packet with a complete L4 header.
#[inline]
pub fn parse_flow(p: &[u8]) -> Option<Flow> {
    let (proto, src, dst, l4) = match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let frag = u16::from_be_bytes([p[6], p[7]]);
            if ihl < 20 || frag & 0x3fff != 0 {
                return None;
            }
            let s: [u8; 4] = p[12..16].try_into().ok()?;
            let d: [u8; 4] = p[16..20].try_into().ok()?;
            (p[9], IpAddr::from(s), IpAddr::from(d), ihl)
        }
        6 if p.len() >= 40 => {
            let s: [u8; 16] = p[8..24].try_into().ok()?;
            let d: [u8; 16] = p[24..40].try_into().ok()?;
            (p[6], IpAddr::from(s), IpAddr::from(d), 40)
        }
        _ => return None,
    };
    let min = match proto {
        6 => 20,
        17 => 8,
        _ => return None,
    };
    if p.len() < l4 + min {
        return None;
    }
    Some(Flow {
        proto,
        src,
        sport: u16::from_be_bytes([p[l4], p[l4 + 1]]),
        dst,
        dport: u16::from_be_bytes([p[l4 + 2], p[l4 + 3]]),
        l4,
    })
}

/// Applies `rw` to the packet in place (its flow from [`parse_flow`]), fixing checksums.
#[inline]
pub fn apply_rewrite(p: &mut [u8], flow: &Flow, rw: Rewrite) {
    let (addr_off, port_off, addr, port) = match (rw, flow.src.is_ipv6()) {
        (Rewrite::Dst(a, pt), false) => (16, flow.l4 + 2, a, pt),
        (Rewrite::Src(a, pt), false) => (12, flow.l4, a, pt),
        (Rewrite::Dst(a, pt), true) => (24, flow.l4 + 2, a, pt),
        (Rewrite::Src(a, pt), true) => (8, flow.l4, a, pt),
    };
    let mut new = [0u8; 16];
    let alen = match addr {
        IpAddr::V4(a) => {
            new[..4].copy_from_slice(&a.octets());
            4
        }
        IpAddr::V6(a) => {
            new.copy_from_slice(&a.octets());
            16
        }
    };
    let mut old = [0u8; 16];
    old[..alen].copy_from_slice(&p[addr_off..addr_off + alen]);
    let old_port = [p[port_off], p[port_off + 1]];
    let new_port = port.to_be_bytes();
    // Transport checksum: pseudo-header address and the port.
    let csum_off = flow.l4 + if flow.proto == 6 { 16 } else { 6 };
    let csum = u16::from_be_bytes([p[csum_off], p[csum_off + 1]]);
    if !(flow.proto == 17 && csum == 0 && !flow.src.is_ipv6()) {
        let mut c = csum_replace(csum, &old[..alen], &new[..alen]);
        c = csum_replace(c, &old_port, &new_port);
        if flow.proto == 17 && c == 0 {
            c = 0xffff;
        }
        p[csum_off..csum_off + 2].copy_from_slice(&c.to_be_bytes());
    }
    if alen == 4 {
        let hc = u16::from_be_bytes([p[10], p[11]]);
        let hc = csum_replace(hc, &old[..4], &new[..4]);
        p[10..12].copy_from_slice(&hc.to_be_bytes());
    }
    p[addr_off..addr_off + alen].copy_from_slice(&new[..alen]);
    p[port_off..port_off + 2].copy_from_slice(&new_port);
}

/// RFC 1624 incremental update of a ones-complement checksum when `old` (even length) is
/// replaced by `new`.
#[inline]
pub fn csum_replace(sum: u16, old: &[u8], new: &[u8]) -> u16 {
    let mut acc: u32 = u32::from(!sum);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        acc += u32::from(!u16::from_be_bytes([o[0], o[1]]));
        acc += u32::from(u16::from_be_bytes([n[0], n[1]]));
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Key {
    proto: u8,
    a: [u8; 16],
    ap: u16,
    b: [u8; 16],
    bp: u16,
}

impl Key {
    fn new(proto: u8, a: IpAddr, ap: u16, b: IpAddr, bp: u16) -> Self {
        Self {
            proto,
            a: octets(a),
            ap,
            b: octets(b),
            bp,
        }
    }

    #[inline]
    fn hash(&self) -> usize {
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

fn octets(a: IpAddr) -> [u8; 16] {
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
struct Table {
    slots: Box<[Slot]>,
}

impl Table {
    fn new() -> Self {
        Self {
            slots: vec![Slot::default(); CONNTRACK_BUCKETS * CONNTRACK_WAYS].into_boxed_slice(),
        }
    }

    fn bucket(&mut self, key: &Key) -> &mut [Slot] {
        let b = key.hash() & (CONNTRACK_BUCKETS - 1);
        &mut self.slots[b * CONNTRACK_WAYS..(b + 1) * CONNTRACK_WAYS]
    }

    fn get(&mut self, key: &Key, now: u32, idle: u32) -> Option<(IpAddr, u16)> {
        let slot = self
            .bucket(key)
            .iter_mut()
            .find(|s| s.used && s.key == *key && now.wrapping_sub(s.seen) <= idle)?;
        slot.seen = now;
        slot.to
    }

    fn insert(&mut self, key: Key, to: (IpAddr, u16), now: u32) {
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

    fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| s.used = false);
    }

    fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.used).count()
    }
}

struct Service {
    vip: IpAddr,
    ports: Vec<ServicePortConfig>,
    /// Local endpoints first; `preferred` of them are local (all when none is).
    endpoints: Vec<IpAddr>,
    preferred: usize,
}

/// The service NAT state: VIPs and connection tracking.
pub struct ServiceNat {
    services: Vec<Service>,
    forward: Option<Table>,
    reverse: Option<Table>,
    epoch: Option<Instant>,
    now: u32,
}

impl Default for ServiceNat {
    fn default() -> Self {
        Self::new()
    }
}

impl ServiceNat {
    /// No services.
    pub fn new() -> Self {
        Self {
            services: Vec::new(),
            forward: None,
            reverse: None,
            epoch: None,
            now: 0,
        }
    }

    /// True when there is anything to translate.
    #[inline]
    pub fn is_active(&self) -> bool {
        !self.services.is_empty()
    }

    /// Replaces the services (validated). Tracked flows stay: a flow whose endpoint is still
    /// in its service keeps it; a flow to a removed endpoint is re-balanced on its next packet.
    pub fn apply(&mut self, services: &[ServiceConfig]) {
        let mut list: Vec<Service> = services
            .iter()
            .map(|s| {
                let mut eps: Vec<(bool, IpAddr)> =
                    s.endpoints.iter().map(|e| (!e.local, e.address)).collect();
                eps.sort();
                eps.dedup();
                let local = eps.iter().filter(|e| !e.0).count();
                Service {
                    vip: s.vip,
                    ports: s.ports.clone(),
                    endpoints: eps.into_iter().map(|e| e.1).collect(),
                    preferred: if local > 0 { local } else { s.endpoints.len() },
                }
            })
            .collect();
        list.sort_by_key(|s| s.vip);
        for s in &mut list {
            s.preferred = s.preferred.min(s.endpoints.len());
        }
        self.services = list;
        if self.is_active() && self.forward.is_none() {
            self.forward = Some(Table::new());
            self.reverse = Some(Table::new());
        }
    }

    /// Advances the coarse clock of the flow timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        let epoch = *self.epoch.get_or_insert(now);
        self.now = now.saturating_duration_since(epoch).as_secs() as u32;
    }

    /// Tracked flows in the forward table (for status and tests).
    pub fn flows(&self) -> usize {
        self.forward.as_ref().map_or(0, Table::len)
    }

    /// Forgets every tracked flow.
    pub fn clear_flows(&mut self) {
        if let Some(t) = &mut self.forward {
            t.clear();
        }
        if let Some(t) = &mut self.reverse {
            t.clear();
        }
    }

    /// True when `dst` is a VIP.
    #[inline]
    pub fn is_vip(&self, dst: IpAddr) -> bool {
        self.services.binary_search_by_key(&dst, |s| s.vip).is_ok()
    }

    /// An outgoing packet (from the local TUN) to a VIP: the endpoint it goes to (tracked both
    /// ways). `None`: not to a VIP port, or the service has no endpoint.
    #[inline]
    pub fn outbound(&mut self, flow: &Flow) -> Option<Rewrite> {
        let i = self
            .services
            .binary_search_by_key(&flow.dst, |s| s.vip)
            .ok()?;
        let svc = &self.services[i];
        let port = svc
            .ports
            .iter()
            .find(|p| p.protocol.number() == flow.proto && p.port == flow.dport)?;
        let idle = idle_secs(flow.proto);
        let key = Key::new(flow.proto, flow.src, flow.sport, flow.dst, flow.dport);
        let forward = self.forward.as_mut()?;
        if let Some((ep, ep_port)) = forward.get(&key, self.now, idle)
            && ep_port == port.target_port
            && svc.endpoints.contains(&ep)
        {
            return Some(Rewrite::Dst(ep, ep_port));
        }
        if svc.endpoints.is_empty() {
            return None;
        }
        let pick = key.hash() % svc.preferred.max(1);
        let ep = svc.endpoints[pick];
        forward.insert(key, (ep, port.target_port), self.now);
        let rkey = Key::new(flow.proto, ep, port.target_port, flow.src, flow.sport);
        self.reverse
            .as_mut()?
            .insert(rkey, (flow.dst, flow.dport), self.now);
        Some(Rewrite::Dst(ep, port.target_port))
    }

    /// An incoming packet (to the local TUN): the VIP it must come from when it is a reply of
    /// a tracked flow.
    #[inline]
    pub fn inbound(&mut self, flow: &Flow) -> Option<Rewrite> {
        let key = Key::new(flow.proto, flow.src, flow.sport, flow.dst, flow.dport);
        let (vip, port) = self
            .reverse
            .as_mut()?
            .get(&key, self.now, idle_secs(flow.proto))?;
        Some(Rewrite::Src(vip, port))
    }
}

fn idle_secs(proto: u8) -> u32 {
    if proto == 6 {
        TCP_IDLE.as_secs() as u32
    } else {
        UDP_IDLE.as_secs() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Full ones-complement checksum over `data` starting from `init`.
    fn sum(data: &[u8], init: u32) -> u16 {
        let mut acc = init;
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from(c[0]) << 8
            };
            acc += u32::from(w);
        }
        while acc >> 16 != 0 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    fn pseudo(p: &[u8], l4: usize, proto: u8) -> u32 {
        let len = (p.len() - l4) as u32;
        let addrs: &[u8] = if p[0] >> 4 == 4 {
            &p[12..20]
        } else {
            &p[8..40]
        };
        let mut acc = 0u32;
        for c in addrs.chunks(2) {
            acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        acc + u32::from(proto) + (len >> 16) + (len & 0xffff)
    }

    /// A valid TCP or UDP packet with correct checksums.
    fn packet(
        v6: bool,
        proto: u8,
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let l4len = if proto == 6 { 20 } else { 8 } + payload.len();
        let mut p = if v6 {
            let mut h = vec![0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&(l4len as u16).to_be_bytes());
            h[6] = proto;
            h[7] = 64;
            h[8..24].copy_from_slice(&octets(src));
            h[24..40].copy_from_slice(&octets(dst));
            h
        } else {
            let mut h = vec![0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&((20 + l4len) as u16).to_be_bytes());
            h[8] = 64;
            h[9] = proto;
            h[12..16].copy_from_slice(&octets(src)[12..]);
            h[16..20].copy_from_slice(&octets(dst)[12..]);
            let c = sum(&h, 0);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            h
        };
        let l4 = p.len();
        let mut t = vec![0u8; l4len];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        if proto == 6 {
            t[12] = 0x50;
            t[20..].copy_from_slice(payload);
        } else {
            t[4..6].copy_from_slice(&(l4len as u16).to_be_bytes());
            t[8..].copy_from_slice(payload);
        }
        p.extend_from_slice(&t);
        let c = sum(&p[l4..], pseudo(&p, l4, proto));
        let off = l4 + if proto == 6 { 16 } else { 6 };
        p[off..off + 2].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn checksums_ok(p: &[u8]) -> bool {
        let f = parse_flow(p).unwrap();
        let ip_ok = p[0] >> 4 == 6 || sum(&p[..20], 0) == 0;
        let l4_ok = sum(&p[f.l4..], pseudo(p, f.l4, f.proto)) == 0;
        ip_ok && l4_ok
    }

    fn svc(vip: &str, eps: &[(&str, bool)]) -> ServiceConfig {
        ServiceConfig {
            name: "ns/svc".into(),
            vip: vip.parse().unwrap(),
            ports: vec![
                ServicePortConfig {
                    protocol: Protocol::Tcp,
                    port: 80,
                    target_port: 8080,
                },
                ServicePortConfig {
                    protocol: Protocol::Udp,
                    port: 53,
                    target_port: 5353,
                },
            ],
            endpoints: eps
                .iter()
                .map(|(a, l)| ServiceEndpointConfig {
                    address: a.parse().unwrap(),
                    local: *l,
                })
                .collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn dnat_out_and_reverse_on_reply_v4() {
        let mut nat = ServiceNat::new();
        nat.apply(&[svc("100.127.0.10", &[("100.64.1.5", false)])]);
        let mut p = packet(
            false,
            6,
            ip("100.64.2.7"),
            40000,
            ip("100.127.0.10"),
            80,
            b"hello",
        );
        let f = parse_flow(&p).unwrap();
        let rw = nat.outbound(&f).unwrap();
        assert_eq!(rw, Rewrite::Dst(ip("100.64.1.5"), 8080));
        apply_rewrite(&mut p, &f, rw);
        assert!(checksums_ok(&p));
        let f2 = parse_flow(&p).unwrap();
        assert_eq!((f2.dst, f2.dport), (ip("100.64.1.5"), 8080));

        let mut r = packet(
            false,
            6,
            ip("100.64.1.5"),
            8080,
            ip("100.64.2.7"),
            40000,
            b"world!",
        );
        let fr = parse_flow(&r).unwrap();
        let rw = nat.inbound(&fr).unwrap();
        assert_eq!(rw, Rewrite::Src(ip("100.127.0.10"), 80));
        apply_rewrite(&mut r, &fr, rw);
        assert!(checksums_ok(&r));
        assert_eq!(&r[r.len() - 6..], b"world!");
        // Not a tracked reply: untouched.
        let other = packet(
            false,
            6,
            ip("100.64.1.5"),
            8080,
            ip("100.64.2.8"),
            40000,
            b"",
        );
        assert_eq!(nat.inbound(&parse_flow(&other).unwrap()), None);
    }

    #[test]
    fn v6_udp_and_unknown_port_or_empty_service() {
        let mut nat = ServiceNat::new();
        nat.apply(&[
            svc("fd00:fb::a", &[("fd00:64:1::5", false)]),
            svc("100.127.0.11", &[]),
        ]);
        let mut p = packet(
            true,
            17,
            ip("fd00:64:2::7"),
            1234,
            ip("fd00:fb::a"),
            53,
            b"q",
        );
        let f = parse_flow(&p).unwrap();
        let rw = nat.outbound(&f).unwrap();
        apply_rewrite(&mut p, &f, rw);
        assert!(checksums_ok(&p));
        let wrong_port = packet(
            true,
            17,
            ip("fd00:64:2::7"),
            1234,
            ip("fd00:fb::a"),
            54,
            b"q",
        );
        assert_eq!(nat.outbound(&parse_flow(&wrong_port).unwrap()), None);
        let empty = packet(false, 6, ip("100.64.2.7"), 1, ip("100.127.0.11"), 80, b"");
        assert_eq!(nat.outbound(&parse_flow(&empty).unwrap()), None);
        assert!(nat.is_vip(ip("100.127.0.11")));
    }

    #[test]
    fn local_endpoints_preferred_and_flows_spread_and_stick() {
        let mut nat = ServiceNat::new();
        nat.apply(&[svc(
            "100.127.0.10",
            &[
                ("100.64.1.5", false),
                ("100.64.2.5", true),
                ("100.64.2.6", true),
            ],
        )]);
        let mut seen = std::collections::BTreeSet::new();
        for port in 1000..1100u16 {
            let p = packet(
                false,
                6,
                ip("100.64.2.7"),
                port,
                ip("100.127.0.10"),
                80,
                b"",
            );
            let f = parse_flow(&p).unwrap();
            let Some(Rewrite::Dst(ep, _)) = nat.outbound(&f) else {
                panic!()
            };
            assert_ne!(
                ep,
                ip("100.64.1.5"),
                "remote endpoint while local ones exist"
            );
            seen.insert(ep);
            // The same flow keeps its endpoint.
            assert_eq!(nat.outbound(&f), Some(Rewrite::Dst(ep, 8080)));
        }
        assert_eq!(seen.len(), 2, "flows spread over both local endpoints");
        // Local endpoints gone: the remote one takes over, existing flows re-balance.
        nat.apply(&[svc("100.127.0.10", &[("100.64.1.5", false)])]);
        let p = packet(
            false,
            6,
            ip("100.64.2.7"),
            1000,
            ip("100.127.0.10"),
            80,
            b"",
        );
        assert_eq!(
            nat.outbound(&parse_flow(&p).unwrap()),
            Some(Rewrite::Dst(ip("100.64.1.5"), 8080))
        );
    }

    #[test]
    fn idle_flows_expire_and_full_buckets_evict() {
        let mut nat = ServiceNat::new();
        nat.apply(&[svc("100.127.0.10", &[("100.64.1.5", false)])]);
        let t0 = Instant::now();
        nat.handle_timeout(t0);
        let p = packet(false, 17, ip("100.64.2.7"), 5, ip("100.127.0.10"), 53, b"");
        let f = parse_flow(&p).unwrap();
        nat.outbound(&f).unwrap();
        let reply = packet(false, 17, ip("100.64.1.5"), 5353, ip("100.64.2.7"), 5, b"");
        let fr = parse_flow(&reply).unwrap();
        assert!(nat.inbound(&fr).is_some());
        nat.handle_timeout(t0 + UDP_IDLE + Duration::from_secs(2));
        assert!(nat.inbound(&fr).is_none(), "expired");
        // Far more flows than slots: bounded, no panic.
        for i in 0..(CONNTRACK_BUCKETS * CONNTRACK_WAYS * 2) as u32 {
            let src = IpAddr::from((0x6440_0000u32 + i).to_be_bytes());
            let p = packet(
                false,
                6,
                src,
                (i % 60000) as u16 + 1,
                ip("100.127.0.10"),
                80,
                b"",
            );
            nat.outbound(&parse_flow(&p).unwrap()).unwrap();
        }
        assert!(nat.flows() <= CONNTRACK_BUCKETS * CONNTRACK_WAYS);
    }

    #[test]
    fn fragments_and_other_protocols_are_not_flows() {
        let mut p = packet(false, 6, ip("100.64.2.7"), 1, ip("100.127.0.10"), 80, b"");
        p[6] = 0x20; // more fragments
        assert!(parse_flow(&p).is_none());
        let mut icmp = packet(false, 17, ip("100.64.2.7"), 1, ip("100.127.0.10"), 80, b"");
        icmp[9] = 1;
        assert!(parse_flow(&icmp).is_none());
        assert!(parse_flow(&[0x45, 0, 0]).is_none());
    }

    #[test]
    fn validation_names_fields() {
        let mut errs = Vec::new();
        let mut a = svc("100.127.0.10", &[("fd00::1", false)]);
        a.ports.push(a.ports[0]);
        let b = svc("100.127.0.10", &[]);
        validate(&[a, b], &mut |f, p| errs.push(format!("{f}: {p}")));
        let all = errs.join("\n");
        for f in [
            "services[0].endpoints[0].address",
            "services[0].ports[2]",
            "services[1].vip",
        ] {
            assert!(all.contains(f), "{f} missing in {all}");
        }
    }

    proptest! {
        /// Any rewrite of any valid TCP/UDP packet keeps every checksum valid, and the
        /// reverse rewrite restores the original bytes.
        #[test]
        fn rewrites_keep_checksums_valid(
            v6 in any::<bool>(),
            tcp in any::<bool>(),
            src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(), to in any::<[u8; 16]>(),
            sport in 1u16.., dport in 1u16.., port in 1u16..,
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            dst_side in any::<bool>(),
        ) {
            let mk = |b: [u8; 16]| if v6 { IpAddr::from(b) } else { IpAddr::from([b[0], b[1], b[2], b[3]]) };
            let proto = if tcp { 6 } else { 17 };
            let orig = packet(v6, proto, mk(src), sport, mk(dst), dport, &payload);
            let mut p = orig.clone();
            let f = parse_flow(&p).unwrap();
            let rw = if dst_side { Rewrite::Dst(mk(to), port) } else { Rewrite::Src(mk(to), port) };
            apply_rewrite(&mut p, &f, rw);
            prop_assert!(checksums_ok(&p));
            let back = if dst_side { Rewrite::Dst(f.dst, f.dport) } else { Rewrite::Src(f.src, f.sport) };
            let f2 = parse_flow(&p).unwrap();
            apply_rewrite(&mut p, &f2, back);
            prop_assert!(checksums_ok(&p));
            // Equal up to the 0x0000/0xffff representations of a checksum.
            let off = f.l4 + if tcp { 16 } else { 6 };
            let mut a = orig.clone();
            let mut b = p.clone();
            for x in [&mut a, &mut b] {
                if x[off] == 0xff && x[off + 1] == 0xff { x[off] = 0; x[off + 1] = 0; }
            }
            prop_assert_eq!(a, b);
        }

        /// Garbage never panics the parser or the NAT.
        #[test]
        fn garbage_is_safe(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let mut nat = ServiceNat::new();
            nat.apply(&[svc("100.127.0.10", &[("100.64.1.5", false)])]);
            if let Some(f) = parse_flow(&bytes) {
                let _ = nat.outbound(&f);
                let _ = nat.inbound(&f);
            }
        }
    }
}
