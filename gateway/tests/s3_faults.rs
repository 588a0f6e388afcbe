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
fn an_unreadable_object_is_a_503_before_any_byte_a_failure_mid_stream_cuts_the_connection_and_reads_resume_when_nodes_return()
 {
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
    // The gateway counts both 503s and the response it cut off (checked again at the end).
    assert_eq!(cl.server_errors(), (2, 1));
    cl.expect_server_errors(2, 1);
    // The nodes come back (same disks, same addresses): both objects read again, whole.
    for i in 0..3 {
        cl.start_node(i);
    }
    for i in 0..3 {
        cl.wait_registered(i);
    }
    for (key, want) in [("/fails/small", &small), ("/fails/big", &big)] {
        let r = signed_send(addr, "GET", key, "", &[], b"");
        assert_eq!(
            r.status,
            200,
            "{key} after the nodes returned: {}",
            r.text()
        );
        assert!(r.body == *want, "{key} after the nodes returned differs");
    }
}

/// A node that dies, and one that hangs (SIGSTOP, its sockets left open), while PUTs are under
/// way: each write either succeeds and reads back whole, or fails and leaves nothing visible;
/// never a truncated object.
#[test]
fn a_node_killed_or_hung_mid_write_leaves_each_object_whole_or_absent() {
    let mut cl = cluster(9, &[]);
    let endpoint = cl.http_url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = sdk(&endpoint);
    let b = "midwrite";
    rt.block_on(c.create_bucket().bucket(b).send())
        .expect("bucket");
    for (round, fault) in ["kill", "hang"].into_iter().enumerate() {
        let victim = 1 + round * 3;
        let objects: Vec<(String, Vec<u8>)> = (0..3)
            .map(|i| {
                (
                    format!("{fault}/obj{i}"),
                    data(6 * MIB + 1000 * i, 300 + (round * 10 + i) as u64),
                )
            })
            .collect();
        let before = cl.node_metric_sum("cyxcloud_bytes_uploaded");
        let puts: Vec<_> = objects
            .iter()
            .map(|(k, d)| {
                let c = c.clone();
                let (k, d) = (k.clone(), d.clone());
                rt.spawn(async move {
                    c.put_object()
                        .bucket(b)
                        .key(&k)
                        .body(ByteStream::from(d))
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("{e:?}"))
                })
            })
            .collect();
        // Strike once the nodes have received a first megabyte of these writes.
        cyxcloud_testkit::wait_until(
            std::time::Duration::from_secs(60),
            "the writes to reach the nodes",
            || (cl.node_metric_sum("cyxcloud_bytes_uploaded") >= before + MIB as u64).then_some(()),
        );
        match fault {
            "kill" => cl.kill_node(victim),
            _ => cl.pause_node(victim),
        }
        let results: Vec<Result<(), String>> = rt.block_on(async {
            let mut out = Vec::new();
            for p in puts {
                out.push(p.await.expect("put task"));
            }
            out
        });
        for ((k, want), r) in objects.iter().zip(&results) {
            let got = rt.block_on(c.get_object().bucket(b).key(k).send());
            match r {
                Ok(()) => {
                    let got = rt
                        .block_on(got.expect("a stored object reads").body.collect())
                        .unwrap()
                        .into_bytes();
                    assert!(
                        got.len() == want.len() && md5_hex(&got) == md5_hex(want),
                        "{k}: {} bytes read back after a successful PUT ({fault})",
                        got.len()
                    );
                }
                Err(e) => {
                    // A shortfall caused by a dead node is the cluster's, to retry: never a
                    // client-side 4xx such as PreconditionFailed.
                    assert!(
                        !e.contains("PreconditionFailed") && !e.contains("status: 4"),
                        "{k} failed with a client-side answer ({fault}): {e}"
                    );
                    let status = got
                        .err()
                        .and_then(|e| e.raw_response().map(|r| r.status().as_u16()));
                    assert_eq!(
                        status,
                        Some(404),
                        "{k} failed ({e}) yet is visible ({fault})"
                    );
                }
            }
        }
        eprintln!("{fault}: {results:?}");
        if fault == "hang" {
            cl.resume_node(victim);
        }
    }
    // The listing holds exactly the objects whose PUT succeeded, each at its full size.
    let listed = rt.block_on(c.list_objects_v2().bucket(b).send()).unwrap();
    for o in listed.contents() {
        assert!(
            o.size().unwrap_or(0) >= 6 * MIB as i64,
            "a truncated object is listed: {o:?}"
        );
    }
    // A failed write under a dying node may have been answered 503 (and retried by the SDK);
    // what this test holds the gateway to is the outcome above.
    let seen = cl.server_errors();
    cl.expect_server_errors(seen.0, seen.1);
}

