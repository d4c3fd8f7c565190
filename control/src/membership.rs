//! Per-member identity on the hub (issue 17 items 1–2): what `kubectl peers join <cluster-id>`
//! creates for a new member and `kubectl peers remove <cluster-id>` deletes.
//!
//! Each member gets a namespace of its own on the hub, `fleetboard-member-<cluster-id>`
//! (label `fleetboard.io/cluster-id`), holding
//! - the ServiceAccount `member`: the member's only identity on the hub
//!   (`system:serviceaccount:fleetboard-member-<id>:member`); its agents use short-lived
//!   TokenRequest tokens of it and renew them before they expire ([`request_token`]);
//! - its ExportedServices, bounded by a ResourceQuota (`count/exportedservices.fleetboard.io`);
//! - a RoleBinding to the hub chart's ClusterRole `fleetboard-member-own` (write exports here,
//!   request tokens for `member`);
//!
//! and two bindings outside it: a RoleBinding in the hub's shared namespace to the chart's Role
//! `fleetboard-member` (the Peers), and a ClusterRoleBinding to `fleetboard-member-read` (read
//! every member's exports). What a member may write there (its own Peer, never the hub flag, its
//! own exports) is pinned by the hub chart's ValidatingAdmissionPolicy on this identity: the
//! API server enforces it, not the agents.
//!
//! Removing a member deletes its namespace (the ServiceAccount with it: every token of it is
//! refused from then on), both bindings and its Peer (the hub drops it from its dataplane).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::crd::peer::Peer;

/// Prefix of every member's namespace on the hub.
pub const MEMBER_NAMESPACE_PREFIX: &str = "fleetboard-member-";
/// The member's ServiceAccount in its namespace.
pub const MEMBER_SERVICE_ACCOUNT: &str = "member";
/// Label on a member namespace: the member's cluster id.
pub const LABEL_CLUSTER_ID: &str = "fleetboard.io/cluster-id";
/// The hub chart's Role (shared namespace) members are bound to: their Peer.
pub const MEMBER_ROLE: &str = "fleetboard-member";
/// The hub chart's ClusterRole bound in each member namespace: its exports, its tokens.
pub const MEMBER_OWN_CLUSTER_ROLE: &str = "fleetboard-member-own";
/// The hub chart's ClusterRole bound cluster-wide: read every member's exports.
pub const MEMBER_READ_CLUSTER_ROLE: &str = "fleetboard-member-read";
/// Field manager of what join writes.
pub const FIELD_MANAGER: &str = "fleetboard.io/membership";
/// Exports a member may have at once unless join says otherwise.
pub const DEFAULT_MAX_EXPORTS: u32 = 256;
/// Lifetime of the token join prints unless told otherwise (the member installs with it; its
/// agents then renew their own).
pub const DEFAULT_JOIN_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The API server's minimum token lifetime.
pub const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(600);

/// Why a membership operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The cluster id cannot name a member.
    #[error("cluster id {id:?}: {problem}")]
    ClusterId {
        /// The id given.
        id: String,
        /// What is wrong.
        problem: String,
    },
    /// The hub chart is not installed in that namespace.
    #[error(
        "no Role {MEMBER_ROLE} in namespace {namespace} of the hub: install the hub chart there first (or pass its namespace)"
    )]
    NoHubChart {
        /// The hub namespace tried.
        namespace: String,
    },
    /// The id is the hub's own.
    #[error("cluster id {0:?} is the hub's own (its Peer has spec.isHub)")]
    HubId(String),
    /// A token lifetime out of range.
    #[error("token lifetime {0:?}: the API server accepts 10 minutes at least")]
    Lifetime(Duration),
    /// An API call failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The error.
        source: kube::Error,
    },
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> MembershipError {
    let what = what.into();
    move |source| MembershipError::Api { what, source }
}

/// The hub namespace of member `cluster_id`.
pub fn member_namespace(cluster_id: &str) -> String {
    format!("{MEMBER_NAMESPACE_PREFIX}{cluster_id}")
}

/// The user name the hub's API server gives member `cluster_id`.
pub fn member_user(cluster_id: &str) -> String {
    format!(
        "system:serviceaccount:{}:{MEMBER_SERVICE_ACCOUNT}",
        member_namespace(cluster_id)
    )
}

