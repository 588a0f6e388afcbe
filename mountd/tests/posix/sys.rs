//! The few system calls std does not wrap, each returning the errno on failure.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn err() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn check(r: i32) -> Result<(), i32> {
    if r < 0 { Err(err()) } else { Ok(()) }
}

/// renameat2(2) with RENAME_NOREPLACE / RENAME_EXCHANGE.
pub fn rename2(a: &Path, b: &Path, flags: u32) -> Result<(), i32> {
    let (ca, cb) = (c(a), c(b));
    // SAFETY: valid NUL-terminated paths; AT_FDCWD needs no descriptor.
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            flags,
        )
    })
}

pub fn mkfifo(p: &Path) -> Result<(), i32> {
    let cp = c(p);
    // SAFETY: a valid NUL-terminated path.
    check(unsafe { libc::mkfifo(cp.as_ptr(), 0o644) })
}

pub fn flock(f: &std::fs::File, op: i32) -> Result<(), i32> {
    // SAFETY: flock(2) on an open descriptor.
    check(unsafe { libc::flock(f.as_raw_fd(), op) })
}

/// An open-file-description lock (F_OFD_SETLK): conflicts between descriptors of one process.
pub fn ofd_lock(f: &std::fs::File, kind: i32, start: i64, len: i64) -> Result<(), i32> {
    // SAFETY: a zeroed flock struct is valid; fcntl reads it.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: F_OFD_SETLK with a pointer to a live flock struct.
    check(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) })
}

pub fn fallocate(f: &std::fs::File, mode: i32, off: i64, len: i64) -> Result<(), i32> {
    // SAFETY: fallocate(2) on an open descriptor.
    check(unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) })
}

/// `(f_bsize, f_blocks, f_bavail, f_namemax)` of statvfs(3).
pub fn statvfs(p: &Path) -> Result<(u64, u64, u64, u64), i32> {
    let cp = c(p);
    // SAFETY: a zeroed statvfs is valid output storage.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and output pointer.
    check(unsafe { libc::statvfs(cp.as_ptr(), &mut s) })?;
    Ok((s.f_bsize, s.f_blocks, s.f_bavail, s.f_namemax))
}

/// utimensat(2) with explicit times (`None` = UTIME_NOW).
pub fn utimens(p: &Path, atime: Option<(i64, i64)>, mtime: Option<(i64, i64)>) -> Result<(), i32> {
    let cp = c(p);
    let ts = |t: Option<(i64, i64)>| match t {
        Some((s, ns)) => libc::timespec {
            tv_sec: s,
            tv_nsec: ns,
        },
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
    };
    let times = [ts(atime), ts(mtime)];
    // SAFETY: valid path and a two-element timespec array.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, cp.as_ptr(), times.as_ptr(), 0) })
}
