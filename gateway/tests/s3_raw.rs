//! What SDKs never send, over raw HTTP: the usage guide's unsigned `curl` requests,
//! signed `aws-chunked` bodies (good and tampered), checksum trailers, truncated bodies,
//! malformed XML, oversized headers, unknown methods, virtual-host routing.

use std::net::SocketAddr;

use cyxcloud_gateway::s3::sigv4;
use cyxcloud_testkit::cluster::SECRET_KEY;

use super::{cluster, data, md5_hex, now_secs, raw_send, signed_headers, signed_send};

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The signed aws-chunked body of `pieces`, with `tamper` flipping a byte of piece 1.
fn signed_chunks(
    pieces: &[&[u8]],
    seed: &str,
    key: &[u8; 32],
    date_scope: &str,
    tamper: bool,
) -> Vec<u8> {
    let (date, scope) = date_scope.split_once('\n').unwrap();
    let mut prev = seed.to_string();
    let mut out = Vec::new();
    let mut all: Vec<Vec<u8>> = pieces.iter().map(|p| p.to_vec()).collect();
    all.push(Vec::new());
    for (i, p) in all.iter().enumerate() {
        let sts = sigv4::chunk_string_to_sign(date, scope, &prev, &sigv4::sha256_hex(p));
        let sig = sigv4::sign(key, &sts);
        out.extend_from_slice(format!("{:x};chunk-signature={sig}\r\n", p.len()).as_bytes());
        let mut p = p.clone();
        if tamper && i == 1 {
            p[0] ^= 1;
        }
        out.extend_from_slice(&p);
        out.extend_from_slice(b"\r\n");
        prev = sig;
    }
    out
}

fn crc32_b64(b: &[u8]) -> String {
    use base64::Engine;
    let c = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(b);
    base64::engine::general_purpose::STANDARD.encode(c.to_be_bytes())
}

#[test]
fn s3_raw_protocol_and_bad_input() {
    let cl = cluster(
        7,
        &["s3.loopback_anonymous_admin=true", "s3.domain=s3.test"],
    );
    let addr = cl.http_addr();
    guide_curl_examples(addr);
    signed_streaming(addr);
    unsigned_trailer(addr);
    truncated_and_bad_bodies(addr);
    malformed_requests(addr);
    virtual_host(addr);
}

/// The usage guide's unsigned examples, on a loopback gateway with
/// `s3.loopback_anonymous_admin`.
fn guide_curl_examples(addr: SocketAddr) {
    let r = raw_send(addr, "PUT", "/s3/mybucket", &[], b"", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = raw_send(
        addr,
        "PUT",
        "/s3/mybucket/testfile.txt",
        &h(&[("content-type", "text/plain")]),
        b"Hello from CyxCloud!\n",
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("etag").unwrap(),
        format!("\"{}\"", md5_hex(b"Hello from CyxCloud!\n"))
    );
    let r = raw_send(addr, "GET", "/s3/mybucket?list-type=2", &[], b"", None);
    assert_eq!(r.status, 200);
    assert!(r.text().contains("<Key>testfile.txt</Key>"), "{}", r.text());
    let r = raw_send(
        addr,
        "GET",
        "/s3/mybucket?list-type=2&prefix=data/",
        &[],
        b"",
        None,
    );
    assert!(!r.text().contains("<Key>"), "{}", r.text());
    let r = raw_send(
        addr,
        "GET",
        "/s3/mybucket?list-type=2&max-keys=100",
        &[],
        b"",
        None,
    );
    assert!(r.text().contains("<MaxKeys>100</MaxKeys>"), "{}", r.text());
    let r = raw_send(addr, "GET", "/s3/mybucket/testfile.txt", &[], b"", None);
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"Hello from CyxCloud!\n"[..])
    );
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let r = raw_send(
        addr,
        "GET",
        "/s3/mybucket/testfile.txt",
        &h(&[("range", "bytes=0-4")]),
        b"",
        None,
    );
    assert_eq!((r.status, r.body.as_slice()), (206, &b"Hello"[..]));
    let r = raw_send(addr, "HEAD", "/s3/mybucket/testfile.txt", &[], b"", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("21"));
    let r = raw_send(addr, "DELETE", "/s3/mybucket/testfile.txt", &[], b"", None);
    assert_eq!(r.status, 204);
    let r = raw_send(addr, "GET", "/s3/mybucket/testfile.txt", &[], b"", None);
    assert_eq!((r.status, r.code().as_str()), (404, "NoSuchKey"));
    let r = raw_send(addr, "DELETE", "/s3/mybucket", &[], b"", None);
    assert_eq!(r.status, 204);
    // The gateway's own routes are untouched.
    let r = raw_send(addr, "GET", "/health", &[], b"", None);
    assert_eq!(r.status, 200);
    let r = raw_send(addr, "GET", "/api/info", &[], b"", None);
    assert!(r.text().contains("\"s3\":true"), "{}", r.text());
    // Path-style at the root works the same.
    let r = raw_send(addr, "PUT", "/rootstyle", &[], b"", None);
    assert_eq!(r.status, 200, "{}", r.text());
}

