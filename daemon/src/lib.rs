//! `cyxcloud-daemon`: the process plumbing every CyxCloud daemon shares, and nothing else (no
//! domain types): layered configuration ([`config`]), tracing setup ([`logging`]), the
//! `/metrics` + `/health` HTTP server ([`ops`]) and signal-driven shutdown ([`shutdown`]).

pub mod config;
pub mod logging;
pub mod ops;
pub mod shutdown;

pub use config::{ConfigError, Layers};
pub use ops::{Health, OpsServer};
pub use shutdown::Shutdown;
