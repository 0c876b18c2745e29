//! Source files of ArrowQuant that need no DataFusion, compiled on their own for fuzzing:
//! `arrowquant_light::kernels` is `arrowquant_udfs::kernels` (plain Rust over slices) and
//! `arrowquant_light::config` is `arrowquant::config`, the very same files.

// config.rs names the kernels by their crate, `arrowquant_udfs::kernels::scheme`.
extern crate self as arrowquant_udfs;

#[path = "../../udfs/src/kernels/mod.rs"]
#[allow(dead_code)]
pub mod kernels;

#[path = "../../src/config.rs"]
pub mod config;
