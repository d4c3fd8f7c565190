//! Multi-cluster services end to end through the real control plane and dataplanes: a hub
//! and members `a` and `b` (real apiservers; `fleetboard hub` and one `fleetboard agent` per
//! member node as processes in network namespaces, see `fleetboard_tests::fleet`). The agents
//! run the MCS controllers while they hold the gateway Lease and program every dataplane's
//! `services` (ClusterSetIP NAT) from their cluster's ServiceImports.
//!
//! Two nodes per member. A Service exported from `a` (its endpoint is the TUN address of a's
//! non-gateway node, where a socat server listens) gets a ServiceImport in `b`; a client on
//! b's non-gateway node connects by the ClusterSetIP and by DNS name (`fleetboard dns` for
//! `b`, queried by the client's resolver) with real TCP through both clusters' gateways and
//! the hub, and the bytes arrive intact. A same-named unexported Service in `b` is never an
//! endpoint. Then a's gateway is killed: the other node takes the Lease and the MCS
//! controllers with it, and unexporting still removes the import, the name and the VIP.
//!
//! NAT limitation (documented in control/src/mcs/README.md): a client and an endpoint behind
//! the same node's dataplane are not translated, so client and server are on different nodes.
//!
//! mcs-api conformance: "Connectivity to remote services with no exported service should be
//! inaccessible" and "Connectivity to an exported ClusterIP service should be accessible
//! through DNS".

use std::path::{Path, PathBuf};

use crate::dataplane_support::write_random;
use crate::mcs_support::{
    await_import, await_no_import, create_namespace, create_pod, create_service, export,
    ready_addresses, unexport,
};
use fleetboard_control::crd::{all_crds, member_crds};
use fleetboard_control::mcs::{LABEL_SLICE_MANAGED_BY, MCS_MANAGED_BY};
use fleetboard_tests::binaries::bin;
use fleetboard_tests::fleet::{DEADLINE, Fleet, FleetOptions, POLL, install_crds};
use fleetboard_tests::kube::eventually;
use fleetboard_tests::netns::{Netns, unique_token};
use fleetboard_tests::process::{ChildGuard, wait_for};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};

const NS: &str = "demo";
const PORT: u16 = 8080;
const BYTES: usize = 256 * 1024;

/// Receives one TCP connection on `ip:PORT` in `ns`; writes the sha256 of what arrived.
fn receiver(ns: &Netns, ip: &str, dir: &Path) -> (ChildGuard, PathBuf) {
    let sum = dir.join(format!("recv-{}.sha256", unique_token()));
    let mut cmd = ns.command("bash");
    cmd.args([
        "-c",
        &format!(
            "socat -u TCP-LISTEN:{PORT},bind={ip},reuseaddr - | sha256sum > {p}.tmp && mv {p}.tmp {p}",
            p = sum.display()
        ),
    ]);
    let child = ChildGuard::spawn("receiver", cmd, &dir.join("receiver.log")).unwrap();
    wait_for("receiver listening", DEADLINE, POLL, || {
        Ok(ns
            .exec("ss", &["-ltnH"])?
            .contains(&format!("{ip}:{PORT}"))
            .then_some(()))
    })
    .unwrap();
    (child, sum)
}

/// Random bytes in a file, and their sha256.
fn random_file(dir: &Path) -> (PathBuf, String) {
    let path = dir.join(format!("tx-{}.bin", unique_token()));
    let sum = write_random(&path, BYTES);
    (path, sum)
}

