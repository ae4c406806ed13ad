//! Upstream layer.

pub mod balance;
pub mod locality;
