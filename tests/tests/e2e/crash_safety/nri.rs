//! Pod add/delete cycles through the real `fleetboard nri` plugin (the real NRI protocol; the
//! test plays containerd) with SIGKILLs of the plugin at random moments of a RunPodSandbox,
//! StopPodSandbox or RemovePodSandbox. After each kill the runtime reconnects the restarted
//! plugin and synchronizes it with the pods it runs, as containerd does (a restart is itself
//! killed now and then, while it loads its state or synchronizes); then the IPAM file,
//! the pods' `eth-fleet` addresses and their `parallel_ip` annotations must agree: no address
//! twice, no running pod without its address (or with a new one), nothing kept for a pod the
//! runtime no longer has. At the end every address of the block can be handed out again.
//!
//! The block is a /27 (29 addresses for pods) with up to 12 pods running, so the plugin's
//! next-fit cursor wraps the block many times: a leaked address would soon be handed out twice
//! or exhaust the block.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::nri_support::{DEADLINE, EVERY, Node, Pod};
use super::{long_run, seeded_rng, sigkill};
use fleetboard_nri::plugin::PARALLEL_IP_ANNOTATION;
use fleetboard_nri::runtime::PluginConn;
use fleetboard_tests::kube::{Cluster, eventually};
use fleetboard_tests::netns::require_net_admin;
use fleetboard_tests::process::wait_for;
use k8s_openapi::api::core::v1::{Pod as PodObject, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};

/// Third octet of the test's block (other NRI tests use other ones; each node is its own
/// namespace anyway).
const THIRD: u8 = 41;
/// Addresses of a /27 a pod can get: 32 - network - broadcast - gateway.
const USABLE: usize = 29;
/// Most pods running at once.
const MAX_LIVE: usize = 12;
/// One operation in this many gets a plugin kill at a random moment (short run, long run).
const KILL_ONE_IN: (u32, u32) = (20, 10);
/// Latest kill moment after an operation starts (setup takes a few ms to tens of ms).
const KILL_WITHIN_MICROS: u64 = 30_000;
/// One restart in this many is killed again while it starts.
const KILL_AT_START_ONE_IN: u32 = 4;
/// Latest moment of that kill after the restart (a debug build starts in ~100 ms).
const KILL_AT_START_WITHIN_MICROS: u64 = 400_000;
/// How long after a kill a call still in flight counts as answered (a dead plugin answers
/// nothing; bytes already on the socket arrive well within this).
const ANSWER_GRACE: Duration = Duration::from_secs(1);

/// A pod the runtime runs: its namespace and sandbox, and the address it was given.
struct Running {
    pod: Pod,
    ip: Ipv4Addr,
}

/// What the test plays: the node with its plugin, the runtime connection, the apiserver's Pods.
struct Runtime {
    node: Node,
    conn: PluginConn,
    pods: Api<PodObject>,
    kubeconfig: std::path::PathBuf,
    running: Vec<Running>,
    kills: u32,
    /// Kills of a restarted plugin while it starts and synchronizes.
    kills_at_start: u32,
}

fn pod_object(name: &str) -> anyhow::Result<PodObject> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": "default" },
        "spec": { "containers": [{ "name": "app", "image": "registry.invalid/app:1" }] }
    }))?)
}

impl Runtime {
    fn start_plugin(&mut self) -> anyhow::Result<()> {
        self.node
            .start_plugin_with(&["--kubeconfig".as_ref(), self.kubeconfig.as_os_str()])
    }

    /// Runs `op` against the plugin; with `kill`, SIGKILLs the plugin `kill` after the start
    /// (while the plugin works on it, or just after). Returns whether `op` succeeded. A call
    /// the killed plugin never answers fails [`ANSWER_GRACE`] after the kill, as the runtime
    /// sees it (the harness's ttrpc client would only give up after its request timeout).
    async fn attempt<F, T, E>(&self, kill: Option<Duration>, op: F) -> bool
    where
        F: Future<Output = Result<T, E>>,
    {
        let pid = self.node.plugin.as_ref().map(|p| p.id()).unwrap_or(0);
        let Some(after) = kill else {
            return matches!(tokio::time::timeout(DEADLINE, op).await, Ok(Ok(_)));
        };
        let killer = async {
            tokio::time::sleep(after).await;
            sigkill(pid);
        };
        let answered = tokio::time::timeout(after + ANSWER_GRACE, op);
        let (r, ()) = tokio::join!(answered, killer);
        matches!(r, Ok(Ok(_)))
    }

