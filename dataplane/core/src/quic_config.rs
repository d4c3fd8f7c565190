//! The QUIC part of the dataplane configuration (`quic:` and `peers[].fingerprint`), checked
//! with the rest of [`crate::DataplaneConfig::validate`].

use std::path::PathBuf;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::config::{DataplaneConfig, Transport};

/// Default UDP port of the QUIC transport: beside WireGuard's 31820 (two sockets, so a hub
/// serves wg and quic members at once).
pub const DEFAULT_QUIC_PORT: u16 = 31821;
/// Default underlay MTU (Ethernet).
pub const DEFAULT_UNDERLAY_MTU: u16 = 1500;

/// Settings of the QUIC transport; only needed when a peer uses `transport: quic`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuicSettings {
    /// UDP port of the QUIC endpoint (0 = any free port).
    #[serde(default = "default_port")]
    pub listen_port: u16,
    /// PEM certificate chain of this gateway (`fleetboard quic-identity`).
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    /// PEM PKCS#8 private key of this gateway.
    #[serde(default)]
    pub private_key: Option<PathBuf>,
    /// PEM cluster-set CA certificate: peers with a certificate it issued for their `name`
    /// are accepted without a pinned `fingerprint`.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// MTU of the underlay interface: sets QUIC's initial MTU and the tunnel packet limit.
    #[serde(default = "default_underlay_mtu")]
    pub underlay_mtu: u16,
    /// Probe the path (PLPMTUD) instead of trusting `underlay_mtu`. Off by default: its
    /// black-hole fallback drops a connection to 1200 bytes after a few lossy bursts of large
    /// packets (a busy start is enough) for a minute or more, below the tunnel MTU the TUN and
    /// the MSS clamp promised. Turn it on when a path between gateways is narrower than their
    /// interfaces and `underlay_mtu` cannot say so; too-big packets then get ICMP errors.
    #[serde(default)]
    pub path_mtu_discovery: bool,
}

fn default_port() -> u16 {
    DEFAULT_QUIC_PORT
}
fn default_underlay_mtu() -> u16 {
    DEFAULT_UNDERLAY_MTU
}

impl Default for QuicSettings {
    fn default() -> Self {
        Self {
            listen_port: DEFAULT_QUIC_PORT,
            certificate: None,
            private_key: None,
            ca: None,
            underlay_mtu: DEFAULT_UNDERLAY_MTU,
            path_mtu_discovery: false,
        }
    }
}

/// Whether a pinned fingerprint string is SHA-256 in base64 (44 chars) or hex (64 digits).
pub fn fingerprint_is_valid(s: &str) -> bool {
    let s = s.trim();
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return true;
    }
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .is_ok_and(|b| b.len() == 32)
}

