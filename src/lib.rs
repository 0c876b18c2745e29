//! ArrowQuant: model-weight quantization as SQL on Apache DataFusion.
//!
//! This crate is the engine users run: a [`session`] with every function registered, and the
//! `arrowquant` command line. The SQL functions and their kernels live in `arrowquant-udfs`,
//! re-exported here as [`udfs`].

pub use arrowquant_udfs as udfs;

pub mod batch;
pub mod catalogue;
pub mod cli;
pub mod config;
pub mod guard;
pub mod model;
pub mod pipeline;
pub mod session;
pub mod tables;
