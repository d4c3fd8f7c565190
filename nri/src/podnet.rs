//! The pod's parallel interface: a veth pair with the pod end (`eth-fleet`) in the pod's network
//! namespace and the node end where the dataplane receives traffic.
//!
//! Layout (pod address `P`, gateway `G`, both from the node's sub-block):
//! - pod: `P/32` on `eth-fleet`, `G dev eth-fleet scope link`, then every routed block (tunnel
//!   CIDR, service block) `via G dev eth-fleet`. The pod's default route stays untouched.
//! - node: `G/32` on the node end (the same gateway address on every pod's veth),
//!   `P/32 dev <node end>`, so the node namespace (and the dataplane's TUN there) reaches the
//!   pod, and IPv4 forwarding on the node end, so what the pod sends is routed on.
//!
//! The changes are made in-process over rtnetlink. A netlink socket acts in the network
//! namespace it was created in, so the socket for a pod's namespace (or the `--node-netns`) is
//! opened by a short-lived thread that enters the namespace with `setns`, opens the socket and
//! ends: the runtime's threads never leave the plugin's own namespace. The steps stop at the
//! first failure, and a failure undoes the pair, so no pod is left half-configured.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    AfSpecInet, AfSpecUnspec, InetDevConf, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo,
};
use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol, RouteScope};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::config::PluginConfig;

/// Prefix of the node-side interface names (`fbn` + 12 hex digits of a hash of the pod id).
pub const NODE_IF_PREFIX: &str = "fbn";

/// A failure to configure or clean up a pod's interface.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct NetError {
    /// The step that failed.
    pub what: String,
    /// Which operation failed, where, and the kernel's (or the system's) answer.
    pub detail: String,
}

/// Name of the node-side veth end of `pod_id` (15 bytes, stable across restarts).
pub fn node_ifname(pod_id: &str) -> String {
    // FNV-1a 64: stable, dependency-free; 48 bits make collisions among a node's pods negligible.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pod_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{NODE_IF_PREFIX}{:012x}", h >> 16)
}

/// What the interface setup needs from the configuration.
#[derive(Debug, Clone)]
pub struct PodNet {
    node_netns: Option<PathBuf>,
    pod_if: String,
    gateway: Ipv4Addr,
    routes: Vec<ipnet::Ipv4Net>,
    mtu: u32,
}

impl PodNet {
    /// Takes the relevant part of the plugin configuration.
    pub fn new(cfg: &PluginConfig) -> Self {
        Self {
            node_netns: cfg.node_netns.clone(),
            pod_if: cfg.pod_interface.clone(),
            gateway: cfg.gateway,
            routes: cfg.routes.clone(),
            mtu: cfg.mtu,
        }
    }

    /// Creates the pod's interface with address `ip`; on failure nothing is left behind.
    pub async fn setup(
        &self,
        pod_id: &str,
        pod_netns: &Path,
        ip: Ipv4Addr,
    ) -> Result<(), NetError> {
        let node_if = node_ifname(pod_id);
        let pair = format!("creating the veth pair {node_if}/{}", self.pod_if);
        let node = Netlink::open(self.node_netns.as_deref())
            .await
            .map_err(|e| e.during(&pair))?;
        // Leftovers of an interrupted earlier attempt (crash, retry) go first.
        let _ = node.del_link(&node_if).await;
        let pod = Netlink::open(Some(pod_netns))
            .await
            .map_err(|e| e.during(&pair))?;
        let _ = pod.del_link(&self.pod_if).await;

        let pod_ns = pod.ns.as_ref().expect("opened in a namespace");
        node.add_veth(&node_if, &self.pod_if, self.mtu, pod_ns, &pod.place)
            .await
            .map_err(|e| e.during(&pair))?;

        let res = match self.configure_pod(&pod, ip).await {
            Err(e) => Err(e.during(format!(
                "configuring {} in {}",
                self.pod_if,
                pod_netns.display()
            ))),
            Ok(()) => self
                .configure_node(&node, &node_if, ip)
                .await
                .map_err(|e| e.during(format!("configuring the node side {node_if}"))),
        };
        if res.is_err() {
            let _ = node.del_link(&node_if).await;
        }
        res
    }

