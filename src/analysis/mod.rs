//! Analysis: analyzers that turn an app folder into findings in one normalized model.
//! `finding` is the model (pure), `sarif` its standard export, `static_tools` the static
//! analyzer over real tools.

pub mod apps;
pub mod catalog;
pub mod dynamic;
pub mod finding;
pub mod judge;
pub mod loadgen;
pub mod sarif;
pub mod static_tools;
