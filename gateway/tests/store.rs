//! The metadata store conformance suite: every test runs on SQLite and on PostgreSQL.

use std::collections::{BTreeMap, BTreeSet};

use cyxcloud_gateway::Error;
use cyxcloud_gateway::accounts::Caller;
use cyxcloud_gateway::db::{Db, args};
use cyxcloud_gateway::namespace::{Entry, Kind, Perms, ROOT_ID, Ref, Rename, SetAttr};
use cyxcloud_gateway::writes::FileAttrs;
use cyxcloud_proto::{ErrorCode, v1};

use crate::both_backends;
use crate::common::{Backend, Fixture, Rng, fixture, fixture_with, second};

both_backends!(
    buckets_are_top_level_and_private,
    readdir_pages_in_stable_name_order,
    removing_non_empty_or_wrong_kinds_changes_nothing,
    rename_follows_posix,
    rename_into_own_descendant_is_refused,
    bad_names_are_refused_with_no_state_change,
    symlinks_and_hard_links,
    xattrs_user_metadata_and_setattr,
    inline_files_versions_conditions_and_quota,
    s3_listing_matches_a_model,
    journal_records_every_change_once_in_order,
    watch_resyncs_a_position_older_than_retention,
    concurrent_conflicting_clients_keep_the_tree_consistent,
    two_gateways_share_one_namespace_and_journal,
    paths_by_id_follow_directory_moves_on_every_gateway,
    reserved_ids_name_new_files_once_and_only_for_their_owner,
    accounts_tokens_and_machines,
    leases_give_a_name_to_one_holder_until_released_or_expired,
);

fn path(b: &str, p: &str) -> Ref {
    Ref::Path {
        bucket: b.into(),
        path: p.into(),
    }
}

fn code(e: &Error) -> ErrorCode {
    e.code()
}

async fn put(f: &Fixture, who: &Caller, b: &str, p: &str, data: &[u8]) -> Entry {
    f.gw.writes
        .write_inline(who, &path(b, p), data, 0, false, &FileAttrs::default())
        .await
        .unwrap_or_else(|e| panic!("write {b}/{p}: {e}"))
}

/// Structural invariants of the whole tree and journal.
pub async fn check_consistent(db: &Db) {
    let inodes = db
        .all("SELECT id, kind, nlink FROM inodes", args![])
        .await
        .unwrap();
    let dentries = db
        .all(
            "SELECT parent_id, name, sort_key, inode_id, kind FROM dentries",
            args![],
        )
        .await
        .unwrap();
    let mut kind_of = BTreeMap::new();
    let mut nlink_of = BTreeMap::new();
    for r in &inodes {
        kind_of.insert(r.u64(0).unwrap(), r.i64(1).unwrap());
        nlink_of.insert(r.u64(0).unwrap(), r.i64(2).unwrap());
    }
    let mut names_of: BTreeMap<u64, usize> = BTreeMap::new();
    let mut subdirs: BTreeMap<u64, i64> = BTreeMap::new();
    let mut parent_of: BTreeMap<u64, u64> = BTreeMap::new();
    for r in &dentries {
        let (parent, name, sk, ino, kind) = (
            r.u64(0).unwrap(),
            r.text(1).unwrap(),
            r.text(2).unwrap(),
            r.u64(3).unwrap(),
            r.i64(4).unwrap(),
        );
        let real = *kind_of
            .get(&ino)
            .unwrap_or_else(|| panic!("dentry {parent}/{name} points at missing inode {ino}"));
        assert_eq!(real, kind, "dentry kind of {parent}/{name}");
        assert!(
            kind_of.get(&parent).is_some_and(|k| *k == 2 || *k == 4),
            "parent {parent} of {name} is not a directory"
        );
        let is_dir = kind == 2 || kind == 4;
        assert_eq!(
            sk,
            if is_dir {
                format!("{name}/")
            } else {
                name.clone()
            },
            "sort key"
        );
        *names_of.entry(ino).or_default() += 1;
        if is_dir {
            *subdirs.entry(parent).or_default() += 1;
            assert!(
                parent_of.insert(ino, parent).is_none(),
                "directory {ino} has two names"
            );
        }
    }
    for (id, kind) in &kind_of {
        if *id == ROOT_ID {
            continue;
        }
        let n = names_of.get(id).copied().unwrap_or(0);
        assert!(n >= 1, "inode {id} has no name");
        if *kind == 2 || *kind == 4 {
            assert_eq!(
                nlink_of[id],
                2 + subdirs.get(id).copied().unwrap_or(0),
                "nlink of directory {id}"
            );
        } else {
            assert_eq!(nlink_of[id], n as i64, "nlink of {id}");
        }
    }
    for start in parent_of.keys() {
        let mut cur = *start;
        let mut steps = 0;
        while cur != ROOT_ID {
            cur = parent_of[&cur];
            steps += 1;
            assert!(steps < 10_000, "cycle through directory {start}");
        }
    }
    let seqs: Vec<u64> = db
        .all("SELECT seq FROM journal ORDER BY seq", args![])
        .await
        .unwrap()
        .iter()
        .map(|r| r.u64(0).unwrap())
        .collect();
    let pruned = cyxcloud_gateway::journal::pruned_through(db).await.unwrap();
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(*s, pruned + 1 + i as u64, "journal has a gap");
    }
    assert_eq!(
        cyxcloud_gateway::journal::head(db).await.unwrap(),
        seqs.last().copied().unwrap_or(pruned)
    );
    let usage = db
        .all(
            "SELECT u.id, u.used_bytes, (SELECT CAST(COALESCE(SUM(i.size), 0) AS BIGINT) FROM inodes i \
             WHERE i.kind = 1 AND i.owner_id = u.id) FROM users u",
            args![],
        )
        .await
        .unwrap();
    for r in &usage {
        assert_eq!(
            r.i64(1).unwrap(),
            r.i64(2).unwrap(),
            "used bytes of {}",
            r.text(0).unwrap()
        );
    }
}

async fn buckets_are_top_level_and_private(b: Backend) {
    let f = fixture(b).await;
    let ns = &f.gw.ns;
    let e = ns.create_bucket(&f.alice, "photos", false).await.unwrap();
    assert_eq!(e.kind, Kind::Bucket);
    assert_eq!(e.parent_id, ROOT_ID);
    assert_eq!((e.bucket.as_str(), e.path.as_str()), ("photos", ""));
    let err = ns.create_bucket(&f.bob, "photos", false).await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::AlreadyExists);
    for bad in ["health", "metrics", "ws", "api", "s3", "UP", "a", "x_y"] {
        let err = ns.create_bucket(&f.alice, bad, false).await.unwrap_err();
        assert_eq!(code(&err), ErrorCode::InvalidName, "{bad}");
    }
    ns.create_bucket(&f.bob, "bobs", false).await.unwrap();
    let names = |v: Vec<Entry>| v.into_iter().map(|e| e.name).collect::<Vec<_>>();
    assert_eq!(names(ns.list_buckets(&f.alice).await.unwrap()), ["photos"]);
    assert_eq!(
        names(ns.list_buckets(&f.admin).await.unwrap()),
        ["bobs", "photos"]
    );
    // The root lists only the caller's buckets.
    let root = ns.readdir(&f.bob, &Ref::Id(ROOT_ID), "", 0).await.unwrap();
    assert_eq!(names(root.entries), ["bobs"]);
    // Bob cannot see into alice's bucket.
    let err = ns.getattr(&f.bob, &path("photos", "")).await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::PermissionDenied);
    let err = ns
        .mkdir(&f.bob, e.id, "intrusion", 0o755, 0, 0)
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::PermissionDenied);
    put(&f, &f.alice, "photos", "a.jpg", b"x").await;
    let err = ns.delete_bucket(&f.alice, "photos").await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::NotEmpty);
    ns.unlink_path(&f.alice, "photos", "a.jpg", false)
        .await
        .unwrap();
    ns.delete_bucket(&f.alice, "photos").await.unwrap();
    assert!(ns.list_buckets(&f.alice).await.unwrap().is_empty());
    check_consistent(&f.gw.db).await;
}

