//! HTTP/1.1 for the L7 path: head parsing, body framing, rewriting, routing.
pub mod body;
pub mod head;
pub mod rewrite;
pub mod route;
pub mod route_config;
