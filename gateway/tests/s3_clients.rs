//! Real S3 clients from the package registries against a gateway with 7 real nodes:
//! aws-cli and boto3 (PyPI, in the venv `scripts/lib/env.sh` installs), rclone and s3cmd
//! (Debian), and an s3fs-fuse mount (Debian). Each creates a bucket, stores 0 B / 1 KiB /
//! 100 MiB (multipart) objects, lists with prefix, delimiter and pagination across 2,500 keys,
//! reads ranges, heads, copies, batch-deletes and presigns, and every checksum is compared.
//!
//! A missing tool fails the test with instructions; nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cyxcloud_testkit::cluster::{ACCESS_KEY, SECRET_KEY};
use cyxcloud_testkit::{Proc, tempdir, wait_until};

use super::{data, md5_hex, raw_send};

const MIB: usize = 1 << 20;
const BIG: usize = 100 * MIB;
/// Keys for the pagination checks.
const MANY: usize = 2500;

fn venv() -> PathBuf {
    std::env::var_os("CYXCLOUD_S3_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/cyxcloud-s3-venv")
        })
}

fn need(tool: &Path, what: &str) {
    assert!(
        tool.exists(),
        "{what} is not installed ({} missing). Run `scripts/test` or `. scripts/lib/env.sh && \
         cyx_ensure_packages`, which installs the S3 test clients (Debian: rclone s3cmd s3fs; \
         PyPI into {}: boto3 awscli).",
        tool.display(),
        venv().display()
    );
}

fn which(name: &str) -> PathBuf {
    let p = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&p)
        .map(|d| d.join(name))
        .find(|f| f.exists())
        .unwrap_or_else(|| PathBuf::from(format!("/usr/bin/{name}")))
}

/// Runs a command; panics with its output when it fails. Returns stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
}

fn file_md5(p: &Path) -> String {
    md5_hex(&std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())))
}

struct Files {
    dir: PathBuf,
    /// `(name, md5)` of the 0 B, 1 KiB and 100 MiB files.
    sums: Vec<(&'static str, String)>,
    /// A directory holding `MANY` small files in 5 subdirectories.
    many: PathBuf,
}

fn make_files(root: &Path) -> Files {
    let dir = root.join("up");
    std::fs::create_dir_all(&dir).unwrap();
    let mut sums = Vec::new();
    for (name, n) in [
        ("zero.bin", 0usize),
        ("one-kib.bin", 1024),
        ("big.bin", BIG),
    ] {
        let d = data(n, n as u64 + 1);
        std::fs::write(dir.join(name), &d).unwrap();
        sums.push((name, md5_hex(&d)));
    }
    let many = root.join("many");
    for i in 0..MANY {
        let sub = many.join(format!("d{}", i % 5));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("k{i:05}.txt")), format!("key {i}\n")).unwrap();
    }
    Files { dir, sums, many }
}