    /// Pod side: link up, `P/32`, `G dev <pod if> scope link`, every routed block via `G`.
    async fn configure_pod(&self, pod: &Netlink, ip: Ipv4Addr) -> Result<(), StepError> {
        let dev = &self.pod_if;
        let gw = self.gateway;
        let index = pod.index_of(dev).await?;
        pod.set_up(index, dev).await?;
        pod.add_address(index, dev, ip).await?;
        pod.add_route(
            route(gw, 32, index).scope(RouteScope::Link).build(),
            format!("{gw}/32 dev {dev} scope link"),
        )
        .await?;
        for r in &self.routes {
            pod.add_route(
                route(r.network(), r.prefix_len(), index)
                    .gateway(gw)
                    .build(),
                format!("{r} via {gw} dev {dev}"),
            )
            .await?;
        }
        Ok(())
    }

    /// Node side: link up, `G/32`, `P/32 dev <node end> scope link`.
    async fn configure_node(
        &self,
        node: &Netlink,
        node_if: &str,
        ip: Ipv4Addr,
    ) -> Result<(), StepError> {
        let index = node.index_of(node_if).await?;
        node.set_up(index, node_if).await?;
        node.enable_forwarding(index, node_if).await?;
        node.add_address(index, node_if, self.gateway).await?;
        node.add_route(
            route(ip, 32, index).scope(RouteScope::Link).build(),
            format!("{ip}/32 dev {node_if} scope link"),
        )
        .await
    }

    /// Removes the pod's veth pair (deleting the node end deletes both); succeeds when it is
    /// already gone.
    pub async fn teardown(&self, pod_id: &str) -> Result<(), NetError> {
        self.remove_node_if(&node_ifname(pod_id)).await
    }

    /// True when the pod's interface exists in `pod_netns` with address `ip` and its node end
    /// exists too.
    pub async fn is_configured(&self, pod_id: &str, pod_netns: &Path, ip: Ipv4Addr) -> bool {
        let pod_ok = match Netlink::open(Some(pod_netns)).await {
            Ok(pod) => matches!(pod.has_address(&self.pod_if, ip).await, Ok(true)),
            Err(_) => false,
        };
        if !pod_ok {
            return false;
        }
        match Netlink::open(self.node_netns.as_deref()).await {
            Ok(node) => matches!(node.index(&node_ifname(pod_id)).await, Ok(Some(_))),
            Err(_) => false,
        }
    }

    /// Names of the node-side veth ends made by this plugin (prefix [`NODE_IF_PREFIX`]).
    pub async fn node_interfaces(&self) -> Result<Vec<String>, NetError> {
        let what = "listing node-side interfaces";
        let node = Netlink::open(self.node_netns.as_deref())
            .await
            .map_err(|e| e.during(what))?;
        Ok(node
            .veths()
            .await
            .map_err(|e| e.during(what))?
            .into_iter()
            .filter(|n| n.starts_with(NODE_IF_PREFIX) && n.len() == NODE_IF_PREFIX.len() + 12)
            .collect())
    }

    /// Deletes a node-side interface by name (with its pod end); succeeds when it is already
    /// gone.
    pub async fn remove_node_if(&self, node_if: &str) -> Result<(), NetError> {
        let what = format!("deleting {node_if}");
        let node = Netlink::open(self.node_netns.as_deref())
            .await
            .map_err(|e| e.during(&what))?;
        match node.del_link(node_if).await {
            Err(e) if !e.is_missing() => Err(e.during(what)),
            _ => Ok(()),
        }
    }
}

/// A unicast route to `dst/len` out of interface `index` in the main table, with iproute2's
/// default protocol (`boot`, which `ip route` does not print).
fn route(dst: Ipv4Addr, len: u8, index: u32) -> RouteMessageBuilder<Ipv4Addr> {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst, len)
        .output_interface(index)
        .protocol(RouteProtocol::Boot)
}

/// One failed operation: what it was (and where) and the kernel's or the system's answer.
#[derive(Debug)]
struct StepError {
    step: String,
    /// The errno of a netlink request the kernel refused (None for other failures).
    errno: Option<i32>,
    detail: String,
}

impl StepError {
    fn netlink(step: impl Into<String>, e: rtnetlink::Error) -> Self {
        let (errno, detail) = match &e {
            rtnetlink::Error::NetlinkError(m) => (Some(m.raw_code().abs()), m.to_io().to_string()),
            other => (None, other.to_string()),
        };
        Self {
            step: step.into(),
            errno,
            detail,
        }
    }

    fn other(step: impl Into<String>, detail: impl ToString) -> Self {
        Self {
            step: step.into(),
            errno: None,
            detail: detail.to_string(),
        }
    }

