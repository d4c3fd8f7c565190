//! The charts' liveness and readiness probes against the processes they probe: every HTTP
//! probe of every rendered container targets a port that container's process serves (its
//! `--metrics-address` / `--health-address`), and each of those processes (`fleetboard hub`,
//! `fleetboard agent`, `fleetboard dns`) answers `/live` 200 from its start while it cannot
//! reach any apiserver (a standby hub, an agent that has not joined, a DNS server with no
//! zone yet), with `/ready` 503 until it can do its job.

use std::time::Duration;

use fleetboard_tests::binaries::bin;
use fleetboard_tests::charts::{AGENT_CHART, HUB_CHART, chart_dir, helm_offline};
use fleetboard_tests::netns::unique_token;
use fleetboard_tests::process::{ChildGuard, http_get, http_status, wait_for};

use super::{NS, args_of, documents, ok, temp_home};

const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

/// The containers of every workload `chart` renders with `values`.
fn containers(chart: &str, values: &[&str]) -> Vec<serde_json::Value> {
    let home = temp_home();
    let mut cmd = helm_offline(&home).unwrap();
    cmd.args(["template", "fb", "--namespace", NS])
        .arg(chart_dir(chart));
    for v in values {
        cmd.args(["--set", v]);
    }
    let docs = documents(&ok(&mut cmd));
    let _ = std::fs::remove_dir_all(&home);
    docs.iter()
        .filter_map(|d| d["spec"]["template"]["spec"]["containers"].as_array())
        .flatten()
        .cloned()
        .collect()
}