fn signed_streaming(addr: SocketAddr) {
    let body = data(200_000, 11);
    let pieces: Vec<&[u8]> = body.chunks(65536).collect();
    for (tamper, key) in [(false, "streamed"), (true, "tampered")] {
        let path = format!("/rootstyle/{key}");
        let len = body.len().to_string();
        let (mut hs, seed, skey, ds) = signed_headers(
            addr,
            "PUT",
            &path,
            "",
            &[
                ("content-encoding", "aws-chunked"),
                ("x-amz-decoded-content-length", &len),
            ],
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
            SECRET_KEY,
            now_secs(),
        );
        let framed = signed_chunks(&pieces, &seed, &skey, &ds, tamper);
        hs.push(("content-length".into(), framed.len().to_string()));
        let r = raw_send(addr, "PUT", &path, &hs, &framed, None);
        if tamper {
            assert_eq!(
                (r.status, r.code().as_str()),
                (403, "SignatureDoesNotMatch"),
                "{}",
                r.text()
            );
            let g = signed_send(addr, "GET", &path, "", &[], b"");
            assert_eq!(
                g.status, 404,
                "a tampered upload must not create the object"
            );
        } else {
            assert_eq!(r.status, 200, "{}", r.text());
            let g = signed_send(addr, "GET", &path, "", &[], b"");
            assert_eq!(g.body, body);
        }
    }
    // Declared decoded length disagrees with the chunks.
    let path = "/rootstyle/short";
    let (mut hs, seed, skey, ds) = signed_headers(
        addr,
        "PUT",
        path,
        "",
        &[
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "200001"),
        ],
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        SECRET_KEY,
        now_secs(),
    );
    let framed = signed_chunks(&pieces, &seed, &skey, &ds, false);
    hs.push(("content-length".into(), framed.len().to_string()));
    let r = raw_send(addr, "PUT", path, &hs, &framed, None);
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "IncompleteBody"),
        "{}",
        r.text()
    );
    assert_eq!(signed_send(addr, "HEAD", path, "", &[], b"").status, 404);
    // The seed signature itself is checked.
    let (mut hs, ..) = signed_headers(
        addr,
        "PUT",
        path,
        "",
        &[
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "200000"),
        ],
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "wrong-secret-123",
        now_secs(),
    );
    hs.push(("content-length".into(), framed.len().to_string()));
    let r = raw_send(addr, "PUT", path, &hs, &framed, None);
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "SignatureDoesNotMatch")
    );
}

