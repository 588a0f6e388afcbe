//! `cyxcloud-rebalancer`: keeps every chunk at k+m healthy shards over time (issue 18; the
//! design is `docs/adr/0007`). Built so far: the [`planner`], pure: which shards of a chunk
//! must be rebuilt, where, and in what order. The detector and executor (through the
//! gateway's maintenance API and the nodes' repair RPC) follow.
//!
//! Must not depend on the gateway crate or on a database: it reaches the metadata through the
//! gateway's API.

pub mod planner;
