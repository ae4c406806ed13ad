//! Upstream layer.

pub mod health;
