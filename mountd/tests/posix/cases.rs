//! The cases. Names say what must hold.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::time::Duration;

use super::sys;
use super::{Ctx, errno, fails};
use crate::cluster::{state, xattr_get, xattr_list, xattr_remove, xattr_set};

type Case = (&'static str, fn(&Ctx));

pub fn all() -> Vec<Case> {
    vec![
        ("mkdir_creates_with_mode", mkdir_creates_with_mode),
        ("mkdir_errors", mkdir_errors),
        ("mkdir_updates_parent_times_and_links", mkdir_updates_parent),
        ("rmdir_removes_empty_only", rmdir_removes_empty_only),
        (
            "create_exclusive_and_truncate",
            create_exclusive_and_truncate,
        ),
        ("open_errors", open_errors),
        ("write_read_seek_round_trip", write_read_seek),
        ("append_writes_at_end", append_writes_at_end),
        ("unlink_removes_and_errors", unlink_removes),
        ("open_unlinked_file_keeps_working", open_unlinked),
        ("rename_file_replaces", rename_file_replaces),
        ("rename_directory_keeps_children_and_inode", rename_dir),
        ("rename_errors", rename_errors),
        ("rename_noreplace_and_exchange", rename_flags),
        ("rename_across_buckets_is_exdev", rename_exdev),
        ("symlink_and_readlink", symlinks),
        ("hard_links_share_an_inode", hard_links),
        ("chmod_changes_mode_and_ctime", chmod),
        ("chown_changes_owner", chown),
        ("utimens_sets_times", utimens),
        ("truncate_shrinks_and_extends", truncate),
        ("xattrs_set_get_list_remove", xattrs),
        ("state_xattr_reports_durability", state_xattr),
        ("statfs_reports_capacity", statfs),
        ("fallocate_extends", fallocate),
        // The drive implements no lock operations: the kernel keeps these locks, local to one
        // mount (README: two mounts do not see each other's locks). What is checked is that
        // they work on the drive's files as on a local file system.
        ("flock_is_exclusive_within_one_mount", flock),
        ("ofd_locks_conflict_within_one_mount", ofd_locks),
        ("special_files_are_refused", special_files),
        ("readdir_lists_everything", readdir),
        ("fsync_returns_after_commit", fsync_commits),
        ("buckets_are_top_level_directories", buckets),
        ("long_names", long_names),
    ]
}

fn mkdir_creates_with_mode(c: &Ctx) {
    let d = c.p("d");
    fs::DirBuilder::new().mode(0o711).create(&d).unwrap();
    let m = fs::metadata(&d).unwrap();
    assert!(m.is_dir());
    assert_eq!(m.mode() & 0o7777, 0o711);
    assert_eq!(m.nlink(), 2);
}

use std::os::unix::fs::DirBuilderExt;

fn mkdir_errors(c: &Ctx) {
    fs::create_dir(c.p("d")).unwrap();
    fails(fs::create_dir(c.p("d")), libc::EEXIST);
    fails(fs::create_dir(c.p("missing/d")), libc::ENOENT);
    fs::write(c.p("f"), b"x").unwrap();
    fails(fs::create_dir(c.p("f/d")), libc::ENOTDIR);
    fails(fs::create_dir(c.p("f")), libc::EEXIST);
}

fn mkdir_updates_parent(c: &Ctx) {
    let before = fs::metadata(&c.dir).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    fs::create_dir(c.p("sub")).unwrap();
    let after = fs::metadata(&c.dir).unwrap();
    assert!(after.mtime_nsec() != before.mtime_nsec() || after.mtime() > before.mtime());
    assert_eq!(after.nlink(), before.nlink() + 1);
}

fn rmdir_removes_empty_only(c: &Ctx) {
    fs::create_dir_all(c.p("a/b")).unwrap();
    fails(fs::remove_dir(c.p("a")), libc::ENOTEMPTY);
    fs::remove_dir(c.p("a/b")).unwrap();
    fs::remove_dir(c.p("a")).unwrap();
    fails(fs::metadata(c.p("a")), libc::ENOENT);
    fails(fs::remove_dir(c.p("a")), libc::ENOENT);
    fs::write(c.p("f"), b"x").unwrap();
    fails(fs::remove_dir(c.p("f")), libc::ENOTDIR);
}

fn create_exclusive_and_truncate(c: &Ctx) {
    let p = c.p("f");
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(&p)
        .unwrap()
        .write_all(b"hello world")
        .unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o640);
    fails(
        OpenOptions::new().write(true).create_new(true).open(&p),
        libc::EEXIST,
    );
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    assert_eq!(f.metadata().unwrap().len(), 0);
    f.write_all(b"new").unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"new");
}

