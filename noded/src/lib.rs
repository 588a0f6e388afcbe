//! `cyxcloud-node`: the storage node daemon miners run (binary `cyxcloud-node`).
//!
//! A node stores erasure-coded shards keyed by their blake3 hash and serves them over gRPC
//! (`ChunkService`); it registers and heartbeats with the gateway and executes the repair,
//! transfer and delete commands the gateway sends back (and repairs the rebalancer sends
//! directly); it re-hashes its shards on a schedule and reports corrupt ones; it announces itself in a libp2p
//! Kademlia DHT so nodes find each other without the gateway; it exports Prometheus metrics
//! and a health report; and it drains on request.
//!
//! Modules, one responsibility each: [`config`] (the validated configuration), [`metadata`]
//! (data dir ownership), [`store`] (the `ShardStore` trait, RocksDB and memory backends,
//! verified capacity-limited [`store::Shards`]), [`tokens`] (capability token checks),
//! [`service`] (ChunkService), [`net`] (counted gRPC connections), [`registry_client`]
//! (register + heartbeat), [`commands`] (repair, transfer, delete), [`login`] (operator login,
//! credentials file), [`p2p`] (libp2p DHT), [`scrub`] (periodic re-hash of every shard),
//! [`metrics`], [`lifecycle`] (running → draining →
//! drained, control socket), [`error`] (the one error type and its gRPC mapping), [`node`]
//! (wiring).
//!
//! Dependency rule: this crate depends on `cyxcloud-core`, `cyxcloud-proto` and
//! `cyxcloud-daemon` only among CyxCloud crates, and nothing depends on it: other processes
//! talk to a node through its gRPC contract.

pub mod commands;
pub mod config;
pub mod error;
pub mod lifecycle;
pub mod login;
pub mod metadata;
pub mod metrics;
pub mod net;
pub mod node;
pub mod p2p;
pub mod registry_client;
pub mod scrub;
pub mod service;
pub mod store;
pub mod tls;
pub mod tokens;

pub use config::Config;
pub use error::{Error, Result};
pub use node::{Exit, RunOptions, run};
