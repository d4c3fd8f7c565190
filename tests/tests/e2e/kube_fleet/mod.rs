//! The charts on real nodes, installed as a user installs them (issues 15 and 16), once per
//! transport, on the cluster set of [`fleetboard_tests::real_fleet`]: a hub cluster with one
//! node and two member clusters with two nodes each, both members on the same pod CIDR, the
//! charts installed from a chart repository on the user's laptop as the hub NOTES print them,
//! every node running the image built from the Dockerfile.
//!
//! Asserts: every pod of both charts (two hub replicas, an agent on every member node, the
//! DNS server) Ready, and still Ready with zero restarts 2 minutes later; one hub replica
//! labelled leader, the other standby; both members' Peers in the hub and Connected, every
//! column of `kubectl peers` filled (RTT for both transports) and its byte counters growing
//! with the traffic ([`peers`]); pods created before the agent chart (NRI Synchronize) and
//! after it get `eth-fleet` with an address of their node's sub-block, equal to their
//! annotation; every such pod fetches every other one's name over HTTP by its parallel
//! address, across members and between the nodes of one member
//! ([`fleetboard_tests::real_fleet::traffic`]); a Service exported from one member answers
//! the other's pods by its ClusterSetIP and by its `clusterset.local` name through CoreDNS;
//! inside each member nodes and pods still reach each other on the cluster's network, and
//! every node's tunnel address (the hub's too) answers pods on every other node ([`reach`]);
//! a deleted pod's address is released (plugin metrics); the gateway moves when its pod is
//! deleted and when its node is powered off, and both charts upgrade to a rebuilt image, under
//! traffic, with the outages measured and bounded and no allocation lost ([`moves`]); nothing
//! of the nodes is left afterwards.

mod moves;
mod peers;
mod reach;

use std::time::{Duration, Instant};

use fleetboard_tests::kube::Cluster;
use fleetboard_tests::netns::require_net_admin;
use fleetboard_tests::real_fleet::pods::{self, PodState, wait_all_ready};
use fleetboard_tests::real_fleet::{NS, RealFleet, RealFleetOptions, services, traffic};