/// The gateway killed (SIGKILL) and restarted between the parts of a multipart upload: the
/// upload and its stored parts survive it, the rest of the parts follow, and the completed
/// object is whole.
#[test]
fn a_multipart_upload_survives_a_gateway_restart() {
    let mut cl = cluster(7, &[]);
    let endpoint = cl.http_url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = sdk(&endpoint);
    let (b, k) = ("restarts", "big/multi.bin");
    let parts = [data(5 * MIB, 71), data(5 * MIB + 3, 72), data(1234, 73)];
    let upload_part = |c: &aws_sdk_s3::Client, id: &str, n: usize| {
        let r = rt
            .block_on(
                c.upload_part()
                    .bucket(b)
                    .key(k)
                    .upload_id(id)
                    .part_number(n as i32 + 1)
                    .body(ByteStream::from(parts[n].clone()))
                    .send(),
            )
            .unwrap_or_else(|e| panic!("part {}: {e:?}", n + 1));
        CompletedPart::builder()
            .part_number(n as i32 + 1)
            .e_tag(r.e_tag().unwrap())
            .build()
    };
    rt.block_on(c.create_bucket().bucket(b).send()).unwrap();
    let id = rt
        .block_on(c.create_multipart_upload().bucket(b).key(k).send())
        .unwrap()
        .upload_id()
        .unwrap()
        .to_string();
    let mut done = vec![upload_part(&c, &id, 0)];
    cl.kill_gateway();
    cl.start_gateway();
    // A new client: the old one's connections died with the gateway.
    let c = sdk(&endpoint);
    let listed = rt
        .block_on(c.list_parts().bucket(b).key(k).upload_id(&id).send())
        .expect("the upload is still there after the restart");
    assert_eq!(listed.parts().len(), 1, "{listed:?}");
    done.push(upload_part(&c, &id, 1));
    cl.kill_gateway();
    cl.start_gateway();
    let c = sdk(&endpoint);
    done.push(upload_part(&c, &id, 2));
    rt.block_on(
        c.complete_multipart_upload()
            .bucket(b)
            .key(k)
            .upload_id(&id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(done))
                    .build(),
            )
            .send(),
    )
    .unwrap();
    let got = rt.block_on(super::get_bytes(&c, b, k));
    let want = parts.concat();
    assert!(
        got.len() == want.len() && md5_hex(&got) == md5_hex(&want),
        "the completed object differs ({} of {} bytes)",
        got.len(),
        want.len()
    );
}

/// A user over quota: the PUT that would exceed it is refused with 403 `QuotaExceeded` and
/// leaves nothing visible; once an object is deleted the same PUT succeeds.
#[test]
fn a_put_over_quota_is_refused_cleanly_and_fits_once_space_is_freed() {
    let cl = cluster(7, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let user = rt.block_on(async {
        let mut ctl =
            crate::cluster::control(&cl.grpc_url(), super::ACCESS_KEY, super::SECRET_KEY).await;
        ctl.create_user(cyxcloud_proto::v1::CreateUserRequest {
            name: "erin".into(),
            quota_bytes: 3 * MIB as u64,
            admin: false,
        })
        .await
        .unwrap()
        .into_inner()
    });
    let c = super::sdk_with(&cl.http_url(), &user.access_key, &user.secret_key, |b| b);
    let b = "erins";
    let (one, two) = (data(2 * MIB, 91), data(2 * MIB, 92));
    rt.block_on(async {
        c.create_bucket().bucket(b).send().await.unwrap();
        c.put_object()
            .bucket(b)
            .key("one")
            .body(ByteStream::from(one.clone()))
            .send()
            .await
            .unwrap();
        let e = c
            .put_object()
            .bucket(b)
            .key("two")
            .body(ByteStream::from(two.clone()))
            .send()
            .await
            .unwrap_err();
        let status = e.raw_response().map(|r| r.status().as_u16());
        let code = e
            .as_service_error()
            .and_then(|s| aws_sdk_s3::error::ProvideErrorMetadata::code(s).map(str::to_string));
        assert_eq!(
            (status, code.as_deref()),
            (Some(403), Some("QuotaExceeded")),
            "{e:?}"
        );
        let head = c
            .head_object()
            .bucket(b)
            .key("two")
            .send()
            .await
            .unwrap_err();
        assert_eq!(head.raw_response().map(|r| r.status().as_u16()), Some(404));
        let l = c.list_objects_v2().bucket(b).send().await.unwrap();
        let keys: Vec<_> = l.contents().iter().filter_map(|o| o.key()).collect();
        assert_eq!(keys, ["one"]);
        c.delete_object().bucket(b).key("one").send().await.unwrap();
        c.put_object()
            .bucket(b)
            .key("two")
            .body(ByteStream::from(two.clone()))
            .send()
            .await
            .expect("the PUT fits once space is freed");
        assert!(super::get_bytes(&c, b, "two").await == two);
    });
}
