//! `--processes`: the first run without kubelets. The hub and the agents run as plain
//! processes inside the node namespaces ([`fleetboard_tests::fleet::Fleet`]): three clusters
//! (a real kube-apiserver + etcd each, nodes as network namespaces on a private underlay in
//! 198.18.0.0/24), the hub chart and the agent chart installed with `helm` as the hub chart's
//! NOTES.txt says, `kubectl peers`, then iperf3 between a node of each member through the hub.

use std::time::Duration;

use anyhow::Context;
use fleetboard_tests::binaries::bin;
use fleetboard_tests::fleet::{Fleet, FleetOptions};
use fleetboard_tests::kube::eventually;

use crate::{Args, Clock};

/// Starts the fleet, shows `kubectl peers` and the throughput; returns the running fleet.
pub async fn run(args: &Args, t0: Clock) -> anyhow::Result<Fleet> {
    let transport = args.transport();
    t0.step(
        "starting 3 clusters (hub, a, b), installing the charts with helm, starting hub and agents",
    );
    let fleet = Fleet::start(
        FleetOptions {
            transport,
            helm: true,
            ..FleetOptions::default()
        },
        Vec::new(),
    )
    .await?;
    t0.step("waiting for both members to connect to the hub");
    let a1 = fleet.node("a1");
    let b1 = fleet.node("b1");
    let deadline = Duration::from_secs(180);
    let every = Duration::from_millis(500);
    let (ip_a, ip_b) = eventually(
        "node addresses in both members",
        deadline,
        every,
        || async {
            Ok(
                match (fleet.tun_ip("a1").await?, fleet.tun_ip("b1").await?) {
                    (Some(a), Some(b)) => Some((a, b)),
                    _ => None,
                },
            )
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", fleet.logs()))?;
    eventually(
        &format!("{ip_a} reaching {ip_b}"),
        deadline,
        every,
        || async { Ok(fleet.nodes[a1].ping_once(&ip_b).then_some(())) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", fleet.logs()))?;
    t0.step("member a reaches member b through the hub; `kubectl peers` on the hub:");
    // Wait for the hub's status rounds until both members show live state (connected, a
    // handshake, its round trip, bytes), then show the table.
    let kubectl_peers = |json: bool| -> anyhow::Result<Option<String>> {
        let mut c = std::process::Command::new(bin("kubectl-peers"));
        c.arg("--kubeconfig").arg(fleet.hub.cluster.kubeconfig());
        if json {
            c.args(["-o", "json"]);
        }
        let out = c.output()?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    };
    let peers = eventually(
        "kubectl peers showing both members connected with live state",
        deadline,
        every,
        || async {
            let Some(json) = kubectl_peers(true)? else {
                return Ok(None);
            };
            let doc: serde_json::Value = serde_json::from_str(&json)?;
            let live = doc["clusters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| {
                    c["hub"] == false
                        && c["connected"] == "True"
                        && ["handshakeAgeSeconds", "rttMicros", "rxBytes", "txBytes"]
                            .iter()
                            .all(|k| !c[k].is_null())
                })
                .count();
            if live < 2 {
                return Ok(None);
            }
            kubectl_peers(false)
        },
    )
    .await
    .unwrap_or_else(|e| format!("({e})\n"));
    println!("{peers}");

    t0.step(&format!(
        "iperf3 for {}s: node a1 ({ip_a}) -> node b1 ({ip_b})",
        args.seconds
    ));
    let b_ns = &fleet.nodes[b1].ns;
    let server = KillOnDrop(
        b_ns.command("iperf3")
            .args(["-s", "-1", "-B", &ip_b])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting iperf3 (apt install iperf3)")?,
    );
    let result = eventually("iperf3 run", Duration::from_secs(60), every, || async {
        let out = fleet.nodes[a1]
            .ns
            .command("iperf3")
            .args(["-c", &ip_b, "-t", &args.seconds.to_string(), "-J"])
            .output()?;
        if !out.status.success() {
            return Ok(None); // server not listening yet
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(v["end"]["sum_received"]["bits_per_second"].as_f64())
    })
    .await;
    drop(server);
    let bps = result.context("iperf3 between the members")?;
    println!(
        "throughput a -> b over {transport} via the hub: {:.2} Gbit/s",
        bps / 1e9
    );
    t0.step("done");
    if !args.exit {
        println!(
            "Hub kubeconfig: {}",
            fleet.hub.cluster.kubeconfig().display()
        );
    }
    Ok(fleet)
}

/// A child process killed and reaped when dropped (also when Ctrl-C drops the task).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