fn open_errors(c: &Ctx) {
    fails(File::open(c.p("nope")), libc::ENOENT);
    fs::create_dir(c.p("d")).unwrap();
    fails(OpenOptions::new().write(true).open(c.p("d")), libc::EISDIR);
    fails(File::open(c.p("nope/x")), libc::ENOENT);
}

fn write_read_seek(c: &Ctx) {
    let p = c.p("f");
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all(&data).unwrap();
    f.seek(SeekFrom::Start(1000)).unwrap();
    f.write_all(b"XYZ").unwrap();
    f.seek(SeekFrom::Start(998)).unwrap();
    let mut b = [0u8; 7];
    f.read_exact(&mut b).unwrap();
    assert_eq!(&b[2..5], b"XYZ");
    assert_eq!(b[0], data[998]);
    // Sparse write past the end leaves zeros.
    f.seek(SeekFrom::Start(4000)).unwrap();
    f.write_all(b"end").unwrap();
    drop(f);
    let all = fs::read(&p).unwrap();
    assert_eq!(all.len(), 4003);
    assert!(all[3000..4000].iter().all(|b| *b == 0));
    assert_eq!(&all[4000..], b"end");
}

fn append_writes_at_end(c: &Ctx) {
    let p = c.p("log");
    fs::write(&p, b"one\n").unwrap();
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"two\n").unwrap();
    drop(f);
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"three\n").unwrap();
    drop(f);
    assert_eq!(fs::read_to_string(&p).unwrap(), "one\ntwo\nthree\n");
}

fn unlink_removes(c: &Ctx) {
    fs::write(c.p("f"), b"x").unwrap();
    fs::remove_file(c.p("f")).unwrap();
    fails(fs::metadata(c.p("f")), libc::ENOENT);
    fails(fs::remove_file(c.p("f")), libc::ENOENT);
    fs::create_dir(c.p("d")).unwrap();
    fails(fs::remove_file(c.p("d")), libc::EISDIR);
}

fn open_unlinked(c: &Ctx) {
    let p = c.p("f");
    fs::write(&p, b"before").unwrap();
    let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    fs::remove_file(&p).unwrap();
    fails(fs::metadata(&p), libc::ENOENT);
    f.seek(SeekFrom::End(0)).unwrap();
    f.write_all(b"+after").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "before+after");
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    drop(f);
    // A committed file too (its bytes come from the nodes).
    let q = c.p("g");
    let mut w = File::create(&q).unwrap();
    w.write_all(b"committed bytes").unwrap();
    w.sync_all().unwrap();
    drop(w);
    let mut r = File::open(&q).unwrap();
    fs::remove_file(&q).unwrap();
    let mut s = String::new();
    r.read_to_string(&mut s).unwrap();
    assert_eq!(s, "committed bytes");
}

