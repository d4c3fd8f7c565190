//! `kubectl peers join <cluster-id>`: the member's own identity on the hub
//! ([`membership::join`]) and the `helm install` to run against the member cluster.

use std::io::Write;

use anyhow::Context;
use fleetboard_control::crd::peer::{Peer, Transport};
use fleetboard_control::membership::{self, JoinOptions};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use crate::cli::{JoinArgs, JoinOutput, check_hub_url, format_duration};
use crate::fetch::{self, Target};
use crate::helm::Install;

/// The `-o json` document.
#[derive(Debug, Serialize)]
pub struct JoinDocument {
    #[serde(rename = "clusterId")]
    pub cluster_id: String,
    /// The member's namespace on the hub.
    pub namespace: String,
    /// The member's user name on the hub.
    pub user: String,
    /// When the token expires (RFC 3339).
    pub expires: String,
    /// The token (secret).
    pub token: String,
    #[serde(rename = "hubURL")]
    pub hub_url: String,
    /// base64 PEM of the hub's CA, null when the kubeconfig has none.
    #[serde(rename = "caData")]
    pub ca_data: Option<String>,
    /// helm's argv, unquoted.
    pub helm: Vec<String>,
}

/// Runs `join`: prints the member's install to stdout, what was made to stderr.
pub async fn run(target: &Target, args: &JoinArgs) -> anyhow::Result<()> {
    let hub = fetch::connect(target).await?;
    let hub_url = match &args.hub_url {
        Some(url) => url.clone(),
        None => {
            let server = hub.cluster.server.clone().unwrap_or_default();
            check_hub_url(&server).map_err(|problem| {
                anyhow::anyhow!(
                    "the kubeconfig's server {problem}: members need the hub's https URL; \
                     pass --hub-url"
                )
            })?;
            server
        }
    };
    let ca_data = ca_data(&hub.cluster)?;
    // Before anything is created: a hub that cannot be read fails here, with nothing made.
    let transport = match args.transport {
        Some(t) => t.into(),
        None => hub_transport(&fetch::list_peers_of(&hub, &target.namespace).await?),
    };
    let opts = JoinOptions {
        token_lifetime: args.token_ttl,
        max_exports: args.max_exports,
        ..JoinOptions::new(&target.namespace, &args.cluster_id)
    };
    let joined = membership::join(&hub.client, &opts)
        .await
        .map_err(|e| fetch::explain_membership(e, &hub.url))?;
    let install = Install {
        chart: &args.chart,
        version: args.chart_version.as_deref(),
        cluster_id: &args.cluster_id,
        hub_url: &hub_url,
        token: &joined.token.token,
        ca_data: ca_data.as_deref(),
        hub_namespace: &target.namespace,
        transport: match transport {
            Transport::Wg => "wg",
            Transport::Quic => "quic",
        },
    };
    let now = Timestamp::now().as_second();
    for warning in warnings(&hub_url, ca_data.is_some(), args.hub_url.is_some()) {
        eprintln!("warning: {warning}");
    }
    eprintln!("{}", note(&args.cluster_id, &joined, args.token_ttl, now));
    let text = match args.output {
        JoinOutput::Text => install.text(),
        JoinOutput::Json => {
            let doc = JoinDocument {
                cluster_id: args.cluster_id.clone(),
                namespace: joined.namespace.clone(),
                user: membership::member_user(&args.cluster_id),
                expires: joined.token.expires.clone(),
                token: joined.token.token.clone(),
                hub_url: hub_url.clone(),
                ca_data: ca_data.clone(),
                helm: install.argv(),
            };
            let mut text = serde_json::to_string_pretty(&doc)?;
            text.push('\n');
            text
        }
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// The hub's transport (its Peer has `spec.isHub`), wg when it has no Peer yet.
fn hub_transport(peers: &[Peer]) -> Transport {
    peers
        .iter()
        .find(|p| p.spec.is_hub)
        .map(|p| p.spec.transport)
        .unwrap_or(Transport::Wg)
}

/// The stderr line: what was made, when the token expires, that it is a secret.
fn note(
    cluster_id: &str,
    joined: &membership::Joined,
    asked: std::time::Duration,
    now: i64,
) -> String {
    let left = joined
        .token
        .expires
        .parse::<Timestamp>()
        .ok()
        // To the minute: the request took a moment.
        .map(|t| {
            std::time::Duration::from_secs(((t.as_second() - now).max(0) as u64 + 30) / 60 * 60)
        });
    let when = match left {
        // The API server may cap token lifetimes (--service-account-max-token-expiration).
        Some(d) if d + std::time::Duration::from_secs(60) < asked => format!(
            " (in {}: the API server shortened the {} asked for)",
            format_duration(d),
            format_duration(asked)
        ),
        Some(d) => format!(" (in {})", format_duration(d)),
        None => String::new(),
    };
    format!(
        "Member {cluster_id} joined: namespace {} on the hub with its identity {}; its token \
         expires {}{when}. The token is a secret: share it only with whoever installs {cluster_id}.",
        joined.namespace,
        membership::member_user(cluster_id),
        joined.token.expires,
    )
}

/// Things that make the printed install unlikely to work as is.
fn warnings(hub_url: &str, has_ca: bool, url_given: bool) -> Vec<String> {
    let mut w = Vec::new();
    if !url_given && is_loopback(hub_url) {
        w.push(format!(
            "the hub URL {hub_url} comes from the kubeconfig and is a loopback address: the \
             member cannot reach it; pass --hub-url with the address members reach the hub at"
        ));
    }
    if !has_ca {
        w.push(
            "the kubeconfig has no certificate authority for the hub: the member will trust only \
             the system roots (hub.caData left out)"
                .into(),
        );
    }
    w
}

/// True when the URL's host is `localhost`, 127.0.0.0/8 or `::1`.
fn is_loopback(url: &str) -> bool {
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// base64 of the hub CA's PEM from the kubeconfig's cluster: its certificate-authority-data
/// as is, else its certificate-authority file encoded; None when it has neither.
fn ca_data(cluster: &kube::config::Cluster) -> anyhow::Result<Option<String>> {
    if let Some(data) = &cluster.certificate_authority_data {
        let data: String = data.chars().filter(|c| !c.is_whitespace()).collect();
        if !data.is_empty() {
            return Ok(Some(data));
        }
    }
    match &cluster.certificate_authority {
        Some(path) if !path.is_empty() => {
            let pem = std::fs::read(path).with_context(|| {
                format!(
                    "reading the hub's CA {path} (the kubeconfig cluster's certificate-authority)"
                )
            })?;
            Ok(Some(base64(&pem)))
        }
        _ => Ok(None),
    }
}

/// Standard base64 with padding (RFC 4648 §4). A few lines here rather than a dependency.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn ca_from_data_or_file() {
        let mut cluster = kube::config::Cluster {
            certificate_authority_data: Some("TFMw\nLS0t ".into()),
            ..Default::default()
        };
        assert_eq!(ca_data(&cluster).unwrap().as_deref(), Some("TFMwLS0t"));
        let dir = std::env::temp_dir().join(format!("kubectl-peers-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ca.crt");
        std::fs::write(&file, "-----BEGIN CERTIFICATE-----\n").unwrap();
        cluster.certificate_authority_data = None;
        cluster.certificate_authority = Some(file.to_string_lossy().into_owned());
        assert_eq!(
            ca_data(&cluster).unwrap().as_deref(),
            Some("LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==")
        );
        cluster.certificate_authority = Some(dir.join("missing").to_string_lossy().into_owned());
        let err = format!("{:#}", ca_data(&cluster).unwrap_err());
        assert!(err.contains("certificate-authority"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(ca_data(&kube::config::Cluster::default()).unwrap(), None);
    }

    #[test]
    fn transport_from_the_hub_peer_else_wg() {
        let peer = |v| serde_json::from_value::<Peer>(v).unwrap();
        let member =
            peer(json!({"metadata": {"name": "a"}, "spec": {"clusterId": "a", "transport": "wg"}}));
        let hub = peer(json!({"metadata": {"name": "h"},
            "spec": {"clusterId": "h", "isHub": true, "transport": "quic"}}));
        assert_eq!(hub_transport(&[member.clone(), hub]), Transport::Quic);
        assert_eq!(hub_transport(&[member]), Transport::Wg);
        assert_eq!(hub_transport(&[]), Transport::Wg);
    }

    #[test]
    fn loopback_urls_are_flagged() {
        for url in [
            "https://127.0.0.1:6443",
            "https://localhost",
            "https://[::1]:6443/x",
        ] {
            assert!(is_loopback(url), "{url}");
        }
        for url in [
            "https://10.0.0.1:6443",
            "https://hub.example.com",
            "https://[fd00::1]:6443",
        ] {
            assert!(!is_loopback(url), "{url}");
        }
        assert_eq!(warnings("https://127.0.0.1:6443", true, false).len(), 1);
        assert!(warnings("https://127.0.0.1:6443", true, true).is_empty());
        assert_eq!(warnings("https://h", false, true).len(), 1);
    }

    #[test]
    fn the_note_names_the_identity_the_expiry_and_the_secret() {
        let joined = membership::Joined {
            namespace: "fleetboard-member-edge-1".into(),
            token: membership::MemberToken {
                token: "secret".into(),
                expires: "2026-01-02T00:00:00Z".into(),
            },
        };
        let now = 1_767_225_602; // 2026-01-01T00:00:02Z: rounded to the minute
        let day = std::time::Duration::from_secs(86_400);
        let text = note("edge-1", &joined, day, now);
        assert!(!text.contains('\n'), "one line: {text}");
        assert!(
            text.contains("namespace fleetboard-member-edge-1"),
            "{text}"
        );
        assert!(
            text.contains("system:serviceaccount:fleetboard-member-edge-1:member"),
            "{text}"
        );
        assert!(
            text.contains("expires 2026-01-02T00:00:00Z (in 1d)"),
            "{text}"
        );
        assert!(
            text.contains("secret") && !text.contains("\"secret\""),
            "{text}"
        );
        let text = note("edge-1", &joined, 7 * day, now);
        assert!(text.contains("shortened the 7d asked for"), "{text}");
    }

    #[test]
    fn json_document_keys() {
        let doc = JoinDocument {
            cluster_id: "edge-1".into(),
            namespace: "fleetboard-member-edge-1".into(),
            user: "u".into(),
            expires: "e".into(),
            token: "t".into(),
            hub_url: "https://h".into(),
            ca_data: None,
            helm: vec!["helm".into()],
        };
        let v = serde_json::to_value(&doc).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        let mut want = [
            "clusterId",
            "namespace",
            "user",
            "expires",
            "token",
            "hubURL",
            "caData",
            "helm",
        ];
        want.sort();
        assert_eq!(keys, want);
        assert_eq!(v["caData"], json!(null));
    }
}