/// Sends `file` from `ns` to `target` (`host:port`) until a connection succeeds.
fn send(f: &Fleet, ns: &Netns, file: &Path, target: &str) {
    wait_for(&format!("send to {target}"), DEADLINE, POLL, || {
        let out = ns
            .command("socat")
            .args([
                "-u",
                &format!("FILE:{}", file.display()),
                &format!("TCP:{target},connect-timeout=3"),
            ])
            .output()?;
        Ok(out.status.success().then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
}

fn read_sum(path: &Path) -> String {
    let s = wait_for("receiver checksum", DEADLINE, POLL, || {
        Ok(std::fs::read_to_string(path).ok())
    })
    .unwrap();
    s.split_whitespace().next().unwrap().to_string()
}

/// `/etc/netns/<ns>/resolv.conf` (bind-mounted by `ip netns exec`), removed on drop.
struct Resolv(PathBuf);

impl Resolv {
    fn new(ns: &Netns) -> Self {
        let dir = PathBuf::from("/etc/netns").join(ns.name());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions attempts:2 timeout:2\n",
        )
        .unwrap();
        Self(dir)
    }
}

impl Drop for Resolv {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `dig +short` inside `ns` against 127.0.0.1.
fn dig(ns: &Netns, name: &str) -> (bool, String) {
    let out = ns
        .command("dig")
        .args(["@127.0.0.1", name, "A", "+tries=1", "+time=2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let nx = text.contains("status: NXDOMAIN");
    let answer = text
        .lines()
        .skip_while(|l| !l.starts_with(";; ANSWER SECTION"))
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(4))
        .unwrap_or_default()
        .to_string();
    (nx, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusterset_ip_and_dns_name_reach_an_exported_service_in_another_cluster() {
    let opts = FleetOptions {
        nodes_per_member: 2,
        ..Default::default()
    };
    let mut f = Fleet::start(opts, all_crds()).await.unwrap();
    let (a, b) = (f.members[0].cluster.client(), f.members[1].cluster.client());
    for c in [&a, &b] {
        install_crds(c, member_crds()).await.unwrap();
    }
    // The non-gateway node of each member: server in a, client in b.
    let mut picked = Vec::new();
    for (m, nodes) in [(0, ["a1", "a2"]), (1, ["b1", "b2"])] {
        let gw = eventually(&format!("member {m} gateway"), DEADLINE, POLL, || {
            f.gateway(m)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
        let other = if gw == nodes[0] { nodes[1] } else { nodes[0] };
        picked.push((gw, other.to_string()));
    }
    let (a_gateway, server_node) = picked[0].clone();
    let client_node = picked[1].1.clone();
    let mut tun = Vec::new();
    for node in [&server_node, &client_node] {
        let ip = eventually(&format!("{node} TUN address"), DEADLINE, POLL, || {
            f.tun_ip(node)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
        tun.push(ip);
    }
    let (server_ip, client_ip) = (tun[0].clone(), tun[1].clone());
    let (si, ci) = (f.node(&server_node), f.node(&client_node));
    // The tunnel is up (member to member through the hub) before services come into play.
    wait_for(
        &format!("{client_node} reaches {server_node}"),
        DEADLINE,
        POLL,
        || Ok(f.nodes[ci].ping_once(&server_ip).then_some(())),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));

    for c in [&a, &b] {
        create_namespace(c, NS).await;
        create_service(c, NS, "hello", &[("tcp", 80, PORT as i32, "TCP")], false).await;
    }
    create_pod(&a, NS, "hello-0", "hello", &server_ip, true).await;
    // b's own, unexported `hello`: its endpoint must never be used.
    create_pod(&b, NS, "hello-0", "hello", &client_ip, true).await;
    export(&a, NS, "hello").await;
    let imp = await_import(&b, NS, "hello", "ClusterSetIP import in b", |i| {
        !i.spec.ips.is_empty()
    })
    .await;
    let vip = imp.spec.ips[0].clone();
    assert!(
        vip.starts_with("100.127."),
        "VIP {vip} from the service block"
    );
    let slices: Api<EndpointSlice> = Api::namespaced(b.clone(), NS);
    let lp = ListParams::default().labels(&format!("{LABEL_SLICE_MANAGED_BY}={MCS_MANAGED_BY}"));
    let addrs = eventually("a's endpoint in b", DEADLINE, POLL, || async {
        let s = slices.list(&lp).await?.items;
        let addrs = ready_addresses(&s);
        Ok((!addrs.is_empty()).then_some(addrs))
    })
    .await
    .unwrap();
    assert_eq!(addrs, [server_ip.as_str()], "only the exported endpoint");

    // By ClusterSetIP: real TCP from b's node through the tunnel to a's, bytes intact.
    let (file, want) = random_file(&f.dir);
    let (_rx, sum) = receiver(&f.nodes[si].ns, &server_ip, &f.dir);
    send(&f, &f.nodes[ci].ns, &file, &format!("{vip}:80"));
    assert_eq!(read_sum(&sum), want, "bytes intact through the VIP");

    // By DNS name: `fleetboard dns` for b (agent credentials) on the client node's loopback,
    // used by the client's resolver.
    let client = &f.nodes[ci].ns;
    client.ip(&["link", "set", "lo", "up"]).unwrap();
    let mut dns = client.command(bin("fleetboard").to_str().unwrap());
    dns.args(["dns", "--listen", "127.0.0.1:53", "--kubeconfig"])
        .arg(&f.members[1].kubeconfig)
        .env("RUST_LOG", "info");
    let dns_log = f.dir.join("dns.log");
    let _dns = ChildGuard::spawn("fleetboard dns", dns, &dns_log).unwrap();
    let _resolv = Resolv::new(client);
    let name = format!("hello.{NS}.svc.clusterset.local");
    wait_for("the name resolves to the VIP", DEADLINE, POLL, || {
        Ok((dig(client, &name).1 == vip).then_some(()))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n--- dns log\n{}",
            std::fs::read_to_string(&dns_log).unwrap_or_default()
        )
    });
    assert!(dig(client, &format!("nothere.{NS}.svc.clusterset.local")).0);
    let (_rx2, sum2) = receiver(&f.nodes[si].ns, &server_ip, &f.dir);
    send(&f, client, &file, &format!("{name}:80"));
    assert_eq!(read_sum(&sum2), want, "bytes intact by DNS name");

    // a's gateway dies: the other node takes the Lease and runs the MCS controllers.
    f.kill_agent(f.node(&a_gateway));
    eventually("a's gateway moves", DEADLINE, POLL, || async {
        Ok((f.gateway(0).await?.as_deref() == Some(server_node.as_str())).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    wait_for(
        "the new gateway runs the MCS controllers",
        DEADLINE,
        POLL,
        || {
            Ok(f.nodes[si]
                .log()
                .contains("MCS-Syncer running")
                .then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));

    // Unexported (handled by a's new gateway): the import, the name and the VIP go.
    unexport(&a, NS, "hello").await;
    await_no_import(&b, NS, "hello", "import gone after unexport").await;
    let client = &f.nodes[ci].ns;
    wait_for("NXDOMAIN after unexport", DEADLINE, POLL, || {
        Ok(dig(client, &name).0.then_some(()))
    })
    .unwrap();
    let (_rx3, _sum3) = receiver(&f.nodes[si].ns, &server_ip, &f.dir);
    wait_for("the VIP stops connecting", DEADLINE, POLL, || {
        let out = client
            .command("socat")
            .args([
                "-u",
                "OPEN:/dev/null",
                &format!("TCP:{vip}:80,connect-timeout=2"),
            ])
            .output()?;
        Ok((!out.status.success()).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
}
