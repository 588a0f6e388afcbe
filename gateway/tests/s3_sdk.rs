//! Every S3 operation and its error paths through the official `aws-sdk-s3`, against a
//! gateway with 7 real nodes.

use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, Delete, MetadataDirective,
    ObjectIdentifier, Tag, Tagging,
};
use base64::Engine;
use cyxcloud_testkit::cluster::{ACCESS_KEY, SECRET_KEY};

use super::{cluster, data, get_bytes, md5_hex, sdk, sdk_with};

const MIB: usize = 1 << 20;

/// `(S3 code, HTTP status)` of a failed call.
fn err<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug>(
    r: Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
) -> (String, u16) {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => {
            let status = e.raw_response().map_or(0, |r| r.status().as_u16());
            let code = e.code().unwrap_or("").to_string();
            (code, status)
        }
    }
}

async fn put(c: &Client, b: &str, k: &str, body: &[u8]) -> String {
    c.put_object()
        .bucket(b)
        .key(k)
        .body(ByteStream::from(body.to_vec()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("put {b}/{k}: {e:?}"))
        .e_tag()
        .unwrap()
        .to_string()
}

#[test]
fn s3_operations_through_aws_sdk() {
    let cl = cluster(7, &[]);
    let endpoint = cl.http_url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = sdk(&endpoint);
        buckets(&c).await;
        objects(&c).await;
        keys_and_directories(&c).await;
        listing(&c).await;
        copy_and_batch_delete(&c).await;
        multipart(&c).await;
        tagging(&c).await;
        presigned(&c, &endpoint).await;
        auth_errors(&endpoint).await;
        checksums_and_digests(&c).await;
        unsupported_operations(&c).await;
        // The prefix route signs and routes like the root one.
        let c2 = sdk(&format!("{endpoint}/s3/"));
        put(&c2, "sdk-bucket", "via-prefix", b"prefix route").await;
        assert_eq!(
            get_bytes(&c, "sdk-bucket", "via-prefix").await,
            b"prefix route"
        );
    });
}

async fn buckets(c: &Client) {
    c.create_bucket().bucket("sdk-bucket").send().await.unwrap();
    let (code, status) = err(c.create_bucket().bucket("sdk-bucket").send().await);
    assert_eq!((code.as_str(), status), ("BucketAlreadyOwnedByYou", 409));
    for bad in [
        "health",
        "api",
        "ws",
        "metrics",
        "s3",
        "ab",
        "Upper-Case",
        "-x-y",
    ] {
        let (code, status) = err(c.create_bucket().bucket(bad).send().await);
        assert_eq!((code.as_str(), status), ("InvalidBucketName", 400), "{bad}");
    }
    c.head_bucket().bucket("sdk-bucket").send().await.unwrap();
    let (_, status) = err(c.head_bucket().bucket("no-such-bucket").send().await);
    assert_eq!(status, 404);
    let l = c.list_buckets().send().await.unwrap();
    let names: Vec<&str> = l.buckets().iter().filter_map(|b| b.name()).collect();
    assert!(names.contains(&"sdk-bucket"), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with('.')),
        "staging bucket listed: {names:?}"
    );
    let loc = c
        .get_bucket_location()
        .bucket("sdk-bucket")
        .send()
        .await
        .unwrap();
    assert!(
        loc.location_constraint()
            .is_none_or(|l| l.as_str().is_empty())
    );
    // Non-empty buckets are not deleted.
    c.create_bucket().bucket("sdk-doomed").send().await.unwrap();
    put(c, "sdk-doomed", "x", b"x").await;
    let (code, status) = err(c.delete_bucket().bucket("sdk-doomed").send().await);
    assert_eq!((code.as_str(), status), ("BucketNotEmpty", 409));
    c.delete_object()
        .bucket("sdk-doomed")
        .key("x")
        .send()
        .await
        .unwrap();
    c.delete_bucket().bucket("sdk-doomed").send().await.unwrap();
    let (code, status) = err(c.delete_bucket().bucket("sdk-doomed").send().await);
    assert_eq!((code.as_str(), status), ("NoSuchBucket", 404));
    let (code, _) = err(c.list_objects_v2().bucket("sdk-doomed").send().await);
    assert_eq!(code, "NoSuchBucket");
}

