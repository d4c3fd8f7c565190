//! Soak (issue 18 item 6): a hub and two members (real apiservers, `fleetboard hub` and one
//! `fleetboard agent` per node as processes in network namespaces) under mixed traffic and
//! churn for a while: TCP transfers between every pair of nodes across the members (bytes
//! checked), Services exported and unexported and their pods replaced in member b, and
//! member a's gateway killed (and its agent restarted) at a fixed interval, so that the
//! gateway moves between a's nodes.
//!
//! What a user would check on a long-running gateway, asserted here:
//! - resident memory of the processes that live the whole run (the hub, both agents of b)
//!   grows less than 5 % from the first sample taken after one full cycle of every event
//!   (plus 1 MiB of allocator slack for these small processes);
//! - open file descriptors stay flat (at most 2 more: a reconnected watch may hold one);
//! - no drop counter of any dataplane grows while nothing moves (between the traffic after a
//!   gateway move has settled and the next move): drops are the price of a move only;
//! - every transfer arrives intact, and the imports in member a match b's final exports.
//!
//! CI runs 75 s with a move every 25 s; `FLEETBOARD_LONG=1` runs the 10 minutes with
//! a move each minute (figures in docs/RELIABILITY.md).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::control_cluster::{ip_of, joined, tcp_transfer, wait_ping};
use crate::mcs_support::{
    await_import, await_no_import, create_namespace, create_pod, create_service, export, unexport,
};
use fleetboard_control::crd::{all_crds, member_crds};
use fleetboard_dataplane::core::DropReason;
use fleetboard_tests::fleet::{DEADLINE, Fleet, FleetOptions, POLL, install_crds};
use fleetboard_tests::kube::eventually;
use fleetboard_tests::process::wait_for;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};

const NS: &str = "soak";
/// Services churned in member b.
const SERVICES: usize = 4;

/// How long the soak runs and how often the gateway moves.
struct Plan {
    run: Duration,
    move_every: Duration,
}

impl Plan {
    fn from_env() -> Self {
        if std::env::var_os("FLEETBOARD_LONG").is_some() {
            Plan {
                run: Duration::from_secs(600),
                move_every: Duration::from_secs(60),
            }
        } else {
            Plan {
                run: Duration::from_secs(75),
                move_every: Duration::from_secs(25),
            }
        }
    }
}

/// Resident memory (KiB) and open file descriptors of a process.
#[derive(Debug, Clone, Copy)]
struct Usage {
    rss_kib: u64,
    fds: usize,
}

fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("process {pid} is gone: {e}"));
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/<pid>/fd")
        .count();
    Usage { rss_kib, fds }
}

/// The processes that live the whole run: the hub and member b's agents.
fn watched(f: &Fleet) -> Vec<(String, u32)> {
    let mut out = vec![(
        "hub".to_string(),
        f.hub.replicas[0].process.as_ref().expect("hub runs").id(),
    )];
    for n in f.nodes.iter().filter(|n| n.member == 1) {
        out.push((n.name.clone(), n.agent.as_ref().expect("agent runs").id()));
    }
    out
}

/// Every dataplane's drop counters, by dataplane and reason.
fn drops(f: &Fleet) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut sockets = vec![("hub".to_string(), f.hub.replicas[0].socket())];
    sockets.extend(f.nodes.iter().map(|n| (n.name.clone(), n.socket())));
    sockets
        .into_iter()
        .map(|(name, socket)| {
            let show = f
                .dataplane_show(&socket)
                .unwrap_or_else(|e| panic!("{name}: dataplane show: {e}\n{}", f.logs()));
            let counts = show["drops"].as_array().expect("drops array").clone();
            let by_reason = DropReason::ALL
                .iter()
                .zip(counts)
                .map(|(r, c)| (format!("{r:?}"), c.as_u64().unwrap_or(0)))
                .filter(|(_, c)| *c > 0)
                .collect();
            (name, by_reason)
        })
        .collect()
}

/// Member b's churn: one step toggles the export of one Service and replaces its pod.
struct Churn {
    client: kube::Client,
    endpoint_ip: String,
    exported: [bool; SERVICES],
    step: usize,
    pods_replaced: usize,
}

