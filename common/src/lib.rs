//! Tandem's shared, pure code: the decisions every node must compute alike.
//!
//! No sockets and no tasks live here: gossip schema, member views and configuration types,
//! each a plain value with table-driven tests.

pub mod config;
pub mod member;
pub mod schema;

/// Version of this build, published in gossip.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