async fn objects(c: &Client) {
    let b = "sdk-bucket";
    for (k, n) in [
        ("empty", 0usize),
        ("one-kib", 1024),
        ("five-mib", 5 * MIB + 123),
    ] {
        let body = data(n, n as u64);
        let etag = c
            .put_object()
            .bucket(b)
            .key(k)
            .content_type("application/x-test")
            .metadata("colour", "blue")
            .metadata("size-class", k)
            .cache_control("max-age=60")
            .content_disposition("attachment")
            .body(ByteStream::from(body.clone()))
            .send()
            .await
            .unwrap()
            .e_tag()
            .unwrap()
            .to_string();
        assert_eq!(
            etag,
            format!("\"{}\"", md5_hex(&body)),
            "ETag of {k} is its MD5"
        );
        assert_eq!(get_bytes(c, b, k).await, body, "{k}");
        let h = c.head_object().bucket(b).key(k).send().await.unwrap();
        assert_eq!(h.content_length(), Some(n as i64));
        assert_eq!(h.e_tag(), Some(etag.as_str()));
        assert_eq!(h.content_type(), Some("application/x-test"));
        assert_eq!(h.cache_control(), Some("max-age=60"));
        assert_eq!(h.content_disposition(), Some("attachment"));
        let m = h.metadata().unwrap();
        assert_eq!(m.get("colour").map(String::as_str), Some("blue"));
        assert_eq!(m.get("size-class").map(String::as_str), Some(k));
        assert!(h.last_modified().is_some());
    }
    // Ranges: inside a chunk, across chunks, suffix, open-ended; unsatisfiable.
    let body = data(5 * MIB + 123, (5 * MIB + 123) as u64);
    for (range, want) in [
        ("bytes=0-9", 0..10),
        ("bytes=1048570-1048585", 1_048_570..1_048_586),
        ("bytes=100-3145828", 100..3_145_829),
        ("bytes=-100", body.len() - 100..body.len()),
        ("bytes=5242000-", 5_242_000..body.len()),
    ] {
        let o = c
            .get_object()
            .bucket(b)
            .key("five-mib")
            .range(range)
            .send()
            .await
            .unwrap();
        assert_eq!(
            o.content_length(),
            Some((want.end - want.start) as i64),
            "{range}"
        );
        assert_eq!(
            o.content_range(),
            Some(format!("bytes {}-{}/{}", want.start, want.end - 1, body.len()).as_str())
        );
        let got = o.body.collect().await.unwrap().into_bytes();
        assert_eq!(&got[..], &body[want.clone()], "{range}");
    }
    let (code, status) = err(c
        .get_object()
        .bucket(b)
        .key("five-mib")
        .range("bytes=99999999-")
        .send()
        .await);
    assert_eq!((code.as_str(), status), ("InvalidRange", 416));
    // Conditional requests.
    let h = c
        .head_object()
        .bucket(b)
        .key("one-kib")
        .send()
        .await
        .unwrap();
    let etag = h.e_tag().unwrap().to_string();
    let lm = SystemTime::try_from(*h.last_modified().unwrap()).unwrap();
    c.get_object()
        .bucket(b)
        .key("one-kib")
        .if_match(&etag)
        .send()
        .await
        .unwrap();
    let (code, status) = err(c
        .get_object()
        .bucket(b)
        .key("one-kib")
        .if_match("\"nope\"")
        .send()
        .await);
    assert_eq!((code.as_str(), status), ("PreconditionFailed", 412));
    let (_, status) = err(c
        .get_object()
        .bucket(b)
        .key("one-kib")
        .if_none_match(&etag)
        .send()
        .await);
    assert_eq!(status, 304);
    let (_, status) = err(c
        .get_object()
        .bucket(b)
        .key("one-kib")
        .if_modified_since((lm + Duration::from_secs(5)).into())
        .send()
        .await);
    assert_eq!(status, 304);
    c.get_object()
        .bucket(b)
        .key("one-kib")
        .if_modified_since((lm - Duration::from_secs(5)).into())
        .send()
        .await
        .unwrap();
    let (_, status) = err(c
        .get_object()
        .bucket(b)
        .key("one-kib")
        .if_unmodified_since((lm - Duration::from_secs(5)).into())
        .send()
        .await);
    assert_eq!(status, 412);
    let (_, status) = err(c
        .head_object()
        .bucket(b)
        .key("one-kib")
        .if_none_match(&etag)
        .send()
        .await);
    assert_eq!(status, 304);
    // Conditional writes.
    let (code, status) = err(c
        .put_object()
        .bucket(b)
        .key("one-kib")
        .if_none_match("*")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await);
    assert_eq!((code.as_str(), status), ("PreconditionFailed", 412));
    c.put_object()
        .bucket(b)
        .key("cond-new")
        .if_none_match("*")
        .body(ByteStream::from_static(b"first"))
        .send()
        .await
        .unwrap();
    let (_, status) = err(c
        .put_object()
        .bucket(b)
        .key("one-kib")
        .if_match("\"0000\"")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await);
    assert_eq!(status, 412);
    // Overwrite, delete, missing keys.
    put(c, b, "cond-new", b"second").await;
    assert_eq!(get_bytes(c, b, "cond-new").await, b"second");
    c.delete_object()
        .bucket(b)
        .key("cond-new")
        .send()
        .await
        .unwrap();
    let (code, status) = err(c.get_object().bucket(b).key("cond-new").send().await);
    assert_eq!((code.as_str(), status), ("NoSuchKey", 404));
    let (_, status) = err(c.head_object().bucket(b).key("cond-new").send().await);
    assert_eq!(status, 404);
    c.delete_object()
        .bucket(b)
        .key("never-existed")
        .send()
        .await
        .unwrap();
    let (code, _) = err(c
        .get_object()
        .bucket("no-such-bucket")
        .key("k")
        .send()
        .await);
    assert_eq!(code, "NoSuchBucket");
    // User metadata is limited to 2 KiB.
    let (code, status) = err(c
        .put_object()
        .bucket(b)
        .key("big-meta")
        .metadata("m", "x".repeat(2100))
        .body(ByteStream::from_static(b"x"))
        .send()
        .await);
    assert_eq!((code.as_str(), status), ("MetadataTooLarge", 400));
}

