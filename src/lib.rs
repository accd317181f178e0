//! turnd: a STUN/TURN server with a sans-IO protocol core.
//!
//! `proto` (wire format) and `server` (the engine) are plain synchronous code that takes
//! bytes, addresses and time in, and gives bytes out. `net` holds the tokio drivers that own
//! sockets and clocks. `natcheck` is the client `turnd nat-check` runs. See DESIGN.md in the shared docs for the shape.
// Denied, not forbidden: the one exception is `net::socket::readable`, which registers a
// descriptor with tokio's reactor under a stated invariant (its SAFETY comment).
#![deny(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod metrics;
pub mod natcheck;
pub mod net;
pub mod proto;
pub mod server;
pub mod sys;
pub mod types;
