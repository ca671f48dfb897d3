//! Tandem's shared, pure code: the decisions every node must compute alike.
//!
//! No sockets and no tasks live here: gossip schema, member views, configuration types,
//! write versions and session operations, each a plain value with table-driven tests.

pub mod config;
pub mod cookie;
pub mod frame;
pub mod member;
pub mod ops;
pub mod pairing;
pub mod routing;
pub mod schema;
pub mod secret;
pub mod version;

/// Version of this build, published in gossip.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
