//! The real `cyxcloud` binary against a live cluster (real gateway and node processes).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use cyxcloud_testkit::cluster::{ACCESS_KEY, Cluster, ClusterOptions, SECRET_KEY};
use cyxcloud_testkit::{TempDir, tempdir, wait_until};

const MIB: usize = 1 << 20;

struct Env {
    cluster: Cluster,
    home: TempDir,
}

impl Env {
    fn new(nodes: usize, chunk: usize) -> Env {
        Env::with(ClusterOptions {
            nodes,
            chunk_size: Some(chunk as u64),
            ..Default::default()
        })
    }

    fn with(opts: ClusterOptions) -> Env {
        Env {
            cluster: Cluster::start(opts),
            home: tempdir().unwrap(),
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cyxcloud"));
        c.env("CYXCLOUD_GATEWAY", self.cluster.http_url())
            .env("CYXCLOUD_ACCESS_KEY", ACCESS_KEY)
            .env("CYXCLOUD_SECRET_KEY", SECRET_KEY)
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join("config"))
            .env("XDG_CACHE_HOME", self.home.path().join("cache"))
            .env_remove("CYXCLOUD_KEY_FILE")
            .env_remove("CYXCLOUD_PASSPHRASE")
            .env_remove("CYXCLOUD_GRPC_ADDRESS")
            .env_remove("CYXCLOUD_CA_CERT")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run cyxcloud")
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cyxcloud {args:?} failed ({}):\n{}\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }
}

/// A user who is not an admin, made through the Control API: its (access key, secret key).
fn new_user(e: &Env, name: &str) -> (String, String) {
    new_user_with_quota(e, name, 0)
}

/// [`new_user`] with a storage quota (0: none).
fn new_user_with_quota(e: &Env, name: &str, quota_bytes: u64) -> (String, String) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = cyxcloud_client::Client::connect(cyxcloud_client::ClientConfig::new(
            e.cluster.grpc_url(),
            ACCESS_KEY,
            SECRET_KEY,
        ))
        .await
        .unwrap();
        let u = c
            .control()
            .create_user(cyxcloud_proto::v1::CreateUserRequest {
                name: name.into(),
                quota_bytes,
                admin: false,
            })
            .await
            .unwrap()
            .into_inner();
        (u.access_key, u.secret_key)
    })
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write_file(p: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x = 0x2545_F491_4F6C_DD1Du64 ^ seed;
    for c in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(p, &v).unwrap();
    v
}

fn sha(p: &Path) -> cyxcloud_core::Hash {
    cyxcloud_core::Hash::of(&std::fs::read(p).unwrap())
}

