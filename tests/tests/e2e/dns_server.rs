//! `fleetboard dns` against a real apiserver: the server (the library's `serve`, on
//! 127.0.0.1 with a kernel-chosen port) follows the cluster's ServiceImports and MCS
//! EndpointSlices, and `dig` (bind9-dnsutils) queries it over UDP and TCP.

use std::net::SocketAddr;
use std::time::Duration;

use fleetboard_tests::fleet::install_crds;
use fleetboard_tests::kube::{Cluster, eventually};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(300);

/// A UDP socket and a TCP listener on the same free port of 127.0.0.1.
async fn bind_pair() -> (tokio::net::UdpSocket, tokio::net::TcpListener) {
    for _ in 0..50 {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP");
}

/// `dig +short` (extra flags in `flags`): the answer lines.
fn dig(addr: SocketAddr, name: &str, qtype: &str, flags: &[&str]) -> (String, Vec<String>) {
    let out = std::process::Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string(), name, qtype])
        .args(["+tries=1", "+time=2"])
        .args(flags)
        .output()
        .expect("dig (apt package bind9-dnsutils, scripts/install-deps.sh)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or("").to_string())
        .unwrap_or_default();
    let answers: Vec<String> = text
        .lines()
        .skip_while(|l| !l.starts_with(";; ANSWER SECTION"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().skip(4).collect::<Vec<_>>().join(" "))
        .collect();
    (status, answers)
}

async fn create<K>(api: &Api<K>, v: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), &serde_json::from_value(v).unwrap())
        .await
        .unwrap();
}

fn mcs_slice(svc: &str, cluster: &str, eps: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{svc}-{cluster}-ipv4"), "namespace": "web", "labels": {
            "multicluster.kubernetes.io/service-name": svc,
            "multicluster.kubernetes.io/source-cluster": cluster,
            "endpointslice.kubernetes.io/managed-by": "mcs.fleetboard.io"}},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_clusterset_names_from_service_imports() {
    let cluster = Cluster::start().await.unwrap();
    let client = cluster.client();
    install_crds(&client, fleetboard_control::crd::member_crds())
        .await
        .unwrap();
    create(
        &Api::<Namespace>::all(client.clone()),
        json!({"metadata": {"name": "web"}}),
    )
    .await;
    let (udp, tcp) = bind_pair().await;
    let addr = udp.local_addr().unwrap();
    let server = tokio::spawn(fleetboard_dns::serve(
        client.clone(),
        udp,
        tcp,
        "clusterset.local",
    ));

    let imports: Api<fleetboard_control::crd::mcs::ServiceImport> =
        Api::namespaced(client.clone(), "web");
    create(
        &imports,
        json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
            "metadata": {"name": "hello", "namespace": "web"},
            "spec": {"type": "ClusterSetIP", "ips": ["100.127.3.4"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        }),
    )
    .await;
    create(
        &imports,
        json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
            "metadata": {"name": "db", "namespace": "web"},
            "spec": {"type": "Headless",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        }),
    )
    .await;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "web");
    create(
        &slices,
        mcs_slice(
            "db",
            "a",
            json!([{"addresses": ["100.64.1.6"], "hostname": "db-0"},
                   {"addresses": ["100.64.1.7"], "hostname": "db-1", "conditions": {"ready": false}}]),
        ),
    )
    .await;
    create(
        &slices,
        mcs_slice(
            "db",
            "b",
            json!([{"addresses": ["100.65.1.6"], "hostname": "db-0"}]),
        ),
    )
    .await;

    // The ClusterSetIP, over UDP and over TCP, any case.
    let name = "hello.web.svc.clusterset.local";
    eventually("the VIP over UDP", DEADLINE, POLL, || async {
        Ok((dig(addr, name, "A", &[]).1 == ["100.127.3.4"]).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; server finished: {}", server.is_finished()));
    assert_eq!(
        dig(addr, "HELLO.Web.svc.clusterset.local", "A", &["+tcp"]),
        ("NOERROR".to_string(), vec!["100.127.3.4".to_string()])
    );
    // SRV of the named port: the service name, the service port.
    let (_, srv) = dig(
        addr,
        "_http._tcp.hello.web.svc.clusterset.local",
        "SRV",
        &[],
    );
    assert_eq!(srv, ["0 100 80 hello.web.svc.clusterset.local."]);
    // A known name without AAAA: NOERROR, no answer. Unknown: NXDOMAIN. Outside: REFUSED.
    assert_eq!(dig(addr, name, "AAAA", &[]), ("NOERROR".into(), vec![]));
    assert_eq!(
        dig(addr, "nothere.web.svc.clusterset.local", "A", &[]).0,
        "NXDOMAIN"
    );
    assert_eq!(dig(addr, "example.com", "A", &[]).0, "REFUSED");

    // Headless: ready endpoints of every cluster, per-host names, SRV per host.
    eventually("headless endpoints", DEADLINE, POLL, || async {
        let mut got = dig(addr, "db.web.svc.clusterset.local", "A", &[]).1;
        got.sort();
        Ok((got == ["100.64.1.6", "100.65.1.6"]).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(
        dig(addr, "db-0.b.db.web.svc.clusterset.local", "A", &[]).1,
        ["100.65.1.6"]
    );
    let (_, mut srv) = dig(addr, "_http._tcp.db.web.svc.clusterset.local", "SRV", &[]);
    srv.sort();
    assert_eq!(
        srv,
        [
            "0 100 8080 db-0.a.db.web.svc.clusterset.local.",
            "0 100 8080 db-0.b.db.web.svc.clusterset.local."
        ]
    );

    // The import goes: so does its name.
    imports
        .delete("hello", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "NXDOMAIN after the import is deleted",
        DEADLINE,
        POLL,
        || async { Ok((dig(addr, name, "A", &[]).0 == "NXDOMAIN").then_some(())) },
    )
    .await
    .unwrap();
    assert!(!server.is_finished(), "the server stopped: {server:?}");
    server.abort();
}
