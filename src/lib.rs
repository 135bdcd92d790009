//! Assay: durable pipelines that generate apps with many LLMs and analyze them.
//! See `ARCHITECTURE.md` for the map.

pub mod domain;
pub mod kinds;
pub mod spec;
pub mod store;
