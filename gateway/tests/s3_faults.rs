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
