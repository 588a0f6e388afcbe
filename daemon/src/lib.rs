//! `cyxcloud-daemon`: the process plumbing every CyxCloud daemon shares, and nothing else (no
//! domain types): layered configuration ([`config`]), tracing setup ([`logging`]), the
//! `/metrics` + `/health` HTTP server ([`ops`]), signal-driven shutdown ([`shutdown`]),
//! background workers with state, backoff, leases and rate limits ([`worker`]) and TLS 1.3
//! with the cluster CA ([`tls`]).

pub mod config;
pub mod logging;
pub mod ops;
pub mod shutdown;
pub mod tls;
pub mod worker;

pub use config::{ConfigError, Layers};
pub use ops::{Health, OpsServer};
pub use shutdown::Shutdown;
pub use worker::{Periodic, RateLimit, Step, Worker, WorkerOptions, Workers};
