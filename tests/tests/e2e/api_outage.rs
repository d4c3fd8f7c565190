//! API outages (issue 18 item 4): the hub's API server, then a member's, stop (SIGKILL) for
//! the outage time and start again on the same port and etcd data. A hub cluster and two
//! member clusters (real API servers, `fleetboard hub` and one `fleetboard agent` per node,
//! real dataplanes in network namespaces, wg) carry a steady TCP stream between the two
//! members' gateways the whole time.
//!
//! Asserted: the stream never breaks and its bytes arrive intact (the longest gap between two
//! reads is printed and bounded); no fleetboard process exits; an agent restarted during each
//! outage brings its node's tunnel back from its saved state and passes traffic while the
//! API is still down; after the API returns, a change made at once (a new Peer in the hub, a
//! new Node in the member) is seen by the hub and the gateways within a bound that is
//! printed. CI runs 15 s outages; `FLEETBOARD_LONG=1` runs the 60 s.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use fleetboard_control::crd::all_crds;
use fleetboard_control::crd::peer::Peer;
use fleetboard_dataplane::core::SecretKey;
use fleetboard_tests::fleet::{DEADLINE, Fleet, FleetOptions, NAMESPACE, POLL};
use fleetboard_tests::kube::eventually;
use fleetboard_tests::process::wait_for;
use fleetboard_tests::steady_stream::SteadyStream;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use serde_json::json;

/// Outage length in CI.
const OUTAGE_CI: Duration = Duration::from_secs(15);
/// Outage length with `FLEETBOARD_LONG=1` (the figure).
const OUTAGE_LONG: Duration = Duration::from_secs(60);
/// Port of the steady stream.
const STREAM_PORT: u16 = 5301;
/// Longest gap the stream may show (it is expected to show none: nothing touches the
/// dataplanes; loose for a busy 2-core machine).
const MAX_GAP: Duration = Duration::from_secs(5);
/// A change made after the API returns must be seen everywhere within this (loose).
const CONVERGE_WITHIN: Duration = Duration::from_secs(30);

fn outage() -> Duration {
    if std::env::var("FLEETBOARD_LONG").is_ok_and(|v| v == "1") {
        OUTAGE_LONG
    } else {
        OUTAGE_CI
    }
}

fn random_public_key() -> String {
    let mut b = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut b).unwrap();
    SecretKey::from_random_bytes(b).public_key().to_base64()
}

/// Fails (with the logs) unless every hub replica and agent process still runs.
fn assert_all_running(f: &mut Fleet, when: &str) {
    let mut dead = Vec::new();
    for r in &mut f.hub.replicas {
        match r.process.as_mut().map(|p| p.try_wait()) {
            Some(None) => {}
            other => dead.push(format!("hub {} ({other:?})", r.identity)),
        }
    }
    for n in &mut f.nodes {
        match n.agent.as_mut().map(|p| p.try_wait()) {
            Some(None) => {}
            other => dead.push(format!("agent {} ({other:?})", n.name)),
        }
    }
    assert!(
        dead.is_empty(),
        "{when}: processes exited: {dead:?}\n{}",
        f.logs()
    );
}

/// The TUN address of every node, once allocated.
async fn tun_ip(f: &Fleet, node: &str) -> Ipv4Addr {
    eventually(&format!("{node} has a TUN address"), DEADLINE, POLL, || {
        f.tun_ip(node)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()))
    .parse()
    .unwrap()
}