/// The clients' programs: (python with boto3, aws, rclone, s3cmd, s3fs); a missing one fails
/// with instructions.
fn tools() -> [PathBuf; 5] {
    let py = venv().join("bin/python");
    let aws = venv().join("bin/aws");
    need(&py, "boto3 (PyPI)");
    need(&aws, "aws-cli (PyPI)");
    let (rclone, s3cmd, s3fs) = (which("rclone"), which("s3cmd"), which("s3fs"));
    need(&rclone, "rclone (Debian)");
    need(&s3cmd, "s3cmd (Debian)");
    need(&s3fs, "s3fs (Debian package s3fs)");
    let ok = Command::new(&py)
        .args(["-c", "import boto3"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "boto3 does not import in {}", venv().display());
    [py, aws, rclone, s3cmd, s3fs]
}

#[test]
fn s3_real_clients() {
    let [py, aws, rclone, s3cmd, s3fs] = tools();

    let cl = super::cluster(7, &[]);
    let endpoint = cl.http_url();
    let tmp = tempdir().unwrap();
    let files = make_files(tmp.path());
    aws_cli(&aws, &endpoint, tmp.path(), &files);
    boto3(&py, &endpoint, tmp.path());
    rclone_client(&rclone, &endpoint, tmp.path(), &files);
    s3cmd_client(&s3cmd, &endpoint, tmp.path(), &files);
    s3fs_mount(&s3fs, &endpoint, tmp.path(), &aws);
}

fn aws_cmd(aws: &Path, endpoint: &str, home: &Path) -> Command {
    let mut c = Command::new(aws);
    c.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", home.join("aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("aws-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["--endpoint-url", endpoint]);
    c
}

fn aws_cli(aws: &Path, endpoint: &str, home: &Path, f: &Files) {
    let a = || aws_cmd(aws, endpoint, home);
    run(a().args(["s3", "mb", "s3://cli-bucket"]));
    for (name, _) in &f.sums {
        run(a()
            .args(["s3", "cp"])
            .arg(f.dir.join(name))
            .arg(format!("s3://cli-bucket/data/{name}")));
    }
    // Multipart: aws-cli splits at 8 MiB, so the 100 MiB object has a "-N" ETag.
    let head = run(a().args([
        "s3api",
        "head-object",
        "--bucket",
        "cli-bucket",
        "--key",
        "data/big.bin",
    ]));
    assert!(head.contains("\"ContentLength\": 104857600"), "{head}");
    assert!(head.contains("-13\\\""), "multipart ETag expected: {head}");
    let ls = run(a().args(["s3", "ls", "s3://cli-bucket/data/"]));
    for (name, _) in &f.sums {
        assert!(ls.contains(name), "{ls}");
    }
    let down = home.join("aws-down");
    std::fs::create_dir_all(&down).unwrap();
    for (name, sum) in &f.sums {
        run(a()
            .args(["s3", "cp"])
            .arg(format!("s3://cli-bucket/data/{name}"))
            .arg(down.join(name)));
        assert_eq!(
            &file_md5(&down.join(name)),
            sum,
            "aws-cli round trip of {name}"
        );
    }
    // Ranged get.
    run(a()
        .args([
            "s3api",
            "get-object",
            "--bucket",
            "cli-bucket",
            "--key",
            "data/big.bin",
            "--range",
            "bytes=50000000-50000999",
        ])
        .arg(down.join("range")));
    let want = &data(BIG, BIG as u64 + 1)[50_000_000..50_001_000];
    assert_eq!(std::fs::read(down.join("range")).unwrap(), want);
    // Copy (server side), then batch delete.
    run(a().args([
        "s3",
        "cp",
        "s3://cli-bucket/data/big.bin",
        "s3://cli-bucket/copy/big.bin",
    ]));
    run(a()
        .args(["s3", "cp", "s3://cli-bucket/copy/big.bin"])
        .arg(down.join("copy")));
    assert_eq!(file_md5(&down.join("copy")), f.sums[2].1);
    // 2,500 keys: upload, list with pagination, prefix and delimiter.
    run(a()
        .args(["s3", "cp", "--recursive", "--quiet"])
        .arg(&f.many)
        .arg("s3://cli-bucket/many/"));
    let all = run(a().args(["s3", "ls", "--recursive", "s3://cli-bucket/many/"]));
    assert_eq!(all.lines().count(), MANY, "aws s3 ls --recursive");
    let pages = run(a().args([
        "s3api",
        "list-objects-v2",
        "--bucket",
        "cli-bucket",
        "--prefix",
        "many/",
        "--page-size",
        "300",
        "--query",
        "length(Contents)",
    ]));
    assert_eq!(pages.trim(), MANY.to_string());
    let dirs = run(a().args([
        "s3api",
        "list-objects-v2",
        "--bucket",
        "cli-bucket",
        "--prefix",
        "many/",
        "--delimiter",
        "/",
        "--query",
        "CommonPrefixes[].Prefix",
        "--output",
        "text",
    ]));
    let mut dirs: Vec<&str> = dirs.split_whitespace().collect();
    dirs.sort();
    assert_eq!(
        dirs,
        ["many/d0/", "many/d1/", "many/d2/", "many/d3/", "many/d4/"]
    );
    let d3 = run(a().args([
        "s3api",
        "list-objects",
        "--bucket",
        "cli-bucket",
        "--prefix",
        "many/d3/",
        "--page-size",
        "100",
        "--query",
        "length(Contents)",
    ]));
    assert_eq!(
        d3.trim(),
        (MANY / 5).to_string(),
        "v1 pagination with markers"
    );
    // Presigned GET with a plain HTTP client. aws-cli v1 presigns with Signature Version 2
    // unless told otherwise; the gateway refuses SigV2 with a clear message.
    let v2 = run(a().args(["s3", "presign", "s3://cli-bucket/data/one-kib.bin"]));
    let addr: std::net::SocketAddr = endpoint.trim_start_matches("http://").parse().unwrap();
    let r = raw_send(
        addr,
        "GET",
        v2.trim().trim_start_matches(endpoint),
        &[],
        b"",
        None,
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "InvalidRequest"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("AWS4-HMAC-SHA256"), "{}", r.text());
    std::fs::write(
        home.join("aws-config"),
        "[default]\ns3 =\n    signature_version = s3v4\n",
    )
    .unwrap();
    let url = run(a().args([
        "s3",
        "presign",
        "s3://cli-bucket/data/one-kib.bin",
        "--expires-in",
        "300",
    ]));
    let target = url.trim().trim_start_matches(endpoint).to_string();
    let r = raw_send(addr, "GET", &target, &[], b"", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(md5_hex(&r.body), f.sums[1].1);
    // Batch delete (s3 rm --recursive uses DeleteObjects).
    run(a().args([
        "s3",
        "rm",
        "--recursive",
        "--quiet",
        "s3://cli-bucket/many/",
    ]));
    let left = run(a().args([
        "s3api",
        "list-objects-v2",
        "--bucket",
        "cli-bucket",
        "--prefix",
        "many/",
        "--query",
        "length(Contents || `[]`)",
    ]));
    assert_eq!(left.trim(), "0", "everything under many/ deleted");
}

const BOTO3: &str = r#"
import hashlib, os, sys, urllib.request
import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

endpoint, tmp = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}))
b = "boto-bucket"
s3.create_bucket(Bucket=b)
assert b in [x["Name"] for x in s3.list_buckets()["Buckets"]]

