//! S3 API tests against a live cluster (the real `cyxcloud-gateway` binary and real
//! `cyxcloud-node` processes): the official `aws-sdk-s3` for every operation and error path,
//! raw HTTP for what an SDK never sends (malformed XML, truncated bodies, tampered chunk
//! signatures, anonymous requests), real command-line clients, and node failures.
//!
//! Needs the node binary: `cargo build -p cyxcloud-node` (or `cargo test --workspace`).

#[path = "s3_clients.rs"]
mod clients;
#[path = "s3_faults.rs"]
mod faults;
#[path = "s3_raw.rs"]
mod raw;
#[path = "s3_sdk.rs"]
mod sdk;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use cyxcloud_gateway::s3::sigv4;
use cyxcloud_testkit::cluster::{ACCESS_KEY, Cluster, ClusterOptions, SECRET_KEY};

/// Chunk size of test clusters: small, so that a few MiB exercise many chunks.
pub const CHUNK: u64 = 1 << 20;

/// A cluster of `nodes` real nodes whose gateway has the extra `settings` (`key=value`), with
/// the testkit's heartbeats.
pub fn cluster(nodes: usize, settings: &[&str]) -> S3Cluster {
    S3Cluster::new(Cluster::start(ClusterOptions {
        nodes,
        chunk_size: Some(CHUNK),
        gateway_settings: settings.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }))
}

/// A test cluster that, when the test ends without failing, checks in the gateway's
/// `/metrics` that it answered no S3 request with a 5xx and cut off no response: the SDK and
/// the command-line clients retry server errors, which would otherwise pass unseen.
pub struct S3Cluster {
    cluster: Cluster,
    /// 5xx answers and cut-off responses the test causes on purpose.
    expected: (u64, u64),
}

impl S3Cluster {
    pub fn new(cluster: Cluster) -> S3Cluster {
        S3Cluster {
            cluster,
            expected: (0, 0),
        }
    }

    /// The test causes exactly `errors` 5xx answers and `cut` cut-off responses.
    pub fn expect_server_errors(&mut self, errors: u64, cut: u64) {
        self.expected = (errors, cut);
    }

    /// `(5xx answers, cut-off responses)` so far, from the gateway's `/metrics`.
    pub fn server_errors(&self) -> (u64, u64) {
        let metrics = if self.cluster.opts.tls {
            let out = std::process::Command::new("curl")
                .args(["-fsS", "--cacert"])
                .arg(self.cluster.ca_path())
                .arg(format!("{}/metrics", self.cluster.http_url()))
                .output()
                .expect("curl");
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            let (status, m) =
                cyxcloud_testkit::http_get(self.cluster.http_addr(), "/metrics").expect("metrics");
            assert_eq!(status, 200, "{m}");
            m
        };
        server_errors_in(&metrics)
    }
}

/// `(5xx answers other than 501, cut-off responses)` in a gateway's metrics text.
fn server_errors_in(metrics: &str) -> (u64, u64) {
    let value = |l: &str| {
        l.rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    let errors = metrics
        .lines()
        // 501 NotImplemented refuses a feature on purpose (and no client retries it).
        .filter(|l| {
            l.starts_with("cyxcloud_s3_requests_total{")
                && l.contains("status=\"5")
                && !l.contains("status=\"501\"")
        })
        .map(value)
        .sum();
    let cut = metrics
        .lines()
        .filter(|l| l.starts_with("cyxcloud_s3_aborted_responses_total"))
        .map(value)
        .sum();
    (errors, cut)
}

impl std::ops::Deref for S3Cluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl std::ops::DerefMut for S3Cluster {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.cluster
    }
}

impl Drop for S3Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() || self.cluster.gateway.is_none() {
            return;
        }
        let got = self.server_errors();
        if got != self.expected {
            let log = self
                .cluster
                .gateway
                .as_ref()
                .map(|g| g.log())
                .unwrap_or_default();
            let why: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("ERROR") || l.contains(" WARN ") || l.contains("status=5"))
                .collect();
            panic!(
                "(S3 answers with a 5xx status, responses cut off) by the gateway: {got:?}, \
                 expected {:?}; the gateway's errors and warnings:\n{}",
                self.expected,
                why.join("\n")
            );
        }
    }
}

#[test]
fn server_errors_are_read_from_the_metrics() {
    let m = "cyxcloud_s3_requests_total{method=\"GET\",status=\"200\"} 9\n\
             cyxcloud_s3_requests_total{method=\"GET\",status=\"503\"} 2\n\
             cyxcloud_s3_requests_total{method=\"PUT\",status=\"500\"} 1\n\
             cyxcloud_s3_requests_total{method=\"PUT\",status=\"404\"} 5\n\
             cyxcloud_s3_requests_total{method=\"PUT\",status=\"501\"} 4\n\
             cyxcloud_s3_aborted_responses_total 1\n";
    assert_eq!(server_errors_in(m), (3, 1));
}

