//! The hub chart (`charts/fleetboard`) and the member chart (`charts/fleetboard-agent`):
//! `helm lint` and `helm template` with every values file of `tests/charts-values/` (valid ones
//! render, invalid ones fail naming the bad value), and `helm install` into a real apiserver:
//! objects created, CRDs Established, no shared member credential: a member joined with its own
//! identity manages its own Peer but reads no Secret, and is revoked by removal; RBAC allows
//! the hub, the agent and a member exactly what they need (`kubectl auth can-i`, `--list`). No controller-manager or kubelet runs
//! in the fixture, so pods never start: the tests check objects, not pods.

mod least_privilege;
mod member_identity;
mod probes;
mod repo;

use std::process::{Command, Output};
use std::time::Duration;

use fleetboard_control::crd::peer::Peer;
use fleetboard_control::membership;
use fleetboard_tests::charts::{
    AGENT_CHART, HUB_CHART, ValuesFile, chart_crds, chart_dir, helm_offline, values_files,
    wait_established,
};
use fleetboard_tests::kube::{Cluster, eventually};
use fleetboard_tests::netns::unique_token;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

const NS: &str = "fleetboard-system";
const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

/// Runs `cmd`, returning its output whether it succeeded or not.
fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// stdout and stderr together.
fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd`, which must succeed; returns stdout.
fn ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn temp_home() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fb-helm-{}", unique_token()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The documents `helm template` rendered, as JSON values.
fn documents(yaml: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_json::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn args_of(container: &serde_json::Value) -> Vec<String> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The container of a workload only asks for NET_ADMIN, after dropping everything.
fn assert_net_admin_only(container: &serde_json::Value) {
    let caps = &container["securityContext"]["capabilities"];
    assert_eq!(caps["add"], json!(["NET_ADMIN"]), "{container}");
    assert_eq!(caps["drop"], json!(["ALL"]), "{container}");
    assert_ne!(container["securityContext"]["privileged"], json!(true));
}

fn env_field_ref(container: &serde_json::Value, name: &str) -> String {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name}: {container}"))["valueFrom"]["fieldRef"]["fieldPath"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn valid_values_lint_and_render() {
    let home = temp_home();
    let files: Vec<ValuesFile> = values_files()
        .unwrap()
        .into_iter()
        .filter(|f| f.valid)
        .collect();
    assert!(
        files.iter().any(|f| f.chart == HUB_CHART) && files.iter().any(|f| f.chart == AGENT_CHART)
    );
    for file in &files {
        let chart = chart_dir(file.chart);
        let lint = ok(helm_offline(&home)
            .unwrap()
            .args(["lint", "--strict"])
            .arg(&chart)
            .arg("-f")
            .arg(&file.path));
        assert!(
            lint.contains("0 chart(s) failed"),
            "{}: {lint}",
            file.path.display()
        );
        let rendered = ok(helm_offline(&home)
            .unwrap()
            .args(["template", "fb", "--namespace", NS])
            .arg(&chart)
            .arg("-f")
            .arg(&file.path));
        let values: serde_json::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&file.path).unwrap()).unwrap();
        let docs = documents(&rendered);
        if file.chart == HUB_CHART {
            check_hub_render(&docs, &values);
        } else {
            check_agent_render(&docs, &values);
        }
    }
    let _ = std::fs::remove_dir_all(&home);
}

fn check_hub_render(docs: &[serde_json::Value], values: &serde_json::Value) {
    let deploy = find(docs, "Deployment", "fleetboard-hub");
    let replicas = values["replicaCount"].as_i64().unwrap_or(2);
    assert_eq!(deploy["spec"]["replicas"], json!(replicas));
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "fleetboard-hub");
    assert_ne!(pod["hostNetwork"], json!(true));
    let c = &pod["containers"][0];
    assert_net_admin_only(c);
    assert_eq!(env_field_ref(c, "POD_NAME"), "metadata.name");
    let args = args_of(c);
    let transport = values["tunnel"]["transport"].as_str().unwrap_or("wg");
    let endpoint = values["tunnel"]["endpoint"].as_str().unwrap();
    let cidr = values["tunnel"]["cidr"].as_str().unwrap_or("100.64.0.0/10");
    for want in [
        "hub".to_string(),
        format!("--namespace={NS}"),
        format!("--transport={transport}"),
        format!("--endpoint={endpoint}"),
        format!("--tunnel-cidr={cidr}"),
        format!(
            "--cluster-id={}",
            values["cluster"]["clusterID"].as_str().unwrap_or("hub")
        ),
        // The replica labels its own Pod (the kubelet expands $(POD_NAME)).
        "--label-pod=$(POD_NAME)".to_string(),
    ] {
        assert!(args.contains(&want), "hub args lack {want}: {args:?}");
    }
    if let Some(v6) = values["tunnel"]["cidrV6"].as_str() {
        assert!(args.contains(&format!("--tunnel-cidr={v6}")), "{args:?}");
    }
    let port = values["tunnel"]["port"].as_i64().unwrap_or(31820);
    let svc = find(docs, "Service", "fleetboard-hub");
    let svc_type = values["service"]["type"].as_str().unwrap_or("LoadBalancer");
    assert_eq!(svc["spec"]["type"], svc_type);
    // Members reach the leader only: the replicas are all ready, the leader is labelled.
    assert_eq!(svc["spec"]["selector"]["fleetboard.io/hub-role"], "leader");
    for (k, v) in deploy["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&svc["spec"]["selector"][k], v, "Service selector {k}");
    }
    // WireGuard on the tunnel port, QUIC on the next one, both UDP, in every Service type.
    let ports = svc["spec"]["ports"].as_array().unwrap();
    let node_port = values["service"]["nodePort"].as_i64();
    for (name, offset) in [("tunnel", 0), ("quic", 1)] {
        let p = ports
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("Service port {name} missing: {ports:?}"));
        assert_eq!(p["protocol"], "UDP", "{name}");
        assert_eq!(p["port"], json!(port + offset), "{name}");
        assert_eq!(p["targetPort"], name);
        let container_port = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|cp| cp["name"] == name)
            .unwrap_or_else(|| panic!("container port {name} missing"));
        assert_eq!(container_port["containerPort"], json!(port + offset));
        assert_eq!(container_port["protocol"], "UDP");
        if let Some(np) = node_port {
            assert_eq!(p["nodePort"], json!(np + offset), "{name}");
        }
    }
    // Members dial the published port: the node port behind a NodePort Service.
    let advertised = if svc_type == "NodePort" {
        node_port.expect("NodePort needs service.nodePort")
    } else {
        port
    };
    assert!(
        args.contains(&format!("--advertise-port={advertised}")),
        "{args:?}"
    );
    let annotations = &deploy["spec"]["template"]["metadata"]["annotations"];
    if values["metrics"]["annotations"] == json!(true) {
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(
            annotations["prometheus.io/port"],
            json!(values["metrics"]["port"].as_i64().unwrap().to_string())
        );
    } else {
        assert!(annotations.get("prometheus.io/scrape").is_none());
    }
    if let Some(sel) = values.get("nodeSelector") {
        assert_eq!(&pod["nodeSelector"], sel);
    }
    // No bootstrap token any more: each member gets its own identity (`kubectl peers join`).
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "Secret" && d["type"] == "bootstrap.kubernetes.io/token"),
        "the hub chart renders a shared bootstrap token"
    );
    let own = find(docs, "ClusterRole", "fleetboard-member-own");
    assert_eq!(
        own["rules"][1],
        json!({"apiGroups": [""], "resources": ["serviceaccounts/token"], "resourceNames": ["member"], "verbs": ["create"]})
    );
}

fn check_agent_render(docs: &[serde_json::Value], values: &serde_json::Value) {
    let ds = find(docs, "DaemonSet", "fleetboard-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "fleetboard-agent");
    assert_ne!(pod["hostNetwork"], json!(true));
    let c = &pod["containers"][0];
    assert_net_admin_only(c);
    assert_eq!(env_field_ref(c, "NODE_NAME"), "spec.nodeName");
    let token_env = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "FLEETBOARD_HUB_TOKEN_SECRET")
        .expect("FLEETBOARD_HUB_TOKEN_SECRET env");
    assert_eq!(token_env["value"], "fleetboard-hub-token");
    // The NRI plugin rides along (unless turned off), reading its sub-block from the Node.
    let nri = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "nri");
    if values["nri"]["enabled"] == json!(false) {
        assert!(nri.is_none(), "nri.enabled=false still renders the plugin");
    } else {
        let nri = nri.expect("the NRI plugin container");
        assert_eq!(env_field_ref(nri, "NODE_NAME"), "spec.nodeName");
        let nri_args = args_of(nri);
        assert_eq!(nri_args[0], "nri");
        assert!(
            !nri_args.iter().any(|a| a.starts_with("--pod-cidr")),
            "the sub-block comes from the Node: {nri_args:?}"
        );
        // Nor the tunnel CIDR: it is the hub's, from the Node annotation the agent writes.
        assert_eq!(
            nri_args.iter().any(|a| a.starts_with("--tunnel-cidr")),
            values["nri"]["tunnelCIDR"]
                .as_str()
                .is_some_and(|v| !v.is_empty()),
            "--tunnel-cidr only when the deprecated nri.tunnelCIDR is set: {nri_args:?}"
        );
        assert!(
            nri_args.contains(&format!("--own-namespace={NS}")),
            "{nri_args:?}"
        );
    }
    let args = args_of(c);
    let hub = &values["hub"];
    for want in [
        "agent".to_string(),
        format!("--namespace={NS}"),
        format!(
            "--cluster-id={}",
            values["cluster"]["clusterID"].as_str().unwrap()
        ),
        format!("--hub-url={}", hub["hubURL"].as_str().unwrap()),
        format!(
            "--transport={}",
            values["tunnel"]["transport"].as_str().unwrap_or("wg")
        ),
    ] {
        assert!(args.contains(&want), "agent args lack {want}: {args:?}");
    }
    for cidr in values["cluster"]["cidrs"].as_array().into_iter().flatten() {
        assert!(
            args.contains(&format!("--cidr={}", cidr.as_str().unwrap())),
            "{args:?}"
        );
    }
    assert!(
        !args
            .iter()
            .any(|a| a.contains(hub["token"].as_str().unwrap())),
        "token on the command line: {args:?}"
    );
    let secret = find(docs, "Secret", "fleetboard-hub-token");
    assert_eq!(
        decode(secret["data"]["token"].as_str().unwrap()),
        hub["token"].as_str().unwrap()
    );
    let has_ca = hub["caData"].as_str().is_some_and(|s| !s.is_empty());
    assert_eq!(
        args.contains(&"--hub-ca-file=/etc/fleetboard/hub/ca.crt".to_string()),
        has_ca
    );
    if has_ca {
        assert_eq!(secret["data"]["ca.crt"], hub["caData"]);
    }
    let ports = c["ports"].as_array().unwrap();
    let tunnel = ports.iter().find(|p| p["name"] == "tunnel").unwrap();
    assert_eq!(tunnel["protocol"], "UDP");
    assert_eq!(
        tunnel.get("hostPort").is_some(),
        values["tunnel"]["hostPort"] == json!(true)
    );
    check_agent_mcs_render(docs, values, &args);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for k in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ] {
        assert!(kinds.contains(&k), "agent chart lacks a {k}: {kinds:?}");
    }
}

/// The MCS flags of the agent and the optional `fleetboard-dns` Deployment and Service.
fn check_agent_mcs_render(docs: &[serde_json::Value], values: &serde_json::Value, args: &[String]) {
    let mcs = &values["mcs"];
    if mcs["enabled"] == json!(false) {
        assert!(args.contains(&"--no-mcs".to_string()), "{args:?}");
        assert!(!args.iter().any(|a| a.starts_with("--service-cidr")));
    } else {
        let cidrs: Vec<String> = match mcs["serviceCIDRs"].as_array() {
            Some(v) => v.iter().map(|c| c.as_str().unwrap().to_string()).collect(),
            None => vec!["100.127.0.0/16".to_string()],
        };
        for c in cidrs {
            assert!(args.contains(&format!("--service-cidr={c}")), "{args:?}");
        }
        assert!(!args.contains(&"--no-mcs".to_string()));
    }
    let dns = &values["dns"];
    let named = |kind: &str| {
        docs.iter()
            .any(|d| d["kind"] == kind && d["metadata"]["name"] == "fleetboard-dns")
    };
    if dns["enabled"] == json!(false) {
        for kind in ["Deployment", "Service", "ServiceAccount", "ClusterRole"] {
            assert!(
                !named(kind),
                "dns disabled but a {kind} fleetboard-dns is rendered"
            );
        }
        return;
    }
    let deploy = find(docs, "Deployment", "fleetboard-dns");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "fleetboard-dns");
    let c = &pod["containers"][0];
    let port = dns["containerPort"].as_u64().unwrap_or(5353);
    let zone = dns["zone"].as_str().unwrap_or("clusterset.local");
    let dargs = args_of(c);
    for want in [
        "dns".to_string(),
        format!("--listen=0.0.0.0:{port}"),
        format!("--zone={zone}"),
    ] {
        assert!(dargs.contains(&want), "dns args lack {want}: {dargs:?}");
    }
    assert!(!dargs.iter().any(|a| a.contains("token")), "{dargs:?}");
    let svc = find(docs, "Service", "fleetboard-dns");
    let ports = svc["spec"]["ports"].as_array().unwrap();
    for proto in ["UDP", "TCP"] {
        assert!(
            ports
                .iter()
                .any(|p| p["port"] == 53 && p["protocol"] == proto),
            "{ports:?}"
        );
    }
    if let Some(ip) = dns["serviceIP"].as_str().filter(|s| !s.is_empty()) {
        assert_eq!(svc["spec"]["clusterIP"], ip);
    }
    let role = find(docs, "ClusterRole", "fleetboard-dns");
    for rule in role["rules"].as_array().unwrap() {
        assert_eq!(rule["verbs"], json!(["get", "list", "watch"]), "{rule}");
    }
}

fn decode(b64: &str) -> String {
    let out = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b64.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// Both the schema (bad CIDR, transport, cluster id, token, URL, unknown key) and the
/// templates (`required` values) refuse invalid values with a message naming the value.
#[test]
fn invalid_values_fail_naming_the_bad_value() {
    let home = temp_home();
    let files: Vec<ValuesFile> = values_files()
        .unwrap()
        .into_iter()
        .filter(|f| !f.valid)
        .collect();
    assert!(files.len() >= 8, "{files:?}");
    for file in &files {
        assert!(
            !file.expect.is_empty(),
            "{} has no `# expect:` line",
            file.path.display()
        );
        let chart = chart_dir(file.chart);
        let out = output(
            helm_offline(&home)
                .unwrap()
                .args(["template", "fb", "--namespace", NS])
                .arg(&chart)
                .arg("-f")
                .arg(&file.path),
        );
        let msg = text(&out);
        assert!(
            !out.status.success(),
            "{} rendered:\n{msg}",
            file.path.display()
        );
        for want in &file.expect {
            assert!(
                msg.contains(want),
                "{}: error does not name {want:?}:\n{msg}",
                file.path.display()
            );
        }
        // helm lint reports it too: schema errors fail, a missing `required` value is reported.
        let lint = output(
            helm_offline(&home)
                .unwrap()
                .arg("lint")
                .arg(&chart)
                .arg("-f")
                .arg(&file.path),
        );
        let lint_msg = text(&lint);
        for want in &file.expect {
            assert!(
                lint_msg.contains(want),
                "{}: lint does not report {want:?}:\n{lint_msg}",
                file.path.display()
            );
        }
    }
    // Linting the charts as shipped (default values) is clean.
    for chart in [HUB_CHART, AGENT_CHART] {
        let lint = ok(helm_offline(&home)
            .unwrap()
            .arg("lint")
            .arg(chart_dir(chart)));
        assert!(lint.contains("0 chart(s) failed"), "{lint}");
    }
    let _ = std::fs::remove_dir_all(&home);
}

