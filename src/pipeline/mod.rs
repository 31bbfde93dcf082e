//! The pipeline: study assembly now; routing and the workers that move jobs between states
//! come with the engine, SEG and admin layers.

pub mod assemble;
pub mod catalog;
pub mod deliver;
pub mod offline;
pub mod retention;
mod series;
pub mod worker;
