//! The agent's client of the hub's apiserver: a kube client from `--hub-url` + the member's token
//! (`--hub-token` inline, or `--hub-token-secret`: a Secret of the member namespace, kept in a
//! token file by [`super::token`]) + `--hub-ca-file`, or from `--hub-kubeconfig`, and a first
//! call that turns "unreachable" and "token refused" into errors naming the flag to fix.

use std::fmt;
use std::path::{Path, PathBuf};

use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::crd::peer::Peer;

/// How the agent reaches the hub.
#[derive(Debug, Clone)]
pub enum HubAccess {
    /// URL, the member's token, and the CA that signed the hub's serving certificate.
    Token {
        /// `--hub-url`, e.g. `https://198.18.0.1:6443`.
        url: String,
        /// Where the token comes from.
        token: TokenSource,
        /// `--hub-ca-file` (none: the system roots).
        ca_file: Option<PathBuf>,
    },
    /// `--hub-kubeconfig`.
    Kubeconfig(PathBuf),
}

/// Where the member's hub token comes from. Its `Debug` never shows an inline token.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `--hub-token`: the token itself (never renewed: processes and tests).
    Inline(String),
    /// `--hub-token-secret`: the name of a Secret of the member namespace (`--namespace`)
    /// whose key `token` holds it; every agent follows it, the gateway renews it.
    Secret(String),
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Inline(_) => f.write_str("Inline(<redacted>)"),
            TokenSource::Secret(name) => f.debug_tuple("Secret").field(name).finish(),
        }
    }
}

impl TokenSource {
    /// The flag that gives this token.
    pub fn flag(&self) -> &'static str {
        match self {
            TokenSource::Inline(_) => "--hub-token",
            TokenSource::Secret(_) => "--hub-token-secret",
        }
    }
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

