//! The NRI plugin against a runtime played by the test over the real NRI protocol (multiplexed
//! ttrpc on a unix socket, the same generated stubs), with pod network namespaces made by the
//! test. The plugin is the real `fleetboard nri` process.
//!
//! Needs root (network namespaces) and the `fleetboard` binary (`cargo build -p fleetboard`).

use std::time::Duration;

use crate::support::*;
use fleetboard_nri::runtime::{NriRuntime, pod_sandbox};
use fleetboard_tests::netns::require_net_admin;
use fleetboard_tests::process::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nri_pod_gets_interface_address_and_routes() -> anyhow::Result<()> {
    require_net_admin();
    let mut node = Node::new(11)?;
    node.start_plugin()?;
    let conn = node.connect(vec![]).await?;

    let a = Pod::new("a")?;
    let b = Pod::new("b")?;
    conn.run_pod(&a.sandbox).await?;
    conn.run_pod(&b.sandbox).await?;
    let ip_a = a.address().expect("pod a has eth-fleet with a /32");
    let ip_b = b.address().expect("pod b has eth-fleet with a /32");
    assert_ne!(ip_a, ip_b);
    for ip in [ip_a, ip_b] {
        assert!(
            ip.octets()[..3] == [100, 64, 11] && ip != node.gateway,
            "{ip}"
        );
    }

    // Routes inside the pod: gateway on link, tunnel CIDR and service block via the gateway;
    // the pod's own default route (none here) is left alone.
    let routes = a.ns.ip(&["-4", "route", "show"])?;
    let gw = node.gateway.to_string();
    assert!(
        routes.contains(&format!("{gw} dev eth-fleet scope link")),
        "{routes}"
    );
    assert!(
        routes.contains(&format!("{TUNNEL_CIDR} via {gw} dev eth-fleet")),
        "{routes}"
    );
    assert!(
        routes.contains(&format!("{SERVICE_CIDR} via {gw} dev eth-fleet")),
        "{routes}"
    );
    assert!(!routes.contains("default"), "{routes}");
    let mtu = a.ns.ip(&["link", "show", "dev", "eth-fleet"])?;
    assert!(mtu.contains("mtu 1400") && mtu.contains("UP"), "{mtu}");

    // The node side: one veth per pod with the gateway address and a host route to the pod.
    assert_eq!(node.node_interfaces()?.len(), 2);
    let node_routes = node.ns.ip(&["-4", "route", "show"])?;
    assert!(
        node_routes.contains(&format!("{ip_a} dev fbn")),
        "{node_routes}"
    );

    // Traffic: pod a -> node -> pod b over the parallel interfaces.
    a.ns.exec("ping", &["-c", "1", "-W", "5", &ip_b.to_string()])?;
    a.ns.exec("ping", &["-c", "1", "-W", "5", &gw])?;

    // The address is recorded for the pod (the parallel_ip the agent publishes).
    let rec = node.recorded()?;
    assert!(rec.contains(&(a.sandbox.id.clone(), ip_a)), "{rec:?}");

    // Host-network pods and FleetBoard's own pods get nothing, without error.
    let host = pod_sandbox(&format!("{:0>64}", "h1"), "default", "host", None);
    conn.run_pod(&host).await?;
    let own_pod = Pod::new("own")?;
    let mut own = own_pod.sandbox.clone();
    own.namespace = "fleetboard-system".into();
    conn.run_pod(&own).await?;
    assert!(!own_pod.has_interface());
    assert_eq!(node.recorded()?.len(), 2);

    // Stop releases interface and address; Stop and Remove again are no-ops.
    conn.stop_pod(&a.sandbox).await?;
    assert!(!a.has_interface(), "eth-fleet left in the stopped pod");
    assert_eq!(node.node_interfaces()?.len(), 1);
    conn.stop_pod(&a.sandbox).await?;
    conn.remove_pod(&a.sandbox).await?;
    conn.remove_pod(&a.sandbox).await?;
    conn.remove_pod(&host).await?;
    assert_eq!(node.recorded()?, vec![(b.sandbox.id.clone(), ip_b)]);
    // RunPodSandbox is idempotent for a pod that already has its interface.
    conn.run_pod(&b.sandbox).await?;
    assert_eq!(b.address(), Some(ip_b));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nri_plugin_killed_midway_keeps_addresses_without_duplicates() -> anyhow::Result<()> {
    require_net_admin();
    let mut node = Node::new(12)?;
    node.start_plugin()?;
    let conn = node.connect(vec![]).await?;

    let mut pods = Vec::new();
    for i in 0..8 {
        let p = Pod::new(&format!("p{i}"))?;
        conn.run_pod(&p.sandbox).await?;
        pods.push(p);
    }
    let before: Vec<_> = pods.iter().map(|p| p.address().unwrap()).collect();
    assert_unique(&before);

    // More pods in flight while the plugin is SIGKILLed: some succeed, the rest fail (and the
    // runtime then treats them as never started, as containerd does).
    let in_flight: Vec<Pod> = (0..24)
        .map(|i| Pod::new(&format!("f{i}")))
        .collect::<Result<_, _>>()?;
    let runner = async {
        let mut ok = Vec::new();
        for p in &in_flight {
            ok.push(conn.run_pod(&p.sandbox).await.is_ok());
        }
        ok
    };
    // Kill once the first in-flight pod has its interface.
    let killer = async {
        let end = std::time::Instant::now() + DEADLINE;
        while in_flight[0].address().is_none() && std::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        node.kill_plugin();
    };
    let (ok, ()) = tokio::join!(runner, killer);
    // The first in-flight pod may or may not have been answered (the kill can fall between its
    // setup and the reply); either way the runtime's view decides below.
    assert!(
        !ok[23],
        "the plugin was killed before the last in-flight pod"
    );

    // The runtime keeps the pods whose RunPodSandbox succeeded.
    let mut running: Vec<&Pod> = pods.iter().collect();
    running.extend(
        in_flight
            .iter()
            .zip(&ok)
            .filter(|(_, ok)| **ok)
            .map(|(p, _)| p),
    );
    let failed: Vec<&Pod> = in_flight
        .iter()
        .zip(&ok)
        .filter(|(_, ok)| !**ok)
        .map(|(p, _)| p)
        .collect();
    let before_all: Vec<_> = running.iter().map(|p| p.address().unwrap()).collect();

    node.start_plugin()?;
    let conn = node
        .connect(running.iter().map(|p| p.sandbox.clone()).collect())
        .await?;
    for (p, ip) in running.iter().zip(&before_all) {
        assert_eq!(wait_address(p)?, *ip, "a running pod kept its address");
    }
    // What the killed plugin left half-done for failed pods is cleaned up by Synchronize.
    wait_for("leftovers of failed pods removed", DEADLINE, EVERY, || {
        Ok((failed.iter().all(|p| !p.has_interface())
            && node.node_interfaces()?.len() == running.len())
        .then_some(()))
    })?;
    let recorded = node.recorded()?;
    assert_eq!(recorded.len(), running.len(), "{recorded:?}");

    // New pods after the restart never get an address already in use.
    let mut all = before_all.clone();
    let mut fresh = Vec::new();
    for i in 0..8 {
        let p = Pod::new(&format!("n{i}"))?;
        conn.run_pod(&p.sandbox).await?;
        all.push(p.address().unwrap());
        fresh.push(p);
    }
    assert_unique(&all);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nri_plugin_reconnects_when_the_runtime_restarts() -> anyhow::Result<()> {
    require_net_admin();
    let mut node = Node::new(13)?;
    node.start_plugin()?;
    let conn = node.connect(vec![]).await?;
    let a = Pod::new("a")?;
    conn.run_pod(&a.sandbox).await?;
    let ip_a = a.address().unwrap();

    // The runtime goes away (socket closed and removed), then comes back on the same path.
    conn.close().await;
    let path = node.runtime.path().to_path_buf();
    node.runtime = NriRuntime::bind(&path)?;
    let conn = node.connect(vec![a.sandbox.clone()]).await?;
    let b = Pod::new("b")?;
    conn.run_pod(&b.sandbox).await?;
    assert_ne!(b.address().unwrap(), ip_a);
    assert_eq!(a.address(), Some(ip_a));

    // A runtime that speaks garbage on the trunk: the plugin drops it and reconnects.
    conn.close().await;
    let mut raw = node.runtime.accept_raw(DEADLINE).await?;
    tokio::io::AsyncWriteExt::write_all(&mut raw, &[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]).await?;
    let conn = node
        .connect(vec![a.sandbox.clone(), b.sandbox.clone()])
        .await?;
    conn.stop_pod(&a.sandbox).await?;
    assert!(!a.has_interface());
    assert!(
        node.plugin.as_mut().unwrap().try_wait().is_none(),
        "plugin exited"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nri_malformed_requests_get_errors_not_a_crash() -> anyhow::Result<()> {
    require_net_admin();
    let mut node = Node::new(14)?;
    node.start_plugin()?;
    let conn = node.connect(vec![]).await?;

    // Undecodable protobuf.
    for method in [
        "RunPodSandbox",
        "StopPodSandbox",
        "Synchronize",
        "Configure",
    ] {
        let e = conn.raw_call(method, vec![0xff; 7]).await;
        assert!(e.is_err(), "{method} accepted garbage");
    }
    // Unknown method.
    assert!(conn.raw_call("NoSuchMethod", vec![]).await.is_err());
    // A request without a pod.
    let e = conn.raw_call("RunPodSandbox", vec![]).await.unwrap_err();
    assert!(format!("{e:?}").contains("without a pod"), "{e:?}");

    let p = Pod::new("m")?;
    let mut bad = Vec::new();
    let mut s = p.sandbox.clone();
    s.id.clear();
    bad.push(("empty id", s));
    let mut s = p.sandbox.clone();
    s.id = "a\nb".into();
    bad.push(("control char in id", s));
    for (what, path) in [
        ("missing netns", "/run/netns/fb-does-not-exist"),
        ("relative netns", "run/netns/x"),
        ("netns with a newline", "/run/netns/x\nlink del lo"),
        ("netns with ..", "/run/netns/../netns"),
    ] {
        let mut s = p.sandbox.clone();
        s.linux.as_mut().unwrap().namespaces[0].path = path.into();
        bad.push((what, s));
    }
    for (what, s) in &bad {
        let e = conn.run_pod(s).await;
        assert!(e.is_err(), "{what}: accepted");
    }
    // A netns path that is not a network namespace: setup fails, nothing is left behind.
    let mut s = p.sandbox.clone();
    s.linux.as_mut().unwrap().namespaces[0].path = "/etc/hostname".into();
    let e = conn.run_pod(&s).await.unwrap_err();
    assert!(format!("{e:?}").contains("fleetboard"), "{e:?}");
    assert!(node.recorded()?.is_empty());
    assert!(node.node_interfaces()?.is_empty());

    // Still alive and serving on the same connection.
    conn.run_pod(&p.sandbox).await?;
    assert!(p.address().is_some());
    assert!(
        node.plugin.as_mut().unwrap().try_wait().is_none(),
        "plugin exited"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nri_200_pods_created_and_removed_leave_nothing_behind() -> anyhow::Result<()> {
    require_net_admin();
    let mut node = Node::new(15)?;
    node.start_plugin()?;
    let conn = node.connect(vec![]).await?;

    let pods: Vec<Pod> = (0..200)
        .map(|i| Pod::new(&format!("x{i}")))
        .collect::<Result<_, _>>()?;
    // The runtime sends RunPodSandbox for several pods at once, as containerd does.
    let started = std::time::Instant::now();
    for chunk in pods.chunks(8) {
        let results =
            futures::future::join_all(chunk.iter().map(|p| conn.run_pod(&p.sandbox))).await;
        for r in results {
            r?;
        }
    }
    let run_time = started.elapsed();
    let ips: Vec<_> = pods
        .iter()
        .map(|p| p.address().expect("eth-fleet"))
        .collect();
    assert_unique(&ips);
    assert_eq!(node.node_interfaces()?.len(), 200);
    assert_eq!(node.recorded()?.len(), 200);

    let started = std::time::Instant::now();
    for chunk in pods.chunks(8) {
        let results = futures::future::join_all(chunk.iter().map(|p| async {
            conn.stop_pod(&p.sandbox).await?;
            conn.remove_pod(&p.sandbox).await
        }))
        .await;
        for r in results {
            r?;
        }
    }
    // A figure for the report, not an assertion.
    eprintln!(
        "200 pods: RunPodSandbox total {run_time:?}, Stop+Remove total {:?}",
        started.elapsed()
    );
    assert!(
        node.node_interfaces()?.is_empty(),
        "node-side interfaces left"
    );
    assert!(node.recorded()?.is_empty(), "addresses left allocated");
    let left: Vec<_> = pods
        .iter()
        .filter(|p| p.has_interface())
        .map(|p| p.ns.name().to_string())
        .collect();
    assert!(left.is_empty(), "eth-fleet left in {left:?}");
    let routes = node.ns.ip(&["-4", "route", "show"])?;
    assert!(!routes.contains("fbn"), "node routes left: {routes}");
    Ok(())
}

/// Cross-node path of the parallel interfaces with the kernel standing in for the dataplane:
/// the node namespaces are linked over an underlay and route each other's sub-block. It checks
/// the plugin's half of the path (pod -> node side -> node routing -> other node -> pod); the
/// same test through the FleetBoard dataplane is still to come (see the report of branch nri).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nri_pods_on_two_nodes_reach_each_other_over_node_routing() -> anyhow::Result<()> {
    require_net_admin();
    let mut n1 = Node::new(21)?;
    let mut n2 = Node::new(22)?;
    fleetboard_tests::netns::veth(&n1.ns, "ul0", &n2.ns, "ul0")?;
    n1.ns.addr_add("ul0", "198.18.21.1/24")?;
    n2.ns.addr_add("ul0", "198.18.21.2/24")?;
    n1.ns
        .ip(&["route", "add", "100.64.22.0/24", "via", "198.18.21.2"])?;
    n2.ns
        .ip(&["route", "add", "100.64.21.0/24", "via", "198.18.21.1"])?;
    n1.start_plugin()?;
    n2.start_plugin()?;
    let c1 = n1.connect(vec![]).await?;
    let c2 = n2.connect(vec![]).await?;
    let a = Pod::new("a")?;
    let b = Pod::new("b")?;
    c1.run_pod(&a.sandbox).await?;
    c2.run_pod(&b.sandbox).await?;
    let ip_b = b.address().unwrap().to_string();
    a.ns.exec("ping", &["-c", "2", "-W", "5", &ip_b])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nri_split_synchronize_and_state_change_events() -> anyhow::Result<()> {
    require_net_admin();
    let mut node = Node::new(16)?;
    node.start_plugin()?;
    let conn = node.connect(vec![]).await?;
    // Pod events delivered as StateChange (older runtimes).
    let a = Pod::new("a")?;
    conn.state_change(fleetboard_nri::api::Event::RUN_POD_SANDBOX, &a.sandbox)
        .await?;
    let ip_a = a
        .address()
        .expect("eth-fleet after StateChange(RUN_POD_SANDBOX)");
    let b = Pod::new("b")?;
    conn.run_pod(&b.sandbox).await?;

    // A runtime restart with a pod list split over several Synchronize messages: every pod
    // in any part is kept, the rest freed.
    conn.close().await;
    let path = node.runtime.path().to_path_buf();
    node.runtime = NriRuntime::bind(&path)?;
    let conn = node.runtime.accept(DEADLINE).await?;
    assert_eq!(conn.configure().await?, 0b111);
    let c = Pod::new("c")?;
    conn.synchronize_split(vec![a.sandbox.clone(), c.sandbox.clone()], 1)
        .await?;
    wait_for("b freed, c set up", DEADLINE, EVERY, || {
        Ok((!b.has_interface() && c.address().is_some()).then_some(()))
    })?;
    assert_eq!(a.address(), Some(ip_a));
    let recorded = fleetboard_nri::ipam::read_allocations(&node.state_file())?;
    assert_eq!(recorded.len(), 2);
    assert!(recorded.contains_key(&a.sandbox.id) && recorded.contains_key(&c.sandbox.id));

    conn.state_change(fleetboard_nri::api::Event::REMOVE_POD_SANDBOX, &a.sandbox)
        .await?;
    assert!(!a.has_interface());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nri_plugin_inside_the_node_namespace_serves_metrics() -> anyhow::Result<()> {
    require_net_admin();
    const PORT: u16 = 9470; // inside the node namespace: no clash with other tests
    let mut node = Node::new(17)?;
    node.start_plugin_in_node(PORT)?;
    let conn = node.connect(vec![]).await?;
    wait_for("/ready", DEADLINE, EVERY, || {
        Ok(node
            .http_get(PORT, "/ready")
            .starts_with("HTTP/1.0 200")
            .then_some(()))
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", node.logs()))?;
    assert!(node.http_get(PORT, "/live").contains("200 OK"));

    let a = Pod::new("a")?;
    conn.run_pod(&a.sandbox).await?;
    assert!(a.address().is_some(), "eth-fleet");
    // The node end is in the plugin's own namespace (no --node-netns).
    assert_eq!(node.node_interfaces()?.len(), 1);
    a.ns.exec("ping", &["-c", "1", "-W", "5", &node.gateway.to_string()])?;
    let mut bad = a.sandbox.clone();
    bad.id.clear();
    assert!(conn.run_pod(&bad).await.is_err());

    let m = node.http_get(PORT, "/metrics");
    for line in [
        "fleetboard_nri_pods_configured_total 1",
        "fleetboard_nri_malformed_requests_total 1",
        "fleetboard_nri_allocations 1",
        "fleetboard_nri_registered 1",
    ] {
        assert!(m.contains(line), "{line} missing in\n{m}");
    }
    conn.stop_pod(&a.sandbox).await?;
    assert!(
        node.http_get(PORT, "/metrics")
            .contains("fleetboard_nri_allocations 0")
    );

    // Not registered any more once the runtime is gone.
    conn.close().await;
    wait_for("/ready 503", DEADLINE, EVERY, || {
        Ok(node
            .http_get(PORT, "/ready")
            .starts_with("HTTP/1.0 503")
            .then_some(()))
    })?;
    Ok(())
}
