//! Upstream layer.

pub mod discovery;
pub mod dns;
