//! Gateway tests: the metadata store conformance suite (every test on SQLite and on
//! PostgreSQL), and multi-process tests through the real binaries.

mod cache;
mod cluster;
mod common;
mod gc_model;
mod http_api;
mod maintenance;
mod s3;
mod store;
mod writes;