async fn keys_and_directories(c: &Client) {
    let b = "sdk-bucket";
    for k in [
        "sp ace/ünï côdé/+plus&amp=eq?q#h%25",
        "a/b/c/d/e/deep.txt",
        "~tilde!*'()",
    ] {
        put(c, b, k, k.as_bytes()).await;
        assert_eq!(get_bytes(c, b, k).await, k.as_bytes(), "{k}");
    }
    for bad in ["a//b", "./x", "a/../b", "a/./b", "/lead", "x/.."] {
        let (code, status) = err(c
            .put_object()
            .bucket(b)
            .key(bad)
            .body(ByteStream::from_static(b"x"))
            .send()
            .await);
        assert_eq!(status, 400, "{bad}: {code}");
    }
    let (code, status) = err(c
        .put_object()
        .bucket(b)
        .key("k".repeat(1025))
        .body(ByteStream::from_static(b"x"))
        .send()
        .await);
    assert_eq!((code.as_str(), status), ("KeyTooLongError", 400));
    // A zero-byte key ending in '/' is a directory; it lists as an object.
    c.put_object()
        .bucket(b)
        .key("folder/")
        .body(ByteStream::from_static(b""))
        .send()
        .await
        .unwrap();
    let h = c
        .head_object()
        .bucket(b)
        .key("folder/")
        .send()
        .await
        .unwrap();
    assert_eq!(h.content_length(), Some(0));
    let l = c
        .list_objects_v2()
        .bucket(b)
        .prefix("folder/")
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = l.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["folder/"]);
    let (code, status) = err(c
        .put_object()
        .bucket(b)
        .key("folder2/")
        .body(ByteStream::from_static(b"data"))
        .send()
        .await);
    assert_eq!((code.as_str(), status), ("InvalidArgument", 400));
    // A key cannot be an object and a prefix of other keys at once (the namespace is a tree).
    let (code, status) = err(c
        .put_object()
        .bucket(b)
        .key("a/b/c")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await);
    assert_eq!((code.as_str(), status), ("KeyConflict", 409));
    // Deleting the last key below implicit directories removes them.
    c.delete_object()
        .bucket(b)
        .key("a/b/c/d/e/deep.txt")
        .send()
        .await
        .unwrap();
    let l = c
        .list_objects_v2()
        .bucket(b)
        .prefix("a/")
        .send()
        .await
        .unwrap();
    assert_eq!(l.key_count(), Some(0));
    c.delete_object()
        .bucket(b)
        .key("folder/")
        .send()
        .await
        .unwrap();
    let (_, status) = err(c.head_object().bucket(b).key("folder/").send().await);
    assert_eq!(status, 404);
}

