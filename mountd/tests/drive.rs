//! Acceptance tests of the drive.

use std::io::{Read, Seek, SeekFrom, Write};

use crate::cluster::{Cluster, Mount, data};

#[test]
fn browse_write_and_read_back() {
    let c = Cluster::start(7);
    c.create_bucket("photos");
    let m = Mount::start(&c, &[]);
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
    m.wait_durable("photos/big.bin");
    m.wait_durable("photos/small.bin");
    // A second mount with an empty cache reads through the nodes.
    let m2 = Mount::start(&c, &[]);
    assert!(
        std::fs::read(m2.p("photos/big.bin")).unwrap() == big,
        "big.bin differs"
    );
    let mut f = std::fs::File::open(m2.p("photos/big.bin")).unwrap();
    f.seek(SeekFrom::Start(5 << 20)).unwrap();
    let mut buf = vec![0u8; 100];
    f.read_exact(&mut buf).unwrap();
    assert!(buf == big[5 << 20..(5 << 20) + 100]);
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
