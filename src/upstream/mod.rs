//! Upstream layer.

pub mod discovery;
pub mod dns;
pub mod endpoints_file;
