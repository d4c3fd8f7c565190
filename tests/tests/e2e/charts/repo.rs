//! The charts as a user installs them: packaged into a chart repository
//! (`scripts/chart-repo.sh`) served over HTTP on the loopback address, `helm repo add`, the hub
//! install of the original FleetBoard's docs, then the member joined and installed exactly as
//! the hub's NOTES say (`kubectl peers join` prints the member's `helm install`). No kubelet here (the objects are checked); the real-node suite
//! (`kube_fleet`) runs the same commands on clusters with nodes and checks the pods.

use std::time::Duration;

use fleetboard_tests::chart_repo::ChartRepo;
use fleetboard_tests::kube::{Cluster, eventually};
use fleetboard_tests::netns::unique_token;
use fleetboard_tests::user_shell::UserShell;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

use super::{NS, args_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charts_install_from_the_chart_repository_as_the_notes_say() {
    let (hub, member) = tokio::try_join!(Cluster::start(), Cluster::start()).unwrap();
    let dir = std::env::temp_dir().join(format!("fb-chart-repo-{}", unique_token()));
    let repo = ChartRepo::start(&dir.join("repo")).unwrap();
    let user = UserShell::new(&dir.join("home")).unwrap();

    user.run(
        hub.kubeconfig(),
        &format!("helm repo add fleetboard {}", repo.url()),
    )
    .unwrap();
    let found = user
        .run(hub.kubeconfig(), "helm search repo fleetboard -o json")
        .unwrap();
    let found: Vec<serde_json::Value> = serde_json::from_str(&found).unwrap();
    for chart in ["fleetboard/fleetboard", "fleetboard/fleetboard-agent"] {
        let c = found
            .iter()
            .find(|c| c["name"] == chart)
            .unwrap_or_else(|| panic!("{chart} not in the repository: {found:?}"));
        assert_eq!(c["version"], "0.1.0", "{chart}");
    }
    // The hub install of the original FleetBoard's docs. Its tunnel CIDR there is
    // 20.112.0.0/12, a public range; the tests keep overlay addresses in 100.64.0.0/10.
    let notes = user
        .run(
            hub.kubeconfig(),
            "helm install fleetboard fleetboard/fleetboard --namespace fleetboard-system \
             --create-namespace --set tunnel.endpoint=198.18.0.10 --set tunnel.cidr=100.96.0.0/12",
        )
        .unwrap();
    assert!(
        notes.contains("kubectl peers join <member-cluster-id> -n fleetboard-system --version 0.1.0 --transport wg"),
        "{notes}"
    );
    assert!(notes.contains("tunnel CIDR 100.96.0.0/12"), "{notes}");
    user.install_member_from_notes(&notes, hub.kubeconfig(), member.kubeconfig(), "member-a")
        .unwrap();
    assert!(
        repo.served() >= 3,
        "helm fetched the index and both packages from the repository ({} files)",
        repo.served()
    );

    // The member's agents got the hub's URL and the member's own token, nothing by hand.
    let ds = Api::<DaemonSet>::namespaced(member.client(), NS)
        .get("fleetboard-agent")
        .await
        .unwrap();
    let c = serde_json::to_value(&ds.spec.unwrap().template.spec.unwrap().containers[0]).unwrap();
    let args = args_of(&c);
    assert!(
        args.contains(&format!("--hub-url={}", hub.url())),
        "{args:?}"
    );
    assert!(
        args.contains(&"--cluster-id=member-a".to_string()),
        "{args:?}"
    );
    let secrets: Api<Secret> = Api::namespaced(member.client(), NS);
    let secret = eventually(
        "the agent's hub token Secret",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async { Ok(secrets.get("fleetboard-hub-token").await.ok()) },
    )
    .await
    .unwrap();
    // The hub's API server knows that token as member-a's own identity.
    let token = String::from_utf8(secret.data.unwrap()["token"].0.clone()).unwrap();
    let as_member = hub.client_with_token(&token).await.unwrap();
    let review = Api::<SelfSubjectReview>::all(as_member)
        .create(&Default::default(), &Default::default())
        .await
        .unwrap();
    let user = review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username);
    assert_eq!(
        user.as_deref(),
        Some(fleetboard_control::membership::member_user("member-a").as_str())
    );
    let _ = std::fs::remove_dir_all(&dir);
}