fn rename_file_replaces(c: &Ctx) {
    fs::write(c.p("a"), b"A").unwrap();
    fs::write(c.p("b"), b"B").unwrap();
    let ino = fs::metadata(c.p("a")).unwrap().ino();
    fs::rename(c.p("a"), c.p("b")).unwrap();
    fails(fs::metadata(c.p("a")), libc::ENOENT);
    assert_eq!(fs::read(c.p("b")).unwrap(), b"A");
    assert_eq!(fs::metadata(c.p("b")).unwrap().ino(), ino);
    // write temp + rename over (the editor pattern)
    fs::write(c.p(".b.tmp"), b"B2").unwrap();
    fs::rename(c.p(".b.tmp"), c.p("b")).unwrap();
    assert_eq!(fs::read(c.p("b")).unwrap(), b"B2");
}

fn rename_dir(c: &Ctx) {
    fs::create_dir_all(c.p("x/y")).unwrap();
    fs::write(c.p("x/y/f"), b"deep").unwrap();
    fs::create_dir(c.p("z")).unwrap();
    let ino = fs::metadata(c.p("x")).unwrap().ino();
    fs::rename(c.p("x"), c.p("z/x2")).unwrap();
    assert_eq!(fs::metadata(c.p("z/x2")).unwrap().ino(), ino);
    assert_eq!(fs::read(c.p("z/x2/y/f")).unwrap(), b"deep");
    // New files in the moved tree land in the right place.
    fs::write(c.p("z/x2/y/g"), b"new").unwrap();
    assert_eq!(fs::read(c.p("z/x2/y/g")).unwrap(), b"new");
    let names: Vec<_> = fs::read_dir(c.p("z/x2/y"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2);
}

fn rename_errors(c: &Ctx) {
    fs::create_dir_all(c.p("d/sub")).unwrap();
    fs::create_dir(c.p("e")).unwrap();
    fs::write(c.p("e/f"), b"x").unwrap();
    fs::write(c.p("f"), b"x").unwrap();
    fails(fs::rename(c.p("d"), c.p("e")), libc::ENOTEMPTY);
    fails(fs::rename(c.p("f"), c.p("d")), libc::EISDIR);
    fails(fs::rename(c.p("d"), c.p("f")), libc::ENOTDIR);
    fails(fs::rename(c.p("d"), c.p("d/sub/inside")), libc::EINVAL);
    fails(fs::rename(c.p("missing"), c.p("x")), libc::ENOENT);
    // A file still open for writing (created here, not uploaded yet) counts too, and keeps
    // its directory.
    fs::create_dir(c.p("e2")).unwrap();
    let mut open = File::create(c.p("e2/g")).unwrap();
    open.write_all(b"kept").unwrap();
    fails(fs::rename(c.p("d"), c.p("e2")), libc::ENOTEMPTY);
    drop(open);
    assert_eq!(fs::read(c.p("e2/g")).unwrap(), b"kept");
    // Renaming over an empty directory works.
    fs::create_dir(c.p("empty")).unwrap();
    fs::rename(c.p("d/sub"), c.p("empty")).unwrap();
    assert!(fs::metadata(c.p("empty")).unwrap().is_dir());
}

fn rename_flags(c: &Ctx) {
    fs::write(c.p("a"), b"A").unwrap();
    fs::write(c.p("b"), b"B").unwrap();
    assert_eq!(
        sys::rename2(&c.p("a"), &c.p("b"), libc::RENAME_NOREPLACE),
        Err(libc::EEXIST)
    );
    sys::rename2(&c.p("a"), &c.p("c"), libc::RENAME_NOREPLACE).unwrap();
    sys::rename2(&c.p("c"), &c.p("b"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(c.p("b")).unwrap(), b"A");
    assert_eq!(fs::read(c.p("c")).unwrap(), b"B");
    assert_eq!(
        sys::rename2(&c.p("c"), &c.p("nope"), libc::RENAME_EXCHANGE),
        Err(libc::ENOENT)
    );
}

fn rename_exdev(c: &Ctx) {
    fs::write(c.p("f"), b"x").unwrap();
    fails(fs::rename(c.p("f"), c.other.join("f")), libc::EXDEV);
    fails(fs::hard_link(c.p("f"), c.other.join("f")), libc::EXDEV);
}

fn symlinks(c: &Ctx) {
    fs::write(c.p("target"), b"T").unwrap();
    std::os::unix::fs::symlink("target", c.p("link")).unwrap();
    assert_eq!(fs::read_link(c.p("link")).unwrap().to_str(), Some("target"));
    assert!(
        fs::symlink_metadata(c.p("link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read(c.p("link")).unwrap(), b"T");
    fails(std::os::unix::fs::symlink("x", c.p("link")), libc::EEXIST);
    fails(fs::read_link(c.p("target")), libc::EINVAL);
    std::os::unix::fs::symlink("/nowhere/at/all", c.p("dangling")).unwrap();
    fails(fs::metadata(c.p("dangling")), libc::ENOENT);
    assert_eq!(
        fs::symlink_metadata(c.p("dangling")).unwrap().len(),
        "/nowhere/at/all".len() as u64
    );
}

fn hard_links(c: &Ctx) {
    fs::write(c.p("a"), b"shared").unwrap();
    fs::hard_link(c.p("a"), c.p("b")).unwrap();
    let (ma, mb) = (
        fs::metadata(c.p("a")).unwrap(),
        fs::metadata(c.p("b")).unwrap(),
    );
    assert_eq!(ma.ino(), mb.ino());
    assert_eq!(mb.nlink(), 2);
    fs::remove_file(c.p("a")).unwrap();
    assert_eq!(fs::read(c.p("b")).unwrap(), b"shared");
    assert_eq!(fs::metadata(c.p("b")).unwrap().nlink(), 1);
    fs::create_dir(c.p("d")).unwrap();
    fails(fs::hard_link(c.p("d"), c.p("d2")), libc::EPERM);
    fails(fs::hard_link(c.p("b"), c.p("b")), libc::EEXIST);
}

fn chmod(c: &Ctx) {
    fs::write(c.p("f"), b"x").unwrap();
    let before = fs::metadata(c.p("f")).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    fs::set_permissions(c.p("f"), fs::Permissions::from_mode(0o4750)).unwrap();
    let m = fs::metadata(c.p("f")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o4750);
    assert!((m.ctime(), m.ctime_nsec()) > (before.ctime(), before.ctime_nsec()));
    fs::create_dir(c.p("d")).unwrap();
    fs::set_permissions(c.p("d"), fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(fs::metadata(c.p("d")).unwrap().mode() & 0o7777, 0o700);
}

fn chown(c: &Ctx) {
    fs::write(c.p("f"), b"x").unwrap();
    std::os::unix::fs::chown(c.p("f"), Some(1234), Some(5678)).unwrap();
    let m = fs::metadata(c.p("f")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    std::os::unix::fs::lchown(c.p("f"), None, Some(42)).unwrap();
    assert_eq!(fs::metadata(c.p("f")).unwrap().gid(), 42);
}

fn utimens(c: &Ctx) {
    fs::write(c.p("f"), b"x").unwrap();
    sys::utimens(
        &c.p("f"),
        Some((1_000_000_000, 5)),
        Some((1_200_000_000, 123_456_789)),
    )
    .unwrap();
    let m = fs::metadata(c.p("f")).unwrap();
    assert_eq!((m.atime(), m.atime_nsec()), (1_000_000_000, 5));
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_200_000_000, 123_456_789));
    sys::utimens(&c.p("f"), None, None).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((fs::metadata(c.p("f")).unwrap().mtime() - now).abs() < 60);
}

fn truncate(c: &Ctx) {
    fs::write(c.p("f"), b"0123456789").unwrap();
    let f = OpenOptions::new().write(true).open(c.p("f")).unwrap();
    f.set_len(4).unwrap();
    drop(f);
    assert_eq!(fs::read(c.p("f")).unwrap(), b"0123");
    let f = OpenOptions::new().write(true).open(c.p("f")).unwrap();
    f.set_len(8).unwrap();
    drop(f);
    assert_eq!(fs::read(c.p("f")).unwrap(), b"0123\0\0\0\0");
    // truncate(2) by path, on a file nobody has open.
    let out = std::process::Command::new("truncate")
        .args(["-s", "2"])
        .arg(c.p("f"))
        .status()
        .unwrap();
    assert!(out.success());
    assert_eq!(fs::read(c.p("f")).unwrap(), b"01");
    fs::create_dir(c.p("d")).unwrap();
    fails(OpenOptions::new().write(true).open(c.p("d")), libc::EISDIR);
}

fn xattrs(c: &Ctx) {
    let p = c.p("f");
    fs::write(&p, b"x").unwrap();
    xattr_set(&p, "user.color", b"blue", 0).unwrap();
    assert_eq!(xattr_get(&p, "user.color").unwrap(), b"blue");
    assert_eq!(
        xattr_set(&p, "user.color", b"red", libc::XATTR_CREATE),
        Err(libc::EEXIST)
    );
    xattr_set(&p, "user.color", b"red", libc::XATTR_REPLACE).unwrap();
    assert_eq!(xattr_get(&p, "user.color").unwrap(), b"red");
    assert_eq!(
        xattr_set(&p, "user.size", b"1", libc::XATTR_REPLACE),
        Err(libc::ENODATA)
    );
    assert_eq!(xattr_get(&p, "user.none"), Err(libc::ENODATA));
    xattr_set(&p, "user.empty", b"", 0).unwrap();
    let mut names = xattr_list(&p).unwrap();
    names.sort();
    assert_eq!(names, ["user.color", "user.empty"]);
    xattr_remove(&p, "user.color").unwrap();
    assert_eq!(xattr_remove(&p, "user.color"), Err(libc::ENODATA));
    assert_eq!(xattr_get(&p, "user.color"), Err(libc::ENODATA));
    assert_eq!(xattr_set(&p, "trusted.x", b"1", 0), Err(libc::EOPNOTSUPP));
    // Security labels and ACLs are not supported (not merely absent).
    for n in ["security.selinux", "system.posix_acl_access", "trusted.x"] {
        assert_eq!(xattr_get(&p, n), Err(libc::EOPNOTSUPP), "{n}");
    }
    // Directories carry xattrs too.
    fs::create_dir(c.p("d")).unwrap();
    xattr_set(&c.p("d"), "user.tag", b"dir", 0).unwrap();
    assert_eq!(xattr_get(&c.p("d"), "user.tag").unwrap(), b"dir");
}

fn state_xattr(c: &Ctx) {
    let p = c.p("f");
    let mut f = File::create(&p).unwrap();
    f.write_all(b"data").unwrap();
    let s = state(&p).unwrap();
    assert_ne!(s, "durable", "written but not yet uploaded");
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(state(&p).unwrap(), "durable");
    assert_eq!(
        xattr_set(&p, "user.cyxcloud.state", b"x", 0),
        Err(libc::EPERM)
    );
}

fn statfs(c: &Ctx) {
    let (bsize, blocks, avail, namemax) = sys::statvfs(&c.dir).unwrap();
    assert!(bsize > 0);
    assert!(blocks > 0, "the cluster has capacity");
    assert!(avail <= blocks);
    assert_eq!(namemax, 255);
}

fn fallocate(c: &Ctx) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(c.p("f"))
        .unwrap();
    sys::fallocate(&f, 0, 0, 10000).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 10000);
    sys::fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 0, 20000).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 10000);
    assert_eq!(
        sys::fallocate(
            &f,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            10
        ),
        Err(libc::EOPNOTSUPP)
    );
}

fn flock(c: &Ctx) {
    fs::write(c.p("f"), b"x").unwrap();
    let a = File::open(c.p("f")).unwrap();
    let b = File::open(c.p("f")).unwrap();
    sys::flock(&a, libc::LOCK_EX).unwrap();
    assert_eq!(
        sys::flock(&b, libc::LOCK_EX | libc::LOCK_NB),
        Err(libc::EWOULDBLOCK)
    );
    sys::flock(&a, libc::LOCK_UN).unwrap();
    sys::flock(&b, libc::LOCK_EX | libc::LOCK_NB).unwrap();
}

fn ofd_locks(c: &Ctx) {
    fs::write(c.p("f"), b"0123456789").unwrap();
    let a = OpenOptions::new()
        .read(true)
        .write(true)
        .open(c.p("f"))
        .unwrap();
    let b = OpenOptions::new()
        .read(true)
        .write(true)
        .open(c.p("f"))
        .unwrap();
    sys::ofd_lock(&a, libc::F_WRLCK, 0, 5).unwrap();
    assert_eq!(sys::ofd_lock(&b, libc::F_WRLCK, 2, 2), Err(libc::EAGAIN));
    sys::ofd_lock(&b, libc::F_WRLCK, 5, 5).unwrap();
    sys::ofd_lock(&a, libc::F_UNLCK, 0, 5).unwrap();
    sys::ofd_lock(&b, libc::F_RDLCK, 0, 5).unwrap();
}

fn special_files(c: &Ctx) {
    assert_eq!(sys::mkfifo(&c.p("fifo")), Err(libc::EPERM));
}

fn readdir(c: &Ctx) {
    for i in 0..300 {
        fs::write(c.p(&format!("f{i:04}")), b"").unwrap();
    }
    fs::create_dir(c.p("sub")).unwrap();
    let mut names: Vec<String> = fs::read_dir(&c.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 301);
    assert_eq!(names[0], "f0000");
    assert_eq!(names[300], "sub");
    let kinds: Vec<bool> = fs::read_dir(&c.dir)
        .unwrap()
        .map(|e| e.unwrap().file_type().unwrap().is_dir())
        .collect();
    assert_eq!(kinds.iter().filter(|d| **d).count(), 1);
    fails(fs::read_dir(c.p("f0000")), libc::ENOTDIR);
}

fn fsync_commits(c: &Ctx) {
    let p = c.p("f");
    let mut f = File::create(&p).unwrap();
    f.write_all(&vec![7u8; 100_000]).unwrap();
    f.sync_all().unwrap();
    assert_eq!(state(&p).unwrap(), "durable");
    f.write_all(b"more").unwrap();
    f.sync_data().unwrap();
    assert_eq!(state(&p).unwrap(), "durable");
    assert_eq!(f.metadata().unwrap().len(), 100_004);
}

fn buckets(c: &Ctx) {
    let b = c.root.join("posix-bucket-x");
    fs::create_dir(&b).unwrap();
    assert!(fs::metadata(&b).unwrap().is_dir());
    fails(fs::write(c.root.join("top-file"), b"x"), libc::EPERM);
    fs::write(b.join("f"), b"x").unwrap();
    fails(fs::remove_dir(&b), libc::ENOTEMPTY);
    fs::remove_file(b.join("f")).unwrap();
    fs::remove_dir(&b).unwrap();
    fails(fs::metadata(&b), libc::ENOENT);
    fails(fs::create_dir(c.root.join("Bad_Name")), libc::EINVAL);
    fails(
        fs::rename(c.root.join("posix"), c.root.join("posix2")),
        libc::EPERM,
    );
}

fn long_names(c: &Ctx) {
    let ok = "n".repeat(255);
    fs::write(c.p(&ok), b"x").unwrap();
    assert_eq!(fs::read(c.p(&ok)).unwrap(), b"x");
    let long = "n".repeat(256);
    let e = fs::write(c.p(&long), b"x").unwrap_err();
    assert_eq!(errno(e), libc::ENAMETOOLONG);
}
