//! Integration tests of `cyxcloud-node`: real node processes (testkit), real gRPC, a real
//! NodeRegistry server and a real HTTP account API in the test process.

mod support;

mod lifecycle;
mod login;
mod p2p;
mod registry;
mod service;
mod startup;
mod storage;
