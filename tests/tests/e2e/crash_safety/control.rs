//! SIGKILLs of `fleetboard hub` and the member agents while allocations change: a hub and
//! members `a` and `b` with two agent nodes each (real apiservers, processes in network
//! namespaces: `fleetboard_tests::fleet`). Churn between kills: clusters join and leave the
//! hub (Peers of stand-in clusters), nodes join and leave the members (Node objects the
//! gateway gives sub-blocks to), Services are exported and unexported (ClusterSetIPs in every
//! member). Each kill hits a random process at a random moment after a churn step; the process
//! restarts at once, or (sometimes, for a gateway) only after another node took the Lease.
//!
//! After every kill the allocations in the API must hold no duplicate; after the last one and
//! a convergence wait, each owner holds exactly one allocation, the founding owners the ones
//! they had before the first kill, removed owners nothing; once every process is back (hub
//! leading, agents ready) the members ping each other through the tunnel and the allocations
//! are still the same.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::{long_run, seeded_rng};
use crate::mcs_support::{create_namespace, create_service, export, unexport};
use fleetboard_control::crd::mcs::ServiceImport;
use fleetboard_control::crd::peer::Peer;
use fleetboard_control::crd::{all_crds, member_crds};
use fleetboard_dataplane::core::SecretKey;
use fleetboard_tests::fleet::{
    DEADLINE, Fleet, FleetOptions, NAMESPACE, POLL, TUNNEL_CIDR, install_crds,
};
use fleetboard_tests::kube::eventually;
use fleetboard_tests::process::wait_for;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, DeleteParams, PostParams};

/// Namespace of the churned Services (exists in both members).
const NS: &str = "crash";
/// The members' ClusterSetIP block (the agents' default `--service-cidr`).
const SERVICE_BLOCK: &str = "100.127.0.0/16";
/// A Service exported from `a` for the whole run: its ClusterSetIPs must never change.
const STEADY: &str = "steady";
/// Convergence after the last kill (restarted processes relist, re-elect, re-plan).
const CONVERGE: Duration = Duration::from_secs(180);
/// Bounds of the churn, so the test stays small.
const MAX_STAND_INS: usize = 6;
const MAX_EXTRA_NODES: usize = 3;
const MAX_SERVICES: usize = 6;

/// What the test made and has not removed: the world the API must converge to.
#[derive(Default)]
struct Expected {
    stand_ins: BTreeSet<String>,
    /// Per member: Node objects added (no agent runs on them).
    extra_nodes: [BTreeSet<String>; 2],
    /// Exported Services in [`NS`] by name, with their member.
    services: BTreeMap<String, usize>,
    next: usize,
}

/// The allocations as the API holds them.
#[derive(Debug, Clone, PartialEq)]
struct Allocations {
    /// Every Peer's `status.allocatedCidrs` (the hub's own included).
    blocks: BTreeMap<String, Vec<IpNet>>,
    /// Per member: each Node's `fleetboard.io/node-cidr` (`None`: not yet).
    sub_blocks: [BTreeMap<String, Option<IpNet>>; 2],
    /// Per member: the ClusterSetIPs of each ServiceImport in [`NS`].
    vips: [BTreeMap<String, Vec<String>>; 2],
}

async fn read_allocations(f: &Fleet) -> anyhow::Result<Allocations> {
    let peers = Api::<Peer>::namespaced(f.hub.cluster.client(), NAMESPACE)
        .list(&Default::default())
        .await?;
    let blocks = peers
        .items
        .iter()
        .map(|p| {
            let list = p.status.as_ref().map(|s| s.allocated_cidrs.clone());
            let nets = list
                .unwrap_or_default()
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect();
            (p.metadata.name.clone().unwrap_or_default(), nets)
        })
        .collect();
    let mut sub_blocks: [BTreeMap<String, Option<IpNet>>; 2] = Default::default();
    let mut vips: [BTreeMap<String, Vec<String>>; 2] = Default::default();
    for m in 0..2 {
        let client = f.members[m].cluster.client();
        for n in Api::<Node>::all(client.clone())
            .list(&Default::default())
            .await?
        {
            let cidr = n
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("fleetboard.io/node-cidr"))
                .and_then(|c| c.parse().ok());
            sub_blocks[m].insert(n.metadata.name.unwrap_or_default(), cidr);
        }
        for i in Api::<ServiceImport>::namespaced(client, NS)
            .list(&Default::default())
            .await?
        {
            vips[m].insert(i.metadata.name.unwrap_or_default(), i.spec.ips);
        }
    }
    Ok(Allocations {
        blocks,
        sub_blocks,
        vips,
    })
}

fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Allocations held twice, at any moment (even mid-churn there must be none).
fn duplicates(al: &Allocations) -> Vec<String> {
    let mut out = Vec::new();
    let all: Vec<(&String, &IpNet)> = al
        .blocks
        .iter()
        .flat_map(|(p, bs)| bs.iter().map(move |b| (p, b)))
        .collect();
    for (i, (p, b)) in all.iter().enumerate() {
        for (q, c) in &all[i + 1..] {
            if overlap(b, c) {
                out.push(format!("cluster block {b} of {p} overlaps {c} of {q}"));
            }
        }
    }
    for m in 0..2 {
        let subs: Vec<(&String, &IpNet)> = al.sub_blocks[m]
            .iter()
            .filter_map(|(n, c)| c.as_ref().map(|c| (n, c)))
            .collect();
        for (i, (n, b)) in subs.iter().enumerate() {
            for (o, c) in &subs[i + 1..] {
                if overlap(b, c) {
                    out.push(format!(
                        "member {m}: sub-block {b} of {n} overlaps {c} of {o}"
                    ));
                }
            }
        }
        let mut seen: BTreeMap<&String, &String> = BTreeMap::new();
        for (svc, ips) in &al.vips[m] {
            for ip in ips {
                if let Some(other) = seen.insert(ip, svc) {
                    out.push(format!(
                        "member {m}: ClusterSetIP {ip} of {svc} and {other}"
                    ));
                }
            }
        }
    }
    out
}

/// What keeps `al` from being the converged state for `exp`, given the founding allocations
/// `base` (empty when converged).
fn not_converged(
    al: &Allocations,
    exp: &Expected,
    base: &Allocations,
    members: &[&str],
) -> Vec<String> {
    let mut out = duplicates(al);
    let pool: IpNet = TUNNEL_CIDR.parse().expect("tunnel CIDR");
    let reserved: IpNet = SERVICE_BLOCK.parse().expect("service block");
    let mut want_peers: BTreeSet<String> = exp.stand_ins.clone();
    want_peers.extend(base.blocks.keys().cloned());
    let have_peers: BTreeSet<String> = al.blocks.keys().cloned().collect();
    if have_peers != want_peers {
        out.push(format!("Peers {have_peers:?}, want {want_peers:?}"));
    }
    for (p, bs) in &al.blocks {
        if let Some(was) = base.blocks.get(p)
            && was != bs
        {
            out.push(format!("founding Peer {p} held {was:?}, now {bs:?}"));
        }
        let ok = bs.len() == 1
            && bs[0].prefix_len() == 16
            && pool.contains(&bs[0])
            && !overlap(&bs[0], &reserved);
        if !ok && p != "hub" {
            out.push(format!("Peer {p} holds {bs:?}, want one /16 of the pool"));
        }
    }
    for (m, id) in members.iter().enumerate() {
        let block = al.blocks.get(*id).and_then(|b| b.first());
        let mut want: BTreeSet<String> = exp.extra_nodes[m].clone();
        want.extend(base.sub_blocks[m].keys().cloned());
        let have: BTreeSet<String> = al.sub_blocks[m].keys().cloned().collect();
        if have != want {
            out.push(format!("member {id}: Nodes {have:?}, want {want:?}"));
        }
        for (n, c) in &al.sub_blocks[m] {
            match (c, block) {
                (Some(c), Some(b)) if b.contains(c) => {}
                _ => out.push(format!(
                    "member {id}: node {n} has sub-block {c:?}, not in {block:?}"
                )),
            }
            if let Some(was) = base.sub_blocks[m].get(n)
                && was != c
            {
                out.push(format!("member {id}: node {n} held {was:?}, now {c:?}"));
            }
        }
        let want: BTreeSet<&String> = exp.services.keys().collect();
        let have: BTreeSet<&String> = al.vips[m].keys().collect();
        if have != want {
            out.push(format!("member {id}: imports {have:?}, want {want:?}"));
        }
        for (svc, ips) in &al.vips[m] {
            let one = ips.len() == 1
                && ips[0]
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| reserved.contains(&ip));
            if !one {
                out.push(format!(
                    "member {id}: import {svc} has ClusterSetIPs {ips:?}"
                ));
            }
        }
        if al.vips[m].get(STEADY) != base.vips[m].get(STEADY) {
            out.push(format!(
                "member {id}: {STEADY} had {:?}, now {:?}",
                base.vips[m].get(STEADY),
                al.vips[m].get(STEADY)
            ));
        }
    }
    out
}

