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
//!
//! Here the configuration and [`ServiceNat`]; the packet side (flow parsing, rewriting,
//! checksums) in `packet`, the tables in `conntrack`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

mod conntrack;
mod packet;

use conntrack::{Key, Table};
pub use packet::{Flow, Rewrite, apply_rewrite, parse_flow};

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

    /// Tracked flows in the forward table.
    pub fn flows(&self) -> usize {
        self.forward.as_ref().map_or(0, Table::len)
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
mod tests;
