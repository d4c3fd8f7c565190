//! What the clusters of a test fleet need before FleetBoard runs: the namespace, CRDs, RBAC,
//! the members' hub tokens, Node objects.

use std::path::PathBuf;

use anyhow::Context;
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use serde_json::json;

use super::{DEADLINE, NAMESPACE};
use crate::kube::Cluster;

/// The member Secret holding its hub token (the agent chart's name; agents read it, the
/// gateway renews it).
pub const HUB_TOKEN_SECRET: &str = "fleetboard-hub-token";

/// Joins member `id` to `hub` as `kubectl peers join` does; returns its first token.
pub async fn join_member(hub: &Cluster, id: &str) -> anyhow::Result<String> {
    let opts = fleetboard_control::membership::JoinOptions::new(NAMESPACE, id);
    let joined = fleetboard_control::membership::join(&hub.client(), &opts)
        .await
        .with_context(|| format!("joining member {id}"))?;
    Ok(joined.token.token)
}

pub(super) async fn create<K>(api: &Api<K>, obj: serde_json::Value) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(obj)?;
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn ensure_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    create(
        &Api::<Namespace>::all(client.clone()),
        json!({ "metadata": { "name": name } }),
    )
    .await
}

/// Installs `crds` and waits until they are served.
pub async fn install_crds(
    client: &kube::Client,
    crds: Vec<CustomResourceDefinition>,
) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        match api.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e).context(format!("creating CRD {name}")),
        }
        crate::charts::wait_established(client, &name, DEADLINE).await?;
    }
    Ok(())
}

/// The hub's install-time objects as the hub chart makes them: namespace, the members' Role
/// `fleetboard-member` and ClusterRoles `fleetboard-member-own` and `fleetboard-member-read`
/// (each member is bound to them by [`fleetboard_control::membership::join`]), and the hub's
/// service account with its Role. Returns the hub kubeconfig (service-account token).
pub async fn prepare_hub(hub: &Cluster) -> anyhow::Result<PathBuf> {
    let client = hub.client();
    ensure_namespace(&client, NAMESPACE).await?;
    create_member_roles(&client).await?;
    let sa_token = hub
        .service_account_token(NAMESPACE, "fleetboard-hub")
        .await?;
    let every = [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];
    hub.grant(
        NAMESPACE,
        "fleetboard-hub",
        json!([
            { "apiGroups": ["fleetboard.io"], "resources": ["peers", "peers/status"], "verbs": every },
            { "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "list", "watch", "create", "update"] },
            { "apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "update"] },
            { "apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create"] },
        ]),
    )
    .await?;
    hub.token_kubeconfig("fleetboard-hub", &sa_token)
}

/// A member's install-time objects: namespace, Node objects, the agent's service account
/// with its ClusterRole and Role. Returns the agent kubeconfig.
pub async fn prepare_member(member: &Cluster, nodes: &[&str]) -> anyhow::Result<PathBuf> {
    let client = member.client();
    ensure_namespace(&client, NAMESPACE).await?;
    create_nodes(&client, nodes).await?;
    let sa_token = member
        .service_account_token(NAMESPACE, "fleetboard-agent")
        .await?;
    let all = [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];
    create(
        &Api::<ClusterRole>::all(client.clone()),
        json!({
            "metadata": { "name": "fleetboard-agent" },
            "rules": [
                { "apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"] },
                { "apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"] },
                { "apiGroups": [""], "resources": ["namespaces", "services"], "verbs": ["get", "list", "watch"] },
                { "apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": all },
                { "apiGroups": ["multicluster.x-k8s.io"], "resources": ["serviceexports", "serviceexports/status", "serviceimports", "serviceimports/status"], "verbs": all },
                { "apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create"] },
            ],
        }),
    )
    .await?;
    create(
        &Api::<ClusterRoleBinding>::all(client.clone()),
        json!({
            "metadata": { "name": "fleetboard-agent" },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "fleetboard-agent" },
            "subjects": [{ "kind": "ServiceAccount", "name": "fleetboard-agent", "namespace": NAMESPACE }],
        }),
    )
    .await?;
    member
        .grant(
            NAMESPACE,
            "fleetboard-agent",
            json!([
                { "apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch", "create", "update", "patch"] },
                { "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "list", "watch", "create", "update"] },
            ]),
        )
        .await?;
    member.token_kubeconfig("fleetboard-agent", &sa_token)
}

/// The hub chart's Role and ClusterRoles that [`fleetboard_control::membership::join`] binds
/// each member to (namespace [`NAMESPACE`] must exist).
pub async fn create_member_roles(client: &kube::Client) -> anyhow::Result<()> {
    let all = [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];
    create(
        &Api::<Role>::namespaced(client.clone(), NAMESPACE),
        json!({
            "metadata": { "name": "fleetboard-member", "namespace": NAMESPACE },
            "rules": [{ "apiGroups": ["fleetboard.io"], "resources": ["peers"], "verbs": all }],
        }),
    )
    .await?;
    create(
        &Api::<ClusterRole>::all(client.clone()),
        json!({
            "metadata": { "name": "fleetboard-member-own" },
            "rules": [
                { "apiGroups": ["fleetboard.io"], "resources": ["exportedservices"], "verbs": all },
                { "apiGroups": [""], "resources": ["serviceaccounts/token"], "resourceNames": ["member"], "verbs": ["create"] },
            ],
        }),
    )
    .await?;
    create(
        &Api::<ClusterRole>::all(client.clone()),
        json!({
            "metadata": { "name": "fleetboard-member-read" },
            "rules": [{ "apiGroups": ["fleetboard.io"], "resources": ["exportedservices"], "verbs": ["get", "list", "watch"] }],
        }),
    )
    .await?;
    Ok(())
}

/// Node objects (no kubelet runs: the test plays the nodes).
pub(super) async fn create_nodes(client: &kube::Client, nodes: &[&str]) -> anyhow::Result<()> {
    for n in nodes {
        create(
            &Api::<Node>::all(client.clone()),
            json!({ "metadata": { "name": n } }),
        )
        .await?;
    }
    Ok(())
}
