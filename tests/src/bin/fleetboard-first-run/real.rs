//! The first run on real nodes, in the order of the fleet test (`tests/tests/e2e/kube_fleet/`):
//! the clusters and their nodes, workload pods, the hub install and the member installs from
//! the chart repository, every chart pod Ready, both members Connected, a Service exported from
//! member B and fetched from a pod of member A by its `clusterset.local` name, iperf3 between a
//! pod of each member by their parallel (`eth-fleet`) addresses; then the summary.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use fleetboard_tests::binaries::bin;
use fleetboard_tests::kube::{Cluster, Tool, eventually};
use fleetboard_tests::node::NodeTraces;
use fleetboard_tests::real_fleet::pods::{self, APPS};
use fleetboard_tests::real_fleet::{NS, RealFleet, RealFleetOptions, services, traffic};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

use crate::{Args, Clock};

/// The busybox pod of member A that fetches the exported Service.
const CLIENT: &str = "client";
/// The iperf3 pods: the client in member A, the server in member B.
const IPERF_CLIENT: &str = "iperf3-client";
const IPERF_SERVER: &str = "iperf3-server";

/// Brings the cluster set up, shows it working and prints the summary; returns the running
/// fleet. `traces` gets the nodes' traces as soon as they exist.
pub async fn run(
    args: &Args,
    t0: Clock,
    traces: &Mutex<Vec<NodeTraces>>,
) -> anyhow::Result<RealFleet> {
    let transport = args.transport();
    t0.step(&format!(
        "starting 3 clusters (etcd + kube-apiserver each) and 5 real nodes (kubelet, containerd \
         with NRI, runc, CNI, kube-proxy): hub (1 node), member-a and member-b (2 nodes each); \
         tunnel transport {transport}"
    ));
    let say = |s: &str| t0.step(s);
    let mut opts = RealFleetOptions::new(transport);
    opts.extra_images = vec!["iperf3"];
    let mut fleet = RealFleet::start(opts, &say).await?;
    {
        let mut t = traces.lock().unwrap_or_else(|e| e.into_inner());
        t.push(fleet.hub_node.traces());
        for m in &fleet.members {
            t.extend(m.nodes.iter().map(|n| n.traces()));
        }
    }
    let busybox = fleet.image("busybox")?;
    let iperf3 = fleet.image("iperf3")?;

    // Workload pods first, as in the fleet test: the NRI plugin gives them eth-fleet when it
    // registers (Synchronize).
    let (a, b) = (&fleet.members[0], &fleet.members[1]);
    let (a1, b1) = (a.nodes[0].name(), b.nodes[0].name());
    let webs: Vec<String> = b
        .nodes
        .iter()
        .map(|n| format!("web-{}", n.name()))
        .collect();
    t0.step(&format!(
        "workload pods in namespace {APPS}: {}/{CLIENT} (busybox) and {}/{IPERF_CLIENT} on {a1}; \
         {}/{} (busybox) and {}/{IPERF_SERVER} on {b1}",
        a.id,
        a.id,
        b.id,
        webs.join(", "),
        b.id
    ));
    for m in [a, b] {
        pods::create_apps_namespace(&m.cluster).await?;
    }
    pods::create_sleeper(&a.cluster, CLIENT, a1, &busybox).await?;
    create_iperf3_pod(&a.cluster, IPERF_CLIENT, a1, &iperf3).await?;
    for (web, n) in webs.iter().zip(&b.nodes) {
        pods::create_sleeper(&b.cluster, web, n.name(), &busybox).await?;
    }
    create_iperf3_pod(&b.cluster, IPERF_SERVER, b1, &iperf3).await?;
    pods::wait_all_ready(&a.cluster, a.id, APPS, 2).await?;
    pods::wait_all_ready(&b.cluster, b.id, APPS, webs.len() + 1).await?;
    t0.step("workload pods Running");

    let install = fleet.install_hub()?;
    t0.step(&format!(
        "hub installed from the user's laptop (chart repository added with `helm repo add`):\n    \
         {install}"
    ));
    fleet.install_members()?;
    t0.step("member-a and member-b installed with the command the hub's NOTES print");
    t0.step("waiting for every chart pod to be Ready (2 hub replicas, an agent on every member node, fleetboard-dns)");
    fleet.wait_chart_pods_ready().await?;
    t0.step(&format!(
        "every chart pod Ready; waiting for member-a and member-b to be Connected over {transport}"
    ));
    fleet.wait_connected().await?;
    t0.step("both members Connected to the hub");

    let (a, b) = (&fleet.members[0], &fleet.members[1]);
    let user = &fleet.user;
    for web in &webs {
        traffic::serve_name(&b.cluster, web).await?;
    }
    let web_refs: Vec<&str> = webs.iter().map(String::as_str).collect();
    services::export_web(user, &b.kubeconfig, &web_refs)?;
    t0.step(&format!(
        "member-b: {} serve their names over HTTP on :{}; Service {APPS}/{} exported (ServiceExport)",
        webs.join(" and "),
        services::PORT,
        services::SERVICE
    ));
    let vip = services::clusterset_ip(user, &a.kubeconfig).await?;
    t0.step(&format!(
        "member-a: ServiceImport {APPS}/{} appeared with ClusterSetIP {vip}",
        services::SERVICE
    ));
    services::forward_clusterset_zone(user, &a.kubeconfig, &a.notes)?;
    t0.step(
        "member-a: CoreDNS forwards clusterset.local to fleetboard-dns, as the member NOTES say",
    );
    let url = format!(
        "http://{}.{APPS}.svc.clusterset.local:{}/",
        services::SERVICE,
        services::PORT
    );
    let fetch = format!("timeout 10 wget -q -O - {url}");
    let answer = pods::exec(&a.cluster, CLIENT, &fetch).await?;
    let answer = answer.trim().to_string();
    anyhow::ensure!(
        webs.contains(&answer),
        "{url} answered {answer:?}, not one of {webs:?}"
    );
    t0.step(&format!("member-a/{CLIENT}: {url} answered by {answer}"));

    let server_ip = parallel_ip(&b.cluster, IPERF_SERVER).await?;
    let client_ip = parallel_ip(&a.cluster, IPERF_CLIENT).await?;
    t0.step(&format!(
        "iperf3 for {}s: {}/{IPERF_CLIENT} ({client_ip}) -> {}/{IPERF_SERVER} ({server_ip}), \
         parallel addresses",
        args.seconds, a.id, b.id
    ));
    let bps = iperf3_run(&a.cluster, IPERF_CLIENT, server_ip, args.seconds).await?;
    let figure = format!(
        "iperf3 TCP {}/{IPERF_CLIENT} ({client_ip}) -> {}/{IPERF_SERVER} ({server_ip}) over \
         {transport}, {} s: {:.2} Gbit/s",
        a.id,
        b.id,
        args.seconds,
        bps / 1e9
    );
    t0.step(&figure);

    // The hub's Peer status takes the members' byte counters on its next round.
    let ids = [a.id, b.id];
    if let Err(e) = counters_show_traffic(&fleet, &ids).await {
        t0.step(&format!(
            "(kubectl peers does not show the traffic yet: {e:#})"
        ));
    }
    t0.step("summary");
    println!("\n======== FleetBoard first run: summary ({transport}) ========");
    for (what, kubeconfig) in [
        ("hub", &fleet.hub_kubeconfig),
        (a.id, &a.kubeconfig),
        (b.id, &b.kubeconfig),
    ] {
        println!("\n--- {what}: kubectl get pods -A -o wide");
        print!("{}", user.run(kubeconfig, "kubectl get pods -A -o wide")?);
    }
    println!("\n--- hub: kubectl peers -n {NS}");
    print!(
        "{}",
        user.run(&fleet.hub_kubeconfig, &format!("kubectl peers -n {NS}"))?
    );
    println!("\n--- member-a/{CLIENT}: wget -q -O - {url}");
    println!("{answer}");
    println!("\n--- {figure}");
    println!("\n======== end of summary ========\n");
    if !args.exit {
        how_to_look(&fleet);
    }
    Ok(fleet)
}