def md5(d): return hashlib.md5(d).hexdigest()
def det(n, seed):
    import random
    r = random.Random(seed)
    return r.randbytes(n)

blobs = {"zero": b"", "one-kib": det(1024, 1), "five-mib": det(5 << 20, 2)}
for k, v in blobs.items():
    r = s3.put_object(Bucket=b, Key="objs/" + k, Body=v, Metadata={"k": k}, ContentType="text/x-" + k)
    assert r["ETag"] == '"%s"' % md5(v), (k, r["ETag"])
    g = s3.get_object(Bucket=b, Key="objs/" + k)
    assert g["Body"].read() == v
    h = s3.head_object(Bucket=b, Key="objs/" + k)
    assert h["ContentLength"] == len(v) and h["Metadata"]["k"] == k and h["ContentType"] == "text/x-" + k

# 100 MiB multipart through the transfer manager, downloaded in ranges.
big = det(100 << 20, 3)
path = os.path.join(tmp, "boto-big")
open(path, "wb").write(big)
cfg = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=4)
s3.upload_file(path, b, "big/object", Config=cfg)
h = s3.head_object(Bucket=b, Key="big/object")
assert h["ContentLength"] == len(big) and h["ETag"].endswith('-13"'), h["ETag"]
s3.download_file(b, "big/object", path + ".down", Config=cfg)
assert md5(open(path + ".down", "rb").read()) == md5(big)
part = s3.get_object(Bucket=b, Key="big/object", Range="bytes=12345678-12399999")["Body"].read()
assert part == big[12345678:12400000]

