//! Mutual TLS authentication of gateways: custom rustls verifiers that accept a peer only if
//! its certificate's public key matches a pinned [`Fingerprint`], or if its certificate chains
//! to the configured cluster-set CA and names a configured peer (DNS SAN = peer name).
//!
//! Both directions use the same [`Trust`] rules: the accepting side checks the client against
//! every configured peer, the dialing side checks the server against the one peer it dials.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};

use super::identity::Fingerprint;

/// Which configured peer a verified certificate belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PeerMatch {
    /// The leaf's public key matched this pin.
    Pinned(Fingerprint),
    /// The leaf chains to the cluster-set CA and names this configured peer.
    Ca(String),
}

/// The set of identities that may connect: swapped atomically when peers change.
#[derive(Debug, Default)]
pub(crate) struct Trust {
    /// Pinned SPKI fingerprints and the configured peer name each belongs to.
    pub pins: HashMap<Fingerprint, String>,
    /// Names of configured peers that a CA-issued certificate may prove.
    pub names: HashMap<String, ()>,
    /// The cluster-set CA, if configured.
    pub ca: Option<TrustAnchor<'static>>,
}

impl Trust {
    /// Checks a presented chain; returns the configured peer it proves, or why not.
    pub fn identify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        client: bool,
    ) -> Result<PeerMatch, rustls::Error> {
        let leaf = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let fp = Fingerprint::of_spki(leaf.subject_public_key_info().as_ref());
        if self.pins.contains_key(&fp) {
            return Ok(PeerMatch::Pinned(fp));
        }
        let denied = || rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let Some(ca) = &self.ca else {
            return Err(denied());
        };
        let usage = if client {
            webpki::KeyUsage::client_auth()
        } else {
            webpki::KeyUsage::server_auth()
        };
        leaf.verify_for_usage(
            algorithms().all,
            std::slice::from_ref(ca),
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(|_| denied())?;
        leaf.valid_dns_names()
            .map(str::to_ascii_lowercase)
            .find(|n| self.names.contains_key(n))
            .map(PeerMatch::Ca)
            .ok_or_else(|| rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
    }
}

fn algorithms() -> &'static WebPkiSupportedAlgorithms {
    static ALGS: std::sync::LazyLock<WebPkiSupportedAlgorithms> = std::sync::LazyLock::new(|| {
        rustls::crypto::ring::default_provider().signature_verification_algorithms
    });
    &ALGS
}

fn tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms())
}

/// Verifier shared by both sides; counts every rejected certificate.
pub(crate) struct PeerVerifier {
    trust: Arc<ArcSwap<Trust>>,
    rejected: Arc<AtomicU64>,
}

impl PeerVerifier {
    /// A verifier reading the current trust set and counting rejections into `rejected`.
    pub fn new(trust: Arc<ArcSwap<Trust>>, rejected: Arc<AtomicU64>) -> Self {
        Self { trust, rejected }
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        client: bool,
    ) -> Result<(), rustls::Error> {
        let res = self
            .trust
            .load()
            .identify(end_entity, intermediates, now, client);
        if res.is_err() {
            self.rejected.fetch_add(1, Ordering::Relaxed);
        }
        res.map(|_| ())
    }
}

impl fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerVerifier").finish_non_exhaustive()
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now, false)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now, true)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::super::identity::{ClusterCa, Identity};
    use super::*;

    fn trust(pins: &[(&Identity, &str)], names: &[&str], ca: Option<&ClusterCa>) -> Trust {
        Trust {
            pins: pins
                .iter()
                .map(|(id, n)| (id.fingerprint, (*n).to_owned()))
                .collect(),
            names: names.iter().map(|n| ((*n).to_owned(), ())).collect(),
            ca: ca.map(|ca| {
                webpki::anchor_from_trusted_cert(ca.cert())
                    .unwrap()
                    .to_owned()
            }),
        }
    }

    #[test]
    fn pinned_key_is_accepted_unknown_key_rejected() {
        let a = Identity::generate("gw-a").unwrap();
        let stranger = Identity::generate("gw-a").unwrap();
        let t = trust(&[(&a, "gw-a")], &["gw-a"], None);
        let now = UnixTime::now();
        assert_eq!(
            t.identify(&a.chain[0], &[], now, true).unwrap(),
            PeerMatch::Pinned(a.fingerprint)
        );
        assert!(t.identify(&stranger.chain[0], &[], now, true).is_err());
        assert!(
            t.identify(&CertificateDer::from(vec![1, 2, 3]), &[], now, true)
                .is_err()
        );
    }

    #[test]
    fn ca_issued_cert_must_name_a_configured_peer() {
        let ca = ClusterCa::generate().unwrap();
        let other_ca = ClusterCa::generate().unwrap();
        let t = trust(&[], &["gw-b"], Some(&ca));
        let now = UnixTime::now();
        let b = ca.issue("gw-b").unwrap();
        assert_eq!(
            t.identify(&b.chain[0], &[], now, false).unwrap(),
            PeerMatch::Ca("gw-b".into())
        );
        let unknown = ca.issue("gw-z").unwrap();
        assert!(t.identify(&unknown.chain[0], &[], now, true).is_err());
        let forged = other_ca.issue("gw-b").unwrap();
        assert!(t.identify(&forged.chain[0], &[], now, true).is_err());
        let self_signed = Identity::generate("gw-b").unwrap();
        assert!(t.identify(&self_signed.chain[0], &[], now, true).is_err());
    }
}
