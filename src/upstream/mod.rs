//! Upstream layer.

pub mod balance;
