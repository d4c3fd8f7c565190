//! Shared setup of the dataplane end-to-end tests: namespaces hub, gw-a and gw-b on an
//! underlay bridge, a `fleetboard dataplane` in each. gw-a (100.64.1.1, fd00:64:1::1) and
//! gw-b (100.64.2.1, fd00:64:2::1) know only the hub (198.18.0.1:31820), which relays.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetboard_dataplane::AdminClient;
use fleetboard_dataplane::core::{
    AdminConfig, DataplaneConfig, DataplaneStatus, PeerConfig, PeerStatus, SecretKey, Transport,
};
use fleetboard_tests::binaries::bin;
use fleetboard_tests::impaired_link::{ImpairedLink, disable_offloads};
use fleetboard_tests::link_impairment::Impairment;
use fleetboard_tests::netns::{Netns, Underlay, require_net_admin, unique_token};
use fleetboard_tests::process::{ChildGuard, wait_for};

/// Generous: CI is a busy 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(90);
/// Metrics port inside each namespace (namespaces do not share ports).
pub const METRICS_PORT: u16 = 9464;

/// A fresh random private key.
pub fn random_key() -> SecretKey {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("urandom");
    SecretKey::from_random_bytes(b)
}

/// A temporary folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `/tmp/fb-dp-<token>`.
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(format!("fb-dp-{}", unique_token()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One namespace with its dataplane.
pub struct Node {
    pub name: &'static str,
    pub ns: Netns,
    pub key: SecretKey,
    pub underlay_ip: String,
    pub config: DataplaneConfig,
    pub config_path: PathBuf,
    pub dp: Option<ChildGuard>,
    log: PathBuf,
}

impl Node {
    /// Writes the config file.
    pub fn write_config(&self) {
        std::fs::write(
            &self.config_path,
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .unwrap();
    }

    /// Starts (or restarts) the dataplane and waits for its admin socket.
    pub fn start(&mut self) {
        self.write_config();
        let mut cmd = self.ns.command(bin("fleetboard").to_str().unwrap());
        cmd.args(["dataplane", "--config", self.config_path.to_str().unwrap()]);
        cmd.env("RUST_LOG", "info,fleetboard_dataplane_core=debug");
        let _ = std::fs::remove_file(&self.config.admin.socket);
        self.dp = Some(ChildGuard::spawn(self.name, cmd, &self.log).unwrap());
        let sock = self.config.admin.socket.clone();
        let name = self.name;
        wait_for(
            &format!("{name} admin socket"),
            DEADLINE,
            Duration::from_millis(100),
            || {
                if let Some(dp) = self.dp.as_mut()
                    && let Some(st) = dp.try_wait()
                {
                    anyhow::bail!(
                        "{name} exited with {st}: {}",
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    );
                }
                Ok(sock.exists().then_some(()))
            },
        )
        .unwrap();
    }

    /// Kills the dataplane.
    pub fn kill(&mut self) {
        if let Some(mut d) = self.dp.take() {
            d.kill();
        }
    }

    /// The admin client of this node.
    pub fn admin(&self) -> AdminClient {
        AdminClient::new(self.config.admin.socket.clone())
    }

    /// The status over the admin socket.
    pub fn status(&self) -> DataplaneStatus {
        block_on(self.admin().status()).unwrap()
    }

    /// The dataplane's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One ping to `dst` (IPv4 or IPv6); true when it was answered.
    pub fn ping_once(&self, dst: &str) -> bool {
        self.ns.ping_once(dst)
    }

    /// Pings until answered (or panics with the logs after the deadline).
    pub fn wait_ping(&self, dst: &str, logs: &str) {
        wait_for(
            &format!("{} ping {dst}", self.name),
            DEADLINE,
            Duration::from_millis(200),
            || Ok(self.ping_once(dst).then_some(())),
        )
        .unwrap_or_else(|e| panic!("{e}\n{logs}"));
    }

    /// `GET path` on the metrics server inside the namespace.
    pub fn http_get(&self, path: &str) -> String {
        self.ns.http_get(METRICS_PORT, path)
    }
}

/// Runs a future on a small runtime (the admin client is async).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// The status of the peer named `name` in `s` (panics with the names there are).
pub fn peer_named<'a>(s: &'a DataplaneStatus, name: &str) -> &'a PeerStatus {
    s.peers
        .iter()
        .find(|p| p.name.as_deref() == Some(name))
        .unwrap_or_else(|| {
            let names: Vec<_> = s.peers.iter().map(|p| p.name.clone()).collect();
            panic!("no peer {name} among {names:?}")
        })
}

/// A peer entry for `key`.
pub fn peer(name: &str, key: &SecretKey, endpoint: Option<&str>, cidrs: &[&str]) -> PeerConfig {
    PeerConfig {
        name: Some(name.into()),
        endpoint: endpoint.map(|e| e.parse().unwrap()),
        persistent_keepalive: if endpoint.is_some() { Some(5) } else { None },
        ..PeerConfig::new(
            key.public_key(),
            cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        )
    }
}

/// The three-node topology.
pub struct Topology {
    pub hub: Node,
    pub a: Node,
    pub b: Node,
    pub underlay: Underlay,
    /// gw-a's link to the underlay when it is impaired ([`Topology::new_impaired`]).
    pub link: Option<ImpairedLink>,
    pub dir: TempDir,
}

pub const HUB_EP: &str = "198.18.0.1:31820";
pub const A_V4: &str = "100.64.1.1";
pub const B_V4: &str = "100.64.2.1";
pub const HUB_V4: &str = "100.64.0.1";
pub const A_V6: &str = "fd00:64:1::1";
pub const B_V6: &str = "fd00:64:2::1";

fn node(
    name: &'static str,
    dir: &Path,
    underlay: &Underlay,
    ip: &str,
    config: DataplaneConfig,
) -> Node {
    let ns = Netns::new(name).unwrap();
    underlay
        .attach(&ns, "eth0", &[&format!("{ip}/24")])
        .unwrap();
    node_in(ns, name, dir, ip, config)
}

fn node_in(ns: Netns, name: &'static str, dir: &Path, ip: &str, config: DataplaneConfig) -> Node {
    Node {
        name,
        ns,
        key: config.private_key.clone(),
        underlay_ip: ip.into(),
        config_path: dir.join(format!("{name}.json")),
        log: dir.join(format!("{name}.log")),
        config,
        dp: None,
    }
}

fn base_config(dir: &Path, name: &str, key: SecretKey, v4: &str, v6: &str) -> DataplaneConfig {
    DataplaneConfig {
        admin: AdminConfig {
            socket: dir.join(format!("{name}.sock")),
        },
        metrics_address: Some(format!("127.0.0.1:{METRICS_PORT}").parse().unwrap()),
        ..DataplaneConfig::new(key, "fb0", vec![v4.parse().unwrap(), v6.parse().unwrap()])
    }
}

/// The hub's QUIC endpoint (the QUIC transport listens beside WireGuard's port).
pub const HUB_QUIC_EP: &str = "198.18.0.1:31821";

/// Writes a fresh QUIC identity for `name` into `dir`; returns its fingerprint.
pub fn quic_identity(dir: &Path, name: &str) -> String {
    let (key, cert, fp) = fleetboard_dataplane::quic::generate_identity_pem(name).unwrap();
    std::fs::write(dir.join(format!("{name}-quic.key")), key).unwrap();
    std::fs::write(dir.join(format!("{name}-quic.crt")), cert).unwrap();
    fp.to_string()
}

/// Switches `config` (of node `name`) to the QUIC transport with the identity files in `dir`.
pub fn use_quic(dir: &Path, name: &str, config: &mut DataplaneConfig) {
    config.transport = Transport::Quic;
    config.quic.certificate = Some(dir.join(format!("{name}-quic.crt")));
    config.quic.private_key = Some(dir.join(format!("{name}-quic.key")));
}

impl Topology {
    /// Creates the namespaces and configs; `hub_knows_b` = false leaves gw-b out of the hub's
    /// peers (for runtime-add tests). Nothing is started.
    pub fn new(hub_knows_b: bool) -> Self {
        Self::new_with(hub_knows_b, Transport::Wg)
    }

    /// As [`Topology::new`], every node using `transport` (QUIC: identities generated into
    /// the temp dir, peers pinned by fingerprint, members dialing the hub's QUIC port).
    pub fn new_with(hub_knows_b: bool, transport: Transport) -> Self {
        Self::new_on(hub_knows_b, transport, None)
    }

    /// As [`Topology::new_with`], gw-a attached to the underlay through an [`ImpairedLink`]
    /// (in `link`) that starts as `imp`: gw-a's underlay traffic to gw-b (raw) and its tunnel
    /// traffic to the hub both cross it once each way. Offloads are off on every underlay
    /// interface (the link forwards whole frames).
    pub fn new_impaired(transport: Transport, imp: Impairment) -> Self {
        Self::new_on(true, transport, Some(imp))
    }

    fn new_on(hub_knows_b: bool, transport: Transport, link: Option<Impairment>) -> Self {
        require_net_admin();
        let dir = TempDir::new();
        let underlay = Underlay::new().unwrap();
        let (kh, ka, kb) = (random_key(), random_key(), random_key());
        let mut hub = base_config(&dir.0, "hub", kh.clone(), "100.64.0.1/10", "fd00:64::1/32");
        hub.peers.push(peer(
            "gw-a",
            &ka,
            None,
            &["100.64.1.0/24", "fd00:64:1::/48"],
        ));
        if hub_knows_b {
            hub.peers.push(peer(
                "gw-b",
                &kb,
                None,
                &["100.64.2.0/24", "fd00:64:2::/48"],
            ));
        }
        let mut a = base_config(&dir.0, "gw-a", ka, "100.64.1.1/10", "fd00:64:1::1/32");
        a.peers.push(peer(
            "hub",
            &kh,
            Some(HUB_EP),
            &["100.64.0.0/10", "fd00:64::/32"],
        ));
        let mut b = base_config(&dir.0, "gw-b", kb, "100.64.2.1/10", "fd00:64:2::1/32");
        b.peers.push(peer(
            "hub",
            &kh,
            Some(HUB_EP),
            &["100.64.0.0/10", "fd00:64::/32"],
        ));
        if transport == Transport::Quic {
            let fp: Vec<String> = ["hub", "gw-a", "gw-b"]
                .iter()
                .map(|n| quic_identity(&dir.0, n))
                .collect();
            for (name, cfg) in [("hub", &mut hub), ("gw-a", &mut a), ("gw-b", &mut b)] {
                use_quic(&dir.0, name, cfg);
                for p in &mut cfg.peers {
                    let i = match p.name.as_deref() {
                        Some("hub") => 0,
                        Some("gw-a") => 1,
                        _ => 2,
                    };
                    p.fingerprint = Some(fp[i].clone());
                    if p.endpoint.is_some() {
                        p.endpoint = Some(HUB_QUIC_EP.parse().unwrap());
                    }
                }
            }
        }
        let hub = node("hub", &dir.0, &underlay, "198.18.0.1", hub);
        let b = node("gw-b", &dir.0, &underlay, "198.18.0.3", b);
        let (a, link) = match link {
            None => (node("gw-a", &dir.0, &underlay, "198.18.0.2", a), None),
            Some(imp) => {
                let ns = Netns::new("gw-a").unwrap();
                let link =
                    ImpairedLink::attach(&underlay, &ns, "eth0", &["198.18.0.2/24"], imp).unwrap();
                for n in [&hub, &b] {
                    disable_offloads(&n.ns, "eth0").unwrap();
                }
                (node_in(ns, "gw-a", &dir.0, "198.18.0.2", a), Some(link))
            }
        };
        Self {
            hub,
            a,
            b,
            underlay,
            link,
            dir,
        }
    }

    /// Starts the three dataplanes.
    pub fn start(&mut self) {
        self.hub.start();
        self.a.start();
        self.b.start();
    }

    /// The three logs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- hub log\n{}\n--- gw-a log\n{}\n--- gw-b log\n{}",
            tail(&self.hub.log()),
            tail(&self.a.log()),
            tail(&self.b.log())
        )
    }

    /// Started, and gw-a reaches gw-b through the hub.
    pub fn up() -> Self {
        Self::up_with(Transport::Wg)
    }

    /// As [`Topology::up`] with `transport`.
    pub fn up_with(transport: Transport) -> Self {
        let mut t = Self::new_with(true, transport);
        t.start();
        t.a.wait_ping(B_V4, &t.logs());
        t
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Sends `file` with socat from `from` to `to_ip:port` (on `to`), returns the sha256 of what
/// arrived. The receiver writes its checksum into a file in `dir`.
pub fn tcp_transfer(dir: &Path, from: &Node, to: &Node, to_ip: &str, file: &Path) -> String {
    let port = 5000 + (std::process::id() % 1000) as u16;
    let sum_path = dir.join(format!("recv-{}.sha256", unique_token()));
    let recv_log = dir.join(format!("recv-{}.log", unique_token()));
    let mut recv_cmd = to.ns.command("bash");
    recv_cmd.args([
        "-c",
        &format!(
            "socat -u TCP-LISTEN:{port},bind={to_ip},reuseaddr - | sha256sum > {p}.tmp && mv {p}.tmp {p}",
            p = sum_path.display()
        ),
    ]);
    let _recv = ChildGuard::spawn("receiver", recv_cmd, &recv_log).unwrap();
    wait_for(
        "receiver listening",
        DEADLINE,
        Duration::from_millis(100),
        || {
            let out = to.ns.exec("ss", &["-ltnH"])?;
            Ok(out.contains(&format!(":{port}")).then_some(()))
        },
    )
    .unwrap();
    let st = from
        .ns
        .command("socat")
        .args([
            "-u",
            &format!("FILE:{}", file.display()),
            &format!("TCP:{to_ip}:{port},connect-timeout=30"),
        ])
        .status()
        .unwrap();
    assert!(st.success(), "sender socat failed: {st}");
    let sum = wait_for(
        "receiver checksum",
        DEADLINE,
        Duration::from_millis(100),
        || Ok(std::fs::read_to_string(&sum_path).ok()),
    )
    .unwrap();
    sum.split_whitespace().next().unwrap().to_string()
}

/// Writes `mib` MiB of random bytes to a file in `dir` and returns it and its sha256.
pub fn random_file(dir: &Path, mib: usize) -> (PathBuf, String) {
    let p = dir.join("payload.bin");
    let sum = write_random(&p, mib << 20);
    (p, sum)
}

/// Writes `len` random bytes to `path`; their sha256 (hex).
pub fn write_random(path: &Path, len: usize) -> String {
    let st = std::process::Command::new("head")
        .args(["-c", &len.to_string(), "/dev/urandom"])
        .stdout(std::fs::File::create(path).unwrap())
        .status()
        .unwrap();
    assert!(st.success());
    sha256(path)
}

/// The sha256 (hex) of a file, as `sha256sum` prints it.
pub fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}