/// Waits (up to a minute) until `kubectl peers -o json` on the hub counts bytes both ways for
/// every member in `ids`.
async fn counters_show_traffic(fleet: &RealFleet, ids: &[&str]) -> anyhow::Result<()> {
    eventually(
        "kubectl peers: RX and TX of every member above 0",
        Duration::from_secs(60),
        Duration::from_secs(2),
        || {
            let json = fleet.user.run(
                &fleet.hub_kubeconfig,
                &format!("kubectl peers -n {NS} -o json"),
            );
            async move {
                let doc: serde_json::Value = serde_json::from_str(&json?)?;
                let rows = doc["clusters"].as_array().cloned().unwrap_or_default();
                Ok(ids
                    .iter()
                    .all(|id| {
                        rows.iter().any(|r| {
                            r["cluster"] == *id
                                && r["rxBytes"].as_u64().is_some_and(|n| n > 0)
                                && r["txBytes"].as_u64().is_some_and(|n| n > 0)
                        })
                    })
                    .then_some(()))
            }
        },
    )
    .await
}

/// Pod `name` in [`APPS`] on `node`: the iperf3 image running `iperf3 -s` (the client pod
/// too: it keeps the pod running for `kubectl exec ... iperf3 -c`).
async fn create_iperf3_pod(
    cluster: &Cluster,
    name: &str,
    node: &str,
    image: &str,
) -> anyhow::Result<()> {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "namespace": APPS, "labels": { "app": "iperf3" } },
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "iperf3",
                "image": image,
                "command": ["iperf3", "-s"],
            }],
        },
    }))?;
    Api::<Pod>::namespaced(cluster.client(), APPS)
        .create(&PostParams::default(), &pod)
        .await?;
    Ok(())
}

