//! Acceptance tests of the drive (issue 7), each through a real mount of a live cluster.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use cyxcloud_proto::v1;
use cyxcloud_testkit::wait_until;

use crate::cluster::{Cluster, Mount, data, file_hash, sh, state};

#[test]
fn browse_write_and_read_back() {
    let c = Cluster::start(7);
    c.create_bucket("photos");
    let m = Mount::start(&c, &[]);
    // The gateway's own buckets (names starting with a dot, such as the S3 multipart staging
    // bucket) are hidden from listings, even from an admin's mount.
    let names: Vec<String> = std::fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["photos"]);
    let small = data(1, 1000);
    std::fs::write(m.p("photos/small.bin"), &small).unwrap();
    assert!(std::fs::read(m.p("photos/small.bin")).unwrap() == small);
    let big = data(2, 9 << 20);
    {
        let mut f = std::fs::File::create(m.p("photos/big.bin")).unwrap();
        f.write_all(&big).unwrap();
        f.sync_all().unwrap();
    }
    m.wait_durable("photos/small.bin");
    assert!(
        c.get("photos", "big.bin") == big,
        "the gateway has the bytes"
    );
    // A second mount with an empty cache reads through the nodes.
    let m2 = Mount::start(&c, &["--bucket", "photos"]);
    assert!(
        std::fs::read(m2.p("big.bin")).unwrap() == big,
        "big.bin differs"
    );
    assert!(std::fs::read(m2.p("small.bin")).unwrap() == small);
    // A small read in the middle fetches only the chunk it touches.
    let m3 = Mount::start(&c, &[]);
    let mut f = std::fs::File::open(m3.p("photos/big.bin")).unwrap();
    f.seek(SeekFrom::Start(5 << 20)).unwrap();
    let mut buf = vec![0u8; 100];
    f.read_exact(&mut buf).unwrap();
    assert!(buf == big[5 << 20..(5 << 20) + 100]);
    let cached = m3.status()["cached_chunks"].as_u64().unwrap();
    assert!(
        cached <= 2,
        "a 100-byte read fetched {cached} chunks of a 9 MiB file"
    );
    // Read-only mounts refuse writes.
    let ro = Mount::start(&c, &["--read-only"]);
    assert!(std::fs::read(ro.p("photos/small.bin")).unwrap() == small);
    let e = std::fs::write(ro.p("photos/new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
}

/// Renames racing the upload of what was just written must not bring back stale attributes.
#[test]
fn rename_right_after_write_keeps_the_new_bytes() {
    let c = Cluster::start(7);
    c.create_bucket("race");
    let m = Mount::start(&c, &[]);
    for round in 0..5 {
        let dir = m.p(&format!("race/d{round}"));
        std::fs::create_dir(&dir).unwrap();
        let p = |r: &str| dir.join(r);
        std::fs::write(p("a"), b"A").unwrap();
        std::fs::write(p("b"), b"B").unwrap();
        crate::posix::sys::rename2(&p("a"), &p("c"), libc::RENAME_NOREPLACE).unwrap();
        crate::posix::sys::rename2(&p("c"), &p("b"), libc::RENAME_EXCHANGE).unwrap();
        assert_eq!(std::fs::read(p("b")).unwrap(), b"A", "round {round}");
        assert_eq!(std::fs::read(p("c")).unwrap(), b"B", "round {round}");
        std::fs::write(p("t.tmp"), b"new").unwrap();
        std::fs::rename(p("t.tmp"), p("b")).unwrap();
        assert_eq!(std::fs::read(p("b")).unwrap(), b"new", "round {round}");
    }
}

/// Waits for a change made elsewhere to show (the drive is told through the gateway's event
/// feed, typically within a second; the deadline is generous for a loaded CI machine, and the
/// listings checked are held by the kernel, so only an invalidation makes them change).
fn shows_up(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    wait_until(Duration::from_secs(30), what, || f().then_some(()));
    eprintln!("{what}: {:?}", t.elapsed());
}

/// The names in directory `p`, sorted.
fn list(p: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn changes_elsewhere_appear_in_cached_listings_and_reads() {
    let c = Cluster::start(7);
    c.create_bucket("shared");
    let a = Mount::start(&c, &[]);
    let b = Mount::start(&c, &[]);
    // Both mounts have listed the bucket (cached as complete).
    assert_eq!(std::fs::read_dir(a.p("shared")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(b.p("shared")).unwrap().count(), 0);
    // Another writer (the client library, like the S3 API) adds a file. The kernel holds the
    // (empty) listing of both mounts; the new name shows up in a listing too.
    c.put("shared", "from-api.txt", b"hello from the API");
    shows_up("a file written through the API to be listed", || {
        list(&b.p("shared")) == ["from-api.txt"]
    });
    shows_up("a file written through the API to appear", || {
        std::fs::read(a.p("shared/from-api.txt")).ok().as_deref() == Some(b"hello from the API")
    });
    // One mount writes; the other sees it.
    {
        let mut f = std::fs::File::create(a.p("shared/from-a.txt")).unwrap();
        f.write_all(b"written by mount a").unwrap();
        f.sync_all().unwrap();
    }
    shows_up("a file written by another mount to appear", || {
        std::fs::read(b.p("shared/from-a.txt")).ok().as_deref() == Some(b"written by mount a")
    });
    // Overwrite, rename and delete show up too.
    c.put("shared", "from-api.txt", b"second version");
    shows_up("an overwrite to appear", || {
        std::fs::read(a.p("shared/from-api.txt")).ok().as_deref() == Some(b"second version")
    });
    std::fs::rename(b.p("shared/from-a.txt"), b.p("shared/renamed.txt")).unwrap();
    shows_up("a rename to appear", || {
        a.p("shared/renamed.txt").exists() && !a.p("shared/from-a.txt").exists()
    });
    assert_eq!(list(&a.p("shared")), ["from-api.txt", "renamed.txt"]);
    std::fs::remove_file(b.p("shared/renamed.txt")).unwrap();
    shows_up("a delete to appear", || !a.p("shared/renamed.txt").exists());
    shows_up("a delete to leave the listing", || {
        list(&a.p("shared")) == ["from-api.txt"]
    });
    let names: Vec<_> = std::fs::read_dir(a.p("shared"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["from-api.txt"]);
    // A directory removed elsewhere while this mount is still writing a new file in it (not
    // at the gateway yet, the file did not keep the directory from being removed): the file
    // is made again where it was made, with its directory, not dropped.
    std::fs::create_dir(a.p("shared/gone")).unwrap();
    let mut kept = std::fs::File::create(a.p("shared/gone/kept.txt")).unwrap();
    kept.write_all(b"not lost").unwrap();
    let api = c.client();
    c.rt.block_on(api.control().rmdir(v1::RemoveRequest {
        path: Some(v1::BucketPath {
            bucket: "shared".into(),
            path: "gone".into(),
        }),
        ..Default::default()
    }))
    .unwrap();
    shows_up("a directory removed elsewhere to disappear", || {
        !b.p("shared/gone").exists()
    });
    drop(kept);
    wait_until(
        Duration::from_secs(30),
        "the new file at the gateway",
        || {
            c.entry("shared", "gone/kept.txt")
                .filter(|e| e.size == 8)
                .map(|_| ())
        },
    );
    assert_eq!(c.get("shared", "gone/kept.txt"), b"not lost");
    // A new bucket appears at the top.
    c.create_bucket("late-bucket");
    shows_up("a new bucket to appear", || a.p("late-bucket").is_dir());
}

#[test]
fn kill9_between_write_and_upload_loses_nothing() {
    let c = Cluster::start(7);
    c.create_bucket("safe");
    // Background uploads wait 10 minutes: only close, fsync or a restart sends the file.
    let mut m = Mount::start(&c, &["--upload-delay-ms", "600000"]);
    // Listed, so the mount creates files in it on its own (under reserved ids): the gateway
    // does not have them until their upload.
    assert_eq!(std::fs::read_dir(m.p("safe")).unwrap().count(), 0);
    let bytes = data(7, 6 << 20);
    let mut f = std::fs::File::create(m.p("safe/unsent.bin")).unwrap();
    f.write_all(&bytes).unwrap();
    let mut small = std::fs::File::create(m.p("safe/small.txt")).unwrap();
    small.write_all(b"a small file, created here").unwrap();
    // Written, still open: the upload has not started.
    assert_ne!(state(&m.p("safe/unsent.bin")).as_deref(), Some("durable"));
    let ino = std::fs::metadata(m.p("safe/small.txt")).unwrap().ino();
    m.kill9();
    drop((f, small));
    assert!(
        c.list("safe").is_empty(),
        "the gateway has neither file yet"
    );
    m.launch();
    m.wait_durable("safe/unsent.bin");
    m.wait_durable("safe/small.txt");
    assert!(
        c.get("safe", "unsent.bin") == bytes,
        "the gateway has every byte"
    );
    assert_eq!(c.get("safe", "small.txt"), b"a small file, created here");
    assert!(std::fs::read(m.p("safe/unsent.bin")).unwrap() == bytes);
    assert_eq!(
        std::fs::metadata(m.p("safe/small.txt")).unwrap().ino(),
        ino,
        "the inode number given at create is the gateway's id"
    );
    // A clean unmount with fusermount3 -u exits 0.
    m.unmount();
}

#[test]
fn files_written_through_the_drive_survive_four_dead_nodes_repair_and_four_more() {
    // Default settings: a commit returns at k+m-1 shards; the rebalancer does the rest.
    let mut c = Cluster::start(18);
    c.start_rebalancer();
    c.create_bucket("durable");
    let m = Mount::start(&c, &[]);
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            (
                format!("durable/f{i}"),
                data(100 + i, (3 << 20) + i as usize * 12345),
            )
        })
        .collect();
    for (p, d) in &files {
        let mut f = std::fs::File::create(m.p(p)).unwrap();
        f.write_all(d).unwrap();
        f.sync_all().unwrap();
    }
    c.wait_repaired(0, Duration::from_secs(120));
    for i in [1, 4, 8, 12] {
        c.kill_node(i);
    }
    c.wait_repaired(4, Duration::from_secs(180));
    for i in [0, 5, 9, 16] {
        c.kill_node(i);
    }
    let fresh = Mount::start(&c, &[]);
    for (p, d) in &files {
        assert!(std::fs::read(fresh.p(p)).unwrap() == *d, "{p} unreadable");
    }
}

#[test]
fn more_than_m_nodes_lost_reads_fail_with_eio_and_work_again_when_they_return() {
    let mut c = Cluster::start(7);
    c.create_bucket("fragile");
    let m = Mount::start(&c, &[]);
    let d = data(77, (5 << 20) + 321);
    {
        let mut f = std::fs::File::create(m.p("fragile/f.bin")).unwrap();
        f.write_all(&d).unwrap();
        f.sync_all().unwrap();
    }
    m.wait_durable("fragile/f.bin");
    // 3 of 7 nodes hold 6 of each chunk's 14 shards: nothing can be decoded.
    for i in [0, 2, 5] {
        c.kill_node(i);
    }
    // A fresh mount has no cached copy: the read fails with EIO, cleanly and at once.
    let fresh = Mount::start(&c, &[]);
    assert_eq!(
        std::fs::metadata(fresh.p("fragile/f.bin")).unwrap().len(),
        d.len() as u64,
        "metadata is still served"
    );
    let e = std::fs::read(fresh.p("fragile/f.bin")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(
        fresh.log().contains("I/O error returned to the caller"),
        "the drive logs why"
    );
    // The nodes return: the same mount reads the file (no failure was cached).
    for i in [0, 2, 5] {
        c.start_node(i);
    }
    for i in [0, 2, 5] {
        c.wait_registered(i);
    }
    assert!(std::fs::read(fresh.p("fragile/f.bin")).unwrap() == d);
}

#[test]
fn a_gateway_restart_in_the_middle_of_an_upload_is_retried_to_a_whole_file() {
    let mut c = Cluster::start(7);
    c.create_bucket("restart");
    let m = Mount::start(&c, &["--upload-delay-ms", "0"]);
    let d = data(91, 40 << 20);
    let before = c.node_metric_sum("cyxcloud_bytes_uploaded");
    std::fs::write(m.p("restart/big.bin"), &d).unwrap();
    // The upload is under way (shards reach the nodes) when the gateway dies.
    wait_until(
        Duration::from_secs(60),
        "the upload to reach the nodes",
        || (c.node_metric_sum("cyxcloud_bytes_uploaded") >= before + (1 << 20)).then_some(()),
    );
    c.kill_gateway();
    // Meanwhile the file reads back from the local copy, and is not yet durable.
    assert!(std::fs::read(m.p("restart/big.bin")).unwrap() == d);
    assert_ne!(state(&m.p("restart/big.bin")).as_deref(), Some("durable"));
    c.start_gateway();
    // The gateway shows the file as created (empty, before its upload) or whole, never a
    // part of it.
    if let Some(e) = c.entry("restart", "big.bin") {
        assert!(
            e.size == 0 || e.size == d.len() as u64,
            "a partial upload is visible: {} bytes",
            e.size
        );
    }
    m.wait_durable("restart/big.bin");
    assert!(
        c.get("restart", "big.bin") == d,
        "the file at the gateway differs"
    );
}

#[test]
fn a_write_over_quota_fails_fsync_with_edquot_and_uploads_once_space_is_freed() {
    let c = Cluster::start(7);
    let (ak, sk) = c.create_user("frank", 3 << 20);
    let m = Mount::start_as(&c, &["--upload-delay-ms", "0"], (&ak, &sk));
    std::fs::create_dir(m.p("franks")).unwrap();
    let (one, two) = (data(31, 2 << 20), data(32, 2 << 20));
    {
        let mut f = std::fs::File::create(m.p("franks/one.bin")).unwrap();
        f.write_all(&one).unwrap();
        f.sync_all().unwrap();
    }
    let mut f = std::fs::File::create(m.p("franks/two.bin")).unwrap();
    f.write_all(&two).unwrap();
    let e = f.sync_all().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{e}");
    drop(f);
    // The local copy is kept (nothing written is lost); the gateway has nothing of it.
    assert!(std::fs::read(m.p("franks/two.bin")).unwrap() == two);
    let st = state(&m.p("franks/two.bin")).unwrap_or_default();
    assert!(st.contains("quota") || st.starts_with("retrying"), "{st}");
    assert!(c.entry("franks", "two.bin").is_none_or(|e| e.size == 0));
    // Space freed: the queued upload goes through.
    std::fs::remove_file(m.p("franks/one.bin")).unwrap();
    m.wait_durable("franks/two.bin");
    assert!(c.get("franks", "two.bin") == two);
}

#[test]
fn a_node_killed_or_hung_mid_upload_never_shows_a_part_and_the_drive_retries_to_whole() {
    let mut c = Cluster::start(8);
    c.create_bucket("midwrite");
    let m = Mount::start(&c, &["--upload-delay-ms", "0"]);
    for (round, fault) in ["kill", "hang"].into_iter().enumerate() {
        let victim = 1 + round * 3;
        let rel = format!("midwrite/{fault}.bin");
        let d = data(200 + round as u64, 24 << 20);
        let before = c.node_metric_sum("cyxcloud_bytes_uploaded");
        let mut f = std::fs::File::create(m.p(&rel)).unwrap();
        f.write_all(&d).unwrap();
        wait_until(
            Duration::from_secs(60),
            "the upload to reach the nodes",
            || (c.node_metric_sum("cyxcloud_bytes_uploaded") >= before + (1 << 20)).then_some(()),
        );
        match fault {
            "kill" => c.kill_node(victim),
            _ => c.pause_node(victim),
        }
        // fsync reports how the attempt under way ended; either way nothing is lost.
        let synced = f.sync_all();
        eprintln!("{fault}: fsync {synced:?}");
        drop(f);
        if let Some(e) = c.entry("midwrite", &format!("{fault}.bin")) {
            assert!(
                e.size == 0 || e.size == d.len() as u64,
                "{fault}: a partial upload is visible: {} bytes",
                e.size
            );
        }
        assert!(
            std::fs::read(m.p(&rel)).unwrap() == d,
            "{fault}: the local copy"
        );
        // The drive retries around the dead or hung node until the file is whole there.
        m.wait_durable(&rel);
        assert!(
            c.get("midwrite", &format!("{fault}.bin")) == d,
            "{fault}: the file at the gateway differs"
        );
        if fault == "hang" {
            c.resume_node(victim);
        }
    }
}

#[test]
fn a_mount_outlives_its_bearer_tokens() {
    // Bearer and node tokens of 2 s: every call after the first seconds needs a renewed one,
    // and a layout the drive keeps must not be used with its node tokens expired.
    let c = Cluster::start_with(7, &["auth.token_ttl_secs=2", "writes.token_ttl_secs=2"]);
    c.create_bucket("tokens");
    let m = Mount::start(&c, &["--upload-delay-ms", "0"]);
    // Five 4 MiB chunks; a first read caches the layout (and reads ahead two chunks).
    let big = data(64, 5 * (4 << 20));
    c.put("tokens", "big.bin", &big);
    let mut one = [0u8; 1];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(m.p("tokens/big.bin")).unwrap();
        f.read_exact(&mut one).unwrap();
    }
    assert_eq!(one[0], big[0]);
    let first = data(61, 300_000);
    {
        let mut f = std::fs::File::create(m.p("tokens/first.bin")).unwrap();
        f.write_all(&first).unwrap();
        f.sync_all().unwrap();
    }
    // The expiry is the behaviour under test: wait past it by the clock.
    let issued = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "the first tokens to expire",
        || (issued.elapsed() > Duration::from_secs(3)).then_some(()),
    );
    // Metadata, reads of data not cached, writes and commits all still work.
    c.put("tokens", "from-api.bin", &data(62, 200_000));
    let fresh = Mount::start(&c, &[]);
    wait_until(
        Duration::from_secs(10),
        "fresh tokens to be expired",
        || (issued.elapsed() > Duration::from_secs(7)).then_some(()),
    );
    assert_eq!(
        list(&m.p("tokens")),
        ["big.bin", "first.bin", "from-api.bin"]
    );
    // A chunk not read ahead, fetched through the layout cached before the tokens expired.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(m.p("tokens/big.bin")).unwrap();
        let mut buf = vec![0u8; 4096];
        let at = 17 << 20;
        f.read_exact_at(&mut buf, at as u64).unwrap();
        assert!(buf == big[at..at + 4096], "the bytes differ");
    }
    assert!(std::fs::read(fresh.p("tokens/first.bin")).unwrap() == first);
    let second = data(63, 400_000);
    {
        let mut f = std::fs::File::create(m.p("tokens/second.bin")).unwrap();
        f.write_all(&second).unwrap();
        f.sync_all().unwrap();
    }
    m.wait_durable("tokens/second.bin");
    assert!(c.get("tokens", "second.bin") == second);
    assert!(
        !m.log().contains("I/O error returned to the caller"),
        "an expired token surfaced as an error"
    );
}