async fn readdir_pages_in_stable_name_order(b: Backend) {
    let f = fixture(b).await;
    let ns = &f.gw.ns;
    let bucket = ns.create_bucket(&f.alice, "dir-test", false).await.unwrap();
    let d = ns
        .mkdir(&f.alice, bucket.id, "d", 0o755, 1, 2)
        .await
        .unwrap();
    let mut want = BTreeSet::new();
    for i in 0..230u32 {
        // Names whose byte order differs from numeric and from locale order.
        let name = format!("{}{i}", ["Z", "a", "_", "é", "A-"][i as usize % 5]);
        if i % 3 == 0 {
            ns.mkdir(&f.alice, d.id, &name, 0o700, 0, 0).await.unwrap();
        } else {
            put(&f, &f.alice, "dir-test", &format!("d/{name}"), b"").await;
        }
        want.insert(name);
    }
    let mut got = Vec::new();
    let mut after = String::new();
    loop {
        let page = ns
            .readdir(&f.alice, &Ref::Id(d.id), &after, 64)
            .await
            .unwrap();
        assert!(page.entries.len() <= 64);
        for e in &page.entries {
            assert_eq!(e.parent_id, d.id);
            assert_eq!(e.path, format!("d/{}", e.name));
        }
        got.extend(page.entries.iter().map(|e| e.name.clone()));
        if !page.more {
            break;
        }
        after = got.last().unwrap().clone();
    }
    assert_eq!(got, want.into_iter().collect::<Vec<_>>());
    // Directories report 2 + subdirectories links.
    let d = ns.getattr(&f.alice, &Ref::Id(d.id)).await.unwrap();
    assert_eq!(d.nlink, 2 + 77);
    assert_eq!((d.uid, d.gid, d.mode), (1, 2, 0o755));
    let err = ns
        .readdir(&f.alice, &path("dir-test", "d/a1"), "", 0)
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::NotDirectory);
    check_consistent(&f.gw.db).await;
}

async fn removing_non_empty_or_wrong_kinds_changes_nothing(b: Backend) {
    let f = fixture(b).await;
    let ns = &f.gw.ns;
    let bk = ns.create_bucket(&f.alice, "rm-test", false).await.unwrap();
    let d = ns.mkdir(&f.alice, bk.id, "d", 0, 0, 0).await.unwrap();
    put(&f, &f.alice, "rm-test", "d/f", b"data").await;
    let head = cyxcloud_gateway::journal::head(&f.gw.db).await.unwrap();
    let err = ns.rmdir(&f.alice, bk.id, "d").await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::NotEmpty);
    let err = ns.rmdir(&f.alice, d.id, "f").await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::NotDirectory);
    let err = ns.unlink(&f.alice, bk.id, "d").await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::IsDirectory);
    let err = ns.unlink(&f.alice, d.id, "nope").await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::NotFound);
    let err = ns.rmdir_path(&f.alice, "rm-test", "d").await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::NotEmpty);
    assert_eq!(
        cyxcloud_gateway::journal::head(&f.gw.db).await.unwrap(),
        head,
        "refused operations append nothing"
    );
    ns.getattr(&f.alice, &path("rm-test", "d/f")).await.unwrap();
    ns.unlink(&f.alice, d.id, "f").await.unwrap();
    ns.rmdir(&f.alice, bk.id, "d").await.unwrap();
    let err = ns
        .getattr(&f.alice, &path("rm-test", "d"))
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::NotFound);
    check_consistent(&f.gw.db).await;
}

async fn rename_follows_posix(b: Backend) {
    let f = fixture(b).await;
    let ns = &f.gw.ns;
    let a = &f.alice;
    let bk = ns.create_bucket(a, "ren", false).await.unwrap();
    let d1 = ns.mkdir(a, bk.id, "d1", 0, 0, 0).await.unwrap();
    let d2 = ns.mkdir(a, bk.id, "d2", 0, 0, 0).await.unwrap();
    let x = put(&f, a, "ren", "d1/x", b"xxx").await;
    let y = put(&f, a, "ren", "d2/y", b"yy").await;
    // Plain move keeps the inode.
    ns.rename(a, d1.id, "x", d2.id, "x2", Rename::Replace)
        .await
        .unwrap();
    let moved = ns.getattr(a, &path("ren", "d2/x2")).await.unwrap();
    assert_eq!(moved.id, x.id);
    assert_eq!(moved.path, "d2/x2");
    // Over an existing file: the target's data is released.
    ns.rename(a, d2.id, "x2", d2.id, "y", Rename::Replace)
        .await
        .unwrap();
    let now = ns.getattr(a, &path("ren", "d2/y")).await.unwrap();
    assert_eq!(now.id, x.id);
    assert_eq!(now.size, 3);
    let err = ns.getattr(a, &Ref::Id(y.id)).await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::NotFound);
    // NOREPLACE refuses an existing target.
    put(&f, a, "ren", "d2/z", b"z").await;
    let err = ns
        .rename(a, d2.id, "y", d2.id, "z", Rename::NoReplace)
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::AlreadyExists);
    // EXCHANGE swaps a file and a directory.
    ns.mkdir(a, d2.id, "sub", 0, 0, 0).await.unwrap();
    put(&f, a, "ren", "d2/sub/inner", b"i").await;
    ns.rename(a, d2.id, "z", d2.id, "sub", Rename::Exchange)
        .await
        .unwrap();
    assert_eq!(
        ns.getattr(a, &path("ren", "d2/z/inner"))
            .await
            .unwrap()
            .size,
        1
    );
    assert_eq!(
        ns.getattr(a, &path("ren", "d2/sub")).await.unwrap().kind,
        Kind::File
    );
    let err = ns
        .rename(a, d2.id, "z", d2.id, "missing", Rename::Exchange)
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::NotFound);
    // A directory over an empty directory; not over a non-empty one; not over a file.
    ns.mkdir(a, d1.id, "empty", 0, 0, 0).await.unwrap();
    let err = ns
        .rename(a, d2.id, "z", d2.id, "y", Rename::Replace)
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::NotDirectory);
    let err = ns
        .rename(a, d2.id, "y", d1.id, "empty", Rename::Replace)
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::IsDirectory);
    ns.mkdir(a, d1.id, "full", 0, 0, 0).await.unwrap();
    put(&f, a, "ren", "d1/full/f", b"").await;
    let err = ns
        .rename(a, d2.id, "z", d1.id, "full", Rename::Replace)
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::NotEmpty);
    ns.rename(a, d2.id, "z", d1.id, "empty", Rename::Replace)
        .await
        .unwrap();
    assert_eq!(
        ns.getattr(a, &path("ren", "d1/empty/inner"))
            .await
            .unwrap()
            .size,
        1
    );
    // Whole directories move in O(1): children follow.
    ns.rename(a, bk.id, "d1", d2.id, "d1-moved", Rename::Replace)
        .await
        .unwrap();
    assert_eq!(
        ns.getattr(a, &path("ren", "d2/d1-moved/empty/inner"))
            .await
            .unwrap()
            .path,
        "d2/d1-moved/empty/inner"
    );
    // Renaming a name onto itself and two names of one inode are no-ops.
    ns.rename(a, d2.id, "y", d2.id, "y", Rename::Replace)
        .await
        .unwrap();
    let l = ns.link(a, x.id, d2.id, "y-link").await.unwrap();
    assert_eq!(l.nlink, 2);
    ns.rename(a, d2.id, "y", d2.id, "y-link", Rename::Replace)
        .await
        .unwrap();
    assert_eq!(ns.getattr(a, &Ref::Id(x.id)).await.unwrap().nlink, 2);
    // Buckets cannot be renamed, and nothing moves across buckets.
    let other = ns.create_bucket(a, "ren-other", false).await.unwrap();
    let err = ns
        .rename(a, d2.id, "y", other.id, "y", Rename::Replace)
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::NotSupported);
    let err = ns
        .rename(a, ROOT_ID, "ren", ROOT_ID, "ren2", Rename::Replace)
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::NotSupported);
    check_consistent(&f.gw.db).await;
}