/// An `aws-sdk-s3` client for `endpoint` (path style, plain HTTP).
pub fn sdk(endpoint: &str) -> aws_sdk_s3::Client {
    sdk_with(endpoint, ACCESS_KEY, SECRET_KEY, |b| b)
}

pub fn sdk_with(
    endpoint: &str,
    access_key: &str,
    secret_key: &str,
    f: impl FnOnce(aws_sdk_s3::config::Builder) -> aws_sdk_s3::config::Builder,
) -> aws_sdk_s3::Client {
    let http = aws_smithy_http_client::Builder::new().build_http();
    let b = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(access_key, secret_key, None, None, "test"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .http_client(http);
    aws_sdk_s3::Client::from_conf(f(b).build())
}

/// Deterministic test bytes.
pub fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The whole body of object `b/k`.
pub async fn get_bytes(c: &aws_sdk_s3::Client, b: &str, k: &str) -> Vec<u8> {
    c.get_object()
        .bucket(b)
        .key(k)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {b}/{k}: {e:?}"))
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes()
        .to_vec()
}

pub fn md5_hex(b: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(b))
}

/// An HTTP response read from a raw connection.
#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `<Code>` of an S3 error body.
    pub fn code(&self) -> String {
        let t = self.text();
        t.split("<Code>")
            .nth(1)
            .and_then(|r| r.split("</Code>").next())
            .unwrap_or("")
            .to_string()
    }
}

/// Sends one HTTP/1.1 request (`Connection: close`) and reads the whole response.
/// `body_limit` sends only that many bytes of `body` (a truncated upload) and then closes.
pub fn raw_send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
    body_limit: Option<usize>,
) -> RawResp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!("{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
    {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let n = body_limit.unwrap_or(body.len()).min(body.len());
    let _ = s.write_all(&body[..n]);
    if body_limit.is_some() {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse_response(&out, method == "HEAD")
}

fn parse_response(b: &[u8], head: bool) -> RawResp {
    let end = b
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(b)));
    let text = String::from_utf8_lossy(&b[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = b[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked && !head {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let i = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .unwrap_or(rest.len());
            let n =
                usize::from_str_radix(String::from_utf8_lossy(&rest[..i]).trim(), 16).unwrap_or(0);
            if n == 0 || i + 2 + n > rest.len() {
                break;
            }
            out.extend_from_slice(&rest[i + 2..i + 2 + n]);
            rest = &rest[i + 2 + n + 2..];
        }
        body = out;
    }
    RawResp {
        status,
        headers,
        body,
    }
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// SigV4 headers for a raw request (header auth). `headers` are the headers that will be
/// sent (all signed); `payload` is the `x-amz-content-sha256` value.
#[allow(clippy::too_many_arguments)]
pub fn signed_headers(
    addr: SocketAddr,
    method: &str,
    path: &str,
    query: &str,
    extra: &[(&str, &str)],
    payload: &str,
    secret: &str,
    time: i64,
) -> (Vec<(String, String)>, String, [u8; 32], String) {
    let amz_date = cyxcloud_gateway::s3::util::amz_date(time);
    let mut hs: Vec<(String, String)> = vec![
        ("host".into(), addr.to_string()),
        ("x-amz-content-sha256".into(), payload.to_string()),
        ("x-amz-date".into(), amz_date.clone()),
    ];
    for (k, v) in extra {
        hs.push((k.to_string(), v.to_string()));
    }
    hs.sort();
    let mut map = HeaderMap::new();
    for (k, v) in &hs {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let signed: Vec<String> = hs.iter().map(|(k, _)| k.clone()).collect();
    let cred = sigv4::Credential::parse(&format!(
        "{ACCESS_KEY}/{}/us-east-1/s3/aws4_request",
        &amz_date[..8]
    ))
    .unwrap();
    let canonical = sigv4::canonical_request(
        method,
        &sigv4::canonical_uri(path).unwrap(),
        &sigv4::canonical_query(query, false).unwrap(),
        &map,
        &signed,
        payload,
    );
    let sts = sigv4::string_to_sign(&amz_date, &cred.scope(), &canonical);
    let key = sigv4::signing_key(secret, &cred);
    let sig = sigv4::sign(&key, &sts);
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{}, SignedHeaders={}, Signature={sig}",
        cred.scope(),
        signed.join(";")
    );
    let mut out: Vec<(String, String)> = hs.into_iter().filter(|(k, _)| k != "host").collect();
    out.push(("authorization".into(), auth));
    (out, sig, key, format!("{amz_date}\n{}", cred.scope()))
}

/// A signed raw request with a fixed body (`x-amz-content-sha256` = its SHA-256).
pub fn signed_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    query: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> RawResp {
    let payload = sigv4::sha256_hex(body);
    let (hs, ..) = signed_headers(
        addr,
        method,
        path,
        query,
        extra,
        &payload,
        SECRET_KEY,
        now_secs(),
    );
    let target = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    raw_send(addr, method, &target, &hs, body, None)
}