/// `helm install` refuses every invalid values file (nothing gets installed), naming the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_values_fail_at_install() {
    let cluster = Cluster::start().await.unwrap();
    for file in values_files().unwrap().into_iter().filter(|f| !f.valid) {
        let out = output(
            cluster
                .helm()
                .unwrap()
                .args(["install", "bad", "--namespace", NS, "--create-namespace"])
                .arg(chart_dir(file.chart))
                .arg("-f")
                .arg(&file.path),
        );
        let msg = text(&out);
        assert!(
            !out.status.success(),
            "{} installed:\n{msg}",
            file.path.display()
        );
        for want in &file.expect {
            assert!(
                msg.contains(want),
                "{}: install error does not name {want:?}:\n{msg}",
                file.path.display()
            );
        }
    }
    let list = ok(cluster.helm().unwrap().args(["list", "-A", "-q"]));
    assert!(
        list.trim().is_empty(),
        "releases after failed installs: {list}"
    );
}

fn install_hub(cluster: &Cluster, extra: &[&str]) -> String {
    ok(cluster
        .helm()
        .unwrap()
        .args([
            "install",
            "fleetboard",
            "--namespace",
            NS,
            "--create-namespace",
        ])
        .arg(chart_dir(HUB_CHART))
        .args(["--set", "tunnel.endpoint=198.18.0.10"])
        .args(extra))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_chart_installs_upgrades_and_joins_each_member_with_its_own_identity() {
    let hub = &Cluster::start().await.unwrap();
    let notes = install_hub(hub, &[]);
    let client = hub.client();

    // CRDs from crds/ (the Peer CRD, and whatever else the chart ships) are Established.
    let crds = chart_crds(HUB_CHART).unwrap();
    assert!(
        crds.iter()
            .any(|c| c.metadata.name.as_deref() == Some("peers.fleetboard.io"))
    );
    for crd in &crds {
        wait_established(&client, crd.metadata.name.as_deref().unwrap(), DEADLINE)
            .await
            .unwrap();
    }
    // The objects.
    let deploy = Api::<Deployment>::namespaced(client.clone(), NS)
        .get("fleetboard-hub")
        .await
        .unwrap();
    let spec = deploy.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("fleetboard-hub"));
    let c = &pod.containers[0];
    let pod_name = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "POD_NAME")
        .unwrap();
    assert_eq!(
        pod_name
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "metadata.name"
    );
    let caps = c
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap();
    assert_eq!(caps.add.as_deref(), Some(&["NET_ADMIN".to_string()][..]));
    let svc = Api::<Service>::namespaced(client.clone(), NS)
        .get("fleetboard-hub")
        .await
        .unwrap();
    let svc_spec = svc.spec.unwrap();
    assert_eq!(svc_spec.type_.as_deref(), Some("LoadBalancer"));
    let port = &svc_spec.ports.unwrap()[0];
    assert_eq!((port.port, port.protocol.as_deref()), (31820, Some("UDP")));
    Api::<ServiceAccount>::namespaced(client.clone(), NS)
        .get("fleetboard-hub")
        .await
        .unwrap();
    Api::<Role>::namespaced(client.clone(), NS)
        .get("fleetboard-member")
        .await
        .unwrap();
    for name in ["fleetboard-hub"] {
        Api::<Role>::namespaced(client.clone(), NS)
            .get(name)
            .await
            .unwrap();
        Api::<RoleBinding>::namespaced(client.clone(), NS)
            .get(name)
            .await
            .unwrap();
    }
    // Nothing cluster-wide is granted to the hub, nor to anyone before a member joins.
    let fleetboard_crbs = |client: kube::Client| async move {
        Api::<ClusterRoleBinding>::all(client)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|b| {
                b.subjects.iter().flatten().any(|s| {
                    s.name.starts_with("fleetboard")
                        || s.namespace
                            .as_deref()
                            .is_some_and(|n| n.starts_with("fleetboard"))
                })
            })
            .filter_map(|b| b.metadata.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(fleetboard_crbs(client.clone()).await, Vec::<String>::new());
    // No shared credential: no bootstrap token Secret.
    let tokens = Api::<Secret>::namespaced(client.clone(), "kube-system")
        .list(&ListParams::default().fields("type=bootstrap.kubernetes.io/token"))
        .await
        .unwrap();
    assert!(tokens.items.is_empty(), "a bootstrap token: {tokens:?}");
    ok(hub
        .helm()
        .unwrap()
        .args(["upgrade", "fleetboard", "--namespace", NS])
        .arg(chart_dir(HUB_CHART))
        .args([
            "--set",
            "tunnel.endpoint=198.18.0.10",
            "--set",
            "replicaCount=3",
        ]));
    let deploy = Api::<Deployment>::namespaced(client.clone(), NS)
        .get("fleetboard-hub")
        .await
        .unwrap();
    assert_eq!(
        deploy.spec.unwrap().replicas,
        Some(3),
        "the upgrade applied"
    );

    // NOTES say how a member joins.
    for want in [
        "kubectl peers join <member-cluster-id> -n fleetboard-system",
        "kubectl peers remove <member-cluster-id>",
        "kubectl peers -n fleetboard-system",
        "WireGuard 31820/UDP and QUIC 31821/UDP",
    ] {
        assert!(notes.contains(want), "NOTES lack {want:?}:\n{notes}");
    }

    // A joined member's own token manages its own Peer in the shared namespace...
    let joined = membership::join(&client, &membership::JoinOptions::new(NS, "member-a"))
        .await
        .unwrap();
    assert_eq!(joined.namespace, "fleetboard-member-member-a");
    let member = hub.client_with_token(&joined.token.token).await.unwrap();
    let peers: Api<Peer> = Api::namespaced(member.clone(), NS);
    let p: Peer = serde_json::from_value(json!({
        "apiVersion": "fleetboard.io/v1alpha1", "kind": "Peer",
        "metadata": { "name": "member-a" },
        "spec": { "clusterId": "member-a", "endpoint": "198.18.1.1" },
    }))
    .unwrap();
    eventually("the member creates its Peer", DEADLINE, POLL, || async {
        match peers.create(&PostParams::default(), &p).await {
            Ok(_) => Ok(Some(())),
            // 404 until the CRD is served.
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await
    .unwrap();
    let names: Vec<String> = peers
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(names, ["member-a"]);
    assert_eq!(
        fleetboard_crbs(client.clone()).await,
        ["fleetboard-member-member-a"],
        "join binds the member's read access, nothing else cluster-wide"
    );
    // ...and nothing else: no Secrets anywhere, no Peers outside the shared namespace, no status.
    for ns in [NS, "kube-system", "default", joined.namespace.as_str()] {
        let err = Api::<Secret>::namespaced(member.clone(), ns)
            .list(&ListParams::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 403),
            "list secrets in {ns}: {err:?}"
        );
    }
    let err = Api::<Peer>::namespaced(member.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err:?}"
    );
    let err = peers
        .patch_status(
            "member-a",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {"allocatedCidrs": ["100.64.9.0/24"]}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "a member wrote Peer status: {err:?}"
    );
    // A made-up token is refused outright.
    let bogus = hub
        .client_with_token("abcdef.0123456789abcdef")
        .await
        .unwrap();
    let err = Api::<Peer>::namespaced(bogus, NS)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 401),
        "{err:?}"
    );

    // Removing the member revokes its token and its Peer, at once.
    let removed_at = std::time::Instant::now();
    let removed = membership::remove(&client, NS, "member-a").await.unwrap();
    assert!(
        removed
            .deleted
            .iter()
            .any(|d| d.starts_with("serviceaccount/member"))
            && removed
                .deleted
                .iter()
                .any(|d| d.starts_with("peer/member-a")),
        "{removed:?}"
    );
    eventually(
        "the removed member's token is refused",
        DEADLINE,
        POLL,
        || async {
            match peers.list(&ListParams::default()).await {
                Err(kube::Error::Api(s)) if s.code == 401 => Ok(Some(())),
                _ => Ok(None),
            }
        },
    )
    .await
    .unwrap();
    println!(
        "member removed: its token refused {:.2} s after kubectl peers remove began",
        removed_at.elapsed().as_secs_f64()
    );
    assert!(
        Api::<Peer>::namespaced(client.clone(), NS)
            .get_opt("member-a")
            .await
            .unwrap()
            .is_none(),
        "the removed member's Peer is left"
    );
}

