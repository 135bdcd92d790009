//! Generation: apps from many LLMs × the template catalog. `extract` takes code out of a
//! model's answer as untrusted input.

pub mod budget;
pub mod extract;
pub mod generate;
pub mod limiter;
pub mod provider;
pub mod providers;