async fn listing(c: &Client) {
    let b = "sdk-list";
    c.create_bucket().bucket(b).send().await.unwrap();
    let mut keys = Vec::new();
    for d in ["alpha", "beta", "gamma"] {
        for i in 0..7 {
            keys.push(format!("{d}/file-{i:02}.txt"));
        }
    }
    keys.push("top-a".into());
    keys.push("top-b".into());
    keys.push("alpha.txt".into());
    for k in &keys {
        put(c, b, k, k.as_bytes()).await;
    }
    keys.sort();
    // Pagination across every key with v2 continuation tokens.
    let mut got = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut req = c.list_objects_v2().bucket(b).max_keys(4).fetch_owner(true);
        if let Some(t) = &token {
            req = req.continuation_token(t);
        }
        let page = req.send().await.unwrap();
        pages += 1;
        assert!(page.key_count().unwrap() <= 4);
        for o in page.contents() {
            got.push(o.key().unwrap().to_string());
            assert!(o.owner().is_some(), "fetch-owner");
            assert_eq!(o.size(), Some(o.key().unwrap().len() as i64));
        }
        if page.is_truncated() != Some(true) {
            break;
        }
        token = page.next_continuation_token().map(String::from);
    }
    assert_eq!(got, keys);
    assert_eq!(pages, keys.len().div_ceil(4));
    // Delimiter: common prefixes and top-level keys.
    let l = c
        .list_objects_v2()
        .bucket(b)
        .delimiter("/")
        .send()
        .await
        .unwrap();
    let cps: Vec<&str> = l
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    assert_eq!(cps, ["alpha/", "beta/", "gamma/"]);
    let top: Vec<&str> = l.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(top, ["alpha.txt", "top-a", "top-b"]);
    assert!(
        l.contents()[0].owner().is_none(),
        "no owner without fetch-owner"
    );
    // Prefix + delimiter, and a partial prefix.
    let l = c
        .list_objects_v2()
        .bucket(b)
        .prefix("beta/file-0")
        .delimiter("/")
        .send()
        .await
        .unwrap();
    assert_eq!(l.contents().len(), 7);
    let l = c
        .list_objects_v2()
        .bucket(b)
        .prefix("al")
        .delimiter("/")
        .send()
        .await
        .unwrap();
    let cps: Vec<&str> = l
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    assert_eq!(cps, ["alpha/"]);
    assert_eq!(l.contents().len(), 1);
    // Pagination over common prefixes.
    let l = c
        .list_objects_v2()
        .bucket(b)
        .delimiter("/")
        .max_keys(2)
        .send()
        .await
        .unwrap();
    assert_eq!(l.is_truncated(), Some(true));
    let next = c
        .list_objects_v2()
        .bucket(b)
        .delimiter("/")
        .max_keys(10)
        .continuation_token(l.next_continuation_token().unwrap())
        .send()
        .await
        .unwrap();
    let rest: Vec<String> = next
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix().map(String::from))
        .chain(
            next.contents()
                .iter()
                .filter_map(|o| o.key().map(String::from)),
        )
        .collect();
    assert_eq!(rest.len(), 4, "{rest:?}");
    // start-after.
    let l = c
        .list_objects_v2()
        .bucket(b)
        .start_after("gamma/file-04.txt")
        .send()
        .await
        .unwrap();
    let ks: Vec<&str> = l.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(
        ks,
        ["gamma/file-05.txt", "gamma/file-06.txt", "top-a", "top-b"]
    );
    // max-keys 0 and a bad token.
    let l = c
        .list_objects_v2()
        .bucket(b)
        .max_keys(0)
        .send()
        .await
        .unwrap();
    assert_eq!(l.key_count(), Some(0));
    let (code, status) = err(c
        .list_objects_v2()
        .bucket(b)
        .continuation_token("!!bad")
        .send()
        .await);
    assert_eq!((code.as_str(), status), ("InvalidArgument", 400));
    // v1 with markers.
    let mut got = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let mut req = c.list_objects().bucket(b).max_keys(5);
        if let Some(m) = &marker {
            req = req.marker(m);
        }
        let page = req.send().await.unwrap();
        for o in page.contents() {
            got.push(o.key().unwrap().to_string());
            assert!(o.owner().is_some(), "v1 lists owners");
        }
        if page.is_truncated() != Some(true) {
            break;
        }
        marker = page
            .next_marker()
            .map(String::from)
            .or_else(|| got.last().cloned());
    }
    assert_eq!(got, keys);
}

