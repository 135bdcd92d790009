//! Assay: durable pipelines that generate apps with many LLMs and analyze them.
//! See `ARCHITECTURE.md` for the map.

pub mod analysis;
pub mod api;
pub mod bench;
pub mod body;
pub mod cli;
pub mod client;
pub mod domain;
pub mod explain;
pub mod exports;
pub mod generation;
pub mod grid;
pub mod kinds;
pub mod planner;
pub mod progress;
pub mod ranking;
pub mod report;
pub mod results;
pub mod sandbox;
pub mod seccomp;
pub mod server;
pub mod spec;
pub mod store;
pub mod supervise;
pub mod toolchain;
pub mod worker;
