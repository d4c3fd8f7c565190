//! A gateway's long-lived keys (WireGuard key and QUIC identity), kept in a Secret so that
//! every replica, and every restart, uses the same ones.
//!
//! Secret data: `wireguard.key` (base64 private key, as `fleetboard keygen` prints it),
//! `quic.key` (PEM PKCS#8) and `quic.crt` (PEM certificate). The first process to find no
//! Secret creates one; when two race, the loser's create fails with AlreadyExists and it
//! re-reads the winner's, so both end up with the same keys. A Secret that exists without
//! data (the member chart creates `fleetboard-cluster-keys` empty, so agents need no right
//! to create Secrets) is filled with an update under its resourceVersion: a racing writer
//! gets a conflict and re-reads.
//!
//! A node's own keys (its inner tunnel to the gateway) never leave the node:
//! [`load_or_create_local`] keeps them in files of the agent's state directory.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use fleetboard_dataplane::core::{PublicKey, SecretKey};
use fleetboard_dataplane::quic::{Identity, generate_identity_pem};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};

/// Secret key holding the WireGuard private key.
pub const WIREGUARD_KEY: &str = "wireguard.key";
/// Secret key holding the QUIC private key (PEM).
pub const QUIC_KEY: &str = "quic.key";
/// Secret key holding the QUIC certificate (PEM).
pub const QUIC_CERT: &str = "quic.crt";

/// Why the keys could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The API call failed.
    #[error("secret {namespace}/{name}: {source}")]
    Api {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// The error.
        source: kube::Error,
    },
    /// The Secret exists but a field is missing or malformed.
    #[error("secret {namespace}/{name}: field {field}: {problem}")]
    Invalid {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// Data key.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// No randomness or no identity could be made.
    #[error("generating keys: {0}")]
    Generate(String),
    /// Writing the QUIC files failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A gateway's keys.
#[derive(Clone)]
pub struct GatewayKeys {
    /// WireGuard private key.
    pub private_key: SecretKey,
    /// QUIC private key, PEM PKCS#8.
    pub quic_key_pem: String,
    /// QUIC certificate, PEM.
    pub quic_cert_pem: String,
    /// SHA-256 of the QUIC certificate's public key, 64 lowercase hex digits (what peers pin
    /// and what `Peer.spec.certFingerprint` holds).
    pub fingerprint: String,
}

impl std::fmt::Debug for GatewayKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayKeys")
            .field("public_key", &self.public_key_base64())
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl GatewayKeys {
    /// Fresh keys: a random WireGuard key and a self-signed QUIC identity for `quic_name`.
    pub fn generate(quic_name: &str) -> Result<Self, KeysError> {
        let mut b = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .map_err(|e| KeysError::Generate(format!("reading /dev/urandom: {e}")))?;
        let (key, cert, fp) =
            generate_identity_pem(quic_name).map_err(|e| KeysError::Generate(e.to_string()))?;
        Ok(Self {
            private_key: SecretKey::from_random_bytes(b),
            quic_key_pem: key,
            quic_cert_pem: cert,
            fingerprint: fp.to_hex(),
        })
    }

    /// The WireGuard public key.
    pub fn public_key(&self) -> PublicKey {
        self.private_key.public_key()
    }

    /// The WireGuard public key in base64 (`Peer.spec.publicKey`).
    pub fn public_key_base64(&self) -> String {
        self.public_key().to_base64()
    }

    /// Writes `quic.key` (mode 0600) and `quic.crt` into `dir`; returns (cert, key) paths,
    /// what the dataplane config's `quic.certificate` / `quic.private_key` take.
    pub fn write_quic_files(&self, dir: &Path) -> Result<(PathBuf, PathBuf), KeysError> {
        let w = |path: PathBuf, body: &str, mode: u32| -> Result<PathBuf, KeysError> {
            let err = |source| KeysError::Write {
                path: path.clone(),
                source,
            };
            std::fs::create_dir_all(dir).map_err(err)?;
            crate::atomic_file::write(&path, body.as_bytes(), mode).map_err(err)?;
            Ok(path)
        };
        let key = w(dir.join(QUIC_KEY), &self.quic_key_pem, 0o600)?;
        let cert = w(dir.join(QUIC_CERT), &self.quic_cert_pem, 0o644)?;
        Ok((cert, key))
    }

    fn to_data(&self) -> BTreeMap<String, ByteString> {
        let b = |s: &str| ByteString(s.as_bytes().to_vec());
        BTreeMap::from([
            (WIREGUARD_KEY.to_string(), b(&self.private_key.to_base64())),
            (QUIC_KEY.to_string(), b(&self.quic_key_pem)),
            (QUIC_CERT.to_string(), b(&self.quic_cert_pem)),
        ])
    }

    fn from_secret(secret: &Secret, namespace: &str, name: &str) -> Result<Self, KeysError> {
        let invalid = |field: &'static str, problem: String| KeysError::Invalid {
            namespace: namespace.into(),
            name: name.into(),
            field,
            problem,
        };
        let get = |field: &'static str| -> Result<String, KeysError> {
            let data = secret
                .data
                .as_ref()
                .and_then(|d| d.get(field))
                .ok_or_else(|| invalid(field, "missing".into()))?;
            String::from_utf8(data.0.clone()).map_err(|_| invalid(field, "not UTF-8".into()))
        };
        let private_key = SecretKey::from_base64(get(WIREGUARD_KEY)?.trim())
            .map_err(|e| invalid(WIREGUARD_KEY, e.to_string()))?;
        let quic_key_pem = get(QUIC_KEY)?;
        let quic_cert_pem = get(QUIC_CERT)?;
        let id = Identity::from_pem(&quic_cert_pem, &quic_key_pem)
            .map_err(|e| invalid(QUIC_CERT, e.to_string()))?;
        Ok(Self {
            private_key,
            quic_key_pem,
            quic_cert_pem,
            fingerprint: id.fingerprint.to_hex(),
        })
    }
}

