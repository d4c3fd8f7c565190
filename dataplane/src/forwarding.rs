//! IPv4 forwarding on one interface, set over rtnetlink (`RTM_SETLINK` with
//! `IFLA_AF_SPEC`/`AF_INET`/`IFLA_INET_CONF`, the per-device `forwarding` switch).
//!
//! The kernel forwards a packet only when the interface it arrived on forwards. A pod's network
//! namespace starts with forwarding off unless the host's initial namespace has it on, and a
//! container cannot write `/proc/sys` (mounted read-only), so the global `net.ipv4.ip_forward`
//! is out of reach; the per-device switch needs only `CAP_NET_ADMIN`, which creating the TUN
//! device needs anyway. Used once per device at setup, never per packet.

use std::io;

use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{
    AfSpecInet, AfSpecUnspec, InetDevConf, LinkAttribute, LinkMessage,
};
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Turns IPv4 forwarding on for the interface with index `index` in the caller's network
/// namespace; the kernel's refusal comes back as its errno.
pub fn enable_ipv4(index: u32) -> io::Result<()> {
    let mut conf = InetDevConf::default();
    conf.forwarding = 1;
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.attributes
        .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
            AfSpecInet::DevConfRequest(conf),
        ])]));
    let mut msg = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::SetLink(link)),
    );
    msg.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    msg.header.sequence_number = 1;
    msg.finalize();
    let mut request = vec![0; msg.header.length as usize];
    msg.serialize(&mut request);

    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&request, 0)?;
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