    /// The kernel said the thing is not there (iproute2's "Cannot find device ...",
    /// "... does not exist"): no such device, entry or route.
    fn is_missing(&self) -> bool {
        [Errno::ENODEV, Errno::ENOENT, Errno::ESRCH]
            .iter()
            .any(|e| self.errno == Some(*e as i32))
    }

    fn already_exists(&self) -> bool {
        self.errno == Some(Errno::EEXIST as i32)
    }

    /// The error of the whole step `what` this operation was part of.
    fn during(self, what: impl Into<String>) -> NetError {
        NetError {
            what: what.into(),
            detail: format!("{}: {}", self.step, self.detail),
        }
    }
}

/// An rtnetlink connection whose socket acts in one network namespace. Dropping it ends the
/// connection's task.
struct Netlink {
    handle: Handle,
    /// Where the socket acts, for messages.
    place: String,
    /// The namespace, kept open (a veth end is sent into it by descriptor); None for the
    /// plugin's own.
    ns: Option<File>,
}

impl Netlink {
    /// A connection in the namespace at `netns` (None: the plugin's own).
    async fn open(netns: Option<&Path>) -> Result<Self, StepError> {
        let Some(path) = netns else {
            let place = "the plugin's network namespace".to_string();
            let (conn, handle, _) = rtnetlink::new_connection()
                .map_err(|e| StepError::other(format!("opening a netlink socket in {place}"), e))?;
            tokio::spawn(conn);
            return Ok(Self {
                handle,
                place,
                ns: None,
            });
        };
        let place = format!("network namespace {}", path.display());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Handle::current();
        let (path_t, place_t) = (path.to_path_buf(), place.clone());
        // A thread of its own, never one of the runtime's: it enters the namespace for good,
        // creates the socket there (the socket stays bound to it) and ends.
        std::thread::Builder::new()
            .name("fleetboard-netns".into())
            .spawn(move || {
                let res = (|| {
                    let ns = File::open(&path_t)
                        .map_err(|e| StepError::other(format!("opening {place_t}"), e))?;
                    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| {
                        let why = match e {
                            Errno::EINVAL => format!("not a network namespace ({e})"),
                            _ => e.to_string(),
                        };
                        StepError::other(format!("entering {place_t}"), why)
                    })?;
                    let _in_runtime = runtime.enter();
                    let conn = rtnetlink::new_connection().map_err(|e| {
                        StepError::other(format!("opening a netlink socket in {place_t}"), e)
                    })?;
                    Ok((ns, conn))
                })();
                let _ = tx.send(res);
            })
            .map_err(|e| StepError::other(format!("starting a thread to enter {place}"), e))?;
        let (ns, (conn, handle, _)) = rx.await.map_err(|_| {
            StepError::other(
                format!("entering {place}"),
                "the thread ended without an answer",
            )
        })??;
        tokio::spawn(conn);
        Ok(Self {
            handle,
            place,
            ns: Some(ns),
        })
    }

    /// Index of interface `name`; None when there is none.
    async fn index(&self, name: &str) -> Result<Option<u32>, StepError> {
        let res = self
            .handle
            .link()
            .get()
            .match_name(name)
            .execute()
            .try_next()
            .await;
        match res {
            Ok(link) => Ok(link.map(|l| l.header.index)),
            Err(e) => {
                let e = StepError::netlink(format!("looking up {name} in {}", self.place), e);
                if e.is_missing() { Ok(None) } else { Err(e) }
            }
        }
    }

    /// Index of interface `name`, which must exist.
    async fn index_of(&self, name: &str) -> Result<u32, StepError> {
        self.index(name).await?.ok_or_else(|| {
            StepError::other(
                format!("looking up {name} in {}", self.place),
                "no such device",
            )
        })
    }

    /// Deletes interface `name` (a veth takes its peer along).
    async fn del_link(&self, name: &str) -> Result<(), StepError> {
        self.handle
            .link()
            .del_with_message(LinkUnspec::new_with_name(name).build())
            .execute()
            .await
            .map_err(|e| StepError::netlink(format!("deleting {name} in {}", self.place), e))
    }

    /// Creates veth `name` here with its peer `peer` in the namespace `peer_ns` (`peer_place`
    /// for messages), both with `mtu`.
    async fn add_veth(
        &self,
        name: &str,
        peer: &str,
        mtu: u32,
        peer_ns: &File,
        peer_place: &str,
    ) -> Result<(), StepError> {
        let peer_msg = LinkUnspec::new_with_name(peer)
            .mtu(mtu)
            .setns_by_fd(peer_ns.as_raw_fd())
            .build();
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(name)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle.link().add(msg).execute().await.map_err(|e| {
            StepError::netlink(
                format!(
                    "adding veth {name} in {} with peer {peer} in {peer_place}",
                    self.place
                ),
                e,
            )
        })
    }

    async fn set_up(&self, index: u32, name: &str) -> Result<(), StepError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| StepError::netlink(format!("setting {name} up in {}", self.place), e))
    }

    /// Turns IPv4 forwarding on for interface `index` (`name`): the kernel forwards what a pod
    /// sends only when the interface it arrives on forwards, and a pod's namespace (where the
    /// node ends live under the agent) starts with forwarding off unless the host's initial
    /// namespace has it on; `/proc/sys` is read-only in a container, the per-device switch
    /// over netlink needs only `CAP_NET_ADMIN`.
    async fn enable_forwarding(&self, index: u32, name: &str) -> Result<(), StepError> {
        let mut conf = InetDevConf::default();
        conf.forwarding = 1;
        let forwarding = LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
            AfSpecInet::DevConfRequest(conf),
        ])]);
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .append_extra_attribute(forwarding)
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| {
                StepError::netlink(
                    format!("turning on IPv4 forwarding on {name} in {}", self.place),
                    e,
                )
            })
    }

    /// Adds `ip/32` to interface `index` (`name`); already there is fine.
    async fn add_address(&self, index: u32, name: &str, ip: Ipv4Addr) -> Result<(), StepError> {
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(ip), 32)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = StepError::netlink(
                    format!("adding address {ip}/32 to {name} in {}", self.place),
                    e,
                );
                if e.already_exists() { Ok(()) } else { Err(e) }
            }
        }
    }

    /// Adds route `msg` (`desc` for messages).
    async fn add_route(&self, msg: RouteMessage, desc: String) -> Result<(), StepError> {
        self.handle
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(|e| StepError::netlink(format!("adding route {desc} in {}", self.place), e))
    }

    /// Whether interface `name` exists and has `ip/32`.
    async fn has_address(&self, name: &str, ip: Ipv4Addr) -> Result<bool, StepError> {
        let Some(index) = self.index(name).await? else {
            return Ok(false);
        };
        let addrs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| {
                StepError::netlink(
                    format!("listing the addresses of {name} in {}", self.place),
                    e,
                )
            })?;
        Ok(addrs.iter().any(|a| {
            a.header.prefix_len == 32
                && a.attributes
                    .iter()
                    .any(|at| matches!(at, AddressAttribute::Local(IpAddr::V4(l)) if *l == ip))
        }))
    }

    /// Names of the veth interfaces here.
    async fn veths(&self) -> Result<Vec<String>, StepError> {
        let links: Vec<_> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| StepError::netlink(format!("listing links in {}", self.place), e))?;
        Ok(links
            .into_iter()
            .filter(|l| {
                l.attributes.iter().any(|a| {
                    matches!(a, LinkAttribute::LinkInfo(info)
                        if info.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))))
                })
            })
            .filter_map(|l| {
                l.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n),
                    _ => None,
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_stable_and_short() {
        let a = node_ifname("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with(NODE_IF_PREFIX));
        assert_eq!(
            a,
            node_ifname("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        );
        assert_ne!(a, node_ifname("other"));
    }

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    /// Lookups in the plugin's own namespace (unprivileged); connections close when dropped.
    #[tokio::test]
    async fn missing_interfaces_are_none_and_connections_close() {
        let before = open_fds();
        for _ in 0..20 {
            let nl = Netlink::open(None).await.unwrap();
            assert!(nl.index("lo").await.unwrap().is_some());
            assert_eq!(nl.index("fb-no-such-if").await.unwrap(), None);
            let e = nl.index_of("fb-no-such-if").await.unwrap_err();
            let e = e.during("configuring");
            assert!(e.to_string().contains("fb-no-such-if"), "{e}");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while open_fds() > before + 5 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(open_fds() <= before + 5, "netlink sockets left open");
    }

    #[tokio::test]
    async fn a_file_that_is_no_namespace_is_named_in_the_error() {
        let Err(e) = Netlink::open(Some(Path::new("/proc/self/status"))).await else {
            panic!("entered a file that is no namespace");
        };
        let e = e.during("setting up").to_string();
        assert!(e.contains("/proc/self/status"), "{e}");
    }
}
