//! Network namespaces, veth links and bridges that a test makes for itself.
//!
//! Conventions (ARCHITECTURE.md): every name is unique per run (prefix, pid, counter), every
//! namespace is deleted on drop (its processes killed first), underlay addresses come from
//! 198.18.0.0/15 and overlay addresses from 100.64.0.0/10 / fd00::/8. Nothing here touches the
//! host's own namespace except to create and delete namespaces.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique short token (`<pid36><n36>`) for names of namespaces and interfaces.
pub fn unique_token() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}{}", radix36(std::process::id()), radix36(n))
}

fn radix36(mut v: u32) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

/// Fails with the reason when the process cannot create namespaces (not root / no
/// CAP_NET_ADMIN, or no /dev/net/tun). Tests call this first: never skip silently.
pub fn require_net_admin() {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    assert!(
        is_root,
        "these tests need root with CAP_NET_ADMIN (network namespaces, TUN devices); run them as root"
    );
    assert!(
        std::path::Path::new("/dev/net/tun").exists(),
        "/dev/net/tun is missing: TUN devices are needed (modprobe tun)"
    );
}

/// Runs a command and returns stdout, or an error with the command, status and stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out: Output = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip <args>` in the host namespace (only used for `netns add/del`).
fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

/// A network namespace owned by the test: deleted, with every process in it killed, on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `fb-<role>-<token>` with its loopback up.
    pub fn new(role: &str) -> anyhow::Result<Self> {
        let name = format!("fb-{role}-{}", unique_token());
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// One ping to `dst` (IPv4 or IPv6) from this namespace; true when it was answered.
    pub fn ping_once(&self, dst: &str) -> bool {
        self.command("ping")
            .args(["-c", "1", "-W", "1", dst])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `program args...` in the namespace and returns stdout (error on failure).
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        run(self.command(program).args(args))
    }

    /// `GET path` on `127.0.0.1:port` inside the namespace (HTTP/1.0 over bash `/dev/tcp`, as a
    /// kubelet probe would connect; no tools needed): the whole response, status line first,
    /// or an empty string when nothing answers.
    pub fn http_get(&self, port: u16, path: &str) -> String {
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET {path} HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3 && cat <&3"
        );
        self.exec("bash", &["-c", &script]).unwrap_or_default()
    }

    /// [`Netns::http_get`]'s status code, or `None` when nothing answers.
    pub fn http_status(&self, port: u16, path: &str) -> Option<u16> {
        crate::process::http_status_line(&self.http_get(port, path))
    }

    /// `ip <args>` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Sets a sysctl inside the namespace, e.g. `net.ipv4.ip_forward=1`.
    pub fn sysctl(&self, kv: &str) -> anyhow::Result<()> {
        self.exec("sysctl", &["-qw", kv]).map(|_| ())
    }

    /// Adds an address (CIDR notation) to `dev` and brings it up.
    pub fn addr_add(&self, dev: &str, cidr: &str) -> anyhow::Result<()> {
        let family = if cidr.contains(':') { "-6" } else { "-4" };
        self.ip(&[family, "addr", "add", cidr, "dev", dev, "nodad"])
            .or_else(|_| self.ip(&[family, "addr", "add", cidr, "dev", dev]))?;
        self.ip(&["link", "set", dev, "up"])?;
        Ok(())
    }

    /// Pids of the processes running in the namespace.
    pub fn pids(&self) -> Vec<u32> {
        ip(&["netns", "pids", &self.name])
            .map(|s| {
                s.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Creates a veth pair with one end in `a` (named `a_if`) and one in `b` (named `b_if`), both
/// up. Interface names must be at most 15 bytes.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        a_if.len() <= 15 && b_if.len() <= 15,
        "interface names are at most 15 bytes"
    );
    let tmp_a = format!("fa{}", unique_token());
    let tmp_b = format!("fb{}", unique_token());
    // Created straight into the two namespaces so no name ever exists in the host namespace.
    ip(&[
        "link",
        "add",
        &tmp_a,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        &tmp_b,
        "netns",
        b.name(),
    ])?;
    a.ip(&["link", "set", &tmp_a, "name", a_if])?;
    b.ip(&["link", "set", &tmp_b, "name", b_if])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// The "internet" of a test: a namespace holding a bridge that hosts are attached to.
#[derive(Debug)]
pub struct Underlay {
    ns: Netns,
    ports: AtomicU32,
}

impl Underlay {
    /// Creates the namespace and its bridge `br0`.
    pub fn new() -> anyhow::Result<Self> {
        let ns = Netns::new("net")?;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        Ok(Self {
            ns,
            ports: AtomicU32::new(0),
        })
    }

    /// The namespace that holds the bridge.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Attaches `host` to the bridge with interface `dev` carrying `cidrs` (e.g.
    /// `"198.18.0.1/24"`, `"fd00:18::1/64"`).
    pub fn attach(&self, host: &Netns, dev: &str, cidrs: &[&str]) -> anyhow::Result<()> {
        let port = format!("p{}", self.ports.fetch_add(1, Ordering::Relaxed));
        veth(&self.ns, &port, host, dev)?;
        self.ns.ip(&["link", "set", &port, "master", "br0"])?;
        for c in cidrs {
            host.addr_add(dev, c)?;
        }
        Ok(())
    }
}