/// Pod `name`'s parallel address: its `router.fleetboard.io/parallel_ip` annotation (the NRI
/// plugin's, the address of its `eth-fleet`; the iperf3 image has no shell to look inside).
async fn parallel_ip(cluster: &Cluster, name: &str) -> anyhow::Result<Ipv4Addr> {
    let api: Api<Pod> = Api::namespaced(cluster.client(), APPS);
    let text = eventually(
        &format!("pod {name} annotated router.fleetboard.io/parallel_ip"),
        pods::DEADLINE,
        pods::POLL,
        || {
            let api = api.clone();
            async move {
                let p = api.get(name).await?;
                Ok(p.metadata
                    .annotations
                    .and_then(|a| a.get("router.fleetboard.io/parallel_ip").cloned()))
            }
        },
    )
    .await?;
    let addr = text.split('/').next().unwrap_or_default();
    addr.parse()
        .with_context(|| format!("pod {name}: parallel_ip annotation {text:?}"))
}

/// `iperf3 -c server -t seconds -J` in pod `client` (retried until the server answers);
/// returns what the receiver measured, in bit/s.
async fn iperf3_run(
    cluster: &Cluster,
    client: &str,
    server: Ipv4Addr,
    seconds: u32,
) -> anyhow::Result<f64> {
    eventually(
        &format!("iperf3 from {client} to {server}"),
        Duration::from_secs(120),
        Duration::from_secs(2),
        || {
            let cmd = cluster.kubectl().map(|mut c| {
                c.args(["exec", "-n", APPS, client, "--", "iperf3", "-J"]);
                c.args(["--connect-timeout", "5000", "-c", &server.to_string()]);
                c.args(["-t", &seconds.to_string()]);
                c
            });
            async move {
                let mut cmd = cmd?;
                let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
                parse_iperf3(&out.stdout)
                    .with_context(|| String::from_utf8_lossy(&out.stderr).trim().to_string())
                    .map(Some)
            }
        },
    )
    .await
}

/// The receiver's bit/s of an `iperf3 -J` report, or its error.
fn parse_iperf3(json: &[u8]) -> anyhow::Result<f64> {
    let v: serde_json::Value = serde_json::from_slice(json).with_context(|| {
        format!(
            "iperf3 printed no JSON report: {}",
            String::from_utf8_lossy(json).trim()
        )
    })?;
    if let Some(e) = v["error"].as_str() {
        anyhow::bail!("iperf3: {e}");
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("no end.sum_received.bits_per_second in {v}"))
}

/// How to look at the running cluster set from this machine's shell.
fn how_to_look(fleet: &RealFleet) {
    let kubectl = Tool::Kubectl
        .path()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "kubectl".into());
    let show = |what: &str, kc: &Path| {
        println!("  {what:<9} {kubectl} --kubeconfig {}", kc.display());
    };
    println!("Look around while it runs (admin kubeconfigs; the pods are in namespace {APPS}):");
    show("hub", fleet.hub.kubeconfig());
    for m in &fleet.members {
        show(m.id, m.cluster.kubeconfig());
    }
    println!(
        "  peers     {} --kubeconfig {} -n {NS}",
        bin("kubectl-peers").display(),
        fleet.hub.kubeconfig().display()
    );
}

#[cfg(test)]
mod tests {
    use super::parse_iperf3;

    #[test]
    fn iperf3_reports() {
        let ok = br#"{"start": {}, "end": {"sum_received": {"bits_per_second": 1.5e9}}}"#;
        assert_eq!(parse_iperf3(ok).unwrap(), 1.5e9);
        let refused = br#"{"start": {}, "end": {}, "error": "unable to connect to server"}"#;
        assert!(
            parse_iperf3(refused)
                .unwrap_err()
                .to_string()
                .contains("unable to connect")
        );
        assert!(parse_iperf3(b"error: pod not found").is_err());
    }
}