async fn rename_into_own_descendant_is_refused(b: Backend) {
    let f = fixture(b).await;
    let ns = &f.gw.ns;
    let a = &f.alice;
    let bk = ns.create_bucket(a, "desc", false).await.unwrap();
    let top = ns.mkdir(a, bk.id, "top", 0, 0, 0).await.unwrap();
    let mid = ns.mkdir(a, top.id, "mid", 0, 0, 0).await.unwrap();
    let low = ns.mkdir(a, mid.id, "low", 0, 0, 0).await.unwrap();
    let head = cyxcloud_gateway::journal::head(&f.gw.db).await.unwrap();
    for (dst, name) in [(low.id, "x"), (mid.id, "x"), (top.id, "x")] {
        let err = ns
            .rename(a, bk.id, "top", dst, name, Rename::Replace)
            .await
            .unwrap_err();
        assert_eq!(code(&err), ErrorCode::InvalidArgument, "{err}");
        assert!(err.to_string().contains("descendant"), "{err}");
    }
    let err = ns
        .rename(a, bk.id, "top", low.id, "x", Rename::Exchange)
        .await
        .unwrap_err();
    assert!(matches!(
        code(&err),
        ErrorCode::InvalidArgument | ErrorCode::NotFound
    ));
    // Exchanging a directory with its own descendant is refused too.
    let err = ns
        .rename(a, mid.id, "low", bk.id, "top", Rename::Exchange)
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument, "{err}");
    assert_eq!(
        cyxcloud_gateway::journal::head(&f.gw.db).await.unwrap(),
        head
    );
    assert_eq!(
        ns.getattr(a, &path("desc", "top/mid/low"))
            .await
            .unwrap()
            .id,
        low.id
    );
    check_consistent(&f.gw.db).await;
}

async fn bad_names_are_refused_with_no_state_change(b: Backend) {
    let f = fixture(b).await;
    let ns = &f.gw.ns;
    let a = &f.alice;
    let bk = ns.create_bucket(a, "names", false).await.unwrap();
    put(&f, a, "names", "ok", b"1").await;
    let head = cyxcloud_gateway::journal::head(&f.gw.db).await.unwrap();
    for bad in ["", ".", "..", "a/b", "nul\0byte", &"x".repeat(256)] {
        let e = ns.mkdir(a, bk.id, bad, 0, 0, 0).await.unwrap_err();
        assert_eq!(code(&e), ErrorCode::InvalidName, "mkdir {bad:?}");
        let e = ns
            .rename(a, bk.id, "ok", bk.id, bad, Rename::Replace)
            .await
            .unwrap_err();
        assert_eq!(code(&e), ErrorCode::InvalidName, "rename to {bad:?}");
        let e = ns.symlink(a, bk.id, bad, "t", 0, 0).await.unwrap_err();
        assert_eq!(code(&e), ErrorCode::InvalidName, "symlink {bad:?}");
    }
    for bad in ["a//b", "/a", "a/./b", "a/../b", "a\0b", "dir/.."] {
        let e =
            f.gw.writes
                .write_inline(
                    a,
                    &path("names", bad),
                    b"x",
                    0,
                    false,
                    &FileAttrs::default(),
                )
                .await
                .unwrap_err();
        assert_eq!(code(&e), ErrorCode::InvalidName, "write {bad:?}");
        let e = ns
            .mkdir_path(a, "names", bad, Perms::default(), false)
            .await
            .unwrap_err();
        assert_eq!(code(&e), ErrorCode::InvalidName, "mkdir -p {bad:?}");
    }
    assert_eq!(
        cyxcloud_gateway::journal::head(&f.gw.db).await.unwrap(),
        head
    );
    let listing = ns.readdir(a, &Ref::Id(bk.id), "", 0).await.unwrap();
    assert_eq!(listing.entries.len(), 1);
    check_consistent(&f.gw.db).await;
}

async fn symlinks_and_hard_links(b: Backend) {
    let f = fixture(b).await;
    let ns = &f.gw.ns;
    let a = &f.alice;
    let bk = ns.create_bucket(a, "links", false).await.unwrap();
    let s = ns
        .symlink(a, bk.id, "ln", "../target/x", 7, 8)
        .await
        .unwrap();
    assert_eq!(s.kind, Kind::Symlink);
    assert_eq!(s.size, 11);
    assert_eq!(ns.readlink(a, &Ref::Id(s.id)).await.unwrap(), "../target/x");
    let e = ns.symlink(a, bk.id, "ln2", "", 0, 0).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::InvalidArgument);
    let file = put(&f, a, "links", "orig", b"hello").await;
    let err = ns.readlink(a, &Ref::Id(file.id)).await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument);
    let d = ns.mkdir(a, bk.id, "d", 0, 0, 0).await.unwrap();
    let l = ns.link(a, file.id, d.id, "copy").await.unwrap();
    assert_eq!((l.id, l.nlink, l.path.as_str()), (file.id, 2, "d/copy"));
    let err = ns.link(a, d.id, bk.id, "dirlink").await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::PermissionDenied);
    let err = ns.link(a, file.id, d.id, "copy").await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::AlreadyExists);
    // Unlinking one name keeps the data under the other. The inode's change sequence moves
    // with its link count: a client caching by change sequence must be able to tell this
    // state from the one before the unlink.
    ns.unlink(a, bk.id, "orig").await.unwrap();
    let left = ns.getattr(a, &path("links", "d/copy")).await.unwrap();
    assert_eq!((left.id, left.nlink, left.size), (file.id, 1, 5));
    assert!(left.change_seq > l.change_seq, "{left:?} after {l:?}");
    let lay =
        f.gw.layout_with_tokens(a, &Ref::Id(file.id), 0, 0)
            .await
            .unwrap();
    assert_eq!(lay.inline_data, b"hello");
    ns.unlink(a, d.id, "copy").await.unwrap();
    let err = ns.getattr(a, &Ref::Id(file.id)).await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::NotFound);
    check_consistent(&f.gw.db).await;
}

