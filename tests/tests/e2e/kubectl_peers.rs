//! `kubectl peers` (the `kubectl-peers` plugin) against a real apiserver: Peers with a status
//! written by the test show up in the table, its wide form, JSON and YAML; kubectl finds the
//! plugin on PATH; a cluster without the Peer CRD and an unreachable server give clear errors.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use fleetboard_control::crd::peer::Peer;
use fleetboard_tests::binaries::bin;
use fleetboard_tests::charts::{HUB_CHART, install_chart_crds};
use fleetboard_tests::kube::{Cluster, Tool, eventually};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const NS: &str = "fleetboard-system";
const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);
const KEY: &str = "YJ5gJdH5cYc3ZBj9XnY8Ha2qJgg1vPo1HnP3y6pLMVI=";

fn peers_cmd(kubeconfig: &Path) -> Command {
    let mut c = Command::new(bin("kubectl-peers"));
    c.arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("KUBECONFIG");
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn stdout_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn header(table: &str) -> Vec<String> {
    table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn row<'a>(table: &'a str, cluster: &str) -> Vec<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(cluster))
        .unwrap_or_else(|| panic!("no row for {cluster}:\n{table}"))
        .split_whitespace()
        .collect()
}

async fn create_peer(api: &Api<Peer>, name: &str, spec: serde_json::Value) {
    let p: Peer = serde_json::from_value(json!({
        "apiVersion": "fleetboard.io/v1alpha1", "kind": "Peer",
        "metadata": { "name": name }, "spec": spec,
    }))
    .unwrap();
    eventually(&format!("Peer {name} created"), DEADLINE, POLL, || async {
        match api.create(&PostParams::default(), &p).await {
            Ok(_) => Ok(Some(())),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_peers_shows_every_cluster_with_live_state() {
    let cluster = Cluster::start().await.unwrap();
    let kubeconfig = cluster.kubeconfig().to_path_buf();

    // No CRD yet: the error says what to install, and the exit code is non-zero.
    let out = run(&mut peers_cmd(&kubeconfig));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded without the CRD");
    assert!(
        err.contains("the Peer CRD (peers.fleetboard.io) is not installed in this cluster: install the fleetboard hub chart"),
        "{err}"
    );

    let client = cluster.client();
    install_chart_crds(&client, HUB_CHART).await.unwrap();
    let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": NS } })).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();

    // An empty namespace: a friendly note, success.
    let out = run(&mut peers_cmd(&kubeconfig));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("No clusters have joined yet"));

    let peers: Api<Peer> = Api::namespaced(client.clone(), NS);
    create_peer(&peers, "hub", json!({ "clusterId": "hub", "isHub": true, "endpoint": "198.18.0.10", "transport": "quic", "isPublic": true })).await;
    create_peer(&peers, "member-a", json!({ "clusterId": "member-a", "endpoint": "198.18.1.1", "cidrs": ["10.244.0.0/16"], "publicKey": KEY })).await;
    create_peer(&peers, "member-b", json!({ "clusterId": "member-b" })).await;
    let now = Timestamp::now();
    let handshake = now - SignedDuration::from_secs(30);
    let status = json!({ "status": {
        "allocatedCidrs": ["100.64.1.0/24"],
        "lastHandshake": handshake.to_string(),
        "rttMicros": 1250,
        "probeRttMicros": 1400,
        "probeLossPercent": 3,
        "rxBytes": 3 * 1024 * 1024,
        "txBytes": 2048,
        "conditions": [
            { "type": "Ready", "status": "True", "reason": "Allocated", "message": "block allocated", "lastTransitionTime": now.to_string() },
            { "type": "Connected", "status": "True", "reason": "HandshakeComplete", "message": "", "lastTransitionTime": now.to_string() },
        ],
    }});
    peers
        .patch_status("member-a", &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();

    // The table: hub first, then by cluster id; live state of member-a.
    let table = stdout_ok(&mut peers_cmd(&kubeconfig));
    assert_eq!(
        header(&table),
        [
            "CLUSTER",
            "HUB",
            "CIDRS",
            "ENDPOINT",
            "TRANSPORT",
            "CONNECTED",
            "HANDSHAKE",
            "RTT",
            "RX",
            "TX",
            "AGE"
        ],
        "{table}"
    );
    let clusters: Vec<&str> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(clusters, ["hub", "member-a", "member-b"], "{table}");
    let a = row(&table, "member-a");
    assert_eq!(
        &a[..6],
        [
            "member-a",
            "no",
            "100.64.1.0/24,10.244.0.0/16",
            "198.18.1.1:31820",
            "wg",
            "True"
        ],
        "{table}"
    );
    assert!(
        a[6].ends_with('s') && a[7] == "ago",
        "handshake age: {table}"
    );
    assert_eq!(&a[8..11], ["1.25ms", "3.0MiB", "2.0KiB"], "{table}");
    let hub = row(&table, "hub");
    assert_eq!(
        &hub[..5],
        ["hub", "yes", "-", "198.18.0.10:31820", "quic"],
        "{table}"
    );
    let b = row(&table, "member-b");
    assert_eq!(
        &b[1..10],
        ["no", "-", "-", "wg", "-", "-", "-", "-", "-"],
        "{table}"
    );

    // Wide: the same plus readiness, reason, reachability and key; `--wide` == `-o wide`.
    let wide = stdout_ok(peers_cmd(&kubeconfig).args(["-o", "wide"]));
    assert_eq!(
        stdout_ok(peers_cmd(&kubeconfig).arg("--wide"))
            .lines()
            .next(),
        wide.lines().next()
    );
    let h = header(&wide);
    assert_eq!(
        &h[11..],
        ["READY", "REASON", "PUBLIC", "KEY", "PROBE-RTT", "LOSS"],
        "{wide}"
    );
    let a = row(&wide, "member-a");
    assert_eq!(
        &a[a.len() - 6..],
        ["True", "HandshakeComplete", "no", KEY, "1.40ms", "3%"],
        "{wide}"
    );

    // JSON and YAML: the same rows, machine-readable.
    let doc: serde_json::Value =
        serde_json::from_str(&stdout_ok(peers_cmd(&kubeconfig).args(["-o", "json"]))).unwrap();
    assert_eq!(doc["namespace"], NS);
    let a = &doc["clusters"][1];
    assert_eq!(a["cluster"], "member-a");
    assert_eq!(a["cidrs"], json!(["100.64.1.0/24", "10.244.0.0/16"]));
    assert_eq!(a["connected"], "True");
    assert_eq!(a["rttMicros"], 1250);
    assert_eq!(a["probeRttMicros"], 1400);
    assert_eq!(a["probeLossPercent"], 3);
    assert_eq!(a["rxBytes"], 3 * 1024 * 1024);
    assert_eq!(a["txBytes"], 2048);
    let age = a["handshakeAgeSeconds"].as_i64().unwrap();
    assert!((30..3600).contains(&age), "{a}");
    assert_eq!(doc["clusters"][0]["hub"], true);
    let yaml: serde_json::Value =
        serde_yaml::from_str(&stdout_ok(peers_cmd(&kubeconfig).args(["-o", "yaml"]))).unwrap();
    let names: Vec<&str> = yaml["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cluster"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hub", "member-a", "member-b"]);
    assert_eq!(yaml["clusters"][1]["rxBytes"], 3 * 1024 * 1024);

    // Another namespace: nothing there.
    let out = run(peers_cmd(&kubeconfig).args(["-n", "elsewhere", "-o", "json"]));
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["clusters"], json!([]));

    // As a kubectl plugin: kubectl finds `kubectl-peers` on PATH and passes the flags on; the
    // plugin reads $KUBECONFIG like kubectl does.
    // (A folder with only the plugin: the build folder also holds `kubectl-peers.d`, which
    // `kubectl plugin list` would warn about.)
    let plugin_dir = cluster.dir().join("plugins");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    std::os::unix::fs::symlink(bin("kubectl-peers"), plugin_dir.join("kubectl-peers")).unwrap();
    let path = plugin_dir.display().to_string();
    let via_kubectl = stdout_ok(
        Command::new(Tool::Kubectl.path().unwrap())
            .args(["peers", "-n", NS])
            .env("PATH", &path)
            .env("KUBECONFIG", &kubeconfig),
    );
    assert_eq!(header(&via_kubectl), header(&table));
    assert_eq!(
        row(&via_kubectl, "member-a")[..6],
        row(&table, "member-a")[..6]
    );
    let list = stdout_ok(
        Command::new(Tool::Kubectl.path().unwrap())
            .args(["plugin", "list"])
            .env("PATH", &path),
    );
    assert!(list.contains("kubectl-peers"), "{list}");

    // --context picks a context of the kubeconfig; the current one here is unreachable.
    let two = two_context_kubeconfig(&cluster);
    let ok = stdout_ok(peers_cmd(&two).args(["--context", "live", "-o", "json"]));
    assert!(ok.contains("member-a"), "{ok}");
    let out = run(&mut peers_cmd(&two));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unreachable hub exited 0");
    assert!(
        err.contains(
            "the hub is unreachable: cannot reach the Kubernetes API at https://127.0.0.1:"
        ),
        "{err}"
    );
}

/// A kubeconfig whose current context `dead` points at a closed port and whose context `live`
/// is the cluster.
fn two_context_kubeconfig(cluster: &Cluster) -> std::path::PathBuf {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let text = std::fs::read_to_string(cluster.kubeconfig()).unwrap();
    let mut config: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let live_cluster = config["clusters"][0].clone();
    let mut dead_cluster = live_cluster.clone();
    dead_cluster["name"] = json!("dead");
    dead_cluster["cluster"]["server"] = json!(format!("https://127.0.0.1:{closed}"));
    let user = config["users"][0]["name"].clone();
    let live_name = live_cluster["name"].clone();
    config["clusters"] = json!([live_cluster, dead_cluster]);
    config["contexts"] = json!([
        { "name": "live", "context": { "cluster": live_name, "user": user } },
        { "name": "dead", "context": { "cluster": "dead", "user": user } },
    ]);
    config["current-context"] = json!("dead");
    let path = cluster.dir().join("two-contexts.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}