/// Checks that `id` can name a member: a DNS label short enough for its namespace name.
pub fn validate_cluster_id(id: &str) -> Result<(), MembershipError> {
    let bad = |problem: &str| {
        Err(MembershipError::ClusterId {
            id: id.into(),
            problem: problem.into(),
        })
    };
    let max = 63 - MEMBER_NAMESPACE_PREFIX.len();
    if id.is_empty() || id.len() > max {
        return bad(&format!("must be 1 to {max} characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        || id.starts_with('-')
        || id.ends_with('-')
    {
        return bad("must be a DNS label: lowercase letters, digits and '-', not at either end");
    }
    Ok(())
}

/// What join is asked for.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// The hub chart's namespace (the Peers).
    pub hub_namespace: String,
    /// The new member's cluster id.
    pub cluster_id: String,
    /// Lifetime of the token printed for the install.
    pub token_lifetime: Duration,
    /// Exports the member may have at once.
    pub max_exports: u32,
}

impl JoinOptions {
    /// Defaults for `cluster_id` in `hub_namespace`.
    pub fn new(hub_namespace: &str, cluster_id: &str) -> Self {
        JoinOptions {
            hub_namespace: hub_namespace.into(),
            cluster_id: cluster_id.into(),
            token_lifetime: DEFAULT_JOIN_TOKEN_LIFETIME,
            max_exports: DEFAULT_MAX_EXPORTS,
        }
    }
}

/// A token of a member's ServiceAccount (Debug shows no token).
#[derive(Clone)]
pub struct MemberToken {
    /// The bearer token (a JWT): secret, never logged.
    pub token: String,
    /// When it expires (RFC 3339).
    pub expires: String,
}

impl std::fmt::Debug for MemberToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberToken")
            .field("token", &"<redacted>")
            .field("expires", &self.expires)
            .finish()
    }
}

/// What join made.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The member's namespace on the hub.
    pub namespace: String,
    /// A token for the install.
    pub token: MemberToken,
}

/// Creates (or brings back to what it should be: join is idempotent) everything member
/// `opts.cluster_id` needs on the hub, and a fresh token for it.
pub async fn join(client: &kube::Client, opts: &JoinOptions) -> Result<Joined, MembershipError> {
    let id = opts.cluster_id.as_str();
    validate_cluster_id(id)?;
    if opts.token_lifetime < MIN_TOKEN_LIFETIME {
        return Err(MembershipError::Lifetime(opts.token_lifetime));
    }
    let hub_ns = opts.hub_namespace.as_str();
    let roles: Api<Role> = Api::namespaced(client.clone(), hub_ns);
    if roles
        .get_opt(MEMBER_ROLE)
        .await
        .map_err(api_err(format!("reading Role {hub_ns}/{MEMBER_ROLE}")))?
        .is_none()
    {
        return Err(MembershipError::NoHubChart {
            namespace: hub_ns.into(),
        });
    }
    let peers: Api<Peer> = Api::namespaced(client.clone(), hub_ns);
    if let Some(p) = peers
        .get_opt(id)
        .await
        .map_err(api_err(format!("reading Peer {hub_ns}/{id}")))?
        && p.spec.is_hub
    {
        return Err(MembershipError::HubId(id.into()));
    }
    let ns = member_namespace(id);
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let labels = json!({
        LABEL_CLUSTER_ID: id,
        "app.kubernetes.io/managed-by": "fleetboard",
    });
    let apply = |kind: &'static str, name: String| format!("applying {kind} {name}");
    Api::<Namespace>::all(client.clone())
        .patch(
            &ns,
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": { "name": ns, "labels": labels },
            })),
        )
        .await
        .map_err(api_err(apply("Namespace", ns.clone())))?;
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .patch(
            MEMBER_SERVICE_ACCOUNT,
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": { "name": MEMBER_SERVICE_ACCOUNT, "namespace": ns, "labels": labels },
                "automountServiceAccountToken": false,
            })),
        )
        .await
        .map_err(api_err(apply("ServiceAccount", format!("{ns}/member"))))?;
    Api::<ResourceQuota>::namespaced(client.clone(), &ns)
        .patch(
            MEMBER_ROLE,
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ResourceQuota",
                "metadata": { "name": MEMBER_ROLE, "namespace": ns, "labels": labels },
                "spec": { "hard": {
                    "count/exportedservices.fleetboard.io": opts.max_exports.to_string(),
                }},
            })),
        )
        .await
        .map_err(api_err(apply(
            "ResourceQuota",
            format!("{ns}/{MEMBER_ROLE}"),
        )))?;
    let subject =
        json!([{ "kind": "ServiceAccount", "name": MEMBER_SERVICE_ACCOUNT, "namespace": ns }]);
    Api::<RoleBinding>::namespaced(client.clone(), &ns)
        .patch(
            MEMBER_ROLE,
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": { "name": MEMBER_ROLE, "namespace": ns, "labels": labels },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": MEMBER_OWN_CLUSTER_ROLE },
                "subjects": subject,
            })),
        )
        .await
        .map_err(api_err(apply("RoleBinding", format!("{ns}/{MEMBER_ROLE}"))))?;
    let binding = format!("{MEMBER_ROLE}-{id}");
    Api::<RoleBinding>::namespaced(client.clone(), hub_ns)
        .patch(
            &binding,
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": { "name": binding, "namespace": hub_ns, "labels": labels },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": MEMBER_ROLE },
                "subjects": subject,
            })),
        )
        .await
        .map_err(api_err(apply("RoleBinding", format!("{hub_ns}/{binding}"))))?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(
            &binding,
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": { "name": binding, "labels": labels },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": MEMBER_READ_CLUSTER_ROLE },
                "subjects": subject,
            })),
        )
        .await
        .map_err(api_err(apply("ClusterRoleBinding", binding.clone())))?;
    let token = request_token(client, id, opts.token_lifetime).await?;
    Ok(Joined {
        namespace: ns,
        token,
    })
}