async fn xattrs_user_metadata_and_setattr(b: Backend) {
    let f = fixture(b).await;
    let ns = &f.gw.ns;
    let a = &f.alice;
    ns.create_bucket(a, "attrs", false).await.unwrap();
    let file = put(&f, a, "attrs", "f", b"0123456789").await;
    let r = Ref::Id(file.id);
    ns.set_xattr(a, &r, "user.color", b"blue", 0).await.unwrap();
    let e = ns
        .set_xattr(a, &r, "user.color", b"red", 1)
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::AlreadyExists);
    let e = ns.set_xattr(a, &r, "user.size", b"x", 2).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::NotFound);
    ns.set_xattr(a, &r, "user.color", b"red", 2).await.unwrap();
    ns.set_xattr(a, &r, "user.bin", &[0, 255, 1], 0)
        .await
        .unwrap();
    let got = ns.getattr(a, &r).await.unwrap();
    assert_eq!(got.meta.xattrs["user.color"], b"red");
    assert_eq!(got.meta.xattrs["user.bin"], [0, 255, 1]);
    ns.remove_xattr(a, &r, "user.bin").await.unwrap();
    let e = ns.remove_xattr(a, &r, "user.bin").await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::NotFound);
    ns.set_user_metadata(a, &r, [("owner".to_string(), "me".to_string())].into())
        .await
        .unwrap();
    let got = ns.getattr(a, &r).await.unwrap();
    assert_eq!(got.meta.user_metadata["owner"], "me");
    assert_eq!(got.meta.xattrs.len(), 1);
    let s = ns
        .setattr(
            a,
            &r,
            &SetAttr {
                mode: Some(0o100600),
                uid: Some(5),
                mtime_ns: Some(42),
                content_type: Some("text/plain".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((s.mode, s.uid, s.gid, s.mtime_ns), (0o600, 5, 0, 42));
    assert_eq!(s.content_type, "text/plain");
    // Truncate and extend an inline file.
    let s = ns
        .setattr(
            a,
            &r,
            &SetAttr {
                size: Some(4),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(s.size, 4);
    let s = ns
        .setattr(
            a,
            &r,
            &SetAttr {
                size: Some(6),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(s.size, 6);
    let lay = f.gw.layout_with_tokens(a, &r, 0, 0).await.unwrap();
    assert_eq!(lay.inline_data, b"0123\0\0");
    check_consistent(&f.gw.db).await;
}

async fn inline_files_versions_conditions_and_quota(b: Backend) {
    let f = fixture(b).await;
    let a = &f.alice;
    let w = &f.gw.writes;
    f.gw.ns.create_bucket(a, "inline", false).await.unwrap();
    let attrs = FileAttrs {
        etag: "e1".into(),
        content_type: "application/x-test".into(),
        ..Default::default()
    };
    let v1e = w
        .write_inline(a, &path("inline", "deep/er/f"), b"one", 0, true, &attrs)
        .await
        .unwrap();
    assert_eq!((v1e.size, v1e.etag.as_str()), (3, "e1"));
    assert_eq!(v1e.path, "deep/er/f");
    // Implicit parents are not S3 directory markers.
    let parent = f.gw.ns.getattr(a, &path("inline", "deep")).await.unwrap();
    assert!(!parent.marker);
    let e = w
        .write_inline(a, &path("inline", "deep/er/f"), b"x", 0, true, &attrs)
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::PreconditionFailed);
    let e = w
        .write_inline(
            a,
            &path("inline", "deep/er/f"),
            b"x",
            v1e.version + 100,
            false,
            &attrs,
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::PreconditionFailed);
    let v2e = w
        .write_inline(
            a,
            &path("inline", "deep/er/f"),
            b"second",
            v1e.version,
            false,
            &FileAttrs::default(),
        )
        .await
        .unwrap();
    assert_eq!(v2e.id, v1e.id);
    assert_ne!(v2e.version, v1e.version);
    let e = w
        .write_inline(
            a,
            &path("inline", "big"),
            &vec![0u8; 4097],
            0,
            false,
            &attrs,
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::InvalidArgument);
    let e = w
        .write_inline(a, &path("inline", "deep"), b"x", 0, false, &attrs)
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::IsDirectory);
    let e = w
        .write_inline(
            a,
            &path("inline", "deep/er/f/under-a-file"),
            b"x",
            0,
            false,
            &attrs,
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::NotDirectory);
    // Quota: 20 bytes for alice; 6 used.
    f.gw.accounts.set_quota(&a.user_id, 20).await.unwrap();
    w.write_inline(a, &path("inline", "q1"), &[1; 10], 0, false, &attrs)
        .await
        .unwrap();
    let head = cyxcloud_gateway::journal::head(&f.gw.db).await.unwrap();
    let e = w
        .write_inline(a, &path("inline", "q2"), &[1; 10], 0, false, &attrs)
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::QuotaExceeded, "{e}");
    assert_eq!(
        cyxcloud_gateway::journal::head(&f.gw.db).await.unwrap(),
        head
    );
    assert!(f.gw.ns.getattr(a, &path("inline", "q2")).await.is_err());
    // Overwriting with something smaller is always allowed.
    w.write_inline(a, &path("inline", "q1"), &[1; 2], 0, false, &attrs)
        .await
        .unwrap();
    assert_eq!(f.gw.accounts.usage(&a.user_id).await.unwrap(), (20, 8));
    check_consistent(&f.gw.db).await;
}

/// Keys of a listing page in order (objects as S3 keys, then common prefixes merged by order).
fn page_keys(l: &cyxcloud_gateway::namespace::Listing) -> Vec<String> {
    let mut v: Vec<String> = l
        .objects
        .iter()
        .map(|e| {
            if e.kind.is_dir() {
                format!("{}/", e.path)
            } else {
                e.path.clone()
            }
        })
        .chain(l.common_prefixes.iter().cloned())
        .collect();
    v.sort();
    v
}

fn model_list(
    keys: &BTreeSet<String>,
    prefix: &str,
    delim: &str,
    start_after: &str,
    max: usize,
) -> (Vec<String>, bool, String) {
    let mut out: Vec<String> = Vec::new();
    let mut truncated = false;
    for k in keys
        .iter()
        .filter(|k| k.starts_with(prefix) && k.as_str() > start_after)
    {
        let item = match (!delim.is_empty())
            .then(|| k[prefix.len()..].find(delim))
            .flatten()
        {
            Some(i) => k[..prefix.len() + i + delim.len()].to_string(),
            None => k.clone(),
        };
        if out.last() == Some(&item) || item.as_str() <= start_after {
            continue;
        }
        if out.len() == max {
            truncated = true;
            break;
        }
        out.push(item);
    }
    let next = if truncated {
        out.last().cloned().unwrap_or_default()
    } else {
        String::new()
    };
    (out, truncated, next)
}

async fn s3_listing_matches_a_model(b: Backend) {
    let f = fixture(b).await;
    let a = &f.alice;
    f.gw.ns.create_bucket(a, "list", false).await.unwrap();
    let segs = ["a", "a.b", "a-b", "ab", "b", "é", "z0", "Z"];
    let mut rng = Rng::new(7);
    let mut keys = BTreeSet::new();
    let mut dirs = BTreeSet::new();
    let mut files = BTreeSet::new();
    for _ in 0..160 {
        let depth = 1 + rng.below(3) as usize;
        let parts: Vec<&str> = (0..depth).map(|_| *rng.pick(&segs)).collect();
        let key = parts.join("/");
        let marker = rng.below(10) == 0;
        // Skip keys whose file/directory shape conflicts with existing ones.
        let prefixes: Vec<String> = (1..depth).map(|i| parts[..i].join("/")).collect();
        if prefixes.iter().any(|p| files.contains(p)) {
            continue;
        }
        if marker {
            if files.contains(&key) {
                continue;
            }
            f.gw.ns
                .mkdir_path(a, "list", &key, Perms::default(), true)
                .await
                .unwrap();
            keys.insert(format!("{key}/"));
            dirs.insert(key.clone());
        } else {
            if dirs.contains(&key) || keys.iter().any(|k| k.starts_with(&format!("{key}/"))) {
                continue;
            }
            put(&f, a, "list", &key, b"v").await;
            keys.insert(key.clone());
            files.insert(key.clone());
        }
        for p in prefixes {
            dirs.insert(p);
        }
    }
    assert!(keys.len() > 40, "workload too small: {}", keys.len());
    let prefixes = [
        "", "a", "a/", "a/a", "ab/", "é/", "a.b/a", "nothing/", "a//",
    ];
    for prefix in prefixes {
        for delim in ["", "/", "."] {
            for max in [1usize, 3, 1000] {
                let mut start_after = String::new();
                let mut pages = 0;
                loop {
                    let got =
                        f.gw.ns
                            .list_objects(a, "list", prefix, delim, &start_after, max as u32)
                            .await
                            .unwrap();
                    let (want, trunc, next) = model_list(&keys, prefix, delim, &start_after, max);
                    assert_eq!(
                        page_keys(&got),
                        want,
                        "prefix {prefix:?} delim {delim:?} after {start_after:?} max {max}"
                    );
                    assert_eq!(got.truncated, trunc);
                    assert_eq!(got.next_start_after, next);
                    pages += 1;
                    if !trunc || pages > 500 {
                        break;
                    }
                    start_after = next;
                }
            }
        }
    }
    // Arbitrary start_after positions (no delimiter).
    let all: Vec<&String> = keys.iter().collect();
    for _ in 0..40 {
        let sa = match rng.below(3) {
            0 => all[rng.below(all.len() as u64) as usize].clone(),
            1 => format!("{}x", all[rng.below(all.len() as u64) as usize]),
            _ => all[rng.below(all.len() as u64) as usize]
                .chars()
                .take(2)
                .collect(),
        };
        let got =
            f.gw.ns
                .list_objects(a, "list", "", "", &sa, 25)
                .await
                .unwrap();
        let (want, trunc, _) = model_list(&keys, "", "", &sa, 25);
        assert_eq!(page_keys(&got), want, "start_after {sa:?}");
        assert_eq!(got.truncated, trunc);
    }
}

async fn journal_records_every_change_once_in_order(b: Backend) {
    let f = fixture(b).await;
    let a = &f.alice;
    let ns = &f.gw.ns;
    let start = cyxcloud_gateway::journal::head(&f.gw.db).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut rx = cyxcloud_gateway::journal::watch(
        f.gw.db.clone(),
        start,
        cyxcloud_gateway::journal::Filter::All,
        stop.clone(),
    );
    let bk = ns.create_bucket(a, "journal", false).await.unwrap();
    let d = ns.mkdir(a, bk.id, "d", 0, 0, 0).await.unwrap();
    let file = put(&f, a, "journal", "d/f", b"1").await;
    put(&f, a, "journal", "d/f", b"22").await;
    ns.rename(a, d.id, "f", bk.id, "g", Rename::Replace)
        .await
        .unwrap();
    ns.unlink(a, bk.id, "g").await.unwrap();
    let want = [
        (v1::ChangeKind::Create, "journal", ""),
        (v1::ChangeKind::Create, "journal", "d"),
        (v1::ChangeKind::Create, "journal", "d/f"),
        (v1::ChangeKind::Update, "journal", "d/f"),
        (v1::ChangeKind::Rename, "journal", "g"),
        (v1::ChangeKind::Delete, "journal", "g"),
    ];
    let mut got = Vec::new();
    for _ in 0..want.len() {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("event in time")
            .unwrap()
            .unwrap();
        got.push(ev);
    }
    for (i, (ev, (kind, bucket, p))) in got.iter().zip(want).enumerate() {
        assert_eq!(ev.seq, start + 1 + i as u64, "sequence");
        assert_eq!(ev.kind, kind as i32, "kind of event {i}");
        assert_eq!((ev.bucket.as_str(), ev.path.as_str()), (bucket, p));
    }
    assert_eq!(got[4].old_path, "d/f");
    assert_eq!(got[4].entry_id, file.id);
    assert_eq!(got[3].entry.as_ref().unwrap().size, 2);
    assert_eq!(got[3].entry.as_ref().unwrap().change_seq, got[3].seq);
    // Nothing more (exactly once).
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), rx.recv())
            .await
            .is_err()
    );
    // Replaying from the middle gives the same tail.
    let mut rx2 = cyxcloud_gateway::journal::watch(
        f.gw.db.clone(),
        got[2].seq,
        cyxcloud_gateway::journal::Filter::Bucket("journal".into()),
        stop.clone(),
    );
    for want in &got[3..] {
        let ev = rx2.recv().await.unwrap().unwrap();
        assert_eq!(&ev, want);
    }
    // Another owner's watch sees none of alice's events.
    let mut rx3 = cyxcloud_gateway::journal::watch(
        f.gw.db.clone(),
        start,
        cyxcloud_gateway::journal::Filter::Owner(f.bob.user_id.clone()),
        stop.clone(),
    );
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), rx3.recv())
            .await
            .is_err()
    );
    stop.cancel();
}