/// `kubectl auth can-i <verb> <resource> [-n ns] --as <who>` (plus extra args): yes or no.
/// Creates a minimal namespaced CRD `<plural>.<group>` (with a status subresource) unless the
/// charts already installed the real one, and waits until it is Established.
async fn ensure_stand_in_crd(client: &kube::Client, group: &str, plural: &str, kind: &str) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let name = format!("{plural}.{group}");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    if api.get_opt(&name).await.unwrap().is_none() {
        let crd: CustomResourceDefinition = serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": {
                "group": group, "scope": "Namespaced",
                "names": { "plural": plural, "singular": kind.to_lowercase(), "kind": kind },
                "versions": [{
                    "name": "v1alpha1", "served": true, "storage": true,
                    "subresources": { "status": {} },
                    "schema": { "openAPIV3Schema": {
                        "type": "object", "x-kubernetes-preserve-unknown-fields": true,
                    }},
                }],
            },
        }))
        .unwrap();
        api.create(&PostParams::default(), &crd).await.unwrap();
    }
    wait_established(client, &name, DEADLINE).await.unwrap();
}

fn can_i(
    cluster: &Cluster,
    who: &str,
    verb: &str,
    resource: &str,
    ns: Option<&str>,
    extra: &[&str],
) -> bool {
    let mut cmd = cluster.kubectl().unwrap();
    cmd.args(["auth", "can-i", verb, resource, "--as", who])
        .arg("--cache-dir")
        .arg(cluster.dir().join("kubectl-cache"))
        .args(extra);
    match ns {
        Some(ns) => cmd.args(["-n", ns]),
        None => cmd.arg("--all-namespaces"),
    };
    let out = output(&mut cmd);
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // An unknown kind would silently be asked about as a group-less resource.
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("doesn't have a resource type")
            || ["*", "users"].contains(&resource),
        "{cmd:?}: {}",
        text(&out)
    );
    assert!(answer == "yes" || answer == "no", "{cmd:?}: {}", text(&out));
    answer == "yes"
}

