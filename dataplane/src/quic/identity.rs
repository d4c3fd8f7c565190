//! Gateway identities for the QUIC transport: key pair + certificate, SPKI fingerprints, and
//! the cluster-set CA that can issue gateway certificates.
//!
//! A **fingerprint** is the SHA-256 digest of the certificate's DER `SubjectPublicKeyInfo`
//! (the same value as `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der |
//! openssl dgst -sha256`). It is written as standard base64 with padding (44 characters,
//! like a WireGuard key); [`Fingerprint::from_str`] also accepts 64 hex digits. Pinning the
//! public key rather than the certificate means a gateway can renew its certificate without
//! its peers' configuration changing.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Common name of every cluster-set CA certificate; issued certificates name it as issuer.
const CA_COMMON_NAME: &str = "FleetBoard cluster-set CA";

/// Errors while creating, loading or parsing identities.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The certificate PEM held no certificate or was malformed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The private key PEM held no key or was malformed.
    #[error("private key: {0}")]
    PrivateKey(String),
    /// rcgen could not create the key or certificate.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A fingerprint string was neither 44-char base64 nor 64 hex digits of 32 bytes.
    #[error("fingerprint {0:?}: expected base64 or hex of 32 bytes (SHA-256 of the SPKI)")]
    Fingerprint(String),
    /// A gateway name cannot be used as a certificate DNS name.
    #[error("gateway name {0:?}: must be a DNS label like `cluster-a` (letters, digits, '-', '.')")]
    Name(String),
}

/// SHA-256 of a certificate's DER SubjectPublicKeyInfo: the pinned identity of a peer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Fingerprint of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }

    /// Fingerprint of the public key in a DER certificate.
    pub fn of_cert(cert: &CertificateDer<'_>) -> Result<Self, IdentityError> {
        let parsed = webpki::EndEntityCert::try_from(cert)
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        Ok(Self::of_spki(parsed.subject_public_key_info().as_ref()))
    }

    /// Lower-case hex form (64 digits).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE64.encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || IdentityError::Fingerprint(s.to_owned());
        let bytes = if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| bad())?
        } else {
            BASE64.decode(s).map_err(|_| bad())?
        };
        let arr: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(Self(arr))
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A gateway's TLS identity: its certificate chain (leaf first) and private key.
#[derive(Debug)]
pub struct Identity {
    /// Certificate chain, leaf first (a CA-issued leaf may be followed by the CA).
    pub chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 private key of the leaf.
    pub key: PrivatePkcs8KeyDer<'static>,
    /// Fingerprint of the leaf's public key.
    pub fingerprint: Fingerprint,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            fingerprint: self.fingerprint,
        }
    }
}

fn check_name(name: &str) -> Result<(), IdentityError> {
    rustls_pki_types::DnsName::try_from(name)
        .map(|_| ())
        .map_err(|_| IdentityError::Name(name.to_owned()))
}

fn leaf_params(name: &str) -> Result<CertificateParams, IdentityError> {
    check_name(name)?;
    let mut params = CertificateParams::new(vec![name.to_owned()])?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

impl Identity {
    /// A new ECDSA P-256 key and a self-signed certificate for gateway `name` (the name is the
    /// certificate's DNS SAN and common name; it does not expire in practice: pins are keys).
    pub fn generate(name: &str) -> Result<Self, IdentityError> {
        let params = leaf_params(name)?;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Self::from_parts(vec![cert.der().clone()], key.serialize_der())
    }

    fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key_pkcs8: Vec<u8>,
    ) -> Result<Self, IdentityError> {
        let leaf = chain
            .first()
            .ok_or_else(|| IdentityError::Certificate("no certificate".into()))?;
        let fingerprint = Fingerprint::of_cert(leaf)?;
        Ok(Self {
            chain,
            key: PrivatePkcs8KeyDer::from(key_pkcs8),
            fingerprint,
        })
    }

    /// Loads an identity from PEM text: a certificate chain (leaf first) and a PKCS#8 key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, IdentityError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        if chain.is_empty() {
            return Err(IdentityError::Certificate("no CERTIFICATE block".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| IdentityError::PrivateKey(e.to_string()))?;
        let PrivateKeyDer::Pkcs8(pkcs8) = key else {
            return Err(IdentityError::PrivateKey(
                "expected a PKCS#8 `PRIVATE KEY` block".into(),
            ));
        };
        Self::from_parts(chain, pkcs8.secret_pkcs8_der().to_vec())
    }

    /// The certificate chain as PEM text.
    pub fn cert_pem(&self) -> String {
        self.chain.iter().map(|c| pem("CERTIFICATE", c)).collect()
    }

    /// The private key as PKCS#8 PEM text (`PRIVATE KEY`).
    pub fn key_pem(&self) -> String {
        pem("PRIVATE KEY", self.key.secret_pkcs8_der())
    }

    /// A secret derived from the private key, stable across restarts: keys the QUIC
    /// stateless-reset tokens so a restarted gateway can reset its peers' stale connections.
    pub(crate) fn reset_secret(&self) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"fleetboard quic stateless reset v1\0");
        ctx.update(self.key.secret_pkcs8_der());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }
}