async fn watch_resyncs_a_position_older_than_retention(b: Backend) {
    let f = fixture(b).await;
    let a = &f.alice;
    f.gw.ns.create_bucket(a, "retain", false).await.unwrap();
    for i in 0..12 {
        put(&f, a, "retain", &format!("f{i}"), b"x").await;
    }
    let head = cyxcloud_gateway::journal::head(&f.gw.db).await.unwrap();
    cyxcloud_gateway::journal::prune(&f.gw.db, 5, 3600)
        .await
        .unwrap();
    assert_eq!(
        cyxcloud_gateway::journal::pruned_through(&f.gw.db)
            .await
            .unwrap(),
        head - 5
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let mut rx = cyxcloud_gateway::journal::watch(
        f.gw.db.clone(),
        1,
        cyxcloud_gateway::journal::Filter::All,
        stop.clone(),
    );
    let ev = rx.recv().await.unwrap().unwrap();
    assert_eq!(ev.kind, v1::ChangeKind::Resync as i32);
    assert_eq!(ev.seq, head);
    put(&f, a, "retain", "after", b"x").await;
    let ev = rx.recv().await.unwrap().unwrap();
    assert_eq!((ev.seq, ev.path.as_str()), (head + 1, "after"));
    // A position inside retention replays normally.
    let mut rx = cyxcloud_gateway::journal::watch(
        f.gw.db.clone(),
        head - 2,
        cyxcloud_gateway::journal::Filter::All,
        stop.clone(),
    );
    assert_eq!(rx.recv().await.unwrap().unwrap().seq, head - 1);
    stop.cancel();
    check_consistent(&f.gw.db).await;
}

async fn concurrent_conflicting_clients_keep_the_tree_consistent(b: Backend) {
    let f = fixture_with(b, |c| c.db_max_connections = 24).await;
    let a = f.alice.clone();
    let bk = f.gw.ns.create_bucket(&a, "race", false).await.unwrap();
    let names = ["a", "b", "c", "d"];
    let mut dirs = vec![bk.id];
    for n in names {
        dirs.push(f.gw.ns.mkdir(&a, bk.id, n, 0, 0, 0).await.unwrap().id);
    }
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let gw = f.gw.clone();
        let a = a.clone();
        let dirs = dirs.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(t + 1);
            let mut ok = 0;
            for _ in 0..40 {
                let d1 = *rng.pick(&dirs);
                let d2 = *rng.pick(&dirs);
                let n1 = *rng.pick(&names);
                let n2 = *rng.pick(&names);
                let r = match rng.below(7) {
                    0 => gw.ns.mkdir(&a, d1, n1, 0, 0, 0).await.map(|_| ()),
                    1 => gw.ns.rmdir(&a, d1, n1).await,
                    2 => gw.ns.unlink(&a, d1, n1).await,
                    3 | 4 => {
                        let flags =
                            *rng.pick(&[Rename::Replace, Rename::NoReplace, Rename::Exchange]);
                        gw.ns.rename(&a, d1, n1, d2, n2, flags).await
                    }
                    5 => {
                        let p = gw.ns.getattr(&a, &Ref::Id(d1)).await;
                        match p {
                            Ok(p) if p.kind.is_dir() && p.kind != Kind::Bucket => gw
                                .writes
                                .write_inline(
                                    &a,
                                    &Ref::Path {
                                        bucket: "race".into(),
                                        path: format!("{}/{n1}", p.path),
                                    },
                                    &vec![1u8; rng.below(100) as usize],
                                    0,
                                    false,
                                    &FileAttrs::default(),
                                )
                                .await
                                .map(|_| ()),
                            Ok(_) => Ok(()),
                            Err(e) => Err(e),
                        }
                    }
                    _ => match gw.ns.lookup(&a, d1, n1).await {
                        Ok(e) if e.kind == Kind::File => {
                            gw.ns.link(&a, e.id, d2, n2).await.map(|_| ())
                        }
                        Ok(_) => Ok(()),
                        Err(e) => Err(e),
                    },
                };
                match r {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        let c = e.code();
                        assert!(
                            !matches!(
                                c,
                                ErrorCode::Internal | ErrorCode::Conflict | ErrorCode::Unavailable
                            ),
                            "unexpected error under contention: {e}"
                        );
                    }
                }
            }
            ok
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert!(total > 50, "only {total} operations succeeded");
    check_consistent(&f.gw.db).await;
}

