//! Finding the gateway's Control endpoint from its HTTP URL (`GET /api/info` answers
//! `{"grpc_address": "..."}`), over `http://` or `https://` (verified against the given CA,
//! TLS 1.3, no system roots, no fallback), and the minimal HTTP/1.1 GET it is made of (the CLI
//! also reads `/health` with it). The one copy the CLI and the drive use.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{ClientError, Result};

/// `(scheme is https, host, port)` of `scheme://host[:port][/...]`.
fn parse(url: &str) -> Result<(bool, String, u16)> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(ClientError::BadAddress(format!(
            "{url:?} must start with https:// or http://"
        )));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p.parse()
                .map_err(|_| ClientError::BadAddress(format!("bad port in {url:?}")))?,
        ),
        _ => (authority.to_string(), if tls { 443 } else { 80 }),
    };
    if host.is_empty() {
        return Err(ClientError::BadAddress(format!("{url:?} has no host")));
    }
    Ok((tls, host, port))
}

/// A rustls client configuration trusting exactly the certificates of `ca_pem`.
pub fn tls_config(ca_pem: &[u8]) -> Result<rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        let c = c.map_err(|e| ClientError::BadAddress(format!("CA certificate: {e}")))?;
        roots
            .add(c)
            .map_err(|e| ClientError::BadAddress(format!("CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ClientError::BadAddress(
            "the CA file holds no PEM certificate".into(),
        ));
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| ClientError::BadAddress(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    req: &[u8],
) -> std::io::Result<Vec<u8>> {
    s.write_all(req).await?;
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify once it has sent everything.
    match s.read_to_end(&mut raw).await {
        Ok(_) => Ok(raw),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => Ok(raw),
        Err(e) => Err(e),
    }
}

/// A minimal HTTP/1.1 GET of `path` at `url`: `(status, body)`, within 5 seconds.
pub async fn http_get(url: &str, path: &str, ca_pem: Option<&[u8]>) -> Result<(u16, String)> {
    let (tls, host, port) = parse(url)?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
    let offline = |reason: String| ClientError::Connect {
        address: url.to_string(),
        reason,
    };
    let fut = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| offline(e.to_string()))?;
        if !tls {
            return exchange(tcp, req.as_bytes())
                .await
                .map_err(|e| offline(e.to_string()));
        }
        let ca = ca_pem.ok_or_else(|| {
            offline(
                "this gateway serves TLS: give the CA certificate that certifies it \
                 (--ca-cert / CYXCLOUD_CA_CERT)"
                    .into(),
            )
        })?;
        let name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|e| offline(format!("server name {host:?}: {e}")))?;
        let s = tokio_rustls::TlsConnector::from(Arc::new(tls_config(ca)?))
            .connect(name, tcp)
            .await
            .map_err(|e| offline(format!("TLS: {e}")))?;
        exchange(s, req.as_bytes())
            .await
            .map_err(|e| offline(e.to_string()))
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| offline("no answer within 5 s".into()))??;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut b: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = b.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        b = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The Control endpoint to use: `explicit` when given (an address configured by the user,
/// e.g. `CYXCLOUD_GRPC_ADDRESS`), else the one the gateway at `gateway` names
/// ([`grpc_address`]).
pub async fn control_address(
    gateway: &str,
    explicit: Option<&str>,
    ca_pem: Option<&[u8]>,
) -> Result<String> {
    match explicit.filter(|a| !a.is_empty()) {
        Some(a) => Ok(a.to_string()),
        None => grpc_address(gateway, ca_pem).await,
    }
}

/// The Control endpoint of the gateway whose HTTP URL is `gateway` (its `/api/info`). The
/// gateway may report a wildcard bind address: the answer keeps the host used to reach it.
pub async fn grpc_address(gateway: &str, ca_pem: Option<&[u8]>) -> Result<String> {
    let (status, body) = http_get(gateway, "/api/info", ca_pem).await?;
    let bad = |m: String| ClientError::Protocol(format!("gateway {gateway}: {m}"));
    if status != 200 {
        return Err(bad(format!(
            "answered {status} to /api/info; is it a CyxCloud gateway?"
        )));
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| bad(format!("/api/info is not JSON: {e}")))?;
    let addr = v["grpc_address"]
        .as_str()
        .ok_or_else(|| bad("/api/info has no grpc_address".into()))?;
    let (_, host, _) = parse(gateway)?;
    let (tls, _, port) = parse(addr)?;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Ok(format!(
        "{}://{host}:{port}",
        if tls { "https" } else { "http" }
    ))
}

#[cfg(test)]
mod tests {
    use super::{control_address, parse};

    #[tokio::test]
    async fn an_explicit_control_address_wins_and_an_empty_one_does_not() {
        // Port 9 (discard) on loopback: nothing answers, so discovery fails.
        let gw = "http://127.0.0.1:9";
        assert_eq!(
            control_address(gw, Some("http://10.1.2.3:50051"), None)
                .await
                .unwrap(),
            "http://10.1.2.3:50051"
        );
        let e = control_address(gw, Some(""), None).await.unwrap_err();
        assert!(e.is_unavailable(), "{e}");
        assert!(control_address(gw, None, None).await.is_err());
    }

    #[test]
    fn urls_parse() {
        assert_eq!(
            parse("https://gw.example").unwrap(),
            (true, "gw.example".into(), 443)
        );
        assert_eq!(
            parse("http://10.0.0.1:8080/x").unwrap(),
            (false, "10.0.0.1".into(), 8080)
        );
        assert_eq!(
            parse("https://[::1]:8443").unwrap(),
            (true, "::1".into(), 8443)
        );
        assert!(parse("ftp://x").is_err());
        assert!(parse("http://:80").is_err());
    }
}
