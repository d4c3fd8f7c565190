//! The demo's process-only setup (`scripts/demo.sh --processes` = `fleetboard-first-run
//! --processes`) works: three clusters, charts installed with helm, hub and agents joined as
//! processes, `kubectl peers` shows both members, traffic flows between them and a throughput
//! is printed. The default demo (real nodes) is the setup `kube_fleet::` tests; `scripts/demo.sh
//! --exit` runs it end to end.
//!
//! Needs root, the workspace binaries (`cargo build --workspace --bins`) and the Kubernetes
//! test tools (`tests/k8s/tools ensure`).

use std::process::Command;

use fleetboard_tests::binaries::bin;
use fleetboard_tests::netns::require_net_admin;

#[test]
fn first_run_brings_up_a_cluster_set_and_moves_traffic() {
    require_net_admin();
    let out = Command::new(bin("fleetboard-first-run"))
        .args(["--processes", "--exit", "--seconds", "2"])
        .env("FLEETBOARD_BIN_DIR", bin("fleetboard").parent().unwrap())
        .output()
        .expect("running fleetboard-first-run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "first run failed:\n{stdout}\n{stderr}"
    );
    // `kubectl peers` lists the hub and both members, connected.
    for cluster in ["hub", "a", "b"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.split_whitespace().next() == Some(cluster)),
            "no row for cluster {cluster} in:\n{stdout}"
        );
    }
    let rate = stdout
        .lines()
        .find_map(|l| l.strip_prefix("throughput a -> b over wg via the hub: "))
        .and_then(|r| r.strip_suffix(" Gbit/s"))
        .and_then(|r| r.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no throughput line in:\n{stdout}\n{stderr}"));
    assert!(rate > 0.0, "no traffic moved: {rate}");
}