async fn copy_and_batch_delete(c: &Client) {
    let b = "sdk-bucket";
    let body = data(3 * MIB + 7, 77);
    let etag = c
        .put_object()
        .bucket(b)
        .key("copy-src")
        .content_type("text/x-src")
        .metadata("origin", "src")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap()
        .to_string();
    let r = c
        .copy_object()
        .bucket(b)
        .key("copy-dst")
        .copy_source(format!("{b}/copy-src"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.copy_object_result().unwrap().e_tag(), Some(etag.as_str()));
    assert_eq!(get_bytes(c, b, "copy-dst").await, body);
    let h = c
        .head_object()
        .bucket(b)
        .key("copy-dst")
        .send()
        .await
        .unwrap();
    assert_eq!(h.content_type(), Some("text/x-src"));
    assert_eq!(
        h.metadata().unwrap().get("origin").map(String::as_str),
        Some("src")
    );
    // REPLACE sets new metadata; a copy to itself needs a change.
    c.copy_object()
        .bucket(b)
        .key("copy-src")
        .copy_source(format!("{b}/copy-src"))
        .metadata_directive(MetadataDirective::Replace)
        .metadata("origin", "replaced")
        .content_type("text/x-new")
        .send()
        .await
        .unwrap();
    let h = c
        .head_object()
        .bucket(b)
        .key("copy-src")
        .send()
        .await
        .unwrap();
    assert_eq!(
        h.metadata().unwrap().get("origin").map(String::as_str),
        Some("replaced")
    );
    assert_eq!(h.content_type(), Some("text/x-new"));
    assert_eq!(get_bytes(c, b, "copy-src").await, body);
    let (code, status) = err(c
        .copy_object()
        .bucket(b)
        .key("copy-src")
        .copy_source(format!("{b}/copy-src"))
        .send()
        .await);
    assert_eq!((code.as_str(), status), ("InvalidRequest", 400));
    let (code, _) = err(c
        .copy_object()
        .bucket(b)
        .key("copy-x")
        .copy_source(format!("{b}/no-such-src"))
        .send()
        .await);
    assert_eq!(code, "NoSuchKey");
    let (code, _) = err(c
        .copy_object()
        .bucket(b)
        .key("copy-x")
        .copy_source(format!("{b}/copy-src"))
        .copy_source_if_match("\"nope\"")
        .send()
        .await);
    assert_eq!(code, "PreconditionFailed");
    // Inline (small) sources copy too.
    put(c, b, "small-src", b"tiny").await;
    c.copy_object()
        .bucket(b)
        .key("small-dst")
        .copy_source(format!("{b}/small-src"))
        .send()
        .await
        .unwrap();
    assert_eq!(get_bytes(c, b, "small-dst").await, b"tiny");
    // Batch delete, with a missing key (S3 reports it deleted).
    let keys = [
        "copy-src",
        "copy-dst",
        "small-src",
        "small-dst",
        "not-there",
    ];
    let objs: Vec<ObjectIdentifier> = keys
        .iter()
        .map(|k| ObjectIdentifier::builder().key(*k).build().unwrap())
        .collect();
    let r = c
        .delete_objects()
        .bucket(b)
        .delete(Delete::builder().set_objects(Some(objs)).build().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.deleted().len(), keys.len(), "{:?}", r.errors());
    for k in keys {
        let (_, status) = err(c.head_object().bucket(b).key(k).send().await);
        assert_eq!(status, 404, "{k}");
    }
}

async fn multipart(c: &Client) {
    let b = "sdk-bucket";
    let parts_data = [data(5 * MIB, 1), data(5 * MIB + 17, 2), data(1000, 3)];
    let up = c
        .create_multipart_upload()
        .bucket(b)
        .key("mp/object.bin")
        .content_type("application/x-mp")
        .metadata("kind", "multipart")
        .send()
        .await
        .unwrap();
    let id = up.upload_id().unwrap().to_string();
    let mut completed = Vec::new();
    for (i, p) in parts_data.iter().enumerate() {
        let n = i as i32 + 1;
        let e = c
            .upload_part()
            .bucket(b)
            .key("mp/object.bin")
            .upload_id(&id)
            .part_number(n)
            .body(ByteStream::from(p.clone()))
            .send()
            .await
            .unwrap();
        assert_eq!(e.e_tag().unwrap(), format!("\"{}\"", md5_hex(p)));
        completed.push(
            CompletedPart::builder()
                .part_number(n)
                .e_tag(e.e_tag().unwrap())
                .build(),
        );
    }
    let lp = c
        .list_parts()
        .bucket(b)
        .key("mp/object.bin")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(lp.parts().len(), 3);
    assert_eq!(lp.parts()[1].size(), Some((5 * MIB + 17) as i64));
    let lp = c
        .list_parts()
        .bucket(b)
        .key("mp/object.bin")
        .upload_id(&id)
        .max_parts(2)
        .send()
        .await
        .unwrap();
    assert_eq!(lp.parts().len(), 2);
    assert_eq!(lp.is_truncated(), Some(true));
    let lu = c.list_multipart_uploads().bucket(b).send().await.unwrap();
    assert!(
        lu.uploads()
            .iter()
            .any(|u| u.upload_id() == Some(id.as_str()))
    );
    // Parts are staged in the gateway's system bucket, which no listing shows.
    let buckets = c.list_buckets().send().await.unwrap();
    assert!(
        buckets
            .buckets()
            .iter()
            .all(|x| !x.name().unwrap_or_default().starts_with('.')),
        "{:?}",
        buckets.buckets()
    );
    // Refusals: wrong ETag, wrong order, unknown upload.
    let bad = CompletedMultipartUpload::builder()
        .parts(
            CompletedPart::builder()
                .part_number(1)
                .e_tag("\"00\"")
                .build(),
        )
        .build();
    let (code, status) = err(c
        .complete_multipart_upload()
        .bucket(b)
        .key("mp/object.bin")
        .upload_id(&id)
        .multipart_upload(bad)
        .send()
        .await);
    assert_eq!((code.as_str(), status), ("InvalidPart", 400));
    let rev = CompletedMultipartUpload::builder()
        .set_parts(Some(vec![completed[1].clone(), completed[0].clone()]))
        .build();
    let (code, _) = err(c
        .complete_multipart_upload()
        .bucket(b)
        .key("mp/object.bin")
        .upload_id(&id)
        .multipart_upload(rev)
        .send()
        .await);
    assert_eq!(code, "InvalidPartOrder");
    // A small part before another is refused; a single (last) part may be small.
    let up2 = c
        .create_multipart_upload()
        .bucket(b)
        .key("mp/small")
        .send()
        .await
        .unwrap();
    let id2 = up2.upload_id().unwrap().to_string();
    let mut small_parts = Vec::new();
    for n in 1..=2 {
        let e = c
            .upload_part()
            .bucket(b)
            .key("mp/small")
            .upload_id(&id2)
            .part_number(n)
            .body(ByteStream::from(vec![n as u8; 100]))
            .send()
            .await
            .unwrap();
        small_parts.push(
            CompletedPart::builder()
                .part_number(n)
                .e_tag(e.e_tag().unwrap())
                .build(),
        );
    }
    let (code, _) = err(c
        .complete_multipart_upload()
        .bucket(b)
        .key("mp/small")
        .upload_id(&id2)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(small_parts.clone()))
                .build(),
        )
        .send()
        .await);
    assert_eq!(code, "EntityTooSmall");
    // The refusal leaves the upload open: completed with its first part alone, it holds
    // those 100 bytes.
    let one = c
        .complete_multipart_upload()
        .bucket(b)
        .key("mp/small")
        .upload_id(&id2)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(small_parts[..1].to_vec()))
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(one.e_tag().is_some_and(|e| e.ends_with("-1\"")), "{one:?}");
    assert_eq!(get_bytes(c, b, "mp/small").await, vec![1u8; 100]);
    // An aborted upload is gone.
    let up3 = c
        .create_multipart_upload()
        .bucket(b)
        .key("mp/aborted")
        .send()
        .await
        .unwrap();
    let id3 = up3.upload_id().unwrap().to_string();
    c.abort_multipart_upload()
        .bucket(b)
        .key("mp/aborted")
        .upload_id(&id3)
        .send()
        .await
        .unwrap();
    let (code, status) = err(c
        .list_parts()
        .bucket(b)
        .key("mp/aborted")
        .upload_id(&id3)
        .send()
        .await);
    assert_eq!((code.as_str(), status), ("NoSuchUpload", 404));
    let (code, _) = err(c
        .upload_part()
        .bucket(b)
        .key("mp/object.bin")
        .upload_id("nope")
        .part_number(1)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await);
    assert_eq!(code, "NoSuchUpload");
    let (code, _) = err(c
        .upload_part()
        .bucket(b)
        .key("mp/object.bin")
        .upload_id(&id)
        .part_number(10001)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await);
    assert_eq!(code, "InvalidArgument");
    // Complete.
    let done = c
        .complete_multipart_upload()
        .bucket(b)
        .key("mp/object.bin")
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await
        .unwrap();
    use md5::Digest;
    let mut h = md5::Md5::new();
    for p in &parts_data {
        h.update(md5::Md5::digest(p));
    }
    let want_etag = format!("\"{}-3\"", hex::encode(h.finalize()));
    assert_eq!(done.e_tag(), Some(want_etag.as_str()));
    let whole: Vec<u8> = parts_data.concat();
    assert_eq!(get_bytes(c, b, "mp/object.bin").await, whole);
    let head = c
        .head_object()
        .bucket(b)
        .key("mp/object.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(head.e_tag(), Some(want_etag.as_str()));
    assert_eq!(head.content_type(), Some("application/x-mp"));
    assert_eq!(
        head.metadata().unwrap().get("kind").map(String::as_str),
        Some("multipart")
    );
    let lu = c.list_multipart_uploads().bucket(b).send().await.unwrap();
    assert!(lu.uploads().is_empty(), "{:?}", lu.uploads());
    let (code, _) = err(c
        .list_parts()
        .bucket(b)
        .key("mp/object.bin")
        .upload_id(&id)
        .send()
        .await);
    assert_eq!(code, "NoSuchUpload");
    // UploadPartCopy: ranges of an existing object.
    let up3 = c
        .create_multipart_upload()
        .bucket(b)
        .key("mp/copied")
        .send()
        .await
        .unwrap();
    let id3 = up3.upload_id().unwrap().to_string();
    let r1 = c
        .upload_part_copy()
        .bucket(b)
        .key("mp/copied")
        .upload_id(&id3)
        .part_number(1)
        .copy_source(format!("{b}/mp/object.bin"))
        .copy_source_range(format!("bytes=0-{}", 5 * MIB - 1))
        .send()
        .await
        .unwrap();
    let r2 = c
        .upload_part_copy()
        .bucket(b)
        .key("mp/copied")
        .upload_id(&id3)
        .part_number(2)
        .copy_source(format!("{b}/mp/object.bin"))
        .copy_source_range(format!("bytes={}-{}", 5 * MIB, whole.len() - 1))
        .send()
        .await
        .unwrap();
    let (code, _) = err(c
        .upload_part_copy()
        .bucket(b)
        .key("mp/copied")
        .upload_id(&id3)
        .part_number(3)
        .copy_source(format!("{b}/mp/object.bin"))
        .copy_source_range(format!("bytes=0-{}", whole.len()))
        .send()
        .await);
    assert_eq!(code, "InvalidArgument");
    let parts = vec![
        CompletedPart::builder()
            .part_number(1)
            .e_tag(r1.copy_part_result().unwrap().e_tag().unwrap())
            .build(),
        CompletedPart::builder()
            .part_number(2)
            .e_tag(r2.copy_part_result().unwrap().e_tag().unwrap())
            .build(),
    ];
    c.complete_multipart_upload()
        .bucket(b)
        .key("mp/copied")
        .upload_id(&id3)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(get_bytes(c, b, "mp/copied").await, whole);
}