#[test]
fn every_command_of_the_guide_with_its_output() {
    let e = Env::new(7, MIB);
    let work = tempdir().unwrap();
    let f = work.path().join("myfile.txt");
    std::fs::write(&f, "Hello from CyxCloud!\n").unwrap();
    // upload: a file, with a prefix, a directory recursively.
    let out = e.ok(&["upload", f.to_str().unwrap(), "-b", "mybucket"]);
    assert!(
        out.contains("✓ Uploaded") && out.contains("mybucket/myfile.txt"),
        "{out}"
    );
    e.ok(&[
        "upload",
        f.to_str().unwrap(),
        "-b",
        "mybucket",
        "-p",
        "data/uploads",
    ]);
    let tree = work.path().join("my-folder");
    let a = write_file(&tree.join("a.bin"), 1536, 1);
    write_file(&tree.join("sub/b.bin"), 2 * MIB + 300 * 1024, 2);
    write_file(&tree.join("sub/deeper/c.bin"), 10, 3);
    let out = e.ok(&[
        "upload",
        tree.to_str().unwrap(),
        "-b",
        "mybucket",
        "-p",
        "data",
    ]);
    assert!(out.contains("3 files"), "{out}");

    // list: plain, long, human, prefix, max-keys, json.
    let out = e.ok(&["list", "mybucket"]);
    let keys: Vec<&str> = out.lines().collect();
    assert_eq!(
        keys,
        [
            "data/a.bin",
            "data/sub/b.bin",
            "data/sub/deeper/c.bin",
            "data/uploads/myfile.txt",
            "myfile.txt"
        ]
    );
    let out = e.ok(&["list", "mybucket", "-l", "-H"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("KEY")
            && lines[0].contains("SIZE")
            && lines[0].contains("LAST MODIFIED")
            && lines[0].ends_with("ETAG")
    );
    assert_eq!(lines[1], "-".repeat(100));
    assert!(
        lines[2].starts_with("data/a.bin") && lines[2].contains("1.50 KB"),
        "{out}"
    );
    assert!(lines[3].contains("2.29 MB"), "{out}");
    assert!(lines.last().unwrap().starts_with("5 objects, "), "{out}");
    let out = e.ok(&["list", "mybucket", "-l"]);
    assert!(out.contains(" 1536 "), "bytes without -H: {out}");
    assert_eq!(
        e.ok(&["list", "mybucket", "-p", "data/sub/"])
            .lines()
            .count(),
        2
    );
    assert_eq!(
        e.ok(&["list", "mybucket", "--max-keys", "2"])
            .lines()
            .count(),
        2
    );
    let json: serde_json::Value =
        serde_json::from_str(&e.ok(&["--json", "list", "mybucket"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 5);
    assert_eq!(json[0]["size"], 1536);

    // download: one key to a dir, a prefix, a whole bucket.
    let out_dir = work.path().join("downloads");
    std::fs::create_dir_all(&out_dir).unwrap();
    e.ok(&[
        "download",
        "mybucket",
        "-k",
        "data/a.bin",
        "-o",
        &format!("{}/", out_dir.display()),
    ]);
    assert_eq!(std::fs::read(out_dir.join("a.bin")).unwrap(), a);
    e.ok(&[
        "download",
        "mybucket",
        "--prefix",
        "data/sub/",
        "-o",
        work.path().join("backup").to_str().unwrap(),
    ]);
    assert_eq!(
        sha(&work.path().join("backup/data/sub/b.bin")),
        sha(&tree.join("sub/b.bin"))
    );
    e.ok(&[
        "download",
        "mybucket",
        "-o",
        work.path().join("full").to_str().unwrap(),
    ]);
    for rel in [
        "data/a.bin",
        "data/sub/b.bin",
        "data/sub/deeper/c.bin",
        "myfile.txt",
    ] {
        assert!(work.path().join("full").join(rel).exists(), "{rel}");
    }

    // delete: preview, then --force.
    let out = e.ok(&["delete", "mybucket", "-k", "data/a.bin"]);
    assert!(
        out.starts_with(
            "Warning: About to delete: mybucket/data/a.bin\n  Size: 1536 bytes\n  Last modified: "
        ),
        "{out}"
    );
    assert!(
        out.ends_with("\nUse --force to delete without confirmation.\n"),
        "{out}"
    );
    assert_eq!(
        e.ok(&["list", "mybucket"]).lines().count(),
        5,
        "preview deletes nothing"
    );
    assert_eq!(
        e.ok(&["delete", "mybucket", "-k", "data/a.bin", "--force"]),
        "✓ Deleted: mybucket/data/a.bin\n"
    );
    assert_eq!(e.ok(&["list", "mybucket"]).lines().count(), 4);
    let gone = e.run(&["delete", "mybucket", "-k", "data/a.bin", "--force"]);
    assert_eq!(
        gone.status.code(),
        Some(3),
        "not found exits 3: {}",
        text(&gone.stderr)
    );

    // status: gateway and bucket views.
    let out = e.ok(&["status"]);
    assert!(
        out.contains("Gateway Status: ● Online") && out.contains("7 online of 7"),
        "{out}"
    );
    // -v: every node, and (for an admin) the gateway's background workers and their state.
    let out = e.ok(&["status", "-v"]);
    for want in [
        "WORKER",
        "journal-tailer",
        "node-sweep",
        "write-expiry",
        "metrics-refresh",
    ] {
        assert!(out.contains(want), "status -v lacks {want}:\n{out}");
    }
    let sweep = out.lines().find(|l| l.contains("node-sweep")).unwrap();
    assert!(
        sweep.contains("idle") || sweep.contains("busy"),
        "the sweep is working: {sweep}"
    );
    let v: serde_json::Value = serde_json::from_str(&e.ok(&["--json", "status"])).unwrap();
    let steps = v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "node-sweep")
        .map(|w| w["steps"].as_u64().unwrap())
        .unwrap();
    assert!(steps >= 1, "{v}");
    let out = e.ok(&["status", "-b", "mybucket", "-v"]);
    assert!(
        out.contains("Bucket: mybucket")
            && out.contains("Objects:      4")
            && out.contains("Recent Objects:"),
        "{out}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&e.ok(&["--json", "status", "-b", "mybucket"])).unwrap();
    assert_eq!(json["objects"], 4);

    // A user who is not an admin sees its own usage, nothing of the nodes or the cluster.
    let (ak, sk) = new_user(&e, "carol");
    let as_carol = |args: &[&str]| -> String {
        let out = e
            .cmd()
            .args(args)
            .env("CYXCLOUD_ACCESS_KEY", &ak)
            .env("CYXCLOUD_SECRET_KEY", &sk)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let mine = work.path().join("carols.txt");
    std::fs::write(&mine, b"carol's bytes").unwrap();
    as_carol(&["upload", mine.to_str().unwrap(), "-b", "carols"]);
    let out = as_carol(&["status", "-v"]);
    assert!(
        out.contains("Your account") && out.contains("Buckets:      1"),
        "{out}"
    );
    assert!(out.contains("Objects:      1 (13 B)"), "{out}");
    for hidden in [
        "NODE",
        "online of",
        "127.0.0.1",
        "WORKER",
        "Chunks",
        "Capacity",
    ] {
        assert!(!out.contains(hidden), "a user sees {hidden:?}:\n{out}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&as_carol(&["--json", "status", "-v"])).unwrap();
    assert!(v.get("nodes").is_none() && v["files"] == 1, "{v}");

    // Output into a pipe whose reader is gone: the command ends quietly (SIGPIPE), no panic.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = e
        .cmd()
        .args(["status", "-v"])
        .stdout(writer)
        .output()
        .unwrap();
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
    // `up --help` describes what it starts, each of which exists.
    let help = e.ok(&["up", "--help"]);
    assert!(help.contains("rebalancer"), "{help}");
    assert!(cyxcloud_testkit::bin("cyxcloud-rebalancer").exists());

    // Errors: bad credentials exit 4, unreachable gateway exits 5 with a clear message.
    let bad = e
        .cmd()
        .args(["list", "mybucket"])
        .env("CYXCLOUD_SECRET_KEY", "wrong")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(4), "{}", text(&bad.stderr));
    let down = e
        .cmd()
        .args(["status"])
        .env("CYXCLOUD_GATEWAY", "http://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(5));
    assert!(text(&down.stdout).contains("Gateway Status: ● Offline"));
}

#[test]
fn encrypted_upload_needs_the_key_big_files_survive_four_dead_nodes_and_a_fifth_fails_cleanly() {
    let mut e = Env::new(14, 4 * MIB);
    let work = tempdir().unwrap();
    let key_file = work.path().join("master.key");
    let secret = work.path().join("secret.bin");
    write_file(&secret, 3 * MIB + 5, 7);
    let out = e
        .cmd()
        .args([
            "upload",
            secret.to_str().unwrap(),
            "-b",
            "vault",
            "-e",
            "--key-file",
            key_file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(key_file.exists(), "the key file is created on first use");
    // Without the key: refused with exit code 4; with it: identical bytes.
    let no_key = e.run(&[
        "download",
        "vault",
        "-k",
        "secret.bin",
        "-o",
        work.path().join("x").to_str().unwrap(),
    ]);
    assert_eq!(no_key.status.code(), Some(4), "{}", text(&no_key.stderr));
    let got = work.path().join("got.bin");
    e.ok(&[
        "download",
        "vault",
        "-k",
        "secret.bin",
        "-o",
        got.to_str().unwrap(),
        "--key-file",
        key_file.to_str().unwrap(),
    ]);
    assert_eq!(sha(&got), sha(&secret));

    // 1 GiB up and down with equal checksums, then again with 4 of the 14 nodes dead.
    let big = work.path().join("big.bin");
    write_file(&big, 1 << 30, 11);
    // Default settings: the upload returns at k+m-1 shards of a chunk; once the rebalancer has
    // stored the slow ones, any 4 nodes may die.
    e.ok(&["upload", big.to_str().unwrap(), "-b", "vault"]);
    e.cluster.wait_redundant(Duration::from_secs(180));
    let status: serde_json::Value = serde_json::from_str(&e.ok(&["--json", "status"])).unwrap();
    assert_eq!(status["pending_repairs"], 0, "{status}");
    let back = work.path().join("big.back");
    e.ok(&[
        "download",
        "vault",
        "-k",
        "big.bin",
        "-o",
        back.to_str().unwrap(),
    ]);
    assert_eq!(sha(&back), sha(&big));
    std::fs::remove_file(&back).unwrap();
    // No repair from here on: what is readable depends on the dead nodes alone.
    e.cluster.kill_rebalancer();
    for i in [1, 4, 8, 13] {
        e.cluster.kill_node(i);
    }
    e.ok(&[
        "download",
        "vault",
        "-k",
        "big.bin",
        "-o",
        back.to_str().unwrap(),
    ]);
    assert_eq!(sha(&back), sha(&big));

    // A fifth node dead (more than m): the download fails with exit code 7, says why, and
    // leaves neither the file nor a partial one; with the nodes back it succeeds.
    e.cluster.kill_node(0);
    let lost = work.path().join("lost.bin");
    let out = e.run(&[
        "download",
        "vault",
        "-k",
        "secret.bin",
        "-o",
        lost.to_str().unwrap(),
        "--key-file",
        key_file.to_str().unwrap(),
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(
        err.contains("unrecoverable") || err.contains("shards"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("lost"))
        .collect();
    assert!(left.is_empty(), "a failed download left {left:?}");
    for i in [0, 1, 4, 8, 13] {
        e.cluster.start_node(i);
    }
    for i in [0, 1, 4, 8, 13] {
        e.cluster.wait_registered(i);
    }
    e.ok(&[
        "download",
        "vault",
        "-k",
        "secret.bin",
        "-o",
        lost.to_str().unwrap(),
        "--key-file",
        key_file.to_str().unwrap(),
    ]);
    assert_eq!(sha(&lost), sha(&secret));
}

/// A user over quota: the upload that would exceed it fails with exit code 6 and says so,
/// nothing of it is visible, and once space is freed the same upload succeeds.
#[test]
fn an_upload_over_quota_fails_cleanly_and_succeeds_once_space_is_freed() {
    let e = Env::new(7, MIB);
    let (ak, sk) = new_user_with_quota(&e, "dave", 3 * MIB as u64);
    let as_dave = |args: &[&str]| {
        e.cmd()
            .env("CYXCLOUD_ACCESS_KEY", &ak)
            .env("CYXCLOUD_SECRET_KEY", &sk)
            .args(args)
            .output()
            .unwrap()
    };
    let work = tempdir().unwrap();
    let (a, b) = (work.path().join("a.bin"), work.path().join("b.bin"));
    write_file(&a, 2 * MIB, 81);
    write_file(&b, 2 * MIB, 82);
    let ok = as_dave(&["upload", a.to_str().unwrap(), "-b", "daves"]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let over = as_dave(&["upload", b.to_str().unwrap(), "-b", "daves"]);
    let err = text(&over.stderr);
    assert_eq!(over.status.code(), Some(6), "{err}");
    assert!(err.to_lowercase().contains("quota"), "{err}");
    let listed = text(&as_dave(&["list", "daves"]).stdout);
    assert!(
        listed.contains("a.bin") && !listed.contains("b.bin"),
        "{listed}"
    );
    let back = work.path().join("b.back");
    let gone = as_dave(&[
        "download",
        "daves",
        "-k",
        "b.bin",
        "-o",
        back.to_str().unwrap(),
    ]);
    assert_eq!(gone.status.code(), Some(3), "{}", text(&gone.stderr));
    // Space freed: the same upload fits.
    let del = as_dave(&["delete", "daves", "-k", "a.bin", "--force"]);
    assert!(del.status.success(), "{}", text(&del.stderr));
    let ok = as_dave(&["upload", b.to_str().unwrap(), "-b", "daves"]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let got = as_dave(&[
        "download",
        "daves",
        "-k",
        "b.bin",
        "-o",
        back.to_str().unwrap(),
    ]);
    assert!(got.status.success(), "{}", text(&got.stderr));
    assert_eq!(sha(&back), sha(&b));
}

/// A node killed, then another hung (SIGSTOP), while `cyxcloud upload` runs: each upload
/// either succeeds and downloads identical, or fails with a non-zero exit and leaves no file.
#[test]
fn a_node_killed_or_hung_mid_upload_leaves_the_file_whole_or_absent() {
    let mut e = Env::new(9, MIB);
    e.cluster.kill_rebalancer();
    let work = tempdir().unwrap();
    for (round, fault) in ["kill", "hang"].into_iter().enumerate() {
        let victim = 2 + round * 3;
        let src = work.path().join(format!("{fault}.bin"));
        write_file(&src, 24 * MIB + 17, 50 + round as u64);
        let before = e.cluster.node_metric_sum("cyxcloud_bytes_uploaded");
        let mut cmd = e.cmd();
        cmd.args(["upload", src.to_str().unwrap(), "-b", "midwrite"]);
        let mut up = cyxcloud_testkit::Proc::spawn(
            "cyxcloud upload",
            cmd,
            &work.path().join(format!("{fault}.log")),
        );
        wait_until(
            Duration::from_secs(60),
            "the upload to reach the nodes",
            || {
                (e.cluster.node_metric_sum("cyxcloud_bytes_uploaded") >= before + MIB as u64)
                    .then_some(())
            },
        );
        match fault {
            "kill" => e.cluster.kill_node(victim),
            _ => e.cluster.pause_node(victim),
        }
        let status = up.wait_exit(Duration::from_secs(300));
        let back = work.path().join(format!("{fault}.back"));
        let got = e.run(&[
            "download",
            "midwrite",
            "-k",
            &format!("{fault}.bin"),
            "-o",
            back.to_str().unwrap(),
        ]);
        eprintln!("{fault}: upload {status}: {}", up.log());
        if status.success() {
            assert!(got.status.success(), "{}", text(&got.stderr));
            assert_eq!(sha(&back), sha(&src), "{fault}: the uploaded file differs");
        } else {
            // Failed for lack of nodes: "unavailable" (5), the cluster's to retry.
            assert_eq!(status.code(), Some(5), "{fault}: {}", up.log());
            assert_eq!(
                got.status.code(),
                Some(3),
                "{fault}: a failed upload is visible: {}",
                text(&got.stderr)
            );
        }
        if fault == "hang" {
            e.cluster.resume_node(victim);
        }
    }
}

#[test]
fn an_upload_that_runs_past_its_tokens_renews_them() {
    // Bearer tokens and node Put/Get tokens of 2 s: an upload fed from a pipe for 7 s must
    // renew both on the way, and nothing of it may surface as an error.
    let e = Env::with(ClusterOptions {
        nodes: 7,
        chunk_size: Some(MIB as u64),
        gateway_settings: vec![
            "auth.token_ttl_secs=2".into(),
            "writes.token_ttl_secs=2".into(),
        ],
        ..Default::default()
    });
    let work = tempdir().unwrap();
    let fifo = work.path().join("stream.bin");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let mut cmd = e.cmd();
    cmd.args(["upload", fifo.to_str().unwrap(), "-b", "tokens"]);
    let mut up = cyxcloud_testkit::Proc::spawn("cyxcloud upload", cmd, &work.path().join("up.log"));
    let mut sent = Vec::new();
    {
        use std::io::Write;
        // Opening blocks until the upload opens the pipe to read it.
        let mut w = std::fs::File::create(&fifo).unwrap();
        let start = std::time::Instant::now();
        for i in 0..7u32 {
            let piece = write_file(&work.path().join("piece"), MIB + 1000, u64::from(i));
            w.write_all(&piece).unwrap();
            sent.extend_from_slice(&piece);
            // The expiry is the behaviour under test: pace the pipe by the clock.
            let next = Duration::from_secs(u64::from(i) + 1);
            wait_until(Duration::from_secs(30), "the next second", || {
                (start.elapsed() > next).then_some(())
            });
        }
    }
    let status = up.wait_exit(Duration::from_secs(120));
    assert!(status.success(), "{}", up.log());
    let back = work.path().join("back.bin");
    e.ok(&[
        "download",
        "tokens",
        "-k",
        "stream.bin",
        "-o",
        back.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&back).unwrap() == sent, "the file differs");

    // An upload from a pipe cannot resume (what the pipe gave cannot be read again): killed
    // once chunks of it are durable, it leaves no resume state behind.
    let before = e.cluster.node_metric_sum("cyxcloud_bytes_uploaded");
    let mut cmd = e.cmd();
    cmd.args(["upload", fifo.to_str().unwrap(), "-b", "tokens"]);
    let mut up =
        cyxcloud_testkit::Proc::spawn("cyxcloud upload", cmd, &work.path().join("up2.log"));
    let mut w = std::fs::File::create(&fifo).unwrap();
    {
        use std::io::Write;
        w.write_all(&write_file(&work.path().join("piece"), 4 * MIB, 9))
            .unwrap();
    }
    wait_until(Duration::from_secs(60), "chunks to reach the nodes", || {
        (e.cluster.node_metric_sum("cyxcloud_bytes_uploaded") >= before + 2 * MIB as u64)
            .then_some(())
    });
    up.kill9();
    drop(w);
    let saved = e.home.path().join("cache/cyxcloud/uploads");
    assert_eq!(
        std::fs::read_dir(&saved).map_or(0, |d| d.count()),
        0,
        "resume state saved for a pipe"
    );
}

#[test]
fn an_interrupted_upload_resumes_from_the_last_durable_chunk() {
    let e = Env::new(7, MIB);
    let work = tempdir().unwrap();
    let f = work.path().join("resume.bin");
    write_file(&f, 256 * MIB, 5);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt
        .block_on(cyxcloud_client::Client::connect(
            cyxcloud_client::ClientConfig::new(e.cluster.grpc_url(), ACCESS_KEY, SECRET_KEY),
        ))
        .unwrap();
    let mut child = e
        .cmd()
        .args(["upload", f.to_str().unwrap(), "-b", "resume"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill the upload once the gateway has checkpointed some chunks of it.
    wait_until(Duration::from_secs(60), "an upload checkpoint", || {
        (checkpointed_bytes(&e, &rt, &client) >= 8 * MIB as u64).then_some(())
    });
    let _ = child.kill();
    let _ = child.wait();
    let out = e
        .cmd()
        .args(["upload", f.to_str().unwrap(), "-b", "resume"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("Resuming upload of"),
        "second run must resume: {}",
        text(&out.stderr)
    );
    let back: PathBuf = work.path().join("back.bin");
    e.ok(&[
        "download",
        "resume",
        "-k",
        "resume.bin",
        "-o",
        back.to_str().unwrap(),
    ]);
    assert_eq!(sha(&back), sha(&f));
}

/// Bytes the gateway reports durable for the write whose id the CLI saved for resuming.
fn checkpointed_bytes(
    e: &Env,
    rt: &tokio::runtime::Runtime,
    client: &cyxcloud_client::Client,
) -> u64 {
    let dir = e.home.path().join("cache/cyxcloud/uploads");
    let Some(Ok(entry)) = std::fs::read_dir(&dir).ok().and_then(|mut d| d.next()) else {
        return 0;
    };
    let Ok(state) = std::fs::read(entry.path()) else {
        return 0;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&state) else {
        return 0;
    };
    let Some(write_id) = v["write_id"].as_str().map(str::to_string) else {
        return 0;
    };
    rt.block_on(
        client
            .control()
            .get_write(cyxcloud_proto::v1::GetWriteRequest { write_id }),
    )
    .map(|r| r.into_inner().durable_bytes)
    .unwrap_or(0)
}

#[test]
fn up_starts_everything_and_finds_its_data_again() {
    let data = tempdir().unwrap();
    let home = tempdir().unwrap();
    let port = cyxcloud_testkit::free_port();
    let start = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cyxcloud"));
        c.args([
            "up",
            "--data-dir",
            data.path().to_str().unwrap(),
            "--port",
            &port.to_string(),
            "--nodes",
            "7",
            "--no-mount",
            // cargo test sets CARGO and CARGO_MANIFEST_DIR as `cargo run` does: start the
            // binaries it built instead of building the daemons again.
            "--no-build",
        ])
        .env("HOME", home.path())
        .env_remove("CYXCLOUD_ACCESS_KEY")
        .env_remove("CYXCLOUD_SECRET_KEY");
        cyxcloud_testkit::Proc::spawn("cyxcloud up", c, &data.path().join("up.log"))
    };
    let mut up = start();
    let log_has = |up: &cyxcloud_testkit::Proc, s: &str| up.log().contains(s);
    wait_until(Duration::from_secs(120), "cyxcloud up to be ready", || {
        log_has(&up, "Press Ctrl-C to stop.").then_some(())
    });
    let log = up.log();
    let field = |name: &str| -> String {
        log.lines()
            .find(|l| l.trim_start().starts_with(name))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or_default()
            .to_string()
    };
    let (access, secret) = (field("Access key:"), field("Secret key:"));
    assert!(!access.is_empty() && !secret.is_empty(), "{log}");
    // Secure by default: TLS, with the cluster CA it prints.
    assert!(
        log.contains(&format!("S3 endpoint:  https://127.0.0.1:{port}")),
        "{log}"
    );
    let ca = log
        .lines()
        .find(|l| l.trim_start().starts_with("CA:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_string();
    assert!(ca.ends_with("ca.pem") && Path::new(&ca).exists(), "{log}");
    let cli_with = |args: &[&str], ca: Option<&str>| -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cyxcloud"));
        c.args(args)
            .env("CYXCLOUD_GATEWAY", format!("https://127.0.0.1:{port}"))
            .env("CYXCLOUD_ACCESS_KEY", &access)
            .env("CYXCLOUD_SECRET_KEY", &secret)
            .env("HOME", home.path())
            .env_remove("CYXCLOUD_CA_CERT");
        if let Some(ca) = ca {
            c.env("CYXCLOUD_CA_CERT", ca);
        }
        c.output().unwrap()
    };
    let cli = |args: &[&str]| cli_with(args, Some(&ca));
    // Without the CA the CLI refuses to talk to the gateway, and says why.
    let refused = cli_with(&["list", "persist"], None);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("CA certificate"),
        "{}",
        text(&refused.stderr)
    );
    // Plaintext to the TLS port gets nothing.
    assert!(
        !matches!(
            cyxcloud_testkit::http_get(([127, 0, 0, 1], port).into(), "/health"),
            Ok((200, _))
        ),
        "the gateway answered plaintext"
    );
    let work = tempdir().unwrap();
    let f = work.path().join("keep.bin");
    write_file(&f, 5 * MIB + 1, 21);
    let out = cli(&["upload", f.to_str().unwrap(), "-b", "persist"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Ctrl-C: everything stops in order and nothing is left running.
    up.term();
    let status = up.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "up exited with {status}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "gateway still listening after stop"
    );

    let mut up = start();
    wait_until(
        Duration::from_secs(120),
        "cyxcloud up (second start)",
        || {
            up.log()
                .matches("Press Ctrl-C to stop.")
                .count()
                .eq(&2)
                .then_some(())
        },
    );
    assert!(
        up.log().contains(&access),
        "credentials are kept in the data dir"
    );
    let back = work.path().join("back.bin");
    let out = cli(&[
        "download",
        "persist",
        "-k",
        "keep.bin",
        "-o",
        back.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha(&back), sha(&f));

    // Supervision: a killed node is restarted (the cluster goes on serving); one that keeps
    // dying is given up after 5 restarts within a minute, and that is said once.
    let nodes_of = |up: &cyxcloud_testkit::Proc| children(up.pid(), "cyxcloud-node");
    assert_eq!(nodes_of(&up).len(), 7);
    let node_01 = |up: &cyxcloud_testkit::Proc| {
        nodes_of(up)
            .into_iter()
            .find(|&p| cmdline(p).contains("local-node-01/config.toml"))
    };
    let restarts = |up: &cyxcloud_testkit::Proc| {
        up.log()
            .matches("local-node-01 exited; restarted it")
            .count()
    };
    for round in 1..=5 {
        let victim = node_01(&up).expect("local-node-01 running");
        kill9(victim);
        wait_until(Duration::from_secs(60), "local-node-01 restarted", || {
            (restarts(&up) == round && node_01(&up).is_some_and(|p| p != victim)).then_some(())
        });
        if round == 1 {
            let out = cli(&["list", "persist"]);
            assert!(
                text(&out.stdout).contains("keep.bin"),
                "{}",
                text(&out.stderr)
            );
        }
    }
    kill9(node_01(&up).expect("local-node-01 running"));
    wait_until(
        Duration::from_secs(60),
        "the crash loop to be reported",
        || {
            up.log()
                .contains("local-node-01 keeps crashing; not restarting it")
                .then_some(())
        },
    );
    assert!(
        node_01(&up).is_none(),
        "a daemon in a crash loop was restarted"
    );
    assert_eq!(nodes_of(&up).len(), 6);
    // Another kill is still handled, so at least one more supervision round has run.
    let rebalancer = children(up.pid(), "cyxcloud-rebalancer");
    assert_eq!(rebalancer.len(), 1, "{rebalancer:?}");
    kill9(rebalancer[0]);
    wait_until(Duration::from_secs(60), "the rebalancer restarted", || {
        up.log()
            .contains("rebalancer exited; restarted it")
            .then_some(())
    });
    // Ctrl-C stops every child; none is left behind.
    let all = children(up.pid(), "");
    assert!(!all.is_empty());
    up.term();
    assert!(up.wait_exit(Duration::from_secs(60)).success());
    assert_eq!(
        up.log().matches("keeps crashing").count(),
        1,
        "reported more than once"
    );
    let left: Vec<u32> = all
        .into_iter()
        .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        .collect();
    assert!(
        left.is_empty(),
        "children left running after Ctrl-C: {left:?}"
    );
}

/// The pids whose parent is `parent` and whose command line contains `name`.
fn children(parent: u32, name: &str) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(") ")?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u32>()
                        .ok()
                })
                == Some(parent)
        })
        .filter(|&p| cmdline(p).contains(name))
        .collect();
    out.sort();
    out
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn kill9(pid: u32) {
    let st = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -9 {pid}");
}

/// A fake source checkout for `cyxcloud up`: a workspace root whose `scripts/deps` and cargo
/// record how they were called and exit as told (`DEPS_EXIT`, `CARGO_EXIT`).
fn fake_checkout(root: &Path) -> PathBuf {
    std::fs::create_dir_all(root.join("scripts")).unwrap();
    std::fs::create_dir_all(root.join("cli")).unwrap();
    std::fs::write(
        root.join("Cargo.toml"),
        "[workspace]\nmembers = [\"cli\"]\n",
    )
    .unwrap();
    let calls = root.join("calls.log");
    std::fs::write(
        root.join("scripts/deps"),
        format!(
            "echo \"deps $*\" >> {c}\n\
             [ \"$DEPS_EXIT\" = 0 ] || echo 'install them with:  sudo apt-get install -y clang' >&2\n\
             exit $DEPS_EXIT\n",
            c = calls.display()
        ),
    )
    .unwrap();
    let cargo = root.join("fake-cargo");
    std::fs::write(
        &cargo,
        format!(
            "#!/bin/sh\necho \"cargo $*\" >> {c}\nexit $CARGO_EXIT\n",
            c = calls.display()
        ),
    )
    .unwrap();
    let exec = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
    std::fs::set_permissions(&cargo, exec).unwrap();
    cargo
}

#[test]
fn up_from_a_checkout_installs_packages_and_builds_the_daemons_first() {
    let root = tempdir().unwrap();
    let cargo = fake_checkout(root.path());
    let data = root.path().join("data");
    let calls = || std::fs::read_to_string(root.path().join("calls.log")).unwrap_or_default();
    let up = |deps: i32, build: i32| -> Output {
        Command::new(env!("CARGO_BIN_EXE_cyxcloud"))
            .args(["up", "--no-mount", "--nodes", "1", "--data-dir"])
            .arg(&data)
            .args(["--port", &cyxcloud_testkit::free_port().to_string()])
            .env("CARGO", &cargo)
            .env("CARGO_MANIFEST_DIR", root.path().join("cli"))
            .env("DEPS_EXIT", deps.to_string())
            .env("CARGO_EXIT", build.to_string())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };

    // Packages missing and not installable: the install command is shown, nothing is built
    // and nothing started.
    let out = up(1, 0);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("sudo apt-get install -y clang"), "{err}");
    assert!(err.contains("system packages"), "{err}");
    assert_eq!(calls(), "deps build run\n");
    assert!(!data.exists(), "nothing is started before the build");

    // The build fails: its error is the command's error, and nothing starts.
    std::fs::remove_file(root.path().join("calls.log")).unwrap();
    let out = up(0, 101);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("building the daemons failed"),
        "{}",
        text(&out.stderr)
    );
    // This test binary's cyxcloud is a debug build: the daemons are built with the same
    // profile, from the checkout's root manifest.
    let manifest = root.path().join("Cargo.toml");
    assert_eq!(
        calls(),
        format!(
            "deps build run\ncargo build --manifest-path {} -p cyxcloud-gateway -p cyxcloud-node -p cyxcloud-rebalancer -p cyxcloud-mountd\n",
            manifest.display()
        )
    );
    assert!(!data.exists(), "nothing is started when the build fails");
}

#[test]
fn node_start_status_stop_manage_a_real_local_node() {
    let home = tempdir().unwrap();
    let dir = home.path().join("node");
    let run = |args: &[&str]| -> Output {
        Command::new(env!("CARGO_BIN_EXE_cyxcloud"))
            .args(args)
            .env("HOME", home.path())
            .env_remove("CENTRAL_ADDRESS")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let d = dir.to_str().unwrap();
    let out = run(&["node", "status", "--data-dir", d]);
    assert_eq!(out.status.code(), Some(3), "no node yet");
    let out = run(&["node", "start", "--storage-gb", "2", "--data-dir", d]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("✓ Node started"),
        "{}",
        text(&out.stdout)
    );
    let again = run(&["node", "start", "--storage-gb", "2", "--data-dir", d]);
    assert!(!again.status.success() && text(&again.stderr).contains("already running"));
    let out = run(&["node", "status", "--data-dir", d]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(
        s.contains("Node: ● Running") && s.contains("Storage:   2 GB allocated"),
        "{s}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&run(&["--json", "node", "status", "--data-dir", d]).stdout)
            .unwrap();
    let pid = json["pid"].as_u64().unwrap();
    assert!(
        json["health"]["capacity_bytes"].as_f64().unwrap_or(0.0) >= 1.9e9,
        "{json}"
    );
    let out = run(&["node", "stop", "--data-dir", d]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
    );
    assert_eq!(
        run(&["node", "status", "--data-dir", d]).status.code(),
        Some(3)
    );
}

/// `cyxcloud mount`, `mount status` (text and `--json`) and `unmount` front the real
/// `cyxcloud-mountd`: a file written and held open shows as not yet durable, fsync makes it
/// durable, unmount leaves no mount behind, and the bytes are at the gateway.
#[test]
fn mount_status_and_unmount_through_the_cli() {
    use std::io::Write;
    let env = Env::new(7, MIB);
    let work = tempdir().unwrap();
    let seed = work.path().join("seed.txt");
    write_file(&seed, 100, 5);
    env.ok(&["upload", seed.to_str().unwrap(), "-b", "drive"]);
    assert!(
        env.ok(&["mount", "status"])
            .contains("No CyxCloud drives mounted.")
    );

    let point = work.path().join("mnt");
    std::fs::create_dir_all(&point).unwrap();
    let p = point.to_str().unwrap();
    // Uploads wait 10 minutes unless a file is closed or synced: what is written stays pending.
    env.ok(&["mount", p, "--upload-delay-ms", "600000"]);
    let mounted = || {
        std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(p))
    };
    assert!(mounted(), "mountd detached before the mount was up");
    assert!(point.join("drive/seed.txt").exists());

    let path = point.join("drive/notes.txt");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(b"written through the drive\n").unwrap();
    let status = wait_until(
        Duration::from_secs(20),
        "the pending file in status",
        || {
            let s = env.ok(&["mount", "status"]);
            s.contains("notes.txt").then_some(s)
        },
    );
    assert!(
        status.contains(p) && status.contains("● online"),
        "{status}"
    );
    assert!(status.contains("1 files not yet durable"), "{status}");
    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "mount", "status"])).unwrap();
    let m = &json[0];
    assert_eq!(m["mountpoint"].as_str(), Some(p), "{json}");
    assert_eq!(m["queued_uploads"].as_u64(), Some(1), "{json}");
    let state = m["files"][0]["state"].as_str().unwrap_or("<missing>");
    assert!(
        ["pending", "queued", "uploading", "retrying"]
            .iter()
            .any(|p| state.starts_with(p)),
        "a file not yet durable: {json}"
    );

    // fsync returns once the layout is committed; the status follows within a refresh.
    f.sync_all().unwrap();
    wait_until(
        Duration::from_secs(20),
        "status to show no pending file",
        || {
            env.ok(&["mount", "status"])
                .contains("0 files not yet durable")
                .then_some(())
        },
    );
    drop(f);

    let out = env.ok(&["unmount", p]);
    assert!(out.contains("✓ Unmounted"), "{out}");
    assert!(!mounted(), "still mounted after unmount");
    assert!(
        env.ok(&["mount", "status"])
            .contains("No CyxCloud drives mounted.")
    );
    let back = work.path().join("back");
    env.ok(&[
        "download",
        "drive",
        "-k",
        "notes.txt",
        "-o",
        back.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(back.join("notes.txt"))
            .or_else(|_| std::fs::read(&back))
            .unwrap(),
        b"written through the drive\n"
    );
}

/// `cyxcloud node stop --drain` on a node that holds shards: the rebalancer moves them, the
/// command shows the shards left and returns once the node has drained and exited; the files
/// read back.
#[test]
fn node_stop_drain_moves_the_data_away_then_stops_the_node() {
    let e = Env::new(14, 256 * 1024);
    let dir = e.home.path().join("node");
    let d = dir.to_str().unwrap();
    let token = e.home.path().join("join-token");
    std::fs::write(&token, cyxcloud_testkit::JOIN_TOKEN).unwrap();
    let out = e.ok(&[
        "node",
        "start",
        "--storage-gb",
        "2",
        "--data-dir",
        d,
        "--central",
        &e.cluster.grpc_url(),
        "--join-token-file",
        token.to_str().unwrap(),
    ]);
    assert!(out.contains("✓ Node started"), "{out}");
    let status = || -> serde_json::Value {
        serde_json::from_str(&e.ok(&["--json", "node", "status", "--data-dir", d])).unwrap()
    };
    wait_until(Duration::from_secs(60), "the node to register", || {
        (status()["health"]["registered"] == true).then_some(())
    });
    let work = e.home.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let src = work.join("f.bin");
    write_file(&src, 6 << 20, 77);
    e.ok(&["upload", src.to_str().unwrap(), "-b", "moving"]);
    wait_until(Duration::from_secs(60), "shards on the new node", || {
        (status()["health"]["shard_count"].as_u64() > Some(0)).then_some(())
    });
    let out = e.ok(&["node", "stop", "--drain", "--data-dir", d]);
    assert!(out.contains("is draining"), "{out}");
    assert!(out.contains("shards on the node"), "{out}");
    assert!(out.contains("✓ Node drained and stopped"), "{out}");
    assert_eq!(
        e.run(&["node", "status", "--data-dir", d]).status.code(),
        Some(3)
    );
    let back = work.join("f.back");
    e.ok(&[
        "download",
        "moving",
        "-k",
        "f.bin",
        "-o",
        back.to_str().unwrap(),
    ]);
    assert_eq!(sha(&back), sha(&src));
}

/// The CLI and the drive against a TLS cluster, trusting its CA through `CYXCLOUD_CA_CERT`
/// (`cyxcloud mount` hands it to the drive); without it the CLI is refused with a clear error.
#[test]
fn the_cli_and_the_drive_work_over_tls_with_the_cluster_ca() {
    use std::io::Write;
    let e = Env {
        cluster: Cluster::start(ClusterOptions {
            nodes: 7,
            chunk_size: Some(MIB as u64),
            tls: true,
            ..Default::default()
        }),
        home: tempdir().unwrap(),
    };
    let ca = e.cluster.ca_path();
    let with_ca = |args: &[&str]| -> String {
        let out = e
            .cmd()
            .args(args)
            .env("CYXCLOUD_CA_CERT", &ca)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let work = tempdir().unwrap();
    let f = work.path().join("sealed.bin");
    write_file(&f, 3 * MIB + 11, 17);
    with_ca(&["upload", f.to_str().unwrap(), "-b", "tls"]);
    let back = work.path().join("back.bin");
    with_ca(&[
        "download",
        "tls",
        "-k",
        "sealed.bin",
        "-o",
        back.to_str().unwrap(),
    ]);
    assert_eq!(sha(&back), sha(&f));
    // Without the CA: refused, saying what is missing.
    let out = e.cmd().args(["list", "tls"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("CA certificate"),
        "{}",
        text(&out.stderr)
    );

    // The drive: reads what the CLI wrote, writes what the CLI reads back.
    let point = work.path().join("mnt");
    std::fs::create_dir_all(&point).unwrap();
    let p = point.to_str().unwrap();
    with_ca(&["mount", p]);
    let through = point.join("tls/sealed.bin");
    wait_until(Duration::from_secs(30), "the file in the drive", || {
        through.exists().then_some(())
    });
    assert_eq!(sha(&through), sha(&f));
    let mut w = std::fs::File::create(point.join("tls/from-drive.txt")).unwrap();
    w.write_all(b"written through the drive over TLS\n")
        .unwrap();
    w.sync_all().unwrap();
    drop(w);
    let got = work.path().join("from-drive.txt");
    with_ca(&[
        "download",
        "tls",
        "-k",
        "from-drive.txt",
        "-o",
        got.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(&got).unwrap(),
        b"written through the drive over TLS\n"
    );
    with_ca(&["unmount", p]);
}
