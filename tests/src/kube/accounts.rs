//! Service accounts, tokens and token-authenticated clients of a [`Cluster`].

use std::path::PathBuf;

use anyhow::Context;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ObjectMeta, PostParams};

use super::{Cluster, TOKEN_SECONDS, client_from_kubeconfig, create_if_missing, write_kubeconfig};
use crate::netns::unique_token;

impl Cluster {
    /// Creates (if missing) namespace `namespace` and service account `name` in it, and mints
    /// a token for it with the TokenRequest API. Grant it rights with Roles/RoleBindings
    /// through [`Cluster::client`].
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<String> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        create_if_missing(&namespaces, &ns).await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        create_if_missing(&accounts, &sa).await?;
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(TOKEN_SECONDS),
                bound_object_ref: None,
            },
            ..Default::default()
        };
        let answer = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("TokenRequest for {namespace}/{name}"))?;
        answer
            .status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .context("TokenRequest answered without a token")
    }

    /// Grants service account `namespace/service_account` the RBAC `rules` (a JSON array of
    /// PolicyRules, e.g. `[{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]`)
    /// in `namespace`, with a Role and a RoleBinding both named after the account.
    pub async fn grant(
        &self,
        namespace: &str,
        service_account: &str,
        rules: serde_json::Value,
    ) -> anyhow::Result<()> {
        let role: Role = serde_json::from_value(serde_json::json!({
            "metadata": { "name": service_account, "namespace": namespace },
            "rules": rules,
        }))
        .context("rules are not a list of PolicyRules")?;
        let binding: RoleBinding = serde_json::from_value(serde_json::json!({
            "metadata": { "name": service_account, "namespace": namespace },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": service_account },
            "subjects": [{ "kind": "ServiceAccount", "name": service_account, "namespace": namespace }],
        }))?;
        Api::<Role>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &role)
            .await
            .with_context(|| format!("creating Role {namespace}/{service_account}"))?;
        Api::<RoleBinding>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &binding)
            .await
            .with_context(|| format!("creating RoleBinding {namespace}/{service_account}"))?;
        Ok(())
    }

    /// Writes `<dir>/<file_stem>.kubeconfig` that authenticates with `token` against
    /// [`Cluster::internal_url`] (what a component in the test's namespaces uses).
    pub fn token_kubeconfig(&self, file_stem: &str, token: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("{file_stem}.kubeconfig"));
        write_kubeconfig(
            &path,
            &self.internal_url,
            &self.pki.ca_cert,
            serde_json::json!({ "token": token }),
        )?;
        Ok(path)
    }

    /// A kube-rs client that authenticates with `token` (reaching [`Cluster::url`]).
    pub async fn client_with_token(&self, token: &str) -> anyhow::Result<kube::Client> {
        let path = self
            .dir
            .join(format!("token-{}.kubeconfig", unique_token()));
        write_kubeconfig(
            &path,
            &self.url,
            &self.pki.ca_cert,
            serde_json::json!({ "token": token }),
        )?;
        client_from_kubeconfig(&path).await
    }
}
