//! Finds the gateway's Control gRPC endpoint from its HTTP URL: `GET /api/info` answers
//! `{"grpc_address": "..."}`; a gateway URL that already is the gRPC endpoint also works.

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Parsed `http://host:port` (no TLS yet; see README).
fn host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("gateway URL {url:?} must start with http://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse().with_context(|| format!("bad port in {url:?}"))?,
        ),
        None => (authority.to_string(), 80),
    };
    if host.is_empty() {
        bail!("gateway URL {url:?} has no host");
    }
    Ok((host, port))
}

/// A minimal HTTP/1.1 GET (status, body) with a timeout.
pub async fn http_get(url: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let (host, port) = host_port(url)?;
    let fut = async {
        let mut s = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .with_context(|| format!("gateway {url} did not answer within 5 s"))?
        .with_context(|| format!("cannot reach gateway {url}"))?;
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

/// The Control endpoint for a gateway URL.
pub async fn grpc_address(gateway: &str) -> anyhow::Result<String> {
    if let Ok(addr) = std::env::var("CYXCLOUD_GRPC_ADDRESS")
        && !addr.is_empty()
    {
        return Ok(addr);
    }
    let (status, body) = http_get(gateway, "/api/info").await?;
    if status != 200 {
        bail!("gateway {gateway} answered {status} to /api/info; is it a CyxCloud gateway?");
    }
    let v: serde_json::Value = serde_json::from_str(&body)
        .with_context(|| format!("gateway {gateway}: /api/info is not JSON"))?;
    let addr = v["grpc_address"]
        .as_str()
        .with_context(|| format!("gateway {gateway}: /api/info has no grpc_address"))?;
    // The gateway may report a wildcard bind address; reach it through the host we used.
    let (host, _) = host_port(gateway)?;
    let (_, port) = host_port(addr)?;
    Ok(format!("http://{host}:{port}"))
}
