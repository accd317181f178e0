//! TLS for `turns:` listeners, with rustls. The certificate sits behind a resolver that is
//! swapped while the server runs, so a renewal (SIGHUP, or the files changing) applies to
//! new handshakes and never touches open connections. A certificate or key that does not
//! load is an error at start, and at reload is logged while the old one stays.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;
use crate::sys::{Locked, RwLocked};

/// Identifies the versions of the two files on disk.
type Stamp = Option<[(std::time::SystemTime, u64, u64); 2]>;

fn stamp(paths: &TlsConfig) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len(), m.ino()))
    };
    Some([one(&paths.certificate)?, one(&paths.private_key)?])
}

/// Reads and checks a certificate chain and its private key (PEM).
pub fn load(paths: &TlsConfig) -> Result<CertifiedKey, String> {
    let cert_path = paths.certificate.display();
    let key_path = paths.private_key.display();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&paths.certificate)
        .map_err(|e| format!("{cert_path}: cannot read the certificate: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{cert_path}: not a PEM certificate chain: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{cert_path}: no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&paths.private_key)
        .map_err(|e| format!("{key_path}: cannot read a PEM private key: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{key_path}: unusable private key: {e}"))?;
    let ck = CertifiedKey::new(certs, signer);
    ck.keys_match()
        .map_err(|e| format!("{key_path} does not belong to the certificate in {cert_path}: {e}"))?;
    Ok(ck)
}

/// The first DNS name (subject alternative name) of the certificate at `path` that clients can
/// connect to: wildcards are skipped. `Ok(None)` when it has none.
pub fn first_dns_name(path: &Path) -> Result<Option<String>, String> {
    let shown = path.display();
    let der = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{shown}: cannot read the certificate: {e}"))?
        .next()
        .ok_or_else(|| format!("{shown}: no certificate in the file"))?
        .map_err(|e| format!("{shown}: not a PEM certificate chain: {e}"))?;
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| format!("{shown}: unreadable certificate: {e}"))?;
    let name = cert.valid_dns_names().find(|n| !n.starts_with('*'));
    Ok(name.map(str::to_string))
}

/// The certificate in force, swappable at run time.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
    paths: RwLock<TlsConfig>,
    stamp: Mutex<Stamp>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Held only to clone the Arc.
        Some(self.current.reading().clone())
    }
}

impl CertStore {
    /// Loads the certificate; an error here is a start-up error.
    pub fn new(paths: &TlsConfig) -> Result<Arc<CertStore>, String> {
        let ck = load(paths)?;
        Ok(Arc::new(CertStore {
            current: RwLock::new(Arc::new(ck)),
            stamp: Mutex::new(stamp(paths)),
            paths: RwLock::new(paths.clone()),
        }))
    }

    /// Reloads from `paths` (which may have changed with the config) when forced or when the
    /// files changed. Returns whether a new certificate is now in force; on error the old one
    /// stays.
    pub fn reload(&self, paths: &TlsConfig, force: bool) -> Result<bool, String> {
        let now = stamp(paths);
        let mut last = self.stamp.locked();
        let same_paths = *self.paths.reading() == *paths;
        if !force && same_paths && now == *last {
            return Ok(false);
        }
        // Remember this version even if it fails, so a broken file is reported once.
        *last = now;
        let ck = load(paths)?;
        *self.current.writing() = Arc::new(ck);
        *self.paths.writing() = paths.clone();
        Ok(true)
    }

    /// A TLS acceptor that always uses the certificate in force.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, String> {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}