/// A new token of member `cluster_id`'s ServiceAccount, valid for `lifetime` (the API server
/// may shorten it). The member's own identity may call this for itself (its agents renew so).
pub async fn request_token(
    client: &kube::Client,
    cluster_id: &str,
    lifetime: Duration,
) -> Result<MemberToken, MembershipError> {
    if lifetime < MIN_TOKEN_LIFETIME {
        return Err(MembershipError::Lifetime(lifetime));
    }
    let ns = member_namespace(cluster_id);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(lifetime.as_secs() as i64),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create_token_request(MEMBER_SERVICE_ACCOUNT, &PostParams::default(), &request)
        .await
        .map_err(api_err(format!(
            "requesting a token for ServiceAccount {ns}/{MEMBER_SERVICE_ACCOUNT}"
        )))?;
    let status = answer.status.ok_or_else(|| MembershipError::Api {
        what: format!("the token request for {ns}/{MEMBER_SERVICE_ACCOUNT}"),
        source: kube::Error::Service("the API server answered without a token".into()),
    })?;
    Ok(MemberToken {
        token: status.token,
        expires: status.expiration_timestamp.0.to_string(),
    })
}

/// What remove deleted.
#[derive(Debug, Clone, Default)]
pub struct Removed {
    /// Kind/name of every object deleted (absent ones are left out).
    pub deleted: Vec<String>,
}

