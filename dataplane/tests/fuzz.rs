//! Property tests over the driver's parsers of untrusted bytes (issue 18 item 7): the admin
//! socket's request lines and the QUIC transport's received datagrams. No panic, and every
//! rejection is answered (admin) or counted (QUIC). `PROPTEST_CASES` sets the cases per test.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::time::Instant;

use fleetboard_dataplane::admin::{self, AdminCall, Request, Response};
use fleetboard_dataplane::core::{
    Action, Dataplane, DataplaneConfig, MAX_PACKET, PeerConfig, SecretKey, Transport,
};
use fleetboard_dataplane::quic::{NotIp, check_ip_packet};
use proptest::prelude::*;
use tokio::sync::mpsc;

fn key(n: u8) -> SecretKey {
    SecretKey::from_random_bytes([n; 32])
}

/// Node 1 with peer 2 (100.64.1.0/24, fd00::/8) on QUIC, as the link would feed it.
fn config() -> DataplaneConfig {
    let mut c = DataplaneConfig::new(key(1), "fb0", vec!["100.64.0.1/10".parse().unwrap()]);
    c.peers.push(PeerConfig {
        name: Some("n2".into()),
        endpoint: Some("198.18.0.2:31821".parse().unwrap()),
        transport: Some(Transport::Quic),
        ..PeerConfig::new(
            key(2).public_key(),
            vec![
                "100.64.1.0/24".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
        )
    });
    c.quic.certificate = Some("/nonexistent/quic.crt".into());
    c.quic.private_key = Some("/nonexistent/quic.key".into());
    c.quic.ca = Some("/nonexistent/ca.crt".into());
    c
}

thread_local! {
    static RT: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().build().unwrap();
    static CORE: RefCell<Dataplane> = RefCell::new(Dataplane::new(config(), Instant::now()).unwrap());
}

/// What the driver's `handle_admin` does with a parsed request, on `core` (reload: no file).
fn answer(core: &mut Dataplane, req: Request) -> Response {
    match req {
        Request::Status => Response::Status(Box::new(core.status())),
        Request::GetConfig => Response::Config(Box::new(admin::RedactedConfig::of(core.config()))),
        Request::Reload => Response::Ok,
        req => match admin::edit(core.config(), req) {
            Err(e) => Response::Error(e),
            Ok(c) => match core.apply_config(c) {
                Ok(()) => Response::Ok,
                Err(e) => Response::Error(e.to_string()),
            },
        },
    }
}

/// `line` through the admin request parser and a driver answering on a fresh core: the reply,
/// and whether the request reached the driver.
fn admin_reply(line: &[u8]) -> (Response, bool) {
    RT.with(|rt| {
        rt.block_on(async {
            let (tx, mut rx) = mpsc::channel::<AdminCall>(1);
            let client = async move { admin::request_reply(line, &tx).await };
            let driver = async {
                let mut core = Dataplane::new(config(), Instant::now()).unwrap();
                let Some((req, reply)) = rx.recv().await else {
                    return false;
                };
                let _ = reply.send(answer(&mut core, req));
                true
            };
            tokio::join!(client, driver)
        })
    })
}

/// A JSON request line close to a valid one: a known op (or not) with plausible fields.
fn admin_line() -> impl Strategy<Value = Vec<u8>> {
    let op = prop_oneof![
        Just("status".to_string()),
        Just("get_config".to_string()),
        Just("set_config".to_string()),
        Just("upsert_peer".to_string()),
        Just("remove_peer".to_string()),
        Just("upsert_route".to_string()),
        Just("remove_route".to_string()),
        Just("reload".to_string()),
        "[a-z_]{0,12}",
    ];
    let b64 =
        any::<[u8; 32]>().prop_map(|b| SecretKey::from_random_bytes(b).public_key().to_string());
    let cidr = (any::<[u8; 4]>(), 0u8..40)
        .prop_map(|(a, l)| format!("{}.{}.{}.{}/{l}", a[0], a[1], a[2], a[3]));
    let text = prop_oneof![b64.clone(), cidr.clone(), ".{0,20}"];
    let value = prop_oneof![
        text.clone().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
        (b64.clone(), proptest::collection::vec(cidr.clone(), 0..3), proptest::option::of(text.clone()))
            .prop_map(|(k, ips, ep)| serde_json::json!({"public_key": k, "allowed_ips": ips, "endpoint": ep})),
        (cidr, prop_oneof![b64, Just(key(2).public_key().to_string())])
            .prop_map(|(c, p)| serde_json::json!({"cidr": c, "peer": p})),
        Just(serde_json::to_value(config()).unwrap()),
    ];
    let field = prop_oneof![
        Just("config"),
        Just("peer"),
        Just("public_key"),
        Just("route"),
        Just("cidr"),
        Just("x"),
    ];
    (
        op,
        proptest::collection::vec((field, value), 0..3),
        0usize..8,
        any::<u8>(),
    )
        .prop_map(|(op, fields, cut, junk)| {
            let mut m = serde_json::Map::new();
            m.insert("op".into(), op.into());
            for (f, v) in fields {
                m.insert(f.into(), v);
            }
            let mut line = serde_json::to_vec(&m).unwrap();
            // Sometimes truncated or with a stray byte.
            match cut {
                0 => line.truncate(line.len() / 2),
                1 => line.push(junk),
                _ => {}
            }
            line
        })
}

/// A datagram that starts like an IPv4/IPv6 packet from peer 2 to node 1.
fn ipish() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..100),
        any::<u16>(),
    )
        .prop_map(|(six, len_ok, body, junk)| {
            let mut p = if six {
                let mut h = vec![0x60, 0, 0, 0, 0, 0, 17, 64, 0xfd];
                h.extend_from_slice(&[1; 15]);
                h.push(0xfd);
                h.extend_from_slice(&[2; 15]);
                h
            } else {
                vec![
                    0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0, 100, 64, 1, 5, 100, 64, 0, 1,
                ]
            };
            p.extend_from_slice(&body);
            let len = if len_ok { p.len() as u16 } else { junk };
            if six {
                p[4..6].copy_from_slice(&len.wrapping_sub(40).to_be_bytes());
            } else {
                p[2..4].copy_from_slice(&len.to_be_bytes());
            }
            p
        })
}

