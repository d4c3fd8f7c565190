//! `fleetboard hub` against a real kube-apiserver: hub replicas run as processes inside
//! network namespaces (the apiserver in its own namespace on the underlay), the test creates
//! member Peers with real keys and checks what users see: allocations in the Peer status,
//! conditions, the hub's own Peer, the hub dataplane's peers (admin socket), leader takeover,
//! and real traffic between two plain `fleetboard dataplane` members through the hub.

use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::dataplane_support::{sha256, write_random};
use fleetboard_control::crd::all_crds;
use fleetboard_control::crd::peer::Peer;
use fleetboard_dataplane::AdminClient;
use fleetboard_dataplane::core::{
    AdminConfig, DataplaneConfig, DataplaneStatus, PeerConfig, SecretKey, Transport,
};
use fleetboard_tests::binaries::bin;
use fleetboard_tests::kube::{Cluster, ClusterOptions, eventually};
use fleetboard_tests::netns::{Netns, Underlay, require_net_admin, unique_token};
use fleetboard_tests::process::ChildGuard;
use ipnet::IpNet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

/// Generous: CI is a busy 2-core machine running several apiservers.
const DEADLINE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(250);
const NS: &str = "fleetboard-system";
const CP_IP: &str = "198.18.0.1";
const LEASE_SECONDS: &str = "4";
/// Port of every hub replica's `/live`, `/ready`, `/metrics` (each in its own namespace).
const METRICS_PORT: u16 = 9464;

