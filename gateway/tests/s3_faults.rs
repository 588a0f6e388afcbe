//! Node failures under the S3 API, default settings: objects (inline, one chunk, many chunks,
//! multipart, copies) written to 18 nodes; 4 nodes killed; the rebalancer restores every chunk
//! on the 14 left; 4 other nodes killed: every object still downloads with identical bytes,
//! whole and in ranges, and listings and heads are unaffected.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use super::{cluster, data, md5_hex, sdk};

const MIB: usize = 1 << 20;

#[test]
fn s3_objects_survive_four_dead_nodes_repair_and_four_more() {
    let mut cl = cluster(18, &[]);
    let endpoint = cl.http_url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = sdk(&endpoint);
    let b = "survivors";
    let mut objects: Vec<(String, Vec<u8>)> = Vec::new();
    rt.block_on(async {
        c.create_bucket().bucket(b).send().await.unwrap();
        for (k, n) in [
            ("empty", 0usize),
            ("inline", 1000),
            ("one-chunk", 700_000),
            ("many-chunks", 9 * MIB + 5),
        ] {
            let d = data(n, n as u64 + 99);
            c.put_object()
                .bucket(b)
                .key(k)
                .body(ByteStream::from(d.clone()))
                .send()
                .await
                .unwrap();
            objects.push((k.to_string(), d));
        }
        // A multipart object and a metadata-only copy of it.
        let up = c
            .create_multipart_upload()
            .bucket(b)
            .key("multi")
            .send()
            .await
            .unwrap();
        let id = up.upload_id().unwrap().to_string();
        let parts = [data(6 * MIB, 1), data(2 * MIB + 1, 2)];
        let mut done = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let e = c
                .upload_part()
                .bucket(b)
                .key("multi")
                .upload_id(&id)
                .part_number(i as i32 + 1)
                .body(ByteStream::from(p.clone()))
                .send()
                .await
                .unwrap();
            done.push(
                CompletedPart::builder()
                    .part_number(i as i32 + 1)
                    .e_tag(e.e_tag().unwrap())
                    .build(),
            );
        }
        c.complete_multipart_upload()
            .bucket(b)
            .key("multi")
            .upload_id(&id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(done))
                    .build(),
            )
            .send()
            .await
            .unwrap();
        objects.push(("multi".into(), parts.concat()));
        c.copy_object()
            .bucket(b)
            .key("multi-copy")
            .copy_source(format!("{b}/multi"))
            .send()
            .await
            .unwrap();
        objects.push(("multi-copy".into(), parts.concat()));
    });
    // A write returns at k+m-1 shards: the rebalancer stores the slow ones first.
    cl.wait_redundant(std::time::Duration::from_secs(120));
    for i in [0, 4, 8, 12] {
        cl.kill_node(i);
    }
    cl.wait_repaired(4, std::time::Duration::from_secs(180));
    for i in [2, 6, 10, 15] {
        cl.kill_node(i);
    }
    rt.block_on(async {
        for (k, want) in &objects {
            let got = c
                .get_object()
                .bucket(b)
                .key(k)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {k} with 8 nodes dead: {e:?}"))
                .body
                .collect()
                .await
                .unwrap()
                .into_bytes();
            assert_eq!(got.len(), want.len(), "{k}");
            assert_eq!(md5_hex(&got), md5_hex(want), "{k} with 8 of 18 nodes dead");
            if want.len() > 10 {
                let (s, e) = (want.len() / 3, want.len() / 3 + want.len() / 4);
                let part = c
                    .get_object()
                    .bucket(b)
                    .key(k)
                    .range(format!("bytes={s}-{}", e - 1))
                    .send()
                    .await
                    .unwrap()
                    .body
                    .collect()
                    .await
                    .unwrap()
                    .into_bytes();
                assert_eq!(&part[..], &want[s..e], "range of {k}");
            }
            let h = c.head_object().bucket(b).key(k).send().await.unwrap();
            assert_eq!(h.content_length(), Some(want.len() as i64));
        }
        let l = c.list_objects_v2().bucket(b).send().await.unwrap();
        assert_eq!(l.contents().len(), objects.len());
    });
}

/// An object that cannot be read is answered 503 `ServiceUnavailable` before any byte (not a
/// `200` with its Content-Length and no body); when it stops being readable mid-transfer, the
/// connection is cut short of its Content-Length, so no client takes it for complete.
#[test]
fn an_unreadable_object_is_a_503_before_any_byte_and_a_failure_mid_stream_cuts_the_connection() {
    use super::{CHUNK, now_secs, signed_headers, signed_send};
    use std::io::{Read, Write};
    let mut cl = cluster(7, &[]);
    let addr = cl.http_addr();
    assert_eq!(signed_send(addr, "PUT", "/fails", "", &[], b"").status, 200);
    let small = data(300_000, 5);
    assert_eq!(
        signed_send(addr, "PUT", "/fails/small", "", &[], &small).status,
        200
    );
    let big = data(32 * CHUNK as usize, 6);
    assert_eq!(
        signed_send(addr, "PUT", "/fails/big", "", &[], &big).status,
        200
    );

    // A GET of the big object: the head and the first bytes arrive; the client then reads
    // nothing while three of the seven nodes die (6 of each chunk's 14 shards: unreadable).
    let empty = cyxcloud_gateway::s3::sigv4::sha256_hex(b"");
    let (hs, ..) = signed_headers(
        addr,
        "GET",
        "/fails/big",
        "",
        &[],
        &empty,
        super::SECRET_KEY,
        now_secs(),
    );
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut req = format!("GET /fails/big HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (k, v) in &hs {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let head_end = loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed before the head");
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", big.len())),
        "{head}"
    );
    for i in 0..3 {
        cl.kill_node(i);
    }
    // The rest of the transfer ends early (EOF or reset), with a true prefix of the object.
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let body = &got[head_end..];
    assert!(
        body.len() < big.len(),
        "{} of {} bytes: the transfer was not cut",
        body.len(),
        big.len()
    );
    assert_eq!(body, &big[..body.len()]);

    // Now nothing of either object can be served: 503 with an S3 error, before any byte.
    for key in ["/fails/small", "/fails/big"] {
        let r = signed_send(addr, "GET", key, "", &[], b"");
        assert_eq!(r.status, 503, "{key}: {}", r.text());
        assert_eq!(r.code(), "ServiceUnavailable", "{key}: {}", r.text());
    }
}