proptest! {
    #[test]
    fn admin_request_lines_never_panic(
        line in prop_oneof![proptest::collection::vec(any::<u8>(), 0..300), admin_line()],
    ) {
        let before = admin::REFUSED_REQUESTS.load(Ordering::Relaxed);
        let (resp, reached) = admin_reply(&line);
        let counted = admin::REFUSED_REQUESTS.load(Ordering::Relaxed) - before;
        match serde_json::from_slice::<Request>(&line) {
            // Rejected by the parser: answered with an error and counted once, the driver
            // never sees it.
            Err(_) => {
                prop_assert!(!reached);
                prop_assert_eq!(counted, 1);
                prop_assert!(matches!(&resp, Response::Error(e) if e.starts_with("bad request: ")), "{:?}", resp);
            }
            Ok(_) => {
                prop_assert!(reached, "{:?}", resp);
                prop_assert_eq!(counted, 0);
            }
        }
    }

    #[test]
    fn admin_line_framing_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        // The same bytes as a stream: each line read is what lies between two newlines.
        let lines: Vec<Vec<u8>> = RT.with(|rt| {
            rt.block_on(async {
                let mut r = &data[..];
                let mut buf = Vec::new();
                let mut lines = Vec::new();
                while let Some(read) = admin::read_request(&mut r, &mut buf).await.unwrap() {
                    assert!(read.is_ok());
                    lines.push(buf.clone());
                }
                lines
            })
        });
        let mut want: Vec<Vec<u8>> = data.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
        if data.last().is_none_or(|b| *b == b'\n') {
            want.pop();
        }
        prop_assert_eq!(lines, want);
    }

    #[test]
    fn quic_datagrams_never_panic_and_count(
        data in prop_oneof![proptest::collection::vec(any::<u8>(), 0..1600), ipish()],
    ) {
        // The QUIC read loop's checks: an oversized datagram counts `drop_oversized`, a
        // non-IP one `drop_not_ip` (both folded into the drop counters), the rest goes to
        // the core, which forwards it or counts exactly one drop.
        let max_packet = 1414;
        let checked = check_ip_packet(&data);
        if data.len() > max_packet {
            return Ok(());
        }
        match checked {
            Err(NotIp::Truncated) => prop_assert!(data.len() < 40),
            Err(NotIp::Version) => prop_assert!(!matches!(data[0] >> 4, 4 | 6)),
            Err(NotIp::Length) => {}
            Ok(()) => CORE.with(|c| {
                let mut core = c.borrow_mut();
                let id = core.peers().next().unwrap().id;
                let mut out = vec![0u8; MAX_PACKET];
                let before = core.drops().total();
                let a = core.handle_peer_packet(Instant::now(), id, &data, &mut out);
                let dropped = core.drops().total() - before;
                prop_assert_eq!(dropped, u64::from(a == Action::None), "{:?}", a);
                // A well-formed packet is never `malformed` for the core.
                prop_assert_eq!(core.drops().get(fleetboard_dataplane::core::DropReason::Malformed), 0);
                Ok(())
            })?,
        }
    }
}
