//! TLS for Redis connections: rustls with the `ring` provider and no system roots (the CA
//! comes from a file), optional client certificate (mTLS), server name by address.
//!
//! Errors are one line and name the setting and the file, never a file's content.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// How to talk TLS to a server. Paths only: the files are read on every connect, so a
/// rotated certificate is picked up by the next connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM file of the CA certificates that sign the server's certificate (required unless
    /// `insecure_skip_verify`: the system roots are not used).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for servers that check clients (`tls-auth-clients yes`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate must carry; default: the host part of the address
    /// connected to (an IP address is checked against the certificate's IP SANs).
    pub server_name: Option<String>,
    /// Accept any server certificate. Anyone on the path can then read and change the data.
    pub insecure_skip_verify: bool,
}

/// Errors setting up TLS; Display is one line naming the setting and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{field} {path}: {message}")]
    File { field: &'static str, path: String, message: String },
    #[error("{0}")]
    Config(String),
}

impl TlsSettings {
    /// Reads the files and builds the rustls client configuration.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(format!("TLS: {e}")))?;
        let builder = if self.insecure_skip_verify {
            warn_insecure_once();
            builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        } else {
            let ca = self.ca_file.as_deref().ok_or_else(|| {
                TlsError::Config("tls_ca_file is required with tls = true (or tls_insecure_skip_verify = true)".into())
            })?;
            let mut roots = RootCertStore::empty();
            for cert in load_certs("tls_ca_file", ca)? {
                roots.add(cert).map_err(|e| file_error("tls_ca_file", ca, format!("bad CA certificate: {e}")))?;
            }
            builder.with_root_certificates(roots)
        };
        let config = match (self.cert_file.as_deref(), self.key_file.as_deref()) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = load_certs("tls_cert_file", cert)?;
                let key_der = load_key("tls_key_file", key)?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    file_error("tls_key_file", key, format!("unusable with tls_cert_file {}: {e}", cert.display()))
                })?
            }
            _ => return Err(TlsError::Config("tls_cert_file and tls_key_file go together (mTLS): set both".into())),
        };
        Ok(Arc::new(config))
    }

    /// The name the certificate of the server at `addr` (`host:port`, `[v6]:port`) must carry.
    pub fn server_name_for(&self, addr: &str) -> Result<ServerName<'static>, TlsError> {
        let name = match self.server_name.as_deref().filter(|n| !n.is_empty()) {
            Some(n) => n,
            None => host_of(addr),
        };
        if let Ok(ip) = name.parse::<std::net::IpAddr>() {
            return Ok(ServerName::IpAddress(ip.into()));
        }
        ServerName::try_from(name.to_string())
            .map_err(|_| TlsError::Config(format!("tls_server_name: {name:?} is not a valid DNS name or IP address")))
    }

    /// Reads and parses every file (for checks at start-up).
    pub fn check(&self) -> Result<(), TlsError> {
        self.client_config().map(|_| ())
    }
}

/// The host part of `host:port` or `[v6]:port`.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

fn file_error(field: &'static str, path: &Path, message: String) -> TlsError {
    TlsError::File { field, path: path.display().to_string(), message }
}

fn pem_message(e: rustls_pki_types::pem::Error, what: &str) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::Io(e) => format!("cannot read: {e}"),
        Error::NoItemsFound => format!("no PEM {what} in the file"),
        // Other variants may quote lines of the file: never print a key file's content.
        _ => format!("not a valid PEM {what} file"),
    }
}

/// Every certificate of a PEM file (at least one).
pub fn load_certs(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(field, path, pem_message(e, "certificate")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(field, path, pem_message(e, "certificate")))?;
    if certs.is_empty() {
        return Err(file_error(field, path, "no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(field: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(field, path, pem_message(e, "private key")))
}

fn warn_insecure_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tracing::warn!(
            "TLS CERTIFICATE VERIFICATION IS DISABLED (tls_insecure_skip_verify = true): \
             anyone on the network path can read and change the data and the passwords"
        );
    });
}

/// Accepts any certificate, but still checks the handshake signatures.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_defaults_to_the_host() {
        let t = TlsSettings::default();
        assert!(matches!(t.server_name_for("127.0.0.1:6379").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(t.server_name_for("[::1]:6379").unwrap(), ServerName::IpAddress(_)));
        match t.server_name_for("redis.example.com:6379").unwrap() {
            ServerName::DnsName(n) => assert_eq!(n.as_ref(), "redis.example.com"),
            other => panic!("{other:?}"),
        }
        let t = TlsSettings { server_name: Some("db.internal".into()), ..Default::default() };
        assert!(matches!(t.server_name_for("10.0.0.1:6379").unwrap(), ServerName::DnsName(_)));
    }

    #[test]
    fn missing_files_are_named() {
        let t = TlsSettings { ca_file: Some("/nonexistent/ca.pem".into()), ..Default::default() };
        let e = t.check().unwrap_err().to_string();
        assert!(e.contains("tls_ca_file") && e.contains("/nonexistent/ca.pem"), "{e}");
        let e = TlsSettings::default().check().unwrap_err().to_string();
        assert!(e.contains("tls_ca_file"), "{e}");
        let t = TlsSettings { insecure_skip_verify: true, cert_file: Some("/x".into()), ..Default::default() };
        assert!(t.check().unwrap_err().to_string().contains("tls_key_file"));
    }

    #[test]
    fn key_file_content_is_never_printed() {
        let dir = std::env::temp_dir().join(format!("ferry-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key.pem");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nSECRETSECRET!!\n-----END PRIVATE KEY-----\n").unwrap();
        let e = load_key("tls_key_file", &key).unwrap_err().to_string();
        assert!(!e.contains("SECRET") && e.contains("tls_key_file"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