# Copy, presign, conditional get.
s3.copy_object(Bucket=b, Key="objs/copy", CopySource={"Bucket": b, "Key": "objs/five-mib"})
assert s3.get_object(Bucket=b, Key="objs/copy")["Body"].read() == blobs["five-mib"]
url = s3.generate_presigned_url("get_object", Params={"Bucket": b, "Key": "objs/one-kib"}, ExpiresIn=300)
assert urllib.request.urlopen(url).read() == blobs["one-kib"]
etag = s3.head_object(Bucket=b, Key="objs/one-kib")["ETag"]
try:
    s3.get_object(Bucket=b, Key="objs/one-kib", IfNoneMatch=etag)
    raise SystemExit("expected 304")
except s3.exceptions.ClientError as e:
    assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 304

# 2,500 keys, paginated listing with prefix and delimiter, batch delete.
from concurrent.futures import ThreadPoolExecutor
keys = ["many/%s/k%05d" % ("ab"[i % 2], i) for i in range(2500)]
with ThreadPoolExecutor(8) as ex:
    list(ex.map(lambda k: s3.put_object(Bucket=b, Key=k, Body=k.encode()), keys))
got = []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b, Prefix="many/", PaginationConfig={"PageSize": 700}):
    got += [o["Key"] for o in page.get("Contents", [])]
assert got == sorted(keys), (len(got), got[:3])
top = s3.list_objects_v2(Bucket=b, Prefix="many/", Delimiter="/")
assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["many/a/", "many/b/"]
v1 = []
for page in s3.get_paginator("list_objects").paginate(Bucket=b, Prefix="many/b/", PaginationConfig={"PageSize": 400}):
    v1 += [o["Key"] for o in page.get("Contents", [])]
assert v1 == sorted(k for k in keys if k.startswith("many/b/"))
for i in range(0, len(keys), 1000):
    r = s3.delete_objects(Bucket=b, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
    assert not r.get("Errors"), r
assert s3.list_objects_v2(Bucket=b, Prefix="many/")["KeyCount"] == 0

# Errors come back typed.
try:
    s3.get_object(Bucket=b, Key="nope")
    raise SystemExit("expected NoSuchKey")
except s3.exceptions.NoSuchKey:
    pass
try:
    s3.delete_bucket(Bucket=b)
    raise SystemExit("expected BucketNotEmpty")
except s3.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] == "BucketNotEmpty"
print("BOTO3 OK")
"#;

fn boto3(py: &Path, endpoint: &str, home: &Path) {
    let script = home.join("boto3_test.py");
    std::fs::write(&script, BOTO3).unwrap();
    let out = run(Command::new(py)
        .arg(&script)
        .arg(endpoint)
        .arg(home)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_CONFIG_FILE", home.join("aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("aws-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true"));
    assert!(out.contains("BOTO3 OK"), "{out}");
}

