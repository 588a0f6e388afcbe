//! The drive's integration tests: a live cluster (real gateway, real nodes), the real daemon,
//! a real FUSE mount. They need root, /dev/fuse and fusermount3 (package fuse3).

mod cluster;
mod drive;
mod posix;