#[test]
fn times_set_while_a_file_uploads_are_kept_locally_and_at_the_gateway() {
    use std::time::{SystemTime, UNIX_EPOCH};
    let c = Cluster::start(7);
    c.create_bucket("times");
    let m = Mount::start(&c, &["--upload-delay-ms", "0"]);
    // Every node hangs, so the file's upload stays in flight until they resume: the window a
    // utimens can fall into, held open.
    for i in 0..c.nodes.len() {
        c.pause_node(i);
    }
    let f = m.p("times/f.bin");
    let body = data(70, 300_000);
    std::fs::write(&f, &body).unwrap();
    wait_until(Duration::from_secs(30), "the upload to start", || {
        (state(&f).as_deref() == Some("uploading")).then_some(())
    });
    let at = |s: u64, ns: u32| UNIX_EPOCH + Duration::new(s, ns);
    let (atime, mtime) = (at(1_000_000_000, 123), at(1_100_000_000, 456_789));
    std::fs::File::open(&f)
        .unwrap()
        .set_times(
            std::fs::FileTimes::new()
                .set_accessed(atime)
                .set_modified(mtime),
        )
        .unwrap();
    assert_eq!(
        state(&f).as_deref(),
        Some("uploading"),
        "set inside the window"
    );
    for i in 0..c.nodes.len() {
        c.resume_node(i);
    }
    m.wait_durable("times/f.bin");
    let ns = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64;
    // The gateway has the time set, not the one the upload began with.
    wait_until(
        Duration::from_secs(30),
        "the gateway to have the mtime",
        || (c.entry("times", "f.bin")?.mtime_ns == ns(mtime)).then_some(()),
    );
    // The mount has followed the change journal past the commit's own event (a later change
    // is listed), and still shows both times set.
    c.put("times", "marker", b"after the commit");
    wait_until(
        Duration::from_secs(30),
        "the mount to list the marker",
        || {
            list(&m.p("times"))
                .contains(&"marker".to_string())
                .then_some(())
        },
    );
    let md = std::fs::metadata(&f).unwrap();
    assert_eq!(md.modified().unwrap(), mtime);
    assert_eq!(md.accessed().unwrap(), atime);
    // Another mount sees both times, and the bytes.
    let other = Mount::start(&c, &[]);
    let md = std::fs::metadata(other.p("times/f.bin")).unwrap();
    assert_eq!(md.modified().unwrap(), mtime);
    assert_eq!(md.accessed().unwrap(), atime);
    assert!(std::fs::read(other.p("times/f.bin")).unwrap() == body);
}