    /// After a kill: the runtime reconnects the restarted plugin and synchronizes it with the
    /// pods it runs; then everything must agree. One restart in [`KILL_AT_START_ONE_IN`] is
    /// killed again at a random moment of its start (loading its state, Configure,
    /// Synchronize, the frees and repairs after it) and restarted once more.
    async fn recover(&mut self, rng: &mut fastrand::Rng) -> anyhow::Result<()> {
        loop {
            self.kills += 1;
            self.node.kill_plugin();
            self.start_plugin()?;
            let sandboxes: Vec<_> = self.running.iter().map(|r| r.pod.sandbox.clone()).collect();
            if rng.u32(0..KILL_AT_START_ONE_IN) != 0 {
                self.conn = self.node.connect(sandboxes).await?;
                return self.check_consistent();
            }
            self.kills_at_start += 1;
            let after = Duration::from_micros(rng.u64(0..KILL_AT_START_WITHIN_MICROS));
            let pid = self.node.plugin.as_ref().map(|p| p.id()).unwrap_or(0);
            let killer = async {
                tokio::time::sleep(after).await;
                sigkill(pid);
            };
            let connect = tokio::time::timeout(after + ANSWER_GRACE, self.node.connect(sandboxes));
            let _ = tokio::join!(connect, killer);
        }
    }

