//! Each member's own identity on the hub, end to end: a hub and two members (three real API
//! servers), `fleetboard hub` and one `fleetboard agent` per node as processes in network
//! namespaces, members joined as `kubectl peers join` joins them. The gateway renews the
//! member's token in the member's Secret and every agent follows; `kubectl peers remove`
//! revokes a member: its token is refused and its tunnel ends (both measured).

use std::time::{Duration, Instant};

use fleetboard_control::crd::all_crds;
use fleetboard_control::crd::peer::Peer;
use fleetboard_control::membership;
use fleetboard_tests::fleet::{DEADLINE, Fleet, FleetOptions, HUB_TOKEN_SECRET, NAMESPACE, POLL};
use fleetboard_tests::kube::eventually;
use fleetboard_tests::process::wait_for;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};

/// The member's hub token, as its Secret holds it now.
async fn member_token(f: &Fleet, m: usize) -> String {
    let s = Api::<Secret>::namespaced(f.members[m].cluster.client(), NAMESPACE)
        .get(HUB_TOKEN_SECRET)
        .await
        .unwrap();
    String::from_utf8(s.data.unwrap()["token"].0.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_renew_and_a_removed_member_loses_the_hub_and_its_tunnel() {
    let opts = FleetOptions {
        // Renew as soon as a token is 5 s old (the API server's minimum lifetime is 10 min).
        agent_flags: vec!["--hub-token-renew-after".into(), "5".into()],
        ..Default::default()
    };
    let f = Fleet::start(opts, all_crds()).await.unwrap();
    let hub_api = f.hub.cluster.client();
    let peers: Api<Peer> = Api::namespaced(hub_api.clone(), NAMESPACE);
    for id in ["a", "b"] {
        eventually(
            &format!("Peer {id} gets a block"),
            DEADLINE,
            POLL,
            || async {
                Ok(peers
                    .get_opt(id)
                    .await?
                    .and_then(|p| p.status)
                    .filter(|s| !s.allocated_cidrs.is_empty())
                    .map(|_| ()))
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    }
    let b1_ip = eventually("b1 gets a sub-block", DEADLINE, POLL, || f.tun_ip("b1"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    let a1 = &f.nodes[f.node("a1")];
    wait_for("a1 reaches b1 through the hub", DEADLINE, POLL, || {
        Ok(a1.ping_once(&b1_ip).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));

    // 1. Renewal: member a's gateway replaces the token twice, each a token of a's own
    // ServiceAccount, and every agent of a writes the newest into its token file.
    let first = member_token(&f, 0).await;
    let mut seen = vec![first.clone()];
    let deadline = Instant::now() + DEADLINE;
    while seen.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "a's token renewed {} times, not 2, in {DEADLINE:?}\n{}",
            seen.len() - 1,
            f.logs()
        );
        let now = member_token(&f, 0).await;
        if !seen.contains(&now) {
            seen.push(now);
        }
        tokio::time::sleep(POLL).await;
    }
    let newest = member_token(&f, 0).await;
    let (exp, iat) = membership::token_times(&newest).expect("a JWT");
    assert!(exp - iat >= 600, "a renewed token lives {} s", exp - iat);
    let as_a = f.hub.cluster.client_with_token(&newest).await.unwrap();
    Api::<Peer>::namespaced(as_a, NAMESPACE)
        .list(&ListParams::default())
        .await
        .expect("the renewed token is a's working identity");
    for n in f.nodes.iter().filter(|n| n.member == 0) {
        let file = n.state_dir.join("hub-token");
        eventually(
            &format!("{} follows the renewal", n.name),
            DEADLINE,
            POLL,
            || async {
                let now = member_token(&f, 0).await;
                let have = std::fs::read_to_string(&file).unwrap_or_default();
                Ok((have.trim() == now).then_some(()))
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o077, 0, "{} is readable by others", file.display());
    }

    // 2. Removal of b.
    let b_token = member_token(&f, 1).await;
    let as_b = f.hub.cluster.client_with_token(&b_token).await.unwrap();
    let as_b_peers: Api<Peer> = Api::namespaced(as_b, NAMESPACE);
    as_b_peers.list(&ListParams::default()).await.unwrap();
    let hub_socket = f.hub.replicas[0].socket();
    let start = Instant::now();
    let removed = membership::remove(&hub_api, NAMESPACE, "b").await.unwrap();
    println!(
        "kubectl peers remove b took {:.2} s: {:?}",
        start.elapsed().as_secs_f64(),
        removed.deleted
    );
    // The three ends, each timed on its own: every condition is polled each round.
    let (mut refused, mut hub_forgot, mut cut) = (None, None, None);
    let mut denied = None;
    let b_again: Peer = serde_json::from_value(serde_json::json!({
        "apiVersion": "fleetboard.io/v1alpha1", "kind": "Peer",
        "metadata": { "name": "b", "namespace": NAMESPACE },
        "spec": { "clusterId": "b" },
    }))
    .unwrap();
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = Instant::now() + DEADLINE;
    while refused.is_none() || hub_forgot.is_none() || cut.is_none() || denied.is_none() {
        assert!(
            Instant::now() < deadline,
            "after {DEADLINE:?}: token refused {refused:?}, hub without b {hub_forgot:?}, \
             tunnel ended {cut:?}\n{}",
            f.logs()
        );
        if refused.is_none()
            && matches!(
                as_b_peers.list(&ListParams::default()).await,
                Err(kube::Error::Api(s)) if s.code == 401
            )
        {
            refused = Some(start.elapsed());
        }
        // b's agents writing their Peer back (a dry run: it must not succeed for real).
        if denied.is_none()
            && matches!(
                as_b_peers.create(&dry_run, &b_again).await,
                Err(kube::Error::Api(s)) if s.code == 401 || s.code == 403
            )
        {
            denied = Some(start.elapsed());
        }
        if hub_forgot.is_none() {
            let show = f.dataplane_show(&hub_socket).unwrap();
            let has_b = show["peers"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == "b"));
            if !has_b {
                hub_forgot = Some(start.elapsed());
            }
        }
        if cut.is_none() && !a1.ping_once(&b1_ip) {
            cut = Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (refused, hub_forgot, cut) = (refused.unwrap(), hub_forgot.unwrap(), cut.unwrap());
    let denied = denied.unwrap();
    println!(
        "member removed: its writes refused after {:.2} s, its token refused after {:.2} s, \
         hub dataplane without it after {:.2} s, tunnel from a ended after {:.2} s",
        denied.as_secs_f64(),
        refused.as_secs_f64(),
        hub_forgot.as_secs_f64(),
        cut.as_secs_f64()
    );
    assert!(
        denied < Duration::from_secs(30)
            && refused < Duration::from_secs(30)
            && hub_forgot < Duration::from_secs(30),
        "revocation took {denied:?} (writes) / {refused:?} (token) / {hub_forgot:?} (hub dataplane)"
    );
    // b's agents still run and retry, but cannot put their Peer back.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        peers.get_opt("b").await.unwrap().is_none(),
        "the removed member's Peer came back"
    );
    // a is untouched: its own token still works.
    let as_a = f
        .hub
        .cluster
        .client_with_token(&member_token(&f, 0).await)
        .await
        .unwrap();
    Api::<Peer>::namespaced(as_a, NAMESPACE)
        .list(&ListParams::default())
        .await
        .expect("a's identity survives b's removal");
}