async fn two_gateways_share_one_namespace_and_journal(b: Backend) {
    let f = fixture(b).await;
    let g2 = second(&f).await;
    let a = &f.alice;
    let stop = tokio_util::sync::CancellationToken::new();
    // Watch on gateway 2 while gateway 1 writes; g2 learns of the commits through its tailer.
    cyxcloud_daemon::Workers::new(stop.clone()).spawn(
        cyxcloud_gateway::journal::Tailer::new(
            g2.db.clone(),
            std::time::Duration::from_millis(50),
            1_000_000,
            3600,
        ),
        Default::default(),
    );
    let start = cyxcloud_gateway::journal::head(&g2.db).await.unwrap();
    let mut rx = cyxcloud_gateway::journal::watch(
        g2.db.clone(),
        start,
        cyxcloud_gateway::journal::Filter::All,
        stop.clone(),
    );
    let bk = f.gw.ns.create_bucket(a, "shared", false).await.unwrap().id;
    put(&f, a, "shared", "x", b"from-1").await;
    let seen = g2.ns.getattr(a, &path("shared", "x")).await.unwrap();
    assert_eq!(seen.size, 6);
    g2.ns.mkdir(a, bk, "from-2", 0, 0, 0).await.unwrap();
    let err = f.gw.ns.mkdir(a, bk, "from-2", 0, 0, 0).await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::AlreadyExists);
    // Interleaved writers on both: the journal stays gap-free and ordered.
    let (g1, g2c) = (f.gw.clone(), g2.clone());
    let a1 = a.clone();
    let a2 = a.clone();
    let t1 = tokio::spawn(async move {
        for i in 0..20 {
            g1.ns
                .mkdir(&a1, bk, &format!("one-{i}"), 0, 0, 0)
                .await
                .unwrap();
        }
    });
    let t2 = tokio::spawn(async move {
        for i in 0..20 {
            g2c.ns
                .mkdir(&a2, bk, &format!("two-{i}"), 0, 0, 0)
                .await
                .unwrap();
        }
    });
    t1.await.unwrap();
    t2.await.unwrap();
    let mut last = start;
    for _ in 0..43 {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("event from the other gateway in time")
            .unwrap()
            .unwrap();
        assert_eq!(ev.seq, last + 1);
        last = ev.seq;
    }
    stop.cancel();
    check_consistent(&f.gw.db).await;
}

/// Reads by id report the entry's current path at once, on this gateway and on another one
/// sharing the store, however directories above it move (the paths are cached per gateway).
async fn paths_by_id_follow_directory_moves_on_every_gateway(b: Backend) {
    let f = fixture(b).await;
    let g2 = second(&f).await;
    let a = &f.alice;
    let bk = f.gw.ns.create_bucket(a, "moves", false).await.unwrap().id;
    let top = f.gw.ns.mkdir(a, bk, "top", 0, 0, 0).await.unwrap().id;
    let mid = f.gw.ns.mkdir(a, top, "mid", 0, 0, 0).await.unwrap().id;
    let other = f.gw.ns.mkdir(a, bk, "other", 0, 0, 0).await.unwrap().id;
    let file = put(&f, a, "moves", "top/mid/f", b"x").await.id;
    let by_id = |gw: &cyxcloud_gateway::Gateway, id: u64| {
        let (ns, a) = (gw.ns.clone(), a.clone());
        async move {
            let e = ns.getattr(&a, &Ref::Id(id)).await.unwrap();
            (e.bucket, e.path)
        }
    };
    let at = |p: &str| ("moves".to_string(), p.to_string());
    for gw in [&f.gw, &g2] {
        assert_eq!(by_id(gw, file).await, at("top/mid/f"));
        assert_eq!(by_id(gw, mid).await, at("top/mid"));
        let e = gw.ns.lookup(a, mid, "f").await.unwrap();
        assert_eq!((e.bucket, e.path), at("top/mid/f"));
    }
    // A move of an ancestor on gateway 1: both gateways see it in their next read.
    let moves = [
        (bk, "top", bk, "renamed", Rename::Replace, "renamed/mid/f"),
        (top, "mid", other, "mid", Rename::Replace, "other/mid/f"),
        (
            bk,
            "other",
            bk,
            "renamed",
            Rename::Exchange,
            "renamed/mid/f",
        ),
    ];
    for (from, name, to, new_name, flags, expect) in moves {
        f.gw.ns
            .rename(a, from, name, to, new_name, flags)
            .await
            .unwrap();
        for gw in [&g2, &f.gw] {
            assert_eq!(
                by_id(gw, file).await,
                at(expect),
                "after {name} -> {new_name}"
            );
            let e = gw.ns.lookup(a, mid, "f").await.unwrap();
            assert_eq!((e.bucket, e.path), at(expect));
        }
    }
    // A file's own rename never needed the counter, and still shows at once.
    f.gw.ns
        .rename(a, mid, "f", bk, "g", Rename::Replace)
        .await
        .unwrap();
    assert_eq!(by_id(&g2, file).await, at("g"));
    check_consistent(&f.gw.db).await;
}