    /// The IPAM file holds exactly the running pods, each with the address it was given, once;
    /// each pod has that address on `eth-fleet`; the node has one interface per pod.
    fn check_consistent(&self) -> anyhow::Result<()> {
        // Synchronize frees what the runtime no longer has before it answers.
        let recorded: BTreeMap<String, Ipv4Addr> = self.node.recorded()?.into_iter().collect();
        let want: BTreeMap<String, Ipv4Addr> = self
            .running
            .iter()
            .map(|r| (r.pod.sandbox.id.clone(), r.ip))
            .collect();
        anyhow::ensure!(
            recorded == want,
            "IPAM file after a kill: {recorded:?}\nrunning pods: {want:?}\n{}",
            self.node.logs()
        );
        let distinct: BTreeSet<&Ipv4Addr> = recorded.values().collect();
        anyhow::ensure!(
            distinct.len() == recorded.len(),
            "an address twice: {recorded:?}"
        );
        for r in &self.running {
            wait_for(
                &format!("pod {} keeps {} on eth-fleet", r.pod.sandbox.name, r.ip),
                DEADLINE,
                EVERY,
                || Ok((r.pod.address() == Some(r.ip)).then_some(())),
            )?;
        }
        wait_for(
            "one node-side interface per running pod",
            DEADLINE,
            EVERY,
            || {
                let n = self.node.node_interfaces()?.len();
                Ok((n == self.running.len()).then_some(()))
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}\n{}", self.node.logs()))?;
        Ok(())
    }

    /// Every running pod's Pod object says its address.
    async fn check_annotations(&self) -> anyhow::Result<()> {
        for r in &self.running {
            let name = r.pod.sandbox.name.clone();
            let want = r.ip.to_string();
            eventually(
                &format!("pod {name} annotated with {want}"),
                Duration::from_secs(90),
                Duration::from_millis(200),
                || async {
                    let p = self.pods.get(&name).await?;
                    let got = p
                        .metadata
                        .annotations
                        .unwrap_or_default()
                        .get(PARALLEL_IP_ANNOTATION)
                        .cloned();
                    Ok((got.as_deref() == Some(want.as_str())).then_some(()))
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", self.node.logs()))?;
        }
        Ok(())
    }

    /// Starts pod `name` (Pod object first, as the kubelet sees it). False when a kill made
    /// it fail (the runtime then drops the sandbox).
    async fn add(&mut self, name: &str, kill: Option<Duration>) -> anyhow::Result<bool> {
        self.pods
            .create(&PostParams::default(), &pod_object(name)?)
            .await?;
        let pod = Pod::new(name)?;
        let ok = self.attempt(kill, self.conn.run_pod(&pod.sandbox)).await;
        if !ok {
            anyhow::ensure!(
                kill.is_some(),
                "RunPodSandbox of {name} failed without a kill ({} running)\n{}",
                self.running.len(),
                self.node.logs()
            );
            self.pods.delete(name, &DeleteParams::default()).await?;
            return Ok(false);
        }
        let ip = pod
            .address()
            .ok_or_else(|| anyhow::anyhow!("pod {name} answered but has no eth-fleet"))?;
        if let Some(other) = self.running.iter().find(|r| r.ip == ip) {
            anyhow::bail!(
                "{ip} given to {name} while {} runs with it\n{}",
                other.pod.sandbox.name,
                self.node.logs()
            );
        }
        self.running.push(Running { pod, ip });
        Ok(true)
    }

    /// Stops and removes running pod `i`. The runtime drops it whatever the plugin answers
    /// (a kill makes the answer an error); the plugin catches up at its next Synchronize.
    async fn delete(&mut self, i: usize, kill: Option<Duration>) -> anyhow::Result<()> {
        let r = self.running.swap_remove(i);
        let conn = &self.conn;
        let ok = self
            .attempt(kill, async {
                conn.stop_pod(&r.pod.sandbox).await?;
                conn.remove_pod(&r.pod.sandbox).await
            })
            .await;
        anyhow::ensure!(
            ok || kill.is_some(),
            "releasing {} failed without a kill\n{}",
            r.pod.sandbox.name,
            self.node.logs()
        );
        self.pods
            .delete(&r.pod.sandbox.name, &DeleteParams::default())
            .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nri_pod_cycles_with_plugin_kills_keep_the_ipam_consistent() -> anyhow::Result<()> {
    require_net_admin();
    let (cycles, kill_one_in) = if long_run() {
        (1000, KILL_ONE_IN.1)
    } else {
        (200, KILL_ONE_IN.0)
    };
    let mut rng = seeded_rng("nri_pod_cycles_with_plugin_kills_keep_the_ipam_consistent");
    let cluster = Cluster::start().await?;
    // No controller-manager runs in the fixture: Pod admission needs the `default` account.
    let sas: Api<ServiceAccount> = Api::namespaced(cluster.client(), "default");
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({ "metadata": { "name": "default" } }))?,
    )
    .await?;
    let mut node = Node::new(THIRD)?;
    node.pod_cidr = format!("100.64.{THIRD}.0/27");
    let kubeconfig = cluster.kubeconfig().to_path_buf();
    node.start_plugin_with(&["--kubeconfig".as_ref(), kubeconfig.as_os_str()])?;
    let conn = node.connect(vec![]).await?;
    let mut rt = Runtime {
        node,
        conn,
        pods: Api::namespaced(cluster.client(), "default"),
        kubeconfig,
        running: Vec::new(),
        kills: 0,
        kills_at_start: 0,
    };
    let started = Instant::now();
    let kill_at = |rng: &mut fastrand::Rng| {
        (rng.u32(0..kill_one_in) == 0)
            .then(|| Duration::from_micros(rng.u64(0..KILL_WITHIN_MICROS)))
    };
    for cycle in 0..cycles {
        let kill = kill_at(&mut rng);
        rt.add(&format!("p{cycle}"), kill).await?;
        if kill.is_some() {
            rt.recover(&mut rng).await?;
        }
        // Keep between 1 and MAX_LIVE pods running, at a level that wanders.
        let keep = rng.usize(1..=MAX_LIVE);
        while rt.running.len() > keep {
            let kill = kill_at(&mut rng);
            let i = rng.usize(..rt.running.len());
            rt.delete(i, kill).await?;
            if kill.is_some() {
                rt.recover(&mut rng).await?;
            }
        }
        if cycle == cycles / 2 {
            rt.check_annotations().await?;
        }
    }
    rt.check_consistent()?;
    rt.check_annotations().await?;
    while !rt.running.is_empty() {
        rt.delete(0, None).await?;
    }
    let churn = started.elapsed();
    wait_for(
        "nothing left after every pod is gone",
        DEADLINE,
        EVERY,
        || {
            Ok(
                (rt.node.recorded()?.is_empty() && rt.node.node_interfaces()?.is_empty())
                    .then_some(()),
            )
        },
    )?;

    // No leak: the whole block can be handed out again, to distinct pods, and no more.
    let mut fill = Vec::new();
    for i in 0..USABLE {
        let pod = Pod::new(&format!("fill{i}"))?;
        rt.conn
            .run_pod(&pod.sandbox)
            .await
            .map_err(|e| anyhow::anyhow!("fill pod {i} of {USABLE}: {e}\n{}", rt.node.logs()))?;
        fill.push(pod);
    }
    let ips: BTreeSet<Ipv4Addr> = fill.iter().filter_map(|p| p.address()).collect();
    assert_eq!(ips.len(), USABLE, "distinct addresses for a full block");
    assert!(
        !ips.contains(&rt.node.gateway),
        "the gateway was handed out"
    );
    let extra = Pod::new("one-too-many")?;
    let refused = rt.conn.run_pod(&extra.sandbox).await;
    assert!(refused.is_err(), "a 30th pod in a /27 got an address");
    for p in &fill {
        rt.conn.stop_pod(&p.sandbox).await?;
        rt.conn.remove_pod(&p.sandbox).await?;
    }
    assert!(rt.node.recorded()?.is_empty(), "every address freed");
    println!(
        "nri crash safety: {cycles} pod add/delete cycles, {} plugin kills ({} of a restarting plugin), 0 addresses twice, \
         0 lost, 0 leaked ({USABLE}/{USABLE} reusable after), {:.1} s of cycles, {:.1} s in all",
        rt.kills,
        rt.kills_at_start,
        churn.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