fn wait_ping(f: &Fleet, from: &str, to: Ipv4Addr, deadline: Duration) -> Duration {
    let began = Instant::now();
    let node = &f.nodes[f.node(from)];
    wait_for(&format!("{from} ping {to}"), deadline, POLL, || {
        Ok(node.ping_once(&to.to_string()).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    began.elapsed()
}

/// True when the dataplane behind `socket` has a peer with `key`.
fn has_peer(f: &Fleet, socket: &std::path::Path, key: &str) -> anyhow::Result<bool> {
    let show = f.dataplane_show(socket)?;
    Ok(show["peers"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["public_key"] == key)))
}

/// Kills node `n`'s agent while its API is down and starts it again: it must bring its
/// tunnel back from its saved config and pass traffic to `ping` (through both gateways and
/// the hub) before the API returns. Returns how long until the ping answered.
fn restart_agent_during_outage(f: &mut Fleet, node: &str, ping: Ipv4Addr) -> Duration {
    let n = f.node(node);
    let began = Instant::now();
    f.kill_agent(n);
    f.start_agent(n).unwrap();
    let back = wait_ping(f, node, ping, Duration::from_secs(40));
    let log = f.nodes[n].log();
    assert!(
        log.contains("started the dataplane from the config saved before the restart"),
        "{node} did not start from its saved config:\n{log}"
    );
    assert_eq!(
        f.agent_probe(n, "/ready"),
        Some(200),
        "{node}: a node passing traffic on its saved config is ready"
    );
    println!(
        "{node}: restarted during the outage, passing traffic after {:.1?}",
        began.elapsed()
    );
    back
}

struct Figures {
    restarted_back: Duration,
    converged: Duration,
    api_ready: Duration,
}

/// The hub's API server is down for `outage`; member a's non-gateway agent restarts during
/// it. After it returns, a new Peer must get a block and reach both gateways' dataplanes.
async fn hub_outage(f: &mut Fleet, a_other: &str, b_other_ip: Ipv4Addr, gws: [&str; 2]) -> Figures {
    let outage = outage();
    let began = Instant::now();
    f.hub.cluster.stop_apiserver();
    tokio::time::sleep(outage / 3).await;
    let restarted_back = restart_agent_during_outage(f, a_other, b_other_ip);
    assert!(
        began.elapsed() < outage,
        "the restarted agent took too long: the outage is over"
    );
    tokio::time::sleep(outage.saturating_sub(began.elapsed())).await;
    assert_all_running(f, "end of the hub API outage");
    let api_ready = f.hub.cluster.start_apiserver().await.unwrap();

    // A new member appears in the hub right after the API is back.
    let returned = Instant::now();
    let key = random_public_key();
    let peer: Peer = serde_json::from_value(json!({
        "apiVersion": "fleetboard.io/v1alpha1", "kind": "Peer",
        "metadata": { "name": "c", "namespace": NAMESPACE },
        "spec": { "clusterId": "c", "publicKey": key, "endpoint": "198.18.0.99" },
    }))
    .unwrap();
    let peers = Api::<Peer>::namespaced(f.hub.cluster.client(), NAMESPACE);
    eventually("creating Peer c", DEADLINE, POLL, || async {
        Ok(peers
            .create(&PostParams::default(), &peer)
            .await
            .ok()
            .map(|_| ()))
    })
    .await
    .unwrap();
    eventually("Peer c gets a block", CONVERGE_WITHIN, POLL, || async {
        Ok(peers
            .get_opt("c")
            .await?
            .and_then(|p| p.status)
            .filter(|s| !s.allocated_cidrs.is_empty())
            .map(|_| ()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    let hub_socket = f.hub.replicas[0].socket();
    let sockets: Vec<_> = gws.iter().map(|g| f.nodes[f.node(g)].socket()).collect();
    wait_for(
        "the hub and both gateways serve c",
        CONVERGE_WITHIN,
        POLL,
        || {
            for s in std::iter::once(&hub_socket).chain(sockets.iter()) {
                if !has_peer(f, s, &key)? {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    Figures {
        restarted_back,
        converged: returned.elapsed(),
        api_ready,
    }
}

/// Member b's API server is down for `outage`; b's non-gateway agent restarts during it.
/// After it returns, a new Node must get a sub-block from b's gateway and reach its dataplane.
async fn member_outage(f: &mut Fleet, b_other: &str, a_other_ip: Ipv4Addr, b_gw: &str) -> Figures {
    let outage = outage();
    let began = Instant::now();
    f.members[1].cluster.stop_apiserver();
    tokio::time::sleep(outage / 3).await;
    let restarted_back = restart_agent_during_outage(f, b_other, a_other_ip);
    assert!(
        began.elapsed() < outage,
        "the restarted agent took too long: the outage is over"
    );
    tokio::time::sleep(outage.saturating_sub(began.elapsed())).await;
    assert_all_running(f, "end of member b's API outage");
    let api_ready = f.members[1].cluster.start_apiserver().await.unwrap();

    // A new node joins member b right after its API is back.
    let returned = Instant::now();
    let key = random_public_key();
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": "b9", "annotations": {
            "fleetboard.io/public-key": key,
            "fleetboard.io/tunnel-ip": "198.18.0.98",
        }},
    }))
    .unwrap();
    let nodes = Api::<Node>::all(f.members[1].cluster.client());
    eventually("creating Node b9", DEADLINE, POLL, || async {
        Ok(nodes
            .create(&PostParams::default(), &node)
            .await
            .ok()
            .map(|_| ()))
    })
    .await
    .unwrap();
    eventually("b9 gets a sub-block", CONVERGE_WITHIN, POLL, || async {
        Ok(f.node_cidrs(1).await?.get("b9").map(|_| ()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    let socket = f.nodes[f.node(b_gw)].socket();
    wait_for("b's gateway serves b9", CONVERGE_WITHIN, POLL, || {
        Ok(has_peer(f, &socket, &key)?.then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    Figures {
        restarted_back,
        converged: returned.elapsed(),
        api_ready,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_outages_leave_traffic_and_processes_running_and_converge_after_wg() {
    let started = Instant::now();
    let opts = FleetOptions {
        transport: "wg",
        ..Default::default()
    };
    let mut f = Fleet::start(opts, all_crds()).await.unwrap();
    let mut ips = std::collections::BTreeMap::new();
    for n in ["a1", "a2", "b1", "b2"] {
        ips.insert(n, tun_ip(&f, n).await);
    }
    let a_gw = eventually("a has a gateway", DEADLINE, POLL, || f.gateway(0))
        .await
        .unwrap();
    let b_gw = eventually("b has a gateway", DEADLINE, POLL, || f.gateway(1))
        .await
        .unwrap();
    let other = |gw: &str, m: char| {
        if gw.ends_with('1') {
            format!("{m}2")
        } else {
            format!("{m}1")
        }
    };
    let (a_other, b_other) = (other(&a_gw, 'a'), other(&b_gw, 'b'));
    let ip = |n: &str| ips[n];
    wait_ping(&f, &a_other, ip(&b_other), DEADLINE);
    wait_ping(&f, &a_gw, ip(&b_gw), DEADLINE);

    // The steady stream between the two gateways, for the whole test.
    let stream = SteadyStream::start(
        &f.nodes[f.node(&a_gw)].ns,
        &f.nodes[f.node(&b_gw)].ns,
        ip(&b_gw),
        STREAM_PORT,
    )
    .unwrap();
    wait_for("the stream flows", DEADLINE, POLL, || {
        Ok((stream.received() > 64 * 1024).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    let setup = started.elapsed();

    let hub = hub_outage(&mut f, &a_other, ip(&b_other), [&a_gw, &b_gw]).await;
    assert!(
        stream.running(),
        "the stream broke during the hub API outage\n{}",
        f.logs()
    );
    let gap_after_hub = stream.longest_gap();
    let member = member_outage(&mut f, &b_other, ip(&a_other), &b_gw).await;
    assert!(
        stream.running(),
        "the stream broke during member b's API outage\n{}",
        f.logs()
    );
    assert_all_running(&mut f, "after both outages");
    // The restarted agents passed traffic on their saved state; they still do now.
    wait_ping(&f, &a_other, ip(&b_other), DEADLINE);

    let report = stream
        .finish()
        .unwrap_or_else(|e| panic!("{e:#}\n{}", f.logs()));
    let outage = outage();
    println!(
        "api outages ({:?} each, wg): stream {} KiB over {:.1?}, intact, longest gap {:.0?} \
         (after the hub outage {:.0?}); hub API ready {:.1?} after restart, restarted agent {} \
         passing traffic {:.1?} after its restart, new Peer seen by the hub and both gateways \
         {:.1?} after the hub API was ready; member API ready {:.1?} after restart, restarted \
         agent {} passing traffic {:.1?} after its restart, new Node served by b's gateway \
         {:.1?} after the member API was ready; fleet setup {:.1?}, total {:.1?}",
        outage,
        report.received / 1024,
        report.ran,
        report.longest_gap,
        gap_after_hub,
        hub.api_ready,
        a_other,
        hub.restarted_back,
        hub.converged,
        member.api_ready,
        b_other,
        member.restarted_back,
        member.converged,
        setup,
        started.elapsed(),
    );
    assert!(
        report.longest_gap < MAX_GAP,
        "the stream stalled for {:?}\n{}",
        report.longest_gap,
        f.logs()
    );
    for (what, t) in [("hub", hub.converged), ("member", member.converged)] {
        assert!(
            t < CONVERGE_WITHIN,
            "{what}: converged after {t:?}\n{}",
            f.logs()
        );
    }
}