/// A mount answers create(2) itself under an id the gateway reserved for it: the id is the
/// file's when it reaches the gateway, usable once, by its owner only, and never handed out
/// to any other file.
async fn reserved_ids_name_new_files_once_and_only_for_their_owner(b: Backend) {
    let f = fixture(b).await;
    let g2 = second(&f).await;
    let (a, bob) = (&f.alice, &f.bob);
    f.gw.ns.create_bucket(a, "res", false).await.unwrap();
    let (ids, expires) = f.gw.writes.reserve_ids(a, 8).await.unwrap();
    assert_eq!(ids.len(), 8);
    assert!(expires > cyxcloud_gateway::db::now_ns());
    // Other creates, on both gateways, never get a reserved id.
    let plain = put(&f, a, "res", "plain", b"p").await.id;
    let plain2 = g2
        .writes
        .write_inline(
            a,
            &path("res", "plain2"),
            b"q",
            0,
            false,
            &FileAttrs::default(),
        )
        .await
        .unwrap()
        .id;
    let (more, _) = g2.writes.reserve_ids(a, 4).await.unwrap();
    let all: BTreeSet<u64> = ids
        .iter()
        .chain(&more)
        .chain([&plain, &plain2])
        .copied()
        .collect();
    assert_eq!(all.len(), 14, "reservations and creates never share an id");
    let with_id = |id: u64| FileAttrs {
        new_id: id,
        ..FileAttrs::default()
    };
    let e =
        f.gw.writes
            .write_inline(a, &path("res", "mine"), b"hello", 0, true, &with_id(ids[0]))
            .await
            .unwrap();
    assert_eq!((e.id, e.size), (ids[0], 5));
    let got = f.gw.ns.getattr(a, &Ref::Id(ids[0])).await.unwrap();
    assert_eq!(got.path, "mine");
    let seq_before = cyxcloud_gateway::journal::head(&f.gw.db).await.unwrap();
    // Used once; someone else's; without if_absent; never reserved: refused, nothing changes.
    let refused = [
        (a, "again", ids[0], true),
        (bob, "bobs", ids[1], true),
        (a, "no-if-absent", ids[2], false),
        (a, "made-up", 1 << 40, true),
    ];
    for (who, name, id, if_absent) in refused {
        let err = g2
            .writes
            .write_inline(who, &path("res", name), b"x", 0, if_absent, &with_id(id))
            .await
            .unwrap_err();
        assert!(
            matches!(
                code(&err),
                ErrorCode::InvalidArgument | ErrorCode::PermissionDenied
            ),
            "{name}: {err}"
        );
        assert!(f.gw.ns.getattr(a, &path("res", name)).await.is_err());
    }
    assert_eq!(
        cyxcloud_gateway::journal::head(&f.gw.db).await.unwrap(),
        seq_before,
        "refused creates leave no journal event"
    );
    // An existing name with if_absent: the reservation stays usable elsewhere.
    let err =
        f.gw.writes
            .write_inline(a, &path("res", "mine"), b"x", 0, true, &with_id(ids[1]))
            .await
            .unwrap_err();
    assert_eq!(code(&err), ErrorCode::PreconditionFailed);
    let e = g2
        .writes
        .write_inline(a, &path("res", "later"), b"", 0, true, &with_id(ids[1]))
        .await
        .unwrap();
    assert_eq!(e.id, ids[1]);
    // Past its expiry a reservation is still claimed (a file made offline under it before
    // then); past the grace as well, the next reservation forgets it.
    let day = 24 * 3600 * 1_000_000_000i64;
    let now = cyxcloud_gateway::db::now_ns();
    f.gw.db
        .exec(
            "UPDATE reserved_ids SET expires_ns = $1 WHERE id = $2",
            args![now - day, ids[2]],
        )
        .await
        .unwrap();
    let grace = cyxcloud_gateway::writes::RESERVATION_GRACE.as_nanos() as i64;
    f.gw.db
        .exec(
            "UPDATE reserved_ids SET expires_ns = $1 WHERE id = $2",
            args![now - grace - day, ids[3]],
        )
        .await
        .unwrap();
    f.gw.writes.reserve_ids(a, 1).await.unwrap();
    let e =
        f.gw.writes
            .write_inline(a, &path("res", "late"), b"", 0, true, &with_id(ids[2]))
            .await
            .unwrap();
    assert_eq!(e.id, ids[2]);
    let err =
        f.gw.writes
            .write_inline(a, &path("res", "too-late"), b"", 0, true, &with_id(ids[3]))
            .await
            .unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument, "{err}");
    for bad in [0, cyxcloud_gateway::writes::MAX_RESERVED_IDS + 1] {
        let err = f.gw.writes.reserve_ids(a, bad).await.unwrap_err();
        assert_eq!(code(&err), ErrorCode::InvalidArgument);
    }
    check_consistent(&f.gw.db).await;
}

async fn accounts_tokens_and_machines(b: Backend) {
    let f = fixture(b).await;
    let acc = &f.gw.accounts;
    let k = acc
        .create_user_with_key("carol", 1000, false)
        .await
        .unwrap();
    let t = acc
        .authenticate(&k.access_key, &k.secret_key)
        .await
        .unwrap();
    assert_eq!(acc.verify(&t.token).unwrap().user_id, k.user_id);
    let e = acc
        .authenticate(&k.access_key, "wrong-secret")
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::Unauthenticated);
    let e = acc.authenticate("NOPE", "whatever1").await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::Unauthenticated);
    // Forged and altered tokens.
    let mut forged = t.token.clone();
    forged.replace_range(10..11, if &forged[10..11] == "A" { "B" } else { "A" });
    assert_eq!(
        code(&acc.verify(&forged).unwrap_err()),
        ErrorCode::Unauthenticated
    );
    assert!(acc.verify("cyx1.abc.def").is_err());
    assert!(acc.verify("").is_err());
    // The secret is stored encrypted, never in plain text.
    let raw =
        f.gw.db
            .one(
                "SELECT secret_enc FROM access_keys WHERE access_key = $1",
                args![k.access_key.as_str()],
            )
            .await
            .unwrap()
            .blob(0)
            .unwrap();
    assert!(
        !raw.windows(k.secret_key.len())
            .any(|w| w == k.secret_key.as_bytes())
    );
    // Operator accounts: login → JWT → machine registration → API key.
    let op = acc
        .create_user(
            "John Doe",
            Some("Miner@Example.com"),
            Some("hunter2hunter2"),
            false,
            0,
        )
        .await
        .unwrap();
    let e = acc
        .create_user(
            "Dup",
            Some("miner@example.com"),
            Some("password123"),
            false,
            0,
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::AlreadyExists);
    let e = acc
        .login("miner@example.com", "wrong-password")
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "unauthenticated: invalid email or password");
    let (jwt, user) = acc
        .login("miner@example.com", "hunter2hunter2")
        .await
        .unwrap();
    assert_eq!(user.id, op.id);
    assert_eq!(acc.verify_jwt(&jwt).unwrap(), op.id);
    assert!(acc.verify_jwt(&format!("{jwt}x")).is_err());
    let info = cyxcloud_gateway::accounts::MachineInfo {
        node_id: "node-7".into(),
        name: "rig".into(),
        ..Default::default()
    };
    let (m, api_key) = acc.register_machine(&op.id, &info).await.unwrap();
    let found = acc.machine_for_key(&api_key).await.unwrap().unwrap();
    assert_eq!((found.id, found.node_id), (m.id, "node-7".to_string()));
    assert!(acc.machine_for_key("cyxk_forged").await.unwrap().is_none());
    // Bootstrap from the environment binds that key to the admin, idempotently.
    assert!(
        acc.bootstrap_admin(Some(("ADMINKEY", "admin-secret-1")))
            .await
            .unwrap()
            .is_none()
    );
    acc.bootstrap_admin(Some(("ADMINKEY", "admin-secret-1")))
        .await
        .unwrap();
    let t = acc
        .authenticate("ADMINKEY", "admin-secret-1")
        .await
        .unwrap();
    assert!(t.caller.admin);
}

