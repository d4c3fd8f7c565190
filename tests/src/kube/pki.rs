//! The certificates and keys of one test cluster, generated fresh with rcgen (ECDSA P-256).
//!
//! One CA signs the apiserver's serving certificate and the client certificates (the CA is
//! also the apiserver's `--client-ca-file`); a separate key signs service-account tokens.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Paths of the PEM files written for a cluster.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    /// The cluster CA certificate (trust anchor for clients, `--client-ca-file`).
    pub ca_cert: PathBuf,
    /// The cluster CA key (signs the client certificates of nodes and controllers, see
    /// [`issue_client`]).
    pub ca_key: PathBuf,
    /// The apiserver's serving certificate.
    pub server_cert: PathBuf,
    /// The apiserver's serving key.
    pub server_key: PathBuf,
    /// The admin client certificate (`O=system:masters`).
    pub admin_cert: PathBuf,
    /// The admin client key.
    pub admin_key: PathBuf,
    /// The service-account token signing key (private).
    pub sa_key: PathBuf,
    /// Its public key (the apiserver verifies tokens with it).
    pub sa_pub: PathBuf,
}

/// Names the serving certificate is valid for, besides the listen addresses.
const SERVER_DNS_NAMES: &[&str] = &[
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// Generates the CA, serving certificate (valid for `ips` and the usual names), admin client
/// certificate and service-account key into `dir`.
pub fn generate(dir: &Path, ips: &[IpAddr]) -> anyhow::Result<PkiFiles> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    let ca_key = KeyPair::generate()?;
    let ca_params = ca_params()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let mut sans: Vec<String> = ips.iter().map(|ip| ip.to_string()).collect();
    sans.extend(SERVER_DNS_NAMES.iter().map(|s| s.to_string()));
    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(sans)?;
    server
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &issuer)?;

    let admin_key = KeyPair::generate()?;
    let mut admin = CertificateParams::new(Vec::<String>::new())?;
    admin
        .distinguished_name
        .push(DnType::CommonName, "fleetboard-test-admin");
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_cert = admin.signed_by(&admin_key, &issuer)?;

    let sa_key = KeyPair::generate()?;

    let files = PkiFiles {
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        server_cert: dir.join("apiserver.crt"),
        server_key: dir.join("apiserver.key"),
        admin_cert: dir.join("admin.crt"),
        admin_key: dir.join("admin.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
    };
    write(&files.ca_cert, &ca_cert.pem())?;
    write(&files.ca_key, &ca_key_pem)?;
    write(&files.server_cert, &server_cert.pem())?;
    write(&files.server_key, &server_key.serialize_pem())?;
    write(&files.admin_cert, &admin_cert.pem())?;
    write(&files.admin_key, &admin_key.serialize_pem())?;
    write(&files.sa_key, &sa_key.serialize_pem())?;
    write(&files.sa_pub, &sa_key.public_key_pem())?;
    Ok(files)
}

/// The CA's parameters (the same every time: an issuer rebuilt from them and the saved key
/// signs certificates that chain to the saved CA certificate).
fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fleetboard-test-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(ca_params)
}

/// Issues a client certificate `CN=<common_name>, O=<orgs>` signed by the cluster CA of
/// `pki` into `<dir>/<stem>.crt` and `<dir>/<stem>.key`; returns both paths.
pub fn issue_client(
    pki: &PkiFiles,
    dir: &Path,
    stem: &str,
    common_name: &str,
    orgs: &[&str],
) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_pem = std::fs::read_to_string(&pki.ca_key)
        .with_context(|| format!("reading {}", pki.ca_key.display()))?;
    let issuer = Issuer::new(ca_params()?, KeyPair::from_pem(&ca_pem)?);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    for o in orgs {
        params.distinguished_name.push(DnType::OrganizationName, *o);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer)?;
    let (crt, k) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    write(&crt, &cert.pem())?;
    write(&k, &key.serialize_pem())?;
    Ok((crt, k))
}

fn write(path: &Path, pem: &str) -> anyhow::Result<()> {
    std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))
}
