//! The TUN device's kernel settings that its creation does not make, set over rtnetlink at
//! setup (never per packet), with `CAP_NET_ADMIN` only:
//!
//! - IPv4 forwarding on the device (`RTM_SETLINK` with `IFLA_AF_SPEC`/`AF_INET`/
//!   `IFLA_INET_CONF`). The kernel forwards a packet only when the interface it arrived on
//!   forwards; a pod's network namespace starts with forwarding off unless the host's initial
//!   namespace has it on, and a container cannot write `/proc/sys` (read-only), so the global
//!   `net.ipv4.ip_forward` is out of reach.
//! - No IPv6 link-local address (`IFLA_INET6_ADDR_GEN_MODE` = none, set while the device is
//!   still down): the kernel would otherwise give the TUN one and send router solicitations
//!   and MLD reports from it for ever (backing off), packets no peer routes, each counted as
//!   a `no_route` drop on every dataplane. Configured IPv6 addresses are unaffected.
//! - Routes through the device for blocks its addresses' prefixes do not cover
//!   (`interface.routes`, e.g. the MCS service block beside a tunnel CIDR that does not hold
//!   it), replaced if present.

use std::io;

use ipnet::IpNet;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{
    AfSpecInet, AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InetDevConf, LinkAttribute, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteProtocol, RouteScope};
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Turns IPv4 forwarding on for the interface with index `index` in the caller's network
/// namespace; the kernel's refusal comes back as its errno.
pub fn enable_ipv4_forwarding(index: u32) -> io::Result<()> {
    let mut conf = InetDevConf::default();
    conf.forwarding = 1;
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.attributes
        .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
            AfSpecInet::DevConfRequest(conf),
        ])]));
    request(RouteNetlinkMessage::SetLink(link), 0)
}

/// Stops the kernel from generating an IPv6 link-local address for the interface with
/// index `index` (and so from soliciting routers and joining multicast groups from it).
/// Takes effect when the device comes up: call it while the device is down.
pub fn disable_ipv6_link_local(index: u32) -> io::Result<()> {
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.attributes
        .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
            vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
        )]));
    request(RouteNetlinkMessage::SetLink(link), 0)
}

/// Routes `dst` through the interface with index `index` (main table, link scope), replacing
/// a route to the same prefix.
pub fn route_through(index: u32, dst: IpNet) -> io::Result<()> {
    let route = RouteMessageBuilder::<std::net::IpAddr>::new()
        .destination_prefix(dst.network(), dst.prefix_len())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?
        .output_interface(index)
        .protocol(RouteProtocol::Boot)
        .scope(RouteScope::Link)
        .build();
    request(
        RouteNetlinkMessage::NewRoute(route),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

/// Sends one request and waits for the kernel's acknowledgement.
fn request(payload: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
    let mut msg = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(payload));
    msg.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    msg.header.sequence_number = 1;
    msg.finalize();
    let mut bytes = vec![0; msg.header.length as usize];
    msg.serialize(&mut bytes);

    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&bytes, 0)?;
    let mut reply = Vec::with_capacity(4096);
    let n = socket.recv(&mut reply, 0)?;
    let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[..n])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    match answer.payload {
        NetlinkPayload::Error(e) if e.code.is_none() => Ok(()),
        NetlinkPayload::Error(e) => Err(e.to_io()),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected netlink answer: {other:?}"),
        )),
    }
}