/// Checks every (verb, resource, namespace, extra args) of `allowed` is allowed for `who` and
/// every one of `denied` is denied; reports all mismatches at once.
fn check_rights(
    cluster: &Cluster,
    who: &str,
    allowed: &[(&str, &str, Option<&str>, &[&str])],
    denied: &[(&str, &str, Option<&str>, &[&str])],
) {
    let mut wrong = Vec::new();
    for (want, set) in [(true, allowed), (false, denied)] {
        for (verb, resource, ns, extra) in set {
            if can_i(cluster, who, verb, resource, *ns, extra) != want {
                wrong.push(format!(
                    "{} {verb} {resource} {} {extra:?}",
                    if want {
                        "DENIED but needed:"
                    } else {
                        "ALLOWED but not needed:"
                    },
                    ns.map(|n| format!("-n {n}"))
                        .unwrap_or_else(|| "(all namespaces)".into())
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{who}:\n{}", wrong.join("\n"));
}

const NONE: &[&str] = &[];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_and_agent_get_exactly_the_rights_they_need() {
    let cluster = Cluster::start().await.unwrap();
    install_hub(&cluster, &[]);
    let joined = membership::join(
        &cluster.client(),
        &membership::JoinOptions::new(NS, "member-a"),
    )
    .await
    .unwrap();
    let token = joined.token.token;
    let ca = std::fs::read(cluster.ca_cert()).unwrap();
    let ca_b64 = ok(Command::new("base64").arg("-w0").arg(cluster.ca_cert()));
    assert!(!ca.is_empty());
    let notes = ok(cluster
        .helm()
        .unwrap()
        .args(["install", "fleetboard-agent", "--namespace", NS])
        .arg(chart_dir(AGENT_CHART))
        .args([
            "--set",
            "cluster.clusterID=member-a",
            "--set",
            &format!("hub.hubURL={}", cluster.url()),
        ])
        .args([
            "--set",
            &format!("hub.token={token}"),
            "--set",
            &format!("hub.caData={}", ca_b64.trim()),
        ]));
    assert!(notes.contains("member-a"), "{notes}");
    let client = cluster.client();

    // The agent's objects.
    let ds = Api::<DaemonSet>::namespaced(client.clone(), NS)
        .get("fleetboard-agent")
        .await
        .unwrap();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    let node = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .unwrap();
    assert_eq!(
        node.value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "spec.nodeName"
    );
    let caps = c
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap();
    assert_eq!(caps.add.as_deref(), Some(&["NET_ADMIN".to_string()][..]));
    assert_ne!(pod.host_network, Some(true));
    let hub_secret = Api::<Secret>::namespaced(client.clone(), NS)
        .get("fleetboard-hub-token")
        .await
        .unwrap();
    let data = hub_secret.data.unwrap();
    assert_eq!(data["token"].0, token.as_bytes());
    assert_eq!(data["ca.crt"].0, ca);
    Api::<ClusterRole>::all(client.clone())
        .get("fleetboard-agent")
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .get("fleetboard-agent")
        .await
        .unwrap();

    // `kubectl auth can-i` resolves a resource through discovery and, for a kind the server
    // does not serve, asks about a group-less resource instead. The MCS CRDs and the
    // exportedservices CRD come with the mcs work: stand-ins make those kinds served here.
    for (group, plural, kind) in [
        ("fleetboard.io", "exportedservices", "ExportedService"),
        ("multicluster.x-k8s.io", "serviceexports", "ServiceExport"),
        ("multicluster.x-k8s.io", "serviceimports", "ServiceImport"),
    ] {
        ensure_stand_in_crd(&client, group, plural, kind).await;
    }
    let hub = format!("system:serviceaccount:{NS}:fleetboard-hub");
    let ns = Some(NS);
    let status: &[&str] = &["--subresource=status"];
    let mut allowed: Vec<(&str, &str, Option<&str>, &[&str])> = Vec::new();
    for verb in [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ] {
        allowed.push((verb, "peers.fleetboard.io", ns, NONE));
        allowed.push((verb, "peers.fleetboard.io", ns, status));
    }
    allowed.extend([
        ("create", "leases.coordination.k8s.io", ns, NONE),
        ("get", "leases.coordination.k8s.io/fleetboard-hub", ns, NONE),
        (
            "update",
            "leases.coordination.k8s.io/fleetboard-hub",
            ns,
            NONE,
        ),
        (
            "watch",
            "leases.coordination.k8s.io/fleetboard-hub",
            ns,
            NONE,
        ),
        ("create", "secrets", ns, NONE),
        ("get", "secrets/fleetboard-hub-keys", ns, NONE),
        ("update", "secrets/fleetboard-hub-keys", ns, NONE),
        ("create", "events", ns, NONE),
        // Its own Pod's role label (the Service selects the leader by it).
        ("patch", "pods", ns, NONE),
    ]);
    let denied: Vec<(&str, &str, Option<&str>, &[&str])> = vec![
        ("deletecollection", "peers.fleetboard.io", ns, NONE),
        ("create", "peers.fleetboard.io", Some("default"), NONE),
        ("list", "peers.fleetboard.io", None, NONE),
        ("get", "exportedservices.fleetboard.io", ns, NONE),
        ("create", "exportedservices.fleetboard.io", ns, NONE),
        ("delete", "exportedservices.fleetboard.io", ns, NONE),
        ("get", "secrets", ns, NONE),
        ("list", "secrets", ns, NONE),
        ("get", "secrets/fleetboard-cluster-keys", ns, NONE),
        ("delete", "secrets/fleetboard-hub-keys", ns, NONE),
        ("get", "secrets", Some("kube-system"), NONE),
        ("list", "secrets", None, NONE),
        ("get", "leases.coordination.k8s.io/other", ns, NONE),
        ("watch", "leases.coordination.k8s.io", ns, NONE),
        (
            "delete",
            "leases.coordination.k8s.io/fleetboard-hub",
            ns,
            NONE,
        ),
        ("list", "nodes", None, NONE),
        ("get", "pods", ns, NONE),
        ("create", "pods", ns, NONE),
        ("delete", "pods", ns, NONE),
        ("patch", "pods", Some("kube-system"), NONE),
        ("create", "pods/exec", ns, NONE),
        ("create", "clusterrolebindings", None, NONE),
        ("create", "rolebindings", ns, NONE),
        ("impersonate", "users", None, NONE),
        ("*", "*", None, NONE),
        ("*", "*", ns, NONE),
    ];
    check_rights(&cluster, &hub, &allowed, &denied);

    let agent = format!("system:serviceaccount:{NS}:fleetboard-agent");
    let mut allowed: Vec<(&str, &str, Option<&str>, &[&str])> = Vec::new();
    for verb in ["get", "list", "watch", "patch"] {
        allowed.push((verb, "nodes", None, NONE));
        allowed.push((verb, "pods", None, NONE));
    }
    for verb in ["get", "list", "watch"] {
        allowed.push((verb, "namespaces", None, NONE));
        allowed.push((verb, "services", None, NONE));
    }
    for verb in [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ] {
        allowed.push((verb, "endpointslices.discovery.k8s.io", None, NONE));
        for r in [
            "serviceexports.multicluster.x-k8s.io",
            "serviceimports.multicluster.x-k8s.io",
        ] {
            allowed.push((verb, r, None, NONE));
            allowed.push((verb, r, None, status));
        }
    }
    allowed.extend([
        ("create", "events", Some("default"), NONE),
        ("get", "secrets/fleetboard-cluster-keys", ns, NONE),
        ("update", "secrets/fleetboard-cluster-keys", ns, NONE),
        // The member's hub token: read and followed by every agent, renewed by the gateway.
        ("get", "secrets/fleetboard-hub-token", ns, NONE),
        ("watch", "secrets/fleetboard-hub-token", ns, NONE),
        ("update", "secrets/fleetboard-hub-token", ns, NONE),
        ("patch", "secrets/fleetboard-hub-token", ns, NONE),
        ("create", "leases.coordination.k8s.io", ns, NONE),
        (
            "get",
            "leases.coordination.k8s.io/fleetboard-gateway",
            ns,
            NONE,
        ),
        (
            "update",
            "leases.coordination.k8s.io/fleetboard-gateway",
            ns,
            NONE,
        ),
        (
            "watch",
            "leases.coordination.k8s.io/fleetboard-gateway",
            ns,
            NONE,
        ),
    ]);
    let denied: Vec<(&str, &str, Option<&str>, &[&str])> = vec![
        ("create", "nodes", None, NONE),
        ("update", "nodes", None, NONE),
        ("delete", "nodes", None, NONE),
        ("create", "pods", ns, NONE),
        ("delete", "pods", ns, NONE),
        ("create", "pods/exec", ns, NONE),
        ("create", "services", ns, NONE),
        ("delete", "namespaces", None, NONE),
        ("get", "configmaps", ns, NONE),
        (
            "deletecollection",
            "endpointslices.discovery.k8s.io",
            None,
            NONE,
        ),
        (
            "deletecollection",
            "serviceexports.multicluster.x-k8s.io",
            None,
            NONE,
        ),
        (
            "deletecollection",
            "serviceimports.multicluster.x-k8s.io",
            None,
            NONE,
        ),
        ("list", "secrets", ns, NONE),
        ("delete", "secrets", ns, NONE),
        // Only the cluster keys and the hub token, by name: no other Secret, no new ones.
        ("get", "secrets", ns, NONE),
        ("get", "secrets/other", ns, NONE),
        ("delete", "secrets/fleetboard-hub-token", ns, NONE),
        ("create", "secrets", ns, NONE),
        ("update", "secrets", ns, NONE),
        ("get", "secrets", Some("kube-system"), NONE),
        ("get", "secrets", Some("default"), NONE),
        ("get", "leases.coordination.k8s.io/fleetboard-hub", ns, NONE),
        (
            "delete",
            "leases.coordination.k8s.io/fleetboard-gateway",
            ns,
            NONE,
        ),
        ("get", "peers.fleetboard.io", ns, NONE),
        ("create", "clusterrolebindings", None, NONE),
        ("impersonate", "serviceaccounts", None, NONE),
        ("*", "*", None, NONE),
    ];
    check_rights(&cluster, &agent, &allowed, &denied);

    // fleetboard-dns: reads imports and their slices, nothing else.
    let dns = format!("system:serviceaccount:{NS}:fleetboard-dns");
    let mut allowed: Vec<(&str, &str, Option<&str>, &[&str])> = Vec::new();
    for verb in ["get", "list", "watch"] {
        allowed.push((verb, "serviceimports.multicluster.x-k8s.io", None, NONE));
        allowed.push((verb, "endpointslices.discovery.k8s.io", None, NONE));
    }
    let denied: Vec<(&str, &str, Option<&str>, &[&str])> = vec![
        ("create", "serviceimports.multicluster.x-k8s.io", ns, NONE),
        ("update", "serviceimports.multicluster.x-k8s.io", ns, NONE),
        ("get", "serviceexports.multicluster.x-k8s.io", ns, NONE),
        ("create", "endpointslices.discovery.k8s.io", ns, NONE),
        ("delete", "endpointslices.discovery.k8s.io", ns, NONE),
        ("list", "services", None, NONE),
        ("list", "pods", None, NONE),
        ("get", "secrets", ns, NONE),
        (
            "get",
            "leases.coordination.k8s.io/fleetboard-gateway",
            ns,
            NONE,
        ),
        ("*", "*", None, NONE),
    ];
    check_rights(&cluster, &dns, &allowed, &denied);

    // A member's own identity in the hub (`kubectl peers join member-a`): Peers in the shared
    // namespace (the admission policy narrows writes to its own), its exports and its own
    // tokens in its namespace, everyone's exports to read, nothing else.
    let who = membership::member_user("member-a");
    let own = Some("fleetboard-member-member-a");
    let other = Some("fleetboard-member-member-b");
    let mut allowed: Vec<(&str, &str, Option<&str>, &[&str])> = Vec::new();
    for verb in [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ] {
        allowed.push((verb, "peers.fleetboard.io", ns, NONE));
        allowed.push((verb, "exportedservices.fleetboard.io", own, NONE));
    }
    for verb in ["get", "list", "watch"] {
        allowed.push((verb, "exportedservices.fleetboard.io", None, NONE));
    }
    let token_sub: &[&str] = &["--subresource=token"];
    allowed.push(("create", "serviceaccounts/member", own, token_sub));
    let denied: Vec<(&str, &str, Option<&str>, &[&str])> = vec![
        ("deletecollection", "peers.fleetboard.io", ns, NONE),
        ("update", "peers.fleetboard.io", ns, status),
        ("patch", "peers.fleetboard.io", ns, status),
        ("create", "exportedservices.fleetboard.io", ns, NONE),
        ("create", "exportedservices.fleetboard.io", other, NONE),
        ("delete", "exportedservices.fleetboard.io", other, NONE),
        (
            "deletecollection",
            "exportedservices.fleetboard.io",
            own,
            NONE,
        ),
        ("create", "serviceaccounts/member", other, token_sub),
        ("create", "serviceaccounts/fleetboard-hub", ns, token_sub),
        ("create", "serviceaccounts/other", own, token_sub),
        ("get", "serviceaccounts", own, NONE),
        ("delete", "serviceaccounts/member", own, NONE),
        ("update", "resourcequotas", own, NONE),
        ("delete", "namespaces", None, NONE),
        ("get", "secrets", ns, NONE),
        ("get", "secrets", own, NONE),
        ("get", "peers.fleetboard.io", Some("default"), NONE),
        ("get", "leases.coordination.k8s.io", ns, NONE),
        ("list", "nodes", None, NONE),
        ("create", "rolebindings", own, NONE),
        ("*", "*", None, NONE),
    ];
    check_rights(&cluster, &who, &allowed, &denied);
    // `kubectl auth can-i --list` in each namespace shows exactly that (beside the self-review
    // rules every authenticated user has).
    for (namespace, want) in [
        (
            NS,
            vec!["peers.fleetboard.io [] [get list watch create update patch delete]"],
        ),
        (
            "fleetboard-member-member-a",
            vec![
                "exportedservices.fleetboard.io [] [get list watch create update patch delete]",
                "serviceaccounts/token [member] [create]",
            ],
        ),
        (
            "default",
            vec!["exportedservices.fleetboard.io [] [get list watch]"],
        ),
    ] {
        let mut got = can_i_list(&cluster, &who, namespace);
        got.retain(|r| {
            r != "exportedservices.fleetboard.io [] [get list watch]" || namespace == "default"
        });
        assert_eq!(
            got, want,
            "kubectl auth can-i --list --as {who} -n {namespace}"
        );
    }
}

/// `kubectl auth can-i --list -n ns --as who`: each resource rule as
/// "<resource> [<names>] [<verbs>]", without the self-review rules of every authenticated user
/// and without non-resource URLs.
fn can_i_list(cluster: &Cluster, who: &str, ns: &str) -> Vec<String> {
    let mut cmd = cluster.kubectl().unwrap();
    cmd.args(["auth", "can-i", "--list", "--as", who, "-n", ns])
        .arg("--cache-dir")
        .arg(cluster.dir().join("kubectl-cache"));
    let out = ok(&mut cmd);
    let mut rows: Vec<String> = out
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // Resources  Non-Resource URLs  Resource Names  Verbs: a resource row has the
            // resource first; non-resource rows start with "[".
            let resource = *cols.first()?;
            if resource.starts_with('[') || resource.starts_with("selfsubject") {
                return None;
            }
            let rest = l[l.find(resource)? + resource.len()..].trim();
            // rest: "[] [names...] [verbs...]"
            let groups: Vec<&str> = rest
                .split(']')
                .map(|g| g.trim().trim_start_matches('['))
                .collect();
            Some(format!(
                "{resource} [{}] [{}]",
                groups.get(1)?.trim(),
                groups.get(2)?.trim()
            ))
        })
        .collect();
    rows.sort();
    rows
}
