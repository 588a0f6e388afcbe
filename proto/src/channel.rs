//! The one way every CyxCloud process opens a gRPC channel to another (docs/adr/0008):
//! `https://` verifies the server against the cluster CA it is given (no system roots, no
//! fallback to plaintext); `http://` is plaintext, for clusters that opted out of TLS.

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// The endpoint of the service at `url`. An `https://` URL needs `ca_pem`, the PEM
/// certificate(s) of the CA that certifies the server.
pub fn endpoint(url: &str, ca_pem: Option<&[u8]>) -> Result<Endpoint, String> {
    let e = Endpoint::from_shared(url.to_string()).map_err(|e| format!("address {url:?}: {e}"))?;
    if !url.starts_with("https://") {
        return Ok(e);
    }
    let Some(ca) = ca_pem else {
        return Err(format!(
            "{url} serves TLS: the CA certificate that certifies it is needed (the cluster CA, \
             e.g. --ca-cert / CYXCLOUD_CA_CERT)"
        ));
    };
    e.tls_config(
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .assume_http2(true),
    )
    .map_err(|e| format!("TLS for {url}: {e}"))
}

/// Whether `url` names a TLS endpoint.
pub fn is_tls(url: &str) -> bool {
    url.starts_with("https://")
}
