//! Runtime changes (admin API, SIGHUP), observability (`/metrics`, `/live`, `/ready`,
//! `show`), and config errors that name their field.

use std::time::{Duration, Instant};

use crate::dataplane_support::*;
use fleetboard_dataplane::core::DropReason;
use fleetboard_tests::binaries::bin;
use fleetboard_tests::process::wait_for;

#[test]
fn peers_are_added_and_removed_at_runtime_through_the_admin_api() {
    let mut t = Topology::new(false);
    t.start();
    t.a.wait_ping(HUB_V4, &t.logs());
    assert!(!t.b.ping_once(A_V4), "gw-b is not a peer of the hub yet");

    // Adding gw-b leaves gw-a's session alone: no new handshake, traffic on the old session.
    // The handshake's age is in whole seconds, so let it pass 2 s first: a handshake made
    // after the change would then be younger than the change, the kept one is older.
    let gw_a = |t: &Topology| peer_named(&t.hub.status(), "gw-a").clone();
    wait_for(
        "gw-a's handshake with the hub 2 s old",
        DEADLINE,
        Duration::from_millis(200),
        || Ok((gw_a(&t).last_handshake_secs_ago >= Some(2)).then_some(())),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", t.logs()));
    let before = gw_a(&t);
    let changed = Instant::now();
    let kb = t.b.key.clone();
    block_on(t.hub.admin().upsert_peer(peer(
        "gw-b",
        &kb,
        None,
        &["100.64.2.0/24", "fd00:64:2::/48"],
    )))
    .unwrap();
    t.b.wait_ping(A_V4, &t.logs());
    t.a.wait_ping(B_V6, &t.logs());
    let after = gw_a(&t);
    let since_change = changed.elapsed().as_secs();
    let age = after.last_handshake_secs_ago.unwrap_or(0);
    assert!(
        age > since_change,
        "gw-a has a new session since the hub changed: handshake {age} s ago, change {since_change} s ago\n{}",
        t.logs()
    );
    assert!(
        after.counters.rx_packets > before.counters.rx_packets,
        "nothing from gw-a on its session since the change: {before:?} -> {after:?}"
    );

    // A bad change is refused with the field named, and changes nothing.
    let mut bad = peer("bad", &random_key(), None, &["100.64.1.0/24"]);
    bad.persistent_keepalive = Some(0);
    let err = block_on(t.hub.admin().upsert_peer(bad))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("persistent_keepalive") && err.contains("allowed_ips"),
        "{err}"
    );

    block_on(t.hub.admin().remove_peer(kb.public_key())).unwrap();
    assert!(!t.a.ping_once(B_V4), "gw-b was removed");
    assert!(!t.b.ping_once(A_V4), "gw-b was removed");
    let s = t.hub.status();
    assert_eq!(s.peers.len(), 1);
    // gw-b keeps knocking with its old session: unknown to the hub now, counted.
    assert!(s.drops.get(DropReason::UnknownPeer) > 0, "{:?}", s.drops);
    t.a.wait_ping(HUB_V4, &t.logs());
    // The config file was not touched: a fresh status shows one peer.
    assert_eq!(block_on(t.hub.admin().config()).unwrap().peers().len(), 1);
}

#[test]
fn sighup_reloads_the_config_file() {
    let mut t = Topology::new(false);
    t.start();
    t.a.wait_ping(HUB_V4, &t.logs());
    let kb = t.b.key.clone();
    t.hub
        .config
        .peers
        .push(peer("gw-b", &kb, None, &["100.64.2.0/24"]));
    t.hub.write_config();
    t.hub.dp.as_ref().unwrap().signal("HUP").unwrap();
    t.b.wait_ping(A_V4, &t.logs());

    // A broken file on reload is refused; the running config stays.
    std::fs::write(&t.hub.config_path, "interface: {mtu: 5}\n").unwrap();
    t.hub.dp.as_ref().unwrap().signal("HUP").unwrap();
    wait_for(
        "reload error logged",
        DEADLINE,
        Duration::from_millis(100),
        || Ok(t.hub.log().contains("SIGHUP reload failed").then_some(())),
    )
    .unwrap();
    t.b.wait_ping(A_V4, &t.logs());
}

#[test]
fn metrics_health_and_show_report_peers_and_drops() {
    let t = Topology::up();
    let m = t.hub.http_get("/metrics");
    assert!(m.contains("200 OK"), "{m}");
    assert!(
        m.contains("fleetboard_peer_rx_bytes_total{peer=\"gw-a\""),
        "{m}"
    );
    assert!(
        m.contains("fleetboard_drops_total{reason=\"malformed\"}"),
        "{m}"
    );
    assert!(m.contains("fleetboard_peers 2"), "{m}");
    assert!(t.hub.http_get("/live").contains("200 OK"));
    assert!(t.hub.http_get("/ready").contains("200 OK"));

    let out = t
        .hub
        .ns
        .exec(
            bin("fleetboard").to_str().unwrap(),
            &[
                "dataplane",
                "--config",
                t.hub.config_path.to_str().unwrap(),
                "show",
            ],
        )
        .unwrap();
    assert!(
        out.contains(&format!("public key: {}", t.hub.key.public_key())),
        "{out}"
    );
    assert!(
        out.contains("name: gw-a")
            && out.contains("latest handshake:")
            && out.contains("transfer:"),
        "{out}"
    );
    assert!(out.contains("endpoint: 198.18.0.2:31820"), "{out}");
}