fn pem(tag: &str, der: &[u8]) -> String {
    let b64 = BASE64.encode(der);
    let mut out = format!("-----BEGIN {tag}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {tag}-----\n"));
    out
}

/// Generates a gateway identity for the `fleetboard` CLI: returns `(key_pem, cert_pem,
/// fingerprint)`; the fingerprint is what the peers' `fingerprint` field pins.
pub fn generate_identity_pem(name: &str) -> Result<(String, String, Fingerprint), IdentityError> {
    let id = Identity::generate(name)?;
    Ok((id.key_pem(), id.cert_pem(), id.fingerprint))
}

/// The cluster-set CA: the hub holds it and issues gateway certificates; gateways that trust
/// it accept any peer whose certificate it signed for that peer's name.
pub struct ClusterCa {
    cert: CertificateDer<'static>,
    key: KeyPair,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

fn ca_params() -> Result<CertificateParams, IdentityError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

impl ClusterCa {
    /// A new CA key and self-signed CA certificate.
    pub fn generate() -> Result<Self, IdentityError> {
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        Ok(Self {
            cert: cert.der().clone(),
            key,
        })
    }

    /// Loads a CA created by [`ClusterCa::generate`] from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, IdentityError> {
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        let key =
            KeyPair::from_pem(key_pem).map_err(|e| IdentityError::PrivateKey(e.to_string()))?;
        Ok(Self { cert, key })
    }

    /// The CA certificate (DER): what gateways configure as `ca`.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The CA certificate as PEM.
    pub fn cert_pem(&self) -> String {
        pem("CERTIFICATE", &self.cert)
    }

    /// The CA private key as PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a fresh key and a certificate for gateway `name`, signed by this CA.
    pub fn issue(&self, name: &str) -> Result<Identity, IdentityError> {
        let key = KeyPair::generate()?;
        let issuer = Issuer::new(ca_params()?, &self.key);
        let cert = leaf_params(name)?.signed_by(&key, &issuer)?;
        Identity::from_parts(vec![cert.der().clone()], key.serialize_der())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_round_trips_base64_and_hex() {
        let id = Identity::generate("gw-a").unwrap();
        let b64 = id.fingerprint.to_string();
        assert_eq!(b64.len(), 44);
        assert_eq!(b64.parse::<Fingerprint>().unwrap(), id.fingerprint);
        assert_eq!(
            id.fingerprint.to_hex().parse::<Fingerprint>().unwrap(),
            id.fingerprint
        );
        assert!("not-a-fingerprint".parse::<Fingerprint>().is_err());
        assert!("AAAA".parse::<Fingerprint>().is_err());
    }

    #[test]
    fn pem_round_trip_keeps_fingerprint() {
        let (key, cert, fp) = generate_identity_pem("gw-b").unwrap();
        let loaded = Identity::from_pem(&cert, &key).unwrap();
        assert_eq!(loaded.fingerprint, fp);
        assert!(matches!(
            Identity::from_pem("garbage", &key),
            Err(IdentityError::Certificate(_))
        ));
        assert!(matches!(
            Identity::from_pem(&cert, "garbage"),
            Err(IdentityError::PrivateKey(_))
        ));
    }

    #[test]
    fn bad_names_are_rejected() {
        assert!(matches!(
            Identity::generate("no spaces"),
            Err(IdentityError::Name(_))
        ));
    }

    #[test]
    fn ca_reloaded_from_pem_issues_verifiable_certs() {
        let ca = ClusterCa::generate().unwrap();
        let again = ClusterCa::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        let id = again.issue("gw-c").unwrap();
        let leaf = webpki::EndEntityCert::try_from(&id.chain[0]).unwrap();
        let anchor = webpki::anchor_from_trusted_cert(ca.cert()).unwrap();
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            rustls_pki_types::UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .unwrap();
    }
}
