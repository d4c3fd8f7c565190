//! A pod on one node reaches a pod on another node through the FleetBoard dataplane: the NRI
//! plugin gives each pod `eth-fleet` with its node end in the gateway namespace, whose
//! `fleetboard dataplane` tunnels to the other gateway through the hub relay.
//!
//! pod-a (eth-fleet 100.64.1.x) -> gw-a (fbn veth, kernel route 100.64.0.0/10 dev fb0) ->
//! dataplane gw-a -> hub -> dataplane gw-b -> fb0 -> route 100.64.2.y/32 dev fbn -> pod-b.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::dataplane_support::*;
use fleetboard_dataplane::core::Transport;
use fleetboard_nri::runtime::{NriRuntime, PluginConn, pod_sandbox};
use fleetboard_tests::binaries::bin;
use fleetboard_tests::netns::{Netns, unique_token};
use fleetboard_tests::process::{ChildGuard, wait_for};

/// Starts `fleetboard nri` for the gateway namespace `node` with sub-block `block`, plays the
/// runtime for it and returns the registered connection.
async fn plugin_for(dir: &Path, node: &Node, block: &str) -> (NriRuntime, PluginConn, ChildGuard) {
    let sock = dir.join(format!("{}-nri.sock", node.name));
    let runtime = NriRuntime::bind(&sock).unwrap();
    let mut cmd = Command::new(bin("fleetboard"));
    cmd.env("RUST_LOG", "debug")
        .arg("nri")
        .arg("--socket")
        .arg(&sock)
        .args(["--pod-cidr", block, "--tunnel-cidr", "100.64.0.0/10"])
        .arg("--node-netns")
        .arg(Path::new("/run/netns").join(node.ns.name()))
        .arg("--state-file")
        .arg(dir.join(format!("{}-ipam.json", node.name)));
    let log = dir.join(format!("{}-nri.log", node.name));
    let child = ChildGuard::spawn("fleetboard nri", cmd, &log).unwrap();
    let (conn, events) = runtime
        .accept_configured(DEADLINE, vec![])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
    assert_eq!(events, 0b111);
    (runtime, conn, child)
}

fn pod_address(ns: &Netns) -> Option<String> {
    let out = ns
        .ip(&["-o", "-4", "addr", "show", "dev", "eth-fleet"])
        .ok()?;
    let inet = out.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
    Some(inet.strip_suffix("/32")?.to_string())
}

#[test]
fn nri_pods_on_two_nodes_talk_through_the_dataplane() {
    let mut t = Topology::new_with(true, Transport::Wg);
    for n in [&t.a, &t.b] {
        // As in an agent pod on a node whose host does not forward: the namespace's global
        // switch is off, and the dataplane (its TUN) and the plugin (each pod's node end) turn
        // forwarding on for their own interfaces.
        n.ns.sysctl("net.ipv4.ip_forward=0").unwrap();
    }
    t.start();
    t.a.wait_ping(B_V4, &t.logs());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (_ra, ca, _pa) = plugin_for(&t.dir.0, &t.a, "100.64.1.128/25").await;
        let (_rb, cb, _pb) = plugin_for(&t.dir.0, &t.b, "100.64.2.128/25").await;

        let pod_a = Netns::new("poda").unwrap();
        let pod_b = Netns::new("podb").unwrap();
        for (conn, ns) in [(&ca, &pod_a), (&cb, &pod_b)] {
            let path = Path::new("/run/netns").join(ns.name());
            let id = format!("{:0>64}", unique_token());
            conn.run_pod(&pod_sandbox(&id, "default", ns.name(), Some(&path)))
                .await
                .unwrap();
        }
        let ip_a = pod_address(&pod_a).expect("pod a has eth-fleet");
        let ip_b = pod_address(&pod_b).expect("pod b has eth-fleet");
        assert!(ip_a.starts_with("100.64.1.") && ip_b.starts_with("100.64.2."));

        for (from, to) in [(&pod_a, &ip_b), (&pod_b, &ip_a)] {
            wait_for(
                &format!("ping {to} through the dataplane"),
                DEADLINE,
                Duration::from_millis(200),
                || {
                    Ok(from
                        .command("ping")
                        .args(["-c", "1", "-W", "1", to])
                        .output()?
                        .status
                        .success()
                        .then_some(()))
                },
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", t.logs()));
        }
    });
}