/// Reads the keys from Secret `namespace/secret_name`, or creates it with fresh keys (QUIC
/// certificate for `quic_name`). Two racing callers end up with the same keys.
pub async fn load_or_create(
    client: kube::Client,
    namespace: &str,
    secret_name: &str,
    quic_name: &str,
) -> Result<GatewayKeys, KeysError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let api_err = |source| KeysError::Api {
        namespace: namespace.into(),
        name: secret_name.into(),
        source,
    };
    if let Some(mut s) = api.get_opt(secret_name).await.map_err(api_err)? {
        if s.data.as_ref().is_some_and(|d| !d.is_empty()) {
            return GatewayKeys::from_secret(&s, namespace, secret_name);
        }
        // Created empty (by the chart): fill it; a racing filler wins with a conflict for us.
        let keys = GatewayKeys::generate(quic_name)?;
        s.data = Some(keys.to_data());
        return match api.replace(secret_name, &PostParams::default(), &s).await {
            Ok(_) => {
                tracing::info!(secret = %secret_name, public_key = %keys.public_key_base64(), "stored new gateway keys");
                Ok(keys)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let s = api.get(secret_name).await.map_err(api_err)?;
                GatewayKeys::from_secret(&s, namespace, secret_name)
            }
            Err(e) => Err(api_err(e)),
        };
    }
    let keys = GatewayKeys::generate(quic_name)?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_string(),
                "fleetboard".to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(keys.to_data()),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = %secret_name, public_key = %keys.public_key_base64(), "created gateway keys");
            Ok(keys)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let s = api.get(secret_name).await.map_err(api_err)?;
            GatewayKeys::from_secret(&s, namespace, secret_name)
        }
        Err(e) => Err(api_err(e)),
    }
}

