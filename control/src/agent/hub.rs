//! The connection to the hub's apiserver: a kube client from `--hub-url` + `--hub-token`
//! (a bootstrap token) + `--hub-ca-file`, or from `--hub-kubeconfig`, and a first call that
//! turns "unreachable" and "token refused" into errors naming the flag to fix.

use std::path::PathBuf;

use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::crd::peer::Peer;

/// How the agent reaches the hub.
#[derive(Debug, Clone)]
pub enum HubAccess {
    /// URL, bootstrap token, and the CA that signed the hub's serving certificate.
    Token {
        /// `--hub-url`, e.g. `https://198.18.0.1:6443`.
        url: String,
        /// `--hub-token`, `<id>.<secret>`.
        token: String,
        /// `--hub-ca-file` (none: the system roots).
        ca_file: Option<PathBuf>,
    },
    /// `--hub-kubeconfig`.
    Kubeconfig(PathBuf),
}

/// Why the hub cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The flags do not make a client.
    #[error("{flag}: {problem}")]
    Config {
        /// The flag to fix.
        flag: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The hub did not answer.
    #[error("hub unreachable at {url} (check {flag}): {source}")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// The flag to fix.
        flag: &'static str,
        /// The error.
        source: kube::Error,
    },
    /// The hub answered 401/403.
    #[error("hub at {url} refused the credentials ({flag}): {message}")]
    Refused {
        /// The URL tried.
        url: String,
        /// The flag to fix.
        flag: &'static str,
        /// The apiserver's message.
        message: String,
    },
    /// The Peer CRD is not installed in the hub.
    #[error("hub at {url} has no Peer CRD (peers.fleetboard.io): install the hub chart first")]
    NoCrd {
        /// The URL tried.
        url: String,
    },
}

/// Checks the shape of a bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`).
pub fn token_is_valid(token: &str) -> bool {
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    matches!(token.split_once('.'), Some((id, secret)) if ok(id, 6) && ok(secret, 16))
}

impl HubAccess {
    fn flag(&self) -> &'static str {
        match self {
            HubAccess::Token { .. } => "--hub-url",
            HubAccess::Kubeconfig(_) => "--hub-kubeconfig",
        }
    }

    fn auth_flag(&self) -> &'static str {
        match self {
            HubAccess::Token { .. } => "--hub-token",
            HubAccess::Kubeconfig(_) => "--hub-kubeconfig",
        }
    }

    /// Builds the client (no call made yet).
    pub async fn client(&self) -> Result<(kube::Client, String), HubError> {
        let kubeconfig = match self {
            HubAccess::Kubeconfig(path) => {
                Kubeconfig::read_from(path).map_err(|e| HubError::Config {
                    flag: "--hub-kubeconfig",
                    problem: format!("reading {}: {e}", path.display()),
                })?
            }
            HubAccess::Token {
                url,
                token,
                ca_file,
            } => {
                if !token_is_valid(token) {
                    return Err(HubError::Config {
                        flag: "--hub-token",
                        problem: "must be a bootstrap token <6 [a-z0-9]>.<16 [a-z0-9]>".into(),
                    });
                }
                if let Some(ca) = ca_file
                    && !ca.exists()
                {
                    return Err(HubError::Config {
                        flag: "--hub-ca-file",
                        problem: format!("{} does not exist", ca.display()),
                    });
                }
                let mut cluster = serde_json::json!({ "server": url });
                if let Some(ca) = ca_file {
                    cluster["certificate-authority"] = serde_json::json!(ca);
                }
                let doc = serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{ "name": "hub", "cluster": cluster }],
                    "users": [{ "name": "member", "user": { "token": token } }],
                    "contexts": [{ "name": "hub", "context": { "cluster": "hub", "user": "member" } }],
                    "current-context": "hub",
                });
                serde_json::from_value(doc).map_err(|e| HubError::Config {
                    flag: "--hub-url",
                    problem: e.to_string(),
                })?
            }
        };
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| HubError::Config {
                    flag: self.flag(),
                    problem: e.to_string(),
                })?;
        let url = config.cluster_url.to_string();
        let client = kube::Client::try_from(config).map_err(|e| HubError::Config {
            flag: self.flag(),
            problem: e.to_string(),
        })?;
        Ok((client, url))
    }

    /// Lists Peers once: proves the hub answers, accepts the credentials and has the CRD.
    pub async fn check(
        &self,
        client: &kube::Client,
        url: &str,
        namespace: &str,
    ) -> Result<(), HubError> {
        let api: Api<Peer> = Api::namespaced(client.clone(), namespace);
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 401 || s.code == 403 => Err(HubError::Refused {
                url: url.to_string(),
                flag: self.auth_flag(),
                message: s.message,
            }),
            Err(kube::Error::Api(s)) if s.code == 404 => Err(HubError::NoCrd {
                url: url.to_string(),
            }),
            Err(e) => Err(HubError::Unreachable {
                url: url.to_string(),
                flag: self.flag(),
                source: e,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_token_shape() {
        assert!(token_is_valid("abcdef.0123456789abcdef"));
        assert!(!token_is_valid("abcdef.0123456789ABCDEF"));
        assert!(!token_is_valid("abcde.0123456789abcdef"));
        assert!(!token_is_valid("abcdef0123456789abcdef"));
    }

    #[tokio::test]
    async fn bad_token_names_the_flag() {
        let access = HubAccess::Token {
            url: "https://198.18.0.1:6443".into(),
            token: "nope".into(),
            ca_file: None,
        };
        let Err(e) = access.client().await else {
            panic!("a malformed token must be refused")
        };
        let e = e.to_string();
        assert!(e.contains("--hub-token"), "{e}");
    }
}