fn random_key() -> SecretKey {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("urandom");
    SecretKey::from_random_bytes(b)
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One hub cluster: the apiserver in namespace `cp` on the underlay, the Peer CRD, the hub's
/// service account with the contract's Role, and a temp dir for state and logs.
struct Env {
    hubs: Vec<Hub>,
    members: Vec<Member>,
    cluster: Cluster,
    _cp: Netns,
    underlay: Underlay,
    dir: PathBuf,
    kubeconfig: PathBuf,
    peers: Api<Peer>,
}

/// A hub replica process in its own namespace.
struct Hub {
    identity: String,
    ip: String,
    state: PathBuf,
    proc: Option<ChildGuard>,
    args: Vec<String>,
    ns: Netns,
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for h in &self.hubs {
                if let Some(p) = &h.proc {
                    eprintln!("--- hub {} log\n{}", h.identity, tail(&p.log(), 60));
                }
            }
            for m in &self.members {
                if let Some(p) = &m.proc {
                    eprintln!("--- member {} log\n{}", m.name, tail(&p.log(), 30));
                }
            }
        }
        self.hubs.clear();
        self.members.clear();
        if std::env::var_os("FLEETBOARD_KEEP_KUBE").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Env {
    async fn new() -> Self {
        require_net_admin();
        let dir = std::env::temp_dir().join(format!("fb-hub-{}", unique_token()));
        std::fs::create_dir_all(&dir).unwrap();
        let underlay = Underlay::new().unwrap();
        let cp = Netns::new("cp").unwrap();
        underlay
            .attach(&cp, "eth0", &[&format!("{CP_IP}/24")])
            .unwrap();
        let cluster = Cluster::start_with(ClusterOptions::in_netns(&cp, CP_IP.parse().unwrap()))
            .await
            .unwrap();
        let client = cluster.client();
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in all_crds() {
            crds.create(&PostParams::default(), &crd).await.unwrap();
        }
        // The hub's service account with the Role of the contract (COMMON.md).
        let token = cluster
            .service_account_token(NS, "fleetboard-hub")
            .await
            .unwrap();
        cluster
            .grant(
                NS,
                "fleetboard-hub",
                json!([
                    { "apiGroups": ["fleetboard.io"], "resources": ["peers", "peers/status"],
                      "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"] },
                    { "apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                      "verbs": ["get", "list", "watch", "create", "update"] },
                    { "apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "update"] },
                    { "apiGroups": [""], "resources": ["events"], "verbs": ["create"] },
                    { "apiGroups": [""], "resources": ["pods"], "verbs": ["patch"] },
                ]),
            )
            .await
            .unwrap();
        let kubeconfig = cluster.token_kubeconfig("hub", &token).unwrap();
        let peers: Api<Peer> = Api::namespaced(client, NS);
        // The apiserver may need a moment before it serves the new kind.
        eventually("Peer kind served", DEADLINE, POLL, || async {
            Ok(peers.list(&Default::default()).await.ok().map(|_| ()))
        })
        .await
        .unwrap();
        Self {
            hubs: Vec::new(),
            members: Vec::new(),
            cluster,
            _cp: cp,
            underlay,
            dir,
            kubeconfig,
            peers,
        }
    }

    /// Adds a hub replica at underlay address `198.18.0.<host>` (not started).
    fn add_hub(&mut self, identity: &str, host: u8, extra: &[&str]) -> usize {
        let ns = Netns::new("hub").unwrap();
        let ip = format!("198.18.0.{host}");
        self.underlay
            .attach(&ns, "eth0", &[&format!("{ip}/24")])
            .unwrap();
        let state = self.dir.join(identity);
        let mut args: Vec<String> = [
            "hub",
            "--kubeconfig",
            self.kubeconfig.to_str().unwrap(),
            "--namespace",
            NS,
            "--identity",
            identity,
            "--endpoint",
            &ip,
            "--state-dir",
            state.to_str().unwrap(),
            "--lease-duration",
            LEASE_SECONDS,
            "--renew-interval",
            "1",
            "--metrics-address",
            &format!("127.0.0.1:{METRICS_PORT}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        self.hubs.push(Hub {
            identity: identity.into(),
            ip,
            state,
            proc: None,
            args,
            ns,
        });
        self.hubs.len() - 1
    }

    fn start_hub(&mut self, i: usize) {
        let h = &mut self.hubs[i];
        let mut cmd = h.ns.command(bin("fleetboard").to_str().unwrap());
        cmd.args(&h.args).env("RUST_LOG", "info");
        let log = self.dir.join(format!("{}.log", h.identity));
        h.proc = Some(ChildGuard::spawn(&h.identity, cmd, &log).unwrap());
    }

    fn kill_hub(&mut self, i: usize) {
        if let Some(mut p) = self.hubs[i].proc.take() {
            p.kill();
        }
    }

    /// What a kubelet probe of replica `i` gets: the HTTP status of `path`.
    fn probe(&self, i: usize, path: &str) -> Option<u16> {
        self.hubs[i].ns.http_status(METRICS_PORT, path)
    }

    fn hub_admin(&self, i: usize) -> AdminClient {
        AdminClient::new(self.hubs[i].state.join("dataplane.sock"))
    }

    fn logs(&self) -> String {
        self.hubs
            .iter()
            .filter_map(|h| {
                h.proc
                    .as_ref()
                    .map(|p| format!("--- {}\n{}", h.identity, tail(&p.log(), 40)))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Creates member Peer `name` with a real key (and QUIC fingerprint for quic).
    async fn create_peer(&self, name: &str, key: &SecretKey, extra: serde_json::Value) -> Peer {
        create_peer_as(&self.peers, name, key, extra).await
    }

    /// A client with one member's own identity (as `kubectl peers join attacker` makes it:
    /// the hub chart's member roles, every verb on `peers`, nothing on their status). No
    /// admission policy is installed here: this identity may write any Peer, so the hub's own
    /// validation is what is tested.
    async fn member_client(&self) -> kube::Client {
        let client = self.cluster.client();
        fleetboard_tests::fleet::create_member_roles(&client)
            .await
            .unwrap();
        let token = fleetboard_tests::fleet::join_member(&self.cluster, "attacker")
            .await
            .unwrap();
        let member = self.cluster.client_with_token(&token).await.unwrap();
        // It is the member identity: Peers yes, their status and Secrets no.
        let peers: Api<Peer> = Api::namespaced(member.clone(), NS);
        eventually("the member token is accepted", DEADLINE, POLL, || async {
            Ok(peers.list(&Default::default()).await.ok().map(|_| ()))
        })
        .await
        .unwrap();
        let secrets: Api<Secret> = Api::namespaced(member.clone(), NS);
        match secrets.list(&Default::default()).await {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
            other => panic!("the member identity may list Secrets: {other:?}"),
        }
        member
    }

    async fn delete_peer(&self, name: &str) {
        self.peers
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }

    /// Waits for Peer `name`'s Ready condition to have `reason`; returns the Peer.
    async fn wait_ready_reason(&self, name: &str, reason: &str) -> Peer {
        let what = format!("Peer {name} Ready reason {reason}");
        match eventually(&what, DEADLINE, POLL, || async {
            let p = self.peers.get(name).await?;
            Ok((ready(&p).map(|c| c.1) == Some(reason.to_string())).then_some(p))
        })
        .await
        {
            Ok(p) => p,
            Err(e) => panic!("{e}\n{}", self.logs()),
        }
    }

    async fn hub_peer(&self) -> Peer {
        match eventually("hub Peer published and Ready", DEADLINE, POLL, || async {
            let p = self.peers.get_opt("hub").await?;
            Ok(p.filter(|p| ready(p).is_some_and(|r| r.0) && p.spec.public_key.is_some()))
        })
        .await
        {
            Ok(p) => p,
            Err(e) => panic!("{e}\n{}", self.logs()),
        }
    }

    async fn lease_holder(&self) -> Option<String> {
        let leases: Api<Lease> = Api::namespaced(self.cluster.client(), NS);
        leases
            .get_opt("fleetboard-hub")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
    }
}

/// Creates member Peer `name` through `api` (whatever identity its client has).
async fn create_peer_as(
    api: &Api<Peer>,
    name: &str,
    key: &SecretKey,
    extra: serde_json::Value,
) -> Peer {
    let mut spec = json!({
        "clusterId": name,
        "publicKey": key.public_key().to_base64(),
    });
    merge(&mut spec, extra);
    let p: Peer = serde_json::from_value(json!({
        "apiVersion": "fleetboard.io/v1alpha1", "kind": "Peer",
        "metadata": { "name": name, "namespace": NS }, "spec": spec,
    }))
    .unwrap();
    api.create(&PostParams::default(), &p).await.unwrap()
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b) {
        for (k, v) in b {
            a.insert(k, v);
        }
    }
}

/// (status, reason, message) of the Ready condition.
fn ready(p: &Peer) -> Option<(bool, String, String)> {
    cond(p, "Ready")
}

fn cond(p: &Peer, t: &str) -> Option<(bool, String, String)> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status == "True", c.reason.clone(), c.message.clone()))
}

fn allocated(p: &Peer) -> Vec<IpNet> {
    p.status
        .as_ref()
        .map(|s| {
            s.allocated_cidrs
                .iter()
                .map(|c| c.parse().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

async fn dp_status(admin: &AdminClient) -> anyhow::Result<DataplaneStatus> {
    Ok(admin.status().await?)
}

fn dp_has_peer(s: &DataplaneStatus, name: &str) -> bool {
    s.peers.iter().any(|p| p.name.as_deref() == Some(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_allocates_unique_blocks_keeps_them_across_restarts_and_reclaims_them() {
    let mut env = Env::new().await;
    let h = env.add_hub(
        "hub-0",
        2,
        &[
            "--tunnel-cidr",
            "100.64.0.0/10",
            "--tunnel-cidr",
            "fd00:64::/48",
            // A NodePort in front of the listener: members must dial the node port.
            "--advertise-port",
            "30555",
        ],
    );
    env.start_hub(h);
    let hub = env.hub_peer().await;
    assert!(hub.spec.is_hub && hub.spec.is_public);
    assert_eq!(hub.spec.endpoint.as_deref(), Some("198.18.0.2"));
    assert_eq!(hub.spec.port, 30555, "the hub publishes --advertise-port");
    assert_eq!(hub.spec.cidrs, ["100.64.0.0/10", "fd00:64::/48"]);
    assert_eq!(
        hub.spec.cert_fingerprint.as_ref().map(|f| f.len()),
        Some(64)
    );
    assert_eq!(
        allocated(&hub),
        [
            "100.64.0.0/16".parse::<IpNet>().unwrap(),
            "fd00:64::/64".parse().unwrap()
        ],
        "the hub holds the first block (its own address 100.64.0.1)"
    );

    let names = ["alpha", "bravo", "charlie"];
    for n in names {
        env.create_peer(n, &random_key(), json!({ "endpoint": "198.18.0.50" }))
            .await;
    }
    let mut before = Vec::new();
    for n in names {
        let p = env.wait_ready_reason(n, "Allocated").await;
        before.push((n, p.status.clone().unwrap().allocated_cidrs));
    }
    let mut all: Vec<IpNet> = allocated(&hub);
    for (n, blocks) in &before {
        assert_eq!(blocks.len(), 2, "{n}: one v4 and one v6 block: {blocks:?}");
        let v4: IpNet = blocks[0].parse().unwrap();
        let v6: IpNet = blocks[1].parse().unwrap();
        assert!(v4.prefix_len() == 16 && "100.64.0.0/10".parse::<IpNet>().unwrap().contains(&v4));
        assert!(v6.prefix_len() == 64 && "fd00:64::/48".parse::<IpNet>().unwrap().contains(&v6));
        all.extend([v4, v6]);
    }
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert!(!a.contains(b) && !b.contains(a), "{a} and {b} overlap");
        }
    }
    // The hub dataplane serves every member with its block as allowed IPs.
    let admin = env.hub_admin(h);
    eventually(
        "hub dataplane serves the three members",
        DEADLINE,
        POLL,
        || async {
            let s = dp_status(&admin).await?;
            Ok(names.iter().all(|n| dp_has_peer(&s, n)).then_some(()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));

    // SIGKILL and restart: every allocation stays byte-identical, a new member gets a new block.
    env.kill_hub(h);
    env.start_hub(h);
    env.create_peer("delta", &random_key(), json!({})).await;
    let delta = env.wait_ready_reason("delta", "Allocated").await;
    for (n, blocks) in &before {
        let p = env.peers.get(n).await.unwrap();
        assert_eq!(
            &p.status.unwrap().allocated_cidrs,
            blocks,
            "{n} moved after a restart"
        );
    }
    let delta_blocks = allocated(&delta);
    assert!(
        !all.iter().any(|b| delta_blocks.contains(b)),
        "{delta_blocks:?} reused"
    );

    // Delete bravo: its peer leaves the hub dataplane and its block is free for the next one.
    let bravo_blocks = before[1].1.clone();
    env.delete_peer("bravo").await;
    eventually(
        "bravo gone from the hub dataplane",
        DEADLINE,
        POLL,
        || async {
            let s = dp_status(&admin).await?;
            Ok((!dp_has_peer(&s, "bravo") && dp_has_peer(&s, "alpha")).then_some(()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    env.create_peer("echo", &random_key(), json!({})).await;
    let echo = env.wait_ready_reason("echo", "Allocated").await;
    assert_eq!(
        echo.status.unwrap().allocated_cidrs,
        bravo_blocks,
        "the reclaimed blocks go to the next new Peer (first fit)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_pool_and_bad_peers_get_conditions_while_others_are_served() {
    let mut env = Env::new().await;
    // A /23 of /24 blocks: the hub's and one member's.
    let h = env.add_hub(
        "hub-0",
        2,
        &["--tunnel-cidr", "100.64.0.0/23", "--block-prefix", "24"],
    );
    env.start_hub(h);
    env.hub_peer().await;

    // Malformed fields never reach the controller: the apiserver rejects them.
    let bad: Peer = serde_json::from_value(json!({
        "apiVersion": "fleetboard.io/v1alpha1", "kind": "Peer",
        "metadata": { "name": "bad-key", "namespace": NS },
        "spec": { "clusterId": "bad-key", "publicKey": "not-a-key" },
    }))
    .unwrap();
    match env.peers.create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{s:?}");
            assert!(s.message.contains("publicKey"), "{}", s.message);
        }
        other => panic!("a malformed Peer was accepted: {other:?}"),
    }

    env.create_peer("first", &random_key(), json!({ "cidrs": ["10.1.0.0/16"] }))
        .await;
    let first = env.wait_ready_reason("first", "Allocated").await;
    assert_eq!(
        allocated(&first),
        ["100.64.1.0/24".parse::<IpNet>().unwrap()]
    );
    env.create_peer("second", &random_key(), json!({})).await;
    let second = env.wait_ready_reason("second", "PoolExhausted").await;
    let msg = ready(&second).unwrap().2;
    assert!(msg.contains("100.64.0.0/23"), "{msg}");

    // Valid for the apiserver, wrong for the hub: a quic Peer without fingerprint, a CIDR
    // that another cluster announces. Each is flagged; the others keep being served.
    env.create_peer("no-fp", &random_key(), json!({ "transport": "quic" }))
        .await;
    let p = env
        .wait_ready_reason("no-fp", "MissingCertFingerprint")
        .await;
    assert!(ready(&p).unwrap().2.contains("spec.certFingerprint"));
    env.create_peer(
        "overlap",
        &random_key(),
        json!({ "cidrs": ["10.1.2.0/24"] }),
    )
    .await;
    let p = env.wait_ready_reason("overlap", "CidrOverlap").await;
    assert!(
        ready(&p).unwrap().2.contains("Peer first"),
        "{:?}",
        ready(&p)
    );
    let admin = env.hub_admin(h);
    let s = eventually("first served", DEADLINE, POLL, || async {
        let s = dp_status(&admin).await?;
        Ok(dp_has_peer(&s, "first").then_some(s))
    })
    .await
    .unwrap();
    for n in ["second", "no-fp", "overlap"] {
        assert!(!dp_has_peer(&s, n), "{n} must not be served");
    }

    // Freeing the pool serves the waiting Peer (the flagged ones go first: `overlap` would
    // become valid once `first` is gone and compete for the block).
    env.delete_peer("overlap").await;
    env.delete_peer("no-fp").await;
    env.delete_peer("first").await;
    let second = env.wait_ready_reason("second", "Allocated").await;
    assert_eq!(
        allocated(&second),
        ["100.64.1.0/24".parse::<IpNet>().unwrap()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_when_the_leader_is_killed() {
    let mut env = Env::new().await;
    let a = env.add_hub("hub-a", 2, &[]);
    let b = env.add_hub("hub-b", 3, &[]);
    env.start_hub(a);
    env.start_hub(b);
    let hub = env.hub_peer().await;
    env.create_peer(
        "member",
        &random_key(),
        json!({ "endpoint": "198.18.0.50" }),
    )
    .await;
    let before = allocated(&env.wait_ready_reason("member", "Allocated").await);
    let holder = env.lease_holder().await.expect("a leader");
    let (leader, standby) = if holder == "hub-a" { (a, b) } else { (b, a) };
    assert_eq!(
        hub.spec.endpoint.as_deref(),
        Some(env.hubs[leader].ip.as_str())
    );
    // Only the leader runs a dataplane.
    assert!(
        dp_status(&env.hub_admin(standby)).await.is_err(),
        "the standby runs no dataplane"
    );
    // The chart's probes: every replica is live (a standby must never be restarted); only the
    // leader is ready, so the Service sends members to it.
    eventually(
        "the leader's /ready answers 200",
        DEADLINE,
        POLL,
        || async { Ok((env.probe(leader, "/ready") == Some(200)).then_some(())) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    assert_eq!(env.probe(leader, "/live"), Some(200), "leader /live");
    assert_eq!(env.probe(standby, "/live"), Some(200), "standby /live");
    assert_eq!(env.probe(standby, "/ready"), Some(503), "standby /ready");

    let killed = Instant::now();
    env.kill_hub(leader);
    let new_ip = env.hubs[standby].ip.clone();
    let standby_admin = env.hub_admin(standby);
    eventually(
        "standby leads and serves the member",
        DEADLINE,
        Duration::from_millis(100),
        || async {
            let p = env.peers.get("hub").await?;
            let s = dp_status(&standby_admin).await.ok();
            Ok((p.spec.endpoint.as_deref() == Some(new_ip.as_str())
                && s.is_some_and(|s| dp_has_peer(&s, "member")))
            .then_some(()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    let takeover = killed.elapsed();
    eventually(
        "the new leader's /ready answers 200",
        DEADLINE,
        POLL,
        || async { Ok((env.probe(standby, "/ready") == Some(200)).then_some(())) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    eprintln!(
        "hub takeover: the standby published itself and served the member {:.2?} after SIGKILL of the leader (lease {LEASE_SECONDS}s, renew 1s)",
        takeover
    );
    assert_eq!(
        env.lease_holder().await.as_deref(),
        Some(env.hubs[standby].identity.as_str())
    );
    let after = allocated(&env.peers.get("member").await.unwrap());
    assert_eq!(before, after, "a new leader never moves a block");
    let hub = env.peers.get("hub").await.unwrap();
    assert_eq!(hub.spec.public_key, env.hub_peer().await.spec.public_key);
}

/// With `--label-pod` (the chart's setting) every replica is ready and the leader's Pod alone
/// carries `fleetboard.io/hub-role=leader`, the label the chart's Service selects: the label
/// follows the Lease when the leader dies, and a restarted replica labels itself standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_labels_its_pod_and_every_replica_is_ready() {
    let mut env = Env::new().await;
    let pods: Api<Pod> = Api::namespaced(env.cluster.client(), NS);
    // No controller-manager here to create the namespace's default ServiceAccount.
    let sa: ServiceAccount =
        serde_json::from_value(json!({ "metadata": { "name": "default" } })).unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(env.cluster.client(), NS);
    let _ = sas.create(&PostParams::default(), &sa).await;
    for name in ["hub-a", "hub-b"] {
        // Pod objects only (no kubelet here): the hub patches its own Pod's labels.
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": NS },
            "spec": { "nodeName": "nowhere", "containers": [{ "name": "hub", "image": "fleetboard" }] },
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let a = env.add_hub("hub-a", 2, &["--label-pod", "hub-a"]);
    let b = env.add_hub("hub-b", 3, &["--label-pod", "hub-b"]);
    env.start_hub(a);
    env.start_hub(b);
    let role = |name: &'static str| {
        let pods = pods.clone();
        async move {
            let p = pods.get(name).await.ok()?;
            p.metadata.labels?.get("fleetboard.io/hub-role").cloned()
        }
    };
    let holder = eventually("a leader holds the lease", DEADLINE, POLL, || async {
        Ok(env.lease_holder().await)
    })
    .await
    .unwrap();
    let (leader, standby, leader_pod, standby_pod) = if holder == "hub-a" {
        (a, b, "hub-a", "hub-b")
    } else {
        (b, a, "hub-b", "hub-a")
    };
    eventually(
        "leader pod labelled leader, standby pod standby, both ready",
        DEADLINE,
        POLL,
        || async {
            Ok((role(leader_pod).await.as_deref() == Some("leader")
                && role(standby_pod).await.as_deref() == Some("standby")
                && env.probe(leader, "/ready") == Some(200)
                && env.probe(standby, "/ready") == Some(200))
            .then_some(()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));

    env.kill_hub(leader);
    eventually(
        "the standby's pod is labelled leader",
        DEADLINE,
        POLL,
        || async { Ok((role(standby_pod).await.as_deref() == Some("leader")).then_some(())) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    // The killed replica's container restarts (as the kubelet would): it labels its Pod
    // standby before anything else, so the Service never selects two leaders for long.
    env.start_hub(leader);
    eventually(
        "the restarted replica's pod is labelled standby",
        DEADLINE,
        POLL,
        || async {
            Ok((role(leader_pod).await.as_deref() == Some("standby")
                && env.probe(leader, "/ready") == Some(200))
            .then_some(()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    assert_eq!(role(standby_pod).await.as_deref(), Some("leader"));
}

/// Issue 17, validation in depth: a member, with the credentials members join with, publishes
/// malformed Peers (endpoint 0.0.0.0; a key sharing its first 7 bytes, the hub's relay id,
/// with a healthy member's). Each is flagged with a condition naming the problem and left out;
/// the healthy members stay Connected with traffic flowing, and a hub restarted with the bad
/// Peers present serves them again. A ping runs every 200 ms from gw-a to gw-b through the
/// hub the whole time: the longest gap is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_peers_from_a_member_are_isolated_and_a_restarted_hub_serves_the_others() {
    let mut env = Env::new().await;
    let h = env.add_hub("hub-0", 2, &[]);
    env.start_hub(h);
    let hub = env.hub_peer().await;
    let member = env.member_client().await;
    let as_member: Api<Peer> = Api::namespaced(member, NS);
    let mut keys = Vec::new();
    for (i, name) in ["gw-a", "gw-b"].into_iter().enumerate() {
        keys.push(start_member(&mut env, &as_member, &hub, name, i, Transport::Wg).await);
    }
    let b_addr = env.members[1].address.to_string();
    let connected = |env: &Env| {
        let (a, b) = (&env.members[0], &env.members[1]);
        ping(&a.ns, &b_addr) && ping(&b.ns, "100.64.0.1")
    };
    eventually(
        "gw-a and gw-b talk through the hub",
        DEADLINE,
        POLL,
        || async { Ok(connected(&env).then_some(())) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    wait_connected(&env, &["gw-a", "gw-b"]).await;

    // From here on, a ping every 200 ms from gw-a to gw-b, each reply timestamped.
    let pinger = {
        let a = &env.members[0];
        let mut cmd = a.ns.command("ping");
        cmd.args(["-D", "-n", "-i", "0.2", "-W", "1", &b_addr]);
        ChildGuard::spawn("pinger", cmd, &env.dir.join("ping.log")).unwrap()
    };
    let watch_from = Instant::now();

    // 1. A Peer with endpoint 0.0.0.0 (public, so the hub would dial it).
    let zero_key = random_key();
    create_peer_as(
        &as_member,
        "bad-zero",
        &zero_key,
        json!({ "endpoint": "0.0.0.0", "isPublic": true }),
    )
    .await;
    let p = env.wait_ready_reason("bad-zero", "InvalidEndpoint").await;
    let msg = ready(&p).unwrap().2;
    assert!(
        msg.contains("spec.endpoint 0.0.0.0") && msg.contains("unspecified"),
        "{msg}"
    );
    assert!(allocated(&p).is_empty(), "an invalid Peer gets no block");
    // 2. A Peer whose key shares gw-a's first 7 bytes (no private key needed to publish one).
    let mut twin = keys[0].public_key().0;
    twin[31] ^= 0x5a;
    let twin = fleetboard_dataplane::core::PublicKey(twin).to_base64();
    let twin_peer: Peer = serde_json::from_value(json!({
        "apiVersion": "fleetboard.io/v1alpha1", "kind": "Peer",
        "metadata": { "name": "bad-twin", "namespace": NS },
        "spec": { "clusterId": "bad-twin", "publicKey": twin, "endpoint": "198.18.0.66", "isPublic": true },
    }))
    .unwrap();
    as_member
        .create(&PostParams::default(), &twin_peer)
        .await
        .unwrap();
    let p = env
        .wait_ready_reason("bad-twin", "PublicKeyPrefixCollision")
        .await;
    let msg = ready(&p).unwrap().2;
    assert!(
        msg.contains("Peer gw-a") && msg.contains("7 bytes"),
        "{msg}"
    );

    // The hub dataplane serves exactly the healthy members; they stay Connected and talk.
    let admin = env.hub_admin(h);
    let s = dp_status(&admin).await.unwrap();
    for n in ["gw-a", "gw-b"] {
        assert!(dp_has_peer(&s, n), "{n} must be served: {s:?}");
    }
    for n in ["bad-zero", "bad-twin"] {
        assert!(!dp_has_peer(&s, n), "{n} must not be served");
        let c = cond(&env.peers.get(n).await.unwrap(), "Connected");
        assert!(c.as_ref().is_none_or(|c| !c.0), "{n}: {c:?}");
    }
    wait_connected(&env, &["gw-a", "gw-b"]).await;
    let payload = env.dir.join("payload.bin");
    let want = write_random(&payload, 2 << 20);
    let got = tcp_transfer(
        &env.dir,
        &env.members[0],
        &env.members[1],
        &b_addr,
        &payload,
    )
    .await;
    assert_eq!(got, want, "bytes changed on the way\n{}", env.logs());
    let hub_log = env.hubs[h].proc.as_ref().unwrap().log();
    assert!(
        !hub_log.contains("applying the hub dataplane config"),
        "the hub dataplane refused a config:\n{hub_log}"
    );
    // Several hub passes (every 2 s) with the bad Peers present.
    let hold = Duration::from_secs(10);
    if let Some(rest) = hold.checked_sub(watch_from.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    wait_connected(&env, &["gw-a", "gw-b"]).await;
    let bad_phase = watch_from.elapsed();
    let gap_bad = longest_gap(&pinger.log(), None);

    // 3. The hub restarts with the bad Peers present: the new leader starts its dataplane
    // and serves the healthy members.
    let restart = Instant::now();
    let restart_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    env.kill_hub(h);
    env.start_hub(h);
    eventually(
        "the restarted hub serves gw-a and gw-b",
        DEADLINE,
        Duration::from_millis(100),
        || async {
            let s = dp_status(&admin).await.ok();
            Ok(
                s.filter(|s| dp_has_peer(s, "gw-a") && dp_has_peer(s, "gw-b"))
                    .map(|_| ()),
            )
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    let served_after = restart.elapsed();
    eventually("gw-a and gw-b talk again", DEADLINE, POLL, || async {
        Ok(connected(&env).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    let traffic_after = restart.elapsed();
    wait_connected(&env, &["gw-a", "gw-b"]).await;
    let s = dp_status(&admin).await.unwrap();
    assert!(!dp_has_peer(&s, "bad-zero") && !dp_has_peer(&s, "bad-twin"));
    for (n, reason) in [
        ("bad-zero", "InvalidEndpoint"),
        ("bad-twin", "PublicKeyPrefixCollision"),
    ] {
        env.wait_ready_reason(n, reason).await;
    }
    let log = pinger.log();
    let gap_restart = longest_gap(&log, Some(restart_unix));
    drop(pinger);
    eprintln!(
        "malformed Peers: over {bad_phase:.1?} with them published, the longest gap between \
         gw-a -> gw-b ping replies (every 200 ms) was {gap_bad:.2?}; hub restarted with them \
         present: healthy members served after {served_after:.2?}, traffic back after \
         {traffic_after:.2?} (longest reply gap across the restart {gap_restart:.2?})"
    );
    // Nobody was disconnected while the bad Peers were published: a reply at least every
    // 2 s (10 pings) on a busy CI machine.
    assert!(
        gap_bad < Duration::from_secs(2),
        "healthy members lost connectivity for {gap_bad:?}\n{log}"
    );
}

/// Waits until every Peer in `names` has `Connected=True`.
async fn wait_connected(env: &Env, names: &[&str]) {
    for n in names {
        let what = format!("{n} Connected");
        eventually(&what, DEADLINE, POLL, || async {
            let p = env.peers.get(n).await?;
            Ok(cond(&p, "Connected").is_some_and(|c| c.0).then_some(()))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    }
}

/// The longest time between two consecutive replies in `ping -D` output (counted from
/// `since`, a UNIX time, when given), including from the last reply to now.
fn longest_gap(ping_log: &str, since: Option<f64>) -> Duration {
    let mut times: Vec<f64> = ping_log
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    if let Some(t) = since {
        times.retain(|x| *x >= t);
        times.insert(0, t);
    }
    times.push(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64(),
    );
    let gap = times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    Duration::from_secs_f64(gap)
}

/// A plain `fleetboard dataplane` member in its own namespace, configured from what the hub
/// published.
struct Member {
    name: String,
    ns: Netns,
    proc: Option<ChildGuard>,
    address: IpAddr,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_reach_each_other_through_the_hub_wg() {
    traffic_through_the_hub(Transport::Wg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_reach_each_other_through_the_hub_quic() {
    traffic_through_the_hub(Transport::Quic).await;
}

async fn traffic_through_the_hub(transport: Transport) {
    let mut env = Env::new().await;
    let h = env.add_hub("hub-0", 2, &[]);
    env.start_hub(h);
    let hub = env.hub_peer().await;
    let peers = env.peers.clone();
    for (i, name) in ["gw-a", "gw-b"].into_iter().enumerate() {
        start_member(&mut env, &peers, &hub, name, i, transport).await;
    }

    let (a, b) = (&env.members[0], &env.members[1]);
    let b_addr = b.address.to_string();
    let hub_addr = "100.64.0.1";
    for (from, to) in [(a, b_addr.as_str()), (b, hub_addr), (a, hub_addr)] {
        eventually(
            &format!("{} pings {to}", from.name),
            DEADLINE,
            POLL,
            || async { Ok(ping(&from.ns, to).then_some(())) },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    }

    // A TCP transfer from gw-a to gw-b through the hub arrives intact.
    let payload = env.dir.join("payload.bin");
    let want = write_random(&payload, 4 << 20);
    let got = tcp_transfer(&env.dir, a, b, &b_addr, &payload).await;
    assert_eq!(got, want, "bytes changed on the way\n{}", env.logs());

    // The hub reports both members Connected, with traffic counted.
    for n in ["gw-a", "gw-b"] {
        let what = format!("{n} Connected with bytes");
        eventually(&what, DEADLINE, POLL, || async {
            let p = env.peers.get(n).await?;
            let c = cond(&p, "Connected");
            let rx = p.status.as_ref().and_then(|s| s.rx_bytes).unwrap_or(0);
            Ok((c.is_some_and(|c| c.0) && rx > 0).then_some(()))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    }
}

/// Starts a plain `fleetboard dataplane` member `name` (underlay `198.18.0.<10+i>`; `i == 0`
/// is public, the hub dials it too) whose Peer is created through `api`; configured from
/// what the hub published once its block is allocated. Returns its key.
async fn start_member(
    env: &mut Env,
    api: &Api<Peer>,
    hub: &Peer,
    name: &str,
    i: usize,
    transport: Transport,
) -> SecretKey {
    let hub_key = hub.spec.public_key.clone().unwrap();
    let hub_fp = hub.spec.cert_fingerprint.clone().unwrap();
    let hub_port = match transport {
        Transport::Wg => hub.spec.port,
        Transport::Quic => fleetboard_control::embedded::quic_port(hub.spec.port),
    };
    let hub_ep = format!("{}:{hub_port}", hub.spec.endpoint.clone().unwrap());
    let ip = format!("198.18.0.{}", 10 + i);
    let ns = Netns::new(name).unwrap();
    env.underlay
        .attach(&ns, "eth0", &[&format!("{ip}/24")])
        .unwrap();
    let key = random_key();
    let dir = env.dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let (qkey, qcert, fp) = fleetboard_dataplane::quic::generate_identity_pem(name).unwrap();
    std::fs::write(dir.join("quic.key"), qkey).unwrap();
    std::fs::write(dir.join("quic.crt"), qcert).unwrap();
    let t = match transport {
        Transport::Wg => "wg",
        Transport::Quic => "quic",
    };
    // gw-a is public (the hub dials it too), gw-b is private (only it dials the hub).
    let mut extra = json!({ "transport": t, "certFingerprint": fp.to_hex(), "port": 31820 });
    if i == 0 {
        merge(&mut extra, json!({ "endpoint": ip, "isPublic": true }));
    }
    create_peer_as(api, name, &key, extra).await;
    let p = env.wait_ready_reason(name, "Allocated").await;
    let block = allocated(&p)[0];
    let pool: IpNet = hub.spec.cidrs[0].parse().unwrap();
    let address = block.hosts().next().unwrap();
    let config = DataplaneConfig {
        transport,
        peers: vec![PeerConfig {
            name: Some("hub".into()),
            endpoint: Some(hub_ep.parse().unwrap()),
            persistent_keepalive: Some(5),
            transport: Some(transport),
            fingerprint: Some(hub_fp.clone()),
            ..PeerConfig::new(
                hub_key.parse_key(),
                hub.spec.cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            )
        }],
        admin: AdminConfig {
            socket: dir.join("dataplane.sock"),
        },
        quic: serde_json::from_value(json!({
            "certificate": dir.join("quic.crt"), "private_key": dir.join("quic.key"),
        }))
        .unwrap(),
        ..DataplaneConfig::new(
            key.clone(),
            "fb0",
            vec![IpNet::new(address, pool.prefix_len()).unwrap()],
        )
    };
    let cfg_path = dir.join("dataplane.json");
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let mut cmd = ns.command(bin("fleetboard").to_str().unwrap());
    cmd.args(["dataplane", "--config", cfg_path.to_str().unwrap()])
        .env("RUST_LOG", "info");
    let proc = ChildGuard::spawn(name, cmd, &dir.join("dataplane.log")).unwrap();
    env.members.push(Member {
        name: name.into(),
        ns,
        proc: Some(proc),
        address,
    });
    key
}

trait ParseKey {
    fn parse_key(&self) -> fleetboard_dataplane::core::PublicKey;
}

impl ParseKey for String {
    fn parse_key(&self) -> fleetboard_dataplane::core::PublicKey {
        fleetboard_dataplane::core::PublicKey::from_base64(self).unwrap()
    }
}

fn ping(ns: &Netns, dst: &str) -> bool {
    ns.command("ping")
        .args(["-c", "1", "-W", "1", dst])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Sends `file` over TCP (socat) from `from` to `to_ip` on `to`; the sha256 of what arrived.
async fn tcp_transfer(dir: &Path, from: &Member, to: &Member, to_ip: &str, file: &Path) -> String {
    let port = 5001;
    let recv_path = dir.join("received.bin");
    let mut recv_cmd = to.ns.command("socat");
    recv_cmd.args([
        "-u",
        &format!("TCP-LISTEN:{port},bind={to_ip},reuseaddr"),
        &format!("CREATE:{}", recv_path.display()),
    ]);
    let mut recv = ChildGuard::spawn("receiver", recv_cmd, &dir.join("receiver.log")).unwrap();
    eventually("receiver listening", DEADLINE, POLL, || async {
        let out = to.ns.exec("ss", &["-ltnH"])?;
        Ok(out.contains(&format!(":{port}")).then_some(()))
    })
    .await
    .unwrap();
    let st = from
        .ns
        .command("socat")
        .args([
            // A stalled connection ends (and the checksum differs) instead of hanging.
            "-T",
            "60",
            "-u",
            &format!("FILE:{}", file.display()),
            &format!("TCP:{to_ip}:{port},connect-timeout=30"),
        ])
        .status()
        .unwrap();
    assert!(st.success(), "sender socat failed: {st}");
    eventually("receiver done", DEADLINE, POLL, || {
        let done = recv.try_wait().is_some();
        async move { Ok(done.then_some(())) }
    })
    .await
    .unwrap();
    sha256(&recv_path)
}

/// Fencing (docs/SECURITY.md): the leader is frozen (SIGSTOP) past its Lease, the standby
/// takes over and writes, the old leader runs again (SIGCONT) while Peers keep changing. The
/// API server's audit log shows every Peer write with the writer's user agent
/// (`fleetboard/<identity>`, the fenced client's): after the new leader's first write, the old
/// one writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_that_runs_again_never_writes_beside_the_new_one() {
    let mut env = Env::new().await;
    let a = env.add_hub("hub-a", 2, &[]);
    let b = env.add_hub("hub-b", 3, &[]);
    env.start_hub(a);
    env.start_hub(b);
    env.create_peer("m1", &random_key(), json!({ "endpoint": "198.18.0.51" }))
        .await;
    env.wait_ready_reason("m1", "Allocated").await;
    let holder = env.lease_holder().await.expect("a leader");
    let (leader, standby) = if holder == "hub-a" { (a, b) } else { (b, a) };
    let (old, new) = (
        env.hubs[leader].identity.clone(),
        env.hubs[standby].identity.clone(),
    );

    let frozen = Instant::now();
    env.hubs[leader]
        .proc
        .as_ref()
        .unwrap()
        .signal("STOP")
        .unwrap();
    eventually("the standby holds the Lease", DEADLINE, POLL, || async {
        Ok((env.lease_holder().await.as_deref() == Some(new.as_str())).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    let took_over = frozen.elapsed();
    // Work for the new leader while the old one is frozen: a Peer to allocate.
    env.create_peer("m2", &random_key(), json!({ "endpoint": "198.18.0.52" }))
        .await;
    env.wait_ready_reason("m2", "Allocated").await;

    // The old leader runs again, and Peers change under it at once.
    env.hubs[leader]
        .proc
        .as_ref()
        .unwrap()
        .signal("CONT")
        .unwrap();
    env.create_peer("m3", &random_key(), json!({ "endpoint": "198.18.0.53" }))
        .await;
    env.delete_peer("m1").await;
    env.wait_ready_reason("m3", "Allocated").await;
    // Until the old leader knows it lost (it reports standby on /ready).
    eventually("the old leader stands by", DEADLINE, POLL, || async {
        Ok((env.probe(leader, "/ready") == Some(503)).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    // A few more renew intervals for any late write to show.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let events = env.cluster.audit_events();
    let writes = |who: &str| -> Vec<(String, String, u64)> {
        events
            .iter()
            .filter(|e| {
                e["userAgent"] == format!("fleetboard/{who}")
                    && e["objectRef"]["resource"] == "peers"
            })
            .filter_map(|e| {
                let code = e["responseStatus"]["code"].as_u64()?;
                Some((
                    e["stageTimestamp"].as_str()?.to_string(),
                    format!(
                        "{} {}{}",
                        e["verb"].as_str().unwrap_or("?"),
                        e["objectRef"]["name"].as_str().unwrap_or("?"),
                        e["objectRef"]["subresource"]
                            .as_str()
                            .map(|s| format!("/{s}"))
                            .unwrap_or_default()
                    ),
                    code,
                ))
            })
            .filter(|(_, _, code)| *code < 400)
            .collect()
    };
    let (old_writes, new_writes) = (writes(&old), writes(&new));
    assert!(
        !old_writes.is_empty(),
        "the first leader's writes are in the audit log"
    );
    let first_new = new_writes
        .iter()
        .map(|w| w.0.clone())
        .min()
        .expect("the new leader wrote (m2's block)");
    let late: Vec<_> = old_writes.iter().filter(|w| w.0 > first_new).collect();
    let refused = env.hubs[leader]
        .proc
        .as_ref()
        .unwrap()
        .log()
        .matches("write refused: not the leader")
        .count();
    eprintln!(
        "fencing: {old} frozen, {new} led after {took_over:.1?}; writes by {old}: {} (none after {first_new}: {}), by {new}: {}; {old} refused {refused} writes after it ran again",
        old_writes.len(),
        late.is_empty(),
        new_writes.len()
    );
    assert!(
        late.is_empty(),
        "{old} wrote after {new} led (from {first_new}): {late:#?}\n{}",
        env.logs()
    );
}