fn unsigned_trailer(addr: SocketAddr) {
    let body = data(100_000, 12);
    let frame = |trailer: &str| {
        let mut out = Vec::new();
        for p in body.chunks(40_000) {
            out.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
            out.extend_from_slice(p);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("0\r\n{trailer}\r\n").as_bytes());
        out
    };
    for (good, key) in [(true, "trailer-ok"), (false, "trailer-bad")] {
        let path = format!("/rootstyle/{key}");
        let crc = if good {
            crc32_b64(&body)
        } else {
            crc32_b64(b"other")
        };
        let framed = frame(&format!("x-amz-checksum-crc32:{crc}\r\n"));
        let (mut hs, ..) = signed_headers(
            addr,
            "PUT",
            &path,
            "",
            &[
                ("content-encoding", "aws-chunked"),
                ("x-amz-decoded-content-length", &body.len().to_string()),
                ("x-amz-trailer", "x-amz-checksum-crc32"),
            ],
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
            SECRET_KEY,
            now_secs(),
        );
        hs.push(("content-length".into(), framed.len().to_string()));
        let r = raw_send(addr, "PUT", &path, &hs, &framed, None);
        if good {
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.header("x-amz-checksum-crc32"), Some(crc.as_str()));
            assert_eq!(signed_send(addr, "GET", &path, "", &[], b"").body, body);
        } else {
            assert_eq!(
                (r.status, r.code().as_str()),
                (400, "BadDigest"),
                "{}",
                r.text()
            );
            assert_eq!(signed_send(addr, "HEAD", &path, "", &[], b"").status, 404);
        }
    }
}

fn truncated_and_bad_bodies(addr: SocketAddr) {
    // The client dies half way through the body: nothing is created.
    let body = data(3_000_000, 13);
    let path = "/rootstyle/truncated";
    let (mut hs, ..) = signed_headers(
        addr,
        "PUT",
        path,
        "",
        &[],
        "UNSIGNED-PAYLOAD",
        SECRET_KEY,
        now_secs(),
    );
    hs.push(("content-length".into(), body.len().to_string()));
    let _ = raw_send(addr, "PUT", path, &hs, &body, Some(1_500_000));
    cyxcloud_testkit::wait_until(
        std::time::Duration::from_secs(10),
        "the truncated write to be dropped",
        || (signed_send(addr, "HEAD", path, "", &[], b"").status == 404).then_some(()),
    );
    let l = signed_send(
        addr,
        "GET",
        "/rootstyle",
        "list-type=2&prefix=trunc",
        &[],
        b"",
    );
    assert!(!l.text().contains("<Key>"), "{}", l.text());
    // The body does not match its signed SHA-256.
    let path = "/rootstyle/sha-mismatch";
    let (mut hs, ..) = signed_headers(
        addr,
        "PUT",
        path,
        "",
        &[],
        &sigv4::sha256_hex(b"something else"),
        SECRET_KEY,
        now_secs(),
    );
    hs.push(("content-length".into(), "5".into()));
    let r = raw_send(addr, "PUT", path, &hs, b"hello", None);
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "XAmzContentSHA256Mismatch")
    );
    assert_eq!(signed_send(addr, "HEAD", path, "", &[], b"").status, 404);
    // No length at all.
    let (mut hs, ..) = signed_headers(
        addr,
        "PUT",
        path,
        "",
        &[],
        "UNSIGNED-PAYLOAD",
        SECRET_KEY,
        now_secs(),
    );
    hs.push(("transfer-encoding".into(), "chunked".into()));
    let r = raw_send(addr, "PUT", path, &hs, b"5\r\nhello\r\n0\r\n\r\n", None);
    assert_eq!((r.status, r.code().as_str()), (411, "MissingContentLength"));
    // Larger than a single PUT may be.
    let (mut hs, ..) = signed_headers(
        addr,
        "PUT",
        path,
        "",
        &[],
        "UNSIGNED-PAYLOAD",
        SECRET_KEY,
        now_secs(),
    );
    hs.push(("content-length".into(), (6u64 << 30).to_string()));
    let r = raw_send(addr, "PUT", path, &hs, b"", Some(0));
    assert_eq!((r.status, r.code().as_str()), (400, "EntityTooLarge"));
}

/// The base64 Content-MD5 of `b`.
fn content_md5(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(hex::decode(md5_hex(b)).unwrap())
}

