//! Certificates made at test time: a private CA, and server and client
//! certificates it signs, written as PEM files; and a TLS client that
//! trusts the CA.

use crate::Reply;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// A private CA in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    /// A new CA named `name`; its certificate is `ca.pem`.
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let ca = CertifiedIssuer::self_signed(params, key).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap_or_else(|e| panic!("{e}"));
        Pki { dir, ca }
    }

    /// The CA certificate's file.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by the
    /// CA, written as `<file>.pem` and `<file>.key`.
    pub fn issue(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap_or_else(|e| panic!("{e}"));
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let cert = params
            .signed_by(&key, &self.ca)
            .unwrap_or_else(|e| panic!("{e}"));
        let (cert_path, key_path) = (
            self.dir.path().join(format!("{file}.pem")),
            self.dir.path().join(format!("{file}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&key_path, key.serialize_pem()).unwrap_or_else(|e| panic!("{e}"));
        (cert_path, key_path)
    }

    /// A server config for a mock backend: a certificate for `localhost`
    /// and 127.0.0.1, optionally requiring client certificates of this CA.
    pub fn backend_tls(&self, file: &str, require_client_cert: bool) -> Arc<rustls::ServerConfig> {
        let (cert, key) = self.issue(file, &["localhost", "127.0.0.1"]);
        let ca = self.ca();
        switchyard::tls::fixed_server_config(
            &cert,
            &key,
            require_client_cert.then_some(ca.as_path()),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A client config trusting only this CA, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let settings = switchyard::config::TlsSettings {
            ca_file: Some(self.ca()),
            ca_only: true,
            ..Default::default()
        };
        switchyard::tls::client_config(&settings, self.dir.path(), alpn)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Sends one request over a new TLS connection to `addr` (verified as
/// `localhost` against `pki`'s CA), over HTTP/2 when `h2`, and reads the
/// answer whole, trailers included.
pub async fn tls_request(
    pki: &Pki,
    addr: SocketAddr,
    h2: bool,
    req: Request<Full<Bytes>>,
) -> Result<(Reply, Option<http::HeaderMap>), String> {
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(pki.client_config(alpn))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let io = TokioIo::new(stream);
    let resp = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(|e| e.to_string())?
    };
    read_whole(resp).await
}

/// Sends one request over a new plain HTTP/2 (prior knowledge) connection
/// and reads the answer whole, trailers included.
pub async fn h2c_request(
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
) -> Result<(Reply, Option<http::HeaderMap>), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    read_whole(resp).await
}

/// A response read whole, with its trailers.
async fn read_whole(
    resp: http::Response<hyper::body::Incoming>,
) -> Result<(Reply, Option<http::HeaderMap>), String> {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.map_err(|e| e.to_string())?;
    let trailers = collected.trailers().cloned();
    Ok((
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: collected.to_bytes(),
        },
        trailers,
    ))
}