/// One random change of who owns what.
async fn churn(f: &Fleet, exp: &mut Expected, rng: &mut fastrand::Rng) -> anyhow::Result<String> {
    exp.next += 1;
    let n = exp.next;
    let m = rng.usize(..2);
    let member = f.members[m].cluster.client();
    let peers = Api::<Peer>::namespaced(f.hub.cluster.client(), NAMESPACE);
    Ok(match rng.u32(0..6) {
        0 | 1 if exp.stand_ins.len() < MAX_STAND_INS || exp.stand_ins.is_empty() => {
            let name = format!("standin{n}");
            let mut key = [0u8; 32];
            rng.fill(&mut key);
            let peer: Peer = serde_json::from_value(serde_json::json!({
                "apiVersion": "fleetboard.io/v1alpha1", "kind": "Peer",
                "metadata": { "name": name, "namespace": NAMESPACE },
                "spec": {
                    "clusterId": name,
                    "publicKey": SecretKey::from_random_bytes(key).public_key().to_base64(),
                },
            }))?;
            peers.create(&PostParams::default(), &peer).await?;
            exp.stand_ins.insert(name.clone());
            format!("cluster {name} joins")
        }
        0 | 1 => {
            let name = pick(rng, &exp.stand_ins);
            peers.delete(&name, &DeleteParams::default()).await?;
            exp.stand_ins.remove(&name);
            format!("cluster {name} leaves")
        }
        2 | 3 if exp.extra_nodes[m].len() < MAX_EXTRA_NODES || exp.extra_nodes[m].is_empty() => {
            let name = format!("{}x{n}", f.members[m].id);
            let node: Node =
                serde_json::from_value(serde_json::json!({ "metadata": { "name": name } }))?;
            Api::<Node>::all(member)
                .create(&PostParams::default(), &node)
                .await?;
            exp.extra_nodes[m].insert(name.clone());
            format!("node {name} joins")
        }
        2 | 3 => {
            let name = pick(rng, &exp.extra_nodes[m]);
            Api::<Node>::all(member)
                .delete(&name, &DeleteParams::default())
                .await?;
            exp.extra_nodes[m].remove(&name);
            format!("node {name} leaves")
        }
        _ if exp.services.len() <= MAX_SERVICES && (exp.services.len() == 1 || rng.bool()) => {
            let name = format!("svc{n}");
            create_service(&member, NS, &name, &[("tcp", 80, 8080, "TCP")], false).await;
            export(&member, NS, &name).await;
            exp.services.insert(name.clone(), m);
            format!("{name} exported from {}", f.members[m].id)
        }
        _ => {
            let names: BTreeSet<String> = exp
                .services
                .keys()
                .filter(|s| *s != STEADY)
                .cloned()
                .collect();
            let name = pick(rng, &names);
            let from = f.members[exp.services[&name]].cluster.client();
            unexport(&from, NS, &name).await;
            Api::<Service>::namespaced(from, NS)
                .delete(&name, &DeleteParams::default())
                .await?;
            exp.services.remove(&name);
            format!("{name} unexported")
        }
    })
}

fn pick(rng: &mut fastrand::Rng, set: &BTreeSet<String>) -> String {
    let all: Vec<&String> = set.iter().collect();
    all[rng.usize(..all.len())].clone()
}

