//! The gateway's Control endpoint and plain GETs of its HTTP port, through the client's one
//! copy of discovery (`cyxcloud_client::discover`), with the CA named by `--ca-cert` /
//! `CYXCLOUD_CA_CERT` for an `https://` gateway.

use anyhow::Context;

/// A minimal HTTP/1.1 GET `(status, body)`; `https://` is verified against `ca_pem`.
pub async fn http_get(url: &str, path: &str) -> anyhow::Result<(u16, String)> {
    http_get_with(url, path, None).await
}

pub async fn http_get_with(
    url: &str,
    path: &str,
    ca_pem: Option<&[u8]>,
) -> anyhow::Result<(u16, String)> {
    cyxcloud_client::discover::http_get(url, path, ca_pem)
        .await
        .with_context(|| format!("cannot reach gateway {url}"))
}

/// The Control endpoint for a gateway URL (`CYXCLOUD_GRPC_ADDRESS` wins).
pub async fn grpc_address(gateway: &str, ca_pem: Option<&[u8]>) -> anyhow::Result<String> {
    let explicit = std::env::var("CYXCLOUD_GRPC_ADDRESS").ok();
    Ok(cyxcloud_client::discover::control_address(gateway, explicit.as_deref(), ca_pem).await?)
}
