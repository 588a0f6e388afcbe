//! Gateway tests: the metadata store conformance suite (every test on SQLite and on
//! PostgreSQL), and multi-process tests through the real binaries.

mod common;
mod store;
mod writes;