async fn tagging(c: &Client) {
    let b = "sdk-bucket";
    c.put_object()
        .bucket(b)
        .key("tagged")
        .tagging("a=1&b=two")
        .body(ByteStream::from_static(b"t"))
        .send()
        .await
        .unwrap();
    let t = c
        .get_object_tagging()
        .bucket(b)
        .key("tagged")
        .send()
        .await
        .unwrap();
    let mut tags: Vec<(String, String)> = t
        .tag_set()
        .iter()
        .map(|t| (t.key().to_string(), t.value().to_string()))
        .collect();
    tags.sort();
    assert_eq!(tags, [("a".into(), "1".into()), ("b".into(), "two".into())]);
    let h = c.get_object().bucket(b).key("tagged").send().await.unwrap();
    assert_eq!(h.tag_count(), Some(2));
    c.put_object_tagging()
        .bucket(b)
        .key("tagged")
        .tagging(
            Tagging::builder()
                .tag_set(Tag::builder().key("only").value("one").build().unwrap())
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let t = c
        .get_object_tagging()
        .bucket(b)
        .key("tagged")
        .send()
        .await
        .unwrap();
    assert_eq!(t.tag_set().len(), 1);
    let too_many: Vec<Tag> = (0..11)
        .map(|i| {
            Tag::builder()
                .key(format!("k{i}"))
                .value("v")
                .build()
                .unwrap()
        })
        .collect();
    let (code, _) = err(c
        .put_object_tagging()
        .bucket(b)
        .key("tagged")
        .tagging(
            Tagging::builder()
                .set_tag_set(Some(too_many))
                .build()
                .unwrap(),
        )
        .send()
        .await);
    assert_eq!(code, "InvalidTag");
    c.delete_object_tagging()
        .bucket(b)
        .key("tagged")
        .send()
        .await
        .unwrap();
    let t = c
        .get_object_tagging()
        .bucket(b)
        .key("tagged")
        .send()
        .await
        .unwrap();
    assert!(t.tag_set().is_empty());
    // An overwrite without tags drops the old ones.
    c.put_object_tagging()
        .bucket(b)
        .key("tagged")
        .tagging(
            Tagging::builder()
                .tag_set(Tag::builder().key("x").value("y").build().unwrap())
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    put(c, b, "tagged", b"again").await;
    let t = c
        .get_object_tagging()
        .bucket(b)
        .key("tagged")
        .send()
        .await
        .unwrap();
    assert!(t.tag_set().is_empty());
}

async fn presigned(c: &Client, endpoint: &str) {
    let b = "sdk-bucket";
    let body = data(3000, 9);
    put(c, b, "presigned.bin", &body).await;
    let addr: std::net::SocketAddr = endpoint.trim_start_matches("http://").parse().unwrap();
    let p = c
        .get_object()
        .bucket(b)
        .key("presigned.bin")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).unwrap())
        .await
        .unwrap();
    let target = p.uri().trim_start_matches(endpoint).to_string();
    let r = super::raw_send(addr, "GET", &target, &[], b"", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, body);
    // Tampering with the URL breaks the signature.
    let r = super::raw_send(
        addr,
        "GET",
        &target.replace("presigned.bin", "presigned.bim"),
        &[],
        b"",
        None,
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "SignatureDoesNotMatch")
    );
    // Expired.
    let old = c
        .get_object()
        .bucket(b)
        .key("presigned.bin")
        .presigned(
            PresigningConfig::builder()
                .start_time(SystemTime::now() - Duration::from_secs(3600))
                .expires_in(Duration::from_secs(60))
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let r = super::raw_send(
        addr,
        "GET",
        old.uri().trim_start_matches(endpoint),
        &[],
        b"",
        None,
    );
    assert_eq!((r.status, r.code().as_str()), (403, "AccessDenied"));
    assert!(r.text().contains("expired"), "{}", r.text());
    // Presigned PUT.
    let up = c
        .put_object()
        .bucket(b)
        .key("presigned-put")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).unwrap())
        .await
        .unwrap();
    let r = super::raw_send(
        addr,
        "PUT",
        up.uri().trim_start_matches(endpoint),
        &[],
        b"uploaded",
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get_bytes(c, b, "presigned-put").await, b"uploaded");
}

