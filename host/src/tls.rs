//! TLS on both sides, with rustls and its `ring` crypto provider (which
//! builds with a C compiler alone, no cmake or assembler).
//!
//! Upstream: one [`rustls::ClientConfig`] per distinct set of settings,
//! kept across reloads so its session cache makes reconnects cheap. Roots
//! are the Mozilla bundle compiled in (`webpki-roots`), so the proxy trusts
//! the same public CAs on any image, distroless included, plus a `ca_file`.
//! Downstream: a listener certificate that is re-read when its files change,
//! without touching open connections.

use crate::config::TlsSettings;
use crate::refresh::{FileStamp, Refresh};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// ALPN of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// A TLS file or setting that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{} holds no {what}", path.display())]
    Empty { what: &'static str, path: PathBuf },
    #[error("{what} {}: {source}", path.display())]
    Rejected {
        what: &'static str,
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("`{0}` is not a valid TLS server name")]
    ServerName(String),
    #[error("cert_file and key_file must be given together")]
    HalfPair,
    #[error("{0}")]
    Config(#[from] rustls::Error),
}

/// The crypto provider every TLS config of the proxy uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Certificates of a PEM file, at least one.
pub fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            what,
            path: path.into(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.into(),
        });
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: "private key",
            path: path.into(),
        },
        source => TlsError::Read {
            what: "private key",
            path: path.into(),
            source,
        },
    })
}

/// A certificate chain and its key, ready to sign handshakes.
pub fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_certs(cert, "certificate")?;
    let der = load_key(key)?;
    let signer = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|source| TlsError::Rejected {
            what: "private key",
            path: key.into(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .map_err(|source| TlsError::Rejected {
            what: "certificate does not match its key",
            path: cert.into(),
            source,
        })?;
    Ok(Arc::new(certified))
}

/// A client config for `settings`, with relative paths resolved against
/// `base`. `alpn` lists the protocols offered, best first.
pub fn client_config(
    settings: &TlsSettings,
    base: &Path,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if settings.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    } else {
        let mut roots = RootCertStore::empty();
        if !settings.ca_only {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        if let Some(ca) = &settings.ca_file {
            let path = base.join(ca);
            for cert in load_certs(&path, "CA certificate")? {
                roots.add(cert).map_err(|source| TlsError::Rejected {
                    what: "CA certificate",
                    path: path.clone(),
                    source,
                })?;
            }
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match (&settings.cert_file, &settings.key_file) {
        (Some(cert), Some(key)) => {
            let (cert, key) = (base.join(cert), base.join(key));
            let chain = load_certs(&cert, "client certificate")?;
            builder
                .with_client_auth_cert(chain, load_key(&key)?)
                .map_err(|source| TlsError::Rejected {
                    what: "client certificate",
                    path: cert,
                    source,
                })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsError::HalfPair),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The name sent in SNI and verified.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_string()).map_err(|_| TlsError::ServerName(name.into()))
}

/// Verifies handshake signatures but accepts any certificate
/// (`insecure_skip_verify`).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A server config offering h2 and HTTP/1.1 with a fixed certificate, and,
/// given `client_ca`, requiring client certificates it signed. For mock
/// backends and tests.
pub fn fixed_server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs(ca, "client CA certificate")? {
                roots.add(c)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(FixedCert(certified_key(cert, key)?)));
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The listener's certificate, swapped when its files change; handshakes
/// in progress and open connections keep the one they started with.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<(Arc<CertifiedKey>, FileStamp, FileStamp)>,
}

impl ReloadingCert {
    /// Loads the pair now; an error names the file.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<ReloadingCert>, TlsError> {
        let certified = certified_key(cert, key)?;
        Ok(Arc::new(ReloadingCert {
            cert: cert.into(),
            key: key.into(),
            current: Mutex::new((certified, FileStamp::of(cert), FileStamp::of(key))),
        }))
    }

    /// A server config offering h2 and HTTP/1.1 with this certificate.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .clone(),
        )
    }
}

impl Refresh for ReloadingCert {
    fn refresh(&self) {
        let (cert, key) = (FileStamp::of(&self.cert), FileStamp::of(&self.key));
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.1 == cert && current.2 == key {
            return;
        }
        // A rotation writes two files: a pair that does not load yet is
        // tried again when either changes, the old certificate serving.
        match certified_key(&self.cert, &self.key) {
            Ok(certified) => {
                *current = (certified, cert, key);
                metrics::counter!("switchyard_tls_certificate_reloads_total", "result" => "ok")
                    .increment(1);
                tracing::info!(cert = %self.cert.display(), "listener certificate reloaded");
            }
            Err(e) => {
                // Logged once per change of the files.
                (current.1, current.2) = (cert, key);
                metrics::counter!("switchyard_tls_certificate_reloads_total", "result" => "error")
                    .increment(1);
                tracing::warn!("listener certificate not reloaded, the previous one serves: {e}");
            }
        }
    }
}
