//! Cluster CA and node certificates, and the mutual-TLS configurations of the QUIC
//! replication channel.
//!
//! A TLS directory holds `ca.pem` (the cluster CA certificate), optionally `ca.key` (its
//! key: needed only to issue node certificates), and `<node-id>.pem` / `<node-id>.key` for
//! each node. Replication accepts only peers presenting a certificate from the cluster CA,
//! and a client checks that the server's certificate names the node it meant to reach.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tracing::warn;

/// ALPN protocol of the replication channel.
pub const ALPN: &[u8] = b"tandem-repl/1";
const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";

/// Certificates could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    // The error is in the message, not a `source`: printed once, also where only the
    // message is logged.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not a valid PEM {what}")]
    Pem { path: PathBuf, what: &'static str },
    #[error("node id {0:?} cannot be a certificate name: use letters, digits, '-' and '.'")]
    BadName(String),
    #[error("{0}: no node certificate, and no CA key to issue one (run `tandem certs issue`)")]
    NoNodeCertificate(PathBuf),
    #[error("no cluster CA key in {0} (run `tandem certs init --dir {0}` first)")]
    NoCaKey(PathBuf),
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS verifier: {0}")]
    Verifier(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |error| TlsError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// The CA's parameters; fixed, so that the CA can be used as an issuer again from its key.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "Tandem cluster CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    params
}

/// Writes `contents` to a temporary file beside `path` (owner-only for keys) and returns
/// its path: complete before anyone can see it under its real name.
fn write_temp(path: &Path, contents: &str, secret: bool) -> Result<PathBuf, TlsError> {
    let temp = path.with_extension(format!(
        "tmp-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&temp).map_err(io_error(&temp))?;
    file.write_all(contents.as_bytes())
        .map_err(io_error(&temp))?;
    file.sync_all().map_err(io_error(&temp))?;
    Ok(temp)
}

/// Moves a complete temporary file to its real name (atomic).
fn commit(temp: &Path, path: &Path) -> Result<(), TlsError> {
    std::fs::rename(temp, path).map_err(io_error(path))
}

/// How long a process waits for another one that is creating the CA.
const CA_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Creates a cluster CA in `dir` unless one is there. Returns whether it created one.
///
/// Several agents may start at once on one directory: the one that claims `ca.key` first
/// (a hard link, which fails if the name exists) creates the CA; `ca.pem` appears last and
/// whole, and the others wait for it.
///
/// # Errors
/// File system errors.
pub fn init_ca(dir: &Path) -> Result<bool, TlsError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let cert_path = dir.join(CA_CERT);
    if cert_path.exists() {
        return Ok(false);
    }
    let key = KeyPair::generate()?;
    let cert = ca_params().self_signed(&key)?;
    let key_path = dir.join(CA_KEY);
    let key_temp = write_temp(&key_path, &key.serialize_pem(), true)?;
    let claimed = std::fs::hard_link(&key_temp, &key_path);
    let _ = std::fs::remove_file(&key_temp);
    match claimed {
        Ok(()) => {
            let cert_temp = write_temp(&cert_path, &cert.pem(), false)?;
            commit(&cert_temp, &cert_path)?;
            Ok(true)
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            let started = std::time::Instant::now();
            while !cert_path.exists() {
                if started.elapsed() > CA_WAIT {
                    return Err(TlsError::Io {
                        path: cert_path,
                        error: std::io::Error::other(
                            "another process claimed the CA but never finished it",
                        ),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(false)
        }
        Err(error) => Err(TlsError::Io {
            path: key_path,
            error,
        }),
    }
}

/// Issues a certificate for `node_id` with the CA key in `dir`. Returns whether it issued
/// one (false: the node already has one).
///
/// # Errors
/// No CA key in `dir`, an unusable node id, file system errors.
pub fn issue(dir: &Path, node_id: &str) -> Result<bool, TlsError> {
    ServerName::try_from(node_id.to_string()).map_err(|_| TlsError::BadName(node_id.into()))?;
    let (cert_path, key_path) = node_paths(dir, node_id);
    if cert_path.exists() {
        return Ok(false);
    }
    let ca_key_path = dir.join(CA_KEY);
    if !ca_key_path.exists() {
        return Err(TlsError::NoCaKey(dir.to_path_buf()));
    }
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(io_error(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|_| TlsError::Pem {
        path: ca_key_path,
        what: "private key",
    })?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let mut params = CertificateParams::new(vec![node_id.to_string()])?;
    params.distinguished_name.push(DnType::CommonName, node_id);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    // The key first: whoever finds the certificate finds its key complete.
    let key_temp = write_temp(&key_path, &key.serialize_pem(), true)?;
    commit(&key_temp, &key_path)?;
    let cert_temp = write_temp(&cert_path, &cert.pem(), false)?;
    commit(&cert_temp, &cert_path)?;
    Ok(true)
}

/// Where `node_id`'s certificate and key live in `dir`.
pub fn node_paths(dir: &Path, node_id: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{node_id}.pem")),
        dir.join(format!("{node_id}.key")),
    )
}

/// One node's trust anchor, certificate and key.
pub struct NodeTls {
    pub node_id: String,
    /// The cluster CA certificates trusted (more than one while a CA is being replaced).
    ca: Vec<CertificateDer<'static>>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Clone for NodeTls {
    fn clone(&self) -> Self {
        NodeTls {
            node_id: self.node_id.clone(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl NodeTls {
    /// Loads `node_id`'s material from `dir`. When `create` is set, a missing CA is
    /// generated and a missing node certificate issued (a development convenience: the
    /// other agents must be given the same CA, e.g. by sharing the directory).
    ///
    /// # Errors
    /// Missing or unreadable files, or an unusable node id.
    pub fn load(dir: &Path, node_id: &str, create: bool) -> Result<NodeTls, TlsError> {
        if create {
            if init_ca(dir)? {
                warn!(dir = %dir.display(), "generated a new cluster CA; every agent of the cluster needs it (and its own certificate from it)");
            }
            let (cert_path, _) = node_paths(dir, node_id);
            if !cert_path.exists() && dir.join(CA_KEY).exists() && issue(dir, node_id)? {
                warn!(node_id, dir = %dir.display(), "issued a certificate for this node");
            }
        }
        let (cert_path, key_path) = node_paths(dir, node_id);
        if !cert_path.exists() {
            return Err(TlsError::NoNodeCertificate(cert_path));
        }
        let read = |path: &Path| std::fs::read(path).map_err(io_error(path));
        let ca_path = dir.join(CA_CERT);
        let ca = CertificateDer::pem_slice_iter(&read(&ca_path)?)
            .collect::<Result<Vec<_>, _>>()
            .ok()
            .filter(|ca| !ca.is_empty())
            .ok_or(TlsError::Pem {
                path: ca_path,
                what: "certificate",
            })?;
        let cert =
            CertificateDer::from_pem_slice(&read(&cert_path)?).map_err(|_| TlsError::Pem {
                path: cert_path,
                what: "certificate",
            })?;
        let key = PrivateKeyDer::from_pem_slice(&read(&key_path)?).map_err(|_| TlsError::Pem {
            path: key_path,
            what: "private key",
        })?;
        Ok(NodeTls {
            node_id: node_id.to_string(),
            ca,
            cert,
            key,
        })
    }

    fn roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in &self.ca {
            roots.add(ca.clone())?;
        }
        Ok(roots)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Server side: only clients with a certificate from the cluster CA get in.
    ///
    /// # Errors
    /// Unusable certificate material.
    pub fn quic_server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            Self::provider(),
        )
        .build()
        .map_err(|err| TlsError::Verifier(err.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(config)
            .map_err(|err| TlsError::Verifier(err.to_string()))?;
        Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
    }

    /// Client side: presents this node's certificate, trusts only the cluster CA.
    ///
    /// # Errors
    /// Unusable certificate material.
    pub fn quic_client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(vec![self.cert.clone()], self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config)
            .map_err(|err| TlsError::Verifier(err.to_string()))?;
        Ok(quinn::ClientConfig::new(Arc::new(crypto)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Agents started together on one directory end up with one CA, each with a
    /// certificate from it.
    #[test]
    fn concurrent_first_starts_share_one_ca() {
        let dir = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let dir = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    NodeTls::load(&dir, &format!("node-{i}"), true).map(|tls| tls.ca)
                })
            })
            .collect();
        let cas: Vec<_> = threads
            .into_iter()
            .map(|t| t.join().unwrap().unwrap())
            .collect();
        assert!(
            cas.iter().all(|ca| *ca == cas[0]),
            "every node trusts the same CA"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.contains("tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_node_without_certificate_or_ca_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(CA_KEY)).unwrap();
        let err = NodeTls::load(dir.path(), "node-x", true).err().unwrap();
        assert!(matches!(err, TlsError::NoNodeCertificate(_)), "{err}");
        assert!(matches!(
            issue(dir.path(), "bad name!"),
            Err(TlsError::BadName(_))
        ));
    }
}