/// Waits until node `from` pings the TUN address of node `to` (through both gateways and the
/// hub when they are in different members).
async fn wait_ping(f: &Fleet, from: &str, to: &str) {
    let ip = eventually(&format!("{to} TUN address"), DEADLINE, POLL, || {
        f.tun_ip(to)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    let i = f.node(from);
    wait_for(&format!("{from} pings {to} ({ip})"), DEADLINE, POLL, || {
        Ok(f.nodes[i].ping_once(&ip).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_and_agent_kills_during_churn_duplicate_and_lose_nothing() {
    let kills = if long_run() { 100 } else { 20 };
    let mut rng = seeded_rng("hub_and_agent_kills_during_churn_duplicate_and_lose_nothing");
    let started = Instant::now();
    let mut f = Fleet::start(FleetOptions::default(), all_crds())
        .await
        .unwrap();
    let members: Vec<String> = f.members.iter().map(|m| m.id.clone()).collect();
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    for m in &f.members {
        let c = m.cluster.client();
        install_crds(&c, member_crds()).await.unwrap();
        create_namespace(&c, NS).await;
    }
    let a = f.members[0].cluster.client();
    create_service(&a, NS, STEADY, &[("tcp", 80, 8080, "TCP")], false).await;
    export(&a, NS, STEADY).await;
    let mut exp = Expected::default();
    exp.services.insert(STEADY.into(), 0);

    // The founding allocations: hub, a, b, their nodes and the steady ClusterSetIPs.
    let base = eventually("the founding allocations", DEADLINE, POLL, || async {
        let al = read_allocations(&f).await?;
        let complete = al.blocks.len() == 3
            && al.blocks.iter().all(|(p, b)| p == "hub" || b.len() == 1)
            && al
                .sub_blocks
                .iter()
                .all(|s| s.len() == 2 && s.values().all(Option::is_some))
            && al
                .vips
                .iter()
                .all(|v| v.get(STEADY).is_some_and(|ips| ips.len() == 1))
            && duplicates(&al).is_empty();
        Ok(complete.then_some(al))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    let problems = not_converged(&base, &exp, &base, &members);
    assert!(problems.is_empty(), "founding allocations: {problems:#?}");
    wait_ping(&f, "a1", "b1").await;
    let ready = started.elapsed();

    let mut samples = 0;
    let (mut hub_kills, mut agent_kills, mut moves, mut steps) = (0, 0, 0, 0);
    let churn_started = Instant::now();
    for k in 0..kills {
        for _ in 0..rng.usize(1..=3) {
            let what = churn(&f, &mut exp, &mut rng).await.unwrap();
            steps += 1;
            println!("kill {k}: {what}");
        }
        // A random moment of the allocations that churn set off: half the time within the
        // first 150 ms (while the hub and the gateway react), else within 1.2 s.
        let moment = if rng.bool() { 150 } else { 1200 };
        tokio::time::sleep(Duration::from_millis(rng.u64(0..moment))).await;
        let victim = rng.usize(..=f.nodes.len());
        if victim == f.nodes.len() {
            println!("kill {k}: hub-0");
            f.kill_hub(0);
            hub_kills += 1;
            tokio::time::sleep(Duration::from_millis(rng.u64(0..500))).await;
            f.start_hub(0).unwrap();
        } else {
            let node = f.nodes[victim].name.clone();
            let m = f.nodes[victim].member;
            let gateway = f.gateway(m).await.ok().flatten();
            println!("kill {k}: agent {node} (gateway {gateway:?})");
            f.kill_agent(victim);
            agent_kills += 1;
            if gateway.as_deref() == Some(node.as_str()) && rng.u32(0..6) == 0 {
                // The other node takes over once the Lease expires.
                eventually("another gateway", DEADLINE, POLL, || async {
                    let g = f.gateway(m).await?;
                    Ok(g.filter(|g| *g != node))
                })
                .await
                .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
                moves += 1;
            } else {
                tokio::time::sleep(Duration::from_millis(rng.u64(0..500))).await;
            }
            f.start_agent(victim).unwrap();
        }
        let al = read_allocations(&f).await.unwrap();
        samples += 1;
        let dups = duplicates(&al);
        assert!(dups.is_empty(), "after kill {k}: {dups:#?}\n{}", f.logs());
    }
    let churned = churn_started.elapsed();

    let converge_started = Instant::now();
    loop {
        let al = read_allocations(&f).await.unwrap();
        samples += 1;
        let dups = duplicates(&al);
        assert!(dups.is_empty(), "while converging: {dups:#?}\n{}", f.logs());
        let problems = not_converged(&al, &exp, &base, &members);
        if problems.is_empty() {
            break;
        }
        assert!(
            converge_started.elapsed() < CONVERGE,
            "not converged {CONVERGE:?} after the last kill: {problems:#?}\n{}",
            f.logs()
        );
        tokio::time::sleep(POLL).await;
    }
    let converged = converge_started.elapsed();
    // Every process back at work (the last restarts re-plan from what they find), traffic
    // through the tunnel, and the allocations still the same afterwards.
    eventually("hub-0 leads again", DEADLINE, POLL, || async {
        Ok((f.hub_leader().await?.as_deref() == Some("hub-0")).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    for n in 0..f.nodes.len() {
        wait_for(&format!("agent {n} ready"), DEADLINE, POLL, || {
            Ok((f.agent_probe(n, "/ready") == Some(200)).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    }
    wait_ping(&f, "a2", "b2").await;
    wait_ping(&f, "b1", "a1").await;
    let settled = read_allocations(&f).await.unwrap();
    samples += 1;
    let problems = not_converged(&settled, &exp, &base, &members);
    assert!(
        problems.is_empty(),
        "after every process settled: {problems:#?}\n{}",
        f.logs()
    );
    println!(
        "control crash safety: {kills} kills (hub {hub_kills}, agents {agent_kills}, gateway moves \
         {moves}), {steps} churn steps, {samples} API samples: 0 duplicates; converged {:.1} s \
         after the last kill: 0 lost, 0 leaked, traffic flows; fleet ready {:.1} s, kills and \
         churn {:.1} s, {:.1} s in all",
        converged.as_secs_f64(),
        ready.as_secs_f64(),
        churned.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