fn rclone_cmd(rclone: &Path, endpoint: &str, home: &Path) -> Command {
    let mut c = Command::new(rclone);
    // The plain-HTTP endpoint needs no CA bundle (rclone refuses one it cannot apply).
    c.env_remove("AWS_CA_BUNDLE")
        .env("RCLONE_CONFIG", home.join("rclone.conf"))
        .env("RCLONE_CONFIG_CYX_TYPE", "s3")
        .env("RCLONE_CONFIG_CYX_PROVIDER", "Other")
        .env("RCLONE_CONFIG_CYX_ACCESS_KEY_ID", ACCESS_KEY)
        .env("RCLONE_CONFIG_CYX_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("RCLONE_CONFIG_CYX_ENDPOINT", endpoint)
        .env("RCLONE_CONFIG_CYX_REGION", "us-east-1")
        .env("RCLONE_CONFIG_CYX_FORCE_PATH_STYLE", "true")
        .args([
            "--s3-upload-cutoff",
            "16M",
            "--s3-chunk-size",
            "16M",
            "--retries",
            "1",
        ]);
    c
}

fn rclone_client(rclone: &Path, endpoint: &str, home: &Path, f: &Files) {
    let r = || rclone_cmd(rclone, endpoint, home);
    run(r().args(["mkdir", "cyx:rc-bucket"]));
    run(r().arg("copy").arg(&f.dir).arg("cyx:rc-bucket/data"));
    // `check` compares sizes and MD5 hashes of both sides.
    run(r().arg("check").arg(&f.dir).arg("cyx:rc-bucket/data"));
    let lsf = run(r().args(["lsf", "cyx:rc-bucket/data"]));
    let mut names: Vec<&str> = lsf.lines().collect();
    names.sort();
    assert_eq!(names, ["big.bin", "one-kib.bin", "zero.bin"]);
    let md5s = run(r().args(["md5sum", "cyx:rc-bucket/data"]));
    assert!(md5s.contains(&f.sums[1].1), "{md5s}");
    let down = home.join("rclone-down");
    run(r().arg("copy").arg("cyx:rc-bucket/data").arg(&down));
    for (name, sum) in &f.sums {
        assert_eq!(
            &file_md5(&down.join(name)),
            sum,
            "rclone round trip of {name}"
        );
    }
    let cat = run(r().args([
        "cat",
        "--offset",
        "1000",
        "--count",
        "24",
        "cyx:rc-bucket/data/one-kib.bin",
    ]));
    assert_eq!(cat, String::from_utf8_lossy(&data(1024, 1025)[1000..1024]));
    run(r().args([
        "copyto",
        "cyx:rc-bucket/data/big.bin",
        "cyx:rc-bucket/copied/big.bin",
    ]));
    run(r()
        .args(["copy"])
        .arg(&f.many)
        .arg("cyx:rc-bucket/many")
        .args(["--transfers", "16"]));
    let n = run(r().args(["lsf", "-R", "--files-only", "cyx:rc-bucket/many"]));
    assert_eq!(n.lines().count(), MANY);
    let dirs = run(r().args(["lsf", "--dirs-only", "cyx:rc-bucket/many"]));
    assert_eq!(dirs.lines().count(), 5, "{dirs}");
    run(r().args(["purge", "cyx:rc-bucket/many"]));
    let left = run(r().args(["lsf", "-R", "cyx:rc-bucket/many"]));
    assert_eq!(left.trim(), "");
}

fn s3cmd_client(s3cmd: &Path, endpoint: &str, home: &Path, f: &Files) {
    let hostport = endpoint.trim_start_matches("http://");
    let cfg = home.join("s3cfg");
    std::fs::write(
        &cfg,
        format!(
            "[default]\naccess_key = {ACCESS_KEY}\nsecret_key = {SECRET_KEY}\nhost_base = {hostport}\n\
             host_bucket = {hostport}\nuse_https = False\nsignature_v2 = False\nbucket_location = us-east-1\n\
             multipart_chunk_size_mb = 15\n"
        ),
    )
    .unwrap();
    let s = || {
        let mut c = Command::new(s3cmd);
        c.arg("-c").arg(&cfg);
        c
    };
    run(s().args(["mb", "s3://sc-bucket"]));
    for (name, _) in &f.sums {
        run(s()
            .arg("put")
            .arg(f.dir.join(name))
            .arg(format!("s3://sc-bucket/data/{name}")));
    }
    let ls = run(s().args(["ls", "s3://sc-bucket/data/"]));
    for (name, _) in &f.sums {
        assert!(ls.contains(name), "{ls}");
    }
    let info = run(s().args(["info", "s3://sc-bucket/data/one-kib.bin"]));
    assert!(info.contains(&f.sums[1].1), "{info}");
    let down = home.join("s3cmd-down");
    std::fs::create_dir_all(&down).unwrap();
    for (name, sum) in &f.sums {
        run(s()
            .arg("get")
            .arg(format!("s3://sc-bucket/data/{name}"))
            .arg(down.join(name)));
        assert_eq!(
            &file_md5(&down.join(name)),
            sum,
            "s3cmd round trip of {name}"
        );
    }
    run(s().args([
        "cp",
        "s3://sc-bucket/data/one-kib.bin",
        "s3://sc-bucket/copy/one-kib.bin",
    ]));
    run(s()
        .arg("get")
        .arg("s3://sc-bucket/copy/one-kib.bin")
        .arg(down.join("copy")));
    assert_eq!(file_md5(&down.join("copy")), f.sums[1].1);
    run(s().args(["del", "--recursive", "--force", "s3://sc-bucket/data/"]));
    let ls = run(s().args(["ls", "--recursive", "s3://sc-bucket/data/"]));
    assert_eq!(ls.trim(), "");
}

fn s3fs_mount(s3fs: &Path, endpoint: &str, home: &Path, aws: &Path) {
    run(aws_cmd(aws, endpoint, home).args(["s3", "mb", "s3://fs-bucket"]));
    let pass = home.join("s3fs-passwd");
    std::fs::write(&pass, format!("{ACCESS_KEY}:{SECRET_KEY}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mnt = home.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut cmd = Command::new(s3fs);
    cmd.arg("fs-bucket")
        .arg(&mnt)
        .arg("-f")
        .args(["-o", &format!("url={endpoint}")])
        .args(["-o", "use_path_request_style"])
        .args(["-o", &format!("passwd_file={}", pass.display())])
        .args(["-o", "sigv4", "-o", "endpoint=us-east-1"])
        .args(["-o", "multipart_size=10", "-o", "parallel_count=4"])
        .args(["-o", "stat_cache_expire=1"]);
    let mut proc = Proc::spawn("s3fs", cmd, &home.join("s3fs.log"));
    let mounted = |p: &Path| {
        std::fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(p.to_str().unwrap()))
    };
    wait_until(Duration::from_secs(30), "the s3fs mount", || {
        mounted(&mnt).then_some(())
    });
    let result = std::panic::catch_unwind(|| {
        let small = data(1024, 71);
        let big = data(25 * MIB + 3, 72);
        std::fs::create_dir(mnt.join("dir")).unwrap();
        std::fs::write(mnt.join("dir/small.bin"), &small).unwrap();
        std::fs::write(mnt.join("big.bin"), &big).unwrap();
        std::fs::write(mnt.join("empty"), b"").unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["big.bin", "dir", "empty"]);
        assert_eq!(std::fs::read(mnt.join("dir/small.bin")).unwrap(), small);
        assert_eq!(
            md5_hex(&std::fs::read(mnt.join("big.bin")).unwrap()),
            md5_hex(&big)
        );
        assert_eq!(
            std::fs::metadata(mnt.join("big.bin")).unwrap().len(),
            big.len() as u64
        );
        std::fs::rename(mnt.join("dir/small.bin"), mnt.join("dir/renamed.bin")).unwrap();
        std::fs::remove_file(mnt.join("empty")).unwrap();
        (small, big)
    });
    // Whatever happened, unmount before judging.
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    let _ = Command::new("umount").arg(&mnt).status();
    let _ = proc.wait_exit(Duration::from_secs(10));
    let (small, big) = result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    // What s3fs wrote is ordinary S3 objects.
    let down = home.join("s3fs-down");
    std::fs::create_dir_all(&down).unwrap();
    let a = || aws_cmd(aws, endpoint, home);
    run(a()
        .args(["s3", "cp", "s3://fs-bucket/big.bin"])
        .arg(down.join("big")));
    assert_eq!(file_md5(&down.join("big")), md5_hex(&big));
    run(a()
        .args(["s3", "cp", "s3://fs-bucket/dir/renamed.bin"])
        .arg(down.join("small")));
    assert_eq!(std::fs::read(down.join("small")).unwrap(), small);
    let ls = run(a().args(["s3", "ls", "--recursive", "s3://fs-bucket/"]));
    assert!(!ls.contains("small.bin") && !ls.contains("empty"), "{ls}");
}

/// Runs `cmd`; returns whether it succeeded and its stderr.
fn attempt(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every S3 client over TLS 1.3 against a cluster whose CA it is given (`cyxcloud up`'s
/// default): aws-cli, boto3, rclone, s3cmd, an s3fs mount and the Rust SDK store and read back
/// an object; each one without the CA refuses the connection.
#[test]
fn s3_clients_over_tls_with_the_cluster_ca() {
    use cyxcloud_testkit::cluster::{Cluster, ClusterOptions};
    let [py, aws, rclone, s3cmd, s3fs] = tools();
    let cl = super::S3Cluster::new(Cluster::start(ClusterOptions {
        nodes: 7,
        chunk_size: Some(super::CHUNK),
        tls: true,
        ..Default::default()
    }));
    let endpoint = cl.http_url();
    assert!(endpoint.starts_with("https://"));
    let ca = cl.ca_path();
    let tmp = tempdir().unwrap();
    let home = tmp.path();
    let payload = data(3 * MIB + 77, 31);
    let src = home.join("payload.bin");
    std::fs::write(&src, &payload).unwrap();
    let sum = md5_hex(&payload);
    let check = |p: &Path, who: &str| {
        assert_eq!(
            md5_hex(&std::fs::read(p).unwrap()),
            sum,
            "{who}: the bytes read back differ"
        );
    };

    // aws-cli: AWS_CA_BUNDLE names the cluster CA; with the system's bundle it refuses.
    let a = |bundle: &Path| {
        let mut c = aws_cmd(&aws, &endpoint, home);
        c.env("AWS_CA_BUNDLE", bundle);
        c
    };
    run(a(&ca).args(["s3", "mb", "s3://tls-bucket"]));
    run(a(&ca)
        .arg("s3")
        .arg("cp")
        .arg(&src)
        .arg("s3://tls-bucket/aws.bin"));
    let back = home.join("aws.back");
    run(a(&ca)
        .args(["s3", "cp", "s3://tls-bucket/aws.bin"])
        .arg(&back));
    check(&back, "aws-cli");
    let (ok, err) = attempt(
        a(Path::new("/etc/ssl/certs/ca-certificates.crt"))
            .env("AWS_MAX_ATTEMPTS", "1")
            .args(["s3", "ls"]),
    );
    assert!(!ok && err.contains("SSL"), "aws-cli without the CA: {err}");

    // boto3, verifying with the CA.
    let script = format!(
        "import boto3, botocore, sys\n\
         def c(verify): return boto3.client('s3', endpoint_url='{endpoint}', region_name='us-east-1', verify=verify)\n\
         s3 = c('{ca}')\n\
         s3.put_object(Bucket='tls-bucket', Key='boto.bin', Body=open('{src}','rb').read())\n\
         open('{home}/boto.back','wb').write(s3.get_object(Bucket='tls-bucket', Key='boto.bin')['Body'].read())\n\
         try:\n    c(True).list_buckets(); print('BOTO3 TRUSTED A STRANGER')\n\
         except botocore.exceptions.SSLError: print('BOTO3 TLS OK')\n",
        ca = ca.display(),
        src = src.display(),
        home = home.display()
    );
    let out = run(Command::new(&py)
        .args(["-c", &script])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_CONFIG_FILE", home.join("aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("aws-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_CA_BUNDLE")
        .env_remove("REQUESTS_CA_BUNDLE"));
    assert!(out.contains("BOTO3 TLS OK"), "{out}");
    check(&home.join("boto.back"), "boto3");

    // rclone with --ca-cert.
    let r = |with_ca: bool| {
        let mut c = rclone_cmd(&rclone, &endpoint, home);
        if with_ca {
            c.arg("--ca-cert").arg(&ca);
        }
        c
    };
    run(r(true)
        .arg("copyto")
        .arg(&src)
        .arg("cyx:tls-bucket/rclone.bin"));
    let back = home.join("rclone.back");
    run(r(true)
        .arg("copyto")
        .arg("cyx:tls-bucket/rclone.bin")
        .arg(&back));
    check(&back, "rclone");
    let (ok, err) = attempt(r(false).args(["lsd", "cyx:", "--low-level-retries", "1"]));
    assert!(
        !ok && err.contains("certificate"),
        "rclone without the CA: {err}"
    );

    // s3cmd over https, checking the certificate against the CA.
    let hostport = endpoint.trim_start_matches("https://");
    let cfg = |ca_file: &Path, name: &str| {
        let p = home.join(name);
        std::fs::write(
            &p,
            format!(
                "[default]\naccess_key = {ACCESS_KEY}\nsecret_key = {SECRET_KEY}\nhost_base = {hostport}\n\
                 host_bucket = {hostport}\nuse_https = True\ncheck_ssl_certificate = True\n\
                 ca_certs_file = {}\nsignature_v2 = False\nbucket_location = us-east-1\n",
                ca_file.display()
            ),
        )
        .unwrap();
        p
    };
    let good = cfg(&ca, "s3cfg-tls");
    run(Command::new(&s3cmd)
        .arg("-c")
        .arg(&good)
        .arg("put")
        .arg(&src)
        .arg("s3://tls-bucket/s3cmd.bin"));
    let back = home.join("s3cmd.back");
    run(Command::new(&s3cmd)
        .arg("-c")
        .arg(&good)
        .arg("get")
        .arg("s3://tls-bucket/s3cmd.bin")
        .arg(&back));
    check(&back, "s3cmd");
    let bad = cfg(
        Path::new("/etc/ssl/certs/ca-certificates.crt"),
        "s3cfg-stranger",
    );
    let (ok, err) = attempt(
        Command::new(&s3cmd)
            .arg("-c")
            .arg(&bad)
            .args(["--max-retries=1", "ls"]),
    );
    assert!(!ok, "s3cmd without the CA: {err}");

    // An s3fs mount (libcurl), trusting the CA through CURL_CA_BUNDLE.
    let pass = home.join("s3fs-passwd");
    std::fs::write(&pass, format!("{ACCESS_KEY}:{SECRET_KEY}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mnt = home.join("tls-mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut cmd = Command::new(&s3fs);
    cmd.arg("tls-bucket")
        .arg(&mnt)
        .arg("-f")
        .args(["-o", &format!("url={endpoint}")])
        .args(["-o", "use_path_request_style"])
        .args(["-o", &format!("passwd_file={}", pass.display())])
        .args(["-o", "sigv4", "-o", "endpoint=us-east-1"])
        .env("CURL_CA_BUNDLE", &ca);
    let mut proc = Proc::spawn("s3fs-tls", cmd, &home.join("s3fs-tls.log"));
    wait_until(Duration::from_secs(60), "the TLS s3fs mount", || {
        std::fs::metadata(mnt.join("aws.bin")).ok().map(|_| ())
    });
    check(&mnt.join("aws.bin"), "s3fs");
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    proc.kill9();

    // The Rust SDK with the CA as its trust store.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use aws_smithy_http_client::tls;
        let pem = std::fs::read(&ca).unwrap();
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .tls_context(
                tls::TlsContext::builder()
                    .with_trust_store(tls::TrustStore::empty().with_pem_certificate(pem))
                    .build()
                    .unwrap(),
            )
            .build_https();
        let c = super::sdk_with(&endpoint, ACCESS_KEY, SECRET_KEY, |b| b.http_client(http));
        c.put_object()
            .bucket("tls-bucket")
            .key("sdk.bin")
            .body(aws_sdk_s3::primitives::ByteStream::from(payload.clone()))
            .send()
            .await
            .unwrap();
        let got = c
            .get_object()
            .bucket("tls-bucket")
            .key("sdk.bin")
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
        assert_eq!(md5_hex(&got), sum, "the Rust SDK");
    });
}
