//! The inference engine.
pub mod bundle;
pub mod runtime;