/// Revokes member `cluster_id`: its namespace (ServiceAccount, tokens, exports), its bindings
/// and its Peer. Idempotent: what is already gone is skipped.
pub async fn remove(
    client: &kube::Client,
    hub_namespace: &str,
    cluster_id: &str,
) -> Result<Removed, MembershipError> {
    validate_cluster_id(cluster_id)?;
    let peers: Api<Peer> = Api::namespaced(client.clone(), hub_namespace);
    if let Some(p) = peers.get_opt(cluster_id).await.map_err(api_err(format!(
        "reading Peer {hub_namespace}/{cluster_id}"
    )))? && p.spec.is_hub
    {
        return Err(MembershipError::HubId(cluster_id.into()));
    }
    let ns = member_namespace(cluster_id);
    let binding = format!("{MEMBER_ROLE}-{cluster_id}");
    let mut removed = Removed::default();
    let dp = DeleteParams::background();
    // The identity first: from here on its tokens are refused.
    if delete(
        &Api::<ServiceAccount>::namespaced(client.clone(), &ns),
        MEMBER_SERVICE_ACCOUNT,
        &dp,
    )
    .await?
    {
        removed
            .deleted
            .push(format!("serviceaccount/{MEMBER_SERVICE_ACCOUNT} -n {ns}"));
    }
    if delete(
        &Api::<ClusterRoleBinding>::all(client.clone()),
        &binding,
        &dp,
    )
    .await?
    {
        removed
            .deleted
            .push(format!("clusterrolebinding/{binding}"));
    }
    if delete(
        &Api::<RoleBinding>::namespaced(client.clone(), hub_namespace),
        &binding,
        &dp,
    )
    .await?
    {
        removed
            .deleted
            .push(format!("rolebinding/{binding} -n {hub_namespace}"));
    }
    // Its Peer last, once the API server no longer lets the member write Peers (authorization
    // caches follow the deleted bindings within moments): else its agents could put it back.
    wait_until_denied(client, hub_namespace, cluster_id).await?;
    if delete(&peers, cluster_id, &dp).await? {
        removed
            .deleted
            .push(format!("peer/{cluster_id} -n {hub_namespace}"));
    }
    if delete(&Api::<Namespace>::all(client.clone()), &ns, &dp).await? {
        removed.deleted.push(format!("namespace/{ns}"));
    }
    Ok(removed)
}

/// Waits (at most [`REVOKE_DEADLINE`]) until the hub's API server says member `cluster_id` may
/// not create Peers any more.
async fn wait_until_denied(
    client: &kube::Client,
    hub_namespace: &str,
    cluster_id: &str,
) -> Result<(), MembershipError> {
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {
            "user": member_user(cluster_id),
            "groups": ["system:serviceaccounts", "system:authenticated"],
            "resourceAttributes": {
                "namespace": hub_namespace, "verb": "create",
                "group": "fleetboard.io", "resource": "peers",
            },
        },
    }))
    .expect("a SubjectAccessReview");
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + REVOKE_DEADLINE;
    let mut pause = Duration::from_millis(50);
    loop {
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(api_err(
                "asking the API server whether the member is revoked",
            ))?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        if !allowed || tokio::time::Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// How long removal waits for the API server to stop authorizing the member.
pub const REVOKE_DEADLINE: Duration = Duration::from_secs(15);

async fn delete<K>(api: &Api<K>, name: &str, dp: &DeleteParams) -> Result<bool, MembershipError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, dp).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(source) => Err(MembershipError::Api {
            what: format!("deleting {name}"),
            source,
        }),
    }
}

/// The expiry (seconds since the epoch) and the issue time of a JWT, read from its payload
/// without checking its signature (the holder only plans its renewal by it).
pub fn token_times(token: &str) -> Option<(i64, i64)> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64_url_decode(payload)?;
    let claims: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_i64()?;
    let iat = claims.get("iat").and_then(|v| v.as_i64()).unwrap_or(exp);
    Some((exp, iat))
}

/// base64url without padding (RFC 7515 §2), as JWTs use it. Written here: the few lines do
/// not justify a dependency.
fn base64_url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_fit_a_namespace_name() {
        validate_cluster_id("edge-1").unwrap();
        validate_cluster_id(&"a".repeat(45)).unwrap();
        for bad in ["", "-a", "a-", "A", "a.b", &"a".repeat(46)] {
            assert!(validate_cluster_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            member_user("edge-1"),
            "system:serviceaccount:fleetboard-member-edge-1:member"
        );
    }

    #[test]
    fn jwt_times_are_read_from_the_payload() {
        // {"alg":"none"} . {"exp":1700003600,"iat":1700000000,"sub":"x"} . (no signature)
        let token =
            "eyJhbGciOiJub25lIn0.eyJleHAiOjE3MDAwMDM2MDAsImlhdCI6MTcwMDAwMDAwMCwic3ViIjoieCJ9.";
        assert_eq!(token_times(token), Some((1_700_003_600, 1_700_000_000)));
        assert_eq!(token_times("abcdef.0123456789abcdef"), None);
        assert_eq!(token_times("a.!!!.b"), None);
    }
}
