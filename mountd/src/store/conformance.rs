//! One suite for every [`MetaStore`]: scripted checks, then a model-based property test that
//! runs random batches against SQLite (with close-and-reopen steps) and the in-memory twin and
//! compares every query after every step.

use cyxcloud_proto::v1;
use proptest::prelude::*;

use super::*;

fn entry(id: u64, size: u64) -> v1::Entry {
    v1::Entry {
        id,
        name: format!("n{id}"),
        size,
        kind: v1::EntryKind::File as i32,
        xattrs: [("user.k".to_string(), vec![id as u8, 0, 255])].into(),
        ..Default::default()
    }
}

fn layout(n: u32) -> v1::GetLayoutResponse {
    v1::GetLayoutResponse {
        entry: Some(entry(9, 1)),
        inline_data: vec![n as u8; n as usize],
        is_inline: n.is_multiple_of(2),
        chunks: vec![],
    }
}

fn scripted(s: &dyn MetaStore) {
    assert_eq!(s.entry(5).unwrap(), None);
    s.apply(&[
        Mutation::PutEntry(entry(5, 10)),
        Mutation::PutDentry {
            parent: 1,
            name: "b".into(),
            ino: 5,
        },
        Mutation::PutDentry {
            parent: 1,
            name: "a".into(),
            ino: 6,
        },
        Mutation::PutDentry {
            parent: 2,
            name: "hard".into(),
            ino: 5,
        },
    ])
    .unwrap();
    assert_eq!(s.entry(5).unwrap(), Some(entry(5, 10)));
    // "a" names inode 6, which has no cached entry: left out.
    assert_eq!(
        s.children_entries(1).unwrap(),
        vec![("b".to_string(), entry(5, 10))]
    );
    assert_eq!(s.lookup(1, "b").unwrap(), Some(5));
    assert_eq!(s.lookup(1, "c").unwrap(), None);
    assert_eq!(
        s.children(1).unwrap(),
        vec![("a".to_string(), 6), ("b".to_string(), 5)]
    );
    assert_eq!(
        s.names(5).unwrap(),
        vec![(1, "b".to_string()), (2, "hard".to_string())]
    );
    assert!(!s.is_complete(1).unwrap());
    s.apply(&[Mutation::ReplaceChildren {
        dir: 1,
        children: vec![("z".into(), 7)],
    }])
    .unwrap();
    assert!(s.is_complete(1).unwrap());
    assert_eq!(s.children(1).unwrap(), vec![("z".to_string(), 7)]);
    s.apply(&[
        Mutation::PutLayout {
            ino: 5,
            version: 3,
            layout: layout(4),
        },
        Mutation::PutLayout {
            ino: 5,
            version: 4,
            layout: layout(5),
        },
    ])
    .unwrap();
    assert_eq!(s.layout(5, 3).unwrap(), None, "older versions are dropped");
    assert_eq!(s.layout(5, 4).unwrap(), Some(layout(5)));
    let rec = StagedRec {
        ino: 5,
        path: "b/x".into(),
        size: 3,
        mtime_ns: -1,
        mode: 0o644,
        uid: 1,
        gid: 2,
        created_ns: 7,
        pending: Some((9, "x".into())),
    };
    s.apply(&[
        Mutation::PutStaged(rec.clone()),
        Mutation::SetKv {
            key: "seq".into(),
            value: "42".into(),
        },
    ])
    .unwrap();
    assert_eq!(s.staged().unwrap(), vec![rec]);
    assert_eq!(s.kv("seq").unwrap().as_deref(), Some("42"));
    s.apply(&[Mutation::RemoveEntry(5), Mutation::ClearNamespace])
        .unwrap();
    assert_eq!(s.entry(5).unwrap(), None);
    assert_eq!(s.layout(5, 4).unwrap(), None);
    assert!(s.children(1).unwrap().is_empty());
    assert!(!s.is_complete(1).unwrap());
    assert_eq!(
        s.staged().unwrap().len(),
        1,
        "staged files survive a resync"
    );
}

/// A listing installed with `apply_if_unchanged` is refused once anything changed the names
/// in its directory (and only there) after its generation was read.
fn listing_generations(s: &dyn MetaStore) {
    let listing = |names: &[&str]| {
        vec![Mutation::ReplaceChildren {
            dir: 7,
            children: names.iter().map(|n| (n.to_string(), 70)).collect(),
        }]
    };
    let g = s.dir_gen(7);
    // Changes elsewhere do not matter.
    s.apply(&[
        Mutation::PutDentry {
            parent: 8,
            name: "x".into(),
            ino: 80,
        },
        Mutation::PutEntry(entry(7, 0)),
    ])
    .unwrap();
    assert_eq!(s.dir_gen(7), g);
    assert!(s.apply_if_unchanged(7, g, &listing(&["a"])).unwrap());
    assert!(s.is_complete(7).unwrap());
    // Each kind of change to dir 7's names moves its generation.
    let changes = [
        Mutation::PutDentry {
            parent: 7,
            name: "new".into(),
            ino: 71,
        },
        Mutation::RemoveDentry {
            parent: 7,
            name: "a".into(),
        },
        Mutation::SetComplete {
            dir: 7,
            complete: false,
        },
        Mutation::RemoveEntry(7),
        Mutation::ClearNamespace,
    ];
    for m in changes {
        let g = s.dir_gen(7);
        s.apply(std::slice::from_ref(&m)).unwrap();
        let after = s.children(7).unwrap();
        assert_ne!(s.dir_gen(7), g, "{m:?}");
        assert!(
            !s.apply_if_unchanged(7, g, &listing(&["stale"])).unwrap(),
            "{m:?}"
        );
        assert_eq!(s.children(7).unwrap(), after, "nothing applied after {m:?}");
    }
}