impl Churn {
    async fn step(&mut self) {
        let i = self.step % SERVICES;
        self.step += 1;
        let name = format!("svc-{i}");
        if self.exported[i] {
            unexport(&self.client, NS, &name).await;
        } else {
            export(&self.client, NS, &name).await;
        }
        self.exported[i] = !self.exported[i];
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        let pod = format!("{name}-pod");
        pods.delete(&pod, &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
        eventually("old pod gone", DEADLINE, POLL, || async {
            Ok(pods.get_opt(&pod).await?.is_none().then_some(()))
        })
        .await
        .unwrap();
        create_pod(&self.client, NS, &pod, &name, &self.endpoint_ip, true).await;
        self.pods_replaced += 1;
    }
}

/// Kills member a's gateway agent, waits for the other node to take over and traffic from b
/// to reach it, restarts the killed agent and waits for it to rejoin.
async fn move_gateway(f: &mut Fleet, ips: &[(String, String)]) -> (String, Duration) {
    let gw = f.gateway(0).await.unwrap().expect("a has a gateway");
    let other = if gw == "a1" { "a2" } else { "a1" };
    let killed = Instant::now();
    f.kill_agent(f.node(&gw));
    eventually("a's gateway moves", DEADLINE, POLL, || async {
        Ok((f.gateway(0).await?.as_deref() == Some(other)).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    wait_ping(f, "b1", ip_of(ips, other), DEADLINE);
    let took = killed.elapsed();
    f.start_agent(f.node(&gw)).unwrap();
    for from in ["b1", "b2", other] {
        wait_ping(f, from, ip_of(ips, &gw), DEADLINE);
    }
    (format!("{gw} -> {other}"), took)
}

/// Waits until no drop counter changes across a few seconds of traffic; returns them.
fn settled_drops(f: &Fleet, ips: &[(String, String)]) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut last = drops(f);
    wait_for("drop counters settle", DEADLINE, POLL, || {
        for (from, to) in [("b1", "a1"), ("b2", "a2"), ("a1", "b2"), ("a2", "b1")] {
            f.nodes[f.node(from)].ping_once(ip_of(ips, to));
        }
        let now = drops(f);
        let same = now == last;
        last = now;
        Ok(same.then(|| last.clone()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_descriptors_stay_flat_and_nothing_drops_under_traffic_and_churn() {
    let plan = Plan::from_env();
    let mut f = Fleet::start(FleetOptions::default(), all_crds())
        .await
        .unwrap();
    for m in &f.members {
        install_crds(&m.cluster.client(), member_crds())
            .await
            .unwrap();
    }
    let ips = joined(&f).await;
    let b = f.members[1].cluster.client();
    create_namespace(&f.members[0].cluster.client(), NS).await;
    create_namespace(&b, NS).await;
    for i in 0..SERVICES {
        let name = format!("svc-{i}");
        create_service(&b, NS, &name, &[("tcp", 80, 8080, "TCP")], false).await;
        create_pod(
            &b,
            NS,
            &format!("{name}-pod"),
            &name,
            ip_of(&ips, "b2"),
            true,
        )
        .await;
    }
    let mut churn = Churn {
        client: b.clone(),
        endpoint_ip: ip_of(&ips, "b2").to_string(),
        exported: [false; SERVICES],
        step: 0,
        pods_replaced: 0,
    };

    let pairs = [("b1", "a1"), ("a2", "b2"), ("b2", "a2"), ("a1", "b1")];
    let start = Instant::now();
    let mut next_move = start + plan.move_every;
    let mut moves = Vec::new();
    let mut transfers = 0usize;
    let mut baseline: Option<Vec<Usage>> = None;
    let mut peak: Vec<u64> = vec![0; watched(&f).len()];
    let mut quiet = settled_drops(&f, &ips);
    let mut quiet_windows = 0usize;
    while start.elapsed() < plan.run {
        if Instant::now() >= next_move {
            // The window since the last move ends: nothing may have dropped in it.
            let now = drops(&f);
            assert_eq!(
                now,
                quiet,
                "drop counters grew while nothing moved (transfers {transfers})\n{}",
                f.logs()
            );
            quiet_windows += 1;
            moves.push(move_gateway(&mut f, &ips).await);
            quiet = settled_drops(&f, &ips);
            next_move = Instant::now() + plan.move_every;
            if baseline.is_none() {
                // One cycle of every event has run: memory from here on is steady state.
                baseline = Some(watched(&f).iter().map(|(_, p)| usage(*p)).collect());
            }
        }
        let (from, to) = pairs[transfers % pairs.len()];
        tcp_transfer(&f, from, to, ip_of(&ips, to));
        transfers += 1;
        churn.step().await;
        for (i, (_, pid)) in watched(&f).iter().enumerate() {
            peak[i] = peak[i].max(usage(*pid).rss_kib);
        }
    }
    assert_eq!(drops(&f), quiet, "drop counters grew in the last window");
    quiet_windows += 1;

    // b's final exports are exactly a's imports.
    let a = f.members[0].cluster.client();
    for (i, exported) in churn.exported.iter().enumerate() {
        let name = format!("svc-{i}");
        if *exported {
            await_import(&a, NS, &name, "exported service imported in a", |imp| {
                !imp.spec.ips.is_empty()
            })
            .await;
        } else {
            await_no_import(&a, NS, &name, "unexported service gone from a").await;
        }
    }

    let baseline = baseline.expect("at least one gateway move ran");
    println!(
        "soak ({} transport, {:.0?}): {transfers} transfers of 512 KiB intact, {} churn steps ({} pods replaced), {} gateway moves {:?}, {quiet_windows} quiet windows without drops",
        f.transport,
        start.elapsed(),
        churn.step,
        churn.pods_replaced,
        moves.len(),
        moves
            .iter()
            .map(|(m, t)| format!("{m} in {t:.1?}"))
            .collect::<Vec<_>>(),
    );
    let mut failures = Vec::new();
    for (i, (name, pid)) in watched(&f).iter().enumerate() {
        let (before, after) = (baseline[i], usage(*pid));
        let growth = after.rss_kib as f64 / before.rss_kib as f64 - 1.0;
        println!(
            "  {name}: RSS {} -> {} KiB ({:+.1} %, peak {} KiB), fds {} -> {}",
            before.rss_kib,
            after.rss_kib,
            growth * 100.0,
            peak[i],
            before.fds,
            after.fds
        );
        if after.rss_kib > before.rss_kib + before.rss_kib / 20 + 1024 {
            failures.push(format!("{name} memory grew {:+.1} %", growth * 100.0));
        }
        if after.fds > before.fds + 2 {
            failures.push(format!("{name} fds {} -> {}", before.fds, after.fds));
        }
    }
    assert!(failures.is_empty(), "{failures:?}\n{}", f.logs());
}