fn malformed_requests(addr: SocketAddr) {
    // DeleteObjects must carry Content-MD5 (or a checksum), and it must match.
    let list = b"<Delete><Object><Key>nothing</Key></Object></Delete>";
    let r = signed_send(addr, "POST", "/rootstyle", "delete", &[], list);
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "InvalidRequest"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("Content-MD5"), "{}", r.text());
    let wrong = content_md5(b"another body");
    let r = signed_send(
        addr,
        "POST",
        "/rootstyle",
        "delete",
        &[("content-md5", &wrong)],
        list,
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "BadDigest"),
        "{}",
        r.text()
    );
    let right = content_md5(list);
    let r = signed_send(
        addr,
        "POST",
        "/rootstyle",
        "delete",
        &[("content-md5", &right)],
        list,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for bad in [
        &b"<Delete><Object><Key>a</Key></Delete>"[..],
        b"not xml",
        b"<Delete></Delete>",
        b"<Other/>",
    ] {
        let md5 = content_md5(bad);
        let r = signed_send(
            addr,
            "POST",
            "/rootstyle",
            "delete",
            &[("content-md5", &md5)],
            bad,
        );
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "MalformedXML"),
            "{}",
            r.text()
        );
    }
    let r = signed_send(
        addr,
        "POST",
        "/rootstyle/k",
        "uploadId=whatever",
        &[],
        b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber></Part></CompleteMultipartUpload>",
    );
    assert_eq!(r.code(), "NoSuchUpload");
    // Missing x-amz-content-sha256 on header auth.
    let (hs, ..) = signed_headers(
        addr,
        "GET",
        "/",
        "",
        &[],
        "UNSIGNED-PAYLOAD",
        SECRET_KEY,
        now_secs(),
    );
    let hs: Vec<(String, String)> = hs
        .into_iter()
        .filter(|(k, _)| k != "x-amz-content-sha256")
        .collect();
    let r = raw_send(addr, "GET", "/", &hs, b"", None);
    assert_eq!(r.status, 400, "{}", r.text());
    // Clock skew.
    let (hs, ..) = signed_headers(
        addr,
        "GET",
        "/",
        "",
        &[],
        "UNSIGNED-PAYLOAD",
        SECRET_KEY,
        now_secs() - 3600,
    );
    let r = raw_send(addr, "GET", "/", &hs, b"", None);
    assert_eq!((r.status, r.code().as_str()), (403, "RequestTimeTooSkewed"));
    // Malformed authorization headers.
    for a in [
        "AWS4-HMAC-SHA256 Credential=x",
        "AWS4-HMAC-SHA256 Credential=AK/2013/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00",
        "AWS AKIA:c2ln",
        "Bearer token",
    ] {
        let r = raw_send(
            addr,
            "GET",
            "/",
            &h(&[("authorization", a), ("x-amz-date", "20200101T000000Z")]),
            b"",
            None,
        );
        assert!(
            r.status == 400 || r.status == 403,
            "{a}: {} {}",
            r.status,
            r.text()
        );
        assert!(!r.code().is_empty());
    }
    // Oversized header section.
    let big = "v".repeat(9000);
    let r = raw_send(
        addr,
        "GET",
        "/rootstyle/k",
        &h(&[("x-big", &big)]),
        b"",
        None,
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "RequestHeaderSectionTooLarge")
    );
    // Unknown method and operation.
    let r = signed_send(addr, "PATCH", "/rootstyle/k", "", &[], b"");
    assert_eq!((r.status, r.code().as_str()), (405, "MethodNotAllowed"));
    let r = signed_send(addr, "POST", "/rootstyle/k", "", &[], b"");
    assert_eq!((r.status, r.code().as_str()), (501, "NotImplemented"));
    let r = signed_send(addr, "GET", "/rootstyle", "website", &[], b"");
    assert_eq!((r.status, r.code().as_str()), (501, "NotImplemented"));
    // A bad percent escape in the key.
    let r = raw_send(addr, "GET", "/rootstyle/%zz", &[], b"", None);
    assert_eq!((r.status, r.code().as_str()), (400, "InvalidArgument"));
}

fn virtual_host(addr: SocketAddr) {
    let host = format!("rootstyle.s3.test:{}", addr.port());
    // An anonymous request (loopback admin) addressed by Host only.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    let req = format!(
        "PUT /vhost-key HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-length: 12\r\n\r\nvirtual host"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let r = signed_send(addr, "GET", "/rootstyle/vhost-key", "", &[], b"");
    assert_eq!(r.body, b"virtual host");
}