async fn auth_errors(endpoint: &str) {
    let wrong = sdk_with(endpoint, ACCESS_KEY, "not-the-secret-at-all", |b| b);
    let (code, status) = err(wrong.list_buckets().send().await);
    assert_eq!((code.as_str(), status), ("SignatureDoesNotMatch", 403));
    let unknown = sdk_with(endpoint, "NOSUCHKEY0000", SECRET_KEY, |b| b);
    let (code, status) = err(unknown.list_buckets().send().await);
    assert_eq!((code.as_str(), status), ("InvalidAccessKeyId", 403));
    // A request signed for another region (validly, by the SDK) is refused as AWS does.
    let elsewhere = sdk_with(endpoint, ACCESS_KEY, SECRET_KEY, |b| {
        b.region(aws_sdk_s3::config::Region::new("eu-west-1"))
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
    });
    let (code, status) = err(elsewhere.list_buckets().send().await);
    assert_eq!(
        (code.as_str(), status),
        ("AuthorizationHeaderMalformed", 400)
    );
    // A client whose clock is an hour off (without retries: the SDK corrects its clock from
    // the refusal's Date header and retries, which must then succeed).
    let skewed = |retry: bool| {
        sdk_with(endpoint, ACCESS_KEY, SECRET_KEY, |b| {
            let b = b.time_source(aws_smithy_async::time::StaticTimeSource::new(
                SystemTime::now() - Duration::from_secs(3600),
            ));
            if retry {
                b
            } else {
                b.retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            }
        })
    };
    skewed(true).list_buckets().send().await.unwrap();
    let skewed = skewed(false);
    let (code, status) = err(skewed.list_buckets().send().await);
    assert_eq!((code.as_str(), status), ("RequestTimeTooSkewed", 403));
    // Anonymous requests get nothing from a private bucket...
    let addr: std::net::SocketAddr = endpoint.trim_start_matches("http://").parse().unwrap();
    for (m, path) in [
        ("GET", "/sdk-bucket?list-type=2"),
        ("GET", "/sdk-bucket/one-kib"),
        ("PUT", "/sdk-bucket/anon"),
        ("PUT", "/anon-bucket"),
        ("GET", "/"),
    ] {
        let r = super::raw_send(addr, m, path, &[], b"", None);
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "AccessDenied"),
            "{m} {path}"
        );
    }
    // ...and may read, never write, a public-read one.
    let c = sdk(endpoint);
    c.create_bucket()
        .bucket("sdk-public")
        .acl(aws_sdk_s3::types::BucketCannedAcl::PublicRead)
        .send()
        .await
        .unwrap();
    put(&c, "sdk-public", "hello.txt", b"public bytes").await;
    let r = super::raw_send(addr, "GET", "/sdk-public/hello.txt", &[], b"", None);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"public bytes"[..]));
    let r = super::raw_send(addr, "GET", "/sdk-public?list-type=2", &[], b"", None);
    assert!(r.text().contains("<Key>hello.txt</Key>"), "{}", r.text());
    let r = super::raw_send(addr, "PUT", "/sdk-public/x", &[], b"x", None);
    assert_eq!((r.status, r.code().as_str()), (403, "AccessDenied"));
    let r = super::raw_send(addr, "DELETE", "/sdk-public/hello.txt", &[], b"", None);
    assert_eq!(r.status, 403);
    let acl = c
        .get_bucket_acl()
        .bucket("sdk-public")
        .send()
        .await
        .unwrap();
    assert_eq!(acl.grants().len(), 2);
    // Back to private.
    c.put_bucket_acl()
        .bucket("sdk-public")
        .acl(aws_sdk_s3::types::BucketCannedAcl::Private)
        .send()
        .await
        .unwrap();
    let r = super::raw_send(addr, "GET", "/sdk-public/hello.txt", &[], b"", None);
    assert_eq!(r.status, 403);
}

