//! Who reaches whom besides the pod-to-pod exchanges of [`super::traffic`]: both members on
//! one pod range (overlap), the nodes and pods of one member on the cluster's own network
//! (FleetBoard must not break it), and every node's tunnel address from pods on every other
//! node of the cluster set, the hub's too.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use fleetboard_tests::kube::eventually;
use fleetboard_tests::netns::run;
use fleetboard_tests::real_fleet::pods::{self, APPS, DEADLINE, POLL};
use fleetboard_tests::real_fleet::{NS, RealFleet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

/// The members' nodes got their podCIDRs from one range: at least one podCIDR is in use in
/// both members.
pub async fn pod_cidrs_overlap(fleet: &RealFleet) -> anyhow::Result<()> {
    let sets: Vec<BTreeSet<&str>> = fleet
        .members
        .iter()
        .map(|m| m.nodes.iter().map(|n| n.pod_cidr()).collect())
        .collect();
    let shared: Vec<&&str> = sets[0].intersection(&sets[1]).collect();
    anyhow::ensure!(
        !shared.is_empty(),
        "the members' podCIDRs do not overlap: {sets:?}"
    );
    eprintln!(
        "fleet {}: both members use podCIDRs {shared:?} (member-a {:?}, member-b {:?})",
        fleet.transport, sets[0], sets[1]
    );
    Ok(())
}

/// A pod's cluster address (`status.podIP`, its `eth0`).
async fn pod_ip(cluster: &fleetboard_tests::kube::Cluster, name: &str) -> anyhow::Result<String> {
    let p = Api::<Pod>::namespaced(cluster.client(), APPS)
        .get(name)
        .await?;
    p.status
        .and_then(|s| s.pod_ip)
        .ok_or_else(|| anyhow::anyhow!("pod {name} has no podIP"))
}

/// In each member, each node pings the other's underlay address, and each node's `before-`
/// pod fetches the other node's `before-` pod by its cluster address (`eth0`, the podCIDR
/// routes between nodes).
pub async fn node_to_node(fleet: &RealFleet) -> anyhow::Result<()> {
    let mut n = 0;
    for m in &fleet.members {
        for from in &m.nodes {
            for to in m.nodes.iter().filter(|t| t.name() != from.name()) {
                let (ns, addr) = (from.netns().name().to_string(), to.address().to_string());
                eventually(
                    &format!("{}: node {} pings node {}", m.id, from.name(), to.name()),
                    DEADLINE,
                    POLL,
                    || {
                        let (ns, addr) = (ns.clone(), addr.clone());
                        async move {
                            tokio::task::spawn_blocking(move || {
                                run(std::process::Command::new("ip").args([
                                    "netns", "exec", &ns, "ping", "-c", "1", "-W", "2", &addr,
                                ]))
                            })
                            .await??;
                            Ok(Some(()))
                        }
                    },
                )
                .await?;
                let target = format!("before-{}", to.name());
                let ip = pod_ip(&m.cluster, &target).await?;
                let got = pods::exec(
                    &m.cluster,
                    &format!("before-{}", from.name()),
                    &format!("timeout 10 wget -q -O - http://{ip}:8080/"),
                )
                .await?;
                anyhow::ensure!(
                    got.trim() == target,
                    "{}: before-{} fetched {target} at its pod address {ip} and got {got:?}",
                    m.id,
                    from.name()
                );
                n += 2;
            }
        }
    }
    eprintln!(
        "fleet {}: {n} node-to-node pings and pod-to-pod fetches by cluster address inside the members",
        fleet.transport
    );
    Ok(())
}

/// The first host of a block: a node's (or the hub's) tunnel address.
fn first_host(block: ipnet::Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(block.network()) + 1)
}

/// The hub's tunnel address: the first host of the hub Peer's block.
fn hub_tunnel_address(fleet: &RealFleet) -> anyhow::Result<Ipv4Addr> {
    let json = fleet.user.run(
        &fleet.hub_kubeconfig,
        &format!("kubectl get peers.fleetboard.io -n {NS} -o json"),
    )?;
    let doc: serde_json::Value = serde_json::from_str(&json)?;
    let block = doc["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["spec"]["isHub"] == true)
        .and_then(|p| p["status"]["allocatedCidrs"][0].as_str())
        .ok_or_else(|| anyhow::anyhow!("no hub Peer with an allocated block:\n{json}"))?;
    Ok(first_host(block.parse()?))
}

/// Every member node's tunnel address (the first host of its sub-block, on its agent's TUN)
/// and the hub's answer a ping from the `before-` pod of every other member node.
pub async fn tunnel_addresses(fleet: &RealFleet) -> anyhow::Result<()> {
    let mut targets = vec![("hub".to_string(), hub_tunnel_address(fleet)?)];
    for m in &fleet.members {
        for n in &m.nodes {
            let block = pods::node_cidr(&m.cluster, n.name()).await?;
            targets.push((n.name().to_string(), first_host(block)));
        }
    }
    let mut pings = 0;
    for m in &fleet.members {
        for from in &m.nodes {
            for (node, addr) in targets.iter().filter(|(t, _)| t != from.name()) {
                let out = pods::exec(
                    &m.cluster,
                    &format!("before-{}", from.name()),
                    &format!("ping -c 1 -W 2 {addr}"),
                )
                .await?;
                anyhow::ensure!(
                    out.contains("1 packets received"),
                    "{}: a pod on {} pinged {node}'s tunnel address {addr}:\n{out}",
                    m.id,
                    from.name()
                );
                pings += 1;
            }
        }
    }
    eprintln!(
        "fleet {}: {pings} pings of tunnel addresses ({}) from pods on every other node",
        fleet.transport,
        targets
            .iter()
            .map(|(n, a)| format!("{n} {a}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