/// PostgreSQL connections are kept without sqlx's pool (`db::hot::Hot`) and handed back
/// without its ping. A connection is reused after its statement finished or was refused, or
/// its transaction ended; it is closed when its statement was cancelled midway, its
/// transaction was dropped open, or the server ended it; statements never hold more
/// connections than their share.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_statement_connections_are_reused_closed_and_bounded() {
    use futures::FutureExt;
    use sqlx::Connection;

    let pg = cyxcloud_testkit::services::postgres_db();
    // 4 connections: 2 for transactions, 2 for single statements.
    let db = Db::open(&pg.url, 4).await.unwrap();
    async fn backend(db: &Db) -> cyxcloud_gateway::Result<i64> {
        db.one("SELECT pg_backend_pid()::bigint", args![])
            .await?
            .i64(0)
    }
    let mut other = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    let alive = |pid: i64| format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}");

    // Reused statement after statement, and after the server refused one.
    let first = backend(&db).await.unwrap();
    for _ in 0..20 {
        assert_eq!(backend(&db).await.unwrap(), first);
    }
    let Err(refused) = db.one("SELECT 1 / 0", args![]).await else {
        panic!("1 / 0 answered");
    };
    assert!(
        refused.to_string().contains("division by zero"),
        "{refused}"
    );
    assert_eq!(backend(&db).await.unwrap(), first);

    // Bounded: with both statement connections out, a third waits until one comes back.
    let c1 = db.conn().await.unwrap();
    let c2 = db.conn().await.unwrap();
    assert!(Box::pin(db.conn()).now_or_never().is_none());
    drop(c1);
    let c3 = db.conn().await.unwrap();
    drop((c2, c3));

    // Cancelled midway (the statement waits on a lock another session holds): that connection
    // is closed, not handed to the next statement.
    sqlx::query("SELECT pg_advisory_lock(4242)")
        .execute(&mut other)
        .await
        .unwrap();
    let waiting = {
        let db = db.clone();
        tokio::spawn(async move { db.exec("SELECT pg_advisory_lock(4242)", args![]).await })
    };
    let stuck: i64 = crate::common::eventually("the statement to wait on the lock", || {
        let url = pg.url.clone();
        async move {
            let mut c = sqlx::PgConnection::connect(&url).await.ok()?;
            sqlx::query_scalar(
                "SELECT pid::bigint FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND query LIKE '%4242%'",
            )
            .fetch_optional(&mut c)
            .await
            .ok()?
        }
    })
    .await;
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    assert_ne!(backend(&db).await.unwrap(), stuck);
    sqlx::query("SELECT pg_advisory_unlock(4242)")
        .execute(&mut other)
        .await
        .unwrap();
    crate::common::eventually("the cancelled statement's backend to exit", || {
        let url = pg.url.clone();
        let q = alive(stuck);
        async move {
            let mut c = sqlx::PgConnection::connect(&url).await.ok()?;
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(q))
                .fetch_one(&mut c)
                .await
                .ok()?;
            (n == 0).then_some(())
        }
    })
    .await;

    // Transactions: a connection comes back after COMMIT or ROLLBACK; one dropped inside a
    // transaction (a cancelled request) is closed, which ends the transaction on the server,
    // releasing the write lock, and its changes are gone.
    db.exec("CREATE TABLE t (x BIGINT)", args![]).await.unwrap();
    async fn tx_backend(tx: &mut cyxcloud_gateway::db::Tx) -> i64 {
        tx.one("SELECT pg_backend_pid()::bigint", args![])
            .await
            .unwrap()
            .i64(0)
            .unwrap()
    }
    let mut tx = db.begin_write().await.unwrap();
    let writer = tx_backend(&mut tx).await;
    tx.exec("INSERT INTO t VALUES (1)", args![]).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = db.begin_write().await.unwrap();
    assert_eq!(tx_backend(&mut tx).await, writer);
    tx.rollback().await.unwrap();
    let mut tx = db.begin_write().await.unwrap();
    assert_eq!(tx_backend(&mut tx).await, writer);
    tx.exec("INSERT INTO t VALUES (2)", args![]).await.unwrap();
    drop(tx);
    let mut tx = tokio::time::timeout(std::time::Duration::from_secs(20), db.begin_write())
        .await
        .expect("the dropped transaction's write lock is released")
        .unwrap();
    assert_ne!(tx_backend(&mut tx).await, writer);
    tx.rollback().await.unwrap();
    let rows = db.all("SELECT x FROM t", args![]).await.unwrap();
    let xs: Vec<i64> = rows.iter().map(|r| r.i64(0).unwrap()).collect();
    assert_eq!(xs, [1]);

    // The server ends every idle connection: each dead one fails at most one statement and is
    // then closed; new connections serve the rest.
    let ended: Vec<i64> = sqlx::query_scalar(
        "SELECT pid::bigint FROM pg_stat_activity \
         WHERE datname = current_database() \
         AND CASE WHEN pid <> pg_backend_pid() THEN pg_terminate_backend(pid) END",
    )
    .fetch_all(&mut other)
    .await
    .unwrap();
    assert!(!ended.is_empty());
    let mut results = Vec::new();
    for _ in 0..6 {
        results.push(backend(&db).await);
    }
    let failed = results.iter().take_while(|r| r.is_err()).count();
    assert!(failed <= 2, "{results:?}");
    for r in &results[failed..] {
        let pid = r
            .as_ref()
            .expect("served after the dead connections are gone");
        assert!(!ended.contains(pid));
    }
}

/// SQLite keeps its connections without sqlx's pool too: reused after a statement finished or
/// was refused, never more than their share, and a write transaction dropped before its
/// commit leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_statement_connections_are_reused_and_bounded() {
    use futures::FutureExt;

    let dir = tempfile::tempdir().unwrap();
    // 4 connections: the writer, 1 for read transactions, 2 for single statements.
    let db = Db::open(&dir.path().join("meta.db").display().to_string(), 4)
        .await
        .unwrap();
    // A TEMP table exists on the connection that made it and no other.
    db.exec("CREATE TEMP TABLE here (x)", args![])
        .await
        .unwrap();
    let on_first = || async {
        db.one(
            "SELECT count(*) FROM temp.sqlite_master WHERE name = 'here'",
            args![],
        )
        .await
        .unwrap()
        .i64(0)
        .unwrap()
            == 1
    };
    for _ in 0..20 {
        assert!(on_first().await);
    }
    assert!(
        db.one("SELECT * FROM no_such_table", args![])
            .await
            .is_err()
    );
    assert!(on_first().await);

    let mut c1 = db.conn().await.unwrap();
    let mut c2 = db.conn().await.unwrap();
    assert!(Box::pin(db.conn()).now_or_never().is_none());
    let marks = "SELECT count(*) FROM temp.sqlite_master WHERE name = 'here'";
    let a = c1.one(marks, args![]).await.unwrap().i64(0).unwrap();
    let b = c2.one(marks, args![]).await.unwrap().i64(0).unwrap();
    assert_eq!(a + b, 1, "two different connections");
    drop(c1);
    let c3 = db.conn().await.unwrap();
    drop((c2, c3));

    // A write transaction dropped before its commit (a cancelled request) leaves no change
    // and no open transaction behind: the next writer gets the file.
    db.exec("CREATE TABLE t (x)", args![]).await.unwrap();
    let mut tx = db.begin_write().await.unwrap();
    tx.exec("INSERT INTO t VALUES (1)", args![]).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = db.begin_write().await.unwrap();
    tx.exec("INSERT INTO t VALUES (2)", args![]).await.unwrap();
    drop(tx);
    let mut tx = tokio::time::timeout(std::time::Duration::from_secs(20), db.begin_write())
        .await
        .expect("the dropped transaction ended")
        .unwrap();
    tx.exec("INSERT INTO t VALUES (3)", args![]).await.unwrap();
    tx.commit().await.unwrap();
    let rows = db.all("SELECT x FROM t ORDER BY x", args![]).await.unwrap();
    let xs: Vec<i64> = rows.iter().map(|r| r.i64(0).unwrap()).collect();
    assert_eq!(xs, [1, 3]);
}

/// Worker leases (`cyxcloud_daemon::worker`): one holder per name, renewable by it, free once
/// released or expired; two gateways racing for a name never both get it.
async fn leases_give_a_name_to_one_holder_until_released_or_expired(b: Backend) {
    use std::time::Duration;
    let f = fixture(b).await;
    let g2 = second(&f).await;
    let (l1, l2) = (&f.gw.leases, &g2.leases);
    let min = Duration::from_secs(60);
    assert!(l1.acquire("gc", "a", min).await.unwrap());
    assert!(!l2.acquire("gc", "b", min).await.unwrap(), "held by a");
    assert!(l1.acquire("gc", "a", min).await.unwrap(), "a renews");
    l2.release("gc", "b").await.unwrap(); // not b's: nothing happens
    assert_eq!(l2.holder("gc").await.unwrap().as_deref(), Some("a"));
    l1.release("gc", "a").await.unwrap();
    assert_eq!(l2.holder("gc").await.unwrap(), None);
    assert!(
        l2.acquire("gc", "b", min).await.unwrap(),
        "free after release"
    );
    // An expired lease (a holder that died) is taken over.
    assert!(l1.acquire("scrub", "a", Duration::ZERO).await.unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !l2.acquire("scrub", "b", min).await.unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "expired lease never freed"
        );
        tokio::task::yield_now().await;
    }
    assert!(!l1.acquire("scrub", "a", min).await.unwrap());
    // Racing holders: exactly one wins each name.
    for round in 0..20 {
        let name = format!("race-{round}");
        let (x, y) = tokio::join!(l1.acquire(&name, "a", min), l2.acquire(&name, "b", min));
        assert!(
            x.unwrap() ^ y.unwrap(),
            "round {round}: one holder, not two or none"
        );
    }
}