#[test]
fn memory_store_conforms() {
    scripted(&MemStore::new());
    listing_generations(&MemStore::new());
}

#[test]
fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    scripted(&SqliteStore::open(&dir.path().join("c.db")).unwrap());
    listing_generations(&SqliteStore::open(&dir.path().join("g.db")).unwrap());
}

#[test]
fn sqlite_refuses_damaged_records() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.db");
    let s = SqliteStore::open(&p).unwrap();
    drop(s);
    let c = rusqlite::Connection::open(&p).unwrap();
    c.execute("INSERT INTO entries (ino, rec) VALUES (3, x'00010203')", [])
        .unwrap();
    drop(c);
    let s = SqliteStore::open(&p).unwrap();
    assert!(matches!(
        s.entry(3),
        Err(crate::error::Error::Corrupt { .. })
    ));
}

#[derive(Debug, Clone)]
enum Step {
    Batch(Vec<Mutation>),
    Reopen,
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("c"), Just("é")].prop_map(String::from)
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let ino = 1u64..6;
    prop_oneof![
        (ino.clone(), 0u64..100).prop_map(|(i, s)| Mutation::PutEntry(entry(i, s))),
        ino.clone().prop_map(Mutation::RemoveEntry),
        (ino.clone(), name(), ino.clone()).prop_map(|(parent, name, ino)| Mutation::PutDentry {
            parent,
            name,
            ino
        }),
        (ino.clone(), name()).prop_map(|(parent, name)| Mutation::RemoveDentry { parent, name }),
        (ino.clone(), any::<bool>())
            .prop_map(|(dir, complete)| Mutation::SetComplete { dir, complete }),
        (
            ino.clone(),
            proptest::collection::vec((name(), 1u64..6), 0..3)
        )
            .prop_map(|(dir, children)| Mutation::ReplaceChildren { dir, children }),
        (ino.clone(), 0u64..3, 0u32..4).prop_map(|(ino, version, n)| Mutation::PutLayout {
            ino,
            version,
            layout: layout(n)
        }),
        (name(), name()).prop_map(|(key, value)| Mutation::SetKv { key, value }),
        (ino.clone(), 0u64..9).prop_map(|(ino, size)| Mutation::PutStaged(StagedRec {
            ino,
            path: format!("p{ino}"),
            size,
            mtime_ns: size as i64 * 3,
            mode: 0o600,
            uid: 0,
            gid: 0,
            pending: (size % 2 == 1).then(|| (size, format!("n{size}"))),
            created_ns: 1,
        })),
        ino.clone().prop_map(Mutation::RemoveStaged),
        (name(), 0u64..9).prop_map(|(id, size)| Mutation::PutChunk(ChunkRec {
            id,
            size,
            last_used: size as i64
        })),
        name().prop_map(Mutation::RemoveChunk),
        Just(Mutation::ClearNamespace),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        9 => proptest::collection::vec(mutation(), 1..4).prop_map(Step::Batch),
        1 => Just(Step::Reopen),
    ]
}

fn same(a: &dyn MetaStore, b: &dyn MetaStore) {
    for ino in 1..6 {
        assert_eq!(a.entry(ino).unwrap(), b.entry(ino).unwrap());
        assert_eq!(a.children(ino).unwrap(), b.children(ino).unwrap());
        assert_eq!(
            a.children_entries(ino).unwrap(),
            b.children_entries(ino).unwrap()
        );
        assert_eq!(a.names(ino).unwrap(), b.names(ino).unwrap());
        assert_eq!(a.is_complete(ino).unwrap(), b.is_complete(ino).unwrap());
        for v in 0..3 {
            assert_eq!(a.layout(ino, v).unwrap(), b.layout(ino, v).unwrap());
        }
        for n in ["a", "b", "c", "é"] {
            assert_eq!(a.lookup(ino, n).unwrap(), b.lookup(ino, n).unwrap());
            assert_eq!(a.kv(n).unwrap(), b.kv(n).unwrap());
        }
    }
    assert_eq!(a.staged().unwrap(), b.staged().unwrap());
    assert_eq!(a.chunks().unwrap(), b.chunks().unwrap());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn sqlite_matches_the_model_across_reopens(steps in proptest::collection::vec(step(), 1..30)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.db");
        let model = MemStore::new();
        let mut db = SqliteStore::open(&path).unwrap();
        for s in steps {
            match s {
                Step::Batch(b) => {
                    model.apply(&b).unwrap();
                    db.apply(&b).unwrap();
                }
                Step::Reopen => {
                    drop(db);
                    db = SqliteStore::open(&path).unwrap();
                }
            }
            same(&model, &db);
        }
    }
}
