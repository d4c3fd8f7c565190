//! The replica's role as a label on its own Pod, so that the hub's Service selects the leader.
//!
//! Only the leader serves the tunnel. Steering the Service with readiness (only the leader
//! ready) would leave every standby replica not Ready for ever, and a rolling update of the
//! Deployment waits for new replicas to become Ready: with one leader it would stall. So every
//! replica is Ready while it is healthy, and the leader labels its own Pod
//! `fleetboard.io/hub-role=leader` (a standby `standby`); the chart's Service selects on that
//! label. A replica that starts labels itself `standby` before anything else, so a Pod whose
//! previous container led never keeps the leader's label past its restart.
//!
//! The label is written with server-side apply under the hub's field manager; the hub's Role
//! may `patch` Pods of its own namespace and nothing more.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};

use super::FIELD_MANAGER;

/// The label the hub's Service selects on.
pub const ROLE_LABEL: &str = "fleetboard.io/hub-role";

/// What a replica is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Serving the tunnel: the Service sends members here.
    Leader,
    /// Waiting for the Lease.
    Standby,
}

impl Role {
    /// The label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Standby => "standby",
        }
    }
}

/// Labels one Pod (this replica's) with its [`Role`].
pub struct PodRole {
    api: Api<Pod>,
    pod: String,
    current: Option<Role>,
}

impl PodRole {
    /// For Pod `pod` in `namespace`.
    pub fn new(client: kube::Client, namespace: &str, pod: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            pod: pod.to_string(),
            current: None,
        }
    }

    /// Sets the label unless it already has that value (as far as this replica wrote it).
    /// A failure is logged and retried on the next call.
    pub async fn set(&mut self, role: Role) {
        if self.current == Some(role) {
            return;
        }
        let patch = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": self.pod, "labels": { ROLE_LABEL: role.as_str() } },
        });
        match self
            .api
            .patch(
                &self.pod,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(pod = %self.pod, role = role.as_str(), "labelled this replica's pod");
                self.current = Some(role);
            }
            Err(e) => {
                tracing::warn!(pod = %self.pod, role = role.as_str(), error = %e, "labelling this replica's pod")
            }
        }
    }

    /// Whether the last write succeeded for `role`.
    pub fn is(&self, role: Role) -> bool {
        self.current == Some(role)
    }
}