/// Checks that `token` can be a bearer token: not empty, no whitespace (a ServiceAccount
/// token is a JWT; an HTTP header cannot carry a line break).
pub fn token_is_valid(token: &str) -> bool {
    !token.is_empty() && !token.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl HubAccess {
    /// Makes the access from the command line's hub flags: `--hub-kubeconfig` alone, or
    /// `--hub-url` with exactly one of `--hub-token` and `--hub-token-secret` (and optionally
    /// `--hub-ca-file`).
    pub fn from_flags(
        url: Option<String>,
        token: Option<String>,
        token_secret: Option<String>,
        ca_file: Option<PathBuf>,
        kubeconfig: Option<PathBuf>,
    ) -> Result<HubAccess, HubError> {
        let bad = |flag, problem: &str| {
            Err(HubError::Config {
                flag,
                problem: problem.into(),
            })
        };
        if let Some(k) = kubeconfig {
            if url.is_some() {
                return bad("--hub-url", "not with --hub-kubeconfig (give one of them)");
            }
            if token.is_some() {
                return bad(
                    "--hub-token",
                    "only with --hub-url, not with --hub-kubeconfig",
                );
            }
            if token_secret.is_some() {
                return bad(
                    "--hub-token-secret",
                    "only with --hub-url, not with --hub-kubeconfig",
                );
            }
            return Ok(HubAccess::Kubeconfig(k));
        }
        let Some(url) = url else {
            return bad(
                "--hub-url",
                "required (with --hub-token-secret or --hub-token), or --hub-kubeconfig",
            );
        };
        let token = match (token, token_secret) {
            (Some(_), Some(_)) => {
                return bad(
                    "--hub-token",
                    "give either --hub-token or --hub-token-secret, not both",
                );
            }
            (None, None) => {
                return bad(
                    "--hub-token-secret",
                    "--hub-url needs the member's token: --hub-token-secret NAME (a Secret of \
                     --namespace, key `token`) or --hub-token",
                );
            }
            (Some(t), None) => TokenSource::Inline(t),
            (None, Some(s)) if s.is_empty() => {
                return bad("--hub-token-secret", "must name a Secret");
            }
            (None, Some(s)) => TokenSource::Secret(s),
        };
        Ok(HubAccess::Token {
            url,
            token,
            ca_file,
        })
    }

    /// The token's source (none with `--hub-kubeconfig`).
    pub fn token_source(&self) -> Option<&TokenSource> {
        match self {
            HubAccess::Token { token, .. } => Some(token),
            HubAccess::Kubeconfig(_) => None,
        }
    }

    fn flag(&self) -> &'static str {
        match self {
            HubAccess::Token { .. } => "--hub-url",
            HubAccess::Kubeconfig(_) => "--hub-kubeconfig",
        }
    }

    /// The flag that gives the credentials (what to fix when the hub refuses them).
    pub fn auth_flag(&self) -> &'static str {
        match self {
            HubAccess::Token { token, .. } => token.flag(),
            HubAccess::Kubeconfig(_) => "--hub-kubeconfig",
        }
    }

    /// Builds the client (no call made yet). With [`TokenSource::Secret`], `token_file` is the
    /// file that holds the token ([`super::token`] writes it): the client rereads it (kube-rs
    /// does at least every 60 s), so a renewed token is used without a new client.
    pub async fn client(
        &self,
        token_file: Option<&Path>,
    ) -> Result<(kube::Client, String), HubError> {
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
                let user = match (token, token_file) {
                    (TokenSource::Inline(t), _) => {
                        if !token_is_valid(t) {
                            return Err(HubError::Config {
                                flag: "--hub-token",
                                problem: "must be a token without whitespace (the one \
                                          `kubectl peers join` prints)"
                                    .into(),
                            });
                        }
                        serde_json::json!({ "token": t })
                    }
                    (TokenSource::Secret(_), Some(file)) => {
                        serde_json::json!({ "tokenFile": file })
                    }
                    (TokenSource::Secret(name), None) => {
                        return Err(HubError::Config {
                            flag: "--hub-token-secret",
                            problem: format!("the token of Secret {name} was not loaded"),
                        });
                    }
                };
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
                    "users": [{ "name": "member", "user": user }],
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

    const JWT: &str = "eyJhbGciOiJub25lIn0.eyJleHAiOjE3MDAwMDM2MDB9.c2ln";

    fn flags(
        url: bool,
        token: bool,
        secret: bool,
        kubeconfig: bool,
    ) -> Result<HubAccess, HubError> {
        HubAccess::from_flags(
            url.then(|| "https://198.18.0.1:6443".into()),
            token.then(|| JWT.into()),
            secret.then(|| "fleetboard-hub-token".into()),
            None,
            kubeconfig.then(|| "/dev/null".into()),
        )
    }

    #[test]
    fn token_shape() {
        assert!(token_is_valid(JWT));
        assert!(token_is_valid("abcdef.0123456789abcdef"));
        assert!(!token_is_valid(""));
        assert!(!token_is_valid("two words"));
        assert!(!token_is_valid("line\nbreak"));
        assert!(!token_is_valid("trailing\n"));
    }

    #[test]
    fn exactly_one_token_flag_with_the_url() {
        let err = |r: Result<HubAccess, HubError>| r.unwrap_err().to_string();
        let e = err(flags(true, true, true, false));
        assert!(
            e.contains("--hub-token") && e.contains("--hub-token-secret") && e.contains("both"),
            "{e}"
        );
        let e = err(flags(true, false, false, false));
        assert!(
            e.contains("--hub-token-secret") && e.contains("--hub-token"),
            "{e}"
        );
        let e = err(flags(false, false, true, false));
        assert!(e.starts_with("--hub-url"), "{e}");
        let e = err(flags(false, true, false, true));
        assert!(e.starts_with("--hub-token:"), "{e}");
        let e = err(flags(false, false, true, true));
        assert!(e.starts_with("--hub-token-secret:"), "{e}");
        match flags(true, false, true, false).unwrap() {
            HubAccess::Token {
                token: TokenSource::Secret(s),
                ..
            } => assert_eq!(s, "fleetboard-hub-token"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            flags(true, true, false, false).unwrap(),
            HubAccess::Token {
                token: TokenSource::Inline(_),
                ..
            }
        ));
        assert!(matches!(
            flags(false, false, false, true).unwrap(),
            HubAccess::Kubeconfig(_)
        ));
        let e = err(HubAccess::from_flags(
            Some("https://h".into()),
            None,
            Some(String::new()),
            None,
            None,
        ));
        assert!(e.starts_with("--hub-token-secret"), "{e}");
    }

    #[test]
    fn debug_never_shows_an_inline_token() {
        let access = flags(true, true, false, false).unwrap();
        let shown = format!("{access:?} {:?}", access.token_source());
        assert!(!shown.contains(JWT), "{shown}");
        assert!(!shown.contains("eyJ"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
        let access = flags(true, false, true, false).unwrap();
        assert!(format!("{access:?}").contains("fleetboard-hub-token"));
    }

    #[tokio::test]
    async fn bad_token_names_the_flag_not_the_token() {
        let access = HubAccess::Token {
            url: "https://198.18.0.1:6443".into(),
            token: TokenSource::Inline("no pe".into()),
            ca_file: None,
        };
        let Err(e) = access.client(None).await else {
            panic!("a malformed token must be refused")
        };
        let e = e.to_string();
        assert!(e.contains("--hub-token") && !e.contains("no pe"), "{e}");
    }

    #[tokio::test]
    async fn a_secret_token_is_read_from_its_file() {
        let access = flags(true, false, true, false).unwrap();
        let Err(e) = access.client(None).await else {
            panic!("no token file, no client")
        };
        assert!(e.to_string().contains("--hub-token-secret"), "{e}");
        let dir = std::env::temp_dir().join(format!("fb-hub-tokenfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("hub-token");
        std::fs::write(&file, JWT).unwrap();
        let (_client, url) = access.client(Some(&file)).await.unwrap();
        assert!(url.starts_with("https://198.18.0.1:6443"), "{url}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
