//! TLS for `https://` tracking servers, with MLflow's variables for servers whose certificate no
//! public authority signed: `MLFLOW_TRACKING_SERVER_CERT_PATH` (a PEM file of the CA certificates
//! to trust, besides the public ones) and `MLFLOW_TRACKING_INSECURE_TLS=true` (no verification).
//! rustls, as ureq uses it (already in the tree); public roots from webpki-roots.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// How to check the server's certificate.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Trust {
    /// The public certificate authorities (ureq's default).
    #[default]
    Public,
    /// The public authorities and the CA certificates of this PEM file.
    Extra(std::path::PathBuf),
    /// Any certificate: the connection is encrypted but the server is not authenticated.
    Insecure,
}

/// The TLS configuration for `trust`; `None` for ureq's default.
pub(super) fn config(trust: &Trust) -> Result<Option<Arc<ClientConfig>>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("rustls has no TLS version for its ring provider")?;
    let config = match trust {
        Trust::Public => return Ok(None),
        Trust::Extra(file) => builder
            .with_root_certificates(roots_with(file)?)
            .with_no_client_auth(),
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    };
    Ok(Some(Arc::new(config)))
}

/// The public roots and every certificate of the PEM `file`.
fn roots_with(file: &Path) -> Result<RootCertStore> {
    let what = || {
        format!(
            "MLFLOW_TRACKING_SERVER_CERT_PATH={}: expected a PEM file of CA certificates",
            file.display()
        )
    };
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let certs = CertificateDer::pem_file_iter(file)
        .with_context(what)?
        .collect::<Result<Vec<_>, _>>()
        .with_context(what)?;
    if certs.is_empty() {
        bail!("{}: it holds no certificate", what());
    }
    for cert in certs {
        roots.add(cert).with_context(what)?;
    }
    Ok(roots)
}

/// Accepts every server certificate (still checking the handshake's signatures).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
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
        verify_tls12_signature(
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
        verify_tls13_signature(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cert_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = config(&Trust::Extra(empty)).unwrap_err();
        assert!(format!("{e:#}").contains("holds no certificate"), "{e:#}");
        let missing = dir.path().join("missing.pem");
        let e = config(&Trust::Extra(missing)).unwrap_err();
        assert!(
            format!("{e:#}").contains("MLFLOW_TRACKING_SERVER_CERT_PATH"),
            "{e:#}"
        );
        assert!(config(&Trust::Public).unwrap().is_none());
        assert!(config(&Trust::Insecure).unwrap().is_some());
    }
}