/// Whether `name` can be a certificate DNS name (letters, digits, '-', '.'; labels 1..=63).
pub fn name_is_dns(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Adds the QUIC problems of `c` to `err(field, problem)`.
pub(crate) fn validate(c: &DataplaneConfig, err: &mut impl FnMut(String, String)) {
    let mut uses_quic = false;
    for (i, p) in c.peers.iter().enumerate() {
        if let Some(fp) = &p.fingerprint
            && !fingerprint_is_valid(fp)
        {
            err(
                format!("peers[{i}].fingerprint"),
                "must be the SHA-256 of the peer's public key, base64 (44 chars) or hex (64)"
                    .into(),
            );
        }
        if p.transport_or(c.transport) != Transport::Quic {
            continue;
        }
        uses_quic = true;
        if p.fingerprint.is_none() && c.quic.ca.is_none() {
            err(
                format!("peers[{i}].fingerprint"),
                "a quic peer needs a pinned fingerprint (or set quic.ca)".into(),
            );
        }
        if p.fingerprint.is_none()
            && c.quic.ca.is_some()
            && !p.name.as_deref().is_some_and(name_is_dns)
        {
            err(
                format!("peers[{i}].name"),
                "a quic peer authenticated by quic.ca needs the DNS name its certificate carries"
                    .into(),
            );
        }
    }
    if !uses_quic {
        return;
    }
    if c.quic.certificate.is_none() {
        err(
            "quic.certificate".into(),
            "required when a peer uses transport quic".into(),
        );
    }
    if c.quic.private_key.is_none() {
        err(
            "quic.private_key".into(),
            "required when a peer uses transport quic".into(),
        );
    }
    if c.quic.listen_port != 0 && c.quic.listen_port == c.listen_port {
        err(
            "quic.listen_port".into(),
            format!("{} is already the WireGuard listen_port", c.listen_port),
        );
    }
    // 1280 (IPv6 minimum) + 86 (QUIC over IPv6).
    if c.quic.underlay_mtu < 1366 {
        err(
            "quic.underlay_mtu".into(),
            format!(
                "{} is below 1366, the smallest that carries 1280-byte packets",
                c.quic.underlay_mtu
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml_peers: &str, quic: &str) -> DataplaneConfig {
        let json = format!(
            r#"{{"interface": {{"addresses": ["100.64.1.1/10"]}},
                "private_key": "{}",
                "peers": [{yaml_peers}], "quic": {{{quic}}}}}"#,
            base64::engine::general_purpose::STANDARD.encode([7u8; 32])
        );
        serde_json::from_str(&json).unwrap()
    }

    fn fields(c: &DataplaneConfig) -> Vec<String> {
        c.validate()
            .err()
            .map(|e| e.0.into_iter().map(|f| f.field).collect())
            .unwrap_or_default()
    }

    #[test]
    fn quic_config_errors_name_the_field() {
        let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        let quic_peer = format!(r#"{{"public_key": "{key}", "transport": "quic"}}"#);
        let c = config(&quic_peer, "");
        assert_eq!(
            fields(&c),
            [
                "peers[0].fingerprint",
                "quic.certificate",
                "quic.private_key"
            ]
        );
        let fp = "ab".repeat(32);
        let pinned =
            format!(r#"{{"public_key": "{key}", "transport": "quic", "fingerprint": "{fp}"}}"#);
        let ok = config(&pinned, r#""certificate": "/c", "private_key": "/k""#);
        assert_eq!(fields(&ok), Vec::<String>::new());
        assert_eq!(ok.quic.listen_port, DEFAULT_QUIC_PORT);
        let bad_fp = pinned.replace(&fp, "nope");
        assert_eq!(
            fields(&config(
                &bad_fp,
                r#""certificate": "/c", "private_key": "/k""#
            )),
            ["peers[0].fingerprint"]
        );
        let same_port = config(
            &pinned,
            r#""certificate": "/c", "private_key": "/k", "listen_port": 31820"#,
        );
        assert_eq!(fields(&same_port), ["quic.listen_port"]);
        let ca_unnamed = config(
            &quic_peer,
            r#""certificate": "/c", "private_key": "/k", "ca": "/ca""#,
        );
        assert_eq!(fields(&ca_unnamed), ["peers[0].name"]);
        // wg-only configs need nothing of this.
        let wg = format!(r#"{{"public_key": "{key}"}}"#);
        assert_eq!(fields(&config(&wg, "")), Vec::<String>::new());
    }

    #[test]
    fn fingerprints_and_names() {
        assert!(fingerprint_is_valid(&"ab".repeat(32)));
        assert!(fingerprint_is_valid(
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        ));
        assert!(!fingerprint_is_valid("47DEQpj8HBSa"));
        assert!(!fingerprint_is_valid(&"zz".repeat(32)));
        assert!(name_is_dns("gw-a"));
        assert!(name_is_dns("hub.cluster-1"));
        assert!(!name_is_dns("gw a"));
        assert!(!name_is_dns("-gw"));
        assert!(!name_is_dns(""));
    }
}