/// Runs `script` with `sh` as user and group `uid` (no supplementary groups): whether it
/// succeeded, and what it printed (stdout then stderr).
fn as_user(uid: u32, script: &str) -> (bool, String) {
    use std::os::unix::process::CommandExt;
    let out = Command::new("sh")
        .args(["-c", script])
        .uid(uid)
        .gid(uid)
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn with_allow_other_another_user_gets_exactly_the_access_the_modes_grant() {
    const USER: u32 = 4242;
    let c = Cluster::start(7);
    c.create_bucket("perm");
    let m = Mount::start(&c, &["--allow-other"]);
    let private = Mount::start(&c, &[]);
    // The user must reach the mountpoints through their parent directories.
    for mnt in [&m, &private] {
        let parent = mnt.path.parent().unwrap();
        std::fs::set_permissions(parent, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    let p = |rel: &str| m.p(&format!("perm/{rel}")).display().to_string();
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &str, bits: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(bits)).unwrap()
    };
    mode(&m.p("perm").display().to_string(), 0o755);
    std::fs::create_dir(p("private")).unwrap();
    mode(&p("private"), 0o700);
    std::fs::write(p("private/secret"), b"root only\n").unwrap();
    std::fs::write(p("public.txt"), b"for everyone\n").unwrap();
    mode(&p("public.txt"), 0o644);
    std::fs::create_dir(p("shared")).unwrap();
    mode(&p("shared"), 0o1777);
    std::fs::write(p("shared/roots"), b"root's, in a sticky directory\n").unwrap();

    // What the modes grant.
    let (ok, out) = as_user(USER, &format!("cat {}", p("public.txt")));
    assert!(ok && out == "for everyone\n", "{out}");
    let (ok, out) = as_user(USER, &format!("echo more >> {}", p("public.txt")));
    assert!(!ok && out.contains("Permission denied"), "{out}");
    let (ok, out) = as_user(USER, &format!("ls {}", p("private")));
    assert!(!ok && out.contains("Permission denied"), "{out}");
    let (ok, out) = as_user(USER, &format!("cat {}", p("private/secret")));
    assert!(!ok && out.contains("Permission denied"), "{out}");
    let (ok, out) = as_user(USER, &format!("chmod 666 {}", p("public.txt")));
    assert!(!ok && out.contains("Operation not permitted"), "{out}");
    let (ok, out) = as_user(USER, &format!("touch -c -d 2001-01-01 {}", p("public.txt")));
    assert!(!ok && out.contains("Operation not permitted"), "{out}");
    let (ok, out) = as_user(USER, &format!("mkdir {}", p("mine")));
    assert!(!ok && out.contains("Permission denied"), "{out}");
    // In the sticky directory: the user's own file is the user's, and only the owner may
    // remove a file there.
    let (ok, out) = as_user(
        USER,
        &format!("echo mine > {0} && chmod 600 {0}", p("shared/mine")),
    );
    assert!(ok, "{out}");
    let (ok, out) = as_user(USER, &format!("rm -f {}", p("shared/roots")));
    assert!(!ok && out.contains("Operation not permitted"), "{out}");
    let (ok, out) = as_user(USER, &format!("mv {} {}", p("shared/roots"), p("shared/x")));
    assert!(!ok && out.contains("Operation not permitted"), "{out}");
    assert!(std::fs::read(p("shared/roots")).is_ok());
    let md = std::fs::metadata(p("shared/mine")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (USER, USER, 0o600)
    );
    // The owner and mode reach the gateway: another mount sees them.
    m.wait_durable("perm/shared/mine");
    let again = Mount::start(&c, &[]);
    let md = std::fs::metadata(again.p("perm/shared/mine")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (USER, USER, 0o600)
    );
    let (ok, out) = as_user(USER, &format!("rm {}", p("shared/mine")));
    assert!(ok, "{out}");

    // Without --allow-other the mount is its owner's alone, whatever the modes say.
    let (ok, out) = as_user(USER, &format!("ls {}", private.p("perm").display()));
    assert!(!ok && out.contains("Permission denied"), "{out}");
}

#[test]
fn concurrent_moves_of_one_tree_from_two_mounts_the_api_and_s3_lose_no_file() {
    let c = Cluster::start(7);
    c.create_bucket("race");
    let a = Mount::start(&c, &[]);
    let b = Mount::start(&c, &[]);
    let dirs = ["src", "to-a", "to-b", "to-api", "to-s3"];
    for d in dirs {
        std::fs::create_dir(a.p(&format!("race/{d}"))).unwrap();
    }
    let names: Vec<String> = (0..40).map(|i| format!("f{i:02}")).collect();
    let body = |n: &str| format!("the content of {n}\n").repeat(500).into_bytes();
    for n in &names {
        let mut f = std::fs::File::create(a.p(&format!("race/src/{n}"))).unwrap();
        f.write_all(&body(n)).unwrap();
        f.sync_all().unwrap();
    }
    // Mount b sees the whole tree before the race.
    wait_until(Duration::from_secs(30), "mount b to list the tree", || {
        (list(&b.p("race/src")).len() == names.len()).then_some(())
    });
    let (src, to_api) = (
        c.entry("race", "src").unwrap().id,
        c.entry("race", "to-api").unwrap().id,
    );
    let api = c.client();
    let work = cyxcloud_testkit::tempdir().unwrap();
    // Four movers, each to its own directory. An S3 client (rclone), whose move is a copy then
    // a delete (S3 has no atomic rename), starts first; once its first file has landed the
    // other three move every file at once, each in its own order (so they meet in the
    // middle); a loser gets ENOENT, and rclone fails for the files others took first.
    let mut cmd = Command::new("rclone");
    // The plain-HTTP endpoint needs no CA bundle (rclone refuses one it cannot apply).
    cmd.env_remove("AWS_CA_BUNDLE")
        .env("RCLONE_CONFIG", work.path().join("rclone.conf"))
        .env("RCLONE_CONFIG_CYX_TYPE", "s3")
        .env("RCLONE_CONFIG_CYX_PROVIDER", "Other")
        .env(
            "RCLONE_CONFIG_CYX_ACCESS_KEY_ID",
            crate::cluster::ACCESS_KEY,
        )
        .env(
            "RCLONE_CONFIG_CYX_SECRET_ACCESS_KEY",
            crate::cluster::SECRET_KEY,
        )
        .env("RCLONE_CONFIG_CYX_ENDPOINT", c.http_url())
        .env("RCLONE_CONFIG_CYX_REGION", "us-east-1")
        .env("RCLONE_CONFIG_CYX_FORCE_PATH_STYLE", "true")
        .args(["move", "cyx:race/src", "cyx:race/to-s3", "-v"])
        .args(["--retries", "1", "--low-level-retries", "1"])
        .args(["--transfers", "2", "--checkers", "2"]);
    let mut rclone = cyxcloud_testkit::Proc::spawn("rclone", cmd, &work.path().join("rclone.log"));
    wait_until(Duration::from_secs(60), "rclone's first move", || {
        c.list("race")
            .iter()
            .any(|p| p.starts_with("to-s3/"))
            .then_some(())
    });
    let go = std::sync::Barrier::new(3);
    let order =
        |rot: usize| -> Vec<&String> { names.iter().cycle().skip(rot).take(names.len()).collect() };
    let moved = |m: &Mount, to: &str, rot: usize| -> Vec<String> {
        go.wait();
        let mut won = Vec::new();
        for n in order(rot) {
            match std::fs::rename(
                m.p(&format!("race/src/{n}")),
                m.p(&format!("race/{to}/{n}")),
            ) {
                Ok(()) => won.push(n.clone()),
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{to} {n}: {e}"),
            }
        }
        won
    };
    let (won_a, won_b, won_api) = std::thread::scope(|s| {
        let ta = s.spawn(|| moved(&a, "to-a", 0));
        let tb = s.spawn(|| moved(&b, "to-b", 13));
        let tapi = s.spawn(|| {
            go.wait();
            let mut won = Vec::new();
            for n in order(26) {
                let r = c.rt.block_on(api.control().rename(v1::RenameRequest {
                    parent_id: src,
                    name: n.clone(),
                    new_parent_id: to_api,
                    new_name: n.clone(),
                    ..Default::default()
                }));
                match r {
                    Ok(_) => won.push(n.clone()),
                    Err(e) => assert_eq!(e.code(), tonic::Code::NotFound, "api {n}: {e}"),
                }
            }
            won
        });
        (ta.join().unwrap(), tb.join().unwrap(), tapi.join().unwrap())
    });
    let status = rclone.wait_exit(Duration::from_secs(120));
    eprintln!("rclone move: {status}");
    eprintln!(
        "moves won: mount a {}, mount b {}, api {}",
        won_a.len(),
        won_b.len(),
        won_api.len()
    );
    // At the gateway no file is lost or left behind, every copy is whole, and only S3's
    // copy-then-delete can have left a second copy.
    let listed = c.list("race");
    let mut only_s3 = 0;
    for n in &names {
        let at: Vec<&String> = listed
            .iter()
            .filter(|p| p.ends_with(&format!("/{n}")))
            .collect();
        assert!(!at.is_empty(), "{n} was lost");
        assert!(at.iter().all(|p| !p.starts_with("src/")), "{n}: {at:?}");
        assert!(
            at.len() == 1 || (at.len() == 2 && at.iter().any(|p| p.starts_with("to-s3/"))),
            "{n} is at {at:?}"
        );
        for p in &at {
            assert!(c.get("race", p) == body(n), "{p} differs");
        }
        if at.len() == 1 && at[0].starts_with("to-s3/") {
            only_s3 += 1;
        }
    }
    eprintln!("files moved by S3 alone: {only_s3}");
    // Every move a mount or the API reported done is where it said, and each file was moved
    // by one of them unless S3 deleted it from src first.
    for (to, won) in [("to-a", &won_a), ("to-b", &won_b), ("to-api", &won_api)] {
        for n in won {
            assert!(
                listed.contains(&format!("{to}/{n}")),
                "{to}/{n} reported moved but missing"
            );
        }
    }
    assert_eq!(
        won_a.len() + won_b.len() + won_api.len() + only_s3,
        names.len(),
        "a move reported done did not happen, or two movers won one file"
    );
    // Both mounts converge on the gateway's view.
    for d in dirs {
        let want: Vec<String> = {
            let mut v: Vec<String> = listed
                .iter()
                .filter_map(|p| p.strip_prefix(&format!("{d}/")).map(str::to_string))
                .collect();
            v.sort();
            v
        };
        for m in [&a, &b] {
            wait_until(
                Duration::from_secs(30),
                &format!("a mount to list {d}"),
                || (list(&m.p(&format!("race/{d}"))) == want).then_some(()),
            );
        }
    }
}

#[test]
fn gateway_down_cached_files_stay_readable_and_writes_queue() {
    let mut c = Cluster::start(7);
    c.create_bucket("offline");
    let m = Mount::start(&c, &[]);
    let big = data(9, 5 << 20);
    std::fs::create_dir(m.p("offline/docs")).unwrap();
    for (p, d) in [
        ("offline/docs/a.txt", b"alpha".to_vec()),
        ("offline/big.bin", big.clone()),
    ] {
        let mut f = std::fs::File::create(m.p(p)).unwrap();
        f.write_all(&d).unwrap();
        f.sync_all().unwrap();
    }
    for i in 0..40 {
        c.put(
            "offline",
            &format!("many/f{i:02}"),
            format!("file {i}").as_bytes(),
        );
    }
    // Read once through the nodes so the chunks are cached, then lose the gateway.
    let mut fresh = Mount::start(&c, &[]);
    // Looking names up one by one in a directory never listed: after a few, the mount lists
    // it, so the rest (and names that do not exist) are answered without the gateway.
    for i in 0..20 {
        assert_eq!(
            std::fs::metadata(fresh.p(&format!("offline/many/f{i:02}")))
                .unwrap()
                .len(),
            format!("file {i}").len() as u64
        );
    }
    assert!(std::fs::read(fresh.p("offline/big.bin")).unwrap() == big);
    assert_eq!(
        std::fs::read(fresh.p("offline/docs/a.txt")).unwrap(),
        b"alpha"
    );
    // Browsing the directory while online makes its listing complete, so names can be
    // created in it offline (the mount knows no other file holds them).
    assert_eq!(std::fs::read_dir(fresh.p("offline")).unwrap().count(), 3);
    c.kill_gateway();
    assert!(std::fs::read(fresh.p("offline/big.bin")).unwrap() == big);
    assert_eq!(
        std::fs::read(fresh.p("offline/docs/a.txt")).unwrap(),
        b"alpha"
    );
    let mut names: Vec<_> = std::fs::read_dir(fresh.p("offline"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["big.bin", "docs", "many"]);
    assert_eq!(
        std::fs::metadata(fresh.p("offline/many/f39"))
            .unwrap()
            .len(),
        7,
        "a name never looked up is known from the listing"
    );
    assert_eq!(
        std::fs::metadata(fresh.p("offline/many/absent"))
            .unwrap_err()
            .kind(),
        std::io::ErrorKind::NotFound,
        "and so is a name that does not exist"
    );
    assert_eq!(
        std::fs::metadata(fresh.p("offline/big.bin")).unwrap().len(),
        5 << 20
    );
    // A write while offline is kept and goes out when the gateway returns.
    std::fs::write(fresh.p("offline/docs/a.txt"), b"alpha, edited offline").unwrap();
    assert_ne!(
        state(&fresh.p("offline/docs/a.txt")).as_deref(),
        Some("durable")
    );
    // So is a file created offline in a listed directory (under an id reserved at start).
    std::fs::write(fresh.p("offline/made-offline.txt"), b"created offline").unwrap();
    assert_eq!(
        std::fs::read(fresh.p("offline/made-offline.txt")).unwrap(),
        b"created offline"
    );
    // The daemon dies and comes back while the gateway is still away: what it staged and
    // its stock of reserved ids are on disk, so it keeps creating files.
    fresh.kill9();
    fresh.launch();
    std::fs::write(fresh.p("offline/after-restart.txt"), b"after a restart").unwrap();
    let first = std::fs::metadata(fresh.p("offline/made-offline.txt")).unwrap();
    let second = std::fs::metadata(fresh.p("offline/after-restart.txt")).unwrap();
    assert!(
        second.ino() > first.ino(),
        "a reserved id is never handed out twice"
    );
    c.start_gateway();
    fresh.wait_durable("offline/docs/a.txt");
    fresh.wait_durable("offline/made-offline.txt");
    fresh.wait_durable("offline/after-restart.txt");
    assert_eq!(c.get("offline", "docs/a.txt"), b"alpha, edited offline");
    assert_eq!(c.get("offline", "made-offline.txt"), b"created offline");
    assert_eq!(c.get("offline", "after-restart.txt"), b"after a restart");
    assert_eq!(
        c.entry("offline", "after-restart.txt").unwrap().id,
        second.ino(),
        "the gateway names the file by the id the mount gave it"
    );
}

#[test]
fn one_gib_with_dd_reads_back_equal() {
    let c = Cluster::start(7);
    c.create_bucket("big");
    let m = Mount::start(&c, &["--cache-size", "2G"]);
    let src = tempfile::NamedTempFile::new().unwrap();
    let t = Instant::now();
    sh(&format!(
        "head -c 1073741824 /dev/urandom > {src} && dd if={src} of={dst} bs=4M conv=fsync status=none",
        src = src.path().display(),
        dst = m.p("big/1g.bin").display()
    ));
    eprintln!("1 GiB written and committed in {:?}", t.elapsed());
    assert_eq!(state(&m.p("big/1g.bin")).as_deref(), Some("durable"));
    let want = file_hash(src.path());
    let fresh = Mount::start(&c, &["--cache-size", "2G"]);
    let t = Instant::now();
    assert_eq!(file_hash(&fresh.p("big/1g.bin")), want);
    eprintln!("1 GiB read back (cold) in {:?}", t.elapsed());
}

#[test]
fn tools_work_on_the_drive() {
    let c = Cluster::start(7);
    c.create_bucket("tools");
    let m = Mount::start(&c, &[]);
    let work = tempfile::tempdir().unwrap();
    // A source tree: text, a binary larger than a chunk, an empty file, a symlink, modes.
    let src = work.path().join("tree");
    std::fs::create_dir_all(src.join("a/b/c")).unwrap();
    for i in 0..40 {
        std::fs::write(
            src.join(format!("a/file{i}.txt")),
            format!("line {i}\n").repeat(i * 50),
        )
        .unwrap();
    }
    std::fs::write(src.join("a/b/blob.bin"), data(3, 5 << 20)).unwrap();
    std::fs::write(src.join("a/b/c/empty"), b"").unwrap();
    std::os::unix::fs::symlink("../file1.txt", src.join("a/b/link")).unwrap();
    sh(&format!("chmod 750 {}", src.join("a/b").display()));
    sh(&format!(
        "cp -a {} {}",
        src.display(),
        m.p("tools/").display()
    ));
    sh(&format!(
        "diff -r {} {}",
        src.display(),
        m.p("tools/tree").display()
    ));
    assert_eq!(
        std::fs::metadata(m.p("tools/tree/a/b")).unwrap().mode() & 0o777,
        0o750
    );
    // git: clone a local repository into the drive, then fsck it.
    let repo = work.path().join("repo");
    sh(&format!(
        "set -e; git init -q {r}; cd {r}; git config user.email t@t; git config user.name t; \
         for i in $(seq 1 20); do echo $i > f$i; git add f$i; git commit -qm c$i; done; \
         head -c 300000 /dev/urandom > bin; git add bin; git commit -qm bin",
        r = repo.display()
    ));
    sh(&format!(
        "git clone -q {} {} && git -C {} fsck --full --strict",
        repo.display(),
        m.p("tools/clone").display(),
        m.p("tools/clone").display()
    ));
    assert_eq!(
        sh(&format!(
            "git -C {} log --oneline | wc -l",
            m.p("tools/clone").display()
        ))
        .trim(),
        "21"
    );
    // SQLite: a database on the drive, written in transactions and queried.
    let db = m.p("tools/app.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            .unwrap();
        for chunk in 0..10 {
            let tx = conn.unchecked_transaction().unwrap();
            for i in 0..200 {
                tx.execute(
                    "INSERT INTO t (v) VALUES (?1)",
                    [format!("row {}", chunk * 200 + i)],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2000);
    }
    // Another mount reads the committed database.
    m.wait_durable("tools/app.db");
    let other = Mount::start(&c, &["--read-only"]);
    let conn = rusqlite::Connection::open_with_flags(
        other.p("tools/app.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let v: String = conn
        .query_row("SELECT v FROM t WHERE id = 1234", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, "row 1233");
}