#[test]
fn every_http_probe_targets_a_port_its_process_serves() {
    let hub = containers(HUB_CHART, &["tunnel.endpoint=198.18.0.10"]);
    let agent = containers(
        AGENT_CHART,
        &[
            "cluster.clusterID=m1",
            "hub.hubURL=https://198.18.0.1:6443",
            "hub.token=abcdef.0123456789abcdef",
        ],
    );
    let mut probed = Vec::new();
    for c in hub.iter().chain(&agent) {
        let name = c["name"].as_str().unwrap();
        for kind in ["livenessProbe", "readinessProbe"] {
            let get = &c[kind]["httpGet"];
            if get.is_null() {
                continue;
            }
            let port_name = get["port"].as_str().expect("probes name their port");
            let port = c["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == port_name)
                .unwrap_or_else(|| panic!("{name}: {kind} port {port_name} is not declared"))
                ["containerPort"]
                .as_i64()
                .unwrap();
            let args = args_of(c);
            // Bound to the pod IP (what the kubelet probes), never to 0.0.0.0: the address
            // is `$(VAR)` with VAR the container's status.podIP.
            let pod_ip_vars: Vec<String> = c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP")
                .map(|e| format!("$({})", e["name"].as_str().unwrap()))
                .collect();
            assert!(
                args.iter().any(|a| {
                    let Some((flag, addr)) = a.split_once('=') else {
                        return false;
                    };
                    (flag == "--metrics-address" || flag == "--health-address")
                        && addr.rsplit_once(':').is_some_and(|(ip, p)| {
                            p == port.to_string() && pod_ip_vars.iter().any(|v| v == ip)
                        })
                }),
                "{name}: {kind} probes port {port} on the pod IP, which the process does not \
                 serve there: {args:?} (pod IP variables {pod_ip_vars:?})"
            );
            let path = get["path"].as_str().unwrap();
            let want = if kind == "livenessProbe" {
                "/live"
            } else {
                "/ready"
            };
            assert_eq!(path, want, "{name} {kind}");
            probed.push(format!("{name}/{kind}"));
        }
    }
    // The hub, the agent and the DNS server each have both probes.
    for c in ["hub", "agent", "dns"] {
        for kind in ["livenessProbe", "readinessProbe"] {
            let want = format!("{c}/{kind}");
            assert!(probed.contains(&want), "no HTTP {want}: {probed:?}");
        }
    }
}

/// A free TCP port on 127.0.0.1 (closed again: nothing listens there).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `/live` answers 200, then checks `/ready` answers 503, on `port` of `proc`.
fn live_not_ready(what: &str, proc: &mut ChildGuard, port: u16) {
    let r = wait_for(&format!("{what} /live 200"), DEADLINE, POLL, || {
        if let Some(status) = proc.try_wait() {
            anyhow::bail!("{what} exited ({status})");
        }
        Ok((http_status(port, "/live") == Some(200)).then_some(()))
    });
    if let Err(e) = r {
        panic!("{e}\n{}", proc.log());
    }
    assert_eq!(
        http_status(port, "/ready"),
        Some(503),
        "{what} /ready\n{}",
        proc.log()
    );
}

#[test]
fn processes_are_live_before_they_lead_join_or_list() {
    let dir = std::env::temp_dir().join(format!("fb-probes-{}", unique_token()));
    std::fs::create_dir_all(&dir).unwrap();
    // An apiserver address nothing listens on: the hub cannot lead, the agent cannot join,
    // the DNS server cannot list.
    let dead = format!("https://127.0.0.1:{}", free_port());
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {dead}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    let kc = kubeconfig.to_str().unwrap();
    let state = dir.join("state");
    let state = state.to_str().unwrap();

    let hub_port = free_port();
    let mut cmd = std::process::Command::new(bin("fleetboard"));
    cmd.args(["hub", "--kubeconfig", kc, "--identity", "hub-0"])
        .args(["--endpoint", "198.18.0.10", "--state-dir", state])
        .arg(format!("--metrics-address=127.0.0.1:{hub_port}"));
    let mut hub = ChildGuard::spawn("hub", cmd, &dir.join("hub.log")).unwrap();

    let agent_port = free_port();
    let mut cmd = std::process::Command::new(bin("fleetboard"));
    cmd.args(["agent", "--kubeconfig", kc, "--cluster-id", "m1"])
        .args(["--node-name", "n1", "--node-ip", "198.18.0.20"])
        .args(["--hub-url", &dead, "--hub-token", "abcdef.0123456789abcdef"])
        .args(["--state-dir", state])
        .arg(format!("--metrics-address=127.0.0.1:{agent_port}"))
        // An outage is logged once at warn; each retry at debug.
        .env("RUST_LOG", "info,fleetboard_control::outage=debug");
    let mut agent = ChildGuard::spawn("agent", cmd, &dir.join("agent.log")).unwrap();

    let dns_port = free_port();
    let dns_listen = free_port();
    let mut cmd = std::process::Command::new(bin("fleetboard"));
    cmd.args(["dns", "--kubeconfig", kc])
        .arg(format!("--listen=127.0.0.1:{dns_listen}"))
        .arg(format!("--health-address=127.0.0.1:{dns_port}"));
    let mut dns = ChildGuard::spawn("dns", cmd, &dir.join("dns.log")).unwrap();

    live_not_ready("standby hub", &mut hub, hub_port);
    live_not_ready("agent joining its hub", &mut agent, agent_port);
    live_not_ready("dns listing its zone", &mut dns, dns_port);
    // Still up and live once they have retried for a while (the agent waits for its hub
    // instead of exiting, the hub stands by): a liveness probe never restarts them.
    let agent_log = agent.log_path().to_path_buf();
    wait_for("the agent retries its hub", DEADLINE, POLL, || {
        let log = std::fs::read_to_string(&agent_log).unwrap_or_default();
        Ok(
            (log.contains("API call failed") && log.matches("API still failing").count() >= 2)
                .then_some(()),
        )
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    for (what, proc, port) in [
        ("hub", &mut hub, hub_port),
        ("agent", &mut agent, agent_port),
        ("dns", &mut dns, dns_port),
    ] {
        assert!(proc.try_wait().is_none(), "{what} exited\n{}", proc.log());
        assert_eq!(http_status(port, "/live"), Some(200), "{what} /live");
        assert_eq!(http_status(port, "/ready"), Some(503), "{what} /ready");
    }
    // DNS answers (and counts) even before its zone is listed: a name outside the zone is
    // refused, and /metrics says so.
    let mut sent = 0;
    wait_for("dns counts refused queries", DEADLINE, POLL, || {
        let out = std::process::Command::new("dig")
            .args(["@127.0.0.1", "-p", &dns_listen.to_string()])
            .args(["+tries=1", "+time=2", "outside.example."])
            .output()?;
        if String::from_utf8_lossy(&out.stdout).contains("status: REFUSED") {
            sent += 1;
        }
        let metrics = http_get(dns_port, "/metrics").unwrap_or_default();
        let counted = format!("fleetboard_dns_responses_total{{rcode=\"REFUSED\"}} {sent}\n");
        Ok((sent > 0 && metrics.contains(&counted)).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", dns.log()));
    let _ = std::fs::remove_dir_all(&dir);
}