async fn checksums_and_digests(c: &Client) {
    let b = "sdk-bucket";
    let body = data(200_000, 5);
    for a in [
        ChecksumAlgorithm::Crc32,
        ChecksumAlgorithm::Crc32C,
        ChecksumAlgorithm::Sha1,
        ChecksumAlgorithm::Sha256,
        ChecksumAlgorithm::Crc64Nvme,
    ] {
        let k = format!("ck-{}", a.as_str());
        c.put_object()
            .bucket(b)
            .key(&k)
            .checksum_algorithm(a.clone())
            .body(ByteStream::from(body.clone()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{a:?}: {e:?}"));
        assert_eq!(get_bytes(c, b, &k).await, body);
    }
    // A wrong checksum value or Content-MD5 is refused and creates nothing.
    let (code, status) = err(c
        .put_object()
        .bucket(b)
        .key("bad-crc")
        .checksum_crc32("AAAAAA==")
        .body(ByteStream::from(body.clone()))
        .send()
        .await);
    assert_eq!((code.as_str(), status), ("BadDigest", 400));
    let wrong_md5 = base64::engine::general_purpose::STANDARD.encode([0u8; 16]);
    let (code, _) = err(c
        .put_object()
        .bucket(b)
        .key("bad-crc")
        .content_md5(wrong_md5)
        .body(ByteStream::from(body.clone()))
        .send()
        .await);
    assert_eq!(code, "BadDigest");
    let (code, _) = err(c
        .put_object()
        .bucket(b)
        .key("bad-crc")
        .content_md5("not base64!")
        .body(ByteStream::from(body.clone()))
        .send()
        .await);
    assert_eq!(code, "InvalidDigest");
    let (_, status) = err(c.head_object().bucket(b).key("bad-crc").send().await);
    assert_eq!(status, 404, "a refused upload must not create the object");
}

async fn unsupported_operations(c: &Client) {
    let b = "sdk-bucket";
    let (code, status) = err(c.get_bucket_policy().bucket(b).send().await);
    assert_eq!((code.as_str(), status), ("NotImplemented", 501));
    let (code, status) = err(c
        .get_bucket_lifecycle_configuration()
        .bucket(b)
        .send()
        .await);
    assert_eq!((code.as_str(), status), ("NotImplemented", 501));
    let (code, _) = err(c.list_object_versions().bucket(b).send().await);
    assert_eq!(code, "NotImplemented");
    let v = c.get_bucket_versioning().bucket(b).send().await.unwrap();
    assert!(v.status().is_none());
    let acl = c.get_bucket_acl().bucket(b).send().await.unwrap();
    assert_eq!(acl.grants().len(), 1);
}