/// One raw request line on the admin socket, and everything the dataplane answered until
/// it closed the connection or sent one line.
fn raw_admin(sock: &std::path::Path, request: &[u8]) -> String {
    use std::io::{BufRead, Write};
    let s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    // The server may close before the whole request is written (that is the point).
    let _ = w.write_all(request);
    let mut line = String::new();
    let _ = std::io::BufReader::new(s).read_line(&mut line);
    line
}

#[test]
fn admin_socket_is_private_bounded_and_never_shows_the_private_key() {
    use std::os::unix::fs::PermissionsExt;
    let mut t = Topology::new(false);
    t.start();
    // `start` returns as soon as the socket exists: it is 0600 from that first moment.
    let sock = t.hub.config.admin.socket.clone();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin socket mode {mode:o}");
    t.a.wait_ping(HUB_V4, &t.logs());

    // A request line over the bound: an error reply naming it, then the connection closes.
    let mut big = vec![b' '; fleetboard_dataplane::admin::MAX_REQUEST + 10];
    big.push(b'\n');
    let reply = raw_admin(&sock, &big);
    assert!(reply.contains("request longer than"), "{reply:?}");
    // The dataplane still serves.
    assert_eq!(t.hub.status().peers.len(), 1);

    // get_config, show --json, /metrics and the log never contain the private key.
    let secret = t.hub.key.to_base64();
    let config = raw_admin(&sock, b"{\"op\":\"get_config\"}\n");
    assert!(config.contains("\"config\""), "{config}");
    assert!(
        config.contains(&t.hub.key.public_key().to_base64()),
        "{config}"
    );
    assert!(
        !config.contains(&secret),
        "get_config leaked the private key"
    );
    let show = t
        .hub
        .ns
        .exec(
            bin("fleetboard").to_str().unwrap(),
            &[
                "dataplane",
                "--config",
                t.hub.config_path.to_str().unwrap(),
                "show",
                "--json",
            ],
        )
        .unwrap();
    assert!(!show.contains(&secret), "show leaked the private key");
    let metrics = t.hub.http_get("/metrics");
    assert!(metrics.contains("200 OK"), "{metrics}");
    assert!(
        !metrics.contains(&secret),
        "/metrics leaked the private key"
    );
    assert!(
        !t.hub.log().contains(&secret),
        "the log has the private key"
    );
}

#[test]
fn a_bad_config_exits_before_binding_and_names_the_field() {
    let dir = TempDir::new();
    let p = dir.0.join("bad.yaml");
    // Writes `yaml` as the config, runs the dataplane on it: it must fail; returns its stderr.
    let fails_with = |yaml: &str| {
        std::fs::write(&p, yaml).unwrap();
        let out = std::process::Command::new(bin("fleetboard"))
            .args(["dataplane", "--config", p.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = fails_with("interface: { name: fb0, mtu: 70000 }\nprivate_key: \"not-a-key\"\n");
    assert!(
        err.contains("interface.mtu") || err.contains("private_key"),
        "{err}"
    );

    let err = fails_with(&format!(
        "interface: {{ name: fb0, mtu: 100 }}\nprivate_key: \"{}\"\npeers:\n  - {{ public_key: \"{}\", persistent_keepalive: 0 }}\n",
        random_key().to_base64(),
        random_key().public_key()
    ));
    assert!(
        err.contains("interface.mtu") && err.contains("peers[0].persistent_keepalive"),
        "{err}"
    );
}

#[test]
fn keygen_and_pubkey_behave_like_wg() {
    let fb = bin("fleetboard");
    let key = std::process::Command::new(&fb)
        .arg("keygen")
        .output()
        .unwrap();
    assert!(key.status.success());
    let key = String::from_utf8(key.stdout).unwrap();
    assert_eq!(key.trim().len(), 44, "{key}");
    let mut c = std::process::Command::new(&fb)
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin.take().unwrap().write_all(key.as_bytes()).unwrap();
    let ours = String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap();
    // Same answer as wireguard-tools when installed.
    if let Ok(mut wg) = std::process::Command::new("wg")
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
    {
        wg.stdin.take().unwrap().write_all(key.as_bytes()).unwrap();
        let theirs = String::from_utf8(wg.wait_with_output().unwrap().stdout).unwrap();
        assert_eq!(ours, theirs);
    }
    assert_eq!(ours.trim().len(), 44);
}