/// How long every pod must stay Ready without a restart.
const HOLD: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charts_run_on_real_nodes_with_wg() {
    fleet_on_real_nodes("wg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charts_run_on_real_nodes_with_quic() {
    fleet_on_real_nodes("quic").await;
}

async fn fleet_on_real_nodes(transport: &'static str) {
    require_net_admin();
    let began = Instant::now();
    let say = |s: &str| eprintln!("fleet {transport}: {s}");
    // The nodes also get the rebuilt image the charts are upgraded to ([`moves`]).
    let opts = RealFleetOptions {
        extra_images: vec!["fleetboard-next"],
        ..RealFleetOptions::new(transport)
    };
    let mut fleet = RealFleet::start(opts, &say).await.unwrap();
    let busybox = fleet.image("busybox").unwrap();
    // Both members run their pods on the same range: nothing of FleetBoard may depend on
    // pod addresses being unique across clusters.
    reach::pod_cidrs_overlap(&fleet).await.unwrap();

    // Workload pods that exist before the agent chart (the NRI plugin handles them when it
    // registers: Synchronize).
    for m in &fleet.members {
        pods::create_apps_namespace(&m.cluster).await.unwrap();
        for n in &m.nodes {
            pods::create_sleeper(
                &m.cluster,
                &format!("before-{}", n.name()),
                n.name(),
                &busybox,
            )
            .await
            .unwrap();
        }
        wait_all_ready(&m.cluster, m.id, pods::APPS, m.nodes.len())
            .await
            .unwrap();
    }

    fleet.install_hub().unwrap();
    fleet.install_members().unwrap();
    let hub_pods = fleet.wait_chart_pods_ready().await.unwrap();
    say(&format!(
        "every chart pod Ready {:.1?} after the test began",
        began.elapsed()
    ));
    let roles: Vec<&str> = hub_pods
        .iter()
        .filter_map(|p| p.labels.get("fleetboard.io/hub-role").map(String::as_str))
        .collect();
    assert_eq!(
        {
            let mut r = roles.clone();
            r.sort();
            r
        },
        ["leader", "standby"],
        "hub pods: {hub_pods:#?}"
    );
    let (user, hub_kc) = (&fleet.user, &fleet.hub_kubeconfig);
    let peers = user
        .run(
            hub_kc,
            &format!("kubectl get peers.fleetboard.io -n {NS} -o name"),
        )
        .unwrap();
    for m in &fleet.members {
        assert!(peers.contains(m.id), "{} joined the hub: {peers}", m.id);
    }
    // ... and their tunnels are up, as `kubectl get peers` shows the user (CONNECTED).
    fleet.wait_connected().await.unwrap();

    // NRI: pods from before the plugin and after it get eth-fleet in their node's sub-block.
    for m in &fleet.members {
        for n in &m.nodes {
            pods::create_sleeper(
                &m.cluster,
                &format!("after-{}", n.name()),
                n.name(),
                &busybox,
            )
            .await
            .unwrap();
        }
    }
    let mut endpoints = Vec::new();
    let mut member_blocks = Vec::new();
    for m in &fleet.members {
        for n in &m.nodes {
            let block = pods::node_cidr(&m.cluster, n.name()).await.unwrap();
            if !member_blocks.iter().any(|(id, _)| *id == m.id) {
                member_blocks.push((m.id, block));
            }
            for when in ["before", "after"] {
                let pod = format!("{when}-{}", n.name());
                let ip = pods::eth_fleet_address(&m.cluster, &pod).await.unwrap();
                assert!(
                    block.contains(&ip),
                    "{}: pod {pod} has {ip} on eth-fleet, outside its node's block {block}",
                    m.id
                );
                eprintln!(
                    "fleet {transport}: {}/{pod}: eth-fleet {ip} in {block}",
                    m.id
                );
                if when == "before" {
                    endpoints.push(traffic::Endpoint {
                        member: m.id,
                        cluster: &m.cluster,
                        pod,
                        ip,
                    });
                }
            }
        }
    }

    // `kubectl peers` on the hub: every column of every member's row.
    let peers_check = || async { peers::check(user, hub_kc, &member_blocks, transport).map(Some) };
    let before = fleetboard_tests::kube::eventually(
        "kubectl peers: every member Connected with live state",
        pods::DEADLINE,
        pods::POLL,
        peers_check,
    )
    .await
    .unwrap();

    // Pods talk over TCP by their parallel addresses: across members through both gateways
    // and the hub, and between the two nodes of one member, from gateway and non-gateway nodes.
    for e in &endpoints {
        traffic::serve_name(e.cluster, &e.pod).await.unwrap();
    }
    let talked = Instant::now();
    let exchanges = traffic::all_pairs(&endpoints).await.unwrap();
    eprintln!(
        "fleet {transport}: {exchanges} pod-to-pod HTTP exchanges by parallel address in {:.1?}",
        talked.elapsed()
    );

    // A Service exported from member B, reached from member A's pods by its ClusterSetIP and,
    // once CoreDNS forwards the zone as the member NOTES say, by its clusterset.local name.
    let (members, a_kc, b_kc) = (
        &fleet.members,
        &fleet.members[0].kubeconfig,
        &fleet.members[1].kubeconfig,
    );
    let servers: Vec<String> = members[1]
        .nodes
        .iter()
        .map(|n| format!("before-{}", n.name()))
        .collect();
    let server_refs: Vec<&str> = servers.iter().map(String::as_str).collect();
    services::export_web(user, b_kc, &server_refs).unwrap();
    let vip = services::clusterset_ip(user, a_kc).await.unwrap();
    services::forward_clusterset_zone(user, a_kc, &members[0].notes).unwrap();
    let name = format!("{}.{}.svc.clusterset.local", services::SERVICE, pods::APPS);
    for n in &members[0].nodes {
        let client = format!("before-{}", n.name());
        for host in [vip.as_str(), name.as_str()] {
            let url = format!("http://{host}:{}/", services::PORT);
            let body = pods::exec(
                &members[0].cluster,
                &client,
                &format!("timeout 10 wget -q -O - {url}"),
            )
            .await
            .unwrap();
            assert!(
                servers.iter().any(|s| body.trim() == s),
                "{client} fetched {url} and got {body:?}, not one of {servers:?}"
            );
            eprintln!(
                "fleet {transport}: member-a/{client}: {url} answered by {}",
                body.trim()
            );
        }
    }

    // The traffic shows in `kubectl peers`: both byte counters of every member grew.
    fleetboard_tests::kube::eventually(
        "kubectl peers: every member's RX and TX grew with the traffic",
        pods::DEADLINE,
        pods::POLL,
        || async {
            let now = peers::check(user, hub_kc, &member_blocks, transport)?;
            Ok(now
                .iter()
                .zip(&before)
                .all(|(n, b)| n.rx > b.rx && n.tx > b.tx)
                .then_some(()))
        },
    )
    .await
    .unwrap();

    // Nodes and pods of one member still reach each other on the cluster's own network, and
    // every node's tunnel address answers pods on every other node of the cluster set.
    reach::node_to_node(&fleet).await.unwrap();
    reach::tunnel_addresses(&fleet).await.unwrap();

    // Deleting a pod releases its address.
    let m = &members[0];
    let node = m.nodes[1].name().to_string();
    let agents = pods::pods(&m.cluster, NS).await.unwrap();
    let agent = agents
        .iter()
        .find(|p| p.node == node && p.name.starts_with("fleetboard-agent-"))
        .unwrap()
        .name
        .clone();
    let allocated = pods::nri_metric(&m.cluster, &agent, "fleetboard_nri_allocations")
        .await
        .unwrap();
    let released = pods::nri_metric(&m.cluster, &agent, "fleetboard_nri_pods_released_total")
        .await
        .unwrap();
    // The before and after pods hold addresses, and so does any other pod the scheduler put
    // on this node (CoreDNS, restarted above, may land here).
    assert!(
        allocated >= 2,
        "{node}: the before and after pods hold addresses, the plugin counts {allocated}"
    );
    pods::delete_pod(&m.cluster, &format!("after-{node}"))
        .await
        .unwrap();
    fleetboard_tests::kube::eventually(
        &format!("{node}: the deleted pod's address released"),
        pods::DEADLINE,
        pods::POLL,
        || {
            let (cluster, agent) = (&m.cluster, agent.clone());
            async move {
                let now = pods::nri_metric(cluster, &agent, "fleetboard_nri_allocations").await?;
                let rel =
                    pods::nri_metric(cluster, &agent, "fleetboard_nri_pods_released_total").await?;
                Ok((now == allocated - 1 && rel > released).then_some(()))
            }
        },
    )
    .await
    .unwrap();

    // Still Ready, still no restart, the same pods, HOLD after they all were Ready.
    let ready_at = Instant::now();
    let mut expected: Vec<(&str, &Cluster, Vec<PodState>)> =
        vec![("hub", &fleet.hub, pods::pods(&fleet.hub, NS).await.unwrap())];
    for m in &fleet.members {
        expected.push((m.id, &m.cluster, pods::pods(&m.cluster, NS).await.unwrap()));
    }
    while ready_at.elapsed() < HOLD {
        tokio::time::sleep(Duration::from_secs(5)).await;
        for (what, cluster, before) in &expected {
            let now = pods::pods(cluster, NS).await.unwrap();
            for p in &now {
                assert!(
                    p.ready && p.restarts == 0,
                    "{what}: pod {} not Ready or restarted after {:.0?}: {p:?}\n{}",
                    p.name,
                    ready_at.elapsed(),
                    pods::describe(cluster, NS, &p.name)
                );
            }
            let uids = |v: &[PodState]| {
                let mut u: Vec<String> = v.iter().map(|p| p.uid.clone()).collect();
                u.sort();
                u
            };
            assert_eq!(uids(&now), uids(before), "{what}: the pods were replaced");
        }
    }
    say(&format!(
        "every chart pod Ready with 0 restarts for {HOLD:?}, {:.1?} after the test began",
        began.elapsed()
    ));

    // The gateway moves (its pod deleted, then later its node powered off), and both charts
    // are upgraded to a rebuilt image, while a pod keeps fetching from the other member.
    let outages = moves::run(&fleet, &endpoints).await.unwrap();
    say(&format!(
        "outages: {outages}; test took {:.1?}",
        began.elapsed()
    ));

    drop(endpoints);
    let left = fleet.shutdown();
    assert!(left.is_empty(), "left behind: {left:?}");
}