/// A node's own keys from `dir` (`wireguard.key`, `quic.key`, `quic.crt`), or fresh ones
/// written there (the private files mode 0600, the directory 0700). They live as long as
/// the directory: the agent pod's state volume, so a new pod makes new keys and publishes
/// the new public key on its Node.
///
/// Every file is written atomically and durably ([`crate::atomic_file`]), the WireGuard key
/// last (its presence says the set is complete). A set that cannot be read or parsed all the
/// same (a disk that lost writes) is replaced by fresh keys with a warning, as a missing one
/// is: the agent publishes the new public key, while refusing to start would only restart
/// the pod into the same refusal.
pub fn load_or_create_local(dir: &Path, quic_name: &str) -> Result<GatewayKeys, KeysError> {
    use std::os::unix::fs::PermissionsExt as _;
    let wg = dir.join(WIREGUARD_KEY);
    match read_local(dir) {
        Ok(Some(keys)) => return Ok(keys),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "the node's keys are unusable; making new ones"),
    }
    let keys = GatewayKeys::generate(quic_name)?;
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KeysError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err(dir))?;
    keys.write_quic_files(dir)?;
    crate::atomic_file::write(&wg, keys.private_key.to_base64().as_bytes(), 0o600)
        .map_err(err(&wg))?;
    tracing::info!(dir = %dir.display(), public_key = %keys.public_key_base64(), "created the node's keys");
    Ok(keys)
}

/// The complete key set in `dir`; `None` when a file is missing or unreadable.
fn read_local(dir: &Path) -> Result<Option<GatewayKeys>, KeysError> {
    let read = |p: &Path| std::fs::read_to_string(p);
    let (Ok(k), Ok(qk), Ok(qc)) = (
        read(&dir.join(WIREGUARD_KEY)),
        read(&dir.join(QUIC_KEY)),
        read(&dir.join(QUIC_CERT)),
    ) else {
        return Ok(None);
    };
    let invalid = |field: &'static str, problem: String| KeysError::Invalid {
        namespace: "(local)".into(),
        name: dir.display().to_string(),
        field,
        problem,
    };
    let private_key =
        SecretKey::from_base64(k.trim()).map_err(|e| invalid(WIREGUARD_KEY, e.to_string()))?;
    let id = Identity::from_pem(&qc, &qk).map_err(|e| invalid(QUIC_CERT, e.to_string()))?;
    Ok(Some(GatewayKeys {
        private_key,
        quic_key_pem: qk,
        quic_cert_pem: qc,
        fingerprint: id.fingerprint.to_hex(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_keys_are_created_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("fb-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let made = load_or_create_local(&dir, "node-1").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(WIREGUARD_KEY)), 0o600);
        assert_eq!(mode(&dir.join(QUIC_KEY)), 0o600);
        let again = load_or_create_local(&dir, "node-1").unwrap();
        assert_eq!(
            again.public_key(),
            made.public_key(),
            "the same keys on restart"
        );
        assert_eq!(again.fingerprint, made.fingerprint);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn torn_local_keys_are_replaced_instead_of_failing_every_start() {
        let dir = std::env::temp_dir().join(format!("fb-keys-torn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = load_or_create_local(&dir, "node-1").unwrap();
        // What a node that lost power right after the write can find: the WireGuard key
        // empty, or the certificate cut short.
        for (file, torn) in [
            (WIREGUARD_KEY, String::new()),
            (QUIC_CERT, first.quic_cert_pem[..40].to_string()),
        ] {
            std::fs::write(dir.join(file), torn).unwrap();
            let made = load_or_create_local(&dir, "node-1").unwrap();
            assert_ne!(made.public_key(), first.public_key(), "{file}: fresh keys");
            let again = load_or_create_local(&dir, "node-1").unwrap();
            assert_eq!(
                again.public_key(),
                made.public_key(),
                "{file}: kept from then on"
            );
            assert_eq!(again.fingerprint, made.fingerprint);
        }
        assert!(!dir.join(".wireguard.key.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_round_trip_through_secret_data() {
        let k = GatewayKeys::generate("hub").unwrap();
        assert_eq!(k.fingerprint.len(), 64);
        let s = Secret {
            data: Some(k.to_data()),
            ..Default::default()
        };
        let back = GatewayKeys::from_secret(&s, "ns", "n").unwrap();
        assert_eq!(back.public_key(), k.public_key());
        assert_eq!(back.fingerprint, k.fingerprint);
    }

    #[test]
    fn missing_field_is_named() {
        let k = GatewayKeys::generate("hub").unwrap();
        let mut data = k.to_data();
        data.remove(QUIC_CERT);
        let s = Secret {
            data: Some(data),
            ..Default::default()
        };
        let e = GatewayKeys::from_secret(&s, "ns", "n")
            .unwrap_err()
            .to_string();
        assert!(e.contains(QUIC_CERT) && e.contains("missing"), "{e}");
    }
}
